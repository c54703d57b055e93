"""StructuredConfig (prunekit.surgery.structured.config): PruneConfig's words and defaults, bad
input named in __post_init__, and the deprecated keyword call of prune_structured, which warns and
gives exactly what the new call gives."""

import dataclasses
import math

import pytest
import torch
from structured_cnn_models import cnn_calibration, tiny_cnn
from structured_hf_models import hf_calibration, hf_model

import prunekit
from prunekit import PruneConfig
from prunekit.solvers.structured import MagnitudeImportance
from prunekit.surgery.structured import StructuredConfig, prune_structured


def test_shared_fields_take_prune_configs_defaults():
    ours = {f.name: f.default for f in dataclasses.fields(StructuredConfig) if f.init}
    theirs = {f.name: f.default for f in dataclasses.fields(PruneConfig)}
    shared = set(ours) & set(theirs)
    assert {"method", "sparsity", "ignore", "device", "blocks", "progress"} <= shared
    assert {name: ours[name] for name in shared} == {name: theirs[name] for name in shared}
    assert "loss_fn" in ours and not {"ratio", "importance"} & set(ours)


def test_top_level_names():
    from prunekit.solvers.structured import register_importance

    assert prunekit.StructuredConfig is StructuredConfig and prunekit.prune_structured is prune_structured
    assert prunekit.register_importance is register_importance
    assert {"StructuredConfig", "StructuredReport", "prune_structured", "register_importance"} <= set(prunekit.__all__)


def test_normalised_fields():
    config = StructuredConfig(method="magnitude", sparsity={"mlp": 1 / 4}, targets="mlp", ignore="lm_head",
                              modules=["a", "b"])
    assert config.targets == ("mlp",) and config.ignore == ("lm_head",) and config.modules == ("a", "b")
    assert config.sparsity == {"mlp": 0.25} and config.method_name == "magnitude" and config.needs == set()
    assert not config.needs_calibration
    assert StructuredConfig(method="flap").compensate_bias and StructuredConfig(method="flap").needs_calibration
    assert not StructuredConfig(method="flap", bias_compensation=False).compensate_bias
    assert StructuredConfig(method="taylor").needs == {"gradients"}


BAD = [
    (dict(method="l1"), r"StructuredConfig.method: expected a registered importance name \(one of \('magnitude', "
                        r"'taylor', 'wanda', 'flap'.*\)\) or an importance object, but got 'l1'"),
    (dict(method=42), r"StructuredConfig.method: expected .* or an importance object .* but got 42"),
    (dict(method=MagnitudeImportance), r"StructuredConfig.method: expected .* but got <class"),
    (dict(sparsity=1.0), r"StructuredConfig.sparsity: expected a number in \[0, 1\), but got 1.0"),
    (dict(sparsity=-0.1), r"StructuredConfig.sparsity: expected a number in \[0, 1\), but got -0.1"),
    (dict(sparsity=math.nan), r"StructuredConfig.sparsity: expected a number in \[0, 1\), but got nan"),
    (dict(sparsity="0.5"), r"StructuredConfig.sparsity: expected a number in \[0, 1\), but got '0.5'"),
    (dict(sparsity=True), r"StructuredConfig.sparsity: expected a number in \[0, 1\), but got True"),
    (dict(sparsity={"mlp": 1.0}), r"StructuredConfig.sparsity\['mlp'\]: expected a number in \[0, 1\), but got 1.0"),
    (dict(sparsity={"mlp": 0.2, "attention": 0.1}), r"StructuredConfig.sparsity: expected keys among the targets "
                                                    r"\('mlp', 'heads', 'channels'\), but got 'attention'"),
    (dict(sparsity={"heads": 0.1}, targets="mlp"), r"StructuredConfig.sparsity: expected keys among the targets "
                                                   r"\('mlp',\), but got 'heads'"),
    (dict(targets="attention"), r"StructuredConfig.targets: expected some of \('mlp', 'heads', 'channels'\), but got "
                                r"'attention'"),
    (dict(targets=()), r"StructuredConfig.targets: expected None or at least one of .* but got an empty sequence"),
    (dict(targets=3), r"StructuredConfig.targets: expected None or some of .* but got 3"),
    (dict(ignore=3), r"StructuredConfig.ignore: expected a str or a sequence of str .* but got 3"),
    (dict(ignore=["a", 1]), r"StructuredConfig.ignore: expected .* but got \['a', 1\]"),
    (dict(modules=5), r"StructuredConfig.modules: expected None, a str or a sequence of str .* but got 5"),
    (dict(round_to=0), r"StructuredConfig.round_to: expected None or a positive int .* but got 0"),
    (dict(round_to=2.5), r"StructuredConfig.round_to: expected None or a positive int .* but got 2.5"),
    (dict(round_to=True), r"StructuredConfig.round_to: expected None or a positive int .* but got True"),
    (dict(head_unit="heads"), r"StructuredConfig.head_unit: expected one of \('kv_group', 'query_head'\), but got "
                              r"'heads'"),
    (dict(bias_compensation="yes"), r"StructuredConfig.bias_compensation: expected None, True or False, but got "
                                    r"'yes'"),
    (dict(loss_fn=3), r"StructuredConfig.loss_fn: expected None or a callable\(model, batch\) -> scalar loss, but "
                      r"got int"),
    (dict(blocks=3), r"StructuredConfig.blocks: expected None or the name of the block list \(a str\), but got 3"),
    (dict(device="gpu0"), r"StructuredConfig.device: expected None, a torch.device or a device string .* but got "
                          r"'gpu0'"),
    (dict(progress="yes"), r"StructuredConfig.progress: expected True or False, but got 'yes'"),
]


