"""Tests of the pictures' fitness for a paper: colourbars, levels that show the basin and cover the
data, labels and legends clear of the data, markers, the paper style, 3D clipping, several files in
one figure, and points skipped by adaptive refinement filled in."""

from __future__ import annotations

import itertools
import re

import matplotlib as mpl
import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib import colors as mcolors
from matplotlib.text import Text

import mpiland.result as result
from mpiland.cli import cli
from mpiland.errors import SettingsError
from mpiland.plots import KINDS_2D, drawn_values, plot_surface, plot_surfaces, render, render_many
from mpiland.surface.reader import load_surface
from surfaces import T, write_curve_surface, write_pca_surface, write_surface
from test_plots import assert_image


def steep(nx=31, ny=25):
    """A basin with walls 1000 times its minimum (0.05 at (0.2, -0.1)): linear levels would leave it blank."""
    x, y = np.linspace(-1, 1, nx), np.linspace(-1, 1, ny)
    X, Y = np.meshgrid(x, y, indexing="ij")
    return x, y, 0.05 + 30 * ((X - 0.2) ** 2 + (Y + 0.1) ** 2)


@pytest.fixture
def steep_file(tmp_path):
    x, y, loss = steep()
    return write_surface(tmp_path / "steep.h5", x, y, {"test_loss": loss, "test_acc": 1 / (1 + loss)},
                         done=np.ones(loss.shape))


@pytest.fixture
def curve_files(tmp_path):
    x = np.linspace(-1, 1, 21)
    paths = []
    for name, width in (("small-batch", 1.0), ("large-batch", 6.0)):
        loss = 0.1 + width * x ** 2
        job = {"name": name, "model": {"factory": "mpiland.demo:digits_cnn"}}
        paths.append(write_surface(tmp_path / f"{name}.h5", x, None,
                                   {"train_loss": loss, "train_acc": 1 / (1 + loss), "test_loss": loss + 0.05,
                                    "test_acc": 1 / (1.05 + loss)}, done=np.ones(x.size), job=job))
    return paths


def overlaps(a, b):
    """Whether two display-space Bboxes overlap (touching edges do not count)."""
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


# ---------------------------------------------------------------------------
# colourbars, levels, labels, legends, markers, titles


@pytest.mark.parametrize("kind", KINDS_2D)
def test_every_2d_kind_has_a_colourbar_named_by_the_metric(steep_file, kind):
    fig = render(load_surface(steep_file), kind, metric="test_acc")
    colourbars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(colourbars) == 1 and colourbars[0].get_ylabel().startswith("test_acc")


def test_loss_levels_are_log_spaced_by_default_and_show_the_basin(steep_file):
    s = load_surface(steep_file)
    lo = 0.05
    for kind in ("contour", "contourf"):
        cs = render(s, kind).axes[0].collections[0]
        levels = np.asarray(cs.levels)
        assert isinstance(cs.norm, mcolors.LogNorm)
        assert (levels < 10 * lo).sum() >= 5, levels  # linear levels have none below 3.2 (60 / 19)
        v = s.values("test_loss")
        assert levels[0] == pytest.approx(v.min()) and levels[-1] >= v.max() * (1 - 1e-9)  # they cover the data
    cs = render(s, "contour", log=False).axes[0].collections[0]  # --linear: evenly spaced, as asked
    np.testing.assert_allclose(np.diff(cs.levels), np.diff(cs.levels)[0])
    assert "log scale" in render(s, "heatmap").axes[1].get_ylabel()


def test_levels_cover_the_data_of_a_pca_plane(tmp_path):
    s = load_surface(write_pca_surface(tmp_path / "pca.h5"))
    for log in (None, False):
        levels = render(s, "contour", log=log).axes[0].collections[0].levels
        assert levels[-1] >= np.nanmax(s.values("test_loss")) * (1 - 1e-9), log  # the corners are not white


