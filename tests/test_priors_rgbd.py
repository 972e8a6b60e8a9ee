"""RGB-D ACE0 (ace_zero.py --depth_use_always True, probabilistic loss, rgbd_laplace_nll) on a rendered scene
with rendered depth for every image: the reconstruction comes out at metric scale and at least as accurate as
ACE0 with depth for the seed only.

HEAVY, and opt-in (ACE_HEAVY_TESTS=1): two short ACE0 runs from one shared seed head (estimated 3-4 min on 2
idle cores). The seed head is mapped once, with the seed image's rendered depth, and both runs start from it
(--seed_network), so the runs differ only in whether the mapping rounds see depth.

Status: passes since 2026-12-04 (2 cores, 2.6 min): with the CPU profile's bundle adjustments, which take their
scale from the depth maps under --depth_use_always, the RGB-D poses come out at scale 0.995 with a median error of
0.27 deg / 0.08 cm, against scale 0.770 and 0.26 deg / 0.09 cm with depth for the seed only (the loop's last
registration alone, --bundle_adjustment False: scale 0.977 and 3.41 deg against 0.788 and 3.18 deg). Before (2026-12-02,
the loop without adjustments) the seed head registered the other views compressed (camera distances 0.25-0.31 of
the truth, relative rotations 21 deg off) and the depth in the rounds could not restore the scale (README, "RGB-D
ACE0, measured")."""
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
SAME_ACCURACY = 1.1  # median errors within 10 % count as the same
SHORT = ["--device", "cpu", "--image_resolution", 240, "--use_external_focal_length", FOCAL,
         "--refine_calibration", "False", "--registration_confidence", 100, "--mapping_iterations", 400,
         "--refit_iterations", 500, "--final_refit_posewait", 200, "--cooldown_iterations", 150,
         "--iterations_max", 3]  # the CPU profile's bundle adjustments (in the loop and after it) stay on
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
    # "At least as accurate" up to the difference between two adjustments of the same images (measured: 0.266
    # against 0.259 deg, 2.5 %); the alignment takes out the RGB run's scale error, which is what depth removes.
    assert rgbd["median_rot_err_deg"] <= SAME_ACCURACY * rgb["median_rot_err_deg"]
    assert rgbd["median_trans_err"] <= SAME_ACCURACY * rgb["median_trans_err"]
