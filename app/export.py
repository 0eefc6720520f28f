"""Export: figures as PNG, SVG, PDF (kaleido + Chromium) and self-contained HTML, with the data that rebuilds them.

A figure's data is a folder (or a zip of one) in the trace contract's format plus `view.json`:

    head.data/view.json            {"view": "head", "selection": {"layer": 2, "head": 5}, "attnscope": "0.1.0", ...}
    head.data/manifest.json        the trace (models/trace.py); trace.npz beside it
    compare.data/a/, compare.data/b/    compare: both traces, each a trace folder
    qk.data/points.npz, points.json     qk: the projected query–key points (and the trace they came from)
    lines.data/figure.json              a figure outside the catalog: its plotly JSON

`render_figure(path)` rebuilds the figure from such a folder with `app.views.catalog.build_view`, without a
model. Static formats go through ONE Chromium session (`StaticRenderer`), however many files are written.
Files are written atomically (a temporary file, then a rename) and never over an existing file unless
`force=True`.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go

from app.views.catalog import CATALOG, VIEWS, ViewError, applicable, as_data, build_view, metric_names, resolve
from kernels.errors import UserError
from models.atomic import write_file, write_folder

FORMATS = ("png", "svg", "pdf", "html")
STATIC = ("png", "svg", "pdf")
WRITABLE = (*FORMATS, "json")  # json: the figure's plotly JSON
SCALE = 2  # PNG pixels per CSS pixel: print resolution
WIDTH = 900  # static width of figures that leave theirs to the page (plotly's own default is 700)
BUNDLE_VERSION = 1
CHROMIUM_HINT = ("static export (PNG, SVG, PDF) needs Chromium: apt-get install chromium "
                 "(or set BROWSER_PATH to a Chrome/Chromium executable)")
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
TYPICAL = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
TRACE_FILES = ("manifest.json", "trace.npz")
BUNDLE_FILES = ("view.json", *TRACE_FILES, "points.npz", "points.json", "figure.json", "data.json")
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf", "html": "text/html",
        "json": "application/json", "zip": "application/zip"}


class ExportError(UserError):
    """An export that cannot be done; the message says why and what to do."""


def version() -> str:
    try:
        from importlib.metadata import version as v

        return v("attnscope")
    except Exception:  # not installed (a checkout on sys.path)
        return "0.1.0"


# -- names -----------------------------------------------------------------------------------------------
def safe_name(name: str, default: str = "figure") -> str:
    """A file name from any string: letters, digits, '.', '_' and '-' only; never a path, never hidden."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._-")
    s = re.sub(r"\.{2,}", ".", s)
    return s[:120] or default


def figure_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The format to write: `fmt`, else the file's suffix."""
    fmt = (fmt or Path(path).suffix.lstrip(".")).lower()
    if fmt == "htm":
        fmt = "html"
    if fmt not in WRITABLE:
        raise ExportError(f"cannot tell the format of {path}: pass --format {'|'.join(FORMATS)} "
                          "or end the file name with one of them")
    return fmt


# -- Chromium and kaleido --------------------------------------------------------------------------------
def find_chromium(path: str | os.PathLike | None = None) -> str:
    """The Chrome/Chromium kaleido drives: `path`, else $BROWSER_PATH, else chromium on PATH or in /usr/bin,
    else a copy kaleido downloaded (`kaleido_get_chrome`). Raises ExportError saying how to install one."""
    explicit = path or os.environ.get("BROWSER_PATH")
    if explicit:
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return str(explicit)
        raise ExportError(f"no browser at {explicit}; {CHROMIUM_HINT}")
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    for p in TYPICAL:
        if os.access(p, os.X_OK):
            return p
    try:  # a browser choreographer knows about (its own download included)
        from choreographer.browsers.chromium import Chromium

        found = Chromium.find_browser()
        if found and Path(found).is_file():
            return str(found)
    except Exception:
        pass
    raise ExportError(CHROMIUM_HINT)


