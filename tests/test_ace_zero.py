"""ace_zero.py end to end on a scene the project renders itself: completing a partial reconstruction (the
README's "Start From a Partial Reconstruction"), accuracy after alignment, resumption, errors."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import dataset_io
from cli_common import UserError
from conftest import ORBIT_FOCAL, ORBIT_LOOP_FLAGS, run_cli
from eval_poses import evaluate


@pytest.fixture(scope="module")
def reconstruction(orbit_scene, orbit_head, tmp_path_factory):
    """Seed network = a head mapped on the even views with known poses; ACE0 registers and maps all views."""
    out = tmp_path_factory.mktemp("ace_zero")
    shutil.copyfile(orbit_head, out / "iteration0_seed0.pt")
    result = run_cli("ace_zero.py", f"{orbit_scene}/images/*.png", out, "--seed_network",
                     out / "iteration0_seed0.pt", *ORBIT_LOOP_FLAGS)
    return out, result


def test_reconstruction_accuracy(reconstruction, orbit_scene):
    out, _ = reconstruction
    entries = sorted(dataset_io.read_ace_pose_file(out / "poses_final.txt"), key=lambda e: e.path)
    assert len(entries) == 16
    gt = [dataset_io.load_cam_to_world(p) for p in sorted(orbit_scene.glob("poses/*.pose.txt"))]
    # The seed network was mapped in the ground-truth frame, so ACE0's poses are in that frame too: compare
    # directly (a similarity fitted to an arc of camera positions would add its own tilt).
    result = evaluate(entries, gt, estimate_alignment=False, thresh_t=0.10, thresh_r=5.0)
    assert result["num_registered"] >= 14
    assert result["median_rot_err_deg"] < 2.0
    assert result["median_trans_err"] < 0.10  # metres, cameras orbit at ~2 m
    assert entries[0].focal == pytest.approx(ORBIT_FOCAL)


def test_reconstruction_files(reconstruction):
    out, result = reconstruction
    for name in ("iteration1.pt", "iteration1.txt", "poses_iteration1_preliminary.txt", "poses_iteration1.txt",
                 "poses_final.txt", "ace_zero_state.json"):
        assert (out / name).is_file(), name
    assert (out / "poses_iteration0_seed0.txt").is_file()
    state = json.loads((out / "ace_zero_state.json").read_text())
    # On CPU the final registration is gated (gate_registrations.py), bundle-adjusted (bundle_adjust.py), then
    # verified (verify_poses.py, which changes confidences only) into poses_final.txt.
    gated = out / f"poses_{state['completed'][-1]}_gated.txt"
    assert gated.with_suffix(".gate.json").is_file()
    adjusted = gated.with_name(gated.stem + "_adjusted.txt")
    assert state["finished"] and adjusted.with_name(adjusted.stem + "_verified.txt").read_text() == \
        (out / "poses_final.txt").read_text()
    poses = [line.split()[:-1] for line in adjusted.read_text().splitlines()]
    assert poses == [line.split()[:-1] for line in (out / "poses_final.txt").read_text().splitlines()]
    assert (out / "poses_final_verification.json").is_file()
    assert "registered: " in result.stderr and "@500" in result.stderr


@pytest.mark.slow
def test_rerun_resumes(reconstruction, orbit_scene):
    """A run interrupted during its final polish (state finished, poses_final.txt not yet written) is completed by
    a rerun without re-running any stage: no mapping, registration or bundle adjustment (the adjusted poses of
    the first run are reused). Resuming an unfinished round is checked stage by stage in
    test_resume_runs_only_the_unfinished_round."""
    out, _ = reconstruction
    state_file = out / "ace_zero_state.json"
    state = json.loads(state_file.read_text())
    final = out / "poses_final.txt"
    expected = final.read_text()
    final.unlink()
    kept = [out / f"{run_id}.pt" for run_id in state["completed"]]
    kept_times = [path.stat().st_mtime for path in kept]
    adjusted = out / f"poses_{state['completed'][-1]}_gated_adjusted.txt"  # the CPU profile gates every round
    adjusted_time = adjusted.stat().st_mtime
    result = run_cli("ace_zero.py", f"{orbit_scene}/images/*.png", out, "--seed_network",
                     out / "iteration0_seed0.pt", *ORBIT_LOOP_FLAGS)
    assert f"resuming after {state['completed'][-1]}" in result.stderr
    assert "running " not in result.stderr, "no stage may run again"
    assert [path.stat().st_mtime for path in kept] == kept_times, "finished stages must not be redone"
    assert adjusted.stat().st_mtime == adjusted_time
    assert final.read_text() == expected
    assert json.loads(state_file.read_text())["finished"]


def _stand_in_round(script: str, arguments: list[str], images: list[str]) -> bool:
    """train_ace.py and register_mapping.py replaced by stand-ins that write their outputs (every image registered
    with confidence 2000); False for any other stage."""
    if script == "train_ace.py":
        head = Path(arguments[1])
        head.write_bytes(b"head")
        dataset_io.write_ace_pose_file(head.parent / f"poses_{head.stem}_preliminary.txt", [
            dataset_io.PoseEntry(p, np.eye(4), ORBIT_FOCAL, float("inf")) for p in images])
    elif script == "register_mapping.py":
        session = arguments[arguments.index("--session") + 1]
        dataset_io.write_ace_pose_file(Path(arguments[1]).parent / f"poses_{session}.txt", [
            dataset_io.PoseEntry(p, np.eye(4), ORBIT_FOCAL, 2000.0) for p in images])
    else:
        return False
    return True


def _stand_in_stages(images: list[str], calls: list, gate=None):
    """A run_script replacement that records each call (arguments as strings) in `calls`, runs the round's
    stand-ins (_stand_in_round) and hands gate_registrations.py's arguments to `gate`; any other stage fails."""
    def stage(script, arguments, threads=None, label=""):
        arguments = [str(a) for a in arguments]
        calls.append((script, arguments))
        if _stand_in_round(script, arguments, images):
            return
        if script != "gate_registrations.py" or gate is None:
            raise AssertionError(f"unexpected stage {script}")
        gate(arguments)
    return stage


