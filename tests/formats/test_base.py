"""The format registry and what every registered format shares."""

import pytest
import torch

from prunekit import formats
from prunekit.formats.base import WeightFormat


def test_the_registry_holds_the_four_formats():
    assert set(formats.names()) == {"2:4", "unstructured", "csr16", "dense"}
    for name in formats.names():
        fmt = formats.get(name)
        assert isinstance(fmt, WeightFormat) and fmt.name == name and repr(fmt) == f"<weight format {name!r}>"
        assert set(fmt.checkpoint_names) <= set(fmt.state_names) and fmt.values_name in fmt.state_names
    assert formats.get("unstructured").view_is_state and not formats.get("2:4").view_is_state


@pytest.mark.parametrize("name", ["bitmap", "csr", None, ["2:4"]])
def test_unknown_names_are_clear_errors(name):
    with pytest.raises(ValueError, match=rf"formats.get: argument 'name' must be one of .*'2:4'.*, but got "
                                         rf"{repr(name).replace('[', '.').replace(']', '.')}"):
        formats.get(name)


def test_register_refuses_a_taken_name_and_non_formats():
    class Other(WeightFormat):
        name = "2:4"

    with pytest.raises(ValueError, match=r"formats.register: a format named '2:4' is registered already"):
        formats.register(Other())
    with pytest.raises(TypeError, match="argument 'fmt' must be a WeightFormat with a name"):
        formats.register(object())
    with pytest.raises(TypeError, match="argument 'fmt' must be a WeightFormat with a name"):
        formats.register(WeightFormat())
    assert formats.register(formats.get("2:4")) is formats.get("2:4")  # the same object again: no change


@pytest.mark.parametrize("name", ["2:4", "unstructured", "csr16", "dense"])
def test_missing_and_extra_checkpoint_tensors_are_named(name):
    fmt = formats.get(name)
    stored = {key: torch.zeros(1) for key in fmt.checkpoint_names}
    for bad in ({**stored, "extra": torch.zeros(1)}, {k: v for k, v in list(stored.items())[1:]}):
        with pytest.raises(ValueError, match=rf"owner: a '{name}' weight is stored as tensors "
                                             rf"\[{', '.join(repr(k) for k in sorted(fmt.checkpoint_names))}\], "
                                             rf"but got"):
            fmt.from_checkpoint(bad, "owner")
