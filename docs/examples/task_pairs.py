"""
Write preference pairs in the --data format (JSON lines: prompt, chosen, rejected) from the built-in task's own
review generator, labelled by the careful gold reader. The responses are NOT samples of any model, as with your
own data, and the tiny built-in model knows every word in them, so this file runs offline in a minute.

    python docs/examples/task_pairs.py docs/examples/task_pairs.jsonl          # 60 pairs, seed 0
    python rddpo.py --data docs/examples/task_pairs.jsonl --methods p-dpo,e-dpo --seeds 0 1 2
"""
import argparse
import json

import numpy as np

from harness import task  # the project, installed by the README's set-up command (pip install -e .)


def pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for prompt in task.make_prompts(rng, n, task.TITLES):
        a, b = task.make_review(rng), task.make_review(rng)
        if task.gold_reward(a) < task.gold_reward(b):
            a, b = b, a
        out.append(dict(prompt=prompt, chosen=a, rejected=b))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="write 60 of the built-in task's pairs in the --data format")
    p.add_argument("path", nargs="?", default="docs/examples/task_pairs.jsonl", help="where (default: %(default)s)")
    path = p.parse_args(argv).path
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in pairs(60))
    print(f"wrote 60 pairs to {path}")


if __name__ == "__main__":
    main()
