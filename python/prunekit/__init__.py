"""prunekit: prune PyTorch models and run the pruned models faster.

Importing prunekit loads its native extension, which registers the ``torch.ops.prunekit.*`` ops.
A missing or broken extension is an error here, never a silent fallback to slower code.
"""

import torch

try:
    from . import _C
except ImportError as error:  # pragma: no cover - exercised only by broken installs
    raise ImportError(
        "prunekit's native extension (prunekit._C) failed to load: "
        f"{error}. Rebuild it against the installed torch {torch.__version__}: "
        "pip install --no-build-isolation -e . (see README.md)"
    ) from error


def build_info() -> dict:
    """What this build contains.

    Returns a dict with the package ``version``, the ``torch_version`` it was built against,
    ``cuda_built`` and ``cuda_archs``, the CPU ISA variants compiled in (``cpu_isas_compiled``) and
    those of them this CPU can run (``cpu_isas_runnable``), the best one this CPU supports
    (``cpu_isa_detected``) and the one the kernels use (``cpu_isa_selected``), the CPU features
    seen at run time, the bf16 x bf16 GEMV variant in use (``cpu_bf16_gemv``, None where bf16
    inputs are widened to fp32) and the most rows it runs (``cpu_bf16_gemv_max_rows``: 4 with
    AMX, 8 without, 0 without the GEMV), the bf16 x bf16 kernel past 4 rows (``cpu_bf16_spmm``:
    "amx" on CPUs with AMX-BF16, else None), how the CSR16 GEMV reads x (``cpu_csr16_gemv``:
    "gather" with AVX-512 gathers, "loads" with scalar loads where gathers are slow, as on AMD),
    the compiler and build type.
    """
    info = dict(_C.build_info())
    info["torch_runtime_version"] = torch.__version__
    return info


def _check_torch_matches_build() -> None:
    built = _C.build_info()["torch_version"]
    if built.split("+")[0] != torch.__version__.split("+")[0]:
        raise ImportError(
            f"prunekit was built against torch {built} but torch {torch.__version__} is installed; "
            "C++ extensions need the same torch. Rebuild: pip install --no-build-isolation -e ."
        )


_check_torch_matches_build()

from . import formats, ops  # noqa: E402  (registers the fake impls once _C has defined the ops)
from .prune import PruneConfig, PruneReport, prune  # noqa: E402
from .criteria import register_criterion  # noqa: E402  (PruneConfig(method=...) by name)
from .solvers.lowrank import LowRank  # noqa: E402  (PruneConfig(compensate=LowRank(...)))
from . import nn  # noqa: E402,F401  (SparseLinear, SparseConv2d)
from .io import load, save  # noqa: E402  (compressed checkpoints)
from .surgery import SparsifyConfig, SparsifyReport, sparsify_  # noqa: E402
from .surgery.structured import (StructuredConfig, StructuredReport, prune_structured,  # noqa: E402  (structured)
                                 register_importance)

from .streaming import prune_pretrained  # noqa: E402  (models larger than memory)

from .surgery.layers import LayerPruneReport, prune_layers  # noqa: E402  (whole blocks or sublayers)
from .recovery import RecoveryReport, recover  # noqa: E402  (training after pruning)
from .reconstruction import ReconstructionReport, reconstruct  # noqa: E402  (refitting kept weights)
from .surgery.slicing import SliceReport, slice_  # noqa: E402  (SliceGPT)

__version__ = _C.build_info()["version"]
__all__ = ["build_info", "formats", "ops", "__version__", "prune", "PruneConfig", "PruneReport"]
# prunekit.nn stays out of __all__: a star import would shadow torch.nn
__all__ += ["sparsify_", "SparsifyConfig", "SparsifyReport", "save", "load"]
__all__ += ["prune_structured", "StructuredConfig", "StructuredReport", "register_importance"]
__all__ += ["register_criterion"]
__all__ += ["LowRank"]
__all__ += ["prune_pretrained"]
__all__ += ["prune_layers", "LayerPruneReport", "recover", "RecoveryReport", "reconstruct", "ReconstructionReport"]
__all__ += ["slice_", "SliceReport"]
