"""The running layer Hessian (calibrate/hessian.py) and its op: batch formula, Conv2d patches,
chunking, bad inputs; its quadratic forms (the report's exact errors)."""

import pytest
import torch

from prunekit.calibrate import HessianAccumulator
from prunekit.calibrate.hessian import hessian_quadratic_forms
from prunekit.calibrate.linear_backend import onednn_available


class TestHessianAccumulator:
    def test_linear_running_mean_equals_batch_formula(self):
        linear = torch.nn.Linear(24, 8)
        acc = HessianAccumulator(linear)
        handle = acc.attach()
        batches = [torch.randn(3, 7, 24) for _ in range(4)]
        for batch in batches:
            linear(batch)
        handle.remove()
        x = torch.cat([b.reshape(-1, 24) for b in batches])
        assert acc.n_samples == x.shape[0]
        torch.testing.assert_close(acc.hessian, 2 / x.shape[0] * x.T @ x, rtol=1e-5, atol=1e-5)

    def test_conv2d_uses_unfolded_patches(self):
        conv = torch.nn.Conv2d(3, 4, 3, padding=1, stride=2)
        acc = HessianAccumulator(conv, dtype=torch.float64)
        x = torch.randn(2, 3, 9, 9)
        acc.add(x)
        patches = torch.nn.functional.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 27).double()
        torch.testing.assert_close(acc.hessian, 2 / patches.shape[0] * patches.T @ patches)

    def test_chunked_steps_match(self):
        x = torch.randn(1000, 16)
        whole, chunked = HessianAccumulator(16), HessianAccumulator(16, max_rows_per_step=64)
        whole.add(x)
        chunked.add(x)
        torch.testing.assert_close(whole.hessian, chunked.hessian, rtol=1e-5, atol=1e-6)

    def test_bad_inputs(self):
        acc = HessianAccumulator(16)
        with pytest.raises(ValueError, match=r"input must have 16 features in its last dim, but got shape \(4, 8\)"):
            acc.add(torch.randn(4, 8))
        with pytest.raises(ValueError, match=r"'x' must be finite, but it holds NaN or Inf \(NaN activations\?\)"):
            acc.add(torch.full((4, 16), float("nan")))
        with pytest.raises(ValueError, match=r"expected nn.Linear, nn.Conv2d or a feature count"):
            HessianAccumulator(torch.nn.ReLU())
        with pytest.raises(ValueError, match=r"dtype must be float32 or float64"):
            HessianAccumulator(16, dtype=torch.float16)

    def test_op_opcheck(self):
        torch.library.opcheck(torch.ops.prunekit.hessian_accumulate_.default, (torch.zeros(8, 8), torch.randn(5, 8), 3))


