"""Pose refiner parameterisations and the centre gauge, against scipy and analytic cases."""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from conftest import ring_world_to_cam
from refine_poses import PoseRefiner, camera_centres, hold_centre_gauge, rotate_and_move


def _ring_poses(count: int = 8, radius: float = 2.0, span: float = np.pi) -> torch.Tensor:
    return torch.tensor(ring_world_to_cam(count, radius, span), dtype=torch.float64)


def _pairwise_angles(poses: torch.Tensor) -> np.ndarray:
    rotations = Rotation.from_matrix(poses[:, :, :3].numpy())
    return np.array([(rotations[i] * rotations[j].inv()).magnitude() for i in range(len(poses))
                     for j in range(i + 1, len(poses))])


def test_rotate_and_move_matches_scipy():
    poses = _ring_poses(3)
    vectors = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.0, 0.0], [-0.5, 0.1, 0.0]], dtype=torch.float64)
    shifts = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.1, 0.0, -0.1]], dtype=torch.float64)
    moved = rotate_and_move(poses, vectors, shifts)
    for index in range(3):
        expected = Rotation.from_rotvec(vectors[index].numpy()).as_matrix() @ poses[index, :, :3].numpy()
        assert np.allclose(moved[index, :, :3].numpy(), expected, atol=1e-9)
    assert torch.allclose(camera_centres(moved), camera_centres(poses) + shifts, atol=1e-9)


def test_common_correction_collapses_additive_but_not_rotation_updates():
    """The failure mode the rotation update removes: one large correction shared by all cameras."""
    poses = _ring_poses().float()
    additive = PoseRefiner(poses, "naive", update="additive")
    with torch.no_grad():
        additive.poses += torch.tensor([[3.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 3.0, 0]])  # same addend for all
    rotation = PoseRefiner(poses, "naive", update="rotation")
    with torch.no_grad():
        rotation.poses[:, :3] += torch.tensor([0.4, -0.3, 0.2])
    before = _pairwise_angles(poses.double())
    assert _pairwise_angles(additive().detach().double()).mean() < 0.5 * before.mean()
    assert np.allclose(_pairwise_angles(rotation().detach().double()), before, atol=1e-4)


def test_centre_gauge_undoes_a_similarity_and_passes_relative_motion():
    poses = _ring_poses()
    # the same rig, scaled by 3 and moved: the gauge gives back the initial centres exactly
    centres = 3.0 * camera_centres(poses) + torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    scaled = torch.cat([poses[:, :, :3], -(poses[:, :, :3] @ centres[:, :, None])], dim=2)
    held = hold_centre_gauge(scaled, poses)
    assert torch.allclose(camera_centres(held), camera_centres(poses), atol=1e-9)
    assert torch.equal(held[:, :, :3], scaled[:, :, :3])
    # one camera moved alone: the others keep their relative layout, centroid and spread stay
    moved = rotate_and_move(poses, torch.zeros(len(poses), 3, dtype=torch.float64),
                            torch.cat([torch.tensor([[0.3, 0.0, 0.0]]), torch.zeros(len(poses) - 1, 3)]).double())
    held = camera_centres(hold_centre_gauge(moved, poses))
    initial = camera_centres(poses)
    assert torch.allclose(held.mean(0), initial.mean(0), atol=1e-9)
    assert torch.allclose((held - held.mean(0)).pow(2).sum(1).mean(), (initial - initial.mean(0)).pow(2).sum(1).mean())


def test_centre_gauge_gives_no_gradient_along_scale():
    poses = _ring_poses()
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    scaled = torch.cat([poses[:, :, :3], scale * poses[:, :, 3:]], dim=2)
    # any loss of the held centres: moving every camera away from the centroid changes nothing
    loss = camera_centres(hold_centre_gauge(scaled, poses)).pow(2).sum()
    loss.backward()
    assert abs(float(scale.grad)) < 1e-9


def test_standardised_input_centres_and_scales_each_pose_value():
    poses = _ring_poses(6).float()
    poses[:, 1, 3] = 0.5  # one value all cameras share: kept at zero, not blown up
    refiner = PoseRefiner(poses, "mlp", mlp_input="standardised")
    flat = refiner._mlp_inputs(refiner.initial).numpy()
    values = poses.reshape(-1, 12).numpy()
    varying = values.std(0) > 1e-3
    assert np.allclose(flat.mean(0), 0, atol=1e-5)
    assert np.allclose(flat.std(0)[varying], 1, atol=1e-4)
    assert np.allclose(flat[:, ~varying], 0, atol=1e-5)
    raw = PoseRefiner(poses, "mlp")  # the original reads the pose values as they are
    assert float(raw.input_centre) == 0 and float(raw.input_scale) == 1


def _fit_individual_corrections(mlp_input: str, targets: torch.Tensor, poses: torch.Tensor, steps: int) -> float:
    """Median angle (deg) left between the refiner's rotation corrections and `targets` after `steps` Adam steps."""
    torch.manual_seed(0)
    refiner = PoseRefiner(poses, "mlp", learning_rate=3e-3, update="rotation", mlp_input=mlp_input)
    for _ in range(steps):
        refiner.zero_grad_step()
        change = refiner.mlp_weight * refiner._ask_mlp(refiner.initial)
        (change[:, :3] - targets).pow(2).sum().backward()
        refiner.step()
    change = refiner.mlp_weight * refiner._ask_mlp(refiner.initial)
    return float(np.degrees((change[:, :3] - targets).norm(dim=1).median().item()))


