"""
rddpo: reward-distilled DPO in one readable file.

Companion code for "Robust Preference Optimization through Reward Model Distillation"
(Fisch et al., TMLR 2025, https://arxiv.org/abs/2405.19316). Read it top to bottom beside the paper:

  0. the method's knobs           1. the implicit reward        2. the losses and the forward KL
  3. reward models and the family 4. training the policy        5. plumbing: tokens, seeds, metrics

This file is the method alone: it imports numpy, torch and tqdm, and nothing else of this project.
The experiment around it (the task, sampling, evaluation, run folders, tables and figures) lives in
harness/ and imports it: see docs/layout.md.

    python rddpo.py               # offline: builds and pretrains a small GPT-2, then the experiment
    python rddpo.py --model gpt2  # the same on real GPT-2 (needs the Hugging Face hub or a copy)

The math, and every choice made where the paper is silent (marked `choice:` below), is in
docs/METHOD.md.
Shapes: B pairs in a batch, T tokens, V the vocabulary, K reward models, M pool responses in a step.
"""
import contextlib
import copy
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from tqdm import tqdm

METHODS = ("dpo", "ipo", "d-dpo", "e-dpo", "p-dpo")


# -----------------------------------------------------------------------------
# 0. the method's knobs: each is also a flag of `python rddpo.py` (--beta 0.2, --rm-steps 50)


@dataclass
class Knobs:
    beta: float = 0.1          # KL strength: the implicit reward is beta * log(pi / pi_ref)
    # choice: one gamma serves e-DPO and p-DPO, though p-DPO needs it away from 0 and e-DPO only to
    # break ties between the members it can fit
    gamma: float = 0.1         # weight of the forward-KL penalty in e-DPO and p-DPO
    ensemble: int = 4          # K, the number of reward models in the e-DPO family
    steps: int = 150           # policy training steps per method
    batch_size: int = 16       # B, preference pairs per step
    lr: float = 1e-4           # policy learning rate (AdamW)
    rm_steps: int = 150        # training steps per reward model
    rm_lr: float = 3e-4        # reward-model learning rate (AdamW)
    pool_batch: int = None     # M, forward-KL pool responses per e-DPO and p-DPO step; None takes B
    log_every: int = 25        # steps between logged training lines
    eval_points: int = 4       # checkpoints along training, evenly spaced, the last at the end
    lora: int = 0              # rank of the policy's LoRA adapters (peft); 0 trains every weight
    reward_models: str = "copies"  # a trained copy of pi_ref each, "heads" on its features, or
    #                                "adapters": LoRA adapters of rank 16 on it, trained with a head
    micro_batch: int = None    # most sequences in one forward pass; the step's gradient is the same


# -----------------------------------------------------------------------------
# 1. the implicit reward: log-probs are sums over the response's tokens, (B,) tensors


def implicit_reward(policy_logps, reference_logps, beta):
    """r_theta(x, y) = beta * (log pi_theta(y|x) - log pi_ref(y|x)); 0 while pi_theta = pi_ref."""
    return beta * (policy_logps - reference_logps)


def logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps):
    """h = the chosen response's log-ratio minus the rejected one's; the implicit margin: beta h."""
    return ((policy_chosen_logps - reference_chosen_logps)
            - (policy_rejected_logps - reference_rejected_logps))


# -----------------------------------------------------------------------------
# 2. the five losses and the forward-KL estimate: pure functions of (B,) log-probs, batch means


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps, beta):
    """DPO: mean( -log sigmoid(beta * h) )"""
    h = logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                        reference_rejected_logps)  # (B,)
    return -F.logsigmoid(beta * h).mean()


def ipo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps, beta):
    """IPO: mean( (h - 1 / (2 beta))^2 ). choice: h sums over tokens, as in every other loss
    here, so one beta means the same thing in all of them (trl's ipo averages per token)."""
    h = logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                        reference_rejected_logps)  # (B,)
    return ((h - 1 / (2 * beta)) ** 2).mean()


