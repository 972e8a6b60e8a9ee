"""benchmarks/bench_reconstruction.py without running ACE0 or COLMAP: the pose conversion, the evaluation of a
COLMAP-style pose file with a missing image, the table's ratio, the log profile and the missing-pycolmap error."""
from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from benchmarks import bench_reconstruction as bench
from cli_common import UserError
import dataset_io


def rotation_z(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_pycolmap_poses_read_as_world_to_camera():
    pycolmap = pytest.importorskip("pycolmap")
    rotation = rotation_z(30)
    translation = np.array([0.1, -0.2, 0.3])

    class Image:
        name = "a.png"
        camera = type("Camera", (), {"mean_focal_length": lambda self: 512.0})()

        def cam_from_world(self):
            return pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), translation)

    class Reconstruction:
        def reg_image_ids(self):
            return [7]

        def image(self, image_id):
            assert image_id == 7
            return Image()

    poses = bench.reconstruction_poses(Reconstruction())
    world_to_cam, focal = poses["a.png"]
    np.testing.assert_allclose(world_to_cam[:3, :3], rotation, atol=1e-12)
    np.testing.assert_allclose(world_to_cam[:3, 3], translation, atol=1e-12)
    assert focal == 512.0


def test_colmap_pose_file_with_a_missing_image_evaluates(tmp_path):
    # Four cameras on a circle; COLMAP "registered" three of them in a frame scaled by 2 and turned 40 deg.
    names = [f"{i:04d}.png" for i in range(4)]
    gt = []
    for i, name in enumerate(names):
        c2w = np.eye(4)
        c2w[:3, :3] = rotation_z(20 * i)
        c2w[:3, 3] = [np.cos(i), np.sin(i), 0.1 * i]
        gt.append(c2w)
        np.savetxt(tmp_path / f"{name[:-4]}.pose.txt", c2w)
    frame = np.eye(4)
    frame[:3, :3] = rotation_z(40) * 2.0
    registered = {}
    for name, c2w in zip(names[:3], gt):
        moved = frame @ c2w
        moved[:3, :3] /= 2.0   # a rotation again
        registered[name] = (dataset_io.invert_pose(moved), 600.0)
    entries = bench.colmap_entries([tmp_path / n for n in names], registered)
    assert [e.confidence for e in entries] == [bench.COLMAP_CONFIDENCE] * 3 + [bench.MISSING_CONFIDENCE]
    assert entries[3].focal == 600.0
    pose_file = tmp_path / "poses_colmap.txt"
    dataset_io.write_ace_pose_file(pose_file, entries)
    summary = bench.evaluate(str(pose_file), str(tmp_path / "*.pose.txt"), 0.05, 5.0,
                             bench.COLMAP_CONFIDENCE - 1, tmp_path / "eval.json")
    assert summary["num_registered"] == 3 and summary["num_images"] == 4
    assert summary["num_accurate"] == 3
    assert summary["alignment"]["scale"] == pytest.approx(2.0, rel=1e-6)
    assert summary["focal"] == 600.0
    assert (tmp_path / "eval.txt").read_text().startswith("Alignment")


def summary_of(registered: int, rot: float | None) -> dict:
    return {"num_registered": registered, "num_images": 19, "median_rot_err_deg": rot, "median_trans_err": 0.004,
            "accuracy_percent": 100.0 * registered / 19, "thresh_t": 0.02, "thresh_r_deg": 2.0, "focal": 1520.0}


def test_table_ratio_is_ace_time_over_each_colmap_time():
    results = [{"method": "ACE0", "seconds": 900.0, "summary": summary_of(19, 1.1)},
               {"method": "COLMAP sequential", "seconds": 15.0, "summary": summary_of(19, 0.8)},
               {"method": "COLMAP exhaustive", "seconds": 30.0, "summary": summary_of(10, None)}]
    rows = bench.result_rows(results)
    assert rows[0][6] == "within 0.02 / 2 deg"
    assert rows[1][:3] == ("ACE0", "15.0 min", "-")
    assert rows[2][1:5] == ("15 s", "60.0", "19/19", "0.80 deg")
    assert rows[3][2] == "30.0" and rows[3][4] == "-"
    table = bench.markdown_table(rows)
    assert table.count("\n") == 4 and table.splitlines()[1].startswith("| --- |")
    # COLMAP only: no ratio
    assert bench.result_rows(results[1:])[1][2] == "-"


