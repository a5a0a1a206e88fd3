"""Tests of mpiland.plots: every plot kind on small hand-written surface files."""

from __future__ import annotations

import h5py
import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib import colors as mcolors

from mpiland.errors import SurfaceFileError
from mpiland.plots import KINDS_2D, andrews_curves, plot_surface, plot_trajectory, render, trajectory_figures
from mpiland.surface.reader import load_surface
from surfaces import T, bump_path, quadratic, write_curve_surface, write_pca_surface, write_surface


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
        assert ink > 0.02, f"only {ink:.1%} of the image is not white"  # thin lines, a legend below the axes
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
    assert paths == [surf_1d.with_name("curve_curve.png")]  # every split's loss and accuracy: no one metric
    assert_image(paths[0])


def test_curve_options(surf_1d, tmp_path):
    (p,) = plot_surface(surf_1d, metric="test_loss", log=True, out=tmp_path / "figs")
    assert p == tmp_path / "figs" / "curve_curve_test_loss.png"
    assert_image(p)
    fig = render(load_surface(surf_1d), "curve")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "direction x"
    labels = fig.legends[0].get_texts()  # below the axes, outside the data
    assert {t.get_text() for t in labels} >= {"train_loss", "test_loss", "train_acc", "test_acc",
                                             "test_loss \u00b1 stderr"}
    notes = [t.get_text() for t in ax.texts]
    assert any("min 0.05" in n and "x=0.15" in n for n in notes)
    assert not any("barrier" in n for n in notes)  # a convex curve through θ* has none to show
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
    assert p.name == "ref1d_curve.png"
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


# ---------------------------------------------------------------------------
# what the file knows: models, trajectory, line_ metrics, barriers, Hessian maps


def lines_at(ax, x):
    """Line2D objects whose x data are all equal to ``x`` (vertical lines and bars)."""
    return [l for l in ax.get_lines() if len(l.get_xdata()) and np.allclose(np.asarray(l.get_xdata(), float), x)]


def test_curve_with_straight_line_barriers_and_models(tmp_path):
    s = load_surface(write_curve_surface(tmp_path / "bezier.h5"))
    fig = render(s, "curve")
    ax = fig.axes[0]
    by_label = {l.get_label(): l for l in ax.get_lines()}
    curve, line = by_label["test_loss"], by_label["line_test_loss"]
    assert line.get_linestyle() == "--" and curve.get_linestyle() == "-"
    series = ax.get_lines() + fig.axes[1].get_lines()
    named = [l for l in series if l.get_label() in ("test_loss", "line_test_loss", "test_acc", "line_test_acc")]
    assert len(named) == 4 and len({l.get_color() for l in named}) == 4  # a colour per series
    notes = [t.get_text() for t in ax.texts]
    assert "barrier 0.3 at t=0.45" in notes
    assert "straight line: barrier 0.8 at t=0.5" in notes
    bar = [l for l in lines_at(ax, 0.45) if l.get_linewidth() > 2][0]  # chord (1.225) up to the curve (1.525)
    np.testing.assert_allclose(bar.get_ydata(), [1.225, 1.525])
    assert {"A", "B"} <= set(notes)
    for t in (0.0, 1.0):
        assert any(l.get_linestyle() == "-." for l in lines_at(ax, t)), t  # the models' vertical lines
    assert not any(n.startswith("min") and "x=-0.5" in n for n in notes)
    twin = fig.axes[1]
    assert {l.get_label(): l.get_linestyle() for l in twin.get_lines()} == {"test_acc": "-.", "line_test_acc": ":"}
    # a chosen loss brings its straight-line counterpart; markers add to the models
    ax = render(s, "curve", metric="test_loss", markers={"C": (0.7, 0.0)}).axes[0]
    assert {l.get_label() for l in ax.get_lines()} >= {"test_loss", "line_test_loss"}
    assert {"A", "B", "C"} <= {t.get_text() for t in ax.texts}
    ax = render(s, "curve", metric="test_loss", log=True).axes[0]
    assert ax.get_yscale() == "log" and "barrier 0.3 at t=0.45" in {t.get_text() for t in ax.texts}
    # without end models (a line through θ*) there is no path between models, so no barrier
    bump = write_surface(tmp_path / "bump.h5", T[10:31], None, {"test_loss": bump_path(T[10:31])}, done=np.ones(21))
    texts = {t.get_text() for t in render(load_surface(bump), "curve").axes[0].texts}
    assert not any(t.startswith("barrier") for t in texts)


