"""
rddpo: reward-distilled DPO in one readable file.

Companion code for "Robust Preference Optimization through Reward Model Distillation"
(Fisch et al., TMLR 2025, https://arxiv.org/abs/2405.19316). Read it top to bottom beside the paper:

  1. configuration        2. the task: prompts, gold reward, annotator    3. models
  4. tokenisation and sequence log-probs          5. implicit reward     6. reward models and the family
  7. the losses and the forward-KL estimate      8. training    9. evaluation    10. main

    python rddpo.py                 # offline: builds and pretrains a small GPT-2, then runs the experiment
    python rddpo.py --model gpt2    # the same on real GPT-2 (needs the Hugging Face hub or a local copy)

The math, and every choice made where the paper is silent (marked `choice:` below), is in docs/METHOD.md.
What does not teach the method (flags, checks, sampling loops, run folders, tables, figures) is in report.py.
"""
import copy
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import grid
import report
from report import UsageError, pad, progress, sample, seed_everything
from task import (EVAL_TITLES, GOLDS, MAX_SENTENCES, NEGATIVE, NEUTRAL, POSITIVE, TITLES, annotate,  # noqa: F401
                  build_tokenizer, gold_reward, label_pairs, longest_task_tokens, make_prompts, make_review, reviews,
                  words)

METHODS = ("dpo", "ipo", "d-dpo", "e-dpo", "p-dpo")
N_SHOW = 8  # held-out prompts whose responses go to samples.jsonl

# -----------------------------------------------------------------------------
# 1. configuration

QUICK = dict(n_pairs=64, n_eval=32, rm_steps=15, steps=15, log_every=5, eval_points=3)  # --quick (and report.sft_steps)


@dataclass
class Config:
    model: str = field(default="tiny", metadata={"help": "'tiny' builds and pretrains a small GPT-2 offline; "
                                                 "or a causal LM name or local path for from_pretrained, e.g. gpt2"})
    methods: str = field(default=",".join(METHODS), metadata={"help": "comma list of methods to train (any case)"})
    bias: float = field(default=0.5, metadata={"help": "probability that the annotator prefers the longer response"})
    gold: str = field(default="careful", metadata={"help": "the gold reader (task.py): careful, whom verbosity and "
                                                   "repetition put off, or the length-blind neutral control",
                                                   "choices": GOLDS})
    seeds: list = field(default_factory=lambda: [0], metadata={"help": "one or more seeds (data, reward models, policies)"})
    beta: float = field(default=0.1, metadata={"help": "KL strength: implicit reward = beta * log(pi / pi_ref)"})
    # choice: one gamma serves e-DPO and p-DPO, though p-DPO needs it away from 0 and e-DPO only to break ties
    gamma: float = field(default=0.1, metadata={"help": "weight of the forward-KL penalty in e-DPO and p-DPO"})
    ensemble: int = field(default=4, metadata={"help": "K, the number of reward models in the e-DPO family"})
    steps: int = field(default=150, metadata={"help": "policy training steps per method"})
    batch_size: int = field(default=16, metadata={"help": "preference pairs per step"})
    lr: float = field(default=None, metadata={"type": float, "help": "policy learning rate (AdamW); default: 1e-4 for "
                      "the tiny model, 1e-4 x 64 / its width for a --model (report.learning_rate)"})
    rm_steps: int = field(default=150, metadata={"help": "training steps per reward model"})
    rm_lr: float = field(default=3e-4, metadata={"help": "reward-model learning rate (AdamW)"})
    n_pairs: int = field(default=512, metadata={"help": "training pairs sampled from the reference (built-in task)"})
    n_eval: int = field(default=128, metadata={"help": "held-out prompts for evaluation"})
    max_length: int = field(default=64, metadata={"help": "tokens per prompt+response; longer responses are truncated"})
    max_new_tokens: int = field(default=40, metadata={"help": "longest sampled response"})
    dtype: str = field(default="float32", metadata={"help": "bfloat16 runs the forward passes under autocast (weights "
                                                    "and optimizer stay float32): faster on a gpu", "choices": report.DTYPES})
    device: str = field(default="auto", metadata={"help": "auto takes cuda, then mps, then cpu", "choices": report.DEVICES})
    out: str = field(default="runs", metadata={"help": "output folder: each run writes a new run-NNN folder inside"})
    data: str = field(default="", metadata={"help": "your own pairs: JSON lines with prompt, chosen, rejected"})
    sweep: bool = field(default=False, metadata={"help": "run every bias in --sweep-biases and draw the headline figure"})
    sweep_biases: str = field(default="0,0.25,0.5,0.75,1", metadata={"help": "bias values for --sweep"})
    grid: list = field(default_factory=list, metadata={"help": "knob=a,b,...: the comparison at each value (grid.py)"})
    quick: bool = field(default=False, metadata={"help": "on the command line, a tiny budget; flags given beside it win: "
                                                 + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items())})
    n_layer: int = field(default=2, metadata={"help": "tiny model: layers"})
    n_embd: int = field(default=64, metadata={"help": "tiny model: width"})
    n_head: int = field(default=4, metadata={"help": "tiny model: attention heads"})
    sft_steps: int = field(default=None, metadata={"type": int, "help": "steps of supervised fine-tuning of pi_ref, "
                           f"cached in --out: on the task's reviews (default {report.TASK_SFT_STEPS}, {report.QUICK_SFT_STEPS} "
                           "under --quick), or with --data on a --model on each seed's training chosen responses (default 0)"})
    # choice: unlabelled pairs feed distillation only (d-DPO, e-DPO): DPO, IPO and p-DPO need the labels
    unlabeled: int = field(default=0, metadata={"help": "pairs sampled from pi_ref, unlabelled, that d-DPO and e-DPO "
                                                "distil on besides the labelled ones (the paper's rho)"})
    log_every: int = field(default=25, metadata={"help": "steps between logged training lines"})
    eval_points: int = field(default=4, metadata={"help": "evaluations along training, evenly spaced, the last at the end"})
    chat_template: bool = field(default=False, metadata={"help": "--data: wrap each prompt in the model's chat template "
                                                         "(for instruct models)"})
    save_policy: bool = field(default=False, metadata={"help": "write each trained policy as a model folder in its run"})

    def method_list(self):
        return [m.strip().lower() for m in self.methods.split(",") if m.strip()]


