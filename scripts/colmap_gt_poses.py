#!/usr/bin/env python3
"""Write the camera-to-world poses of a COLMAP model as one 4x4 <image stem>.pose.txt per image, for
eval_poses.py (which pairs them with a pose file by sorted name). The run scripts use it to measure
reconstructions against Mip-NeRF 360's COLMAP poses when Nerfstudio is not installed.

Images of --images_glob that the model lacks get an all-inf pose (eval_poses.py counts them as failures).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

import numpy as np  # noqa: E402

from cli_common import UserError, ensure_writable_folder, make_parser, run_main  # noqa: E402
from dataset_io import glob_files  # noqa: E402
from datasets.colmap_model import ColmapError, read_model  # noqa: E402
from datasets.dataset_util import write_pose  # noqa: E402


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("model", type=Path, help="COLMAP sparse model folder (e.g. datasets/mip360/bonsai/sparse/0)")
    parser.add_argument("output_folder", type=Path, help="folder for the .pose.txt files")
    parser.add_argument("--images_glob", type=str, required=True,
                        help="the reconstruction's images (quoted glob); one pose file each, by file name")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        _, images = read_model(args.model)
    except ColmapError as error:
        raise UserError(str(error)) from None
    poses = {Path(img.name).name: img.cam_to_world() for img in images.values()}
    folder = ensure_writable_folder(args.output_folder)
    missing = 0
    for path in glob_files(args.images_glob, "images_glob"):
        pose = poses.get(Path(path).name)
        missing += pose is None
        write_pose(folder / f"{Path(path).stem}.pose.txt", np.full((4, 4), np.inf) if pose is None else pose)
    print(f"Wrote {len(poses)} COLMAP poses to {folder} ({missing} image(s) not in the model)")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
