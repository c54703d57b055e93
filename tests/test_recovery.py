"""Recovery training (prunekit.recover): the sparsity pattern kept exactly for every training mode,
LoRA adapters constrained to the mask and merged exactly, data-parallel training equal to one
process, failures that restore the weights, and the ``prunekit recover`` command."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import prunekit
from prunekit.app.cli import main as cli_main
from prunekit.recovery import (MaskedLoRALinear, RecoveryError, _sample_next_tokens, distillation_kl, read_text_file,
                               recover, teacher_samples, text_batches, zero_masks)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tiny_models  # noqa: E402

WORDS = ("the cat sat on a mat and then it ran to see what was in big red box near old tree while dog "
         "slept under warm sun by river where fish swim fast but bird sings loud every day so we all go home "
         "now after long walk through green field with tall grass").split()
TEXT = " ".join(WORDS[(i * 7 + i // 3) % len(WORDS)] for i in range(3000))


def word_tokenizer():
    """A word-level tokenizer over WORDS (ids below the tiny models' vocabulary), no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {word: i for i, word in enumerate(["[UNK]", "[BOS]"] + sorted(set(WORDS)))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", bos_token="[BOS]",
                                                pad_token="[UNK]")


def pruned_llama(sparsity=0.5, seed=0):
    model = tiny_models.tiny_model("llama", seed=seed)
    prunekit.prune(model, prunekit.PruneConfig(method="wanda", sparsity=sparsity),
                   tiny_models.calibration("llama"))
    return model


def batches(count=4, seed=5):
    return tiny_models.calibration("llama", batches=count, batch_size=2, seq=16, seed=seed)


def padded_batch():
    """One batch whose first sequence ends in 5 padding tokens (neither scored nor compared)."""
    batch = batches(1)[0]
    batch["attention_mask"] = batch["attention_mask"].clone()
    batch["attention_mask"][0, -5:] = 0
    return batch


def snapshot(model):
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize("sparsity", [0.5, "2:4"])
def test_all_weights_train_and_pruned_weights_stay_exactly_zero(sparsity):
    model = pruned_llama(sparsity)
    masks = zero_masks(model)
    assert masks, "the pruned model has zeros to keep"
    before = snapshot(model)
    report = recover(model, batches(), steps=12, lr=3e-3, train="all", eval_batches=batches(),
                     progress=False)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.equal(params[name].detach() == 0, ~mask | (params[name].detach() == 0))
        assert bool((params[name].detach()[~mask] == 0).all()), name
    changed = [n for n in masks if not torch.equal(params[n].detach(), before[n])]
    assert changed, "the remaining weights train"
    assert report.pruned_weights_still_zero and report.masked_weights == sum(int((~m).sum()) for m in masks.values())
    assert report.loss_last < report.loss_first
    assert report.perplexity_after < report.perplexity_before
    embedding = model.get_input_embeddings().weight
    assert torch.equal(embedding.detach(), before["model.embed_tokens.weight"]), "embeddings are left alone"
    assert not model.training and all(p.requires_grad for p in model.parameters())
    json.dumps(report.to_dict())


def test_distillation_kl_against_its_definition():
    teacher, model = tiny_models.tiny_model("llama"), pruned_llama()
    batch = padded_batch()
    kl, count = distillation_kl(model, teacher, batch)
    with torch.no_grad():
        p = torch.log_softmax(teacher(**batch).logits[:, :-1].double(), -1)
        q = torch.log_softmax(model(**batch).logits[:, :-1].double(), -1)
    keep = batch["attention_mask"][:, 1:].bool()
    expected = ((p.exp() * (p - q)).sum(-1) * keep).sum()
    assert count == int(keep.sum()) and float(kl.detach()) == pytest.approx(float(expected), rel=1e-3, abs=1e-6)
    same, _ = distillation_kl(teacher, tiny_models.tiny_model("llama"), batch)
    assert abs(float(same.detach())) < 1e-5
    kl.backward()  # differentiable in the model
    assert model.model.layers[0].mlp.down_proj.weight.grad is not None


def test_distillation_kl_where_both_models_rule_a_token_out():
    teacher, model = tiny_models.tiny_model("llama"), pruned_llama()
    with torch.no_grad():
        for m in (teacher, model):  # a vocabulary-padding mask the pruned model keeps
            m.lm_head.bias = torch.nn.Parameter(torch.zeros(tiny_models.VOCAB))
            m.lm_head.bias[[7, 9]] = float("-inf")
    kl, count = distillation_kl(model, teacher, batches(1)[0])
    assert torch.isfinite(kl) and float(kl.detach()) > 0 and count > 0
    kl.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_distillation_kl_where_the_teacher_rules_a_token_out():
    teacher, model = tiny_models.tiny_model("llama"), pruned_llama()
    with torch.no_grad():
        teacher.lm_head.bias = torch.nn.Parameter(torch.zeros(tiny_models.VOCAB))
        teacher.lm_head.bias[7] = float("-inf")  # probability 0 for token 7 everywhere
    kl, count = distillation_kl(model, teacher, batches(1)[0])
    assert torch.isfinite(kl) and float(kl.detach()) > 0 and count > 0
    kl.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_distilling_from_the_dense_model_moves_towards_it_and_keeps_the_zeros():
    teacher, model = tiny_models.tiny_model("llama"), pruned_llama(0.8)
    masks = zero_masks(model)
    distance = lambda: sum(float(distillation_kl(model, teacher, b)[0].detach()) for b in batches(2, seed=9))
    before = distance()
    report = recover(model, batches(), steps=12, lr=1e-3, teacher=teacher, progress=False)
    assert distance() < before and report.loss == "KL from the teacher" and report.loss_last < report.loss_first
    params = dict(model.named_parameters())
    assert report.pruned_weights_still_zero and all(bool((params[n].detach()[~m] == 0).all()) for n, m in masks.items())
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())


