"""Tests for the dsacstar extension: P3P, RANSAC accuracy, dense path, determinism, bad input.

Ground truth comes from synthetic correspondences generated with a known pose.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

dsacstar = pytest.importorskip("dsacstar")

FOCAL, PPX, PPY = 525.0, 320.0, 240.0
WIDTH, HEIGHT = 640, 480


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def random_world_to_camera(rng):
    return random_rotation(rng), rng.normal(scale=2.0, size=3)


def cam_to_world(rotation, translation):
    pose = np.eye(4)
    pose[:3, :3] = rotation.T
    pose[:3, 3] = -rotation.T @ translation
    return pose


def back_project(pixels, depth, rotation, translation):
    """World points seen at `pixels` with `depth` by the world-to-camera pose (rotation, translation)."""
    camera_points = np.column_stack([(pixels - [PPX, PPY]) / FOCAL * depth[:, None], depth])
    return (camera_points - translation) @ rotation


def pose_errors(estimate, truth):
    """(rotation error in degrees, camera-centre error in scene units)."""
    cos = (np.trace(estimate[:3, :3].T @ truth[:3, :3]) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))), np.linalg.norm(estimate[:3, 3] - truth[:3, 3])


def synthetic_correspondences(seed=0, n=4800, outlier_ratio=0.5, noise_px=1.0):
    rng = np.random.default_rng(seed)
    rotation, translation = random_world_to_camera(rng)
    pixels = np.column_stack([rng.uniform(0, WIDTH, n), rng.uniform(0, HEIGHT, n)])
    depth = rng.uniform(2.0, 10.0, n)
    world = back_project(pixels, depth, rotation, translation)
    observed = pixels + rng.normal(scale=noise_px, size=pixels.shape)
    outliers = rng.random(n) < outlier_ratio
    observed[outliers] = np.column_stack([rng.uniform(0, WIDTH, outliers.sum()), rng.uniform(0, HEIGHT, outliers.sum())])
    return world, observed, cam_to_world(rotation, translation), outliers


def synthetic_map(seed=0, height=60, width=80, stride=8, inlier_ratio=0.5):
    """Scene-coordinate map (3, H, W) float32 from back-projecting the cell centres."""
    rng = np.random.default_rng(seed)
    rotation, translation = random_world_to_camera(rng)
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([stride * xs + stride / 2, stride * ys + stride / 2], -1).reshape(-1, 2).astype(float)
    depth = rng.uniform(2.0, 10.0, len(pixels))
    world = back_project(pixels + rng.normal(scale=0.5, size=pixels.shape), depth, rotation, translation)
    outliers = rng.random(len(world)) >= inlier_ratio
    world[outliers] += rng.normal(scale=2.0, size=(outliers.sum(), 3))
    return world.T.reshape(3, height, width).astype(np.float32), cam_to_world(rotation, translation)


def estimate(world, pixels, **kwargs):
    return dsacstar.estimate_pose(world, pixels, FOCAL, PPX, PPY, **kwargs)


def forward(scene_coords, **kwargs):
    return dsacstar.forward_rgb(scene_coords, focal=FOCAL, ppx=PPX, ppy=PPY, **kwargs)


# --- minimal solver -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_p3p_recovers_exact_pose(seed):
    rng = np.random.default_rng(100 + seed)
    rotation, translation = random_world_to_camera(rng)
    pixels = np.column_stack([rng.uniform(0, WIDTH, 4), rng.uniform(0, HEIGHT, 4)])
    world = back_project(pixels, rng.uniform(2.0, 10.0, 4), rotation, translation)
    truth = cam_to_world(rotation, translation)

    candidates = dsacstar.solve_p3p(world[:3], pixels[:3], FOCAL, PPX, PPY)
    assert 1 <= len(candidates) <= 4
    assert min(np.abs(c - truth).max() for c in candidates) < 1e-8

    # With exactly 4 points the 4th disambiguates; refinement never runs (needs > 4 inliers).
    inliers, pose = estimate(world, pixels)
    assert inliers == 0
    np.testing.assert_allclose(pose, truth, atol=1e-8)


# --- RANSAC accuracy ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimate_pose_with_outliers_and_noise(seed):
    world, pixels, truth, outliers = synthetic_correspondences(seed)
    inliers, pose = estimate(world, pixels)
    rot_err, trans_err = pose_errors(pose, truth)
    depth_scale = 10.0
    assert rot_err < 0.1
    assert trans_err < 0.005 * depth_scale
    # Roughly every true inlier (1 px noise vs 10 px threshold), plus a few lucky outliers.
    assert 0.95 * (~outliers).sum() <= inliers <= (~outliers).sum() + 0.02 * outliers.sum()
    assert pose.dtype == np.float64 and pose.shape == (4, 4)
    np.testing.assert_allclose(pose[3], [0, 0, 0, 1])


def test_as_accurate_as_opencv():
    world, pixels, truth, _ = synthetic_correspondences(seed=7)
    _, ours = estimate(world, pixels)

    K = np.array([[FOCAL, 0, PPX], [0, FOCAL, PPY], [0, 0, 1]])
    ok, rvec, tvec, _ = cv2.solvePnPRansac(world, pixels, K, None, iterationsCount=1000,
                                           reprojectionError=10.0, flags=cv2.SOLVEPNP_P3P)
    assert ok
    rotation, _ = cv2.Rodrigues(rvec)
    # Same final least-squares step as ours, so the comparison is about the inlier set.
    _, inlier_rows = _inliers(world, pixels, rotation, tvec.ravel(), 10.0)
    ok, rvec, tvec = cv2.solvePnP(world[inlier_rows], pixels[inlier_rows], K, None, rvec, tvec,
                                  useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    rotation, _ = cv2.Rodrigues(rvec)
    theirs = cam_to_world(rotation, tvec.ravel())

    ours_rot, ours_trans = pose_errors(ours, truth)
    cv_rot, cv_trans = pose_errors(theirs, truth)
    assert cv_rot < 0.1 and ours_rot < 0.1
    assert ours_rot <= 1.5 * cv_rot + 1e-3
    assert ours_trans <= 1.5 * cv_trans + 1e-3


def _inliers(world, pixels, rotation, translation, threshold):
    camera = world @ rotation.T + translation
    projected = FOCAL * camera[:, :2] / camera[:, 2:] + [PPX, PPY]
    errors = np.linalg.norm(projected - pixels, axis=1)
    rows = np.flatnonzero((errors < threshold) & (camera[:, 2] > 0))
    return errors, rows


# --- dense path -----------------------------------------------------------------------------------

def test_forward_rgb_on_grid_map():
    scene_coords, truth = synthetic_map(seed=3)
    inliers, pose = forward(scene_coords)
    rot_err, trans_err = pose_errors(pose, truth)
    assert rot_err < 0.1 and trans_err < 0.05
    assert 0.45 * 4800 <= inliers <= 0.55 * 4800


def test_forward_rgb_accepts_batch_dim_and_float64():
    scene_coords, _ = synthetic_map(seed=4)
    reference = forward(scene_coords, num_threads=1)
    for variant in (scene_coords[None], scene_coords.astype(np.float64)):
        inliers, pose = forward(variant, num_threads=1)
        assert inliers == reference[0]
        np.testing.assert_allclose(pose, reference[1], atol=1e-9)


def test_forward_rgb_matches_estimate_pose():
    scene_coords, _ = synthetic_map(seed=5)
    ys, xs = np.mgrid[0:60, 0:80]
    pixels = np.stack([8 * xs + 4, 8 * ys + 4], -1).reshape(-1, 2).astype(np.float64)
    world = scene_coords.reshape(3, -1).T
    dense = forward(scene_coords, num_threads=1)
    sparse = estimate(world, pixels, num_threads=1)
    assert dense[0] == sparse[0]
    np.testing.assert_allclose(dense[1], sparse[1], atol=1e-12)


# --- determinism ----------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
def test_same_seed_same_result(threads):
    scene_coords, _ = synthetic_map(seed=6, inlier_ratio=0.3)
    a = forward(scene_coords, random_seed=42, num_threads=threads, hypotheses=16)
    b = forward(scene_coords, random_seed=42, num_threads=threads, hypotheses=16)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


def test_seed_changes_sampling():
    # Few hypotheses, one try each: the raw hypotheses differ between seeds.
    world, pixels, _, _ = synthetic_correspondences(seed=8, n=200, outlier_ratio=0.9)
    results = {estimate(world, pixels, hypotheses=1, max_hypotheses_tries=1, random_seed=s,
                        num_threads=1)[1].tobytes() for s in range(5)}
    assert len(results) > 1


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 60), (2, 60, 80), (2, 3, 60, 80), (60, 80, 3), (1, 1, 3, 60, 80)])
def test_forward_rgb_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="scene_coords must have shape"):
        forward(np.zeros(shape, np.float32))


def test_rejects_integer_dtype():
    with pytest.raises(ValueError, match="float32 or float64"):
        forward(np.zeros((3, 60, 80), np.int64))
    world, pixels, _, _ = synthetic_correspondences(n=50)
    with pytest.raises(ValueError, match="float32 or float64"):
        estimate(world.astype(np.int64), pixels)


def test_non_contiguous_input_is_handled():
    scene_coords, truth = synthetic_map(seed=9)
    strided = np.asfortranarray(scene_coords)
    assert not strided.flags.c_contiguous
    sliced = np.repeat(scene_coords, 2, axis=2)[:, :, ::2]
    assert not sliced.flags.c_contiguous
    reference = forward(scene_coords, num_threads=1)
    for variant in (strided, sliced):
        inliers, pose = forward(variant, num_threads=1)
        assert inliers == reference[0]
        np.testing.assert_array_equal(pose, reference[1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(hypotheses=0), "hypotheses"),
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=-1.0), "threshold"),
    (dict(focal=0.0), "focal"),
    (dict(focal=-5.0), "focal"),
    (dict(focal=float("nan")), "focal"),
    (dict(subsampling=0), "subsampling"),
    (dict(num_threads=-1), "num_threads"),
    (dict(max_hypotheses_tries=0), "max_hypotheses_tries"),
])
def test_rejects_bad_parameters(kwargs, message):
    scene_coords, _ = synthetic_map(seed=10)
    args = dict(focal=FOCAL, ppx=PPX, ppy=PPY)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        dsacstar.forward_rgb(scene_coords, **args)


def test_intrinsics_are_required():
    with pytest.raises(ValueError, match="focal, ppx and ppy are required"):
        dsacstar.forward_rgb(np.zeros((3, 4, 4), np.float32))


def test_estimate_pose_rejects_mismatched_shapes():
    world, pixels, _, _ = synthetic_correspondences(n=50)
    with pytest.raises(ValueError, match="points3d must have shape"):
        estimate(world[:, :2], pixels)
    with pytest.raises(ValueError, match="pixels must have shape"):
        estimate(world, pixels.T)
    with pytest.raises(ValueError, match="same number of rows"):
        estimate(world, pixels[:-1])


def test_nan_and_inf_points_are_ignored():
    world, pixels, truth, _ = synthetic_correspondences(seed=11, n=2000, outlier_ratio=0.3)
    clean = estimate(world, pixels, num_threads=1)
    rng = np.random.default_rng(0)
    bad_world = np.vstack([world, np.full((300, 3), np.nan), rng.normal(size=(300, 3))])
    bad_world[np.arange(2300, 2600), rng.integers(0, 3, 300)] = np.inf  # one coordinate per row
    bad_pixels = np.vstack([pixels, rng.uniform(0, 400, (300, 2)), rng.uniform(0, 400, (300, 2))])
    bad_pixels[2000:2010] = np.nan
    dirty = estimate(bad_world, bad_pixels, num_threads=1)
    assert dirty[0] == clean[0]
    np.testing.assert_array_equal(dirty[1], clean[1])

    scene_coords, truth = synthetic_map(seed=12)
    scene_coords[:, :30] = np.nan
    scene_coords[0, 40:, :10] = np.inf
    inliers, pose = forward(scene_coords)
    rot_err, trans_err = pose_errors(pose, truth)
    assert rot_err < 0.1 and trans_err < 0.05
    assert 0 < inliers <= 30 * 80 - 20 * 10


@pytest.mark.parametrize("n", [0, 1, 3])
def test_too_few_points_gives_identity(n):
    world, pixels, _, _ = synthetic_correspondences(n=10)
    inliers, pose = estimate(world[:n], pixels[:n])
    assert inliers == 0
    np.testing.assert_array_equal(pose, np.eye(4))


def test_all_nan_map_gives_identity():
    inliers, pose = forward(np.full((3, 60, 80), np.nan, np.float32))
    assert inliers == 0
    np.testing.assert_array_equal(pose, np.eye(4))


def test_degenerate_points_do_not_crash():
    # All world points identical: P3P never produces a pose.
    inliers, pose = estimate(np.ones((100, 3)), np.random.default_rng(0).uniform(0, 400, (100, 2)),
                             max_hypotheses_tries=50)
    assert inliers == 0
    np.testing.assert_array_equal(pose, np.eye(4))


def test_help_documents_api():
    text = dsacstar.__doc__ + dsacstar.forward_rgb.__doc__ + dsacstar.estimate_pose.__doc__
    for word in ("forward_rgb", "cam_to_world", "num_threads", "subsampling", "GIL"):
        assert word in text


def test_gil_is_released():
    import threading
    import time

    scene_coords, _ = synthetic_map(seed=13, inlier_ratio=0.3)
    finished = threading.Event()

    def work():
        forward(scene_coords, hypotheses=1000, num_threads=1)
        finished.set()

    worker = threading.Thread(target=work)
    worker.start()
    ticks = 0
    while not finished.is_set():  # only advances while the extension does not hold the GIL
        ticks += 1
        time.sleep(0.001)
    worker.join()
    assert ticks > 5


def test_separate_focal_y_recovers_the_pose():
    """Pixels made with fx != fy: passing focal_y recovers the pose exactly; the single focal does not."""
    rng = np.random.default_rng(7)
    rotation, translation = random_world_to_camera(rng)
    fx, fy = 525.0, 560.0
    pixels = np.column_stack([rng.uniform(0, WIDTH, 500), rng.uniform(0, HEIGHT, 500)])
    depth = rng.uniform(2.0, 10.0, 500)
    camera_points = np.column_stack([(pixels[:, 0] - PPX) / fx * depth, (pixels[:, 1] - PPY) / fy * depth, depth])
    world = (camera_points - translation) @ rotation
    truth = cam_to_world(rotation, translation)
    inliers, pose = dsacstar.estimate_pose(world, pixels, fx, PPX, PPY, focal_y=fy)
    assert inliers == 500 and max(pose_errors(pose, truth)) < 1e-6
    candidates = dsacstar.solve_p3p(world[:3], pixels[:3], fx, PPX, PPY, focal_y=fy)
    assert min(np.abs(c - truth).max() for c in candidates) < 1e-6
    _, square = dsacstar.estimate_pose(world, pixels, fx, PPX, PPY)
    assert max(pose_errors(square, truth)) > 1e-3
    with pytest.raises(ValueError, match="focal_y"):
        dsacstar.estimate_pose(world, pixels, fx, PPX, PPY, focal_y=-1.0)
