"""SparseConv2d: a drop-in nn.Conv2d (groups=1) holding a compressed weight.

The weight is held as the (out_channels, in_channels * kh * kw) matrix ``weight.reshape(out, -1)``
(the view the pruning criteria and N:M groups use). What runs where (``forward``):

=========  ==============  ========  ==================================================================
device     format          dtypes    computation
=========  ==============  ========  ==================================================================
CPU        sparse          fp32      pointwise convs (1x1, stride 1, no padding):
                                     ``prunekit.ops.sparse_conv1x1`` (bitmap SpMM, bias fused)
CPU        sparse          fp32      other convs: exact expansion + ``F.conv2d`` (saves memory, not
                                     time: im2col + the bitmap SpMM measured 1.5-4x slower than
                                     oneDNN's direct conv even at 90% sparsity)
CPU        sparse          other     exact expansion + ``F.conv2d``
CUDA       unstructured    any       pointwise convs: ``prunekit.ops.sparse_conv1x1_tiles`` on the tiled
                                     bitmap layout built at ``.to()`` (per image y = W x through the
                                     tensor-core GEMM; fp32: CUDA cores up to 16 pixels, else an
                                     exact expansion + cuDNN)
CUDA       unstructured    any       other convs: the dense weight, rebuilt on the GPU at ``.to()``
CUDA       2:4             any       ``decompress_24`` + ``F.conv2d`` (saves memory, not time)
any        dense           any       ``F.conv2d``
=========  ==============  ========  ==================================================================

``format="auto"`` on CPU picks a sparse format only for fp32 pointwise convs at or above the
measured break-even sparsity (``nn.auto.BREAK_EVEN_SPARSITY["conv1x1"]``): "2:4" for a valid 2:4
pattern (groups of four along the flattened input dimension) the layout holds, else
"unstructured"; every other conv stays dense (no sparse kernel beats oneDNN there). On CUDA the
same for pointwise convs with the break-even measured on that GPU architecture
(``nn.auto.BREAK_EVEN_SPARSITY_CUDA["<arch>"]["conv1x1"]``; dense where nothing is measured).
Grouped and depthwise convolutions are not supported (they are not pruned either).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import formats
from .._names import dtype_name
from .auto import WeightStats, choose_format
from .base import FORMATS, SparseWeightModule, held_dtype

_X_DTYPES = (torch.float32,)
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"SparseConv2d: argument '{name}' must be an int or a pair, but got {value}")
    return value


class SparseConv2d(SparseWeightModule):
    """A 2-D convolution (groups=1) with a compressed weight. Build with :meth:`from_dense`;
    :meth:`to_dense` gives back an equal ``nn.Conv2d``."""

    REPLACES = "an nn.Conv2d or SparseConv2d"
    GEOMETRY = "(out, in, kernel, stride)"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, stride=1, padding=0, dilation=1,
                 padding_mode: str = "zeros", format: str, tensors: dict[str, torch.Tensor],
                 bias: torch.Tensor | None = None, dtype: torch.dtype | None = None):
        """Wraps already compressed ``tensors`` of the (out, in * kh * kw) weight matrix. Most
        code wants :meth:`from_dense` instead."""
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"SparseConv2d: argument 'padding' must be 'same', 'valid', an int or a pair, "
                                 f"but got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"SparseConv2d: padding='same' needs stride 1, but got stride={self.stride}")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"SparseConv2d: argument 'padding_mode' must be one of {_PADDING_MODES}, "
                             f"but got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.groups = 1
        self._reversed_padding_repeated_twice = self._reversed_padding()
        self.pointwise = (self.kernel_size == (1, 1) and self.stride == (1, 1)
                          and not any(self._reversed_padding_repeated_twice))
        kh, kw = self.kernel_size
        self._init_weight(format, self.out_channels, self.in_channels * kh * kw, held_dtype(format, tensors, dtype),
                          tensors, bias, (self.out_channels, self.in_channels, kh, kw))

    def _reversed_padding(self) -> list[int]:
        """F.pad amounts (left, right, top, bottom), as nn.Conv2d computes them."""
        if self.padding == "valid":
            return [0, 0, 0, 0]
        if self.padding == "same":
            amounts = []
            for d, k in zip(reversed(self.dilation), reversed(self.kernel_size)):
                total = d * (k - 1)
                amounts += [total // 2, total - total // 2]
            return amounts
        return [p for p in reversed(self.padding) for _ in range(2)]

    @classmethod
    def from_dense(cls, module: nn.Module, format: str = "auto", *, break_even: float | None = None,
                   rows: int | None = None) -> "SparseConv2d":
        """A SparseConv2d computing the same as ``module`` (an ``nn.Conv2d`` with groups=1),
        holding its weight in ``format``: "auto", "2:4", "unstructured" or "dense" (``rows`` and
        ``break_even``: see :func:`prunekit.nn.choose_format`). The module is not changed."""
        matrix, kernel = cls._matrix(module, "SparseConv2d.from_dense")
        if format not in FORMATS:
            raise ValueError(f"SparseConv2d.from_dense: argument 'format' must be one of {FORMATS}, but got {format!r}")
        geometry = dict(stride=module.stride, padding=module.padding, dilation=module.dilation,
                        padding_mode=module.padding_mode)
        if format == "auto":
            format, _ = choose_format(WeightStats.of(matrix), kernel, break_even=break_even, rows=rows)
        tensors = formats.get(format).compress(matrix, "SparseConv2d.from_dense", tuple(module.weight.shape))
        bias = module.bias.detach().clone() if module.bias is not None else None
        return cls(module.in_channels, module.out_channels, module.kernel_size, **geometry, format=format,
                   tensors=tensors, bias=bias, dtype=matrix.dtype)

    @staticmethod
    def _matrix(module: nn.Module, owner: str) -> tuple[torch.Tensor, str]:
        """The (out, in * kh * kw) weight matrix and the CPU kernel family that runs it."""
        if not isinstance(module, nn.Conv2d):
            raise ValueError(f"{owner}: argument 'module' must be an nn.Conv2d, but got {type(module).__name__}")
        if module.groups != 1:
            raise ValueError(f"{owner}: argument 'module' must have groups=1 (grouped and depthwise convolutions are "
                             f"not supported), but got groups={module.groups}")
        pointwise = (tuple(module.kernel_size) == (1, 1) and tuple(module.stride) == (1, 1)
                     and not any(module._reversed_padding_repeated_twice))
        return module.weight.detach().reshape(module.out_channels, -1), "conv1x1" if pointwise else "conv"

    @classmethod
    def auto_format(cls, module: nn.Module, *, break_even: float | None = None,
                    rows: int | None = None) -> tuple[str, str]:
        """The format ``from_dense(module, "auto")`` picks, and why."""
        matrix, kernel = cls._matrix(module, "SparseConv2d.auto_format")
        return choose_format(WeightStats.of(matrix), kernel, break_even=break_even, rows=rows)

    def dense_weight4d(self) -> torch.Tensor:
        return self.dense_matrix().reshape(self.weight_shape)

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the same weight, bias and geometry."""
        weight = self.dense_weight4d()
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, groups=1, bias=self.bias is not None,
                         padding_mode=self.padding_mode, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def _runs_tiles(self) -> bool:
        return self.pointwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._buffers["runtime_tile_values"] is not None:
            tiles = self._tile_tensors(x)
            if tiles is not None:
                values, bitmap, offsets, bias = tiles
                image = x.unsqueeze(0) if x.dim() == 3 else x  # unbatched (C, H, W)
                y = torch.ops.prunekit.sparse_conv1x1_tiles(image, values, bitmap, offsets, self.out_channels,
                                                            self.in_channels, bias, 0)
                return y.squeeze(0) if x.dim() == 3 else y
        tensors = self._kernel_tensors(x, _X_DTYPES) if self.pointwise else None
        if tensors is None:
            return self._dense_forward(x)
        values, bitmap, row_offsets, bias = tensors
        if x.dim() == 3:  # unbatched (C, H, W)
            return torch.ops.prunekit.sparse_conv1x1(x.unsqueeze(0).contiguous(), values, bitmap, row_offsets,
                                                     bias, 0).squeeze(0)
        return torch.ops.prunekit.sparse_conv1x1(x.contiguous(), values, bitmap, row_offsets, bias, 0)

    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dense_weight4d()
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation)

    def checkpoint_spec(self) -> dict:
        """What a checkpoint records about this module besides its tensors."""
        return {"class": "SparseConv2d", "format": self.format, "in_channels": self.in_channels,
                "out_channels": self.out_channels, "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation), "padding_mode": self.padding_mode, "bias": self.bias is not None,
                "dtype": dtype_name(self.weight_dtype)}

    @classmethod
    def from_checkpoint_spec(cls, spec, state, bias, dtype) -> "SparseConv2d":
        padding = spec["padding"]
        return cls(int(spec["in_channels"]), int(spec["out_channels"]), tuple(spec["kernel_size"]),
                   stride=tuple(spec["stride"]), padding=padding if isinstance(padding, str) else tuple(padding),
                   dilation=tuple(spec["dilation"]), padding_mode=spec["padding_mode"], format=spec["format"],
                   tensors=state, bias=bias, dtype=dtype)

    def geometry(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, *self.kernel_size, *self.stride)

    @classmethod
    def geometry_of(cls, module: nn.Module) -> tuple[int, ...] | None:
        if isinstance(module, (SparseConv2d, nn.Conv2d)):
            return (module.out_channels, module.in_channels, *module.kernel_size, *module.stride)
        return None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, padding_mode={self.padding_mode!r}, "
                f"bias={self.bias is not None}, {self._weight_repr()}")
