"""Quality measures of pruned models and the offline English text they are measured on.

The text is the docstrings of Python standard-library modules, functions and classes: real English
prose that every Python installation carries, so calibration and evaluation never need a download.
Calibration and evaluation draw on disjoint sets of modules. Sentence encoders use the first
paragraph of each function's or class's docstring (:func:`docstring_sentences`); language models
use every prose paragraph (:func:`docstring_paragraphs`, about 200 KB of text per module set) cut
into token windows (:func:`lm_windows`). Held-out prose from another domain than the docstrings is
the bundled text of *Alice's Adventures in Wonderland* (public domain; :func:`held_out_prose`), so
that a method which only fits its calibration domain shows it (:func:`lm_quality_batches`).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
import warnings

import torch

from ..calibrate.linear_backend import linears_through, resolve_linear_backend
from ..calibrate.pipeline import model_device
from .._measure import model_inputs
from ..recovery import read_text_file  # the library's text reader; the CLI calls it from here

logger = logging.getLogger(__name__)

CALIBRATION_MODULES = ("json", "collections", "functools", "itertools", "pathlib", "subprocess", "argparse",
                       "logging", "threading", "asyncio", "email.message", "http.client", "urllib.request",
                       "zipfile", "tarfile")
EVALUATION_MODULES = ("csv", "datetime", "decimal", "fractions", "random", "statistics", "string", "textwrap",
                      "typing", "unittest", "shutil", "os", "re", "io", "heapq", "inspect", "dataclasses")


def docstring_sentences(module_names, limit: int) -> list[str]:
    """Up to ``limit`` first paragraphs (40-300 characters) of the docstrings of the functions and
    classes the modules define (not those they import, nor docstrings inherited from a base class,
    so calibration and evaluation modules share no text), deduplicated, spread evenly over the
    modules, deterministic."""
    seen, sentences = set(), []
    for module_name in module_names:
        for obj in _documented_objects(importlib.import_module(module_name), methods=False)[1:]:
            paragraph = " ".join(_own_doc(obj).split("\n\n")[0].split())
            if 40 <= len(paragraph) <= 300 and paragraph not in seen:
                seen.add(paragraph)
                sentences.append(paragraph)
    return sentences[:: max(1, len(sentences) // limit)][:limit] if len(sentences) > limit else sentences


def _own_doc(obj) -> str:
    """The object's own docstring, cleaned ("" without one; inherited docstrings repeat across modules)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated attributes, e.g. typing.io
        doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def _documented_objects(module, methods: bool = True):
    """The module, then the functions and classes it defines (sorted; not those it imports from
    elsewhere), and (``methods``) the public methods of those classes."""
    objects = [module]
    home = (module.__name__, "_" + module.__name__.rsplit(".", 1)[-1])  # io.StringIO lives in _io
    for name in sorted(vars(module)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            obj = getattr(module, name)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", None) in home:
            objects.append(obj)
            if methods and inspect.isclass(obj):
                objects += [member for key, member in sorted(vars(obj).items())
                            if inspect.isfunction(member) and not key.startswith("_")]
    return objects


def _is_prose(paragraph: str) -> bool:
    """Mostly letters and spaces, not a doctest or a code sample."""
    if paragraph.startswith((">>>", "...", "$ ")) or paragraph.endswith("::"):
        return False
    letters = sum(c.isalpha() or c.isspace() for c in paragraph)
    return letters >= 0.85 * len(paragraph)


def docstring_paragraphs(module_names) -> list[str]:
    """Every prose paragraph (at least 40 characters) of the docstrings of the modules and their
    public functions, classes and methods, whitespace-normalised, deduplicated, in a fixed order."""
    seen, paragraphs = set(), []
    for module_name in module_names:
        for obj in _documented_objects(importlib.import_module(module_name)):
            for paragraph in _own_doc(obj).split("\n\n"):
                paragraph = " ".join(paragraph.split())
                if len(paragraph) >= 40 and paragraph not in seen and _is_prose(paragraph):
                    seen.add(paragraph)
                    paragraphs.append(paragraph)
    return paragraphs


HELD_OUT_PROSE = os.path.join(os.path.dirname(__file__), "data", "alice_in_wonderland.txt")


def held_out_prose() -> list[str]:
    """The paragraphs of the bundled public-domain novel (its first paragraph, a note on the source,
    left out): English narrative prose, another domain than the docstrings that calibrate."""
    return read_text_file(HELD_OUT_PROSE, what="held-out prose")[1:]


def lm_quality_batches(tokenizer, nsamples: int = 64, seqlen: int = 128, seed: int = 0,
                       eval_windows: int | None = 64, batch_size: int = 8) -> tuple[list[dict], list[dict]]:
    """The protocol every causal-LM quality number of prunekit uses: (calibration, evaluation)
    batches. Calibration: ``nsamples`` random windows of ``seqlen`` tokens from the docstrings of
    CALIBRATION_MODULES; evaluation: up to ``eval_windows`` consecutive windows of the held-out
    novel (another domain, so that fitting the calibration text does not pass for quality)."""
    calibration = lm_windows(tokenizer, docstring_paragraphs(CALIBRATION_MODULES), nsamples, seqlen, seed,
                             batch_size)
    evaluation = lm_eval_windows(tokenizer, held_out_prose(), seqlen, eval_windows, batch_size)
    return calibration, evaluation


def sample_sentences(sentences: list[str], n: int, seed: int) -> list[str]:
    """``n`` of the sentences, drawn without replacement by a generator seeded with ``seed``
    (all of them, shuffled, when there are fewer)."""
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed)).tolist()
    return [sentences[i] for i in order[:n]]


