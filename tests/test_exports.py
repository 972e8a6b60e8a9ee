"""Tests of the exporters (point cloud, cameras, COLMAP, Nerfstudio) and datasets/video_to_dataset.py.

Ground truth comes from the synthetic scene's own files (4x4 camera-to-world poses, calibration.txt) and from
independent parsing of what the exporters write, not from the exporters' helpers."""
from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy.spatial.transform import Rotation

import export_cameras
import export_colmap
import export_nerfstudio
import export_point_cloud
import point_cloud
from calibration import Intrinsics
from cli_common import DEFAULT_ENCODER, UserError
from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
FLIP = np.diag([1.0, -1.0, -1.0])
PLANE_CAMERA = Intrinsics.centred(100.0, 96, 80, "test")  # the network input of _plane_coordinates
CONFIDENCES = [2000, 500, 3000, 1500]  # one image below the exporters' default threshold of 1000


# ----------------------------------------------------------------------------------------------------------------
# Helpers and fixtures

def run_script(script: str, *args) -> subprocess.CompletedProcess:
    return run_cli(script, *args, check=False)


def gt_cam_to_world(scene: Path) -> list[np.ndarray]:
    return [np.loadtxt(p) for p in sorted((scene / "poses").glob("*.txt"))]


def scene_images(scene: Path) -> list[Path]:
    return sorted((scene / "images").glob("*.png"))


def read_pose_file_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def scored_pose_file(small_ace_map, tmp_path_factory) -> Path:
    """The mapping pose file with varied confidences instead of inf."""
    path = tmp_path_factory.mktemp("scored") / "poses_scored.txt"
    lines = read_pose_file_lines(small_ace_map.pose_file)
    path.write_text("".join(" ".join(tokens[:9] + [str(c)]) + "\n" for tokens, c in zip(lines, CONFIDENCES)))
    return path


@pytest.fixture(scope="module")
def regressor(small_ace_map):
    return point_cloud.load_regressor(small_ace_map.map_file, DEFAULT_ENCODER, "cpu")


@pytest.fixture(scope="module")
def sparse_cloud(small_ace_map, regressor):
    """Points with a small budget (100 per image), so that only well reprojecting ones survive."""
    import dataset_io
    entries = dataset_io.read_ace_pose_file(small_ace_map.pose_file)
    return point_cloud.point_cloud_from_network(regressor, entries, small_ace_map.image_resolution,
                                                       min_points_total=400, max_points_total=100_000)


# ----------------------------------------------------------------------------------------------------------------
# Point selection with exact scene coordinates

def _plane_coordinates(height: int, width: int, focal: float, depth: float) -> np.ndarray:
    """Scene coordinates of a fronto-parallel plane seen by an identity camera, at the cell centres."""
    u = np.arange(width) * 8 + 4.0
    v = np.arange(height) * 8 + 4.0
    uu, vv = np.meshgrid(u, v)
    x = (uu - width * 4) / focal * depth
    y = (vv - height * 4) / focal * depth
    return np.stack([x, y, np.full_like(x, depth)], axis=2)


def test_select_cells_keeps_exact_points_and_drops_outliers():
    coords = _plane_coordinates(10, 12, 100.0, 2.0)
    coords[3, 4] += [0.0, 0.0, 5.0]      # a flying point: far from its neighbours, reprojects badly
    coords[6, 7] = [0.0, 0.0, -1.0]      # behind the camera
    indices, errors = point_cloud.select_cells(coords, np.eye(4), PLANE_CAMERA, min_points=10, max_points=1000)
    assert 3 * 12 + 4 not in indices and 6 * 12 + 7 not in indices
    assert len(indices) > 100 and np.all(errors < 1e-6)
    dense, _ = point_cloud.select_cells(coords, np.eye(4), PLANE_CAMERA, 10, 1000, dense=True)
    assert 3 * 12 + 4 in dense and 6 * 12 + 7 not in dense  # dense: only the depth test
    few, _ = point_cloud.select_cells(coords, np.eye(4), PLANE_CAMERA, 10, 7)
    assert len(few) == 7
    near, _ = point_cloud.select_cells(coords, np.eye(4), PLANE_CAMERA, 10, 1000, filter_depth=1.0)
    assert len(near) == 0


