#include "ransac.h"

#include "p3p.h"
#include "refine.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace dsac {
namespace {

constexpr int kMaxRefinementRounds = 100;
constexpr int kMinimalSet = 4;

int resolve_thread_count(int requested) {
    return requested > 0 ? requested : omp_get_max_threads();
}

// Four distinct indices drawn uniformly.
void draw_minimal_set(std::mt19937& rng, int n, int out[kMinimalSet]) {
    std::uniform_int_distribution<int> pick(0, n - 1);
    for (int k = 0; k < kMinimalSet; ++k) {
        bool repeated;
        do {
            out[k] = pick(rng);
            repeated = false;
            for (int j = 0; j < k; ++j) repeated = repeated || out[j] == out[k];
        } while (repeated);
    }
}

// P3P on the first three samples; the fourth picks among the candidate poses.
bool pose_from_minimal_set(const Correspondences& corr, const Camera& cam, const int idx[kMinimalSet],
                           double max_reproj, Pose& out) {
    Vector3d bearings[3], world[3];
    for (int k = 0; k < 3; ++k) {
        bearings[k] = bearing(cam, corr.pixel[idx[k]]);
        world[k] = corr.world[idx[k]];
    }
    Pose candidates[4];
    const int n = solve_p3p(bearings, world, candidates);
    double best_error = std::numeric_limits<double>::infinity();
    for (int i = 0; i < n; ++i) {
        const double e = reprojection_error(candidates[i], cam, corr.world[idx[3]], corr.pixel[idx[3]], max_reproj);
        if (e < best_error) {
            best_error = e;
            out = candidates[i];
        }
    }
    return n > 0;
}

bool reprojects_within(const Correspondences& corr, const Camera& cam, const Pose& pose,
                       const int idx[kMinimalSet], double threshold) {
    for (int k = 0; k < kMinimalSet; ++k) {
        // Clamping at `threshold` makes "behind the camera" fail the test too.
        if (!(reprojection_error(pose, cam, corr.world[idx[k]], corr.pixel[idx[k]], threshold) < threshold))
            return false;
    }
    return true;
}

// One hypothesis: retry random minimal sets until all four points reproject within the
// threshold. If every try fails, the last pose P3P produced is kept (as DSAC* does);
// returns false only when P3P never produced any pose.
bool sample_hypothesis(const Correspondences& corr, const Camera& cam, const RansacParams& params,
                       std::mt19937& rng, Pose& hypothesis) {
    bool has_pose = false;
    int idx[kMinimalSet];
    for (long long attempt = 0; attempt < params.max_tries; ++attempt) {
        draw_minimal_set(rng, static_cast<int>(corr.size()), idx);
        Pose pose;
        if (!pose_from_minimal_set(corr, cam, idx, params.max_reproj, pose)) continue;
        hypothesis = pose;
        has_pose = true;
        if (reprojects_within(corr, cam, pose, idx, params.threshold)) break;
    }
    return has_pose;
}

// Soft inlier count: sum of 1 - sigmoid(beta (e - tau)) with beta = 5 / tau, scaled by alpha / N.
// Terms below 1e-16 (beta (e - tau) > 37) are skipped: they cannot change a sum that
// holds any near-inlier, and skipping them saves a sqrt and an exp for most outliers.
double soft_inlier_score(const Correspondences& corr, const Camera& cam, const Pose& pose,
                         const RansacParams& params) {
    const double beta = 5.0 / params.threshold;
    const double cutoff = std::min(params.max_reproj, params.threshold + 37.0 / beta);
    const double cutoff_sq = cutoff * cutoff;
    // Errors at the clamp (outliers, points behind the camera) share one constant term.
    const double clamped_term = 1.0 / (1.0 + std::exp(beta * (params.max_reproj - params.threshold)));
    double score = 0.0;
    const std::size_t n = corr.size();
    for (std::size_t i = 0; i < n; ++i) {
        const Vector3d c = pose.R * corr.world[i] + pose.t;
        double e_sq = std::numeric_limits<double>::infinity();
        if (c.z() > 0.0) {
            const double du = cam.fx * c.x() / c.z() + cam.ppx - corr.pixel[i].x();
            const double dv = cam.fy * c.y() / c.z() + cam.ppy - corr.pixel[i].y();
            e_sq = du * du + dv * dv;
        }
        if (e_sq < cutoff_sq) {  // false for NaN too
            score += 1.0 / (1.0 + std::exp(beta * (std::sqrt(e_sq) - params.threshold)));
        } else if (cutoff >= params.max_reproj) {
            score += clamped_term;  // only reached when the clamp term is not negligible
        }
    }
    return score * params.inlier_alpha / static_cast<double>(n);
}

std::vector<int> inlier_indices(const Correspondences& corr, const Camera& cam, const Pose& pose, double threshold) {
    std::vector<int> inliers;
    for (std::size_t i = 0; i < corr.size(); ++i) {
        if (reprojection_error(pose, cam, corr.world[i], corr.pixel[i], threshold) < threshold)
            inliers.push_back(static_cast<int>(i));
    }
    return inliers;
}

// Alternate inlier selection and least-squares refinement while the inlier set grows.
int refine_until_stable(const Correspondences& corr, const Camera& cam, double threshold, Pose& pose) {
    int best_count = kMinimalSet;
    int accepted_count = 0;
    for (int round = 0; round < kMaxRefinementRounds; ++round) {
        const std::vector<int> inliers = inlier_indices(corr, cam, pose, threshold);
        const int count = static_cast<int>(inliers.size());
        if (count <= best_count) break;
        Pose refined = pose;
        if (!refine_pose(corr, inliers, cam, refined)) break;
        pose = refined;
        best_count = accepted_count = count;
    }
    return accepted_count;
}

}  // namespace

RansacResult ransac_pose(const Correspondences& corr, const Camera& cam, const RansacParams& params) {
    RansacResult result;
    if (corr.size() < static_cast<std::size_t>(kMinimalSet) || params.hypotheses < 1) return result;
    const int threads = resolve_thread_count(params.num_threads);
    const int n_hyp = params.hypotheses;

    std::vector<Pose> hypotheses(n_hyp);
    std::vector<double> scores(n_hyp, -std::numeric_limits<double>::infinity());

    // Static schedule + one generator per thread, re-seeded every call: the output is
    // a function of (inputs, seed, thread count) only.
#pragma omp parallel num_threads(threads)
    {
        std::mt19937 rng(params.random_seed + static_cast<std::uint32_t>(omp_get_thread_num()));
#pragma omp for schedule(static)
        for (int h = 0; h < n_hyp; ++h) {
            if (sample_hypothesis(corr, cam, params, rng, hypotheses[h]))
                scores[h] = soft_inlier_score(corr, cam, hypotheses[h], params);
        }
    }

    int winner = -1;
    for (int h = 0; h < n_hyp; ++h) {
        if (std::isfinite(scores[h]) && (winner < 0 || scores[h] > scores[winner])) winner = h;
    }
    if (winner < 0) return result;

    result.has_pose = true;
    result.pose = hypotheses[winner];
    result.inlier_count = refine_until_stable(corr, cam, params.threshold, result.pose);
    return result;
}

}  // namespace dsac
