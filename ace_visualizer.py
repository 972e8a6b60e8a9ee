"""Video frames of the reconstruction process, rendered headless (pyrender on EGL) with cv2 overlays.

Three phases, each in its own process, draw into one folder of `frame_NNNNN.png`:
- mapping (train_ace.py): the scene coordinates of the last training batches, coloured by reprojection error,
  and the mapping cameras; at the end the network's point cloud is revealed;
- registration (register_mapping.py): the map and each newly registered camera, coloured by confidence;
- final sweep (render_final_sweep.py): a slow pan over the map and all cameras.
They hand over a visualisation buffer (`<stem>_mapping.pkl`, `<stem>_register.pkl`): the map point cloud (OpenGL
axes, RGB 0-255), the next frame index, the observer camera's recent poses and the pan cameras (spec 2.6).

World and camera poses here are in OpenGL axes (x right, y up, looking down -z), as in the buffers.
"""
from __future__ import annotations

import os

# pyrender picks its OpenGL platform when it is first imported; EGL renders without a display.
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import logging
import math
import pickle
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

import dataset_io
from calibration import Intrinsics
from ace_util import UserError, atomic_write, is_registered
from ace_vis_util import (CONFIDENCE_CAP, FRUSTUM_HALF_HEIGHT, Quad, RenderFlags, RenderingUnavailable,
                          cameras_mesh, confidence_colour_table, cool_reversed, frustum_mesh, import_pyrender,
                          pyramid_marker_mesh, read_visualization_buffer, textured_primitive)

_log = logging.getLogger(__name__)

# On the CPU the frames are rasterised by Mesa's llvmpipe: a quarter of the original's 1280x720 pixels keeps
# rendering a small share of the mapping time; with CUDA the original resolution.
CPU_FRAME_SIZE = (640, 360)
GPU_FRAME_SIZE = (1280, 720)
POINT_SIZE = 2.0
FIELD_OF_VIEW = math.pi / 3
RENDER_RETRIES = 10
OBSERVER_HISTORY = 40            # the observer shows the mean of this many recent target poses
PAN_VIEWS = 110
PAN_ARC_DEG = 60.0
MAPPING_BATCHES_SHOWN = 5        # rolling buffer of training batches drawn during mapping
REVEAL_FRAMES = 10               # frames over which the final map appears
HISTOGRAM_BINS = 40
MAX_REGISTRATION_FRAMES = 60
DISPLACEMENT_CAP_M = 1.0         # refined cameras: colour saturates at this displacement
MAP_POINTS_MAX = 300_000         # rendered map points: ~0.3 s per 640x360 frame on llvmpipe at the cap
MAP_POINTS_MIN = 100_000
GREY_MAPPING_CAMERA = np.array([150, 150, 150], np.uint8)
# --render_marker_size is the half-width of a camera pyramid's base; the pyramid is three times as deep.
MARKER_DEPTH_FACTOR = 3.0
FRUSTUM_FACTOR = 6.0             # the current camera's (larger) frustum, relative to the marker size
TEXTURE_WIDTH = 160              # the registered image drawn inside its frustum, downsampled
VIDEO_FPS = 30

# Colour ramps as anchor colours (RGB 0-1) at evenly spaced positions, interpolated linearly.
# Reprojection error: bright cyan (0 px) through violet to dark magenta (threshold and above).
ERROR_ANCHORS = np.array([[0.10, 0.95, 0.95], [0.35, 0.65, 0.95], [0.60, 0.35, 0.85], [0.55, 0.10, 0.55],
                          [0.30, 0.02, 0.30]])
# Camera displacement: a plasma-like ramp, deep blue (0) through magenta and orange to yellow (cap).
DISPLACEMENT_ANCHORS = np.array([[0.05, 0.03, 0.53], [0.49, 0.01, 0.66], [0.80, 0.28, 0.47], [0.97, 0.58, 0.25],
                                 [0.94, 0.98, 0.13]])


