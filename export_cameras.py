#!/usr/bin/env python3
"""Export the cameras of an ACE pose file as a coloured PLY mesh (OpenGL world convention, like the point
cloud export's default), one frustum or pyramid marker per image.

Colour encodes confidence (the RANSAC inlier count): magenta -> cyan below the threshold, yellow -> green
above it, saturating at 5000; a pose file with a single entry is drawn grey.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

import dataset_io
from ace_vis_util import DEFAULT_ASPECT, cameras_mesh, confidence_colours, frustum_mesh, pyramid_marker_mesh
from cli_common import UserError, atomic_write, make_parser, run_main, str2bool

_log = logging.getLogger("export_cameras")

def image_aspect(entries: list[dataset_io.PoseEntry]) -> float:
    """Width / height of the first image; 4:3 when the images are not at hand (only the shape depends on it)."""
    try:
        width, height = dataset_io.image_size(entries[0].path)
    except UserError:
        return DEFAULT_ASPECT
    return width / height


# ----------------------------------------------------------------------------------------------------------------
# CLI

def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("pose_file", type=Path, help="ACE pose file (e.g. poses_final.txt)")
    parser.add_argument("output_file", type=Path, help="mesh to write (.ply)")
    parser.add_argument("--frustum_scale", type=float, default=0.1, help="frustum depth in scene units")
    parser.add_argument("--frustum_markers", type=str2bool, default=False,
                        help="draw solid pyramid markers instead of wire frustums")
    parser.add_argument("--draw_non_confident", type=str2bool, default=True,
                        help="also draw cameras with confidence below --confidence_threshold")
    parser.add_argument("--confidence_threshold", type=float, default=1000,
                        help="confidence separating reliable (summer colours) from unreliable (cool) poses")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.output_file.suffix.lower() != ".ply":
        raise UserError(f"{args.output_file}: the camera mesh is written as PLY (use a .ply suffix)")
    if not args.frustum_scale > 0:
        raise UserError(f"--frustum_scale must be positive, got {args.frustum_scale}")
    if args.draw_non_confident:
        entries = dataset_io.read_ace_pose_file(args.pose_file)
        if not entries:
            raise UserError(f"{args.pose_file}: no entries")
    else:
        entries = dataset_io.confident_entries(args.pose_file, args.confidence_threshold)
    colours = confidence_colours(np.array([e.confidence for e in entries]), args.confidence_threshold)
    template = pyramid_marker_mesh(args.frustum_scale) if args.frustum_markers \
        else frustum_mesh(args.frustum_scale, image_aspect(entries))
    poses = [dataset_io.opencv_to_opengl_pose(e.cam_to_world) for e in entries]
    data = cameras_mesh(poses, colours, template).export(file_type="ply")
    atomic_write(args.output_file, lambda handle: handle.write(data), binary=True)
    _log.info("wrote %d cameras to %s", len(entries), args.output_file)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