def test_hidden_distillation_adds_the_normalised_hidden_state_errors():
    teacher, model = tiny_models.tiny_model("llama"), pruned_llama()
    batch = padded_batch()
    kl, count = distillation_kl(model, teacher, batch)
    both, same_count = distillation_kl(model, teacher, batch, hidden_weight=0.5)
    keep = batch["attention_mask"].bool()
    with torch.no_grad():
        ours = model(**batch, output_hidden_states=True).hidden_states
        theirs = teacher(**batch, output_hidden_states=True).hidden_states
    expected = sum(float(((s.double() - t.double())[keep]).pow(2).sum() / t.double()[keep].pow(2).sum(-1).mean())
                   for s, t in zip(ours[1:], theirs[1:]))
    assert same_count == count and expected > 0
    assert float(both.detach()) == pytest.approx(float(kl.detach()) + 0.5 * expected, rel=1e-4)
    both.backward()  # reaches the first block directly
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    masks = zero_masks(model)
    report = recover(model, batches(), steps=6, lr=1e-3, teacher=teacher, hidden_distillation=1.0, progress=False)
    params = dict(model.named_parameters())
    assert report.loss == "KL from the teacher + 1 x hidden states" and report.loss_last < report.loss_first
    assert report.pruned_weights_still_zero and all(bool((params[n].detach()[~m] == 0).all()) for n, m in masks.items())


def test_hidden_distillation_bad_input():
    model, teacher = pruned_llama(), tiny_models.tiny_model("llama")
    before = snapshot(model)
    for weight in (-1.0, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="hidden_distillation: expected a finite weight >= 0"):
            recover(model, batches(), steps=1, teacher=teacher, hidden_distillation=weight, progress=False)
    with pytest.raises(ValueError, match="hidden_distillation=1.0 needs a teacher"):
        recover(model, batches(), steps=1, hidden_distillation=1.0, progress=False)
    shallower = tiny_models.tiny_model("llama", num_hidden_layers=1)
    with pytest.raises(ValueError, match="returns 3 hidden states and the teacher 2"):
        recover(model, batches(), steps=1, teacher=shallower, hidden_distillation=1.0, progress=False)
    assert all(torch.equal(value, snapshot(model)[name]) for name, value in before.items())


def test_distillation_bad_input():
    model = pruned_llama()
    with pytest.raises(ValueError, match="teacher: expected a torch.nn.Module"):
        recover(model, batches(), steps=1, teacher="dense", progress=False)
    with pytest.raises(ValueError, match="teacher: expected another model"):
        recover(model, batches(), steps=1, teacher=model, progress=False)
    with pytest.raises(ValueError, match="teacher and loss_fn"):
        recover(model, batches(), steps=1, teacher=tiny_models.tiny_model("llama"), loss_fn=lambda m, b: 0,
                progress=False)
    before = snapshot(model)
    other_vocabulary = tiny_models.tiny_model("llama", vocab_size=tiny_models.VOCAB + 3)
    with pytest.raises(ValueError, match="teacher: its logits are"):
        recover(model, batches(), steps=1, teacher=other_vocabulary, progress=False)
    assert all(torch.equal(value, snapshot(model)[name]) for name, value in before.items())


def test_training_leaves_no_negative_zeros_at_pruned_weights():
    model = pruned_llama()
    masks = zero_masks(model)
    params = dict(model.named_parameters())
    negative = {name: torch.signbit(params[name].detach()[~mask]) for name, mask in masks.items()}
    recover(model, batches(), steps=4, lr=3e-3, progress=False)
    for name, mask in masks.items():  # the steps multiply by 0/1 masks; none of their -0.0 remains
        after = torch.signbit(params[name].detach()[~mask])
        assert not bool((after & ~negative[name]).any()), name


