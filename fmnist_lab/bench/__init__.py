"""`python -m fmnist_lab.bench`: training throughput of the Lightning path against its limits.

Three ways to train one epoch of the same model on the same images and device:
  lightning   the project's path (Classifier + DataModule + pl.Trainer)
  plain       a hand-written PyTorch loop over the same device tensors (the practical limit)
  dataloader  torchvision's FashionMNIST + DataLoader with per-sample transforms
              (ToTensor, Normalize), as the reference projects train
Each is warmed up first, then timed over one epoch; the ratios come from the same run.

One module per measurement: `paths` (the three ways to train an epoch) -> `throughput` (their
images per second, and torch.compile's worth); `time_to_acc` (seconds from scratch to a test
accuracy); `sweep` (a sweep's trials per hour); `command` ties them together and `__main__` is
the command line (light: torch loads only after parsing).
"""

from __future__ import annotations

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
PRECISION = {"32-true": "fp32", "bf16-mixed": "bf16"}  # --precision: its label in the table
