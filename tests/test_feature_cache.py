"""feature_cache.py: entries are read back exactly, never stale (a changed image or undistortion gets a new key),
a damaged entry is computed again; and a bundle adjustment reading every keypoint and match from the cache
writes the same poses as one that computes them."""
from __future__ import annotations

import os
import re

import numpy as np

import dataset_io
from calibration import Intrinsics
from conftest import ORBIT_FOCAL, run_cli
from feature_cache import FeatureCache
from test_bundle_adjust import _perturbed_pose_file

IMAGES = 6  # of the orbit: enough pairs for tracks, a few seconds an adjustment


class Counter:
    """A compute function that says how often it ran."""

    def __init__(self, value: float):
        self.calls, self.value = 0, value

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        return {"pixels": np.full((3, 2), self.value), "ids": np.arange(3)}


def test_entries_are_read_back_and_keyed_by_file_and_camera(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"first")
    cache = FeatureCache(tmp_path / "cache")
    camera = Intrinsics.centred(500, 640, 480, "heuristic")
    key = cache.image_key(str(image), 480, camera)
    compute = Counter(1.5)
    first, again = cache.keypoints(key, compute), cache.keypoints(key, compute)
    assert compute.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(first["pixels"], again["pixels"])
    np.testing.assert_array_equal(again["ids"], np.arange(3))
    # another process sees the entry
    assert FeatureCache(tmp_path / "cache").keypoints(key, Counter(9.0))["pixels"][0, 0] == 1.5

    # a pinhole camera's focal does not move its keypoints; distortion makes the camera part of the key
    assert cache.image_key(str(image), 480, camera.with_focal(700)) == key
    assert cache.image_key(str(image), 240, camera) != key
    distorted = Intrinsics(500, 500, 320, 240, 640, 480, (0.1, 0.0, 0.0, 0.0))
    assert cache.image_key(str(image), 480, distorted) != cache.image_key(str(image), 480, distorted.with_focal(510))
    # a changed image file is a new entry
    image.write_bytes(b"second image")
    os.utime(image, ns=(1, 1))
    assert cache.image_key(str(image), 480, camera) != key


def test_pairs_are_ordered_and_keyed_by_threshold(tmp_path):
    cache = FeatureCache(tmp_path)
    compute = Counter(2.0)
    cache.matches("a", "b", 1.0, compute)
    cache.matches("a", "b", 1.0, compute)
    assert compute.calls == 1
    cache.matches("b", "a", 1.0, compute)
    cache.matches("a", "b", 2.0, compute)
    cache.matches("a", None, 1.0, compute)  # an image without a key is never cached
    cache.matches("a", None, 1.0, compute)
    assert compute.calls == 5


def test_without_a_folder_or_with_a_damaged_entry_it_computes(tmp_path):
    compute = Counter(3.0)
    nothing = FeatureCache(None)
    assert nothing.image_key(__file__, 480, Intrinsics.centred(500, 640, 480, "h")) is None
    nothing.keypoints("k", compute)
    nothing.keypoints("k", compute)
    assert compute.calls == 2 and not any(tmp_path.iterdir())

    cache = FeatureCache(tmp_path)
    cache.keypoints("k", compute)
    (entry,) = (tmp_path / "keypoints").iterdir()
    entry.write_bytes(b"not an npz file")
    assert cache.keypoints("k", compute)["pixels"][0, 0] == 3.0 and compute.calls == 4
    assert FeatureCache(tmp_path).keypoints("k", Counter(0.0))["pixels"][0, 0] == 3.0  # rewritten whole


def test_adjustment_from_the_cache_equals_the_computed_one(orbit_scene, tmp_path):
    noisy = tmp_path / "noisy.txt"
    _perturbed_pose_file(orbit_scene, noisy, 2.0, 0.03, ORBIT_FOCAL * 1.03)
    dataset_io.write_ace_pose_file(noisy, dataset_io.read_ace_pose_file(noisy)[:IMAGES])
    cache = tmp_path / "cache"
    plain = run_cli("bundle_adjust.py", noisy, tmp_path / "plain.txt", "--device", "cpu")
    cold = run_cli("bundle_adjust.py", noisy, tmp_path / "cold.txt", "--device", "cpu", "--feature_cache", cache)
    warm = run_cli("bundle_adjust.py", noisy, tmp_path / "warm.txt", "--device", "cpu", "--feature_cache", cache)
    assert "feature cache" not in plain.stderr
    read, computed = map(int, re.search(r"(\d+) entries read, (\d+) computed", cold.stderr).groups())
    assert read == 0 and computed > IMAGES  # the images and their pairs
    assert f"{computed} entries read, 0 computed" in warm.stderr
    expected = (tmp_path / "plain.txt").read_text()
    assert (tmp_path / "cold.txt").read_text() == expected
    assert (tmp_path / "warm.txt").read_text() == expected
