"""
rddpo: reward-distilled DPO in one readable file.

Companion code for "Robust Preference Optimization through Reward Model Distillation"
(Fisch et al., TMLR 2025). Read it top to bottom beside the paper:

  1. configuration        2. data and the gold reward   3. models
  4. sequence log-probs   5. implicit reward             6. reward models and the family
  7. the five losses      8. training                    9. evaluation        10. main

    python rddpo.py                 # offline: builds and pretrains a small GPT-2, then runs the experiment
    python rddpo.py --model gpt2    # the same on real GPT-2 (needs the Hugging Face hub or a local copy)

The math, and every choice this file makes where the paper is silent, is in METHOD.md; choices are
marked `# choice:` below.
"""
import argparse
import copy
import dataclasses
import json
import math
import os
import random
import socket
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

def progress(iterable, desc):
    """a progress bar on a terminal, silence in logs and tests."""
    return tqdm(iterable, desc=desc, mininterval=1, disable=None, leave=False)


METHODS = ("dpo", "ipo", "d-dpo", "e-dpo", "p-dpo")


class UsageError(Exception):
    """bad input from the user: reported as one `error:` line and exit status 2."""


# -----------------------------------------------------------------------------
# 1. configuration

QUICK = dict(pretrain_steps=150, n_pairs=64, n_eval=32, rm_steps=15, steps=15, log_every=5)  # --quick


@dataclass
class Config:
    model: str = field(default="tiny", metadata={"help": "'tiny' builds and pretrains a small GPT-2 offline; "
                                                 "or a causal LM name or local path for from_pretrained, e.g. gpt2"})
    methods: str = field(default=",".join(METHODS), metadata={"help": "comma list of methods to train"})
    bias: float = field(default=0.5, metadata={"help": "probability that the annotator prefers the longer response"})
    seeds: list = field(default_factory=lambda: [0], metadata={"help": "one or more seeds (data, reward models, policies)"})
    beta: float = field(default=0.1, metadata={"help": "KL strength: implicit reward = beta * log(pi / pi_ref)"})
    gamma: float = field(default=0.1, metadata={"help": "weight of the forward-KL penalty in e-DPO and p-DPO"})
    ensemble: int = field(default=4, metadata={"help": "K, the number of reward models in the e-DPO family"})
    steps: int = field(default=150, metadata={"help": "policy training steps per method"})
    batch_size: int = field(default=16, metadata={"help": "preference pairs per step"})
    lr: float = field(default=1e-4, metadata={"help": "policy learning rate (AdamW)"})
    rm_steps: int = field(default=150, metadata={"help": "training steps per reward model"})
    rm_lr: float = field(default=3e-4, metadata={"help": "reward-model learning rate (AdamW)"})
    n_pairs: int = field(default=512, metadata={"help": "training pairs sampled from the reference (built-in task)"})
    n_eval: int = field(default=128, metadata={"help": "held-out prompts for evaluation"})
    max_length: int = field(default=64, metadata={"help": "tokens per prompt+response; longer responses are truncated"})
    max_new_tokens: int = field(default=40, metadata={"help": "longest sampled response"})
    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cuda, mps or cpu"})
    out: str = field(default="runs", metadata={"help": "output folder: each run writes a new run-NNN folder inside"})
    data: str = field(default="", metadata={"help": "your own pairs: JSON lines with prompt, chosen, rejected"})
    sweep: bool = field(default=False, metadata={"help": "run every bias in --sweep-biases and draw the headline figure"})
    sweep_biases: str = field(default="0,0.25,0.5,0.75,1", metadata={"help": "bias values for --sweep"})
    quick: bool = field(default=False, metadata={"help": "a tiny budget for smoke tests: " + ", ".join(
        f"{k.replace('_', '-')} {v}" for k, v in QUICK.items())})
    n_layer: int = field(default=2, metadata={"help": "tiny model: layers"})
    n_embd: int = field(default=64, metadata={"help": "tiny model: width"})
    n_head: int = field(default=4, metadata={"help": "tiny model: attention heads"})
    pretrain_steps: int = field(default=600, metadata={"help": "tiny model: pretraining steps (cached in --out)"})
    log_every: int = field(default=25, metadata={"help": "steps between logged training lines"})

    def method_list(self):
        return [m.strip() for m in self.methods.split(",") if m.strip()]


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block, exit status 2
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv=None):
    """build argparse from the Config fields, so `Config(steps=5)` and `--steps 5` mean the same."""
    p = ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(Config):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
        elif isinstance(default, list):
            p.add_argument(flag, type=int, nargs="+", default=default, help=f.metadata["help"])
        else:
            p.add_argument(flag, type=type(default), default=default, help=f.metadata["help"])
    cfg = Config(**vars(p.parse_args(argv)))
    return dataclasses.replace(cfg, **QUICK) if cfg.quick else cfg


