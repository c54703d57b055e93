"""Tiny randomly initialised Hugging Face models for structured pruning tests (no downloads).

The Llama family uses grouped-query attention with 8 query heads on 4 key/value heads
(head_dim 8), so pruning 25% of the key/value heads removes whole query groups; OPT, GPT-2 and
BERT use 4 heads of 16. Two blocks each."""

import torch
import transformers

VOCAB = 96
HIDDEN = 64
ARCHITECTURES = ["llama", "mistral", "qwen2", "opt", "gpt2", "bert"]
LLAMA_FAMILY = ["llama", "mistral", "qwen2"]


def config_and_class(arch: str):
    decoder = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64,
                   tie_word_embeddings=False)
    table = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, decoder),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, decoder),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, decoder),
        "opt": (transformers.OPTConfig, transformers.OPTForCausalLM,
                dict(vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=64, word_embed_proj_dim=HIDDEN, tie_word_embeddings=False)),
        "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel,
                 dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                      eos_token_id=0, tie_word_embeddings=False)),
        "bert": (transformers.BertConfig, transformers.BertModel,
                 dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=64)),
    }
    config_cls, model_cls, kwargs = table[arch]
    config = config_cls(**kwargs)
    config._attn_implementation = "eager"
    return config, model_cls


def hf_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A tiny ``arch`` model in eval mode with non-zero biases (random init zeroes them)."""
    config, model_cls = config_and_class(arch)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def hf_calibration(batches: int = 3, batch_size: int = 2, seq: int = 12, seed: int = 1) -> list:
    generator = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(batches):
        ids = torch.randint(0, VOCAB, (batch_size, seq), generator=generator)
        items.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return items


def hf_output(model, batch) -> torch.Tensor:
    with torch.no_grad():
        output = model(**batch)
    return output.logits if hasattr(output, "logits") and output.logits is not None else output.last_hidden_state


def masked_reference(dense: torch.nn.Module, report) -> torch.nn.Module:
    """``dense`` with the input columns of every removed unit zeroed in each group's consumers
    (down_proj, fc2, c_proj, o_proj, ...): removing a unit (an MLP channel, a key/value head with its
    query heads) takes away exactly this contribution, so a model pruned without bias compensation
    computes the same as the returned one. Modifies and returns ``dense``."""
    with torch.no_grad():
        for group in report.groups:
            removed = [u for u in range(group["units_before"]) if u not in group["kept_units"]]
            for member in group["members"]:
                name, role = member.rsplit(":", 1)
                if role != "in":
                    continue
                module = dense.get_submodule(name)
                conv1d = type(module).__name__ == "Conv1D"  # GPT-2: weight (in, out)
                width = module.weight.shape[0 if conv1d else 1] // group["units_before"]
                for unit in removed:
                    columns = slice(unit * width, (unit + 1) * width)
                    if conv1d:
                        module.weight[columns] = 0
                    else:
                        module.weight[:, columns] = 0
    return dense
