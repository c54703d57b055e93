"""The tiled bitmap ops (the CUDA layout of unstructured weights): exact conversions from and to the
bitmap format bit for bit, against the pure-PyTorch references and between devices; the linear and
1x1 convolution ops against fp32 references (the 2x rule) with every kernel forced; opcheck and
torch.compile; clear errors for bad input. On CPU the linear ops walk the CUDA kernels' decode
(the SIMT bit loop, the mma fragments); the cuda-marked cases run the kernels on a GPU."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from prunekit import formats, ops
from prunekit.formats import BitmapWeight
from prunekit.formats.bitmap_tiles import TiledBitmapWeight, tile_grid
from prunekit.ops import _reference as ref

from format_cases import FLOAT_DTYPES, random_24, sparse_weight, weights

SHAPES = [(1, 1), (15, 63), (16, 64), (17, 65), (33, 130), (40, 200)]
SPARSITIES = [0.0, 0.5, 0.9, 1.0]
KERNELS = ["auto", "simt", "mma", "gemm", "dense"]
TENSOR_CORE_KERNELS = ("mma", "gemm")


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so that equality is bit for bit (-0.0, NaN payloads)."""
    return t.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_same_bits(got, expected):
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        assert torch.equal(bits(g.cpu()), bits(e.cpu()))


def tiles_of(matrix: torch.Tensor, device="cpu") -> TiledBitmapWeight:
    return TiledBitmapWeight.from_bitmap(_to(BitmapWeight.from_dense(matrix), device))


def _to(weight: BitmapWeight, device) -> BitmapWeight:
    return BitmapWeight(weight.values.to(device), weight.bitmap.to(device), weight.row_offsets.to(device), weight.cols)


def tensors(t: TiledBitmapWeight):
    return t.values, t.bitmap, t.offsets


# ---- conversions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_conversions_are_exact_and_match_the_reference(device, dtype, shape, sparsity):
    rows, cols = shape
    matrix = sparse_weight(rows, cols, sparsity, dtype, seed=rows * cols)
    weight = BitmapWeight.from_dense(matrix)
    expected = ref.bitmap_to_tiles(weight.values, weight.bitmap, weight.row_offsets, cols)
    tiled = TiledBitmapWeight.from_bitmap(_to(weight, device))
    assert tiled.device.type == device
    assert_same_bits(tensors(tiled), expected)
    panels, chunks = tile_grid(rows, cols)
    assert tiled.bitmap.shape == (panels, chunks, 16, 4) and tiled.offsets.shape == (panels * chunks + 1,)
    back = tiled.to_bitmap()
    assert_same_bits((back.values, back.bitmap, back.row_offsets), (weight.values, weight.bitmap, weight.row_offsets))
    assert torch.equal(bits(tiled.to_dense().cpu()), bits(matrix))


@settings(max_examples=60, deadline=None)
@given(weights(max_rows=70, max_cols=200))
def test_round_trip_is_bit_exact(matrix):
    weight = BitmapWeight.from_dense(matrix)
    tiled = TiledBitmapWeight.from_bitmap(weight)
    assert_same_bits(tensors(tiled), ref.bitmap_to_tiles(weight.values, weight.bitmap, weight.row_offsets,
                                                         matrix.shape[1]))
    back = tiled.to_bitmap()
    assert_same_bits((back.values, back.bitmap, back.row_offsets), (weight.values, weight.bitmap, weight.row_offsets))
    assert_same_bits(ref.tiles_to_bitmap(*tensors(tiled), *matrix.shape), (weight.values, weight.bitmap,
                                                                           weight.row_offsets))
    assert torch.equal(bits(tiled.to_dense()), bits(matrix))
    # Runs start at multiples of 8 values and their padding is zero.
    offsets = tiled.offsets
    assert bool((offsets % 8 == 0).all()) and int(offsets[-1]) == tiled.values.numel()


def test_marked_zeros_and_signed_zeros_survive():
    # A 2:4 weight's bitmap view marks its zero padding; -0.0 counts as zero when compressing but
    # a marked -0.0 is a value like any other.
    dense = random_24(32, 64, torch.bfloat16, torch.Generator().manual_seed(3), zero_fraction=0.4)
    weight = formats.from_semi24(*ops.compress_24(dense))
    assert int((weight.values == 0).sum()) > 0
    weight = BitmapWeight(weight.values.clone(), weight.bitmap, weight.row_offsets, weight.cols)
    weight.values[weight.values == 0] = -0.0
    tiled = TiledBitmapWeight.from_bitmap(weight)
    back = tiled.to_bitmap()
    assert_same_bits((back.values, back.bitmap, back.row_offsets), (weight.values, weight.bitmap, weight.row_offsets))


