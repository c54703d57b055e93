"""Weights and tolerances shared by the sparse linear op tests (the weights are those of the
format tests, tests/formats/format_cases.py)."""

import torch

from format_cases import sparse_weight  # noqa: F401  (re-exported for the op tests)


def tolerance(dtype, k):
    # fp32 accumulation in a different order than the reference GEMM.
    return dict(rtol=1e-4, atol=1e-5 * k) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