# ----------------------------------------------------------------------------------------------------------------
# Colours

def ramp_colours(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """N x 3 uint8: values in [0, 1] (clipped) through the anchor colours."""
    t = np.clip(np.nan_to_num(np.asarray(values, np.float64), nan=1.0), 0.0, 1.0)
    positions = np.linspace(0.0, 1.0, len(anchors))
    rgb = np.stack([np.interp(t, positions, anchors[:, c]) for c in range(3)], axis=-1)
    return np.round(rgb * 255).astype(np.uint8)


def error_colours(errors: np.ndarray, threshold: float) -> np.ndarray:
    return ramp_colours(np.asarray(errors) / max(threshold, 1e-9), ERROR_ANCHORS)


def confidence_colours_capped(confidences: np.ndarray, threshold: float, top: float) -> np.ndarray:
    """export_cameras' confidence colours with the top of the range at `top` instead of its fixed cap."""
    table = confidence_colour_table(threshold * CONFIDENCE_CAP / top)
    fraction = np.clip(np.nan_to_num(np.asarray(confidences, np.float64), posinf=top) / top, 0.0, 1.0)
    return table[(fraction * (len(table) - 1)).astype(int)]


def iteration_colours(iterations: np.ndarray, levels: int = 10) -> np.ndarray:
    """Cameras by the iteration that registered them: magenta (first) to cyan (10th and later)."""
    t = np.minimum(np.asarray(iterations, np.float64), levels - 1) / (levels - 1)
    return np.round(cool_reversed(t) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Poses

def opengl_cam_to_world(world_to_cam_cv: np.ndarray) -> np.ndarray:
    """N x 4 x 4 OpenGL camera-to-world from N x 3 x 4 (or 4 x 4) OpenCV world-to-camera poses."""
    poses = np.asarray(world_to_cam_cv, np.float64)
    result = []
    for pose in poses:
        full = np.eye(4)
        full[:3] = pose[:3]
        result.append(dataset_io.opencv_to_opengl_pose(dataset_io.invert_pose(full)))
    return np.stack(result) if result else np.zeros((0, 4, 4))


class ObserverCamera:
    """A camera that trails its targets: each target is pushed back along its viewing axis and the camera shows
    the mean of the recent ones, so cuts between targets become slow, smooth moves."""

    def __init__(self, history: Sequence[np.ndarray], z_offset: float):
        self.history = deque((np.asarray(p, np.float64) for p in history), maxlen=OBSERVER_HISTORY)
        self.z_offset = z_offset

    def follow(self, target: np.ndarray) -> None:
        backed = np.array(target, np.float64)
        backed[:3, 3] += backed[:3, 2] * self.z_offset  # +z is backwards for an OpenGL camera
        self.history.append(backed)

    def pose(self) -> np.ndarray:
        mean = np.mean(np.stack(self.history), axis=0)
        mean[:3, :3] = dataset_io.nearest_rotation(mean[:3, :3])
        mean[3] = (0, 0, 0, 1)
        return mean


def pan_cameras(cam_to_world: np.ndarray, arc_deg: float = PAN_ARC_DEG, count: int = PAN_VIEWS,
                flipped_portrait: bool = False) -> list[np.ndarray]:
    """Views on an arc around the mean camera position, all looking at it, oriented like the middle camera.

    The arc turns about the middle camera's up axis: y, or x for images lying on their side."""
    positions = cam_to_world[:, :3, 3]
    centre = positions.mean(axis=0)
    largest_two = np.sort(np.ptp(positions, axis=0))[-2:]
    radius = 0.5 * float(largest_two.mean())
    reference = cam_to_world[len(cam_to_world) // 2]
    views = []
    for angle in np.radians(np.linspace(-arc_deg / 2, arc_deg / 2, count)):
        pose = np.eye(4)
        pose[:3, :3] = dataset_io.rotation_about(reference[:3, 0 if flipped_portrait else 1], angle) @ reference[:3, :3]
        pose[:3, 3] = centre + pose[:3, 2] * radius
        views.append(pose)
    return views


def pan_view(views: Sequence[np.ndarray], frame_idx: int) -> np.ndarray:
    """Back and forth along the pan views, one step per frame."""
    if len(views) == 1:
        return views[0]
    period = 2 * (len(views) - 1)
    step = frame_idx % period
    return views[step if step < len(views) else period - step]


# ----------------------------------------------------------------------------------------------------------------
# Visualisation buffer

@dataclass
class VisBuffer:
    """What one phase hands to the next (pickled as a plain dict, spec 2.6)."""
    map_xyz: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))  # OpenGL axes
    map_clr: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))  # RGB 0-255
    frame_idx: int = 0
    camera_buffer: list = field(default_factory=list)
    pan_cameras: list = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "VisBuffer":
        state = read_visualization_buffer(path)
        return cls(np.asarray(state["map_xyz"], np.float32).reshape(-1, 3),
                   np.asarray(state["map_clr"], np.float32).reshape(-1, 3), int(state.get("frame_idx", 0)),
                   [np.asarray(p) for p in state.get("camera_buffer", [])],
                   [np.asarray(p) for p in state.get("pan_cameras", [])])

    @classmethod
    def load_or_empty(cls, path: Path | None) -> "VisBuffer":
        if path is None:
            return cls()
        if not path.is_file():
            _log.warning("visualisation buffer %s not found: frames start at 0 with an empty map", path)
            return cls()
        return cls.load(path)

    def save(self, path: Path) -> None:
        state = {"map_xyz": self.map_xyz, "map_clr": self.map_clr, "frame_idx": self.frame_idx,
                 "camera_buffer": list(self.camera_buffer), "pan_cameras": list(self.pan_cameras)}
        atomic_write(path, lambda handle: pickle.dump(state, handle), binary=True)
        _log.info("wrote visualisation buffer %s (%d map points, next frame %d)", path, len(self.map_xyz),
                  self.frame_idx)


