"""Calibration files (three formats), EXIF focal, and undistortion, against independent truth."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

import calibration
from calibration import Intrinsics, image_cameras, read_calibration_file
from cli_common import UserError


def _write(path, text):
    path.write_text(text)
    return path


def test_one_line_formats(tmp_path):
    four = read_calibration_file(_write(tmp_path / "a.txt", "# comment\n1520.4 1525.9 302.32 246.87  # gantry\n"))
    assert four.for_image("x.png", 640, 480) == Intrinsics(1520.4, 1525.9, 302.32, 246.87, 640, 480)
    six = read_calibration_file(_write(tmp_path / "b.txt", "1520.4 1525.9 302.32 246.87 640 480\n"))
    assert six.for_image("x.png", 640, 480).cx == 302.32
    with pytest.raises(UserError, match=r"b.txt: calibration is for 640x480, but y.png is 480x640"):
        six.for_image("y.png", 480, 640)


def test_per_image_format_round_trips(tmp_path):
    cams = [Intrinsics(500.0, 501.0, 321.5, 239.0, 640, 480),
            Intrinsics(800.0, 800.0, 200.0, 410.0, 400, 800, (0.05, -0.08, 0.001, 0.0002)),
            Intrinsics(810.0, 812.0, 205.0, 400.0, 400, 800, (0.05, -0.08, 0.001, 0.0002, 0.01))]
    names = ["seq/a.png", "b.jpg", "c.jpg"]
    path = _write(tmp_path / "cams.txt", calibration.format_per_image_file(names, cams))
    parsed = read_calibration_file(path)
    for name, cam in zip(names, cams):
        assert parsed.for_image(f"/data/{name}", cam.width, cam.height) == cam
    with pytest.raises(UserError, match="no calibration for image"):
        parsed.for_image("/data/d.jpg", 400, 800)


def test_colmap_cameras_round_trip_and_images_txt(tmp_path):
    cams = [Intrinsics(500.0, 501.0, 321.5, 239.0, 640, 480),
            Intrinsics(800.0, 800.0, 200.0, 410.0, 400, 800, (0.05, -0.08, 0.001, 0.0002)),
            Intrinsics(810.0, 812.0, 205.0, 400.0, 400, 800, (0.05, -0.08, 0.001, 0.0002, 0.01))]
    (tmp_path / "model").mkdir()
    cameras_txt = _write(tmp_path / "model" / "cameras.txt", calibration.format_colmap_cameras(cams))
    # images.txt: each image line is followed by its 2D points line, which may be empty
    _write(tmp_path / "model" / "images.txt", "# header\n1 1 0 0 0 0 0 0 2 b.jpg\n\n"
           "2 1 0 0 0 0 0 0 1 a.png\n10 20 -1\n3 1 0 0 0 0 0 0 3 c.jpg\n\n")
    parsed = read_calibration_file(cameras_txt)
    assert parsed.for_image("x/a.png", 640, 480) == cams[0]
    assert parsed.for_image("b.jpg", 400, 800) == cams[1]
    assert parsed.for_image("c.jpg", 400, 800) == cams[2]


@pytest.mark.parametrize("line, expected", [
    ("1 SIMPLE_PINHOLE 640 480 500 320 240", Intrinsics(500, 500, 320, 240, 640, 480)),
    ("1 PINHOLE 640 480 500 502 321 241", Intrinsics(500, 502, 321, 241, 640, 480)),
    ("1 SIMPLE_RADIAL 640 480 500 320 240 0.1", Intrinsics(500, 500, 320, 240, 640, 480, (0.1, 0, 0, 0))),
    ("1 RADIAL 640 480 500 320 240 0.1 -0.2", Intrinsics(500, 500, 320, 240, 640, 480, (0.1, -0.2, 0, 0))),
    ("1 OPENCV 640 480 500 502 320 240 0.1 -0.2 0.01 0.02",
     Intrinsics(500, 502, 320, 240, 640, 480, (0.1, -0.2, 0.01, 0.02))),
])
def test_colmap_models(tmp_path, line, expected):
    parsed = read_calibration_file(_write(tmp_path / "one.txt", f"# one camera\n{line}\n"))
    assert parsed.for_image("any.png", 640, 480) == expected


@pytest.mark.parametrize("text, message", [
    ("1520 1525 302\n", r"bad.txt:1: expected 'image_name fx fy cx cy"),
    ("a.png 1 2 3 4\nb.png 1 2 x 4\n", r"bad.txt:2: expected numbers"),
    ("a.png -1 2 3 4\n", r"bad.txt:1: focal lengths must be positive"),
    ("1 PINHOLE 640 480 500 320 240\n", r"bad.txt:1: PINHOLE has 4 parameters, found 3"),
    ("1 PINHOLE 640 480 500 500 320 240\n2 PINHOLE 640 480 500 500 320 240\n", r"2 cameras but no images.txt"),
    ("# nothing\n", r"empty calibration file"),
])
def test_errors_name_file_and_line(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        read_calibration_file(_write(tmp_path / "bad.txt", text))


def test_external_focal_scales_a_calibration_file(tmp_path):
    path = _write(tmp_path / "c.txt", "1000 1010 300 250\n")
    cams = image_cameras(["a.png", "b.png"], [(640, 480)] * 2, path, external_focal=1100.0, log=False)
    assert cams[1].fx == pytest.approx(1100.0) and cams[1].fy == pytest.approx(1111.0)
    assert (cams[1].cx, cams[1].cy) == (300, 250)


def test_rescaling_to_network_resolution():
    cam = Intrinsics(1375.5, 1374.5, 554.6, 965.3, 1080, 1920)
    small = cam.for_short_side(480)
    assert (small.width, small.height) == (480, 853)
    assert small.fx == pytest.approx(1375.5 * 480 / 1080) and small.cy == pytest.approx(965.3 * 853 / 1920)


def _jpeg_with_exif(path, size, tags):
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd.update(tags)
    Image.new("RGB", size, (90, 120, 150)).save(path, exif=exif)
    return str(path)


def test_exif_35mm_equivalent(tmp_path):
    # 28 mm equivalent on a 4000 x 3000 photo: the 36 x 24 mm frame's diagonal maps to the image diagonal
    path = _jpeg_with_exif(tmp_path / "a.jpg", (400, 300), {0xA405: 28})
    cam = image_cameras([path], [(400, 300)], log=False)[0]
    assert cam.fx == pytest.approx(28 * 500 / math.hypot(36, 24)) and cam.source == "EXIF 35 mm equivalent"


def test_exif_focal_plane_resolution(tmp_path):
    # 4.2 mm lens, 1000 px per cm on the sensor -> 420 px
    path = _jpeg_with_exif(tmp_path / "b.jpg", (400, 300), {0x920A: 4.2, 0xA20E: 1000.0, 0xA210: 3})
    assert image_cameras([path], [(400, 300)], log=False)[0].fx == pytest.approx(420.0)


@pytest.mark.parametrize("source", ["exif", "external", "file", "heuristic"])
def test_ace_zero_knows_whether_the_focal_is_known(tmp_path, source):
    """A focal given, calibrated or from EXIF (in the cameras file ace_zero writes for EXIF focals) is known; the
    heuristic's guess is not."""
    import ace_zero
    images = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for path in images:
        if source == "exif":
            _jpeg_with_exif(path, (400, 300), {0xA405: 28})
        else:
            Image.new("RGB", (400, 300)).save(path)
    flags = {"external": ["--use_external_focal_length", "420"],
             "file": ["--calibration_file", str(tmp_path / "k.txt")]}
    (tmp_path / "k.txt").write_text("420 420 200 150 400 300\n")
    args = ace_zero.build_parser().parse_args([str(tmp_path / "*.jpg"), str(tmp_path / "out"),
                                               *flags.get(source, [])])
    args.results_folder.mkdir()
    ace_zero.initial_cameras(args, [str(p) for p in images])
    assert ace_zero.focal_known(args) == (source != "heuristic")


