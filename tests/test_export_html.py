"""mpiland export --to html: the Plotly figure, and the page itself in a real headless browser, offline.

The browser tests open a copy of the exported page with two scripts added: one
before plotly.js that records every console error, uncaught error and failed load,
and one that, once the page has loaded, writes into the DOM what the graph holds
(its arrays as the page stores them: base64 float64), what plotly.js decoded and
drew, a hover label, and the effect of the metric dropdown. Chromium dumps that DOM
and takes a screenshot; it runs without a network (``unshare -n``) so the page
must be self-contained.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest

pytest.importorskip("plotly", reason="--to html needs plotly (pip install plotly)")

from mpiland.errors import SurfaceFileError
from mpiland.export import export_fields, export_surface
from mpiland.export_html import PLOT_ID, build_figure
from mpiland.surface.reader import load_surface
from surfaces import T, write_curve_surface, write_surface

X, Y = np.linspace(-1.0, 1.0, 9), np.linspace(-0.5, 1.0, 7)
TRAJECTORY = np.column_stack([np.linspace(-0.8, 0.0, 4), np.linspace(0.5, 0.0, 4)])
LABELS = ("α (filter-normalised)", "β")


def plane(tmp_path):
    """A non-square 9 x 7 file: loss and accuracy, one pending point, one skipped, a model, a trajectory."""
    loss = 1.0 + X[:, None] ** 2 + 2.0 * Y[None, :] ** 2 + 1e-13
    done = np.ones(loss.shape)
    done[0, 0], done[4, 3] = 0, 2
    return write_surface(tmp_path / "p.h5", X, Y, {"test_loss": loss, "test_acc": 1.0 / loss}, done=done,
                         models=([[0.0, 0.0]], ["final"]), trajectory=(TRAJECTORY, ["e0", "e1", "e2", "e3"], [0.8, 0.1]),
                         labels=LABELS)


def traces(fig, kind):
    return [t for t in fig.data if t.type == kind]


def test_plane_figure_has_a_surface_and_a_map_per_metric_and_a_dropdown(tmp_path):
    s = load_surface(plane(tmp_path))
    fig = build_figure(s, export_fields(s, list(s.metrics)))
    surfaces, contours = traces(fig, "surface"), traces(fig, "contour")
    assert [t.name for t in surfaces] == [t.name for t in contours] == ["test_loss", "test_acc"]
    for t in surfaces + contours:
        np.testing.assert_array_equal(t.z, s.values(t.name).T)  # Plotly's z[j][i] is (x[i], y[j]); NaN kept
        np.testing.assert_array_equal(t.x, X)
        np.testing.assert_array_equal(t.y, Y)
        assert t.customdata.shape == (7, 9, 2) and t.visible == (t.name == "test_loss")
        np.testing.assert_array_equal(t.customdata[..., 1], s.values("test_acc").T)
        assert t.text[3, 4] == "skipped by adaptive refinement" and t.text[0, 0] == "not computed yet"
        assert all(f"{n} = %{{customdata[{k}]" in t.hovertemplate for k, n in enumerate(["test_loss", "test_acc"]))
    assert surfaces[1].reversescale and not surfaces[0].reversescale  # the good end has one colour
    models = [t for t in fig.data if t.name == "models"]
    assert [t.type for t in models] == ["scatter3d", "scatter3d", "scatter"]
    assert [float(t.z[0]) for t in models[:2]] == [float(s.values(m)[4, 2]) for m in ("test_loss", "test_acc")]
    path = [t for t in fig.data if t.name == "trajectory" and t.type == "scatter"][0]
    np.testing.assert_array_equal(np.column_stack([path.x, path.y]), TRAJECTORY)
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["test_loss", "test_acc"]
    for b in buttons:
        shown = {(t.type, t.name) for t, v in zip(fig.data, b.args[0]["visible"]) if v}
        assert shown == {("surface", b.label), ("contour", b.label), ("scatter3d", "models"),
                         ("scatter3d", "trajectory"), ("scatter", "models"), ("scatter", "trajectory")}
        assert b.args[1] == {"scene.zaxis.title.text": b.label}
    assert fig.layout.scene.xaxis.title.text == fig.layout.xaxis.title.text == LABELS[0]
    assert fig.layout.scene.yaxis.title.text == fig.layout.yaxis.title.text == LABELS[1]


def test_a_plane_without_models_or_trajectory_has_only_the_metrics(tmp_path):
    path = write_surface(tmp_path / "m.h5", X, Y, {"train_loss": np.add.outer(X, Y) ** 2}, done=np.ones((9, 7)))
    s = load_surface(path)
    fig = build_figure(s, export_fields(s, ["train_loss"]))
    assert [(t.type, t.name) for t in fig.data] == [("surface", "train_loss"), ("contour", "train_loss")]
    assert fig.layout.updatemenus[0].buttons[0].args[0] == {"visible": [True, True]}
    with pytest.raises(SurfaceFileError, match="has no metric datasets to draw"):
        build_figure(s, {})


def test_curve_figure_has_a_line_per_metric_and_the_models_marked(tmp_path):
    s = load_surface(write_curve_surface(tmp_path / "c.h5"))
    fig = build_figure(s, export_fields(s, ["test_loss", "line_test_loss"], log=True))
    assert [(t.type, t.name) for t in fig.data] == [("scatter", "log10_test_loss"), ("scatter", "log10_line_test_loss")]
    np.testing.assert_array_equal(fig.data[1].y, np.log10(s.values("line_test_loss")))
    assert [(sh.x0, sh.x1) for sh in fig.layout.shapes] == [(0.0, 0.0), (1.0, 1.0)]
    assert [a.text for a in fig.layout.annotations] == ["A", "B"]
    assert fig.layout.xaxis.title.text == "direction x" and fig.layout.yaxis.title.text == "log10_test_loss"
    assert list(fig.layout.updatemenus[0].buttons[1].args) == [{"visible": [False, True]},
                                                               {"yaxis.title.text": "log10_line_test_loss"}]


RECORDER = """<script>window.__errors = [];
(function () {
  var error = console.error;
  console.error = function () { window.__errors.push(Array.from(arguments).join(" ")); error.apply(console, arguments); };
  window.addEventListener("error", function (e) {
    window.__errors.push(e.message || ("failed to load " + (e.target && (e.target.src || e.target.href))));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { window.__errors.push("rejected: " + e.reason); });
})();</script>"""

PROBE = """<script>
window.addEventListener("load", function () { setTimeout(probe, 50); });
function plain(v) {
  if (typeof v === "number") { return Number.isFinite(v) ? v : String(v); }
  if (v && (Array.isArray(v) || ArrayBuffer.isView(v))) { return Array.from(v, plain); }
  return v === undefined ? null : v;
}
function stored(v) {
  if (v && v.bdata !== undefined) { return {dtype: v.dtype, bdata: v.bdata, shape: v.shape === undefined ? null : String(v.shape)}; }
  return plain(v);
}
async function probe() {
  var gd = document.getElementById("%(id)s"), out = {errors: window.__errors};
  try {
    out.data = gd.data.map(function (t) {
      return {type: t.type, name: t.name, x: stored(t.x), y: stored(t.y), z: stored(t.z), customdata: stored(t.customdata)};
    });
    var first = gd._fullData.find(function (t) { return t.visible === true; });
    out.drawn = {type: first.type, name: first.name, values: plain(first.type === "surface" ? first.z : first.y)};
    Plotly.Fx.hover(gd, %(hover)s, "xy");
    var label = document.querySelector(".hoverlayer .hovertext");
    out.hover = label ? label.textContent : null;
    out.canvases = document.querySelectorAll("canvas").length;
    out.paths = document.querySelectorAll(".contourlayer path, .scatterlayer path").length;
    var L = gd._fullLayout;
    out.titles = [L.xaxis.title.text, L.yaxis.title.text].concat(L.scene ? [L.scene.xaxis.title.text, L.scene.yaxis.title.text] : []);
    var buttons = gd.layout.updatemenus[0].buttons;
    await Plotly.update(gd, buttons[1].args[0], buttons[1].args[1]);
    L = gd._fullLayout;  // a new object after each update
    out.switched = {axis: (L.scene ? L.scene.zaxis : L.yaxis).title.text, shown: gd._fullData.filter(function (t) {
      return t.visible === true; }).map(function (t) { return t.type + " " + t.name; })};
  } catch (e) { out.errors.push("probe: " + e); }
  out.requests = performance.getEntriesByType("resource").map(function (e) { return e.name; });
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}
</script>"""


def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("needs Debian's chromium for the browser test (apt-get install chromium; .ci/run installs it)")
    return exe


def offline():
    """``unshare -n`` (a new network namespace without interfaces) where allowed, else a dead proxy."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n"], []
    return [], ["--proxy-server=socks5://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


def browse(page, tmp_path, hover):
    """Open a probed copy of ``page`` in headless chromium: (the probe's record, the screenshot's RGB array)."""
    text = page.read_text(encoding="utf-8")
    assert re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", text) is None  # everything inline
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(text.replace("<head>", "<head>" + RECORDER, 1)
                      .replace("</body>", PROBE % {"id": PLOT_ID, "hover": json.dumps(hover)} + "</body>", 1),
                      encoding="utf-8")
    shot = tmp_path / f"{page.stem}.png"
    prefix, flags = offline()
    cmd = [*prefix, chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,700", "--hide-scrollbars",
           "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0", *flags,
           "--dump-dom", f"--screenshot={shot}", probed.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, "the page never finished loading: " + proc.stderr[-2000:]
    record = json.loads(html.unescape(found.group(1)))
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line and probed.as_uri() in line]
    record["console"] = [line for line in console if re.search(r"Uncaught|Error", line)]
    rgb = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(np.uint8)
    return record, rgb


def stored(value):
    """An array as the page stores it (a base64 typed array, or a plain list) as numpy float64."""
    if isinstance(value, dict):
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = [int(n) for n in value["shape"].split(",")] if value["shape"] else [-1]
        return arr.reshape(shape).astype(np.float64)
    return np.array(value, dtype=object).astype(np.float64)  # "NaN" and "Infinity" strings parse too


def colours(rgb):
    return len(np.unique(rgb.reshape(-1, 3), axis=0))


def test_plane_page_in_a_browser(tmp_path):
    s = load_surface(plane(tmp_path))
    page = export_surface(s.path, "html")
    assert page == tmp_path / "p.html" and "<title>digits-mlp</title>" in page.read_text(encoding="utf-8")
    record, rgb = browse(page, tmp_path, {"xval": float(X[2]), "yval": float(Y[1])})
    assert record["errors"] == [] and record["console"] == [] and record["requests"] == []
    by_name = {(t["type"], t["name"]): t for t in record["data"]}
    for m in ("test_loss", "test_acc"):
        for kind in ("surface", "contour"):
            t = by_name[(kind, m)]
            assert stored(t["z"]).tobytes() == s.values(m).T.tobytes()  # bit for bit, NaN where not evaluated
            assert stored(t["x"]).tobytes() == X.tobytes() and stored(t["y"]).tobytes() == Y.tobytes()
            custom = stored(t["customdata"])
            assert custom[..., 0].tobytes() == s.values("test_loss").T.tobytes()
            assert custom[..., 1].tobytes() == s.values("test_acc").T.tobytes()
    assert stored(by_name[("scatter", "trajectory")]["x"]).tolist() == TRAJECTORY[:, 0].tolist()
    assert stored(by_name[("scatter", "models")]["y"]).tolist() == [0.0]
    drawn = record["drawn"]
    assert (drawn["type"], drawn["name"]) == ("surface", "test_loss")
    assert stored(drawn["values"]).tobytes() == s.values("test_loss").T.tobytes()  # what plotly.js decoded
    loss, acc = s.values("test_loss")[2, 1], s.values("test_acc")[2, 1]
    assert record["hover"].replace("\u2212", "-") == (f"{LABELS[0]} = {X[2]:.6g}{LABELS[1]} = {Y[1]:.6g}"
                                                       f"test_loss = {loss:.6g}test_acc = {acc:.6g}evaluated")
    assert record["titles"] == [*LABELS, *LABELS]
    assert record["switched"]["axis"] == "test_acc"
    assert sorted(record["switched"]["shown"]) == ["contour test_acc", "scatter models", "scatter trajectory",
                                                   "scatter3d models", "scatter3d trajectory", "surface test_acc"]
    assert record["canvases"] > 0 and record["paths"] > 10
    left, right = rgb[:, : rgb.shape[1] // 2], rgb[:, rgb.shape[1] // 2:]
    assert colours(left) > 300 and colours(right) > 100  # the shaded 3D surface (WebGL) and the filled contours


def test_curve_page_in_a_browser(tmp_path):
    s = load_surface(write_curve_surface(tmp_path / "c.h5"))
    page = export_surface(s.path, "html", metrics=["test_loss", "test_acc"])
    record, rgb = browse(page, tmp_path, {"xval": float(T[20]), "yval": float(s.values("test_loss")[20])})
    assert record["errors"] == [] and record["console"] == [] and record["requests"] == []
    lines = {t["name"]: t for t in record["data"]}
    assert list(lines) == ["test_loss", "test_acc"]
    for m, t in lines.items():
        assert stored(t["x"]).tobytes() == T.tobytes() and stored(t["y"]).tobytes() == s.values(m).tobytes()
    assert record["drawn"]["name"] == "test_loss"
    assert stored(record["drawn"]["values"]).tobytes() == s.values("test_loss").tobytes()
    loss, acc = s.values("test_loss")[20], s.values("test_acc")[20]
    assert record["hover"].replace("\u2212", "-") == (f"direction x = {T[20]:.6g}test_loss = {loss:.6g}"
                                                       f"test_acc = {acc:.6g}evaluated")
    assert record["titles"] == ["direction x", "test_loss"]
    assert record["switched"] == {"axis": "test_acc", "shown": ["scatter test_acc"]}
    assert record["paths"] > 0 and colours(rgb) > 30
