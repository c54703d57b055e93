"""prune_pretrained: the streamed run equals prunekit.prune in memory (masks identical, weights within
1e-5), is written atomically, and refuses bad input without leaving output behind."""

import errno
import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import prunekit
from prunekit.io import safetensors_file as stf
from prunekit.streaming import SourceError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import calibration, tiny_model  # noqa: E402


def _save(model, directory: Path, shards: bool = True) -> Path:
    model.save_pretrained(directory, max_shard_size="40KB" if shards else "1GB")
    return directory


def _load(directory: Path, arch: str):
    loader = transformers.AutoModel if arch == "bert" else transformers.AutoModelForCausalLM
    return loader.from_pretrained(directory).eval()


def _digest(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _assert_same(streamed: torch.nn.Module, in_memory: torch.nn.Module) -> None:
    got, expected = streamed.state_dict(), in_memory.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key] == 0, value == 0), f"{key}: masks differ"
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=0, msg=key)


CASES = [
    ("llama", dict(method="sparsegpt", sparsity=0.5), {}),
    ("llama", dict(method="wanda", sparsity="2:4"), {"offload": True}),
    ("qwen2", dict(method="wanda", sparsity=0.5, allocation="owl"), {}),
    ("mistral", dict(method="wanda", sparsity=0.6, refine="dsnot"), {}),
    ("opt", dict(method="sparsegpt", sparsity="2:4", sequential=False, ignore=("lm_head",)), {}),
    ("gpt2", dict(method="magnitude", sparsity=0.7), {"no_calib": True}),
]


@pytest.mark.parametrize("arch,settings,options", CASES, ids=[f"{c[0]}-{c[1]['method']}" for c in CASES])
def test_streamed_equals_in_memory(tmp_path, arch, settings, options):
    source = _save(tiny_model(arch), tmp_path / "in")
    before = _digest(source)
    calib = None if options.get("no_calib") else calibration(arch, batches=2)
    config = prunekit.PruneConfig(progress=False, **settings)
    offload = tmp_path / "activations" if options.get("offload") else None
    if offload is not None:
        offload.mkdir()
    report = prunekit.prune_pretrained(source, config, calib, tmp_path / "out", offload_dir=offload)
    reference = _load(source, arch)
    expected = prunekit.prune(reference, config, calib)
    _assert_same(_load(tmp_path / "out", arch), reference)
    assert [layer.name for layer in report.layers] == [layer.name for layer in expected.layers]
    assert report.total_pruned == expected.total_pruned
    assert _digest(source) == before, "the input directory changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in", "out"] + (["activations"] if offload else []))
    if offload is not None:
        assert list(offload.iterdir()) == [], "offloaded activations left behind"


def test_offloaded_activations_live_in_files(tmp_path):
    from prunekit.calibrate.pipeline import BlockInput
    from prunekit.streaming.offload import ActivationStore

    store = ActivationStore(tmp_path)
    hidden = torch.randn(2, 5, 7)
    item = store.keep(BlockInput(hidden, (), {"position_ids": torch.arange(5)}, None))
    assert "hidden" not in vars(item) and len(list(store.root.iterdir())) == 1
    assert torch.equal(item.hidden, hidden)
    item.hidden = hidden.to(torch.bfloat16) * 2  # the walk assigns the block's outputs in place
    assert item.hidden.dtype == torch.bfloat16 and torch.equal(item.hidden, (hidden * 2).to(torch.bfloat16))
    assert (store.root / "item-000001.bin").stat().st_size == hidden.numel() * 2
    store.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="'offload_dir' must be an existing directory"):
        ActivationStore(tmp_path / "missing")


def test_tied_embeddings_single_file_bf16_source(tmp_path):
    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.to(torch.bfloat16).save_pretrained(tmp_path / "in")  # one model.safetensors, bf16, no lm_head tensor
    calib = calibration("llama")
    config = prunekit.PruneConfig(method="sparsegpt", sparsity=0.5, progress=False)
    prunekit.prune_pretrained(tmp_path / "in", config, calib, tmp_path / "out")  # computes in float32
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "in", dtype=torch.float32).eval()
    prunekit.prune(reference, config, calib)
    streamed = _load(tmp_path / "out", "llama")
    assert streamed.lm_head.weight is streamed.model.embed_tokens.weight
    _assert_same(streamed, reference)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float32"
    auto = prunekit.prune_pretrained(tmp_path / "in", config, calib, tmp_path / "out-bf16", save_dtype="auto")
    assert auto.total_pruned > 0
    assert {t.dtype for t in load_file(next((tmp_path / "out-bf16").glob("model-00001-*"))).values()} == \
        {torch.bfloat16}


