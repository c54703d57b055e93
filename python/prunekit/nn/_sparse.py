"""What SparseLinear and SparseConv2d share: the compressed weight formats, their validation, the
choice of format ("auto"), device moves and the memory report.

A sparse module holds its weight as a (rows, cols) matrix (Linear: (out, in); Conv2d:
(out, in * kh * kw), the order of ``weight.reshape(out, -1)`` and of ``F.unfold``) in one of
three formats. Tensors marked *state* are in ``state_dict()`` and in checkpoints; *runtime*
tensors are derived from them for the device the module is on and rebuilt on every move:

- ``"unstructured"``: state ``values`` (nnz,) packed nonzeros row by row, ``bitmap``
  (rows, ceil(cols / 16)) int16, ``row_offsets`` (rows + 1,) int64 (the CPU bitmap format,
  :mod:`prunekit.formats.bitmap`). On CUDA there is no unstructured kernel: the dense weight is
  rebuilt on the GPU as runtime tensor ``dense_weight`` when the module moves there.
- ``"2:4"``: state ``values`` (rows, cols / 2) and ``meta`` in torch's CUTLASS layout
  (``prunekit.ops.compress_24``), the layout CUDA 2:4 kernels use. On CPU the runtime tensors
  ``runtime_bitmap`` and ``runtime_row_offsets`` describe the same values in the bitmap format
  (exactly two marked positions per group of four, :func:`prunekit.formats.from_semi24`), so the
  CPU bitmap kernels run it. On CUDA the forward expands the weight with ``decompress_24`` and runs the dense GEMM
  (a 2:4 tensor-core GEMM is a later issue): it saves memory, not time.
- ``"dense"``: state ``weight``, the plain dense weight.

The modules are for inference: their tensors do not require grad.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .._huge_pages import aligned_copy, use_huge_pages
from .._names import dtype_name
from ..formats.bitmap import bitmap_mask, check_bitmap_tensors, from_semi24
from ..formats.csr16 import MAX_COLUMNS as CSR16_MAX_COLUMNS
from ..formats.csr16 import column_indices
from ..formats.semi24 import semi24_layout

FORMATS = ("auto", "2:4", "unstructured", "dense")

# What "auto" knows about the CPU kernels: from which sparsity the sparse modules beat dense torch,
# per kernel family and weight dtype, as a function of the rows per call (tokens of a sequence;
# batch 1 is the workload prunekit targets). Measured by bench/bench_break_even.py
# (bench/results/break_even_cpu.md; :mod:`prunekit.app.benchmarks.break_even`) on the development
# machine (2-core Sapphire Rapids Xeon, AVX-512 kernels): SparseLinear / SparseConv2d against
# nn.Linear / nn.Conv2d on 1 thread in CPU time (other load on the machine does not count), each
# call meeting another copy of the weight (16 MiB of copies: weights come from L3/DRAM as in a
# model's forward; with hot weights dense looks ~1.5x better than it is); linear 384x384,
# 1536x384, 384x1536, 2048x2048 at 1/4/16/32/64/128 rows, MobileNet pointwise convs 128->256 at
# 56x56, 256->512 at 28x28, 512->512 at 14x14; sparsity 0.5-0.95. An entry is the lowest sparsity
# from which the sparse module wins or ties (within 3%) on every shape at every sparsity above, in
# the worst of the recorded run (2 repeats) and three runs before it (results at f4b70b8, a4f58a3,
# 37f0213; those measured up to 64 rows).
# - linear fp32: from 0.5 at 1-4 rows (0.98-2.3x at 0.5; 1.2-4.8x at 0.9, the small shapes bound
#   by the per-call cost); 0.6 at 5-128 rows (384x384 at 0.5: 0.92-1.02x at 16 rows, 0.94-1.05x at
#   64, 1.02x at 128; 2.2-5.6x at 0.9). Above 128 rows (not measured) the earlier 0.7 stays.
# - linear bf16: dense bf16 runs on AMX here. Where prunekit's own bf16 path runs on AMX (x with > 4
#   rows on CPUs with AMX-BF16, build_info()["cpu_bf16_spmm"] == "amx"; it does not skip zeros,
#   so its speed is the same at any sparsity) sparse wins from 0.5 at 5-16 rows (1.3-1.6x) and
#   from 0.8 at 17-128 rows (1.1-1.5x up to 64 rows, 1.06-1.3x at 128; 1536x384 at 64 rows
#   measured 0.87x once at 0.75 and 0.92x once at 0.5, and swung 0.82-1.27x between runs before);
#   BREAK_EVEN_SPARSITY_AMX replaces the bf16 linear entry there. At 1-4 rows the bf16 GEMV wins
#   from 0.5 (1.1-2.4x). Without the AMX path (measured before this script, 1 thread, the same
#   shapes): from ~0.85 at 16 rows, never at 64 rows (0.5-0.75x at 0.9) with the fp32-widening
#   SpMM.
# - pointwise conv fp32 (one image): from 0.6 (512->512 at 14x14: 0.86-0.91x at 0.5, 0.99-1.03x
#   at 0.6; 2.5-3.2x at 0.9).
# - other convs: im2col + the bitmap SpMM lost 1.5-4x to oneDNN's direct conv even at 0.9, so they
#   have no sparse kernel: "auto" keeps them dense; explicit sparse formats save memory only.
# Each entry: ((max rows, break-even), ...) in increasing rows, None rows = any more; a None
# break-even means the kernel never wins there. ``rows=`` and ``break_even=`` (from_dense,
# sparsify_) pick the row count or override the threshold.
BREAK_EVEN_SPARSITY = {
    "linear": {torch.float32: ((4, 0.5), (128, 0.6), (None, 0.7)),
               torch.bfloat16: ((4, 0.5), (16, 0.85), (None, None))},
    "conv1x1": {torch.float32: ((None, 0.6),)},
    "conv": {},
}
# bf16 linear where the AMX path runs (see above); above 128 rows (not measured) the earlier 0.85.
BREAK_EVEN_SPARSITY_AMX = {"linear": {torch.bfloat16: ((16, 0.5), (128, 0.8), (None, 0.85))}}
DEFAULT_ROWS = 16  # rows per call "auto" assumes: one sentence / a short prompt at batch 1
_KERNEL_DTYPES = {"linear": (torch.float32, torch.bfloat16), "conv1x1": (torch.float32,), "conv": ()}


def _bf16_spmm_on_amx() -> bool:
    from .. import build_info

    return build_info()["cpu_bf16_spmm"] == "amx"


def break_even_sparsity(kernel: str, dtype: torch.dtype, rows: int | None = None) -> float | None:
    """The measured break-even sparsity of the CPU ``kernel`` ("linear", "conv1x1", "conv") for
    ``dtype`` weights at ``rows`` rows per call (default :data:`DEFAULT_ROWS`); None where the
    sparse kernel does not beat dense torch (or there is no kernel). bf16 linear uses
    :data:`BREAK_EVEN_SPARSITY_AMX` where prunekit's AMX path runs."""
    rows = DEFAULT_ROWS if rows is None else int(rows)
    table = BREAK_EVEN_SPARSITY[kernel].get(dtype, ())
    if dtype in BREAK_EVEN_SPARSITY_AMX.get(kernel, {}) and _bf16_spmm_on_amx():
        table = BREAK_EVEN_SPARSITY_AMX[kernel][dtype]
    return _for_rows(table, rows)


