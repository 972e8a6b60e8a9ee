#!/usr/bin/env python3
"""New: check a reconstruction against independent feature matches and lower the confidence of images whose
pose disagrees with them.

A RANSAC inlier count only says that an image agrees with the scene coordinate head; with a head that fits wrong
poses (weak texture, a focal length far off) wrong images collect inliers too. This stage asks the images
themselves instead: XFeat matches between overlapping images, verified by a fundamental matrix (which needs
neither poses nor a focal length), must also agree with the relative pose and the focal length of the
reconstruction. An image whose pairs mostly disagree gets a confidence below --confidence_threshold, so every
tool that applies the original's threshold (mapping, exports, evaluation) leaves it out. The pose file format is
unchanged; a JSON report says per image why.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import dataset_io
from cli_common import (RELIABLE_CONFIDENCE, UserError, add_device_arg, atomic_write_text, make_parser, run_main,
                        select_device)

_log = logging.getLogger("verify_poses")

MIN_VERIFIED_MATCHES = 20      # fundamental-matrix inliers for a pair to be a witness
CANDIDATE_DESCRIPTORS = 512    # per image, for ranking which images overlap
EPIPOLAR_TOLERANCE = 0.01      # of the image diagonal: allows ~1 deg pose error and an off-centre principal point
HOMOGRAPHY_TOLERANCE = 0.02    # of the diagonal, for pairs with too short a baseline for epipolar geometry
MIN_BASELINE_ANGLE_DEG = 1.0   # below this parallax (at the median point) the pair is checked by rotation only


@dataclass
class PairCheck:
    first: int
    second: int
    matches: int        # fundamental-matrix inliers: the independent evidence
    agreement: float    # fraction of them the reconstruction explains


@dataclass
class ImageVerdict:
    path: str
    confidence_before: float
    confidence: float
    witnesses: int        # verified pairs with other registered images
    agreement: float      # median agreement over them (nan: no witness)
    reliable: bool
    reason: str


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("input_poses", type=Path, help="ACE pose file of the reconstruction (e.g. poses_final.txt)")
    parser.add_argument("output_poses", type=Path, help="where to write the pose file with checked confidences")
    parser.add_argument("--report", type=Path, default=None,
                        help="JSON report per image (default: output_poses with .verification.json)")
    add_device_arg(parser)
    parser.add_argument("--confidence_threshold", type=float, default=RELIABLE_CONFIDENCE,
                        help="images at or above this confidence are checked; failures drop below it")
    parser.add_argument("--min_agreement", type=float, default=0.5,
                        help="median fraction of an image's verified matches its pose must explain")
    parser.add_argument("--pairs_per_image", type=int, default=6,
                        help="most overlapping images (by raw feature matches) checked for each image")
    parser.add_argument("--image_resolution", type=int, default=480, help="short side for keypoint detection")
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Independent evidence: which images overlap, and their verified matches

def candidate_partners(features: list, per_image: int) -> list[tuple[int, int]]:
    """For each image the images sharing the most mutual descriptor matches (poses are not used)."""
    import torch
    from two_view_seed import mutual_matches
    subsets = [f.descriptors[:CANDIDATE_DESCRIPTORS] for f in features]
    counts = np.zeros((len(features), len(features)))
    with torch.no_grad():
        for i in range(len(features)):
            for j in range(i + 1, len(features)):
                counts[i, j] = counts[j, i] = len(mutual_matches(subsets[i], subsets[j])[0])
    pairs = set()
    for i in range(len(features)):
        for j in np.argsort(-counts[i])[:per_image]:
            if j != i and counts[i, j] > 0:
                pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


# ----------------------------------------------------------------------------------------------------------------
# Agreement of the reconstruction with one pair's matches

def intrinsic_matrix(focal: float, width: int, height: int) -> np.ndarray:
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])


def relative_pose(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R, t taking camera-1 coordinates to camera-2 coordinates (world-to-camera 4x4 inputs)."""
    relative = second @ dataset_io.invert_pose(first)
    return relative[:3, :3], relative[:3, 3]


def skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def sampson_distance(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """First-order geometric distance (pixels) of matches x1 <-> x2 (N x 2) from the epipolar geometry F."""
    h1 = np.c_[x1, np.ones(len(x1))]
    h2 = np.c_[x2, np.ones(len(x2))]
    Fx1, Ftx2 = h1 @ F.T, h2 @ F
    numerator = np.einsum("ij,ij->i", h2, Fx1)
    denominator = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2
    return np.abs(numerator) / np.sqrt(np.maximum(denominator, 1e-12))


def depths_in_both(R: np.ndarray, t: np.ndarray, K: np.ndarray, x1: np.ndarray, x2: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Depths of the midpoint triangulation of each match in camera 1 and camera 2."""
    Kinv = np.linalg.inv(K)
    r1 = np.c_[x1, np.ones(len(x1))] @ Kinv.T
    r2 = (np.c_[x2, np.ones(len(x2))] @ Kinv.T) @ R  # camera-2 rays in camera-1 axes
    c2 = -R.T @ t
    # Closest points of the rays s*r1 and c2 + u*r2 (least squares per match).
    a, b, c = np.einsum("ij,ij->i", r1, r1), np.einsum("ij,ij->i", r1, r2), np.einsum("ij,ij->i", r2, r2)
    d, e = r1 @ c2, r2 @ c2
    determinant = np.maximum(a * c - b * b, 1e-12)
    s = (c * d - b * e) / determinant
    u = (b * d - a * e) / determinant
    return s, u


def pair_agreement(first: np.ndarray, second: np.ndarray, K: np.ndarray, x1: np.ndarray, x2: np.ndarray,
                   diagonal: float) -> float:
    """Fraction of verified matches the reconstruction explains: on their epipolar lines with the points in front
    of both cameras, or, for a baseline too short for that, transferred by the relative rotation."""
    R, t = relative_pose(first, second)
    H = K @ R @ np.linalg.inv(K)
    projected = np.c_[x1, np.ones(len(x1))] @ H.T
    transferred = projected[:, :2] / np.where(np.abs(projected[:, 2:]) < 1e-12, 1e-12, projected[:, 2:])
    by_rotation = (np.linalg.norm(transferred - x2, axis=1) < HOMOGRAPHY_TOLERANCE * diagonal) & (projected[:, 2] > 0)
    if np.linalg.norm(t) < 1e-12:
        return float(by_rotation.mean())
    Kinv = np.linalg.inv(K)
    F = Kinv.T @ skew(t) @ R @ Kinv
    on_lines = sampson_distance(F, x1, x2) < EPIPOLAR_TOLERANCE * diagonal
    s, u = depths_in_both(R, t, K, x1, x2)
    in_front = (s > 0) & (u > 0)
    # Parallax at the median point decides whether the epipolar test means anything.
    depth = np.median(np.abs(s))  # along camera 1's axis (rays have z = 1)
    parallax_deg = np.degrees(np.arctan2(np.linalg.norm(t), max(depth, 1e-12)))
    if parallax_deg < MIN_BASELINE_ANGLE_DEG:
        return float((by_rotation | (on_lines & in_front)).mean())
    return float((on_lines & in_front).mean())


# ----------------------------------------------------------------------------------------------------------------

def verify(entries: list[dataset_io.PoseEntry], features: list, size: tuple[int, int], threshold: float,
           min_agreement: float, per_image: int) -> tuple[list[ImageVerdict], list[PairCheck]]:
    from bundle_adjust import verified_matches
    width, height = size
    diagonal = float(np.hypot(width, height))
    checked = [e.confidence >= threshold for e in entries]
    pairs = [p for p in candidate_partners(features, per_image) if checked[p[0]] and checked[p[1]]]
    checks = []
    for i, j in pairs:
        ia, ib = verified_matches(features[i], features[j], max(1.0, diagonal / 800))
        if len(ia) < MIN_VERIFIED_MATCHES:
            continue
        # The focal length is shared; use the reconstruction's.
        K = intrinsic_matrix(entries[i].focal, width, height)
        agreement = pair_agreement(entries[i].world_to_cam, entries[j].world_to_cam, K,
                                   features[i].pixels[ia], features[j].pixels[ib], diagonal)
        checks.append(PairCheck(i, j, len(ia), agreement))
    return [verdict(k, e, checked[k], checks, threshold, min_agreement) for k, e in enumerate(entries)], checks


def verdict(k: int, entry: dataset_io.PoseEntry, checked: bool, checks: list[PairCheck], threshold: float,
            min_agreement: float) -> ImageVerdict:
    if not checked:
        return ImageVerdict(entry.path, entry.confidence, entry.confidence, 0, float("nan"), False,
                            "below the confidence threshold already")
    mine = [c.agreement for c in checks if k in (c.first, c.second)]
    if not mine:
        return ImageVerdict(entry.path, entry.confidence, entry.confidence, 0, float("nan"), True,
                            "no verified matches with another registered image: not checkable")
    agreement = float(np.median(mine))
    if agreement >= min_agreement:
        return ImageVerdict(entry.path, entry.confidence, entry.confidence, len(mine), agreement, True, "agrees")
    # Below the threshold, scaled by how much of the evidence agreed: the mapping rule (>= 500 by default) drops
    # it too unless it agreed nearly as much as required.
    lowered = float(np.floor(min(entry.confidence, threshold - 1) * agreement))
    return ImageVerdict(entry.path, entry.confidence, lowered, len(mine), agreement, False,
                        f"its pose explains {100 * agreement:.0f}% of the verified matches with {len(mine)} "
                        f"overlapping image(s)")


def summarise(verdicts: list[ImageVerdict], threshold: float) -> dict:
    checked = [v for v in verdicts if v.confidence_before >= threshold]
    unreliable = [v for v in checked if not v.reliable]
    uncheckable = [v for v in checked if v.reliable and v.witnesses == 0]
    return {"checked": len(checked), "unreliable": len(unreliable), "uncheckable": len(uncheckable),
            "failed": len(checked) > 0 and len(unreliable) > len(checked) / 2}


def write_report(path: Path, verdicts: list[ImageVerdict], checks: list[PairCheck], summary: dict) -> None:
    def clean(value):  # JSON has no NaN
        return None if isinstance(value, float) and not np.isfinite(value) else value
    images = [{k: clean(v) for k, v in asdict(verdict).items()} for verdict in verdicts]
    atomic_write_text(path, json.dumps({"summary": summary, "images": images,
                                        "pairs": [asdict(c) for c in checks]}, indent=1))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not 0 <= args.min_agreement <= 1:
        raise UserError(f"--min_agreement must be within [0, 1], got {args.min_agreement}")
    if args.pairs_per_image < 1:
        raise UserError(f"--pairs_per_image must be at least 1, got {args.pairs_per_image}")
    entries = dataset_io.read_ace_pose_file(args.input_poses)
    if not entries:
        raise UserError(f"{args.input_poses}: no poses")
    paths = [e.path for e in entries]
    size = dataset_io.common_image_size(paths)
    device = select_device(args.device)
    from bundle_adjust import extract_features
    _log.info("verifying %d poses of %s against XFeat matches", len(entries), args.input_poses)
    features = extract_features(paths, args.image_resolution, device)
    verdicts, checks = verify(entries, features, size, args.confidence_threshold, args.min_agreement,
                              args.pairs_per_image)
    summary = summarise(verdicts, args.confidence_threshold)
    for entry, v in zip(entries, verdicts):
        entry.confidence = v.confidence
    dataset_io.write_ace_pose_file(args.output_poses, entries)
    report = args.report or args.output_poses.with_suffix(".verification.json")
    write_report(report, verdicts, checks, summary)
    _log.info("%d pairs checked; %d of %d images unreliable, %d not checkable; report: %s", len(checks),
              summary["unreliable"], summary["checked"], summary["uncheckable"], report)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
