"""prunekit.save / prunekit.load: lossless round trips (bit-identical outputs) of sparsified tiny HF
models and CNNs, sizes on disk, memory mapping, and every way a checkpoint or a target can be bad."""

import copy
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

import prunekit
from prunekit import PruneConfig
from prunekit.io import FORMAT_VERSION, WEIGHTS_NAME, CheckpointError, read_info
from prunekit.io import safetensors_file as stf
from prunekit.nn import SparseConv2d, SparseLinear
from prunekit.surgery import SparsifyConfig

from cnn_models import MobileNetish, ResNetish, cnn_calibration, cnn_model
from tiny_models import calibration, tiny_model

HF_ARCHITECTURES = ["llama", "opt", "gpt2", "bert"]
_PRUNED = {}


def sparse_hf(arch, sparsity, dtype=torch.bfloat16):
    """A tiny model pruned (magnitude, every layer including the LM head), cast to ``dtype``; and
    its sparsified copy."""
    if (arch, sparsity) not in _PRUNED:
        model = tiny_model(arch)
        prunekit.prune(model, PruneConfig(method="magnitude", sparsity=sparsity, progress=False), None)
        _PRUNED[arch, sparsity] = model
    dense = copy.deepcopy(_PRUNED[arch, sparsity]).to(dtype)
    sparse = copy.deepcopy(dense)
    prunekit.sparsify_(sparse, SparsifyConfig(format=fmt(sparsity)))
    return dense, sparse


def fmt(sparsity) -> str:
    """Explicit formats: "auto" keeps 50% and 2:4 dense (below the break-even at 16 rows)."""
    return "2:4" if sparsity == "2:4" else "unstructured"


def hf_output(model, arch):
    with torch.no_grad():
        output = model(**calibration(arch, seed=3)[0])
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


def dense_checkpoint_bytes(model, path) -> int:
    """Size of the model's dense state_dict as one safetensors file (tied tensors once)."""
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        if tensor.untyped_storage().data_ptr() in seen:
            continue
        seen.add(tensor.untyped_storage().data_ptr())
        state[key] = tensor.contiguous()
    save_file(state, path)
    return os.path.getsize(path)


def sparse_module_ratio(info) -> float:
    """On-disk bytes of the sparse modules' tensors over their dense size (same dtype)."""
    stored = dense = 0
    for name, spec in info["modules"].items():
        for key, entry in info["tensors"].items():
            if key.rsplit(".", 1)[0] == name:
                stored += _entry_bytes(entry)
        element = torch.empty(0, dtype=getattr(torch, spec["dtype"])).element_size()
        rows, cols = spec["out_features"], spec["in_features"]
        dense += (rows * cols + (rows if spec["bias"] else 0)) * element
    return stored / dense


def _entry_bytes(entry) -> int:
    numel = 1
    for d in entry["shape"]:
        numel *= d
    return numel * stf.DTYPE_OF_CODE[entry["dtype"]].itemsize


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("arch", HF_ARCHITECTURES)
@pytest.mark.parametrize("sparsity", [0.5, "2:4", 0.9])
def test_hf_round_trip_is_bit_identical_and_small(arch, sparsity, tmp_path):
    dense, sparse = sparse_hf(arch, sparsity)
    expected = hf_output(sparse, arch)
    weights = prunekit.save(sparse, tmp_path / "ckpt")
    assert weights == tmp_path / "ckpt" / WEIGHTS_NAME
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["model_type"] == dense.config.model_type
    loaded = prunekit.load(tmp_path / "ckpt", format="saved")  # the formats it ran in (explicit ones)
    assert type(loaded) is type(sparse) and not loaded.training
    assert torch.equal(hf_output(loaded, arch), expected)
    loaded_modules = {n: m.format for n, m in loaded.named_modules() if isinstance(m, SparseLinear)}
    assert loaded_modules == {n: m.format for n, m in sparse.named_modules() if isinstance(m, SparseLinear)}
    info = read_info(tmp_path / "ckpt")
    ratio = sparse_module_ratio(info)
    file_ratio = weights.stat().st_size / dense_checkpoint_bytes(dense, tmp_path / "dense.safetensors")
    if sparsity == 0.9:
        assert ratio <= 0.3 and file_ratio <= 0.4, (ratio, file_ratio)
    else:
        assert ratio <= 0.6 and file_ratio <= 0.75, (ratio, file_ratio)


