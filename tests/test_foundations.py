"""Networks, file formats and the training maths against independent references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import ace_schedule
import dataset
import dataset_io
from calibration import Intrinsics, heuristic_focal
from ace_network import ACEEncoder, Head, load_encoder, load_head, save_head
from cli_common import UserError
from refine_poses import gram_schmidt, procrustes

OFFICIAL_HEAD_SHAPES = {
    "max_scale": [1], "min_scale": [1], "max_inv_scale": [1], "h_beta": [1], "min_inv_scale": [1],
    "mean": [1, 3, 1, 1], "fc3.weight": [4, 512, 1, 1], "fc3.bias": [4],
    **{f"{name}.weight": [512, 512, 1, 1] for name in
       ("res3_conv1", "res3_conv2", "res3_conv3", "0c0", "0c1", "0c2", "fc1", "fc2")},
    **{f"{name}.bias": [512] for name in
       ("res3_conv1", "res3_conv2", "res3_conv3", "0c0", "0c1", "0c2", "fc1", "fc2")},
}


def test_official_head_format(tmp_path):
    head = Head(512, 512, num_head_blocks=1)
    head.mean.fill_(123.4)
    save_head(tmp_path / "h.pt", head, "ace")
    state = torch.load(tmp_path / "h.pt", weights_only=True)
    assert {k: list(v.shape) for k, v in state.items()} == OFFICIAL_HEAD_SHAPES
    assert all(v.dtype == torch.float16 for v in state.values())
    assert sum(p.numel() for p in head.parameters()) == 2_103_300
    assert float(state["h_beta"]) == pytest.approx(math.log(2) / 0.75, rel=1e-3)
    loaded = load_head(tmp_path / "h.pt", ACEEncoder())
    features = torch.randn(7, 512)
    # fp16 storage: the loaded head equals the fp16-rounded original.
    head.load_state_dict({k: v.half().float() for k, v in head.state_dict().items()})
    assert torch.allclose(loaded(features), head(features), atol=1e-3)
    assert float(loaded.mean[0, 0]) == pytest.approx(123.4, abs=0.07)  # fp16-rounded, as the original


def test_head_matches_conv_reference():
    """F.linear on N x C is the 1x1 convolution of the official head."""
    head = Head(64, 32, num_head_blocks=2)
    features = torch.randn(2, 64, 3, 5)
    x = features
    conv = torch.nn.functional.conv2d
    relu = torch.relu
    res = conv(x, head.head_skip.weight, head.head_skip.bias) + relu(conv(relu(conv(relu(conv(
        x, head.res3_conv1.weight, head.res3_conv1.bias)), head.res3_conv2.weight, head.res3_conv2.bias)),
        head.res3_conv3.weight, head.res3_conv3.bias))
    for block in range(2):
        y = res
        for layer in range(3):
            module = getattr(head, f"{block}c{layer}")
            y = relu(conv(y, module.weight, module.bias))
        res = res + y
    out = conv(relu(conv(relu(conv(res, head.fc1.weight, head.fc1.bias)), head.fc2.weight, head.fc2.bias)),
               head.fc3.weight, head.fc3.bias)
    scale = torch.nn.functional.softplus(out[:, 3:], beta=float(head.h_beta)) + 0.25
    expected = out[:, :3] / scale.clamp(max=100.0) + head.mean
    assert torch.allclose(head.forward_map(features), expected, atol=1e-5)


def test_ace_encoder_file_round_trip(tmp_path):
    encoder = ACEEncoder()
    assert len(encoder.state_dict()) == 22 and sum(p.numel() for p in encoder.parameters()) == 5_568_000
    torch.save(encoder.state_dict(), tmp_path / "enc.pt")
    loaded = load_encoder(tmp_path / "enc.pt")
    image = torch.rand(1, 1, 64, 96)
    assert loaded(image).shape == (1, 512, 8, 12)
    assert torch.equal(loaded(image), encoder(image))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="bad.pt"):
        load_encoder(tmp_path / "bad.pt")
    with pytest.raises(UserError, match="missing.pt"):
        load_encoder(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a network")
    for load in (load_encoder, load_head):
        with pytest.raises(UserError, match=r"text.pt: not a readable .* \(not written by torch.save\)$"):
            load(tmp_path / "text.pt")


def test_head_of_another_builtin_encoder_names_its_flag(tmp_path):
    """A head mapped with `xfeat` (the default before stop 46) is refused with the default encoder, and the one-line
    error names the value to pass."""
    save_head(tmp_path / "h.pt", Head(64, 128), "xfeat")
    with pytest.raises(UserError, match=r"'xfeat' encoder .* pass the matching --encoder_path \(xfeat\)$"):
        load_head(tmp_path / "h.pt", load_encoder("xfeat-reflect"))
    assert load_head(tmp_path / "h.pt", load_encoder("xfeat")).fc3.weight.shape[1] == 128


def test_xfeat_encoder_geometry():
    encoder = load_encoder("xfeat")
    assert encoder(torch.rand(1, 1, 100, 130)).shape == (1, 64, 13, 17)  # ceil(H/8) x ceil(W/8)


def test_pose_file_round_trip_and_convention(tmp_path):
    rng = np.random.default_rng(0)
    entries = []
    for index in range(5):
        world_to_cam = np.eye(4)
        world_to_cam[:3, :3] = Rotation.random(random_state=index).as_matrix()
        world_to_cam[:3, 3] = rng.normal(size=3)
        entries.append(dataset_io.PoseEntry(f"img{index}.png", world_to_cam, 500.5, 1000 + index))
    dataset_io.write_ace_pose_file(tmp_path / "p.txt", entries)
    line = (tmp_path / "p.txt").read_text().splitlines()[0].split()
    # Independent check of the convention: quaternion (w first) of the WORLD-TO-CAMERA rotation.
    x, y, z, w = Rotation.from_matrix(entries[0].world_to_cam[:3, :3]).as_quat()
    assert np.allclose([float(v) for v in line[1:5]], [w, x, y, z]) or \
        np.allclose([float(v) for v in line[1:5]], [-w, -x, -y, -z])
    assert line[9] == "1000"
    back = dataset_io.read_ace_pose_file(tmp_path / "p.txt", min_confidence=1002)
    assert [e.path for e in back] == ["img2.png", "img3.png", "img4.png"]
    for entry, original in zip(back, entries[2:]):
        assert np.allclose(entry.world_to_cam, original.world_to_cam, atol=1e-12)
        assert np.allclose(entry.cam_to_world @ original.world_to_cam, np.eye(4), atol=1e-12)
    (tmp_path / "bad.txt").write_text("img.png 1 0 0 0 1 2 3 500\n")
    with pytest.raises(UserError, match="bad.txt:1"):
        dataset_io.read_ace_pose_file(tmp_path / "bad.txt")


def test_amended_pose_file_keeps_every_other_digit(tmp_path):
    """The gate and the verification rewrite a pose file by changing a few confidences and poses: the other lines
    come out as the input's text, byte for byte (digits a reader parsed and printed again could differ)."""
    lines = ["a.png 0.5 0.5 0.5 0.5 0.1000000001 2 3 500.25 1234.5",
             "b.png 1 0 0 0 4 5 6 500.25 inf",
             "c.png 1 0 0 0 7 8 9 500.25 900"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n\n")
    moved = np.eye(4)
    moved[:3, :3] = Rotation.from_euler("y", 30, degrees=True).as_matrix()
    moved[:3, 3] = [1, 2, 3]
    cameras = [Intrinsics(500.25, 500.25, 320, 240, 640, 480)] * 3
    dataset_io.write_amended_pose_file(tmp_path / "in.txt", tmp_path / "out.txt", cameras, {1: 99.0}, {2: moved})
    out = (tmp_path / "out.txt").read_text().splitlines()
    assert out[0] == lines[0] and out[1] == "b.png 1 0 0 0 4 5 6 500.25 99"
    entry = dataset_io.read_ace_pose_file(tmp_path / "out.txt")[2]
    assert np.allclose(entry.world_to_cam, moved, atol=1e-12) and entry.confidence == 900
    assert not (tmp_path / "cameras_out.txt").exists()  # one simple camera: the focal column says all


def test_image_and_pose_errors(tmp_path):
    with pytest.raises(UserError, match="no files match"):
        dataset_io.glob_files(str(tmp_path / "*.png"))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="broken.jpg"):
        dataset_io.load_image_rgb(str(tmp_path / "broken.jpg"))
    import cv2
    cv2.imwrite(str(tmp_path / "grey16.png"), np.full((10, 12), 40000, np.uint16))
    image = dataset_io.load_image_rgb(str(tmp_path / "grey16.png"))
    assert image.shape == (10, 12, 3) and image.dtype == np.uint8 and abs(int(image[0, 0, 0]) - 156) <= 1
    np.savetxt(tmp_path / "nan.txt", np.full((4, 4), np.nan))
    images, poses = dataset_io.drop_invalid_poses(["a", "b"], [np.eye(4), dataset_io.load_cam_to_world(
        str(tmp_path / "nan.txt"))])
    assert images == ["a"]
    np.savetxt(tmp_path / "short.txt", np.eye(3))
    with pytest.raises(UserError, match="4x4"):
        dataset_io.load_cam_to_world(str(tmp_path / "short.txt"))
    assert heuristic_focal(640, 480) == pytest.approx(560.0)