def validate(cfg):
    """check the flags before any work is done; each problem is one line that says how to fix it."""
    checks = [
        (cfg.beta > 0, f"--beta must be > 0 (got {cfg.beta})"),
        (cfg.gamma >= 0, f"--gamma must be >= 0 (got {cfg.gamma})"),
        (0 <= cfg.bias <= 1, f"--bias must be in [0, 1] (got {cfg.bias})"),
        (cfg.ensemble >= 1, f"--ensemble must be >= 1 (got {cfg.ensemble})"),
        (cfg.steps >= 1 and cfg.rm_steps >= 1, "--steps and --rm-steps must be >= 1"),
        (cfg.batch_size >= 1, f"--batch-size must be >= 1 (got {cfg.batch_size})"),
        (cfg.lr > 0 and cfg.rm_lr > 0, "--lr and --rm-lr must be > 0"),
        (cfg.n_pairs >= 1 and cfg.n_eval >= 1, "--n-pairs and --n-eval must be >= 1"),
        (cfg.max_new_tokens >= 1 and cfg.max_length >= 8, "--max-new-tokens must be >= 1 and --max-length >= 8"),
        (cfg.log_every >= 1, "--log-every must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    unknown = [m for m in cfg.method_list() if m not in METHODS]
    if unknown or not cfg.method_list():
        raise UsageError(f"unknown method {','.join(unknown) or '(none)'} in --methods; choose from {','.join(METHODS)}")
    for b in sweep_bias_list(cfg):
        if not 0 <= b <= 1:
            raise UsageError(f"--sweep-biases values must be in [0, 1] (got {b})")


def sweep_bias_list(cfg):
    try:
        return [float(b) for b in cfg.sweep_biases.split(",")] if cfg.sweep else [cfg.bias]
    except ValueError:
        raise UsageError(f"--sweep-biases must be a comma list of numbers (got {cfg.sweep_biases!r})") from None


def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name not in available:
        raise UsageError(f"unknown --device {name!r}; choose auto, cuda, mps or cpu")
    if not available[name]:
        raise UsageError(f"--device {name} is not available on this machine; use --device auto or cpu")
    return torch.device(name)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -----------------------------------------------------------------------------
# 2. data and the gold reward
# the built-in task: short movie reviews. the gold reward is the sentiment of the response, read off
# fixed word lists anyone can check; length is the spurious feature the biased annotator rewards.

POSITIVE = "great wonderful brilliant moving superb delightful charming clever beautiful excellent".split()
NEGATIVE = "awful boring dull terrible weak clumsy tedious bland messy forgettable".split()
NEUTRAL = "typical familiar quiet loud slow simple modern serious".split()
NOUNS = "acting plot story music ending script cast pacing dialogue camera".split()
ADVERBS = "very quite really rather".split()
TITLES = ("the long night|blue harbor|a quiet storm|the last train|paper moon|silver lake|the red door|"
          "winter road|the glass house|dark water|the old mill|a summer game|the iron bridge|lost signal|"
          "the green hill|city of ash|the night shift|a cold wind|the narrow gate|empty rooms").split("|")
EVAL_TITLES = "the hidden valley|broken clocks|the salt road|a distant bell|the white tower|north star".split("|")
OPENERS = ["my review of", "i watched", "thoughts on", "a few words about"]


def gold_reward(text):
    """sentiment in [-1, 1]: (positive - negative adjectives) / all adjectives; 0 with none.
    choice: a share, not a count, so that a longer response is not better or worse by itself."""
    words = text.split()
    pos, neg = sum(w in POSITIVE for w in words), sum(w in NEGATIVE for w in words)
    neutral = sum(w in NEUTRAL for w in words)
    return (pos - neg) / max(1, pos + neg + neutral)


def make_prompts(rng, n, titles):
    return [f"{OPENERS[rng.integers(len(OPENERS))]} {titles[rng.integers(len(titles))]} :" for _ in range(n)]


def make_review(rng):
    """one continuation: 1 to 6 sentences whose adjectives lean to a sentiment drawn per review."""
    p_pos = rng.random()  # sentiment and length are drawn independently
    sentences = []
    for _ in range(rng.integers(1, 7)):
        u = rng.random()
        adjs = POSITIVE if u < 0.8 * p_pos else NEGATIVE if u < 0.8 else NEUTRAL
        adverb = f"{ADVERBS[rng.integers(len(ADVERBS))]} " if rng.random() < 0.3 else ""
        sentences.append(f"the {NOUNS[rng.integers(len(NOUNS))]} was {adverb}{adjs[rng.integers(len(adjs))]} .")
    return " " + " ".join(sentences)


def build_tokenizer():
    """a word-level tokenizer built in code over the task's closed vocabulary (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = sorted(set(POSITIVE + NEGATIVE + NEUTRAL + NOUNS + ADVERBS + ["the", "was", ".", ":"]
                       + " ".join(TITLES + EVAL_TITLES + OPENERS).split()))
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<unk>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>")


def read_pairs(path):
    """your own data: JSON lines with string fields prompt, chosen, rejected (TRL's format)."""
    if not os.path.isfile(path):
        raise UsageError(f"--data file {path!r} not found")
    pairs = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}, line {n}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(row, dict) or any(k not in row for k in ("prompt", "chosen", "rejected")):
                raise UsageError(f"{path}, line {n}: needs the keys prompt, chosen and rejected")
            if not all(isinstance(row[k], str) for k in ("prompt", "chosen", "rejected")):
                raise UsageError(f"{path}, line {n}: prompt, chosen and rejected must be strings")
            if not row["chosen"].strip() or not row["rejected"].strip():
                raise UsageError(f"{path}, line {n}: chosen and rejected must not be empty")
            if row["chosen"] == row["rejected"]:
                raise UsageError(f"{path}, line {n}: chosen and rejected are identical, so the pair carries no preference")
            pairs.append((row["prompt"], row["chosen"], row["rejected"]))
    return pairs


# -----------------------------------------------------------------------------
# 3. models


def build_tiny_gpt2(cfg, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel
    eos = tokenizer.eos_token_id
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=cfg.max_length, n_embd=cfg.n_embd,
                                      n_layer=cfg.n_layer, n_head=cfg.n_head, bos_token_id=eos,
                                      eos_token_id=eos, pad_token_id=eos))


def pretrain(model, tokenizer, cfg, device):
    """next-token training on reviews generated in code, so the reference speaks the task's language."""
    rng = np.random.default_rng(1234)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in progress(range(cfg.pretrain_steps), "pretrain tiny gpt-2"):
        texts = [p + make_review(rng) for p in make_prompts(rng, 64, TITLES + EVAL_TITLES)]
        batch = pad([tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in texts], tokenizer.eos_token_id)
        ids, mask = batch[0].to(device), batch[1].to(device)
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def load_pretrained(name):
    """from_pretrained, with one clear line instead of a minute of retries when the hub is unreachable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if name.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(name)):
        raise UsageError(f"--model {name!r}: no such folder; give a model folder, a hub name such as gpt2, or tiny")
    name = os.path.expanduser(name)
    if not os.path.isdir(name):
        try:  # already downloaded?
            return AutoModelForCausalLM.from_pretrained(name, local_files_only=True), \
                AutoTokenizer.from_pretrained(name, local_files_only=True)
        except OSError:
            pass
        if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
            raise UsageError(f"cannot load --model {name!r}: it is not a local folder, not in the Hugging Face cache, and the "
                             "hub cannot be reached; run offline with the default (no --model) or pass a local path")
    try:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(name), AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load --model {name!r}: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:  # gpt-2 has no pad token: pad with eos, masked out everywhere
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def hub_reachable(timeout=3.0):
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_reference(cfg, device):
    """the frozen reference pi_ref and its tokenizer. the tiny model is cached in --out."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if cfg.model != "tiny":
        model, tokenizer = load_pretrained(cfg.model)
        context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
        if context and cfg.max_length > context:
            raise UsageError(f"--max-length {cfg.max_length} exceeds the model's context of {context} tokens; lower it")
        return model.to(device).eval(), tokenizer
    cache = os.path.join(cfg.out, f"reference-L{cfg.n_layer}-E{cfg.n_embd}-H{cfg.n_head}-T{cfg.max_length}"
                                  f"-S{cfg.pretrain_steps}")
    if os.path.isfile(os.path.join(cache, "config.json")):
        model, tokenizer = AutoModelForCausalLM.from_pretrained(cache), AutoTokenizer.from_pretrained(cache)
        return model.to(device).eval(), tokenizer
    tokenizer = build_tokenizer()
    seed_everything(1234)
    model = pretrain(build_tiny_gpt2(cfg, tokenizer).to(device), tokenizer, cfg, device)
    tmp = cache + f".tmp{os.getpid()}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, cache)  # written whole, then renamed: a half-written cache is never read
    return model, tokenizer


def forward(model, input_ids, attention_mask):
    """logits (B, T, V); positions count real tokens only, so left and right padding agree."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits


@torch.no_grad()
def sample(model, tokenizer, prompts, cfg, device, desc="sample", batch_size=64):
    """draw one response per prompt from the model at temperature 1 (no top-k: these are samples of pi)."""
    eos, responses = tokenizer.eos_token_id, []
    for i in progress(range(0, len(prompts), batch_size), desc):
        prompt_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts[i:i + batch_size]]
        ids, mask = (x.to(device) for x in pad(prompt_ids, eos, side="left"))  # (B, Tp)
        done, prompt_len = torch.zeros(len(ids), dtype=torch.bool, device=device), ids.shape[1]  # (B,)
        for _ in range(min(cfg.max_new_tokens, cfg.max_length - prompt_len)):
            logits = forward(model, ids, mask)[:, -1].float()  # (B, V)
            nxt = torch.multinomial(logits.softmax(-1), 1).squeeze(-1).masked_fill(done, eos)  # (B,)
            ids = torch.cat([ids, nxt[:, None]], 1)  # (B, t+1)
            mask = torch.cat([mask, (~done).long()[:, None]], 1)  # (B, t+1)
            done |= nxt == eos
            if done.all():
                break
        for row, p in zip(ids[:, prompt_len:].tolist(), prompt_ids):
            new = row[:row.index(eos)] if eos in row else row
            # the response text is what follows the prompt's own decoding, so prompt + response re-tokenises
            responses.append(tokenizer.decode(p + new)[len(tokenizer.decode(p)):])
    return responses


# -----------------------------------------------------------------------------
# 4. tokenisation and sequence log-probs


def encode(tokenizer, prompt, response, max_length):
    """(prompt ids, response ids + eos, truncated?) or None when the prompt alone fills the context."""
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    full = tokenizer(prompt + response, add_special_tokens=False).input_ids
    # a merge across the boundary (bpe) would shift tokens between prompt and response; then tokenise
    # the two apart so that the response mask stays exact
    r = full[len(p):] if full[:len(p)] == p else tokenizer(response, add_special_tokens=False).input_ids
    r = r + [tokenizer.eos_token_id]
    if len(p) >= max_length:
        return None
    return p, r[:max_length - len(p)], len(p) + len(r) > max_length


def pad(rows, pad_id, side="right", masks=None):
    """lists of ids -> input_ids (N, T) and attention_mask (N, T) [, and each extra mask (N, T)]."""
    T = max(map(len, rows))
    def fill(row, value):
        return [value] * (T - len(row)) + row if side == "left" else row + [value] * (T - len(row))
    out = [torch.tensor([fill(r, pad_id) for r in rows]), torch.tensor([fill([1] * len(r), 0) for r in rows])]
    return tuple(out + [torch.tensor([fill(m, 0) for m in ms]) for ms in (masks or [])])


def tokenize(tokenizer, prompts, responses, max_length, side="right"):
    """(prompt, response) texts -> input_ids, attention_mask, response_mask (N, T); every prompt must fit."""
    enc = [encode(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    ids, mask, resp = pad([p + r for p, r, _ in enc], tokenizer.eos_token_id, side,
                          [[[0] * len(p) + [1] * len(r) for p, r, _ in enc]])
    return dict(input_ids=ids, attention_mask=mask, response_mask=resp, side=side,
                truncated=torch.tensor([t for *_, t in enc], dtype=torch.bool))  # (N,)


def tokenize_pairs(tokenizer, prompts, chosen, rejected, max_length, side="right"):
    """pairs -> (2N, T) tensors, the N chosen rows first, then the N rejected rows.
    pairs whose prompt alone fills the context are skipped; `keep` lists the pairs kept."""
    keep = [i for i, p in enumerate(prompts) if len(tokenizer(p, add_special_tokens=False).input_ids) < max_length]
    data = tokenize(tokenizer, [prompts[i] for i in keep] * 2, [chosen[i] for i in keep] + [rejected[i] for i in keep],
                    max_length, side)
    cut = data["truncated"]
    return dict(data, keep=keep, skipped=len(prompts) - len(keep), truncated=int((cut[:len(keep)] | cut[len(keep):]).sum()))


def sequence_logps(logits, input_ids, response_mask):
    """sum over response tokens t of log softmax(logits[:, t-1])[input_ids[:, t]], in float32.
    logits (B, T, V), input_ids (B, T), response_mask (B, T) -> (B,)"""
    logps = logits[:, :-1].float().log_softmax(-1)  # (B, T-1, V): position t-1 predicts token t
    token_logps = logps.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    # where, not a product: logits at padded positions may be nan, and nan * 0 is nan
    return torch.where(response_mask[:, 1:].bool(), token_logps, 0.0).sum(-1)  # (B,)


@torch.no_grad()
def all_logps(model, data, rows, device, batch_size=64):
    """sequence log-probs of the given rows of a tokenised set, in batches -> (len(rows),) on the cpu."""
    out = []
    for i in range(0, len(rows), batch_size):
        ids, mask, resp = batch_tensors(data, rows[i:i + batch_size], device)
        out.append(sequence_logps(forward(model, ids, mask), ids, resp).cpu())
    return torch.cat(out)


def batch_tensors(data, rows, device):
    """the rows, cut to their longest sequence (right padding), on the device."""
    rows = torch.as_tensor(rows)
    T = int(data["attention_mask"][rows].sum(1).max()) if data.get("side", "right") == "right" else None
    return tuple(data[k][rows, :T].to(device) for k in ("input_ids", "attention_mask", "response_mask"))


# -----------------------------------------------------------------------------
# 5. implicit reward


def implicit_reward(policy_logps, reference_logps, beta):
    """r_theta(x, y) = beta * (log pi_theta(y|x) - log pi_ref(y|x)); exactly 0 while pi_theta = pi_ref."""
    return beta * (policy_logps - reference_logps)


def logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
    """h = log-ratio of the chosen minus that of the rejected response; the implicit margin is beta * h."""
    return (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)


def forward_kl_estimate(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
    """KL(pi_ref || pi) ~ mean over the batch's 2B responses of log pi_ref(y) - log pi(y). unbiased when the
    responses were sampled from pi_ref (the built-in task); on other data, a stay-close-on-the-data penalty."""
    return ((reference_chosen_logps - policy_chosen_logps) + (reference_rejected_logps - policy_rejected_logps)).mean() / 2


# -----------------------------------------------------------------------------
# 6. reward models and the family


class RewardModel(nn.Module):
    """the reference model's transformer plus a scalar head read at the last real token."""

    def __init__(self, lm):
        super().__init__()
        self.backbone = copy.deepcopy(lm.base_model)
        self.head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)  # every reward starts at exactly 0
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids).last_hidden_state  # (B, T, H)
        last = last_token_index(attention_mask)  # (B,)
        return self.head(hidden[torch.arange(len(last)), last].float()).squeeze(-1)  # (B,)


