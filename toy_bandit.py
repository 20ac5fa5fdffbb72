"""
Robust preference optimization in a bandit small enough to solve by hand.

One prompt, a handful of arms (responses), a reference policy pi_ref, a gold reward and a finite
set of preference pairs. DPO's loss reaches its infimum only as every winner/loser log-ratio h goes
to infinity, so gradient descent walks off for every beta (a); with shared features it can even
lower the preferred arm's probability while the margin grows (b). Distilling an explicit reward
model (d-DPO) has a finite target, pi*_r = pi_ref exp(r / beta) / Z; pessimism over a family of
reward models (e-DPO), or a forward-KL leash on DPO (p-DPO), keeps the policy near pi_ref when the
reward model is biased (c, d). Every gradient is written by hand, every closed form sits next to the
gradient descent that should reach it, and test_toy_bandit.py checks that they agree.

    python toy_bandit.py [--out toy_out] [--json]
"""
import argparse
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import matplotlib

matplotlib.use("Agg")  # figures go to files; no screen needed
import matplotlib.pyplot as plt

# -----------------------------------------------------------------------------
# 1. numerics


def log_softmax(z):
    z = z - z.max()  # shift so exp cannot overflow
    return z - np.log(np.exp(z).sum())


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)  # log 1/(1 + e^-x) without overflow for either sign


def sigmoid(x):
    return np.exp(log_sigmoid(x))


def kl(p, q):
    """KL(p || q) = sum p (log p - log q) for probability vectors, with 0 log 0 = 0."""
    m = p > 0
    return float(np.sum(p[m] * (np.log(p[m]) - np.log(q[m]))))


# -----------------------------------------------------------------------------
# 2. the bandit and its two policy classes


@dataclass
class Bandit:
    """One prompt. The policy is pi_theta = softmax(phi @ theta): phi = I is the tabular softmax,
    a shared phi the log-linear policy (the bandit analogue of a language model)."""
    phi: np.ndarray        # (n, d) features of the n arms
    theta_ref: np.ndarray  # (d,) pi_ref = softmax(phi @ theta_ref)
    winners: np.ndarray    # (B,) arm of y_w in each observed pair
    losers: np.ndarray     # (B,) arm of y_l
    gold: np.ndarray       # (n,) true reward, only used to evaluate

    @property
    def ref_logp(self):
        return log_softmax(self.phi @ self.theta_ref)  # (n,)


def tabular(pi_ref, pairs, gold):
    pairs = np.asarray(pairs)  # (B, 2) rows (winner, loser)
    return Bandit(np.eye(len(pi_ref)), np.log(pi_ref), pairs[:, 0], pairs[:, 1], np.asarray(gold, float))


def incidence(bandit):
    """E with h = E @ (logits - ref logits): +1 at the winner, -1 at the loser of each pair."""
    E = np.zeros((len(bandit.winners), len(bandit.gold)))  # (B, n)
    E[np.arange(len(E)), bandit.winners] += 1
    E[np.arange(len(E)), bandit.losers] -= 1
    return E


def margins(bandit, logp):
    """h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)); the implicit margin is beta h."""
    s = logp - bandit.ref_logp  # (n,)
    return s[bandit.winners] - s[bandit.losers]  # (B,)


def margin_grad(bandit, dl_dh):
    """Chain rule through h: d h_i / d logits = e_w - e_l, because log Z cancels in the difference."""
    n = len(bandit.gold)
    return np.bincount(bandit.winners, dl_dh, n) - np.bincount(bandit.losers, dl_dh, n)  # (n,)


# -----------------------------------------------------------------------------
# 3. the five losses with their exact gradients (each returns loss and d loss / d h)


def dpo_loss(h, beta):
    # mean(-log sigmoid(beta h)); d/dh_i = -beta sigmoid(-beta h_i) / B, never 0: no finite optimum
    return float(-log_sigmoid(beta * h).mean()), -beta * sigmoid(-beta * h) / len(h)


def ipo_loss(h, beta):
    # mean((h - 1/(2 beta))^2); h summed over tokens in the LM code, one arm here
    d = h - 1 / (2 * beta)
    return float(np.mean(d ** 2)), 2 * d / len(h)


def distill_loss(h, dr, beta):
    # mean((dr - beta h)^2), dr = r(y_w) - r(y_l) from one reward model
    d = dr - beta * h
    return float(np.mean(d ** 2)), -2 * beta * d / len(h)


