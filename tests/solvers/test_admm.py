"""ADMM reconstruction (prunekit.solvers.admm, the prunekit::admm_solve op in csrc/generic): the op
against its reference, exact masks, a lower reconstruction error than SparseGPT on identical
(W, H), opcheck and compile, bad input, and the method / update="admm" through prune."""

import math
import warnings

import pytest
import torch

import prunekit
from prunekit import PruneConfig
from prunekit.ops import _reference as ref
from prunekit.solvers.admm import admm
from prunekit.solvers.sparsegpt import sparsegpt

from tiny_models import calibration, tiny_model

OP = torch.ops.prunekit.admm_solve.default


def layer(rows, cols, tokens=256, seed=0):
    """A layer whose inputs are correlated and of unequal scale, as in LLMs."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=generator) / math.sqrt(cols) + torch.eye(cols)
    x = (torch.randn(tokens, cols, generator=generator) @ mixing) * (0.1 + 3 * torch.rand(cols, generator=generator))
    weight = torch.randn(rows, cols, generator=generator)
    return x, weight, 2 / tokens * x.T @ x


def error(weight, pruned, hessian):
    delta = weight - pruned
    return float(((delta @ hessian) * delta).sum() / ((weight @ hessian) * weight).sum())


def op_inputs(rows, cols, rho=1.0, seed=0, damp=0.01):
    """Scaled, damped Hessian and (H + rho I)^-1 as prunekit.solvers.admm builds them."""
    _, weight, hessian = layer(rows, cols, seed=seed)
    norms = torch.diagonal(hessian).sqrt()
    scaled = hessian / norms / norms.unsqueeze(1) + damp * torch.eye(cols)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(scaled + rho * torch.eye(cols)))
    return (weight * norms).contiguous(), scaled.contiguous(), inverse.contiguous()


CASES = [(0.5, 0, 0), (0.0, 0, 0), (0.9, 0, 0), (0.7, 0, 0), (0.5, 2, 4), (0.5, 4, 8), (2 / 3, 1, 3), (1.0, 0, 4)]


@pytest.mark.parametrize("sparsity,n,m", CASES)
@pytest.mark.parametrize("shape", [(16, 64), (7, 24), (5, 36)])
@pytest.mark.parametrize("per_row", [True, False])
def test_op_matches_reference_and_masks_are_exact(sparsity, n, m, shape, per_row):
    rows, cols = shape
    if m and cols % m:
        pytest.skip("in_features not a multiple of m")
    weight, hessian, inverse = op_inputs(rows, cols)
    op_sparsity = 0.0 if m else sparsity
    args = (weight, hessian, inverse, None, op_sparsity, n, m, per_row, 1.0, 12, 8, 10)
    pruned, keep = OP(*args)
    expected, expected_keep = ref.admm_solve(*args)
    assert keep.dtype == torch.bool and pruned.dtype == torch.float32
    # The masks come from iterates computed in another precision; on these inputs they agree.
    assert torch.equal(keep, expected_keep)
    torch.testing.assert_close(pruned, expected, rtol=1e-3, atol=1e-3)
    assert torch.equal(pruned != 0, keep & (pruned != 0)) and not bool(pruned[~keep].any())
    if m:
        assert bool((keep.reshape(-1, m).sum(1) == n).all())
    else:
        assert int((~keep).sum()) == round(sparsity * rows * cols)
        if per_row and round(sparsity * rows * cols) % rows == 0:
            assert bool(((~keep).sum(1) == round(sparsity * cols)).all())


def test_fixed_support_is_kept_exactly_and_solved():
    weight, hessian, inverse = op_inputs(12, 40)
    keep = torch.rand(12, 40, generator=torch.Generator().manual_seed(3)) > 0.6
    pruned, kept = OP(weight, hessian, inverse, keep, 0.5, 0, 0, True, 1.0, 20, 0, 60)
    assert torch.equal(kept, keep) and not bool(pruned[~keep].any())
    # The optimum on the support: the gradient (B - W) H vanishes there.
    gradient = ((pruned - weight) @ hessian) * keep
    assert float(gradient.abs().max()) < 1e-3 * float((weight @ hessian).abs().max())
    masked_error = error(weight, weight * keep, hessian)
    assert error(weight, pruned, hessian) < masked_error


@pytest.mark.parametrize("sparsity", [0.5, 0.7, "2:4", "4:8"])
@pytest.mark.parametrize("seed", [0, 1])
def test_reconstruction_error_at_most_sparsegpts(sparsity, seed):
    _, weight, hessian = layer(48, 128, seed=seed)
    kwargs = dict(pattern=sparsity) if isinstance(sparsity, str) else dict(sparsity=sparsity)
    pruned, keep = admm(weight, hessian, **kwargs)
    reference, _ = sparsegpt(weight, hessian, **kwargs)
    assert error(weight, pruned, hessian) <= error(weight, reference, hessian)
    assert not bool(pruned[~keep].any())
    if isinstance(sparsity, str):
        n, m = map(int, sparsity.split(":"))
        assert bool((keep.reshape(-1, m).sum(1) == n).all())
    else:
        assert int((~keep).sum()) == round(sparsity * keep.numel())


def test_dtypes_and_dead_inputs():
    _, weight, hessian = layer(16, 32)
    hessian[5, :] = 0
    hessian[:, 5] = 0
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        pruned, keep = admm(weight.to(dtype), hessian.to(dtype), sparsity=0.5)
        assert pruned.dtype == dtype and not bool(pruned[:, 5].any())
        assert int((~keep).sum()) == 16 * 16


def test_opcheck_and_compile():
    weight, hessian, inverse = op_inputs(8, 32)
    keep = weight.abs() > 0.5
    for args in [(weight, hessian, inverse, None, 0.5, 0, 0, True, 1.0, 4, 2, 3),
                 (weight, hessian, inverse, None, 0.0, 2, 4, False, 0.5, 3, 0, 2),
                 (weight, hessian, inverse, keep, 0.0, 0, 0, True, 1.0, 2, 0, 2)]:
        torch.library.opcheck(OP, args)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def solve(w, h, inv):
        return prunekit.ops.admm_solve(w, h, inv, None, 0.5, 0, 0, True, 1.0, 4, 2, 3)

    pruned, keep = solve(weight, hessian, inverse)
    expected, expected_keep = OP(weight, hessian, inverse, None, 0.5, 0, 0, True, 1.0, 4, 2, 3)
    assert torch.equal(keep, expected_keep) and torch.equal(pruned, expected)
    meta = torch.ops.prunekit.admm_solve(weight.to("meta"), hessian.to("meta"), inverse.to("meta"), None, 0.5, 0, 0,
                                         True, 1.0, 4, 2, 3)
    assert meta[0].shape == weight.shape and meta[1].dtype == torch.bool


@pytest.mark.parametrize("change,pattern", [
    (dict(rho=0.0), r"argument 'rho' must be a finite number > 0, but got 0"),
    (dict(rho=float("nan")), r"argument 'rho' must be a finite number > 0, but got nan"),
    (dict(iterations=-1), r"argument 'iterations' must be in \[0, 10000\], but got -1"),
    (dict(pcg_iterations=10001), r"argument 'pcg_iterations' must be in \[0, 10000\], but got 10001"),
    (dict(prune_iterations=9, iterations=4), r"'prune_iterations' must be at most iterations \(4\), but got 9"),
    (dict(sparsity=1.0), r"argument 'sparsity' must be in \[0, 1\), but got 1"),
    (dict(n=3, m=2), r"argument 'n' must be in \[0, m=2\], but got 3"),
    (dict(n=2, m=5), r"the number of columns of 'weight' must be a multiple of 5, but got 32"),
    (dict(hessian="short"), r"argument 'hessian' must be \(32, 32\) to match weight \[8, 32\], but got \[16, 16\]"),
    (dict(weight="half"), r"argument 'weight' must have dtype Float, but got Half"),
    (dict(keep="int"), r"argument 'keep' must have dtype Bool, but got Int"),
    (dict(weight="nan"), r"must be finite, but one holds NaN or Inf"),
])
def test_op_bad_input(change, pattern):
    weight, hessian, inverse = op_inputs(8, 32)
    args = dict(weight=weight, hessian=hessian, inverse=inverse, keep=None, sparsity=0.5, n=0, m=0, per_row=True,
                rho=1.0, iterations=4, prune_iterations=2, pcg_iterations=2)
    args.update(change)
    if args["weight"] == "half":
        args["weight"] = weight.half()
    if args["weight"] == "nan":
        args["weight"] = weight.clone()
        args["weight"][0, 0] = float("nan")
    if args["hessian"] == "short":
        args["hessian"] = hessian[:16, :16].contiguous()
    if args["keep"] == "int":
        args["keep"] = torch.ones(8, 32, dtype=torch.int32)
    if args["m"]:
        args["sparsity"] = 0.0
    with pytest.raises(ValueError, match=pattern):
        OP(*args.values())


def test_solver_bad_input_names_the_layer():
    _, weight, hessian = layer(8, 32)
    with pytest.raises(ValueError, match=r"admm\(blocks.0.q\): rho: expected a finite number > 0, but got -1"):
        admm(weight, hessian, rho=-1.0, name="blocks.0.q")
    with pytest.raises(ValueError, match=r"admm\(q\): iterations: expected an integer in \[0, 10000\], but got 2.5"):
        admm(weight, hessian, iterations=2.5, name="q")
    bad = hessian.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"admm\(q\): hessian must be finite, but it holds NaN or Inf \(NaN activ"):
        admm(weight, bad, name="q")
    with pytest.raises(ValueError, match=r"admm\(q\): hessian is all zeros: no calibration input reached"):
        admm(weight, torch.zeros(32, 32), name="q")
    with pytest.raises(ValueError, match=r"admm\(q\): hessian must be \(32, 32\) to match weight"):
        admm(weight, hessian[:8, :8], name="q")
    with pytest.raises(ValueError, match=r"admm\(q\): sparsity 0.3 contradicts pattern 2:4"):
        admm(weight, hessian, sparsity=0.3, pattern="2:4", name="q")
    with pytest.raises(ValueError, match=r"admm\(q\): keep must be a bool tensor of the weight's shape"):
        admm(weight, hessian, keep=torch.ones(8, 31, dtype=torch.bool), name="q")


def test_singular_hessian_escalates_damping_with_a_warning():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 32, generator=generator)  # rank 8 < 32
    hessian = 2 / 8 * x.T @ x
    weight = torch.randn(4, 32, generator=generator)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned, keep = admm(weight, hessian, sparsity=0.5, percdamp=0.0, name="blocks.3.mlp")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages and "admm(blocks.3.mlp): Cholesky factorisation of the Hessian failed with damping 0" in messages[0]
    assert bool(torch.isfinite(pruned).all()) and int((~keep).sum()) == 64
    with pytest.raises(ValueError, match=r"admm\(blocks.3.mlp\): the Hessian is not positive definite even with "
                                         r"damping .* after 0 retries"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            admm(weight, hessian, sparsity=0.5, percdamp=0.0, max_retries=0, name="blocks.3.mlp")


def test_config_validation():
    with pytest.raises(ValueError, match=r"PruneConfig.update: expected None or 'admm', but got 'sgd'"):
        PruneConfig(update="sgd")
    with pytest.raises(ValueError, match=r"PruneConfig.admm_rho: expected a finite number > 0, but got 0"):
        PruneConfig(method="admm", admm_rho=0)
    with pytest.raises(ValueError, match=r"PruneConfig.admm_iterations: expected an integer in \[0, 10000\]"):
        PruneConfig(method="admm", admm_iterations=-3)
    with pytest.raises(ValueError, match=r"PruneConfig.admm_percdamp: expected a finite number >= 0"):
        PruneConfig(method="admm", admm_percdamp=float("inf"))
    with pytest.raises(ValueError, match=r"PruneConfig.admm_per_row: expected True or False"):
        PruneConfig(method="admm", admm_per_row=1)
    assert PruneConfig(method="wanda", update="admm").needs_calibration


def _layer_errors(report):
    return {layer.name: layer.reconstruction_error for layer in report.layers}


@pytest.mark.parametrize("sparsity", [0.5, "2:4"])
def test_prune_method_and_update(sparsity):
    reports = {}
    for name, config in {"wanda": dict(method="wanda"), "admm": dict(method="admm"),
                         "wanda+admm": dict(method="wanda", update="admm")}.items():
        model = tiny_model("llama")
        reports[name] = prunekit.prune(model, PruneConfig(sparsity=sparsity, progress=False, sequential=False,
                                                          ignore=["lm_head"], **config), calibration("llama"))
        for module_name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and module_name != "lm_head":
                weight = module.weight.detach()
                if sparsity == "2:4":
                    assert bool(((weight.reshape(-1, 4) != 0).sum(1) <= 2).all()), module_name
                else:
                    assert int((weight == 0).sum()) >= weight.numel() // 2, module_name
    wanda, updated = _layer_errors(reports["wanda"]), _layer_errors(reports["wanda+admm"])
    # One-shot (dense inputs everywhere): the update on Wanda's support lowers every layer's error.
    for name, value in wanda.items():
        assert updated[name] <= value + 1e-6, name
    assert sum(_layer_errors(reports["admm"]).values()) < sum(wanda.values())


def generic_solve(*args):
    """The device-generic ATen kernel (csrc/generic), as a device without a fused kernel gets it."""
    kernel = torch.library.get_kernel(OP, "PrivateUse1")
    return kernel.call_boxed(torch._C._dispatch_keyset_full(), *args)


def test_generic_kernel_is_the_one_devices_without_a_kernel_get():
    assert "csrc/generic/admm_ops.cpp" in repr(torch.library.get_kernel(OP, "PrivateUse1"))
    assert "csrc/cpu/admm_ops.cpp" in repr(torch.library.get_kernel(OP, "CPU"))


@pytest.mark.parametrize("sparsity,n,m,per_row", [(0.5, 0, 0, True), (0.7, 0, 0, False), (0.55, 0, 0, True),
                                                  (0.0, 2, 4, True), (0.0, 4, 8, True)])
@pytest.mark.parametrize("fixed", [False, True])
def test_generic_kernel_matches_the_fused_cpu_kernel(sparsity, n, m, per_row, fixed):
    weight, hessian, inverse = op_inputs(24, 64, seed=2)
    keep = (torch.rand(24, 64, generator=torch.Generator().manual_seed(1)) > 0.5) if fixed else None
    args = (weight, hessian, inverse, keep, sparsity, n, m, per_row, 0.7, 10, 6, 8)
    pruned, kept = OP(*args)
    generic, generic_kept = generic_solve(*args)
    assert torch.equal(kept, generic_kept)
    torch.testing.assert_close(pruned, generic, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("solve", [OP, generic_solve], ids=["cpu", "generic"])
def test_conjugate_gradients_stay_at_the_solution_however_many_iterations(solve):
    """Past convergence the rows' residual products fall into fp32 rounding and then denormals,
    where a step size product / curvature is meaningless: solved rows must stop stepping."""
    weight, hessian, inverse = op_inputs(24, 64, seed=4)
    keep = torch.rand(24, 64, generator=torch.Generator().manual_seed(5)) > 0.5
    exact = torch.zeros(24, 64, dtype=torch.float64)
    h = hessian.double()
    for row in range(24):
        kept = keep[row]
        exact[row, kept] = torch.linalg.solve(h[kept][:, kept], (h @ weight[row].double())[kept])
    for iterations in (40, 400, 2000):
        pruned, _ = solve(weight, hessian, inverse, keep, 0.5, 0, 0, True, 1.0, 0, 0, iterations)
        assert float((pruned.double() - exact).norm() / exact.norm()) < 1e-5, iterations
        assert not bool(pruned[~keep].any())


def test_an_overflowing_nm_iterate_is_an_error_on_every_kernel():
    """Finite inputs whose ADMM iterate overflows (W H is inf): the fused CPU kernel's N:M selection
    (the nm_mask kernel) refuses it, as the generic kernel's nm_mask does, instead of choosing a
    mask from NaN."""
    args = (torch.full((4, 8), 3e38), 10 * torch.eye(8), torch.eye(8), None, 0.0, 2, 4, True, 1.0, 3, 1, 0)
    with pytest.raises(ValueError, match="the ADMM iterate must stay finite, but entry 0 of row 0 became"):
        OP(*args)
    with pytest.raises(ValueError, match="nm_mask: argument 'scores' must be finite"):
        generic_solve(*args)
