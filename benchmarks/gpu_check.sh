#!/usr/bin/env bash
# GPU check at the original's defaults on one posed data set (DATA/images, DATA/poses/*.pose.txt,
# DATA/calibration.txt), in one bounded run that keeps whatever finished:
#   1. the CUDA path: relocalisation with a short mapping (--iterations PROBE_ITERATIONS); stops here on failure;
#   2. COLMAP (pycolmap, when installed) on the same images: the peer, on the same machine;
#   3. relocalisation at the defaults (25k iterations, head 512, batch 5120, fp16): mapping speed and accuracy;
#   4. ACE0 from scratch at the defaults until the time budget ends. Run the script again with the same WORK
#      folder to resume it (ace_zero.py continues a run in its folder); it evaluates the poses once they exist.
# Usage: benchmarks/gpu_check.sh DATA WORK [SECONDS]   (WORK gets summary.txt and every log)
# Environment: PYTHON (default python3), PROBE_ITERATIONS (3000), RELOC_SECONDS (240), RELOC_ARGS (flags of
# bench_relocalisation.py for stage 3, e.g. --intrinsics calibration), ACE_ARGS (extra
# ace_zero.py flags), THREADS (COLMAP threads, default: all cores), SKIP (stages to skip: probe colmap reloc ace).
set -u
if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    [ $# -ge 2 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]
    exit $?
fi
[ -d "$1/images" ] && [ -f "$1/calibration.txt" ] || { echo "error: $1 needs images/ and calibration.txt" >&2; exit 2; }
DATA=$(realpath "$1"); WORK=$(realpath -m "$2"); BUDGET=${3:-540}
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")/.." && pwd)
START=$(date +%s)
mkdir -p "$WORK"
SUMMARY="$WORK/summary.txt"
log() { echo "[$(date +%T)] $*" | tee -a "$SUMMARY"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
skipped() { [[ " ${SKIP:-} " == *" $1 "* ]]; }
FX=$(awk 'NF {print $1; exit}' "$DATA/calibration.txt")
cd "$HERE" || exit 2

log "data $DATA, fx $FX, budget $BUDGET s"
"$PY" -c 'import torch; c = torch.cuda.is_available(); print("torch", torch.__version__, "cuda", c,
torch.cuda.get_device_name() if c else "")' 2>&1 | tee -a "$SUMMARY"

reloc() {  # name, time limit, extra train_ace.py flags
    local name=$1 limit=$2; shift 2
    local t0; t0=$(date +%s)
    timeout "$limit" "$PY" benchmarks/bench_relocalisation.py "$DATA" --json "$WORK/$name.json" "$@" \
        >"$WORK/$name.log" 2>&1
    local code=$?
    log "$name: exit $code after $(( $(date +%s) - t0 )) s"
    if [ -f "$WORK/$name.json" ]; then { cat "$WORK/$name.json"; echo; } | tee -a "$SUMMARY"
    else tail -n 15 "$WORK/$name.log" | tee -a "$SUMMARY"; fi
    return $code
}

if ! skipped probe; then
    reloc probe 300 --iterations "${PROBE_ITERATIONS:-3000}" || { log "the short mapping failed: stopping"; exit 3; }
fi

if ! skipped colmap && "$PY" -c 'import pycolmap' 2>/dev/null && [ ! -f "$WORK/colmap.json" ]; then
    timeout 240 "$PY" benchmarks/bench_reconstruction.py "$DATA" --skip_ace --colmap sequential,exhaustive \
        --threads "${THREADS:-$(nproc)}" --results "$WORK/colmap" --json "$WORK/colmap.json" >"$WORK/colmap.log" 2>&1
    log "COLMAP: exit $?"; grep -E '^(\||COLMAP )' "$WORK/colmap.log" | tee -a "$SUMMARY"
fi

if ! skipped reloc && [ ! -f "$WORK/reloc_defaults.json" ]; then
    # shellcheck disable=SC2086
    reloc reloc_defaults "${RELOC_SECONDS:-240}" ${RELOC_ARGS:-}
fi

if ! skipped ace; then
    ACE="$WORK/ace0"
    limit=$(( $(left) - 45 ))
    if [ ! -f "$ACE/poses_final.txt" ] && [ "$limit" -gt 30 ]; then
        log "ACE0 from scratch at the defaults, at most $limit s"
        # shellcheck disable=SC2086
        timeout "$limit" "$PY" ace_zero.py "$DATA/images/*" "$ACE" ${ACE_ARGS:-} >>"$WORK/ace0.log" 2>&1
        log "ACE0: exit $?"
    fi
    "$PY" benchmarks/bench_reconstruction.py --profile_log "$WORK/ace0.log" 2>&1 | tee -a "$SUMMARY"
    if [ -f "$ACE/poses_final.txt" ]; then
        "$PY" eval_poses.py "$ACE/poses_final.txt" "$DATA/poses/*.txt" --pose_error_thresh_t 0.05 \
            --pose_error_thresh_r 5 --json "$WORK/eval_ace0.json" 2>&1 | tail -n 12 | tee -a "$SUMMARY"
    else
        grep -E "registration rate|registered|iteration[0-9]* " "$WORK/ace0.log" | tail -n 8 | tee -a "$SUMMARY"
    fi
fi
log "done after $(( $(date +%s) - START )) s"