def distill_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                 reference_rejected_logps, rm_chosen_rewards, rm_rejected_rewards, beta):
    """d-DPO: mean( (r(x, y_w) - r(x, y_l) - beta * h)^2 ), one reward model, rewards (B,)"""
    h = logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                        reference_rejected_logps)  # (B,)
    return ((rm_chosen_rewards - rm_rejected_rewards - beta * h) ** 2).mean()


def distill_member_losses(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                          reference_rejected_logps, rm_chosen_rewards, rm_rejected_rewards, beta):
    """the d-DPO loss against each of K reward models: mean_b( (dr_kb - beta * h_b)^2 ).
    rewards (K, B) -> (K,)"""
    h = logratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                        reference_rejected_logps)  # (B,)
    return ((rm_chosen_rewards - rm_rejected_rewards - beta * h) ** 2).mean(-1)  # (K,)


def forward_kl_estimate(policy_pool_logps, reference_pool_logps):
    """KL(pi_ref || pi) ~ mean of log pi_ref(y) - log pi(y) over responses y sampled from pi_ref,
    (M,) each. choice: y come from a pool drawn from pi_ref once before training, each used once.
    on a fixed set reused every epoch (say the pairs' own responses) the mean is not a KL: raising
    those responses' likelihood without bound (memorising them) lowers it, while the true KL is
    smallest at pi = pi_ref."""
    return (reference_pool_logps - policy_pool_logps).mean()


def pessimistic_distill_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                             reference_rejected_logps, rm_chosen_rewards, rm_rejected_rewards, beta,
                             gamma, policy_pool_logps, reference_pool_logps):
    """e-DPO: min_k mean_b( (dr_kb - beta * h_b)^2 ) + gamma * KL(pi_ref || pi), rewards (K, B),
    pool log-probs (M,). choice: the min is over the batch-level losses; a per-pair min would let
    each pair pick its easiest member."""
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps)
    per_member = distill_member_losses(*logps, rm_chosen_rewards, rm_rejected_rewards, beta)  # (K,)
    return per_member.min() + gamma * forward_kl_estimate(policy_pool_logps, reference_pool_logps)


def pessimistic_dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps, beta, gamma, policy_pool_logps,
                         reference_pool_logps):
    """p-DPO: mean( -log sigmoid(beta * h) ) + gamma * KL(pi_ref || pi), pool log-probs (M,)"""
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps)
    fkl = forward_kl_estimate(policy_pool_logps, reference_pool_logps)
    return dpo_loss(*logps, beta) + gamma * fkl


# -----------------------------------------------------------------------------
# 3. reward models and the family


def bradley_terry_loss(chosen_rewards, rejected_rewards):
    """-log sigmoid(r(x, y_w) - r(x, y_l)), batch mean."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def reward_model_loss(chosen_rewards, rejected_rewards, center=0.01):
    """bradley-terry plus center * mean((r_w + r_l)^2).
    choice: the small centering term pins the free offset of bradley-terry rewards."""
    centering = ((chosen_rewards + rejected_rewards) ** 2).mean()
    return bradley_terry_loss(chosen_rewards, rejected_rewards) + center * centering


class RewardModel(nn.Module):
    """the reference model's transformer plus a scalar head read at the last real token: a copy
    of the transformer trained with the head, or (frozen) the reference's own, shared, untouched."""

    def __init__(self, lm, frozen=False):
        super().__init__()
        self.backbone = lm.base_model if frozen else copy.deepcopy(lm.base_model)
        self.head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)  # every reward starts at exactly 0
        nn.init.zeros_(self.head.bias)

    def features(self, input_ids, attention_mask):
        """the transformer's hidden state at each row's last real token, float32: (B, H)"""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids).last_hidden_state  # (B, T, H)
        last = last_token_index(attention_mask)  # (B,)
        return hidden[torch.arange(len(last)), last].float()  # (B, H)

    def reward(self, features):
        with torch.autocast(features.device.type, enabled=False):  # float32 under bfloat16 too
            return self.head(features).squeeze(-1)  # (B,)

    def forward(self, input_ids, attention_mask):
        return self.reward(self.features(input_ids, attention_mask))  # (B,)


