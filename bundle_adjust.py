#!/usr/bin/env python3
"""Bundle adjustment of registered poses on feature tracks: an addition to ACE0 for short (CPU) runs.

ACE0 refines poses by training a pose refiner jointly with the scene network for tens of thousands of iterations;
on a CPU the rounds are too short for that, and registration against a head that learnt a slightly distorted
scene leaves errors of a few degrees. This step polishes the poses of a pose file the classical way: XFeat
keypoints of every registered image are matched to its nearest cameras (as the input poses place them), matches
are verified with a fundamental matrix (MAGSAC), chained into tracks, triangulated with the input poses, and
poses, points and (optionally) the shared focal length are optimised for reprojection error with a robust loss;
cameras registered far off are re-seated by PnP between rounds. The pairs are then chosen again from the adjusted
poses and the adjustment repeated while that brings new pairs. The result is moved back onto the input's frame
by a similarity, at the input's scale, or at the scale of sensor depth maps (`--depth_files`, RGB-D). Keypoints
and verified matches can be kept for the next call (`--feature_cache`).
"""
from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial.transform import Rotation

import dataset_io
from ace_util import (XFEAT_ENCODER_ID, atomic_write_text, config_from_args, in_mapping_set, progress_bar,
                      project_pinhole)
from calibration import Intrinsics, diagonal_field_of_view_deg, focal_changed
from cli_common import (POSE_FILE_CAMERAS_HELP, UserError, add_calibration_arg, add_device_arg, add_feature_cache_arg,
                        make_parser, run_main, select_device, str2bool)
from eval_poses import rotation_angle_deg
from feature_cache import FeatureCache

_log = logging.getLogger("bundle_adjust")

MIN_PAIR_MATCHES = 30       # verified matches for a pair to count
MIN_CAMERA_OBSERVATIONS = 20  # cameras seen in fewer track points keep their input pose
MIN_DEPTH_OBSERVATIONS = 50  # track observations with sensor depth needed to take the scale from it
MAX_TRACK_POINTS = 30000    # longest tracks first: enough constraints, bounded cost
MIN_PARALLAX_DEG = 1.0      # rays meeting at a smaller angle pin nothing down
MAX_PAIR_PASSES = 3         # adjustments with pairs chosen again from the adjusted poses
MAX_FINAL_ROUNDS = 2        # rounds at the keypoint accuracy: a second one only after a camera was re-seated
FOCAL_PROBE_FACTOR = 1.5      # focal_probe starts adjustments with the focal this factor shorter and longer
STARTING_SCALE_PERCENTILE = 90  # of each camera's errors: the first round's loss scale (starting_scale)
FRAME_FIT_MIN_ANGLE_DEG = 2.0  # cameras turned by less count in the fit back to the input's frame


@dataclass(frozen=True)
class BundleAdjustConfig:
    """What the adjustment reads; the defaults are bundle_adjust.py's (its flags have these names)."""
    input_poses: Path | str  # the pose file of the entries, for messages (and the cameras_X.txt beside it)
    confidence_threshold: float = 1000  # lower entries are copied unchanged
    refine_focal: bool = True
    refine_principal_point: bool = False
    calibration_file: str | None = None
    image_resolution: int = 480  # short side for the keypoints
    neighbours: int = 8  # images matched to each image
    max_view_angle: float = 60  # deg
    max_iterations: int = 500  # solver steps per round
    feature_cache: str | None = None  # folder of a FeatureCache shared with other stages (None: no cache)
    depth_files: str | None = None  # glob of sensor depth maps, one per pose-file image: the metric scale
    max_focal_change: float = 0.0  # > 1: a larger change of the focal is refused (adjusted again with it held) ...
    focal_change_support: float = 1.08  # ... unless holding it raises the median error by this factor (0: never)
    min_field_of_view: float = 2.0  # deg, diagonal: a focal that leaves a narrower view is refused (0: no bound)


@dataclass
class ImageFeatures:
    pixels: np.ndarray       # N x 2, original image pixels
    descriptors: "torch.Tensor"  # N x 64, unit length
    cache_key: str | None = None  # the image's FeatureCache key (None: not cached)


@dataclass
class Tracks:
    camera: np.ndarray   # M observations: index of the camera ...
    point: np.ndarray    # ... index of the point ...
    pixels: np.ndarray   # ... and where it was seen (M x 2, original pixels)
    count: int           # number of points


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("input_poses", type=Path, help="ACE pose file (e.g. poses_iteration5.txt)")
    parser.add_argument("output_poses", type=Path, help="where to write the adjusted pose file")
    add_device_arg(parser)
    defaults = BundleAdjustConfig
    parser.add_argument("--confidence_threshold", type=float, default=defaults.confidence_threshold,
                        help="images with a lower confidence are copied unchanged and not used")
    parser.add_argument("--refine_focal", type=str2bool, default=defaults.refine_focal,
                        help="optimise the focal length (one relative change of every camera's)")
    parser.add_argument("--refine_principal_point", type=str2bool, default=defaults.refine_principal_point,
                        help="new: optimise the principal point too (one shift shared by the cameras)")
    add_calibration_arg(parser, POSE_FILE_CAMERAS_HELP)
    parser.add_argument("--image_resolution", type=int, default=defaults.image_resolution,
                        help="short side for keypoint detection")
    parser.add_argument("--neighbours", type=int, default=defaults.neighbours, help="images matched to each image")
    parser.add_argument("--max_view_angle", type=float, default=defaults.max_view_angle,
                        help="only pair cameras whose viewing directions differ by less (deg)")
    parser.add_argument("--max_iterations", type=int, default=defaults.max_iterations,
                        help="most solver steps per round (a focal length far off needs hundreds)")
    add_feature_cache_arg(parser)
    parser.add_argument("--depth_files", type=str, default=None,
                        help="new: sensor depth maps (16-bit PNG, millimetres), one per image of the pose file in "
                             "sorted order (RGB-D): the adjusted poses take their scale from them (the median ratio "
                             "of measured to triangulated depth) instead of keeping the input's")
    parser.add_argument("--max_focal_change", type=float, default=defaults.max_focal_change,
                        help="new: when the focal length would change by more than this factor, adjust again with "
                             "it held (for a focal estimated before: nearly affine views, such as a narrow field "
                             "of view, barely constrain it, and it can run away); 0: no limit")
    parser.add_argument("--focal_change_support", type=float, default=defaults.focal_change_support,
                        help="new: a focal change beyond --max_focal_change is kept after all when the adjustment "
                             "with the focal held ends with a median reprojection error this many times the free "
                             "one's: then the tracks pin the new focal down (a runaway leaves the error flat); "
                             "0: refuse every such change")
    parser.add_argument("--min_field_of_view", type=float, default=defaults.min_field_of_view,
                        help="new: when the adjusted focal length leaves a narrower diagonal field of view than this "
                             "(deg), adjust again with it held, whatever the fit says: nearly affine views let the "
                             "focal run away to millions of pixels while the error falls (a 1200 mm lens on full "
                             "frame sees 2 deg); 0: no bound")
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Tracks

