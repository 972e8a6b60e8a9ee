"""Drawing pieces shared by the visualiser (ace_visualizer.py), the camera export (export_cameras.py) and the
synthetic test scenes (datasets/synthetic_scene.py): confidence colours, camera frustum and marker meshes,
textured quads and headless pyrender, the reader of visualisation buffers, and the stages' rendering flags."""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ace_util import UserError

# ----------------------------------------------------------------------------------------------------------------
# Confidence colours and camera meshes

CONFIDENCE_CAP = 5000.0
TABLE_SIZE = 256
GREY = np.array([128, 128, 128], np.uint8)
DEFAULT_ASPECT = 4.0 / 3.0
FRUSTUM_HALF_HEIGHT = 0.375     # at unit distance in front of the camera
EDGE_HALF_THICKNESS = 0.05      # relative to the frustum scale (0.005 at the default scale 0.1)
MARKER_DEPTH = 3.0              # pyramid marker: corners (+-1, +-1, -3), scaled by frustum_scale / 3


# ----------------------------------------------------------------------------------------------------------------
# Colours

def cool_reversed(t: np.ndarray) -> np.ndarray:
    """matplotlib's 'cool' read backwards: magenta (t=0) -> cyan (t=1)."""
    s = 1.0 - t
    return np.stack([s, 1.0 - s, np.ones_like(s)], axis=1)


def _summer_reversed(t: np.ndarray) -> np.ndarray:
    """matplotlib's 'summer' read backwards: yellow (t=0) -> green (t=1)."""
    s = 1.0 - t
    return np.stack([s, 0.5 + 0.5 * s, np.full_like(s, 0.4)], axis=1)


def _ramp(count: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, count) if count > 1 else np.zeros(count)


def confidence_colour_table(threshold: float) -> np.ndarray:
    """256 x 3 uint8: the share of entries below threshold/5000 uses cool, the rest summer."""
    low = int(np.clip(threshold / CONFIDENCE_CAP * TABLE_SIZE, 0, TABLE_SIZE))
    table = np.vstack([cool_reversed(_ramp(low)), _summer_reversed(_ramp(TABLE_SIZE - low))])
    return np.round(table * 255).astype(np.uint8)


def confidence_colours(confidences: np.ndarray, threshold: float) -> np.ndarray:
    """N x 3 uint8 colour per camera."""
    confidences = np.asarray(confidences, dtype=np.float64)
    if len(confidences) == 1:
        return GREY[None].copy()  # nothing to compare a lone camera against
    fraction = np.clip(np.nan_to_num(confidences, posinf=CONFIDENCE_CAP), 0, CONFIDENCE_CAP) / CONFIDENCE_CAP
    return confidence_colour_table(threshold)[(fraction * (TABLE_SIZE - 1)).astype(int)]


# ----------------------------------------------------------------------------------------------------------------
# Geometry (camera space in OpenGL axes: x right, y up, looking down -z)

def _box_template() -> tuple[np.ndarray, np.ndarray]:
    """Unit box corners (signs) and outward-wound triangles."""
    import trimesh
    box = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    return np.sign(box.vertices), np.asarray(box.faces)


