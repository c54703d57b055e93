"""``PruneReport``: what :func:`prunekit.prune` did, per layer and in total (JSON-serialisable)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, ...]
    numel: int
    target_sparsity: float
    sparsity: float
    reconstruction_error: float | None
    """||X W^T - X W_s^T||^2 / ||X W^T||^2 over the layer's calibration inputs (None without data);
    with ``PruneReport.reconstruction_error_kind`` "diagonal", its estimate from the diagonal of
    X^T X alone: sum_ij dW_ij^2 ||X_j||^2 / sum_ij W_ij^2 ||X_j||^2 (the inputs' cross terms left
    out, as if the input features were uncorrelated)."""
    block: str | None = None


@dataclass
class PruneReport:
    """What :func:`prune` did: per layer and in total. JSON-serialisable (``to_json``)."""

    method: str
    sparsity: float | str
    allocation: str
    refine: str | None
    sequential: bool
    layers: list[LayerReport] = field(default_factory=list)
    within_block: str = "parallel"
    """PruneConfig.within_block: how the layers of a block calibrated."""
    linear_backend: str | None = None
    """The GEMM library of the calibration forwards' fp32 CPU linears ("aten" or "onednn"; see
    PruneConfig.linear_backend), None without calibration forwards."""
    calibration_items: int = 0
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    """Wall-clock seconds per stage of the run (exclusive): "allocation", "gradients",
    "calibration_forwards" (block forwards, the capture of the first block's inputs included),
    "statistics" (Hessians, norms, feature sums, their reduction), "solves" (criteria, solvers,
    refinements), "errors" (reconstruction errors), "other" (the rest), "total"."""
    reconstruction_error_kind: str | None = None
    """"exact" (from the Hessian), "diagonal" (from the Hessian's diagonal: see
    :attr:`LayerReport.reconstruction_error`) or None (not computed)."""
    block_refinement: list = field(default_factory=list)
    """Per refined block (refine="block"): its output error before and after, the step kept."""
    compensation: dict = field(default_factory=dict)
    """Per layer (compensate=...): the rank, bytes added, reconstruction error before and after."""
    _error_sums: list = field(default_factory=lambda: [0.0, 0.0], repr=False)

    def add_layer(self, name: str, shape: tuple[int, ...], numel: int, zeros: int, target_sparsity: float,
                  error_terms: tuple[float, float] | None, block: str | None) -> None:
        """Records a pruned layer; ``error_terms`` are the numerator and denominator of its
        reconstruction error (None without calibration data)."""
        error = None
        if error_terms is not None:
            numerator, denominator = error_terms
            error = numerator / denominator if denominator > 0 else 0.0
            self._error_sums[0] += numerator
            self._error_sums[1] += denominator
        self.layers.append(LayerReport(name, shape, numel, target_sparsity, zeros / numel, error, block))

    @property
    def total_params(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def total_pruned(self) -> int:
        return sum(round(layer.sparsity * layer.numel) for layer in self.layers)

    @property
    def total_sparsity(self) -> float:
        return self.total_pruned / self.total_params if self.total_params else 0.0

    @property
    def total_reconstruction_error(self) -> float | None:
        """sum over layers of ||dW X||^2 / sum of ||W X||^2 (None without calibration data)."""
        numerator, denominator = self._error_sums
        if not any(layer.reconstruction_error is not None for layer in self.layers) or denominator == 0:
            return None
        return numerator / denominator

    @property
    def mean_reconstruction_error(self) -> float | None:
        errors = [layer.reconstruction_error for layer in self.layers if layer.reconstruction_error is not None]
        return sum(errors) / len(errors) if errors else None

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "allocation": self.allocation,
            "refine": self.refine,
            "sequential": self.sequential,
            "within_block": self.within_block,
            "linear_backend": self.linear_backend,
            "calibration_items": self.calibration_items,
            "seconds": self.seconds,
            "timings": self.timings,
            "reconstruction_error_kind": self.reconstruction_error_kind,
            "total_params": self.total_params,
            "total_pruned": self.total_pruned,
            "total_sparsity": self.total_sparsity,
            "total_reconstruction_error": self.total_reconstruction_error,
            "mean_reconstruction_error": self.mean_reconstruction_error,
            "layers": [dataclasses.asdict(layer) | {"shape": list(layer.shape)} for layer in self.layers],
            "block_refinement": self.block_refinement,
            "compensation": self.compensation,
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> str:
        """A plain-text table: one line per layer, then the totals."""
        lines = [f"{'layer':<48} {'shape':>16} {'target':>7} {'sparsity':>8} {'rel. error':>10}"]
        for layer in self.layers:
            error = "-" if layer.reconstruction_error is None else f"{layer.reconstruction_error:.4g}"
            lines.append(f"{layer.name:<48} {'x'.join(map(str, layer.shape)):>16} {layer.target_sparsity:>7.4f} "
                         f"{layer.sparsity:>8.4f} {error:>10}")
        total_error = self.total_reconstruction_error
        kind = "" if self.reconstruction_error_kind in (None, "exact") else f" ({self.reconstruction_error_kind})"
        lines.append(f"total: {self.total_pruned}/{self.total_params} pruned ({self.total_sparsity:.4f}), "
                     f"reconstruction error {'-' if total_error is None else f'{total_error:.4g}'}{kind}")
        if self.timings:
            lines.append("seconds: " + ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in self.timings.items()))
        return "\n".join(lines)
