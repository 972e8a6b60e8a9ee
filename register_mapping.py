#!/usr/bin/env python3
"""Register (relocalise) images against an ACE head with DSAC*-style RANSAC; writes poses_<session>.txt next to
the network, one line per image with the inlier count as confidence."""
from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import dataset_io
from calibration import Intrinsics
from ace_util import config_from_args, is_registered, progress_bar
from ace_vis_util import RenderFlags
from cli_common import (UserError, add_calibration_arg, add_device_arg, add_encoder_args, add_focal_arg,
                        add_render_args, configure_cpu_threads, make_parser, run_main, select_device)

_log = logging.getLogger("register_mapping")

# --ransac_runs: runs whose rotation lies within this of the most central run's are averaged. Scale-free; single
# runs of temple's hardest images at 720 px land 0.5-1.9 deg from the truth, so agreeing runs are well inside it.
AGREEMENT_DEG = 5.0
# Seed offset between the runs of one image: run k of the image at position i uses base_seed + i + k * this, so
# run 0 is the original's seed and no two runs of a collection share one.
RUN_SEED_STRIDE = 1_000_003


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("rgb_files", type=str, help="glob of the images to register, e.g. 'data/*.jpg' (quoted)")
    parser.add_argument("network", type=Path, help="ACE head file (.pt)")
    add_device_arg(parser)
    add_encoder_args(parser)
    parser.add_argument("--session", "-sid", type=str, default="", help="output file is poses_<session>.txt")
    parser.add_argument("--num_data_workers", type=int, default=12, help="threads loading images")
    ransac = parser.add_argument_group("RANSAC")
    add_ransac_args(ransac)
    parser.add_argument("--base_seed", type=int, default=1305, help="seed of the image order and of RANSAC")
    parser.add_argument("--confidence_threshold", type=float, default=1000,
                        help="inlier count above which an image counts as registered (for the summary)")
    parser.add_argument("--max_estimates", type=int, default=-1, help="stop after this many images (-1: all)")
    add_focal_arg(parser, default=-1)
    add_calibration_arg(parser)
    vis = parser.add_argument_group("visualisation")
    add_render_args(vis)
    vis.add_argument("--render_pose_conf_threshold", type=int, default=5000, help="top of the confidence colours")
    vis.add_argument("--render_map_depth_filter", type=int, default=10, help="hide points farther than this")
    return parser


def add_ransac_args(parser) -> None:
    parser.add_argument("--hypotheses", "-hyps", type=int, default=64, help="RANSAC pose hypotheses per image")
    parser.add_argument("--hypotheses_max_tries", type=int, default=1000000,
                        help="re-sampling attempts per hypothesis until its 4 points agree")
    parser.add_argument("--threshold", "-t", type=float, default=10, help="inlier threshold (px)")
    parser.add_argument("--inlieralpha", "-ia", type=float, default=100, help="soft inlier score scale")
    parser.add_argument("--maxpixelerror", "-maxerrr", type=float, default=100, help="reprojection error clamp (px)")
    parser.add_argument("--ransac_runs", type=int, default=1,
                        help="RANSAC runs per image with different seeds; above 1, the poses of the runs that agree "
                             f"with the most central one (within {AGREEMENT_DEG:g} deg) are averaged and the median "
                             "inlier count is the confidence (README, \"Cameras\"; 1: the original)")


def validate(args) -> None:
    dataset_io.glob_files(args.rgb_files)
    if args.hypotheses < 1 or args.hypotheses_max_tries < 1:
        raise UserError("--hypotheses and --hypotheses_max_tries must be positive")
    if args.threshold <= 0:
        raise UserError("--threshold must be positive")
    if args.ransac_runs < 1:
        raise UserError("--ransac_runs must be at least 1")
    if not args.network.is_file():
        raise UserError(f"network file not found: {args.network}")


@dataclass(frozen=True)
class RegistrationConfig:
    """What a registration run reads: the flags of the same names."""
    rgb_files: str
    network: Path
    encoder_path: str
    image_resolution: int
    use_external_focal_length: float
    calibration_file: str | None
    base_seed: int
    max_estimates: int
    num_data_workers: int
    hypotheses: int
    hypotheses_max_tries: int
    threshold: float
    inlieralpha: float
    maxpixelerror: float
    ransac_runs: int
    confidence_threshold: float
    render: RenderFlags | None  # None: no frames
    render_pose_conf_threshold: int
    render_map_depth_filter: int

    @classmethod
    def from_args(cls, args) -> "RegistrationConfig":
        return config_from_args(cls, args, render=RenderFlags.from_args(args))


def create_visualizer(config: RegistrationConfig, device, total: int):
    """Frames of this registration run, continuing `<network stem>_mapping.pkl` (None without rendering)."""
    if config.render is None:
        return None
    from ace_visualizer import RegistrationVisualizer, RenderSettings
    return RegistrationVisualizer(RenderSettings.for_device(config.render, device.type), config.network.stem,
                                  total, config.confidence_threshold, config.render_pose_conf_threshold,
                                  config.render_map_depth_filter)


