"""Mapping data of ACE training: the images, poses, cameras (calibration.Intrinsics) and depth of a mapping run
(MappingData), and augmented views of them (View: scale, rotation, shift and re-rendered viewpoints, with the
scene coordinate targets that depth gives)."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

import dataset_io
from ace_util import AUTO_PRIOR_FLAG, OUTPUT_SUBSAMPLE, UserError
from calibration import Intrinsics

_log = logging.getLogger(__name__)

AUG_BRIGHTNESS_CONTRAST = 0.1  # +-10 % jitter of grey images
CONSTANT_SEED_DEPTH = 2.0      # depth prior when a seed image has neither a depth file nor a depth network
DECODED_IMAGES_BUDGET = 1 << 30  # bytes of decoded mapping images kept per process (170 photos of 1080x1920)


@dataclass(frozen=True)
class DataConfig:
    """Where the mapping images, poses, cameras and depth come from: train_ace.py's flags of the same names."""
    rgb_files: str
    pose_files: str | None                  # glob of 4x4 camera-to-world files
    use_ace_pose_file: Path | None          # or an ACE pose file (poses and focals) ...
    ace_pose_file_conf_threshold: float     # ... of which the entries at least this confident
    use_pose_seed: float                    # >= 0: the single seed image int(value * N) instead
    seed_depth: str                         # auto, zoedepth, twoview or constant (a seed without depth files)
    depth_files: str | None
    use_external_focal_length: float | None
    use_heuristic_focal_length: bool
    calibration_file: str | None
    image_resolution: int                   # network input short side (two-view seed depth)


class DecodedImages:
    """Each mapping image decoded (and undistorted) once per process, kept while the cache stays within
    `budget_bytes`; images beyond it are decoded for every view, as without a cache. The buffer fill prepares a
    view of every image in each pass, and 100 views of a seed image: decoding and undistorting a 1080x1920 photo
    (about 45 ms) costs more than the rest of preparing the view. Kept images never leave, so that a collection
    larger than the budget, visited in random order, still hits for the part that fits."""

    def __init__(self, budget_bytes: int = DECODED_IMAGES_BUDGET):
        self.budget_bytes = budget_bytes
        self._images: dict[tuple[str, Intrinsics], np.ndarray] = {}
        self._bytes = 0
        self._lock = threading.Lock()  # the buffer fill prepares views in a thread pool

    def rgb(self, path: str, camera: Intrinsics) -> np.ndarray:
        """The undistorted RGB image (read-only: it is shared by every view of it)."""
        key = (path, camera)
        with self._lock:
            image = self._images.get(key)
        if image is not None:
            return image
        image = dataset_io.load_undistorted_rgb(path, camera)
        image.setflags(write=False)
        with self._lock:
            if key not in self._images and self._bytes + image.nbytes <= self.budget_bytes:
                self._images[key] = image
                self._bytes += image.nbytes
        return image


@dataclass
class MappingData:
    images: list[str]
    cam_to_world: np.ndarray        # N x 4 x 4
    cameras: list[Intrinsics]       # of the original images
    depth_files: list[str] | None
    constant_depth: float | None = None  # seed without depth files: constant-depth prior
    estimated_depth: np.ndarray | None = None  # seed depth from a depth network (metres, original size)
    decoded: DecodedImages = field(default_factory=DecodedImages, repr=False, compare=False)

    @property
    def focals(self) -> np.ndarray:
        return np.array([c.fx for c in self.cameras])


def _cameras_for(config: DataConfig, images: list[str], file_focals: np.ndarray | None) -> list[Intrinsics]:
    """Intrinsics as the config says. Precedence as the original: an external focal, then a pose file's focal
    column (fx; the calibration file keeps the principal point and fy / fx), then the automatic focal."""
    external = config.use_external_focal_length
    if external is not None and external > 0:
        return dataset_io.image_cameras(images, config.calibration_file, external)
    if file_focals is not None and not config.use_heuristic_focal_length:
        cameras = dataset_io.image_cameras(images, config.calibration_file, log=False)
        return [c.with_focal(f) for c, f in zip(cameras, file_focals)]
    if not config.use_heuristic_focal_length and config.calibration_file is None:
        raise UserError("no focal length: pass --use_heuristic_focal_length True, --use_external_focal_length F, "
                        "--calibration_file or --use_ace_pose_file")
    return dataset_io.image_cameras(images, config.calibration_file)


