"""Running layer Hessians H = 2/n * sum_i x_i x_i^T for Linear and Conv2d inputs."""

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def combine_running_mean(mean: torch.Tensor, n_samples: int, sum_: Callable[[torch.Tensor, str], torch.Tensor],
                         what: str) -> int:
    """Turns ``mean`` (over ``n_samples`` rows) in place into the mean over every process's rows,
    given ``sum_(tensor, what)`` summing a tensor over the processes in place; returns the total
    row count. Sums are combined, not means: mean * n and n."""
    count = torch.tensor([n_samples], dtype=torch.int64)
    sum_(count, f"{what} (sample counts)")
    total = int(count[0])
    if n_samples:
        mean.mul_(n_samples)
    sum_(mean, what)
    if total:
        mean.div_(total)
    return total


class HessianAccumulator:
    """Accumulates the Hessian of a Linear or Conv2d layer's reconstruction loss from its inputs.

    H = 2/n * sum over the n input rows x (tokens for Linear, unfolded patches for Conv2d) of
    x x^T, kept as a running mean: each batch rescales the accumulator by n_old / n_new and adds
    2/n_new * X^T X (one fused ``prunekit::hessian_accumulate_`` call), so no activations are
    stored. ``dtype`` is the accumulator's (fp32 default, fp64 for very long calibration); inputs
    of any float dtype are upcast batch by batch.

    Use ``add(x)`` directly, or ``attach(module)`` to feed it from a forward hook. ``gemm``: the
    products' library, "aten" or "onednn" (fp32 on CPU; see :mod:`.linear_backend`).
    """

    def __init__(self, module_or_features, *, dtype: torch.dtype = torch.float32, device=None,
                 max_rows_per_step: int = 8192, gemm: str = "aten"):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"HessianAccumulator: dtype must be float32 or float64, but got {dtype}")
        if gemm not in ("aten", "onednn"):
            raise ValueError(f"HessianAccumulator: gemm must be 'aten' or 'onednn', but got {gemm!r}")
        self.gemm = gemm
        self.module = module_or_features if isinstance(module_or_features, nn.Module) else None
        if self.module is None:
            features = int(module_or_features)
        elif isinstance(self.module, nn.Linear):
            features = self.module.in_features
        elif isinstance(self.module, nn.Conv2d):
            if self.module.groups != 1:
                raise ValueError("HessianAccumulator: grouped Conv2d (groups != 1) is not supported")
            kh, kw = self.module.kernel_size
            features = self.module.in_channels * kh * kw
        else:
            raise ValueError(f"HessianAccumulator: expected nn.Linear, nn.Conv2d or a feature count, "
                             f"but got {type(self.module).__name__}")
        if device is None and self.module is not None:
            device = self.module.weight.device
        self.features = features
        self.hessian = torch.zeros(features, features, dtype=dtype, device=device)
        self.n_samples = 0
        self.max_rows_per_step = max_rows_per_step
        self._handle = None

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """The input as (rows, features): tokens for Linear, unfolded patches for Conv2d."""
        if isinstance(self.module, nn.Conv2d):
            conv = self.module
            if x.dim() == 3:
                x = x.unsqueeze(0)
            patches = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                               stride=conv.stride)  # (batch, features, positions)
            return patches.transpose(1, 2).reshape(-1, self.features)
        if x.shape[-1] != self.features:
            raise ValueError(f"HessianAccumulator: input must have {self.features} features in its last "
                             f"dim, but got shape {tuple(x.shape)}")
        return x.reshape(-1, self.features)

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """Adds a batch of layer inputs."""
        rows = self._rows(x.detach())
        for start in range(0, rows.shape[0], self.max_rows_per_step):
            chunk = rows[start : start + self.max_rows_per_step]
            torch.ops.prunekit.hessian_accumulate_(self.hessian, chunk.contiguous(), self.n_samples, self.gemm)
            self.n_samples += chunk.shape[0]

    @torch.no_grad()
    def combine(self, sum_: Callable[[torch.Tensor, str], torch.Tensor], what: str = "the Hessian reduction") -> None:
        """Combines the accumulators of several processes in place, given ``sum_(tensor, what)``
        that sums a tensor over them in place (a distributed all_reduce): every process ends with
        H = 2/N * sum of x x^T over all their rows and n_samples = N, the result of one accumulator
        fed every row (up to the order of additions). Sums are combined, not means: H * n and n."""
        self.n_samples = combine_running_mean(self.hessian, self.n_samples, sum_, what)

    def attach(self, module: nn.Module | None = None):
        """Registers a forward hook that adds the module's input; returns the hook handle."""
        module = module if module is not None else self.module
        if module is None:
            raise ValueError("HessianAccumulator.attach: no module given")
        self._handle = module.register_forward_hook(lambda mod, args, out: self.add(args[0]))
        return self._handle

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class HessianDiagonalAccumulator:
    """The diagonal of :class:`HessianAccumulator`'s H = 2/n sum x x^T alone, for criteria that read
    only ||X_j|| (Wanda, RIA), the per-feature variance, or the diagonal error estimate.

    The same running mean as the full Hessian (each batch rescales by n_old / n_new and adds
    2/n_new times the batch's sums of squares), from one pass over the rows: the values equal
    ``torch.diagonal(HessianAccumulator.hessian)`` up to float rounding (the sums are taken in
    another order), at 1/features of its cost and memory. Non-finite rows, or squares that
    overflow float32, are a ValueError, as ``prunekit::hessian_accumulate_`` raises.
    """

    def __init__(self, features: int, *, dtype: torch.dtype = torch.float32, device=None,
                 max_rows_per_step: int = 8192):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"HessianDiagonalAccumulator: dtype must be float32 or float64, but got {dtype}")
        self.features = int(features)
        self.diagonal = torch.zeros(self.features, dtype=dtype, device=device)
        self.n_samples = 0
        self.max_rows_per_step = max_rows_per_step  # bounds the temporary squares of one step

    @torch.no_grad()
    def add(self, rows: torch.Tensor) -> None:
        """Adds a batch of input rows (rows, features)."""
        if rows.dim() != 2 or rows.shape[1] != self.features:
            raise ValueError(f"HessianDiagonalAccumulator: input must be (rows, {self.features}), but got shape "
                             f"{tuple(rows.shape)}")
        if rows.shape[0] == 0:
            return
        squares = sum(chunk.to(self.diagonal.dtype).square().sum(dim=0)
                      for chunk in rows.split(self.max_rows_per_step))
        if not bool(torch.isfinite(squares).all()):
            feature = int((~torch.isfinite(squares)).nonzero()[0])
            raise ValueError(f"HessianDiagonalAccumulator: input feature {feature} holds NaN or Inf, or its squares "
                             f"overflow {self.diagonal.dtype} (sum of squares {float(squares[feature])})")
        total = self.n_samples + rows.shape[0]
        self.diagonal.mul_(self.n_samples / total).add_(squares, alpha=2.0 / total)
        self.n_samples = total

    @torch.no_grad()
    def combine(self, sum_: Callable[[torch.Tensor, str], torch.Tensor], what: str = "the Hessian reduction") -> None:
        """As :meth:`HessianAccumulator.combine`: sums of H * n and of n over the processes."""
        self.n_samples = combine_running_mean(self.diagonal, self.n_samples, sum_, what)


