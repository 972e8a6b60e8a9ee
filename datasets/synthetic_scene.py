#!/usr/bin/env python3
"""Render a small, richly textured synthetic indoor scene as a posed image set.

The project cannot redistribute real data sets, so tests and the demo use this
generator instead. It writes the project's data-set layout:

    <out>/images/<stem>.png          RGB, 8 bit
    <out>/poses/<stem>.pose.txt      4x4 camera-to-world, OpenCV camera axes
                                     (x right, y down, z forward), metres
    <out>/depth/<stem>.depth.png     16-bit depth along camera z, millimetres,
                                     0 = invalid
    <out>/calibration.txt            one line: fx fy cx cy width height
    <out>/README.md                  provenance and licence note

Pixel convention: the principal point is the exact image centre
(cx, cy) = (width / 2, height / 2) and a pixel with integer index (col, row)
covers [col, col + 1) x [row, row + 1), so its centre lies at
(col + 0.5, row + 0.5). A world point with OpenCV camera coordinates (X, Y, Z)
lands at u = fx * X / Z + cx, v = fy * Y / Z + cy in that continuous frame,
i.e. inside pixel (floor(u), floor(v)). Readers that put pixel centres on
integers see everything shifted by half a pixel, which is harmless for SfM.

World frame: z up, floor at z = 0; the room spans x in [-3, 3], y in
[-2.5, 2.5], z in [0, 3].
"""
from __future__ import annotations

import os

# pyrender picks its OpenGL platform at import time; EGL renders headless.
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import argparse
import io
import math
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)
from ace_vis_util import (Quad, RenderingUnavailable, import_pyrender, platform_hint,  # noqa: E402,F401
                          textured_primitive)
from dataset_io import FLIP_YZ  # noqa: E402

ROOM_MIN = np.array([-3.0, -2.5, 0.0])
ROOM_MAX = np.array([3.0, 2.5, 3.0])
TEXELS_PER_METRE = 256  # ~1 texel per pixel at 2 m with the default focal length
DEFAULT_WIDTH, DEFAULT_HEIGHT, DEFAULT_FOCAL = 640, 480, 525.0
CAMERA_HEIGHT = 1.5
MAX_YAW_STEP_DEG = 7.5  # keeps consecutive views overlapping strongly
Z_NEAR, Z_FAR = 0.05, 50.0
STEM_PATTERN = re.compile(r"^frame_\d{5}$")

@dataclass(frozen=True)
class Box:
    """Axis-aligned box resting in the room (world coordinates, metres)."""

    name: str
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]


# Fixed furniture layout, kept clear of the camera loop (|x| <= 1.0, |y| <= 0.8).
FURNITURE: tuple[Box, ...] = (
    Box("cabinet", (2.35, -1.3, 0.0), (2.9, -0.2, 1.8)),
    Box("table", (-1.7, 1.4, 0.0), (-0.8, 2.05, 0.75)),
    Box("crate", (0.9, -2.25, 0.0), (1.6, -1.6, 0.6)),
    Box("small_crate", (1.05, -2.1, 0.6), (1.45, -1.7, 0.95)),
    Box("shelf", (-2.9, -2.4, 0.0), (-2.45, -1.5, 2.2)),
    Box("wall_panel", (-0.8, 2.42, 1.2), (0.7, 2.5, 2.0)),
    Box("stool", (2.0, 1.3, 0.0), (2.4, 1.7, 0.45)),
    Box("pedestal", (-0.35, -0.3, 0.0), (0.35, 0.3, 0.9)),  # what "orbit" cameras look at
)
TRAJECTORIES = ("outward", "orbit")
ORBIT_RADII = (2.1, 1.7)
ORBIT_TARGET = np.array([0.0, 0.0, 0.7])


# ---------------------------------------------------------------------------
# Camera model
# ---------------------------------------------------------------------------

def default_focal(width: int) -> float:
    """Focal length in pixels: 525 at 640 px wide, scaled with the width."""
    return DEFAULT_FOCAL * width / DEFAULT_WIDTH


