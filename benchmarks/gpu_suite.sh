#!/usr/bin/env bash
# The GPU checks in one call, from the repository root of a bare GPU machine (H100/H200), in under 8 minutes:
# CUDA kernel tests, kernel benchmarks (fraction of copy bandwidth), backend benchmarks, the FLUX-architecture one-step
# run with transformer MFU, and the latency-regression check against this GPU's baseline (recorded if there is none).
#
#   bash benchmarks/gpu_suite.sh
#
# No internet is needed: what the machine lacks (diffusers, say) is installed from a folder of wheels carried beside
# the checkout (fill it on a dev machine with benchmarks/fill_wheels.sh), and flowsr itself by an editable install.
# Every step has a time limit and the whole run a deadline; a failing step does not stop the others, and the exit
# code is 1 if any failed. Without a CUDA GPU it stops at once with exit code 2.
#
#   FLOWSR_WHEELS     folder of wheels (default wheels/)
#   FLOWSR_RESULTS    where the JSON results, tables and logs go (default benchmarks/results), named by the device
#   FLOWSR_BASELINES  latency baselines (default benchmarks/baselines)
#   FLOWSR_DEADLINE   seconds for the whole run (default 450: with the last step's 15 s grace to stop, under 8 minutes)
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-$(command -v python || command -v python3)}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    echo "gpu_suite: no CUDA GPU here (torch.cuda.is_available() is not True for $PY); run it on a GPU machine" >&2
    exit 2
fi

WHEELS=${FLOWSR_WHEELS:-wheels}
RESULTS=${FLOWSR_RESULTS:-benchmarks/results}
BASELINES=${FLOWSR_BASELINES:-benchmarks/baselines}
DEADLINE=${FLOWSR_DEADLINE:-450}
# The kernel benchmarks at the largest latent only (a 16x2048^2 batch): the size where the fraction of copy
# bandwidth means something, and torch.compile of every op at every size would not fit the deadline.
KERNEL_SIZES=16x16x256x256
SUMMARY=()
FAILED=0

# --- Setup: modules the suite imports, from the wheels folder where missing; flowsr by an editable install.
declare -A DIST=([diffusers]=diffusers [PIL]=pillow [cv2]=opencv-python-headless [skimage]=scikit-image [safetensors]=safetensors
                 [onnx]=onnx [onnxscript]=onnxscript [onnxruntime]=onnxruntime [peft]=peft [triton]=triton
                 [pytest_benchmark]=pytest-benchmark)
absent() {  # the modules among the arguments that cannot be found (a dotted name imports its parents only)
    "$PY" -c 'import importlib.util, sys
def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        return False
print(" ".join(m for m in sys.argv[1:] if not found(m)))' "$@"
}
# Wheels go into the interpreter's environment where pip may write there, else into a folder put on PYTHONPATH (a
# read-only system environment); pip's output goes to a log named in the summary when an install fails.
SETUP_LOG=$(mktemp)
SITE=$(mktemp -d)
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
install_wheel() {
    [ -d "$WHEELS" ] || return 1
    timeout 120 "$PY" -m pip install --no-index --find-links "$WHEELS" "$1" >>"$SETUP_LOG" 2>&1 && return 0
    timeout 120 "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" --target "$SITE" "$1" >>"$SETUP_LOG" 2>&1
}
installed=() missing=()
for module in $(absent "${!DIST[@]}"); do
    if install_wheel "${DIST[$module]}" && [ -z "$(absent "$module")" ]; then
        installed+=("${DIST[$module]}")
    else
        missing+=("${DIST[$module]}")
    fi
done
flowsr="importable"
if [ -n "$(absent flowsr.core)" ]; then
    if timeout 120 "$PY" -m pip install --no-deps --no-build-isolation -e . >>"$SETUP_LOG" 2>&1 && [ -z "$(absent flowsr.core)" ]; then
        flowsr="editable install"
    else  # pip could not install it: flowsr.<part> from a folder of links to the package directories
        shim=$(mktemp -d) && mkdir "$shim/flowsr"
        for part in core kernels export runtime training; do ln -s "$PWD/$part" "$shim/flowsr/$part"; done
        export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
        flowsr="on PYTHONPATH from $shim (the editable install failed)"
    fi