# Tile width of hessian_quadratic_forms on CPU (as hessian_accumulate_'s symmetric tiles).
_QUADRATIC_TILE = 192


def hessian_quadratic_forms(matrices: list[torch.Tensor], hessian: torch.Tensor) -> list[float]:
    """``[tr(M H M^T) for M in matrices]`` (each M (rows, cols), H (cols, cols) symmetric), in
    fp32, the matrices stacked into one product. On CPU, from 3 tiles up only H's tiles on and
    below the diagonal are multiplied (each off-diagonal one counts twice, by symmetry): a third
    or more of the GEMM work saved."""
    hessian = hessian.to(torch.float32)
    stacked = torch.cat([m.to(torch.float32) for m in matrices]) if len(matrices) > 1 else matrices[0].float()
    cols = hessian.shape[0]
    tiles = -(-cols // _QUADRATIC_TILE)
    if not hessian.is_cpu or tiles < 3:
        row_sums = ((stacked @ hessian) * stacked).sum(1)
    else:
        width = -(-cols // tiles)
        row_sums = torch.zeros(stacked.shape[0], dtype=torch.float32, device=stacked.device)
        for i in range(0, cols, width):
            left = stacked[:, i:i + width]
            for j in range(0, i + 1, width):
                terms = (left @ hessian[i:i + width, j:j + width]).mul_(stacked[:, j:j + width]).sum(1)
                row_sums.add_(terms, alpha=1.0 if i == j else 2.0)
    return [float(part.sum()) for part in row_sums.split([m.shape[0] for m in matrices])]
