"""SparseLinear: a drop-in nn.Linear (or transformers Conv1D) holding a compressed weight.

What runs where (``forward``):

=========  ==============  ===============  ==========================================================
device     format          dtypes           computation
=========  ==============  ===============  ==========================================================
CPU        unstructured    fp32, bf16       ``prunekit.ops.sparse_linear_csr16`` (CSR16 GEMV up to
                                            3-4 rows, SpMM above) where it beats the bitmap kernels
                                            for the rows and sparsity (thresholds:
                                            ``nn.auto.CSR16_MIN_SPARSITY_BY_ROWS``), else
                                            ``prunekit.ops.sparse_linear`` (bitmap GEMV up to 4
                                            rows, SpMM above; bf16 x above 4 rows on AMX where the
                                            CPU has it); fp32 accumulation
CPU        2:4             fp32, bf16       the same kernel on the bitmap view of the 2:4 values
CPU        sparse          other (fp16)     exact expansion + ``F.linear`` (correct, not faster)
CUDA       unstructured    fp16/bf16/fp32   ``prunekit.ops.sparse_linear_tiles`` on the tiled bitmap
                                            layout built at ``.to()``: decode kernels up to 16 rows
                                            (CUDA cores at high sparsity, tensor cores otherwise),
                                            a pipelined tensor-core GEMM above (fp32: an exact
                                            expansion + cuBLAS above 16 rows)
CUDA       2:4             fp16/bf16        ``sparse_linear_24`` (CUTLASS sparse tensor cores; small
                                            batches by a decode kernel) where the build has it
CUDA       2:4             other            ``decompress_24`` + ``F.linear`` (saves memory, not time)
any        dense           any              ``F.linear``
=========  ==============  ===============  ==========================================================

``format="auto"`` picks, for the module's device and weight (see
:func:`prunekit.nn.choose_format`): on CPU, at or above the break-even sparsity measured for the
kind of CPU kernels that runs here, the weight dtype and the rows per call (the tables:
``nn.auto.BREAK_EVEN_SPARSITY_BY_ISA``, and ``nn.auto.BREAK_EVEN_SPARSITY_AMX`` for bf16 where
prunekit's bf16 path runs on AMX; a kind without a table keeps dense, see :mod:`prunekit.nn.auto`),
"2:4" for a valid 2:4 pattern the layout holds, else "unstructured"; otherwise "dense". On CUDA
the same rule with the break-even measured on that GPU architecture
(``nn.auto.BREAK_EVEN_SPARSITY_CUDA``): "dense" on a GPU where nothing has been measured yet.
Explicit formats always compress.

Low-rank compensation (``PruneConfig(compensate=...)``, :mod:`prunekit.solvers.lowrank`): a pruned
``nn.Linear`` becomes a :class:`LowRankLinear` (``y = x W^T + b + (x A^T) B^T``); ``from_dense``
carries its factors into the SparseLinear, whose forward adds the branch beside the sparse kernel
(``set_lowrank``, ``lowrank_state``; checkpoints store ``lowrank_a`` and ``lowrank_b``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import formats
from .._names import dtype_name
from .auto import WeightStats, choose_format, csr16_runs
from .base import FORMATS, SparseWeightModule, _tensor_attribute, cuda_kernels, held_dtype

_X_DTYPES = (torch.float32, torch.bfloat16)
_LINEAR24_DTYPES = (torch.float16, torch.bfloat16)  # sparse_linear_24's tensor-core kernels


def is_hf_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a Linear whose weight is stored transposed, (in, out)."""
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf")
            and isinstance(getattr(module, "weight", None), torch.Tensor))


