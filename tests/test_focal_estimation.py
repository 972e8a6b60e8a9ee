"""Focal self-calibration from fundamental matrices (focal_estimation.py) and how ace_zero.py starts from it."""
import argparse

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import ace_zero
import dataset_io
import focal_estimation
from ace_network import load_encoder
from conftest import ORBIT_FOCAL, ORBIT_SIZE
from verify_poses import skew


def _fundamental(focal: float, cx: float, cy: float, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """F of two pinhole cameras x2 ~ K [R | t] X, x1 ~ K [I | 0] X, from its definition K^-T [t]x R K^-1."""
    K_inv = np.linalg.inv(np.array([[focal, 0, cx], [0, focal, cy], [0, 0, 1.0]]))
    F = K_inv.T @ skew(translation) @ rotation @ K_inv
    return F / np.linalg.norm(F)


def _random_pairs(count: int, rng: np.random.Generator):
    for _ in range(count):
        rotation = Rotation.from_rotvec(rng.normal(size=3) * np.radians(8)).as_matrix()
        yield rotation, rng.normal(size=3)


def test_exact_fundamentals_give_the_true_focal():
    """Fundamental matrices made from known cameras: the cost vanishes at the true focal and nowhere else near."""
    rng = np.random.default_rng(0)
    truth, cx, cy = 812.0, 320.0, 240.0
    fundamentals = [_fundamental(truth, cx, cy, R, t) for R, t in _random_pairs(6, rng)]
    assert max(focal_estimation.essential_cost(F, truth, cx, cy) for F in fundamentals) < 1e-9
    estimate = focal_estimation.focal_from_fundamentals(fundamentals, [1.0] * 6, guess=560.0, cx=cx, cy=cy)
    assert estimate.determined
    assert estimate.focal == pytest.approx(truth, rel=2e-3)


def _noisy_fundamentals(focal: float, look_away_deg: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Six pairs of views of 400 points in a 2 m box that fills 60 % of a 640x480 frame: the second camera orbits
    the box by 5-10 deg, each camera turned from the box's centre by look_away_deg (random axes), pixels with
    0.5 px noise; F by OpenCV's 8-point algorithm."""
    points = rng.uniform(-1, 1, size=(400, 3))
    distance = focal * 2 / (0.6 * 640)
    fundamentals = []
    for _ in range(6):
        pixels = []
        for orbit_deg in (0.0, rng.uniform(5, 10) * rng.choice([-1, 1])):
            orbit = Rotation.from_euler("y", orbit_deg, degrees=True).as_matrix()
            aim = Rotation.from_rotvec(rng.normal(size=3) * np.radians(look_away_deg)).as_matrix()
            in_camera = (points @ orbit.T + [0, 0, distance]) @ aim.T
            projected = in_camera[:, :2] / in_camera[:, 2:] * focal + [320, 240]
            pixels.append(projected + rng.normal(scale=0.5, size=projected.shape))
        F, _ = cv2.findFundamentalMat(pixels[0], pixels[1], cv2.FM_8POINT)
        fundamentals.append(F)
    return fundamentals


@pytest.mark.parametrize("truth", [400.0, 800.0, 1500.0])
def test_noisy_views_give_the_focal_within_a_percent(truth):
    fundamentals = _noisy_fundamentals(truth, look_away_deg=5.0, rng=np.random.default_rng(2))
    estimate = focal_estimation.focal_from_fundamentals(fundamentals, [1.0] * 6, guess=560.0, cx=320.0, cy=240.0)
    assert estimate.determined
    assert estimate.focal == pytest.approx(truth, rel=0.01)


@pytest.mark.parametrize("truth", [400.0, 1500.0])
def test_optical_axes_through_one_point_leave_the_focal_undetermined(truth):
    """Every camera aimed at the box's centre (a ring of cameras around an object): the known degeneracy of
    focal length from two views. The estimate must be refused, not returned."""
    fundamentals = _noisy_fundamentals(truth, look_away_deg=0.0, rng=np.random.default_rng(2))
    estimate = focal_estimation.focal_from_fundamentals(fundamentals, [1.0] * 6, guess=560.0, cx=320.0, cy=240.0)
    assert not estimate.determined


def test_image_pairs_are_nearby_and_spread():
    pairs = focal_estimation.image_pairs(50)
    assert len(pairs) <= focal_estimation.MAX_PAIRS
    assert {b - a for a, b in pairs} == set(focal_estimation.PAIR_STRIDES)
    assert min(a for a, _ in pairs) == 0 and max(b for _, b in pairs) == 49
    assert focal_estimation.image_pairs(1) == []


def test_rendered_orbit_focal_is_recovered(orbit_scene):
    """The renderer's focal (525 px) from the rendered images alone, starting from the heuristic's 560 px."""
    images = dataset_io.glob_files(str(orbit_scene / "images" / "*.png"))
    cameras = dataset_io.image_cameras(images, log=False)
    assert cameras[0].fx == pytest.approx(0.7 * np.hypot(*ORBIT_SIZE))
    estimate = focal_estimation.estimate_focal(images, cameras, load_encoder("xfeat"), ORBIT_SIZE[1], "cpu")
    assert estimate is not None and estimate.determined
    assert estimate.focal == pytest.approx(ORBIT_FOCAL, rel=0.03)


def _args(tmp_path, focal: float = -1.0, calibration: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(results_folder=tmp_path, calibration_file=calibration, seed_network=None,
                              use_external_focal_length=focal)


def test_the_run_estimates_once_and_resumes_with_the_same_focal(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ace_zero, "estimate_initial_focal", lambda args: calls.append(1) or 1234.5)
    state = ace_zero.RunState("images/*.png")
    assert ace_zero.self_calibrated_focal(_args(tmp_path), state, -1.0) == 1234.5
    resumed = ace_zero.RunState.load_or_create(tmp_path, "images/*.png")
    assert ace_zero.self_calibrated_focal(_args(tmp_path), resumed, -1.0) == 1234.5
    assert calls == [1]


@pytest.mark.parametrize("focal, calibration", [(1520.0, None), (-1.0, "cameras.txt")])
def test_a_known_focal_is_not_estimated(tmp_path, monkeypatch, focal, calibration):
    monkeypatch.setattr(ace_zero, "estimate_initial_focal", lambda args: pytest.fail("estimated a known focal"))
    state = ace_zero.RunState("images/*.png")
    assert ace_zero.self_calibrated_focal(_args(tmp_path, focal, calibration), state, focal) == focal


def test_a_run_begun_without_the_flag_is_not_estimated_on_resume(tmp_path, monkeypatch):
    """Its seed was mapped with the guess: a new starting focal would disagree with the seed's registration."""
    monkeypatch.setattr(ace_zero, "estimate_initial_focal", lambda args: pytest.fail("estimated on resume"))
    state = ace_zero.RunState("images/*.png", seed_id="iteration0_seed1")
    assert ace_zero.self_calibrated_focal(_args(tmp_path), state, -1.0) == -1.0