@pytest.mark.parametrize("fields, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_fields_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        StructuredConfig(**fields)


# ----------------------------------------------------------------------------- the deprecated call

def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_result(old_model, old_report, new_model, new_report):
    old_state, new_state = _state(old_model), _state(new_model)
    assert old_state.keys() == new_state.keys() and all(torch.equal(old_state[k], new_state[k]) for k in old_state)
    old, new = old_report.to_dict(), new_report.to_dict()
    old.pop("seconds"), new.pop("seconds")
    assert old == new and old["params_removed"] > 0


def test_old_call_warns_and_gives_the_new_calls_result():
    calib = hf_calibration()
    old_model, new_model = hf_model("qwen2"), hf_model("qwen2")
    with pytest.deprecated_call(match=r"call prune_structured\(model, StructuredConfig\(method='wanda', "
                                      r"sparsity=\{'mlp': 0.25\}, targets='mlp', progress=False\), calib\) instead"):
        old_report = prune_structured(old_model, {"mlp": 0.25}, importance="wanda", targets="mlp", calib=calib)
    new_report = prune_structured(new_model, StructuredConfig(method="wanda", sparsity={"mlp": 0.25}, targets="mlp",
                                                              progress=False), calib)
    _same_result(old_model, old_report, new_model, new_report)
    assert new_report.method == "wanda" and new_report.sparsity == {"mlp": 0.25}


def test_old_defaults_are_kept_by_the_old_call():
    """The old call's defaults were magnitude at 0.25 (the new ones are PruneConfig's: wanda at 0.5)."""
    x = cnn_calibration()[0]
    old_model, new_model = tiny_cnn("resnet"), tiny_cnn("resnet")
    with pytest.deprecated_call(match=r"StructuredConfig\(method='magnitude', sparsity=0.25, example_inputs=\.\.\., "
                                      r"progress=False\)"):
        old_report = prune_structured(old_model, example_inputs=x)
    new_report = prune_structured(new_model, StructuredConfig(method="magnitude", sparsity=0.25, example_inputs=x))
    _same_result(old_model, old_report, new_model, new_report)


def test_old_keyword_ratio_and_report_names_warn():
    model = tiny_cnn("mobilenet")
    x = cnn_calibration()[0]
    with pytest.deprecated_call():
        report = prune_structured(model, ratio=0.5, importance="magnitude", round_to=4, example_inputs=x)
    assert report.sparsity == {"channels": 0.5} and report.round_to == 4
    with pytest.deprecated_call(match="StructuredReport.method"):
        assert report.importance == "magnitude"
    with pytest.deprecated_call(match="StructuredReport.sparsity"):
        assert report.ratio == {"channels": 0.5}


def test_mixed_and_unknown_calls_are_errors():
    model = tiny_cnn("resnet")
    with pytest.raises(ValueError, match=r"config: expected either a StructuredConfig or the deprecated keywords, but "
                                         r"got both \(a StructuredConfig and importance=\)"):
        prune_structured(model, StructuredConfig(method="magnitude"), importance="magnitude")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'sparsity'"):
        prune_structured(model, sparsity=0.5)
    with pytest.raises(TypeError, match=r"multiple values for argument 'ratio'"):
        prune_structured(model, 0.5, ratio=0.5)
    with pytest.raises(ValueError, match=r"config: expected a prunekit.StructuredConfig, but got str"):
        prune_structured(model, "0.5", importance="magnitude")
