#!/usr/bin/env python3
"""Export the cameras of an ACE pose file as a coloured PLY mesh (OpenGL world convention, like the point
cloud export's default), one frustum or pyramid marker per image.

Colour encodes confidence (the RANSAC inlier count): magenta -> cyan below the threshold, yellow -> green
above it, saturating at 5000; a pose file with a single entry is drawn grey.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

import dataset_io
from cli_common import UserError, atomic_write, make_parser, run_main, str2bool

_log = logging.getLogger("export_cameras")

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


def image_aspect(entries: list[dataset_io.PoseEntry]) -> float:
    """Width / height of the first image; 4:3 when the images are not at hand (only the shape depends on it)."""
    try:
        width, height = dataset_io.image_size(entries[0].path)
    except UserError:
        return DEFAULT_ASPECT
    return width / height


# ----------------------------------------------------------------------------------------------------------------
# CLI

def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("pose_file", type=Path, help="ACE pose file (e.g. poses_final.txt)")
    parser.add_argument("output_file", type=Path, help="mesh to write (.ply)")
    parser.add_argument("--frustum_scale", type=float, default=0.1, help="frustum depth in scene units")
    parser.add_argument("--frustum_markers", type=str2bool, default=False,
                        help="draw solid pyramid markers instead of wire frustums")
    parser.add_argument("--draw_non_confident", type=str2bool, default=True,
                        help="also draw cameras with confidence below --confidence_threshold")
    parser.add_argument("--confidence_threshold", type=float, default=1000,
                        help="confidence separating reliable (summer colours) from unreliable (cool) poses")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.output_file.suffix.lower() != ".ply":
        raise UserError(f"{args.output_file}: the camera mesh is written as PLY (use a .ply suffix)")
    if not args.frustum_scale > 0:
        raise UserError(f"--frustum_scale must be positive, got {args.frustum_scale}")
    if args.draw_non_confident:
        entries = dataset_io.read_ace_pose_file(args.pose_file)
        if not entries:
            raise UserError(f"{args.pose_file}: no entries")
    else:
        entries = dataset_io.confident_entries(args.pose_file, args.confidence_threshold)
    colours = confidence_colours(np.array([e.confidence for e in entries]), args.confidence_threshold)
    template = pyramid_marker_mesh(args.frustum_scale) if args.frustum_markers \
        else frustum_mesh(args.frustum_scale, image_aspect(entries))
    poses = [dataset_io.opencv_to_opengl_pose(e.cam_to_world) for e in entries]
    data = cameras_mesh(poses, colours, template).export(file_type="ply")
    atomic_write(args.output_file, lambda handle: handle.write(data), binary=True)
    _log.info("wrote %d cameras to %s", len(entries), args.output_file)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
