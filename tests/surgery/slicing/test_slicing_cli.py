"""``prunekit slice`` in process on a tiny Llama directory: the checkpoint loads with prunekit.load,
the report holds parameters, forward times and perplexity; bad input leaves no output behind."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2]))  # tests/tiny_models.py

import prunekit  # noqa: E402
from prunekit.app.cli import main  # noqa: E402
from tiny_models import tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    return path


def test_slice_writes_a_loadable_checkpoint_and_a_report(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["slice", str(tiny_llama_dir), "--ratio", "0.25", "--out", str(out), "--nsamples", "8",
                 "--seqlen", "16", "--eval-samples", "4", "--time-runs", "1", "-q"])
    assert code == 0
    assert "block parameters 73,984 -> " in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    sliced = report["slice"]
    assert sliced["dims"]["embedding"] == 48 and sliced["block_params_after"] < sliced["block_params_before"]
    assert report["quality"]["dense"] > 0 and report["quality"]["sliced"] > 0
    assert report["forward_time"]["dense_ms"] > 0 and report["forward_time"]["sliced_ms"] > 0
    assert "## Parameters" in (out / "report.md").read_text()
    model = prunekit.load(out / "model")
    assert model.model.embed_tokens.weight.shape[1] == 48
    assert model.config.prunekit_slicing["ratio"] == [0.25, 0.25]
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.arange(8)[None]).logits).all()
    assert sorted(p.name for p in out.iterdir()) == ["model", "report.json", "report.md"]


@pytest.mark.parametrize("ratio, message", [
    ("1.5", "--ratio: expected fractions in [0, 1)"),
    ("half", "--ratio: expected a fraction in [0, 1) or fractions separated by commas"),
    ("0.95", "ratio: expected a fraction that leaves at least one of the 64 hidden dimensions"),
    ("0.25,0.25,0.25", "ratio: expected one fraction or one per block (2), but got 3"),
])
def test_bad_ratios_end_in_one_line_and_leave_nothing(tiny_llama_dir, tmp_path, capsys, ratio, message):
    out = tmp_path / "out"
    code = main(["slice", str(tiny_llama_dir), "--ratio", ratio, "--out", str(out), "--nsamples", "2",
                 "--seqlen", "8", "--no-eval", "--time-runs", "0", "-q"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