@pytest.mark.cuda
def test_cuda_conversions_equal_the_cpu_ones(device):
    if device != "cuda":
        pytest.skip("compares CUDA with CPU")
    for dtype in FLOAT_DTYPES:
        matrix = sparse_weight(300, 1000, 0.7, dtype, seed=5)
        on_cpu, on_gpu = tiles_of(matrix), tiles_of(matrix, "cuda")
        assert_same_bits(tensors(on_gpu), tensors(on_cpu))
        assert torch.equal(bits(on_gpu.to_dense().cpu()), bits(matrix))


# ---- linear and 1x1 convolution -------------------------------------------------------------------
def assert_within_twice_dense(out, x, weight, bias):
    """fp32: close to the fp32 reference. fp16/bf16: the error against the fp32 reference at most
    twice that of dense torch in the same precision on the same device (the design's 2x rule)."""
    bias32 = None if bias is None else bias.float()
    expected = F.linear(x.float(), weight.float(), bias32)
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5 * weight.shape[1])
        return
    dense = F.linear(x, weight, bias)
    err, err_dense = (out.float() - expected).abs().max(), (dense.float() - expected).abs().max()
    assert err <= 2 * err_dense + 1e-6 * (1 + expected.abs().max()), (float(err), float(err_dense))


def skip_unsupported(kernel, dtype):
    if kernel in TENSOR_CORE_KERNELS and dtype == torch.float32:
        pytest.skip("tensor-core kernels run fp16/bf16 weights")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,sparsity", [((33, 130), 0.5), ((64, 128), 0.9), ((20, 63), 0.0), ((40, 200), 1.0),
                                            ((130, 256), 0.7)])
def test_linear_matches_reference(device, kernel, dtype, shape, sparsity):
    skip_unsupported(kernel, dtype)
    rows, cols = shape
    weight = sparse_weight(rows, cols, sparsity, dtype, seed=rows)
    tiled = tiles_of(weight, device)
    generator = torch.Generator().manual_seed(rows)
    for batch in (1, 3, 8, 16, 17, 70):  # the decode kernels' widths, a second launch of them, the GEMM
        x = torch.randn(batch, cols, generator=generator).to(dtype).to(device)
        bias = torch.randn(rows, generator=generator).to(dtype).to(device)
        for b in (bias, None):
            out = ops.sparse_linear_tiles(x, *tensors(tiled), rows, cols, b, kernel=kernel)
            assert out.shape == (batch, rows) and out.dtype == dtype and out.device.type == device
            assert_within_twice_dense(out, x, weight.to(device), b)


def test_linear_keeps_leading_dims_and_handles_empty_and_strided_x(device):
    weight = sparse_weight(24, 70, 0.6, torch.bfloat16)
    tiled = tiles_of(weight, device)
    x = torch.randn(2, 3, 140, dtype=torch.bfloat16, device=device)[..., ::2]  # not contiguous
    for kernel in KERNELS:
        out = ops.sparse_linear_tiles(x, *tensors(tiled), 24, 70, kernel=kernel)
        assert out.shape == (2, 3, 24)
        assert_within_twice_dense(out.reshape(6, 24), x.reshape(6, 70), weight.to(device), None)
    empty = ops.sparse_linear_tiles(torch.empty(0, 70, dtype=torch.bfloat16, device=device), *tensors(tiled), 24, 70)
    assert empty.shape == (0, 24)


