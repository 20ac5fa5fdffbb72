"""
Robust preference optimization in a bandit small enough to solve by hand.

One prompt, a handful of arms (responses), a reference policy pi_ref, a gold reward and a finite
set of preference pairs. When each pair is seen in one order only, DPO's loss reaches its infimum
only as every winner/loser log-ratio h goes to infinity, so gradient descent walks off for every
beta (a); with shared features it can even lower the preferred arm's probability while the margin
grows (b). Distilling an explicit reward model (d-DPO) has a finite target, pi*_r = pi_ref
exp(r / beta) / Z; pessimism over a family of reward models (e-DPO), or a forward-KL leash on DPO
(p-DPO), keeps the policy near pi_ref when the reward model is biased (c, d). Every gradient is
written by hand, every closed form sits next to the gradient descent that should reach it, and
test_toy_bandit.py checks that they agree. Method names and function names follow rddpo.py
("d-dpo", logratio_margin, bradley_terry_loss, train_policy, ...). Each run draws its figures,
a_divergence.png .. d_beta_sweep.png, into a new numbered folder inside --out, so no run overwrites
another.

    python toy_bandit.py [--out runs] [--json]  # figures in runs/bandit-001/, then bandit-002/, ...
"""
import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass

import numpy as np
import matplotlib

matplotlib.use("Agg")  # figures go to files; no screen needed
import matplotlib.pyplot as plt

METHODS = ("dpo", "ipo", "d-dpo", "e-dpo", "p-dpo")  # the same names as rddpo.py


# -----------------------------------------------------------------------------
# 1. numerics


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)  # shift so exp cannot overflow; works on (..., n)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


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
    return Bandit(np.eye(len(pi_ref)), np.log(pi_ref), pairs[:, 0], pairs[:, 1],
                  np.asarray(gold, float))


def probs(bandit, theta):
    return np.exp(log_softmax(theta @ bandit.phi.T))  # (n,), or (T, n) for a path of thetas (T, d)


def pair_features(bandit, phi=None):
    """A with h = A @ (theta - theta_ref): phi(y_w) - phi(y_l) per pair (log Z cancels in h)."""
    phi = bandit.phi if phi is None else phi
    return phi[bandit.winners] - phi[bandit.losers]  # (B, d)


def logratio_margin(bandit, logp):
    """h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)); the implicit margin
    is beta h."""
    s = logp - bandit.ref_logp  # (..., n)
    return s[..., bandit.winners] - s[..., bandit.losers]  # (..., B)


def logratio_margin_grad(bandit, dl_dh):
    """Chain rule through h: d h_i / d logits = e_w - e_l, because log Z cancels in the
    difference."""
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
    """min over k of the batch-level d-DPO loss for (K, B) reward differences; returns the argmin
    k too."""
    # choice: min over whole-batch losses, not per pair: a per-pair min lets every pair pick its
    # easiest model
    losses = [distill_loss(h, dr, beta) for dr in drs]
    k = int(np.argmin([loss for loss, _ in losses]))
    return losses[k][0], losses[k][1], k


def forward_kl(logp, ref_logp):
    """KL(pi_ref || pi) = sum pi_ref (log pi_ref - log pi) and its gradient in the logits,
    pi - pi_ref."""
    # the bandit sums over every arm, so this is the exact FKL; the LM code estimates it on pi_ref's
    # samples
    ref = np.exp(ref_logp)
    return float(np.sum(ref * (ref_logp - logp))), np.exp(logp) - ref


@dataclass
class Method:
    name: str                   # one of METHODS: "dpo", "ipo", "d-dpo", "e-dpo" or "p-dpo"
    beta: float
    gamma: float = 0.0          # weight of the forward KL (e-DPO, p-DPO)
    rewards: np.ndarray = None  # (K, n) reward models over the arms (d-DPO: K = 1)

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}; choose from {', '.join(METHODS)}")


