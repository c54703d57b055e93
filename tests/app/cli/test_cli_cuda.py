"""`prunekit prune --device cuda` against the same command on CPU (subprocesses): the blocks run on
the GPU, every layer reaches the same sparsity, and SparseGPT's reconstruction error is within
1.001x of the CPU's."""

import json

import pytest
import torch

import prunekit

from _cli import run_many

CUDA_READY = prunekit.build_info()["cuda_built"] and torch.cuda.is_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA build of prunekit and a GPU")]


@pytest.mark.parametrize("method,sparsity", [("sparsegpt", "2:4"), ("wanda", "0.5")])
def test_prune_on_cuda_matches_cpu(tiny_llama_dir, tmp_path, method, sparsity):
    common = ("prune", tiny_llama_dir, "--method", method, "--sparsity", sparsity, "--nsamples", "8", "--seqlen",
              "16", "--eval-samples", "4")
    results = run_many((*common, "--out", tmp_path / "cpu"), (*common, "--device", "cuda", "--out", tmp_path / "cuda"))
    for result in results:
        assert result.returncode == 0, result.stderr
    cpu, cuda = (json.loads((tmp_path / side / "report.json").read_text())["prune"] for side in ("cpu", "cuda"))
    assert cuda["total_sparsity"] == pytest.approx(cpu["total_sparsity"], abs=1e-3)
    cpu_layers = {layer["name"]: layer for layer in cpu["layers"]}
    for layer in cuda["layers"]:
        reference = cpu_layers[layer["name"]]
        assert layer["sparsity"] == pytest.approx(reference["sparsity"], abs=1e-3)
        if method == "sparsegpt":
            assert layer["reconstruction_error"] <= 1.001 * reference["reconstruction_error"] + 1e-7, layer["name"]