# ----------------------------------------------------------------------------------------------------------------
# Rendering

@dataclass
class RenderSettings:
    folder: Path
    size: tuple[int, int]            # (width, height) of the saved frames
    flipped_portrait: bool
    marker_size: float
    camera_z_offset: float

    @classmethod
    def for_device(cls, flags: RenderFlags, device_type: str) -> "RenderSettings":
        size = GPU_FRAME_SIZE if device_type == "cuda" else CPU_FRAME_SIZE
        settings = cls(flags.target_path, size, flags.flipped_portrait, flags.marker_size, flags.camera_z_offset)
        _log.info("rendering %dx%d frames into %s", *size, settings.folder)
        return settings

    @classmethod
    def matching_frames(cls, folder: Path, marker_size: float, z_offset: float,
                        flipped_portrait: bool) -> "RenderSettings":
        """Settings for more frames in `folder`, at the size of the frames already there."""
        existing = frame_files(folder)
        last = cv2.imread(str(existing[-1])) if existing else None
        size = (last.shape[1], last.shape[0]) if last is not None else CPU_FRAME_SIZE
        return cls(folder, size, flipped_portrait, marker_size, z_offset)


@dataclass
class Meshes:
    """Geometry of one frame besides the point cloud."""
    items: list = field(default_factory=list)  # trimesh.Trimesh (vertex colours) or pyrender.Mesh

    def add_cameras(self, cam_to_world: np.ndarray, colours: np.ndarray, template) -> None:
        if len(cam_to_world):
            self.items.append(cameras_mesh(list(cam_to_world), colours, template))


def marker_template(marker_size: float) -> tuple[np.ndarray, np.ndarray]:
    return pyramid_marker_mesh(marker_size * MARKER_DEPTH_FACTOR)


