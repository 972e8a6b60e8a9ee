#!/usr/bin/env python3
"""Stand-in for ace_zero.py / train_ace.py / register_mapping.py / export_point_cloud.py in the tests of the
scripts/reconstruct_*.sh experiment scripts: it records its command line in $STUB_LOG (one JSON list a line)
and writes the files the real program would, in milliseconds. Which program it plays comes from its file name
(stub_ace_zero.py, stub_train_ace.py, stub_register_mapping.py, stub_export_point_cloud.py)."""
from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation


def flag(args: list[str], name: str, default: str | None = None) -> str | None:
    return args[args.index(name) + 1] if name in args else default


def pose_of(image: str, index: int) -> np.ndarray:
    """The true pose (so that the evaluation is quick and can be checked): the 7-Scenes pose next to the image,
    else $STUB_GT_DIR/<image stem>.pose.txt; otherwise a camera on a line."""
    gt = Path(image.replace(".color.png", ".pose.txt"))
    if not (image.endswith(".color.png") and gt.is_file()):
        gt = Path(os.environ.get("STUB_GT_DIR", "/nonexistent"), f"{Path(image).stem}.pose.txt")
    if gt.is_file():
        return np.loadtxt(gt)
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("y", 3 * index, degrees=True).as_matrix()
    pose[0, 3] = 0.1 * index
    return pose


def write_poses(path: Path, images: list[str], focal: float, confidence: str) -> None:
    lines = []
    for index, image in enumerate(images):
        w2c = np.linalg.inv(pose_of(image, index))
        x, y, z, w = Rotation.from_matrix(w2c[:3, :3]).as_quat()
        numbers = [w, x, y, z, *w2c[:3, 3], focal]
        lines.append(" ".join([image, *(repr(float(v)) for v in numbers), confidence]))
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    role, args = Path(__file__).name, sys.argv[1:]
    with open(os.environ["STUB_LOG"], "a") as log:
        log.write(json.dumps([role, *args]) + "\n")
    images = sorted(glob.glob(args[0])) if args else []
    focal = float(flag(args, "--use_external_focal_length", "100"))
    if role == "stub_ace_zero.py":
        Path(args[1]).mkdir(parents=True, exist_ok=True)
        write_poses(Path(args[1]) / "poses_final.txt", images, focal, "2000")
    elif role == "stub_train_ace.py":
        head = Path(args[1])
        head.parent.mkdir(parents=True, exist_ok=True)
        head.write_bytes(b"head")
        write_poses(head.parent / f"poses_{head.stem}_preliminary.txt", images, focal + 5.5, "inf")
    elif role == "stub_register_mapping.py":
        head = Path(args[1])
        write_poses(head.parent / f"poses_{flag(args, '--session')}.txt", images, focal, "2000")
    elif role == "stub_export_point_cloud.py":
        Path(args[0]).write_text("ply\n")


if __name__ == "__main__":
    main()
