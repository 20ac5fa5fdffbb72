# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. The losses by hand
#
# The five losses of `rddpo.py` (DPO, IPO, d-DPO, e-DPO, p-DPO) are small functions of four numbers per
# preference pair: the log-probabilities of the chosen and the rejected response under the policy and
# under the reference. This notebook builds those numbers from a real tokenised pair on a small GPT-2,
# then works every loss and its gradient out on numbers small enough to check with a calculator:
#
# 1. a real pair, tokenised: which tokens count in $\log \pi(y \mid x)$ (the masks);
# 2. the sequence log-probability, token by token, against `rddpo.sequence_logps`;
# 3. the implicit reward: exactly 0 at the start, and what one DPO step does to it;
# 4. the five losses on two hand-picked pairs, with the arithmetic;
# 5. their gradients: which way each loss pushes each log-probability, and what the KL term adds;
# 6. exercises, with solutions a teacher can reveal.
#
# Every number is computed by a function imported from `rddpo.py`; nothing here re-implements the
# method. The last cell asserts every claim the notebook makes, so running it is a test
# (`pytest tests/test_notebooks.py`). It runs in seconds on a laptop CPU.
#
# **Running it.** Open it in Jupyter or VS Code from a clone of the repository, with the packages and the
# project installed by the README's set-up command (`pip install -r requirements.txt -e .`, which makes
# `rddpo`, `toy_bandit` and `harness` importable from any folder; Jupyter itself is not among the
# requirements: `pip install jupyterlab`). A copy of this notebook opened elsewhere works too. In Colab,
# first run `!git clone <this repository's URL>` and
# `!pip install -r <repository folder>/requirements.txt -e <repository folder>`, then restart the session.

# %%
import warnings
warnings.filterwarnings("ignore", message="IProgress not found")  # rddpo's progress bars are off in notebooks

import copy
import math

import torch

import rddpo
from harness import models, task

torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown]
# ## 1. A real pair, tokenised
#
# A preference pair is a prompt $x$, a chosen response $y_w$ (the winner) and a rejected response $y_l$
# (the loser). The built-in task of `rddpo.py` is short movie reviews; `task.build_tokenizer()` builds a
# word-level tokenizer for its closed vocabulary in code (one token per word, nothing downloaded).
#
# `rddpo.tokenize_pairs` turns $N$ pairs into `rddpo.Pairs`, whose `tokens` hold tensors of shape $(2N, T)$: the $N$ chosen rows first,
# then the $N$ rejected rows, right-padded to a common length $T$. Each row has three tensors:
#
# - `input_ids`: the prompt's tokens, the response's tokens, the end-of-sequence token
#   `<|endoftext|>`, then padding (GPT-2 pads with its end-of-sequence token too);
# - `attention_mask`: 1 on real tokens, 0 on padding;
# - `response_mask`: 1 only on the response's tokens and its own end-of-sequence token. These are the
#   tokens whose log-probabilities add up to $\log \pi(y \mid x)$: the prompt is given, not generated,
#   and padding is not part of the text.

# %%
tok = task.build_tokenizer()
prompt = "my review of blue harbor :"
chosen = " the plot was great ."
rejected = " the plot was very dull . the music was loud ."
data = rddpo.tokenize_pairs(tok, [prompt], [chosen], [rejected], max_length=64)
ids, attention, response = data.tokens.input_ids, data.tokens.attention_mask, data.tokens.response_mask  # (2, T) each
V = len(tok)
print(f"vocabulary V = {V} words; input_ids {tuple(ids.shape)}: row 0 chosen, row 1 rejected\n")
print(f"{'':>3} {'chosen row':^30} | {'rejected row':^30}")
print(f"{'t':>3} {'token':<14}{'id':>4}{'attn':>6}{'resp':>6} | {'token':<14}{'id':>4}{'attn':>6}{'resp':>6}")
for pos in range(ids.shape[1]):
    cells = [f"{tok.convert_ids_to_tokens(ids[row, pos].item()):<14}{ids[row, pos].item():>4}"
             f"{attention[row, pos].item():>6}{response[row, pos].item():>6}" for row in (0, 1)]
    print(f"{pos:>3} " + " | ".join(cells))

