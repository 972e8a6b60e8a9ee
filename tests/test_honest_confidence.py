"""The failure that verify_poses.py exists for, end to end: ace_zero.py from scratch on the rendered weakly
textured object on a full camera ring with a narrow field of view (datasets/object_ring.py).

HEAVY, and opt-in (ACE_HEAVY_TESTS=1): one ace_zero.py run at the CPU defaults, 22-36 min on 2 cores. Measured on
this project's machine (README, "Honest confidence"): without the verification 46 of 48 images came out with
confidence >= 1000 at a median of 95 deg off (the ring folded onto itself); with it 7 remain, at most 2.5 deg
off."""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("ACE_HEAVY_TESTS") != "1",
                                reason="heavy ACE0 run on the rendered ring: set ACE_HEAVY_TESTS=1")


def test_no_confident_image_is_far_off_on_the_ring(tmp_path):
    from ace_zero import last_registration_files
    from benchmarks.bench_confidence import GOAL_DEG, confident_errors
    from conftest import run_cli
    from datasets.object_ring import render_object_ring
    scene = render_object_ring(tmp_path / "ring")
    run_cli("ace_zero.py", f"{scene}/images/*.png", tmp_path / "run", "--device", "cpu")
    unverified = confident_errors(last_registration_files(tmp_path / "run")["adjusted"], scene)
    final = confident_errors(tmp_path / "run" / "poses_final.txt", scene)
    # The case reproduces the failure without the check (measured: 20-47 of 48 confident, the worst 149-180 deg
    # off) ...
    assert unverified["confident"] > 10 and unverified["max_deg"] > 30
    # ... and no image the check leaves confident is far off.
    assert final["confident"] == 0 or (final["max_deg"] <= GOAL_DEG and final["max_relative_deg"] <= 2 * GOAL_DEG)
