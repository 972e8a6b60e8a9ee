#!/usr/bin/env python3
"""Download and unpack Microsoft's 7-Scenes into ./7scenes/<scene>/ (run it inside datasets/, as the README
does, or wherever the data should live): TrainSplit.txt, TestSplit.txt and seq-NN/frame-NNNNNN.{color.png,
depth.png,pose.txt}. ACE0 uses only this raw layout.

An archive already at ./7scenes/<scene>.zip is used instead of downloading it; a partial download
(<scene>.zip.part) is resumed. Each scene is unpacked into <scene>.tmp and renamed when complete, so an
interrupted run or a corrupt archive leaves no half-made scene folder. With --setup_ace_structure it also
builds ./7scenes_ace/{kf|pgt}_7scenes_<scene>/{train,test}/{rgb,poses,calibration}/ (the ACE layout).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

import numpy as np  # noqa: E402

from cli_common import UserError, make_parser, run_main  # noqa: E402
from datasets import dataset_util as du  # noqa: E402

SCENES = ["chess", "fire", "heads", "office", "pumpkin", "redkitchen", "stairs"]
URL_BASE = "http://download.microsoft.com/download/2/8/5/28564B23-0828-408F-8631-23B1EFF1DAC8"
LICENSE_URL = "https://www.microsoft.com/en-us/research/project/rgb-d-dataset-7-scenes/"
PGT_REPO = "https://github.com/tsattler/visloc_pseudo_gt_limitations.git"
RGB_FOCAL = 525.0
# Options of the original that need facts the reference does not give (depth-to-RGB extrinsics, the layout of
# the rendered depth archive); refused with a clear message rather than guessed.
NOT_DONE = {("depth", "rendered"): "the layout of 7scenes_depth.tar.gz is not documented here",
            ("depth", "calibrated"): "the depth-to-RGB registration parameters are not documented here",
            ("eye", "calibrated"): "the depth-to-RGB registration parameters are not documented here",
            ("poses", "calibrated"): "the depth-to-RGB extrinsics are not documented here"}


def split_sequences(split_file: Path) -> list[str]:
    """'sequence3' lines -> 'seq-03' folder names."""
    names = []
    for line in split_file.read_text().splitlines():
        line = line.strip()
        if line:
            if not line.startswith("sequence") or not line[8:].isdigit():
                raise UserError(f"{split_file}: unexpected line '{line}' (expected sequenceN)")
            names.append(f"seq-{int(line[8:]):02d}")
    return names


def unpack_scene(archive: Path, tmp: Path) -> None:
    """Outer zip -> <scene>/ with the split files and one zip per sequence, each unpacked in place."""
    du.extract(archive, tmp)
    root = du.single_top_folder(tmp)
    for inner in sorted(root.glob("*.zip")):
        print(f"Unpacking {inner}")
        du.extract(inner, root)
        inner.unlink()
    if root != tmp:  # move the scene's content up into the staged folder itself
        for entry in root.iterdir():
            entry.rename(tmp / entry.name)
        root.rmdir()
    if not (tmp / "TrainSplit.txt").is_file() or not (tmp / "TestSplit.txt").is_file():
        raise UserError(f"corrupt archive {archive}: no TrainSplit.txt / TestSplit.txt in it")


def setup_scene(scene: str, data: Path, url_base: str, keep_archive: bool) -> None:
    target = data / scene
    if target.is_dir():
        print(f"Found data of scene {scene} already. Skipping (it was renamed into place only when complete).")
        return
    print(f"=== Downloading 7scenes Data: {scene} ===")
    archive = du.download(f"{url_base}/{scene}.zip", data / f"{scene}.zip")
    du.staged(target, lambda tmp: unpack_scene(archive, tmp))
    if not keep_archive:
        archive.unlink()


# ----------------------------------------------------------------------------------------------------------------
# ACE layout

def read_pgt(path: Path) -> dict[str, tuple[np.ndarray, float]]:
    """'seq-NN/frame-NNNNNN.color.png qw qx qy qz tx ty tz [focal]' (world-to-camera) -> cam-to-world, focal."""
    from dataset_io import invert_pose, quat_t_to_pose
    poses = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        tokens = line.split()
        if not tokens or line.startswith("#"):
            continue
        if len(tokens) not in (8, 9):
            raise UserError(f"{path}:{number}: expected 'file qw qx qy qz tx ty tz [focal]'")
        values = [float(t) for t in tokens[1:]]
        pose = invert_pose(quat_t_to_pose(np.array(values[:4]), np.array(values[4:7])))
        poses[tokens[0]] = (pose, values[7] if len(values) == 8 else RGB_FOCAL)
    return poses


def pgt_folder(accept: bool) -> Path:
    """The pseudo ground truth repository in ./visloc_pseudo_gt_limitations (cloned when missing)."""
    folder = Path("visloc_pseudo_gt_limitations")
    if not folder.is_dir():
        du.confirm_license(["The pseudo ground truth poses come from", PGT_REPO,
                            "Please check its licence before using them."], accept)
        if shutil.which("git") is None:
            raise UserError("--poses pgt needs git to clone " + PGT_REPO)
        result = subprocess.run(["git", "clone", PGT_REPO, str(folder)])
        if result.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise UserError(f"git clone {PGT_REPO} failed")
    return folder


def split_frames(scene_dir: Path, split: str, pgt: dict | None) -> list[tuple[Path, np.ndarray, float]]:
    """(rgb file, cam-to-world, focal) of every frame in the split's sequences."""
    frames = []
    for seq in split_sequences(scene_dir / ("TrainSplit.txt" if split == "train" else "TestSplit.txt")):
        for rgb in sorted((scene_dir / seq).glob("frame-*.color.png")):
            if pgt is None:
                pose = np.loadtxt(rgb.with_name(rgb.name.replace(".color.png", ".pose.txt")))
                frames.append((rgb, pose, RGB_FOCAL))
            elif f"{seq}/{rgb.name}" in pgt:
                frames.append((rgb, *pgt[f"{seq}/{rgb.name}"]))
    return frames