def _after_seed(out: Path, pattern: str, images: list[str], confidences: list[float]):
    """The state of a run whose seed registered `images` with these confidences (its pose file written), its rate
    the share at or above 500."""
    import ace_zero
    dataset_io.write_ace_pose_file(out / "poses_iteration0_seed0.txt", [
        dataset_io.PoseEntry(p, np.eye(4), ORBIT_FOCAL, c) for p, c in zip(images, confidences)])
    rate = float(np.mean(np.array(confidences) >= 500))
    return ace_zero.RunState(pattern, seed_id="iteration0_seed0", completed=["iteration0_seed0"],
                             rates={"iteration0_seed0": rate}, max_rate=rate)


def test_resume_refuses_another_encoder(tmp_path):
    """A run's heads load only with the encoder they were mapped with: resuming with another is refused at once,
    naming the one to pass; a state written before the encoder was recorded resumes as before."""
    import ace_zero
    ace_zero.RunState.load_or_create(tmp_path, "*.png", "xfeat").save(tmp_path)
    assert ace_zero.RunState.load_or_create(tmp_path, "*.png", "xfeat").encoder_path == "xfeat"
    with pytest.raises(UserError, match="begun with --encoder_path xfeat: pass that"):
        ace_zero.RunState.load_or_create(tmp_path, "*.png", "xfeat-reflect")
    (tmp_path / ace_zero.STATE_FILE).write_text(json.dumps({"rgb_files": "*.png", "completed": ["iteration1"]}))
    assert ace_zero.RunState.load_or_create(tmp_path, "*.png", "xfeat-reflect").completed == ["iteration1"]


def test_resume_runs_only_the_unfinished_round(tmp_path, monkeypatch):
    """Resumption with the stages replaced by stand-ins that write their outputs: after the seed and round 1, a
    rerun maps and registers round 2 only, from round 1's poses and head."""
    import ace_zero
    out = tmp_path / "out"
    out.mkdir()
    images = [str(tmp_path / f"frame_{i}.png") for i in range(4)]
    pattern = str(tmp_path / "frame_*.png")
    state = ace_zero.RunState(pattern, seed_id="iteration0_seed0", completed=["iteration0_seed0", "iteration1"],
                              rates={"iteration0_seed0": 0.5, "iteration1": 0.75}, max_rate=0.75)
    state.save(out)
    calls = []
    monkeypatch.setattr(ace_zero, "run_script", _stand_in_stages(images, calls))
    args = ace_zero.build_parser().parse_args([pattern, str(out), "--iterations_max", "3", "--device", "cpu",
                                               "--use_external_focal_length", str(ORBIT_FOCAL)])
    last = ace_zero.reconstruct(args, ace_zero.RunState.load_or_create(out, pattern), ORBIT_FOCAL)
    assert last == "iteration2"
    assert [script for script, _ in calls] == ["train_ace.py", "register_mapping.py"]
    mapping = calls[0][1]
    assert mapping[1] == str(out / "iteration2.pt")
    assert mapping[mapping.index("--use_ace_pose_file") + 1] == str(out / "poses_iteration1.txt")
    assert mapping[mapping.index("--load_weights") + 1] == str(out / "iteration1.pt")
    saved = json.loads((out / "ace_zero_state.json").read_text())
    assert saved["completed"] == ["iteration0_seed0", "iteration1", "iteration2"] and saved["finished"]
    assert saved["rates"]["iteration2"] == 1.0


