"""prunekit.ops.sparse_linear_24 (y = x W^T + b with W in compress_24's layout) and
meta_24_to_sm90 (its metadata in the Hopper GEMM's layout): against the references and fp32 (the
2x rule), bit for bit for the conversion (CPU and CUDA), opcheck, torch.compile, autograd, interop
with torch's SparseSemiStructuredTensorCUTLASS, and clear errors for bad input. The cuda-marked
cases run the kernels (every batch 1..16 of the small-batch kernel, the CUTLASS GEMMs above)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit import ops
from prunekit.ops import _reference as ref

from format_cases import random_24

HALF_DTYPES = [torch.float16, torch.bfloat16]
DTYPES = HALF_DTYPES + [torch.float32]
needs_gpu = pytest.mark.skipif(not (prunekit.build_info()["cuda_built"] and torch.cuda.is_available()),
                               reason="needs a CUDA build of prunekit and an NVIDIA GPU")


def weight_24(rows, cols, dtype, zero_fraction=0.0, seed=0, device="cpu"):
    """A random 2:4 weight (dense) and its (values, meta), on `device`."""
    dense = random_24(rows, cols, dtype, torch.Generator().manual_seed(seed), zero_fraction)
    dense = (dense / 8).to(dtype)  # entries of order 1: sums stay well inside fp16
    values, meta = ops.compress_24(dense)
    return dense.to(device), values.to(device), meta.to(device)


def inputs(batch_shape, cols, rows, dtype, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch_shape, cols, generator=g).to(dtype).to(device)
    bias = torch.randn(rows, generator=g).to(dtype).to(device)
    return x, bias


def assert_within_twice_dense(out, x, dense, bias):
    """fp32: close to the fp32 reference. fp16/bf16: the error against the fp32 reference at most
    twice that of dense torch in the same precision on the same device (the design's 2x rule)."""
    bias32 = None if bias is None else bias.float()
    expected = F.linear(x.float(), dense.float(), bias32)
    assert out.shape == expected.shape and out.dtype == x.dtype and out.device == x.device
    if out.numel() == 0:
        return
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5 * dense.shape[1])
        return
    same_precision = F.linear(x, dense, bias)
    err = (out.float() - expected).abs().max()
    err_dense = (same_precision.float() - expected).abs().max()
    # Floor: one rounding of the output, where dense torch happens to be exact.
    floor = torch.finfo(out.dtype).eps * (1 + expected.abs().max())
    assert err <= 2 * err_dense + floor, (float(err), float(err_dense))


# ---- CPU (and CUDA through the device fixture) ----------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(32, 32), (64, 96), (96, 160), (128, 256)])
@pytest.mark.parametrize("batch_shape", [(1,), (5,), (17,), (2, 3), (0,)])
@pytest.mark.parametrize("zero_fraction", [0.0, 0.5, 0.9, 1.0])
def test_matches_reference(device, dtype, shape, batch_shape, zero_fraction):
    rows, cols = shape
    dense, values, meta = weight_24(rows, cols, dtype, zero_fraction, seed=rows + cols, device=device)
    x, bias = inputs(batch_shape, cols, rows, dtype, device=device)
    for b in (None, bias):
        out = ops.sparse_linear_24(x, values, meta, cols, b)
        assert out.shape == (*batch_shape, rows) and out.dtype == dtype and out.device.type == device
        expected = ref.sparse_linear_24(x, values, meta, cols, b)
        if device == "cpu":  # the same fp32 products, sums and rounding
            torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        assert_within_twice_dense(out, x, dense, b)


# The bit placed for logical element (row, col) by CUTLASS 3's fill_layoutE for 16-bit A at TileK
# 128 (shape ((8,2,4),(16,2,4)) : ((128,16,2048),(1,1024,32)), atoms 8192 bits apart down the rows
# and rows_padded * 128 bits apart along k), spelled out for a few elements.
LAYOUT_SPOTS = [((0, 0), 0), ((1, 0), 128), ((8, 0), 16), ((16, 0), 2048), ((0, 4), 4), ((0, 16), 1024),
                ((0, 32), 32), ((63, 124), 7 * 128 + 16 + 3 * 2048 + 12 + 1024 + 3 * 32),
                ((64, 0), 8192), ((0, 128), 128 * 128)]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("shape", [(32, 32), (64, 128), (96, 160), (128, 256), (224, 416)])