def parse_args(argv=None):
    """(Config, names of the flags given on the command line)."""
    return report.parse_config(Config, argv, __doc__.split("\n")[1], QUICK)


# -----------------------------------------------------------------------------
# 2. the task, in task.py: short movie reviews, two gold readers (careful, and the neutral control), the biased annotator

# -----------------------------------------------------------------------------
# 3. models


def build_tiny_gpt2(tokenizer, n_layer, n_embd, n_head, n_positions):
    from transformers import GPT2Config, GPT2LMHeadModel
    eos = tokenizer.eos_token_id
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd,
                                      n_layer=n_layer, n_head=n_head, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos))


def load_reference(cfg, device, check=lambda tokenizer: None):
    """the frozen reference pi_ref and its tokenizer. on the built-in task the tiny gpt-2 built in code, or a hub model
    or folder, is first fine-tuned for --sft-steps on the task's reviews (pi_ref is a supervised model), cached in --out
    by model and settings; --max-length and check(tokenizer) run first. choice: learning rate 3e-3 (tiny), else 1e-4."""
    tiny, steps = cfg.model == "tiny", report.sft_steps(cfg)
    model, tokenizer = (None, build_tokenizer()) if tiny else report.load_pretrained(cfg.model, cfg.max_length)
    if (tiny or not cfg.data) and cfg.max_length < (need := longest_task_tokens(tokenizer)):  # fine-tuning reads it too
        raise UsageError(f"--max-length {cfg.max_length} cannot hold the task's longest prompt and review "
                         f"({need} tokens); raise it")
    check(tokenizer)
    if not tiny and (cfg.data or steps == 0):  # your data (fine-tuned per seed, data_reference), or the model as it is
        return model.to(device).eval(), tokenizer
    def build():
        seed_everything(1234)
        base = build_tiny_gpt2(tokenizer, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.max_length) if tiny else model
        return report.pretrain(base.to(device), tokenizer, reviews, steps, device, lr=3e-3 if tiny else 1e-4), tokenizer
    name = f"L{cfg.n_layer}-E{cfg.n_embd}-H{cfg.n_head}" if tiny else report.slug(cfg.model)
    model, tokenizer = report.cached_model(os.path.join(cfg.out, f"reference-{name}-T{cfg.max_length}-S{steps}"), build)
    return model.to(device).eval(), tokenizer