def policy_loss(bandit, m, theta):
    """The method's loss at theta and its gradient in theta (chain rule: logits = phi @ theta)."""
    logp = log_softmax(bandit.phi @ theta)  # (n,)
    h = logratio_margin(bandit, logp)  # (B,)
    if m.name in ("dpo", "p-dpo"):
        loss, dl_dh = dpo_loss(h, m.beta)
    elif m.name == "ipo":
        loss, dl_dh = ipo_loss(h, m.beta)
    elif m.name in ("d-dpo", "e-dpo"):  # d-DPO is e-DPO with one reward model and gamma = 0
        drs = m.rewards[:, bandit.winners] - m.rewards[:, bandit.losers]  # (K, B)
        loss, dl_dh, _ = pessimistic_distill_loss(h, drs, m.beta)
    else:
        raise ValueError(f"unknown method {m.name!r}; choose from {', '.join(METHODS)}")
    grad = logratio_margin_grad(bandit, dl_dh)  # (n,) gradient in the logits
    if m.gamma:  # e-DPO and p-DPO add gamma * KL(pi_ref || pi)
        fkl, g = forward_kl(logp, bandit.ref_logp)
        loss, grad = loss + m.gamma * fkl, grad + m.gamma * g
    return loss, bandit.phi.T @ grad  # (d,)


# -----------------------------------------------------------------------------
# 4. plain gradient descent, the Bradley-Terry reward model and the family


def gradient_descent(grad_fn, x0, lr, steps, tol=1e-11):
    """Full-batch gradient descent with a fixed step; stops once |grad| < tol. Returns x and its
    path."""
    x, path = np.array(x0, float), [np.array(x0, float)]
    for _ in range(steps):
        g = grad_fn(x)
        if np.linalg.norm(g) < tol:
            break
        x = x - lr * g
        path.append(x)
    return x, np.array(path)  # (d,), (T + 1, d)


def train_policy(bandit, m, steps=20000):
    """Gradient descent on a method's loss from pi_ref, with step 1/L for a bound L on its
    curvature."""
    # choice: step 1/L (L = sup |loss''(h)| |A|^2 / B + gamma |phi|^2 / 2) so every method and beta
    # is stable and converges at a comparable speed; |phi|^2 / 2 bounds the FKL's Hessian
    # phi^T Cov_pi phi
    A = pair_features(bandit)  # (B, d)
    curv = {"dpo": m.beta ** 2 / 4, "p-dpo": m.beta ** 2 / 4, "ipo": 2.0, "d-dpo": 2 * m.beta ** 2,
            "e-dpo": 2 * m.beta ** 2}[m.name]
    L = curv * np.linalg.norm(A, 2) ** 2 / len(A) + m.gamma * np.linalg.norm(bandit.phi, 2) ** 2 / 2
    return gradient_descent(lambda th: policy_loss(bandit, m, th)[1], bandit.theta_ref, 1 / L,
                            steps)


def bradley_terry_loss(bandit, r, weights=None):
    """Weighted mean of -log sigmoid(r(y_w) - r(y_l)) for a reward r over the arms; and d/dr."""
    w = np.ones(len(bandit.winners)) if weights is None else np.asarray(weights, float)
    w = w / w.sum()  # (B,)
    dr = r[bandit.winners] - r[bandit.losers]  # (B,)
    return float(-np.sum(w * log_sigmoid(dr))), logratio_margin_grad(bandit, -w * sigmoid(-dr))


def reward_model_loss(bandit, r, lam=0.0, weights=None):
    """Bradley-Terry plus lam/2 |r|^2, and d/dr (rddpo.py's reward_model_loss adds a centering term
    instead)."""
    loss, grad = bradley_terry_loss(bandit, r, weights)
    return loss + lam / 2 * r @ r, grad + lam * r