def test_select_cells_relaxes_the_error_threshold_to_reach_the_minimum():
    coords = _plane_coordinates(10, 12, 100.0, 2.0)
    shifted = coords + [0.05, 0.0, 0.0]  # every point reprojects 2.5 px off
    indices, errors = point_cloud.select_cells(shifted, np.eye(4), PLANE_CAMERA, 50, 1000)
    assert len(indices) >= 50 and np.allclose(errors, 2.5)


# ----------------------------------------------------------------------------------------------------------------
# Points from the trained network

def test_network_points_lie_in_front_of_their_camera_and_reproject(small_ace_map, sparse_cloud):
    cloud = sparse_cloud
    assert len(cloud) >= 400 and set(np.unique(cloud.image_index)) == {0, 1, 2, 3}
    fx, fy, cx, cy, _, _ = np.loadtxt(small_ace_map.scene / "calibration.txt")
    poses = gt_cam_to_world(small_ace_map.scene)
    for index, cam_to_world in enumerate(poses):
        mine = cloud.image_index == index
        cam = (cloud.xyz[mine].astype(np.float64) - cam_to_world[:3, 3]) @ cam_to_world[:3, :3]
        assert np.all(cam[:, 2] > 0)
        projected = np.stack([fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy], axis=1)
        distance = np.linalg.norm(projected - cloud.pixel[mine], axis=1)
        assert np.median(distance) < 1.0 and distance.max() < 3.0


def test_network_point_colours_come_from_the_observing_pixel(small_ace_map, sparse_cloud):
    images = [np.asarray(Image.open(p).convert("RGB")) for p in scene_images(small_ace_map.scene)]
    # Network input = original size here, so the cell centre is an integer pixel of the original image.
    u, v = sparse_cloud.pixel[:, 0].astype(int), sparse_cloud.pixel[:, 1].astype(int)
    expected = np.stack([images[i][y, x] for i, x, y in zip(sparse_cloud.image_index, u, v)])
    assert np.array_equal(sparse_cloud.rgb, expected)


def test_point_cloud_cli_txt_and_ply_agree(small_ace_map, tmp_path):
    common = ["--network", small_ace_map.map_file, "--pose_file", small_ace_map.pose_file,
              "--image_resolution", small_ace_map.image_resolution, "--device", "cpu"]
    export_point_cloud.main([str(tmp_path / "gl.txt"), *map(str, common)])
    export_point_cloud.main([str(tmp_path / "cv.ply"), "--convention", "opencv", *map(str, common)])
    table = np.loadtxt(tmp_path / "gl.txt")
    assert table.ndim == 2 and table.shape[1] == 6 and len(table) > 1000
    assert np.all(table[:, 3:] == np.round(table[:, 3:])) and table[:, 3:].max() <= 255
    ply = trimesh.load(tmp_path / "cv.ply")
    assert isinstance(ply, trimesh.PointCloud) and len(ply.vertices) == len(table)
    assert np.allclose(ply.vertices @ FLIP, table[:, :3], atol=1e-4)  # OpenGL = OpenCV with y, z negated
    assert np.array_equal(np.asarray(ply.colors)[:, :3], table[:, 3:].astype(np.uint8))
    # OpenCV convention = the synthetic world (z up, floor at 0): most points lie inside the room.
    inside = np.all((ply.vertices > [-3.5, -3.0, -0.5]) & (ply.vertices < [3.5, 3.0, 3.5]), axis=1)
    assert inside.mean() > 0.8


