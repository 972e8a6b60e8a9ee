"""Shared fixtures: a small synthetic scene rendered by the project itself, and a head mapped on it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ORBIT_IMAGES = 16
ORBIT_SIZE = (640, 480)
ORBIT_FOCAL = 525.0


def run_cli(script: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    """Run one of the project's scripts as a user would."""
    result = subprocess.run([sys.executable, str(REPO / script), *[str(a) for a in args]], cwd=REPO,
                            capture_output=True, text=True)
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
