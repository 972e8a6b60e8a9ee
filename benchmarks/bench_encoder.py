#!/usr/bin/env python3
"""Does an encoder's dense feature map say where in the frame a cell lies? Three measurements per data set:

1. position probe R^2: a ridge regression from features to the cell's (u, v), fitted on the even images and
   scored on the odd ones (all cells, and interior cells at least 4 cells from the border);
2. shift following: the odd images cropped by 8 cells (64 px) on the left, then on the top; a feature map that
   is a function of content gives the same probe readout for the same content, one that encodes the frame
   moves the readout by the crop. Reported: the fraction of cells whose readout moves by more than half the
   crop (follows the frame);
3. identical-pose fit ratio: `train_ace.py` with poses fixed, once with the true poses, once with every camera
   at one pose, same schedule; the ratio of the final training inlier fractions. Near 1 means the loss cannot
   tell a collapsed reconstruction from the truth; features without position make it fall.

Data sets: folders with images/, poses/<stem>.pose.txt, calibration.txt (the shared data), or `rendered` for a
scene the project renders itself. Example: `benchmarks/bench_encoder.py ../shared/data/temple rendered
--encoders xfeat xfeat-reflect`."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

import dataset_io  # noqa: E402
from ace_util import REPO_ROOT as REPO, script_command  # noqa: E402

CROP_CELLS = 8
INTERIOR_CELLS = 4
PROBE_RIDGE = 1.0


@dataclass
class PosedImages:
    name: str
    images: list[str]
    poses: list[str]
    focal: float  # pixels of the original images


@dataclass
class EncoderReport:
    dataset: str
    encoder: str
    probe_r2: float
    probe_r2_interior: float
    shift_following: float
    fit_true: float | None = None
    fit_identical: float | None = None
    ms_per_image: float | None = None

    @property
    def fit_ratio(self) -> float | None:
        return None if not self.fit_true else self.fit_identical / self.fit_true


# ----------------------------------------------------------------------------------------------------------------
# Features and the position probe

def load_grey(paths: list[str], short_side: int) -> list[np.ndarray]:
    return [dataset_io.load_network_input(path, short_side)[0] for path in paths]


def feature_maps(encoder, greys: list[np.ndarray]) -> list[np.ndarray]:
    """C x H x W float64 features of each grey image (values in [0, 1])."""
    import torch
    maps = []
    with torch.no_grad():
        for grey in greys:
            x = torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32))[None, None]
            maps.append(encoder(encoder.normalise(x))[0].double().numpy())
    return maps


def _cells(feature_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N x C features, N x 2 cell positions (u, v) and an N mask of interior cells."""
    channels, height, width = feature_map.shape
    v, u = np.mgrid[0:height, 0:width]
    interior = (u >= INTERIOR_CELLS) & (u < width - INTERIOR_CELLS) & (v >= INTERIOR_CELLS) & \
        (v < height - INTERIOR_CELLS)
    return feature_map.reshape(channels, -1).T, np.stack([u.ravel(), v.ravel()], 1).astype(float), interior.ravel()


class PositionProbe:
    """Ridge regression (on standardised features) from a feature vector to its cell position."""

    def __init__(self, feature_maps_: list[np.ndarray]):
        cells = [_cells(m) for m in feature_maps_]
        features = np.concatenate([c[0] for c in cells])
        positions = np.concatenate([c[1] for c in cells])
        self.mean, self.std = features.mean(0), features.std(0) + 1e-6
        design = self._design(features)
        gram = design.T @ design + PROBE_RIDGE * np.eye(design.shape[1])
        self.weights = np.linalg.solve(gram, design.T @ positions)

    def _design(self, features: np.ndarray) -> np.ndarray:
        standard = (features - self.mean) / self.std
        return np.concatenate([standard, np.ones((len(standard), 1))], axis=1)

    def readout(self, feature_map: np.ndarray) -> np.ndarray:
        """2 x H x W predicted (u, v) for every cell."""
        _, height, width = feature_map.shape
        return (self._design(_cells(feature_map)[0]) @ self.weights).T.reshape(2, height, width)

    def r2(self, feature_maps_: list[np.ndarray], interior_only: bool = False) -> float:
        """Coefficient of determination of (u, v) together (residual over total variance, both coordinates)."""
        truth, predicted = [], []
        for feature_map in feature_maps_:
            _, positions, interior = _cells(feature_map)
            keep = interior if interior_only else np.ones(len(positions), bool)
            truth.append(positions[keep])
            predicted.append(self.readout(feature_map).reshape(2, -1).T[keep])
        truth, predicted = np.concatenate(truth), np.concatenate(predicted)
        residual = ((truth - predicted) ** 2).sum()
        total = ((truth - truth.mean(0)) ** 2).sum()
        return float(1 - residual / total)


