"""Full intrinsics downstream: registration and mapping with off-centre principal points and images of
several sizes, on the rendered orbit scene (crops of a centred render have a known off-centre principal point)."""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dataset
import dataset_io
from conftest import ORBIT_FOCAL, ORBIT_SIZE, run_cli
from eval_poses import evaluate

CROP_WIDTH = 560  # keep columns [0, 560): the principal point (320, 240) is 40 px right of the crop's centre


def _crop(scene: Path, out: Path, pattern: str) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in sorted(glob.glob(f"{scene}/images/{pattern}.png")):
        target = out / Path(path).name
        Image.open(path).crop((0, 0, CROP_WIDTH, ORBIT_SIZE[1])).save(target)
        paths.append(str(target))
    return paths


def _gt(scene: Path, images: list[str]) -> list[np.ndarray]:
    return [dataset_io.load_cam_to_world(str(scene / "poses" / (Path(i).stem + ".pose.txt"))) for i in images]


def _median_errors(pose_file: Path, scene: Path) -> tuple[float, float]:
    entries = sorted(dataset_io.read_ace_pose_file(pose_file), key=lambda e: Path(e.path).name)
    result = evaluate(entries, _gt(scene, [e.path for e in entries]), estimate_alignment=False, thresh_t=0.1,
                      thresh_r=5.0)
    return result["median_rot_err_deg"], result["median_trans_err"]


def _mixed_collection(scene: Path, folder: Path) -> list[str]:
    """Even views cropped (off-centre principal point), odd views full: images of two sizes."""
    crops = _crop(scene, folder, "*[02468]")
    full = sorted(glob.glob(f"{scene}/images/*[13579].png"))
    for path in full:
        (folder / Path(path).name).symlink_to(path)
    return sorted(crops + [str(folder / Path(p).name) for p in full])


def test_registration_with_off_centre_principal_point(orbit_head, orbit_scene, tmp_path):
    """Crops registered with their true principal point are accurate; assuming the centre turns them."""
    _crop(orbit_scene, tmp_path / "crops", "*[13579]")
    calibration = tmp_path / "calibration.txt"
    calibration.write_text(f"{ORBIT_FOCAL} {ORBIT_FOCAL} 320 240 {CROP_WIDTH} {ORBIT_SIZE[1]}\n")
    common = [f"{tmp_path}/crops/*.png", orbit_head, "--image_resolution", ORBIT_SIZE[1], "--device", "cpu"]
    run_cli("register_mapping.py", *common, "--calibration_file", calibration, "--session", "calibrated")
    run_cli("register_mapping.py", *common, "--use_external_focal_length", ORBIT_FOCAL, "--session", "centred")
    calibrated = _median_errors(orbit_head.parent / "poses_calibrated.txt", orbit_scene)
    centred = _median_errors(orbit_head.parent / "poses_centred.txt", orbit_scene)
    assert calibrated[0] < 2.0 and calibrated[1] < 0.1
    assert centred[0] > calibrated[0] + 1.0  # 40 px at focal 525: about 4 deg
    # The cameras file beside the poses holds the full camera, readable as a calibration file.
    cameras = dataset_io.read_calibration(orbit_head.parent / "cameras_calibrated.txt")
    assert (cameras.cx, cameras.cy, cameras.width) == (320, 240, CROP_WIDTH)


