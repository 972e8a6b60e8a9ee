"""Training losses of ACE mapping: the two loss structures (dsac*: valid/invalid switching as in DSAC*, ACE and
ACE0; probabilistic: reprojection and a prior jointly, "Scene Coordinate Reconstruction Priors", ICCV 2025) and
the priors on predicted depth (Laplace NLL, Laplace 1-Wasserstein, RGB-D Laplace NLL) or on the point cloud
(a user-supplied point-cloud diffusion model)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ace_util import (DIFFUSION_NEEDS_MODEL, float_or_auto, DSAC_ONLY_DIFFUSION, LOSS_STRUCTURES, PRIOR_TYPES,  # noqa: F401
                      PROBABILISTIC_NEEDS_PRIOR, RGBD_NEEDS_DEPTH, UserError)


DEPTH_SUPERVISION_RADIUS = 0.1  # dsac*: predictions farther than this (scene units) from a depth target are invalid
TARGET_PRESENT_L1 = 1e-5        # a depth target exists when its L1 norm exceeds this (0 = no target)
WD_QUANTILE_EPS = 1e-6          # Laplace quantiles of the Wasserstein form span [eps, 1 - eps]
# ScanNet's fitted depth prior (location 1.73 m, bandwidth 0.6 m): the ratio keeps the shape of the prior when
# the location follows the scale of a non-metric reconstruction (--prior_loss_location auto).
SCANNET_LOCATION, SCANNET_BANDWIDTH = 1.73, 0.6
DIFFUSION_EVERY = 4             # the diffusion prior acts on every 4th iteration
DIFFUSION_MAX_TIME = 0.05       # diffusion time at the start of training, as a fraction of the model's steps
DIFFUSION_MIN_ERROR_PX = 30.0   # only poorly constrained points (larger reprojection error) get the diffusion prior
DIFFUSION_BETAS = (1e-4, 0.05)  # linear noise schedule of the published model
DIFFUSION_STEPS = 200
DIFFUSION_CENTROID, DIFFUSION_SCALE = 0.0, 20.0  # point normalisation when the checkpoint stores none



# ----------------------------------------------------------------------------------------------------------------
# Configuration

@dataclass
class PriorConfig:
    type: str = "none"
    weight: float = 1.0          # lambda
    # either may be "auto" until the trainer resolves it from the mapping depth (auto_prior)
    bandwidth: float | str = 0.1  # Laplace scale b (scene units; metres with metric depth)
    location: float | str = 1.0   # Laplace location mu; not used by rgbd_laplace_nll
    diffusion_model_path: Path | None = None
    diffusion_start_step: int = 0
    diffusion_warmup_steps: int = -1
    diffusion_subsample: float = 1.0


@dataclass
class LossConfig:
    structure: str = "dsac*"
    prior: PriorConfig = field(default_factory=PriorConfig)
    repro_loss_type: str = "dyntanh"
    soft_clamp: float = 50.0
    soft_clamp_min: float = 1.0
    soft_clamp_schedule: str = "circle"
    hard_clamp: float = 1000.0
    depth_min: float = 0.1
    depth_max: float = 1000.0
    depth_target: float = 10.0
    inlier_px: float = 10.0

    @classmethod
    def from_args(cls, args) -> "LossConfig":
        prior = PriorConfig(args.prior_loss_type, args.prior_loss_weight, float_or_auto(args.prior_loss_bandwidth),
                            float_or_auto(args.prior_loss_location), args.prior_diffusion_model_path,
                            args.prior_diffusion_start_step, args.prior_diffusion_warmup_steps,
                            args.prior_diffusion_subsample)
        return cls(args.loss_structure, prior, args.repro_loss_type, args.repro_loss_soft_clamp,
                   args.repro_loss_soft_clamp_min, args.repro_loss_schedule, args.repro_loss_hard_clamp,
                   args.depth_min, args.depth_max, args.depth_target, args.learning_rate_cooldown_trigger_px_threshold)


def check_prior_combination(structure: str, prior_type: str) -> None:
    """The combination error raised when the loss is built (the probabilistic/none one comes at the first step)."""
    if structure == "dsac*" and prior_type not in ("none", "diffusion"):
        raise UserError(DSAC_ONLY_DIFFUSION)


def auto_prior(median_depth: float, location, bandwidth) -> tuple[float, float]:
    """Resolve 'auto' location (the median depth) and 'auto' bandwidth (ScanNet's bandwidth/location ratio times
    the location); numbers pass through."""
    mu = float(median_depth) if str(location) == "auto" else float(location)
    b = mu * SCANNET_BANDWIDTH / SCANNET_LOCATION if str(bandwidth) == "auto" else float(bandwidth)
    return mu, b


# ----------------------------------------------------------------------------------------------------------------
# Reprojection loss

def soft_clamp_scale(loss_type: str, soft_clamp: float, soft_clamp_min: float, schedule: str,
                     progress: float) -> float:
    """tanh uses a fixed scale; dyntanh shrinks it from soft_clamp + min to min over training."""
    if loss_type != "dyntanh":
        return soft_clamp
    shaped = 1.0 - math.sqrt(max(0.0, 1.0 - progress ** 2)) if schedule == "circle" else progress
    return (1.0 - shaped) * soft_clamp + soft_clamp_min


def reprojection_errors(cam: torch.Tensor, focals: torch.Tensor, pixels: torch.Tensor, depth_min: float
                        ) -> torch.Tensor:
    """L1 reprojection error in pixels of camera-frame points, as the original (depth clamped to stay in front
    of the camera). focals: B x 2 (fx, fy); pixels relative to the principal point."""
    depth = cam[:, 2].clamp(min=depth_min)
    return (cam[:, :2] / depth[:, None] * focals - pixels).abs().sum(dim=1)


def reprojection_loss(errors: torch.Tensor, loss_type: str, scale: float,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Robust sum of reprojection errors (pixels), over the errors where `mask` holds when one is given. A mask
    rather than selecting the errors: selection waits for the GPU to count them; every robust loss is 0 at 0."""
    if mask is not None:
        errors = errors.masked_fill(~mask, 0.0)
    if loss_type in ("tanh", "dyntanh"):
        return (scale * torch.tanh(errors / scale)).sum()
    small = errors <= scale
    zero = errors.new_zeros(())
    if loss_type == "l1":
        return torch.where(small, errors, zero).sum()
    # the large branch sees at least `scale`, so that its discarded values (and their gradients) stay finite
    large = errors.clamp(min=scale)
    if loss_type == "l1+sqrt":
        return torch.where(small, errors, torch.sqrt(scale * large)).sum()
    return torch.where(small, errors, torch.log(1 + scale * large)).sum()


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of `values` where `mask` holds, without selecting them (selection waits for the GPU)."""
    return torch.where(mask, values, values.new_zeros(())).sum()


# ----------------------------------------------------------------------------------------------------------------
# Depth priors (each returns a mean over the batch)

def laplace_nll(depth: torch.Tensor, location: float, bandwidth: float) -> torch.Tensor:
    """-mean log Lap(z | mu, b): an L1 pull of every depth towards mu."""
    return (torch.abs(depth - location) / bandwidth + math.log(2 * bandwidth)).mean()


def laplace_quantiles(count: int, location: float, bandwidth: float, device=None) -> torch.Tensor:
    """Inverse CDF of Lap(mu, b) at `count` probabilities evenly spaced in [eps, 1 - eps]."""
    p = torch.linspace(WD_QUANTILE_EPS, 1 - WD_QUANTILE_EPS, count, dtype=torch.float64, device=device)
    centred = p - 0.5
    return (location - bandwidth * torch.sign(centred) * torch.log1p(-2 * centred.abs())).float()


def laplace_wasserstein(depth: torch.Tensor, location: float, bandwidth: float) -> torch.Tensor:
    """1-Wasserstein distance between the batch's depth distribution and Lap(mu, b): sorted depths against the
    Laplace quantiles. It shapes the spread of the depths, not only their centre."""
    ordered, _ = torch.sort(depth)
    return (ordered - laplace_quantiles(len(depth), location, bandwidth, depth.device)).abs().mean()


def rgbd_laplace_nll(depth: torch.Tensor, measured: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """-sum log Lap(z_i | d*_i, b) over pixels with a measurement (d* > 0), divided by the whole batch size."""
    known = measured > 0
    terms = torch.abs(depth[known] - measured[known]) / bandwidth + math.log(2 * bandwidth)
    return terms.sum() / max(1, len(depth))


# ----------------------------------------------------------------------------------------------------------------
# Diffusion prior

class DiffusionRegulariser:
    """Score of a point-cloud diffusion model used as a prior: the model predicts the noise of normalised points
    at a small diffusion time; the score direction -eps/sqrt(1 - alpha_bar) pushes points towards plausible
    scene geometry.

    `model(points, steps)` takes points as 1 x 3 x N (normalised) and steps as a LongTensor of shape (1,), and
    returns the predicted noise in the shape of `points`."""

    def __init__(self, model, centroid=DIFFUSION_CENTROID, scale=DIFFUSION_SCALE, steps: int = DIFFUSION_STEPS,
                 betas: tuple[float, float] = DIFFUSION_BETAS):
        self.model, self.steps = model, steps
        self.centroid = torch.as_tensor(centroid, dtype=torch.float32)
        self.scale = torch.as_tensor(scale, dtype=torch.float32)
        beta = torch.linspace(betas[0], betas[1], steps, dtype=torch.float64)
        self.alpha_bar = torch.cumprod(1 - beta, dim=0)

    def step_for(self, time: float) -> int:
        """Diffusion time in [0, 1] on the model's step grid (0.05 -> step 9 of 200)."""
        return int(min(max(time, 0.0), 1.0) * (self.steps - 1))

    def get_diff_loss(self, points: torch.Tensor, step: int) -> torch.Tensor:
        """Per-point pseudo-loss (N x 3) whose gradient is the unit score: normalised points times the detached
        score, which is divided by its global L2 norm."""
        normalised = (points - self.centroid.to(points)) / self.scale.to(points)
        with torch.no_grad():
            steps = torch.full((1,), step, dtype=torch.long, device=points.device)
            noise = self.model(normalised.t()[None].contiguous(), steps)[0].t()
            score = -noise / math.sqrt(1 - float(self.alpha_bar[step]))
            unit = score / score.norm().clamp(min=1e-12)
        return unit.to(points) * normalised