def train_reward_model(bandit, lam=0.1, weights=None, steps=20000):
    """Bradley-Terry reward model, one number per arm, fitted by gradient descent from r = 0."""
    # choice: an L2 penalty; without it BT diverges on unanimous pairs exactly as DPO does
    w = np.ones(len(bandit.winners)) if weights is None else np.asarray(weights, float)
    E = np.sqrt(w / w.sum())[:, None] * pair_features(bandit, np.eye(len(bandit.gold)))  # (B, n)
    lr = 1 / (np.linalg.norm(E, 2) ** 2 / 4 + lam)  # BT's curvature is at most 1/4 per pair
    r0 = np.zeros(len(bandit.gold))
    return gradient_descent(lambda r: reward_model_loss(bandit, r, lam, weights)[1], r0, lr,
                            steps)[0]  # (n,)


def reward_family(bandit, length, shares, lam=0.1):
    """One BT model per share s: the data reweighted so that, among pairs of unequal length, those
    the longer arm won carry a share s of the weight (pairs of equal length keep weight 1)."""
    # choice: reweighting stands in for docs/METHOD.md's resampling, so the toy has no sampling
    # noise
    longer_won = length[bandit.winners] > length[bandit.losers]  # (B,)
    shorter_won = length[bandit.winners] < length[bandit.losers]  # (B,)
    f = longer_won.sum() / (longer_won.sum() + shorter_won.sum())  # the share in the data as it is
    weights = [np.where(longer_won, s / f, np.where(shorter_won, (1 - s) / (1 - f), 1.0))
               for s in shares]
    return np.array([train_reward_model(bandit, lam, w) for w in weights])  # (K, n)


# -----------------------------------------------------------------------------
# 5. closed forms


def optimal_policy(pi_ref, reward, beta):
    """pi*_r = pi_ref exp(r / beta) / Z, the maximiser of E_pi[r] - beta KL(pi || pi_ref)."""
    return np.exp(log_softmax(np.log(pi_ref) + np.asarray(reward, float) / beta))


def rlhf_value(pi, pi_ref, reward, beta):
    """J(pi, r) = E_pi[r] - E_ref[r] - beta KL(pi || pi_ref); invariant to shifting r by a
    constant."""
    return float(pi @ reward - pi_ref @ reward - beta * kl(pi, pi_ref))


def best_value(pi_ref, reward, beta):
    """max_pi J(pi, r) = beta KL(pi_ref || pi*_r); both sides equal
    beta log E_ref e^{r/beta} - E_ref r."""
    return beta * kl(pi_ref, optimal_policy(pi_ref, reward, beta))


def pessimistic_choice(pi_ref, rewards, beta):
    """pi*_r of the member whose optimum is nearest pi_ref in forward KL: e-DPO's limit as
    gamma -> 0. It is the maximin policy when the family is convex; over a few members, the maximin
    can mix them."""
    kls = [kl(pi_ref, optimal_policy(pi_ref, r, beta)) for r in rewards]
    k = int(np.argmin(kls))
    return k, optimal_policy(pi_ref, rewards[k], beta)


def least_squares_policy(bandit, target):
    """Where GD from pi_ref stops on mean((target - h)^2): theta_ref plus the min-norm least-squares
    solution of A (theta - theta_ref) = target, because every gradient A^T v stays in A's row
    space."""
    A = pair_features(bandit)  # (B, d)
    target = np.broadcast_to(np.asarray(target, float), len(A))  # (B,)
    return probs(bandit, bandit.theta_ref + np.linalg.lstsq(A, target, rcond=None)[0])


def ipo_policy(bandit, beta):
    # IPO's loss is mean((h - 1/(2 beta))^2): least squares with target 1/(2 beta) on every pair
    return least_squares_policy(bandit, 1 / (2 * beta))


def distill_policy(bandit, reward, beta):
    """d-DPO's limit: (dr - beta h)^2 = beta^2 (dr / beta - h)^2. If the pairs connect every arm of
    a tabular bandit this is optimal_policy(pi_ref, reward, beta); if not, only each part's ratios
    are set."""
    return least_squares_policy(bandit, (reward[bandit.winners] - reward[bandit.losers]) / beta)


