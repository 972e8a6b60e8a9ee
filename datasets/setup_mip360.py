#!/usr/bin/env python3
"""Download and unpack Mip-NeRF 360 (360_v2.zip) into ./mip360/<scene>/ (run it inside datasets/, as the
README does, or wherever the data should live): images/, images_2/, images_4/, images_8/, sparse/0/ and
poses_bounds.npy per scene. ACE0 uses only images_4/.

An archive already at ./360_v2.zip is used instead of downloading it (a partial 360_v2.zip.part is resumed);
it is kept, so a later run can add scenes. Each scene is unpacked into mip360/<scene>.tmp and renamed when
complete. With --setup_ace_structure it also builds ./mip360_ace/<scene>/{train,test}/{rgb,poses,calibration}/
(COLMAP image ids divisible by --test_step are test images).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

from cli_common import UserError, make_parser, run_main  # noqa: E402
from datasets import dataset_util as du  # noqa: E402
from datasets.colmap_model import ColmapError, read_model  # noqa: E402

SCENES = ["bicycle", "bonsai", "counter", "garden", "kitchen", "room", "stump"]
URL = "https://storage.googleapis.com/gresearch/refraw360/360_v2.zip"
LICENSE_URL = "https://jonbarron.info/mipnerf360/"


def unpack_scene(archive: Path, scene: str, tmp: Path) -> None:
    du.extract(archive, tmp, prefix=f"{scene}/")
    unpacked = tmp / scene
    if not unpacked.is_dir():
        raise UserError(f"corrupt archive {archive}: no folder {scene}/ in it")
    for entry in unpacked.iterdir():  # the staged folder becomes the scene folder itself
        entry.rename(tmp / entry.name)
    unpacked.rmdir()


def setup_scenes(scenes: list[str], data: Path, url: str) -> None:
    missing = [s for s in scenes if not (data / s).is_dir()]
    if not missing:
        print(f"Target path: {data} has every requested scene. Skipping download.")
        return
    archive = Path("360_v2.zip")
    if not archive.is_file():
        print(f"Downloading {url} -> {archive}")
    archive = du.download(url, archive)
    print("Download complete. Unpacking archive.")
    data.mkdir(exist_ok=True)
    for scene in missing:
        print(f"Unpacking {scene}")
        du.staged(data / scene, lambda tmp, s=scene: unpack_scene(archive, s, tmp))


# ----------------------------------------------------------------------------------------------------------------
# ACE layout

def downscale_factor(images_folder: str) -> int:
    """images_4 -> 4; a folder name without a number means full resolution."""
    match = re.search(r"_(\d+)$", images_folder)
    return int(match.group(1)) if match else 1


def build_ace_scene(scene_dir: Path, tmp: Path, images_folder: str, test_step: int) -> None:
    try:
        cameras, images = read_model(scene_dir / "sparse" / "0")
    except ColmapError as error:
        raise UserError(str(error)) from None
    factor = downscale_factor(images_folder)
    counters = {"train": 0, "test": 0}
    for split in counters:
        for name in ("rgb", "poses", "calibration"):
            (tmp / split / name).mkdir(parents=True)
    for image_id in sorted(images):
        image = images[image_id]
        split = "test" if image_id % test_step == 0 else "train"
        stem = f"{counters[split]:06d}"
        counters[split] += 1
        rgb = scene_dir / images_folder / image.name
        if not rgb.is_file():
            raise UserError(f"{rgb} not found (image {image.name} of the COLMAP model)")
        du.relative_symlink(tmp / split / "rgb" / f"{stem}.jpg", rgb)
        du.write_pose(tmp / split / "poses" / f"{stem}.txt", image.cam_to_world())
        calibration = cameras[image.camera_id].calibration_matrix()
        calibration[:2] /= factor
        du.write_pose(tmp / split / "calibration" / f"{stem}.txt", calibration)


def setup_ace_structure(scenes: list[str], data: Path, images_folder: str, test_step: int) -> None:
    for scene in scenes:
        target = Path("mip360_ace") / scene
        if target.is_dir():
            print(f"{target} exists already. Skipping.")
            continue
        print(f"Building the ACE layout of {scene} in {target}")
        du.staged(target, lambda tmp, s=scene: build_ace_scene(data / s, tmp, images_folder, test_step))


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("--setup_ace_structure", action="store_true",
                        help="also build the ACE layout in ./mip360_ace (ACE0 itself does not need it)")
    parser.add_argument("--images_folder", type=str, default="images_4",
                        help="image folder the ACE layout links to (its _N suffix scales the calibration)")
    parser.add_argument("--test_step", type=int, default=8,
                        help="ACE layout: COLMAP image ids divisible by this are test images")
    parser.add_argument("--scenes", nargs="+", default=None, metavar="SCENE",
                        help=f"only these scenes (default: all of {' '.join(SCENES)})")
    parser.add_argument("--accept_license", action="store_true",
                        help="accept the dataset licence without the prompt (for scripts)")
    parser.add_argument("--url", type=str, default=URL, help="where 360_v2.zip is downloaded from")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.test_step < 1:
        raise UserError(f"--test_step must be at least 1, got {args.test_step}")
    scenes = du.select_scenes(args.scenes, SCENES)
    du.confirm_license(["By using this script, you agree to the licence terms of the Mip-NeRF 360 dataset:",
                        LICENSE_URL], args.accept_license)
    data = Path("mip360")
    setup_scenes(scenes, data, args.url)
    if not args.setup_ace_structure:
        print("ACE dataset format not requested. Done.")
        return
    setup_ace_structure(scenes, data, args.images_folder, args.test_step)
    print("Done.")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
