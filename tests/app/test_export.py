"""Export: every view in every format, `render` from saved data equals the live view, atomic writes, --force,
path traversal refused, and the one clear error when Chromium is missing.

Static formats (PNG, SVG, PDF) need Chromium; these tests FAIL without it (CI installs it with apt-get).
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tiny

from app import export as ex
from app.cli import main
from app.views import catalog
from app.views.catalog import VIEWS, ViewError, applicable, build_view

INSTALL = "apt-get install chromium"


@pytest.fixture(autouse=True)
def _no_dead_log_streams():
    """A library logger imported while an earlier test captured stderr keeps writing to that closed stream
    ("--- Logging error --- Traceback ..." in our stderr): point such handlers at the real stderr."""
    import logging
    import sys

    for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for h in getattr(lg, "handlers", []):
            if not isinstance(h, logging.StreamHandler):
                continue
            bound_flush = getattr(h.__dict__.get("flush"), "__self__", None)  # transformers pins stderr.flush
            if getattr(h.stream, "closed", False) or getattr(bound_flush, "closed", False):
                h.stream = sys.__stderr__  # not setStream: it flushes the closed stream first
                h.__dict__.pop("flush", None)
    yield


def normalised(fig) -> dict:
    return json.loads(fig.to_json())


# -- data: tiny random models ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_data(tokenizer):
    from models.tracer import trace

    lm = tiny.wrap_text(tiny.tiny_text_model("bert"), tokenizer)
    a = trace(lm, text=tiny.TEXT, qk=True)
    b = trace(lm, text=tiny.TEXT, qk=True, variant="sliding_window:w=4")
    return {"trace": b, "a": a, "b": b}


@pytest.fixture(scope="module")
def vit_data():
    from models.tracer import trace

    return {"trace": trace(tiny.wrap_vit(tiny.tiny_vit()), image=tiny.sample_image(), qk=True)}


def data_for(view, text_data, vit_data) -> dict:
    return vit_data if view == "image" else text_data


SELECTION = {"layer": 1, "head": 2, "query": 3}


@pytest.fixture(scope="module")
def renderer():
    """One Chromium for the whole module. Without Chromium this fails with the command that installs it."""
    try:
        r = ex.StaticRenderer()
    except ex.ExportError as exc:
        pytest.fail(f"{exc} — static export tests need Chromium ({INSTALL})")
    yield r
    r.close()


def test_chromium_is_installed():
    try:
        path = ex.find_chromium()
    except ex.ExportError as exc:
        pytest.fail(str(exc))
    assert os.access(path, os.X_OK)


# -- the catalog -----------------------------------------------------------------------------------------
def test_catalog_names_and_what_applies(text_data, vit_data):
    assert VIEWS == ("model", "head", "neuron", "image", "qk", "mask", "compare", "metrics")
    assert applicable(text_data) == ["model", "head", "neuron", "qk", "mask", "compare", "metrics"]
    assert "image" in applicable(vit_data) and "compare" not in applicable(vit_data)
    assert "neuron" not in applicable({"trace": _without_qk(vit_data["trace"])})
    with pytest.raises(ViewError, match="needs a vision model"):
        build_view("image", text_data)
    with pytest.raises(ViewError, match="does not exist"):
        build_view("head", text_data, {"layer": 99})
    with pytest.raises(ViewError, match="needs two traces"):
        build_view("compare", vit_data)


def _without_qk(tr):
    from dataclasses import replace

    return replace(tr, arrays={k: v for k, v in tr.arrays.items() if not k.endswith(("_q", "_k"))})


@pytest.mark.parametrize("view", VIEWS)
def test_titles_name_what_they_show(view, text_data, vit_data):
    data = data_for(view, text_data, vit_data)
    title = build_view(view, data, SELECTION).layout.title.text
    tr = data["trace"]
    if view != "mask":  # the mask lab's figure names the variant and the token count (a variant's property)
        assert tr.model_id in title
    if view in ("head", "neuron", "qk", "compare"):
        assert "layer 1 · head 2" in title
    if view in ("model", "head", "neuron", "image", "qk", "mask", "metrics"):
        assert tr.variant.split(":")[0] in title
    if view == "compare":
        assert text_data["a"].variant in title and text_data["b"].variant in title


# -- every view in every format --------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ex.FORMATS)
@pytest.mark.parametrize("view", VIEWS)
def test_every_view_every_format(view, fmt, text_data, vit_data, renderer):
    fig = build_view(view, data_for(view, text_data, vit_data), SELECTION)
    blob = ex.figure_bytes(fig, fmt, renderer=renderer)
    if fmt == "png":
        assert blob[:8] == b"\x89PNG\r\n\x1a\n"
        w = int.from_bytes(blob[16:20], "big")
        assert w >= 2 * (fig.layout.width or ex.WIDTH)  # scale ≥ 2
    elif fmt == "svg":
        root = ET.fromstring(blob)
        assert root.tag.endswith("svg")
    elif fmt == "pdf":
        assert blob[:5] == b"%PDF-"
    else:
        page = blob.decode("utf-8")
        assert "plotly.js v" in page and not re.search(r"<script[^>]*\bsrc=", page)  # inline: opens offline
        assert _html_figure(page) == normalised(fig)


def _html_figure(page: str) -> dict:
    """The data and layout Plotly.newPlot receives in an exported page."""
    start = page.index('Plotly.newPlot(')
    start = page.index('"attnscope-figure"', start) + len('"attnscope-figure"')
    dec = json.JSONDecoder()
    rest = page[start:].lstrip().lstrip(",").lstrip()
    data, end = dec.raw_decode(rest)
    rest = rest[end:].lstrip().lstrip(",").lstrip()
    layout, _ = dec.raw_decode(rest)
    return {"data": data, "layout": layout}


# -- render from saved data == the live view ------------------------------------------------------------
@pytest.mark.parametrize("view", VIEWS)
def test_render_from_saved_data_equals_live_view(view, text_data, vit_data, tmp_path, monkeypatch):
    data = data_for(view, text_data, vit_data)
    live = build_view(view, data, SELECTION)
    written = ex.export_view(view, data, SELECTION, tmp_path / f"{view}.html")
    folder = tmp_path / f"{view}.data"
    assert written == [tmp_path / f"{view}.html", folder]
    meta = json.loads((folder / "view.json").read_text())
    assert meta["view"] == view and meta["attnscope"] == ex.version() and "selection" in meta
    if view == "compare":
        assert {p.name for p in folder.iterdir()} == {"view.json", "a", "b"}
        assert (folder / "a" / "manifest.json").is_file() and (folder / "b" / "trace.npz").is_file()
    else:
        assert (folder / "manifest.json").is_file() and (folder / "trace.npz").is_file()
    if view == "qk":
        assert (folder / "points.npz").is_file() and (folder / "points.json").is_file()

    import models.registry

    monkeypatch.setattr(models.registry, "load", _no_model)  # render never loads a model
    assert normalised(ex.render_figure(folder)) == normalised(live)
    assert normalised(ex.render_figure(folder / "view.json")) == normalised(live)


def _no_model(*a, **k):
    raise AssertionError("render loaded a model")


def test_render_equals_the_pages_own_calls(text_data, tmp_path):
    """The catalog draws what the pages draw: the same view functions, the same arguments."""
    from analysis.head_metrics import METRICS, trace_head_metrics
    from app.views.compare_view import side_by_side
    from app.views.head_view import head_heatmap
    from app.views.model_grid import model_grid
    from app.views.quality_view import head_heatmap as hm

    tr = text_data["trace"]
    pages = {
        "model": (model_grid(tr), {}),
        "head": (head_heatmap(tr, 1, 3), {"layer": 1, "head": 3}),
        "compare": (side_by_side(text_data["a"], text_data["b"], 0, 1), {"layer": 0, "head": 1}),
        "metrics": (hm(trace_head_metrics(tr)["sink"], what="sink", heading=f"{tr.model_id} · {tr.variant} · "
                       f"{METRICS['sink']}", zmin=0), {"metric": "sink"}),
    }
    for view, (fig, sel) in pages.items():
        (tmp_path / view).mkdir()
        ex.export_view(view, text_data, sel, tmp_path / view / "f.json")
        assert normalised(ex.render_figure(tmp_path / view / "f.data")) == normalised(fig), view


def test_qk_points_from_the_explorer_round_trip(tmp_path):
    """The query–key explorer's data is a set of projected points, not a trace: saved and redrawn exactly."""
    from analysis import qk_embed as qe
    from app.views import qk_view

    rng = np.random.default_rng(0)
    t = 9
    tokens = ["[CLS]", "a", "<b>", ",", "7", "[SEP]", "[CLS]", "x", "[SEP]"]
    qks = qe.QKSet(
        model_id="fake", kind="bidirectional", layer=1, q=rng.normal(size=(2, t, 8)), k=rng.normal(size=(2, t, 8)),
        tokens=tokens, token_kind=[qe.token_kind(x, x.startswith("[")) for x in tokens],
        context=qe.contexts(tokens[:6]) + qe.contexts(tokens[6:]), input_index=np.repeat([0, 1], [6, 3]),
        position=np.concatenate([np.arange(6), np.arange(3)]), offsets=np.array([0, 6, 9]), probs=[None, None],
        inputs=["a", "b"], names=["a", "b"], inputs_hash="export-test",
    )
    emb = qe.embed(qks, 1, "pca", 2)
    live = qk_view.scatter(emb, "token_kind", selected=4)  # as the page draws it
    blob = ex.view_zip("qk", emb, {"colour": "token_kind", "selected": 4})
    (tmp_path / "qk.zip").write_bytes(blob)
    assert normalised(ex.render_figure(tmp_path / "qk.zip")) == normalised(live)


