"""A multi-view term for ACE mapping (new; `--match_loss_weight`, 0 = the original's loss).

The reprojection loss ties each scene coordinate to the one image it was predicted from. A head that can tell the
mapping images apart by their features fits it for any poses, also for all cameras at one pose (the collapse
measured in the README), so the loss alone barely holds the cameras apart. This term adds what only the true
geometry satisfies: for XFeat keypoints matched between two mapping images (mutual nearest neighbours verified by
a fundamental matrix, so no pose is trusted), the head's scene coordinate at the keypoint in one image must
reproject onto its match in the other image, through the (refined) pose of that other image. Cameras stacked at
one pose violate it by the whole disparity of the match, the true poses not at all; its gradient reaches the
head and the pose refiner alike.

The features at a keypoint are the mapping encoder's dense features sampled bilinearly there (the head is applied
per cell, so it takes any feature vector)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ace_loss import reprojection_errors
from ace_util import OUTPUT_SUBSAMPLE, XFEAT_ENCODER_ID, progress_bar
from calibration import Intrinsics

_log = logging.getLogger(__name__)

MATCH_NEIGHBOURS = 8           # images matched to each image (nearest cameras of the input poses)
MATCH_MAX_VIEW_ANGLE = 60.0    # deg: only cameras looking in a similar direction are paired
MAX_MATCHES_PER_PAIR = 400     # bounded cost; the strongest pairs do not drown the weak ones


@dataclass
class MatchSet:
    """M matches between mapping images, both directions stored once (a -> b)."""
    features_a: torch.Tensor  # M x C mapping-encoder features at the keypoint in image a
    features_b: torch.Tensor
    pixels_a: torch.Tensor    # M x 2 keypoint relative to the principal point (network-resolution pixels)
    pixels_b: torch.Tensor
    focals_a: torch.Tensor    # M x 2 (fx, fy) at network resolution
    focals_b: torch.Tensor
    image_a: torch.Tensor     # M image indices
    image_b: torch.Tensor

    def __len__(self) -> int:
        return len(self.image_a)

    def to(self, device) -> "MatchSet":
        return MatchSet(*(getattr(self, k).to(device) for k in self.__dataclass_fields__))

    def take(self, indices: torch.Tensor) -> "MatchSet":
        return MatchSet(*(getattr(self, k)[indices] for k in self.__dataclass_fields__))


@dataclass
class _ImageKeypoints:
    pixels: np.ndarray            # N x 2 network-resolution pixels
    descriptors: torch.Tensor     # N x 64 XFeat descriptors (unit length)
    features: torch.Tensor        # N x C mapping-encoder features at the keypoints
    camera: Intrinsics            # at network resolution


def sample_features(feature_map: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """C x H x W dense features (cell (x, y) at pixel (8x + 4, 8y + 4)) sampled bilinearly at N x 2 pixels -> N x C.
    Positions outside the outer cell centres take the border cells."""
    channels, height, width = feature_map.shape
    cells = (pixels - OUTPUT_SUBSAMPLE / 2) / OUTPUT_SUBSAMPLE
    size = torch.tensor([max(width - 1, 1), max(height - 1, 1)], dtype=cells.dtype, device=cells.device)
    grid = (2 * cells / size - 1).view(1, 1, -1, 2).to(feature_map.dtype)
    sampled = F.grid_sample(feature_map[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return sampled[0, :, 0].t()


@torch.no_grad()
def _image_keypoints(path: str, camera: Intrinsics, short_side: int, encoder, detector, device) -> _ImageKeypoints:
    import dataset_io
    from feature_matching import keypoints
    grey, _ = dataset_io.load_network_input(path, short_side, camera)
    descriptors, pixels = keypoints(detector, grey, device, subpixel=True)
    dense = encoder(encoder.normalise(torch.from_numpy(grey)[None, None].to(device)))[0].float()
    features = sample_features(dense, torch.from_numpy(pixels).float().to(device)).cpu()
    return _ImageKeypoints(pixels, descriptors, features, camera.scaled(grey.shape[1], grey.shape[0]))


def build_match_set(images: list[str], cameras: list[Intrinsics], cam_to_world: np.ndarray, encoder,
                    short_side: int, device, seed: int = 0) -> MatchSet | None:
    """Verified keypoint matches between each mapping image and its nearest cameras (by the input poses), with the
    mapping encoder's features at both ends; None when fewer than two images or no pair verifies."""
    if len(images) < 2:
        return None
    from ace_network import load_encoder
    from bundle_adjust import ImageFeatures, candidate_pairs, verified_matches
    from feature_matching import KEYPOINT_ACCURACY_PX
    detector = encoder if encoder.encoder_id == XFEAT_ENCODER_ID else load_encoder(XFEAT_ENCODER_ID, device)
    points = [_image_keypoints(p, c, short_side, encoder, detector, device)
              for p, c in zip(progress_bar(images, desc="keypoints for the match loss", leave=False), cameras)]
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {k: [] for k in MatchSet.__dataclass_fields__}
    pairs = candidate_pairs(cam_to_world, MATCH_NEIGHBOURS, MATCH_MAX_VIEW_ANGLE)
    verified = 0
    for i, j in pairs:
        a, b = points[i], points[j]
        ia, ib = verified_matches(ImageFeatures(a.pixels, a.descriptors), ImageFeatures(b.pixels, b.descriptors),
                                  KEYPOINT_ACCURACY_PX)
        if len(ia) == 0:
            continue
        verified += 1
        if len(ia) > MAX_MATCHES_PER_PAIR:
            keep = rng.choice(len(ia), MAX_MATCHES_PER_PAIR, replace=False)
            ia, ib = ia[keep], ib[keep]
        _append_pair(parts, a, b, i, j, ia, ib)
    if not verified:
        _log.warning("match loss: none of %d image pairs has verified matches; the term is off", len(pairs))
        return None
    matches = MatchSet(*(torch.cat(parts[k]) for k in MatchSet.__dataclass_fields__))
    _log.info("match loss: %d matches from %d of %d image pairs", len(matches), verified, len(pairs))
    return matches


