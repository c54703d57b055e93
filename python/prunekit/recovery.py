"""Recovery training after pruning: ``prunekit.recover(model, data, ...)``.

A short training on text or batches that keeps what pruning did: every weight that is exactly
zero when training starts (unstructured or N:M masks, and whatever structured pruning, slicing or
layer removal left) is exactly zero afterwards, and removed structure stays removed (training
never adds modules or resizes them). What trains (``train``):

- ``"all"``: every remaining weight, with a masked optimiser: the masks are the nonzeros at the
  start; gradients are masked before the optimiser step and the weights re-masked after it, so
  AdamW's moments and weight decay cannot move a pruned weight.
- ``"norms"``: normalisation weights and biases only (PERP, Zimmermann et al. 2023): a few
  thousand parameters; the sparsity pattern is untouched by construction.
- ``"lora"``: low-rank adapters on the linear layers of the blocks, merged into the weights
  afterwards. The adapter is *constrained* to the sparsity pattern: a layer computes
  ``(W + M * (s B A)) x`` with ``M`` its mask, so the merged weight ``W + M * (s B A)`` keeps
  every pruned weight exactly zero and is exactly the function that was trained (merging an
  unconstrained adapter and re-masking would change the function). Dense layers (no zeros) use the
  plain low-rank path ``W x + s B (A x)``.

The loss is a causal LM's next-token cross-entropy (``labels`` in a batch override the targets;
-100 skips a token), or, with a ``teacher`` (the dense model before pruning), the KL divergence
from the teacher's next-token distribution to the model's on the same tokens (distillation: the
pruned model learns the dense model's function rather than the training text, so what it
recovers carries over to text of other domains), or, on batches holding the teacher's top-k
next tokens and log-probabilities (``teacher_samples(..., target_top_k=k)``, kept from the
forwards that drew the samples), the KL over those k tokens and one outcome for all others, with
no teacher forward per step; or ``loss_fn(model, batch) -> scalar`` for other models.

Under ``torch.distributed`` (a process group of more than one rank, as for calibration) every
rank trains on its shard of the batches and the gradients are all-reduced (averaged) before each
step, so every rank keeps identical weights; rank 0 shows the progress bar and writes the
checkpoint.

Failure is safe: a non-finite loss or weight (a learning rate that diverges), an exception or an
interrupt restores the weights as they were before training and raises; a checkpoint is written
only at the end, atomically (temporary name, then rename).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed as dist_
from ._autocast import autocast_dtype, autocast_or_nothing
from ._names import dtype_name
from ._measure import (TEACHER_TARGET_KEYS, _no_cache_kwargs, causal_lm_nll, count_parameters, forward_seconds,
                       model_inputs, perplexity)

logger = logging.getLogger(__name__)

__all__ = ["recover", "RecoveryReport", "TRAIN_MODES", "distillation_kl", "read_text_file", "teacher_samples",
           "text_batches", "zero_masks"]

TRAIN_MODES = ("all", "norms", "lora")


# ----------------------------------------------------------------------------- data

def read_text_file(path: str | os.PathLike, what: str = "data") -> list[str]:
    """The paragraphs of a UTF-8 text file (split at blank lines; a file without blank lines is
    split into its lines), whitespace-normalised. Missing, unreadable or empty files raise
    ValueError naming ``what``."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise ValueError(f"{what}: no such file: {os.fspath(path)!r}") from None
    except IsADirectoryError:
        raise ValueError(f"{what}: {os.fspath(path)!r} is a directory; expected a text file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{what}: cannot read {os.fspath(path)!r} as UTF-8 text: {error}") from None
    blocks = [block for block in text.split("\n\n") if block.strip()]
    if len(blocks) <= 1:
        blocks = text.splitlines()
    paragraphs = [" ".join(block.split()) for block in blocks]
    paragraphs = [p for p in paragraphs if p]
    if not paragraphs:
        raise ValueError(f"{what}: {os.fspath(path)!r} is empty; expected some text")
    return paragraphs