@pytest.mark.parametrize("gate_fails", [False, True])
def test_registration_gate_in_the_loop(tmp_path, monkeypatch, gate_fails):
    """--registration_gate with stand-in stages: each round's registration is gated against the file that round
    mapped from, the next round maps from the gated file, the registration rate counts what the gate kept, and the
    final poses come from the last gated registration; a failed gate lets the registration go on as it is."""
    import ace_zero
    out = tmp_path / "out"
    out.mkdir()
    images = [str(tmp_path / f"frame_{i}.png") for i in range(4)]
    pattern = str(tmp_path / "frame_*.png")
    state = _after_seed(out, pattern, images, [2000.0, 2000.0, 10.0, 10.0])
    calls = []

    def gate(arguments):
        if gate_fails:
            raise UserError("gate_registrations.py failed with exit code 1")
        earlier = {e.path: e.confidence for e in dataset_io.read_ace_pose_file(arguments[
            arguments.index("--earlier_poses") + 1])}
        entries = dataset_io.read_ace_pose_file(arguments[0])  # frame_3 is always held back when new
        dataset_io.write_ace_pose_file(Path(arguments[1]), [dataclasses.replace(e, confidence=100.0) if (
            e.path == images[3] and earlier[e.path] < 500) else e for e in entries])

    monkeypatch.setattr(ace_zero, "run_script", _stand_in_stages(images, calls, gate))
    args = ace_zero.build_parser().parse_args([pattern, str(out), "--iterations_max", "3", "--device", "cpu",
                                               "--use_external_focal_length", str(ORBIT_FOCAL), "--final_refine",
                                               "False", "--registration_gate", "True"])
    last = ace_zero.reconstruct(args, state, ORBIT_FOCAL)
    gates = [arguments for script, arguments in calls if script == "gate_registrations.py"]
    mappings = [arguments for script, arguments in calls if script == "train_ace.py"]
    assert gates[0][:2] == [str(out / "poses_iteration1.txt"), str(out / "poses_iteration1_gated.txt")]
    assert gates[0][gates[0].index("--earlier_poses") + 1] == str(out / "poses_iteration0_seed0.txt")
    assert state.rates["iteration1"] == (1.0 if gate_fails else 0.75)
    if gate_fails:  # every image counts as registered: the loop stops
        assert len(mappings) == 1
    else:
        assert mappings[1][mappings[1].index("--use_ace_pose_file") + 1] == str(out / "poses_iteration1_gated.txt")
        assert gates[1][gates[1].index("--earlier_poses") + 1] == str(out / "poses_iteration1_gated.txt")
    final = ace_zero.registration_file(args, state, last)
    assert final == out / f"poses_{last}_gated.txt"
    confidences = [e.confidence for e in dataset_io.read_ace_pose_file(final)]
    assert confidences == ([2000.0] * 4 if gate_fails else [2000.0] * 3 + [100.0])
    assert ace_zero.registration_file(args, state, "iteration0_seed0") == out / "poses_iteration0_seed0.txt"


def test_seed_registration_is_resected_in_the_loop(tmp_path, monkeypatch):
    """--registration_resection with stand-in stages: the seed's registration goes through gate_registrations.py
    with --seed_image set to the image the seed was mapped from (the --use_pose_seed fraction of the sorted
    images), once, and round 1 maps from the stage's file, with the seed's rate that of the stage's file."""
    import ace_zero
    out = tmp_path / "out"
    out.mkdir()
    images = [str(tmp_path / f"frame_{i}.png") for i in range(8)]
    pattern = str(tmp_path / "frame_*.png")
    for image in images:
        Path(image).touch()
    state = _after_seed(out, pattern, images, [2000.0] * len(images))
    calls = []

    def gate(arguments):
        entries = dataset_io.read_ace_pose_file(arguments[0])  # the seed stage holds one image back
        held = "--seed_image" in arguments
        dataset_io.write_ace_pose_file(Path(arguments[1]), [dataclasses.replace(e, confidence=100.0) if (
            held and e.path == images[-1]) else e for e in entries])

    monkeypatch.setattr(ace_zero, "run_script", _stand_in_stages(images, calls, gate))
    args = ace_zero.build_parser().parse_args([pattern, str(out), "--iterations_max", "2", "--device", "cpu",
                                               "--use_external_focal_length", str(ORBIT_FOCAL), "--final_refine",
                                               "False", "--registration_resection", "True", "--try_seeds", "1"])
    ace_zero.reconstruct(args, state, ORBIT_FOCAL)
    gates = [arguments for script, arguments in calls if script == "gate_registrations.py"]
    seed_fraction = np.random.RandomState(args.random_seed).uniform(size=1)[0]  # ace_zero.seed_values' draw
    assert gates[0][:2] == [str(out / "poses_iteration0_seed0.txt"), str(out / "poses_iteration0_seed0_gated.txt")]
    assert gates[0][gates[0].index("--seed_image") + 1] == images[int(seed_fraction * len(images))]
    assert "--resect" in gates[0] and sum("--seed_image" in g for g in gates) == 1
    assert state.rates["iteration0_seed0"] == 7 / 8
    mapping = next(arguments for script, arguments in calls if script == "train_ace.py")
    assert mapping[mapping.index("--use_ace_pose_file") + 1] == str(out / "poses_iteration0_seed0_gated.txt")


