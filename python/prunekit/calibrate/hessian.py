"""Running layer Hessians H = 2/n * sum_i x_i x_i^T for Linear and Conv2d inputs."""

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class HessianAccumulator:
    """Accumulates the Hessian of a Linear or Conv2d layer's reconstruction loss from its inputs.

    H = 2/n * sum over the n input rows x (tokens for Linear, unfolded patches for Conv2d) of
    x x^T, kept as a running mean: each batch rescales the accumulator by n_old / n_new and adds
    2/n_new * X^T X (one fused ``prunekit::hessian_accumulate_`` call), so no activations are
    stored. ``dtype`` is the accumulator's (fp32 default, fp64 for very long calibration); inputs
    of any float dtype are upcast batch by batch.

    Use ``add(x)`` directly, or ``attach(module)`` to feed it from a forward hook.
    """

    def __init__(self, module_or_features, *, dtype: torch.dtype = torch.float32, device=None,
                 max_rows_per_step: int = 8192):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"HessianAccumulator: dtype must be float32 or float64, but got {dtype}")
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
            torch.ops.prunekit.hessian_accumulate_(self.hessian, chunk.contiguous(), self.n_samples)
            self.n_samples += chunk.shape[0]

    @torch.no_grad()
    def combine(self, sum_: Callable[[torch.Tensor, str], torch.Tensor], what: str = "the Hessian reduction") -> None:
        """Combines the accumulators of several processes in place, given ``sum_(tensor, what)``
        that sums a tensor over them in place (a distributed all_reduce): every process ends with
        H = 2/N * sum of x x^T over all their rows and n_samples = N, the result of one accumulator
        fed every row (up to the order of additions). Sums are combined, not means: H * n and n."""
        count = torch.tensor([self.n_samples], dtype=torch.int64)
        sum_(count, f"{what} (sample counts)")
        total = int(count[0])
        if self.n_samples:
            self.hessian.mul_(self.n_samples)
        sum_(self.hessian, what)
        if total:
            self.hessian.div_(total)
        self.n_samples = total

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
    """The diagonal of :class:`HessianAccumulator`'s H = 2/n sum x x^T, for criteria that read only
    ||X_j|| (Wanda, RIA), the per-feature variance, or the diagonal error estimate.

    The inputs' features are split into consecutive slices of ``slice_width`` (the last one takes
    the remainder, so every slice is at least ``slice_width`` wide, and a layer narrower than two
    slices is one slice) and each slice accumulates its own small Hessian through the same
    ``prunekit::hessian_accumulate_`` call on the same rows. A diagonal entry is then the same
    dot product of one feature's column with itself, scaled the same way, as in the full Hessian:
    the values are those of ``torch.diagonal(HessianAccumulator.hessian)`` (the tests check this
    bit for bit), at ``slice_width / features`` of its cost and memory.
    """

    def __init__(self, features: int, *, dtype: torch.dtype = torch.float32, device=None, slice_width: int = 64,
                 max_rows_per_step: int = 8192):
        if slice_width < 1:
            raise ValueError(f"HessianDiagonalAccumulator: slice_width must be >= 1, but got {slice_width}")
        self.features = int(features)
        bounds = list(range(0, self.features, slice_width)) + [self.features]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < slice_width:
            del bounds[-2]  # the remainder joins the last full slice
        self.slices = [(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]
        self.accumulators = [HessianAccumulator(stop - start, dtype=dtype, device=device,
                                                max_rows_per_step=max_rows_per_step) for start, stop in self.slices]

    @property
    def n_samples(self) -> int:
        return self.accumulators[0].n_samples if self.accumulators else 0

    @property
    def diagonal(self) -> torch.Tensor:
        """(features,) the Hessian's diagonal."""
        return torch.cat([torch.diagonal(accumulator.hessian) for accumulator in self.accumulators])

    @torch.no_grad()
    def add(self, rows: torch.Tensor) -> None:
        """Adds a batch of input rows (rows, features)."""
        if rows.dim() != 2 or rows.shape[1] != self.features:
            raise ValueError(f"HessianDiagonalAccumulator: input must be (rows, {self.features}), but got shape "
                             f"{tuple(rows.shape)}")
        if len(self.slices) == 1:
            self.accumulators[0].add(rows)
            return
        for (start, stop), accumulator in zip(self.slices, self.accumulators):
            accumulator.add(rows[:, start:stop])

    @torch.no_grad()
    def combine(self, sum_: Callable[[torch.Tensor, str], torch.Tensor], what: str = "the Hessian reduction") -> None:
        """As :meth:`HessianAccumulator.combine`, slice by slice."""
        for index, accumulator in enumerate(self.accumulators):
            accumulator.combine(sum_, f"{what} (diagonal slice {index})")