def text_batches(tokenizer, text: str | os.PathLike | Sequence[str], seqlen: int = 128, batch_size: int = 4,
                 seed: int = 0, what: str = "data") -> list[dict]:
    """Training batches from text: ``text`` is a file path or a list of paragraphs; the tokens (a
    BOS first where the tokenizer has one, paragraphs joined by blank lines) are cut into
    consecutive windows of ``seqlen`` tokens, shuffled (seeded) and grouped ``batch_size`` per
    batch (the last batch may be smaller). Text shorter than one window raises ValueError."""
    if seqlen < 2 or batch_size < 1:
        raise ValueError(f"{what}: expected seqlen >= 2 and batch_size >= 1, but got seqlen={seqlen} and "
                         f"batch_size={batch_size}")
    if isinstance(text, (str, os.PathLike)):
        paragraphs, source = read_text_file(text, what), repr(os.fspath(text))
    else:
        paragraphs = [p for p in (" ".join(str(p).split()) for p in text) if p]
        source = "the text"
        if not paragraphs:
            raise ValueError(f"{what}: {source} is empty; expected some text to train on")
    ids = tokenizer("\n\n".join(paragraphs), return_tensors="pt", add_special_tokens=False,
                    verbose=False)["input_ids"][0]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        ids = torch.cat([torch.tensor([bos]), ids])
    if len(ids) < seqlen:
        raise ValueError(f"{what}: {source} is too short for one batch: it has {len(ids)} tokens, but one training "
                         f"window needs seqlen={seqlen} tokens")
    windows = ids[: len(ids) // seqlen * seqlen].view(-1, seqlen)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))
    windows = windows[order]
    return [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows.split(batch_size)]


SAMPLING_TOP_K = 50
SAMPLING_TOP_P = 0.95


def teacher_samples(teacher: nn.Module, tokenizer=None, *, sequences: int = 256, seqlen: int = 128,
                    batch_size: int = 4, top_p: float = SAMPLING_TOP_P, top_k: int = SAMPLING_TOP_K,
                    temperature: float = 1.0, generation_batch: int = 128, autocast=None, seed: int = 0,
                    target_top_k: int = 0, progress: bool = True) -> list[dict]:
    """Training (or calibration) batches sampled from the dense model itself (data-free
    distillation): ``sequences`` sequences of ``seqlen`` tokens, each the BOS token (the
    tokenizer's, else the teacher config's; for chat models often a turn marker) continued by
    sampling (the ``top_k`` most likely tokens, 0: all, then the nucleus ``top_p``, at
    ``temperature``; end-of-sequence tokens are never drawn), ``generation_batch`` sequences at a
    time with the KV cache, grouped ``batch_size`` per batch. The teacher's own generation settings
    (repetition penalties and the like) are set aside: the samples follow its plain distribution.
    Seeded, without touching the global random state: the same seed gives the same batches on the
    same kind of device with the same ``generation_batch`` and ``autocast`` (under
    ``torch.distributed`` each rank samples the whole set, and ``recover`` shards it). Distilling on
    them teaches the pruned model what the teacher does on text it finds typical, whatever domain
    the calibration text came from.

    ``target_top_k`` > 0 keeps, at every position but the last, the teacher's ``target_top_k`` most
    likely next tokens (``teacher_token_ids``, int64) and their log-probabilities under its plain
    distribution (``teacher_logprobs``, float32; both (batch, seqlen - 1, k)), from the forwards that
    drew the samples: :func:`recover` then distils from them without running the teacher again.

    ``teacher`` must be a causal LM with Hugging Face's ``generate``; ``autocast`` ("bfloat16" /
    "float16") runs its forwards under ``torch.autocast``."""
    for name, value, low in (("sequences", sequences, 1), ("seqlen", seqlen, 2), ("batch_size", batch_size, 1),
                             ("top_k", top_k, 0), ("generation_batch", generation_batch, 1),
                             ("target_top_k", target_top_k, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"teacher_samples: {name}: expected an integer >= {low}, but got {value!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"teacher_samples: top_p: expected a probability in (0, 1], but got {top_p!r}")
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature)
            or temperature <= 0):
        raise ValueError(f"teacher_samples: temperature: expected a finite value > 0, but got {temperature!r}")
    dtype = autocast_dtype(autocast, "teacher_samples: autocast")
    if not isinstance(teacher, nn.Module) or not callable(getattr(teacher, "generate", None)):
        raise ValueError(f"teacher_samples: teacher: expected a causal LM with generate() (a Hugging Face model), but "
                         f"got {type(teacher).__name__}")
    config = getattr(teacher, "config", None)
    bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    bos = bos if bos is not None else getattr(config, "bos_token_id", None)
    if bos is None:
        raise ValueError(f"teacher_samples: teacher: {type(teacher).__name__} has no BOS token id (neither the "
                         "tokenizer nor the config names one) to start the samples from")
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and target_top_k > vocab:
        raise ValueError(f"teacher_samples: target_top_k: expected at most the vocabulary size {vocab}, but got "
                         f"{target_top_k}")
    eos = _end_of_sequence_ids(tokenizer, config, getattr(teacher, "generation_config", None))
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, LogitsProcessorList

    device = next(teacher.parameters()).device
    sampler = _sampling_processor(top_k, float(top_p), float(temperature), seed, eos, target_top_k)
    # Greedy decoding of the sampler's one-hot scores (the sampler draws each token itself, never an
    # end of sequence), under a plain generation config in place of the teacher's: no penalty,
    # forced or suppressed token of its own applies, so the sampler sees the teacher's raw scores.
    # A static KV cache where the model has one: the default cache grows by concatenation, copying
    # itself at every step (a third of the sampling time on SmolLM2 at 128 sequences).
    static = bool(getattr(teacher, "_can_compile_fullgraph", False))
    generation = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=seqlen - 1, use_cache=True,
                                  cache_implementation="static" if static else None,
                                  return_dict_in_generate=False, bos_token_id=bos, eos_token_id=eos or None,
                                  pad_token_id=eos[0] if eos else bos)
    was_training, own_config = teacher.training, getattr(teacher, "generation_config", None)
    teacher.eval()
    parts, targets = [], []
    try:
        teacher.generation_config = generation
        with torch.no_grad(), autocast_or_nothing(device.type, dtype):
            for start in tqdm(range(0, sequences, generation_batch), desc="prunekit teacher samples",
                              disable=None if progress else True, leave=False):
                rows = min(generation_batch, sequences - start)
                prompt = torch.full((rows, 1), bos, dtype=torch.long, device=device)
                sampler.targets = []
                out = teacher.generate(prompt, attention_mask=torch.ones_like(prompt),
                                       logits_processor=LogitsProcessorList([sampler]))
                if out.shape[1] != seqlen:
                    raise RuntimeError(f"teacher_samples: teacher: generate stopped after {out.shape[1]} of {seqlen} "
                                       "tokens (a stopping rule of the model's own)")
                parts.append(out.cpu())
                if target_top_k:
                    targets.append([torch.stack(found, dim=1) for found in zip(*sampler.targets)])
    finally:
        teacher.generation_config = own_config
        teacher.train(was_training)
    ids = torch.cat(parts)
    batches = [{"input_ids": rows, "attention_mask": torch.ones_like(rows)} for rows in ids.split(batch_size)]
    if target_top_k:
        for key, values in zip(("teacher_logprobs", "teacher_token_ids"), zip(*targets)):
            for batch, part in zip(batches, torch.cat(values).split(batch_size)):
                batch[key] = part
    return batches


def _end_of_sequence_ids(tokenizer, *configs) -> list[int]:
    """Every end-of-sequence id the tokenizer, the model config and its generation config name (a
    chat model's generation config often lists several)."""
    ids: list[int] = []
    for source in (tokenizer, *configs):
        found = getattr(source, "eos_token_id", None) if source is not None else None
        for value in (found if isinstance(found, (list, tuple)) else [found]):
            if isinstance(value, int) and value not in ids:
                ids.append(value)
    return ids