@pytest.mark.parametrize("gate, resection", [(True, False), (False, True), (True, True)])
def test_registration_resection_runs_the_gate_stage(tmp_path, monkeypatch, gate, resection):
    """--registration_resection runs gate_registrations.py with --resect; without --registration_gate it holds
    nothing back (no largest miss); each round then maps from the stage's file."""
    import ace_zero
    out = tmp_path / "out"
    out.mkdir()
    dataset_io.write_ace_pose_file(out / "poses_iteration1.txt", [
        dataset_io.PoseEntry(str(tmp_path / "a.png"), np.eye(4), ORBIT_FOCAL, 2000.0)])
    calls = []

    def stage(script, arguments, threads=None, label=""):
        calls.append([str(a) for a in arguments])
        Path(arguments[1]).write_text(Path(arguments[0]).read_text())

    monkeypatch.setattr(ace_zero, "run_script", stage)
    args = ace_zero.build_parser().parse_args([str(tmp_path / "*.png"), str(out), "--device", "cpu",
                                               "--registration_gate", str(gate),
                                               "--registration_resection", str(resection)])
    assert ace_zero.gate_registration(args, "iteration1",
                                      ["--earlier_poses", out / "poses_iteration0_seed0.txt"]) == 1.0
    (arguments,) = calls
    assert ("--resect" in arguments) == resection
    assert float(arguments[arguments.index("--max_miss") + 1]) == (args.registration_gate_max_miss if gate
                                                                   else float("inf"))
    assert ("--hold_unjudged" in arguments) == gate  # resection alone holds nothing back
    state = ace_zero.RunState(str(tmp_path / "*.png"), seed_id="iteration0_seed0")
    assert ace_zero.registration_file(args, state, "iteration1") == out / "poses_iteration1_gated.txt"
    # the seed's registration goes through the stage only to resect its first ring
    seed_gated = ace_zero.registration_file(args, state, "iteration0_seed0") == out / "poses_iteration0_seed0_gated.txt"
    assert seed_gated == resection


@pytest.mark.parametrize("adjustment_fails", [False, True])
def test_round_bundle_adjustment(tmp_path, monkeypatch, adjustment_fails):
    """--round_bundle_adjustment with stand-in stages: round 2 maps from round 1's registration after
    bundle_adjust.py (with the focal length it refined, which the round keeps), the adjustment reruns only when the
    registration is newer, and a failed adjustment leaves the round mapping from the registration itself."""
    import ace_zero
    out = tmp_path / "out"
    out.mkdir()
    images = [str(tmp_path / f"frame_{i}.png") for i in range(4)]
    pattern = str(tmp_path / "frame_*.png")
    registered = [dataset_io.PoseEntry(p, np.eye(4), 300.0, 2000.0) for p in images]
    dataset_io.write_ace_pose_file(out / "poses_iteration1.txt", registered)
    calls = []

    def stage(script, arguments, threads=None, label=""):
        arguments = [str(a) for a in arguments]
        calls.append((script, arguments))
        if script == "bundle_adjust.py":
            if adjustment_fails:
                raise UserError("bundle_adjust.py failed with exit code 1")
            entries = dataset_io.read_ace_pose_file(Path(arguments[0]))
            dataset_io.write_ace_pose_file(Path(arguments[1]), [dataclasses.replace(e, focal=400.0) for e in entries])
        elif script == "train_ace.py":
            source = Path(arguments[arguments.index("--use_ace_pose_file") + 1])
            head = Path(arguments[1])
            entries = dataset_io.read_ace_pose_file(source)
            dataset_io.write_ace_pose_file(head.parent / f"poses_{head.stem}_preliminary.txt", entries)

    monkeypatch.setattr(ace_zero, "run_script", stage)
    args = ace_zero.build_parser().parse_args([pattern, str(out), "--device", "cpu", "--round_bundle_adjustment",
                                               "True", "--registration_confidence", "700"])
    run_id, focal, source = ace_zero.mapping_round(args, ace_zero.RunState(pattern), 2, "iteration1", 300.0)
    adjustment, mapping = calls[0][1], calls[1][1]
    assert calls[0][0] == "bundle_adjust.py" and adjustment[:2] == [str(out / "poses_iteration1.txt"),
                                                                    str(out / "poses_iteration1_adjusted.txt")]
    assert adjustment[adjustment.index("--refine_focal") + 1] == "True"
    assert mapping[mapping.index("--refine_calibration") + 1] == "False"  # the adjustment owns the focal
    assert adjustment[adjustment.index("--confidence_threshold") + 1] == "700"
    # round 1's registration has the focal that the seed's adjustment estimated: refined, not replaced
    assert adjustment[adjustment.index("--max_focal_change") + 1] == str(ace_zero.ESTIMATED_FOCAL_MAX_CHANGE)
    expected = "poses_iteration1.txt" if adjustment_fails else "poses_iteration1_adjusted.txt"
    assert mapping[mapping.index("--use_ace_pose_file") + 1] == str(out / expected)
    assert (run_id, focal, source) == ("iteration2", 300.0 if adjustment_fails else 400.0, out / expected)
    calls.clear()
    ace_zero.mapping_round(args, ace_zero.RunState(pattern), 2, "iteration1", 300.0)
    assert [script for script, _ in calls] == (["bundle_adjust.py"] if adjustment_fails else []) + ["train_ace.py"]


