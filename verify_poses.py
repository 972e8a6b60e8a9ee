#!/usr/bin/env python3
"""New: check a reconstruction against independent feature matches and lower the confidence of images whose
pose disagrees with them.

A RANSAC inlier count only says that an image agrees with the scene coordinate head; with a head that fits wrong
poses (weak texture, a focal length far off) wrong images collect inliers too. This stage asks the images
themselves instead: XFeat matches between overlapping images, verified by a fundamental matrix (which needs
neither poses nor a focal length), must also agree with the relative pose and the focal length of the
reconstruction. An image whose pairs mostly disagree gets a confidence below --confidence_threshold, so every
tool that applies the original's threshold (mapping, exports, evaluation) leaves it out. The pose file format is
unchanged; a JSON report says per image why. Images whose feature observations the bundle adjustment mostly
rejects are flagged too: a chain of images can bend with every pair consistent, but not its tracks.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import dataset_io
from calibration import Intrinsics, focal_changed
from cli_common import (DEFAULT_IMAGE_RESOLUTION, POSE_FILE_CAMERAS_HELP, RELIABLE_CONFIDENCE, UserError,
                        add_calibration_arg, add_device_arg, add_feature_cache_arg, atomic_write_text, make_parser,
                        run_main, select_device, str2bool)
from feature_cache import FeatureCache

if TYPE_CHECKING:  # bundle_adjust's imports are slow: loaded when needed, not for --help
    from bundle_adjust import BundleAdjustConfig

_log = logging.getLogger("verify_poses")

MIN_VERIFIED_MATCHES = 20      # fundamental-matrix inliers for a pair to be a witness
CANDIDATE_DESCRIPTORS = 512    # per image, for ranking which images overlap
MIN_BASELINE_ANGLE_DEG = 1.0   # below this parallax (at the median point) the pair is checked by rotation only
POSE_NEIGHBOURS = 4            # nearest cameras of each camera in the reconstruction that must share matches
MAX_NEIGHBOUR_ANGLE_DEG = 60   # ... among those looking in a similar direction
MAX_ADJUSTMENT_DEG = 5.0       # an image the adjustment moves further was not where the evidence puts it
MIN_KEPT_FRACTION = 0.5        # an image whose observations the adjustment mostly rejects does not fit the scene
MAX_FOCAL_CHANGE = 1.25        # ... and all of them when it changes the focal length by more than this factor
STRONG_PAIR_FRACTION = 0.5     # of the matches of an image's best pair, for a pair to hold images together


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
    parser.add_argument("--tolerance", type=float, default=0.005,
                        help="distance from the epipolar line, as a fraction of the image diagonal, within which a "
                             "match agrees with the (bundle-adjusted) poses")
    parser.add_argument("--adjust", type=str2bool, default=True,
                        help="check a bundle-adjusted copy of the poses (bundle_adjust.py; the output keeps the "
                             "input poses) and flag images the adjustment moves by more than "
                             f"{MAX_ADJUSTMENT_DEG:g} deg or whose feature observations it mostly rejects (under "
                             f"{100 * MIN_KEPT_FRACTION:g}%% kept); False for poses that are adjusted already (the "
                             "shares kept are then read from the .kept.json that bundle_adjust.py wrote beside them)")
    parser.add_argument("--check_focal", type=str2bool, default=True,
                        help="also check the focal length (bundle_adjust.focal_probe): adjust the poses with it "
                             "held, and with it free from 1.5x shorter and 1.5x longer starts; when a start ends "
                             "at a focal that fits the feature tracks clearly better (median reprojection error at "
                             "most 1/1.08 of the held one's), the poses were mapped with a wrong focal and every "
                             "image is flagged (costs three adjustments)")
    parser.add_argument("--image_resolution", type=int, default=DEFAULT_IMAGE_RESOLUTION,
                        help="short side for keypoint detection")
    add_calibration_arg(parser, POSE_FILE_CAMERAS_HELP)
    add_feature_cache_arg(parser)
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Independent evidence: which images overlap, and their verified matches

def candidate_partners(features: list, per_image: int, images: np.ndarray | None = None,
                       partners: np.ndarray | None = None) -> list[tuple[int, int]]:
    """For each of `images` (default: all) the `per_image` of `partners` (default: all) sharing the most mutual
    descriptor matches with it (poses are not used); features of images outside both may be None."""
    import torch
    from feature_matching import mutual_matches
    count = len(features)
    images = np.arange(count) if images is None else images
    partners = np.arange(count) if partners is None else partners
    subsets = [None if f is None else f.descriptors[:CANDIDATE_DESCRIPTORS] for f in features]
    counts = np.zeros((count, count))
    counted = np.eye(count, dtype=bool)
    with torch.no_grad():
        for i in images:
            for j in partners:
                if not counted[i, j]:  # each pair once
                    counts[i, j] = counts[j, i] = len(mutual_matches(subsets[i], subsets[j])[0])
                    counted[i, j] = counted[j, i] = True
    is_partner = np.zeros(count, dtype=bool)
    is_partner[partners] = True
    pairs = set()
    for i in images:
        row = np.where(is_partner, counts[i], 0)  # 0: never a partner
        for j in np.argsort(-row)[:per_image]:
            if j != i and row[j] > 0:
                pairs.add((min(int(i), int(j)), max(int(i), int(j))))
    return sorted(pairs)


# ----------------------------------------------------------------------------------------------------------------
# Agreement of the reconstruction with one pair's matches

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


def depths_in_both(R: np.ndarray, t: np.ndarray, K1: np.ndarray, K2: np.ndarray, x1: np.ndarray, x2: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Depths of the midpoint triangulation of each match in camera 1 and camera 2 (intrinsics K1, K2)."""
    r1 = np.c_[x1, np.ones(len(x1))] @ np.linalg.inv(K1).T
    r2 = (np.c_[x2, np.ones(len(x2))] @ np.linalg.inv(K2).T) @ R  # camera-2 rays in camera-1 axes
    c2 = -R.T @ t
    # Closest points of the rays s*r1 and c2 + u*r2 (least squares per match).
    a, b, c = np.einsum("ij,ij->i", r1, r1), np.einsum("ij,ij->i", r1, r2), np.einsum("ij,ij->i", r2, r2)
    d, e = r1 @ c2, r2 @ c2
    determinant = np.maximum(a * c - b * b, 1e-12)
    s = (c * d - b * e) / determinant
    u = (b * d - a * e) / determinant
    return s, u


