"""ACE mapping: fill a buffer of encoder features from augmented mapping images, then train the head with a
reprojection loss while (optionally) refining the poses and the shared focal length."""
from __future__ import annotations

import logging
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

import dataset_io
from ace_loss import (TARGET_PRESENT_L1, AceLoss, LossConfig, LossInputs, auto_prior,  # noqa: F401 (re-exported)
                      reprojection_errors, reprojection_loss, soft_clamp_scale)
from ace_network import Head, OUTPUT_SUBSAMPLE, load_encoder, load_head, save_head
from ace_schedule import LearningRateSchedule, ScheduleConfig
from ace_util import UserError, atomic_write_text, config_from_args, progress_bar
from ace_vis_util import RenderFlags
from dataset import DataConfig, MappingData, View, load_mapping_data, make_view, median_depth_of
from match_loss import MatchSet, build_match_set, match_loss
from refine_calibration import CalibrationRefiner
from refine_poses import PoseRefiner

_log = logging.getLogger(__name__)

MATCH_BATCH_DIVISOR = 4  # matches per step: a quarter of the batch size (each gives two transfers)


# ----------------------------------------------------------------------------------------------------------------
# Configuration: train_ace.py's flags, by module; fields have the flags' names

@dataclass(frozen=True)
class BufferConfig:
    max_dataset_passes: int
    samples_per_image: int
    max_training_buffer_size: int
    base_seed: int
    use_half: bool           # fp16 features and autocast on CUDA; bfloat16 autocast of the head on CPU
    num_data_workers: int
    image_resolution: int
    use_aug: bool
    aug_scale: float
    aug_rotation: int
    aug_shift: float
    aug_viewpoint: float


@dataclass(frozen=True)
class MappingConfig:
    """What a mapping run reads. The trainer takes shared values from the part that owns them: the seed and fp16
    from `buffer`, the iterations and learning rates from `schedule`, depth_min from `loss`."""
    output_map_file: Path
    encoder_path: str
    data: DataConfig
    buffer: BufferConfig
    schedule: ScheduleConfig
    loss: LossConfig
    load_weights: Path | None
    head_width: int
    num_head_blocks: int
    use_homogeneous: bool
    pose_refinement: str
    refinement_ortho: str
    pose_refinement_lr: float
    pose_refinement_weight: float
    pose_refinement_gauge: str
    pose_refinement_update: str
    pose_refinement_input: str
    pose_refinement_wait: int
    match_loss_weight: float
    refine_calibration: bool
    refine_calibration_lr: float
    training_buffer_cpu: bool
    batch_size: int
    iterations_output: int
    render: RenderFlags | None  # None: no frames
    render_map_error_threshold: int
    render_map_depth_filter: int
    use_existing_vis_buffer: str | None
    render_depth_hist: bool

    @classmethod
    def from_args(cls, args) -> "MappingConfig":
        return config_from_args(cls, args, data=config_from_args(DataConfig, args),
                                buffer=config_from_args(BufferConfig, args),
                                schedule=config_from_args(ScheduleConfig, args), loss=LossConfig.from_args(args),
                                render=RenderFlags.from_args(args))


# ----------------------------------------------------------------------------------------------------------------
# Training buffer

@dataclass
class TrainingBuffer:
    features: torch.Tensor   # N x C
    pixels: torch.Tensor     # N x 2, relative to the principal point
    focals: torch.Tensor     # N x 2 (fx, fy), pixels of the augmented view at the initial focal
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


def buffer_size(config: BufferConfig, num_images: int) -> int:
    # A seed (one image) gets max_dataset_passes differently augmented views of it, like any mapping set.
    return min(config.max_dataset_passes * num_images * config.samples_per_image, config.max_training_buffer_size)