def _check_lowrank(owner: str, lowrank_a: torch.Tensor, lowrank_b: torch.Tensor, in_features: int,
                   out_features: int) -> None:
    if not isinstance(lowrank_a, torch.Tensor) or not isinstance(lowrank_b, torch.Tensor):
        raise ValueError(f"{owner}: arguments 'lowrank_a' and 'lowrank_b' must be tensors, but got "
                         f"{type(lowrank_a).__name__} and {type(lowrank_b).__name__}")
    if lowrank_a.dim() != 2 or lowrank_b.dim() != 2 or lowrank_a.shape[1] != in_features or \
            lowrank_b.shape[0] != out_features or lowrank_a.shape[0] != lowrank_b.shape[1]:
        raise ValueError(f"{owner}: arguments 'lowrank_a' and 'lowrank_b' must have shapes (rank, {in_features}) and "
                         f"({out_features}, rank), but got {tuple(lowrank_a.shape)} and {tuple(lowrank_b.shape)}")
    rank = lowrank_a.shape[0]
    if not 1 <= rank <= min(in_features, out_features):
        raise ValueError(f"{owner}: the low-rank factors' rank must be in [1, {min(in_features, out_features)}], "
                         f"but got {rank}")
    if not lowrank_a.dtype.is_floating_point or lowrank_a.dtype != lowrank_b.dtype:
        raise ValueError(f"{owner}: arguments 'lowrank_a' and 'lowrank_b' must share one floating dtype, but got "
                         f"{lowrank_a.dtype} and {lowrank_b.dtype}")


class LowRankLinear(nn.Linear):
    """An ``nn.Linear`` with a low-rank branch beside its (masked, pruned) weight:
    ``y = x W^T + b + (x A^T) B^T`` with ``lowrank_a`` A (rank, in) and ``lowrank_b`` B (out, rank).

    What :func:`prunekit.prune` puts in place of a pruned ``nn.Linear`` when asked for low-rank
    compensation (``PruneConfig(compensate=...)``); :func:`prunekit.sparsify_` turns it into a
    :class:`SparseLinear` carrying the factors. It is an ``nn.Linear`` (``isinstance`` checks,
    ``weight`` and ``bias`` as usual); the factors are parameters, so ``state_dict`` holds them.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"LowRankLinear: argument 'rank' must be an int in [1, {min(in_features, out_features)}], "
                             f"but got {rank!r}")
        self.lowrank_a = nn.Parameter(torch.zeros(rank, in_features, device=device, dtype=self.weight.dtype))
        self.lowrank_b = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=self.weight.dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear, lowrank_a: torch.Tensor, lowrank_b: torch.Tensor) -> "LowRankLinear":
        """A LowRankLinear sharing ``linear``'s weight and bias parameters (not copies) and holding
        the factors (copied, in the weight's dtype and device)."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"LowRankLinear.from_linear: argument 'linear' must be an nn.Linear, but got "
                             f"{type(linear).__name__}")
        _check_lowrank("LowRankLinear.from_linear", lowrank_a, lowrank_b, linear.in_features, linear.out_features)
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_features, module.out_features = linear.in_features, linear.out_features
        module.weight = linear.weight
        module.bias = linear.bias
        weight = linear.weight
        module.lowrank_a = nn.Parameter(lowrank_a.detach().to(weight.device, weight.dtype).clone(),
                                        requires_grad=weight.requires_grad)
        module.lowrank_b = nn.Parameter(lowrank_b.detach().to(weight.device, weight.dtype).clone(),
                                        requires_grad=weight.requires_grad)
        module.train(linear.training)
        return module

    @property
    def rank(self) -> int:
        return self.lowrank_a.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lowrank_a), self.lowrank_b)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


