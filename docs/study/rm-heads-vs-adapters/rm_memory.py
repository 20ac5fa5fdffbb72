"""docs/results.md#pretrained: the peak memory of three reward-model steps with rank-16 adapters on the SmolLM2
reference that go.sh cached in runs/rm-compare (16 pairs of 50 tokens a step), at a given --micro-batch. From the
project's root, with the set-up's environment active:
    /usr/bin/time -f "peak %M KiB" python docs/study/rm-heads-vs-adapters/rm_memory.py --micro-batch 8
"""
import argparse
import time

import numpy as np

REFERENCE = "runs/rm-compare/reference-models-smollm2-135m-B16-lora16-T64-S60"


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    p.add_argument("--micro-batch", type=int, default=0, help="most rows through the model at once; 0: all 32")
    args = p.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import rddpo
    tokenizer, reference = AutoTokenizer.from_pretrained(REFERENCE), AutoModelForCausalLM.from_pretrained(REFERENCE)
    rng = np.random.default_rng(0)
    words = "the plot acting music ending was great awful slow moving clever dull rather quite brilliant flat".split()
    def text(n):
        return " " + " ".join(rng.choice(words, n)) + " ."
    prompts = [f"thoughts on film {i} :" for i in range(32)]
    pairs = rddpo.tokenize_pairs(tokenizer, prompts, [text(40) for _ in prompts], [text(40) for _ in prompts], 64)
    t0 = time.time()
    with rddpo.lora_adapters(reference.eval(), 16, 0):
        rddpo.train_reward_model(reference, pairs, np.arange(32), steps=3, lr=3e-3, batch_size=16, seed=0,
                                 device="cpu", desc="reward model", shared=True, micro_batch=args.micro_batch or None)
    print(f"--micro-batch {args.micro_batch}: 3 steps in {time.time() - t0:.1f} s, rows of "
          f"{pairs.tokens.input_ids.shape[1]} tokens")


if __name__ == "__main__":
    main()
