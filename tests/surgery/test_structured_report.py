"""StructuredReport (prunekit.surgery.structured.report): PruneReport's style: to_dict, to_json,
summary, seconds."""

import json

from structured_cnn_models import cnn_calibration, tiny_cnn

from prunekit.surgery.structured import StructuredConfig, count_parameters, prune_structured


def test_report_round_trips_and_summarises():
    model = tiny_cnn("resnet")
    before = count_parameters(model)
    report = prune_structured(model, StructuredConfig(method="magnitude", sparsity=0.25,
                                                      example_inputs=cnn_calibration()[0]))
    data = json.loads(report.to_json())
    assert data == json.loads(json.dumps(report.to_dict()))
    assert data["method"] == "magnitude" and data["sparsity"] == {"channels": 0.25}
    assert data["params_before"] == before and data["params_after"] == count_parameters(model)
    assert data["params_removed"] == before - count_parameters(model) > 0
    assert len(data["groups"]) == 6 and report.seconds > 0
    lines = report.summary().splitlines()
    assert lines[0].startswith(f"structured pruning (magnitude, sparsity {{'channels': 0.25}}, round_to None): "
                               f"{before:,} -> {count_parameters(model):,} parameters")
    assert len(lines) == 1 + len(report.groups) and "stem.0: 16 -> 12" in report.summary()
