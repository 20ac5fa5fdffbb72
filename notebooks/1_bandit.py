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
# # 1. The bandit: DPO's divergence and the fix
#
# DPO trains a policy on preference pairs without a reward model: the policy's own log-ratio to the
# reference, $\beta \log(\pi_\theta / \pi_{\text{ref}})$, plays the part of the reward. On a finite data
# set that implicit reward can grow without bound, and the policy it defines can become degenerate. The
# paper's fixes are to distil an explicit reward model (d-DPO), to be pessimistic over a family of
# reward models (e-DPO), or to hold DPO near the reference with a forward-KL term (p-DPO).
#
# This notebook watches all of it happen in the smallest setting where it can: a *bandit*, one prompt
# with three to five possible responses ("arms"), where a policy is a short vector of probabilities and
# every optimum has a closed form:
#
# 1. the bandit, its policies and the implicit reward;
# 2. DPO's loss has no minimiser;
# 3. gradient descent walks off, for every $\beta$, while IPO, d-DPO and p-DPO stop;
# 4. a total order $a \succ b \succ c$: DPO becomes deterministic;
# 5. shared features: the preferred arm loses probability while the margin grows;
# 6. distillation's fixed point, $\pi^*_r$;
# 7. pessimism over a family of reward models, on length-biased labels;
# 8. exercises, with solutions a teacher can reveal.
#
# Every loss, gradient, training run and closed form comes from `toy_bandit.py` (numpy, gradients written
# out by hand, each closed form beside the gradient descent that should reach it); the notebook only
# prints, plots, and checks them against formulas worked out by hand. Nothing here re-implements the
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

import io
import math

import numpy as np
import PIL.Image
from IPython.display import Image, display

import toy_bandit as tb

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. The bandit
#
# One prompt and $n$ arms (responses). A policy is a softmax over the arms' logits, which `toy_bandit`
# writes as $\phi\,\theta$: a feature matrix $\phi$ of shape $(n, d)$ times the parameters $\theta$,
#
# $$\pi_\theta(y) = \frac{\exp\big(\phi(y) \cdot \theta\big)}{\sum_{y'} \exp\big(\phi(y') \cdot \theta\big)}.$$
#
# With $\phi = I$ (`tb.tabular`) every arm has a logit of its own: the *tabular* policy. With fewer
# features than arms, the arms share parameters, as the responses of a language model share its weights
# (section 5). Training starts at the reference $\pi_{\text{ref}} = \pi_{\theta_{\text{ref}}}$. The data
# is a list of pairs, a winner $y_w$ and a loser $y_l$, and each pair has a log-ratio margin
#
# $$h = \big(\log \pi_\theta(y_w) - \log \pi_{\text{ref}}(y_w)\big) - \big(\log \pi_\theta(y_l) - \log \pi_{\text{ref}}(y_l)\big),$$
#
# so that the implicit reward margin is $\beta h$ (`tb.logratio_margin` returns $h$). Each bandit also carries a
# gold reward: the truth we evaluate with, which no method sees.
#
# The first bandit has three arms, a uniform $\pi_{\text{ref}}$ and a single pair $y_1 \succ y_2$; $y_3$ is
# never compared. (The code numbers arms from 0: arm 0 is $y_1$.) At the start $\pi_\theta = \pi_{\text{ref}}$,
# so $h = 0$ and the DPO loss is $-\log\sigma(0) = \ln 2$.

# %%
U3 = np.ones(3) / 3  # a uniform pi_ref over three arms
one = tb.tabular(U3, [(0, 1)], gold=[1.0, 0.0, 0.5])  # one pair: y1 beats y2; y3 is never compared
print("features phi (tabular: the identity):")
print(one.phi)
print("theta_ref = log pi_ref:", one.theta_ref, "  pi_ref:", tb.probs(one, one.theta_ref))
print("pairs (winner, loser):", list(zip(one.winners.tolist(), one.losers.tolist())), "  gold reward:", one.gold)

h0 = tb.logratio_margin(one, one.ref_logp)  # (B,) = (1,)
loss0, grad0 = tb.dpo_loss(h0, beta=1.0)
print(f"at pi_ref: h = {h0[0]}, DPO loss = {loss0:.4f} (ln 2 = {math.log(2):.4f}), d loss / d h = {grad0[0]}")

# %% [markdown]
# ## 2. DPO's loss has no minimiser
#
# $$L_{\text{DPO}} = \frac{1}{B}\sum_b -\log \sigma(\beta h_b), \qquad
#   \frac{\partial L_{\text{DPO}}}{\partial h_b} = -\frac{\beta}{B}\,\sigma(-\beta h_b) < 0$$
#
# The derivative is negative for every finite $h$: a larger margin always lowers the loss, and the infimum
# 0 is approached only as $h \to +\infty$, that is as $\pi(y_2)/\pi(y_1) \to 0$. *Any* policy that does this
# is as good as any other, whatever it does to the winner itself. Take
# $\pi_\varepsilon = (\varepsilon, \varepsilon^2, 1 - \varepsilon - \varepsilon^2)$: the reference terms
# cancel (both are $\log\frac13$), so $h = \log\varepsilon - \log\varepsilon^2 = \log(1/\varepsilon)$, and with
# $\beta = 1$ the loss is $-\log\sigma(\log(1/\varepsilon)) = \log(1 + \varepsilon) \to 0$, while the
# probability of the *preferred* arm, $\varepsilon$, goes to 0 as well.
#
# $\beta$ does not help: it only rescales $h$, so it changes neither the infimum nor the policies that
# approach it.

# %%
print(f"{'eps':>8} {'pi(y1)':>8} {'pi(y2)':>8} {'pi(y3)':>8} {'h':>7} {'DPO loss':>10} {'log(1+eps)':>11} {'dL/dh':>10}")
eps_rows = {}
for eps in (0.1, 0.01, 1e-4, 1e-6):
    pi = np.array([eps, eps ** 2, 1 - eps - eps ** 2])
    h = tb.logratio_margin(one, np.log(pi))  # (1,)
    loss, grad = tb.dpo_loss(h, beta=1.0)
    eps_rows[eps] = (h[0], loss)
    print(f"{eps:8.0e} {pi[0]:8.0e} {pi[1]:8.0e} {pi[2]:8.4f} {h[0]:7.3f} {loss:10.2e} {math.log1p(eps):11.2e} {grad[0]:10.2e}")