def last_token_index(attention_mask):
    """index of the last real token of each row, for left or right padding. gpt-2 pads with its eos token,
    so searching for the pad id would stop at the response's own eos: use the mask. (B, T) -> (B,)"""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
    return (attention_mask * positions).argmax(-1)  # (B,)


def without_dropout(model):
    """choice: no dropout while learning from preferences (as TRL's dpo trainer does by default). then the
    policy at step 0 is the reference exactly and its implicit reward is 0, not dropout noise."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def bradley_terry_loss(chosen_rewards, rejected_rewards):
    """-log sigmoid(r(x, y_w) - r(x, y_l)), batch mean."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def train_reward_model(reference, data, pair_idx, cfg, seed, device, desc):
    """bradley-terry training on the given pairs (indices may repeat: a resample)."""
    seed_everything(seed)
    rm = without_dropout(RewardModel(reference).to(device).train())
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.rm_lr)
    n, rng = len(data["keep"]), np.random.default_rng(seed)
    for _ in progress(range(cfg.rm_steps), desc):
        idx = pair_idx[rng.integers(len(pair_idx), size=cfg.batch_size)]
        r = rm(*batch_tensors(data, np.concatenate([idx, idx + n]), device)[:2])  # (2B,)
        r_w, r_l = r.chunk(2)  # (B,), (B,)
        # choice: a small centering term pins the free offset of bt rewards (coef 0.01)
        loss = bradley_terry_loss(r_w, r_l) + 0.01 * ((r_w + r_l) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rm.eval()


def family_shares(k):
    """choice: member k sees the share k/(K-1) of 'longer response preferred' pairs, spread over [0, 1]."""
    return [0.5] if k == 1 else [i / (k - 1) for i in range(k)]


def resample_by_length_share(longer_won, share, rng):
    """a resample of all pair indices in which `share` of the pairs are ones the longer response won."""
    n = len(longer_won)
    long_idx, short_idx = np.flatnonzero(longer_won), np.flatnonzero(~longer_won)
    n_long = int(round(share * n)) if len(long_idx) and len(short_idx) else (n if len(long_idx) else 0)
    return np.concatenate([rng.choice(long_idx, n_long), rng.choice(short_idx, n - n_long)]).astype(np.int64)


@torch.no_grad()
def score(rm, data, device, batch_size=64):
    """reward of every tokenised sequence -> (2N,) on the cpu."""
    rows = np.arange(len(data["input_ids"]))
    return torch.cat([rm(*batch_tensors(data, rows[i:i + batch_size], device)[:2]).cpu()
                      for i in range(0, len(rows), batch_size)])


def reward_scores(reference, data, cfg, seed, device, longer_won):
    """train the plain reward model and the family, score every pair once, and free the models.
    returns (2N,) plain rewards and (K, 2N) family rewards."""
    n = len(data["keep"])
    plain = score(train_reward_model(reference, data, np.arange(n), cfg, seed, device, "reward model"), data, device)
    family = []
    for k, share in enumerate(family_shares(cfg.ensemble)):
        idx = resample_by_length_share(longer_won, share, np.random.default_rng([seed, k]))
        rm = train_reward_model(reference, data, idx, cfg, seed * 1000 + k + 1, device,
                                f"reward model {k + 1}/{cfg.ensemble} (longer-wins share {share:.2f})")
        family.append(score(rm, data, device))
        del rm
    return plain, torch.stack(family)  # (2N,), (K, 2N)


# -----------------------------------------------------------------------------
# 7. the five losses: pure functions of (B,) log-prob tensors, each returning the batch mean


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """mean( -log sigmoid(beta * h) )"""
    h = logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return -F.logsigmoid(beta * h).mean()


def ipo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """mean( (h - 1 / (2 beta))^2 ). choice: h sums over tokens (trl averages per token)."""
    h = logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return ((h - 1 / (2 * beta)) ** 2).mean()


def distill_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                 rm_chosen_rewards, rm_rejected_rewards, beta):
    """d-DPO: mean( (r(x, y_w) - r(x, y_l) - beta * h)^2 ), one reward model, rewards (B,)"""
    h = logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return ((rm_chosen_rewards - rm_rejected_rewards - beta * h) ** 2).mean()