def last_token_index(attention_mask):
    """index of the last real token of each row, for left or right padding. gpt-2 pads with its eos
    token, so searching for the pad id would stop at the response's own eos: use the mask.
    (B, T) -> (B,)"""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
    return (attention_mask * positions).argmax(-1)  # (B,)


def train_reward_model(reference, pairs, pair_idx, steps, lr, batch_size, seed, device, desc,
                       features=None, shared=False, micro_batch=None):
    """bradley-terry training on the given pairs (indices may repeat: a resample). with features
    (2N, H) of every row, from the reference's frozen transformer, only a head trains, on them;
    shared, the reference's own transformer carries adapters (lora_adapters), which train too.
    with micro_batch, at most that many rows (one pair's two at least) go through the model at
    once: the loss is a mean over pairs, so each part's loss times its share of the batch
    accumulates the whole batch's gradient."""
    seed_everything(seed)
    rm = RewardModel(reference, frozen=features is not None or shared).to(device)
    trained = rm.head if features is not None else without_dropout(rm)
    opt = torch.optim.AdamW([p for p in trained.train().parameters() if p.requires_grad], lr=lr)
    n, rng = len(pairs.keep), np.random.default_rng(seed)
    for _ in progress(range(steps), desc):
        idx = pair_idx[rng.integers(len(pair_idx), size=batch_size)]  # (B,)
        # pairs at once: all of them without micro_batch, and on features (no model pass)
        per = max(1, micro_batch // 2) if micro_batch and features is None else batch_size
        opt.zero_grad()
        for part in (idx[i:i + per] for i in range(0, batch_size, per)):
            rows = np.concatenate([part, part + n])  # (2b,)
            if features is None:
                r = rm(*batch_tensors(pairs.tokens, rows, device)[:2])  # (2b,)
            else:
                r = rm.reward(features[rows].to(device))  # (2b,)
            (reward_model_loss(*r.chunk(2)) * (len(part) / batch_size)).backward()
        opt.step()
    return rm.eval()


def family_shares(k):
    """choice: member k sees the share k/(K-1) of 'longer response preferred' pairs, spread over
    [0, 1], so that the members disagree along the axis of the bias the task plants: length."""
    return [0.5] if k == 1 else [i / (k - 1) for i in range(k)]


def resample_by_length_share(longer_won, share, rng):
    """a resample of all pair indices in which `share` of the pairs are ones the longer one won."""
    n = len(longer_won)
    long_idx, short_idx = np.flatnonzero(longer_won), np.flatnonzero(~longer_won)
    both = len(long_idx) and len(short_idx)
    n_long = int(round(share * n)) if both else (n if len(long_idx) else 0)
    drawn = [rng.choice(long_idx, n_long), rng.choice(short_idx, n - n_long)]
    return np.concatenate(drawn).astype(np.int64)


@torch.no_grad()
def score(rm, tokens, device, batch_size=64):
    """reward of every tokenised sequence -> (N,) on the cpu."""
    rows = np.arange(len(tokens.input_ids))  # (N,)
    return torch.cat([rm(*batch_tensors(tokens, rows[i:i + batch_size], device)[:2]).cpu()
                      for i in range(0, len(rows), batch_size)])


@contextlib.contextmanager
def lora_adapters(model, rank, seed):
    """the model with fresh LoRA adapters of `rank` (seeded) in its linear layers, the only weights
    that train, while inside; as it was before, every weight trainable, after. rank 0: as it is."""
    if not rank:
        yield model
        return
    from peft import get_peft_model
    seed_everything(seed)
    wrapped = get_peft_model(model, lora_config(rank))
    try:
        yield model
    finally:
        wrapped.unload().requires_grad_(True)


@torch.no_grad()
def last_features(reference, tokens, device, batch_size=64):
    """the reference's hidden state at every row's last real token, for heads on it: (N, H), cpu"""
    rm, rows = RewardModel(reference, frozen=True).to(device), np.arange(len(tokens.input_ids))
    return torch.cat([rm.features(*batch_tensors(tokens, rows[i:i + batch_size], device)[:2]).cpu()
                      for i in range(0, len(rows), batch_size)])


def reward_scores(reference, pairs, diagnose, cfg, seed, device, longer_won):
    """train the plain reward model and the family, score every training pair once, free the models.
    returns (2N,) plain rewards, (K, 2N) family rewards, and for each model diagnose(model, its
    (2N,) scores), a dict (the experiment's diagnostics on its held-out pairs).
    choice: the plain model (d-DPO) sees all pairs as labelled. with cfg.reward_models "heads" the
    models are heads on the reference's features, computed once for every row; "adapters", each
    trains rank-16 adapters on the reference's own transformer, taken out again once it has scored.
    """
    heads, shared = cfg.reward_models == "heads", cfg.reward_models == "adapters"
    features = last_features(reference, pairs.tokens, device) if heads else None  # (2N, H)
    fit = dict(steps=cfg.rm_steps, lr=cfg.rm_lr, batch_size=cfg.batch_size, device=device,
               features=features, shared=shared, micro_batch=cfg.micro_batch)
    shares = family_shares(cfg.ensemble)
    idx = [np.arange(pairs.labelled)] + [
        resample_by_length_share(longer_won, share, np.random.default_rng([seed, k]))
        for k, share in enumerate(shares)]
    scores, diagnostics = [], []
    for k, share in enumerate([None] + shares):
        desc = "reward model" + (f" {k} (longer-wins share {share:.2f})" if k else "")
        rm_seed = seed if k == 0 else seed * 1000 + k
        with lora_adapters(reference, 16 if shared else 0, rm_seed):
            rm = train_reward_model(reference, pairs, idx[k], seed=rm_seed, desc=desc, **fit)
            with torch.no_grad():  # (2N,)
                scores.append(score(rm, pairs.tokens, device) if features is None
                              else rm.reward(features.to(device)).cpu())
            name = f"member {k}" if k else "plain"
            diagnostics.append(dict(model=name, share=share, **diagnose(rm, scores[-1])))
            del rm
    return scores[0], torch.stack(scores[1:]), diagnostics  # (2N,), (K, 2N), K + 1 dicts


# -----------------------------------------------------------------------------
# 4. training the policy: reference log-probs, reward scores and the pool are computed once, before


@dataclass
class Pairs:
    """preference pairs, tokenised once; what is computed once before training comes later."""
    tokens: "Tokens"                # (2N, T): the N chosen rows, then the N rejected rows
    keep: list                      # indices of the given pairs that were kept (their prompt fits)
    skipped: int                    # pairs dropped because the prompt alone fills the context
    n_truncated: int                # pairs with a truncated chosen or rejected response
    labelled: int = None            # the first `labelled` pairs carry labels; the rest only scores
    ref_logps: torch.Tensor = None  # (2N,) log pi_ref(y|x)
    rm_plain: torch.Tensor = None   # (2N,) scores of the plain reward model (d-DPO)
    rm_family: torch.Tensor = None  # (K, 2N) scores of each family member (e-DPO)
    pool: "Tokens" = None           # (P, T) responses sampled from pi_ref for the forward-KL term
    pool_ref_logps: torch.Tensor = None  # (P,) their log pi_ref


def forward(model, input_ids, attention_mask):
    """logits (B, T, V); positions count real tokens only, so left and right padding agree."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return out.logits  # (B, T, V)


def sequence_logps(logits, input_ids, response_mask):
    """sum over response tokens t of log softmax(logits[:, t-1])[input_ids[:, t]], in float32.
    logits (B, T, V), input_ids (B, T), response_mask (B, T) -> (B,)"""
    logps = logits[:, :-1].float().log_softmax(-1)  # (B, T-1, V): position t-1 predicts token t
    token_logps = logps.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    # where, not a product: logits at padded positions may be nan, and nan * 0 is nan
    return torch.where(response_mask[:, 1:].bool(), token_logps, 0.0).sum(-1)  # (B,)


def logps_of(model, tokens, rows, device, micro_batch=None):
    """log pi(y|x) of the given rows of tokens, with gradients: (len(rows),). with micro_batch, at
    most that many rows go through the model at once, and each micro-batch's activations are
    recomputed in the backward pass instead of kept (activation checkpointing): a step holds one
    micro-batch's activations, and its gradient is the whole batch's, up to float rounding."""
    if micro_batch is None or len(rows) <= micro_batch:
        ids, mask, resp = batch_tensors(tokens, rows, device)  # (R, T) each
        return sequence_logps(forward(model, ids, mask), ids, resp)  # (R,)
    parts = [rows[i:i + micro_batch] for i in range(0, len(rows), micro_batch)]
    if not torch.is_grad_enabled():
        return torch.cat([logps_of(model, tokens, part, device) for part in parts])
    again = torch.utils.checkpoint.checkpoint  # keeps the inputs, recomputes the rest when needed
    return torch.cat([again(logps_of, model, tokens, part, device, use_reentrant=False)
                      for part in parts])  # (R,)


def policy_loss(method, policy_logps, rows, pairs, beta, gamma, pool_logps=None, pool_rows=None):
    """the loss of `method` on one batch; reference log-probs and reward scores were computed once.
    policy_logps (2B,): the batch's chosen rows, then its rejected rows; rows (2B,) index pairs.
    pool_logps (M,): for e-DPO and p-DPO, the policy's log-probs of the pool's rows pool_rows."""
    pc, pr = policy_logps.chunk(2)  # (B,), (B,)
    rc, rr = pairs.ref_logps[rows].to(pc.device).chunk(2)  # (B,), (B,)
    pool = () if pool_logps is None else (pool_logps, pairs.pool_ref_logps[pool_rows].to(pc.device))
    if method in ("dpo", "ipo"):
        return (dpo_loss if method == "dpo" else ipo_loss)(pc, pr, rc, rr, beta)
    if method == "d-dpo":
        return distill_loss(pc, pr, rc, rr, *pairs.rm_plain[rows].to(pc.device).chunk(2), beta)
    if method == "e-dpo":
        family = pairs.rm_family[:, rows].to(pc.device).chunk(2, dim=1)  # (K, B), (K, B)
        return pessimistic_distill_loss(pc, pr, rc, rr, *family, beta, gamma, *pool)
    if method == "p-dpo":
        return pessimistic_dpo_loss(pc, pr, rc, rr, beta, gamma, *pool)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def without_dropout(model):
    """choice: no dropout while learning from preferences (as TRL's dpo trainer does by default).
    then the policy at step 0 is the reference exactly and its implicit reward is 0, not noise."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def lora_config(rank):
    """LoRA adapters of rank `rank` on every linear layer but the output layer, at scale 1
    (alpha = rank) and without dropout. peft starts them at 0: the model is unchanged."""
    from peft import LoraConfig
    return LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules="all-linear")


def new_policy(reference, lora, device):
    """the policy at step 0, pi_ref exactly: a copy of the reference whose every weight trains or,
    with lora (a rank), the reference itself with LoRA adapters on its linear layers, which peft
    starts at 0. then no second copy is held: with its adapters off (AdaptersOff) the policy is
    pi_ref, and free_policy takes them out again."""
    if not lora:
        return without_dropout(copy.deepcopy(reference).to(device).train())
    from peft import get_peft_model
    return without_dropout(get_peft_model(reference, lora_config(lora)).to(device).train())


class AdaptersOff(nn.Module):
    """pi_ref while the policy is pi_ref plus LoRA adapters: the policy, its adapters off."""

    def __init__(self, policy):
        super().__init__()
        self.policy, self.config = policy, policy.config

    def forward(self, *args, **kwargs):
        with self.policy.disable_adapter():
            return self.policy(*args, **kwargs)


def free_policy(policy):
    """the reference as it was before train_policy: a LoRA policy's adapters taken out of it (its
    own weights, unchanged, trainable again); a copy needs nothing. -> the reference or None"""
    if not hasattr(policy, "unload"):
        return None
    reference = policy.unload()
    reference.requires_grad_(True)
    return reference.eval()


class TrainingDiverged(Exception):
    """a nan or inf loss: training stops, and what was written so far is kept (exit status 1)."""


def train_policy(reference, pairs, method, knobs, seed, device, log,
                 checkpoint=lambda step, policy: None):
    """train a policy (new_policy: a copy of the reference, or LoRA adapters on it) with `method`
    for knobs.steps AdamW steps; log(step, metrics) every knobs.log_every steps, and
    checkpoint(step, policy) at knobs.eval_points evenly spaced steps.
    -> (policy, for e-DPO the share of steps at which each member was the minimum, else None)"""
    seed_everything(seed)
    policy = new_policy(reference, knobs.lora, device)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=knobs.lr)
    book, mb = Bookkeeping(pairs, method, knobs, seed, log, checkpoint), knobs.micro_batch
    for step in book.steps():
        # the method: a batch of pairs (and pool responses), its loss, one AdamW step
        rows, pool_rows = book.rows(step)  # (2B,): chosen rows, then rejected rows; (M,) or None
        policy_logps = logps_of(policy, pairs.tokens, rows, device, mb)  # (2B,)
        pool_logps = None if pool_rows is None else \
            logps_of(policy, pairs.pool, pool_rows, device, mb)  # (M,)
        loss = policy_loss(method, policy_logps, rows, pairs, knobs.beta, knobs.gamma,
                           pool_logps, pool_rows)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"{method}: the loss became {loss.item()} at step {step}; "
                                   "try a lower --lr")
        opt.zero_grad()
        loss.backward()
        opt.step()
        book.after_step(step, policy, loss, policy_logps, rows, pool_logps, pool_rows)
    return policy.eval(), book.member_shares()


