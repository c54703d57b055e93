"""Graph capture (prunekit.surgery.structured.graph): a graph recorded from one forward and a
torch.fx symbolic trace describe the same channel structure."""

from structured_cnn_models import cnn_calibration, tiny_cnn

from prunekit.surgery.structured.channel_groups import ChannelAnalysis
from prunekit.surgery.structured.graph import record_graph, trace_graph


def test_recorded_and_traced_graphs_agree():
    model = tiny_cnn("mobilenet")
    x = cnn_calibration()[0]
    modules = dict(model.named_modules())
    results = []
    for graph in (trace_graph(model, (x,)), record_graph(model, (x,))):
        groups, _ = ChannelAnalysis(graph, modules, "m").run().groups()
        results.append(sorted((g.name, g.units, sorted(g.member_names())) for g in groups))
    assert results[0] == results[1] and len(results[0]) == 6


def test_every_node_has_a_shape():
    model = tiny_cnn("resnet")
    x = cnn_calibration()[0]
    for graph in (trace_graph(model, (x,)), record_graph(model, (x,))):
        shapes = {node.name: node.meta.get("shape") for node in graph.nodes if node.op in ("call_module",)}
        assert shapes and all(shape is not None and shape[0] == x.shape[0] for shape in shapes.values())
