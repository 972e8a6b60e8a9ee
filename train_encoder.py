#!/usr/bin/env python3
"""Train an encoder for scene coordinate regression on rendered scenes: a small adapter on top of frozen XFeat
features, shared by many scenes, each scene with its own head (the recipe of the ACE encoder: many scenes, one
head per scene). Only data the project makes itself is used: procedurally textured rooms rendered with pyrender,
each with its own textures, furniture layout, camera paths and focal length, and ground-truth scene coordinates
from the rendered depth. Nothing is downloaded.

The output file is the encoder: `train_ace.py --encoder_path OUT.pt` (and every other script) loads it as the
base XFeat variant followed by the adapter; heads record the adapter's digest.

Example: `train_encoder.py encoder.pt --scenes 16 --views_per_scene 24 --iterations 4000`
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ace_util import XFEAT_VARIANTS, UserError, atomic_torch_save, progress_bar
from cli_common import add_device_arg, configure_cpu_threads, run_main

# Rendered scenes of the tests and benchmarks use small seeds; training scenes start far above them.
FIRST_TRAINING_SCENE = 1000
# Every 6th view of a scene (the 4th of each six: inside a camera path, never its end) is kept out of training, to
# report how the heads generalise to new views of a scene they know.
HELD_OUT_EVERY = 6


@dataclass
class EncoderTrainingConfig:
    output: Path
    base_encoder: str = "xfeat-reflect"
    scenes: int = 16
    views_per_scene: int = 24
    width: int = 640
    height: int = 480
    hidden: int = 128
    out_channels: int = 128
    head_width: int = 128
    iterations: int = 4000
    images_per_step: int = 8
    cells_per_image: int = 512
    learning_rate: float = 5e-3
    position_adversary_weight: float = 0.0
    seed: int = 0
    device: str = "auto"


# ----------------------------------------------------------------------------------------------------------------
# Training scenes

def jittered_furniture(rng: np.random.Generator):
    """The room's furniture, each piece moved by up to 0.3 m along the floor and resized by 0.7-1.3x (the
    pedestal, which orbit cameras look at, stays in the middle)."""
    from datasets.synthetic_scene import FURNITURE, ROOM_MAX, ROOM_MIN, Box
    boxes = []
    for box in FURNITURE:
        lo, hi = np.array(box.lo), np.array(box.hi)
        centre, half = (lo + hi) / 2, (hi - lo) / 2 * rng.uniform(0.7, 1.3, 3)
        if box.name != "pedestal":
            centre[:2] += rng.uniform(-0.3, 0.3, 2)
        lo = np.maximum(centre - half, ROOM_MIN + 0.01)
        hi = np.minimum(centre + half, ROOM_MAX - 0.01)
        lo[2] = box.lo[2]  # standing things keep standing on the floor, hanging ones keep their height
        hi[2] = lo[2] + 2 * half[2]
        boxes.append(Box(box.name, tuple(lo), tuple(hi)))
    return boxes


def scene_quads_with(boxes):
    from datasets.synthetic_scene import ROOM_MAX, ROOM_MIN, box_faces
    quads = box_faces(ROOM_MIN, ROOM_MAX, inward=True)
    for box in boxes:
        faces = box_faces(box.lo, box.hi)
        quads.extend(faces[:4] + faces[5:] if box.lo[2] <= ROOM_MIN[2] else faces)
    return quads


def scene_views(scene_seed: int, count: int) -> list[np.ndarray]:
    """Half the views look outward at the walls, half orbit the middle, with wide steps between them."""
    from datasets.synthetic_scene import camera_trajectory
    rng = np.random.default_rng([scene_seed, 7])
    outward = camera_trajectory(count // 2, scene_seed, float(rng.uniform(8, 20)), "outward")
    orbit = camera_trajectory(count - count // 2, scene_seed + 1, float(rng.uniform(8, 20)), "orbit")
    return outward + orbit


def scene_coordinates(depth: np.ndarray, pose: np.ndarray, focal: float, cells_hw: tuple[int, int]) -> np.ndarray:
    """World coordinates (H x W x 3) at each output cell's centre pixel (8x + 4, 8y + 4); NaN where no depth."""
    from ace_util import OUTPUT_SUBSAMPLE
    rows = np.arange(cells_hw[0]) * OUTPUT_SUBSAMPLE + OUTPUT_SUBSAMPLE // 2
    cols = np.arange(cells_hw[1]) * OUTPUT_SUBSAMPLE + OUTPUT_SUBSAMPLE // 2
    z = depth[np.ix_(np.minimum(rows, depth.shape[0] - 1), np.minimum(cols, depth.shape[1] - 1))]
    u, v = np.meshgrid(cols.astype(np.float64), rows.astype(np.float64))
    height, width = depth.shape
    camera = np.stack([(u - width / 2) / focal * z, (v - height / 2) / focal * z, z], axis=-1)
    world = camera @ pose[:3, :3].T + pose[:3, 3]
    world[z <= 0] = np.nan
    return world.astype(np.float32)


