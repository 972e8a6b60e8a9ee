#!/usr/bin/env python3
"""Unpack Tanks and Temples into ./t2/ (run it inside datasets/, as the README does, or wherever the data
should live). Nothing is downloaded: place the group archives, still zipped, at
./t2/{training,intermediate,advanced}.zip (image sets, top level = scene folders) and
./t2/{training,intermediate,advanced}_videos.zip (top level videos/<Scene>.mp4).

Image sets become t2/<group>/<Scene>/*.jpg; videos become t2/<group>_videos/<Scene>/%06d.jpg (every frame,
scaled to a height of 540 px, best JPEG quality; the mp4 is kept in t2/<group>_videos/videos/). Every scene is
built in <Scene>.tmp and renamed when complete. --with-colmap downloads colmap_raw.tar.gz (Niantic's COLMAP
models of the image sets) and builds t2_colmap/<group>/<Scene>/ with symlinked images, <name>_pose.txt
(4x4 camera-to-world, all inf where COLMAP missed the image) and focal_length.txt.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

import numpy as np  # noqa: E402

from cli_common import UserError, make_parser, run_main  # noqa: E402
from datasets import dataset_util as du  # noqa: E402
from datasets.colmap_model import ColmapError, read_model  # noqa: E402
from datasets.video_to_dataset import extraction_command  # noqa: E402

GROUPS = ["training", "intermediate", "advanced"]
SPLITS = GROUPS + [f"{g}_videos" for g in GROUPS]
SCENES = {"training": ["Barn", "Caterpillar", "Church", "Courthouse", "Ignatius", "Meetingroom", "Truck"],
          "intermediate": ["Family", "Francis", "Horse", "Lighthouse", "M60", "Panther", "Playground", "Train"],
          "advanced": ["Auditorium", "Ballroom", "Courtroom", "Museum", "Palace", "Temple"]}
DOWNLOAD_NOTE = ("get it from https://www.tanksandtemples.org/download (image sets: see also "
                 "https://github.com/isl-org/TanksAndTemples/issues/35)")
LICENSE_URL = "https://www.tanksandtemples.org/license/"
COLMAP_URL = "https://storage.googleapis.com/niantic-lon-static/research/acezero/colmap_raw.tar.gz"
COLMAP_LICENSES = ["https://github.com/colmap/colmap?tab=License-1-ov-file#readme",
                   "https://github.com/colmap/colmap/blob/main/src/thirdparty/SiftGPU/LICENSE"]
VIDEO_HEIGHT = 540


def archive_scenes(archive: Path, videos: bool) -> list[str]:
    """Scene names in a group archive: top-level folders, or videos/<Scene>.mp4."""
    try:
        with zipfile.ZipFile(archive) as handle:
            names = handle.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"corrupt archive {archive}: {error} (delete it and place it again)") from None
    if videos:
        return sorted({Path(n).stem for n in names if n.startswith("videos/") and n.lower().endswith(".mp4")})
    return sorted({n.split("/", 1)[0] for n in names if "/" in n and n.split("/", 1)[0] != "videos"})


def unpack_image_scene(archive: Path, scene: str, tmp: Path) -> None:
    du.extract(archive, tmp, prefix=f"{scene}/")
    for entry in (tmp / scene).iterdir():
        entry.rename(tmp / entry.name)
    (tmp / scene).rmdir()
    if not list(tmp.glob("*.jpg")):
        raise UserError(f"corrupt archive {archive}: no images for {scene}")


def extract_video_frames(video: Path, tmp: Path) -> None:
    # the shorter side of a landscape capture is its height: 960x540 for 16:9
    result = subprocess.run(extraction_command(video, tmp, VIDEO_HEIGHT), capture_output=True, text=True)
    if result.returncode != 0 or not list(tmp.glob("*.jpg")):
        message = (result.stderr.strip().splitlines() or ["no frames decoded"])[-1]
        raise UserError(f"ffmpeg failed on {video}: {message}")


def unpack_video_scene(archive: Path, scene: str, split_dir: Path) -> None:
    video = split_dir / "videos" / f"{scene}.mp4"
    if not video.is_file():  # the mp4 is kept next to the frames, as the original does
        tmp = du.fresh_folder(split_dir / f".{scene}.video.tmp")
        try:
            du.extract(archive, tmp, f"videos/{scene}.mp4")
            video.parent.mkdir(exist_ok=True)
            (tmp / "videos" / f"{scene}.mp4").rename(video)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"Extracting frames of {video}")
    du.staged(split_dir / scene, lambda tmp: extract_video_frames(video, tmp))


def setup_split(t2: Path, split: str, wanted: set[str] | None) -> bool:
    """Unpack one split; False when its archive is missing."""
    split_dir, archive = t2 / split, t2 / f"{split}.zip"
    if not archive.is_file():
        if split_dir.is_dir():
            print(f"{split_dir} already exists. Nothing to do.")
            return True
        print(f"{archive} not found, skipping {split}: {DOWNLOAD_NOTE}")
        return False
    videos = split.endswith("_videos")
    for scene in archive_scenes(archive, videos):
        if (wanted is not None and scene not in wanted) or (split_dir / scene).is_dir():
            continue
        print(f"Unpacking {split}/{scene}")
        split_dir.mkdir(exist_ok=True)
        if videos:
            unpack_video_scene(archive, scene, split_dir)
        else:
            du.staged(split_dir / scene, lambda tmp, s=scene: unpack_image_scene(archive, s, tmp))
    return True


# ----------------------------------------------------------------------------------------------------------------
# COLMAP poses of the image sets

def colmap_scene(raw_scene: Path, model_dir: Path, tmp: Path) -> None:
    try:
        cameras, images = read_model(model_dir)
    except ColmapError as error:
        raise UserError(str(error)) from None
    if list(cameras) != [1]:
        raise UserError(f"{model_dir}: Expected only one camera in the reconstruction.")
    focal = float(np.mean(cameras[1].fx_fy))
    du.write_focal(tmp / "focal_length.txt", focal)
    print(f"Saved focal length ({focal}) to: {tmp.with_name(tmp.name[:-4]) / 'focal_length.txt'}")
    poses = {Path(img.name).stem: img.cam_to_world() for img in images.values()}
    for jpg in sorted(raw_scene.glob("*.jpg")):
        du.relative_symlink(tmp / jpg.name, jpg)
        du.write_pose(tmp / f"{jpg.stem}_pose.txt", poses.get(jpg.stem, np.full((4, 4), np.inf)))


def setup_colmap(t2: Path, colmap_dir: Path, url: str, wanted: set[str] | None) -> None:
    archive = du.download(url, colmap_dir / "colmap_raw.tar.gz")  # kept, as the original does
    raw = colmap_dir / "colmap_raw"
    if not raw.is_dir():
        du.staged(raw, lambda tmp: du.extract(archive, tmp))
        inner = raw / "colmap_raw"  # an archive with a top-level colmap_raw/ folder
        if inner.is_dir() and not any(p.name.count("__") for p in raw.iterdir() if p != inner):
            for entry in inner.iterdir():
                entry.rename(raw / entry.name)
            inner.rmdir()
    for group in GROUPS:
        if not (t2 / group).is_dir():
            print(f"{t2 / group} not found: no COLMAP data for {group}.")
            continue
        for raw_scene in sorted(p for p in (t2 / group).iterdir() if p.is_dir() and p.name != "videos"):
            scene = raw_scene.name
            target = colmap_dir / group / scene
            if (wanted is not None and scene not in wanted) or target.is_dir() or scene.endswith(".tmp"):
                continue
            model_dir = raw / f"{group}__{scene}" / "0"
            if not model_dir.is_dir():
                print(f"Colmap data for scene {group}/{scene} not found. Skipping.")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            du.staged(target, lambda tmp, r=raw_scene, m=model_dir: colmap_scene(r, m, tmp))


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("--with-colmap", dest="with_colmap", action="store_true",
                        help="also download Niantic's COLMAP models and build t2_colmap/ (for the warm-start "
                             "scripts)")
    parser.add_argument("--scenes", nargs="+", default=None, metavar="SCENE",
                        help="only these scenes (e.g. Barn Family); default: every scene in the archives")
    parser.add_argument("--accept_license", action="store_true",
                        help="accept the licences without the prompts (for scripts)")
    parser.add_argument("--colmap_url", type=str, default=COLMAP_URL, help="where colmap_raw.tar.gz comes from")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    known = {s for names in SCENES.values() for s in names}
    if args.scenes and set(args.scenes) - known:
        raise UserError(f"unknown scene(s) {' '.join(sorted(set(args.scenes) - known))}; "
                        f"choose from {' '.join(sorted(known))}")
    wanted = set(args.scenes) if args.scenes else None
    du.confirm_license(["By using this script, you agree to the licence terms of Tanks and Temples:",
                        LICENSE_URL], args.accept_license)
    t2 = Path("t2")
    t2.mkdir(exist_ok=True)
    available = [split for split in SPLITS if setup_split(t2, split, wanted)]
    if args.with_colmap:
        du.confirm_license(["The COLMAP reconstructions are subject to the licences of COLMAP, SiftGPU and",
                            "Tanks and Temples:", *COLMAP_LICENSES, LICENSE_URL], args.accept_license)
        setup_colmap(t2, Path("t2_colmap"), args.colmap_url, wanted)
    print("Finished processing the dataset.")
    print(f"Tanks and Temples ACE data is available in: {t2.resolve()}")
    print(f"Available splits: {available}")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
