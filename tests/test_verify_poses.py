"""verify_poses.py: the geometry against OpenCV, and the verdict on rendered views with true and wrong poses."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import dataset_io
import verify_poses
from calibration import Intrinsics
from conftest import ORBIT_FOCAL, ORBIT_SIZE, run_cli

# two different cameras: the check takes each image's own intrinsics
FIRST_CAMERA = Intrinsics(500.0, 500.0, 320.0, 240.0, 640, 480)
SECOND_CAMERA = Intrinsics(620.0, 610.0, 380.0, 290.0, 800, 600)


def _random_pair(rng):
    first, second = np.eye(4), np.eye(4)
    second[:3, :3] = Rotation.from_rotvec(rng.normal(size=3) * 0.1).as_matrix()
    second[:3, 3] = [0.5, 0.1, -0.05]
    K1, K2 = FIRST_CAMERA.matrix(), SECOND_CAMERA.matrix()
    points = rng.uniform([-2, -1.5, 4], [2, 1.5, 8], size=(50, 3))
    def project(pose, K):
        in_camera = points @ pose[:3, :3].T + pose[:3, 3]
        pixels = in_camera @ K.T
        return pixels[:, :2] / pixels[:, 2:], in_camera[:, 2]
    (x1, z1), (x2, z2) = project(first, K1), project(second, K2)
    return first, second, K1, K2, x1, x2, z1, z2


def test_sampson_distance_matches_opencv():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(3, 3))
    x1, x2 = rng.uniform(0, 640, size=(20, 2)), rng.uniform(0, 480, size=(20, 2))
    ours = verify_poses.sampson_distance(F, x1, x2)
    h1, h2 = np.c_[x1, np.ones(20)], np.c_[x2, np.ones(20)]
    theirs = np.array([cv2.sampsonDistance(a[:, None], b[:, None], F) for a, b in zip(h1, h2)])
    np.testing.assert_allclose(ours ** 2, theirs, rtol=1e-9)


def test_triangulated_depths_are_the_true_depths():
    first, second, K1, K2, x1, x2, z1, z2 = _random_pair(np.random.default_rng(1))
    R, t = verify_poses.relative_pose(first, second)
    s, u = verify_poses.depths_in_both(R, t, K1, K2, x1, x2)
    np.testing.assert_allclose(s, z1, rtol=1e-6)
    np.testing.assert_allclose(u, z2, rtol=1e-6)


def test_pair_agreement_true_mirrored_and_rotated():
    first, second, K1, K2, x1, x2, *_ = _random_pair(np.random.default_rng(2))
    assert verify_poses.pair_agreement(first, second, K1, K2, x1, x2, 4.0) == 1.0
    # The second image read with the first's camera (one shared camera, as the original assumes) disagrees.
    assert verify_poses.pair_agreement(first, second, K1, K1, x1, x2, 4.0) < 0.5
    # The same epipolar lines with the cameras swapped round (points behind them) explain nothing.
    mirrored = second.copy()
    mirrored[:3, 3] *= -1
    mirrored[:3, :3] = second[:3, :3]
    assert verify_poses.pair_agreement(first, mirrored, K1, K2, x1, x2, 4.0) < 0.2
    wrong = second.copy()
    wrong[:3, :3] = Rotation.from_rotvec([0, 0.4, 0]).as_matrix() @ second[:3, :3]
    assert verify_poses.pair_agreement(first, wrong, K1, K2, x1, x2, 4.0) < 0.2


def _gt_pose_file(scene, path, wrong: set[int]):
    images = sorted(scene.glob("images/*.png"))
    entries = []
    for k, image in enumerate(images):
        cam_to_world = dataset_io.load_cam_to_world(str(scene / "poses" / f"{image.stem}.pose.txt"))
        if k in wrong:  # a registration 30 deg off, as on a weakly textured object
            cam_to_world[:3, :3] = cam_to_world[:3, :3] @ Rotation.from_rotvec([0, np.radians(30), 0]).as_matrix()
        entries.append(dataset_io.PoseEntry(str(image), dataset_io.invert_pose(cam_to_world), ORBIT_FOCAL, 2500))
    dataset_io.write_ace_pose_file(path, entries)
    return entries


@pytest.mark.slow  # the verification's bundle adjustment
def test_wrong_images_fall_below_the_threshold(orbit_scene, tmp_path):
    """On the rendered orbit, images with a wrong rotation lose their confidence; the true ones keep theirs."""
    wrong = {3, 9}
    _gt_pose_file(orbit_scene, tmp_path / "in.txt", wrong)
    run_cli("verify_poses.py", tmp_path / "in.txt", tmp_path / "out.txt", "--device", "cpu", "--check_focal", "False")
    result = dataset_io.read_ace_pose_file(tmp_path / "out.txt")
    confidences = [e.confidence for e in sorted(result, key=lambda e: e.path)]
    assert all(c < 1000 for k, c in enumerate(confidences) if k in wrong)
    assert all(c == 2500 for k, c in enumerate(confidences) if k not in wrong)
    report = json.loads((tmp_path / "out.verification.json").read_text())
    assert report["summary"]["unreliable"] == len(wrong) and not report["summary"]["failed"]


@pytest.mark.slow  # feature extraction and matching
def test_images_the_adjustment_rejects_fall_below_the_threshold(orbit_scene, tmp_path):
    """Poses adjusted already (--adjust False): the shares of observations that bundle_adjust.py kept, read from
    the file beside the poses, flag an image under half, even though its pose (the true one here) agrees with
    every pair; the others keep their confidence."""
    entries = _gt_pose_file(orbit_scene, tmp_path / "in.txt", set())
    from bundle_adjust import kept_fractions_beside, write_kept_fractions
    write_kept_fractions(tmp_path / "in.txt", entries, np.array([0.2 if k == 5 else 0.95 for k in range(len(entries))]))
    assert kept_fractions_beside(tmp_path / "in.txt").is_file()
    run_cli("verify_poses.py", tmp_path / "in.txt", tmp_path / "out.txt", "--device", "cpu", "--adjust", "False",
            "--check_focal", "False")
    confidences = [e.confidence for e in sorted(dataset_io.read_ace_pose_file(tmp_path / "out.txt"),
                                                key=lambda e: e.path)]
    assert confidences[5] < 1000 and all(c == 2500 for k, c in enumerate(confidences) if k != 5)
    report = json.loads((tmp_path / "out.verification.json").read_text())
    assert [i["reason"] for i in report["images"] if not i["reliable"]] == [
        "the bundle adjustment rejects 80% of its feature observations"]


@pytest.mark.slow  # four bundle adjustments
def test_poses_mapped_with_a_wrong_focal_are_flagged(orbit_scene, tmp_path):
    """The orbit adjusted with its focal held 1.6x too long: a distorted reconstruction that fits its own tracks.
    The focal check's free starts find the true focal (the renderer's) and every image is flagged for it; the
    true poses with the true focal pass it."""
    wrong_focal = ORBIT_FOCAL * 1.6
    entries = _gt_pose_file(orbit_scene, tmp_path / "true.txt", set())[::2]  # 8 views: faster, still wide
    dataset_io.write_ace_pose_file(tmp_path / "true.txt", entries)
    dataset_io.write_ace_pose_file(tmp_path / "long.txt", [
        dataset_io.PoseEntry(e.path, e.world_to_cam, wrong_focal, e.confidence) for e in entries])
    common = ["--device", "cpu", "--feature_cache", tmp_path / "features"]
    run_cli("bundle_adjust.py", tmp_path / "long.txt", tmp_path / "distorted.txt", *common, "--refine_focal", "False")
    for name, flagged in (("distorted", True), ("true", False)):
        run_cli("verify_poses.py", tmp_path / f"{name}.txt", tmp_path / f"{name}_out.txt", *common, "--adjust", "False")
        report = json.loads((tmp_path / f"{name}_out.verification.json").read_text())
        focal_check = report["summary"]["focal_check"]
        reasons = [i["reason"] for i in report["images"]]
        if flagged:
            assert all("mapped with a wrong focal" in r for r in reasons) and report["summary"]["failed"]
            assert focal_check["focal"] == pytest.approx(wrong_focal)
            assert any(p["focal"] == pytest.approx(ORBIT_FOCAL, rel=0.05) and p["error_ratio"] > 1.5
                       for p in focal_check["probes"])
            assert focal_check["better_focal"] == pytest.approx(ORBIT_FOCAL, rel=0.05)
        else:
            assert report["summary"]["unreliable"] == 0
            assert all(p["error_ratio"] < 1.08 for p in focal_check["probes"])
            assert focal_check["better_focal"] is None
    # ace_zero.py --recover_focal: the distorted poses adjusted again from the focal the check found come back to
    # the truth and pass the check
    import ace_zero
    from eval_poses import evaluate
    args = ace_zero.build_parser().parse_args([str(orbit_scene / "images" / "*.png"), str(tmp_path / "run"),
                                               "--device", "cpu", "--registration_confidence", "1000"])
    (tmp_path / "run").mkdir()
    recovered = ace_zero.recover_focal(args, tmp_path / "distorted.txt", tmp_path / "distorted_out.txt")
    assert recovered.name == "distorted_focal_recovery_adjusted_verified.txt"
    truth = [e.cam_to_world for e in entries]
    errors = {name: evaluate(dataset_io.read_ace_pose_file(path), truth, conf_threshold=1000, thresh_t=0.05,
                             thresh_r=5.0)["median_rot_err_deg"]
              for name, path in (("distorted", tmp_path / "distorted.txt"), ("recovered", recovered))}
    print("median rotation error, distorted -> recovered:", errors)
    assert errors["recovered"] < 0.5 * errors["distorted"]
    after = dataset_io.read_ace_pose_file(recovered)
    assert after[0].focal == pytest.approx(ORBIT_FOCAL, rel=0.05) and all(e.confidence >= 1000 for e in after)


def test_unreadable_kept_shares_are_a_clear_error(orbit_scene, tmp_path):
    _gt_pose_file(orbit_scene, tmp_path / "in.txt", set())
    (tmp_path / "in.kept.json").write_text("{not json")
    result = run_cli("verify_poses.py", tmp_path / "in.txt", tmp_path / "out.txt", "--device", "cpu", "--adjust",
                     "False", check=False)
    assert result.returncode == 2 and "in.kept.json" in result.stderr and "Traceback" not in result.stderr


def test_bad_flags_are_clear_errors(tmp_path):
    result = run_cli("verify_poses.py", tmp_path / "in.txt", tmp_path / "out.txt", "--min_agreement", 2, check=False)
    assert result.returncode == 2 and "--min_agreement" in result.stderr
    missing = run_cli("verify_poses.py", tmp_path / "in.txt", tmp_path / "out.txt", check=False)
    assert missing.returncode == 2 and "in.txt" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow  # renders 32 views and matches them all
def test_folded_ring_keeps_one_side_only(tmp_path):
    """A weakly textured object on a full camera ring, reconstructed folded onto itself as ACE0 does with a focal
    length far off (measured: the far side of the ring laid over the near side, 48/48 'registered', median
    91 deg off). The verification keeps at most one side, and what it keeps is right."""
    from datasets.object_ring import render_object_ring
    from datasets.synthetic_scene import RenderingUnavailable
    try:
        scene = render_object_ring(tmp_path / "ring", num_images=32, width=320, height=240, with_depth=False)
    except RenderingUnavailable as error:
        pytest.skip(f"offscreen rendering unavailable: {error}")
    images = sorted(scene.glob("images/*.png"))
    poses = [dataset_io.load_cam_to_world(str(scene / "poses" / f"{p.stem}.pose.txt")) for p in images]
    half = len(images) // 2
    folded = [poses[k % half] for k in range(len(images))]  # the far half placed over the near half
    focal = float((scene / "calibration.txt").read_text().split()[0])
    dataset_io.write_ace_pose_file(tmp_path / "in.txt", [
        dataset_io.PoseEntry(str(p), dataset_io.invert_pose(c), focal, 2000) for p, c in zip(images, folded)])
    run_cli("verify_poses.py", tmp_path / "in.txt", tmp_path / "out.txt", "--device", "cpu", "--adjust", "False",
            "--check_focal", "False")
    kept = [k for k, e in enumerate(sorted(dataset_io.read_ace_pose_file(tmp_path / "out.txt"),
                                           key=lambda e: e.path)) if e.confidence >= 1000]
    assert 0 < len(kept) <= half + 2
    # Either side alone is a correct reconstruction; a mix is not.
    assert all(k < half for k in kept) or all(k >= half for k in kept)