def pessimistic_distill_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                             reference_rejected_logps, rm_chosen_rewards, rm_rejected_rewards, beta, gamma):
    """e-DPO: min_k mean_b( (dr_kb - beta * h_b)^2 ) + gamma * KL(pi_ref || pi), rewards (K, B).
    choice: the min is over the batch-level losses; a per-pair min would let each pair pick its easiest member."""
    h = logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    per_member = ((rm_chosen_rewards - rm_rejected_rewards - beta * h) ** 2).mean(-1)  # (K,)
    fkl = forward_kl_estimate(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return per_member.min() + gamma * fkl


def pessimistic_dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps, beta, gamma):
    """p-DPO: mean( -log sigmoid(beta * h) ) + gamma * KL(pi_ref || pi)"""
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return dpo_loss(*logps, beta) + gamma * forward_kl_estimate(*logps)


# -----------------------------------------------------------------------------
# 8. training


class TrainingDiverged(Exception):
    """a nan or inf loss: training stops, and what was written so far is kept."""


def policy_loss(method, policy_logps, rows, data, cfg):
    """the loss of `method` on one batch; reference log-probs and reward scores were computed once."""
    pc, pr = policy_logps.chunk(2)  # (B,), (B,)
    rc, rr = data["ref_logps"][rows].to(pc.device).chunk(2)  # (B,), (B,)
    if method == "dpo":
        return dpo_loss(pc, pr, rc, rr, cfg.beta)
    if method == "ipo":
        return ipo_loss(pc, pr, rc, rr, cfg.beta)
    if method == "d-dpo":
        return distill_loss(pc, pr, rc, rr, *data["rm_plain"][rows].to(pc.device).chunk(2), cfg.beta)
    if method == "e-dpo":
        return pessimistic_distill_loss(pc, pr, rc, rr, *data["rm_family"][:, rows].to(pc.device).chunk(2, dim=1),
                                        cfg.beta, cfg.gamma)
    return pessimistic_dpo_loss(pc, pr, rc, rr, cfg.beta, cfg.gamma)


