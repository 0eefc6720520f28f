"""Property-based fuzzing (hypothesis): variant strings, variant parameters and text inputs.

Never a traceback of an unexpected type, never NaN in a trace:
(a) any variant string parses to a Variant or raises VariantError;
(b) every registered variant with random valid parameters, traced on tiny random models (causal
    llama-gqa, bidirectional bert, a ViT for ViT-only variants), gives finite maps whose rows sum
    to 1 (or 0 for an emptied row), or raises VariantError / InputError;
(c) random texts through `attnscope trace` exit 0 or 1 with exactly one `attnscope: error:` line.

The examples are derandomized, so CI sees the same cases on every run.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from tiny import TEXT, sample_image, tiny_text_model, tiny_vit, wrap_text, wrap_vit

from kernels.variants import REGISTRY, Param, Variant, VariantError, parse_variant
from models.loaded import InputError
from models.tracer import trace

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CALIBRATION = {"text": TEXT + " and the lazy dog sleeps in the warm afternoon sun by the river " * 2}
PARAM_NAMES = sorted({p.name for cls in REGISTRY.values() for p in cls.params})


# -- (a) variant strings ------------------------------------------------------------------------------------------

JUNK = st.sampled_from(
    ["", " ", "auto", "AUTO", "none", "nan", "-nan", "inf", "-inf", "+inf", "1e309", "-0", "0x10", "1_000", "½",
     "٣", "true", "False", "yes", "[", "]", "(", ")", "[(0,1),(2,3)]", "[[", "))", "0.1;2.3", "1;2;4", "=", ":",
     ",", "==", "::", "\x00", "\n", "\u202e", "💥", "ß", "sliding_window:w=2", "[sliding_window:w=2,sinks=1]",
     "[delta_correction]", "[topk:k=2]", "1e-320", "9" * 40]
)
VALUES = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.booleans().map(str),
    JUNK,
    st.text(max_size=12),
    st.text(alphabet="[](),:=;. 0123456789", max_size=12),
)
NAMES = st.one_of(st.sampled_from(sorted(REGISTRY)), st.text(max_size=12), st.sampled_from(["", " full ", "FULL"]))
KEYS = st.one_of(st.sampled_from(PARAM_NAMES), st.text(max_size=6), st.just(""))


@st.composite
def variant_strings(draw) -> str:
    name = draw(NAMES)
    items = draw(st.lists(st.tuples(KEYS, st.sampled_from(["=", "", "==", " = "]), VALUES), max_size=5))
    sep = draw(st.sampled_from([",", ", ", ",,", ";"]))
    rest = sep.join(f"{k}{eq}{v}" for k, eq, v in items)
    colon = draw(st.sampled_from([":", ":", "", "::", " : "]))
    return f"{name}{colon}{rest}" if items or colon else name


@settings(FUZZ, max_examples=300)
@given(spec=st.one_of(variant_strings(), st.text(max_size=40)))
@example(spec="delta_correction:inner=[delta_correction],every=2")
@example(spec="sliding_window:w=nan")
@example(spec="decay_1d:a=inf")
@example(spec="gaussian_2d:sigmas=1;nan;2")
@example(spec="head_ablation:heads=[(0,1),(2")
def test_any_variant_string_parses_or_raises_variant_error(spec):
    try:
        v = parse_variant(spec)
    except VariantError as exc:
        assert str(exc).strip(), "a VariantError must say why"
        return
    assert isinstance(v, Variant)
    # what parses prints back to a spec that parses to the same variant
    assert parse_variant(v.spec()).spec() == v.spec()
    for key, value in v.values.items():
        if isinstance(value, float):
            assert not math.isnan(value), f"{spec!r}: {key} is NaN"


# -- (b) valid parameters, traced on tiny models ------------------------------------------------------------------

SPARSE_INNER = ["topk:k=2", "sliding_window:w=2,sinks=1", "strided:l=2", "dilated_window:w=3,d=2", "full",
                "block_topk:b=2,blocks=2", "entmax", "relaxed:gamma=0.5"]


def float_values(variant: str, p: Param) -> st.SearchStrategy:
    lo = -1e6 if p.low is None else float(p.low)
    hi = 1e6 if p.high is None else float(p.high)
    edges = [x for x in (lo, hi, lo + 1e-300, hi - 1e-9, 5e-324, 1e-300, 1e-12, 1e-6, 1.0, 1e6, 1e30)
             if p_allows(p, x)]
    inside = st.floats(lo, hi, exclude_min=p.low_open, exclude_max=p.high_open, allow_nan=False,
                       allow_infinity=False)
    return st.one_of(inside, st.sampled_from(edges)) if edges else inside


def p_allows(p: Param, x: float) -> bool:
    try:
        p.coerce("fuzz", x)
    except VariantError:
        return False
    return True


def int_values(p: Param) -> st.SearchStrategy:
    lo = 0 if p.low is None else int(p.low) + int(p.low_open)
    hi = lo + 40 if p.high is None else int(p.high) - int(p.high_open)
    return st.one_of(st.integers(lo, hi), st.sampled_from([lo, lo + 1, 64, 129, 1000]).filter(lambda x: x <= hi
                                                                                                 or p.high is None))


def str_values(variant: str, p: Param, n_layers: int = 2, n_heads: int = 4) -> st.SearchStrategy:
    if p.name == "heads":
        pair = st.tuples(st.integers(0, n_layers - 1), st.integers(0, n_heads - 1))
        return st.lists(pair, max_size=4).flatmap(lambda ps: st.sampled_from([
            ";".join(f"{a}.{b}" for a, b in ps), "[" + ",".join(f"({a},{b})" for a, b in ps) + "]"]))
    if p.name == "sigmas":
        tiny = 5e-324
        widths = st.one_of(st.floats(tiny, 50), st.sampled_from([tiny, 1e-3, 1.0, 1e6]))
        return st.lists(widths, max_size=3).map(lambda xs: ";".join(repr(x) for x in xs))
    if p.name == "weights":
        return st.just("")  # matched to sigmas in valid_spec
    if p.name == "inner":
        return st.sampled_from(SPARSE_INNER).map(lambda s: f"[{s}]")
    return st.just(p.default)


@st.composite
def valid_spec(draw, name: str) -> str:
    cls = REGISTRY[name]
    items = []
    for p in cls.params:
        if draw(st.booleans()):  # keep the default half of the time
            continue
        if p.default is None and draw(st.booleans()):
            value = "auto"
        elif p.type is bool:
            value = draw(st.sampled_from(["true", "false"]))
        elif p.choices:
            value = draw(st.sampled_from(p.choices))
        elif p.type is int:
            value = draw(int_values(p))
        elif p.type is float:
            value = repr(draw(float_values(name, p)))
        else:
            value = draw(str_values(name, p))
        items.append(f"{p.name}={value}")
    spec = name + (":" + ",".join(items) if items else "")
    sigmas = [s for s in items if s.startswith("sigmas=")]
    if sigmas and sigmas[0] != "sigmas=" and draw(st.booleans()):
        count = len(sigmas[0].split(";"))
        weights = draw(st.lists(st.floats(0, 5), min_size=count, max_size=count))
        spec += ",weights=" + ";".join(f"{w:g}" for w in weights)
    return spec


WORDS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30)
SHORT_TEXTS = st.one_of(
    WORDS,
    st.lists(st.sampled_from(["the", "fox", "a", "dog", ".", ",", "!", "über", "日本", "🦊", "\t", "[SEP]"]),
             min_size=1, max_size=25).map(" ".join),
    st.sampled_from([TEXT, "a", "", " \n\t"]),
)


MODELS: dict = {}  # kind -> tiny LoadedModel; a module global so hypothesis does not print the models


@pytest.fixture(scope="module", autouse=True)
def tiny_models(tokenizer):
    MODELS.update(
        causal=wrap_text(tiny_text_model("llama-gqa"), tokenizer),
        bidirectional=wrap_text(tiny_text_model("bert"), tokenizer),
        vit=wrap_vit(tiny_vit()),
    )
    yield
    MODELS.clear()


STATS = ("entropy", "distance", "sink", "maxp")


def rows_need_not_sum_to_one(spec: str) -> bool:
    """Documented: linformer's random projection E gives implied rows that do not sum to 1."""
    v = parse_variant(spec)
    return v.name == "linformer" and v.proj == "random"


