#!/usr/bin/env python3
"""Reconstruction from scratch, ACE0 against COLMAP: runs ace_zero.py and COLMAP (pycolmap: SIFT, sequential and/or
exhaustive matching, incremental mapping; CPU only) back to back on DATA_DIR/images/*, evaluates both against
DATA_DIR/poses/*.pose.txt with eval_poses.py, and prints one table of times, the time ratio and accuracies.

pycolmap is a benchmark dependency only: pip install -r requirements-bench.txt. COLMAP's poses are written in this
project's pose-file format (world-to-camera, confidence COLMAP_CONFIDENCE for registered images); images COLMAP did
not register appear with an identity pose and confidence 0 (missing: counted, never registered or accurate).
--profile adds the time of ace_zero.py's stages, read from the log it wrote (the "stage ... took" lines)."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

import dataset_io  # noqa: E402
import eval_poses  # noqa: E402
from ace_util import REPO_ROOT as REPO, atomic_write_text, script_command  # noqa: E402
from cli_common import UserError, run_main  # noqa: E402

COLMAP_CONFIDENCE = 10000.0   # a registered COLMAP image: above any registration threshold
MISSING_CONFIDENCE = 0.0
MATCHERS = ("sequential", "exhaustive")
BENCH_REQUIREMENTS = "requirements-bench.txt"
ACE_LOG = "ace_zero.log"


# ----------------------------------------------------------------------------------------------------------------
# COLMAP

def import_pycolmap():
    try:
        import pycolmap
    except ImportError:
        raise UserError(f"pycolmap is missing (a benchmark-only dependency): pip install -r {BENCH_REQUIREMENTS}"
                        ) from None
    return pycolmap


def colmap_entries(image_paths: list[Path], registered: dict[str, tuple[np.ndarray, float]]) -> list:
    """Pose-file entries for every image: `registered` maps an image name to (4x4 world-to-camera, focal);
    the others are missing (identity pose, confidence 0, the median focal of the registered ones or 0)."""
    focals = [focal for _, focal in registered.values()]
    fallback = float(np.median(focals)) if focals else 0.0
    entries = []
    for path in image_paths:
        if path.name in registered:
            world_to_cam, focal = registered[path.name]
            entries.append(dataset_io.PoseEntry(str(path), world_to_cam, float(focal), COLMAP_CONFIDENCE))
        else:
            entries.append(dataset_io.PoseEntry(str(path), np.eye(4), fallback, MISSING_CONFIDENCE))
    return entries


def reconstruction_poses(reconstruction) -> dict[str, tuple[np.ndarray, float]]:
    """name -> (4x4 world-to-camera, focal in pixels) of every registered image of a pycolmap.Reconstruction."""
    poses = {}
    for image_id in reconstruction.reg_image_ids():
        image = reconstruction.image(image_id)
        rigid = image.cam_from_world()
        world_to_cam = np.eye(4)
        world_to_cam[:3, :] = rigid.matrix()
        poses[image.name] = (world_to_cam, float(image.camera.mean_focal_length()))
    return poses


def run_colmap(images: Path, image_paths: list[Path], folder: Path, matcher: str, camera_model: str,
               threads: int) -> dict:
    """Extraction, matching and incremental mapping into `folder`; returns times and the pose file written."""
    pycolmap = import_pycolmap()
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / "database.db"
    database.unlink(missing_ok=True)
    sparse = folder / "sparse"
    sparse.mkdir(exist_ok=True)
    times = {}
    start = time.time()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads
    extraction.use_gpu = False
    pycolmap.extract_features(database, images, image_names=[p.name for p in image_paths],
                              camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                              extraction_options=extraction, device=pycolmap.Device.cpu)
    times["features"] = time.time() - start
    start = time.time()
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    matching.use_gpu = False
    match = pycolmap.match_sequential if matcher == "sequential" else pycolmap.match_exhaustive
    match(database, matching_options=matching, device=pycolmap.Device.cpu)
    times["matching"] = time.time() - start
    start = time.time()
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads
    models = pycolmap.incremental_mapping(database, images, sparse, options=options)
    times["mapping"] = time.time() - start
    best = max(models.values(), key=lambda m: m.num_reg_images(), default=None)
    registered = reconstruction_poses(best) if best is not None else {}
    pose_file = folder / "poses_colmap.txt"
    dataset_io.write_ace_pose_file(pose_file, colmap_entries(image_paths, registered))
    return {"times": times, "seconds": sum(times.values()), "pose_file": str(pose_file),
            "models": len(models)}


# ----------------------------------------------------------------------------------------------------------------
# ACE0

def run_ace(images_glob: str, folder: Path, extra: list[str]) -> dict:
    if (folder / "ace_zero_state.json").exists():
        raise UserError(f"{folder} holds an earlier ace_zero.py run (it would resume, not time a run): delete it "
                        f"or give another --results")
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / ACE_LOG
    command = script_command("ace_zero.py", [images_glob, folder, *extra])
    print(f"running {' '.join(command[1:])} (log: {log})", flush=True)
    start = time.time()
    with open(log, "w") as stream:
        code = subprocess.run(command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - start
    if code != 0:
        raise UserError(f"ace_zero.py failed with exit code {code}; see {log}")
    return {"seconds": seconds, "pose_file": str(folder / "poses_final.txt"), "log": str(log)}


# ----------------------------------------------------------------------------------------------------------------
# Profile of an ace_zero.py log

_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d) [A-Z]+ (.*)$")
_TOOK = re.compile(r"^stage (\S+) (\S+) took ([\d.]+) s$")
_BUFFER = re.compile(r"^buffer filled in ([\d.]+) s$")
_TRAINED = re.compile(r"^mapping done: \d+ iterations in ([\d.]+) s")


@dataclass
class Profile:
    """Seconds by stage of one ace_zero.py run (sub-processes run one at a time: their lines do not interleave)."""
    stages: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    total: float | None = None

    def add(self, key: str, seconds: float) -> None:
        self.stages[key] = self.stages.get(key, 0.0) + seconds
        self.counts[key] = self.counts.get(key, 0) + 1


def stage_kind(script: str, label: str) -> str:
    if script == "train_ace.py":
        return "seed mapping" if "_seed" in label else "mapping rounds"
    if script == "register_mapping.py":
        return "seed scoring (registration)" if label.endswith("_fastcheck") else "registration"
    return {"bundle_adjust.py": "bundle adjustment", "verify_poses.py": "verification"}.get(script, script)


def parse_profile(lines) -> Profile:
    """Stage times from the timestamped lines of an ace_zero.py log: each stage's total (its "stage ... took"
    line), the buffer fill and training inside train_ace.py ("mapping done in" counts from the buffer fill on),
    and the process start of every stage (from ace_zero's "running" line to the stage's first line: Python and
    torch imports). A stage still running at the end of the log is counted as "unfinished stage"."""
    profile = Profile()
    first = last = None
    running_at = None      # time of the last "running" line whose stage has not logged yet
    open_since = None      # time of the last "running" line whose stage has not finished
    fills, trainings = [], []
    for line in lines:
        match = _LINE.match(line.rstrip("\n"))
        if not match:
            continue
        hours, minutes, seconds, message = match.groups()
        now = int(hours) * 3600 + int(minutes) * 60 + int(seconds)
        if first is not None and now < last:   # past midnight
            now += 86400 * (1 + (last - now) // 86400)
        first = now if first is None else first
        last = now
        if message.startswith("running "):
            running_at = open_since = now
            continue
        if running_at is not None:
            profile.add("process start", now - running_at)
            running_at = None
        if (took := _TOOK.match(message)) is not None:
            script, label, seconds = took.groups()
            kind = stage_kind(script, label)
            profile.add(kind, float(seconds))
            if script == "train_ace.py" and trainings:
                prefix = "seed" if kind == "seed mapping" else "rounds"
                profile.add(f"{prefix}: buffer fill", sum(fills))
                profile.add(f"{prefix}: training", sum(trainings) - sum(fills))
            fills, trainings = [], []
            open_since = None
        elif (fill := _BUFFER.match(message)) is not None:
            fills.append(float(fill.group(1)))
        elif (trained := _TRAINED.match(message)) is not None:
            trainings.append(float(trained.group(1)))
    if first is not None:
        profile.total = float(last - first)
    if open_since is not None:
        profile.add("unfinished stage", last - open_since)
    return profile


PROFILE_ORDER = ("seed mapping", "seed: buffer fill", "seed: training", "seed scoring (registration)",
                 "mapping rounds", "rounds: buffer fill", "rounds: training", "registration", "bundle adjustment",
                 "verification", "unfinished stage", "process start")


def profile_table(profile: Profile) -> str:
    keys = [k for k in PROFILE_ORDER if k in profile.stages] + \
        sorted(k for k in profile.stages if k not in PROFILE_ORDER)
    rows = [("stage", "calls", "seconds", "share")]
    top_level = sum(v for k, v in profile.stages.items() if ":" not in k and k != "process start")
    for key in keys:
        share = f"{100 * profile.stages[key] / profile.total:.0f} %" if profile.total else "-"
        rows.append((key, str(profile.counts[key]), f"{profile.stages[key]:.0f}", share))
    if profile.total is not None:
        rows.append(("ace_zero.py itself (total minus stages)", "", f"{profile.total - top_level:.0f}", ""))
        rows.append(("total (first to last log line)", "", f"{profile.total:.0f}", ""))
    notes = ("process start is inside each stage's time; buffer fill and training inside the mapping stages'")
    return markdown_table(rows) + "\n" + notes


# ----------------------------------------------------------------------------------------------------------------
# Evaluation and the table

def evaluate(pose_file: str, gt_glob: str, thresh_t: float, thresh_r: float, conf_threshold: float,
             json_file: Path) -> dict:
    """eval_poses.py on one pose file (its report goes to a .txt next to the JSON)."""
    argv = [pose_file, gt_glob, "--pose_error_thresh_t", str(thresh_t), "--pose_error_thresh_r", str(thresh_r),
            "--estimate_alignment_conf_threshold", str(conf_threshold), "--json", str(json_file)]
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        summary = eval_poses.main(argv)
    json_file.with_suffix(".txt").write_text(report.getvalue())
    entries = dataset_io.read_ace_pose_file(pose_file)
    registered = [e.focal for e in entries if e.confidence > conf_threshold]
    summary["focal"] = float(np.median(registered)) if registered else None
    return summary


def format_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def result_rows(results: list[dict], ace_name: str = "ACE0") -> list[tuple[str, ...]]:
    """One row per method; the ratio column is ACE0's time over each COLMAP time."""
    ace = next((r for r in results if r["method"] == ace_name), None)
    rows = [("method", "wall time", "ACE0/COLMAP", "registered", "median rot.", "median transl.",
             f"within {eval_threshold_text(results)}", "focal")]
    for r in results:
        s = r["summary"]
        ratio = f"{ace['seconds'] / r['seconds']:.1f}" if ace is not None and r is not ace and r["seconds"] > 0 \
            else "-"
        rot = "-" if s["median_rot_err_deg"] is None else f"{s['median_rot_err_deg']:.2f} deg"
        trans = "-" if s["median_trans_err"] is None else f"{s['median_trans_err']:.4g}"
        focal = "-" if s.get("focal") is None else f"{s['focal']:.1f} px"
        rows.append((r["method"], format_seconds(r["seconds"]), ratio, f"{s['num_registered']}/{s['num_images']}",
                     rot, trans, f"{s['accuracy_percent']:.0f} %", focal))
    return rows