def batch_metrics(loss, policy_logps, rows, data, beta):
    """trl's names for the usual dpo diagnostics, plus the change of the log-probs from the reference."""
    pc, pr = policy_logps.detach().cpu().chunk(2)
    rc, rr = data["ref_logps"][rows].chunk(2)
    r_w, r_l = implicit_reward(pc, rc, beta), implicit_reward(pr, rr, beta)  # (B,), (B,)
    return {"loss": loss.item(), "rewards/chosen": r_w.mean().item(), "rewards/rejected": r_l.mean().item(),
            "rewards/margins": (r_w - r_l).mean().item(), "rewards/accuracies": (r_w > r_l).float().mean().item(),
            "logps/chosen": pc.mean().item(), "logps/rejected": pr.mean().item(),
            "logps/chosen_change": (pc - rc).mean().item(), "logps/rejected_change": (pr - rr).mean().item(),
            "kl/forward": forward_kl_estimate(pc, pr, rc, rr).item()}


def train_policy(reference, data, method, cfg, seed, device, log):
    """train a copy of the reference with `method` for cfg.steps steps; log(step, metrics) every log_every."""
    seed_everything(seed)
    policy = without_dropout(copy.deepcopy(reference).to(device).train())
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    n, rng = len(data["keep"]), np.random.default_rng([seed, METHODS.index(method)])
    bar = progress(range(1, cfg.steps + 1), f"train {method}")
    for step in bar:
        idx = rng.choice(n, cfg.batch_size, replace=False)  # (B,)
        rows = np.concatenate([idx, idx + n])  # (2B,): chosen rows, then rejected rows
        ids, mask, resp = batch_tensors(data, rows, device)  # (2B, T) each
        policy_logps = sequence_logps(forward(policy, ids, mask), ids, resp)  # (2B,)
        loss = policy_loss(method, policy_logps, rows, data, cfg)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"{method}: the loss became {loss.item()} at step {step}; try a lower --lr")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % cfg.log_every == 0 or step == cfg.steps:  # step 1: the policy is the reference
            metrics = batch_metrics(loss, policy_logps, rows, data, cfg.beta)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", margin=f"{metrics['rewards/margins']:.2f}")
            log(step, metrics)
    return policy.eval()