@pytest.mark.parametrize("flags, final, expected", [
    ([], False, "True"), ([], True, "True"),                                     # the original: always
    (["--round_use_aug", "False"], False, "False"), (["--round_use_aug", "False"], True, "False"),
    (["--final_use_aug", "False"], False, "True"), (["--final_use_aug", "False"], True, "False"),
    (["--round_use_aug", "False", "--final_use_aug", "True"], True, "True")])
def test_round_augmentation(tmp_path, monkeypatch, flags, final, expected):
    """--round_use_aug reaches train_ace.py's --use_aug in a mapping round (on by default, the original), and
    --final_use_aug overrides it in the round after the loop stopped (the final refit) only."""
    import ace_zero
    calls = []
    monkeypatch.setattr(ace_zero, "run_script", lambda script, arguments, threads=None, label="":
                        calls.append([str(a) for a in arguments]))
    monkeypatch.setattr(ace_zero, "registration_focal_of", lambda args, folder, run_id, fallback: fallback)
    pattern = str(tmp_path / "frame_*.png")
    args = ace_zero.build_parser().parse_args([pattern, str(tmp_path), "--device", "cpu", "--round_bundle_adjustment",
                                               "False", *flags])
    state = ace_zero.RunState(pattern)
    state.stop_scheduled = final
    ace_zero.mapping_round(args, state, 2, "iteration1", 300.0)
    mapping = calls[-1]
    assert mapping[mapping.index("--use_aug") + 1] == expected
    assert ("--load_weights" in mapping) != final  # the final round is the fresh refit: the state was read


def test_final_round_keeps_unfitted_registrations(tmp_path):
    """--final_use_aug False: an image the final head was not mapped from (below the confidence in the file the
    round mapped from) keeps that file's pose and confidence, whatever the head says; mapped images take the
    head's registration; the head's own file is kept beside."""
    import ace_zero
    out = tmp_path / "out"
    out.mkdir()
    paths = [str(tmp_path / f"frame_{i}.png") for i in range(3)]
    shifted = np.eye(4)
    shifted[:3, 3] = [0.5, 0.0, 0.0]
    mapped_from = out / "poses_iteration3_adjusted.txt"
    dataset_io.write_ace_pose_file(mapped_from, [dataset_io.PoseEntry(paths[0], np.eye(4), 300.0, 2000.0),
                                                 dataset_io.PoseEntry(paths[1], np.eye(4), 300.0, 900.0),
                                                 dataset_io.PoseEntry(paths[2], np.eye(4), 300.0, 1600.0)])
    head = [dataset_io.PoseEntry(p, shifted, 310.0, 1800.0) for p in paths]
    dataset_io.write_ace_pose_file(out / "poses_iteration4.txt", head)
    args = ace_zero.build_parser().parse_args([str(tmp_path / "frame_*.png"), str(out), "--final_use_aug", "False",
                                               "--registration_confidence", "1000"])
    rate = ace_zero.keep_unfitted_registrations(args, "iteration4", mapped_from)
    merged = dataset_io.read_ace_pose_file(out / "poses_iteration4.txt")
    assert [e.confidence for e in merged] == [1800.0, 900.0, 1800.0]
    np.testing.assert_allclose(merged[1].world_to_cam, np.eye(4), atol=1e-6)
    np.testing.assert_allclose(merged[2].world_to_cam, shifted, atol=1e-6)
    assert [e.focal for e in merged] == [310.0] * 3  # one focal in the file: the final round's
    assert rate == pytest.approx(2 / 3)
    assert [e.confidence for e in dataset_io.read_ace_pose_file(out / "poses_iteration4_final_head.txt")] == [1800.0] * 3


@pytest.mark.parametrize("flags, mapped, best", [
    (["--seed_early_stop", "True"], 2, 1),                             # stops at --registration_threshold 0.99
    (["--seed_early_stop", "False"], 3, 1),                            # the original: every seed
    (["--seed_early_stop", "True", "--seed_stop_rate", "0.5"], 1, 0),  # the CPU profile's rate: half is enough
    (["--seed_early_stop", "False", "--seed_stop_rate", "0.5"], 3, 1)])
