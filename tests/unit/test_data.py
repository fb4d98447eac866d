"""Unit tests of latentserve.models.data: determinism, factor correctness on rendered pixels, holdout,
the registry's validation, digits and the folder loader (real temporary folders)."""
from __future__ import annotations

import colorsys
import json
import logging
import math

import numpy as np
import pytest
from PIL import Image

from latentserve.errors import NotFoundError, ValidationError
from latentserve.models.data import (
    DATASETS,
    dataset_kwargs,
    disks,
    load_dataset,
    load_from_meta,
    parse_holdout,
    shapes,
    to_model,
    to_uint8,
)
from latentserve.models.data.base import stratified_split

S = 32  # image size used throughout


def coverage(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float (N, H, W) fraction of each pixel the shape covers.

    Shapes have HSV value 1 (brightest channel 255 where fully covered) on black, so the brightest
    channel / 255 is the anti-aliased coverage."""
    return images.max(axis=-1).astype(np.float64) / 255.0


def centroids(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage-weighted centroid (N,), (N,) in pixels, pixel centres at index + 0.5."""
    ys, xs = np.mgrid[0 : cov.shape[1], 0 : cov.shape[2]] + 0.5
    area = cov.sum(axis=(1, 2))
    return (cov * xs).sum(axis=(1, 2)) / area, (cov * ys).sum(axis=(1, 2)) / area


def reference_coverage(label: int, scale: float, rotation: float, x: float, y: float, size: int, k: int = 16):
    """Independent rasteriser: analytic inside-tests at k x k points per pixel -> coverage (size, size)."""
    g = (np.arange(size * k) + 0.5) / k  # sample positions in pixel units
    px, py = np.meshgrid(g - x * size, g - y * size)  # relative to the centre, y down
    t = math.radians(rotation)
    mx, my = px, -py  # maths coordinates (y up): a screen-CCW rotation is a maths-CCW rotation
    u = mx * math.cos(t) + my * math.sin(t)  # rotate by -rotation into the shape's own frame
    w = -mx * math.sin(t) + my * math.cos(t)
    d = scale * size  # circumdiameter in pixels
    if label == 0:  # square, axis-aligned in its frame, diagonal d
        inside = (np.abs(u) <= d / (2 * math.sqrt(2))) & (np.abs(w) <= d / (2 * math.sqrt(2)))
    elif label == 1:  # ellipse, major axis along u
        inside = (u / (d / 2)) ** 2 + (w / (d / 4)) ** 2 <= 1.0
    else:  # triangle, apex up: edges face the directions 30, 150, 270 degrees at distance R/2
        inside = np.ones_like(u, bool)
        for a in (30.0, 150.0, 270.0):
            r = math.radians(a)
            inside &= u * math.cos(r) + w * math.sin(r) <= d / 4
    return inside.reshape(size, k, size, k).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def small_shapes():
    return shapes.build(image_size=S, n_train=90, n_test=30, seed=3)


# -- shapes: determinism ----------------------------------------------------------------------------------


def test_shapes_deterministic_and_independent_of_count(small_shapes):
    again = shapes.build(image_size=S, n_train=90, n_test=30, seed=3)
    assert np.array_equal(again.train.images, small_shapes.train.images)
    assert np.array_equal(again.train.factors, small_shapes.train.factors)
    fewer = shapes.build(image_size=S, n_train=20, n_test=5, seed=3)
    assert np.array_equal(fewer.train.images, small_shapes.train.images[:20])
    assert np.array_equal(fewer.test.images, small_shapes.test.images[:5])
    assert np.array_equal(fewer.train.labels, small_shapes.train.labels[:20])
    other = shapes.build(image_size=S, n_train=20, n_test=5, seed=4)
    assert not np.array_equal(other.train.factors, fewer.train.factors)
    # train and test come from different streams
    assert not np.allclose(small_shapes.train.factors[:30], small_shapes.test.factors)


def test_shapes_types_ranges_and_balance(small_shapes):
    ds = small_shapes
    assert ds.class_names == ["square", "ellipse", "triangle"]
    assert [f.name for f in ds.factors] == ["scale", "rotation", "x", "y", "hue"]
    tr = ds.train
    assert tr.images.shape == (90, S, S, 3) and tr.images.dtype == np.uint8
    assert tr.factors.shape == (90, 5) and tr.factors.dtype == np.float32
    assert tr.labels.dtype == np.int64
    assert np.bincount(tr.labels).tolist() == [30, 30, 30]
    for j, f in enumerate(ds.factors):
        assert np.all(tr.factors[:, j] >= f.low) and np.all(tr.factors[:, j] <= f.high), f.name
    period = np.array([90.0, 180.0, 120.0])[tr.labels]
    assert np.all(tr.factors[:, 1] < period)
    meta = ds.meta()
    json.dumps(meta)  # manifests store it
    assert meta["n_train"] == 90 and meta["factors"][0]["unit"]


def test_shapes_fully_inside_frame(small_shapes):
    cov = coverage(small_shapes.train.images)
    # the outermost ring of pixels is never touched: nothing is clipped at any scale/rotation
    assert cov[:, 0, :].max() == 0 and cov[:, -1, :].max() == 0
    assert cov[:, :, 0].max() == 0 and cov[:, :, -1].max() == 0
    # anti-aliased: edge pixels take intermediate values
    assert np.mean((cov > 0.05) & (cov < 0.95)) > 0.01


# -- shapes: factors measured on the pixels ----------------------------------------------------------------


def test_shapes_centroid_matches_position(small_shapes):
    tr = small_shapes.train
    cx, cy = centroids(coverage(tr.images))
    assert np.abs(cx - tr.factors[:, 2] * S).max() < 0.3  # pixels
    assert np.abs(cy - tr.factors[:, 3] * S).max() < 0.3


def test_shapes_area_matches_scale(small_shapes):
    tr = small_shapes.train
    area = coverage(tr.images).sum(axis=(1, 2))
    expected = shapes.analytic_area(tr.labels, tr.factors[:, 0], S)
    rel = area / expected - 1.0
    assert np.abs(rel).max() < 0.05 and abs(rel.mean()) < 0.01
    for c in range(3):  # grows with scale within each class
        m = tr.labels == c
        assert np.corrcoef(tr.factors[m, 0], area[m])[0, 1] > 0.99


def test_shapes_hue_matches_factor(small_shapes):
    tr = small_shapes.train
    for img, h in zip(tr.images, tr.factors[:, 4]):
        full = img[img.max(axis=-1) == 255]  # fully covered pixels: the pure colour
        assert len(full) > 5
        measured = colorsys.rgb_to_hsv(*(full.mean(axis=0) / 255.0))
        assert abs(measured[0] - h) < 0.01 and measured[1] > 0.99 and measured[2] > 0.99


def test_shapes_match_independent_rasteriser(small_shapes):
    """Geometry, rotation direction and anti-aliasing against analytic inside-tests (12 images)."""
    tr = small_shapes.train
    cov = coverage(tr.images)
    for i in range(12):
        ref = reference_coverage(int(tr.labels[i]), *map(float, tr.factors[i, :4]), S)
        err = np.abs(cov[i] - ref)
        assert err.max() < 0.2 and err.sum() / ref.sum() < 0.04, (i, tr.labels[i], tr.factors[i])


def test_shapes_ellipse_orientation_from_moments(small_shapes):
    tr = small_shapes.train
    cov = coverage(tr.images)
    ys, xs = np.mgrid[0:S, 0:S] + 0.5
    for i in np.flatnonzero(tr.labels == 1):
        m = cov[i] / cov[i].sum()
        dx, dy = xs - (m * xs).sum(), -(ys - (m * ys).sum())  # y up, so angles are screen-CCW
        cxx, cyy, cxy = (m * dx * dx).sum(), (m * dy * dy).sum(), (m * dx * dy).sum()
        angle = math.degrees(0.5 * math.atan2(2 * cxy, cxx - cyy)) % 180.0
        diff = abs(angle - tr.factors[i, 1]) % 180.0
        assert min(diff, 180.0 - diff) < 4.0, (angle, tr.factors[i, 1])


def test_render_reproduces_dataset_images(small_shapes):
    tr = small_shapes.train
    assert np.array_equal(shapes.render(tr.labels[:6], tr.factors[:6], S), tr.images[:6])


# -- holdout -----------------------------------------------------------------------------------------------


def test_shapes_holdout_band_only_in_test():
    band = (0.42, 0.5)
    ds = shapes.build(image_size=16, n_train=300, n_test=120, seed=0, holdout={"scale": band})
    tr, te = ds.train.factors[:, 0], ds.test.factors[:, 0]
    assert not np.any((tr >= band[0]) & (tr <= band[1]))
    assert np.any((te >= band[0]) & (te <= band[1]))
    assert tr.min() < 0.33 and tr.max() > 0.57  # the rest of the range is still covered
    assert ds.config["holdout"] == {"scale": [0.42, 0.5]}
    # only the held-out factor changes: image i keeps its other factors
    plain = shapes.build(image_size=16, n_train=300, n_test=120, seed=0)
    assert np.array_equal(plain.train.factors[:, 1:], ds.train.factors[:, 1:])
    assert np.array_equal(plain.test.images, ds.test.images)


def test_holdout_other_factors_and_validation():
    ds = shapes.build(image_size=16, n_train=150, n_test=3, holdout={"rotation": [30, 60], "hue": (0.0, 0.2)})
    rot, hue = ds.train.factors[:, 1], ds.train.factors[:, 4]
    assert not np.any((rot >= 30) & (rot <= 60)) and not np.any(hue <= 0.2)
    for bad, needle in [
        ({"size": (0.4, 0.5)}, "scale, rotation, x, y, hue"),  # unknown factor -> names the allowed ones
        ({"scale": (0.6, 0.7)}, "does not overlap"),  # outside [0.3, 0.6]
        ({"scale": (0.2, 0.9)}, "whole range"),
        ({"scale": (0.5, 0.4)}, "low < high"),
        ({"scale": "0.4"}, "two numbers"),
        ({"rotation": (0, 130)}, "square"),  # leaves no square rotation
        ([0.4, 0.5], "dict"),
    ]:
        with pytest.raises(ValidationError, match=needle):
            shapes.build(image_size=16, n_train=3, n_test=0, holdout=bad)


def test_empty_holdout_means_none():
    ds = shapes.build(image_size=16, n_train=3, n_test=0, holdout={})
    assert ds.config["holdout"] is None


def test_parse_holdout():
    assert parse_holdout("scale=0.4:0.45") == {"scale": [0.4, 0.45]}
    assert parse_holdout("scale=0.4:0.45, hue=0.1:0.2") == {"scale": [0.4, 0.45], "hue": [0.1, 0.2]}
    assert parse_holdout("") is None and parse_holdout(None) is None
    for bad in ("scale", "scale=0.4", "scale=a:b", "=0.1:0.2", "scale=0.1:nan"):
        with pytest.raises(ValidationError):
            parse_holdout(bad)


# -- registry ----------------------------------------------------------------------------------------------


def test_registry_validation_and_config_roundtrip():
    assert DATASETS == ("shapes", "disks", "modes", "textures", "textured", "digits", "folder")
    with pytest.raises(ValidationError, match="shapes, disks, modes, textures, textured, digits, folder"):
        load_dataset("mnist")
    with pytest.raises(ValidationError, match="allowed: image_size, n_train, n_test, seed, holdout"):
        load_dataset("shapes", n_images=10)
    with pytest.raises(ValidationError, match="needs path"):
        load_dataset("folder")
    for bad in ({"image_size": 7}, {"n_train": 0}, {"seed": -1}, {"n_test": 2.5}, {"image_size": True}):
        with pytest.raises(ValidationError):
            load_dataset("shapes", **bad)
    assert dataset_kwargs("disks")["vary_position"] is False
    ds = load_dataset("shapes", image_size=16, n_train=6, n_test=3, holdout={"x": (0.4, 0.45)})
    config = json.loads(json.dumps(ds.config))
    assert config == {"image_size": 16, "n_train": 6, "n_test": 3, "seed": 0, "holdout": {"x": [0.4, 0.45]}}
    again = load_from_meta(json.loads(json.dumps(ds.meta())))
    assert np.array_equal(again.train.images, ds.train.images)
    assert np.array_equal(again.test.factors, ds.test.factors)


def test_to_model_roundtrip(small_shapes):
    x = to_model(small_shapes.train.images[:4])
    assert x.shape == (4, 3, S, S) and x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x), small_shapes.train.images[:4])


