"""
Write preference pairs in the --data format (JSON lines: prompt, chosen, rejected) from the built-in task's own
review generator, labelled by the careful gold reader. The responses are NOT samples of any model, as with your
own data, and the tiny built-in model knows every word in them, so this file runs offline in a minute.

    python examples/task_pairs.py examples/task_pairs.jsonl          # 60 pairs, seed 0
    python rddpo.py --data examples/task_pairs.jsonl --methods p-dpo,e-dpo --seeds 0 1 2
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import task  # noqa: E402


def pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for prompt in task.make_prompts(rng, n, task.TITLES):
        a, b = task.make_review(rng), task.make_review(rng)
        if task.gold_reward(a) < task.gold_reward(b):
            a, b = b, a
        out.append(dict(prompt=prompt, chosen=a, rejected=b))
    return out


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "examples/task_pairs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in pairs(60))
    print(f"wrote 60 pairs to {path}")
