"""
rddpo: reward-distilled DPO in one readable file.

Companion code for "Robust Preference Optimization through Reward Model Distillation"
(Fisch et al., TMLR 2025, https://arxiv.org/abs/2405.19316). Read it top to bottom beside the paper:

  1. seeds and progress bars       2. tokenisation and sequence log-probs       3. implicit reward
  4. reward models and the family  5. the losses and the forward-KL estimate   6. training the policy

This file is the method alone: it imports numpy, torch and tqdm, and nothing else of this project. The experiment
around it (the task, sampling, evaluation, run folders, tables and figures) imports it: see docs/layout.md.

    python rddpo.py                 # offline: builds and pretrains a small GPT-2, then runs the experiment
    python rddpo.py --model gpt2    # the same on real GPT-2 (needs the Hugging Face hub or a local copy)

The math, and every choice made where the paper is silent (marked `choice:` below), is in docs/METHOD.md.
"""
import copy
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

METHODS = ("dpo", "ipo", "d-dpo", "e-dpo", "p-dpo")

# -----------------------------------------------------------------------------
# 1. seeds and progress bars


def seed_everything(seed):
    """python's, numpy's and torch's global generators, for code that draws from them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def progress(iterable, desc):
    """a progress bar on a terminal, silence in logs and tests."""
    return tqdm(iterable, desc=desc, mininterval=1, disable=None, leave=False)


# -----------------------------------------------------------------------------
# 2. tokenisation and sequence log-probs


def forward(model, input_ids, attention_mask):
    """logits (B, T, V); positions count real tokens only, so left and right padding agree."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits


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


def pad(rows, pad_id, side="right", masks=None):
    """lists of ids -> input_ids (N, T) and attention_mask (N, T) [, and each extra mask (N, T)]."""
    T = max(map(len, rows))
    def fill(row, value):
        return [value] * (T - len(row)) + row if side == "left" else row + [value] * (T - len(row))
    out = [torch.tensor([fill(r, pad_id) for r in rows]), torch.tensor([fill([1] * len(r), 0) for r in rows])]
    return tuple(out + [torch.tensor([fill(m, 0) for m in ms]) for ms in (masks or [])])


def token_rows(prompt_ids, response_ids, pad_id, side="right", truncated=None):
    """lists of prompt ids and response ids -> Tokens, the response mask on the response ids only."""
    ids, mask, resp = pad([p + r for p, r in zip(prompt_ids, response_ids)], pad_id, side,
                          [[[0] * len(p) + [1] * len(r) for p, r in zip(prompt_ids, response_ids)]])  # (N, T) each
    return Tokens(ids, mask, resp, torch.tensor(truncated or [False] * len(ids), dtype=torch.bool), side)


def tokenize(tokenizer, prompts, responses, max_length, side="right"):
    """(prompt, response) texts -> Tokens; every prompt must fit in max_length."""
    p, r, cut = zip(*[encode(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)])
    return token_rows(p, r, tokenizer.eos_token_id, side, list(cut))


def fits(tokenizer, prompt, max_length):
    """True when the prompt leaves room for at least one response token within max_length."""
    return len(tokenizer(prompt, add_special_tokens=False).input_ids) < max_length


def tokenize_pairs(tokenizer, prompts, chosen, rejected, max_length, side="right"):
    """pairs -> Pairs; pairs whose prompt alone fills the context are skipped."""
    keep = [i for i, p in enumerate(prompts) if fits(tokenizer, p, max_length)]
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
# 3. implicit reward


def implicit_reward(policy_logps, reference_logps, beta):
    """r_theta(x, y) = beta * (log pi_theta(y|x) - log pi_ref(y|x)); exactly 0 while pi_theta = pi_ref."""
    return beta * (policy_logps - reference_logps)


def logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
    """h = log-ratio of the chosen minus that of the rejected response; the implicit margin is beta * h."""
    return (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)


