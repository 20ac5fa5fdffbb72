#!/usr/bin/env bash
# tools/gpu.sh: the headline (bias 0, 0.5 and 1; 5 seeds) at gpt-2-small's shape (12 layers, 768 wide), trained on
# the built-in task, then `bench.py --device cuda`, in one go on one H100/H200 with no internet (the tiny model's
# tokenizer and corpus are built in code, so nothing is downloaded).
#
#     bash tools/gpu.sh [OUT]        # OUT: where the runs go (default runs/gpu); aimed at about 10 minutes
#
# the reference is fine-tuned once and cached in OUT; then the three biases run side by side, one process each (one
# model this small leaves most of the card idle), each writing its own run-NNN folder and log; bench.py comes last.
# the environment overrides each part, so that test_bench.py runs every part on the cpu at a tiny budget:
#   RDDPO_DEVICE (cuda), RDDPO_SHAPE (the model flags), RDDPO_BUDGET (extra rddpo.py flags, for every run: the
#   reference step runs dpo alone, so none that applies to e-dpo or p-dpo only), RDDPO_SEEDS,
#   RDDPO_BIASES, RDDPO_BENCH (bench.py's flags).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's rddpo and harness, installed or not
out=${1:-runs/gpu}
device=${RDDPO_DEVICE:-cuda}
shape=${RDDPO_SHAPE:---n-layer 12 --n-embd 768 --n-head 12}
budget=${RDDPO_BUDGET:---dtype bfloat16}
seeds=${RDDPO_SEEDS:-0 1 2 3 4}
biases=${RDDPO_BIASES:-0 0.5 1}
bench=${RDDPO_BENCH:---device cuda}
methods=dpo,d-dpo,e-dpo,p-dpo
mkdir -p "$out"
t0=$(date +%s)
stamp() { echo "gpu.sh: $1 at $(( $(date +%s) - t0 )) s"; }

# 1. the reference: fine-tuned once (the shortest run that builds it), then read from the cache by every bias
# shellcheck disable=SC2086
python rddpo.py $shape $budget --device "$device" --out "$out" --methods dpo --steps 1 --rm-steps 1 --n-pairs 16 \
    --n-eval 8 --eval-points 1 > "$out/reference.log" 2>&1
stamp "reference ready"

# 2. the three biases side by side
pids=()
for bias in $biases; do
    # shellcheck disable=SC2086
    python rddpo.py $shape $budget --device "$device" --out "$out" --bias "$bias" --methods "$methods" \
        --seeds $seeds > "$out/bias-$bias.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
stamp "headline done"
for bias in $biases; do  # each run's own printed summary: its table, paired differences, diagnostics and samples
    echo "=== bias $bias"
    sed -n '/^ *bias  *method /,/^done in /p' "$out/bias-$bias.log"
done
[ "$status" -eq 0 ] || { echo "gpu.sh: a bias run failed; see $out/bias-*.log" >&2; exit 1; }

# 3. the cost of a step on the card
# shellcheck disable=SC2086
python tools/bench.py $bench --out "$out"
stamp "all done"
