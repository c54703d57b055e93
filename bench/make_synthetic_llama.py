"""Writes a synthetic Llama-architecture model with seeded random weights as a Hugging Face
directory of sharded bf16 safetensors (one shard per block), never holding more than one block.

The model is for memory measurements of streamed pruning (bench/bench_streaming.py): its float32
size is several times the peak memory of a streamed run. Nothing about its quality is meaningful.

    python bench/make_synthetic_llama.py build/synthetic-llama            # 1.1B parameters, 2.1 GiB on disk
    python bench/make_synthetic_llama.py /tmp/small --layers 4 --hidden 512 --intermediate 1408 --vocab 4096
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from prunekit.io import safetensors_file as stf


def llama_config(layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2, "dtype": "bfloat16",
    }


def block_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    kv = hidden // config["num_attention_heads"] * config["num_key_value_heads"]
    return {"self_attn.q_proj.weight": (hidden, hidden), "self_attn.k_proj.weight": (kv, hidden),
            "self_attn.v_proj.weight": (kv, hidden), "self_attn.o_proj.weight": (hidden, hidden),
            "mlp.gate_proj.weight": (inter, hidden), "mlp.up_proj.weight": (inter, hidden),
            "mlp.down_proj.weight": (hidden, inter), "input_layernorm.weight": (hidden,),
            "post_attention_layernorm.weight": (hidden,)}


def _random(shape: tuple[int, ...], generator: torch.Generator, std: float) -> torch.Tensor:
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    return (torch.randn(shape, generator=generator) * std).to(torch.bfloat16)


def write_model(out: Path, config: dict, seed: int = 0) -> Path:
    """Writes the model to ``out`` (must not exist) through a temporary directory renamed at the end."""
    if out.exists():
        raise ValueError(f"make_synthetic_llama: argument 'out' must not exist, but {out} exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        generator = torch.Generator().manual_seed(seed)
        layers, hidden, vocab = config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]
        shards = layers + 1
        weight_map, total = {}, 0

        def write(index: int, tensors: dict[str, torch.Tensor]) -> None:
            nonlocal total
            name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
            stf.write(staging / name, tensors, {"format": "pt"}, overwrite=False)
            for key, tensor in tensors.items():
                weight_map[key] = name
                total += tensor.numel() * tensor.element_size()

        std = 0.02
        for layer in range(layers):
            write(layer, {f"model.layers.{layer}.{key}": _random(shape, generator, std)
                          for key, shape in block_shapes(config).items()})
        write(layers, {"model.embed_tokens.weight": _random((vocab, hidden), generator, 1.0),
                       "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16),
                       "lm_head.weight": _random((vocab, hidden), generator, std)})
        (staging / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def parameter_count(config: dict) -> int:
    per_block = sum(torch.Size(shape).numel() for shape in block_shapes(config).values())
    return config["num_hidden_layers"] * per_block + 2 * config["vocab_size"] * config["hidden_size"] + \
        config["hidden_size"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output directory (must not exist)")
    parser.add_argument("--layers", type=int, default=96)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = llama_config(args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads, args.vocab)
    write_model(args.out, config, args.seed)
    count = parameter_count(config)
    print(f"wrote {args.out}: {count / 1e9:.3f}B parameters, {2 * count / 2**30:.2f} GiB in bf16, "
          f"{4 * count / 2**30:.2f} GiB in float32")


if __name__ == "__main__":
    main()