def pdpo_one_pair(pi_ref, w, l, beta, gamma):
    """p-DPO's exact optimum for the single pair y_w > y_l (tabular). Setting the logit gradient
    -beta sigmoid(-beta h) (e_w - e_l) + gamma (pi - pi_ref) to 0: unseen arms keep pi_ref, and
    pi(y_w) = pi_ref(y_w) + d, pi(y_l) = pi_ref(y_l) - d with
    d = (beta / gamma) sigmoid(-beta h(d))."""
    pi_ref = np.asarray(pi_ref, float)
    h = lambda d: np.log1p(d / pi_ref[w]) - np.log1p(-d / pi_ref[l])
    # d - (beta/gamma) sigmoid(-beta h(d)) rises from < 0 to > 0 on (0, pi_ref(l))
    lo, hi = 0.0, pi_ref[l]
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid < beta / gamma * sigmoid(-beta * h(mid)) else (lo, mid)
    pi = pi_ref.copy()
    pi[w], pi[l] = pi_ref[w] + lo, pi_ref[l] - lo
    return pi


# -----------------------------------------------------------------------------
# 6. scenarios: each returns its numbers and, given a folder, draws its figure

# choice: e-DPO's FKL only has to break ties between members that fit (docs/METHOD.md)
GAMMA_E = 0.01
GAMMA_P = 1.0   # choice: p-DPO's gamma must stay away from 0, or it falls back to DPO
# note: DPO pulls h with beta sigmoid(-beta h) but the FKL term has no beta, so at a fixed gamma
# p-DPO moves less from pi_ref as beta shrinks (scenario d): one pair gives
# d = (beta / gamma) sigmoid(-beta h)
# share of the weight on pairs the longer answer won, per member
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def row(bandit, name, logp, beta, closed=None):
    """One line of a table: policy, E_pi[gold], KL(pi || pi_ref), largest beta h, gap to the closed
    form."""
    pi = np.exp(logp)
    return {"method": name, "policy": pi.round(4).tolist(), "gold": float(pi @ bandit.gold),
            "kl": kl(pi, np.exp(bandit.ref_logp)),
            "margin": float(beta * logratio_margin(bandit, logp).max()),
            "gap": None if closed is None else float(np.abs(pi - closed).max())}


def run(bandit, name, m, closed=None, steps=20000):
    logp = log_softmax(bandit.phi @ train_policy(bandit, m, steps)[0])
    return row(bandit, name, logp, m.beta, closed)


def scenario_divergence(out=None, beta=1.0, betas=(0.1, 0.5, 1.0, 2.0), steps=3000):
    """(a) DPO diverges. docs/METHOD.md's one pair y1 > y2 over 3 arms (y3 unseen), then the total
    order a > b, b > c, a > c. DPO's margin grows for every beta and each arm that never wins goes
    to 0; IPO, d-DPO and (one pair) p-DPO stop at their closed forms."""
    one = tabular(np.ones(3) / 3, [(0, 1)], gold=[1.0, 0.0, 0.5])
    tot = tabular(np.ones(3) / 3, [(0, 1), (1, 2), (0, 2)], gold=[1.0, 0.5, 0.0])
    rows = [row(one, "oracle pi*_gold [y1>y2]",
                np.log(optimal_policy(np.ones(3) / 3, one.gold, beta)), beta)]
    for tag, b in (("y1>y2", one), ("a>b>c", tot)):
        r_hat = train_reward_model(b)
        closed_p = pdpo_one_pair(np.ones(3) / 3, 0, 1, beta, GAMMA_P) if b is one else None
        rows += [run(b, f"DPO [{tag}]", Method("dpo", beta), steps=steps),
                 run(b, f"IPO [{tag}]", Method("ipo", beta), ipo_policy(b, beta)),
                 run(b, f"d-DPO [{tag}]", Method("d-dpo", beta, rewards=r_hat[None]),
                     distill_policy(b, r_hat, beta)),
                 run(b, f"p-DPO [{tag}]", Method("p-dpo", beta, GAMMA_P), closed_p)]
    # with the step 1/L, L ~ beta^2, DPO's beta h takes the same path for every beta: beta only
    # rescales h
    dpo = {bt: probs(tot, train_policy(tot, Method("dpo", bt), steps)[1])
           for bt in betas}  # (T + 1, 3) each
    ipo = {bt: ipo_policy(tot, bt) for bt in betas}
    res = {"rows": rows, "beta": beta, "steps": steps,
           "dpo_largest_h": {str(bt): float(logratio_margin(tot, np.log(p[-1])).max())
                             for bt, p in dpo.items()},
           "dpo_pi_c": {str(bt): float(p[-1, 2]) for bt, p in dpo.items()},
           "ipo_pi_c": {str(bt): float(p[2]) for bt, p in ipo.items()}}
    if out:
        draw_divergence(tot, dpo, ipo, os.path.join(out, "a_divergence.png"))
    return res