# -----------------------------------------------------------------------------
# 9. evaluation


def builtin_task(reference, tokenizer, cfg, bias, seed, device):
    """pairs sampled from pi_ref and labelled by the biased annotator; held-out prompts for evaluation."""
    rng = np.random.default_rng([seed, 1])
    prompts = make_prompts(rng, cfg.n_pairs, TITLES)
    seed_everything(seed)
    responses = sample(reference, tokenizer, prompts + prompts, cfg, device, "sample pairs from pi_ref")
    y1, y2 = responses[:cfg.n_pairs], responses[cfg.n_pairs:]
    gold1, gold2 = np.array([gold_reward(y) for y in y1]), np.array([gold_reward(y) for y in y2])
    len1, len2 = np.array([len(y.split()) for y in y1]), np.array([len(y.split()) for y in y2])
    coin = rng.random(cfg.n_pairs) < 0.5  # breaks ties
    # the annotator: with probability `bias` the longer response wins, otherwise the gold reward decides.
    # choice: the gold decision is the argmax (ties at random), so the length bias is the only label noise
    first_wins = np.where(rng.random(cfg.n_pairs) < bias, np.where(len1 == len2, coin, len1 > len2),
                          np.where(gold1 == gold2, coin, gold1 > gold2))
    chosen = [a if w else b for a, b, w in zip(y1, y2, first_wins)]
    rejected = [b if w else a for a, b, w in zip(y1, y2, first_wins)]
    return prompts, chosen, rejected, make_prompts(rng, cfg.n_eval, EVAL_TITLES)