@torch.no_grad()
def fill_training_buffer(data: MappingData, encoder, config: BufferConfig, device: torch.device,
                         storage_device) -> TrainingBuffer:
    """Sample encoder features of augmented views until the buffer is full or the passes are used up."""
    capacity = buffer_size(config, len(data.images))
    per_image = config.samples_per_image
    rng = np.random.default_rng(config.base_seed + 511)
    order = [int(i) for _ in range(config.max_dataset_passes) for i in rng.permutation(len(data.images))]
    view_seeds = rng.integers(0, 2 ** 31, size=len(order))
    chunks: dict[str, list] = {k: [] for k in TrainingBuffer.__dataclass_fields__}
    filled = 0
    sampler = torch.Generator().manual_seed(config.base_seed + 4095)
    dtype = torch.float16 if config.use_half and device.type == "cuda" else torch.float32

    def load(item):
        index, view_seed = item
        return index, make_view(data, index, config.image_resolution, np.random.default_rng(view_seed),
                                config.use_aug, config.aug_scale, config.aug_rotation, config.aug_shift,
                                config.aug_viewpoint)

    workers = max(1, config.num_data_workers)
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
    focals = torch.tensor([view.camera.fx, view.camera.fy], dtype=torch.float32)
    chunks["focals"].append(focals.expand(count, 2).to(storage_device))
    chunks["rotations"].append(torch.from_numpy(view.rotation).float().expand(count, 3, 3).to(storage_device))
    chunks["translations"].append(torch.from_numpy(view.translation).float().expand(count, 3).to(storage_device))
    chunks["image_ids"].append(torch.full((count,), index, dtype=torch.long).to(storage_device))
    if view.scene_coords is not None:
        targets = torch.from_numpy(view.scene_coords[:, :cells_h, :cells_w]).reshape(3, -1).t()[cells]
        chunks["targets"].append(targets.to(storage_device))
    return count