def _token_stream(tokenizer, paragraphs: list[str]) -> torch.Tensor:
    separator = "\n\n"
    ids = tokenizer(separator.join(paragraphs), return_tensors="pt", add_special_tokens=False,
                    verbose=False)["input_ids"][0]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        ids = torch.cat([torch.tensor([bos]), ids])
    return ids


def _batch_windows(windows: list[torch.Tensor], batch_size: int) -> list[dict]:
    batches = []
    for i in range(0, len(windows), batch_size):
        ids = torch.stack(windows[i : i + batch_size])
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return batches


def lm_windows(tokenizer, paragraphs: list[str], nsamples: int, seqlen: int, seed: int,
               batch_size: int = 8) -> list[dict]:
    """Calibration batches for a causal LM: ``nsamples`` windows of ``seqlen`` tokens taken at
    random offsets (seeded) from the tokenised text, ``batch_size`` windows per batch. Text shorter
    than ``seqlen`` tokens gives windows of all of it (with a warning)."""
    if nsamples < 1 or seqlen < 2:
        raise ValueError(f"lm_windows: expected nsamples >= 1 and seqlen >= 2, but got {nsamples} and {seqlen}")
    ids = _token_stream(tokenizer, paragraphs)
    if len(ids) < 2:
        raise ValueError(f"lm_windows: the text has {len(ids)} tokens; expected at least 2")
    if len(ids) < seqlen:
        logger.warning("the calibration text has %d tokens, fewer than seqlen=%d: using windows of %d tokens",
                       len(ids), seqlen, len(ids))
        seqlen = len(ids)
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seqlen + 1, (nsamples,), generator=generator).tolist()
    return _batch_windows([ids[s : s + seqlen] for s in starts], batch_size)


def lm_eval_windows(tokenizer, paragraphs: list[str], seqlen: int, max_windows: int | None = None,
                    batch_size: int = 8) -> list[dict]:
    """Evaluation batches for a causal LM: the tokenised text cut into consecutive
    non-overlapping windows of ``seqlen`` tokens (the last, shorter one dropped unless it is the
    only one), at most ``max_windows`` of them, evenly spread over the text."""
    ids = _token_stream(tokenizer, paragraphs)
    if len(ids) < 2:
        raise ValueError(f"lm_eval_windows: the text has {len(ids)} tokens; expected at least 2")
    count = max(1, len(ids) // seqlen)
    windows = [ids[i * seqlen : (i + 1) * seqlen] for i in range(count)]
    if max_windows is not None and len(windows) > max_windows:
        step = len(windows) / max_windows
        windows = [windows[int(i * step)] for i in range(max_windows)]
    return _batch_windows(windows, batch_size)


def random_token_batches(vocab_size: int, nsamples: int, seqlen: int, seed: int, batch_size: int = 8) -> list[dict]:
    """``nsamples`` sequences of ``seqlen`` token ids drawn uniformly (seeded): the stand-in for
    text when a model directory has no tokenizer."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (nsamples, seqlen), generator=generator)
    return _batch_windows(list(ids), batch_size)


def tokenize(tokenizer, sentences: list[str], batch_size: int = 16, max_length: int = 128) -> list[dict]:
    """Padded batches of token ids (dicts of tensors, passed to a model as keyword arguments)."""
    if not sentences:
        raise ValueError("tokenize: sentences is empty; expected at least one sentence")
    return [dict(tokenizer(sentences[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt"))
            for i in range(0, len(sentences), batch_size)]


def _bar(batches, description: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(batches, desc=description, disable=None if progress else True, leave=False)


@torch.no_grad()
def sentence_embeddings(model: torch.nn.Module, batches: list[dict], progress: bool = False) -> torch.Tensor:
    """Sentence embeddings of an encoder: the last hidden state mean-pooled over the attention mask,
    L2-normalised (the sentence-transformers recipe); (sentences, hidden) fp32."""
    out = []
    for batch in _bar(batches, "prunekit eval: embeddings", progress):
        hidden = model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out)


def embedding_fidelity(model: torch.nn.Module, reference: torch.Tensor, batches: list[dict],
                       progress: bool = False) -> dict:
    """Mean and minimum cosine between the model's sentence embeddings and ``reference`` (the
    embeddings of the same batches by the dense model)."""
    cosine = (sentence_embeddings(model, batches, progress) * reference).sum(-1)
    return {"mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min())}


@torch.no_grad()
def perplexity(model: torch.nn.Module, batches: list[dict], progress: bool = False,
               linear_backend: str = "auto") -> float:
    """Perplexity of a causal LM on the batches: exp of the mean next-token negative log-likelihood
    over the non-padding target tokens. ``linear_backend``: the GEMM library of the model's fp32
    CPU linears, as ``PruneConfig.linear_backend`` (by default oneDNN where clearly faster: the
    values differ by float rounding)."""
    backend = resolve_linear_backend(linear_backend, device=model_device(model), owner="perplexity: linear_backend")
    with linears_through(model, backend):
        return _perplexity(model, batches, progress)


def _perplexity(model: torch.nn.Module, batches: list[dict], progress: bool) -> float:
    total_nll, total_tokens = 0.0, 0
    for batch in _bar(batches, "prunekit eval: perplexity", progress):
        input_ids = batch["input_ids"]
        mask = batch.get("attention_mask", torch.ones_like(input_ids))
        logits = model(**model_inputs(batch)).logits[:, :-1].float()
        targets = input_ids[:, 1:]
        keep = mask[:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                reduction="none").view_as(targets)
        total_nll += float(nll[keep].sum())
        total_tokens += int(keep.sum())
    if total_tokens == 0:
        raise ValueError("perplexity: the batches hold no target tokens (every sequence is shorter than 2)")
    return math.exp(total_nll / total_tokens)
