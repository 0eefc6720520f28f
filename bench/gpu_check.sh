#!/usr/bin/env bash
# The GPU check of issue 17, one command on a fresh GPU machine, inside 8 minutes:
#   1. tests    the gpu-marked tests (pytest -m gpu)               -> gpu_<card>_tests.json
#   2. triton   bench/bench_triton.py (what `attnscope bench triton` runs), --quick unless --full
#                                                                  -> gpu_<card>_triton.json
#   3. trace    bench/gpu_trace.py: a 32k-token trace of a random-initialised SmolLM2-135M-shaped model,
#               every layer's maps                                 -> gpu_<card>_trace32k.json
# written under $OUT when set, else bench/results/, with the parts' output in gpu_<card>_check.log.
# Only torch, triton, transformers and numpy are needed; wheels carried in bench/wheels/ (or .whl/) are
# installed first, to a folder of their own, without the network.
#
#   bench/gpu_check.sh [--dry] [--full]
# --dry (automatic without CUDA) runs what needs no CUDA: collects the gpu tests, compiles two kernel forms
# for sm_90, runs every benchmark section once on CPU under the Triton interpreter, and a tiny CPU trace of
# the same model; it writes dry_<part>.json under $OUT, else a temporary folder, and says in one line each
# part it skipped and why. Each part has a time limit (seconds): GPU_CHECK_TESTS_S, GPU_CHECK_TRITON_S
# (the benchmark also stops starting new shapes at GPU_CHECK_BUDGET_S), GPU_CHECK_TRACE_S.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0 FULL=0
for arg in "$@"; do
    case $arg in
        --dry) DRY=1 ;;
        --full) FULL=1 ;;
        *) echo "gpu_check: unknown option $arg (use --dry or --full)" >&2; exit 2 ;;
    esac
done
PY=python3
[ -x .venv/bin/python ] && PY=$ROOT/.venv/bin/python
export PYTHONPATH=$ROOT HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

