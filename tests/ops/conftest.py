"""Fixtures of the op tests; their weights come from tests/formats/format_cases.py."""

import sys
from pathlib import Path

import pytest

import prunekit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "formats"))

ISAS = prunekit.build_info()["cpu_isas_runnable"]  # variants this CPU cannot run are not forced


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test once per CPU ISA variant this CPU can run, forcing that variant."""
    prunekit._C._set_cpu_isa(request.param)
    yield request.param
    prunekit._C._set_cpu_isa("")
