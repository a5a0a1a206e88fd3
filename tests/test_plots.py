"""Tests of mpiland.plots: every plot kind on small hand-written surface files."""

from __future__ import annotations

import json

import h5py
import matplotlib.image as mpimg
import numpy as np
import pytest

from mpiland.errors import SurfaceFileError
from mpiland.plots import KINDS_2D, plot_surface, render
from mpiland.report import load_surface

JOB = {"name": "digits-mlp", "model": {"factory": "mpiland.models:mlp"}}


def write_surface(path, x, y=None, metrics=None, done=None, mpiland=True, schema=1, job=JOB):
    """Write a small surface file the way `mpiland run` (or, mpiland=False, the reference tool) does."""
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = np.asarray(x, dtype=np.float64)
        if y is not None:
            f["ycoordinates"] = np.asarray(y, dtype=np.float64)
        for name, arr in (metrics or {}).items():
            f[name] = np.asarray(arr, dtype=np.float64)
        if done is not None:
            f["done"] = np.asarray(done, dtype=np.uint8)
            f["seconds"] = np.where(np.asarray(done, bool), 0.25, np.nan)
        if mpiland:
            f.attrs["mpiland_schema"] = schema
            f.attrs["dims"] = 1 if y is None else 2
            f.attrs["metrics"] = list(metrics or {})
            f.attrs["splits"] = list(dict.fromkeys(n.split("_")[0] for n in metrics or {}))
            f.attrs["x_label"] = "direction x"
            if y is not None:
                f.attrs["y_label"] = "direction y"
            if job is not None:
                f.attrs["job_json"] = json.dumps(job)
    return path


def bowl(nx=25, ny=19):
    """A loss basin at (0.3, -0.2) on a grid that is not square, so orientation errors show."""
    x = np.linspace(-1, 1, nx)
    y = np.linspace(-0.8, 1.0, ny)
    X, Y = np.meshgrid(x, y, indexing="ij")
    loss = 0.05 + (X - 0.3) ** 2 + 4 * (Y + 0.2) ** 2
    acc = np.clip(1 - 0.4 * loss, 0, 1)
    return x, y, loss, acc


@pytest.fixture
def surf_2d(tmp_path):
    x, y, loss, acc = bowl()
    return write_surface(tmp_path / "surf.h5", x, y, {"test_loss": loss, "test_acc": acc},
                         done=np.ones(loss.shape))


@pytest.fixture
def surf_1d(tmp_path):
    x = np.linspace(-1, 1, 41)
    test_loss = 0.1 + (x - 0.2) ** 2
    train_loss = 0.05 + (x - 0.15) ** 2
    metrics = {"train_loss": train_loss, "train_acc": 1 - 0.3 * train_loss, "train_loss_stderr": 0.05 + 0 * x,
               "test_loss": test_loss, "test_acc": 1 - 0.3 * test_loss, "test_loss_stderr": 0.08 + 0 * x}
    return write_surface(tmp_path / "curve.h5", x, None, metrics, done=np.ones(41))


@pytest.fixture
def surf_partial(tmp_path):
    x, y, loss, acc = bowl()
    done = np.zeros(loss.shape, dtype=bool)
    done[:14] = True
    done[14, :5] = True
    return write_surface(tmp_path / "partial.h5", x, y, {"test_loss": np.where(done, loss, np.nan)}, done=done)


@pytest.fixture
def surf_divergent(tmp_path):
    x, y, loss, acc = bowl()
    loss = loss.copy()
    loss[0, 0] = np.inf
    loss[-1, -1] = np.nan
    loss[0, -1] = 1e30
    loss[-1, 0] = -np.inf
    acc = acc.copy()
    acc[0, 0] = np.nan
    return write_surface(tmp_path / "div.h5", x, y, {"test_loss": loss, "test_acc": acc}, done=np.ones(loss.shape))


@pytest.fixture
def surf_reference(tmp_path):
    """As written by tomgoldstein/loss-landscape: no attributes, no done, -1 where not computed yet."""
    x, y, loss, acc = bowl()
    train_loss = -np.ones(loss.shape)
    train_acc = -np.ones(loss.shape)
    train_loss[:20] = loss[:20]
    train_acc[:20] = 100 * acc[:20]
    path = write_surface(tmp_path / "ref_surface.h5", x, y, {"train_loss": train_loss, "train_acc": train_acc},
                         mpiland=False)
    with h5py.File(path, "a") as f:
        f["dir_file"] = "model.t7_weights_xignore=biasbn_xnorm=filter.h5"
    return path


