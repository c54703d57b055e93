"""PruneConfig: method objects and their names, one name for the loss callable (``loss_fn``),
and the deprecated names of the previous release."""

import importlib

import pytest
import torch.nn as nn

import prunekit
from prunekit import PruneConfig

from tiny_models import calibration, tiny_model


def loss(model, batch):
    return model(**batch.kwargs).last_hidden_state.square().mean()


def test_gblm_loss_is_the_deprecated_name_of_loss_fn():
    with pytest.deprecated_call(match=r"gblm_loss=\.\.\.\) is deprecated; pass the same callable as loss_fn"):
        config = PruneConfig(method="gblm", gblm_loss=loss, progress=False)
    assert config.loss_fn is loss
    with pytest.deprecated_call():
        assert PruneConfig(gblm_loss=loss, loss_fn=loss).loss_fn is loss
    with pytest.raises(ValueError, match="PruneConfig.gblm_loss: expected it only without loss_fn"):
        with pytest.deprecated_call():
            PruneConfig(gblm_loss=loss, loss_fn=lambda model, batch: 0)
    # and the deprecated spelling still prunes with that loss
    model = tiny_model("bert")
    report = prunekit.prune(model, config, calibration("bert"))
    assert report.method == "gblm" and report.total_sparsity == pytest.approx(0.5)


def test_loss_fn_must_be_callable():
    with pytest.raises(ValueError, match="PruneConfig.loss_fn: expected None or a callable.*but got str"):
        PruneConfig(loss_fn="cross_entropy")


class Named:
    name = "my_named_criterion"
    needs = frozenset()

    def __call__(self, weight, stats):
        return weight.abs()


class Unnamed:
    needs = frozenset()

    def __call__(self, weight, stats):
        return weight.abs()


def by_function(weight, stats):
    return weight.abs()


by_function.needs = set()


@pytest.mark.parametrize("method,name", [(Named(), "my_named_criterion"), (Unnamed(), "Unnamed"),
                                         (by_function, "by_function"), ("magnitude", "magnitude")])
def test_a_method_object_is_reported_by_name(method, name):
    config = PruneConfig(method=method, progress=False)
    assert config.method is method and config.method_name == name
    report = prunekit.prune(nn.Sequential(nn.Linear(8, 8)), config, None)
    assert report.method == name and report.to_dict()["method"] == name


def test_previous_module_constants_warn():
    module = importlib.import_module("prunekit.prune")
    with pytest.deprecated_call(match="prunekit.criteria.names"):
        assert module.METHODS == prunekit.criteria.names()
    with pytest.deprecated_call(match="prunekit.allocation.ALLOCATIONS"):
        assert module.ALLOCATIONS == ("uniform", "global", "owl")
