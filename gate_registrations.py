#!/usr/bin/env python3
"""New: hold back a round's new registrations that disagree with the structure the earlier rounds built.

A RANSAC inlier count says that an image agrees with the scene coordinate head, and a head mapped from a few
images can hold a wrong group of views confidently (temple, README "Honest confidence": three images registered
70-86 deg off with 500-1500 inliers, and the next rounds mapped them in). The images themselves can tell: XFeat
matches, verified by a fundamental matrix (no pose needed), link each new image to images registered before; the
points those earlier images see are triangulated from their poses alone (those of --earlier_poses, the file the
round mapped from) and projected into the new image. A new image whose observations land far from where the
earlier structure puts them (median beyond --max_miss keypoint accuracies) gets a confidence below
--confidence_threshold, so that the next round does not map it; it is tried again next round. The pose file format is
unchanged; a JSON report says per new image what was measured.

With --resect, each new image is first placed again by RANSAC PnP on those same observations (resection against
the earlier structure, which nothing here moves), when that agrees with more of them than its registration does.
Why: a head extrapolates to views beyond the mapped ones, and it pulls an image at the edge towards the mapped
views (temple mapped from seven true poses: the next image registered 10.7 deg off with 2076 inliers, at 0.67 of
its rotation; README "Registration at the edge"); the mapping rounds cannot take that out later, because two
views hardly tell it apart (a rotation-depth ambiguity). The triangulated structure does.

With --seed_image (the seed's registration, which has no earlier rounds), the earlier structure is the seed image
and its registered partner with the most well-triangulated matches, placed by their essential matrix (the baseline
length from the registration): the seed's first ring is then resected against two-view geometry instead of the
one-image head (temple: R0018 registered 5.9 deg off, resected 1.0).

An image is judged (and resected) only where its observations determine a pose: RANSAC PnP on two random halves
of them must land within --max_spread degrees of each other. Where the structure it sees is too shallow or noisy
(temple's seed pair seen from 30 deg away), RANSAC finds poses tens of degrees apart that each agree with most
of them, and every such pose misses by little; such an image is not resected, and unless its registration misses
by more than --max_miss it counts as unjudged (held back under --hold_unjudged).
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

import dataset_io
from ace_util import in_mapping_set
from calibration import Intrinsics
from cli_common import (DEFAULT_IMAGE_RESOLUTION, POSE_FILE_CAMERAS_HELP, UserError, add_calibration_arg,
                        add_device_arg, add_feature_cache_arg, atomic_write_text, make_parser, run_main, select_device)
from eval_poses import rotation_angle_deg
from feature_cache import FeatureCache

_log = logging.getLogger("gate_registrations")

# Keypoint accuracies. Measured: right new images 1.8-14 when placed by the head alone (fox, before resection);
# over 14 temple and fox runs with resection (stops 45-46), every image that passed and ended right missed by at most
# 6.7, and the one that passed wrong (temple R0029, 41.7 deg off, not resected) by 22.6, a wrong group about 100.
# A right image held back is tried again next round; a wrong one let through bends every round after it.
DEFAULT_MAX_MISS = 12.0
MIN_OBSERVATIONS = 20       # predicted observations below which a new image cannot be judged (it passes)
PARTNERS_PER_IMAGE = 8      # earlier images matched to each image, chosen by descriptor overlap (not by pose)
RESECTION_THRESHOLD = 4.0   # keypoint accuracies: an observation within this agrees with a resected pose
# Default --max_spread (deg). Measured (median over 20 splits): fox's resections at most 5.6, temple's right ones
# at most 6.9; temple's seed pair seen from 30 deg away 13.7-14.0 (resected 1 or 27 deg off by the draw), images
# against a structure holding a wrong image 37-48. Over 5 splits the seed pair's read 9.6-14.6: 15 are drawn.
DEFAULT_MAX_SPREAD = 10.0
SPREAD_SPLITS = 15


@dataclass
class GateVerdict:
    path: str
    confidence_before: float
    confidence: float
    observations: int     # of its keypoints whose track two or more earlier images see
    median_miss: float    # keypoint accuracies (nan: not judged)
    passed: bool
    reason: str
    resected_deg: float = float("nan")  # --resect: how far resection turned the registered pose (nan: it did not)
    spread_deg: float = float("nan")    # PnP on two halves of the observations: how far apart (nan: not measured)


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("input_poses", type=Path, help="ACE pose file of this round's registration")
    parser.add_argument("output_poses", type=Path, help="where to write the pose file with gated confidences")
    earlier = parser.add_mutually_exclusive_group(required=True)
    earlier.add_argument("--earlier_poses", type=Path,
                         help="the pose file the round mapped from: its confident images are the earlier structure")
    earlier.add_argument("--seed_image", type=str,
                         help="the input is the seed's registration and this its seed image: the earlier structure "
                              "is the seed image and its best two-view partner among the registered images")
    parser.add_argument("--report", type=Path, default=None,
                        help="JSON report per new image (default: output_poses with .gate.json)")
    add_device_arg(parser)
    parser.add_argument("--confidence_threshold", type=float, default=500,
                        help="the mapping threshold (ace_zero.py --registration_confidence): images at or above it "
                             "count as registered; new images that fail drop below it")
    parser.add_argument("--max_miss", type=float, default=DEFAULT_MAX_MISS,
                        help="largest median miss of a new image's observations, in keypoint accuracies (about a "
                             "pixel at the detection resolution)")
    parser.add_argument("--image_resolution", type=int, default=DEFAULT_IMAGE_RESOLUTION,
                        help="short side for keypoint detection")
    parser.add_argument("--resect", action="store_true",
                        help="first place each new image again by RANSAC PnP on its observations of the earlier "
                             "structure, where that agrees with more of them than its registration")
    parser.add_argument("--max_spread", type=float, default=DEFAULT_MAX_SPREAD,
                        help="an image is judged and resected only when RANSAC PnP on two random halves of its "
                             "observations of the earlier structure gives poses within this many degrees (median "
                             f"of {SPREAD_SPLITS} splits); otherwise it is unjudged unless its registration misses "
                             "by more than --max_miss (0: no such test)")
    parser.add_argument("--hold_unjudged", action="store_true",
                        help=f"also hold back the new images with fewer than {MIN_OBSERVATIONS} observations of the "
                             f"earlier structure, which cannot be judged, unless no new image passes a judgement "
                             f"(holding them then would leave the round nothing new; default: they pass)")
    add_calibration_arg(parser, POSE_FILE_CAMERAS_HELP)
    add_feature_cache_arg(parser)
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Which images are new

def earlier_and_new(entries: list[dataset_io.PoseEntry], earlier: list[dataset_io.PoseEntry], threshold: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Masks over `entries`: registered before and still now (the structure), and registered only now (new)."""
    before = {e.path: e.confidence for e in earlier}
    now = np.array([in_mapping_set(e.confidence, threshold) for e in entries])
    was = np.array([in_mapping_set(before.get(e.path, -np.inf), threshold) for e in entries])
    return was & now, now & ~was