# %% [markdown]
# Read the table: the prompt has 6 tokens (positions 0 to 5, response mask 0). The chosen response is
# 5 words plus its end-of-sequence token (6 tokens with response mask 1); the rejected one is 11 words
# plus its end-of-sequence token (12). The chosen row is padded to the rejected row's length with the same
# `<|endoftext|>` id, but with attention and response mask 0: the masks, not the token id, say which
# is which. (This is why `rddpo` never finds the end of a sequence by searching for the pad id.)
#
# ## 2. The sequence log-probability
#
# A causal language model's logits at position $t-1$ are its prediction of the token at position $t$. The
# log-probability of the response is the sum over the response's tokens:
#
# $$\log \pi(y \mid x) = \sum_{t=1}^{T-1} m_t \, \log \operatorname{softmax}(\ell_{t-1})[s_t]$$
#
# where $s_t$ is the token at position $t$ (`input_ids[:, t]`), $\ell_{t-1}$ the logits at position $t-1$,
# and $m_t$ the response mask (`response_mask[:, t]`).
#
# We use a small GPT-2 with random weights (2 layers, width 32, seed 0). Its predictions are close to
# uniform over the $V$ words, so each token costs about $\ln V$ nats and a response of $n$ tokens about
# $n \ln V$: a calculator check. `.eval()` switches dropout off, so every number is repeatable. The loop
# below takes one token at a time; `rddpo.sequence_logps` does the same for the whole batch with a
# shift, a gather and a masked sum.

# %%
torch.manual_seed(0)
reference = models.build_tiny_gpt2(tok, n_layer=2, n_embd=32, n_head=2, n_positions=64).eval()  # dropout off
with torch.no_grad():
    logits = rddpo.forward(reference, ids, attention)  # (2, T, V)

ln_V = math.log(V)
by_hand = []
for row, name in enumerate(["chosen", "rejected"]):
    print(f"{name}: log p(token at t | tokens before t), response tokens only")
    total = 0.0
    for pos in range(1, ids.shape[1]):
        if response[row, pos]:
            token_logp = logits[row, pos - 1].log_softmax(-1)[ids[row, pos]].item()  # position pos-1 predicts pos
            total += token_logp
            print(f"   t={pos:>2} {tok.convert_ids_to_tokens(ids[row, pos].item()):<14} {token_logp:8.4f}")
    n = int(response[row].sum())
    print(f"   sum over its {n} tokens = {total:.4f}   (uniform guess: {n} x -ln {V} = {-n * ln_V:.4f})\n")
    by_hand.append(total)

seq_logps = rddpo.sequence_logps(logits, ids, response)  # (2,)
print("rddpo.sequence_logps:", [round(v, 4) for v in seq_logps.tolist()], "  the loop:", [round(v, 4) for v in by_hand])

# %% [markdown]
# ## 3. The implicit reward
#
# DPO never trains a reward model; the policy defines one, relative to the reference:
#
# $$r_\theta(x, y) = \beta\,\big(\log \pi_\theta(y \mid x) - \log \pi_{\text{ref}}(y \mid x)\big)$$
#
# Training starts from a copy of the reference, so at step 0 every implicit reward is exactly 0 (the
# same weights do the same arithmetic), and so is the margin between chosen and rejected. We write the
# margin as $\beta h$, with
#
# $$h = \big(\log \pi_\theta(y_w) - \log \pi_{\text{ref}}(y_w)\big) - \big(\log \pi_\theta(y_l) - \log \pi_{\text{ref}}(y_l)\big).$$
#
# The reference's log-probabilities are computed once, without gradients (`rddpo.all_logps`); only the
# policy's carry gradients. Below: the implicit rewards at step 0, then one plain gradient step
# (SGD, learning rate 0.01) on the DPO loss of this one pair, with $\beta = 0.1$ as in `experiment.Config`.

