// Python bindings: numpy arrays in, (inlier_count, 4x4 camera-to-world) out.
#include "geometry.h"
#include "p3p.h"
#include "ransac.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace py = pybind11;
using dsac::Camera;
using dsac::Correspondences;
using dsac::Pose;
using dsac::RansacParams;
using dsac::Vector2d;
using dsac::Vector3d;

namespace {

using DoubleArray = py::array_t<double, py::array::c_style>;

// float32/float64 (any layout) -> C-contiguous float64; everything else is rejected.
DoubleArray as_float64(const py::object& obj, const char* name) {
    py::array arr = py::array::ensure(obj);
    if (!arr) throw py::value_error(std::string(name) + " must be a numpy array");
    const py::dtype dt = arr.dtype();
    if (dt.kind() != 'f' || (dt.itemsize() != 4 && dt.itemsize() != 8))
        throw py::value_error(std::string(name) + " must be float32 or float64, got dtype " +
                              py::str(dt).cast<std::string>());
    return arr.cast<py::array_t<double, py::array::c_style | py::array::forcecast>>();
}

std::string shape_string(const py::array& arr) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < arr.ndim(); ++d) s += (d ? ", " : "") + std::to_string(arr.shape(d));
    return s + (arr.ndim() == 1 ? ",)" : ")");
}

void require(bool ok, const std::string& message) {
    if (!ok) throw py::value_error(message);
}

// focal_y unset: square pixels (the original's single focal length).
Camera make_camera(double focal, double ppx, double ppy, std::optional<double> focal_y) {
    const double fy = focal_y ? *focal_y : focal;
    require(std::isfinite(focal) && focal > 0.0, "focal must be a finite positive number");
    require(std::isfinite(fy) && fy > 0.0, "focal_y must be a finite positive number");
    require(std::isfinite(ppx) && std::isfinite(ppy), "ppx and ppy must be finite");
    return Camera{focal, fy, ppx, ppy};
}

RansacParams make_params(int hypotheses, double threshold, double inlier_alpha, double max_reproj,
                         long long random_seed, long long max_tries, int num_threads) {
    require(hypotheses >= 1, "hypotheses must be >= 1");
    require(std::isfinite(threshold) && threshold > 0.0, "threshold must be a finite positive number");
    require(std::isfinite(inlier_alpha) && inlier_alpha > 0.0, "inlier_alpha must be a finite positive number");
    require(std::isfinite(max_reproj) && max_reproj > 0.0, "max_reproj must be a finite positive number");
    require(max_tries >= 1, "max_hypotheses_tries must be >= 1");
    require(num_threads >= 0, "num_threads must be >= 0 (0: OpenMP default)");
    RansacParams p;
    p.hypotheses = hypotheses;
    p.threshold = threshold;
    p.inlier_alpha = inlier_alpha;
    p.max_reproj = max_reproj;
    p.random_seed = static_cast<std::uint32_t>(random_seed);  // wraps modulo 2^32, as mt19937 would
    p.max_tries = max_tries;
    p.num_threads = num_threads;
    return p;
}

py::array_t<double> to_numpy(const Eigen::Matrix4d& m) {
    py::array_t<double> out({4, 4});
    auto v = out.mutable_unchecked<2>();
    for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c) v(r, c) = m(r, c);
    return out;
}

Eigen::Matrix4d camera_to_world(const Pose& pose) {
    Eigen::Matrix4d m = Eigen::Matrix4d::Identity();
    m.topLeftCorner<3, 3>() = pose.R.transpose();
    m.topRightCorner<3, 1>() = -pose.R.transpose() * pose.t;
    return m;
}

bool finite3(double x, double y, double z) { return std::isfinite(x) && std::isfinite(y) && std::isfinite(z); }

py::tuple run_ransac(const Correspondences& corr, const Camera& cam, const RansacParams& params) {
    dsac::RansacResult result;
    {
        py::gil_scoped_release release;
        result = dsac::ransac_pose(corr, cam, params);
    }
    const Eigen::Matrix4d pose = result.has_pose ? camera_to_world(result.pose) : Eigen::Matrix4d::Identity();
    return py::make_tuple(result.inlier_count, to_numpy(pose));
}

