"""SliceGPT: :func:`slice_` rotates a transformer's residual stream into the principal bases of its
calibration activations and deletes the least principal dimensions (dense weights stay dense, only
smaller); :func:`restore_sliced_structure` rebuilds a sliced model's modules for loading."""

from .families import FAMILIES, MODEL_TYPES, SlicingError
from .modules import ResidualRMSNorm, SlicedLayerMixin
from .slicer import (BASES, CONFIG_KEY, SliceReport, kept_dim, restore_sliced_from_config, restore_sliced_structure,
                     slice_)

__all__ = ["slice_", "SliceReport", "SlicingError", "restore_sliced_structure", "restore_sliced_from_config",
           "kept_dim", "BASES", "CONFIG_KEY", "FAMILIES", "MODEL_TYPES", "ResidualRMSNorm", "SlicedLayerMixin"]