def test_seed_early_stop(tmp_path, monkeypatch, flags, mapped, best):
    """Stand-in stages: the first of three seeds registers half the checked images, the second and third every
    one. --seed_early_stop tries no more seeds once one reaches --seed_stop_rate (by default
    --registration_threshold), and the best seed is the one registering most among those tried."""
    import ace_zero
    out = tmp_path / "out"
    out.mkdir()
    images = [str(tmp_path / f"frame_{i}.png") for i in range(4)]
    mapped_seeds = []

    def stage(script, arguments, threads=None, label=""):
        arguments = [str(a) for a in arguments]
        if script == "train_ace.py":
            mapped_seeds.append(Path(arguments[1]).stem)
            Path(arguments[1]).write_bytes(b"head")
            return
        session = arguments[arguments.index("--session") + 1]
        good = 2 if session.startswith("iteration0_seed0") else 4  # seed 0: half registered, seeds 1-2: all
        entries = [dataset_io.PoseEntry(p, np.eye(4), ORBIT_FOCAL, 2000.0 if i < good else 10.0)
                   for i, p in enumerate(images)]
        dataset_io.write_ace_pose_file(Path(arguments[1]).parent / f"poses_{session}.txt", entries)

    monkeypatch.setattr(ace_zero, "run_script", stage)
    args = ace_zero.build_parser().parse_args([str(tmp_path / "frame_*.png"), str(out), "--try_seeds", "3",
                                               "--seed_parallel_workers", "1", *flags])
    state = ace_zero.RunState.load_or_create(out, args.rgb_files)
    ace_zero.choose_seed(args, state, ORBIT_FOCAL)
    assert mapped_seeds == [f"iteration0_seed{k}" for k in range(mapped)]
    assert state.seed_id == f"iteration0_seed{best}"


@pytest.mark.parametrize("first_better, second_better, second_unreliable, adopted", [
    (None, None, 0, False),    # the check found no better focal: nothing runs
    (1200.0, None, 0, True),   # the poses adjusted from 1200 px pass: they replace the flagged ones
    (1200.0, 1500.0, 0, False),  # the tracks still prefer another focal: the flagged poses stand
    (1200.0, None, 4, False)])   # as many unreliable as before: the flagged poses stand
def test_recover_focal(tmp_path, monkeypatch, first_better, second_better, second_unreliable, adopted):
    """--recover_focal with stand-in stages: when the verification's focal check found a better focal, the final
    poses are adjusted again from it (every pose file's focal column set to it) and verified; the result is
    taken only when its check finds no better focal and fewer unreliable images."""
    import ace_zero
    out = tmp_path / "out"
    out.mkdir()
    images = [str(tmp_path / f"frame_{i}.png") for i in range(4)]
    source = out / "poses_iteration3_adjusted.txt"
    dataset_io.write_ace_pose_file(source, [dataset_io.PoseEntry(p, np.eye(4), 500.0, 2000.0) for p in images])
    verified = out / "poses_iteration3_adjusted_verified.txt"

    def write_verification(target, unreliable, better):
        shutil.copyfile(source, target)
        target.with_suffix(".verification.json").write_text(json.dumps({"summary": {
            "unreliable": unreliable, "checked": 4, "focal_check": {"better_focal": better}}}))

    write_verification(verified, 4, first_better)
    calls = []

    def stage(script, arguments, threads=None, label=""):
        calls.append((script, Path(arguments[0])))
        if script == "bundle_adjust.py":
            shutil.copyfile(arguments[0], arguments[1])
        elif script == "verify_poses.py":
            write_verification(Path(arguments[1]), second_unreliable, second_better)

    monkeypatch.setattr(ace_zero, "run_script", stage)
    args = ace_zero.build_parser().parse_args([str(tmp_path / "frame_*.png"), str(out), "--device", "cpu"])
    chosen = ace_zero.recover_focal(args, source, verified)
    if first_better is None:
        assert calls == [] and chosen == verified
        return
    restart = out / "poses_iteration3_adjusted_focal_recovery.txt"
    assert calls[0] == ("bundle_adjust.py", restart)
    assert all(e.focal == first_better for e in dataset_io.read_ace_pose_file(restart))
    assert calls[1] == ("verify_poses.py", out / "poses_iteration3_adjusted_focal_recovery_adjusted.txt")
    expected = out / "poses_iteration3_adjusted_focal_recovery_adjusted_verified.txt" if adopted else verified
    assert chosen == expected
    ace_zero.publish_verification(args, chosen)
    report = json.loads((out / ace_zero.VERIFICATION_REPORT).read_text())["summary"]
    assert report["unreliable"] == (second_unreliable if adopted else 4)


