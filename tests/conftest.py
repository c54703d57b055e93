"""Shared fixtures: the devices to run op tests on, and seeded generators."""

import pytest
import torch

import prunekit

CUDA_BUILT = prunekit.build_info()["cuda_built"]


def _devices():
    devices = [pytest.param("cpu", id="cpu")]
    cuda_ready = CUDA_BUILT and torch.cuda.is_available()
    reason = "needs a CUDA build of prunekit and an NVIDIA GPU"
    devices.append(
        pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not cuda_ready, reason=reason)])
    )
    return devices


DEVICES = _devices()


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)