# -----------------------------------------------------------------------------
# 4. reward models and the family


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


def reward_scores(reference, pairs, diagnose, cfg, seed, device, longer_won):
    """train the plain reward model and the family, score every training pair once, and free the models.
    returns (2N,) plain rewards, (K, 2N) family rewards, and for each model diagnose(model, its (2N,) scores), a dict
    (the experiment's diagnostics on its held-out pairs). choice: the plain model (d-DPO) sees all pairs as labelled."""
    fit = dict(steps=cfg.rm_steps, lr=cfg.rm_lr, batch_size=cfg.batch_size, device=device)
    idx = [np.arange(pairs.labelled)] + [resample_by_length_share(longer_won, share, np.random.default_rng([seed, k]))
                                          for k, share in enumerate(family_shares(cfg.ensemble))]
    scores, diagnostics = [], []
    for k, share in enumerate([None] + family_shares(cfg.ensemble)):
        rm = train_reward_model(reference, pairs, idx[k], seed=seed if k == 0 else seed * 1000 + k, **fit,
                                desc="reward model" + (f" {k} (longer-wins share {share:.2f})" if k else ""))
        scores.append(score(rm, pairs.tokens, device))  # (2N,)
        diagnostics.append(dict(model=f"member {k}" if k else "plain", share=share, **diagnose(rm, scores[-1])))
        del rm
    return scores[0], torch.stack(scores[1:]), diagnostics  # (2N,), (K, 2N), K + 1 dicts


# -----------------------------------------------------------------------------
# 5. the losses and the forward-KL estimate: pure functions of (B,) log-prob tensors, batch means


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
# 6. training the policy: the pairs were prepared once (experiment.py)


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


def pool_rows_per_step(batch_size, pool_batch=None):
    """M, the forward-KL pool's responses per e-DPO or p-DPO step: pool_batch (--pool-batch) or, without it, B.
    choice: M = B by default: fewer rows make the step cheaper, but the forward-KL term's gradient noise grows as
    1/M and is already larger than DPO's own at M = B (docs/METHOD.md#pool-batch-protocol)."""
    return batch_size if pool_batch is None else pool_batch


def pool_batch(policy, pairs, order, step, batch_size, device):
    """the policy's log-probs of this step's share of the forward-KL pool, and its rows: the pool's rows in the
    order `order`, batch_size (M) per step, so each pool response is used once. -> (M,), (M,)"""
    rows = np.take(order, np.arange((step - 1) * batch_size, step * batch_size), mode="wrap")  # (M,)
    ids, mask, resp = batch_tensors(pairs.pool, rows, device)  # (M, T) each
    return sequence_logps(forward(policy, ids, mask), ids, resp), rows


class TrainingDiverged(Exception):
    """a nan or inf loss: training stops, and what was written so far is kept (exit status 1)."""


def learning_rate(cfg, model):
    """--lr, or its default. choice: 1e-4 for the tiny model at any size (the rate its results were made at); for a
    --model, 1e-4 x 64 / its width (hidden size), the rate that suits the 64-wide tiny model scaled down as the
    width grows: Adam moves every weight by about the rate, and each unit sums `width` such moves."""
    if cfg.lr is not None:
        return cfg.lr
    if cfg.model == "tiny":
        return 1e-4
    width = getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd")
    return 1e-4 * 64 / width


