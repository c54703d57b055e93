"""SliceGPT (Ashkboos et al., ICLR 2024): rotate each boundary of a transformer's residual stream
into the principal basis of its calibration activations and delete the least principal rows and
columns of the weights.

Why it is exact before slicing: once every norm's scale (and bias) is folded into the linears that
read it, and for LayerNorm models the residual stream is kept zero-mean (embeddings and the linears
writing the stream centred), every norm is a scale-free RMS norm, which commutes with any
orthogonal Q: ``rms(x Q) = rms(x) Q``. A block's readers then take ``W Q`` and its writers
``Q^T W``; where two boundaries have different bases Q1, Q2 the residual stream is carried over by
the shortcut ``Q1^T Q2``. Slicing keeps the first k columns of each Q (largest eigenvalues of the
boundary's uncentred covariance ``sum x x^T``).

The walk is block by block (one block resident on ``device``): the inputs of the first block are
captured once, then for each block: its readers are rotated into its input basis, the attention
branch runs over the sliced inputs to give the middle signal in full width, whose PCA gives the
middle basis; the MLP branch gives the output signal and its basis, which is the next block's
input basis. Bases are computed from the already sliced model's signals, as in the paper.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ...calibrate.pipeline import CalibrationBatch, capture_block_inputs, model_device
from .families import FAMILIES, Family, SlicingError, norm_eps, resolve_family
from .modules import (ResidualRMSNorm, linear_matrix, set_embedding, set_linear, sliced_layer_class)

logger = logging.getLogger(__name__)

__all__ = ["slice_", "SliceReport", "kept_dim", "restore_sliced_structure", "restore_sliced_from_config", "CONFIG_KEY",
           "PCA_WEIGHTINGS",
           "BASES"]

CONFIG_KEY = "prunekit_slicing"
SPEC_FORMAT = 1
BASES = ("sublayer", "block")
PCA_WEIGHTINGS = ("energy", "normalized")


@dataclass
class SliceReport:
    """What :func:`slice_` did; JSON-serialisable through :meth:`to_dict` / :meth:`to_json`.

    ``dims``: the kept width of every boundary: ``embedding``, per block ``in`` / ``mid`` / ``out``,
    and ``head`` (the LM head's input). ``block_params_*``: parameters of the decoder blocks
    (shortcut rotations included); ``params_*``: of the whole model (an untied LM head counted
    once more). ``explained_variance``: per boundary, the fraction of the calibration signal's
    energy the kept directions hold."""

    family: str
    ratio: float | list
    bases: str
    round_to: int
    hidden_size: int
    dims: dict
    block_params_before: int
    block_params_after: int
    params_before: int
    params_after: int
    shortcuts: int
    head_untied: bool
    biases_created: list[str] = field(default_factory=list)
    config_updates: dict = field(default_factory=dict)
    calibration_tokens: int = 0
    explained_variance: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def block_params_reduction(self) -> float:
        return 1.0 - self.block_params_after / self.block_params_before

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["block_params_reduction"] = self.block_params_reduction
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ----------------------------------------------------------------------------- validation

def kept_dim(hidden: int, ratio: float, round_to: int) -> int:
    """Width kept of ``hidden`` at slicing ``ratio``: floor((1 - ratio) * hidden) rounded down to a
    multiple of ``round_to``; ratio 0 keeps everything."""
    if ratio == 0:
        return hidden
    kept = int((1.0 - ratio) * hidden + 1e-9)
    return kept - kept % round_to


def _check_ratio(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise SlicingError(f"{what}: expected a slicing fraction in [0, 1), but got {value!r}")
    return float(value)


def _block_ratios(ratio, blocks: int) -> list[float]:
    if isinstance(ratio, Sequence) and not isinstance(ratio, str):
        if len(ratio) != blocks:
            raise SlicingError(f"ratio: expected one fraction or one per block ({blocks}), but got {len(ratio)} "
                               "fractions")
        return [_check_ratio(value, f"ratio[{i}]") for i, value in enumerate(ratio)]
    return [_check_ratio(ratio, "ratio")] * blocks


def _block_dims(ratios: list[float], hidden: int, round_to: int) -> list[int]:
    dims = [kept_dim(hidden, r, round_to) for r in ratios]
    for index, (r, k) in enumerate(zip(ratios, dims)):
        if k < 1:
            raise SlicingError(f"ratio: expected a fraction that leaves at least one of the {hidden} hidden "
                               f"dimensions (kept widths are rounded down to a multiple of round_to={round_to}), but "
                               f"{r!r} leaves {k} in block {index}")
    return dims


# ----------------------------------------------------------------------------- undo journal

class _Journal:
    """Remembers every module and config attribute the slicer changes, so that a failure part way
    leaves the model as it was (new tensors are always new objects; old ones are never edited)."""

    def __init__(self):
        self._modules: dict[int, tuple[nn.Module, dict]] = {}
        self._config: list[tuple[object, str, bool, object]] = []

    def _remember(self, module: nn.Module) -> None:
        if id(module) not in self._modules:
            state = {"class": type(module), "dict": dict(module.__dict__)}
            for store in ("_parameters", "_buffers", "_modules"):
                state[store] = dict(getattr(module, store))
            self._modules[id(module)] = (module, state)

    def set(self, module: nn.Module, name: str, value) -> None:
        self._remember(module)
        setattr(module, name, value)

    def set_class(self, module: nn.Module, cls: type) -> None:
        self._remember(module)
        module.__class__ = cls

    def set_config(self, config, name: str, value) -> None:
        self._config.append((config, name, hasattr(config, name), getattr(config, name, None)))
        setattr(config, name, value)

    def undo(self) -> None:
        for module, state in self._modules.values():
            stores = {store: getattr(module, store) for store in ("_parameters", "_buffers", "_modules")}
            module.__dict__.clear()
            module.__dict__.update(state["dict"])
            for store, current in stores.items():
                current.clear()
                current.update(state[store])
                module.__dict__[store] = current
            module.__class__ = state["class"]
        for config, name, existed, value in reversed(self._config):
            if existed:
                setattr(config, name, value)
            else:
                delattr(config, name)
        self._modules.clear()
        self._config.clear()


# ----------------------------------------------------------------------------- the math

def _covariance(hidden: torch.Tensor, token_mask: torch.Tensor | None, normalized: bool = False) -> torch.Tensor:
    """sum x x^T over the tokens (padding left out); ``normalized``: of x / |x| (every token weighs
    the same, as the norms that feed the block's linears see it, rather than by its energy)."""
    rows = hidden.reshape(-1, hidden.shape[-1])
    if token_mask is not None:
        rows = rows[token_mask.reshape(-1).to(rows.device)]
    if normalized:
        rows = rows.float()
        rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    if rows.dtype != torch.float64:  # a float32 product per batch (fast), summed over batches in float64
        rows = rows.float()
    return (rows.t() @ rows).double()


def _principal_basis(covariance: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors of the covariance as columns, largest eigenvalue first, and the eigenvalues."""
    if not bool(torch.isfinite(covariance).all()):
        raise SlicingError(f"calib: the activations at {where} are NaN or Inf")
    values, vectors = torch.linalg.eigh(covariance)
    order = torch.argsort(values, descending=True)
    return vectors[:, order], values[order].clamp_min(0)


def _explained(values: torch.Tensor, kept: int) -> float:
    total = float(values.sum())
    return float(values[:kept].sum()) / total if total > 0 else 1.0


def _shortcut_linear(rotation: torch.Tensor, dtype: torch.dtype, device) -> nn.Linear:
    """A bias-free Linear computing ``x @ rotation`` (rotation: (in, out))."""
    linear = nn.Linear(rotation.shape[0], rotation.shape[1], bias=False, device="meta")
    linear.weight = nn.Parameter(rotation.t().to(device=device, dtype=dtype).contiguous())
    return linear


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _folded(linear: nn.Module, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The linear's (out, in) matrix and bias, in float64, with the norm's scale and bias folded in:
    W (x * g + b) + c = (W diag g) x + (W b + c)."""
    matrix = linear_matrix(linear).double()
    bias = None if linear.bias is None else linear.bias.double()
    scale = getattr(norm, "weight", None)
    shift = getattr(norm, "bias", None)
    if shift is not None:
        extra = matrix @ shift.double()
        bias = extra if bias is None else bias + extra
    if scale is not None:
        matrix = matrix * scale.double()[None, :]
    return matrix, bias


def _centred_rows(matrix: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A writer of the residual stream made to write zero-mean vectors (LayerNorm's mean subtraction
    folded away): every column of the (out, in) matrix and the bias minus their mean over outputs."""
    matrix = matrix - matrix.mean(dim=0, keepdim=True)
    if bias is not None:
        bias = bias - bias.mean()
    return matrix, bias


# ----------------------------------------------------------------------------- slicing

@dataclass
class _Plan:
    family: Family
    hidden: int
    ratios: list[float]
    dims: list[int]  # the sliced width of each block's input (and middle)
    bases: str
    round_to: int
    keep_embeddings: bool
    normalized: bool = False

    @property
    def embedding(self) -> int:
        return self.hidden if self.keep_embeddings else self.dims[0]

    @property
    def head(self) -> int:
        return self.hidden if self.keep_embeddings else self.dims[-1]

    def layer(self, index: int) -> dict:
        """The kept widths of block ``index``'s input, middle and output boundaries."""
        last = index == len(self.dims) - 1
        width_in = self.embedding if index == 0 else self.dims[index]
        width_mid = self.hidden if (index == 0 and self.keep_embeddings and self.bases == "block") else self.dims[index]
        return {"in": width_in, "mid": width_mid, "out": self.head if last else self.dims[index + 1]}


def _plan(model: nn.Module, ratio, bases: str, round_to, keep_embeddings: bool, pca: str) -> _Plan:
    if not isinstance(model, nn.Module):
        raise TypeError(f"slice_: argument 'model' must be a torch.nn.Module, but got {type(model).__name__}")
    if bases not in BASES:
        raise SlicingError(f"bases: expected one of {BASES}, but got {bases!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise SlicingError(f"round_to: expected a positive int, but got {round_to!r}")
    if pca not in PCA_WEIGHTINGS:
        raise SlicingError(f"pca: expected one of {PCA_WEIGHTINGS}, but got {pca!r}")
    if not isinstance(keep_embeddings, bool):
        raise SlicingError(f"keep_embeddings: expected a bool, but got {keep_embeddings!r}")
    family = resolve_family(model)
    if keep_embeddings and family.layer_norm:
        raise SlicingError(f"keep_embeddings: expected a model with RMS norms, but {family.name} models normalise with "
                           "LayerNorm, whose mean subtraction is folded by centring the embeddings (so they change)")
    hidden = int(model.config.hidden_size)
    blocks = model.get_submodule(family.blocks)
    if len(blocks) == 0:
        raise SlicingError("model: expected at least one decoder block, but the block list is empty")
    ratios = _block_ratios(ratio, len(blocks))
    dims = _block_dims(ratios, hidden, round_to)
    if family.name == "gpt2" and dims[0] != dims[-1] and not keep_embeddings:
        raise SlicingError(f"ratio: GPT2Model reshapes its output to the embedding's width, so the first and last "
                           f"blocks must keep the same width, but got {dims[0]} and {dims[-1]} from {ratio!r}")
    return _Plan(family, hidden, ratios, dims, bases, round_to, keep_embeddings, pca == "normalized")


def slice_(model: nn.Module, ratio, calib, *, bases: str = "sublayer", round_to: int = 8,
           keep_embeddings: bool = False, pca: str = "energy", device=None, progress: bool = True) -> SliceReport:
    """Slices ``model`` in place with SliceGPT and returns a :class:`SliceReport`.

    - ``model``: a Hugging Face causal LM of a Llama (Llama, Mistral, Qwen2, SmolLM2), OPT
      (pre-norm) or GPT-2 layout, dense.
    - ``ratio``: the fraction of the hidden width removed at every boundary, in [0, 1); or one
      fraction per block (block i's input and middle boundaries; its output is block i+1's input,
      the last block's output and the LM head use the last fraction). Kept widths are rounded down
      to a multiple of ``round_to``.
    - ``calib``: a list of model inputs (dicts with input_ids and attention_mask, tensors, tuples);
      padding tokens (attention_mask 0) are left out of the PCA.
    - ``bases``: "sublayer" (the paper: a basis at every boundary, two shortcut rotations per
      block) or "block" (the attention's input and output share the block's input basis: one
      shortcut per block, fewer parameters, the middle boundary sliced in the input's basis).
    - ``keep_embeddings``: leave the embeddings, the final norm and the LM head as they are (a tied
      head stays tied: no second vocabulary-sized matrix); the first block then reads and the last
      block writes the full width, in the original basis (RMS-norm models only).
    - ``pca``: "energy" (the paper: the covariance sums x x^T, so tokens with large activations
      dominate the basis) or "normalized" (of x / |x|: every token weighs the same, as the norms
      feeding the linears see them).
    - ``device``: where each block runs (default: where the model is); ``progress``: a bar.

    Otherwise a tied LM head is untied (it reads the last basis, the embedding writes the first). The
    Hugging Face config records the structure (``config.prunekit_slicing``) so that
    :func:`prunekit.load` rebuilds the sliced model from a :func:`prunekit.save` checkpoint.
    Every check runs before the model changes, and a failure part way restores the model.
    """
    started = time.perf_counter()
    plan = _plan(model, ratio, bases, round_to, keep_embeddings, pca)
    if not isinstance(calib, (list, tuple)) or len(calib) == 0:
        raise SlicingError(f"calib: expected a non-empty list of model inputs, but got "
                           f"{type(calib).__name__ if not isinstance(calib, (list, tuple)) else 'an empty list'}")
    batches = [CalibrationBatch.from_item(item, i) for i, item in enumerate(calib)]
    home = model_device(model)
    device = torch.device(device) if device is not None else home
    blocks = model.get_submodule(plan.family.blocks)
    block_params_before, params_before = _params(blocks), _params(model)
    head_tied = model.get_submodule(plan.family.head).weight is \
        model.get_submodule(plan.family.embeddings[0]).weight
    untie = head_tied and not plan.keep_embeddings
    inputs = capture_block_inputs(model, plan.family.blocks, blocks, batches, device)  # the model is unchanged
    journal = _Journal()
    try:
        with torch.no_grad():
            explained, biases_created, shortcuts = _slice(model, plan, inputs, journal, device, home, progress)
            spec = _spec(model, plan, biases_created)
            config_updates = {CONFIG_KEY: [None, "(the sliced structure)"]}
            journal.set_config(model.config, CONFIG_KEY, spec)
            if untie and getattr(model.config, "tie_word_embeddings", False):
                journal.set_config(model.config, "tie_word_embeddings", False)
                config_updates["tie_word_embeddings"] = [True, False]
    except BaseException:
        journal.undo()
        if device != home:  # the restored weights of the block that failed were moved with it
            blocks.to(home)
        raise
    tokens = sum(int(item.token_mask.sum()) if item.token_mask is not None else item.hidden.shape[:-1].numel()
                 for item in inputs)
    layer_dims = [plan.layer(i) for i in range(len(plan.dims))]
    report = SliceReport(
        family=plan.family.name, ratio=ratio if isinstance(ratio, (int, float)) else list(plan.ratios),
        bases=plan.bases, round_to=plan.round_to, hidden_size=plan.hidden,
        dims={"embedding": plan.embedding, "blocks": layer_dims, "head": plan.head},
        block_params_before=block_params_before, block_params_after=_params(blocks), params_before=params_before,
        params_after=_params(model), shortcuts=shortcuts, head_untied=untie, biases_created=biases_created,
        config_updates=config_updates, calibration_tokens=tokens, explained_variance=explained,
        seconds=time.perf_counter() - started)
    logger.info("sliced %s: %d -> %d block parameters (%.1f%% fewer)", type(model).__name__, block_params_before,
                report.block_params_after, 100 * report.block_params_reduction)
    return report


def _convert_layer(layer: nn.Module, family: Family, hidden: int, set_attr, set_class) -> None:
    """The block's class gains the sliced forward; its norms become scale-free RMS norms."""
    for name in (family.attn_norm, family.mlp_norm):
        norm = getattr(layer, name)
        if not isinstance(norm, ResidualRMSNorm):
            set_attr(layer, name, ResidualRMSNorm(hidden, norm_eps(norm)))
    set_class(layer, sliced_layer_class(type(layer)))
    set_attr(layer, "slicing_family", family.name)
    for name in ("attn_shortcut", "mlp_shortcut"):
        if name not in layer._modules:
            layer._modules[name] = None


def _slice(model: nn.Module, plan: _Plan, inputs: list, journal: _Journal, device, home,
           progress: bool) -> tuple[dict, list[str], int]:
    family, hidden = plan.family, plan.hidden
    blocks = model.get_submodule(family.blocks)
    embeddings = [model.get_submodule(name) for name in family.embeddings]
    dtype = embeddings[0].weight.dtype
    explained: dict[str, float] = {}
    biases_created: list[str] = []
    shortcuts = 0

    def set_linear_journaled(module, matrix, bias, name):
        if bias is not None and module.bias is None:
            biases_created.append(name)
        set_linear(module, matrix.to(dtype), None if bias is None else bias.to(dtype), journal.set)

    if family.layer_norm:  # the folded model's stream is zero-mean: so are the captured inputs
        for item in inputs:
            item.hidden = item.hidden - item.hidden.mean(dim=-1, keepdim=True)
    if plan.keep_embeddings:  # the first boundary stays in the original basis, full width
        basis, kept = torch.eye(hidden, dtype=torch.float64, device=device), hidden
        embeddings = []
    else:
        covariance = sum(_covariance(item.hidden, item.token_mask, plan.normalized) for item in inputs)
        basis, values = _principal_basis(covariance, f"the input of {family.blocks}.0")
        kept = plan.embedding
        explained["embedding"] = _explained(values, kept)
    for name, embedding in zip(family.embeddings, embeddings):
        weight = embedding.weight.double()
        if family.layer_norm:
            weight = weight - weight.mean(dim=1, keepdim=True)
        set_embedding(embedding, (weight @ basis[:, :kept].to(weight.device)).to(dtype), journal.set)
    if not plan.keep_embeddings:
        for item in inputs:
            item.hidden = item.hidden @ basis[:, :kept].to(item.hidden)

    bar = tqdm(range(len(blocks)), desc="prunekit slice: blocks", disable=None if progress else True)
    for index in bar:
        layer = blocks[index]
        prefix = f"{family.blocks}.{index}"
        layer.to(device)
        try:
            basis, kept, shortcuts_added = _slice_block(layer, index, prefix, plan, inputs, basis, kept, journal,
                                                        set_linear_journaled, explained, device)
            shortcuts += shortcuts_added
        finally:
            layer.to(home)
    bar.close()
    if plan.keep_embeddings:  # the last boundary is in the original basis: norm and head stay
        return explained, biases_created, shortcuts

    final_norm = model.get_submodule(family.final_norm)
    head = model.get_submodule(family.head)
    matrix, bias = _folded(head, final_norm)
    head_basis = basis[:, :kept].to(matrix.device)
    set_linear_journaled(head, matrix @ head_basis, bias, family.head)
    parent, _, child = family.final_norm.rpartition(".")
    journal.set(model.get_submodule(parent), child, ResidualRMSNorm(hidden, norm_eps(final_norm)))
    return explained, biases_created, shortcuts


def _slice_block(layer: nn.Module, index: int, prefix: str, plan: _Plan, inputs: list, basis: torch.Tensor,
                 kept: int, journal: _Journal, set_linear_journaled, explained: dict,
                 device) -> tuple[torch.Tensor, int, int]:
    family = plan.family
    dtype = next(layer.parameters()).dtype
    attn_norm, mlp_norm = getattr(layer, family.attn_norm), getattr(layer, family.mlp_norm)
    # folded (float64) matrices of every linear of the block, before anything in the block changes
    attn_in = {name: _folded(layer.get_submodule(name), attn_norm) for name in family.attn_inputs}
    mlp_in = {name: _folded(layer.get_submodule(name), mlp_norm) for name in family.mlp_inputs}
    writers = {}
    for name in (family.attn_output, family.mlp_output):
        module = layer.get_submodule(name)
        matrix = linear_matrix(module).double()
        bias = None if module.bias is None else module.bias.double()
        writers[name] = _centred_rows(matrix, bias) if family.layer_norm else (matrix, bias)
    _convert_layer(layer, family, plan.hidden, journal.set, journal.set_class)

    in_basis = basis[:, :kept].to(device)
    for name, (matrix, bias) in attn_in.items():
        set_linear_journaled(layer.get_submodule(name), matrix @ in_basis, bias, f"{prefix}.{name}")
    shortcuts = 0
    attn_output = layer.get_submodule(family.attn_output)
    matrix, bias = writers[family.attn_output]
    if plan.bases == "sublayer":
        # the middle signal in full width: residual rotated back, attention output not yet rotated
        set_linear_journaled(attn_output, matrix, bias, f"{prefix}.{family.attn_output}")
        middles, covariance = [], 0
        for item in inputs:
            middle = item.hidden @ in_basis.t().to(item.hidden) + layer.attention_branch(item.hidden, item.args,
                                                                                         item.kwargs)
            covariance = covariance + _covariance(middle, item.token_mask, plan.normalized)
            middles.append(middle)
        mid_basis_full, values = _principal_basis(covariance, f"the middle of {prefix}")
        mid_kept = plan.layer(index)["mid"]
        explained[f"{prefix}.mid"] = _explained(values, mid_kept)
        mid_basis = mid_basis_full[:, :mid_kept].to(device)
        set_linear_journaled(attn_output, mid_basis.t() @ matrix, None if bias is None else bias @ mid_basis,
                             f"{prefix}.{family.attn_output}")
        journal.set(layer, "attn_shortcut", _shortcut_linear(in_basis.t() @ mid_basis, dtype, device))
        shortcuts += 1
        for item, middle in zip(inputs, middles):
            item.hidden = middle @ mid_basis.to(middle)
        del middles
    else:  # the attention writes in the block's input basis: no shortcut
        mid_basis = in_basis
        set_linear_journaled(attn_output, in_basis.t() @ matrix, None if bias is None else bias @ in_basis,
                             f"{prefix}.{family.attn_output}")
        for item in inputs:
            item.hidden = item.hidden + layer.attention_branch(item.hidden, item.args, item.kwargs)

    for name, (matrix, bias) in mlp_in.items():
        set_linear_journaled(layer.get_submodule(name), matrix @ mid_basis, bias, f"{prefix}.{name}")
    mlp_output = layer.get_submodule(family.mlp_output)
    matrix, bias = writers[family.mlp_output]
    set_linear_journaled(mlp_output, matrix, bias, f"{prefix}.{family.mlp_output}")
    outputs, covariance = [], 0
    for item in inputs:
        output = item.hidden @ mid_basis.t().to(item.hidden) + layer.mlp_branch(item.hidden)
        covariance = covariance + _covariance(output, item.token_mask, plan.normalized)
        outputs.append(output)
    out_kept = plan.layer(index)["out"]
    if plan.keep_embeddings and index == len(plan.dims) - 1:  # the LM head reads the original basis
        out_basis_full = torch.eye(plan.hidden, dtype=torch.float64, device=device)
    else:
        out_basis_full, values = _principal_basis(covariance, f"the output of {prefix}")
        explained[f"{prefix}.out"] = _explained(values, out_kept)
    out_basis = out_basis_full[:, :out_kept].to(device)
    set_linear_journaled(mlp_output, out_basis.t() @ matrix, None if bias is None else bias @ out_basis,
                         f"{prefix}.{family.mlp_output}")
    journal.set(layer, "mlp_shortcut", _shortcut_linear(mid_basis.t() @ out_basis, dtype, device))
    shortcuts += 1
    for item, output in zip(inputs, outputs):
        item.hidden = output @ out_basis.to(output)
    return out_basis_full, out_kept, shortcuts


# ----------------------------------------------------------------------------- structure spec and rebuild

def _spec(model: nn.Module, plan: _Plan, biases_created: list[str]) -> dict:
    family = plan.family
    blocks = model.get_submodule(family.blocks)
    layers = []
    for index, layer in enumerate(blocks):
        layers.append({
            **plan.layer(index), "attn_shortcut": layer.attn_shortcut is not None,
            "mlp_shortcut": layer.mlp_shortcut is not None,
            "eps": [getattr(layer, family.attn_norm).eps, getattr(layer, family.mlp_norm).eps]})
    return {"format": SPEC_FORMAT, "method": "slicegpt", "family": family.name, "hidden_size": plan.hidden,
            "ratio": plan.ratios, "bases": plan.bases, "round_to": plan.round_to, "embedding": plan.embedding,
            "layers": layers, "head": plan.head, "keep_embeddings": plan.keep_embeddings,
            "pca": "normalized" if plan.normalized else "energy",
            "final_eps": norm_eps(model.get_submodule(family.final_norm)), "biases_created": list(biases_created)}


def restore_sliced_structure(model: nn.Module, spec: dict) -> None:
    """Gives a dense model built from a sliced model's config the sliced model's modules and shapes
    (uninitialised weights), so that a checkpoint of the sliced model loads into it. Used by
    :func:`prunekit.load` for configs holding ``prunekit_slicing``."""
    try:
        family = FAMILIES[spec["family"]]
        hidden, layers = int(spec["hidden_size"]), spec["layers"]
        embedding_dim, head_dim = int(spec["embedding"]), int(spec["head"])
        created = set(spec.get("biases_created", ()))
        final_eps = float(spec["final_eps"])
        if spec.get("format") != SPEC_FORMAT:
            raise ValueError(f"format {spec.get('format')!r}, expected {SPEC_FORMAT}")
    except (KeyError, TypeError, ValueError) as error:
        raise SlicingError(f"config.{CONFIG_KEY}: expected a SliceGPT structure spec written by prunekit, but "
                           f"{error!r}") from None
    blocks = model.get_submodule(family.blocks)
    if len(blocks) != len(layers):
        raise SlicingError(f"config.{CONFIG_KEY}: expected one entry per block ({len(blocks)}), but got {len(layers)}")

    def empty_like_linear(module, out_features, in_features, name):
        weight = linear_matrix(module)
        bias = module.bias
        if bias is None and name in created:
            bias = weight.new_empty(out_features)
        new_bias = None if bias is None else bias.new_empty(out_features)
        set_linear(module, weight.new_empty(out_features, in_features), new_bias)

    keep_embeddings = bool(spec.get("keep_embeddings", False))
    for name in () if keep_embeddings else family.embeddings:
        embedding = model.get_submodule(name)
        set_embedding(embedding, embedding.weight.new_empty(embedding.weight.shape[0], embedding_dim))
    for index, (layer, dims) in enumerate(zip(blocks, layers)):
        prefix = f"{family.blocks}.{index}"
        eps = dims["eps"]
        _convert_layer(layer, family, hidden, setattr, lambda module, cls: setattr(module, "__class__", cls))
        setattr(layer, family.attn_norm, ResidualRMSNorm(hidden, eps[0]))
        setattr(layer, family.mlp_norm, ResidualRMSNorm(hidden, eps[1]))
        for name in family.attn_inputs:
            module = layer.get_submodule(name)
            empty_like_linear(module, linear_matrix(module).shape[0], dims["in"], f"{prefix}.{name}")
        module = layer.get_submodule(family.attn_output)
        empty_like_linear(module, dims["mid"], linear_matrix(module).shape[1], f"{prefix}.{family.attn_output}")
        for name in family.mlp_inputs:
            module = layer.get_submodule(name)
            empty_like_linear(module, linear_matrix(module).shape[0], dims["mid"], f"{prefix}.{name}")
        module = layer.get_submodule(family.mlp_output)
        empty_like_linear(module, dims["out"], linear_matrix(module).shape[1], f"{prefix}.{family.mlp_output}")
        weight = linear_matrix(module)
        for name, size_in, size_out in (("attn_shortcut", dims["in"], dims["mid"]),
                                        ("mlp_shortcut", dims["mid"], dims["out"])):
            if dims[name]:
                setattr(layer, name, _shortcut_linear(weight.new_empty(size_in, size_out), weight.dtype,
                                                      weight.device))
    head = model.get_submodule(family.head)
    if keep_embeddings:
        if getattr(model.config, "tie_word_embeddings", False):  # so that load ties them again after loading
            head.weight = model.get_submodule(family.embeddings[0]).weight
        return
    empty_like_linear(head, head.weight.shape[0], head_dim, family.head)
    parent, _, child = family.final_norm.rpartition(".")
    setattr(model.get_submodule(parent), child, ResidualRMSNorm(hidden, final_eps))


def restore_sliced_from_config(model: nn.Module) -> nn.Module:
    """``model`` with the sliced structure its config records (``config.prunekit_slicing``), or
    unchanged when it records none: what :func:`prunekit.load` calls on a rebuilt model."""
    spec = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    if spec:
        restore_sliced_structure(model, spec)
    return model
