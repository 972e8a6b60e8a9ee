#!/usr/bin/env python3
"""Benchmark an ACE0 pose file by novel view synthesis: convert it to a Nerfstudio dataset, train Nerfacto or
Splatfacto on the training frames with the poses fixed, and evaluate PSNR / SSIM / LPIPS on the test frames.

    python -m benchmarks.benchmark_poses --pose_file P --output_dir D --images_glob_pattern "G" [flags]

<output_dir>/nerf_data/transforms.json holds every globbed frame (OpenGL camera-to-world, per-frame pinhole
intrinsics of the original image, the confidence), the split (--split_json, else every 8th sorted frame from
index 4 is a test frame; training frames with confidence below 1000 are dropped, test frames kept) and
pc_final.ply when one lies next to the pose file. Images whose longer side exceeds --max_resolution are
downscaled by the smallest integer factor k into nerf_data/images_k/. Results:
<output_dir>/nerf_data/nerf_for_eval/<method>/run/eval.json. --no_run_nerfstudio stops after the conversion.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

import numpy as np  # noqa: E402

import dataset_io  # noqa: E402
from ace_util import in_mapping_set  # noqa: E402
from cli_common import UserError, atomic_write_text, run_main  # noqa: E402
from export_nerfstudio import POINT_CLOUD_NAME, nerfstudio_cam_to_world  # noqa: E402

TRAIN_CONFIDENCE = 1000      # training frames below this inlier count are unreliable poses
DEFAULT_TEST_STEP, DEFAULT_TEST_OFFSET = 8, 4
MAX_TEST_FRAMES = 1000
MAX_PRELOAD_FRAMES = 3500    # images kept on the GPU up to this many frames per split
EXPERIMENT = "nerf_for_eval"


@dataclass(eq=False)
class Frame:
    path: str                # as globbed (and as in the pose file and the split file)
    entry: dataset_io.PoseEntry


# ----------------------------------------------------------------------------------------------------------------
# Frames and split

def load_frames(pose_file: Path, pattern: str) -> tuple[list[Frame], tuple[int, int]]:
    images = dataset_io.glob_files(pattern, "images_glob_pattern")
    print(f"Found {len(images)} frames")
    entries = {e.path: e for e in dataset_io.read_ace_pose_file(pose_file)}
    bad = [e.path for e in entries.values() if not float(e.confidence).is_integer()]
    if bad:
        raise UserError(f"{pose_file}: confidence must be an integer inlier count (a *_preliminary.txt file "
                        f"has 'inf'), e.g. for {bad[0]}")
    sizes = {dataset_io.image_size(path) for path in images}
    if len(sizes) != 1:
        raise UserError(f"Expected all frames' resolutions to be equal, found {sorted(sizes)}")
    width, height = sizes.pop()
    frames = []
    for path in images:
        print(f"Processing frame {path}")
        entry = entries.get(path)
        if entry is None:
            print(f"WARNING: No pose found for frame {path}; using identity pose instead!")
            entry = dataset_io.PoseEntry(path, np.eye(4), 0.7 * height, 0)
        print(f"Intrinsics for frame are {entry.focal} {entry.focal} {width / 2} {height / 2}")
        frames.append(Frame(path, entry))
    return frames, (width, height)


def split_frames(frames: list[Frame], split_json: Path | None) -> tuple[list[Frame], list[Frame]]:
    """(train, test) before the confidence filter."""
    if split_json is None:
        print(f"No split file given; taking every {DEFAULT_TEST_STEP}th frame as test set")
        ordered = sorted(frames, key=lambda f: f.path)
        is_test = [i % DEFAULT_TEST_STEP == DEFAULT_TEST_OFFSET for i in range(len(ordered))]
        return ([f for f, t in zip(ordered, is_test) if not t], [f for f, t in zip(ordered, is_test) if t])
    print(f"Using split file {split_json}")
    try:
        split = json.loads(Path(split_json).read_text())
        train_names, test_names = set(split["train_filenames"]), set(split["test_filenames"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot read split file {split_json}: {error}") from None
    train, test = [], []
    for frame in frames:
        if frame.path in test_names:
            test.append(frame)
        elif frame.path in train_names:
            train.append(frame)
        else:
            raise UserError(f"Frame {frame.path} not found in split file {split_json}")
    return train, test


def filter_and_cap(train: list[Frame], test: list[Frame]) -> tuple[list[Frame], list[Frame]]:
    train = [f for f in train if in_mapping_set(f.entry.confidence, TRAIN_CONFIDENCE)]
    print(f"train split size after confidence filtering {len(train)}")
    if not train:
        raise UserError("No train filenames! Must have at least one (no training frame with confidence "
                        f">= {TRAIN_CONFIDENCE})")
    if not test:
        raise UserError("No test filenames! Must have at least one")
    step = len(test) // MAX_TEST_FRAMES
    if step > 1:  # a uniform subset keeps evaluation time bounded on long sequences
        test = sorted(test, key=lambda f: f.path)[::step]
        print(f"Subsampled the test split with step {step} to {len(test)} frames")
    return train, test


# ----------------------------------------------------------------------------------------------------------------
# Nerfstudio dataset

def downscale_factor(width: int, height: int, max_resolution: int) -> int:
    factor = 1
    while width // factor > max_resolution or height // factor > max_resolution:
        factor += 1
    return factor


def flat_name(path: str) -> str:
    return path.replace("/", "_")


def frame_file_path(frame: Frame, data_dir: Path, factor: int) -> str:
    """Nerfstudio reads <data>/<file_path> at factor 1 (absolute: the original image) and
    <data>/images_k/<basename of file_path> otherwise, hence the flattened name."""
    if factor == 1:
        return str(Path(frame.path).resolve())
    return str(data_dir.resolve() / flat_name(frame.path))


def write_downscaled(frames: list[Frame], data_dir: Path, factor: int, size: tuple[int, int]) -> None:
    from PIL import Image
    folder = data_dir / f"images_{factor}"
    folder.mkdir(exist_ok=True)
    target_size = (size[0] // factor, size[1] // factor)
    for frame in frames:
        target = folder / flat_name(frame.path)
        if target.exists():
            raise UserError(f"Internal error: output file {target} already exists (use a new --output_dir)")
        with Image.open(frame.path) as image:
            image.convert("RGB").resize(target_size, Image.LANCZOS).save(target, quality=95)


def frame_json(frame: Frame, file_path: str, size: tuple[int, int]) -> dict:
    width, height = size
    return {"file_path": file_path,
            "transform_matrix": nerfstudio_cam_to_world(frame.entry.world_to_cam).tolist(),
            "confidence_score": int(frame.entry.confidence),
            "fl_x": float(frame.entry.focal), "fl_y": float(frame.entry.focal),
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
            "cx": width / 2, "cy": height / 2, "w": width, "h": height}


def write_dataset(frames: list[Frame], train: list[Frame], test: list[Frame], pose_file: Path, data_dir: Path,
                  factor: int, size: tuple[int, int]) -> Path:
    paths = {f.path: frame_file_path(f, data_dir, factor) for f in frames}
    document = {"frames": [frame_json(f, paths[f.path], size) for f in frames],
                "train_filenames": [paths[f.path] for f in train],
                "val_filenames": [],
                "test_filenames": [paths[f.path] for f in test]}
    cloud = pose_file.parent / POINT_CLOUD_NAME
    if cloud.is_file():  # Splatfacto starts from it instead of random splats
        shutil.copyfile(cloud, data_dir / POINT_CLOUD_NAME)
        document["ply_file_path"] = POINT_CLOUD_NAME
    target = data_dir / "transforms.json"
    atomic_write_text(target, json.dumps(document, indent=2) + "\n")
    return target


# ----------------------------------------------------------------------------------------------------------------
# Nerfstudio

def require_program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise UserError(f"{name} not found on PATH: install Nerfstudio (see benchmarks/README.md) or pass "
                        f"--no_run_nerfstudio")
    return found


def ns_train_command(method: str, data_dir: Path, camera_optimizer: str, preload: bool, factor: int) -> list[str]:
    return ["ns-train", method, "--data", str(data_dir),
            "--pipeline.model.camera-optimizer.mode", camera_optimizer,
            "--pipeline.datamanager.images-on-gpu", str(preload),
            "--method-name", method, "--experiment_name", EXPERIMENT, "--output-dir", str(data_dir),
            "--timestamp", "run", "--viewer.quit-on-train-completion", "True",
            "nerfstudio-data", "--downscale-factor", str(factor)]


def ns_eval_command(run_dir: Path) -> list[str]:
    return ["ns-eval", "--load-config", str(run_dir / "config.yml"), "--output-path", str(run_dir / "eval.json"),
            "--render-output-path", str(run_dir / "renders")]


def run_command(command: list[str]) -> None:
    require_program(command[0])
    print(f"Running command: {' '.join(command)}", flush=True)
    result = subprocess.run(command)
    if result.returncode != 0:
        raise UserError(f"{command[0]} failed with exit code {result.returncode}")


def run_nerfstudio(args, data_dir: Path, preload: bool, factor: int) -> Path:
    for program in ("ns-train", "ns-eval"):  # fail before a long training, not after it
        require_program(program)
    run_dir = data_dir / EXPERIMENT / args.method / "run"
    if run_dir.exists():
        raise UserError(f"Output dir {run_dir} already exists. Aborting (use a new --output_dir).")
    print("Fitting NeRF...")
    run_command(ns_train_command(args.method, data_dir, args.camera_optimizer, preload, factor))
    print("Evaluating...")
    run_command(ns_eval_command(run_dir))
    print(f"Eval json is at {run_dir / 'eval.json'}")
    return run_dir / "eval.json"


# ----------------------------------------------------------------------------------------------------------------

def build_parser():
    import argparse
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pose_file", type=str, required=True,
                        help="ACE0 pose file (e.g. poses_final.txt; integer confidences)")
    parser.add_argument("--output_dir", type=str, required=True, help="benchmark folder (its parent must exist)")
    parser.add_argument("--images_glob_pattern", type=str, required=True,
                        help="the reconstruction's image glob, spelt identically (poses match by exact path)")
    parser.add_argument("--split_json", type=str, default=None,
                        help='{"train_filenames": [...], "test_filenames": [...]} (default: every 8th frame)')
    parser.add_argument("--no_run_nerfstudio", action="store_true",
                        help="only write the Nerfstudio dataset (a format converter)")
    parser.add_argument("--method", choices=["nerfacto", "splatfacto"], default="nerfacto",
                        help="Nerfstudio method (default: nerfacto)")
    parser.add_argument("--camera_optimizer", choices=["off", "SO3xR3", "SE3"], default="off",
                        help="Nerfstudio camera optimisation: might improve quality but break the benchmark "
                             "(default: off)")
    parser.add_argument("--max_resolution", type=int, default=640,
                        help="longest image side after integer downscaling (default: 640)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    pose_file, output_dir = Path(args.pose_file), Path(args.output_dir)
    print(f"Output directory: {output_dir}\nPose file: {pose_file}\nImages: {args.images_glob_pattern}")
    if args.max_resolution < 1:
        raise UserError(f"--max_resolution must be positive, got {args.max_resolution}")
    try:
        output_dir.mkdir(exist_ok=True)
        (output_dir / "nerf_data").mkdir(exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {output_dir}: {error.strerror}") from None
    data_dir = output_dir / "nerf_data"
    frames, size = load_frames(pose_file, args.images_glob_pattern)
    train, test = filter_and_cap(*split_frames(frames, args.split_json))
    factor = downscale_factor(*size, args.max_resolution)
    print("Downscale factor override is None")
    if factor > 1:
        print(f"Downscaling the images by {factor} into {data_dir / f'images_{factor}'}")
        write_downscaled(frames, data_dir, factor, size)
    transforms = write_dataset(frames, train, test, pose_file, data_dir, factor, size)
    print(f"Wrote {transforms}")
    most = max(len(train), len(test))
    preload = most <= MAX_PRELOAD_FRAMES
    print(f"Max num frames is {most}\n=> Preloading images? {preload}")
    if args.no_run_nerfstudio:
        print("--no_run_nerfstudio: the Nerfstudio dataset is ready; not training.")
        return
    run_nerfstudio(args, data_dir, preload, factor)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