def pool_rows_per_step(batch_size, pool_batch=None):
    """M, the forward-KL pool's responses per e-DPO or p-DPO step: pool_batch (--pool-batch) or B.
    choice: M = B by default: fewer rows make the step cheaper, but the forward-KL term's gradient
    noise grows as 1/M and is already larger than DPO's own at M = B
    (docs/METHOD.md#pool-batch-protocol)."""
    return batch_size if pool_batch is None else pool_batch


class Bookkeeping:
    """what train_policy does around the method: which pairs and pool rows each step takes
    (seeded), the progress bar, a log line every log_every steps, the checkpoints, and which e-DPO
    member was the minimum."""

    def __init__(self, pairs, method, knobs, seed, log, checkpoint):
        self.pairs, self.method, self.knobs = pairs, method, knobs
        self.log, self.checkpoint = log, checkpoint
        self.rng = np.random.default_rng([seed, METHODS.index(method)])  # the pairs each step draws
        # only distillation uses the unlabelled pairs (--unlabeled): the others need labels
        self.drawn_from = len(pairs.keep) if method in ("d-dpo", "e-dpo") else pairs.labelled
        pooled = method in ("e-dpo", "p-dpo")
        self.m = pool_rows_per_step(knobs.batch_size, knobs.pool_batch) if pooled else 0
        self.order = np.random.default_rng([seed, 99]).permutation(len(pairs.pool_ref_logps)) \
            if pooled else None  # (P,): the pool's rows, each used once
        n = min(knobs.eval_points, knobs.steps)
        self.checkpoints = {round(knobs.steps * i / n) for i in range(1, n + 1)}
        self.picked = np.zeros(len(pairs.rm_family) if method == "e-dpo" else 0)  # (K,)

    def steps(self):
        self.bar = progress(range(1, self.knobs.steps + 1), f"train {self.method}")
        return self.bar

    def rows(self, step):
        """this step's pair rows (2B,), chosen then rejected, and its pool rows (M,) or None."""
        idx = self.rng.choice(self.drawn_from, self.knobs.batch_size, replace=False)  # (B,)
        rows = np.concatenate([idx, idx + len(self.pairs.keep)])  # (2B,)
        if not self.m:
            return rows, None
        return rows, np.take(self.order, np.arange((step - 1) * self.m, step * self.m), mode="wrap")

    def after_step(self, step, policy, loss, policy_logps, rows, pool_logps, pool_rows):
        k = self.knobs
        if self.method == "e-dpo":  # which member the minimum picked at this step
            rc, rr = self.pairs.ref_logps[rows].chunk(2)
            family = self.pairs.rm_family[:, rows].chunk(2, dim=1)  # (K, B), (K, B)
            losses = distill_member_losses(*policy_logps.detach().cpu().chunk(2), rc, rr, *family,
                                           k.beta)  # (K,)
            self.picked[losses.argmin()] += 1
        if step == 1 or step % k.log_every == 0 or step == k.steps:  # step 1: the policy is pi_ref
            fkl = None if pool_rows is None else forward_kl_estimate(
                pool_logps.detach().cpu(), self.pairs.pool_ref_logps[pool_rows]).item()
            metrics = batch_metrics(loss, policy_logps, self.pairs.ref_logps[rows], k.beta, fkl)
            self.bar.set_postfix(loss=f"{metrics['loss']:.3f}",
                                 margin=f"{metrics['rewards/margins']:.2f}")
            self.log(step, metrics)
        if step in self.checkpoints:  # without dropout, training mode computes what eval mode does
            self.checkpoint(step, policy)

    def member_shares(self):
        return (self.picked / self.picked.sum()).tolist() if len(self.picked) else None


