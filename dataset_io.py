"""Reading and writing what the pipeline exchanges: images, pose files, depth maps, calibration.

Conventions (as the original ACE0):
- ACE pose file: one line per image, `path qw qx qy qz tx ty tz focal confidence`, the pose is
  WORLD-TO-CAMERA with OpenCV camera axes (x right, y down, z forward), the focal length is in pixels of
  the ORIGINAL image (fx); the principal point is the image centre unless a calibration file says otherwise
  (calibration.py holds the rest of each camera).
- 7-Scenes pose file: a 4x4 CAMERA-TO-WORLD matrix in plain text.
- Depth: 16-bit PNG in millimetres, 0 = invalid.
"""
from __future__ import annotations

import glob
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from calibration import Intrinsics, resized_shape, undistort
from ace_util import UserError, atomic_write_text, in_mapping_set, is_registered

_log = logging.getLogger(__name__)

MAX_VALID_DEPTH_M = 1000.0


# ----------------------------------------------------------------------------------------------------------------
# File lists

def glob_files(pattern: str, flag: str = "rgb_files") -> list[str]:
    """Sorted glob, as the original: correspondence between images/poses/depth is by sorted order."""
    files = sorted(glob.glob(pattern))
    if not files:
        raise UserError(f"{flag}: no files match '{pattern}'")
    return files


def seed_image_index(fraction: float, count: int) -> int:
    """The seed image of `--use_pose_seed fraction` among `count` sorted images."""
    return min(int(fraction * count), count - 1)


def check_counts(images: list[str], others: list[str], flag: str) -> None:
    if len(images) != len(others):
        raise UserError(f"{flag}: {len(others)} files for {len(images)} images (counts must match)")


def depth_files_of(images: list[str], all_images: list[str], depth_glob: str, source: str) -> list[str]:
    """The depth file of each of `images`: the files of `depth_glob` pair with `all_images` in sorted order (the one
    rule for RGB-D runs); `source` names where `images` came from, for the error."""
    all_depth = glob_files(depth_glob, "--depth_files")
    check_counts(all_images, all_depth, "--depth_files")
    by_image = {str(Path(i).resolve()): d for i, d in zip(sorted(all_images), all_depth)}
    missing = [i for i in images if str(Path(i).resolve()) not in by_image]
    if missing:
        raise UserError(f"--depth_files: {missing[0]} ({source}) is not among the images the depth files pair with, "
                        "so it has no depth file")
    return [by_image[str(Path(i).resolve())] for i in images]


# ----------------------------------------------------------------------------------------------------------------
# Images

