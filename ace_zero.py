#!/usr/bin/env python3
"""ACE0: reconstruct an image collection from scratch (poses and focal length) by alternating ACE mapping
(train_ace.py) and registration (register_mapping.py), each a separate process exchanging files."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

import dataset_io
from ace_util import LOSS_TYPES, LR_SCHEDULES, encoder_spec, script_command
from calibration import focal_changed
from gate_registrations import DEFAULT_MAX_MISS, DEFAULT_MAX_SPREAD
from verify_poses import default_report, write_unverified
from cli_common import (AUTO_PRIOR_FLAG, CPU_PROFILES, CPU_REFINER_PROFILE, PROBABILISTIC_NEEDS_PRIOR, UserError,
                        add_calibration_arg, add_device_arg, add_encoder_args, add_focal_arg, add_pose_refiner_args,
                        add_prior_args, add_render_args, apply_cpu_profile, atomic_write_text,
                        check_match_loss_weight, check_prior_flags, ensure_writable_folder, make_parser, run_main,
                        select_device, str2bool)

_log = logging.getLogger("ace_zero")

STATE_FILE = "ace_zero_state.json"
FEATURE_CACHE_FOLDER = "feature_cache"  # keypoints and matches shared by bundle_adjust.py and verify_poses.py
INITIAL_CALIBRATION_FILE = "cameras_initial.txt"  # written when one focal length cannot describe the cameras
RENDER_FOLDER = "renderings"
VIDEO_FILE = "reconstruction.mp4"
SEED_SCORING_MAX_IMAGES = 1000
REFOCUS_MIN_RATIO = 1.5  # --seed_refocus: a focal moved less than this by the seed's adjustment is kept
REFOCUSED = "_refocused"  # suffix of the seed mapped again with the adjusted focal
FOCAL_RECOVERY = "_focal_recovery"  # suffix of the final poses adjusted again from the focal the check found
GATED = "_gated"  # suffix of a registration after --registration_gate
ESTIMATED_FOCAL_MAX_CHANGE = 1.5  # most change of a focal that an earlier adjustment estimated
REPORTED_CONFIDENCES = (500, 1000, 2000, 4000)
VERIFICATION_REPORT = "poses_final_verification.json"

CPU_PROFILE = CPU_PROFILES["ace_zero.py"]


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("rgb_files", type=str, help="glob of the images, e.g. 'data/*.jpg' (quoted)")
    parser.add_argument("results_folder", type=Path, help="folder for networks, pose files and logs")
    add_device_arg(parser)
    add_encoder_args(parser)
    parser.add_argument("--depth_files", type=str, default=None,
                        help="glob of depth PNGs (mm) for the seed images, instead of a depth network")
    parser.add_argument("--depth_use_always", type=str2bool, default=False,
                        help="use --depth_files in every mapping round, not only for the seed (RGB-D ACE0; "
                             "registration stays RGB-only; the bundle adjustments take their scale from them)")
    loop = parser.add_argument_group("reconstruction loop")
    loop.add_argument("--iterations_max", type=int, default=100, help="most mapping/registration rounds")
    loop.add_argument("--registration_threshold", type=float, default=0.99,
                      help="stop when this fraction of images is registered")
    loop.add_argument("--relative_registration_threshold", type=float, default=0.01,
                      help="stop when the registration rate grew by less than this")
    loop.add_argument("--final_refine", type=str2bool, default=True, help="one more mapping round after stopping")
    loop.add_argument("--final_refit", type=str2bool, default=True,
                      help="that round trains a fresh head without early stopping")
    loop.add_argument("--final_refit_posewait", type=int, default=5000, help="poses frozen this long in the refit")
    loop.add_argument("--refit_iterations", type=int, default=25000, help="iterations of the refit")
    loop.add_argument("--mapping_iterations", type=int, default=25000,
                      help="most iterations of a normal mapping round (early stopping usually ends it sooner)")
    loop.add_argument("--registration_confidence", type=int, default=500,
                      help="inlier count above which an image counts as registered and is used for mapping")
    loop.add_argument("--warmstart", type=str2bool, default=True, help="start each round from the previous head")
    loop.add_argument("--bundle_adjustment", type=str2bool, default=False,
                      help="new: polish the final registration by bundle adjustment on XFeat feature tracks "
                           "(bundle_adjust.py; the focal length too unless --refine_calibration False). On by "
                           "default on CPU, where rounds are too short for the pose refiner")
    loop.add_argument("--round_bundle_adjustment", type=str2bool, default=False,
                      help="new: bundle-adjust every registration in the loop (poses, and the focal length unless "
                           "--refine_calibration False) before the next round maps from it, the rounds keeping "
                           "that focal fixed; the final one is left to --bundle_adjustment (False: the original's "
                           "loop)")
    loop.add_argument("--registration_gate", type=str2bool, default=False,
                      help="new: before a round maps from a registration, check each newly registered image against "
                           "the structure the earlier images triangulate (gate_registrations.py); images that "
                           "disagree drop below --registration_confidence and are tried again next round (False: "
                           "the original's loop)")
    loop.add_argument("--registration_resection", type=str2bool, default=False,
                      help="new: with the gate's check (it runs for this too), first place each newly registered "
                           "image again by PnP on its feature observations of the structure the earlier images "
                           "triangulate, where that agrees with more of them: the head pulls images at the edge "
                           "of the mapped views towards them, and the rounds cannot undo it (README, "
                           "\"Registration at the edge\"). The seed's registration is resected too, against the "
                           "seed image and its best two-view partner (False: the original's loop)")
    loop.add_argument("--registration_gate_max_miss", type=float, default=DEFAULT_MAX_MISS,
                      help="the gate's largest median miss of a new image's feature observations, in keypoint "
                           "accuracies (about a pixel at the 480 px detection size)")
    loop.add_argument("--registration_gate_max_spread", type=float, default=DEFAULT_MAX_SPREAD,
                      help="new: a new image is judged right or resected only when PnP on two random halves of "
                           "its observations of the earlier structure gives poses within this many degrees; "
                           "otherwise it counts as unjudged (README, \"Undetermined images\"; 0: no such test)")
    loop.add_argument("--registration_gate_hold_unjudged", type=str2bool, default=True,
                      help="new: the gate also holds back the new images that see too little of the earlier "
                           "structure to be judged, until a later round can judge them (README, \"Unjudged "
                           "images\"); False: they pass")
    loop.add_argument("--verify_poses", type=str2bool, default=True,
                      help="new: check the final poses against independent feature matches (verify_poses.py); "
                           "registered images that disagree drop below --registration_confidence in "
                           "poses_final.txt, and so out of the exports (False: the original's output)")
    loop.add_argument("--verify_focal", type=str2bool, default=True,
                      help="new: that check also asks whether the feature tracks fit another focal length far "
                           "better (verify_poses.py --check_focal: three more adjustments, about 10 s on temple, "
                           "90 s on fox); if so every image is flagged, since poses mapped with a wrong focal "
                           "length are bent as a whole. Not done when the focal is known (given, calibrated or "
                           "EXIF) and held (--refine_calibration False)")
    loop.add_argument("--recover_focal", type=str2bool, default=True,
                      help="new: when that focal check flags the poses, adjust them again (bundle_adjust.py) "
                           "starting from the focal length the tracks fit, verify the result, and take it when "
                           "its own check passes and fewer images are unreliable (both reports are kept; needs "
                           "--bundle_adjustment). False: the flagged poses stand")
    loop.add_argument("--fail_on_unreliable", type=str2bool, default=False,
                      help="new: exit with an error when most images fail that check, or when the check itself "
                           "fails (then every confidence in poses_final.txt is lowered)")
    loop.add_argument("--feature_cache", type=str2bool, default=True,
                      help=f"new: keep the XFeat keypoints and verified matches of the bundle adjustments and the "
                           f"check in <results>/{FEATURE_CACHE_FOLDER} (about 1 MB per image), so that each image is "
                           f"detected and each pair matched once (False: every stage starts afresh)")
    seeds = parser.add_argument_group("seeds")
    seeds.add_argument("--try_seeds", type=int, default=5, help="random seed images to try")
    seeds.add_argument("--seed_parallel_workers", type=int, default=3,
                       help="seeds mapped in parallel (-1: all cores, 1: sequential)")
    seeds.add_argument("--seed_early_stop", type=str2bool, default=False,
                       help="new: with sequential seeds, try no more once one registers at least "
                            "--seed_stop_rate of the checked images (False: try all, the original)")
    seeds.add_argument("--seed_stop_rate", type=float, default=None,
                       help="new: with --seed_early_stop, the share of the checked images a seed must register for "
                            "no more seeds to be tried (default: --registration_threshold; a seed that registers "
                            "half the collection from one image is a sound start, and the next would only be chosen "
                            "if it registered more)")
    seeds.add_argument("--seed_iterations", type=int, default=10000, help="most mapping iterations of a seed")
    seeds.add_argument("--seed_refocus", type=str2bool, default=False,
                       help=f"new: when the focal length is only the heuristic's guess and the adjustment of the "
                            f"seed's registration (bundle_adjust.py) moves it by more than a factor "
                            f"{REFOCUS_MIN_RATIO:g}, map the seed again with the adjusted focal and go on from the "
                            f"seed whose registration the adjustment finds consistent for more images (False: the "
                            f"heuristic's seed, as the original)")
    seeds.add_argument("--seed_network", type=Path, default=None, help="start from this head instead of seeds")
    seeds.add_argument("--random_seed", type=int, default=1305, help="numpy seed drawing the seed images")
    seeds.add_argument("--seed_aug_shift", type=float, default=None,
                       help="new: image-shift augmentation of seed mapping (fraction of the image size; train_ace "
                            "--aug_shift). Default: 0.25 with the XFeat encoder, 0 (the original) with the ACE "
                            "encoder")
    seeds.add_argument("--seed_aug_viewpoint", type=float, default=None,
                       help="new: seed views re-rendered with the seed depth from viewpoints up to this many degrees "
                            "away (train_ace --aug_viewpoint). Default: 10 with the XFeat encoder, 0 (the "
                            "original) with the ACE encoder")
    seeds.add_argument("--seed_dataset_passes", type=int, default=None,
                       help="new: augmented views of the seed image in its training buffer (train_ace "
                            "--max_dataset_passes). Default: 100 with the XFeat encoder, --max_dataset_passes "
                            "(the original) with the ACE encoder")
    seeds.add_argument("--seed_probabilistic_depth", type=str2bool, default=True,
                       help="new: under --loss_structure probabilistic with laplace_nll/laplace_wd, map the seed "
                            "with dsac* so that its depth supervises it (False: the prior alone shapes the seed's "
                            "depth, which the reference leaves open; measured in the README)")
    seeds.add_argument("--seed_depth", type=str, default="auto", choices=("auto", "zoedepth", "twoview", "constant"),
                       help="seed depth without --depth_files: auto = ZoeDepth when it can be loaded, else two-view "
                            "geometry with a partner image; constant is the last resort")
    mapping = parser.add_argument_group("mapping")
    add_pose_refiner_args(mapping, "--refinement", "mlp", "poses frozen this long in normal rounds")
    mapping.add_argument("--refine_calibration", type=str2bool, default=True, help="refine the shared focal length")
    add_focal_arg(mapping, default=-1)
    mapping.add_argument("--self_calibrate_focal", type=str2bool, default=False,
                         help="new: when no focal length is known (no --use_external_focal_length, calibration "
                              "file or EXIF), start from one estimated from fundamental matrices of image pairs "
                              "(focal_estimation.py), if the images determine it; else the heuristic's guess. On "
                              "by default on CPU (False: the guess, as the original)")
    add_calibration_arg(mapping)
    mapping.add_argument("--learning_rate_schedule", type=str, default="1cyclepoly",
                         choices=LR_SCHEDULES, help="schedule of normal rounds")
    mapping.add_argument("--learning_rate_max", type=float, default=0.003, help="highest LR of normal rounds")
    mapping.add_argument("--cooldown_iterations", type=int, default=5000, help="LR cooldown after early stop")
    mapping.add_argument("--cooldown_threshold", type=float, default=0.7,
                         help="inlier fraction (< 10 px) that triggers the cooldown")
    mapping.add_argument("--num_head_blocks", type=int, default=1, help="extra residual blocks in the head")
    mapping.add_argument("--use_half", type=str2bool, default=True,
                         help="half precision in mapping: fp16 on CUDA (the original), bfloat16 head layers on CPU")
    mapping.add_argument("--head_width", type=int, default=None, help="head channels (train_ace default if unset)")
    mapping.add_argument("--max_dataset_passes", type=int, default=10, help="most passes when filling the buffer")
    mapping.add_argument("--repro_loss_type", type=str, default="tanh",
                         choices=LOSS_TYPES, help="loss of normal rounds")
    mapping.add_argument("--repro_loss_hard_clamp", type=int, default=1000, help="px")
    mapping.add_argument("--repro_loss_soft_clamp", type=int, default=50, help="px")
    mapping.add_argument("--aug_rotation", type=int, default=15, help="most in-plane rotation (deg)")
    mapping.add_argument("--round_use_aug", type=str2bool, default=True,
                         help="augmentation in the mapping rounds and the refit (new; the seed keeps it): False "
                              "fits the mapped views as they are (README, \"Cameras\")")
    mapping.add_argument("--final_use_aug", type=str2bool, default=None,
                         help="new: augmentation in the final round only (--final_refine; default: as "
                              "--round_use_aug). False: the final head fits the registered views as they are, and "
                              "the images it was not mapped from keep the loop's last entry (an unaugmented head "
                              "registers new views worse; README, \"Cameras\") unless --registration_resection "
                              "places them again from the earlier structure")
    mapping.add_argument("--num_data_workers", type=int, default=12, help="loader threads for mapping")
    mapping.add_argument("--training_buffer_cpu", type=str2bool, default=False, help="keep buffer in host memory")
    add_prior_args(parser.add_argument_group("loss structure and priors (passed to every mapping call)"))
    reg = parser.add_argument_group("registration")
    reg.add_argument("--ransac_iterations", type=int, default=32, help="RANSAC hypotheses")
    reg.add_argument("--ransac_threshold", type=float, default=10, help="RANSAC inlier threshold (px)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--export_point_cloud", type=str2bool, default=False, help="write pc_final.ply at the end")
    out.add_argument("--dense_point_cloud", type=str2bool, default=False, help="unfiltered point cloud")
    add_render_args(out, "render a video of the process (frames in results_folder/renderings)", target_path=False,
                    depth_hist=True)
    out.add_argument("--iterations_output", type=int, default=500, help="log/render every n training iterations")
    parser.set_defaults(focal_guessed=False)  # set by initial_cameras: some image's focal is the heuristic's guess
    return parser


# ----------------------------------------------------------------------------------------------------------------
# State kept in the results folder so a rerun continues where the last one stopped

@dataclass
class RunState:
    rgb_files: str
    seed_id: str | None = None
    completed: list[str] = field(default_factory=list)  # ids whose registration finished
    rates: dict[str, float] = field(default_factory=dict)
    max_rate: float = 0.0
    stop_scheduled: bool = False
    finished: bool = False
    refocus_checked: bool = False  # --seed_refocus has decided (so a resumed run does not decide again)
    self_calibrated_focal: float | None = None  # --self_calibrate_focal's estimate (-1: none), made once per run
    encoder_path: str | None = None  # the run's --encoder_path (None in the state of runs begun before stop 46)

    @classmethod
    def load_or_create(cls, folder: Path, rgb_files: str, encoder_path: str | None = None) -> "RunState":
        path = folder / STATE_FILE
        if not path.exists():
            return cls(rgb_files, encoder_path=encoder_path)
        try:
            state = cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as error:
            raise UserError(f"{path}: unreadable run state ({error}); remove it to start over") from None
        if state.rgb_files != rgb_files:
            raise UserError(f"{folder} holds a reconstruction of '{state.rgb_files}', not '{rgb_files}': "
                            f"use another results folder")
        if None not in (state.encoder_path, encoder_path) and state.encoder_path != encoder_path:
            # its heads only load with the encoder they were mapped with
            raise UserError(f"{folder} holds a reconstruction begun with --encoder_path {state.encoder_path}: "
                            f"pass that to resume it, or use another results folder")
        return state

    def save(self, folder: Path) -> None:
        atomic_write_text(folder / STATE_FILE, json.dumps(asdict(self), indent=1))


# ----------------------------------------------------------------------------------------------------------------
# Sub-processes

def run_script(script: str, arguments: list, threads: int | None = None, label: str = "") -> None:
    """Run a stage as its own process; `threads` caps its CPU threads (parallel seeds must not oversubscribe).
    Logs "stage <script> <label> took N s" (process start included; benchmarks/bench_reconstruction.py reads it)."""
    command = script_command(script, arguments)
    _log.info("running %s", " ".join(command[1:]))
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.time()
    result = subprocess.run(command, env=env)
    _log.info("stage %s %s took %.1f s", script, label or "-", time.time() - start)
    if result.returncode != 0:
        raise UserError(f"{script} failed with exit code {result.returncode} (its output is above)")


def focal_args(focal: float) -> list:
    if focal > 0:
        return ["--use_external_focal_length", focal]
    return ["--use_heuristic_focal_length", True]


def common_args(args) -> list:
    return ["--device", args.device, "--encoder_path", args.encoder_path, "--image_resolution", args.image_resolution,
            *calibration_args(args)]


def calibration_args(args) -> list:
    return ["--calibration_file", args.calibration_file] if args.calibration_file else []


def mapping_args(args, refit: bool, iterations: int | None = None, passes: int | None = None) -> list:
    """Flags of a mapping round; `iterations` and `passes` override the round's length and buffer (seeds)."""
    result = common_args(args) + [
        "--refinement_ortho", args.refinement_ortho, "--ace_pose_file_conf_threshold", args.registration_confidence,
        "--pose_refinement_lr", args.pose_refinement_lr, "--pose_refinement_gauge", args.pose_refinement_gauge,
        "--pose_refinement_update", args.pose_refinement_update,
        "--pose_refinement_input", args.pose_refinement_input,
        "--match_loss_weight", args.match_loss_weight,
        "--num_head_blocks", args.num_head_blocks, "--use_half", args.use_half,
        "--repro_loss_hard_clamp", args.repro_loss_hard_clamp, "--repro_loss_soft_clamp", args.repro_loss_soft_clamp,
        "--iterations_output", args.iterations_output, "--max_dataset_passes", passes or args.max_dataset_passes,
        "--learning_rate_cooldown_iterations", args.cooldown_iterations,
        "--learning_rate_cooldown_trigger_percent_threshold", args.cooldown_threshold,
        "--aug_rotation", args.aug_rotation, "--training_buffer_cpu", args.training_buffer_cpu,
        "--num_data_workers", args.num_data_workers]
    if args.head_width is not None:
        result += ["--head_width", args.head_width]
    if refit:
        # Under probabilistic the refit keeps the rounds' robust loss (the reference forces dyntanh under dsac* only).
        repro = "dyntanh" if args.loss_structure == "dsac*" else args.repro_loss_type
        return result + ["--repro_loss_type", repro, "--pose_refinement_wait", args.final_refit_posewait,
                         "--learning_rate_schedule", "circle", "--learning_rate_max", 0.005,
                         "--iterations", iterations or args.refit_iterations]
    return result + ["--repro_loss_type", args.repro_loss_type, "--pose_refinement_wait", args.pose_refinement_wait,
                     "--learning_rate_schedule", args.learning_rate_schedule,
                     "--learning_rate_max", args.learning_rate_max,
                     "--iterations", iterations or args.mapping_iterations]