def forward(model, input_ids, attention_mask):
    """logits (B, T, V); positions count real tokens only, so left and right padding agree."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits


# -----------------------------------------------------------------------------
# 4. tokenisation and sequence log-probs


@dataclass
class Tokens:
    """(prompt, response) rows as padded token ids. N rows, T the longest row."""
    input_ids: torch.Tensor       # (N, T)
    attention_mask: torch.Tensor  # (N, T): 1 on real tokens
    response_mask: torch.Tensor   # (N, T): 1 on the response's tokens and its eos
    truncated: torch.Tensor       # (N,) bool: the response was cut at max_length
    side: str = "right"           # where the padding is


@dataclass
class Pairs:
    """preference pairs, tokenised once; what is computed once before policy training is filled in later."""
    tokens: Tokens                  # (2N, T): the N chosen rows, then the N rejected rows
    keep: list                      # indices of the given pairs that were kept (their prompt fits)
    skipped: int                    # pairs dropped because the prompt alone fills the context
    n_truncated: int                # pairs with a truncated chosen or rejected response
    labelled: int = None            # the first `labelled` pairs carry labels; the rest (--unlabeled) only scores
    ref_logps: torch.Tensor = None  # (2N,) log pi_ref(y|x)
    rm_plain: torch.Tensor = None   # (2N,) scores of the plain reward model (d-DPO)
    rm_family: torch.Tensor = None  # (K, 2N) scores of each family member (e-DPO)
    pool: Tokens = None             # (P, T) responses sampled from pi_ref for the forward-KL term (e-DPO, p-DPO)
    pool_ref_logps: torch.Tensor = None  # (P,) their log pi_ref


def encode(tokenizer, prompt, response, max_length):
    """(prompt ids, response ids + eos, truncated?) or None when the prompt alone fills the context."""
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    full = tokenizer(prompt + response, add_special_tokens=False).input_ids
    # a merge across the boundary (bpe) would shift tokens between prompt and response; then tokenise
    # the two apart so that the response mask stays exact
    r = full[len(p):] if full[:len(p)] == p else tokenizer(response, add_special_tokens=False).input_ids
    r = r + [tokenizer.eos_token_id]
    return None if len(p) >= max_length else (p, r[:max_length - len(p)], len(p) + len(r) > max_length)


def token_rows(prompt_ids, response_ids, pad_id, side="right", truncated=None):
    """lists of prompt ids and response ids -> Tokens, the response mask on the response ids only."""
    ids, mask, resp = pad([p + r for p, r in zip(prompt_ids, response_ids)], pad_id, side,
                          [[[0] * len(p) + [1] * len(r) for p, r in zip(prompt_ids, response_ids)]])  # (N, T) each
    return Tokens(ids, mask, resp, torch.tensor(truncated or [False] * len(ids), dtype=torch.bool), side)


def tokenize(tokenizer, prompts, responses, max_length, side="right"):
    """(prompt, response) texts -> Tokens; every prompt must fit in max_length."""
    p, r, cut = zip(*[encode(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)])
    return token_rows(p, r, tokenizer.eos_token_id, side, list(cut))


def tokenize_pairs(tokenizer, prompts, chosen, rejected, max_length, side="right"):
    """pairs -> Pairs; pairs whose prompt alone fills the context are skipped."""
    keep = [i for i, p in enumerate(prompts) if report.fits(tokenizer, p, max_length)]
    tokens = tokenize(tokenizer, [prompts[i] for i in keep] * 2,
                      [chosen[i] for i in keep] + [rejected[i] for i in keep], max_length, side)
    cut = tokens.truncated[:len(keep)] | tokens.truncated[len(keep):]  # (N,)
    return Pairs(tokens, keep, len(prompts) - len(keep), int(cut.sum()), labelled=len(keep))


def sequence_logps(logits, input_ids, response_mask):
    """sum over response tokens t of log softmax(logits[:, t-1])[input_ids[:, t]], in float32.
    logits (B, T, V), input_ids (B, T), response_mask (B, T) -> (B,)"""
    logps = logits[:, :-1].float().log_softmax(-1)  # (B, T-1, V): position t-1 predicts token t
    token_logps = logps.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    # where, not a product: logits at padded positions may be nan, and nan * 0 is nan
    return torch.where(response_mask[:, 1:].bool(), token_logps, 0.0).sum(-1)  # (B,)


def batch_tensors(tokens, rows, device):
    """input_ids, attention_mask, response_mask of the rows (2B, T), cut to their longest sequence, on the device."""
    rows = torch.as_tensor(rows)
    T = int(tokens.attention_mask[rows].sum(1).max()) if tokens.side == "right" else None
    return tuple(t[rows, :T].to(device) for t in (tokens.input_ids, tokens.attention_mask, tokens.response_mask))


@torch.no_grad()
def all_logps(model, tokens, rows, device, batch_size=64):
    """sequence log-probs of the given rows, in batches -> (len(rows),) on the cpu."""
    out = []
    for i in range(0, len(rows), batch_size):
        ids, mask, resp = batch_tensors(tokens, rows[i:i + batch_size], device)
        out.append(sequence_logps(forward(model, ids, mask), ids, resp).cpu())
    return torch.cat(out)


@torch.no_grad()
def sequence_kl(policy, reference, tokens, device, batch_size=16):
    """KL(pi || pi_ref) of each response, summed over its positions t of KL(pi(. | y<t) || pi_ref(. | y<t)) over the
    whole vocabulary, and its log-ratio log pi(y) - log pi_ref(y): (N,), (N,). each term is >= 0, and over samples
    of pi the mean is an unbiased estimate of the KL between whole responses (the chain rule)."""
    kl, logratio = [], []
    for i in range(0, len(tokens.input_ids), batch_size):
        ids, mask, resp = batch_tensors(tokens, np.arange(i, min(i + batch_size, len(tokens.input_ids))), device)
        lp = forward(policy, ids, mask)[:, :-1].float().log_softmax(-1)  # (b, T-1, V): position t-1 predicts t
        lq = forward(reference, ids, mask)[:, :-1].float().log_softmax(-1)  # (b, T-1, V)
        on, p = resp[:, 1:].bool(), lp.exp()  # (b, T-1), (b, T-1, V)
        kl.append(torch.where(on, torch.where(p > 0, p * (lp - lq), 0.0).sum(-1), 0.0).sum(-1).cpu())  # (b,): 0 log 0 = 0
        drawn = (lp - lq).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (b, T-1)
        logratio.append(torch.where(on, drawn, 0.0).sum(-1).cpu())  # (b,)
    return torch.cat(kl), torch.cat(logratio)


# -----------------------------------------------------------------------------
# 5. implicit reward


def implicit_reward(policy_logps, reference_logps, beta):
    """r_theta(x, y) = beta * (log pi_theta(y|x) - log pi_ref(y|x)); exactly 0 while pi_theta = pi_ref."""
    return beta * (policy_logps - reference_logps)


def logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
    """h = log-ratio of the chosen minus that of the rejected response; the implicit margin is beta * h."""
    return (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)


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
        with torch.autocast(hidden.device.type, enabled=False):  # the reward in float32, under --dtype bfloat16 too
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


def reward_model_loss(chosen_rewards, rejected_rewards, center=0.01):
    """bradley-terry plus center * mean((r_w + r_l)^2).
    choice: the small centering term pins the free offset of bradley-terry rewards."""
    centering = ((chosen_rewards + rejected_rewards) ** 2).mean()
    return bradley_terry_loss(chosen_rewards, rejected_rewards) + center * centering


def train_reward_model(reference, pairs, pair_idx, steps, lr, batch_size, seed, device, desc):
    """bradley-terry training on the given pairs (indices may repeat: a resample)."""
    seed_everything(seed)
    rm = without_dropout(RewardModel(reference).to(device).train())
    opt = torch.optim.AdamW(rm.parameters(), lr=lr)
    n, rng = len(pairs.keep), np.random.default_rng(seed)
    for _ in progress(range(steps), desc):
        idx = pair_idx[rng.integers(len(pair_idx), size=batch_size)]  # (B,)
        r = rm(*batch_tensors(pairs.tokens, np.concatenate([idx, idx + n]), device)[:2])  # (2B,)
        loss = reward_model_loss(*r.chunk(2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rm.eval()


def family_shares(k):
    """choice: member k sees the share k/(K-1) of 'longer response preferred' pairs, spread over [0, 1], so
    that the members disagree along the axis of the bias the task plants: length."""
    return [0.5] if k == 1 else [i / (k - 1) for i in range(k)]


def resample_by_length_share(longer_won, share, rng):
    """a resample of all pair indices in which `share` of the pairs are ones the longer response won."""
    n = len(longer_won)
    long_idx, short_idx = np.flatnonzero(longer_won), np.flatnonzero(~longer_won)
    n_long = int(round(share * n)) if len(long_idx) and len(short_idx) else (n if len(long_idx) else 0)
    return np.concatenate([rng.choice(long_idx, n_long), rng.choice(short_idx, n - n_long)]).astype(np.int64)


@torch.no_grad()
def score(rm, tokens, device, batch_size=64):
    """reward of every tokenised sequence -> (N,) on the cpu."""
    rows = np.arange(len(tokens.input_ids))  # (N,)
    return torch.cat([rm(*batch_tensors(tokens, rows[i:i + batch_size], device)[:2]).cpu()
                      for i in range(0, len(rows), batch_size)])


def reward_scores(reference, pairs, held, cfg, seed, device, longer_won):
    """train the plain reward model and the family, score every training pair once, and free the models.
    returns (2N,) plain rewards, (K, 2N) family rewards, and each model's diagnostics on the held-out pairs.
    choice: the plain model (d-DPO) sees all pairs as labelled."""
    fit = dict(steps=cfg.rm_steps, lr=cfg.rm_lr, batch_size=cfg.batch_size, device=device)
    idx = [np.arange(pairs.labelled)] + [resample_by_length_share(longer_won, share, np.random.default_rng([seed, k]))
                                          for k, share in enumerate(family_shares(cfg.ensemble))]
    scores, diagnostics = [], []
    for k, share in enumerate([None] + family_shares(cfg.ensemble)):
        rm = train_reward_model(reference, pairs, idx[k], seed=seed if k == 0 else seed * 1000 + k, **fit,
                                desc="reward model" + (f" {k} (longer-wins share {share:.2f})" if k else ""))
        scores.append(score(rm, pairs.tokens, device))  # (2N,)
        diagnostics.append(dict(model=f"member {k}" if k else "plain", share=share, **report.reward_model_stats(
            score(rm, held.pairs.tokens, device), scores[-1], held.chosen, held.rejected,
            (lambda y: gold_reward(y, held.gold)) if held.gold else None, cfg.beta)))
        del rm
    return scores[0], torch.stack(scores[1:]), diagnostics  # (2N,), (K, 2N), K + 1 dicts


# -----------------------------------------------------------------------------
# 7. the losses and the forward-KL estimate: pure functions of (B,) log-prob tensors, batch means


def forward_kl_estimate(policy_pool_logps, reference_pool_logps):
    """KL(pi_ref || pi) ~ mean of log pi_ref(y) - log pi(y) over responses y sampled from pi_ref, (P,) each.
    choice: y come from a pool drawn from pi_ref once before training, each used once. on a fixed set reused every
    epoch (say the pairs' own responses) the mean is not a KL: raising those responses' likelihood without bound
    (memorising them) lowers it, while the true KL is smallest at pi = pi_ref."""
    return (reference_pool_logps - policy_pool_logps).mean()


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """mean( -log sigmoid(beta * h) )"""
    h = logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return -F.logsigmoid(beta * h).mean()


def ipo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """mean( (h - 1 / (2 beta))^2 ). choice: h sums over tokens, as in every other loss here, so one beta means
    the same thing in all of them (trl's ipo averages per token)."""
    h = logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return ((h - 1 / (2 * beta)) ** 2).mean()


def distill_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                 rm_chosen_rewards, rm_rejected_rewards, beta):
    """d-DPO: mean( (r(x, y_w) - r(x, y_l) - beta * h)^2 ), one reward model, rewards (B,)"""
    h = logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return ((rm_chosen_rewards - rm_rejected_rewards - beta * h) ** 2).mean()


def distill_member_losses(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                          reference_rejected_logps, rm_chosen_rewards, rm_rejected_rewards, beta):
    """the d-DPO loss against each of K reward models: mean_b( (dr_kb - beta * h_b)^2 ), rewards (K, B) -> (K,)"""
    h = logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return ((rm_chosen_rewards - rm_rejected_rewards - beta * h) ** 2).mean(-1)  # (K,)


def pessimistic_distill_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                             reference_rejected_logps, rm_chosen_rewards, rm_rejected_rewards, beta, gamma,
                             policy_pool_logps, reference_pool_logps):
    """e-DPO: min_k mean_b( (dr_kb - beta * h_b)^2 ) + gamma * KL(pi_ref || pi), rewards (K, B), pool log-probs (P,).
    choice: the min is over the batch-level losses; a per-pair min would let each pair pick its easiest member."""
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    per_member = distill_member_losses(*logps, rm_chosen_rewards, rm_rejected_rewards, beta)  # (K,)
    return per_member.min() + gamma * forward_kl_estimate(policy_pool_logps, reference_pool_logps)