def displacement_bandit():
    phi = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]])  # (3, 2): rows y_w, y_l, y_u
    # choice: the unseen arm is bad in gold, as off-distribution text usually is
    return Bandit(phi, np.zeros(2), np.array([0]), np.array([1]), np.array([1.0, 0.0, -1.0]))


def scenario_displacement(out=None, beta=1.0, steps=3000):
    """(b) Likelihood displacement: logits are (t, -t, 3t) along DPO's only direction
    phi_w - phi_l = (1, -1), so y_u's logit rises 3 times as fast as y_w's: pi(y_w) falls while the
    margin 2t grows without bound."""
    bandit = displacement_bandit()
    # choice: the family varies the L2 strength; a single pair gives nothing to resample
    family = np.array([train_reward_model(bandit, lam) for lam in (0.1, 0.3, 1.0)])  # (3, 3)
    methods = {"DPO": Method("dpo", beta), "d-DPO": Method("d-dpo", beta, rewards=family[:1]),
               "e-DPO": Method("e-dpo", beta, GAMMA_E, family),
               "p-DPO": Method("p-dpo", beta, GAMMA_P)}
    drs = family[:, bandit.winners] - family[:, bandit.losers]  # (K, B)
    # e-DPO follows the member it starts nearest
    k = pessimistic_distill_loss(np.zeros(1), drs, beta)[2]
    closed = {"d-DPO": distill_policy(bandit, family[0], beta),
              "e-DPO": distill_policy(bandit, family[k], beta)}
    paths = {k: probs(bandit, train_policy(bandit, m, steps)[1])
             for k, m in methods.items()}  # (T + 1, 3) each
    rows = [row(bandit, k, np.log(p[-1]), beta, closed.get(k)) for k, p in paths.items()]
    dpo = paths["DPO"]
    res = {"rows": rows, "beta": beta, "steps": steps,
           "dpo_pi_w": {str(t): float(dpo[t, 0]) for t in (0, 1, 10, 100, steps)},
           "dpo_margin": {str(t): float(beta * logratio_margin(bandit, np.log(dpo[t]))[0])
                          for t in (0, 1, 10, 100, steps)},
           "dpo_pi_w_falls_every_step": bool(np.all(np.diff(dpo[:, 0]) < 0))}
    if out:
        draw_displacement(bandit, paths, os.path.join(out, "b_displacement.png"))
    return res


def length_bias_bandit(bias=0.7, n_compare=4):
    """Five answers: good-short, ok-short, ok-long, bad-short, bad-long (the good one only exists
    short).
    Each pair is compared n_compare times; the annotator prefers the longer answer with probability
    `bias`, and otherwise samples Bradley-Terry on gold."""
    gold, length = (np.array([1.0, 0.0, 0.0, -1.0, -1.0]),
                    np.array([1.0, 1.0, 2.0, 1.0, 2.0]))  # (5,)
    pairs = []
    for i in range(5):
        for j in range(i + 1, 5):
            p = sigmoid(gold[i] - gold[j])  # P(i beats j) for the gold annotator
            if length[i] != length[j]:
                p = bias * (length[i] > length[j]) + (1 - bias) * p
            # choice: expected counts, rounded: no sampling noise
            k = int(np.floor(n_compare * p + 0.5))
            pairs += [(i, j)] * k + [(j, i)] * (n_compare - k)
    return tabular(np.ones(5) / 5, pairs, gold), length


