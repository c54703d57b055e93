"""Block-level refinement (PruneConfig(refine="block")) and low-rank compensation through
prunekit.prune on tiny models: masks stay exact, the block's output error drops, the held-out
choice, the config's checks and bad input."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import prunekit
from prunekit.calibrate.pipeline import BlockInput
from prunekit.nn import LowRankLinear, SparseLinear
from prunekit.solvers.block_refine import refine_block

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import calibration, tiny_model  # noqa: E402


def _zeros(model):
    return {name: (module.weight == 0).clone() for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and "layers" in name}


class _Block(nn.Module):
    def __init__(self, width=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.norm(x))))


def _block_problem(items=8, seed=0):
    dense = _Block(seed=seed)
    pruned = _Block(seed=seed)
    with torch.no_grad():
        for module in (pruned.up, pruned.down):
            module.weight.mul_(torch.rand_like(module.weight) > 0.6)
    generator = torch.Generator().manual_seed(seed + 1)
    inputs = [BlockInput(torch.randn(4, 16, 32, generator=generator), (), {}, None) for _ in range(items)]
    with torch.no_grad():
        targets = [dense(item.hidden) for item in inputs]
    return pruned, inputs, targets


def test_refine_block_lowers_the_error_and_keeps_the_mask():
    block, inputs, targets = _block_problem()
    masks = {name: block.get_parameter(name) != 0 for name in ("up.weight", "down.weight")}
    norm_before = block.norm.weight.detach().clone()
    bias_before = block.up.bias.detach().clone()
    result = refine_block(block, {"up": block.up.weight, "down": block.down.weight}, inputs, targets, steps=30,
                          lr=1e-3, validation=0.25)
    assert result.kept_step > 0
    assert result.validation_after < result.validation_before
    assert result.train_after < result.train_before
    for name, mask in masks.items():
        assert torch.equal(block.get_parameter(name) != 0, mask)  # pruned weights exactly zero, kept ones kept
    assert torch.equal(block.norm.weight, norm_before) and torch.equal(block.up.bias, bias_before)  # frozen
    assert all(not p.requires_grad or p.grad is None for p in block.parameters())
    assert all(p.requires_grad for p in block.parameters())  # restored


def test_refine_block_keeps_the_pruned_weights_when_no_step_helps():
    block, inputs, targets = _block_problem()
    before = {name: p.detach().clone() for name, p in block.named_parameters()}
    # A learning rate this large overshoots: the held-out error never improves on the pruned weights.
    result = refine_block(block, {"up": block.up.weight, "down": block.down.weight}, inputs, targets, steps=3,
                          lr=1.0, validation=0.25)
    assert result.kept_step == 0
    for name, p in block.named_parameters():
        assert torch.equal(p, before[name])


def test_refine_block_trains_free_parameters_without_a_mask():
    block, inputs, targets = _block_problem()
    masks = {name: block.get_parameter(name) != 0 for name in ("up.weight", "down.weight")}
    bias = block.down.bias
    with torch.no_grad():
        bias.zero_()  # all zeros: a mask would freeze it, a free parameter trains
    result = refine_block(block, {"up": block.up.weight, "down": block.down.weight}, inputs, targets, steps=30,
                          lr=1e-3, validation=0.25, free={"down.bias": bias})
    assert result.kept_step > 0 and bool((bias != 0).any())
    for name, mask in masks.items():
        assert torch.equal(block.get_parameter(name) != 0, mask)
    with pytest.raises(ValueError, match=r"\['up'\] are both masked weights and free parameters"):
        refine_block(block, {"up": block.up.weight}, inputs, targets, steps=1, lr=1e-3, free={"up": block.up.weight})


def test_refine_block_bad_input():
    block, inputs, targets = _block_problem()
    weights = {"up": block.up.weight}
    with pytest.raises(ValueError, match=r"block_refine_steps: expected an int in \[1, 10000\], but got 0"):
        refine_block(block, weights, inputs, targets, steps=0, lr=1e-3)
    with pytest.raises(ValueError, match=r"block_refine_lr: expected a learning rate in \(0, 1\], but got nan"):
        refine_block(block, weights, inputs, targets, steps=1, lr=float("nan"))
    with pytest.raises(ValueError, match=r"block_refine_validation: expected a share"):
        refine_block(block, weights, inputs, targets, steps=1, lr=1e-3, validation=1.0)
    with pytest.raises(ValueError, match="one dense output per calibration input"):
        refine_block(block, weights, inputs, targets[:-1], steps=1, lr=1e-3)
    bad = [t.clone() for t in targets]
    bad[0][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="output error became nan"):
        refine_block(block, weights, inputs, bad, steps=1, lr=1e-3)


def _prune_copy(arch, **config):
    model = tiny_model(arch)
    report = prunekit.prune(model, prunekit.PruneConfig(progress=False, **config), calibration(arch, batches=8))
    return model, report


def _loss(model, arch):
    batches = calibration(arch, batches=4, seed=7)
    with torch.no_grad():
        return sum(float(model(**b, labels=b["input_ids"]).loss) for b in batches)


@pytest.mark.parametrize("sparsity", [0.5, "2:4"])
def test_prune_refine_block_keeps_masks_and_sparsity(sparsity):
    plain, plain_report = _prune_copy("llama", method="wanda", sparsity=sparsity)
    refined, report = _prune_copy("llama", method="wanda", sparsity=sparsity, refine="block", block_refine_lr=1e-3,
                                  block_refine_steps=10)
    assert _zeros(plain).keys() == _zeros(refined).keys()
    for name, zeros in _zeros(plain).items():
        if name.startswith("model.layers.0."):  # later blocks see the refined outputs: other masks
            assert torch.equal(zeros, _zeros(refined)[name]), name  # the same masks, exactly
        assert int(zeros.sum()) == int(_zeros(refined)[name].sum()), name
    assert report.total_sparsity == plain_report.total_sparsity
    assert [entry["block"] for entry in report.block_refinement] == ["model.layers.0", "model.layers.1"]
    assert any(entry["kept_step"] > 0 for entry in report.block_refinement)
    for entry in report.block_refinement:
        assert entry["validation_after"] <= entry["validation_before"]
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), refined.parameters()))


def test_prune_compensate_and_refine_sparsify_round_trip(tmp_path):
    model, report = _prune_copy("llama", method="wanda", sparsity=0.5, refine=("dsnot", "block"),
                                compensate=prunekit.LowRank(rank=4), block_refine_lr=1e-3, block_refine_steps=5)
    compensated = {name: m for name, m in model.named_modules() if isinstance(m, LowRankLinear)}
    assert len(compensated) == 15 and all(m.rank == 4 for m in compensated.values())
    assert set(report.compensation) == set(compensated)
    for entry in report.compensation.values():
        assert entry["error_after"] < entry["error_before"]
    batch = calibration("llama", batches=1, seed=9)[0]
    with torch.no_grad():
        expected = model(**batch).logits
    prunekit.sparsify_(model, prunekit.SparsifyConfig(format="unstructured"))
    assert all(isinstance(model.get_submodule(name), SparseLinear) and model.get_submodule(name).lowrank_rank == 4
               for name in compensated)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, expected, rtol=1e-4, atol=1e-4)
    path = prunekit.save(model, tmp_path / "model")
    loaded = prunekit.load(path.parent)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected, rtol=1e-4, atol=1e-4)


def test_refinement_trains_the_low_rank_factors_after_compensation():
    compensated, _ = _prune_copy("llama", method="wanda", sparsity=0.5, compensate=prunekit.LowRank(rank=4))
    refined, report = _prune_copy("llama", method="wanda", sparsity=0.5, compensate=prunekit.LowRank(rank=4),
                                  refine="block", block_refine_lr=1e-4, block_refine_steps=10)
    assert report.block_refinement[0]["kept_step"] > 0
    first = "model.layers.0.mlp.down_proj"  # block 0 is refined on the same inputs in both runs
    before, after = compensated.get_submodule(first), refined.get_submodule(first)
    assert isinstance(after, LowRankLinear) and after.rank == 4
    assert not torch.equal(before.lowrank_a, after.lowrank_a) and not torch.equal(before.weight, after.weight)
    assert torch.equal(before.weight == 0, after.weight == 0)


def test_compensation_lowers_the_loss_and_budget_ranks():
    plain, _ = _prune_copy("llama", method="sparsegpt", sparsity=0.7)
    compensated, report = _prune_copy("llama", method="sparsegpt", sparsity=0.7,
                                      compensate=prunekit.LowRank(budget=0.1))
    dense = tiny_model("llama")
    assert abs(_loss(compensated, "llama") - _loss(dense, "llama")) < abs(_loss(plain, "llama") - _loss(dense, "llama"))
    ranks = {name.rsplit(".", 1)[-1]: entry["rank"] for name, entry in report.compensation.items()}
    # budget 0.1 of out * in over (out + in): q 64x64 -> 3, k/v 32x64 -> 2, gate/up 128x64 -> 4
    assert ranks["q_proj"] == 3 and ranks["k_proj"] == 2 and ranks["up_proj"] == 4 and ranks["down_proj"] == 4
    for entry in report.compensation.values():
        assert entry["bytes"] <= 0.1 * entry["dense_bytes"]


def test_config_checks():
    assert prunekit.PruneConfig(refine=["dsnot", "block"]).refinements == ("dsnot", "block")
    assert prunekit.PruneConfig(refine="block", method="sparsegpt").refinements == ("block",)
    assert prunekit.PruneConfig(compensate=8).compensate == prunekit.LowRank(rank=8)
    with pytest.raises(ValueError, match=r"PruneConfig.refine: expected None, 'dsnot', 'block' or \('dsnot', "
                                         r"'block'\), but got \('block', 'dsnot'\)"):
        prunekit.PruneConfig(refine=("block", "dsnot"))
    with pytest.raises(ValueError, match="'dsnot' refines the masks of criteria"):
        prunekit.PruneConfig(method="sparsegpt", refine=("dsnot", "block"))
    with pytest.raises(ValueError, match="PruneConfig.block_refine_steps: expected an int"):
        prunekit.PruneConfig(refine="block", block_refine_steps=-1)
    with pytest.raises(ValueError, match="PruneConfig.compensate: expected None, an int rank or a prunekit.LowRank"):
        prunekit.PruneConfig(compensate="rank8")
    with pytest.raises(ValueError, match="calib is None"):
        prunekit.prune(tiny_model("llama"), prunekit.PruneConfig(method="magnitude", compensate=2, progress=False))


def test_rank_too_large_names_the_layer():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"layer model.layers.0.self_attn.k_proj \(32 x 64\) allows a rank of at "
                                         "most 32, but got rank=33"):
        prunekit.prune(model, prunekit.PruneConfig(compensate=33, progress=False), calibration("llama"))


def test_one_shot_refine_block_sees_the_dense_inputs():
    # One-shot: every block calibrates and refines on the dense model's activations; the walk's
    # dense outputs are the targets and, unchanged, the next block's inputs.
    plain, _ = _prune_copy("llama", method="wanda", sparsity=0.5, sequential=False)
    refined, report = _prune_copy("llama", method="wanda", sparsity=0.5, sequential=False, refine="block",
                                  block_refine_lr=1e-3, block_refine_steps=5)
    for name, zeros in _zeros(plain).items():  # the same inputs in every block: the same masks
        assert torch.equal(zeros, _zeros(refined)[name]), name
    assert len(report.block_refinement) == 2
