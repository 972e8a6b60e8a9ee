#!/usr/bin/env python3
"""Reconstruction priors from scratch: ace_zero.py with the dsac* loss against the probabilistic loss with the
Laplace depth priors (laplace_nll, laplace_wd), on one posed image folder (images/, poses/*.pose.txt, optional
depth/ for the seed) or on `demo` (the project's rendered demo scene, rendered if missing).

For each variant it reports, before and after the bundle adjustment (`--bundle_adjustment True` keeps both
files): the registration rate, the median errors after a similarity alignment to the ground truth, and the
similarity's scale (ground truth units -> reconstruction units; how compressed the reconstruction is).

The priors use the scr-priors recipe's weight 0.1 with location and bandwidth `auto` (from the seed's depth:
without sensor depth our reconstructions are not metric, so 1.73 m would be meaningless). Unknown flags go to
every ace_zero.py run. Example:
  benchmarks/bench_priors.py demo --results bench_results/priors_demo
  benchmarks/bench_priors.py ../shared/data/temple --results R --thresh_t 0.02 --thresh_r 2 \\
      --registration_confidence 1500"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

import dataset_io  # noqa: E402
from ace_util import atomic_write_text  # noqa: E402
from ace_zero import last_registration_files  # noqa: E402
from benchmarks.bench_reconstruction import run_ace  # noqa: E402
from cli_common import UserError, run_main  # noqa: E402
from eval_poses import evaluate  # noqa: E402

PRIOR_RECIPE = ["--loss_structure", "probabilistic", "--prior_loss_weight", "0.1",
                "--prior_loss_location", "auto", "--prior_loss_bandwidth", "auto"]
VARIANTS = {
    "dsac*": [],
    "laplace_nll": [*PRIOR_RECIPE, "--prior_loss_type", "laplace_nll"],
    "laplace_wd": [*PRIOR_RECIPE, "--prior_loss_type", "laplace_wd"],
}
MINUTES_FILE = "bench_minutes.txt"


def stage_files(results: Path) -> dict[str, Path]:
    """The last registration before and after the bundle adjustment, and poses_final.txt (after verification)."""
    files = last_registration_files(results)
    final = results / "poses_final.txt"
    return {**files, "final": final} if final.exists() else files


def score(pose_file: Path, data: Path, conf_threshold: float, thresh_t: float, thresh_r: float) -> dict:
    entries = sorted(dataset_io.read_ace_pose_file(pose_file), key=lambda e: e.path)
    gt_files = sorted((data / "poses").glob("*.pose.txt"))
    if len(gt_files) != len(entries):
        raise UserError(f"{pose_file}: {len(entries)} poses but {len(gt_files)} files in {data / 'poses'}")
    result = evaluate(entries, [dataset_io.load_cam_to_world(str(p)) for p in gt_files],
                      conf_threshold=conf_threshold, thresh_t=thresh_t, thresh_r=thresh_r)
    return {"registered": result["num_registered"], "images": result["num_images"],
            "median_rot_deg": result["median_rot_err_deg"], "median_trans": result["median_trans_err"],
            "accuracy_percent": result["accuracy_percent"], "scale": result["alignment"]["scale"],
            "focal": entries[0].focal}


def prepare_data(name: str, results: Path) -> tuple[Path, list[str]]:
    """The data folder and the flags it needs: the demo scene is rendered on first use."""
    if name != "demo":
        data = Path(name)
        if not (data / "images").is_dir() or not (data / "poses").is_dir():
            raise UserError(f"{data}: needs images/ and poses/ (or give 'demo')")
        depth = sorted((data / "depth").glob("*.png")) if (data / "depth").is_dir() else []
        return data, (["--depth_files", str(data / "depth" / "*.png")] if depth else [])
    from scripts.run_demo import DEMO_ACE_FLAGS, SCENE_SETTINGS
    from datasets.synthetic_scene import render_scene
    data = results / "demo_scene"
    if not (data / "calibration.txt").exists():
        render_scene(data, **SCENE_SETTINGS)
    return data, [*map(str, DEMO_ACE_FLAGS), "--depth_files", str(data / "depth" / "*.png")]


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | poses | registered | median rot (deg) | median trans | within thresholds | scale | focal "
             "| minutes |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        rot = "-" if r["median_rot_deg"] is None else f"{r['median_rot_deg']:.2f}"
        trans = "-" if r["median_trans"] is None else f"{r['median_trans']:.4f}"
        scale = "-" if r["scale"] is None else f"{r['scale']:.3f}"
        lines.append(f"| {r['variant']} | {r['stage']} | {r['registered']}/{r['images']} | {rot} | {trans} | "
                     f"{r['accuracy_percent']:.1f} % | {scale} | {r['focal']:.1f} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def run_variant(images_glob: str, folder: Path, flags: list[str]) -> float:
    """Minutes of the ace_zero.py run; a folder that holds a finished run of this benchmark is reused."""
    minutes_file = folder / MINUTES_FILE
    if minutes_file.exists() and (folder / "poses_final.txt").exists():
        print(f"reusing the finished run in {folder}", flush=True)
        return float(minutes_file.read_text())
    minutes = run_ace(images_glob, folder, flags)["seconds"] / 60
    atomic_write_text(minutes_file, f"{minutes:.3f}\n")
    return minutes


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="folder with images/ and poses/ (depth/ optional), or 'demo'")
    parser.add_argument("--results", type=Path, required=True, help="one ace_zero.py results folder per variant here")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--conf_threshold", type=float, default=None,
                        help="registered above this confidence (default: 150 for the demo, else 1000)")
    parser.add_argument("--thresh_t", type=float, default=0.05, help="translation threshold, ground-truth units")
    parser.add_argument("--thresh_r", type=float, default=5.0, help="rotation threshold, degrees")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args, extra = parser.parse_known_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        raise UserError(f"--variants: unknown {', '.join(unknown) or '(none given)'} (choose from {', '.join(VARIANTS)})")
    if args.conf_threshold is None:
        from scripts.run_demo import DEMO_CONFIDENCE
        args.conf_threshold = float(DEMO_CONFIDENCE) if args.data == "demo" else 1000.0
    return args, extra


def main(argv=None) -> list[dict]:
    args, extra = parse_args(argv)
    data, data_flags = prepare_data(args.data, args.results)
    images = next(p for p in sorted((data / "images").iterdir()))
    rows = []
    for variant in args.variants:
        folder = args.results / variant.replace("*", "star")
        flags = [*data_flags, "--bundle_adjustment", "True", *VARIANTS[variant], *extra]
        minutes = run_variant(str(data / "images" / f"*{images.suffix}"), folder, flags)
        for stage, path in stage_files(folder).items():
            rows.append({"variant": variant, "stage": stage, "minutes": minutes,
                         **score(path, data, args.conf_threshold, args.thresh_t, args.thresh_r)})
        print(markdown(rows), flush=True)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    run_main(main)
