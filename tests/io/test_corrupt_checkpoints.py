"""Damaged checkpoints: any truncation, any changed byte, and module specs of the wrong kind give
a CheckpointError naming the file and what is wrong, never another exception or a crash, and
never change the model. The checkpoint is data/layout_v1.safetensors (one module per format)."""

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

import prunekit
from prunekit.io import CheckpointError
from prunekit.io import safetensors_file as stf

from layout_model import LayoutModel
from test_layout import FIXTURE, sparsified_layout_model

DATA = FIXTURE.read_bytes()
HEADER_END = 8 + int.from_bytes(DATA[:8], "little")
EXPECTED = {key: tensor.clone() for key, tensor in sparsified_layout_model().state_dict().items()}


def load_into_a_fresh_skeleton(path: Path):
    skeleton = LayoutModel()
    before = {key: tensor.clone() for key, tensor in skeleton.state_dict().items()}
    try:
        return prunekit.load(path, model=skeleton, format="saved")
    except CheckpointError:
        after = skeleton.state_dict()
        assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)  # untouched
        raise


FILE_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FILE_SETTINGS
@given(st.integers(0, len(DATA) - 1))
def test_any_truncation_is_a_checkpoint_error(tmp_path, size):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(DATA[:size])
    with pytest.raises(CheckpointError, match=r"load: .*cut.safetensors is (truncated|corrupt|not a safetensors)"):
        load_into_a_fresh_skeleton(path)


@FILE_SETTINGS
@given(st.integers(HEADER_END, len(DATA) - 1), st.integers(1, 255))
def test_any_changed_tensor_byte_fails_its_checksum(tmp_path, position, flip):
    data = bytearray(DATA)
    data[position] ^= flip
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"tensor '[\w.]+' must have CRC-32 \d+, but its bytes give \d+"):
        load_into_a_fresh_skeleton(path)


@FILE_SETTINGS
@given(st.integers(0, HEADER_END - 1), st.integers(1, 255))
def test_any_changed_header_byte_is_an_error_or_harmless(tmp_path, position, flip):
    """A changed byte of the header is refused (JSON, dtypes, shapes, spans, metadata and module
    specs are all checked) or, where it lands in a field that changes nothing of what is loaded
    (a version string, padding), loads the same weights; JSON metadata has no checksum, so a
    change there that still describes valid modules (a digit of a conv's dilation) is not found."""
    data = bytearray(DATA)
    data[position] ^= flip
    path = tmp_path / "header.safetensors"
    path.write_bytes(bytes(data))
    try:
        loaded = load_into_a_fresh_skeleton(path)
    except CheckpointError as error:
        assert str(error).startswith("load: ")
        return
    state = loaded.state_dict()
    assert set(state) == set(EXPECTED)
    assert all(torch.equal(state[key], tensor) for key, tensor in EXPECTED.items())


def rewrite_modules(tmp_path, edit) -> Path:
    """The fixture with its "modules" metadata changed by ``edit(modules)``."""
    _, metadata = stf.read_header(FIXTURE)
    modules = json.loads(metadata["modules"])
    edit(modules)
    with safe_open(str(FIXTURE), framework="pt") as file:
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    path = tmp_path / "spec.safetensors"
    stf.write(path, tensors, {**metadata, "modules": json.dumps(modules)}, overwrite=True)
    return path


def rewrite_spec(tmp_path, name, **changes) -> Path:
    """The fixture with the spec of module ``name`` changed (None removes a key)."""
    def edit(modules):
        for key, value in changes.items():
            if value is None:
                modules[name].pop(key)
            else:
                modules[name][key] = value

    return rewrite_modules(tmp_path, edit)


