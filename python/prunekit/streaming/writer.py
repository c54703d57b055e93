"""The output directory of a streamed run, written atomically.

Everything goes into a hidden staging directory beside the target (``.NAME.partial-XXXX``); only
when every file is written and fsynced is it renamed to the target name. Any error (a full disk, an
interrupt) removes the staging directory, so the target name never holds a half-written model.

Two kinds of output: Hugging Face shards (:class:`ShardWriter`: masked dense weights, one shard
per unit, and the index) or a prunekit checkpoint (:class:`CheckpointWriter`: what
``prunekit.save`` writes, ``model.prunekit.safetensors``). A unit is a block, or the rest of the
model.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..io import checkpoint
from ..io import safetensors_file as stf
from .source import INDEX_FILE


class OutputWriter:
    """The staging directory of the output (``out``) and its files other than the weights; the
    subclasses write the weights, one unit at a time, and :meth:`commit` them."""

    def __init__(self, out: str | os.PathLike, units: int):
        self.out = Path(out)
        check_output_path(self.out)
        try:
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        except OSError as error:
            raise ValueError(f"prune_pretrained: argument 'out' must be in a writable directory, but creating a "
                             f"directory in {os.fspath(self.out.parent)!r} failed: {error.strerror or error}") from None
        self.units = units
        self.written: set[int] = set()

    def _writing_unit(self, unit: int, what: str) -> None:
        if unit in self.written:
            raise RuntimeError(f"prune_pretrained: {what} was written twice")

    def write_text(self, name: str, text: str) -> None:
        with self._io(name):
            stf.write_text(self.staging / name, text, overwrite=False)

    def copy_file(self, source: Path) -> None:
        with self._io(source.name):
            shutil.copy2(source, self.staging / source.name)

    def _check_complete(self, name) -> None:
        missing = [unit for unit in range(self.units) if unit not in self.written]
        if missing:
            raise RuntimeError(f"prune_pretrained: {[name(u) for u in missing]} were never written")

    def _publish(self) -> Path:
        """Renames the staging directory to ``out``."""
        check_output_path(self.out)  # nothing appeared there meanwhile
        with self._io("the rename of the finished output"):
            os.rename(self.staging, self.out)
            stf._fsync_directory(self.out.parent)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def _io(self, what: str):
        return _WrappedOSError(f"prune_pretrained: writing {what} into {os.fspath(self.staging)!r} (the staging "
                               f"directory of {os.fspath(self.out)!r}) failed")


class ShardWriter(OutputWriter):
    """Masked dense Hugging Face shards (one per unit) and their index."""

    def __init__(self, out: str | os.PathLike, units: int):
        super().__init__(out, units)
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0

    def shard_name(self, unit: int) -> str:
        return f"model-{unit + 1:05d}-of-{self.units:05d}.safetensors"

    def write_unit(self, unit: int, tensors: dict[str, torch.Tensor], what: str) -> None:
        """Writes one unit's tensors (CPU, any layout) as its shard."""
        self._writing_unit(unit, what)
        name = self.shard_name(unit)
        tensors = {key: tensor.detach().to("cpu").contiguous() for key, tensor in tensors.items()}
        with self._io(f"the weights of {what}"):
            stf.write(self.staging / name, tensors, {"format": "pt"}, overwrite=False)
        for key, tensor in tensors.items():
            self.weight_map[key] = name
            self.total_bytes += tensor.numel() * tensor.element_size()
        self.written.add(unit)

    def commit(self) -> Path:
        """Writes the index and renames the staging directory to ``out``."""
        self._check_complete(self.shard_name)
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(self.weight_map.items()))}
        self.write_text(INDEX_FILE, json.dumps(index, indent=2) + "\n")
        return self._publish()


class CheckpointWriter(OutputWriter):
    """A prunekit checkpoint, as :func:`prunekit.save` writes it (``model.prunekit.safetensors``),
    written one unit at a time: each unit's stored tensors go to a staging file of their own and
    its specs and manifest (:class:`prunekit.io.checkpoint.CheckpointEntries`) stay in memory; at
    the end the file is assembled from them (header from every unit's entries, the tensors' bytes
    copied in bounded chunks) and the staging files are removed."""

    def __init__(self, out: str | os.PathLike, units: int):
        super().__init__(out, units)
        self.entries: dict[int, checkpoint.CheckpointEntries] = {}

    def unit_name(self, unit: int) -> str:
        return f"unit-{unit + 1:05d}-of-{self.units:05d}.safetensors"

    def write_unit(self, unit: int, entries: checkpoint.CheckpointEntries, what: str) -> None:
        """Writes one unit's stored tensors to its staging file and keeps the rest of its entries."""
        self._writing_unit(unit, what)
        with self._io(f"the weights of {what}"):
            stf.write(self.staging / self.unit_name(unit), entries.tensors, {}, overwrite=False)
        self.entries[unit] = entries.without_tensors()
        self.written.add(unit)

    def commit(self, model_info: dict) -> Path:
        """Assembles the checkpoint (``model_info``: its metadata ``model``) and renames the staging
        directory to ``out``."""
        self._check_complete(self.unit_name)
        entries = checkpoint.CheckpointEntries.merge([self.entries[unit] for unit in range(self.units)])
        spans = {}
        for unit in range(self.units):
            spans.update(stf.tensor_spans(self.staging / self.unit_name(unit)))
        with self._io(checkpoint.WEIGHTS_NAME):
            stf.write_spans(self.staging / checkpoint.WEIGHTS_NAME, spans,
                            checkpoint.checkpoint_metadata(model_info, entries), overwrite=False)
            for unit in range(self.units):
                (self.staging / self.unit_name(unit)).unlink()
        return self._publish()


class _WrappedOSError:
    """Re-raises an OSError with the operation named; the output is removed by the caller."""

    def __init__(self, message: str):
        self.message = message

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, OSError) and not isinstance(error, stf.CheckpointError):
            reason = error.strerror or str(error)
            hint = " (the disk is full)" if error.errno == errno.ENOSPC else ""
            raise OSError(error.errno, f"{self.message}: {reason}{hint}; no output was left behind") from error
        return False


def check_output_path(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise ValueError(f"prune_pretrained: argument 'out' must not exist (the output is written to a new "
                         f"directory), but {os.fspath(out)!r} exists")
    if not out.parent.is_dir():
        raise ValueError(f"prune_pretrained: the parent of argument 'out' must be an existing directory, but "
                         f"{os.fspath(out.parent)!r} is not one")