# %% [markdown]
# ## 3. Gradient descent walks off, for every $\beta$
#
# `tb.train_policy` runs full-batch gradient descent from $\pi_{\text{ref}}$ with a fixed step $1/L$, where $L$ bounds
# the loss's curvature; for DPO $L \propto \beta^2$ (a choice of `toy_bandit`, so that every method and every
# $\beta$ is equally stable). On the tabular bandit with one pair, one step raises the winner's logit and
# lowers the loser's by $(2/\beta)\,\sigma(-\beta h)$ each, so the implicit margin $m = \beta h$ follows
#
# $$m_{t+1} = m_t + 4\,\sigma(-m_t), \qquad m_0 = 0,$$
#
# the same path for every $\beta$. Once $m$ is large, $\sigma(-m) \approx e^{-m}$, so $e^{m}$ grows by about 4
# per step and $m_t \approx \log(4t + 1)$: the margin grows like $\log t$, slowly but without end (each
# doubling of the number of steps adds $\ln 2$). Since $h = m/\beta$, a small $\beta$ reaches the same margin
# with a larger $h$: a more extreme policy.

# %%
betas, steps = (0.1, 0.5, 1.0, 2.0), 3000
at = (1, 10, 100, 1000, 2000, 3000)
one_paths = {beta: tb.probs(one, tb.train_policy(one, tb.Method("dpo", beta), steps)[1]) for beta in betas}  # (T + 1, 3) each
one_margins = {beta: beta * tb.logratio_margin(one, np.log(p))[:, 0] for beta, p in one_paths.items()}  # (T + 1,) each

print("DPO's implicit margin beta * h after t steps")
print(f"{'':>12}" + "".join(f"{'t=' + str(t):>9}" for t in at))
for beta, m in one_margins.items():
    print(f"{'beta=' + str(beta):>12}" + "".join(f"{m[t]:9.3f}" for t in at))
print(f"{'log(4t + 1)':>12}" + "".join(f"{math.log(4 * t + 1):9.3f}" for t in at))
print(f"\npi after {steps} steps    pi(y1)    pi(y2)    pi(y3)")
for beta, p in one_paths.items():
    print(f"  beta={beta:<4}      {p[-1, 0]:8.5f}  {p[-1, 1]:8.1e}  {p[-1, 2]:8.1e}")

# %% [markdown]
# The loser $y_2$, the arm that never wins, heads to probability 0 for every $\beta$. On the tabular policy
# gradient descent takes the mass to the winner, so $y_3$ (never compared) is drained too: the
# winner's logit rises and the loser's falls by the same amount, and $y_3$'s share shrinks.
#
# Three losses have a finite target instead:
#
# - **IPO**, $\frac1B\sum_b \big(h_b - \frac{1}{2\beta}\big)^2$, is 0 at $h = 1/(2\beta)$. With one pair the winner's
#   and the loser's logits move by $\pm h/2$, so $\pi_{\text{IPO}} \propto \pi_{\text{ref}} \cdot (e^{h/2}, e^{-h/2}, 1)$
#   (`tb.ipo_policy`).
# - **d-DPO**, $\frac1B\sum_b (\Delta r_b - \beta h_b)^2$, is 0 at $\beta h = \Delta r = \hat r(y_1) - \hat r(y_2)$,
#   the margin of a Bradley-Terry reward model $\hat r$ fitted to the same pairs (`tb.train_reward_model`: one
#   number per arm, loss $-\log\sigma\big(\hat r(y_w) - \hat r(y_l)\big) + \frac{\lambda}{2}\lVert \hat r\rVert^2$ with
#   $\lambda = 0.1$; without the penalty the reward model would diverge on this pair exactly as DPO does).
#   `tb.distill_policy` is its closed form.
# - **p-DPO**, $\frac1B\sum_b -\log\sigma(\beta h_b) + \gamma\,\mathrm{KL}(\pi_{\text{ref}} \,\|\, \pi_\theta)$. In the
#   bandit the KL is exact (a sum over all arms) and its gradient in the logits is $\pi_\theta - \pi_{\text{ref}}$.
#   Setting the whole gradient to 0: the unseen arm keeps its reference probability, and
#   $\pi(y_1) = \pi_{\text{ref}}(y_1) + d$, $\pi(y_2) = \pi_{\text{ref}}(y_2) - d$ with
#   $d = \frac{\beta}{\gamma}\,\sigma(-\beta h)$. For $\beta = \gamma = 1$: $\pi = (\frac{8}{15}, \frac{2}{15}, \frac13)$,
#   since then $h = \log 4$ and $d = \sigma(-\log 4) = \frac15$ (`tb.pdpo_one_pair`).
#
# `tb.run` trains a method and returns one row: the final policy, its expected gold reward, its
# $\mathrm{KL}(\pi \,\|\, \pi_{\text{ref}})$, the largest $\beta h$, and the gap $\max_y |\pi(y) - \pi_{\text{closed}}(y)|$
# to the closed form; `tb.print_rows` prints the rows.

# %%
beta = 1.0
r_one = tb.train_reward_model(one)  # (3,)
print("reward model r_hat:", r_one.round(4), f"  dr = r_hat(y1) - r_hat(y2) = {r_one[0] - r_one[1]:.4f}")
rows_one = [tb.run(one, "DPO", tb.Method("dpo", beta), steps=steps),
            tb.run(one, "IPO", tb.Method("ipo", beta), tb.ipo_policy(one, beta)),
            tb.run(one, "d-DPO", tb.Method("d-dpo", beta, rewards=r_one[None]), tb.distill_policy(one, r_one, beta)),
            tb.run(one, "p-DPO (gamma=1)", tb.Method("p-dpo", beta, 1.0), tb.pdpo_one_pair(U3, 0, 1, beta, 1.0))]
tb.print_rows(f"one pair y1 > y2, beta = {beta}; DPO after {steps} steps, the others converged", rows_one)
print(f"\np-DPO's closed form: {tb.pdpo_one_pair(U3, 0, 1, beta, 1.0).round(6)}; 8/15, 2/15, 1/3 = {8 / 15:.6f}, {2 / 15:.6f}, {1 / 3:.6f}")