def pair_agreement(first: np.ndarray, second: np.ndarray, K1: np.ndarray, K2: np.ndarray, x1: np.ndarray,
                   x2: np.ndarray, tolerance_px: float) -> float:
    """Fraction of verified matches the reconstruction explains: on their epipolar lines with the points in front
    of both cameras, or, for a baseline too short for that, transferred by the relative rotation. K1, K2: the
    intrinsics of the two images."""
    R, t = relative_pose(first, second)
    H = K2 @ R @ np.linalg.inv(K1)
    projected = np.c_[x1, np.ones(len(x1))] @ H.T
    transferred = projected[:, :2] / np.where(np.abs(projected[:, 2:]) < 1e-12, 1e-12, projected[:, 2:])
    by_rotation = (np.linalg.norm(transferred - x2, axis=1) < 2 * tolerance_px) & (projected[:, 2] > 0)
    if np.linalg.norm(t) < 1e-12:
        return float(by_rotation.mean())
    F = np.linalg.inv(K2).T @ skew(t) @ R @ np.linalg.inv(K1)
    on_lines = sampson_distance(F, x1, x2) < tolerance_px
    s, u = depths_in_both(R, t, K1, K2, x1, x2)
    in_front = (s > 0) & (u > 0)
    # Parallax at the median point decides whether the epipolar test means anything.
    depth = np.median(np.abs(s))  # along camera 1's axis (rays have z = 1)
    parallax_deg = np.degrees(np.arctan2(np.linalg.norm(t), max(depth, 1e-12)))
    if parallax_deg < MIN_BASELINE_ANGLE_DEG:
        return float((by_rotation | (on_lines & in_front)).mean())
    return float((on_lines & in_front).mean())


# ----------------------------------------------------------------------------------------------------------------