def _for_rows(table: tuple, rows: int):
    """The entry of a ((max rows, entry), ..., (None, entry)) table for ``rows`` rows per call (the
    first whose max rows holds them; None rows = any more); None if none does."""
    for max_rows, entry in table:
        if max_rows is None or rows <= max_rows:
            return entry
    return None

# An unstructured weight at least this sparse also gets a CSR16 index on CPU (runtime tensor
# ``runtime_col_indices``, 2 bytes per nonzero), which the forward runs where it beats the bitmap
# kernels (:data:`CSR16_MIN_SPARSITY_BY_ROWS`). The CSR16 GEMV (up to 3-4 rows) costs a gather of
# x per nonzero and row of x, the bitmap GEMV an expansion per 16 columns shared by the rows; the
# CSR16 SpMM (more rows) skips the bitmap SpMM's decode.
CSR16_MIN_SPARSITY = 0.7

# From which sparsity CSR16 beats the bitmap kernels, per rows per call and x dtype, on the two
# kinds of CPU kernels: ((max rows, min sparsity), ...), None rows = any more, None sparsity =
# never. Measured in one process, 4096 x 4096, 2 threads, CSR16 vs bitmap ms:
# - "avx512" (Xeon; its bitmap GEMV expands with one instruction per 16 columns, bf16 on AVX-512
#   BF16, bf16 above 4 rows on AMX): fp32 at 0.7 / 0.8 / 0.9, 1 row 0.65 vs 0.66 / 0.45 vs 0.65 /
#   0.25 vs 0.66; 2 rows 1.11 vs 0.79 / 0.72 vs 0.73 / 0.40 vs 0.72; 3 rows 2.02 vs 1.13 / 1.40 vs
#   1.01 / 0.66 vs 0.91; 4 rows 2.54 vs 1.46 / 1.85 vs 1.35 / 0.85 vs 1.32; 16 rows 2.61 vs 2.78 /
#   1.91 vs 2.19 / 0.94 vs 1.33. bf16: 1 row 0.61 vs 0.51 / 0.44 vs 0.51 / 0.26 vs 0.50; 2 rows
#   0.73 vs 0.69 at 0.8, 0.41 vs 0.67 at 0.9; 4 rows 1.87 vs 1.09 / 0.90 vs 1.06 at 0.8 / 0.9;
#   16 rows (AMX) 0.95 vs 0.85 at 0.9.
# - other ("avx2", measured on the same Xeon with the AVX2 kernels; its bitmap GEMV permutes per 8
#   columns): fp32 at 0.7, 1-4 rows 0.99-2.58 vs 1.70-2.76; 16 rows 3.27 vs 3.05 at 0.7, 2.21 vs
#   2.46 at 0.8. (AMD Zen 3, AVX2, 1 row at 0.7: fp32 1.69 vs 2.11, bf16 2.50 vs 3.14.)
# bf16 x above 4 rows keeps the bitmap kernels where they run on AMX (else both widen x to fp32:
# the fp32 thresholds, see csr16_table). Thresholds between two measured sparsities sit between
# them.
CSR16_MIN_SPARSITY_BY_ROWS = {
    "avx512": {torch.float32: ((1, 0.7), (2, 0.8), (4, 0.85), (None, 0.7)),
               torch.bfloat16: ((1, 0.75), (4, 0.85), (None, None))},
    "other": {torch.float32: ((4, 0.7), (None, 0.8)),
              torch.bfloat16: ((4, 0.7), (None, 0.8))},
}


