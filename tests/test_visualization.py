"""Rendering of the reconstruction process (ace_visualizer.py): mapping and registration frames of short runs on
the synthetic scene, the hand-over of the .pkl buffers between phases, the final sweep and the video."""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

import ace_visualizer as vis
import ace_zero
import dataset_io
from conftest import SMALL_SCENE_FOCAL, SMALL_SCENE_SIZE, run_cli

BUFFER_KEYS = {"map_xyz", "map_clr", "frame_idx", "camera_buffer", "pan_cameras"}
MAPPING_ITERATIONS, OUTPUT_EVERY = 60, 20
MAPPING_FRAMES = MAPPING_ITERATIONS // OUTPUT_EVERY + vis.REVEAL_FRAMES  # iterations 0, 20, 40 + the reveal
IMAGES = 4


def _egl_available() -> str | None:
    """None when an offscreen OpenGL context can be made, else why not."""
    try:
        from datasets.synthetic_scene import import_pyrender
        renderer = import_pyrender().OffscreenRenderer(8, 8)
        renderer.delete()
    except Exception as error:  # missing EGL libraries raise assorted types
        return f"{type(error).__name__}: {error}"
    return None


pytestmark = pytest.mark.skipif(_egl_available() is not None,
                                reason=f"no headless OpenGL (EGL) rendering: {_egl_available()}")


def run(script: str, *args) -> None:
    run_cli(script, *args, threads=1)  # few cores: spin-waiting OpenMP threads slow training down


def render_flags(renderings: Path) -> list:
    # Observer 1 m behind the cameras: the 4 views see a few metres of the room.
    return ["--render_visualization", "True", "--render_target_path", renderings, "--render_camera_z_offset", 1]


def mapping(scene: Path, network: Path, renderings: Path, *extra) -> None:
    run("train_ace.py", f"{scene}/images/*.png", network, "--pose_files", f"{scene}/poses/*.txt",
        "--depth_files", f"{scene}/depth/*.png", "--use_external_focal_length", SMALL_SCENE_FOCAL,
        "--image_resolution", SMALL_SCENE_SIZE[1], "--iterations", MAPPING_ITERATIONS, "--iterations_output",
        OUTPUT_EVERY, "--batch_size", 512, "--max_dataset_passes", 1, "--use_aug", "False", "--device", "cpu",
        *render_flags(renderings), *extra)


def registration(scene: Path, network: Path, renderings: Path) -> None:
    run("register_mapping.py", f"{scene}/images/*.png", network, "--session", network.stem,
        "--use_external_focal_length", SMALL_SCENE_FOCAL, "--image_resolution", SMALL_SCENE_SIZE[1],
        "--device", "cpu", *render_flags(renderings))


@pytest.fixture(scope="module")
def ace0_folder(small_scene, tmp_path_factory) -> Path:
    """An ACE0-like results folder: seed mapping, registration, a second mapping and registration, rendered."""
    results = tmp_path_factory.mktemp("vis_results")
    renderings = results / "renderings"
    mapping(small_scene, results / "iteration0_seed0.pt", renderings)
    registration(small_scene, results / "iteration0_seed0.pt", renderings)
    mapping(small_scene, results / "iteration1.pt", renderings, "--use_existing_vis_buffer",
            "iteration0_seed0_register.pkl")
    registration(small_scene, results / "iteration1.pt", renderings)
    return results


def load_buffer(path: Path) -> dict:
    with open(path, "rb") as handle:
        return pickle.load(handle)


def assert_not_blank(frame: np.ndarray, what: str) -> None:
    lit = (frame.max(axis=2) > 20).mean()
    assert lit > 0.01, f"{what}: only {100 * lit:.2f}% of the pixels are not background"
    assert frame.reshape(-1, 3).std(axis=0).mean() > 5, f"{what}: no colour variation"


# ----------------------------------------------------------------------------------------------------------------
# Phases, buffers, frame numbering

def test_buffers_carry_the_frame_index(ace0_folder):
    renderings = ace0_folder / "renderings"
    expected = {"iteration0_seed0_mapping.pkl": MAPPING_FRAMES,
                "iteration0_seed0_register.pkl": MAPPING_FRAMES + IMAGES,
                "iteration1_mapping.pkl": 2 * MAPPING_FRAMES + IMAGES,
                "iteration1_register.pkl": 2 * MAPPING_FRAMES + 2 * IMAGES}
    for name, frame_idx in expected.items():
        state = load_buffer(renderings / name)
        assert set(state) == BUFFER_KEYS, name
        assert state["frame_idx"] == frame_idx, name
        xyz, clr = np.asarray(state["map_xyz"]), np.asarray(state["map_clr"])
        assert xyz.ndim == 2 and xyz.shape[1] == 3 and len(xyz) > 1000 and clr.shape == xyz.shape, name
        assert clr.min() >= 0 and clr.max() <= 255 and clr.max() > 1, f"{name}: colours are 0-255"
        assert 0 < len(state["camera_buffer"]) <= vis.OBSERVER_HISTORY, name
        assert len(state["pan_cameras"]) == vis.PAN_VIEWS, name
        for pose in [*state["camera_buffer"], *state["pan_cameras"]]:
            assert np.asarray(pose).shape == (4, 4)
            assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-6)
    frames = vis.frame_files(renderings)
    assert [f.name for f in frames] == [f"frame_{i:05d}.png" for i in range(expected["iteration1_register.pkl"])]


