"""Refinement of the mapping poses during ACE training: none, naive (poses are parameters) or mlp (one small
network maps every initial pose to a correction, which couples the cameras and keeps updates smooth)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ace_util import GAUGE_CHOICES, MLP_INPUT_CHOICES, POSE_REFINEMENT_CHOICES, UPDATE_CHOICES


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

    def step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """One optimiser step. Under mixed precision pass the head's GradScaler: the loss was scaled before
        backward, so these gradients are too; the scaler divides them back and skips the step when they
        overflowed (an inf in Adam's moments would turn every pose into NaN for good)."""
        if self.optimizer is None:
            return
        if scaler is None:
            self.optimizer.step()
        else:
            scaler.step(self.optimizer)


class PoseMLP(nn.Module):
    """12 values of a 3x4 pose -> a correction (12 values by default); 128 wide (the original refiner's size)."""

    def __init__(self, width: int = 128, outputs: int = 12):
        super().__init__()
        self.skip = nn.Linear(12, width)
        self.layers = nn.ModuleList([nn.Linear(12, width), nn.Linear(width, width), nn.Linear(width, width)])
        self.fc1, self.fc2, self.fc3 = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, outputs)
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
                 learning_rate: float = 1e-3, mlp_weight: float = 0.1, gauge: str = "none",
                 update: str = "additive", mlp_input: str = "pose"):
        super().__init__()
        if method not in POSE_REFINEMENT_CHOICES:
            raise ValueError(f"unknown pose refinement '{method}'")
        if gauge not in GAUGE_CHOICES:
            raise ValueError(f"unknown pose refinement gauge '{gauge}'")
        if update not in UPDATE_CHOICES:
            raise ValueError(f"unknown pose update '{update}'")
        if mlp_input not in MLP_INPUT_CHOICES:
            raise ValueError(f"unknown pose refiner input '{mlp_input}'")
        self.method, self.mlp_weight, self.gauge, self.update = method, mlp_weight, gauge, update
        values = 12 if update == "additive" else 6
        self.orthonormalise = gram_schmidt if ortho == "gram-schmidt" else procrustes
        self.register_buffer("initial", world_to_cam[:, :3, :4].clone().float())
        centre, scale = mlp_input_standardisation(self.initial) if mlp_input == "standardised" else (0.0, 1.0)
        self.register_buffer("input_centre", torch.as_tensor(centre, dtype=torch.float32))
        self.register_buffer("input_scale", torch.as_tensor(scale, dtype=torch.float32))
        self.optimizer = None
        if method == "naive":
            start = self.initial.clone() if update == "additive" else torch.zeros(len(self.initial), 6)
            self.poses = nn.Parameter(start)
            self.optimizer = torch.optim.AdamW([self.poses], lr=learning_rate)
        elif method == "mlp":
            self.mlp = PoseMLP(outputs=values)
            self.optimizer = torch.optim.AdamW(self.mlp.parameters(), lr=learning_rate)

    def forward(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Refined 3x4 world-to-camera poses (all, or those of `indices`)."""
        if self.method == "none":
            return self.initial if indices is None else self.initial[indices]
        if self.gauge == "none" and indices is not None:  # only the poses asked for (the original's cost)
            return self._refined(self.initial[indices], None if self.method == "mlp" else self.poses[indices])
        poses = self._refined(self.initial, None if self.method == "mlp" else self.poses)
        if self.gauge == "centres":
            poses = hold_centre_gauge(poses, self.initial)
        return poses if indices is None else poses[indices]

    def _refined(self, initial: torch.Tensor, parameters: torch.Tensor | None) -> torch.Tensor:
        """`parameters`: the naive refiner's own values for these poses; None = ask the MLP."""
        if self.update == "rotation":
            change = parameters if parameters is not None else self.mlp_weight * self._ask_mlp(initial)
            return rotate_and_move(initial, change[:, :3], change[:, 3:])
        raw = parameters if parameters is not None else \
            initial + self.mlp_weight * self._ask_mlp(initial).view(-1, 3, 4)
        return torch.cat([self.orthonormalise(raw[:, :, :3]), raw[:, :, 3:]], dim=2)

    def _mlp_inputs(self, initial: torch.Tensor) -> torch.Tensor:
        """The 12 values the MLP reads per pose: raw (the original) or standardised over the cameras."""
        return ((initial - self.input_centre) / self.input_scale).reshape(-1, 12)

    def _ask_mlp(self, initial: torch.Tensor) -> torch.Tensor:
        return self.mlp(self._mlp_inputs(initial))


def mlp_input_standardisation(initial: torch.Tensor, floor: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-value mean and spread of the N x 3 x 4 initial poses, for the mlp refiner's input.

    Why: the raw 12 values of neighbouring cameras differ by a few hundredths (temple's 7.7 deg steps), so the MLP
    sees almost one input and gives almost one correction to all cameras; individual corrections then take many
    steps to grow (the round ends 2.5-3.6 deg from the truth when started 3 deg off). Standardised, the cameras'
    inputs differ by order one. The spread has a floor so that a value all cameras share is not blown up."""
    return initial.mean(0), initial.std(0, unbiased=False).clamp(min=floor)


def rotate_and_move(world_to_cam: torch.Tensor, rotation_vectors: torch.Tensor, centre_shifts: torch.Tensor
                    ) -> torch.Tensor:
    """Each camera turned about its own centre by a rotation vector (camera axes) and its centre moved (world).

    The original adds the refiner's output to the pose's matrix entries and re-orthonormalises. The refiner's
    MLP is a smooth function of the pose, so early on it gives every camera nearly the same correction; a large
    common addend then dominates every rotation matrix, and all cameras turn towards one orientation (the
    collapse measured in the README). A common rotation vector or centre shift here is a rigid motion of each
    camera instead, which never makes two cameras alike."""
    skew = torch.zeros(len(rotation_vectors), 3, 3, device=world_to_cam.device, dtype=world_to_cam.dtype)
    x, y, z = rotation_vectors.unbind(1)
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -z, y, -x
    skew = skew - skew.transpose(1, 2)
    rotations = torch.linalg.matrix_exp(skew) @ world_to_cam[:, :, :3]
    return pose_from(rotations, camera_centres(world_to_cam) + centre_shifts)


def camera_centres(world_to_cam: torch.Tensor) -> torch.Tensor:
    """N x 3 camera centres -R^T t of N x 3 x 4 world-to-camera poses."""
    return -(world_to_cam[:, :, :3].transpose(1, 2) @ world_to_cam[:, :, 3:])[:, :, 0]


def pose_from(rotations: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """N x 3 x 4 world-to-camera poses [R | -R c] of rotations R and camera centres c."""
    return torch.cat([rotations, -(rotations @ centres[:, :, None])], dim=2)


def hold_centre_gauge(poses: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """Move the refined cameras so that their centres keep the initial centroid and RMS spread.

    The reprojection loss cannot see the scale of the scene, but a head's errors are roughly fixed in scene
    units, so their pixel size falls as the cameras move away from the points: left free, the refiner drifts
    towards an ever larger camera layout (the issue's +8 units along z) while the head lags behind. Fixing
    centroid and spread removes that direction of motion (differentiably, so it also gets no gradient) and
    leaves every relative pose free. With fewer than two distinct centres there is no spread to hold."""
    centres, initial_centres = camera_centres(poses), camera_centres(initial)
    if len(centres) < 2:
        return poses
    offsets, initial_offsets = centres - centres.mean(0), initial_centres - initial_centres.mean(0)
    initial_spread = initial_offsets.pow(2).sum(1).mean().sqrt()
    if float(initial_spread) < 1e-9:
        return poses
    scale = initial_spread / offsets.pow(2).sum(1).mean().sqrt().clamp(min=1e-12)
    return pose_from(poses[:, :, :3], initial_centres.mean(0) + scale * offsets)
