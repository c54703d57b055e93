"""prune_pretrained(out_format="prunekit"): the streamed run writes, block by block, exactly the
checkpoint prunekit.save writes for the model pruned in memory (byte for byte), atomically, and
leaves nothing behind when the disk fills up."""

import errno
import json
import sys
from pathlib import Path

import pytest
import torch
import transformers

import prunekit
from prunekit.io import WEIGHTS_NAME, read_info
from prunekit.io import safetensors_file as stf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import calibration, tiny_model  # noqa: E402

CASES = [
    ("sparsegpt-50%", dict(method="sparsegpt", sparsity=0.5), {}),  # the LM head pruned on the last block's outputs
    ("wanda-2:4-offload", dict(method="wanda", sparsity="2:4", ignore=("lm_head",)), {"offload": True}),
    ("magnitude-tied-bf16", dict(method="magnitude", sparsity=0.6), {"tied": True}),
]


def _source(tmp_path: Path, tied: bool = False) -> Path:
    model = tiny_model("llama")
    if tied:  # one model.safetensors in bf16, the LM head stored once (as the embeddings)
        model.config.tie_word_embeddings = True
        model.tie_weights()
        model.to(torch.bfloat16).save_pretrained(tmp_path / "in")
    else:
        model.save_pretrained(tmp_path / "in", max_shard_size="40KB")
    return tmp_path / "in"


def _logits(model, calib) -> torch.Tensor:
    with torch.no_grad():
        return model(**calib[0]).logits


@pytest.mark.parametrize("name,settings,options", CASES, ids=[case[0] for case in CASES])
def test_streamed_checkpoint_is_prunekit_save_byte_for_byte(tmp_path, name, settings, options):
    source = _source(tmp_path, options.get("tied", False))
    calib = None if settings["method"] == "magnitude" else calibration("llama", batches=2)
    config = prunekit.PruneConfig(progress=False, **settings)
    offload = tmp_path / "activations" if options.get("offload") else None
    if offload is not None:
        offload.mkdir()
    report = prunekit.prune_pretrained(source, config, calib, tmp_path / "out", offload_dir=offload,
                                       out_format="prunekit")
    reference = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    expected = prunekit.prune(reference, config, calib)
    assert report.total_pruned == expected.total_pruned
    prunekit.save(reference, tmp_path / "saved")

    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", WEIGHTS_NAME]
    for file in ("config.json", WEIGHTS_NAME):
        assert (out / file).read_bytes() == (tmp_path / "saved" / file).read_bytes(), file
    info = read_info(out)
    tied = options.get("tied", False)
    assert set(info["modules"]) == {layer.name for layer in expected.layers if not (tied and layer.name == "lm_head")}
    assert info["aliases"] == ({"lm_head.weight": "model.embed_tokens.weight"} if tied else {})
    loaded = prunekit.load(out, format="dense")
    assert torch.equal(_logits(loaded, calibration("llama")), _logits(reference, calibration("llama")))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in", "out", "saved"] + (["activations"] if offload
                                                                                            else []))


def _no_output(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert not [p.name for p in tmp_path.iterdir() if ".partial-" in p.name], "staging directory left behind"


def _run(source: Path, out: Path, **kwargs):
    config = prunekit.PruneConfig(method="wanda", sparsity=0.5, progress=False)
    return prunekit.prune_pretrained(source, config, calibration("llama"), out, out_format="prunekit", **kwargs)


def test_disk_full_while_writing_a_block(tmp_path, monkeypatch):
    source = _source(tmp_path)
    real_write, calls = stf.write, []

    def write(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second block's staging file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(stf, "write", write)
    with pytest.raises(OSError, match=r"writing the weights of model.layers.1 .*the disk is full.*no output"):
        _run(source, tmp_path / "out")
    _no_output(tmp_path)


def test_disk_full_while_assembling_the_checkpoint(tmp_path, monkeypatch):
    source = _source(tmp_path)
    real = stf.write_spans

    def write_spans(path, spans, metadata, *, overwrite):
        real(path, spans, metadata, overwrite=overwrite)  # complete, then the rename fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stf, "write_spans", write_spans)
    with pytest.raises(OSError, match=rf"writing {WEIGHTS_NAME} .*the disk is full.*no output"):
        _run(source, tmp_path / "out")
    _no_output(tmp_path)


def test_bad_arguments(tmp_path):
    source = _source(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="argument 'out' must not exist"):
        _run(source, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(ValueError, match=r"'out_format' must be one of \('hf', 'prunekit'\), but got 'safetensors'"):
        prunekit.prune_pretrained(source, None, None, tmp_path / "other", out_format="safetensors")
    assert not (tmp_path / "other").exists()


def test_copy_is_chunked(tmp_path, monkeypatch):
    """write_spans holds at most COPY_CHUNK_BYTES: a tensor larger than that is copied in pieces and
    the file equals write's."""
    monkeypatch.setattr(stf, "COPY_CHUNK_BYTES", 64)
    tensors = {"b": torch.arange(100, dtype=torch.int16), "a": torch.randn(7, 9), "c": torch.zeros(0)}
    stf.write(tmp_path / "part.safetensors", tensors, {}, overwrite=False)
    stf.write(tmp_path / "direct.safetensors", tensors, {"k": json.dumps([1])}, overwrite=False)
    stf.write_spans(tmp_path / "copied.safetensors", stf.tensor_spans(tmp_path / "part.safetensors"),
                    {"k": json.dumps([1])}, overwrite=False)
    assert (tmp_path / "copied.safetensors").read_bytes() == (tmp_path / "direct.safetensors").read_bytes()