def verify(entries: list[dataset_io.PoseEntry], cameras: list[Intrinsics], features: list, threshold: float,
           min_agreement: float, per_image: int, tolerance: float, cache: FeatureCache | None = None
           ) -> tuple[list[ImageVerdict], list[PairCheck], dict]:
    """`features`: in pixels of each entry's camera (bundle_adjust.extract_features with `cameras`); `cache`: where
    verified matches of earlier checks are kept."""
    from bundle_adjust import candidate_pairs, verified_matches
    checked = np.array([e.confidence >= threshold for e in entries])
    index = np.flatnonzero(checked)
    # Two sources of pairs: images that look alike (independent of the poses), and images the reconstruction puts
    # side by side (a reconstruction folded onto itself puts images together that share nothing).
    by_pose = {(int(index[i]), int(index[j])) for i, j in candidate_pairs(
        np.stack([entries[k].cam_to_world for k in index]), POSE_NEIGHBOURS, MAX_NEIGHBOUR_ANGLE_DEG)} \
        if len(index) > 1 else set()
    by_look = {p for p in candidate_partners(features, per_image) if checked[p[0]] and checked[p[1]]}
    checks = []
    for i, j in sorted(by_look | by_pose):
        diagonal = float(np.mean([np.hypot(c.width, c.height) for c in (cameras[i], cameras[j])]))
        ia, ib = verified_matches(features[i], features[j], max(1.0, diagonal / 800), cache)
        agreement = 0.0
        if len(ia) >= MIN_VERIFIED_MATCHES:
            agreement = pair_agreement(entries[i].world_to_cam, entries[j].world_to_cam, cameras[i].matrix(),
                                       cameras[j].matrix(), features[i].pixels[ia], features[j].pixels[ib],
                                       tolerance * diagonal)
        checks.append(PairCheck(i, j, len(ia), agreement))
    strong = strong_pairs(len(entries), checks)
    component = largest_consistent_part(len(entries), checks, strong, by_pose, min_agreement)
    witnessed = [c for c in checks if c.matches >= MIN_VERIFIED_MATCHES]
    contradicted = {i for c, s in zip(checks, strong) if s and c.agreement < min_agreement for i in (c.first, c.second)}
    verdicts = [verdict(k, e, bool(checked[k]), witnessed, threshold, min_agreement, component, contradicted)
                for k, e in enumerate(entries)]
    pose_pairs = [c for c in checks if (c.first, c.second) in by_pose]
    overlap = float(np.mean([c.matches >= MIN_VERIFIED_MATCHES for c in pose_pairs])) if pose_pairs else float("nan")
    return verdicts, checks, {"neighbour_overlap": overlap, "consistent_part": int(component.sum())}


def strong_pairs(count: int, checks: list[PairCheck]) -> list[bool]:
    """Pairs with enough verified matches and at least STRONG_PAIR_FRACTION of those of either image's best pair:
    true neighbours. Look-alike views (the sides of a ring that look alike, which a reconstruction may fold onto
    each other) share fewer matches than true neighbours."""
    best = np.zeros(count)
    for c in checks:
        best[c.first], best[c.second] = max(best[c.first], c.matches), max(best[c.second], c.matches)
    return [c.matches >= max(MIN_VERIFIED_MATCHES, STRONG_PAIR_FRACTION * min(best[c.first], best[c.second]))
            for c in checks]


