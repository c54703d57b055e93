"""Calibration activations kept on disk: a block input whose hidden states live in a file.

The walk touches one item's hidden states at a time (it runs the block over the items in turn and
replaces each item's inputs by the block's outputs), so keeping them in files bounds the resident
activations to one item's, whatever the number of calibration tokens. Reads and writes are plain
file I/O (the page cache may hold the bytes, but they never count towards this process's resident
memory and the kernel drops them under pressure).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..calibrate.pipeline import BlockInput


class ActivationStore:
    """Files in a private temporary directory under ``directory``, removed by :meth:`close`."""

    def __init__(self, directory: str | os.PathLike):
        directory = Path(directory)
        if not directory.is_dir():
            raise ValueError(f"prune_pretrained: argument 'offload_dir' must be an existing directory, but "
                             f"{os.fspath(directory)!r} is not one")
        try:
            self.root = Path(tempfile.mkdtemp(prefix=".prunekit-activations-", dir=directory))
        except OSError as error:
            raise ValueError(f"prune_pretrained: argument 'offload_dir' must be writable, but creating a directory in "
                             f"{os.fspath(directory)!r} failed: {error.strerror or error}") from None
        self.count = 0

    def keep(self, item: BlockInput) -> BlockInput:
        """``item`` with its hidden states moved to a new file."""
        self.count += 1
        return OffloadedBlockInput(item, self.root / f"item-{self.count:06d}.bin")

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class OffloadedBlockInput(BlockInput):
    """A :class:`BlockInput` whose ``hidden`` is read from its file on every access and written to
    it on every assignment (the walk assigns each block's outputs in place of its inputs)."""

    def __init__(self, item: BlockInput, path: Path):
        self._path = path
        self._spec: tuple[tuple[int, ...], torch.dtype, torch.device] | None = None
        super().__init__(item.hidden, item.args, item.kwargs, item.token_mask)

    def __del__(self):
        # a finished walk's activations need no disk space until the store is closed
        try:
            os.unlink(self._path)
        except (OSError, AttributeError):
            pass

    @property
    def hidden(self) -> torch.Tensor:
        shape, dtype, device = self._spec
        value = torch.empty(shape, dtype=dtype)
        raw = value.reshape(-1).view(torch.uint8)
        with open(self._path, "rb") as file:
            got = file.readinto(memoryview(raw.numpy())) if raw.numel() else 0
        if got != raw.numel():
            raise OSError(f"prune_pretrained: the offloaded activations {os.fspath(self._path)!r} must hold "
                          f"{raw.numel()} bytes, but only {got} could be read")
        return value.to(device)

    @hidden.setter
    def hidden(self, value: torch.Tensor) -> None:
        value = value.detach()
        host = value.to("cpu").contiguous()
        with open(self._path, "wb") as file:
            if host.numel():
                file.write(memoryview(host.reshape(-1).view(torch.uint8).numpy()))
        self._spec = (tuple(value.shape), value.dtype, value.device)
