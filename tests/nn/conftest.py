"""tests/nn: sparse modules, sparsify_ and checkpoints. The tiny Hugging Face model builders live
in tests/tiny_models.py; the CNNs in cnn_models.py here."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