def test_2d_plots_show_models_trajectory_and_variance(tmp_path):
    s = load_surface(write_pca_surface(tmp_path / "pca.h5"))
    for kind in ("contour", "contourf", "heatmap"):
        fig = render(s, kind, markers={"mine": (0.5, 0.5)})
        ax = fig.axes[0]
        assert ax.get_xlabel() == "PC1 (83.1 % of variance)" and ax.get_ylabel() == "PC2 (10.2 % of variance)"
        path = [l for l in ax.get_lines() if l.get_label() == "training trajectory"][0]
        np.testing.assert_allclose(path.get_xdata(), s.trajectory.coordinates[:, 0])
        np.testing.assert_allclose(path.get_ydata(), s.trajectory.coordinates[:, 1])
        models = [l for l in ax.get_lines() if l.get_label() == "models"][0]
        np.testing.assert_allclose(np.column_stack([models.get_xdata(), models.get_ydata()]), [[0.0, 0.0]])
        legend = {t.get_text() for t in fig.legends[0].get_texts()}
        assert {"start (epoch_000)", "end (epoch_005)"} <= legend
        notes = {t.get_text() for t in ax.texts}
        assert {"final", "mine", "epoch_000", "epoch_005"} <= notes
    ax3 = render(s, "surface3d").axes[0]
    assert "final" not in {t.get_text() for t in ax3.texts}  # 3D: the models are left out
    assert "PC1 (83.1 % of variance)" == ax3.get_xlabel()
    (p,) = plot_surface(s.path, kind="contourf")
    assert_image(p)


def test_hessian_maps(tmp_path):
    x, y, loss = quadratic(nx=31, ny=25)
    X, Y = np.meshgrid(x, y, indexing="ij")
    ratio = 0.01 + 0.02 * X ** 2  # |λmin/λmax|: mostly small ...
    ratio[3, 4] = 50.0  # ... with a spike where λmax is near 0
    path = write_surface(tmp_path / "h.h5", x, y, {"test_loss": loss, "test_hess_ratio": ratio,
                                                  "test_hess_min": X - 0.5, "test_loss_stderr": 0.01 + 0 * X},
                         done=np.ones(loss.shape))
    s = load_surface(path)
    ax = render(s, "heatmap", metric="test_hess_ratio").axes[0]
    norm = ax.collections[0].norm
    assert norm.vmin == 0.0 and 0.02 < norm.vmax < 0.04  # anchored at 0; the spike does not flatten it
    star = [l for l in ax.get_lines() if l.get_marker() == "*"][0]
    assert star.get_label().startswith("max 50 at")
    assert (star.get_xdata()[0], star.get_ydata()[0]) == pytest.approx((x[3], y[4]))
    mesh = render(s, "heatmap", metric="test_hess_min").axes[0].collections[0]
    assert isinstance(mesh.norm, mcolors.TwoSlopeNorm) and mesh.norm.vcenter == 0.0  # negative vs positive
    assert mesh.get_cmap().name == "RdBu_r"
    ax = render(s, "contour", metric="test_loss_stderr").axes[0]
    assert not [l for l in ax.get_lines() if l.get_marker() == "*"]  # no "best" for a standard error
    cs = render(s, "contourf", metric="test_hess_ratio", log=True).axes[0].collections[0]
    assert isinstance(cs.norm, mcolors.LogNorm) and 0.01 <= cs.levels[0] < cs.levels[-1] < 0.04
    one = write_surface(tmp_path / "h1.h5", x, None, {"test_loss": 1 + x ** 2, "test_hess_ratio": 0.1 + 0 * x},
                        done=np.ones(x.size))
    notes = [t.get_text() for t in render(load_surface(one), "curve", metric="test_hess_ratio").axes[0].texts]
    assert notes and all(not n.startswith("min") for n in notes)


# ---------------------------------------------------------------------------
# training trajectories


def test_andrews_curves_values():
    s = np.array([0.0, np.pi / 2, np.pi, -np.pi / 4])
    f = andrews_curves(np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 0.0, 0.0, 1.0]]), s)
    assert f.shape == (2, 4)
    r2 = 1 / np.sqrt(2)
    expected = [r2 + 3 + 5, r2 + 2 + 4 * 0 - 5, r2 - 3 + 5, r2 - 2 * r2 + 3 * r2 - 4 + 0]
    np.testing.assert_allclose(f[0], expected, atol=1e-12)
    np.testing.assert_allclose(f[1], np.cos(2 * s), atol=1e-12)
    np.testing.assert_allclose(andrews_curves(np.array([[np.sqrt(2), 1.0]]), s)[0], 1 + np.sin(s))
    with pytest.raises(SurfaceFileError, match="coords must be a 2D array"):
        andrews_curves(np.zeros(3), s)


def trajectory(t=20, k=4):
    steps = np.linspace(0, 1, t)
    coords = np.column_stack([10 * steps - 5, 3 * np.sin(3 * steps)] + [np.cos((j + 2) * steps) for j in range(k - 2)])
    explained = np.array([0.7, 0.2, 0.06, 0.02, 0.01, 0.01][:k])
    return coords, [f"epoch_{i:03d}" for i in range(t)], explained