# ----------------------------------------------------------------------------------------------------------------
# The measurement

@dataclass
class EarlierStructure:
    """Feature tracks of the considered images, with the points the earlier images alone triangulate (NaN where
    they do not); pixels, focal and centre are those of the reference camera."""
    tracks: "object"      # bundle_adjust.Tracks
    points: np.ndarray    # tracks.count x 3
    focal: float
    centre: np.ndarray


def earlier_structure(world_to_cam: np.ndarray, cameras: list[Intrinsics], reference: Intrinsics, features: list,
                      known: np.ndarray, pairs: list[tuple[int, int]], accuracy: float,
                      cache: FeatureCache | None = None) -> EarlierStructure | None:
    """The tracks of verified matches and the points two or more earlier images see with parallax; None when no
    pair matches."""
    import bundle_adjust as ba
    matches = {k: v for k, v in ba.match_images(features, pairs, accuracy, cache).items() if len(v[0])}
    if not matches:
        return None
    in_reference = [ba.ImageFeatures(ba.to_reference(f.pixels, c, reference), f.descriptors)
                    for f, c in zip(features, cameras)]
    tracks = ba.observations(ba.build_tracks(in_reference, matches), in_reference)
    return structure_of_tracks(tracks, world_to_cam, known, reference.fx, np.array([reference.cx, reference.cy]))