def pessimistic_distill_loss(h, drs, beta):
    """min over k of the batch-level d-DPO loss for (K, B) reward differences; returns the argmin k too."""
    # choice: min over whole-batch losses, not per pair: a per-pair min lets every pair pick its easiest model
    losses = [distill_loss(h, dr, beta) for dr in drs]
    k = int(np.argmin([loss for loss, _ in losses]))
    return losses[k][0], losses[k][1], k


def forward_kl(logp, ref_logp):
    """KL(pi_ref || pi) = sum pi_ref (log pi_ref - log pi) and its gradient in the logits, pi - pi_ref."""
    # the bandit sums over every arm, so this is the exact FKL; the LM code estimates it on pi_ref's samples
    ref = np.exp(ref_logp)
    return float(np.sum(ref * (ref_logp - logp))), np.exp(logp) - ref


@dataclass
class Method:
    name: str                   # "dpo", "ipo", "ddpo", "edpo" or "pdpo"
    beta: float
    gamma: float = 0.0          # weight of the forward KL (e-DPO, p-DPO)
    rewards: np.ndarray = None  # (K, n) reward models over the arms (d-DPO: K = 1)


def objective(bandit, m, theta):
    """The method's loss at theta and its gradient in theta (chain rule: logits = phi @ theta)."""
    logp = log_softmax(bandit.phi @ theta)  # (n,)
    h = margins(bandit, logp)  # (B,)
    if m.name in ("dpo", "pdpo"):
        loss, dl_dh = dpo_loss(h, m.beta)
    elif m.name == "ipo":
        loss, dl_dh = ipo_loss(h, m.beta)
    elif m.name in ("ddpo", "edpo"):  # d-DPO is e-DPO with one reward model and gamma = 0
        drs = m.rewards[:, bandit.winners] - m.rewards[:, bandit.losers]  # (K, B)
        loss, dl_dh, _ = pessimistic_distill_loss(h, drs, m.beta)
    else:
        raise ValueError(f"unknown method {m.name}")
    grad = margin_grad(bandit, dl_dh)  # (n,) gradient in the logits
    if m.gamma:  # e-DPO and p-DPO add gamma * KL(pi_ref || pi)
        fkl, g = forward_kl(logp, bandit.ref_logp)
        loss, grad = loss + m.gamma * fkl, grad + m.gamma * g
    return loss, bandit.phi.T @ grad  # (d,)


# -----------------------------------------------------------------------------
# 4. plain gradient descent, the Bradley-Terry reward model and the family


def gradient_descent(grad_fn, x0, lr, steps, tol=1e-11):
    """Full-batch gradient descent with a fixed step; stops once |grad| < tol. Returns x and its path."""
    x, path = np.array(x0, float), [np.array(x0, float)]
    for _ in range(steps):
        g = grad_fn(x)
        if np.linalg.norm(g) < tol:
            break
        x = x - lr * g
        path.append(x)
    return x, np.array(path)  # (d,), (T + 1, d)


def train(bandit, m, steps=20000):
    """Gradient descent on a method's loss from pi_ref, with step 1/L for a bound L on its curvature."""
    # choice: step 1/L (L = sup |loss''(h)| |A|^2 / B + gamma |phi|^2 / 2) so every method and beta is
    # stable and converges at a comparable speed; |phi|^2 / 2 bounds the FKL's Hessian phi^T Cov_pi phi
    A = bandit.phi[bandit.winners] - bandit.phi[bandit.losers]  # (B, d): h = A @ (theta - theta_ref)
    curv = {"dpo": m.beta ** 2 / 4, "pdpo": m.beta ** 2 / 4, "ipo": 2.0, "ddpo": 2 * m.beta ** 2,
            "edpo": 2 * m.beta ** 2}[m.name]
    L = curv * np.linalg.norm(A, 2) ** 2 / len(A) + m.gamma * np.linalg.norm(bandit.phi, 2) ** 2 / 2
    return gradient_descent(lambda th: objective(bandit, m, th)[1], bandit.theta_ref, 1 / L, steps)


def bt_loss(bandit, r, lam=0.0, weights=None):
    """Weighted mean of -log sigmoid(r(y_w) - r(y_l)) + lam/2 |r|^2 for a reward r over the arms; and d/dr."""
    w = np.ones(len(bandit.winners)) if weights is None else np.asarray(weights, float)
    w = w / w.sum()  # (B,)
    dr = r[bandit.winners] - r[bandit.losers]  # (B,)
    loss = -np.sum(w * log_sigmoid(dr)) + lam / 2 * r @ r
    return float(loss), margin_grad(bandit, -w * sigmoid(-dr)) + lam * r