def assert_image(path, min_bytes=5000):
    assert path.exists(), path
    assert path.stat().st_size > min_bytes, (path, path.stat().st_size)
    if path.suffix == ".png":
        img = mpimg.imread(path)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
        q = (img[..., :3].reshape(-1, 3) * 255).astype(np.uint32)
        colours = np.unique(q[:, 0] << 16 | q[:, 1] << 8 | q[:, 2])
        assert colours.size > 20, "image is (almost) one flat colour"
        ink = (img[..., :3].min(axis=2) < 0.9).mean()
        assert ink > 0.03, f"only {ink:.1%} of the image is not white"
    else:
        assert path.read_bytes()[:4] == b"%PDF"


@pytest.mark.parametrize("kind", KINDS_2D)
def test_2d_kinds_write_images(surf_2d, kind):
    paths = plot_surface(surf_2d, kind=kind)
    assert paths == [surf_2d.with_name(f"surf_{kind}_test_loss.png")]
    assert_image(paths[0])


def test_auto_kinds_and_default_names(surf_2d, surf_1d):
    assert plot_surface(surf_2d) == [surf_2d.with_name("surf_contour_test_loss.png")]
    # no metric: the first <split>_loss of the file (train comes first in this file's splits)
    paths = plot_surface(surf_1d)
    assert paths == [surf_1d.with_name("curve_curve_train_loss.png")]
    assert_image(paths[0])


def test_curve_options(surf_1d, tmp_path):
    (p,) = plot_surface(surf_1d, metric="test_loss", log=True, out=tmp_path / "figs")
    assert p == tmp_path / "figs" / "curve_curve_test_loss.png"
    assert_image(p)
    fig = render(load_surface(surf_1d), "curve")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "direction x"
    labels = ax.get_legend().get_texts()
    assert {t.get_text() for t in labels} >= {"train_loss", "test_loss", "train_acc", "test_acc",
                                             "test_loss \u00b1 stderr"}
    notes = [t.get_text() for t in ax.texts]
    assert any("min 0.05" in n and "x=0.15" in n for n in notes)
    assert len(fig.axes) == 2  # twin axis for accuracy
    (p,) = plot_surface(surf_1d, metric="test_acc")
    assert_image(p)


def test_pdf_and_explicit_outputs(surf_2d, tmp_path):
    paths = plot_surface(surf_2d, kind="heatmap", formats=("png", "pdf"))
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    for p in paths:
        assert_image(p)
    (p,) = plot_surface(surf_2d, kind="contourf", out=tmp_path / "out" / "fig.pdf")
    assert p == tmp_path / "out" / "fig.pdf"
    assert_image(p)
    paths = plot_surface(surf_2d, kind="all", out=tmp_path / "all.png", metric="test_acc")
    assert [p.name for p in paths] == [f"all_{k}.png" for k in KINDS_2D]
    (tmp_path / "d").mkdir()
    paths = plot_surface(surf_2d, kind="contour", out=tmp_path / "d", formats="pdf")
    assert paths == [tmp_path / "d" / "surf_contour_test_loss.pdf"]
    assert_image(paths[0])


def test_heatmap_orientation(surf_2d):
    s = load_surface(surf_2d)
    fig = render(s, "heatmap")
    ax = fig.axes[0]
    mesh = ax.collections[0]
    arr = np.asarray(mesh.get_array()).reshape(s.y.size, s.x.size)
    np.testing.assert_allclose(arr, s.metrics["test_loss"].T)  # rows follow y, columns x
    assert ax.get_xlim()[0] < -1 < 1 < ax.get_xlim()[1]
    assert ax.get_ylim()[0] < -0.8 and ax.get_ylim()[1] > 1.0
    star = [l for l in ax.get_lines() if l.get_marker() == "*"][0]
    assert star.get_xdata()[0] == pytest.approx(1 / 3) and star.get_ydata()[0] == pytest.approx(-0.2)
    assert ax.get_xlabel() == "direction x" and ax.get_ylabel() == "direction y"
    assert "digits-mlp" in ax.get_title() and "test_loss" in ax.get_title()


def test_partial_file(surf_partial):
    for kind in ("contour", "heatmap", "surface3d"):
        (p,) = plot_surface(surf_partial, kind=kind)
        assert_image(p)
    fig = render(load_surface(surf_partial), "heatmap")
    assert "271/475 points done" in fig.axes[0].get_title()
    assert np.ma.getmaskarray(fig.axes[0].collections[0].get_array()).sum() == 475 - 271