def shift_following_fraction(encoder, probe: PositionProbe, greys: list[np.ndarray],
                             full_maps: list[np.ndarray]) -> float:
    """Fraction of cells whose probe readout moves with the frame (by > half the crop) when the image is cropped
    by CROP_CELLS cells on the left (u) or the top (v); content-bound features keep the readout in place.
    `full_maps`: the feature maps of `greys` themselves."""
    from ace_network import OUTPUT_SUBSAMPLE
    crop = CROP_CELLS * OUTPUT_SUBSAMPLE
    following, total = 0, 0
    for grey, full_map in zip(greys, full_maps, strict=True):
        full = probe.readout(full_map)
        for axis, cropped in ((0, grey[:, crop:]), (1, grey[crop:, :])):
            moved = probe.readout(feature_maps(encoder, [cropped])[0])
            if axis == 0:  # cell k of the crop shows cell k + CROP_CELLS of the full image
                shift = full[0, :, CROP_CELLS:CROP_CELLS + moved.shape[2]] - moved[0]
            else:
                shift = full[1, CROP_CELLS:CROP_CELLS + moved.shape[1], :] - moved[1]
            following += int((shift > CROP_CELLS / 2).sum())
            total += shift.size
    return following / total


def encoder_speed_ms(encoder, height: int = 480, width: int = 640, repeats: int = 5) -> float:
    grey = np.random.default_rng(0).random((height, width))
    feature_maps(encoder, [grey])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        feature_maps(encoder, [grey])
    return (time.perf_counter() - start) / repeats * 1000


# ----------------------------------------------------------------------------------------------------------------
# Identical-pose fit

def symlinked_glob(folder: Path, paths: list[str]) -> str:
    """A folder of symlinks, so that a glob selects exactly `paths` (the scripts take globs)."""
    folder.mkdir(parents=True)
    for path in paths:
        (folder / Path(path).name).symlink_to(Path(path).resolve())
    return str(folder / "*")


