// Non-linear least-squares pose refinement on a subset of correspondences.
#pragma once

#include "geometry.h"

#include <vector>

namespace dsac {

// Levenberg-Marquardt on the summed squared reprojection error of the correspondences
// listed in `indices`, starting from `pose`. The parameters are a rotation-vector
// increment and a translation increment applied on the left of the current pose.
// Returns false (leaving `pose` untouched) when the problem is degenerate or the
// result is not finite.
bool refine_pose(const Correspondences& corr, const std::vector<int>& indices, const Camera& cam,
                 Pose& pose);

}  // namespace dsac