def consensus_pose(runs: list[tuple[float, np.ndarray]]) -> tuple[float, np.ndarray]:
    """One pose from several RANSAC runs of an image, as (inlier count, 4x4 camera-to-world): the runs whose
    rotation lies within AGREEMENT_DEG of the most central run's (the least summed angle to the others) are averaged
    (chordal mean of the rotations, mean of the camera centres). The confidence is the median inlier count of all
    runs when at least half agree, else the smallest: an image whose runs disagree is not a confident one.
    Measured on temple at 720 px (README, "Cameras"): the inlier count of single runs does not tell the better
    run (it differs by about 10 in 3000); averaging 6 runs brought the worst image from up to 1.86 deg to
    1.03-1.14 deg."""
    from eval_poses import rotation_angle_deg
    poses = np.array([pose for _, pose in runs])
    counts = np.array([inliers for inliers, _ in runs], dtype=float)
    rotations = poses[:, :3, :3]
    angles = rotation_angle_deg(np.einsum("aji,bjk->abik", rotations, rotations))  # pairwise, degrees
    central = int(np.argmin(angles.sum(axis=1)))
    agree = angles[central] <= AGREEMENT_DEG
    pose = np.eye(4)
    pose[:3, :3] = dataset_io.nearest_rotation(rotations[agree].mean(axis=0))
    pose[:3, 3] = poses[agree, :3, 3].mean(axis=0)
    confidence = float(np.median(counts)) if 2 * agree.sum() >= len(runs) else float(counts.min())
    return confidence, pose


def register_images(config: RegistrationConfig, device) -> tuple[list[dataset_io.PoseEntry], dict[str, Intrinsics]]:
    """A pose entry per registered image, and the camera of every image (for the cameras file)."""
    import torch
    import dsacstar
    from ace_network import Regressor, load_encoder, load_head

    images = dataset_io.glob_files(config.rgb_files)
    cameras = dataset_io.image_cameras(images, config.calibration_file, config.use_external_focal_length)
    encoder = load_encoder(config.encoder_path, device)
    regressor = Regressor(encoder, load_head(config.network, encoder, device)).eval()
    order = np.random.default_rng(config.base_seed).permutation(len(images))
    if config.max_estimates > 0:
        order = order[:config.max_estimates]
    _log.info("registering %d image(s) against %s, %d hypotheses%s", len(order), config.network, config.hypotheses,
              f", {config.ransac_runs} RANSAC runs averaged" if config.ransac_runs > 1 else "")

    visualizer = create_visualizer(config, device, len(order))

    def load(index):
        return index, dataset_io.load_network_input(images[index], config.image_resolution, cameras[index])[0]

    entries = []
    with ThreadPoolExecutor(max_workers=max(1, min(config.num_data_workers, 4))) as pool, \
            torch.no_grad(), progress_bar(total=len(order), desc="Registering", unit="img", leave=False) as progress:
        for count, (index, grey) in enumerate(pool.map(load, order)):
            coords = regressor(torch.from_numpy(grey)[None, None].to(device))[0].float().cpu().numpy()
            net = cameras[index].scaled(grey.shape[1], grey.shape[0])
            runs = [dsacstar.forward_rgb(
                np.ascontiguousarray(coords), hypotheses=config.hypotheses, threshold=config.threshold,
                focal=net.fx, focal_y=net.fy, ppx=net.cx, ppy=net.cy,
                inlier_alpha=config.inlieralpha, max_reproj=config.maxpixelerror, subsampling=8,
                random_seed=config.base_seed + count + run * RUN_SEED_STRIDE,
                max_hypotheses_tries=config.hypotheses_max_tries) for run in range(config.ransac_runs)]
            inliers, cam_to_world = runs[0] if len(runs) == 1 else consensus_pose(runs)
            entries.append(dataset_io.PoseEntry(images[index], dataset_io.invert_pose(cam_to_world),
                                                cameras[index].focal, int(inliers)))
            if visualizer is not None:
                visualizer.add(images[index], entries[-1].world_to_cam, inliers)
            progress.set_postfix(inliers=int(inliers))
            progress.update(1)
    if visualizer is not None:
        visualizer.finish_registration()
    return entries, dict(zip(images, cameras))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    validate(args)
    device = select_device(args.device)
    configure_cpu_threads()
    start = time.time()
    entries, cameras = register_images(RegistrationConfig.from_args(args), device)
    out = args.network.parent / f"poses_{args.session}.txt"
    dataset_io.write_ace_pose_file(out, entries)
    dataset_io.write_cameras_beside(out, [e.path for e in entries], [cameras[e.path] for e in entries])
    registered = sum(is_registered(e.confidence, args.confidence_threshold) for e in entries)
    elapsed = time.time() - start
    _log.info("%d/%d images registered with confidence > %g (%.1f images/s); wrote %s", registered, len(entries),
              args.confidence_threshold, len(entries) / max(elapsed, 1e-9), out)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