def check_trace(tr, spec: str) -> None:
    """No NaN anywhere; probabilities, logits and row statistics finite; rows sum to 1 (or 0 when emptied)."""
    arrays = {k: np.asarray(v) for k, v in tr.arrays.items()}
    for key, arr in arrays.items():
        assert not np.isnan(arr).any(), f"{spec}: NaN in {key}"
        if key.endswith("_lse"):  # -inf only on a row that every key was masked from (checked below)
            assert not np.isposinf(arr).any(), f"{spec}: +inf in {key}"
        elif key.endswith("_entropy"):  # entr(p) is -inf for p < 0: approximations may imply negative weights
            probs = arrays.get(key.replace("_entropy", "_probs"))
            negative = (probs < 0).any(-1) if probs is not None else np.zeros(arr.shape, bool)
            assert np.isfinite(arr[~negative]).all(), f"{spec}: inf in {key} on a row with no negative weight"
        else:
            assert np.isfinite(arr).all(), f"{spec}: inf in {key}"
    for layer in range(tr.n_layers):
        probs = arrays.get(f"L{layer}_probs")
        if probs is None:
            continue
        sums = probs.astype(np.float64).sum(-1)
        empty = np.isclose(sums, 0, atol=1e-6) & (np.abs(probs) < 1e-6).all(-1)
        if not rows_need_not_sum_to_one(spec):
            ok = np.isclose(sums, 1, atol=1e-3) | empty
            assert ok.all(), f"{spec}: layer {layer} rows sum to {sums[~ok][:5]}"
        lse = arrays.get(f"L{layer}_lse")
        if lse is not None:
            assert not np.isneginf(lse[~empty]).any(), f"{spec}: layer {layer}: -inf log-sum-exp on a non-empty row"