@pytest.mark.parametrize("skeleton_cls", [ResNetish, MobileNetish])
@pytest.mark.parametrize("sparsity", [0.5, "2:4", 0.9])
def test_cnn_round_trip_into_a_skeleton(skeleton_cls, sparsity, tmp_path):
    arch = "resnet" if skeleton_cls is ResNetish else "mobilenet"
    model = cnn_model(arch)
    ignore = ["stem.0"] if sparsity == "2:4" else []
    prunekit.prune(model, PruneConfig(method="magnitude", sparsity=sparsity, ignore=ignore, progress=False), None)
    dense_bytes = dense_checkpoint_bytes(model, tmp_path / "dense.safetensors")
    prunekit.sparsify_(model, SparsifyConfig(format=fmt(sparsity)))
    x = cnn_calibration(seed=4)[0]
    with torch.no_grad():
        expected = model(x)
    path = prunekit.save(model, tmp_path / "cnn.safetensors")
    skeleton = skeleton_cls().eval()  # other random weights, dense modules
    loaded = prunekit.load(path, model=skeleton, format="saved")
    assert loaded is skeleton
    assert {n for n, m in loaded.named_modules() if isinstance(m, SparseConv2d)} == \
        {n for n, m in model.named_modules() if isinstance(m, SparseConv2d)}
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert path.stat().st_size < dense_bytes
    again = prunekit.load(path, model=skeleton, format="saved")  # into an already sparsified skeleton
    with torch.no_grad():
        assert torch.equal(again(x), expected)


def test_fp32_fp16_and_tied_weights_round_trip(tmp_path):
    model = tiny_model("llama")
    prunekit.prune(model, PruneConfig(method="magnitude", sparsity=0.6, progress=False), None)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied: stored once
    prunekit.sparsify_(model, SparsifyConfig(format="unstructured"))
    expected = hf_output(model, "llama")
    loaded = prunekit.load(prunekit.save(model, tmp_path / "fp32"), format="saved")
    assert torch.equal(hf_output(loaded, "llama"), expected)
    assert "lm_head.weight" in read_info(tmp_path / "fp32")["aliases"]
    half = copy.deepcopy(model).half()  # fp16 sparse modules (exact expansion on CPU)
    prunekit.save(half, tmp_path / "half.safetensors")
    loaded = prunekit.load(tmp_path / "half.safetensors", format="saved")  # an HF model saved as one file rebuilds too
    assert loaded.model.layers[0].mlp.up_proj.weight_dtype == torch.float16
    assert torch.equal(loaded.model.layers[0].mlp.up_proj.values, half.model.layers[0].mlp.up_proj.values)


