#!/usr/bin/env python3
"""Render the closing frames of an ACE0 video: a slow 90-degree pan over the final map and cameras, each camera
coloured by the iteration in which it was first registered with confidence > 1000.

Reads the newest `iterationX_register.pkl` of the render folder (map, frame index, observer camera) and the pose
files of the results folder above it (`../poses_iteration0_seedK.txt`, `../poses_iterationX.txt`); the frames
continue the folder's numbering."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import numpy as np

import dataset_io
from ace_util import is_registered
from cli_common import UserError, make_parser, run_main, str2bool

_log = logging.getLogger("render_final_sweep")

SWEEP_FRAMES = 150
SWEEP_ARC_DEG = 90.0
REGISTERED_CONFIDENCE = 1000
MAX_ITERATION = 100
REGISTER_BUFFER = re.compile(r"^iteration(\d+)_register\.pkl$")
SEED_POSE_FILE = re.compile(r"^poses_iteration0_seed\d\.txt$")


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("render_folder", type=Path, help="renderings folder of an ACE0 run (results/renderings)")
    parser.add_argument("--render_camera_z_offset", type=float, default=4,
                        help="observer camera distance behind the sweep views (m)")
    parser.add_argument("--render_marker_size", type=float, default=0.03, help="camera marker size")
    parser.add_argument("--render_flipped_portrait", type=str2bool, default=False,
                        help="images are rotated portrait images (as passed to ace_zero.py)")
    return parser


def last_iteration(render_folder: Path) -> int:
    """Highest X < 100 with an iterationX_register.pkl."""
    found = [int(m.group(1)) for p in render_folder.glob("iteration*_register.pkl")
             if (m := REGISTER_BUFFER.match(p.name)) and int(m.group(1)) < MAX_ITERATION]
    if not found:
        raise UserError(f"{render_folder}: no iterationX_register.pkl (was ACE0 run with --render_visualization "
                        f"True?)")
    return max(found)


def pose_file_of(results: Path, iteration: int) -> Path | None:
    """poses_iterationX.txt; for iteration 0 the registration against the chosen seed."""
    if iteration > 0:
        path = results / f"poses_iteration{iteration}.txt"
        return path if path.is_file() else None
    seeds = sorted(p for p in results.glob("poses_iteration0_seed*.txt") if SEED_POSE_FILE.match(p.name))
    return seeds[0] if seeds else None


def first_registration(results: Path, last: int, images: list[str]) -> np.ndarray:
    """Per image, the first iteration that registered it with confidence > 1000 (-1: never)."""
    first = {path: -1 for path in images}
    for iteration in range(last + 1):
        path = pose_file_of(results, iteration)
        if path is None:
            continue
        for entry in dataset_io.read_ace_pose_file(path):
            if is_registered(entry.confidence, REGISTERED_CONFIDENCE) and first.get(entry.path) == -1:
                first[entry.path] = iteration
    return np.array([first[p] for p in images])


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    folder = args.render_folder
    last = last_iteration(folder)
    final = folder.parent / f"poses_iteration{last}.txt"
    if not final.is_file():
        raise UserError(f"{final} not found: render_folder must be the renderings folder inside ACE0's results")
    entries = dataset_io.read_ace_pose_file(final)
    iterations = first_registration(folder.parent, last, [e.path for e in entries])
    shown = iterations >= 0
    if not shown.any():
        raise UserError(f"{final}: no image registered with confidence > {REGISTERED_CONFIDENCE}")
    from ace_visualizer import RenderSettings, SweepVisualizer, VisBuffer, opengl_cam_to_world
    buffer = VisBuffer.load(folder / f"iteration{last}_register.pkl")
    settings = RenderSettings.matching_frames(folder, args.render_marker_size, args.render_camera_z_offset,
                                              args.render_flipped_portrait)
    cameras = opengl_cam_to_world(np.stack([e.world_to_cam for e in entries]))[shown]
    caption = ["Mapping Done", f"{int(shown.sum())} of {len(entries)} images registered "
                               f"(confidence > {REGISTERED_CONFIDENCE})"]
    _log.info("final sweep after iteration %d: %d cameras, frames from %d", last, int(shown.sum()),
              buffer.frame_idx)
    SweepVisualizer(settings, buffer).render_sweep(cameras, iterations[shown], caption, SWEEP_FRAMES,
                                                   SWEEP_ARC_DEG)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
