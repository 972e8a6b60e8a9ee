#!/usr/bin/env python3
"""Export the scene point cloud of an ACE reconstruction, as text (`x y z r g b` per line) or binary PLY.

The points come either from an ACE network evaluated on the images of a pose file (each image predicts scene
coordinates for its 8x8 cells; noisy cells are filtered out), or from an existing visualisation buffer
(`renderings/*_mapping.pkl`), which already holds a point cloud.
"""
from __future__ import annotations

import logging
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import dataset_io
from ace_util import OUTPUT_SUBSAMPLE, project_pinhole
from cli_common import (UserError, add_device_arg, add_encoder_args, atomic_write, make_parser, run_main,
                        str2bool)

_log = logging.getLogger("export_point_cloud")

CELL = OUTPUT_SUBSAMPLE                            # one prediction per 8x8 cell (ace_util)
GRADIENT_THRESHOLDS_M = (0.1, 0.5, 1.0, np.inf)   # tried from tight to loose, see select_cells
MAX_ERROR_PX = 1.0                                # reprojection error (network-input pixels) of a good point
EXPORT_DEPTH_FILTER_M = 100.0
MIN_POINTS_TOTAL = 100_000                        # split evenly over the images
MAX_POINTS_TOTAL = 1_000_000
SUFFIXES = (".txt", ".ply")


@dataclass
class PointCloud:
    """Points predicted by an ACE network, with where they came from."""
    xyz: np.ndarray          # N x 3 float32, world coordinates, OpenCV convention (the pose file's world)
    rgb: np.ndarray          # N x 3 uint8
    image_index: np.ndarray  # N int64, index into the pose entries of the image that predicted the point
    pixel: np.ndarray        # N x 2 float32, the cell centre in ORIGINAL image pixels (u, v)
    error: np.ndarray        # N float32, reprojection error (L1) w.r.t. the pose-file pose, original pixels

    def __len__(self) -> int:
        return len(self.xyz)

    @staticmethod
    def concatenate(parts: list["PointCloud"]) -> "PointCloud":
        if not parts:
            return PointCloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.int64),
                              np.zeros((0, 2), np.float32), np.zeros(0, np.float32))
        return PointCloud(*(np.concatenate([getattr(p, name) for p in parts])
                            for name in ("xyz", "rgb", "image_index", "pixel", "error")))


# ----------------------------------------------------------------------------------------------------------------
# Cell selection (pure numpy: testable with exact scene coordinates)

def cell_centres_px(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) pixel grids of the cell centres of a height x width output, in network-input pixels."""
    u = np.arange(width, dtype=np.float64) * CELL + CELL / 2
    v = np.arange(height, dtype=np.float64) * CELL + CELL / 2
    return np.meshgrid(u, v)


def neighbour_distance(coords: np.ndarray) -> np.ndarray:
    """Per cell, the larger 3D distance to its right and lower neighbour (reflected at the border).

    Large values mark depth discontinuities and noise, where the network's points float in free space."""
    mode = "reflect" if min(coords.shape[:2]) > 1 else "edge"
    padded = np.pad(coords, ((0, 1), (0, 1), (0, 0)), mode=mode)
    dx = np.linalg.norm(padded[:-1, 1:] - padded[:-1, :-1], axis=2)
    dy = np.linalg.norm(padded[1:, :-1] - padded[:-1, :-1], axis=2)
    return np.maximum(dx, dy)