def test_plain_module_with_tied_parameters(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(32, 32)
            self.b = nn.Linear(32, 32)
            self.b.weight = self.a.weight
            self.head = nn.Linear(32, 32)

        def forward(self, x):
            return self.head(self.b(self.a(x)))

    torch.manual_seed(0)
    model = Tied()
    with torch.no_grad():
        model.head.weight[torch.rand(32, 32) < 0.9] = 0
    prunekit.sparsify_(model, SparsifyConfig(format="unstructured"))
    path = prunekit.save(model, tmp_path / "tied")
    skeleton = Tied()
    prunekit.load(path, model=skeleton, format="saved")
    assert skeleton.a.weight is skeleton.b.weight
    x = torch.randn(3, 32)
    assert torch.equal(skeleton(x), model(x))


def test_memory_mapping_and_copy_on_write(tmp_path):
    _, sparse = sparse_hf("opt", 0.9)
    path = prunekit.save(sparse, tmp_path / "ckpt")
    loaded = prunekit.load(tmp_path / "ckpt", format="saved")
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(path) in maps.read_text()
    layer = loaded.model.decoder.layers[0].fc1
    original = layer.values.clone()
    with torch.no_grad():
        layer.values.zero_()  # copy-on-write: the file keeps its bytes
    again = prunekit.load(tmp_path / "ckpt", format="saved")
    assert torch.equal(again.model.decoder.layers[0].fc1.values, original)
    in_ram = prunekit.load(tmp_path / "ckpt", mmap=False, format="saved")
    del again, loaded
    path.unlink()
    assert torch.equal(hf_output(in_ram, "opt"), hf_output(sparse, "opt"))  # no longer needs the file


# ----------------------------------------------------------------------------- bad targets

def test_existing_targets_are_refused_and_kept(tmp_path):
    _, sparse = sparse_hf("llama", 0.5)
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old contents")
    with pytest.raises(CheckpointError, match=r"argument 'path' must not exist \(pass overwrite=True to replace "
                                              r"it\), but .* exists"):
        prunekit.save(sparse, target)
    assert target.read_bytes() == b"old contents"
    directory = tmp_path / "dir"
    directory.mkdir()
    (directory / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match=r"argument 'path' must not exist or be an empty directory .* holds "
                                              r"\['notes.txt'\]"):
        prunekit.save(sparse, directory)
    assert sorted(p.name for p in directory.iterdir()) == ["notes.txt"]
    prunekit.save(sparse, target, overwrite=True)
    prunekit.save(sparse, directory, overwrite=True)
    assert (directory / "notes.txt").read_text() == "keep me"
    assert torch.equal(hf_output(prunekit.load(target), "llama"), hf_output(prunekit.load(directory), "llama"))
    with pytest.raises(CheckpointError, match="must be a file name, but .* is a directory"):
        prunekit.save(nn.Sequential(nn.Linear(2, 2)), directory, overwrite=True)
    with pytest.raises(CheckpointError, match="the directory of argument 'path' must exist"):
        prunekit.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "missing" / "x.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    prunekit.save(sparse, empty)  # an empty directory is fine
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_a_crash_while_writing_leaves_the_old_file(tmp_path, monkeypatch):
    _, sparse = sparse_hf("gpt2", 0.5)
    target = tmp_path / "model.safetensors"
    prunekit.save(nn.Sequential(nn.Linear(4, 4)), target)
    old = target.read_bytes()

    def crash(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(stf.os, "fsync", crash)
    with pytest.raises(OSError, match="simulated"):
        prunekit.save(sparse, target, overwrite=True)
    monkeypatch.undo()
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary file left


def test_meta_tensors_and_bad_arguments_are_refused(tmp_path):
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(CheckpointError, match="tensor '0.weight' is on the meta device"):
        prunekit.save(model, tmp_path / "meta.safetensors")
    assert not list(tmp_path.iterdir())
    with pytest.raises(TypeError, match="argument 'model' must be a torch.nn.Module, but got dict"):
        prunekit.save({}, tmp_path / "x")
    with pytest.raises(TypeError, match="argument 'path' must be a str or os.PathLike, but got int"):
        prunekit.load(3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prunekit.load(tmp_path / "nothing.safetensors")
    with pytest.raises(CheckpointError, match=f"must hold {WEIGHTS_NAME}"):
        prunekit.load(tmp_path)


# ----------------------------------------------------------------------------- bad checkpoints

@pytest.fixture
def cnn_checkpoint(tmp_path):
    model = cnn_model("resnet")
    prunekit.prune(model, PruneConfig(method="magnitude", sparsity="2:4", ignore=["stem.0"], progress=False), None)
    with torch.no_grad():
        model.fc.weight[torch.rand_like(model.fc.weight) < 0.8] = 0
    prunekit.sparsify_(model, SparsifyConfig(format="2:4"))  # fc (10 rows: too few for the 2:4 layout): unstructured
    assert {"2:4", "unstructured"} <= {m.format for m in model.modules() if isinstance(m, (SparseLinear, SparseConv2d))}
    return model, prunekit.save(model, tmp_path / "resnet.safetensors")


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(skeleton, state):
    assert not any(isinstance(m, (SparseLinear, SparseConv2d)) for m in skeleton.modules())
    assert all(torch.equal(v, state[k]) for k, v in skeleton.state_dict().items())


def rewrite(path, target, *, metadata=None, tensors=None, drop=()):
    """Rewrites a checkpoint with edited metadata/tensors and a consistent CRC manifest."""
    _, meta = stf.read_header(path)
    with safe_open(str(path), framework="pt") as file:
        stored = {k: file.get_tensor(k).clone() for k in file.keys()}
    stored.update(tensors or {})
    for key in drop:
        stored.pop(key)
    manifest = {k: {"dtype": stf.DTYPES[t.dtype], "shape": list(t.shape), "crc32": stf.crc32(t)}
                for k, t in stored.items()}
    meta = {**meta, "tensors": json.dumps(manifest), **(metadata or {})}
    stf.write(Path(target), stored, meta, overwrite=True)
    return Path(target)


def test_truncated_checkpoints(cnn_checkpoint, tmp_path):
    _, path = cnn_checkpoint
    data = path.read_bytes()
    skeleton = ResNetish().eval()
    state = _state(skeleton)
    for size, message in [(len(data) - 100, r"is truncated: expected \d+ bytes, but the file has \d+"),
                          (4, r"is truncated: expected at least 8 bytes"),
                          (200, r"is truncated: expected a \d+-byte header")]:
        cut = tmp_path / f"cut{size}.safetensors"
        cut.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match=message):
            prunekit.load(cut, model=skeleton)
        _assert_unchanged(skeleton, state)
    longer = tmp_path / "longer.safetensors"
    longer.write_bytes(data + b"\0" * 8)
    with pytest.raises(CheckpointError, match="trailing data"):
        prunekit.load(longer, model=skeleton)


def test_corrupted_checkpoints(cnn_checkpoint, tmp_path):
    _, path = cnn_checkpoint
    data = bytearray(path.read_bytes())
    skeleton = ResNetish().eval()
    state = _state(skeleton)
    flipped = bytearray(data)
    flipped[-5] ^= 0x40  # a byte of tensor data
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"tensor '.*' must have CRC-32 \d+, but its bytes give \d+"):
        prunekit.load(tmp_path / "flipped.safetensors", model=skeleton)
    header = bytearray(data)
    header[9] = ord("#")  # the header's JSON
    (tmp_path / "header.safetensors").write_bytes(bytes(header))
    with pytest.raises(CheckpointError, match="its header is not valid JSON"):
        prunekit.load(tmp_path / "header.safetensors", model=skeleton)
    _assert_unchanged(skeleton, state)


def test_structurally_corrupt_tensors_with_valid_checksums(cnn_checkpoint, tmp_path):
    model, path = cnn_checkpoint
    skeleton = ResNetish().eval()
    state = _state(skeleton)
    meta = model.layer1.conv1.meta.clone()
    meta.zero_()  # every group names column 0 twice
    bad = rewrite(path, tmp_path / "meta.safetensors", tensors={"layer1.conv1.meta": meta})
    with pytest.raises(CheckpointError, match=r"sparse module 'layer1.conv1' .* 2:4 metadata is corrupt"):
        prunekit.load(bad, model=skeleton)
    bitmap = model.fc.bitmap.clone()
    bitmap[0, 0] ^= 1  # one more or one fewer marked position than stored values
    bad = rewrite(path, tmp_path / "bitmap.safetensors", tensors={"fc.bitmap": bitmap})
    with pytest.raises(CheckpointError, match=r"sparse module 'fc' .* tensor 'values' .* must be float32 of shape"):
        prunekit.load(bad, model=skeleton)
    values = model.layer2.conv2.values[:, :-1].contiguous()
    bad = rewrite(path, tmp_path / "shape.safetensors", tensors={"layer2.conv2.values": values})
    with pytest.raises(CheckpointError, match=r"tensor 'values' of a '2:4' 64x576 float32 weight must be float32 "
                                              r"of shape \(64, 288\), but got float32 of shape \(64, 287\)"):
        prunekit.load(bad, model=skeleton)
    bad = rewrite(path, tmp_path / "bias.safetensors", drop=["fc.bias"])
    with pytest.raises(CheckpointError, match=r"sparse module 'fc' .* expected a 'bias' tensor, but none is stored"):
        prunekit.load(bad, model=skeleton)
    manifest = json.loads(stf.read_header(path)[1]["tensors"])
    manifest["fc.bias"]["shape"] = [11]
    bad = rewrite(path, tmp_path / "manifest.safetensors", metadata={"tensors": json.dumps(manifest)})
    with pytest.raises(CheckpointError, match=r"tensor 'fc.bias' must be F32 of shape \[11\] \(metadata\), but the "
                                              r"header says F32 of shape \[10\]"):
        prunekit.load(bad, model=skeleton)
    _assert_unchanged(skeleton, state)


def test_wrong_version_and_foreign_files(cnn_checkpoint, tmp_path):
    _, path = cnn_checkpoint
    skeleton = ResNetish().eval()
    newer = rewrite(path, tmp_path / "v2.safetensors", metadata={"format_version": str(FORMAT_VERSION + 1)})
    with pytest.raises(CheckpointError, match=r"format_version '3', but this prunekit reads versions \['1', '2'\] "
                                              r"\(written by a newer prunekit: upgrade prunekit\)"):
        prunekit.load(newer, model=skeleton)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match=r"is not a prunekit checkpoint: expected metadata "
                                              r"format='prunekit.checkpoint', but got None"):
        prunekit.load(foreign, model=skeleton)
    text = tmp_path / "model.pt"
    text.write_bytes(b"\x80\x04\x95 this is a pickle, not a checkpoint" + b"\0" * 64)
    with pytest.raises(CheckpointError, match="header length must be at most"):
        prunekit.load(text, model=skeleton)