def csr16_table(x_dtype: torch.dtype) -> tuple:
    """This machine's row of :data:`CSR16_MIN_SPARSITY_BY_ROWS` for ``x_dtype`` (by the selected
    CPU kernels). Where the bitmap kernels widen bf16 x and run their fp32 code, bf16 takes the
    fp32 thresholds: up to 4 rows without AVX-512 BF16, above 4 rows without prunekit's AMX path."""
    from .. import build_info

    info = build_info()
    kind = "avx512" if info["cpu_isa_selected"] == "avx512" else "other"
    tables = CSR16_MIN_SPARSITY_BY_ROWS[kind]
    if x_dtype != torch.bfloat16:
        return tables.get(x_dtype, ())
    fp32 = tables[torch.float32]
    few_rows = [entry for entry in tables[torch.bfloat16] if entry[0] is not None]
    if kind == "avx512" and "avx512_bf16" not in info["cpu_features"]:
        few_rows = [entry for entry in fp32 if entry[0] is not None]
    more_rows = (None, None) if info["cpu_bf16_spmm"] == "amx" else fp32[-1]
    return tuple(few_rows) + (more_rows,)


def csr16_choices(sparsity: float, table: tuple) -> tuple:
    """For a weight of ``sparsity`` with a CSR16 index: ((max rows, runs CSR16), ...) from a
    ``table`` of :func:`csr16_table` (what the forward looks up: integers and booleans only)."""
    return tuple((max_rows, threshold is not None and sparsity >= threshold) for max_rows, threshold in table)


