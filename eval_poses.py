"""Measure estimated camera poses (an ACE pose file) against (pseudo) ground truth.

    python eval_poses.py ACE_POSE_FILE "GT_GLOB" [flags]

Estimates are sorted by image file name and paired by order with the sorted ground-truth files (4x4
camera-to-world matrices). Because ACE0 reconstructs in an arbitrary frame with an approximate scale, a
similarity transform ground truth -> estimate is fitted first (RANSAC over camera positions, spec §7).

Choices that differ from, or make precise, the original script:
- The similarity is standard Umeyama (least-squares optimal for est ~ s R gt + t), not the original's scale
  variant (mean squared norm of the estimate / trace(D S)); both agree on noise-free data.
- RANSAC inliers are judged in GT units (position distance divided by the hypothesis scale), i.e. with
  exactly the criterion that later decides accuracy. The original compares in estimate units, which only
  matches when the estimate happens to be metric; ours is invariant to the reconstruction's scale.
- Refinement also accepts a least-squares refit on the inliers that keeps (not only one that increases)
  the inlier count, so the result is not a noisy three-point fit.
- Randomness is seeded (--seed), so repeated runs give identical numbers.
- With 3..9 usable frames the alignment falls back to a least-squares fit on all of them (with a warning);
  below 3, or when RANSAC finds no consistent hypothesis, the alignment fails and every error is inf.
- Every frame is evaluated, whatever its confidence (as the original); the confidence threshold only
  selects the frames that may drive the alignment and defines the "registered" count.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ace_util import is_registered
from cli_common import UserError, atomic_write_text, make_parser, run_main, str2bool
from dataset_io import (PoseEntry, glob_files, load_cam_to_world, nearest_rotation, read_ace_pose_file,
                        valid_pose)

_log = logging.getLogger("eval_poses")

MIN_RANSAC_FRAMES = 10     # the original's minimum for RANSAC
MIN_FIT_FRAMES = 3         # a similarity needs three non-collinear points
RANSAC_ITERATIONS = 10_000
REFINE_HYPOTHESES = 12     # best hypotheses that get refitted on their inliers
REFINE_ROUNDS = 8
_DEGENERATE_VARIANCE = 1e-12


# ----------------------------------------------------------------------------------------------------------------
# Similarity transforms

@dataclass
class Similarity:
    """x -> scale * rotation @ x + translation (maps ground truth into the estimate frame)."""
    rotation: np.ndarray
    translation: np.ndarray
    scale: float = 1.0

    @staticmethod
    def identity() -> "Similarity":
        return Similarity(np.eye(3), np.zeros(3), 1.0)

    @property
    def matrix(self) -> np.ndarray:
        """4x4 [sR | t]."""
        out = np.eye(4)
        out[:3, :3] = self.scale * self.rotation
        out[:3, 3] = self.translation
        return out

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * points @ self.rotation.T + self.translation


def _batched_umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Umeyama fits for K point sets at once: src, dst (K, M, 3) -> R (K,3,3), t (K,3), s (K,), ok (K,)."""
    mu_src = src.mean(axis=1)
    mu_dst = dst.mean(axis=1)
    src_c = src - mu_src[:, None]
    dst_c = dst - mu_dst[:, None]
    var_src = (src_c ** 2).sum(axis=2).mean(axis=1)
    covariance = np.einsum("kmi,kmj->kij", dst_c, src_c) / src.shape[1]
    u, d, vt = np.linalg.svd(covariance)
    # Reflection handling: flip the weakest axis when the best orthogonal map would be a mirror.
    signs = np.ones_like(d)
    signs[:, 2] = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    signs[signs[:, 2] == 0, 2] = 1.0
    rotation = np.einsum("kij,kj,kjl->kil", u, signs, vt)
    ok = var_src > _DEGENERATE_VARIANCE
    if with_scale:
        scale = (d * signs).sum(axis=1) / np.where(ok, var_src, 1.0)
        ok &= scale > 0
    else:
        scale = np.ones(len(src))
    translation = mu_dst - scale[:, None] * np.einsum("kij,kj->ki", rotation, mu_src)
    return rotation, translation, scale, ok


