"""Distributed pruning over 2 gloo processes on this machine (127.0.0.1 only).

One launch of two ranks (_worker.py, with the environment variables torchrun sets) runs every
scenario; the tests compare its results with single-process runs in this process: masks
identical and weights within 1e-5 for SparseGPT (unstructured and 2:4), Wanda (with OWL,
one-shot) and GBLM; a final checkpoint written once by rank 0; a rank raising mid-run makes
every rank raise a DistributedError naming it, with no checkpoint left; a rank dying outright
makes the other stop with a clear error within the timeout.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit import distributed

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tiny_models

from distributed_scenarios import RUNS, run_scenario, weights  # noqa: E402
from distributed_cnn import prune_small_cnn  # noqa: E402

WORLD = 2
TIMEOUT_S = 20  # collective timeout of the ranks: bounds how long a failure can take to be noticed
LAUNCH_LIMIT_S = 240


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Launches the ranks once; returns (out dir, exit codes, logs)."""
    out = tmp_path_factory.mktemp("distributed")
    port = _free_port()
    processes = []
    for rank in range(WORLD):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                   LOCAL_WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                   PRUNEKIT_DIST_TIMEOUT=str(TIMEOUT_S))
        log = open(out / f"rank{rank}.log", "w")
        processes.append((subprocess.Popen([sys.executable, str(HERE / "_worker.py"), str(out)], env=env,
                                           stdout=log, stderr=subprocess.STDOUT, cwd=HERE), log))
    deadline = time.monotonic() + LAUNCH_LIMIT_S
    codes = []
    for process, log in processes:
        try:
            codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            process.kill()
            codes.append(process.wait())
        log.close()
    logs = [(out / f"rank{rank}.log").read_text() for rank in range(WORLD)]
    return out, codes, logs


def _result(ranks, rank: int, name: str) -> dict:
    out, codes, logs = ranks
    path = out / f"rank{rank}_{name}.pt"
    assert path.exists(), f"rank {rank} wrote no {name} result (exit codes {codes}); its log:\n{logs[rank][-4000:]}"
    return torch.load(path)