def test_point_cloud_from_visualization_buffer(tmp_path):
    xyz_gl = np.array([[1.0, 2.0, 3.0], [-1.5, 0.25, -2.0]], np.float32)
    buffer = tmp_path / "iteration0_mapping.pkl"
    buffer.write_bytes(pickle.dumps({"map_xyz": xyz_gl, "map_clr": np.array([[255.0, 0, 10], [1, 2, 3]])}))
    export_point_cloud.main([str(tmp_path / "out.txt"), "--visualization_buffer", str(buffer),
                             "--convention", "opencv"])
    table = np.loadtxt(tmp_path / "out.txt")
    assert np.allclose(table[:, :3], xyz_gl @ FLIP) and np.array_equal(table[:, 3:], [[255, 0, 10], [1, 2, 3]])
    with pytest.raises(UserError, match="dense"):
        export_point_cloud.main([str(tmp_path / "out.txt"), "--visualization_buffer", str(buffer),
                                 "--dense_point_cloud", "True"])


# ----------------------------------------------------------------------------------------------------------------
# Cameras

def test_camera_frustums(small_ace_map, scored_pose_file, tmp_path):
    export_cameras.main([str(scored_pose_file), str(tmp_path / "cams.ply")])
    mesh = trimesh.load(tmp_path / "cams.ply", process=False)
    per_camera = 8 * 8  # 8 edges, each a box of 8 vertices
    assert len(mesh.vertices) == 4 * per_camera and len(mesh.faces) == 4 * 8 * 12
    colours = np.asarray(mesh.visual.vertex_colors)[:, :3].reshape(4, per_camera, 3)
    assert np.all(colours == colours[:, :1])                       # one colour per camera
    below, above = colours[1, 0], colours[[0, 2, 3], 0]
    assert below[2] == 255 and np.all(above[:, 2] == 102)          # cool below the threshold, summer above
    assert not np.array_equal(colours[0, 0], colours[2, 0])        # 2000 and 3000 differ
    # The frustum apex (shared by four edge boxes) sits at the camera centre, in OpenGL world axes.
    for index, cam_to_world in enumerate(gt_cam_to_world(small_ace_map.scene)):
        centre = FLIP @ cam_to_world[:3, 3]
        boxes = mesh.vertices[index * per_camera:(index + 1) * per_camera].reshape(8, 8, 3)
        assert np.linalg.norm(boxes[:4].mean(axis=1) - centre, axis=1).max() < 0.1


def test_camera_markers_and_filters(small_ace_map, scored_pose_file, tmp_path):
    export_cameras.main([str(scored_pose_file), str(tmp_path / "m.ply"), "--frustum_markers", "True",
                         "--draw_non_confident", "False"])
    mesh = trimesh.load(tmp_path / "m.ply", process=False)
    assert len(mesh.vertices) == 3 * 5 and len(mesh.faces) == 3 * 6
    confident = [i for i, c in enumerate(CONFIDENCES) if c >= 1000]
    apexes = mesh.vertices[::5]
    for apex, index in zip(apexes, confident):
        assert np.allclose(apex, FLIP @ gt_cam_to_world(small_ace_map.scene)[index][:3, 3], atol=1e-4)
    single = tmp_path / "single.txt"
    single.write_text(scored_pose_file.read_text().splitlines()[0] + "\n")
    export_cameras.main([str(single), str(tmp_path / "s.ply")])
    grey = np.asarray(trimesh.load(tmp_path / "s.ply", process=False).visual.vertex_colors)[:, :3]
    assert np.all(grey == 128)


# ----------------------------------------------------------------------------------------------------------------
# COLMAP

