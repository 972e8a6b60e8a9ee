#!/usr/bin/env python3
"""How far off does a head register the views just beyond the ones it was mapped from? What each ACE0 round does
at the edge of the mapped views, measured without the loop's own errors: `train_ace.py` maps the N cameras
nearest (in orientation) to the middle camera from their TRUE poses, `register_mapping.py` registers every image,
and each unmapped image's registration is compared with the truth directly (the map is in the truth's frame, so
no alignment is needed). Reported per image: the rotation and position error, the inlier count, the angle to the
nearest mapped camera, and the fraction of its true rotation from the middle camera it was registered at (1 is
right; less is pulled towards the mapped views). With `--resect`, the same after `gate_registrations.py --resect`
(each new image placed again by PnP on its feature observations of the structure the mapped images triangulate).
With `--round "FLAGS"`, one more mapping round (`train_ace.py FLAGS`, e.g. a pose refiner) from the mapped images
at their true poses and the images registered above --confidence as registered: can it undo the edge's error?

Data set: a folder with images/, poses/<stem>.pose.txt, calibration.txt, or `rendered` for the project's own
orbit. Unknown flags go to train_ace.py. Example:
`benchmarks/bench_edge_registration.py ../shared/data/temple --mapped 7 --resect --encoder_path xfeat`."""
from __future__ import annotations

import argparse
import json
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
from eval_poses import rotation_angle_deg  # noqa: E402