def test_standardised_input_learns_individual_corrections_faster():
    # cameras 4.3 deg apart (a close ring), each needing its own 3 deg turn, as after a noisy registration
    poses = _ring_poses(12, radius=0.6, span=np.radians(47)).float()
    generator = torch.Generator().manual_seed(1)
    directions = torch.nn.functional.normalize(torch.randn(12, 3, generator=generator), dim=1)
    targets = directions * np.radians(3.0)
    # After 100 steps, while the raw input is still far off: near convergence (300 steps and more) both sit at
    # Adam's noise floor, whose size depends on the CPU's float kernels (measured 0.004-0.036 deg for each).
    raw = _fit_individual_corrections("pose", targets, poses, 100)
    standardised = _fit_individual_corrections("standardised", targets, poses, 100)
    assert standardised < 0.1 * raw, (standardised, raw)  # measured: 0.087 against 1.14-1.25 deg (AVX-512, none)


def _refiner_after_one_step(poses: torch.Tensor, loss_factor: float, scaler: torch.amp.GradScaler | None
                            ) -> tuple[PoseRefiner, torch.Tensor]:
    """The refiner after one step on a loss times `loss_factor`, and its poses before that step."""
    torch.manual_seed(0)
    refiner = PoseRefiner(poses, "mlp", learning_rate=3e-3, update="rotation")
    with torch.no_grad():  # a non-zero last layer, so that every weight gets a gradient
        refiner.mlp.fc3.weight.normal_(0, 0.01)
        before = refiner().clone()
    refiner.zero_grad_step()
    loss = loss_factor * (refiner()[:, :, 3] - 1.0).pow(2).sum()
    (loss if scaler is None else scaler.scale(loss)).backward()
    refiner.step(scaler)
    return refiner, before


def test_refiner_steps_through_the_grad_scaler_of_mixed_precision():
    """Under mixed precision the loss is scaled (2^16) before backward: the refiner must take the unscaled step,
    and skip the step of an overflowed loss instead of writing inf into its Adam moments."""
    poses = _ring_poses(6, radius=0.6, span=np.radians(40)).float()
    reference, before = _refiner_after_one_step(poses, 1.0, None)
    scaled, _ = _refiner_after_one_step(poses, 1.0, torch.amp.GradScaler("cpu", init_scale=2.0 ** 16))
    assert torch.allclose(scaled(), reference(), atol=1e-6)
    assert not torch.allclose(reference(), before, atol=1e-6)  # the step did move the poses
    overflowed, before = _refiner_after_one_step(poses, float("inf"), torch.amp.GradScaler("cpu", init_scale=2.0 ** 16))
    assert torch.isfinite(overflowed()).all()
    assert torch.allclose(overflowed(), before, atol=1e-6)
    steps = overflowed.optimizer.state_dict()["state"]
    assert all(torch.isfinite(v["exp_avg"]).all() for v in steps.values())


def test_cpu_profile_of_the_mlp_refiner_applies_only_to_it_and_keeps_typed_flags(caplog):
    """On CPU the mlp refiner gets the settings with which it refines in short rounds (cli_common), in train_ace.py
    and in ace_zero.py's rounds; a typed flag wins; without the refiner, and on a GPU, nothing changes."""
    import ace_zero
    import train_ace
    from cli_common import CPU_REFINER_PROFILE
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for script, method_flag in ((train_ace, "--pose_refinement"), (ace_zero, "--refinement")):
        parser = script.build_parser()
        argv = ["images/*", "out", method_flag, "mlp", "--pose_refinement_lr", "0.0005"]
        args = parser.parse_args(argv)
        with caplog.at_level("INFO"):
            script.apply_cpu_profiles(args, parser, cpu, argv)
        assert "CPU profile of the mlp refiner (override any with its flag): --pose_refinement_update rotation, " \
            "--pose_refinement_gauge centres" in caplog.text
        assert args.pose_refinement_lr == 0.0005  # typed
        for name, value in CPU_REFINER_PROFILE.items():
            if name != "pose_refinement_lr":
                assert getattr(args, name) == value, name
        on_gpu = parser.parse_args(argv)
        script.apply_cpu_profiles(on_gpu, parser, gpu, argv)
        assert (on_gpu.pose_refinement_update, on_gpu.match_loss_weight) == ("additive", 0.0)
    for script, argv in ((train_ace, ["images/*", "out.pt"]), (ace_zero, ["images/*", "out"])):
        parser = script.build_parser()
        args = parser.parse_args(argv)
        script.apply_cpu_profiles(args, parser, cpu, argv)
        assert (args.pose_refinement_update, args.pose_refinement_gauge, args.pose_refinement_input,
                args.pose_refinement_lr, args.pose_refinement_wait, args.match_loss_weight) == \
            ("additive", "none", "pose", 0.001, 0, 0.0)