def box_template(size: float) -> tuple[np.ndarray, np.ndarray]:
    import trimesh
    box = trimesh.creation.box(extents=(size, size, size))
    return np.asarray(box.vertices), np.asarray(box.faces)


def image_in_frustum(image_rgb: np.ndarray, cam_to_world: np.ndarray, scale: float):
    """pyrender mesh of the image on the far plane of its frustum (export_cameras.frustum_mesh geometry)."""
    import pyrender
    height, width = image_rgb.shape[:2]
    small = cv2.resize(image_rgb, (TEXTURE_WIDTH, max(4, round(TEXTURE_WIDTH * height / width))),
                       interpolation=cv2.INTER_AREA)
    half_h = FRUSTUM_HALF_HEIGHT * scale
    half_w = half_h * width / height
    rotation, centre = cam_to_world[:3, :3], cam_to_world[:3, 3]
    # Texture row 0 is the top of the image: start the quad at the top-left corner, v running down.
    corner = centre + rotation @ np.array([-half_w, half_h, -scale])
    quad = Quad(corner, rotation @ np.array([2 * half_w, 0.0, 0.0]), rotation @ np.array([0.0, -2 * half_h, 0.0]))
    return pyrender.Mesh(primitives=[textured_primitive(quad, np.ascontiguousarray(small))])


class FrameRenderer:
    """One offscreen renderer reused for every frame; two passes (points on black, then camera meshes on a
    transparent background) blended, so cameras stay visible inside dense point clouds."""

    def __init__(self, size: tuple[int, int], flipped_portrait: bool):
        try:
            self.pyrender = import_pyrender()
        except RenderingUnavailable as error:
            raise UserError(f"--render_visualization: {error}") from None
        self.flipped = flipped_portrait
        # Portrait images lie on their side: render the rotated frame, turn it upright afterwards.
        self.size = (size[1], size[0]) if flipped_portrait else size
        self.renderer = None
        self._open()

    def _open(self) -> None:
        try:
            self.renderer = self.pyrender.OffscreenRenderer(*self.size, point_size=POINT_SIZE)
        except Exception as error:  # EGL/GL failures come in many types
            raise UserError(f"--render_visualization: no offscreen OpenGL context ({type(error).__name__}: "
                            f"{error}); install Mesa EGL (libegl1)") from None

    def render(self, observer: np.ndarray, xyz: np.ndarray, rgb: np.ndarray, meshes: Meshes) -> np.ndarray:
        """H x W x 3 uint8 frame seen from `observer` (4x4 OpenGL camera-to-world)."""
        for attempt in range(RENDER_RETRIES):
            try:
                return self._render_once(observer, xyz, rgb, meshes)
            except Exception as error:  # a lost GL context: start a new renderer and try again
                _log.warning("rendering failed (%s), retry %d", error, attempt + 1)
                self.close()
                self._open()
        raise RuntimeError(f"rendering failed {RENDER_RETRIES} times")

    def _render_once(self, observer, xyz, rgb, meshes: Meshes) -> np.ndarray:
        pyrender = self.pyrender
        flags = pyrender.RenderFlags.RGBA | pyrender.RenderFlags.FLAT
        camera = pyrender.PerspectiveCamera(yfov=FIELD_OF_VIEW, aspectRatio=self.size[0] / self.size[1])
        frame = np.zeros((self.size[1], self.size[0], 3), np.float32)
        if len(xyz):
            scene = pyrender.Scene(bg_color=[0, 0, 0, 1], ambient_light=[1, 1, 1])
            scene.add(pyrender.Mesh.from_points(np.asarray(xyz, np.float32), colors=np.asarray(rgb, np.uint8)))
            scene.add(camera, pose=observer)
            frame = self.renderer.render(scene, flags=flags)[0][..., :3].astype(np.float32)
        if meshes.items:
            scene = pyrender.Scene(bg_color=[0, 0, 0, 0], ambient_light=[1, 1, 1])
            for item in meshes.items:
                scene.add(item if isinstance(item, pyrender.Mesh) else pyrender.Mesh.from_trimesh(item, smooth=False))
            scene.add(camera, pose=observer)
            overlay = self.renderer.render(scene, flags=flags)[0].astype(np.float32)
            alpha = overlay[..., 3:] / 255.0
            frame = overlay[..., :3] * alpha + frame * (1.0 - alpha)
        frame = np.clip(frame, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.rot90(frame, k=-1)) if self.flipped else frame

    def close(self) -> None:
        if self.renderer is not None:
            try:
                self.renderer.delete()
            except Exception:  # the context may already be gone
                pass
            self.renderer = None


