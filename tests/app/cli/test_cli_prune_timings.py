"""prunekit prune's report says where the time went: loading, evaluation, the pruning's stages
(calibration forwards, statistics, solves, errors), saving; streamed and in memory."""

import json

import pytest

from _cli import run_many


def test_prune_report_has_a_time_breakdown(tiny_llama_dir, tmp_path):
    common = ["--method", "sparsegpt", "--sparsity", "0.5", "--nsamples", "8", "--seqlen", "16", "--eval-samples", "4"]
    streamed, in_memory = run_many(["prune", tiny_llama_dir, *common, "--out", tmp_path / "streamed"],
                                   ["prune", tiny_llama_dir, *common, "--in-memory", "--out", tmp_path / "memory"])
    for result, out in ((streamed, tmp_path / "streamed"), (in_memory, tmp_path / "memory")):
        assert result.returncode == 0, result.stderr
        report = json.loads((out / "report.json").read_text())
        timings = report["timings"]
        assert {"evaluation", "prune_calibration_forwards", "prune_statistics", "prune_solves", "prune_errors",
                "prune_total", "other", "total"} <= timings.keys(), timings
        assert timings["total"] == pytest.approx(report["seconds"], abs=0.01)
        assert report["prune"]["reconstruction_error_kind"] == "exact"
        assert "## Time" in (out / "report.md").read_text()
    in_memory_timings = json.loads((tmp_path / "memory" / "report.json").read_text())["timings"]
    assert {"loading", "saving"} <= in_memory_timings.keys()
    parts = sum(seconds for stage, seconds in in_memory_timings.items()
                if stage not in ("total", "prune_total") and not stage.startswith("prune_"))
    assert parts + in_memory_timings["prune_total"] == pytest.approx(in_memory_timings["total"], abs=0.05)


def test_prune_within_block_sequential_streamed_equals_in_memory(tiny_llama_dir, tmp_path):
    from safetensors.torch import load_file

    common = ["--method", "wanda", "--sparsity", "0.5", "--nsamples", "8", "--seqlen", "16", "--no-eval",
              "--within-block", "sequential"]
    streamed, in_memory = run_many(["prune", tiny_llama_dir, *common, "--out", tmp_path / "streamed"],
                                   ["prune", tiny_llama_dir, *common, "--in-memory", "--out", tmp_path / "memory"])
    weights = []
    for result, out in ((streamed, tmp_path / "streamed"), (in_memory, tmp_path / "memory")):
        assert result.returncode == 0, result.stderr
        assert json.loads((out / "report.json").read_text())["prune"]["within_block"] == "sequential"
        tensors = {}
        for path in sorted((out / "model").glob("*.safetensors")):
            tensors.update(load_file(path))
        weights.append(tensors)
    assert weights[0].keys() == weights[1].keys() and weights[0]
    for name, tensor in weights[0].items():
        assert (tensor == weights[1][name]).all(), name


def test_prune_sets_other_config_fields_streamed_and_in_memory(tiny_llama_dir, tmp_path):
    common = ["--method", "ria", "--sparsity", "0.5", "--nsamples", "8", "--seqlen", "16", "--no-eval",
              "--refine", "block", "--set", "update=admm", "--set", "admm_iterations=0", "--set",
              "admm_percdamp=1.0", "--set", "block_refine_steps=3", "--set", "block_refine_batch=2",
              "--set", "block_refine_norms=true", "--set", "block_refine_autocast=bfloat16"]
    results = run_many(["prune", tiny_llama_dir, *common, "--out", tmp_path / "streamed"],
                       ["prune", tiny_llama_dir, *common, "--in-memory", "--out", tmp_path / "memory"])
    for result, out in zip(results, (tmp_path / "streamed", tmp_path / "memory")):
        assert result.returncode == 0, result.stderr
        report = json.loads((out / "report.json").read_text())
        assert report["config"]["update"] == "admm" and report["config"]["block_refine_batch"] == 2
        assert report["config"]["block_refine_norms"] is True and report["config"]["refine"] == "block"
        assert report["prune"]["refine"] == "block" and len(report["prune"]["block_refinement"]) == 2
        assert all(entry["steps"] == 3 for entry in report["prune"]["block_refinement"])
