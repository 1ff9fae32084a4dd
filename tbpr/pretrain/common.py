"""Pieces every zoo recipe shares: the optimisation loop, its learning-rate schedule, batches and
progress line."""
from __future__ import annotations

import math
import sys
import time

from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm


def seeded(seed: int) -> tuple[torch.Generator, float]:
    """Seed torch's global generator (the member's initial weights) and return the recipe's own
    generator (batches, masks, augmentations), seeded alike, with the clock its log lines count from."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed), time.time()


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


def batch_indices(n: int, batch_size: int, g: torch.Generator):
    """Endless batches of indices into ``n`` examples: a fresh permutation each pass, the last
    incomplete batch of a pass dropped."""
    while True:
        order = torch.randperm(n, generator=g)
        for pos in range(0, n - batch_size + 1, batch_size):
            yield order[pos:pos + batch_size]


def loss_history(losses: list[float], every: int = 250) -> list[dict]:
    """The mean loss of each ``every`` steps (and of the last, shorter stretch): the manifest's
    pre-training curve."""
    return [{"step": min(end, len(losses)), "loss": round(float(np.mean(losses[end - every:end])), 4)}
            for end in range(every, len(losses) + every, every) if end - every < len(losses)]


def train_steps(name: str, recipe: dict, params, loss_of_step: Callable[[int], torch.Tensor],
                progress: bool, t0: float, after_step: Callable[[int], None] | None = None) -> list[float]:
    """``recipe["steps"]`` AdamW steps (the recipe's ``lr`` and ``weight_decay``; ``warmup_cosine``
    over ``warmup``) on ``loss_of_step(step)``, which draws its own batch; ``after_step(step)`` runs
    once the parameters moved (a recipe's own records). Returns the loss of every step."""
    opt = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    sched = warmup_cosine(opt, recipe["steps"], recipe["warmup"])
    losses: list[float] = []
    bar = tqdm(range(recipe["steps"]), desc=f"pretrain {name}", disable=not progress)
    for step in bar:
        loss = loss_of_step(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if after_step is not None:
            after_step(step)
        log_step(bar, name, step, recipe["steps"], losses, progress, t0)
    return losses
