"""The ``optim`` section of a config made concrete: the optimiser and the learning rate of every step."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ecl.config import ConfigError

__all__ = ["build_optimizer", "learning_rate"]


def learning_rate(step: int, optim_cfg, total_steps: int) -> float:
    """Learning rate of optimisation step ``step`` (0-based): linear warm-up, then the schedule.

    Args:
        step: index of the step about to be taken, ``0 <= step < total_steps``.
        optim_cfg: the ``optim`` section of the config.
        total_steps: length of the schedule.

    Returns:
        The learning rate for that step.
    """
    lr = optim_cfg.lr
    warmup = min(optim_cfg.warmup_steps, total_steps)
    if step < warmup:
        start = optim_cfg.warmup_start
        return lr * (start + (1.0 - start) * step / warmup)
    if optim_cfg.schedule == "constant":
        return lr
    if optim_cfg.schedule == "step":
        passed = sum(step >= m * total_steps for m in optim_cfg.milestones)
        return lr * optim_cfg.step_gamma**passed
    progress = (step - warmup) / max(1, total_steps - warmup)
    floor = optim_cfg.min_lr_ratio
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def build_optimizer(modules: Sequence[nn.Module], optim_cfg) -> torch.optim.Optimizer:
    """The ``optim`` section's optimiser over the modules' parameters (no weight decay on 1-D ones)."""
    decay, no_decay = [], []
    for module in modules:
        for _, param in module.named_parameters():
            if not param.requires_grad:
                continue
            # Norm scales and biases are 1-D: weight decay on them only hurts (standard practice).
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": optim_cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if optim_cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum)
    if optim_cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=optim_cfg.lr)
    raise ConfigError(f"optim.optimizer must be sgd or adamw, got {optim_cfg.optimizer!r}")