def batch_metrics(loss, policy_logps, reference_logps, beta, forward_kl=None):
    """a training step's log line under trl's names for the usual dpo diagnostics, plus the change of the log-probs
    from the reference and, for e-DPO and p-DPO, the forward-KL term on the step's pool responses (forward_kl).
    policy_logps, reference_logps (2B,): the batch's chosen rows, then its rejected rows."""
    pc, pr = policy_logps.detach().cpu().chunk(2)
    rc, rr = reference_logps.chunk(2)
    r_w, r_l = beta * (pc - rc), beta * (pr - rr)  # (B,), (B,): the implicit rewards
    return {"loss": loss.item(), "rewards/chosen": r_w.mean().item(), "rewards/rejected": r_l.mean().item(),
            "rewards/margins": (r_w - r_l).mean().item(), "rewards/accuracies": (r_w > r_l).float().mean().item(),
            "logps/chosen": pc.mean().item(), "logps/rejected": pr.mean().item(),
            "logps/chosen_change": (pc - rc).mean().item(), "logps/rejected_change": (pr - rr).mean().item(),
            **({"kl/forward": forward_kl} if forward_kl is not None else {})}


def train_policy(reference, pairs, method, cfg, seed, device, log, checkpoint=lambda step, policy: None):
    """train a copy of the reference with `method` for cfg.steps steps; log(step, metrics) every log_every and
    checkpoint(step, policy) at eval_points (at most steps) evenly spaced steps. -> (policy, for e-DPO the share of steps
    at which each family member was the minimum, else None)"""
    seed_everything(seed)
    policy = without_dropout(copy.deepcopy(reference).to(device).train())
    opt = torch.optim.AdamW(policy.parameters(), lr=learning_rate(cfg, reference))
    n, rng = len(pairs.keep), np.random.default_rng([seed, METHODS.index(method)])
    drawn_from = n if method in ("d-dpo", "e-dpo") else pairs.labelled  # only distillation uses unlabelled pairs
    pooled, m = method in ("e-dpo", "p-dpo"), pool_rows_per_step(cfg.batch_size, cfg.pool_batch)
    order = np.random.default_rng([seed, 99]).permutation(len(pairs.pool_ref_logps)) if pooled else None  # (P,)
    at = {round(cfg.steps * i / min(cfg.eval_points, cfg.steps)) for i in range(1, min(cfg.eval_points, cfg.steps) + 1)}
    picked = np.zeros(len(pairs.rm_family) if method == "e-dpo" else 0)  # (K,)
    bar = progress(range(1, cfg.steps + 1), f"train {method}")
    for step in bar:
        idx = rng.choice(drawn_from, cfg.batch_size, replace=False)  # (B,)
        rows = np.concatenate([idx, idx + n])  # (2B,): chosen rows, then rejected rows
        ids, mask, resp = batch_tensors(pairs.tokens, rows, device)  # (2B, T) each
        policy_logps = sequence_logps(forward(policy, ids, mask), ids, resp)  # (2B,)
        pool_logps, pool_rows = pool_batch(policy, pairs, order, step, m, device) if pooled else (None, None)  # (M,)
        loss = policy_loss(method, policy_logps, rows, pairs, cfg.beta, cfg.gamma, pool_logps, pool_rows)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"{method}: the loss became {loss.item()} at step {step}; try a lower --lr")
        if method == "e-dpo":  # which member the minimum picked at this step
            rc, rr = pairs.ref_logps[rows].chunk(2)
            picked[distill_member_losses(*policy_logps.detach().cpu().chunk(2), rc, rr,
                                         *pairs.rm_family[:, rows].chunk(2, dim=1), cfg.beta).argmin()] += 1
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % cfg.log_every == 0 or step == cfg.steps:  # step 1: the policy is the reference
            fkl = forward_kl_estimate(pool_logps.detach().cpu(), pairs.pool_ref_logps[pool_rows]).item() if pooled else None
            metrics = batch_metrics(loss, policy_logps, pairs.ref_logps[rows], cfg.beta, fkl)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", margin=f"{metrics['rewards/margins']:.2f}")
            log(step, metrics)
        if step in at:  # without dropout, training mode computes what eval mode does
            checkpoint(step, policy)
    return policy.eval(), (picked / picked.sum()).tolist() if len(picked) else None


if __name__ == "__main__":  # the command line runs the experiment, which imports this file
    import experiment
    raise SystemExit(experiment.main())