// Usable cells of a 3 x H x W scene-coordinate map, with their pixel centres.
Correspondences gather_grid(const DoubleArray& coords, int subsampling) {
    const py::ssize_t H = coords.shape(coords.ndim() - 2), W = coords.shape(coords.ndim() - 1);
    const double* x = coords.data();
    const double* y = x + H * W;
    const double* z = y + H * W;
    const double offset = 0.5 * subsampling;
    Correspondences corr;
    corr.world.reserve(H * W);
    corr.pixel.reserve(H * W);
    for (py::ssize_t r = 0; r < H; ++r) {
        for (py::ssize_t c = 0; c < W; ++c) {
            const py::ssize_t i = r * W + c;
            if (!finite3(x[i], y[i], z[i])) continue;
            corr.world.emplace_back(x[i], y[i], z[i]);
            corr.pixel.emplace_back(subsampling * c + offset, subsampling * r + offset);
        }
    }
    return corr;
}

py::tuple forward_rgb(const py::object& scene_coords, int hypotheses, double threshold, std::optional<double> focal,
                      std::optional<double> ppx, std::optional<double> ppy, double inlier_alpha, double max_reproj,
                      int subsampling, long long random_seed, long long max_tries, int num_threads,
                      std::optional<double> focal_y) {
    require(focal && ppx && ppy, "focal, ppx and ppy are required");
    const Camera cam = make_camera(*focal, *ppx, *ppy, focal_y);
    const RansacParams params =
        make_params(hypotheses, threshold, inlier_alpha, max_reproj, random_seed, max_tries, num_threads);
    require(subsampling >= 1, "subsampling must be >= 1");
    const DoubleArray coords = as_float64(scene_coords, "scene_coords");
    const bool ok_shape = (coords.ndim() == 3 && coords.shape(0) == 3) ||
                          (coords.ndim() == 4 && coords.shape(0) == 1 && coords.shape(1) == 3);
    require(ok_shape, "scene_coords must have shape (3, H, W) or (1, 3, H, W), got " + shape_string(coords));
    return run_ransac(gather_grid(coords, subsampling), cam, params);
}

py::tuple estimate_pose(const py::object& points3d, const py::object& pixels, double focal, double ppx, double ppy,
                        int hypotheses, double threshold, double inlier_alpha, double max_reproj,
                        long long random_seed, long long max_tries, int num_threads,
                        std::optional<double> focal_y) {
    const Camera cam = make_camera(focal, ppx, ppy, focal_y);
    const RansacParams params =
        make_params(hypotheses, threshold, inlier_alpha, max_reproj, random_seed, max_tries, num_threads);
    const DoubleArray pts = as_float64(points3d, "points3d");
    const DoubleArray pix = as_float64(pixels, "pixels");
    require(pts.ndim() == 2 && pts.shape(1) == 3, "points3d must have shape (N, 3), got " + shape_string(pts));
    require(pix.ndim() == 2 && pix.shape(1) == 2, "pixels must have shape (N, 2), got " + shape_string(pix));
    require(pts.shape(0) == pix.shape(0), "points3d and pixels must have the same number of rows");
    const double* p = pts.data();
    const double* q = pix.data();
    Correspondences corr;
    for (py::ssize_t i = 0; i < pts.shape(0); ++i) {
        const double* w = p + 3 * i;
        const double* u = q + 2 * i;
        if (!finite3(w[0], w[1], w[2]) || !std::isfinite(u[0]) || !std::isfinite(u[1])) continue;
        corr.world.emplace_back(w[0], w[1], w[2]);
        corr.pixel.emplace_back(u[0], u[1]);
    }
    return run_ransac(corr, cam, params);
}

std::vector<py::array_t<double>> solve_p3p(const py::object& points3d, const py::object& pixels, double focal,
                                           double ppx, double ppy, std::optional<double> focal_y) {
    const Camera cam = make_camera(focal, ppx, ppy, focal_y);
    const DoubleArray pts = as_float64(points3d, "points3d");
    const DoubleArray pix = as_float64(pixels, "pixels");
    require(pts.ndim() == 2 && pts.shape(0) == 3 && pts.shape(1) == 3,
            "points3d must have shape (3, 3), got " + shape_string(pts));
    require(pix.ndim() == 2 && pix.shape(0) == 3 && pix.shape(1) == 2,
            "pixels must have shape (3, 2), got " + shape_string(pix));
    Vector3d bearings[3], world[3];
    for (int k = 0; k < 3; ++k) {
        world[k] = Vector3d(pts.at(k, 0), pts.at(k, 1), pts.at(k, 2));
        bearings[k] = dsac::bearing(cam, Vector2d(pix.at(k, 0), pix.at(k, 1)));
        require(world[k].allFinite() && bearings[k].allFinite(), "P3P inputs must be finite");
    }
    Pose poses[4];
    const int n = dsac::solve_p3p(bearings, world, poses);
    std::vector<py::array_t<double>> out;
    for (int i = 0; i < n; ++i) out.push_back(to_numpy(camera_to_world(poses[i])));
    return out;
}

}  // namespace