def camera_coords_and_error(coords: np.ndarray, world_to_cam: np.ndarray, focal: float,
                            image_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space depth of every cell's point and its L1 reprojection error (inf behind the camera)."""
    cam = coords.astype(np.float64) @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    z = cam[..., 2]
    u, v = cell_centres_px(*coords.shape[:2])
    in_front = z > 0
    safe = np.concatenate([cam[..., :2], np.where(in_front, z, 1.0)[..., None]], axis=-1)
    offset = project_pinhole(safe, focal, np.array(image_wh) / 2) - np.stack([u, v], axis=-1)
    error = np.abs(offset[..., 0]) + np.abs(offset[..., 1])
    return z, np.where(in_front, error, np.inf)


def select_cells(coords: np.ndarray, world_to_cam: np.ndarray, focal: float, image_wh: tuple[int, int],
                 min_points: int, max_points: int, dense: bool = False,
                 filter_depth: float = EXPORT_DEPTH_FILTER_M,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the cells worth exporting and their reprojection errors (network-input pixels).

    coords: H x W x 3 scene coordinates of one image; focal and image_wh refer to the network input.
    Sparse mode keeps smooth, well reprojecting points, loosening each criterion until at least
    `min_points` survive; dense mode keeps everything in front of the camera closer than `filter_depth`.
    Either way at most `max_points` (random subset)."""
    rng = rng or np.random.default_rng(0)
    z, error = camera_coords_and_error(coords, world_to_cam, focal, image_wh)
    flat_error = error.ravel()
    smooth = np.ones(z.size, bool)
    if not dense:
        gradient = neighbour_distance(coords).ravel()
        for threshold in GRADIENT_THRESHOLDS_M:
            smooth = gradient < threshold
            if smooth.sum() > min_points:
                break
    candidates = smooth & (z.ravel() > 0) & (z.ravel() < filter_depth)
    keep = candidates
    if not dense:
        keep = candidates & (flat_error < MAX_ERROR_PX)
        if keep.sum() < min_points and candidates.any():
            # Too few accurate points: accept the `min_points` best ones instead.
            errors = np.sort(flat_error[candidates])
            keep = candidates & (flat_error <= errors[min(min_points, len(errors)) - 1])
    indices = np.flatnonzero(keep)
    if len(indices) > max_points:
        indices = np.sort(rng.choice(indices, max_points, replace=False))
    return indices, flat_error[indices]


# ----------------------------------------------------------------------------------------------------------------
# Network evaluation

def load_regressor(network: Path | str, encoder_path: str, device):
    """Encoder + head, ready for inference."""
    from ace_network import Regressor, load_encoder, load_head
    encoder = load_encoder(encoder_path, device)
    head = load_head(network, encoder, device)
    return Regressor(encoder, head).to(device).eval()


def _image_points(regressor, entry: dataset_io.PoseEntry, image_resolution: int, device, budget: tuple[int, int],
                  dense: bool, filter_depth: float, rng: np.random.Generator) -> PointCloud:
    import torch
    rgb = dataset_io.load_image_rgb(entry.path)
    orig_h, orig_w = rgb.shape[:2]
    width, height = dataset_io.resized_shape(orig_w, orig_h, image_resolution)
    resized = dataset_io.resize_image(rgb, width, height)
    grey = torch.from_numpy(dataset_io.rgb_to_grey01(resized)).to(device)[None, None]
    with torch.no_grad():
        coords = regressor(grey)[0].permute(1, 2, 0).float().cpu().numpy()
    scale = min(width, height) / min(orig_w, orig_h)
    indices, error = select_cells(coords, entry.world_to_cam, entry.focal * scale, (width, height), *budget,
                                  dense=dense, filter_depth=filter_depth, rng=rng)
    rows, cols = np.divmod(indices, coords.shape[1])
    u, v = cols * CELL + CELL // 2, rows * CELL + CELL // 2
    # Colour of the resized image at the cell centre (clamped: the last cell may overhang the image).
    colours = resized[np.minimum(v, height - 1), np.minimum(u, width - 1)]
    pixel = np.stack([u * orig_w / width, v * orig_h / height], axis=1)
    return PointCloud(coords.reshape(-1, 3)[indices].astype(np.float32), colours.astype(np.uint8),
                      np.zeros(len(indices), np.int64), pixel.astype(np.float32), (error / scale).astype(np.float32))


def point_cloud_from_network(regressor, entries: list[dataset_io.PoseEntry], image_resolution: int = 480,
                             device="cpu", dense: bool = False, filter_depth: float = EXPORT_DEPTH_FILTER_M,
                             min_points_total: int = MIN_POINTS_TOTAL, max_points_total: int = MAX_POINTS_TOTAL,
                             seed: int = 0) -> PointCloud:
    """Scene points predicted for the images of `entries`, filtered per image (see select_cells).

    `regressor`: an ace_network.Regressor (see load_regressor). The point budget is split evenly over the
    images. Coordinates are in the pose file's world, OpenCV convention; image_index refers to `entries`."""
    rng = np.random.default_rng(seed)
    budget = (max(1, min_points_total // len(entries)), max(1, max_points_total // len(entries)))
    parts = []
    for index, entry in enumerate(entries):
        part = _image_points(regressor, entry, image_resolution, device, budget, dense, filter_depth, rng)
        part.image_index[:] = index
        parts.append(part)
        if (index + 1) % 50 == 0:
            _log.info("%d/%d images, %d points", index + 1, len(entries), sum(len(p) for p in parts))
    cloud = PointCloud.concatenate(parts)
    _log.info("%d points from %d images", len(cloud), len(entries))
    return cloud


# ----------------------------------------------------------------------------------------------------------------
# Visualisation buffers and output files

def read_visualization_buffer(path: Path) -> dict:
    """The dict of a visualisation buffer (.pkl), checked to hold a point cloud."""
    try:
        with open(path, "rb") as handle:
            state = pickle.load(handle)
    except FileNotFoundError:
        raise UserError(f"visualisation buffer not found: {path}") from None
    except Exception as error:  # unpickling raises many types for a foreign file
        raise UserError(f"{path}: not a readable visualisation buffer ({error})") from None
    if not isinstance(state, dict) or "map_xyz" not in state or "map_clr" not in state:
        raise UserError(f"{path}: visualisation buffer without 'map_xyz'/'map_clr'")
    return state


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


def point_cloud_from_args(args, entries: list[dataset_io.PoseEntry]) -> PointCloud:
    """Evaluate args.network on the images of `entries` (flags of add_network_args)."""
    from cli_common import configure_cpu_threads, select_device
    device = select_device(args.device)
    configure_cpu_threads()
    regressor = load_regressor(args.network, args.encoder_path, device)
    return point_cloud_from_network(regressor, entries, args.image_resolution, device, dense=args.dense_point_cloud)


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