# %% [markdown]
# ## 4. A total order: DPO becomes deterministic
#
# Three arms $a, b, c$ and the pairs $a \succ b$, $b \succ c$, $a \succ c$, each seen once. Nothing in the data
# contradicts anything, so DPO's loss again falls toward 0 only as every margin grows without bound:
# $\pi(b)/\pi(a) \to 0$ and $\pi(c)/\pi(b) \to 0$. The policy piles all its mass on $a$, for every $\beta$ (the
# example of the IPO paper, Azar et al. 2023), and $c$, which never wins, goes to 0.
#
# IPO asks for the same margin $t = 1/(2\beta)$ on all three pairs, which is impossible, because
# $h_{ac} = h_{ab} + h_{bc}$. Its loss is a least-squares problem in $u = h_{ab}$ and $v = h_{bc}$:
#
# $$\min_{u, v}\ (u - t)^2 + (v - t)^2 + (u + v - t)^2 \quad\Rightarrow\quad u = v = \tfrac{2}{3}\,t, \qquad
#   \pi_{\text{IPO}} \propto \pi_{\text{ref}} \cdot \big(e^{4t/3}, e^{2t/3}, 1\big).$$
#
# (Set the derivative in $u$ to 0, $(u - t) + (u + v - t) = 0$, and use the symmetry $u = v$.) d-DPO distils the
# Bradley-Terry reward model fitted to the three pairs; the pairs connect all three arms, so it ends at
# $\pi^*_{\hat r} = \pi_{\text{ref}}\,e^{\hat r/\beta} / Z$ (section 6 shows why).

# %%
tot = tb.tabular(U3, [(0, 1), (1, 2), (0, 2)], gold=[1.0, 0.5, 0.0])  # arms a, b, c
r_tot = tb.train_reward_model(tot)  # (3,)
print("reward model r_hat (a, b, c):", r_tot.round(4))
tot_dpo = {beta: tb.probs(tot, tb.train_policy(tot, tb.Method("dpo", beta), steps)[1]) for beta in betas}  # (T + 1, 3) each
tot_ipo = {beta: tb.ipo_policy(tot, beta) for beta in betas}  # (3,) each
tot_gaps = []  # IPO: gradient descent, and by hand, against tb.ipo_policy; d-DPO: gradient descent against pi*_r_hat
print(f"\n{'':>9} {'DPO after ' + str(steps) + ' steps':^28} | {'IPO, closed form':^20} | {'d-DPO = pi*_r_hat':^20}")
print(f"{'':>9} {'pi(a)':>8} {'pi(b)':>9} {'pi(c)':>9} | {'a':>6} {'b':>6} {'c':>6} | {'a':>6} {'b':>6} {'c':>6}")
for beta in betas:
    t = 1 / (2 * beta)
    ipo_by_hand = np.exp([4 * t / 3, 2 * t / 3, 0.0]) / np.exp([4 * t / 3, 2 * t / 3, 0.0]).sum()
    ipo_gd = tb.probs(tot, tb.train_policy(tot, tb.Method("ipo", beta))[0])
    ddpo_gd = tb.probs(tot, tb.train_policy(tot, tb.Method("d-dpo", beta, rewards=r_tot[None]))[0])
    ddpo_closed = tb.optimal_policy(U3, r_tot, beta)
    tot_gaps += [np.abs(ipo_gd - tot_ipo[beta]).max(), np.abs(ipo_by_hand - tot_ipo[beta]).max(),
                 np.abs(ddpo_gd - ddpo_closed).max()]
    d, i = tot_dpo[beta][-1], tot_ipo[beta]
    print(f"{'beta=' + str(beta):>9} {d[0]:8.5f} {d[1]:9.1e} {d[2]:9.1e} | {i[0]:6.3f} {i[1]:6.3f} {i[2]:6.3f} | "
          f"{ddpo_closed[0]:6.3f} {ddpo_closed[1]:6.3f} {ddpo_closed[2]:6.3f}")
print(f"\nlargest gap, gradient descent or hand formula against the closed form: {max(tot_gaps):.1e}")


# %% [markdown]
# The figure is drawn by `tb.draw_divergence`. Left: the largest log-ratio margin $h$ of the three pairs against
# the step, both on log axes, one colour per $\beta$; the dashed line of the same colour is where IPO stops.
# Right: the probability of $c$. DPO's curves never level off. (`toy_bandit`'s figure helpers save to a file and
# close the figure; `show` hands them an in-memory file instead and displays the picture here.)
#
# A finite fixed point is not necessarily a mild one: at $\beta = 0.1$ d-DPO's $\pi^*_{\hat r}$ is nearly
# deterministic too, because $\hat r / \beta$ is large. The difference from DPO is that it is one point, set by
# $\hat r$ and $\beta$, which more training does not move.

# %%
def show(draw, *args):
    """run one of toy_bandit's draw_* helpers into memory and display its figure (256 colours: a third of the bytes)"""
    png, small = io.BytesIO(), io.BytesIO()
    draw(*args, png)  # each helper ends with fig.savefig(path): a file object works as the path
    PIL.Image.open(png).convert("RGB").quantize(256).save(small, "png")
    display(Image(small.getvalue(), width=900))

show(tb.draw_divergence, tot, tot_dpo, tot_ipo)

# %% [markdown]
# ## 5. Shared features: the preferred arm loses probability
#
# In a language model, responses share parameters: pushing one response up moves many others. The bandit's
# version is a log-linear policy with fewer features than arms. `tb.displacement_bandit()` has three arms
# and two features,
#
# $$\phi(y_w) = (1, 0), \qquad \phi(y_l) = (0, 1), \qquad \phi(y_u) = (2, -1), \qquad \theta_{\text{ref}} = (0, 0),$$
#
# one pair $y_w \succ y_l$, and an arm $y_u$ that no pair contains. By the chain rule, DPO's gradient in $\theta$ is
#
# $$\nabla_\theta L_{\text{DPO}} = -\beta\,\sigma(-\beta h)\,\big(\phi(y_w) - \phi(y_l)\big),$$
#
# so $\theta$ only ever moves along $(1, -1)$: $\theta = (s, -s)$, and the three logits are $(s, -s, 3s)$. The
# unseen arm's logit rises three times as fast as the winner's. The margin $h = 2s$ grows without bound, while
#
# $$\frac{d}{ds}\log\pi(y_w) = 1 - \mathbb{E}_\pi\big[(1, -1, 3)\big]$$
#
# is 0 at $s = 0$ (under the uniform policy the mean of $1, -1, 3$ is 1) and negative for every $s > 0$, as the
# mass moves to the arm with the 3. So $\pi(y_w)$ falls at every step while DPO's loss keeps improving: this is
# *likelihood displacement*. The mass goes to $y_u$, whose gold reward is $-1$ (text far from the data is
# usually bad).