def test_autocast_runs_the_forwards_in_bfloat16_and_keeps_the_weights():
    teacher, model = tiny_models.tiny_model("llama"), pruned_llama(0.8)
    masks = zero_masks(model)
    distance = lambda: sum(float(distillation_kl(model, teacher, b)[0].detach()) for b in batches(2, seed=9))
    before = distance()
    seen = []
    hooks = [m.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
             for m in (model.model.layers[0].mlp.down_proj, teacher.model.layers[0].mlp.down_proj)]
    report = recover(model, batches(), steps=6, lr=1e-3, teacher=teacher, autocast="bfloat16", progress=False)
    for hook in hooks:
        hook.remove()
    assert seen.count(torch.bfloat16) == 2 * 6  # every step's forwards, the model's and the teacher's
    assert torch.float32 in seen  # the measurements before and after stay in the weights' dtype
    assert report.autocast == "bfloat16" and distance() < before
    assert all(p.dtype == torch.float32 for p in model.parameters())
    params = dict(model.named_parameters())
    assert report.pruned_weights_still_zero and all(bool((params[n].detach()[~m] == 0).all())
                                                    for n, m in masks.items())
    json.dumps(report.to_dict())
    for bad in ("int8", "float16"):  # float16 would need loss scaling
        with pytest.raises(ValueError, match=rf"recover: autocast: expected None, 'bfloat16' \(or the torch dtype\), "
                                             rf"but got '{bad}'"):
            recover(pruned_llama(), batches(), steps=1, autocast=bad, progress=False)


def test_teacher_samples_start_at_bos_are_seeded_and_leave_the_global_rng_alone():
    teacher = tiny_models.tiny_model("llama", bos_token_id=1, eos_token_id=2).train()
    state = torch.random.get_rng_state()
    first = teacher_samples(teacher, sequences=7, seqlen=9, batch_size=3, generation_batch=4, seed=3, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [tuple(b["input_ids"].shape) for b in first] == [(3, 9), (3, 9), (1, 9)]
    ids = torch.cat([b["input_ids"] for b in first])
    assert bool((ids[:, 0] == 1).all()) and bool((ids[:, 1:] != 2).all()), "BOS first, EOS held back"
    assert all(torch.equal(b["attention_mask"], torch.ones_like(b["input_ids"])) for b in first)
    again = teacher_samples(teacher, sequences=7, seqlen=9, batch_size=3, generation_batch=4, seed=3, progress=False)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again))
    other = teacher_samples(teacher, sequences=7, seqlen=9, batch_size=3, generation_batch=7, seed=4, progress=False)
    assert not torch.equal(ids, torch.cat([b["input_ids"] for b in other]))
    assert teacher.training, "the teacher's mode is restored"


def test_sample_next_tokens_keeps_the_nucleus_of_the_top_k():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    scores = probs.log().expand(20000, 4)
    generator = torch.Generator().manual_seed(0)
    drawn = _sample_next_tokens(scores, top_k=0, top_p=0.7, temperature=1.0, generator=generator).view(-1)
    counts = torch.bincount(drawn, minlength=4).double() / len(drawn)
    assert counts[0] == 0 and counts[2] == 0  # outside the smallest prefix reaching 0.7 (0.5 + 0.3)
    assert counts[1] == pytest.approx(0.5 / 0.8, abs=0.015) and counts[3] == pytest.approx(0.3 / 0.8, abs=0.015)
    drawn = _sample_next_tokens(scores, top_k=3, top_p=1.0, temperature=1.0, generator=generator).view(-1)
    assert bool((drawn != 0).all())  # the lowest is not in the top 3
    assert torch.equal(_sample_next_tokens(scores[:5], top_k=1, top_p=1.0, temperature=1.0), torch.ones(5, 1).long())
    hot = _sample_next_tokens(scores, top_k=0, top_p=1.0, temperature=0.25, generator=generator).view(-1)
    assert float((hot == 1).double().mean()) > 0.8  # a low temperature sharpens towards the most likely
    with pytest.raises(ValueError, match=r"teacher_samples: teacher: its next-token scores hold NaN or no finite"):
        _sample_next_tokens(torch.full((2, 4), float("nan")), 0, 0.9, 1.0)


def test_teacher_samples_set_the_teachers_generation_settings_aside():
    """A chat model's generation config (sampling on, a repetition penalty, dict outputs) changes
    neither the samples nor the global random state, and stays as it was."""
    teacher = tiny_models.tiny_model("llama", bos_token_id=1, eos_token_id=2)
    plain = teacher_samples(teacher, sequences=4, seqlen=12, top_k=1, progress=False)
    teacher.generation_config.update(do_sample=True, repetition_penalty=3.0, return_dict_in_generate=True, top_k=3)
    state = torch.random.get_rng_state()
    chat = teacher_samples(teacher, sequences=4, seqlen=12, top_k=1, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert teacher.generation_config.repetition_penalty == 3.0 and teacher.generation_config.do_sample
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(plain, chat))


def test_teacher_samples_hold_back_every_end_of_sequence_id():
    teacher = tiny_models.tiny_model("llama", bos_token_id=1, eos_token_id=2)
    sample = lambda: torch.cat([b["input_ids"] for b in teacher_samples(teacher, sequences=16, seqlen=16, top_k=0,
                                                                        progress=False)])[:, 1:]
    assert bool((sample() == 5).any()), "token 5 is drawn while only 2 ends a sequence"
    teacher.generation_config.eos_token_id = [2, 5]  # a chat model's list
    ids = sample()
    assert not bool(((ids == 2) | (ids == 5)).any())


