"""Drop-in sparse modules: SparseLinear (for nn.Linear and transformers Conv1D) and SparseConv2d
(for nn.Conv2d, groups=1), holding a compressed weight ("2:4", "unstructured" or "dense") and
running it through the prunekit ops. Build them with ``from_dense(module, format="auto")``, or
swap a whole pruned model at once with :func:`prunekit.sparsify_`. The "auto" choice lives in
:mod:`prunekit.nn.auto`, what the modules share in :mod:`prunekit.nn.base`."""

from .auto import (BREAK_EVEN_SPARSITY, BREAK_EVEN_SPARSITY_AMX, BREAK_EVEN_SPARSITY_BY_ISA, BREAK_EVEN_SPARSITY_CUDA,
                   DEFAULT_ROWS, SEMI24_MIN_FILL, WeightStats, break_even_sparsity, choose_format, cpu_kernel_kind,
                   cuda_arch)
from .base import FORMATS, SparseWeightModule
from .conv import SparseConv2d
from .linear import LowRankLinear, SparseLinear, is_hf_conv1d

__all__ = ["BREAK_EVEN_SPARSITY", "BREAK_EVEN_SPARSITY_AMX", "BREAK_EVEN_SPARSITY_BY_ISA", "BREAK_EVEN_SPARSITY_CUDA",
           "DEFAULT_ROWS", "FORMATS", "LowRankLinear", "SEMI24_MIN_FILL", "SparseConv2d", "SparseLinear",
           "SparseWeightModule", "WeightStats", "break_even_sparsity", "choose_format", "cpu_kernel_kind", "cuda_arch",
           "is_hf_conv1d"]
