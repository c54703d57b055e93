"""Fixtures of the command-line tests: a tiny Llama saved as a Hugging Face directory without a
tokenizer (the command calibrates it on seeded random token ids)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[2]))  # tests/tiny_models.py


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from tiny_models import tiny_model

    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    return path