def test_divergent_points(surf_divergent):
    for kind in KINDS_2D:
        (p,) = plot_surface(surf_divergent, kind=kind)
        assert_image(p)
    (p,) = plot_surface(surf_divergent, kind="contourf", log=True, out=surf_divergent.with_name("log.png"))
    assert_image(p)
    fig = render(load_surface(surf_divergent), "contour")
    levels = fig.axes[0].collections[0].levels
    assert levels.max() < 10  # the 1e30 point does not swallow the basin
    assert levels.min() == pytest.approx(0.05, abs=0.01)


def test_reference_tool_files(surf_reference, tmp_path):
    paths = plot_surface(surf_reference, kind="all")
    assert [p.name for p in paths] == [f"ref_surface_{k}_train_loss.png" for k in KINDS_2D]
    for p in paths:
        assert_image(p)
    fig = render(load_surface(surf_reference), "heatmap")
    assert fig.axes[0].get_xlabel() == "x" and fig.axes[0].get_ylabel() == "y"
    shown = fig.axes[0].collections[0].get_array()
    assert np.ma.getmaskarray(shown).sum() == (25 - 20) * 19  # -1 placeholders are blank
    x = np.linspace(-1, 1, 31)
    path = write_surface(tmp_path / "ref1d.h5", x, None, {"train_loss": x ** 2 + 0.1, "train_acc": 90 - x ** 2},
                         mpiland=False)
    (p,) = plot_surface(path)
    assert p.name == "ref1d_curve_train_loss.png"
    assert_image(p)


def test_markers(surf_2d):
    fig = render(load_surface(surf_2d), "contour", markers={"model B": (0.5, 0.5)})
    assert "model B" in [t.get_text() for t in fig.axes[0].texts]
    (p,) = plot_surface(surf_2d, kind="contourf", markers={"model B": (0.5, 0.5)})
    assert_image(p)


def test_explicit_levels_and_limits(surf_2d):
    fig = render(load_surface(surf_2d), "contour", levels=[0.1, 0.5, 1.0])
    np.testing.assert_allclose(fig.axes[0].collections[0].levels, [0.1, 0.5, 1.0])
    fig = render(load_surface(surf_2d), "contourf", levels=5, vmin=0.0, vmax=2.0)
    np.testing.assert_allclose(fig.axes[0].collections[0].levels, np.linspace(0, 2, 5))


def test_errors(surf_1d, surf_2d, tmp_path):
    with pytest.raises(SurfaceFileError, match="1D surface.*'contour'.*valid kinds.*curve"):
        plot_surface(surf_1d, kind="contour")
    with pytest.raises(SurfaceFileError, match="2D surface.*'curve'.*contour, contourf, heatmap, surface3d"):
        plot_surface(surf_2d, kind="curve")
    with pytest.raises(SurfaceFileError, match="unknown plot kind 'bar'"):
        plot_surface(surf_2d, kind="bar")
    with pytest.raises(SurfaceFileError, match="no metric 'train_loss'; available metrics: test_loss, test_acc"):
        plot_surface(surf_2d, metric="train_loss")
    with pytest.raises(SurfaceFileError, match="unsupported suffix .jpg"):
        plot_surface(surf_2d, out=tmp_path / "x.jpg")
    with pytest.raises(SurfaceFileError, match="unsupported image format 'gif'"):
        plot_surface(surf_2d, formats=("gif",))
    with pytest.raises(SurfaceFileError, match="vmin"):
        plot_surface(surf_2d, kind="heatmap", vmin=2, vmax=1)
    with pytest.raises(SurfaceFileError, match="no such file"):
        plot_surface(tmp_path / "missing.h5")
    (tmp_path / "notes.h5").write_text("not hdf5")
    with pytest.raises(SurfaceFileError, match="not an HDF5 file"):
        plot_surface(tmp_path / "notes.h5")
    x, y, loss, acc = bowl()
    newer = write_surface(tmp_path / "newer.h5", x, y, {"test_loss": loss}, done=np.ones(loss.shape), schema=99)
    with pytest.raises(SurfaceFileError, match="upgrade mpiland"):
        plot_surface(newer)


def test_nothing_computed(tmp_path):
    x, y, loss, acc = bowl()
    empty = write_surface(tmp_path / "empty.h5", x, y, {"test_loss": np.full(loss.shape, np.nan)},
                          done=np.zeros(loss.shape))
    with pytest.raises(SurfaceFileError, match="nothing computed yet.*run the job first"):
        plot_surface(empty)
    dead = write_surface(tmp_path / "dead.h5", x, y, {"test_loss": np.full(loss.shape, np.inf)},
                         done=np.ones(loss.shape))
    with pytest.raises(SurfaceFileError, match="every computed point of test_loss is inf or NaN"):
        plot_surface(dead)
    assert not list(tmp_path.glob("*.png"))