def _wrong_json_cases():
    # (key, stored JSON, what the error must say). "model" holds an object whose content is checked
    # against the skeleton elsewhere; the mappings of specs also check their entries.
    objects = ["model", "modules", "module_aliases", "aliases"]
    cases = [(key, value, rf"metadata '{key}' must be a JSON object, but got {kind}")
             for key in objects for value, kind in (("[1, 2]", "list"), ("3", "int"), ("null", "NoneType"))]
    cases += [(key, '{"a": 1}', rf"the entries of metadata '{key}' must be JSON {entries}")
              for key, entries in (("modules", "objects"), ("module_aliases", "strings"), ("aliases", "strings"))]
    cases += [("nonpersistent", value, rf"metadata 'nonpersistent' must be a JSON array, but got {kind}")
              for value, kind in (('{"a": 1}', "dict"), ("3", "int"), ("null", "NoneType"))]
    cases += [("nonpersistent", '["a", 1]', r"the entries of metadata 'nonpersistent' must be JSON strings")]
    return cases


@pytest.mark.parametrize("key, value, message", _wrong_json_cases())
def test_metadata_of_the_wrong_json_type(cnn_checkpoint, tmp_path, key, value, message):
    _, path = cnn_checkpoint
    skeleton = ResNetish().eval()
    state = _state(skeleton)
    bad = rewrite(path, tmp_path / f"{key}.safetensors", metadata={key: value})
    with pytest.raises(CheckpointError, match=message):
        prunekit.load(bad, model=skeleton)
    _assert_unchanged(skeleton, state)


