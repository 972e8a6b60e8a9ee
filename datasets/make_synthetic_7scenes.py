#!/usr/bin/env python3
"""Render the project's synthetic room (datasets/synthetic_scene.py) as a dataset in the raw 7-Scenes layout,
so that the 7-Scenes experiment scripts run without downloads:

    <output>/<scene>/TrainSplit.txt, TestSplit.txt      ("sequence1", ...)
    <output>/<scene>/seq-NN/frame-NNNNNN.color.png      RGB
    <output>/<scene>/seq-NN/frame-NNNNNN.depth.png      16-bit millimetres, 0 = invalid
    <output>/<scene>/seq-NN/frame-NNNNNN.pose.txt       4x4 camera-to-world (OpenCV axes, metres)

Frames along one camera loop are dealt to the sequences in turn (frame i to sequence i % sequences), so every
sequence covers the room like a separate recording; the last sequence is the test split. The default
640x480 with a focal length of 525 px matches 7-Scenes (the scripts pass --use_external_focal_length 525).
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules (README, Layout)

from cli_common import UserError, atomic_write_text, make_parser, run_main  # noqa: E402
from datasets.synthetic_scene import RenderingUnavailable, render_scene  # noqa: E402


def write_7scenes_scene(rendered: Path, scene_dir: Path, sequences: int) -> None:
    """Copy a render_scene() output folder into the 7-Scenes layout."""
    images = sorted((rendered / "images").glob("frame_*.png"))
    counts = [0] * sequences
    for index, image in enumerate(images):
        seq = index % sequences
        folder = scene_dir / f"seq-{seq + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"frame-{counts[seq]:06d}"
        counts[seq] += 1
        shutil.copyfile(image, folder / f"{stem}.color.png")
        shutil.copyfile(rendered / "poses" / f"{image.stem}.pose.txt", folder / f"{stem}.pose.txt")
        shutil.copyfile(rendered / "depth" / f"{image.stem}.depth.png", folder / f"{stem}.depth.png")
    train = "".join(f"sequence{i + 1}\n" for i in range(sequences - 1))
    atomic_write_text(scene_dir / "TrainSplit.txt", train)
    atomic_write_text(scene_dir / "TestSplit.txt", f"sequence{sequences}\n")


def make_scene(scene_dir: Path, frames: int, sequences: int, width: int, height: int, focal: float,
               seed: int, trajectory: str = "orbit", yaw_step_deg: float = 6.0) -> Path:
    with tempfile.TemporaryDirectory(prefix="render_", dir=scene_dir.parent) as tmp:
        rendered = render_scene(Path(tmp), num_images=frames, width=width, height=height, focal=focal, seed=seed,
                                progress=True, trajectory=trajectory, yaw_step_deg=yaw_step_deg)
        write_7scenes_scene(rendered, scene_dir, sequences)
    return scene_dir


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("output", type=Path, help="dataset root (e.g. datasets/7scenes_synthetic)")
    parser.add_argument("--scenes", nargs="+", default=["synthetic"], help="scene names (one render each)")
    parser.add_argument("--frames", type=int, default=16, help="frames per scene")
    parser.add_argument("--sequences", type=int, default=2, help="sequences per scene (the last one is the test set)")
    parser.add_argument("--width", type=int, default=640, help="image width")
    parser.add_argument("--height", type=int, default=480, help="image height")
    parser.add_argument("--focal", type=float, default=None, help="focal length in pixels (default 525 * width / 640)")
    parser.add_argument("--trajectory", choices=["orbit", "outward"], default="orbit",
                        help="camera path of datasets/synthetic_scene.py (orbit: around the pedestal)")
    parser.add_argument("--yaw_step", type=float, default=6.0, help="heading change per frame in degrees")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first scene (the next ones count up)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.sequences < 2 or args.frames < args.sequences:
        raise UserError("need at least 2 sequences and at least one frame per sequence")
    focal = 525.0 * args.width / 640 if args.focal is None else args.focal
    args.output.mkdir(parents=True, exist_ok=True)
    for offset, scene in enumerate(args.scenes):
        scene_dir = args.output / scene
        if scene_dir.exists():
            raise UserError(f"{scene_dir} exists already (delete it to render again)")
        try:
            make_scene(scene_dir, args.frames, args.sequences, args.width, args.height, focal, args.seed + offset,
                       args.trajectory, args.yaw_step)
        except RenderingUnavailable as error:
            raise UserError(f"offscreen rendering unavailable: {error}") from None
        print(f"Wrote {scene_dir} ({args.frames} frames, {args.sequences} sequences, focal {focal:g} px)")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