def methods_for(beta, r_hat, family):
    return {"DPO": Method("dpo", beta), "IPO": Method("ipo", beta),
            "d-DPO": Method("d-dpo", beta, rewards=r_hat[None]),
            "e-DPO": Method("e-dpo", beta, GAMMA_E, family),
            "p-DPO": Method("p-dpo", beta, GAMMA_P)}


def scenario_family(out=None, beta=0.5, steps=3000):
    """(c) Length-biased labels. d-DPO distils the BT model fitted to all the data, which learned
    the bias; e-DPO takes the worst case over models fitted with 0% .. 100% of the weight on
    longer-won pairs."""
    bandit, length = length_bias_bandit()
    pi_ref, r_hat, family = (np.exp(bandit.ref_logp), train_reward_model(bandit),
                             reward_family(bandit, length, SHARES))
    k, pess = pessimistic_choice(pi_ref, family, beta)
    m = methods_for(beta, r_hat, family)
    rows = [row(bandit, "oracle pi*_gold", np.log(optimal_policy(pi_ref, bandit.gold, beta)), beta),
            run(bandit, "DPO", m["DPO"], steps=steps),
            run(bandit, "d-DPO (RM on all data)", m["d-DPO"], optimal_policy(pi_ref, r_hat, beta)),
            run(bandit, "d-DPO (member s=1.0)", Method("d-dpo", beta, rewards=family[-1:]),
                optimal_policy(pi_ref, family[-1], beta)),
            run(bandit, f"e-DPO (picks s={SHARES[k]})", m["e-DPO"], pess),
            run(bandit, "p-DPO", m["p-DPO"])]
    members = [{"share": s, "fkl_ref_to_opt": kl(pi_ref, optimal_policy(pi_ref, r, beta)),
                **row(bandit, f"pi*_r s={s}", np.log(optimal_policy(pi_ref, r, beta)), beta)}
               for s, r in zip(SHARES, family)]
    res = {"rows": rows, "beta": beta, "members": members, "pessimistic_share": SHARES[k],
           "mean_length": {r["method"]: float(np.array(r["policy"]) @ length) for r in rows}}
    if out:
        draw_family(bandit, res, os.path.join(out, "c_family.png"))
    return res


def scenario_beta_sweep(out=None, betas=(0.1, 0.2, 0.5, 1.0, 2.0), steps=3000):
    """(d) Final gold reward and KL(pi || pi_ref) of each method against beta, on the length-biased
    data."""
    bandit, length = length_bias_bandit()
    r_hat, family = train_reward_model(bandit), reward_family(bandit, length, SHARES)
    res = {"betas": list(betas), "steps": steps,
           "ref_gold": float(np.exp(bandit.ref_logp) @ bandit.gold)}
    for beta in betas:
        for name, m in methods_for(beta, r_hat, family).items():
            r, cur = (run(bandit, name, m, steps=steps),
                      res.setdefault(name, {"gold": [], "kl": [], "margin": []}))
            for key in cur:
                cur[key].append(r[key])
    if out:
        draw_beta_sweep(res, os.path.join(out, "d_beta_sweep.png"))
    return res


