"""Compressed weights on 2 MiB huge pages: the C++ compress ops' allocations, prunekit._huge_pages,
and what SparseLinear does with them. Placement must never change a value or a storage's behaviour."""

import io
import sys
from pathlib import Path

import pytest
import torch

from prunekit import ops
from prunekit._huge_pages import HUGE_PAGE_BYTES, aligned_copy, huge_page_span, use_huge_pages
from prunekit.nn import SparseLinear

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
needs_thp = pytest.mark.skipif(not sys.platform.startswith("linux") or not THP.exists()
                               or "[never]" in THP.read_text(), reason="needs Linux with transparent huge pages")


def huge_page_state(tensor: torch.Tensor) -> tuple[int, bool]:
    """(bytes of huge pages, whether every mapping is advised MADV_HUGEPAGE) that Linux reports
    (/proc/self/smaps) for the mappings holding the whole 2 MiB blocks of ``tensor``."""
    start, length = huge_page_span(tensor)
    end = start + length
    huge, advised, inside = 0, True, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            low, high = (int(part, 16) for part in head.split("-"))
            inside = low < end and start < high
        elif inside and line.startswith("AnonHugePages:"):
            huge += int(line.split()[1]) * 1024
        elif inside and line.startswith("VmFlags:"):
            advised &= "hg" in line.split()[1:]
    return huge, advised


def big_sparse(rows=2048, cols=4096, sparsity=0.5, dtype=torch.float32):
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0))
    weight[torch.rand(rows, cols, generator=torch.Generator().manual_seed(1)) < sparsity] = 0
    return weight.to(dtype)


def test_huge_page_span_is_the_whole_blocks_inside():
    buffer = torch.empty(3 * HUGE_PAGE_BYTES, dtype=torch.uint8)
    skip = -buffer.data_ptr() % HUGE_PAGE_BYTES
    aligned = buffer[skip:skip + 2 * HUGE_PAGE_BYTES]
    assert huge_page_span(aligned) == (aligned.data_ptr(), 2 * HUGE_PAGE_BYTES)
    assert huge_page_span(aligned[1:]) == (aligned.data_ptr() + HUGE_PAGE_BYTES, HUGE_PAGE_BYTES)
    assert huge_page_span(aligned[1:-1])[1] == 0
    assert huge_page_span(aligned[:HUGE_PAGE_BYTES - 1])[1] == 0


def test_use_huge_pages_skips_what_it_cannot_place_and_keeps_values():
    assert use_huge_pages(None, torch.randn(10), torch.randn(2048, 1024).t()) == 0  # small, non-contiguous
    tensor = torch.randn(3 << 20)  # 12 MiB
    before = tensor.clone()
    accepted = use_huge_pages(tensor)
    assert torch.equal(tensor, before)
    if sys.platform.startswith("linux"):
        assert accepted == huge_page_span(tensor)[1] > 0


@needs_thp
def test_use_huge_pages_backs_existing_memory_with_huge_pages():
    tensor = torch.randn(3 << 20)
    use_huge_pages(tensor)
    huge, advised = huge_page_state(tensor)
    # Collapsed now, or (where Linux cannot collapse it now: fragmented memory) advised for later.
    assert huge > 0 or advised


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int16, torch.int64])
def test_aligned_copy_is_an_aligned_equal_copy(dtype):
    for shape in [(5,), (3 << 20,), (1024, 1536)]:
        tensor = torch.randn(shape).to(dtype)
        copy = aligned_copy(tensor)
        assert torch.equal(copy, tensor) and copy.dtype == dtype and copy.shape == tensor.shape
        assert copy.is_contiguous() and copy.data_ptr() != tensor.data_ptr()
        if copy.numel() * copy.element_size() >= HUGE_PAGE_BYTES:
            assert copy.data_ptr() % HUGE_PAGE_BYTES == 0
    strided = torch.randn(2048, 1024).t()
    assert torch.equal(aligned_copy(strided), strided)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compress_ops_allocate_big_outputs_on_2mib_boundaries(dtype):
    dense = big_sparse(dtype=dtype)
    values, bitmap, row_offsets = ops.compress_bitmap(dense)
    assert values.data_ptr() % HUGE_PAGE_BYTES == 0
    assert torch.equal(ops.decompress_bitmap(values, bitmap, row_offsets, dense.shape[1]), dense)
    semi24 = dense * ops.nm_mask(dense.float().abs(), 2, 4)
    values24, meta = ops.compress_24(semi24)
    assert values24.data_ptr() % HUGE_PAGE_BYTES == 0
    assert torch.equal(ops.decompress_24(values24, meta), semi24)
    # An ordinary storage: saved and loaded, resized, shared, as any other.
    buffer = io.BytesIO()
    torch.save({"values": values, "bitmap": bitmap}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    assert torch.equal(loaded["values"], values) and torch.equal(loaded["bitmap"], bitmap)
    copy = values.clone()
    values.resize_(values.numel() + 1000)
    assert torch.equal(values[:copy.numel()], copy)
    assert torch.equal(values24.share_memory_(), ops.compress_24(semi24)[0])


@needs_thp
def test_compress_outputs_are_on_huge_pages():
    values, _, _ = ops.compress_bitmap(big_sparse())
    # Advised before first touch (how many huge pages Linux then gives depends on fragmentation).
    assert huge_page_state(values)[1]


def sparse_and_dense_layers():
    """A 4096x4096 nn.Linear at 90% and the SparseLinear of it (which runs CSR16 at batch 1)."""
    layer = torch.nn.Linear(4096, 4096, bias=False)
    with torch.no_grad():
        layer.weight.copy_(big_sparse(rows=4096, sparsity=0.9))
    return SparseLinear.from_dense(layer), layer


def test_sparse_linear_keeps_its_csr16_index_aligned_and_its_outputs():
    sparse, layer = sparse_and_dense_layers()
    col_indices = sparse._buffers["runtime_col_indices"]
    assert col_indices is not None and col_indices.data_ptr() % HUGE_PAGE_BYTES == 0
    x = torch.randn(1, 4096)
    torch.testing.assert_close(sparse(x), layer(x), rtol=1e-5, atol=1e-4)
    # Placement survives what rebuilds the runtime tensors, and never changes the state.
    state = {key: value.clone() for key, value in sparse.state_dict().items()}
    sparse.load_state_dict(state)
    sparse.to(torch.float32)
    assert sparse._buffers["runtime_col_indices"].data_ptr() % HUGE_PAGE_BYTES == 0
    for key, value in sparse.state_dict().items():
        assert torch.equal(value, state[key])
    torch.testing.assert_close(sparse(x), layer(x), rtol=1e-5, atol=1e-4)


def test_pickling_leaves_out_the_runtime_index_and_builds_it_again():
    import copy

    sparse, _ = sparse_and_dense_layers()
    x = torch.randn(2, 4096)
    expected = sparse(x)
    buffer = io.BytesIO()
    torch.save(sparse, buffer)
    state_bytes = sum(t.numel() * t.element_size() for t in sparse.state_dict().values())
    assert len(buffer.getvalue()) < state_bytes + (256 << 10)  # no index, no unwritten buffer
    buffer.seek(0)
    for restored in (torch.load(buffer, weights_only=False), copy.deepcopy(sparse)):
        index = restored._buffers["runtime_col_indices"]
        assert index is not None and index.data_ptr() % HUGE_PAGE_BYTES == 0
        assert torch.equal(index, sparse._buffers["runtime_col_indices"])
        assert torch.equal(restored(x), expected)
    assert sparse._buffers["runtime_col_indices"] is not None  # the original keeps its own
