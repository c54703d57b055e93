"""The low-rank branch of LowRankLinear and SparseLinear: the function, sparsify_, state_dict,
save/load, torch.compile and bad input."""

import pytest
import torch
import torch.nn as nn

import prunekit
from prunekit.nn import LowRankLinear, SparseLinear


def _pruned_linear(in_features=48, out_features=32, bias=True, seed=0, sparsity=0.6):
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.mul_(torch.rand_like(linear.weight) > sparsity)
    return linear


def _factors(linear, rank, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rank, linear.in_features, generator=generator) * 0.1,
            torch.randn(linear.out_features, rank, generator=generator) * 0.1)


def _reference(linear, factor_a, factor_b, x):
    return x @ linear.weight.detach().T + (0 if linear.bias is None else linear.bias.detach()) + (
        x @ factor_a.T) @ factor_b.T


@pytest.mark.parametrize("bias", [True, False])
def test_lowrank_linear_computes_the_branch_and_shares_the_weight(bias):
    linear = _pruned_linear(bias=bias)
    factor_a, factor_b = _factors(linear, 5)
    module = LowRankLinear.from_linear(linear, factor_a, factor_b)
    assert isinstance(module, nn.Linear) and module.rank == 5
    assert module.weight is linear.weight and module.bias is linear.bias
    x = torch.randn(3, 7, 48)
    torch.testing.assert_close(module(x), _reference(linear, factor_a, factor_b, x))
    assert set(module.state_dict()) == {"weight", "lowrank_a", "lowrank_b"} | ({"bias"} if bias else set())
    fresh = LowRankLinear(48, 32, rank=5, bias=bias)
    fresh.load_state_dict(module.state_dict())
    torch.testing.assert_close(fresh(x), module(x))
    assert "rank=5" in repr(module)


@pytest.mark.parametrize("fmt", ["unstructured", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_linear_carries_the_branch(fmt, dtype):
    linear = _pruned_linear(in_features=64, out_features=48).to(dtype)
    factor_a, factor_b = _factors(linear, 3)
    module = LowRankLinear.from_linear(linear, factor_a, factor_b)
    sparse = SparseLinear.from_dense(module, fmt)
    assert sparse.lowrank_rank == 3 and sparse.lowrank_a.dtype == dtype
    assert "lowrank_rank=3" in repr(sparse)
    for rows in (1, 5, 33):
        x = torch.randn(rows, 64, dtype=dtype)
        torch.testing.assert_close(sparse(x).float(), module(x).float(), rtol=2e-2 if dtype == torch.bfloat16 else
                                   1e-5, atol=2e-2 if dtype == torch.bfloat16 else 1e-5)
    # to_dense keeps the branch; memory counts the factors as state.
    back = sparse.to_dense()
    assert isinstance(back, LowRankLinear)
    x = torch.randn(4, 64, dtype=dtype)
    torch.testing.assert_close(back(x), sparse(x), rtol=2e-2, atol=2e-2)
    plain = SparseLinear.from_dense(linear, fmt)
    extra = sparse.memory()["state"] - plain.memory()["state"]
    assert extra == 3 * (64 + 48) * dtype.itemsize
    sparse.set_lowrank(None, None)
    assert sparse.lowrank_rank == 0
    torch.testing.assert_close(sparse(x), plain(x))


def test_sparsify_save_load_round_trip(tmp_path):
    model = nn.Sequential(_pruned_linear(seed=0), nn.ReLU(), _pruned_linear(in_features=32, out_features=16, seed=2))
    factor_a, factor_b = _factors(model[0], 4)
    model[0] = LowRankLinear.from_linear(model[0], factor_a, factor_b)
    x = torch.randn(6, 48)
    expected = model(x)
    report = prunekit.sparsify_(model, prunekit.SparsifyConfig(format="unstructured"))
    assert report.swapped == {"0": "unstructured", "2": "unstructured"}
    assert model[0].lowrank_rank == 4 and model[2].lowrank_rank == 0
    torch.testing.assert_close(model(x), expected)
    assert {"0.lowrank_a", "0.lowrank_b"} <= set(model.state_dict())
    path = prunekit.save(model, tmp_path / "model.safetensors")
    skeleton = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 16))
    loaded = prunekit.load(path, skeleton, format="saved")  # as saved, whatever this machine's "auto" table
    assert isinstance(loaded[0], SparseLinear) and loaded[0].lowrank_rank == 4
    torch.testing.assert_close(loaded(x), expected)
    compiled = torch.compile(loaded, fullgraph=True)
    torch.testing.assert_close(compiled(x), expected)


def test_checkpoint_refuses_factors_that_contradict_the_spec(tmp_path):
    from safetensors.torch import load_file, save_file
    import json
    from safetensors import safe_open
    from prunekit.io.safetensors_file import CheckpointError

    linear = _pruned_linear()
    model = nn.Sequential(LowRankLinear.from_linear(linear, *_factors(linear, 2)))
    prunekit.sparsify_(model, prunekit.SparsifyConfig(format="unstructured"))
    path = prunekit.save(model, tmp_path / "model.safetensors")
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    tensors = load_file(str(path))
    modules = json.loads(metadata["modules"])
    modules["0"]["lowrank_rank"] = 3
    metadata["modules"] = json.dumps(modules)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match="spec gives low-rank rank 3"):
        prunekit.load(tmp_path / "bad.safetensors", nn.Sequential(nn.Linear(48, 32)))


def test_compiled_lowrank_linear():
    linear = _pruned_linear()
    module = LowRankLinear.from_linear(linear, *_factors(linear, 2))
    x = torch.randn(3, 48)
    torch.testing.assert_close(torch.compile(module, fullgraph=True)(x), module(x))


def test_bad_factors():
    linear = _pruned_linear()
    factor_a, factor_b = _factors(linear, 3)
    with pytest.raises(ValueError, match=r"must have shapes \(rank, 48\) and \(32, rank\), but got \(3, 47\)"):
        LowRankLinear.from_linear(linear, factor_a[:, :47], factor_b)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 32\], but got 33"):
        LowRankLinear.from_linear(linear, torch.zeros(33, 48), torch.zeros(32, 33))
    with pytest.raises(ValueError, match="must share one floating dtype"):
        LowRankLinear.from_linear(linear, factor_a.double(), factor_b)
    with pytest.raises(ValueError, match="argument 'rank' must be an int in"):
        LowRankLinear(48, 32, rank=0)
    with pytest.raises(ValueError, match="argument 'linear' must be an nn.Linear"):
        LowRankLinear.from_linear(nn.ReLU(), factor_a, factor_b)
    sparse = SparseLinear.from_dense(linear, "unstructured")
    with pytest.raises(ValueError, match="SparseLinear.set_lowrank"):
        sparse.set_lowrank(factor_a, factor_b[:5])