# -----------------------------------------------------------------------------
# 7. figures


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_divergence(bandit, dpo, ipo, path):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (bt, p) in enumerate(dpo.items()):
        t, c = np.arange(1, len(p)), f"C{i}"  # from step 1: at step 0 h = 0, off a log axis
        ax1.plot(t, logratio_margin(bandit, np.log(p[1:])).max(-1), c, label=f"beta={bt}")
        ax1.axhline(logratio_margin(bandit, np.log(ipo[bt])).max(), color=c, ls="--")
        ax2.plot(t, p[1:, 2], c, label=f"beta={bt}")
        ax2.axhline(ipo[bt][2], color=c, ls="--")
    ax1.set(xscale="log", yscale="log", xlabel="gradient step", ylabel="largest log-ratio margin h",
            title="a > b, b > c, a > c: DPO's margin keeps rising")
    ax2.set(xscale="log", yscale="log", xlabel="gradient step", ylabel="pi(c)",
            title="c never wins: DPO sends it to 0, IPO stops")
    for ax in (ax1, ax2):
        ax.plot([], [], "k--", label="IPO's closed form")
        ax.legend(fontsize=8, title="solid: DPO", title_fontsize=8)
    save(fig, path)


def draw_displacement(bandit, paths, path):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    p = paths["DPO"]
    t = np.arange(1, len(p) + 1)
    for i, name in enumerate(("pi(y_w), preferred", "pi(y_l), rejected", "pi(y_u), never seen")):
        ax1.plot(t, p[:, i], label=name)
    ax1.plot(t, logratio_margin(bandit, np.log(p))[:, 0] / 10, "k--", label="margin beta h / 10")
    ax1.set(xscale="log", xlabel="1 + gradient step", ylabel="probability",
            title="DPO, shared features: pi(y_w) falls as the margin grows")
    ax1.legend(fontsize=8)
    names = ["pi_ref"] + list(paths)
    bars = np.array([np.exp(bandit.ref_logp)] + [q[-1] for q in paths.values()])  # (methods, 3)
    for i, arm in enumerate(("y_w", "y_l", "y_u")):
        ax2.bar(np.arange(len(names)) + (i - 1) * 0.27, bars[:, i], 0.27, label=arm)
    ax2.set(xticks=np.arange(len(names)), xticklabels=names, ylabel="final probability",
            title="where each method stops")
    ax2.legend(fontsize=8)
    save(fig, path)