def test_teacher_samples_with_top_k_1_are_the_greedy_continuation():
    teacher = tiny_models.tiny_model("llama", bos_token_id=1, eos_token_id=2)
    ids = torch.cat([b["input_ids"] for b in teacher_samples(teacher, sequences=3, seqlen=10, top_k=1,
                                                              progress=False)])
    prompt = torch.ones(3, 1, dtype=torch.long)
    with torch.no_grad():
        greedy = teacher.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                  max_new_tokens=9, min_new_tokens=9, pad_token_id=2)
    assert torch.equal(ids, greedy)


def test_distilling_on_teacher_samples_moves_towards_the_teacher():
    teacher, model = tiny_models.tiny_model("llama", bos_token_id=1, eos_token_id=2), pruned_llama(0.8)
    samples = teacher_samples(teacher, sequences=8, seqlen=16, batch_size=2, autocast="bfloat16", progress=False)
    distance = lambda: sum(float(distillation_kl(model, teacher, b)[0].detach()) for b in batches(2, seed=9))
    before = distance()
    report = recover(model, samples, steps=12, lr=1e-3, teacher=teacher, progress=False)
    assert distance() < before and report.pruned_weights_still_zero


def _top_k_targets(teacher, batch, k):
    with torch.no_grad():
        logprobs, ids = torch.log_softmax(teacher(**batch).logits[:, :-1].float(), -1).topk(k, dim=-1)
    return {**batch, "teacher_logprobs": logprobs, "teacher_token_ids": ids}


def test_top_k_distillation_is_the_full_kl_when_k_is_the_vocabulary():
    teacher, model = tiny_models.tiny_model("llama"), pruned_llama(0.8)
    batch = padded_batch()
    full, count = distillation_kl(model, teacher, batch)
    cached, cached_count = distillation_kl(model, None, _top_k_targets(teacher, batch, tiny_models.VOCAB))
    assert cached_count == count
    assert float(cached.detach()) == pytest.approx(float(full.detach()), rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("k", [1, 3, 17])
def test_top_k_distillation_is_the_kl_of_the_coarsened_distributions(k):
    """The teacher's k tokens and one outcome for all others: at most the full KL; its gradient
    is finite and reaches the model."""
    teacher, model = tiny_models.tiny_model("llama"), pruned_llama(0.8)
    batch = padded_batch()
    targeted = _top_k_targets(teacher, batch, k)
    kl, count = distillation_kl(model, None, targeted)
    with torch.no_grad():
        p = torch.softmax(teacher(**batch).logits[:, :-1].double(), -1)
        q = torch.softmax(model(**batch).logits[:, :-1].double(), -1)
    ids = targeted["teacher_token_ids"]
    p_top, q_top = p.gather(-1, ids), q.gather(-1, ids)
    p_coarse = torch.cat([p_top, 1 - p_top.sum(-1, keepdim=True)], -1)
    q_coarse = torch.cat([q_top, 1 - q_top.sum(-1, keepdim=True)], -1)
    keep = batch["attention_mask"][:, 1:].bool()
    expected = ((p_coarse * (p_coarse.log() - q_coarse.log())).sum(-1) * keep).sum()
    full = ((p * (p.log() - q.log())).sum(-1) * keep).sum()
    assert count == int(keep.sum())
    assert float(kl.detach()) == pytest.approx(float(expected), rel=5e-3)  # float32 sums of small terms
    assert float(kl.detach()) <= float(full) * 1.005
    kl.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)


def test_top_k_distillation_of_a_confident_model_takes_the_rest_from_the_other_logits():
    """Where the model leaves under 1e-4 outside the teacher's tokens, 1 - their float32 sum is
    rounding noise: the rest comes from the other logits, and loss and gradient stay finite."""
    from prunekit.recovery import _top_k_kl

    logits = torch.full((3, 50), -30.0)
    logits[:, :2] = torch.tensor([[4.0, 3.0], [0.0, 0.0], [2.0, 1.0]])
    logits[1, 2:] = 0.0  # a row that spreads its mass: the plain path
    logits.requires_grad_(True)
    ids = torch.tensor([[0, 1], [0, 1], [0, 1]])
    teacher = torch.log(torch.tensor([[0.6, 0.3], [0.5, 0.3], [0.7, 0.2]]))
    loss = _top_k_kl(torch.log_softmax(logits, -1), teacher, ids)
    q = torch.softmax(logits.detach().double(), -1)
    p_top, q_top = teacher.double().exp(), q[:, :2]
    p_rest, q_rest = 1 - p_top.sum(-1), q[:, 2:].sum(-1)
    expected = (p_top * (p_top.log() - q_top.log())).sum() + (p_rest * (p_rest.log() - q_rest.log())).sum()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-4)
    loss.backward()
    assert bool(torch.isfinite(logits.grad).all())


def test_sample_next_tokens_never_draws_a_banned_id():
    scores = torch.tensor([[5.0, 0.0, 0.0, -1.0]]).expand(500, 4)
    drawn = _sample_next_tokens(scores, top_k=0, top_p=1.0, temperature=1.0,
                                generator=torch.Generator().manual_seed(0), banned=[0, 7]).view(-1)
    assert bool((drawn != 0).all()) and bool((drawn == 1).any()), "the favourite is held back; 7 is past the scores"