def test_zip_and_cli_render(text_data, tmp_path, capsys):
    blob = ex.view_zip("neuron", text_data, SELECTION)
    (tmp_path / "n.zip").write_bytes(blob)
    with zipfile.ZipFile(tmp_path / "n.zip") as z:
        assert set(z.namelist()) == {"neuron.data/view.json", "neuron.data/manifest.json", "neuron.data/trace.npz"}
    live = build_view("neuron", text_data, SELECTION)
    assert main(["render", str(tmp_path / "n.zip"), "--out", str(tmp_path / "n.json")]) == 0
    assert json.loads((tmp_path / "n.json").read_text()) == normalised(live)
    # a selection on the command line overrides the saved one
    assert main(["render", str(tmp_path / "n.zip"), "--query", "1", "--out", str(tmp_path / "q1.json")]) == 0
    again = build_view("neuron", text_data, {**SELECTION, "query": 1})
    assert json.loads((tmp_path / "q1.json").read_text()) == normalised(again)
    # a plain trace folder needs --view
    text_data["trace"].save(tmp_path / "plain")
    assert main(["render", str(tmp_path / "plain"), "--out", str(tmp_path / "p.json")]) == 1
    assert "--view" in capsys.readouterr().err
    assert main(["render", str(tmp_path / "plain" / "manifest.json"), "--view", "head", "--layer", "1",
                 "--out", str(tmp_path / "p.json")]) == 0