def test_contour_labels_overlap_neither_each_other_nor_the_legend(steep_file, tmp_path):
    x, y, loss = steep(61, 61)
    dense = write_surface(tmp_path / "dense.h5", x, y, {"test_loss": loss}, done=np.ones(loss.shape),
                          models=([[0.0, 0.0], [0.5, 0.5]], ["A", "B"]))
    for path in (steep_file, dense):
        fig = render(load_surface(path), "contour", levels=40)
        fig.draw_without_rendering()
        ax, cs = fig.axes[0], fig.axes[0].collections[0]
        boxes = [t.get_window_extent() for t in cs.labelTexts]
        assert len(boxes) >= 4
        assert not any(overlaps(a, b) for a, b in itertools.combinations(boxes, 2))
        legend = fig.legends[0].get_window_extent()
        assert not any(overlaps(b, legend) for b in boxes)
        assert not overlaps(legend, ax.get_window_extent())  # the legend sits outside the data


def test_legends_are_outside_the_axes_and_inside_the_saved_image(steep_file, curve_files, tmp_path):
    for path, kind in ((steep_file, "contour"), (steep_file, "heatmap"), (curve_files[0], "curve")):
        fig = render(load_surface(path), kind)
        fig.draw_without_rendering()
        legend = fig.legends[0].get_window_extent()
        for ax in fig.axes:
            assert not overlaps(legend, ax.get_window_extent()), (kind, ax)
        tight = fig.get_tightbbox()  # what bbox_inches="tight" saves, in inches
        assert tight.y0 * fig.dpi <= legend.y0 and legend.y1 <= tight.y1 * fig.dpi


def test_the_minimum_is_drawn_above_the_origin_and_the_models(tmp_path):
    x = y = np.linspace(-1, 1, 21)
    X, Y = np.meshgrid(x, y, indexing="ij")
    path = write_surface(tmp_path / "at0.h5", x, y, {"test_loss": 1 + X ** 2 + Y ** 2}, done=np.ones(X.shape),
                         models=([[0.0, 0.0]], ["final"]))
    plain = write_surface(tmp_path / "plain.h5", x, y, {"test_loss": 1 + X ** 2 + Y ** 2}, done=np.ones(X.shape))
    for p in (path, plain):
        for kind in ("contour", "heatmap"):
            lines = {l.get_marker(): l for l in render(load_surface(p), kind).axes[0].get_lines()}
            star = lines["*"]
            others = [l for m, l in lines.items() if m in ("P", "D")]
            assert others
            for other in others:
                assert star.get_zorder() > other.get_zorder() and star.get_markersize() > other.get_markersize()


def test_titles_name_job_model_metric_and_split(steep_file, curve_files):
    title = render(load_surface(steep_file), "contourf").axes[0].get_title()
    assert title.startswith("digits-mlp (mlp): test_loss (test split, log scale)")
    title = render(load_surface(curve_files[0]), "curve", metric="test_loss").axes[0].get_title()
    assert title.startswith("small-batch (digits_cnn): test_loss, test_acc (test split)")


# ---------------------------------------------------------------------------
# options on every kind, the paper style, 3D


def test_vmin_vmax_levels_and_log_on_every_kind(steep_file, curve_files):
    s = load_surface(steep_file)
    for kind in ("contour", "contourf"):
        cs = render(s, kind, levels=7, vmin=0.1, vmax=20.0, log=True).axes[0].collections[0]
        np.testing.assert_allclose(cs.levels, np.geomspace(0.1, 20.0, 7))
    mesh = render(s, "heatmap", levels=[0.1, 1.0, 5.0, 20.0]).axes[0].collections[0]
    assert isinstance(mesh.norm, mcolors.BoundaryNorm)
    np.testing.assert_allclose(mesh.norm.boundaries, [0.1, 1.0, 5.0, 20.0])
    norm = render(s, "heatmap", vmin=0.5, vmax=4.0, log=False).axes[0].collections[0].norm
    assert (norm.vmin, norm.vmax) == (0.5, 4.0) and not isinstance(norm, mcolors.LogNorm)
    ax3 = render(s, "surface3d", levels=5, zmax=10.0).axes[0]
    assert ax3.get_zlim()[1] == pytest.approx(10.0)
    assert len(ax3.collections) == 2  # the surface and its floor contours
    assert render(s, "surface3d", log=True).axes[1].get_ylabel().startswith("log10 test_loss")  # the colourbar
    ax = render(load_surface(curve_files[0]), "curve", vmin=0.0, vmax=2.0, log=False).axes[0]
    assert ax.get_ylim() == (0.0, 2.0)
    assert render(load_surface(curve_files[0]), "curve", log=True).axes[0].get_yscale() == "log"
    with pytest.raises(SettingsError, match="levels apply to 2D plots"):
        render(load_surface(curve_files[0]), "curve", levels=5)
    with pytest.raises(SettingsError, match="zmax clips the height of a surface3d plot, not a contour plot"):
        render(s, "contour", zmax=3.0)
    with pytest.raises(SettingsError, match="unknown plot style 'poster'"):
        render(s, "contour", style="poster")