def test_map_is_in_opengl_axes(ace0_folder, small_scene):
    """The map lies in front of the mapping cameras, i.e. along -z of their poses in OpenGL axes."""
    state = load_buffer(ace0_folder / "renderings" / "iteration1_mapping.pkl")
    centre = np.append(np.median(np.asarray(state["map_xyz"]), axis=0), 1.0)
    for path in sorted((small_scene / "poses").glob("*.txt")):
        camera_gl = dataset_io.opencv_to_opengl_pose(dataset_io.load_cam_to_world(str(path)))
        assert (dataset_io.invert_pose(camera_gl) @ centre)[2] < 0, "map centre behind an OpenGL camera"


def test_frames_show_something(ace0_folder):
    renderings = ace0_folder / "renderings"
    first_registration = MAPPING_FRAMES
    for index in (0, 2, MAPPING_FRAMES - 1, first_registration, first_registration + IMAGES - 1):
        frame = cv2.imread(str(renderings / f"frame_{index:05d}.png"))
        assert frame is not None and frame.shape == (vis.CPU_FRAME_SIZE[1], vis.CPU_FRAME_SIZE[0], 3)
        assert_not_blank(frame, f"frame {index}")
    # The revealed map fills more of the frame than its first tenth.
    first, last = (cv2.imread(str(renderings / f"frame_{MAPPING_FRAMES - vis.REVEAL_FRAMES + i:05d}.png"))
                   for i in (0, vis.REVEAL_FRAMES - 1))
    assert (last.max(axis=2) > 20).sum() > (first.max(axis=2) > 20).sum()


# ----------------------------------------------------------------------------------------------------------------
# Final sweep and video (through ace_zero's last step)

def _confident_pose_files(results: Path, scene: Path) -> None:
    """Pose files with GT poses: images 0-1 registered (> 1000) in iteration 0, images 2-3 only in iteration 1."""
    images = sorted(str(p) for p in (scene / "images").glob("*.png"))
    poses = [dataset_io.load_cam_to_world(p) for p in sorted((scene / "poses").glob("*.txt"))]

    def entries(confident):
        return [dataset_io.PoseEntry(path, dataset_io.invert_pose(pose), SMALL_SCENE_FOCAL,
                                     2000 if i in confident else 300)
                for i, (path, pose) in enumerate(zip(images, poses))]
    dataset_io.write_ace_pose_file(results / "poses_iteration0_seed0.txt", entries({0, 1}))
    dataset_io.write_ace_pose_file(results / "poses_iteration1.txt", entries({0, 1, 2, 3}))


def test_final_sweep_and_video(ace0_folder, small_scene):
    _confident_pose_files(ace0_folder, small_scene)
    renderings = ace0_folder / "renderings"
    before = len(vis.frame_files(renderings))
    args = argparse.Namespace(results_folder=ace0_folder, render_marker_size=0.03, render_camera_z_offset=1,
                              render_flipped_portrait=False)
    ace_zero.render_video(args)
    frames = vis.frame_files(renderings)
    assert len(frames) == before + 150
    sweep = cv2.imread(str(frames[-1]))
    assert_not_blank(sweep, "last sweep frame")
    # Cameras first registered in iteration 0 (magenta) and in iteration 1 appear in different colours.
    magenta = np.all(np.abs(sweep.astype(int) - [255, 0, 255]) < 40, axis=2).sum()  # BGR = RGB for magenta
    assert magenta > 0, "no camera of iteration 0 visible"
    video = ace0_folder / ace_zero.VIDEO_FILE
    import imageio_ffmpeg
    count, _ = imageio_ffmpeg.count_frames_and_secs(str(video))
    assert count == len(frames)
    reader = imageio_ffmpeg.read_frames(str(video))
    width, height = next(reader)["size"]
    decoded = np.frombuffer(next(reader), np.uint8).reshape(height, width, 3)
    reader.close()
    assert (width, height) == vis.CPU_FRAME_SIZE
    assert_not_blank(decoded[..., ::-1], "first video frame")
    # A second call leaves the finished video alone.
    stamp = video.stat().st_mtime
    ace_zero.render_video(args)
    assert video.stat().st_mtime == stamp