def run(lm, spec: str, **inputs):
    try:
        return trace(lm, variant=spec, calibration=CALIBRATION if lm.kind != "vit" else None, **inputs)
    except (VariantError, InputError) as exc:
        assert str(exc).strip()
        return None


def draw_valid_spec(data, name: str) -> str:
    spec = data.draw(valid_spec(name), "spec")
    try:
        parse_variant(spec)
    except VariantError:
        assume(False)  # a rule across parameters refused it (e.g. weights for each of the sigmas)
    return spec


def draw_subset(data, count: int, label: str):
    """None (the variant runs everywhere) or a non-empty subset of range(count)."""
    return data.draw(st.none() | st.lists(st.integers(0, count - 1), min_size=1, max_size=count, unique=True), label)


TEXT_VARIANTS = sorted(n for n, c in REGISTRY.items() if c.applies_to & {"causal", "bidirectional"})
VIT_VARIANTS = sorted(n for n, c in REGISTRY.items() if "vit" in c.applies_to)


@pytest.mark.parametrize("name", TEXT_VARIANTS)
@settings(FUZZ, max_examples=10)
@given(data=st.data())
def test_text_variant_traces_are_finite(name, data):
    spec = draw_valid_spec(data, name)
    text = data.draw(SHORT_TEXTS, "text")
    layers, heads = draw_subset(data, 2, "layers"), draw_subset(data, 4, "heads")
    qk = data.draw(st.booleans(), "qk")
    for kind in sorted(REGISTRY[name].applies_to & {"causal", "bidirectional"}):
        tr = run(MODELS[kind], spec, text=text, layers=layers, heads=heads, qk=qk)
        if tr is not None:
            check_trace(tr, spec)


