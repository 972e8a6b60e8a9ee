#!/usr/bin/env python3
"""Do an ace_zero run's new registrations agree with the structure it had already built? The measurement of
gate_registrations.py (ace_zero.py --registration_gate), replayed on every round of a finished result folder, with
or without the gate in the loop, to choose its threshold (README, "Honest confidence").

For every round R, the images whose confidence in `poses_iterationR.txt` reaches the threshold but did not in the
file that round mapped from (the previous registration, gated and adjusted as far as the run did) are "new"; each
is compared with the structure that the earlier images alone triangulate (the run's feature cache is reused). Printed per new image: the median miss in keypoint
accuracies (XFeat: about a pixel at the 480 px detection size) and the gate's verdict.
Example: `benchmarks/bench_new_registrations.py results/temple --confidence 500`."""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

import dataset_io  # noqa: E402
from ace_util import UserError  # noqa: E402
from ace_zero import STATE_FILE, registration_files  # noqa: E402
from feature_cache import FeatureCache  # noqa: E402
from gate_registrations import (DEFAULT_MAX_MISS, DEFAULT_MAX_SPREAD, GateVerdict,  # noqa: E402
                                gate_new_registrations)

DETECTION_SHORT_SIDE = 480  # bundle_adjust.py's and gate_registrations.py's default


def mapped_from(folder: Path, stem: str) -> Path | None:
    """What the round after registration `stem` mapped from: the registration gated and adjusted, as far as the run
    did either (ace_zero.py's order), else the registration itself."""
    files = registration_files(folder, stem)
    return files.get("adjusted", files.get("before adjustment"))


def seed_stem(folder: Path) -> str | None:
    """The chosen seed's run id: from the run state, else the last seed whose registration was adjusted."""
    state = folder / STATE_FILE
    if state.is_file():
        return json.loads(state.read_text()).get("seed_id")
    adjusted = sorted(folder.glob("poses_iteration0_seed*_adjusted.txt"))
    return adjusted[-1].name[len("poses_"):-len("_adjusted.txt")] if adjusted else None


def rounds(folder: Path) -> list[tuple[int, Path, Path]]:
    """(round, its registration, the file that round mapped from) for every round after the seed."""
    numbers = sorted(int(m[1]) for p in folder.glob("poses_iteration*.txt")
                     if (m := re.fullmatch(r"poses_iteration(\d+)\.txt", p.name)) and int(m[1]) > 0)
    result = []
    for number in numbers:
        stem = f"iteration{number - 1}" if number > 1 else seed_stem(folder)
        previous = mapped_from(folder, stem) if stem else None
        if previous is not None:
            result.append((number, folder / f"poses_iteration{number}.txt", previous))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result_folder", type=Path, help="an ace_zero.py result folder")
    parser.add_argument("--confidence", type=float, default=500, help="the run's --registration_confidence")
    parser.add_argument("--max_miss", type=float, default=DEFAULT_MAX_MISS,
                        help="the gate's threshold (keypoint accuracies), for the verdicts printed")
    parser.add_argument("--hold_unjudged", action="store_true",
                        help="verdicts as ace_zero.py --registration_gate_hold_unjudged True gives them (default: "
                             "the unjudged images pass)")
    parser.add_argument("--resect", action="store_true", help="resect the new images first, as "
                        "ace_zero.py --registration_resection True does (default: verdicts on the registration)")
    parser.add_argument("--max_spread", type=float, default=0.0,
                        help=f"judge only the images whose observations determine a pose within this many degrees "
                             f"(ace_zero.py's default: {DEFAULT_MAX_SPREAD:g}; default here: 0, no such test)")
    args = parser.parse_args()
    found = rounds(args.result_folder)
    if not found:
        sys.exit(f"{args.result_folder}: no poses_iteration<N>.txt after the seed's")
    cache = FeatureCache(args.result_folder / "feature_cache" if (args.result_folder / "feature_cache").is_dir()
                         else None)
    for number, pose_file, previous in found:
        try:
            verdicts = new_registrations(pose_file, previous, args.confidence, args.max_miss, cache,
                                         args.hold_unjudged, args.resect, args.max_spread)
        except UserError as error:
            sys.exit(f"{pose_file}: {error} (image paths are read from the pose file: run from the folder "
                     "ace_zero.py ran in)")
        print(f"round {number} ({pose_file.name} against {previous.name}): {len(verdicts)} new image(s)")
        for verdict in verdicts:
            spread = "" if math.isnan(verdict.spread_deg) else f"; halves {verdict.spread_deg:.1f} deg apart"
            print(f"  {Path(verdict.path).name}: {verdict.observations} observations; {verdict.reason}{spread}")


def new_registrations(pose_file: Path, previous: Path, threshold: float, max_miss: float, cache: FeatureCache,
                      hold_unjudged: bool = False, resect: bool = False, max_spread: float = 0.0
                      ) -> list[GateVerdict]:
    import torch
    entries = dataset_io.read_ace_pose_file(pose_file)
    cameras = dataset_io.entry_cameras(entries, None, pose_file)
    verdicts, _ = gate_new_registrations(entries, dataset_io.read_ace_pose_file(previous), cameras, threshold,
                                         max_miss, DETECTION_SHORT_SIDE, torch.device("cpu"), cache,
                                         resect=resect, hold_unjudged=hold_unjudged, max_spread=max_spread)
    return verdicts


if __name__ == "__main__":
    main()