# %%
disp = tb.displacement_bandit()
print("features phi (rows y_w, y_l, y_u):")
print(disp.phi)
print("gold reward:", disp.gold)
theta_end, theta_path = tb.train_policy(disp, tb.Method("dpo", 1.0), steps)  # (2,), (T + 1, 2)
disp_dpo = tb.probs(disp, theta_path)  # (T + 1, 3)
disp_margin = tb.logratio_margin(disp, np.log(disp_dpo))[:, 0]  # (T + 1,), beta = 1
print(f"\nDPO, beta = 1\n{'step':>6} {'theta':>18} {'pi(y_w)':>9} {'pi(y_l)':>9} {'pi(y_u)':>9} {'beta*h':>8}")
for t in (0, 1, 2, 10, 100, 1000, 3000):
    th, p = theta_path[t], disp_dpo[t]
    print(f"{t:>6} {'(' + f'{th[0]:.3f}, {th[1]:.3f}' + ')':>18} {p[0]:9.4f} {p[1]:9.1e} {p[2]:9.4f} {disp_margin[t]:8.3f}")

# %% [markdown]
# d-DPO and p-DPO on the same bandit, with $\beta = 1$ and the Bradley-Terry reward model of the one pair. Every
# feature vector here sums to 1, so $\pi - \pi_{\text{ref}}$ (which sums to 0) gives a KL gradient
# $\phi^\top(\pi - \pi_{\text{ref}})$ along $(1, -1)$ as well: all three methods move on the same line
# $\theta = (s, -s)$, and on that line *any* positive margin lowers $\pi(y_w)$. The fixes cannot undo the
# geometry; what they change is that they stop at a finite $s$ (d-DPO at $\beta h = \Delta r$, p-DPO where its
# KL term balances DPO's pull), where DPO goes on forever. The figure (`tb.draw_displacement`): left, DPO's
# path; right, where each method ends.

# %%
r_disp = tb.train_reward_model(disp)  # (3,): y_u is in no pair, so the L2 penalty leaves it at 0
disp_methods = {"d-DPO": tb.Method("d-dpo", 1.0, rewards=r_disp[None]), "p-DPO": tb.Method("p-dpo", 1.0, tb.GAMMA_P)}
disp_paths = {"DPO": disp_dpo}
disp_theta = {"DPO": theta_end}
for name, m in disp_methods.items():
    disp_theta[name], path = tb.train_policy(disp, m)
    disp_paths[name] = tb.probs(disp, path)  # (T + 1, 3)
print(f"reward model r_hat: {r_disp.round(4)}; d-DPO's closed form: {tb.distill_policy(disp, r_disp, 1.0).round(4)}")
print(f"\n{'':>6} {'theta':>18} {'pi(y_w)':>9} {'pi(y_l)':>9} {'pi(y_u)':>9} {'beta*h':>8} {'E[gold]':>8}")
for name, p in disp_paths.items():
    th, q = disp_theta[name], p[-1]
    print(f"{name:>6} {'(' + f'{th[0]:.3f}, {th[1]:.3f}' + ')':>18} {q[0]:9.4f} {q[1]:9.4f} {q[2]:9.4f} "
          f"{tb.logratio_margin(disp, np.log(q))[0]:8.3f} {q @ disp.gold:8.3f}")
show(tb.draw_displacement, disp, disp_paths)

# %% [markdown]
# ## 6. Distillation's fixed point
#
# d-DPO replaces DPO's open-ended target with a finite one, read off an explicit reward model $r$:
#
# $$L_{\text{d-DPO}} = \frac{1}{B}\sum_b \big(\Delta r_b - \beta h_b\big)^2, \qquad \Delta r_b = r(y_{w,b}) - r(y_{l,b}).$$
#
# The loss is 0 exactly when $\beta h_b = \Delta r_b$ on every pair, that is when
# $\beta\log\frac{\pi(y)}{\pi_{\text{ref}}(y)} - r(y)$ takes the same value on the two arms of every compared pair.
# If the pairs connect all the arms, it is one constant over all of them, and normalisation fixes the constant:
#
# $$\pi(y) = \frac{\pi_{\text{ref}}(y)\, e^{r(y)/\beta}}{Z} = \pi^*_r(y),$$
#
# the policy that maximises $\mathbb{E}_\pi[r] - \beta\,\mathrm{KL}(\pi \,\|\, \pi_{\text{ref}})$ (`tb.optimal_policy`).
# So d-DPO has a fixed point, the RLHF optimum of its reward model: gradient descent reaches it from any start
# and stays there however long it runs. (If the pairs leave some arm unconnected, only the ratios inside each
# connected part are pinned: exercise 3.)
#
# The data from here on is `tb.length_bias_bandit()`, five arms and a uniform $\pi_{\text{ref}}$:
#
# | arm | 0 | 1 | 2 | 3 | 4 |
# |---|---|---|---|---|---|
# | answer | good, short | ok, short | ok, long | bad, short | bad, long |
# | gold reward | 1 | 0 | 0 | $-1$ | $-1$ |
# | length | 1 | 1 | 2 | 1 | 2 |
#
# Every two arms are compared 4 times by an annotator who, when the lengths differ, prefers the longer answer
# with probability 0.7 and otherwise follows the gold reward (Bradley-Terry); the counts are the expected ones,
# rounded, so there is no sampling noise. The good answer exists only in the short form, so a label bought by
# length is a wrong label.

# %%
lb, length = tb.length_bias_bandit()
arms = ["good-s", "ok-s", "ok-L", "bad-s", "bad-L"]
pi_ref5 = np.exp(lb.ref_logp)  # (5,), uniform
wins = np.zeros((5, 5), int)
np.add.at(wins, (lb.winners, lb.losers), 1)  # wins[i, j]: how often arm i beat arm j
print(f"{len(lb.winners)} labelled pairs; how often the row's arm beat the column's:")
print(f"{'':>8}" + "".join(f"{a:>8}" for a in arms))
for i, a in enumerate(arms):
    print(f"{a:>8}" + "".join(f"{'-' if i == j else wins[i, j]:>8}" for j in range(5)))
r_hat = tb.train_reward_model(lb)  # (5,)
print("\nBradley-Terry reward model r_hat:", dict(zip(arms, r_hat.round(3).tolist())))