def csr16_runs(rows: int, choices: tuple) -> bool:
    """Whether the CSR16 kernels run inputs of ``rows`` rows, by :func:`csr16_choices`."""
    return bool(_for_rows(choices, rows))

# "auto" keeps a valid 2:4 weight as 2:4 unless it is much sparser than 50% (the 2:4 layout stores
# two values per group of four, zero padding included): 2:4 while at least this share of the
# stored values is nonzero, the (smaller, faster) unstructured bitmap below it.
SEMI24_MIN_FILL = 0.9

_KERNEL_VALUE_DTYPES = (torch.float32, torch.bfloat16)
_BITMAP_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _as_kernel_dtype(tensor: torch.Tensor) -> torch.Tensor:
    """fp16 bits seen as bf16, so the fp32/bf16 bitmap conversion ops handle fp16 exactly: both
    formats encode +-0 as 0x0000/0x8000, so the zero test and the copied bits are the same."""
    return tensor.view(torch.bfloat16) if tensor.dtype == torch.float16 else tensor


# ----------------------------------------------------------------------------- format helpers

def bitmap_to_dense(values: torch.Tensor, bitmap: torch.Tensor, cols: int) -> torch.Tensor:
    """Exact bitmap -> dense expansion in plain torch, for any device and dtype (the op
    ``decompress_bitmap`` is CPU fp32/bf16 only)."""
    mask = bitmap_mask(bitmap, cols)
    dense = values.new_zeros((bitmap.shape[0], cols))
    dense[mask] = values
    return dense


