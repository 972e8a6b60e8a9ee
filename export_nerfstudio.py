#!/usr/bin/env python3
"""Export an ACE reconstruction as a Nerfstudio `transforms.json` (read directly by Nerfstudio's
`nerfstudio-data` parser and gsplat's examples), optionally with an initial point cloud for Splatfacto.

Only images with confidence >= --confidence_threshold become frames. Frame paths are absolute, poses are
camera-to-world with Nerfstudio's (OpenGL) camera axes in the pose file's world. The point cloud
(`pc_final.ply`, world in OpenCV convention, i.e. the pose file's world, like ACE0's pc_final.ply) is
predicted by --network, or, without it, copied from a `pc_final.ply` next to the pose file when there is one.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import sys
from pathlib import Path

import numpy as np

import dataset_io
from calibration import Intrinsics
from cli_common import (UserError, add_pose_export_args, atomic_write_text, ensure_writable_folder, make_parser,
                        run_main, str2bool)
from export_point_cloud import add_network_args, point_cloud_from_args, write_point_cloud_ply

_log = logging.getLogger("export_nerfstudio")

POINT_CLOUD_NAME = "pc_final.ply"


def nerfstudio_cam_to_world(world_to_cam: np.ndarray) -> np.ndarray:
    """ACE world-to-camera (OpenCV axes) -> camera-to-world with OpenGL camera axes (x right, y up, z back)."""
    return dataset_io.invert_pose(world_to_cam) @ dataset_io.FLIP_YZ


def intrinsics(camera: Intrinsics) -> dict:
    """The camera of the original image (OPENCV model: the images are not undistorted)."""
    k1, k2, p1, p2, k3 = (float(k) for k in camera.opencv_distortion())
    result = {"fl_x": float(camera.fx), "fl_y": float(camera.fy), "cx": float(camera.cx), "cy": float(camera.cy),
              "w": camera.width, "h": camera.height, "k1": k1, "k2": k2, "p1": p1, "p2": p2}
    return {**result, "k3": k3} if k3 else result


def frame(entry: dataset_io.PoseEntry, camera: Intrinsics) -> dict:
    result = {"file_path": str(Path(entry.path).resolve()),
              "transform_matrix": nerfstudio_cam_to_world(entry.world_to_cam).tolist(),
              **intrinsics(camera)}
    if math.isfinite(entry.confidence):  # JSON has no infinity (mapping outputs carry 'inf')
        result["confidence_score"] = float(entry.confidence)
    return result


def transforms(entries: list[dataset_io.PoseEntry], cameras: list[Intrinsics] | None = None) -> dict:
    frames = [frame(e, c) for e, c in zip(entries, cameras or dataset_io.entry_cameras(entries))]
    # Nerfstudio reads intrinsics per frame when present, else from the top level; give both.
    shared = {key: frames[0][key] for key in ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "p1", "p2")}
    return {"camera_model": "OPENCV", **shared, "frames": frames}


def write_point_cloud(args, entries: list[dataset_io.PoseEntry], folder: Path) -> str | None:
    """Name of the point cloud written into `folder`, or None."""
    if not args.point_cloud:
        return None
    target = folder / POINT_CLOUD_NAME
    if args.network is not None:
        cloud = point_cloud_from_args(args, entries)
        if len(cloud) == 0:
            raise UserError("the network predicted no usable points")
        write_point_cloud_ply(target, cloud.xyz, cloud.rgb)
        return POINT_CLOUD_NAME
    existing = args.pose_file.parent / POINT_CLOUD_NAME
    if existing.is_file():
        if existing.resolve() != target.resolve():
            shutil.copyfile(existing, target)
        return POINT_CLOUD_NAME
    _log.info("no point cloud: pass --network (or put %s next to the pose file)", POINT_CLOUD_NAME)
    return None


def build_parser():
    parser = make_parser(__doc__)
    add_pose_export_args(parser, "folder for transforms.json (and pc_final.ply)")
    parser.add_argument("--point_cloud", type=str2bool, default=True,
                        help="write pc_final.ply (from --network, or copied from next to the pose file) and "
                             "reference it as ply_file_path")
    add_network_args(parser, "ACE head file (.pt) predicting the initial point cloud")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    entries = dataset_io.confident_entries(args.pose_file, args.confidence_threshold)
    folder = ensure_writable_folder(args.output_folder)
    cameras = dataset_io.entry_cameras(entries, args.calibration_file, args.pose_file)
    document = transforms(entries, cameras=cameras)  # reads every image size first: fail before the slow point cloud
    ply_name = write_point_cloud(args, entries, folder)
    if ply_name is not None:
        document["ply_file_path"] = ply_name
    atomic_write_text(folder / "transforms.json", json.dumps(document, indent=2) + "\n")
    _log.info("wrote %d frames to %s", len(entries), folder / "transforms.json")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