def pessimistic_dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps, beta, gamma, policy_pool_logps, reference_pool_logps):
    """p-DPO: mean( -log sigmoid(beta * h) ) + gamma * KL(pi_ref || pi), pool log-probs (P,)"""
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return dpo_loss(*logps, beta) + gamma * forward_kl_estimate(policy_pool_logps, reference_pool_logps)


# -----------------------------------------------------------------------------
# 8. training: the pairs, prepared once, then the policy


@dataclass
class HeldOut:
    """what every policy and every reward model is evaluated on: held-out prompts (P) and pairs on them (M)."""
    prompts: list                     # held-out prompts to sample responses for
    chosen: list                      # the held-out pairs' texts, labelled as the training pairs are
    rejected: list
    pairs: Pairs                      # the same pairs, tokenised, with their ref_logps
    ref_samples: Tokens = None        # (P, T) pi_ref's own response to each prompt
    ref_samples_logps: torch.Tensor = None  # (P,) their log pi_ref
    gold: str = None                  # the gold reader (built-in task); None on your own data
    ref_gold: np.ndarray = None       # (P,) gold reward of pi_ref's response per prompt (built-in task)
    ref_length: float = None          # pi_ref's mean response length in words (built-in task)
    ref_shown: list = None            # pi_ref's responses to the first N_SHOW prompts, as samples.jsonl rows