# %% [markdown]
# d-DPO from $\pi_{\text{ref}}$ with `tb.train_policy`, for three values of $\beta$, against $\pi^*_{\hat r}$; and the norm of
# d-DPO's gradient at $\pi^*_{\hat r}$, which should be 0 (`tb.policy_loss` returns the loss and its gradient in
# $\theta$). Here gradient descent lands in one step: every two arms are compared equally often, so the loss is a
# perfectly round bowl in the directions that matter and the step $1/L$ goes straight to its bottom. To watch the
# approach, the second cell starts `tb.gradient_descent` from three random points with a smaller step, 0.5.

# %%
fixed_gaps, fixed_grads = [], []
print(f"{'':>9} {'pi*_r_hat = pi_ref exp(r_hat / beta) / Z':^42} {'gap after tb.train_policy':>19} {'|grad| at pi*':>14}")
for beta in (0.2, 0.5, 1.0):
    m = tb.Method("d-dpo", beta, rewards=r_hat[None])
    target = tb.optimal_policy(pi_ref5, r_hat, beta)  # (5,)
    fixed_gaps.append(np.abs(tb.probs(lb, tb.train_policy(lb, m)[0]) - target).max())
    fixed_grads.append(np.linalg.norm(tb.policy_loss(lb, m, np.log(target))[1]))
    print(f"{'beta=' + str(beta):>9} {str(target.round(4)):^42} {fixed_gaps[-1]:19.1e} {fixed_grads[-1]:14.1e}")

# %%
beta = 0.5
m = tb.Method("d-dpo", beta, rewards=r_hat[None])
target = tb.optimal_policy(pi_ref5, r_hat, beta)
rng = np.random.default_rng(0)
at = (0, 10, 50, 100, 200, 400)
print(f"d-DPO, beta = {beta}: max |pi - pi*_r_hat| after t steps of size 0.5")
print(f"{'start':>8}" + "".join(f"{'t=' + str(t):>10}" for t in at))
random_start_gaps = []
for k in range(3):
    theta0 = lb.theta_ref + rng.normal(scale=2.0, size=5)  # (5,), a random policy
    path = tb.gradient_descent(lambda th: tb.policy_loss(lb, m, th)[1], theta0, lr=0.5, steps=400)[1]  # (T + 1, 5)
    gap = np.abs(tb.probs(lb, path) - target).max(-1)  # (T + 1,)
    random_start_gaps.append(gap[-1])
    print(f"{'random ' + str(k):>8}" + "".join(f"{gap[min(t, len(gap) - 1)]:10.1e}" for t in at))

# %% [markdown]
# The fixed point is only as good as the reward model. $\hat r$ ranks *ok, long* above *good, short*: the
# annotator's taste for length is in the data, and $\hat r$ learnt it. d-DPO then distils the bias faithfully.
# Compare $\pi^*_{\hat r}$ with $\pi^*$ of the gold reward, and look at the mean length
# $\mathbb{E}_\pi[\text{length}]$ (the reference's is $1.4$):

# %%
beta = 0.5
print(f"beta = {beta}{'':>18}" + "".join(f"{a:>8}" for a in arms) + f"{'E[gold]':>9}{'E[len]':>8}")
for name, p in [("pi_ref", pi_ref5), ("pi*_gold", tb.optimal_policy(pi_ref5, lb.gold, beta)),
                ("pi*_r_hat (d-DPO)", tb.optimal_policy(pi_ref5, r_hat, beta))]:
    print(f"{name:<28}" + "".join(f"{q:8.3f}" for q in p) + f"{p @ lb.gold:9.3f}{p @ length:8.3f}")

# %% [markdown]
# ## 7. Pessimism over a family of reward models
#
# One reward model cannot tell a spurious preference from a real one. A *family* of plausible reward models
# may, as a whole, contain a good one, but we do not know which. Pessimism chooses the policy whose worst case
# over the family is best. Take the RLHF value of a policy $\pi$ under a reward $r$,
#
# $$J(\pi, r) = \mathbb{E}_\pi[r] - \mathbb{E}_{\pi_{\text{ref}}}[r] - \beta\,\mathrm{KL}(\pi \,\|\, \pi_{\text{ref}})$$
#
# (`tb.rlhf_value`; subtracting $\mathbb{E}_{\pi_{\text{ref}}}[r]$ makes $J$ blind to a constant added to $r$, which
# Bradley-Terry cannot pin down). For one reward the best value is reached at $\pi^*_r$, and it equals a forward KL:
#
# $$\max_\pi J(\pi, r) = J(\pi^*_r, r) = \beta\,\mathrm{KL}(\pi_{\text{ref}} \,\|\, \pi^*_r)$$
#
# (`tb.best_value`; both sides equal $\beta \log \mathbb{E}_{\pi_{\text{ref}}}[e^{r/\beta}] - \mathbb{E}_{\pi_{\text{ref}}}[r]$).
# $J$ is linear in $r$ and concave in $\pi$, so over a convex family $S$ the max and the min can be swapped:
# $\max_\pi \min_{r \in S} J(\pi, r) = \min_{r \in S} \beta\,\mathrm{KL}(\pi_{\text{ref}} \,\|\, \pi^*_r)$. The robust
# policy is $\pi^*_r$ of the member whose optimum is closest to $\pi_{\text{ref}}$ in **forward** KL: the most
# conservative reward of the family (`tb.pessimistic_choice`).
#
# **e-DPO** turns this into a loss: distil whichever member fits best, plus a forward-KL term that breaks the tie
# between members toward the reference:
#
# $$L_{\text{e-DPO}} = \min_k \frac{1}{B}\sum_b \big(\Delta r_{k,b} - \beta h_b\big)^2 + \gamma\,\mathrm{KL}(\pi_{\text{ref}} \,\|\, \pi_\theta).$$
#
# **p-DPO** does the same with the family of *all* rewards whose Bradley-Terry loss is near its best; in
# implicit-reward form that loss is DPO's, so
#
# $$L_{\text{p-DPO}} = \frac{1}{B}\sum_b -\log\sigma(\beta h_b) + \gamma\,\mathrm{KL}(\pi_{\text{ref}} \,\|\, \pi_\theta).$$
#
# In e-DPO $\gamma$ only has to break ties (`tb.GAMMA_E` $= 0.01$; as $\gamma \to 0$ e-DPO ends at
# `tb.pessimistic_choice`'s policy). In p-DPO it must stay away from 0, or p-DPO is DPO again (`tb.GAMMA_P` $= 1$).
#
# The family (`tb.reward_family`): member $s$ is a Bradley-Terry model fitted to the same pairs, reweighted so
# that, among pairs of unequal length, those won by the longer answer carry a share $s$ of the weight, for
# $s \in \{0, 0.25, 0.5, 0.75, 1\}$ (`tb.SHARES`). Member $s = 0$ ignores every pair that the longer answer won.

