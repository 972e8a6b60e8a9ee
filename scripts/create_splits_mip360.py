#!/usr/bin/env python3
"""Write the Mip-NeRF 360 train/test split of every scene as <output_folder>/mip360_<scene>.json: of the
sorted <scene>/<subfolder>/*.JPG, every test_step-th image counting from index test_step-1 (7, 15, ... by
default) is a test image, the others training images. Paths are as globbed under dataset_root, so spell it
exactly as the reconstruction's image glob does (datasets/mip360 in the run scripts).
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

_log = logging.getLogger("create_splits_mip360")


def split(files: list[str], test_step: int) -> tuple[list[str], list[str]]:
    """(train, test) of the sorted files: index i is a test image when i % test_step == test_step - 1."""
    ordered = sorted(files)
    test = [f for i, f in enumerate(ordered) if i % test_step == test_step - 1]
    return [f for i, f in enumerate(ordered) if i % test_step != test_step - 1], test


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("dataset_root", type=Path, help="folder with one sub-folder per scene (e.g. datasets/mip360)")
    parser.add_argument("output_folder", type=Path, help="folder for the split files (e.g. split_files)")
    parser.add_argument("--subfolder", type=str, default="images_4", help="image folder inside each scene")
    parser.add_argument("--test_step", type=int, default=8, help="one test image in this many")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.test_step < 1:
        raise UserError(f"--test_step must be at least 1, got {args.test_step}")
    if not args.dataset_root.is_dir():
        raise UserError(f"{args.dataset_root} is not a folder")
    for scene in sorted(p.name for p in args.dataset_root.iterdir() if p.is_dir()):
        _log.info("Processing scene %s.", scene)
        files = glob.glob(os.path.join(str(args.dataset_root), scene, args.subfolder, "*.JPG"))
        if not files:
            _log.warning("Skipping %s: no %s/*.JPG", scene, args.subfolder)
            continue
        train, test = split(files, args.test_step)
        _log.info("Found %d test files and %d train files.", len(test), len(train))
        target = args.output_folder / f"mip360_{scene}.json"
        _log.info("Writing split info to %s", target)
        atomic_write_text(target, json.dumps({"train_filenames": train, "test_filenames": test}, indent=1) + "\n")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