def edge_boxes(starts: np.ndarray, ends: np.ndarray, half_thickness: float) -> tuple[np.ndarray, np.ndarray]:
    """Thin boxes around line segments (E x 3 each): (E*8 x 3 vertices, E*12 x 3 faces).

    A segment is drawn as a box because mesh viewers do not show PLY edges reliably."""
    signs, faces = _box_template()
    direction = ends - starts
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
    helper = np.where(np.abs(direction[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    side = np.cross(direction, helper)
    side /= np.linalg.norm(side, axis=1, keepdims=True)
    up = np.cross(direction, side)  # (side, up, direction) is right-handed: the template winding stays outward
    anchor = np.where(signs[None, :, 2:3] < 0, starts[:, None], ends[:, None])
    vertices = anchor + half_thickness * (signs[None, :, 0:1] * side[:, None] + signs[None, :, 1:2] * up[:, None])
    all_faces = faces[None] + 8 * np.arange(len(starts))[:, None, None]
    return vertices.reshape(-1, 3), all_faces.reshape(-1, 3)


def frustum_mesh(scale: float, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Wire frustum (8 edges: apex to the four corners, and the rectangle) in camera space."""
    half_w, half_h = FRUSTUM_HALF_HEIGHT * aspect, FRUSTUM_HALF_HEIGHT
    corners = np.array([[-half_w, -half_h, -1.0], [half_w, -half_h, -1.0],
                        [half_w, half_h, -1.0], [-half_w, half_h, -1.0]]) * scale
    starts = np.vstack([np.zeros((4, 3)), corners])
    ends = np.vstack([corners, np.roll(corners, -1, axis=0)])
    return edge_boxes(starts, ends, EDGE_HALF_THICKNESS * scale)


def pyramid_marker_mesh(scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed pyramid, apex at the camera centre, base in front of the camera."""
    size = scale / MARKER_DEPTH
    vertices = np.array([[0, 0, 0], [-1, -1, -MARKER_DEPTH], [1, -1, -MARKER_DEPTH],
                         [1, 1, -MARKER_DEPTH], [-1, 1, -MARKER_DEPTH]], np.float64) * size
    faces = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1], [1, 3, 2], [1, 4, 3]])
    return vertices, faces


def cameras_mesh(cam_to_world_gl: list[np.ndarray], colours: np.ndarray, template: tuple[np.ndarray, np.ndarray]):
    """One trimesh with the template placed at every camera, vertex-coloured per camera."""
    import trimesh
    vertices, faces = template
    homogeneous = np.hstack([vertices, np.ones((len(vertices), 1))])
    placed = [(homogeneous @ pose.T)[:, :3] for pose in cam_to_world_gl]
    all_faces = [faces + i * len(vertices) for i in range(len(placed))]
    vertex_colours = np.repeat(colours, len(vertices), axis=0)
    return trimesh.Trimesh(np.vstack(placed), np.vstack(all_faces), vertex_colors=vertex_colours, process=False)


# ----------------------------------------------------------------------------------------------------------------
# Rendering flags (here, not in ace_visualizer.py: building them must not import the renderer)

@dataclass(frozen=True)
class RenderFlags:
    """The visualisation flags of a stage (cli_common.add_render_args); ace_visualizer.RenderSettings adds the
    frame size of the device."""
    target_path: Path
    flipped_portrait: bool
    marker_size: float
    camera_z_offset: float

    @classmethod
    def from_args(cls, args) -> "RenderFlags | None":
        """None when --render_visualization is off."""
        if not args.render_visualization:
            return None
        return cls(Path(args.render_target_path), args.render_flipped_portrait, args.render_marker_size,
                   float(args.render_camera_z_offset))


# ----------------------------------------------------------------------------------------------------------------
# Headless pyrender and textured quads

class RenderingUnavailable(RuntimeError):
    """No offscreen OpenGL context could be created."""


@dataclass(frozen=True)
class Quad:
    """Planar rectangle: corner + edge_u * s + edge_v * t for s, t in [0, 1]."""

    corner: np.ndarray
    edge_u: np.ndarray
    edge_v: np.ndarray


def import_pyrender() -> Any:
    """Import pyrender, turning a missing OpenGL platform into a clear error."""
    try:
        import pyrender
    except Exception as exc:  # platform libraries raise assorted types
        raise RenderingUnavailable(platform_hint(exc)) from exc
    return pyrender


def platform_hint(exc: BaseException) -> str:
    platform = os.environ.get("PYOPENGL_PLATFORM", "<unset>")
    return (f"cannot set up headless OpenGL rendering ({type(exc).__name__}: {exc}); "
            f"PYOPENGL_PLATFORM={platform}: install Mesa EGL (libegl1) and use "
            f"PYOPENGL_PLATFORM=egl, or OSMesa with PYOPENGL_PLATFORM=osmesa")


def textured_primitive(quad: Quad, texture: np.ndarray) -> Any:
    """pyrender primitive for one quad covered once (no tiling) by `texture`."""
    pyrender = import_pyrender()
    c, u, v = quad.corner, quad.edge_u, quad.edge_v
    positions = np.array([c, c + u, c + u + v, c + v], np.float32)
    uvs = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    # Trilinear filtering (mipmaps) avoids aliasing far away; clamping keeps the
    # opposite texture edge from bleeding in at the quad borders.
    gltf = pyrender.constants.GLTF
    sampler = pyrender.Sampler(magFilter=gltf.LINEAR, minFilter=gltf.LINEAR_MIPMAP_LINEAR,
                               wrapS=gltf.CLAMP_TO_EDGE, wrapT=gltf.CLAMP_TO_EDGE)
    material = pyrender.MetallicRoughnessMaterial(
        baseColorTexture=pyrender.Texture(source=texture, source_channels="RGB", sampler=sampler),
        doubleSided=True)
    return pyrender.Primitive(positions=positions, texcoord_0=uvs,
                              indices=np.array([[0, 1, 2], [0, 2, 3]], np.uint32),
                              material=material)


# ----------------------------------------------------------------------------------------------------------------
# Visualisation buffers

def read_visualization_buffer(path: Path) -> dict:
    """The dict of a visualisation buffer (.pkl), checked to hold a point cloud."""
    try:
        with open(path, "rb") as handle:
            state = pickle.load(handle)
    except FileNotFoundError:
        raise UserError(f"visualisation buffer not found: {path}") from None
    except Exception as error:  # unpickling raises many types for a foreign file
        raise UserError(f"{path}: not a readable visualisation buffer ({error})") from None
    if not isinstance(state, dict) or "map_xyz" not in state or "map_clr" not in state:
        raise UserError(f"{path}: visualisation buffer without 'map_xyz'/'map_clr'")
    return state
