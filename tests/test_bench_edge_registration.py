"""benchmarks/bench_edge_registration.py: the choice of mapped cameras and the registered fraction of a rotation,
on analytic camera arcs (the benchmark itself runs train_ace.py and register_mapping.py)."""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

import dataset_io
from benchmarks.bench_edge_registration import middle_cameras, rotation_fraction
from conftest import ring_world_to_cam


def _cam_to_world(count: int) -> np.ndarray:
    return np.array([dataset_io.invert_pose(np.vstack([pose, [0, 0, 0, 1]]))
                     for pose in ring_world_to_cam(count, span=np.radians(80))])


def test_the_mapped_cameras_are_the_middle_of_the_arc():
    cameras = _cam_to_world(9)
    chosen = middle_cameras(cameras, 3)
    assert chosen[0] == 4 and sorted(chosen) == [3, 4, 5]
    assert sorted(middle_cameras(cameras[::-1], 5)) == [2, 3, 4, 5, 6]


def test_registered_fraction_of_a_rotation():
    cameras = _cam_to_world(9)
    middle, edge = cameras[4], cameras[8]  # 40 deg apart about the arc's axis
    assert abs(rotation_fraction(edge, edge, middle) - 1) < 1e-9
    assert abs(rotation_fraction(middle, edge, middle)) < 1e-9
    half = edge.copy()
    turn = Rotation.from_matrix(edge[:3, :3] @ middle[:3, :3].T).as_rotvec()
    half[:3, :3] = Rotation.from_rotvec(turn / 2).as_matrix() @ middle[:3, :3]
    assert abs(rotation_fraction(half, edge, middle) - 0.5) < 1e-9


def test_compression_shrinks_every_relative_rotation():
    """bench_refinement.py --compression: on an arc looking at the origin, the look-at point is the origin, every
    relative rotation shrinks to the factor exactly, and the cameras still look at the origin."""
    from benchmarks.bench_refinement import compress, look_at_point
    from eval_poses import rotation_angle_deg
    cameras = _cam_to_world(9)
    assert np.allclose(look_at_point(cameras), 0, atol=1e-9)
    bent = compress(cameras, 0.8)
    upper = np.triu_indices(9, 1)
    relative = rotation_angle_deg(np.einsum("aij,bkj->abik", cameras[:, :3, :3], cameras[:, :3, :3]))[upper]
    shrunk = rotation_angle_deg(np.einsum("aij,bkj->abik", bent[:, :3, :3], bent[:, :3, :3]))[upper]
    assert np.allclose(shrunk, 0.8 * relative, atol=1e-6)
    axes, centres = bent[:, :3, 2], bent[:, :3, 3]
    assert np.allclose(np.cross(axes, -centres), 0, atol=1e-9)  # optical axes through the origin
    assert np.allclose(compress(cameras, 1.0), cameras)
