"""RGB-D ACE0 (ace_zero.py --depth_use_always True, probabilistic loss, rgbd_laplace_nll) on a rendered scene
with rendered depth for every image: the reconstruction comes out at metric scale and at least as accurate as
ACE0 with depth for the seed only.

HEAVY, and opt-in (ACE_HEAVY_TESTS=1): two short ACE0 runs from one shared seed head (estimated 3-4 min on 2
idle cores). The seed head is mapped once, with the seed image's rendered depth, and both runs start from it
(--seed_network), so the runs differ only in whether the mapping rounds see depth.

Status: fails (README, "RGB-D ACE0, measured"). Run on 2026-12-02 (2 cores, another job beside it): with 8
views (2.3 min) the seed head registered the other views compressed (camera distances at a median 0.68 of the
truth) and 8 deg off in relative rotation, and the depth in the mapping rounds kept that scale (0.62; 0.77
with depth for the seed only); with 12 views (3.1 min) 0.25 against 0.31 and relative rotations 21 deg off, and
the verification rightly marked every image unreliable in both runs. Kept as the issue states it rather than
loosened."""
from __future__ import annotations

import os
import shutil

import pytest

import dataset_io
from conftest import run_cli
from eval_poses import evaluate

pytestmark = pytest.mark.skipif(os.environ.get("ACE_HEAVY_TESTS") != "1",
                                reason="heavy RGB-D ACE0 test: set ACE_HEAVY_TESTS=1 (see the module docstring)")

# 12 views: the similarity to the ground truth is then fitted by RANSAC (it needs 10); with 8 views on a 42 deg
# arc the least-squares fit mis-rotated everything by ~116 deg (2026-12-02), which says nothing about the scale.
SIZE, FOCAL, VIEWS = (320, 240), 262.5, 12
SHORT = ["--device", "cpu", "--image_resolution", 240, "--use_external_focal_length", FOCAL,
         "--refine_calibration", "False", "--registration_confidence", 100, "--mapping_iterations", 400,
         "--refit_iterations", 500, "--final_refit_posewait", 200, "--cooldown_iterations", 150,
         "--iterations_max", 3, "--bundle_adjustment", "False"]
RGBD = ["--depth_use_always", "True", "--loss_structure", "probabilistic", "--prior_loss_type", "rgbd_laplace_nll",
        "--prior_loss_weight", 1.0, "--prior_loss_bandwidth", 0.1]


@pytest.fixture(scope="module")
def rgbd_scene(tmp_path_factory):
    from datasets.synthetic_scene import RenderingUnavailable, render_scene
    try:
        return render_scene(tmp_path_factory.mktemp("rgbd_scene"), num_images=VIEWS, width=SIZE[0], height=SIZE[1],
                            focal=FOCAL, seed=3, trajectory="orbit", yaw_step_deg=6.0)
    except RenderingUnavailable as error:
        pytest.skip(f"offscreen rendering unavailable: {error}")


@pytest.fixture(scope="module")
def seed_head(rgbd_scene, tmp_path_factory):
    """The seed as ace_zero maps it with the XFeat encoder (shift and viewpoint augmentation), shorter."""
    out = tmp_path_factory.mktemp("rgbd_seed") / "iteration0_seed0.pt"
    run_cli("train_ace.py", f"{rgbd_scene}/images/*.png", out, "--device", "cpu", "--image_resolution", 240,
            "--use_external_focal_length", FOCAL, "--use_pose_seed", 0.5, "--depth_files",
            f"{rgbd_scene}/depth/*.png", "--aug_shift", 0.25, "--aug_viewpoint", 10, "--max_dataset_passes", 20,
            "--iterations", 600, "--learning_rate_schedule", "1cyclepoly", "--learning_rate_max", 0.003,
            "--learning_rate_cooldown_iterations", 200, "--repro_loss_type", "tanh")
    return out


def _reconstruct(scene, seed, out, extra) -> dict:
    out.mkdir(parents=True)
    shutil.copyfile(seed, out / seed.name)
    run_cli("ace_zero.py", f"{scene}/images/*.png", out, "--seed_network", out / seed.name,
            "--depth_files", f"{scene}/depth/*.png", *SHORT, *extra)
    entries = sorted(dataset_io.read_ace_pose_file(out / "poses_final.txt"), key=lambda e: e.path)
    gt = [dataset_io.load_cam_to_world(p) for p in sorted(scene.glob("poses/*.pose.txt"))]
    return evaluate(entries, gt, conf_threshold=100, thresh_t=0.05, thresh_r=5.0)


def test_rgbd_ace_zero_is_metric_and_not_less_accurate(rgbd_scene, seed_head, tmp_path):
    rgbd = _reconstruct(rgbd_scene, seed_head, tmp_path / "rgbd", RGBD)
    rgb = _reconstruct(rgbd_scene, seed_head, tmp_path / "rgb", [])
    print("RGB-D:", rgbd["alignment"], rgbd["median_rot_err_deg"], rgbd["median_trans_err"])
    print("RGB (seed depth only):", rgb["alignment"], rgb["median_rot_err_deg"], rgb["median_trans_err"])
    assert rgbd["num_registered"] == VIEWS
    assert rgbd["alignment"]["scale"] == pytest.approx(1.0, abs=0.02)
    assert rgbd["num_registered"] >= rgb["num_registered"]
    assert rgbd["median_rot_err_deg"] <= rgb["median_rot_err_deg"]
    assert rgbd["median_trans_err"] <= rgb["median_trans_err"]