def structure_of_tracks(tracks, world_to_cam: np.ndarray, known: np.ndarray, focal: float, centre: np.ndarray
                        ) -> EarlierStructure:
    """The points of `tracks` (bundle_adjust.Tracks) that the cameras where `known` holds triangulate alone."""
    import bundle_adjust as ba
    earlier, ids = ba.keep_observations(tracks, known[tracks.camera])
    points = np.full((tracks.count, 3), np.nan)
    triangulated, usable = ba.triangulate(earlier, world_to_cam, focal, centre)
    points[ids[usable]] = triangulated[usable]
    return EarlierStructure(tracks, points, focal, centre)


def misses_of_new_images(structure: EarlierStructure | None, world_to_cam: np.ndarray, new: np.ndarray,
                         accuracy: float) -> dict[int, np.ndarray]:
    """Per new image, how far its observations land from the points that the earlier images alone triangulate
    (in units of `accuracy` px); only observations of points two or more earlier images see with parallax."""
    import bundle_adjust as ba
    misses = {int(k): np.zeros(0) for k in np.flatnonzero(new)}
    if structure is None:
        return misses
    tracks, points = structure.tracks, structure.points
    predicted = np.isfinite(points[tracks.point]).all(axis=1)
    errors = ba.observation_errors(tracks, world_to_cam, points, structure.focal, structure.centre)
    rotation, translation = world_to_cam[tracks.camera, :3, :3], world_to_cam[tracks.camera, :3, 3]
    depth = np.einsum("mj,mj->m", rotation[:, 2], points[tracks.point]) + translation[:, 2]
    errors[predicted & (depth <= 0)] = np.inf  # a point behind the new camera: as wrong as can be
    for image in misses:
        misses[image] = errors[(tracks.camera == image) & predicted] / accuracy
    return misses


