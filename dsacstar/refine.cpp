#include "refine.h"

#include <cmath>
#include <limits>

namespace dsac {
namespace {

using Matrix6d = Eigen::Matrix<double, 6, 6>;
using Vector6d = Eigen::Matrix<double, 6, 1>;

constexpr int kMaxIterations = 50;
constexpr double kInitialDamping = 1e-3;
constexpr double kMaxDamping = 1e12;

// Sum of squared reprojection residuals; infinite if any point is not in front of the camera.
double cost(const Correspondences& corr, const std::vector<int>& indices, const Camera& cam, const Pose& pose) {
    double sum = 0.0;
    for (int i : indices) {
        const Vector3d c = pose.R * corr.world[i] + pose.t;
        if (!(c.z() > 0.0)) return std::numeric_limits<double>::infinity();
        const double du = cam.fx * c.x() / c.z() + cam.ppx - corr.pixel[i].x();
        const double dv = cam.fy * c.y() / c.z() + cam.ppy - corr.pixel[i].y();
        sum += du * du + dv * dv;
    }
    return std::isfinite(sum) ? sum : std::numeric_limits<double>::infinity();
}

// Gauss-Newton normal equations J^T J and J^T r at `pose`. With the update
// x_cam' = exp(w) x_cam + dt, the derivative of x_cam is [-[x_cam]_x | I].
void normal_equations(const Correspondences& corr, const std::vector<int>& indices, const Camera& cam,
                      const Pose& pose, Matrix6d& jtj, Vector6d& jtr) {
    jtj.setZero();
    jtr.setZero();
    Eigen::Matrix<double, 2, 6> J;
    for (int i : indices) {
        const Vector3d c = pose.R * corr.world[i] + pose.t;
        const double iz = 1.0 / c.z();
        const double x = c.x() * iz, y = c.y() * iz;
        const Eigen::Vector2d r(cam.fx * x + cam.ppx - corr.pixel[i].x(),
                                cam.fy * y + cam.ppy - corr.pixel[i].y());
        // d(projection)/d(x_cam), rows u and v.
        Eigen::Matrix<double, 2, 3> dp;
        dp << cam.fx * iz, 0.0, -cam.fx * x * iz, 0.0, cam.fy * iz, -cam.fy * y * iz;
        J.leftCols<3>() = -dp * skew(c);
        J.rightCols<3>() = dp;
        jtj.noalias() += J.transpose() * J;
        jtr.noalias() += J.transpose() * r;
    }
}

Pose apply_update(const Pose& pose, const Vector6d& delta) {
    const Matrix3d dR = rotation_from_vector(delta.head<3>());
    Pose out;
    out.R = dR * pose.R;
    out.t = dR * pose.t + delta.tail<3>();
    return out;
}

}  // namespace

bool refine_pose(const Correspondences& corr, const std::vector<int>& indices, const Camera& cam, Pose& pose) {
    if (indices.size() < 3 || !is_finite(pose)) return false;
    Pose current = pose;
    double current_cost = cost(corr, indices, cam, current);
    if (!std::isfinite(current_cost)) return false;

    double damping = kInitialDamping;
    Matrix6d jtj;
    Vector6d jtr;
    for (int iter = 0; iter < kMaxIterations; ++iter) {
        normal_equations(corr, indices, cam, current, jtj, jtr);
        if (!jtj.allFinite() || !jtr.allFinite()) return false;
        bool improved = false;
        double relative_gain = 0.0;
        while (damping < kMaxDamping) {
            Matrix6d damped = jtj;
            damped.diagonal() += damping * jtj.diagonal().cwiseMax(1e-12);
            const Vector6d delta = damped.ldlt().solve(-jtr);
            if (!delta.allFinite()) return false;
            const Pose candidate = apply_update(current, delta);
            const double candidate_cost = cost(corr, indices, cam, candidate);
            if (candidate_cost < current_cost) {
                relative_gain = (current_cost - candidate_cost) / current_cost;
                current = candidate;
                current_cost = candidate_cost;
                damping = std::max(damping * 0.1, 1e-12);
                improved = true;
                break;
            }
            damping *= 10.0;
        }
        // No downhill step at any damping, or negligible progress: converged.
        if (!improved || relative_gain < 1e-10 || current_cost < 1e-20) break;
    }
    if (!is_finite(current)) return false;
    pose = current;
    return true;
}

}  // namespace dsac
