#!/usr/bin/env bash
# Everything this project checks and measures on a GPU machine, by stage, in one command:
#
#   GPU_BUDGET_S=560 bash benchmarks/gpu.sh build gsplat cuda gs test sanitize   # benchmarks/GPU.md, "Next GPU session"
#
# Stages (times for a lent H100/H200 with 16 cores; benchmarks/GPU.md has the plan that fits the lease):
# build:    compile the extension for the GPU here (sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise)
#           and install the package (editable, no dependency resolution: the machine's torch stays); ~1-2 min
# gsplat:   JIT-compile gsplat's CUDA sources in the background (gs waits for it); needs gsplat, which
#           the machine lacks: carry its wheel in .whl/ (benchmarks/GPU.md); ~1.5 min, beside the next stages
# cuda:     the CUDA kernels alone (no Triton compile): their GPU tests, then the decoder's 8K dense grid
#           (official, blocks of up to 64, 32 and 16 rows) and 4M queries (paper), cuda against torch,
#           fp32 and bf16; ~3-4.5 min
# test:     tests/test_gpu.py with compiled Triton (only the Triton tests when cuda ran before it),
#           in 8 workers when pytest-xdist is there; ~1.5-3 min, compiling
# gs:       the PyTorch rasteriser against gsplat (tests/test_gpu.py, benchmarks/gs_agreement.py); ~1 min
# sanitize: the CUDA kernels' GPU tests under compute-sanitizer memcheck, racecheck and initcheck; <= 5.5 min
# kernels:  benchmarks/decoder.py (8K dense grid, every backend), gather.py and sampler.py; ~6-8 min
# bench:    infinidepth bench with the official-size (ViT-L) model at 1k, 4k, 8k and 16k; ~6+ min
# cpu:      the CPU suite against this machine's torch; <= 5 min
#
# Before any stage, one check of what the stages need (torch seeing a GPU, nvcc, triton, pytest,
# gsplat, compute-sanitizer): a missing essential stops the script at once (exit 3), with one line
# each; a stage whose own tool is missing is dropped with a SKIPPED line and the others run.
#
# Time: GPU_BUDGET_S=N (seconds) makes the script end by itself within N seconds of starting: each
# command gets at most what is left (and its own cap), and a command with under 20 s left is
# SKIPPED. Set it 30-40 s under the device call's timeout_s, so that the summary gets printed.
#
# Results: every JSON goes to $RESULTS (default benchmarks/results; a relative path is taken from the
# folder the script is called from), named with the device (TAG: h100, h200). With $OUT set (the
# device tool), the log is written live to $OUT/gpu_log_$TAG.txt and, after every command, the JSON
# files this run has written so far (and the pytest stages' junit XML, pytest_<stage>_$TAG.xml, with
# each test's time) are packed into $OUT/gpu_results_$TAG.tar: two files, since the
# tool brings back at most 8, and whatever finished is in them even when a later command fails or
# the call is cut off. Unpack here with `tar -xf .../gpu_results_h100.tar -C benchmarks/results`.
# A failing command is reported (FAILED in the log) and the later stages still run. Wheels of packages
# the machine lacks can travel in .whl/ (see the device tool's README); they are installed to
# /tmp/site first.
# $PY, $XDIST and $TIMEOUT are split into words on purpose (PY="python3 -X dev" works).
# shellcheck disable=SC2086
set -u
STAGES="build gsplat cuda test gs sanitize kernels bench cpu"
if [ $# = 0 ]; then
    echo "usage: bash benchmarks/gpu.sh STAGE... (stages: $STAGES)" >&2
    exit 2
fi
for s in "$@"; do
    case " $STAGES " in
        *" $s "*) ;;
        *) echo "gpu.sh: unknown stage '$s' (stages: $STAGES)" >&2; exit 2 ;;
    esac
done
case "${GPU_BUDGET_S:-864000}" in
    ''|*[!0-9]*) echo "gpu.sh: GPU_BUDGET_S must be whole seconds, got '${GPU_BUDGET_S}'" >&2; exit 2 ;;
