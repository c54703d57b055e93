"""Sparse modules on CUDA: "auto" per GPU architecture (dense until a break-even table for the GPU
is measured; the table's rules on CPU-built stats), and, with a GPU, SparseLinear / SparseConv2d
running prunekit's tiled kernels equal to the dense masked model (2x rule), their runtime tiles,
moves, checkpoints and sparsify_."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prunekit
from prunekit.nn import SparseConv2d, SparseLinear, WeightStats, auto, choose_format

CUDA_READY = prunekit.build_info()["cuda_built"] and torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA build of prunekit and an NVIDIA GPU")


def cuda_stats(sparsity: float, dtype=torch.bfloat16, is_24=False, rows=4096, cols=4096) -> WeightStats:
    return WeightStats(rows, cols, dtype, torch.device("cuda", 0), int(round((1 - sparsity) * rows * cols)), is_24,
                       None)


# ---- "auto" on CUDA ------------------------------------------------------------------------------
def test_auto_keeps_dense_on_a_gpu_without_measurements(monkeypatch):
    monkeypatch.setattr(auto, "cuda_arch", lambda device=None: "sm90")
    monkeypatch.setitem(auto.BREAK_EVEN_SPARSITY_CUDA, "sm90", {})
    fmt, why = choose_format(cuda_stats(0.95), "linear")
    assert fmt == "dense"
    assert "no measurement of prunekit's CUDA kernels on this GPU (sm90)" in why
    assert "bench_break_even_cuda.py" in why


def test_the_shipped_cuda_tables_are_empty_until_measured():
    assert set(auto.BREAK_EVEN_SPARSITY_CUDA) >= {"sm80", "sm90"}
    assert all(table == {} for table in auto.BREAK_EVEN_SPARSITY_CUDA.values())


def test_auto_follows_a_measured_cuda_table(monkeypatch):
    monkeypatch.setattr(auto, "cuda_arch", lambda device=None: "sm90")
    monkeypatch.setitem(auto.BREAK_EVEN_SPARSITY_CUDA, "sm90", {
        "linear": {torch.bfloat16: ((16, 0.6), (128, 0.8), (None, None))},
        "linear24": {torch.bfloat16: ((16, 0.5), (None, None))},
        "conv1x1": {torch.bfloat16: ((None, 0.7),)},
    })
    assert choose_format(cuda_stats(0.7), "linear", rows=1)[0] == "unstructured"
    assert choose_format(cuda_stats(0.7), "linear", rows=64)[0] == "dense"
    assert choose_format(cuda_stats(0.9), "linear", rows=64)[0] == "unstructured"
    fmt, why = choose_format(cuda_stats(0.99), "linear", rows=2048)
    assert fmt == "dense" and "does not beat cuBLAS" in why
    assert choose_format(cuda_stats(0.5, is_24=True), "linear", rows=8)[0] == "2:4"
    assert choose_format(cuda_stats(0.5, is_24=True), "linear", rows=64)[0] == "dense"
    assert choose_format(cuda_stats(0.5, dtype=torch.float16), "linear", rows=1)[0] == "dense"  # no fp16 entry
    assert choose_format(cuda_stats(0.75), "conv1x1")[0] == "unstructured"
    assert choose_format(cuda_stats(0.95), "conv")[0] == "dense"  # no sparse kernel for k x k convolutions
    assert choose_format(cuda_stats(0.3), "linear", break_even=0.2)[0] == "unstructured"  # explicit threshold


def test_cuda_arch_names_the_compute_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert auto.cuda_arch(torch.device("cuda", 0)) == "sm90"


# ---- the modules on a GPU ----------------------------------------------------------------------
def masked_linear(in_features, out_features, sparsity, dtype, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, device="cuda", dtype=dtype)
    with torch.no_grad():
        linear.weight.mul_(torch.rand_like(linear.weight, dtype=torch.float32) >= sparsity)
    return linear


def assert_within_twice_dense(got, x, weight, bias):
    expected = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    if got.dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        return
    dense = F.linear(x, weight, bias)
    err, err_dense = (got.float() - expected).abs().max(), (dense.float() - expected).abs().max()
    assert err <= 2 * err_dense + 1e-6 * (1 + expected.abs().max()), (float(err), float(err_dense))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
@pytest.mark.parametrize("moved", [False, True])
@pytest.mark.cuda
@needs_gpu
def test_sparse_linear_on_cuda_equals_the_dense_masked_model(dtype, sparsity, moved):
    linear = masked_linear(512, 384, sparsity, dtype)
    if moved:  # built on the CPU, then moved: the tiles are built at the move
        sparse = SparseLinear.from_dense(linear.cpu(), "unstructured").cuda()
        linear.cuda()
    else:
        sparse = SparseLinear.from_dense(linear, "unstructured")
    assert sparse.runtime_tile_values is not None and sparse.dense_weight is None
    assert sparse.runtime_tile_values.is_cuda and sparse.memory()["runtime"] > 0
    for shape in [(512,), (1, 512), (4, 512), (16, 512), (3, 7, 512), (300, 512)]:
        x = torch.randn(shape, device="cuda", dtype=dtype)
        got = sparse(x)
        assert got.shape == (*shape[:-1], 384) and got.dtype == dtype
        assert_within_twice_dense(got.reshape(-1, 384), x.reshape(-1, 512), linear.weight, linear.bias)
    # The state stays the bitmap format: the same checkpoint entry as on the CPU.
    assert set(sparse.state_dict()) == {"values", "bitmap", "row_offsets", "bias"}
    back = sparse.cpu()
    assert back.runtime_tile_values is None
    assert torch.equal(back.to_dense().weight, linear.weight.cpu())


@pytest.mark.cuda
@needs_gpu
def test_sparse_conv1x1_on_cuda_runs_the_tiles_and_others_stay_dense():
    torch.manual_seed(0)
    for kernel_size in (1, 3):
        conv = nn.Conv2d(96, 64, kernel_size, padding=kernel_size // 2, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            conv.weight.mul_(torch.rand_like(conv.weight, dtype=torch.float32) >= 0.8)
        sparse = SparseConv2d.from_dense(conv, "unstructured")
        assert (sparse.runtime_tile_values is not None) == (kernel_size == 1)
        x = torch.randn(2, 96, 14, 14, device="cuda", dtype=torch.bfloat16)
        expected = F.conv2d(x.float(), conv.weight.float(), conv.bias.float(), padding=kernel_size // 2)
        torch.testing.assert_close(sparse(x).float(), expected, rtol=2e-2, atol=5e-2)


@pytest.mark.cuda
@needs_gpu
def test_sparsify_on_cuda_and_auto_without_measurements():
    model = nn.Sequential(masked_linear(256, 512, 0.9, torch.bfloat16), nn.ReLU(),
                          masked_linear(512, 128, 0.9, torch.bfloat16, seed=1))
    x = torch.randn(5, 256, device="cuda", dtype=torch.bfloat16)
    expected = model(x)
    prunekit.sparsify_(model, format="unstructured")
    assert all(isinstance(model[i], SparseLinear) for i in (0, 2))
    torch.testing.assert_close(model(x).float(), expected.float(), rtol=3e-2, atol=3e-2)
    fmt, why = SparseLinear.auto_format(masked_linear(256, 512, 0.95, torch.bfloat16))
    if not auto.BREAK_EVEN_SPARSITY_CUDA.get(auto.cuda_arch(torch.device("cuda"))):
        assert fmt == "dense" and "no measurement" in why


@pytest.mark.cuda
@needs_gpu
def test_checkpoint_round_trip_on_cuda(tmp_path):
    model = nn.Sequential(masked_linear(128, 64, 0.7, torch.bfloat16))
    prunekit.sparsify_(model, format="unstructured")
    path = tmp_path / "model"
    prunekit.io.save(model, path)
    loaded = nn.Sequential(nn.Linear(128, 64, device="cuda", dtype=torch.bfloat16))
    prunekit.io.load(path, loaded)
    x = torch.randn(3, 128, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(loaded.to("cuda")(x), model(x))