# %%
beta = 0.1
policy = copy.deepcopy(reference)  # step 0: the policy is the reference
ref_logps = rddpo.all_logps(reference, data.tokens, torch.arange(2), "cpu")  # (2,): chosen, rejected; no gradient

def policy_logps():
    return rddpo.sequence_logps(rddpo.forward(policy, ids, attention), ids, response)  # (2,)

logps = policy_logps()
reward_step0 = rddpo.implicit_reward(logps.detach(), ref_logps, beta)  # (2,)
loss_step0 = rddpo.dpo_loss(logps[:1], logps[1:], ref_logps[:1], ref_logps[1:], beta)
print("step 0: implicit rewards (chosen, rejected) =", reward_step0.tolist(), f"  DPO loss = {loss_step0.item():.4f}")

opt = torch.optim.SGD(policy.parameters(), lr=0.01)
opt.zero_grad()
loss_step0.backward()
opt.step()
logps_step1 = policy_logps().detach()
reward_step1 = rddpo.implicit_reward(logps_step1, ref_logps, beta)  # (2,)
h_step1 = rddpo.logratio_margin(logps_step1[0], logps_step1[1], ref_logps[0], ref_logps[1]).item()
print("step 1: implicit rewards (chosen, rejected) =", [round(v, 4) for v in reward_step1.tolist()],
      f"  h = {h_step1:.4f}, margin beta * h = {beta * h_step1:.4f}")


# %% [markdown]
# At step 0 the rewards are exactly 0 and the DPO loss is $-\log \sigma(0) = \ln 2 \approx 0.6931$. One
# step later the margin is positive: DPO raised the chosen response relative to the rejected one. Here
# both moved the way one would hope, but DPO only controls their *difference* $h$: with shared weights
# the chosen response's own log-probability can fall too (notebook 1 shows this on a bandit).
#
# ## 4. The five losses on two pairs, by hand
#
# From here on, hand-picked log-probabilities for a batch of $B = 2$ pairs, with $\beta = 0.5$ and
# $\gamma = 0.1$ (a rounder $\beta$ than the code's default 0.1, so the arithmetic stays short):
#
# | | pair 1 | pair 2 |
# |---|---|---|
# | $\log \pi_{\text{ref}}(y_w)$ | $-11$ | $-12$ |
# | $\log \pi_\theta(y_w)$ | $-11$ | $-13$ |
# | $\log \pi_{\text{ref}}(y_l)$ | $-13$ | $-12$ |
# | $\log \pi_\theta(y_l)$ | $-15$ | $-12$ |
# | log-ratio of $y_w$ | $0$ | $-1$ |
# | log-ratio of $y_l$ | $-2$ | $0$ |
# | $h$ | $0 - (-2) = 2$ | $-1 - 0 = -1$ |
# | $\beta h$ (implicit margin) | $1$ | $-0.5$ |
# | implicit rewards $r(y_w)$, $r(y_l)$ | $0$, $-1$ | $-0.5$, $0$ |
#
# The policy already prefers the chosen response of pair 1 (more than the reference does) and gets pair 2
# wrong. The names of the arguments are those of the reference DPO code.

# %%
def t(*values):
    return torch.tensor(values, dtype=torch.float64)  # float64: the hand arithmetic to 12 digits

reference_chosen_logps, policy_chosen_logps = t(-11, -12), t(-11, -13)
reference_rejected_logps, policy_rejected_logps = t(-13, -12), t(-15, -12)
logps4 = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
beta, gamma = 0.5, 0.1

h = rddpo.logratio_margin(*logps4)  # (B,)
print("h =", h.tolist(), "  beta * h =", (beta * h).tolist())
print("implicit rewards, chosen:", rddpo.implicit_reward(policy_chosen_logps, reference_chosen_logps, beta).tolist(),
      " rejected:", rddpo.implicit_reward(policy_rejected_logps, reference_rejected_logps, beta).tolist())

