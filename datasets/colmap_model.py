"""Read (and, for tests, write) COLMAP sparse models in the binary or text format, without pycolmap.

Only what the setup scripts and the pose evaluation need: cameras (model, size, parameters) and images
(world-to-camera quaternion and translation, camera id, name). 2D points are skipped; points3D is not read.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

# model id -> (name, number of parameters); COLMAP's own numbering
CAMERA_MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
                 4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
                 8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12)}
MODEL_IDS = {name: model_id for model_id, (name, _) in CAMERA_MODELS.items()}
SINGLE_FOCAL = {"SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"}


class ColmapError(ValueError):
    """A missing or unreadable model."""


@dataclass
class Camera:
    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray

    @property
    def fx_fy(self) -> tuple[float, float]:
        if self.model in SINGLE_FOCAL:
            return float(self.params[0]), float(self.params[0])
        return float(self.params[0]), float(self.params[1])

    @property
    def principal_point(self) -> tuple[float, float]:
        first = 1 if self.model in SINGLE_FOCAL else 2
        return float(self.params[first]), float(self.params[first + 1])

    def calibration_matrix(self) -> np.ndarray:
        (fx, fy), (cx, cy) = self.fx_fy, self.principal_point
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)


@dataclass
class Image:
    image_id: int
    qvec: np.ndarray   # w, x, y, z (world-to-camera)
    tvec: np.ndarray
    camera_id: int
    name: str

    def world_to_cam(self) -> np.ndarray:
        w, x, y, z = self.qvec
        pose = np.eye(4)
        pose[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix()
        pose[:3, 3] = self.tvec
        return pose

    def cam_to_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_to_cam())


# ----------------------------------------------------------------------------------------------------------------
# Binary

class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.offset, self.path = data, 0, path

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.data):
            raise ColmapError(f"{self.path} is truncated")
        values = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += size
        return values

    def name(self) -> str:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise ColmapError(f"{self.path} is truncated")
        text = self.data[self.offset:end].decode("utf-8")
        self.offset = end + 1
        return text


def read_cameras_binary(path: Path) -> dict[int, Camera]:
    reader, cameras = _Reader(path.read_bytes(), path), {}
    for _ in range(reader.take("<Q")[0]):
        camera_id, model_id, width, height = reader.take("<iiQQ")
        if model_id not in CAMERA_MODELS:
            raise ColmapError(f"{path}: unknown camera model {model_id}")
        name, count = CAMERA_MODELS[model_id]
        cameras[camera_id] = Camera(camera_id, name, width, height, np.array(reader.take(f"<{count}d")))
    return cameras


def read_images_binary(path: Path) -> dict[int, Image]:
    reader, images = _Reader(path.read_bytes(), path), {}
    for _ in range(reader.take("<Q")[0]):
        image_id, *pose, camera_id = reader.take("<i7di")
        name = reader.name()
        points = reader.take("<Q")[0]
        reader.offset += points * struct.calcsize("<ddq")
        images[image_id] = Image(image_id, np.array(pose[:4]), np.array(pose[4:]), camera_id, name)
    return images


def write_binary_model(folder: Path, cameras: list[Camera], images: list[Image]) -> None:
    """cameras.bin, images.bin (no 2D points) and an empty points3D.bin."""
    folder.mkdir(parents=True, exist_ok=True)
    data = struct.pack("<Q", len(cameras))
    for cam in cameras:
        data += struct.pack("<iiQQ", cam.camera_id, MODEL_IDS[cam.model], cam.width, cam.height)
        data += struct.pack(f"<{len(cam.params)}d", *cam.params)
    (folder / "cameras.bin").write_bytes(data)
    data = struct.pack("<Q", len(images))
    for img in images:
        data += struct.pack("<i7di", img.image_id, *img.qvec, *img.tvec, img.camera_id)
        data += img.name.encode() + b"\0" + struct.pack("<Q", 0)
    (folder / "images.bin").write_bytes(data)
    (folder / "points3D.bin").write_bytes(struct.pack("<Q", 0))


# ----------------------------------------------------------------------------------------------------------------
# Text

def _data_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def read_cameras_text(path: Path) -> dict[int, Camera]:
    cameras = {}
    for line in _data_lines(path):
        tokens = line.split()
        cameras[int(tokens[0])] = Camera(int(tokens[0]), tokens[1], int(tokens[2]), int(tokens[3]),
                                         np.array([float(t) for t in tokens[4:]]))
    return cameras


def read_images_text(path: Path) -> dict[int, Image]:
    images = {}
    # two lines per image; the second (2D points) may be empty, so keep blank lines here
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    for line in lines[0::2]:
        tokens = line.split()
        if len(tokens) < 10:
            continue
        numbers = [float(t) for t in tokens[1:8]]
        images[int(tokens[0])] = Image(int(tokens[0]), np.array(numbers[:4]), np.array(numbers[4:]),
                                       int(tokens[8]), " ".join(tokens[9:]))
    return images


def read_model(folder: Path) -> tuple[dict[int, Camera], dict[int, Image]]:
    """Cameras and images of the model in `folder` (binary preferred, as COLMAP writes it)."""
    folder = Path(folder)
    try:
        if (folder / "cameras.bin").is_file() and (folder / "images.bin").is_file():
            return read_cameras_binary(folder / "cameras.bin"), read_images_binary(folder / "images.bin")
        if (folder / "cameras.txt").is_file() and (folder / "images.txt").is_file():
            return read_cameras_text(folder / "cameras.txt"), read_images_text(folder / "images.txt")
    except (struct.error, UnicodeDecodeError, IndexError, ValueError) as error:
        raise ColmapError(f"cannot read the COLMAP model in {folder}: {error}") from None
    raise ColmapError(f"no COLMAP model (cameras/images .bin or .txt) in {folder}")