def extract_features(paths: list[str], short_side: int, device, cameras: list[Intrinsics],
                     cache: FeatureCache | None = None) -> list[ImageFeatures]:
    """XFeat keypoints of every image (whatever encoder mapped the scene: BA needs pixel-accurate points), in
    pixels of its camera (the original image, undistorted when the camera has distortion); from the cache for
    images detected before."""
    import torch
    from ace_network import load_encoder
    from feature_matching import keypoints
    cache = cache or FeatureCache(None)
    encoder = None

    def detect(path: str, camera: Intrinsics) -> dict[str, np.ndarray]:
        nonlocal encoder
        encoder = encoder or load_encoder(XFEAT_ENCODER_ID, device)
        grey, _ = dataset_io.load_network_input(path, short_side, camera)
        descriptors, pixels = keypoints(encoder, grey, device, subpixel=True)
        scale = np.array([camera.width / grey.shape[1], camera.height / grey.shape[0]])
        return {"pixels": pixels * scale, "descriptors": descriptors.numpy()}

    features = []
    for path, camera in zip(paths, cameras):
        key = cache.image_key(path, short_side, camera)
        found = cache.keypoints(key, lambda: detect(path, camera))
        features.append(ImageFeatures(found["pixels"], torch.from_numpy(found["descriptors"]), key))
    return features


def to_reference(pixels: np.ndarray, camera: Intrinsics, reference: Intrinsics) -> np.ndarray:
    """Pixels of `camera` as a square-pixel camera with the reference's fx and principal point would see the same
    rays: every image then shares one focal and one centre, which the adjustment below assumes."""
    normalised = (pixels - [camera.cx, camera.cy]) / [camera.fx, camera.fy]
    return normalised * reference.fx + [reference.cx, reference.cy]


def from_reference(pixels: np.ndarray, camera: Intrinsics, reference: Intrinsics) -> np.ndarray:
    """Inverse of to_reference: reference pixels back in the camera's own."""
    normalised = (pixels - [reference.cx, reference.cy]) / reference.fx
    return normalised * [camera.fx, camera.fy] + [camera.cx, camera.cy]


@dataclass
class DepthMaps:
    """Sensor depth of the adjusted images (RGB-D), which fixes the adjustment's scale."""
    maps: list[np.ndarray]       # per adjusted camera: metres, 0 where unknown
    cameras: list[Intrinsics]    # the images' own cameras
    reference: Intrinsics        # the camera whose pixels the tracks are in

    def at(self, camera: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """Measured depth at observations (camera index, reference pixels); 0 where unknown."""
        depth = np.zeros(len(camera))
        for c in np.unique(camera):
            mine = np.flatnonzero(camera == c)
            own, values = self.cameras[c], self.maps[c]
            xy = from_reference(pixels[mine], own, self.reference)
            u = np.floor(xy[:, 0] * values.shape[1] / own.width).astype(int)
            v = np.floor(xy[:, 1] * values.shape[0] / own.height).astype(int)
            inside = (u >= 0) & (u < values.shape[1]) & (v >= 0) & (v < values.shape[0])
            depth[mine[inside]] = values[v[inside], u[inside]]
        return depth


def load_depth_maps(pattern: str, entries: list[dataset_io.PoseEntry], used: list[int], cameras: list[Intrinsics],
                    reference: Intrinsics) -> DepthMaps:
    """The depth maps of the used entries: the depth files pair with the pose file's images in sorted order."""
    files = dataset_io.depth_files_of([entries[k].path for k in used], [e.path for e in entries], pattern,
                                      "from the pose file")
    return DepthMaps([dataset_io.load_depth_png(f) for f in files], cameras, reference)


def metric_scale(tracks: Tracks, points: np.ndarray, world_to_cam: np.ndarray, depth: DepthMaps) -> float | None:
    """The factor that brings the triangulated depths to the measured ones (median over the observations with
    a measurement; depth edges and outliers do not move a median), or None with too few measurements."""
    rotation = world_to_cam[tracks.camera, :3, :3]
    estimated = (np.einsum("mij,mj->mi", rotation, points[tracks.point]) + world_to_cam[tracks.camera, :3, 3])[:, 2]
    measured = depth.at(tracks.camera, tracks.pixels)
    valid = (measured > 0) & (estimated > 0)
    if valid.sum() < MIN_DEPTH_OBSERVATIONS:
        _log.warning("only %d track observations have a measured depth: the input's scale is kept", valid.sum())
        return None
    return float(np.median(measured[valid] / estimated[valid]))


def candidate_pairs(cam_to_world: np.ndarray, neighbours: int, max_angle_deg: float) -> list[tuple[int, int]]:
    """Each camera with its nearest cameras (centre distance) among those looking in a similar direction."""
    centres, axes = cam_to_world[:, :3, 3], cam_to_world[:, :3, 2]
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=2)
    similar = axes @ axes.T > np.cos(np.radians(max_angle_deg))
    pairs = set()
    for i in range(len(centres)):
        order = [j for j in np.argsort(distance[i]) if j != i and similar[i, j]]
        pairs.update((min(i, j), max(i, j)) for j in order[:neighbours])
    return sorted(pairs)


