"""One rank of test_distributed_streaming.py (torchrun's environment variables): streams the tiny
Llama in SOURCE into OUT with SparseGPT 50%, then into OUT/../prunekit as a prunekit checkpoint,
then a run whose rank 0 cannot write (disk full).

Usage: python _dist_worker.py SOURCE OUT RESULT_DIR
"""

import errno
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tiny_models

import prunekit  # noqa: E402
from prunekit import distributed  # noqa: E402
from prunekit.io import safetensors_file as stf  # noqa: E402

from tiny_models import calibration  # noqa: E402


def main() -> int:
    source, out, results = (Path(a) for a in sys.argv[1:4])
    torch.set_num_threads(1)
    assert distributed.init_from_env(), "expected WORLD_SIZE > 1"
    rank = distributed.get_rank()
    config = prunekit.PruneConfig(method="sparsegpt", sparsity=0.5, progress=False)
    report = prunekit.prune_pretrained(source, config, calibration("llama"), out)
    result = {"total_pruned": report.total_pruned, "layers": [layer.name for layer in report.layers]}
    prunekit.prune_pretrained(source, config, calibration("llama"), out.parent / "prunekit", out_format="prunekit")

    if rank == 0:  # rank 0's disk fills up at the second shard: every rank stops, nothing is left
        real, calls = stf.write, []

        def write(path, *args, **kwargs):
            calls.append(path)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, *args, **kwargs)

        stf.write = write
    try:
        prunekit.prune_pretrained(source, config, calibration("llama"), out.parent / "full-disk")
        result["failure"] = None
    except Exception as error:  # noqa: BLE001  (reported to the test)
        result["failure"] = f"{type(error).__name__}: {error}"
    (results / f"rank{rank}.json").write_text(json.dumps(result))
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
