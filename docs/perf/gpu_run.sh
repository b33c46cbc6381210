#!/usr/bin/env bash
# The prepared run for a session that is lent an H200 (the `device` tool: 15 minutes in all,
# a machine's start included). On the device machine, from the repository root, with its own
# python3 (torch + triton 3.6; our package is imported from the tree, not installed):
#
#   bash docs/perf/gpu_run.sh            # device run: timeout_s 400 leaves room for one rerun
#
# Session 12's runs took 78 s (steps 1–4), 149 s and 216 s (all steps) of the command's own time,
# plus ≈ 35 s for the machine's start and the copies.
#
# Writes under $OUT (./gpu-out when unset; at most 8 files come back from a device run):
# env.txt (versions, each step's exit status and seconds), races.log, kernels.jsonl,
# kernels.err (every step's stderr, and the warm-up's lines), nvidia-h200.json (the
# launch-choices table made from those rows), batch.jsonl (`bench batch` on the toy: decode
# steps as graph pieces, plain and with every launch overlapping the one before it),
# split.jsonl (each case's time kernel by kernel) and sweeps.jsonl (launch-option sweeps, each
# row naming its case: the decode call's anatomy — its cost before the first row and a row's,
# from lines through 45 timed calls — then the MoE's, attention decode's and prefill's). Then record the numbers in docs/PERF.md, the rows in docs/perf/<date>-h200-*.jsonl,
# and the table in model/kernels/choices/ (what `ops` asks on that GPU). Each step has its own
# limit, so a slow one still leaves the others' output.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/v4coder-triton-cache}
log() { echo "$* (at ${SECONDS} s)" >> "$OUT/env.txt"; }
# in_eight LABEL LIMIT CMD...: CMD --warm I/8 for I = 0..7 side by side, each under LIMIT s,
# their output into kernels.err; waits for all eight
in_eight() {
    local label=$1 limit=$2 pids=() i pid
    shift 2
    for i in 0 1 2 3 4 5 6 7; do
        timeout "$limit" "$@" --warm "$i/8" >> "$OUT/kernels.err" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || log "$label pid $pid rc $?"; done
}

{ nvidia-smi; python3 -c "import torch, triton; print(torch.__version__, triton.__version__,
torch.cuda.get_device_name())"; git log --oneline -1 2>/dev/null; } > "$OUT/env.txt" 2>&1

# 1. Memory order between programs (the last-arrival merges, the counted pick): compiled kernels,
#    not the interpreter, so without the kernel tests' conftest (which asserts the interpreter).
#    In the background, beside step 2: it checks results, it times nothing. Then again with each
#    launch overlapping the one before it (launch.pdl): 200 launches back to back, each reusing
#    the arrival counts the one before set back to zero.
( timeout 150 python3 -m pytest -q -x --noconftest -p no:cacheprovider \
    tests/kernels/test_last_arrival_cuda.py > "$OUT/races.log" 2>&1; log "races rc $?"
  V4CODER_PDL=1 timeout 100 python3 -m pytest -q -x --noconftest -p no:cacheprovider \
    tests/kernels/test_last_arrival_cuda.py >> "$OUT/races.log" 2>&1
  log "races (overlapping launches) rc $?" ) &
races=$!

# 2. Compile every kernel specialisation once, 8 processes side by side (Triton compiles one at a
#    time per process; the 16 cores would otherwise idle through minutes of compiles).
in_eight "warm shard" 150 python3 -m model.bench_kernels
log "warm done"
wait "$races"   # the GPU is quiet for the timed run

# 3. Every kernel against its reference at V4-Flash shapes: time, graph time, GB/s, fraction of
#    peak, error. A case that loses the GPU (rc 3: its error row is written) or kills the process
#    (a row is written for it here) is skipped by a new process from the next case.
: > "$OUT/kernels.jsonl"
deadline=$((SECONDS + 270)) start=0
while (( deadline - SECONDS > 5 )); do
    timeout $((deadline - SECONDS)) python3 -m model.bench_kernels --full-size --start "$start" \
        >> "$OUT/kernels.jsonl" 2>> "$OUT/kernels.err"
    rc=$? rows=$(wc -l < "$OUT/kernels.jsonl")
    log "kernels from case $start rc $rc, $rows rows"
    case $rc in
        3) start=$rows ;;
        0|1|2|124|137) break ;;
        *) echo "{\"case_index\": $rows, \"error\": \"bench process died (rc $rc)\"}" \
               >> "$OUT/kernels.jsonl"
           start=$((rows + 1)) ;;
    esac
done

# 4. The launch choices those rows decide (model/kernels/choices.py): fastest correct variant.
timeout 20 python3 -m model.kernels.choices --from "$OUT/kernels.jsonl" \
    --out "$OUT/nvidia-h200.json" >> "$OUT/kernels.err" 2>&1
log "choices rc $?"

# 4b. A whole decode step of the toy (`small`, fp32) as CUDA graph pieces, plain and captured
#     with every launch overlapping the one before it (launch.pdl): the steps' times and whether
#     the tokens stay the same (model/bench_batch.py, field "overlapping").
timeout 90 python3 -m model.bench_batch --device cuda --preset small --requests 4 \
    --new-tokens 16 > "$OUT/batch.jsonl" 2>> "$OUT/kernels.err"
log "batch rc $?"

# 5. Each case's GPU time kernel by kernel (docs/perf/kernel_split.py), then the launch-option
#    sweeps (docs/perf/sweep.py: each family compiled in 8 processes first, like step 2).
timeout 120 python3 docs/perf/kernel_split.py > "$OUT/split.jsonl" 2>> "$OUT/kernels.err"
log "split rc $?"
# (the families share one file: at most 8 files come back from a device run)
for family in attn_anatomy:60 moe:150 attn_decode:150 attn_prefill:90; do
    IFS=: read -r name limit <<< "$family"
    in_eight "sweep $name warm" 100 python3 docs/perf/sweep.py "$name"
    timeout "$limit" python3 docs/perf/sweep.py "$name" >> "$OUT/sweeps.jsonl" \
        2>> "$OUT/kernels.err"
    log "sweep $name rc $?"
done