@pytest.mark.parametrize("name", VIT_VARIANTS)
@settings(FUZZ, max_examples=10)
@given(data=st.data())
def test_vit_variant_traces_are_finite(name, data):
    spec = draw_valid_spec(data, name)
    size = data.draw(st.tuples(st.integers(1, 80), st.integers(1, 80)), "image size")
    layers, heads = draw_subset(data, 2, "layers"), draw_subset(data, 4, "heads")
    tr = run(MODELS["vit"], spec, image=sample_image(size, seed=size[0]), layers=layers, heads=heads)
    if tr is not None:
        check_trace(tr, spec)


# -- (c) text inputs through the CLI -------------------------------------------------------------------------------


MODEL_DIR: list = []  # the tiny model folder, saved once for the module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("tiny_llama")
    tiny_text_model("llama-gqa").save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    MODEL_DIR[:] = [d]
    yield d
    MODEL_DIR.clear()


def run_cli(text: str, variant: str = "full") -> tuple[int, str, Path]:
    from app.cli import main

    out = Path(tempfile.mkdtemp(prefix="fuzz_trace_")) / "t"
    err, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
        try:
            rc = main(["trace", "--model", str(MODEL_DIR[0]), "--text", text, "--variant", variant, "--out", str(out)])
        except SystemExit as exc:  # argparse usage errors (exit 2)
            rc = exc.code
    return rc, err.getvalue(), out


LONG = st.integers(100, 3000).map(lambda n: " ".join(["fox"] * n))
CLI_TEXTS = st.one_of(
    st.text(max_size=60),  # lone surrogates included: what Python makes of argv bytes that are not UTF-8
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn"]), max_size=20),
    st.sampled_from(["", " ", "\n", "\t\r\n ", "\x00", "\u200b", "\ufeff", "-", "--text", "[CLS]", "[SEP] [PAD]"]),
    LONG,
    st.text(alphabet="🦊日本語ßé\u0301", min_size=50, max_size=400),
)


@pytest.mark.usefixtures("model_dir")
@settings(FUZZ, max_examples=60)
@given(text=CLI_TEXTS, variant=st.sampled_from(["full", "sliding_window:w=2", "topk:k=1", "dam", "window_2d"]))
@example(text="", variant="full")
@example(text=" \n\t", variant="full")
@example(text="fox " * 500, variant="full")
def test_cli_trace_on_random_text_exits_cleanly(text, variant):
    rc, stderr, out = run_cli(text, variant)
    try:
        assert "Traceback" not in stderr
        errors = [line for line in stderr.splitlines() if line.startswith("attnscope: error:")]
        if rc == 0:
            assert not errors, stderr
            assert (out / "manifest.json").is_file() and (out / "trace.npz").is_file()
        elif rc == 1:
            assert len(errors) == 1, stderr
            assert errors[0] == stderr.strip().splitlines()[-1], stderr
        else:  # argparse reads a text starting with '-' as a flag: its usage error, exit 2
            assert rc == 2 and text.startswith("-"), (rc, stderr)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


# -- bugs the fuzz found, fixed: they stay as regression tests --


# a tiny valid decay exponent a made log γ = -inf, and 0·(-inf) = NaN on the diagonal
@pytest.mark.parametrize(("kind", "spec"), [("bidirectional", "decay_1d:a=1e-8"), ("causal", "decay_1d:a=1e-8,b=0"),
                                            ("vit", "manhattan_decay:a=1e-8")])
def test_tiny_decay_exponent_gives_no_nan(kind, spec):
    inputs = {"image": sample_image()} if kind == "vit" else {"text": TEXT}
    check_trace(trace(MODELS[kind], variant=spec, **inputs), spec)


# a tiny valid sigma underflowed 2σ² to 0 in float32, and 0/0 = NaN on the diagonal
@pytest.mark.parametrize("spec", ["gaussian_2d:sigma=1e-23", "gaussian_2d:sigmas=1e-30;1"])
def test_tiny_gaussian_sigma_gives_no_nan(spec):
    check_trace(trace(MODELS["vit"], variant=spec, image=sample_image()), spec)