def semi24_aligned(rows: int, cols: int, dtype: torch.dtype) -> str | None:
    """None if a (rows, cols) ``dtype`` matrix fits the 2:4 layout, else why not."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the 2:4 format holds float16, bfloat16 or float32 weights, but the weight is {dtype_name(dtype)}"
    layout = semi24_layout(dtype)
    if rows % layout.row_alignment or cols % layout.col_alignment:
        return (f"the 2:4 layout needs rows % {layout.row_alignment} == 0 and columns % {layout.col_alignment} == 0, "
                f"but the weight matrix is {rows} x {cols}")
    return None


def first_dense_group(matrix: torch.Tensor) -> tuple[int, int, int] | None:
    """(row, group, nonzeros) of the first group of four with more than two nonzeros, or None."""
    rows, cols = matrix.shape
    if cols % 4:
        return (0, 0, -1)
    counts = (matrix.reshape(rows, cols // 4, 4) != 0).sum(-1)
    bad = (counts > 2).nonzero()
    if bad.numel() == 0:
        return None
    row, group = (int(v) for v in bad[0])
    return row, group, int(counts[row, group])


@dataclass(frozen=True)
class WeightStats:
    """What the format choice looks at."""

    rows: int
    cols: int
    dtype: torch.dtype
    device: torch.device
    nonzeros: int
    is_24: bool  # at most two nonzeros in every group of four along the columns
    semi24_problem: str | None  # why the 2:4 layout cannot hold it (alignment, dtype), or None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / (self.rows * self.cols)

    @classmethod
    def of(cls, matrix: torch.Tensor) -> "WeightStats":
        rows, cols = matrix.shape
        nonzeros = int(torch.count_nonzero(matrix))
        is_24 = cols % 4 == 0 and first_dense_group(matrix) is None
        return cls(rows, cols, matrix.dtype, matrix.device, nonzeros, is_24, semi24_aligned(rows, cols, matrix.dtype))


def choose_format(stats: WeightStats, kernel: str, *, break_even: float | None = None,
                  rows: int | None = None) -> tuple[str, str]:
    """The format "auto" picks for a weight, and why (a short sentence).

    ``kernel`` is the CPU kernel family that would run it: "linear", "conv1x1" (pointwise conv)
    or "conv" (any other conv: no sparse kernel). On CPU, when the sparsity reaches the measured
    break-even (:func:`break_even_sparsity` of the kernel, the dtype and ``rows``, the rows per
    call, default :data:`DEFAULT_ROWS`; or ``break_even`` when given): "2:4" for a valid 2:4
    pattern the layout holds (and not much sparser than 2:4), else "unstructured"; otherwise
    "dense". On CUDA there is no prunekit sparse GEMM yet, so "auto" is always dense there.
    """
    if stats.device.type != "cpu":
        return "dense", f"no prunekit sparse kernel on {stats.device.type} yet; dense is fastest"
    dtype = dtype_name(stats.dtype)
    if stats.dtype not in _KERNEL_DTYPES[kernel]:
        return "dense", f"no CPU {kernel} kernel runs {dtype} weights"
    if break_even is not None:
        threshold = float(break_even)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"choose_format: argument 'break_even' must be in [0, 1], but got {break_even}")
    else:
        if rows is not None and int(rows) < 1:
            raise ValueError(f"choose_format: argument 'rows' must be >= 1, but got {rows}")
        threshold = break_even_sparsity(kernel, stats.dtype, rows)
        if threshold is None:
            return "dense", (f"the CPU {kernel} kernel does not beat dense torch on {dtype} weights at "
                             f"{DEFAULT_ROWS if rows is None else rows} rows per call")
    if stats.sparsity < threshold:
        return "dense", f"sparsity {stats.sparsity:.3f} < break-even {threshold:.2f} of the CPU {kernel} kernel ({dtype})"
    if stats.is_24 and stats.semi24_problem is None and stats.nonzeros >= SEMI24_MIN_FILL * stats.rows * stats.cols / 2:
        return "2:4", "valid 2:4 pattern (bitmap kernel on CPU, CUTLASS layout on disk and on CUDA)"
    return "unstructured", f"sparsity {stats.sparsity:.3f} >= break-even {threshold:.2f} of the CPU {kernel} kernel ({dtype})"


def compress(matrix: torch.Tensor, fmt: str, owner: str) -> dict[str, torch.Tensor]:
    """The state tensors of ``matrix`` (rows, cols) in format ``fmt`` (not "auto"), on the
    matrix's device (unstructured compression runs on the CPU)."""
    matrix = matrix.detach()
    if fmt == "dense":
        return {"weight": matrix.clone()}
    if fmt == "unstructured":
        if matrix.dtype not in _BITMAP_DTYPES:
            raise ValueError(f"{owner}: format='unstructured' holds float32, bfloat16 or float16 weights, but the weight "
                             f"is {dtype_name(matrix.dtype)}; convert the module first or use format='dense'")
        values, bitmap, row_offsets = torch.ops.prunekit.compress_bitmap(_as_kernel_dtype(matrix.cpu().contiguous()))
        device = matrix.device
        return {"values": values.view(matrix.dtype).to(device), "bitmap": bitmap.to(device),
                "row_offsets": row_offsets.to(device)}
    if fmt == "2:4":
        rows, cols = matrix.shape
        problem = semi24_aligned(rows, cols, matrix.dtype)
        if problem is not None:
            raise ValueError(f"{owner}: format='2:4' cannot hold this weight: {problem}")
        bad = first_dense_group(matrix)
        if bad is not None:
            row, group, count = bad
            raise ValueError(f"{owner}: format='2:4' needs at most 2 nonzeros in every group of 4 consecutive input "
                             f"columns, but row {row}, columns {4 * group}..{4 * group + 3} hold {count}; prune it "
                             "with sparsity='2:4' first or use format='unstructured'")
        values, meta = torch.ops.prunekit.compress_24(matrix.contiguous())
        return {"values": values, "meta": meta}
    raise ValueError(f"{owner}: argument 'format' must be one of {FORMATS}, but got {fmt!r}")


