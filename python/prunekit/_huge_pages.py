"""Backing the tensors the CPU kernels stream (compressed weights) with 2 MiB transparent huge pages.

A batch-1 sparse GEMV reads its whole compressed weight on every call. With 4 KiB pages every
4 KiB of it is a TLB miss and a page walk (two-level in a VM), on top of the read itself, which
huge pages save (figures in docs/performance.md; torch's allocator uses huge pages only with
THP_MEM_ALLOC_ENABLE=1).

The memory stays the tensor's own (no copy, no new storage, nothing changes for autograd,
state_dict, share_memory or in-place updates): Linux is asked to collapse the whole 2 MiB blocks
inside it into huge pages (madvise MADV_COLLAPSE, Linux 6.1+; on older kernels MADV_HUGEPAGE,
which khugepaged acts on later). The part of a tensor before its first and after its last 2 MiB
boundary stays on 4 KiB pages, so a tensor under 4 MiB may gain nothing. Best effort: on other
systems, for memory Linux cannot collapse (shared memory, files) or with THP disabled, nothing
changes.
"""

from __future__ import annotations

import ctypes
import sys

import torch

HUGE_PAGE_BYTES = 2 << 20
_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25

_madvise = None


def _libc_madvise():
    global _madvise
    if _madvise is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise.restype = ctypes.c_int
        _madvise = libc.madvise
    return _madvise


def huge_page_span(tensor: torch.Tensor) -> tuple[int, int]:
    """(address, bytes) of the whole 2 MiB blocks inside ``tensor``'s memory; bytes 0 if none."""
    start = tensor.data_ptr()
    end = start + tensor.nbytes
    first = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    last = end // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    return first, max(0, last - first)


def use_huge_pages(*tensors: torch.Tensor | None) -> int:
    """Asks Linux to back the whole 2 MiB blocks of each contiguous CPU tensor with huge pages
    (see the module docstring); returns how many bytes it accepted the request for. None entries
    and other tensors are skipped."""
    if not sys.platform.startswith("linux"):
        return 0
    accepted = 0
    for tensor in tensors:
        if tensor is None or tensor.device.type != "cpu" or not tensor.is_contiguous():
            continue
        address, length = huge_page_span(tensor)
        if length == 0:
            continue
        madvise = _libc_madvise()
        if madvise(address, length, _MADV_COLLAPSE) == 0 or madvise(address, length, _MADV_HUGEPAGE) == 0:
            accepted += length
    return accepted


def aligned_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of a CPU tensor that starts on a 2 MiB boundary, its whole 2 MiB blocks on
    huge pages as far as the OS allows: for tensors a module derives for its kernels and keeps to
    itself. The copy is a view into a buffer up to 2 MiB larger, whose extra part is never touched
    (and so never backed by memory)."""
    nbytes = tensor.nbytes
    if tensor.device.type != "cpu" or nbytes < HUGE_PAGE_BYTES:
        return tensor.clone(memory_format=torch.contiguous_format)
    buffer = torch.empty(nbytes + HUGE_PAGE_BYTES, dtype=torch.uint8)
    skip = -buffer.data_ptr() % HUGE_PAGE_BYTES
    copy = buffer[skip:skip + nbytes].view(tensor.dtype).view(tensor.shape)
    use_huge_pages(copy)  # before the copy fills it: the pages are then huge from the start
    return copy.copy_(tensor)