def parse_colmap_text(folder: Path) -> tuple[dict, dict, dict]:
    def data_lines(name):
        return [line for line in (folder / name).read_text().split("\n")[:-1] if not line.startswith("#")]
    cameras = {int(t[0]): (t[1], int(t[2]), int(t[3]), [float(v) for v in t[4:]])
               for t in (line.split() for line in data_lines("cameras.txt"))}
    lines = data_lines("images.txt")
    images = {}
    for header, points in zip(lines[0::2], lines[1::2]):
        t = header.split()
        p = points.split()
        observations = [(float(p[i]), float(p[i + 1]), int(p[i + 2])) for i in range(0, len(p), 3)]
        images[int(t[0])] = ([float(v) for v in t[1:8]], int(t[8]), t[9], observations)
    points3d = {}
    for line in data_lines("points3D.txt"):
        t = line.split()
        points3d[int(t[0])] = ([float(v) for v in t[1:4]], [int(v) for v in t[4:7]], float(t[7]),
                               [int(v) for v in t[8:]])
    return cameras, images, points3d


def test_colmap_model_matches_pose_file(small_ace_map, scored_pose_file, tmp_path):
    export_colmap.main([str(scored_pose_file), str(tmp_path / "sparse"), "--network", str(small_ace_map.map_file),
                        "--image_resolution", str(small_ace_map.image_resolution), "--device", "cpu"])
    cameras, images, points3d = parse_colmap_text(tmp_path / "sparse")
    assert cameras == {1: ("SIMPLE_PINHOLE", 320, 240, [small_ace_map.focal, 160.0, 120.0])}
    lines = [t for t, c in zip(read_pose_file_lines(scored_pose_file), CONFIDENCES) if c >= 1000]
    assert len(images) == len(lines) == 3
    for image_id, tokens in zip(sorted(images), lines):
        quat_t, camera_id, name, _ = images[image_id]
        assert camera_id == 1 and name == Path(tokens[0]).name
        q = quat_t[:4]
        rotation = Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()
        expected = Rotation.from_quat([float(tokens[i]) for i in (2, 3, 4, 1)]).as_matrix()
        assert np.allclose(rotation, expected, atol=1e-9)
        assert np.allclose(quat_t[4:], [float(v) for v in tokens[5:8]])
    assert len(points3d) > 100
    for point_id, (xyz, rgb, error, track) in points3d.items():
        image_id, point2d_index = track
        x, y, observed_id = images[image_id][3][point2d_index]
        assert observed_id == point_id and 0 <= x < 320 and 0 <= y < 240 and error >= 0
        assert all(0 <= c <= 255 for c in rgb)


def test_colmap_without_network_and_with_image_root(small_ace_map, scored_pose_file, tmp_path):
    export_colmap.main([str(scored_pose_file), str(tmp_path / "m"), "--image_root", str(small_ace_map.scene),
                        "--confidence_threshold", "0"])
    _, images, points3d = parse_colmap_text(tmp_path / "m")
    assert [images[i][2] for i in sorted(images)] == [f"images/{p.name}" for p in scene_images(small_ace_map.scene)]
    assert points3d == {} and all(not images[i][3] for i in images)
    with pytest.raises(UserError, match="image_root"):
        export_colmap.main([str(scored_pose_file), str(tmp_path / "x"), "--image_root", str(tmp_path)])


# ----------------------------------------------------------------------------------------------------------------
# Nerfstudio