def middle_cameras(cam_to_world: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` cameras nearest in orientation to the camera whose summed angle to all others is
    least (the middle of the collection); the first index is that camera."""
    rotations = cam_to_world[:, :3, :3]
    angles = rotation_angle_deg(np.einsum("aij,bkj->abik", rotations, rotations))
    middle = int(np.argmin(angles.sum(axis=1)))
    return np.argsort(angles[middle], kind="stable")[:count]


def rotation_fraction(registered: np.ndarray, truth: np.ndarray, middle: np.ndarray) -> float:
    """Projection of the registered rotation from the middle camera onto the true one, over the true one's size:
    1 is right, 0 at the middle camera's orientation."""
    from scipy.spatial.transform import Rotation
    true_turn = Rotation.from_matrix(truth[:3, :3] @ middle[:3, :3].T).as_rotvec()
    turn = Rotation.from_matrix(registered[:3, :3] @ middle[:3, :3].T).as_rotvec()
    size = float(true_turn @ true_turn)
    return float(turn @ true_turn / size) if size > 1e-12 else float("nan")


def run(script: str, arguments: list, log: Path) -> None:
    result = subprocess.run(script_command(script, arguments), cwd=REPO, capture_output=True, text=True)
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"error: {script} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")


def per_image(pose_file: Path, data: PosedImages, truth: np.ndarray, mapped: np.ndarray) -> list[dict]:
    """The unmapped images of `pose_file` (those it holds) against the truth."""
    by_name = {Path(e.path).name: e for e in dataset_io.read_ace_pose_file(pose_file)}
    rows = []
    for k, image in enumerate(data.images):
        if k in mapped or Path(image).name not in by_name:
            continue
        entry = by_name[Path(image).name]
        estimate = entry.cam_to_world
        nearest = min(float(rotation_angle_deg(truth[k, :3, :3] @ truth[m, :3, :3].T)) for m in mapped)
        rows.append({"image": Path(image).name, "inliers": entry.confidence,
                     "rot_deg": float(rotation_angle_deg(estimate[:3, :3] @ truth[k, :3, :3].T)),
                     "trans": float(np.linalg.norm(estimate[:3, 3] - truth[k, :3, 3])),
                     "angle_to_mapped_deg": nearest,
                     "registered_fraction": rotation_fraction(estimate, truth[k], truth[mapped[0]])})
    return sorted(rows, key=lambda row: row["angle_to_mapped_deg"])


def write_pose_files(folder: Path, images: list[str], cam_to_world: list[np.ndarray]) -> str:
    """One 4x4 camera-to-world file per image (train_ace.py --pose_files) and the glob that selects them."""
    folder.mkdir(parents=True)
    for image, pose in zip(images, cam_to_world):
        write_pose(folder / f"{Path(image).stem}.pose.txt", pose)
    return str(folder / "*")


def mapping_round(data: PosedImages, truth: np.ndarray, mapped: np.ndarray, registered: Path, confidence: float,
                  flags: list[str], calibration: Path, workdir: Path) -> Path:
    """train_ace.py `flags` from the mapped images at their true poses and the confident others as registered;
    returns its poses_*_preliminary.txt."""
    by_name = {Path(e.path).name: e for e in dataset_io.read_ace_pose_file(registered)}
    chosen = [k for k, image in enumerate(data.images)
              if k in mapped or by_name[Path(image).name].confidence >= confidence]
    images = symlinked_glob(workdir / "round_images", [data.images[k] for k in chosen])
    poses = write_pose_files(workdir / "round_poses", [data.images[k] for k in chosen], [
        truth[k] if k in mapped else by_name[Path(data.images[k]).name].cam_to_world for k in chosen])
    run("train_ace.py", [images, workdir / "round.pt", "--pose_files", poses, "--calibration_file", calibration,
                         "--device", "cpu", *flags], workdir / "round.log")
    return workdir / "poses_round_preliminary.txt"


def edge_registration(data: PosedImages, mapped_count: int, confidence: float, resect: bool, extra: list[str],
                      workdir: Path, round_flags: list[str] | None = None) -> dict:
    truth = np.array([dataset_io.load_cam_to_world(p) for p in data.poses])
    mapped = middle_cameras(truth, mapped_count)
    images = symlinked_glob(workdir / "mapped_images", [data.images[k] for k in mapped])
    poses = symlinked_glob(workdir / "mapped_poses", [data.poses[k] for k in mapped])
    network = workdir / "map.pt"
    calibration = Path(data.images[0]).parent.parent / "calibration.txt"  # posed_folder's data always has one
    start = time.time()
    run("train_ace.py", [images, network, "--pose_files", poses, "--calibration_file", calibration,
                         "--device", "cpu", *extra], workdir / "train.log")
    at = extra.index("--encoder_path") if "--encoder_path" in extra else None
    encoder_args = extra[at:at + 2] if at is not None else []  # registration must read the mapping's encoder
    all_images = symlinked_glob(workdir / "all_images", data.images)
    run("register_mapping.py", [all_images, network, "--calibration_file", calibration, "--device", "cpu",
                                "--session", "all", *encoder_args], workdir / "register.log")
    seconds = time.time() - start
    registered = workdir / "poses_all.txt"
    report = {"dataset": data.name, "flags": " ".join(extra), "mapped": [Path(data.images[k]).name for k in mapped],
              "seconds": round(seconds, 1), "registered": per_image(registered, data, truth, mapped)}
    if resect:
        earlier = workdir / "earlier.txt"  # what the head was mapped from: the mapped images at their true poses
        by_name = {Path(e.path).name: e for e in dataset_io.read_ace_pose_file(registered)}
        dataset_io.write_ace_pose_file(earlier, [
            dataset_io.PoseEntry(by_name[Path(data.images[k]).name].path, dataset_io.invert_pose(truth[k]),
                                 data.focal, float("inf")) for k in mapped])
        run("gate_registrations.py", [registered, workdir / "resected.txt", "--earlier_poses", earlier, "--device",
                                      "cpu", "--confidence_threshold", confidence, "--max_miss", "inf",
                                      "--resect", "--calibration_file", calibration],
            workdir / "resect.log")
        report["resected"] = per_image(workdir / "resected.txt", data, truth, mapped)
    if round_flags is not None:
        refined = mapping_round(data, truth, mapped, registered, confidence, round_flags, calibration, workdir)
        report["round"] = per_image(refined, data, truth, mapped)  # only the images the round mapped from
    return report


def print_table(report: dict, confidence: float) -> None:
    resected = {row["image"]: row for row in report.get("resected", [])}
    after_round = {row["image"]: row for row in report.get("round", [])}
    print(f"{report['dataset']}: mapped from the true poses of {', '.join(report['mapped'])} ({report['seconds']} s)")
    print("| image | to mapped | inliers | registered: rotation / position | fraction | resected: rotation / position "
          "| after a round: rotation / position |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in report["registered"]:
        mark = "**" if row["inliers"] >= confidence else ""
        after = resected.get(row["image"])
        print(f"| {row['image']} | {row['angle_to_mapped_deg']:.1f} deg | {mark}{row['inliers']:.0f}{mark} | "
              f"{error_text(row)} | {row['registered_fraction']:.2f} | {error_text(resected.get(row['image']))} | "
              f"{error_text(after_round.get(row['image']))} |")


def error_text(row: dict | None) -> str:
    return f"{row['rot_deg']:.2f} deg / {row['trans']:.4f}" if row else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("dataset", help="data set folder, or 'rendered'")
    parser.add_argument("--mapped", type=int, default=7, help="cameras mapped from their true poses")
    parser.add_argument("--confidence", type=float, default=1500,
                        help="inlier count from which a registration would be mapped (bold in the table)")
    parser.add_argument("--resect", action="store_true", help="also report the images after resection")
    parser.add_argument("--round", type=str, default=None,
                        help="then one mapping round with these train_ace.py flags (one string) from the mapped "
                             "images at their true poses and the confident others as registered")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args, extra = parser.parse_known_args()
    if args.mapped < 2:
        parser.error("--mapped must be at least 2 (resection triangulates from two or more views)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = rendered_scene(tmp / "rendered") if args.dataset == "rendered" else posed_folder(Path(args.dataset))
        if args.mapped >= len(data.images):
            parser.error(f"--mapped must be below the number of images ({len(data.images)})")
        report = edge_registration(data, args.mapped, args.confidence, args.resect, extra, tmp,
                                   None if args.round is None else args.round.split())
    print_table(report, args.confidence)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
