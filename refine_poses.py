"""Refinement of the mapping poses during ACE training: none, naive (poses are parameters) or mlp (one small
network maps every initial pose to a correction, which couples the cameras and keeps updates smooth)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

POSE_REFINEMENT_CHOICES = ("none", "naive", "mlp")
ORTHO_CHOICES = ("gram-schmidt", "procrustes")


def gram_schmidt(matrices: torch.Tensor) -> torch.Tensor:
    """Nearest-by-construction rotation: orthonormalise columns 1 and 2, column 3 = their cross product."""
    first = F.normalize(matrices[..., :, 0], dim=-1)
    second = matrices[..., :, 1] - (first * matrices[..., :, 1]).sum(-1, keepdim=True) * first
    second = F.normalize(second, dim=-1)
    third = torch.cross(first, second, dim=-1)
    return torch.stack([first, second, third], dim=-1)


def procrustes(matrices: torch.Tensor) -> torch.Tensor:
    """Closest rotation in the Frobenius sense (SVD), with the determinant forced to +1."""
    u, _, vh = torch.linalg.svd(matrices)
    sign = torch.sign(torch.det(u @ vh))
    diag = torch.ones_like(matrices[..., 0])
    diag[..., 2] = sign
    return u @ torch.diag_embed(diag) @ vh


class OptionallyOptimised(nn.Module):
    """A refiner that owns its optimiser, or has none when refinement is off (then steps do nothing)."""
    optimizer: torch.optim.Optimizer | None = None

    def zero_grad_step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()


class PoseMLP(nn.Module):
    """12 values of a 3x4 pose -> 12-value correction; 128 wide (the original refiner's size)."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.skip = nn.Linear(12, width)
        self.layers = nn.ModuleList([nn.Linear(12, width), nn.Linear(width, width), nn.Linear(width, width)])
        self.fc1, self.fc2, self.fc3 = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, 12)
        # Start at the input poses: the original's random initial offsets (~1-3 deg) are baked into the map
        # before the refiner can undo them, which short CPU runs cannot afford.
        nn.init.zeros_(self.fc3.weight)
        nn.init.zeros_(self.fc3.bias)

    def forward(self, flat_poses: torch.Tensor) -> torch.Tensor:
        x = flat_poses
        for layer in self.layers:
            x = F.relu(layer(x))
        x = self.skip(flat_poses) + x
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class PoseRefiner(OptionallyOptimised):
    """Holds the initial world-to-camera 3x4 poses and returns refined ones."""

    def __init__(self, world_to_cam: torch.Tensor, method: str = "none", ortho: str = "gram-schmidt",
                 learning_rate: float = 1e-3, mlp_weight: float = 0.1):
        super().__init__()
        if method not in POSE_REFINEMENT_CHOICES:
            raise ValueError(f"unknown pose refinement '{method}'")
        self.method, self.mlp_weight = method, mlp_weight
        self.orthonormalise = gram_schmidt if ortho == "gram-schmidt" else procrustes
        self.register_buffer("initial", world_to_cam[:, :3, :4].clone().float())
        self.optimizer = None
        if method == "naive":
            self.poses = nn.Parameter(self.initial.clone())
            self.optimizer = torch.optim.AdamW([self.poses], lr=learning_rate)
        elif method == "mlp":
            self.mlp = PoseMLP()
            self.optimizer = torch.optim.AdamW(self.mlp.parameters(), lr=learning_rate)

    def forward(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Refined 3x4 world-to-camera poses (all, or those of `indices`)."""
        initial = self.initial if indices is None else self.initial[indices]
        if self.method == "none":
            return initial
        if self.method == "naive":
            raw = self.poses if indices is None else self.poses[indices]
        else:
            raw = initial + self.mlp_weight * self.mlp(initial.reshape(-1, 12)).view(-1, 3, 4)
        return torch.cat([self.orthonormalise(raw[:, :, :3]), raw[:, :, 3:]], dim=2)
