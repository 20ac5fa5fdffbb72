#!/usr/bin/env bash
# docs/METHOD.md#rm-heads-vs-adapters: the protocol's command once per mode, one after the other, from the project's
# root with the set-up's environment active and models/smollm2-135m converted (docs/your-data.md#smollm2).
#     bash docs/study/rm-heads-vs-adapters/go.sh heads adapters
# both ran on 2026-12-06 with --out runs/rm-compare, so that the adapters run reused the heads run's cached reference:
# heads (heads.log, heads-results.json) on a machine shared with the study, stopped by SIGTERM after its reward models
# and first policy, which is all the comparison reads; adapters (adapters.log, adapters-results.json) alone on the
# 2-core machine, to the end, in 31 min. The outcome is in docs/results.md#pretrained: heads stay.
set -euo pipefail
export HF_HUB_OFFLINE=1
mkdir -p runs/rm-compare
for mode in "$@"; do
  /usr/bin/time -v python rddpo.py --model models/smollm2-135m --methods d-dpo,e-dpo --ensemble 1 --seeds 0 \
    --n-pairs 256 --n-eval 64 --steps 1 --eval-points 1 --rm-lr 3e-3 --reward-models "$mode" \
    --out runs/rm-compare > "runs/rm-compare/$mode.log" 2>&1
done
