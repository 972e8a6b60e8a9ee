#!/usr/bin/env python3
"""Fit the Laplace depth prior (--prior_loss_location, --prior_loss_bandwidth) to depth maps: pools the pixels of
a random sample of depth files (millimetres) and prints the maximum-likelihood location and scale in metres."""
from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import numpy as np

from cli_common import UserError, atomic_write, make_parser, run_main

_log = logging.getLogger("train_depth_prior")

MM_PER_M = 1000.0
PLOT_SIZE = (900, 600)  # width, height of --plot's figure


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("glob_pattern", type=str,
                        help="glob of depth maps in millimetres (PGM or 16-bit PNG), e.g. 'scans/*/sensor_data/*.pgm'")
    parser.add_argument("--plot", action="store_true", help="also draw the histogram and the fitted density")
    parser.add_argument("--output_png", type=Path, default=Path("depth_laplace_fit.png"), help="figure of --plot")
    parser.add_argument("--num_files", type=int, default=100, help="depth files sampled at most")
    parser.add_argument("--num_bins", type=int, default=256, help="histogram bins of the figure")
    parser.add_argument("--seed", type=int, default=42, help="seed of the file sample")
    return parser


def sample_files(pattern: str, count: int, seed: int) -> list[str]:
    import glob
    files = sorted(glob.glob(pattern))
    if not files:
        raise UserError(f"glob_pattern: no files match '{pattern}'")
    if count < 1:
        raise UserError("--num_files must be at least 1")
    return sorted(random.Random(seed).sample(files, min(count, len(files))))


def read_depth_metres(path: str) -> np.ndarray:
    """Valid depths (metres, zeros removed) of one file: 16-bit values as they are, 8-bit ones times 256."""
    import cv2
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise UserError(f"cannot read depth map {path}")
    if raw.dtype == np.uint8:
        raw = raw.astype(np.uint16) * 256
    elif raw.dtype != np.uint16:
        raw = raw.astype(np.uint16)
    metres = raw.reshape(-1).astype(np.float64) / MM_PER_M
    return metres[metres > 0]


def fit_laplace(depths: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood Laplace fit (location = median, scale = mean absolute deviation from it)."""
    from scipy.stats import laplace
    location, scale = laplace.fit(depths)
    return float(location), float(scale)


def draw_fit(depths: np.ndarray, location: float, scale: float, bins: int, path: Path) -> None:
    """Density histogram of the depths with the fitted Laplace density on top (cv2, no plotting library)."""
    import cv2
    width, height = PLOT_SIZE
    margin = 50
    top = float(np.percentile(depths, 99.5))
    density, edges = np.histogram(depths, bins=bins, range=(0.0, top), density=True)
    xs = np.linspace(0.0, top, 400)
    pdf = np.exp(-np.abs(xs - location) / scale) / (2 * scale)
    peak = max(float(density.max()), float(pdf.max())) * 1.05
    image = np.full((height, width, 3), 255, np.uint8)

    def to_px(x, y):
        return (int(margin + x / top * (width - 2 * margin)), int(height - margin - y / peak * (height - 2 * margin)))

    for value, left, right in zip(density, edges[:-1], edges[1:]):
        cv2.rectangle(image, to_px(left, value), to_px(right, 0), (200, 160, 90), -1)
    curve = np.array([to_px(x, y) for x, y in zip(xs, pdf)], np.int32)
    cv2.polylines(image, [curve], False, (40, 40, 220), 2, cv2.LINE_AA)
    cv2.line(image, to_px(0, 0), to_px(top, 0), (0, 0, 0), 1)
    for tick in np.linspace(0.0, top, 6):
        x, y = to_px(tick, 0)
        cv2.putText(image, f"{tick:.1f} m", (x - 20, y + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.putText(image, f"Laplace fit: location {location:.3f} m, scale {scale:.3f} m", (margin, 30),
                cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise UserError(f"cannot encode {path}")
    atomic_write(path, lambda handle: handle.write(png.tobytes()), binary=True)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    files = sample_files(args.glob_pattern, args.num_files, args.seed)
    depths = np.concatenate([read_depth_metres(f) for f in files])
    if depths.size == 0:
        raise UserError(f"the {len(files)} sampled depth maps hold no valid (non-zero) depth")
    _log.info("%d files, %d valid depths, range %.3f-%.3f m", len(files), depths.size, depths.min(), depths.max())
    location, scale = fit_laplace(depths)
    print(f"Laplace location: {location:.3f} m")
    print(f"Laplace scale: {scale:.3f} m")
    if args.plot:
        draw_fit(depths, location, scale, args.num_bins, args.output_png)
        _log.info("wrote %s", args.output_png)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
