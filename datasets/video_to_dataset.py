#!/usr/bin/env python3
"""Extract the frames of every MP4 video in a folder into `video_<name>/000001.jpg, ...` (one image set per
video, ready for ace_zero.py), scaling the shorter image side to --min_side_length.

Folders that already exist are skipped. Frames are written to a temporary folder first and renamed when the
video is done, so an interrupted run never leaves a half-extracted folder that a rerun would skip.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

from cli_common import UserError, make_parser, run_main  # noqa: E402

_log = logging.getLogger("video_to_dataset")

FRAME_PATTERN = "%06d.jpg"


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped with imageio-ffmpeg (no system install needed)."""
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as error:
        raise UserError(f"ffmpeg not available (pip install imageio-ffmpeg): {error}") from None


def find_videos(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise UserError(f"{directory} is not a folder")
    videos = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() == ".mp4")
    if not videos:
        raise UserError(f"no .mp4 files in {directory}")
    return videos


def scale_filter(min_side_length: int) -> str:
    """Shorter side to `min_side_length`, aspect kept (even width/height), portrait or landscape.

    ffmpeg applies the rotation metadata of phone videos before this filter, so iw/ih are as displayed."""
    side = min_side_length
    return f"scale=w='if(lte(iw,ih),{side},-2)':h='if(lte(iw,ih),-2,{side})'"


def extraction_command(video: Path, target: Path, min_side_length: int) -> list[str]:
    return [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(video),
            "-vf", scale_filter(min_side_length), "-qmin", "1", "-q:v", "1", str(target / FRAME_PATTERN)]


def extract_frames(video: Path, target: Path, min_side_length: int) -> int:
    """Extract into `target` (must not exist); returns the number of frames."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    result = subprocess.run(extraction_command(video, partial, min_side_length), capture_output=True, text=True)
    frames = len(list(partial.glob("*.jpg")))
    if result.returncode != 0 or frames == 0:
        shutil.rmtree(partial, ignore_errors=True)
        message = (result.stderr.strip().splitlines() or ["no frames decoded"])[-1]
        raise UserError(f"ffmpeg failed on {video}: {message}")
    partial.rename(target)
    return frames


def convert_folder(directory: Path, min_side_length: int) -> None:
    for video in find_videos(directory):
        target = directory / f"video_{video.stem}"
        if target.exists():
            print(f"skipping {video.name}: {target} already exists")
            continue
        count = extract_frames(video, target, min_side_length)
        print(f"{video.name}: {count} frames -> {target}")


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("directory", type=Path, help="folder with the .mp4 videos; frames go to subfolders")
    parser.add_argument("--min_side_length", type=int, default=540, help="shorter side of the frames in pixels")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.min_side_length < 2:
        raise UserError(f"--min_side_length must be at least 2, got {args.min_side_length}")
    convert_folder(args.directory, args.min_side_length)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
