"""Scene points of an ACE reconstruction predicted by its network: every image of a pose file predicts scene
coordinates for its 8x8 cells, and noisy cells are filtered out. Used by the exporters and the visualiser."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import dataset_io
from ace_util import OUTPUT_SUBSAMPLE, project_pinhole
from calibration import Intrinsics

_log = logging.getLogger("point_cloud")

CELL = OUTPUT_SUBSAMPLE                            # one prediction per 8x8 cell (ace_util)
GRADIENT_THRESHOLDS_M = (0.1, 0.5, 1.0, np.inf)   # tried from tight to loose, see select_cells
MAX_ERROR_PX = 1.0                                # reprojection error (network-input pixels) of a good point
EXPORT_DEPTH_FILTER_M = 100.0
MIN_POINTS_TOTAL = 100_000                        # split evenly over the images
MAX_POINTS_TOTAL = 1_000_000


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


def camera_coords_and_error(coords: np.ndarray, world_to_cam: np.ndarray, camera: Intrinsics
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space depth of every cell's point and its L1 reprojection error (inf behind the camera)."""
    cam = coords.astype(np.float64) @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    z = cam[..., 2]
    u, v = cell_centres_px(*coords.shape[:2])
    in_front = z > 0
    safe = np.concatenate([cam[..., :2], np.where(in_front, z, 1.0)[..., None]], axis=-1)
    offset = project_pinhole(safe, (camera.fx, camera.fy), (camera.cx, camera.cy)) - np.stack([u, v], axis=-1)
    error = np.abs(offset[..., 0]) + np.abs(offset[..., 1])
    return z, np.where(in_front, error, np.inf)


def select_cells(coords: np.ndarray, world_to_cam: np.ndarray, camera: Intrinsics, min_points: int,
                 max_points: int, dense: bool = False,
                 filter_depth: float = EXPORT_DEPTH_FILTER_M,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the cells worth exporting and their reprojection errors (network-input pixels).

    coords: H x W x 3 scene coordinates of one image; `camera` is that of the network input.
    Sparse mode keeps smooth, well reprojecting points, loosening each criterion until at least
    `min_points` survive; dense mode keeps everything in front of the camera closer than `filter_depth`.
    Either way at most `max_points` (random subset)."""
    rng = rng or np.random.default_rng(0)
    z, error = camera_coords_and_error(coords, world_to_cam, camera)
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


def _image_points(regressor, entry: dataset_io.PoseEntry, camera: Intrinsics, image_resolution: int, device,
                  budget: tuple[int, int], dense: bool, filter_depth: float, rng: np.random.Generator) -> PointCloud:
    import torch
    rgb = dataset_io.load_undistorted_rgb(entry.path, camera)
    orig_h, orig_w = rgb.shape[:2]
    width, height = dataset_io.resized_shape(orig_w, orig_h, image_resolution)
    resized = dataset_io.resize_image(rgb, width, height)
    grey = torch.from_numpy(dataset_io.rgb_to_grey01(resized)).to(device)[None, None]
    with torch.no_grad():
        coords = regressor(grey)[0].permute(1, 2, 0).float().cpu().numpy()
    scale = min(width, height) / min(orig_w, orig_h)
    indices, error = select_cells(coords, entry.world_to_cam, camera.scaled(width, height), *budget,
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
                             seed: int = 0, cameras: list[Intrinsics] | None = None) -> PointCloud:
    """Scene points predicted for the images of `entries`, filtered per image (see select_cells).

    `regressor`: an ace_network.Regressor (see load_regressor). The point budget is split evenly over the
    images. Coordinates are in the pose file's world, OpenCV convention; image_index refers to `entries`.
    `cameras`: one per entry (default: centred, the entry's focal)."""
    rng = np.random.default_rng(seed)
    budget = (max(1, min_points_total // len(entries)), max(1, max_points_total // len(entries)))
    parts = []
    cameras = cameras or dataset_io.entry_cameras(entries)
    for index, entry in enumerate(entries):
        part = _image_points(regressor, entry, cameras[index], image_resolution, device, budget, dense,
                             filter_depth, rng)
        part.image_index[:] = index
        parts.append(part)
        if (index + 1) % 50 == 0:
            _log.info("%d/%d images, %d points", index + 1, len(entries), sum(len(p) for p in parts))
    cloud = PointCloud.concatenate(parts)
    _log.info("%d points from %d images", len(cloud), len(entries))
    return cloud
