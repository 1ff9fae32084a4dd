"""Every training objective of the five papers, once, named as the papers name them.

Each function takes features/logits and labels and returns a scalar; each is unit-tested in
``tests/test_losses_*.py`` against a direct, naive implementation of the paper's formula.
Papers share an objective only where the formula really is the same.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def id_loss(logits: torch.Tensor, pids: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Identity (person-id) classification: cross-entropy over the training identities."""
    return F.cross_entropy(logits, pids, label_smoothing=label_smoothing)