@pytest.mark.parametrize("kernel", ["auto", "simt", "gemm", "dense"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("geometry", [(2, 70, 33, 5, 3), (1, 64, 64, 7, 7), (3, 3, 16, 1, 1), (1, 130, 40, 4, 4)])
def test_conv1x1_matches_reference(device, kernel, dtype, geometry):
    skip_unsupported(kernel, dtype)
    images, channels, out_channels, height, width = geometry
    weight = sparse_weight(out_channels, channels, 0.7, dtype, seed=channels)
    generator = torch.Generator().manual_seed(channels)
    x = (3 * torch.randn(images, channels, height, width, generator=generator)).to(dtype)
    bias = torch.randn(out_channels, generator=generator).to(dtype)
    tiled = tiles_of(weight, device)
    for activation in (0, 1, 2):
        out = ops.sparse_conv1x1_tiles(x.to(device), *tensors(tiled), out_channels, channels, bias.to(device),
                                       activation, kernel=kernel)
        assert out.shape == (images, out_channels, height, width) and out.dtype == dtype
        if activation == 0:  # as a linear over pixels: (images * pixels, channels)
            pixels = x.to(device).permute(0, 2, 3, 1).reshape(-1, channels)
            flat = out.permute(0, 2, 3, 1).reshape(-1, out_channels)
            assert_within_twice_dense(flat, pixels, weight.to(device), bias.to(device))
        expected = ref.sparse_conv1x1_tiles(x.float(), *(t.cpu() for t in tensors(tiled)), out_channels, channels,
                                            bias.float(), activation)
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=3e-2)
        torch.testing.assert_close(out.float().cpu(), expected.float(), **tol)


def test_references_agree_with_each_other():
    weight = sparse_weight(21, 77, 0.6, torch.float32)
    tiled = tiles_of(weight)
    x = torch.randn(5, 77)
    torch.testing.assert_close(ref.sparse_linear_tiles(x, *tensors(tiled), 21, 77), F.linear(x, weight))
    assert torch.equal(ref.decompress_tiles(*tensors(tiled), 21, 77), weight)


# ---- opcheck and torch.compile ------------------------------------------------------------------
def test_opcheck(device):
    weight = sparse_weight(20, 70, 0.5, torch.bfloat16)
    tiled = tiles_of(weight, device)
    x = torch.randn(3, 70, dtype=torch.bfloat16, device=device)
    bias = torch.randn(20, dtype=torch.bfloat16, device=device)
    for kernel in KERNELS:
        torch.library.opcheck(torch.ops.prunekit.sparse_linear_tiles.default,
                              (x, *tensors(tiled), 20, 70, bias), {"kernel": kernel})
    image = torch.randn(2, 70, 3, 3, dtype=torch.bfloat16, device=device)
    for kernel in ("auto", "simt", "gemm"):
        torch.library.opcheck(torch.ops.prunekit.sparse_conv1x1_tiles.default,
                              (image, *tensors(tiled), 20, 70, None, 1), {"kernel": kernel})
    torch.library.opcheck(torch.ops.prunekit.decompress_tiles.default, (*tensors(tiled), 20, 70))
    bitmap = _to(BitmapWeight.from_dense(weight), device)
    dynamic = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.prunekit.bitmap_to_tiles.default,
                          (bitmap.values, bitmap.bitmap, bitmap.row_offsets, 70), test_utils=dynamic)
    torch.library.opcheck(torch.ops.prunekit.tiles_to_bitmap.default, (*tensors(tiled), 20, 70), test_utils=dynamic)


def test_compile_fullgraph():
    weight = sparse_weight(16, 40, 0.5, torch.float32)
    tiled = tiles_of(weight)
    x = torch.randn(3, 40)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def forward(x):
        return ops.sparse_linear_tiles(x, *tensors(tiled), 16, 40).relu()

    torch.testing.assert_close(forward(x), F.linear(x, weight).relu(), rtol=1e-5, atol=1e-5)