def test_teacher_samples_keep_the_teachers_top_k_next_token_log_probabilities():
    teacher = tiny_models.tiny_model("llama", bos_token_id=1, eos_token_id=2)
    plain = teacher_samples(teacher, sequences=5, seqlen=11, batch_size=2, generation_batch=3, progress=False)
    kept = teacher_samples(teacher, sequences=5, seqlen=11, batch_size=2, generation_batch=3, target_top_k=4,
                           progress=False)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(plain, kept)), "the same samples"
    for batch in kept:
        rows = batch["input_ids"].shape[0]
        assert batch["teacher_logprobs"].shape == batch["teacher_token_ids"].shape == (rows, 10, 4)
        assert batch["teacher_token_ids"].dtype == torch.long and batch["teacher_logprobs"].dtype == torch.float32
        with torch.no_grad():  # the plain distribution of a full forward (no EOS held back)
            logprobs, ids = torch.log_softmax(teacher(input_ids=batch["input_ids"]).logits[:, :-1], -1).topk(4, -1)
        assert torch.equal(batch["teacher_token_ids"], ids)
        torch.testing.assert_close(batch["teacher_logprobs"], logprobs, atol=1e-5, rtol=1e-5)


def test_recovery_on_kept_targets_moves_towards_the_teacher_without_running_it():
    teacher, model = tiny_models.tiny_model("llama", bos_token_id=1, eos_token_id=2), pruned_llama(0.8)
    samples = teacher_samples(teacher, sequences=8, seqlen=16, batch_size=2, target_top_k=8, progress=False)
    distance = lambda: sum(float(distillation_kl(model, teacher, b)[0].detach()) for b in batches(2, seed=9))
    before = distance()
    loss, count = distillation_kl(model, None, samples[0])
    report = recover(model, samples, steps=12, lr=1e-3, progress=False)
    assert report.losses[0] == [0, pytest.approx(float(loss.detach()) / count, rel=1e-5)], "the kept targets' KL"
    assert distance() < before and report.pruned_weights_still_zero
    assert report.loss == "KL from the teacher's top-8 targets in the batches"


def test_kept_targets_bad_input():
    teacher, model = tiny_models.tiny_model("llama", bos_token_id=1, eos_token_id=2), pruned_llama()
    samples = teacher_samples(teacher, sequences=4, seqlen=8, batch_size=2, target_top_k=3, progress=False)
    with pytest.raises(ValueError, match=r"recover: data: the batches hold the teacher's top-k targets .*expected no "
                                         r"teacher as well"):
        recover(model, samples, steps=1, teacher=teacher, progress=False)
    with pytest.raises(ValueError, match=r"recover: data: batch 1 holds no teacher targets but batch 0 does"):
        recover(model, [samples[0], batches(1)[0]], steps=1, progress=False)
    short = {**samples[0], "teacher_token_ids": samples[0]["teacher_token_ids"][:, :-1]}
    with pytest.raises(ValueError, match=r"recover: data: expected teacher_logprobs \(float\) and teacher_token_ids "
                                         r"\(int64\) of shape \(2, 7, 'k >= 1'\)"):
        recover(model, [short], steps=1, progress=False)
    half = {key: value for key, value in samples[0].items() if key != "teacher_token_ids"}
    with pytest.raises(ValueError, match=r"recover: data: batch 0 holds teacher_logprobs but not teacher_token_ids"):
        recover(model, [half], steps=1, progress=False)
    empty = {**samples[0], "teacher_token_ids": samples[0]["teacher_token_ids"][..., :0],
             "teacher_logprobs": samples[0]["teacher_logprobs"][..., :0]}
    with pytest.raises(ValueError, match=r"of shape \(2, 7, 'k >= 1'\)"):
        recover(model, [empty], steps=1, progress=False)
    outside = {**samples[0], "teacher_token_ids": samples[0]["teacher_token_ids"] + tiny_models.VOCAB}
    with pytest.raises(ValueError, match=rf"teacher_token_ids: expected ids in \[0, {tiny_models.VOCAB}\)"):
        recover(model, [outside], steps=1, progress=False)
    with pytest.raises(ValueError, match=rf"target_top_k: expected at most the vocabulary size {tiny_models.VOCAB}"):
        teacher_samples(teacher, target_top_k=tiny_models.VOCAB + 1, progress=False)


@pytest.mark.parametrize("option, value, message", [
    ("sequences", 0, r"sequences: expected an integer >= 1, but got 0"),
    ("seqlen", 1, r"seqlen: expected an integer >= 2, but got 1"),
    ("top_p", 1.5, r"top_p: expected a probability in \(0, 1\], but got 1.5"),
    ("top_k", -1, r"top_k: expected an integer >= 0, but got -1"),
    ("target_top_k", -2, r"target_top_k: expected an integer >= 0, but got -2"),
    ("temperature", 0.0, r"temperature: expected a finite value > 0, but got 0.0"),
    ("autocast", "int4", r"autocast: expected None, 'bfloat16' or 'float16'.*'int4'"),
])
def test_teacher_samples_bad_input(option, value, message):
    teacher = tiny_models.tiny_model("llama", bos_token_id=1, eos_token_id=2)
    with pytest.raises(ValueError, match=rf"teacher_samples: {message}"):
        teacher_samples(teacher, progress=False, **{option: value})