def user_task(pairs, cfg, seed):
    """your pairs: a held-out tenth (at least one pair) gives the evaluation prompts and held-out pairs."""
    order = np.random.default_rng([seed, 1]).permutation(len(pairs))
    n_held = max(1, len(pairs) // 10)
    train, held = [pairs[i] for i in order[n_held:]], [pairs[i] for i in order[:n_held]]
    return [p for p, _, _ in train], [c for _, c, _ in train], [r for _, _, r in train], held


@torch.no_grad()
def evaluate(policy, reference, tokenizer, data, ev, cfg, seed, device):
    """gold reward, win rate and length of policy samples on held-out prompts; KL(pi || pi_ref) from those
    samples; and the change of the training pairs' log-probs and the implicit margins."""
    responses = sample(policy, tokenizer, ev["prompts"], cfg, device, "evaluate")
    samples = tokenize(tokenizer, ev["prompts"], responses, cfg.max_length)
    rows = np.arange(len(responses))
    res = {"kl": (all_logps(policy, samples, rows, device) - all_logps(reference, samples, rows, device)).mean().item(),
           "length": float(np.mean([len(r.split()) for r in responses]))}
    n = len(data["keep"])
    pc, pr = all_logps(policy, data, np.arange(2 * n), device).chunk(2)
    rc, rr = data["ref_logps"].chunk(2)
    margins = cfg.beta * logratio_margin(pc, pr, rc, rr)  # (N,)
    res.update(logps_chosen_change=(pc - rc).mean().item(), logps_rejected_change=(pr - rr).mean().item(),
               margin_mean=margins.mean().item(), margin_max=margins.max().item())
    if "ref_gold" in ev:
        gold = np.array([gold_reward(r) for r in responses])
        res.update(gold_reward=float(gold.mean()), gold_ref=float(ev["ref_gold"].mean()), length_ref=ev["ref_length"],
                   win_rate=float(np.mean((gold > ev["ref_gold"]) + 0.5 * (gold == ev["ref_gold"]))))
    if "held" in ev:
        held = ev["held"]
        hc, hr = all_logps(policy, held, np.arange(len(held["input_ids"])), device).chunk(2)
        res["heldout_accuracy"] = (logratio_margin(hc, hr, *held["ref_logps"].chunk(2)) > 0).float().mean().item()
    return res


def run_one(reference, tokenizer, cfg, bias, seed, device, pairs, records, log):
    """one (bias, seed): data, reference log-probs and reward scores once, then every method, whose results
    are appended to `records` as each finishes."""
    if pairs is None:
        prompts, chosen, rejected, eval_prompts = builtin_task(reference, tokenizer, cfg, bias, seed, device)
        seed_everything(seed + 7)
        ev = {"prompts": eval_prompts}
        ref_responses = sample(reference, tokenizer, eval_prompts, cfg, device, "sample pi_ref on held-out prompts")
        ev["ref_gold"] = np.array([gold_reward(r) for r in ref_responses])
        ev["ref_length"] = float(np.mean([len(r.split()) for r in ref_responses]))
    else:
        prompts, chosen, rejected, held = user_task(pairs, cfg, seed)
        ev = {"held": tokenize_pairs(tokenizer, *zip(*held), cfg.max_length)}
        ev["prompts"] = [held[i][0] for i in ev["held"]["keep"]]
        if not ev["prompts"]:
            raise UsageError(f"no held-out prompt fits in --max-length {cfg.max_length}; raise it or shorten the prompts")
        ev["held"]["ref_logps"] = all_logps(reference, ev["held"], np.arange(2 * len(ev["prompts"])), device)
    data = tokenize_pairs(tokenizer, prompts, chosen, rejected, cfg.max_length)
    if len(data["keep"]) < cfg.batch_size:
        raise UsageError(f"only {len(data['keep'])} usable training pairs, fewer than one batch; "
                         f"lower --batch-size or bring more pairs")
    n = len(data["keep"])
    if data["skipped"] or data["truncated"]:
        print(f"note: {data['truncated']} pairs truncated to --max-length {cfg.max_length}, "
              f"{data['skipped']} skipped (prompt alone too long)")
    data["ref_logps"] = all_logps(reference, data, np.arange(2 * n), device)  # (2N,), computed once
    kept = [(chosen[i], rejected[i]) for i in data["keep"]]
    longer_won = np.array([len(c.split()) > len(r.split()) for c, r in kept])
    data["rm_plain"], data["rm_family"] = reward_scores(reference, data, cfg, seed, device, longer_won)
    for method in cfg.method_list():
        t0 = time.time()
        reference.cpu()  # while a policy trains, only the policy is on the device
        policy = train_policy(reference, data, method, cfg, seed, device,
                              lambda step, m: log(dict(bias=bias, seed=seed, method=method, step=step, **m)))
        seconds = time.time() - t0
        reference.to(device)
        seed_everything(seed * 100 + METHODS.index(method))
        records.append(dict(bias=bias, seed=seed, method=method, train_seconds=seconds,
                            **evaluate(policy, reference, tokenizer, data, ev, cfg, seed, device)))
        del policy
    return dict(pairs=n, skipped=data["skipped"], truncated=data["truncated"], longer_won=float(longer_won.mean()))


# -----------------------------------------------------------------------------
# 10. main: outputs, figures and the table

KEYS = ["gold_reward", "win_rate", "length", "kl", "gold_ref", "length_ref", "logps_chosen_change", "logps_rejected_change",
        "margin_mean", "margin_max", "heldout_accuracy", "train_seconds"]


def summarize(records):
    """mean and sample standard deviation over seeds, per (bias, method)."""
    groups = {}
    for r in records:
        groups.setdefault((r["bias"], r["method"]), []).append(r)
    def std(v):  # sample standard deviation; 0 for a single seed
        return np.std(v, ddof=1) if len(v) > 1 else 0.0
    return [dict(bias=b, method=m, seeds=len(rs), **{f"{k}_{s}": float(f([r[k] for r in rs]))
            for k in KEYS if k in rs[0] for s, f in (("mean", np.mean), ("std", std))})
            for (b, m), rs in groups.items()]


def print_table(summary):
    cols = [("gold_reward", "gold"), ("win_rate", "win"), ("length", "len"), ("kl", "KL"),
            ("logps_chosen_change", "dlogp_w"), ("logps_rejected_change", "dlogp_l"), ("margin_max", "margin_max"),
            ("heldout_accuracy", "acc")]
    cols = [(k, name) for k, name in cols if f"{k}_mean" in summary[0]]
    print(f"{'bias':>5} {'method':<6} " + " ".join(f"{name:>15}" for _, name in cols))
    for s in summary:
        if "gold_ref_mean" in s and s["method"] == summary[0]["method"]:
            print(f"{s['bias']:>5.2f} {'pi_ref':<6} {s['gold_ref_mean']:>15.3f} {0.5:>15.3f} {s['length_ref_mean']:>15.3f}")
        cells = [f"{s[k + '_mean']:.3f}" + (f" ±{s[k + '_std']:.3f}" if s["seeds"] > 1 else "") for k, _ in cols]
        print(f"{s['bias']:>5.2f} {s['method']:<6} " + " ".join(f"{c:>15}" for c in cells))


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)  # whole or not at all


def check_writable(out):
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out!r} ({e.strerror}); choose a folder you can write to") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to --out {out!r} (permission denied); choose a folder you can write to")


