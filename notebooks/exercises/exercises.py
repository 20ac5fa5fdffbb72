"""
Exercises: write the method's formulas yourself, then check them.

Each function below is a stub: its docstring states the formula (as docs/METHOD.md writes it) and
the shapes, and its body raises NotImplementedError. Replace the body with your own code; leave the
name and the arguments as they are, since the checker calls them by name. Work in this file or in a
copy of it anywhere, and check it with

    python notebooks/exercises/check.py                  # this file
    python notebooks/exercises/check.py my_copy.py       # a copy

which prints one line per exercise: passed, not yet written, or wrong (with a hint where it can tell
the mistake). The names and argument orders are those of rddpo.py and toy_bandit.py, so once an
exercise passes you can compare your code with theirs. Worked solutions, once you have tried:
notebooks/exercises/solutions.py. The classroom page, notebooks/4_exercises, says which notebook
section teaches each exercise.

Shapes: B pairs, T tokens, V vocab, K reward models, M pool responses, n arms of the bandit. The
log-probabilities are sums over a response's tokens, one number per response. Exercises 1-8 take
torch tensors (float64 in the checker) and return torch tensors; 9-10 take and return numpy arrays.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F


# -----------------------------------------------------------------------------
# 1. the implicit reward


def implicit_reward(policy_logps, reference_logps, beta):
    """1. The implicit reward: r_theta(x, y) = beta * (log pi_theta(y|x) - log pi_ref(y|x)).

    policy_logps, reference_logps (B,); beta a float  ->  (B,)
    """
    raise NotImplementedError


# -----------------------------------------------------------------------------
# 2. the losses: batch means of functions of the log-ratio margin
#    h = (log pi_theta(y_w) - log pi_ref(y_w)) - (log pi_theta(y_l) - log pi_ref(y_l))


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps, beta):
    """2. DPO: mean over the batch of -log sigma(beta h), sigma the logistic sigmoid.

    four (B,) log-prob tensors; beta a float  ->  a scalar (shape ())
    """
    raise NotImplementedError


def ipo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps, beta):
    """3. IPO: mean over the batch of (h - 1 / (2 beta))^2, h from summed token log-probs.

    four (B,) log-prob tensors; beta a float  ->  a scalar (shape ())
    """
    raise NotImplementedError


def distill_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                 reference_rejected_logps, rm_chosen_rewards, rm_rejected_rewards, beta):
    """4. d-DPO, distilling one reward model r: mean over the batch of (Delta r - beta h)^2,
    with Delta r = r(x, y_w) - r(x, y_l).

    four (B,) log-prob tensors; rm_chosen_rewards, rm_rejected_rewards (B,); beta  ->  a scalar
    """
    raise NotImplementedError


def forward_kl_estimate(policy_pool_logps, reference_pool_logps):
    """5. The forward KL,
    KL(pi_ref || pi_theta) = E_{y ~ pi_ref}[log pi_ref(y|x) - log pi_theta(y|x)],
    estimated by the mean over M responses y sampled from pi_ref (the pool).

    policy_pool_logps, reference_pool_logps (M,): log pi_theta(y) and log pi_ref(y)  ->  a scalar
    """
    raise NotImplementedError


def pessimistic_distill_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                             reference_rejected_logps, rm_chosen_rewards, rm_rejected_rewards, beta,
                             gamma, policy_pool_logps, reference_pool_logps):
    """6. e-DPO, pessimistic distillation over a family of K reward models:
    min_k mean_b (Delta r_{k,b} - beta h_b)^2 + gamma * FKL, FKL the estimate of exercise 5.
    The minimum is over the K batch-level losses (each a mean over the batch), not per pair.

    four (B,) log-prob tensors; rm_chosen_rewards, rm_rejected_rewards (K, B); beta, gamma floats;
    policy_pool_logps, reference_pool_logps (M,)  ->  a scalar
    """
    raise NotImplementedError


def pessimistic_dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps, beta, gamma, policy_pool_logps,
                         reference_pool_logps):
    """7. p-DPO: mean over the batch of -log sigma(beta h), plus gamma * FKL (exercise 5).

    four (B,) log-prob tensors; beta, gamma floats; policy_pool_logps, reference_pool_logps (M,)
    ->  a scalar
    """
    raise NotImplementedError


# -----------------------------------------------------------------------------
# 3. the sequence log-probability


def sequence_logps(logits, input_ids, response_mask):
    """8. log pi(y|x) = sum over t = 1 .. T-1 of m_t * log softmax(logits[:, t-1])[input_ids[:, t]]:
    the logits at position t-1 predict the token at t, and m_t = response_mask[:, t] is 1 on the
    response's tokens (its closing eos included) and 0 on the prompt and the padding. A SUM over the
    response's tokens, not a mean. Rows are padded (on the right or the left) to a common T, and the
    logits at padded positions may be nan: select with torch.where, since nan * 0 is nan.

    logits (B, T, V); input_ids (B, T) int64; response_mask (B, T) of 0 and 1  ->  (B,)
    """
    raise NotImplementedError


# -----------------------------------------------------------------------------
# 4. the bandit, in numpy: one prompt, n arms, a softmax policy pi = softmax(logits)


def optimal_policy(pi_ref, reward, beta):
    """9. The RLHF optimum pi*_r(y) = pi_ref(y) exp(r(y) / beta) / Z_r, the maximiser of
    E_pi[r] - beta KL(pi || pi_ref); Z_r makes it sum to 1.

    pi_ref (n,) probabilities; reward (n,); beta a float  ->  (n,) probabilities
    """
    raise NotImplementedError


def dpo_gradient(logits, pi_ref, winner, loser, beta):
    """10. The gradient of DPO's loss on one pair, -log sigma(beta h), with respect to the logits of
    the tabular softmax policy pi = softmax(logits), where
    h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)).
    Hint: log Z is the same for every arm, so it cancels in h.

    logits (n,); pi_ref (n,) probabilities; winner, loser: the arms y_w, y_l (ints); beta
    ->  (n,) d loss / d logits
    """
    raise NotImplementedError
