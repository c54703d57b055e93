"""Lossless compressed checkpoints: ``prunekit.save(model, path)`` / ``prunekit.load(path)``.

What is stored and what runs are separate choices. :func:`save` writes every pruned layer in its
smallest exact storage format (:func:`prunekit.formats.smallest_storage`: "2:4", the
"unstructured" bitmap, "csr16" above ~94% sparsity, or "dense" where no compressed entry is
smaller), whatever format the module held and whichever kernel the saving machine would run;
:func:`load` picks each layer's runtime format for the machine it loads on (``format="auto"``:
:func:`prunekit.nn.choose_format` with that machine's break-even table) and converts exactly.

Which layers are compressed (``save(compress=...)``):

- ``"pruned"`` (default): every SparseLinear / SparseConv2d, and every plain prunable layer
  (nn.Linear, nn.Conv2d with groups=1, transformers Conv1D; fp32, bf16 or fp16) whose smallest
  exact compressed entry is smaller than its dense weight (bf16 bitmap: from ~6.3% zeros; fp32:
  from ~3.2%), unless its weight is shared with another tensor (tied embeddings) or the module is
  reachable under several names or holds more than its weight, bias and low-rank factors;
- ``"sparse"``: only the sparse modules (in their smallest exact format);
- ``"held"``: the sparse modules in the format each holds (version 1's rule); nothing else.

The format (version 2) is one safetensors file; no pickle anywhere. Its ``__metadata__`` holds
JSON strings:

- ``format`` = "prunekit.checkpoint", ``format_version`` = "2", ``prunekit_version``,
  ``torch_version``;
- ``model``: the model's class name and, for Hugging Face models, the class, the full config and
  the attention implementation, so that :func:`load` can rebuild the model without a skeleton;
- ``modules``: per compressed layer its sparse module class (SparseLinear / SparseConv2d, whose
  geometry keys it carries), ``format`` (the stored format), ``held`` (what ran when it was saved:
  a format, or "plain" for an ordinary module, whose class is ``plain_class``), ``swappable``
  (False where a sparse module may not replace it: an overridden forward, a parent reading the
  weight directly), ``auto`` (the ``rows`` / ``break_even`` of the ``sparsify_`` call that chose
  "auto", when there was one), sizes, dtype and geometry; ``module_aliases``: further names of a
  sparse module registered under several names;
- ``tensors``: per stored tensor its dtype, shape and CRC-32; ``aliases``: state_dict keys whose
  tensor is stored under another key (tied weights, stored once);
- ``nonpersistent``: floating-point buffers outside state_dict (e.g. rotary ``inv_freq``) that
  are stored because a dtype change of the model changes them.

Tensors: each compressed layer's tensors under ``<module>.<name>``, as its stored format writes
them (:meth:`prunekit.formats.WeightFormat.to_checkpoint`; unstructured: ``values``, ``bitmap``,
its ``row_offsets`` recomputed from the bitmap on load; 2:4: ``values`` and ``meta`` in torch's
CUTLASS layout; csr16: ``values``, ``col_indices``, ``row_offsets``; dense: ``weight``), its
``bias`` and low-rank factors; every other state_dict entry under its key, bit for bit. Version 1
files (every sparse module stored in the format it held, no plain layers compressed) load as
before: their ``held`` is their ``format``. The metadata's mappings are sorted by name, so a
checkpoint collected part by part (:func:`collect_entries`; ``prunekit.prune_pretrained`` with
``out_format="prunekit"`` writes one block at a time) is the same file as one collected at once.

A Hugging Face model saved to a path that does not end in ".safetensors" becomes a directory
holding ``config.json`` (for tools) and ``model.prunekit.safetensors`` (self-contained; the
config inside it is the one :func:`load` uses).

Loading parses and checks the header (format name and version, JSON, dtypes and shapes against
byte spans, the file's exact length), memory-maps the file (``mmap=True``: tensors are
copy-on-write views of the file, so in-place changes never reach it; a layer converted to another
runtime format gets new tensors), checks every tensor's dtype, shape and CRC-32 against the header
(``verify=True``) and each layer's tensors against its format, and checks the model's structure
(layer geometry, state_dict keys, shapes) before changing anything in the model. A layer whose
runtime format has no kernel on this machine (:func:`prunekit.nn.auto.cpu_format_problem`) loads
as a plain dense module, exactly, with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .. import formats
from ..calibrate.pipeline import is_prunable
from ..nn import SparseConv2d, SparseLinear, SparseWeightModule
from ..nn.auto import WeightStats, choose_format, cpu_format_problem
from ..nn.base import HELD_FORMATS
from ..nn.linear import LowRankLinear, is_hf_conv1d
from ..surgery.sparsify import AUTO_REQUEST_ATTRIBUTE as AUTO_ATTRIBUTE
from ..surgery.sparsify import _direct_weight_readers, _plain_forward
from . import safetensors_file as stf
from .safetensors_file import CheckpointError

logger = logging.getLogger(__name__)

FORMAT_NAME = "prunekit.checkpoint"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)  # the format versions load reads
COMPRESS_MODES = ("pruned", "sparse", "held")
LOAD_FORMATS = ("auto", "saved", "2:4", "unstructured", "dense")
WEIGHTS_NAME = "model.prunekit.safetensors"
CONFIG_NAME = "config.json"
# The JSON metadata keys with the JSON type of each (and of the entries of the mappings that hold specs).
_JSON_TYPES = {"model": dict, "modules": dict, "module_aliases": dict, "tensors": dict, "aliases": dict,
               "nonpersistent": list}
_JSON_KEYS = tuple(_JSON_TYPES)
_JSON_ENTRY_TYPES = {"modules": dict, "module_aliases": str, "tensors": dict, "aliases": str, "nonpersistent": str}
_VALUE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                 "float64": torch.float64}


# ----------------------------------------------------------------------------- save

def _hf_pretrained(model: nn.Module) -> bool:
    try:
        import transformers
    except ImportError:
        return False
    return isinstance(model, transformers.PreTrainedModel)


def save(model: nn.Module, path, *, overwrite: bool = False, compress: str = "pruned") -> Path:
    """Saves ``model`` losslessly, every pruned layer in its smallest exact format (``compress``:
    which layers, see the module docstring: "pruned" (default), "sparse" or "held").

    ``path``: a file; for a Hugging Face ``PreTrainedModel`` a directory (config.json +
    model.prunekit.safetensors) unless it ends in ".safetensors". An existing file, or a
    non-empty directory, is refused unless ``overwrite=True``; then only the checkpoint's own
    files are replaced, each atomically. Returns the path of the safetensors file.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"save: argument 'model' must be a torch.nn.Module, but got {type(model).__name__}")
    if not isinstance(path, (str, Path)) and not hasattr(path, "__fspath__"):
        raise TypeError(f"save: argument 'path' must be a str or os.PathLike, but got {type(path).__name__}")
    if compress not in COMPRESS_MODES:
        raise ValueError(f"save: argument 'compress' must be one of {COMPRESS_MODES}, but got {compress!r}")
    path = Path(path)
    as_directory = _hf_pretrained(model) and path.suffix != ".safetensors"
    if as_directory:
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"save: argument 'path' must be a directory for a Hugging Face model (or a name "
                                  f"ending in .safetensors), but {path} is a file")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            held = sorted(p.name for p in path.iterdir())[:5]
            raise CheckpointError(f"save: argument 'path' must not exist or be an empty directory (pass overwrite=True "
                                  f"to replace the checkpoint in it), but {path} holds {held}")
        weights = path / WEIGHTS_NAME
    else:
        if path.is_dir():
            raise CheckpointError(f"save: argument 'path' must be a file name, but {path} is a directory")
        if path.exists() and not overwrite:
            raise CheckpointError(f"save: argument 'path' must not exist (pass overwrite=True to replace it), but "
                                  f"{path} exists")
        if not path.parent.is_dir():
            raise CheckpointError(f"save: the directory of argument 'path' must exist, but {path.parent} does not")
        weights = path
    entries = collect_entries(model, compress)
    if as_directory:
        path.mkdir(parents=True, exist_ok=True)
    stf.write(weights, entries.tensors, checkpoint_metadata(model_info(model), entries), overwrite=overwrite)
    if as_directory:
        stf.write_text(path / CONFIG_NAME, config_json(model), overwrite=True)
    return weights


