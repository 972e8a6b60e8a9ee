"""Camera intrinsics: the one home of the focal length, principal point and distortion of every image.

Pixel convention (COLMAP's and the pipeline's): the image spans [0, width] x [0, height], pixel centres at
+0.5, so the image centre is (width / 2, height / 2) and rescaling multiplies fx, fy, cx, cy alike.

Where intrinsics come from, in order: --calibration_file; --use_external_focal_length (centred principal
point); EXIF focal; 70 % of the image diagonal. Pose files carry fx only (the original's focal column); the
rest of a camera comes from the same source again, so a refined focal scales fx and fy together.

Calibration file formats (`#` starts a comment):
  (a) one line `fx fy cx cy` or `fx fy cx cy width height`: all images;
  (b) lines `image_name fx fy cx cy [k1 k2 p1 p2 [k3]]`: per image (matched by path or trailing path parts);
  (c) a COLMAP cameras.txt (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV with
      k4 = k5 = k6 = 0): one camera for all images, or per image through the images.txt beside it.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ace_util import UserError

_log = logging.getLogger(__name__)

HEURISTIC_FOCAL_FACTOR = 0.7   # focal = 70 % of the image diagonal when nothing better is known
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # what "35 mm equivalent" focal lengths refer to
# COLMAP models we read: name -> number of parameters
COLMAP_MODELS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8, "FULL_OPENCV": 12}
# EXIF tags (Exif IFD)
_EXIF_IFD = 0x8769
_FOCAL_35MM, _FOCAL_MM = 0xA405, 0x920A
_PLANE_X_RES, _PLANE_UNIT, _PIXEL_X_DIM = 0xA20E, 0xA210, 0xA002
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # FocalPlaneResolutionUnit -> millimetres


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole camera (+ optional OpenCV distortion k1 k2 p1 p2 [k3]) of one image at (width, height)."""
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion: tuple[float, ...] = ()
    source: str = "file"  # file, external, exif, heuristic: what the log says

    @classmethod
    def centred(cls, focal: float, width: int, height: int, source: str) -> "Intrinsics":
        return cls(float(focal), float(focal), width / 2, height / 2, int(width), int(height), (), source)

    @property
    def focal(self) -> float:
        """What a pose file's focal column holds."""
        return self.fx

    @property
    def has_distortion(self) -> bool:
        return any(abs(k) > 0 for k in self.distortion)

    @property
    def is_simple(self) -> bool:
        """Exactly what the original assumes: one focal, centred principal point, no distortion."""
        return self.fx == self.fy and self.cx == self.width / 2 and self.cy == self.height / 2 \
            and not self.has_distortion

    def scaled(self, width: int, height: int) -> "Intrinsics":
        """The same camera for the image resized to width x height."""
        sx, sy = width / self.width, height / self.height
        return replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy,
                       width=int(width), height=int(height))

    def for_short_side(self, short_side: int) -> "Intrinsics":
        """At the network resolution (short side scaled to `short_side`, as dataset_io.resized_shape)."""
        return self.scaled(*resized_shape(self.width, self.height, short_side))

    def with_focal(self, fx: float) -> "Intrinsics":
        """fx replaced (a refined or external focal), fy scaled alike, principal point kept."""
        return replace(self, fx=float(fx), fy=self.fy * fx / self.fx)

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def opencv_distortion(self) -> np.ndarray:
        """k1 k2 p1 p2 k3 for OpenCV (zeros when none)."""
        return np.array((list(self.distortion) + [0.0] * 5)[:5], np.float64)


