"""Checkpoint size after prune + sparsify_("auto") + prunekit.save, per kind of CPU kernels: what is
stored no longer depends on what the saving machine runs. For a bf16 Llama-shaped model (hidden
1024, its linear layers the bulk of the parameters) at 50% and 2:4, with the AVX2 and the AVX-512
tables active in turn (prunekit._C._set_cpu_isa), and rows per call 16 (the default) and 1: the
whole checkpoint against the dense bf16 safetensors file, the formats stored, what sparsify_ swapped
or kept dense, the formats the loaded model runs, and whether its outputs are bit-identical.
Sizes are deterministic, so any machine can run it (timings are not measured).

    python bench/bench_checkpoint_size.py                  # the Llama-shaped model (about a minute)
    python bench/bench_checkpoint_size.py --model smollm2  # SmolLM2-135M (Wanda, its calibration text)
    python bench/bench_checkpoint_size.py --model smollm2 --method magnitude --isas avx512   # quicker: the
        # sizes depend only on how many weights each layer keeps, not on which, nor on the ISA

Writes bench/results/checkpoint_size[_smollm2].{json,md}.
"""

import argparse
import copy
import tempfile
from pathlib import Path

import torch
import transformers
from _common import RESULTS_DIR
from safetensors.torch import save_file

import prunekit
from prunekit import PruneConfig
from prunekit.app.benchmarks.common import machine_info, write_results
from prunekit.io import read_info
from prunekit.nn import SparseWeightModule
from prunekit.surgery import SparsifyConfig

COLUMNS = ["model", "method", "pruning", "isa", "rows", "swapped", "kept_dense", "stored_formats", "loaded_formats",
           "dense_mb", "checkpoint_mb", "ratio", "bit_identical"]
TITLE = "Whole checkpoint size after prune + sparsify_(auto) + save, bf16, per kind of CPU kernels"


def llama_shaped() -> tuple[torch.nn.Module, list | None]:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=1024, intermediate_size=2816, num_hidden_layers=2,
                                      num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=128,
                                      tie_word_embeddings=False)
    generator = torch.Generator().manual_seed(1)
    calib = [{"input_ids": torch.randint(0, 256, (1, 64), generator=generator)} for _ in range(4)]
    return transformers.LlamaForCausalLM(config).eval(), calib


def smollm2() -> tuple[torch.nn.Module, list]:
    from prunekit.app.evaluation import lm_quality_batches
    from prunekit.hf import load_model

    model, tokenizer, _ = load_model("smollm2")
    calib, _ = lm_quality_batches(tokenizer)
    return model, calib


def dense_bytes(model: torch.nn.Module, path: Path) -> int:
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        if tensor.untyped_storage().data_ptr() not in seen:
            seen.add(tensor.untyped_storage().data_ptr())
            state[key] = tensor.contiguous()
    save_file(state, path)
    return path.stat().st_size


def formats_of(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, SparseWeightModule) or type(module) is torch.nn.Linear:
            name = module.format if isinstance(module, SparseWeightModule) else "plain"
            counts[name] = counts.get(name, 0) + 1
    return counts


def measure(name: str, build, isas: list[str], directory: Path, method: str | None = None) -> list[dict]:
    base, calib = build()
    vocab = base.config.vocab_size
    ids = torch.randint(0, vocab, (1, 16), generator=torch.Generator().manual_seed(3))
    rows = []
    for pruning in (0.5, "2:4"):
        pruned = copy.deepcopy(base)
        chosen = method or ("wanda" if calib is not None else "magnitude")
        prunekit.prune(pruned, PruneConfig(method=chosen, sparsity=pruning, progress=False),
                       calib if chosen != "magnitude" else None)
        pruned = pruned.to(torch.bfloat16)
        dense = dense_bytes(pruned, directory / "dense.safetensors")
        for isa in isas:
            prunekit._C._set_cpu_isa(isa)
            try:
                for rows_per_call in (None, 1):
                    model = copy.deepcopy(pruned)
                    report = prunekit.sparsify_(model, SparsifyConfig(rows=rows_per_call))
                    with torch.no_grad():
                        expected = model(input_ids=ids).logits
                    weights = prunekit.save(model, directory / f"{isa}", overwrite=True)
                    stored: dict[str, int] = {}
                    for spec in read_info(weights)["modules"].values():
                        stored[spec["format"]] = stored.get(spec["format"], 0) + 1
                    loaded = prunekit.load(weights)
                    with torch.no_grad():
                        identical = torch.equal(loaded(input_ids=ids).logits, expected)
                    row = {"model": name, "method": chosen, "pruning": str(pruning), "isa": isa,
                           "rows": rows_per_call or 16, "swapped": len(report.swapped),
                           "kept_dense": len(report.kept_dense),
                           "stored_formats": stored, "loaded_formats": formats_of(loaded), "dense_mb": dense / 1e6,
                           "checkpoint_mb": weights.stat().st_size / 1e6, "ratio": weights.stat().st_size / dense,
                           "bit_identical": identical}
                    print(" ".join(f"{key}={row[key]}" for key in COLUMNS), flush=True)
                    rows.append(row)
                    del model, loaded
            finally:
                prunekit._C._set_cpu_isa("")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["llama_shaped", "smollm2"], default="llama_shaped")
    parser.add_argument("--method", choices=["wanda", "magnitude"], help="pruning criterion (default: Wanda with "
                        "calibration data)")
    parser.add_argument("--isas", nargs="+", choices=["avx2", "avx512"], default=["avx2", "avx512"],
                        help="kinds of CPU kernels whose tables are active in turn (default: both)")
    args = parser.parse_args()
    isas = [isa for isa in args.isas if isa in prunekit.build_info()["cpu_isas_runnable"]]
    builders = {"llama_shaped": llama_shaped, "smollm2": smollm2}
    with tempfile.TemporaryDirectory() as temporary:
        rows = measure(args.model, builders[args.model], isas, Path(temporary), args.method)
    suffix = "" if args.model == "llama_shaped" else f"_{args.model}"
    machine = {**machine_info(), "isas_measured": isas}
    print("wrote", *write_results(RESULTS_DIR, f"checkpoint_size{suffix}", rows, COLUMNS, TITLE, machine))