def _cpu(key: str, tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    if tensor.device.type == "meta":
        raise CheckpointError(f"save: tensor '{key}' is on the meta device (no data); load or materialise the model "
                              "first")
    return tensor.cpu().contiguous()


@dataclass
class CheckpointEntries:
    """What a checkpoint stores of a model, or of a part of it: the stored tensors (contiguous, on
    the CPU) and their manifest (dtype, shape, CRC-32), the compressed layers' specs, the further
    names of sparse modules and tensors (aliases), the stored non-persistent buffers. A streamed run
    writes the tensors of each part as it goes and keeps the rest (:meth:`without_tensors`) for the
    metadata (:func:`checkpoint_metadata`)."""

    tensors: dict[str, torch.Tensor]
    manifest: dict[str, dict]
    modules: dict[str, dict]
    module_aliases: dict[str, str]
    aliases: dict[str, str]
    nonpersistent: list[str]

    def without_tensors(self) -> CheckpointEntries:
        return dataclasses.replace(self, tensors={})

    @classmethod
    def merge(cls, parts: list[CheckpointEntries]) -> CheckpointEntries:
        """The entries of disjoint parts of one model together (their tensors included)."""
        merged = cls({}, {}, {}, {}, {}, [])
        for part in parts:
            for field in ("tensors", "manifest", "modules", "module_aliases", "aliases"):
                mine, theirs = getattr(merged, field), getattr(part, field)
                twice = mine.keys() & theirs.keys()
                if twice:
                    raise ValueError(f"save: the parts of a checkpoint must be disjoint, but {field} "
                                     f"{sorted(twice)[:3]} are in two parts")
                mine.update(theirs)
            merged.nonpersistent += part.nonpersistent
        return merged


def collect_entries(model: nn.Module, compress: str = "pruned",
                    part: Callable[[str], bool] | None = None) -> CheckpointEntries:
    """What :func:`save` stores of ``model`` (``compress``: which layers, see the module docstring).
    ``part(name)``, when given, selects the compressed layers (by module name) and the tensors (by
    state_dict key) to collect, for a model held one part at a time (the rest may be on the meta
    device): a streamed run collects one block at a time, so tensors shared by two parts (tied across
    blocks) are stored once per part."""
    within = part if part is not None else (lambda name: True)
    sparse: dict[str, SparseWeightModule] = {}
    module_aliases: dict[str, str] = {}
    first_name: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, SparseWeightModule) and within(name):
            if id(module) in first_name:
                module_aliases[name] = first_name[id(module)]
                continue
            first_name[id(module)] = name
            sparse[name] = module

    named: dict[str, torch.Tensor] = {}
    modules = {}
    for name, module in sparse.items():
        spec, entry = _sparse_entry(name, module, compress)
        modules[name] = spec
        for key, tensor in entry.items():
            named[_join(name, key)] = tensor
    if compress == "pruned":
        for name, module in _plain_layers(model).items():
            layer = _plain_entry(name, module, model) if within(name) else None
            if layer is not None:
                modules[name], entry = layer
                for key, tensor in entry.items():
                    named[_join(name, key)] = tensor
    sparse_names = set(modules) | set(module_aliases)
    for key, tensor in model.state_dict(keep_vars=True).items():
        if _owner(key) not in sparse_names and within(key):
            named[key] = tensor
    nonpersistent = []
    for name, module in model.named_modules():
        if isinstance(module, SparseWeightModule):
            continue
        for buffer_name in sorted(module._non_persistent_buffers_set):
            buffer = module._buffers.get(buffer_name)
            key = _join(name, buffer_name)
            if buffer is not None and buffer.is_floating_point() and within(key):
                named[key] = buffer
                nonpersistent.append(key)

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    stored_by_identity: dict[tuple, str] = {}
    for key, tensor in named.items():
        identity = None
        if tensor.device.type != "meta" and tensor.numel():
            identity = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                        tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if identity is not None and identity in stored_by_identity:
            aliases[key] = stored_by_identity[identity]
            continue
        if identity is not None:
            stored_by_identity[identity] = key
        tensors[key] = _cpu(key, tensor)
    manifest = {key: {"dtype": stf.DTYPES.get(t.dtype, str(t.dtype)), "shape": list(t.shape), "crc32": stf.crc32(t)}
                for key, t in tensors.items() if t.dtype in stf.DTYPES}
    return CheckpointEntries(tensors, manifest, modules, module_aliases, aliases, nonpersistent)