def test_teacher_samples_needs_a_generating_model_with_a_bos_token():
    with pytest.raises(ValueError, match=r"teacher_samples: teacher: expected a causal LM with generate\(\).*Linear"):
        teacher_samples(torch.nn.Linear(2, 2), progress=False)
    teacher = tiny_models.tiny_model("llama", bos_token_id=None)
    with pytest.raises(ValueError, match=r"teacher_samples: teacher: LlamaForCausalLM has no BOS token id"):
        teacher_samples(teacher, progress=False)


def test_norms_mode_trains_only_norms_and_biases():
    model = pruned_llama()
    before = snapshot(model)
    report = recover(model, batches(), steps=5, lr=1e-2, train="norms", progress=False)
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all("norm" in name for name in changed), changed
    assert report.trainable_parameters == sum(p.numel() for n, p in model.named_parameters() if "norm" in n)


def test_masked_lora_merge_is_exactly_the_trained_function():
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 16)
    mask = torch.rand(16, 24) > 0.5
    with torch.no_grad():
        linear.weight.masked_fill_(~mask, 0)
    adapter = MaskedLoRALinear(linear, rank=4, alpha=8.0, mask=mask, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        adapter.lora_b.normal_()
    x = torch.randn(5, 24)
    expected = adapter(x)
    merged = adapter.merge_()
    torch.testing.assert_close(merged(x), expected, rtol=0, atol=0)
    assert bool((merged.weight[~mask] == 0).all())
    dense = MaskedLoRALinear(torch.nn.Linear(24, 16), 4, 8.0, None, torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense.lora_b.normal_()
    expected = dense(x)
    torch.testing.assert_close(dense.merge_()(x), expected, rtol=1e-5, atol=1e-5)


def test_lora_mode_merges_adapters_and_keeps_the_pattern():
    model = pruned_llama()
    masks = zero_masks(model)
    parameters = prunekit._measure.count_parameters(model)
    report = recover(model, batches(), steps=8, lr=5e-3, train="lora", lora_rank=4, progress=False)
    assert not any(isinstance(m, MaskedLoRALinear) for m in model.modules())
    assert prunekit._measure.count_parameters(model) == parameters
    params = dict(model.named_parameters())
    assert all(bool((params[name].detach()[~mask] == 0).all()) for name, mask in masks.items())
    assert report.lora["constrained_to_mask"] and report.loss_last < report.loss_first


def test_a_diverging_learning_rate_stops_with_the_weights_restored(tmp_path):
    for train in ("all", "lora"):
        model = pruned_llama()
        before = snapshot(model)
        with pytest.raises(RecoveryError, match="lr=1e\\+30.*restored"):
            recover(model, batches(), steps=6, lr=1e30, train=train, progress=False, checkpoint=tmp_path / "ckpt")
        after = model.state_dict()
        assert all(torch.equal(before[name], after[name]) for name in before)
        assert not any(isinstance(m, MaskedLoRALinear) for m in model.modules())
        assert not (tmp_path / "ckpt").exists() and not list(tmp_path.iterdir())


def test_a_nan_loss_midway_restores_the_weights():
    model = pruned_llama()
    before = snapshot(model)
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        loss = model(**batch).logits.float().pow(2).mean()
        return loss * float("nan") if len(calls) == 3 else loss

    with pytest.raises(RecoveryError, match="loss became nan at step 2"):
        recover(model, batches(), steps=5, lr=1e-3, loss_fn=loss_fn, progress=False)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_bad_input_is_refused_before_training():
    model = pruned_llama()
    before = snapshot(model)
    tokenizer = word_tokenizer()
    cases = [
        (dict(data=[]), "data: expected at least one batch.*empty"),
        (dict(data=["the cat"], tokenizer=tokenizer, seqlen=64), "too short for one batch: it has 3 tokens"),
        (dict(data=[""], tokenizer=tokenizer), "empty"),
        (dict(data=[{"input_ids": torch.zeros(2, 1, dtype=torch.long)}]), "too short for one training step"),
        (dict(data=batches(), train="bias"), "train: expected one of all, norms, lora"),
        (dict(data=batches(), steps=0), "steps: expected an integer >= 1"),
        (dict(data=batches(), lr=-1.0), "lr: expected a finite learning rate > 0"),
        (dict(data=batches(), lr=float("nan")), "lr"),
        (dict(data=[torch.zeros(3)]), "without loss_fn every batch must be a dict"),
    ]
    for kwargs, message in cases:
        kwargs.setdefault("steps", 2)
        with pytest.raises(ValueError, match=message):
            recover(model, progress=False, **kwargs)
    with pytest.raises(ValueError, match="no such file"):
        recover(model, "/nonexistent/recovery.txt", tokenizer=tokenizer, steps=1)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_text_batches_and_checkpoint(tmp_path):
    tokenizer = word_tokenizer()
    path = tmp_path / "train.txt"
    path.write_text(TEXT)
    windows = text_batches(tokenizer, path, seqlen=32, batch_size=3)
    assert all(b["input_ids"].shape[1] == 32 for b in windows) and windows[0]["input_ids"].shape[0] == 3
    assert sum(b["input_ids"].shape[0] for b in windows) == (len(TEXT.split()) + 1) // 32
    model = pruned_llama()
    report = recover(model, path, tokenizer=tokenizer, seqlen=32, batch_size=3, steps=3, lr=1e-3, progress=False,
                     checkpoint=tmp_path / "out")
    assert report.checkpoint == os.fspath(tmp_path / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "train.txt"]


def test_text_files_read_as_the_cli_reads_them(tmp_path):
    """text_batches reads a path with read_text_file, the reader the CLI's --data goes through
    (app.evaluation imports it): paragraphs at blank lines, else lines; bad files name ``what``."""
    from prunekit.app import evaluation

    assert evaluation.read_text_file is read_text_file
    tokenizer = word_tokenizer()
    path = tmp_path / "lines.txt"
    words = TEXT.split()
    path.write_text("\n".join(" ".join(words[i:i + 10]) for i in range(0, len(words), 10)))
    assert read_text_file(path) == [" ".join(words[i:i + 10]) for i in range(0, len(words), 10)]
    from_path = text_batches(tokenizer, path, seqlen=32, batch_size=3)
    from_paragraphs = text_batches(tokenizer, read_text_file(path), seqlen=32, batch_size=3)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(from_path, from_paragraphs, strict=True))
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="--data: .*empty.txt' is empty"):
        text_batches(tokenizer, tmp_path / "empty.txt", what="--data")
    with pytest.raises(ValueError, match="train: .* is a directory"):
        read_text_file(tmp_path, "train")


