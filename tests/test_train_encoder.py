"""train_encoder.py: training targets, the encoder file it writes, and that loading it plugs into the scripts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_cli


def test_scene_coordinates_project_back_to_the_cell_centres():
    """Targets backprojected from a depth map land, projected with the same camera, on each cell's centre."""
    from scipy.spatial.transform import Rotation
    from train_encoder import scene_coordinates
    rng = np.random.default_rng(0)
    height, width, focal = 48, 64, 55.0
    depth = rng.uniform(1.0, 4.0, (height, width)).astype(np.float32)
    depth[:8, :8] = 0.0  # nothing hit: no target
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("xyz", [10, -20, 5], degrees=True).as_matrix()
    pose[:3, 3] = [0.3, -1.0, 2.0]
    world = scene_coordinates(depth, pose, focal, (6, 8)).astype(np.float64)
    assert np.isnan(world[0, 0]).all() and not np.isnan(world[1:, 1:]).any()
    camera = (world.reshape(-1, 3) - pose[:3, 3]) @ pose[:3, :3]
    u = focal * camera[:, 0] / camera[:, 2] + width / 2
    v = focal * camera[:, 1] / camera[:, 2] + height / 2
    rows, cols = np.meshgrid(np.arange(6) * 8 + 4, np.arange(8) * 8 + 4, indexing="ij")
    valid = ~np.isnan(u)
    np.testing.assert_allclose(u[valid], cols.ravel()[valid], atol=1e-4)
    np.testing.assert_allclose(v[valid], rows.ravel()[valid], atol=1e-4)
    np.testing.assert_allclose(camera[valid, 2], depth[rows.ravel()[valid], cols.ravel()[valid]], rtol=1e-5)


@pytest.mark.slow
def test_trained_encoder_learns_and_loads(tmp_path):
    """A short training beats a head that predicts each scene's mean coordinate, and its file is an encoder that
    the scripts load: identified without torch, the adapter's digest in its id, heads refused with another."""
    import ace_network
    from ace_util import encoder_spec, is_adapter_file
    from train_encoder import EncoderTrainingConfig, SceneSet, train
    out = tmp_path / "encoder.pt"
    config = EncoderTrainingConfig(out, scenes=2, views_per_scene=6, width=320, height=240, iterations=150,
                                   hidden=32, out_channels=32, head_width=64)
    report = train(config)
    data = SceneSet(config, ace_network.load_encoder(config.base_encoder))
    targets = data.targets.permute(0, 2, 3, 1)
    mean_errors = (targets - data.scene_means[data.scene_of][:, None, None]).norm(dim=-1)
    baseline = float(mean_errors[~torch.isnan(mean_errors)].median())
    assert report["train_median_m"] < 0.7 * baseline

    assert is_adapter_file(out) and encoder_spec(out).family == "xfeat-adapter"
    encoder = ace_network.load_encoder(out)
    assert encoder.feature_dim == 32 and encoder.encoder_id.startswith("xfeat-reflect+adapter-")
    grey = torch.rand(1, 1, 240, 320)
    assert encoder(grey).shape == (1, 32, 30, 40)
    positions, _ = encoder.detect(grey)
    base_positions, _ = encoder.base.detect(grey)
    assert torch.equal(positions, base_positions)

    head = ace_network.Head(encoder.feature_dim, 64)
    ace_network.save_head(tmp_path / "head.pt", head, encoder.encoder_id)
    ace_network.load_head(tmp_path / "head.pt", encoder)
    with pytest.raises(ace_network.UserError, match="encoder"):
        ace_network.load_head(tmp_path / "head.pt", ace_network.load_encoder("xfeat-reflect"))


def test_bad_flags_and_files_are_one_line_errors(tmp_path):
    result = run_cli("train_encoder.py", tmp_path / "e.pt", "--scenes", "0", check=False)
    assert result.returncode == 2 and result.stderr.strip() == "error: --scenes must be positive"
    result = run_cli("train_encoder.py", tmp_path / "missing" / "e.pt", check=False)
    assert result.returncode == 2 and "its folder does not exist" in result.stderr
    not_an_encoder = tmp_path / "x.pt"
    torch.save({"format": "xfeat-adapter-v1", "base_encoder": "nonsense"}, not_an_encoder)
    import ace_network
    with pytest.raises(ace_network.UserError, match="not a valid train_encoder.py file"):
        ace_network.load_encoder(not_an_encoder)


def test_adversary_targets_are_the_rays_of_the_coordinate_targets():
    """The position adversary's target of a cell is the direction of that cell's coordinate target in the camera
    (with the camera at the origin, X / Z and Y / Z of the target)."""
    from train_encoder import SceneSet, scene_coordinates
    rng = np.random.default_rng(1)
    height, width, focal = 48, 64, 55.0
    depth = rng.uniform(1.0, 4.0, (height, width)).astype(np.float32)
    world = scene_coordinates(depth, np.eye(4), focal, (6, 8))
    data = object.__new__(SceneSet)
    data.image_size, data.focals, data.scene_of = (height, width), [focal], torch.tensor([0])
    data.targets = torch.from_numpy(world).permute(2, 0, 1)[None]
    cells = torch.arange(48)
    expected = torch.from_numpy(world.reshape(-1, 3))
    np.testing.assert_allclose(data.rays(0, cells).numpy(), (expected[:, :2] / expected[:, 2:]).numpy(), atol=1e-5)
