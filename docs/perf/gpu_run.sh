#!/usr/bin/env bash
# The prepared run for a session that is lent an H200 (the `device` tool: 15 minutes in all,
# a machine's start included). On the device machine, from the repository root, with its own
# python3 (torch + triton 3.6; our package is imported from the tree, not installed):
#
#   bash docs/perf/gpu_run.sh            # device run: timeout_s 480 leaves room for one rerun
#
# Writes under $OUT (./gpu-out when unset): env.txt, races.log, kernels.jsonl (+ .err) and
# nvidia-h200.json, the launch-choices table made from those rows. Then record the numbers in
# docs/PERF.md, the rows in docs/perf/<date>-h200-kernels.jsonl, and the table in
# model/kernels/choices/ (what `ops` asks on that GPU).
# Each step has its own limit, so a slow one still leaves the others' output.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1

{ nvidia-smi; python3 -c "import torch, triton; print(torch.__version__, triton.__version__,
torch.cuda.get_device_name())"; git log --oneline -1 2>/dev/null; } > "$OUT/env.txt" 2>&1

# 1. Memory order between programs (the last-arrival merges, the counted pick): compiled kernels,
#    not the interpreter, so without the kernel tests' conftest (which asserts the interpreter).
TRITON_INTERPRET=0 timeout 150 python3 -m pytest -q -x --noconftest -p no:cacheprovider \
    tests/kernels/test_last_arrival_cuda.py > "$OUT/races.log" 2>&1
echo "races rc $?" >> "$OUT/env.txt"

# 2. Every kernel against its reference at V4-Flash shapes (47 s in session 2, before the
#    compile of this many specialisations): time, graph time, GB/s, fraction of peak, error.
TRITON_INTERPRET=0 timeout 300 python3 -m model.bench_kernels --full-size \
    > "$OUT/kernels.jsonl" 2> "$OUT/kernels.err"
echo "kernels rc $?" >> "$OUT/env.txt"

# 3. The launch choices those rows decide (model/kernels/choices.py): fastest correct variant.
timeout 20 python3 -m model.kernels.choices --from "$OUT/kernels.jsonl" \
    --out "$OUT/nvidia-h200.json" >> "$OUT/kernels.err" 2>&1
echo "choices rc $?" >> "$OUT/env.txt"