# -----------------------------------------------------------------------------
# 5. plumbing: tokenisation, padding, batches, seeds, progress bars, metric names


@dataclass
class Tokens:
    """(prompt, response) rows as padded token ids. N rows, T the longest row."""
    input_ids: torch.Tensor       # (N, T)
    attention_mask: torch.Tensor  # (N, T): 1 on real tokens
    response_mask: torch.Tensor   # (N, T): 1 on the response's tokens and its eos
    truncated: torch.Tensor       # (N,) bool: the response was cut at max_length
    side: str = "right"           # where the padding is


class ChatTurn(str):
    """a response that a chat template wrote, its closing tokens included (harness/data.py renders
    conversational pairs so): encode adds no eos to it, as TRL adds none to conversational data."""


def encode(tokenizer, prompt, response, max_length):
    """(prompt ids, response ids + eos, truncated?); None when the prompt fills the context. a
    ChatTurn ends with its template's own closing instead of eos."""
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    full = tokenizer(prompt + response, add_special_tokens=False).input_ids
    # a merge across the boundary (bpe) would shift tokens between prompt and response; then
    # tokenise the two apart so that the response mask stays exact
    apart = full[:len(p)] != p
    r = tokenizer(response, add_special_tokens=False).input_ids if apart else full[len(p):]
    if not isinstance(response, ChatTurn):
        r = r + [tokenizer.eos_token_id]
    if len(p) >= max_length:
        return None
    return p, r[:max_length - len(p)], len(p) + len(r) > max_length