# ----------------------------------------------------------------------------------------------------------------
# Overlays (cv2: no plotting library needed)

def draw_caption(frame: np.ndarray, lines: Sequence[str]) -> None:
    """White text with a dark outline, top left, scaled with the frame height."""
    scale = frame.shape[0] / 720
    y = int(50 * scale)
    for index, line in enumerate(lines):
        size = (1.4 if index == 0 else 0.9) * scale
        for colour, thickness in (((0, 0, 0), 5), ((255, 255, 255), 2)):
            cv2.putText(frame, line, (int(30 * scale), y), cv2.FONT_HERSHEY_SIMPLEX, size, colour,
                        max(1, round(thickness * scale)), cv2.LINE_AA)
        y += int((60 if index == 0 else 42) * scale)


def draw_histogram(frame: np.ndarray, values: np.ndarray, value_range: tuple[float, float],
                   bin_colours: np.ndarray, label: str, left_corner: bool = False) -> None:
    """Bar chart in the bottom right (or left) corner; values outside the range count in the first/last bin."""
    height, width = frame.shape[:2]
    box_w, box_h = int(width * 0.3), int(height * 0.2)
    left = int(width * 0.02) if left_corner else width - box_w - int(width * 0.02)
    bottom = height - int(height * 0.04)
    top = bottom - box_h
    backdrop = frame[top:bottom, left:left + box_w]
    backdrop[:] = (backdrop * 0.4).astype(np.uint8)  # darken behind the bars for contrast
    bins = len(bin_colours)
    counts = np.histogram(np.clip(values, *value_range), bins=bins, range=value_range)[0] if len(values) \
        else np.zeros(bins)
    label_h = int(box_h * 0.22)
    bar_h = box_h - label_h - 4
    peak = max(counts.max(), 1)
    for index, count in enumerate(counts):
        x0 = left + 2 + index * (box_w - 4) // bins
        x1 = left + 2 + (index + 1) * (box_w - 4) // bins - 1
        y0 = top + 2 + bar_h - int(round(bar_h * count / peak))
        colour = tuple(int(c) for c in bin_colours[index])
        cv2.rectangle(frame, (x0, y0), (max(x0, x1), top + 2 + bar_h), colour, thickness=-1)
    cv2.putText(frame, label, (left + 4, bottom - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * height / 360,
                (255, 255, 255), 1, cv2.LINE_AA)


# ----------------------------------------------------------------------------------------------------------------
# A phase: renderer + observer + buffer + frame numbering

class Phase:
    """Common state of a rendering phase: settings, renderer, observer camera and the frame counter."""

    def __init__(self, settings: RenderSettings, buffer: VisBuffer):
        self.settings, self.buffer = settings, buffer
        settings.folder.mkdir(parents=True, exist_ok=True)
        self.renderer = FrameRenderer(settings.size, settings.flipped_portrait)
        self.observer = ObserverCamera(buffer.camera_buffer, settings.camera_z_offset)
        self.render_seconds = 0.0
        self.frames = 0

    def emit(self, target: np.ndarray, xyz: np.ndarray, rgb: np.ndarray, meshes: Meshes, caption: Sequence[str],
             histogram: tuple | None = None, left_histogram: tuple | None = None) -> Path:
        """Render, annotate and save the next frame; the observer moves one step towards `target`."""
        start = time.time()
        self.observer.follow(target)
        frame = self.renderer.render(self.observer.pose(), xyz, rgb, meshes)
        draw_caption(frame, caption)
        if histogram is not None:
            draw_histogram(frame, *histogram)
        if left_histogram is not None:
            draw_histogram(frame, *left_histogram, left_corner=True)
        path = self.settings.folder / f"frame_{self.buffer.frame_idx:05d}.png"
        ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"cannot encode frame {path}")
        atomic_write(path, lambda handle: handle.write(png.tobytes()), binary=True)
        self.buffer.frame_idx += 1
        self.frames += 1
        self.render_seconds += time.time() - start
        return path

    def finish(self, path: Path) -> None:
        self.buffer.camera_buffer = list(self.observer.history)
        self.buffer.save(path)
        self.renderer.close()
        _log.info("rendered %d frames in %.1f s (%.0f ms per frame)", self.frames, self.render_seconds,
                  1000 * self.render_seconds / max(self.frames, 1))


