"""Writing and validating safetensors files without pickle, without holding a second copy of
the tensors, and without ever leaving a half-written file under the target name.

Writing streams each tensor's bytes into a temporary file in the target's directory, fsyncs it
and renames it into place (``os.replace``, or ``os.link`` when an existing file must not be
replaced, so that even a file created meanwhile is never clobbered), then fsyncs the directory.
A crash at any point leaves the previous file (or no file) under the target name.

Reading parses and checks the header here (size, JSON, dtypes, shapes against byte spans, spans
tiling the data exactly, the file's length) before the file is memory-mapped by the
``safetensors`` library.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .._names import dtype_name

DTYPES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
    torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64",
}
for _name, _code in (("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"), ("float8_e4m3fn", "F8_E4M3"),
                     ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        DTYPES[getattr(torch, _name)] = _code
DTYPE_OF_CODE = {code: dtype for dtype, code in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read: the message names the argument or file, what
    was expected and what was found."""


@dataclass(frozen=True)
class TensorSpan:
    """Where one tensor's bytes are: its file, absolute byte span, dtype and shape."""

    key: str
    path: Path
    begin: int
    end: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without a copy."""
    flat = tensor.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return memoryview(flat.numpy()).cast("B")


def crc32(tensor: torch.Tensor) -> int:
    return zlib.crc32(tensor_bytes(tensor)) & 0xFFFFFFFF


def _header(specs: dict[str, tuple[torch.dtype, tuple[int, ...]]], metadata: dict[str, str]) -> tuple[bytes, list[str]]:
    """The first bytes of a safetensors file holding tensors of these (dtype, shape) with ``metadata``
    (the length, then the JSON header, padded so that the data start 8-byte aligned), and the order
    of the tensors' data: by decreasing element size, then key, so every tensor starts aligned to
    its element size."""
    order = sorted(specs, key=lambda k: (-specs[k][0].itemsize, k))
    header: dict = {"__metadata__": metadata}
    offset = 0
    for key in order:
        dtype, shape = specs[key]
        size = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(blob)) + blob, order


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, overwrite: bool) -> None:
    """Writes ``tensors`` (contiguous CPU tensors) and ``metadata`` as a safetensors file at
    ``path``, atomically (see the module docstring), laid out as :func:`_header` says."""
    for key, tensor in tensors.items():
        if tensor.dtype not in DTYPES:
            raise CheckpointError(f"save: tensor '{key}' has dtype {tensor.dtype}, which safetensors cannot store "
                                  f"(supported: {sorted(dtype_name(d) for d in DTYPES)})")
    prefix, order = _header({key: (t.dtype, tuple(t.shape)) for key, t in tensors.items()}, metadata)
    with atomic_file(path, "wb", overwrite=overwrite) as file:
        file.write(prefix)
        for key in order:
            if tensors[key].numel():
                file.write(tensor_bytes(tensors[key]))


COPY_CHUNK_BYTES = 16 << 20  # what write_spans holds in memory at a time


def write_spans(path: Path, spans: dict[str, TensorSpan], metadata: dict[str, str], *, overwrite: bool) -> None:
    """Writes the safetensors file that :func:`write` would write for these tensors, each tensor's
    bytes copied from its span of another file (:func:`tensor_spans`) in chunks of at most
    :data:`COPY_CHUNK_BYTES`: a file of any size is assembled without holding a tensor in memory."""
    prefix, order = _header({key: (span.dtype, span.shape) for key, span in spans.items()}, metadata)
    largest = max((span.end - span.begin for span in spans.values()), default=0)
    buffer = memoryview(bytearray(max(1, min(COPY_CHUNK_BYTES, largest))))
    with atomic_file(path, "wb", overwrite=overwrite) as file, contextlib.ExitStack() as sources:
        opened = {}
        file.write(prefix)
        for key in order:
            span = spans[key]
            if span.path not in opened:
                opened[span.path] = sources.enter_context(open(span.path, "rb"))
            source = opened[span.path]
            source.seek(span.begin)
            remaining = span.end - span.begin
            while remaining:
                got = source.readinto(buffer[:min(remaining, len(buffer))])
                if not got:
                    raise CheckpointError(f"save: {span.path} is truncated: tensor '{key}' needs bytes up to "
                                          f"{span.end}, but the file ends before")
                file.write(buffer[:got])
                remaining -= got


def write_text(path: Path, text: str, *, overwrite: bool) -> None:
    """Writes a small text file atomically (temporary file, fsync, rename)."""
    with atomic_file(path, "w", overwrite=overwrite) as file:
        file.write(text)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str, *, overwrite: bool):
    """A file object on a temporary file beside ``path``; when the block ends without an error
    the file is flushed, fsynced and published to ``path`` (see :func:`publish`); on any error
    (a crash, KeyboardInterrupt) the temporary file is removed and ``path`` is untouched."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        publish(temp, path, overwrite=overwrite)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def publish(temp: Path, path: Path, *, overwrite: bool) -> None:
    """Moves the finished ``temp`` to ``path``. Without ``overwrite`` an existing ``path`` (even
    one created after the caller checked) is never replaced."""
    if overwrite:
        os.replace(temp, path)
    else:
        try:
            os.link(temp, path)  # atomic, and fails if path exists
        except FileExistsError:
            raise CheckpointError(f"save: argument 'path' must not exist (pass overwrite=True to replace it), but "
                                  f"{path} exists") from None
        except OSError:  # a file system without hard links: check, then rename
            if path.exists():
                raise CheckpointError(f"save: argument 'path' must not exist (pass overwrite=True to replace it), "
                                      f"but {path} exists") from None
            os.replace(temp, path)
        else:
            temp.unlink()
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_header(path: Path) -> tuple[dict, dict[str, str]]:
    """(tensor entries, metadata) of the safetensors file at ``path``, after checking that the
    header is well formed and that the file is exactly as long as the header says."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"load: {path} is truncated: expected at least 8 bytes (the header length), but the "
                                  f"file has {size}")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise CheckpointError(f"load: {path} is not a safetensors file or is corrupt: header length must be at "
                                  f"most {MAX_HEADER_BYTES} bytes, but got {length}")
        if 8 + length > size:
            raise CheckpointError(f"load: {path} is truncated: expected a {length}-byte header after 8 bytes, but the "
                                  f"file has {size} bytes")
        raw = file.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"load: {path} is corrupt: its header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"load: {path} is corrupt: its header must be a JSON object, but got "
                              f"{type(header).__name__}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"load: {path} is corrupt: '__metadata__' must map strings to strings")
    spans = []
    for key, entry in header.items():
        try:
            dtype = DTYPE_OF_CODE[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            begin, end = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"load: {path} is corrupt: the header entry of tensor '{key}' must have a known "
                                  f"dtype, a shape and two data_offsets, but got {entry!r}") from None
        numel = 1
        for d in shape:
            if d < 0:
                raise CheckpointError(f"load: {path} is corrupt: tensor '{key}' has a negative dimension in shape "
                                      f"{shape}")
            numel *= d
        expected = numel * dtype.itemsize
        if end - begin != expected:
            raise CheckpointError(f"load: {path} is corrupt: tensor '{key}' ({entry['dtype']}, shape {shape}) must "
                                  f"span {expected} bytes, but its data_offsets span {end - begin}")
        spans.append((begin, end, key))
    spans.sort()
    position = 0
    for begin, end, key in spans:
        if begin != position:
            raise CheckpointError(f"load: {path} is corrupt: tensor '{key}' must start at byte {position} of the data, "
                                  f"but starts at {begin}")
        position = end
    expected_size = 8 + length + position
    if size < expected_size:
        raise CheckpointError(f"load: {path} is truncated: expected {expected_size} bytes, but the file has {size}")
    if size > expected_size:
        raise CheckpointError(f"load: {path} is corrupt: expected {expected_size} bytes, but the file has {size} "
                              "(trailing data)")
    return header, metadata


def tensor_spans(path: Path) -> dict[str, TensorSpan]:
    """Where each tensor of the safetensors file at ``path`` is (after :func:`read_header`'s checks)."""
    header, _ = read_header(path)
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
    start = 8 + length
    spans = {}
    for key, entry in header.items():
        begin, end = (int(v) for v in entry["data_offsets"])
        spans[key] = TensorSpan(key, path, start + begin, start + end, DTYPE_OF_CODE[entry["dtype"]],
                                tuple(int(d) for d in entry["shape"]))
    return spans
