"""Training-time pruning: the cubic schedule and iterative magnitude pruning with rewinding."""

import pytest
import torch
import torch.nn as nn

from prunekit.schedule import GradualPruner, IterativeMagnitudePruning, cubic_sparsity


def test_cubic_golden():
    assert cubic_sparsity(5, final_sparsity=0.9, total_steps=10) == pytest.approx(0.7875)
    assert cubic_sparsity(0, final_sparsity=0.9, total_steps=10) == 0.0
    assert cubic_sparsity(10, final_sparsity=0.9, total_steps=10) == pytest.approx(0.9)
    assert cubic_sparsity(50, final_sparsity=0.9, total_steps=10) == pytest.approx(0.9)
    # start offset and frequency: holds the value between pruning steps
    assert cubic_sparsity(105, final_sparsity=0.9, total_steps=10, start_step=100) == pytest.approx(0.7875)
    assert cubic_sparsity(7, final_sparsity=0.9, total_steps=10, frequency=5) == pytest.approx(0.7875)
    values = [cubic_sparsity(t, final_sparsity=0.8, total_steps=20, initial_sparsity=0.1) for t in range(21)]
    assert all(a <= b for a, b in zip(values, values[1:])) and values[0] == 0.1


def test_cubic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="final_sparsity"):
        cubic_sparsity(1, final_sparsity=1.0, total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        cubic_sparsity(1, final_sparsity=0.5, total_steps=0)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def train_steps(model, optimizer, steps):
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=generator)
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def test_gradual_pruner_follows_the_schedule_and_masks_survive_optimizer_steps():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    GradualPruner(model, optimizer, final_sparsity=0.9, total_steps=10)  # attached to the optimizer
    for step in range(1, 13):
        train_steps(model, optimizer, 1)
        expected = cubic_sparsity(step, final_sparsity=0.9, total_steps=10)
        for layer in (model[0], model[2]):
            zeros = int((layer.weight == 0).sum())
            assert zeros == round(expected * layer.weight.numel())
    # momentum would move pruned weights; the post-step hook keeps them at zero
    before = [layer.weight.detach().clone() for layer in (model[0], model[2])]
    train_steps(model, optimizer, 3)
    for layer, old in zip((model[0], model[2]), before):
        assert torch.equal(layer.weight == 0, old == 0)
        assert not torch.equal(layer.weight, old)


def test_gradual_pruner_never_revives_weights():
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    pruner = GradualPruner(model, optimizer, final_sparsity=0.8, total_steps=8, frequency=2, scope="global")
    previous = {name: mask.clone() for name, mask in pruner.masks.items()}
    for _ in range(10):
        train_steps(model, optimizer, 1)
        for name, mask in pruner.masks.items():
            assert not (mask & ~previous[name]).any()
            previous[name] = mask.clone()
    assert pruner.sparsity() == pytest.approx(0.8, abs=1e-3)


def test_iterative_magnitude_pruning_rewinds_survivors():
    model = mlp()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    imp = IterativeMagnitudePruning(model, rate=0.2, scope="global")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    imp.attach(optimizer)
    total = sum(layer.weight.numel() for layer in (model[0], model[2]))
    for round_index in range(1, 4):
        train_steps(model, optimizer, 5)
        sparsity = imp.prune_and_rewind()
        assert sparsity == pytest.approx(round(total * (1 - 0.8 ** round_index)) / total, abs=1 / total)
        for name in ("0.weight", "2.weight"):
            weight, mask = model.state_dict()[name], imp.masks[name[:-len(".weight")]]
            assert torch.equal(weight[mask], initial[name][mask])
            assert (weight[~mask] == 0).all()
    # the kept weights were chosen by their trained magnitude, not the initial one
    train_steps(model, optimizer, 2)
    assert (model[0].weight[~imp.masks["0"]] == 0).all()
