"""Paper-experiment tooling, offline: the dataset setup scripts on miniature archives in the real layouts, the
split scripts, the Nerfstudio benchmark (converter and ns-train / ns-eval command lines) and every
scripts/reconstruct_*.sh on tiny datasets (stand-in executables or dry runs)."""
from __future__ import annotations

import http.server
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ace_util import script_command
from conftest import REPO

FOCAL, SIZE, FRAMES = 131.25, (160, 120), 8

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def script(path: str, *args, cwd: Path, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(script_command(path, args), cwd=cwd, input=stdin,
                          capture_output=True, text=True, env=env or ENV, timeout=120)


def tree(folder: Path) -> dict[str, bytes]:
    """Relative path -> content of every file below `folder` (symlinks followed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> Path:
    from datasets.synthetic_scene import RenderingUnavailable, render_scene
    try:
        return render_scene(tmp_path_factory.mktemp("paper_render"), num_images=FRAMES, width=SIZE[0],
                            height=SIZE[1], focal=FOCAL, seed=1, trajectory="orbit", yaw_step_deg=6.0)
    except RenderingUnavailable as error:
        pytest.skip(f"offscreen rendering unavailable: {error}")


def gt_poses(rendered: Path) -> list[np.ndarray]:
    return [np.loadtxt(p) for p in sorted((rendered / "poses").glob("*.pose.txt"))]


def jpeg_bytes(png: Path, size: tuple[int, int] | None = None) -> bytes:
    image = Image.open(png).convert("RGB")
    if size is not None:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# A local HTTP server with byte ranges (resumed downloads); bounded: it stops with the test session.

class _RangeHandler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    ranges: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        data = self.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start = 0
        if "Range" in self.headers:
            self.ranges.append(self.headers["Range"])
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _RangeHandler
    server.shutdown()
    server.server_close()


# ----------------------------------------------------------------------------------------------------------------
# 7-Scenes

def seven_scenes_zip(scene_dir: Path, name: str) -> bytes:
    """The Microsoft layout: <scene>/{TrainSplit,TestSplit}.txt and one nested zip per sequence."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as outer:
        for split in ("TrainSplit.txt", "TestSplit.txt"):
            outer.write(scene_dir / split, f"{name}/{split}")
        for seq in sorted(p for p in scene_dir.iterdir() if p.is_dir()):
            inner = io.BytesIO()
            with zipfile.ZipFile(inner, "w") as handle:
                for frame in sorted(seq.iterdir()):
                    handle.write(frame, f"{seq.name}/{frame.name}")
            outer.writestr(f"{name}/{seq.name}.zip", inner.getvalue())
    return buffer.getvalue()


@pytest.fixture(scope="session")
def seven_scenes(rendered, tmp_path_factory, http_server):
    """setup_7scenes.py run in a work folder: chess from a placed archive, fire downloaded (resumed)."""
    from datasets.make_synthetic_7scenes import write_7scenes_scene
    source = tmp_path_factory.mktemp("7scenes_source") / "scene"
    write_7scenes_scene(rendered, source, 2)
    work = tmp_path_factory.mktemp("7scenes_work")
    (work / "7scenes").mkdir()
    (work / "7scenes" / "chess.zip").write_bytes(seven_scenes_zip(source, "chess"))
    url, handler = http_server
    fire = seven_scenes_zip(source, "fire")
    handler.files["fire.zip"] = fire
    (work / "7scenes" / "fire.zip.part").write_bytes(fire[:1000])  # an interrupted download
    result = script("datasets/setup_7scenes.py", "--accept_license", "--scenes", "chess", "fire", "--mirror", url,
                    "--setup_ace_structure", cwd=work)
    return work, source, result, list(handler.ranges)


def test_setup_7scenes(seven_scenes):
    work, source, result, ranges = seven_scenes
    assert result.returncode == 0, result.stderr
    assert "bytes=1000-" in ranges
    for scene in ("chess", "fire"):
        assert tree(work / "7scenes" / scene) == tree(source)
        assert not (work / "7scenes" / f"{scene}.zip").exists()
        assert not (work / "7scenes" / f"{scene}.tmp").exists()
    assert "ACE dataset format" not in result.stdout
    ace = work / "7scenes_ace" / "kf_7scenes_chess"
    train_rgb = sorted((ace / "train" / "rgb").iterdir())
    assert [p.name for p in train_rgb] == [f"seq-01-frame-{i:06d}.color.png" for i in range(4)]
    assert all(p.is_symlink() and p.resolve() == (work / "7scenes/chess/seq-01" / p.name[7:]).resolve()
               for p in train_rgb)
    test_pose = ace / "test" / "poses" / "seq-02-frame-000001.pose.txt"
    np.testing.assert_allclose(np.loadtxt(test_pose), np.loadtxt(source / "seq-02" / "frame-000001.pose.txt"))
    assert float((ace / "test" / "calibration" / "seq-02-frame-000001.calibration.txt").read_text()) == 525.0
    again = script("datasets/setup_7scenes.py", "--accept_license", "--scenes", "chess", cwd=work)
    assert again.returncode == 0 and "Found data of scene chess already" in again.stdout


def test_setup_7scenes_pgt(seven_scenes, rendered):
    work, source, _, _ = seven_scenes
    from dataset_io import invert_pose, pose_to_quat_t
    pgt = work / "visloc_pseudo_gt_limitations" / "pgt" / "sfm" / "7scenes"
    pgt.mkdir(parents=True)
    for split, seq in (("train", "seq-01"), ("test", "seq-02")):
        lines = []
        for pose_file in sorted((source / seq).glob("*.pose.txt")):
            quat, trans = pose_to_quat_t(invert_pose(np.loadtxt(pose_file)))
            name = f"{seq}/{pose_file.name.replace('.pose.txt', '.color.png')}"
            lines.append(" ".join([name, *map(str, quat), *map(str, trans), "530.5"]))
        (pgt / f"chess_{split}.txt").write_text("\n".join(lines) + "\n")
    result = script("datasets/setup_7scenes.py", "--accept_license", "--scenes", "chess", "--setup_ace_structure",
                    "--poses", "pgt", cwd=work)
    assert result.returncode == 0, result.stderr
    ace = work / "7scenes_ace" / "pgt_7scenes_chess"
    np.testing.assert_allclose(np.loadtxt(ace / "train/poses/seq-01-frame-000002.pose.txt"),
                               np.loadtxt(source / "seq-01/frame-000002.pose.txt"), atol=1e-9)
    assert float((ace / "train/calibration/seq-01-frame-000002.calibration.txt").read_text()) == 530.5
    refused = script("datasets/setup_7scenes.py", "--accept_license", "--setup_ace_structure", "--depth",
                     "rendered", cwd=work)
    assert refused.returncode == 2 and "not implemented" in refused.stderr


def test_setup_7scenes_corrupt_archive_and_licence(tmp_path):
    (tmp_path / "7scenes").mkdir()
    (tmp_path / "7scenes" / "heads.zip").write_bytes(b"this is not a zip archive")
    result = script("datasets/setup_7scenes.py", "--accept_license", "--scenes", "heads", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "heads.zip" in result.stderr
    assert not (tmp_path / "7scenes" / "heads").exists() and not (tmp_path / "7scenes" / "heads.tmp").exists()
    refused = script("datasets/setup_7scenes.py", "--scenes", "heads", cwd=tmp_path, stdin="no\n")
    assert refused.returncode == 2 and "Your response: no. Aborting" in refused.stderr
    assert 'Please confirm with "yes" or abort.' in refused.stdout


def test_create_splits_7scenes(seven_scenes):
    work = seven_scenes[0]
    result = script("scripts/create_splits_7scenes.py", "7scenes", "splits", cwd=work)
    assert result.returncode == 0, result.stderr
    split = json.loads((work / "splits" / "7scenes_chess.json").read_text())
    assert split["train_filenames"] == [f"7scenes/chess/seq-01/frame-{i:06d}.color.png" for i in range(4)]
    assert split["test_filenames"] == [f"7scenes/chess/seq-02/frame-{i:06d}.color.png" for i in range(4)]


# ----------------------------------------------------------------------------------------------------------------
# Mip-NeRF 360

def colmap_images(rendered: Path, names: list[str], skip: set[int] = frozenset()):
    from datasets.colmap_model import Image as ColmapImage
    from dataset_io import invert_pose, pose_to_quat_t
    images = []
    for index, (pose, name) in enumerate(zip(gt_poses(rendered), names)):
        if index not in skip:
            quat, trans = pose_to_quat_t(invert_pose(pose))
            images.append(ColmapImage(index + 1, quat, trans, 1, name))
    return images


def mip360_scene(rendered: Path, root: Path) -> None:
    from datasets.colmap_model import Camera, write_binary_model
    pngs = sorted((rendered / "images").glob("*.png"))
    names = [f"DSC{i:05d}.JPG" for i in range(len(pngs))]
    for folder, factor in (("images", 1), ("images_2", 2), ("images_4", 4), ("images_8", 8)):
        (root / folder).mkdir(parents=True)
        for png, name in zip(pngs, names):
            (root / folder / name).write_bytes(jpeg_bytes(png, (SIZE[0] // factor, SIZE[1] // factor)))
    camera = Camera(1, "PINHOLE", SIZE[0], SIZE[1], np.array([FOCAL, FOCAL, SIZE[0] / 2, SIZE[1] / 2]))
    write_binary_model(root / "sparse" / "0", [camera], colmap_images(rendered, names))
    bounds = np.concatenate([np.stack([np.concatenate([p[:3, :4], [[SIZE[1]], [SIZE[0]], [FOCAL]]], 1).ravel()
                                       for p in gt_poses(rendered)]), np.ones((len(pngs), 2))], 1)
    np.save(root / "poses_bounds.npy", bounds)


@pytest.fixture(scope="session")
def mip360(rendered, tmp_path_factory):
    source = tmp_path_factory.mktemp("mip360_source")
    mip360_scene(rendered, source / "bonsai")
    (source / "garden").mkdir()
    (source / "garden" / "poses_bounds.npy").write_bytes(b"x")
    work = tmp_path_factory.mktemp("mip360_work")
    with zipfile.ZipFile(work / "360_v2.zip", "w") as handle:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                handle.write(path, str(path.relative_to(source)))
    result = script("datasets/setup_mip360.py", "--accept_license", "--scenes", "bonsai", "--setup_ace_structure",
                    cwd=work)
    return work, source, result


def test_setup_mip360(mip360, rendered):
    work, source, result = mip360
    assert result.returncode == 0, result.stderr
    assert tree(work / "mip360" / "bonsai") == tree(source / "bonsai")
    assert not (work / "mip360" / "garden").exists() and not (work / "mip360" / "bonsai.tmp").exists()
    ace = work / "mip360_ace" / "bonsai"
    # COLMAP ids 1..8: id 8 is the only one divisible by 8
    assert sorted(p.name for p in (ace / "test" / "rgb").iterdir()) == ["000000.jpg"]
    assert (ace / "test" / "rgb" / "000000.jpg").resolve() == (work / "mip360/bonsai/images_4/DSC00007.JPG").resolve()
    assert len(list((ace / "train" / "rgb").iterdir())) == 7
    np.testing.assert_allclose(np.loadtxt(ace / "train/poses/000002.txt"), gt_poses(rendered)[2], atol=1e-9)
    expected_k = np.array([[FOCAL / 4, 0, SIZE[0] / 8], [0, FOCAL / 4, SIZE[1] / 8], [0, 0, 1]])
    np.testing.assert_allclose(np.loadtxt(ace / "train/calibration/000000.txt"), expected_k)


def test_create_splits_mip360(mip360):
    work = mip360[0]
    result = script("scripts/create_splits_mip360.py", "mip360", "splits", cwd=work)
    assert result.returncode == 0, result.stderr
    split = json.loads((work / "splits" / "mip360_bonsai.json").read_text())
    assert split["test_filenames"] == ["mip360/bonsai/images_4/DSC00007.JPG"]
    assert split["train_filenames"] == [f"mip360/bonsai/images_4/DSC{i:05d}.JPG" for i in range(7)]
    assert not (work / "splits" / "mip360_garden.json").exists()  # no images_4 there


# ----------------------------------------------------------------------------------------------------------------
# Tanks and Temples

def mp4_bytes(pngs: list[Path], path: Path) -> bytes:
    import imageio_ffmpeg
    writer = imageio_ffmpeg.write_frames(str(path), SIZE, fps=10, codec="libx264", macro_block_size=8,
                                         ffmpeg_log_level="error")
    writer.send(None)
    for png in pngs:
        writer.send(np.ascontiguousarray(np.asarray(Image.open(png).convert("RGB"))).tobytes())
    writer.close()
    return path.read_bytes()


@pytest.fixture(scope="session")
def tanks(rendered, tmp_path_factory):
    from datasets.colmap_model import Camera, write_binary_model
    pngs = sorted((rendered / "images").glob("*.png"))
    names = [f"{i + 1:06d}.jpg" for i in range(len(pngs))]
    work = tmp_path_factory.mktemp("t2_work")
    (work / "t2").mkdir()
    with zipfile.ZipFile(work / "t2" / "training.zip", "w") as handle:
        for png, name in zip(pngs, names):
            handle.writestr(f"Barn/{name}", jpeg_bytes(png))
    with zipfile.ZipFile(work / "t2" / "training_videos.zip", "w") as handle:
        handle.writestr("videos/Barn.mp4", mp4_bytes(pngs, work / "Barn.mp4"))
    model = work / "model"
    camera = Camera(1, "PINHOLE", SIZE[0], SIZE[1], np.array([131.0, 132.0, SIZE[0] / 2, SIZE[1] / 2]))
    write_binary_model(model / "training__Barn" / "0", [camera], colmap_images(rendered, names, skip={2}))
    (work / "t2_colmap").mkdir()
    with tarfile.open(work / "t2_colmap" / "colmap_raw.tar.gz", "w:gz") as handle:
        handle.add(model / "training__Barn", "training__Barn")
    result = script("datasets/setup_t2.py", "--accept_license", "--with-colmap", cwd=work)
    return work, result


def test_setup_t2(tanks, rendered):
    work, result = tanks
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(work / "t2" / "training.zip") as handle:
        assert tree(work / "t2" / "training" / "Barn") == {n[5:]: handle.read(n) for n in handle.namelist()}
    frames = sorted((work / "t2" / "training_videos" / "Barn").iterdir())
    assert [p.name for p in frames] == [f"{i + 1:06d}.jpg" for i in range(FRAMES)]
    assert Image.open(frames[0]).size == (720, 540)
    assert (work / "t2" / "training_videos" / "videos" / "Barn.mp4").is_file()
    colmap = work / "t2_colmap" / "training" / "Barn"
    assert float((colmap / "focal_length.txt").read_text()) == 131.5
    assert (colmap / "000001.jpg").is_symlink()
    assert (colmap / "000001.jpg").read_bytes() == (work / "t2/training/Barn/000001.jpg").read_bytes()
    np.testing.assert_allclose(np.loadtxt(colmap / "000002_pose.txt"), gt_poses(rendered)[1], atol=1e-9)
    assert np.isinf(np.loadtxt(colmap / "000003_pose.txt")).all()  # not in the COLMAP model
    assert "Available splits: ['training', 'training_videos']" in result.stdout
    assert "intermediate.zip not found" in result.stdout


# ----------------------------------------------------------------------------------------------------------------
# Benchmark: converter and Nerfstudio command lines

def ace_pose_file(path: Path, images: list[str], poses: list[np.ndarray], confidences: list[int]) -> Path:
    from dataset_io import PoseEntry, invert_pose, write_ace_pose_file
    write_ace_pose_file(path, [PoseEntry(i, invert_pose(p), FOCAL, c) for i, p, c in zip(images, poses, confidences)])
    return path


def test_benchmark_converter(seven_scenes, tmp_path):
    work, source = seven_scenes[0], seven_scenes[1]
    images = sorted(str(p) for p in (work / "7scenes" / "chess").glob("seq-*/*.color.png"))
    poses = [np.loadtxt(i.replace(".color.png", ".pose.txt")) for i in images]
    confidences = [2000] * len(images)
    confidences[1] = 500  # an unreliable training frame
    pose_file = ace_pose_file(tmp_path / "poses_final.txt", images, poses, confidences)
    (tmp_path / "pc_final.ply").write_text("ply\n")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train_filenames": images[:4], "test_filenames": images[4:]}))
    glob_pattern = str(work / "7scenes" / "chess" / "seq-*" / "*.color.png")
    out = tmp_path / "bench"
    result = subprocess.run([sys.executable, "-m", "benchmarks.benchmark_poses", "--pose_file", pose_file,
                             "--output_dir", out, "--images_glob_pattern", glob_pattern, "--split_json", split,
                             "--no_run_nerfstudio"], cwd=REPO, capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr
    doc = json.loads((out / "nerf_data" / "transforms.json").read_text())
    frames = {f["file_path"]: f for f in doc["frames"]}
    assert sorted(frames) == images  # factor 1: the originals, absolute paths
    for image, pose in zip(images, poses):
        np.testing.assert_allclose(frames[image]["transform_matrix"], pose @ np.diag([1, -1, -1, 1]), atol=1e-9)
        assert frames[image]["fl_x"] == FOCAL and (frames[image]["w"], frames[image]["h"]) == SIZE
    assert doc["train_filenames"] == [images[0], *images[2:4]] and doc["test_filenames"] == images[4:]
    assert doc["val_filenames"] == [] and doc["ply_file_path"] == "pc_final.ply"
    assert (out / "nerf_data" / "pc_final.ply").is_file()
    # default split (every 8th sorted frame from index 4) and downscaling by 2 for a longest side of 100
    out2 = tmp_path / "bench2"
    result = subprocess.run([sys.executable, "-m", "benchmarks.benchmark_poses", "--pose_file", pose_file,
                             "--output_dir", out2, "--images_glob_pattern", glob_pattern, "--max_resolution", "100",
                             "--no_run_nerfstudio"], cwd=REPO, capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr
    doc = json.loads((out2 / "nerf_data" / "transforms.json").read_text())
    flat = images[4].replace("/", "_")
    assert [Path(p).name for p in doc["test_filenames"]] == [flat]
    assert Image.open(out2 / "nerf_data" / "images_2" / flat).size == (80, 60)


def fake_nerfstudio(bin_dir: Path, log: Path) -> None:
    """ns-train / ns-eval that record their command line and write what Nerfstudio would."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    train = f"""#!/bin/sh
echo "ns-train $*" >> {log}
while [ $# -gt 0 ]; do case "$1" in --output-dir) out="$2";; --method-name) m="$2";; esac; shift; done
mkdir -p "$out/nerf_for_eval/$m/run" && touch "$out/nerf_for_eval/$m/run/config.yml"
"""
    evaluate = f"""#!/bin/sh
echo "ns-eval $*" >> {log}
while [ $# -gt 0 ]; do case "$1" in --output-path) out="$2";; esac; shift; done
echo '{{"results": {{"psnr": 25.5, "ssim": 0.8, "lpips": 0.2}}}}' > "$out"
"""
    for name, text in (("ns-train", train), ("ns-eval", evaluate)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def test_benchmark_runs_nerfstudio(seven_scenes, tmp_path):
    work = seven_scenes[0]
    images = sorted(str(p) for p in (work / "7scenes" / "chess").glob("seq-*/*.color.png"))
    pose_file = ace_pose_file(tmp_path / "poses_final.txt", images,
                              [np.loadtxt(i.replace(".color.png", ".pose.txt")) for i in images], [2000] * 8)
    log = tmp_path / "ns.log"
    fake_nerfstudio(tmp_path / "bin", log)
    command = [sys.executable, "-m", "benchmarks.benchmark_poses", "--pose_file", pose_file, "--output_dir",
               tmp_path / "bench" / "chess", "--images_glob_pattern", str(work / "7scenes/chess/seq-*/*.color.png"),
               "--method", "splatfacto"]
    (tmp_path / "bench").mkdir()
    missing = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                             env={**ENV, "PATH": "/usr/bin:/bin"})
    assert missing.returncode == 2 and "ns-train not found" in missing.stderr
    shutil.rmtree(tmp_path / "bench" / "chess")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**ENV, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    data = tmp_path / "bench" / "chess" / "nerf_data"
    run = data / "nerf_for_eval" / "splatfacto" / "run"
    assert log.read_text().splitlines() == [
        f"ns-train splatfacto --data {data} --pipeline.model.camera-optimizer.mode off "
        f"--pipeline.datamanager.images-on-gpu True --method-name splatfacto --experiment_name nerf_for_eval "
        f"--output-dir {data} --timestamp run --viewer.quit-on-train-completion True nerfstudio-data "
        f"--downscale-factor 1",
        f"ns-eval --load-config {run}/config.yml --output-path {run}/eval.json --render-output-path {run}/renders"]
    assert f"Eval json is at {run / 'eval.json'}" in result.stdout
    shown = script("scripts/show_benchmark_results.py", tmp_path / "bench", "--method", "splatfacto", cwd=REPO)
    assert shown.stdout.splitlines()[:2] == ["Scene: psnr ssim lpips ", "chess: 25.5 0.8 0.2 "]


# ----------------------------------------------------------------------------------------------------------------
# The experiment scripts

STUBS = ("ace_zero", "train_ace", "register_mapping", "export_point_cloud")


@pytest.fixture()
def stub_env(tmp_path, rendered) -> dict:
    gt_dir = tmp_path / "gt"  # true poses by image stem, for the mip360 and T&T names
    gt_dir.mkdir()
    for index, pose in enumerate(gt_poses(rendered)):
        for stem in (f"DSC{index:05d}", f"{index + 1:06d}"):
            np.savetxt(gt_dir / f"{stem}.pose.txt", pose)
    for name in STUBS:
        shutil.copyfile(REPO / "tests" / "paper_stub_exe.py", tmp_path / f"stub_{name}.py")
    return {**ENV, "PYTHON": sys.executable, "ACE0_DEVICE": "cpu", "STUB_LOG": str(tmp_path / "calls.log"),
            "STUB_GT_DIR": str(gt_dir),
            "PATH": "/usr/bin:/bin", "RECONSTRUCTION_EXE": str(tmp_path / "stub_ace_zero.py"),
            "MAPPING_EXE": str(tmp_path / "stub_train_ace.py"), "REGISTER_EXE": str(tmp_path / "stub_register_mapping.py"),
            "EXPORT_PC_EXE": str(tmp_path / "stub_export_point_cloud.py"),
            "OUT_DIR": str(tmp_path / "rec"), "BENCHMARK_OUT_DIR": str(tmp_path / "bench"),
            "SPLIT_FOLDER": str(tmp_path / "splits")}


def run_script(name: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", f"scripts/{name}"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def calls(env: dict) -> list[list[str]]:
    return [json.loads(line) for line in Path(env["STUB_LOG"]).read_text().splitlines()]


def test_reconstruct_7scenes(seven_scenes, stub_env):
    root = seven_scenes[0] / "7scenes"
    env = {**stub_env, "DATASETS_FOLDER": str(root), "SCENES": "chess"}
    result = run_script("reconstruct_7scenes.sh", env)
    assert calls(env) == [["stub_ace_zero.py", f"{root}/chess/seq-*/*.color.png", f"{env['OUT_DIR']}/chess",
                           "--render_visualization", "False", "--use_external_focal_length", "525",
                           "--export_point_cloud", "False", "--dense_point_cloud", "False"]]
    assert Path(env["SPLIT_FOLDER"], "7scenes_chess.json").is_file()
    assert Path(env["BENCHMARK_OUT_DIR"], "chess", "nerf_data", "transforms.json").is_file()
    assert "chess: Results not found." in result.stdout
    assert "| chess | 8/8 | 100.0 |" in result.stdout  # the stand-in returned the dataset's own poses


def test_reconstruct_7scenes_warmstart(seven_scenes, stub_env, tmp_path):
    root = seven_scenes[0] / "7scenes"
    fake_nerfstudio(tmp_path / "bin", tmp_path / "ns.log")
    env = {**stub_env, "DATASETS_FOLDER": str(root), "SCENES": "fire", "BENCHMARKING_METHOD": "splatfacto",
           "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    result = run_script("reconstruct_7scenes_warmstart.sh", env)
    out = f"{env['OUT_DIR']}/fire"
    rgb = f"{root}/fire/seq-*/*.color.png"
    assert calls(env) == [
        ["stub_train_ace.py", rgb, f"{out}/iteration0.pt", "--pose_files", f"{root}/fire/seq-*/*.pose.txt",
         "--render_visualization", "False", "--use_external_focal_length", "525", "--refine_calibration", "True",
         "--pose_refinement", "mlp", "--pose_refinement_wait", "5000"],
        ["stub_register_mapping.py", rgb, f"{out}/iteration0.pt", "--render_visualization", "False",
         "--use_external_focal_length", "530.5", "--session", "iteration0"],
        ["stub_export_point_cloud.py", f"{out}/pc_final.ply", "--network", f"{out}/iteration0.pt", "--pose_file",
         f"{out}/poses_final.txt", "--convention", "opencv", "--dense_point_cloud", "true"]]
    assert "Using focal length from mapping stage: 530.5" in result.stdout
    assert Path(out, "poses_final.txt").read_text() == Path(out, "poses_iteration0.txt").read_text()
    assert "fire: 25.5 0.8 0.2 " in result.stdout and "| fire | 8/8 | 100.0 |" in result.stdout
    transforms = json.loads(Path(env["BENCHMARK_OUT_DIR"], "fire/nerf_data/transforms.json").read_text())
    assert transforms["ply_file_path"] == "pc_final.ply"


def test_reconstruct_mip360(mip360, stub_env):
    root = mip360[0] / "mip360"
    env = {**stub_env, "DATASETS_FOLDER": str(root), "SCENES": "bonsai"}
    result = run_script("reconstruct_mip360.sh", env)
    assert calls(env) == [["stub_ace_zero.py", f"{root}/bonsai/images_4/*.JPG", f"{env['OUT_DIR']}/bonsai",
                           "--render_visualization", "false", "--export_point_cloud", "False",
                           "--dense_point_cloud", "False"]]
    split = json.loads(Path(env["SPLIT_FOLDER"], "mip360_bonsai.json").read_text())
    transforms = json.loads(Path(env["BENCHMARK_OUT_DIR"], "bonsai/nerf_data/transforms.json").read_text())
    assert [Path(p).name for p in transforms["test_filenames"]] == [Path(p).name for p in split["test_filenames"]]
    assert len(list(Path(env["BENCHMARK_OUT_DIR"], "bonsai", "colmap_poses").glob("*.pose.txt"))) == FRAMES
    assert "| bonsai | 8/8 | 100.0 |" in result.stdout


def test_reconstruct_t2_training(tanks, stub_env):
    work = tanks[0]
    env = {**stub_env, "DATASETS_FOLDER": str(work / "t2/training"),
           "COLMAP_DATASETS_FOLDER": str(work / "t2_colmap/training"), "SCENES": "Barn"}
    result = run_script("reconstruct_t2_training.sh", env)
    assert calls(env)[0][3:] == ["--render_visualization", "False", "--export_point_cloud", "False",
                                 "--dense_point_cloud", "False"]
    assert "| Barn | 8/8 | 87.5 |" in result.stdout  # one image missing from the COLMAP model; against the COLMAP poses of setup_t2.py --with-colmap


def test_reconstruct_t2_training_videos(tanks, stub_env):
    work = tanks[0]
    env = {**stub_env, "DATASETS_FOLDER": str(work / "t2/training_videos"), "SCENES": "Barn"}
    result = run_script("reconstruct_t2_training_videos.sh", env)
    assert calls(env)[0][1] == f"{work}/t2/training_videos/Barn/*.jpg"
    transforms = json.loads(Path(env["BENCHMARK_OUT_DIR"], "Barn/nerf_data/transforms.json").read_text())
    assert Path(transforms["test_filenames"][0]).name.endswith("000005.jpg")  # sorted index 4
    assert Path(env["BENCHMARK_OUT_DIR"], "Barn/nerf_data/images_2").is_dir()  # 720x540 -> 360x270
    assert "Barn: Results not found." in result.stdout


def test_reconstruct_t2_training_videos_warmstart(tanks, stub_env):
    work = tanks[0]
    env = {**stub_env, "DATASETS_FOLDER_SPARSE": str(work / "t2_colmap/training"),
           "DATASETS_FOLDER_VIDEO": str(work / "t2/training_videos"), "SCENES": "Barn", "RUN_BENCHMARK": "false"}
    result = run_script("reconstruct_t2_training_videos_warmstart.sh", env)
    out = f"{env['OUT_DIR']}/Barn"
    sparse = f"{work}/t2_colmap/training/Barn"
    assert calls(env) == [
        ["stub_train_ace.py", f"{sparse}/*.jpg", f"{out}/iteration0_seed0.pt", "--pose_files", f"{sparse}/*_pose.txt",
         "--render_visualization", "false", "--render_target_path", f"{out}/renderings",
         "--use_external_focal_length", "131.5"],
        ["stub_ace_zero.py", f"{work}/t2/training_videos/Barn/*.jpg", out, "--seed_network",
         f"{out}/iteration0_seed0.pt", "--render_visualization", "false", "--use_external_focal_length", "65.750000",
         "--refine_calibration", "False", "--export_point_cloud", "False", "--dense_point_cloud", "False"]]
    assert "Adjusted focal length for video frames: 65.750000" in result.stdout
    assert Path(out, "log_Barn_init.txt").is_file()


def dry_run(name: str, extra: dict | None = None) -> list[list[str]]:
    env = {**ENV, "DRY_RUN": "1", "ACE0_DEVICE": "cuda", "PATH": "/usr/bin:/bin", "PYTHON": "python",
           **(extra or {})}
    result = subprocess.run(["bash", f"scripts/{name}"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line[2:].split("| tee")[0]) for line in result.stdout.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("group, scenes", [
    ("training", ["Barn", "Caterpillar", "Church", "Ignatius", "Meetingroom", "Truck"]),
    ("intermediate", ["Family", "Francis", "Horse", "Lighthouse", "Playground", "Train"]),
    ("advanced", ["Auditorium", "Ballroom", "Courtroom", "Palace", "Temple"])])
def test_t2_dry_runs(group, scenes):
    """The original's scene lists and GPU flags, for all nine T&T scripts."""
    images = [c for c in dry_run(f"reconstruct_t2_{group}.sh") if c[1] == "ace_zero.py"]
    assert [c[2] for c in images] == [f"datasets/t2/{group}/{s}/*.jpg" for s in scenes]
    assert images[0][3:] == [f"reconstructions/t2_{group}/{scenes[0]}", "--try_seeds", "5", "--render_visualization",
                             "False", "--seed_parallel_workers", "5", "--export_point_cloud", "False",
                             "--dense_point_cloud", "False"]
    videos = dry_run(f"reconstruct_t2_{group}_videos.sh", {"BENCHMARKING_METHOD": "splatfacto"})
    first = next(c for c in videos if c[1] == "ace_zero.py")
    assert first[-4:] == ["--export_point_cloud", "True", "--dense_point_cloud", "true"]
    bench = next(c for c in videos if c[1:3] == ["-m", "benchmarks.benchmark_poses"])
    assert bench[bench.index("--images_glob_pattern") + 1] == f"datasets/t2/{group}_videos/{scenes[0]}/*.jpg"
    warm = dry_run(f"reconstruct_t2_{group}_videos_warmstart.sh")
    assert [c[2] for c in warm if c[1] == "train_ace.py"] == [f"datasets/t2_colmap/{group}/{s}/*.jpg" for s in scenes]


def test_7scenes_and_mip360_dry_runs():
    seven = [c for c in dry_run("reconstruct_7scenes.sh", {"RENDER_VISUALIZATION": "true"}) if c[1] == "ace_zero.py"]
    assert [c[2] for c in seven] == [f"datasets/7scenes/{s}/seq-*/*.color.png" for s in
                                     ("chess", "fire", "heads", "office", "pumpkin", "redkitchen", "stairs")]
    assert seven[0][4:] == ["--try_seeds", "5", "--render_visualization", "True", "--render_marker_size", "0.02",
                            "--use_external_focal_length", "525", "--export_point_cloud", "False",
                            "--dense_point_cloud", "False"]
    mip = [c for c in dry_run("reconstruct_mip360.sh", {"SCENES": "garden room"}) if c[1] == "ace_zero.py"]
    assert [c[3] for c in mip] == ["reconstructions/mip360/garden", "reconstructions/mip360/room"]
    assert mip[0][4:8] == ["--try_seeds", "5", "--render_visualization", "false"]


def test_script_help():
    result = subprocess.run(["bash", "scripts/reconstruct_t2_training_videos_warmstart.sh", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "Sparse COLMAP + ACE0" in result.stdout and "RENDER_VISUALIZATION" in result.stdout


@pytest.mark.slow
def test_reconstruct_7scenes_warmstart_real(seven_scenes, tmp_path):
    """The KF+ACE0 script with the real train_ace.py and register_mapping.py (a few iterations): the refined
    focal length travels through poses_iteration0_preliminary.txt, and the table is printed."""
    root = seven_scenes[0] / "7scenes"
    env = {**ENV, "PYTHON": sys.executable, "ACE0_DEVICE": "cpu", "PATH": "/usr/bin:/bin",
           "DATASETS_FOLDER": str(root), "SCENES": "chess", "OUT_DIR": str(tmp_path / "rec"),
           "BENCHMARK_OUT_DIR": str(tmp_path / "bench"), "SPLIT_FOLDER": str(tmp_path / "splits"),
           "MAPPING_EXTRA_ARGS": "--iterations 30 --image_resolution 120 --num_data_workers 0 --max_dataset_passes 1",
           "REGISTER_EXTRA_ARGS": "--image_resolution 120"}
    result = run_script("reconstruct_7scenes_warmstart.sh", env)
    out = tmp_path / "rec" / "chess"
    focal = (out / "poses_iteration0_preliminary.txt").read_text().split()[8]
    assert f"Using focal length from mapping stage: {focal}" in result.stdout
    assert (out / "poses_final.txt").read_text() == (out / "poses_iteration0.txt").read_text()
    assert all(line.split()[8] == focal for line in (out / "poses_final.txt").read_text().splitlines())
    assert "| chess | " in result.stdout and "chess: Results not found." in result.stdout
