"""SliceGPT (prunekit.slice_) on tiny models of every supported family: exactness at 0%, sizes and
closeness when sliced, per-block ratios, padding left out of the PCA, save/load bit for bit, and
bad input refused with the model left as it was."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2]))  # tests/tiny_models.py

import prunekit  # noqa: E402
from prunekit.surgery import slicing  # noqa: E402
from prunekit.surgery.slicing import SlicingError, slice_  # noqa: E402
from tiny_models import HIDDEN, calibration, tiny_model  # noqa: E402

FAMILIES = ["llama", "mistral", "qwen2", "opt", "gpt2"]
BLOCK_LINEARS = {"llama": ("self_attn.q_proj", "mlp.down_proj"), "opt": ("self_attn.q_proj", "fc2"),
                 "gpt2": ("attn.c_attn", "mlp.c_proj")}


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [type(m) for m in model.modules()], model.config.to_json_string(use_diff=False))


@pytest.mark.parametrize("bases", slicing.BASES)
@pytest.mark.parametrize("arch", FAMILIES)
def test_zero_ratio_equals_the_dense_model(arch, bases):
    model = tiny_model(arch)
    calib = calibration(arch)
    ids = calib[0]["input_ids"]
    dense = _logits(model, ids)
    report = slice_(model, 0.0, calib, bases=bases, progress=False)
    sliced = _logits(model, ids)
    # rotations in float64, one float32 rounding per weight: float rounding of logits of size ~1
    torch.testing.assert_close(sliced, dense, atol=2e-5, rtol=1e-5)
    assert report.dims["embedding"] == report.dims["head"] == HIDDEN
    assert report.shortcuts == (2 if bases == "sublayer" else 1) * model.config.num_hidden_layers
    assert all(abs(value - 1.0) < 1e-9 for value in report.explained_variance.values())


@pytest.mark.parametrize("arch", FAMILIES)
def test_quarter_slicing_shrinks_the_blocks_and_stays_close(arch):
    model = tiny_model(arch)
    calib = calibration(arch)
    ids = calib[0]["input_ids"]
    dense = _logits(model, ids)
    report = slice_(model, 0.25, calib, bases="block", progress=False)
    sliced = _logits(model, ids)
    assert torch.isfinite(sliced).all()
    kept = HIDDEN * 3 // 4
    family = slicing.FAMILIES[slicing.MODEL_TYPES[model.config.model_type]]
    blocks = model.get_submodule(family.blocks)
    reader = blocks[0].get_submodule(family.attn_inputs[0])
    writer = blocks[0].get_submodule(family.mlp_output)
    assert slicing.modules.linear_matrix(reader).shape[1] == kept
    assert slicing.modules.linear_matrix(writer).shape[0] == kept
    assert model.get_input_embeddings().weight.shape[1] == kept
    assert report.block_params_after < report.block_params_before
    assert report.block_params_after == sum(p.numel() for p in blocks.parameters())
    # most of the signal is kept: the sliced logits stay close to the dense ones
    error = (sliced - dense).norm() / dense.norm()
    assert error < 0.5, error
    assert 0.5 < min(report.explained_variance.values()) <= 1.0
    json.dumps(report.to_dict())  # JSON-serialisable
    assert json.loads(report.to_json())["block_params_reduction"] == pytest.approx(report.block_params_reduction)
    assert model.config.prunekit_slicing["bases"] == "block"
    with torch.no_grad():
        generated = model.generate(ids[:1, :4], max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 8)


def test_bases_trade_parameters_for_quality():
    calib = calibration("llama")
    ids = calib[0]["input_ids"]
    dense = _logits(tiny_model("llama"), ids)
    reports, errors = {}, {}
    for bases in slicing.BASES:
        model = tiny_model("llama")
        reports[bases] = slice_(model, 0.25, calib, bases=bases, progress=False)
        errors[bases] = float((_logits(model, ids) - dense).norm() / dense.norm())
    kept = HIDDEN * 3 // 4
    layers = tiny_model("llama").config.num_hidden_layers
    assert reports["sublayer"].block_params_after - reports["block"].block_params_after == layers * kept * kept
    assert errors["sublayer"] <= errors["block"]


def test_per_block_ratios_and_a_tied_head_untied():
    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    calib = calibration("llama")
    report = slice_(model, [0.25, 0.5], calib, progress=False)
    assert report.head_untied and model.config.tie_word_embeddings is False
    assert [(b["in"], b["mid"], b["out"]) for b in report.dims["blocks"]] == [(48, 48, 32), (32, 32, 32)]
    layers = model.model.layers
    assert layers[0].self_attn.q_proj.in_features == 48 and layers[0].mlp.down_proj.out_features == 32
    assert layers[1].self_attn.k_proj.in_features == 32
    assert tuple(layers[0].mlp_shortcut.weight.shape) == (32, 48)
    assert tuple(model.lm_head.weight.shape) == (model.config.vocab_size, 32)
    assert tuple(model.model.embed_tokens.weight.shape) == (model.config.vocab_size, 48)
    assert torch.isfinite(_logits(model, calib[0]["input_ids"])).all()


def test_padding_is_left_out_of_the_bases():
    calib = calibration("llama", batches=2)
    padded = []
    for item in calib:
        ids = torch.cat([item["input_ids"], torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(3))],
                        dim=1)
        mask = torch.cat([item["attention_mask"], torch.zeros(2, 5, dtype=torch.long)], dim=1)
        padded.append({"input_ids": ids, "attention_mask": mask})
    plain, with_padding = tiny_model("llama"), tiny_model("llama")
    slice_(plain, 0.25, calib, progress=False)
    slice_(with_padding, 0.25, padded, progress=False)
    ids = calib[0]["input_ids"]
    torch.testing.assert_close(_logits(with_padding, ids), _logits(plain, ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_save_and_load_round_trip_bit_for_bit(arch, tmp_path):
    model = tiny_model(arch)
    calib = calibration(arch)
    ratio = [0.25, 0.5] if arch != "gpt2" else 0.25
    slice_(model, ratio, calib, progress=False)
    ids = calib[1]["input_ids"]
    expected = _logits(model, ids)
    prunekit.save(model, tmp_path / "sliced")
    loaded = prunekit.load(tmp_path / "sliced")
    assert torch.equal(_logits(loaded, ids), expected)
    assert {k: tuple(v.shape) for k, v in loaded.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert loaded.config.prunekit_slicing == model.config.prunekit_slicing
    with torch.no_grad():
        assert torch.equal(loaded.generate(ids[:1, :4], max_new_tokens=4, do_sample=False),
                           model.generate(ids[:1, :4], max_new_tokens=4, do_sample=False))
    prunekit.save(loaded, tmp_path / "again")  # a loaded sliced model saves and loads again
    assert torch.equal(_logits(prunekit.load(tmp_path / "again"), ids), expected)


def test_exported_from_prunekit():
    assert prunekit.slice_ is slice_


@pytest.mark.parametrize("ratio, match", [
    (1.0, r"ratio: expected a slicing fraction in \[0, 1\)"),
    (-0.1, r"ratio: expected a slicing fraction in \[0, 1\)"),
    ("0.25", r"ratio: expected a slicing fraction"),
    (True, r"ratio: expected a slicing fraction"),
    (0.95, r"ratio: expected a fraction that leaves at least one of the 64 hidden dimensions"),
    ([0.25], r"ratio: expected one fraction or one per block \(2\), but got 1"),
    ([0.25, 1.5], r"ratio\[1\]: expected a slicing fraction"),
])
def test_bad_ratios_are_refused_and_nothing_changes(ratio, match):
    model = tiny_model("llama")
    before = _snapshot(model)
    with pytest.raises(SlicingError, match=match):
        slice_(model, ratio, calibration("llama"), progress=False)
    _assert_unchanged(model, before)


def _assert_unchanged(model, before):
    state, classes, config = before
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert [type(m) for m in model.modules()] == classes
    assert model.config.to_json_string(use_diff=False) == config


def test_other_bad_arguments():
    model = tiny_model("llama")
    with pytest.raises(SlicingError, match=r"bases: expected one of \('sublayer', 'block'\), but got 'layer'"):
        slice_(model, 0.25, calibration("llama"), bases="layer")
    with pytest.raises(SlicingError, match="round_to: expected a positive int, but got 0"):
        slice_(model, 0.25, calibration("llama"), round_to=0)
    with pytest.raises(SlicingError, match="calib: expected a non-empty list of model inputs, but got an empty list"):
        slice_(model, 0.25, [])
    with pytest.raises(TypeError, match="argument 'model' must be a torch.nn.Module"):
        slice_("llama", 0.25, calibration("llama"))


def test_models_whose_norms_cannot_be_folded_are_refused():
    import transformers

    config = transformers.OPTConfig(vocab_size=128, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=64,
                                    do_layer_norm_before=False)
    post_norm = transformers.OPTForCausalLM(config).eval()
    before = _snapshot(post_norm)
    with pytest.raises(SlicingError, match="norms cannot be folded: OPT with do_layer_norm_before=False"):
        slice_(post_norm, 0.25, calibration("opt"), progress=False)
    _assert_unchanged(post_norm, before)
    odd_norm = tiny_model("llama")
    odd_norm.model.layers[1].post_attention_layernorm = torch.nn.LayerNorm(64)
    with pytest.raises(SlicingError, match=r"norm 'model.layers.1.post_attention_layernorm' cannot be folded: "
                                           r"expected an RMSNorm"):
        slice_(odd_norm, 0.25, calibration("llama"), progress=False)
    with pytest.raises(SlicingError, match="expected a Hugging Face causal LM of type"):
        slice_(tiny_model("bert"), 0.25, calibration("bert"), progress=False)


def test_slicing_twice_is_refused():
    model = tiny_model("qwen2")
    slice_(model, 0.25, calibration("qwen2"), progress=False)
    with pytest.raises(SlicingError, match="already sliced"):
        slice_(model, 0.25, calibration("qwen2"), progress=False)


def test_a_failure_part_way_restores_the_model(monkeypatch):
    model = tiny_model("opt")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    before = _snapshot(model)
    calls = []
    original = slicing.slicer._principal_basis

    def failing(covariance, where):
        calls.append(where)
        if len(calls) == 4:  # inside the second block, after the first was sliced
            raise SlicingError(f"calib: the activations at {where} are NaN or Inf")
        return original(covariance, where)

    monkeypatch.setattr(slicing.slicer, "_principal_basis", failing)
    with pytest.raises(SlicingError, match="the middle of model.decoder.layers.1"):
        slice_(model, 0.25, calibration("opt"), progress=False)
    _assert_unchanged(model, before)
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    ids = calibration("opt")[0]["input_ids"]
    monkeypatch.undo()
    reference = tiny_model("opt")
    reference.config.tie_word_embeddings = True
    reference.tie_weights()
    assert torch.equal(_logits(model, ids), _logits(reference, ids))


def test_calibration_that_does_not_fit_is_refused_before_any_change():
    model = tiny_model("llama")
    before = _snapshot(model)
    with pytest.raises(ValueError, match="calib: item 0 does not fit"):
        slice_(model, 0.25, [{"input_ids": torch.full((2, 4), 1000)}], progress=False)  # ids past the vocabulary
    _assert_unchanged(model, before)


@pytest.mark.parametrize("bases", slicing.BASES)
def test_keep_embeddings_leaves_a_tied_head_tied(bases, tmp_path):
    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    calib = calibration("llama")
    ids = calib[0]["input_ids"]
    dense = _logits(model, ids)
    embedding = model.model.embed_tokens.weight
    exact = tiny_model("llama")
    exact.config.tie_word_embeddings = True
    exact.tie_weights()
    slice_(exact, 0.0, calib, bases=bases, keep_embeddings=True, progress=False)
    torch.testing.assert_close(_logits(exact, ids), dense, atol=2e-5, rtol=1e-5)
    report = slice_(model, 0.25, calib, bases=bases, keep_embeddings=True, progress=False)
    assert not report.head_untied and model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight is embedding  # untouched
    assert report.dims["embedding"] == report.dims["head"] == HIDDEN
    assert report.dims["blocks"][0]["in"] == HIDDEN and report.dims["blocks"][-1]["out"] == HIDDEN
    assert report.dims["blocks"][1]["in"] == HIDDEN * 3 // 4
    assert report.params_after < report.params_before
    prunekit.save(model, tmp_path / "sliced")
    loaded = prunekit.load(tmp_path / "sliced")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))


def test_keep_embeddings_needs_rms_norms():
    with pytest.raises(SlicingError, match="keep_embeddings: expected a model with RMS norms, but opt models"):
        slice_(tiny_model("opt"), 0.25, calibration("opt"), keep_embeddings=True)


def test_normalized_pca_is_exact_at_zero_and_recorded():
    calib = calibration("gpt2")
    ids = calib[0]["input_ids"]
    model = tiny_model("gpt2")
    dense = _logits(model, ids)
    slice_(model, 0.0, calib, pca="normalized", progress=False)
    torch.testing.assert_close(_logits(model, ids), dense, atol=2e-5, rtol=1e-5)
    sliced = tiny_model("llama")
    slice_(sliced, 0.25, calibration("llama"), pca="normalized", progress=False)
    assert sliced.config.prunekit_slicing["pca"] == "normalized"
    with pytest.raises(SlicingError, match=r"pca: expected one of \('energy', 'normalized'\), but got 'tokens'"):
        slice_(tiny_model("llama"), 0.25, calibration("llama"), pca="tokens")
