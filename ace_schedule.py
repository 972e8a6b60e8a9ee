"""Learning-rate schedules of ACE training: circle (one-cycle cosine), constant, and 1cyclepoly (warm-up,
plateau, and a linear cooldown that early stopping can start)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate flags of train_ace.py (same names: ace_util.config_from_args builds it)."""
    learning_rate_schedule: str  # circle, constant or 1cyclepoly
    iterations: int
    learning_rate_min: float
    learning_rate_max: float
    learning_rate_warmup_iterations: int
    learning_rate_warmup_learning_rate: float
    learning_rate_cooldown_iterations: int
    learning_rate_cooldown_trigger_percent_threshold: float


class LearningRateSchedule:
    """circle (one-cycle cosine), constant, or 1cyclepoly (warm-up, plateau, linear cooldown that an
    early-stopping trigger can start before the last `cooldown` iterations)."""

    def __init__(self, config: ScheduleConfig, optimizer: torch.optim.Optimizer):
        self.config, self.optimizer = config, optimizer
        self.max_iterations = config.iterations
        self.cooldown_start: int | None = None
        self.cooldown_from = config.learning_rate_max
        self.recent_inliers: list[float] = []

    def learning_rate(self, iteration: int) -> float:
        a = self.config
        if a.learning_rate_schedule == "constant":
            return a.learning_rate_min
        if a.learning_rate_schedule == "circle":
            return _one_cycle(iteration, a.iterations, a.learning_rate_max)
        if iteration < a.learning_rate_warmup_iterations:
            t = iteration / max(1, a.learning_rate_warmup_iterations)
            start = a.learning_rate_warmup_learning_rate
            return start + t * (a.learning_rate_max - start)
        if self.cooldown_start is None:
            return a.learning_rate_max
        t = min(1.0, (iteration - self.cooldown_start) / max(1, a.learning_rate_cooldown_iterations))
        return self.cooldown_from + t * (a.learning_rate_min - self.cooldown_from)

    def step(self, iteration: int, batch_inliers: float) -> None:
        """Set the LR for `iteration`; in 1cyclepoly, start the cooldown when mapping has converged."""
        a = self.config
        if a.learning_rate_schedule == "1cyclepoly" and self.cooldown_start is None:
            self.recent_inliers = (self.recent_inliers + [batch_inliers])[-100:]
            past_warmup = iteration >= a.learning_rate_warmup_iterations
            converged = len(self.recent_inliers) == 100 and \
                min(self.recent_inliers) > a.learning_rate_cooldown_trigger_percent_threshold
            late = iteration >= self.max_iterations - a.learning_rate_cooldown_iterations
            if past_warmup and (converged or late):
                self.cooldown_start = iteration
                self.cooldown_from = self.learning_rate(iteration)
                self.max_iterations = min(self.max_iterations, iteration + a.learning_rate_cooldown_iterations)
                _log.info("iteration %d: %s, cooldown for %d iterations", iteration,
                          "mapping converged" if converged else "approaching the iteration limit",
                          self.max_iterations - iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(iteration)


def _one_cycle(iteration: int, total: int, max_lr: float, pct_start: float = 0.3, div_factor: float = 25.0,
               final_div: float = 1e4) -> float:
    """PyTorch's OneCycleLR (cosine annealing) as a closed form."""
    initial, final = max_lr / div_factor, max_lr / div_factor / final_div
    peak = pct_start * total - 1
    if iteration <= peak:
        t = iteration / max(peak, 1)
        return _cosine_between(initial, max_lr, t)
    t = (iteration - peak) / max(total - 1 - peak, 1)
    return _cosine_between(max_lr, final, min(t, 1.0))


def _cosine_between(start: float, end: float, t: float) -> float:
    """Cosine annealing from start (t = 0) to end (t = 1)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * t) + 1)
