"""What every weight format provides, and the registry that finds a format by name.

A format stores a (rows, cols) weight matrix as named tensors, its *state* (what a sparse module
holds in ``state_dict``). It owns compressing a dense matrix, the exact dense matrix back, the
checks of a state (names, shapes, dtypes, and whether the tensors agree with each other), and its
checkpoint entry both ways: the tensors written and the state rebuilt from them. Modules
(:mod:`prunekit.nn`) and checkpoints (:mod:`prunekit.io`) ask the format, ``formats.get(name)``,
rather than knowing the layouts themselves.
"""

from __future__ import annotations

import torch

from .._names import dtype_name

State = dict[str, torch.Tensor]
Expected = dict[str, tuple[tuple[int, ...], torch.dtype]]


class WeightFormat:
    """The storage of one layout. Subclasses set the class attributes and implement
    :meth:`compress`, :meth:`to_dense` and :meth:`expected_state`; the rest has defaults."""

    name: str = ""  # as modules and checkpoints spell it
    state_names: tuple[str, ...] = ()  # the tensors of a state, in state_dict order
    checkpoint_names: tuple[str, ...] = ()  # the tensors written; the others derive from them on load
    parameter_names: tuple[str, ...] = ()  # state tensors a module holds as nn.Parameter (not buffers)
    values_name: str = "values"  # the tensor holding the weight's values: its dtype is the weight's dtype
    compressed: bool = True
    # True when kernel_view returns the state's own tensors, so a module holds nothing more for
    # the CPU bitmap kernels; False when it derives new ones (or has no view).
    view_is_state: bool = False

    # ------------------------------------------------------------------ to implement
    def compress(self, matrix: torch.Tensor, owner: str, weight_shape: tuple[int, ...] | None = None) -> State:
        """The state of a dense (rows, cols) ``matrix``, on the matrix's device; a matrix the
        format cannot hold raises ValueError naming ``owner``. ``weight_shape``: the module's
        weight shape, for formats that keep it (dense)."""
        raise NotImplementedError

    def to_dense(self, state: State, rows: int, cols: int) -> torch.Tensor:
        """The (rows, cols) matrix, exactly, on the state's device."""
        raise NotImplementedError

    def expected_state(self, rows: int, cols: int, dtype: torch.dtype, state: State,
                       weight_shape: tuple[int, ...] | None = None) -> Expected:
        """Shape and dtype each state tensor of a ``dtype`` (rows, cols) weight must have
        (``weight_shape``: the module's weight shape, for formats that keep it)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ defaults
    def check_consistency(self, owner: str, state: State, rows: int, cols: int) -> None:
        """Checks that tensors of the right shapes agree with each other (ValueError naming
        ``owner``). Default: nothing to check."""

    def check_state(self, owner: str, state: State, rows: int, cols: int, dtype: torch.dtype,
                    weight_shape: tuple[int, ...] | None = None) -> None:
        """Raises ValueError naming ``owner``, the tensor, what it must be and what it is unless
        ``state`` holds exactly this format's tensors with the right shapes and dtypes, agreeing
        with each other (:meth:`check_consistency`)."""
        if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
            raise ValueError(f"{owner}: the tensors of format {self.name!r} must be a dict of tensors, but got "
                             f"{type(state).__name__}")
        expected = self.expected_state(rows, cols, dtype, state, weight_shape)
        missing = sorted(set(self.state_names) - set(state))
        unexpected = sorted(set(state) - set(self.state_names))
        if missing or unexpected:
            raise ValueError(f"{owner}: format {self.name!r} needs tensors {sorted(self.state_names)}, but got "
                             f"{sorted(state)}")
        for key, (shape, key_dtype) in expected.items():
            tensor = state[key]
            if tuple(tensor.shape) != tuple(shape) or tensor.dtype != key_dtype:
                raise ValueError(f"{owner}: tensor '{key}' of a {self.name!r} {rows}x{cols} {dtype_name(dtype)} weight "
                                 f"must be {dtype_name(key_dtype)} of shape {tuple(shape)}, but got "
                                 f"{dtype_name(tensor.dtype)} of shape {tuple(tensor.shape)}")
        self.check_consistency(owner, state, rows, cols)

    def to_checkpoint(self, state: State) -> State:
        """The tensors a checkpoint stores for ``state`` (keys as written after the module name)."""
        return {key: state[key] for key in self.checkpoint_names}

    def from_checkpoint(self, stored: State, owner: str) -> State:
        """The state from a checkpoint's tensors (those of :meth:`to_checkpoint`); stored tensors
        that are missing, unexpected or of the wrong kind raise ValueError naming ``owner``. The
        caller checks the result with :meth:`check_state`."""
        names = set(self.checkpoint_names)
        if set(stored) != names:
            raise ValueError(f"{owner}: a {self.name!r} weight is stored as tensors {sorted(names)}, but got "
                             f"{sorted(stored)}")
        return dict(stored)

    def nonzeros(self, state: State) -> int:
        """Nonzero weights (zero padding of a layout not counted)."""
        return int(torch.count_nonzero(state[self.values_name]))

    def kernel_view(self, state: State, cols: int):
        """The weight as the CPU bitmap kernels take it (a :class:`~prunekit.formats.BitmapWeight`),
        exactly, or None where the format has no such view. Default: None."""
        return None

    def checkpoint_nbytes(self, rows: int, cols: int, dtype: torch.dtype, nonzeros: int, is_24: bool) -> int | None:
        """Bytes of this format's checkpoint entry (:meth:`to_checkpoint`) for a (rows, cols)
        ``dtype`` weight with ``nonzeros`` nonzeros (``is_24``: at most two in every group of four
        along the columns), or None where the format cannot hold it exactly. Default: None (the
        format is not a checkpoint storage)."""
        return None

    def expands_on(self, device_type: str) -> bool:
        """Whether :meth:`to_dense` runs a decompression kernel on ``device_type``; where it
        does not, a module keeps the dense weight, built once when it moves there."""
        return True

    def __repr__(self) -> str:
        return f"<weight format {self.name!r}>"


_FORMATS: dict[str, WeightFormat] = {}


def register(fmt: WeightFormat) -> WeightFormat:
    """Adds ``fmt`` to the registry under ``fmt.name`` (a name taken by another format raises)."""
    if not isinstance(fmt, WeightFormat) or not fmt.name:
        raise TypeError(f"formats.register: argument 'fmt' must be a WeightFormat with a name, but got {fmt!r}")
    if _FORMATS.get(fmt.name, fmt) is not fmt:
        raise ValueError(f"formats.register: a format named {fmt.name!r} is registered already: {_FORMATS[fmt.name]!r}")
    _FORMATS[fmt.name] = fmt
    return fmt


def get(name: str) -> WeightFormat:
    """The registered format called ``name`` ("2:4", "unstructured", "csr16", "dense")."""
    try:
        return _FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"formats.get: argument 'name' must be one of {names()}, but got {name!r}") from None


def names() -> tuple[str, ...]:
    """The names of the registered formats, in registration order."""
    return tuple(_FORMATS)