def verified_matches(a: ImageFeatures, b: ImageFeatures, accuracy_px: float, cache: FeatureCache | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Mutual-nearest-neighbour matches consistent with one fundamental matrix (no focal length needed); from the
    cache for a pair verified before at this threshold."""
    if cache is None:
        return _verify(a, b, accuracy_px)
    found = cache.matches(a.cache_key, b.cache_key, accuracy_px,
                          lambda: dict(zip(("first", "second"), _verify(a, b, accuracy_px))))
    return found["first"], found["second"]


def _verify(a: ImageFeatures, b: ImageFeatures, accuracy_px: float) -> tuple[np.ndarray, np.ndarray]:
    from feature_matching import fundamental_matrix, mutual_matches
    ia, ib = mutual_matches(a.descriptors, b.descriptors)
    if len(ia) < MIN_PAIR_MATCHES:
        return ia[:0], ib[:0]
    found = fundamental_matrix(a.pixels[ia], b.pixels[ib], accuracy_px)
    if found is None or found[1].sum() < MIN_PAIR_MATCHES:
        return ia[:0], ib[:0]
    inliers = found[1]
    return ia[inliers], ib[inliers]


def build_tracks(features: list[ImageFeatures], matches: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]
                 ) -> list[np.ndarray]:
    """Keypoints connected by matches, as arrays of global keypoint ids; a track that sees one image twice is
    contradictory and dropped."""
    offsets = np.cumsum([0] + [len(f.pixels) for f in features])
    first = np.concatenate([ia + offsets[i] for (i, _), (ia, _) in matches.items()])
    second = np.concatenate([ib + offsets[j] for (_, j), (_, ib) in matches.items()])
    graph = scipy.sparse.coo_matrix((np.ones(len(first)), (first, second)), shape=(offsets[-1], offsets[-1]))
    _, labels = connected_components(graph, directed=False)
    image_of = np.searchsorted(offsets, np.arange(offsets[-1]), side="right") - 1
    order = np.argsort(labels, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(labels[order])) + 1)
    return [g for g in groups if len(g) >= 2 and len(np.unique(image_of[g])) == len(g)]


def observations(tracks: list[np.ndarray], features: list[ImageFeatures]) -> Tracks:
    """Flatten the longest tracks into observation arrays."""
    offsets = np.cumsum([0] + [len(f.pixels) for f in features])
    all_pixels = np.concatenate([f.pixels for f in features])
    tracks = sorted(tracks, key=len, reverse=True)[:MAX_TRACK_POINTS]
    ids = np.concatenate(tracks)
    point = np.repeat(np.arange(len(tracks)), [len(t) for t in tracks])
    camera = np.searchsorted(offsets, ids, side="right") - 1
    return Tracks(camera, point, all_pixels[ids], len(tracks))


# ----------------------------------------------------------------------------------------------------------------
# Geometry

def rays(tracks: Tracks, world_to_cam: np.ndarray, focal: float, centre: np.ndarray) -> tuple[np.ndarray, ...]:
    """Ray origins (camera centres) and world-space unit directions of every observation."""
    rotation = world_to_cam[tracks.camera, :3, :3]
    local = np.column_stack([(tracks.pixels - centre) / focal, np.ones(len(tracks.pixels))])
    directions = np.einsum("mji,mj->mi", rotation, local)  # R^T d
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    origins = -np.einsum("mji,mj->mi", rotation, world_to_cam[tracks.camera, :3, 3])
    return origins, directions


def triangulate(tracks: Tracks, world_to_cam: np.ndarray, focal: float, centre: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares intersection of each track's rays, and whether it is usable (in front of every camera that
    sees it, with enough parallax)."""
    origins, directions = rays(tracks, world_to_cam, focal, centre)
    projector = np.eye(3) - directions[:, :, None] * directions[:, None, :]  # removes the along-ray component
    lhs = np.zeros((tracks.count, 3, 3))
    rhs = np.zeros((tracks.count, 3))
    np.add.at(lhs, tracks.point, projector)
    np.add.at(rhs, tracks.point, np.einsum("mij,mj->mi", projector, origins))
    conditioned = np.linalg.cond(lhs) < 1e8
    lhs[~conditioned] = np.eye(3)
    points = np.linalg.solve(lhs, rhs[..., None])[..., 0]
    to_point = points[tracks.point] - origins
    in_front = np.ones(tracks.count, bool)
    np.logical_and.at(in_front, tracks.point, (to_point * directions).sum(1) > 0)
    # Parallax: the widest angle between a track's rays and their mean direction, doubled.
    mean = np.zeros((tracks.count, 3))
    np.add.at(mean, tracks.point, directions)
    mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    cosine = np.full(tracks.count, 1.0)
    np.minimum.at(cosine, tracks.point, (directions * mean[tracks.point]).sum(1))
    parallax = 2 * np.degrees(np.arccos(np.clip(cosine, -1, 1)))
    return points, conditioned & in_front & (parallax > MIN_PARALLAX_DEG)


def project(rotvecs: np.ndarray, translations: np.ndarray, points: np.ndarray, focal: float, centre: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of points (one per observation) in cameras given as world-to-camera rotation vectors and
    translations; also the camera-space points."""
    in_camera = Rotation.from_rotvec(rotvecs).apply(points) + translations
    return project_pinhole(in_camera, focal, centre), in_camera


class Problem:
    """Parameter vector [free cameras (rotation vector, translation) | points | focal?] and its residuals."""

    def __init__(self, tracks: Tracks, world_to_cam: np.ndarray, fixed_camera: int, centre: np.ndarray,
                 refine_focal: bool, focal: float, refine_centre: bool = False):
        self.tracks, self.centre, self.refine_focal, self.focal = tracks, centre, refine_focal, focal
        self.refine_centre = refine_centre
        self.rotvecs = Rotation.from_matrix(world_to_cam[:, :3, :3]).as_rotvec()
        self.translations = world_to_cam[:, :3, 3].copy()
        cameras = len(world_to_cam)
        # Column of each camera's first parameter; the fixed camera has none (-1).
        self.camera_column = np.full(cameras, -1)
        free = [c for c in range(cameras) if c != fixed_camera]
        self.camera_column[free] = 6 * np.arange(len(free))
        self.point_column = 6 * len(free)
        self.focal_column = self.point_column + 3 * tracks.count

    def pack(self, points: np.ndarray) -> np.ndarray:
        free = self.camera_column >= 0
        cameras = np.hstack([self.rotvecs[free], self.translations[free]]).ravel()
        return np.concatenate([cameras, points.ravel(), [self.focal] if self.refine_focal else [],
                               self.centre if self.refine_centre else []])

    @property
    def centre_column(self) -> int:
        return self.focal_column + int(self.refine_focal)

    def unpack(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        rotvecs, translations = self.rotvecs.copy(), self.translations.copy()
        free = self.camera_column >= 0
        cameras = x[:self.point_column].reshape(-1, 6)
        rotvecs[free], translations[free] = cameras[:, :3], cameras[:, 3:]
        points = x[self.point_column:self.focal_column].reshape(-1, 3)
        focal = x[self.focal_column] if self.refine_focal else self.focal
        return rotvecs, translations, points, focal

    def centre_of(self, x: np.ndarray) -> np.ndarray:
        return x[self.centre_column:self.centre_column + 2] if self.refine_centre else self.centre

    def residuals(self, x: np.ndarray) -> np.ndarray:
        rotvecs, translations, points, focal = self.unpack(x)
        t = self.tracks
        pixels, _ = project(rotvecs[t.camera], translations[t.camera], points[t.point], focal, self.centre_of(x))
        return (pixels - t.pixels).ravel()

    def jacobian(self, x: np.ndarray) -> scipy.sparse.csr_matrix:
        rotvecs, translations, points, focal = self.unpack(x)
        centre = self.centre_of(x)
        t = self.tracks
        rv, tr, pts = rotvecs[t.camera], translations[t.camera], points[t.point]
        _, in_camera = project(rv, tr, pts, focal, centre)
        inverse_z = 1 / in_camera[:, 2]
        # d pixel / d camera-space point: focal * [[1/z, 0, -x/z^2], [0, 1/z, -y/z^2]]
        d_camera = np.zeros((len(rv), 2, 3))
        d_camera[:, 0, 0] = d_camera[:, 1, 1] = focal * inverse_z
        d_camera[:, :, 2] = -focal * in_camera[:, :2] * inverse_z[:, None] ** 2
        d_point = d_camera @ Rotation.from_rotvec(rv).as_matrix()
        d_rotation = np.stack([self._rotation_derivative(rv, tr, pts, focal, centre, k) for k in range(3)], axis=2)
        free = self.camera_column[t.camera] >= 0
        rows = np.arange(len(rv))
        cam_blocks = np.concatenate([d_rotation, d_camera], axis=2)[free]
        cam_columns = self.camera_column[t.camera][free]
        entries = [(rows, d_point, self.point_column + 3 * t.point, 3), (rows[free], cam_blocks, cam_columns, 6)]
        if self.refine_focal:
            d_focal = (in_camera[:, :2] * inverse_z[:, None])[:, :, None]
            entries.append((rows, d_focal, np.full(len(rv), self.focal_column), 1))
        if self.refine_centre:  # d pixel / d principal point = identity
            entries.append((rows, np.tile(np.eye(2), (len(rv), 1, 1)), np.full(len(rv), self.centre_column), 2))
        data, row_ids, col_ids = [], [], []
        for obs, block, first, width in entries:
            data.append(block.ravel())
            row_ids.append(np.repeat(2 * obs[:, None] + np.arange(2), width, axis=1).ravel())
            col_ids.append(np.tile(first[:, None] + np.arange(width), (1, 2)).ravel())
        shape = (2 * len(rv), self.centre_column + 2 * int(self.refine_centre))
        return scipy.sparse.csr_matrix((np.concatenate(data), (np.concatenate(row_ids), np.concatenate(col_ids))),
                                       shape=shape)

    def _rotation_derivative(self, rv, tr, pts, focal, centre, k, step=1e-6) -> np.ndarray:
        """Central difference in one rotation-vector component (closed forms of the SO(3) Jacobian are longer)."""
        delta = np.zeros(3)
        delta[k] = step
        plus, _ = project(rv + delta, tr, pts, focal, centre)
        minus, _ = project(rv - delta, tr, pts, focal, centre)
        return (plus - minus) / (2 * step)

    def poses(self, x: np.ndarray) -> np.ndarray:
        rotvecs, translations, _, _ = self.unpack(x)
        world_to_cam = np.tile(np.eye(4), (len(rotvecs), 1, 1))
        world_to_cam[:, :3, :3] = Rotation.from_rotvec(rotvecs).as_matrix()
        world_to_cam[:, :3, 3] = translations
        return world_to_cam


# ----------------------------------------------------------------------------------------------------------------
# Adjustment

def keep_observations(tracks: Tracks, keep: np.ndarray) -> tuple[Tracks, np.ndarray]:
    """The kept observations, without points now seen fewer than twice, and the kept points' old ids (new ids
    are contiguous)."""
    camera, point, pixels = tracks.camera[keep], tracks.point[keep], tracks.pixels[keep]
    seen = np.bincount(point, minlength=tracks.count)
    enough = seen[point] >= 2
    ids, point = np.unique(point[enough], return_inverse=True)
    return Tracks(camera[enough], point, pixels[enough], len(ids)), ids


def reprojection_errors(problem: Problem, x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(problem.residuals(x).reshape(-1, 2), axis=1)


def robust_cost(errors: np.ndarray, f_scale: float) -> float:
    """Soft-L1 (pseudo-Huber) cost of per-observation errors: quadratic below f_scale, linear above."""
    return float((2 * f_scale ** 2 * (np.sqrt(1 + (errors / f_scale) ** 2) - 1)).sum())


def levenberg_marquardt(problem: Problem, x: np.ndarray, f_scale: float, max_iterations: int,
                        tolerance: float = 1e-6) -> tuple[np.ndarray, int]:
    """Iteratively reweighted Levenberg-Marquardt (soft-L1 weights); each step eliminates the points (Schur
    complement) and solves the small dense camera system."""
    damping = 1e-4
    residuals = problem.residuals(x)
    errors = np.linalg.norm(residuals.reshape(-1, 2), axis=1)
    cost = robust_cost(errors, f_scale)
    for step in range(max_iterations):
        weights = np.repeat(1 / np.sqrt(1 + (errors / f_scale) ** 2), 2)
        normal = NormalEquations(problem, problem.jacobian(x), weights, residuals)
        while True:
            candidate = x + normal.solve(damping)
            candidate_residuals = problem.residuals(candidate)
            candidate_errors = np.linalg.norm(candidate_residuals.reshape(-1, 2), axis=1)
            new_cost = robust_cost(candidate_errors, f_scale)
            if np.isfinite(new_cost) and new_cost < cost:
                break
            damping *= 10
            if damping > 1e8:
                return x, step
        improvement = (cost - new_cost) / cost
        x, residuals, errors, cost = candidate, candidate_residuals, candidate_errors, new_cost
        damping = max(damping / 10, 1e-8)
        if improvement < tolerance:
            return x, step + 1
    return x, max_iterations


class NormalEquations:
    """J^T W J split into cameras (+ focal) c and points p: [[A, E], [E^T, B]], B block-diagonal (3 x 3 per point),
    so the points can be eliminated exactly and cheaply."""

    def __init__(self, problem: Problem, jacobian: scipy.sparse.csr_matrix, weights: np.ndarray,
                 residuals: np.ndarray):
        columns = jacobian.shape[1]
        point_columns = np.arange(problem.point_column, problem.focal_column)
        self.camera_columns = np.setdiff1d(np.arange(columns), point_columns)
        self.point_columns = point_columns
        jacobian = jacobian.tocsc()
        camera_part = jacobian[:, self.camera_columns]
        point_part = jacobian[:, point_columns]
        weighted_camera = camera_part.T.multiply(weights).tocsr()
        weighted_point = point_part.T.multiply(weights).tocsr()
        self.a = (weighted_camera @ camera_part).toarray()
        self.e = (weighted_camera @ point_part).tocsr()
        self.b = self._point_blocks(weighted_point, point_part)
        self.g_camera = weighted_camera @ residuals
        self.g_point = weighted_point @ residuals
        self.size = columns

    @staticmethod
    def _point_blocks(weighted_point, point_part) -> np.ndarray:
        product = (weighted_point @ point_part).tocoo()  # non-zero only inside each point's 3 x 3 block
        blocks = np.zeros((product.shape[0] // 3, 3, 3))
        blocks[product.row // 3, product.row % 3, product.col % 3] = product.data
        return blocks

    def solve(self, damping: float) -> np.ndarray:
        """The step minimising the damped quadratic model (Marquardt: damping scales the diagonal)."""
        a = self.a + np.diag(damping * np.diag(self.a) + 1e-12)
        b = self.b.copy()
        diagonal = np.arange(3)
        b[:, diagonal, diagonal] *= 1 + damping
        b[:, diagonal, diagonal] += 1e-12
        b_inverse = np.linalg.inv(b)
        points = len(b)
        b_inverse_sparse = scipy.sparse.bsr_matrix((b_inverse, np.arange(points), np.arange(points + 1)),
                                                   shape=(3 * points, 3 * points)).tocsr()
        e_b_inverse = self.e @ b_inverse_sparse
        schur = a - (e_b_inverse @ self.e.T).toarray()
        rhs = -self.g_camera + e_b_inverse @ self.g_point
        # With one camera fixed the scene's scale is still free; the damped diagonal keeps the system regular.
        camera_step = np.linalg.solve(schur, rhs)
        point_step = b_inverse_sparse @ (-self.g_point - self.e.T @ camera_step)
        step = np.zeros(self.size)
        step[self.camera_columns] = camera_step
        step[self.point_columns] = point_step
        return step


def adjust(world_to_cam: np.ndarray, focal: float, centre: np.ndarray, all_tracks: Tracks, refine_focal: bool,
           accuracy_px: float, max_iterations: int, refine_centre: bool = False, depth: DepthMaps | None = None
           ) -> tuple[np.ndarray, float, dict] | None:
    """Robust bundle adjustment in rounds of shrinking error scale. Errors start far above the keypoint accuracy
    (poses a few degrees off), so the loss scale follows the median error down: most observations keep pulling,
    and those far beyond the scale are left out of the next round. Between rounds, badly registered cameras
    are re-seated by PnP and the points are triangulated again. The result is in the input's frame, at the scale
    of `depth` when given; None when no camera sees enough points."""
    poses = world_to_cam.copy()
    fixed = int(np.argmax(np.bincount(all_tracks.camera, minlength=len(poses))))
    f_scale, stats = None, {"points": all_tracks.count, "observations": len(all_tracks.camera)}
    final_rounds = 0
    while True:
        points, usable = triangulate(all_tracks, poses, focal, centre)
        errors = observation_errors(all_tracks, poses, points, focal, centre)
        keep = usable[all_tracks.point]
        if f_scale is None:
            f_scale = max(starting_scale(errors[keep], all_tracks.camera[keep]), accuracy_px)
            stats["median_error_before"] = f_scale
        else:
            keep &= errors < 3 * f_scale
        # A camera in too few tracks would be placed by its outliers: it keeps its pose.
        seen = np.bincount(all_tracks.camera[keep], minlength=len(poses))
        tracks, ids = keep_observations(all_tracks, keep & (seen[all_tracks.camera] >= MIN_CAMERA_OBSERVATIONS))
        if not len(tracks.camera):
            # no camera sees enough triangulable points (a ring of 5 images at 3768 px did): nothing to adjust
            return None
        final = f_scale <= accuracy_px
        problem = Problem(tracks, poses, fixed, centre, refine_focal, focal, refine_centre)
        # Intermediate rounds only need to bring the errors down to the next scale.
        x, steps = levenberg_marquardt(problem, problem.pack(points[ids]), f_scale, max_iterations,
                                       1e-6 if final else 1e-4)
        round_errors = reprojection_errors(problem, x)
        _log.info("error scale %.1f px: median reprojection error %.2f px, %d steps", f_scale,
                  np.median(round_errors), steps)
        poses, focal, centre = problem.poses(x), float(problem.unpack(x)[3]), problem.centre_of(x).copy()
        final_rounds += final
        if final_rounds == MAX_FINAL_ROUNDS:
            break
        f_scale = max(accuracy_px, min(f_scale / 2, float(np.median(round_errors))))
        solved = np.full((all_tracks.count, 3), np.nan)
        solved[ids] = problem.unpack(x)[2]
        # Also after a final round: a few cameras far off barely move the median error, which can start at the
        # keypoint accuracy; one more round follows only when some camera was re-seated.
        poses, reseated = reseat_cameras(all_tracks, poses, solved, focal, centre, 3 * f_scale, fixed)
        if final and not reseated:
            break
    stats["median_error_after"] = float(np.median(round_errors))
    stats["inlier_observations"] = len(tracks.camera)
    stats["kept_fraction"] = kept_fraction(all_tracks.camera, keep, len(poses))
    stats["centre"] = centre
    scale = None if depth is None else metric_scale(tracks, problem.unpack(x)[2], poses, depth)
    if scale is not None:
        stats["metric_scale"] = scale
    return keep_input_frame(world_to_cam, poses, scale), focal, stats


def kept_fraction(camera: np.ndarray, keep: np.ndarray, count: int) -> np.ndarray:
    """Per camera, the share of its observations that the last round kept (NaN for a camera in no track)."""
    seen = np.bincount(camera, minlength=count).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(camera[keep], minlength=count) / seen


def starting_scale(errors: np.ndarray, camera: np.ndarray) -> float:
    """The loss scale of the first round: a high percentile of the errors of the worst camera. Not the median of
    all observations, where a few cameras far off vanish, and a loss at the keypoint accuracy would leave them
    where they are. Nor a camera's median: a part of the reconstruction registered rigidly off fits its own
    tracks, and only the minority of its observations that link it to the rest are off (fox, measured: 11
    images 2.2 deg off together stayed there at the median's scale, whose next round drops the links as
    outliers, and came within 0.5 deg at the 90th percentile's)."""
    return max(float(np.percentile(errors[camera == c], STARTING_SCALE_PERCENTILE)) for c in np.unique(camera))


def observation_errors(tracks: Tracks, world_to_cam: np.ndarray, points: np.ndarray, focal: float,
                       centre: np.ndarray) -> np.ndarray:
    """Reprojection error of every observation (NaN where its point is NaN)."""
    rotation = world_to_cam[tracks.camera, :3, :3]
    in_camera = np.einsum("mij,mj->mi", rotation, points[tracks.point]) + world_to_cam[tracks.camera, :3, 3]
    return np.linalg.norm(project_pinhole(in_camera, focal, centre) - tracks.pixels, axis=1)


def reseat_cameras(tracks: Tracks, world_to_cam: np.ndarray, points: np.ndarray, focal: float, centre: np.ndarray,
                   threshold_px: float, fixed: int) -> tuple[np.ndarray, int]:
    """Cameras that agree with fewer than half of their points (registered far off, beyond what the adjustment
    pulls back) placed again by RANSAC PnP, when that agrees with at least twice as many points; and how many
    were. The PnP points are triangulated from the agreeing cameras alone: a few neighbouring cameras far off
    bend the points they share, and PnP on bent points cannot find the true pose."""
    errors = observation_errors(tracks, world_to_cam, points, focal, centre)
    known = np.isfinite(points[tracks.point]).all(axis=1)
    count = len(world_to_cam)
    seen = np.bincount(tracks.camera[known], minlength=count)
    agreeing = np.bincount(tracks.camera[known & (errors < threshold_px)], minlength=count)
    suspect = (agreeing < seen / 2) & (seen >= MIN_CAMERA_OBSERVATIONS)
    suspect[fixed] = False
    if not suspect.any():
        return world_to_cam, 0
    trusted, ids = keep_observations(tracks, ~suspect[tracks.camera])
    trusted_points = np.full((tracks.count, 3), np.nan)
    triangulated, usable = triangulate(trusted, world_to_cam, focal, centre)
    trusted_points[ids[usable]] = triangulated[usable]
    result, reseated = world_to_cam.copy(), 0
    for camera in np.flatnonzero(suspect):
        pose = pnp_pose(tracks, trusted_points, camera, world_to_cam[camera], focal, centre, threshold_px)
        if pose is not None:
            result[camera] = pose
            reseated += 1
    return result, reseated


def pnp_pose(tracks: Tracks, points: np.ndarray, camera: int, world_to_cam: np.ndarray, focal: float,
             centre: np.ndarray, threshold_px: float) -> np.ndarray | None:
    """The camera's pose by RANSAC PnP on its known points, when that agrees with at least twice as many of them
    as its current pose."""
    own = own_observations(tracks, points, camera)
    if len(own.point) < MIN_CAMERA_OBSERVATIONS:
        return None
    agreeing = agreeing_count(own, world_to_cam, points, focal, centre, threshold_px)
    pose, inliers = ransac_pnp(points[own.point], own.pixels, focal, centre, threshold_px)
    if pose is None or len(inliers) <= max(2 * agreeing, MIN_CAMERA_OBSERVATIONS):
        return None
    _log.info("camera %d re-seated by PnP: %d -> %d of %d points agree", camera, agreeing, len(inliers),
              len(own.point))
    return pose


def own_observations(tracks: Tracks, points: np.ndarray, camera: int) -> Tracks:
    """The camera's observations of known (finite) points, as tracks of a single camera (index 0)."""
    mine = (tracks.camera == camera) & np.isfinite(points[tracks.point]).all(axis=1)
    return Tracks(np.zeros(int(mine.sum()), int), tracks.point[mine], tracks.pixels[mine], tracks.count)


def agreeing_count(own: Tracks, world_to_cam: np.ndarray, points: np.ndarray, focal: float, centre: np.ndarray,
                   threshold_px: float) -> int:
    """How many of one camera's observations (own_observations) land within `threshold_px` at this pose."""
    return int((observation_errors(own, world_to_cam[None], points, focal, centre) < threshold_px).sum())


def ransac_pnp(points: np.ndarray, pixels: np.ndarray, focal: float, centre: np.ndarray, threshold_px: float,
               refine: bool = False) -> tuple[np.ndarray | None, np.ndarray]:
    """World-to-camera pose by RANSAC PnP (SQPnP minimal solver) and the indices of its inliers; `refine`: then
    least squares (Levenberg-Marquardt) on the inliers. (None, empty) when RANSAC finds nothing."""
    camera_matrix = np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1]])
    try:
        found, rotation, translation, inliers = cv2.solvePnPRansac(
            points, pixels, camera_matrix, None, iterationsCount=1000, reprojectionError=threshold_px,
            flags=cv2.SOLVEPNP_SQPNP)
    except cv2.error:  # SQPnP refuses points that barely spread (the ring's seed structure did): no pose from them
        return None, np.zeros(0, int)
    if not found or inliers is None:
        return None, np.zeros(0, int)
    inliers = inliers.ravel()
    if refine and len(inliers) >= 6:
        rotation, translation = cv2.solvePnPRefineLM(points[inliers], pixels[inliers], camera_matrix, None,
                                                     rotation, translation)
    pose = np.eye(4)
    pose[:3, :3] = cv2.Rodrigues(rotation)[0]
    pose[:3, 3] = translation.ravel()
    return pose, inliers