def load_diffusion_regulariser(path: Path | None, device) -> DiffusionRegulariser:
    """A TorchScript noise model (with optional `centroid`/`scale` attributes), or a state dict of scr-priors'
    model when that package (`diffusion.models.ddpm`) is importable."""
    if path is None:
        raise UserError(DIFFUSION_NEEDS_MODEL)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--prior_diffusion_model_path {path}: file not found")
    try:
        model = torch.jit.load(str(path), map_location=device)
    except Exception:  # not TorchScript (a pickled state dict, or no model at all)
        model = None
    if model is not None:
        model.eval()
        return DiffusionRegulariser(model, getattr(model, "centroid", DIFFUSION_CENTROID),
                                    getattr(model, "scale", DIFFUSION_SCALE))
    return _load_scr_priors_checkpoint(path)


def _load_scr_priors_checkpoint(path: Path) -> DiffusionRegulariser:
    """State dict (bare or under 'state_dict') of the scr-priors PVCNN2 model; its architecture is not part of
    this project, so that package must be on the Python path."""
    try:
        from diffusion.models import ddpm  # noqa: F401  (scr-priors, optional)
    except ImportError:
        raise UserError(f"--prior_diffusion_model_path {path}: not a TorchScript model, and a scr-priors state "
                        "dict needs its 'diffusion' package (PVCNN2) on PYTHONPATH, which this project does not "
                        "ship") from None
    raise UserError(f"--prior_diffusion_model_path {path}: loading scr-priors state dicts is not implemented; "
                    "export the model with torch.jit.script (model(points 1x3xN, steps) -> noise)")


