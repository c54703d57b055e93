"""The text the application calibrates and evaluates on: standard-library docstrings (offline),
text files, language-model windows and random token ids; perplexity through either GEMM library."""

import sys
from pathlib import Path

import pytest
import torch

from prunekit.app import evaluation

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/tiny_models.py
from tiny_models import calibration, tiny_model  # noqa: E402


def test_offline_text():
    paragraphs = evaluation.docstring_paragraphs(("json", "textwrap"))
    assert len(paragraphs) > 20 and all(len(p) >= 40 and ">>>" not in p[:3] for p in paragraphs)
    assert paragraphs == evaluation.docstring_paragraphs(("json", "textwrap"))  # deterministic
    # calibration and evaluation text never overlap
    assert not set(evaluation.docstring_paragraphs(evaluation.CALIBRATION_MODULES)) & set(
        evaluation.docstring_paragraphs(evaluation.EVALUATION_MODULES))
    assert not set(evaluation.docstring_sentences(evaluation.CALIBRATION_MODULES, 1000)) & set(
        evaluation.docstring_sentences(evaluation.EVALUATION_MODULES, 1000))


def test_read_text_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("First  paragraph\nstill first.\n\nSecond one.\n")
    assert evaluation.read_text_file(path) == ["First paragraph still first.", "Second one."]
    path.write_text("line one\nline two\n")
    assert evaluation.read_text_file(path) == ["line one", "line two"]
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="--calib: cannot read"):
        evaluation.read_text_file(path, "--calib")
    with pytest.raises(ValueError, match="is a directory"):
        evaluation.read_text_file(tmp_path)


class _CharTokenizer:
    """Token id = byte value (enough for windowing)."""

    bos_token_id = 1

    def __call__(self, text, **kwargs):
        return {"input_ids": torch.tensor([list(text.encode())])}


def test_lm_windows_are_seeded():
    text = ["some calibration text " * 20, "and more of it " * 20]
    first = evaluation.lm_windows(_CharTokenizer(), text, nsamples=5, seqlen=32, seed=0, batch_size=2)
    again = evaluation.lm_windows(_CharTokenizer(), text, nsamples=5, seqlen=32, seed=0, batch_size=2)
    other = evaluation.lm_windows(_CharTokenizer(), text, nsamples=5, seqlen=32, seed=1, batch_size=2)
    assert [b["input_ids"].shape for b in first] == [(2, 32), (2, 32), (1, 32)]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again))
    assert not all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, other))
    windows = evaluation.lm_eval_windows(_CharTokenizer(), text, seqlen=64, max_windows=3, batch_size=8)
    assert [b["input_ids"].shape for b in windows] == [(3, 64)]
    short = evaluation.lm_windows(_CharTokenizer(), ["tiny"], nsamples=2, seqlen=64, seed=0)
    assert short[0]["input_ids"].shape == (2, 5)  # bos + 4 characters
    random_ids = evaluation.random_token_batches(100, nsamples=3, seqlen=8, seed=0, batch_size=2)
    assert [b["input_ids"].shape for b in random_ids] == [(2, 8), (1, 8)]
    assert int(max(b["input_ids"].max() for b in random_ids)) < 100


def test_perplexity_is_the_same_through_either_gemm_library():
    model, batches = tiny_model("llama"), calibration("llama")
    aten = evaluation.perplexity(model, batches, linear_backend="aten")
    assert evaluation.perplexity(model, batches) == pytest.approx(aten, rel=1e-5)
    if torch.backends.mkldnn.is_available():
        assert evaluation.perplexity(model, batches, linear_backend="onednn") == pytest.approx(aten, rel=1e-5)
    with pytest.raises(ValueError, match="perplexity: linear_backend: expected one of"):
        evaluation.perplexity(model, batches, linear_backend="blas")
