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
    loaded = prunekit.load(FIXTURE, model=LayoutModel(), format="saved")
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


# Keys version 2 adds to each module spec (what ran when saved, whether it may be swapped).
V2_SPEC_KEYS = {"held", "swappable"}


def test_saving_held_formats_writes_the_version_1_tensors(tmp_path):
    """compress="held" stores each module as it holds it: version 1's tensors, byte for byte; the
    header differs only in format_version and the spec keys version 2 adds."""
    path = prunekit.save(sparsified_layout_model(), tmp_path / "layout.safetensors", compress="held")
    old_header, old_tensors = stored(FIXTURE)
    new_header, new_tensors = stored(path)
    old_meta, new_meta = old_header.pop("__metadata__"), new_header.pop("__metadata__")
    assert {k: (v["dtype"], v["shape"]) for k, v in new_header.items()} == \
        {k: (v["dtype"], v["shape"]) for k, v in old_header.items()}
    assert set(new_tensors) == set(old_tensors)
    for key, tensor in old_tensors.items():
        assert new_tensors[key].dtype == tensor.dtype and torch.equal(new_tensors[key], tensor), key
    assert (old_meta["format_version"], new_meta["format_version"]) == ("1", "2")
    assert new_meta["format"] == old_meta["format"]
    for key in ("model", "module_aliases", "aliases", "nonpersistent"):
        assert json.loads(new_meta[key]) == json.loads(old_meta[key]), key
    old_tensor_meta, new_tensor_meta = json.loads(old_meta["tensors"]), json.loads(new_meta["tensors"])
    assert new_tensor_meta == old_tensor_meta  # dtypes, shapes, CRC-32s
    old_modules, new_modules = json.loads(old_meta["modules"]), json.loads(new_meta["modules"])
    assert set(new_modules) == set(old_modules)
    for name, spec in new_modules.items():
        assert set(spec) - set(old_modules[name]) == V2_SPEC_KEYS, name
        assert {k: v for k, v in spec.items() if k not in V2_SPEC_KEYS} == old_modules[name], name
        assert spec["held"] == spec["format"] and spec["swappable"] is True
        written = {key.split(".", 1)[1] for key in new_tensors if key.split(".", 1)[0] == name}
        assert written == ENTRIES[spec["format"]] | ({"bias"} if spec["bias"] else set()), name
    # Each format's checkpoint entry names exactly these tensors.
    for fmt, names in ENTRIES.items():
        assert set(prunekit.formats.get(fmt).checkpoint_names) == names


def test_saving_stores_the_smallest_exact_format(tmp_path):
    """By default each module is stored in its smallest exact format whatever it holds: the
    "dense" module (60% zeros) as the bitmap; the 2:4 ones as 2:4 (the bitmap is as large); and
    the version 1 file loads into the same model either way."""
    model = sparsified_layout_model()
    path = prunekit.save(model, tmp_path / "layout.safetensors")
    modules = prunekit.io.read_info(path)["modules"]
    stored_formats = {name: spec["format"] for name, spec in modules.items()}
    assert stored_formats == {"semi": "2:4", "bitmap": "unstructured", "dense": "unstructured",
                              "bf16": "unstructured", "conv24": "2:4", "conv": "unstructured"}
    assert {name: spec["held"] for name, spec in modules.items()} == FORMATS
    tensor_bytes = [sum(t.numel() * t.element_size() for t in stored(file)[1].values()) for file in (path, FIXTURE)]
    assert tensor_bytes[0] < tensor_bytes[1]  # the dense module's 60% zeros no longer stored
    new = prunekit.load(path, model=LayoutModel(), format="saved")
    old = prunekit.load(FIXTURE, model=LayoutModel(), format="saved")
    for name, fmt in FORMATS.items():
        assert getattr(new, name).format == getattr(old, name).format == fmt
        assert torch.equal(getattr(new, name).dense_matrix(), getattr(old, name).dense_matrix()), name
    x = torch.randn(3, 40)
    assert torch.equal(new.bitmap(x), model.bitmap(x)) and torch.equal(old.bitmap(x), model.bitmap(x))


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


def test_the_version_1_fixture_loads_with_this_machines_runtime_formats():
    """load's default ("auto") picks each layer's runtime format here; the weights stay exact."""
    dense = layout_model()
    loaded = prunekit.load(FIXTURE, model=LayoutModel())
    for name in FORMATS:
        module, original = getattr(loaded, name), getattr(dense, name)
        weight = module.dense_matrix() if isinstance(module, (SparseLinear, SparseConv2d)) else module.weight
        assert torch.equal(weight.reshape(original.weight.shape), original.weight), name
    x = torch.randn(2, 40)
    expected = dense.bitmap(x)
    if type(loaded.bitmap) is nn.Linear:  # kept dense by this machine's table: the very same computation
        assert torch.equal(loaded.bitmap(x), expected)
    else:
        assert torch.allclose(loaded.bitmap(x), expected, atol=1e-5)