def _config():
    return prunekit.PruneConfig(method="wanda", sparsity=0.5, progress=False)


def _no_output(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if ".partial-" in p.name], "staging directory left behind"


def test_missing_shard(tmp_path):
    source = _save(tiny_model("llama"), tmp_path / "in")
    next(source.glob("model-00002-*")).unlink()
    with pytest.raises(SourceError, match="must all exist, but .*model-00002"):
        prunekit.prune_pretrained(source, _config(), calibration("llama"), tmp_path / "out")
    _no_output(tmp_path, tmp_path / "out")


def test_truncated_shard(tmp_path):
    source = _save(tiny_model("llama"), tmp_path / "in")
    shard = next(source.glob("model-00002-*"))
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        prunekit.prune_pretrained(source, _config(), calibration("llama"), tmp_path / "out")
    _no_output(tmp_path, tmp_path / "out")


def test_shape_disagrees_with_config(tmp_path):
    source = _save(tiny_model("llama"), tmp_path / "in")
    index = json.loads((source / "model.safetensors.index.json").read_text())
    shard = source / index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    tensors = load_file(shard)
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][:100].clone()
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(SourceError, match=r"'model.layers.1.mlp.up_proj.weight' .* must have shape \(128, 64\) "
                                          r"\(from config.json\), but has \(100, 64\)"):
        prunekit.prune_pretrained(source, _config(), calibration("llama"), tmp_path / "out")
    _no_output(tmp_path, tmp_path / "out")


def test_missing_tensor(tmp_path):
    source = _save(tiny_model("llama"), tmp_path / "in", shards=False)
    tensors = load_file(source / "model.safetensors")
    del tensors["model.layers.0.self_attn.q_proj.weight"]
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SourceError, match="must hold 'model.layers.0.self_attn.q_proj.weight'"):
        prunekit.prune_pretrained(source, _config(), calibration("llama"), tmp_path / "out")


def test_output_exists(tmp_path):
    source = _save(tiny_model("llama"), tmp_path / "in")
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="argument 'out' must not exist"):
        prunekit.prune_pretrained(source, _config(), calibration("llama"), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_disk_full_mid_run(tmp_path, monkeypatch):
    source = _save(tiny_model("llama"), tmp_path / "in")
    before = _digest(source)
    real_write, calls = stf.write, []

    def write(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second block's shard
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(stf, "write", write)
    with pytest.raises(OSError, match=r"writing the weights of model.layers.1 .*the disk is full.*no output"):
        prunekit.prune_pretrained(source, _config(), calibration("llama"), tmp_path / "out")
    _no_output(tmp_path, tmp_path / "out")
    assert _digest(source) == before


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    source = _save(tiny_model("llama"), tmp_path / "in")
    from prunekit.streaming import pretrained

    def interrupt(self, unit):
        if unit == 1:
            raise KeyboardInterrupt
        return real(self, unit)

    real = pretrained.StreamedModel._write
    monkeypatch.setattr(pretrained.StreamedModel, "_write", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prunekit.prune_pretrained(source, _config(), calibration("llama"), tmp_path / "out")
    _no_output(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("settings,message", [
    (dict(method="magnitude", allocation="global"), "allocation 'global' .* whole model"),
    (dict(method="gblm"), "needs gradients"),
    (dict(method="wanda", sequential=False), "sequential=True"),
])
def test_refused_settings(tmp_path, settings, message):
    source = _save(tiny_model("llama"), tmp_path / "in")
    with pytest.raises(ValueError, match=message):
        prunekit.prune_pretrained(source, prunekit.PruneConfig(progress=False, **settings), calibration("llama"),
                                  tmp_path / "out")
    _no_output(tmp_path, tmp_path / "out")


def test_not_a_model_directory(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(SourceError, match="must hold config.json"):
        prunekit.prune_pretrained(tmp_path / "in", _config(), None, tmp_path / "out")
    (tmp_path / "in" / "config.json").write_text("{}")
    with pytest.raises(SourceError, match="must hold model.safetensors or model.safetensors.index.json"):
        prunekit.prune_pretrained(tmp_path / "in", _config(), None, tmp_path / "out")