def prior_args(args, seed: bool, location=None, bandwidth=None) -> list:
    """The loss structure and prior flags of a mapping call. `location`/`bandwidth` replace 'auto' (resolved from
    the seed) in the rounds after the seed.

    The seed round: under probabilistic with a fixed-location prior (laplace_nll, laplace_wd) its depth would
    reach no term (only rgbd_laplace_nll reads depth targets), and one image with identity pose constrains
    nothing along the rays, so its depths would become the prior's shape: a plane at the location (NLL). The
    seed is therefore mapped with dsac* and its depth (README, "Scene coordinate priors": measured)."""
    structure, prior = args.loss_structure, args.prior_loss_type
    if seed and structure == "probabilistic" and prior in ("laplace_nll", "laplace_wd") and \
            args.seed_probabilistic_depth:
        structure, prior = "dsac*", "none"
    result = ["--loss_structure", structure, "--prior_loss_type", prior,
              "--prior_loss_weight", args.prior_loss_weight,
              "--prior_loss_bandwidth", bandwidth if bandwidth is not None else args.prior_loss_bandwidth,
              "--prior_loss_location", location if location is not None else args.prior_loss_location,
              "--prior_diffusion_start_step", args.prior_diffusion_start_step,
              "--prior_diffusion_warmup_steps", args.prior_diffusion_warmup_steps,
              "--prior_diffusion_subsample", args.prior_diffusion_subsample]
    if args.render_depth_hist:  # a render flag: passed only when on, like the other visualisation flags
        result += ["--render_depth_hist", True]
    if args.prior_diffusion_model_path is not None:
        result += ["--prior_diffusion_model_path", args.prior_diffusion_model_path]
    return result