esac
START=$(date +%s)
END=$(( START + ${GPU_BUDGET_S:-864000} ))
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${RESULTS:-$ROOT/benchmarks/results}
mkdir -p "$RESULTS" || exit 2
RESULTS=$(cd "$RESULTS" && pwd)   # absolute, from the caller's folder
cd "$ROOT" || exit 2
if [ -z "${CUDA_HOME:-}" ]; then   # the toolkit's folder: its bin/nvcc, not a wrapper on PATH
    CUDA_HOME=/usr/local/cuda
    if [ ! -x "$CUDA_HOME/bin/nvcc" ] && command -v nvcc >/dev/null 2>&1; then
        CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    fi
fi
export PYTHONUNBUFFERED=1 CUDA_HOME TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16} TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
PY=${PY:-python3}
WHEELS=""
WHEEL_DIR=${WHEEL_DIR:-.whl}   # (the tests point it elsewhere: a checkout that holds .whl/ must not change them)
if [ -d "$WHEEL_DIR" ] && ls "$WHEEL_DIR"/*.whl >/dev/null 2>&1; then
    if $PY -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$WHEEL_DIR"/*.whl; then
        WHEELS="installed $(cd "$WHEEL_DIR" && echo *.whl)"
    else
        WHEELS="FAILED to install the wheels in $WHEEL_DIR/"
    fi
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
TAG=${TAG:-$($PY -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())" 2>/dev/null || echo gpu)}
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT" && LOG="$OUT/gpu_log_$TAG.txt"
else
    LOG="$RESULTS/gpu_log_$TAG.txt"
fi
MARK=$(mktemp)   # the JSON files newer than this are this run's
: >"$LOG"

left() { echo $(( END - $(date +%s) )); }
say() { echo "$*" | tee -a "$LOG"; }
step() { echo; echo "=== $* ($(date +%T), $(( $(date +%s) - START )) s in)"; }

save() {  # this run's JSON (and pytest's XML) as one tar under $OUT, replaced atomically after every command
    [ -n "${OUT:-}" ] || return 0
    local files
    files=$(cd "$RESULTS" && find . -maxdepth 1 -type f \( -name '*.json' -o -name '*.xml' \) -newer "$MARK" | sort)
    [ -n "$files" ] || return 0
    # shellcheck disable=SC2086  # one name per word: the scripts' names have no spaces
    (cd "$RESULTS" && tar -cf "$OUT/.gpu_results.tar.part" $files) && mv "$OUT/.gpu_results.tar.part" "$OUT/gpu_results_$TAG.tar"
}

run() {  # run [-t CAP] CMD...: output into the log, at most CAP seconds and never past GPU_BUDGET_S; rc in LAST_RC
    local cap=864000 t rc
    if [ "$1" = -t ]; then cap=$2; shift 2; fi
    t=$(left)
    [ "$cap" -lt "$t" ] && t=$cap
    LAST_RC=skipped
    if [ "$t" -lt 20 ]; then
        say "SKIPPED (${t}s of the time budget left): $*"
        return 0
    fi
    timeout -k 10 "$t" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    LAST_RC=$rc
    [ "$rc" = 124 ] && say "TIMED OUT after ${t}s: $*"
    [ "$rc" = 0 ] || say "FAILED (rc=$rc): $*"
    save
    return 0
}

wants() { case " $SELECTED " in *" $1 "*) return 0 ;; esac; return 1; }
drop() {  # drop STAGE WHY: the stage will not run
    wants "$1" || return 0
    SELECTED=$(echo " $SELECTED " | sed "s/ $1 / /; s/^ *//; s/ *$//")
    say "SKIPPED stage $1: $2"
}