def test_trajectory_figures():
    coords, labels, explained = trajectory()
    figs = trajectory_figures(coords, labels, explained)
    pca = figs["pca"].axes[0]
    assert pca.get_xlabel() == "PC1 (70.0 % of variance)" and pca.get_ylabel() == "PC2 (20.0 % of variance)"
    np.testing.assert_allclose(pca.collections[0].get_offsets(), coords[:, :2])
    np.testing.assert_allclose(pca.collections[0].get_array(), np.arange(20))  # coloured by training order
    assert {"start: epoch_000", "end: epoch_019"} <= {t.get_text() for t in pca.texts}
    andrews = figs["andrews"].axes[0].collections[0]
    s, f = np.asarray(andrews.get_segments()[7]).T
    np.testing.assert_allclose(f, andrews_curves(coords[7:8], s)[0])
    assert len(andrews.get_segments()) == 20 and len(figs["andrews"].axes) == 2  # with a colourbar
    radar = figs["radar"].axes[0]
    # evenly spaced checkpoints, with the turning point (epoch 10, farthest from the start-end chord) for the
    # one nearest it (11)
    chord = coords[-1] - coords[0]
    rel = coords - coords[0]
    assert np.argmax(np.linalg.norm(rel - np.outer(rel @ chord / (chord @ chord), chord), axis=1)) == 10
    assert [l.get_label() for l in radar.get_lines()] == [labels[i] for i in (0, 3, 5, 8)] + [
        "epoch_010 (turning point)"] + [labels[i] for i in (14, 16, 19)]
    assert "8 of 20 checkpoints" in radar.get_title()
    assert len(radar.get_xticks()) == 4
    few = trajectory_figures(*trajectory(t=3, k=2))["radar"].axes[0]
    assert "all 3 checkpoints" in few.get_title() and len(few.get_lines()) == 3


def test_plot_trajectory_files(tmp_path):
    coords, labels, explained = trajectory(t=6, k=3)
    paths = plot_trajectory(coords, labels, explained, tmp_path / "figs" / "run", formats=("png", "pdf", "svg"))
    assert [p.name for p in paths] == [f"run_{part}.{fmt}" for part in ("pca", "andrews", "radar")
                                       for fmt in ("png", "pdf", "svg")]
    for p in paths:
        if p.suffix == ".svg":
            assert p.stat().st_size > 5000 and b"<svg" in p.read_bytes()[:1000]
        else:
            assert_image(p)
    paths = plot_trajectory(coords, labels, explained, f"{tmp_path}/new/", formats="svg")  # a directory
    assert paths == [tmp_path / "new" / f"trajectory_{part}.svg" for part in ("pca", "andrews", "radar")]
    assert all(p.stat().st_size > 5000 for p in paths)


def test_plot_trajectory_errors(tmp_path):
    coords, labels, explained = trajectory(t=5, k=3)
    out = tmp_path / "t"
    with pytest.raises(SurfaceFileError, match="at least 2 checkpoints on at least 2 principal components, got 1 x 3"):
        plot_trajectory(coords[:1], labels[:1], explained, out)
    with pytest.raises(SurfaceFileError, match="got 5 x 1"):
        plot_trajectory(coords[:, :1], labels, explained[:1], out)
    with pytest.raises(SurfaceFileError, match="4 labels for 5 checkpoints"):
        plot_trajectory(coords, labels[:4], explained, out)
    with pytest.raises(SurfaceFileError, match="explained must hold 3 non-negative variance ratios"):
        plot_trajectory(coords, labels, explained[:2], out)
    bad = coords.copy()
    bad[2, 1] = np.nan
    with pytest.raises(SurfaceFileError, match="finite numbers.*with inf/NaN"):
        plot_trajectory(bad, labels, explained, out)
    with pytest.raises(SurfaceFileError, match="unsupported image format 'gif'"):
        plot_trajectory(coords, labels, explained, out, formats=("gif",))
    assert not list(tmp_path.iterdir())


def test_parameter_space_planes_keep_their_geometry_and_contours_have_a_colourbar(tmp_path):
    x, y = np.linspace(-2, 2, 9), np.linspace(-0.5, 0.5, 5)
    loss = 1 + x[:, None] ** 2 + y[None, :] ** 2
    for kind, equal in (("plane", True), ("pca", True), ("random", False)):
        job = {"name": "t", "directions": {"kind": kind}}
        path = write_surface(tmp_path / f"{kind}.h5", x, y, {"test_loss": loss}, done=np.ones(loss.shape), job=job)
        fig = render(load_surface(path), "contour")
        ax = fig.axes[0]
        assert (ax.get_aspect() == 1.0) is equal, kind
        assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "test_loss (log scale)"  # the colourbar
