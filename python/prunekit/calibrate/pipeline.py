"""Block-by-block calibration: run a model one block at a time over calibration batches and
collect, for every prunable layer of the block, the statistics of its inputs.

Transformers are a list of identical blocks (decoder layers of Llama, Mistral, Qwen2, OPT, GPT-2;
encoder layers of BERT). The inputs of the first block are captured once, by a forward pre-hook
that records its arguments (hidden states, attention mask, position embeddings, ...) and raises
to stop the forward there. Then, block after block: a statistics pass runs the block over every
captured input with hooks on its layers; the caller prunes the layers; an output pass produces
the next block's inputs, from the pruned block (sequential mode) or from the dense block (one-shot
mode: its outputs are computed during the statistics pass, before pruning). Outputs replace the
inputs as they are produced, so at most one block's activations are held twice. Only the current
block is moved to the compute device. Layers outside the blocks (an LM head, a pooler), and every
layer of a model without a block list (any nn.Module of Linear/Conv2d layers), are calibrated
afterwards by forwards of the whole model with hooks on those layers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._finite import all_finite
from .._measure import TEACHER_TARGET_KEYS
from ..distributed import SingleProcessStrategy
from .hessian import HessianAccumulator, HessianDiagonalAccumulator
from .linear_backend import linears_through, resolve_linear_backend
from .timing import StageTimer, stage

logger = logging.getLogger(__name__)


class CalibrationError(ValueError):
    """A problem with the calibration data found by prunekit (as opposed to an error raised by the
    model's own forward, which is wrapped into a ValueError saying the data does not fit it)."""


# ----------------------------------------------------------------------------- prunable layers

def _is_hf_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a Linear with its weight stored transposed, (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def is_prunable(module: nn.Module) -> bool:
    """nn.Linear, nn.Conv2d with groups == 1, and transformers' Conv1D are prunable."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        return module.groups == 1
    return _is_hf_conv1d(module)


class PrunableLayer:
    """A prunable module seen as a matrix (out_features, in_features) acting on input rows."""

    def __init__(self, name: str, module: nn.Module):
        if not is_prunable(module):
            raise ValueError(f"PrunableLayer: {name} ({type(module).__name__}) is not a Linear, Conv2d "
                             "(groups=1) or Conv1D")
        self.name = name
        self.module = module
        self.kind = "conv1d" if _is_hf_conv1d(module) else ("conv2d" if isinstance(module, nn.Conv2d) else "linear")

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def in_features(self) -> int:
        return self.matrix().shape[1]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.module.weight.shape)

    def matrix(self) -> torch.Tensor:
        """The weight as (out_features, in_features); a view of the parameter's data."""
        weight = self.module.weight.detach()
        if self.kind == "conv1d":
            return weight.t()
        return weight.reshape(weight.shape[0], -1)

    @torch.no_grad()
    def set_matrix(self, matrix: torch.Tensor, *, adopt: bool = False) -> None:
        """Writes a (out_features, in_features) matrix back into the weight (the same Parameter).

        ``adopt``: the weight takes over ``matrix``'s memory (the caller keeps no other use of it)
        where the dtype, device and layout allow, instead of copying into its own. The first write
        into memory the weight was loaded into can cost a page fault per page (a memory-mapped
        checkpoint's pages are copied on write), more than the copy itself."""
        weight = self.module.weight
        value = matrix.t() if self.kind == "conv1d" else matrix.reshape(weight.shape)
        if adopt and _can_adopt(weight, value):
            weight.data = value
            torch.autograd.graph.increment_version(weight)  # as copy_ would: saved graphs see the change
        else:
            weight.copy_(value.to(weight.dtype))

    def reads_rows_like(self, other: "PrunableLayer") -> bool:
        """Whether ``other`` turns one input tensor into the same rows as this layer (both Linear or
        Conv1D of one width), so that layers reading one tensor can share its statistics."""
        return self.kind in ("linear", "conv1d") and other.kind in ("linear", "conv1d") and \
            self.in_features == other.in_features

    def input_rows(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The layer input as (rows, in_features): tokens, or unfolded patches for Conv2d.
        ``token_mask`` (batch, seq) drops padding tokens when it matches the input's leading dims."""
        if self.kind == "conv2d":
            conv = self.module
            if x.dim() == 3:
                x = x.unsqueeze(0)
            patches = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
            return patches.transpose(1, 2).reshape(-1, patches.shape[1])
        if token_mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(token_mask.shape):
            x = x[token_mask]
        return x.reshape(-1, x.shape[-1])


def _owns_storage(tensor: torch.Tensor) -> bool:
    return (tensor.is_contiguous() and tensor.storage_offset() == 0
            and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size())


def _can_adopt(weight: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether ``value`` can become ``weight``'s data as it is: same dtype, device and shape, both
    contiguous, plain tensors outside inference mode, and each alone in its storage (a weight
    inside a larger buffer, such as a flat parameter, is written in place, where its buffer sees
    it; no larger buffer is kept alive)."""
    return (value.dtype == weight.dtype and value.device == weight.device and value.shape == weight.shape
            and not value.is_inference() and not weight.is_inference() and type(value) is torch.Tensor
            and _owns_storage(weight) and _owns_storage(value))


def tensor_version(x: torch.Tensor) -> int | None:
    """``x._version`` (its in-place modification count), or None for an inference tensor, which
    tracks none: two reads of one tensor at one version saw the same values."""
    try:
        return x._version
    except RuntimeError:
        return None


def find_prunable_layers(model: nn.Module) -> dict[str, PrunableLayer]:
    """All prunable layers of ``model`` by qualified name, in module order."""
    return {name: PrunableLayer(name, module) for name, module in model.named_modules() if name and is_prunable(module)}


# ----------------------------------------------------------------------------- statistics

INPUT_STATISTICS = frozenset({"hessian", "input_norms", "input_mean", "input_var"})
"""What :class:`LayerInputStats` can gather (``needs``); by default all of it."""


class LayerInputStats:
    """Running statistics of a layer's inputs, only those in ``needs`` (default: all of
    :data:`INPUT_STATISTICS`): the Hessian H = 2/n sum x x^T (through
    :class:`HessianAccumulator`), or only its diagonal (:class:`HessianDiagonalAccumulator`,
    equal to the full Hessian's up to rounding) when the norms or the variance are needed without H, and
    the feature sums for the mean and variance. The L2 norm, mean and variance of every input
    feature follow from these. Reading a statistic that was not gathered raises ValueError.
    ``linear_backend``: the Hessian products' library ("aten" or "onednn", resolved)."""

    def __init__(self, layer: PrunableLayer, device=None, needs: Iterable[str] | None = None,
                 linear_backend: str = "aten"):
        self.layer = layer
        self.needs = INPUT_STATISTICS if needs is None else frozenset(needs)
        unknown = sorted(self.needs - INPUT_STATISTICS)
        if unknown:
            raise ValueError(f"LayerInputStats: needs: expected names among {sorted(INPUT_STATISTICS)}, but got "
                             f"{unknown}")
        features = layer.in_features
        self.device = torch.device(device) if device is not None else layer.weight.device
        self.accumulator = (HessianAccumulator(features, device=self.device, gemm=linear_backend)
                            if "hessian" in self.needs else None)
        self.diagonal_accumulator = None
        if self.accumulator is None and self.needs & {"input_norms", "input_var"}:
            self.diagonal_accumulator = HessianDiagonalAccumulator(features, device=self.device)
        self.feature_sum = (torch.zeros(features, dtype=torch.float64, device=self.device)
                            if self.needs & {"input_mean", "input_var"} else None)
        self._rows_seen = 0
        self.readers = 1  # the layers reading these statistics (see _SharedInputs)
        self._factor: list = []  # [percdamp, factor, reads left] while layers sharing it still need it

    def inverse_hessian_factor(self, percdamp: float, name: str | None = None) -> torch.Tensor:
        """SparseGPT's damped inverse-Hessian factor (:func:`prunekit.solvers.inverse_hessian_factor`)
        of these statistics, computed once for the ``readers`` layers that share them and dropped
        after the last one read it. Dead-input columns are not zeroed here (the solver does)."""
        from ..solvers.sparsegpt import inverse_hessian_factor

        if self._factor and self._factor[0] == percdamp:
            factor = self._factor[1]
        else:
            factor = inverse_hessian_factor(self.hessian, percdamp=percdamp, name=name or self.layer.name)
            self._factor = [percdamp, factor, self.readers]
        self._factor[2] -= 1
        if self._factor[2] <= 0:
            self._factor = []
        return factor

    @torch.no_grad()
    def add(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> None:
        rows = self.layer.input_rows(x.detach(), token_mask)
        if rows.shape[0] == 0:
            return
        rows = rows.to(self.device)
        if self.feature_sum is not None:
            # A sum in float64 of finite inputs is finite: one cheap pass doubles as the finiteness
            # check (the exact check runs only to confirm a non-finite sum).
            feature_sum = rows.sum(dim=0, dtype=torch.float64)
            if not bool(torch.isfinite(feature_sum).all()):
                self._check_finite(rows)
        elif self.accumulator is None and self.diagonal_accumulator is None:
            self._check_finite(rows)
        accumulator = self.accumulator if self.accumulator is not None else self.diagonal_accumulator
        if accumulator is not None:
            try:
                accumulator.add(rows)
            except ValueError:  # hessian_accumulate_ refuses non-finite inputs: name the layer
                self._check_finite(rows)
                raise
        if self.feature_sum is not None:
            self.feature_sum += feature_sum
        self._rows_seen += rows.shape[0]

    def _check_finite(self, rows: torch.Tensor) -> None:
        if not all_finite(rows):
            raise CalibrationError(f"calibration: the input of layer {self.layer.name} holds NaN or Inf "
                                   "activations (check the calibration data and the model's numerics)")

    @torch.no_grad()
    def combine(self, sum_: Callable[[torch.Tensor, str], torch.Tensor]) -> None:
        """Combines the statistics of several processes in place, as sums with their token counts,
        given ``sum_(tensor, what)`` that sums a tensor over them (see
        :meth:`HessianAccumulator.combine`): afterwards every process holds the statistics of the
        union of all their inputs."""
        what = f"the statistics reduction of layer {self.layer.name}"
        if self.accumulator is not None:
            self.accumulator.combine(sum_, what)
        if self.diagonal_accumulator is not None:
            self.diagonal_accumulator.combine(sum_, what)
        if self.feature_sum is not None:
            sum_(self.feature_sum, what)
        if self.accumulator is None and self.diagonal_accumulator is None:
            count = torch.tensor([self._rows_seen], dtype=torch.int64)
            sum_(count, f"{what} (sample counts)")
            self._rows_seen = int(count[0])

    def _gathered(self, what: str):
        raise ValueError(f"LayerInputStats ({self.layer.name}): {what} was not gathered (gathered: "
                         f"{sorted(self.needs)}); pass needs including {what!r}")

    @property
    def n_samples(self) -> int:
        if self.accumulator is not None:
            return self.accumulator.n_samples
        if self.diagonal_accumulator is not None:
            return self.diagonal_accumulator.n_samples
        return self._rows_seen

    @property
    def hessian(self) -> torch.Tensor:
        if self.accumulator is None:
            self._gathered("hessian")
        return self.accumulator.hessian

    @property
    def hessian_diagonal(self) -> torch.Tensor:
        """(in,) the diagonal of H = 2/n X^T X (from H when it was gathered, else from its own sums)."""
        if self.accumulator is not None:
            return torch.diagonal(self.accumulator.hessian)
        if self.diagonal_accumulator is None:
            self._gathered("input_norms")
        return self.diagonal_accumulator.diagonal

    @property
    def input_norms(self) -> torch.Tensor:
        """||X_j||_2 over all calibration rows."""
        return (self.hessian_diagonal.clamp_min(0) * (self.n_samples / 2)).sqrt().to(torch.float32)

    @property
    def input_mean(self) -> torch.Tensor:
        if self.feature_sum is None:
            self._gathered("input_mean")
        return (self.feature_sum / max(self.n_samples, 1)).to(torch.float32)

    @property
    def input_var(self) -> torch.Tensor:
        if self.feature_sum is None:
            self._gathered("input_var")
        second_moment = self.hessian_diagonal.to(torch.float64) / 2
        return (second_moment - (self.feature_sum / max(self.n_samples, 1)) ** 2).clamp_min(0).to(torch.float32)


class _SharedInputs:
    """Feeds every layer's input into its statistics during a block's statistics pass, once per
    distinct input: layers that read the same input tensor (q/k/v of an attention block, gate/up
    of an MLP) share one :class:`LayerInputStats`.

    Sharing is decided on the first pass: a layer whose input is the very tensor object (same
    version: not modified in between) that an earlier layer of the same pass read, with the same
    row layout (Linear or Conv1D, same width), joins that layer. Every later pass checks that this
    still holds, and that every layer ran exactly once; if not, ``consistent`` turns False and the
    caller gathers the block's statistics again layer by layer. Statistics gathered once for a
    group are bit-identical to each member's own: the same rows go through the same operations.
    """

    def __init__(self, layers: Mapping[str, PrunableLayer], make_stats: Callable[[PrunableLayer], LayerInputStats],
                 token_mask_ref: list, share: bool, timer=None, stop_after_last: bool = False):
        self.layers = dict(layers)
        # Once the first pass showed every layer running once, a later pass may stop the block's
        # forward at the last layer's input: nothing after it feeds a statistic.
        self.stop_after_last = stop_after_last
        self.last: str | None = None
        self._order: list[str] = []
        self.make_stats = make_stats
        self.token_mask_ref = token_mask_ref
        self.share = share
        self.timer = timer
        self.leader: dict[str, str] = {}  # member -> the layer whose statistics it reads
        self.own: dict[str, LayerInputStats] = {}
        self.consistent = True
        self._first_pass = True
        self._pass_inputs: dict[str, tuple[torch.Tensor, int]] = {}
        self._calls: dict[str, int] = {}

    @property
    def stats(self) -> dict[str, LayerInputStats]:
        """Every layer's statistics by name (members map to their leader's object; a layer that
        never ran has empty statistics, as without sharing)."""
        for name, layer in self.layers.items():
            if name not in self.own and name not in self.leader:
                self.own[name] = self.make_stats(layer)
        for group in self.groups():
            self.own[group[0]].readers = len(group)
        return {name: self.own[self.leader.get(name, name)] for name in self.layers}

    def distinct(self) -> list[LayerInputStats]:
        """Each statistics object once, in layer order (processes reduce them in the same order)."""
        return [self.own[name] for name in self.layers if name in self.own]

    def groups(self) -> list[list[str]]:
        """The layers sharing statistics, leader first (groups of one included)."""
        members: dict[str, list[str]] = {name: [name] for name in self.own}
        for member, leader in self.leader.items():
            members[leader].append(member)
        return list(members.values())

    def on_input(self, name: str, x: torch.Tensor) -> None:
        self._calls[name] = self._calls.get(name, 0) + 1
        if self._first_pass:
            self._order.append(name)
        version = tensor_version(x)  # None: never shared
        if self.share and version is not None and self._first_pass and name not in self.own and \
                name not in self.leader:
            for other, (seen, seen_version) in self._pass_inputs.items():
                if seen is x and seen_version == version and other in self.own and \
                        self.layers[other].reads_rows_like(self.layers[name]):
                    self.leader[name] = other
                    break
        leader = self.leader.get(name)
        if leader is not None:
            seen = self._pass_inputs.get(leader)
            if seen is None or seen[0] is not x or version is None or seen[1] != version:
                self.consistent = False
            return
        if name not in self.own:
            self.own[name] = self.make_stats(self.layers[name])
        self.own[name].add(x, self.token_mask_ref[0])
        self._pass_inputs[name] = (x, version)

    def end_pass(self) -> None:
        if self.leader and any(self._calls.get(name, 0) != 1 for name in self.layers if name in self.leader
                               or name in self.leader.values()):
            self.consistent = False
        if self._first_pass and self.stop_after_last and self._order and sorted(self._order) == sorted(self.layers):
            self.last = self._order[-1]
        self._first_pass = False
        self._pass_inputs.clear()
        self._calls.clear()

    def _stop_at_last(self, module, args, name: str) -> None:
        """Forward pre-hook of every layer: at the last layer's input, once every other layer has
        run this pass, feeds that input and ends the block's forward (:class:`_StopForward`)."""
        if name != self.last or len(self._calls) != len(self.layers) - 1 or \
                any(count != 1 for count in self._calls.values()):
            return
        with stage(self.timer, "statistics"):
            self.on_input(name, args[0])
        raise _StopForward

    @contextlib.contextmanager
    def hooks(self):
        """Forward hooks feeding each layer's input while the context is open (and, with
        ``stop_after_last``, the pre-hooks that end a pass at the last layer's input)."""
        handles = []
        for layer in self.layers.values():
            def hook(module, args, output, name=layer.name):
                with stage(self.timer, "statistics"):
                    self.on_input(name, args[0])
            handles.append(layer.module.register_forward_hook(hook))
            if self.stop_after_last:
                handles.append(layer.module.register_forward_pre_hook(
                    lambda module, args, name=layer.name: self._stop_at_last(module, args, name)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


@contextlib.contextmanager
def _collect_inputs(layers: Iterable[PrunableLayer], stats: dict[str, LayerInputStats], token_mask_ref: list,
                    timer: StageTimer | None = None):
    """Forward hooks feeding each layer's input into its own stats while the context is open."""
    handles = []
    for layer in layers:
        def hook(module, args, output, layer=layer):
            with stage(timer, "statistics"):
                stats[layer.name].add(args[0], token_mask_ref[0])
        handles.append(layer.module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------- model structure

def find_blocks(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList] | None:
    """The model's list of repeated blocks as (qualified name, ModuleList), or None.

    ``path`` names it explicitly (e.g. "model.layers"). Otherwise the ModuleList holding the most
    parameters whose entries all have one type and each contain a prunable layer is chosen: the
    decoder layers of Llama/Mistral/Qwen2 (model.layers), OPT (model.decoder.layers), GPT-2
    (transformer.h), the encoder layers of BERT (encoder.layer).
    """
    if path is not None:
        try:
            blocks = model.get_submodule(path)
        except AttributeError as error:
            raise ValueError(f"blocks: expected the name of a ModuleList in the model, but {path!r} does not "
                             f"exist ({error})") from None
        if not isinstance(blocks, nn.ModuleList):
            raise ValueError(f"blocks: expected {path!r} to be an nn.ModuleList, but got {type(blocks).__name__}")
        return path, blocks
    best, best_params = None, -1
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        if not all(any(is_prunable(m) for m in block.modules()) for block in module):
            continue
        params = sum(p.numel() for p in module.parameters())
        if params > best_params:
            best, best_params = (name, module), params
    return best


@dataclass
class CalibrationBatch:
    """One calibration input normalised to (args, kwargs) for ``model(*args, **kwargs)``."""

    args: tuple
    kwargs: dict
    token_mask: torch.Tensor | None = None  # (batch, seq) bool, from a 2-D attention_mask

    @classmethod
    def from_item(cls, item, index: int) -> "CalibrationBatch":
        if isinstance(item, torch.Tensor):
            return cls((item,), {})
        if isinstance(item, Mapping):
            # a teacher's distillation targets (teacher_samples) are not model inputs
            kwargs = {key: value for key, value in item.items() if key not in TEACHER_TARGET_KEYS}
            mask = kwargs.get("attention_mask")
            token_mask = mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
            return cls((), kwargs, token_mask)
        if isinstance(item, (tuple, list)):
            return cls(tuple(item), {})
        raise ValueError(f"calib: expected every item to be a tensor, a dict of keyword arguments or a tuple "
                         f"of positional arguments, but item {index} is {type(item).__name__}")

    def to(self, device) -> "CalibrationBatch":
        return CalibrationBatch(_to_device(self.args, device), _to_device(self.kwargs, device),
                                None if self.token_mask is None else self.token_mask.to(device))


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _no_cache(model: nn.Module):
    """Turns off a Hugging Face model's KV cache while calibrating (no cache objects in kwargs)."""
    config = getattr(model, "config", None)
    previous = getattr(config, "use_cache", None)
    if config is not None and previous is not None:
        config.use_cache = False
    try:
        yield
    finally:
        if config is not None and previous is not None:
            config.use_cache = previous


@contextlib.contextmanager
def _outside_blocks_on(model: nn.Module, blocks_name: str, device: torch.device):
    """Moves the parameters and buffers outside the block list (embeddings, rotary tables) to
    ``device`` for the capture forward, and back afterwards."""
    prefix = blocks_name + "."
    moved = []
    for module_name, module in model.named_modules():
        if module_name == blocks_name or module_name.startswith(prefix):
            continue
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                # meta: a tensor a streaming block loader has not loaded (not needed before the blocks)
                if tensor is not None and tensor.device != device and tensor.device.type != "meta":
                    moved.append((store, key, tensor.device))
                    if isinstance(tensor, nn.Parameter):
                        tensor.data = tensor.data.to(device)
                    else:
                        store[key] = tensor.to(device)
    try:
        yield
    finally:
        for store, key, original in moved:
            tensor = store[key]
            if isinstance(tensor, nn.Parameter):
                tensor.data = tensor.data.to(original)
            else:
                store[key] = tensor.to(original)


class _StopForward(Exception):
    """Raised by a hook once what a forward is run for is recorded (the first block's inputs, the
    last layer's input of a statistics pass) to skip the rest of it."""


@dataclass
class BlockInput:
    hidden: torch.Tensor
    args: tuple
    kwargs: dict
    token_mask: torch.Tensor | None


def block_output(output, owner: str = "calibration") -> torch.Tensor:
    """A block returns its hidden states, or a tuple/list whose first entry they are; anything else
    is a ValueError naming ``owner``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ValueError(f"{owner}: a block returned {type(output).__name__}; expected a tensor or a tuple "
                     "starting with the hidden states")


def capture_block_inputs(model: nn.Module, blocks_name: str, blocks: nn.ModuleList,
                         batches: list[CalibrationBatch], device: torch.device,
                         indices: list[int] | None = None,
                         keep: Callable[[BlockInput], BlockInput] | None = None) -> list[BlockInput]:
    """The first block's inputs (hidden states, other args, kwargs) for every calibration batch.
    ``indices``: the batches' positions in the caller's calibration list (for error messages);
    ``keep``: stores each captured input (e.g. offloads its hidden states to disk)."""
    captured: list[BlockInput] = []
    current_mask: list = [None]

    def pre_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured_input = BlockInput(hidden.detach(), tuple(args[1:]), dict(kwargs), current_mask[0])
        captured.append(keep(captured_input) if keep is not None else captured_input)
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad(), _no_cache(model), _outside_blocks_on(model, blocks_name, device):
            for position, batch in enumerate(batches):
                index = position if indices is None else indices[position]
                batch = batch.to(device)
                current_mask[0] = batch.token_mask
                try:
                    model(*batch.args, **batch.kwargs)
                except _StopForward:
                    pass
                except Exception as error:
                    raise ValueError(f"calib: item {index} does not fit {type(model).__name__}.forward: "
                                     f"{type(error).__name__}: {error}") from error
                else:
                    raise ValueError(f"calib: item {index} ran {type(model).__name__}.forward to the end "
                                     f"without reaching {blocks_name}[0]; is that the model's block list?")
                hidden = captured[-1].hidden
                if not all_finite(hidden):
                    raise ValueError(f"calib: item {index} produces NaN or Inf activations at the input of "
                                     f"{blocks_name}[0]")
    finally:
        handle.remove()
    return captured


# ----------------------------------------------------------------------------- the walk

WITHIN_BLOCK = ("parallel", "sequential")
"""How a block's layers calibrate (:func:`walk_blocks`' ``within_block``)."""

@dataclass
class CalibrationStep:
    """One unit the caller prunes: a block (``index`` >= 0) or the layers outside the blocks
    (``index`` == -1), with the input statistics of its layers."""

    name: str
    index: int
    layers: dict[str, PrunableLayer]
    stats: dict[str, LayerInputStats] = field(default_factory=dict)
    shared: list[list[str]] = field(default_factory=list)
    """Groups of layers whose ``stats`` are one object (they read the same input)."""


def walk_blocks(model: nn.Module, calib: list, layers: Mapping[str, PrunableLayer], *,
                sequential: bool = True, device=None, blocks_path: str | None = None,
                progress: bool = True, description: str = "prunekit",
                strategy: SingleProcessStrategy | None = None, block_loader=None,
                after_block: Callable | None = None, needs: Iterable[str] | None = None,
                share_inputs: bool = True, timer: StageTimer | None = None,
                within_block: str = "parallel", linear_backend: str = "auto") -> Iterator[CalibrationStep]:
    """Yields one :class:`CalibrationStep` per block that holds some of ``layers`` (then one for
    the layers outside the blocks, if any), with statistics gathered; the caller prunes the step's
    layers before asking for the next step, and the next block sees the pruned outputs
    (``sequential``) or the dense ones.

    ``calib`` is a list of model inputs (tensors, dicts of keyword arguments, tuples of
    positional arguments). ``device`` is where blocks run (default: where the model is); the
    blocks stay where they are between their turns.

    ``strategy`` (default: this process alone) spreads the walk: with a
    :class:`prunekit.distributed.ProcessGroupStrategy` every rank passes the same ``calib`` and
    runs the blocks over its share (items rank, rank + world, ...), keeping only its own items'
    activations; the statistics are reduced over the ranks before each step is yielded, so every
    rank's step holds the statistics of all items. The caller must leave the step's layers
    identical on every rank (see :func:`prunekit.prune`). A rank failing raises DistributedError
    on every rank.

    ``block_loader`` (streaming, :mod:`prunekit.streaming`): the blocks' weights are not in memory.
    ``block_loader.block(index, block)`` is a context manager around each block's turn (loads it;
    on a clean exit writes and releases it, on an error releases it); ``block_loader.keep`` stores
    each captured input; ``block_loader.outside(model, blocks_name, blocks, inputs, sequential)``
    is a context manager around the statistics pass of the layers outside the blocks, which then
    run on the last block's outputs (``inputs``) instead of the blocks.

    ``after_block(step, block, inputs, dense_outputs)``: called once the caller has pruned a
    block's layers, before the block's outputs become the next block's inputs, with the block's
    inputs (:class:`BlockInput`) and its dense outputs on them (block refinement, see
    :mod:`prunekit.solvers.block_refine`).

    ``needs``: the statistics to gather (names among :data:`INPUT_STATISTICS`; default all):
    without "hessian", no Hessian is built. A statistics pass whose block outputs are not kept
    (sequential, no ``after_block``) runs the block to the end for the first item only and then
    stops each item at the last layer's input: a hook on the block itself sees the later items'
    statistics passes end early (their output passes run in full). ``share_inputs``: layers of a block that read the
    same input tensor (q/k/v, gate/up) share one statistics object in the step (one process
    only; see :class:`_SharedInputs`). ``timer``: a :class:`StageTimer` that receives the
    seconds of the block forwards ("calibration_forwards") and of the statistics
    ("statistics").

    ``within_block``: "parallel" (every layer of a block calibrates on the dense block's forward,
    as the reference Wanda and SparseGPT) or "sequential" (:mod:`.layer_by_layer`: one step per
    group of layers reading one input, each calibrating on inputs through the block's layers
    pruned before it; the block runs once instead of twice). "sequential" needs ``sequential``
    and no ``after_block``.

    ``linear_backend``: the GEMM library of the blocks' fp32 CPU linears during the walk ("auto",
    "aten" or "onednn"; see :mod:`.linear_backend`).
    """
    if within_block not in WITHIN_BLOCK:
        raise ValueError(f"walk_blocks: within_block must be one of {', '.join(map(repr, WITHIN_BLOCK))}, but got "
                         f"{within_block!r}")
    if within_block == "sequential" and (not sequential or after_block is not None):
        got = "sequential=False" if not sequential else "an after_block"
        raise ValueError(f"walk_blocks: within_block='sequential' needs sequential=True and no after_block (the dense "
                         f"block outputs are never computed), but got {got}")
    strategy = strategy if strategy is not None else SingleProcessStrategy()
    needs = INPUT_STATISTICS if needs is None else frozenset(needs)
    # Shared statistics are decided per process; a process group reduces them layer by layer. The
    # layer-by-layer walk agrees on its groups over the processes first, so it may share in both.
    share_groups = share_inputs
    share_inputs = share_inputs and type(strategy) is SingleProcessStrategy
    backend = resolve_linear_backend(linear_backend, single_process=type(strategy) is SingleProcessStrategy,
                                     device=device if device is not None else model_device(model),
                                     owner="walk_blocks: linear_backend")
    batches = [CalibrationBatch.from_item(item, i) for i, item in enumerate(calib)]
    if not batches:
        raise ValueError("calib: expected at least one calibration input, but got none")
    indices = strategy.shard(range(len(batches)))
    batches = [batches[index] for index in indices]
    progress = progress and strategy.is_main
    home = model_device(model)
    device = torch.device(device) if device is not None else home
    found = find_blocks(model, blocks_path)
    remaining = dict(layers)
    if found is not None:
        blocks_name, blocks = found
        block_layers = []
        for index, block in enumerate(blocks):
            prefix = f"{blocks_name}.{index}."
            mine = {name: layer for name, layer in remaining.items() if name.startswith(prefix)}
            block_layers.append(mine)
            for name in mine:
                del remaining[name]
        last = max((i for i, mine in enumerate(block_layers) if mine), default=-1)
        if last >= 0:
            logger.info("calibrating %d blocks of %s block by block (%s)", last + 1, blocks_name,
                        "sequential" if sequential else "one-shot")
            with strategy.guard(f"capturing the inputs of {blocks_name}[0]"), stage(timer, "calibration_forwards"):
                inputs = capture_block_inputs(model, blocks_name, blocks, batches, device, indices,
                                              keep=None if block_loader is None else block_loader.keep)
            # streamed: the layers outside the blocks calibrate on the last block's outputs
            keep_last_outputs = block_loader is not None and bool(remaining)
            bar = tqdm(range(last + 1), desc=f"{description}: blocks", disable=None if progress else True)
            plans: dict[tuple, list[list[str]] | None] = {}  # layer groups by kind of block (layer by layer)
            for index in bar:
                block = blocks[index]
                name = f"{blocks_name}.{index}"
                is_last = index == last and not keep_last_outputs
                loading = contextlib.nullcontext() if block_loader is None else block_loader.block(index, block)
                with loading, linears_through(block, backend):
                    block_home = model_device(block)
                    block.to(device)
                    try:
                        groups = None
                        if within_block == "sequential" and block_layers[index]:
                            groups = _layer_by_layer_groups(name, block, block_layers[index], inputs, plans,
                                                            share_groups, strategy, timer)
                        if groups is not None:
                            yield from _walk_layer_by_layer(name, index, block, block_layers[index], groups, inputs,
                                                            is_last, strategy, needs, timer, indices, backend)
                        else:
                            yield from _walk_one_block(name, index, block, block_layers[index], inputs, sequential,
                                                       is_last=is_last, strategy=strategy, after_block=after_block,
                                                       needs=needs, share_inputs=share_inputs, timer=timer,
                                                       linear_backend=backend)
                    finally:
                        block.to(block_home)
            bar.close()
            if keep_last_outputs:
                with block_loader.outside(model, blocks_name, blocks, inputs, sequential):
                    yield from _walk_whole_model(model, batches, remaining, home, strategy, indices, needs, timer)
                return
            del inputs
    if remaining:
        yield from _walk_whole_model(model, batches, remaining, home, strategy, indices, needs, timer)


def _layer_by_layer_groups(name: str, block: nn.Module, layers: dict[str, PrunableLayer], inputs: list[BlockInput],
                           plans: dict, share: bool, strategy: SingleProcessStrategy,
                           timer: StageTimer | None) -> list[list[str]] | None:
    """The block's layer groups in forward order for the layer-by-layer walk: probed on the first
    item once per kind of block (``plans``), or None (the block's layers do not each run once: it
    takes the two passes)."""
    from .layer_by_layer import layer_groups, plan_signature

    prefix = name + "."
    signature = plan_signature(prefix, block, layers)
    if signature not in plans:
        with strategy.guard(f"the layer order of {name}"), torch.no_grad(), stage(timer, "calibration_forwards"):
            groups = layer_groups(block, layers, inputs[0], share)
        plans[signature] = None if groups is None else [[member[len(prefix):] for member in group]
                                                        for group in groups]
        strategy.agree({"layer groups": plans[signature]}, f"the layer-by-layer calibration of {name}")
        if groups is None:
            logger.info("%s: its layers do not each run once per forward; calibrating it with the two passes", name)
    relative = plans[signature]
    return None if relative is None else [[prefix + member for member in group] for group in relative]


def _walk_layer_by_layer(name: str, index: int, block: nn.Module, layers: dict[str, PrunableLayer],
                         groups: list[list[str]], inputs: list[BlockInput], is_last: bool,
                         strategy: SingleProcessStrategy, needs: frozenset[str],
                         timer: StageTimer | None, indices: list[int],
                         linear_backend: str = "aten") -> Iterator[CalibrationStep]:
    """One step per group of the block's layers, calibrated layer by layer (see
    :mod:`.layer_by_layer`); afterwards the items' hidden states are the pruned block's outputs.
    ``indices``: the items' positions in the caller's calibration list."""
    from .layer_by_layer import LayerByLayerPass

    with strategy.guard(f"starting the layer-by-layer pass of {name}"):
        walk = LayerByLayerPass(name, block, layers, groups, inputs,
                                lambda layer: LayerInputStats(layer, needs=needs, linear_backend=linear_backend),
                                _effective_token_mask, timer, finish=not is_last, item_numbers=indices)
    try:
        for group, stats in walk.steps(strategy):
            step = CalibrationStep(name, index, {member: layers[member] for member in group}, stats)
            step.shared = [group]
            yield step
    finally:
        walk.close()
    if not is_last:
        for item, output in zip(inputs, walk.outputs):
            item.hidden = output


def _walk_one_block(name: str, index: int, block: nn.Module, layers: dict[str, PrunableLayer],
                    inputs: list[BlockInput], sequential: bool, is_last: bool,
                    strategy: SingleProcessStrategy, after_block: Callable | None = None,
                    needs: frozenset[str] = INPUT_STATISTICS, share_inputs: bool = True,
                    timer: StageTimer | None = None, linear_backend: str = "aten") -> Iterator[CalibrationStep]:
    need_outputs = not is_last
    keep_dense = (need_outputs and not sequential) or after_block is not None
    share = share_inputs
    while True:
        token_mask: list = [None]
        feed = _SharedInputs(layers, lambda layer: LayerInputStats(layer, needs=needs, linear_backend=linear_backend),
                             token_mask, share, timer,
                             stop_after_last=not keep_dense)
        dense_outputs: list[torch.Tensor] | None = [] if keep_dense else None
        with strategy.guard(f"the statistics pass of {name}"), torch.no_grad(), feed.hooks(), \
                stage(timer, "calibration_forwards"):
            # A block without layers to prune needs no statistics pass unless its dense outputs are kept.
            for item in inputs if layers or keep_dense else ():
                token_mask[0] = _effective_token_mask(item.token_mask)
                try:
                    output = block_output(block(item.hidden, *item.args, **item.kwargs))
                except _StopForward:
                    output = None
                feed.end_pass()
                if dense_outputs is not None:
                    dense_outputs.append(output.detach())
        if feed.consistent:
            break
        # A layer read another input than its group's on some item: gather again layer by layer.
        logger.info("%s: layers reading one input differ between calibration items; statistics per layer", name)
        share = False
    if share and any(len(group) > 1 for group in feed.groups()):
        logger.debug("%s: shared input statistics: %s", name, [group for group in feed.groups() if len(group) > 1])
    step = CalibrationStep(name, index, layers, feed.stats)
    step.shared = feed.groups()
    with stage(timer, "statistics"):
        strategy.reduce_statistics(feed.distinct())
    yield step
    if after_block is not None:
        with strategy.guard(f"after pruning {name}"):
            after_block(step, block, inputs, dense_outputs)
    if not need_outputs:
        return
    step.stats.clear()  # the Hessians are not needed past pruning
    with strategy.guard(f"the output pass of {name}"), torch.no_grad(), stage(timer, "calibration_forwards"):
        for i, item in enumerate(inputs):
            if not sequential:
                item.hidden = dense_outputs[i]
                dense_outputs[i] = None
            else:  # outputs of the pruned block replace the inputs one by one
                item.hidden = block_output(block(item.hidden, *item.args, **item.kwargs)).detach()


def _effective_token_mask(token_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The token mask, or None when it keeps every token (no copy of the rows is needed then)."""
    if token_mask is None or bool(token_mask.all()):
        return None
    return token_mask


def _walk_whole_model(model: nn.Module, batches: list[CalibrationBatch], layers: dict[str, PrunableLayer],
                      device: torch.device, strategy: SingleProcessStrategy,
                      indices: list[int], needs: frozenset[str] = INPUT_STATISTICS,
                      timer: StageTimer | None = None) -> Iterator[CalibrationStep]:
    logger.info("calibrating %d layers outside any block list with whole-model forwards", len(layers))
    step = CalibrationStep("model", -1, layers, {n: LayerInputStats(layer, needs=needs) for n, layer in layers.items()})
    token_mask: list = [None]
    with strategy.guard("the whole-model statistics pass"), torch.no_grad(), _no_cache(model), \
            _collect_inputs(layers.values(), step.stats, token_mask, timer), stage(timer, "calibration_forwards"):
        for index, batch in zip(indices, batches):
            batch = batch.to(device)
            token_mask[0] = _effective_token_mask(batch.token_mask)
            try:
                model(*batch.args, **batch.kwargs)
            except CalibrationError:
                raise
            except Exception as error:
                raise ValueError(f"calib: item {index} does not fit {type(model).__name__}.forward: "
                                 f"{type(error).__name__}: {error}") from error
    strategy.reduce_statistics(step.stats.values())
    yield step