def test_sweep_without_renderings_is_a_clear_error(tmp_path):
    (tmp_path / "renderings").mkdir()
    result = run_cli("render_final_sweep.py", tmp_path / "renderings", check=False)
    assert result.returncode == 2 and "iterationX_register.pkl" in result.stderr
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# ace_zero.py passes the rendering flags and chains the buffers

def test_ace_zero_chains_buffers(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(ace_zero, "run_script", lambda script, arguments, threads=None, label="":
                        commands.append((script, [str(a) for a in arguments])))
    monkeypatch.setattr(ace_zero, "registration_focal_of", lambda args, folder, run_id, fallback: fallback)
    args = ace_zero.build_parser().parse_args(["images/*.png", str(tmp_path), "--render_visualization", "True",
                                               "--render_camera_z_offset", "2"])
    state = ace_zero.RunState("images/*.png")
    ace_zero.mapping_round(args, state, 2, "iteration1", 500.0)
    script, command = commands[-1]
    assert script == "train_ace.py"
    flag = command.index
    assert command[flag("--render_visualization") + 1] == "True"
    assert command[flag("--render_target_path") + 1] == str(tmp_path / "renderings")
    assert command[flag("--use_existing_vis_buffer") + 1] == "iteration1_register.pkl"
    assert float(command[flag("--render_camera_z_offset") + 1]) == 2
    off = ace_zero.build_parser().parse_args(["images/*.png", str(tmp_path)])
    ace_zero.mapping_round(off, state, 2, "iteration1", 500.0)
    assert not any(a.startswith("--render") or a == "--use_existing_vis_buffer" for a in commands[-1][1])


# ----------------------------------------------------------------------------------------------------------------
# Pieces

def test_observer_trails_its_targets():
    target = np.eye(4)
    observer = vis.ObserverCamera([], z_offset=2.0)
    observer.follow(target)
    assert np.allclose(observer.pose()[:3, 3], [0, 0, 2])  # pushed back along +z (OpenGL: backwards)
    turned = np.eye(4)
    turned[:3, :3] = dataset_io.rotation_about(np.array([0.0, 1.0, 0.0]), np.pi / 2)
    for _ in range(5):
        observer.follow(turned)
    pose = observer.pose()
    assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-9)
    assert 0 < np.degrees(np.arccos((np.trace(pose[:3, :3]) - 1) / 2)) < 90  # on its way, not there yet
    for _ in range(vis.OBSERVER_HISTORY):
        observer.follow(turned)
    assert np.allclose(observer.pose()[:3, :3], turned[:3, :3], atol=1e-9)


def test_pan_cameras_look_at_the_centre_and_go_back_and_forth():
    cameras = np.stack([np.eye(4) for _ in range(3)])
    cameras[:, 0, 3] = [-1.0, 0.0, 1.0]
    views = vis.pan_cameras(cameras, arc_deg=60, count=7)
    for view in views:
        to_centre = -view[:3, 3] / np.linalg.norm(view[:3, 3])
        assert np.allclose(-view[:3, 2], to_centre, atol=1e-9)  # looking down -z at the centre
        assert np.linalg.norm(view[:3, 3]) == pytest.approx(0.5)  # half the mean of the two largest extents (1, 0)
    order = [next(i for i, v in enumerate(views) if v is vis.pan_view(views, f)) for f in range(14)]
    assert order == [0, 1, 2, 3, 4, 5, 6, 5, 4, 3, 2, 1, 0, 1]


def test_colour_ramps():
    low, high = vis.error_colours(np.array([0.0, 100.0]), threshold=10)
    assert low[1] > 200 and low[2] > 200          # cyan for small errors
    assert high[1] < 30 and high[0] > high[1]     # dark magenta for large ones
    first, tenth = vis.iteration_colours(np.array([0, 12]))
    assert tuple(first) == (255, 0, 255) and tuple(tenth) == (0, 255, 255)


def test_overlays_draw_into_the_frame():
    frame = np.zeros((360, 640, 3), np.uint8)
    vis.draw_caption(frame, ["Neural Mapping", "Iteration 0"])
    assert frame[:80, :300].max() == 255
    before = frame.copy()
    colours = vis.error_colours(np.linspace(0, 10, vis.HISTOGRAM_BINS), 10)
    vis.draw_histogram(frame, np.random.default_rng(0).uniform(0, 10, 500), (0, 10), colours, "error")
    changed = np.any(frame != before, axis=2)
    assert changed[200:, 400:].mean() > 0.1 and not changed[:150, :300].any()
