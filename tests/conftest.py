"""Shared fixtures: a small synthetic scene rendered by the project itself, and a head mapped on it."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ace_util import REPO_ROOT as REPO  # importable: pytest.ini puts the root on sys.path


# Fixtures that train a head or run ACE0: every test using one (directly or through another fixture) is slow.
# Tests that run ACE0, training or the bundle adjustment themselves carry @pytest.mark.slow.
SLOW_FIXTURES = {"orbit_head", "small_ace_map", "reconstruction", "ace0_folder", "seed_head"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a head, renders scenes or runs a script end to end (minutes); "
                                       "`pytest -m 'not slow'` (make test-fast) leaves these out")


# The files with the longest tests, longest first (measured in two workers, 2026-12-05: the from-scratch loop
# 6.0 min, test_ace_zero.py's fixture 4.5 min, the two match-term tests 5.8 min, then 1.5-3 min). Collected
# first so that `make test`'s workers (one file each at a time) start with them and finish together, instead of
# one worker running the last long file alone.
LONGEST_FILES = ("test_ace_zero_scratch.py", "test_ace_zero.py", "test_match_loss.py", "test_bundle_adjust.py",
                 "test_intrinsics.py", "test_verify_poses.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))  # stable: file order kept otherwise


def ring_world_to_cam(count: int = 8, radius: float = 2.0, span: float = np.pi, start: float = 0.0) -> np.ndarray:
    """N x 3 x 4 world-to-camera poses of cameras on a horizontal arc (coplanar centres) from angle `start` over
    `span` radians, all looking at the origin."""
    poses = []
    for angle in np.linspace(start, start + span, count):
        centre = radius * np.array([np.sin(angle), 0.0, -np.cos(angle)])
        forward = -centre / np.linalg.norm(centre)
        right = np.cross([0.0, -1.0, 0.0], forward)
        down = np.cross(forward, right)
        rotation = np.stack([right, down, forward])  # rows: camera axes in world coordinates
        poses.append(np.concatenate([rotation, -(rotation @ centre)[:, None]], axis=1))
    return np.array(poses)


ORBIT_IMAGES = 16
ORBIT_SIZE = (640, 480)
ORBIT_FOCAL = 525.0
# ace_zero.py on the orbit in short CPU rounds (the tests check the loop, not the last digit of accuracy).
ORBIT_LOOP_FLAGS = ["--device", "cpu", "--mapping_iterations", 1200, "--refit_iterations", 1500,
                    "--final_refit_posewait", 500, "--cooldown_iterations", 400, "--iterations_max", 4,
                    "--use_external_focal_length", ORBIT_FOCAL, "--refine_calibration", "False"]


def run_cli(script: str, *args, check: bool = True, threads: int | None = None) -> subprocess.CompletedProcess:
    """Run one of the project's scripts as a user would; `threads` caps its OpenMP threads."""
    from ace_util import script_command
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(script_command(script, args), cwd=REPO, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def orbit_scene(tmp_path_factory) -> Path:
    """16 views (640x480) orbiting a textured pedestal in a textured room, with depth and GT poses."""
    from datasets.synthetic_scene import render_scene
    out = tmp_path_factory.mktemp("orbit_scene")
    return render_scene(out, num_images=ORBIT_IMAGES, width=ORBIT_SIZE[0], height=ORBIT_SIZE[1],
                        focal=ORBIT_FOCAL, seed=3, trajectory="orbit", yaw_step_deg=6.0)


@pytest.fixture(scope="session")
def orbit_head(orbit_scene, tmp_path_factory) -> Path:
    """A head mapped with ground-truth poses on the even-numbered orbit views."""
    out = tmp_path_factory.mktemp("orbit_head") / "map.pt"
    run_cli("train_ace.py", f"{orbit_scene}/images/*[02468].png", out,
            "--pose_files", f"{orbit_scene}/poses/*[02468].pose.txt",
            "--use_external_focal_length", ORBIT_FOCAL, "--image_resolution", ORBIT_SIZE[1],
            "--iterations", 1500, "--device", "cpu")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Exporter tests (tests/test_exports.py)

@dataclass(frozen=True)
class SyntheticAceMap:
    """A rendered synthetic scene and an ACE head mapped from its ground-truth poses."""
    scene: Path              # images/, poses/ (4x4 cam-to-world), depth/, calibration.txt
    map_file: Path           # the head (.pt)
    pose_file: Path          # poses_map_preliminary.txt: ACE pose file of the mapping images, confidence inf
    focal: float
    width: int
    height: int
    image_resolution: int    # network input short side the head was trained with (= the image height)


SMALL_SCENE_SIZE = (320, 240)
SMALL_SCENE_FOCAL = 262.5


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory) -> Path:
    """4 rendered 320x240 views of the synthetic room with GT poses and depth."""
    from datasets.synthetic_scene import RenderingUnavailable, render_scene
    root = tmp_path_factory.mktemp("small_scene")
    try:
        return render_scene(root / "scene", num_images=4, width=SMALL_SCENE_SIZE[0], height=SMALL_SCENE_SIZE[1],
                            focal=SMALL_SCENE_FOCAL, seed=0)
    except RenderingUnavailable as error:
        pytest.skip(f"offscreen rendering unavailable: {error}")


@pytest.fixture(scope="session")
def small_ace_map(small_scene, tmp_path_factory) -> SyntheticAceMap:
    """A small head trained on the 4 views of small_scene with GT poses and depth (~25 s on 2 CPU cores).
    Depth supervision makes the points metric: with 4 nearby views, reprojection alone leaves the depth along
    each ray ambiguous."""
    (width, height), focal, scene = SMALL_SCENE_SIZE, SMALL_SCENE_FOCAL, small_scene
    map_file = tmp_path_factory.mktemp("small_ace_map") / "out" / "map.pt"
    # One torch thread: with other processes on few cores, OpenMP spin-waiting makes training ~10x slower.
    run_cli("train_ace.py", f"{scene}/images/*.png", map_file, "--pose_files", f"{scene}/poses/*.txt",
            "--depth_files", f"{scene}/depth/*.png", "--use_external_focal_length", focal,
            "--image_resolution", height, "--iterations", 700, "--max_dataset_passes", 4, "--batch_size", 1024,
            "--use_aug", "False", "--device", "cpu", threads=1)
    return SyntheticAceMap(scene, map_file, map_file.parent / "poses_map_preliminary.txt", focal, width, height,
                           height)