def test_one_cycle_matches_torch():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=0.005)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.005, total_steps=500, cycle_momentum=False)
    for iteration in range(500):
        assert ace_schedule._one_cycle(iteration, 500, 0.005) == pytest.approx(optimizer.param_groups[0]["lr"],
                                                                                rel=1e-6, abs=1e-12)
        optimizer.step()
        reference.step()


def test_rotation_orthonormalisation():
    rotations = torch.from_numpy(Rotation.random(8, random_state=1).as_matrix()).float()
    assert torch.allclose(gram_schmidt(rotations), rotations, atol=1e-6)
    assert torch.allclose(procrustes(rotations), rotations, atol=1e-5)
    noisy = rotations + 0.05 * torch.randn(8, 3, 3)
    for fix in (gram_schmidt, procrustes):
        fixed = fix(noisy)
        assert torch.allclose(fixed @ fixed.transpose(1, 2), torch.eye(3).expand(8, 3, 3), atol=1e-5)
        assert torch.allclose(torch.det(fixed), torch.ones(8), atol=1e-5)


@pytest.mark.parametrize("shift,viewpoint", [(0.0, 0.0), (0.2, 0.0), (0.2, 10.0)])
def test_augmented_view_keeps_geometry(orbit_scene, shift, viewpoint):
    """Depth targets of a scaled, rotated (shifted, re-rendered) view are the scene points seen at those pixels."""
    from types import SimpleNamespace
    images = sorted(str(p) for p in orbit_scene.glob("images/*.png"))
    poses = np.stack([dataset_io.load_cam_to_world(str(p)) for p in sorted(orbit_scene.glob("poses/*.txt"))])
    depths = sorted(str(p) for p in orbit_scene.glob("depth/*.png"))
    data = dataset.MappingData(images, poses, [Intrinsics.centred(525.0, 640, 480, "test")] * len(images), depths)
    view = dataset.make_view(data, 0, 480, np.random.default_rng(5), True, 1.5, 15, shift, viewpoint)
    assert abs(math.degrees(math.atan2(view.rotation[1, 0], view.rotation[0, 0]))) > 0.5  # really rotated
    height, width = view.grey.shape
    rows, cols = np.nonzero(view.valid & (np.abs(view.scene_coords).sum(axis=0) > 0))
    targets = view.scene_coords[:, rows, cols].T
    # Project with the augmented camera: world -> original camera -> augmentation motion -> pixels.
    world_to_cam = np.linalg.inv(poses[0])
    moved = np.linalg.norm(view.translation)
    assert (moved > 0.01) if viewpoint else (moved == 0)
    cam = view.rotation @ (world_to_cam[:3, :3] @ targets.T + world_to_cam[:3, 3:4]) + view.translation[:, None]
    u = cam[0] / cam[2] * view.focal + view.principal[0]
    v = cam[1] / cam[2] * view.focal + view.principal[1]
    if shift:
        assert abs(view.principal[0] - width / 2) > 1 and abs(view.principal[1] - height / 2) > 1
    assert np.allclose(u, cols * 8 + 4, atol=1e-3) and np.allclose(v, rows * 8 + 4, atol=1e-3)
    # And the targets are real scene points: the unaugmented depth map agrees at their original pixels.
    depth = dataset_io.load_depth_png(depths[0])
    cam0 = world_to_cam[:3, :3] @ targets.T + world_to_cam[:3, 3:4]
    u0 = np.clip((cam0[0] / cam0[2] * 525.0 + 320).astype(int), 0, 639)
    v0 = np.clip((cam0[1] / cam0[2] * 525.0 + 240).astype(int), 0, 479)
    agree = np.abs(depth[v0, u0] - cam0[2]) < 0.05 * cam0[2]
    assert agree.mean() > 0.9