def fit_reward_model(bandit, lam=0.1, weights=None, steps=20000):
    """Bradley-Terry reward model, one number per arm, fitted by gradient descent from r = 0."""
    # choice: an L2 penalty; without it BT diverges on unanimous pairs exactly as DPO does
    w = np.ones(len(bandit.winners)) if weights is None else np.asarray(weights, float)
    E = np.sqrt(w / w.sum())[:, None] * incidence(bandit)  # (B, n)
    lr = 1 / (np.linalg.norm(E, 2) ** 2 / 4 + lam)  # BT's curvature is at most 1/4 per pair
    r0 = np.zeros(len(bandit.gold))
    return gradient_descent(lambda r: bt_loss(bandit, r, lam, weights)[1], r0, lr, steps)[0]  # (n,)


def reward_family(bandit, longer, shares, lam=0.1):
    """One BT model per share s: the data reweighted so that pairs won by the longer arm carry weight s."""
    # choice: reweighting stands in for METHOD.md's resampling, so the toy has no sampling noise
    won_long = longer[bandit.winners] > longer[bandit.losers]  # (B,)
    f = won_long.mean()
    return np.array([fit_reward_model(bandit, lam, np.where(won_long, s / f, (1 - s) / (1 - f)))
                     for s in shares])  # (K, n)


# -----------------------------------------------------------------------------
# 5. closed forms


def optimal_policy(pi_ref, reward, beta):
    """pi*_r = pi_ref exp(r / beta) / Z, the maximiser of E_pi[r] - beta KL(pi || pi_ref)."""
    return np.exp(log_softmax(np.log(pi_ref) + np.asarray(reward, float) / beta))


def rlhf_value(pi, pi_ref, reward, beta):
    """J(pi, r) = E_pi[r] - E_ref[r] - beta KL(pi || pi_ref); invariant to shifting r by a constant."""
    return float(pi @ reward - pi_ref @ reward - beta * kl(pi, pi_ref))


def best_value(pi_ref, reward, beta):
    """max_pi J(pi, r) = beta KL(pi_ref || pi*_r); both sides equal beta log E_ref e^{r/beta} - E_ref r."""
    return beta * kl(pi_ref, optimal_policy(pi_ref, reward, beta))


def pessimistic_choice(pi_ref, rewards, beta):
    """The robust policy over a family {r_k}: pi*_r of the member whose optimum is nearest pi_ref in FKL."""
    kls = [kl(pi_ref, optimal_policy(pi_ref, r, beta)) for r in rewards]
    k = int(np.argmin(kls))
    return k, optimal_policy(pi_ref, rewards[k], beta)


def ipo_policy(bandit, beta):
    """Tabular IPO: least squares on h_i = 1/(2 beta); GD from pi_ref finds the min-norm solution."""
    E = incidence(bandit)  # (B, n)
    s = np.linalg.lstsq(E, np.full(len(E), 1 / (2 * beta)), rcond=None)[0]  # (n,) log pi - log pi_ref
    return np.exp(log_softmax(bandit.ref_logp + s))


def pdpo_one_pair(pi_ref, w, l, beta, gamma):
    """p-DPO's exact optimum for the single pair y_w > y_l (tabular). Setting the logit gradient
    -beta sigmoid(-beta h) (e_w - e_l) + gamma (pi - pi_ref) to 0: unseen arms keep pi_ref, and
    pi(y_w) = pi_ref(y_w) + d, pi(y_l) = pi_ref(y_l) - d with d = (beta / gamma) sigmoid(-beta h(d))."""
    pi_ref = np.asarray(pi_ref, float)
    h = lambda d: np.log1p(d / pi_ref[w]) - np.log1p(-d / pi_ref[l])
    lo, hi = 0.0, pi_ref[l]  # d - (beta/gamma) sigmoid(-beta h(d)) rises from < 0 to > 0 on (0, pi_ref(l))
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid < beta / gamma * sigmoid(-beta * h(mid)) else (lo, mid)
    pi = pi_ref.copy()
    pi[w], pi[l] = pi_ref[w] + lo, pi_ref[l] - lo
    return pi
