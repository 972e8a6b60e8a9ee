#!/usr/bin/env python3
"""Export the scene point cloud of an ACE reconstruction, as text (`x y z r g b` per line) or binary PLY.

The points come either from an ACE network evaluated on the images of a pose file (each image predicts scene
coordinates for its 8x8 cells; noisy cells are filtered out), or from an existing visualisation buffer
(`renderings/*_mapping.pkl`), which already holds a point cloud.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

import dataset_io
from ace_vis_util import read_visualization_buffer
from cli_common import (POSE_FILE_CAMERAS_HELP, UserError, add_calibration_arg, add_device_arg, add_encoder_args,
                        atomic_write, make_parser, run_main, str2bool)
from point_cloud import PointCloud, load_regressor, point_cloud_from_network  # the network's points (shared)

_log = logging.getLogger("export_point_cloud")

SUFFIXES = (".txt", ".ply")


# ----------------------------------------------------------------------------------------------------------------
# Visualisation buffers and output files

def load_visualization_buffer(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(xyz in OpenGL convention, rgb 0-255) of a visualisation buffer."""
    state = read_visualization_buffer(path)
    xyz = np.asarray(state["map_xyz"], dtype=np.float32).reshape(-1, 3)
    rgb = np.asarray(state["map_clr"], dtype=np.float64).reshape(-1, 3)
    if len(xyz) != len(rgb):
        raise UserError(f"{path}: {len(xyz)} points but {len(rgb)} colours")
    return xyz, np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def check_point_cloud_suffix(path: Path) -> None:
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"{path}: unsupported suffix '{path.suffix}' (use .txt or .ply)")


def write_point_cloud(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """`.txt`: one `x y z r g b` line per point; `.ply`: binary PLY with vertex colours."""
    check_point_cloud_suffix(path)
    if len(xyz) == 0:
        raise UserError("no points to export")
    if path.suffix.lower() == ".ply":
        write_point_cloud_ply(path, xyz, rgb)
    else:
        table = np.hstack([xyz.astype(np.float64), rgb.astype(np.float64)])
        atomic_write(path, lambda handle: np.savetxt(handle, table, fmt=["%.9g"] * 3 + ["%.0f"] * 3))
    _log.info("wrote %d points to %s", len(xyz), path)


def write_point_cloud_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    import trimesh
    data = trimesh.PointCloud(np.asarray(xyz, np.float64), colors=np.asarray(rgb, np.uint8)).export(file_type="ply")
    atomic_write(path, lambda handle: handle.write(data), binary=True)


# ----------------------------------------------------------------------------------------------------------------
# CLI

def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("output_file", type=Path, help="point cloud to write: .txt (x y z r g b) or .ply")
    parser.add_argument("--pose_file", type=Path, default=None,
                        help="ACE pose file whose images (and poses) predict and filter the points")
    parser.add_argument("--visualization_buffer", type=Path, default=None,
                        help="visualisation buffer (.pkl) that already holds a point cloud; replaces "
                             "--network/--pose_file")
    parser.add_argument("--confidence_threshold", type=float, default=500,
                        help="use pose-file images with confidence >= this")
    parser.add_argument("--convention", type=str, default="opengl", choices=("opengl", "opencv"),
                        help="world axes of the output: opengl (y, z negated; as the visualiser) or opencv "
                             "(the pose file's world, as pc_final.ply)")
    add_network_args(parser, "ACE head file (.pt); needs --pose_file")
    return parser


def add_network_args(parser, network_help: str) -> None:
    """Flags of every exporter that evaluates an ACE network for points."""
    parser.add_argument("--network", type=Path, default=None, help=network_help)
    add_encoder_args(parser)
    parser.add_argument("--dense_point_cloud", type=str2bool, default=False,
                        help="keep all predictions (depth filter only) instead of the smooth, accurate ones")
    add_device_arg(parser)
    add_calibration_arg(parser, POSE_FILE_CAMERAS_HELP)


def point_cloud_from_args(args, entries: list[dataset_io.PoseEntry]) -> PointCloud:
    """Evaluate args.network on the images of `entries` (flags of add_network_args)."""
    from cli_common import configure_cpu_threads, select_device
    device = select_device(args.device)
    configure_cpu_threads()
    regressor = load_regressor(args.network, args.encoder_path, device)
    cameras = dataset_io.entry_cameras(entries, args.calibration_file, args.pose_file)
    return point_cloud_from_network(regressor, entries, args.image_resolution, device, dense=args.dense_point_cloud,
                                    cameras=cameras)


def validate(args) -> None:
    check_point_cloud_suffix(args.output_file)
    if args.visualization_buffer is not None:
        if args.network is not None or args.pose_file is not None:
            raise UserError("pass either --visualization_buffer or --network with --pose_file, not both")
        if args.dense_point_cloud:
            raise UserError("--dense_point_cloud needs --network and --pose_file (a visualisation buffer holds "
                            "a fixed point cloud)")
    elif args.network is None or args.pose_file is None:
        raise UserError("pass --network and --pose_file, or --visualization_buffer")


def cloud_from_args(args) -> tuple[np.ndarray, np.ndarray]:
    """(xyz OpenCV convention, rgb)."""
    if args.visualization_buffer is not None:
        xyz_gl, rgb = load_visualization_buffer(args.visualization_buffer)
        return dataset_io.flip_yz_points(xyz_gl), rgb
    cloud = point_cloud_from_args(args, dataset_io.confident_entries(args.pose_file, args.confidence_threshold))
    return cloud.xyz, cloud.rgb


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    validate(args)
    xyz, rgb = cloud_from_args(args)
    if args.convention == "opengl":
        xyz = dataset_io.flip_yz_points(xyz)
    write_point_cloud(args.output_file, xyz, rgb)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