def test_progress_bar_in_a_log_prints_few_lines(monkeypatch):
    """Without a terminal a bar writes a line per 10 % (or 30 s), not one per update; a terminal gets tqdm."""
    import io

    import ace_util
    log = io.StringIO()
    with ace_util.progress_bar(total=5000, desc="Mapping", unit="it", leave=False, file=log) as progress:
        for i in range(5000):
            progress.set_postfix(loss=f"{i:.1f}")
            progress.update(1)
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in log.getvalue()
    assert lines[0].startswith("Mapping:  10%") and "500/5000" in lines[0] and lines[-1].startswith("Mapping: 100%")
    assert "loss=4999.0" in lines[-1]
    log = io.StringIO()
    assert sum(1 for _ in ace_util.progress_bar(range(3), desc="r", file=log)) == 3
    assert log.getvalue().splitlines()[-1].startswith("r: 100%")
    clock = [0.0]
    monkeypatch.setattr(ace_util.time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    slow = ace_util.progress_bar(total=1000, file=log)
    for _ in range(5):
        clock[0] += 31.0
        slow.update(1)  # 0.1 % of the total each, but 31 s apart: a line each
    assert len(log.getvalue().splitlines()) == 5
    slow.close()

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    from tqdm import tqdm
    assert isinstance(ace_util.progress_bar(total=3, file=Terminal()), tqdm)


def test_negative_focal_other_than_minus_one_is_an_error(capsys):
    import ace_zero
    import register_mapping
    import train_ace
    for module in (train_ace, register_mapping, ace_zero):
        parser = module.build_parser()
        assert parser.parse_args(["a", "b", "--use_external_focal_length", "-1"]).use_external_focal_length == -1
        assert parser.parse_args(["a", "b", "--use_external_focal_length", "525"]).use_external_focal_length == 525
        with pytest.raises(SystemExit):
            parser.parse_args(["a", "b", "--use_external_focal_length", "-5"])
        assert "focal length in pixels or -1" in capsys.readouterr().err


def test_confidence_rules_and_encoder_table():
    import ace_util
    assert not ace_util.is_registered(1000, 1000) and ace_util.is_registered(1000.5, 1000)
    assert ace_util.in_mapping_set(1000, 1000) and not ace_util.in_mapping_set(999, 1000)
    assert list(ace_util.is_registered(np.array([500, 1000, 1001]), 1000)) == [False, False, True]
    assert ace_util.encoder_spec("XFeat-Reflect").conv_padding == "reflect"
    assert ace_util.encoder_spec("some/ace_encoder_pretrained.pt") is ace_util.ACE_ENCODER
    assert ace_util.ACE_ENCODER.seed_augmentation is None and not ace_util.ACE_ENCODER.has_detector
    assert np.allclose(ace_util.project_pinhole(np.array([[1.0, -2.0, 4.0]]), 100.0, np.array([50.0, 40.0])),
                       [[75.0, -10.0]])


ROOT_PATH_LINE = "sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the root modules " \
    "(README, Layout)"


def test_one_way_to_the_root_modules(tmp_path):
    """Files in scripts/, datasets/ and benchmarks/ that run as files reach the root modules through one identical
    line (the tests through pytest.ini); they start from any folder."""
    import subprocess
    import sys
    from ace_util import REPO_ROOT
    found = {}
    for path in sorted(REPO_ROOT.glob("*/*.py")) + sorted(REPO_ROOT.glob("*.py")):
        if path.parts[-2] in (".venv", "dsacstar"):
            continue
        lines = [line.strip() for line in path.read_text().splitlines()
                 if line.lstrip().startswith(("sys.path.insert", "sys.path.append"))]
        if lines:
            found[path.relative_to(REPO_ROOT).as_posix()] = lines
    assert all(lines == [ROOT_PATH_LINE] for lines in found.values()), found
    assert {name.split("/")[0] for name in found} <= {"scripts", "datasets", "benchmarks"}
    for script in ("scripts/run_demo.py", "datasets/setup_7scenes.py", "benchmarks/bench_reconstruction.py"):
        result = subprocess.run([sys.executable, str(REPO_ROOT / script), "--help"], cwd=tmp_path,
                                capture_output=True, text=True)
        assert result.returncode == 0 and "usage" in result.stdout, (script, result.stderr[-500:])


def test_configs_take_their_fields_from_the_flags():
    """Every config field has its flag (a renamed flag fails here, not in a slow run); the adjustment's defaults
    are its flags' defaults."""
    import bundle_adjust
    import register_mapping
    import train_ace
    from ace_trainer import MappingConfig
    from ace_util import config_from_args
    mapping = MappingConfig.from_args(train_ace.build_parser().parse_args(
        ["a/*.png", "out/map.pt", "--prior_loss_location", "auto", "--render_visualization", "True"]))
    assert mapping.loss.prior.location == "auto" and mapping.loss.prior.bandwidth == 0.1
    assert mapping.render is not None and mapping.data.rgb_files == "a/*.png"
    registration = register_mapping.RegistrationConfig.from_args(register_mapping.build_parser().parse_args(
        ["a/*.png", "map.pt"]))
    assert registration.render is None and registration.hypotheses == 64
    args = bundle_adjust.build_parser().parse_args(["in.txt", "out.txt"])
    assert config_from_args(bundle_adjust.BundleAdjustConfig, args) == bundle_adjust.BundleAdjustConfig(args.input_poses)


def test_depth_files_pair_with_images_in_sorted_order(tmp_path):
    images = [str(tmp_path / f"rgb_{i}.png") for i in (2, 0, 1)]  # pose-file order, not sorted
    for i in range(3):
        (tmp_path / f"depth_{i}.png").write_bytes(b"")
    pattern = str(tmp_path / "depth_*.png")
    assert dataset_io.depth_files_of(images[:2], images, pattern, "test") == [
        str(tmp_path / "depth_2.png"), str(tmp_path / "depth_0.png")]
    with pytest.raises(UserError, match="rgb_9.png"):
        dataset_io.depth_files_of([str(tmp_path / "rgb_9.png")], images, pattern, "test")
    with pytest.raises(UserError, match="counts must match"):
        dataset_io.depth_files_of(images, images[:2], pattern, "test")