# %% [markdown]
# ### DPO
#
# $$L_{\text{DPO}} = \frac{1}{B}\sum_b -\log \sigma(\beta h_b), \qquad -\log\sigma(z) = \log(1 + e^{-z})$$
#
# - pair 1: $\log(1 + e^{-1}) = \log 1.36788 = 0.31326$
# - pair 2: $\log(1 + e^{0.5}) = \log 2.64872 = 0.97408$
# - mean: $(0.31326 + 0.97408) / 2 = 0.64367$
#
# The pair the policy gets wrong costs three times as much. The loss approaches 0 only as every
# $h_b \to +\infty$: DPO has no finite target.

# %%
dpo = rddpo.dpo_loss(*logps4, beta).item()
dpo_hand = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(0.5))) / 2
print(f"rddpo.dpo_loss = {dpo:.5f}   by hand = {dpo_hand:.5f}")

# %% [markdown]
# ### IPO
#
# $$L_{\text{IPO}} = \frac{1}{B}\sum_b \Big(h_b - \frac{1}{2\beta}\Big)^2, \qquad \frac{1}{2\beta} = \frac{1}{2 \cdot 0.5} = 1$$
#
# - pair 1: $(2 - 1)^2 = 1$; pair 2: $(-1 - 1)^2 = 4$; mean: $(1 + 4)/2 = 2.5$
#
# IPO has a finite target margin, $h = 1/(2\beta)$: pair 1 overshoots it and is penalised for that.
# (In `rddpo`, $h$ sums over tokens; TRL's IPO averages per token.)

# %%
ipo = rddpo.ipo_loss(*logps4, beta).item()
ipo_hand = ((2 - 1) ** 2 + (-1 - 1) ** 2) / 2
print(f"rddpo.ipo_loss = {ipo:.5f}   by hand = {ipo_hand:.5f}")

# %% [markdown]
# ### d-DPO: distil one reward model
#
# A reward model trained on the preference data scores the four responses: $r(x, y_w) = (1.0, 0.5)$ and
# $r(x, y_l) = (0.0, 0.0)$, so the reward differences are $\Delta r = (1, 0.5)$. d-DPO asks the implicit
# margin to equal the reward model's:
#
# $$L_{\text{d-DPO}} = \frac{1}{B}\sum_b \big(\Delta r_b - \beta h_b\big)^2$$
#
# - pair 1: $(1 - 1)^2 = 0$; pair 2: $(0.5 - (-0.5))^2 = 1$; mean: $(0 + 1)/2 = 0.5$
#
# Pair 1 already matches the reward model: zero loss there, and (section 5) zero gradient. The target
# $\beta h = \Delta r$ is finite, where DPO's is $+\infty$.

# %%
rm_chosen_rewards, rm_rejected_rewards = t(1.0, 0.5), t(0.0, 0.0)
ddpo = rddpo.distill_loss(*logps4, rm_chosen_rewards, rm_rejected_rewards, beta).item()
ddpo_hand = ((1 - 1) ** 2 + (0.5 - (-0.5)) ** 2) / 2
print(f"rddpo.distill_loss = {ddpo:.5f}   by hand = {ddpo_hand:.5f}")

# %% [markdown]
# ### The forward-KL estimate
#
# e-DPO and p-DPO add $\gamma\,\mathrm{KL}(\pi_{\text{ref}} \,\|\, \pi_\theta)
# = \gamma\, \mathbb{E}_{y \sim \pi_{\text{ref}}}[\log \pi_{\text{ref}}(y) - \log \pi_\theta(y)]$. The expectation
# is over responses *sampled from* $\pi_{\text{ref}}$, so `rddpo` draws a pool of them once, before
# training, and each step averages over $B$ fresh ones:
#
# $$\widehat{\mathrm{KL}} = \frac{1}{B}\sum_b \big(\log\pi_{\text{ref}}(y_b) - \log\pi_\theta(y_b)\big),
#   \qquad y_b \sim \pi_{\text{ref}}$$
#
# Why not the pairs' own responses? Reused epoch after epoch, their mean of $\log\pi_{\text{ref}} - \log\pi_\theta$
# is minus their likelihood (plus a constant), and the policy lowers it without bound by memorising them.
# Say the step's two pool responses have $\log\pi_\theta = (-10, -12)$ and $\log\pi_{\text{ref}} = (-9.5, -11)$:
#
# - $\widehat{\mathrm{KL}} = \big((-9.5 + 10) + (-11 + 12)\big)/2 = (0.5 + 1)/2 = 0.75$
#
# Positive: the policy has lost probability on what the reference writes. The true KL is never negative,
# but an estimate from one batch can be.

