"""prunekit.reconstruct: a pruned model's kept weights refitted to the dense model with its zeros
kept exactly; the least-squares stage against its closed form; bad input; the CLI's --reconstruct."""

import copy
import json
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.recovery import zero_masks

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tiny_models  # noqa: E402
from test_recovery import pruned_and_dense_dirs  # noqa: E402


def dense_and_pruned(sparsity=0.5, method="wanda", arch="llama"):
    teacher = tiny_models.tiny_model(arch, seed=0)
    model = copy.deepcopy(teacher)
    if sparsity == 1.0:  # beyond prune's range: every linear weight zero
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.zero_()
        return teacher, model
    prunekit.prune(model, prunekit.PruneConfig(method=method, sparsity=sparsity, progress=False),
                   tiny_models.calibration(arch))
    return teacher, model


def calibration(count=8, seed=3):
    return tiny_models.calibration("llama", batches=count, batch_size=2, seq=16, seed=seed)


def logit_error(model, teacher, batches):
    """Mean squared difference of the logits over ``batches``."""
    with torch.no_grad():
        return sum(float(((model(**b).logits - teacher(**b).logits) ** 2).mean()) for b in batches) / len(batches)


def state(model):
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize("sparsity,refine_steps,error_ratio", [(0.5, 0, 0.8), (0.5, 12, 0.8), ("2:4", 12, 0.8),
                                                              (0.9, 0, 0.95), (1.0, 4, 1.0)])
def test_reconstruct_keeps_every_zero_and_moves_the_outputs_towards_the_teacher(sparsity, refine_steps, error_ratio):
    teacher, model = dense_and_pruned(sparsity)
    teacher_before, masks = state(teacher), zero_masks(model)
    held_out = calibration(4, seed=11)
    error_before = logit_error(model, teacher, held_out)
    report = prunekit.reconstruct(model, teacher, calibration(), refine_steps=refine_steps, eval_batches=held_out,
                                  progress=False)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.equal(params[name].detach() == 0, ~mask), name  # the same zeros, no more, no fewer
    assert logit_error(model, teacher, held_out) <= error_ratio * error_before  # 100%: nothing left to refit
    assert all(torch.equal(value, teacher_before[name]) for name, value in teacher.state_dict().items())
    assert report.layers == len(masks) and report.pruned_weights_still_zero  # the 14 blocks' linears and lm_head
    assert report.masked_weights == sum(int((~m).sum()) for m in masks.values())
    assert report.refine_steps == refine_steps and report.calibration_items == 8
    assert math.isfinite(report.perplexity_before) and math.isfinite(report.perplexity_after)
    assert json.loads(json.dumps(report.to_dict()))["layers"] == report.layers
    assert "ok" in report.summary() and "perplexity" in report.summary()


@pytest.mark.parametrize("arch", ["gpt2", "opt", "qwen2"])
def test_reconstruct_other_architectures(arch):
    """GPT-2's transformers Conv1D (weights stored transposed), OPT's biases, Qwen2's."""
    teacher, model = dense_and_pruned(0.5, arch=arch)
    masks = zero_masks(model)
    held_out = tiny_models.calibration(arch, batches=4, seed=11)
    error_before = logit_error(model, teacher, held_out)
    report = prunekit.reconstruct(model, teacher, tiny_models.calibration(arch, batches=8, seed=3), refine_steps=6,
                                  progress=False)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[name].detach() == 0, ~mask) for name, mask in masks.items())
    assert report.pruned_weights_still_zero and logit_error(model, teacher, held_out) < 0.8 * error_before


def test_a_head_tied_to_the_embeddings_is_left_alone():
    """SmolLM2's LM head is its embedding table (with a few exact zeros from the GGUF file): prune
    never solves it, so reconstruct neither counts nor touches it."""
    teacher = tiny_models.tiny_model("llama", seed=0, tie_word_embeddings=True)
    with torch.no_grad():
        teacher.model.embed_tokens.weight[3, :4] = 0.0
    model = copy.deepcopy(teacher)
    prunekit.prune(model, prunekit.PruneConfig(method="wanda", sparsity=0.5, progress=False),
                   tiny_models.calibration("llama"))
    embedding = model.model.embed_tokens.weight.detach().clone()
    report = prunekit.reconstruct(model, teacher, calibration(), refine_steps=2, progress=False)
    assert report.layers == 14 and report.pruned_weights_still_zero  # the two blocks' linears
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.model.embed_tokens.weight.detach(), embedding)