def resized_shape(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) after scaling the short side to `short_side`."""
    if width < height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def focal_changed(before: float, after: float, factor: float) -> bool:
    """Whether a focal length moved from `before` to `after` by more than `factor` (either way)."""
    return abs(math.log(after / before)) > math.log(factor)


def diagonal_field_of_view_deg(camera: Intrinsics) -> float:
    """The angle the image diagonal spans (fx taken for both axes)."""
    return math.degrees(2 * math.atan(math.hypot(camera.width, camera.height) / (2 * camera.fx)))


def heuristic_focal(width: int, height: int) -> float:
    return HEURISTIC_FOCAL_FACTOR * math.sqrt(width ** 2 + height ** 2)


# ----------------------------------------------------------------------------------------------------------------
# EXIF

def exif_focal(path: str, width: int, height: int) -> tuple[float, str] | None:
    """Focal length in pixels from EXIF and how it was found; None when the photo does not say.
    width, height: the image as loaded (after EXIF orientation)."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            exif = image.getexif().get_ifd(_EXIF_IFD)
    except OSError:
        return None
    f35 = _positive(exif.get(_FOCAL_35MM))
    if f35:  # the equivalent focal on a 36 x 24 mm frame: scale by the diagonals
        return f35 * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM, "EXIF 35 mm equivalent"
    focal_mm, x_res = _positive(exif.get(_FOCAL_MM)), _positive(exif.get(_PLANE_X_RES))
    unit_mm = _UNIT_MM.get(int(exif.get(_PLANE_UNIT, 2)))
    if focal_mm and x_res and unit_mm:
        focal = focal_mm * x_res / unit_mm
        sensor_width = _positive(exif.get(_PIXEL_X_DIM))
        long_side = max(width, height)
        if sensor_width and sensor_width != long_side and sensor_width != min(width, height):
            focal *= long_side / sensor_width  # the photo was resized after the camera wrote the EXIF
        return focal, "EXIF focal length and focal-plane resolution"
    return None


def _positive(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def automatic(path: str, width: int, height: int) -> Intrinsics:
    """Centred camera with the EXIF focal, else the heuristic."""
    found = exif_focal(path, width, height)
    if found is not None:
        return Intrinsics.centred(found[0], width, height, found[1])
    return Intrinsics.centred(heuristic_focal(width, height), width, height, "heuristic (70 % of the diagonal)")


# ----------------------------------------------------------------------------------------------------------------
# Calibration files

@dataclass
class CalibrationFile:
    """What a calibration file says: one camera for all images, or cameras by image name."""
    path: str
    shared: Intrinsics | None = None       # width/height 0: size not given (taken from the images)
    by_name: dict[str, Intrinsics] | None = None

    def for_image(self, image: str, width: int, height: int) -> Intrinsics:
        camera = self.shared if self.shared is not None else self._lookup(image)
        if camera.width == 0:
            return replace(camera, width=width, height=height)
        if (camera.width, camera.height) != (width, height):
            raise UserError(f"{self.path}: calibration is for {camera.width}x{camera.height}, but {image} is "
                            f"{width}x{height}")
        return camera

    def _lookup(self, image: str) -> Intrinsics:
        posix = Path(image).as_posix()
        matches = [name for name in self.by_name if posix == name or posix.endswith("/" + name)]
        if not matches:
            raise UserError(f"{self.path}: no calibration for image {image}")
        return self.by_name[max(matches, key=len)]


def _content_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text without comment) of the non-empty lines."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"calibration file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read calibration file {path}: {error}") from None
    lines = [(number, line.split("#", 1)[0].strip()) for number, line in enumerate(text.splitlines(), 1)]
    return [(number, line) for number, line in lines if line]


def _numbers(tokens: list[str], where: str) -> list[float]:
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise UserError(f"{where}: expected numbers, found '{' '.join(tokens)}'") from None
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"{where}: values must be finite")
    return values


def _camera(fx, fy, cx, cy, width, height, distortion, where: str) -> Intrinsics:
    if fx <= 0 or fy <= 0:
        raise UserError(f"{where}: focal lengths must be positive")
    if width < 0 or height < 0 or width != int(width) or height != int(height):
        raise UserError(f"{where}: width and height must be positive integers")
    return Intrinsics(fx, fy, cx, cy, int(width), int(height), tuple(float(k) for k in distortion), "file")