def _open_image(path: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UserError(f"cannot read image {path}: {error}") from None
    return ImageOps.exif_transpose(image)


def _to_rgb8(image: Image.Image) -> np.ndarray:
    """Any PIL mode (8/16-bit grey, RGBA, palette...) to HxWx3 uint8."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        data = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if data.max() > 255 else 255.0
        grey = np.clip(data / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_image_rgb(path: str) -> np.ndarray:
    """Image as HxWx3 uint8 RGB, EXIF orientation applied; a clear error naming the file otherwise."""
    return _to_rgb8(_open_image(path))


def image_size(path: str) -> tuple[int, int]:
    """(width, height) after EXIF orientation, without decoding pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot read image {path}: {error}") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def image_cameras(paths: list[str], calibration_file: str | Path | None = None,
                  external_focal: float | None = None, log: bool = True) -> list[Intrinsics]:
    """Intrinsics of each image (its own size; see calibration.image_cameras for the sources)."""
    import calibration
    return calibration.image_cameras(paths, [image_size(p) for p in paths], calibration_file, external_focal, log)


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def rgb_to_grey01(image: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma in [0, 1] (what PIL's convert('L') computes)."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return (image.astype(np.float32) @ weights) / 255.0


# ----------------------------------------------------------------------------------------------------------------
# ACE pose files

@dataclass
class PoseEntry:
    path: str
    world_to_cam: np.ndarray  # 4x4, OpenCV camera axes
    focal: float              # pixels of the original image
    confidence: float         # RANSAC inlier count (inf for mapping output)

    @property
    def cam_to_world(self) -> np.ndarray:
        return invert_pose(self.world_to_cam)


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    inverse = np.eye(4)
    rotation_t = pose[:3, :3].T
    inverse[:3, :3] = rotation_t
    inverse[:3, 3] = -rotation_t @ pose[:3, 3]
    return inverse


def rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """3 x 3 rotation by `angle` radians about `axis` (any length but zero)."""
    from scipy.spatial.transform import Rotation  # scipy.spatial takes 0.3-0.5 s: only when used (fast --help)
    axis = np.asarray(axis, np.float64)
    return Rotation.from_rotvec(axis / max(np.linalg.norm(axis), 1e-12) * angle).as_matrix()


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation closest to `matrix` (Frobenius, SVD): a sum or mean of rotations becomes their chordal mean."""
    u, _, vt = np.linalg.svd(matrix)
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def pose_to_quat_t(world_to_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quaternion (w, x, y, z) and translation of a world-to-camera matrix."""
    from scipy.spatial.transform import Rotation
    x, y, z, w = Rotation.from_matrix(world_to_cam[:3, :3]).as_quat()
    return np.array([w, x, y, z]), world_to_cam[:3, 3].copy()


def quat_t_to_pose(quat_wxyz: np.ndarray, translation: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    w, x, y, z = quat_wxyz
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix()
    pose[:3, 3] = translation
    return pose


def _format_confidence(confidence: float) -> str:
    if math.isfinite(confidence) and float(confidence).is_integer():
        return str(int(confidence))
    return str(float(confidence))


def format_pose_line(entry: PoseEntry) -> str:
    quat, trans = pose_to_quat_t(entry.world_to_cam)
    numbers = [*quat, *trans, float(entry.focal)]
    return " ".join([entry.path, *(str(float(v)) for v in numbers), _format_confidence(entry.confidence)])


def with_confidence(line: str, confidence: float) -> str:
    """A pose-file line with only its confidence replaced (the pose keeps its exact digits)."""
    return " ".join([*line.split()[:-1], _format_confidence(confidence)])


def write_ace_pose_file(path: Path | str, entries: list[PoseEntry]) -> None:
    """Write atomically: an interrupted run never leaves half a pose file."""
    atomic_write_text(path, "".join(format_pose_line(e) + "\n" for e in entries))


def parse_pose_line(line: str, where: str) -> PoseEntry:
    tokens = line.split()
    if len(tokens) != 10:
        raise UserError(f"{where}: expected 10 values (path qw qx qy qz tx ty tz focal confidence), "
                        f"found {len(tokens)}")
    try:
        numbers = [float(t) for t in tokens[1:]]
    except ValueError:
        raise UserError(f"{where}: non-numeric value in '{line.strip()}'") from None
    quat = np.array(numbers[0:4])
    if not np.all(np.isfinite(numbers[:8])) or np.linalg.norm(quat) < 1e-8:
        raise UserError(f"{where}: invalid pose values in '{line.strip()}'")
    return PoseEntry(tokens[0], quat_t_to_pose(quat, np.array(numbers[4:7])), numbers[7], numbers[8])


def read_ace_pose_file(path: Path | str, min_confidence: float | None = None) -> list[PoseEntry]:
    """All entries, or those with confidence >= min_confidence (the mapping-set rule of the original)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise UserError(f"pose file not found: {path}") from None
    except OSError as error:
        raise UserError(f"cannot read pose file {path}: {error.strerror}") from None
    entries = [parse_pose_line(line, f"{path}:{number}") for number, line in enumerate(lines, 1) if line.strip()]
    if min_confidence is not None:
        entries = [e for e in entries if in_mapping_set(e.confidence, min_confidence)]
    return entries


def entry_cameras(entries: list[PoseEntry], calibration_file: str | Path | None = None,
                  pose_file: Path | str | None = None) -> list[Intrinsics]:
    """The camera of each pose-file entry: fx from its focal column, the rest from the calibration file, else
    from the cameras file beside the pose file, else a centred principal point."""
    if calibration_file is None and pose_file is not None and cameras_file_beside(pose_file).exists():
        calibration_file = cameras_file_beside(pose_file)
    cameras = image_cameras([e.path for e in entries], calibration_file, log=False)
    return [c.with_focal(e.focal) for c, e in zip(cameras, entries)]


def cameras_file_beside(pose_file: Path | str) -> Path:
    """Where the full cameras of a pose file go: poses_X.txt -> cameras_X.txt."""
    pose_file = Path(pose_file)
    return pose_file.with_name("cameras_" + pose_file.name.removeprefix("poses_"))


def write_cameras_beside(pose_file: Path | str, images: list[str], cameras: list[Intrinsics]) -> Path | None:
    """When the cameras are more than one focal (the pose file's focal column) can say: one camera as a COLMAP
    cameras.txt, several as the per-image calibration format; either is a valid --calibration_file."""
    import calibration
    if all(c.is_simple for c in cameras):
        return None
    distinct, _ = calibration.unique_cameras(cameras)
    text = calibration.format_colmap_cameras(distinct) if len(distinct) == 1 else \
        calibration.format_per_image_file(images, cameras)
    path = cameras_file_beside(pose_file)
    atomic_write_text(path, text)
    return path


def write_amended_pose_file(input_poses: Path | str, output_poses: Path | str, cameras: list[Intrinsics],
                            confidences: dict[int, float], poses: dict[int, np.ndarray] | None = None) -> None:
    """output_poses: the lines of input_poses (its entries by index) with the given confidences and world-to-camera
    poses replaced; every other number keeps its exact digits. The input's cameras go beside it."""
    entries = read_ace_pose_file(input_poses)
    lines = [line for line in Path(input_poses).read_text().splitlines() if line.strip()]  # as read_ace_pose_file
    for k, pose in (poses or {}).items():
        e = entries[k]
        lines[k] = format_pose_line(PoseEntry(e.path, pose, e.focal, e.confidence))
    for k, confidence in confidences.items():
        lines[k] = with_confidence(lines[k], confidence)
    atomic_write_text(output_poses, "".join(line + "\n" for line in lines))
    write_cameras_beside(output_poses, [e.path for e in entries], cameras)


def registration_rate(entries: list[PoseEntry], threshold: float) -> float:
    """Fraction of entries with confidence strictly above the threshold (the original's counting rule)."""
    if not entries:
        return 0.0
    return sum(is_registered(e.confidence, threshold) for e in entries) / len(entries)


def single_focal(entries: list[PoseEntry], where: str) -> float:
    focals = {round(e.focal, 6) for e in entries}
    if len(focals) != 1:
        raise UserError(f"{where}: expected one shared focal length, found {len(focals)}")
    return entries[0].focal


# ----------------------------------------------------------------------------------------------------------------
# 4x4 camera-to-world pose files, depth, calibration

def load_cam_to_world(path: str) -> np.ndarray:
    """A 4x4 camera-to-world matrix; NaN/inf entries are returned as they are (see valid_pose)."""
    try:
        pose = np.loadtxt(path, dtype=np.float64)
    except FileNotFoundError:
        raise UserError(f"pose file not found: {path}") from None
    except ValueError as error:
        raise UserError(f"cannot parse pose file {path}: {error}") from None
    if pose.shape != (4, 4):
        raise UserError(f"pose file {path}: expected a 4x4 matrix, found shape {pose.shape}")
    return pose


def valid_pose(pose: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(pose)))


def drop_invalid_poses(images: list[str], poses: list[np.ndarray], extra: list[list] | None = None):
    """Drop images whose pose has NaN/inf (with a warning), as the original does."""
    keep = [i for i, pose in enumerate(poses) if valid_pose(pose)]
    if len(keep) < len(poses):
        dropped = [images[i] for i in range(len(poses)) if i not in set(keep)]
        _log.warning("dropping %d image(s) with invalid (NaN/inf) poses, e.g. %s", len(dropped), dropped[0])
    result = [[images[i] for i in keep], [poses[i] for i in keep]]
    for column in extra or []:
        result.append([column[i] for i in keep])
    return result


def load_depth_png(path: str) -> np.ndarray:
    """Depth in metres (float32); 0 where invalid (0 in the file or beyond 1000 m)."""
    import cv2
    depth = cv2.imread(path, cv2.IMREAD_ANYDEPTH)
    if depth is None:
        raise UserError(f"cannot read depth map {path}")
    if depth.ndim != 2:
        raise UserError(f"depth map {path}: expected a single-channel 16-bit PNG")
    metres = depth.astype(np.float32) / 1000.0
    metres[metres > MAX_VALID_DEPTH_M] = 0.0
    return metres


MEDIAN_DEPTH_MAX_FILES = 20  # depth files read to estimate a scene's median depth


def median_valid_depth(depth_maps: list[np.ndarray], flag: str) -> float:
    """Median of the valid (positive) depths of these maps; `flag` names what needs it in the error."""
    known = np.concatenate([m[m > 0] for m in depth_maps])
    if known.size == 0:
        raise UserError(f"{flag}: the depth maps hold no valid depth")
    return float(np.median(known))


def median_depth_of_files(paths: list[str], flag: str) -> float:
    """Median valid depth of up to MEDIAN_DEPTH_MAX_FILES depth PNGs spread over `paths`."""
    step = max(1, len(paths) // MEDIAN_DEPTH_MAX_FILES)
    return median_valid_depth([load_depth_png(f) for f in paths[::step]], flag)


def read_calibration(path: Path | str) -> Intrinsics:
    """A calibration file of one camera for all images, with its size (`fx fy cx cy width height`, the
    format of the project's data sets, or a one-camera COLMAP cameras.txt)."""
    from calibration import read_calibration_file
    parsed = read_calibration_file(path)
    if parsed.shared is None or parsed.shared.width == 0:
        raise UserError(f"calibration {path}: expected one camera with its size ('fx fy cx cy width height')")
    return parsed.shared


def load_network_input(path: str, short_side: int, camera: Intrinsics | None = None
                       ) -> tuple[np.ndarray, tuple[int, int]]:
    """Grey image in [0, 1] with its short side scaled to `short_side`, and the original (width, height);
    undistorted first when the camera has distortion."""
    return network_input_from_rgb(load_undistorted_rgb(path, camera), short_side)


def load_undistorted_rgb(path: str, camera: Intrinsics | None = None) -> np.ndarray:
    """The image as RGB uint8, undistorted when the camera has distortion."""
    rgb = load_image_rgb(path)
    return rgb if camera is None else undistort(rgb, camera)


def network_input_from_rgb(rgb: np.ndarray, short_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """`load_network_input` of an image already loaded (and undistorted); `rgb` is not modified."""
    width, height = resized_shape(rgb.shape[1], rgb.shape[0], short_side)
    return rgb_to_grey01(resize_image(rgb, width, height)), (rgb.shape[1], rgb.shape[0])


# ----------------------------------------------------------------------------------------------------------------
# Shared by the exporters (export_point_cloud / export_cameras / export_colmap / export_nerfstudio)

# OpenCV (x right, y down, z forward) <-> OpenGL (x right, y up, z backward): flip y and z.
FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


def confident_entries(pose_file: Path | str, threshold: float) -> list[PoseEntry]:
    """Pose-file entries with confidence >= threshold (the rule the mapping loader uses); none is an error."""
    entries = read_ace_pose_file(pose_file)
    kept = [e for e in entries if in_mapping_set(e.confidence, threshold)]
    if not kept:
        raise UserError(f"{pose_file}: none of its {len(entries)} entries has confidence >= {threshold:g} "
                        f"(lower --confidence_threshold)")
    return kept


def opencv_to_opengl_pose(cam_to_world: np.ndarray) -> np.ndarray:
    """Camera-to-world in OpenCV axes -> OpenGL axes for both world and camera (the visualiser's convention)."""
    return FLIP_YZ @ cam_to_world @ FLIP_YZ


def flip_yz_points(xyz: np.ndarray) -> np.ndarray:
    """World points OpenCV <-> OpenGL convention (its own inverse)."""
    return xyz * np.array([1.0, -1.0, -1.0], dtype=xyz.dtype)
