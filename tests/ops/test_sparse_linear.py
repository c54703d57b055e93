"""Bitmap format and sparse linear / 1x1 conv ops against their references, over dtypes, odd
shapes (remainder words, tiles and batches), sparsities 0/0.5/0.9/1, every ISA variant."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import prunekit
from prunekit import ops
from prunekit.formats import BitmapWeight, Csr16Weight, from_semi24, to_semi24
from prunekit.ops import _reference as ref
from sparse_linear_helpers import sparse_weight, tolerance

SPARSITIES = [0.0, 0.5, 0.9, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (37, 100), (8, 256), (2, 4096)])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_compress_matches_reference_and_round_trips(dtype, shape, sparsity):
    dense = sparse_weight(*shape, sparsity, dtype)
    values, bitmap, row_offsets = ops.compress_bitmap(dense)
    ref_values, ref_bitmap, ref_offsets = ref.compress_bitmap(dense)
    assert torch.equal(values, ref_values) and torch.equal(bitmap, ref_bitmap) and torch.equal(row_offsets, ref_offsets)
    assert torch.equal(ops.decompress_bitmap(values, bitmap, row_offsets, shape[1]), dense)
    weight = BitmapWeight.from_dense(dense)
    assert weight.nbytes() == values.numel() * dense.element_size() + bitmap.numel() * 2 + row_offsets.numel() * 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 8, 16, 17, 64, 130])
@pytest.mark.parametrize("shape", [(7, 33), (64, 256), (33, 1000)])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_sparse_linear_matches_reference(isa, dtype, batch, shape, sparsity):
    rows, cols = shape
    weight = sparse_weight(rows, cols, sparsity, dtype)
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    x = torch.randn(batch, cols).to(dtype)
    bias = torch.randn(rows).to(dtype)
    for b in (None, bias):
        out = ops.sparse_linear(x, values, bitmap, row_offsets, cols, b)
        assert out.dtype == dtype and out.shape == (batch, rows)
        expected = F.linear(x.float(), weight.float(), None if b is None else b.float())
        torch.testing.assert_close(out.float(), expected, **tolerance(dtype, cols))


def test_sparse_linear_keeps_leading_dims_and_handles_empty_batch():
    weight = sparse_weight(16, 48, 0.5, torch.float32)
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    x = torch.randn(2, 3, 48)
    out = ops.sparse_linear(x, values, bitmap, row_offsets, 48)
    torch.testing.assert_close(out, F.linear(x, weight), rtol=1e-5, atol=1e-5)
    assert ops.sparse_linear(torch.randn(0, 48), values, bitmap, row_offsets, 48).shape == (0, 16)


@pytest.mark.parametrize("channels", [(16, 8), (17, 9), (64, 32)])
@pytest.mark.parametrize("side", [1, 5, 8, 14])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("activation", [0, 1, 2])
def test_sparse_conv1x1_matches_reference(isa, channels, side, sparsity, activation):
    out_channels, in_channels = channels
    weight = sparse_weight(out_channels, in_channels, sparsity, torch.float32)
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    x = torch.randn(2, in_channels, side, side) * 4
    bias = torch.randn(out_channels)
    out = ops.sparse_conv1x1(x, values, bitmap, row_offsets, bias, activation)
    expected = ref.sparse_conv1x1(x, values, bitmap, row_offsets, bias, activation)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", [1, 2])
def test_sparse_conv1x1_activation_keeps_nan(isa, activation):
    # F.relu(nan) and relu6 are NaN: the fused activation must not turn a NaN sum into 0 or 6.
    weight = torch.ones(8, 16)
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    x = torch.randn(1, 16, 5, 5)
    x[0, 3, 1, 2] = float("nan")  # every output channel is NaN at pixel (1, 2), finite elsewhere
    out = ops.sparse_conv1x1(x, values, bitmap, row_offsets, None, activation)
    expected = ref.sparse_conv1x1(x, values, bitmap, row_offsets, None, activation)
    assert out[0, :, 1, 2].isnan().all()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_semi24_conversion_is_exact_both_ways(isa, dtype):
    dense = sparse_weight(64, 128, 0.0, dtype)
    dense = dense * ops.nm_mask(dense.float().abs(), 2, 4)
    dense[3, :12] = 0  # groups with fewer than two nonzeros (zero padding in the layout)
    values, meta = ops.compress_24(dense)
    weight = from_semi24(values, meta)
    assert torch.equal(weight.to_dense(), dense)
    back_values, back_meta = to_semi24(weight)
    assert torch.equal(back_values, values) and torch.equal(back_meta, meta)
    x = torch.randn(3, 128).to(dtype)
    out = ops.sparse_linear(x, weight.values, weight.bitmap, weight.row_offsets, 128)
    torch.testing.assert_close(out.float(), F.linear(x.float(), dense.float()), **tolerance(dtype, 128))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cols", [16, 48, 4096])
def test_half_dense_rows_with_and_without_the_24_pattern(isa, dtype, cols):
    """Rows holding exactly cols/2 nonzeros: 2:4 rows (the AVX2 GEMV's fixed-offset path) next to
    rows that are not 2:4 in one group only, or anywhere, or in the last group (its fallback)."""
    generator = torch.Generator().manual_seed(1)
    rows = 9
    scores = torch.rand(rows, cols // 4, 4, generator=generator)
    keep = torch.zeros(rows, cols // 4, 4, dtype=torch.bool)
    keep.scatter_(2, scores.topk(2, dim=2).indices, True)
    keep = keep.reshape(rows, cols)
    keep[1, :4] = torch.tensor([True, True, True, False])  # first group 3 of 4 ...
    keep[1, 4:8] = torch.tensor([True, False, False, False])  # ... the next 1 of 4
    keep[2] = torch.randperm(cols, generator=generator) < cols // 2  # half dense, unstructured
    keep[3, -8:] = torch.tensor([True] * 4 + [False] * 4)  # the last two groups 4 and 0
    assert bool((keep.sum(1) == cols // 2).all())
    weight = (torch.randn(rows, cols, generator=generator) * keep).to(dtype)
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    bias = torch.randn(rows).to(dtype)
    for batch in (1, 2, 3, 4):
        x = torch.randn(batch, cols, generator=generator).to(dtype)
        out = ops.sparse_linear(x, values, bitmap, row_offsets, cols, bias)
        expected = F.linear(x.float(), weight.float(), bias.float())
        torch.testing.assert_close(out.float(), expected, **tolerance(dtype, cols))


def test_opcheck_and_compile():
    weight = sparse_weight(16, 40, 0.5, torch.float32)
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    x = torch.randn(3, 40)
    op = torch.ops.prunekit.sparse_linear.default
    torch.library.opcheck(op, (x, values, bitmap, row_offsets, 40, torch.randn(16)))
    torch.library.opcheck(op, (torch.randn(9, 40), values, bitmap, row_offsets, 40))
    torch.library.opcheck(torch.ops.prunekit.decompress_bitmap.default, (values, bitmap, row_offsets, 40))
    image = torch.randn(1, 40, 3, 3)
    torch.library.opcheck(torch.ops.prunekit.sparse_conv1x1.default, (image, values, bitmap, row_offsets, None, 1))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def forward(x):
        return ops.sparse_linear(x, values, bitmap, row_offsets, 40).relu()

    torch.testing.assert_close(forward(x), F.linear(x, weight).relu(), rtol=1e-5, atol=1e-5)


def test_compress_opcheck_with_dynamic_size():
    torch.library.opcheck(torch.ops.prunekit.compress_bitmap.default, (sparse_weight(8, 20, 0.5, torch.float32),),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def bad(values, bitmap, row_offsets, **changes):
    args = dict(values=values, bitmap=bitmap, row_offsets=row_offsets)
    args.update(changes)
    return args


def test_bad_inputs_are_clear_errors(isa):
    weight = sparse_weight(8, 40, 0.5, torch.float32)
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    x = torch.randn(2, 40)
    with pytest.raises(ValueError, match=r"last dimension of 'x' must be in_features=40, but got shape \[2, 39\]"):
        ops.sparse_linear(torch.randn(2, 39), values, bitmap, row_offsets, 40)
    with pytest.raises(ValueError, match=r"'bitmap' must have 3 columns \(ceil\(64 / 16\)\)|'bitmap' must have 4 "
                                         r"columns"):
        ops.sparse_linear(torch.randn(2, 64), values, bitmap, row_offsets, 64)
    with pytest.raises(ValueError, match=r"'row_offsets' must start at 0 and end at values.numel\(\)=\d+, but got "
                                         r"0 and \d+ \(truncated"):
        ops.sparse_linear(x, values[:-1].contiguous(), bitmap, row_offsets, 40)
    with pytest.raises(ValueError, match=r"'row_offsets' must have 9 entries"):
        ops.sparse_linear(x, values, bitmap, row_offsets[:-1].contiguous(), 40)
    shuffled = row_offsets.clone()
    shuffled[3], shuffled[4] = shuffled[4] + 1, shuffled[3]
    with pytest.raises(ValueError, match=r"non-decreasing|corrupt"):
        ops.sparse_linear(x, values, bitmap, shuffled, 40)
    past_k = bitmap.clone()
    past_k[0, -1] |= 1 << 15  # column 47 of a 40-column weight
    skewed = row_offsets.clone()
    skewed[2] += 1  # rows 1 and 2 disagree with their bitmaps; total still right
    with pytest.raises(ValueError, match=r"compressed weight is corrupt: row 1 of 'bitmap'"):
        ops.sparse_linear(x, values, bitmap, skewed, 40)
    for batch, dtype in itertools.product((1, 9), (torch.float32, torch.bfloat16)):  # GEMV, SpMM (AMX for bf16)
        with pytest.raises(ValueError, match=r"compressed weight is corrupt"):
            ops.sparse_linear(torch.randn(batch, 40).to(dtype), values.to(dtype), bitmap, skewed, 40)
        with pytest.raises(ValueError, match=r"compressed weight is corrupt"):
            ops.sparse_linear(torch.randn(batch, 40).to(dtype), values.to(dtype), past_k, row_offsets, 40)
    with pytest.raises(ValueError, match=r"corrupt"):
        ops.decompress_bitmap(values, past_k, row_offsets, 40)
    # An empty batch or image runs no kernel, and a corrupt weight is still an error.
    with pytest.raises(ValueError, match=r"compressed weight is corrupt: row 1 of 'bitmap'"):
        ops.sparse_linear(torch.randn(0, 40), values, bitmap, skewed, 40)
    with pytest.raises(ValueError, match=r"compressed weight is corrupt: row 0 of 'bitmap' .* past in_features=40"):
        ops.sparse_linear(torch.randn(0, 40), values, past_k, row_offsets, 40)
    for empty in (torch.randn(0, 40, 2, 2), torch.randn(1, 40, 0, 3)):
        with pytest.raises(ValueError, match=r"compressed weight is corrupt: row 1 of 'bitmap'"):
            ops.sparse_conv1x1(empty, values, bitmap, skewed)
    # in_features below the weight's columns (the bitmap's words still fit): named in the message.
    with pytest.raises(ValueError, match=r"past in_features=33 \(or in_features is below the weight's columns\)"):
        ops.sparse_linear(torch.randn(2, 33), values, bitmap, row_offsets, 33)
    with pytest.raises(ValueError, match=r"the number of columns must be in \[1, 1099511627776\], but got "
                                         r"9223372036854775807"):
        ops.sparse_linear(x, values, bitmap, row_offsets, 2**63 - 1)
    with pytest.raises(ValueError, match=r"'values' must have dtype one of Float, BFloat16, but got Half"):
        ops.sparse_linear(x, values.half(), bitmap, row_offsets, 40)
    with pytest.raises(ValueError, match=r"'x' must have dtype one of"):
        ops.sparse_linear(x.double(), values, bitmap, row_offsets, 40)
    with pytest.raises(ValueError, match=r"'bias' must have shape \[8\], but got \[7\]"):
        ops.sparse_linear(x, values, bitmap, row_offsets, 40, torch.randn(7))
    with pytest.raises(ValueError, match=r"'dense' must be 2-D"):
        ops.compress_bitmap(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"'dense' must have dtype one of Float, BFloat16"):
        ops.compress_bitmap(torch.randn(4, 4).double())
    with pytest.raises(ValueError, match=r"'activation' must be 0 \(none\), 1 \(relu\) or 2 \(relu6\), but got 3"):
        ops.sparse_conv1x1(torch.randn(1, 40, 2, 2), values, bitmap, row_offsets, None, 3)
    with pytest.raises(ValueError, match=r"'x' must be 4-D"):
        ops.sparse_conv1x1(torch.randn(40, 2, 2), values, bitmap, row_offsets)


@pytest.mark.parametrize("bad_row", [5, 150, 299])  # in the first, a middle and the last row range
def test_row_offsets_out_of_order_are_named_on_every_path(isa, bad_row):
    # Each thread checks the offsets of its own rows before its kernel reads values through them:
    # a decrease anywhere, in any thread's rows, is the same clear error on every path.
    weight = sparse_weight(300, 48, 0.5, torch.float32)
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    shuffled = row_offsets.clone()
    shuffled[bad_row] = shuffled[bad_row + 1] + 1
    message = rf"'row_offsets' must be non-decreasing, but entry {bad_row + 1} \(\d+\) is below entry {bad_row} "
    threads = torch.get_num_threads()
    try:
        for num_threads in sorted({1, 2, threads}):
            torch.set_num_threads(num_threads)
            for batch, dtype in itertools.product((0, 1, 4, 9, 130), (torch.float32, torch.bfloat16)):
                with pytest.raises(ValueError, match=message):
                    ops.sparse_linear(torch.randn(batch, 48).to(dtype), values.to(dtype), bitmap, shuffled, 48)
            for images in (0, 1, 3):
                with pytest.raises(ValueError, match=message):
                    ops.sparse_conv1x1(torch.randn(images, 48, 3, 3), values, bitmap, shuffled)
            with pytest.raises(ValueError, match=message):
                ops.decompress_bitmap(values, bitmap, shuffled, 48)
            csr16 = Csr16Weight.from_dense(weight)
            shuffled16 = csr16.row_offsets.clone()
            shuffled16[bad_row] = shuffled16[bad_row + 1] + 1
            for batch in (0, 1, 4, 9, 130):
                with pytest.raises(ValueError, match=message):
                    ops.sparse_linear_csr16(torch.randn(batch, 48), csr16.values, csr16.col_indices, shuffled16, 48)
    finally:
        torch.set_num_threads(threads)


def test_a_meta_argument_with_cpu_ones_is_a_clear_error():
    # A meta tensor sends the call to the fake impl; it must not hand back an unwritten CPU tensor.
    weight = BitmapWeight.from_dense(sparse_weight(8, 40, 0.5, torch.float32))
    csr = Csr16Weight.from_bitmap(weight)
    x, image = torch.randn(2, 40), torch.randn(1, 40, 3, 3)
    calls = {
        "sparse_linear": lambda t: torch.ops.prunekit.sparse_linear(
            *t(x, weight.values, weight.bitmap, weight.row_offsets), 40),
        "sparse_linear_csr16": lambda t: torch.ops.prunekit.sparse_linear_csr16(
            *t(x, csr.values, csr.col_indices, csr.row_offsets), 40),
        "sparse_conv1x1": lambda t: torch.ops.prunekit.sparse_conv1x1(
            *t(image, weight.values, weight.bitmap, weight.row_offsets)),
        "decompress_bitmap": lambda t: torch.ops.prunekit.decompress_bitmap(
            *t(weight.values, weight.bitmap, weight.row_offsets), 40),
    }
    for op, call in calls.items():
        for which in range(4 if op != "decompress_bitmap" else 3):
            one_on_meta = lambda *ts: [t.to("meta") if i == which else t for i, t in enumerate(ts)]
            with pytest.raises(RuntimeError, match=rf"prunekit\.{op}: argument '\w+' must be on the device of "
                                                   rf"'\w+' \((cpu|meta)\), but got (meta|cpu)"):
                call(one_on_meta)
        assert call(lambda *ts: [t.to("meta") for t in ts]).device.type == "meta"  # all on meta: shapes only
    bias = torch.randn(8, device="meta")
    with pytest.raises(RuntimeError, match=r"argument 'bias' must be on the device of 'x' \(cpu\), but got meta"):
        torch.ops.prunekit.sparse_linear(x, weight.values, weight.bitmap, weight.row_offsets, 40, bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_for_x_and_bias_match_dense(dtype):
    # Frozen sparse layers in a model that trains around them: x and bias get their gradients.
    dense = sparse_weight(8, 40, 0.7, dtype)
    weight = BitmapWeight.from_dense(dense)
    csr = Csr16Weight.from_bitmap(weight)
    for op, args in (("sparse_linear", (weight.values, weight.bitmap, weight.row_offsets)),
                     ("sparse_linear_csr16", (csr.values, csr.col_indices, csr.row_offsets))):
        x = torch.randn(3, 2, 40).to(dtype).requires_grad_()
        bias = torch.randn(8).requires_grad_()
        grad_y = torch.randn(3, 2, 8).to(dtype)
        getattr(ops, op)(x, *args, 40, bias).backward(grad_y)
        x_ref, bias_ref = x.detach().float().requires_grad_(), bias.detach().requires_grad_()
        F.linear(x_ref, dense.float(), bias_ref).backward(grad_y.float())
        torch.testing.assert_close(x.grad.float(), x_ref.grad, **tolerance(dtype, 8))
        assert x.grad.dtype == dtype
        torch.testing.assert_close(bias.grad, bias_ref.grad, **tolerance(dtype, 6))
    for activation in (0, 1, 2):
        image = (torch.randn(2, 40, 3, 5) * 4).requires_grad_()
        bias = torch.randn(8).requires_grad_()
        weight32 = BitmapWeight.from_dense(dense.float())
        out = ops.sparse_conv1x1(image, weight32.values, weight32.bitmap, weight32.row_offsets, bias, activation)
        grad_y = torch.randn_like(out)
        out.backward(grad_y)
        image_ref, bias_ref = image.detach().requires_grad_(), bias.detach().requires_grad_()
        ref_out = F.conv2d(image_ref, dense.float()[:, :, None, None], bias_ref)
        ref_out = {0: ref_out, 1: F.relu(ref_out), 2: F.relu6(ref_out)}[activation]
        ref_out.backward(grad_y)
        torch.testing.assert_close(image.grad, image_ref.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(bias.grad, bias_ref.grad, rtol=1e-4, atol=1e-4)


def test_gradients_at_the_edges():
    weight = BitmapWeight.from_dense(sparse_weight(8, 40, 0.5, torch.float32))
    csr = Csr16Weight.from_bitmap(weight)
    dense = weight.to_dense()
    # 1-D x: the bias gradient is the output gradient itself.
    for op, args in (("sparse_linear", (weight.values, weight.bitmap, weight.row_offsets)),
                     ("sparse_linear_csr16", (csr.values, csr.col_indices, csr.row_offsets))):
        x, bias = torch.randn(40, requires_grad=True), torch.randn(8, requires_grad=True)
        grad_y = torch.randn(8)
        getattr(ops, op)(x, *args, 40, bias).backward(grad_y)
        torch.testing.assert_close(bias.grad, grad_y)
        torch.testing.assert_close(x.grad, grad_y @ dense)
    # A bf16 x with an fp32 bias: the bias gradient is summed in fp32.
    xb, bias = torch.randn(512, 40).bfloat16().requires_grad_(), torch.randn(8, requires_grad=True)
    grad_y = torch.randn(512, 8).bfloat16()
    ops.sparse_linear(xb, weight.values, weight.bitmap, weight.row_offsets, 40, bias).backward(grad_y)
    torch.testing.assert_close(bias.grad, grad_y.float().sum(0), rtol=1e-6, atol=1e-5)
    # An empty batch of images.
    empty = torch.randn(0, 40, 3, 4, requires_grad=True)
    ops.sparse_conv1x1(empty, weight.values, weight.bitmap, weight.row_offsets).sum().backward()
    assert empty.grad.shape == empty.shape
    # ReLU passes the gradient where the output is NaN, as F.relu does.
    ones = BitmapWeight.from_dense(torch.ones(8, 40))
    image = torch.randn(1, 40, 2, 2)
    image[0, 0, 0, 0] = float("nan")
    image.requires_grad_()
    out = ops.sparse_conv1x1(image, ones.values, ones.bitmap, ones.row_offsets, None, 1)
    grad_y = torch.randn_like(out)
    out.backward(grad_y)
    image_ref = image.detach().requires_grad_()
    F.relu(F.conv2d(image_ref, torch.ones(8, 40, 1, 1))).backward(grad_y)
    torch.testing.assert_close(image.grad, image_ref.grad, equal_nan=True)
    # Forward-mode AD has no formula: an error, not a zero tangent.
    with pytest.raises(RuntimeError, match=r"prunekit.sparse_linear: forward-mode AD is not supported"):
        torch.func.jvp(lambda t: ops.sparse_linear(t, weight.values, weight.bitmap, weight.row_offsets, 40),
                       (torch.randn(2, 40),), (torch.randn(2, 40),))


def test_no_gradient_for_the_compressed_weight_and_none_for_the_format_ops():
    weight = BitmapWeight.from_dense(sparse_weight(8, 40, 0.5, torch.float32))
    values = weight.values.clone().requires_grad_()
    out = ops.sparse_linear(torch.randn(2, 40), values, weight.bitmap, weight.row_offsets, 40)
    with pytest.raises(RuntimeError, match=r"prunekit.sparse_linear: no gradient for the compressed weight's 'values'"):
        out.sum().backward()
    # torch's default for an op without a derivative is a warning and a silent None gradient.
    dense = ops.decompress_bitmap(values, weight.bitmap, weight.row_offsets, 40)
    with pytest.raises(RuntimeError, match=r"derivative for prunekit::decompress_bitmap is not implemented"):
        dense.sum().backward()
    with torch.no_grad():  # inference on tensors that require grad records nothing
        assert ops.sparse_linear(torch.randn(2, 40, requires_grad=True), values, weight.bitmap, weight.row_offsets,
                                 40).grad_fn is None


def test_opcheck_with_gradients():
    weight = BitmapWeight.from_dense(sparse_weight(8, 40, 0.5, torch.float32))
    csr = Csr16Weight.from_bitmap(weight)
    x, bias = torch.randn(3, 40, requires_grad=True), torch.randn(8, requires_grad=True)
    torch.library.opcheck(torch.ops.prunekit.sparse_linear.default,
                          (x, weight.values, weight.bitmap, weight.row_offsets, 40, bias))
    torch.library.opcheck(torch.ops.prunekit.sparse_linear_csr16.default,
                          (x, csr.values, csr.col_indices, csr.row_offsets, 40, bias))
    image = torch.randn(1, 40, 3, 3, requires_grad=True)
    torch.library.opcheck(torch.ops.prunekit.sparse_conv1x1.default,
                          (image, weight.values, weight.bitmap, weight.row_offsets, bias, 1))


def test_outputs_are_fully_written():
    """Every output element is computed (no stale memory): results equal on a second call after
    filling the allocator's memory with NaN."""
    weight = sparse_weight(33, 70, 0.9, torch.float32)
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    for batch in (1, 3, 7, 70):
        x = torch.randn(batch, 70)
        first = ops.sparse_linear(x, values, bitmap, row_offsets, 70)
        torch.full((batch * 33 * 4,), float("nan"))  # dirty freed memory
        assert not bool(first.isnan().any())
        torch.testing.assert_close(first, F.linear(x, weight), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("value_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_bf16_x_at_gemv_batches_is_the_fp32_result_rounded(isa, value_dtype, batch):
    """Where the GEMVs widen bf16 x to fp32 (the fp32 kernels), the bf16 result is exactly their
    fp32 result on x.float() rounded as torch rounds: NaN, infinities and ties included, x
    contiguous or not."""
    rows, cols = 37, 300
    weight = sparse_weight(rows, cols, 0.9, value_dtype)
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    csr16 = Csr16Weight.from_bitmap(BitmapWeight.from_dense(weight))
    wide = torch.randn(cols, 2 * batch).bfloat16()
    wide[3, 0], wide[5, 0], wide[7, 0] = float("nan"), float("inf"), 3e38  # a NaN row, an inf, an overflow
    bias = torch.randn(rows)
    for x in (wide.t()[::2].contiguous(), wide.t()[::2]):  # contiguous, then strided
        bf16_gemv = value_dtype == torch.bfloat16 and prunekit.build_info()["cpu_bf16_gemv"] is not None \
            and isa == "avx512"
        calls = [(lambda x, b: ops.sparse_linear_csr16(x, csr16.values, csr16.col_indices, csr16.row_offsets, cols,
                                                       b))]
        if not bf16_gemv:  # the AVX-512 BF16 GEMV multiplies bf16 x itself (its own order of sums)
            calls.append(lambda x, b: ops.sparse_linear(x, values, bitmap, row_offsets, cols, b))
        for call in calls:
            for b in (None, bias):
                out = call(x, b)
                assert out.dtype == torch.bfloat16 and out.shape == (batch, rows)
                torch.testing.assert_close(out, call(x.float(), b).bfloat16(), rtol=0, atol=0, equal_nan=True)


def _assert_within_twice_widened_error(out, x, weight, bias):
    """The bf16 result's error against the fp32 reference is at most twice that of the same op on
    x, weight and bias widened to fp32, then rounded to bf16 (the design's 2x rule)."""
    cols = weight.shape[1]
    bias32 = None if bias is None else bias.float()
    values, bitmap, row_offsets = ops.compress_bitmap(weight.float())
    expected = F.linear(x.float(), weight.float(), bias32)
    widened = ops.sparse_linear(x.float(), values, bitmap, row_offsets, cols, bias32).bfloat16()
    err, err_widened = (out.float() - expected).abs().max(), (widened.float() - expected).abs().max()
    assert err <= 2 * err_widened + 1e-6, (err, err_widened)


@pytest.mark.skipif(prunekit.build_info()["cpu_bf16_spmm"] != "amx", reason="needs a CPU with AMX-BF16")
@pytest.mark.parametrize("shape", [(70, 4096), (32, 32), (1, 31), (45, 333)])
@pytest.mark.parametrize("batch", [5, 16, 33, 300])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_amx_bf16_path_matches_reference(shape, batch, sparsity, with_bias):
    """The AMX tiles path (bf16 x and weight, > 4 rows): partial weight-row blocks, columns past
    the last whole 32-column chunk, an odd number of 16-row batch tiles, and at (70, 4096) x 300
    the columns in three k-blocks (the packed x of 19 batch tiles exceeds one). bf16 products are exact
    and sums fp32, so it is as close to the fp32 result as the widening SpMM."""
    rows, cols = shape
    weight = sparse_weight(rows, cols, sparsity, torch.bfloat16)
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    x = torch.randn(batch, cols).bfloat16()
    bias = torch.randn(rows).bfloat16() if with_bias else None
    out = ops.sparse_linear(x, values, bitmap, row_offsets, cols, bias)
    _assert_within_twice_widened_error(out, x, weight, bias)


@pytest.mark.skipif(prunekit.build_info()["cpu_bf16_spmm"] != "amx", reason="needs a CPU with AMX-BF16")
@pytest.mark.parametrize("cols", [288, 301])
@pytest.mark.parametrize("with_bias", [True, False])
def test_amx_bf16_path_k_blocks_with_uneven_threads(cols, with_bias):
    """Batch 2048 (128 whole batch tiles) makes k-blocks of 8 chunks, so 288 / 301 columns run in two
    (the C tiles parked between them, an odd k in the last); 3 threads split the 70 rows at 24 and 48,
    inside 32-row panels."""
    weight = sparse_weight(70, cols, 0.5, torch.bfloat16)
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    x = torch.randn(2048, cols).bfloat16()
    bias = torch.randn(70).bfloat16() if with_bias else None
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        out = ops.sparse_linear(x, values, bitmap, row_offsets, cols, bias)
    finally:
        torch.set_num_threads(threads)
    _assert_within_twice_widened_error(out, x, weight, bias)


@pytest.mark.skipif(prunekit.build_info()["cpu_bf16_spmm"] != "amx", reason="needs a CPU with AMX-BF16")
def test_amx_bf16_path_takes_nd_and_non_contiguous_x():
    """x of any rank and strides gives, bit for bit, the result of its contiguous 2-D rows."""
    weight = sparse_weight(45, 70, 0.5, torch.bfloat16)
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    x = torch.randn(70, 6, 5).bfloat16().permute(2, 1, 0)  # (5, 6, 70), not contiguous
    out = ops.sparse_linear(x, values, bitmap, row_offsets, 70)
    rows = ops.sparse_linear(x.reshape(30, 70).contiguous(), values, bitmap, row_offsets, 70)
    assert out.shape == (5, 6, 45) and out.dtype == torch.bfloat16
    assert torch.equal(out.reshape(30, 45), rows)


@pytest.mark.skipif(prunekit.build_info()["cpu_bf16_spmm"] != "amx", reason="needs a CPU with AMX-BF16")
def test_amx_bf16_output_is_torchs_rounding_bit_for_bit():
    """Small integers in x, W and bias keep every fp32 sum exact in any order, so the bf16 output
    the AMX path rounds itself must equal torch's fp32 -> bf16 conversion of the exact result."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randint(-8, 9, (70, 300), generator=generator).float()
    weight[torch.rand(70, 300, generator=generator) < 0.5] = 0
    weight = weight.bfloat16()
    x = torch.randint(-64, 65, (37, 300), generator=generator).bfloat16()
    bias = torch.randint(-500, 501, (70,), generator=generator).bfloat16()
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    out = ops.sparse_linear(x, values, bitmap, row_offsets, 300, bias)
    expected = F.linear(x.double(), weight.double(), bias.double()).float().bfloat16()
    assert torch.equal(out.view(torch.int16), expected.view(torch.int16))


def test_bf16_nan_in_x_gives_torchs_nan_bits_on_every_path():
    """A NaN in x comes out of every bf16 path (the GEMV at <= 4 rows, AMX or the widening SpMM
    beyond) as the bits torch's fp32 -> bf16 tensor conversion writes (0xffff), wherever it lands
    (the paths that multiply expanded zeros spread it over the whole row, see ARCHITECTURE)."""
    weight = sparse_weight(40, 64, 0.5, torch.bfloat16)
    weight[:, 5] = 1.0  # every output of x's row 1 meets the NaN through a stored value
    values, bitmap, row_offsets = ops.compress_bitmap(weight)
    torch_nan = torch.tensor([float("nan")]).bfloat16().view(torch.int16)
    for batch in (2, 9, 33):  # AMX: edge tiles at 9, whole 16 x 16 tiles at 33
        x = torch.randn(batch, 64).bfloat16()
        x[1, 5] = float("nan")
        out = ops.sparse_linear(x, values, bitmap, row_offsets, 64)
        assert bool(out[1].isnan().all()) and not bool(out[0].isnan().any())
        assert bool((out.view(torch.int16)[out.isnan()] == torch_nan).all())
