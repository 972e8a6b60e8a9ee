#!/usr/bin/env python3
"""Relocalisation benchmark: map a posed data set with its ground-truth poses (train_ace.py), register images
(register_mapping.py), and report accuracy without alignment (same frame) plus wall times.

Data set layout: images/, poses/<stem>.pose.txt (4x4 camera-to-world), calibration.txt (fx fy cx cy w h),
optionally distortion.txt (k1 k2 p1 p2 [k3]). `--intrinsics focal` uses only fx (principal point at the centre,
no distortion: the original's assumption); `calibration` passes the whole camera as --calibration_file.
Splits: `all` maps and registers every image; `even-odd` maps the even-numbered images (sorted order) and
registers the odd ones. Unknown flags are passed on to train_ace.py (e.g. --iterations 3000). `--head PATH` keeps
the mapped head there, and a later call with the same PATH registers with it again without mapping, so that
registration settings (`--register_args`) can be compared on one head."""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

import dataset_io  # noqa: E402
from benchmarks.bench_encoder import symlinked_glob  # noqa: E402
from ace_util import (DEFAULT_ENCODER, DEFAULT_IMAGE_RESOLUTION, REPO_ROOT as REPO, is_registered,  # noqa: E402
                      script_command)
from eval_poses import evaluate  # noqa: E402


def run(script: str, *args) -> float:
    start = time.time()
    command = script_command(script, args)
    result = subprocess.run(command, cwd=REPO, stderr=subprocess.PIPE, text=True, errors="replace")
    if result.returncode != 0:
        tail = "\n".join(result.stderr.splitlines()[-15:])  # the progress bars and log lines end in the reason
        sys.exit(f"{tail}\nerror: {script} failed (above: the end of its output): {' '.join(command)}")
    return time.time() - start


def camera_args(args, calibration, images: list[str], tmp: Path) -> list:
    """The flags that give mapping and registration the camera."""
    if args.intrinsics == "focal":
        return ["--use_external_focal_length", calibration.fx]
    distortion = args.dataset / "distortion.txt"
    if not distortion.exists():
        return ["--calibration_file", args.dataset / "calibration.txt"]
    import calibration as calib  # the per-image format is the one that carries distortion
    k = tuple(float(v) for line in distortion.read_text().splitlines() for v in line.split("#", 1)[0].split())
    camera = calib.Intrinsics(calibration.fx, calibration.fy, calibration.cx, calibration.cy, calibration.width,
                              calibration.height, k)
    path = tmp / "cameras.txt"
    path.write_text(calib.format_per_image_file([Path(i).name for i in images], [camera] * len(images)))
    return ["--calibration_file", path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("dataset", type=Path, help="data set folder")
    parser.add_argument("--split", choices=("all", "even-odd"), default="all")
    parser.add_argument("--scene_extent", type=float, default=None,
                        help="report translation errors also relative to this extent (non-metric data)")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--encoder_path", default=DEFAULT_ENCODER, help="encoder of mapping and registration")
    parser.add_argument("--intrinsics", choices=("focal", "calibration"), default="focal",
                        help="focal: fx alone, as the original; calibration: fx fy cx cy (+ distortion)")
    parser.add_argument("--head", type=Path, default=None,
                        help="keep the head here (poses_query.txt is written beside it); when the file exists, "
                             "register with it instead of mapping")
    parser.add_argument("--image_resolution", type=int, default=None,
                        help="network input short side of mapping and registration alike (a head is registered "
                             "best at the resolution it was mapped at); default: the stages' own")
    parser.add_argument("--register_args", default="",
                        help="extra register_mapping.py flags, one string (e.g. '--hypotheses 256 --threshold 5')")
    args, extra = parser.parse_known_args()  # anything else is passed on to train_ace.py
    calibration = dataset_io.read_calibration(args.dataset / "calibration.txt")
    images = sorted(str(p) for p in (args.dataset / "images").iterdir())
    poses = sorted(str(p) for p in (args.dataset / "poses").glob("*.txt"))
    mapping = images if args.split == "all" else images[0::2]
    mapping_poses = poses if args.split == "all" else poses[0::2]
    query = images if args.split == "all" else images[1::2]
    query_poses = poses if args.split == "all" else poses[1::2]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        head = args.head or tmp / "map.pt"
        both = camera_args(args, calibration, images, tmp)  # flags of mapping and registration alike
        if args.image_resolution:
            both += ["--image_resolution", args.image_resolution]
        map_time = None
        if not head.exists():
            map_time = run("train_ace.py", symlinked_glob(tmp / "map_images", mapping), head,
                           "--pose_files", symlinked_glob(tmp / "map_poses", mapping_poses),
                           *both, "--encoder_path", args.encoder_path, *extra)
        elif extra:
            sys.exit(f"error: {head} exists, so nothing is mapped: mapping flags {' '.join(extra)} would be ignored")
        reg_time = run("register_mapping.py", symlinked_glob(tmp / "query_images", query), head,
                       *both, "--session", "query", "--encoder_path", args.encoder_path,
                       *shlex.split(args.register_args))
        entries = sorted(dataset_io.read_ace_pose_file(head.parent / "poses_query.txt"),
                         key=lambda e: Path(e.path).name)
    gt = [dataset_io.load_cam_to_world(p) for p in query_poses]
    result = evaluate(entries, gt, estimate_alignment=False, thresh_t=0.02, thresh_r=2.0)
    fine = evaluate(entries, gt, estimate_alignment=False, thresh_t=0.01, thresh_r=1.0)
    summary = {
        "dataset": args.dataset.name, "split": args.split, "encoder": args.encoder_path,
        "mapping_images": len(mapping),
        "query_images": len(query), "confidence_gt_500": sum(is_registered(e.confidence, 500) for e in entries),
        "median_rot_err_deg": result["median_rot_err_deg"], "median_trans_err": result["median_trans_err"],
        "intrinsics": args.intrinsics, "image_resolution": args.image_resolution or DEFAULT_IMAGE_RESOLUTION,
        "percent_within_2cm_2deg": result["accuracy_percent"],
        "percent_within_1cm_1deg": fine["accuracy_percent"],
        "mapping_seconds": None if map_time is None else round(map_time, 1),
        "mapping_args": None if map_time is None else " ".join(extra), "register_args": args.register_args,
        "registration_seconds": round(reg_time, 1), "images_per_second": round(len(query) / reg_time, 2),
    }
    if args.scene_extent:
        summary["median_trans_err_percent_of_extent"] = 100 * result["median_trans_err"] / args.scene_extent
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
