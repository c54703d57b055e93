"""The prunekit command end to end (subprocesses): help, info, bench --json, and prune / eval on
a tiny Llama saved with save_pretrained."""

import json
import math

import pytest
import torch

from _cli import json_stdout, run, run_many

SUBCOMMANDS = ("info", "demo", "prune", "eval", "bench")


def test_help_of_the_command_and_every_subcommand():
    results = run_many(["--help"], *([name, "--help"] for name in SUBCOMMANDS))
    for result in results:
        assert result.returncode == 0, (result.args, result.stderr)
        assert result.stdout.startswith("usage: prunekit"), result.args
        assert "Traceback" not in result.stderr
    assert all(name in results[0].stdout for name in SUBCOMMANDS)


def test_info_and_bench_json():
    info, bench = run_many(["info"], ["bench", "--quick", "--json", "--only", "sparsegpt,cuda", "--quiet"])
    info = json_stdout(info)
    assert {"version", "torch_version", "cpu_isa_selected", "cpu", "threads", "cuda_devices"} <= info.keys()
    document = json_stdout(bench)  # stdout is one JSON document and nothing else
    assert document["quick"] is True
    assert {"cpu_isa_selected", "threads", "commit"} <= document["machine"].keys()
    rows = document["results"]["sparsegpt"]["rows"]
    assert {row["pattern"] for row in rows} == {"50%", "2:4"}
    assert all(row["err_ratio"] == pytest.approx(1, abs=1e-3) for row in rows)
    # the summary is the geometric mean of the rows' speed-ups per pattern
    summary = {row["case"]: row for row in document["summary"]}
    assert summary.keys() == {"50%", "2:4"}
    for pattern, row in summary.items():
        speedups = [r["speedup"] for r in rows if r["pattern"] == pattern]
        assert row["n"] == len(speedups) and (row["min"], row["max"]) == (min(speedups), max(speedups))
        assert row["speedup"] == pytest.approx(math.prod(speedups) ** (1 / len(speedups)))
    cuda = document["results"]["cuda"]
    assert "skipped" in cuda or cuda["rows"]