# -- disks -------------------------------------------------------------------------------------------------


def test_disks_radius_matches_area_and_position():
    ds = disks.build(image_size=S, n_train=40, n_test=10, seed=1)
    assert ds.class_names == ["disk"] and [f.name for f in ds.factors] == ["radius"]
    assert ds.train.factors.shape == (40, 1) and np.all(ds.train.labels == 0)
    img = ds.train.images
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])  # white
    cov = coverage(img)
    r = ds.train.factors[:, 0].astype(np.float64)
    assert np.abs(cov.sum(axis=(1, 2)) / (math.pi * (r * S) ** 2) - 1).max() < 0.02
    cx, cy = centroids(cov)
    assert np.abs(cx - S / 2).max() < 0.1 and np.abs(cy - S / 2).max() < 0.1

    moved = disks.build(image_size=S, n_train=40, n_test=10, seed=1, vary_position=True)
    assert [f.name for f in moved.factors] == ["radius", "x", "y"]
    assert np.array_equal(moved.train.factors[:, 0], ds.train.factors[:, 0])  # same radii either way
    cx, cy = centroids(coverage(moved.train.images))
    assert np.abs(cx - moved.train.factors[:, 1] * S).max() < 0.2
    assert np.abs(cy - moved.train.factors[:, 2] * S).max() < 0.2
    assert coverage(moved.train.images)[:, 0, :].max() == 0  # inside the frame


