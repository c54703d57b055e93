"""Weights and tolerances shared by the sparse linear op tests."""

import torch


def sparse_weight(rows, cols, sparsity, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator)
    weight[torch.rand(rows, cols, generator=generator) < sparsity] = 0
    return weight.to(dtype)


def tolerance(dtype, k):
    # fp32 accumulation in a different order than the reference GEMM.
    return dict(rtol=1e-4, atol=1e-5 * k) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