@pytest.mark.parametrize("name, changes, message", [
    ("bitmap", dict(format="csr"), r"its weight is stored in format 'csr', which this prunekit cannot read .*upgrade"),
    ("bitmap", dict(format=3), r"its spec's format must be a format name \(one of .*\), but got 3"),
    ("bitmap", dict(format=["2:4"]), r"but got \['2:4'\]"),
    ("bitmap", dict(format="2:4"), r"a '2:4' weight is stored as tensors \['meta', 'values'\], but got "
                                   r"\['bitmap', 'values'\]"),
    ("bitmap", dict(format="csr16"), r"a 'csr16' weight is stored as tensors"),
    ("semi", dict(format="unstructured"), r"a 'unstructured' weight is stored as tensors \['bitmap', 'values'\]"),
    ("dense", dict(format="unstructured"), r"stored as tensors \['bitmap', 'values'\], but got \['weight'\]"),
    ("semi", dict(**{"class": "SparseEmbedding"}), r"class must be one of \['SparseConv2d', 'SparseLinear'\], but got "
                                                   r"'SparseEmbedding'"),
    ("semi", dict(**{"class": ["SparseLinear"]}), r"its spec is incomplete: TypeError"),
    ("semi", dict(in_features="sixty-four"), r"invalid literal for int\(\)"),
    ("semi", dict(in_features=None), r"its spec is incomplete: KeyError\('in_features'\)"),
    ("semi", dict(in_features=62), r"SparseLinear: tensor 'values' of a '2:4' 32x62 float32 weight must be float32 of "
                                   r"shape \(32, 31\)"),
    ("semi", dict(dtype="bfloat16"), r"tensor 'values' of a '2:4' 32x64 bfloat16 weight must be bfloat16"),
    ("semi", dict(dtype="int4"), r"its spec must give class, format, dtype and bias"),
    ("semi", dict(bias=False), r"expected no 'bias' tensor, but one is stored"),
    ("semi", dict(source="embedding"), r"argument 'source' must be 'linear' or 'conv1d', but got 'embedding'"),
    ("conv", dict(kernel_size=5), r"its spec is incomplete: TypeError"),
    ("conv", dict(kernel_size=[3, 3, 3]), r"argument 'kernel_size' must be an int or a pair"),
    ("conv", dict(padding="full"), r"argument 'padding' must be 'same', 'valid', an int or a pair, but got 'full'"),
    ("conv", dict(padding_mode="mirror"), r"argument 'padding_mode' must be one of"),
    ("conv", dict(stride=[2, 2]), r"SparseConv2d: padding='same' needs stride 1, but got stride=\(2, 2\)"),
    ("conv24", dict(stride=[2, 2]), r" of argument 'model' must have \(out, in, kernel, stride\) = "
                                    r"\(32, 32, 1, 1, 2, 2\) as in .*, but got \(32, 32, 1, 1, 1, 1\)"),
    ("conv24", dict(**{"class": "SparseLinear", "in_features": 32, "out_features": 32}),
     r" of argument 'model' must be an nn.Linear, Conv1D or SparseLinear .* but got Conv2d"),
])
def test_module_specs_of_the_wrong_kind_are_named(tmp_path, name, changes, message):
    path = rewrite_spec(tmp_path, name, **changes)
    where = r"load: (sparse )?module '" + name + "'"  # a message starting with " " follows the name at once
    with pytest.raises(CheckpointError, match=where + (message if message.startswith(" ") else ".*" + message)):
        load_into_a_fresh_skeleton(path)


def test_incomplete_specs_and_unknown_modules_are_named(tmp_path):
    path = rewrite_modules(tmp_path, lambda modules: modules.update(semi={"class": "SparseLinear"}))
    with pytest.raises(CheckpointError, match=r"sparse module 'semi' .* its spec must give class, format, dtype and "
                                              r"bias, but got \{'class': 'SparseLinear'\}"):
        load_into_a_fresh_skeleton(path)
    path = rewrite_modules(tmp_path, lambda modules: modules.update(extra=modules["semi"]))  # no tensors stored
    with pytest.raises(CheckpointError, match=r"sparse module 'extra' .* expected a 'bias' tensor, but none is stored"):
        load_into_a_fresh_skeleton(path)
    path = rewrite_modules(tmp_path, lambda modules: modules.update(extra={**modules["semi"], "bias": False}))
    with pytest.raises(CheckpointError, match=r"sparse module 'extra' .* a '2:4' weight is stored as tensors "
                                              r"\['meta', 'values'\], but got \[\]"):
        load_into_a_fresh_skeleton(path)