def config_json(model: nn.Module) -> str:
    """The full config of a Hugging Face model as JSON: its checkpoint directory's config.json."""
    return model.config.to_json_string(use_diff=False)


def model_info(model: nn.Module) -> dict:
    """The metadata ``model`` of a checkpoint of ``model``: its class and, for a Hugging Face model,
    the class, the full config and the attention implementation."""
    info = {"class": type(model).__name__, "module": type(model).__module__}
    if _hf_pretrained(model):
        info["hf"] = {"class": type(model).__name__, "config": json.loads(config_json(model)),
                      "attn_implementation": getattr(model.config, "_attn_implementation", None)}
    return info


def checkpoint_metadata(info: dict, entries: CheckpointEntries) -> dict[str, str]:
    """The ``__metadata__`` of a checkpoint (see the module docstring) from its :func:`model_info`
    and entries. Its mappings are sorted by name, whatever order the entries were collected in."""
    import prunekit

    def mapping(entries: dict) -> str:
        return json.dumps(dict(sorted(entries.items())))

    return {
        "format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "prunekit_version": prunekit.__version__,
        "torch_version": torch.__version__, "model": json.dumps(info), "modules": mapping(entries.modules),
        "module_aliases": mapping(entries.module_aliases), "tensors": mapping(entries.manifest),
        "aliases": mapping(entries.aliases), "nonpersistent": json.dumps(sorted(entries.nonpersistent)),
    }


