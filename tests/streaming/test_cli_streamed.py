"""`prunekit prune` streams a safetensors model directory by default (with --sparsify: the prunekit
checkpoint); --in-memory gives the same checkpoint; settings a streamed run cannot do fall back to
memory."""

import json
import sys
from pathlib import Path

import pytest
import torch
import transformers

import prunekit
from prunekit.app.cli import main
from prunekit.io import read_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama").save_pretrained(path, max_shard_size="40KB")
    return path


def _prune(model_dir: Path, out: Path, *extra: str) -> dict:
    assert main(["prune", str(model_dir), "--method", "sparsegpt", "--sparsity", "0.5", "--nsamples", "4",
                 "--seqlen", "16", "--batch-size", "2", "--no-eval", "--quiet", "--out", str(out), *extra]) == 0
    return json.loads((out / "report.json").read_text())


def test_streamed_by_default_equals_in_memory(model_dir, tmp_path, capsys):
    streamed = _prune(model_dir, tmp_path / "streamed")
    in_memory = _prune(model_dir, tmp_path / "in-memory", "--in-memory")
    assert streamed["streamed"] is True and "streamed" not in in_memory
    assert streamed["config"]["ignore"] == in_memory["config"]["ignore"] == ["lm_head"]
    assert streamed["prune"]["total_pruned"] == in_memory["prune"]["total_pruned"]
    first, second = (transformers.AutoModelForCausalLM.from_pretrained(tmp_path / side / "model").state_dict()
                     for side in ("streamed", "in-memory"))
    for key, value in second.items():
        assert torch.equal(first[key] == 0, value == 0), key
        torch.testing.assert_close(first[key], value, atol=1e-5, rtol=0)


def test_sparsify_streams_the_prunekit_checkpoint(model_dir, tmp_path):
    streamed = _prune(model_dir, tmp_path / "streamed", "--sparsify")
    in_memory = _prune(model_dir, tmp_path / "in-memory", "--sparsify", "--in-memory")
    assert streamed["streamed"] is True and "streamed" not in in_memory
    assert streamed["checkpoint"]["format"] == in_memory["checkpoint"]["format"] == \
        "prunekit compressed (prunekit.load)"
    stored = [{name: spec["format"] for name, spec in read_info(tmp_path / side / "model")["modules"].items()}
              for side in ("streamed", "in-memory")]
    assert stored[0] == stored[1] and len(stored[0]) == 14  # every projection of the 2 blocks, smallest-exact
    first, second = (prunekit.load(tmp_path / side / "model", format="dense").state_dict()
                     for side in ("streamed", "in-memory"))
    for key, value in second.items():
        assert torch.equal(first[key] == 0, value == 0), key
        torch.testing.assert_close(first[key], value, atol=1e-5, rtol=0)


def test_global_allocation_falls_back_to_memory(model_dir, tmp_path, capsys):
    assert main(["prune", str(model_dir), "--method", "magnitude", "--sparsity", "0.5", "--allocation", "global",
                 "--nsamples", "4", "--seqlen", "16", "--no-eval", "--log-level", "info", "--out",
                 str(tmp_path / "out")]) == 0
    assert "pruning in memory: --allocation global" in capsys.readouterr().err
    assert "streamed" not in json.loads((tmp_path / "out" / "report.json").read_text())