def builtin_task(reference, tokenizer, cfg, bias, seed, device):
    """pairs sampled from pi_ref and labelled by the biased annotator; held-out prompts with pi_ref's sample for
    each (the baseline), and pairs of it with a second sample labelled alike. -> (prompts, chosen, rejected, HeldOut)"""
    rng, gen = np.random.default_rng([seed, 1]), dict(max_new_tokens=cfg.max_new_tokens, max_length=cfg.max_length)
    prompts = make_prompts(rng, cfg.n_pairs, TITLES)
    seed_everything(seed)
    responses = sample(reference, tokenizer, prompts + prompts, device=device, desc="sample pairs from pi_ref", **gen).texts
    chosen, rejected = label_pairs(responses[:cfg.n_pairs], responses[cfg.n_pairs:], bias, rng, cfg.gold)
    eval_prompts = make_prompts(rng, cfg.n_eval, EVAL_TITLES)
    seed_everything(seed + 7)
    ref = sample(reference, tokenizer, eval_prompts, device=device, desc="pi_ref, held-out", **gen)
    other = sample(reference, tokenizer, eval_prompts, device=device, desc="pi_ref, held-out pairs", **gen).texts
    gold = lambda y: gold_reward(y, cfg.gold)  # noqa: E731
    ev = held_out(eval_prompts, *label_pairs(ref.texts, other, bias, np.random.default_rng([seed, 2]), cfg.gold),
                  reference, tokenizer, cfg.max_length, device, ref, gold=cfg.gold,
                  ref_gold=np.array([gold(y) for y in ref.texts]), ref_length=float(np.mean([len(words(y)) for y in ref.texts])),
                  ref_shown=report.sample_rows(eval_prompts[:N_SHOW], ref, tokenizer.eos_token_id, gold))
    return prompts, chosen, rejected, ev


def held_out(prompts, chosen, rejected, reference, tokenizer, max_length, device, ref, **baseline):
    """HeldOut of held-out pairs (prompts, chosen, rejected) and pi_ref's responses `ref` (Sampled) to the prompts,
    all scored by pi_ref once; the pairs' prompts are the ones the policies answer."""
    pairs = tokenize_pairs(tokenizer, prompts, chosen, rejected, max_length)
    pairs.ref_logps = all_logps(reference, pairs.tokens, np.arange(2 * len(pairs.keep)), device)  # (2M,)
    samples = token_rows([ref.prompt_ids[i] for i in pairs.keep], [ref.response_ids[i] for i in pairs.keep],
                         tokenizer.eos_token_id)  # (P, T), exactly the ids drawn
    return HeldOut(*([x[i] for i in pairs.keep] for x in (prompts, chosen, rejected)), pairs=pairs, ref_samples=samples,
                   ref_samples_logps=all_logps(reference, samples, np.arange(len(pairs.keep)), device), **baseline)


def user_task(pairs, reference, tokenizer, cfg, seed, device):
    """your pairs -> (prompts, chosen, rejected) of the training split, and a HeldOut of the held-out split."""
    train, held = report.split_pairs(pairs, seed)
    held = [row for row in held if report.fits(tokenizer, row[0], cfg.max_length)]
    seed_everything(seed + 7)
    drawn = sample(reference, tokenizer, [row[0] for row in held], cfg.max_new_tokens, cfg.max_length, device, "pi_ref")
    ev = held_out(*([row[i] for row in held] for i in range(3)), reference, tokenizer, cfg.max_length, device, drawn)
    ev.ref_shown = report.sample_rows(ev.prompts[:N_SHOW], drawn, tokenizer.eos_token_id)
    return (*([row[i] for row in train] for i in range(3)), ev)


