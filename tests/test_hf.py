"""prunekit.hf: where a model comes from (a local directory or a hub id) and how it loads."""

import pytest

from prunekit import hf


@pytest.mark.parametrize("name, expected", [("org/name", True), ("meta-llama/Llama-2-7b-hf", True),
                                            ("./org/name", False), ("/abs/path", False), ("name", False),
                                            ("a/b/c", False)])
def test_is_hub_id(name, expected):
    assert hf.is_hub_id(name) is expected


def test_resolve_model_names_the_problem(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    afile = tmp_path / "file"
    afile.write_text("x")
    cases = {str(tmp_path / "missing"): "MODEL: no such directory", str(plain): "it has no config.json",
             str(afile): "is a file"}
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            hf.resolve_model(name)
    with pytest.raises(ValueError, match="^--reference: no such directory"):
        hf.resolve_model(str(tmp_path / "missing"), what="--reference")
    (plain / "config.json").write_text("{}")
    assert hf.resolve_model(str(plain)) == str(plain)
    assert hf.resolve_model("org/name") == "org/name"  # not local: left to the hub
    assert hf.load_compressed(str(plain)) is None  # no prunekit weights file


def test_load_model_of_a_causal_lm_and_of_an_encoder(tmp_path):
    pytest.importorskip("transformers")
    from tiny_models import tiny_model

    for kind, causal in (("llama", True), ("bert", False)):
        tiny_model(kind).save_pretrained(tmp_path / kind)
        model, tokenizer, is_causal = hf.load_model(str(tmp_path / kind))
        assert is_causal is causal and not model.training
        if causal:
            assert tokenizer is None  # the directory has no tokenizer files
        assert type(model).__name__.endswith(hf.CAUSAL_SUFFIXES) is causal