def test_surface3d_clips_at_a_stated_height_and_is_never_blank(steep_file, tmp_path):
    x, y = np.linspace(-1, 1, 31), np.linspace(-1, 1, 25)
    X, Y = np.meshgrid(x, y, indexing="ij")
    walls = write_surface(tmp_path / "walls.h5", x, y, {"test_loss": 0.05 * np.exp(3 * (X ** 2 + Y ** 2))},
                          done=np.ones(X.shape))  # from 0.05 to 20: unclipped, the basin would be flat
    s = load_surface(walls)
    fig = render(s, "surface3d")
    ax = fig.axes[0]
    top = ax.get_zlim()[1]
    assert top < 0.5 * np.nanmax(s.values("test_loss"))  # the walls are clipped, so the basin has height
    label = fig.axes[1].get_ylabel()
    clip = re.fullmatch(r"test_loss \(clipped above ([0-9.]+)\)", label)
    assert clip and float(clip.group(1)) == pytest.approx(top, rel=1e-2)
    assert (ax.elev, ax.azim) == (32.0, -50.0)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        assert len(axis.get_major_locator().tick_values(*axis.get_view_interval())) <= 6
    assert "clipped above 10" in render(s, "surface3d", zmax=10).axes[1].get_ylabel()
    assert render(load_surface(steep_file), "surface3d", zmax=100).axes[1].get_ylabel() == "test_loss"  # no cut
    x, y, loss = steep()
    done = np.ones(loss.shape, dtype=np.uint8)
    done[::2, ::3] = 2  # skipped by refinement: NaN in the file
    holes = write_surface(tmp_path / "holes.h5", x, y, {"test_loss": np.where(done == 1, loss, np.nan)}, done=done)
    (png,) = plot_surface(holes, kind="surface3d")
    assert_image(png)


def test_paper_style_writes_small_vector_pdfs_with_readable_fonts(steep_file, curve_files, tmp_path):
    before = dict(mpl.rcParams)
    for path, kind in ((steep_file, "contour"), (steep_file, "heatmap"), (curve_files[0], "curve")):
        fig = render(load_surface(path), kind, style="paper")
        assert fig.get_figwidth() == pytest.approx(3.3)
        sizes = {t.get_fontsize() for t in fig.findobj(Text) if t.get_text()}
        assert sizes and max(sizes) <= 9 and min(sizes) >= 5, sizes
        widths = [l.get_linewidth() for l in fig.axes[0].get_lines()]
        assert max(widths, default=0) <= 1.2
        (pdf,) = plot_surface(path, kind=kind, style="paper", out=tmp_path / f"{kind}/")
        data = pdf.read_bytes()
        assert pdf.suffix == ".pdf" and data.startswith(b"%PDF")
        assert b"/Subtype /Image" not in data  # vector: no raster inside
        assert b"/FontFile2" in data  # TrueType fonts embedded (Type 42), not Type 3
    assert dict(mpl.rcParams) == before  # an rc context: nothing global changed


# ---------------------------------------------------------------------------
# several files: curves overlaid, surfaces as panels


