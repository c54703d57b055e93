"""Tied weights through prunekit.save / prunekit.load: a tied LM head (tie_word_embeddings=True, or
tied by hand) comes back as the embedding's own Parameter, for a dense, a pruned and a sparsified
model, rebuilt from the checkpoint or loaded into a skeleton."""

import logging

import pytest
import torch

import prunekit
from prunekit import PruneConfig
from prunekit.io import read_info
from prunekit.nn import SparseLinear
from prunekit.surgery import SparsifyConfig

from tiny_models import calibration, tiny_model

STATES = ["dense", "pruned", "sparsified"]


def tied(model) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def tied_model(arch: str, state: str):
    model = tiny_model(arch, tie_word_embeddings=True)
    if state != "dense":
        prunekit.prune(model, PruneConfig(method="magnitude", sparsity=0.6, progress=False), None)
    if state == "sparsified":
        prunekit.sparsify_(model, SparsifyConfig(format="unstructured"))
        assert any(isinstance(m, SparseLinear) for m in model.modules())
    assert tied(model)
    return model


def logits(model, arch: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**calibration(arch, seed=3)[0]).logits


def check_round_trip(tmp_path, arch: str, state: str, skeleton: bool) -> None:
    model = tied_model(arch, state)
    expected = logits(model, arch)
    path = prunekit.save(model, tmp_path / "tied")
    assert "lm_head.weight" in read_info(path)["aliases"]  # stored once
    target = tiny_model(arch, seed=1, tie_word_embeddings=True) if skeleton else None
    loaded = prunekit.load(path, target)
    if skeleton:
        assert loaded is target
    assert tied(loaded)
    torch.testing.assert_close(logits(loaded, arch), expected, rtol=1e-4, atol=1e-5)
    exact = prunekit.load(path, format="saved")
    assert tied(exact)
    assert torch.equal(logits(exact, arch), expected)


@pytest.mark.parametrize("skeleton", [False, True], ids=["rebuilt", "skeleton"])
@pytest.mark.parametrize("state", STATES)
def test_tied_lm_head_round_trip(tmp_path, state, skeleton):
    check_round_trip(tmp_path, "llama", state, skeleton)


@pytest.mark.parametrize("skeleton", [False, True], ids=["rebuilt", "skeleton"])
def test_tied_conv1d_lm_head_round_trip(tmp_path, skeleton):
    check_round_trip(tmp_path, "gpt2", "sparsified", skeleton)


def test_tied_by_hand_round_trip(tmp_path):
    """A tie the config does not declare is restored from the checkpoint's aliases."""
    model = tiny_model("llama")
    model.lm_head.weight = model.model.embed_tokens.weight
    loaded = prunekit.load(prunekit.save(model, tmp_path / "tied"))
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(logits(loaded, "llama"), logits(model, "llama"))


def test_declared_tie_stored_twice_is_tied_when_equal(tmp_path):
    """A checkpoint that stores a tie the config declares as two equal tensors (as one written part
    by part does) loads tied."""
    model = tiny_model("llama", tie_word_embeddings=True)
    model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    path = prunekit.save(model, tmp_path / "twice")
    assert "lm_head.weight" not in read_info(path)["aliases"]
    loaded = prunekit.load(path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(logits(loaded, "llama"), logits(model, "llama"))


@pytest.mark.parametrize("skeleton", [False, True], ids=["rebuilt", "skeleton"])
def test_tie_of_different_tensors_is_dropped(tmp_path, caplog, skeleton):
    """A tie the model declares (its config, or the skeleton's parameters) whose stored tensors
    differ is dropped: each parameter gets its own stored tensor (no data lost), with a warning."""
    model = tiny_model("llama", tie_word_embeddings=True)
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight + 1)  # untied, other values
    path = prunekit.save(model, tmp_path / "untied")
    target = tiny_model("llama", seed=1, tie_word_embeddings=True) if skeleton else None
    with caplog.at_level(logging.WARNING, logger="prunekit.io.checkpoint"):
        loaded = prunekit.load(path, target)
    assert "stores different tensors for them" in caplog.text
    assert loaded.lm_head.weight is not loaded.model.embed_tokens.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
