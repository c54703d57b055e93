"""The "dense" format: the weight as it is, state and checkpoint entry ``weight`` in the module's
weight shape (Linear: (out, in); Conv2d: (out, in, kh, kw)). A sparse module holds it where no
compressed format pays (or the caller asks for it), so one module type covers every layer."""

from __future__ import annotations

import torch

from .base import State, WeightFormat, register


class DenseFormat(WeightFormat):
    name = "dense"
    state_names = ("weight",)
    checkpoint_names = ("weight",)
    parameter_names = ("weight",)  # a module holds it as nn.Parameter, as nn.Linear does
    values_name = "weight"
    compressed = False

    def compress(self, matrix: torch.Tensor, owner: str, weight_shape: tuple[int, ...] | None = None) -> State:
        weight = matrix.detach().clone()
        return {"weight": weight if weight_shape is None else weight.reshape(weight_shape)}

    def to_dense(self, state: State, rows: int, cols: int) -> torch.Tensor:
        return state["weight"].detach().reshape(rows, cols)

    def checkpoint_nbytes(self, rows, cols, dtype, nonzeros, is_24):
        return rows * cols * dtype.itemsize

    def expected_state(self, rows, cols, dtype, state, weight_shape=None):
        return {"weight": (tuple(weight_shape) if weight_shape is not None else (rows, cols), dtype)}


DENSE = register(DenseFormat())