def render_training_scene(scene_seed: int, config: EncoderTrainingConfig):
    """Grey images in [0, 1], cell coordinates and the focal length of one training scene."""
    from datasets.synthetic_scene import SceneRenderer, build_scene, default_focal
    rng = np.random.default_rng([scene_seed, 3])
    focal = default_focal(config.width) * float(rng.uniform(0.8, 1.25))
    scene = build_scene(scene_seed, scene_quads_with(jittered_furniture(rng)))
    cells = (math.ceil(config.height / 8), math.ceil(config.width / 8))
    greys, coords = [], []
    with SceneRenderer(scene, config.width, config.height, focal) as renderer:
        for pose in scene_views(scene_seed, config.views_per_scene):
            rgb, depth = renderer.render(pose)
            greys.append(rgb.astype(np.float32).mean(axis=2) / 255.0)
            coords.append(scene_coordinates(depth, pose, focal, cells))
    return greys, coords, focal


# ----------------------------------------------------------------------------------------------------------------
# Training

def base_device(module):
    return next(module.parameters()).device


class SceneSet:
    """Frozen base features and target coordinates of every training view (the base encoder never changes, so
    its features are computed once)."""

    def __init__(self, config: EncoderTrainingConfig, base):
        import torch
        features, targets, scene_of, self.focals = [], [], [], []
        for scene in progress_bar(range(config.scenes), desc="rendering and encoding scenes", unit="scene"):
            greys, coords, focal = render_training_scene(FIRST_TRAINING_SCENE + scene, config)
            self.focals.append(focal)
            with torch.no_grad():
                for grey in greys:
                    image = base.normalise(torch.from_numpy(grey)[None, None].to(base_device(base)))
                    features.append(base(image)[0].half().cpu())
            targets.extend(torch.from_numpy(c).permute(2, 0, 1) for c in coords)
            scene_of.extend([scene] * len(greys))
        self.features, self.targets = torch.stack(features), torch.stack(targets)
        self.image_size = (config.height, config.width)
        self.scene_of = torch.tensor(scene_of)
        view = torch.arange(len(scene_of)) % config.views_per_scene
        self.held_out = view % HELD_OUT_EVERY == HELD_OUT_EVERY // 2
        self.scene_means = torch.stack([torch.nanmean(self.targets[self.scene_of == s].permute(1, 0, 2, 3)
                                                      .reshape(3, -1), dim=1) for s in range(config.scenes)])

    def to(self, device) -> "SceneSet":
        self.features, self.targets = self.features.to(device), self.targets.to(device)
        return self


    def rays(self, image: int, cells):
        """Normalised image position ((u - cx) / f, (v - cy) / f) of flat cell indices: what a head would have to
        read from the features to fit every view with one camera pose."""
        import torch
        height, width = self.image_size
        cells_w = self.targets.shape[-1]
        focal = self.focals[int(self.scene_of[image])]
        u = (cells % cells_w).float() * 8 + 4
        v = torch.div(cells, cells_w, rounding_mode="floor").float() * 8 + 4
        return torch.stack([(u - width / 2) / focal, (v - height / 2) / focal], dim=1)