# ----------------------------------------------------------------------------------------------------------------
# Mapping

class MappingVisualizer(Phase):
    """Frames of train_ace.py: predicted scene coordinates of the latest batches and the mapping cameras."""

    def __init__(self, settings: RenderSettings, stem: str, mapping_world_to_cam: np.ndarray,
                 error_threshold: float, depth_filter: float, previous_buffer: str | None):
        previous = settings.folder / previous_buffer if previous_buffer else None
        buffer = VisBuffer.load_or_empty(previous)
        super().__init__(settings, buffer)
        self.stem, self.error_threshold, self.depth_filter = stem, error_threshold, depth_filter
        self.mapping_cameras = opengl_cam_to_world(mapping_world_to_cam)
        buffer.pan_cameras = pan_cameras(self.mapping_cameras, flipped_portrait=settings.flipped_portrait)
        buffer.map_xyz, buffer.map_clr = VisBuffer().map_xyz, VisBuffer().map_clr  # the new map replaces the old
        self.batches: deque = deque(maxlen=MAPPING_BATCHES_SHOWN)
        self.depth_histogram = False  # --render_depth_hist

    def record_batch(self, scene_xyz, errors, depth) -> None:
        """Keep a training batch (torch tensors, detached; OpenCV world) for the next frame."""
        self.batches.append((scene_xyz.detach(), errors.detach(), depth.detach()))

    def _batch_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch
        if not self.batches:
            return np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0)
        xyz, errors, depth = (torch.cat(parts).float().cpu().numpy() for parts in zip(*self.batches))
        keep = (depth > 0) & (depth < self.depth_filter) & np.isfinite(xyz).all(axis=1)
        return dataset_io.flip_yz_points(xyz[keep]), error_colours(errors[keep], self.error_threshold), errors[keep]

    def _camera_meshes(self, refined_world_to_cam: np.ndarray) -> Meshes:
        """Mapping cameras as grey boxes, refined cameras as pyramids coloured by how far they moved."""
        meshes = Meshes()
        size = self.settings.marker_size
        grey = np.repeat(GREY_MAPPING_CAMERA[None], len(self.mapping_cameras), axis=0)
        meshes.add_cameras(self.mapping_cameras, grey, box_template(size * 2))
        refined = opengl_cam_to_world(refined_world_to_cam)
        moved = np.linalg.norm(refined[:, :3, 3] - self.mapping_cameras[:, :3, 3], axis=1)
        meshes.add_cameras(refined, ramp_colours(moved / DISPLACEMENT_CAP_M, DISPLACEMENT_ANCHORS),
                           marker_template(size))
        return meshes

    def render_iteration(self, iteration: int, refined_world_to_cam: np.ndarray) -> None:
        xyz, rgb, errors = self._batch_points()
        threshold = self.error_threshold
        bins = error_colours((np.arange(HISTOGRAM_BINS) + 0.5) / HISTOGRAM_BINS * threshold, threshold)
        self.emit(pan_view(self.buffer.pan_cameras, self.buffer.frame_idx), xyz, rgb,
                  self._camera_meshes(refined_world_to_cam), ["Neural Mapping", f"Iteration {iteration}"],
                  (errors, (0.0, threshold), bins, f"reprojection error 0-{threshold:g} px"),
                  self._depth_histogram() if self.depth_histogram else None)

    def _depth_histogram(self) -> tuple:
        """Camera depths of the shown batches, from 0 to twice their median (all of them, also those behind the
        camera, which land in the first bin)."""
        import torch
        depth = torch.cat([d for _, _, d in self.batches]).float().cpu().numpy() if self.batches else np.zeros(0)
        top = max(2.0 * float(np.median(depth)), 1e-3) if len(depth) else 1.0
        bins = np.repeat(np.array([[200, 200, 200]], np.uint8), HISTOGRAM_BINS, axis=0)
        return depth, (0.0, top), bins, f"depth 0-{top:.2f}"

    def finish_map(self, regressor, entries: list[dataset_io.PoseEntry], image_resolution: int, device,
                   cameras: list[Intrinsics] | None = None) -> None:
        """Extract the network's point cloud, reveal it over a few frames, write `<stem>_mapping.pkl`."""
        from point_cloud import point_cloud_from_network
        cloud = point_cloud_from_network(regressor, entries, image_resolution, device,
                                         filter_depth=self.depth_filter, min_points_total=MAP_POINTS_MIN,
                                         max_points_total=MAP_POINTS_MAX, cameras=cameras)
        xyz = dataset_io.flip_yz_points(cloud.xyz.astype(np.float32))
        order = np.random.default_rng(0).permutation(len(xyz))
        xyz, rgb = xyz[order], cloud.rgb[order]
        meshes = self._camera_meshes(np.stack([e.world_to_cam[:3] for e in entries]))
        for step in range(1, REVEAL_FRAMES + 1):
            shown = len(xyz) * step // REVEAL_FRAMES
            self.emit(pan_view(self.buffer.pan_cameras, self.buffer.frame_idx), xyz[:shown], rgb[:shown], meshes,
                      ["Neural Mapping", "Extracting the map"])
        self.buffer.map_xyz, self.buffer.map_clr = xyz, rgb.astype(np.float32)
        self.finish(self.settings.folder / f"{self.stem}_mapping.pkl")


