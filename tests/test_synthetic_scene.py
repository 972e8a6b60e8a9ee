"""Tests for datasets/synthetic_scene.py: layout, camera conventions, texture, overlap.

Geometric truth comes from analytic projection / ray casting of the known scene
layout, never from the renderer itself.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

REPO = Path(__file__).resolve().parents[1]
NUM_IMAGES, WIDTH, HEIGHT, SEED = 6, 640, 480, 3


def _load_module():
    # Load by path: the top-level name `datasets` may clash with a pip package.
    spec = importlib.util.spec_from_file_location("synthetic_scene", REPO / "datasets" / "synthetic_scene.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


syn = _load_module()


def _require_rendering() -> None:
    try:
        syn.import_pyrender()
    except syn.RenderingUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    _require_rendering()
    out = tmp_path_factory.mktemp("synthetic")
    return syn.render_scene(out, num_images=NUM_IMAGES, width=WIDTH, height=HEIGHT, seed=SEED)


def _stems(dataset: Path) -> list[str]:
    return sorted(p.name[: -len(".png")] for p in (dataset / "images").glob("*.png"))


def _calibration(dataset: Path) -> tuple[float, float, float, float, int, int]:
    fx, fy, cx, cy, w, h = (dataset / "calibration.txt").read_text().split()
    return float(fx), float(fy), float(cx), float(cy), int(w), int(h)


def _frame(dataset: Path, stem: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB uint8, camera-to-world 4x4, depth in metres (0 = invalid)."""
    rgb = cv2.imread(str(dataset / "images" / f"{stem}.png"), cv2.IMREAD_COLOR)[..., ::-1]
    pose = np.loadtxt(dataset / "poses" / f"{stem}.pose.txt")
    depth = cv2.imread(str(dataset / "depth" / f"{stem}.depth.png"), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16
    return rgb, pose, depth.astype(np.float64) / 1000.0


def _pixel_rays(fx, fy, cx, cy, w, h) -> np.ndarray:
    """Camera-frame rays with z = 1 through pixel centres (col + 0.5, row + 0.5)."""
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    return np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1)


