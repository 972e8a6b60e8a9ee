"""benchmarks/bench_new_registrations.py: which files of a result folder it compares."""
from benchmarks import bench_new_registrations as bench


def test_each_round_is_compared_with_the_previous_adjusted_registration(tmp_path):
    names = ["poses_iteration0_seed0_fastcheck.txt", "poses_iteration0_seed1.txt",
             "poses_iteration0_seed1_adjusted.txt", "poses_iteration1.txt", "poses_iteration1_adjusted.txt",
             "poses_iteration2.txt", "poses_iteration2_preliminary.txt", "poses_iteration3.txt",
             "poses_iteration10.txt", "poses_iteration9.txt", "poses_final.txt"]
    for name in names:
        (tmp_path / name).write_text("")
    found = [(n, a.name, b.name) for n, a, b in bench.rounds(tmp_path)]
    assert found == [(1, "poses_iteration1.txt", "poses_iteration0_seed1_adjusted.txt"),
                     (2, "poses_iteration2.txt", "poses_iteration1_adjusted.txt"),
                     (3, "poses_iteration3.txt", "poses_iteration2.txt"),  # no adjustment: the registration itself
                     (10, "poses_iteration10.txt", "poses_iteration9.txt")]