# ----------------------------------------------------------------------------------------------------------------
# Registration

def declutter(xyz: np.ndarray, rgb: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Map points within `radius` of the map's median point (stray far points would only add noise)."""
    if not len(xyz):
        return xyz, rgb
    keep = np.linalg.norm(xyz - np.median(xyz, axis=0), axis=1) < radius
    return xyz[keep], rgb[keep]


class RegistrationVisualizer(Phase):
    """Frames of register_mapping.py: the map, registered cameras by confidence, the current image."""

    def __init__(self, settings: RenderSettings, stem: str, total: int, success_threshold: float,
                 top_confidence: float, map_filter: float):
        buffer = VisBuffer.load_or_empty(settings.folder / f"{stem}_mapping.pkl")
        super().__init__(settings, buffer)
        self.stem, self.total = stem, total
        self.map_xyz, self.map_rgb = declutter(buffer.map_xyz, buffer.map_clr, map_filter)
        self.success_threshold, self.top_confidence = success_threshold, top_confidence
        self.every = max(1, total // MAX_REGISTRATION_FRAMES)
        self.poses: list[np.ndarray] = []       # OpenGL camera-to-world of every processed image
        self.confidences: list[float] = []
        self.target = pan_view(buffer.pan_cameras, buffer.frame_idx) if buffer.pan_cameras else None

    def add(self, image_path: str, world_to_cam_cv: np.ndarray, confidence: float) -> None:
        """Record one registration result; every few images, render a frame showing it."""
        pose = opengl_cam_to_world(world_to_cam_cv[None])[0]
        self.poses.append(pose)
        self.confidences.append(float(confidence))
        confident = is_registered(confidence, self.success_threshold)
        if confident or self.target is None:
            self.target = pose
        if (len(self.poses) - 1) % self.every == 0 or len(self.poses) == self.total:
            self._render(image_path, pose)

    def _render(self, image_path: str, pose: np.ndarray) -> None:
        confidences = np.array(self.confidences)
        colours = confidence_colours_capped(confidences, self.success_threshold, self.top_confidence)
        size = self.settings.marker_size
        meshes = Meshes()
        earlier = np.flatnonzero(is_registered(confidences[:-1], self.success_threshold))
        meshes.add_cameras(np.stack(self.poses)[earlier], colours[earlier], marker_template(size))
        frustum_scale = size * FRUSTUM_FACTOR
        image = dataset_io.load_image_rgb(image_path)
        meshes.add_cameras(pose[None], colours[-1:], frustum_mesh(frustum_scale, image.shape[1] / image.shape[0]))
        meshes.items.append(image_in_frustum(image, pose, frustum_scale))
        registered = int(is_registered(confidences, self.success_threshold).sum())
        top = self.top_confidence
        bins = confidence_colours_capped((np.arange(HISTOGRAM_BINS) + 0.5) / HISTOGRAM_BINS * top,
                                         self.success_threshold, top)
        self.emit(self.target, self.map_xyz, self.map_rgb, meshes,
                  ["Relocalisation", f"image {len(self.poses)} of {self.total}",
                   f"{registered} registered (confidence > {self.success_threshold:g})"],
                  (confidences, (0.0, top), bins, f"confidence 0-{top:g} inliers"))

    def finish_registration(self) -> None:
        self.finish(self.settings.folder / f"{self.stem}_register.pkl")


# ----------------------------------------------------------------------------------------------------------------
# Final sweep and video

class SweepVisualizer(Phase):
    """A slow pan over the finished reconstruction (render_final_sweep.py)."""

    def render_sweep(self, cameras: np.ndarray, iterations: np.ndarray, caption: Sequence[str], frames: int,
                     arc_deg: float) -> None:
        meshes = Meshes()
        meshes.add_cameras(cameras, iteration_colours(iterations), marker_template(self.settings.marker_size))
        views = pan_cameras(cameras, arc_deg, frames, self.settings.flipped_portrait)
        for view in views:
            self.emit(view, self.buffer.map_xyz, self.buffer.map_clr, meshes, caption)
        self.renderer.close()
        _log.info("rendered %d sweep frames in %.1f s", self.frames, self.render_seconds)


def write_video(frames: Sequence[Path], output: Path, fps: int = VIDEO_FPS) -> None:
    """H.264 mp4 of the frames (in the given order) with the ffmpeg binary that ships with imageio-ffmpeg."""
    import imageio_ffmpeg
    if not frames:
        raise UserError(f"no frames to write into {output}")
    first = cv2.imread(str(frames[0]))
    height, width = first.shape[:2]
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    writer = imageio_ffmpeg.write_frames(str(partial), (width, height), fps=fps, codec="libx264",
                                         macro_block_size=2, output_params=["-pix_fmt", "yuv420p"])
    writer.send(None)
    try:
        for path in frames:
            frame = cv2.imread(str(path))
            if frame is None or frame.shape[:2] != (height, width):
                raise UserError(f"{path}: unreadable or of another size than {frames[0]}")
            writer.send(np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    finally:
        writer.close()
    os.replace(partial, output)
    _log.info("wrote %s (%d frames, %d fps)", output, len(frames), fps)


def frame_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("frame_[0-9][0-9][0-9][0-9][0-9].png"))
