"""Fixtures of the op tests."""

import pytest

import prunekit

ISAS = prunekit.build_info()["cpu_isas_runnable"]  # variants this CPU cannot run are not forced


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test once per CPU ISA variant this CPU can run, forcing that variant."""
    prunekit._C._set_cpu_isa(request.param)
    yield request.param
    prunekit._C._set_cpu_isa("")
