#!/usr/bin/env python3
"""Print the benchmark results of every scene folder in `folder` (sorted): PSNR, SSIM and LPIPS from
<scene>/nerf_data/nerf_for_eval/<method>/run/eval.json, as the original does (raw values, no mean row).

When scenes hold pose_accuracy.json (eval_poses.py against the dataset's own poses, written by the run
scripts), a second table shows the registration rate and pose errors, with a mean row.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

from cli_common import UserError, make_parser, run_main  # noqa: E402

POSE_FILE = "pose_accuracy.json"


def nerf_line(scene_dir: Path, method: str) -> str:
    path = scene_dir / "nerf_data" / "nerf_for_eval" / method / "run" / "eval.json"
    try:
        results = json.loads(path.read_text())["results"]
    except (OSError, ValueError, KeyError):
        return f"{scene_dir.name}: Results not found."
    line = f"{scene_dir.name}: "
    for key in ("psnr", "ssim", "lpips"):
        line += f"{results[key]} " if key in results else "Invalid Key "
    return line


def _fmt(value, fmt: str) -> str:
    return "inf" if value is None else format(value, fmt)


def pose_table(scene_dirs: list[Path]) -> list[str]:
    rows, summaries = [], []
    for scene_dir in scene_dirs:
        path = scene_dir / POSE_FILE
        if not path.is_file():
            continue
        summary = json.loads(path.read_text())
        summaries.append(summary)
        rows.append(f"| {scene_dir.name} | {summary['num_registered']}/{summary['num_images']} | "
                    f"{summary['accuracy_percent']:.1f} | {_fmt(summary['median_rot_err_deg'], '.2f')} | "
                    f"{_fmt(summary['median_trans_err_cm'], '.2f')} |")
    if not rows:
        return []
    first = summaries[0]
    mean_acc = sum(s["accuracy_percent"] for s in summaries) / len(summaries)
    return ["", f"Pose accuracy against the dataset's poses (after a similarity alignment; accurate = below "
                f"{100 * first['thresh_t']:g} cm and {first['thresh_r_deg']:g} deg, in the dataset's units):",
            "| scene | registered | accurate % | median rot (deg) | median trans (cm) |",
            "| --- | --- | --- | --- | --- |", *rows, f"| mean | | {mean_acc:.1f} | | |"]


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("folder", type=Path, help="benchmark folder with one sub-folder per scene")
    parser.add_argument("--method", choices=["nerfacto", "splatfacto"], default="nerfacto",
                        help="which Nerfstudio method's results to show")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not args.folder.is_dir():
        raise UserError(f"{args.folder} is not a folder")
    scene_dirs = sorted(p for p in args.folder.iterdir() if p.is_dir())
    print("Scene: psnr ssim lpips ")
    for scene_dir in scene_dirs:
        print(nerf_line(scene_dir, args.method))
    for line in pose_table(scene_dirs):
        print(line)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
