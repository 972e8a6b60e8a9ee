// Closed-form real roots of low-degree polynomials (used by the P3P solver).
#pragma once

namespace dsac {

// Real roots of a*x^2 + b*x + c. Returns the count (0..2); handles a == 0.
int solve_quadratic(double a, double b, double c, double roots[2]);

// Real roots of the monic cubic x^3 + a*x^2 + b*x + c. Returns the count (1..3).
int solve_monic_cubic(double a, double b, double c, double roots[3]);

// Real roots of coeffs[4]*x^4 + ... + coeffs[0], each polished by Newton steps.
// Falls back to the cubic / quadratic when the leading coefficients vanish.
// Returns the count (0..4).
int solve_quartic(const double coeffs[5], double roots[4]);

}  // namespace dsac
