#!/usr/bin/env bash
# Everything this project checks and measures on a GPU machine, by stage, in one command:
#
#   bash benchmarks/gpu.sh build test sanitize kernels     # one call
#   bash benchmarks/gpu.sh build gsplat bench gs           # another
#
# build:    compile the extension for the GPU here (sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise)
#           and install the package (editable, no dependency resolution: the machine's torch stays)
# gsplat:   JIT-compile gsplat's CUDA sources (pure-Python wheel) so that its rasteriser can run
# cuda:     the CUDA kernels alone, quickly (no Triton compile): their GPU tests, then the decoder's
#           8K dense grid (official) and 4M queries (paper), cuda against torch, fp32 and bf16
# test:     tests/test_gpu.py with compiled Triton (not the interpreter)
# cpu:      the CPU suite against this machine's torch
# sanitize: the CUDA kernels' GPU tests under compute-sanitizer memcheck, racecheck and initcheck
# kernels:  benchmarks/decoder.py (8K dense grid), gather.py and sampler.py on the GPU
# bench:    infinidepth bench with the official-size (ViT-L) model at 1k, 4k, 8k and 16k
# gs:       the PyTorch rasteriser against gsplat (tests/test_gpu.py, benchmarks/gs_agreement.py)
#
# Results go to $RESULTS (default $OUT, else ./gpu_results; a relative path is taken from the folder
# the script is called from), every JSON named with the device kind, with the whole log in log.txt.
# The stages run from the repository root wherever the script is called from. Wheels of packages
# the machine lacks can travel in .whl/ (see the device tool's README); they are installed to
# /tmp/site first. A failing command is reported (FAILED in the log) and the later stages still run.
set -u
STAGES="build gsplat cuda test cpu sanitize kernels bench gs"
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
RESULTS=${RESULTS:-${OUT:-gpu_results}}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)   # absolute: the kernels and cuda stages run from benchmarks/
LOG="$RESULTS/log.txt"
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16} TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
PY=${PY:-python3}
TAG=${TAG:-$($PY -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())" 2>/dev/null || echo gpu)}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

step() { echo; echo "=== $* ($(date +%T))"; }
run() {  # run CMD... with its output in the log; a failure is reported, the script goes on
    "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || echo "FAILED (rc=$rc): $*" | tee -a "$LOG"
    return 0
}

stage_build() {
    step build | tee -a "$LOG"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee -a "$LOG"
    $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$LOG"
    # build unless an extension with the CUDA kernels is importable (one built on a CPU machine has none)
    if ! $PY -c "from infinidepth.ops import available_backends; assert 'cuda' in available_backends('cuda')" 2>/dev/null; then
        run $PY -m pip install -q --no-build-isolation --no-deps -e .
    fi
    run $PY -c "from infinidepth.ops import available_backends; print('backends on cuda:', available_backends('cuda'))"
}

stage_gsplat() {  # in the background: it compiles while the other stages run; gs waits for it
    step "gsplat (background)" | tee -a "$LOG"
    FAST_COMPILE=1 MAX_JOBS=12 nice -n 19 $PY -c "from gsplat.cuda._backend import _C; print('gsplat compiled:', _C is not None)" \
        >"$RESULTS/gsplat_build.txt" 2>&1 &
    GSPLAT_PID=$!
}

stage_test() {
    step "tests/test_gpu.py, compiled Triton" | tee -a "$LOG"
    # (the gsplat test runs in the gs stage, once gsplat's background build is done). The first run
    # compiles and autotunes Triton for every shape: minutes for the ViT-L rows (benchmarks/GPU.md);
    # the outer timeout keeps the later stages alive, since pytest-timeout cannot stop a compile.
    TRITON_INTERPRET=0 run timeout 420 $PY -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider -k "not gsplat"
}

stage_cuda() {
    step "CUDA kernels: tests, then decoder timings against torch" | tee -a "$LOG"
    run timeout 240 $PY -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider -k "cuda and not triton and not gsplat"
    cd benchmarks || return 0
    run $PY decoder.py --device cuda --decoder official --queries 33177600 --backends torch,cuda \
        --json "$RESULTS/decoder_official_8k_cuda_$TAG.json"
    for rows in 32 16; do  # smaller bf16 blocks than the launcher's pick (64 here): which is fastest?
        INFINIDEPTH_CUDA_MAX_ROWS=$rows run $PY decoder.py --device cuda --decoder official --queries 33177600 \
            --backends cuda --json "$RESULTS/decoder_official_8k_cuda_rows${rows}_$TAG.json"
    done
    run $PY decoder.py --device cuda --decoder paper --queries 4194304 --backends torch,cuda \
        --json "$RESULTS/decoder_paper_cuda_$TAG.json"
    cd ..
}

stage_cpu() {
    step "the CPU suite on this machine's torch" | tee -a "$LOG"
    run timeout 300 $PY -m pytest tests -q -x -p no:cacheprovider --ignore=tests/test_gpu.py
}

stage_sanitize() {
    # No caching allocator: an out-of-bounds access lands outside any allocation and is caught.
    local sel="cuda and not released_sizes and not streamed"
    for tool in memcheck:150 racecheck:120 initcheck:60; do
        step "compute-sanitizer --tool ${tool%:*}" | tee -a "$LOG"
        PYTORCH_NO_CUDA_MEMORY_CACHING=1 TRITON_INTERPRET=0 run timeout ${tool#*:} compute-sanitizer --tool ${tool%:*} \
            --error-exitcode 3 $PY -m pytest tests/test_gpu.py -q -x -p no:cacheprovider -k "$sel"
    done
}

stage_kernels() {
    step "kernel benchmarks" | tee -a "$LOG"
    cd benchmarks || return 0
    run $PY decoder.py --device cuda --decoder official --queries 33177600 --json "$RESULTS/decoder_official_8k_$TAG.json"
    run $PY decoder.py --device cuda --decoder paper --queries 4194304 --json "$RESULTS/decoder_paper_$TAG.json"
    run $PY decoder.py --device cuda --decoder official --queries 4194304 --with-grad --json "$RESULTS/decoder_official_grad_$TAG.json"
    run $PY gather.py --device cuda --queries 4194304 --json "$RESULTS/gather_$TAG.json"
    run $PY sampler.py --device cuda --size 768x1024 --points 2000000 --json "$RESULTS/sampler_$TAG.json"
    cd ..
}

stage_bench() {
    step "infinidepth bench, official-size model" | tee -a "$LOG"
    run $PY -m infinidepth.cli bench --preset official-large --sizes 1k,4k,8k --device cuda --repeats 3 --quiet \
        --json "$RESULTS/bench_official_$TAG.json"
    run $PY -m infinidepth.cli bench --preset official-large --sizes 16k --device cuda --quiet \
        --json "$RESULTS/bench_official_16k_$TAG.json"
    run $PY -m infinidepth.cli bench --preset official-large --sizes 8k,16k --device cuda --repeats 5 --precision bf16 \
        --paths torch,cuda,triton --quiet --json "$RESULTS/bench_official_bf16_$TAG.json"
    for f in "$RESULTS"/bench_official*_"$TAG".json; do
        [ -e "$f" ] || continue   # that run failed (reported above)
        $PY -c "import json, sys; from infinidepth.bench import format_rows; print(format_rows(json.load(open(sys.argv[1]))))" "$f" | tee -a "$LOG"
    done
}

stage_gs() {
    [ -n "${GSPLAT_PID:-}" ] && wait "$GSPLAT_PID"
    cat "$RESULTS/gsplat_build.txt" 2>/dev/null | tail -5 | tee -a "$LOG"
    step "PyTorch rasteriser vs gsplat" | tee -a "$LOG"
    TRITON_INTERPRET=0 run $PY -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider -k gsplat
    run $PY benchmarks/gs_agreement.py --json "$RESULTS/gs_agreement_$TAG.json"
}

for s in "$@"; do
    "stage_$s"
done
[ -n "${GSPLAT_PID:-}" ] && wait "$GSPLAT_PID" 2>/dev/null
step "done" | tee -a "$LOG"
grep -E "FAILED|passed|failed|ERROR SUMMARY|PSNR between" "$LOG" | tail -30
