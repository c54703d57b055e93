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
from pathlib import Path

from ._names import one_line

logger = logging.getLogger(__name__)

# Class-name suffixes of the transformers models that carry a language-model head.
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hugging Face hub id ("org/name"), not of a path."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) is not None and not name.startswith((".", "/"))


def resolve_model(name: str, what: str = "MODEL") -> str:
    """A local Hugging Face model directory (must hold config.json) or a hub id ("org/name") when no
    such local path exists; else ValueError naming the problem."""
    path = Path(name)
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