class StaticRenderer:
    """One headless Chromium (kaleido) for many figures: PNG, SVG and PDF bytes.

    Kaleido is asynchronous; its event loop runs on a thread of its own, so callers (the CLI, Streamlit's
    download threads) call `render` / `render_many` synchronously, from any thread.
    """

    def __init__(self, browser: str | os.PathLike | None = None, *, tabs: int = 1, timeout: float = 120):
        self.browser = find_chromium(browser)
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="attnscope-kaleido", daemon=True)
        self._thread.start()
        self._kaleido = None
        try:
            self._kaleido = self._call(self._open(tabs), timeout=max(timeout, 60))
        except BaseException as exc:
            self.close()
            if isinstance(exc, ExportError):
                raise
            raise ExportError(f"Chromium at {self.browser} did not start ({type(exc).__name__}: {exc}); "
                              f"{CHROMIUM_HINT}") from None

    async def _open(self, tabs: int):
        import kaleido

        # mathjax=False: no CDN fetch, so rendering works offline; plotly.js comes from the plotly package
        k = kaleido.Kaleido(path=self.browser, n=tabs, timeout=self.timeout, mathjax=False)
        await k.open()
        return k

    def _call(self, coro, timeout: float | None = None):
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            fut.cancel()
            raise ExportError(f"Chromium took over {timeout:.0f} s to render; the figure may be too large") from None

    @property
    def alive(self) -> bool:
        return self._kaleido is not None and self._thread.is_alive()

    def render(self, fig: go.Figure | dict, fmt: str, *, scale: float = SCALE) -> bytes:
        return self.render_many([(fig, fmt)], scale=scale)[0]

    def render_many(self, jobs: list[tuple[go.Figure | dict, str]], *, scale: float = SCALE) -> list[bytes]:
        """Bytes of each (figure, format) job, rendered on the open browser's tabs."""
        for _, fmt in jobs:
            if fmt not in STATIC:
                raise ExportError(f"{fmt} is not a static format ({', '.join(STATIC)})")
        if not self.alive:
            raise ExportError("the Chromium session is closed")

        plain = [(_plain(fig), fmt) for fig, fmt in jobs]

        async def run():
            return await asyncio.gather(*(self._kaleido.calc_fig(fig, opts=_opts(fig, fmt, scale))
                                          for fig, fmt in plain))

        try:
            return self._call(run(), timeout=self.timeout * max(1, len(jobs)))
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"Chromium could not render the figure: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        if self._kaleido is not None:
            try:
                self._call(self._kaleido.close(), timeout=30)
            except Exception:
                pass
            self._kaleido = None
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> StaticRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _opts(fig: dict, fmt: str, scale: float) -> dict:
    layout = fig.get("layout", {})
    opts = {"format": fmt, "scale": scale}
    if not layout.get("width"):
        opts["width"] = WIDTH
    return opts


def _plain(fig) -> dict:
    return fig.to_plotly_json() if isinstance(fig, go.Figure) else fig


_SHARED: StaticRenderer | None = None
_SHARED_LOCK = threading.Lock()