def largest_consistent_part(count: int, checks: list[PairCheck], strong: list[bool], by_pose: set[tuple[int, int]],
                            min_agreement: float) -> np.ndarray:
    """Mask of the largest consistent part of the reconstruction. Parts first: images linked by strong pairs whose
    matches the reconstruction explains. Then two parts join when the other pairs between them agree more often
    than the evidence contradicts them (a pair whose matches the reconstruction does not explain, or cameras it puts
    side by side that share no matches). Where a ring folds onto itself the strong pair across the fold disagrees,
    and the sides laid over each other share look-alike matches but, more often, nothing."""
    from scipy.sparse.csgraph import connected_components
    import scipy.sparse
    linked = [(c.first, c.second) for c, s in zip(checks, strong) if s and c.agreement >= min_agreement]
    part = np.zeros(count, bool)
    if not linked:
        return part
    rows, cols = np.array(linked).T
    part[rows] = part[cols] = True
    _, labels = connected_components(scipy.sparse.coo_matrix((np.ones(len(rows)), (rows, cols)),
                                                             shape=(count, count)), directed=False)
    witnessed = [c.matches >= MIN_VERIFIED_MATCHES for c in checks]
    while True:
        votes: dict[tuple[int, int], int] = {}
        for c, seen in zip(checks, witnessed):
            a, b = labels[c.first], labels[c.second]
            if a == b or not (part[c.first] and part[c.second]):
                continue
            if seen or (c.first, c.second) in by_pose:
                key = (min(a, b), max(a, b))
                votes[key] = votes.get(key, 0) + (1 if seen and c.agreement >= min_agreement else -1)
        joins = [key for key, vote in votes.items() if vote > 0]
        if not joins:
            break
        a, b = max(joins, key=lambda key: votes[key])
        labels[labels == b] = a
    return part & (labels == np.argmax(np.bincount(labels[part])))


def verdict(k: int, entry: dataset_io.PoseEntry, checked: bool, checks: list[PairCheck], threshold: float,
            min_agreement: float, component: np.ndarray, contradicted: set[int]) -> ImageVerdict:
    if not checked:
        return ImageVerdict(entry.path, entry.confidence, entry.confidence, 0, float("nan"), False,
                            "below the confidence threshold already")
    mine = [c.agreement for c in checks if k in (c.first, c.second)]
    if not mine:
        return ImageVerdict(entry.path, entry.confidence, entry.confidence, 0, float("nan"), True,
                            "no verified matches with another registered image: not checkable")
    agreement = float(np.median(mine))
    if agreement < min_agreement:
        reason = (f"its pose explains {100 * agreement:.0f}% of the verified matches with {len(mine)} "
                  f"overlapping image(s)")
    elif k in contradicted:
        reason = "the reconstruction does not explain the matches with a true neighbour (strong pair)"
    elif not component[k]:
        reason = (f"placed inconsistently with the largest consistent part of the reconstruction "
                  f"({int(component.sum())} images)")
    else:
        return ImageVerdict(entry.path, entry.confidence, entry.confidence, len(mine), agreement, True, "agrees")
    # Below the threshold, scaled by how much of the evidence agreed: the mapping rule (>= 500 by default) drops
    # it too unless it agreed nearly as much as required.
    lowered = float(np.floor(min(entry.confidence, threshold - 1) * min(agreement, 1.0)))
    return ImageVerdict(entry.path, entry.confidence, lowered, len(mine), agreement, False, reason)


def summarise(verdicts: list[ImageVerdict], threshold: float, statistics: dict) -> dict:
    checked = [v for v in verdicts if v.confidence_before >= threshold]
    unreliable = [v for v in checked if not v.reliable]
    uncheckable = [v for v in checked if v.reliable and v.witnesses == 0]
    return {"checked": len(checked), "unreliable": len(unreliable), "uncheckable": len(uncheckable),
            "failed": len(checked) > 0 and len(unreliable) > len(checked) / 2, **statistics}


def write_report(path: Path, verdicts: list[ImageVerdict], checks: list[PairCheck], summary: dict) -> None:
    def clean(value):  # JSON has no NaN
        return None if isinstance(value, float) and not np.isfinite(value) else value
    images = [{k: clean(v) for k, v in asdict(verdict).items()} for verdict in verdicts]
    atomic_write_text(path, json.dumps({"summary": summary, "images": images,
                                        "pairs": [asdict(c) for c in checks]}, indent=1))