# ----------------------------------------------------------------------------------------------------------------
# The prior term

class PriorLoss:
    """lambda-free prior term; `compute` returns 0 for 'none' and on diffusion's inactive iterations."""

    def __init__(self, config: PriorConfig, use_depth: bool, device="cpu"):
        self.config = config
        if config.type == "rgbd_laplace_nll" and not use_depth:
            raise UserError(RGBD_NEEDS_DEPTH)
        self.diffusion = load_diffusion_regulariser(config.diffusion_model_path, device) \
            if config.type == "diffusion" else None

    def diffusion_weight(self, iteration: int) -> float:
        """0 up to the start step and off every 4th iteration; then a linear warm-up (when set) to 1."""
        c = self.config
        if iteration <= c.diffusion_start_step or iteration % DIFFUSION_EVERY != 0:
            return 0.0
        if c.diffusion_warmup_steps > 0 and iteration - c.diffusion_start_step < c.diffusion_warmup_steps:
            return (iteration - c.diffusion_start_step) / c.diffusion_warmup_steps
        return 1.0

    def diffusion_time(self, iteration: int, max_iterations: int) -> float:
        """0.05 at the start step, falling linearly to 0 at the (currently scheduled) last iteration."""
        start = self.config.diffusion_start_step
        progress = (iteration - start) / max(1, max_iterations - start)
        return DIFFUSION_MAX_TIME * (1 - min(max(progress, 0.0), 1.0))

    def compute(self, depth: torch.Tensor, scene: torch.Tensor, measured: torch.Tensor | None,
                errors: torch.Tensor, iteration: int, max_iterations: int) -> torch.Tensor:
        c = self.config
        if c.type == "laplace_nll":
            return laplace_nll(depth, c.location, c.bandwidth)
        if c.type == "laplace_wd":
            return laplace_wasserstein(depth, c.location, c.bandwidth)
        if c.type == "rgbd_laplace_nll":
            if measured is None:
                raise UserError(RGBD_NEEDS_DEPTH)
            return rgbd_laplace_nll(depth, measured, c.bandwidth)
        if c.type == "diffusion":
            return self._diffusion(scene, errors, iteration, max_iterations)
        return depth.new_zeros(())

    def _diffusion(self, scene: torch.Tensor, errors: torch.Tensor, iteration: int,
                   max_iterations: int) -> torch.Tensor:
        weight = self.diffusion_weight(iteration)
        if weight == 0.0:
            return scene.new_zeros(())
        if self.config.diffusion_subsample < 1:
            keep = torch.rand(len(scene), device=scene.device) < self.config.diffusion_subsample
            scene, errors = scene[keep], errors[keep]
        if len(scene) == 0:
            return scene.new_zeros(())
        step = self.diffusion.step_for(self.diffusion_time(iteration, max_iterations))
        per_point = self.diffusion.get_diff_loss(scene, step)
        # well-constrained points are left to the reprojection loss
        per_point = per_point[errors.detach() > DIFFUSION_MIN_ERROR_PX].sum(dim=1)
        per_point = per_point[per_point != 0]
        if len(per_point) == 0:
            return scene.new_zeros(())
        return -per_point.mean() * weight


