"""Layer pruning (prunekit.prune_layers): block influence and sublayer scores against a direct
computation, removal that reloads (from_pretrained for blocks, prunekit.load for sublayers) and
generates with the KV cache, config updates, and bad input."""

import json
import sys
from pathlib import Path

import pytest
import torch
import transformers

import prunekit
from prunekit.surgery import layers as layer_pruning
from prunekit.surgery.layers import RemovedAttention, RemovedMLP, prune_layers, score_layers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tiny_models  # noqa: E402

BLOCKS = 4


def deep_tiny(arch: str, seed: int = 0):
    """A tiny ``arch`` model with BLOCKS blocks (the shared tiny models have 2)."""
    config_cls, model_cls, kwargs = tiny_models._configs()[arch]
    key = "n_layer" if arch == "gpt2" else "num_hidden_layers"
    torch.manual_seed(seed)
    config = config_cls(**{**kwargs, key: BLOCKS})
    config._attn_implementation = "eager"
    model = model_cls(config).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight[:, :4] *= 20
    return model


def block_list(model):
    return layer_pruning._blocks(model, None)[1]


def greedy_without_cache(model, ids, new_tokens):
    for _ in range(new_tokens):
        with torch.no_grad():
            next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], 1)
    return ids


def assert_generates_like_uncached(model, ids, new_tokens=6):
    generated = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens)
    assert torch.equal(generated, greedy_without_cache(model, ids, new_tokens))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_block_scores_are_one_minus_cosine_of_block_input_and_output(arch):
    model = deep_tiny(arch)
    calib = tiny_models.calibration(arch, batches=2)
    scores = score_layers(model, calib, sublayers=True)
    with torch.no_grad():
        embeddings = torch.cat([model(**b, output_hidden_states=True).hidden_states[0] for b in calib])
        blocks = block_list(model)
        captured = []  # every block's output, batch after batch
        handles = [b.register_forward_hook(lambda m, a, o: captured.append(o[0] if isinstance(o, tuple) else o))
                   for b in blocks]
        for b in calib:
            model(**b)
        for h in handles:
            h.remove()
    outputs = [torch.cat([captured[i + BLOCKS * k] for k in range(len(calib))]) for i in range(BLOCKS)]
    inputs = [embeddings] + outputs[:-1]
    for i in range(BLOCKS):
        expected = (1 - torch.nn.functional.cosine_similarity(inputs[i], outputs[i], dim=-1)).mean()
        assert scores[i]["block"] == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
        for sublayer in ("attention", "mlp"):
            assert 0 <= scores[i][sublayer] <= 2


def test_sublayer_score_matches_the_block_run_without_it():
    model = deep_tiny("llama")
    calib = tiny_models.calibration("llama", batches=1)
    scores = score_layers(model, calib, sublayers=True)
    reference = deep_tiny("llama")
    with torch.no_grad():
        full = reference(**calib[0]).logits
    # removing block 0's MLP by hand changes block 0's output by exactly the scored amount
    captured = {}
    block0 = block_list(reference)[0]
    handle = block0.register_forward_hook(lambda m, a, o: captured.update(full=o))
    with torch.no_grad():
        reference(**calib[0])
    handle.remove()
    layer_pruning.remove_sublayers(reference, [(0, "mlp")])
    block0.register_forward_hook(lambda m, a, o: captured.update(without=o))
    with torch.no_grad():
        pruned = reference(**calib[0]).logits
    expected = 1 - torch.nn.functional.cosine_similarity(captured["full"], captured["without"], dim=-1).mean()
    assert scores[0]["mlp"] == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
    assert not torch.equal(full, pruned)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "opt", "gpt2"])
