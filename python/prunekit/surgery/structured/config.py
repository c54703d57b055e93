"""What structured pruning does: :class:`StructuredConfig`, in the words of :class:`prunekit.PruneConfig`,
and the translation of the deprecated keyword call of :func:`prune_structured`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import torch

from ...solvers.masks import check_sparsity
from ...solvers.structured import importance_needs, resolve_importance
from .attention import HEAD_UNITS

__all__ = ["StructuredConfig", "TARGETS", "config_from_call"]

TARGETS = ("mlp", "heads", "channels")


def _names(value, what: str, expected: str) -> tuple[str, ...]:
    """``value`` (a str or a sequence of str) as a tuple, or a ValueError naming ``what``."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what}: expected {expected}, but got {value!r}")
    return tuple(value)


@dataclass
class StructuredConfig:
    """What :func:`prune_structured` does. Fields shared with :class:`prunekit.PruneConfig` have its
    names and defaults.

    - ``method``: the importance that scores each group's units: a registered name ("magnitude":
      L2 of the coupled weights, no data; "taylor": |w * grad| over the group, gradients of
      ``loss_fn`` on the calibration data; "wanda": |W| * ||X|| over the group; "flap": input
      variance times squared weight-column norm of the consumers, with bias compensation; or one
      added by :func:`prunekit.register_importance`) or an importance object (see
      :class:`prunekit.solvers.structured.Importance`). All but "magnitude" need ``calib``.
    - ``sparsity``: the fraction of each group's units removed, in [0, 1); or a dict per target,
      e.g. ``{"mlp": 0.25, "heads": 0.125}`` (targets left out keep all units). Each group keeps
      ``kept_units(units, sparsity, round_to)`` units (units * (1 - sparsity) rounded half up).
    - ``targets``: which groups: "mlp" (a transformer block's MLP intermediate channels) and
      "heads" (attention heads) for Hugging Face transformers (default both); "channels" (every
      coupled channel group, e.g. conv output channels with their BatchNorm, residual adds and
      consumers) for other models (the default there).
    - ``ignore``: fnmatch patterns of modules whose groups (as producer, consumer or
      pass-through) are left alone.
    - ``round_to``: keep channel counts of "mlp" and "channels" groups multiples of this (8, 16,
      64, ...); heads are counted in heads and not rounded.
    - ``head_unit``: "kv_group" (a key/value head with the query heads sharing it, so
      num_attention_heads / num_key_value_heads is kept) or "query_head" (grouped-query models
      only: single query heads, the same number under every key/value head).
    - ``bias_compensation``: add W[:, removed] @ mean(X[removed]) to every consumer's bias
      (creating one if missing). None: the importance's default (True for "flap"); True needs calib.
    - ``modules``: prune only the groups whose channels these modules produce and the heads of
      these attention modules or their projections (names or fnmatch patterns).
    - ``example_inputs``: one model input used to trace the model (needed for models without a
      Hugging Face config when no calib is given; transformers get a dummy input_ids).
    - ``loss_fn``: callable(model, batch) -> scalar loss for gradient importances (default: the
      model's loss with labels = input_ids); ``batch`` has ``.args`` and ``.kwargs``.
    - ``device``: where calibration runs block by block; ``blocks``: the name of a transformer's
      block list when it is not found automatically; ``progress``: show a progress bar.
    """

    method: str | Callable = "wanda"
    sparsity: float | Mapping[str, float] = 0.5
    targets: str | Sequence[str] | None = None
    ignore: str | Sequence[str] = ()
    round_to: int | None = None
    head_unit: str = "kv_group"
    bias_compensation: bool | None = None
    modules: str | Sequence[str] | None = None
    example_inputs: object = None
    loss_fn: Callable | None = None
    device: str | torch.device | None = None
    blocks: str | None = None
    progress: bool = True

    def __post_init__(self):
        resolve_importance(self.method, "StructuredConfig.method")
        if self.targets is not None:
            self.targets = _names(self.targets, "StructuredConfig.targets", f"None or some of {TARGETS}")
            if not self.targets:
                raise ValueError(f"StructuredConfig.targets: expected None or at least one of {TARGETS}, but got "
                                 "an empty sequence")
            for target in self.targets:
                if target not in TARGETS:
                    raise ValueError(f"StructuredConfig.targets: expected some of {TARGETS}, but got {target!r}")
        if isinstance(self.sparsity, Mapping):
            allowed = self.targets or TARGETS
            unknown = [key for key in self.sparsity if key not in allowed]
            if unknown:
                raise ValueError(f"StructuredConfig.sparsity: expected keys among the targets {allowed}, but got "
                                 f"{unknown[0]!r}")
            self.sparsity = {key: check_sparsity(value, f"StructuredConfig.sparsity[{key!r}]")
                             for key, value in self.sparsity.items()}
        else:
            self.sparsity = check_sparsity(self.sparsity, "StructuredConfig.sparsity")
        self.ignore = _names(self.ignore, "StructuredConfig.ignore", "a str or a sequence of str (fnmatch patterns)")
        if self.modules is not None:
            self.modules = _names(self.modules, "StructuredConfig.modules",
                                  "None, a str or a sequence of str (module names or fnmatch patterns)")
        if self.round_to is not None and (isinstance(self.round_to, bool) or not isinstance(self.round_to, int)
                                          or self.round_to < 1):
            raise ValueError(f"StructuredConfig.round_to: expected None or a positive int (e.g. 8, 16, 64), but got "
                             f"{self.round_to!r}")
        if self.head_unit not in HEAD_UNITS:
            raise ValueError(f"StructuredConfig.head_unit: expected one of {HEAD_UNITS}, but got {self.head_unit!r}")
        if self.bias_compensation not in (None, True, False):
            raise ValueError(f"StructuredConfig.bias_compensation: expected None, True or False, but got "
                             f"{self.bias_compensation!r}")
        if not isinstance(self.progress, bool):
            raise ValueError(f"StructuredConfig.progress: expected True or False, but got {self.progress!r}")
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise ValueError(f"StructuredConfig.loss_fn: expected None or a callable(model, batch) -> scalar loss, "
                             f"but got {type(self.loss_fn).__name__}")
        if self.blocks is not None and not isinstance(self.blocks, str):
            raise ValueError(f"StructuredConfig.blocks: expected None or the name of the block list (a str), but got "
                             f"{self.blocks!r}")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(f"StructuredConfig.device: expected None, a torch.device or a device string such "
                                 f"as 'cpu' or 'cuda:0', but got {self.device!r}") from None

    @property
    def importance(self) -> Callable:
        """The importance object ``method`` names."""
        return resolve_importance(self.method, "StructuredConfig.method")[1]

    @property
    def method_name(self) -> str:
        """``method``'s registered name (or the object's name), as the report gives it."""
        return resolve_importance(self.method, "StructuredConfig.method")[0]

    @property
    def needs(self) -> frozenset[str]:
        """What the importance needs collected ("statistics", "gradients")."""
        return importance_needs(self.importance)

    @property
    def compensate_bias(self) -> bool:
        """Whether consumers' biases are compensated: ``bias_compensation``, else the importance's default."""
        if self.bias_compensation is not None:
            return self.bias_compensation
        return bool(getattr(self.importance, "compensates_bias", False))

    @property
    def needs_calibration(self) -> bool:
        return bool(self.needs) or self.compensate_bias

    def sparsity_per_target(self, targets: tuple[str, ...], model_name: str) -> dict[str, float]:
        """The sparsity of each of ``targets`` (those of the model at hand)."""
        if not isinstance(self.sparsity, Mapping):
            return {t: self.sparsity for t in targets}
        unknown = [k for k in self.sparsity if k not in targets]
        if unknown:
            raise ValueError(f"StructuredConfig.sparsity: expected keys among the targets {targets} of {model_name}, "
                             f"but got {unknown[0]!r}")
        return {t: self.sparsity.get(t, 0.0) for t in targets}