def _sparse_entry(name: str, module: SparseWeightModule, compress: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The spec and tensors of a sparse module: its weight in the smallest exact format (or, for
    compress="held", in the one it holds), its bias and low-rank factors."""
    held = module.format
    spec = module.checkpoint_spec()
    state = module.weight_state()
    stored = held
    if compress != "held":
        matrix = module.dense_matrix().detach().cpu()
        stored, _ = formats.smallest_storage(matrix)
        if stored != held:
            state = formats.get(stored).compress(matrix, f"save: module '{name}'", tuple(module.weight_shape))
    spec.update(format=stored, held=held, swappable=True)
    request = getattr(module, AUTO_ATTRIBUTE, None)
    if isinstance(request, dict):
        spec["auto"] = dict(request)
    entry = formats.get(stored).to_checkpoint(state)
    if module.bias is not None:
        entry["bias"] = module.bias
    entry.update(getattr(module, "lowrank_state", dict)())  # SparseLinear's low-rank compensation
    return spec, entry


_PLAIN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _plain_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The ordinary prunable layers a checkpoint may compress: reachable under one name, holding
    nothing but their weight, bias (and a LowRankLinear's factors), a floating-point weight with
    data that no other tensor of the model shares."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    identities = Counter(_identity(t) for t in model.state_dict(keep_vars=True).values())
    layers = {}
    for name, module in model.named_modules():
        if (not name or isinstance(module, SparseWeightModule) or not is_prunable(module) or module._modules
                or len(names[id(module)]) > 1):
            continue
        own = set(module.state_dict(keep_vars=True))
        allowed = {"weight", "bias"} | ({"lowrank_a", "lowrank_b"} if type(module) is LowRankLinear else set())
        weight = module.weight
        if (not own <= allowed or not isinstance(weight, torch.Tensor) or weight.device.type == "meta"
                or weight.dtype not in _PLAIN_DTYPES or identities[_identity(weight)] > 1):
            continue
        layers[name] = module
    return layers


def _identity(tensor: torch.Tensor) -> tuple:
    if tensor.device.type == "meta" or not tensor.numel():
        return ("unique", id(tensor))
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tuple(tensor.stride()), tensor.dtype)


def _plain_entry(name: str, module: nn.Module, model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """The spec and tensors of an ordinary layer stored compressed, or None where no compressed
    entry is smaller than its dense weight."""
    cls = SparseConv2d if isinstance(module, nn.Conv2d) else SparseLinear
    matrix = cls._matrix(module, "save")[0].detach().cpu()
    nonzeros = int(torch.count_nonzero(matrix))
    if nonzeros == matrix.numel():
        return None
    stored, _ = formats.smallest_storage(matrix, nonzeros)
    if stored == "dense":
        return None
    owner = f"save: module '{name}'"
    layer = cls.from_dense(module, stored if stored in HELD_FORMATS else "unstructured")
    state = layer.weight_state() if stored == layer.format else formats.get(stored).compress(
        matrix, owner, tuple(layer.weight_shape))
    spec = layer.checkpoint_spec()
    spec.update(format=stored, held="plain", plain_class=type(module).__name__,
                swappable=_plain_forward(module) and name not in _direct_weight_readers(model))
    request = getattr(module, AUTO_ATTRIBUTE, None)
    if isinstance(request, dict):
        spec["auto"] = dict(request)
    entry = formats.get(stored).to_checkpoint(state)
    if layer.bias is not None:
        entry["bias"] = module.bias
    entry.update(getattr(layer, "lowrank_state", dict)())
    return spec, entry


def _join(name: str, key: str) -> str:
    return f"{name}.{key}" if name else key


def _owner(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


# ----------------------------------------------------------------------------- read

def _weights_path(path: Path) -> Path:
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"load: argument 'path' is a directory, so it must hold {WEIGHTS_NAME}, but "
                                  f"{path} holds {sorted(p.name for p in path.iterdir())[:8]}")
        return weights
    if not path.exists():
        raise FileNotFoundError(f"load: argument 'path' must name a prunekit checkpoint, but {path} does not exist")
    return path


def read_info(path) -> dict:
    """The checked header of a checkpoint, without loading tensors: format version, versions,
    model info, sparse module specs, tensor manifest, aliases and the file's size."""
    weights = _weights_path(Path(path))
    header, metadata = stf.read_header(weights)
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"load: {weights} is not a prunekit checkpoint: expected metadata "
                              f"format={FORMAT_NAME!r}, but got {metadata.get('format')!r}")
    version = metadata.get("format_version")
    if version not in [str(v) for v in READ_VERSIONS]:
        newer = version is not None and version.isdigit() and int(version) > FORMAT_VERSION
        hint = " (written by a newer prunekit: upgrade prunekit)" if newer else ""
        raise CheckpointError(f"load: {weights} has checkpoint format_version {version!r}, but this prunekit reads "
                              f"versions {[str(v) for v in READ_VERSIONS]}{hint}")
    info = {"path": str(weights), "bytes": weights.stat().st_size, "format_version": int(version),
            "prunekit_version": metadata.get("prunekit_version"), "torch_version": metadata.get("torch_version")}
    for key in _JSON_KEYS:
        try:
            info[key] = json.loads(metadata[key])
        except (KeyError, json.JSONDecodeError) as error:
            raise CheckpointError(f"load: {weights} is corrupt: metadata '{key}' must be JSON, but {error!r}") from None
        kind = _JSON_TYPES[key]
        if not isinstance(info[key], kind):
            raise CheckpointError(f"load: {weights} is corrupt: metadata '{key}' must be a JSON "
                                  f"{'object' if kind is dict else 'array'}, but got {type(info[key]).__name__}")
        entry_kind = _JSON_ENTRY_TYPES.get(key)
        entries = info[key].values() if kind is dict else info[key]
        if entry_kind is not None and not all(isinstance(entry, entry_kind) for entry in entries):
            raise CheckpointError(f"load: {weights} is corrupt: the entries of metadata '{key}' must be JSON "
                                  f"{'objects' if entry_kind is dict else 'strings'}")
    manifest = info["tensors"]
    if set(manifest) != set(header):
        missing, extra = sorted(set(manifest) - set(header))[:5], sorted(set(header) - set(manifest))[:5]
        raise CheckpointError(f"load: {weights} is corrupt: the stored tensors must be those its metadata lists, but "
                              f"{missing} are missing and {extra} are not listed")
    for key, entry in header.items():
        if manifest[key].get("dtype") != entry["dtype"] or list(manifest[key].get("shape", [])) != list(entry["shape"]):
            raise CheckpointError(f"load: {weights} is corrupt: tensor '{key}' must be {manifest[key].get('dtype')} "
                                  f"of shape {manifest[key].get('shape')} (metadata), but the header says "
                                  f"{entry['dtype']} of shape {entry['shape']}")
    return info