def load_mapping_data(config: DataConfig, encoder=None, device="cpu") -> MappingData:
    """Images, poses and focal lengths as the config says (pose file, 4x4 pose files or a single seed image)."""
    depth_files = None
    if config.use_ace_pose_file is not None:
        entries = dataset_io.read_ace_pose_file(config.use_ace_pose_file, config.ace_pose_file_conf_threshold)
        if not entries:
            raise UserError(f"--use_ace_pose_file {config.use_ace_pose_file}: no entry with confidence >= "
                            f"{config.ace_pose_file_conf_threshold}")
        images = [e.path for e in entries]
        poses = [e.cam_to_world for e in entries]
        file_focals = np.array([e.focal for e in entries])
        if config.depth_files is not None:
            all_images = dataset_io.glob_files(config.rgb_files)
            depth_files = dataset_io.depth_files_of(images, all_images, config.depth_files, "from --use_ace_pose_file")
    else:
        images = dataset_io.glob_files(config.rgb_files)
        file_focals = None
        if config.pose_files is not None:
            pose_files = dataset_io.glob_files(config.pose_files, "--pose_files")
            dataset_io.check_counts(images, pose_files, "--pose_files")
            poses = [dataset_io.load_cam_to_world(p) for p in pose_files]
        else:
            poses = [np.eye(4) for _ in images]
        if config.depth_files is not None:
            depth_files = dataset_io.glob_files(config.depth_files, "--depth_files")
            dataset_io.check_counts(images, depth_files, "--depth_files")
        images, poses, *rest = dataset_io.drop_invalid_poses(images, poses, [depth_files] if depth_files else None)
        depth_files = rest[0] if rest else None
    data = MappingData(images, np.stack(poses), _cameras_for(config, images, file_focals), depth_files)
    if config.use_pose_seed >= 0:
        data = _seed_subset(data, config, encoder, device)
    return data


def _seed_subset(data: MappingData, config: DataConfig, encoder, device) -> MappingData:
    """The single seed image int(seed * N) with identity pose and a depth estimate: a depth file, ZoeDepth,
    two-view geometry with a partner image, or (last resort) a constant depth."""
    index = dataset_io.seed_image_index(config.use_pose_seed, len(data.images))
    subset = MappingData([data.images[index]], np.eye(4)[None], data.cameras[index:index + 1],
                         [data.depth_files[index]] if data.depth_files else None)
    if subset.depth_files is not None:
        return subset
    import depth_estimation
    method = config.seed_depth
    if method == "auto":
        method = "zoedepth" if depth_estimation.zoedepth_available() else "twoview"
    if method == "zoedepth":
        subset.estimated_depth = zoedepth_of(subset.images[0], subset.cameras[0])
    elif method == "twoview":
        from two_view_seed import two_view_depth
        subset.estimated_depth = two_view_depth(data.images, index, data.cameras, encoder,
                                                config.image_resolution, device, CONSTANT_SEED_DEPTH)
        if subset.estimated_depth is None:
            _log.warning("two-view seed depth failed (no partner image with enough parallax)")
    if subset.estimated_depth is None:
        subset.constant_depth = CONSTANT_SEED_DEPTH
        _log.warning("seed image without depth: constant-depth prior of %.1f (scene units)", CONSTANT_SEED_DEPTH)
    return subset


def zoedepth_of(path: str, camera: Intrinsics) -> np.ndarray:
    """ZoeDepth of an image, undistorted like every other input so that the depth lines up with the pinhole
    pixels it supervises."""
    import depth_estimation
    return depth_estimation.estimate_depth(dataset_io.load_undistorted_rgb(path, camera))


def median_depth_of(data: MappingData) -> float:
    """Median depth of the mapping data's depth (seed estimate, constant prior or depth files): what
    '--prior_loss_location auto' uses."""
    if data.constant_depth is not None:
        return float(data.constant_depth)
    if data.estimated_depth is not None:
        return dataset_io.median_valid_depth([data.estimated_depth], AUTO_PRIOR_FLAG)
    if data.depth_files is not None:
        return dataset_io.median_depth_of_files(data.depth_files, AUTO_PRIOR_FLAG)
    raise UserError(f"{AUTO_PRIOR_FLAG} need depth: a seed image "
                    "(--use_pose_seed) or --depth_files; otherwise pass numbers")


# ----------------------------------------------------------------------------------------------------------------
# Augmented views

@dataclass
class View:
    grey: np.ndarray        # H x W float32 in [0, 1]
    valid: np.ndarray       # H/8 x W/8 bool: cell centre shows a pixel of the mapping image
    rotation: np.ndarray    # 3 x 3 and 3: camera motion of the augmentation,
    translation: np.ndarray  # new_cam = rotation @ old_cam + translation
    camera: Intrinsics      # of this view: scaled, principal point moved by the rotation and shift
    scene_coords: np.ndarray | None  # 3 x H/8 x W/8 depth targets in the scene frame (0 = none)

    @property
    def focal(self) -> float:
        return self.camera.fx

    @property
    def principal(self) -> tuple[float, float]:
        return self.camera.cx, self.camera.cy


