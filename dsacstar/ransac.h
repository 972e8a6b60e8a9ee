// DSAC*-style RANSAC: P3P hypotheses, soft inlier scoring, argmax selection, iterative refinement.
#pragma once

#include "geometry.h"

#include <cstdint>

namespace dsac {

struct RansacParams {
    int hypotheses = 64;
    double threshold = 10.0;     // inlier threshold in pixels
    double inlier_alpha = 100.0; // scale of the soft inlier score
    double max_reproj = 100.0;   // clamp for reprojection errors
    std::uint32_t random_seed = 1305;
    long long max_tries = 1000000;  // P3P attempts per hypothesis
    int num_threads = 0;            // 0: OpenMP default
};

struct RansacResult {
    int inlier_count = 0;  // inliers of the last accepted refinement (0: never refined)
    bool has_pose = false; // false: no hypothesis could be formed; pose is identity
    Pose pose;             // world-to-camera
};

// Needs at least 4 correspondences; with fewer it returns an empty result.
RansacResult ransac_pose(const Correspondences& corr, const Camera& cam, const RansacParams& params);

}  // namespace dsac