def test_disks_holdout():
    ds = load_dataset("disks", image_size=16, n_train=200, n_test=100, holdout={"radius": [0.2, 0.25]})
    tr, te = ds.train.factors[:, 0], ds.test.factors[:, 0]
    assert not np.any((tr >= 0.2) & (tr <= 0.25)) and np.any((te >= 0.2) & (te <= 0.25))
    with pytest.raises(ValidationError, match="radius"):
        load_dataset("disks", n_train=2, n_test=0, holdout={"x": [0.45, 0.5]})  # x only with vary_position


# -- digits ------------------------------------------------------------------------------------------------


def test_digits():
    ds = load_dataset("digits")
    assert ds.class_names == [str(d) for d in range(10)] and ds.n_classes == 10
    assert len(ds.train) + len(ds.test) == 1797 and abs(len(ds.test) - 0.2 * 1797) < 10
    assert ds.train.images.shape[1:] == (32, 32, 3) and ds.train.images.dtype == np.uint8
    assert ds.train.factors.shape == (len(ds.train), 0) and ds.factors == []
    img = ds.test.images
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    assert img.max() > 200 and np.median(img) < 40  # white strokes on black
    assert set(np.unique(ds.test.labels)) == set(range(10))  # stratified
    again = load_dataset("digits", image_size=16, seed=0)
    assert np.array_equal(again.test.labels, ds.test.labels)  # split independent of image size
    other = load_dataset("digits", image_size=16, seed=1)
    assert not np.array_equal(other.test.labels, again.test.labels) or not np.array_equal(
        other.test.images, again.test.images
    )


