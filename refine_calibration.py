"""Refinement of the single focal length shared by all mapping images."""
from __future__ import annotations

import torch
import torch.nn as nn

from refine_poses import OptionallyOptimised


class CalibrationRefiner(OptionallyOptimised):
    """f = f_init * (1 + alpha) with one learnable scalar alpha (initialised at 0).

    Samples carry their own focal length (resize and augmentation scale it); the refined focal for a sample is
    its stored focal times the same relative change (1 + alpha).
    """

    def __init__(self, initial_focal: float, refine: bool, learning_rate: float = 1e-3):
        super().__init__()
        self.initial_focal = float(initial_focal)
        self.alpha = nn.Parameter(torch.zeros(1), requires_grad=refine)
        self.optimizer = torch.optim.AdamW([self.alpha], lr=learning_rate) if refine else None

    @property
    def refining(self) -> bool:
        return self.optimizer is not None

    def scale(self) -> torch.Tensor:
        return 1.0 + self.alpha

    def focal(self) -> float:
        """Current focal length in pixels of the original image."""
        return self.initial_focal * float(self.scale().detach())
