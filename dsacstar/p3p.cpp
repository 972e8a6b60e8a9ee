// P3P derivation used here.
//
// Unknown depths s1, s2, s3 put the camera-frame points at s_i * f_i (f_i unit bearings).
// Rigid motions preserve distances, so with cosines ca = f2.f3, cb = f1.f3, cg = f1.f2 and
// squared world distances A = |P2-P3|^2, B = |P1-P3|^2, C = |P1-P2|^2 (law of cosines):
//   s2^2 + s3^2 - 2 s2 s3 ca = A,   s1^2 + s3^2 - 2 s1 s3 cb = B,   s1^2 + s2^2 - 2 s1 s2 cg = C.
// Writing s2 = u s1, s3 = v s1 and dividing out s1^2 gives two equations in (u, v):
//   E1: B u^2 - 2 B ca u v + (B - A) v^2 + 2 A cb v - A = 0
//   E2: -B u^2 + 2 B cg u + C v^2 - 2 C cb v + C - B = 0
// E1 + E2 is linear in u:  u * D(v) = -N(v) with
//   D(v) = 2 B (cg - ca v),   N(v) = (B - A + C) v^2 + 2 (A - C) cb v + (C - A - B).
// Substituting u = -N/D into E2 and multiplying by D^2 gives a quartic in v:
//   -B N^2 - 2 B cg N D + (C v^2 - 2 C cb v + C - B) D^2 = 0.
// Each real root with u, v > 0 gives s1 = sqrt(B / (1 + v^2 - 2 v cb)) and the three
// camera-frame points; the rotation then follows from aligning two orthonormal triads.
#include "p3p.h"

#include "polynomial.h"

#include <cmath>

namespace dsac {
namespace {

// Polynomials as coefficient arrays, lowest degree first.
template <int NA, int NB>
void poly_multiply(const double (&a)[NA], const double (&b)[NB], double (&out)[NA + NB - 1]) {
    for (double& c : out) c = 0.0;
    for (int i = 0; i < NA; ++i)
        for (int j = 0; j < NB; ++j) out[i + j] += a[i] * b[j];
}

// Orthonormal frame (as matrix columns) attached to a non-degenerate triangle.
bool triangle_frame(const Vector3d& p1, const Vector3d& p2, const Vector3d& p3, Matrix3d& frame) {
    const Vector3d e1 = p2 - p1;
    const Vector3d normal = e1.cross(p3 - p1);
    const double n1 = e1.norm();
    const double nn = normal.norm();
    if (!(n1 > 0.0) || !(nn > 1e-12 * n1 * n1)) return false;
    frame.col(0) = e1 / n1;
    frame.col(2) = normal / nn;
    frame.col(1) = frame.col(2).cross(frame.col(0));
    return true;
}

// The rigid motion taking the world triangle onto the camera-frame triangle.
bool align_triangles(const Vector3d world[3], const Vector3d camera[3], Pose& pose) {
    Matrix3d frame_world, frame_camera;
    if (!triangle_frame(world[0], world[1], world[2], frame_world)) return false;
    if (!triangle_frame(camera[0], camera[1], camera[2], frame_camera)) return false;
    pose.R = frame_camera * frame_world.transpose();
    // Use the centroids so the residual of an imperfect fit is spread over all three points.
    const Vector3d cw = (world[0] + world[1] + world[2]) / 3.0;
    const Vector3d cc = (camera[0] + camera[1] + camera[2]) / 3.0;
    pose.t = cc - pose.R * cw;
    return is_finite(pose);
}

}  // namespace

int solve_p3p(const Vector3d bearings[3], const Vector3d world[3], Pose poses[4]) {
    const double ca = bearings[1].dot(bearings[2]);
    const double cb = bearings[0].dot(bearings[2]);
    const double cg = bearings[0].dot(bearings[1]);
    double A = (world[1] - world[2]).squaredNorm();
    double B = (world[0] - world[2]).squaredNorm();
    double C = (world[0] - world[1]).squaredNorm();
    if (!(A > 0.0) || !(B > 0.0) || !(C > 0.0)) return 0;
    // The equations are homogeneous in (A, B, C): normalise for conditioning.
    const double scale_b = B;
    A /= scale_b;
    C /= scale_b;
    B = 1.0;

    const double N[3] = {C - A - B, 2.0 * (A - C) * cb, B - A + C};
    const double D[2] = {2.0 * B * cg, -2.0 * B * ca};
    const double E[3] = {C - B, -2.0 * C * cb, C};
    double NN[5], ND[4], DD[3], EDD[5];
    poly_multiply(N, N, NN);
    poly_multiply(N, D, ND);
    poly_multiply(D, D, DD);
    poly_multiply(E, DD, EDD);
    double quartic[5];
    for (int i = 0; i < 5; ++i) quartic[i] = -B * NN[i] + EDD[i] - (i < 4 ? 2.0 * B * cg * ND[i] : 0.0);

    double roots[4];
    const int n_roots = solve_quartic(quartic, roots);
    int count = 0;
    for (int i = 0; i < n_roots; ++i) {
        const double v = roots[i];
        const double d = D[0] + D[1] * v;
        if (!(v > 0.0) || std::abs(d) < 1e-12) continue;
        const double u = -(N[0] + (N[1] + N[2] * v) * v) / d;
        const double denom = 1.0 + v * v - 2.0 * v * cb;
        if (!(u > 0.0) || !(denom > 0.0)) continue;
        const double s1 = std::sqrt(scale_b / denom);
        const Vector3d camera[3] = {s1 * bearings[0], u * s1 * bearings[1], v * s1 * bearings[2]};
        if (align_triangles(world, camera, poses[count])) ++count;
    }
    return count;
}

}  // namespace dsac