def _sample_next_tokens(scores: torch.Tensor, top_k: int, top_p: float, temperature: float,
                        generator: torch.Generator | None = None, banned: Sequence[int] = ()) -> torch.Tensor:
    """One token per row of next-token ``scores`` (rows, vocabulary), as (rows, 1): softmax at
    ``temperature`` over the ``top_k`` highest scores (0: all), cut to the smallest prefix whose
    probability reaches ``top_p`` (at least one token; no cut at 1), renormalised: Hugging Face's
    temperature / top-k / top-p distribution. With a top-k it neither sorts the whole vocabulary
    nor draws over it, as Hugging Face's sampling does at every step. ``banned`` ids are never drawn."""
    scores = scores.float() / temperature
    banned = [i for i in banned if 0 <= i < scores.shape[-1]]  # a special token may lie past the logits
    if banned:
        scores = scores.index_fill(-1, torch.tensor(banned, device=scores.device), float("-inf"))
    k = scores.shape[-1] if top_k == 0 else min(top_k, scores.shape[-1])
    values, indices = torch.topk(scores, k, dim=-1)  # sorted, highest first
    if not bool(torch.isfinite(values[:, 0]).all()) or bool(values.isnan().any()):
        raise ValueError("teacher_samples: teacher: its next-token scores hold NaN or no finite value (an overflow; "
                         "under autocast='float16' try 'bfloat16' or None)")
    probs = torch.softmax(values, dim=-1)
    if top_p < 1:
        mass_before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(mass_before >= top_p, 0)
    return indices.gather(-1, torch.multinomial(probs, 1, generator=generator))


def _sampling_processor(top_k: int, top_p: float, temperature: float, seed: int, banned: Sequence[int] = (),
                        target_top_k: int = 0):
    """A transformers logits processor that draws each next token with :func:`_sample_next_tokens`
    (its own generator, seeded, made on the scores' device; ``banned`` ids never drawn) and returns
    scores where only that token is finite (0), for greedy decoding to pick. With ``target_top_k``
    it appends (log-probabilities, ids) of the ``target_top_k`` most likely tokens of the raw scores,
    on the CPU, to its ``targets`` list at every step."""
    from transformers import LogitsProcessor

    class SampleNextToken(LogitsProcessor):
        generator: torch.Generator | None = None

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if self.generator is None:
                self.generator = torch.Generator(device=scores.device).manual_seed(seed)
            if target_top_k > scores.shape[-1]:
                raise ValueError(f"teacher_samples: target_top_k: expected at most the teacher's {scores.shape[-1]} "
                                 f"next-token scores, but got {target_top_k}")
            if target_top_k:
                logprobs, ids = torch.log_softmax(scores.float(), dim=-1).topk(target_top_k, dim=-1)
                self.targets.append((logprobs.cpu(), ids.cpu()))
            chosen = _sample_next_tokens(scores, top_k, top_p, temperature, self.generator, banned)
            return torch.full_like(scores, float("-inf")).scatter_(-1, chosen, 0.0)

    processor = SampleNextToken()
    processor.targets = []
    return processor


def _check_batches(data, what: str = "data") -> list:
    if isinstance(data, (str, bytes, os.PathLike)):
        raise ValueError(f"{what}: a text file needs tokenizer=...; got a path without a tokenizer")
    try:
        batches = list(data)
    except TypeError:
        raise ValueError(f"{what}: expected a list of batches (dicts of tensors), a text file or a list of "
                         f"paragraphs, but got {type(data).__name__}") from None
    if not batches:
        raise ValueError(f"{what}: expected at least one batch to train on, but got none (empty data)")
    for index, batch in enumerate(batches):
        if isinstance(batch, Mapping) and isinstance(batch.get("input_ids"), torch.Tensor):
            ids = batch["input_ids"]
            if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
                raise ValueError(f"{what}: batch {index} is too short for one training step: input_ids has shape "
                                 f"{tuple(ids.shape)}; expected (batch >= 1, tokens >= 2)")
    return batches


# ----------------------------------------------------------------------------- masks and adapters

def zero_masks(model: nn.Module, parameters: Mapping[str, nn.Parameter] | None = None) -> dict[str, torch.Tensor]:
    """The nonzero masks (bool, True = kept) of the weight matrices (2 dims or more) that hold at
    least one exact zero: the sparsity pattern training must keep."""
    parameters = dict(model.named_parameters()) if parameters is None else parameters
    masks = {}
    for name, param in parameters.items():
        if param.dim() >= 2:
            zeros = param.detach() == 0
            if bool(zeros.any()):
                masks[name] = ~zeros
    return masks


class MaskedLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a low-rank adapter ``s B A`` (``s = alpha / rank``), restricted to
    the linear's nonzeros when it has a mask: ``y = (W + M * (s B A)) x + b``. ``merged()`` is the
    linear with that weight, exactly the function trained."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, mask: torch.Tensor | None, generator):
        super().__init__()
        self.linear = linear
        out_features, in_features = linear.weight.shape
        rank = min(rank, out_features, in_features)
        self.scale = alpha / rank
        weight = linear.weight
        self.lora_a = nn.Parameter(torch.randn(rank, in_features, generator=generator, dtype=torch.float32)
                                   .to(weight.dtype).to(weight.device) / math.sqrt(in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, dtype=weight.dtype, device=weight.device))
        self.register_buffer("mask", mask, persistent=False)

    def delta(self) -> torch.Tensor:
        delta = self.scale * (self.lora_b @ self.lora_a)
        return delta if self.mask is None else delta.masked_fill(~self.mask, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return self.linear(x) + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)
        return F.linear(x, self.linear.weight + self.delta(), self.linear.bias)

    @torch.no_grad()
    def merge_(self) -> nn.Linear:
        self.linear.weight.add_(self.delta().to(self.linear.weight.dtype))
        return self.linear


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _embedding_parameters(model: nn.Module) -> set[int]:
    ids = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None:
            ids.update(id(p) for p in module.parameters())
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            ids.update(id(p) for p in module.parameters())
    return ids