def intrinsics(width: int, height: int, focal: float) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) with the principal point at the exact image centre."""
    return float(focal), float(focal), width / 2.0, height / 2.0


def look_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation (OpenCV axes as columns) for a z-up world.

    yaw turns about world z (0 = looking along +x), pitch > 0 looks up,
    roll turns the image clockwise about the viewing direction.
    """
    forward = np.array([math.cos(yaw) * math.cos(pitch),
                        math.sin(yaw) * math.cos(pitch),
                        math.sin(pitch)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = math.cos(roll), math.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], axis=1)


def _smooth_wobble(rng: np.random.Generator, t: np.ndarray, amplitude: float) -> np.ndarray:
    """Sum of two slow sinusoids with random phases: hand-held-like drift."""
    freqs = rng.uniform(0.5, 2.0, size=2)
    phases = rng.uniform(0.0, 2.0 * math.pi, size=2)
    return amplitude * 0.5 * (np.sin(freqs[0] * t + phases[0]) + np.sin(freqs[1] * t + phases[1]))


def camera_trajectory(num_images: int, seed: int = 0, yaw_step_deg: float = MAX_YAW_STEP_DEG,
                      trajectory: str = "outward") -> list[np.ndarray]:
    """Camera-to-world poses (OpenCV axes) on an ellipse around the room centre.

    "outward": cameras on a small loop look outward at the walls (a room scan);
    "orbit": cameras on a wide loop look at the pedestal in the middle (an object capture).
    Position advances by at most `yaw_step_deg` per frame (a full loop once num_images >= 360 / step) so
    consecutive views overlap strongly, with smooth wobble in height, heading, pitch and roll.
    """
    if num_images < 1:
        raise ValueError("num_images must be at least 1")
    if trajectory not in TRAJECTORIES:
        raise ValueError(f"trajectory must be one of {TRAJECTORIES}")
    rng = np.random.default_rng([seed, 1])
    step = math.radians(min(yaw_step_deg, 360.0 / num_images))
    theta = rng.uniform(0.0, 2.0 * math.pi) + step * np.arange(num_images)
    height = CAMERA_HEIGHT + _smooth_wobble(rng, theta, 0.08)
    yaw_wobble = _smooth_wobble(rng, theta, math.radians(12.0 if trajectory == "outward" else 4.0))
    pitch_wobble = _smooth_wobble(rng, theta, math.radians(8.0 if trajectory == "outward" else 3.0))
    roll = _smooth_wobble(rng, theta, math.radians(3.0))
    radii = (1.0, 0.8) if trajectory == "outward" else ORBIT_RADII
    poses = []
    for i in range(num_images):
        position = np.array([radii[0] * math.cos(theta[i]), radii[1] * math.sin(theta[i]), height[i]])
        if trajectory == "outward":
            yaw, pitch = theta[i], math.radians(-10.0)
        else:
            to_target = ORBIT_TARGET - position
            yaw = math.atan2(to_target[1], to_target[0])
            pitch = math.atan2(to_target[2], np.linalg.norm(to_target[:2]))
        pose = np.eye(4)
        pose[:3, :3] = look_rotation(yaw + yaw_wobble[i], pitch + pitch_wobble[i], roll[i])
        pose[:3, 3] = position
        poses.append(pose)
    return poses


# ---------------------------------------------------------------------------
# Procedural textures
# ---------------------------------------------------------------------------