preflight() {  # what the selected stages need, checked in seconds before any of them runs
    step "preflight: $SELECTED" | tee -a "$LOG"
    [ -n "$WHEELS" ] && say "wheels: $WHEELS"
    local fatal=0 have
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | tee -a "$LOG"
    have=$($PY - <<'EOF' 2>&1
import importlib.util as u
names = ["torch", "triton", "pytest", "xdist", "pytest_timeout", "gsplat", "setuptools", "ninja", "numpy", "scipy"]
print(" ".join(n for n in names if u.find_spec(n) is not None))
try:
    import torch
    print("cuda_ok" if torch.cuda.is_available() else "cuda_no", "torch", torch.__version__,
          torch.cuda.get_device_name() if torch.cuda.is_available() else "")
except Exception as e:  # noqa: BLE001
    print("cuda_no", repr(e))
EOF
    )
    have=$(echo "$have" | tr '\n' ' ')
    say "python: $(command -v "$PY") has: $have"
    has() { case " $have " in *" $1 "*) return 0 ;; esac; return 1; }
    if ! has cuda_ok; then say "MISSING: $PY has no torch that sees a CUDA GPU"; fatal=1; fi
    if wants build; then
        if [ -x "$CUDA_HOME/bin/nvcc" ]; then
            say "nvcc: $("$CUDA_HOME/bin/nvcc" --version 2>&1 | tail -1)"
        else
            say "MISSING: no nvcc at CUDA_HOME=$CUDA_HOME (set CUDA_HOME)"
            fatal=1
        fi
        if ! has setuptools || ! has ninja; then say "MISSING: setuptools or ninja (the build)"; fatal=1; fi
    fi
    for s in test kernels bench; do
        wants "$s" && ! has triton && { say "MISSING: triton (stage $s)"; fatal=1; }
    done
    for s in cuda test gs sanitize cpu; do
        wants "$s" && ! has pytest && { say "MISSING: pytest (stage $s)"; fatal=1; }
    done
    if ! has gsplat; then
        drop gsplat "gsplat is not installed: carry its wheel (.whl/gsplat-1.5.3-py3-none-any.whl, benchmarks/GPU.md)"
        drop gs "gsplat is not installed: carry its wheel (.whl/gsplat-1.5.3-py3-none-any.whl, benchmarks/GPU.md)"
    fi
    SANITIZER=$(command -v compute-sanitizer || true)
    for c in "$CUDA_HOME/bin/compute-sanitizer" "$CUDA_HOME/compute-sanitizer/compute-sanitizer"; do
        [ -z "$SANITIZER" ] && [ -x "$c" ] && SANITIZER=$c
    done
    [ -z "$SANITIZER" ] && drop sanitize "compute-sanitizer is neither on PATH nor under $CUDA_HOME"
    XDIST=""
    has xdist && XDIST="-n 8"
    TIMEOUT=""
    has pytest_timeout && TIMEOUT="--timeout 240"
    if [ "$fatal" = 1 ]; then
        say "gpu.sh: stopping before any stage: a selected stage needs what is MISSING above"
        exit 3
    fi
    if [ -n "${GPU_BUDGET_S:-}" ]; then say "running: $SELECTED ($(left) s of GPU_BUDGET_S left)"; else say "running: $SELECTED"; fi
}

stage_build() {
    step build | tee -a "$LOG"
    $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" 2>&1 | tee -a "$LOG"
    # build unless an extension with the CUDA kernels is importable (one built on a CPU machine has none)
    if ! $PY -c "from infinidepth.ops import available_backends; assert 'cuda' in available_backends('cuda')" 2>/dev/null; then
        # no index: nothing outside the machine can be reached, and nothing needs to be
        run -t 420 $PY -m pip install -q --disable-pip-version-check --no-index --no-build-isolation --no-deps -e .
    fi
    local backends   # the verdict is a word the source does not hold, so that no traceback quoting it passes
    backends=$($PY -c "from infinidepth.ops import available_backends as a; b = a('cuda'); print(b, 'with' * ('cuda' in b) + '-cuda-kernels')" 2>&1)
    say "backends on cuda: $backends"
    if [[ "$backends" != *with-cuda-kernels* ]]; then
        say "FAILED: the extension has no CUDA kernels (build above); the stages that need them are dropped"
        drop cuda "no CUDA kernels in the extension"
        drop sanitize "no CUDA kernels in the extension"
    fi
}

stage_gsplat() {  # in the background: it compiles while the other stages run; gs waits for it
    step "gsplat (background)" | tee -a "$LOG"
    FAST_COMPILE=1 MAX_JOBS=8 nice -n 19 timeout 420 $PY -c "from gsplat.cuda._backend import _C; print('gsplat compiled:', _C is not None)" \
        >/tmp/gsplat_build.txt 2>&1 &
    GSPLAT_PID=$!
}

