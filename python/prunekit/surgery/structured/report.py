"""What structured pruning did: :class:`StructuredReport`, in the style of :class:`prunekit.PruneReport`."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field

import torch.nn as nn

__all__ = ["StructuredReport", "count_parameters"]


@dataclass
class StructuredReport:
    """What :func:`prune_structured` did; JSON-serialisable through :meth:`to_dict` / :meth:`to_json`.

    ``method``: the importance's name; ``sparsity``: the fraction of units removed per target.
    ``groups``: one entry per pruned group: name, kind ("mlp" | "heads" | "channels"), member
    modules ("name:role"), units before and after, channels per unit (head_dim for heads), the
    kept units. ``config_updates``: Hugging Face config attributes changed, {name: [old, new]};
    ``config_reloadable``: whether a model built from the updated config has exactly the pruned
    model's parameter names and shapes (so save_pretrained + from_pretrained round-trips; None
    for models without a config). ``bias_compensated``: consumers whose bias received FLAP's
    compensation (``biases_created``: those that had none)."""

    method: str
    sparsity: dict
    round_to: int | None
    params_before: int
    params_after: int
    groups: list[dict] = field(default_factory=list)
    config_updates: dict = field(default_factory=dict)
    config_reloadable: bool | None = None
    bias_compensated: list[str] = field(default_factory=list)
    biases_created: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def params_removed(self) -> int:
        return self.params_before - self.params_after

    @property
    def importance(self) -> str:
        """Deprecated name of :attr:`method`."""
        warnings.warn("StructuredReport.importance is deprecated; use StructuredReport.method", DeprecationWarning,
                      stacklevel=2)
        return self.method

    @property
    def ratio(self) -> dict:
        """Deprecated name of :attr:`sparsity`."""
        warnings.warn("StructuredReport.ratio is deprecated; use StructuredReport.sparsity", DeprecationWarning,
                      stacklevel=2)
        return self.sparsity

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["params_removed"] = self.params_removed
        return data

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> str:
        """One line for the whole model, one per pruned group, then config changes and warnings."""
        lines = [f"structured pruning ({self.method}, sparsity {self.sparsity}, round_to {self.round_to}): "
                 f"{self.params_before:,} -> {self.params_after:,} parameters "
                 f"(-{self.params_removed:,}, {self.params_removed / max(self.params_before, 1):.1%})"]
        for group in self.groups:
            lines.append(f"  {group['kind']:<8} {group['name']}: {group['units_before']} -> {group['units_after']}")
        if self.config_updates:
            lines.append(f"  config: {self.config_updates} (reloadable: {self.config_reloadable})")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model``, each shared tensor counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
