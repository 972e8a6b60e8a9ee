"""A first focal length from the images themselves (self-calibration), for ACE0's loop to start from.

Without a calibration file, EXIF or a user's number, the original starts from a guess (70 % of the image
diagonal) and leaves the focal to its refinement, which barely moves a wrong start while the poses are fixed
(README, "Reconstruction from scratch": fox 1542 -> 1516 px, true 1375.5). Here pairs of images are matched
(XFeat keypoints), a fundamental matrix F is fitted to each pair (MAGSAC, no focal needed), and the focal f is
the one for which E = K(f)^T F K(f) is most nearly an essential matrix, whose two non-zero singular values are
equal (Mendonca and Cipolla, CVPR 1999). The cost is summed over the pairs, weighted by their inliers, and
minimised over a log-spaced range around the guess.

Two views do not determine the focal when their optical axes meet (cameras on a ring, each aimed at the object's
centre, as temple's) or when the cameras are nearly affine (a narrow field of view on a distant object): the
cost is then flat. The estimate is refused (`FocalEstimate.determined` is False) and the caller keeps its guess:
the minimum must lie inside the search range and be clearly lower than the cost an octave to either side.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

import dataset_io
from calibration import Intrinsics
from feature_matching import KEYPOINT_ACCURACY_PX, fundamental_matrix, keypoints, mutual_matches

_log = logging.getLogger(__name__)

SEARCH_RANGE = (0.1, 20.0)      # candidates, as factors of the starting guess
SEARCH_STEPS = 1000             # log-spaced: 0.53 % between neighbours
CONTRAST_FACTOR = 2.0            # the cost is compared an octave to either side, at f / 2 and f * 2 ...
MIN_CONTRAST = 2.0              # ... and must be at least this many times the minimum there
MIN_INLIERS = 50                # a pair's fundamental matrix counts from this many inlier matches
MIN_PAIRS = 4
PAIR_STRIDES = (1, 2, 3)        # sorted order: collections are often sequences
MAX_PAIRS = 30


@dataclass(frozen=True)
class FocalEstimate:
    focal: float          # pixels, at the images' own size
    pairs: int            # pairs whose fundamental matrix entered the cost
    contrast: float       # lower of cost(f / 1.41) / cost(f) and cost(f * 1.41) / cost(f)
    determined: bool      # a clear minimum inside the search range


def essential_cost(F: np.ndarray, focal: float, cx: float, cy: float) -> float:
    """How far K^T F K is from an essential matrix: (s1 - s2) / (s1 + s2) of its singular values (0: exactly)."""
    K = np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])
    s = np.linalg.svd(K.T @ F @ K, compute_uv=False)
    return float((s[0] - s[1]) / (s[0] + s[1]))


def focal_from_fundamentals(fundamentals: list[np.ndarray], weights: list[float], guess: float, cx: float,
                            cy: float) -> FocalEstimate:
    """The focal (same pixel units as the F's) that makes the F's most nearly essential, searched around
    `guess`; F maps pixels of one image to epipolar lines in the other, both with principal point (cx, cy)."""
    candidates = guess * np.exp(np.linspace(np.log(SEARCH_RANGE[0]), np.log(SEARCH_RANGE[1]), SEARCH_STEPS))
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))

    def cost(focal: float) -> float:
        return float(sum(wi * essential_cost(F, focal, cx, cy) for F, wi in zip(fundamentals, w)))

    costs = np.array([cost(f) for f in candidates])
    best = int(np.argmin(costs))
    focal = _parabolic_minimum(candidates, costs, best)
    minimum = max(cost(focal), 1e-12)
    contrast = min(cost(focal / CONTRAST_FACTOR), cost(focal * CONTRAST_FACTOR)) / minimum
    inside = 0 < best < SEARCH_STEPS - 1 and \
        candidates[0] * CONTRAST_FACTOR <= focal <= candidates[-1] / CONTRAST_FACTOR
    return FocalEstimate(focal, len(fundamentals), float(contrast), bool(inside and contrast >= MIN_CONTRAST))


def _parabolic_minimum(candidates: np.ndarray, costs: np.ndarray, best: int) -> float:
    """The minimum of a parabola through the best grid point and its neighbours (in log focal)."""
    if best == 0 or best == len(costs) - 1:
        return float(candidates[best])
    x = np.log(candidates[best - 1:best + 2])
    y = costs[best - 1:best + 2]
    denominator = y[0] - 2 * y[1] + y[2]
    if denominator <= 0:
        return float(candidates[best])
    step = x[1] - x[0]
    offset = 0.5 * step * (y[0] - y[2]) / denominator
    return float(np.exp(x[1] + np.clip(offset, -step, step)))


def image_pairs(count: int) -> list[tuple[int, int]]:
    """Pairs of nearby images in sorted order, spread over the collection, at most MAX_PAIRS."""
    per_stride = max(1, MAX_PAIRS // len(PAIR_STRIDES))
    pairs = []
    for stride in PAIR_STRIDES:
        starts = np.unique(np.linspace(0, count - 1 - stride, per_stride).round().astype(int)) \
            if count > stride else []
        pairs += [(int(i), int(i) + stride) for i in starts]
    return pairs


def estimate_focal(images: list[str], cameras: list[Intrinsics], encoder, short_side: int, device
                   ) -> FocalEstimate | None:
    """Self-calibrated focal length of a collection whose images share one camera (cameras[0]'s size and
    principal point; its focal is the starting guess); None when too few pairs give a fundamental matrix."""
    camera = cameras[0]
    features = {}

    def features_of(index: int):
        if index not in features:
            grey, _ = dataset_io.load_network_input(images[index], short_side, cameras[index])
            features[index] = keypoints(encoder, grey, device), grey.shape
        return features[index]

    fundamentals, weights, shape = [], [], None
    for a, b in image_pairs(len(images)):
        ((descriptors_a, pixels_a), shape), ((descriptors_b, pixels_b), _) = features_of(a), features_of(b)
        ia, ib = mutual_matches(descriptors_a, descriptors_b)
        if len(ia) < MIN_INLIERS:
            continue
        found = fundamental_matrix(pixels_a[ia], pixels_b[ib], KEYPOINT_ACCURACY_PX)
        if found is None or int(found[1].sum()) < MIN_INLIERS:
            continue
        fundamentals.append(found[0])
        weights.append(float(found[1].sum()))
    if len(fundamentals) < MIN_PAIRS or shape is None:
        _log.info("focal self-calibration: %d of the pairs gave a fundamental matrix (at least %d needed)",
                  len(fundamentals), MIN_PAIRS)
        return None
    scaled = camera.scaled(shape[1], shape[0])  # keypoints are in network-input pixels
    estimate = focal_from_fundamentals(fundamentals, weights, scaled.fx, scaled.cx, scaled.cy)
    return replace(estimate, focal=estimate.focal * camera.fx / scaled.fx)