# -- the command line ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("tiny_bert")
    tiny.tiny_text_model("bert").save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    return d


def test_cli_export_one_view_then_render(model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "fig" / "head.svg"
    argv = ["export", "--model", str(model_dir), "--text", tiny.TEXT, "--variant", "sliding_window:w=4",
            "--view", "head", "--layer", "1", "--head", "2", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    ET.fromstring(out.read_bytes())
    assert (tmp_path / "fig" / "head.data" / "view.json").is_file()
    # again: refused without --force, one clear line naming the file; nothing changed
    before = out.read_bytes()
    assert main(argv) == 1
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ln.startswith("attnscope: error:")]
    assert len(line) == 1 and str(out) in line[0] and "--force" in line[0]
    assert out.read_bytes() == before
    assert main([*argv, "--force"]) == 0
    # render rebuilds the same figure without the model
    import models.registry

    monkeypatch.setattr(models.registry, "load", _no_model)
    assert main(["render", str(tmp_path / "fig" / "head.data"), "--out", str(tmp_path / "r.json")]) == 0
    manifest = json.loads((tmp_path / "fig" / "head.data" / "manifest.json").read_text())
    assert manifest["variant"].startswith("sliding_window") and manifest["arrays_sha256"]
    from app.views.head_view import head_heatmap
    from models.trace import Trace

    live = head_heatmap(Trace.load(tmp_path / "fig" / "head.data"), 1, 2)
    assert json.loads((tmp_path / "r.json").read_text()) == normalised(live)


def test_cli_export_all_keeps_one_chromium(model_dir, tmp_path, capsys, monkeypatch):
    started = []
    real = ex.StaticRenderer.__init__

    def spy(self, *a, **k):
        started.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(ex.StaticRenderer, "__init__", spy)
    out = tmp_path / "all"
    argv = ["export", "--model", str(model_dir), "--text", tiny.TEXT, "--variant", "sliding_window:w=4",
            "--all", "--layer", "1", "--head", "1", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert len(started) == 1  # one browser for every static file
    stems = ["model", "head", "neuron", "qk", "mask", "compare", "metrics-entropy", "metrics-distance",
             "metrics-sink", "metrics-previous_token"]
    expected = {f"{s}.{f}" for s in stems for f in ex.FORMATS} | {f"{s}.data" for s in stems}
    assert {p.name for p in out.iterdir()} == expected
    assert (out / "model.png").read_bytes()[:4] == b"\x89PNG" and (out / "mask.pdf").read_bytes()[:4] == b"%PDF"
    cmp = json.loads((out / "compare.data" / "view.json").read_text())
    assert cmp["selection"]["variant_a"] == "full" and cmp["selection"]["variant_b"].startswith("sliding_window")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert main(argv) == 1 and "--force" in capsys.readouterr().err


def test_cli_export_errors_are_one_line(model_dir, tmp_path, capsys):
    base = ["export", "--model", str(model_dir), "--text", tiny.TEXT]
    for argv, needle in [
        ([*base, "--view", "compare", "--out", str(tmp_path / "c.html")], "--variant-b"),
        ([*base, "--view", "head", "--out", str(tmp_path / "h.bmp")], "format"),
        ([*base, "--out", str(tmp_path / "h.png")], "--view"),
        ([*base, "--view", "head", "--layer", "9", "--out", str(tmp_path / "h.html")], "does not exist"),
        ([*base, "--view", "image", "--out", str(tmp_path / "i.html")], "vision model"),
    ]:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("attnscope: error:")]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, (argv, err)


# -- atomic writes and --force ---------------------------------------------------------------------------
def test_atomic_write_and_force(tmp_path, monkeypatch):
    f = tmp_path / "a.svg"
    ex.atomic_write(f, b"one")
    with pytest.raises(ex.ExportError, match=r"a\.svg already exists; pass --force"):
        ex.atomic_write(f, b"two")
    assert f.read_bytes() == b"one"
    ex.atomic_write(f, b"two", force=True)
    assert f.read_bytes() == b"two"

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        ex.atomic_write(f, b"three", force=True)
    assert f.read_bytes() == b"two"  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.svg"]  # and no temporary file is left


def test_atomic_folder_and_force(tmp_path):
    d = tmp_path / "x.data"
    ex.atomic_folder(d, {"view.json": b"{}", "a/manifest.json": b"1"})
    with pytest.raises(ex.ExportError, match="--force"):
        ex.atomic_folder(d, {"view.json": b"[]"})
    ex.atomic_folder(d, {"view.json": b"[]"}, force=True)
    assert sorted(p.name for p in d.iterdir()) == ["view.json"] and (d / "view.json").read_bytes() == b"[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.data"]