def test_nerfstudio_transforms(small_ace_map, scored_pose_file, tmp_path):
    out = tmp_path / "nerf"
    export_nerfstudio.main([str(scored_pose_file), str(out), "--network", str(small_ace_map.map_file),
                            "--image_resolution", str(small_ace_map.image_resolution), "--device", "cpu"])
    document = json.loads((out / "transforms.json").read_text())
    frames = document["frames"]
    confident = [i for i, c in enumerate(CONFIDENCES) if c >= 1000]
    assert len(frames) == len(confident)
    poses, images = gt_cam_to_world(small_ace_map.scene), scene_images(small_ace_map.scene)
    for frame, index in zip(frames, confident):
        assert Path(frame["file_path"]).is_absolute() and Path(frame["file_path"]) == images[index].resolve()
        expected = poses[index].copy()
        expected[:3, 1:3] *= -1  # Nerfstudio camera: y up, looking down -z
        assert np.allclose(frame["transform_matrix"], expected, atol=1e-5)
        assert (frame["fl_x"], frame["fl_y"], frame["cx"], frame["cy"], frame["w"], frame["h"]) == \
            (small_ace_map.focal, small_ace_map.focal, 160.0, 120.0, 320, 240)
        assert frame["confidence_score"] == CONFIDENCES[index]
    assert document["fl_x"] == small_ace_map.focal and document["w"] == 320
    cloud = trimesh.load(out / document["ply_file_path"])
    assert len(cloud.vertices) > 100
    # World in OpenCV convention, the poses' world: most points lie inside the synthetic room (z up).
    inside = np.all((cloud.vertices > [-3.5, -3.0, -0.5]) & (cloud.vertices < [3.5, 3.0, 3.5]), axis=1)
    assert inside.mean() > 0.8


def test_nerfstudio_without_point_cloud(small_ace_map, tmp_path):
    export_nerfstudio.main([str(small_ace_map.pose_file), str(tmp_path / "n"), "--point_cloud", "False"])
    document = json.loads((tmp_path / "n" / "transforms.json").read_text())
    assert "ply_file_path" not in document and len(document["frames"]) == 4
    assert "confidence_score" not in document["frames"][0]  # inf is not JSON


# ----------------------------------------------------------------------------------------------------------------
# Video frames

def _write_video(path: Path, width: int, height: int, frames: int) -> None:
    import imageio_ffmpeg
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=10, macro_block_size=1)
    writer.send(None)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.send(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    writer.close()


def test_video_to_dataset(tmp_path):
    _write_video(tmp_path / "walk.mp4", 320, 240, 12)
    _write_video(tmp_path / "tall.mp4", 240, 320, 12)
    result = run_script("datasets/video_to_dataset.py", tmp_path, "--min_side_length", 120)
    assert result.returncode == 0, result.stderr
    for name, size in (("video_walk", (160, 120)), ("video_tall", (120, 160))):
        frames = sorted((tmp_path / name).glob("*.jpg"))
        assert [f.name for f in frames] == [f"{i:06d}.jpg" for i in range(1, 13)]
        assert Image.open(frames[0]).size == size
    again = run_script("datasets/video_to_dataset.py", tmp_path)
    assert again.returncode == 0 and again.stdout.count("skipping") == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = run_script("datasets/video_to_dataset.py", empty)
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "mp4" in missing.stderr


# ----------------------------------------------------------------------------------------------------------------
# Command-line errors

@pytest.mark.parametrize("script, args, message", [
    ("export_point_cloud.py", ["cloud.obj", "--visualization_buffer", "b.pkl"], "suffix"),
    ("export_point_cloud.py", ["cloud.txt"], "--network"),
    ("export_point_cloud.py", ["cloud.txt", "--network", "n.pt"], "--pose_file"),
    ("export_cameras.py", ["missing_poses.txt", "cams.ply"], "not found"),
    ("export_cameras.py", ["missing_poses.txt", "cams.obj"], ".ply"),
    ("export_colmap.py", ["missing_poses.txt", "out"], "not found"),
    ("export_nerfstudio.py", ["missing_poses.txt", "out"], "not found"),
])
def test_user_errors_are_one_line(script, args, message, tmp_path):
    result = run_script(script, *[tmp_path / a if "." in a or a == "out" else a for a in args])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("script", ["export_point_cloud.py", "export_cameras.py", "export_colmap.py",
                                    "export_nerfstudio.py", "datasets/video_to_dataset.py"])
def test_missing_positional_arguments_exit_2(script):
    result = run_script(script)
    assert result.returncode == 2 and "error:" in result.stderr.strip().splitlines()[-1]