def test_curves_of_several_files_share_one_axes(curve_files, tmp_path):
    fig = render_many([load_surface(p) for p in curve_files], "curve", metric="test_loss")
    ax, twin = fig.axes  # one axes and the accuracy twin
    labels = [l.get_label() for l in ax.get_lines() if not l.get_label().startswith("_")]
    assert labels == ["small-batch: test_loss", "large-batch: test_loss"]
    assert [l.get_label() for l in twin.get_lines()] == ["small-batch: test_acc", "large-batch: test_acc"]
    colours = [l.get_color() for l in ax.get_lines() + twin.get_lines() if not l.get_label().startswith("_")]
    assert len(set(colours)) == 4
    assert {t.get_text() for t in fig.legends[0].get_texts()} >= set(labels)
    paths = plot_surfaces(curve_files, out=tmp_path)
    assert [p.name for p in paths] == ["small-batch_vs_large-batch_curve.png"]


def test_surfaces_of_several_files_are_panels_on_one_colour_scale(steep_file, tmp_path):
    x, y, loss = steep()
    other = write_surface(tmp_path / "other.h5", x, y, {"test_loss": 3 * loss, "test_acc": 1 / (1 + loss)},
                          done=np.ones(loss.shape), job={"name": "wide"})
    for kind in KINDS_2D:
        fig = render_many([load_surface(steep_file), load_surface(other)], kind)
        panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
        colourbars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
        assert len(panels) == 2 and len(colourbars) == 1, kind
        norms = [a.collections[0].norm for a in panels]
        assert norms[0].vmin == norms[1].vmin and norms[0].vmax == norms[1].vmax, kind
        assert norms[0].vmax >= 3 * loss.max() * (1 - 1e-9) or kind == "surface3d", kind
        assert [a.get_title().split("\n")[0] for a in panels] == ["digits-mlp", "wide"]
    figs = result.plot_surfaces([steep_file, other], "contour", out=tmp_path / "both.pdf")
    assert (tmp_path / "both.pdf").read_bytes().startswith(b"%PDF") and len(figs.axes) == 3
    fig = result.open(steep_file).plot("heatmap", others=[result.open(other)])
    assert len(fig.axes) == 3 and hasattr(fig, "_repr_png_")
    with pytest.raises(SettingsError, match="plot files of the same dimensions together"):
        result.plot_surfaces([steep_file, write_surface(tmp_path / "c.h5", x, None, {"test_loss": x ** 2},
                                                        done=np.ones(x.size))])


def test_cli_plots_several_files_and_the_paper_style(steep_file, curve_files, tmp_path):
    runner = CliRunner()
    out = runner.invoke(cli, ["plot", *map(str, curve_files), "--out", str(tmp_path / "o"), "--metric", "test_loss"])
    assert out.exit_code == 0, out.output
    assert out.output.split() == [str(tmp_path / "o" / "small-batch_vs_large-batch_curve_test_loss.png")]
    out = runner.invoke(cli, ["plot", str(steep_file), "--style", "paper", "--kind", "surface3d", "--zmax", "5",
                              "--linear", "--out", str(tmp_path / "p")])
    assert out.exit_code == 0, out.output
    assert out.output.split() == [str(tmp_path / "p" / "steep_surface3d_test_loss.pdf")]
    out = runner.invoke(cli, ["plot"])
    assert out.exit_code == 2 and "SURFACE_FILES" in out.output
    out = runner.invoke(cli, ["plot", str(steep_file), "--zmax", "5"])
    assert out.exit_code == 2 and out.output.startswith("error: zmax clips the height of a surface3d plot")


# ---------------------------------------------------------------------------
# points skipped by adaptive refinement