def test_heuristic_without_exif(tmp_path, caplog):
    path = tmp_path / "c.png"
    Image.new("RGB", (640, 480)).save(path)
    with caplog.at_level("INFO"):
        cam = image_cameras([str(path)], [(640, 480)])[0]
    assert cam.fx == pytest.approx(560.0) and (cam.cx, cam.cy) == (320, 240)
    assert "heuristic" in caplog.text


def test_undistortion_matches_opencv_projection():
    """A dot drawn where cv2.projectPoints puts a 3D point with distortion must land, after undistortion,
    where the pinhole projection of that point is."""
    import cv2
    cam = Intrinsics(500.0, 498.0, 330.0, 235.0, 640, 480, (0.0578, -0.0805, -0.00098, 0.00016))
    K_cv = cam.matrix() - np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]])  # OpenCV: pixel centres at integers
    points = np.array([[0.5, 0.4, 1.0], [-0.55, -0.3, 1.0], [0.1, -0.42, 1.0], [0.0, 0.0, 1.0]])
    distorted, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), K_cv, cam.opencv_distortion())
    pinhole = points[:, :2] / points[:, 2:] * [cam.fx, cam.fy] + [cam.cx, cam.cy] - 0.5
    image = np.zeros((480, 640, 3), np.uint8)
    for x, y in distorted[:, 0]:
        cv2.circle(image, (int(round(x * 16)), int(round(y * 16))), 3 * 16, (255, 255, 255), -1, shift=4)
    out = calibration.undistort(image, cam)[:, :, 0].astype(np.float64)
    assert np.abs(distorted[:, 0] - pinhole).max() > 2  # the distortion is visible (fox-like coefficients)
    for x, y in pinhole:
        window = out[int(y) - 8:int(y) + 9, int(x) - 8:int(x) + 9]
        rows, cols = np.mgrid[int(y) - 8:int(y) + 9, int(x) - 8:int(x) + 9]
        centroid = np.array([(cols * window).sum(), (rows * window).sum()]) / window.sum()
        assert np.linalg.norm(centroid - [x, y]) < 0.3


def test_ace_zero_writes_initial_cameras_for_mixed_sizes(tmp_path):
    """Images of two sizes cannot share one focal: ace_zero writes each image's camera into a calibration file
    that every stage then reads; one size without EXIF keeps the original's single heuristic focal."""
    from types import SimpleNamespace

    import ace_zero
    same = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in same:
        Image.new("RGB", (640, 480)).save(path)
    args = SimpleNamespace(calibration_file=None, use_external_focal_length=-1, results_folder=tmp_path)
    ace_zero.initial_cameras(args, [str(p) for p in same])
    assert args.calibration_file is None
    Image.new("RGB", (480, 640)).save(tmp_path / "c.png")
    images = [str(p) for p in same] + [str(tmp_path / "c.png")]
    ace_zero.initial_cameras(args, images)
    cameras = image_cameras(images, [(640, 480), (640, 480), (480, 640)], args.calibration_file, log=False)
    assert [(c.cx, c.cy) for c in cameras] == [(320, 240), (320, 240), (240, 320)]
    assert all(c.fx == pytest.approx(560.0) for c in cameras)
    assert not ace_zero.focal_known(args)  # the file holds the heuristic's guesses: nothing is known
    args.calibration_file = None
    args.use_external_focal_length = 500.0
    ace_zero.initial_cameras(args, images)
    assert ace_zero.focal_known(args)