def test_stratified_split():
    labels = np.repeat(np.arange(3), [10, 5, 1])
    tr, te = stratified_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(16))
    assert np.bincount(labels[te], minlength=3).tolist() == [2, 1, 0]
    tr2, te2 = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(te, te2)


# -- folder ------------------------------------------------------------------------------------------------


def _save(path, array, **kw):
    Image.fromarray(np.asarray(array, np.uint8)).save(path, **kw)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "pets"
    (root / "dogs").mkdir(parents=True)
    (root / "cats").mkdir()
    (root / ".cache").mkdir()  # hidden: ignored
    # cats: a wide image (red sides, blue centre square), a transparent RGBA, a greyscale, a corrupt file
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = (255, 0, 0)
    wide[:, 30:] = (255, 0, 0)
    wide[:, 10:30] = (0, 0, 255)
    _save(root / "cats" / "a_wide.png", wide)
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[..., 1] = 255  # green, fully transparent -> black background
    _save(root / "cats" / "b_clear.png", rgba)
    _save(root / "cats" / "c_grey.png", np.full((50, 50), 128, np.uint8))
    (root / "cats" / "d_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "cats" / "notes.txt").write_text("not an image, ignored")
    for k in range(3):
        _save(root / "dogs" / f"dog{k}.jpg", np.full((64, 48, 3), 60 * k, np.uint8), quality=95)
    return root


def test_folder_loads_classes_and_skips_corrupt(image_folder, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("folder", path=str(image_folder), image_size=16)
    assert ds.class_names == ["cats", "dogs"]
    assert ds.info["skipped_files"] == 1 and ds.info["skipped"] == ["cats/d_broken.png"]
    assert ds.info["files_per_class"] == {"cats": 3, "dogs": 3}
    assert "skipped 1 unreadable" in caplog.text
    assert len(ds.train) + len(ds.test) == 6
    assert np.bincount(ds.test.labels, minlength=2).tolist() == [1, 1]  # round(0.2 * 3) = 1 per class
    assert ds.train.images.shape[1:] == (16, 16, 3) and ds.train.factors.shape == (len(ds.train), 0)
    assert ds.meta()["info"]["skipped_files"] == 1
    json.dumps(ds.meta())
    # the images themselves, in sorted file order per class
    full = load_dataset("folder", path=str(image_folder), image_size=16, test_fraction=0.0)
    assert len(full.test) == 0
    wide, clear, grey = full.train.images[:3]
    assert np.all(wide[..., 2] > 240) and wide[..., 0].max() < 16  # centre crop removed the red sides
    assert clear.max() == 0  # transparent over black
    assert np.all(grey == 128)
    assert abs(int(full.train.images[5].mean()) - 120) <= 3  # dogs/dog2.jpg, JPEG-lossy
    # deterministic, and the config rebuilds it
    again = load_from_meta(ds.meta())
    assert np.array_equal(again.train.images, ds.train.images)


def test_folder_image_modes(tmp_path):
    from latentserve.models.data.folder import load_image

    Image.new("I;16", (30, 20), 30000).save(tmp_path / "deep.png")  # 16-bit grey: rescaled, not clipped
    assert np.all(np.abs(load_image(tmp_path / "deep.png", 8).astype(int) - 117) <= 1)
    Image.new("CMYK", (40, 30), (0, 255, 0, 0)).save(tmp_path / "print.jpg")  # CMYK magenta
    out = load_image(tmp_path / "print.jpg", 8)
    assert out.shape == (8, 8, 3) and out[..., 0].min() > 240 and out[..., 1].max() < 15


def test_folder_errors(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        load_dataset("folder", path=str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValidationError, match="no class subfolders"):
        load_dataset("folder", path=str(empty))
    _save(empty / "loose.png", np.zeros((4, 4, 3)))
    with pytest.raises(ValidationError, match="move them into class subfolders"):
        load_dataset("folder", path=str(empty))
    (empty / "a").mkdir()
    (empty / "b").mkdir()
    _save(empty / "a" / "x.png", np.zeros((4, 4, 3)))
    (empty / "b" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ValidationError, match="b in .* no readable images"):
        load_dataset("folder", path=str(empty))
    with pytest.raises(ValidationError, match="not a folder"):
        load_dataset("folder", path=str(empty / "loose.png"))
    with pytest.raises(ValidationError, match="test_fraction"):
        load_dataset("folder", path=str(empty), test_fraction=1.5)


# every builder's common arguments: the exact messages (models/data/base.py check_build_args), per data set
_SIZES = {"shapes": (16, 256), "disks": (16, 256), "modes": (32, 256), "textures": (8, 256), "textured": (16, 256),
          "digits": (8, 256), "folder": (8, 512)}


@pytest.mark.parametrize("name", sorted(_SIZES))
def test_common_build_argument_messages(name, tmp_path):
    lo, hi = _SIZES[name]
    base = {"path": str(tmp_path)} if name == "folder" else {}
    cases = [({"image_size": lo - 1}, f"image_size must be in [{lo}, {hi}], got {lo - 1}"),
             ({"image_size": hi + 1}, f"image_size must be in [{lo}, {hi}], got {hi + 1}"),
             ({"image_size": True}, f"image_size must be an integer in [{lo}, {hi}], got True"),
             ({"seed": -1}, "seed must be in [0, 4294967295], got -1"),
             ({"seed": 1.5}, "seed must be an integer in [0, 4294967295], got 1.5")]
    if name in ("digits", "folder"):
        cases += [({"test_fraction": 0.95}, "test_fraction must be in [0.0, 0.9], got 0.95"),
                  ({"test_fraction": "x"}, "test_fraction must be a number in [0.0, 0.9], got 'x'")]
    else:
        cases += [({"n_train": 0}, "n_train must be in [1, 1000000], got 0"),
                  ({"n_test": 2.5}, "n_test must be an integer in [0, 1000000], got 2.5"),
                  ({"n_test": 1_000_001}, "n_test must be in [0, 1000000], got 1000001")]
    for bad, message in cases:
        with pytest.raises(ValidationError) as exc:
            load_dataset(name, **base, **bad)
        assert str(exc.value) == message, (bad, str(exc.value))