def adjusted_copy(entries: list[dataset_io.PoseEntry], cameras: list[Intrinsics], features: list,
                  config: BundleAdjustConfig, device
                  ) -> tuple[list[dataset_io.PoseEntry], list[Intrinsics], np.ndarray]:
    """A bundle-adjusted copy of the confident poses (self-consistent to about a pixel, so that the check can be
    tight), its cameras, and how far each rotation moved (deg). `features`: those of every entry with `cameras`,
    shared with the check."""
    from bundle_adjust import bundle_adjust
    try:
        adjusted, stats = bundle_adjust(entries, config, device, features, cameras)
    except UserError as error:
        _log.warning("%s: checking the poses as they are", error)
        return entries, cameras, np.zeros(len(entries)), np.full(len(entries), np.nan)
    from eval_poses import rotation_angle_deg
    moved = rotation_angle_deg(np.stack([a.world_to_cam[:3, :3] @ e.world_to_cam[:3, :3].T
                                         for a, e in zip(adjusted, entries)]))
    before, after = entries[0].focal, adjusted[0].focal
    if focal_changed(before, after, MAX_FOCAL_CHANGE):
        # Poses registered with a focal length that far off are wrong as a whole, not image by image.
        _log.warning("the bundle adjustment changes the focal length from %.1f to %.1f px: every pose counts as "
                     "moved", before, after)
        moved = np.full(len(entries), np.inf)
    kept = stats.get("kept_fraction", np.full(len(entries), np.nan))
    return adjusted, stats["cameras"], moved, kept


def flag_rejected(verdict: ImageVerdict, kept: float, threshold: float) -> ImageVerdict:
    """An image whose feature observations the bundle adjustment mostly rejects does not fit the reconstruction
    that its neighbours agree on, even when each pair of images looks consistent (a slowly bending chain)."""
    if not verdict.reliable or not kept < MIN_KEPT_FRACTION:
        return verdict
    return unreliable(verdict, f"the bundle adjustment rejects {100 * (1 - kept):.0f}% of its feature observations",
                      threshold)


def flag_moved(verdict: ImageVerdict, angle: float, threshold: float) -> ImageVerdict:
    if not verdict.reliable or angle <= MAX_ADJUSTMENT_DEG:
        return verdict
    reason = ("the bundle adjustment changes the focal length too much" if np.isinf(angle) else
              f"the bundle adjustment moves it by {angle:.1f} deg")
    return unreliable(verdict, reason, threshold)


def focal_check(entries: list[dataset_io.PoseEntry], cameras: list[Intrinsics], features: list,
                config: BundleAdjustConfig, device) -> tuple[str | None, dict]:
    """Why every pose is wrong when the tracks fit another focal length far better (None when they do not), and
    the probe's numbers for the report."""
    from bundle_adjust import FOCAL_PROBE_FACTOR, focal_probe
    try:
        probe = focal_probe(entries, config, device, features, cameras)
    except UserError as error:
        _log.warning("%s: the focal length is not checked", error)
        return None, {}
    numbers = {"focal": probe["focal"], "probes": [{"focal": f, "error_ratio": r} for f, r in probe["probes"]],
               "better_focal": None if probe["better"] is None else probe["better"][0]}
    _log.info("focal check: adjustments started %gx off the poses' %.1f px ended at %s (median reprojection "
              "error at the poses' focal over theirs)", FOCAL_PROBE_FACTOR, probe["focal"],
              ", ".join(f"{f:.1f} px ({r:.2f})" for f, r in probe["probes"]))
    if probe["better"] is None:
        return None, numbers
    better, ratio = probe["better"]
    reason = (f"the feature tracks fit a focal length of {better:.0f} px far better than the poses' "
              f"{probe['focal']:.0f} px (the poses' median reprojection error is {ratio:.2f} times that fit's): "
              f"mapped with a wrong focal")
    _log.warning("%s; every image is flagged", reason)
    return reason, numbers


def unreliable(verdict: ImageVerdict, reason: str, threshold: float) -> ImageVerdict:
    """The verdict turned unreliable for `reason`, its confidence lowered below the threshold."""
    return ImageVerdict(verdict.path, verdict.confidence_before, float(min(verdict.confidence_before, threshold - 1)),
                        verdict.witnesses, verdict.agreement, False, reason)


def default_report(output_poses: Path) -> Path:
    """Where the report of `output_poses` goes unless --report names another file."""
    return output_poses.with_suffix(".verification.json")


