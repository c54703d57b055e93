"""The weights of a Hugging Face model directory, read one tensor at a time.

A directory holds ``model.safetensors`` or shards listed by ``model.safetensors.index.json``. Every
file's header is parsed and checked when the source is opened (a missing or truncated shard is an
error before anything is computed); tensors are then read with plain reads into fresh memory (no
memory map stays open, so pages of the files never count towards this process's resident memory).
The files are only ever opened for reading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..io import safetensors_file as stf
from ..io.checkpoint import WEIGHTS_NAME as PRUNEKIT_WEIGHTS_NAME

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class SourceError(ValueError):
    """A model directory that cannot be streamed: the message names the file, what was expected and
    what was found."""


class SafetensorsSource:
    """The tensors of a Hugging Face model directory (single or sharded safetensors), checked."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise SourceError(f"prune_pretrained: argument 'path' must be a model directory, but "
                              f"{os.fspath(self.directory)!r} is not a directory")
        if not (self.directory / "config.json").is_file():
            raise SourceError(f"prune_pretrained: argument 'path' must hold config.json, but "
                              f"{os.fspath(self.directory)!r} has none")
        self.files = self._weight_files()
        self.entries: dict[str, stf.TensorSpan] = {}
        for path in self.files:
            for key, entry in stf.tensor_spans(path).items():  # checks spans, dtypes and the exact file length
                if key in self.entries:
                    raise SourceError(f"prune_pretrained: tensor '{key}' must be stored once, but it is in both "
                                      f"{self.entries[key].path.name} and {path.name}")
                self.entries[key] = entry

    def _weight_files(self) -> list[Path]:
        index = self.directory / INDEX_FILE
        single = self.directory / SINGLE_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                names = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                raise SourceError(f"prune_pretrained: {os.fspath(index)!r} must be a JSON index with a "
                                  f"'weight_map' of tensor names to shard files, but it cannot be read ({error!r})"
                                  ) from None
            missing = [name for name in names if not (self.directory / name).is_file()]
            if missing:
                raise SourceError(f"prune_pretrained: the shards listed in {os.fspath(index)!r} must all exist, but "
                                  f"{missing} are missing")
            self._index_map = dict(weight_map)
            return [self.directory / name for name in names]
        if single.is_file():
            self._index_map = None
            return [single]
        if (self.directory / PRUNEKIT_WEIGHTS_NAME).is_file():
            raise SourceError(f"prune_pretrained: {os.fspath(self.directory)!r} is a prunekit compressed checkpoint; "
                              "streaming reads Hugging Face safetensors directories (load it with prunekit.load and "
                              "prune it in memory, or save it with save_pretrained first)")
        held = sorted(p.name for p in self.directory.iterdir())[:8]
        raise SourceError(f"prune_pretrained: argument 'path' must hold {SINGLE_FILE} or {INDEX_FILE} (safetensors "
                          f"weights), but {os.fspath(self.directory)!r} holds {held}")

    def check_index(self) -> None:
        """Every tensor the index names is in the shard it names."""
        if self._index_map is None:
            return
        for key, name in self._index_map.items():
            entry = self.entries.get(key)
            if entry is None or entry.path.name != name:
                where = "no shard" if entry is None else entry.path.name
                raise SourceError(f"prune_pretrained: {INDEX_FILE} says tensor '{key}' is in {name}, but it is in "
                                  f"{where}")

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def keys(self) -> list[str]:
        return list(self.entries)

    def read(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A fresh CPU tensor with the stored bytes of ``key`` (converted to ``dtype`` if given)."""
        entry = self.entries[key]
        size = entry.end - entry.begin
        raw = torch.empty(size, dtype=torch.uint8)
        with open(entry.path, "rb") as file:
            file.seek(entry.begin)
            got = file.readinto(memoryview(raw.numpy())) if size else 0
        if got != size:  # the file shrank after it was checked
            raise SourceError(f"prune_pretrained: {os.fspath(entry.path)!r} is truncated: tensor '{key}' needs "
                              f"{size} bytes from byte {entry.begin}, but only {got} could be read")
        tensor = raw.view(entry.dtype).reshape(entry.shape)
        if dtype is not None and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        return tensor

    def weight_file_names(self) -> set[str]:
        names = {path.name for path in self.files}
        if self._index_map is not None:
            names.add(INDEX_FILE)
        return names
