"""Build the `dsacstar` extension: C++17, OpenMP, Eigen (header-only), pybind11. No OpenCV, no torch."""
import glob
import os
import site
import sys
import sysconfig
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

HERE = Path(__file__).resolve().parent


def _site_dirs():
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    dirs += site.getsitepackages() if hasattr(site, "getsitepackages") else []
    dirs += [p for p in sys.path if p.endswith("site-packages")]
    return dict.fromkeys(dirs)  # de-duplicated, order kept


def find_eigen():
    """EIGEN_INCLUDE_DIR, then cmeel-eigen inside site-packages, then the system copy."""
    candidates = []
    if os.environ.get("EIGEN_INCLUDE_DIR"):
        candidates.append(os.environ["EIGEN_INCLUDE_DIR"])
    candidates += [os.path.join(d, "cmeel.prefix", "include", "eigen3") for d in _site_dirs()]
    candidates += ["/usr/include/eigen3", "/usr/local/include/eigen3"]
    for path in candidates:
        if os.path.isfile(os.path.join(path, "Eigen", "Dense")):
            return path
    raise RuntimeError(
        "Eigen headers not found: pip install cmeel-eigen, install libeigen3-dev, "
        "or set EIGEN_INCLUDE_DIR to the folder that contains Eigen/Dense"
    )


sources = sorted(os.path.relpath(p, HERE) for p in glob.glob(str(HERE / "*.cpp")))
# Headers as dependencies: without them a cached build/ would skip rebuilding after a header edit.
headers = sorted(os.path.relpath(p, HERE) for p in glob.glob(str(HERE / "*.h")) + glob.glob(str(HERE / "*.hpp")))

# Compile the translation units in parallel (all cores unless DSACSTAR_BUILD_JOBS says otherwise).
ParallelCompile("DSACSTAR_BUILD_JOBS").install()

extension = Pybind11Extension(
    "dsacstar",
    sources,
    depends=headers,
    include_dirs=[find_eigen(), "."],
    cxx_std=17,
    extra_compile_args=["-O3", "-fopenmp"],
    extra_link_args=["-fopenmp"],
)

setup(
    name="dsacstar",
    version="0.1.0",
    description="DSAC*-style RANSAC pose estimation (P3P + soft inlier scoring + LM refinement)",
    ext_modules=[extension],
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