def scene_errors(adapter, heads, data: SceneSet, images, cells_per_image: int, generator, adversaries=None):
    """Euclidean errors (metres) of the heads' coordinates at random valid cells of `images`; with `adversaries`
    (one position head per scene) also their L1 errors of the cells' image positions, once through the features
    (for the adapter, which is to make them large) and once from detached features (for the adversaries)."""
    import torch
    mapped = adapter(data.features[images.to(data.features.device)].float())
    channels = mapped.shape[1]
    errors, position_for_adapter, position_for_adversary = [], [], []
    for row, image in enumerate(images.tolist()):
        target = data.targets[image].reshape(3, -1).t()
        valid = torch.nonzero(~torch.isnan(target[:, 0])).squeeze(1)
        pick = valid[torch.randint(len(valid), (cells_per_image,), generator=generator).to(valid.device)]
        cells = mapped[row].reshape(channels, -1).t()[pick]
        scene = int(data.scene_of[image])
        errors.append((heads[scene](cells) - target[pick]).norm(dim=1))
        if adversaries is not None:
            rays = data.rays(image, pick)
            position_for_adapter.append((adversaries[scene](cells)[:, :2] - rays).abs().sum(dim=1))
            position_for_adversary.append((adversaries[scene](cells.detach())[:, :2] - rays).abs().sum(dim=1))
    if adversaries is None:
        return torch.cat(errors)
    return torch.cat(errors), torch.cat(position_for_adapter), torch.cat(position_for_adversary)


def coordinate_errors(adapter, heads, data: SceneSet, images, cells_per_image: int, generator):
    return scene_errors(adapter, heads, data, images, cells_per_image, generator)


