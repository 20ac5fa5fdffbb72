"""
Write a conversational preference file and two small reward models of your own, offline, for the walk-through in
docs/your-data.md#walk-through: the kind of data and reward models a practitioner brings.

- FOLDER/chat.jsonl: the built-in task's prompts and reviews as conversations (TRL's conversational form, the
  prompt explicit; every third pair has an earlier exchange), chosen and rejected by the careful gold reader.
- FOLDER/reward-model-a, FOLDER/reward-model-b: sequence classifiers (a 1-layer GPT-2, the task's word-level
  tokenizer with a chat template of its own, unlike the policy's), each trained with the Bradley-Terry loss on 400
  other gold-labelled pairs (its own seed), and saved so that from_pretrained reads them. Their accuracy against
  gold on 200 further pairs is printed.

    python docs/examples/chat_example.py runs/chat      # about 30 s on 2 cores
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from harness import task  # the project, installed by the README's set-up command (pip install -e .)
from harness.cli import quiet_transformers

TEMPLATE = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"  # the reward models' own


def conversation(rng, prompt, turns):
    """a prompt as messages, with an earlier exchange when turns == 2, and two responses, best first by gold."""
    messages = [{"role": "user", "content": prompt}]
    if turns == 2:
        messages += [{"role": "assistant", "content": task.make_review(rng).strip()},
                     {"role": "user", "content": "and the ending ?"}]
    a, b = task.make_review(rng).strip(), task.make_review(rng).strip()
    if task.gold_reward(a) < task.gold_reward(b):
        a, b = b, a
    return messages, a, b


def rows(n, seed):
    rng = np.random.default_rng(seed)
    return [conversation(rng, p, 2 if i % 3 == 2 else 1) for i, p in enumerate(task.make_prompts(rng, n, task.TITLES))]


def reward_model(pairs, held, seed, steps=300):
    """a small sequence classifier trained with the Bradley-Terry loss on pairs -> (model, tokenizer, held-out
    accuracy against gold)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification
    words = [w for w in task.build_tokenizer().get_vocab() if w not in ("<|endoftext|>", "<unk>")]
    tok = task.word_tokenizer(words + ["user", "assistant", "and", "ending", "?"])
    tok.chat_template = TEMPLATE
    torch.manual_seed(seed)
    model = GPT2ForSequenceClassification(GPT2Config(
        vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=1, n_head=2, num_labels=1,
        pad_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    def read(messages, response):  # the text the reward model reads: the conversation in its own template
        return tok.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    def rewards(batch):  # the chosen rows, then the rejected rows -> (2b,)
        texts = [read(m, a) for m, a, _ in batch] + [read(m, b) for m, _, b in batch]
        return model(**tok(texts, padding=True, return_tensors="pt")).logits[:, 0]
    opt, rng = torch.optim.AdamW(model.parameters(), lr=3e-3), np.random.default_rng(seed)
    for _ in range(steps):
        r = rewards([pairs[i] for i in rng.integers(len(pairs), size=16)])
        loss = -F.logsigmoid(r[:16] - r[16:]).mean()  # bradley-terry: the chosen response scores higher
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        r = rewards(held)
    return model.eval(), tok, float((r[:len(held)] > r[len(held):]).float().mean())


def main(argv=None):
    p = argparse.ArgumentParser(description="write a conversational pairs file and two small reward models")
    p.add_argument("folder", nargs="?", default="runs/chat", help="where (default: %(default)s)")
    folder = p.parse_args(argv).folder
    os.makedirs(folder, exist_ok=True)
    quiet_transformers()  # no progress bars while saving
    with open(os.path.join(folder, "chat.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(dict(prompt=m, chosen=[{"role": "assistant", "content": a}],
                                     rejected=[{"role": "assistant", "content": b}])) + "\n" for m, a, b in rows(80, 0))
    held = rows(200, 3)
    for name, seed in (("reward-model-a", 1), ("reward-model-b", 2)):
        model, tok, accuracy = reward_model(rows(400, seed), held, seed)
        model.save_pretrained(os.path.join(folder, name))
        tok.save_pretrained(os.path.join(folder, name))
        print(f"{folder}/{name}: agrees with the careful gold reader on {accuracy:.0%} of 200 held-out pairs")
    print(f"wrote 80 conversational pairs to {folder}/chat.jsonl")


if __name__ == "__main__":
    main()