@pytest.fixture
def one_thread():
    """The reference runs use one thread, as each rank does (and as fast on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(RUNS))
def test_matches_single_process(ranks, one_thread, name):
    model, report = run_scenario(name, distributed=False)
    expected = weights(model)
    results = [_result(ranks, rank, name) for rank in range(WORLD)]
    for rank, result in enumerate(results):
        got = result["weights"]
        assert got.keys() == expected.keys()
        for key, reference in expected.items():
            assert torch.equal(got[key] == 0, reference == 0), f"rank {rank}: the mask of {key} differs"
            difference = float((got[key] - reference).abs().max())
            assert difference <= 1e-5, f"rank {rank}: {key} differs by {difference:.3g} > 1e-5"
        layers = result["report"]["layers"]
        assert [layer["name"] for layer in layers] == [layer.name for layer in report.layers]
        for got_layer, reference in zip(layers, report.layers):
            assert got_layer["sparsity"] == reference.sparsity
            assert got_layer["reconstruction_error"] == pytest.approx(reference.reconstruction_error, rel=1e-3,
                                                                      abs=1e-7)
    # Every rank holds the same pruned model, bit for bit.
    for key in expected:
        assert torch.equal(results[0]["weights"][key], results[1]["weights"][key])


def test_final_checkpoint_written_once_by_rank0(ranks):
    out = ranks[0]
    for rank in range(WORLD):
        result = _result(ranks, rank, "checkpoint")
        assert result["exists"] and result["writer"] == 0
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_a_failing_rank_stops_every_rank(ranks):
    for rank in range(WORLD):
        result = _result(ranks, rank, "soft_failure")
        assert result["error"] is not None, f"rank {rank} did not fail"
        assert result["type"] == "DistributedError" and result["is_runtime_error"]
        assert result["failed_ranks"] == [1]
        assert "rank 1 of 2 failed during the statistics pass of model.layers.1" in result["error"]
        assert "injected failure in the MLP forward" in result["error"]
        assert result["seconds"] < TIMEOUT_S  # noticed at the next check, not by a timeout
        assert not result["checkpoint_exists"] and result["leftovers"] == []


def test_ranks_with_different_models_refuse(ranks):
    for rank in range(WORLD):
        result = _result(ranks, rank, "disagreement")
        assert result["type"] == "ValueError"
        assert ("every rank must run prunekit.prune on the same inputs, but they differ in the weights (sampled "
                "checksums per layer): rank 0: [") in result["error"]


def test_a_dying_rank_stops_the_others(ranks):
    out, codes, logs = ranks
    assert codes[1] == 3, f"rank 1 should have died with exit code 3; log:\n{logs[1][-3000:]}"
    assert codes[0] == 0, f"rank 0 should have reported and exited; log:\n{logs[0][-3000:]}"
    result = _result(ranks, 0, "hard_failure")
    assert result["type"] == "DistributedError" and result["is_runtime_error"]
    assert "rank 0 lost contact with the other ranks" in result["error"]
    assert result["seconds"] < TIMEOUT_S + 15


def test_torchrun_launch(tmp_path, one_thread):
    """torchrun (python -m torch.distributed.run) starts the ranks and init_from_env() joins them;
    a model without a block list (a CNN: whole-model forwards, Conv2d inputs unfolded) pruned
    with SparseGPT over 2 ranks equals the single-process result."""
    port = _free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PRUNEKIT_DIST_TIMEOUT=str(TIMEOUT_S))
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(WORLD),
               "--master-addr", "127.0.0.1", "--master-port", str(port), str(HERE / "_torchrun_worker.py"),
               str(tmp_path)]
    completed = subprocess.run(command, env=env, cwd=HERE, capture_output=True, text=True, timeout=LAUNCH_LIMIT_S)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    model, report = prune_small_cnn(distributed=False)
    expected = {n: p.detach() for n, p in model.named_parameters() if p.dim() > 1}
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["joined"] and (result["rank"], result["world"]) == (rank, WORLD)
        assert result["report"]["total_sparsity"] == report.total_sparsity
        for key, reference in expected.items():
            assert torch.equal(result["weights"][key] == 0, reference == 0), f"rank {rank}: the mask of {key} differs"
            assert float((result["weights"][key] - reference).abs().max()) <= 1e-5


# ----------------------------------------------------------------------------- in-process units

def test_init_from_env_without_torchrun_is_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env() is False
    assert distributed.get_rank() == 0 and distributed.get_world_size() == 1 and distributed.is_main_process()


def test_init_from_env_names_bad_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "five")
    with pytest.raises(ValueError, match="RANK: expected an integer .* but got 'five'"):
        distributed.init_from_env()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"RANK: expected 0 <= RANK < WORLD_SIZE = 2, but got 2"):
        distributed.init_from_env()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR: expected it to be set"):
        distributed.init_from_env()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setenv(distributed.ENV_TIMEOUT, "-3")
    with pytest.raises(ValueError, match="PRUNEKIT_DIST_TIMEOUT: expected a positive number of seconds, but got '-3'"):
        distributed.init_from_env()
    monkeypatch.setenv(distributed.ENV_TIMEOUT, "5")
    with pytest.raises(ValueError, match="backend: expected 'gloo' or 'nccl', but got 'mpi'"):
        distributed.init_from_env(backend="mpi")


def test_distributed_true_needs_a_process_group():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    with pytest.raises(ValueError, match="PruneConfig.distributed: True needs torch.distributed initialised"):
        prunekit.prune(model, prunekit.PruneConfig(method="magnitude", distributed=True, progress=False))
    with pytest.raises(ValueError, match="PruneConfig.distributed: expected None, True or False, but got 'yes'"):
        prunekit.PruneConfig(distributed="yes")


def test_assign_owners_balances_and_is_deterministic():
    costs = {"q": 4.0, "k": 1.0, "v": 1.0, "o": 4.0, "gate": 8.0, "up": 8.0, "down": 8.0}
    owners = distributed.assign_owners(costs, 2)
    assert owners == distributed.assign_owners(dict(costs), 2)
    loads = [sum(c for n, c in costs.items() if owners[n] == r) for r in range(2)]
    assert sorted(loads) == [17.0, 17.0]
    assert set(distributed.assign_owners(costs, 1).values()) == {0}
    assert set(distributed.assign_owners({"a": 1.0}, 3).values()) == {0}


def test_save_checkpoint_single_process_is_atomic(tmp_path):
    target = tmp_path / "model.pt"
    distributed.save_checkpoint(target, lambda tmp: Path(tmp).write_text("complete"))
    assert target.read_text() == "complete"

    def broken(tmp):
        Path(tmp).write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        distributed.save_checkpoint(tmp_path / "other.pt", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    with pytest.raises(RuntimeError, match="write: expected it to create"):
        distributed.save_checkpoint(tmp_path / "none.pt", lambda tmp: None)


def test_save_checkpoint_replaces_a_directory_only_when_complete(tmp_path):
    target = tmp_path / "pruned"

    def save_dir(files):
        def write(tmp):
            Path(tmp).mkdir()
            for name, text in files.items():
                if text is None:
                    raise OSError("disk full")
                (Path(tmp) / name).write_text(text)
        return write

    distributed.save_checkpoint(target, save_dir({"config.json": "1", "model.safetensors": "1"}))
    with pytest.raises(OSError, match="disk full"):
        distributed.save_checkpoint(target, save_dir({"config.json": "2", "model.safetensors": None}))
    assert {p.name: p.read_text() for p in target.iterdir()} == {"config.json": "1", "model.safetensors": "1"}
    distributed.save_checkpoint(target, save_dir({"config.json": "3"}))
    assert {p.name: p.read_text() for p in target.iterdir()} == {"config.json": "3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]
