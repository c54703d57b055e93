"""The tiled bitmap layout: how the CUDA kernels hold an "unstructured" weight.

The bitmap format (:mod:`prunekit.formats.bitmap`) packs each row's nonzeros after the previous
row's; a GPU warp cannot start in the middle of it without a prefix sum over everything before.
Here the weight is cut into tiles of 16 rows x 64 columns, each tile a small bitmap-format matrix:

- ``values`` (size,): each tile's nonzeros packed row by row in column order (the bitmap format's
  order within the tile), tile after tile (panel by panel, each panel's 64-column chunks in order),
  each tile's run starting at a multiple of 8 values and zero-padded to the next;
- ``bitmap`` (panels, chunks, 16, 4) int16: word ``w`` of row ``r`` of tile (panel ``p``, chunk
  ``c``) is the bitmap format's word ``4 c + w`` of row ``16 p + r`` (128 contiguous bytes a tile,
  which one warp loads as 32 word pairs; the scan of their popcounts places each pair in the run);
- ``offsets`` (panels * chunks + 1,) int64: where each tile's run starts, the last entry ``size``.

Rows and columns past the weight are unmarked padding. Bytes per weight: (1 - s) * b + 1/8, plus
about 3.5 * b / 1024 (run padding) and 8 / 1024 (offsets). The conversions
(``prunekit.ops.bitmap_to_tiles`` / ``tiles_to_bitmap``, CPU and CUDA) are exact both ways: a
module keeps the bitmap format as its state and checkpoint and builds the tiles on the GPU as a
runtime tensor. The layout in C++: ``csrc/include/prunekit/bitmap_tiles.h``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .bitmap import BitmapWeight

TILE_ROWS = 16
TILE_COLS = 64
TILE_WORDS = TILE_COLS // 16
RUN_ALIGN = 8
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def tile_grid(rows: int, cols: int) -> tuple[int, int]:
    """(panels, chunks): the tiles along the rows and along the columns of a (rows, cols) weight."""
    return -(-rows // TILE_ROWS), -(-cols // TILE_COLS)


@dataclass(frozen=True)
class TiledBitmapWeight:
    """A (rows, cols) weight in the tiled bitmap layout (tensors as the ``*_tiles`` ops take them)."""

    values: torch.Tensor  # (size,) fp32, bf16 or fp16: the tiles' runs
    bitmap: torch.Tensor  # (panels, chunks, 16, 4) int16
    offsets: torch.Tensor  # (panels * chunks + 1,) int64
    rows: int
    cols: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    @property
    def device(self) -> torch.device:
        return self.values.device

    @classmethod
    def from_bitmap(cls, weight: BitmapWeight) -> "TiledBitmapWeight":
        """The same weight, tiled, on the bitmap weight's device (the op checks the bitmap weight)."""
        values, bitmap, offsets = torch.ops.prunekit.bitmap_to_tiles(weight.values, weight.bitmap, weight.row_offsets,
                                                                     weight.cols)
        return cls(values, bitmap, offsets, weight.bitmap.shape[0], weight.cols)

    @classmethod
    def from_dense(cls, dense: torch.Tensor) -> "TiledBitmapWeight":
        """The tiled weight of a 2-D fp32, bf16 or fp16 matrix, on the matrix's device (compressed
        on the CPU, tiled where the matrix is)."""
        weight = BitmapWeight.from_dense(dense)
        device = dense.device
        return cls.from_bitmap(BitmapWeight(weight.values.to(device), weight.bitmap.to(device),
                                            weight.row_offsets.to(device), weight.cols))

    def to_bitmap(self) -> BitmapWeight:
        """The bitmap-format weight, exactly (the op checks every tile first)."""
        values, bitmap, row_offsets = torch.ops.prunekit.tiles_to_bitmap(self.values, self.bitmap, self.offsets,
                                                                         self.rows, self.cols)
        return BitmapWeight(values, bitmap, row_offsets, self.cols)

    def to_dense(self) -> torch.Tensor:
        """The (rows, cols) matrix, exactly (the op checks every tile first)."""
        return torch.ops.prunekit.decompress_tiles(self.values, self.bitmap, self.offsets, self.rows, self.cols)

    def validate(self) -> "TiledBitmapWeight":
        """Checks every tile (runs against marks and offsets, no marks in padding); ValueError
        naming the first bad tile. Returns self. On CUDA this reads the verdict back (a sync)."""
        self.to_dense()
        return self

    def to(self, device) -> "TiledBitmapWeight":
        return TiledBitmapWeight(self.values.to(device), self.bitmap.to(device), self.offsets.to(device), self.rows,
                                 self.cols)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.bitmap, self.offsets))