def shared_renderer() -> StaticRenderer:
    """A process-wide renderer (the app's download buttons share one Chromium), started on first use."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or not _SHARED.alive:
            _SHARED = StaticRenderer()
            import atexit

            atexit.register(_SHARED.close)
        return _SHARED


# -- figure bytes ----------------------------------------------------------------------------------------
def html_bytes(fig: go.Figure, title: str | None = None) -> bytes:
    """A self-contained page: plotly.js embedded (no CDN), opens offline."""
    page = fig.to_html(include_plotlyjs=True, full_html=True, include_mathjax=False, div_id="attnscope-figure",
                       config={"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": SCALE}})
    heading = title or _plain_title(fig)
    if heading:
        page = page.replace("<head>", f"<head>\n    <title>{_html_escape(heading)}</title>", 1)
    return page.encode("utf-8")


def _plain_title(fig: go.Figure) -> str:
    text = fig.layout.title.text or ""
    return re.sub(r"<[^>]+>", " ", text).strip()


def _html_escape(s: str) -> str:
    import html

    return html.escape(s, quote=True)


def figure_bytes(fig: go.Figure, fmt: str, *, renderer: StaticRenderer | None = None,
                 scale: float = SCALE) -> bytes:
    """The figure as `fmt` (png, svg, pdf, html, json); static formats on `renderer` (default: the shared one)."""
    if fmt == "html":
        return html_bytes(fig)
    if fmt == "json":
        return fig.to_json().encode("utf-8")
    if fmt not in STATIC:
        raise ExportError(f"unknown format {fmt!r}; pick one of {', '.join(WRITABLE)}")
    return (renderer or shared_renderer()).render(fig, fmt, scale=scale)


# -- atomic writes ---------------------------------------------------------------------------------------
def refuse_existing(paths: Iterable[Path], force: bool) -> None:
    if force:
        return
    for p in paths:
        if p.exists() or p.is_symlink():
            raise ExportError(f"{p} already exists; pass --force to overwrite it")


def atomic_write(path: str | os.PathLike, data: bytes, *, force: bool = False) -> Path:
    """Write `data` as `path` in one rename (models.atomic); an existing file needs `force`."""
    return write_file(path, data, force=force, error=ExportError)


def atomic_folder(folder: str | os.PathLike, files: dict[str, bytes], *, force: bool = False) -> Path:
    """Write `files` (relative path → bytes) as a new folder, built beside it and renamed into place.

    A folder already holding exactly these files is left as it is: one figure exported in several formats
    shares its data. Different data is replaced only with `force`, and only in a data folder.
    """
    folder = Path(folder)
    if folder.is_dir() and not folder.is_symlink() and same_files(folder, files):
        return folder
    if (folder.is_dir() or folder.is_symlink()) and not force:
        raise ExportError(f"{folder} already exists and holds other data; pass --force to replace it")

    def fill(tmp: Path) -> None:
        for rel, data in files.items():
            target = _inside(tmp, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    return write_folder(folder, fill, force=force, error=ExportError, what="data",
                        replaceable=lambda p: any((p / name).exists() for name in BUNDLE_FILES))


def same_files(folder: Path, files: dict[str, bytes]) -> bool:
    """Whether `folder` holds exactly `files`: the same names, the same bytes (arrays of .npz files equal)."""
    import numpy as np

    on_disk = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if not p.is_dir()}
    if set(on_disk) != set(files):
        return False
    for rel, data in files.items():
        if not rel.endswith(".npz"):
            if on_disk[rel].read_bytes() != data:
                return False
            continue
        try:  # the zip members carry their write time: compare the arrays, not the bytes
            with np.load(on_disk[rel], allow_pickle=False) as a, np.load(io.BytesIO(data), allow_pickle=False) as b:
                if sorted(a.files) != sorted(b.files):
                    return False
                if not all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a.files):
                    return False
        except Exception:  # a damaged file on disk is not the same data
            return False
    return True


def _inside(root: Path, rel: str) -> Path:
    """root/rel, refusing anything that would land outside root."""
    parts = Path(rel).parts
    if not parts or Path(rel).is_absolute() or any(p in ("..", "") for p in parts):
        raise ExportError(f"refusing the unsafe path {rel!r}")
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ExportError(f"refusing the unsafe path {rel!r}")
    return target


# -- the data of a figure --------------------------------------------------------------------------------
@dataclass
class Bundle:
    """What rebuilds one figure: the view, its selection and its data (or, outside the catalog, its JSON)."""

    view: str
    selection: dict
    data: dict = field(default_factory=dict)
    figure_json: str | None = None  # figures outside the catalog

    def figure(self) -> go.Figure:
        if self.view in CATALOG:
            return build_view(self.view, self.data, self.selection)
        if self.figure_json is None:
            raise ExportError(f"the saved view {self.view!r} is not one of {', '.join(VIEWS)} and has no figure.json")
        return go.Figure(json.loads(self.figure_json))


class _TraceBytes:
    """manifest.json and trace.npz of each trace, serialised once however many exports share it."""

    def __init__(self):
        self._cache: dict[int, tuple[object, dict[str, bytes]]] = {}

    def __call__(self, tr) -> dict[str, bytes]:
        hit = self._cache.get(id(tr))
        if hit is not None and hit[0] is tr:
            return hit[1]
        with tempfile.TemporaryDirectory(prefix="attnscope-trace-") as d:
            folder = tr.save(Path(d) / "trace")  # the contract's own writer
            files = {name: (folder / name).read_bytes() for name in TRACE_FILES}
        self._cache[id(tr)] = (tr, files)
        return files


def _points_files(emb) -> dict[str, bytes]:
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, coords=emb.coords, role=np.asarray(emb.role).astype(str),
                        token_index=np.asarray(emb.token_index), position=np.asarray(emb.position),
                        input=np.asarray(emb.input), norm=np.asarray(emb.norm))
    meta = {"model_id": emb.model_id, "layer": int(emb.layer), "head": int(emb.head), "method": emb.method,
            "dims": int(emb.dims), "seed": int(emb.seed), "scale": float(emb.scale), "token": list(emb.token),
            "token_kind": list(emb.token_kind), "context": list(emb.context)}
    return {"points.npz": buf.getvalue(), "points.json": json.dumps(meta, indent=1).encode()}


def _load_points(folder: Path):
    import numpy as np

    from analysis.qk_embed import Embedding

    meta = json.loads((folder / "points.json").read_text())
    with np.load(folder / "points.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    n = len(arrays["role"])
    for key in ("token", "token_kind", "context"):
        if len(meta[key]) != n:
            raise ExportError(f"{folder / 'points.json'} does not match points.npz ({key})")
    return Embedding(coords=arrays["coords"], role=arrays["role"], token_index=arrays["token_index"],
                     position=arrays["position"], input=arrays["input"], token=meta["token"],
                     token_kind=meta["token_kind"], norm=arrays["norm"], context=meta["context"],
                     model_id=meta["model_id"], layer=int(meta["layer"]), head=int(meta["head"]),
                     method=meta["method"], dims=int(meta["dims"]), seed=int(meta["seed"]),
                     scale=float(meta["scale"]))


def bundle_files(view: str, data, selection: dict | None = None, *, fig: go.Figure | None = None,
                 trace_bytes: Callable | None = None) -> dict[str, bytes]:
    """The files (relative path → bytes) of a figure's data folder.

    `view` is a catalog view (its figure is rebuilt from the data) or any other name with `fig` (its plotly
    JSON is kept, with the trace when `data` holds one).
    """
    trace_bytes = trace_bytes or _TraceBytes()
    data = _data_of(data)
    files: dict[str, bytes] = {}
    meta = {"attnscope": version(), "bundle_version": BUNDLE_VERSION}
    if view in CATALOG:
        sel = resolve(view, data, selection)
        if view == "qk":
            from app.views.catalog import qk_points

            files.update(_points_files(qk_points(data, sel)))
        meta.update(view=view, selection=sel)
    else:
        if fig is None:
            raise ExportError(f"unknown view {view!r}; pick one of {', '.join(VIEWS)}")
        meta.update(view=safe_name(view), selection=_jsonable(selection or {}), figure="figure.json")
        files["figure.json"] = fig.to_json().encode("utf-8")
        if isinstance(data, dict) and "rows" in data:
            files["data.json"] = json.dumps(_jsonable(data["rows"]), indent=1).encode()
    tr = data.get("trace") if isinstance(data, dict) else None
    if view == "compare":
        a = data.get("a") if data.get("a") is not None else data["trace"]
        for prefix, t in (("a", a), ("b", data["b"])):
            files.update({f"{prefix}/{k}": v for k, v in trace_bytes(t).items()})
        meta["data"] = {"a": "a", "b": "b"}
    elif tr is not None:
        files.update(trace_bytes(tr))
        meta["data"] = {"trace": "."}
    if tr is not None:
        meta.update(model_id=tr.model_id, variant=tr.variant)
    files["view.json"] = json.dumps(meta, indent=1, ensure_ascii=False).encode("utf-8")
    return files


def _data_of(data) -> dict:
    if data is None or isinstance(data, dict):
        return data or {}
    try:
        return as_data(data)
    except ViewError:
        if isinstance(data, list):  # table rows (the quality lens)
            return {"rows": data}
        raise


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def load_bundle(path: str | os.PathLike, *, view: str | None = None) -> Bundle:
    """A figure's data from a data folder, its view.json or manifest.json, a plain trace folder (with `view`)
    or a zip of a data folder. Nothing outside the folder is read; no model is loaded."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path} does not exist")
    if path.is_file() and zipfile.is_zipfile(path):
        with tempfile.TemporaryDirectory(prefix="attnscope-render-") as d:
            folder = _extract_bundle(path, Path(d), view)
            return _load_folder(folder, view)
    if path.is_file():
        if path.name not in ("manifest.json", "view.json"):
            raise ExportError(f"{path} is neither a data folder, its view.json or manifest.json, nor a zip")
        path = path.parent
    return _load_folder(path, view)


