"""Helpers of the dataset setup scripts: the licence prompt, resumable downloads, archives unpacked into a
temporary folder that is renamed only when complete, and small pose/focal file writers."""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from ace_util import progress_bar
from cli_common import UserError, atomic_write_text

CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------------------------------
# Licence

def confirm_license(lines: list[str], accept: bool) -> None:
    """A boxed banner, then "yes"/"y" on stdin (or --accept_license). Refusing is an error (exit code 2),
    unlike the original's exit 0, so that a calling script can tell it from success."""
    width = max(len(line) for line in lines) + 4
    print("#" * width)
    for line in lines:
        print(f"# {line.ljust(width - 4)} #")
    print("#" * width)
    if accept:
        print("Licence accepted with --accept_license.")
        return
    try:
        answer = input('Please confirm with "yes" or abort. ')
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("yes", "y"):
        raise UserError(f"Your response: {answer.strip()}. Aborting (pass --accept_license to accept "
                        f"non-interactively).")


# ----------------------------------------------------------------------------------------------------------------
# Downloads

def _open(url: str, offset: int):
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        return urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # range beyond the end: the partial file is already complete
            return None
        raise UserError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise UserError(f"download of {url} failed: {getattr(error, 'reason', error)}") from None


def _total_size(response, offset: int) -> int | None:
    """Full size of the file from Content-Range (a resumed download) or Content-Length."""
    content_range = response.headers.get("Content-Range")
    if content_range and "/" in content_range and not content_range.endswith("*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return None if length is None else int(length) + offset


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, target: Path, expected_size: int | None = None, sha256: str | None = None) -> Path:
    """Download `url` to `target` through `target.part`, resuming a partial download; the size (from the
    server or `expected_size`) and, where known, the checksum are checked before the rename."""
    target = Path(target)
    if target.is_file():
        print(f"Using existing archive {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    offset = partial.stat().st_size if partial.is_file() else 0
    response = _open(url, offset)
    if response is not None:
        with response:
            if offset and response.status != 206:  # the server ignored the range: start again
                offset = 0
            total = _total_size(response, offset) or expected_size
            if offset:
                print(f"Resuming {target.name} at {offset} bytes")
            with open(partial, "ab" if offset else "wb") as handle, \
                    progress_bar(total=total, initial=offset, unit="B", unit_scale=True, desc=target.name) as bar:
                try:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        handle.write(block)
                        bar.update(len(block))
                except OSError as error:
                    raise UserError(f"download of {url} interrupted ({error}); run again to resume") from None
    _check_download(partial, url, expected_size if response is None else (total or expected_size), sha256)
    partial.rename(target)
    return target


def _check_download(partial: Path, url: str, size: int | None, sha256: str | None) -> None:
    got = partial.stat().st_size
    if size is not None and got != size:
        raise UserError(f"download of {url} incomplete: {got} of {size} bytes in {partial}; run again to resume")
    if sha256 is not None and sha256_of(partial) != sha256:
        partial.unlink()
        raise UserError(f"download of {url}: checksum mismatch (the file was deleted; run again)")


# ----------------------------------------------------------------------------------------------------------------
# Archives and staged folders

def fresh_folder(path: Path) -> Path:
    """An empty folder at `path` (a stale one from an interrupted run is removed first)."""
    if path.exists():
        print(f"Temporary: {path} exists. Cleaning it.")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def extract(archive: Path, destination: Path, prefix: str | None = None) -> None:
    """Unpack a .zip or .tar(.gz) archive (only the members under `prefix` when given); a corrupt one is a
    one-line error naming it."""
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as handle:
                names = [n for n in handle.namelist() if prefix is None or n.startswith(prefix)]
                handle.extractall(destination, names)
        else:
            with tarfile.open(archive) as handle:
                members = [m for m in handle.getmembers() if prefix is None or m.name.startswith(prefix)]
                handle.extractall(destination, members, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as error:
        raise UserError(f"corrupt archive {archive}: {error} (delete it and run again)") from None


def staged(target: Path, build: Callable[[Path], None]) -> None:
    """Build `target` in `<target>.tmp` and rename it at the end; on failure the tmp folder is removed, so an
    interruption or a corrupt archive leaves nothing half-made under the final name."""
    tmp = fresh_folder(target.with_name(target.name + ".tmp"))
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(target)


def single_top_folder(folder: Path) -> Path:
    """The folder an archive unpacked into when it holds one top-level folder, else `folder` itself."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def select_scenes(requested: list[str] | None, available: list[str]) -> list[str]:
    if not requested:
        return list(available)
    unknown = [s for s in requested if s not in available]
    if unknown:
        raise UserError(f"unknown scene(s) {' '.join(unknown)}; choose from {' '.join(available)}")
    return [s for s in available if s in requested]


# ----------------------------------------------------------------------------------------------------------------
# Small text files

def pose_text(cam_to_world: np.ndarray) -> str:
    return "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in cam_to_world)


def write_pose(path: Path, cam_to_world: np.ndarray) -> None:
    atomic_write_text(path, pose_text(cam_to_world))


def write_focal(path: Path, focal: float) -> None:
    atomic_write_text(path, f"{focal}\n")


def relative_symlink(link: Path, target: Path) -> None:
    link.symlink_to(os.path.relpath(target.resolve(), link.parent.resolve()))