def test_mixed_sizes_map_and_register(orbit_scene, tmp_path):
    """Even views cropped (off-centre principal point), odd views full: one collection of two sizes, each image
    with its own camera from a per-image calibration file, mapped with ground-truth poses and registered."""
    images = _mixed_collection(orbit_scene, tmp_path / "images")
    (tmp_path / "poses").mkdir()
    for image in images:
        (tmp_path / "poses" / (Path(image).stem + ".pose.txt")).symlink_to(
            orbit_scene / "poses" / (Path(image).stem + ".pose.txt"))
    lines = [f"{Path(i).name} {ORBIT_FOCAL} {ORBIT_FOCAL} 320 240" for i in images]
    (tmp_path / "cameras.txt").write_text("# name fx fy cx cy\n" + "\n".join(lines) + "\n")
    head = tmp_path / "out" / "map.pt"
    run_cli("train_ace.py", f"{tmp_path}/images/*.png", head, "--pose_files", f"{tmp_path}/poses/*.txt",
            "--calibration_file", tmp_path / "cameras.txt", "--image_resolution", ORBIT_SIZE[1],
            "--iterations", 1500, "--device", "cpu")
    run_cli("register_mapping.py", f"{tmp_path}/images/*.png", head, "--calibration_file", tmp_path / "cameras.txt",
            "--image_resolution", ORBIT_SIZE[1], "--session", "all", "--device", "cpu")
    entries = sorted(dataset_io.read_ace_pose_file(head.parent / "poses_all.txt"), key=lambda e: Path(e.path).name)
    result = evaluate(entries, _gt(orbit_scene, [e.path for e in entries]), estimate_alignment=False,
                      thresh_t=0.05, thresh_r=2.0)
    assert result["num_registered"] == len(images)
    assert result["median_rot_err_deg"] < 1.5 and result["accuracy_percent"] >= 75.0


def test_augmentation_warp_is_a_camera_rotation():
    """The in-plane augmentation of a camera with fx != fy and an off-centre principal point: warped pixels are
    exactly where the rotated camera, with the moved principal point, projects the same points."""
    import cv2

    from calibration import Intrinsics
    camera = Intrinsics(520.0, 530.0, 300.0, 260.0, 640, 480)
    points = np.random.default_rng(0).normal(size=(3, 50)) + [[0], [0], [4]]
    for angle, shift in [(12.0, (0.0, 0.0)), (-9.0, (15.0, -7.0))]:
        warp, moved = dataset.in_plane_warp(camera, angle, np.array(shift))
        rotation = np.eye(3)
        rotation[:2, :2] = cv2.getRotationMatrix2D((0, 0), angle, 1.0)[:, :2]
        before = camera.matrix() @ points
        after = moved.matrix() @ (rotation @ points)
        warped = warp[:, :2] @ (before[:2] / before[2]) + warp[:, 2:]
        np.testing.assert_allclose(warped, after[:2] / after[2], atol=1e-9)
        assert abs(moved.cx - camera.cx) > 1  # the principal point moved with the content


@pytest.mark.slow  # two verifications, XFeat matching of all pairs
def test_verification_uses_each_images_camera(orbit_scene, tmp_path):
    """verify_poses.py on true poses of a mixed-size collection: with each image's true camera every image agrees;
    assuming the centre (the crops' principal point 40 px off) makes crops disagree with their neighbours."""
    images = _mixed_collection(orbit_scene, tmp_path / "images")
    dataset_io.write_ace_pose_file(tmp_path / "poses_in.txt", [dataset_io.PoseEntry(
        i, dataset_io.invert_pose(c), ORBIT_FOCAL, 2000) for i, c in zip(images, _gt(orbit_scene, images))])
    lines = [f"{Path(i).name} {ORBIT_FOCAL} {ORBIT_FOCAL} 320 240" for i in images]
    (tmp_path / "cameras.txt").write_text("\n".join(lines) + "\n")
    common = ["--device", "cpu", "--adjust", "False", "--check_focal", "False", "--image_resolution", ORBIT_SIZE[1]]
    run_cli("verify_poses.py", tmp_path / "poses_in.txt", tmp_path / "true.txt", *common,
            "--calibration_file", tmp_path / "cameras.txt")
    run_cli("verify_poses.py", tmp_path / "poses_in.txt", tmp_path / "centred.txt", *common)
    true = {e.path: e.confidence for e in dataset_io.read_ace_pose_file(tmp_path / "true.txt")}
    centred = {e.path: e.confidence for e in dataset_io.read_ace_pose_file(tmp_path / "centred.txt")}
    assert all(c == 2000 for c in true.values())
    assert all(centred[i] < 1000 for i in images if Image.open(i).width == CROP_WIDTH)