# %%
pool_policy_logps, pool_reference_logps = t(-10.0, -12.0), t(-9.5, -11.0)  # (B,) each: two samples of pi_ref
pool = (pool_policy_logps, pool_reference_logps)
fkl = rddpo.forward_kl_estimate(*pool).item()
print(f"rddpo.forward_kl_estimate = {fkl:.5f}   by hand = {3 / 4:.5f}")

# %% [markdown]
# ### e-DPO: distil a family of reward models, pessimistically
#
# Now a family of $K = 2$ reward models. Member 0 is the one above, $\Delta r_0 = (1, 0.5)$. Member 1 scores
# $r(x, y_w) = (0.5, 0.0)$ and $r(x, y_l) = (0.0, 0.5)$, so $\Delta r_1 = (0.5, -0.5)$: it is less sure of
# pair 1 and thinks pair 2 is mislabelled.
#
# $$L_{\text{e-DPO}} = \min_k \frac{1}{B}\sum_b \big(\Delta r_{k,b} - \beta h_b\big)^2 \;+\; \gamma\,\widehat{\mathrm{KL}}$$
#
# - member 0: $0.5$ (as d-DPO above)
# - member 1: $\big((0.5 - 1)^2 + (-0.5 + 0.5)^2\big)/2 = (0.25 + 0)/2 = 0.125$
# - $\min = 0.125$ (member 1), plus $\gamma\,\widehat{\mathrm{KL}} = 0.1 \times 0.75 = 0.075$: $L = 0.2$
#
# Why a min: its first term measures how far the policy is from distilling *some* member of the
# family; any member's optimal policy would do. The KL term then pulls the policy toward the member
# whose optimal policy stays closest to the reference: the most conservative reward that still fits
# the data. The min is over each member's batch-level loss, not per pair (a choice of `rddpo`: a
# per-pair min would let every pair pick its easiest member). The family's rewards are a $(K, B)$ tensor.

# %%
family_chosen_rewards = torch.stack([t(1.0, 0.5), t(0.5, 0.0)])  # (K, B)
family_rejected_rewards = torch.stack([t(0.0, 0.0), t(0.0, 0.5)])  # (K, B)
per_member = [rddpo.distill_loss(*logps4, family_chosen_rewards[k], family_rejected_rewards[k], beta).item()
              for k in range(2)]
edpo = rddpo.pessimistic_distill_loss(*logps4, family_chosen_rewards, family_rejected_rewards, beta, gamma, *pool).item()
edpo_hand = min(0.5, 0.125) + 0.1 * 0.75
print("distillation loss of each member:", per_member, "-> member", per_member.index(min(per_member)), "is the min")
print(f"rddpo.pessimistic_distill_loss = {edpo:.5f}   by hand = {edpo_hand:.5f}")

# %% [markdown]
# ### p-DPO: DPO plus the KL term
#
# $$L_{\text{p-DPO}} = \frac{1}{B}\sum_b -\log\sigma(\beta h_b) \;+\; \gamma\,\widehat{\mathrm{KL}}
#   = 0.64367 + 0.1 \times 0.75 = 0.71867$$

# %%
pdpo = rddpo.pessimistic_dpo_loss(*logps4, beta, gamma, *pool).item()
pdpo_hand = dpo_hand + 0.1 * 0.75
print(f"rddpo.pessimistic_dpo_loss = {pdpo:.5f}   by hand = {pdpo_hand:.5f}")


