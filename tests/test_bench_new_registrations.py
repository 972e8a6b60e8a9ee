"""benchmarks/bench_new_registrations.py: which files of a result folder it compares."""
import json

from benchmarks import bench_new_registrations as bench


def _touch(folder, names):
    for name in names:
        (folder / name).write_text("")


def test_each_round_is_compared_with_the_file_it_mapped_from(tmp_path):
    _touch(tmp_path, ["poses_iteration0_seed0_fastcheck.txt", "poses_iteration0_seed1.txt",
                      "poses_iteration0_seed1_adjusted.txt", "poses_iteration1.txt", "poses_iteration1_adjusted.txt",
                      "poses_iteration2.txt", "poses_iteration2_preliminary.txt", "poses_iteration3.txt",
                      "poses_iteration10.txt", "poses_iteration9.txt", "poses_final.txt"])
    found = [(n, a.name, b.name) for n, a, b in bench.rounds(tmp_path)]
    assert found == [(1, "poses_iteration1.txt", "poses_iteration0_seed1_adjusted.txt"),
                     (2, "poses_iteration2.txt", "poses_iteration1_adjusted.txt"),
                     (3, "poses_iteration3.txt", "poses_iteration2.txt"),  # no adjustment: the registration itself
                     (10, "poses_iteration10.txt", "poses_iteration9.txt")]


def test_gated_rounds_and_the_seed_of_the_run_state(tmp_path):
    """With the gate in the loop a round maps from the gated (and then adjusted) registration; the seed is the one
    the run state names, not the last one sorted."""
    _touch(tmp_path, ["poses_iteration0_seed0.txt", "poses_iteration0_seed0_adjusted.txt",
                      "poses_iteration0_seed2.txt", "poses_iteration0_seed2_adjusted.txt", "poses_iteration1.txt",
                      "poses_iteration1_gated.txt", "poses_iteration1_gated_adjusted.txt", "poses_iteration2.txt",
                      "poses_iteration2_gated.txt", "poses_iteration3.txt"])
    (tmp_path / "ace_zero_state.json").write_text(json.dumps({"seed_id": "iteration0_seed0"}))
    found = [(n, b.name) for n, _, b in bench.rounds(tmp_path)]
    assert found == [(1, "poses_iteration0_seed0_adjusted.txt"), (2, "poses_iteration1_gated_adjusted.txt"),
                     (3, "poses_iteration2_gated.txt")]
