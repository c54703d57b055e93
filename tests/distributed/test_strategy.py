"""The single-process strategy: every seam a plain call (what prune runs without a process group),
choosing a strategy, and the previous release's names."""

import pytest
import torch

from prunekit import distributed


def test_single_process_seams_do_the_work_in_order():
    strategy = distributed.SingleProcessStrategy()
    assert (strategy.rank, strategy.world, strategy.is_main, strategy.describe()) == (0, 1, True, "")
    assert strategy.shard(iter(range(3))) == [0, 1, 2]
    strategy.agree(lambda: pytest.fail("a single process has nothing to compare"), "the test")
    tensor = torch.ones(3)
    strategy.reduce_sums_({"a": tensor}, "the test")
    assert torch.equal(tensor, torch.ones(3))
    order = []
    results = strategy.solve(["b", "a"], lambda name: order.append(name) or (1.0, 2.0), weight=None, cost=None,
                             replicated=False, what="the test")
    assert order == ["b", "a"] and results == {"b": (1.0, 2.0), "a": (1.0, 2.0)}


def test_single_process_guard_and_check_raise_the_error_as_is():
    strategy = distributed.SingleProcessStrategy()
    with pytest.raises(KeyError, match="boom"):
        with strategy.guard("the test"):
            raise KeyError("boom")
    strategy.check(None, "the test")
    with pytest.raises(OSError, match="disk full"):
        strategy.check(OSError("disk full"), "the test")


def test_strategy_for_without_a_process_group():
    assert isinstance(distributed.strategy_for(None), distributed.SingleProcessStrategy)
    assert isinstance(distributed.strategy_for(False), distributed.SingleProcessStrategy)
    with pytest.raises(ValueError, match=r"PruneConfig.distributed: True needs torch.distributed initialised .* but "
                                         "it is not initialised"):
        distributed.strategy_for(True, argument="PruneConfig.distributed")
    with pytest.raises(ValueError, match="expected an initialised process group with more than one rank"):
        distributed.ProcessGroupStrategy()


def test_previous_names_warn():
    with pytest.deprecated_call(match="use prunekit.distributed.ProcessGroupStrategy"):
        assert distributed.Context is distributed.ProcessGroupStrategy
    with pytest.deprecated_call(match=r"use strategy.guard\(what\)"):
        with distributed.guard(None, "the test"):
            pass
