"""The on-disk layout of format version 1 stays as it is: data/layout_v1.safetensors was written by
prunekit.save before the formats owned their checkpoint entries (commit 3cf3bbf, LayoutModel of
layout_model.py); it must load exactly, and saving the same model today must write the same
tensors, bytes and module specs."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open

import prunekit
from prunekit.io import safetensors_file as stf
from prunekit.nn import SparseConv2d, SparseLinear

from layout_model import FORMATS, LayoutModel, layout_model

FIXTURE = Path(__file__).resolve().parent / "data" / "layout_v1.safetensors"

# What version 1 writes per format (after the module's name), besides "bias".
ENTRIES = {"2:4": {"values", "meta"}, "unstructured": {"values", "bitmap"}, "dense": {"weight"}}


def sparsified_layout_model() -> LayoutModel:
    model = layout_model()
    for name, fmt in FORMATS.items():
        dense = getattr(model, name)
        cls = SparseConv2d if isinstance(dense, nn.Conv2d) else SparseLinear
        setattr(model, name, cls.from_dense(dense, fmt))
    return model


def stored(path) -> tuple[dict, dict[str, torch.Tensor]]:
    header, metadata = stf.read_header(Path(path))
    with safe_open(str(path), framework="pt") as file:
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    return {**header, "__metadata__": metadata}, tensors


def test_the_version_1_fixture_loads_exactly():
    dense = layout_model()
    loaded = prunekit.load(FIXTURE, model=LayoutModel())
    for name, fmt in FORMATS.items():
        module = getattr(loaded, name)
        assert isinstance(module, SparseConv2d if isinstance(getattr(dense, name), nn.Conv2d) else SparseLinear)
        assert module.format == fmt
        assert torch.equal(module.to_dense().weight, getattr(dense, name).weight)
        original_bias = getattr(dense, name).bias
        assert (module.bias is None) == (original_bias is None)
        if original_bias is not None:
            assert torch.equal(module.bias, original_bias)
    assert torch.equal(loaded.norm.weight, dense.norm.weight)
    x = torch.randn(2, 64)
    assert torch.equal(loaded.semi(x), sparsified_layout_model().semi(x))


def test_saving_today_writes_the_version_1_layout(tmp_path):
    path = prunekit.save(sparsified_layout_model(), tmp_path / "layout.safetensors")
    old_header, old_tensors = stored(FIXTURE)
    new_header, new_tensors = stored(path)
    old_meta, new_meta = old_header.pop("__metadata__"), new_header.pop("__metadata__")
    assert new_header == old_header  # keys, dtypes, shapes, byte offsets
    assert set(new_tensors) == set(old_tensors)
    for key, tensor in old_tensors.items():
        assert new_tensors[key].dtype == tensor.dtype and torch.equal(new_tensors[key], tensor), key
    assert (new_meta["format"], new_meta["format_version"]) == (old_meta["format"], old_meta["format_version"])
    for key in ("model", "modules", "module_aliases", "tensors", "aliases", "nonpersistent"):
        assert json.loads(new_meta[key]) == json.loads(old_meta[key]), key
    modules = json.loads(new_meta["modules"])
    for name, spec in modules.items():
        written = {key.split(".", 1)[1] for key in new_tensors if key.split(".", 1)[0] == name}
        assert written == ENTRIES[spec["format"]] | ({"bias"} if spec["bias"] else set()), name
    # Each format's checkpoint entry names exactly these tensors.
    for fmt, names in ENTRIES.items():
        assert set(prunekit.formats.get(fmt).checkpoint_names) == names


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_module_round_trips_through_its_format_entry(name):
    model = sparsified_layout_model()
    module = getattr(model, name)
    fmt = module.weight_format
    entry = fmt.to_checkpoint(module.weight_state())
    state = fmt.from_checkpoint(entry, "test")
    assert set(state) == set(fmt.state_names)
    for key, tensor in module.weight_state().items():
        assert torch.equal(state[key], tensor), key