@pytest.mark.usefixtures("model_dir")
# a --text that is not UTF-8 (Python hands it over with lone surrogates) made the tokenizer raise TypeError
def test_cli_text_with_lone_surrogates_is_one_error():
    rc, stderr, _ = run_cli("caf\udce9")  # what sys.argv holds for the bytes b"caf\xe9"
    assert rc == 1 and "Traceback" not in stderr
    assert sum(line.startswith("attnscope: error:") for line in stderr.splitlines()) == 1


# trace(lm, text=...) with lone surrogates raised the tokenizer's TypeError; the tracer now checks UTF-8
def test_trace_api_text_with_lone_surrogates_is_an_input_error():
    with pytest.raises(InputError, match="UTF-8"):
        trace(MODELS["bidirectional"], text="caf\udce9")


# -- (d) command-line arguments, (e) manifests: never a traceback (issue 15) --------------------------------------


def run_main(argv: list[str]) -> tuple[int, str]:
    """main(argv) with its output captured: (exit status, stderr). argparse's usage errors exit 2."""
    from app.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    return rc, err.getvalue()


def assert_clean_exit(rc, stderr: str, argv) -> None:
    event(f"exit {rc}")
    assert "Traceback" not in stderr, (argv, stderr)
    errors = [line for line in stderr.splitlines() if line.startswith("attnscope: error:")]
    assert rc in (0, 1, 2), (argv, rc, stderr)
    if rc == 1:
        assert len(errors) == 1, (argv, stderr)


JUNK_ARGS = st.sampled_from(["", " ", ",", ",,", "-1", "0", "1", "3", "99", "1e9", "nan", "abc", "0,1", "1,,0", "\x00",
                             "../x", "/", "/nonexistent", "💥", "-", "--", "full", "cls", "1,2", "a,b", "9" * 30])
VARIANT_ARGS = st.one_of(st.sampled_from(["full", "sliding_window:w=2", "topk:k=1", "window_2d:M=2", "nope",
                                          "sliding_window:w=-1", "entmax:alpha=abc", ""]), JUNK_ARGS)


@st.composite
def cli_argvs(draw) -> list[str]:
    model = draw(st.sampled_from([str(MODEL_DIR[0]), "digits-vit", "/nonexistent", "", "no-such/model",
                                  str(MODEL_DIR[0]) + "/config.json", "x.gguf"]))
    command = draw(st.sampled_from(["trace", "export", "render", "heads", "models", "variants"]))
    out = str(Path(tempfile.mkdtemp(prefix="fuzz_cli_")) / draw(st.sampled_from(["o", "o.json", "o.html", "o.bmp"])))
    argv = [command]
    if command in ("trace", "export"):
        argv += ["--model", model]
        source = draw(st.sampled_from(["--text", "--text-file", "--image", None]))
        if source is not None:
            argv += [source, draw(st.one_of(st.sampled_from([TEXT, "", "/nonexistent", str(MODEL_DIR[0])]),
                                            JUNK_ARGS))]
        for flag, values in (("--variant", VARIANT_ARGS), ("--layers", JUNK_ARGS), ("--heads", JUNK_ARGS),
                             ("--max-tokens", JUNK_ARGS), ("--dense-limit", JUNK_ARGS), ("--layer", JUNK_ARGS),
                             ("--head", JUNK_ARGS), ("--query", JUNK_ARGS)):
            if (command == "trace") == (flag in ("--layers", "--heads", "--max-tokens", "--dense-limit")) \
                    or flag == "--variant":
                if draw(st.booleans()):
                    argv += [flag, draw(values)]
        if command == "export":
            argv += draw(st.sampled_from([["--view", "head"], ["--view", "neuron"], ["--view", "compare"], [],
                                          ["--view", "image"], ["--all"]]))
            argv += draw(st.sampled_from([[], ["--format", "html"], ["--format", "json"]]))
        argv += ["--out", out] + draw(st.sampled_from([[], ["--force"], ["--qk"] if command == "trace" else []]))
    elif command == "render":
        argv += [draw(st.sampled_from([str(TRACE_DIR[0]), "/nonexistent", str(MODEL_DIR[0]), ""])),
                 "--out", out] + draw(st.sampled_from([[], ["--view", "head"], ["--view", "model"], ["--view", "qk"]]))
        for flag in ("--layer", "--head", "--query", "--metric"):
            if draw(st.booleans()):
                argv += [flag, draw(JUNK_ARGS)]
    elif command == "heads":
        argv += ["--model", model] + draw(st.sampled_from([[], ["--length", "0"], ["--length", "4"], ["--top", "-1"],
                                                           ["--length", "100000"], ["--text-file", "/nonexistent"]]))
    else:
        argv += draw(st.sampled_from([[], ["--json"]]))
    return argv