def render_args(args) -> list:
    """Rendering flags of a stage that draws frames into the shared renderings folder."""
    if not args.render_visualization:
        return []
    return ["--render_visualization", True, "--render_target_path", args.results_folder / RENDER_FOLDER,
            "--render_marker_size", args.render_marker_size, "--render_flipped_portrait",
            args.render_flipped_portrait, "--render_camera_z_offset", args.render_camera_z_offset]


def register(args, network: Path, session: str, focal: float, max_estimates: int = -1,
             threads: int | None = None, render: bool = False) -> float:
    """Register all images (or a random subset) against `network`; returns the registration rate."""
    run_script("register_mapping.py", [args.rgb_files, network, *common_args(args), "--session", session,
                                       "--confidence_threshold", args.registration_confidence,
                                       "--hypotheses", args.ransac_iterations, "--threshold", args.ransac_threshold,
                                       "--hypotheses_max_tries", 16, "--max_estimates", max_estimates,
                                       "--use_external_focal_length", focal, *(render_args(args) if render else [])],
               threads, label=session)
    entries = dataset_io.read_ace_pose_file(network.parent / f"poses_{session}.txt")
    return dataset_io.registration_rate(entries, args.registration_confidence)


# ----------------------------------------------------------------------------------------------------------------
# Stages

def seed_values(args) -> np.ndarray:
    rng = np.random.RandomState(args.random_seed)
    return rng.uniform(size=args.try_seeds)


def seed_network_file(args, k: int) -> Path:
    return args.results_folder / f"iteration0_seed{k}.pt"


def seed_index(seed_id: str) -> int:
    """k of iteration0_seed<k> (or of its refocused copy)."""
    return int(seed_id.removeprefix("iteration0_seed").removesuffix(REFOCUSED))


def map_seed(args, k: int, focal: float, threads: int | None = None, render: bool = False,
             network: Path | None = None) -> None:
    network = network or seed_network_file(args, k)
    extra = ["--depth_files", args.depth_files] if args.depth_files else ["--seed_depth", args.seed_depth]
    run_script("train_ace.py", [args.rgb_files, network, *mapping_args(args, False, args.seed_iterations,
                                                                        args.seed_dataset_passes),
                                "--use_pose_seed", seed_values(args)[k], "--aug_shift", args.seed_aug_shift,
                                "--aug_viewpoint", args.seed_aug_viewpoint, *prior_args(args, seed=True),
                                *focal_args(focal), *extra,
                                *(render_args(args) if render else [])], threads, label=network.stem)


