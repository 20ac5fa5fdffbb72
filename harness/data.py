"""data.py: your own preference pairs (--data).

Reading a JSON-lines file of prompt, chosen and rejected (every bad line named with its number), wrapping the
prompts in a model's chat template (--chat-template), and the per-seed split into training and held-out pairs,
checked before any work.
"""
import json
import os

import numpy as np

from harness.cli import UsageError, quiet_transformers
from rddpo import fits


# -----------------------------------------------------------------------------
# 1. a data file of pairs


def read_pairs(path):
    """your own data: JSON lines with string fields prompt, chosen, rejected (TRL's format) -> [(p, c, r)]."""
    if not os.path.isfile(path):
        raise UsageError(f"--data file {path!r} not found")
    try:
        with open(path, encoding="utf-8-sig") as fh:  # -sig: a byte-order mark is not part of the first line
            lines = fh.read().split("\n")  # not splitlines(): json strings may hold u+2028 and other separators
    except UnicodeDecodeError as e:
        raise UsageError(f"--data {path!r} is not UTF-8 text (byte {e.start}); save it as UTF-8 JSON lines") from None
    first = next((line for line in lines if line.strip()), "")
    if "," in first and not is_json(first):
        raise UsageError(f"--data {path!r} looks like CSV; give JSON lines, one object "
                         '{"prompt": ..., "chosen": ..., "rejected": ...} per line')
    pairs = [read_pair(line, path, n) for n, line in enumerate(lines, 1) if line.strip()]
    if len(pairs) < 2:
        raise UsageError(f"--data {path!r} holds {len(pairs)} pairs; at least 2 are needed")
    return pairs


def is_json(text):
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


def read_pair(line, path, n):
    keys = ("prompt", "chosen", "rejected")
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}, line {n}: not valid JSON ({e.msg}); each line must be one JSON object") from None
    if not isinstance(row, dict) or any(k not in row for k in keys):
        raise UsageError(f"{path}, line {n}: needs the keys prompt, chosen and rejected")
    if not all(isinstance(row[k], str) for k in keys):
        raise UsageError(f"{path}, line {n}: prompt, chosen and rejected must be strings")
    if not row["chosen"].strip() or not row["rejected"].strip():
        raise UsageError(f"{path}, line {n}: chosen and rejected must not be empty")
    if row["chosen"] == row["rejected"]:
        raise UsageError(f"{path}, line {n}: chosen and rejected are identical, so the pair carries no preference")
    return tuple(row[k] for k in keys)


def user_pairs(cfg):
    """--data's pairs, wrapped in the model's chat template under --chat-template; None without --data."""
    pairs = read_pairs(cfg.data) if cfg.data else None
    return with_chat_template(pairs, cfg.model) if pairs and cfg.chat_template else pairs


# -----------------------------------------------------------------------------
# 2. --chat-template


def chat_tokenizer(model):
    """the tokenizer of `model` for --chat-template, or a UsageError when it cannot be loaded or has no template."""
    from transformers import AutoTokenizer
    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(model))  # a folder, the cache, or the hub
    except (OSError, ValueError) as e:
        raise UsageError(f"--chat-template: cannot load the tokenizer of --model {model!r}: {str(e).splitlines()[0]}") \
            from None
    if not tokenizer.chat_template:
        raise UsageError(f"--chat-template: --model {model!r} has no chat template; leave the flag out")
    return tokenizer


def as_users_turn(tokenizer, prompt):
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def with_chat_template(pairs, model):
    """--chat-template: each prompt as the user's turn of `model`'s chat template, ready for the assistant's reply
    (an instruct model answers a bare prompt with little or nothing)."""
    tokenizer = chat_tokenizer(model)
    return [(as_users_turn(tokenizer, p), c, r) for p, c, r in pairs]


def users_question(model):
    """for printing a --chat-template run: a function from a wrapped prompt back to the user's question, the text
    between what the template writes before and after the user's turn (found by wrapping a marker); a text the
    template did not write, or a model whose tokenizer cannot be loaded, comes back as it is."""
    try:
        before, _, after = as_users_turn(chat_tokenizer(model), "\x00").partition("\x00")
    except UsageError:
        return lambda text: text
    def question(text):
        inside = text.startswith(before) and text.endswith(after) and len(text) >= len(before) + len(after)
        return text[len(before):len(text) - len(after)] if inside else text
    return question


# -----------------------------------------------------------------------------
# 3. the split, and the prompts that fit


def split_pairs(pairs, seed):
    """(train, held-out) lists of (prompt, chosen, rejected). choice: a random tenth, at least one pair, is held out."""
    order = np.random.default_rng([seed, 1]).permutation(len(pairs))
    n_held = max(1, len(pairs) // 10)
    return [pairs[i] for i in order[n_held:]], [pairs[i] for i in order[:n_held]]


def fitting(tokenizer, prompts, max_length):
    """the prompts that fit (fits)."""
    return [p for p in prompts if fits(tokenizer, p, max_length)]


def check_splits(splits, fits, batch_size, max_length):
    """each seed's (train, held-out) pairs: a batch of training pairs and one held-out pair whose prompt fits
    (fits(prompt) -> bool; None: every prompt fits)."""
    fits = fits or (lambda prompt: True)
    for train, held in splits:
        n_train = sum(fits(row[0]) for row in train)
        if n_train < batch_size:
            raise UsageError(f"--batch-size {batch_size} is larger than the {n_train} training pairs whose prompt fits "
                             f"in --max-length {max_length}; lower --batch-size or bring more pairs")
        if not any(fits(row[0]) for row in held):
            raise UsageError(f"no held-out prompt fits in --max-length {max_length}; raise it or shorten the prompts")


def check_data(pairs, splits, tokenizer, cfg):
    """your pairs against the model's tokenizer, before any training: every seed's split has a batch of pairs whose
    prompt fits in --max-length, and no word is unknown to the tokenizer (the built-in tiny model knows only the
    task's words: anything else would silently become <unk>)."""
    if not pairs:
        return
    unk = tokenizer.unk_token_id
    if unk is not None:
        ids = [i for row in pairs for text in row for i in tokenizer(text, add_special_tokens=False).input_ids]
        if unk in ids:
            who = "the built-in tiny model, which knows only the task's words" if cfg.model == "tiny" \
                else f"the tokenizer of --model {cfg.model}"
            raise UsageError(f"{ids.count(unk) / len(ids):.1%} of the tokens of --data {cfg.data} are unknown to {who}; "
                             "pass --model with a real causal LM (a folder, e.g. from convert_gguf.py, or gpt2)")
    check_splits(splits, lambda p: fits(tokenizer, p, cfg.max_length), cfg.batch_size, cfg.max_length)