# %%
beta = 0.5
longer_won = length[lb.winners] > length[lb.losers]  # (B,)
shorter_won = length[lb.winners] < length[lb.losers]  # (B,)
print(f"in the data, the longer answer won {longer_won.sum()} of the {longer_won.sum() + shorter_won.sum()} "
      f"pairs of unequal length: a share of {longer_won.sum() / (longer_won.sum() + shorter_won.sum()):.2f}")
family = tb.reward_family(lb, length, tb.SHARES)  # (K, 5)
print(f"\nbeta = {beta}   member's reward r{'':>26}   its optimum pi*_r")
print(f"{'share':>5}" + "".join(f"{a:>7}" for a in arms) + f"{'KL(ref|pi*)':>13}{'E[gold]':>9}{'E[len]':>8}")
for s, r in zip(tb.SHARES, family):
    p = tb.optimal_policy(pi_ref5, r, beta)
    print(f"{s:5.2f}" + "".join(f"{v:7.3f}" for v in r) + f"{tb.kl(pi_ref5, p):13.3f}{p @ lb.gold:9.3f}{p @ length:8.3f}")
k_pess, pi_pess = tb.pessimistic_choice(pi_ref5, family, beta)
print(f"\npessimism picks the member with the smallest KL(pi_ref || pi*_r): share {tb.SHARES[k_pess]}, "
      f"whose optimum has gold {pi_pess @ lb.gold:.3f} and mean length {pi_pess @ length:.3f}")

# %% [markdown]
# The conservative member is $s = 0.5$: the one that gives the pairs won by the longer answer and those won by
# the shorter one equal weight. It is not free of the bias (it still rates *ok, long* above *ok, short*), but
# its optimum's mean length is about the reference's (1.38 against 1.40). Pessimism does not pick the member
# with the best gold reward ($s = 0$ has more); it picks the one that asks the policy to move least.
#
# `tb.scenario_family()` trains DPO, d-DPO (on $\hat r$, and on the member $s = 1$), e-DPO and p-DPO from
# $\pi_{\text{ref}}$ on these pairs at $\beta = 0.5$ (3000 steps for DPO, the others to convergence) and compares
# them with $\pi^*$ of the gold reward. The gap column of
# e-DPO is its distance from `tb.pessimistic_choice`'s policy, its $\gamma \to 0$ limit. The figure
# (`tb.draw_family`) places each policy by its KL from $\pi_{\text{ref}}$ and its gold reward; the black curve is
# $\pi^*_{\text{gold}}$ for $\beta$ from 0.1 to 10, the best any policy can do at each KL, and the crosses are
# the members' optima.

# %%
fam = tb.scenario_family()
fam_rows = {name: next(r for r in fam["rows"] if r["method"].startswith(prefix))  # short names for the last cell
            for name, prefix in [("DPO", "DPO"), ("d-DPO", "d-DPO (RM"), ("e-DPO", "e-DPO"), ("p-DPO", "p-DPO")]}
tb.print_rows(f"length-biased labels, beta = {fam['beta']} (arms good-s ok-s ok-L bad-s bad-L)", fam["rows"])
print(f"\npi_ref: E[gold] = {pi_ref5 @ lb.gold:.3f}, mean length {pi_ref5 @ length:.3f}")
print("mean length:", {name: round(v, 3) for name, v in fam["mean_length"].items()})
show(tb.draw_family, lb, fam)

# %% [markdown]
# The same comparison for five values of $\beta$ (`tb.scenario_beta_sweep()`; `tb.print_sweep` prints it under
# the title that `python toy_bandit.py` gives it). Each cell is E[gold] / KL($\pi$ | $\pi_{\text{ref}}$); the dotted
# line in the figure is $\pi_{\text{ref}}$'s gold reward.

# %%
sweep = tb.scenario_beta_sweep()
tb.print_sweep(sweep)
show(tb.draw_beta_sweep, sweep)

# %% [markdown]
# **Reading the results.**
#
# - *DPO and d-DPO learn the length bias.* Both put the most mass on *ok, long*, and their mean length rises well
#   above the reference's 1.4. DPO fits the labels directly (and runs off on the pairs no label contradicts);
#   d-DPO distils $\hat r$ exactly, and $\hat r$ learnt the bias.
# - *e-DPO has the highest gold reward of the five methods at every $\beta$ of the sweep*, and moves much less far
#   from $\pi_{\text{ref}}$ than DPO. At $\beta = 0.5$ it lands on the optimum of the member that weighs long-won and
#   short-won pairs equally. The gain comes from a family that contains such a member; pessimism only finds it.
# - *p-DPO stays closest to the reference* (the smallest KL for $\beta \le 0.5$) and so gains little: here its gold
#   reward is below DPO's. Pessimism buys safety, not accuracy. Its KL term carries no $\beta$, while DPO's pull
#   on $h$ scales with $\beta$, so at a fixed $\gamma$ the leash is relatively tighter at small $\beta$: p-DPO's KL
#   *grows* with $\beta$ up to $\beta = 1$, while every other method's falls.
# - *No method gets near $\pi^*_{\text{gold}}$* (gold 0.737 at $\beta = 0.5$): most labels of unequal-length pairs
#   are about length, and nothing in the data can undo that.