def _multiscale_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Colour value noise summed over several cell sizes, uint8 HxWx3."""
    acc = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((max(height, width) / 3, 0.45), (48, 0.3), (12, 0.15), (3, 0.1)):
        grid = rng.random((int(height / cell) + 2, int(width / cell) + 2, 3), dtype=np.float32)
        acc += weight * cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)
    lo, hi = np.percentile(acc, [1, 99])
    return np.clip((acc - lo) / (hi - lo + 1e-6) * 255.0, 0, 255).astype(np.uint8)


def _contrasting_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """Random colour pushed towards saturated extremes for strong edges."""
    colour = rng.integers(0, 256, size=3)
    colour[rng.integers(0, 3)] = rng.choice([0, 255])
    return tuple(int(c) for c in colour)


_GLYPHS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789#%&@"
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)


def _draw_random_shape(img: np.ndarray, rng: np.random.Generator, size: float) -> None:
    """Draw one filled or stroked primitive (or a short string) of about `size` px."""
    h, w = img.shape[:2]
    x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
    colour = _contrasting_colour(rng)
    r = max(2, int(size / 2))
    thickness = -1 if rng.random() < 0.6 else int(rng.integers(1, max(2, r // 3) + 1))
    kind = rng.integers(0, 6)
    if kind == 0:
        cv2.circle(img, (x, y), r, colour, thickness, cv2.LINE_AA)
    elif kind == 1:
        dx, dy = (rng.uniform(0.3, 1.0, size=2) * r).astype(int)
        cv2.rectangle(img, (x - dx, y - dy), (x + dx, y + dy), colour, thickness)
    elif kind == 2:
        pts = (np.array([x, y]) + rng.uniform(-r, r, size=(int(rng.integers(3, 7)), 2))).astype(np.int32)
        if thickness < 0:
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
        else:
            cv2.polylines(img, [pts], True, colour, thickness, cv2.LINE_AA)
    elif kind == 3:
        end = (x + int(rng.uniform(-2, 2) * r), y + int(rng.uniform(-2, 2) * r))
        cv2.line(img, (x, y), end, colour, max(1, r // 4), cv2.LINE_AA)
    elif kind == 4:
        axes = tuple(int(a) for a in rng.uniform(0.3, 1.0, size=2) * r)
        cv2.ellipse(img, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, colour, thickness, cv2.LINE_AA)
    else:
        text = "".join(rng.choice(list(_GLYPHS), size=int(rng.integers(2, 7))))
        font = _FONTS[int(rng.integers(0, len(_FONTS)))]
        scale = max(0.3, size / 30.0)
        cv2.putText(img, text, (x, y), font, scale, colour, max(1, int(scale * 1.5)), cv2.LINE_AA)


def make_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Non-repeating, high-contrast texture (uint8 HxWx3): noise + shapes + glyphs.

    Shape sizes are log-uniform and drawn largest first, so small details stay
    on top and every region carries structure at several scales.
    """
    img = _multiscale_noise(rng, height, width)
    # Same shape density and size range (in texels) on every surface, so small
    # faces look as busy as the walls.
    count = max(8, height * width // 700)
    largest = min(100.0, 0.5 * min(height, width))
    sizes = np.sort(np.exp(rng.uniform(math.log(4.0), math.log(largest), count)))[::-1]
    for size in sizes:
        _draw_random_shape(img, rng, float(size))
    return img


def _texture_size(extent_u: float, extent_v: float) -> tuple[int, int]:
    """(height, width) in texels; widths are multiples of 4 because pyrender
    uploads RGB rows with OpenGL's default 4-byte unpack alignment."""
    def texels(metres: float) -> int:
        return max(16, int(round(metres * TEXELS_PER_METRE / 4)) * 4)
    return texels(extent_v), texels(extent_u)


# ---------------------------------------------------------------------------
# Scene geometry
# ---------------------------------------------------------------------------

def _facing(quad: Quad, direction: np.ndarray) -> Quad:
    """Same rectangle, parametrised so that edge_u x edge_v points along
    `direction`: seen from that side the texture is upright, not mirrored."""
    if np.dot(np.cross(quad.edge_u, quad.edge_v), direction) >= 0:
        return quad
    return Quad(quad.corner + quad.edge_u, -quad.edge_u, quad.edge_v)


def box_faces(lo: Sequence[float], hi: Sequence[float], inward: bool = False) -> list[Quad]:
    """The six faces of an axis-aligned box (x-, x+, y-, y+, z-, z+), textured
    to be seen from outside, or from inside when `inward`."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    ex, ey, ez = np.diag(hi - lo)
    faces = [(Quad(lo, ey, ez), -ex), (Quad(lo + ex, ey, ez), ex),
             (Quad(lo, ex, ez), -ey), (Quad(lo + ey, ex, ez), ey),
             (Quad(lo, ex, ey), -ez), (Quad(lo + ez, ex, ey), ez)]
    sign = -1.0 if inward else 1.0
    return [_facing(quad, sign * outward) for quad, outward in faces]


def scene_quads() -> list[Quad]:
    """Every textured rectangle in the scene: room shell, then furniture."""
    quads = box_faces(ROOM_MIN, ROOM_MAX, inward=True)
    for box in FURNITURE:
        # Furniture standing on the floor never shows its bottom face.
        faces = box_faces(box.lo, box.hi)
        quads.extend(faces[:4] + faces[5:] if box.lo[2] <= ROOM_MIN[2] else faces)
    return quads


def build_scene(seed: int = 0, quads: Sequence[Quad] | None = None) -> Any:
    """pyrender.Scene with every quad carrying its own random texture."""
    pyrender = import_pyrender()
    rng = np.random.default_rng([seed, 0])
    primitives = []
    for quad in (scene_quads() if quads is None else quads):
        tex_h, tex_w = _texture_size(np.linalg.norm(quad.edge_u), np.linalg.norm(quad.edge_v))
        primitives.append(textured_primitive(quad, make_texture(rng, tex_h, tex_w)))
    scene = pyrender.Scene(bg_color=np.zeros(4), ambient_light=np.ones(3))
    scene.add(pyrender.Mesh(primitives=primitives))
    return scene


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

class SceneRenderer:
    """One offscreen renderer and pinhole camera, reused for many poses."""

    def __init__(self, scene: Any, width: int, height: int, focal: float):
        pyrender = import_pyrender()
        self._pyrender = pyrender
        fx, fy, cx, cy = intrinsics(width, height, focal)
        self._scene = scene
        camera = pyrender.IntrinsicsCamera(fx, fy, cx, cy, znear=Z_NEAR, zfar=Z_FAR)
        self._camera_node = scene.add(camera, pose=np.eye(4))
        try:
            self._renderer = pyrender.OffscreenRenderer(width, height)
        except Exception as exc:
            scene.remove_node(self._camera_node)
            raise RenderingUnavailable(platform_hint(exc)) from exc

    def render(self, cam_to_world_cv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 HxWx3 and z-depth float32 HxW in metres (0 = nothing hit)."""
        self._scene.set_pose(self._camera_node, cam_to_world_cv @ FLIP_YZ)  # OpenCV -> OpenGL camera axes
        flags = self._pyrender.RenderFlags
        # FLAT: texture colour only, no lighting; RGBA: 4-byte rows read back
        # correctly for any width.
        colour, depth = self._renderer.render(self._scene, flags=flags.FLAT | flags.RGBA)
        return np.ascontiguousarray(colour[..., :3]), depth.astype(np.float32)

    def close(self) -> None:
        self._renderer.delete()
        self._scene.remove_node(self._camera_node)

    def __enter__(self) -> "SceneRenderer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def depth_to_millimetres(depth_m: np.ndarray) -> np.ndarray:
    """uint16 millimetres; 0 stays invalid, far values saturate at 65535."""
    return np.clip(np.round(depth_m * 1000.0), 0, 65535).astype(np.uint16)


def write_frame(out_dir: Path, stem: str, rgb: np.ndarray, pose: np.ndarray,
                depth_m: np.ndarray | None) -> None:
    """Write one image, its pose and optionally its depth map."""
    _write_atomic(out_dir / "images" / f"{stem}.png", _png_bytes(rgb[..., ::-1]))
    pose_text = _pose_text(pose)
    _write_atomic(out_dir / "poses" / f"{stem}.pose.txt", pose_text.encode())
    if depth_m is not None:
        _write_atomic(out_dir / "depth" / f"{stem}.depth.png", _png_bytes(depth_to_millimetres(depth_m)))


def write_calibration(out_dir: Path, width: int, height: int, focal: float) -> None:
    """calibration.txt: `fx fy cx cy width height`, the principal point at the image centre."""
    fx, fy, cx, cy = intrinsics(width, height, focal)
    _write_atomic(out_dir / "calibration.txt", f"{fx:.6f} {fy:.6f} {cx:.6f} {cy:.6f} {width} {height}\n".encode())


def _pose_text(pose: np.ndarray) -> str:
    buf = io.StringIO()
    np.savetxt(buf, pose, fmt="%.9f")
    return buf.getvalue()


README_TEXT = """# Synthetic textured room

Generated by this project's `datasets/synthetic_scene.py` (seed {seed}): a procedurally
textured 6 m x 5 m x 3 m room with a few boxes, rendered with pyrender. Nothing in it
comes from a third party; it is dedicated to the public domain (CC0-style) and may be
redistributed freely.

- `images/<stem>.png`: RGB, {width}x{height}
- `poses/<stem>.pose.txt`: 4x4 camera-to-world, OpenCV camera axes (x right, y down,
  z forward), metres; world z is up
- `depth/<stem>.depth.png`: 16-bit depth along the camera z axis in millimetres, 0 = invalid
- `calibration.txt`: `fx fy cx cy width height`; the principal point is the image centre
  and pixel (col, row) has its centre at (col + 0.5, row + 0.5)
"""


def _prepare_output(out_dir: Path, with_depth: bool) -> None:
    """Create folders and drop frames of an earlier, different render (our names only)."""
    folders = {"images": ".png", "poses": ".pose.txt", "depth": ".depth.png"}
    for name, suffix in folders.items():
        folder = out_dir / name
        if name == "depth" and not with_depth:
            if folder.is_dir():
                _remove_frames(folder, suffix)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        _remove_frames(folder, suffix)


def _remove_frames(folder: Path, suffix: str) -> None:
    for path in folder.iterdir():
        if path.name.endswith(suffix) and STEM_PATTERN.match(path.name[: -len(suffix)]):
            path.unlink()


def _frames(renderer: SceneRenderer, poses: Sequence[np.ndarray],
            progress: bool) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    from ace_util import progress_bar
    for i, pose in enumerate(progress_bar(poses, desc="rendering", unit="img", disable=not progress)):
        rgb, depth = renderer.render(pose)
        yield i, rgb, depth


def render_scene(out_dir: Path, num_images: int = 24, width: int = 640, height: int = 480,
                 focal: float | None = None, seed: int = 0, with_depth: bool = True,
                 progress: bool = False, yaw_step_deg: float = MAX_YAW_STEP_DEG,
                 trajectory: str = "outward") -> Path:
    """Render the textured room from a smooth camera loop into `out_dir`.

    Deterministic for a given seed. Frames named frame_NNNNN left over from an
    earlier render in `out_dir` are replaced. Raises RenderingUnavailable if no
    OpenGL context can be created and OSError if `out_dir` is not writable.
    """
    if width < 8 or height < 8:
        raise ValueError("width and height must be at least 8 pixels")
    focal = default_focal(width) if focal is None else float(focal)
    if focal <= 0:
        raise ValueError("focal must be positive")
    out_dir = Path(out_dir)
    poses = camera_trajectory(num_images, seed, yaw_step_deg, trajectory)
    _prepare_output(out_dir, with_depth)
    scene = build_scene(seed)
    with SceneRenderer(scene, width, height, focal) as renderer:
        for i, rgb, depth in _frames(renderer, poses, progress):
            write_frame(out_dir, f"frame_{i:05d}", rgb, poses[i], depth if with_depth else None)
    write_calibration(out_dir, width, height, focal)
    _write_atomic(out_dir / "README.md", README_TEXT.format(seed=seed, width=width, height=height).encode())
    return out_dir


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Render a procedurally textured synthetic room as a posed image set "
                    "(images/, poses/, depth/, calibration.txt). Needs headless OpenGL "
                    "(PYOPENGL_PLATFORM=egl by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="output folder (created if missing)")
    parser.add_argument("--num_images", type=int, default=24, help="number of frames along the camera loop")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH, help="image width in pixels")
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT, help="image height in pixels")
    parser.add_argument("--focal", type=float, default=None,
                        help="focal length in pixels; %(default)s means 525 * width / 640")
    parser.add_argument("--seed", type=int, default=0, help="seed for textures and camera wobble")
    parser.add_argument("--yaw_step", type=float, default=MAX_YAW_STEP_DEG,
                        help="camera heading change per frame (deg); smaller = more overlap")
    parser.add_argument("--trajectory", choices=TRAJECTORIES, default="outward",
                        help="outward: room scan from the middle; orbit: object capture around the pedestal")
    parser.add_argument("--no_depth", action="store_true", help="do not write depth maps")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        out = render_scene(args.out_dir, args.num_images, args.width, args.height, args.focal,
                           args.seed, with_depth=not args.no_depth, progress=True,
                           yaw_step_deg=args.yaw_step, trajectory=args.trajectory)
    except RenderingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write output folder {args.out_dir}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.num_images} frames to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