def train(config: EncoderTrainingConfig) -> dict:
    import torch
    from ace_network import FeatureAdapter, Head, adapter_file_content, load_encoder
    from cli_common import select_device
    device = select_device(config.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    base = load_encoder(config.base_encoder, device)
    started = time.time()
    data = SceneSet(config, base).to(device)
    print(f"{len(data.scene_of)} views of {config.scenes} scenes rendered and encoded in {time.time() - started:.0f} s")
    adapter = FeatureAdapter(base.feature_dim, config.hidden, config.out_channels)
    heads = torch.nn.ModuleList(Head(config.out_channels, config.head_width) for _ in range(config.scenes))
    for head, mean in zip(heads, data.scene_means):
        head.mean.copy_(mean.view(1, 3, 1, 1))
    # The adversaries: per scene a head that tries to read each cell's image position from the features, as a
    # mapping head does when it fits all views with one camera pose; the adapter is trained to defeat them.
    adversaries = None
    if config.position_adversary_weight > 0:
        adversaries = torch.nn.ModuleList(Head(config.out_channels, config.head_width, use_homogeneous=False)
                                          for _ in range(config.scenes)).to(device)
    adapter, heads = adapter.to(device), heads.to(device)
    trained = list(adapter.parameters()) + list(heads.parameters())
    optimiser = torch.optim.AdamW(trained + ([] if adversaries is None else list(adversaries.parameters())),
                                  lr=config.learning_rate)
    warmup = max(1, config.iterations // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(step, config.iterations) / config.iterations)))  # warm-up, then cosine
    training_views = torch.nonzero(~data.held_out).squeeze(1)
    for step in progress_bar(range(config.iterations), desc="training the adapter", unit="it"):
        images = training_views[torch.randint(len(training_views), (config.images_per_step,), generator=generator)]
        optimiser.zero_grad(set_to_none=True)
        if adversaries is None:
            loss = coordinate_errors(adapter, heads, data, images, config.cells_per_image, generator).mean()
            loss.backward()
        else:
            errors, position_adapter, position_adversary = scene_errors(
                adapter, heads, data, images, config.cells_per_image, generator, adversaries)
            loss = errors.mean()
            # clamped: beyond a mean guess (about 0.5) the adapter gains nothing by pushing the adversary further
            adapter_side = loss - config.position_adversary_weight * position_adapter.clamp(max=1.0).mean()
            adapter_side.backward(inputs=trained)
            position_adversary.mean().backward(inputs=list(adversaries.parameters()))
        optimiser.step()
        schedule.step()
        if (step + 1) % max(1, config.iterations // 10) == 0:
            position = "" if adversaries is None else f", adversary's position error {position_adversary.mean():.3f}"
            print(f"iteration {step + 1}: mean coordinate error {loss.item():.3f} m{position}")
    report = evaluate(adapter, heads, data, generator)
    report["seconds"] = round(time.time() - started, 1)
    content = adapter_file_content(adapter, config.base_encoder,
                                   {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
                                    **report})
    atomic_torch_save(content, config.output)
    print(f"encoder written to {config.output}: training views median {report['train_median_m']:.3f} m, "
          f"held-out views median {report['held_out_median_m']:.3f} m, "
          f"within 10 cm {100 * report['held_out_within_10cm']:.1f} %")
    return report


def evaluate(adapter, heads, data: SceneSet, generator) -> dict:
    """Median error and the fraction within 10 cm on training views and on held-out views of the same scenes."""
    import torch
    report = {}
    with torch.no_grad():
        for name, mask in (("train", ~data.held_out), ("held_out", data.held_out)):
            errors = torch.cat([coordinate_errors(adapter, heads, data, chunk, 2048, generator)
                                for chunk in torch.nonzero(mask).squeeze(1).split(8)])
            report[f"{name}_median_m"] = float(errors.median())
            report[f"{name}_within_10cm"] = float((errors < 0.1).float().mean())
    return report


# ----------------------------------------------------------------------------------------------------------------
# Command line

class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, the defaults after each flag."""


def parse_args(argv: list[str] | None = None) -> EncoderTrainingConfig:
    defaults = EncoderTrainingConfig(Path("encoder.pt"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("output", type=Path, help="encoder file to write (use it as --encoder_path)")
    parser.add_argument("--base_encoder", default=defaults.base_encoder, choices=sorted(XFEAT_VARIANTS),
                        help="frozen XFeat variant under the adapter")
    for name, help_text in (("scenes", "rendered training scenes (one head each)"),
                            ("views_per_scene", "views rendered per scene"),
                            ("width", "rendered image width"), ("height", "rendered image height"),
                            ("hidden", "channels of the adapter's 3x3 convolutions"),
                            ("out_channels", "feature channels the encoder outputs"),
                            ("head_width", "channels of each scene's head"),
                            ("iterations", "training steps"), ("images_per_step", "views per step"),
                            ("cells_per_image", "cells per view and step"), ("seed", "random seed")):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name), help=help_text)
    parser.add_argument("--learning_rate", type=float, default=defaults.learning_rate, help="peak learning rate")
    parser.add_argument("--position_adversary_weight", type=float, default=defaults.position_adversary_weight,
                        help="weight of the adversarial term that keeps image position out of the features "
                             "(0: off); a position head per scene is trained against the adapter")
    add_device_arg(parser)
    args = parser.parse_args(argv)
    config = EncoderTrainingConfig(**vars(args))
    for name in ("scenes", "views_per_scene", "width", "height", "hidden", "out_channels", "head_width",
                 "iterations", "images_per_step", "cells_per_image"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name} must be positive")
    if config.views_per_scene < HELD_OUT_EVERY:
        raise UserError(f"--views_per_scene must be at least {HELD_OUT_EVERY} (one view per scene is held out)")
    if not config.learning_rate > 0:
        raise UserError("--learning_rate must be positive")
    if not config.output.parent.is_dir():
        raise UserError(f"{config.output}: its folder does not exist")
    return config


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    configure_cpu_threads()
    print(f"training an encoder adapter on {config.base_encoder}: {config.scenes} rendered scenes x "
          f"{config.views_per_scene} views at {config.width}x{config.height}, {config.iterations} iterations")
    train(config)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