TRACE_DIR: list = []  # a saved tiny trace, the starting point of (e)


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory, model_dir):
    folder = tmp_path_factory.mktemp("fuzz_saved") / "t"
    trace(MODELS["causal"], text=TEXT, qk=True).save(folder)
    TRACE_DIR[:] = [folder]
    yield folder
    TRACE_DIR.clear()


@pytest.mark.usefixtures("model_dir", "trace_dir")
@settings(FUZZ, max_examples=80)
@given(argv=cli_argvs())
@example(argv=["trace", "--model", "digits-vit", "--text", "hi", "--layers", ",", "--out", "/nonexistent/x"])
@example(argv=["trace", "--model", "x.gguf", "--text", "hi", "--max-tokens", "-5", "--out", "/tmp/fuzz-x"])
def test_cli_arguments_never_give_a_traceback(argv):
    try:
        rc, stderr = run_main(argv)
        assert_clean_exit(rc, stderr, argv)
    finally:
        out = argv[argv.index("--out") + 1] if "--out" in argv else None
        if out and "fuzz_cli_" in out:
            shutil.rmtree(Path(out).parent, ignore_errors=True)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=8,
)


@st.composite
def manifest_edits(draw, keys: list[str]):
    """A list of edits: (key, new value | DELETE); values of the right type half of the time."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.one_of(st.sampled_from(keys), st.text(max_size=6)))
        value = draw(st.one_of(st.just("<DELETE>"), JSON_VALUES, st.sampled_from([
            [], [0], [1, 1], [[1, 1]], [3, 4], [-1], ["a"], [True], 0, -1, 1, 2, 5, 10**9, "full", "vit", "causal",
            "sliding_window:w=1", {"type": "image"}, {"type": "text"}, None])))
        edits.append((key, value))
    return edits


@pytest.mark.usefixtures("trace_dir")
@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_edited_manifests_never_give_a_traceback(data):
    import json

    from models.trace import manifest_hash

    src = TRACE_DIR[0]
    meta = json.loads((src / "manifest.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="fuzz_manifest_"))
    try:
        folder = work / "t"
        shutil.copytree(src, folder)
        for key, value in data.draw(manifest_edits(sorted(meta)), "edits"):
            if value == "<DELETE>":
                meta.pop(key, None)
            else:
                meta[key] = value
        if data.draw(st.booleans(), "rehash"):  # a careful forger recomputes the hash; a careless one does not
            meta["manifest_sha256"] = manifest_hash(meta)
        (folder / "manifest.json").write_text(json.dumps(meta))
        view = data.draw(st.sampled_from(["model", "head", "neuron", "mask", "metrics", "qk", "image"]), "view")
        argv = ["render", str(folder), "--view", view, "--out", str(work / "o.json")]
        rc, stderr = run_main(argv)
        assert_clean_exit(rc, stderr, (argv, meta))
    finally:
        shutil.rmtree(work, ignore_errors=True)