def keep_input_frame(before: np.ndarray, after: np.ndarray, scale: float | None = None) -> np.ndarray:
    """The adjusted world-to-camera poses moved by the similarity that best maps them onto the input poses, so
    that the result stays in the input's frame on average (one camera held fixed during the solve would carry
    its own registration error into every pose). Cameras whose orientation the adjustment changed far more than
    most (re-seated, bent) do not count. `scale`: the similarity's scale when known otherwise (metric depth)."""
    rotations_in, centres_in = camera_frames(before)
    rotations_out, centres_out = camera_frames(after)
    offsets = rotations_in @ rotations_out.transpose(0, 2, 1)
    used = np.ones(len(before), bool)
    for _ in range(2):
        rotation = dataset_io.nearest_rotation(offsets[used].sum(axis=0))
        angles = rotation_angle_deg(offsets @ rotation.T)
        used = angles <= max(3 * np.median(angles), FRAME_FIT_MIN_ANGLE_DEG)
    mean_in, mean_out = centres_in[used].mean(axis=0), centres_out[used].mean(axis=0)
    if scale is None:
        spread_out = np.linalg.norm(centres_out[used] - mean_out, axis=1).sum()
        scale = np.linalg.norm(centres_in[used] - mean_in, axis=1).sum() / spread_out if spread_out > 1e-12 else 1.0
    centres = (scale * (centres_out - mean_out)) @ rotation.T + mean_in
    result = after.copy()
    result[:, :3, :3] = after[:, :3, :3] @ rotation.T
    result[:, :3, 3] = -np.einsum("nij,nj->ni", result[:, :3, :3], centres)
    return result