def resection_spread_deg(structure: EarlierStructure, image: int, threshold_px: float) -> float:
    """How well an image's observations of the earlier structure determine its pose: the median rotation between
    the poses RANSAC PnP finds on two random halves of them, over SPREAD_SPLITS splits (inf where a half gives
    none; nan with fewer than MIN_OBSERVATIONS observations). The draw is fixed, so that a rerun decides the
    same."""
    import bundle_adjust as ba
    own = ba.own_observations(structure.tracks, structure.points, image)
    if len(own.point) < MIN_OBSERVATIONS:
        return float("nan")
    points, pixels = structure.points[own.point], own.pixels
    rng = np.random.default_rng(0)
    angles = []
    for _ in range(SPREAD_SPLITS):
        order = rng.permutation(len(points))
        halves = order[:len(order) // 2], order[len(order) // 2:]
        poses = [ba.ransac_pnp(points[h], pixels[h], structure.focal, structure.centre, threshold_px, refine=True)[0]
                 for h in halves]
        angles.append(np.inf if any(p is None for p in poses)
                      else float(rotation_angle_deg(poses[0][:3, :3] @ poses[1][:3, :3].T)))
    return float(np.median(angles))


def spreads_of_new_images(structure: EarlierStructure | None, new: np.ndarray, threshold_px: float
                          ) -> dict[int, float]:
    """resection_spread_deg of each new image with at least MIN_OBSERVATIONS observations of the structure."""
    if structure is None:
        return {}
    spreads = {int(k): resection_spread_deg(structure, int(k), threshold_px) for k in np.flatnonzero(new)}
    return {k: spread for k, spread in spreads.items() if not np.isnan(spread)}


def resect_new_images(structure: EarlierStructure | None, world_to_cam: np.ndarray, new: np.ndarray,
                      threshold_px: float) -> dict[int, np.ndarray]:
    """--resect: new world-to-camera poses by RANSAC PnP (then least squares on its inliers) on each new image's
    observations of the earlier structure, for the images where that agrees with at least MIN_OBSERVATIONS of
    them and with more than the registered pose does (within `threshold_px`)."""
    if structure is None:
        return {}
    import bundle_adjust as ba
    resected = {}
    for image in np.flatnonzero(new):
        own = ba.own_observations(structure.tracks, structure.points, int(image))
        if len(own.point) < MIN_OBSERVATIONS:
            continue
        agreeing = ba.agreeing_count(own, world_to_cam[image], structure.points, structure.focal,
                                     structure.centre, threshold_px)
        pose, inliers = ba.ransac_pnp(structure.points[own.point], own.pixels, structure.focal, structure.centre,
                                      threshold_px, refine=True)
        if pose is not None and len(inliers) >= max(MIN_OBSERVATIONS, agreeing + 1):
            resected[int(image)] = pose
    return resected


def gate(entry: dataset_io.PoseEntry, misses: np.ndarray, max_miss: float, threshold: float,
         hold_unjudged: bool = False, spread: float = float("nan"), max_spread: float = 0.0) -> GateVerdict:
    """The verdict on one new image from its misses (keypoint accuracies) and, when measured, its spread: an image
    whose observations do not determine a pose can show that it is wrong, never that it is right."""
    if len(misses) < MIN_OBSERVATIONS:
        return unjudged(entry, f"{len(misses)} observations of earlier structure (fewer than {MIN_OBSERVATIONS})",
                        len(misses), threshold, hold_unjudged, spread)
    median = float(np.median(misses))
    if median > max_miss:
        return new_verdict(entry, False, len(misses), median, f"disagrees with the earlier structure: median miss "
                           f"{median:.1f} keypoint accuracies (most {max_miss:g})", threshold, spread)
    if max_spread > 0 and spread > max_spread:
        return unjudged(entry, f"its {len(misses)} observations of earlier structure do not determine a pose (PnP "
                               f"on halves of them {spread:.1f} deg apart, most {max_spread:g}; median miss "
                               f"{median:.1f})", len(misses), threshold, hold_unjudged, spread)
    return new_verdict(entry, True, len(misses), median, f"agrees with the earlier structure (median miss "
                       f"{median:.1f})", threshold, spread)


def unjudged(entry: dataset_io.PoseEntry, why: str, observations: int, threshold: float, hold: bool,
             spread: float) -> GateVerdict:
    """The verdict on an image the earlier structure cannot judge (its miss: nan): held back under `hold`."""
    reason = f"held back unjudged: {why}" if hold else f"not judged: {why}"
    return new_verdict(entry, not hold, observations, float("nan"), reason, threshold, spread)


def new_verdict(entry: dataset_io.PoseEntry, passed: bool, observations: int, median_miss: float, reason: str,
                threshold: float, spread: float) -> GateVerdict:
    """A GateVerdict; a held-back image's confidence drops just below the mapping threshold."""
    confidence = entry.confidence if passed else float(min(entry.confidence, threshold - 1))
    return GateVerdict(entry.path, entry.confidence, confidence, observations, median_miss, passed, reason,
                       spread_deg=spread)


def verdicts_of(entries: list[dataset_io.PoseEntry], misses: dict[int, np.ndarray], max_miss: float,
                threshold: float, hold_unjudged: bool, spreads: dict[int, float] | None = None,
                max_spread: float = 0.0) -> list[GateVerdict]:
    """gate() of each new image (the keys of `misses`, in order); under `hold_unjudged` the unjudged ones are held
    back unless no new image passes on its own judgement."""
    spreads = spreads or {}

    def judged(k: int, hold: bool) -> GateVerdict:
        return gate(entries[k], misses[k], max_miss, threshold, hold, spreads.get(k, float("nan")), max_spread)

    verdicts = [judged(k, hold_unjudged) for k in sorted(misses)]
    unjudged_any = any(np.isnan(v.median_miss) for v in verdicts)
    if hold_unjudged and unjudged_any and not any(v.passed for v in verdicts):
        # Holding them too would leave the round nothing new and end the loop (two of three ring draws stopped
        # with nothing confident): with no image judged right, the unjudged ones pass as without the hold.
        _log.info("no new image agrees with the earlier structure: the unjudged ones pass")
        verdicts = [judged(k, False) for k in sorted(misses)]
    return verdicts


def gate_new_registrations(entries: list[dataset_io.PoseEntry], earlier: list[dataset_io.PoseEntry],
                           cameras: list[Intrinsics], threshold: float, max_miss: float, image_resolution: int,
                           device, cache: FeatureCache | None = None, resect: bool = False,
                           hold_unjudged: bool = False, max_spread: float = 0.0
                           ) -> tuple[list[GateVerdict], dict[int, np.ndarray]]:
    """A verdict for each new image of `entries` (registered now, not in `earlier`), and under `resect` the new
    world-to-camera poses of the images resection placed again (by index into `entries`); under `hold_unjudged`
    the images with too few observations of the earlier structure to judge are held back too, unless no new image
    passes on its own judgement; under `max_spread` (deg) the images whose observations do not determine a pose
    are neither resected nor judged right."""
    from bundle_adjust import extract_features
    from feature_matching import KEYPOINT_ACCURACY_PX
    known, new = earlier_and_new(entries, earlier, threshold)
    if not new.any():
        return [], {}
    from verify_poses import candidate_partners
    paths = [e.path for e in entries]
    considered = np.flatnonzero(known | new)
    for k in considered:
        if not Path(paths[k]).is_file():
            raise UserError(f"image {paths[k]} not found (paths are read from the pose file)")
    features: list = [None] * len(entries)
    for k, found in zip(considered, extract_features([paths[k] for k in considered], image_resolution, device,
                                                     [cameras[k] for k in considered], cache)):
        features[k] = found
    reference = cameras[considered[0]]  # bundle_adjust.py's reference camera too: the cached matches are shared
    accuracy = KEYPOINT_ACCURACY_PX * min(reference.width, reference.height) / image_resolution
    # Witnesses chosen by descriptor overlap alone: a wrong pose must not choose its own.
    pairs = candidate_partners(features, PARTNERS_PER_IMAGE, considered, np.flatnonzero(known))
    # Unconsidered images take no part: empty features keep the indices of the pose file.
    empty = _empty_features(features)
    features = [f if f is not None else empty for f in features]
    world_to_cam = np.stack([e.world_to_cam for e in entries])
    structure = earlier_structure(structure_poses(entries, earlier, known), cameras, reference, features, known,
                                  pairs, accuracy, cache)
    spreads = spreads_of_new_images(structure, new, RESECTION_THRESHOLD * accuracy) if max_spread > 0 else {}
    determined = new.copy()
    determined[[k for k, spread in spreads.items() if spread > max_spread]] = False
    resected = (resect_new_images(structure, world_to_cam, determined, RESECTION_THRESHOLD * accuracy)
                if resect else {})
    placed = world_to_cam.copy()
    for k, pose in resected.items():
        placed[k] = pose
    misses = misses_of_new_images(structure, placed, new, accuracy)
    verdicts = verdicts_of(entries, misses, max_miss, threshold, hold_unjudged, spreads, max_spread)
    for verdict, k in zip(verdicts, sorted(misses)):
        if k in resected:
            verdict.resected_deg = float(rotation_angle_deg(world_to_cam[k, :3, :3] @ resected[k][:3, :3].T))
            verdict.reason += f"; resected, turned {verdict.resected_deg:.2f} deg"
    return verdicts, resected


def seed_pair(entries: list[dataset_io.PoseEntry], cameras: list[Intrinsics], seed: int, threshold: float,
              image_resolution: int, device, cache: FeatureCache | None = None
              ) -> tuple[list[dataset_io.PoseEntry], dict[int, np.ndarray], str]:
    """The seed image at its registered pose and its registered partner with the most well-triangulated matches
    (two_view_seed.pair_geometry), placed by their essential matrix with the registered baseline length (the
    head's scale); the partner's new world-to-camera pose by its index; and what the pair is. Empty, with why,
    when no partner gives two-view geometry."""
    import bundle_adjust as ba
    from feature_matching import KEYPOINT_ACCURACY_PX, mutual_matches
    from two_view_seed import pair_geometry
    from verify_poses import candidate_partners
    registered = [k for k, e in enumerate(entries) if k != seed and in_mapping_set(e.confidence, threshold)]
    if not registered:
        return [], {}, "no other image is registered"
    considered = [seed, *registered]
    features: list = [None] * len(entries)
    for k, found in zip(considered, ba.extract_features([entries[k].path for k in considered], image_resolution,
                                                        device, [cameras[k] for k in considered], cache)):
        features[k] = found
    reference = cameras[seed]
    accuracy = KEYPOINT_ACCURACY_PX * min(reference.width, reference.height) / image_resolution
    K = replace(reference, fy=reference.fx).matrix()  # to_reference's square pixels
    best = None
    for _, partner in candidate_partners(features, PARTNERS_PER_IMAGE, np.array([seed]), np.array(registered)):
        ia, ib = mutual_matches(features[seed].descriptors, features[partner].descriptors)
        geometry = pair_geometry(ba.to_reference(features[seed].pixels[ia], cameras[seed], reference),
                                 ba.to_reference(features[partner].pixels[ib], cameras[partner], reference),
                                 K, accuracy)
        if geometry is not None and (best is None or geometry.score > best[0].score):
            best = (geometry, partner)
    if best is None:
        return [], {}, "no registered image gives two-view geometry with the seed image"
    geometry, partner = best
    seed_entry, partner_entry = entries[seed], entries[partner]
    baseline = float(np.linalg.norm(partner_entry.cam_to_world[:3, 3] - seed_entry.cam_to_world[:3, 3]))
    relative = np.eye(4)
    relative[:3, :3], relative[:3, 3] = geometry.R, geometry.t * baseline
    placed = dataset_io.PoseEntry(partner_entry.path, relative @ seed_entry.world_to_cam, partner_entry.focal,
                                  partner_entry.confidence)
    description = (f"seed pair {Path(seed_entry.path).name} + {Path(partner_entry.path).name}: "
                   f"{len(geometry.depths)} points triangulated, median parallax {geometry.parallax_deg:.1f} deg")
    return [seed_entry, placed], {partner: placed.world_to_cam}, description


def structure_poses(entries: list[dataset_io.PoseEntry], earlier: list[dataset_io.PoseEntry], known: np.ndarray
                    ) -> np.ndarray:
    """World-to-camera poses of `entries` with the earlier images at their poses in `earlier`, the file the round
    mapped from (its head, and so this registration, is in that frame): after a round's bundle adjustment those
    are far better than the head's registration of the same images (temple: 0.3-0.5 deg against 0.3-2.2)."""
    mapped_from = {e.path: e.world_to_cam for e in earlier}
    return np.stack([mapped_from[e.path] if known[k] else e.world_to_cam for k, e in enumerate(entries)])



def _empty_features(features: list):
    from bundle_adjust import ImageFeatures
    template = next(f for f in features if f is not None)
    return ImageFeatures(np.zeros((0, 2)), template.descriptors[:0])


# ----------------------------------------------------------------------------------------------------------------

def write_report(path: Path, verdicts: list[GateVerdict], known: int, structure: str | None = None) -> dict:
    """The JSON report; `structure` says what the earlier structure is when it is not the earlier poses' file."""
    summary = {"earlier": known, **({"structure": structure} if structure else {}), "new": len(verdicts),
               "held_back": sum(not v.passed for v in verdicts),
               "resected": sum(bool(np.isfinite(v.resected_deg)) for v in verdicts),
               "not_judged": sum(bool(np.isnan(v.median_miss)) for v in verdicts)}
    images = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(verdict).items()}
              for verdict in verdicts]
    atomic_write_text(path, json.dumps({"summary": summary, "images": images}, indent=1))
    return summary


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.max_miss <= 0:
        raise UserError(f"--max_miss must be positive, got {args.max_miss}")
    if args.max_spread < 0:
        raise UserError(f"--max_spread must be 0 (no test) or positive, got {args.max_spread}")
    entries = dataset_io.read_ace_pose_file(args.input_poses)
    if not entries:
        raise UserError(f"{args.input_poses}: no poses")
    cameras = dataset_io.entry_cameras(entries, args.calibration_file, args.input_poses)
    device = select_device(args.device)
    cache = FeatureCache(args.feature_cache)
    try:
        if args.seed_image is not None:
            earlier, placed, structure = seed_structure(args, entries, cameras, device, cache)
        else:
            earlier, placed, structure = dataset_io.read_ace_pose_file(args.earlier_poses), {}, None
        verdicts, resected = ([], {}) if not earlier else gate_new_registrations(
            entries, earlier, cameras, args.confidence_threshold, args.max_miss, args.image_resolution, device,
            cache, args.resect, args.hold_unjudged, args.max_spread)
    except UserError as error:
        raise UserError(f"{args.input_poses}: {error}") from None
    # the seed's partner goes on at its two-view pose
    index = {e.path: k for k, e in enumerate(entries)}
    dataset_io.write_amended_pose_file(args.input_poses, args.output_poses, cameras,
                                       {index[v.path]: v.confidence for v in verdicts if not v.passed},
                                       {**resected, **placed})
    known = int(earlier_and_new(entries, earlier, args.confidence_threshold)[0].sum())
    summary = write_report(args.report or args.output_poses.with_suffix(".gate.json"), verdicts, known, structure)
    for verdict in verdicts:
        _log.info("%s: %s", Path(verdict.path).name, verdict.reason)
    held_unjudged = sum(not v.passed and bool(np.isnan(v.median_miss)) for v in verdicts)
    _log.info("%d new registration(s) against %d earlier image(s): %d resected, %d held back, %d not judged (%d "
              "of them held back)", summary["new"], known, summary["resected"], summary["held_back"],
              summary["not_judged"], held_unjudged)


def seed_structure(args, entries: list[dataset_io.PoseEntry], cameras: list[Intrinsics], device,
                   cache: FeatureCache) -> tuple[list[dataset_io.PoseEntry], dict[int, np.ndarray], str]:
    """--seed_image: seed_pair's earlier images, partner placement and description (all empty, with why, when the
    seed image is not registered)."""
    wanted = Path(args.seed_image).resolve()
    seed = next((k for k, e in enumerate(entries) if Path(e.path).resolve() == wanted), None)
    if seed is None:
        raise UserError(f"--seed_image {args.seed_image} is not in the pose file")
    if not in_mapping_set(entries[seed].confidence, args.confidence_threshold):
        earlier, placed, structure = [], {}, f"the seed image {wanted.name} is not registered"
    else:
        earlier, placed, structure = seed_pair(entries, cameras, seed, args.confidence_threshold,
                                               args.image_resolution, device, cache)
    _log.info("%s%s", structure, "" if earlier else ": nothing is judged")
    return earlier, placed, structure


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
