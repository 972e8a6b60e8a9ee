#!/usr/bin/env python3
"""Does one mapping round with pose refinement make noisy poses better? Ground-truth poses are perturbed by a
random rotation (about a random axis) and translation of fixed size, `train_ace.py --pose_refinement ...` maps
from them, and the refined `poses_*_preliminary.txt` is compared with the truth after a similarity alignment
(least squares over all cameras). Also reported: the camera spread (mean pairwise angle between the optical
axes) of the truth, the input and the output; a refiner that collapses the cameras shrinks it.

Data set: a folder with images/, poses/<stem>.pose.txt, calibration.txt, or `rendered` for the project's own
orbit. Unknown flags go to train_ace.py. Example:
`benchmarks/bench_refinement.py ../shared/data/temple --pose_refinement mlp --iterations 3000`."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

import dataset_io  # noqa: E402
from ace_util import REPO_ROOT as REPO, script_command  # noqa: E402
from benchmarks.bench_encoder import PosedImages, posed_folder, rendered_scene, symlinked_glob  # noqa: E402
from datasets.dataset_util import write_pose  # noqa: E402
from eval_poses import (evaluate, fit_similarity_to_poses, pose_errors,  # noqa: E402
                        relative_rotation_errors)


def perturb(cam_to_world: np.ndarray, degrees: float, distance: float, rng: np.random.Generator) -> np.ndarray:
    """The pose rotated by exactly `degrees` about a random axis (through the camera centre) and moved by
    exactly `distance` in a random direction."""
    axis = rng.normal(size=3)
    direction = rng.normal(size=3)
    noisy = cam_to_world.copy()
    noisy[:3, :3] = dataset_io.rotation_about(axis / np.linalg.norm(axis), np.radians(degrees)) @ noisy[:3, :3]
    noisy[:3, 3] += distance * direction / np.linalg.norm(direction)
    return noisy


def look_at_point(cam_to_world: np.ndarray) -> np.ndarray:
    """The point nearest to all optical axes (least squares), where an orbit's cameras look."""
    lhs, rhs = np.zeros((3, 3)), np.zeros(3)
    for pose in cam_to_world:
        axis, centre = pose[:3, 2], pose[:3, 3]
        across = np.eye(3) - np.outer(axis, axis)  # distance to the axis is measured across it
        lhs += across
        rhs += across @ centre
    return np.linalg.solve(lhs, rhs)


def compress(cam_to_world: np.ndarray, factor: float) -> np.ndarray:
    """A correlated error no similarity undoes, the bend incremental registration leaves: each camera turned
    about the look-at point by (factor - 1) times its rotation from the first camera, so relative rotations
    shrink to `factor` of the truth (neighbours registered at part of their rotation)."""
    from scipy.spatial.transform import Rotation
    centre = look_at_point(cam_to_world)
    reference = cam_to_world[0, :3, :3]
    bent = cam_to_world.copy()
    for pose in bent:
        turn = Rotation.from_rotvec((factor - 1) * Rotation.from_matrix(pose[:3, :3] @ reference.T).as_rotvec())
        pose[:3, :3] = turn.as_matrix() @ pose[:3, :3]
        pose[:3, 3] = centre + turn.apply(pose[:3, 3] - centre)
    return bent


def camera_spread_deg(cam_to_world: np.ndarray) -> float:
    """Mean angle between the optical axes of all camera pairs."""
    axes = cam_to_world[:, :3, 2]
    cosines = np.clip(axes @ axes.T, -1, 1)
    upper = np.triu_indices(len(axes), 1)
    return float(np.degrees(np.arccos(cosines[upper])).mean())


def write_noisy_poses(data: PosedImages, folder: Path, degrees: float, distance: float, seed: int,
                      compression: float = 1.0) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    paths = []
    truth = compress(np.array([dataset_io.load_cam_to_world(p) for p in data.poses]), compression)
    for path, pose in zip(data.poses, truth):
        noisy = perturb(pose, degrees, distance, rng)
        target = folder / Path(path).name
        write_pose(target, noisy)
        paths.append(str(target))
    return paths


