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


class _RowScaledBlock(_Block):
    """A block with per-sequence and broadcast keyword inputs, as a decoder layer has (attention
    masks per sequence, position embeddings shared): a wrong split fails on their shapes."""

    def forward(self, x, *, row_scale, shared):
        assert row_scale.shape[0] == x.shape[0] and shared.shape[0] == 1
        return x + self.down(torch.relu(self.up(self.norm(x * row_scale + shared))))


def test_micro_batches_split_per_sequence_inputs_and_share_broadcast_ones():
    from prunekit.solvers.block_refine import _micro_batches

    hidden, target = torch.randn(5, 3, 4), torch.randn(5, 3, 4)
    item = BlockInput(hidden, (torch.randn(5, 1, 3, 3),), {"shared": (torch.randn(1, 3, 4), torch.arange(3)),
                                                           "mask": torch.ones(5, 3, dtype=torch.bool)},
                      torch.ones(5, 3, dtype=torch.bool))
    pairs = _micro_batches(item, target, 2)
    assert [pair[0].hidden.shape[0] for pair in pairs] == [2, 2, 1]
    assert torch.equal(torch.cat([pair[0].hidden for pair in pairs]), hidden)
    assert torch.equal(torch.cat([pair[1] for pair in pairs]), target)
    assert torch.equal(torch.cat([pair[0].args[0] for pair in pairs]), item.args[0])
    assert torch.equal(torch.cat([pair[0].kwargs["mask"] for pair in pairs]), item.kwargs["mask"])
    assert torch.equal(torch.cat([pair[0].token_mask for pair in pairs]), item.token_mask)
    for pair in pairs:  # broadcast and 1-D entries are shared, not cut
        assert pair[0].kwargs["shared"][0] is item.kwargs["shared"][0]
        assert pair[0].kwargs["shared"][1] is item.kwargs["shared"][1]
    assert _micro_batches(item, target, None) == [(item, target)]
    assert _micro_batches(item, target, 5) == [(item, target)]


def test_refine_block_in_micro_batches_counts_steps_and_validates_every_k():
    block, inputs, targets = _block_problem(items=4)
    dense = _Block(seed=0)
    generator = torch.Generator().manual_seed(3)
    items, outputs = [], []
    for item in inputs:
        kwargs = {"row_scale": 1 + 0.1 * torch.rand(4, 1, 1, generator=generator),
                  "shared": 0.1 * torch.randn(1, 16, 32, generator=generator)}
        items.append(BlockInput(item.hidden, (), kwargs, None))
        with torch.no_grad():
            outputs.append(_RowScaledBlock.forward(dense, item.hidden, **kwargs))
    scaled = _RowScaledBlock(seed=0)
    scaled.load_state_dict(block.state_dict())
    calls = []

    def run(module, item):
        calls.append(item.hidden.shape[0])
        return module(item.hidden, *item.args, **item.kwargs)

    masks = {name: scaled.get_parameter(name) != 0 for name in ("up.weight", "down.weight")}
    result = refine_block(scaled, {"up": scaled.up.weight, "down": scaled.down.weight}, items, outputs, steps=7,
                          lr=1e-3, validation=0.25, batch=2, validate_every=3, run=run)
    # 3 training items of 4 sequences: 6 steps of 2 (the 7th wraps); the held-out item is whole and
    # measured before the first step, after steps 3 and 6 and after the last
    training, held_out = [n for n in calls if n == 2], [n for n in calls if n == 4]
    assert len(training) == 7 + (1 if result.kept_step else 0)  # plus the kept weights' training error
    assert len(held_out) == 4
    assert result.kept_step in (0, 3, 6, 7) and result.validation_after < result.validation_before
    for name, mask in masks.items():
        assert torch.equal(scaled.get_parameter(name) != 0, mask)