fi
# DEV names the result files (the device), KEY the baseline (device and versions): see benchmarks/device_key.py.
read -r DEV KEY < <("$PY" -c 'import sys; sys.path.insert(0, "benchmarks"); import device_key as d
m = d.this_machine(); print(d.slug(m["device"]), m["key"])')
DEV=${DEV:-gpu} KEY=${KEY:-unknown}
mkdir -p "$RESULTS/$DEV-logs"
mv "$SETUP_LOG" "$RESULTS/$DEV-logs/setup.log"
rm -f "$RESULTS/$DEV"-{kernels,backends,flux,regress}.{json,md} "$RESULTS/$DEV-kernel-tests.xml"  # no stale results in the tables
SUMMARY+=("setup: $DEV, flowsr $flowsr; installed from $WHEELS: ${installed[*]:-nothing}; missing: ${missing[*]:-nothing}${missing[*]:+ (see $RESULTS/$DEV-logs/setup.log)}")
echo "gpu_suite: ${SUMMARY[-1]}"

# step NAME SECONDS COMMAND...: run COMMAND under min(SECONDS, time left), output to the terminal and to a log,
# then one summary line: the verdict, the time taken and the last line pytest or regress.py printed.
step() {
    local name=$1 budget=$2 log="$RESULTS/$DEV-logs/$1.log"
    shift 2
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 20 ]; then
        SUMMARY+=("$(printf '%-15s %s' "$name" "NOT RUN: the ${DEADLINE}s deadline is reached")") && FAILED=1
        return
    fi
    [ "$budget" -gt "$left" ] && budget=$left
    local start=$SECONDS
    echo "gpu_suite: $name (at most ${budget}s): $*"
    timeout -s INT -k 15 "$budget" "$@" 2>&1 | tee "$log"
    local code=${PIPESTATUS[0]} verdict=ok
    if [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then
        verdict="TIMED OUT after ${budget}s"
    elif [ "$code" -ne 0 ]; then
        verdict="FAILED (exit $code)"
    fi
    [ "$code" -eq 0 ] || FAILED=1
    local last
    last=$(grep -E '^regress: |^=* ?[0-9]+ (passed|failed|skipped|deselected|errors?)|no tests ran' "$log" | tail -n 1)
    last=$(sed -E 's/^=+ | =+$//g' <<<"$last")
    SUMMARY+=("$(printf '%-15s %-24s %4ss  %s' "$name" "$verdict" "$((SECONDS - start))" "$last")")
}

# report NAME SCRIPT JSON: a Markdown table of a benchmark run beside its JSON (nothing if the run wrote none).
report() {
    [ -s "$3" ] || return 0
    "$PY" "benchmarks/$2" "$3" >"${3%.json}.md" 2>>"$RESULTS/$DEV-logs/$1.log" && return 0
    rm -f "${3%.json}.md"
    SUMMARY+=("$(printf '%-15s %s' "$1" "report FAILED: benchmarks/$2 $3 (see $RESULTS/$DEV-logs/$1.log)")")
    FAILED=1
}

BENCH=(-m pytest -q -p no:cacheprovider --benchmark-only)
step kernel-tests 60 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_kernel_euler_update.py tests/test_kernel_flow_interpolation.py \
    tests/test_kernel_spline.py --junitxml="$RESULTS/$DEV-kernel-tests.xml"
step kernels 80 "$PY" "${BENCH[@]}" benchmarks/test_kernels.py -k "$KERNEL_SIZES" --benchmark-max-time=0.25 \
    --benchmark-json="$RESULTS/$DEV-kernels.json"
report kernels kernels_report.py "$RESULTS/$DEV-kernels.json"
step backends 100 "$PY" "${BENCH[@]}" benchmarks/test_backends.py --benchmark-json="$RESULTS/$DEV-backends.json"
report backends backends_report.py "$RESULTS/$DEV-backends.json"
step flux-scale 140 "$PY" "${BENCH[@]}" benchmarks/test_flux_scale.py --benchmark-json="$RESULTS/$DEV-flux.json"
report flux-scale backends_report.py "$RESULTS/$DEV-flux.json"
if ls "$BASELINES/$KEY"/*/*_baseline.json >/dev/null 2>&1; then save=(); else save=(--save); fi  # record this GPU's first baseline
step latency 90 "$PY" benchmarks/regress.py "${save[@]}" --baselines "$BASELINES" --json "$RESULTS/$DEV-regress.json" \
    -q -p no:cacheprovider

echo
echo "gpu_suite: ${SECONDS}s in all; results, tables and logs in $RESULTS ($DEV-*.json, $DEV-*.md, $DEV-logs/);" \
    "baselines in $BASELINES/$KEY"
printf '  %s\n' "${SUMMARY[@]}"
exit "$FAILED"