# -- names: no path traversal ----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "..", "a/../../b", ".hidden", "x\\..\\y"])
def test_export_names_are_sanitised(bad):
    name = ex.safe_name(bad)
    assert "/" not in name and "\\" not in name and ".." not in name and not name.startswith(".") and name
    with pytest.raises(ViewError, match="unknown view"):
        catalog.get_view(bad)


def test_traversal_refused_everywhere(text_data, tmp_path):
    with pytest.raises(ex.ExportError, match="unsafe"):
        ex.atomic_folder(tmp_path / "d", {"../evil": b"x"})
    with pytest.raises(ex.ExportError, match="unsafe"):
        ex.write_export(tmp_path / "out", {"../evil.png": b"x"})
    with pytest.raises(ex.ExportError, match="unsafe"):
        ex.zip_bytes({"../evil": b"x"})
    assert not (tmp_path / "evil").exists() and not (tmp_path / "evil.png").exists()
    # a view.json naming a path is not a view
    d = tmp_path / "bundle"
    text_data["trace"].save(d)
    (d / "view.json").write_text(json.dumps({"view": "../../etc/passwd", "selection": {}}))
    with pytest.raises(ex.ExportError, match="unknown view"):
        ex.load_bundle(d)
    # a zip with a member outside its folder is refused before anything is extracted
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("x.data/view.json", json.dumps({"view": "head"}))
        z.writestr("../../outside.txt", "x")
    with pytest.raises(ex.ExportError, match="unsafe path"):
        ex.load_bundle(evil)
    assert not (tmp_path.parent / "outside.txt").exists()
    # the app's file names come out sanitised
    from app.export_buttons import _stem

    assert _stem("../../head", {"layer": 1, "head": 2}) == "head_L1_H2"