def _read_tensors(weights: Path, info: dict, *, mmap: bool, verify: bool) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    tensors = {}
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as file:
            for key in file.keys():
                tensors[key] = file.get_tensor(key)
    except SafetensorError as error:
        raise CheckpointError(f"load: {weights} could not be read as safetensors: {error}") from None
    for key, tensor in tensors.items():
        entry = info["tensors"][key]
        if verify and stf.crc32(tensor) != entry.get("crc32"):
            raise CheckpointError(f"load: {weights} is corrupt: tensor '{key}' must have CRC-32 {entry.get('crc32')}, "
                                  f"but its bytes give {stf.crc32(tensor)}")
        if not mmap:
            tensors[key] = tensor.clone()
    return tensors


# ----------------------------------------------------------------------------- load

def load(path, model: nn.Module | None = None, *, mmap: bool = True, verify: bool = True, format: str = "auto",
         rows: int | None = None) -> nn.Module:
    """Loads a checkpoint written by :func:`save`.

    - ``path``: the file, or the directory of a Hugging Face checkpoint.
    - ``model``: a skeleton to load into (the same architecture: dense or already sparsified;
      its weights may be on the meta device). Without it, a Hugging Face checkpoint rebuilds its
      model from the stored config (transformers' class named in the checkpoint); other models
      need the skeleton.
    - ``mmap``: tensors stay copy-on-write memory maps of the file (else they are read into RAM).
    - ``verify``: check every tensor's CRC-32 (reads every byte once).
    - ``format``: the runtime format of each compressed layer. "auto" (default): what
      :func:`prunekit.nn.choose_format` picks on this machine (its kind of CPU kernels' break-even
      table; with the ``rows`` / ``break_even`` of the ``sparsify_`` call when one was recorded);
      a layer it keeps dense becomes an ordinary dense module, as ``sparsify_`` leaves it.
      "saved": the format each layer ran in when saved (an ordinary module stays one). "2:4",
      "unstructured": that format for every compressed layer that may be swapped (2:4 where the
      layout holds the weight, "unstructured" where only its size does not fit; a layer that is not
      2:4 is an error). "dense": ordinary dense modules. Layers saved as ordinary modules whose
      place a sparse module may not take (``swappable`` false) always load as ordinary modules. A
      format without a kernel on this machine loads dense (exactly) with a warning.
    - ``rows``: rows per call for "auto" (default: the recorded ``sparsify_`` rows, else
      :data:`prunekit.nn.DEFAULT_ROWS`).

    Returns the model (the skeleton itself when given, changed in place, in eval mode if it was
    rebuilt). Tied parameters (an LM head tied to the embedding) come back as one Parameter:
    those the checkpoint stores once, and those the model ties (a rebuilt one as its config says)
    whose stored tensors are equal. Every check runs before the model changes: a bad checkpoint
    or a mismatching skeleton raises a ``CheckpointError`` (a ``ValueError``) naming the file or
    argument, what was expected and what was found.
    """
    if not isinstance(path, (str, Path)) and not hasattr(path, "__fspath__"):
        raise TypeError(f"load: argument 'path' must be a str or os.PathLike, but got {type(path).__name__}")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"load: argument 'model' must be a torch.nn.Module or None, but got {type(model).__name__}")
    if format not in LOAD_FORMATS:
        raise ValueError(f"load: argument 'format' must be one of {LOAD_FORMATS}, but got {format!r}")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ValueError(f"load: argument 'rows' must be an int >= 1 or None, but got {rows!r}")
    weights = _weights_path(Path(path))
    info = read_info(weights)
    model_info = info["model"]
    rebuilt = model is None
    if rebuilt:
        model = _rebuild_hf(weights, model_info)
    else:
        _check_architecture(weights, model_info, model)
    tensors = _read_tensors(weights, info, mmap=mmap, verify=verify)
    _load_into(weights, info, tensors, model, format, rows)
    if rebuilt:
        model.eval()
    return model


def _check_architecture(weights: Path, model_info: dict, model: nn.Module) -> None:
    expected = model_info.get("class")
    if type(model).__name__ != expected:
        raise CheckpointError(f"load: argument 'model' must be a {expected} (the architecture the checkpoint {weights} "
                              f"was saved from), but got {type(model).__name__}")
    hf = model_info.get("hf")
    if hf is not None and hasattr(model, "config"):
        stored = hf["config"].get("model_type")
        actual = getattr(model.config, "model_type", None)
        if stored != actual:
            raise CheckpointError(f"load: argument 'model' must have config.model_type {stored!r} (as in {weights}), "
                                  f"but got {actual!r}")