def test_combine_sums_with_the_counts():
    """Two processes' accumulators combined through a sum over processes equal one accumulator
    fed both processes' rows (the distributed reduction, without a process group)."""
    generator = torch.Generator().manual_seed(0)
    rows_a, rows_b = torch.randn(7, 12, generator=generator), torch.randn(30, 12, generator=generator)
    a, b, both = HessianAccumulator(12), HessianAccumulator(12), HessianAccumulator(12)
    a.add(rows_a)
    b.add(rows_b)
    both.add(torch.cat([rows_a, rows_b]))
    # what the other process contributes to each sum, in the order combine asks for them
    partner = [torch.tensor([b.n_samples]), b.hessian * b.n_samples]
    asked = []

    def sum_over_processes(tensor, what):
        asked.append(what)
        tensor += partner[len(asked) - 1]
        return tensor

    a.combine(sum_over_processes, "the test reduction")
    assert asked == ["the test reduction (sample counts)", "the test reduction"]
    assert a.n_samples == 37
    torch.testing.assert_close(a.hessian, both.hessian, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("features", [384, 576, 600, 1000])
def test_op_on_any_start_matrix_follows_its_formula(features):
    """hessian_accumulate_ computes beta * H + alpha * X^T X (beta = n_seen / n, alpha = 2 / n) for
    any H, also where the CPU multiplies only the lower tiles of the symmetric X^T X."""
    generator = torch.Generator().manual_seed(features)
    start = torch.randn(features, features, generator=generator, dtype=torch.float64)  # not symmetric
    x = torch.randn(300, features, generator=generator, dtype=torch.float64)
    hessian = start.clone()
    torch.ops.prunekit.hessian_accumulate_(hessian, x, 700)
    expected = start * (700 / 1000) + (2 / 1000) * x.T @ x
    torch.testing.assert_close(hessian, expected, rtol=1e-12, atol=1e-12)


needs_onednn = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


@needs_onednn
@pytest.mark.parametrize("features", [5, 191, 576, 577])
def test_op_through_onednn_follows_its_formula(features):
    """gemm="onednn": the same formula on an fp32 CPU Hessian (whole product below 3 tiles, lower
    tiles mirrored from 3 up), to fp32 rounding; an fp64 Hessian takes ATen's GEMM."""
    generator = torch.Generator().manual_seed(features)
    start = torch.randn(features, features, generator=generator)
    x = torch.randn(300, features, generator=generator)
    hessian = start.clone()
    torch.ops.prunekit.hessian_accumulate_(hessian, x, 700, "onednn")
    expected = start.double() * (700 / 1000) + (2 / 1000) * x.double().T @ x.double()
    torch.testing.assert_close(hessian.double(), expected, rtol=1e-5, atol=1e-5)
    symmetric = torch.zeros(features, features)
    torch.ops.prunekit.hessian_accumulate_(symmetric, x, 0, "onednn")
    assert torch.equal(symmetric, symmetric.T)
    double = start.double()
    torch.ops.prunekit.hessian_accumulate_(double, x.double(), 700, "onednn")
    torch.testing.assert_close(double, expected, rtol=1e-12, atol=1e-12)
    torch.library.opcheck(torch.ops.prunekit.hessian_accumulate_.default, (torch.zeros(5, 5), x[:5, :5], 3, "onednn"))
    accumulator = HessianAccumulator(features, gemm="onednn")
    accumulator.add(x)
    torch.testing.assert_close(accumulator.hessian, symmetric)
    # The products come from oneDNN's linear with "onednn" only.
    for gemm in ("aten", "onednn"):
        with torch.profiler.profile() as trace:
            torch.ops.prunekit.hessian_accumulate_(torch.zeros(features, features), x, 0, gemm)
        ran = any(event.key == "mkldnn::_linear_pointwise" for event in trace.key_averages())
        assert ran == (gemm == "onednn"), gemm


def test_op_and_accumulator_refuse_an_unknown_gemm():
    with pytest.raises(ValueError, match=r"hessian_accumulate_: argument 'gemm' must be 'aten' or 'onednn', "
                                         r"but got 'mkl'"):
        torch.ops.prunekit.hessian_accumulate_(torch.zeros(4, 4), torch.ones(2, 4), 0, "mkl")
    with pytest.raises(ValueError, match=r"HessianAccumulator: gemm must be 'aten' or 'onednn', but got 'blas'"):
        HessianAccumulator(4, gemm="blas")


def test_bad_rows_leave_the_accumulator_unchanged():
    acc = HessianAccumulator(4)
    acc.add(torch.ones(3, 4))
    with pytest.raises(ValueError, match="must be finite"):
        acc.add(torch.tensor([[1.0, float("inf"), 0.0, 0.0]]))
    assert acc.n_samples == 3
    torch.testing.assert_close(acc.hessian, torch.full((4, 4), 2.0))


def test_all_finite_confirms_an_overflowing_sum():
    from prunekit._finite import all_finite

    assert all_finite(torch.full((4,), 3e38))  # the sum overflows, every entry is finite
    assert not all_finite(torch.tensor([1.0, float("nan")]))
    assert not all_finite(torch.tensor([float("inf"), float("-inf")]))
    assert all_finite(torch.empty(0))


@pytest.mark.parametrize("cols", [5, 191, 384, 577, 1000])
def test_hessian_quadratic_forms_match_the_full_product(cols):
    # Below 3 tiles of 192 the whole product runs; from 3 up only the lower tiles, odd widths included.
    generator = torch.Generator().manual_seed(cols)
    inputs = torch.randn(3 * cols, cols, generator=generator, dtype=torch.float64)
    hessian = (inputs.T @ inputs / inputs.shape[0]).float()
    matrices = [torch.randn(rows, cols, generator=generator) for rows in (1, 7, 130)]
    forms = hessian_quadratic_forms(matrices, hessian)
    for matrix, form in zip(matrices, forms):
        expected = float(((matrix.double() @ hessian.double()) * matrix.double()).sum())
        assert form == pytest.approx(expected, rel=1e-5)
    assert hessian_quadratic_forms([matrices[1]], hessian)[0] == pytest.approx(forms[1], rel=1e-6)
    assert hessian_quadratic_forms([torch.zeros(4, cols)], hessian) == [0.0]