stage_cuda() {
    step "CUDA kernels: tests, then decoder timings against torch" | tee -a "$LOG"
    TRITON_INTERPRET=0 run -t 180 $PY -m pytest tests/test_gpu.py "$EXPORT_TEST" -v -rs -p no:cacheprovider $TIMEOUT \
        --junitxml "$RESULTS/pytest_cuda_$TAG.xml" -k "cuda and not triton and not gsplat"
    # pytest ran to its end (passed: 0, some failed: 1): the test stage need not run these again
    case "$LAST_RC" in 0|1) RAN_CUDA_TESTS=1 ;; esac
    # 64 rows per block is the launcher's pick here; 32 and 16 in the same process (one baseline): which is fastest?
    run -t 240 $PY benchmarks/decoder.py --device cuda --decoder official --queries 33177600 --backends torch,cuda \
        --cuda-rows 32,16 --json "$RESULTS/decoder_official_8k_cuda_$TAG.json"
    run -t 150 $PY benchmarks/decoder.py --device cuda --decoder paper --queries 4194304 --backends torch,cuda \
        --json "$RESULTS/decoder_paper_cuda_$TAG.json"
}

stage_test() {
    local sel="not gsplat" export_test=$EXPORT_TEST
    if [ "${RAN_CUDA_TESTS:-0}" = 1 ]; then sel="triton and not gsplat"; export_test=""; fi   # the cuda stage ran the others
    step "tests/test_gpu.py ($sel), compiled Triton" | tee -a "$LOG"
    # The first run compiles Triton for every shape (the ViT-L rows and tangents: minutes, benchmarks/GPU.md);
    # parallel workers compile side by side, and -v names each test as it ends, also when cut off.
    TRITON_INTERPRET=0 run -t 360 $PY -m pytest tests/test_gpu.py $export_test -v -rs -p no:cacheprovider $XDIST $TIMEOUT \
        --junitxml "$RESULTS/pytest_test_$TAG.xml" -k "$sel"
}

stage_cpu() {
    step "the CPU suite on this machine's torch" | tee -a "$LOG"
    run -t 300 $PY -m pytest tests -q -x -p no:cacheprovider --ignore=tests/test_gpu.py --junitxml "$RESULTS/pytest_cpu_$TAG.xml"
}

stage_sanitize() {
    # No caching allocator: an out-of-bounds access lands outside any allocation and is caught.
    local sel="cuda and not triton and not gsplat and not released_sizes and not streamed" tool
    for tool in memcheck:150 racecheck:120 initcheck:60; do
        step "compute-sanitizer --tool ${tool%:*}" | tee -a "$LOG"
        PYTORCH_NO_CUDA_MEMORY_CACHING=1 TRITON_INTERPRET=0 run -t "${tool#*:}" "$SANITIZER" --tool "${tool%:*}" \
            --error-exitcode 3 $PY -m pytest tests/test_gpu.py -v -x -p no:cacheprovider \
            --junitxml "$RESULTS/pytest_${tool%:*}_$TAG.xml" -k "$sel"
    done
}

stage_kernels() {
    step "kernel benchmarks" | tee -a "$LOG"
    run -t 300 $PY benchmarks/decoder.py --device cuda --decoder official --queries 33177600 --json "$RESULTS/decoder_official_8k_$TAG.json"
    run -t 240 $PY benchmarks/decoder.py --device cuda --decoder paper --queries 4194304 --json "$RESULTS/decoder_paper_$TAG.json"
    run -t 180 $PY benchmarks/decoder.py --device cuda --decoder official --queries 4194304 --with-grad --json "$RESULTS/decoder_official_grad_$TAG.json"
    run -t 90 $PY benchmarks/gather.py --device cuda --queries 4194304 --json "$RESULTS/gather_$TAG.json"
    run -t 120 $PY benchmarks/sampler.py --device cuda --size 768x1024 --points 2000000 --json "$RESULTS/sampler_$TAG.json"
}

stage_bench() {
    step "infinidepth bench, official-size model" | tee -a "$LOG"
    run $PY -m infinidepth.cli bench --preset official-large --sizes 1k,4k,8k --device cuda --repeats 3 --quiet \
        --json "$RESULTS/bench_official_$TAG.json"
    run $PY -m infinidepth.cli bench --preset official-large --sizes 16k --device cuda --quiet \
        --json "$RESULTS/bench_official_16k_$TAG.json"
    run $PY -m infinidepth.cli bench --preset official-large --sizes 8k,16k --device cuda --repeats 5 --precision bf16 \
        --paths released-style,torch,cuda,triton --quiet --json "$RESULTS/bench_official_bf16_$TAG.json"
    for f in "$RESULTS"/bench_official*_"$TAG".json; do
        [ "$f" -nt "$MARK" ] || continue   # that run failed (reported above), or an older file
        $PY -c "import json, sys; from infinidepth.bench import format_rows; print(format_rows(json.load(open(sys.argv[1]))))" "$f" | tee -a "$LOG"
    done
}