# ----------------------------------------------------------------------------- the deprecated call

# prune_structured(model, ratio, importance=..., calib=..., ...): keywords and defaults of that call
_DEPRECATED_KEYWORDS = ("ratio", "importance", "targets", "round_to", "example_inputs", "loss_fn", "bias_compensation",
                        "modules", "ignore", "head_unit", "blocks", "device", "progress")
_RENAMED = {"ratio": "sparsity", "importance": "method"}
_DEPRECATED_DEFAULTS = {"method": "magnitude", "sparsity": 0.25, "progress": False}


def _is_ratio(value) -> bool:
    return isinstance(value, Mapping) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _shown(value) -> str:
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, (tuple, list, dict)) and len(repr(value)) <= 60:
        return repr(value)
    return getattr(value, "__name__", "...")


def config_from_call(config, deprecated: dict) -> StructuredConfig:
    """The :class:`StructuredConfig` of a :func:`prune_structured` call: ``config`` itself (None:
    the defaults), or one translated from the deprecated call ``prune_structured(model, ratio,
    importance=..., ...)`` (a number or dict as second argument, or any of its keywords) with a
    DeprecationWarning naming the new call."""
    unknown = [k for k in deprecated if k not in _DEPRECATED_KEYWORDS]
    if unknown:
        raise TypeError(f"prune_structured() got an unexpected keyword argument {unknown[0]!r}")
    if not deprecated and not _is_ratio(config):
        if config is None:
            return StructuredConfig()
        if not isinstance(config, StructuredConfig):
            raise ValueError(f"config: expected a prunekit.StructuredConfig (or None for the defaults), but got "
                             f"{type(config).__name__}")
        return config
    if isinstance(config, StructuredConfig):
        raise ValueError(f"config: expected either a StructuredConfig or the deprecated keywords, but got both (a "
                         f"StructuredConfig and {', '.join(sorted(deprecated))}=)")
    if config is not None and not _is_ratio(config):
        raise ValueError(f"config: expected a prunekit.StructuredConfig, but got {type(config).__name__}")
    if config is not None and "ratio" in deprecated:
        raise TypeError("prune_structured() got multiple values for argument 'ratio'")
    values = dict(_DEPRECATED_DEFAULTS)
    if config is not None:
        values["sparsity"] = config
    for key, value in deprecated.items():
        values[_RENAMED.get(key, key)] = value
    order = [f.name for f in fields(StructuredConfig) if f.init]
    arguments = ", ".join(f"{name}={_shown(values[name])}" for name in order if name in values)
    warnings.warn("prune_structured(model, ratio, importance=..., ...) is deprecated and will be removed in the next "
                  f"release; call prune_structured(model, StructuredConfig({arguments}), calib) instead",
                  DeprecationWarning, stacklevel=3)
    return StructuredConfig(**values)