def test_another_architecture_is_refused(cnn_checkpoint, tmp_path):
    _, path = cnn_checkpoint
    mobilenet = MobileNetish().eval()
    state = _state(mobilenet)
    with pytest.raises(CheckpointError, match=r"argument 'model' must be a ResNetish \(the architecture the "
                                              r"checkpoint .* was saved from\), but got MobileNetish"):
        prunekit.load(path, model=mobilenet)
    _assert_unchanged(mobilenet, state)
    other = ResNetish(classes=7).eval()
    state = _state(other)
    with pytest.raises(CheckpointError, match=r"module 'fc' of argument 'model' must have \(out, in\) = \(10, 64\) "
                                              r"as in .*, but got \(7, 64\)"):
        prunekit.load(path, model=other)
    _assert_unchanged(other, state)
    with pytest.raises(CheckpointError, match="not a Hugging Face model.*must be a skeleton"):
        prunekit.load(path)
    _, llama = sparse_hf("llama", 0.5)
    prunekit.save(llama, tmp_path / "llama")
    opt = tiny_model("opt")
    with pytest.raises(CheckpointError, match="argument 'model' must be a LlamaForCausalLM .* but got OPTForCausalLM"):
        prunekit.load(tmp_path / "llama", model=opt)
    smaller = tiny_model("llama")
    smaller.model.layers = smaller.model.layers[:1]
    with pytest.raises(CheckpointError, match=r"argument 'model' must have a module 'model.layers.1\.\w+\.\w+'"):
        prunekit.load(tmp_path / "llama", model=smaller)