def camera_frames(world_to_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world rotations and camera centres of world-to-camera poses."""
    rotations = world_to_cam[:, :3, :3].transpose(0, 2, 1)
    return rotations, -np.einsum("nij,nj->ni", rotations, world_to_cam[:, :3, 3])


def match_images(features: list[ImageFeatures], pairs: list[tuple[int, int]], accuracy_px: float,
                 cache: FeatureCache | None = None) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Verified matches of every pair (empty arrays for a pair that failed verification)."""
    return {(i, j): verified_matches(features[i], features[j], accuracy_px, cache)
            for i, j in progress_bar(pairs, desc="matching image pairs", leave=False)}


def bundle_adjust(entries: list[dataset_io.PoseEntry], config: BundleAdjustConfig, device,
                  features_of: list | None = None, cameras: list[Intrinsics] | None = None
                  ) -> tuple[list[dataset_io.PoseEntry], dict]:
    """Adjusted copies of the entries (confident ones move; every camera's focal changes by the same factor) and
    statistics, with the adjusted cameras under "cameras" and per entry the share of its feature observations that
    the adjustment kept under "kept_fraction" (NaN where not adjusted). `cameras`: one per entry (default: from
    the calibration file and the pose file); `features_of`: extract_features of every entry's image at
    config.image_resolution with those cameras, when the caller has them."""
    used = [k for k, e in enumerate(entries) if in_mapping_set(e.confidence, config.confidence_threshold)]
    if len(used) < 2:
        raise UserError(f"{config.input_poses}: {len(used)} image(s) with confidence >= "
                        f"{config.confidence_threshold:g}; bundle adjustment needs 2")
    paths = [entries[k].path for k in used]
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"{config.input_poses}: image {path} not found (paths are read from the pose file)")
    cameras = cameras or dataset_io.entry_cameras(entries, config.calibration_file, config.input_poses)
    used_cameras = [cameras[k] for k in used]
    reference = used_cameras[0]
    focal, centre = reference.fx, np.array([reference.cx, reference.cy])
    world_to_cam = np.stack([entries[k].world_to_cam for k in used])
    cache = FeatureCache(config.feature_cache)
    own = [features_of[k] for k in used] if features_of is not None else \
        extract_features(paths, config.image_resolution, device, used_cameras, cache)
    from feature_matching import KEYPOINT_ACCURACY_PX  # at network resolution
    accuracy = KEYPOINT_ACCURACY_PX * min(reference.width, reference.height) / config.image_resolution

    def match(pairs: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
        return match_images(own, pairs, accuracy, cache)  # in each image's own pixels: cacheable

    features = [ImageFeatures(to_reference(f.pixels, c, reference), f.descriptors)
                for f, c in zip(own, used_cameras)]
    depth = None if config.depth_files is None else \
        load_depth_maps(config.depth_files, entries, used, used_cameras, reference)
    found = adjust_with_pair_passes(world_to_cam, focal, centre, features, config, accuracy, match, depth)
    if config.feature_cache is not None:
        _log.info(cache.summary())
    if found is None:
        _log.warning("too few feature tracks to adjust; poses are copied unchanged")
        return entries, {"adjusted": False, "cameras": cameras}
    adjusted, new_focal, stats = found
    shift = (stats.pop("centre") - centre) / new_focal  # in normalised coordinates, the same for every camera
    new_cameras = [moved_camera(c, new_focal / focal, shift) for c in cameras]
    result = [dataset_io.PoseEntry(e.path, e.world_to_cam, c.fx, e.confidence) for e, c in zip(entries, new_cameras)]
    for k, pose in zip(used, adjusted):
        result[k].world_to_cam = pose
    stats["cameras"] = new_cameras
    kept = np.full(len(entries), np.nan)
    kept[used] = stats["kept_fraction"]  # per used camera -> per entry
    stats["kept_fraction"] = kept
    return result, {"adjusted": True, "focal_before": focal, "focal_after": new_focal, **stats}


def adjust_with_pair_passes(world_to_cam: np.ndarray, focal: float, centre: np.ndarray,
                            features: list[ImageFeatures], config: BundleAdjustConfig, accuracy: float,
                            match: Callable[[list[tuple[int, int]]], dict], depth: DepthMaps | None = None
                            ) -> tuple[np.ndarray, float, dict] | None:
    """Match the nearest cameras as the poses place them and adjust; then choose the pairs again from the adjusted
    poses and adjust once more while that brings new pairs. A camera registered far off is first matched with the
    wrong neighbours and can settle in a bent corner of the scene; its true neighbours pull it out. `match`: the
    verified matches of a list of pairs; `depth`: sensor depth that sets the scale. None when the first pass has too
    few tracks."""
    matched: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # every pair tried; empty when rejected
    poses, stats = world_to_cam, None
    for passes in range(1, MAX_PAIR_PASSES + 1):
        pairs = candidate_pairs(np.stack([dataset_io.invert_pose(p) for p in poses]), config.neighbours,
                                config.max_view_angle)
        new = [pair for pair in pairs if pair not in matched]
        if stats is not None and not new:
            break
        matched.update(match(new))
        matches = {pair: matched[pair] for pair in pairs if len(matched[pair][0])}
        _log.info("pass %d: %d of %d image pairs verified (%d newly matched)", passes, len(matches), len(pairs),
                  len(new))
        tracks = observations(build_tracks(features, matches), features) if matches else None
        if tracks is None or tracks.count < MIN_PAIR_MATCHES:
            break
        adjusted = adjust(poses, focal, centre, tracks, config.refine_focal, accuracy, config.max_iterations,
                          config.refine_principal_point, depth)
        if adjusted is None:
            break
        poses, focal, pass_stats = adjusted
        centre = pass_stats["centre"]
        first_error = pass_stats["median_error_before"] if stats is None else stats["median_error_before"]
        stats = {**pass_stats, "median_error_before": first_error, "pairs": len(matches), "passes": passes}
    return None if stats is None else (poses, focal, stats)


def kept_fractions_beside(pose_file: Path | str) -> Path:
    """Where bundle_adjust.py puts the share of each image's observations it kept (read by verify_poses.py)."""
    return Path(pose_file).with_suffix(".kept.json")


def write_kept_fractions(pose_file: Path | str, entries: list[dataset_io.PoseEntry], kept: np.ndarray) -> None:
    images = {e.path: None if np.isnan(k) else round(float(k), 4) for e, k in zip(entries, kept)}
    atomic_write_text(kept_fractions_beside(pose_file), json.dumps(images, indent=1))


def read_kept_fractions(pose_file: Path | str, entries: list[dataset_io.PoseEntry]) -> np.ndarray | None:
    """The kept shares of the entries' images from the file beside the pose file (NaN for an image it lacks), or
    None without that file."""
    path = kept_fractions_beside(pose_file)
    if not path.is_file():
        return None
    try:
        images = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: unreadable ({error})") from error
    return np.array([np.nan if images.get(e.path) is None else float(images[e.path]) for e in entries])


def bounded_focal_adjustment(entries: list[dataset_io.PoseEntry], config: BundleAdjustConfig, device
                             ) -> tuple[list[dataset_io.PoseEntry], dict]:
    """bundle_adjust, repeated with the focal length held when the free focal leaves a field of view narrower than
    config.min_field_of_view, or changes by more than config.max_focal_change; in the second case the free result
    stands after all when the held one fits the tracks clearly worse (focal_change_supported)."""
    if config.refine_focal and config.max_focal_change > 1 and config.feature_cache is None:
        # a repeat reads the keypoints and matches of the first adjustment instead of computing them again (one
        # refused for its field of view, rare, computes them again)
        with tempfile.TemporaryDirectory(prefix="bundle_adjust_features_") as folder:
            return bounded_focal_adjustment(entries, replace(config, feature_cache=folder), device)
    free, free_stats = bundle_adjust(entries, config, device)
    if not (free_stats["adjusted"] and config.refine_focal):
        return free, free_stats
    before, after = free_stats["focal_before"], free_stats["focal_after"]
    if not plausible_focal(free_stats["cameras"], config.min_field_of_view):
        _log.warning("refused the focal change %.1f -> %.1f px: it leaves a diagonal field of view of %.3g deg, "
                     "narrower than --min_field_of_view %g (how a focal runs away on nearly affine views); "
                     "adjusting again with it held", before, after, narrowest_field_of_view(free_stats["cameras"]),
                     config.min_field_of_view)
        return bundle_adjust(entries, replace(config, refine_focal=False), device)
    if not (config.max_focal_change > 1 and focal_changed(before, after, config.max_focal_change)):
        return free, free_stats
    _log.info("the focal length would change %.1f -> %.1f px, more than a factor %g (--max_focal_change): "
              "adjusting again with it held to see whether the tracks pin the new one down", before, after,
              config.max_focal_change)
    held, held_stats = bundle_adjust(entries, replace(config, refine_focal=False), device)
    ratio = error_ratio(held_stats, free_stats)
    if focal_change_supported(ratio, config.focal_change_support):
        _log.info("kept the focal change %.1f -> %.1f px: with it held the median reprojection error is %.2f times "
                  "the free one's (--focal_change_support %g)", before, after, ratio, config.focal_change_support)
        return free, free_stats
    _log.warning("refused the focal change %.1f -> %.1f px: with it held the median reprojection error is only "
                 "%.2f times the free one's (--focal_change_support %g), so the tracks do not pin it down",
                 before, after, ratio, config.focal_change_support)
    return held, held_stats


def narrowest_field_of_view(cameras: list[Intrinsics]) -> float:
    """The smallest diagonal field of view of the cameras (deg)."""
    return min(diagonal_field_of_view_deg(c) for c in cameras)


def plausible_focal(cameras: list[Intrinsics], min_field_of_view: float) -> bool:
    """Whether every camera sees at least `min_field_of_view` (deg, diagonal)."""
    return narrowest_field_of_view(cameras) >= min_field_of_view


def error_ratio(held_stats: dict, free_stats: dict) -> float:
    """Median reprojection error after the adjustment with the focal held over that with it free (NaN, which
    supports nothing, when the held one did not adjust)."""
    if not held_stats["adjusted"]:
        return math.nan
    return held_stats["median_error_after"] / max(free_stats["median_error_after"], 1e-12)


def focal_change_supported(ratio: float, support: float) -> bool:
    """Whether holding the focal costs enough fit that the free focal is what the tracks say. Measured (stop 33):
    a narrow-field ring whose focal no adjustment pins down gives 0.97-1.03 for changes up to 2.8x; temple's
    adjustments, which move a focal 40 % too short to 4 % of the truth, give 1.12-1.14."""
    return support > 0 and ratio >= support


def focal_probe(entries: list[dataset_io.PoseEntry], config: BundleAdjustConfig, device,
                features_of: list | None = None, cameras: list[Intrinsics] | None = None,
                factor: float = FOCAL_PROBE_FACTOR) -> dict:
    """Whether the tracks fit another focal length far better than the poses' own f. Poses mapped with a focal
    far off fit their own tracks, and an adjustment started there stays (the distorted reconstruction is a local
    minimum), so this adjusts with f held and then twice with the focal free, started at f / factor and at
    f * factor. Returns {"focal": f, "probes": [(focal where a free start ended, median error at f / there), ...],
    "better": the (focal, ratio) of the probe with the highest ratio, if at least config.focal_change_support
    and its focal plausible (config.min_field_of_view); else None}."""
    cameras = cameras or dataset_io.entry_cameras(entries, config.calibration_file, config.input_poses)
    _, own = bundle_adjust(entries, replace(config, refine_focal=False), device, features_of, cameras)
    focal = cameras[0].fx
    result = {"focal": focal, "probes": [], "better": None}
    if not own["adjusted"]:
        return result
    candidates = []  # the probes whose focal did not run away (config.min_field_of_view)
    for scale in (1 / factor, factor):
        started = [moved_camera(c, scale, np.zeros(2)) for c in cameras]
        _, probe = bundle_adjust(entries, replace(config, refine_focal=True), device, features_of, started)
        if probe["adjusted"]:
            result["probes"].append((probe["focal_after"], error_ratio(own, probe)))
            if plausible_focal(probe["cameras"], config.min_field_of_view):
                candidates.append(result["probes"][-1])
    supported = [p for p in candidates if focal_change_supported(p[1], config.focal_change_support)]
    result["better"] = max(supported, key=lambda p: p[1], default=None)
    return result


def moved_camera(camera: Intrinsics, focal_scale: float, shift: np.ndarray) -> Intrinsics:
    """A camera after the adjustment: focal scaled; principal point shifted by `shift` (normalised units of the
    reference camera, which equal this camera's own up to its focal)."""
    fx, fy = camera.fx * focal_scale, camera.fy * focal_scale
    return replace(camera, fx=fx, fy=fy, cx=camera.cx + shift[0] * fx, cy=camera.cy + shift[1] * fy)


def validate(args) -> None:
    for flag, value, least in (("--neighbours", args.neighbours, 1), ("--image_resolution", args.image_resolution, 32),
                               ("--max_iterations", args.max_iterations, 1)):
        if value < least:
            raise UserError(f"{flag} must be at least {least}, got {value}")
    if args.max_focal_change != 0 and args.max_focal_change <= 1:
        raise UserError(f"--max_focal_change must be 0 (no limit) or above 1, got {args.max_focal_change:g}")
    if args.focal_change_support != 0 and args.focal_change_support < 1:
        raise UserError(f"--focal_change_support must be 0 (refuse every change beyond --max_focal_change) or at "
                        f"least 1, got {args.focal_change_support:g}")
    if not 0 <= args.min_field_of_view < 180:
        raise UserError(f"--min_field_of_view must be in [0, 180) degrees, got {args.min_field_of_view:g}")
    if not 0 < args.max_view_angle <= 180:
        raise UserError(f"--max_view_angle must be in (0, 180] degrees, got {args.max_view_angle}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    validate(args)
    device = select_device(args.device)
    start = time.time()
    entries = dataset_io.read_ace_pose_file(args.input_poses)
    _log.info("adjusting the poses of %s (%d images)", args.input_poses, len(entries))
    adjusted, stats = bounded_focal_adjustment(entries, config_from_args(BundleAdjustConfig, args), device)
    dataset_io.write_ace_pose_file(args.output_poses, adjusted)
    dataset_io.write_cameras_beside(args.output_poses, [e.path for e in adjusted], stats["cameras"])
    if not stats["adjusted"]:  # an earlier run's shares would describe other poses
        kept_fractions_beside(args.output_poses).unlink(missing_ok=True)
        return
    write_kept_fractions(args.output_poses, adjusted, stats["kept_fraction"])
    if "metric_scale" in stats:
        _log.info("scale from the depth maps: the input's distances times %.4f", stats["metric_scale"])
    _log.info("%d points, %d of %d observations kept; median reprojection error %.2f -> %.2f px; focal %.1f -> "
              "%.1f px; %.0f s; wrote %s", stats["points"], stats["inlier_observations"], stats["observations"],
              stats["median_error_before"], stats["median_error_after"], stats["focal_before"],
              stats["focal_after"], time.time() - start, args.output_poses)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