def test_block_pruning_reloads_with_from_pretrained_and_generates(arch, tmp_path):
    model = deep_tiny(arch)
    calib = tiny_models.calibration(arch)
    scores = score_layers(model, calib)
    report = prune_layers(model, 0.5, calib, "block", progress=False)
    expected = sorted(range(BLOCKS), key=lambda i: (scores[i]["block"], str(i)))[:2]
    assert sorted(report.removed) == sorted(expected)
    assert report.blocks_after == len(block_list(model)) == BLOCKS - 2
    assert model.config.num_hidden_layers == BLOCKS - 2
    assert report.parameters_after < report.parameters_before
    assert report.block_parameters_after == report.block_parameters_before // 2
    json.dumps(report.to_dict())
    for position, block in enumerate(block_list(model)):
        assert {m.layer_idx for m in block.modules() if isinstance(getattr(m, "layer_idx", None), int)} <= {position}
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = calib[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=1e-5)
    assert_generates_like_uncached(reloaded, ids[:1, :5])


def test_removed_blocks_are_the_original_ones():
    """Outputs equal a model whose removed blocks are skipped by hand."""
    model = deep_tiny("llama")
    reference = deep_tiny("llama")
    calib = tiny_models.calibration("llama")
    prune_layers(model, indices=[1, 2])
    reference.model.layers = torch.nn.ModuleList([reference.model.layers[i] for i in (0, 3)])
    reference.config.num_hidden_layers = 2
    with torch.no_grad():
        torch.testing.assert_close(model(**calib[0], use_cache=False).logits,
                                   reference(**calib[0], use_cache=False).logits, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sublayer_pruning_saves_loads_and_generates(arch, tmp_path):
    model = deep_tiny(arch)
    calib = tiny_models.calibration(arch)
    report = prune_layers(model, 0.375, calib, "sublayer", rounds=2, progress=False)  # 3 of 8 sublayers
    assert len(report.removed) == 3 and len(report.scores) == 2
    assert report.reload in ("prunekit.load", "from_pretrained")
    removed = [m for m in model.modules() if isinstance(m, (RemovedAttention, RemovedMLP))]
    assert len(removed) + 2 * (BLOCKS - report.blocks_after) == 3
    assert not any(p.numel() for m in removed for p in m.parameters())
    ids = calib[0]["input_ids"]
    assert_generates_like_uncached(model, ids[:1, :5])
    prunekit.save(model, tmp_path / "model")
    loaded = prunekit.load(tmp_path / "model")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert_generates_like_uncached(loaded, ids[:1, :5])


def test_removing_first_attention_keeps_the_kv_cache_right():
    model = deep_tiny("llama")
    prune_layers(model, indices=["0.attention", "2.attention"], unit="sublayer")
    blocks = block_list(model)
    assert isinstance(blocks[0].self_attn, RemovedAttention) and isinstance(blocks[0].input_layernorm,
                                                                            torch.nn.Identity)
    assert [b.self_attn.layer_idx for b in blocks if not isinstance(b.self_attn, RemovedAttention)] == [0, 1]
    assert model.config.prunekit_removed_sublayers == {"attention": [0, 2], "mlp": []}
    assert_generates_like_uncached(model, tiny_models.calibration("llama")[0]["input_ids"][:1, :5])


def test_a_block_losing_both_sublayers_is_removed_whole(tmp_path):
    model = deep_tiny("llama")
    report = prune_layers(model, indices=["1.attention", "1.mlp", "3.mlp"], unit="sublayer")
    assert report.blocks_after == BLOCKS - 1 and model.config.num_hidden_layers == BLOCKS - 1
    assert model.config.prunekit_removed_sublayers == {"attention": [], "mlp": [2]}
    only_blocks = deep_tiny("llama")
    prune_layers(only_blocks, indices=["1.attention", "1.mlp"], unit="sublayer")
    assert only_blocks.config.num_hidden_layers == BLOCKS - 1
    assert not hasattr(only_blocks.config, "prunekit_removed_sublayers")
    only_blocks.save_pretrained(tmp_path)  # whole blocks only: transformers reloads it
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path)