def test_failed_verification_flags_every_pose(tmp_path, monkeypatch, caplog):
    """When verify_poses.py itself fails, poses_final.txt's source is a copy with every confident image lowered
    below --registration_confidence (the poses unchanged), its report says so, and --fail_on_unreliable makes that
    an error: poses nobody checked must not read as good."""
    import ace_zero
    import cv2
    from ace_util import UserError
    out = tmp_path / "out"
    out.mkdir()
    rng = np.random.default_rng(1)
    entries = []
    for k, confidence in enumerate((2000.0, 1500.0, 100.0, 800.0)):
        world_to_cam = np.eye(4)
        world_to_cam[:3, 3] = rng.normal(size=3)
        image = tmp_path / f"frame_{k}.png"
        cv2.imwrite(str(image), np.zeros((48, 64, 3), np.uint8))  # the copy's cameras read the image size
        entries.append(dataset_io.PoseEntry(str(image), world_to_cam, 512.5, confidence))
    source = out / "poses_iteration3_adjusted.txt"
    dataset_io.write_ace_pose_file(source, entries)

    def failing_stage(script, arguments, threads=None, label=""):
        assert script == "verify_poses.py"
        raise UserError("the check broke")

    monkeypatch.setattr(ace_zero, "run_script", failing_stage)
    flags = [str(tmp_path / "frame_*.png"), str(out), "--device", "cpu"]
    args = ace_zero.build_parser().parse_args(flags)
    chosen = ace_zero.checked_final_poses(args, source)
    assert chosen == out / "poses_iteration3_adjusted_unverified.txt"
    flagged = dataset_io.read_ace_pose_file(chosen)
    assert [e.confidence for e in flagged] == [499, 499, 100, 499]
    for before, after in zip(entries, flagged):
        np.testing.assert_allclose(after.world_to_cam, before.world_to_cam, atol=1e-6)
        assert after.focal == pytest.approx(before.focal)
    assert [e.confidence for e in dataset_io.read_ace_pose_file(source)] == [2000, 1500, 100, 800]  # kept
    summary = json.loads((out / ace_zero.VERIFICATION_REPORT).read_text())["summary"]
    assert summary["checked"] == 3 and summary["unreliable"] == 3
    assert source.name in summary["verification_failed"]
    with caplog.at_level("WARNING"):
        ace_zero.report_verification(args)
    assert "the poses are not verified" in caplog.text
    strict = ace_zero.build_parser().parse_args([*flags, "--fail_on_unreliable", "True"])
    with pytest.raises(UserError, match="not verified"):
        ace_zero.report_verification(strict)


def test_errors(orbit_scene, tmp_path):
    one = run_cli("ace_zero.py", f"{orbit_scene}/images/frame_00000.png", tmp_path / "r", check=False)
    assert one.returncode == 2 and "at least 2" in one.stderr
    missing = run_cli("ace_zero.py", f"{orbit_scene}/images/*.png", tmp_path / "r", "--seed_network",
                      tmp_path / "nope.pt", check=False)
    assert missing.returncode == 2 and "nope.pt" in missing.stderr and "Traceback" not in missing.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    unwritable = run_cli("ace_zero.py", f"{orbit_scene}/images/*.png", blocker / "sub", check=False)
    assert unwritable.returncode == 2 and "cannot create folder" in unwritable.stderr
    gate = run_cli("ace_zero.py", f"{orbit_scene}/images/*.png", tmp_path / "r", "--registration_gate_max_miss", 0,
                   check=False)
    assert gate.returncode == 2 and "--registration_gate_max_miss" in gate.stderr and "Traceback" not in gate.stderr
    stop = run_cli("ace_zero.py", f"{orbit_scene}/images/*.png", tmp_path / "r", "--seed_stop_rate", 0, check=False)
    assert stop.returncode == 2 and "--seed_stop_rate" in stop.stderr and "Traceback" not in stop.stderr


@pytest.mark.parametrize("adjusted_focal, refocused_kept, chosen", [
    (1200.0, 0.9, "iteration0_seed0_refocused"),  # focal moved 2.4x, the refocused seed is consistent: taken
    (1200.0, 0.1, "iteration0_seed0"),            # moved, but the refocused seed is less consistent: kept
    (600.0, 0.9, "iteration0_seed0")])            # moved by less than REFOCUS_MIN_RATIO: not mapped again