def mapping_inliers(data: PosedImages, pose_paths: list[str], encoder: str, iterations: int, workdir: Path,
                    extra: list[str]) -> float:
    """Training inlier fraction (mean over the last fifth of the run) of train_ace.py with these fixed poses."""
    out = workdir / "map.pt"
    command = script_command("train_ace.py", [
        symlinked_glob(workdir / "images", data.images), out,
        "--pose_files", symlinked_glob(workdir / "poses", pose_paths), "--use_external_focal_length", data.focal,
        "--encoder_path", encoder, "--iterations", iterations, "--iterations_output", max(1, iterations // 20),
        "--device", "cpu", *extra])
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: train_ace.py failed on {data.name}: {result.stderr.strip().splitlines()[-1]}")
    rows = [line.split() for line in out.with_suffix(".txt").read_text().splitlines() if line.strip()]
    inliers = [float(row[3]) for row in rows]
    return float(np.mean(inliers[-max(1, len(inliers) // 5):]))


def identical_pose_files(data: PosedImages, folder: Path) -> list[str]:
    """Every image gets the pose of the middle image (file names kept, so the glob order is unchanged)."""
    folder.mkdir(parents=True)
    middle = Path(data.poses[len(data.poses) // 2]).read_text()
    paths = []
    for path in data.poses:
        target = folder / Path(path).name
        target.write_text(middle)
        paths.append(str(target))
    return paths


def identical_pose_fit(data: PosedImages, encoder: str, iterations: int, extra: list[str]) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        true = mapping_inliers(data, data.poses, encoder, iterations, tmp / "true", extra)
        same = identical_pose_files(data, tmp / "identical_poses")
        identical = mapping_inliers(data, same, encoder, iterations, tmp / "identical", extra)
    return true, identical


# ----------------------------------------------------------------------------------------------------------------
# Data sets and the report

def posed_folder(folder: Path) -> PosedImages:
    images = sorted(str(p) for p in (folder / "images").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    poses = sorted(str(p) for p in (folder / "poses").glob("*.txt"))
    if not images or len(images) != len(poses):
        raise SystemExit(f"error: {folder}: needs images/ and one poses/<stem>.pose.txt per image")
    return PosedImages(folder.name, images, poses, dataset_io.read_calibration(folder / "calibration.txt").fx)


def rendered_scene(folder: Path, num_images: int = 16) -> PosedImages:
    from datasets.synthetic_scene import render_scene
    render_scene(folder, num_images=num_images, width=640, height=480, focal=525.0, seed=3, trajectory="orbit",
                 yaw_step_deg=6.0)
    data = posed_folder(folder)
    data.name = "rendered orbit"
    return data


def measure(data: PosedImages, encoder_id: str, short_side: int, fit_iterations: int, extra: list[str]
            ) -> EncoderReport:
    from ace_network import load_encoder
    encoder = load_encoder(encoder_id)
    greys = load_grey(data.images, short_side)
    maps = feature_maps(encoder, greys)
    probe = PositionProbe(maps[0::2])
    report = EncoderReport(data.name, encoder_id, probe.r2(maps[1::2]), probe.r2(maps[1::2], interior_only=True),
                           shift_following_fraction(encoder, probe, greys[1::2], maps[1::2]),
                           ms_per_image=encoder_speed_ms(encoder))
    if fit_iterations > 0:
        report.fit_true, report.fit_identical = identical_pose_fit(data, encoder_id, fit_iterations, extra)
    return report


def table(reports: list[EncoderReport]) -> str:
    lines = ["| data | encoder | probe R2 (interior) | follows frame | inliers true / one pose | ratio "
             "| ms / 480x640 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in reports:
        fit = "—" if r.fit_true is None else f"{r.fit_true:.3f} / {r.fit_identical:.3f}"
        ratio = "—" if r.fit_ratio is None else f"{r.fit_ratio:.2f}"
        lines.append(f"| {r.dataset} | {r.encoder} | {r.probe_r2:.2f} ({r.probe_r2_interior:.2f}) | "
                     f"{100 * r.shift_following:.1f} % | {fit} | {ratio} | {r.ms_per_image:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("datasets", nargs="+", help="data set folders, or 'rendered'")
    parser.add_argument("--encoders", nargs="+", default=["xfeat"], help="encoder ids, train_encoder.py files or ACE encoder files")
    parser.add_argument("--image_resolution", type=int, default=480, help="short side of the network input")
    parser.add_argument("--fit_iterations", type=int, default=400,
                        help="train_ace.py iterations of each identical-pose fit (0: skip the fits)")
    parser.add_argument("--json", type=Path, default=None, help="also write the reports here")
    args, extra = parser.parse_known_args()  # anything else goes to train_ace.py
    from cli_common import configure_cpu_threads
    configure_cpu_threads()
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            data = rendered_scene(Path(tmp) / "rendered") if name == "rendered" else posed_folder(Path(name))
            for encoder in args.encoders:
                start = time.time()
                reports.append(measure(data, encoder, args.image_resolution, args.fit_iterations, extra))
                print(f"{data.name} / {encoder}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    print(table(reports))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"fit_ratio": r.fit_ratio} for r in reports], indent=1))


if __name__ == "__main__":
    main()
