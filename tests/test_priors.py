"""Scene coordinate reconstruction priors (ace_loss.py): each prior's value and gradient against an independent
computation (scipy.stats.laplace, finite differences of numpy formulas), the two loss structures, the diffusion
hook with a toy noise model, the error paths, and train_depth_prior.py."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from scipy.stats import laplace

import ace_loss
from calibration import Intrinsics
from ace_loss import (AceLoss, LossConfig, LossInputs, PriorConfig, PriorLoss, auto_prior, laplace_nll,
                      laplace_quantiles, laplace_wasserstein, load_diffusion_regulariser, rgbd_laplace_nll)
from cli_common import UserError
from conftest import run_cli

MU, B = 1.73, 0.6


def _numeric_gradient(function, values: np.ndarray, step: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(values)
    for i in range(len(values)):
        up, down = values.copy(), values.copy()
        up[i] += step
        down[i] -= step
        grad[i] = (function(up) - function(down)) / (2 * step)
    return grad


def _depths(count=64, seed=0) -> np.ndarray:
    # away from the kinks of |z - mu| so that finite differences are exact
    values = np.random.default_rng(seed).uniform(-1.0, 5.0, count)
    return values[np.abs(values - MU) > 1e-3]


def _grad(function, values: np.ndarray) -> tuple[float, np.ndarray]:
    z = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    value = function(z)
    value.backward()
    return float(value), z.grad.numpy()


def test_laplace_nll_value_and_gradient():
    z = _depths()
    value, grad = _grad(lambda t: laplace_nll(t, MU, B), z)

    def reference(values):
        return float(-laplace.logpdf(values, loc=MU, scale=B).mean())
    assert value == pytest.approx(reference(z), rel=1e-10)
    assert np.allclose(grad, _numeric_gradient(reference, z), atol=1e-7)
    # constant per-pixel gradient 1 / (b B)
    assert np.allclose(np.abs(grad), 1 / (B * len(z)))


def test_laplace_quantiles_match_scipy():
    probabilities = np.linspace(1e-6, 1 - 1e-6, 101)
    expected = laplace.ppf(probabilities, loc=MU, scale=B)
    assert np.allclose(laplace_quantiles(101, MU, B).double().numpy(), expected, atol=1e-5)
    # the reference's remark: with mu 1.73, b 0.6 about 2.8 % of the targets are negative, the lowest ~ -6.1 m
    assert expected[0] == pytest.approx(-6.1, abs=0.05)
    assert laplace.cdf(0.0, loc=MU, scale=B) == pytest.approx(0.028, abs=0.001)


def test_laplace_wasserstein_value_and_gradient():
    z = _depths(50, seed=1)
    quantiles = laplace.ppf(np.linspace(1e-6, 1 - 1e-6, len(z)), loc=MU, scale=B)

    def reference(values):
        return float(np.abs(np.sort(values) - quantiles).mean())
    value, grad = _grad(lambda t: laplace_wasserstein(t, MU, B), z)
    assert value == pytest.approx(reference(z), rel=1e-5)
    assert np.allclose(grad, _numeric_gradient(reference, z), atol=1e-6)
    assert np.allclose(np.abs(grad), 1 / len(z))  # lambda / B per pixel, whatever b is


def test_rgbd_laplace_nll_value_and_gradient():
    rng = np.random.default_rng(2)
    z = rng.uniform(0.5, 4.0, 40)
    measured = z + rng.uniform(-0.3, 0.3, 40)
    measured[::5] = 0.0  # no measurement: skipped, but still counted in the batch size
    known = measured > 0
    m = torch.tensor(measured)

    def reference(values):
        return float(-laplace.logpdf(values[known], loc=measured[known], scale=0.1).sum() / len(values))
    value, grad = _grad(lambda t: rgbd_laplace_nll(t, m, 0.1), z)
    assert value == pytest.approx(reference(z), rel=1e-10)
    assert np.allclose(grad, _numeric_gradient(reference, z), atol=1e-7)
    assert np.all(grad[~known] == 0)


def test_auto_prior_uses_scannet_shape():
    assert auto_prior(2.0, "auto", "auto") == pytest.approx((2.0, 2.0 * 0.6 / 1.73))
    assert auto_prior(2.0, "auto", 0.3) == pytest.approx((2.0, 0.3))
    assert auto_prior(2.0, 1.5, "auto") == pytest.approx((1.5, 1.5 * 0.6 / 1.73))


# ----------------------------------------------------------------------------------------------------------------
# Loss structures

def _inputs(errors, depths, targets=None, measured=None, iteration=0):
    count = len(errors)
    rays = torch.cat([torch.zeros(count, 2), torch.ones(count, 1)], dim=1)
    cam = rays * torch.tensor(depths, dtype=torch.float32)[:, None]
    cam.requires_grad_(True)
    scene = cam.detach().clone().requires_grad_(True)
    return LossInputs(scene, cam, cam, torch.tensor(errors, dtype=torch.float32), rays, targets, measured,
                      iteration, 1000)


def test_probabilistic_inlier_ratio_counts_every_prediction():
    loss = AceLoss(LossConfig("probabilistic", PriorConfig("laplace_nll", 0.1, B, MU), depth_max=10.0),
                   use_depth=False)
    # behind the camera and beyond depth_max still count when their error is small
    errors = [1.0, 5.0, 9.9, 10.0, 50.0, 2000.0, 3.0, 4.0]
    depths = [2.0, -1.0, 20.0, 2.0, 2.0, 2.0, 0.05, 2.0]
    inliers, value = loss.compute(_inputs(errors, depths))
    assert inliers == pytest.approx(5 / 8)
    scale = 50.0 + 1.0  # dyntanh at iteration 0
    repro = sum(scale * math.tanh(e / scale) for e in errors) / 8
    prior = float(-laplace.logpdf(depths, loc=MU, scale=B).mean())
    assert float(value) == pytest.approx(repro + 0.1 * prior, rel=1e-5)


def test_dsac_star_inlier_ratio_counts_valid_predictions_only():
    loss = AceLoss(LossConfig(depth_max=10.0), use_depth=False)
    errors = [1.0, 5.0, 9.9, 10.0, 50.0, 2000.0, 3.0, 4.0]
    depths = [2.0, -1.0, 20.0, 2.0, 2.0, 2.0, 0.05, 2.0]
    inliers, _ = loss.compute(_inputs(errors, depths))
    assert inliers == pytest.approx(2 / 8)  # the first and the last


def test_probabilistic_empty_batch_is_zero():
    loss = AceLoss(LossConfig("probabilistic", PriorConfig("laplace_wd")), use_depth=False)
    inliers, value = loss.compute(_inputs([], []))
    assert inliers == 0.0 and float(value) == 0.0


def test_measured_depth_of_augmented_views(small_scene):
    """The depth the RGB-D prior compares with is the camera depth of the augmented pixel, whatever the warp."""
    import dataset_io
    from ace_trainer import measured_depth
    from dataset import MappingData, make_view
    images = sorted(str(p) for p in small_scene.glob("images/*.png"))[:1]
    depth_file = sorted(str(p) for p in small_scene.glob("depth/*.png"))[:1]
    pose = dataset_io.load_cam_to_world(sorted(str(p) for p in small_scene.glob("poses/*.txt"))[0])
    data = MappingData(images, pose[None], [Intrinsics.centred(262.5, 320, 240, "test")], depth_file)
    view = make_view(data, 0, 240, np.random.default_rng(0), True, 1.0, 15.0, aug_shift=0.2, aug_viewpoint=8.0)
    targets = torch.from_numpy(view.scene_coords.reshape(3, -1).T.copy())
    count = len(targets)
    world_to_cam = torch.from_numpy(np.linalg.inv(pose)[:3]).float().expand(count, 3, 4)
    depth = measured_depth(targets, world_to_cam, torch.from_numpy(view.rotation).float().expand(count, 3, 3),
                           torch.from_numpy(view.translation).float().expand(count, 3))
    present = targets.abs().sum(dim=1) > 1e-5
    assert present.float().mean() > 0.5
    assert torch.all(depth[~present] == 0)
    # scene -> augmented camera with the full motion reproduces the ray geometry: x/z, y/z are the pixel rays
    cam = torch.from_numpy(view.rotation).float() @ (world_to_cam[0, :, :3] @ targets.T + world_to_cam[0, :, 3:]) \
        + torch.from_numpy(view.translation).float()[:, None]
    assert torch.allclose(depth[present], cam[2, present], atol=1e-4)
    cells_w = view.scene_coords.shape[2]
    u = (torch.arange(count) % cells_w) * 8 + 4 - view.principal[0]
    v = (torch.arange(count) // cells_w) * 8 + 4 - view.principal[1]
    assert torch.allclose((cam[0] / cam[2] * view.focal)[present], u[present].float(), atol=0.05)
    assert torch.allclose((cam[1] / cam[2] * view.focal)[present], v[present].float(), atol=0.05)


# ----------------------------------------------------------------------------------------------------------------
# Diffusion hook

class ToyNoise(torch.nn.Module):
    """Predicts noise = points - 0.5 (so the score pulls points towards 0.5 in normalised units)."""

    def __init__(self):
        super().__init__()
        self.centroid = 1.0  # point normalisation stored with the model
        self.scale = 4.0

    def forward(self, points: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        return points - 0.5


@pytest.fixture
def toy_model(tmp_path):
    path = tmp_path / "toy.pt"
    torch.jit.script(ToyNoise()).save(str(path))
    return path


def test_diffusion_schedule():
    prior = PriorLoss(PriorConfig("none"), False)  # the schedule needs no model
    prior.config = PriorConfig("diffusion", diffusion_start_step=100, diffusion_warmup_steps=40)
    assert [prior.diffusion_weight(i) for i in (0, 96, 100, 101, 104, 120, 140, 144, 1000)] == \
        [0, 0, 0, 0, pytest.approx(0.1), pytest.approx(0.5), 1.0, 1.0, 1.0]
    assert prior.diffusion_time(100, 1100) == pytest.approx(0.05)
    assert prior.diffusion_time(600, 1100) == pytest.approx(0.025)
    assert prior.diffusion_time(1100, 1100) == 0.0 and prior.diffusion_time(5000, 1100) == 0.0
    # the ACE0 setting: first active step is iteration 4
    prior.config = PriorConfig("diffusion")
    assert [prior.diffusion_weight(i) for i in range(9)] == [0, 0, 0, 0, 1, 0, 0, 0, 1]


def test_diffusion_prior_value_gradient_and_mask(toy_model):
    prior = PriorLoss(PriorConfig("diffusion", 200.0, diffusion_model_path=toy_model), use_depth=False)
    assert prior.diffusion.step_for(0.05) == 9 and prior.diffusion.step_for(0.0) == 0
    assert float(prior.diffusion.centroid) == 1.0 and float(prior.diffusion.scale) == 4.0
    rng = np.random.default_rng(3)
    scene = rng.normal(0, 3, (20, 3))
    errors = np.where(np.arange(20) % 2 == 0, 100.0, 5.0)  # only the odd ones are well constrained
    points = torch.tensor(scene, requires_grad=True)
    value = prior.compute(torch.zeros(20), points, None, torch.tensor(errors), iteration=8, max_iterations=100)
    value.backward()
    # independent numpy computation of the reference's recipe
    step = int((0.05 * (1 - 8 / 100)) * 199)
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.05, 200))[step]
    normalised = (scene - 1.0) / 4.0
    score = -(normalised - 0.5) / math.sqrt(1 - alpha_bar)
    unit = score / np.linalg.norm(score)
    keep = errors > 30
    expected = -(unit * normalised).sum(axis=1)[keep].mean()
    assert float(value) == pytest.approx(expected, rel=1e-6)
    grad = points.grad.numpy()
    assert np.allclose(grad[~keep], 0)
    assert np.allclose(grad[keep], -unit[keep] / 4.0 / keep.sum(), rtol=1e-6)
    # inactive iterations give nothing
    assert float(prior.compute(torch.zeros(20), points, None, torch.tensor(errors), 9, 100)) == 0.0


def test_diffusion_with_dsac_star_adds_weighted_prior(toy_model):
    config = LossConfig("dsac*", PriorConfig("diffusion", 200.0, diffusion_model_path=toy_model))
    loss = AceLoss(config, use_depth=False)
    inputs = _inputs([100.0, 50.0, 3.0], [2.0, 2.0, 2.0], iteration=4)
    _, with_prior = loss.compute(inputs)
    _, without = AceLoss(LossConfig(), use_depth=False).compute(inputs)
    prior = loss.prior.compute(inputs.cam_fixed[:, 2], inputs.scene, None, inputs.errors, 4, 1000)
    assert float(with_prior) == pytest.approx(float(without) + 200.0 * float(prior), rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Errors

def test_loss_combination_errors(tmp_path):
    with pytest.raises(UserError, match=r"^Only diffusion prior_loss_type is supported with the DSAC\* style loss\.$"):
        AceLoss(LossConfig("dsac*", PriorConfig("laplace_nll")), use_depth=False)
    probabilistic = AceLoss(LossConfig("probabilistic", PriorConfig("none")), use_depth=False)  # builds
    with pytest.raises(UserError, match="^Probabilistic loss needs a prior_loss_type. Using none will almost "
                                        "certainly degenerate.$"):
        probabilistic.compute(_inputs([1.0], [2.0]))
    with pytest.raises(UserError, match="rgbd_laplace_nll needs depth"):
        AceLoss(LossConfig("probabilistic", PriorConfig("rgbd_laplace_nll")), use_depth=False)
    with pytest.raises(UserError, match="cannot be downloaded here"):
        AceLoss(LossConfig("dsac*", PriorConfig("diffusion")), use_depth=False)
    state_dict = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, state_dict)
    with pytest.raises(UserError, match="scr-priors"):
        load_diffusion_regulariser(state_dict, "cpu")


def _error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def _raises(main, argv) -> str:
    with pytest.raises(UserError) as error:
        main([str(a) for a in argv])
    return str(error.value)


def test_cli_errors(small_scene, tmp_path):
    import ace_zero
    import train_ace
    base = [f"{small_scene}/images/*.png", tmp_path / "m.pt", "--pose_files", f"{small_scene}/poses/*.txt",
            "--use_external_focal_length", 262.5, "--device", "cpu"]
    # as the user sees it: one line, no traceback
    line = _error_line(run_cli("train_ace.py", *base, "--prior_loss_type", "laplace_wd", check=False))
    assert line == "error: Only diffusion prior_loss_type is supported with the DSAC* style loss."
    message = _raises(train_ace.main, [*base, "--prior_loss_type", "diffusion"])
    assert "needs --prior_diffusion_model_path" in message and "cannot be downloaded here" in message
    assert "not found" in _raises(train_ace.main, [*base, "--prior_loss_type", "diffusion",
                                                   "--prior_diffusion_model_path", tmp_path / "none.pt"])
    assert "needs depth maps" in _raises(train_ace.main, [*base, "--loss_structure", "probabilistic",
                                                          "--prior_loss_type", "rgbd_laplace_nll"])
    assert "auto need depth" in _raises(train_ace.main, [*base, "--loss_structure", "probabilistic",
                                                         "--prior_loss_type", "laplace_nll",
                                                         "--prior_loss_location", "auto"])
    with pytest.raises(SystemExit):
        train_ace.build_parser().parse_args([*map(str, base), "--prior_loss_location", "near"])
    zero = [f"{small_scene}/images/*.png", tmp_path / "r", "--device", "cpu"]
    line = _error_line(run_cli("ace_zero.py", *zero, "--loss_structure", "probabilistic", check=False))
    assert line == "error: Probabilistic loss needs a prior_loss_type. Using none will almost certainly degenerate."
    assert "needs --depth_files" in _raises(ace_zero.main, [*zero, "--depth_use_always", "True"])
    assert "--depth_use_always True" in _raises(ace_zero.main, [*zero, "--loss_structure", "probabilistic",
                                                                "--prior_loss_type", "rgbd_laplace_nll",
                                                                "--depth_files", f"{small_scene}/depth/*.png"])
    assert "DSAC*" in _raises(ace_zero.main, [*zero, "--prior_loss_type", "laplace_nll"])


def test_help_lists_prior_flags():
    import ace_zero
    import train_ace
    for module in (train_ace, ace_zero):
        text = module.build_parser().format_help()
        for flag in ("--loss_structure", "--prior_loss_type", "--prior_loss_weight", "--prior_loss_bandwidth",
                     "--prior_loss_location", "--prior_diffusion_model_path", "--prior_diffusion_start_step",
                     "--prior_diffusion_warmup_steps", "--prior_diffusion_subsample", "--render_depth_hist"):
            assert flag in text, (module, flag)
    assert "--depth_use_always" in ace_zero.build_parser().format_help()


def test_ace_zero_passes_priors_to_every_mapping_call():
    import ace_zero
    args = ace_zero.build_parser().parse_args(
        ["x/*.png", "out", "--loss_structure", "probabilistic", "--prior_loss_type", "laplace_nll",
         "--prior_loss_weight", "0.1", "--prior_loss_bandwidth", "auto", "--prior_loss_location", "auto"])
    rounds = [str(v) for v in ace_zero.prior_args(args, False, 2.0, 0.69)]
    assert rounds[:10] == ["--loss_structure", "probabilistic", "--prior_loss_type", "laplace_nll",
                           "--prior_loss_weight", "0.1", "--prior_loss_bandwidth", "0.69", "--prior_loss_location",
                           "2.0"]
    seed = [str(v) for v in ace_zero.prior_args(args, True)]
    assert seed[:4] == ["--loss_structure", "dsac*", "--prior_loss_type", "none"]  # the seed keeps its depth
    args.seed_probabilistic_depth = False
    assert [str(v) for v in ace_zero.prior_args(args, True)][:2] == ["--loss_structure", "probabilistic"]
    args.refit = True
    assert "dyntanh" not in [str(v) for v in ace_zero.mapping_args(args, True)]  # refit keeps tanh
    args.loss_structure = "dsac*"
    assert "dyntanh" in [str(v) for v in ace_zero.mapping_args(args, True)]


# ----------------------------------------------------------------------------------------------------------------
# train_depth_prior.py

def test_train_depth_prior(tmp_path, capsys):
    rng = np.random.default_rng(4)
    values = []
    for i in range(3):
        depth_mm = np.clip(rng.laplace(1730, 600, (40, 50)), 0, 65535).astype(np.uint16)
        depth_mm[:3] = 0  # missing measurements
        cv2.imwrite(str(tmp_path / f"d{i}.png"), depth_mm)
        values.append(depth_mm[depth_mm > 0] / 1000.0)
    eight_bit = np.full((10, 10), 7, np.uint8)  # 7 * 256 mm
    cv2.imwrite(str(tmp_path / "e.pgm"), eight_bit)
    values.append(np.full(100, 7 * 256 / 1000.0))
    pooled = np.concatenate(values)
    import train_depth_prior
    train_depth_prior.main([f"{tmp_path}/*.*", "--plot", "--output_png", str(tmp_path / "fit.png")])
    out = capsys.readouterr().out
    location = float(out.split("Laplace location:")[1].split()[0])
    scale = float(out.split("Laplace scale:")[1].split()[0])
    median = np.median(pooled)
    assert location == pytest.approx(median, abs=6e-4)
    assert scale == pytest.approx(np.abs(pooled - median).mean(), abs=6e-4)
    assert cv2.imread(str(tmp_path / "fit.png")) is not None
    assert train_depth_prior.sample_files(f"{tmp_path}/*.png", 2, 42) == \
        train_depth_prior.sample_files(f"{tmp_path}/*.png", 2, 42)  # reproducible sample
    assert len(train_depth_prior.sample_files(f"{tmp_path}/*.png", 2, 42)) == 2
    missing = run_cli("train_depth_prior.py", f"{tmp_path}/none*.png", check=False)
    assert _error_line(missing).startswith("error: glob_pattern: no files match")


def test_constants_match_reference():
    assert ace_loss.DIFFUSION_MIN_ERROR_PX == 30 and ace_loss.DIFFUSION_EVERY == 4
    assert ace_loss.DEPTH_SUPERVISION_RADIUS == 0.1


def test_depth_histogram_draws_in_the_left_corner():
    from ace_visualizer import draw_histogram
    frame = np.full((360, 640, 3), 100, np.uint8)
    bins = np.repeat(np.array([[200, 200, 200]], np.uint8), 40, axis=0)
    draw_histogram(frame, np.random.default_rng(0).uniform(0, 4, 500), (0.0, 4.0), bins, "depth 0-4.00",
                   left_corner=True)
    assert (frame[:, :320] != 100).any() and (frame[:, 320:] == 100).all()


def test_ace_zero_auto_prior_from_the_seed(small_scene):
    import ace_zero
    import dataset_io
    args = ace_zero.build_parser().parse_args(
        [f"{small_scene}/images/*.png", "out", "--depth_files", f"{small_scene}/depth/*.png", "--try_seeds", "2",
         "--loss_structure", "probabilistic", "--prior_loss_type", "laplace_nll", "--prior_loss_location", "auto",
         "--prior_loss_bandwidth", "auto"])
    state = ace_zero.RunState(args.rgb_files, seed_id="iteration0_seed1")
    index = int(ace_zero.seed_values(args)[1] * 4)
    depth = dataset_io.load_depth_png(sorted(str(p) for p in small_scene.glob("depth/*.png"))[index])
    median = float(np.median(depth[depth > 0]))
    assert ace_zero.resolved_prior(args, state) == pytest.approx((median, median * 0.6 / 1.73))
    # without depth files: the two-view seed's normalisation
    args = ace_zero.build_parser().parse_args([f"{small_scene}/images/*.png", "out", "--prior_loss_location",
                                               "auto", "--seed_depth", "twoview"])
    assert ace_zero.resolved_prior(args, state) == pytest.approx((2.0, 0.1))


def test_dsac_star_value_against_numpy():
    """The dsac* structure (the ACE0 loss before the priors): tanh for valid predictions, the L1 pull to the
    proxy point at depth_target for invalid ones without a target, the Euclidean distance to the target for
    invalid ones with a target; a prediction > 0.1 from its target is invalid."""
    rng = np.random.default_rng(5)
    count = 64
    depths = rng.uniform(-1, 5, count)
    errors = rng.uniform(0, 1500, count)
    targets = rng.normal(0, 1, (count, 3))
    targets[::3] = 0  # no target
    inputs = _inputs(errors.tolist(), depths.tolist(), torch.tensor(targets, dtype=torch.float32))
    scene = inputs.scene.detach().numpy().astype(np.float64)
    near = np.linalg.norm(scene - targets, axis=1) <= 0.1
    near[::4] = True
    targets[near] = scene[near] + 0.01  # some predictions within the radius of their target
    inputs.targets = torch.tensor(targets, dtype=torch.float32)
    has = np.abs(targets).sum(axis=1) > 1e-5
    far = np.linalg.norm(scene - targets, axis=1) > 0.1
    valid = (depths > 0.1) & (errors < 1000) & (depths < 1000) & ~(has & far)
    scale = 51.0
    expected = (scale * np.tanh(errors[valid] / scale)).sum()
    supervised = ~valid & has
    expected += np.linalg.norm(scene[supervised] - targets[supervised], axis=1).sum()
    proxy = np.array([0, 0, 10.0])
    pulled = ~valid & ~has
    expected += np.abs(scene[pulled] - proxy).sum()
    inliers, value = AceLoss(LossConfig(), use_depth=True).compute(inputs)
    assert float(value) == pytest.approx(expected / count, rel=1e-5)
    assert inliers == pytest.approx(((errors < 10) & valid).mean())


@pytest.mark.parametrize("loss_type", ["tanh", "l1", "l1+sqrt", "log"])
def test_masked_reprojection_loss_against_numpy(loss_type):
    """The robust loss over masked errors (a mask, so that the GPU need not count them) equals numpy's sum over the
    selected errors, and its gradient stays finite where errors are 0, infinite or masked."""
    rng = np.random.default_rng(3)
    errors = np.concatenate([rng.uniform(0, 200, 40), [0.0, 0.0, np.inf, 75.0]])
    mask = rng.random(len(errors)) < 0.7
    mask[-4:] = [True, False, False, True]
    scale = 50.0
    picked = errors[mask]
    small, large = picked[picked <= scale], picked[picked > scale]
    expected = {"tanh": (scale * np.tanh(picked / scale)).sum(), "l1": small.sum(),
                "l1+sqrt": small.sum() + np.sqrt(scale * large).sum(),
                "log": small.sum() + np.log(1 + scale * large).sum()}[loss_type]
    tensor = torch.tensor(errors, dtype=torch.float64, requires_grad=True)
    value = ace_loss.reprojection_loss(tensor, loss_type, scale, torch.tensor(mask))
    value.backward()
    assert float(value) == pytest.approx(expected, rel=1e-12)
    assert torch.isfinite(tensor.grad).all()
    assert (tensor.grad[~torch.tensor(mask)] == 0).all()