def test_least_squares_stage_is_the_closed_form_on_the_fixed_support():
    """Block 0's q_proj sees the same inputs in both models: its refit minimises, over each row's
    kept weights S, (w - w_dense)^T H' (w - w_dense) with H' = X^T X + percdamp * diag(X^T X) (the
    ridge towards the dense weights): w_S = (H'_SS)^-1 (H' w_dense)_S."""
    teacher, model = dense_and_pruned(0.5)
    calib = calibration(16)
    inputs = []
    layer = model.model.layers[0].self_attn.q_proj
    handle = layer.register_forward_hook(lambda module, args, out: inputs.append(args[0].detach().reshape(-1, 64)))
    with torch.no_grad():
        for batch in calib:
            model(**batch)
    handle.remove()
    x = torch.cat(inputs).double()
    hessian = x.T @ x
    hessian += 0.01 * torch.diag(torch.diagonal(hessian))
    dense = teacher.model.layers[0].self_attn.q_proj.weight.detach().double()
    keep = layer.weight.detach() != 0
    expected = torch.zeros_like(dense)
    for row in range(dense.shape[0]):
        kept = keep[row]
        expected[row, kept] = torch.linalg.solve(hessian[kept][:, kept], (hessian @ dense[row])[kept])
    prunekit.reconstruct(model, teacher, calib, refine_steps=0, percdamp=0.01, pcg_iterations=200, progress=False)
    got = model.model.layers[0].self_attn.q_proj.weight.detach().double()
    assert float((got - expected).norm() / expected.norm()) < 1e-3
    assert torch.equal(got == 0, ~keep)


def test_reconstruct_keeps_the_models_dtypes_and_inputs_the_calibration_never_reached():
    """A bf16 teacher refits an fp32 model without rounding the model's other parameters; an input
    feature that is zero on every calibration token (a zero norm weight) keeps its weights."""
    teacher, model = dense_and_pruned(0.5)
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[5] = 0.0  # q/k/v of block 0 never see feature 5
    before = state(model)
    masks = zero_masks(model)
    prunekit.reconstruct(model, teacher.to(torch.bfloat16), calibration(), refine_steps=0, progress=False)
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    assert all(torch.equal(params[name].detach(), before[name]) for name in params if name not in masks)
    for projection in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.0.self_attn.{projection}.weight"
        assert torch.equal(params[name].detach()[:, 5], before[name][:, 5]), name  # kept as they were
        assert not torch.equal(params[name].detach(), before[name]), name  # the rest refitted
    assert all(torch.equal(params[name].detach() == 0, ~mask) for name, mask in masks.items())


def test_a_refit_that_would_break_a_zero_changes_nothing(monkeypatch):
    """If a pruned layer comes out of prune with a zero filled (a layer prune could not solve), the
    error comes before the copy back: the model and the teacher stay as they were."""
    prune_module = sys.modules["prunekit.prune"]
    real_prune = prune_module.prune

    def prune_then_fill(work, config, calib):
        report = real_prune(work, config, calib)
        with torch.no_grad():
            work.model.layers[1].mlp.down_proj.weight.fill_(0.5)
        return report

    monkeypatch.setattr(prune_module, "prune", prune_then_fill)
    teacher, model = dense_and_pruned(0.5)
    before, teacher_before = state(model), state(teacher)
    with pytest.raises(ValueError, match=re.escape("reconstruct: model: model.layers.1.mlp.down_proj could not be "
                                                   "refitted with its zeros kept")):
        prunekit.reconstruct(model, teacher, calibration(), refine_steps=2, progress=False)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert all(torch.equal(value, teacher_before[name]) for name, value in teacher.state_dict().items())


def test_reconstruct_leaves_everything_as_it_was_when_it_fails():
    teacher, model = dense_and_pruned(0.5)
    before, teacher_before = state(model), state(teacher)
    with pytest.raises(ValueError):
        prunekit.reconstruct(model, teacher, [], progress=False)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert all(torch.equal(value, teacher_before[name]) for name, value in teacher.state_dict().items())