def _append_pair(parts: dict, a: _ImageKeypoints, b: _ImageKeypoints, i: int, j: int, ia: np.ndarray,
                 ib: np.ndarray) -> None:
    count = len(ia)

    def relative(points: _ImageKeypoints, index: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(points.pixels[index] - [points.camera.cx, points.camera.cy]).float()

    def focals(points: _ImageKeypoints) -> torch.Tensor:
        return torch.tensor([points.camera.fx, points.camera.fy], dtype=torch.float32).expand(count, 2)

    parts["features_a"].append(a.features[ia])
    parts["features_b"].append(b.features[ib])
    parts["pixels_a"].append(relative(a, ia))
    parts["pixels_b"].append(relative(b, ib))
    parts["focals_a"].append(focals(a))
    parts["focals_b"].append(focals(b))
    parts["image_a"].append(torch.full((count,), i, dtype=torch.long))
    parts["image_b"].append(torch.full((count,), j, dtype=torch.long))


def transfer_errors(scene: torch.Tensor, world_to_cam: torch.Tensor, focals: torch.Tensor, pixels: torch.Tensor,
                    depth_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 pixel errors of scene points projected into other cameras (3 x 4 world-to-camera each) against the
    matched keypoints (relative to the principal point), and whether each point lies in front of that camera."""
    cam = (world_to_cam[:, :, :3] @ scene[:, :, None] + world_to_cam[:, :, 3:])[:, :, 0]
    return reprojection_errors(cam, focals, pixels, depth_min), cam[:, 2] > depth_min


def match_loss(predict, matches: MatchSet, poses_of, focal_scale: torch.Tensor, robust, depth_min: float
               ) -> tuple[torch.Tensor, float]:
    """Robust transfer error of a batch of matches, both directions: the point `predict` (features -> scene
    coordinates, fp32) gives at the keypoint of image a, seen in image b against its match there, and the other
    way; plus each point seen in its own image against its own keypoint. Points behind a camera get no loss (the
    main loss deals with them). Normalised by the number of transfers, so the own-view part is an addition.
    Also returns the fraction of transfers within 10 px.

    Why the own view: the reprojection term holds the head only at cell centres, and a keypoint's interpolated
    features are a vector the head may map elsewhere. Without it a point need only lie on the other camera's
    ray, which any relative pose allows; with it the point must lie on both rays, which only a relative pose
    that agrees with the match does (two-view triangulation, what bundle adjustment asks of a track)."""
    scene = predict(torch.cat([matches.features_a, matches.features_b]))
    count = len(matches)
    scene_a, scene_b = scene[:count], scene[count:]
    poses_a, poses_b = poses_of(matches.image_a), poses_of(matches.image_b)
    focals_a, focals_b = matches.focals_a * focal_scale, matches.focals_b * focal_scale
    errors_ab, ahead_ab = transfer_errors(scene_a, poses_b, focals_b, matches.pixels_b, depth_min)
    errors_ba, ahead_ba = transfer_errors(scene_b, poses_a, focals_a, matches.pixels_a, depth_min)
    errors_aa, ahead_aa = transfer_errors(scene_a, poses_a, focals_a, matches.pixels_a, depth_min)
    errors_bb, ahead_bb = transfer_errors(scene_b, poses_b, focals_b, matches.pixels_b, depth_min)
    transfers, ahead = torch.cat([errors_ab, errors_ba]), torch.cat([ahead_ab, ahead_ba])
    own, own_ahead = torch.cat([errors_aa, errors_bb]), torch.cat([ahead_aa, ahead_bb])
    loss = (robust(transfers[ahead]) + robust(own[own_ahead])) / max(1, len(transfers))
    return loss, float((transfers[ahead] < 10).float().sum() / max(1, len(transfers)))
