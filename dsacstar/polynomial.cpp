#include "polynomial.h"

#include <algorithm>
#include <cmath>

namespace dsac {
namespace {

constexpr double kPi = 3.14159265358979323846;

double evaluate(const double coeffs[5], double x) {
    return (((coeffs[4] * x + coeffs[3]) * x + coeffs[2]) * x + coeffs[1]) * x + coeffs[0];
}

double derivative(const double coeffs[5], double x) {
    return ((4.0 * coeffs[4] * x + 3.0 * coeffs[3]) * x + 2.0 * coeffs[2]) * x + coeffs[1];
}

// Closed forms lose digits near repeated roots; a few Newton steps recover them.
double polish(const double coeffs[5], double x) {
    for (int i = 0; i < 3; ++i) {
        const double d = derivative(coeffs, x);
        if (d == 0.0) break;
        const double step = evaluate(coeffs, x) / d;
        if (!std::isfinite(step)) break;
        x -= step;
    }
    return x;
}

// Roots of the depressed quartic y^4 + p*y^2 + q*y + r (Ferrari's factorisation).
int solve_depressed_quartic(double p, double q, double r, double roots[4]) {
    int count = 0;
    if (std::abs(q) < 1e-14 * (1.0 + std::abs(p) + std::abs(r))) {
        // Biquadratic: z = y^2.
        double z[2];
        const int nz = solve_quadratic(1.0, p, r, z);
        for (int i = 0; i < nz; ++i) {
            if (z[i] < 0.0) continue;
            const double y = std::sqrt(z[i]);
            roots[count++] = y;
            roots[count++] = -y;
        }
        return count;
    }
    // Pick m > 0 such that y^4 + p y^2 + q y + r = (y^2 + p/2 + m)^2 - (s y - q/(2s))^2
    // with s = sqrt(2m); m solves the resolvent m^3 + p m^2 + (p^2/4 - r) m - q^2/8 = 0,
    // whose largest real root is positive because the cubic is -q^2/8 < 0 at m = 0.
    double m_roots[3];
    const int nm = solve_monic_cubic(p, 0.25 * p * p - r, -0.125 * q * q, m_roots);
    const double m = *std::max_element(m_roots, m_roots + nm);
    if (!(m > 0.0)) return 0;
    const double s = std::sqrt(2.0 * m);
    const double base = 0.5 * p + m;
    const double shift = q / (2.0 * s);
    double y[2];
    int n = solve_quadratic(1.0, s, base - shift, y);
    for (int i = 0; i < n; ++i) roots[count++] = y[i];
    n = solve_quadratic(1.0, -s, base + shift, y);
    for (int i = 0; i < n; ++i) roots[count++] = y[i];
    return count;
}

}  // namespace

int solve_quadratic(double a, double b, double c, double roots[2]) {
    if (a == 0.0) {
        if (b == 0.0) return 0;
        roots[0] = -c / b;
        return 1;
    }
    double disc = b * b - 4.0 * a * c;
    // A tiny negative discriminant is usually a rounded double root: keep it.
    if (disc < 0.0) {
        if (disc < -1e-12 * (b * b + std::abs(4.0 * a * c))) return 0;
        disc = 0.0;
    }
    // Numerically stable form: avoid subtracting nearly equal numbers.
    const double sq = std::sqrt(disc);
    const double k = -0.5 * (b + (b >= 0.0 ? sq : -sq));
    if (k == 0.0) {  // b == 0 and c == 0
        roots[0] = 0.0;
        return 1;
    }
    roots[0] = k / a;
    roots[1] = c / k;
    return 2;
}

int solve_monic_cubic(double a, double b, double c, double roots[3]) {
    // Depress with x = t - a/3: t^3 + P t + Q = 0.
    const double shift = a / 3.0;
    const double P = b - a * shift;
    const double Q = 2.0 * shift * shift * shift - b * shift + c;
    const double half_q = 0.5 * Q;
    const double third_p = P / 3.0;
    const double disc = half_q * half_q + third_p * third_p * third_p;
    if (disc > 0.0) {  // one real root (Cardano)
        const double sq = std::sqrt(disc);
        roots[0] = std::cbrt(-half_q + sq) + std::cbrt(-half_q - sq) - shift;
        return 1;
    }
    if (third_p == 0.0) {  // triple root
        roots[0] = -shift;
        return 1;
    }
    // Three real roots (trigonometric form); third_p < 0 here.
    const double rho = std::sqrt(-third_p);
    const double cos_arg = std::clamp(-half_q / (rho * rho * rho), -1.0, 1.0);
    const double phi = std::acos(cos_arg) / 3.0;
    for (int k = 0; k < 3; ++k) roots[k] = 2.0 * rho * std::cos(phi - 2.0 * kPi * k / 3.0) - shift;
    return 3;
}

int solve_quartic(const double coeffs[5], double roots[4]) {
    const double scale = std::max({std::abs(coeffs[0]), std::abs(coeffs[1]), std::abs(coeffs[2]),
                                   std::abs(coeffs[3]), std::abs(coeffs[4])});
    if (scale == 0.0 || !std::isfinite(scale)) return 0;
    if (std::abs(coeffs[4]) < 1e-12 * scale) {
        // Effectively cubic (or lower).
        if (std::abs(coeffs[3]) < 1e-12 * scale) return solve_quadratic(coeffs[2], coeffs[1], coeffs[0], roots);
        double cubic[3];
        const int n = solve_monic_cubic(coeffs[2] / coeffs[3], coeffs[1] / coeffs[3], coeffs[0] / coeffs[3], cubic);
        for (int i = 0; i < n; ++i) roots[i] = polish(coeffs, cubic[i]);
        return n;
    }
    const double a = coeffs[3] / coeffs[4];
    const double b = coeffs[2] / coeffs[4];
    const double c = coeffs[1] / coeffs[4];
    const double d = coeffs[0] / coeffs[4];
    // Depress with x = y - a/4.
    const double a2 = a * a;
    const double p = b - 0.375 * a2;
    const double q = c - 0.5 * a * b + 0.125 * a2 * a;
    const double r = d - 0.25 * a * c + 0.0625 * a2 * b - 3.0 / 256.0 * a2 * a2;
    const int n = solve_depressed_quartic(p, q, r, roots);
    for (int i = 0; i < n; ++i) roots[i] = polish(coeffs, roots[i] - 0.25 * a);
    return n;
}

}  // namespace dsac
