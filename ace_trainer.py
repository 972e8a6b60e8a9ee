"""ACE mapping: fill a buffer of encoder features from augmented mapping images, then train the head with a
reprojection loss while (optionally) refining the poses and the shared focal length."""
from __future__ import annotations

import logging
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

import dataset_io
from ace_loss import (TARGET_PRESENT_L1, AceLoss, LossConfig, LossInputs, auto_prior,  # noqa: F401 (re-exported)
                      reprojection_loss, soft_clamp_scale)
from ace_network import Head, OUTPUT_SUBSAMPLE, load_encoder, load_head, save_head
from ace_util import AUTO_PRIOR_FLAG, UserError, atomic_write_text, progress_bar
from refine_calibration import CalibrationRefiner
from refine_poses import PoseRefiner

_log = logging.getLogger(__name__)

AUG_BRIGHTNESS_CONTRAST = 0.1  # +-10 % jitter of grey images
CONSTANT_SEED_DEPTH = 2.0      # depth prior when a seed image has neither a depth file nor a depth network


# ----------------------------------------------------------------------------------------------------------------
# Mapping data

@dataclass
class MappingData:
    images: list[str]
    cam_to_world: np.ndarray        # N x 4 x 4
    focals: np.ndarray              # N, pixels of the original images
    depth_files: list[str] | None
    image_size: tuple[int, int]     # (width, height) of the original images
    constant_depth: float | None = None  # seed without depth files: constant-depth prior
    estimated_depth: np.ndarray | None = None  # seed depth from a depth network (metres, original size)

    @property
    def shared_focal(self) -> float:
        return float(self.focals[0])


def _focal_for(args, width: int, height: int) -> float | None:
    if args.use_external_focal_length is not None and args.use_external_focal_length > 0:
        return float(args.use_external_focal_length)
    if args.use_heuristic_focal_length:
        return dataset_io.heuristic_focal(width, height)
    return None


def load_mapping_data(args, encoder=None, device="cpu") -> MappingData:
    """Images, poses and focal lengths from the flags (pose file, 4x4 pose files or a single seed image)."""
    depth_files = None
    if args.use_ace_pose_file is not None:
        entries = dataset_io.read_ace_pose_file(args.use_ace_pose_file, args.ace_pose_file_conf_threshold)
        if not entries:
            raise UserError(f"--use_ace_pose_file {args.use_ace_pose_file}: no entry with confidence >= "
                            f"{args.ace_pose_file_conf_threshold}")
        images = [e.path for e in entries]
        poses = [e.cam_to_world for e in entries]
        file_focals = np.array([e.focal for e in entries])
        if args.depth_files is not None:
            depth_files = _depth_files_of(images, args.rgb_files, args.depth_files)
    else:
        images = dataset_io.glob_files(args.rgb_files)
        file_focals = None
        if args.pose_files is not None:
            pose_files = dataset_io.glob_files(args.pose_files, "--pose_files")
            dataset_io.check_counts(images, pose_files, "--pose_files")
            poses = [dataset_io.load_cam_to_world(p) for p in pose_files]
        else:
            poses = [np.eye(4) for _ in images]
        if args.depth_files is not None:
            depth_files = dataset_io.glob_files(args.depth_files, "--depth_files")
            dataset_io.check_counts(images, depth_files, "--depth_files")
        images, poses, *rest = dataset_io.drop_invalid_poses(images, poses, [depth_files] if depth_files else None)
        depth_files = rest[0] if rest else None
    width, height = dataset_io.common_image_size(images)
    focal = _focal_for(args, width, height)
    if focal is None and file_focals is None:
        raise UserError("no focal length: pass --use_heuristic_focal_length True, --use_external_focal_length F "
                        "or --use_ace_pose_file")
    focals = np.full(len(images), focal) if focal is not None else file_focals
    data = MappingData(images, np.stack(poses), focals, depth_files, (width, height))
    if args.use_pose_seed >= 0:
        data = _seed_subset(data, args, encoder, device)
    return data