def read_calibration_file(path: Path | str) -> CalibrationFile:
    """Any of the three formats (see the module docstring); errors name the file and line."""
    path = Path(path)
    lines = _content_lines(path)
    if not lines:
        raise UserError(f"{path}: empty calibration file")
    first = lines[0][1].split()
    if len(first) >= 2 and first[1] in COLMAP_MODELS:
        return _read_colmap(path, lines)
    if len(lines) == 1 and len(first) in (4, 6) and _is_number(first[0]):
        where = f"{path}:{lines[0][0]}"
        values = _numbers(first, where)
        width, height = (values[4], values[5]) if len(values) == 6 else (0, 0)
        if len(values) == 6 and (width <= 0 or height <= 0):
            raise UserError(f"{where}: width and height must be positive integers")
        return CalibrationFile(str(path), shared=_camera(*values[:4], width, height, (), where))
    return CalibrationFile(str(path), by_name=dict(_per_image_line(path, n, line) for n, line in lines))


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _per_image_line(path: Path, number: int, line: str) -> tuple[str, Intrinsics]:
    where = f"{path}:{number}"
    tokens = line.split()
    if len(tokens) not in (5, 9, 10):
        raise UserError(f"{where}: expected 'image_name fx fy cx cy [k1 k2 p1 p2 [k3]]', found {len(tokens)} "
                        f"values (or one line 'fx fy cx cy [width height]' for all images)")
    values = _numbers(tokens[1:], where)
    return tokens[0], _camera(*values[:4], 0, 0, values[4:], where)


def _read_colmap(path: Path, lines: list[tuple[int, str]]) -> CalibrationFile:
    cameras = {}
    for number, line in lines:
        where = f"{path}:{number}"
        tokens = line.split()
        if len(tokens) < 4 or tokens[1] not in COLMAP_MODELS:
            raise UserError(f"{where}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...' with a model among "
                            f"{', '.join(COLMAP_MODELS)}")
        model, expected = tokens[1], COLMAP_MODELS[tokens[1]]
        values = _numbers(tokens[2:], where)
        if len(values) != 2 + expected:
            raise UserError(f"{where}: {model} has {expected} parameters, found {len(values) - 2}")
        if values[0] <= 0 or values[1] <= 0:
            raise UserError(f"{where}: width and height must be positive integers")
        cameras[tokens[0]] = _camera(*_colmap_pinhole(model, values[2:]), values[0], values[1],
                                     _colmap_distortion(model, values[2:], where), where)
    images_txt = path.parent / "images.txt"
    if images_txt.exists() and path.name == "cameras.txt":
        return CalibrationFile(str(path), by_name=_colmap_images(images_txt, cameras))
    if len(cameras) != 1:
        raise UserError(f"{path}: {len(cameras)} cameras but no images.txt beside it saying which image uses "
                        f"which")
    return CalibrationFile(str(path), shared=next(iter(cameras.values())))


def _colmap_pinhole(model: str, p: list[float]) -> tuple[float, float, float, float]:
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        return p[0], p[0], p[1], p[2]
    return p[0], p[1], p[2], p[3]


def _colmap_distortion(model: str, p: list[float], where: str) -> tuple[float, ...]:
    if model == "SIMPLE_RADIAL":
        return (p[3], 0.0, 0.0, 0.0)
    if model == "RADIAL":
        return (p[3], p[4], 0.0, 0.0)
    if model == "OPENCV":
        return tuple(p[4:8])
    if model == "FULL_OPENCV":
        if any(p[9:12]):
            raise UserError(f"{where}: FULL_OPENCV with k4, k5, k6 is not supported (rational model)")
        return tuple(p[4:9])
    return ()


def _colmap_images(images_txt: Path, cameras: dict[str, Intrinsics]) -> dict[str, Intrinsics]:
    """images.txt: a line `IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`, then a line of 2D points (may be
    empty, so lines are taken in pairs)."""
    try:
        raw = images_txt.read_text().splitlines()
    except OSError as error:
        raise UserError(f"cannot read {images_txt}: {error}") from None
    by_name, number = {}, 0
    while number < len(raw):
        line = raw[number].strip()
        number += 1
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        if len(tokens) < 10:
            raise UserError(f"{images_txt}:{number}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'")
        if tokens[8] not in cameras:
            raise UserError(f"{images_txt}:{number}: camera {tokens[8]} is not in cameras.txt")
        by_name[" ".join(tokens[9:])] = cameras[tokens[8]]
        number += 1  # the 2D points line
    if not by_name:
        raise UserError(f"{images_txt}: no images")
    return by_name


# ----------------------------------------------------------------------------------------------------------------
# Writing