stage_gs() {
    if [ -n "${GSPLAT_PID:-}" ]; then   # wait for the background build, but not past the budget
        while kill -0 "$GSPLAT_PID" 2>/dev/null && [ "$(left)" -gt 90 ]; do sleep 2; done
        kill -0 "$GSPLAT_PID" 2>/dev/null || GSPLAT_PID=""
        tail -5 /tmp/gsplat_build.txt | tee -a "$LOG"
    fi
    step "PyTorch rasteriser vs gsplat" | tee -a "$LOG"
    TRITON_INTERPRET=0 run -t 240 $PY -m pytest tests/test_gpu.py -v -rs -p no:cacheprovider \
        --junitxml "$RESULTS/pytest_gs_$TAG.xml" -k gsplat
    run -t 180 $PY benchmarks/gs_agreement.py --json "$RESULTS/gs_agreement_$TAG.json"
}

SELECTED="$*"
# the one GPU test outside tests/test_gpu.py: an exported predict holding the cuda kernel
EXPORT_TEST=tests/test_export.py::test_exported_predict_on_a_gpu_holds_the_cuda_kernel
SANITIZER="" XDIST="" TIMEOUT=""
preflight
for s in $SELECTED; do
    wants "$s" || continue   # dropped on the way (a failed build)
    "stage_$s"
done
if [ -n "${GSPLAT_PID:-}" ] && kill -0 "$GSPLAT_PID" 2>/dev/null; then   # gsplat's build, still going: stop it
    kill "$GSPLAT_PID" 2>/dev/null
    wait "$GSPLAT_PID" 2>/dev/null
fi
step "done" | tee -a "$LOG"
save
say "this run's files in $RESULTS: $(cd "$RESULTS" && find . -maxdepth 1 -type f \( -name '*.json' -o -name '*.xml' \) -newer "$MARK" | sort | tr '\n' ' ')"
# the rows of this run's reports, short (the device tool's reply shows the end of the output)
$PY - "$RESULTS" "$MARK" <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, sys
import xml.etree.ElementTree as ET
folder, mark = sys.argv[1], os.path.getmtime(sys.argv[2])
for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if not name.endswith((".json", ".xml")) or os.path.getmtime(path) <= mark:
        continue
    try:
        if name.endswith(".xml"):  # pytest's junit report: counts and the slowest tests
            cases = ET.parse(path).getroot().iter("testcase")
            rows = [(float(c.get("time", 0)), c.get("name"), [x.tag for x in c]) for c in cases]
            bad = [n for _, n, tags in rows if "failure" in tags or "error" in tags]
            print(f"{name}: {len(rows)} tests, {len(bad)} failed, {sum('skipped' in t for *_, t in rows)} skipped"
                  + (f": {', '.join(bad)}" if bad else ""))
            print("  slowest: " + ", ".join(f"{n} {t:.0f} s" for t, n, _ in sorted(rows, reverse=True)[:4]))
            continue
        report = json.load(open(path))
        print(f"{name} [{report.get('device')}]")
        for r in report.get("results", []):
            if "queries_per_s" in r:
                print(f"  {r['backend']:40s} {r['dtype']:7s} {r['queries_per_s']:10.4g} q/s "
                      f"{r['speedup_vs_baseline']:6.2f}x  max rel err {r['max_rel_err']:.2e}")
        if "min_psnr" in report:
            print(f"  PSNR against gsplat: min {report['min_psnr']:.2f} dB, median {report['median_psnr']:.2f} dB")
    except Exception as e:  # noqa: BLE001  (a summary line, never a reason to stop)
        print(f"{name}: {e!r}")
EOF
rm -f "$MARK"
grep -E "FAILED|TIMED OUT|SKIPPED|MISSING|backends on cuda|passed|failed|ERROR SUMMARY|PSNR between" "$LOG" | tail -40
