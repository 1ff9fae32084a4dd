"""Pieces every zoo recipe shares: the learning-rate schedule and the progress line."""
from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup: int):
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps)))


def log_step(bar, name: str, step: int, steps: int, losses: list[float], progress: bool, t0: float) -> None:
    """The running loss on the bar (interactive) or one log line per 250 steps (batch), with the
    seconds since ``t0`` (a disabled bar keeps no clock)."""
    if step % 50 == 0:
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    if not progress and (step + 1) % 250 == 0:
        print(f"pretrain {name}: step {step + 1}/{steps} loss {np.mean(losses[-250:]):.3f} "
              f"{time.time() - t0:.0f} s", file=sys.stderr, flush=True)