def format_per_image_file(images: list[str], cameras: list[Intrinsics]) -> str:
    """Format (b), which every camera fits (sizes come from the images)."""
    lines = ["# image_name fx fy cx cy [k1 k2 p1 p2 [k3]]"]
    for image, cam in zip(images, cameras):
        values = [cam.fx, cam.fy, cam.cx, cam.cy, *(cam.distortion if cam.has_distortion else ())]
        lines.append(" ".join([image, *(repr(float(v)) for v in values)]))
    return "\n".join(lines) + "\n"


def colmap_camera_params(cam: Intrinsics) -> tuple[str, list[float]]:
    """The smallest COLMAP model holding this camera exactly."""
    if not cam.has_distortion:
        if cam.fx == cam.fy:
            return "SIMPLE_PINHOLE", [cam.fx, cam.cx, cam.cy]
        return "PINHOLE", [cam.fx, cam.fy, cam.cx, cam.cy]
    k = cam.opencv_distortion()
    if k[4] == 0:
        return "OPENCV", [cam.fx, cam.fy, cam.cx, cam.cy, *k[:4]]
    return "FULL_OPENCV", [cam.fx, cam.fy, cam.cx, cam.cy, *k, 0.0, 0.0, 0.0]


def unique_cameras(cameras: list[Intrinsics]) -> tuple[list[Intrinsics], list[int]]:
    """Distinct cameras (source ignored) and, per image, the index of its camera."""
    keys = [replace(c, source="") for c in cameras]
    distinct: dict[Intrinsics, int] = {}
    index = [distinct.setdefault(key, len(distinct)) for key in keys]
    return list(distinct), index


def format_colmap_cameras(cameras: list[Intrinsics]) -> str:
    """cameras.txt text for these distinct cameras (ids 1..N)."""
    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
             f"# Number of cameras: {len(cameras)}"]
    for camera_id, cam in enumerate(cameras, 1):
        model, params = colmap_camera_params(cam)
        lines.append(" ".join([str(camera_id), model, str(cam.width), str(cam.height),
                               *(repr(float(p)) for p in params)]))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Resolving the intrinsics of a collection

def image_cameras(images: list[str], sizes: list[tuple[int, int]], calibration_file: str | Path | None = None,
                  external_focal: float | None = None, log: bool = True) -> list[Intrinsics]:
    """The intrinsics of each image (see the module docstring for the order of sources).
    With a calibration file, an external focal replaces the first image's fx and scales every camera alike
    (how ace_zero hands a refined focal to the next stage)."""
    if calibration_file is not None:
        parsed = read_calibration_file(calibration_file)
        cameras = [parsed.for_image(i, w, h) for i, (w, h) in zip(images, sizes)]
        if external_focal is not None and external_focal > 0:
            factor = external_focal / cameras[0].fx
            cameras = [c.with_focal(c.fx * factor) for c in cameras]
    elif external_focal is not None and external_focal > 0:
        cameras = [Intrinsics.centred(external_focal, w, h, "external") for w, h in sizes]
    else:
        cameras = [automatic(i, w, h) for i, (w, h) in zip(images, sizes)]
    if log:
        log_sources(cameras)
    return cameras


def log_sources(cameras: list[Intrinsics]) -> None:
    counts = Counter(c.source for c in cameras)
    first = cameras[0]
    _log.info("intrinsics: %s; first image fx %.1f fy %.1f cx %.1f cy %.1f%s",
              ", ".join(f"{source} for {n} image(s)" for source, n in counts.items()), first.fx, first.fy,
              first.cx, first.cy, ", with distortion (undistorted on load)" if first.has_distortion else "")


def undistort(image: np.ndarray, cam: Intrinsics) -> np.ndarray:
    """The image as a pinhole camera with the same K would have seen it (OpenCV's model)."""
    if not cam.has_distortion:
        return image
    import cv2
    if (image.shape[1], image.shape[0]) != (cam.width, cam.height):
        cam = cam.scaled(image.shape[1], image.shape[0])
    # cv2 puts pixel centres at integers: shift the principal point by half a pixel for its convention.
    K = cam.matrix()
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return cv2.undistort(image, K, cam.opencv_distortion(), None, K)
