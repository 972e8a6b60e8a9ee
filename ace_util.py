"""Facts and small helpers shared by the library and the scripts, in one place and without torch (so that the
command-line scripts can parse and check their flags before the slow imports): user errors, atomic file
writes, typed configs from parsed flags, the network's output stride, the confidence rules, the encoder table,
the choices of the pose refiner and of the loss, and the messages of invalid prior combinations."""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent


class UserError(Exception):
    """Bad input from the user: reported as one line, without a traceback."""


def script_command(script: str | Path, arguments=()) -> list[str]:
    """The command line that runs one of the project's scripts (path relative to the repository root) with this
    Python: for ace_zero.py's stages, the tests, the demo and the benchmarks."""
    return [sys.executable, str(REPO_ROOT / script), *[str(a) for a in arguments]]


def config_from_args(cls: type, args: Any, **given: Any) -> Any:
    """The config dataclass `cls` with each field taken from the flag of the same name, except those `given`
    (nested configs, renamed values). The library takes such configs; only the scripts see the parsed flags."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.name not in given}, **given)


# ----------------------------------------------------------------------------------------------------------------
# Files

def atomic_write(path: Path | str, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write through a temporary file in the same folder and rename it: readers never see half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text))


def atomic_torch_save(obj: Any, path: Path | str) -> None:
    import torch
    atomic_write(path, lambda handle: torch.save(obj, handle), binary=True)


# ----------------------------------------------------------------------------------------------------------------
# Progress bars

LOG_PROGRESS_FRACTION = 0.1   # without a terminal, a progress line per 10 % of the total ...
LOG_PROGRESS_SECONDS = 30.0   # ... or per 30 s, whichever comes first


def progress_bar(iterable=None, **kwargs):
    """tqdm's live bar on a terminal; written to a file or a pipe (a log), a plain line at most every 10 % of the
    total or every 30 s instead of one per update. Takes tqdm's arguments (total, desc, unit, unit_scale, initial,
    leave, disable, file) and offers update(), set_postfix(), close() and iteration, as tqdm."""
    stream = kwargs.get("file") or sys.stderr
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        terminal = False
    if terminal:
        from tqdm import tqdm
        return tqdm(iterable, **kwargs)
    return LogProgress(iterable, **kwargs)


class LogProgress:
    """The progress_bar of a log: one complete line (tqdm's format, ASCII bar) per LOG_PROGRESS_FRACTION of the
    total or per LOG_PROGRESS_SECONDS, and a last one at close() for what came after the last line."""

    def __init__(self, iterable=None, total: float | None = None, desc: str | None = None, unit: str = "it",
                 unit_scale: bool = False, initial: float = 0, disable: bool = False, file=None, **_tqdm_only):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit, self.unit_scale = iterable, total, desc, unit, unit_scale
        self.disable, self.file = disable, file
        self.n = self.printed_n = initial
        self.start = self.printed_t = time.monotonic()
        self.postfix = ""
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        step = self.total * LOG_PROGRESS_FRACTION if self.total else None
        if (step is not None and self.n - self.printed_n >= step) or now - self.printed_t >= LOG_PROGRESS_SECONDS:
            self._print(now)

    def close(self) -> None:
        if not self.closed and self.n != self.printed_n:
            self._print(time.monotonic())
        self.closed = True

    def _print(self, now: float) -> None:
        self.printed_n, self.printed_t = self.n, now
        if self.disable:
            return
        from tqdm import tqdm
        line = tqdm.format_meter(self.n, self.total, now - self.start, prefix=self.desc or "", ascii=True,
                                 unit=self.unit, unit_scale=self.unit_scale, postfix=self.postfix or None)
        print(line, file=self.file or sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Network geometry and confidence

OUTPUT_SUBSAMPLE = 8  # output stride of every encoder (head, RANSAC rely on it): a scene coordinate per 8x8 cell


def project_pinhole(in_camera, focal, centre):
    """Pinhole projection of camera-space points (... x 3, OpenCV axes: z forward) to pixels (... x 2), with the
    principal point `centre` (ACE0 assumes the image centre); points must lie in front (z > 0). `focal`: one
    focal length or (fx, fy); it and `centre` broadcast against the points (per-point cameras allowed)."""
    return focal * in_camera[..., :2] / in_camera[..., 2:] + centre


def is_registered(confidence, threshold: float):
    """An image counts as registered when its RANSAC inlier count exceeds the threshold (strictly, as the
    original's registration summary). Works on numbers and numpy arrays."""
    return confidence > threshold


def in_mapping_set(confidence, threshold: float):
    """An image of an ACE pose file is used for mapping (and exported) when its confidence is at least the
    threshold (the original's --ace_pose_file_conf_threshold). Works on numbers and numpy arrays."""
    return confidence >= threshold


# ----------------------------------------------------------------------------------------------------------------
# Encoders: one row per encoder, read by the network, the seed and the scripts

ACE_ENCODER_ID = "ace"
XFEAT_ENCODER_ID = "xfeat"


@dataclass(frozen=True)
class EncoderSpec:
    """What the rest of the program needs to know about an encoder.

    XFeat's convolutions pad with zeros, and its deep levels (stride 32, receptive field of several hundred
    pixels) read the image border through that padding: the features then encode where in the frame a cell
    lies (a linear probe recovers the position with R^2 ~0.9). A head can fit the reprojection loss from that
    position code alone, for any poses, so the loss no longer separates true poses from collapsed ones.
    `conv_padding='reflect'` pads every convolution by mirroring its input, which carries no border signal;
    `canvas` mirrors the image outwards by that many pixels first, so the interior never sees a border at all
    (the features of the added margin are cropped away)."""
    encoder_id: str
    family: str = "xfeat"                 # xfeat (built in, offline) or ace (an official encoder file)
    normalisation: tuple[float, float] | None = None  # (mean, std) applied to the grey image in [0, 1]
    has_detector: bool = True             # sparse sub-pixel keypoints (XFeat's detector) for two-view matching
    # Seed mapping flags of ace_zero.py left unset by the user (None: the original's seed mapping). XFeat was never
    # trained for scene coordinate regression: a head mapped from one view generalises to other views only when
    # it has seen the seed shifted, re-rendered from nearby viewpoints and in many views (README, "Seeds with the
    # XFeat encoder"). Measured on the demo orbit (seed with true depth, 3000 iterations), registration error of
    # the views 6-42 deg from the seed: 0.6-9.5 deg with all three, 1.8-42 deg with the original's 10 plain
    # views; 20 deg viewpoints and a 0.5 shift were worse.
    seed_augmentation: dict[str, float] | None = field(default_factory=lambda: {
        "seed_aug_shift": 0.25, "seed_aug_viewpoint": 10.0, "seed_dataset_passes": 100})
    conv_padding: str = "zeros"
    canvas: int = 0
    levels: str = "fused"  # fused: XFeat's descriptors; fine: the stride-8 level alone (receptive field ~53 px)


ACE_ENCODER = EncoderSpec(ACE_ENCODER_ID, family="ace", normalisation=(0.4, 0.25), has_detector=False,
                          seed_augmentation=None)

XFEAT_VARIANTS = {spec.encoder_id: spec for spec in (
    EncoderSpec(XFEAT_ENCODER_ID),  # as published: zero padding, the features encode position
    EncoderSpec("xfeat-canvas64", canvas=64),
    EncoderSpec("xfeat-canvas128", canvas=128),
    EncoderSpec("xfeat-reflect", conv_padding="reflect"),
    EncoderSpec("xfeat-reflect-canvas32", conv_padding="reflect", canvas=32),
    EncoderSpec("xfeat-fine", levels="fine"),
    EncoderSpec("xfeat-fine-reflect", conv_padding="reflect", levels="fine"),
)}

# The built-in encoder: XFeat with mirror padding, whose features follow the content instead of the frame (probe
# R^2 0.57 against 0.86, 2 % of cells following the frame against 28 %). Since the gate's spread test (stop 45) it
# reconstructs temple 0.1-0.2 deg better than XFeat as published in three of three draws and fox as well (README,
# "Encoders"); `xfeat`, as published, stays selectable, and keypoints always come from the published network.
DEFAULT_ENCODER = "xfeat-reflect"
# Short side of the network input image (the original's): heads are mapped and registered at it by default.
DEFAULT_IMAGE_RESOLUTION = 480


# A learned adapter on a frozen XFeat variant, written by train_encoder.py. Its file is a torch archive whose
# pickle carries this format string, so the row is found without importing torch (fast --help, ace_zero).
ADAPTER_FORMAT = "xfeat-adapter-v1"
XFEAT_ADAPTER = EncoderSpec("xfeat-adapter", family="xfeat-adapter")


def is_adapter_file(path: str | Path) -> bool:
    """True for an encoder file written by train_encoder.py (checked without torch)."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
            return bool(pickles) and ADAPTER_FORMAT.encode() in archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile):
        return False


def encoder_spec(encoder_path: str | Path) -> EncoderSpec:
    """The row of --encoder_path: a built-in XFeat variant by name, a train_encoder.py file, else (a file) the
    official ACE encoder."""
    name = str(encoder_path).lower()
    if name in XFEAT_VARIANTS:
        return XFEAT_VARIANTS[name]
    return XFEAT_ADAPTER if is_adapter_file(encoder_path) else ACE_ENCODER


# ----------------------------------------------------------------------------------------------------------------
# Choices and messages shared by the library and the flags

POSE_REFINEMENT_CHOICES = ("none", "naive", "mlp")
ORTHO_CHOICES = ("gram-schmidt", "procrustes")
GAUGE_CHOICES = ("none", "centres")
UPDATE_CHOICES = ("additive", "rotation")
MLP_INPUT_CHOICES = ("pose", "standardised")

LOSS_TYPES = ("l1", "l1+sqrt", "l1+log", "tanh", "dyntanh")  # robust reprojection losses (ace_loss)
LR_SCHEDULES = ("circle", "constant", "1cyclepoly")
LOSS_STRUCTURES = ("dsac*", "probabilistic")
PRIOR_TYPES = ("none", "rgbd_laplace_nll", "laplace_nll", "laplace_wd", "diffusion")

AUTO_PRIOR_FLAG = "--prior_loss_location/--prior_loss_bandwidth auto"  # named in errors about the seed's depth
DSAC_ONLY_DIFFUSION = "Only diffusion prior_loss_type is supported with the DSAC* style loss."
PROBABILISTIC_NEEDS_PRIOR = ("Probabilistic loss needs a prior_loss_type. Using none will almost certainly "
                             "degenerate.")
RGBD_NEEDS_DEPTH = "--prior_loss_type rgbd_laplace_nll needs depth maps (--depth_files)"
DIFFUSION_NEEDS_MODEL = ("--prior_loss_type diffusion needs --prior_diffusion_model_path: a point-cloud diffusion "
                         "checkpoint (scr-priors' published diffusion_prior.pt cannot be downloaded here, and none "
                         "ships with this project)")


def float_or_auto(value: Any) -> float | str:
    """A number, or 'auto' (resolved later from the seed's depth): the flags' type and the loss config's reading."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        import argparse
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got '{value}'") from None