def pad(rows, pad_id, side="right", masks=None):
    """lists of ids -> input_ids (N, T) and attention_mask (N, T) [, and each extra mask (N, T)]."""
    T = max(map(len, rows))

    def fill(row, value):
        return [value] * (T - len(row)) + row if side == "left" else row + [value] * (T - len(row))
    out = [torch.tensor([fill(r, pad_id) for r in rows]),
           torch.tensor([fill([1] * len(r), 0) for r in rows])]
    return tuple(out + [torch.tensor([fill(m, 0) for m in ms]) for ms in (masks or [])])


def token_rows(prompt_ids, response_ids, pad_id, side="right", truncated=None):
    """lists of prompt ids and response ids -> Tokens, the response mask on the response ids."""
    rows = [p + r for p, r in zip(prompt_ids, response_ids)]
    on_response = [[0] * len(p) + [1] * len(r) for p, r in zip(prompt_ids, response_ids)]
    ids, mask, resp = pad(rows, pad_id, side, [on_response])  # (N, T) each
    cut = torch.tensor(truncated or [False] * len(ids), dtype=torch.bool)  # (N,)
    return Tokens(ids, mask, resp, cut, side)


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


def batch_tensors(tokens, rows, device):
    """input_ids, attention_mask, response_mask of the rows (R, T), cut to their longest sequence,
    on the device."""
    rows = torch.as_tensor(rows)
    T = int(tokens.attention_mask[rows].sum(1).max()) if tokens.side == "right" else None
    parts = (tokens.input_ids, tokens.attention_mask, tokens.response_mask)
    return tuple(t[rows, :T].to(device) for t in parts)