def write_unverified(input_poses: Path, output_poses: Path, threshold: float, calibration_file: str | None,
                     why: str) -> None:
    """For when the check itself failed: output_poses with every image at or above `threshold` flagged as not
    verified, and its report (summary["verification_failed"] = why). Poses nobody checked must not read as good."""
    entries = dataset_io.read_ace_pose_file(input_poses)
    verdicts = []
    for entry in entries:
        as_read = ImageVerdict(entry.path, entry.confidence, entry.confidence, 0, float("nan"), False,
                               "below the confidence threshold already")
        confident = entry.confidence >= threshold
        verdicts.append(unreliable(as_read, f"not verified: {why}", threshold) if confident else as_read)
    dataset_io.write_amended_pose_file(input_poses, output_poses,
                                       dataset_io.entry_cameras(entries, calibration_file, input_poses),
                                       {k: v.confidence for k, v in enumerate(verdicts)})
    write_report(default_report(output_poses), verdicts, [],
                 summarise(verdicts, threshold, {"verification_failed": why}))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not 0 <= args.min_agreement <= 1:
        raise UserError(f"--min_agreement must be within [0, 1], got {args.min_agreement}")
    if not 0 < args.tolerance < 1:
        raise UserError(f"--tolerance must be within (0, 1), got {args.tolerance}")
    if args.pairs_per_image < 1:
        raise UserError(f"--pairs_per_image must be at least 1, got {args.pairs_per_image}")
    if args.feature_cache is None and (args.adjust or args.check_focal):
        # the check's own adjustments match the same pairs again: a scratch cache matches each pair once
        with tempfile.TemporaryDirectory(prefix="verify_poses_features_") as scratch:
            return check_pose_file(argparse.Namespace(**{**vars(args), "feature_cache": scratch}))
    check_pose_file(args)


def check_pose_file(args: argparse.Namespace) -> None:
    entries = dataset_io.read_ace_pose_file(args.input_poses)
    if not entries:
        raise UserError(f"{args.input_poses}: no poses")
    paths = [e.path for e in entries]
    cameras = dataset_io.entry_cameras(entries, args.calibration_file, args.input_poses)
    device = select_device(args.device)
    from bundle_adjust import BundleAdjustConfig, extract_features, kept_fractions_beside, read_kept_fractions
    kept_beside = None if args.adjust else read_kept_fractions(args.input_poses, entries)
    if kept_beside is not None:
        _log.info("shares of observations the adjustment kept: %s", kept_fractions_beside(args.input_poses))
    _log.info("verifying %d poses of %s against XFeat matches", len(entries), args.input_poses)
    cache = FeatureCache(args.feature_cache)
    features = extract_features(paths, args.image_resolution, device, cameras, cache)
    # the adjustment's defaults, at this check's threshold and resolution
    adjustment = BundleAdjustConfig(args.input_poses, args.confidence_threshold, image_resolution=args.image_resolution,
                                    feature_cache=args.feature_cache)
    if args.adjust:
        checked, checked_cameras, moved, kept = adjusted_copy(entries, cameras, features, adjustment, device)
    else:
        checked, checked_cameras, moved = entries, cameras, np.zeros(len(entries))
        kept = np.full(len(entries), np.nan) if kept_beside is None else kept_beside
    verdicts, checks, statistics = verify(checked, checked_cameras, features, args.confidence_threshold,
                                          args.min_agreement, args.pairs_per_image, args.tolerance, cache)
    verdicts = [flag_moved(v, angle, args.confidence_threshold) for v, angle in zip(verdicts, moved)]
    verdicts = [flag_rejected(v, share, args.confidence_threshold) for v, share in zip(verdicts, kept)]
    if args.check_focal:
        wrong_focal, statistics["focal_check"] = focal_check(entries, cameras, features, adjustment, device)
        if wrong_focal is not None:
            verdicts = [unreliable(v, wrong_focal, args.confidence_threshold) if v.reliable else v for v in verdicts]
    summary = summarise(verdicts, args.confidence_threshold, statistics)
    dataset_io.write_amended_pose_file(args.input_poses, args.output_poses, cameras,
                                       {k: v.confidence for k, v in enumerate(verdicts)})
    report = args.report or default_report(args.output_poses)
    write_report(report, verdicts, checks, summary)
    _log.info("%d pairs checked; neighbours in the reconstruction share matches for %.0f%% of them; %d of %d "
              "images unreliable, %d not checkable; report: %s", len(checks), 100 * summary["neighbour_overlap"],
              summary["unreliable"], summary["checked"], summary["uncheckable"], report)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