# ----------------------------------------------------------------------------------------------------------------
# The two loss structures

@dataclass
class LossInputs:
    """One training batch as the loss sees it (B predictions)."""
    scene: torch.Tensor            # B x 3 predicted scene coordinates
    cam: torch.Tensor              # B x 3 in the (augmented) camera, through the refined poses
    cam_fixed: torch.Tensor        # B x 3 the same with the poses detached (terms that regularise the head only)
    errors: torch.Tensor           # B reprojection errors (px, L1)
    rays: torch.Tensor             # B x 3 pixel rays (x/f, y/f, 1) in the augmented camera
    targets: torch.Tensor | None   # B x 3 depth targets in the scene frame (0 = none)
    measured_depth: torch.Tensor | None  # B measured camera depth of the targets (0 = none)
    iteration: int
    max_iterations: int


class AceLoss:
    """Builds the training loss from the configuration; `compute` returns (inlier ratio, loss)."""

    def __init__(self, config: LossConfig, use_depth: bool, device="cpu"):
        if config.structure not in LOSS_STRUCTURES:
            raise UserError(f"--loss_structure {config.structure}: expected one of {', '.join(LOSS_STRUCTURES)}")
        check_prior_combination(config.structure, config.prior.type)
        self.config = config
        self.prior = PriorLoss(config.prior, use_depth, device)

    def _scale(self, inputs: LossInputs) -> float:
        return self.scale_at(inputs.iteration, inputs.max_iterations)

    def scale_at(self, iteration: int, max_iterations: int) -> float:
        """The robust loss's scale (px) at this point of training."""
        c = self.config
        return soft_clamp_scale(c.repro_loss_type, c.soft_clamp, c.soft_clamp_min, c.soft_clamp_schedule,
                                iteration / max(1, max_iterations))

    def robust(self, errors: torch.Tensor, iteration: int, max_iterations: int) -> torch.Tensor:
        """Robust sum of pixel errors, as the reprojection term weighs them at this point of training."""
        return reprojection_loss(errors, self.config.repro_loss_type, self.scale_at(iteration, max_iterations))

    def _prior_term(self, inputs: LossInputs) -> torch.Tensor:
        if self.config.prior.type == "none":
            return inputs.errors.new_zeros(())
        value = self.prior.compute(inputs.cam_fixed[:, 2], inputs.scene, inputs.measured_depth, inputs.errors,
                                   inputs.iteration, inputs.max_iterations)
        return self.config.prior.weight * value

    def compute(self, inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The inlier fraction and the loss, both tensors on the device (no wait for the GPU here)."""
        if self.config.structure == "probabilistic":
            return self._probabilistic(inputs)
        return self._dsac_star(inputs)

    def _probabilistic(self, inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Every prediction gets the robust reprojection loss (no validity mask), plus lambda x prior."""
        if self.config.prior.type == "none":
            raise UserError(PROBABILISTIC_NEEDS_PRIOR)
        count = len(inputs.errors)
        if count == 0:
            return inputs.errors.new_zeros(()), inputs.errors.new_zeros((), requires_grad=True)
        repro = reprojection_loss(inputs.errors, self.config.repro_loss_type, self._scale(inputs)) / count
        inliers = (inputs.errors < self.config.inlier_px).float().mean()
        return inliers, repro + self._prior_term(inputs)

    def valid_mask(self, inputs: LossInputs) -> torch.Tensor:
        c = self.config
        depth = inputs.cam[:, 2]
        valid = (depth > c.depth_min) & (inputs.errors < c.hard_clamp) & (depth < c.depth_max)
        if inputs.targets is not None:
            has_target = inputs.targets.abs().sum(dim=1) > TARGET_PRESENT_L1
            far = (inputs.scene - inputs.targets).norm(dim=1) > DEPTH_SUPERVISION_RADIUS
            valid = valid & ~(has_target & far)
        return valid

    def _dsac_star(self, inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Valid predictions get the robust reprojection loss, invalid ones a 3D pull: to their depth target when
        they have one, else to the point at depth_target on their ray."""
        valid = self.valid_mask(inputs)
        count = max(1, len(inputs.errors))
        loss_valid = reprojection_loss(inputs.errors, self.config.repro_loss_type, self._scale(inputs), valid)
        loss_invalid = self._invalid_pull(inputs, ~valid)
        inliers = ((inputs.errors < self.config.inlier_px) & valid).float().sum() / count
        return inliers, (loss_valid + loss_invalid) / count + self._prior_term(inputs)

    def _invalid_pull(self, inputs: LossInputs, invalid: torch.Tensor) -> torch.Tensor:
        # The pull regularises the head only: it is no evidence about poses or focal length, and letting it move
        # them drags every camera towards its bad early predictions (hence cam_fixed).
        loss = inputs.errors.new_zeros(())
        if inputs.targets is not None:
            has_target = inputs.targets.abs().sum(dim=1) > TARGET_PRESENT_L1
            supervised = invalid & has_target
            loss = loss + _masked_sum((inputs.scene - inputs.targets).norm(dim=1), supervised)
            invalid = invalid & ~has_target
        proxy = inputs.rays * self.config.depth_target
        return loss + _masked_sum((inputs.cam_fixed - proxy).abs().sum(dim=1), invalid)
