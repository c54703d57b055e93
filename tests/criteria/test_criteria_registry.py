"""The registry: the built-ins' declared facts, registration and its errors, lookup."""

import itertools

import pytest
import torch

import prunekit
from prunekit import PruneConfig, criteria

_counter = itertools.count()


def fresh_name() -> str:
    return f"test_registry_{next(_counter)}"


def plain(weight, stats):
    return weight.abs()


def test_builtins_are_registered_with_their_facts():
    assert criteria.names()[:6] == ("magnitude", "global_magnitude", "wanda", "sparsegpt", "gblm", "random")
    facts = {name: criteria.resolve(name) for name in criteria.names()[:6]}
    assert facts["magnitude"].needs == frozenset() and not facts["magnitude"].per_row
    assert facts["global_magnitude"].allocation == "global"
    assert facts["wanda"].needs == {"input_norms"} and facts["wanda"].per_row
    assert facts["gblm"].needs == {"input_norms", "gradients"} and facts["gblm"].options == ("gblm_gradient_scale",)
    assert facts["random"].needs == {"generator"}
    assert isinstance(facts["sparsegpt"], criteria.Solver) and not facts["sparsegpt"].refinable
    assert all(isinstance(facts[n], criteria.Criterion) and facts[n].refinable for n in facts if n != "sparsegpt")
    # a solver's cost adds its solve to the error every layer computes
    assert facts["sparsegpt"].cost(4, 8) == 4 * 8 * 8 + 4 * 8 * 8 + 8 ** 3
    assert facts["wanda"].cost(4, 8) == 4 * 8 * 8


def test_register_and_look_up():
    name = fresh_name()
    assert prunekit.register_criterion(name, plain) is plain
    entry = criteria.resolve(name)
    assert entry.name == name and entry.score is plain
    assert entry.needs == criteria.DEFAULT_NEEDS and not entry.per_row  # a plain function's defaults
    assert criteria.names()[-1] == name
    assert criteria.resolve(plain) is entry  # the registered object keeps its name
    assert PruneConfig(method=plain).method_name == name


@pytest.mark.parametrize("name", ["", "  ", None, 3])
def test_a_name_must_be_a_non_empty_string(name):
    with pytest.raises(ValueError, match=r"register_criterion\(.*\): name: expected a non-empty string, but got"):
        prunekit.register_criterion(name, plain)


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match=r"register_criterion\('wanda'\): name: 'wanda' is already registered"):
        prunekit.register_criterion("wanda", plain)
    name = fresh_name()
    prunekit.register_criterion(name, plain)
    with pytest.raises(ValueError, match=f"'{name}' is already registered"):
        prunekit.register_criterion(name, lambda weight, stats: weight)
    assert criteria.resolve(name).score is plain


def test_a_criterion_must_be_callable():
    with pytest.raises(ValueError, match=r"expected a callable criterion\(weight, stats\) -> scores, but got int"):
        prunekit.register_criterion(fresh_name(), 3)


def with_facts(**facts):
    def criterion(weight, stats):
        return weight.abs()
    for key, value in facts.items():
        setattr(criterion, key, value)
    return criterion


@pytest.mark.parametrize("facts,match", [
    (dict(needs="hessian"), r"needs: expected a set of names among \[.*'hessian'.*\], but got 'hessian'"),
    (dict(needs=3), r"needs: expected a set of names among .*, but got 3"),
    (dict(needs={"input_norms", "activations"}), r"needs: expected names among .*, but got \['activations'\]"),
    (dict(per_row="yes"), r"per_row: expected True or False, but got 'yes'"),
    (dict(allocation="layerwise"), r"allocation: expected None or one of uniform, global, owl, but got 'layerwise'"),
    (dict(options="blocksize"), r"options: expected a tuple of PruneConfig field names, but got 'blocksize'"),
])
def test_bad_declared_facts(facts, match):
    name = fresh_name()
    with pytest.raises(ValueError, match=match):
        prunekit.register_criterion(name, with_facts(**facts))
    assert name not in criteria.names()  # nothing half-registered
    with pytest.raises(ValueError, match=r"PruneConfig.method: " + match):
        PruneConfig(method=with_facts(**facts))


def test_options_must_name_prune_config_fields():
    with pytest.raises(ValueError, match=r"PruneConfig.method: 'criterion' declares options \['strength'\] that are "
                                         "not PruneConfig fields"):
        PruneConfig(method=with_facts(options=("strength",)))


def test_method_must_be_a_name_or_a_callable():
    with pytest.raises(ValueError, match=r"PruneConfig.method: expected one of magnitude, .*random.* or a callable "
                                         r"criterion\(weight, stats\) -> scores, but got object"):
        PruneConfig(method=object())


def test_declare_sets_the_facts():
    @criteria.declare(needs={"hessian"}, per_row=True)
    def diagonal(weight, stats):
        return weight.abs() * torch.diagonal(stats.hessian)

    entry = criteria.resolve(diagonal)
    assert entry.needs == {"hessian"} and entry.per_row and entry.name == "diagonal"
