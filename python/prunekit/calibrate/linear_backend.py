"""Which GEMM library runs the fp32 linears of the calibration forwards on CPU.

ATen runs an fp32 CPU linear through its BLAS (MKL in the x86 wheels), and MKL chooses its
kernels by CPU vendor: on AMD CPUs with AVX-512 (Zen 4, Zen 5) it runs AVX2 kernels, at about
half the speed of oneDNN's AVX-512 ones, which the wheels also carry (the op behind
``torch.ops.mkldnn._linear_pointwise``). The calibration forwards are most of a pruning run, so
"auto" times both once per process and takes oneDNN only where it is clearly faster. The two
differ by float rounding only (another order of summation).
"""

from __future__ import annotations

import contextlib
import time
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

LINEAR_BACKENDS = ("auto", "aten", "onednn")

# oneDNN is taken by "auto" only at this speed-up or more: where the two are close, the choice
# could flip between runs with the machine's noise, and with it the last bits of the statistics.
_CLEARLY_FASTER = 1.25

_measured: dict[int, str] = {}  # "auto"'s choice by thread count, once per process


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's linear op, it runs on this CPU, and oneDNN is enabled
    (``torch.backends.mkldnn.enabled``: a user who turns it off gets ATen)."""
    return (bool(torch.backends.mkldnn.is_available()) and bool(torch.backends.mkldnn.enabled)
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed by oneDNN (fp32 CPU tensors, no autograd)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _fastest_of_five(run) -> float:
    run()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def _measure() -> str:
    generator = torch.Generator().manual_seed(0)  # the caller's random stream stays untouched
    x, weight = torch.randn(512, 1024, generator=generator), torch.randn(1024, 1024, generator=generator)
    aten = _fastest_of_five(lambda: F.linear(x, weight))
    onednn = _fastest_of_five(lambda: onednn_linear(x, weight, None))
    return "onednn" if aten >= _CLEARLY_FASTER * onednn else "aten"


def resolve_linear_backend(setting: str, *, single_process: bool = True, device=None,
                           owner: str = "linear_backend") -> str:
    """"aten" or "onednn" for ``setting`` ("auto", "aten" or "onednn"). "auto" measures once per
    process and thread count; it keeps ATen where oneDNN is missing, across several processes
    (every rank must compute alike, and each would measure on its own) and for blocks running on
    another ``device`` than the CPU (where the oneDNN path never applies)."""
    if setting not in LINEAR_BACKENDS:
        raise ValueError(f"{owner}: expected one of {', '.join(map(repr, LINEAR_BACKENDS))}, but got {setting!r}")
    if setting == "onednn" and not onednn_available():
        raise ValueError(f"{owner}: 'onednn' needs a torch build with oneDNN (torch.backends.mkldnn) on a CPU "
                         "it supports, and oneDNN enabled; use 'auto' or 'aten'")
    if device is not None and torch.device(device).type not in ("cpu", "meta"):  # meta: streamed, loads to CPU
        return "aten"
    if setting != "auto":
        return setting
    if not single_process or not onednn_available():
        return "aten"
    threads = torch.get_num_threads()
    if threads not in _measured:
        _measured[threads] = _measure()
    return _measured[threads]


# Tensor subclasses (quantized or distributed weights) keep their own F.linear handling.
_PLAIN = (torch.Tensor, nn.Parameter)


def _onednn_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight, bias = self.weight, self.bias
    if (x.dtype == weight.dtype == torch.float32 and x.device.type == weight.device.type == "cpu"
            and x.dim() >= 2 and weight.is_contiguous() and (bias is None or bias.dtype == torch.float32)
            and type(x) is torch.Tensor and type(weight) in _PLAIN and (bias is None or type(bias) in _PLAIN)
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad)))
            and not torch.is_autocast_enabled("cpu")):
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


@contextlib.contextmanager
def linears_through(module: nn.Module, backend: str):
    """Within the context, the plain ``nn.Linear`` modules inside ``module`` run fp32 CPU inputs
    through oneDNN when ``backend`` is "onednn" (anything else, anything with autograd, tensor
    subclasses and anything under CPU autocast run as before); their hooks run as usual."""
    patched = []
    if backend == "onednn":
        for linear in module.modules():
            if type(linear) is nn.Linear and "forward" not in linear.__dict__:
                linear.forward = types.MethodType(_onednn_forward, linear)
                patched.append(linear)
    try:
        yield
    finally:
        for linear in patched:
            del linear.forward