LOG = """\
10:00:00 INFO seed augmentation: shift 0.25, viewpoints up to 30 deg, 100 views
10:00:00 INFO running train_ace.py x/*.png out/iteration0_seed0.pt
10:00:05 INFO device cpu, encoder xfeat
10:00:20 INFO buffer filled in 14.0 s
10:01:30 INFO mapping done: 3000 iterations in 84.0 s, final inlier fraction 0.60
10:01:32 INFO stage train_ace.py iteration0_seed0 took 92.0 s
10:01:32 INFO running register_mapping.py x/*.png out/iteration0_seed0.pt --session iteration0_seed0_fastcheck
10:01:36 INFO registering 10 image(s)
10:01:40 INFO stage register_mapping.py iteration0_seed0_fastcheck took 8.0 s
progress bar without a time stamp
10:01:40 INFO running train_ace.py x/*.png out/iteration1.pt
10:01:44 INFO buffer filled in 3.0 s
10:02:44 INFO mapping done: 3000 iterations in 62.0 s, final inlier fraction 0.70
10:02:45 INFO stage train_ace.py iteration1 took 65.0 s
10:02:45 INFO running bundle_adjust.py a b
10:02:48 INFO 10 of 12 image pairs verified
10:03:00 INFO stage bundle_adjust.py poses_iteration1_adjusted took 15.0 s
10:03:01 INFO done in 3.0 min
"""


def test_profile_from_an_ace_zero_log():
    profile = bench.parse_profile(LOG.splitlines())
    assert profile.total == 181.0
    assert profile.stages["seed mapping"] == 92.0 and profile.stages["seed: buffer fill"] == 14.0
    assert profile.stages["seed: training"] == 70.0
    assert profile.stages["seed scoring (registration)"] == 8.0
    assert profile.stages["mapping rounds"] == 65.0 and profile.stages["rounds: training"] == 59.0
    assert profile.stages["bundle adjustment"] == 15.0
    assert profile.stages["process start"] == 5 + 4 + 4 + 3 and profile.counts["process start"] == 4
    table = bench.profile_table(profile)
    assert "| ace_zero.py itself (total minus stages) |  | 1 |  |" in table
    assert "unfinished stage" not in profile.stages


def test_profile_only_mode(tmp_path, capsys):
    log = tmp_path / "ace_zero.log"
    log.write_text(LOG)
    assert bench.main(["--profile_log", str(log)]) == {}
    assert "| seed: training | 1 | 70 | 39 % |" in capsys.readouterr().out
    with pytest.raises(UserError, match="DATA_DIR"):
        bench.parse_args([])
    with pytest.raises(UserError, match="no such file"):
        bench.main(["--profile_log", str(tmp_path / "missing.log")])


def test_profile_across_midnight():
    lines = ["23:59:58 INFO running train_ace.py a", "00:00:03 INFO first", "00:00:10 INFO end"]
    profile = bench.parse_profile(lines)
    assert profile.total == 12.0 and profile.stages["process start"] == 5.0
    assert profile.stages["unfinished stage"] == 12.0   # still running at the end of the log


def test_missing_pycolmap_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycolmap", None)   # import pycolmap raises ImportError
    with pytest.raises(UserError, match=r"pip install -r requirements-bench.txt"):
        bench.import_pycolmap()
    with pytest.raises(UserError, match=r"pip install -r requirements-bench.txt"):
        bench.main(["/nonexistent", "--skip_ace", "--colmap", "sequential"])


def test_unknown_matcher_is_refused():
    with pytest.raises(UserError, match="unknown matcher"):
        bench.parse_args(["data", "--colmap", "vocab"])


def test_scaling_table_and_plot(tmp_path):
    """benchmarks/bench_scaling.py: seconds per image in the table, and one line per method in the PNG, drawn in
    that method's colour through its points (log axes: the slower method lies higher)."""
    from benchmarks import bench_scaling
    summary = {"median_rot_err_deg": 0.5, "median_trans_err": 0.01, "num_registered": 48, "num_images": 48,
               "accuracy_percent": 100.0}
    rows = [{"views": n, "method": m, "seconds": s, "summary": summary}
            for n, m, s in [(48, "ACE0", 480.0), (96, "ACE0", 600.0), (48, "COLMAP exhaustive", 48.0),
                            (96, "COLMAP exhaustive", 192.0)]]
    table = bench_scaling.scaling_rows(rows)
    assert table[1][:4] == ("48", "ACE0", "8.0 min", "10.00") and table[4][3] == "2.00"
    path = tmp_path / "scaling.png"
    bench_scaling.plot_time_per_image(rows, path)
    image = cv2.imread(str(path))
    assert image.shape[:2] == bench_scaling.PLOT_SIZE[::-1]

    def rows_in_colour(method):
        mask = np.all(np.abs(image.astype(int) - bench_scaling.METHOD_COLOURS[method]) < 30, axis=2)
        return np.nonzero(mask[:, : bench_scaling.PLOT_SIZE[0] - 250])[0]  # left of the legend
    ace, colmap = rows_in_colour("ACE0"), rows_in_colour("COLMAP exhaustive")
    assert len(ace) and len(colmap) and ace.mean() < colmap.mean()  # 10 and 6.25 s / image above 1 and 2


def test_scaling_views_are_checked():
    from benchmarks import bench_scaling
    with pytest.raises(UserError, match="--views"):
        bench_scaling.parse_args(["--views", "48,abc"])
    with pytest.raises(UserError, match="at least 3"):
        bench_scaling.parse_args(["--views", "2"])