# %% [markdown]
# ## 5. Which way each loss pushes
#
# Training changes the weights, but every loss reaches them through the four log-probabilities, so their
# gradients say everything about the direction. Gradient descent moves each log-probability *against*
# its gradient: a negative entry means "raise this response's probability".
#
# For DPO, with $\sigma(-z) = 1 - \sigma(z)$:
#
# $$\frac{\partial L_{\text{DPO}}}{\partial \log\pi_\theta(y_{w,b})} = -\frac{\beta}{B}\,\sigma(-\beta h_b),
#   \qquad \frac{\partial L_{\text{DPO}}}{\partial \log\pi_\theta(y_{l,b})} = +\frac{\beta}{B}\,\sigma(-\beta h_b)$$
#
# - pair 1: $-\tfrac{0.5}{2}\,\sigma(-1) = -0.25 \times 0.26894 = -0.06724$
# - pair 2: $-\tfrac{0.5}{2}\,\sigma(0.5) = -0.25 \times 0.62246 = -0.15561$
#
# DPO always pushes the chosen response up and the rejected one down, hardest on the pairs it gets wrong,
# and never stops: $\sigma(-\beta h) > 0$ for every finite $h$.
#
# The KL term does not touch the pairs at all: it reads the pool. On each pool response it adds
#
# $$\frac{\partial\, \gamma\widehat{\mathrm{KL}}}{\partial \log\pi_\theta(y_b)} = -\frac{\gamma}{B} = -\frac{0.1}{2} = -0.05,$$
#
# raising what the reference writes: it holds probability mass where $\pi_{\text{ref}}$ has it, which DPO
# alone is free to drain (its loss only sees differences). Autograd computes the table (the pairs' log-probs):

# %%
def gradients(loss_fn):
    leaves = [x.clone().requires_grad_() for x in logps4]
    loss_fn(*leaves).backward()
    return leaves[0].grad, leaves[1].grad  # d loss / d policy chosen, d loss / d policy rejected; (B,) each

losses = {
    "DPO": lambda *l: rddpo.dpo_loss(*l, beta),
    "IPO": lambda *l: rddpo.ipo_loss(*l, beta),
    "d-DPO": lambda *l: rddpo.distill_loss(*l, rm_chosen_rewards, rm_rejected_rewards, beta),
    "e-DPO": lambda *l: rddpo.pessimistic_distill_loss(*l, family_chosen_rewards, family_rejected_rewards, beta, gamma,
                                                       *pool),
    "p-DPO": lambda *l: rddpo.pessimistic_dpo_loss(*l, beta, gamma, *pool),
}
pool_leaf = pool_policy_logps.clone().requires_grad_()
(gamma * rddpo.forward_kl_estimate(pool_leaf, pool_reference_logps)).backward()
print("d (gamma KL) / d log pi of the two pool responses:", pool_leaf.grad.tolist())
grads = {name: gradients(fn) for name, fn in losses.items()}
print(f"{'':<8} {'d L / d log pi(y_w)':^22} {'d L / d log pi(y_l)':^22}")
print(f"{'':<8} {'pair 1':>10} {'pair 2':>10}  {'pair 1':>10} {'pair 2':>10}")
for name, (g_chosen, g_rejected) in grads.items():
    row = [f"{v + 0.0:>10.5f}" for v in g_chosen.tolist() + g_rejected.tolist()]  # + 0.0 turns -0.0 into 0.0
    print(f"{name:<8} " + " ".join(row[:2]) + "  " + " ".join(row[2:]))

# %% [markdown]
# Reading the table, row by row:
#
# - **DPO**: chosen up (negative), rejected down (positive) on both pairs, more on pair 2.
# - **IPO**: $\partial L/\partial \log\pi(y_w) = \tfrac{2}{B}(h_b - \tfrac{1}{2\beta}) = (2 - 1,\ -1 - 1) = (1, -2)$:
#   on pair 1 IPO pushes the chosen response *down*, because the margin overshoots its target.
# - **d-DPO**: $\tfrac{2}{B}(\Delta r_b - \beta h_b)(-\beta) = (0,\ 1 \times -0.5) = (0, -0.5)$: nothing on pair 1,
#   whose margin already equals the reward model's.
# - **e-DPO**: only the selected member 1 counts, $(\Delta r_1 - \beta h) = (-0.5, 0)$, giving
#   $(0.25, 0)$ for the chosen responses: on pair 1 it *lowers* the chosen response, shrinking a margin that
#   the conservative member does not support.
# - **p-DPO** equals the DPO row on the pairs; its KL term acts on the pool's responses ($-0.05$ each).