PYBIND11_MODULE(dsacstar, m) {
    m.doc() = R"doc(
DSAC*-style camera pose estimation from 2D-3D correspondences (CPU, OpenMP).

Pinhole camera without distortion, OpenCV axes (x right, y down, z forward).
Hypotheses come from a P3P solver on random minimal sets (the 4th point picks among the
P3P solutions and all 4 must reproject within `threshold`), are scored by a soft inlier
count inlier_alpha / N * sum(1 - sigmoid(beta (e - threshold))) over the N usable points,
with beta = 5 / threshold and errors clamped to `max_reproj` (points behind the camera count
as `max_reproj`), and the best one is refined by alternating inlier selection
(error < threshold) with Levenberg-Marquardt until the inlier set stops growing.

Randomness: one std::mt19937 per OpenMP thread, seeded with random_seed + thread index at
every call, so results depend only on the inputs, the seed and the thread count.
Correspondences with NaN/inf coordinates are ignored. Fewer than 4 usable correspondences
give (0, identity). The GIL is released while computing.
)doc";

    m.def("forward_rgb", &forward_rgb, py::arg("scene_coords"), py::arg("hypotheses") = 64,
          py::arg("threshold") = 10.0, py::arg("focal") = py::none(), py::arg("ppx") = py::none(),
          py::arg("ppy") = py::none(), py::arg("inlier_alpha") = 100.0, py::arg("max_reproj") = 100.0,
          py::arg("subsampling") = 8, py::arg("random_seed") = 1305, py::arg("max_hypotheses_tries") = 1000000,
          py::arg("num_threads") = 0, py::arg("focal_y") = py::none(),
          R"doc(
Estimate a camera pose from a dense scene-coordinate map.

scene_coords: float32/float64 array (3, H, W) or (1, 3, H, W) of world points; cell (x, y)
    observes pixel (subsampling*x + subsampling/2, subsampling*y + subsampling/2).
focal, ppx, ppy (required): intrinsics in pixels of the image the map was predicted from;
    focal is fx, and focal_y (optional, default focal) is fy.
hypotheses: number of RANSAC hypotheses.
threshold: inlier threshold in pixels.
inlier_alpha, max_reproj: soft-inlier score scale and reprojection error clamp (pixels).
random_seed, max_hypotheses_tries: RNG seed, P3P attempts per hypothesis.
num_threads: OpenMP threads, 0 for the OpenMP default.

Returns (inlier_count, cam_to_world) with cam_to_world a float64 4x4 matrix.
inlier_count is the inlier count of the last accepted refinement (0 if none ran, in which
case the pose is the best raw hypothesis, or identity if no hypothesis could be formed).
Raises ValueError on bad shapes, dtypes or parameters.
)doc");

    m.def("estimate_pose", &estimate_pose, py::arg("points3d"), py::arg("pixels"), py::arg("focal"),
          py::arg("ppx"), py::arg("ppy"), py::arg("hypotheses") = 64, py::arg("threshold") = 10.0,
          py::arg("inlier_alpha") = 100.0, py::arg("max_reproj") = 100.0, py::arg("random_seed") = 1305,
          py::arg("max_hypotheses_tries") = 1000000, py::arg("num_threads") = 0, py::arg("focal_y") = py::none(),
          R"doc(
Estimate a camera pose from explicit correspondences; same algorithm as forward_rgb.

points3d: (N, 3) float32/float64 world points; pixels: (N, 2) float32/float64 pixel
coordinates. Rows with a NaN/inf entry are ignored.
Returns (inlier_count, cam_to_world float64 4x4).
)doc");

    m.def("solve_p3p", &solve_p3p, py::arg("points3d"), py::arg("pixels"), py::arg("focal"), py::arg("ppx"),
          py::arg("ppy"), py::arg("focal_y") = py::none(),
          R"doc(
Minimal solver exposed for testing: all poses (up to 4) consistent with three 2D-3D
correspondences, as a list of float64 4x4 cam_to_world matrices. points3d (3, 3), pixels (3, 2).
)doc");
}