def test_seed_refocus(tmp_path, monkeypatch, adjusted_focal, refocused_kept, chosen):
    """--seed_refocus with stand-in stages: the seed's registration (heuristic focal 500 px) is adjusted; when the
    adjustment's focal is far off the guess, the seed is mapped again and registered with it, and the run goes
    on from whichever seed's adjusted registration keeps more images consistent."""
    import ace_zero
    from bundle_adjust import write_kept_fractions
    out = tmp_path / "out"
    out.mkdir()
    images = [str(tmp_path / f"frame_{i}.png") for i in range(4)]
    pattern = str(tmp_path / "frame_*.png")
    dataset_io.write_ace_pose_file(out / "poses_iteration0_seed0.txt",
                                   [dataset_io.PoseEntry(p, np.eye(4), 500.0, 2000.0) for p in images])
    calls = []

    def stage(script, arguments, threads=None, label=""):
        arguments = [str(a) for a in arguments]
        calls.append((script, arguments))
        if script == "train_ace.py":
            Path(arguments[1]).write_bytes(b"head")
        elif script == "register_mapping.py":
            focal = float(arguments[arguments.index("--use_external_focal_length") + 1])
            session = arguments[arguments.index("--session") + 1]
            dataset_io.write_ace_pose_file(out / f"poses_{session}.txt",
                                           [dataset_io.PoseEntry(p, np.eye(4), focal, 2000.0) for p in images])
        elif script == "bundle_adjust.py":
            source, target = Path(arguments[0]), Path(arguments[1])
            entries = [dataclasses.replace(e, focal=adjusted_focal) for e in dataset_io.read_ace_pose_file(source)]
            dataset_io.write_ace_pose_file(target, entries)
            kept = [1.0, 0.2, 0.2, 0.2] if "refocused" not in source.name else [refocused_kept] * 4
            write_kept_fractions(target, entries, np.array(kept))

    monkeypatch.setattr(ace_zero, "run_script", stage)
    args = ace_zero.build_parser().parse_args([pattern, str(out), "--device", "cpu", "--seed_refocus", "True",
                                               "--registration_confidence", "1000"])
    state = ace_zero.RunState(pattern, "iteration0_seed0", ["iteration0_seed0"], {"iteration0_seed0": 1.0}, 1.0)
    ace_zero.refocus_seed(args, state)
    assert (state.seed_id, state.completed) == (chosen, [chosen])
    mapped = [arguments for script, arguments in calls if script == "train_ace.py"]
    if adjusted_focal == 600.0:
        assert not mapped
        return
    (mapping,) = mapped
    assert mapping[1] == str(out / "iteration0_seed0_refocused.pt")
    assert mapping[mapping.index("--use_external_focal_length") + 1] == "1200.0"
    assert ace_zero.seed_index(state.seed_id) == 0


def test_which_registrations_have_an_estimated_focal(tmp_path):
    """The seed's registration (also when it is the last: the final adjustment then estimates the focal first)
    keeps a free focal; later registrations under --round_bundle_adjustment, and the refocused seed's, do not."""
    import ace_zero
    pattern = str(tmp_path / "frame_*.png")
    state = ace_zero.RunState(pattern, "iteration0_seed1", ["iteration0_seed1"])
    for rounds, expected in (("True", [False, True, True]), ("False", [False, False, True])):
        args = ace_zero.build_parser().parse_args([pattern, str(tmp_path / "out"), "--round_bundle_adjustment",
                                                   rounds])
        assert [ace_zero.has_estimated_focal(args, state, run_id) for run_id in
                ("iteration0_seed1", "iteration3", "iteration0_seed1_refocused")] == expected


def test_failed_reconstruction_names_a_wrong_focal(tmp_path, caplog):
    """When the verification's focal check flagged every image, the failure names both focal lengths and the flags
    that keep the focal (not more seeds: the images agree with the matches pair by pair); otherwise the message
    stays the one about disagreeing images."""
    import ace_zero
    out = tmp_path / "out"
    out.mkdir()
    summary = {"checked": 19, "unreliable": 19, "uncheckable": 0, "failed": True,
               "focal_check": {"focal": 902.3, "probes": [], "better_focal": 1456.6}}
    (out / ace_zero.VERIFICATION_REPORT).write_text(json.dumps({"summary": summary}))
    flags = [str(tmp_path / "*.png"), str(out), "--device", "cpu", "--use_external_focal_length", "1520.4"]
    strict = ace_zero.build_parser().parse_args([*flags, "--fail_on_unreliable", "True",
                                                 "--round_bundle_adjustment", "False"])
    with pytest.raises(UserError, match=r"fit a focal length of 1457 px, the poses were mapped with 902 px, so all "
                                        r"19 .*--refine_calibration False\) or .*--round_bundle_adjustment True\)$"):
        ace_zero.report_verification(strict)
    held = ace_zero.build_parser().parse_args([*flags, "--refine_calibration", "False",
                                               "--round_bundle_adjustment", "True"])
    with caplog.at_level("WARNING"):
        ace_zero.report_verification(held)
    assert "fit a focal length of 1457 px" in caplog.text and "try" not in caplog.text.split("1457 px")[1]
    assert "19 of 19 registered images are unreliable: they were mapped with a wrong focal length" in caplog.text
    summary["focal_check"]["better_focal"] = None
    (out / ace_zero.VERIFICATION_REPORT).write_text(json.dumps({"summary": summary}))
    with pytest.raises(UserError, match="19 of 19 registered images disagree with feature matches between them; "
                                        r"try more seeds \(--try_seeds\)$"):
        ace_zero.report_verification(strict)