# %% [markdown]
# ## 8. Exercises
#
# Work each one by hand first, then check it with `toy_bandit` in a new cell. The last cell of the notebook
# checks the solutions.
#
# **Exercise 1.** Two arms, uniform $\pi_{\text{ref}}$, and the single pair $y_1 \succ y_2$. Where do DPO and IPO
# end, as a function of $\beta$?
#
# <details><summary>Solution</summary>
#
# DPO: $\pi(y_1) \to 1$ for every $\beta$ (its margin grows without bound, as in section 3). IPO stops at
# $h = \log\frac{\pi(y_1)}{\pi(y_2)} = \frac{1}{2\beta}$, so $\pi(y_1) = \sigma\big(\frac{1}{2\beta}\big)$:
# $\sigma(5) = 0.9933$ at $\beta = 0.1$, $\sigma(1) = 0.7311$ at $\beta = 0.5$, $\sigma(0.25) = 0.5622$ at $\beta = 2$.
# IPO keeps $\beta$'s meaning as a leash; DPO does not. Check:
# `tb.ipo_policy(tb.tabular(np.ones(2) / 2, [(0, 1)], gold=[1, 0]), beta)`.
#
# </details>
#
# **Exercise 2.** Three arms, uniform $\pi_{\text{ref}}$: the pair $y_1 \succ y_2$ is seen three times and
# $y_2 \succ y_1$ once. Does DPO still diverge? If not, where does its margin $\beta h$ stop?
#
# <details><summary>Solution</summary>
#
# It stops. The loss is $\frac14\big(-3\log\sigma(m) - \log\sigma(-m)\big)$ with $m = \beta h$; its derivative in $m$ is
# $\frac14\big(-3\,\sigma(-m) + \sigma(m)\big)$, which is 0 where $\sigma(m)/\sigma(-m) = e^m = 3$: $\beta h = \log 3 = 1.0986$
# for every $\beta$, the log of the ratio of the win counts. DPO diverges only on pairs that the data never
# contradicts, which is the usual case (each pair is labelled once). Check: train DPO with `tb.train_policy` on
# `tb.tabular(U3, [(0, 1)] * 3 + [(1, 0)], gold=[1, 0, 0])` and look at `beta * tb.logratio_margin(...)`.
#
# </details>
#
# **Exercise 3.** The bandit of section 1 (one pair $y_1 \succ y_2$, $y_3$ never compared), $\beta = 1$, and a reward
# model that scores $r = (1, 0, 5)$: it is sure that $y_3$ is by far the best arm. Where does d-DPO end, and how
# far is that from $\pi^*_r$?
#
# <details><summary>Solution</summary>
#
# $r(y_3)$ appears in no reward difference, so d-DPO never sees it. It only pins $\beta h = r(y_1) - r(y_2) = 1$;
# on the tabular policy the two logits move by $\pm\frac12$ and $y_3$'s stays, so
# $\pi = (e^{1/2}, e^{-1/2}, 1)/(e^{1/2} + e^{-1/2} + 1) = (0.5065, 0.1863, 0.3072)$, whatever $r(y_3)$ is. But
# $\pi^*_r \propto (e^1, e^0, e^5)$ $= (0.0179, 0.0066, 0.9756)$. Distillation reaches $\pi^*_r$ only when the pairs
# connect every arm (section 6). Check: `tb.distill_policy(one, np.array([1.0, 0.0, 5.0]), 1.0)` and
# `tb.optimal_policy(U3, np.array([1.0, 0.0, 5.0]), 1.0)`.
#
# </details>
#
# **Exercise 4.** Uniform $\pi_{\text{ref}}$ over three arms, $\beta = 1$, and a family of two reward models,
# $r_1 = (1, 0, 0.5)$ and $r_2 = (0.2, 0, 2)$. (a) Which member does pessimism pick, and what is its best value
# $\max_\pi J(\pi, r)$? (b) The picked policy $\pi^*_{r_1}$: what is its value under the *other* member, $J(\pi^*_{r_1}, r_2)$?
# Is it better than doing nothing ($\pi = \pi_{\text{ref}}$, value 0)?
#
# <details><summary>Solution</summary>
#
# (a) $\pi^*_{r_1} = (0.5065, 0.1863, 0.3072)$ with $\mathrm{KL}(\pi_{\text{ref}} \,\|\, \pi^*_{r_1}) = 0.0817$, and
# $\pi^*_{r_2} = (0.1271, 0.1041, 0.7689)$ with $0.4309$: pessimism picks $r_1$, whose best value is
# $\beta \times 0.0817 = 0.0817$ (`tb.pessimistic_choice`, `tb.best_value`).
#
# (b) $J(\pi^*_{r_1}, r_2) = -0.096 < 0$ (`tb.rlhf_value(pi, U3, r2, 1.0)`): under $r_2$, the picked policy is worse
# than $\pi_{\text{ref}}$. The minimax argument above needs a *convex* family; two points are not one. The true
# worst case over two members is the same as over all their mixtures $\alpha r_1 + (1 - \alpha) r_2$ (J is linear
# in $r$), and the robust policy is $\pi^*$ of the mixture closest to $\pi_{\text{ref}}$ in forward KL, near
# $\alpha = 0.8$, whose worst-case value is positive. e-DPO, like `tb.pessimistic_choice`, picks among the members
# only; a family with members spread along the axis of doubt (as in section 7) makes that matter less.
#
# </details>

# %% [markdown]
# ## What this notebook showed, asserted
#
# Running the cell below is the test: it fails if any claim above stops being true of `toy_bandit.py`.

# %%
# 1-2. the start, and DPO's loss: no minimiser; log(1 + eps) -> 0 while pi(y1) = eps -> 0
assert h0[0] == 0 and abs(loss0 - math.log(2)) < 1e-12 and grad0[0] == -0.5
for eps, (h, loss) in eps_rows.items():
    assert abs(h - math.log(1 / eps)) < 1e-9 and abs(loss / math.log1p(eps) - 1) < 1e-6

# 3. one pair: the same margin path for every beta, rising every step like log(4t + 1); the loser goes to 0
for beta, m in one_margins.items():
    assert np.allclose(m, one_margins[1.0], atol=1e-9) and np.all(np.diff(m) > 0)
    assert abs(m[3000] - math.log(4 * 3000 + 1)) < 0.01 and abs(m[2000] - m[1000] - math.log(2)) < 0.01
    assert np.all(np.diff(one_paths[beta][:, 1]) < 0) and one_paths[beta][-1, 1] < 0.01
rows = {r["method"]: r for r in rows_one}
assert all(rows[k]["gap"] < 1e-9 for k in ("IPO", "d-DPO", "p-DPO (gamma=1)"))
assert np.allclose(rows["p-DPO (gamma=1)"]["policy"], [8 / 15, 2 / 15, 1 / 3], atol=1e-4)
assert rows["DPO"]["margin"] > 3 * max(rows[k]["margin"] for k in ("IPO", "d-DPO", "p-DPO (gamma=1)"))

# 4. total order: DPO goes deterministic on a for every beta; IPO and d-DPO stop at their closed forms
for beta, p in tot_dpo.items():
    h = tb.logratio_margin(tot, np.log(p)).max(-1)  # (T + 1,)
    assert np.all(np.diff(p[:, 0]) >= 0) and np.all(np.diff(p[:, 2]) < 0) and p[-1, 0] > 0.98
    assert h[3000] > h[1000] > h[100]
    assert p[-1, 0] > tot_ipo[beta][0] and p[-1, 2] < 1e-2 * tot_ipo[beta][2]
