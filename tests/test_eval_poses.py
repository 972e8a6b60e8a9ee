"""Tests for eval_poses.py: similarity fit, alignment RANSAC, errors, and the command line.

Truth comes from the known similarity used to build the data and from scipy's rotation magnitudes,
never from the module's own error functions.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import eval_poses
from conftest import REPO, ring_world_to_cam
from dataset_io import PoseEntry, invert_pose, write_ace_pose_file

PYTHON = Path(sys.executable)
TEMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "temple"  # ../shared beside the repo


def random_similarity(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    return Rotation.random(random_state=rng.integers(1 << 31)).as_matrix(), rng.normal(0, 3, 3), \
        float(rng.uniform(0.3, 4.0))


def random_cam_to_world(rng: np.random.Generator, count: int) -> np.ndarray:
    poses = np.tile(np.eye(4), (count, 1, 1))
    poses[:, :3, :3] = Rotation.random(count, random_state=rng.integers(1 << 31)).as_matrix()
    poses[:, :3, 3] = rng.uniform(-2, 2, (count, 3))
    return poses


def apply_similarity(c2w: np.ndarray, rotation: np.ndarray, translation: np.ndarray, scale: float) -> np.ndarray:
    """Camera-to-world poses of the same cameras in a frame related by x -> s R x + t."""
    out = c2w.copy()
    out[:, :3, :3] = rotation @ c2w[:, :3, :3]
    out[:, :3, 3] = scale * c2w[:, :3, 3] @ rotation.T + translation
    return out


def write_dataset(folder: Path, gt_c2w: np.ndarray, est_c2w: np.ndarray, confidence: float = 1000.0,
                  shuffle_seed: int = 1) -> tuple[Path, str]:
    """GT files frame-XXXX.pose.txt and an ACE pose file (world-to-camera) in shuffled line order."""
    gt_folder = folder / "gt"
    gt_folder.mkdir(parents=True, exist_ok=True)
    for i, pose in enumerate(gt_c2w):
        np.savetxt(gt_folder / f"frame-{i:04d}.pose.txt", pose)
    entries = [PoseEntry(f"seq/frame-{i:04d}.color.png", invert_pose(pose), 500.0, confidence)
               for i, pose in enumerate(est_c2w)]
    order = np.random.default_rng(shuffle_seed).permutation(len(entries))
    pose_file = folder / "poses.txt"
    write_ace_pose_file(pose_file, [entries[i] for i in order])
    return pose_file, str(gt_folder / "*.pose.txt")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PYTHON), "eval_poses.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def run_cli_json(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "summary.json"
    result = run_cli(*args, "--json", out)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


def truth_errors(est_c2w: np.ndarray, gt_c2w: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
                 scale: float) -> tuple[np.ndarray, np.ndarray]:
    mapped = apply_similarity(gt_c2w, rotation, translation, scale)
    trans = np.linalg.norm(est_c2w[:, :3, 3] - mapped[:, :3, 3], axis=1) / scale
    rot = np.degrees(Rotation.from_matrix(est_c2w[:, :3, :3] @ np.transpose(mapped[:, :3, :3], (0, 2, 1)))
                     .magnitude())
    return rot, trans


# ----------------------------------------------------------------------------------------------------------------
# Similarity fit and RANSAC

def test_fit_similarity_recovers_known_transform_exactly():
    rng = np.random.default_rng(0)
    for _ in range(20):
        rotation, translation, scale = random_similarity(rng)
        src = rng.normal(0, 1, (int(rng.integers(3, 40)), 3))
        fit = eval_poses.fit_similarity(src, scale * src @ rotation.T + translation)
        assert fit is not None
        np.testing.assert_allclose(fit.rotation, rotation, atol=1e-9)
        np.testing.assert_allclose(fit.translation, translation, atol=1e-9)
        assert fit.scale == pytest.approx(scale, rel=1e-9)
        assert np.linalg.det(fit.rotation) == pytest.approx(1.0)


def test_fit_similarity_never_returns_a_reflection():
    rng = np.random.default_rng(1)
    src = rng.normal(0, 1, (10, 3))
    mirrored = src * np.array([1.0, 1.0, -1.0])
    fit = eval_poses.fit_similarity(src, mirrored)
    assert np.linalg.det(fit.rotation) == pytest.approx(1.0)


def test_fit_similarity_without_scale_and_degenerate_input():
    rng = np.random.default_rng(2)
    rotation, translation, _ = random_similarity(rng)
    src = rng.normal(0, 1, (8, 3))
    fit = eval_poses.fit_similarity(src, src @ rotation.T + translation, with_scale=False)
    assert fit.scale == 1.0
    np.testing.assert_allclose(fit.rotation, rotation, atol=1e-9)
    assert eval_poses.fit_similarity(np.ones((5, 3)), rng.normal(0, 1, (5, 3))) is None
    assert eval_poses.fit_similarity(src[:2], src[:2]) is None


def test_fit_similarity_to_poses_recovers_known_transform_exactly():
    rng = np.random.default_rng(11)
    for _ in range(10):
        rotation, translation, scale = random_similarity(rng)
        gt = random_cam_to_world(rng, int(rng.integers(3, 30)))
        fit = eval_poses.fit_similarity_to_poses(gt, apply_similarity(gt, rotation, translation, scale))
        np.testing.assert_allclose(fit.rotation, rotation, atol=1e-9)
        np.testing.assert_allclose(fit.translation, translation, atol=1e-9)
        assert fit.scale == pytest.approx(scale, rel=1e-9)
    gt = random_cam_to_world(rng, 5)
    gt[:, :3, 3] = 1.0  # one centre for all: no scale to fit
    assert eval_poses.fit_similarity_to_poses(gt, gt) is None


def arc_of_cameras(count: int = 19, arc_deg: float = 50.0, radius: float = 0.6) -> np.ndarray:
    """Camera-to-world poses on a horizontal arc (coplanar centres, like temple's) looking at the origin."""
    span = np.radians(arc_deg)
    return np.array([invert_pose(np.vstack([pose, [0.0, 0.0, 0.0, 1.0]]))
                     for pose in ring_world_to_cam(count, radius, span, start=-span / 2)])


def test_pose_fitted_alignment_reads_the_added_orientation_noise_on_coplanar_centres():
    """Every camera turned by exactly 3 deg about its centre and moved by 2 cm: with the rotation taken from the
    orientations, the aligned error of each camera stays near the 3 deg it was given, on every draw."""
    truth = arc_of_cameras()
    rotation, translation, scale = random_similarity(np.random.default_rng(12))
    for seed in range(6):
        rng = np.random.default_rng(seed)
        noisy = truth.copy()
        axes = rng.normal(size=(len(truth), 3))
        turns = Rotation.from_rotvec(np.radians(3.0) * axes / np.linalg.norm(axes, axis=1, keepdims=True))
        noisy[:, :3, :3] = turns.as_matrix() @ truth[:, :3, :3]
        moves = rng.normal(size=(len(truth), 3))
        noisy[:, :3, 3] += 0.02 * moves / np.linalg.norm(moves, axis=1, keepdims=True)
        estimate = apply_similarity(noisy, rotation, translation, scale)
        fit = eval_poses.fit_similarity_to_poses(truth, estimate)
        off = np.degrees(Rotation.from_matrix(fit.rotation @ rotation.T).magnitude())
        assert off < 1.5  # the mean of 19 independent 3 deg turns
        rot_err, _ = eval_poses.pose_errors(estimate, truth, fit)
        assert 2.4 < np.median(rot_err) < 3.6


def test_relative_rotation_errors_need_no_alignment():
    rng = np.random.default_rng(13)
    gt = random_cam_to_world(rng, 8)
    est = apply_similarity(gt, *random_similarity(rng))
    np.testing.assert_allclose(eval_poses.relative_rotation_errors(est, gt), 0.0, atol=1e-6)
    turn = Rotation.from_rotvec([0.0, np.radians(7.0), 0.0]).as_matrix()
    est[3, :3, :3] = est[3, :3, :3] @ turn  # camera 3 turned by 7 deg in its own frame
    errors = eval_poses.relative_rotation_errors(est, gt)
    first, second = np.triu_indices(8, 1)
    involved = (first == 3) | (second == 3)
    np.testing.assert_allclose(errors[involved], 7.0, atol=1e-6)
    np.testing.assert_allclose(errors[~involved], 0.0, atol=1e-6)


def test_ransac_recovers_similarity_with_30_percent_outliers():
    rng = np.random.default_rng(3)
    count = 60
    gt = random_cam_to_world(rng, count)
    rotation, translation, scale = random_similarity(rng)
    est = apply_similarity(gt, rotation, translation, scale)
    outliers = rng.choice(count, size=int(0.3 * count), replace=False)
    est[outliers, :3, 3] += rng.normal(0, 2.0, (len(outliers), 3)) * scale + 0.5 * scale
    result = eval_poses.ransac_similarity(est, gt, iterations=2000, seed=0)
    assert result is not None
    fit, inliers = result
    np.testing.assert_allclose(fit.rotation, rotation, atol=1e-8)
    np.testing.assert_allclose(fit.translation, translation, atol=1e-7)
    assert fit.scale == pytest.approx(scale, rel=1e-8)
    expected = np.ones(count, dtype=bool)
    expected[outliers] = False
    np.testing.assert_array_equal(inliers, expected)


def test_ransac_is_deterministic_for_a_seed():
    rng = np.random.default_rng(4)
    gt = random_cam_to_world(rng, 30)
    est = apply_similarity(gt, *random_similarity(rng))
    est[:, :3, 3] += rng.normal(0, 0.01, (30, 3))
    first = eval_poses.ransac_similarity(est, gt, iterations=500, seed=7)[0]
    second = eval_poses.ransac_similarity(est, gt, iterations=500, seed=7)[0]
    np.testing.assert_array_equal(first.matrix, second.matrix)


def test_rotation_angle_matches_scipy():
    rotations = Rotation.random(50, random_state=5)
    np.testing.assert_allclose(eval_poses.rotation_angle_deg(rotations.as_matrix()),
                               np.degrees(rotations.magnitude()), atol=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# evaluate(): few frames, failures

def _entries(est_c2w: np.ndarray, confidence: float = 1000.0) -> list[PoseEntry]:
    return [PoseEntry(f"f{i:03d}.png", invert_pose(p), 500.0, confidence) for i, p in enumerate(est_c2w)]


def test_few_frames_fall_back_to_least_squares():
    rng = np.random.default_rng(6)
    gt = random_cam_to_world(rng, 5)
    est = apply_similarity(gt, *random_similarity(rng))
    summary = eval_poses.evaluate(_entries(est), list(gt))
    assert summary["alignment"]["method"] == "least_squares"
    assert summary["accuracy_percent"] == 100.0
    assert summary["median_trans_err"] < 1e-9


def test_distorted_reconstruction_falls_back_to_least_squares_with_finite_errors():
    """No three frames within 5 cm / 5 deg of one similarity: errors are measured after a least-squares fit."""
    rng = np.random.default_rng(8)
    gt = random_cam_to_world(rng, 12)
    distorted = gt.copy()
    distorted[:, :3, 3] += rng.normal(0, 0.5, size=(12, 3))  # metres of distortion, far above 5 cm
    rotation, translation, scale = random_similarity(rng)
    summary = eval_poses.evaluate(_entries(apply_similarity(distorted, rotation, translation, scale)), list(gt))
    assert summary["alignment"]["method"] == "least_squares" and summary["alignment"]["ok"] is True
    true_offsets = np.linalg.norm(distorted[:, :3, 3] - gt[:, :3, 3], axis=1)
    # After the fit the errors are of the size of the known distortion: neither ~0 nor inf.
    assert 0.3 * np.median(true_offsets) < summary["median_trans_err"] < 1.5 * np.median(true_offsets)
    assert np.isfinite(summary["median_rot_err_deg"]) and summary["accuracy_percent"] < 20


def test_too_few_confident_frames_fail_with_inf_errors():
    rng = np.random.default_rng(7)
    gt = random_cam_to_world(rng, 12)
    entries = _entries(apply_similarity(gt, *random_similarity(rng)), confidence=100.0)
    summary = eval_poses.evaluate(entries, list(gt))
    assert summary["alignment"]["ok"] is False
    assert summary["accuracy_percent"] == 0.0
    assert summary["median_rot_err_deg"] is None and summary["median_trans_err_cm"] is None
    assert summary["num_registered"] == 0


def test_non_finite_gt_is_excluded_and_counted_as_failure():
    rng = np.random.default_rng(8)
    gt = random_cam_to_world(rng, 15)
    est = apply_similarity(gt, *random_similarity(rng))
    gt[3, 0, 3] = np.nan
    summary = eval_poses.evaluate(_entries(est), list(gt))
    assert summary["alignment"]["num_candidates"] == 14
    assert summary["frames"][3]["trans_err"] is None and not summary["frames"][3]["accurate"]
    assert summary["num_accurate"] == 14


# ----------------------------------------------------------------------------------------------------------------
# Command line

def test_cli_end_to_end_against_independent_truth(tmp_path):
    rng = np.random.default_rng(9)
    count = 40
    gt = random_cam_to_world(rng, count)
    rotation, translation, scale = random_similarity(rng)
    # Noise is applied in GT units before mapping, so the truth errors are known independently of the fit.
    noisy = gt.copy()
    noisy[:, :3, 3] += rng.normal(0, 0.004, (count, 3))
    noisy[:, :3, :3] = Rotation.from_rotvec(rng.normal(0, np.radians(0.3), (count, 3))).as_matrix() @ gt[:, :3, :3]
    noisy[5, :3, :3] = Rotation.from_euler("y", 20, degrees=True).as_matrix() @ gt[5, :3, :3]  # 20 deg off
    noisy[11, :3, 3] += np.array([0.0, 0.3, 0.0])                                             # 30 cm off
    est = apply_similarity(noisy, rotation, translation, scale)
    pose_file, gt_glob = write_dataset(tmp_path, gt, est)

    summary = run_cli_json(tmp_path, pose_file, gt_glob)

    rot_truth, trans_truth = truth_errors(est, gt, rotation, translation, scale)
    accurate_truth = (rot_truth < 5) & (trans_truth < 0.05)
    assert accurate_truth.sum() == count - 2  # the two broken frames, nothing else near the thresholds
    assert summary["num_images"] == count and summary["num_registered"] == count
    assert summary["accuracy_percent"] == pytest.approx(100.0 * (count - 2) / count)
    assert not summary["frames"][5]["accurate"] and not summary["frames"][11]["accurate"]
    assert summary["frames"][5]["rot_err_deg"] == pytest.approx(20.0, abs=0.5)
    assert summary["median_rot_err_deg"] == pytest.approx(np.sort(rot_truth)[count // 2], abs=0.05)
    assert summary["median_trans_err"] == pytest.approx(np.sort(trans_truth)[count // 2], abs=0.001)
    assert summary["median_trans_err_cm"] == pytest.approx(100 * summary["median_trans_err"])
    assert summary["alignment"]["scale"] == pytest.approx(scale, rel=0.01)
    assert summary["frames"][0]["file"] == "seq/frame-0000.color.png"  # sorted, whatever the file order


def test_cli_count_mismatch_is_a_one_line_error(tmp_path):
    rng = np.random.default_rng(10)
    gt = random_cam_to_world(rng, 12)
    pose_file, gt_glob = write_dataset(tmp_path, gt, gt[:11])
    result = run_cli(pose_file, gt_glob)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "11" in lines[0] and "12" in lines[0]


def test_cli_without_alignment_on_identical_poses_gives_zero_errors(tmp_path):
    rng = np.random.default_rng(11)
    gt = random_cam_to_world(rng, 8)
    pose_file, gt_glob = write_dataset(tmp_path, gt, gt, confidence=0.0)
    summary = run_cli_json(tmp_path, pose_file, gt_glob, "--estimate_alignment", "False", "--verbose")
    assert summary["alignment"]["method"] == "identity"
    assert summary["accuracy_percent"] == 100.0
    assert max(f["rot_err_deg"] for f in summary["frames"]) < 1e-6
    assert max(f["trans_err"] for f in summary["frames"]) < 1e-9


def test_cli_prints_summary(tmp_path):
    rng = np.random.default_rng(12)
    gt = random_cam_to_world(rng, 12)
    pose_file, gt_glob = write_dataset(tmp_path, gt, apply_similarity(gt, *random_similarity(rng)))
    result = run_cli(pose_file, gt_glob)
    assert result.returncode == 0, result.stderr
    assert "Accuracy: 100.0%" in result.stdout
    assert "Median rotation error" in result.stdout and "Median translation error" in result.stdout


@pytest.mark.skipif(not TEMPLE.exists(), reason="temple data set not available")
def test_temple_gt_against_itself_under_a_random_similarity(tmp_path):
    gt_files = sorted((TEMPLE / "poses").glob("*.pose.txt"))
    gt = np.array([np.loadtxt(f) for f in gt_files])
    est = apply_similarity(gt, *random_similarity(np.random.default_rng(13)))
    entries = [PoseEntry(f"images/{f.name.replace('.pose.txt', '.png')}", invert_pose(p), 1520.0, 2000.0)
               for f, p in zip(gt_files, est)]
    pose_file = tmp_path / "poses.txt"
    write_ace_pose_file(pose_file, entries)
    summary = run_cli_json(tmp_path, pose_file, str(TEMPLE / "poses" / "*.pose.txt"))
    assert summary["num_images"] == len(gt_files)
    assert summary["accuracy_percent"] == 100.0
    assert summary["median_trans_err"] < 1e-6
