"""New: XFeat keypoints and verified matches kept on disk, so that the stages of one reconstruction detect and
match each image (pair) once. Under `ace_zero.py --round_bundle_adjustment` every round's bundle_adjust.py, the
final adjustment and verify_poses.py are separate processes that used to detect every image and match most pairs
again.

An image's entry is keyed by its file (path, size, modification time), the detection resolution and, for a camera
with lens distortion, the camera (the keypoints are found on the undistorted image); a pair's entry by its two
images' keys and the verification threshold. A changed image, resolution or camera therefore never reads a stale
entry. Entries are written atomically; an unreadable one is computed again.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from calibration import Intrinsics

_log = logging.getLogger(__name__)

# Bump when detection or verification changes what they return, so that old entries are not read.
FORMAT = "xfeat-subpixel-1"


def _digest(*parts) -> str:
    return hashlib.sha1(repr((FORMAT, *parts)).encode()).hexdigest()[:24]


class FeatureCache:
    """Keypoints and verified matches under `folder` (None: nothing is kept, every call computes)."""

    def __init__(self, folder: Path | str | None):
        self.folder = None if folder is None else Path(folder)
        self.hits = self.misses = 0

    def image_key(self, path: str, short_side: int, camera: Intrinsics) -> str | None:
        if self.folder is None:
            return None
        stat = os.stat(path)
        lens = (camera.width, camera.height)
        if camera.has_distortion:  # undistortion moves the keypoints with the intrinsics
            lens += (camera.fx, camera.fy, camera.cx, camera.cy, camera.distortion)
        return _digest(os.path.abspath(path), stat.st_size, stat.st_mtime_ns, short_side, lens)

    def keypoints(self, key: str | None, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The arrays `compute()` returns for this image, from disk when an earlier call stored them."""
        return self._cached(None if key is None else f"keypoints/{key}.npz", compute)

    def matches(self, first: str | None, second: str | None, threshold: float,
                compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The arrays `compute()` returns for the ordered image pair at this verification threshold."""
        known = first is not None and second is not None
        return self._cached(f"matches/{_digest(first, second, round(threshold, 9))}.npz" if known else None, compute)

    def _cached(self, name: str | None, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if self.folder is None or name is None:
            return compute()
        path = self.folder / name
        if path.is_file():
            try:
                with np.load(path) as stored:
                    arrays = {k: stored[k] for k in stored.files}
                self.hits += 1
                return arrays
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # damaged: compute it again
                _log.debug("feature cache entry %s unreadable (%s)", path, error)
        self.misses += 1
        arrays = compute()
        self._store(path, arrays)
        return arrays

    def _store(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        temporary = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, **arrays)
            os.replace(temporary, path)
        except OSError as error:  # a cache that cannot be written only costs time
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)
            _log.warning("feature cache: cannot write %s (%s); continuing without it", path, error)

    def summary(self) -> str:
        return f"feature cache {self.folder}: {self.hits} entries read, {self.misses} computed"