# %% [markdown]
# ## 6. Exercises
#
# Use the numbers of section 4 ($\beta = 0.5$, $\gamma = 0.1$, $B = 2$). Work each one by hand first, then
# check it with `rddpo` in a new cell. The last cell of the notebook checks the solutions.
#
# **Exercise 1.** At step 0 every $h = 0$. What is the DPO loss? Does it depend on $\beta$?
#
# <details><summary>Solution</summary>
#
# $-\log\sigma(0) = -\log\tfrac12 = \ln 2 \approx 0.6931$ for every pair, so the mean is $\ln 2$, whatever
# $\beta$ is. Check: `rddpo.dpo_loss(x, x, x, x, beta)` for any tensor `x` and any `beta`.
# This is the number to expect from the first steps of any DPO run.
#
# </details>
#
# **Exercise 2.** Add a third member to the e-DPO family with $r(x, y_w) = (1.0, 0.0)$ and
# $r(x, y_l) = (0.0, 0.5)$. Which member does the min select now, and what is the e-DPO loss?
#
# <details><summary>Solution</summary>
#
# Its differences are $\Delta r_2 = (1, -0.5)$, exactly the current implicit margins $\beta h = (1, -0.5)$, so
# its distillation loss is $\big((1-1)^2 + (-0.5+0.5)^2\big)/2 = 0$: member 2 is selected, and the e-DPO
# loss is $0 + 0.075 = 0.075$, the KL term alone. Check: stack `t(1.0, 0.0)` onto `family_chosen_rewards`
# and `t(0.0, 0.5)` onto `family_rejected_rewards` and call `rddpo.pessimistic_distill_loss` (with `*pool`).
#
# </details>
#
# **Exercise 3.** Add a constant $c = 3.7$ to the policy's log-probabilities of *both* responses of pair 1.
# Show that DPO, IPO and d-DPO do not change. Does p-DPO? What if its KL term were averaged over the pairs'
# own responses instead of the pool?
#
# <details><summary>Solution</summary>
#
# $h_1 = (\log\pi_\theta(y_w) + c - \log\pi_{\text{ref}}(y_w)) - (\log\pi_\theta(y_l) + c - \log\pi_{\text{ref}}(y_l))$:
# the $c$ cancels, and DPO, IPO and d-DPO see the policy only through $h$. p-DPO does not change either:
# its KL term reads the pool, not pair 1. Averaged over the pairs' own $2B$ responses it would fall by
# $2c/(2B) = c/2 = 1.85$, so that p-DPO would fall by $\gamma \times 1.85 = 0.185$: raising the likelihood
# of the training responses, any amount, would *lower* the loss. That is the memorising that a pool of
# fresh samples of $\pi_{\text{ref}}$ avoids.
#
# </details>
#
# **Exercise 4.** With $\beta = 0.5$, for which $h$ is the IPO loss of a pair smallest? And the DPO loss?
# Evaluate the DPO loss at $h = 10$ and $h = 100$.
#
# <details><summary>Solution</summary>
#
# IPO: at $h = 1/(2\beta) = 1$, where it is 0. DPO has no minimiser: $\log(1 + e^{-\beta h})$ keeps falling
# as $h$ grows ($0.00672$ at $h = 10$, about $2 \times 10^{-22}$ at $h = 100$) and reaches 0 only in the limit.
# So on a finite data set, gradient descent on DPO keeps growing the implicit rewards without bound;
# notebook 1 follows where that leads. Check: `rddpo.dpo_loss(t(10.), t(0.), t(0.), t(0.), 0.5)`.
#
# </details>

