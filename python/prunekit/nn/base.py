"""SparseWeightModule: what SparseLinear and SparseConv2d share.

A sparse module holds its weight as a (rows, cols) matrix (Linear: (out, in); Conv2d:
(out, in * kh * kw), the order of ``weight.reshape(out, -1)`` and of ``F.unfold``) in one of the
formats of :mod:`prunekit.formats` ("2:4", "unstructured", "dense"), which owns the tensors'
names, shapes, checks and checkpoint entry. Tensors marked *state* are in ``state_dict()`` and in
checkpoints; *runtime* tensors are derived from them for the device the module is on and rebuilt
on every move:

- ``runtime_bitmap``, ``runtime_row_offsets``: on CPU, the bitmap view of a "2:4" weight
  (exactly two marked positions per group of four), so the CPU bitmap kernels run it; an
  "unstructured" weight is that layout already.
- ``runtime_tile_values``, ``runtime_tile_bitmap``, ``runtime_tile_offsets``: on CUDA, an
  "unstructured" weight in the tiled bitmap layout (:mod:`prunekit.formats.bitmap_tiles`), which
  prunekit's CUDA kernels run (SparseLinear; SparseConv2d's 1x1 convolutions), built at the move.
- ``runtime_meta_sm90``: on an sm_90 GPU, a "2:4" weight's metadata in the layout of the CUTLASS
  3.x kernel ``sparse_linear_24`` runs (where the build has it), built at the move.
- ``dense_weight``: off the CPU, the dense weight of a format with neither a kernel nor a
  decompression kernel there (an "unstructured" k x k convolution on CUDA, or any unstructured
  weight where the build has no CUDA kernels), built once at the move. A "2:4" weight the CUDA
  kernels do not run expands with ``decompress_24`` on every forward: it saves memory, not time.
- ``runtime_col_indices``: SparseLinear's CSR16 index of a sparse "unstructured" weight on CPU
  (:data:`prunekit.nn.auto.CSR16_MIN_SPARSITY`).

The modules are for inference: their tensors do not require grad.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import formats
from .._huge_pages import aligned_copy, use_huge_pages
from .._names import dtype_name
from ..formats.csr16 import MAX_COLUMNS as CSR16_MAX_COLUMNS
from ..formats.bitmap_tiles import TiledBitmapWeight
from ..formats.csr16 import column_indices
from .auto import CSR16_MIN_SPARSITY, csr16_choices, csr16_table, reaches_sparsity

HELD_FORMATS = ("2:4", "unstructured", "dense")  # the formats a module can hold
FORMATS = ("auto",) + HELD_FORMATS  # what from_dense and sparsify_ take
KERNEL_VALUE_DTYPES = (torch.float32, torch.bfloat16)  # weight dtypes the CPU kernels run


def held_dtype(fmt: str, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None) -> torch.dtype:
    """A module's weight dtype: ``dtype``, else that of the tensor holding the values of a ``fmt``
    state (an unknown ``fmt`` is refused later, by name)."""
    if dtype is not None:
        return dtype
    name = formats.get(fmt).values_name if fmt in formats.names() else "values"
    return tensors.get(name, torch.empty(0)).dtype


_CUDA_KERNELS: dict[str, bool] = {}


def cuda_kernels(op: str = "bitmap_to_tiles") -> bool:
    """Whether this build registers a CUDA kernel for ``prunekit::<op>`` (asked once per op)."""
    if op not in _CUDA_KERNELS:
        name = f"prunekit::{op}"
        _CUDA_KERNELS[op] = (torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")
                             if torch._C._dispatch_has_kernel(name) else False)
    return _CUDA_KERNELS[op]


def _rebuild_runtime_after_load(module: "SparseWeightModule", incompatible_keys) -> None:
    module._build_runtime()


class SparseWeightModule(nn.Module):
    """Base of SparseLinear and SparseConv2d: holds a (rows, cols) weight in one format.

    Subclasses name what they replace and how a checkpoint records them: ``checkpoint_spec``,
    ``from_checkpoint_spec``, ``geometry`` / ``geometry_of`` (see :mod:`prunekit.io`)."""

    _RUNTIME = ("dense_weight", "runtime_bitmap", "runtime_row_offsets", "runtime_col_indices", "runtime_tile_values",
                "runtime_tile_bitmap", "runtime_tile_offsets", "runtime_meta_sm90")
    _USES_CSR16 = False  # SparseLinear: batch-1 GEMV in CSR16 at high sparsity
    _CLASSES: dict[str, type] = {}  # class name (as checkpoints record it) -> class
    REPLACES = ""  # what the module stands in for, for messages ("an nn.Linear, Conv1D or SparseLinear")
    GEOMETRY = ""  # the names of geometry()'s entries, for messages ("(out, in)")

    # (x dtype, op, arguments after x) of the CPU kernel a one-row input of that dtype runs, cached
    # by the first such call: a decode step runs every layer at one row, and deciding the kernel
    # again each time costs more than a small sparse layer's product. Any attribute set, a move or
    # a load drops it.
    _one_row_call: tuple | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        SparseWeightModule._CLASSES[cls.__name__] = cls

    def __setattr__(self, name: str, value) -> None:
        self.__dict__["_one_row_call"] = None
        super().__setattr__(name, value)

    def _cached_one_row_call(self, x: torch.Tensor):
        """The cached kernel call for ``x`` when it is one row of the cached dtype on CPU, else None."""
        if torch.compiler.is_compiling():  # first: a traced forward never reads (or guards on) the cache
            return None
        call = self._one_row_call
        if call is None or x.dtype is not call[0] or x.numel() != self.cols or not x.is_cpu:
            return None
        return call

    def _cache_one_row_call(self, x: torch.Tensor, op, arguments: tuple) -> None:
        """Caches ``op(x, *arguments)`` for one-row inputs of x's dtype (only from eager calls)."""
        if x.numel() == self.cols and x.is_cpu and not torch.compiler.is_compiling():
            self.__dict__["_one_row_call"] = (x.dtype, op, arguments)

    @classmethod
    def checkpoint_class(cls, name: str) -> type:
        """The sparse module class a checkpoint names (ValueError for another name)."""
        if name not in cls._CLASSES:
            raise ValueError(f"class must be one of {sorted(cls._CLASSES)}, but got {name!r}")
        return cls._CLASSES[name]

    def _init_weight(self, fmt: str, rows: int, cols: int, dtype: torch.dtype, state: dict[str, torch.Tensor],
                     bias: torch.Tensor | None, weight_shape: tuple[int, ...]) -> None:
        name = type(self).__name__
        if fmt not in HELD_FORMATS:
            raise ValueError(f"{name}: argument 'format' must be one of {HELD_FORMATS}, but got {fmt!r}")
        self.format = fmt
        self.rows, self.cols = rows, cols
        self.weight_shape = tuple(weight_shape)
        weight_format = self._set_format()
        weight_format.check_state(name, state, rows, cols, dtype, self.weight_shape)
        for key in weight_format.state_names:
            if key in weight_format.parameter_names:
                setattr(self, key, nn.Parameter(state[key], requires_grad=False))
            else:
                self.register_buffer(key, state[key])
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

    def _set_format(self) -> formats.WeightFormat:
        """Caches what the forward asks of the format as plain attributes (read on every call)."""
        weight_format = formats.get(self.format)
        self._compressed = weight_format.compressed
        self._view_is_state = weight_format.view_is_state
        return weight_format

    @property
    def weight_format(self) -> formats.WeightFormat:
        """The :class:`~prunekit.formats.WeightFormat` of the held weight."""
        return formats.get(self.format)

    # --- runtime tensors -------------------------------------------------------------------
    def _build_runtime(self, strict: bool = True) -> None:
        """Derives the runtime tensors for the current device. Corrupt 2:4 metadata raises when
        ``strict``; otherwise (after a move, e.g. ``to_empty``) the runtime view is left out and
        the forward expands the weight with ``decompress_24``, which raises on corrupt data."""
        self.__dict__["_one_row_call"] = None
        weight_format = self.weight_format
        if not weight_format.compressed:
            return
        state = self.weight_state()
        values = state[weight_format.values_name]
        device = values.device
        on_cpu_kernels = device.type == "cpu" and values.dtype in KERNEL_VALUE_DTYPES
        view = weight_format.kernel_view(state, self.cols) if weight_format.view_is_state else None
        if on_cpu_kernels and not weight_format.view_is_state:
            try:
                view = weight_format.kernel_view(state, self.cols)
            except ValueError as error:
                if not strict:
                    return
                raise ValueError(f"{type(self).__name__}: the {weight_format.name} metadata is corrupt: "
                                 f"{error}") from None
            self.runtime_bitmap, self.runtime_row_offsets = view.bitmap, view.row_offsets
        elif device.type == "cuda" and weight_format.name == "unstructured" and self._runs_tiles() and cuda_kernels():
            self._build_tiles(weight_format.kernel_view(state, self.cols), strict)
        elif device.type == "cuda" and weight_format.name == "2:4" and self._runs_linear24(values):
            if torch.cuda.get_device_capability(device)[0] == 9:  # the CUTLASS 3.x kernel's own metadata layout
                try:
                    self.runtime_meta_sm90 = torch.ops.prunekit.meta_24_to_sm90(state["meta"])
                except (RuntimeError, ValueError):
                    if strict:
                        raise
                    # after a move of unchecked tensors: sparse_linear_24 converts (and checks) per call
        elif not weight_format.expands_on(device.type):
            self.dense_weight = weight_format.to_dense(state, self.rows, self.cols)
        elif on_cpu_kernels and view is not None and self._USES_CSR16 and self.cols <= CSR16_MAX_COLUMNS:
            sparsity = self.sparsity  # a count of the nonzeros: once
            # An index of the stored bitmap (a derived 2:4 view holds zero padding).
            if reaches_sparsity(sparsity, CSR16_MIN_SPARSITY, self.cols):
                self.runtime_col_indices = aligned_copy(column_indices(view.bitmap, self.cols))
                # Where the forward runs it, per x dtype (this CPU's thresholds, resolved once).
                self._csr16_choices = {dtype: csr16_choices(sparsity, csr16_table(dtype), self.cols)
                                       for dtype in KERNEL_VALUE_DTYPES}
        if device.type == "cpu":  # the tensors the CPU kernels stream, wherever they were allocated
            use_huge_pages(values, *(() if view is None else (view.bitmap,)))

    def _runs_tiles(self) -> bool:
        """Whether the forward runs prunekit's tiled CUDA kernels (SparseConv2d: 1x1 convolutions)."""
        return True

    def _runs_linear24(self, values: torch.Tensor) -> bool:
        """Whether the forward runs a 2:4 weight through ``sparse_linear_24`` on CUDA (SparseLinear)."""
        return False

    def _build_tiles(self, view, strict: bool) -> None:
        """The tiled bitmap layout of the unstructured weight (``bitmap_to_tiles`` checks it: corrupt
        tensors raise when ``strict``; otherwise, after a move, the forward expands the weight, which
        raises on corrupt data)."""
        try:
            tiles = TiledBitmapWeight.from_bitmap(view)
        except ValueError as error:
            if strict:
                raise ValueError(f"{type(self).__name__}: the unstructured weight is corrupt: {error}") from None
            return
        self.runtime_tile_values, self.runtime_tile_bitmap, self.runtime_tile_offsets = (tiles.values, tiles.bitmap,
                                                                                         tiles.offsets)

    def _tile_tensors(self, x: torch.Tensor):
        """(tile values, tile bitmap, tile offsets, bias) for prunekit's tiled CUDA kernels when they
        can run this input (x on the tiles' device, in their dtype), else None."""
        values = self._buffers["runtime_tile_values"]
        if values is None or x.dtype != values.dtype or x.device != values.device:
            return None
        bias = _tensor_attribute(self, "bias")
        if bias is not None and (bias.device != x.device or not bias.dtype.is_floating_point):
            return None
        return values, self._buffers["runtime_tile_bitmap"], self._buffers["runtime_tile_offsets"], bias

    def __getstate__(self):
        """Pickled (``torch.save`` of the module, ``copy.deepcopy``) without the runtime tensors:
        they derive from the state, are built again on load, and the CSR16 index is a view into a
        larger buffer whose unwritten part would be pickled with it (``_huge_pages.aligned_copy``)."""
        state = self.__dict__.copy()
        state.pop("_one_row_call", None)
        state["_buffers"] = {key: None if key in self._RUNTIME else value for key, value in self._buffers.items()}
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._set_format()  # modules pickled before these attributes existed
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
        if not self._compressed or x.device.type != "cpu" or x.dtype not in x_dtypes:
            return None
        values, bias = _tensor_attribute(self, "values"), _tensor_attribute(self, "bias")
        if (values.device.type != "cpu" or values.dtype not in KERNEL_VALUE_DTYPES
                or (bias is not None and bias.dtype not in KERNEL_VALUE_DTYPES)):
            return None
        if not self._view_is_state:
            bitmap = self._buffers["runtime_bitmap"]
            return None if bitmap is None else (values.view(-1), bitmap, self._buffers["runtime_row_offsets"], bias)
        return values, _tensor_attribute(self, "bitmap"), _tensor_attribute(self, "row_offsets"), bias

    def dense_matrix(self) -> torch.Tensor:
        """The (rows, cols) weight matrix, dense, exact, on the module's device."""
        if self.dense_weight is not None:
            return self.dense_weight
        return self.weight_format.to_dense(self.weight_state(), self.rows, self.cols)

    # --- reports ------------------------------------------------------------------------------
    @property
    def weight_dtype(self) -> torch.dtype:
        return getattr(self, self.weight_format.values_name).dtype

    @property
    def nonzeros(self) -> int:
        """Nonzero weights (zero padding of the 2:4 layout not counted)."""
        return self.weight_format.nonzeros(self.weight_state())

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / (self.rows * self.cols)

    def memory(self) -> dict:
        """Bytes this module holds: ``state`` (the tensors of its state_dict and checkpoint: the
        compressed weight and the bias), ``runtime`` (tensors derived for the current device: the
        CPU bitmap view of a 2:4 weight, the tiled layout of an unstructured one on CUDA (or its
        dense weight where no CUDA kernel runs it), the CSR16 index), ``total``, and ``dense`` (a
        dense weight and bias of the same dtype), with the
        ``format``, ``device`` and ``ratio`` = total / dense. The CSR16 index of a sparse
        SparseLinear on CPU (2 bytes per nonzero, see :data:`prunekit.nn.auto.CSR16_MIN_SPARSITY`)
        is runtime."""
        state = sum(_nbytes(t) for t in self._state_tensors().values())
        runtime = sum(_nbytes(self._buffers[key]) for key in self._RUNTIME)
        element = self.weight_dtype.itemsize
        dense = self.rows * self.cols * element + (_nbytes(self.bias) if self.bias is not None else 0)
        total = state + runtime
        device = getattr(self, self.weight_format.values_name).device
        return {"format": self.format, "device": str(device), "state": state, "runtime": runtime, "total": total,
                "dense": dense, "ratio": total / dense}

    def weight_state(self) -> dict[str, torch.Tensor]:
        """The state tensors of the held weight by the format's names (bias not included)."""
        return {key: getattr(self, key) for key in self.weight_format.state_names}

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = self.weight_state()
        if self.bias is not None:
            tensors["bias"] = self.bias
        return tensors

    def _weight_repr(self) -> str:
        return f"format={self.format!r}, sparsity={self.sparsity:.3f}, dtype={dtype_name(self.weight_dtype)}"

    # --- what a checkpoint records (the subclasses fill these in) -----------------------------------
    def checkpoint_spec(self) -> dict:
        """What a checkpoint records about this module besides its tensors (JSON types only)."""
        raise NotImplementedError

    @classmethod
    def from_checkpoint_spec(cls, spec: dict, state: dict[str, torch.Tensor], bias: torch.Tensor | None,
                             dtype: torch.dtype) -> "SparseWeightModule":
        """The module a checkpoint's ``spec`` and tensors describe (KeyError / TypeError for an
        incomplete spec, ValueError for tensors that do not fit it)."""
        raise NotImplementedError

    def geometry(self) -> tuple[int, ...]:
        """What a module at this place must match (:attr:`GEOMETRY` names the entries)."""
        raise NotImplementedError

    @classmethod
    def geometry_of(cls, module: nn.Module) -> tuple[int, ...] | None:
        """The :meth:`geometry` of a module this class replaces (or of one of its own), else None."""
        raise NotImplementedError


def _tensor_attribute(module: nn.Module, name: str):
    """``module.<name>`` for a parameter or buffer, read from the module's dict of them when it is
    there: nn.Module's attribute lookup costs a noticeable share of a small layer's forward.
    torch.nn.utils.prune and parametrizations move a tensor out of those dicts; the attribute
    lookup finds it then."""
    if name in module._parameters:
        return module._parameters[name]
    if name in module._buffers:
        return module._buffers[name]
    return getattr(module, name)


def _nbytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()