def draw_family(bandit, res, path):
    pi_ref = np.exp(bandit.ref_logp)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    frontier = [optimal_policy(pi_ref, bandit.gold, b) for b in np.geomspace(0.1, 10, 60)]
    ax.plot([kl(p, pi_ref) for p in frontier], [p @ bandit.gold for p in frontier], "k-", lw=1,
            label="pi*_gold for beta in [0.1, 10] (best possible)")
    for m in res["members"]:
        ax.scatter(m["kl"], m["gold"], c="grey", marker="x")
        ax.annotate(f"s={m['share']}", (m["kl"], m["gold"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    for i, r in enumerate(res["rows"][1:]):
        ax.scatter(r["kl"], r["gold"], c=f"C{i}", label=r["method"], zorder=3)
    ax.set(xlabel="KL(pi || pi_ref)", ylabel="E_pi[gold reward]",
           title=f"length-biased labels, beta={res['beta']} (x: pi*_r of each member)")
    ax.legend(fontsize=7, loc="lower right")
    save(fig, path)


def draw_beta_sweep(res, path):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("DPO", "IPO", "d-DPO", "e-DPO", "p-DPO"):
        ax1.plot(res["betas"], res[name]["gold"], "o-", label=name)
        ax2.plot(res["betas"], res[name]["kl"], "o-", label=name)
    ax1.axhline(res["ref_gold"], color="grey", ls=":", label="pi_ref")
    ax1.set(xscale="log", xlabel="beta", ylabel="E_pi[gold reward]",
            title="length-biased labels: gold reward")
    ax2.set(xscale="log", yscale="log", xlabel="beta", ylabel="KL(pi || pi_ref)",
            title="distance from pi_ref")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
    save(fig, path)


# -----------------------------------------------------------------------------
# 8. main: tables, figures, JSON


def print_rows(title, rows):
    print(f"\n{title}\n{'method':<26} {'policy':<44} {'E[gold]':>7} {'KL(pi|ref)':>10} "
          f"{'max b*h':>8} {'gap':>8}")
    for r in rows:
        gap = "-" if r["gap"] is None else f"{r['gap']:.1e}"
        pol = " ".join(f"{p:.3f}" for p in r["policy"])
        print(f"{r['method']:<26} {pol:<44} {r['gold']:7.3f} {r['kl']:10.3f} {r['margin']:8.2f} "
              f"{gap:>8}")


def print_sweep(res):
    print("\n(d) beta sweep on the length-biased data: E[gold] / KL(pi|ref)")
    print(f"{'method':<8}" + "".join(f"{'beta=' + str(b):>16}" for b in res["betas"]))
    for name in ("DPO", "IPO", "d-DPO", "e-DPO", "p-DPO"):
        cells = [f"{g:.3f} / {k:.3f}" for g, k in zip(res[name]["gold"], res[name]["kl"])]
        print(f"{name:<8}" + "".join(f"{c:>16}" for c in cells))


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block, exit status 2
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv=None):
    p = ArgumentParser(
        description="DPO's divergence and the distillation fix in a preference bandit.")
    p.add_argument("--out", default="runs",
                   help="folder for the figures: each run writes a new bandit-NNN folder inside "
                        "(default: runs)")
    p.add_argument("--json", action="store_true",
                   help="print the numbers as JSON instead of tables")
    return p.parse_args(argv)


def main(argv=None):
    """Run the four scenarios, draw their figures into a new bandit-NNN folder, print tables (or
    JSON). Returns the exit status: 0; 2 with one `error:` line on stderr when --out cannot be used;
    130 on ctrl-c."""
    args = parse_args(argv)
    try:
        run_scenarios(args)
    except OSError as e:
        print(f"error: cannot write to --out {args.out!r} ({e.strerror or e}); "
              "choose a folder you can write to", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; files written before this point are kept", file=sys.stderr)
        return 130
    return 0


def new_run_dir(out):
    """a fresh bandit-NNN folder inside out, so no run overwrites another; two runs started at once
    get two."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(0, f"{out} is a file, not a folder")
    os.makedirs(out, exist_ok=True)
    taken = [int(d[len("bandit-"):]) for d in os.listdir(out) if re.fullmatch(r"bandit-\d+", d)]
    for number in range(max(taken, default=0) + 1, max(taken, default=0) + 1000):
        try:
            os.makedirs(os.path.join(out, f"bandit-{number:03d}"))
            return os.path.join(out, f"bandit-{number:03d}")
        except FileExistsError:  # taken by a run started at the same moment: try the next number
            continue
    raise FileExistsError(0, "no free bandit-NNN name")


def run_scenarios(args):
    """the four scenarios, their figures in a new bandit-NNN folder inside args.out, and their
    tables."""
    folder = new_run_dir(args.out)
    t0 = time.time()
    res = {"a": scenario_divergence(folder), "b": scenario_displacement(folder),
           "c": scenario_family(folder), "d": scenario_beta_sweep(folder)}
    res["seconds"], res["figures"] = round(time.time() - t0, 2), folder
    if args.json:
        print(json.dumps(res, indent=1))
        print(f"figures in {folder}", file=sys.stderr)  # stdout stays pure JSON
        return
    print_rows(f"(a) DPO diverges (3 arms, uniform pi_ref, beta={res['a']['beta']}, "
               f"DPO {res['a']['steps']} steps)", res["a"]["rows"])
    print_rows("(b) likelihood displacement (log-linear, phi_w=(1,0) phi_l=(0,1) phi_u=(2,-1))",
               res["b"]["rows"])
    print_rows(f"(c) length-biased labels (arms good-s ok-s ok-L bad-s bad-L, "
               f"beta={res['c']['beta']})",
               res["c"]["rows"])
    print_sweep(res["d"])
    print(f"\ngap: max |pi - closed form| (e-DPO: its gamma -> 0 limit). {res['seconds']} s")
    print(f"figures in {folder}")


if __name__ == "__main__":
    sys.exit(main())