def _depth_files_of(images: list[str], rgb_files: str, depth_glob: str) -> list[str]:
    """Depth file of each image of a pose file: the images of `rgb_files` and the depth files correspond in
    sorted order (RGB-D ACE0 maps every round with depth)."""
    all_images = dataset_io.glob_files(rgb_files)
    all_depth = dataset_io.glob_files(depth_glob, "--depth_files")
    dataset_io.check_counts(all_images, all_depth, "--depth_files")
    by_image = {str(Path(i).resolve()): d for i, d in zip(all_images, all_depth)}
    missing = [i for i in images if str(Path(i).resolve()) not in by_image]
    if missing:
        raise UserError(f"--depth_files: {missing[0]} (from --use_ace_pose_file) is not among the images of "
                        f"'{rgb_files}', so it has no depth file")
    return [by_image[str(Path(i).resolve())] for i in images]


def _seed_subset(data: MappingData, args, encoder, device) -> MappingData:
    """The single seed image int(seed * N) with identity pose and a depth estimate: a depth file, ZoeDepth,
    two-view geometry with a partner image, or (last resort) a constant depth."""
    index = min(int(args.use_pose_seed * len(data.images)), len(data.images) - 1)
    subset = MappingData([data.images[index]], np.eye(4)[None], data.focals[index:index + 1],
                         [data.depth_files[index]] if data.depth_files else None, data.image_size)
    if subset.depth_files is not None:
        return subset
    import depth_estimation
    method = args.seed_depth
    if method == "auto":
        method = "zoedepth" if depth_estimation.zoedepth_available() else "twoview"
    if method == "zoedepth":
        subset.estimated_depth = depth_estimation.estimate_depth(dataset_io.load_image_rgb(subset.images[0]))
    elif method == "twoview":
        from two_view_seed import two_view_depth
        subset.estimated_depth = two_view_depth(data.images, index, float(data.focals[index]), encoder,
                                                args.image_resolution, device, CONSTANT_SEED_DEPTH)
        if subset.estimated_depth is None:
            _log.warning("two-view seed depth failed (no partner image with enough parallax)")
    if subset.estimated_depth is None:
        subset.constant_depth = CONSTANT_SEED_DEPTH
        _log.warning("seed image without depth: constant-depth prior of %.1f (scene units)", CONSTANT_SEED_DEPTH)
    return subset


def median_depth_of(data: MappingData) -> float:
    """Median depth of the mapping data's depth (seed estimate, constant prior or depth files): what
    '--prior_loss_location auto' uses."""
    if data.constant_depth is not None:
        return float(data.constant_depth)
    if data.estimated_depth is not None:
        return dataset_io.median_valid_depth([data.estimated_depth], AUTO_PRIOR_FLAG)
    if data.depth_files is not None:
        return dataset_io.median_depth_of_files(data.depth_files, AUTO_PRIOR_FLAG)
    raise UserError(f"{AUTO_PRIOR_FLAG} need depth: a seed image "
                    "(--use_pose_seed) or --depth_files; otherwise pass numbers")


# ----------------------------------------------------------------------------------------------------------------
# Augmented views

@dataclass
class View:
    grey: np.ndarray        # H x W float32 in [0, 1]
    valid: np.ndarray       # H/8 x W/8 bool: cell centre shows a pixel of the mapping image
    rotation: np.ndarray    # 3 x 3 and 3: camera motion of the augmentation,
    translation: np.ndarray  # new_cam = rotation @ old_cam + translation
    focal: float            # pixels of this view
    principal: tuple[float, float]  # principal point (pixels) of this view: the centre, moved by the shift
    scene_coords: np.ndarray | None  # 3 x H/8 x W/8 depth targets in the scene frame (0 = none)