assert max(tot_gaps) < 1e-9
assert tb.optimal_policy(U3, r_tot, 0.1)[0] > 0.999  # d-DPO's fixed point at beta = 0.1: finite, not mild

# 5. displacement: pi(y_w) falls every step while the margin rises every step; y_u takes the mass
assert np.all(np.diff(disp_dpo[:, 0]) < 0) and np.all(np.diff(disp_margin) > 0) and disp_dpo[-1, 2] > 0.99
for name, th in disp_theta.items():
    assert abs(th[0] + th[1]) < 1e-12  # every method moves on the line theta = (s, -s)
for name in ("d-DPO", "p-DPO"):
    end = disp_paths[name][-1]
    assert disp_dpo[-1, 0] + 0.05 < end[0] < 1 / 3  # the fix keeps more of y_w, but any margin lowers it
    assert tb.logratio_margin(disp, np.log(end))[0] < disp_margin[-1] / 3  # and stops at a finite margin
assert np.allclose(disp_paths["d-DPO"][-1], tb.distill_policy(disp, r_disp, 1.0), atol=1e-9)

# 6. d-DPO's fixed point is pi*_r_hat, from pi_ref and from random starts; r_hat learnt the length bias
assert max(fixed_gaps) < 1e-9 and max(fixed_grads) < 1e-9 and max(random_start_gaps) < 1e-6
assert len(tb.train_policy(lb, tb.Method("d-dpo", 0.5, rewards=r_hat[None]))[1]) == 2  # from pi_ref: one step, then grad 0
pi_rhat = tb.optimal_policy(pi_ref5, r_hat, 0.5)
assert r_hat[2] > r_hat[0] and pi_rhat @ length > pi_ref5 @ length + 0.2 and pi_rhat @ lb.gold < 0

# 7. pessimism: the equal-share member; e-DPO ends near its optimum, with more gold and less KL than DPO and d-DPO
assert tb.SHARES[k_pess] == 0.5 and fam["pessimistic_share"] == 0.5
assert abs(pi_pess @ length - pi_ref5 @ length) < 0.03 and family[k_pess][2] > family[k_pess][1]  # ok-L above ok-s
assert tb.optimal_policy(pi_ref5, family[0], 0.5) @ lb.gold > pi_pess @ lb.gold  # not the member with the most gold
kls = [tb.kl(pi_ref5, tb.optimal_policy(pi_ref5, r, 0.5)) for r in family]
assert all(abs(tb.best_value(pi_ref5, r, 0.5) - 0.5 * k) < 1e-12 for r, k in zip(family, kls))
e, d, dp, p = fam_rows["e-DPO"], fam_rows["d-DPO"], fam_rows["DPO"], fam_rows["p-DPO"]
assert e["gap"] < 5e-3 and d["gap"] < 1e-9
assert e["gold"] > max(dp["gold"], d["gold"]) + 0.2 and e["kl"] < min(dp["kl"], d["kl"])
assert p["kl"] < min(r["kl"] for r in fam["rows"][1:] if r is not p) and p["gold"] < dp["gold"]
assert fam["mean_length"]["DPO"] > 1.8 and fam["mean_length"]["d-DPO (RM on all data)"] > 1.6
assert fam["rows"][0]["gold"] > e["gold"] + 0.4  # the oracle pi*_gold is far ahead of every method
for i, beta in enumerate(sweep["betas"]):
    assert sweep["e-DPO"]["gold"][i] == max(sweep[n]["gold"][i] for n in ("DPO", "IPO", "d-DPO", "e-DPO", "p-DPO"))
    assert sweep["e-DPO"]["kl"][i] < sweep["DPO"]["kl"][i]
    if beta <= 0.5:
        assert sweep["p-DPO"]["kl"][i] == min(sweep[n]["kl"][i] for n in ("DPO", "IPO", "d-DPO", "e-DPO", "p-DPO"))
assert np.all(np.diff(sweep["p-DPO"]["kl"][:4]) > 0) and sweep["betas"][3] == 1.0  # p-DPO's KL grows up to beta = 1
assert all(np.all(np.diff(sweep[n]["kl"]) < 0) for n in ("DPO", "IPO", "d-DPO", "e-DPO"))  # the others' fall

# 8. the exercises' solutions
two = tb.tabular(np.ones(2) / 2, [(0, 1)], gold=[1.0, 0.0])  # exercise 1
for beta in (0.1, 0.5, 2.0):
    assert abs(tb.ipo_policy(two, beta)[0] - tb.sigmoid(1 / (2 * beta))) < 1e-12
    assert tb.probs(two, tb.train_policy(two, tb.Method("dpo", beta), 3000)[0])[0] > 0.98
both_ways = tb.tabular(U3, [(0, 1)] * 3 + [(1, 0)], gold=[1.0, 0.0, 0.0])  # exercise 2
for beta in (0.5, 2.0):
    p = tb.probs(both_ways, tb.train_policy(both_ways, tb.Method("dpo", beta))[0])
    assert abs(beta * tb.logratio_margin(both_ways, np.log(p))[0] - math.log(3)) < 1e-6
r3 = np.array([1.0, 0.0, 5.0])  # exercise 3
p = tb.probs(one, tb.train_policy(one, tb.Method("d-dpo", 1.0, rewards=r3[None]))[0])
assert np.allclose(p, [0.5065, 0.1863, 0.3072], atol=1e-4) and np.allclose(p, tb.distill_policy(one, r3, 1.0), atol=1e-9)
assert np.allclose(tb.optimal_policy(U3, r3, 1.0), [0.0179, 0.0066, 0.9756], atol=1e-4)
r1, r2 = np.array([1.0, 0.0, 0.5]), np.array([0.2, 0.0, 2.0])  # exercise 4
k, pi1 = tb.pessimistic_choice(U3, np.array([r1, r2]), 1.0)
assert k == 0 and abs(tb.best_value(U3, r1, 1.0) - 0.0817) < 1e-4 and abs(tb.best_value(U3, r2, 1.0) - 0.4309) < 1e-4
assert abs(tb.rlhf_value(pi1, U3, r2, 1.0) - (-0.096)) < 1e-3
mix = tb.optimal_policy(U3, 0.8 * r1 + 0.2 * r2, 1.0)
assert min(tb.rlhf_value(mix, U3, r, 1.0) for r in (r1, r2)) > 0.05
print("all claims hold")