def in_camera(batch: dict, world_to_cam: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
    """B x 3 scene coordinates in the (augmented) camera of their image."""
    cam = batch["rotations"] @ (world_to_cam[:, :, :3] @ scene[:, :, None] + world_to_cam[:, :, 3:])
    return cam[:, :, 0] + batch["translations"]


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

    def __init__(self, config: MappingConfig, device: torch.device):
        self.config, self.device = config, device
        self._seed_everything(config.buffer.base_seed)
        self.encoder = load_encoder(config.encoder_path, device)
        self.data = load_mapping_data(config.data, self.encoder, device)
        self.seed_mode = config.data.use_pose_seed >= 0
        first = self.data.cameras[0]
        _log.info("mapping %d image(s), the first %dx%d with focal %.1f px%s", len(self.data.images), first.width,
                  first.height, first.fx, " (seed image)" if self.seed_mode else "")
        _log.info("head precision: %s", str(self._amp_dtype).removeprefix("torch.") if self._use_amp else "float32")
        self.loss = self._create_loss()
        self.head = self._create_head()
        self.pose_refiner = PoseRefiner(torch.from_numpy(np.linalg.inv(self.data.cam_to_world)).float(),
                                        config.pose_refinement, config.refinement_ortho,
                                        config.pose_refinement_lr, config.pose_refinement_weight,
                                        config.pose_refinement_gauge, config.pose_refinement_update,
                                        config.pose_refinement_input).to(device)
        # one relative change of every image's focal (a shared focal when they share one camera)
        self.calibration = CalibrationRefiner(float(self.data.focals[0]), config.refine_calibration,
                                              config.refine_calibration_lr).to(device)
        # fused on CUDA: one kernel per step, and the GradScaler then checks for overflow without waiting for the GPU
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=config.schedule.learning_rate_min,
                                           fused=device.type == "cuda" or None)
        self._pending: tuple[int, torch.Tensor] | None = None  # the last step's (iteration, [loss, inliers])
        self._last_stats = (math.nan, 0.0)  # loss and inlier fraction of the last step read
        self.schedule = LearningRateSchedule(config.schedule, self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self._use_amp and device.type == "cuda")
        self.matches = self._create_matches()
        self.log_lines: list[str] = []
        self.visualizer = self._create_visualizer() if config.render is not None else None

    @property
    def _use_amp(self) -> bool:
        return self.config.buffer.use_half and self.device.type in ("cuda", "cpu")

    @property
    def _amp_dtype(self) -> torch.dtype:
        # CPUs multiply bfloat16 (AVX-512 BF16) but not fp16 faster than fp32; bfloat16 needs no loss scaling
        return torch.float16 if self.device.type == "cuda" else torch.bfloat16

    @staticmethod
    def _seed_everything(seed: int) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def _create_loss(self) -> AceLoss:
        config, prior = self.config.loss, self.config.loss.prior
        if "auto" in (str(prior.location), str(prior.bandwidth)):
            location, bandwidth = auto_prior(median_depth_of(self.data), prior.location, prior.bandwidth)
            prior = replace(prior, location=location, bandwidth=bandwidth)
            config = replace(config, prior=prior)
            _log.info("prior from the median depth: location %.3f, bandwidth %.3f", location, bandwidth)
        has_depth = self.data.depth_files is not None or self.data.estimated_depth is not None or \
            self.data.constant_depth is not None
        if config.structure != "dsac*" or prior.type != "none":
            _log.info("loss: %s, prior %s (weight %g, bandwidth %g, location %g)", config.structure, prior.type,
                      prior.weight, prior.bandwidth, prior.location)
        return AceLoss(config, has_depth, self.device)

    def _create_head(self) -> Head:
        a = self.config
        if a.load_weights is not None:
            head = load_head(a.load_weights, self.encoder, self.device)
            _log.info("warm start from %s (width %d, mean kept)", a.load_weights, head.width)
            return head
        head = Head(self.encoder.feature_dim, a.head_width, a.num_head_blocks, a.use_homogeneous)
        centres = self.data.cam_to_world[:, :3, 3].mean(axis=0)
        head.mean.copy_(torch.from_numpy(centres).float().view(1, 3, 1, 1))
        return head.to(self.device)

    def _create_matches(self) -> MatchSet | None:
        a = self.config
        if a.match_loss_weight <= 0 or self.seed_mode:
            return None
        matches = build_match_set(self.data.images, self.data.cameras, self.data.cam_to_world, self.encoder,
                                  a.buffer.image_resolution, self.device, a.buffer.base_seed)
        self._match_generator = torch.Generator().manual_seed(a.buffer.base_seed + 16383)
        return None if matches is None else matches.to(self.device)

    def _match_term(self, iteration: int) -> tuple[torch.Tensor, float]:
        """The multi-view term (match_loss.py) on a random batch of matches, a quarter of the batch size."""
        count = max(1, self.config.batch_size // MATCH_BATCH_DIVISOR)
        indices = torch.randint(len(self.matches), (count,), generator=self._match_generator).to(self.device)
        loss, fraction = match_loss(
            self._predict, self.matches.take(indices), self.pose_refiner, self.calibration.scale(),
            lambda errors: self.loss.robust(errors, iteration, self.schedule.max_iterations),
            self.config.loss.depth_min)
        return self.config.match_loss_weight * loss, fraction

    def _predict(self, features: torch.Tensor) -> torch.Tensor:
        """Scene coordinates of N x C features: the head under autocast (fp16 on CUDA, bfloat16 on CPU), the
        result in fp32 so that projections stay exact."""
        with torch.autocast(self.device.type, dtype=self._amp_dtype, enabled=self._use_amp):
            predicted = self.head(features)
        return predicted.float()

    def _create_visualizer(self):
        from ace_visualizer import MappingVisualizer, RenderSettings
        a = self.config
        visualizer = MappingVisualizer(RenderSettings.for_device(a.render, self.device.type),
                                       Path(a.output_map_file).stem, self.pose_refiner.initial.cpu().numpy(),
                                       a.render_map_error_threshold, a.render_map_depth_filter,
                                       a.use_existing_vis_buffer)
        visualizer.depth_histogram = a.render_depth_hist
        return visualizer

    # -- loop ---------------------------------------------------------------------------------------------------

    def run(self) -> None:
        a = self.config
        start = time.time()
        storage = torch.device("cpu") if a.training_buffer_cpu else self.device
        buffer = fill_training_buffer(self.data, self.encoder, a.buffer, self.device, storage)
        _log.info("buffer filled in %.1f s", time.time() - start)
        if len(buffer) < a.batch_size:
            _log.info("buffer smaller than --batch_size: using batches of %d", len(buffer))
        batch_size = min(a.batch_size, len(buffer))
        generator = torch.Generator().manual_seed(a.buffer.base_seed + 8191)
        iteration = 0
        progress = progress_bar(total=a.schedule.iterations, desc="Mapping", unit="it", leave=False)
        while iteration < self.schedule.max_iterations:
            # drawn on the CPU as always (same order), then kept beside the buffer: a CPU index would be copied to
            # the GPU for every tensor of every batch, each copy waiting for the work queued before it
            permutation = torch.randperm(len(buffer), generator=generator).to(buffer.features.device)
            for begin in range(0, len(buffer) - batch_size + 1, batch_size):
                if iteration >= self.schedule.max_iterations:
                    break
                self._training_step(buffer.batch(permutation[begin:begin + batch_size], self.device), iteration)
                if iteration % a.iterations_output == 0:
                    self._log_stats(iteration, time.time() - start, *self._read_stats())
                    if self.visualizer is not None:
                        with torch.no_grad():
                            self.visualizer.render_iteration(iteration, self.pose_refiner().cpu().numpy())
                loss, inliers = self._last_stats  # the previous step's, so that the display never waits
                progress.set_postfix(loss=f"{loss:.1f}", inliers=f"{inliers:.2f}", refresh=False)
                progress.update(1)
                iteration += 1
        progress.close()
        loss, inliers = self._read_stats()
        self._log_stats(iteration, time.time() - start, loss, inliers)
        _log.info("mapping done: %d iterations in %.1f s, final inlier fraction %.2f%s%s", iteration,
                  time.time() - start, inliers,
                  f", focal {self.calibration.focal():.1f} px" if self.calibration.refining else "",
                  f", match transfers within 10 px {self._match_inliers:.2f}" if self.matches is not None else "")
        entries = self._save_outputs()
        if self.visualizer is not None:
            from ace_network import Regressor
            regressor = Regressor(self.encoder, self.head).eval()
            cameras = [c.with_focal(e.focal) for c, e in zip(self.data.cameras, entries)]  # the refined focal
            self.visualizer.finish_map(regressor, entries, a.buffer.image_resolution, self.device, cameras)

    def _read_stats(self) -> tuple[float, float]:
        """Loss and inlier fraction of the last step as numbers. Reading them waits for the GPU to finish that step,
        so a step reads its predecessor's (which has finished or nearly) while its own work is queued."""
        if self._pending is not None:
            iteration, stats = self._pending
            self._pending = None
            loss, inliers = stats.tolist()
            if not math.isfinite(loss):
                raise RuntimeError(f"training diverged at iteration {iteration} (loss {loss})")
            self._last_stats = (loss, inliers)
        return self._last_stats

    def _training_step(self, batch: dict, iteration: int) -> None:
        """One update; its loss and inlier fraction stay on the device until `_read_stats`."""
        a = self.config
        self.schedule.step(iteration, self._read_stats()[1])
        predicted = self._predict(batch["features"])
        world_to_cam = self.pose_refiner(batch["image_ids"])
        cam = in_camera(batch, world_to_cam, predicted)
        cam_fixed = in_camera(batch, world_to_cam.detach(), predicted)  # for terms that regularise the head only
        focals = batch["focals"] * self.calibration.scale()
        errors = reprojection_errors(cam, focals, batch["pixels"], a.loss.depth_min)
        rays = torch.cat([batch["pixels"] / focals.detach(), torch.ones_like(focals[:, :1])], dim=1)
        inliers, loss = self.loss.compute(LossInputs(
            predicted, cam, cam_fixed, errors, rays, batch["targets"], self._measured_depth(batch),
            iteration, self.schedule.max_iterations))
        if self.matches is not None:
            term, self._match_inliers = self._match_term(iteration)
            loss = loss + term
        self.optimizer.zero_grad(set_to_none=True)
        self.pose_refiner.zero_grad_step()
        self.calibration.zero_grad_step()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        if iteration >= a.pose_refinement_wait:
            self.pose_refiner.step(self.scaler)
        self.calibration.step(self.scaler)
        self.scaler.update()  # after every optimiser it scaled for has stepped
        if self.visualizer is not None:
            self.visualizer.record_batch(predicted, errors, cam[:, 2])
        self._pending = (iteration, torch.stack([loss.detach().float(), inliers.float()]))

    def _measured_depth(self, batch: dict) -> torch.Tensor | None:
        if batch["targets"] is None or self.config.loss.prior.type != "rgbd_laplace_nll":
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
        out = Path(self.config.output_map_file)
        stem = out.with_suffix("")
        save_head(out, self.head, self.encoder.encoder_id)
        atomic_write_text(stem.parent / f"{stem.name}.txt", "\n".join(self.log_lines) + "\n")
        with torch.no_grad():
            refined = self.pose_refiner().cpu().numpy()
        factor = self.calibration.focal() / float(self.data.focals[0]) if self.calibration.refining else 1.0
        entries = []
        for index, path in enumerate(self.data.images):
            world_to_cam = np.eye(4)
            world_to_cam[:3] = refined[index]
            entries.append(dataset_io.PoseEntry(path, world_to_cam, float(self.data.focals[index]) * factor,
                                                math.inf))
        dataset_io.write_ace_pose_file(stem.parent / f"poses_{stem.name}_preliminary.txt", entries)
        _log.info("wrote %s, %s.txt and poses_%s_preliminary.txt", out, stem.name, stem.name)
        return entries
