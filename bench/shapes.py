"""Named weight shapes of real models: they live in prunekit.app.benchmarks.shapes (one place)."""

from prunekit.app.benchmarks.shapes import *  # noqa: F401,F403
from prunekit.app.benchmarks.shapes import LLAMA_7B, LLAMA_70B, MINILM_L6, MOBILENET_V1_POINTWISE  # noqa: F401