def make_view(data: MappingData, index: int, short_side: int, rng: np.random.Generator, augment: bool,
              aug_scale: float, aug_rotation: float, aug_shift: float = 0.0, aug_viewpoint: float = 0.0) -> View:
    """Load one mapping image, rescale, jitter, (with depth) re-render it from a nearby viewpoint, then rotate
    and shift it; depth targets follow the same warps."""
    scale = rng.uniform(1.0 / aug_scale, aug_scale) if augment else 1.0
    grey, _ = dataset_io.load_network_input(data.images[index], int(short_side * scale))
    height, width = grey.shape
    if augment:
        brightness = rng.uniform(-AUG_BRIGHTNESS_CONTRAST, AUG_BRIGHTNESS_CONTRAST)
        contrast = rng.uniform(1 - AUG_BRIGHTNESS_CONTRAST, 1 + AUG_BRIGHTNESS_CONTRAST)
        grey = np.clip((grey - grey.mean()) * contrast + grey.mean() + brightness, 0.0, 1.0)
    focal = data.focals[index] * min(width, height) / min(data.image_size)
    depth = _depth_map(data, index, width, height)
    mask = np.ones((height, width), np.float32)
    rotation, translation = np.eye(3), np.zeros(3)
    if augment and aug_viewpoint > 0 and depth is not None and data.constant_depth is None:
        grey, depth, mask, rotation, translation = novel_viewpoint(grey, depth, focal, rng, aug_viewpoint)
    angle = rng.uniform(-aug_rotation, aug_rotation) if augment else 0.0
    shift = rng.uniform(-aug_shift, aug_shift, size=2) * (width, height) if augment else np.zeros(2)
    warp = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    warp[:, 2] += shift  # the principal point moves with the content
    if angle != 0.0 or shift.any():
        grey = cv2.warpAffine(grey, warp, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        mask = cv2.warpAffine(mask, warp, (width, height), flags=cv2.INTER_NEAREST, borderValue=0)
        if depth is not None:
            depth = cv2.warpAffine(depth, warp, (width, height), flags=cv2.INTER_NEAREST, borderValue=0)
    in_plane = np.eye(3)
    in_plane[:2, :2] = warp[:, :2]  # pixel offsets from the principal point rotate like camera x/y
    rotation, translation = in_plane @ rotation, in_plane @ translation
    principal = (width / 2 + float(shift[0]), height / 2 + float(shift[1]))
    grid_v = np.arange(OUTPUT_SUBSAMPLE // 2, height, OUTPUT_SUBSAMPLE)
    grid_u = np.arange(OUTPUT_SUBSAMPLE // 2, width, OUTPUT_SUBSAMPLE)
    valid = mask[np.ix_(grid_v, grid_u)] > 0
    targets = None
    if depth is not None:
        targets = _scene_targets(data.cam_to_world[index], depth[np.ix_(grid_v, grid_u)], grid_u, grid_v, focal,
                                 principal, rotation, translation)
    return View(grey.astype(np.float32), valid, rotation, translation, float(focal), principal, targets)


def _depth_map(data: MappingData, index: int, width: int, height: int) -> np.ndarray | None:
    """Depth (scene units, 0 = unknown) of a mapping image at the network resolution, if it has any."""
    if data.depth_files is not None or data.estimated_depth is not None:
        depth = dataset_io.load_depth_png(data.depth_files[index]) if data.depth_files else data.estimated_depth
        return cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
    if data.constant_depth is not None:
        return np.full((height, width), data.constant_depth, np.float32)
    return None


def _scene_targets(cam_to_world, depth, grid_u, grid_v, focal, principal, rotation, translation) -> np.ndarray:
    """Scene points on the rays of the cell centres of an augmented view with this depth (0 = no target)."""
    u, v = np.meshgrid(grid_u, grid_v)
    cam = np.stack([(u - principal[0]) / focal * depth, (v - principal[1]) / focal * depth, depth])
    # augmented camera -> original camera -> scene
    cam = rotation.T @ (cam.reshape(3, -1) - translation[:, None])
    scene = cam_to_world[:3, :3] @ cam + cam_to_world[:3, 3:4]
    scene[:, depth.reshape(-1) <= 0] = 0.0
    return scene.reshape(3, *depth.shape).astype(np.float32)


def novel_viewpoint(grey: np.ndarray, depth: np.ndarray, focal: float, rng: np.random.Generator,
                    max_angle_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Re-render an image with depth from a camera orbiting the scene (pivot on the optical axis at the median
    depth) by up to `max_angle_deg` about a random axis perpendicular to the optical axis.

    A single view teaches the head nothing about how features change with the viewpoint; these views do, and
    keep registrations of neighbouring images from being pulled towards the seed view.
    Returns grey, depth, mask of the new view and its motion (new_cam = rotation @ old_cam + translation)."""
    known = depth > 0
    pivot = np.array([0.0, 0.0, float(np.median(depth[known]))]) if known.any() else np.zeros(3)
    direction = rng.uniform(0, 2 * np.pi)
    angle = np.radians(rng.uniform(-max_angle_deg, max_angle_deg))
    rotation = dataset_io.rotation_about(np.array([np.cos(direction), np.sin(direction), 0.0]), angle)
    translation = pivot - rotation @ pivot
    new_grey, new_depth = _splat(grey, depth, focal, rotation, translation)
    new_grey, new_depth, mask = _fill_splat_holes(new_grey, new_depth)
    return new_grey, new_depth, mask, rotation, translation


def _splat(grey: np.ndarray, depth: np.ndarray, focal: float, rotation: np.ndarray, translation: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Forward-project every pixel with depth into the moved camera; the nearest point wins each pixel (depth 0
    where none lands)."""
    height, width = grey.shape
    v, u = np.nonzero(depth > 0)
    d = depth[v, u]
    cam = np.stack([(u + 0.5 - width / 2) / focal * d, (v + 0.5 - height / 2) / focal * d, d])
    new = rotation @ cam + translation[:, None]
    ahead = new[2] > 1e-6
    new_u = np.floor(new[0] / np.where(ahead, new[2], 1) * focal + width / 2).astype(np.int64)
    new_v = np.floor(new[1] / np.where(ahead, new[2], 1) * focal + height / 2).astype(np.int64)
    inside = ahead & (new_u >= 0) & (new_u < width) & (new_v >= 0) & (new_v < height)
    target = (new_v * width + new_u)[inside]
    order = np.lexsort((new[2][inside], target))  # by pixel, nearest first
    first = order[np.unique(target[order], return_index=True)[1]]
    out_grey = np.zeros(height * width, np.float32)
    out_depth = np.zeros(height * width, np.float32)
    out_grey[target[first]] = grey[v[inside][first], u[inside][first]]
    out_depth[target[first]] = new[2][inside][first]
    return out_grey.reshape(height, width), out_depth.reshape(height, width)


def _fill_splat_holes(grey: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-pixel cracks get the nearest neighbouring depth; disocclusions and the area outside the original
    image stay without depth (mask 0). Every hole's grey value is inpainted so that the encoder sees no hard
    edges."""
    hit = (depth > 0).astype(np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    covered = cv2.morphologyEx(hit, cv2.MORPH_CLOSE, cross)
    crack = (covered > 0) & (hit == 0)
    nearest = cv2.dilate(np.where(hit > 0, 1.0 / np.maximum(depth, 1e-6), 0).astype(np.float32), cross)
    depth = depth.copy()
    depth[crack] = 1.0 / np.maximum(nearest[crack], 1e-6)
    depth[covered == 0] = 0
    filled = cv2.inpaint(np.round(grey * 255).astype(np.uint8), 1 - hit, 3, cv2.INPAINT_TELEA)
    grey = np.where(hit > 0, grey, filled.astype(np.float32) / 255)
    return grey, depth, covered.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Training buffer

@dataclass
class TrainingBuffer:
    features: torch.Tensor   # N x C
    pixels: torch.Tensor     # N x 2, relative to the principal point
    focals: torch.Tensor     # N, pixels of the augmented view at the initial focal
    rotations: torch.Tensor  # N x 3 x 3 and N x 3: augmentation motion of the camera
    translations: torch.Tensor
    image_ids: torch.Tensor  # N
    targets: torch.Tensor | None  # N x 3 depth targets (0 = none)

    def __len__(self) -> int:
        return self.features.shape[0]

    def batch(self, indices: torch.Tensor, device) -> dict:
        def take(tensor):
            return None if tensor is None else tensor[indices].to(device, non_blocking=True)
        return {"features": take(self.features).float(), "pixels": take(self.pixels), "focals": take(self.focals),
                "rotations": take(self.rotations), "translations": take(self.translations),
                "image_ids": take(self.image_ids), "targets": take(self.targets)}


def buffer_size(args, num_images: int) -> int:
    # A seed (one image) gets max_dataset_passes differently augmented views of it, like any mapping set.
    return min(args.max_dataset_passes * num_images * args.samples_per_image, args.max_training_buffer_size)


@torch.no_grad()
def fill_training_buffer(data: MappingData, encoder, args, device, storage_device) -> TrainingBuffer:
    """Sample encoder features of augmented views until the buffer is full or the passes are used up."""
    capacity = buffer_size(args, len(data.images))
    per_image = args.samples_per_image
    rng = np.random.default_rng(args.base_seed + 511)
    order = [int(i) for _ in range(args.max_dataset_passes) for i in rng.permutation(len(data.images))]
    view_seeds = rng.integers(0, 2 ** 31, size=len(order))
    chunks: dict[str, list] = {k: [] for k in TrainingBuffer.__dataclass_fields__}
    filled = 0
    sampler = torch.Generator().manual_seed(args.base_seed + 4095)
    dtype = torch.float16 if args.use_half and device.type == "cuda" else torch.float32

    def load(item):
        index, view_seed = item
        return index, make_view(data, index, args.image_resolution, np.random.default_rng(view_seed),
                                args.use_aug, args.aug_scale, args.aug_rotation, args.aug_shift, args.aug_viewpoint)

    workers = max(1, args.num_data_workers)
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            progress_bar(total=capacity, desc="Filling training buffer", unit="sample", leave=False) as progress:
        for index, view in pool.map(load, zip(order, view_seeds)):
            if filled >= capacity:
                break
            take = min(per_image, capacity - filled)
            added = _sample_view(view, index, take, encoder, device, sampler, dtype, storage_device, chunks)
            filled += added
            progress.update(added)
    if filled == 0:
        raise UserError("no valid training samples could be extracted from the mapping images")
    buffer = {k: torch.cat(v) if v else None for k, v in chunks.items()}
    _log.info("training buffer: %d samples from %d images", filled, len(data.images))
    return TrainingBuffer(**buffer)


def _sample_view(view: View, index: int, count: int, encoder, device, sampler, dtype, storage_device,
                 chunks) -> int:
    grey = torch.from_numpy(view.grey)[None, None].to(device)
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        features = encoder(encoder.normalise(grey))[0]
    channels, cells_h, cells_w = features.shape
    valid = torch.from_numpy(view.valid[:cells_h, :cells_w]).reshape(-1).float()
    if valid.sum() == 0:
        return 0
    cells = torch.multinomial(valid, count, replacement=True, generator=sampler)
    flat = features.reshape(channels, -1).t()[cells.to(device)]
    rows, cols = cells // cells_w, cells % cells_w
    pixels = torch.stack([cols * OUTPUT_SUBSAMPLE + OUTPUT_SUBSAMPLE / 2 - view.principal[0],
                          rows * OUTPUT_SUBSAMPLE + OUTPUT_SUBSAMPLE / 2 - view.principal[1]], dim=1).float()
    chunks["features"].append(flat.to(dtype).to(storage_device))
    chunks["pixels"].append(pixels.to(storage_device))
    chunks["focals"].append(torch.full((count,), view.focal).to(storage_device))
    chunks["rotations"].append(torch.from_numpy(view.rotation).float().expand(count, 3, 3).to(storage_device))
    chunks["translations"].append(torch.from_numpy(view.translation).float().expand(count, 3).to(storage_device))
    chunks["image_ids"].append(torch.full((count,), index, dtype=torch.long).to(storage_device))
    if view.scene_coords is not None:
        targets = torch.from_numpy(view.scene_coords[:, :cells_h, :cells_w]).reshape(3, -1).t()[cells]
        chunks["targets"].append(targets.to(storage_device))
    return count


# ----------------------------------------------------------------------------------------------------------------
# Schedules

class LearningRateSchedule:
    """circle (one-cycle cosine), constant, or 1cyclepoly (warm-up, plateau, linear cooldown that an
    early-stopping trigger can start before the last `cooldown` iterations)."""

    def __init__(self, args, optimizer: torch.optim.Optimizer):
        self.args, self.optimizer = args, optimizer
        self.max_iterations = args.iterations
        self.cooldown_start: int | None = None
        self.cooldown_from = args.learning_rate_max
        self.recent_inliers: list[float] = []

    def learning_rate(self, iteration: int) -> float:
        a = self.args
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
        a = self.args
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


def measured_depth(targets: torch.Tensor, initial_world_to_cam: torch.Tensor, rotations: torch.Tensor,
                   translations: torch.Tensor) -> torch.Tensor:
    """Camera depth of each depth target in its augmented view (0 = no target). Targets were built from the
    initial poses, so mapping them back through those poses gives the measured depth whatever the pose refiner
    does since."""
    cam = initial_world_to_cam[:, :, :3] @ targets[:, :, None] + initial_world_to_cam[:, :, 3:]
    depth = (rotations @ cam)[:, 2, 0] + translations[:, 2]
    present = targets.abs().sum(dim=1) > TARGET_PRESENT_L1
    return torch.where(present, depth, torch.zeros_like(depth))


# ----------------------------------------------------------------------------------------------------------------
# Trainer

class Trainer:
    """One mapping run: buffer, optimisation loop, output files."""

    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        self._seed_everything(args.base_seed)
        self.encoder = load_encoder(args.encoder_path, device)
        self.data = load_mapping_data(args, self.encoder, device)
        self.seed_mode = args.use_pose_seed >= 0
        _log.info("mapping %d image(s) of %dx%d, focal %.1f px%s", len(self.data.images), *self.data.image_size,
                  self.data.shared_focal, " (seed image)" if self.seed_mode else "")
        self.loss = self._create_loss()
        self.head = self._create_head()
        self.pose_refiner = PoseRefiner(torch.from_numpy(np.linalg.inv(self.data.cam_to_world)).float(),
                                        args.pose_refinement, args.refinement_ortho, args.pose_refinement_lr,
                                        args.pose_refinement_weight, args.pose_refinement_gauge,
                                        args.pose_refinement_update).to(device)
        if args.refine_calibration and len(set(np.round(self.data.focals, 6))) != 1:
            raise UserError("--refine_calibration needs one focal length shared by all mapping images")
        self.calibration = CalibrationRefiner(self.data.shared_focal, args.refine_calibration,
                                              args.refine_calibration_lr).to(device)
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=args.learning_rate_min)
        self.schedule = LearningRateSchedule(args, self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self._use_amp)
        self.log_lines: list[str] = []
        self.visualizer = self._create_visualizer() if args.render_visualization else None

    @property
    def _use_amp(self) -> bool:
        return self.args.use_half and self.device.type == "cuda"

    @staticmethod
    def _seed_everything(seed: int) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def _create_loss(self) -> AceLoss:
        a = self.args
        if "auto" in (str(a.prior_loss_location), str(a.prior_loss_bandwidth)):
            a.prior_loss_location, a.prior_loss_bandwidth = auto_prior(
                median_depth_of(self.data), a.prior_loss_location, a.prior_loss_bandwidth)
            _log.info("prior from the median depth: location %.3f, bandwidth %.3f", a.prior_loss_location,
                      a.prior_loss_bandwidth)
        has_depth = self.data.depth_files is not None or self.data.estimated_depth is not None or \
            self.data.constant_depth is not None
        if a.loss_structure != "dsac*" or a.prior_loss_type != "none":
            _log.info("loss: %s, prior %s (weight %g, bandwidth %g, location %g)", a.loss_structure,
                      a.prior_loss_type, a.prior_loss_weight, float(a.prior_loss_bandwidth),
                      float(a.prior_loss_location))
        return AceLoss(LossConfig.from_args(a), has_depth, self.device)

    def _create_head(self) -> Head:
        a = self.args
        if a.load_weights is not None:
            head = load_head(a.load_weights, self.encoder, self.device)
            _log.info("warm start from %s (width %d, mean kept)", a.load_weights, head.width)
            return head
        head = Head(self.encoder.feature_dim, a.head_width, a.num_head_blocks, a.use_homogeneous)
        centres = self.data.cam_to_world[:, :3, 3].mean(axis=0)
        head.mean.copy_(torch.from_numpy(centres).float().view(1, 3, 1, 1))
        return head.to(self.device)

    def _create_visualizer(self):
        from ace_visualizer import MappingVisualizer, RenderSettings
        a = self.args
        visualizer = MappingVisualizer(RenderSettings.from_args(a, self.device.type), Path(a.output_map_file).stem,
                                       self.pose_refiner.initial.cpu().numpy(), a.render_map_error_threshold,
                                       a.render_map_depth_filter, a.use_existing_vis_buffer)
        visualizer.depth_histogram = getattr(a, "render_depth_hist", False)
        return visualizer

    # -- loop ---------------------------------------------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        start = time.time()
        storage = torch.device("cpu") if a.training_buffer_cpu else self.device
        buffer = fill_training_buffer(self.data, self.encoder, a, self.device, storage)
        _log.info("buffer filled in %.1f s", time.time() - start)
        if len(buffer) < a.batch_size:
            _log.info("buffer smaller than --batch_size: using batches of %d", len(buffer))
        batch_size = min(a.batch_size, len(buffer))
        generator = torch.Generator().manual_seed(a.base_seed + 8191)
        iteration = 0
        progress = progress_bar(total=a.iterations, desc="Mapping", unit="it", leave=False)
        while iteration < self.schedule.max_iterations:
            permutation = torch.randperm(len(buffer), generator=generator)
            for begin in range(0, len(buffer) - batch_size + 1, batch_size):
                if iteration >= self.schedule.max_iterations:
                    break
                loss, inliers = self._training_step(buffer.batch(permutation[begin:begin + batch_size],
                                                                 self.device), iteration)
                if iteration % a.iterations_output == 0:
                    self._log_stats(iteration, time.time() - start, loss, inliers)
                    if self.visualizer is not None:
                        with torch.no_grad():
                            self.visualizer.render_iteration(iteration, self.pose_refiner().cpu().numpy())
                progress.set_postfix(loss=f"{loss:.1f}", inliers=f"{inliers:.2f}")
                progress.update(1)
                iteration += 1
        progress.close()
        self._log_stats(iteration, time.time() - start, loss, inliers)
        _log.info("mapping done: %d iterations in %.1f s, final inlier fraction %.2f%s", iteration,
                  time.time() - start, inliers,
                  f", focal {self.calibration.focal():.1f} px" if self.calibration.refining else "")
        entries = self._save_outputs()
        if self.visualizer is not None:
            from ace_network import Regressor
            regressor = Regressor(self.encoder, self.head).eval()
            self.visualizer.finish_map(regressor, entries, a.image_resolution, self.device)

    def _training_step(self, batch: dict, iteration: int) -> tuple[float, float]:
        a = self.args
        self.schedule.step(iteration, getattr(self, "_last_inliers", 0.0))
        with torch.autocast(self.device.type, enabled=self._use_amp):
            predicted = self.head(batch["features"])
        predicted = predicted.float()
        world_to_cam = self.pose_refiner(batch["image_ids"])
        cam = batch["rotations"] @ (world_to_cam[:, :, :3] @ predicted[:, :, None] + world_to_cam[:, :, 3:])
        cam = cam[:, :, 0] + batch["translations"]
        focals = batch["focals"] * self.calibration.scale()
        depth = cam[:, 2].clamp(min=a.depth_min)
        projected = cam[:, :2] / depth[:, None] * focals[:, None]
        errors = (projected - batch["pixels"]).abs().sum(dim=1)  # L1 reprojection error, as the original
        cam_fixed = (batch["rotations"] @ (world_to_cam[:, :, :3].detach() @ predicted[:, :, None]
                                           + world_to_cam[:, :, 3:].detach()))[:, :, 0] + batch["translations"]
        rays = torch.cat([batch["pixels"] / focals.detach()[:, None], torch.ones_like(focals)[:, None]], dim=1)
        inliers, loss = self.loss.compute(LossInputs(
            predicted, cam, cam_fixed, errors, rays, batch["targets"], self._measured_depth(batch),
            iteration, self.schedule.max_iterations))
        if not torch.isfinite(loss):
            raise RuntimeError(f"training diverged at iteration {iteration} (loss {float(loss)})")
        self.optimizer.zero_grad(set_to_none=True)
        self.pose_refiner.zero_grad_step()
        self.calibration.zero_grad_step()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if iteration >= a.pose_refinement_wait:
            self.pose_refiner.step()
        self.calibration.step()
        if self.visualizer is not None:
            self.visualizer.record_batch(predicted, errors, cam[:, 2])
        self._last_inliers = inliers
        return float(loss.detach()), inliers

    def _measured_depth(self, batch: dict) -> torch.Tensor | None:
        if batch["targets"] is None or self.args.prior_loss_type != "rgbd_laplace_nll":
            return None
        return measured_depth(batch["targets"], self.pose_refiner.initial[batch["image_ids"]], batch["rotations"],
                              batch["translations"])

    # -- outputs ------------------------------------------------------------------------------------------------

    def _log_stats(self, iteration: int, elapsed: float, loss: float, inliers: float) -> None:
        with torch.no_grad():
            moved = (self.pose_refiner()[:, :, 3] - self.pose_refiner.initial[:, :, 3]).norm(dim=1)
        fields = [iteration, f"{elapsed:.2f}", f"{loss:.4f}", f"{inliers:.4f}", f"{float(moved.mean()):.6f}",
                  f"{float(moved.min()):.6f}", f"{float(moved.max()):.6f}"]
        if self.calibration.refining:
            fields.append(f"{self.calibration.focal():.4f}")
        self.log_lines.append(" ".join(str(f) for f in fields))

    def _save_outputs(self) -> list[dataset_io.PoseEntry]:
        out = Path(self.args.output_map_file)
        stem = out.with_suffix("")
        save_head(out, self.head, self.encoder.encoder_id)
        atomic_write_text(stem.parent / f"{stem.name}.txt", "\n".join(self.log_lines) + "\n")
        with torch.no_grad():
            refined = self.pose_refiner().cpu().numpy()
        focal = self.calibration.focal() if self.calibration.refining else None
        entries = []
        for index, path in enumerate(self.data.images):
            world_to_cam = np.eye(4)
            world_to_cam[:3] = refined[index]
            entries.append(dataset_io.PoseEntry(path, world_to_cam, focal or float(self.data.focals[index]),
                                                math.inf))
        dataset_io.write_ace_pose_file(stem.parent / f"poses_{stem.name}_preliminary.txt", entries)
        _log.info("wrote %s, %s.txt and poses_%s_preliminary.txt", out, stem.name, stem.name)
        return entries