# -- missing Chromium ------------------------------------------------------------------------------------
def test_missing_chromium_is_one_clear_error(tmp_path, monkeypatch, capsys, text_data):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chromium"))
    with pytest.raises(ex.ExportError, match=INSTALL):
        ex.find_chromium()
    with pytest.raises(ex.ExportError, match=INSTALL):
        ex.StaticRenderer()
    fig = build_view("head", text_data, SELECTION)
    with pytest.raises(ex.ExportError, match=INSTALL):
        ex.export_view("head", text_data, SELECTION, tmp_path / "h.pdf")
    assert not (tmp_path / "h.pdf").exists() and not (tmp_path / "h.data").exists()
    # HTML needs no browser
    assert ex.figure_bytes(fig, "html").startswith(b"<html>") or b"<html" in ex.figure_bytes(fig, "html")[:200]
    # the command line says it in one line, before loading any model
    import models.registry

    monkeypatch.setattr(models.registry, "load", _no_model)
    assert main(["export", "--model", "minilm", "--text", "hi", "--view", "head", "--out",
                 str(tmp_path / "h.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("attnscope: error:") == 1 and INSTALL in err and "Traceback" not in err
    # the app's "all views" zip keeps HTML and data and says why the rest is missing
    blob = ex.all_views_zip(text_data, SELECTION, formats=("png", "html"))
    with zipfile.ZipFile(__import__("io").BytesIO(blob)) as z:
        names = z.namelist()
        assert "attnscope_export/head.html" in names and "attnscope_export/head.data/view.json" in names
        assert not [n for n in names if n.endswith(".png")]
        assert INSTALL in z.read("attnscope_export/MISSING_STATIC.txt").decode()


def test_no_browser_anywhere(monkeypatch):
    from choreographer.browsers.chromium import Chromium

    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(ex.shutil, "which", lambda name: None)
    monkeypatch.setattr(ex, "TYPICAL", ())
    monkeypatch.setattr(Chromium, "find_browser", classmethod(lambda cls, **k: None))
    with pytest.raises(ex.ExportError, match=f"static export .* needs Chromium: {INSTALL}"):
        ex.find_chromium()


# -- the app's zips --------------------------------------------------------------------------------------
def test_all_views_zip(text_data, renderer):
    blob = ex.all_views_zip(text_data, SELECTION, formats=("pdf", "html"), renderer=renderer)
    with zipfile.ZipFile(__import__("io").BytesIO(blob)) as z:
        names = set(z.namelist())
        for stem in ("model", "head", "neuron", "qk", "mask", "compare", "metrics-entropy"):
            for f in ("pdf", "html"):
                assert f"attnscope_export/{stem}.{f}" in names
            assert f"attnscope_export/{stem}.data/view.json" in names
        assert z.read("attnscope_export/head.pdf")[:4] == b"%PDF"
        assert "attnscope_export/MISSING_STATIC.txt" not in names


def test_figure_outside_the_catalog_round_trips(text_data, tmp_path):
    from app.views.head_view import token_lines

    fig = token_lines(text_data["trace"], 0, [1])
    (tmp_path / "l.zip").write_bytes(ex.view_zip("lines", text_data["trace"], {"layer": 0}, fig=fig))
    assert normalised(ex.render_figure(tmp_path / "l.zip")) == normalised(fig)


def test_download_buttons_in_a_page():
    from streamlit.testing.v1 import AppTest

    def page():
        import numpy as np

        from app.export_buttons import download_buttons
        from models.trace import Trace

        rng = np.random.default_rng(0)
        p = rng.dirichlet(np.ones(5), size=(2, 5)).astype(np.float32)
        tr = Trace(model_id="synthetic", kind="bidirectional", variant="full", tokens=list("abcde"),
                   token_ids=list(range(5)), special=[False] * 5, n_layers=1, n_heads=2,
                   input={"type": "text"}, arrays={"L0_probs": p, "logits": np.zeros((1, 3), np.float32)})
        download_buttons(None, tr, "head", selection={"layer": 0, "head": 1})
        download_buttons(None, None, "quality")

    at = AppTest.from_function(page, default_timeout=60).run()
    assert not at.exception
    buttons = at.get("download_button")
    assert len(buttons) == 6 + 5  # HTML, PNG, SVG, PDF, data, all views; the figure-only one has no "all views"


# -- figure style ----------------------------------------------------------------------------------------
def test_titles_fit_and_labels_are_not_clipped():
    import plotly.graph_objects as go

    from app.views.style import MIN_TITLE_SIZE, finish, fit_title

    text, size, lines = fit_title("short", 600)
    assert (text, lines) == ("short", 1) and size >= 14
    long = "a-very-long-model-name/with-org · sliding_window:w=32,sinks=4 · layer 11 · head 7 · query 5 ..."
    text, size, lines = fit_title(long, 420)
    assert lines > 1 and size == MIN_TITLE_SIZE and "layer 11 · head 7" in text
    fig = finish(go.Figure(go.Heatmap(z=[[1]])), long, width=420)
    assert fig.layout.xaxis.automargin and fig.layout.yaxis.automargin
    assert fig.layout.margin.t > 60 and fig.layout.font.size >= 14


# -- a real preset ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_export_and_render(minilm, tmp_path, capsys):
    out = tmp_path / "head.png"
    assert main(["export", "--model", "minilm", "--text", "The cat sat on the mat.", "--view", "head",
                 "--layer", "2", "--head", "3", "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["render", str(tmp_path / "head.data"), "--out", str(tmp_path / "r.json")]) == 0
    from app.views.head_view import head_heatmap
    from models.trace import Trace

    live = head_heatmap(Trace.load(tmp_path / "head.data"), 2, 3)
    assert json.loads((tmp_path / "r.json").read_text()) == normalised(live)
    assert Path(tmp_path / "head.data" / "trace.npz").is_file()


class _FakeSt:
    """Records the download buttons `download_buttons` draws, with their deferred `data` callables."""

    def __init__(self):
        self.buttons = {}
        self.captions = []

    def popover(self, *a, **k):
        import contextlib

        return contextlib.nullcontext()

    def columns(self, n):
        return [self] * n

    def download_button(self, label, data, file_name, mime, key, disabled=False, **k):
        assert key not in self.buttons
        self.buttons[key] = (label, data, file_name, mime, disabled)

    def caption(self, text):
        self.captions.append(text)


def test_download_buttons_make_files_on_click(text_data, monkeypatch, tmp_path):
    import io

    import app.export_buttons as eb

    fake = _FakeSt()
    monkeypatch.setattr(eb, "st", fake)
    sel = {"layer": 1, "head": 2}
    eb.download_buttons(None, text_data, "head", selection=sel)
    files = {name: data() for _, data, name, _, disabled in fake.buttons.values() if not disabled}
    stem = "head_L1_H2"
    assert files[f"{stem}.png"][:4] == b"\x89PNG" and files[f"{stem}.pdf"][:4] == b"%PDF"
    ET.fromstring(files[f"{stem}.svg"])
    live = build_view("head", text_data, sel)
    assert _html_figure(files[f"{stem}.html"].decode()) == normalised(live)
    (tmp_path / "d.zip").write_bytes(files[f"{stem}.data.zip"])
    assert normalised(ex.render_figure(tmp_path / "d.zip")) == normalised(live)
    with zipfile.ZipFile(io.BytesIO(files[f"attnscope_{text_data['trace'].model_id}_all_views.zip"])) as z:
        assert "attnscope_export/compare.svg" in z.namelist()
    # without Chromium the static buttons are disabled and say why; HTML and data still work
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "none"))
    fake2 = _FakeSt()
    monkeypatch.setattr(eb, "st", fake2)
    eb.download_buttons(live, None, "figure")
    assert [b[0] for b in fake2.buttons.values() if b[4]] == ["PNG", "SVG", "PDF"]
    assert INSTALL in fake2.captions[0]
    assert b"attnscope-figure" in next(b[1] for b in fake2.buttons.values() if b[0].startswith("HTML"))()


@pytest.mark.slow
@pytest.mark.parametrize("page,buttons", [("pages/model_view.py", 12), ("pages/head_view.py", 12),
                                          ("pages/compare.py", 6), ("pages/head_metrics.py", 24)])
def test_pages_have_download_buttons(page, buttons, minilm):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app" / "main.py"), default_timeout=300)
    at.run()
    at = at.switch_page(page).run()
    assert not at.exception and not at.error
    assert len(at.get("download_button")) >= buttons


def test_query_forms(vit_data, text_data):
    """--query is a token index, cls, or row,col (a ViT patch), for every view that reads it."""
    tr = vit_data["trace"]
    cols = tr.grid[1]
    first_patch = next(i for i, s in enumerate(tr.special) if not s)
    by_patch = catalog.resolve("neuron", vit_data, {"query": [1, 2]})["query"]
    assert by_patch == first_patch + 1 * cols + 2
    assert catalog.resolve("neuron", vit_data, {"query": "cls"})["query"] == 0
    assert catalog.resolve("neuron", text_data, {"query": "cls"})["query"] == 0  # [CLS]
    assert catalog.resolve("image", vit_data, {"query": [1, 2]})["query"] == [1, 2]
    assert ex.parse_query("1,2") == [1, 2] and ex.parse_query("CLS") == "cls" and ex.parse_query("4") == 4
    with pytest.raises(ex.ExportError, match="row,col"):
        ex.parse_query("a,b")
    with pytest.raises(ViewError, match="outside"):
        build_view("image", vit_data, {"query": [9, 9]})


# -- issue 15: one figure in several formats shares its data; kills leave nothing half-written --------------
def test_one_figure_in_two_formats_shares_its_data(model_dir, tmp_path, capsys):
    base = ["export", "--model", str(model_dir), "--text", tiny.TEXT, "--view", "head", "--layer", "1"]
    assert main([*base, "--format", "png", "--out", str(tmp_path / "fig.png")]) == 0, capsys.readouterr().err
    data = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in (tmp_path / "fig.data").rglob("*")}
    assert main([*base, "--format", "svg", "--out", str(tmp_path / "fig.svg")]) == 0, capsys.readouterr().err
    assert {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in (tmp_path / "fig.data").rglob("*")} == data
    ET.fromstring((tmp_path / "fig.svg").read_bytes())
    # different data under the same name needs --force, and says so in one line
    other = [*base[:5], "--variant", "sliding_window:w=2", *base[5:], "--out", str(tmp_path / "fig.html")]
    assert main(other) == 1
    err = capsys.readouterr().err
    assert err.count("attnscope: error:") == 1 and "fig.data already exists and holds other data; pass --force" in err
    assert not (tmp_path / "fig.html").exists()
    assert main([*other, "--force"]) == 0
    assert json.loads((tmp_path / "fig.data" / "manifest.json").read_text())["variant"].startswith("sliding_window")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


KILL_AT = """
import os, signal, sys
import models.atomic as atomic
point, sig, where, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
real = {"rename": os.rename, "link": os.link}
def stop(name):
    def call(*a, **k):
        if name == point and str(a[1]).startswith(where):
            os.kill(os.getpid(), sig)
        return real[name](*a, **k)
    return call
atomic.os.rename = stop("rename")  # the data folder moving into place
atomic.os.link = stop("link")  # the figure appearing under its name
from app.cli import main
sys.exit(main(argv))
"""


@pytest.mark.parametrize("point", ["rename", "link"])
def test_an_export_killed_midway_leaves_no_figure_without_data_and_nothing_hidden(model_dir, tmp_path, point):
    import signal
    import subprocess
    import sys

    out = tmp_path / "fig.html"
    argv = ["export", "--model", str(model_dir), "--text", tiny.TEXT, "--view", "head", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-c", KILL_AT, point, str(int(signal.SIGKILL)), str(tmp_path), *argv],
                          env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists() or (tmp_path / "fig.data" / "view.json").is_file()  # never a figure without its data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # SIGKILL: hidden work left behind...
    assert main(argv) == 0  # ...until the next run writes here: it cleans up and completes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.data", "fig.html"]
    # SIGTERM (a timeout, a plain `kill`) is caught: the writer removes its own temporaries
    out.unlink()
    proc = subprocess.run([sys.executable, "-c", KILL_AT, "link", str(int(signal.SIGTERM)), str(tmp_path), *argv],
                          env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.data"]


def test_compare_export_checks_both_traces_against_the_budget(model_dir, tmp_path, capsys, monkeypatch):
    """A comparison holds two traces at once: refused before either runs when only one would fit."""
    from models.memory import GB, trace_estimate
    from models.registry import load
    from models.tracer import encode

    lm = load(str(model_dir))
    n = encode(lm, text=tiny.TEXT).ctx.n
    one, two = (trace_estimate(lm, n, dense=True, qk=True, traces=k).total for k in (1, 2))
    assert two > one
    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", str((one + two) / 2 / GB))
    import models.tracer

    monkeypatch.setattr(models.tracer, "trace", _no_model)
    argv = ["export", "--model", str(model_dir), "--text", tiny.TEXT, "--variant", "sliding_window:w=2",
            "--view", "compare", "--out", str(tmp_path / "c.html")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("attnscope: error:") == 1 and "2 traces of this input needs about" in err