def make_view(data: MappingData, index: int, short_side: int, rng: np.random.Generator, augment: bool,
              aug_scale: float, aug_rotation: float, aug_shift: float = 0.0, aug_viewpoint: float = 0.0) -> View:
    """Load one mapping image, rescale, jitter, (with depth) re-render it from a nearby viewpoint, then rotate
    and shift it; depth targets follow the same warps."""
    scale = rng.uniform(1.0 / aug_scale, aug_scale) if augment else 1.0
    grey, _ = dataset_io.network_input_from_rgb(data.decoded.rgb(data.images[index], data.cameras[index]),
                                                int(short_side * scale))
    height, width = grey.shape
    camera = data.cameras[index].scaled(width, height)
    if augment:
        brightness = rng.uniform(-AUG_BRIGHTNESS_CONTRAST, AUG_BRIGHTNESS_CONTRAST)
        contrast = rng.uniform(1 - AUG_BRIGHTNESS_CONTRAST, 1 + AUG_BRIGHTNESS_CONTRAST)
        grey = np.clip((grey - grey.mean()) * contrast + grey.mean() + brightness, 0.0, 1.0)
    depth = _depth_map(data, index, width, height)
    mask = np.ones((height, width), np.float32)
    rotation, translation = np.eye(3), np.zeros(3)
    if augment and aug_viewpoint > 0 and depth is not None and data.constant_depth is None:
        grey, depth, mask, rotation, translation = novel_viewpoint(grey, depth, camera, rng, aug_viewpoint)
    angle = rng.uniform(-aug_rotation, aug_rotation) if augment else 0.0
    shift = rng.uniform(-aug_shift, aug_shift, size=2) * (width, height) if augment else np.zeros(2)
    warp, camera = in_plane_warp(camera, angle, shift)
    if angle != 0.0 or shift.any():
        grey = cv2.warpAffine(grey, warp, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        mask = cv2.warpAffine(mask, warp, (width, height), flags=cv2.INTER_NEAREST, borderValue=0)
        if depth is not None:
            depth = cv2.warpAffine(depth, warp, (width, height), flags=cv2.INTER_NEAREST, borderValue=0)
    in_plane = np.eye(3)
    in_plane[:2, :2] = cv2.getRotationMatrix2D((0, 0), angle, 1.0)[:, :2]  # the camera turns about its axis
    rotation, translation = in_plane @ rotation, in_plane @ translation
    grid_v = np.arange(OUTPUT_SUBSAMPLE // 2, height, OUTPUT_SUBSAMPLE)
    grid_u = np.arange(OUTPUT_SUBSAMPLE // 2, width, OUTPUT_SUBSAMPLE)
    valid = mask[np.ix_(grid_v, grid_u)] > 0
    targets = None
    if depth is not None:
        targets = _scene_targets(data.cam_to_world[index], depth[np.ix_(grid_v, grid_u)], grid_u, grid_v, camera,
                                 rotation, translation)
    return View(grey.astype(np.float32), valid, rotation, translation, camera, targets)


def in_plane_warp(camera: Intrinsics, angle: float, shift: np.ndarray) -> tuple[np.ndarray, Intrinsics]:
    """Image warp (2 x 3) of a camera turning by `angle` degrees about its optical axis, the image rotated about
    its centre (as the original) and shifted; and the camera of the warped image, whose principal point moves
    with the content. Pixel offsets from the principal point map by F R F^-1 (F = diag(fx, fy)), which is the
    plain rotation for square pixels."""
    focals = np.array([camera.fx, camera.fy])
    linear = focals[:, None] * cv2.getRotationMatrix2D((0, 0), angle, 1.0)[:, :2] / focals[None, :]
    centre = np.array([camera.width / 2, camera.height / 2])
    offset = centre - linear @ centre + shift
    principal = linear @ np.array([camera.cx, camera.cy]) + offset
    moved = Intrinsics(camera.fx, camera.fy, float(principal[0]), float(principal[1]), camera.width, camera.height,
                       (), camera.source)
    return np.column_stack([linear, offset]), moved


def _depth_map(data: MappingData, index: int, width: int, height: int) -> np.ndarray | None:
    """Depth (scene units, 0 = unknown) of a mapping image at the network resolution, if it has any."""
    if data.depth_files is not None or data.estimated_depth is not None:
        depth = dataset_io.load_depth_png(data.depth_files[index]) if data.depth_files else data.estimated_depth
        return cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
    if data.constant_depth is not None:
        return np.full((height, width), data.constant_depth, np.float32)
    return None


def _scene_targets(cam_to_world, depth, grid_u, grid_v, camera: Intrinsics, rotation, translation) -> np.ndarray:
    """Scene points on the rays of the cell centres of an augmented view with this depth (0 = no target)."""
    u, v = np.meshgrid(grid_u, grid_v)
    cam = np.stack([(u - camera.cx) / camera.fx * depth, (v - camera.cy) / camera.fy * depth, depth])
    # augmented camera -> original camera -> scene
    cam = rotation.T @ (cam.reshape(3, -1) - translation[:, None])
    scene = cam_to_world[:3, :3] @ cam + cam_to_world[:3, 3:4]
    scene[:, depth.reshape(-1) <= 0] = 0.0
    return scene.reshape(3, *depth.shape).astype(np.float32)


def novel_viewpoint(grey: np.ndarray, depth: np.ndarray, camera: Intrinsics, rng: np.random.Generator,
                    max_angle_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Re-render an image with depth from a camera orbiting the scene (pivot on the optical axis at the median
    depth) by up to `max_angle_deg` about a random axis perpendicular to the optical axis.

    A single view teaches the head nothing about how features change with the viewpoint; these views do, and
    keep registrations of neighbouring images from being pulled towards the seed view.
    Returns grey, depth, mask of the new view and its motion (new_cam = rotation @ old_cam + translation)."""
    known = depth > 0
    pivot = np.array([0.0, 0.0, float(np.median(depth[known]))]) if known.any() else np.zeros(3)
    direction = rng.uniform(0, 2 * np.pi)
    angle = np.radians(rng.uniform(-max_angle_deg, max_angle_deg))
    rotation = dataset_io.rotation_about(np.array([np.cos(direction), np.sin(direction), 0.0]), angle)
    translation = pivot - rotation @ pivot
    new_grey, new_depth = _splat(grey, depth, camera, rotation, translation)
    new_grey, new_depth, mask = _fill_splat_holes(new_grey, new_depth)
    return new_grey, new_depth, mask, rotation, translation


def _splat(grey: np.ndarray, depth: np.ndarray, camera: Intrinsics, rotation: np.ndarray, translation: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Forward-project every pixel with depth into the moved camera; the nearest point wins each pixel (depth 0
    where none lands)."""
    height, width = grey.shape
    v, u = np.nonzero(depth > 0)
    d = depth[v, u]
    fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
    cam = np.stack([(u + 0.5 - cx) / fx * d, (v + 0.5 - cy) / fy * d, d])
    new = rotation @ cam + translation[:, None]
    ahead = new[2] > 1e-6
    new_u = np.floor(new[0] / np.where(ahead, new[2], 1) * fx + cx).astype(np.int64)
    new_v = np.floor(new[1] / np.where(ahead, new[2], 1) * fy + cy).astype(np.int64)
    inside = ahead & (new_u >= 0) & (new_u < width) & (new_v >= 0) & (new_v < height)
    target = (new_v * width + new_u)[inside]
    order = np.lexsort((new[2][inside], target))  # by pixel, nearest first
    first = order[np.unique(target[order], return_index=True)[1]]
    out_grey = np.zeros(height * width, np.float32)
    out_depth = np.zeros(height * width, np.float32)
    out_grey[target[first]] = grey[v[inside][first], u[inside][first]]
    out_depth[target[first]] = new[2][inside][first]
    return out_grey.reshape(height, width), out_depth.reshape(height, width)


def _fill_splat_holes(grey: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-pixel cracks get the nearest neighbouring depth; disocclusions and the area outside the original
    image stay without depth (mask 0). Every hole's grey value is inpainted so that the encoder sees no hard
    edges."""
    hit = (depth > 0).astype(np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    covered = cv2.morphologyEx(hit, cv2.MORPH_CLOSE, cross)
    crack = (covered > 0) & (hit == 0)
    nearest = cv2.dilate(np.where(hit > 0, 1.0 / np.maximum(depth, 1e-6), 0).astype(np.float32), cross)
    depth = depth.copy()
    depth[crack] = 1.0 / np.maximum(nearest[crack], 1e-6)
    depth[covered == 0] = 0
    filled = cv2.inpaint(np.round(grey * 255).astype(np.uint8), 1 - hit, 3, cv2.INPAINT_TELEA)
    grey = np.where(hit > 0, grey, filled.astype(np.float32) / 255)
    return grey, depth, covered.astype(np.float32)