def test_skipped_points_are_interpolated_in_pictures_only(tmp_path):
    x, y = np.linspace(0, 2, 9), np.linspace(-1, 1, 7)
    X, Y = np.meshgrid(x, y, indexing="ij")
    plane = 1.0 + 2.0 * X - 0.5 * Y  # linear: interpolation recovers it exactly
    done = np.ones(plane.shape, dtype=np.uint8)
    done[2:5, 1:4] = 2
    done[8, 6] = 0  # pending: stays blank
    stored = np.where(done == 1, plane, np.nan)
    path = write_surface(tmp_path / "refined.h5", x, y, {"test_loss": stored}, done=done)
    s = load_surface(path)
    values, measured = drawn_values(s, "test_loss")
    np.testing.assert_allclose(values[done == 2], plane[done == 2])
    assert np.isnan(values[8, 6]) and not measured[done == 2].any() and measured[done == 1].all()
    assert np.isnan(s.values("test_loss")[done == 2]).all()  # the surface itself is not changed
    ax = render(s, "heatmap").axes[0]
    shown = ax.collections[0].get_array()
    assert np.ma.getmaskarray(shown).sum() == 1  # only the pending point is blank
    assert "9 skipped by refinement, interpolated" in ax.get_title()
    # 1D: linear interpolation between the measured neighbours, no sample marker there
    t = np.linspace(0, 1, 11)
    d1 = np.ones(11, dtype=np.uint8)
    d1[[3, 4, 7]] = 2
    curve = write_surface(tmp_path / "c.h5", t, None, {"test_loss": np.where(d1 == 1, 1 + t, np.nan)}, done=d1)
    values, measured = drawn_values(load_surface(curve), "test_loss")
    np.testing.assert_allclose(values, 1 + t)
    line = [l for l in render(load_surface(curve), "curve").axes[0].get_lines() if l.get_label() == "test_loss"][0]
    np.testing.assert_allclose(line.get_ydata(), 1 + t)
    assert line.get_markevery() == [0, 1, 2, 5, 6, 8, 9, 10]


def test_notes_and_titles_fit_in_a_one_column_figure(tmp_path):
    def bump(at, height):
        return height * np.exp(-(((T - at) / 0.05) ** 2))

    # as the demo's chain: two barriers near the start of a falling path, their notes side by side
    fall = 2.3 - 2.25 * np.clip(T, 0, 1)
    near = write_surface(tmp_path / "near.h5", T, None, {"test_loss": fall + bump(0.033, 0.03),
                                                        "line_test_loss": fall + bump(0.167, 0.2)},
                         done=np.ones(T.size), models=([[0.0], [1.0]], ["A", "B"]), endpoints=[0.0, 1.0])
    for s, style in itertools.product([load_surface(near), load_surface(write_curve_surface(tmp_path / "b.h5"))],
                                      ("default", "paper")):
        fig = render(s, "curve", style=style)
        fig.draw_without_rendering()
        ax = fig.axes[0]
        notes = [t.get_window_extent() for t in ax.texts if t.get_bbox_patch() is not None]
        assert len(notes) >= 3, style  # two barriers and the minimum
        assert not any(overlaps(a, b) for a, b in itertools.combinations(notes, 2)), style
        title = ax.title.get_window_extent()
        assert 0 <= title.x0 and title.x1 <= fig.bbox.x1, style
    x, y, loss = steep()
    long = write_surface(tmp_path / "long.h5", x, y, {"test_loss": loss}, done=np.ones(loss.shape),
                         job={"name": "a-rather-long-job-name-for-a-one-column-figure",
                              "model": {"factory": "mypackage.models:resnet56_without_shortcuts"}})
    fig = render(load_surface(long), "contour", style="paper")
    fig.draw_without_rendering()
    assert fig.axes[0].title.get_window_extent().width <= fig.bbox.width


def test_trajectory_labels_do_not_crowd_where_training_slows_down(tmp_path):
    x, y, loss = steep()
    steps = np.concatenate([np.linspace(-0.9, -0.1, 7), np.linspace(-0.08, 0.0, 5)])  # the last five bunch up
    traj = np.column_stack([steps, 0.5 * steps])
    labels = [f"epoch_{i:03d}" for i in range(steps.size)]
    path = write_surface(tmp_path / "t.h5", x, y, {"test_loss": loss}, done=np.ones(loss.shape),
                         trajectory=(traj, labels, [0.8, 0.1]))
    ax = render(load_surface(path), "contour").axes[0]
    named = {t.get_text(): np.asarray(t.xy) for t in ax.texts if t.get_text() in labels}
    assert {"epoch_000", "epoch_011"} <= set(named)  # start and end always
    scale = np.array([2.0, 2.0])
    assert all(np.hypot(*((a - b) / scale)) > 0.08 for a, b in itertools.combinations(named.values(), 2))