def new_run_dir(out):
    """a fresh run-NNN folder inside --out: earlier results are never overwritten."""
    try:
        taken = [int(d[4:]) for d in os.listdir(out) if d.startswith("run-") and d[4:].isdigit()]
        path = os.path.join(out, f"run-{max(taken, default=0) + 1:03d}")
        os.makedirs(path)
        return path
    except OSError as e:
        raise UsageError(f"cannot write to --out {out!r} ({e.strerror}); choose a folder you can write to") from None


def plot(results, run_dir, curves):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for method, rows in curves.items():
        steps = [r["step"] for r in rows]
        for ax, key in zip(axes, ["logps/chosen_change", "logps/rejected_change", "rewards/margins"]):
            ax.plot(steps, [r[key] for r in rows], label=method)
    for ax, title in zip(axes, ["log pi(chosen) - log pi_ref(chosen)", "log pi(rejected) - log pi_ref(rejected)",
                                "implicit reward margin (batch mean)"]):
        ax.set(title=title, xlabel="step")
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "curves.png"), dpi=110)
    summary = [s for s in results["summary"] if s["bias"] == results["summary"][0]["bias"]]
    keys = [k for k in ("gold_reward", "win_rate", "length", "kl", "heldout_accuracy") if f"{k}_mean" in summary[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.4))
    for ax, k in zip(np.atleast_1d(axes), keys):
        ax.bar([s["method"] for s in summary], [s[f"{k}_mean"] for s in summary],
               yerr=[s[f"{k}_std"] for s in summary], color=[f"C{METHODS.index(s['method'])}" for s in summary])
        ax.set_title(k.replace("_", " "))
    seeds = summary[0]["seeds"]
    fig.suptitle(f"bias {summary[0]['bias']}, " + (f"mean and sd over {seeds} seeds" if seeds > 1 else "one seed"))
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "comparison.png"), dpi=110)
    if len({s["bias"] for s in results["summary"]}) > 1:
        plot_sweep(results["summary"], run_dir, plt)
    plt.close("all")


def plot_sweep(summary, run_dir, plt):
    """the headline figure: gold win rate and length against the annotator's length bias."""
    keys = [k for k in ("win_rate", "length") if f"{k}_mean" in summary[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4))
    for method in dict.fromkeys(s["method"] for s in summary):
        rows = [s for s in summary if s["method"] == method]
        for ax, k in zip(np.atleast_1d(axes), keys):
            ax.errorbar([s["bias"] for s in rows], [s[f"{k}_mean"] for s in rows], yerr=[s[f"{k}_std"] for s in rows],
                        label=method, marker="o", capsize=3, color=f"C{METHODS.index(method)}")
    ref = [s for s in summary if s["method"] == summary[0]["method"]]
    labels = {"win_rate": "gold win rate against pi_ref's samples", "length": "mean response length (words)"}
    for ax, k in zip(np.atleast_1d(axes), keys):
        if k == "win_rate":
            ax.axhline(0.5, color="grey", ls="--", lw=1, label="pi_ref")
        elif "length_ref_mean" in ref[0]:
            ax.plot([s["bias"] for s in ref], [s["length_ref_mean"] for s in ref], "--", color="grey", label="pi_ref")
        ax.set(xlabel="share of labels from the length-biased annotator", ylabel=labels[k])
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(f"mean and sd over {summary[0]['seeds']} seeds" if summary[0]["seeds"] > 1 else "one seed")
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "sweep.png"), dpi=110)


def run(cfg):
    """the whole experiment; returns (results, run folder)."""
    validate(cfg)
    device = pick_device(cfg.device)
    pairs = read_pairs(cfg.data) if cfg.data else None
    if pairs is not None and len(pairs) < 2:
        raise UsageError(f"--data {cfg.data!r} holds {len(pairs)} pairs; at least 2 are needed")
    check_writable(cfg.out)
    reference, tokenizer = load_reference(cfg, device)
    run_dir = new_run_dir(cfg.out)
    print(f"writing to {run_dir} (device {device})")
    results = dict(config=dataclasses.asdict(cfg), device=str(device), runs=[], data=[])
    curves, t0 = {}, time.time()
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as fh:
        def log(row):
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            tqdm.write(f"bias {row['bias']:.2f} seed {row['seed']} {row['method']:<5} step {row['step']:>4}  "
                       f"loss {row['loss']:8.4f}  margin {row['rewards/margins']:7.3f}  "
                       f"acc {row['rewards/accuracies']:.2f}  dlogp chosen {row['logps/chosen_change']:7.2f}  "
                       f"rejected {row['logps/rejected_change']:7.2f}")
            if row["seed"] == cfg.seeds[0] and row["bias"] == sweep_bias_list(cfg)[0]:
                curves.setdefault(row["method"], []).append(row)
        try:
            for bias in sweep_bias_list(cfg):
                for seed in cfg.seeds:
                    info = run_one(reference, tokenizer, cfg, bias, seed, device, pairs, results["runs"], log)
                    results["data"].append(dict(bias=bias, seed=seed, **info))
        finally:  # on a diverged loss too, keep what was finished
            results.update(summary=summarize(results["runs"]) if results["runs"] else [],
                           seconds=time.time() - t0, curves=curves)
            write_json(os.path.join(run_dir, "results.json"), results)
    plot(results, run_dir, curves)
    print_table(results["summary"])
    print(f"done in {time.time() - t0:.0f} s; results, metrics and figures in {run_dir}")
    return results, run_dir


def main(argv=None):
    cfg = parse_args(argv)
    try:
        run(cfg)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