def llm_shaped(arch: str):
    """A tiny ``arch`` model whose linear layers hold the bulk of the parameters, as in real LLMs."""
    import transformers

    torch.manual_seed(0)
    decoder = dict(vocab_size=128, hidden_size=256, intermediate_size=704, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    configs = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, decoder),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, decoder),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, decoder),
        "opt": (transformers.OPTConfig, transformers.OPTForCausalLM,
                dict(vocab_size=128, hidden_size=256, ffn_dim=704, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=64, word_embed_proj_dim=256, tie_word_embeddings=False)),
    }
    config_cls, model_cls, kwargs = configs[arch]
    return model_cls(config_cls(**kwargs)).eval()


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "opt"])
@pytest.mark.parametrize("sparsity", [0.5, "2:4", 0.9])
def test_whole_checkpoint_of_llm_shaped_models_meets_the_size_bars(arch, sparsity, tmp_path):
    """The on-disk bars on the whole file, for tiny models whose linear layers hold the bulk of
    the parameters as in real LLMs (the tiny test models above are mostly embedding, which stays
    dense): at most 0.6x the dense bf16 checkpoint at 50% and 2:4, at most 0.3x at 90%."""
    model = llm_shaped(arch)
    linear_share = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) / sum(
        p.numel() for p in model.parameters())
    assert linear_share > 0.9
    prunekit.prune(model, PruneConfig(method="magnitude", sparsity=sparsity, progress=False), None)
    dense = model.to(torch.bfloat16)
    sparse = copy.deepcopy(dense)
    prunekit.sparsify_(sparse, SparsifyConfig(format=fmt(sparsity)))
    weights = prunekit.save(sparse, tmp_path / "ckpt")
    file_ratio = weights.stat().st_size / dense_checkpoint_bytes(dense, tmp_path / "dense.safetensors")
    print(f"{arch} whole-file ratio at {sparsity}: {file_ratio:.3f}")
    assert file_ratio <= (0.3 if sparsity == 0.9 else 0.6), file_ratio
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(prunekit.load(tmp_path / "ckpt", format="saved")(input_ids=ids).logits,
                           sparse(input_ids=ids).logits)