def test_reconstruct_bad_input():
    teacher, model = dense_and_pruned(0.5)
    calib = calibration(2)
    for kwargs, message in (
            ({"teacher": model}, "reconstruct: teacher: expected another model (the dense one)"),
            ({"teacher": "dense"}, "reconstruct: teacher: expected a torch.nn.Module, but got str"),
            ({"model": teacher, "teacher": copy.deepcopy(teacher)},
             "reconstruct: model: expected pruned layers (linear or convolution weights with exact zeros)"),
            ({"refine_steps": -1}, "reconstruct: refine_steps: expected an integer >= 0, but got -1"),
            ({"refine_steps": True}, "reconstruct: refine_steps: expected an integer >= 0, but got True"),
            ({"pcg_iterations": 0}, "reconstruct: pcg_iterations: expected an integer >= 1, but got 0"),
            ({"refine_lr": 0.0}, "reconstruct: refine_lr: expected a learning rate in (0, 1], but got 0.0"),
            ({"refine_validate_every": 0}, "reconstruct: refine_validate_every: expected an int >= 1, but got 0"),
            ({"refine_validation": 1.0}, "reconstruct: refine_validation: expected a share"),
            ({"percdamp": 0.0}, "reconstruct: percdamp: expected a finite value > 0, but got 0.0"),
            ({"percdamp": float("nan")}, "reconstruct: percdamp: expected a finite value > 0, but got nan"),
            ({"percdamp": float("inf")}, "reconstruct: percdamp: expected a finite value > 0, but got inf"),
            ({"percdamp": True}, "reconstruct: percdamp: expected a finite value > 0, but got True"),
            ({"autocast": "float16"}, "reconstruct: autocast")):
        arguments = {"model": model, "teacher": teacher, **kwargs}
        with pytest.raises(ValueError, match=re.escape(message)):
            prunekit.reconstruct(arguments.pop("model"), arguments.pop("teacher"), calib, progress=False, **arguments)
    other = tiny_models.tiny_model("llama", seed=0)
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight = torch.nn.Parameter(torch.zeros(64, 100))
    with pytest.raises(ValueError, match=re.escape("reconstruct: teacher: expected model.layers.0.mlp.down_proj.weight "
                                                   "of shape")):
        prunekit.reconstruct(model, other, calib, progress=False)
    del other.model.layers[1]
    with pytest.raises(ValueError, match="reconstruct: teacher: expected the model before pruning .* names differ"):
        prunekit.reconstruct(model, other, calib, progress=False)


def test_cli_recover_reconstructs_first(tmp_path, capsys):
    from prunekit.app.cli import main as cli_main

    model_dir, teacher_dir = pruned_and_dense_dirs(tmp_path)
    out = tmp_path / "out"
    code = cli_main(["recover", os.fspath(model_dir), "--teacher", os.fspath(teacher_dir), "--teacher-samples", "8",
                     "--reconstruct", "6", "--reconstruct-steps", "4", "--seqlen", "16", "--batch-size", "4",
                     "--steps", "2", "--eval-samples", "4", "--out", os.fspath(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "report.json").read_text())
    stage = result["reconstruct"]
    assert stage["refine_steps"] == 4 and stage["calibration_items"] == 2 and stage["pruned_weights_still_zero"]
    assert stage["perplexity_after"] == pytest.approx(result["recover"]["perplexity_before"])
    assert "Reconstruction (before training)" in (out / "report.md").read_text()
    assert result["recover"]["pruned_weights_still_zero"]
    capsys.readouterr()
    for extra, message in (
            (["--data", os.fspath(out / "report.md"), "--reconstruct", "4"], "--reconstruct: needs --teacher"),
            (["--teacher", os.fspath(teacher_dir), "--teacher-samples", "4", "--reconstruct-steps", "3"],
             "--reconstruct-steps: expected with --reconstruct"),
            (["--teacher", os.fspath(teacher_dir), "--teacher-samples", "4", "--reconstruct", "5"],
             re.escape("--reconstruct: expected at most --teacher-samples (4) sequences, but got 5"))):
        refused = tmp_path / "refused"
        code = cli_main(["recover", os.fspath(model_dir), *extra, "--steps", "2", "--out", os.fspath(refused),
                         "--quiet"])
        assert code == 2 and re.search(message, capsys.readouterr().err) and not refused.exists(), message