@pytest.mark.parametrize("zero_fraction", [0.0, 0.5, 1.0])
def test_meta_to_sm90_matches_reference_bit_for_bit(device, dtype, shape, zero_fraction):
    _, _, meta = weight_24(*shape, dtype, zero_fraction, seed=sum(shape), device=device)
    out = ops.meta_24_to_sm90(meta)
    expected = ref.meta_24_to_sm90(meta.cpu())
    assert out.dtype == torch.uint8 and out.device == meta.device and out.shape == expected.shape
    assert torch.equal(out.cpu(), expected)


def test_meta_to_sm90_places_codes_where_cutlass_layout_says():
    rows, cols = 128, 256
    _, _, meta = weight_24(rows, cols, torch.float16, seed=3)
    out = ops.meta_24_to_sm90(meta).reshape(-1)
    codes = ((meta.reshape(-1)[ref._meta_offsets(rows, cols // 16, 2).reshape(-1)].long() & 0xFFFF)
             .reshape(rows, cols // 16, 1) >> (4 * torch.arange(4)) & 0xF).reshape(rows, cols // 4)
    for (row, col), bit in LAYOUT_SPOTS:
        if row < rows and col < cols:
            assert (int(out[bit // 8]) >> (bit % 8)) & 0xF == int(codes[row, col // 4]), (row, col)
    # Padding (rows 96..127 of a 96-row weight, columns past k) is zero; every code lands once.
    _, _, meta = weight_24(96, 160, torch.bfloat16, seed=4)
    out = ops.meta_24_to_sm90(meta)
    bits = ref._sm90_meta_bit(torch.arange(96).unsqueeze(1), 4 * torch.arange(40).unsqueeze(0), 128)
    used = torch.zeros(out.numel() * 2, dtype=torch.bool)
    used[(bits // 4).reshape(-1)] = True
    nibbles = torch.stack((out.reshape(-1) & 0xF, out.reshape(-1) >> 4), dim=1).reshape(-1)
    assert int(used.sum()) == 96 * 40 and not bool(nibbles[~used].any())


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 8).map(lambda b: 32 * b), cols=st.integers(1, 12).map(lambda b: 32 * b),
       dtype=st.sampled_from(HALF_DTYPES), zero_fraction=st.sampled_from([0.0, 0.4, 1.0]),
       seed=st.integers(0, 2**31 - 1))
def test_fuzz_meta_to_sm90_matches_reference(rows, cols, dtype, zero_fraction, seed):
    _, _, meta = weight_24(rows, cols, dtype, zero_fraction, seed)
    assert torch.equal(ops.meta_24_to_sm90(meta), ref.meta_24_to_sm90(meta))


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(device, dtype):
    rows, cols = 64, 128
    _, values, meta = weight_24(rows, cols, dtype, device=device)
    x, bias = inputs((3,), cols, rows, dtype, device=device)
    for b in (None, bias):
        torch.library.opcheck(torch.ops.prunekit.sparse_linear_24.default, (x, values, meta, cols, b))
    x.requires_grad_(True)
    torch.library.opcheck(torch.ops.prunekit.sparse_linear_24.default, (x, values, meta, cols, bias.requires_grad_()))
    if dtype != torch.float32:
        torch.library.opcheck(torch.ops.prunekit.meta_24_to_sm90.default, (meta,))
        meta_sm90 = ops.meta_24_to_sm90(meta)
        torch.library.opcheck(torch.ops.prunekit.sparse_linear_24.default,
                              (x.detach(), values, meta, cols, None, meta_sm90))


def test_compile_fullgraph(device):
    rows, cols = 64, 128
    _, values, meta = weight_24(rows, cols, torch.bfloat16, device=device)
    x, bias = inputs((4,), cols, rows, torch.bfloat16, device=device)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def layer(x):
        return F.relu(ops.sparse_linear_24(x, values, meta, cols, bias, ops.meta_24_to_sm90(meta)))

    torch.testing.assert_close(layer(x), F.relu(ops.sparse_linear_24(x, values, meta, cols, bias)))


def test_fake_shapes():
    values = torch.empty(96, 80, dtype=torch.float16, device="meta")
    meta = torch.empty(96, 10, dtype=torch.int16, device="meta")
    x = torch.empty(2, 7, 160, dtype=torch.float16, device="meta")
    assert ops.sparse_linear_24(x, values, meta, 160).shape == (2, 7, 96)
    out = ops.meta_24_to_sm90(meta)
    assert out.shape == (128, 32) and out.dtype == torch.uint8


def test_gradients_for_x_and_bias(device):
    rows, cols = 64, 96
    dense, values, meta = weight_24(rows, cols, torch.float32, device=device)
    x, bias = inputs((5,), cols, rows, torch.float32, device=device)
    x.requires_grad_(True)
    bias.requires_grad_(True)
    grad = torch.randn(5, rows, device=device)
    ops.sparse_linear_24(x, values, meta, cols, bias).backward(grad)
    x2, bias2 = x.detach().clone().requires_grad_(True), bias.detach().clone().requires_grad_(True)
    F.linear(x2, dense, bias2).backward(grad)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias.grad, bias2.grad, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="no gradient for the compressed weight"):
        ops.sparse_linear_24(x, values.clone().requires_grad_(True), meta, cols).sum().backward()


def test_kernel_argument(device):
    rows, cols = 64, 128
    dense, values, meta = weight_24(rows, cols, torch.bfloat16, device=device)
    x, bias = inputs((3,), cols, rows, torch.bfloat16, device=device)
    auto = ops.sparse_linear_24(x, values, meta, cols, bias)
    dense_path = ops.sparse_linear_24(x, values, meta, cols, bias, kernel="dense")
    assert_within_twice_dense(dense_path, x, dense, bias)
    if device == "cpu":
        assert torch.equal(auto, dense_path)
        for kernel in ("decode", "cutlass_sm80", "cutlass_sm90"):
            with pytest.raises(ValueError, match=f"kernel '{kernel}' runs on CUDA; on CPU"):
                ops.sparse_linear_24(x, values, meta, cols, bias, kernel=kernel)
    with pytest.raises(ValueError, match=r"'kernel' must be one of 'auto', 'decode', 'cutlass_sm80', 'cutlass_sm90', "
                                         r"'dense', but got 'fast'"):
        ops.sparse_linear_24(x, values, meta, cols, bias, kernel="fast")


def bad_inputs():
    _, values, meta = weight_24(64, 128, torch.float16)
    x = torch.randn(3, 128, dtype=torch.float16)
    return values, meta, x


@pytest.mark.parametrize("mutate,message", [
    (lambda v, m, x: (x.float(), v, m, 128, None), r"'x' must have the dtype of 'values' \(Half\), but got Float"),
    (lambda v, m, x: (x, v, m.int(), 128, None), r"'meta' must have dtype torch.int16 .* but got Int"),
    (lambda v, m, x: (x, v, m[:, :4].contiguous(), 128, None),
     r"'meta' must have shape \[64, 8\] .* but got \[64, 4\]"),
    (lambda v, m, x: (x, v, m, 64, None), r"'in_features' must be twice the columns of 'values' \(128\), but got 64"),
    (lambda v, m, x: (x[:, :64], v, m, 128, None), r"last dimension of 'x' must be in_features=128"),
    (lambda v, m, x: (x, v[:48], m[:48], 128, None),
     r"rows of 'values' \(out_features\) must be a multiple of 32, but got 48"),
    (lambda v, m, x: (x, v, m, 128, torch.zeros(63, dtype=torch.float16)),
     r"'bias' must have shape \[64\], but got \[63\]"),
    (lambda v, m, x: (x, v, m, 128, torch.zeros(64)), r"'bias' must have the dtype of 'x' \(Half\), but got Float"),
    (lambda v, m, x: (x, v.to(torch.int8), m, 128, None), r"'values' must have dtype one of"),
    (lambda v, m, x: (x, v.t(), m, 128, None), r"'values' must be contiguous|twice the columns"),
])
def test_bad_arguments(mutate, message):
    values, meta, x = bad_inputs()
    with pytest.raises(ValueError, match=message):
        ops.sparse_linear_24(*mutate(values, meta, x))


def test_bad_sm90_meta_and_conversion_arguments():
    values, meta, x = bad_inputs()
    with pytest.raises(ValueError, match=r"'meta_sm90' must have shape \[64, 16\] .* but got \[64, 8\]"):
        ops.sparse_linear_24(x, values, meta, 128, None, torch.zeros(64, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"'meta_sm90' must have dtype torch.uint8"):
        ops.sparse_linear_24(x, values, meta, 128, None, torch.zeros(64, 16, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"meta_24_to_sm90: argument 'meta' must have dtype torch.int16"):
        ops.meta_24_to_sm90(meta.int())
    with pytest.raises(ValueError, match=r"number of rows of 'meta' must be a multiple of 32, but got 48"):
        ops.meta_24_to_sm90(meta[:48])
    with pytest.raises((ValueError, RuntimeError), match=r"same device|device of"):
        ops.sparse_linear_24(x, values, meta.to("meta"), 128)


# ---- CUDA: the kernels ---------------------------------------------------------------------------
@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("shape", [(32, 32), (64, 96), (96, 160), (256, 512)])
def test_small_batch_kernel_every_batch(dtype, shape):
    rows, cols = shape
    dense, values, meta = weight_24(rows, cols, dtype, 0.1, seed=rows, device="cuda")
    for batch in range(1, 17):
        x, bias = inputs((batch,), cols, rows, dtype, seed=batch, device="cuda")
        for b in (None, bias):
            out = ops.sparse_linear_24(x, values, meta, cols, b)
            assert_within_twice_dense(out, x, dense, b)
            assert torch.equal(ops.sparse_linear_24(x, values, meta, cols, b, kernel="decode"), out)


def runs_here(kernel: str, cols: int) -> bool:
    """Whether a forced kernel runs on this GPU and build for in_features `cols`."""
    if kernel == "cutlass_sm90":
        return torch.cuda.get_device_capability() == (9, 0) and "90a" in ",".join(prunekit.build_info()["cuda_archs"])
    if kernel == "cutlass_sm80":
        return cols % 64 == 0
    return True


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("kernel", ["auto", "cutlass_sm80", "cutlass_sm90", "dense"])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("shape", [(32, 64), (64, 96), (96, 192), (512, 1024)])
@pytest.mark.parametrize("batch", [17, 33, 64, 65, 256, 1000])
def test_gemm_batches(kernel, dtype, shape, batch):
    rows, cols = shape
    if not runs_here(kernel, cols):
        pytest.skip(f"kernel {kernel} does not run here for in_features {cols}")
    dense, values, meta = weight_24(rows, cols, dtype, 0.1, seed=batch, device="cuda")
    x, bias = inputs((batch,), cols, rows, dtype, seed=batch, device="cuda")
    for b in (None, bias):
        out = ops.sparse_linear_24(x, values, meta, cols, b, kernel=kernel)
        assert_within_twice_dense(out, x, dense, b)
        # A precomputed Hopper metadata gives the same bits (where it is not used, it is checked).
        same = ops.sparse_linear_24(x, values, meta, cols, b, ops.meta_24_to_sm90(meta), kernel=kernel)
        assert torch.equal(same, out)


@pytest.mark.cuda
@needs_gpu
def test_forced_kernels_outside_their_range_are_refused():
    _, values, meta = weight_24(64, 96, torch.float16, device="cuda")
    x, _ = inputs((17,), 96, 64, torch.float16, device="cuda")
    with pytest.raises(ValueError, match=r"kernel 'decode' runs 1 to 16 rows of x, but got 17"):
        ops.sparse_linear_24(x, values, meta, 96, kernel="decode")
    with pytest.raises(ValueError, match=r"kernel 'cutlass_sm80' needs in_features to be a multiple of 64 .* got 96"):
        ops.sparse_linear_24(x, values, meta, 96, kernel="cutlass_sm80")
    if not runs_here("cutlass_sm90", 96):
        with pytest.raises(RuntimeError, match=r"kernel 'cutlass_sm90' runs on sm_90 GPUs of a build with sm_90a"):
            ops.sparse_linear_24(x, values, meta, 96, kernel="cutlass_sm90")
    _, values32, meta32 = weight_24(64, 96, torch.float32, device="cuda")
    with pytest.raises(ValueError, match=r"kernel 'decode' runs float16 and bfloat16 weights on tensor cores"):
        ops.sparse_linear_24(x.float(), values32, meta32, 96, kernel="decode")


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("batch", [1, 16, 2048])
def test_llm_shape(batch):
    dense, values, meta = weight_24(4096, 4096, torch.bfloat16, device="cuda")
    x, bias = inputs((batch,), 4096, 4096, torch.bfloat16, device="cuda")
    assert_within_twice_dense(ops.sparse_linear_24(x, values, meta, 4096, bias), x, dense, bias)


@pytest.mark.cuda
@pytest.mark.sanitize
@needs_gpu
@pytest.mark.parametrize("batch", [3, 16, 40, 130])
def test_kernels_small_case_for_the_sanitizer(batch):
    """One small case per kernel (small-batch, stream-K and persistent CUTLASS 3.x GEMMs with a
    partial k tile and padded metadata rows, CUTLASS 2.x, the conversion), with misaligned views of
    x and bias (copied to 16-byte alignment inside)."""
    rows, cols = 96, 192
    dense, values, meta = weight_24(rows, cols, torch.float16, 0.3, device="cuda")
    x_store = torch.randn(batch * cols + 1, device="cuda").half()
    x = x_store[1:].view(batch, cols)
    bias = torch.randn(rows + 1, device="cuda").half()[1:]
    kernels = ["auto"] + (["cutlass_sm80"] if batch > 16 else [])
    for kernel in kernels:
        assert_within_twice_dense(ops.sparse_linear_24(x, values, meta, cols, bias, kernel=kernel), x, dense, bias)
    assert torch.equal(ops.meta_24_to_sm90(meta).cpu(), ref.meta_24_to_sm90(meta.cpu()))


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("batch", [8, 64, 512])
def test_interop_with_torch_semi_structured(batch):
    """A weight compressed by torch's SparseSemiStructuredTensorCUTLASS multiplies the same
    through this op (its packed values and metadata are compress_24's, bit for bit)."""
    from torch.sparse import SparseSemiStructuredTensorCUTLASS

    rows, cols = 256, 512
    dense, values, meta = weight_24(rows, cols, torch.float16, device="cuda")
    theirs = SparseSemiStructuredTensorCUTLASS.from_dense(dense)
    assert torch.equal(theirs.packed, values) and torch.equal(theirs.meta, meta)
    x, bias = inputs((batch,), cols, rows, torch.float16, device="cuda")
    out = ops.sparse_linear_24(x, theirs.packed, theirs.meta, cols, bias)
    assert torch.equal(out, ops.sparse_linear_24(x, values, meta, cols, bias))
    assert_within_twice_dense(out, x, dense, bias)
    if torch.cuda.get_device_capability()[0] == 8:  # torch's own CUTLASS kernel runs on sm_8x only
        torch.testing.assert_close(out, F.linear(x, theirs, bias), rtol=2e-2, atol=2e-2)


@pytest.mark.cuda
@needs_gpu
def test_fp32_and_odd_k_take_the_dense_path():
    dense, values, meta = weight_24(64, 96, torch.float32, device="cuda")
    x, bias = inputs((40,), 96, 64, torch.float32, device="cuda")
    assert_within_twice_dense(ops.sparse_linear_24(x, values, meta, 96, bias), x, dense, bias)
    dense, values, meta = weight_24(64, 96, torch.bfloat16, device="cuda")  # k % 64 == 32
    x, bias = inputs((40,), 96, 64, torch.bfloat16, device="cuda")
    assert_within_twice_dense(ops.sparse_linear_24(x, values, meta, 96, bias), x, dense, bias)


@pytest.mark.cuda
@needs_gpu
def test_cuda_inputs_on_other_devices_are_refused():
    _, values, meta = weight_24(64, 128, torch.float16, device="cuda")
    x = torch.randn(3, 128, dtype=torch.float16)
    with pytest.raises(RuntimeError, match=r"'x' and 'values' must be on the same device"):
        ops.sparse_linear_24(x, values, meta, 128)
    with pytest.raises(RuntimeError, match=r"'values' and 'meta' must be on the same device"):
        ops.sparse_linear_24(x.cuda(), values, meta.cpu(), 128)