class SparseLinear(SparseWeightModule):
    """``y = x W^T + b`` with W (out_features, in_features) held compressed.

    Build with :meth:`from_dense`; :meth:`to_dense` gives back an equal ``nn.Linear``. The module
    moves with ``.to(device)`` (derived tensors are rebuilt for the new device), works under
    ``torch.compile(fullgraph=True)`` and reports its bytes with :meth:`memory`.
    """

    _USES_CSR16 = True
    REPLACES = "an nn.Linear, Conv1D or SparseLinear"
    GEOMETRY = "(out, in)"

    def __init__(self, in_features: int, out_features: int, *, format: str, tensors: dict[str, torch.Tensor],
                 bias: torch.Tensor | None = None, dtype: torch.dtype | None = None, source: str = "linear"):
        """Wraps already compressed ``tensors`` (the state tensors of ``format``, see
        :mod:`prunekit.formats`); ``dtype`` is the weight dtype (default: that of the values or
        weight). Most code wants :meth:`from_dense` instead."""
        super().__init__()
        if source not in ("linear", "conv1d"):
            raise ValueError(f"SparseLinear: argument 'source' must be 'linear' or 'conv1d', but got {source!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.source = source
        self._init_weight(format, self.out_features, self.in_features, held_dtype(format, tensors, dtype), tensors,
                          bias, (self.out_features, self.in_features))
        self.register_parameter("lowrank_a", None)
        self.register_parameter("lowrank_b", None)

    @classmethod
    def from_dense(cls, module: nn.Module, format: str = "auto", *, break_even: float | None = None,
                   rows: int | None = None) -> "SparseLinear":
        """A SparseLinear computing the same as ``module`` (an ``nn.Linear`` or a transformers
        ``Conv1D``, whose (in, out) weight is transposed here), holding its weight in ``format``:
        "auto", "2:4", "unstructured" or "dense". For "auto", ``rows`` is the number of rows (tokens)
        per call the module will see (default ``DEFAULT_ROWS``) and ``break_even`` overrides the
        measured threshold (see :func:`prunekit.nn.choose_format`). The module is not changed."""
        matrix, source = cls._matrix(module, "SparseLinear.from_dense")
        if format not in FORMATS:
            raise ValueError(f"SparseLinear.from_dense: argument 'format' must be one of {FORMATS}, but got {format!r}")
        if format == "auto":
            format, _ = choose_format(WeightStats.of(matrix), "linear", break_even=break_even, rows=rows)
        tensors = formats.get(format).compress(matrix, "SparseLinear.from_dense")
        bias = module.bias.detach().clone() if getattr(module, "bias", None) is not None else None
        sparse = cls(matrix.shape[1], matrix.shape[0], format=format, tensors=tensors, bias=bias, dtype=matrix.dtype,
                     source=source)
        if isinstance(module, LowRankLinear):  # the low-rank compensation travels with the weight
            sparse.set_lowrank(module.lowrank_a, module.lowrank_b)
        return sparse

    @staticmethod
    def _matrix(module: nn.Module, owner: str) -> tuple[torch.Tensor, str]:
        if is_hf_conv1d(module):
            return module.weight.detach().t(), "conv1d"
        if isinstance(module, nn.Linear):
            return module.weight.detach(), "linear"
        raise ValueError(f"{owner}: argument 'module' must be an nn.Linear or a transformers Conv1D, "
                         f"but got {type(module).__name__}")

    @classmethod
    def auto_format(cls, module: nn.Module, *, break_even: float | None = None,
                    rows: int | None = None) -> tuple[str, str]:
        """The format ``from_dense(module, "auto")`` picks, and why."""
        matrix, _ = cls._matrix(module, "SparseLinear.auto_format")
        return choose_format(WeightStats.of(matrix), "linear", break_even=break_even, rows=rows)

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` with the same weight and bias (also for a module built from a
        transformers Conv1D: the Linear computes the same function)."""
        weight = self.dense_matrix()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=weight.device,
                           dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        lowrank = self.lowrank_state()
        if lowrank:  # a LowRankLinear computes the same function, branch included
            return LowRankLinear.from_linear(linear, lowrank["lowrank_a"], lowrank["lowrank_b"])
        return linear

    # --- low-rank compensation -----------------------------------------------------------------
    def set_lowrank(self, lowrank_a: torch.Tensor | None, lowrank_b: torch.Tensor | None) -> None:
        """Adds (or with None, None removes) the low-rank branch ``y += (x A^T) B^T``: ``lowrank_a``
        A (rank, in), ``lowrank_b`` B (out, rank), stored in the weight's dtype on its device."""
        if lowrank_a is None and lowrank_b is None:
            self.lowrank_a = self.lowrank_b = None
            return
        _check_lowrank("SparseLinear.set_lowrank", lowrank_a, lowrank_b, self.in_features, self.out_features)
        values = getattr(self, self.weight_format.values_name)
        self.lowrank_a = nn.Parameter(lowrank_a.detach().to(values.device, self.weight_dtype).clone(),
                                      requires_grad=False)
        self.lowrank_b = nn.Parameter(lowrank_b.detach().to(values.device, self.weight_dtype).clone(),
                                      requires_grad=False)

    def lowrank_state(self) -> dict[str, torch.Tensor]:
        """{"lowrank_a": A, "lowrank_b": B} when the module has a low-rank branch, else {}."""
        lowrank_a = self._parameters.get("lowrank_a")
        if lowrank_a is None:
            return {}
        return {"lowrank_a": lowrank_a, "lowrank_b": self._parameters["lowrank_b"]}

    @property
    def lowrank_rank(self) -> int:
        """The rank of the low-rank branch (0: none)."""
        lowrank_a = self._parameters.get("lowrank_a")
        return 0 if lowrank_a is None else lowrank_a.shape[0]

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super()._state_tensors(), **self.lowrank_state()}

    def _runs_linear24(self, values: torch.Tensor) -> bool:
        return values.dtype in _LINEAR24_DTYPES and cuda_kernels("sparse_linear_24")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call = self._cached_one_row_call(x)
        if call is not None:
            return call[1](x, *call[2])
        y = self._forward_weight(x)
        lowrank_a = self._parameters.get("lowrank_a")
        if lowrank_a is None:
            return y
        return y + F.linear(F.linear(x, lowrank_a.to(x.dtype)), self._parameters["lowrank_b"].to(x.dtype))

    def _forward_weight(self, x: torch.Tensor) -> torch.Tensor:
        if self._buffers["runtime_tile_values"] is not None:
            tiles = self._tile_tensors(x)
            if tiles is not None:
                values, bitmap, offsets, bias = tiles
                return torch.ops.prunekit.sparse_linear_tiles(x, values, bitmap, offsets, self.out_features,
                                                              self.in_features, bias)
        elif x.is_cuda and self.format == "2:4":
            values = _tensor_attribute(self, "values")
            if x.dtype == values.dtype and self._runs_linear24(values):
                bias = _tensor_attribute(self, "bias")
                return torch.ops.prunekit.sparse_linear_24(x, values, _tensor_attribute(self, "meta"),
                                                           self.in_features,
                                                           None if bias is None else bias.to(x.dtype),
                                                           self._buffers["runtime_meta_sm90"])
        tensors = self._kernel_tensors(x, _X_DTYPES)
        if tensors is None:
            return F.linear(x, self.dense_matrix(), self.bias)
        values, bitmap, row_offsets, bias = tensors
        col_indices = self._buffers["runtime_col_indices"]
        if col_indices is not None and csr16_runs(x.numel() // max(self.in_features, 1),
                                                  self._csr16_choices.get(x.dtype, ())):
            op, arguments = torch.ops.prunekit.sparse_linear_csr16, (values, col_indices, row_offsets)
        else:
            op, arguments = torch.ops.prunekit.sparse_linear, (values, bitmap, row_offsets)
        arguments += (self.in_features, bias)
        if self._parameters.get("lowrank_a") is None and self._tensors_are_attributes():
            self._cache_one_row_call(x, op, arguments)
        return op(x, *arguments)

    def _tensors_are_attributes(self) -> bool:
        """Whether the weight's tensors are the module's own parameters and buffers (not moved out by
        torch.nn.utils.prune or a parametrization, whose tensors change at every read)."""
        names = (*self.weight_format.state_names, "bias")
        return all(name in self._parameters or name in self._buffers for name in names)

    def checkpoint_spec(self) -> dict:
        """What a checkpoint records about this module besides its tensors."""
        spec = {"class": "SparseLinear", "format": self.format, "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.bias is not None,
                "dtype": dtype_name(self.weight_dtype), "source": self.source}
        if self.lowrank_rank:
            spec["lowrank_rank"] = self.lowrank_rank
        return spec

    @classmethod
    def from_checkpoint_spec(cls, spec, state, bias, dtype) -> "SparseLinear":
        return cls(int(spec["in_features"]), int(spec["out_features"]), format=spec["format"], tensors=state, bias=bias,
                   dtype=dtype, source=spec.get("source", "linear"))

    def geometry(self) -> tuple[int, ...]:
        return self.out_features, self.in_features

    @classmethod
    def geometry_of(cls, module: nn.Module) -> tuple[int, ...] | None:
        if isinstance(module, (SparseLinear, nn.Linear)):
            return module.out_features, module.in_features
        if is_hf_conv1d(module):
            return tuple(module.weight.shape[::-1])
        return None

    def extra_repr(self) -> str:
        source = ", source='conv1d'" if self.source == "conv1d" else ""
        lowrank = f", lowrank_rank={self.lowrank_rank}" if self.lowrank_rank else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{self._weight_repr()}{source}{lowrank}")