def expected_state(fmt: str, rows: int, cols: int, dtype: torch.dtype, state: dict[str, torch.Tensor],
                   weight_shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype each state tensor of a ``fmt`` weight must have (values' length for the
    unstructured format comes from the bitmap)."""
    if fmt == "dense":
        return {"weight": (tuple(weight_shape), dtype)}
    if fmt == "unstructured":
        words = (cols + 15) // 16
        nnz = int(state["row_offsets"][-1]) if "row_offsets" in state else -1
        shapes = {"bitmap": ((rows, words), torch.int16), "row_offsets": ((rows + 1,), torch.int64)}
        if nnz >= 0:
            shapes["values"] = ((nnz,), dtype)
        return shapes
    if fmt == "2:4":
        layout = semi24_layout(dtype)
        return {"values": (layout.values_shape(rows, cols), dtype), "meta": (layout.meta_shape(rows, cols), layout.meta_dtype)}
    raise ValueError(f"unknown format {fmt!r}")


# ----------------------------------------------------------------------------- the base module

def _rebuild_runtime_after_load(module: "SparseWeightModule", incompatible_keys) -> None:
    module._build_runtime()


class SparseWeightModule(nn.Module):
    """Base of SparseLinear and SparseConv2d: holds a (rows, cols) weight in one format."""

    _STATE = {"dense": ("weight",), "unstructured": ("values", "bitmap", "row_offsets"), "2:4": ("values", "meta")}
    _RUNTIME = ("dense_weight", "runtime_bitmap", "runtime_row_offsets", "runtime_col_indices")
    _USES_CSR16 = False  # SparseLinear: batch-1 GEMV in CSR16 at high sparsity

    def _init_weight(self, fmt: str, rows: int, cols: int, dtype: torch.dtype, state: dict[str, torch.Tensor],
                     bias: torch.Tensor | None, weight_shape: tuple[int, ...]) -> None:
        name = type(self).__name__
        if fmt not in FORMATS[1:]:
            raise ValueError(f"{name}: argument 'format' must be one of {FORMATS[1:]}, but got {fmt!r}")
        self.format = fmt
        self.rows, self.cols = rows, cols
        self.weight_shape = tuple(weight_shape)
        check_state(f"{name}", fmt, rows, cols, dtype, state, self.weight_shape)
        if fmt == "unstructured" and state["bitmap"].device.type == "cpu":  # no device syncs at construction
            check_bitmap_tensors(name, state["bitmap"], state["row_offsets"], state["values"], cols)
        for key in self._STATE[fmt]:
            tensor = state[key]
            if key == "weight":
                self.weight = nn.Parameter(tensor, requires_grad=False)
            else:
                self.register_buffer(key, tensor)
        if bias is not None:
            if tuple(bias.shape) != (rows,):
                raise ValueError(f"{name}: argument 'bias' must have shape ({rows},), but got {tuple(bias.shape)}")
            self.bias = nn.Parameter(bias.detach(), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        for key in self._RUNTIME:
            self.register_buffer(key, None, persistent=False)
        self._build_runtime()
        # load_state_dict copies into the state tensors in place: derive the runtime ones again.
        self.register_load_state_dict_post_hook(_rebuild_runtime_after_load)

    # --- runtime tensors -------------------------------------------------------------------
    def _build_runtime(self, strict: bool = True) -> None:
        """Derives the runtime tensors for the current device. Corrupt 2:4 metadata raises when
        ``strict``; otherwise (after a move, e.g. ``to_empty``) the runtime view is left out and
        the forward expands the weight with ``decompress_24``, which raises on corrupt data."""
        if self.format == "dense":
            return
        device = self.values.device
        if self.format == "2:4" and device.type == "cpu" and self.values.dtype in _KERNEL_VALUE_DTYPES:
            try:
                view = from_semi24(self.values, self.meta)
            except ValueError as error:
                if not strict:
                    return
                raise ValueError(f"{type(self).__name__}: the 2:4 metadata is corrupt: {error}") from None
            self.runtime_bitmap, self.runtime_row_offsets = view.bitmap, view.row_offsets
        elif self.format == "unstructured" and device.type not in ("cpu", "meta"):
            self.dense_weight = bitmap_to_dense(self.values, self.bitmap, self.cols)
        elif (self.format == "unstructured" and device.type == "cpu" and self._USES_CSR16
              and self.values.dtype in _KERNEL_VALUE_DTYPES and self.cols <= CSR16_MAX_COLUMNS):
            sparsity = self.sparsity  # a count of the nonzeros: once
            if sparsity >= CSR16_MIN_SPARSITY:
                self.runtime_col_indices = aligned_copy(column_indices(self.bitmap, self.cols))
                # Where the forward runs it, per x dtype (this CPU's thresholds, resolved once).
                self._csr16_choices = {dtype: csr16_choices(sparsity, csr16_table(dtype))
                                       for dtype in _KERNEL_VALUE_DTYPES}
        if device.type == "cpu":  # the state the CPU kernels stream, wherever it was allocated
            use_huge_pages(self.values, *(self._buffers.get(key) for key in ("bitmap", "runtime_bitmap")))

    def __getstate__(self):
        """Pickled (``torch.save`` of the module, ``copy.deepcopy``) without the runtime tensors:
        they derive from the state, are built again on load, and the CSR16 index is a view into a
        larger buffer whose unwritten part would be pickled with it (``_huge_pages.aligned_copy``)."""
        state = self.__dict__.copy()
        state["_buffers"] = {key: None if key in self._RUNTIME else value for key, value in self._buffers.items()}
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._build_runtime(strict=False)

    def _apply(self, fn, recurse=True):
        for key in self._RUNTIME:
            self._buffers[key] = None
        result = super()._apply(fn, recurse)
        self._build_runtime(strict=False)
        return result

    def _kernel_tensors(self, x: torch.Tensor, x_dtypes: tuple[torch.dtype, ...]):
        """(values, bitmap, row_offsets, bias) for the CPU bitmap kernels when they can run this
        input, else None (the dense fallback runs)."""
        if self.format == "dense" or x.device.type != "cpu" or x.dtype not in x_dtypes:
            return None
        values, bias = _tensor_attribute(self, "values"), _tensor_attribute(self, "bias")
        if (values.device.type != "cpu" or values.dtype not in _KERNEL_VALUE_DTYPES
                or (bias is not None and bias.dtype not in _KERNEL_VALUE_DTYPES)):
            return None
        if self.format == "2:4":
            bitmap = self._buffers["runtime_bitmap"]
            return None if bitmap is None else (values.view(-1), bitmap, self._buffers["runtime_row_offsets"], bias)
        return values, _tensor_attribute(self, "bitmap"), _tensor_attribute(self, "row_offsets"), bias

    def dense_matrix(self) -> torch.Tensor:
        """The (rows, cols) weight matrix, dense, exact, on the module's device."""
        if self.format == "dense":
            return self.weight.detach().reshape(self.rows, self.cols)
        if self.dense_weight is not None:
            return self.dense_weight
        if self.format == "2:4":
            return torch.ops.prunekit.decompress_24(self.values, self.meta)
        if self.values.device.type == "cpu" and self.values.dtype in _BITMAP_DTYPES:
            dense = torch.ops.prunekit.decompress_bitmap(_as_kernel_dtype(self.values), self.bitmap, self.row_offsets,
                                                         self.cols)
            return dense.view(self.values.dtype)
        return bitmap_to_dense(self.values, self.bitmap, self.cols)

    # --- reports ------------------------------------------------------------------------------
    @property
    def weight_dtype(self) -> torch.dtype:
        return (self.weight if self.format == "dense" else self.values).dtype

    @property
    def nonzeros(self) -> int:
        """Nonzero weights (zero padding of the 2:4 layout not counted)."""
        if self.format == "unstructured":
            return int(torch.count_nonzero(self.values))
        return int(torch.count_nonzero(self.weight if self.format == "dense" else self.values))

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / (self.rows * self.cols)

    def memory(self) -> dict:
        """Bytes this module holds: ``state`` (the tensors of its state_dict and checkpoint: the
        compressed weight and the bias), ``runtime`` (tensors derived for the current device: the
        CPU bitmap view of a 2:4 weight, the dense weight of an unstructured one on CUDA, the CSR16
        index),
        ``total``, and ``dense`` (a dense weight and bias of the same dtype), with the ``format``,
        ``device`` and ``ratio`` = total / dense. The CSR16 index of a sparse SparseLinear on CPU
        (2 bytes per nonzero, see :data:`CSR16_MIN_SPARSITY`) is runtime."""
        state = sum(_nbytes(t) for t in self._state_tensors().values())
        runtime = sum(_nbytes(self._buffers[key]) for key in self._RUNTIME)
        element = self.weight_dtype.itemsize
        dense = self.rows * self.cols * element + (_nbytes(self.bias) if self.bias is not None else 0)
        total = state + runtime
        device = (self.weight if self.format == "dense" else self.values).device
        return {"format": self.format, "device": str(device), "state": state, "runtime": runtime, "total": total,
                "dense": dense, "ratio": total / dense}

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {key: getattr(self, key) for key in self._STATE[self.format]}
        if self.bias is not None:
            tensors["bias"] = self.bias
        return tensors

    def _weight_repr(self) -> str:
        return f"format={self.format!r}, sparsity={self.sparsity:.3f}, dtype={dtype_name(self.weight_dtype)}"


def _tensor_attribute(module: nn.Module, name: str):
    """``module.<name>`` for a parameter or buffer, read from the module's dict of them when it is
    there: nn.Module's attribute lookup costs ~0.3 us, and a small layer's forward (384x384 at 90%,
    one row, ~20 us) spent ~4 us on nine of them. torch.nn.utils.prune and parametrizations move
    a tensor out of those dicts; the attribute lookup finds it then."""
    if name in module._parameters:
        return module._parameters[name]
    if name in module._buffers:
        return module._buffers[name]
    return getattr(module, name)


def _nbytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


def check_state(owner: str, fmt: str, rows: int, cols: int, dtype: torch.dtype, state: dict[str, torch.Tensor],
                weight_shape: tuple[int, ...]) -> None:
    """Raises ValueError unless ``state`` holds exactly the tensors of format ``fmt`` with the
    right shapes and dtypes."""
    expected = expected_state(fmt, rows, cols, dtype, state, weight_shape)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(SparseWeightModule._STATE[fmt]))
    if missing or unexpected:
        raise ValueError(f"{owner}: format {fmt!r} needs tensors {sorted(expected)}, but got {sorted(state)}")
    for key, (shape, key_dtype) in expected.items():
        tensor = state[key]
        if tuple(tensor.shape) != tuple(shape) or tensor.dtype != key_dtype:
            raise ValueError(f"{owner}: tensor '{key}' of a {fmt!r} {rows}x{cols} {dtype_name(dtype)} weight must be "
                             f"{dtype_name(key_dtype)} of shape {tuple(shape)}, but got {dtype_name(tensor.dtype)} of "
                             f"shape {tuple(tensor.shape)}")