def eval_threshold_text(results: list[dict]) -> str:
    if not results:
        return "thresholds"
    s = results[0]["summary"]
    return f"{s['thresh_t']:g} / {s['thresh_r_deg']:g} deg"


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "| " + " | ".join("---" for _ in rows[0]) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("data_dir", type=Path, nargs="?", default=None,
                        help="folder with images/ and poses/*.pose.txt (camera-to-world)")
    parser.add_argument("--results", type=Path, default=None,
                        help="output folder (default: bench_results/<data folder name>)")
    parser.add_argument("--colmap", default="sequential,exhaustive",
                        help="COLMAP matchers to run, comma-separated (sequential, exhaustive); empty: none")
    parser.add_argument("--ace_args", default="", help="extra ace_zero.py flags, one string (default: CPU defaults)")
    parser.add_argument("--skip_ace", action="store_true", help="run COLMAP only")
    parser.add_argument("--camera_model", default="SIMPLE_RADIAL", choices=("SIMPLE_PINHOLE", "PINHOLE",
                                                                             "SIMPLE_RADIAL", "RADIAL"),
                        help="COLMAP camera model, one camera shared by all images")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="COLMAP threads (default: the available cores)")
    parser.add_argument("--thresh_t", type=float, default=0.05, help="translation threshold, GT units")
    parser.add_argument("--thresh_r", type=float, default=5.0, help="rotation threshold, degrees")
    parser.add_argument("--conf_threshold", type=float, default=500,
                        help="ACE0 images above this confidence count as registered and drive the alignment")
    parser.add_argument("--profile", action="store_true", help="also print ace_zero.py's time by stage")
    parser.add_argument("--profile_log", type=Path, default=None,
                        help="only print the stage profile of this ace_zero.py log (a finished or partial run)")
    parser.add_argument("--json", type=Path, default=None, help="write all results as JSON here")
    args = parser.parse_args(argv)
    if args.data_dir is None and args.profile_log is None:
        raise UserError("give DATA_DIR (or --profile_log LOG for a profile only)")
    args.matchers = [m.strip() for m in args.colmap.split(",") if m.strip()]
    unknown = [m for m in args.matchers if m not in MATCHERS]
    if unknown:
        raise UserError(f"--colmap: unknown matcher(s) {', '.join(unknown)} (choose from {', '.join(MATCHERS)})")
    if args.skip_ace and not args.matchers:
        raise UserError("nothing to run: --skip_ace and no --colmap matcher")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.profile_log is not None:
        if not args.profile_log.is_file():
            raise UserError(f"--profile_log {args.profile_log}: no such file")
        print(profile_table(parse_profile(args.profile_log.read_text(errors="replace").splitlines())))
        return {}
    if args.matchers:
        import_pycolmap()  # fail before a 15-minute ACE0 run
    images = args.data_dir / "images"
    image_paths = sorted(p for p in images.glob("*") if p.is_file())
    gt_glob = str(args.data_dir / "poses" / "*.pose.txt")
    if not image_paths:
        raise UserError(f"no images in {images}")
    results_dir = args.results or REPO / "bench_results" / args.data_dir.name
    results_dir.mkdir(parents=True, exist_ok=True)
    results = []
    if not args.skip_ace:
        ace = run_ace(str(images / "*"), results_dir / "ace0", shlex.split(args.ace_args))
        ace["summary"] = evaluate(ace["pose_file"], gt_glob, args.thresh_t, args.thresh_r, args.conf_threshold,
                                  results_dir / "eval_ace0.json")
        results.append({"method": "ACE0", **ace})
    for matcher in args.matchers:
        print(f"running COLMAP ({matcher} matching, {args.threads} threads)", flush=True)
        colmap = run_colmap(images, image_paths, results_dir / f"colmap_{matcher}", matcher, args.camera_model,
                            args.threads)
        colmap["summary"] = evaluate(colmap["pose_file"], gt_glob, args.thresh_t, args.thresh_r,
                                     COLMAP_CONFIDENCE - 1, results_dir / f"eval_colmap_{matcher}.json")
        results.append({"method": f"COLMAP {matcher}", **colmap})
    print(f"\n{args.data_dir.name}: {len(image_paths)} images; errors after a similarity alignment "
          f"(eval_poses.py), translation in GT units\n")
    print(markdown_table(result_rows(results)))
    for r in results:
        if "times" in r:
            print(f"{r['method']}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["times"].items()))
    output = {"data": str(args.data_dir), "images": len(image_paths), "results": results}
    if args.profile and not args.skip_ace:
        profile = parse_profile(Path(results[0]["log"]).read_text(errors="replace").splitlines())
        print(f"\nace_zero.py by stage (from {results[0]['log']}):\n")
        print(profile_table(profile))
        output["profile"] = {"stages": profile.stages, "counts": profile.counts, "total": profile.total}
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(output, indent=1, default=str) + "\n")
    return output


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