def test_prune_writes_a_loadable_checkpoint_and_eval_reads_it(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from prunekit.app import report as reports

    out = tmp_path / "pruned"
    result = run("prune", tiny_llama_dir, "--method", "wanda", "--sparsity", "2:4", "--nsamples", "8", "--seqlen", "16",
                 "--eval-samples", "4", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "no tokenizer" in result.stderr  # random token ids, with a warning
    report = json.loads((out / "report.json").read_text())
    plots = {"layers.png", "quality_vs_sparsity.png"} if reports.have_matplotlib() else set()
    assert {"model", "report.json", "report.md"} | plots == set(report["files"])
    assert all((out / name).exists() for name in report["files"])
    assert report["prune"]["total_sparsity"] == pytest.approx(0.5)
    assert report["config"]["ignore"] == ["lm_head"]
    assert report["calibration"]["seed"] == 0 and "random token ids" in report["calibration"]["source"]
    quality = report["quality"]
    assert quality["metric"] == "perplexity" and quality["dense"] > 1 and quality["pruned"] > 1
    # the printed totals are report.json's
    assert f"pruned ({report['prune']['total_sparsity']:.4f})" in result.stdout
    assert f"dense {quality['dense']:.4f}, pruned {quality['pruned']:.4f}" in result.stdout
    assert (out / "report.md").read_text().startswith("# prunekit prune")

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    for layer in model.model.layers:
        weight = layer.mlp.up_proj.weight
        assert torch.equal((weight.reshape(-1, 4) != 0).sum(1), torch.full((weight.numel() // 4,), 2))
    assert (model.lm_head.weight != 0).all()

    evaluated = json_stdout(run("eval", out / "model", "--samples", "4", "--seqlen", "16", "--json"))
    assert evaluated["metric"] == "perplexity" and evaluated["perplexity"] > 1 and evaluated["tokens"] == 4 * 16


def test_prune_sparsify_into_a_used_directory_then_eval_in_process(tiny_llama_dir, tmp_path, capsys):
    """--sparsify writes a prunekit checkpoint that eval loads (prunekit.load); --format unstructured
    prunes in memory (sparsify_ swaps the layers), saying why; --overwrite replaces only prunekit's
    files (through prunekit.app.cli.main, no subprocess)."""
    from prunekit.app.cli import main

    out = tmp_path / "sparse"
    (out / "model").mkdir(parents=True)
    (out / "model" / "stale").write_text("replaced by --overwrite")
    (out / "notes.txt").write_text("not prunekit's: kept")
    assert main(["prune", str(tiny_llama_dir), "--method", "sparsegpt", "--sparsity", "0.5", "--nsamples", "8",
                 "--seqlen", "16", "--no-eval", "--sparsify", "--format", "unstructured", "--overwrite",
                 "--out", str(out), "--seed", "3", "--log-level", "info"]) == 0
    assert "pruning in memory: --format unstructured makes sparsify_ swap" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["quality"] is None and report["config"]["seed"] == 3 and "streamed" not in report
    assert len(report["checkpoint"]["sparsify"]["swapped"]) == 14  # every projection of the 2 blocks
    assert not (out / "model" / "stale").exists() and (out / "notes.txt").exists()
    assert main(["eval", str(out / "model"), "--reference", str(tiny_llama_dir), "--samples", "4", "--seqlen", "16",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("perplexity ") and "; reference " in printed


def test_prune_and_slice_calibrate_on_the_models_own_samples(tiny_llama_dir, tmp_path, capsys):
    """--calib-samples: the model samples its calibration sequences (no tokenizer needed: the
    config's BOS token starts them); prune runs in memory, saying why."""
    from prunekit.app.cli import main

    out = tmp_path / "pruned"
    assert main(["prune", str(tiny_llama_dir), "--method", "wanda", "--sparsity", "0.5", "--calib-samples",
                 "--nsamples", "4", "--seqlen", "12", "--no-eval", "--out", str(out), "--log-level", "info"]) == 0
    assert "pruning in memory: --calib-samples samples the calibration sequences" in capsys.readouterr().err
    calibration = json.loads((out / "report.json").read_text())["calibration"]
    assert "sampled from its BOS token" in calibration["source"]
    assert calibration["kind"] == "4 sampled sequences of 12 tokens"
    sliced = tmp_path / "sliced"
    assert main(["slice", str(tiny_llama_dir), "--ratio", "0.25", "--calib-samples", "--nsamples", "4", "--seqlen",
                 "12", "--no-eval", "--out", str(sliced), "--quiet"]) == 0
    assert "sampled" in json.loads((sliced / "report.json").read_text())["calibration"]["source"]


def test_encoder_prune_and_eval_against_the_reference_in_process(tmp_path, capsys):
    """An encoder (tiny BERT, no tokenizer): calibration on random token ids, embedding fidelity
    before and after, and eval against the dense model (through prunekit.app.cli.main, no subprocess)."""
    pytest.importorskip("transformers")
    from tiny_models import tiny_model

    from prunekit.app.cli import main

    dense = tmp_path / "bert"
    tiny_model("bert").save_pretrained(dense)
    out = tmp_path / "out"
    assert main(["prune", str(dense), "--method", "magnitude", "--sparsity", "0.5", "--nsamples", "4", "--seqlen", "8",
                 "--eval-samples", "4", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["causal_lm"] is False and report["config"]["ignore"] == ["pooler"]
    assert report["quality"]["metric"] == "mean_cosine" and 0 < report["quality"]["pruned"] < 1
    capsys.readouterr()
    assert main(["eval", str(out / "model"), "--reference", str(dense), "--samples", "4", "--seqlen", "8",
                 "--json", "--quiet"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["metric"] == "mean_cosine" and 0 < evaluated["mean_cosine"] < 1
    assert main(["eval", str(out / "model"), "--quiet"]) == 2  # an encoder needs --reference
    assert "pass --reference" in capsys.readouterr().err