def drawn_pairs(reference, tokenizer, prompts, cfg, seed, device):
    """--unlabeled: two responses from pi_ref to each of cfg.unlabeled prompts (the built-in task's, or the training
    prompts in turn). -> (prompts, first, second). no one labels them: distillation needs only the reward models."""
    extra = make_prompts(np.random.default_rng([seed, 3]), cfg.unlabeled, TITLES) if cfg.data == "" \
        else [prompts[i % len(prompts)] for i in range(cfg.unlabeled)]
    seed_everything(seed + 13)
    drawn = sample(reference, tokenizer, extra + extra, cfg.max_new_tokens, cfg.max_length, device, "unlabelled pairs").texts
    return extra, drawn[:cfg.unlabeled], drawn[cfg.unlabeled:]


def kl_pool(reference, tokenizer, prompts, cfg, seed, device):
    """the forward-KL term's sample: steps * batch_size responses drawn from pi_ref on the training prompts in turn,
    once before training, so that each is used once. -> Tokens (P, T), their log pi_ref (P,)"""
    seed_everything(seed + 11)
    drawn = sample(reference, tokenizer, [prompts[i % len(prompts)] for i in range(cfg.steps * cfg.batch_size)],
                   cfg.max_new_tokens, cfg.max_length, device, "forward-KL pool from pi_ref")
    pool = token_rows(drawn.prompt_ids, drawn.response_ids, tokenizer.eos_token_id)  # (P, T): exactly the ids drawn
    return pool, all_logps(reference, pool, np.arange(len(drawn.texts)), device)


def prepare(reference, tokenizer, cfg, bias, seed, device, user_pairs):
    """one (bias, seed)'s training pairs with reference log-probs, reward scores and the forward-KL pool, its HeldOut,
    what results.json keeps of the data (pairs, unlabeled, skipped, truncated, longer_won, heldout_pairs) and the
    reward models' diagnostics."""
    prompts, chosen, rejected, ev = builtin_task(reference, tokenizer, cfg, bias, seed, device) if user_pairs is None \
        else user_task(user_pairs, reference, tokenizer, cfg, seed, device)
    distil, fit = {"d-dpo", "e-dpo"} & set(cfg.method_list()), report.fitting(tokenizer, prompts, cfg.max_length)
    extra = drawn_pairs(reference, tokenizer, fit, cfg, seed, device) if cfg.unlabeled and distil else ([], [], [])
    pairs = tokenize_pairs(tokenizer, prompts + extra[0], chosen + extra[1], rejected + extra[2], cfg.max_length)
    pairs.labelled = sum(i < len(prompts) for i in pairs.keep)  # kept pairs are in order: the labelled ones first
    report.note_cut(pairs.n_truncated, pairs.skipped, cfg.max_length)
    pairs.ref_logps = all_logps(reference, pairs.tokens, np.arange(2 * len(pairs.keep)), device)  # (2N,), computed once
    longer_won = np.array([len(words(chosen[i])) > len(words(rejected[i])) for i in pairs.keep[:pairs.labelled]])  # (N,)
    diagnostics = []
    if distil:  # reward models only for the methods that distil them, trained on the labelled pairs only
        pairs.rm_plain, pairs.rm_family, diagnostics = reward_scores(reference, pairs, ev, cfg, seed, device, longer_won)
    if {"e-dpo", "p-dpo"} & set(cfg.method_list()):  # sampled on the prompts that leave room for a response
        pairs.pool, pairs.pool_ref_logps = kl_pool(reference, tokenizer, fit, cfg, seed, device)
    info = dict(pairs=pairs.labelled, unlabeled=len(pairs.keep) - pairs.labelled, skipped=pairs.skipped,
                truncated=pairs.n_truncated, longer_won=float(longer_won.mean()), heldout_pairs=len(ev.pairs.keep))
    return pairs, ev, info, [dict(bias=bias, seed=seed, **d) for d in diagnostics]


def policy_loss(method, policy_logps, rows, pairs, beta, gamma, pool_logps=None, pool_rows=None):
    """the loss of `method` on one batch; reference log-probs and reward scores were computed once.
    policy_logps (2B,): the batch's chosen rows, then its rejected rows; rows (2B,) index into pairs.
    pool_logps (P,): for e-DPO and p-DPO, the policy's log-probs of the pool's rows pool_rows (P,)."""
    pc, pr = policy_logps.chunk(2)  # (B,), (B,)
    rc, rr = pairs.ref_logps[rows].to(pc.device).chunk(2)  # (B,), (B,)
    pool = (pool_logps, pairs.pool_ref_logps[pool_rows].to(pc.device)) if pool_logps is not None else ()  # (P,) each
    if method in ("dpo", "ipo"):
        return (dpo_loss if method == "dpo" else ipo_loss)(pc, pr, rc, rr, beta)
    if method == "d-dpo":
        return distill_loss(pc, pr, rc, rr, *pairs.rm_plain[rows].to(pc.device).chunk(2), beta)
    if method == "e-dpo":
        return pessimistic_distill_loss(pc, pr, rc, rr, *pairs.rm_family[:, rows].to(pc.device).chunk(2, dim=1),
                                        beta, gamma, *pool)
    if method == "p-dpo":
        return pessimistic_dpo_loss(pc, pr, rc, rr, beta, gamma, *pool)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def pool_batch(policy, pairs, order, step, batch_size, device):
    """the policy's log-probs of this step's share of the forward-KL pool, and its rows: the pool's rows in the
    order `order`, batch_size per step, so each pool response is used once. -> (B,), (B,)"""
    rows = np.take(order, np.arange((step - 1) * batch_size, step * batch_size), mode="wrap")  # (B,)
    ids, mask, resp = batch_tensors(pairs.pool, rows, device)  # (B, T) each
    return sequence_logps(forward(policy, ids, mask), ids, resp), rows