def fit_similarity(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Similarity | None:
    """Least-squares similarity with dst ~ s R src + t (Umeyama 1991); None for degenerate input."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < MIN_FIT_FRAMES:
        return None
    rotation, translation, scale, ok = _batched_umeyama(src[None], dst[None], with_scale)
    if not ok[0]:
        return None
    return Similarity(rotation[0], translation[0], float(scale[0]))


def fit_similarity_to_poses(gt_c2w: np.ndarray, est_c2w: np.ndarray, with_scale: bool = True
                            ) -> Similarity | None:
    """Similarity GT -> estimate whose rotation comes from the camera orientations, not the centres.

    The rotation is the chordal mean of est_R_i gt_R_i^T (SVD projection onto SO(3)); scale and translation are
    then least squares over the centres. Where the centres are nearly coplanar or collinear (a ring or an arc of
    cameras), a fit to the centres leaves the rotation about the in-plane axes to their noise, and that rotation
    is then counted as every camera's orientation error; the orientations pin it down instead.
    """
    gt_c2w = np.asarray(gt_c2w, dtype=np.float64)
    est_c2w = np.asarray(est_c2w, dtype=np.float64)
    if gt_c2w.shape != est_c2w.shape or len(gt_c2w) < MIN_FIT_FRAMES:
        return None
    rotation = nearest_rotation(np.einsum("kij,klj->il", est_c2w[:, :3, :3], gt_c2w[:, :3, :3]))
    gt_centres = gt_c2w[:, :3, 3] @ rotation.T
    gt_mean, est_mean = gt_centres.mean(axis=0), est_c2w[:, :3, 3].mean(axis=0)
    gt_spread = gt_centres - gt_mean
    variance = float((gt_spread ** 2).sum())
    if variance <= _DEGENERATE_VARIANCE * len(gt_c2w):
        return None
    scale = float((gt_spread * (est_c2w[:, :3, 3] - est_mean)).sum()) / variance if with_scale else 1.0
    if scale <= 0:
        return None
    return Similarity(rotation, est_mean - scale * gt_mean, scale)


def relative_rotation_errors(est_c2w: np.ndarray, gt_c2w: np.ndarray) -> np.ndarray:
    """Angle (deg) between estimated and true relative rotation for every pair of frames: needs no alignment."""
    est_r = np.asarray(est_c2w, dtype=np.float64)[:, :3, :3]
    gt_r = np.asarray(gt_c2w, dtype=np.float64)[:, :3, :3]
    first, second = np.triu_indices(len(est_r), 1)
    est_rel = np.einsum("kji,kjl->kil", est_r[first], est_r[second])
    gt_rel = np.einsum("kji,kjl->kil", gt_r[first], gt_r[second])
    return rotation_angle_deg(est_rel @ np.transpose(gt_rel, (0, 2, 1)))


# ----------------------------------------------------------------------------------------------------------------
# Pose errors

def rotation_angle_deg(rotations: np.ndarray) -> np.ndarray:
    """Rotation angle of (..., 3, 3) matrices in degrees; atan2 keeps it accurate near 0 and 180 deg."""
    skew = np.stack([rotations[..., 2, 1] - rotations[..., 1, 2],
                     rotations[..., 0, 2] - rotations[..., 2, 0],
                     rotations[..., 1, 0] - rotations[..., 0, 1]], axis=-1)
    trace = np.trace(rotations, axis1=-2, axis2=-1)
    return np.degrees(np.arctan2(np.linalg.norm(skew, axis=-1), trace - 1.0))


def pose_errors(est_c2w: np.ndarray, gt_c2w: np.ndarray, alignment: Similarity | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (rotation error deg, translation error in GT units) after mapping GT into the estimate frame.

    alignment None means a failed alignment: every error is inf. Frames with non-finite GT are inf too.
    """
    count = len(est_c2w)
    rot_err = np.full(count, np.inf)
    trans_err = np.full(count, np.inf)
    if alignment is None or count == 0:
        return rot_err, trans_err
    finite = np.isfinite(gt_c2w).all(axis=(1, 2))
    gt = gt_c2w[finite]
    est = est_c2w[finite]
    gt_positions = alignment.apply(gt[:, :3, 3])
    gt_rotations = alignment.rotation @ gt[:, :3, :3]
    trans_err[finite] = np.linalg.norm(est[:, :3, 3] - gt_positions, axis=1) / alignment.scale
    rot_err[finite] = rotation_angle_deg(est[:, :3, :3] @ np.transpose(gt_rotations, (0, 2, 1)))
    return rot_err, trans_err


# ----------------------------------------------------------------------------------------------------------------
# Alignment

@dataclass
class Alignment:
    similarity: Similarity | None      # None: alignment failed
    method: str                        # "ransac", "least_squares", "identity" or "failed"
    inliers: np.ndarray                # bool per frame (all frames, not only the candidates)
    candidates: np.ndarray             # bool per frame: confidence > threshold and finite GT
    message: str = ""


@dataclass
class _Hypothesis:
    similarity: Similarity
    inliers: np.ndarray = field(repr=False)

    @property
    def count(self) -> int:
        return int(self.inliers.sum())


def _inlier_masks(rotation: np.ndarray, translation: np.ndarray, scale: np.ndarray,
                  est_c2w: np.ndarray, gt_c2w: np.ndarray, thresh_t: float, thresh_r: float) -> np.ndarray:
    """(K, N) inlier masks of K hypotheses; both criteria in GT units / degrees (see module doc)."""
    gt_pos = gt_c2w[:, :3, 3]
    est_pos = est_c2w[:, :3, 3]
    mapped = scale[:, None, None] * np.einsum("kij,nj->kni", rotation, gt_pos) + translation[:, None]
    distance = np.linalg.norm(mapped - est_pos[None], axis=2) / scale[:, None]
    # Angle of R_est (R_k R_gt)^T: its trace equals sum(R_k * (R_est R_gt^T)) elementwise, so all K x N
    # traces come from one matrix product.
    relative = np.einsum("nai,nbi->nab", est_c2w[:, :3, :3], gt_c2w[:, :3, :3])  # R_est R_gt^T
    trace = rotation.reshape(len(rotation), 9) @ relative.reshape(len(relative), 9).T
    cos_angle = np.clip((trace - 1.0) / 2.0, -1.0, 1.0)
    return (distance < thresh_t) & (cos_angle > math.cos(math.radians(thresh_r)))


def _sample_triplets(count: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """(iterations, 3) indices, three distinct ones per row."""
    triplets = rng.integers(count, size=(iterations, 3))
    while True:
        repeated = ((triplets[:, 0] == triplets[:, 1]) | (triplets[:, 0] == triplets[:, 2])
                    | (triplets[:, 1] == triplets[:, 2]))
        if not repeated.any():
            return triplets
        triplets[repeated] = rng.integers(count, size=(int(repeated.sum()), 3))


def _score(similarity: Similarity, est_c2w: np.ndarray, gt_c2w: np.ndarray, thresh_t: float,
           thresh_r: float) -> np.ndarray:
    return _inlier_masks(similarity.rotation[None], similarity.translation[None],
                         np.array([similarity.scale]), est_c2w, gt_c2w, thresh_t, thresh_r)[0]


def _refine(hypothesis: _Hypothesis, est_c2w: np.ndarray, gt_c2w: np.ndarray, with_scale: bool,
            thresh_t: float, thresh_r: float) -> _Hypothesis:
    """Refit on the inliers while that strictly increases the inlier count.

    Unlike the original, a refit that keeps the count is accepted too (then refinement stops): otherwise a
    minimal three-point hypothesis that already explains every inlier would be returned with its noise.
    """
    for _ in range(REFINE_ROUNDS):
        refit = fit_similarity(gt_c2w[hypothesis.inliers, :3, 3], est_c2w[hypothesis.inliers, :3, 3], with_scale)
        if refit is None:
            break
        candidate = _Hypothesis(refit, _score(refit, est_c2w, gt_c2w, thresh_t, thresh_r))
        if candidate.count < hypothesis.count:
            break
        improved = candidate.count > hypothesis.count
        hypothesis = candidate
        if not improved:
            break
    return hypothesis


def ransac_similarity(est_c2w: np.ndarray, gt_c2w: np.ndarray, thresh_t: float = 0.05, thresh_r: float = 5.0,
                      with_scale: bool = True, iterations: int = RANSAC_ITERATIONS, seed: int = 0
                      ) -> tuple[Similarity, np.ndarray] | None:
    """RANSAC similarity GT -> estimate over camera positions of (N, 4, 4) camera-to-world poses.

    A hypothesis comes from three distinct correspondences and counts only if those three are inliers
    (position error < thresh_t in GT units and rotation error < thresh_r degrees). The best
    REFINE_HYPOTHESES are refitted on their inliers. Returns (similarity, inlier mask) or None.
    """
    count = len(est_c2w)
    if count < MIN_FIT_FRAMES:
        return None
    rng = np.random.default_rng(seed)
    triplets = _sample_triplets(count, iterations, rng)
    rotation, translation, scale, ok = _batched_umeyama(gt_c2w[triplets, :3, 3], est_c2w[triplets, :3, 3],
                                                        with_scale)
    rotation, translation, scale, triplets = rotation[ok], translation[ok], scale[ok], triplets[ok]
    hypotheses: list[_Hypothesis] = []
    chunk = max(1, 2_000_000 // max(count, 1))  # bounds the (chunk, N, 3) temporaries
    for start in range(0, len(rotation), chunk):
        part = slice(start, start + chunk)
        masks = _inlier_masks(rotation[part], translation[part], scale[part], est_c2w, gt_c2w, thresh_t, thresh_r)
        sample_ok = np.take_along_axis(masks, triplets[part], axis=1).all(axis=1)
        for k in np.flatnonzero(sample_ok):
            index = start + k
            hypotheses.append(_Hypothesis(Similarity(rotation[index], translation[index], float(scale[index])),
                                          masks[k]))
    if not hypotheses:
        return None
    hypotheses.sort(key=lambda h: h.count, reverse=True)  # stable: ties keep sampling order
    refined = [_refine(h, est_c2w, gt_c2w, with_scale, thresh_t, thresh_r) for h in hypotheses[:REFINE_HYPOTHESES]]
    best = max(refined, key=lambda h: h.count)
    return best.similarity, best.inliers


def align(est_c2w: np.ndarray, gt_c2w: np.ndarray, confidences: np.ndarray, *, estimate_scale: bool = True,
          conf_threshold: float = 500.0, thresh_t: float = 0.05, thresh_r: float = 5.0,
          iterations: int = RANSAC_ITERATIONS, seed: int = 0) -> Alignment:
    """Similarity GT -> estimate from frames with confidence > conf_threshold and finite GT."""
    candidates = is_registered(np.asarray(confidences), conf_threshold) & np.isfinite(gt_c2w).all(axis=(1, 2))
    indices = np.flatnonzero(candidates)
    no_inliers = np.zeros(len(est_c2w), dtype=bool)
    if len(indices) < MIN_FIT_FRAMES:
        return Alignment(None, "failed", no_inliers, candidates,
                         f"only {len(indices)} frame(s) with confidence > {conf_threshold:g} and valid GT; "
                         f"an alignment needs at least {MIN_FIT_FRAMES}")
    est, gt = est_c2w[indices], gt_c2w[indices]
    result = None
    if len(indices) >= MIN_RANSAC_FRAMES:
        result = ransac_similarity(est, gt, thresh_t, thresh_r, estimate_scale, iterations, seed)
    if result is None:
        # Too few frames for RANSAC, or no three frames within the thresholds of one similarity (a distorted
        # reconstruction): a least-squares fit on all of them still says how far off the poses are.
        similarity = fit_similarity(gt[:, :3, 3], est[:, :3, 3], estimate_scale)
        if similarity is None:
            return Alignment(None, "failed", no_inliers, candidates, "degenerate camera positions")
        inliers = no_inliers.copy()
        inliers[indices] = _score(similarity, est, gt, thresh_t, thresh_r)
        reason = (f"only {len(indices)} frame(s) with confidence > {conf_threshold:g} and valid GT (RANSAC needs "
                  f"{MIN_RANSAC_FRAMES})" if len(indices) < MIN_RANSAC_FRAMES else
                  f"RANSAC found no similarity that puts three frames within {thresh_t:g} / {thresh_r:g} deg")
        return Alignment(similarity, "least_squares", inliers, candidates,
                         f"{reason}; least-squares fit on all {len(indices)} of them")
    similarity, candidate_inliers = result
    inliers = no_inliers.copy()
    inliers[indices] = candidate_inliers
    return Alignment(similarity, "ransac", inliers, candidates)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation

def sorted_median(values: Sequence[float]) -> float:
    """Element at index N//2 of the sorted values (the original's median, no interpolation)."""
    if len(values) == 0:
        return math.inf
    return float(sorted(values)[len(values) // 2])


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def evaluate(estimates: Sequence[PoseEntry], gt_cam_to_world: Sequence[np.ndarray], *,
             estimate_alignment: bool = True, estimate_scale: bool = True, conf_threshold: float = 500.0,
             thresh_t: float = 0.05, thresh_r: float = 5.0, seed: int = 0, iterations: int = RANSAC_ITERATIONS,
             gt_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Errors of estimates[i] against gt_cam_to_world[i] (already paired); returns a JSON-ready summary.

    Non-finite numbers (failed alignment, invalid GT) appear as None in the summary.
    """
    if len(estimates) != len(gt_cam_to_world):
        raise UserError(f"{len(estimates)} estimated poses but {len(gt_cam_to_world)} ground-truth poses "
                        f"(counts must match)")
    count = len(estimates)
    est_c2w = np.array([e.cam_to_world for e in estimates]).reshape(count, 4, 4)
    gt_c2w = np.array(gt_cam_to_world, dtype=np.float64).reshape(count, 4, 4)
    confidences = np.array([e.confidence for e in estimates], dtype=np.float64)
    if estimate_alignment:
        alignment = align(est_c2w, gt_c2w, confidences, estimate_scale=estimate_scale,
                          conf_threshold=conf_threshold, thresh_t=thresh_t, thresh_r=thresh_r,
                          iterations=iterations, seed=seed)
        if alignment.similarity is None:
            _log.warning("alignment failed: %s; all errors are inf", alignment.message)
        elif alignment.message:
            _log.warning("%s", alignment.message)
    else:
        alignment = Alignment(Similarity.identity(), "identity", np.zeros(count, dtype=bool),
                              np.zeros(count, dtype=bool))
    rot_err, trans_err = pose_errors(est_c2w, gt_c2w, alignment.similarity)
    accurate = (rot_err < thresh_r) & (trans_err < thresh_t)
    median_t = sorted_median(trans_err.tolist())
    similarity = alignment.similarity
    frames = [{"file": e.path,
               "gt_file": gt_names[i] if gt_names is not None else None,
               "confidence": float(e.confidence) if math.isfinite(e.confidence) else "inf",  # inf: mapping
               "registered": bool(is_registered(e.confidence, conf_threshold)),
               "rot_err_deg": _finite_or_none(rot_err[i]),
               "trans_err": _finite_or_none(trans_err[i]),
               "accurate": bool(accurate[i])}
              for i, e in enumerate(estimates)]
    return {
        "num_images": count,
        "num_registered": int(is_registered(confidences, conf_threshold).sum()),
        "conf_threshold": conf_threshold,
        "thresh_t": thresh_t,
        "thresh_r_deg": thresh_r,
        "num_accurate": int(accurate.sum()),
        "accuracy_percent": 100.0 * float(accurate.mean()) if count else 0.0,
        "median_rot_err_deg": _finite_or_none(sorted_median(rot_err.tolist())),
        "median_trans_err": _finite_or_none(median_t),
        "median_trans_err_cm": _finite_or_none(100.0 * median_t),
        "alignment": {
            "method": alignment.method,
            "with_scale": bool(estimate_alignment and estimate_scale),
            "ok": similarity is not None,
            "scale": similarity.scale if similarity is not None else None,
            "gt_to_estimate": similarity.matrix.tolist() if similarity is not None else None,
            "num_candidates": int(alignment.candidates.sum()),
            "num_inliers": int(alignment.inliers.sum()),
            "message": alignment.message,
        },
        "frames": frames,
    }


def pair_by_sorted_names(estimates: Sequence[PoseEntry], gt_files: Sequence[str]) -> list[PoseEntry]:
    """Estimates sorted by image file name; GT files are paired with them by (sorted) order."""
    ordered = sorted(estimates, key=lambda e: e.path)
    if len(ordered) != len(gt_files):
        raise UserError(f"the pose file has {len(ordered)} estimates but the GT glob matches {len(gt_files)} "
                        f"files (counts must match; pairing is by sorted order)")
    return ordered


# ----------------------------------------------------------------------------------------------------------------
# Command line

def _format_err(value: float | None, fmt: str) -> str:
    return "inf" if value is None else format(value, fmt)


def print_report(summary: dict[str, Any], verbose: bool) -> None:
    if verbose:
        for frame in summary["frames"]:
            trans = frame["trans_err"]
            print(f"{frame['file']}: rot {_format_err(frame['rot_err_deg'], '.3f')} deg, "
                  f"trans {_format_err(None if trans is None else 100 * trans, '.2f')} cm")
    alignment = summary["alignment"]
    if alignment["method"] != "identity":
        scale = "n/a" if alignment["scale"] is None else f"{alignment['scale']:.6g}"
        print(f"Alignment: {alignment['method']}, {alignment['num_inliers']}/{alignment['num_candidates']} "
              f"inliers, scale {scale}")
    print(f"Registered: {summary['num_registered']}/{summary['num_images']} "
          f"(confidence > {summary['conf_threshold']:g})")
    print(f"Accuracy: {summary['accuracy_percent']:.1f}% ({summary['num_accurate']}/{summary['num_images']} "
          f"below {100 * summary['thresh_t']:g} cm and {summary['thresh_r_deg']:g} deg)")
    print(f"Median rotation error: {_format_err(summary['median_rot_err_deg'], '.2f')} deg")
    print(f"Median translation error: {_format_err(summary['median_trans_err_cm'], '.1f')} cm")


def focal_error_percent(estimates: Sequence[PoseEntry], calibration_file: str) -> float:
    """Median |estimated fx / true fx - 1| in percent over the estimates."""
    from dataset_io import image_cameras
    truth = image_cameras([e.path for e in estimates], calibration_file, log=False)
    errors = [abs(e.focal / t.fx - 1) * 100 for e, t in zip(estimates, truth)]
    _log.info("median focal error %.2f %% (against %s)", float(np.median(errors)), calibration_file)
    return float(np.median(errors))


def parse_args(argv: list[str] | None = None):
    parser = make_parser("Compare an ACE pose file with ground-truth camera-to-world pose files.")
    parser.add_argument("ace_pose_file", type=Path, help="ACE pose file (world-to-camera, one image a line)")
    parser.add_argument("gt_pose_files", type=str,
                        help="glob of 4x4 camera-to-world GT files (quote it), paired by sorted order")
    parser.add_argument("--estimate_alignment", type=str2bool, default=True,
                        help="fit a similarity GT -> estimate before measuring errors")
    parser.add_argument("--estimate_alignment_scale", type=str2bool, default=True,
                        help="let the alignment include a scale factor")
    parser.add_argument("--estimate_alignment_conf_threshold", type=float, default=500,
                        help="only estimates with a confidence above this drive the alignment")
    parser.add_argument("--pose_error_thresh_t", type=float, default=0.05,
                        help="translation threshold in GT units (m); also the RANSAC inlier threshold, "
                             "in GT units")
    parser.add_argument("--pose_error_thresh_r", type=float, default=5,
                        help="rotation threshold in degrees; also the RANSAC inlier threshold")
    parser.add_argument("--seed", type=int, default=0, help="seed of the alignment RANSAC")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary as JSON here")
    parser.add_argument("--verbose", action="store_true", help="print the errors of every frame")
    parser.add_argument("--calibration_file", type=str, default=None,
                        help="new: the true cameras (formats of calibration.py): also report the error of the "
                             "estimated focal lengths (fx, the pose file's focal column) against them")
    args = parser.parse_args(argv)
    if args.pose_error_thresh_t <= 0 or args.pose_error_thresh_r <= 0:
        raise UserError("--pose_error_thresh_t and --pose_error_thresh_r must be positive")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    gt_files = glob_files(args.gt_pose_files, "gt_pose_files")
    estimates = pair_by_sorted_names(read_ace_pose_file(args.ace_pose_file), gt_files)
    gt_poses = [load_cam_to_world(f) for f in gt_files]
    invalid = sum(not valid_pose(p) for p in gt_poses)
    if invalid:
        _log.warning("%d GT pose(s) contain NaN/inf: their errors are inf", invalid)
    summary = evaluate(estimates, gt_poses, estimate_alignment=args.estimate_alignment,
                       estimate_scale=args.estimate_alignment_scale,
                       conf_threshold=args.estimate_alignment_conf_threshold,
                       thresh_t=args.pose_error_thresh_t, thresh_r=args.pose_error_thresh_r,
                       seed=args.seed, gt_names=gt_files)
    if args.calibration_file is not None:
        summary["median_focal_err_percent"] = focal_error_percent(estimates, args.calibration_file)
    if args.json is not None:  # before printing: a closed stdout pipe must not lose the file
        atomic_write_text(args.json, json.dumps(summary, indent=1) + "\n")
    print_report(summary, args.verbose or _log.isEnabledFor(logging.DEBUG))
    return summary


if __name__ == "__main__":
    run_main(main)