@torch.no_grad()
def all_logps(model, tokens, rows, device, batch_size=64):
    """sequence log-probs of the given rows, in batches -> (len(rows),) on the cpu."""
    batch_size = rows_per_pass(model, tokens, batch_size)
    return torch.cat([logps_of(model, tokens, rows[i:i + batch_size], device).cpu()
                      for i in range(0, len(rows), batch_size)])


def rows_per_pass(model, tokens, most, floats=2**24):
    """at most `most` rows, and few enough that their (T, V) float32 logits hold `floats` numbers
    (64 MB): a 49k-word vocabulary takes 5 rows of 64 tokens at a time, a small one all `most`."""
    return max(1, min(most, floats // (tokens.input_ids.shape[1] * model.config.vocab_size)))


def seed_everything(seed):
    """python's, numpy's and torch's global generators, for code that draws from them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def progress(iterable, desc):
    """a progress bar on a terminal, silence in logs and tests; a loop of a minute or more also says
    once, from its first steps, how long it will take on this device."""
    return Progress(iterable, desc)


class Progress(tqdm):
    def __init__(self, iterable, desc):
        super().__init__(iterable, desc=desc, mininterval=1, disable=None, leave=False)
        self.what = desc

    def __iter__(self):
        for i, item in enumerate(super().__iter__()):
            if i == 1:  # the first step warms up: time the next three
                start = time.perf_counter()
            elif i == 4 and self.total:
                per = (time.perf_counter() - start) / 3  # seconds a step
                if per * self.total >= 60:
                    took = duration(per * self.total)
                    tqdm.write(f"{self.what}: {self.total} steps, about {took} on this device "
                               f"({per:.2g} s a step)")
            yield item


def duration(seconds):
    """45 s, 12 min, 3 h 10 min."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def batch_metrics(loss, policy_logps, reference_logps, beta, forward_kl=None):
    """a training step's log line under trl's names for the usual dpo diagnostics, plus the change
    of the log-probs from the reference and, for e-DPO and p-DPO, the forward-KL term on the step's
    pool responses. policy_logps, reference_logps (2B,): the chosen rows, then the rejected rows."""
    pc, pr = policy_logps.detach().cpu().chunk(2)  # (B,), (B,)
    rc, rr = reference_logps.chunk(2)  # (B,), (B,)
    r_w, r_l = implicit_reward(pc, rc, beta), implicit_reward(pr, rr, beta)  # (B,), (B,)
    return {"loss": loss.item(),
            "rewards/chosen": r_w.mean().item(), "rewards/rejected": r_l.mean().item(),
            "rewards/margins": (r_w - r_l).mean().item(),
            "rewards/accuracies": (r_w > r_l).float().mean().item(),
            "logps/chosen": pc.mean().item(), "logps/rejected": pr.mean().item(),
            "logps/chosen_change": (pc - rc).mean().item(),
            "logps/rejected_change": (pr - rr).mean().item(),
            **({"kl/forward": forward_kl} if forward_kl is not None else {})}


if __name__ == "__main__":  # the command line runs the experiment (harness/), which imports this
    from harness import experiment
    raise SystemExit(experiment.main())
