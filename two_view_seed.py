"""Seed depth without a depth network: two-view geometry with the frozen encoder's features.

The seed image is matched to a few partner images (mutual nearest neighbours of XFeat keypoint descriptors, or
of the dense stride-8 features for encoders without a detector), the relative pose comes from a MAGSAC essential
matrix, matches are triangulated, and the sparse depths are
interpolated into a dense depth map. Its scale is arbitrary, so it is normalised to a median depth of
`median_depth` scene units; ACE0's reconstruction inherits that scale (as it inherits ZoeDepth's otherwise).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.interpolate import griddata

import dataset_io
from calibration import Intrinsics
from feature_matching import CELL_ACCURACY_PX, KEYPOINT_ACCURACY_PX, keypoints, mutual_matches

_log = logging.getLogger(__name__)

MIN_POINTS = 50
GOOD_PARALLAX_DEG = 4.0
MAX_PARTNERS = 8


def _triangulate(K: np.ndarray, R: np.ndarray, t: np.ndarray, x1: np.ndarray, x2: np.ndarray):
    """Points in the first camera, their reprojection errors (px, worst view) and parallax angles (deg)."""
    P1 = K @ np.hstack([np.eye(3), np.zeros((3, 1))])
    P2 = K @ np.hstack([R, t.reshape(3, 1)])
    homogeneous = cv2.triangulatePoints(P1, P2, x1.T, x2.T)
    points = (homogeneous[:3] / homogeneous[3]).T
    in_second = points @ R.T + t.reshape(1, 3)
    focals = np.diag(K)[:2]
    error1 = np.linalg.norm(points[:, :2] / points[:, 2:] * focals + K[:2, 2] - x1, axis=1)
    error2 = np.linalg.norm(in_second[:, :2] / in_second[:, 2:] * focals + K[:2, 2] - x2, axis=1)
    centre2 = -R.T @ t.reshape(3)
    ray1 = points / np.linalg.norm(points, axis=1, keepdims=True)
    ray2 = points - centre2
    ray2 /= np.linalg.norm(ray2, axis=1, keepdims=True)
    parallax = np.degrees(np.arccos(np.clip((ray1 * ray2).sum(axis=1), -1, 1)))
    valid = (points[:, 2] > 0) & (in_second[:, 2] > 0)
    return points, np.maximum(error1, error2), parallax, valid


def _partners(seed_index: int, count: int, rng: np.random.Generator) -> list[int]:
    """Neighbours in sorted order first (image collections are often sequences), then random others."""
    near = [seed_index + d for step in range(1, 4) for d in (step, -step) if 0 <= seed_index + d < count]
    others = [i for i in rng.permutation(count) if i != seed_index and i not in near]
    return (near + others)[:MAX_PARTNERS]


def relative_pose(x1: np.ndarray, x2: np.ndarray, K: np.ndarray, accuracy: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Rotation R, unit translation t (x2 ~ K [R|t] X for X in camera 1) and the inlier mask of matched pixels
    x1 <-> x2, or None when too few matches agree."""
    # MAGSAC: with narrow fields of view plain RANSAC's essential matrices were off by several degrees. It can
    # fail an internal assertion on degenerate sets (feature_matching.fundamental_matrix): then no geometry.
    try:
        E, mask = cv2.findEssentialMat(x1, x2, K, cv2.USAC_MAGSAC, 0.9999, accuracy)
        if E is None or E.shape[0] < 3:
            return None
        _, R, t, mask = cv2.recoverPose(E[:3], x1, x2, K, mask=mask)
    except cv2.error:
        return None
    inliers = mask.ravel() > 0
    return (R, t.ravel(), inliers) if inliers.sum() >= MIN_POINTS else None


def _network_matrix(camera: Intrinsics, grey: np.ndarray) -> np.ndarray:
    return camera.scaled(grey.shape[1], grey.shape[0]).matrix()


