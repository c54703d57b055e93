"""tests/io: compressed checkpoints. The CNNs come from tests/nn/cnn_models.py, the tiny Hugging
Face models from tests/tiny_models.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "nn"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
