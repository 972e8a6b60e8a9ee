// Shared geometry types: pinhole camera, rigid pose, correspondence set, projection.
// Conventions (OpenCV): x right, y down, z forward; x_cam = R * x_world + t.
#pragma once

#include <Eigen/Dense>

#include <cmath>
#include <cstddef>
#include <vector>

namespace dsac {

using Eigen::Matrix3d;
using Eigen::Vector2d;
using Eigen::Vector3d;

// Pinhole intrinsics; fx and fy differ for non-square pixels or an anisotropic resize.
struct Camera {
    double fx;
    double fy;
    double ppx;
    double ppy;
};

// World-to-camera rigid transform.
struct Pose {
    Matrix3d R = Matrix3d::Identity();
    Vector3d t = Vector3d::Zero();
};

// 2D-3D correspondences; every entry is finite (filtered on the way in).
struct Correspondences {
    std::vector<Vector3d> world;
    std::vector<Vector2d> pixel;

    std::size_t size() const { return world.size(); }
};

// Unit viewing ray through a pixel.
inline Vector3d bearing(const Camera& cam, const Vector2d& px) {
    return Vector3d((px.x() - cam.ppx) / cam.fx, (px.y() - cam.ppy) / cam.fy, 1.0).normalized();
}

// Euclidean reprojection error in pixels, clamped to max_error. Points on or behind the
// image plane, and anything non-finite (degenerate pose), count as max_error.
inline double reprojection_error(const Pose& pose, const Camera& cam, const Vector3d& world,
                                 const Vector2d& px, double max_error) {
    const Vector3d c = pose.R * world + pose.t;
    if (!(c.z() > 0.0)) return max_error;
    const double du = cam.fx * c.x() / c.z() + cam.ppx - px.x();
    const double dv = cam.fy * c.y() / c.z() + cam.ppy - px.y();
    const double e = std::sqrt(du * du + dv * dv);
    return e < max_error ? e : max_error;  // also maps NaN to max_error
}

inline Matrix3d skew(const Vector3d& v) {
    Matrix3d m;
    m << 0.0, -v.z(), v.y(), v.z(), 0.0, -v.x(), -v.y(), v.x(), 0.0;
    return m;
}

// Rotation matrix of a rotation vector (axis * angle).
inline Matrix3d rotation_from_vector(const Vector3d& w) {
    const double angle = w.norm();
    if (angle < 1e-12) return Matrix3d::Identity() + skew(w);
    return Eigen::AngleAxisd(angle, w / angle).toRotationMatrix();
}

inline bool is_finite(const Pose& pose) {
    return pose.R.allFinite() && pose.t.allFinite();
}

}  // namespace dsac
