#!/usr/bin/env bash
# docs/METHOD.md#rm-heads-vs-adapters: the protocol's command once per mode, one after the other, from the project's
# root with the set-up's environment active and models/smollm2-135m converted (docs/your-data.md#smollm2).
#     bash docs/study/rm-heads-vs-adapters/go.sh heads adapters
# heads ran on 2026-12-06 (heads.log, heads-results.json: stopped by SIGTERM after its reward models and first
# policy, which is all the comparison reads; --out runs/rm-compare, as here, so that the adapters run reuses the
# cached reference); adapters is still to run: about 45-50 min alone on the 2-core machine (its two reward models
# train LoRA adapters through the whole transformer, about 8 s a step of 16 pairs, 150 steps each; an estimate, not a measurement).
set -euo pipefail
export HF_HUB_OFFLINE=1
mkdir -p runs/rm-compare
for mode in "$@"; do
  /usr/bin/time -v python rddpo.py --model models/smollm2-135m --methods d-dpo,e-dpo --ensemble 1 --seeds 0 \
    --n-pairs 256 --n-eval 64 --steps 1 --eval-points 1 --rm-lr 3e-3 --reward-models "$mode" \
    --out runs/rm-compare > "runs/rm-compare/$mode.log" 2>&1
done
