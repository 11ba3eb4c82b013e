#!/usr/bin/env bash
# The GPU check (experiments/gpu/README.md): is there a CUDA device, install what is missing, run check.py.
#
#   experiments/gpu/check.sh [--dry-run] [--budget SECONDS] [--work DIR] [--wheels DIR] [OUT_DIR]
#
# OUT_DIR (default $OUT, else outputs/gpu_check) receives gpu_check.json and gpu_check.md.
# --wheels DIR: a machine that reaches no package registry; instead of `make install`, the wheels in DIR
#   (experiments/gpu/wheels.sh fetches them) go into a folder beside the machine's own python3 and torch.
# Exit codes: 0 every check passed; 1 a check failed (gpu_check.json says which); 2 a usage or install error;
# 3 no CUDA device (without --dry-run): said within a second, before anything is installed or imported.
set -uo pipefail
started=$(date +%s.%N)
repo=$(cd "$(dirname "$0")/../.." && pwd)  # paths given on the command line stay relative to the caller's folder

dry_run=0 wheels="" args=()
while (($#)); do
    case $1 in
        --dry-run) dry_run=1 args+=("$1") ;;
        --wheels) wheels=${2:?--wheels needs a folder} && shift ;;
        --wheels=*) wheels=${1#--wheels=} ;;
        -h | --help) sed -n '2,10p' "$0" && exit 0 ;;
        *) args+=("$1") ;;
    esac
    shift
done

if ((!dry_run)) && ! command -v nvidia-smi >/dev/null 2>&1 && [[ ! -e /dev/nvidia0 ]]; then
    echo "check.sh: no CUDA device here (no nvidia-smi, no /dev/nvidia0); run it on a GPU machine, or with --dry-run" >&2
    exit 3
fi

logs=$(mktemp -d "${TMPDIR:-/tmp}/vlmlab-gpu-check-installs.XXXXXX")
record=$logs/installs.tsv
touch "$record"
# step WHAT COMMAND...: run one install step with its output in a log, and record its exit code and seconds
step() {
    local what=$1 log
    log=$logs/$(printf %s "${1%% *}" | tr -c 'a-zA-Z0-9' '_').log
    shift
    local t0
    t0=$(date +%s.%N)
    "$@" >"$log" 2>&1
    local code=$?
    printf '%s\t%s\t%s\t%s\n' "$what" "$code" "$(awk "BEGIN {print $(date +%s.%N) - $t0}")" "$log" >>"$record"
    return $code
}

if [[ -n $wheels ]]; then
    python=python3
    site=$repo/outputs/gpu_check/site
    step "pip install --no-index --no-deps --target $site $wheels/*.whl" \
        $python -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$site" "$wheels"/*.whl ||
        { echo "check.sh: installing the wheels of $wheels failed: $(tail -n 3 "$logs"/*.log)" >&2 && exit 2; }
    export PYTHONPATH=$repo/src:$site${PYTHONPATH:+:$PYTHONPATH}
elif ((dry_run)); then
    # The dry run (a test) leaves the .venv as it is: it may be shared with runs going on beside it.
    python=$repo/.venv/bin/python
    state="up to date" && make -C "$repo" -q install || state="out of date: make install would reinstall"
    step "make install: not run in a dry run; the .venv is $state" true
else
    python=$repo/.venv/bin/python
    step "make install" make -C "$repo" install ||
        { echo "check.sh: make install failed: $(tail -n 5 "$logs"/make.log)" >&2 && exit 2; }
fi
if ((!dry_run)) && ! $python -c "import flash_attn" >/dev/null 2>&1; then
    # Optional: packing with flash_attention_2 runs only if this works. A prebuilt wheel or nothing: building
    # flash-attn from source takes far longer than the whole check.
    find_links=(${wheels:+--no-index --find-links "$wheels"})
    step "optional: pip install flash-attn (a prebuilt wheel only)" \
        timeout 120 $python -m pip install --quiet --only-binary=:all: "${find_links[@]}" \
        ${wheels:+--target "$site"} flash-attn
fi

exec $python "$repo/experiments/gpu/check.py" --started "$started" --installs "$record" "${args[@]}"