def is_normalisation(module: nn.Module) -> bool:
    """A normalisation layer: torch's layer, group, RMS and batch norms, or a module whose class
    name says norm (Hugging Face's LlamaRMSNorm and kin)."""
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)) or \
        "norm" in type(module).__name__.lower()


def _select_trainable(model: nn.Module, train: str, train_embeddings: bool) -> dict[str, nn.Parameter]:
    embeddings = set() if train_embeddings else _embedding_parameters(model)
    if train == "all":
        return {n: p for n, p in model.named_parameters() if id(p) not in embeddings}
    if train == "norms":
        chosen = {}
        for module_name, module in model.named_modules():
            for name, param in module.named_parameters(recurse=False):
                if (is_normalisation(module) or name == "bias") and id(param) not in embeddings:
                    chosen[f"{module_name}.{name}" if module_name else name] = param
        return chosen
    return {}


def _lora_targets(model: nn.Module) -> list[str]:
    """The nn.Linear layers an adapter goes on: every one but the output embedding (LM head)."""
    output = getattr(model, "get_output_embeddings", lambda: None)()
    return [name for name, module in model.named_modules()
            if type(module) is nn.Linear and module is not output]


# ----------------------------------------------------------------------------- report

@dataclass
class RecoveryReport:
    """What :func:`recover` did (JSON-serialisable through ``to_dict``)."""

    train: str
    steps: int
    lr: float
    batches: int
    tokens_per_step: float
    trainable_parameters: int
    masked_weights: int
    """Weights held at exactly zero by the masks (the pruned ones)."""
    parameters: int
    loss_first: float | None = None
    loss_last: float | None = None
    """Mean training loss over the first / last tenth of the steps."""
    losses: list = field(default_factory=list)
    pruned_weights_still_zero: bool = True
    forward_seconds_before: float | None = None
    forward_seconds_after: float | None = None
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    world_size: int = 1
    seconds: float = 0.0
    checkpoint: str | None = None
    lora: dict | None = None
    autocast: str | None = None
    """The forwards' ``torch.autocast`` dtype (None: the weights' dtype)."""
    loss: str = "next-token cross-entropy"
    """What was minimised: "next-token cross-entropy", "KL from the teacher" (with "+ w x hidden
    states" under ``hidden_distillation``) or "loss_fn"."""

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        text = (f"recover ({self.train}): {self.steps} steps at lr {self.lr:g}, "
                f"{self.trainable_parameters:,} trainable parameters, {self.masked_weights:,} pruned weights kept "
                f"at zero "
                f"({'ok' if self.pruned_weights_still_zero else 'VIOLATED'}); loss {self.loss_first:.4f} -> "
                f"{self.loss_last:.4f}; {self.seconds:.1f} s")
        if self.perplexity_before is not None:
            text += f"; perplexity {self.perplexity_before:.2f} -> {self.perplexity_after:.2f}"
        return text


class RecoveryError(ValueError):
    """Training went wrong (a non-finite loss or weight); the weights were restored."""


# ----------------------------------------------------------------------------- recover

def _logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output[0]


def distillation_kl(model: nn.Module, teacher: nn.Module | None, batch: Mapping,
                    hidden_weight: float = 0.0) -> tuple[torch.Tensor, int]:
    """(sum over the target tokens of KL(teacher || model) between their next-token
    distributions, number of target tokens) on a causal-LM batch: the tokens
    :func:`~prunekit._measure.causal_lm_nll` scores (attention mask, ``labels`` of -100 skipped).
    Differentiable in ``model``; the teacher runs without gradients.

    ``teacher`` None: the batch holds the teacher's top-k targets (``teacher_logprobs`` and
    ``teacher_token_ids``, (batch, tokens - 1, k), from :func:`teacher_samples`), and the KL is
    between the two distributions coarsened to k + 1 outcomes: each of the teacher's k tokens, and
    all others together. It is at most the full KL, equal to it when the k tokens hold all the
    teacher's probability, and needs no teacher forward.

    ``hidden_weight`` > 0 adds, per token, that weight times the sum over the blocks' hidden states
    of the squared error to the teacher's, each divided by the teacher's mean squared hidden state
    over the batch's tokens (SquareHead, Kurtic et al. 2023: every block learns the dense block's
    output, so the gradient reaches the early blocks directly and the per-block scales, which grow
    along the residual stream, weigh alike). Needs models that return ``hidden_states``."""
    inputs = model_inputs(batch)
    hidden = {"output_hidden_states": True} if hidden_weight > 0 else {}
    if teacher is None and hidden_weight > 0:
        raise ValueError(f"distillation_kl: hidden_weight={hidden_weight!r} needs a teacher model, but got None (the "
                         "batches' top-k targets hold no hidden states)")
    teacher_out = None
    if teacher is not None:
        with torch.no_grad():
            teacher_out = teacher(**inputs, **_no_cache_kwargs(teacher, batch), **hidden)
    model_out = model(**inputs, **_no_cache_kwargs(model, batch), **hidden)
    logits = _logits(model_out)
    if teacher is not None:
        target = _logits(teacher_out)
        if target.shape != logits.shape or target.device != logits.device:
            raise ValueError(f"recover: teacher: its logits are {tuple(target.shape)} on {target.device}, the model's "
                             f"{tuple(logits.shape)} on {logits.device}; expected the same vocabulary on the same "
                             "device (the model before pruning)")
    else:
        target = _top_k_targets(batch, logits)
    labels = batch.get("labels")
    targets = batch["input_ids"][:, 1:]
    keep = (labels[:, 1:] != -100) if labels is not None else torch.ones_like(targets, dtype=torch.bool)
    mask = batch.get("attention_mask")
    if mask is not None:
        keep = keep & mask[:, 1:].bool()
    # Only the kept positions: padding cannot bring NaN in, and the (tokens, vocab) temporaries are smaller.
    every = bool(keep.all())

    def kept(values: torch.Tensor) -> torch.Tensor:  # (batch, tokens - 1, n) -> (kept tokens, n)
        return values.reshape(-1, values.shape[-1]) if every else values[keep]

    log_model = F.log_softmax(kept(logits[:, :-1]).float(), dim=-1)
    if teacher is None:
        loss = _top_k_kl(log_model, *map(kept, target))
    else:
        target = kept(target[:, :-1])
        # sum p_t (log p_t - log p_s), with 0 where the teacher rules a token out (probability 0, a
        # -inf logit, which the pruned model often shares: 0 * -inf must not make NaN)
        with torch.no_grad():
            teacher_probs = F.softmax(target.float(), dim=-1)
            teacher_terms = torch.special.xlogy(teacher_probs, teacher_probs)
        loss = torch.where(teacher_probs > 0, teacher_terms - teacher_probs * log_model, 0.0).sum()
    if hidden_weight > 0:
        loss = loss + hidden_weight * _hidden_distance(model_out, teacher_out, mask)
    return loss, int(keep.sum())


