#!/usr/bin/env python3
"""Do an ace_zero run's new registrations agree with the structure it had already built? A diagnostic for a gate
against confident wrong registrations (README, "Honest confidence"; not part of the loop yet).

For every round R of a result folder, the images whose confidence in `poses_iterationR.txt` reaches the threshold
but did not in the previous round's adjusted registration are "new". Their XFeat keypoints are matched to every
image (the run's feature cache is reused), and each observation of a new image whose track is seen by at least two
previously registered images is predicted from those images alone: the track is triangulated with the previous
round's registered poses taken from this round's file and projected into the new image. Printed per new image:
the median miss, in keypoint accuracies (XFeat: about a pixel at the 480 px detection size), and the share beyond
four. Example: `benchmarks/bench_new_registrations.py results/temple --confidence 500`."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

import bundle_adjust  # noqa: E402
import dataset_io  # noqa: E402
from ace_util import UserError  # noqa: E402
from feature_cache import FeatureCache  # noqa: E402
from feature_matching import KEYPOINT_ACCURACY_PX  # noqa: E402

DETECTION_SHORT_SIDE = bundle_adjust.BundleAdjustConfig.image_resolution


def rounds(folder: Path) -> list[tuple[int, Path, Path]]:
    """(round, its registration, the previous round's adjusted registration) for every round after the seed."""
    found = {}
    for path in folder.glob("poses_iteration*.txt"):
        match = re.fullmatch(r"poses_iteration(\d+)(_seed\d+)?(_adjusted)?\.txt", path.name)
        if match:
            found[(int(match[1]), bool(match[2]), bool(match[3]))] = path
    seed_adjusted = sorted(p for p in folder.glob("poses_iteration0_seed*_adjusted.txt"))
    result = []
    for (number, seed, adjusted), path in sorted(found.items()):
        if number == 0 or seed or adjusted:
            continue
        previous = found.get((number - 1, False, True)) or found.get((number - 1, False, False))
        if number == 1 and seed_adjusted:
            previous = seed_adjusted[-1]
        if previous is not None:
            result.append((number, path, previous))
    return result


def misses_of_new_images(pose_file: Path, previous_file: Path, threshold: float, cache: FeatureCache, device
                         ) -> dict[str, np.ndarray]:
    """Per new image, how far its observations land from the points triangulated by the earlier images (px)."""
    entries = dataset_io.read_ace_pose_file(pose_file)
    before = {e.path: e.confidence for e in dataset_io.read_ace_pose_file(previous_file)}
    cameras = dataset_io.entry_cameras(entries, None, pose_file)
    paths = [e.path for e in entries]
    world_to_cam = np.stack([e.world_to_cam for e in entries])
    known = np.array([before.get(p, 0) >= threshold for p in paths])
    new = np.array([e.confidence >= threshold for e in entries]) & ~known
    features = bundle_adjust.extract_features(paths, DETECTION_SHORT_SIDE, device, cameras, cache)
    reference = cameras[0]
    accuracy = KEYPOINT_ACCURACY_PX * min(reference.width, reference.height) / DETECTION_SHORT_SIDE
    pairs = [(i, j) for i in range(len(paths)) for j in range(i + 1, len(paths)) if known[i] or known[j]]
    matches = {k: v for k, v in bundle_adjust.match_images(features, pairs, accuracy, cache).items() if len(v[0])}
    if not matches:
        return {}
    tracks = bundle_adjust.observations(bundle_adjust.build_tracks(features, matches), features)
    focal, centre = reference.fx, np.array([reference.cx, reference.cy])
    # Every point triangulated once from the earlier images alone (as bundle_adjust.reseat_cameras does).
    earlier, ids = bundle_adjust.keep_observations(tracks, known[tracks.camera])
    points = np.full((tracks.count, 3), np.nan)
    triangulated, usable = bundle_adjust.triangulate(earlier, world_to_cam, focal, centre)
    points[ids[usable]] = triangulated[usable]
    errors = bundle_adjust.observation_errors(tracks, world_to_cam, points, focal, centre)
    rotation, translation = world_to_cam[tracks.camera, :3, :3], world_to_cam[tracks.camera, :3, 3]
    depth = np.einsum("mj,mj->m", rotation[:, 2], points[tracks.point]) + translation[:, 2]
    errors[depth <= 0] = np.inf  # behind the new camera
    predicted = np.isfinite(points[tracks.point]).all(axis=1)
    return {paths[image]: errors[(tracks.camera == image) & predicted] / accuracy for image in np.flatnonzero(new)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result_folder", type=Path, help="an ace_zero.py result folder")
    parser.add_argument("--confidence", type=float, default=500, help="the run's --registration_confidence")
    args = parser.parse_args()
    import torch
    found = rounds(args.result_folder)
    if not found:
        sys.exit(f"{args.result_folder}: no poses_iteration<N>.txt after the seed's")
    cache = FeatureCache(args.result_folder / "feature_cache" if (args.result_folder / "feature_cache").is_dir()
                         else None)
    for number, pose_file, previous in found:
        try:
            misses = misses_of_new_images(pose_file, previous, args.confidence, cache, torch.device("cpu"))
        except UserError as error:
            sys.exit(f"{pose_file}: {error} (image paths are read from the pose file: run from the folder "
                     "ace_zero.py ran in)")
        print(f"round {number} ({pose_file.name} against {previous.name}): {len(misses)} new image(s)")
        for path, errors in misses.items():
            if len(errors) == 0:
                print(f"  {Path(path).name}: no track seen by two earlier images")
                continue
            print(f"  {Path(path).name}: {len(errors)} observations, median miss {np.median(errors):.1f} "
                  f"keypoint accuracies, {100 * np.mean(errors > 4):.0f} % beyond 4")


if __name__ == "__main__":
    main()