# ---- bad input ---------------------------------------------------------------------------------
def test_bad_arguments_are_clear_errors():
    weight = sparse_weight(20, 70, 0.5, torch.bfloat16)
    plain = BitmapWeight.from_dense(weight)
    tiled = tiles_of(weight)
    v, b, o = tensors(tiled)
    x = torch.randn(2, 70, dtype=torch.bfloat16)
    linear = torch.ops.prunekit.sparse_linear_tiles
    with pytest.raises(ValueError, match=r"'tile_bitmap' must be 4-D of shape \[2, 2, 16, 4\] for a 20x70 weight, but "
                                         r"got a 2-D tensor .*a bitmap-format weight\? prunekit.ops.bitmap_to_tiles"):
        linear(x, plain.values, plain.bitmap, plain.row_offsets, 20, 70)
    with pytest.raises(ValueError, match=r"'tile_offsets' must have 5 entries \(tiles \+ 1\), but got 4"):
        linear(x, v, b, o[:4], 20, 70)
    with pytest.raises(ValueError, match=r"'tile_bitmap' must have shape \[2, 4, 16, 4\] for a 20x200 weight, but got "
                                         r"\[2, 2, 16, 4\]"):
        linear(torch.randn(2, 200, dtype=torch.bfloat16), v, b, o, 20, 200)
    with pytest.raises(ValueError, match=r"argument 'x' must have the dtype of 'tile_values' \(BFloat16\), but got "
                                         r"Float"):
        linear(x.float(), v, b, o, 20, 70)
    with pytest.raises(ValueError, match=r"last dimension of 'x' must be in_features=70, but got shape \[2, 69\]"):
        linear(x[:, :69], v, b, o, 20, 70)
    with pytest.raises(ValueError, match=r"argument 'kernel' must be one of 'auto', 'simt', 'mma', 'gemm', 'dense', "
                                         r"but got 'fast'"):
        linear(x, v, b, o, 20, 70, kernel="fast")
    with pytest.raises(ValueError, match=r"argument 'kernel' must be one of 'auto', 'simt', 'gemm', 'dense', but got "
                                         r"'mma'"):
        torch.ops.prunekit.sparse_conv1x1_tiles(torch.randn(1, 70, 2, 2, dtype=torch.bfloat16), v, b, o, 20, 70,
                                                kernel="mma")
    fp32 = tiles_of(weight.float())
    with pytest.raises(ValueError, match=r"kernel 'gemm' runs float16 and bfloat16 weights on tensor cores, but "
                                         r"'tile_values' is float32"):
        linear(x.float(), *tensors(fp32), 20, 70, kernel="gemm")
    with pytest.raises(ValueError, match=r"argument 'bias' must have shape \[20\], but got \[21\]"):
        linear(x, v, b, o, 20, 70, torch.randn(21, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"the number of rows must be in \[1, "):
        linear(x, v, b, o, 0, 70)
    with pytest.raises(ValueError, match=r"argument 'activation' must be 0 \(none\), 1 \(relu\) or 2 \(relu6\), but "
                                         r"got 3"):
        torch.ops.prunekit.sparse_conv1x1_tiles(torch.randn(1, 70, 2, 2, dtype=torch.bfloat16), v, b, o, 20, 70, None,
                                                3)
    with pytest.raises(ValueError, match=r"dimension 1 of 'x' must be in_channels=70, but got shape \[1, 71, 2, 2\]"):
        torch.ops.prunekit.sparse_conv1x1_tiles(torch.randn(1, 71, 2, 2, dtype=torch.bfloat16), v, b, o, 20, 70)
    with pytest.raises(ValueError, match=r"argument 'bitmap' must have 4 columns \(ceil\(64 / 16\)\), but got 5"):
        ops.bitmap_to_tiles(plain.values, plain.bitmap, plain.row_offsets, 64)


def test_corrupt_bitmap_weights_are_named():
    weight = BitmapWeight.from_dense(sparse_weight(20, 70, 0.5, torch.float32))
    offsets = weight.row_offsets.clone()
    offsets[-1] += 1
    with pytest.raises(ValueError, match=r"'row_offsets' must start at 0 and end at values.numel\(\)=\d+, but got 0"):
        ops.bitmap_to_tiles(weight.values, weight.bitmap, offsets, 70)
    bitmap = weight.bitmap.clone()
    bitmap[7, 4] |= 0x40  # column 64 + 6 = 70: past cols, and the row's marks no longer match
    with pytest.raises(ValueError, match=r"row 7 of 'bitmap' does not match its 'row_offsets' span or marks columns "
                                         r"past"):
        ops.bitmap_to_tiles(weight.values, bitmap, weight.row_offsets, 70)


def corrupt_cases(tiled: TiledBitmapWeight):
    """(description, tensors, first bad tile) of tiled weights broken in the ways a bug or a
    foreign buffer would break them."""
    v, b, o = tensors(tiled)
    longer = o.clone()
    longer[1:] += 8  # tile 0's run claims 8 more values than it marks: the last run ends past the values
    longer_values = torch.cat((v, v.new_zeros(8)))  # ... now inside: only tile 0 is wrong
    shifted = o.clone()
    shifted[1] += 1  # a misaligned run between tiles 0 and 1
    padding = b.clone()
    padding[1, 0, 15, 0] = 1  # a mark in padding row 31 of a 20-row weight (tile 2)
    past = b.clone()
    past[0, 1, 0, 2] |= 0x80  # column 64 + 32 + 7 = 103 of a 70-column weight (tile 1)
    return [("run longer than its marks", (longer_values, b, longer), 0),
            ("misaligned run", (v, b, shifted), 0),
            ("mark in a padding row", (v, padding, o), 2),
            ("mark past the columns", (v, past, o), 1)]


def test_corrupt_tiles_are_named_by_the_conversions(device):
    tiled = tiles_of(sparse_weight(20, 70, 0.5, torch.bfloat16), device)
    for what, broken, tile in corrupt_cases(tiled):
        for op in (ops.tiles_to_bitmap, ops.decompress_tiles):
            with pytest.raises(ValueError, match=rf"the tiled weight is corrupt: tile {tile} \(panel {tile // 2}, "
                                                 rf"chunk {tile % 2}\)"):
                op(*broken, 20, 70)
    v, b, o = tensors(tiled)
    with pytest.raises(ValueError, match=r"'tile_offsets' must start at 0 and end at tile_values.numel\(\)"):
        ops.tiles_to_bitmap(v[:-8], b, o, 20, 70)


def test_corrupt_tiles_never_read_outside_the_values(device):
    # CPU: the walk names the tile. CUDA: no error check (it would synchronise); the panel's rows
    # come out NaN and nothing is read outside the buffers (compute-sanitizer in gpu_check.sh).
    tiled = tiles_of(sparse_weight(20, 70, 0.5, torch.bfloat16), device)
    x = torch.randn(3, 70, dtype=torch.bfloat16, device=device)
    v, b, o = tensors(tiled)
    huge = o.clone()
    huge[1:-1] += 1 << 40  # every run but the ends past the values
    for kernel in ("simt", "mma", "gemm"):
        if device == "cpu":
            with pytest.raises(ValueError, match=r"the tiled weight is corrupt: tile 0 \(panel 0, chunk 0\)"):
                ops.sparse_linear_tiles(x, v, b, huge, 20, 70, kernel=kernel)
        else:
            out = ops.sparse_linear_tiles(x, v, b, huge, 20, 70, kernel=kernel)
            assert bool(out.isnan().all())


@pytest.mark.cuda
def test_cuda_device_mismatch_and_misaligned_buffers(device):
    if device != "cuda":
        pytest.skip("needs two devices")
    weight = sparse_weight(40, 136, 0.8, torch.bfloat16)
    tiled = tiles_of(weight, "cuda")
    x = torch.randn(20, 136, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(RuntimeError, match=r"argument 'tile_values' must be on the device of 'x' \(cuda:0\), but got "
                                           r"cpu"):
        ops.sparse_linear_tiles(x, tiled.values.cpu(), tiled.bitmap, tiled.offsets, 40, 136)
    with pytest.raises(RuntimeError, match=r"argument 'tile_bitmap' must be on the device of 'tile_values'"):
        ops.sparse_linear_tiles(x, tiled.values, tiled.bitmap.cpu(), tiled.offsets, 40, 136)
    # Buffers 2 bytes off their 16-byte alignment (views into larger ones), x with odd rows.
    values = torch.cat((tiled.values.new_zeros(1), tiled.values))[1:]
    bitmap = torch.cat((tiled.bitmap.new_zeros(1), tiled.bitmap.reshape(-1)))[1:].view(tiled.bitmap.shape)
    odd_x = torch.randn(20, 137, dtype=torch.bfloat16, device="cuda")[:, 1:]
    for kernel in KERNELS:
        out = ops.sparse_linear_tiles(odd_x, values, bitmap, tiled.offsets, 40, 136, kernel=kernel)
        assert_within_twice_dense(out, odd_x, weight.cuda(), None)


@pytest.mark.cuda
def test_cuda_llm_shapes_every_kernel(device):
    if device != "cuda":
        pytest.skip("large shapes on the GPU only")
    for rows, cols, sparsity in ((4096, 4096, 0.9), (11008, 4096, 0.5), (4096, 11008, 0.7)):
        weight = sparse_weight(rows, cols, sparsity, torch.bfloat16).cuda()
        tiled = TiledBitmapWeight.from_dense(weight)
        for batch in (1, 4, 16, 300):
            x = torch.randn(batch, cols, dtype=torch.bfloat16, device="cuda")
            for kernel in ("auto", "simt", "mma", "gemm"):
                out = ops.sparse_linear_tiles(x, *tensors(tiled), rows, cols, kernel=kernel)
                assert_within_twice_dense(out, x, weight, None)


@pytest.mark.cuda
@pytest.mark.sanitize
def test_cuda_kernels_small_cases(device):
    """One small case per kernel and conversion, a split-K launch, and corrupt tiles: what
    gpu_check.sh runs under compute-sanitizer (memcheck, racecheck, synccheck)."""
    if device != "cuda":
        pytest.skip("CUDA kernels")
    for dtype in (torch.bfloat16, torch.float32):
        weight = sparse_weight(40, 136, 0.7, dtype).cuda()
        tiled = TiledBitmapWeight.from_dense(weight)
        back = tiled.to_bitmap()
        assert torch.equal(back.values.cpu(), BitmapWeight.from_dense(weight.cpu()).values)
        assert torch.equal(tiled.to_dense(), weight)
        kernels = ("simt", "mma", "gemm", "dense") if dtype != torch.float32 else ("simt", "dense")
        for batch in (3, 20):
            x = torch.randn(batch, 136, dtype=dtype, device="cuda")
            for kernel in kernels:
                out = ops.sparse_linear_tiles(x, *tensors(tiled), 40, 136, kernel=kernel)
                assert_within_twice_dense(out, x, weight, None)
        image = torch.randn(2, 136, 5, 3, dtype=dtype, device="cuda")
        for kernel in ("simt", "gemm") if dtype != torch.float32 else ("simt",):
            out = ops.sparse_conv1x1_tiles(image, *tensors(tiled), 40, 136, None, 1, kernel=kernel)
            expected = F.conv2d(image.float(), weight.float()[:, :, None, None]).relu()
            torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=5e-2)
    # Split over k (one 64-row panel, 4096 columns: more blocks than panels) and corrupt offsets.
    weight = sparse_weight(64, 4096, 0.9, torch.bfloat16).cuda()
    tiled = TiledBitmapWeight.from_dense(weight)
    for batch in (1, 40):
        x = torch.randn(batch, 4096, dtype=torch.bfloat16, device="cuda")
        for kernel in ("simt", "mma", "gemm"):
            assert_within_twice_dense(ops.sparse_linear_tiles(x, *tensors(tiled), 64, 4096, kernel=kernel), x, weight,
                                      None)
    huge = tiled.offsets.clone()
    huge[1:-1] += 1 << 40
    for kernel in ("simt", "mma", "gemm"):
        out = ops.sparse_linear_tiles(torch.randn(2, 4096, dtype=torch.bfloat16, device="cuda"), tiled.values,
                                      tiled.bitmap, huge, 64, 4096, kernel=kernel)
        assert bool(out.isnan().all())


# ---- gradients ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_for_x_and_bias_match_dense(device, dtype):
    # Frozen sparse layers in a model that trains around them: x and bias get their gradients.
    weight = sparse_weight(24, 70, 0.6, dtype).to(device)
    tiled = tiles_of(weight.cpu(), device)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 70, generator=generator).to(dtype).to(device)
    bias = torch.randn(24, generator=generator).to(dtype).to(device)
    # A linear loss with weights exact in dtype: both sides see the same output gradient.
    g = torch.randn(5, 24, generator=generator).to(dtype).float().to(device)
    got, expected = [], []
    for use_tiles in (True, False):
        xi, bi = x.clone().requires_grad_(), bias.clone().requires_grad_()
        out = (ops.sparse_linear_tiles(xi, *tensors(tiled), 24, 70, bi) if use_tiles
               else F.linear(xi.float(), weight.float(), bi.float()))
        (out.float() * g).sum().backward()
        (got if use_tiles else expected).extend([xi.grad.float(), bi.grad.float()])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **tol)
    image = torch.randn(2, 70, 3, 3, generator=generator).to(dtype).to(device)
    # ReLU6 where the output is exact enough that both sides clamp the same entries.
    activation = 2 if dtype == torch.float32 else 0
    grads = []
    for use_tiles in (True, False):
        xi, bi = image.clone().requires_grad_(), bias.clone().requires_grad_()
        pre = None if use_tiles else F.conv2d(xi.float(), weight.float()[:, :, None, None], bi.float())
        out = (ops.sparse_conv1x1_tiles(xi, *tensors(tiled), 24, 70, bi, activation) if use_tiles
               else pre.clamp(0, 6) if activation == 2 else pre)
        out.float().sum().backward()
        grads.append([xi.grad.float(), bi.grad.float()])
    for g, e in zip(*grads):
        torch.testing.assert_close(g, e, **tol)
    values = tiled.values.clone().requires_grad_()
    out = ops.sparse_linear_tiles(x, values, tiled.bitmap, tiled.offsets, 24, 70)
    with pytest.raises(RuntimeError, match=r"sparse_linear_tiles: no gradient for the compressed weight"):
        out.float().sum().backward()
    torch.library.opcheck(torch.ops.prunekit.sparse_linear_tiles.default,
                          (x.clone().requires_grad_(), *tensors(tiled), 24, 70, bias.clone().requires_grad_()))
