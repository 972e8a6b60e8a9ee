"""Features of one image for matching, mutual nearest-neighbour matches between two images and their epipolar
verification: used by the two-view seed (two_view_seed.py), the bundle adjustment (bundle_adjust.py) and the focal
self-calibration (focal_estimation.py)."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from ace_network import cell_centres

MIN_MATCH_SIMILARITY = 0.8
MAX_DISTANCE_RATIO = 0.9
KEYPOINT_ACCURACY_PX = 1.0  # XFeat keypoints: about a pixel
CELL_ACCURACY_PX = 4.0      # dense cell centres (encoders without a detector): half a cell


def keypoints(encoder, grey: np.ndarray, device, subpixel: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """Unit descriptors and pixel positions: the encoder's keypoints if it has a detector (XFeat), else every
    output cell at its centre (accurate to CELL_ACCURACY_PX only)."""
    image = encoder.normalise(torch.from_numpy(grey)[None, None].to(device))
    with torch.no_grad():
        if encoder.spec.has_detector:
            positions, descriptors = encoder.detect(image, subpixel=subpixel)
        else:
            features = encoder(image)[0]
            channels, height, width = features.shape
            descriptors = torch.nn.functional.normalize(features.reshape(channels, -1).t().float(), dim=1)
            positions = cell_centres(height, width, device).reshape(2, -1).t()
    return descriptors.float().cpu(), positions.cpu().numpy().astype(np.float64)


def mutual_matches(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours that are also distinctive (ratio test: textureless cells match everything)."""
    similarity = a @ b.t()
    top2 = similarity.topk(2, dim=1)
    best_b = top2.indices[:, 0]
    best_a = similarity.argmax(dim=0)
    index_a = torch.arange(len(a))
    distance_best = (2 - 2 * top2.values[:, 0]).clamp(min=0).sqrt()
    distance_second = (2 - 2 * top2.values[:, 1]).clamp(min=0).sqrt()
    distinctive = distance_best < MAX_DISTANCE_RATIO * distance_second
    mutual = (best_a[best_b] == index_a) & (top2.values[:, 0] > MIN_MATCH_SIMILARITY) & distinctive
    return index_a[mutual].numpy(), best_b[mutual].numpy()


def fundamental_matrix(first: np.ndarray, second: np.ndarray, accuracy_px: float
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """MAGSAC fundamental matrix of matched pixels and its boolean inlier mask, or None where there is none.
    OpenCV's MAGSAC can fail an internal assertion on degenerate sets (the coarse, repeated positions of tiny
    images); that means no geometry, not an error of the run."""
    try:
        matrix, mask = cv2.findFundamentalMat(first, second, cv2.USAC_MAGSAC, accuracy_px, 0.9999)
    except cv2.error:
        return None
    if matrix is None or matrix.shape != (3, 3) or mask is None:
        return None
    return matrix, mask.ravel() > 0