def train_policy(reference, pairs, method, cfg, seed, device, log, checkpoint=lambda step, policy: None):
    """train a copy of the reference with `method` for cfg.steps steps; log(step, metrics) every log_every and
    checkpoint(step, policy) at eval_points (at most steps) evenly spaced steps. -> (policy, for e-DPO the share of steps
    at which each family member was the minimum, else None)"""
    seed_everything(seed)
    policy = without_dropout(copy.deepcopy(reference).to(device).train())
    opt = torch.optim.AdamW(policy.parameters(), lr=report.learning_rate(cfg, reference))
    n, rng = len(pairs.keep), np.random.default_rng([seed, METHODS.index(method)])
    drawn_from = n if method in ("d-dpo", "e-dpo") else pairs.labelled  # only distillation uses unlabelled pairs
    pooled = method in ("e-dpo", "p-dpo")
    order = np.random.default_rng([seed, 99]).permutation(len(pairs.pool_ref_logps)) if pooled else None  # (P,)
    at = {round(cfg.steps * i / min(cfg.eval_points, cfg.steps)) for i in range(1, min(cfg.eval_points, cfg.steps) + 1)}
    picked = np.zeros(len(pairs.rm_family) if method == "e-dpo" else 0)  # (K,)
    bar = progress(range(1, cfg.steps + 1), f"train {method}")
    for step in bar:
        idx = rng.choice(drawn_from, cfg.batch_size, replace=False)  # (B,)
        rows = np.concatenate([idx, idx + n])  # (2B,): chosen rows, then rejected rows
        ids, mask, resp = batch_tensors(pairs.tokens, rows, device)  # (2B, T) each
        policy_logps = sequence_logps(forward(policy, ids, mask), ids, resp)  # (2B,)
        pool_logps, pool_rows = pool_batch(policy, pairs, order, step, cfg.batch_size, device) if pooled else (None, None)
        loss = policy_loss(method, policy_logps, rows, pairs, cfg.beta, cfg.gamma, pool_logps, pool_rows)
        if not torch.isfinite(loss):
            raise report.TrainingDiverged(f"{method}: the loss became {loss.item()} at step {step}; try a lower --lr")
        if method == "e-dpo":  # which member the minimum picked at this step
            rc, rr = pairs.ref_logps[rows].chunk(2)
            picked[distill_member_losses(*policy_logps.detach().cpu().chunk(2), rc, rr,
                                         *pairs.rm_family[:, rows].chunk(2, dim=1), cfg.beta).argmin()] += 1
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % cfg.log_every == 0 or step == cfg.steps:  # step 1: the policy is the reference
            fkl = forward_kl_estimate(pool_logps.detach().cpu(), pairs.pool_ref_logps[pool_rows]).item() if pooled else None
            metrics = report.batch_metrics(loss, policy_logps, pairs.ref_logps[rows], cfg.beta, fkl)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", margin=f"{metrics['rewards/margins']:.2f}")
            log(step, metrics)
        if step in at:  # without dropout, training mode computes what eval mode does
            checkpoint(step, policy)
    return policy.eval(), (picked / picked.sum()).tolist() if len(picked) else None


# -----------------------------------------------------------------------------
# 9. evaluation


@torch.no_grad()
def evaluate(policy, reference, tokenizer, pairs, ev, beta, max_new_tokens, max_length, device, n_show=0):
    """-> (a dict of floats, the first n_show samples as dicts). on held-out prompts, of the policy's samples: kl
    (KL(pi || pi_ref) per response, nats), kl_per_token, tokens and length (words); of pi_ref's samples: fkl_heldout
    (KL(pi_ref || pi), nats); on the built-in task also gold_reward, gold_ref, length_ref and win_rate (against pi_ref's
    samples, ties half). on the labelled training pairs: logps_chosen_change, logps_rejected_change, fkl_train (the
    mean of log pi_ref - log pi over their responses), margin_mean and margin_max (beta h); heldout_accuracy: the
    share of held-out pairs with h > 0, ties (h = 0, as for pi_ref) half."""
    drawn = sample(policy, tokenizer, ev.prompts, max_new_tokens, max_length, device, "evaluate")
    tokens = token_rows(drawn.prompt_ids, drawn.response_ids, tokenizer.eos_token_id)  # exactly the ids drawn
    (kl, logratio), n_tokens = sequence_kl(policy, reference, tokens, device), tokens.response_mask.sum(-1).float()  # (P,)
    fkl = ev.ref_samples_logps - all_logps(policy, ev.ref_samples, np.arange(len(ev.ref_samples_logps)), device)  # (P,)
    res = dict(kl=kl.mean().item(), kl_per_token=(kl.sum() / n_tokens.sum()).item(), tokens=n_tokens.mean().item(),
               length=float(np.mean([len(words(t)) for t in drawn.texts])), fkl_heldout=fkl.mean().item())
    lab = np.arange(pairs.labelled)  # (N,)
    pc, pr = all_logps(policy, pairs.tokens, np.concatenate([lab, lab + len(pairs.keep)]), device).chunk(2)  # (N,) each
    rc, rr = pairs.ref_logps[lab], pairs.ref_logps[lab + len(pairs.keep)]  # (N,) each
    margins = beta * logratio_margin(pc, pr, rc, rr)  # (N,)
    res.update(logps_chosen_change=(pc - rc).mean().item(), logps_rejected_change=(pr - rr).mean().item(),
               fkl_train=((rc - pc) + (rr - pr)).mean().item() / 2, margin_mean=margins.mean().item(),
               margin_max=margins.max().item())
    gold = (lambda y: gold_reward(y, ev.gold)) if ev.gold else None
    if gold:
        g = np.array([gold(t) for t in drawn.texts])  # (P,)
        res.update(gold_reward=float(g.mean()), gold_ref=float(ev.ref_gold.mean()), length_ref=ev.ref_length,
                   win_rate=float(np.mean((g > ev.ref_gold) + 0.5 * (g == ev.ref_gold))))
    h = logratio_margin(*all_logps(policy, ev.pairs.tokens, np.arange(2 * len(ev.pairs.keep)), device).chunk(2),
                        *ev.pairs.ref_logps.chunk(2))  # (M,)
    res["heldout_accuracy"] = ((h > 0).float() + 0.5 * (h == 0).float()).mean().item()
    return res, report.sample_rows(ev.prompts[:n_show], drawn, tokenizer.eos_token_id, gold, logratio.tolist())