def test_zoedepth_seed_sees_the_undistorted_image(tmp_path, monkeypatch):
    """The depth network gets the seed image undistorted (OpenCV's own cv2.undistort as the reference), like
    every other input, so its depth lines up with the pinhole pixels it supervises."""
    import cv2
    import depth_estimation
    from calibration import Intrinsics
    rng = np.random.default_rng(0)
    image = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    path = tmp_path / "seed.png"
    Image.fromarray(image).save(path)
    camera = Intrinsics(60.0, 58.0, 31.0, 25.0, 64, 48, (0.2, -0.1, 0.001, 0.002), "file")
    seen = []
    monkeypatch.setattr(depth_estimation, "estimate_depth", lambda rgb: seen.append(rgb) or np.ones(rgb.shape[:2]))
    data = dataset.MappingData([str(path)], np.eye(4)[None], [camera], None)
    config = dataset.DataConfig(str(path), None, None, 0.0, 0.0, "zoedepth", None, None, False, None, 48)
    subset = dataset._seed_subset(data, config, encoder=None, device="cpu")
    K = np.array([[60.0, 0, 30.5], [0, 58.0, 24.5], [0, 0, 1]])  # cv2's pixel-centre convention
    expected = cv2.undistort(image, K, np.array([0.2, -0.1, 0.001, 0.002]), None, K)
    assert subset.estimated_depth is not None
    assert np.abs(seen[0].astype(int) - image.astype(int)).mean() > 5, "the image must change"
    assert np.array_equal(seen[0], expected)


def test_decoded_images_give_the_same_views_and_decode_once(tmp_path, monkeypatch):
    """The per-process cache of decoded images holds OpenCV's undistortion of each image, views prepared from it
    are bit-identical to views without it, each image is decoded once while the budget holds, and an image
    beyond the budget is decoded every time."""
    import cv2
    import dataset_io
    from calibration import Intrinsics
    rng = np.random.default_rng(1)
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"im{i}.png"))
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(paths[-1])
    camera = Intrinsics(60.0, 58.0, 31.0, 25.0, 64, 48, (0.2, -0.1, 0.001, 0.002), "file")
    K = np.array([[60.0, 0, 30.5], [0, 58.0, 24.5], [0, 0, 1]])  # cv2's pixel-centre convention

    def mapping_data(budget: int) -> dataset.MappingData:
        return dataset.MappingData(paths, np.stack([np.eye(4)] * 2), [camera] * 2, None,
                                   decoded=dataset.DecodedImages(budget_bytes=budget))

    cached, uncached = mapping_data(1 << 20), mapping_data(0)
    for index in (0, 1, 0):
        views = [dataset.make_view(d, index, 48, np.random.default_rng(7), True, 1.5, 15.0, 0.1)
                 for d in (cached, uncached)]
        assert np.array_equal(views[0].grey, views[1].grey) and np.array_equal(views[0].valid, views[1].valid)
        reference = cv2.undistort(np.asarray(Image.open(paths[index]).convert("RGB")), K,
                                  np.array([0.2, -0.1, 0.001, 0.002]), None, K)
        kept = cached.decoded.rgb(paths[index], camera)
        assert np.array_equal(kept, reference) and not kept.flags.writeable

    decodes = []
    real_load = dataset_io.load_undistorted_rgb
    monkeypatch.setattr(dataset_io, "load_undistorted_rgb", lambda p, c: decodes.append(p) or real_load(p, c))
    one_image = mapping_data(48 * 64 * 3)
    for index in (0, 1, 0, 1, 0):
        one_image.decoded.rgb(paths[index], camera)
    assert (decodes.count(paths[0]), decodes.count(paths[1])) == (1, 2)
