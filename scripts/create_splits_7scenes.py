#!/usr/bin/env python3
"""Write the official 7-Scenes train/test split of every scene as <output_folder>/7scenes_<scene>.json:
{"train_filenames": [...], "test_filenames": [...]}, the sequences named in TrainSplit.txt / TestSplit.txt.

Entries are paths as globbed under dataset_root, so spell dataset_root exactly as the reconstruction's image
glob does (the run scripts use datasets/7scenes), since the benchmark matches frames by path.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

from cli_common import UserError, atomic_write_text, make_parser, run_main  # noqa: E402
from datasets.setup_7scenes import split_sequences  # noqa: E402

_log = logging.getLogger("create_splits_7scenes")


def split_files(root: str, scene: str, split_file: str) -> list[str]:
    files = []
    for sequence in split_sequences(Path(root) / scene / split_file):
        files += sorted(glob.glob(os.path.join(root, scene, sequence, "*.color.png")))
    return files


def write_scene_split(root: str, scene: str, output_folder: Path) -> None:
    _log.info("Processing scene %s.", scene)
    test = split_files(root, scene, "TestSplit.txt")
    train = split_files(root, scene, "TrainSplit.txt")
    _log.info("Found %d test files and %d train files.", len(test), len(train))
    target = output_folder / f"7scenes_{scene}.json"
    _log.info("Writing split info to %s", target)
    atomic_write_text(target, json.dumps({"train_filenames": train, "test_filenames": test}, indent=1) + "\n")


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("dataset_root", type=Path, help="folder with one sub-folder per scene (e.g. datasets/7scenes)")
    parser.add_argument("output_folder", type=Path, help="folder for the split files (e.g. split_files)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    root = str(args.dataset_root)
    if not args.dataset_root.is_dir():
        raise UserError(f"{root} is not a folder")
    scenes = sorted(p.name for p in args.dataset_root.iterdir() if p.is_dir())
    for scene in scenes:
        if not (args.dataset_root / scene / "TrainSplit.txt").is_file() or \
                not (args.dataset_root / scene / "TestSplit.txt").is_file():
            _log.warning("Skipping %s: no TrainSplit.txt / TestSplit.txt", scene)
            continue
        write_scene_split(root, scene, args.output_folder)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
