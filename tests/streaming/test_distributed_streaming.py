"""prune_pretrained under torch.distributed (2 gloo ranks on 127.0.0.1): every rank streams the
blocks over its share of the calibration items, rank 0 alone writes; the output (Hugging Face
shards, or the prunekit checkpoint) equals the in-memory single-process run, and a write failing
on rank 0 stops both ranks with no output."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import transformers

import prunekit
from prunekit.io import read_info

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tiny_models import calibration, tiny_model  # noqa: E402


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_close(model, reference) -> None:
    got = model.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(got[key] == 0, value == 0), key
        assert float((got[key] - value).abs().max()) <= 1e-5, key


def test_two_ranks_stream_and_rank0_writes(tmp_path):
    source, out, results = tmp_path / "in", tmp_path / "out", tmp_path / "results"
    tiny_model("llama").save_pretrained(source, max_shard_size="40KB")
    results.mkdir()
    port = _free_port()
    processes = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
                   CUDA_VISIBLE_DEVICES="", PRUNEKIT_DIST_TIMEOUT="30")
        processes.append(subprocess.Popen([sys.executable, str(HERE / "_dist_worker.py"), str(source), str(out),
                                           str(results)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
    logs = [process.communicate(timeout=240)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]

    torch.set_num_threads(1)
    reference = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    # A distributed run keeps ATen's GEMMs (PruneConfig.linear_backend): the reference does too.
    config = prunekit.PruneConfig(method="sparsegpt", sparsity=0.5, progress=False, linear_backend="aten")
    expected = prunekit.prune(reference, config, calibration("llama"))
    _assert_close(transformers.AutoModelForCausalLM.from_pretrained(out), reference)
    # the prunekit checkpoint written by rank 0: the in-memory one's layers, formats and weights
    prunekit.save(reference, tmp_path / "saved")
    streamed, saved = read_info(tmp_path / "prunekit"), read_info(tmp_path / "saved")
    assert {name: spec["format"] for name, spec in streamed["modules"].items()} == \
        {name: spec["format"] for name, spec in saved["modules"].items()}
    assert streamed["tensors"].keys() == saved["tensors"].keys() and streamed["model"] == saved["model"]
    _assert_close(prunekit.load(tmp_path / "prunekit", format="dense"), reference)
    for rank in range(2):
        result = json.loads((results / f"rank{rank}.json").read_text())
        assert result["total_pruned"] == expected.total_pruned
        assert "DistributedError" in result["failure"] and "rank 0 of 2 failed" in result["failure"]
        assert "writing model.layers.1" in result["failure"]
    assert not (tmp_path / "full-disk").exists()
    assert not [p.name for p in tmp_path.iterdir() if ".partial-" in p.name]
