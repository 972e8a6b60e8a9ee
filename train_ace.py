#!/usr/bin/env python3
"""ACE mapping: train a scene-specific head on frozen encoder features for posed images."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import dataset_io
from ace_util import DEFAULT_IMAGE_RESOLUTION, LOSS_TYPES, LR_SCHEDULES
from cli_common import (CPU_PROFILES, CPU_REFINER_PROFILE, UserError, add_calibration_arg, add_device_arg,
                        add_encoder_args, add_focal_arg, add_pose_refiner_args, add_prior_args, add_render_args,
                        apply_cpu_profile, check_match_loss_weight, check_prior_flags, configure_cpu_threads,
                        ensure_writable_folder, make_parser, run_main, select_device, str2bool)

_log = logging.getLogger("train_ace")


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("rgb_files", type=str, help="glob of the mapping images, e.g. 'data/*.jpg' (quoted)")
    parser.add_argument("output_map_file", type=Path, help="head file to write (.pt)")
    add_device_arg(parser)
    add_encoder_args(parser)
    parser.add_argument("--base_seed", type=int, default=2089, help="seed of all random generators")
    poses = parser.add_argument_group("poses and calibration")
    poses.add_argument("--pose_files", type=str, default=None,
                       help="glob of 4x4 camera-to-world pose files, one per image (sorted correspondence)")
    poses.add_argument("--use_ace_pose_file", type=Path, default=None,
                       help="ACE pose file (images, world-to-camera poses, focal, confidence) to map from")
    poses.add_argument("--ace_pose_file_conf_threshold", type=float, default=1000,
                       help="use entries of --use_ace_pose_file with confidence >= this")
    poses.add_argument("--use_pose_seed", type=float, default=-1,
                       help="map the single image int(value * N) with identity pose and depth supervision")
    poses.add_argument("--depth_files", type=str, default=None,
                       help="glob of depth PNGs in mm (sorted correspondence); enables depth supervision")
    poses.add_argument("--seed_depth", type=str, default="auto", choices=("auto", "zoedepth", "twoview", "constant"),
                       help="seed depth without --depth_files: auto = ZoeDepth when it can be loaded, else two-view "
                            "geometry with a partner image; constant is the last resort")
    poses.add_argument("--refine_calibration", type=str2bool, default=False, help="refine the shared focal length")
    poses.add_argument("--refine_calibration_lr", type=float, default=0.001, help="learning rate of the focal")
    poses.add_argument("--use_heuristic_focal_length", type=str2bool, default=False,
                       help="focal length from the images' EXIF, else 70%% of the image diagonal")
    add_focal_arg(poses, default=None)
    add_calibration_arg(poses)
    add_pose_refiner_args(poses, "--pose_refinement", "none", "keep poses fixed for this many iterations")
    poses.add_argument("--pose_refinement_weight", type=float, default=0.1, help="scale of the MLP pose updates")
    net = parser.add_argument_group("network")
    net.add_argument("--load_weights", type=Path, default=None, help="initialise the head from this file")
    net.add_argument("--num_head_blocks", type=int, default=1, help="extra residual blocks in the head")
    net.add_argument("--head_width", type=int, default=512, help="channels of the head layers")
    net.add_argument("--use_half", type=str2bool, default=True,
                     help="half precision: fp16 buffer and autocast on CUDA (the original); on CPU (new) bfloat16 "
                          "autocast of the head's hidden layers, its output layer in fp32")
    net.add_argument("--use_homogeneous", type=str2bool, default=True, help="homogeneous 4-channel head output")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--learning_rate_min", type=float, default=0.0005, help="lowest learning rate")
    opt.add_argument("--learning_rate_max", type=float, default=0.005, help="highest learning rate")
    opt.add_argument("--learning_rate_schedule", type=str, default="circle", choices=LR_SCHEDULES,
                     help="circle: one-cycle cosine; constant; 1cyclepoly: warm-up, plateau, early-stop cooldown")
    opt.add_argument("--learning_rate_warmup_iterations", type=int, default=1000, help="1cyclepoly warm-up length")
    opt.add_argument("--learning_rate_warmup_learning_rate", type=float, default=0.0005,
                     help="1cyclepoly start learning rate")
    opt.add_argument("--learning_rate_cooldown_iterations", type=int, default=5000, help="1cyclepoly cooldown length")
    opt.add_argument("--learning_rate_cooldown_trigger_px_threshold", type=int, default=10,
                     help="reprojection error (px) below which a prediction counts as inlier for early stopping")
    opt.add_argument("--learning_rate_cooldown_trigger_percent_threshold", type=float, default=0.7,
                     help="start the cooldown once the inlier fraction of the last 100 batches stays above this")
    opt.add_argument("--max_training_buffer_size", type=int, default=8000000, help="most samples in the buffer")
    opt.add_argument("--max_dataset_passes", type=int, default=10, help="most passes over the mapping images")
    opt.add_argument("--samples_per_image", type=int, default=1024, help="features sampled per image and pass")
    opt.add_argument("--training_buffer_cpu", type=str2bool, default=False, help="keep the buffer in host memory")
    opt.add_argument("--batch_size", type=int, default=5120, help="samples per parameter update")
    opt.add_argument("--iterations", type=int, default=25000, help="most parameter updates")
    opt.add_argument("--iterations_output", type=int, default=300, help="log (and render) every n iterations")
    opt.add_argument("--num_data_workers", type=int, default=12, help="threads loading and augmenting images")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--repro_loss_hard_clamp", type=int, default=1000, help="px; larger errors are invalid")
    loss.add_argument("--repro_loss_soft_clamp", type=int, default=50, help="px; scale of the robust loss")
    loss.add_argument("--repro_loss_soft_clamp_min", type=int, default=1, help="px; final dyntanh scale")
    loss.add_argument("--repro_loss_type", type=str, default="dyntanh", choices=LOSS_TYPES, help="robust loss")
    loss.add_argument("--repro_loss_schedule", type=str, default="circle", choices=("circle", "linear"),
                      help="how the dyntanh scale shrinks")
    loss.add_argument("--depth_min", type=float, default=0.1, help="predictions closer than this are invalid")
    loss.add_argument("--depth_target", type=float, default=10, help="proxy depth for invalid predictions")
    loss.add_argument("--depth_max", type=float, default=1000, help="predictions farther than this are invalid")
    add_prior_args(parser.add_argument_group("loss structure and priors"))
    aug = parser.add_argument_group("augmentation")
    aug.add_argument("--use_aug", type=str2bool, default=True,
                     help="scale, rotation and brightness augmentation; False fits the mapping views as they are "
                          "(re-posing the mapping images: README, \"Cameras\")")
    aug.add_argument("--aug_rotation", type=int, default=15, help="most in-plane rotation (deg)")
    aug.add_argument("--aug_scale", type=float, default=1.5, help="scale factor range [1/s, s]")
    aug.add_argument("--aug_shift", type=float, default=0.0,
                     help="new: most image shift, as a fraction of the image size (moves the principal point); "
                          "ace_zero uses it for seeds")
    aug.add_argument("--aug_viewpoint", type=float, default=0.0,
                     help="new: most viewpoint change (deg) of views re-rendered from images with depth (seeds), "
                          "orbiting the median depth; ace_zero uses it for seeds")
    vis = parser.add_argument_group("visualisation")
    add_render_args(vis, depth_hist=True)
    vis.add_argument("--use_existing_vis_buffer", type=str, default=None,
                     help="visualisation buffer (.pkl, relative to --render_target_path) to continue from")
    vis.add_argument("--render_map_error_threshold", type=int, default=10, help="px, colour range of errors")
    vis.add_argument("--render_map_depth_filter", type=int, default=100, help="hide points farther than this")
    return parser


def validate(args) -> None:
    dataset_io.glob_files(args.rgb_files)
    if args.use_pose_seed < 0 and args.use_ace_pose_file is None and args.pose_files is None:
        raise UserError("no poses: pass --pose_files, --use_ace_pose_file or --use_pose_seed")
    has_focal = args.use_heuristic_focal_length or args.use_ace_pose_file is not None or \
        args.calibration_file is not None or \
        (args.use_external_focal_length is not None and args.use_external_focal_length > 0)
    if not has_focal:
        raise UserError("no focal length: pass --use_heuristic_focal_length True, --use_external_focal_length F, "
                        "--calibration_file or --use_ace_pose_file")
    if args.batch_size < 1 or args.iterations < 1 or args.head_width < 1:
        raise UserError("--batch_size, --iterations and --head_width must be positive")
    check_match_loss_weight(args)
    check_prior_flags(args, has_depth=args.depth_files is not None or args.use_pose_seed >= 0)
    if "auto" in (args.prior_loss_location, args.prior_loss_bandwidth) and args.use_pose_seed < 0 and \
            args.depth_files is None:
        raise UserError("--prior_loss_location/--prior_loss_bandwidth auto need depth: a seed image "
                        "(--use_pose_seed) or --depth_files; otherwise pass numbers")
    ensure_writable_folder(args.output_map_file.parent)


def note_pixel_clamps(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The loss clamps are network-input pixels, sized for the original's 480 px: say what they are at another
    resolution. Temple's even images at 720 px with the 480 px clamps did not start learning in 6000 iterations
    (inlier fraction 0.01); with them scaled 1.5x it reached 0.56 (README, "Cameras: calibration files, EXIF,
    distortion")."""
    scale = args.image_resolution / DEFAULT_IMAGE_RESOLUTION
    clamps = ("repro_loss_hard_clamp", "repro_loss_soft_clamp")
    if scale == 1 or any(getattr(args, c) != parser.get_default(c) for c in clamps):
        return
    _log.warning("--image_resolution %d: the loss clamps (%s) are in network-input pixels, sized for %d px; "
                 "%s scales them with it", args.image_resolution,
                 ", ".join(f"{getattr(args, c)} px" for c in clamps), DEFAULT_IMAGE_RESOLUTION,
                 " ".join(f"--{c} {round(getattr(args, c) * scale)}" for c in clamps))


def apply_cpu_profiles(args, parser, device, argv: list[str] | None = None) -> None:
    """On CPU: this script's row of the CPU profile, and the mlp refiner's when the refiner is asked for."""
    apply_cpu_profile(args, parser, CPU_PROFILES["train_ace.py"], device, argv)
    if args.pose_refinement == "mlp":
        apply_cpu_profile(args, parser, CPU_REFINER_PROFILE, device, argv, "CPU profile of the mlp refiner")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(args)  # before the device and the profile (whose values are valid): no torch import for bad input
    device = select_device(args.device)
    apply_cpu_profiles(args, parser, device, argv)
    configure_cpu_threads()
    note_pixel_clamps(args, parser)
    _log.info("device %s, encoder %s, head width %d, batch %d, at most %d iterations", device, args.encoder_path,
              args.head_width, args.batch_size, args.iterations)
    from ace_trainer import MappingConfig, Trainer  # torch-heavy import after argument checks
    Trainer(MappingConfig.from_args(args), device).run()


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