def _raycast_depth(origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """z-depth of the first hit inside the room: exit of the room box, or entry
    into a furniture box (slab method). dirs have camera z = 1, so t is depth."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t_lo = (syn.ROOM_MIN - origin) * inv
        t_hi = (syn.ROOM_MAX - origin) * inv
        best = np.min(np.maximum(t_lo, t_hi), axis=-1)
        for box in syn.FURNITURE:
            t1 = (np.asarray(box.lo) - origin) * inv
            t2 = (np.asarray(box.hi) - origin) * inv
            t_near = np.max(np.minimum(t1, t2), axis=-1)
            t_far = np.min(np.maximum(t1, t2), axis=-1)
            hit = (t_near <= t_far) & (t_near > 0)
            best = np.where(hit & (t_near < best), t_near, best)
    return best


# ---------------------------------------------------------------------------
# Files and poses
# ---------------------------------------------------------------------------

def test_files_and_counts(dataset):
    stems = _stems(dataset)
    assert len(stems) == NUM_IMAGES
    for stem in stems:
        assert (dataset / "poses" / f"{stem}.pose.txt").is_file()
        assert (dataset / "depth" / f"{stem}.depth.png").is_file()
        rgb = cv2.imread(str(dataset / "images" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert rgb.shape == (HEIGHT, WIDTH, 3) and rgb.dtype == np.uint8
    assert _calibration(dataset) == (525.0, 525.0, WIDTH / 2, HEIGHT / 2, WIDTH, HEIGHT)
    assert "CC0" in (dataset / "README.md").read_text()
    assert not list(dataset.rglob("*.tmp")), "temporary files left behind"


def test_poses_are_rigid_and_inside_room(dataset):
    for stem in _stems(dataset):
        pose = np.loadtxt(dataset / "poses" / f"{stem}.pose.txt")
        assert pose.shape == (4, 4)
        np.testing.assert_allclose(pose[3], [0, 0, 0, 1], atol=1e-12)
        rot = pose[:3, :3]
        np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-6)
        assert np.linalg.det(rot) == pytest.approx(1.0, abs=1e-6)
        assert np.all(pose[:3, 3] > syn.ROOM_MIN) and np.all(pose[:3, 3] < syn.ROOM_MAX)


def test_rerender_replaces_stale_frames(tmp_path):
    # Only the cheap preparation step: stale frames of ours go, foreign files stay.
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "frame_00099.png").write_bytes(b"old")
    (tmp_path / "images" / "keep_me.png").write_bytes(b"mine")
    syn._prepare_output(tmp_path, with_depth=True)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["keep_me.png"]


# ---------------------------------------------------------------------------
# Camera conventions (analytic truth)
# ---------------------------------------------------------------------------

def _white_quad_scene(corners_world: np.ndarray):
    pyrender = syn.import_pyrender()
    material = pyrender.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0], doubleSided=True)
    prim = pyrender.Primitive(positions=corners_world.astype(np.float32),
                              indices=np.array([[0, 1, 2], [0, 2, 3]], np.uint32), material=material)
    scene = pyrender.Scene(bg_color=np.zeros(4), ambient_light=np.ones(3))
    scene.add(pyrender.Mesh(primitives=[prim]))
    return scene


def test_projection_and_depth_convention():
    """A white rectangle placed so that it projects to a known, off-centre pixel
    box must appear exactly there (upper-left: checks y-down), with its z-depth."""
    _require_rendering()
    w, h, focal = 320, 240, 262.5
    fx, fy, cx, cy = syn.intrinsics(w, h, focal)
    u0, u1, v0, v1, z = 40.3, 120.7, 30.2, 90.6, 2.0
    cam_pts = np.array([[(u - cx) * z / fx, (v - cy) * z / fy, z, 1.0]
                        for u, v in [(u0, v0), (u1, v0), (u1, v1), (u0, v1)]])
    pose = np.eye(4)
    pose[:3, :3] = syn.look_rotation(0.7, -0.2, 0.1)
    pose[:3, 3] = [0.3, -0.2, 1.4]
    scene = _white_quad_scene((pose @ cam_pts.T).T[:, :3])
    with syn.SceneRenderer(scene, w, h, focal) as renderer:
        rgb, depth = renderer.render(pose)

    coverage = rgb[..., 0].astype(np.float64) / 255.0
    rows, cols = np.nonzero(coverage > 0.5)
    # Pixel (col, row) has its centre at (col + 0.5, row + 0.5).
    assert abs(cols.min() - np.ceil(u0 - 0.5)) <= 1 and abs(cols.max() - np.floor(u1 - 0.5)) <= 1
    assert abs(rows.min() - np.ceil(v0 - 0.5)) <= 1 and abs(rows.max() - np.floor(v1 - 0.5)) <= 1
    # Sub-pixel: anti-aliased coverage area and centroid match the analytic box.
    assert coverage.sum() == pytest.approx((u1 - u0) * (v1 - v0), rel=0.01)
    cu = (coverage.sum(axis=0) * (np.arange(w) + 0.5)).sum() / coverage.sum()
    cv = (coverage.sum(axis=1) * (np.arange(h) + 0.5)).sum() / coverage.sum()
    assert cu == pytest.approx((u0 + u1) / 2, abs=0.25)
    assert cv == pytest.approx((v0 + v1) / 2, abs=0.25)

    inside = np.zeros_like(depth, bool)
    inside[int(v0) + 2:int(v1) - 2, int(u0) + 2:int(u1) - 2] = True
    np.testing.assert_allclose(depth[inside], z, atol=1e-3)  # z-depth, not ray length
    assert np.all(depth[coverage == 0] == 0)


def test_depth_matches_raycast_of_known_room(dataset):
    fx, fy, cx, cy, w, h = _calibration(dataset)
    rays = _pixel_rays(fx, fy, cx, cy, w, h)
    for stem in _stems(dataset):
        _, pose, depth = _frame(dataset, stem)
        expected = _raycast_depth(pose[:3, 3], rays @ pose[:3, :3].T)
        err = np.abs(depth - expected)
        assert np.all(depth > 0), "the closed room leaves no background"
        assert np.median(err) < 0.002
        # Depth comes from one anti-aliasing sample up to ~0.4 px off the pixel
        # centre, so allow the local depth slope on top of mm rounding; this
        # also lets silhouette pixels take either surface.
        grad_v, grad_u = np.gradient(expected)
        tolerance = 0.003 + 0.75 * np.maximum(np.abs(grad_u), np.abs(grad_v))
        assert np.mean(err < tolerance) > 0.995, stem


# ---------------------------------------------------------------------------
# Appearance, determinism, overlap
# ---------------------------------------------------------------------------

def test_images_are_textured_everywhere(dataset):
    fast = cv2.FastFeatureDetector_create()
    for stem in _stems(dataset):
        rgb, _, _ = _frame(dataset, stem)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        assert gray.std() > 30
        pts = np.array([kp.pt for kp in fast.detect(gray)])
        assert len(pts) > 1500
        grid, _, _ = np.histogram2d(pts[:, 1], pts[:, 0], bins=(4, 4), range=((0, HEIGHT), (0, WIDTH)))
        assert grid.min() >= 20, f"{stem}: an image region without corners"


def test_deterministic_for_fixed_seed(dataset, tmp_path):
    # Trajectory step is the same for 2 and NUM_IMAGES frames, so frames 0-1 must match.
    again = syn.render_scene(tmp_path, num_images=2, width=WIDTH, height=HEIGHT, seed=SEED)
    for stem in _stems(again):
        for rel in (f"images/{stem}.png", f"poses/{stem}.pose.txt", f"depth/{stem}.depth.png"):
            assert (again / rel).read_bytes() == (dataset / rel).read_bytes(), rel


def test_seed_changes_textures_and_path():
    a = syn.make_texture(np.random.default_rng(1), 64, 64)
    b = syn.make_texture(np.random.default_rng(2), 64, 64)
    assert np.mean(a != b) > 0.5
    pa, pb = syn.camera_trajectory(3, seed=1), syn.camera_trajectory(3, seed=2)
    assert not np.allclose(pa[0], pb[0])


def test_consecutive_views_overlap(dataset):
    fx, fy, cx, cy, w, h = _calibration(dataset)
    rays = _pixel_rays(fx, fy, cx, cy, w, h)[::4, ::4]
    stems = _stems(dataset)
    for a, b in zip(stems, stems[1:]):
        _, pose_a, depth_a = _frame(dataset, a)
        _, pose_b, depth_b = _frame(dataset, b)
        pts_cam_a = rays * depth_a[::4, ::4, None]
        pts_world = pts_cam_a.reshape(-1, 3) @ pose_a[:3, :3].T + pose_a[:3, 3]
        world_to_b = np.linalg.inv(pose_b)
        pts_b = pts_world @ world_to_b[:3, :3].T + world_to_b[:3, 3]
        z = pts_b[:, 2]
        u = fx * pts_b[:, 0] / z + cx
        v = fy * pts_b[:, 1] / z + cy
        inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        assert inside.mean() > 0.7, (a, b, inside.mean())
        # The re-projected points must also agree with frame b's own depth
        # (poses and depth maps are mutually consistent; occlusions are rare).
        seen = depth_b[v[inside].astype(int), u[inside].astype(int)]
        assert np.mean(np.abs(seen - z[inside]) < 0.03) > 0.9


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

def test_cli_reports_unwritable_output_without_traceback(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert syn.main([str(blocker / "out"), "--num_images", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write output folder") and "Traceback" not in err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        syn.main(["--help"])
    assert exit_info.value.code == 0
    assert "--num_images" in capsys.readouterr().out
