"""Quality measures of pruned models and the offline English text they are measured on.

The text is the first paragraph of the docstrings of Python standard-library functions and classes:
real English prose that every Python installation carries, so calibration and evaluation never
need a download. Calibration and evaluation draw on disjoint sets of modules.
"""

from __future__ import annotations

import importlib
import inspect
import math
import warnings

import torch

CALIBRATION_MODULES = ("json", "collections", "functools", "itertools", "pathlib", "subprocess", "argparse",
                       "logging", "threading", "asyncio", "email.message", "http.client", "urllib.request",
                       "zipfile", "tarfile")
EVALUATION_MODULES = ("csv", "datetime", "decimal", "fractions", "random", "statistics", "string", "textwrap",
                      "typing", "unittest", "shutil", "os", "re", "io", "heapq", "inspect", "dataclasses")


def docstring_sentences(module_names, limit: int) -> list[str]:
    """Up to ``limit`` first paragraphs (40-300 characters) of the docstrings of the modules'
    public functions and classes, deduplicated, spread evenly over the modules, deterministic."""
    seen, sentences = set(), []
    for module_name in module_names:
        module = importlib.import_module(module_name)
        for name in sorted(vars(module)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # deprecated attributes, e.g. typing.re
                obj = getattr(module, name)
                if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                    continue
                doc = inspect.getdoc(obj)
            if not doc:
                continue
            paragraph = " ".join(doc.split("\n\n")[0].split())
            if 40 <= len(paragraph) <= 300 and paragraph not in seen:
                seen.add(paragraph)
                sentences.append(paragraph)
    return sentences[:: max(1, len(sentences) // limit)][:limit] if len(sentences) > limit else sentences


def tokenize(tokenizer, sentences: list[str], batch_size: int = 16, max_length: int = 128) -> list[dict]:
    """Padded batches of token ids (dicts of tensors, passed to a model as keyword arguments)."""
    if not sentences:
        raise ValueError("tokenize: sentences is empty; expected at least one sentence")
    return [dict(tokenizer(sentences[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt"))
            for i in range(0, len(sentences), batch_size)]


@torch.no_grad()
def sentence_embeddings(model: torch.nn.Module, batches: list[dict]) -> torch.Tensor:
    """Sentence embeddings of an encoder: the last hidden state mean-pooled over the attention mask,
    L2-normalised (the sentence-transformers recipe); (sentences, hidden) fp32."""
    out = []
    for batch in batches:
        hidden = model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out)


def embedding_fidelity(model: torch.nn.Module, reference: torch.Tensor, batches: list[dict]) -> dict:
    """Mean and minimum cosine between the model's sentence embeddings and ``reference`` (the
    embeddings of the same batches by the dense model)."""
    cosine = (sentence_embeddings(model, batches) * reference).sum(-1)
    return {"mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min())}


@torch.no_grad()
def perplexity(model: torch.nn.Module, batches: list[dict]) -> float:
    """Perplexity of a causal LM on the batches: exp of the mean next-token negative log-likelihood
    over the non-padding target tokens."""
    total_nll, total_tokens = 0.0, 0
    for batch in batches:
        input_ids = batch["input_ids"]
        mask = batch.get("attention_mask", torch.ones_like(input_ids))
        logits = model(**batch).logits[:, :-1].float()
        targets = input_ids[:, 1:]
        keep = mask[:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                reduction="none").view_as(targets)
        total_nll += float(nll[keep].sum())
        total_tokens += int(keep.sum())
    if total_tokens == 0:
        raise ValueError("perplexity: the batches hold no target tokens (every sequence is shorter than 2)")
    return math.exp(total_nll / total_tokens)
