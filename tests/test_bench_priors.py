"""benchmarks/bench_priors.py without running ACE0: which pose files of a run it scores, the scale and errors it
reports for a reconstruction that is an exact similarity of the ground truth, and its flag errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import dataset_io
from benchmarks import bench_priors as bench
from cli_common import UserError


def orbit_cam_to_world(count: int) -> list[np.ndarray]:
    """Cameras on a circle of radius 2 looking at the origin (OpenCV axes)."""
    poses = []
    for angle in np.linspace(0, np.pi, count):
        centre = np.array([2 * np.sin(angle), 0.3 * np.cos(3 * angle), -2 * np.cos(angle)])
        z = -centre / np.linalg.norm(centre)
        x = np.cross([0.0, 1.0, 0.0], z)
        x /= np.linalg.norm(x)
        pose = np.eye(4)
        pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
        pose[:3, 3] = centre
        poses.append(pose)
    return poses


def write_scene(folder, count: int, scale: float) -> None:
    """Ground truth in folder/poses and a pose file that is the ground truth seen through a similarity."""
    (folder / "poses").mkdir(parents=True)
    rotation = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()
    entries = []
    for k, gt in enumerate(orbit_cam_to_world(count)):
        np.savetxt(folder / "poses" / f"{k:03d}.pose.txt", gt)
        estimate = np.eye(4)
        estimate[:3, :3] = rotation @ gt[:3, :3]
        estimate[:3, 3] = scale * rotation @ gt[:3, 3] + [0.5, -1.0, 2.0]
        entries.append(dataset_io.PoseEntry(f"images/{k:03d}.png", dataset_io.invert_pose(estimate), 500.0, 2000.0))
    dataset_io.write_ace_pose_file(folder / "poses_final.txt", entries)


def test_score_reports_the_similarity_scale_and_zero_error(tmp_path):
    write_scene(tmp_path, 12, scale=0.4)
    row = bench.score(tmp_path / "poses_final.txt", tmp_path, 1000, 0.05, 5.0)
    assert row["registered"] == row["images"] == 12
    assert row["scale"] == pytest.approx(0.4, rel=1e-6)
    assert row["median_rot_deg"] == pytest.approx(0.0, abs=1e-4)
    assert row["median_trans"] == pytest.approx(0.0, abs=1e-6)
    assert row["accuracy_percent"] == 100.0


def test_score_refuses_a_pose_count_that_does_not_match(tmp_path):
    write_scene(tmp_path, 12, scale=1.0)
    (tmp_path / "poses" / "000.pose.txt").unlink()
    with pytest.raises(UserError, match="12 poses but 11 files"):
        bench.score(tmp_path / "poses_final.txt", tmp_path, 1000, 0.05, 5.0)


def test_stage_files_are_the_last_registration_before_and_after_adjustment(tmp_path):
    (tmp_path / "ace_zero_state.json").write_text(json.dumps({"completed": ["iteration0_seed1", "iteration3"]}))
    for name in ("poses_iteration0_seed1.txt", "poses_iteration3.txt", "poses_iteration3_adjusted.txt",
                 "poses_final.txt"):
        (tmp_path / name).write_text("")
    files = bench.stage_files(tmp_path)
    assert [p.name for p in files.values()] == ["poses_iteration3.txt", "poses_iteration3_adjusted.txt",
                                                "poses_final.txt"]
    (tmp_path / "poses_iteration3_adjusted.txt").unlink()  # a run without the adjustment
    assert list(bench.stage_files(tmp_path)) == ["before adjustment", "final"]
    for name in ("poses_iteration3_gated.txt", "poses_iteration3_gated_adjusted.txt"):  # a run with the gate
        (tmp_path / name).write_text("")
    assert [p.name for p in bench.stage_files(tmp_path).values()] == [
        "poses_iteration3_gated.txt", "poses_iteration3_gated_adjusted.txt", "poses_final.txt"]


def test_flag_errors(tmp_path):
    with pytest.raises(UserError, match="unknown foo"):
        bench.parse_args(["demo", "--results", str(tmp_path), "--variants", "dsac*,foo"])
    with pytest.raises(UserError, match="needs images/ and poses/"):
        bench.prepare_data(str(tmp_path), tmp_path / "out")
    args, extra = bench.parse_args(["demo", "--results", str(tmp_path), "--try_seeds", "1"])
    assert args.conf_threshold == 150 and extra == ["--try_seeds", "1"]