def _top_k_targets(batch: Mapping, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's (teacher_logprobs, teacher_token_ids), checked against the model's logits."""
    found = [batch.get(key) for key in TEACHER_TARGET_KEYS]
    if not all(isinstance(value, torch.Tensor) for value in found):
        raise ValueError("recover: data: without a teacher model, distillation needs batches holding tensors "
                         f"{' and '.join(TEACHER_TARGET_KEYS)} (teacher_samples(..., target_top_k=k)), but got a "
                         f"batch holding {sorted(batch)}")
    logprobs, ids = found
    expected = (logits.shape[0], logits.shape[1] - 1)
    if (logprobs.shape != ids.shape or ids.dim() != 3 or tuple(ids.shape[:2]) != expected or ids.shape[-1] < 1
            or ids.dtype != torch.long or not logprobs.dtype.is_floating_point):
        raise ValueError(f"recover: data: expected teacher_logprobs (float) and teacher_token_ids (int64) of shape "
                         f"{expected + ('k >= 1',)}, but got {tuple(logprobs.shape)} {logprobs.dtype} and "
                         f"{tuple(ids.shape)} {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= logits.shape[-1]):
        raise ValueError(f"recover: data: teacher_token_ids: expected ids in [0, {logits.shape[-1]}), but got "
                         f"[{int(ids.min())}, {int(ids.max())}]")
    return logprobs.to(logits.device), ids.to(logits.device)


def _top_k_kl(log_model: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_ids: torch.Tensor) -> torch.Tensor:
    """Sum over the rows of KL(teacher || model) over the teacher's k tokens and one outcome for all
    others. ``log_model``: (rows, vocabulary) log-probabilities; the teacher's: (rows, k) with ids."""
    model_top = log_model.gather(-1, teacher_ids)
    with torch.no_grad():
        teacher_logprobs = teacher_logprobs.float()
        teacher_top = teacher_logprobs.exp()
        teacher_rest = (1 - teacher_top.sum(-1)).clamp_min(0)
    loss = torch.where(teacher_top > 0, teacher_top * (teacher_logprobs - model_top), 0.0).sum()
    if teacher_ids.shape[-1] < log_model.shape[-1]:  # else there is no other outcome
        # The model's probability outside the k tokens: 1 - their sum, from the (rows, k) values (a
        # pass over the whole vocabulary costs three times the rest of the loss), except in rows
        # where that leaves under 1e-4, about a thousand times float32's rounding of the sum: there
        # from the logsumexp of the others.
        rest = 1 - model_top.double().exp().sum(-1)
        model_rest = torch.log(rest.clamp_min(1e-4)).to(log_model.dtype)
        small = (rest.detach() < 1e-4).nonzero().squeeze(-1)
        if small.numel():
            exact = torch.logsumexp(log_model[small].scatter(-1, teacher_ids[small], float("-inf")), dim=-1)
            model_rest = model_rest.index_put((small,), exact)
        loss = loss + torch.where(teacher_rest > 0, torch.special.xlogy(teacher_rest, teacher_rest)
                                  - teacher_rest * model_rest, 0.0).sum()
    return loss


def _hidden_distance(model_out, teacher_out, mask: torch.Tensor | None) -> torch.Tensor:
    """Sum over the tokens (attention mask kept) and the blocks' hidden states (the embeddings
    excluded: they do not train) of ||h_s - h_t||^2 / mean ||h_t||^2, the mean over the tokens."""
    states = [getattr(out, "hidden_states", None) for out in (model_out, teacher_out)]
    if any(not isinstance(found, (tuple, list)) or len(found) < 2 for found in states):
        raise ValueError("recover: hidden_distillation: the model and the teacher must return hidden_states "
                         "(a Hugging Face model called with output_hidden_states=True), but "
                         f"{type(model_out).__name__} has none")
    ours, theirs = states
    if len(ours) != len(theirs):
        raise ValueError(f"recover: hidden_distillation: the model returns {len(ours)} hidden states and the teacher "
                         f"{len(theirs)}; expected the same blocks (layer pruning changes them: distil the logits "
                         "only, hidden_distillation=0)")
    total = torch.zeros((), dtype=torch.float32, device=ours[-1].device)
    keep = mask.bool() if mask is not None and mask.shape == ours[-1].shape[:2] else None
    for student, target in zip(ours[1:], theirs[1:]):
        if student.shape != target.shape:
            raise ValueError(f"recover: hidden_distillation: hidden states of shape {tuple(student.shape)} and "
                             f"{tuple(target.shape)} (model, teacher); expected equal (slicing changes them: "
                             "hidden_distillation=0)")
        if keep is not None:
            student, target = student[keep], target[keep]
        target = target.float()
        scale = target.pow(2).sum(-1).mean().clamp_min(torch.finfo(torch.float32).tiny)
        total = total + (student.float() - target).pow(2).sum() / scale
    return total


def _check_arguments(train, steps, lr, lora_rank, lora_alpha, weight_decay, max_grad_norm, warmup_steps,
                     accumulation):
    if train not in TRAIN_MODES:
        raise ValueError(f"recover: train: expected one of {', '.join(TRAIN_MODES)}, but got {train!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"recover: steps: expected an integer >= 1, but got {steps!r}")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"recover: lr: expected a finite learning rate > 0, but got {lr!r}")
    if not isinstance(lora_rank, int) or lora_rank < 1:
        raise ValueError(f"recover: lora_rank: expected an integer >= 1, but got {lora_rank!r}")
    if not math.isfinite(lora_alpha) or lora_alpha <= 0:
        raise ValueError(f"recover: lora_alpha: expected a finite value > 0, but got {lora_alpha!r}")
    if not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"recover: weight_decay: expected a finite value >= 0, but got {weight_decay!r}")
    if max_grad_norm is not None and (not math.isfinite(max_grad_norm) or max_grad_norm <= 0):
        raise ValueError(f"recover: max_grad_norm: expected a finite value > 0 or None, but got {max_grad_norm!r}")
    if warmup_steps is not None and (not isinstance(warmup_steps, int) or warmup_steps < 0):
        raise ValueError(f"recover: warmup_steps: expected an integer >= 0 or None, but got {warmup_steps!r}")
    if not isinstance(accumulation, int) or accumulation < 1:
        raise ValueError(f"recover: accumulation: expected an integer >= 1, but got {accumulation!r}")


def _loss_name(loss_fn, teacher, hidden_distillation: float, batches: list, distill: bool) -> str:
    """What the report says the loss is."""
    if loss_fn is not None:
        return "loss_fn"
    if teacher is not None:
        hidden = f" + {hidden_distillation:g} x hidden states" if hidden_distillation > 0 else ""
        return "KL from the teacher" + hidden
    if distill:
        return f"KL from the teacher's top-{batches[0][TEACHER_TARGET_KEYS[1]].shape[-1]} targets in the batches"
    return "next-token cross-entropy"


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _tokens(batch) -> int:
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            return int(mask.sum())
        ids = batch.get("input_ids")
        if isinstance(ids, torch.Tensor):
            return ids.numel()
    return 0


def recover(model: nn.Module, data, *, steps: int = 200, lr: float = 1e-4, train: str = "all",
            tokenizer=None, seqlen: int = 128, batch_size: int = 4, accumulation: int = 1,
            lora_rank: int = 16, lora_alpha: float = 32.0, weight_decay: float = 0.0,
            max_grad_norm: float | None = 1.0, warmup_steps: int | None = None, train_embeddings: bool = False,
            loss_fn: Callable | None = None, teacher: nn.Module | None = None, hidden_distillation: float = 0.0,
            autocast=None, eval_batches=None, time_batch=None,
            seed: int = 0, progress: bool = True, checkpoint: str | os.PathLike | None = None,
            distributed: bool | None = None, process_group=None) -> RecoveryReport:
    """Trains ``model`` briefly, in place, keeping every weight that is exactly zero now at zero.

    - ``data``: a list of batches (dicts of tensors for ``model(**batch)``; causal LMs need
      ``input_ids``), or, with ``tokenizer``, a text file path or a list of paragraphs (cut into
      windows of ``seqlen`` tokens, ``batch_size`` per batch: :func:`text_batches`); without text of
      the right domain, the dense model's own samples (:func:`teacher_samples`) with ``teacher``.
    - ``steps`` optimiser steps of AdamW (``lr`` peak; linear warm-up over ``warmup_steps``,
      default a tenth of the steps, then cosine decay), ``accumulation`` batches per step, the
      batches taken in order, cycling. Gradients clipped to ``max_grad_norm``.
    - ``train``: "all" | "norms" | "lora" (see the module docstring); embeddings and the LM head
      train only with ``train_embeddings`` (mode "all").
    - ``teacher``: the model before pruning (same vocabulary), to distil from: the loss becomes
      :func:`distillation_kl` per target token (a causal LM; not with ``loss_fn``). Batches that
      hold the teacher's top-k targets (:func:`teacher_samples` with ``target_top_k``) distil from
      those instead, with no ``teacher`` passed.
      ``hidden_distillation`` > 0 adds the blocks' hidden-state errors to the teacher's, with that
      weight (SquareHead; needs models that return ``hidden_states`` and the same blocks).
    - ``autocast``: None, or "bfloat16": the forwards (the model's and the teacher's) run under
      ``torch.autocast`` in bfloat16, about half the time where the CPU has bf16 arithmetic
      (AVX512-BF16, AMX); the weights and AdamW's moments stay in their dtype and the loss's
      softmax in float32. (float16 would need loss scaling, which recover does not do.)
    - ``eval_batches``: held-out batches; their perplexity before and after goes in the report.
      ``time_batch``: a batch whose dense forward time before and after goes in the report
      (default: the first training batch).
    - ``checkpoint``: a directory written at the end (rank 0, atomically): ``save_pretrained``
      for a Hugging Face model whose structure transformers describes, else ``prunekit.save``.
    - ``distributed``: None trains data-parallel over the process group when one with more than
      one rank is initialised (True insists, False never).

    Returns a :class:`RecoveryReport`. Bad input raises ValueError before anything changes; a
    non-finite loss or weight raises :class:`RecoveryError` with the weights restored.
    """
    _check_arguments(train, steps, lr, lora_rank, float(lora_alpha), float(weight_decay),
                     None if max_grad_norm is None else float(max_grad_norm), warmup_steps, accumulation)
    autocast = autocast_dtype(autocast, "recover: autocast", allowed=("bfloat16",))
    if not isinstance(model, nn.Module):
        raise ValueError(f"recover: model: expected a torch.nn.Module, but got {type(model).__name__}")
    from .nn import SparseWeightModule

    if train != "norms" and any(isinstance(m, SparseWeightModule) for m in model.modules()):
        raise ValueError(f"recover: model: train={train!r} needs dense (masked) weights, but the model holds "
                         "compressed sparse modules (SparseLinear/SparseConv2d); recover before sparsify_, or "
                         "use train='norms'")
    if tokenizer is not None and (isinstance(data, (str, os.PathLike)) or
                                  (isinstance(data, (list, tuple)) and data and isinstance(data[0], str))):
        batches = text_batches(tokenizer, data, seqlen, batch_size, seed)
    else:
        batches = _check_batches(data)
    if teacher is not None:
        if not isinstance(teacher, nn.Module):
            raise ValueError(f"recover: teacher: expected a torch.nn.Module (the model before pruning), but got "
                             f"{type(teacher).__name__}")
        if teacher is model:
            raise ValueError("recover: teacher: expected another model (the dense one), but got the model being "
                             "trained")
        if loss_fn is not None:
            raise ValueError("recover: teacher and loss_fn: pass one of them (a teacher sets the loss: the KL from "
                             "its next-token distribution)")
    cached_targets = [isinstance(b, Mapping) and any(key in b for key in TEACHER_TARGET_KEYS) for b in batches]
    if any(cached_targets):
        for index, batch in enumerate(batches):
            held = [key for key in TEACHER_TARGET_KEYS if key in batch]
            if held and len(held) < len(TEACHER_TARGET_KEYS):
                missing = [key for key in TEACHER_TARGET_KEYS if key not in held]
                raise ValueError(f"recover: data: batch {index} holds {' and '.join(held)} but not "
                                 f"{' and '.join(missing)}; expected both (teacher_samples(..., target_top_k=k))")
        if not all(cached_targets):
            raise ValueError(f"recover: data: batch {cached_targets.index(False)} holds no teacher targets but "
                             f"batch {cached_targets.index(True)} does; expected all batches or none to hold them")
        if teacher is not None or loss_fn is not None:
            raise ValueError(f"recover: data: the batches hold the teacher's top-k targets ({TEACHER_TARGET_KEYS[0]}), "
                             f"which set the loss; expected no {'teacher' if teacher is not None else 'loss_fn'} "
                             "as well")
    distill = teacher is not None or any(cached_targets)
    if (isinstance(hidden_distillation, bool) or not isinstance(hidden_distillation, (int, float))
            or not math.isfinite(hidden_distillation) or hidden_distillation < 0):
        raise ValueError("recover: hidden_distillation: expected a finite weight >= 0, but got "
                         f"{hidden_distillation!r}")
    if hidden_distillation > 0 and teacher is None:
        raise ValueError(f"recover: hidden_distillation={hidden_distillation!r} needs a teacher (the dense model whose "
                         "hidden states the blocks learn)")
    if loss_fn is None and not all(isinstance(b, Mapping) and "input_ids" in b for b in batches):
        raise ValueError("recover: data: without loss_fn every batch must be a dict holding input_ids (a causal "
                         "LM's next-token loss); pass loss_fn(model, batch) for other models")
    strategy = dist_.strategy_for(distributed, process_group)
    shard = strategy.shard(batches) if strategy.world > 1 else batches
    strategy.agree({"steps": steps, "lr": lr, "train": train, "batches": len(batches), "accumulation": accumulation,
                    "autocast": str(autocast),
                    "parameters": [(n, tuple(p.shape)) for n, p in model.named_parameters()]}, "recover")

    started = time.perf_counter()
    report = RecoveryReport(train=train, steps=steps, lr=float(lr), batches=len(batches),
                            tokens_per_step=accumulation * strategy.world * sum(map(_tokens, shard)) / len(shard),
                            trainable_parameters=0, masked_weights=0, parameters=count_parameters(model),
                            world_size=strategy.world, autocast=None if autocast is None else dtype_name(autocast),
                            loss=_loss_name(loss_fn, teacher, hidden_distillation, batches, distill))
    timing_batch = time_batch if time_batch is not None else batches[0]
    with strategy.guard("measuring the model before recovery"):
        report.forward_seconds_before = forward_seconds(model, timing_batch)
        if eval_batches is not None:
            report.perplexity_before = perplexity(model, eval_batches)

    all_params = dict(model.named_parameters())
    trainable = _select_trainable(model, train, train_embeddings)
    masks = zero_masks(model, {n: p for n, p in all_params.items()})  # every zero, trained or not
    report.masked_weights = int(sum(int((~m).sum()) for m in masks.values()))
    snapshot = {name: param.detach().clone() for name, param in (trainable if train != "lora" else {}).items()}
    requires_grad = {name: param.requires_grad for name, param in all_params.items()}
    was_training = model.training
    adapters: dict[str, MaskedLoRALinear] = {}
    generator = torch.Generator().manual_seed(seed)
    try:
        for param in all_params.values():
            param.requires_grad_(False)
        if train == "lora":
            for name in _lora_targets(model):
                linear = model.get_submodule(name)
                adapters[name] = MaskedLoRALinear(linear, lora_rank, float(lora_alpha), masks.get(f"{name}.weight"),
                                                  generator)
                _set_submodule(model, name, adapters[name])
            trainable = {f"{name}.{p}": getattr(a, p) for name, a in adapters.items() for p in ("lora_a", "lora_b")}
            report.lora = {"rank": lora_rank, "alpha": float(lora_alpha), "layers": len(adapters),
                           "constrained_to_mask": True}
        if not trainable:
            raise ValueError(f"recover: train={train!r} finds no parameters to train in {type(model).__name__}")
        for param in trainable.values():
            param.requires_grad_(True)
        report.trainable_parameters = sum(p.numel() for p in trainable.values())
        _train_loop(model, shard, trainable, masks, report, strategy, steps=steps, lr=float(lr),
                    accumulation=accumulation, weight_decay=float(weight_decay), max_grad_norm=max_grad_norm,
                    warmup=warmup_steps if warmup_steps is not None else steps // 10, loss_fn=loss_fn,
                    distill=distill, teacher=teacher, hidden_distillation=float(hidden_distillation), autocast=autocast,
                    progress=progress)
        bad = [f"{name} (adapter)" for name, adapter in adapters.items()
               if not bool(torch.isfinite(adapter.delta()).all())]
        bad += [name for name, param in trainable.items() if not bool(torch.isfinite(param).all())]
        if bad:
            raise RecoveryError(f"recover: lr={lr:g}: training made weights non-finite ({', '.join(bad[:3])}); "
                                "the weights are restored; try a smaller lr")
        with torch.no_grad():  # the steps' 0/1 multiplies leave -0.0 at pruned negatives: store +0.0
            for name in trainable.keys() & masks.keys():
                trainable[name].masked_fill_(~masks[name], 0)
        for name, adapter in adapters.items():
            _set_submodule(model, name, adapter.merge_())
        adapters = {}
    except BaseException:
        for name, adapter in adapters.items():
            _set_submodule(model, name, adapter.linear)
        with torch.no_grad():
            for name, value in snapshot.items():
                all_params[name].copy_(value)
        raise
    finally:
        for name, param in all_params.items():
            param.requires_grad_(requires_grad[name])
        model.train(was_training)
    del snapshot
    report.pruned_weights_still_zero = all(
        bool((all_params[name].detach()[~mask] == 0).all()) for name, mask in masks.items())
    with strategy.guard("measuring the model after recovery"):
        report.forward_seconds_after = forward_seconds(model, timing_batch)
        if eval_batches is not None:
            report.perplexity_after = perplexity(model, eval_batches)
    if checkpoint is not None:
        save_trained(model, checkpoint, strategy, tokenizer=tokenizer)
        report.checkpoint = os.fspath(checkpoint)
    report.seconds = time.perf_counter() - started
    logger.info("%s", report.summary())
    return report


def _train_loop(model, batches, trainable, masks, report, strategy, *, steps, lr, accumulation, weight_decay,
                max_grad_norm, warmup, loss_fn, progress, distill=False, teacher=None, hidden_distillation=0.0,
                autocast=None):
    from tqdm.auto import tqdm

    params = list(trainable.values())
    # Gradients at pruned positions are zeroed before clipping (they count in no norm and AdamW's
    # moments there stay zero), and the weights re-masked after each step. On CPU the masks are 0/1
    # in the weights' dtype: a multiply is tens of times faster there than masked_fill_ with a bool
    # mask; elsewhere the bool mask multiplies (a quarter of the memory).
    masked = [(param, masks[name].to(param.dtype) if param.device.type == "cpu" else masks[name])
              for name, param in trainable.items() if name in masks]
    # The fused kernel: one pass per tensor instead of a dozen (a tenth of a step on a 135M model).
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params) or None
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95), fused=fused)
    device_type = params[0].device.type
    model.train()
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.eval()
    losses = []
    position = 0
    bar = tqdm(total=steps, desc="prunekit recover", disable=None if progress and strategy.is_main else True,
               leave=False)
    try:
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * _lr_factor(step, steps, warmup)
            optimizer.zero_grad(set_to_none=True)
            totals = torch.zeros(2, dtype=torch.float64)  # loss sum, token count (or batch count)
            with strategy.guard(f"recovery step {step}"):
                for _ in range(accumulation):
                    batch = batches[position % len(batches)]
                    position += 1
                    with autocast_or_nothing(device_type, autocast):
                        if loss_fn is None:
                            nll, count = (distillation_kl(model, teacher, batch, hidden_distillation) if distill
                                          else causal_lm_nll(model, batch))
                            if count == 0:
                                raise ValueError(f"recover: data: batch {(position - 1) % len(batches)} holds no "
                                                 "target tokens")
                            loss = nll / count
                            totals += torch.tensor([float(nll.detach()), count], dtype=torch.float64)
                        else:
                            loss = loss_fn(model, batch)
                            totals += torch.tensor([float(loss.detach()), 1.0], dtype=torch.float64)
                    if torch.isfinite(loss):
                        (loss / accumulation).backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            if strategy.world > 1:
                flat = torch.cat([g.reshape(-1).float() for g in grads] + [totals.float()])
                strategy.all_reduce_sum_(flat, what=f"the gradients of recovery step {step}")
                offset = 0
                for param, grad in zip(params, grads):
                    param.grad = flat[offset: offset + grad.numel()].view_as(grad).to(grad.dtype) / strategy.world
                    offset += grad.numel()
                totals = flat[offset:].double()
            mean_loss = float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")
            if not math.isfinite(mean_loss):
                raise RecoveryError(f"recover: lr={lr:g}: the training loss became {mean_loss} at step {step}; the "
                                    "weights are restored; try a smaller lr (or check the data)")
            with torch.no_grad():
                for param, mask in masked:
                    if param.grad is not None:
                        param.grad.mul_(mask)
            if max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                if not math.isfinite(float(norm)):
                    raise RecoveryError(f"recover: lr={lr:g}: the gradients became non-finite at step {step}; the "
                                        "weights are restored; try a smaller lr")
            optimizer.step()
            with torch.no_grad():
                for param, mask in masked:
                    param.mul_(mask)
            losses.append(mean_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.3f}")
    finally:
        bar.close()
        if teacher is not None:
            teacher.train(teacher_was_training)
    tenth = max(1, len(losses) // 10)
    report.loss_first = sum(losses[:tenth]) / tenth
    report.loss_last = sum(losses[-tenth:]) / tenth
    every = max(1, len(losses) // 100)
    report.losses = [[i, losses[i]] for i in range(0, len(losses), every)]


def save_trained(model: nn.Module, path: str | os.PathLike, strategy=None, tokenizer=None) -> str:
    """Writes ``model`` to the directory ``path`` once (rank 0), atomically: ``save_pretrained``
    for a Hugging Face model whose config describes it, else a prunekit checkpoint
    (``prunekit.save``: compressed sparse modules, removed sublayers). Returns the format used."""
    from .io import save
    from .nn import SparseWeightModule

    hf = hasattr(model, "save_pretrained") and hasattr(model, "config")
    describable = hf and not any(isinstance(m, SparseWeightModule) for m in model.modules()) and \
        not getattr(model.config, "prunekit_removed_sublayers", None)

    def write(target: str) -> None:
        if describable:
            model.save_pretrained(target)
        else:
            save(model, target)
        if tokenizer is not None:
            tokenizer.save_pretrained(target)

    dist_.save_checkpoint(path, write, strategy)
    return "hf" if describable else "prunekit"