def map_and_score_seed(args, k: int, seed: float, focal: float) -> float:
    threads = max(1, (os.cpu_count() or 1) // max(1, args.seed_parallel_workers))
    network = seed_network_file(args, k)
    if not network.exists():
        map_seed(args, k, focal, threads)
    rate = register(args, network, f"iteration0_seed{k}_fastcheck", focal, SEED_SCORING_MAX_IMAGES, threads)
    _log.info("seed %d (image fraction %.4f): %.1f%% of the checked images registered", k, seed, 100 * rate)
    return rate


def score_seeds_until_good(args, seeds: np.ndarray, focal: float) -> list[float]:
    """Seeds one after the other, stopping at the first that registers enough: a later seed can only tie it, and
    each costs a mapping run (about a minute on CPU)."""
    rates = []
    for k, seed in enumerate(seeds):
        rates.append(map_and_score_seed(args, k, seed, focal))
        if rates[-1] >= seed_stop_rate(args) and k + 1 < len(seeds):
            _log.info("seed %d registers %.1f%% (>= --seed_stop_rate %g): %d more seeds not tried "
                      "(--seed_early_stop)", k, 100 * rates[-1], seed_stop_rate(args), len(seeds) - k - 1)
            break
    return rates


def seed_stop_rate(args) -> float:
    return args.registration_threshold if args.seed_stop_rate is None else args.seed_stop_rate


def choose_seed(args, state: RunState, focal: float) -> None:
    from joblib import Parallel, delayed
    seeds = seed_values(args)
    workers = args.seed_parallel_workers
    _log.info("trying %d seed images (%d in parallel)", len(seeds), workers if workers > 0 else len(seeds))
    if args.seed_early_stop and workers == 1:
        rates = score_seeds_until_good(args, seeds, focal)
    else:  # each seed runs in sub-processes, so threads are enough to run them side by side
        rates = Parallel(n_jobs=workers, backend="threading")(
            delayed(map_and_score_seed)(args, k, s, focal) for k, s in enumerate(seeds))
    best = int(np.argmax(rates))
    state.seed_id = f"iteration0_seed{best}"
    _log.info("best seed: %d (%.1f%% registered)", best, 100 * rates[best])


def start_from_seed_network(args, state: RunState) -> None:
    stem = args.seed_network.stem
    target = args.results_folder / f"{stem}.pt"
    if args.seed_network.resolve() != target.resolve():
        shutil.copyfile(args.seed_network, target)
    state.seed_id = stem


def registration_focal_of(args, folder: Path, run_id: str, fallback: float) -> float:
    """The refined focal to register with: fx of the first image (the stages scale every camera of a calibration
    file alike, so one number carries the refinement)."""
    preliminary = folder / f"poses_{run_id}_preliminary.txt"
    entries = dataset_io.read_ace_pose_file(preliminary)
    if not entries:
        return fallback
    if not args.calibration_file:
        return dataset_io.single_focal(entries, str(preliminary))
    first, mapped = dataset_io.image_cameras([args.images[0], entries[0].path], args.calibration_file, fallback,
                                             log=False)
    return first.fx * entries[0].focal / mapped.fx


def round_augmentation(args, final: bool) -> bool:
    """Whether a mapping round augments its views: --final_use_aug decides the final round when set."""
    if final and args.final_use_aug is not None:
        return args.final_use_aug
    return args.round_use_aug


def mapping_round(args, state: RunState, iteration: int, previous: str,
                  initial_focal: float) -> tuple[str, float, Path]:
    """Map round `iteration` from the registration `previous`; returns its run id, the focal to register with and
    the pose file it mapped from."""
    folder = args.results_folder
    run_id = f"iteration{iteration}"
    refit = state.stop_scheduled and args.final_refit
    location, bandwidth = resolved_prior(args, state)
    source = round_input(args, state, previous)
    command = [args.rgb_files, folder / f"{run_id}.pt", *mapping_args(args, refit),
               "--use_ace_pose_file", source, "--pose_refinement", args.refinement,
               "--refine_calibration", refines_focal_in_rounds(args), *prior_args(args, False, location, bandwidth),
               "--use_aug", round_augmentation(args, state.stop_scheduled), *render_args(args)]
    if args.depth_use_always:
        command += ["--depth_files", args.depth_files]
    if args.render_visualization:
        command += ["--use_existing_vis_buffer", f"{previous}_register.pkl"]
    warm = args.warmstart and not refit and (iteration > 1 or args.seed_network is not None)
    if warm:
        command += ["--load_weights", folder / f"{previous}.pt"]
    _log.info("iteration %d: %s mapping from %s", iteration, "final refit" if refit else
              ("warm-started" if warm else "fresh"), source.name)
    run_script("train_ace.py", command, label=run_id)
    focal = registration_focal_of(args, folder, run_id, initial_focal)
    return run_id, focal, source


def refines_focal_in_rounds(args) -> bool:
    """Under --round_bundle_adjustment the adjustment owns the focal length: with the poses fixed, the rounds' own
    refinement pulled it 7-20 % short of the adjustment's on temple (README, "Bundle adjustment in the loop")."""
    return args.refine_calibration and not args.round_bundle_adjustment


def round_input(args, state: RunState, previous: str) -> Path:
    """The pose file a mapping round maps from: the previous registration, bundle-adjusted first under
    --round_bundle_adjustment (the adjustment's multi-view tracks move a heuristic focal length that the
    rounds' own refinement barely changes; README, "Bundle adjustment")."""
    registered = registration_file(args, state, previous)
    if not args.round_bundle_adjustment:
        return registered
    return adjust_poses(args, registered, "round bundle adjustment",
                        f"the next round maps from the unadjusted {registered.name}",
                        has_estimated_focal(args, state, previous))


def resolved_prior(args, state: RunState) -> tuple[float | None, float | None]:
    """Numbers for an 'auto' prior location/bandwidth from the seed's median depth (None: not auto)."""
    if "auto" not in (args.prior_loss_location, args.prior_loss_bandwidth):
        return None, None
    if getattr(args, "resolved_prior", None) is None:  # once per run: a ZoeDepth seed would be estimated again
        from ace_loss import auto_prior
        median = seed_median_depth(args, state)
        args.resolved_prior = auto_prior(median, args.prior_loss_location, args.prior_loss_bandwidth)
        _log.info("prior from the seed's median depth %.3f: location %.3f, bandwidth %.3f", median,
                  *args.resolved_prior)
    return args.resolved_prior


def seed_median_depth(args, state: RunState) -> float:
    """Median depth of the chosen seed image: its depth file, else the seed depth's own normalisation (two-view
    and constant seeds have a median of 2 units by construction), else a fresh ZoeDepth estimate."""
    images = dataset_io.glob_files(args.rgb_files)
    depth_files = dataset_io.glob_files(args.depth_files, "--depth_files") if args.depth_files else None
    if state.seed_id is None or not state.seed_id.startswith("iteration0_seed") or args.seed_network is not None:
        if depth_files is None:
            raise UserError(f"{AUTO_PRIOR_FLAG} with --seed_network need "
                            "--depth_files (the seed's depth is unknown); otherwise pass numbers")
        return dataset_io.median_depth_of_files(depth_files, AUTO_PRIOR_FLAG)
    k = seed_index(state.seed_id)
    index = min(int(seed_values(args)[k] * len(images)), len(images) - 1)
    if depth_files is not None:
        return dataset_io.median_valid_depth([dataset_io.load_depth_png(depth_files[index])], AUTO_PRIOR_FLAG)
    if args.seed_depth == "zoedepth":
        from dataset import zoedepth_of
        camera = dataset_io.image_cameras([images[index]], args.calibration_file, args.use_external_focal_length,
                                          log=False)[0]
        return dataset_io.median_valid_depth([zoedepth_of(images[index], camera)], AUTO_PRIOR_FLAG)
    from dataset import CONSTANT_SEED_DEPTH  # two-view seed depth is normalised to this median too
    return CONSTANT_SEED_DEPTH


def reconstruct(args, state: RunState, initial_focal: float) -> str:
    folder = args.results_folder
    if state.seed_id is None:
        if args.seed_network is not None:
            start_from_seed_network(args, state)
        else:
            choose_seed(args, state, initial_focal)
        state.save(folder)
    if state.seed_id not in state.completed:
        if args.render_visualization and args.seed_network is None:
            # Seeds are scored without rendering; the chosen one is mapped again (same seed) to draw it.
            map_seed(args, seed_index(state.seed_id), initial_focal, render=True)
        rate = register(args, folder / f"{state.seed_id}.pt", state.seed_id, initial_focal,
                        render=args.render_visualization)
        _complete(state, state.seed_id, rate, folder)
        state.max_rate = rate
        state.save(folder)
    if args.seed_refocus and not state.refocus_checked and len(state.completed) == 1:
        refocus_seed(args, state)
        state.refocus_checked = True
        state.save(folder)
    if resects_seed_ring(args) and not gated_file(folder, state.seed_id).exists():
        rate = gate_registration(args, state.seed_id, ["--seed_image", seed_image(args, state.seed_id)])
        state.rates[state.seed_id] = state.max_rate = rate
        state.save(folder)
    last = state.completed[-1]
    iteration = len(state.completed)
    if iteration > 1:
        _log.info("resuming after %s (registration rate %.1f%%)", last, 100 * state.rates[last])
    while not state.finished and iteration < args.iterations_max:
        run_id, focal, source = mapping_round(args, state, iteration, last, initial_focal)
        rate = register(args, folder / f"{run_id}.pt", run_id, focal, render=args.render_visualization)
        if state.stop_scheduled and args.final_use_aug is False and not args.registration_resection:
            rate = keep_unfitted_registrations(args, run_id, source)
        if gates_registrations(args):
            rate = gate_registration(args, run_id, ["--earlier_poses", source])
        _complete(state, run_id, rate, folder)
        last = run_id
        _update_stop(args, state, iteration, rate)
        state.save(folder)
        iteration += 1
    state.finished = True
    state.save(folder)
    return last


def keep_unfitted_registrations(args, run_id: str, mapped_from: Path) -> float:
    """--final_use_aug False: a head fitted without augmentation registers the views it was fitted to far better,
    but new views worse and with inflated inlier counts (temple: one 9.9 deg off with 1817 inliers; README,
    "Cameras"). So in the final round the images it was not mapped from keep the entry the loop gave them
    (below --registration_confidence, or they would have been mapped). The head's own registration is kept as
    poses_<run_id>_final_head.txt; returns the registration rate. Not under --registration_resection: there the
    gate places each new image again from its observations of the earlier structure, or holds it back, so the
    head's registration of a new view is judged like any round's instead of thrown away."""
    registered = args.results_folder / f"poses_{run_id}.txt"
    earlier = {e.path: e for e in dataset_io.read_ace_pose_file(mapped_from)}
    entries = dataset_io.read_ace_pose_file(registered)
    kept = {e.path for e in entries if e.path in earlier and earlier[e.path].confidence < args.registration_confidence}
    if kept:
        atomic_write_text(registered.with_name(f"{registered.stem}_final_head.txt"), registered.read_text())
        entries = [dataset_io.PoseEntry(e.path, earlier[e.path].world_to_cam, e.focal, earlier[e.path].confidence)
                   if e.path in kept else e for e in entries]
        dataset_io.write_ace_pose_file(registered, entries)
        _log.info("final round without augmentation: %d image(s) it was not mapped from keep their entries of %s "
                  "(the head's own in %s)", len(kept), mapped_from.name, f"{registered.stem}_final_head.txt")
    return dataset_io.registration_rate(entries, args.registration_confidence)


def gated_file(folder: Path, run_id: str) -> Path:
    return folder / f"poses_{run_id}{GATED}.txt"


def registration_file(args, state: RunState, run_id: str) -> Path:
    """The registration `run_id` as the loop goes on with it: through gate_registrations.py under
    --registration_gate or --registration_resection (the seed's only under resection of its first ring)."""
    if resects_seed_ring(args) if run_id == state.seed_id else gates_registrations(args):
        return gated_file(args.results_folder, run_id)
    return args.results_folder / f"poses_{run_id}.txt"


def registration_files(folder: Path, run_id: str) -> dict[str, Path]:
    """The registration `run_id` of a run as the loop went on with it (gated when it was) under "before
    adjustment", and after its bundle adjustment under "adjusted": those that exist (for benchmarks reading a
    run, which do not know its flags)."""
    gated = gated_file(folder, run_id)
    before = gated if gated.exists() else folder / f"poses_{run_id}.txt"
    files = {"before adjustment": before, "adjusted": before.with_name(before.stem + "_adjusted.txt")}
    return {stage: path for stage, path in files.items() if path.exists()}


def last_registration_files(folder: Path) -> dict[str, Path]:
    """registration_files of a finished run's last registration."""
    return registration_files(folder, json.loads((folder / STATE_FILE).read_text())["completed"][-1])


def gates_registrations(args) -> bool:
    """Whether each round's registration goes through gate_registrations.py (to be gated, resected or both)."""
    return args.registration_gate or args.registration_resection


def resects_seed_ring(args) -> bool:
    """Whether the seed's registration is resected against the seed image and its two-view partner (the seed
    image is known only when the seed is mapped here)."""
    return args.registration_resection and args.seed_network is None


def seed_image(args, seed_id: str) -> str:
    images = dataset_io.glob_files(args.rgb_files)
    return images[dataset_io.seed_image_index(seed_values(args)[seed_index(seed_id)], len(images))]


def gate_registration(args, run_id: str, structure: list) -> float:
    """--registration_gate / --registration_resection: poses_<run_id>_gated.txt, the registration with the new
    images that disagree with the earlier structure (`structure`: gate_registrations.py's --earlier_poses, the
    file the round mapped from, or --seed_image) held back (gate) or first placed again against it (resection);
    returns its registration rate. When the stage fails the registration goes on as it is (copied, so that the
    loop reads one name)."""
    registered = args.results_folder / f"poses_{run_id}.txt"
    gated = gated_file(args.results_folder, run_id)
    max_miss = args.registration_gate_max_miss if args.registration_gate else float("inf")  # inf: holds none back
    resect = ["--resect"] if args.registration_resection else []
    hold = ["--hold_unjudged"] if args.registration_gate and args.registration_gate_hold_unjudged else []
    result = optional_stage("gate_registrations.py", registered, gated, [
        *structure, "--device", args.device, *calibration_args(args), *feature_cache_args(args),
        "--confidence_threshold", args.registration_confidence, "--max_miss", max_miss,
        "--max_spread", args.registration_gate_max_spread, *resect, *hold],
        "registration gate", "the registration goes on ungated")
    if result != gated:
        atomic_write_text(gated, registered.read_text())
        cameras = dataset_io.cameras_file_beside(registered)
        if cameras.exists():
            atomic_write_text(dataset_io.cameras_file_beside(gated), cameras.read_text())
    return dataset_io.registration_rate(dataset_io.read_ace_pose_file(gated), args.registration_confidence)


def refocus_seed(args, state: RunState) -> None:
    """--seed_refocus. A seed head mapped with a focal length far off fits a scene distorted to match it, and a
    head that fits wrong geometry registers images wrongly (README, "Honest confidence"). The adjustment of the
    seed's registration estimates the focal from feature tracks; when it moves the heuristic's guess a lot, the
    seed is mapped again with it, and the loop goes on from the seed whose adjusted registration keeps more
    images consistent (confident, with most of their feature observations kept by the adjustment)."""
    if focal_known(args) or args.seed_network is not None:
        return  # the focal length is known, or no seed is mapped here
    folder = args.results_folder
    first = adjust_poses(args, folder / f"poses_{state.seed_id}.txt", "seed adjustment", "the seed is kept",
                         has_estimated_focal(args, state, state.seed_id))
    guessed = dataset_io.read_ace_pose_file(folder / f"poses_{state.seed_id}.txt")[0].focal
    estimated = dataset_io.read_ace_pose_file(first)[0].focal
    if not focal_changed(guessed, estimated, REFOCUS_MIN_RATIO):
        _log.info("seed refocus: the adjustment moves the focal %.1f -> %.1f px; the seed is kept", guessed, estimated)
        return
    refocused = f"{state.seed_id.removesuffix(REFOCUSED)}{REFOCUSED}"
    network = folder / f"{refocused}.pt"
    _log.info("seed refocus: the adjustment moves the focal %.1f -> %.1f px; mapping the seed again with it",
              guessed, estimated)
    if not network.exists():
        map_seed(args, seed_index(state.seed_id), estimated, network=network)
    rate = register(args, network, refocused, estimated, render=args.render_visualization)
    second = adjust_poses(args, folder / f"poses_{refocused}.txt", "seed adjustment", "the first seed is kept",
                          has_estimated_focal(args, state, refocused))
    before, after = consistent_images(args, first), consistent_images(args, second)
    _log.info("seed refocus: %d images consistent with the heuristic's focal, %d with %.1f px", before, after,
              estimated)
    if after >= before:  # a tie goes to the focal that the images themselves support
        state.seed_id = refocused
        state.completed[-1] = refocused
        state.rates[refocused] = state.max_rate = rate


def consistent_images(args, adjusted: Path) -> int:
    """Images of an adjusted registration that are confident and of whose feature observations the adjustment
    kept at least verify_poses.MIN_KEPT_FRACTION (an image in no track, share NaN, does not count: unlike in
    verify_poses.py's check, where it is left to the other tests, here it shows no support for the focal)."""
    from bundle_adjust import read_kept_fractions
    from verify_poses import MIN_KEPT_FRACTION
    entries = dataset_io.read_ace_pose_file(adjusted)
    kept = read_kept_fractions(adjusted, entries)
    if kept is None:  # the adjustment failed: the registration as it is
        kept = np.ones(len(entries))
    return sum(e.confidence >= args.registration_confidence and k >= MIN_KEPT_FRACTION for e, k in zip(entries, kept))


def _complete(state: RunState, run_id: str, rate: float, folder: Path) -> None:
    if rate == 0:
        raise UserError(f"no image registered against {folder / run_id}.pt: try more seeds (--try_seeds), a "
                        f"lower --registration_confidence or a focal length (--use_external_focal_length)")
    state.completed.append(run_id)
    state.rates[run_id] = rate
    _log.info("%s: %.1f%% of the images registered", run_id, 100 * rate)


def _update_stop(args, state: RunState, iteration: int, rate: float) -> None:
    if state.stop_scheduled:
        state.finished = True
        return
    if rate >= args.registration_threshold or rate - state.max_rate < args.relative_registration_threshold:
        if args.final_refine:
            state.stop_scheduled = True
            _log.info("stop criterion met (rate %.1f%%, best before %.1f%%): one final round", 100 * rate,
                      100 * state.max_rate)
        else:
            state.finished = True
    if iteration >= args.iterations_max - 2:
        state.stop_scheduled = True
    state.max_rate = max(state.max_rate, rate)


# ----------------------------------------------------------------------------------------------------------------

def validate(args) -> float:
    """Checks that fail fast; returns the initial focal length (-1: heuristic)."""
    images = dataset_io.glob_files(args.rgb_files)
    if len(images) < 2:
        raise UserError(f"rgb_files: '{args.rgb_files}' matches {len(images)} image; ACE0 needs at least 2")
    ensure_writable_folder(args.results_folder)
    args.images = images
    initial_cameras(args, images)
    if args.seed_network is not None:
        from ace_network import load_encoder, load_head
        if not args.seed_network.is_file():
            raise UserError(f"--seed_network {args.seed_network}: file not found")
        load_head(args.seed_network, load_encoder(args.encoder_path))
    if args.try_seeds < 1 and args.seed_network is None:
        raise UserError("--try_seeds must be at least 1")
    if args.seed_stop_rate is not None and not 0 < args.seed_stop_rate <= 1:
        raise UserError(f"--seed_stop_rate must be in (0, 1], got {args.seed_stop_rate:g}")
    check_match_loss_weight(args)
    if args.registration_gate_max_miss <= 0:
        raise UserError(f"--registration_gate_max_miss must be positive, got {args.registration_gate_max_miss:g}")
    if args.registration_gate_max_spread < 0:
        raise UserError("--registration_gate_max_spread must be 0 (no test) or positive, got "
                        f"{args.registration_gate_max_spread:g}")
    check_prior_flags(args, has_depth=args.depth_files is not None)
    if args.loss_structure == "probabilistic" and args.prior_loss_type == "none":
        raise UserError(PROBABILISTIC_NEEDS_PRIOR)  # train_ace.py would raise it at its first step
    if args.depth_use_always and args.depth_files is None:
        raise UserError("--depth_use_always True needs --depth_files")
    if args.prior_loss_type == "rgbd_laplace_nll" and not args.depth_use_always:
        raise UserError("--prior_loss_type rgbd_laplace_nll needs depth in every mapping round: pass --depth_files "
                        "and --depth_use_always True")
    if args.seed_parallel_workers == -1:
        args.seed_parallel_workers = os.cpu_count() or 1
    set_seed_augmentation(args)
    if args.calibration_file and args.use_external_focal_length <= 0:
        return dataset_io.image_cameras(images[:1], args.calibration_file, log=False)[0].fx
    return args.use_external_focal_length


def initial_cameras(args, images: list[str]) -> None:
    """Resolve the cameras once. When one focal length cannot say them (EXIF focals, images of several sizes),
    write them as a calibration file that every stage reads."""
    cameras = dataset_io.image_cameras(images, args.calibration_file, args.use_external_focal_length)
    args.focal_guessed = any(c.source.startswith("heuristic") for c in cameras)
    if args.calibration_file or len({(c.fx, c.width, c.height) for c in cameras}) == 1 and \
            cameras[0].source.startswith(("heuristic", "external")):
        return
    import calibration
    path = args.results_folder / INITIAL_CALIBRATION_FILE
    atomic_write_text(path, calibration.format_per_image_file(images, cameras))
    args.calibration_file = str(path)
    _log.info("initial cameras (EXIF or several image sizes) written to %s", path)


def set_seed_augmentation(args) -> None:
    """Fill the seed augmentation flags left unset: the encoder's seed policy (ace_util.EncoderSpec), or the
    original's seed mapping."""
    policy = encoder_spec(args.encoder_path).seed_augmentation
    original = {"seed_aug_shift": 0.0, "seed_aug_viewpoint": 0.0, "seed_dataset_passes": args.max_dataset_passes}
    for flag, value in (policy or original).items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    _log.info("seed augmentation: shift %.2f, viewpoints up to %.0f deg, %d views", args.seed_aug_shift,
              args.seed_aug_viewpoint, args.seed_dataset_passes)


def self_calibrated_focal(args, state: RunState, initial_focal: float) -> float:
    """--self_calibrate_focal: the focal to start from when it is only the heuristic's guess; estimated once and
    kept in the run state, so that a resumed run starts from the same number."""
    if initial_focal > 0 or args.calibration_file or args.seed_network is not None:
        _log.info("--self_calibrate_focal: the focal length is given, calibrated or in a seed head; not estimated")
        return initial_focal
    if state.self_calibrated_focal is None:
        if state.seed_id is not None:
            _log.info("--self_calibrate_focal: this run began without it; its seed keeps the focal it was mapped with")
            return initial_focal
        state.self_calibrated_focal = estimate_initial_focal(args)
        state.save(args.results_folder)
    return state.self_calibrated_focal


def estimate_initial_focal(args) -> float:
    """focal_estimation.estimate_focal on the run's images, or -1 (the heuristic) when they do not determine it."""
    import focal_estimation
    from ace_network import load_encoder
    cameras = dataset_io.image_cameras(args.images, log=False)
    start = time.time()
    estimate = focal_estimation.estimate_focal(args.images, cameras, load_encoder(args.encoder_path, args.device),
                                               int(args.image_resolution), args.device)
    if estimate is None or not estimate.determined:
        detail = "too few image pairs match" if estimate is None else \
            f"no clear minimum (best {estimate.focal:.1f} px, contrast {estimate.contrast:.2f} < " \
            f"{focal_estimation.MIN_CONTRAST:g}; a narrow field of view?)"
        _log.info("focal self-calibration: %s; starting from the heuristic's %.1f px (%.1f s)", detail,
                  cameras[0].fx, time.time() - start)
        return -1.0
    _log.info("focal self-calibration: %.1f px from %d image pairs (contrast %.2f; the heuristic's guess was %.1f px), "
              "%.1f s", estimate.focal, estimate.pairs, estimate.contrast, cameras[0].fx, time.time() - start)
    return estimate.focal


def summary(args, last: str, elapsed: float, state: RunState) -> None:
    final = args.results_folder / "poses_final.txt"
    entries = dataset_io.read_ace_pose_file(final)
    rates = ", ".join(f"{100 * dataset_io.registration_rate(entries, c):.1f}% @{c}" for c in REPORTED_CONFIDENCES)
    focal = entries[0].focal if entries else float("nan")
    _log.info("done in %.1f min, %d iterations; final focal %.1f px; registered: %s; poses: %s",
              elapsed / 60, len(state.completed), focal, rates, final)


def apply_cpu_profiles(args, parser, device, argv: list[str] | None = None) -> None:
    """On CPU: this script's row of the CPU profile, and the mlp refiner's when --refinement mlp is typed (the row
    turns the refiner off otherwise); the rounds pass both on to train_ace.py."""
    apply_cpu_profile(args, parser, CPU_PROFILE, device, argv)
    if args.refinement == "mlp":
        apply_cpu_profile(args, parser, CPU_REFINER_PROFILE, device, argv, "CPU profile of the mlp refiner")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    initial_focal = validate(args)  # before the device: bad input is reported without importing torch
    device = select_device(args.device)
    apply_cpu_profiles(args, parser, device, argv)
    args.device = str(device)
    start = time.time()
    state = RunState.load_or_create(args.results_folder, args.rgb_files, args.encoder_path)
    if state.finished and (args.results_folder / "poses_final.txt").exists():
        _log.info("%s already holds a finished reconstruction (%s)", args.results_folder, STATE_FILE)
    else:
        if args.depth_files is None and args.seed_network is None and args.seed_depth == "auto":
            from depth_estimation import zoedepth_available
            args.seed_depth = "zoedepth" if zoedepth_available() else "twoview"
        if args.self_calibrate_focal:
            initial_focal = self_calibrated_focal(args, state, initial_focal)
        last = reconstruct(args, state, initial_focal)
        final_source = registration_file(args, state, last)
        if args.bundle_adjustment:
            final_source = adjust_final_poses(args, state, last)
        if args.verify_poses:
            final_source = checked_final_poses(args, final_source)
        atomic_write_text(args.results_folder / "poses_final.txt", final_source.read_text())
        write_final_cameras(args, final_source)
        if args.export_point_cloud:
            export_point_cloud(args, last)
    if args.render_visualization:
        render_video(args)
    summary(args, state.completed[-1], time.time() - start, state)
    report_verification(args)


def checked_final_poses(args, final_source: Path) -> Path:
    """--verify_poses: the pose file that becomes poses_final.txt, verified (and its focal recovered), or with every
    confidence lowered when the verification failed; its report published."""
    verified = verify_final_poses(args, final_source, adjusted=final_source.stem.endswith("_adjusted"))
    if verified == final_source:
        verified = unverified_copy(args, final_source)
    elif args.recover_focal and args.bundle_adjustment:
        verified = recover_focal(args, final_source, verified)
    publish_verification(args, verified)
    return verified


def verify_final_poses(args, source: Path, adjusted: bool) -> Path:
    """<source>_verified.txt: the final poses with the confidence of images that fail verify_poses.py lowered
    (which checks a bundle-adjusted copy unless the poses are adjusted already); its report lies beside it."""
    verified = source.with_name(source.stem + "_verified.txt")
    return optional_stage("verify_poses.py", source, verified, [
        "--device", args.device, *calibration_args(args), *feature_cache_args(args), "--confidence_threshold",
        args.registration_confidence, "--adjust", not adjusted,
        "--check_focal", args.verify_focal and not focal_held_by_user(args)],
        "verification", "the poses count as unverified")


def unverified_copy(args, source: Path) -> Path:
    """<source>_unverified.txt: the poses with every confidence lowered below --registration_confidence, for when
    the verification failed. Unchecked poses must not read as good (stop 43's ring: a failed check left 11
    confident images, up to 179 deg off); the source keeps the registration's confidences."""
    unverified = source.with_name(source.stem + "_unverified.txt")
    write_unverified(source, unverified, args.registration_confidence, args.calibration_file,
                     f"verify_poses.py failed on {source.name} (see the log); check them with verify_poses.py "
                     f"{source} {source.stem}_verified.txt")
    return unverified


def verification_summary(verified: Path) -> dict:
    """The summary of the report beside `verified` ({} when there is none)."""
    report = default_report(verified)
    return json.loads(report.read_text())["summary"] if report.exists() else {}


def publish_verification(args, verified: Path) -> None:
    """<results>/poses_final_verification.json: the report of the poses that become poses_final.txt (none when
    the verification failed)."""
    report = default_report(verified)
    final_report = args.results_folder / VERIFICATION_REPORT
    if report.exists():
        atomic_write_text(final_report, report.read_text())
    elif final_report.exists():
        final_report.unlink()  # an earlier run's report would vouch for poses it never saw


def recover_focal(args, source: Path, verified: Path) -> Path:
    """--recover_focal. When the focal check found that the feature tracks fit another focal length far better,
    poses mapped with a wrong focal are bent as a whole and sit in a local minimum of the adjustment; started from
    the better focal, the adjustment leaves it (stop 32's temple, mapped at 875 px and every image flagged:
    9.1 deg -> 1.28 deg at 1441 px, true 1520). The result replaces `verified` only when its own verification
    finds no better focal and fewer unreliable images."""
    first = verification_summary(verified)
    better = first.get("focal_check", {}).get("better_focal")
    if better is None:
        return verified
    entries = dataset_io.read_ace_pose_file(source)
    restart = source.with_name(source.stem + FOCAL_RECOVERY + ".txt")
    _log.info("focal recovery: adjusting %s again from %.1f px, the focal the tracks fit (its poses: %.1f px)",
              source.name, better, entries[0].focal)
    if not up_to_date(restart, source):
        cameras = dataset_io.cameras_file_beside(source)
        if cameras.exists():  # a principal point the adjustment refined goes along (the focal column scales fx, fy)
            atomic_write_text(dataset_io.cameras_file_beside(restart), cameras.read_text())
        dataset_io.write_ace_pose_file(restart, [replace(e, focal=better) for e in entries])
    adjusted = adjust_poses(args, restart, "focal recovery adjustment", "the flagged poses stand", False)
    if adjusted == restart:
        return verified
    second = verify_final_poses(args, adjusted, adjusted=True)
    summary_second = verification_summary(second) if second != adjusted else {}
    if not summary_second:
        return verified
    still_better = summary_second.get("focal_check", {}).get("better_focal")
    if still_better is None and summary_second["unreliable"] < first["unreliable"]:
        _log.warning("focal recovery: the poses adjusted from %.1f px pass the focal check, %d of %d images "
                     "unreliable (before: %d); they become poses_final.txt (the flagged ones: %s)", better,
                     summary_second["unreliable"], summary_second["checked"], first["unreliable"], verified.name)
        return second
    _log.warning("focal recovery: the poses adjusted from %.1f px do not pass (%d of %d unreliable%s); the flagged "
                 "poses stand", better, summary_second["unreliable"], summary_second["checked"],
                 "" if still_better is None else f", the tracks still prefer {still_better:.1f} px")
    return verified


def up_to_date(target: Path, source: Path) -> bool:
    """Whether `target` exists and was written after `source` (so a rerun reuses it)."""
    return target.exists() and target.stat().st_mtime >= source.stat().st_mtime


def optional_stage(script: str, source: Path, target: Path, arguments: list, what: str, fallback_note: str) -> Path:
    """`script source target *arguments`: `target`, reused when a rerun finds it newer than `source`, or `source`
    itself (with a warning) when the stage fails: a polish or a check must not end a reconstruction."""
    if up_to_date(target, source):
        _log.info("using the %s in %s", what, target)
        return target
    try:
        run_script(script, [source, target, *arguments], label=target.stem)
    except UserError as error:
        _log.warning("%s; %s", error, fallback_note)
        return source
    return target


def report_verification(args) -> None:
    """Warn about unreliable images; a failed reconstruction is an error only with --fail_on_unreliable."""
    report_file = args.results_folder / VERIFICATION_REPORT
    if not args.verify_poses or not report_file.exists():
        return
    summary = json.loads(report_file.read_text())["summary"]
    if "verification_failed" in summary:
        message = (f"the poses are not verified: {summary['verification_failed']}; every confidence in "
                   f"poses_final.txt is lowered below {args.registration_confidence}, so exports leave them out")
        if args.fail_on_unreliable:
            raise UserError(message)
        _log.warning(message)
        return
    if summary["unreliable"]:
        why = "they were mapped with a wrong focal length" if wrong_focal(summary) is not None else \
            "their poses disagree with independent feature matches"
        _log.warning("%d of %d registered images are unreliable: %s (confidence lowered below %d in "
                     "poses_final.txt; exports leave them out; details: %s)", summary["unreliable"],
                     summary["checked"], why, args.registration_confidence, report_file)
    if summary["failed"]:
        message = failure_message(summary, args)
        if args.fail_on_unreliable:
            raise UserError(message)
        _log.warning(message)


def wrong_focal(summary: dict) -> float | None:
    """The focal length the verification's feature tracks fit far better than the poses' own, if it found one."""
    return (summary.get("focal_check") or {}).get("better_focal")


def failure_message(summary: dict, args) -> str:
    """Why the verification failed the reconstruction, and what to try. A wrong focal is named as such: then the
    images agree with the matches pair by pair, and more seeds would not help."""
    better = wrong_focal(summary)
    if better is None:
        hint = "more seeds (--try_seeds)" if args.use_external_focal_length > 0 else \
            "a known focal length (--use_external_focal_length) or more seeds (--try_seeds)"
        return (f"the reconstruction failed: {summary['unreliable']} of {summary['checked']} registered images "
                f"disagree with feature matches between them; try {hint}")
    remedies = []
    if args.refine_calibration:
        remedies.append("hold a known focal (--refine_calibration False)" if args.use_external_focal_length > 0
                        or args.calibration_file else "give the focal length (--use_external_focal_length)")
    if not args.round_bundle_adjustment:
        remedies.append("let the rounds' bundle adjustment fix it (--round_bundle_adjustment True)")
    advice = "; try to " + " or ".join(remedies) if remedies else ""
    return (f"the reconstruction failed: the feature tracks fit a focal length of {better:.0f} px, the poses were "
            f"mapped with {summary['focal_check']['focal']:.0f} px, so all {summary['checked']} registered images "
            f"are flagged{advice}")


def write_final_cameras(args, final_source: Path) -> None:
    """cameras_final.txt beside poses_final.txt when the cameras are more than one focal: the adjustment's own
    (it may have moved the principal point), else the calibration with the final focal lengths."""
    final = args.results_folder / "cameras_final.txt"
    adjusted = dataset_io.cameras_file_beside(final_source)
    if up_to_date(adjusted, final_source):
        atomic_write_text(final, adjusted.read_text())
        return
    entries = dataset_io.read_ace_pose_file(args.results_folder / "poses_final.txt")
    dataset_io.write_cameras_beside(args.results_folder / "poses_final.txt", [e.path for e in entries],
                                    dataset_io.entry_cameras(entries, args.calibration_file))


def adjust_final_poses(args, state: RunState, last: str) -> Path:
    """poses_<last>_adjusted.txt: the last registration after bundle adjustment (reused when a rerun finds it), or
    the registration itself when the adjustment fails."""
    registered = registration_file(args, state, last)
    return adjust_poses(args, registered, "bundle adjustment", f"poses_final.txt is the unadjusted {registered.name}",
                        has_estimated_focal(args, state, last))


def focal_known(args) -> bool:
    """Whether the focal length is known rather than guessed: given (--use_external_focal_length), calibrated
    (--calibration_file) or from EXIF (written as the initial calibration file, which also holds the heuristic's
    guesses when the images have several sizes: then it is not known)."""
    return args.use_external_focal_length > 0 or (bool(args.calibration_file) and not args.focal_guessed)


def focal_held_by_user(args) -> bool:
    """The focal length is known and held (--refine_calibration False): the verification does not question it."""
    return focal_known(args) and not args.refine_calibration


def has_estimated_focal(args, state: RunState, run_id: str) -> bool:
    """Whether the registration `run_id` has a focal length that an earlier adjustment estimated: the refocused
    seed's (mapped with the seed adjustment's focal), and under --round_bundle_adjustment every registration but
    the seed's (each round maps with the previous adjustment's focal). An adjustment of such a registration may
    refine its focal but not replace it (ESTIMATED_FOCAL_MAX_CHANGE; on the ring a round's adjustment ran it from
    2761 to 15070 px, and nothing registered after)."""
    return run_id.endswith(REFOCUSED) or (args.round_bundle_adjustment and run_id != state.seed_id)


def adjust_poses(args, registered: Path, what: str, fallback_note: str, focal_estimated: bool) -> Path:
    """<registered>_adjusted.txt by bundle_adjust.py, or `registered` itself when the adjustment fails; the focal
    may change by at most ESTIMATED_FOCAL_MAX_CHANGE when `focal_estimated`."""
    limit = ["--max_focal_change", ESTIMATED_FOCAL_MAX_CHANGE] if focal_estimated else []
    return optional_stage("bundle_adjust.py", registered, registered.with_name(registered.stem + "_adjusted.txt"), [
        "--device", args.device, *calibration_args(args), *feature_cache_args(args), *depth_scale_args(args),
        "--confidence_threshold", args.registration_confidence, "--refine_focal", args.refine_calibration, *limit],
        what, fallback_note)


def feature_cache_args(args) -> list:
    return ["--feature_cache", args.results_folder / FEATURE_CACHE_FOLDER] if args.feature_cache else []


def depth_scale_args(args) -> list:
    """RGB-D ACE0: the adjustments take the scale of the depth maps, which every round maps with."""
    return ["--depth_files", args.depth_files] if args.depth_use_always else []


def render_video(args) -> None:
    """Final sweep frames and reconstruction.mp4 from every frame of the renderings folder (once per run)."""
    renderings = args.results_folder / RENDER_FOLDER
    video = args.results_folder / VIDEO_FILE
    if video.exists():
        _log.info("%s exists; delete it to render the video again", video)
        return
    if not any(renderings.glob("iteration*_register.pkl")):
        _log.warning("no renderings in %s (the reconstruction ran without --render_visualization): no video",
                     renderings)
        return
    run_script("render_final_sweep.py", [renderings, "--render_marker_size", args.render_marker_size,
                                         "--render_camera_z_offset", args.render_camera_z_offset,
                                         "--render_flipped_portrait", args.render_flipped_portrait])
    from ace_visualizer import frame_files, write_video
    write_video(frame_files(renderings), video)


def export_point_cloud(args, last: str) -> None:
    run_script("export_point_cloud.py", [args.results_folder / "pc_final.ply", "--network",
                                         args.results_folder / f"{last}.pt", "--pose_file",
                                         args.results_folder / "poses_final.txt", "--convention", "opencv",
                                         "--dense_point_cloud", args.dense_point_cloud, *common_args(args)])


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
