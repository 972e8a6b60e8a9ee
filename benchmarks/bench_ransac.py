"""Time dsacstar.forward_rgb on a realistic 60x80 scene-coordinate map (480x640 image, stride 8).

The map is synthetic: a known camera pose, random depths 2-10 m, 40 % of cells consistent
with the pose (1 px noise), the rest replaced by scene points that do not project to their cell.
Prints the median time per call over repeated calls, on one thread and on all threads.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import dsacstar

HEIGHT, WIDTH, STRIDE = 60, 80, 8
FOCAL, PPX, PPY = 525.0, 320.0, 240.0


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def synthetic_map(inlier_ratio: float, seed: int = 0):
    """Returns (scene_coords float32 (3, H, W), cam_to_world 4x4 ground truth)."""
    rng = np.random.default_rng(seed)
    rotation, translation = random_rotation(rng), rng.normal(size=3)  # world-to-camera
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    pixels = np.stack([STRIDE * xs + STRIDE / 2, STRIDE * ys + STRIDE / 2], -1).reshape(-1, 2)
    pixels = pixels + rng.normal(scale=1.0, size=pixels.shape)  # prediction noise, in pixels
    depth = rng.uniform(2.0, 10.0, len(pixels))
    camera_points = np.column_stack([(pixels - [PPX, PPY]) / FOCAL * depth[:, None], depth])
    world = (camera_points - translation) @ rotation
    outliers = rng.random(len(world)) >= inlier_ratio
    # Outliers: other scene points (shuffled) plus a few decimetres of noise.
    world[outliers] = world[rng.permutation(np.flatnonzero(outliers))]
    world[outliers] += rng.normal(scale=0.3, size=(outliers.sum(), 3))
    scene_coords = world.T.reshape(3, HEIGHT, WIDTH).astype(np.float32)
    cam_to_world = np.eye(4)
    cam_to_world[:3, :3] = rotation.T
    cam_to_world[:3, 3] = -rotation.T @ translation
    return scene_coords, cam_to_world


def time_calls(scene_coords: np.ndarray, threads: int, calls: int, hypotheses: int):
    kwargs = dict(hypotheses=hypotheses, threshold=10.0, focal=FOCAL, ppx=PPX, ppy=PPY, num_threads=threads)
    dsacstar.forward_rgb(scene_coords, **kwargs)  # warm-up
    times, inliers, pose = [], 0, None
    for _ in range(calls):
        start = time.perf_counter()
        inliers, pose = dsacstar.forward_rgb(scene_coords, **kwargs)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), inliers, pose


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--hypotheses", type=int, default=64)
    parser.add_argument("--inlier-ratio", type=float, default=0.4)
    args = parser.parse_args()

    scene_coords, truth = synthetic_map(args.inlier_ratio)
    print(f"map {HEIGHT}x{WIDTH}, {args.inlier_ratio:.0%} inliers, {args.hypotheses} hypotheses, "
          f"median of {args.calls} calls")
    for threads in dict.fromkeys([1, os.cpu_count() or 1]):
        ms, inliers, pose = time_calls(scene_coords, threads, args.calls, args.hypotheses)
        cos = (np.trace(pose[:3, :3].T @ truth[:3, :3]) - 1) / 2
        rot_deg = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        trans_m = np.linalg.norm(pose[:3, 3] - truth[:3, 3])
        print(f"threads={threads}: {ms:.2f} ms/call, inliers={inliers}, "
              f"rotation error {rot_deg:.3f} deg, translation error {trans_m * 100:.2f} cm")


if __name__ == "__main__":
    main()
