// Minimal absolute pose from three 2D-3D correspondences (Grunert-style elimination).
#pragma once

#include "geometry.h"

namespace dsac {

// All poses (up to 4) that map the three world points onto the three unit bearing
// vectors with positive depth. Returns the count written to `poses`.
int solve_p3p(const Vector3d bearings[3], const Vector3d world[3], Pose poses[4]);

}  // namespace dsac
