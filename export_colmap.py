#!/usr/bin/env python3
"""Export an ACE reconstruction as a COLMAP text model (cameras.txt, images.txt, points3D.txt).

Only images with confidence >= --confidence_threshold are exported. With --network, points3D.txt holds the
scene points the ACE network predicts for those images; each point is observed once, by the image that
predicted it, at the centre of its 8x8 cell. Without it the model has cameras and images only.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np

import dataset_io
from calibration import Intrinsics, format_colmap_cameras, unique_cameras
from cli_common import (UserError, add_pose_export_args, atomic_write_text, ensure_writable_folder, make_parser,
                        run_main)
from export_point_cloud import add_network_args, point_cloud_from_args
from point_cloud import PointCloud

_log = logging.getLogger("export_colmap")


# ----------------------------------------------------------------------------------------------------------------
# Model content

def default_image_root(paths: list[str]) -> Path:
    """The deepest folder containing every image."""
    return Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths]))


def image_name(path: str, image_root: Path) -> str:
    """Image path relative to the root, with '/' separators (COLMAP's NAME)."""
    try:
        return Path(path).resolve().relative_to(image_root.resolve()).as_posix()
    except ValueError:
        raise UserError(f"image {path} is not inside --image_root {image_root}") from None


def assign_cameras(cameras: list[Intrinsics]) -> tuple[list[Intrinsics], list[int]]:
    """One COLMAP camera per distinct camera (ids from 1); ACE0 output normally needs exactly one."""
    distinct, index = unique_cameras(cameras)
    return distinct, [i + 1 for i in index]


def observations_per_image(cloud: PointCloud | None, num_images: int) -> list[np.ndarray]:
    """For every image, the indices (into the cloud) of the points it observes, in POINT2D order."""
    if cloud is None:
        return [np.zeros(0, np.int64) for _ in range(num_images)]
    order = np.argsort(cloud.image_index, kind="stable")
    bounds = np.searchsorted(cloud.image_index[order], np.arange(num_images + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(num_images)]


def format_images(entries: list[dataset_io.PoseEntry], names: list[str], camera_ids: list[int],
                  cloud: PointCloud | None, observed: list[np.ndarray]) -> str:
    mean_obs = sum(len(o) for o in observed) / max(1, len(entries))
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             f"# Number of images: {len(entries)}, mean observations per image: {mean_obs:g}"]
    for index, (entry, name, camera_id) in enumerate(zip(entries, names, camera_ids)):
        # COLMAP and ACE both store world-to-camera with OpenCV axes and a (w, x, y, z) quaternion.
        quat, trans = dataset_io.pose_to_quat_t(entry.world_to_cam)
        numbers = " ".join(repr(float(v)) for v in (*quat, *trans))
        lines.append(f"{index + 1} {numbers} {camera_id} {name}")
        points = observed[index]
        lines.append(" ".join(f"{float(cloud.pixel[p, 0])!r} {float(cloud.pixel[p, 1])!r} {p + 1}"
                              for p in points))
    return "\n".join(lines) + "\n"


def format_points(cloud: PointCloud | None, observed: list[np.ndarray]) -> str:
    count = 0 if cloud is None else len(cloud)
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
             f"# Number of points: {count}, mean track length: {1 if count else 0}"]
    if cloud is not None:
        point2d_index = np.zeros(count, np.int64)
        for points in observed:
            point2d_index[points] = np.arange(len(points))
        for p in range(count):
            x, y, z = (repr(float(v)) for v in cloud.xyz[p])
            r, g, b = (int(v) for v in cloud.rgb[p])
            lines.append(f"{p + 1} {x} {y} {z} {r} {g} {b} {float(cloud.error[p])!r} "
                         f"{int(cloud.image_index[p]) + 1} {point2d_index[p]}")
    return "\n".join(lines) + "\n"


def write_colmap_model(folder: Path, entries: list[dataset_io.PoseEntry], image_root: Path,
                       cloud: PointCloud | None = None, cameras: list[Intrinsics] | None = None) -> None:
    """Write the text model; `cloud.image_index` must refer to `entries`; `cameras`: one per entry (default:
    centred, the entry's focal). Distortion is kept in the model (OPENCV): the images are the originals."""
    names = [image_name(e.path, image_root) for e in entries]
    cameras, camera_ids = assign_cameras(cameras or dataset_io.entry_cameras(entries))
    observed = observations_per_image(cloud, len(entries))
    ensure_writable_folder(folder)
    atomic_write_text(folder / "cameras.txt", format_colmap_cameras(cameras))
    atomic_write_text(folder / "images.txt", format_images(entries, names, camera_ids, cloud, observed))
    atomic_write_text(folder / "points3D.txt", format_points(cloud, observed))
    _log.info("wrote COLMAP model with %d camera(s), %d images, %d points to %s", len(cameras), len(entries),
              0 if cloud is None else len(cloud), folder)


# ----------------------------------------------------------------------------------------------------------------
# CLI

def build_parser():
    parser = make_parser(__doc__)
    add_pose_export_args(parser, "folder for cameras.txt, images.txt, points3D.txt")
    parser.add_argument("--image_root", type=Path, default=None,
                        help="image NAMEs are relative to this folder; unset: the deepest folder containing "
                             "all images")
    add_network_args(parser, "ACE head file (.pt): fill points3D.txt with the points it predicts")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    entries = dataset_io.confident_entries(args.pose_file, args.confidence_threshold)
    image_root = args.image_root or default_image_root([e.path for e in entries])
    cloud = point_cloud_from_args(args, entries) if args.network is not None else None
    cameras = dataset_io.entry_cameras(entries, args.calibration_file, args.pose_file)
    write_colmap_model(args.output_folder, entries, image_root, cloud, cameras)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