def two_view_depth(images: list[str], seed_index: int, cameras: list[Intrinsics], encoder, short_side: int, device,
                   median_depth: float) -> np.ndarray | None:
    """Dense depth (original image size) for images[seed_index], or None when no partner gives geometry."""
    grey, (width, height) = dataset_io.load_network_input(images[seed_index], short_side, cameras[seed_index])
    K = _network_matrix(cameras[seed_index], grey)
    seed_features, pixels = keypoints(encoder, grey, device)
    accuracy = KEYPOINT_ACCURACY_PX if encoder.spec.has_detector else CELL_ACCURACY_PX
    best: tuple[PairGeometry, int] | None = None
    for partner in _partners(seed_index, len(images), np.random.default_rng(seed_index)):
        partner_grey, _ = dataset_io.load_network_input(images[partner], short_side, cameras[partner])
        partner_features, partner_pixels = keypoints(encoder, partner_grey, device)
        # the partner's pixels as the seed's camera would see the same rays (both pinhole): one K for both
        to_seed = K @ np.linalg.inv(_network_matrix(cameras[partner], partner_grey))
        partner_pixels = partner_pixels @ to_seed[:2, :2].T + to_seed[:2, 2]
        ia, ib = mutual_matches(seed_features, partner_features)
        geometry = pair_geometry(pixels[ia], partner_pixels[ib], K, accuracy)
        if geometry is None:
            continue
        _log.info("seed %s + %s: %d matches, %d triangulated, median parallax %.1f deg", images[seed_index],
                  images[partner], len(ia), len(geometry.depths), geometry.parallax_deg)
        if best is None or geometry.score > best[0].score:
            best = (geometry, partner)
    if best is None:
        return None
    return _dense_depth(best[0].pixels, best[0].depths, grey.shape, (width, height), median_depth)


@dataclass
class PairGeometry:
    """Two views' relative pose (x2 ~ K [R|t] X for X in the first camera, |t| = 1) and the matches it
    triangulates well: their first-view pixels and depths, the median parallax, and a score that prefers many
    points, up to GOOD_PARALLAX_DEG of parallax."""
    R: np.ndarray
    t: np.ndarray
    pixels: np.ndarray
    depths: np.ndarray
    parallax_deg: float
    score: float


def pair_geometry(x1: np.ndarray, x2: np.ndarray, K: np.ndarray, accuracy: float) -> PairGeometry | None:
    """The relative pose of matched pixels x1 <-> x2 (one K for both) and its well triangulated matches, or None
    when fewer than MIN_POINTS of them are."""
    if len(x1) < MIN_POINTS:
        return None
    pose = relative_pose(x1, x2, K, accuracy)
    if pose is None:
        return None
    R, t, inliers = pose
    points, errors, parallax, valid = _triangulate(K, R, t, x1[inliers], x2[inliers])
    good = valid & (errors < 2 * accuracy) & (parallax > 0.5)
    if good.sum() < MIN_POINTS:
        return None
    median_parallax = float(np.median(parallax[good]))
    return PairGeometry(R, t, x1[inliers][good], points[good, 2], median_parallax,
                        float(good.sum() * min(1.0, median_parallax / GOOD_PARALLAX_DEG)))


def _dense_depth(pixels: np.ndarray, depths: np.ndarray, shape: tuple[int, int], original_size: tuple[int, int],
                 median_depth: float) -> np.ndarray:
    """Interpolate sparse depths over the image (linear inside their hull, nearest outside), rescaled."""
    depths = depths * (median_depth / float(np.median(depths)))
    v, u = np.mgrid[0:shape[0], 0:shape[1]]
    linear = griddata(pixels, depths, (u + 0.5, v + 0.5), method="linear")
    nearest = griddata(pixels, depths, (u + 0.5, v + 0.5), method="nearest")
    dense = np.where(np.isfinite(linear), linear, nearest).astype(np.float32)
    return cv2.resize(dense, original_size, interpolation=cv2.INTER_LINEAR)