def test_parameter_budget_and_zero_ratio():
    model = deep_tiny("llama")
    calib = tiny_models.calibration("llama")
    before = layer_pruning._parameters(block_list(model))
    report = prune_layers(model, 0.25, calib, "sublayer", budget="parameters", progress=False)
    removed = before - report.block_parameters_after
    assert removed >= 0.25 * before
    unchanged = deep_tiny("llama")
    report = prune_layers(unchanged, 0.0, calib, "block", progress=False)
    assert report.removed == [] and report.parameters_after == report.parameters_before


def test_bad_input_leaves_the_model_unchanged():
    model = deep_tiny("llama")
    calib = tiny_models.calibration("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cases = [
        (dict(ratio=1.0, calib=calib), "ratio: expected a fraction in \\[0, 1\\)"),
        (dict(ratio=-0.1, calib=calib), "ratio"),
        (dict(ratio=0.5), "calib"),
        (dict(ratio=0.5, calib=calib, unit="layer"), "unit: expected one of block, sublayer"),
        (dict(indices=[4]), "indices: expected block indices in \\[0, 3\\], but got 4"),
        (dict(indices=[-1]), "indices"),
        (dict(indices=[0, 1, 2, 3]), "leaves none"),
        (dict(indices=["1.ffn"], unit="sublayer"), "sublayer 'attention' or 'mlp'"),
        (dict(indices=["9.mlp"], unit="sublayer"), "in \\[0, 3\\]"),
        (dict(ratio=0.5, calib=calib, indices=[1]), "exactly one of ratio and indices"),
        (dict(ratio=0.5, calib=calib, rounds=0), "rounds"),
        (dict(ratio=0.5, calib=calib, budget="flops"), "budget"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            prune_layers(model, **kwargs)
    with pytest.raises(ValueError, match="sublayer"):
        prune_layers(deep_tiny("opt"), 0.5, tiny_models.calibration("opt"), "sublayer")
    with pytest.raises(ValueError, match="no attention or MLP"):
        layer_pruning.remove_sublayers(model, [(i, s) for i in range(BLOCKS) for s in ("attention", "mlp")])
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert model.config.num_hidden_layers == BLOCKS
    assert not any(isinstance(m, (RemovedAttention, RemovedMLP)) for m in model.modules())


def test_cli_prune_layers_writes_reloadable_models(tmp_path, capsys):
    from prunekit.app.cli import main as cli_main

    source = tmp_path / "tiny"
    deep_tiny("llama").save_pretrained(source)
    common = ["--nsamples", "4", "--seqlen", "16", "--eval-samples", "2", "--quiet"]
    assert cli_main(["prune-layers", str(source), "--ratio", "0.25", "--out", str(tmp_path / "blocks")] + common) == 0
    result = json.loads((tmp_path / "blocks" / "report.json").read_text())
    assert result["prune_layers"]["blocks_after"] == BLOCKS - 1 and result["checkpoint"]["format"].startswith("Hugging")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "blocks" / "model")
    assert reloaded.config.num_hidden_layers == BLOCKS - 1
    assert "## Scores" in (tmp_path / "blocks" / "report.md").read_text()
    assert cli_main(["prune-layers", str(source), "--unit", "sublayer", "--indices", "1.attention,2.mlp", "--out",
                     str(tmp_path / "sub")] + common) == 0
    loaded = prunekit.load(tmp_path / "sub" / "model")
    assert sum(isinstance(m, (RemovedAttention, RemovedMLP)) for m in loaded.modules()) == 2
    assert cli_main(["prune-layers", str(source), "--indices", "9", "--out", str(tmp_path / "bad")] + common) == 2
    assert "indices: expected block indices in [0, 3], but got 9" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "model").exists()
    assert cli_main(["prune-layers", str(source), "--ratio", "1.5", "--out", str(tmp_path / "bad2")] + common) == 2
    assert "--ratio" in capsys.readouterr().err and not (tmp_path / "bad2").exists()