def build_ace_scene(scene_dir: Path, tmp: Path, pgt_dir: Path | None) -> None:
    for split in ("train", "test"):
        pgt = None if pgt_dir is None else read_pgt(pgt_dir / "pgt" / "sfm" / "7scenes" /
                                                   f"{scene_dir.name}_{split}.txt")
        folders = {name: tmp / split / name for name in ("rgb", "poses", "calibration")}
        for folder in folders.values():
            folder.mkdir(parents=True)
        for rgb, pose, focal in split_frames(scene_dir, split, pgt):
            stem = f"{rgb.parent.name}-{rgb.name[:-len('.color.png')]}"
            du.relative_symlink(folders["rgb"] / f"{stem}.color.png", rgb)
            du.write_pose(folders["poses"] / f"{stem}.pose.txt", pose)
            du.write_focal(folders["calibration"] / f"{stem}.calibration.txt", focal)


def setup_ace_structure(scenes: list[str], data: Path, poses: str, accept: bool) -> None:
    pgt_dir = pgt_folder(accept) if poses == "pgt" else None
    prefix = "pgt" if poses == "pgt" else "kf"
    for scene in scenes:
        target = Path("7scenes_ace") / f"{prefix}_7scenes_{scene}"
        if target.is_dir():
            print(f"{target} exists already. Skipping.")
            continue
        print(f"Building the ACE layout of {scene} in {target}")
        du.staged(target, lambda tmp, s=scene: build_ace_scene(data / s, tmp, pgt_dir))


# ----------------------------------------------------------------------------------------------------------------

def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("--setup_ace_structure", action="store_true",
                        help="also build the ACE layout in ./7scenes_ace (ACE0 itself does not need it)")
    parser.add_argument("--depth", choices=["none", "rendered", "calibrated"], default="none",
                        help="depth in the ACE layout (only 'none' is implemented)")
    parser.add_argument("--eye", choices=["none", "calibrated"], default="none",
                        help="camera coordinates in the ACE layout (only 'none' is implemented)")
    parser.add_argument("--poses", choices=["original", "calibrated", "pgt"], default="original",
                        help="poses of the ACE layout: original (KinectFusion) or pgt (COLMAP pseudo ground truth "
                             "of visloc_pseudo_gt_limitations); 'calibrated' is not implemented")
    parser.add_argument("--scenes", nargs="+", default=None, metavar="SCENE",
                        help=f"only these scenes (default: all of {' '.join(SCENES)})")
    parser.add_argument("--accept_license", action="store_true",
                        help="accept the dataset licence without the prompt (for scripts)")
    parser.add_argument("--mirror", type=str, default=URL_BASE,
                        help="base URL the <scene>.zip archives are downloaded from")
    parser.add_argument("--keep_archives", action="store_true",
                        help="keep <scene>.zip after unpacking (the original deletes it)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for option in ("depth", "eye", "poses"):
        if (option, getattr(args, option)) in NOT_DONE:
            raise UserError(f"--{option} {getattr(args, option)} is not implemented: "
                            f"{NOT_DONE[(option, getattr(args, option))]}")
    scenes = du.select_scenes(args.scenes, SCENES)
    du.confirm_license(["By using this script, you agree to the licence terms of the 7-Scenes dataset:",
                        LICENSE_URL], args.accept_license)
    data = Path("7scenes")
    data.mkdir(exist_ok=True)
    for scene in scenes:
        setup_scene(scene, data, args.mirror.rstrip("/"), args.keep_archives)
    if not args.setup_ace_structure:
        print("ACE dataset format not requested. Done.")
        return
    setup_ace_structure(scenes, data, args.poses, args.accept_license)
    print("Done.")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