def _load_folder(folder: Path, view: str | None) -> Bundle:
    from models.trace import Trace

    meta = {}
    if (folder / "view.json").is_file():
        try:
            meta = json.loads((folder / "view.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ExportError(f"cannot read {folder / 'view.json'}: {exc}") from None
        if not isinstance(meta, dict):
            raise ExportError(f"{folder / 'view.json'} is not a view description")
    elif not (folder / "manifest.json").is_file():
        raise ExportError(f"{folder} holds no view.json or manifest.json: not a trace or export folder")
    name = view or meta.get("view")
    if name is None:
        raise ExportError(f"{folder} is a trace folder without view.json; say which view to draw with --view "
                          f"({', '.join(VIEWS)})")
    if not isinstance(name, str):
        raise ExportError(f"{folder / 'view.json'} names no view")
    selection = meta.get("selection") if view is None or view == meta.get("view") else {}
    selection = selection if isinstance(selection, dict) else {}
    if name not in CATALOG:
        if name != safe_name(name) or view is not None:
            raise ExportError(f"unknown view {name!r}; pick one of {', '.join(VIEWS)}")
        fig_file = folder / "figure.json"
        if not fig_file.is_file():
            raise ExportError(f"the saved view {name!r} is not one of {', '.join(VIEWS)} and has no figure.json")
        return Bundle(name, selection, {}, fig_file.read_text(encoding="utf-8"))
    data: dict = {}
    if name == "compare":
        if not (folder / "a").is_dir() or not (folder / "b").is_dir():
            raise ExportError(f"{folder} has no a/ and b/ trace folders: not a compare export")
        data = {"trace": Trace.load(folder / "a"), "b": Trace.load(folder / "b")}
    else:
        if (folder / "manifest.json").is_file():
            data["trace"] = Trace.load(folder)
        if (folder / "points.npz").is_file() and (folder / "points.json").is_file():
            data["points"] = _load_points(folder)
    return Bundle(name, selection, data)


def _extract_bundle(zpath: Path, dest: Path, view: str | None) -> Path:
    """Extract one data folder of a zip (only the files a data folder holds) into dest."""
    with zipfile.ZipFile(zpath) as z:
        names = z.namelist()
        for n in names:
            parts = Path(n).parts
            if n.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise ExportError(f"refusing {zpath}: it holds the unsafe path {n!r}")
        roots = sorted({n[: -len("view.json")] for n in names if n == "view.json" or n.endswith("/view.json")})
        if not roots:  # a zipped trace folder
            roots = sorted({n[: -len("manifest.json")] for n in names
                            if n == "manifest.json" or n.endswith("/manifest.json")})
        if len(roots) > 1 and view is not None:
            stem = safe_name(view)
            roots = [r for r in roots if Path(r).name == f"{stem}.data" or Path(r).name.startswith(f"{stem}-")]
        if len(roots) != 1:
            listed = ", ".join(r or "." for r in roots) or "none"
            raise ExportError(f"{zpath} must hold one data folder (found: {listed}); unzip it and render one")
        root = roots[0]
        for rel in [*BUNDLE_FILES, *(f"{p}/{f}" for p in ("a", "b") for f in TRACE_FILES)]:
            member = root + rel
            if member in names:
                target = _inside(dest, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(member))
    return dest


def render_figure(path: str | os.PathLike, *, view: str | None = None, selection: dict | None = None) -> go.Figure:
    """The figure saved at `path`, rebuilt from its data (a `selection` overrides the saved one)."""
    b = load_bundle(path, view=view)
    if selection:
        b.selection = {**b.selection, **{k: v for k, v in selection.items() if v is not None}}
    return b.figure()


def render(path: str | os.PathLike, out: str | os.PathLike, fmt: str | None = None, *, view: str | None = None,
           selection: dict | None = None, force: bool = False, browser: str | None = None) -> Path:
    """`attnscope render`: rebuild the figure saved at `path` and write it to `out`."""
    fmt = figure_format(out, fmt)
    refuse_existing([Path(out)], force)
    fig = render_figure(path, view=view, selection=selection)
    if fmt in STATIC:
        with StaticRenderer(browser) as r:
            return atomic_write(out, r.render(fig, fmt), force=force)
    return atomic_write(out, figure_bytes(fig, fmt), force=force)


# -- exporting -------------------------------------------------------------------------------------------
@dataclass
class Item:
    """One figure to export: its file stem, view, selection and Figure."""

    stem: str
    view: str
    selection: dict
    fig: go.Figure


def plan_all(data, selection: dict | None = None) -> list[Item]:
    """Every view that applies to `data` (metrics: every metric), at the selection's layer, head and query."""
    data = _data_of(data)
    selection = dict(selection or {})
    items = []
    for view in applicable(data):
        sels = [selection]
        if view == "metrics":
            sels = [{**selection, "metric": m} for m in metric_names(data["trace"])]
        for s in sels:
            sel = resolve(view, data, s)
            stem = view if view != "metrics" else f"metrics-{sel['metric']}"
            items.append(Item(safe_name(stem), view, sel, build_view(view, data, sel)))
    return items


def export_files(items: list[Item], data, formats: Iterable[str] = FORMATS, *, with_data: bool = True,
                 renderer: StaticRenderer | None = None, browser: str | None = None,
                 on_error: Callable[[Exception], None] | None = None) -> dict[str, bytes]:
    """Relative path → bytes for items × formats (one Chromium for all static files) and their data folders.

    With `on_error`, a missing Chromium is reported there and the static files are left out.
    """
    formats = [f for f in FORMATS if f in set(formats)] + [f for f in formats if f == "json"]
    data = _data_of(data)
    files: dict[str, bytes] = {}
    static = [(it, f) for it in items for f in formats if f in STATIC]
    if static:
        try:
            own = renderer is None
            r = renderer or StaticRenderer(browser, tabs=2)
            try:
                for (it, f), blob in zip(static, r.render_many([(it.fig, f) for it, f in static])):
                    files[f"{it.stem}.{f}"] = blob
            finally:
                if own:
                    r.close()
        except ExportError as exc:
            if on_error is None:
                raise
            on_error(exc)
    for it in items:
        for f in formats:
            if f not in STATIC:
                files[f"{it.stem}.{f}"] = figure_bytes(it.fig, f)
    if with_data:
        tb = _TraceBytes()
        for it in items:
            for rel, blob in bundle_files(it.view, data, it.selection, fig=it.fig, trace_bytes=tb).items():
                files[f"{it.stem}.data/{rel}"] = blob
    return dict(sorted(files.items()))


def write_export(out_dir: str | os.PathLike, files: dict[str, bytes], *, force: bool = False) -> list[Path]:
    """Write export files into out_dir: each data folder as one atomic folder, then the figures atomically,
    so a run killed midway never leaves a figure without its data."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file; --all writes into a folder")
    tops: dict[str, dict[str, bytes]] = {}
    for rel, blob in files.items():
        top, _, rest = rel.partition("/")
        tops.setdefault(top, {})[rest] = blob
    for top in tops:
        if top != safe_name(top):
            raise ExportError(f"refusing the unsafe export name {top!r}")
    figures = [top for top, content in tops.items() if list(content) == [""]]
    refuse_existing([out_dir / top for top in figures], force)
    written = [atomic_folder(out_dir / top, content, force=force) for top, content in tops.items()
               if top not in figures]
    return written + [atomic_write(out_dir / top, tops[top][""], force=force) for top in figures]


def zip_bytes(files: dict[str, bytes], root: str | None = None) -> bytes:
    buf = io.BytesIO()
    prefix = f"{safe_name(root)}/" if root else ""
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for rel, blob in files.items():
            _inside(Path("/nonexistent-root"), rel)  # the same safety rule as on disk
            z.writestr(prefix + rel, blob)
    return buf.getvalue()


def export_view(view: str, data, selection: dict | None, out: str | os.PathLike, fmt: str | None = None, *,
                force: bool = False, with_data: bool = True, renderer: StaticRenderer | None = None,
                browser: str | None = None) -> list[Path]:
    """Write one view as `out` (format from `fmt` or the suffix) and its data folder `<out stem>.data/`."""
    out = Path(out)
    fmt = figure_format(out, fmt)
    data = _data_of(data)
    sel = resolve(view, data, selection)
    data_dir = out.with_name(safe_name(out.stem) + ".data")  # shared by the figure's formats
    refuse_existing([out], force)  # the data folder may be shared: it is compared once built
    fig = build_view(view, data, sel)
    if fmt in STATIC:
        if renderer is None:
            with StaticRenderer(browser) as r:
                blob = r.render(fig, fmt)
        else:
            blob = renderer.render(fig, fmt)
    else:
        blob = figure_bytes(fig, fmt)
    written = [atomic_folder(data_dir, bundle_files(view, data, sel, fig=fig), force=force)] if with_data else []
    return [atomic_write(out, blob, force=force), *written]


def export_all(data, out_dir: str | os.PathLike, *, selection: dict | None = None,
               formats: Iterable[str] = FORMATS, force: bool = False, with_data: bool = True,
               browser: str | None = None) -> list[Path]:
    """Every applicable view in every format into out_dir, with one Chromium kept open for all of them."""
    out_dir = Path(out_dir)
    data = _data_of(data)
    items = plan_all(data, selection)
    if not items:
        raise ExportError("no view applies to this data")
    refuse_existing([out_dir / f"{it.stem}.{f}" for it in items for f in formats], force)
    files = export_files(items, data, formats, with_data=with_data, browser=browser)
    return write_export(out_dir, files, force=force)


def all_views_zip(data, selection: dict | None = None, formats: Iterable[str] = FORMATS, *,
                  root: str = "attnscope_export", renderer: StaticRenderer | None = None) -> bytes:
    """The app's "Export all views": every applicable view, every format, with data, as one zip.

    Without Chromium the static files are left out and the zip says why (in MISSING_STATIC.txt).
    """
    problems: list[str] = []
    data = _data_of(data)
    items = plan_all(data, selection)
    files = export_files(items, data, formats, renderer=renderer,
                         on_error=lambda exc: problems.append(str(exc)))
    if problems:
        files["MISSING_STATIC.txt"] = ("\n".join(problems) + "\n").encode()
    return zip_bytes(files, root)


def view_zip(view: str, data, selection: dict | None = None, *, fig: go.Figure | None = None) -> bytes:
    """One figure's data folder as a zip (the app's "Data" button): `attnscope render` rebuilds it."""
    stem = safe_name(view)
    return zip_bytes(bundle_files(view, data, selection, fig=fig), f"{stem}.data")


# -- the command line ------------------------------------------------------------------------------------
def parse_query(raw: str | None):
    """--query: a token index, 'cls', or 'row,col' (a patch of a ViT)."""
    if raw is None:
        return None
    raw = raw.strip()
    if raw.lower() == "cls":
        return "cls"
    try:
        parts = [int(x) for x in raw.split(",")]
    except ValueError:
        raise ExportError(f"--query {raw!r} must be a token index, cls, or row,col") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts
    raise ExportError(f"--query {raw!r} must be a token index, cls, or row,col")


def cli_selection(args) -> dict:
    sel = {"layer": getattr(args, "layer", None), "head": getattr(args, "head", None),
           "query": parse_query(getattr(args, "query", None)), "metric": getattr(args, "metric", None)}
    return {k: v for k, v in sel.items() if v is not None}


def run_export(load: Callable, inputs: dict, *, variant: str = "full", variant_b: str | None = None, view: str | None,
               selection: dict, out: str, fmt: str | None = None, all_views: bool = False, force: bool = False,
               with_data: bool = True, say: Callable[[str], None] = print) -> list[Path]:
    """`attnscope export`: load the model (`load()`, after the cheap checks), trace the input with q and k
    kept and export one view, or all of them.

    Compare draws a vs b: --variant vs --variant-b, else (with a --variant other than full) full vs --variant.
    """
    from kernels.variants import parse_variant
    from models.tracer import trace

    full = parse_variant(variant).spec() == "full"
    out_path = Path(out)
    if all_views:
        formats = [fmt] if fmt else list(FORMATS)
        for f in formats:
            if f not in WRITABLE:
                raise ExportError(f"unknown format {f!r}; pick one of {', '.join(FORMATS)}")
        if out_path.exists() and not out_path.is_dir():
            raise ExportError(f"{out_path} is a file; with --all, --out is a folder")
    else:
        if view is None:
            raise ExportError("say which view to export with --view (or export every view with --all)")
        from app.views.catalog import get_view

        get_view(view)
        formats = [figure_format(out_path, fmt)]
        refuse_existing([out_path], force)  # before the model runs
    if view == "compare" and variant_b is None and full:
        raise ExportError("the compare view needs a second variant: --variant-b V2 (or a --variant other than full)")
    if any(f in STATIC for f in formats):
        find_chromium()  # say now, not after tracing, when there is none
    pair = variant_b is not None or (not full and (all_views or view == "compare"))  # two traces held at once
    lm = load()
    _require_traces(lm, inputs, 2 if pair else 1)
    primary = trace(lm, variant=variant, qk=True, **inputs)
    for note in primary.notes:
        say(f"note: {note}")
    data: dict = {"trace": primary}
    if variant_b is not None:
        data.update(a=primary, b=trace(lm, variant=variant_b, qk=True, **inputs))
    elif primary.variant != "full" and (all_views or view == "compare"):
        data.update(a=trace(lm, variant="full", qk=True, **inputs), b=primary)
    if view == "compare" and "b" not in data:
        raise ExportError("the compare view needs a second variant: --variant-b V2 (or a --variant other than full)")
    if all_views:
        paths = export_all(data, out_path, selection=selection, formats=formats, force=force, with_data=with_data)
    else:
        paths = export_view(view, data, selection, out_path, formats[0], force=force, with_data=with_data)
    return paths


def _require_traces(lm, inputs: dict, count: int) -> None:
    """The traces an export holds at once (two for a comparison), against the memory budget, before any runs."""
    from models.memory import require, trace_estimate
    from models.recorder import DENSE_LIMIT
    from models.tracer import encode

    n = encode(lm, text=inputs.get("text"), image=inputs.get("image")).ctx.n
    require(trace_estimate(lm, n, dense=n <= DENSE_LIMIT, qk=True, traces=count), f"{count} traces of this input")