def _rebuild_hf(weights: Path, model_info: dict) -> nn.Module:
    hf = model_info.get("hf")
    if hf is None:
        raise CheckpointError(f"load: {weights} holds a {model_info.get('class')} (not a Hugging Face model), so "
                              "argument 'model' must be a skeleton of it to load into, but got None")
    try:
        import transformers
    except ImportError as error:
        raise RuntimeError(f"load: {weights} holds a Hugging Face {hf.get('class')}; rebuilding it needs transformers "
                           "(pip install transformers), which is not installed") from error
    cls = getattr(transformers, str(hf.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise CheckpointError(f"load: {weights} names model class {hf.get('class')!r}, which must be a transformers "
                              f"PreTrainedModel class, but transformers {transformers.__version__} has none by that "
                              "name")
    try:
        config = cls.config_class.from_dict(dict(hf["config"]))
    except Exception as error:  # transformers raises many kinds for a bad config
        raise CheckpointError(f"load: the config stored in {weights} does not build a {cls.__name__} config: "
                              f"{error}") from error
    if hf.get("attn_implementation"):
        config._attn_implementation = hf["attn_implementation"]
    no_init = _no_init_weights()
    with no_init():
        model = cls(config)
    model.tie_weights()  # as from_pretrained does: a class built without initialisation is untied
    from ..surgery.layers import apply_recorded_removals  # a sublayer-pruned model (prune_layers)
    from ..surgery.slicing import restore_sliced_from_config  # a SliceGPT-sliced model (slice_)

    return restore_sliced_from_config(apply_recorded_removals(model))


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:  # pragma: no cover - very old transformers
            import contextlib
            return contextlib.nullcontext
    return no_init_weights


def _module_tensors(name: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = f"{name}." if name else ""
    return {key[len(prefix):]: t for key, t in tensors.items()
            if key.startswith(prefix) and "." not in key[len(prefix):]}


def _matrix_geometry(kind: str, spec: dict) -> tuple[int, int, tuple[int, ...]]:
    """(rows, cols, weight shape) of the weight matrix a spec of a ``kind`` module describes."""
    if kind == "SparseLinear":
        rows, cols = int(spec["out_features"]), int(spec["in_features"])
        return rows, cols, (rows, cols)
    kh, kw = (int(k) for k in spec["kernel_size"])
    rows, channels = int(spec["out_channels"]), int(spec["in_channels"])
    return rows, channels * kh * kw, (rows, channels, kh, kw)


def _build_sparse(weights: Path, name: str, spec: dict, tensors: dict[str, torch.Tensor]) -> SparseWeightModule:
    """The sparse module a spec and its stored tensors describe, holding the stored format (a
    stored format no module holds, e.g. "csr16", is converted exactly to "unstructured"): the
    module class and the format each read their part (geometry; the weight's tensors) and check it."""
    owner = f"load: sparse module '{name}' in {weights}"
    try:
        kind, fmt = spec["class"], spec["format"]
        dtype = _VALUE_DTYPES[spec["dtype"]]
        has_bias = bool(spec["bias"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{owner}: its spec must give class, format, dtype and bias, but got {spec!r} "
                              f"({error!r})") from None
    own = dict(tensors)
    bias = own.pop("bias", None)
    if has_bias != (bias is not None):
        raise CheckpointError(f"{owner}: expected {'a' if has_bias else 'no'} 'bias' tensor, but "
                              f"{'none' if bias is None else 'one'} is stored")
    lowrank = {key: own.pop(key) for key in ("lowrank_a", "lowrank_b") if key in own}
    rank = spec.get("lowrank_rank", 0)
    if (len(lowrank) == 2) != bool(rank) or (lowrank and lowrank["lowrank_a"].shape[0] != rank):
        raise CheckpointError(f"{owner}: its spec gives low-rank rank {rank}, but the stored low-rank factors are "
                              f"{ {key: tuple(t.shape) for key, t in lowrank.items()} }")
    if not isinstance(fmt, str):
        raise CheckpointError(f"{owner}: its spec's format must be a format name (one of {list(formats.names())}), "
                              f"but got {fmt!r}")
    if fmt not in formats.names():
        raise CheckpointError(f"{owner}: its weight is stored in format {fmt!r}, which this prunekit cannot read "
                              f"(it reads {list(formats.names())}): upgrade prunekit")
    try:
        cls = SparseWeightModule.checkpoint_class(kind)
        stored_format = formats.get(fmt)
        state = stored_format.from_checkpoint(own, owner)
        if fmt not in HELD_FORMATS:  # a storage-only format: exactly to the bitmap format
            rows, cols, weight_shape = _matrix_geometry(kind, spec)
            stored_format.check_state(owner, state, rows, cols, dtype, weight_shape)
            matrix = stored_format.to_dense(state, rows, cols)
            spec, state = {**spec, "format": "unstructured"}, formats.get("unstructured").compress(matrix, owner)
        module = cls.from_checkpoint_spec(spec, state, bias, dtype)
        if lowrank:
            module.set_lowrank(lowrank["lowrank_a"], lowrank["lowrank_b"])
        return module
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{owner}: its spec is incomplete: {error!r}") from None
    except ValueError as error:
        message = str(error)
        raise CheckpointError(message if message.startswith(owner) else f"{owner}: {message}") from None


def _kernel_family(module: SparseWeightModule) -> str:
    if isinstance(module, SparseLinear):
        return "linear"
    return "conv1x1" if getattr(module, "pointwise", False) else "conv"


def _runtime_format(weights: Path, name: str, spec: dict, module: SparseWeightModule, matrix, policy: str,
                    rows: int | None) -> str:
    """What layer ``name`` runs in after loading: "2:4", "unstructured", "dense" (a sparse module
    holding it dense) or "plain" (an ordinary dense module), by ``policy`` (load's ``format``)."""
    held = spec.get("held", spec["format"])
    if held == "plain" and not spec.get("swappable", True):
        return "plain"
    if policy == "saved":
        target = held
    elif policy == "dense":
        target = "plain"
    else:
        stats = WeightStats.of(matrix())
        if policy == "auto":
            request = spec.get("auto") if isinstance(spec.get("auto"), dict) else {}
            chosen, _ = choose_format(stats, _kernel_family(module), break_even=request.get("break_even"),
                                      rows=rows if rows is not None else request.get("rows"))
            target = "plain" if chosen == "dense" else chosen
        elif policy == "2:4":
            if not stats.is_24:
                raise CheckpointError(f"load: argument 'format' is '2:4', but layer '{name}' in {weights} is not 2:4 "
                                      "(more than two nonzeros in a group of four); load it with format='auto' or "
                                      "'unstructured'")
            target = "2:4" if stats.semi24_problem is None else "unstructured"
        else:
            target = policy
    if target in ("2:4", "unstructured"):
        problem = cpu_format_problem(target)
        if problem is not None:
            warnings.warn(f"load: layer '{name}' of {weights} would run in format {target!r}, but {problem}; it "
                          "runs as a dense module instead (exactly the same weights)", RuntimeWarning, stacklevel=4)
            target = "plain"
    return target


def _in_format(module: SparseWeightModule, matrix, fmt: str) -> SparseWeightModule:
    """``module`` holding its weight in ``fmt`` (itself when it does): exactly the same weight
    (``matrix()``), bias and low-rank factors."""
    if module.format == fmt:
        return module
    state = formats.get(fmt).compress(matrix(), f"load: {type(module).__name__}",
                                      tuple(module.weight_shape))
    spec = {**module.checkpoint_spec(), "format": fmt}
    converted = type(module).from_checkpoint_spec(spec, state, module.bias, module.weight_dtype)
    lowrank = getattr(module, "lowrank_state", dict)()
    if lowrank:
        converted.set_lowrank(lowrank["lowrank_a"], lowrank["lowrank_b"])
    return converted


def _plain_state(module: SparseWeightModule, matrix, target: nn.Module) -> dict[str, torch.Tensor] | None:
    """The state_dict to assign to an ordinary module ``target`` for the weight ``module`` holds,
    in ``target``'s own layout (Conv1D: transposed; Conv2d: 4-D), or None where ``target``'s
    state does not have exactly those tensors."""
    if isinstance(target, SparseWeightModule):
        return None
    current = target.state_dict(keep_vars=True)
    weight = current.get("weight")
    if not isinstance(weight, torch.Tensor):
        return None
    if is_hf_conv1d(target):
        dense = matrix().t().contiguous()
    else:
        dense = matrix().reshape(module.weight_shape)
    state = {"weight": dense}
    if module.bias is not None:
        state["bias"] = module.bias
    state.update(getattr(module, "lowrank_state", dict)())
    if set(state) != set(current) or any(tuple(current[key].shape) != tuple(t.shape) for key, t in state.items()):
        return None
    return state


def _check_fits(weights: Path, name: str, target: nn.Module, built: SparseWeightModule) -> None:
    """The skeleton's module at ``name`` must have the sparse module's geometry."""
    where = f"load: module '{name}' of argument 'model'"
    shape = type(built).geometry_of(target)
    if shape is None:
        raise CheckpointError(f"{where} must be {built.REPLACES} (as in {weights}), but got {type(target).__name__}")
    expected = built.geometry()
    if tuple(shape) != tuple(expected):
        raise CheckpointError(f"{where} must have {built.GEOMETRY} = {expected} as in {weights}, but got "
                              f"{tuple(shape)}")
    if (getattr(target, "bias", None) is not None) != (built.bias is not None):
        raise CheckpointError(f"{where} must {'have' if built.bias is not None else 'have no'} bias as in {weights}, "
                              f"but it {'has none' if built.bias is not None else 'has one'}")


def _once(compute):
    """``compute`` as a function that computes on its first call and then returns that result."""
    results = []

    def once():
        if not results:
            results.append(compute())
        return results[0]

    return once


def _load_into(weights: Path, info: dict, tensors: dict[str, torch.Tensor], model: nn.Module, policy: str = "saved",
               rows: int | None = None) -> None:
    specs, module_aliases = info["modules"], info["module_aliases"]
    aliases, nonpersistent = info["aliases"], set(info["nonpersistent"])
    sparse_names = set(specs) | set(module_aliases)
    # 1. compressed layers, built in their runtime format and checked against the skeleton
    built: dict[str, nn.Module] = {}  # name -> the module to put at its places
    assigned: dict[str, tuple[nn.Module, dict[str, torch.Tensor]]] = {}  # place -> (ordinary module, its state)
    for name, spec in specs.items():
        module = _build_sparse(weights, name, spec, _module_tensors(name, tensors))
        places = [name] + [alias for alias, target in module_aliases.items() if target == name]
        targets = {}
        for place in places:
            try:
                target = model.get_submodule(place) if place else model
            except AttributeError:
                raise CheckpointError(f"load: argument 'model' must have a module '{place}' (a sparse module in "
                                      f"{weights}), but it has none: another architecture or configuration?") from None
            _check_fits(weights, place, target, module)
            targets[place] = target
        matrix = _once(module.dense_matrix)  # the exact dense weight, expanded at most once
        runtime = _runtime_format(weights, name, spec, module, matrix, policy, rows)
        request = spec.get("auto") if isinstance(spec.get("auto"), dict) else None
        if runtime != "plain":
            built[name] = _in_format(module, matrix, runtime)
        else:
            for place, target in targets.items():
                state = _plain_state(module, matrix, target)
                if state is not None:
                    assigned[place] = (target, state)
            if len(assigned.keys() & set(places)) != len(places):  # a place the skeleton cannot take it in
                for place in places:
                    assigned.pop(place, None)
                built[name] = module.to_dense()
        if request is not None and name in built:
            setattr(built[name], AUTO_ATTRIBUTE, dict(request))
        elif request is not None:
            for place in places:
                setattr(assigned[place][0], AUTO_ATTRIBUTE, dict(request))
    # 2. everything else against the skeleton's state_dict
    stored = {key: t for key, t in tensors.items() if _owner(key) not in sparse_names and key not in nonpersistent}
    for alias, key in aliases.items():
        if key not in tensors:
            raise CheckpointError(f"load: {weights} is corrupt: alias '{alias}' must name a stored tensor, but '{key}' "
                                  "is not stored")
        if _owner(alias) not in sparse_names and alias not in nonpersistent:
            stored[alias] = tensors[key]
    expected = {key: t for key, t in model.state_dict(keep_vars=True).items() if _owner(key) not in sparse_names}
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"load: argument 'model' must have the state_dict keys stored in {weights} (the same "
                              f"architecture and configuration), but {len(missing)} of its keys are not stored "
                              f"{missing[:5]} and {len(unexpected)} stored keys are not in it {unexpected[:5]}")
    for key, tensor in stored.items():
        if tuple(expected[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"load: tensor '{key}' of argument 'model' must have shape {tuple(tensor.shape)} as "
                                  f"in {weights}, but has {tuple(expected[key].shape)}")
    buffers = {}
    for key in nonpersistent:
        owner, _, buffer_name = key.rpartition(".")
        try:
            module = model.get_submodule(owner) if owner else model
        except AttributeError:
            module = None
        current = None if module is None else module._buffers.get(buffer_name)
        if current is None or tuple(current.shape) != tuple(tensors[key].shape):
            logger.warning("load: non-persistent buffer %s of %s does not fit argument 'model'; kept its own", key,
                           weights)
            continue
        buffers[key] = (module, buffer_name)
    tied = _tied_groups(weights, model, stored)
    # 3. change the model
    for name, module in built.items():
        module.train(model.training)
        for place in [name] + [alias for alias, target in module_aliases.items() if target == name]:
            _set_submodule(model, place, module)
    for place, (target, state) in assigned.items():
        target.load_state_dict(state, strict=True, assign=True)
    model.load_state_dict(stored, strict=False, assign=True)
    for key, (module, buffer_name) in buffers.items():
        module._buffers[buffer_name] = tensors[key]
    _retie(model, tied)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _tied_groups(weights: Path, model: nn.Module, stored: dict[str, torch.Tensor]) -> list[list[str]]:
    """The parameter names to tie into one Parameter after loading (tied weights), each group in
    the model's order: parameters whose stored tensor is one (an alias in ``stored`` holds its
    key's tensor: one Parameter, or views of the same data, when saved), and parameters ``model``
    ties whose stored tensors are equal (a checkpoint written part by part stores a tie across
    parts once per part). A tie of ``model`` whose stored tensors differ is dropped (each
    parameter gets its own tensor, as transformers' from_pretrained does), with a warning."""
    order: dict[str, int] = {}
    by_object: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in stored:
            order[name] = len(order)
            by_object.setdefault(id(param), []).append(name)
    root = {name: name for name in order}

    def find(name: str) -> str:
        while root[name] != name:
            name = root[name]
        return name

    def join(names: list[str]) -> None:
        for name in names[1:]:
            root[find(name)] = find(names[0])

    by_tensor: dict[int, list[str]] = {}
    for name in order:
        by_tensor.setdefault(id(stored[name]), []).append(name)
    for names in by_tensor.values():
        join(names)
    for names in by_object.values():
        if all(_same_values(stored[name], stored[names[0]]) for name in names[1:]):
            join(names)
        else:
            logger.warning("load: the model ties parameters %s, but %s stores different tensors for them; each "
                           "gets its own (untied)", names, weights)
    groups: dict[str, list[str]] = {}
    for name in order:  # the first name of a group keeps its Parameter
        groups.setdefault(find(name), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b))


def _retie(model: nn.Module, groups: list[list[str]]) -> None:
    for names in groups:
        try:
            first = model.get_parameter(names[0])
        except AttributeError:
            continue
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            if isinstance(module._parameters.get(attr), nn.Parameter):
                module._parameters[attr] = first