def accuracy(cam_to_world: np.ndarray, truth: np.ndarray, images: list[str]) -> dict:
    """Median errors after a least-squares similarity alignment of all cameras (none is left out), fitted to the
    centres (eval_poses.py's, the issue's measure) and to the orientations (`*_pose_aligned`; robust where the
    centres are coplanar, as temple's are), and the alignment-free median error of the relative rotations."""
    entries = [dataset_io.PoseEntry(image, np.linalg.inv(pose), 1.0, 2000.0) for image, pose in
               zip(images, cam_to_world)]
    summary = evaluate(entries, list(truth), thresh_t=1e9, thresh_r=360.0)
    rot_err, trans_err = pose_errors(cam_to_world, truth, fit_similarity_to_poses(truth, cam_to_world))
    return {"rot_deg": summary["median_rot_err_deg"], "trans": summary["median_trans_err"],
            "scale": summary["alignment"]["scale"], "spread_deg": camera_spread_deg(cam_to_world),
            "rot_deg_pose_aligned": float(np.median(rot_err)), "trans_pose_aligned": float(np.median(trans_err)),
            "relative_rot_deg": float(np.median(relative_rotation_errors(cam_to_world, truth)))}


def run_refinement(data: PosedImages, degrees: float, distance: float, seed: int, extra: list[str],
                   keep: Path | None = None, compression: float = 1.0) -> dict:
    truth = np.array([dataset_io.load_cam_to_world(p) for p in data.poses])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        noisy = write_noisy_poses(data, tmp / "noisy", degrees, distance, seed, compression)
        out = tmp / "map.pt"
        command = script_command("train_ace.py", [symlinked_glob(tmp / "images", data.images), out,
                                                  "--pose_files", tmp / "noisy" / "*", "--use_external_focal_length",
                                                  data.focal, "--device", "cpu", *extra])
        start = time.time()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        seconds = time.time() - start
        if result.returncode != 0:
            raise SystemExit(f"error: train_ace.py failed: {result.stderr.strip().splitlines()[-1]}")
        refined = dataset_io.read_ace_pose_file(tmp / "poses_map_preliminary.txt")
        if keep is not None:  # the input and output poses, for a closer look
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copytree(tmp / "noisy", keep / "noisy", dirs_exist_ok=True)
            for name in ("poses_map_preliminary.txt", "map.txt"):  # the poses and the training log
                shutil.copy(tmp / name, keep / name)
        noisy_c2w = np.array([dataset_io.load_cam_to_world(p) for p in noisy])
        refined_c2w = np.array([e.cam_to_world for e in refined])
    return {"dataset": data.name, "flags": " ".join(extra), "seconds": round(seconds, 1),
            "truth_spread_deg": camera_spread_deg(truth), "input": accuracy(noisy_c2w, truth, data.images),
            "output": accuracy(refined_c2w, truth, data.images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("dataset", help="data set folder, or 'rendered'")
    parser.add_argument("--noise_deg", type=float, default=3.0, help="rotation noise of every input pose")
    parser.add_argument("--noise_distance", type=float, default=0.02, help="translation noise (scene units)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--compression", type=float, default=1.0,
                        help="before the noise, shrink every relative rotation to this fraction of the truth "
                             "(turning the cameras about their look-at point): the bend of incremental "
                             "registration; 1 = none")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--keep", type=Path, default=None,
                        help="copy the noisy input poses, the refined pose file and the training log here")
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = rendered_scene(Path(tmp) / "rendered") if args.dataset == "rendered" else posed_folder(
            Path(args.dataset))
        report = run_refinement(data, args.noise_deg, args.noise_distance, args.seed, extra, args.keep,
                                args.compression)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