def test_prune_refine_block_trains_the_norms_only_when_asked():
    plain, _ = _prune_copy("llama", method="wanda", sparsity=0.5, refine="block", block_refine_lr=1e-3,
                           block_refine_steps=5)
    normed, report = _prune_copy("llama", method="wanda", sparsity=0.5, refine="block", block_refine_lr=1e-3,
                                 block_refine_steps=5, block_refine_norms=True, block_refine_batch=2)
    dense = tiny_model("llama")
    norm_names = [name for name, module in dense.named_modules()
                  if type(module).__name__.endswith("RMSNorm") and ".layers." in name]
    assert len(norm_names) == 4  # input and post-attention norms of two blocks
    for name in norm_names:
        assert torch.equal(plain.get_submodule(name).weight, dense.get_submodule(name).weight)
    assert any(not torch.equal(normed.get_submodule(name).weight, dense.get_submodule(name).weight)
               for name in norm_names)
    assert torch.equal(normed.model.norm.weight, dense.model.norm.weight)  # outside the blocks: untouched
    for name, zeros in _zeros(normed).items():
        assert int(zeros.sum()) == int(_zeros(plain)[name].sum()), name
    assert all(entry["kept_step"] >= 0 for entry in report.block_refinement)


def test_normalisation_parameters_are_found_by_kind():
    from prunekit.solvers.post_solve import normalisation_parameters

    block = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Sequential(nn.RMSNorm(4)), nn.BatchNorm1d(4))
    assert sorted(normalisation_parameters(block)) == ["1.bias", "1.weight", "2.0.weight", "3.bias", "3.weight"]
    assert normalisation_parameters(nn.Linear(3, 3)) == {}


@pytest.mark.parametrize("option, value, message", [
    ("block_refine_batch", 0, r"PruneConfig.block_refine_batch: expected None \(whole calibration items\) or a "
                              r"number of sequences >= 1, but got 0"),
    ("block_refine_batch", True, "PruneConfig.block_refine_batch: expected None"),
    ("block_refine_batch", 2.0, "PruneConfig.block_refine_batch: expected None"),
    ("block_refine_validate_every", 0, r"PruneConfig.block_refine_validate_every: expected an int >= 1, but got 0"),
    ("block_refine_norms", "yes", "PruneConfig.block_refine_norms: expected True or False, but got 'yes'"),
])
def test_config_checks_refinement_options(option, value, message):
    with pytest.raises(ValueError, match=message):
        prunekit.PruneConfig(refine="block", **{option: value})


def test_refine_block_under_bfloat16_autocast_keeps_fp32_weights_and_masks():
    block, inputs, targets = _block_problem()
    masks = {name: block.get_parameter(name) != 0 for name in ("up.weight", "down.weight")}
    seen = []  # (training step?, the dtype the linear computed in)
    hook = block.up.register_forward_hook(lambda module, args, output: seen.append((torch.is_grad_enabled(),
                                                                                     output.dtype)))
    result = refine_block(block, {"up": block.up.weight, "down": block.down.weight}, inputs, targets, steps=20,
                          lr=1e-3, validation=0.25, autocast="bfloat16")
    hook.remove()
    assert {dtype for grad, dtype in seen if grad} == {torch.bfloat16}  # the training steps
    assert {dtype for grad, dtype in seen if not grad} == {torch.float32}  # the held-out measure
    assert result.kept_step > 0 and result.validation_after < result.validation_before
    assert all(p.dtype == torch.float32 for p in block.parameters())
    for name, mask in masks.items():
        assert torch.equal(block.get_parameter(name) != 0, mask)


def test_config_normalises_the_autocast_dtype():
    assert prunekit.PruneConfig(refine="block", block_refine_autocast=torch.bfloat16).block_refine_autocast == \
        "bfloat16"
    assert prunekit.PruneConfig(refine="block", block_refine_autocast="float16").block_refine_autocast == "float16"
    with pytest.raises(ValueError, match=r"PruneConfig.block_refine_autocast: expected None, 'bfloat16' or "
                                         r"'float16' \(or the torch dtypes\), but got torch.float32"):
        prunekit.PruneConfig(refine="block", block_refine_autocast=torch.float32)