def test_recover_after_layer_pruning_and_sparsify_refusal():
    model = tiny_models.tiny_model("llama")
    prunekit.prune_layers(model, indices=["0.mlp"], unit="sublayer")
    report = recover(model, batches(2), steps=6, lr=3e-3, eval_batches=batches(2), progress=False)
    assert report.perplexity_after < report.perplexity_before
    sparse = pruned_llama()
    prunekit.sparsify_(sparse, prunekit.SparsifyConfig(format="unstructured"))
    with pytest.raises(ValueError, match="compressed sparse modules"):
        recover(sparse, batches(), steps=1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_data_parallel_recovery_matches_one_process(tmp_path):
    """Two gloo ranks, one batch each per step, equal one process accumulating both batches; the
    layer scores of prune_layers, sharded and reduced, equal one process's."""
    port = _free_port()
    processes = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
                   CUDA_VISIBLE_DEVICES="", PRUNEKIT_DIST_TIMEOUT="60")
        processes.append(subprocess.Popen([sys.executable, str(HERE / "_recovery_worker.py"), str(tmp_path)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=HERE))
    logs = [p.communicate(timeout=240)[0].decode(errors="replace") for p in processes]
    assert [p.returncode for p in processes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = pruned_llama()
        scores = prunekit.surgery.layers.score_layers(model, batches(), sublayers=True)
        recover(model, batches(), steps=4, lr=1e-3, accumulation=2, progress=False)
    finally:
        torch.set_num_threads(threads)
    expected = {n: p.detach() for n, p in model.named_parameters()}
    for result in results:
        assert result["world_size"] == 2 and result["still_zero"]
        for got, want in zip(result["scores"], scores):  # prune_layers' scores: shards reduced
            assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-4) for k in want)
        for name, value in result["weights"].items():
            torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5)
    assert all(torch.equal(results[0]["weights"][n], results[1]["weights"][n]) for n in expected)
    assert (tmp_path / "checkpoint").is_dir() and (tmp_path / "checkpoint" / "config.json").is_file()


def test_cli_recover_trains_and_writes_a_report(tmp_path, capsys):
    tokenizer = word_tokenizer()
    model_dir = tmp_path / "pruned"
    pruned_llama().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "train.txt"
    data.write_text(TEXT)
    out = tmp_path / "out"
    code = cli_main(["recover", os.fspath(model_dir), "--data", os.fspath(data), "--steps", "3", "--seqlen", "32",
                     "--eval-data", os.fspath(data), "--eval-samples", "4", "--out", os.fspath(out), "--quiet"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())["recover"]
    assert report["steps"] == 3 and report["pruned_weights_still_zero"] and report["perplexity_after"] is not None
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out / "model")
    assert prunekit.recovery.zero_masks(reloaded).keys() == zero_masks(pruned_llama()).keys()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = cli_main(["recover", os.fspath(model_dir), "--data", os.fspath(empty), "--steps", "3", "--out",
                     os.fspath(tmp_path / "never")])
    assert code == 2 and "--data" in capsys.readouterr().err and not (tmp_path / "never").exists()
    code = cli_main(["recover", os.fspath(model_dir), "--data", os.fspath(data), "--steps", "2", "--lr", "1e30",
                     "--no-eval", "--out", os.fspath(tmp_path / "diverged"), "--quiet"])
    assert code == 2 and "restored" in capsys.readouterr().err
    assert not (tmp_path / "diverged" / "model").exists()


