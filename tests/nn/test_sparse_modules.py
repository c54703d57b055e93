"""SparseLinear and SparseConv2d: equal to the dense module in every format, dtype and geometry;
the auto choice; torch.compile; device and dtype moves; memory reports; errors."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prunekit
from prunekit.nn import BREAK_EVEN_SPARSITY, DEFAULT_ROWS, SparseConv2d, SparseLinear, break_even_sparsity


def prune_(weight: torch.Tensor, pattern, generator=None) -> None:
    """Zero weights in place: "2:4" along the flattened input dim, or a fraction at random."""
    with torch.no_grad():
        matrix = weight.reshape(weight.shape[0], -1)
        if pattern == "2:4":
            keep = prunekit.ops.nm_mask(matrix.abs().float(), 2, 4)
        else:
            keep = torch.rand(matrix.shape, generator=generator) >= pattern
        matrix.mul_(keep.to(matrix.dtype))


ON_AMX = prunekit.build_info()["cpu_bf16_spmm"] == "amx"


@pytest.fixture(autouse=True)
def avx512_auto_tables(monkeypatch):
    """The "auto" cases here are those of the AVX-512 break-even table; "auto" takes the table of
    the kind of CPU kernels that runs (tests/nn/test_auto_isa.py), so pin that kind."""
    from prunekit.nn import auto

    monkeypatch.setattr(auto, "cpu_kernel_kind", lambda: "avx512")


def pruned_linear(in_features, out_features, pattern, dtype=torch.float32, bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias).to(dtype)
    prune_(linear.weight, pattern, generator)
    return linear


def tolerance(dtype):
    return {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]


# ----------------------------------------------------------------------------- SparseLinear

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt,pattern", [("unstructured", 0.5), ("unstructured", 0.9), ("2:4", "2:4"),
                                         ("unstructured", "2:4"), ("dense", 0.5)])
def test_linear_matches_dense(dtype, fmt, pattern):
    linear = pruned_linear(64, 96, pattern, dtype)
    sparse = SparseLinear.from_dense(linear, fmt)
    assert sparse.format == fmt
    assert torch.equal(sparse.to_dense().weight, linear.weight)
    assert torch.equal(sparse.to_dense().bias, linear.bias)
    for shape in [(64,), (1, 64), (3, 64), (2, 7, 64), (37, 64)]:  # GEMV (<= 4 rows) and SpMM
        x = torch.randn(shape).to(dtype)
        expected = F.linear(x.float(), linear.weight.float(), linear.bias.float())
        got = sparse(x)
        assert got.dtype == dtype and got.shape == expected.shape
        torch.testing.assert_close(got.float(), expected, atol=tolerance(dtype), rtol=tolerance(dtype))


@pytest.mark.parametrize("fmt,pattern", [("unstructured", 0.5), ("unstructured", 0.95), ("2:4", "2:4")])
@pytest.mark.parametrize("rows", [1, 9])  # the GEMVs (CSR16 at 0.95) and the SpMM
def test_layers_around_a_frozen_sparse_layer_train_as_with_the_dense_one(fmt, pattern, rows):
    torch.manual_seed(0)
    dense_model = nn.Sequential(nn.Linear(16, 64), pruned_linear(64, 96, pattern), nn.ReLU(), nn.Linear(96, 3))
    sparse_model = nn.Sequential(dense_model[0], SparseLinear.from_dense(dense_model[1], fmt), nn.ReLU(),
                                 dense_model[3])
    dense_model[1].requires_grad_(False)
    sparse_model[1].bias.requires_grad_(True)  # a fine-tuned bias on the frozen weight
    dense_model[1].bias.requires_grad_(True)
    x = torch.randn(rows, 16)
    grads = []
    for model in (dense_model, sparse_model):
        model.zero_grad()
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in (model[0].weight, model[0].bias, model[1].bias, model[3].weight)])
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_layers_before_a_frozen_sparse_pointwise_conv_train():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 1)
    prune_(conv.weight, 0.7)
    first = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    grads = []
    for layer in (conv, SparseConv2d.from_dense(conv, "unstructured")):
        first.zero_grad()
        F.relu6(layer(first(x))).sum().backward()
        grads.append(first.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)


def test_linear_without_bias_and_odd_sizes():
    linear = pruned_linear(37, 5, 0.7, bias=False)
    sparse = SparseLinear.from_dense(linear, "unstructured")
    x = torch.randn(6, 37)
    torch.testing.assert_close(sparse(x), linear(x))
    assert sparse.bias is None and sparse.to_dense().bias is None


def test_linear_from_hf_conv1d():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv1d = Conv1D(64, 32)  # nx=32 inputs, nf=64 outputs, weight (32, 64)
    with torch.no_grad():
        conv1d.bias.normal_()
    matrix = conv1d.weight.detach().t().contiguous()  # (out, in): 2:4 groups along the input dim
    prune_(matrix, "2:4")
    with torch.no_grad():
        conv1d.weight.copy_(matrix.t())
    sparse = SparseLinear.from_dense(conv1d, "2:4")
    assert (sparse.in_features, sparse.out_features, sparse.source) == (32, 64, "conv1d")
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(sparse(x), conv1d(x))
    torch.testing.assert_close(sparse.to_dense()(x), conv1d(x))


@pytest.mark.parametrize("pattern,dtype,rows,expected", [
    (0.9, torch.float32, None, "unstructured"),
    (0.65, torch.float32, None, "unstructured"),
    (0.65, torch.float32, 128, "unstructured"),
    (0.65, torch.float32, 256, "dense"),  # more rows per call: the break-even rises to 0.7
    (0.55, torch.float32, None, "dense"),
    (0.55, torch.float32, 1, "unstructured"),  # decoding one token at a time: 0.5
    ("2:4", torch.float32, None, "dense"),  # 50%: below the break-even at 16 rows
    ("2:4", torch.float32, 4, "2:4"),
    (0.9, torch.bfloat16, None, "unstructured"),
    # Dense bf16 runs on AMX where the CPU has it; so does prunekit's bf16 path for > 4 rows (then
    # sparse from 0.5 up to 16 rows, 0.8 up to 128, 0.85 at more), else the fp32-widening SpMM (from
    # 0.85 at 16 rows, never at more).
    (0.8, torch.bfloat16, None, "unstructured" if ON_AMX else "dense"),
    (0.99, torch.bfloat16, 256, "unstructured" if ON_AMX else "dense"),
    (0.8, torch.bfloat16, 256, "dense"),
    (0.85, torch.bfloat16, 64, "unstructured" if ON_AMX else "dense"),
    (0.6, torch.bfloat16, 64, "dense"),
    ("2:4", torch.bfloat16, None, "2:4" if ON_AMX else "dense"),
    ("2:4", torch.bfloat16, 1, "2:4"),
    (0.9, torch.float16, None, "dense"),  # no fp16 kernel
])
def test_auto_choice(pattern, dtype, rows, expected):
    sparse = SparseLinear.from_dense(pruned_linear(256, 128, pattern, dtype), "auto", rows=rows)
    assert sparse.format == expected


@pytest.mark.parametrize("amx", [True, False])
def test_bf16_linear_break_even_follows_the_amx_path(monkeypatch, amx):
    """Both bf16 tables, whatever this CPU has: where prunekit's bf16 path runs on AMX (> 4 rows)
    sparse wins from 0.5 up to 16 rows, from 0.8 up to 128 and from 0.85 beyond; elsewhere from 0.85
    at 5-16 rows and never beyond. fp32 is the same either way."""
    from prunekit.nn import auto

    monkeypatch.setattr(auto, "_bf16_spmm_on_amx", lambda: amx)
    expected = {1: 0.5, 4: 0.5, 5: 0.5 if amx else 0.85, 16: 0.5 if amx else 0.85, 17: 0.8 if amx else None,
                128: 0.8 if amx else None, 129: 0.85 if amx else None}
    for rows, threshold in expected.items():
        assert break_even_sparsity("linear", torch.bfloat16, rows=rows) == threshold, rows
    assert [break_even_sparsity("linear", torch.float32, rows=rows) for rows in (4, 5, 16, 17, 128, 129)] == [
        0.5, 0.6, 0.6, 0.6, 0.6, 0.7]
    layer = pruned_linear(64, 64, 0.7, torch.bfloat16)
    assert SparseLinear.from_dense(layer, "auto").format == ("unstructured" if amx else "dense")


def test_auto_choice_with_a_break_even_override():
    assert SparseLinear.from_dense(pruned_linear(64, 64, "2:4"), "auto", break_even=0.4).format == "2:4"
    assert SparseLinear.from_dense(pruned_linear(64, 64, "2:4", torch.bfloat16), "auto", break_even=0.4).format == "2:4"
    assert SparseLinear.from_dense(pruned_linear(64, 64, 0.9), "auto", break_even=0.4).format == "unstructured"
    # valid 2:4 but rows not a multiple of 32: the layout cannot hold it, the bitmap can
    assert SparseLinear.from_dense(pruned_linear(64, 48, "2:4"), "auto", break_even=0.4).format == "unstructured"
    # valid 2:4 with one nonzero per group (75% sparse): the bitmap stores half as many values
    linear = pruned_linear(64, 64, "2:4")
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([1.0, 0, 0, 0]).repeat(64, 16))
    assert SparseLinear.from_dense(linear, "auto", break_even=0.4).format == "unstructured"
    assert SparseLinear.from_dense(pruned_linear(64, 64, 0.3), "auto", break_even=0.2).format == "unstructured"
    assert SparseLinear.from_dense(pruned_linear(64, 64, 0.3), "auto", break_even=0.5).format == "dense"
    assert SparseLinear.from_dense(pruned_linear(64, 64, 0.9, torch.float16), "auto", break_even=0.1).format == "dense"
    fmt, reason = SparseLinear.auto_format(pruned_linear(1024, 512, 0.3))
    assert fmt == "dense" and "break-even 0.60" in reason
    assert break_even_sparsity("linear", torch.float32) == 0.6 and DEFAULT_ROWS == 16
    assert break_even_sparsity("linear", torch.bfloat16, rows=64) == (0.8 if ON_AMX else None)
    assert break_even_sparsity("linear", torch.bfloat16, rows=128) == (0.8 if ON_AMX else None)
    assert break_even_sparsity("linear", torch.bfloat16, rows=129) == (0.85 if ON_AMX else None)
    assert break_even_sparsity("linear", torch.bfloat16, rows=16) == (0.5 if ON_AMX else 0.85)
    assert break_even_sparsity("linear", torch.bfloat16, rows=4) == 0.5
    # "auto" follows: a 70%-sparse bf16 layer at the default 16 rows is sparse only where AMX runs it.
    expected = "unstructured" if ON_AMX else "dense"
    assert SparseLinear.from_dense(pruned_linear(64, 64, 0.7, torch.bfloat16), "auto").format == expected
    assert break_even_sparsity("conv", torch.float32) is None
    assert set(BREAK_EVEN_SPARSITY) == {"linear", "conv1x1", "conv"}
    with pytest.raises(ValueError, match=r"argument 'break_even' must be in \[0, 1\], but got 1.5"):
        SparseLinear.from_dense(pruned_linear(64, 64, 0.3), "auto", break_even=1.5)
    with pytest.raises(ValueError, match=r"argument 'rows' must be >= 1, but got 0"):
        SparseLinear.from_dense(pruned_linear(64, 64, 0.3), "auto", rows=0)


@pytest.mark.parametrize("fmt,pattern", [("unstructured", 0.9), ("2:4", "2:4")])
def test_linear_compiles_fullgraph(fmt, pattern):
    linear = pruned_linear(64, 32, pattern)
    sparse = SparseLinear.from_dense(linear, fmt)
    compiled = torch.compile(sparse, fullgraph=True)
    x = torch.randn(5, 64)
    torch.testing.assert_close(compiled(x), linear(x))


def test_memory_report():
    linear = pruned_linear(256, 128, 0.9)
    sparse = SparseLinear.from_dense(linear, "unstructured")
    report = sparse.memory()
    dense = 256 * 128 * 4 + 128 * 4
    assert report["dense"] == dense and report["format"] == "unstructured" and report["device"] == "cpu"
    nnz = int((linear.weight != 0).sum())
    assert report["state"] == nnz * 4 + 128 * 16 * 2 + 129 * 8 + 128 * 4
    assert report["total"] == report["state"] + report["runtime"] and report["ratio"] < 0.2
    semi = SparseLinear.from_dense(pruned_linear(256, 128, "2:4"), "2:4").memory()
    assert semi["runtime"] > 0  # the CPU bitmap view of the 2:4 weight
    assert 0.5 < semi["ratio"] < 0.65
    assert "format='unstructured'" in repr(sparse) and "sparsity=0.8" in repr(sparse)


def test_dtype_moves_keep_the_module_exact():
    linear = pruned_linear(64, 64, "2:4")
    for fmt in ("unstructured", "2:4"):
        sparse = SparseLinear.from_dense(linear, fmt).to(torch.bfloat16)
        assert sparse.weight_dtype == torch.bfloat16
        assert torch.equal(sparse.to_dense().weight, linear.weight.to(torch.bfloat16))
        x = torch.randn(3, 64, dtype=torch.bfloat16)
        torch.testing.assert_close(sparse(x).float(), F.linear(x.float(), linear.weight.bfloat16().float(),
                                                               linear.bias.bfloat16().float()), atol=2e-2, rtol=2e-2)
        half = SparseLinear.from_dense(linear, fmt).half()  # no fp16 kernel: exact expansion + F.linear
        xh = torch.randn(3, 64).half()
        torch.testing.assert_close(half(xh), F.linear(xh, linear.weight.half(), linear.bias.half()))
    meta = SparseLinear.from_dense(linear, "2:4").to("meta")  # no data: moves without runtime tensors
    assert meta.values.device.type == "meta" and meta.runtime_bitmap is None
    empty = meta.to_empty(device="cpu")  # uninitialised metadata: a runtime view only if it happens to be valid
    with torch.no_grad():
        empty.meta.zero_()  # every group names column 0 twice: corrupt
    empty = empty.to("cpu")  # a move rebuilds the runtime tensors: no view of corrupt metadata, no error yet
    assert empty.runtime_bitmap is None
    with pytest.raises(ValueError, match="decompress_24"):  # the forward expands the weight and checks it
        empty(torch.randn(2, 64))


def test_state_dict_round_trip_into_a_sparse_module():
    linear = pruned_linear(64, 64, 0.8)
    sparse = SparseLinear.from_dense(linear, "unstructured")
    assert set(sparse.state_dict()) == {"values", "bitmap", "row_offsets", "bias"}
    twin = SparseLinear.from_dense(linear, "unstructured")
    twin.load_state_dict(sparse.state_dict())
    semi = SparseLinear.from_dense(pruned_linear(64, 64, "2:4"), "2:4")
    assert set(semi.state_dict()) == {"values", "meta", "bias"}  # the runtime bitmap is not state


def test_linear_errors():
    with pytest.raises(ValueError, match=r"argument 'module' must be an nn.Linear or a transformers Conv1D, but "
                                         r"got Embedding"):
        SparseLinear.from_dense(nn.Embedding(4, 4))
    with pytest.raises(ValueError, match=r"argument 'format' must be one of .* but got 'csr'"):
        SparseLinear.from_dense(pruned_linear(64, 64, 0.5), "csr")
    with pytest.raises(ValueError, match=r"format='2:4' needs at most 2 nonzeros .* row 0, columns 0\.\.3 hold [34]"):
        SparseLinear.from_dense(pruned_linear(64, 64, 0.0), "2:4")
    with pytest.raises(ValueError, match=r"rows % 32 == 0 .* but the weight matrix is 48 x 64"):
        SparseLinear.from_dense(pruned_linear(64, 48, "2:4"), "2:4")
    with pytest.raises(ValueError, match=r"format='unstructured' holds float32, bfloat16 or float16 weights, but "
                                         r"the weight is float64"):
        SparseLinear.from_dense(pruned_linear(64, 64, 0.5, torch.float64), "unstructured")
    sparse = SparseLinear.from_dense(pruned_linear(64, 64, 0.5), "unstructured")
    with pytest.raises(ValueError, match="in_features=64"):
        sparse(torch.randn(2, 63))


# ----------------------------------------------------------------------------- SparseConv2d

CONV_GEOMETRIES = [
    dict(kernel_size=1),
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=1, stride=2),
    dict(kernel_size=3, dilation=2, padding=2),
    dict(kernel_size=(3, 1), padding=(1, 0)),
    dict(kernel_size=3, padding="same"),
    dict(kernel_size=3, padding="valid"),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding=1, padding_mode="circular", bias=False),
]


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=lambda g: ",".join(f"{k}={v}" for k, v in g.items()))
@pytest.mark.parametrize("fmt,pattern", [("unstructured", 0.7), ("2:4", "2:4"), ("dense", 0.5)])
def test_conv_matches_dense(geometry, fmt, pattern):
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 32, **geometry)
    prune_(conv.weight, pattern, torch.Generator().manual_seed(0))
    sparse = SparseConv2d.from_dense(conv, fmt)
    assert sparse.format == fmt
    assert sparse.pointwise == (conv.kernel_size == (1, 1) and conv.stride == (1, 1))
    back = sparse.to_dense()
    assert torch.equal(back.weight, conv.weight) and back.padding == conv.padding and back.stride == conv.stride
    for shape in [(2, 32, 9, 11), (32, 8, 8)]:  # batched and unbatched
        x = torch.randn(shape)
        torch.testing.assert_close(sparse(x), conv(x), atol=1e-5, rtol=1e-5)


def test_conv_channels_last_and_bf16_inputs():
    conv = nn.Conv2d(16, 32, 1)
    prune_(conv.weight, 0.8)
    sparse = SparseConv2d.from_dense(conv, "unstructured")
    x = torch.randn(2, 16, 5, 5).to(memory_format=torch.channels_last)
    torch.testing.assert_close(sparse(x), conv(x))
    bf16 = SparseConv2d.from_dense(conv.to(torch.bfloat16), "unstructured")  # no bf16 conv kernel: fallback
    xb = torch.randn(2, 16, 5, 5, dtype=torch.bfloat16)
    torch.testing.assert_close(bf16(xb), conv(xb))


def test_conv_auto_choice():
    pointwise = nn.Conv2d(64, 64, 1)
    prune_(pointwise.weight, 0.9)
    assert SparseConv2d.from_dense(pointwise).format == "unstructured"
    pointwise24 = nn.Conv2d(64, 64, 1)
    prune_(pointwise24.weight, "2:4")
    assert SparseConv2d.from_dense(pointwise24).format == "dense"  # 50%: below the measured break-even
    assert SparseConv2d.from_dense(pointwise24, break_even=0.5).format == "2:4"
    spatial = nn.Conv2d(64, 64, 3, padding=1)  # no sparse kernel beats the dense 3x3 conv
    prune_(spatial.weight, 0.95)
    assert SparseConv2d.from_dense(spatial).format == "dense"
    assert SparseConv2d.from_dense(spatial, break_even=0.5).format == "dense"
    bf16 = nn.Conv2d(64, 64, 1).to(torch.bfloat16)
    prune_(bf16.weight, 0.9)
    assert SparseConv2d.from_dense(bf16).format == "dense"  # the conv kernel runs fp32 only


def test_conv_compiles_fullgraph():
    conv = nn.Conv2d(32, 64, 3, stride=2, padding=1)
    prune_(conv.weight, "2:4")
    compiled = torch.compile(SparseConv2d.from_dense(conv, "2:4"), fullgraph=True)
    x = torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(compiled(x), conv(x), atol=1e-5, rtol=1e-5)


def test_conv_errors():
    with pytest.raises(ValueError, match=r"argument 'module' must have groups=1 .* but got groups=4"):
        SparseConv2d.from_dense(nn.Conv2d(8, 8, 3, groups=4))
    with pytest.raises(ValueError, match=r"argument 'module' must be an nn.Conv2d, but got Linear"):
        SparseConv2d.from_dense(nn.Linear(4, 4))
    conv = nn.Conv2d(3, 32, 3)  # 27 inputs per output: no groups of four
    prune_(conv.weight, 0.5)
    with pytest.raises(ValueError, match="format='2:4'"):
        SparseConv2d.from_dense(conv, "2:4")


# ----------------------------------------------------------------------------- CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("fmt,pattern", [("unstructured", 0.9), ("2:4", "2:4")])
def test_modules_move_to_cuda_and_back(device, fmt, pattern):
    linear = pruned_linear(64, 64, pattern, torch.float16)
    sparse = SparseLinear.from_dense(linear, fmt).to(device)
    x = torch.randn(3, 64, dtype=torch.float16, device=device)
    torch.testing.assert_close(sparse(x), linear.to(device)(x), rtol=tolerance(torch.float16),
                               atol=tolerance(torch.float16))
    if device == "cuda" and fmt == "unstructured":  # the tiled layout prunekit's CUDA kernels run
        tiles = (sparse.runtime_tile_values, sparse.runtime_tile_bitmap, sparse.runtime_tile_offsets)
        assert sparse.dense_weight is None
        assert sparse.memory()["runtime"] == sum(t.numel() * t.element_size() for t in tiles)
    back = sparse.to("cpu")
    assert torch.equal(back.to_dense().weight, linear.weight.cpu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_linear_runs_csr16_at_high_sparsity(dtype, monkeypatch):
    from prunekit.nn import auto

    torch.manual_seed(0)
    linear = nn.Linear(300, 70).to(dtype)
    with torch.no_grad():
        linear.weight[torch.rand(70, 300) < 0.95] = 0  # above every 1-row threshold
    module = SparseLinear.from_dense(linear, format="unstructured")
    nnz = int(module.values.numel())
    assert module.runtime_col_indices is not None and module.runtime_col_indices.numel() == nnz
    assert module.memory()["runtime"] == 2 * nnz
    calls = []
    real = torch.ops.prunekit.sparse_linear_csr16
    monkeypatch.setattr(torch.ops.prunekit, "sparse_linear_csr16", lambda *a: calls.append(a[0].shape) or real(*a),
                        raising=False)
    for shape in [(1, 300), (4, 300), (2, 2, 300), (5, 300), (3, 7, 300)]:
        x = torch.randn(shape).to(dtype)
        expected = F.linear(x.float(), linear.weight.float(), linear.bias.float())
        torch.testing.assert_close(module(x).float(), expected, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5,
                                   atol=2e-2 if dtype == torch.bfloat16 else 1e-4)
    # This CPU's table decides by rows (at 0.95 every one-row entry runs CSR16).
    rows = {(1, 300): 1, (4, 300): 4, (2, 2, 300): 4, (5, 300): 5, (3, 7, 300): 21}
    assert calls == [shape for shape, n in rows.items() if auto.csr16_runs(n, module._csr16_choices[dtype])]
    assert calls[0] == (1, 300)
    # Below the thresholds of this CPU's table the bitmap kernels run, with the same results.
    calls.clear()
    choices = {torch.float32: ((1, False), (4, True), (None, False)), torch.bfloat16: ((2, False), (None, True))}
    monkeypatch.setattr(module, "_csr16_choices", choices)
    for shape in [(1, 300), (3, 300), (2, 3, 300)]:
        x = torch.randn(shape).to(dtype)
        expected = F.linear(x.float(), linear.weight.float(), linear.bias.float())
        torch.testing.assert_close(module(x).float(), expected, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5,
                                   atol=2e-2 if dtype == torch.bfloat16 else 1e-4)
    assert calls == ([(3, 300)] if dtype == torch.float32 else [(3, 300), (2, 3, 300)])
    with torch.no_grad():
        linear.weight.copy_(linear.weight * (torch.rand(70, 300) < 0.5))
        linear.weight[:, : 300 // 2] = 1.0
    dense_enough = SparseLinear.from_dense(linear, format="unstructured")
    assert dense_enough.sparsity < auto.CSR16_MIN_SPARSITY and dense_enough.runtime_col_indices is None
    assert dense_enough.memory()["runtime"] == 0


def test_csr16_thresholds_by_rows_and_cpu(monkeypatch):
    from prunekit.nn import auto

    table = ((1, 0.7), (4, 0.85), (None, None))
    assert auto.csr16_choices(0.8, table, 1000) == ((1, True), (4, False), (None, False))
    runs = lambda rows, sparsity: auto.csr16_runs(rows, auto.csr16_choices(sparsity, table, 1000))
    assert runs(1, 0.7) and not runs(1, 0.69)
    # Within one weight per row of a threshold counts: 489 of 576 zeros per row (85%, rounded down).
    assert auto.csr16_runs(4, auto.csr16_choices(1 - 87 / 576, table, 576))
    assert not auto.csr16_runs(4, auto.csr16_choices(1 - 88 / 576, table, 576))
    assert auto.reaches_sparsity(518 / 576, 0.9, 576) and not auto.reaches_sparsity(517 / 576, 0.9, 576)
    assert runs(4, 0.85) and not runs(2, 0.8)
    assert not runs(5, 0.99) and not auto.csr16_runs(1, ())
    info = {"cpu_isa_selected": "avx512", "cpu_features": ["avx512f", "avx512_bf16"], "cpu_bf16_spmm": "amx",
            "cpu_csr16_gemv": "gather", "cpu_bf16_gemv_max_rows": 4}
    monkeypatch.setattr("prunekit.build_info", lambda: info)
    tables = auto.CSR16_MIN_SPARSITY_BY_ROWS
    fp32 = tables["avx512"][torch.float32]
    up_to_4 = lambda table: tuple(entry for entry in table if entry[0] is None or entry[0] <= 4)
    assert auto.csr16_table(torch.float32) == fp32
    assert auto.csr16_table(torch.bfloat16) == up_to_4(tables["avx512"][torch.bfloat16])  # AMX past 4 rows
    info["cpu_csr16_gemv"] = "loads"  # AMD: the GEMV by scalar loads has its own table
    assert auto.csr16_table(torch.bfloat16) == up_to_4(tables["avx512 loads"][torch.bfloat16])
    assert auto.csr16_table(torch.float32) == tables["avx512 loads"][torch.float32]
    # Without AMX the bf16 GEMV runs 5-8 rows in chunks; the fp32 SpMM's threshold past them.
    info.update(cpu_bf16_spmm=None, cpu_bf16_gemv_max_rows=8)
    loads = tables["avx512 loads"]
    assert auto.csr16_table(torch.bfloat16) == loads[torch.bfloat16][:-1] + loads[torch.float32][-1:]
    assert auto.csr16_runs(8, auto.csr16_choices(0.9, auto.csr16_table(torch.bfloat16), 1000))
    assert not auto.csr16_runs(8, auto.csr16_choices(0.85, auto.csr16_table(torch.bfloat16), 1000))
    assert auto.csr16_runs(9, auto.csr16_choices(0.7, auto.csr16_table(torch.bfloat16), 1000))
    info.update(cpu_bf16_spmm="amx", cpu_bf16_gemv_max_rows=4, cpu_csr16_gemv="gather")
    info["cpu_features"] = ["avx512f"]  # no AVX-512 BF16: bf16 x is widened for the fp32 GEMV
    assert auto.csr16_table(torch.bfloat16) == fp32[:-1] + ((None, None),)
    info["cpu_bf16_spmm"] = None  # no AMX path either: the fp32 SpMM above 4 rows too
    assert auto.csr16_table(torch.bfloat16) == fp32
    info.update(cpu_isa_selected="avx2", cpu_features=["avx2"], cpu_bf16_gemv_max_rows=0, cpu_bf16_spmm=None)
    assert auto.csr16_table(torch.float32) == tables["avx2"][torch.float32]
    assert auto.csr16_table(torch.bfloat16) == tables["avx2"][torch.bfloat16]
    info.update(cpu_isa_selected="neon", cpu_features=[])
    assert auto.csr16_table(torch.float32) == tables["other"][torch.float32]
    assert auto.csr16_table(torch.float16) == ()
    # Every table: rows in increasing order, ending with the catch-all.
    for kind in tables.values():
        for rows_table in kind.values():
            limits = [rows for rows, _ in rows_table]
            assert limits[-1] is None and limits[:-1] == sorted(limits[:-1])


def test_load_state_dict_derives_the_runtime_tensors_again():
    # Same shapes and count of nonzeros, different columns: the CSR16 index (and the 2:4 bitmap
    # view) must follow the loaded weight, not describe the old one.
    torch.manual_seed(0)
    first, second = nn.Linear(64, 32), nn.Linear(64, 32)
    with torch.no_grad():
        for linear in (first, second):
            keep = torch.rand(32, 64).argsort(dim=1) < 6  # 6 nonzeros per row
            linear.weight.mul_(keep)
    a = SparseLinear.from_dense(first, format="unstructured")
    b = SparseLinear.from_dense(second, format="unstructured")
    assert a.runtime_col_indices is not None
    a.load_state_dict(b.state_dict())
    assert torch.equal(a.runtime_col_indices, b.runtime_col_indices)
    for rows in (1, 3, 9):
        x = torch.randn(rows, 64)
        torch.testing.assert_close(a(x), second(x), rtol=1e-5, atol=1e-5)
    dense24 = [nn.Linear(64, 32) for _ in range(2)]
    with torch.no_grad():
        for linear in dense24:
            linear.weight.mul_(torch.rand(32, 16, 4).argsort(dim=2).lt(2).reshape(32, 64))
    c, d = (SparseLinear.from_dense(linear, format="2:4") for linear in dense24)
    c.load_state_dict(d.state_dict())
    x = torch.randn(2, 64)
    torch.testing.assert_close(c(x), dense24[1](x), rtol=1e-5, atol=1e-5)


def test_forward_with_a_pruned_bias():
    """torch.nn.utils.prune moves the bias out of _parameters (bias_orig, bias_mask and a plain
    attribute); the kernel path still finds it and applies the pruned one."""
    import torch.nn.utils.prune as torch_prune

    linear = pruned_linear(64, 32, 0.9)
    sparse = SparseLinear.from_dense(linear, "unstructured")
    torch_prune.l1_unstructured(sparse, "bias", amount=0.5)
    assert "bias" not in sparse._parameters
    x = torch.randn(3, 64)
    expected = F.linear(x, linear.weight, sparse.bias)
    torch.testing.assert_close(sparse(x), expected)
    assert not torch.allclose(sparse(x), linear(x))  # the pruned bias, not the original


def test_one_row_call_is_cached_and_dropped_on_any_change():
    """A one-row CPU call caches its kernel call; the cached call gives the same result, and a new
    bias, a load, a move, a low-rank branch or a copy never run a stale one."""
    import copy
    import pickle

    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    with torch.no_grad():
        linear.weight[torch.rand(40, 96) < 0.9] = 0
    module = SparseLinear.from_dense(linear, format="unstructured")
    x = torch.randn(1, 96)
    first = module(x)
    assert module._one_row_call is not None and module._one_row_call[0] is torch.float32
    torch.testing.assert_close(module(x), first, rtol=0, atol=0)
    torch.testing.assert_close(first, F.linear(x, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)
    module(torch.randn(3, 96))  # more rows: the full path, the cache stays
    assert module._one_row_call is not None

    module.bias = nn.Parameter(torch.ones(40), requires_grad=False)
    assert module._one_row_call is None
    torch.testing.assert_close(module(x), F.linear(x, linear.weight, torch.ones(40)), rtol=1e-5, atol=1e-5)

    state = {key: value.clone() for key, value in module.state_dict().items()}
    state["values"].mul_(2)
    module.load_state_dict(state)
    assert module._one_row_call is None
    torch.testing.assert_close(module(x), F.linear(x, 2 * linear.weight, torch.ones(40)), rtol=1e-5, atol=1e-5)

    for copied in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert copied._one_row_call is None
        torch.testing.assert_close(copied(x), module(x), rtol=0, atol=0)

    module.set_lowrank(torch.ones(2, 96), torch.ones(40, 2))
    assert module._one_row_call is None
    expected = F.linear(x, 2 * linear.weight, torch.ones(40)) + 2 * x.sum()
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-4)
    assert module._one_row_call is None  # a low-rank branch always takes the full path

    module.set_lowrank(None, None)
    module(x)
    module.to(torch.bfloat16)
    assert module._one_row_call is None
    out = module(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and module._one_row_call[0] is torch.bfloat16