# -----------------------------------------------------------------------------
# 10. main


def train_and_evaluate(reference, tokenizer, pairs, ev, method, cfg, bias, seed, device, log, save_dir=None):
    """one method from the reference on the prepared pairs -> (its record, its samples). the record: bias, seed,
    method, train_seconds, the last evaluation's numbers, checkpoints (each evaluation, with its step) and for
    e-DPO member_min_share. every evaluation draws the same random numbers (common random numbers along training)."""
    checkpoints, shown, t0 = [], [], time.time()
    def checkpoint(step, policy):
        reference.to(device)
        seed_everything(seed * 100 + METHODS.index(method))
        metrics, shown[:] = evaluate(policy, reference, tokenizer, pairs, ev, cfg.beta, cfg.max_new_tokens,
                                     cfg.max_length, device, N_SHOW)
        checkpoints.append(dict(step=step, **metrics))
        reference.cpu()  # while a policy trains, only the policy is on the device
    reference.cpu()
    tag = dict(bias=bias, seed=seed, method=method)  # on every logged row
    policy, member_min_share = train_policy(reference, pairs, method, cfg, seed, device, checkpoint=checkpoint,
                                            log=lambda step, m: log(dict(tag, step=step, **m)))
    reference.to(device)
    for part in (policy, tokenizer) if save_dir else ():  # a model folder that from_pretrained loads
        part.save_pretrained(os.path.join(save_dir, f"policy-{method}{'' if bias is None else f'-bias{bias}'}-seed{seed}"))
    record = dict(bias=bias, seed=seed, method=method, train_seconds=time.time() - t0, checkpoints=checkpoints,
                  **{k: v for k, v in checkpoints[-1].items() if k != "step"},
                  **({"member_min_share": member_min_share} if member_min_share else {}))
    return record, [dict(bias=bias, seed=seed, policy=method, **row) for row in shown]


def run(cfg, given=None, argv=None):
    """the whole experiment; returns (results, run folder). every check runs before any work."""
    if cfg.grid:  # each setting is a run of its own
        return grid.run_grid(cfg, given, argv, run, METHODS)
    started = time.time()
    report.check_config(cfg, METHODS, given)
    cfg = replace(cfg, methods=",".join(cfg.method_list()), sft_steps=report.sft_steps(cfg))
    device = report.pick_device(cfg.device)
    amp = report.precision(device, cfg.dtype)
    user_pairs = report.user_pairs(cfg)  # your own pairs (--data), or None
    splits = [report.split_pairs(user_pairs, seed) for seed in cfg.seeds] if user_pairs else []
    report.check_splits(splits, None, cfg.batch_size, cfg.max_length)  # enough pairs for a batch, before any work
    report.check_writable(cfg.out)
    reference, tokenizer = load_reference(cfg, device, check=lambda tok: report.check_data(user_pairs, splits, tok, cfg))
    cfg = replace(cfg, lr=report.learning_rate(cfg, reference))  # results.json records the rate used
    biases, info = [None] if cfg.data else report.sweep_bias_list(cfg), report.run_info(argv, started)  # no annotator
    config = {k: v for k, v in asdict(cfg).items() if not (cfg.data and k in report.TASK_ONLY)}
    with report.RunRecord(cfg.out, config, device, (biases[0], cfg.seeds[0]), info, started) as record, amp:
        for bias in biases:
            for seed in cfg.seeds:  # every method from the same reference, on the same pairs
                ref, sft = report.data_reference(reference, tokenizer, cfg, user_pairs, seed, device, tokenize, all_logps)
                pairs, ev, data, diagnostics = prepare(ref, tokenizer, cfg, bias, seed, device, user_pairs)
                record.samples += [dict(bias=bias, seed=seed, policy="pi_ref", **row) for row in ev.ref_shown]
                record.results["reward_models"] += diagnostics
                for method in cfg.method_list():  # each record is kept as soon as it is made
                    record.add(*train_and_evaluate(ref, tokenizer, pairs, ev, method, cfg, bias, seed, device,
                                                   record.log, record.dir if cfg.save_policy else None))
                record.results["data"].append(dict(bias=bias, seed=seed, **data, **({"sft": sft} if sft else {})))
    record.finish(METHODS)
    return record.results, record.dir


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return report.cli(lambda: run(*parse_args(argv), argv=argv), failures=(report.TrainingDiverged,))


if __name__ == "__main__":
    raise SystemExit(main())