def pruned_and_dense_dirs(tmp_path):
    """A 80%-pruned tiny Llama (with the word tokenizer) and its dense model, saved as folders."""
    model_dir, teacher_dir = tmp_path / "pruned", tmp_path / "dense"
    pruned_llama(0.8).save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    tiny_models.tiny_model("llama").save_pretrained(teacher_dir)
    return model_dir, teacher_dir


def test_cli_recover_distils_from_a_teacher(tmp_path):
    model_dir, teacher_dir = pruned_and_dense_dirs(tmp_path)
    data = tmp_path / "train.txt"
    data.write_text(TEXT)
    out = tmp_path / "out"
    code = cli_main(["recover", os.fspath(model_dir), "--data", os.fspath(data), "--steps", "3", "--seqlen", "32",
                     "--teacher", os.fspath(teacher_dir), "--no-eval", "--out", os.fspath(out), "--quiet"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())["recover"]
    assert report["loss"] == "KL from the teacher" and report["pruned_weights_still_zero"]
    hidden = tmp_path / "hidden"
    code = cli_main(["recover", os.fspath(model_dir), "--data", os.fspath(data), "--steps", "2", "--seqlen", "32",
                     "--teacher", os.fspath(teacher_dir), "--hidden-distillation", "0.5", "--no-eval", "--out",
                     os.fspath(hidden), "--quiet"])
    assert code == 0
    report = json.loads((hidden / "report.json").read_text())["recover"]
    assert report["loss"] == "KL from the teacher + 0.5 x hidden states" and report["pruned_weights_still_zero"]
    assert cli_main(["recover", os.fspath(model_dir), "--data", os.fspath(data), "--steps", "2",
                     "--hidden-distillation", "0.5", "--out", os.fspath(tmp_path / "refused"), "--quiet"]) != 0
    assert not (tmp_path / "refused").exists()


def test_cli_recover_on_teacher_samples_under_autocast(tmp_path, capsys):
    model_dir, teacher_dir = pruned_and_dense_dirs(tmp_path)
    out = tmp_path / "out"
    code = cli_main(["recover", os.fspath(model_dir), "--teacher", os.fspath(teacher_dir), "--teacher-samples", "6",
                     "--seqlen", "16", "--batch-size", "2", "--steps", "4", "--autocast", "bfloat16", "--no-eval",
                     "--out", os.fspath(out), "--quiet"])
    assert code == 0
    result = json.loads((out / "report.json").read_text())
    report = result["recover"]
    assert result["data"] == "6 sequences sampled by the teacher" and result["sampling_seconds"] > 0
    assert "sampled in" in (out / "report.md").read_text() and "forwards in bfloat16" in (out / "report.md").read_text()
    assert report["batches"] == 3 and report["autocast"] == "bfloat16" and report["pruned_weights_still_zero"]
    assert report["loss"] == "KL from the teacher's top-64 targets in the batches"
    assert cli_main(["recover", os.fspath(model_dir), "--data", os.fspath(out / "report.md"), "--teacher-top-k", "8",
                     "--steps", "1", "--out", os.fspath(tmp_path / "refused"), "--quiet"]) == 2
    assert "--teacher-top-k: expected with --teacher-samples" in capsys.readouterr().err
    full = tmp_path / "full"
    assert cli_main(["recover", os.fspath(model_dir), "--teacher", os.fspath(teacher_dir), "--teacher-samples", "4",
                     "--teacher-top-k", "0", "--seqlen", "8", "--steps", "1", "--no-eval", "--out", os.fspath(full),
                     "--quiet"]) == 0
    assert json.loads((full / "report.json").read_text())["recover"]["loss"] == "KL from the teacher"
    capsys.readouterr()
    for extra, message in (
            (["--teacher-samples", "4", "--data", os.fspath(out / "report.md")], re.escape(
                "--data, --teacher-samples: expected one of them (the training text, or the number of sequences the "
                "teacher samples), but got both")),
            ([], "--data, --teacher-samples: expected one of them .* but got neither"),
            (["--teacher-samples", "4"], "--teacher-samples: needs --teacher"),
            (["--teacher-samples", "4", "--hidden-distillation", "1"], re.escape(
                "--hidden-distillation: needs the teacher to run at every step, but --teacher-top-k 64"))):
        teacher = ["--teacher", os.fspath(teacher_dir)] if "needs --teacher" not in message else []
        refused = tmp_path / "refused"
        code = cli_main(["recover", os.fspath(model_dir), *teacher, *extra, "--steps", "2", "--out",
                         os.fspath(refused), "--quiet"])
        assert code == 2 and re.search(message, capsys.readouterr().err) and not refused.exists(), message
    with pytest.raises(SystemExit):
        cli_main(["recover", os.fspath(model_dir), "--teacher", os.fspath(teacher_dir), "--teacher-samples", "4",
                  "--teacher-top-k", "-1", "--steps", "2", "--out", os.fspath(tmp_path / "refused")])
    assert "--teacher-top-k: expected an integer >= 0, but got '-1'" in capsys.readouterr().err
