#!/usr/bin/env python3
"""Scaling: ACE0 against COLMAP on rendered collections of one scene with more and more views.

For each N in --views, the project's textured room is rendered (datasets/synthetic_scene.py, one full loop of
the chosen trajectory, so more views means denser views of the same scene, with ground-truth poses), and
bench_reconstruction.py runs ace_zero.py and COLMAP (sequential and/or exhaustive matching) on it. Prints one
table (wall time, seconds per image, registered, median errors for each method and N), writes the results as
JSON and draws time per image against N into a PNG (OpenCV; no plotting package needed). A collection that is
already rendered in --results is reused. pycolmap is a benchmark dependency: pip install -r
requirements-bench.txt."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

from ace_util import REPO_ROOT as REPO, atomic_write_text  # noqa: E402
from benchmarks import bench_reconstruction  # noqa: E402
from cli_common import UserError, run_main  # noqa: E402
from scripts.run_demo import DEMO_CONFIDENCE  # noqa: E402

PLOT_SIZE = (900, 560)            # width, height of the PNG
PLOT_MARGIN = (90, 40, 40, 70)    # left, top, right, bottom
CONFIDENCE = DEMO_CONFIDENCE      # the demo renders the same image size
METHOD_COLOURS = {"ACE0": (40, 40, 220), "COLMAP sequential": (40, 160, 40), "COLMAP exhaustive": (200, 120, 30)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--views", default="48,96,192,384", help="collection sizes N, comma-separated")
    parser.add_argument("--trajectory", default="orbit", choices=("orbit", "outward"),
                        help="camera path (one full loop): orbit = an object capture, outward = a room scan")
    parser.add_argument("--width", type=int, default=480, help="rendered image width")
    parser.add_argument("--height", type=int, default=360, help="rendered image height")
    parser.add_argument("--scene_seed", type=int, default=3, help="scene and trajectory seed")
    parser.add_argument("--results", type=Path, default=REPO / "bench_results" / "scaling", help="output folder")
    parser.add_argument("--colmap", default="sequential,exhaustive", help="COLMAP matchers (empty: none)")
    parser.add_argument("--ace_args", default=f"--image_resolution 240 --registration_confidence {CONFIDENCE}",
                        help="extra ace_zero.py flags (CPU defaults otherwise); the default is the demo's: the "
                             "network sees 320x240 (1200 cells), so the threshold scales like 500 of 4800")
    parser.add_argument("--conf_threshold", type=float, default=CONFIDENCE,
                        help="ACE0 images above this confidence count as registered")
    parser.add_argument("--skip_ace", action="store_true", help="COLMAP only")
    parser.add_argument("--thresh_t", type=float, default=0.05, help="translation threshold (m)")
    parser.add_argument("--thresh_r", type=float, default=5.0, help="rotation threshold (deg)")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(v) for v in args.views.split(",") if v.strip()})
    except ValueError:
        raise UserError(f"--views: expected comma-separated integers, got {args.views!r}") from None
    if not args.sizes or args.sizes[0] < 3:
        raise UserError("--views: every collection needs at least 3 views")
    return args


def render_collection(folder: Path, views: int, args) -> Path:
    """One full loop of `views` frames (the yaw step shrinks with N); reused when already complete."""
    if len(list((folder / "images").glob("*.png"))) == views and len(list((folder / "poses").glob("*.txt"))) == views:
        return folder
    from datasets.synthetic_scene import RenderingUnavailable, render_scene
    try:
        return render_scene(folder, num_images=views, width=args.width, height=args.height, seed=args.scene_seed,
                            with_depth=False, yaw_step_deg=360.0 / views, trajectory=args.trajectory)
    except RenderingUnavailable as error:
        raise UserError(f"cannot render the collections: {error}") from None


def run_size(views: int, args) -> list[dict]:
    folder = render_collection(args.results / f"{args.trajectory}_{views}", views, args)
    argv = [str(folder), "--results", str(args.results / f"run_{args.trajectory}_{views}"), "--colmap", args.colmap,
            "--ace_args", args.ace_args, "--thresh_t", str(args.thresh_t), "--thresh_r", str(args.thresh_r),
            "--conf_threshold", str(args.conf_threshold)]
    if args.skip_ace:
        argv.append("--skip_ace")
    output = bench_reconstruction.main(argv)
    return [{"views": views, "method": r["method"], "seconds": r["seconds"], "summary": r["summary"]}
            for r in output["results"]]


def scaling_rows(rows: list[dict]) -> list[tuple[str, ...]]:
    table = [("N", "method", "wall time", "s / image", "registered", "median rot.", "median transl.",
              "within thresholds")]
    for r in rows:
        s = r["summary"]
        rot = "-" if s["median_rot_err_deg"] is None else f"{s['median_rot_err_deg']:.2f} deg"
        trans = "-" if s["median_trans_err"] is None else f"{s['median_trans_err']:.3f} m"
        table.append((str(r["views"]), r["method"], bench_reconstruction.format_seconds(r["seconds"]),
                      f"{r['seconds'] / r['views']:.2f}", f"{s['num_registered']}/{s['num_images']}", rot, trans,
                      f"{s['accuracy_percent']:.0f} %"))
    return table


def plot_time_per_image(rows: list[dict], path: Path) -> None:
    """Seconds per image against N (log-log axes), one line per method."""
    width, height = PLOT_SIZE
    left, top, right, bottom = PLOT_MARGIN
    image = np.full((height, width, 3), 255, np.uint8)
    sizes = np.array([r["views"] for r in rows], float)
    per_image = np.array([max(r["seconds"] / r["views"], 1e-3) for r in rows])
    x_range = np.log10([sizes.min() / 1.2, sizes.max() * 1.2])
    y_range = np.log10([per_image.min() / 2, per_image.max() * 2])

    def to_pixel(n: float, s: float) -> tuple[int, int]:
        fx = (np.log10(n) - x_range[0]) / (x_range[1] - x_range[0])
        fy = (np.log10(s) - y_range[0]) / (y_range[1] - y_range[0])
        return int(left + fx * (width - left - right)), int(height - bottom - fy * (height - top - bottom))

    cv2.rectangle(image, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    for n in sorted(set(sizes)):
        x, _ = to_pixel(n, per_image.min())
        cv2.putText(image, f"{int(n)}", (x - 12, height - bottom + 22), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    for exponent in range(int(np.floor(y_range[0])), int(np.ceil(y_range[1])) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0 ** exponent
            if y_range[0] <= np.log10(value) <= y_range[1]:
                _, y = to_pixel(sizes.min(), value)
                cv2.line(image, (left, y), (width - right, y), (225, 225, 225), 1)
                cv2.putText(image, f"{value:g}", (10, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(image, "views N (log)", (width // 2 - 60, height - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
    cv2.putText(image, "seconds per image (log)", (left, top - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
    for k, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        colour = METHOD_COLOURS.get(method, (120, 120, 120))
        points = [to_pixel(r["views"], max(r["seconds"] / r["views"], 1e-3)) for r in rows if r["method"] == method]
        for a, b in zip(points, points[1:]):
            cv2.line(image, a, b, colour, 2, cv2.LINE_AA)
        for point in points:
            cv2.circle(image, point, 5, colour, -1, cv2.LINE_AA)
        cv2.putText(image, method, (width - right - 230, top + 25 + 22 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour,
                    2)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise UserError(f"cannot write {path}")


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.colmap.strip():
        bench_reconstruction.import_pycolmap()  # fail before the first long run
    args.results.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for views in args.sizes:
        print(f"\n=== {views} views ({args.trajectory}) ===", flush=True)
        rows += run_size(views, args)
        # after every size, so that an interrupted study keeps what it measured
        atomic_write_text(args.results / "scaling.json", json.dumps(rows, indent=1, default=str) + "\n")
        plot_time_per_image(rows, args.results / "scaling.png")
    print(f"\nscaling ({args.trajectory}, {args.width}x{args.height}, ace_zero.py {shlex.join(args.ace_args.split())})"
          f":\n")
    print(bench_reconstruction.markdown_table(scaling_rows(rows)))
    print(f"\nplot: {args.results / 'scaling.png'}; results: {args.results / 'scaling.json'}")
    return rows


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
