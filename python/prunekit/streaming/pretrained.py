"""``prunekit.prune_pretrained``: prune a Hugging Face model directory larger than memory.

The model is built from its config with every parameter on the meta device (no storage; buffers
such as rotary tables are real). The parameters outside the block list (embeddings, final norm)
are loaded first; then :func:`prunekit.prune` runs as always, with a block loader handed to its
calibration walk (:func:`prunekit.calibrate.walk_blocks`): each block's weights are read from the
safetensors files when its turn comes, calibrated and pruned by the same code as in memory, written
to the output and released. The layers outside the blocks (an LM head) calibrate on the last
block's outputs and are written last. The output, written atomically, is a Hugging Face directory
(masked dense shards, one per block, index, config and the input's other files) or a prunekit
checkpoint (what ``prunekit.save`` writes, assembled from one staging file per block); the input is
only read.

Peak memory: one block in the compute dtype, the calibration activations (one item of them with
``offload_dir``), the parameters outside the blocks, and the statistics of one block's layers.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn as nn

from ..calibrate.pipeline import BlockInput, find_blocks, is_prunable
from ..distributed import SingleProcessStrategy, strategy_for
from ..io import checkpoint
from ..prune import PruneConfig, PruneReport, _prune, _select_layers
from .offload import ActivationStore
from .source import INDEX_FILE, SafetensorsSource, SourceError
from .writer import CheckpointWriter, OutputWriter, ShardWriter, check_output_path

logger = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
OUT_FORMATS = ("hf", "prunekit")


def prune_pretrained(path: str | os.PathLike, config: PruneConfig | None = None, calib=None,
                     out: str | os.PathLike | None = None, *, dtype: torch.dtype | str = torch.float32,
                     save_dtype: torch.dtype | str | None = None,
                     offload_dir: str | os.PathLike | None = None, out_format: str = "hf") -> PruneReport:
    """Prunes the Hugging Face model in directory ``path`` block by block, never holding more than
    one block's weights, and writes the pruned model to the new directory ``out``. Returns the
    :class:`PruneReport`; the result equals ``prunekit.prune`` on the model loaded in ``dtype`` and
    saved with ``save_pretrained`` (``out_format="hf"``, default: masked dense safetensors shards)
    or with ``prunekit.save`` (``out_format="prunekit"``: config.json and model.prunekit.safetensors,
    every pruned layer in its smallest exact format; load it with ``prunekit.load``).

    - ``config``, ``calib``: as for :func:`prunekit.prune` (calib: model inputs). Every method that
      runs with sequential calibration works (magnitude, wanda, sparsegpt, random, N:M, dsnot), with
      "uniform" or "owl" allocation (OWL streams the blocks twice: statistics, then pruning).
      "global" allocation and criteria needing gradients (gblm) need the whole model at once and
      are refused. Layers outside the blocks (an untied LM head) need ``sequential=True``.
    - ``dtype``: the compute dtype the blocks are loaded in; ``save_dtype``: the dtype the
      parameters are written in (default ``dtype``; "auto": each tensor's dtype in the input).
    - ``offload_dir``: keep the calibration activations in files under this directory (one item's
      in memory at a time) instead of in memory.
    - Both outputs also hold the input's other files (tokenizer, generation config). The prunekit
      checkpoint is assembled at the end from one staging file per block (the disk holds it twice
      for a moment); a buffer shared by two blocks (rare) is stored once per block.

    Bad input raises ValueError before the output is created: a missing or truncated shard, a
    tensor whose shape disagrees with the config, ``out`` existing. An error while running (a full
    disk: OSError) removes everything written; ``out`` appears only when complete.
    """
    config = config if config is not None else PruneConfig()
    if not isinstance(config, PruneConfig):
        raise ValueError(f"prune_pretrained: config must be a prunekit.PruneConfig, but got {type(config).__name__}")
    if out is None:
        raise ValueError("prune_pretrained: argument 'out' must name the output directory, but got None")
    if out_format not in OUT_FORMATS:
        raise ValueError(f"prune_pretrained: argument 'out_format' must be one of {OUT_FORMATS}, but got "
                         f"{out_format!r}")
    compute_dtype = _dtype(dtype, "dtype")
    save = None if save_dtype is None else ("auto" if save_dtype == "auto" else _dtype(save_dtype, "save_dtype"))
    _check_supported(config)
    out = Path(out)
    check_output_path(out)
    source = SafetensorsSource(path)
    source.check_index()
    model = build_skeleton(source.directory, compute_dtype)
    streamed = StreamedModel(source, model, compute_dtype, save_dtype=save or compute_dtype,
                             blocks_path=config.blocks)
    selected = _select_layers(model, config.ignore, config.pattern, config.sparsity)
    outside = [name for name in selected if not streamed.in_blocks(name)]
    if outside and not config.sequential and calib is not None:
        raise ValueError(f"prune_pretrained: layers outside {streamed.blocks_name} ({', '.join(outside[:3])}) are "
                         "pruned on the last block's outputs, which needs PruneConfig.sequential=True; add them to "
                         "PruneConfig.ignore or prune sequentially")
    if config.device is None:
        config = dataclasses.replace(config, device="cpu")
    # Under torch.distributed every rank streams the blocks (one at a time) over its share of the
    # calibration items; rank 0 alone writes, and every rank learns whether that worked.
    strategy = strategy_for(config.distributed, config.process_group, argument="PruneConfig.distributed")
    store = ActivationStore(offload_dir) if offload_dir is not None else None
    writer = None
    try:
        with strategy.guard("creating the output's staging directory"):
            if strategy.is_main:
                writer_class = ShardWriter if out_format == "hf" else CheckpointWriter
                writer = writer_class(out, units=len(streamed.blocks) + 1)
        streamed.writer, streamed.store, streamed.strategy = writer, store, strategy
        streamed.load_prologue()
        report = _prune(model, config, calib, block_loader=streamed)
        streamed.finish()
        with strategy.guard("writing the output's other files and renaming it"):
            if writer is not None:
                _finish_output(source, model, writer, save or compute_dtype)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if store is not None:
            store.close()
    logger.info("prune_pretrained: wrote %s (%s, %d blocks)%s", out, out_format, len(streamed.blocks),
                strategy.describe())
    return report


def _dtype(value, argument: str) -> torch.dtype:
    if isinstance(value, str):
        resolved = getattr(torch, value, None)
        if isinstance(resolved, torch.dtype):
            value = resolved
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"prune_pretrained: argument '{argument}' must be a floating-point torch dtype (or its name), "
                         f"but got {value!r}")
    return value


def _check_supported(config: PruneConfig) -> None:
    method = config.criterion
    if "gradients" in method.needs:
        raise ValueError(f"prune_pretrained: method {method.name!r} needs gradients of the whole model's loss, which "
                         "a streamed run cannot compute; prune in memory (prunekit.prune, or prunekit prune "
                         "--in-memory)")
    if config.effective_allocation == "global":
        raise ValueError("prune_pretrained: allocation 'global' ranks every layer's weights at once, which needs the "
                         "whole model in memory; use 'uniform' or 'owl', or prune in memory (prunekit.prune, or "
                         "prunekit prune --in-memory)")


# ----------------------------------------------------------------------------- the skeleton

@contextlib.contextmanager
def _parameters_on_meta():
    """Every parameter registered inside the block is put on the meta device (no storage); buffers
    are computed as usual (rotary tables are not in the checkpoint)."""
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        register(module, name, param)
        param = module._parameters.get(name)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build_skeleton(directory: Path, dtype: torch.dtype) -> nn.Module:
    """The model of ``directory``'s config.json, parameters on the meta device, in eval mode."""
    try:
        import transformers
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    except ImportError as error:
        raise RuntimeError("prune_pretrained needs transformers: pip install 'prunekit[hf]'") from error
    from ..hf import CAUSAL_SUFFIXES, _dtype_kwargs

    try:
        hf_config = AutoConfig.from_pretrained(directory)
    except Exception as error:  # transformers raises many kinds for a bad config
        raise SourceError(f"prune_pretrained: {os.fspath(directory / 'config.json')!r} is not a config transformers "
                          f"{transformers.__version__} can read: {error}") from error
    architectures = getattr(hf_config, "architectures", None) or []
    loader = AutoModelForCausalLM if any(a.endswith(CAUSAL_SUFFIXES) for a in architectures) else AutoModel
    kwargs = _dtype_kwargs(str(dtype).removeprefix("torch."))
    try:
        with _parameters_on_meta():
            model = loader.from_config(hf_config, **kwargs)
    except Exception as error:
        raise SourceError(f"prune_pretrained: transformers cannot build the model of {os.fspath(directory)!r} from its "
                          f"config: {error}") from error
    model.config.name_or_path = os.fspath(directory)  # as from_pretrained records it
    return model.eval()


# ----------------------------------------------------------------------------- the block loader

class StreamedModel:
    """The skeleton and its weights in the source: loads and releases units (a block, the rest of
    the model), and is the block loader of :func:`prunekit.calibrate.walk_blocks` (see there)."""

    def __init__(self, source: SafetensorsSource, model: nn.Module, dtype: torch.dtype, *, save_dtype,
                 blocks_path: str | None):
        self.source, self.model, self.dtype, self.save_dtype = source, model, dtype, save_dtype
        found = find_blocks(model, blocks_path)
        if found is None:
            raise ValueError(f"prune_pretrained: {type(model).__name__} has no block list (a ModuleList of repeated "
                             "blocks) to stream; pass blocks='...' naming it, or prune in memory")
        self.blocks_name, self.blocks = found
        self.writer: ShardWriter | CheckpointWriter | None = None  # None on ranks other than 0
        self.store: ActivationStore | None = None
        self.strategy = SingleProcessStrategy()
        self.written: set[int] = set()
        self.writing = True
        self._output_kind: tuple | None = None
        # Each parameter once (tied ones share a Parameter object) under its first name, with every
        # place it is registered in and every name it has.
        self.places: dict[str, list[tuple[nn.Module, str]]] = {}
        names_of: dict[str, list[str]] = {}
        first_name: dict[int, str] = {}
        for module_name, module in model.named_modules(remove_duplicate=False):
            for attr, param in module._parameters.items():
                if param is None:
                    continue
                name = f"{module_name}.{attr}" if module_name else attr
                first = first_name.setdefault(id(param), name)
                self.places.setdefault(first, [])
                names_of.setdefault(first, [])
                if (module, attr) not in self.places[first]:
                    self.places[first].append((module, attr))
                if name not in names_of[first]:
                    names_of[first].append(name)
        self.key_of: dict[str, str] = {}  # parameter (its first name) -> key in the source
        for first, names in names_of.items():
            stored = [name for name in names if name in source]
            if not stored:
                raise SourceError(f"prune_pretrained: the weights in {os.fspath(source.directory)!r} must hold "
                                  f"'{first}' (from config.json), but no shard has it")
            self.key_of[first] = stored[0]
        # Every name of a parameter is written with the unit of its first name (tied ones once).
        self._param_unit = {name: self.unit_of(first) for first, names in names_of.items() for name in names}
        self.buffers = {key: tensor for key, tensor in model.state_dict(keep_vars=True).items()
                        if not isinstance(tensor, nn.Parameter)}
        self._check_shapes()
        self.unit_params: list[list[str]] = [[] for _ in range(len(self.blocks) + 1)]
        for name in self.key_of:
            self.unit_params[self.unit_of(name)].append(name)

    def _check_shapes(self) -> None:
        expected = {key: self._param(name).shape for name, key in self.key_of.items()}
        expected.update({key: tensor.shape for key, tensor in self.buffers.items() if key in self.source})
        for key, shape in expected.items():
            entry = self.source.entries[key]
            if tuple(entry.shape) != tuple(shape):
                raise SourceError(f"prune_pretrained: tensor '{key}' in {entry.path.name} must have shape "
                                  f"{tuple(shape)} (from config.json), but has {tuple(entry.shape)}")
            if not entry.dtype.is_floating_point and key not in self.buffers:
                raise SourceError(f"prune_pretrained: parameter '{key}' in {entry.path.name} must be floating point, "
                                  f"but is {entry.dtype}")
        unexpected = sorted(set(self.source.keys()) - set(expected))
        if unexpected:
            logger.warning("prune_pretrained: %d tensors in %s are not in the model and are not written: %s",
                           len(unexpected), self.source.directory, ", ".join(unexpected[:5]))

    def _param(self, name: str) -> nn.Parameter:
        module, attr = self.places[name][0]
        return module._parameters[attr]

    def in_blocks(self, name: str) -> bool:
        return name.startswith(self.blocks_name + ".")

    def unit_of(self, name: str) -> int:
        """The block index of a parameter, buffer or module, or len(blocks) (the rest of the model)."""
        if self.in_blocks(name):
            return int(name[len(self.blocks_name) + 1:].split(".", 1)[0])
        return len(self.blocks)

    def written_with(self, name: str) -> int:
        """The unit whose output holds a state_dict key or module ``name``: a parameter's is that of
        its first name."""
        unit = self._param_unit.get(name)
        return self.unit_of(name) if unit is None else unit

    # -- loading and releasing

    def _set(self, name: str, tensor: torch.Tensor) -> None:
        param = nn.Parameter(tensor, requires_grad=False)
        for module, attr in self.places[name]:
            module._parameters[attr] = param

    def _load(self, names) -> None:
        for name in names:
            if self._param(name).device.type == "meta":
                self._set(name, self.source.read(self.key_of[name], self.dtype))

    def _release(self, names) -> None:
        for name in names:
            param = self._param(name)
            if param.device.type != "meta":
                self._set(name, torch.empty(param.shape, dtype=param.dtype, device="meta"))
        _return_freed_memory()

    def load_prologue(self) -> None:
        """The parameters outside the blocks, but for the prunable layers there (an LM head: loaded
        when their turn comes), and the stored buffers."""
        prologue = [name for name in self.unit_params[-1]
                    if not all(is_prunable(module) for module, _ in self.places[name])]
        self._load(prologue)
        for key, buffer in self.buffers.items():
            if key in self.source:
                owner, _, attr = key.rpartition(".")
                module = self.model.get_submodule(owner) if owner else self.model
                module._buffers[attr] = self.source.read(key, buffer.dtype if buffer.is_floating_point() else None)

    def _saved_params(self, unit: int) -> dict[str, torch.Tensor]:
        """The unit's parameters (by first name) as written: loaded ones from the model, the rest
        read from the source, in the saved dtype."""
        saved = {}
        for name in self.unit_params[unit]:
            param = self._param(name)
            key = self.key_of[name]
            saved[name] = self._saved(key, param.detach() if param.device.type != "meta" else self.source.read(key))
        return saved

    def _unit_tensors(self, unit: int) -> dict[str, torch.Tensor]:
        """The unit's tensors in a Hugging Face shard: its parameters and stored buffers."""
        tensors = {self.key_of[name]: tensor for name, tensor in self._saved_params(unit).items()}
        for key, buffer in self.buffers.items():
            if self.unit_of(key) == unit and key in self.source:
                owner, _, attr = key.rpartition(".")
                module = self.model.get_submodule(owner) if owner else self.model
                tensors[key] = module._buffers[attr].detach()
        return tensors

    def _unit_entries(self, unit: int) -> checkpoint.CheckpointEntries:
        """The unit's entries in a prunekit checkpoint (what ``prunekit.save`` stores of its layers and
        tensors), computed with its parameters in the model in the saved dtype; the model's own
        parameters are put back afterwards."""
        held = {name: self._param(name) for name in self.unit_params[unit]}
        try:
            for name, tensor in self._saved_params(unit).items():
                self._set(name, tensor)
            return checkpoint.collect_entries(self.model, part=lambda name: self.written_with(name) == unit)
        finally:
            for name, param in held.items():
                for module, attr in self.places[name]:
                    module._parameters[attr] = param

    def _saved(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        dtype = self.source.entries[key].dtype if self.save_dtype == "auto" else self.save_dtype
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    def _write(self, unit: int) -> None:
        if not self.writing or unit in self.written:
            return
        what = f"{self.blocks_name}.{unit}" if unit < len(self.blocks) else "the layers outside the blocks"
        with self.strategy.guard(f"writing {what}"):  # every rank enters, rank 0 writes
            if isinstance(self.writer, ShardWriter):
                self.writer.write_unit(unit, self._unit_tensors(unit), what)
            elif self.writer is not None:
                self.writer.write_unit(unit, self._unit_entries(unit), what)
        self.written.add(unit)

    def finish(self) -> None:
        """Writes every unit not written yet: blocks the walk did not reach (nothing to prune in
        them) straight from the source, then the rest of the model."""
        for unit in range(len(self.blocks) + 1):
            self._write(unit)
        self._release(self.unit_params[-1])

    # -- the block loader protocol of walk_blocks

    @contextlib.contextmanager
    def block(self, index: int, block: nn.Module):
        names = self.unit_params[index]
        handle = None
        try:
            self._load(names)

            def record(module, args, output):
                self._output_kind = ("tensor",) if isinstance(output, torch.Tensor) else (type(output), len(output))

            handle = block.register_forward_hook(record)
            yield
            self._write(index)
        finally:
            if handle is not None:
                handle.remove()
            self._release(names)

    def keep(self, item: BlockInput) -> BlockInput:
        return self.store.keep(item) if self.store is not None else item

    @contextlib.contextmanager
    def outside(self, model: nn.Module, blocks_name: str, blocks: nn.ModuleList, inputs: list[BlockInput],
                sequential: bool):
        if self.writing and not sequential:
            raise ValueError("prune_pretrained: the layers outside the blocks calibrate on the pruned model's last "
                             "block outputs, which needs PruneConfig.sequential=True")
        self._load(self.unit_params[-1])
        originals = list(blocks)
        replay = _Replay(inputs, self._output_kind)
        for i, original in enumerate(originals):
            blocks[i] = _ReplayBlock(original, replay, last=i == len(originals) - 1)
        try:
            yield
        finally:
            for i, original in enumerate(originals):
                blocks[i] = original

    def reading(self) -> "_ReadingView":
        """A loader for a walk that only reads (OWL's statistics): blocks are released unwritten."""
        return _ReadingView(self)

    def steps_without_data(self, layers: dict) -> Iterator[tuple[str, str | None, dict, dict]]:
        """Steps of a run without calibration data: each block's layers with the block loaded."""
        for index, block in enumerate(self.blocks):
            prefix = f"{self.blocks_name}.{index}."
            mine = {name: layer for name, layer in layers.items() if name.startswith(prefix)}
            if mine:
                with self.block(index, block):
                    yield f"pruning the layers of {self.blocks_name}.{index}", f"{self.blocks_name}.{index}", mine, {}
        rest = {name: layer for name, layer in layers.items() if not self.in_blocks(name)}
        if rest:
            self._load(self.unit_params[-1])
            yield "pruning the layers outside the blocks", None, rest, {}


def _return_freed_memory() -> None:
    """Hands the heap's free pages back to the system (glibc's malloc_trim). A released block's
    tensors are freed, but glibc serves allocations below its (adaptive, up to 32 MiB) mmap
    threshold from heap arenas whose free pages it keeps: without this, resident memory creeps up
    by up to a block per block instead of staying at one block."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


class _ReadingView:
    def __init__(self, streamed: StreamedModel):
        self.streamed = streamed

    @contextlib.contextmanager
    def block(self, index, block):
        self.streamed.writing = False
        try:
            with self.streamed.block(index, block):
                yield
        finally:
            self.streamed.writing = True

    def keep(self, item):
        return self.streamed.keep(item)

    @contextlib.contextmanager
    def outside(self, model, blocks_name, blocks, inputs, sequential):
        self.streamed.writing = False
        try:
            with self.streamed.outside(model, blocks_name, blocks, inputs, sequential):
                yield
        finally:
            self.streamed.writing = True


class _Replay:
    """The last block's outputs, handed out in calibration order by the replayed last block."""

    def __init__(self, inputs: list[BlockInput], kind: tuple | None):
        self.inputs, self.kind, self.next = inputs, kind, 0

    def output(self, hidden: torch.Tensor):
        if self.next >= len(self.inputs):
            raise RuntimeError("prune_pretrained: the model ran its blocks more often than there are calibration "
                               "items")
        value = self.inputs[self.next].hidden
        self.next += 1
        if tuple(value.shape) != tuple(hidden.shape):
            raise RuntimeError(f"prune_pretrained: the replayed outputs ({tuple(value.shape)}) do not match the "
                               f"model's hidden states ({tuple(hidden.shape)})")
        return self.wrap(value)

    def wrap(self, value: torch.Tensor):
        if self.kind is None or self.kind == ("tensor",):
            return value
        kind, length = self.kind
        return kind((value,) + (None,) * (length - 1)) if kind in (tuple, list) else (value,)


class _ReplayBlock(nn.Module):
    """Stands in for a released block in the forward that calibrates the layers after the blocks:
    passes its input through, or (the last one) returns the recorded output of the real block.
    Attributes the model reads from its blocks (e.g. ``attention_type``) come from the original."""

    def __init__(self, original: nn.Module, replay: _Replay, last: bool):
        super().__init__()
        object.__setattr__(self, "_original", original)  # not a submodule: no parameters here
        object.__setattr__(self, "_replay", replay)
        self.last = last

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_original"), name)

    def forward(self, hidden_states, *args, **kwargs):
        replay = object.__getattribute__(self, "_replay")
        return replay.output(hidden_states) if self.last else replay.wrap(hidden_states)


# ----------------------------------------------------------------------------- the other files

def _finish_output(source: SafetensorsSource, model: nn.Module, writer: OutputWriter, save_dtype) -> None:
    """config.json with the saved dtype (a prunekit checkpoint's: the model's full config, as
    ``prunekit.save`` writes it), every other file of the input (tokenizer, generation config, ...)
    but its weights, then the commit."""
    name = None if save_dtype == "auto" else str(save_dtype).removeprefix("torch.")
    if isinstance(writer, CheckpointWriter):
        if name is not None:
            model.config.dtype = save_dtype
        text = checkpoint.config_json(model)
    else:
        config = json.loads((source.directory / "config.json").read_text(encoding="utf-8"))
        if name is not None:
            for key in ("dtype", "torch_dtype"):
                if key in config or key == "dtype":
                    config[key] = name
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    writer.write_text("config.json", text)
    skip = source.weight_file_names() | {"config.json", INDEX_FILE}
    for entry in sorted(source.directory.iterdir()):
        if entry.is_file() and entry.name not in skip and not entry.name.endswith(_WEIGHT_SUFFIXES) \
                and not entry.name.startswith("."):
            writer.copy_file(entry)
    if isinstance(writer, CheckpointWriter):
        writer.commit(checkpoint.model_info(model))
    else:
        writer.commit()
