"""Tiny randomly initialised Hugging Face models built from configs (no downloads), with
outlier input features like those of trained LLMs, and calibration batches for them."""

import torch
import transformers

VOCAB = 128
HIDDEN = 64


def _configs():
    common_decoder = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          tie_word_embeddings=False)
    return {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, common_decoder),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, common_decoder),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, common_decoder),
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


ARCHITECTURES = list(_configs())


def _embedding(model) -> torch.nn.Embedding:
    return model.get_input_embeddings()


def tiny_model(arch: str, *, seed: int = 0, outliers: bool = True, **config_fields) -> torch.nn.Module:
    """A tiny ``arch`` model in eval mode. With ``outliers``, a few embedding dimensions are scaled
    up 20x, so that (as in trained LLMs) some input features of every layer are much larger than
    the rest; activation-aware criteria have something to find. ``config_fields`` override the
    config's (e.g. ``tie_word_embeddings=True``)."""
    config_cls, model_cls, kwargs = _configs()[arch]
    torch.manual_seed(seed)
    config = config_cls(**{**kwargs, **config_fields})
    config._attn_implementation = "eager"
    model = model_cls(config).eval()
    if outliers:
        with torch.no_grad():
            _embedding(model).weight[:, :4] *= 20
    return model


def calibration(arch: str, *, batches: int = 4, batch_size: int = 2, seq: int = 16, seed: int = 1) -> list:
    generator = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(batches):
        ids = torch.randint(0, VOCAB, (batch_size, seq), generator=generator)
        items.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return items