# %% [markdown]
# ## What this notebook showed, asserted
#
# Running the cell below is the test: it fails if any claim above stops being true of `rddpo.py`.

# %%
# 1-2. the masks and the sequence log-prob
assert response[0].tolist() == [0] * 6 + [1] * 6 + [0] * 6  # 5 words + eos, then padding
assert response[1].sum() == 12 and attention[1].sum() == 18
assert torch.allclose(seq_logps.double(), torch.tensor(by_hand, dtype=torch.float64), atol=1e-4)
for row in (0, 1):  # a random model is close to uniform: about ln V per token
    assert abs(seq_logps[row].item() / response[row].sum().item() + ln_V) < 0.3

# 3. implicit reward: exactly 0 at step 0, DPO starts at ln 2, one step opens a positive margin
assert (reward_step0 == 0).all()
assert abs(loss_step0.item() - math.log(2)) < 1e-6
assert h_step1 > 0 and reward_step1[0] > 0 > reward_step1[1]

# 4. the hand arithmetic equals rddpo's losses
assert h.tolist() == [2.0, -1.0]
for got, hand in [(dpo, dpo_hand), (ipo, 2.5), (ddpo, 0.5), (fkl, 0.75), (edpo, 0.2), (pdpo, 0.64367 + 0.075)]:
    assert abs(got - hand) < 1e-5, (got, hand)
assert abs(dpo - 0.64367) < 1e-5 and per_member == [0.5, 0.125]

# 5. gradient signs and values
g_chosen, g_rejected = grads["DPO"]
assert (g_chosen < 0).all() and (g_rejected > 0).all()  # chosen up, rejected down
assert torch.allclose(g_chosen, -beta / 2 * torch.sigmoid(-beta * h))
assert torch.allclose(pool_leaf.grad, t(-0.05, -0.05))  # the KL term raises the pool's responses
assert torch.equal(grads["p-DPO"][0], grads["DPO"][0]) and torch.equal(grads["p-DPO"][1], grads["DPO"][1])
assert grads["IPO"][0].tolist() == [1.0, -2.0] and grads["d-DPO"][0].tolist() == [0.0, -0.5]
assert torch.allclose(grads["e-DPO"][0], t(0.25, 0.0))

# 6. the exercises' solutions
x = t(-7.0, -3.0)
for b in (0.1, 0.5, 2.0):
    assert abs(rddpo.dpo_loss(x, x, x, x, b).item() - math.log(2)) < 1e-12  # exercise 1
three_chosen = torch.cat([family_chosen_rewards, t(1.0, 0.0)[None]])  # (3, B)
three_rejected = torch.cat([family_rejected_rewards, t(0.0, 0.5)[None]])  # (3, B)
assert abs(rddpo.pessimistic_distill_loss(*logps4, three_chosen, three_rejected, beta, gamma, *pool).item() - 0.075) < 1e-12  # exercise 2
shifted = (policy_chosen_logps + t(3.7, 0), policy_rejected_logps + t(3.7, 0), reference_chosen_logps, reference_rejected_logps)
assert abs(rddpo.dpo_loss(*shifted, beta).item() - dpo) < 1e-12  # exercise 3
assert abs(rddpo.ipo_loss(*shifted, beta).item() - ipo) < 1e-12
assert abs(rddpo.distill_loss(*shifted, rm_chosen_rewards, rm_rejected_rewards, beta).item() - ddpo) < 1e-12
assert abs(rddpo.pessimistic_dpo_loss(*shifted, beta, gamma, *pool).item() - pdpo) < 1e-12
dpo_at = [rddpo.dpo_loss(t(v), t(0.0), t(0.0), t(0.0), 0.5).item() for v in (1.0, 10.0, 100.0)]  # exercise 4
assert dpo_at[0] > dpo_at[1] > dpo_at[2] > 0 and abs(dpo_at[1] - 0.00672) < 1e-5
assert rddpo.ipo_loss(t(1.0), t(0.0), t(0.0), t(0.0), 0.5).item() == 0
print("all claims hold")