for wheels in bench/wheels .whl; do
    if ls "$wheels"/*.whl >/dev/null 2>&1; then
        if $PY -m pip install -q --no-index --no-deps --no-compile --find-links "$wheels" --target /tmp/attnscope-site \
            "$wheels"/*.whl; then
            export PYTHONPATH=$ROOT:/tmp/attnscope-site
            echo "gpu_check: installed the wheels of $wheels"
        else
            echo "gpu_check: the wheels of $wheels did not install; going on with what is here"
        fi
    fi
done

if [ $DRY = 0 ] && ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device here: dry mode"
    DRY=1
fi
if [ $DRY = 1 ]; then
    DEST=${OUT:-$(mktemp -d)}
    PREFIX=dry
else
    DEST=${OUT:-$ROOT/bench/results}
    PREFIX=gpu_$($PY -c "import torch; from kernels.gpu_table import card_slug; print(card_slug(torch.cuda.get_device_name()))")
fi
mkdir -p "$DEST"
LOG=$DEST/${PREFIX}_check.log
: >"$LOG"
FAILED=0

# run PART LIMIT CMD...: the command under a time limit (SIGINT first, so pytest and the benchmark still
# write what they have), its output to the log; one line saying how it ended
run() {
    local part=$1 limit=$2 t0 rc
    shift 2
    t0=$(date +%s)
    echo "== $part: $*" >>"$LOG"
    timeout -s INT -k 20 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    if [ $rc = 124 ] || [ $rc = 130 ]; then
        echo "gpu_check: $part stopped at its limit of $limit s (what it wrote is kept)"
    elif [ $rc != 0 ]; then
        echo "gpu_check: $part failed (exit $rc; see $LOG)"
    else
        echo "gpu_check: $part done in $(($(date +%s) - t0)) s"
    fi
    [ $rc = 0 ] || FAILED=1
}

# tests: the junit XML becomes the JSON summary
summarise_junit() {  # XML JSON MODE
    $PY - "$@" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
xml_path, json_path, mode = sys.argv[1:4]
report = {"part": "tests", "mode": mode}
try:
    cases = list(ET.parse(xml_path).getroot().iter("testcase"))
except (OSError, ET.ParseError) as exc:
    report["error"] = f"no test report ({type(exc).__name__})"
    cases = []
def outcome(case):
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            return tag
    return "passed"
results = [{"test": f"{c.get('classname')}::{c.get('name')}", "outcome": outcome(c), "s": float(c.get("time", 0))}
           for c in cases]
for name in ("passed", "failure", "error", "skipped"):
    report[name] = sum(r["outcome"] == name for r in results)
report["seconds"] = round(sum(r["s"] for r in results), 1)
report["not_passed"] = [r for r in results if r["outcome"] != "passed"]
json.dump(report, open(json_path, "w"), indent=1)
print(f"gpu_check: tests {report['passed']} passed, {report['failure']} failed, {report['error']} errors, "
      f"{report['skipped']} skipped -> {json_path}")
EOF
}

if [ $DRY = 1 ]; then
    echo "gpu_check: skipped running the gpu tests: no CUDA (collected only)"
    run tests 120 $PY -m pytest -q -p no:cacheprovider --collect-only -m gpu tests/kernels \
        --junitxml="$DEST/dry_tests.xml"
    $PY - "$LOG" "$DEST/dry_tests.json" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
found = re.findall(r"(\d+)(?:/\d+)? tests? collected", text)
ids = [line for line in text.splitlines() if "::" in line and line.startswith("tests/")]
report = {"part": "tests", "mode": "dry", "collected": int(found[-1]) if found else 0, "tests": ids,
          "skipped": "no CUDA: the gpu tests were collected, not run"}
json.dump(report, open(sys.argv[2], "w"), indent=1)
print(f"gpu_check: {report['collected']} gpu tests collected -> {sys.argv[2]}")
EOF
    rm -f "$DEST/dry_tests.xml"

    echo "gpu_check: skipped timing the kernels: no CUDA (sm_90 compile of two forms and a CPU run of every section instead)"
    run compile 300 $PY -m bench.bench_triton --compile --form full --form "sliding_window:w=64,sinks=4"
    run smoke 300 $PY -m bench.bench_triton --smoke
    $PY - "$LOG" "$DEST/dry_triton.json" <<'EOF'
import json, sys
docs, decoder, text = [], json.JSONDecoder(), open(sys.argv[1]).read()
i = 0
while (i := text.find("{", i)) >= 0:  # the JSON objects the two runs printed
    try:
        obj, end = decoder.raw_decode(text, i)
    except ValueError:
        i += 1
        continue
    docs.append(obj)
    i = end
by = {d.get("bench"): d for d in docs if isinstance(d, dict)}
report = {"part": "triton", "mode": "dry", "skipped": "no CUDA: nothing timed",
          "compile_sm90": by.get("triton_compile_sm90"), "smoke": by.get("triton_smoke")}
json.dump(report, open(sys.argv[2], "w"), indent=1)
ok = report["compile_sm90"] and not report["compile_sm90"]["failed"] and report["smoke"]
print(f"gpu_check: sm_90 compile and CPU sections {'ok' if ok else 'INCOMPLETE'} -> {sys.argv[2]}")
sys.exit(0 if ok else 1)
EOF
    [ $? = 0 ] || FAILED=1

    echo "gpu_check: skipped the 32k-token trace: no CUDA (64 tokens on CPU instead)"
    run trace 300 $PY -m bench.gpu_trace --tokens 64 --out "$DEST"
    [ -f "$DEST/cpu_trace64.json" ] && mv "$DEST/cpu_trace64.json" "$DEST/dry_trace.json"
else
    run tests "${GPU_CHECK_TESTS_S:-200}" $PY -m pytest -q -p no:cacheprovider -m gpu tests/kernels -rfE \
        --junitxml="$DEST/$PREFIX.junit.xml"
    summarise_junit "$DEST/$PREFIX.junit.xml" "$DEST/${PREFIX}_tests.json" gpu
    rm -f "$DEST/$PREFIX.junit.xml"
    QUICK=--quick
    [ $FULL = 1 ] && QUICK=
    run triton "${GPU_CHECK_TRITON_S:-150}" $PY -m bench.bench_triton $QUICK --budget "${GPU_CHECK_BUDGET_S:-90}" \
        --out "$DEST"
    run trace "${GPU_CHECK_TRACE_S:-110}" $PY -m bench.gpu_trace --tokens 32768 --out "$DEST"
fi
echo "gpu_check: wrote $(cd "$DEST" && ls | tr '\n' ' ')in $DEST"
exit $FAILED
