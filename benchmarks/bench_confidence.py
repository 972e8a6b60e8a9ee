#!/usr/bin/env python3
"""Are confident poses right? Runs ace_zero.py from scratch on a posed image folder (or `ring`: the project's
rendered weakly textured object on a 360 deg camera ring with a narrow field of view, datasets/object_ring.py)
and reports, for the final poses: how many images have confidence >= 1000, the largest and median rotation error
among them after a similarity alignment fitted to them alone, and the same for the poses before verification.

The goal (issue "honest confidence"): no image with confidence >= 1000 more than 10 deg off. Unknown flags go to
ace_zero.py. Example: `benchmarks/bench_confidence.py ring --results /tmp/ring_run`."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

import numpy as np  # noqa: E402

import dataset_io  # noqa: E402
from ace_util import REPO_ROOT as REPO  # noqa: E402
from ace_zero import last_registration_files  # noqa: E402
from cli_common import RELIABLE_CONFIDENCE  # noqa: E402
from eval_poses import evaluate  # noqa: E402

GOAL_DEG = 10.0


def confident_errors(pose_file: Path, gt_folder: Path) -> dict:
    """Errors of the images with confidence >= 1000, aligned by a similarity fitted to those images only."""
    entries = sorted(dataset_io.read_ace_pose_file(pose_file), key=lambda e: e.path)
    confident = [e for e in entries if e.confidence >= RELIABLE_CONFIDENCE]
    row = {"file": pose_file.name, "images": len(entries), "confident": len(confident)}
    if len(confident) < 3:
        return {**row, "max_deg": float("nan"), "median_deg": float("nan"), "max_relative_deg": float("nan")}
    gt = [dataset_io.load_cam_to_world(str(gt_folder / "poses" / f"{Path(e.path).stem}.pose.txt"))
          for e in confident]
    result = evaluate(confident, gt, thresh_t=float("inf"), thresh_r=GOAL_DEG,
                      conf_threshold=RELIABLE_CONFIDENCE - 1)
    errors = [f["rot_err_deg"] for f in result["frames"]]
    return {**row, "max_deg": max(errors), "median_deg": result["median_rot_err_deg"],
            "max_relative_deg": max_relative_error(confident, gt)}


def max_relative_error(entries: list, gt: list) -> float:
    """Largest error of the relative rotation of two confident images: needs no alignment (which is unstable with
    few cameras)."""
    from eval_poses import rotation_angle_deg
    estimated = np.stack([e.world_to_cam[:3, :3] for e in entries])    # world -> camera
    truth = np.stack([np.linalg.inv(c)[:3, :3] for c in gt])
    relative_est = np.einsum("aij,bkj->abik", estimated, estimated)   # R_a R_b^T
    relative_gt = np.einsum("aij,bkj->abik", truth, truth)
    return float(rotation_angle_deg(np.einsum("abij,abkj->abik", relative_est, relative_gt)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="folder with images/ and poses/, or 'ring'")
    parser.add_argument("--results", type=Path, required=True, help="results folder of the ace_zero.py run")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args, extra = parser.parse_known_args()
    if args.data == "ring":
        from datasets.object_ring import render_object_ring
        data = args.results.parent / f"{args.results.name}_scene"
        if not (data / "calibration.txt").exists():
            render_object_ring(data)
    else:
        data = Path(args.data)
    images = next(p for p in sorted((data / "images").iterdir()))
    start = time.time()
    command = [sys.executable, str(REPO / "ace_zero.py"), str(data / "images" / f"*{images.suffix}"),
               str(args.results), *extra]
    if subprocess.run(command).returncode != 0:
        sys.exit("error: ace_zero.py failed (its output is above)")
    minutes = (time.time() - start) / 60
    files = last_registration_files(args.results)
    unverified = files.get("adjusted", files["before adjustment"])
    rows = [confident_errors(p, data) for p in (unverified, args.results / "poses_final.txt")]
    print(f"\n{data} ({minutes:.1f} min)\n| poses | images | confidence >= 1000 | max error (deg) | median (deg) | max relative (deg) |")
    for row in rows:
        print(f"| {row['file']} | {row['images']} | {row['confident']} | {row['max_deg']:.1f} | "
              f"{row['median_deg']:.2f} | {row['max_relative_deg']:.1f} |")
    final = rows[-1]
    verdict = final["confident"] == 0 or (final["max_deg"] <= GOAL_DEG and final["max_relative_deg"] <= 2 * GOAL_DEG)
    print(f"goal (no confident image more than {GOAL_DEG:g} deg off): {'met' if verdict else 'missed'}")
    if args.json:
        args.json.write_text(json.dumps({"minutes": minutes, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
