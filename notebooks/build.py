"""
build the classroom notebooks: write each one from the cells below, run it top to bottom, save it with
its outputs.

    python notebooks/build.py                      # every notebook
    python notebooks/build.py 2_losses_by_hand     # one (or several) by name

the notebooks are authored here, as lists of markdown and code cells, so that a change to a notebook is a
readable diff of this file; the .ipynb files beside it are generated and keep their outputs (figures
included) so they can be read on GitHub without running anything. each notebook runs with notebooks/ as
its working folder and ends with a cell that asserts what it taught: test_notebooks.py runs them all.

to add a notebook: write a function that returns its cells and add it to NOTEBOOKS at the bottom.
"""
import os
import sys
import textwrap
import time

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 300  # seconds per cell


def md(*texts):
    """a markdown cell; each text is dedented on its own, so that texts indented differently can be joined."""
    return nbformat.v4.new_markdown_cell("\n\n".join(textwrap.dedent(t).strip() for t in texts))


def code(text):
    return nbformat.v4.new_code_cell(textwrap.dedent(text).strip())


def setup(*imports):
    """the first code cell of every notebook: find rddpo.py one folder up, then the notebook's imports."""
    return code("\n".join([
        "# this notebook lives in notebooks/ and rddpo.py in the repository root, one folder up:",
        "# put the root on the import path so that `import rddpo` finds it",
        "import os, sys",
        'sys.path.insert(0, os.path.abspath(".."))',
        "import warnings",
        'warnings.filterwarnings("ignore", message="IProgress not found")  # rddpo\'s progress bars are off in notebooks',
        "",
        *imports]))


HOW_TO_OPEN = """
    **Running it.** Open it from a clone of the repository, in Jupyter or VS Code, with the packages of
    `requirements.txt` installed (Jupyter itself is not among them: `pip install jupyterlab`); it must run
    with `notebooks/` as its working folder, which is the default. In Colab, first run
    `!git clone <this repository's URL>`, then `%cd <repository folder>/notebooks` and
    `!pip install -r ../requirements.txt`.
    """

# -----------------------------------------------------------------------------
# 1. the bandit


def bandit():
    return [
        md(r"""
        # 1. The bandit: DPO's divergence and the fix

        DPO trains a policy on preference pairs without a reward model: the policy's own log-ratio to the
        reference, $\beta \log(\pi_\theta / \pi_{\text{ref}})$, plays the part of the reward. On a finite data
        set that implicit reward can grow without bound, and the policy it defines can become degenerate. The
        paper's fixes are to distil an explicit reward model (d-DPO), to be pessimistic over a family of
        reward models (e-DPO), or to hold DPO near the reference with a forward-KL term (p-DPO).

        This notebook watches all of it happen in the smallest setting where it can: a *bandit*, one prompt
        with three to five possible responses ("arms"), where a policy is a short vector of probabilities and
        every optimum has a closed form:

        1. the bandit, its policies and the implicit reward;
        2. DPO's loss has no minimiser;
        3. gradient descent walks off, for every $\beta$, while IPO, d-DPO and p-DPO stop;
        4. a total order $a \succ b \succ c$: DPO becomes deterministic;
        5. shared features: the preferred arm loses probability while the margin grows;
        6. distillation's fixed point, $\pi^*_r$;
        7. pessimism over a family of reward models, on length-biased labels;
        8. exercises, with solutions a teacher can reveal.

        Every loss, gradient, training run and closed form comes from `toy_bandit.py` (numpy, gradients written
        out by hand, each closed form beside the gradient descent that should reach it); the notebook only
        prints, plots, and checks them against formulas worked out by hand. Nothing here re-implements the
        method. The last cell asserts every claim the notebook makes, so running it is a test
        (`pytest test_notebooks.py`). It runs in seconds on a laptop CPU.
        """, HOW_TO_OPEN),
        setup("import io", "import math", "", "import numpy as np", "import PIL.Image",
              "from IPython.display import Image, display", "", "import toy_bandit as tb", "",
              "np.set_printoptions(precision=4, suppress=True)"),

        md(r"""
        ## 1. The bandit

        One prompt and $n$ arms (responses). A policy is a softmax over the arms' logits, which `toy_bandit`
        writes as $\phi\,\theta$: a feature matrix $\phi$ of shape $(n, d)$ times the parameters $\theta$,

        $$\pi_\theta(y) = \frac{\exp\big(\phi(y) \cdot \theta\big)}{\sum_{y'} \exp\big(\phi(y') \cdot \theta\big)}.$$

        With $\phi = I$ (`tb.tabular`) every arm has a logit of its own: the *tabular* policy. With fewer
        features than arms, the arms share parameters, as the responses of a language model share its weights
        (section 5). Training starts at the reference $\pi_{\text{ref}} = \pi_{\theta_{\text{ref}}}$. The data
        is a list of pairs, a winner $y_w$ and a loser $y_l$, and each pair has a log-ratio margin

        $$h = \big(\log \pi_\theta(y_w) - \log \pi_{\text{ref}}(y_w)\big) - \big(\log \pi_\theta(y_l) - \log \pi_{\text{ref}}(y_l)\big),$$

        so that the implicit reward margin is $\beta h$ (`tb.margins` returns $h$). Each bandit also carries a
        gold reward: the truth we evaluate with, which no method sees.

        The first bandit has three arms, a uniform $\pi_{\text{ref}}$ and a single pair $y_1 \succ y_2$; $y_3$ is
        never compared. (The code numbers arms from 0: arm 0 is $y_1$.) At the start $\pi_\theta = \pi_{\text{ref}}$,
        so $h = 0$ and the DPO loss is $-\log\sigma(0) = \ln 2$.
        """),
        code("""
        U3 = np.ones(3) / 3  # a uniform pi_ref over three arms
        one = tb.tabular(U3, [(0, 1)], gold=[1.0, 0.0, 0.5])  # one pair: y1 beats y2; y3 is never compared
        print("features phi (tabular: the identity):")
        print(one.phi)
        print("theta_ref = log pi_ref:", one.theta_ref, "  pi_ref:", tb.probs(one, one.theta_ref))
        print("pairs (winner, loser):", list(zip(one.winners.tolist(), one.losers.tolist())), "  gold reward:", one.gold)

        h0 = tb.margins(one, one.ref_logp)  # (B,) = (1,)
        loss0, grad0 = tb.dpo_loss(h0, beta=1.0)
        print(f"at pi_ref: h = {h0[0]}, DPO loss = {loss0:.4f} (ln 2 = {math.log(2):.4f}), d loss / d h = {grad0[0]}")
        """),

        md(r"""
        ## 2. DPO's loss has no minimiser

        $$L_{\text{DPO}} = \frac{1}{B}\sum_b -\log \sigma(\beta h_b), \qquad
          \frac{\partial L_{\text{DPO}}}{\partial h_b} = -\frac{\beta}{B}\,\sigma(-\beta h_b) < 0$$

        The derivative is negative for every finite $h$: a larger margin always lowers the loss, and the infimum
        0 is approached only as $h \to +\infty$, that is as $\pi(y_2)/\pi(y_1) \to 0$. *Any* policy that does this
        is as good as any other, whatever it does to the winner itself. Take
        $\pi_\varepsilon = (\varepsilon, \varepsilon^2, 1 - \varepsilon - \varepsilon^2)$: the reference terms
        cancel (both are $\log\frac13$), so $h = \log\varepsilon - \log\varepsilon^2 = \log(1/\varepsilon)$, and with
        $\beta = 1$ the loss is $-\log\sigma(\log(1/\varepsilon)) = \log(1 + \varepsilon) \to 0$, while the
        probability of the *preferred* arm, $\varepsilon$, goes to 0 as well.

        $\beta$ does not help: it only rescales $h$, so it changes neither the infimum nor the policies that
        approach it.
        """),
        code("""
        print(f"{'eps':>8} {'pi(y1)':>8} {'pi(y2)':>8} {'pi(y3)':>8} {'h':>7} {'DPO loss':>10} {'log(1+eps)':>11} {'dL/dh':>10}")
        eps_rows = {}
        for eps in (0.1, 0.01, 1e-4, 1e-6):
            pi = np.array([eps, eps ** 2, 1 - eps - eps ** 2])
            h = tb.margins(one, np.log(pi))  # (1,)
            loss, grad = tb.dpo_loss(h, beta=1.0)
            eps_rows[eps] = (h[0], loss)
            print(f"{eps:8.0e} {pi[0]:8.0e} {pi[1]:8.0e} {pi[2]:8.4f} {h[0]:7.3f} {loss:10.2e} {math.log1p(eps):11.2e} {grad[0]:10.2e}")
        """),

        md(r"""
        ## 3. Gradient descent walks off, for every $\beta$

        `tb.train` runs full-batch gradient descent from $\pi_{\text{ref}}$ with a fixed step $1/L$, where $L$ bounds
        the loss's curvature; for DPO $L \propto \beta^2$ (a choice of `toy_bandit`, so that every method and every
        $\beta$ is equally stable). On the tabular bandit with one pair, one step raises the winner's logit and
        lowers the loser's by $(2/\beta)\,\sigma(-\beta h)$ each, so the implicit margin $m = \beta h$ follows

        $$m_{t+1} = m_t + 4\,\sigma(-m_t), \qquad m_0 = 0,$$

        the same path for every $\beta$. Once $m$ is large, $\sigma(-m) \approx e^{-m}$, so $e^{m}$ grows by about 4
        per step and $m_t \approx \log(4t + 1)$: the margin grows like $\log t$, slowly but without end (each
        doubling of the number of steps adds $\ln 2$). Since $h = m/\beta$, a small $\beta$ reaches the same margin
        with a larger $h$: a more extreme policy.
        """),
        code("""
        betas, steps = (0.1, 0.5, 1.0, 2.0), 3000
        at = (1, 10, 100, 1000, 2000, 3000)
        one_paths = {beta: tb.probs(one, tb.train(one, tb.Method("dpo", beta), steps)[1]) for beta in betas}  # (T + 1, 3) each
        one_margins = {beta: beta * tb.margins(one, np.log(p))[:, 0] for beta, p in one_paths.items()}  # (T + 1,) each

        print("DPO's implicit margin beta * h after t steps")
        print(f"{'':>12}" + "".join(f"{'t=' + str(t):>9}" for t in at))
        for beta, m in one_margins.items():
            print(f"{'beta=' + str(beta):>12}" + "".join(f"{m[t]:9.3f}" for t in at))
        print(f"{'log(4t + 1)':>12}" + "".join(f"{math.log(4 * t + 1):9.3f}" for t in at))
        print(f"\\npi after {steps} steps    pi(y1)    pi(y2)    pi(y3)")
        for beta, p in one_paths.items():
            print(f"  beta={beta:<4}      {p[-1, 0]:8.5f}  {p[-1, 1]:8.1e}  {p[-1, 2]:8.1e}")
        """),
        md(r"""
        The loser $y_2$, the arm that never wins, heads to probability 0 for every $\beta$. On the tabular policy
        gradient descent takes the mass to the winner, so $y_3$ (never compared) is drained too: the
        winner's logit rises and the loser's falls by the same amount, and $y_3$'s share shrinks.

        Three losses have a finite target instead:

        - **IPO**, $\frac1B\sum_b \big(h_b - \frac{1}{2\beta}\big)^2$, is 0 at $h = 1/(2\beta)$. With one pair the winner's
          and the loser's logits move by $\pm h/2$, so $\pi_{\text{IPO}} \propto \pi_{\text{ref}} \cdot (e^{h/2}, e^{-h/2}, 1)$
          (`tb.ipo_policy`).
        - **d-DPO**, $\frac1B\sum_b (\Delta r_b - \beta h_b)^2$, is 0 at $\beta h = \Delta r = \hat r(y_1) - \hat r(y_2)$,
          the margin of a Bradley-Terry reward model $\hat r$ fitted to the same pairs (`tb.fit_reward_model`: one
          number per arm, loss $-\log\sigma\big(\hat r(y_w) - \hat r(y_l)\big) + \frac{\lambda}{2}\lVert \hat r\rVert^2$ with
          $\lambda = 0.1$; without the penalty the reward model would diverge on this pair exactly as DPO does).
          `tb.distill_policy` is its closed form.
        - **p-DPO**, $\frac1B\sum_b -\log\sigma(\beta h_b) + \gamma\,\mathrm{KL}(\pi_{\text{ref}} \,\|\, \pi_\theta)$. In the
          bandit the KL is exact (a sum over all arms) and its gradient in the logits is $\pi_\theta - \pi_{\text{ref}}$.
          Setting the whole gradient to 0: the unseen arm keeps its reference probability, and
          $\pi(y_1) = \pi_{\text{ref}}(y_1) + d$, $\pi(y_2) = \pi_{\text{ref}}(y_2) - d$ with
          $d = \frac{\beta}{\gamma}\,\sigma(-\beta h)$. For $\beta = \gamma = 1$: $\pi = (\frac{8}{15}, \frac{2}{15}, \frac13)$,
          since then $h = \log 4$ and $d = \sigma(-\log 4) = \frac15$ (`tb.pdpo_one_pair`).

        `tb.run` trains a method and returns one row: the final policy, its expected gold reward, its
        $\mathrm{KL}(\pi \,\|\, \pi_{\text{ref}})$, the largest $\beta h$, and the gap $\max_y |\pi(y) - \pi_{\text{closed}}(y)|$
        to the closed form; `tb.print_rows` prints the rows.
        """),
        code("""
        beta = 1.0
        r_one = tb.fit_reward_model(one)  # (3,)
        print("reward model r_hat:", r_one.round(4), f"  dr = r_hat(y1) - r_hat(y2) = {r_one[0] - r_one[1]:.4f}")
        rows_one = [tb.run(one, "DPO", tb.Method("dpo", beta), steps=steps),
                    tb.run(one, "IPO", tb.Method("ipo", beta), tb.ipo_policy(one, beta)),
                    tb.run(one, "d-DPO", tb.Method("ddpo", beta, rewards=r_one[None]), tb.distill_policy(one, r_one, beta)),
                    tb.run(one, "p-DPO (gamma=1)", tb.Method("pdpo", beta, 1.0), tb.pdpo_one_pair(U3, 0, 1, beta, 1.0))]
        tb.print_rows(f"one pair y1 > y2, beta = {beta}; DPO after {steps} steps, the others converged", rows_one)
        print(f"\\np-DPO's closed form: {tb.pdpo_one_pair(U3, 0, 1, beta, 1.0).round(6)}; 8/15, 2/15, 1/3 = {8 / 15:.6f}, {2 / 15:.6f}, {1 / 3:.6f}")
        """),

        md(r"""
        ## 4. A total order: DPO becomes deterministic

        Three arms $a, b, c$ and the pairs $a \succ b$, $b \succ c$, $a \succ c$, each seen once. Nothing in the data
        contradicts anything, so DPO's loss again falls toward 0 only as every margin grows without bound:
        $\pi(b)/\pi(a) \to 0$ and $\pi(c)/\pi(b) \to 0$. The policy piles all its mass on $a$, for every $\beta$ (the
        example of the IPO paper, Azar et al. 2023), and $c$, which never wins, goes to 0.

        IPO asks for the same margin $t = 1/(2\beta)$ on all three pairs, which is impossible, because
        $h_{ac} = h_{ab} + h_{bc}$. Its loss is a least-squares problem in $u = h_{ab}$ and $v = h_{bc}$:

        $$\min_{u, v}\ (u - t)^2 + (v - t)^2 + (u + v - t)^2 \quad\Rightarrow\quad u = v = \tfrac{2}{3}\,t, \qquad
          \pi_{\text{IPO}} \propto \pi_{\text{ref}} \cdot \big(e^{4t/3}, e^{2t/3}, 1\big).$$

        (Set the derivative in $u$ to 0, $(u - t) + (u + v - t) = 0$, and use the symmetry $u = v$.) d-DPO distils the
        Bradley-Terry reward model fitted to the three pairs; the pairs connect all three arms, so it ends at
        $\pi^*_{\hat r} = \pi_{\text{ref}}\,e^{\hat r/\beta} / Z$ (section 6 shows why).
        """),
        code("""
        tot = tb.tabular(U3, [(0, 1), (1, 2), (0, 2)], gold=[1.0, 0.5, 0.0])  # arms a, b, c
        r_tot = tb.fit_reward_model(tot)  # (3,)
        print("reward model r_hat (a, b, c):", r_tot.round(4))
        tot_dpo = {beta: tb.probs(tot, tb.train(tot, tb.Method("dpo", beta), steps)[1]) for beta in betas}  # (T + 1, 3) each
        tot_ipo = {beta: tb.ipo_policy(tot, beta) for beta in betas}  # (3,) each
        tot_gaps = []  # IPO: gradient descent, and by hand, against tb.ipo_policy; d-DPO: gradient descent against pi*_r_hat
        print(f"\\n{'':>9} {'DPO after ' + str(steps) + ' steps':^28} | {'IPO, closed form':^20} | {'d-DPO = pi*_r_hat':^20}")
        print(f"{'':>9} {'pi(a)':>8} {'pi(b)':>9} {'pi(c)':>9} | {'a':>6} {'b':>6} {'c':>6} | {'a':>6} {'b':>6} {'c':>6}")
        for beta in betas:
            t = 1 / (2 * beta)
            ipo_by_hand = np.exp([4 * t / 3, 2 * t / 3, 0.0]) / np.exp([4 * t / 3, 2 * t / 3, 0.0]).sum()
            ipo_gd = tb.probs(tot, tb.train(tot, tb.Method("ipo", beta))[0])
            ddpo_gd = tb.probs(tot, tb.train(tot, tb.Method("ddpo", beta, rewards=r_tot[None]))[0])
            ddpo_closed = tb.optimal_policy(U3, r_tot, beta)
            tot_gaps += [np.abs(ipo_gd - tot_ipo[beta]).max(), np.abs(ipo_by_hand - tot_ipo[beta]).max(),
                         np.abs(ddpo_gd - ddpo_closed).max()]
            d, i = tot_dpo[beta][-1], tot_ipo[beta]
            print(f"{'beta=' + str(beta):>9} {d[0]:8.5f} {d[1]:9.1e} {d[2]:9.1e} | {i[0]:6.3f} {i[1]:6.3f} {i[2]:6.3f} | "
                  f"{ddpo_closed[0]:6.3f} {ddpo_closed[1]:6.3f} {ddpo_closed[2]:6.3f}")
        print(f"\\nlargest gap, gradient descent or hand formula against the closed form: {max(tot_gaps):.1e}")
        """),
        md(r"""
        The figure is drawn by `tb.draw_divergence`. Left: the largest log-ratio margin $h$ of the three pairs against
        the step, both on log axes, one colour per $\beta$; the dashed line of the same colour is where IPO stops.
        Right: the probability of $c$. DPO's curves never level off. (`toy_bandit`'s figure helpers save to a file and
        close the figure; `show` hands them an in-memory file instead and displays the picture here.)

        A finite fixed point is not necessarily a mild one: at $\beta = 0.1$ d-DPO's $\pi^*_{\hat r}$ is nearly
        deterministic too, because $\hat r / \beta$ is large. The difference from DPO is that it is one point, set by
        $\hat r$ and $\beta$, which more training does not move.
        """),
        code("""
        def show(draw, *args):
            \"\"\"run one of toy_bandit's draw_* helpers into memory and display its figure (256 colours: a third of the bytes)\"\"\"
            png, small = io.BytesIO(), io.BytesIO()
            draw(*args, png)  # each helper ends with fig.savefig(path): a file object works as the path
            PIL.Image.open(png).convert("RGB").quantize(256).save(small, "png")
            display(Image(small.getvalue(), width=900))

        show(tb.draw_divergence, tot, tot_dpo, tot_ipo)
        """),

        md(r"""
        ## 5. Shared features: the preferred arm loses probability

        In a language model, responses share parameters: pushing one response up moves many others. The bandit's
        version is a log-linear policy with fewer features than arms. `tb.displacement_bandit()` has three arms
        and two features,

        $$\phi(y_w) = (1, 0), \qquad \phi(y_l) = (0, 1), \qquad \phi(y_u) = (2, -1), \qquad \theta_{\text{ref}} = (0, 0),$$

        one pair $y_w \succ y_l$, and an arm $y_u$ that no pair contains. By the chain rule, DPO's gradient in $\theta$ is

        $$\nabla_\theta L_{\text{DPO}} = -\beta\,\sigma(-\beta h)\,\big(\phi(y_w) - \phi(y_l)\big),$$

        so $\theta$ only ever moves along $(1, -1)$: $\theta = (s, -s)$, and the three logits are $(s, -s, 3s)$. The
        unseen arm's logit rises three times as fast as the winner's. The margin $h = 2s$ grows without bound, while

        $$\frac{d}{ds}\log\pi(y_w) = 1 - \mathbb{E}_\pi\big[(1, -1, 3)\big]$$

        is 0 at $s = 0$ (under the uniform policy the mean of $1, -1, 3$ is 1) and negative for every $s > 0$, as the
        mass moves to the arm with the 3. So $\pi(y_w)$ falls at every step while DPO's loss keeps improving: this is
        *likelihood displacement*. The mass goes to $y_u$, whose gold reward is $-1$ (text far from the data is
        usually bad).
        """),
        code("""
        disp = tb.displacement_bandit()
        print("features phi (rows y_w, y_l, y_u):")
        print(disp.phi)
        print("gold reward:", disp.gold)
        theta_end, theta_path = tb.train(disp, tb.Method("dpo", 1.0), steps)  # (2,), (T + 1, 2)
        disp_dpo = tb.probs(disp, theta_path)  # (T + 1, 3)
        disp_margin = tb.margins(disp, np.log(disp_dpo))[:, 0]  # (T + 1,), beta = 1
        print(f"\\nDPO, beta = 1\\n{'step':>6} {'theta':>18} {'pi(y_w)':>9} {'pi(y_l)':>9} {'pi(y_u)':>9} {'beta*h':>8}")
        for t in (0, 1, 2, 10, 100, 1000, 3000):
            th, p = theta_path[t], disp_dpo[t]
            print(f"{t:>6} {'(' + f'{th[0]:.3f}, {th[1]:.3f}' + ')':>18} {p[0]:9.4f} {p[1]:9.1e} {p[2]:9.4f} {disp_margin[t]:8.3f}")
        """),
        md(r"""
        d-DPO and p-DPO on the same bandit, with $\beta = 1$ and the Bradley-Terry reward model of the one pair. Every
        feature vector here sums to 1, so $\pi - \pi_{\text{ref}}$ (which sums to 0) gives a KL gradient
        $\phi^\top(\pi - \pi_{\text{ref}})$ along $(1, -1)$ as well: all three methods move on the same line
        $\theta = (s, -s)$, and on that line *any* positive margin lowers $\pi(y_w)$. The fixes cannot undo the
        geometry; what they change is that they stop at a finite $s$ (d-DPO at $\beta h = \Delta r$, p-DPO where its
        KL term balances DPO's pull), where DPO goes on forever. The figure (`tb.draw_displacement`): left, DPO's
        path; right, where each method ends.
        """),
        code("""
        r_disp = tb.fit_reward_model(disp)  # (3,): y_u is in no pair, so the L2 penalty leaves it at 0
        disp_methods = {"d-DPO": tb.Method("ddpo", 1.0, rewards=r_disp[None]), "p-DPO": tb.Method("pdpo", 1.0, tb.GAMMA_P)}
        disp_paths = {"DPO": disp_dpo}
        disp_theta = {"DPO": theta_end}
        for name, m in disp_methods.items():
            disp_theta[name], path = tb.train(disp, m)
            disp_paths[name] = tb.probs(disp, path)  # (T + 1, 3)
        print(f"reward model r_hat: {r_disp.round(4)}; d-DPO's closed form: {tb.distill_policy(disp, r_disp, 1.0).round(4)}")
        print(f"\\n{'':>6} {'theta':>18} {'pi(y_w)':>9} {'pi(y_l)':>9} {'pi(y_u)':>9} {'beta*h':>8} {'E[gold]':>8}")
        for name, p in disp_paths.items():
            th, q = disp_theta[name], p[-1]
            print(f"{name:>6} {'(' + f'{th[0]:.3f}, {th[1]:.3f}' + ')':>18} {q[0]:9.4f} {q[1]:9.4f} {q[2]:9.4f} "
                  f"{tb.margins(disp, np.log(q))[0]:8.3f} {q @ disp.gold:8.3f}")
        show(tb.draw_displacement, disp, disp_paths)
        """),

        md(r"""
        ## 6. Distillation's fixed point

        d-DPO replaces DPO's open-ended target with a finite one, read off an explicit reward model $r$:

        $$L_{\text{d-DPO}} = \frac{1}{B}\sum_b \big(\Delta r_b - \beta h_b\big)^2, \qquad \Delta r_b = r(y_{w,b}) - r(y_{l,b}).$$

        The loss is 0 exactly when $\beta h_b = \Delta r_b$ on every pair, that is when
        $\beta\log\frac{\pi(y)}{\pi_{\text{ref}}(y)} - r(y)$ takes the same value on the two arms of every compared pair.
        If the pairs connect all the arms, it is one constant over all of them, and normalisation fixes the constant:

        $$\pi(y) = \frac{\pi_{\text{ref}}(y)\, e^{r(y)/\beta}}{Z} = \pi^*_r(y),$$

        the policy that maximises $\mathbb{E}_\pi[r] - \beta\,\mathrm{KL}(\pi \,\|\, \pi_{\text{ref}})$ (`tb.optimal_policy`).
        So d-DPO has a fixed point, the RLHF optimum of its reward model: gradient descent reaches it from any start
        and stays there however long it runs. (If the pairs leave some arm unconnected, only the ratios inside each
        connected part are pinned: exercise 3.)

        The data from here on is `tb.length_bias_bandit()`, five arms and a uniform $\pi_{\text{ref}}$:

        | arm | 0 | 1 | 2 | 3 | 4 |
        |---|---|---|---|---|---|
        | answer | good, short | ok, short | ok, long | bad, short | bad, long |
        | gold reward | 1 | 0 | 0 | $-1$ | $-1$ |
        | length | 1 | 1 | 2 | 1 | 2 |

        Every two arms are compared 4 times by an annotator who, when the lengths differ, prefers the longer answer
        with probability 0.7 and otherwise follows the gold reward (Bradley-Terry); the counts are the expected ones,
        rounded, so there is no sampling noise. The good answer exists only in the short form, so a label bought by
        length is a wrong label.
        """),
        code("""
        lb, length = tb.length_bias_bandit()
        arms = ["good-s", "ok-s", "ok-L", "bad-s", "bad-L"]
        pi_ref5 = np.exp(lb.ref_logp)  # (5,), uniform
        wins = np.zeros((5, 5), int)
        np.add.at(wins, (lb.winners, lb.losers), 1)  # wins[i, j]: how often arm i beat arm j
        print(f"{len(lb.winners)} labelled pairs; how often the row's arm beat the column's:")
        print(f"{'':>8}" + "".join(f"{a:>8}" for a in arms))
        for i, a in enumerate(arms):
            print(f"{a:>8}" + "".join(f"{'-' if i == j else wins[i, j]:>8}" for j in range(5)))
        r_hat = tb.fit_reward_model(lb)  # (5,)
        print("\\nBradley-Terry reward model r_hat:", dict(zip(arms, r_hat.round(3).tolist())))
        """),
        md(r"""
        d-DPO from $\pi_{\text{ref}}$ with `tb.train`, for three values of $\beta$, against $\pi^*_{\hat r}$; and the norm of
        d-DPO's gradient at $\pi^*_{\hat r}$, which should be 0 (`tb.objective` returns the loss and its gradient in
        $\theta$). Here gradient descent lands in one step: every two arms are compared equally often, so the loss is a
        perfectly round bowl in the directions that matter and the step $1/L$ goes straight to its bottom. To watch the
        approach, the second cell starts `tb.gradient_descent` from three random points with a smaller step, 0.5.
        """),
        code("""
        fixed_gaps, fixed_grads = [], []
        print(f"{'':>9} {'pi*_r_hat = pi_ref exp(r_hat / beta) / Z':^42} {'gap after tb.train':>19} {'|grad| at pi*':>14}")
        for beta in (0.2, 0.5, 1.0):
            m = tb.Method("ddpo", beta, rewards=r_hat[None])
            target = tb.optimal_policy(pi_ref5, r_hat, beta)  # (5,)
            fixed_gaps.append(np.abs(tb.probs(lb, tb.train(lb, m)[0]) - target).max())
            fixed_grads.append(np.linalg.norm(tb.objective(lb, m, np.log(target))[1]))
            print(f"{'beta=' + str(beta):>9} {str(target.round(4)):^42} {fixed_gaps[-1]:19.1e} {fixed_grads[-1]:14.1e}")
        """),
        code("""
        beta = 0.5
        m = tb.Method("ddpo", beta, rewards=r_hat[None])
        target = tb.optimal_policy(pi_ref5, r_hat, beta)
        rng = np.random.default_rng(0)
        at = (0, 10, 50, 100, 200, 400)
        print(f"d-DPO, beta = {beta}: max |pi - pi*_r_hat| after t steps of size 0.5")
        print(f"{'start':>8}" + "".join(f"{'t=' + str(t):>10}" for t in at))
        random_start_gaps = []
        for k in range(3):
            theta0 = lb.theta_ref + rng.normal(scale=2.0, size=5)  # (5,), a random policy
            path = tb.gradient_descent(lambda th: tb.objective(lb, m, th)[1], theta0, lr=0.5, steps=400)[1]  # (T + 1, 5)
            gap = np.abs(tb.probs(lb, path) - target).max(-1)  # (T + 1,)
            random_start_gaps.append(gap[-1])
            print(f"{'random ' + str(k):>8}" + "".join(f"{gap[min(t, len(gap) - 1)]:10.1e}" for t in at))
        """),
        md(r"""
        The fixed point is only as good as the reward model. $\hat r$ ranks *ok, long* above *good, short*: the
        annotator's taste for length is in the data, and $\hat r$ learnt it. d-DPO then distils the bias faithfully.
        Compare $\pi^*_{\hat r}$ with $\pi^*$ of the gold reward, and look at the mean length
        $\mathbb{E}_\pi[\text{length}]$ (the reference's is $1.4$):
        """),
        code("""
        beta = 0.5
        print(f"beta = {beta}{'':>18}" + "".join(f"{a:>8}" for a in arms) + f"{'E[gold]':>9}{'E[len]':>8}")
        for name, p in [("pi_ref", pi_ref5), ("pi*_gold", tb.optimal_policy(pi_ref5, lb.gold, beta)),
                        ("pi*_r_hat (d-DPO)", tb.optimal_policy(pi_ref5, r_hat, beta))]:
            print(f"{name:<28}" + "".join(f"{q:8.3f}" for q in p) + f"{p @ lb.gold:9.3f}{p @ length:8.3f}")
        """),

        md(r"""
        ## 7. Pessimism over a family of reward models

        One reward model cannot tell a spurious preference from a real one. A *family* of plausible reward models
        may, as a whole, contain a good one, but we do not know which. Pessimism chooses the policy whose worst case
        over the family is best. Take the RLHF value of a policy $\pi$ under a reward $r$,

        $$J(\pi, r) = \mathbb{E}_\pi[r] - \mathbb{E}_{\pi_{\text{ref}}}[r] - \beta\,\mathrm{KL}(\pi \,\|\, \pi_{\text{ref}})$$

        (`tb.rlhf_value`; subtracting $\mathbb{E}_{\pi_{\text{ref}}}[r]$ makes $J$ blind to a constant added to $r$, which
        Bradley-Terry cannot pin down). For one reward the best value is reached at $\pi^*_r$, and it equals a forward KL:

        $$\max_\pi J(\pi, r) = J(\pi^*_r, r) = \beta\,\mathrm{KL}(\pi_{\text{ref}} \,\|\, \pi^*_r)$$

        (`tb.best_value`; both sides equal $\beta \log \mathbb{E}_{\pi_{\text{ref}}}[e^{r/\beta}] - \mathbb{E}_{\pi_{\text{ref}}}[r]$).
        $J$ is linear in $r$ and concave in $\pi$, so over a convex family $S$ the max and the min can be swapped:
        $\max_\pi \min_{r \in S} J(\pi, r) = \min_{r \in S} \beta\,\mathrm{KL}(\pi_{\text{ref}} \,\|\, \pi^*_r)$. The robust
        policy is $\pi^*_r$ of the member whose optimum is closest to $\pi_{\text{ref}}$ in **forward** KL: the most
        conservative reward of the family (`tb.pessimistic_choice`).

        **e-DPO** turns this into a loss: distil whichever member fits best, plus a forward-KL term that breaks the tie
        between members toward the reference:

        $$L_{\text{e-DPO}} = \min_k \frac{1}{B}\sum_b \big(\Delta r_{k,b} - \beta h_b\big)^2 + \gamma\,\mathrm{KL}(\pi_{\text{ref}} \,\|\, \pi_\theta).$$

        **p-DPO** does the same with the family of *all* rewards whose Bradley-Terry loss is near its best; in
        implicit-reward form that loss is DPO's, so

        $$L_{\text{p-DPO}} = \frac{1}{B}\sum_b -\log\sigma(\beta h_b) + \gamma\,\mathrm{KL}(\pi_{\text{ref}} \,\|\, \pi_\theta).$$

        In e-DPO $\gamma$ only has to break ties (`tb.GAMMA_E` $= 0.01$; as $\gamma \to 0$ e-DPO ends at
        `tb.pessimistic_choice`'s policy). In p-DPO it must stay away from 0, or p-DPO is DPO again (`tb.GAMMA_P` $= 1$).

        The family (`tb.reward_family`): member $s$ is a Bradley-Terry model fitted to the same pairs, reweighted so
        that, among pairs of unequal length, those won by the longer answer carry a share $s$ of the weight, for
        $s \in \{0, 0.25, 0.5, 0.75, 1\}$ (`tb.SHARES`). Member $s = 0$ ignores every pair that the longer answer won.
        """),
        code("""
        beta = 0.5
        longer_won = length[lb.winners] > length[lb.losers]  # (B,)
        shorter_won = length[lb.winners] < length[lb.losers]  # (B,)
        print(f"in the data, the longer answer won {longer_won.sum()} of the {longer_won.sum() + shorter_won.sum()} "
              f"pairs of unequal length: a share of {longer_won.sum() / (longer_won.sum() + shorter_won.sum()):.2f}")
        family = tb.reward_family(lb, length, tb.SHARES)  # (K, 5)
        print(f"\\nbeta = {beta}   member's reward r{'':>26}   its optimum pi*_r")
        print(f"{'share':>5}" + "".join(f"{a:>7}" for a in arms) + f"{'KL(ref|pi*)':>13}{'E[gold]':>9}{'E[len]':>8}")
        for s, r in zip(tb.SHARES, family):
            p = tb.optimal_policy(pi_ref5, r, beta)
            print(f"{s:5.2f}" + "".join(f"{v:7.3f}" for v in r) + f"{tb.kl(pi_ref5, p):13.3f}{p @ lb.gold:9.3f}{p @ length:8.3f}")
        k_pess, pi_pess = tb.pessimistic_choice(pi_ref5, family, beta)
        print(f"\\npessimism picks the member with the smallest KL(pi_ref || pi*_r): share {tb.SHARES[k_pess]}, "
              f"whose optimum has gold {pi_pess @ lb.gold:.3f} and mean length {pi_pess @ length:.3f}")
        """),
        md(r"""
        The conservative member is $s = 0.5$: the one that gives the pairs won by the longer answer and those won by
        the shorter one equal weight. It is not free of the bias (it still rates *ok, long* above *ok, short*), but
        its optimum's mean length is about the reference's (1.38 against 1.40). Pessimism does not pick the member
        with the best gold reward ($s = 0$ has more); it picks the one that asks the policy to move least.

        `tb.scenario_family()` trains DPO, d-DPO (on $\hat r$, and on the member $s = 1$), e-DPO and p-DPO from
        $\pi_{\text{ref}}$ on these pairs at $\beta = 0.5$ (3000 steps for DPO, the others to convergence) and compares
        them with $\pi^*$ of the gold reward. The gap column of
        e-DPO is its distance from `tb.pessimistic_choice`'s policy, its $\gamma \to 0$ limit. The figure
        (`tb.draw_family`) places each policy by its KL from $\pi_{\text{ref}}$ and its gold reward; the black curve is
        $\pi^*_{\text{gold}}$ for $\beta$ from 0.1 to 10, the best any policy can do at each KL, and the crosses are
        the members' optima.
        """),
        code("""
        fam = tb.scenario_family()
        fam_rows = {name: next(r for r in fam["rows"] if r["method"].startswith(prefix))  # short names for the last cell
                    for name, prefix in [("DPO", "DPO"), ("d-DPO", "d-DPO (RM"), ("e-DPO", "e-DPO"), ("p-DPO", "p-DPO")]}
        tb.print_rows(f"length-biased labels, beta = {fam['beta']} (arms good-s ok-s ok-L bad-s bad-L)", fam["rows"])
        print(f"\\npi_ref: E[gold] = {pi_ref5 @ lb.gold:.3f}, mean length {pi_ref5 @ length:.3f}")
        print("mean length:", {name: round(v, 3) for name, v in fam["mean_length"].items()})
        show(tb.draw_family, lb, fam)
        """),
        md(r"""
        The same comparison for five values of $\beta$ (`tb.scenario_beta_sweep()`; `tb.print_sweep` prints it under
        the title that `python toy_bandit.py` gives it). Each cell is E[gold] / KL($\pi$ | $\pi_{\text{ref}}$); the dotted
        line in the figure is $\pi_{\text{ref}}$'s gold reward.
        """),
        code("""
        sweep = tb.scenario_beta_sweep()
        tb.print_sweep(sweep)
        show(tb.draw_beta_sweep, sweep)
        """),
        md(r"""
        **Reading the results.**

        - *DPO and d-DPO learn the length bias.* Both put the most mass on *ok, long*, and their mean length rises well
          above the reference's 1.4. DPO fits the labels directly (and runs off on the pairs no label contradicts);
          d-DPO distils $\hat r$ exactly, and $\hat r$ learnt the bias.
        - *e-DPO has the highest gold reward of the five methods at every $\beta$ of the sweep*, and moves much less far
          from $\pi_{\text{ref}}$ than DPO. At $\beta = 0.5$ it lands on the optimum of the member that weighs long-won and
          short-won pairs equally. The gain comes from a family that contains such a member; pessimism only finds it.
        - *p-DPO stays closest to the reference* (the smallest KL for $\beta \le 0.5$) and so gains little: here its gold
          reward is below DPO's. Pessimism buys safety, not accuracy. Its KL term carries no $\beta$, while DPO's pull
          on $h$ scales with $\beta$, so at a fixed $\gamma$ the leash is relatively tighter at small $\beta$: p-DPO's KL
          *grows* with $\beta$ up to $\beta = 1$, while every other method's falls.
        - *No method gets near $\pi^*_{\text{gold}}$* (gold 0.737 at $\beta = 0.5$): most labels of unequal-length pairs
          are about length, and nothing in the data can undo that.
        """),

        md(r"""
        ## 8. Exercises

        Work each one by hand first, then check it with `toy_bandit` in a new cell. The last cell of the notebook
        checks the solutions.

        **Exercise 1.** Two arms, uniform $\pi_{\text{ref}}$, and the single pair $y_1 \succ y_2$. Where do DPO and IPO
        end, as a function of $\beta$?

        <details><summary>Solution</summary>

        DPO: $\pi(y_1) \to 1$ for every $\beta$ (its margin grows without bound, as in section 3). IPO stops at
        $h = \log\frac{\pi(y_1)}{\pi(y_2)} = \frac{1}{2\beta}$, so $\pi(y_1) = \sigma\big(\frac{1}{2\beta}\big)$:
        $\sigma(5) = 0.9933$ at $\beta = 0.1$, $\sigma(1) = 0.7311$ at $\beta = 0.5$, $\sigma(0.25) = 0.5622$ at $\beta = 2$.
        IPO keeps $\beta$'s meaning as a leash; DPO does not. Check:
        `tb.ipo_policy(tb.tabular(np.ones(2) / 2, [(0, 1)], gold=[1, 0]), beta)`.

        </details>

        **Exercise 2.** Three arms, uniform $\pi_{\text{ref}}$: the pair $y_1 \succ y_2$ is seen three times and
        $y_2 \succ y_1$ once. Does DPO still diverge? If not, where does its margin $\beta h$ stop?

        <details><summary>Solution</summary>

        It stops. The loss is $\frac14\big(-3\log\sigma(m) - \log\sigma(-m)\big)$ with $m = \beta h$; its derivative in $m$ is
        $\frac14\big(-3\,\sigma(-m) + \sigma(m)\big)$, which is 0 where $\sigma(m)/\sigma(-m) = e^m = 3$: $\beta h = \log 3 = 1.0986$
        for every $\beta$, the log of the ratio of the win counts. DPO diverges only on pairs that the data never
        contradicts, which is the usual case (each pair is labelled once). Check: train DPO with `tb.train` on
        `tb.tabular(U3, [(0, 1)] * 3 + [(1, 0)], gold=[1, 0, 0])` and look at `beta * tb.margins(...)`.

        </details>

        **Exercise 3.** The bandit of section 1 (one pair $y_1 \succ y_2$, $y_3$ never compared), $\beta = 1$, and a reward
        model that scores $r = (1, 0, 5)$: it is sure that $y_3$ is by far the best arm. Where does d-DPO end, and how
        far is that from $\pi^*_r$?

        <details><summary>Solution</summary>

        $r(y_3)$ appears in no reward difference, so d-DPO never sees it. It only pins $\beta h = r(y_1) - r(y_2) = 1$;
        on the tabular policy the two logits move by $\pm\frac12$ and $y_3$'s stays, so
        $\pi = (e^{1/2}, e^{-1/2}, 1)/(e^{1/2} + e^{-1/2} + 1) = (0.5065, 0.1863, 0.3072)$, whatever $r(y_3)$ is. But
        $\pi^*_r \propto (e^1, e^0, e^5)$ $= (0.0179, 0.0066, 0.9756)$. Distillation reaches $\pi^*_r$ only when the pairs
        connect every arm (section 6). Check: `tb.distill_policy(one, np.array([1.0, 0.0, 5.0]), 1.0)` and
        `tb.optimal_policy(U3, np.array([1.0, 0.0, 5.0]), 1.0)`.

        </details>

        **Exercise 4.** Uniform $\pi_{\text{ref}}$ over three arms, $\beta = 1$, and a family of two reward models,
        $r_1 = (1, 0, 0.5)$ and $r_2 = (0.2, 0, 2)$. (a) Which member does pessimism pick, and what is its best value
        $\max_\pi J(\pi, r)$? (b) The picked policy $\pi^*_{r_1}$: what is its value under the *other* member, $J(\pi^*_{r_1}, r_2)$?
        Is it better than doing nothing ($\pi = \pi_{\text{ref}}$, value 0)?

        <details><summary>Solution</summary>

        (a) $\pi^*_{r_1} = (0.5065, 0.1863, 0.3072)$ with $\mathrm{KL}(\pi_{\text{ref}} \,\|\, \pi^*_{r_1}) = 0.0817$, and
        $\pi^*_{r_2} = (0.1271, 0.1041, 0.7689)$ with $0.4309$: pessimism picks $r_1$, whose best value is
        $\beta \times 0.0817 = 0.0817$ (`tb.pessimistic_choice`, `tb.best_value`).

        (b) $J(\pi^*_{r_1}, r_2) = -0.096 < 0$ (`tb.rlhf_value(pi, U3, r2, 1.0)`): under $r_2$, the picked policy is worse
        than $\pi_{\text{ref}}$. The minimax argument above needs a *convex* family; two points are not one. The true
        worst case over two members is the same as over all their mixtures $\alpha r_1 + (1 - \alpha) r_2$ (J is linear
        in $r$), and the robust policy is $\pi^*$ of the mixture closest to $\pi_{\text{ref}}$ in forward KL, near
        $\alpha = 0.8$, whose worst-case value is positive. e-DPO, like `tb.pessimistic_choice`, picks among the members
        only; a family with members spread along the axis of doubt (as in section 7) makes that matter less.

        </details>
        """),

        md(r"""
        ## What this notebook showed, asserted

        Running the cell below is the test: it fails if any claim above stops being true of `toy_bandit.py`.
        """),
        code("""
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
            h = tb.margins(tot, np.log(p)).max(-1)  # (T + 1,)
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
            assert tb.margins(disp, np.log(end))[0] < disp_margin[-1] / 3  # and stops at a finite margin
        assert np.allclose(disp_paths["d-DPO"][-1], tb.distill_policy(disp, r_disp, 1.0), atol=1e-9)

        # 6. d-DPO's fixed point is pi*_r_hat, from pi_ref and from random starts; r_hat learnt the length bias
        assert max(fixed_gaps) < 1e-9 and max(fixed_grads) < 1e-9 and max(random_start_gaps) < 1e-6
        assert len(tb.train(lb, tb.Method("ddpo", 0.5, rewards=r_hat[None]))[1]) == 2  # from pi_ref: one step, then grad 0
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
            assert tb.probs(two, tb.train(two, tb.Method("dpo", beta), 3000)[0])[0] > 0.98
        both_ways = tb.tabular(U3, [(0, 1)] * 3 + [(1, 0)], gold=[1.0, 0.0, 0.0])  # exercise 2
        for beta in (0.5, 2.0):
            p = tb.probs(both_ways, tb.train(both_ways, tb.Method("dpo", beta))[0])
            assert abs(beta * tb.margins(both_ways, np.log(p))[0] - math.log(3)) < 1e-6
        r3 = np.array([1.0, 0.0, 5.0])  # exercise 3
        p = tb.probs(one, tb.train(one, tb.Method("ddpo", 1.0, rewards=r3[None]))[0])
        assert np.allclose(p, [0.5065, 0.1863, 0.3072], atol=1e-4) and np.allclose(p, tb.distill_policy(one, r3, 1.0), atol=1e-9)
        assert np.allclose(tb.optimal_policy(U3, r3, 1.0), [0.0179, 0.0066, 0.9756], atol=1e-4)
        r1, r2 = np.array([1.0, 0.0, 0.5]), np.array([0.2, 0.0, 2.0])  # exercise 4
        k, pi1 = tb.pessimistic_choice(U3, np.array([r1, r2]), 1.0)
        assert k == 0 and abs(tb.best_value(U3, r1, 1.0) - 0.0817) < 1e-4 and abs(tb.best_value(U3, r2, 1.0) - 0.4309) < 1e-4
        assert abs(tb.rlhf_value(pi1, U3, r2, 1.0) - (-0.096)) < 1e-3
        mix = tb.optimal_policy(U3, 0.8 * r1 + 0.2 * r2, 1.0)
        assert min(tb.rlhf_value(mix, U3, r, 1.0) for r in (r1, r2)) > 0.05
        print("all claims hold")
        """),
    ]


# -----------------------------------------------------------------------------
# 2. the losses by hand


def losses_by_hand():
    return [
        md(r"""
        # 2. The losses by hand

        The five losses of `rddpo.py` (DPO, IPO, d-DPO, e-DPO, p-DPO) are small functions of four numbers per
        preference pair: the log-probabilities of the chosen and the rejected response under the policy and
        under the reference. This notebook builds those numbers from a real tokenised pair on a small GPT-2,
        then works every loss and its gradient out on numbers small enough to check with a calculator:

        1. a real pair, tokenised: which tokens count in $\log \pi(y \mid x)$ (the masks);
        2. the sequence log-probability, token by token, against `rddpo.sequence_logps`;
        3. the implicit reward: exactly 0 at the start, and what one DPO step does to it;
        4. the five losses on two hand-picked pairs, with the arithmetic;
        5. their gradients: which way each loss pushes each log-probability, and what the KL term adds;
        6. exercises, with solutions a teacher can reveal.

        Every number is computed by a function imported from `rddpo.py`; nothing here re-implements the
        method. The last cell asserts every claim the notebook makes, so running it is a test
        (`pytest test_notebooks.py`). It runs in seconds on a laptop CPU.
        """, HOW_TO_OPEN),
        setup("import copy", "import math", "", "import torch", "", "import rddpo", "",
              "torch.set_printoptions(precision=4, sci_mode=False)"),

        md(r"""
        ## 1. A real pair, tokenised

        A preference pair is a prompt $x$, a chosen response $y_w$ (the winner) and a rejected response $y_l$
        (the loser). The built-in task of `rddpo.py` is short movie reviews; `rddpo.build_tokenizer()` builds a
        word-level tokenizer for its closed vocabulary in code (one token per word, nothing downloaded).

        `rddpo.tokenize_pairs` turns $N$ pairs into tensors of shape $(2N, T)$: the $N$ chosen rows first,
        then the $N$ rejected rows, right-padded to a common length $T$. Each row has three tensors:

        - `input_ids`: the prompt's tokens, the response's tokens, the end-of-sequence token
          `<|endoftext|>`, then padding (GPT-2 pads with its end-of-sequence token too);
        - `attention_mask`: 1 on real tokens, 0 on padding;
        - `response_mask`: 1 only on the response's tokens and its own end-of-sequence token. These are the
          tokens whose log-probabilities add up to $\log \pi(y \mid x)$: the prompt is given, not generated,
          and padding is not part of the text.
        """),
        code("""
        tok = rddpo.build_tokenizer()
        prompt = "my review of blue harbor :"
        chosen = " the plot was great ."
        rejected = " the plot was very dull . the music was loud ."
        data = rddpo.tokenize_pairs(tok, [prompt], [chosen], [rejected], max_length=64)
        ids, attention, response = data["input_ids"], data["attention_mask"], data["response_mask"]  # (2, T) each
        V = len(tok)
        print(f"vocabulary V = {V} words; input_ids {tuple(ids.shape)}: row 0 chosen, row 1 rejected\\n")
        print(f"{'':>3} {'chosen row':^30} | {'rejected row':^30}")
        print(f"{'t':>3} {'token':<14}{'id':>4}{'attn':>6}{'resp':>6} | {'token':<14}{'id':>4}{'attn':>6}{'resp':>6}")
        for pos in range(ids.shape[1]):
            cells = [f"{tok.convert_ids_to_tokens(ids[row, pos].item()):<14}{ids[row, pos].item():>4}"
                     f"{attention[row, pos].item():>6}{response[row, pos].item():>6}" for row in (0, 1)]
            print(f"{pos:>3} " + " | ".join(cells))
        """),
        md(r"""
        Read the table: the prompt has 6 tokens (positions 0 to 5, response mask 0). The chosen response is
        5 words plus its end-of-sequence token (6 tokens with response mask 1); the rejected one is 11 words
        plus its end-of-sequence token (12). The chosen row is padded to the rejected row's length with the same
        `<|endoftext|>` id, but with attention and response mask 0: the masks, not the token id, say which
        is which. (This is why `rddpo` never finds the end of a sequence by searching for the pad id.)

        ## 2. The sequence log-probability

        A causal language model's logits at position $t-1$ are its prediction of the token at position $t$. The
        log-probability of the response is the sum over the response's tokens:

        $$\log \pi(y \mid x) = \sum_{t=1}^{T-1} m_t \, \log \operatorname{softmax}(\ell_{t-1})[s_t]$$

        where $s_t$ is the token at position $t$ (`input_ids[:, t]`), $\ell_{t-1}$ the logits at position $t-1$,
        and $m_t$ the response mask (`response_mask[:, t]`).

        We use a small GPT-2 with random weights (2 layers, width 32, seed 0). Its predictions are close to
        uniform over the $V$ words, so each token costs about $\ln V$ nats and a response of $n$ tokens about
        $n \ln V$: a calculator check. `.eval()` switches dropout off, so every number is repeatable. The loop
        below takes one token at a time; `rddpo.sequence_logps` does the same for the whole batch with a
        shift, a gather and a masked sum.
        """),
        code("""
        torch.manual_seed(0)
        reference = rddpo.build_tiny_gpt2(rddpo.Config(n_layer=2, n_embd=32, n_head=2), tok).eval()  # dropout off
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
            print(f"   sum over its {n} tokens = {total:.4f}   (uniform guess: {n} x -ln {V} = {-n * ln_V:.4f})\\n")
            by_hand.append(total)

        seq_logps = rddpo.sequence_logps(logits, ids, response)  # (2,)
        print("rddpo.sequence_logps:", [round(v, 4) for v in seq_logps.tolist()], "  the loop:", [round(v, 4) for v in by_hand])
        """),

        md(r"""
        ## 3. The implicit reward

        DPO never trains a reward model; the policy defines one, relative to the reference:

        $$r_\theta(x, y) = \beta\,\big(\log \pi_\theta(y \mid x) - \log \pi_{\text{ref}}(y \mid x)\big)$$

        Training starts from a copy of the reference, so at step 0 every implicit reward is exactly 0 (the
        same weights do the same arithmetic), and so is the margin between chosen and rejected. We write the
        margin as $\beta h$, with

        $$h = \big(\log \pi_\theta(y_w) - \log \pi_{\text{ref}}(y_w)\big) - \big(\log \pi_\theta(y_l) - \log \pi_{\text{ref}}(y_l)\big).$$

        The reference's log-probabilities are computed once, without gradients (`rddpo.all_logps`); only the
        policy's carry gradients. Below: the implicit rewards at step 0, then one plain gradient step
        (SGD, learning rate 0.01) on the DPO loss of this one pair, with $\beta = 0.1$ as in `rddpo.Config`.
        """),
        code("""
        beta = 0.1
        policy = copy.deepcopy(reference)  # step 0: the policy is the reference
        ref_logps = rddpo.all_logps(reference, data, torch.arange(2), "cpu")  # (2,): chosen, rejected; no gradient

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
        """),
        md(r"""
        At step 0 the rewards are exactly 0 and the DPO loss is $-\log \sigma(0) = \ln 2 \approx 0.6931$. One
        step later the margin is positive: DPO raised the chosen response relative to the rejected one. Here
        both moved the way one would hope, but DPO only controls their *difference* $h$: with shared weights
        the chosen response's own log-probability can fall too (notebook 1 shows this on a bandit).

        ## 4. The five losses on two pairs, by hand

        From here on, hand-picked log-probabilities for a batch of $B = 2$ pairs, with $\beta = 0.5$ and
        $\gamma = 0.1$ (a rounder $\beta$ than the code's default 0.1, so the arithmetic stays short):

        | | pair 1 | pair 2 |
        |---|---|---|
        | $\log \pi_{\text{ref}}(y_w)$ | $-11$ | $-12$ |
        | $\log \pi_\theta(y_w)$ | $-11$ | $-13$ |
        | $\log \pi_{\text{ref}}(y_l)$ | $-13$ | $-12$ |
        | $\log \pi_\theta(y_l)$ | $-15$ | $-12$ |
        | log-ratio of $y_w$ | $0$ | $-1$ |
        | log-ratio of $y_l$ | $-2$ | $0$ |
        | $h$ | $0 - (-2) = 2$ | $-1 - 0 = -1$ |
        | $\beta h$ (implicit margin) | $1$ | $-0.5$ |
        | implicit rewards $r(y_w)$, $r(y_l)$ | $0$, $-1$ | $-0.5$, $0$ |

        The policy already prefers the chosen response of pair 1 (more than the reference does) and gets pair 2
        wrong. The names of the arguments are those of the reference DPO code.
        """),
        code("""
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
        """),

        md(r"""
        ### DPO

        $$L_{\text{DPO}} = \frac{1}{B}\sum_b -\log \sigma(\beta h_b), \qquad -\log\sigma(z) = \log(1 + e^{-z})$$

        - pair 1: $\log(1 + e^{-1}) = \log 1.36788 = 0.31326$
        - pair 2: $\log(1 + e^{0.5}) = \log 2.64872 = 0.97408$
        - mean: $(0.31326 + 0.97408) / 2 = 0.64367$

        The pair the policy gets wrong costs three times as much. The loss approaches 0 only as every
        $h_b \to +\infty$: DPO has no finite target.
        """),
        code("""
        dpo = rddpo.dpo_loss(*logps4, beta).item()
        dpo_hand = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(0.5))) / 2
        print(f"rddpo.dpo_loss = {dpo:.5f}   by hand = {dpo_hand:.5f}")
        """),
        md(r"""
        ### IPO

        $$L_{\text{IPO}} = \frac{1}{B}\sum_b \Big(h_b - \frac{1}{2\beta}\Big)^2, \qquad \frac{1}{2\beta} = \frac{1}{2 \cdot 0.5} = 1$$

        - pair 1: $(2 - 1)^2 = 1$; pair 2: $(-1 - 1)^2 = 4$; mean: $(1 + 4)/2 = 2.5$

        IPO has a finite target margin, $h = 1/(2\beta)$: pair 1 overshoots it and is penalised for that.
        (In `rddpo`, $h$ sums over tokens; TRL's IPO averages per token.)
        """),
        code("""
        ipo = rddpo.ipo_loss(*logps4, beta).item()
        ipo_hand = ((2 - 1) ** 2 + (-1 - 1) ** 2) / 2
        print(f"rddpo.ipo_loss = {ipo:.5f}   by hand = {ipo_hand:.5f}")
        """),
        md(r"""
        ### d-DPO: distil one reward model

        A reward model trained on the preference data scores the four responses: $r(x, y_w) = (1.0, 0.5)$ and
        $r(x, y_l) = (0.0, 0.0)$, so the reward differences are $\Delta r = (1, 0.5)$. d-DPO asks the implicit
        margin to equal the reward model's:

        $$L_{\text{d-DPO}} = \frac{1}{B}\sum_b \big(\Delta r_b - \beta h_b\big)^2$$

        - pair 1: $(1 - 1)^2 = 0$; pair 2: $(0.5 - (-0.5))^2 = 1$; mean: $(0 + 1)/2 = 0.5$

        Pair 1 already matches the reward model: zero loss there, and (section 5) zero gradient. The target
        $\beta h = \Delta r$ is finite, where DPO's is $+\infty$.
        """),
        code("""
        rm_chosen_rewards, rm_rejected_rewards = t(1.0, 0.5), t(0.0, 0.0)
        ddpo = rddpo.distill_loss(*logps4, rm_chosen_rewards, rm_rejected_rewards, beta).item()
        ddpo_hand = ((1 - 1) ** 2 + (0.5 - (-0.5)) ** 2) / 2
        print(f"rddpo.distill_loss = {ddpo:.5f}   by hand = {ddpo_hand:.5f}")
        """),
        md(r"""
        ### The forward-KL estimate

        e-DPO and p-DPO add $\gamma\,\mathrm{KL}(\pi_{\text{ref}} \,\|\, \pi_\theta)
        = \gamma\, \mathbb{E}_{y \sim \pi_{\text{ref}}}[\log \pi_{\text{ref}}(y) - \log \pi_\theta(y)]$. On the built-in
        task both responses of every pair were sampled from $\pi_{\text{ref}}$, so the mean over the batch's
        $2B$ responses is an estimate of it at no extra cost:

        $$\widehat{\mathrm{KL}} = \frac{1}{2B}\sum_b \Big[\big(\log\pi_{\text{ref}}(y_{w,b}) - \log\pi_\theta(y_{w,b})\big)
          + \big(\log\pi_{\text{ref}}(y_{l,b}) - \log\pi_\theta(y_{l,b})\big)\Big]$$

        - chosen: $(-11 + 11) + (-12 + 13) = 0 + 1$; rejected: $(-13 + 15) + (-12 + 12) = 2 + 0$
        - $\widehat{\mathrm{KL}} = (0 + 1 + 2 + 0)/4 = 0.75$

        Positive: the policy has lost probability on these responses. The true KL is never negative, but an
        estimate from one batch can be.
        """),
        code("""
        fkl = rddpo.forward_kl_estimate(*logps4).item()
        print(f"rddpo.forward_kl_estimate = {fkl:.5f}   by hand = {3 / 4:.5f}")
        """),
        md(r"""
        ### e-DPO: distil a family of reward models, pessimistically

        Now a family of $K = 2$ reward models. Member 0 is the one above, $\Delta r_0 = (1, 0.5)$. Member 1 scores
        $r(x, y_w) = (0.5, 0.0)$ and $r(x, y_l) = (0.0, 0.5)$, so $\Delta r_1 = (0.5, -0.5)$: it is less sure of
        pair 1 and thinks pair 2 is mislabelled.

        $$L_{\text{e-DPO}} = \min_k \frac{1}{B}\sum_b \big(\Delta r_{k,b} - \beta h_b\big)^2 \;+\; \gamma\,\widehat{\mathrm{KL}}$$

        - member 0: $0.5$ (as d-DPO above)
        - member 1: $\big((0.5 - 1)^2 + (-0.5 + 0.5)^2\big)/2 = (0.25 + 0)/2 = 0.125$
        - $\min = 0.125$ (member 1), plus $\gamma\,\widehat{\mathrm{KL}} = 0.1 \times 0.75 = 0.075$: $L = 0.2$

        Why a min: its first term measures how far the policy is from distilling *some* member of the
        family; any member's optimal policy would do. The KL term then pulls the policy toward the member
        whose optimal policy stays closest to the reference: the most conservative reward that still fits
        the data. The min is over each member's batch-level loss, not per pair (a choice of `rddpo`: a
        per-pair min would let every pair pick its easiest member). The family's rewards are a $(K, B)$ tensor.
        """),
        code("""
        family_chosen_rewards = torch.stack([t(1.0, 0.5), t(0.5, 0.0)])  # (K, B)
        family_rejected_rewards = torch.stack([t(0.0, 0.0), t(0.0, 0.5)])  # (K, B)
        per_member = [rddpo.distill_loss(*logps4, family_chosen_rewards[k], family_rejected_rewards[k], beta).item()
                      for k in range(2)]
        edpo = rddpo.pessimistic_distill_loss(*logps4, family_chosen_rewards, family_rejected_rewards, beta, gamma).item()
        edpo_hand = min(0.5, 0.125) + 0.1 * 0.75
        print("distillation loss of each member:", per_member, "-> member", per_member.index(min(per_member)), "is the min")
        print(f"rddpo.pessimistic_distill_loss = {edpo:.5f}   by hand = {edpo_hand:.5f}")
        """),
        md(r"""
        ### p-DPO: DPO plus the KL term

        $$L_{\text{p-DPO}} = \frac{1}{B}\sum_b -\log\sigma(\beta h_b) \;+\; \gamma\,\widehat{\mathrm{KL}}
          = 0.64367 + 0.1 \times 0.75 = 0.71867$$
        """),
        code("""
        pdpo = rddpo.pessimistic_dpo_loss(*logps4, beta, gamma).item()
        pdpo_hand = dpo_hand + 0.1 * 0.75
        print(f"rddpo.pessimistic_dpo_loss = {pdpo:.5f}   by hand = {pdpo_hand:.5f}")
        """),

        md(r"""
        ## 5. Which way each loss pushes

        Training changes the weights, but every loss reaches them through the four log-probabilities, so their
        gradients say everything about the direction. Gradient descent moves each log-probability *against*
        its gradient: a negative entry means "raise this response's probability".

        For DPO, with $\sigma(-z) = 1 - \sigma(z)$:

        $$\frac{\partial L_{\text{DPO}}}{\partial \log\pi_\theta(y_{w,b})} = -\frac{\beta}{B}\,\sigma(-\beta h_b),
          \qquad \frac{\partial L_{\text{DPO}}}{\partial \log\pi_\theta(y_{l,b})} = +\frac{\beta}{B}\,\sigma(-\beta h_b)$$

        - pair 1: $-\tfrac{0.5}{2}\,\sigma(-1) = -0.25 \times 0.26894 = -0.06724$
        - pair 2: $-\tfrac{0.5}{2}\,\sigma(0.5) = -0.25 \times 0.62246 = -0.15561$

        DPO always pushes the chosen response up and the rejected one down, hardest on the pairs it gets wrong,
        and never stops: $\sigma(-\beta h) > 0$ for every finite $h$.

        The KL term adds the same amount to every response of the batch, chosen and rejected alike:

        $$\frac{\partial\, \gamma\widehat{\mathrm{KL}}}{\partial \log\pi_\theta(y)} = -\frac{\gamma}{2B} = -\frac{0.1}{4} = -0.025$$

        It raises every response that was sampled from the reference: it holds probability mass on the data,
        which DPO alone is free to drain (its loss only sees differences). Autograd computes the table:
        """),
        code("""
        def gradients(loss_fn):
            leaves = [x.clone().requires_grad_() for x in logps4]
            loss_fn(*leaves).backward()
            return leaves[0].grad, leaves[1].grad  # d loss / d policy chosen, d loss / d policy rejected; (B,) each

        losses = {
            "DPO": lambda *l: rddpo.dpo_loss(*l, beta),
            "IPO": lambda *l: rddpo.ipo_loss(*l, beta),
            "d-DPO": lambda *l: rddpo.distill_loss(*l, rm_chosen_rewards, rm_rejected_rewards, beta),
            "e-DPO": lambda *l: rddpo.pessimistic_distill_loss(*l, family_chosen_rewards, family_rejected_rewards, beta, gamma),
            "p-DPO": lambda *l: rddpo.pessimistic_dpo_loss(*l, beta, gamma),
            "KL term": lambda *l: gamma * rddpo.forward_kl_estimate(*l),
        }
        grads = {name: gradients(fn) for name, fn in losses.items()}
        print(f"{'':<8} {'d L / d log pi(y_w)':^22} {'d L / d log pi(y_l)':^22}")
        print(f"{'':<8} {'pair 1':>10} {'pair 2':>10}  {'pair 1':>10} {'pair 2':>10}")
        for name, (g_chosen, g_rejected) in grads.items():
            row = [f"{v + 0.0:>10.5f}" for v in g_chosen.tolist() + g_rejected.tolist()]  # + 0.0 turns -0.0 into 0.0
            print(f"{name:<8} " + " ".join(row[:2]) + "  " + " ".join(row[2:]))
        """),
        md(r"""
        Reading the table, row by row:

        - **DPO**: chosen up (negative), rejected down (positive) on both pairs, more on pair 2.
        - **IPO**: $\partial L/\partial \log\pi(y_w) = \tfrac{2}{B}(h_b - \tfrac{1}{2\beta}) = (2 - 1,\ -1 - 1) = (1, -2)$:
          on pair 1 IPO pushes the chosen response *down*, because the margin overshoots its target.
        - **d-DPO**: $\tfrac{2}{B}(\Delta r_b - \beta h_b)(-\beta) = (0,\ 1 \times -0.5) = (0, -0.5)$: nothing on pair 1,
          whose margin already equals the reward model's.
        - **e-DPO**: only the selected member 1 counts, $(\Delta r_1 - \beta h) = (-0.5, 0)$, giving
          $(0.25, 0)$ for the chosen responses, plus the KL term's $-0.025$: on pair 1 it *lowers* the chosen
          response, shrinking a margin that the conservative member does not support.
        - **p-DPO** is the DPO row plus the KL row.
        """),

        md(r"""
        ## 6. Exercises

        Use the numbers of section 4 ($\beta = 0.5$, $\gamma = 0.1$, $B = 2$). Work each one by hand first, then
        check it with `rddpo` in a new cell. The last cell of the notebook checks the solutions.

        **Exercise 1.** At step 0 every $h = 0$. What is the DPO loss? Does it depend on $\beta$?

        <details><summary>Solution</summary>

        $-\log\sigma(0) = -\log\tfrac12 = \ln 2 \approx 0.6931$ for every pair, so the mean is $\ln 2$, whatever
        $\beta$ is. Check: `rddpo.dpo_loss(x, x, x, x, beta)` for any tensor `x` and any `beta`.
        This is the number to expect from the first steps of any DPO run.

        </details>

        **Exercise 2.** Add a third member to the e-DPO family with $r(x, y_w) = (1.0, 0.0)$ and
        $r(x, y_l) = (0.0, 0.5)$. Which member does the min select now, and what is the e-DPO loss?

        <details><summary>Solution</summary>

        Its differences are $\Delta r_2 = (1, -0.5)$, exactly the current implicit margins $\beta h = (1, -0.5)$, so
        its distillation loss is $\big((1-1)^2 + (-0.5+0.5)^2\big)/2 = 0$: member 2 is selected, and the e-DPO
        loss is $0 + 0.075 = 0.075$, the KL term alone. Check: stack `t(1.0, 0.0)` onto `family_chosen_rewards`
        and `t(0.0, 0.5)` onto `family_rejected_rewards` and call `rddpo.pessimistic_distill_loss`.

        </details>

        **Exercise 3.** Add a constant $c = 3.7$ to the policy's log-probabilities of *both* responses of pair 1.
        Show that DPO, IPO and d-DPO do not change. What happens to p-DPO, and why does that matter?

        <details><summary>Solution</summary>

        $h_1 = (\log\pi_\theta(y_w) + c - \log\pi_{\text{ref}}(y_w)) - (\log\pi_\theta(y_l) + c - \log\pi_{\text{ref}}(y_l))$:
        the $c$ cancels, and DPO, IPO and d-DPO see the policy only through $h$. The KL estimate is not a
        difference: it falls by $2c/(2B) = c/2 = 1.85$, so p-DPO falls by $\gamma \times 1.85 = 0.185$, to
        $0.71867 - 0.185 = 0.53367$. The margin losses cannot tell whether the probability of the data went up
        or down; only the KL term can, which is why it is the piece that stops the mass from draining away.

        </details>

        **Exercise 4.** With $\beta = 0.5$, for which $h$ is the IPO loss of a pair smallest? And the DPO loss?
        Evaluate the DPO loss at $h = 10$ and $h = 100$.

        <details><summary>Solution</summary>

        IPO: at $h = 1/(2\beta) = 1$, where it is 0. DPO has no minimiser: $\log(1 + e^{-\beta h})$ keeps falling
        as $h$ grows ($0.00672$ at $h = 10$, about $2 \times 10^{-22}$ at $h = 100$) and reaches 0 only in the limit.
        So on a finite data set, gradient descent on DPO keeps growing the implicit rewards without bound;
        notebook 1 follows where that leads. Check: `rddpo.dpo_loss(t(10.), t(0.), t(0.), t(0.), 0.5)`.

        </details>
        """),

        md(r"""
        ## What this notebook showed, asserted

        Running the cell below is the test: it fails if any claim above stops being true of `rddpo.py`.
        """),
        code("""
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
        assert torch.allclose(grads["KL term"][0], t(-0.025, -0.025)) and torch.allclose(grads["KL term"][1], t(-0.025, -0.025))
        assert torch.allclose(grads["p-DPO"][0], grads["DPO"][0] + grads["KL term"][0])
        assert grads["IPO"][0].tolist() == [1.0, -2.0] and grads["d-DPO"][0].tolist() == [0.0, -0.5]
        assert torch.allclose(grads["e-DPO"][0], t(0.25 - 0.025, -0.025))

        # 6. the exercises' solutions
        x = t(-7.0, -3.0)
        for b in (0.1, 0.5, 2.0):
            assert abs(rddpo.dpo_loss(x, x, x, x, b).item() - math.log(2)) < 1e-12  # exercise 1
        three_chosen = torch.cat([family_chosen_rewards, t(1.0, 0.0)[None]])  # (3, B)
        three_rejected = torch.cat([family_rejected_rewards, t(0.0, 0.5)[None]])  # (3, B)
        assert abs(rddpo.pessimistic_distill_loss(*logps4, three_chosen, three_rejected, beta, gamma).item() - 0.075) < 1e-12  # exercise 2
        shifted = (policy_chosen_logps + t(3.7, 0), policy_rejected_logps + t(3.7, 0), reference_chosen_logps, reference_rejected_logps)
        assert abs(rddpo.dpo_loss(*shifted, beta).item() - dpo) < 1e-12  # exercise 3
        assert abs(rddpo.ipo_loss(*shifted, beta).item() - ipo) < 1e-12
        assert abs(rddpo.distill_loss(*shifted, rm_chosen_rewards, rm_rejected_rewards, beta).item() - ddpo) < 1e-12
        assert abs(rddpo.pessimistic_dpo_loss(*shifted, beta, gamma).item() - (pdpo - 0.185)) < 1e-12
        dpo_at = [rddpo.dpo_loss(t(v), t(0.0), t(0.0), t(0.0), 0.5).item() for v in (1.0, 10.0, 100.0)]  # exercise 4
        assert dpo_at[0] > dpo_at[1] > dpo_at[2] > 0 and abs(dpo_at[1] - 0.00672) < 1e-5
        assert rddpo.ipo_loss(t(1.0), t(0.0), t(0.0), t(0.0), 0.5).item() == 0
        print("all claims hold")
        """),
    ]


# -----------------------------------------------------------------------------
# 3. the length-bias experiment


def length_bias_experiment():
    return [
        md(r"""
        # 3. The length-bias experiment

        The paper's claim: DPO overfits its preference data, so when the annotations carry a spurious bias it
        learns the bias; distilling a reward model (d-DPO), pessimism over a family of reward models (e-DPO),
        or a forward-KL penalty (p-DPO) make it more robust. The paper simulates a *length bias* in
        summarisation preferences. `rddpo.py` runs the same kind of experiment, small enough for a laptop:

        1. a gold reward anyone can read (the sentiment of a movie review), and length as the spurious feature;
        2. a reference policy $\pi_{\text{ref}}$: a small GPT-2, pretrained in code on generated reviews;
        3. pairs of responses sampled from $\pi_{\text{ref}}$, labelled by a *biased annotator*;
        4. a plain reward model and a family of reward models;
        5. DPO, IPO, d-DPO, e-DPO and p-DPO trained from the same $\pi_{\text{ref}}$ on the same pairs;
        6. evaluation on held-out prompts, with the gold reward.

        This notebook runs the whole pipeline with `rddpo.run` on a **small budget** (one to two minutes on two
        CPU cores), at two settings of the annotator's bias, shows the figures and tables it produces, and
        discusses what they show and what a budget this small cannot show. The last cell asserts only what such
        a run shows reliably.
        """, HOW_TO_OPEN),
        setup("import io", "import math", "", "import numpy as np", "import PIL.Image", "import torch",
              "from IPython.display import Image, Markdown, display", "", "import rddpo", "",
              "# the model is tiny: one cpu thread runs it well, and, unlike several, does not slow to a crawl",
              "# when another program is using the cores too",
              "torch.set_num_threads(1)"),

        md(r"""
        ## 1. The gold reward, and length

        The gold reward of a response is its sentiment, read off two fixed word lists (`rddpo.POSITIVE`,
        `rddpo.NEGATIVE`; the `rddpo.NEUTRAL` adjectives count in the denominator only):

        $$r^\star(y) = \frac{\#\text{positive} - \#\text{negative}}{\#\text{positive} + \#\text{negative} + \#\text{neutral}}
          \in [-1, 1] \qquad (0 \text{ without adjectives})$$

        It is a *share*, so a longer review is neither better nor worse by itself, and the generated reviews
        that the reference learns from draw their sentiment and their length independently.
        """),
        code("""
        for text in [" the plot was great .", " the plot was great . the music was dull .",
                     " the plot was great . the cast was superb . the ending was quiet .", " the acting was very tedious ."]:
            print(f"{rddpo.gold_reward(text):+.3f}  {len(text.split()):>2} words  {text}")

        rng = np.random.default_rng(0)
        reviews = [rddpo.make_review(rng) for _ in range(2000)]
        lengths, golds = np.array([len(r.split()) for r in reviews]), np.array([rddpo.gold_reward(r) for r in reviews])
        corr_generated = np.corrcoef(lengths, golds)[0, 1]
        print(f"\\n2000 generated reviews: {lengths.min()} to {lengths.max()} words; "
              f"correlation of length and gold reward = {corr_generated:+.3f}")
        """),

        md(r"""
        ## 2. The configuration and the reference policy

        Every setting lives in one dataclass, `rddpo.Config`; `python rddpo.py --help` lists the same fields as
        flags. We start from `rddpo.QUICK` (the smoke-test budget of `--quick`) and enlarge it a little. With
        `sweep=True` the run repeats everything for each bias in `sweep_biases`: here the biased annotator
        (0.5) and an unbiased one (0), which is the control that tells a learnt bias from a side effect of
        training. `out="runs"` writes into `notebooks/runs/`, which git ignores; each run gets a new `run-NNN`
        folder.

        `rddpo.load_reference` builds the word-level tokenizer and a 2-layer, 64-wide GPT-2, pretrains it on
        generated reviews and caches it in `runs/reference-*`; `rddpo.run` finds it there, so it is pretrained
        only once. We load it here to look at the data before training on it.
        """),
        code("""
        # the budget: --quick, enlarged so that this notebook still runs in one to two minutes on 2 cpu cores
        budget = dict(rddpo.QUICK, pretrain_steps=300, n_pairs=128, n_eval=64, rm_steps=30, steps=30, log_every=5)
        cfg = rddpo.Config(**budget, sweep=True, sweep_biases="0.5,0", seeds=[0], out="runs")
        device = rddpo.pick_device(cfg.device)
        print({k: getattr(cfg, k) for k in ["sweep_biases", "seeds", "beta", "gamma", "ensemble", "n_pairs", "n_eval",
                                           "steps", "batch_size", "rm_steps", "pretrain_steps"]}, "device:", device)
        reference, tok = rddpo.load_reference(cfg, device)
        print(f"reference: {sum(p.numel() for p in reference.parameters()):,} parameters, vocabulary {len(tok)}")
        """),

        md(r"""
        ## 3. The biased annotator

        For each training prompt, two responses $y_1, y_2$ are sampled from $\pi_{\text{ref}}$. The annotator
        then decides:

        - with probability `bias`: the **longer** response wins (ties at random);
        - otherwise: the response with the higher **gold** reward wins (ties at random; `rddpo` takes the
          argmax, so the length bias is the only label noise).

        With `bias = 0.5`, half the labels ignore quality. The gold-decided half still prefers the longer
        response about half the time (length and sentiment are independent), so the longer response wins
        about $0.5 + 0.5 \times 0.5 = 75\%$ of the pairs: a spurious feature that a method can learn in place of
        sentiment. `rddpo.builtin_task` makes the pairs; it is what `rddpo.run` calls, with the same seed, so
        these are exactly the pairs trained on below.
        """),
        code("""
        bias, seed = 0.5, cfg.seeds[0]
        prompts, chosen, rejected, eval_prompts = rddpo.builtin_task(reference, tok, cfg, bias, seed, device)
        len_w, len_l = np.array([len(y.split()) for y in chosen]), np.array([len(y.split()) for y in rejected])
        gold_w, gold_l = np.array([rddpo.gold_reward(y) for y in chosen]), np.array([rddpo.gold_reward(y) for y in rejected])
        for i in range(3):
            print(f"prompt: {prompts[i]!r}\\n  chosen   ({len_w[i]:>2} words, gold {gold_w[i]:+.2f}):{chosen[i]}"
                  f"\\n  rejected ({len_l[i]:>2} words, gold {gold_l[i]:+.2f}):{rejected[i]}")
        differ, better = len_w != len_l, gold_w != gold_l
        longer_won = np.mean(len_w[differ] > len_l[differ])
        better_won = np.mean(gold_w[better] > gold_l[better])
        print(f"\\nbias {bias}, {len(prompts)} pairs: the longer response won {longer_won:.0%} of the pairs whose lengths "
              f"differ; the gold-better response won {better_won:.0%} of the pairs whose gold rewards differ")
        """),

        md(r"""
        ## 4. The reward models, and the family

        d-DPO distils one Bradley-Terry reward model trained on all the pairs as they are:

        $$L_{\text{RM}} = -\log\sigma\big(r(x, y_w) - r(x, y_l)\big) + 0.01\,\big(r(x, y_w) + r(x, y_l)\big)^2$$

        (the second term pins the free offset of Bradley-Terry rewards, a choice of `rddpo`). A reward model
        is the reference's transformer plus a scalar head, started at zero and read at the last real token.

        e-DPO distils a *family* of $K$ reward models that, as a whole, likely contains a good proxy. The bias
        planted here is length, so the members differ along that axis: member $k$ is trained on a resample
        of the pairs in which a share $k/(K-1)$ of the pairs are ones the longer response won
        (`rddpo.family_shares`, `rddpo.resample_by_length_share`), with its own seed. Member 0 sees no pair
        that the longer response won; member $K-1$ sees only such pairs.
        """),
        code("""
        shares = rddpo.family_shares(cfg.ensemble)
        longer_won_pairs = len_w > len_l  # (N,), the flag rddpo.run resamples by
        print("family shares:", [round(s, 3) for s in shares])
        for k, share in enumerate(shares):
            idx = rddpo.resample_by_length_share(longer_won_pairs, share, np.random.default_rng([seed, k]))
            print(f"member {k}: {len(idx)} pairs drawn, {longer_won_pairs[idx].mean():.0%} of them won by the longer response "
                  f"(asked {share:.0%}); {len(set(idx.tolist()))} distinct pairs")
        """),

        md(r"""
        ## 5. The run

        `rddpo.run(cfg)` does, for each bias and seed:

        1. sample and label the pairs (section 3), and sample $\pi_{\text{ref}}$ once on the held-out prompts;
        2. tokenise the pairs and compute the reference's log-probabilities **once**;
        3. train the plain reward model and the family, score every response **once**, and free them;
        4. train each method from a copy of $\pi_{\text{ref}}$ with the same number of steps, batch size and
           learning rate. Because the reference log-probs and reward scores were computed beforehand, a step of
           any method costs the same as a DPO step: one forward and one backward pass of the policy;
        5. evaluate each policy.

        | method | loss (batch mean), $h$ the log-ratio margin |
        |---|---|
        | DPO | $-\log\sigma(\beta h)$ |
        | IPO | $(h - 1/(2\beta))^2$ |
        | d-DPO | $(\Delta r - \beta h)^2$, the plain reward model |
        | e-DPO | $\min_k \text{mean}(\Delta r_k - \beta h)^2 + \gamma\,\widehat{\mathrm{KL}}$ |
        | p-DPO | $-\log\sigma(\beta h) + \gamma\,\widehat{\mathrm{KL}}$ |

        (Notebook 2 works each of them out by hand.) The evaluation samples one response per held-out prompt
        from each policy and reports: the mean gold reward; the **win rate** against $\pi_{\text{ref}}$'s sample
        for the same prompt (by gold reward, ties count half); the mean length in words; a
        $\mathrm{KL}(\pi \,\|\, \pi_{\text{ref}})$ estimate from those samples; and, on the training pairs, the
        change of $\log\pi(y_w)$ and $\log\pi(y_l)$ from the reference and the implicit margins $\beta h$.
        Training prints one line every `log_every` steps.
        """),
        code("""
        results, run_dir = rddpo.run(cfg)
        runs = {(r["bias"], r["method"]): r for r in results["runs"]}  # one seed: one record per bias and method
        """),

        md(r"""
        ## 6. The figures

        `rddpo.run` wrote its figures into the run folder. The training curves and the bar chart are drawn for
        the first bias of `sweep_biases` (this is why 0.5 comes first).

        `curves.png`, the training curves of the logged batches. Left and middle: how far each method has moved
        $\log\pi(y_w)$ and $\log\pi(y_l)$ of the batch from the reference; right: the implicit margin $\beta h$.
        """),
        code("""
        def show(name):  # a figure of the run, kept in the notebook with 256 colours: the same picture, a third of the bytes
            png = io.BytesIO()
            PIL.Image.open(os.path.join(run_dir, name)).convert("RGB").quantize(256).save(png, "png")
            display(Image(png.getvalue(), width=900))

        show("curves.png")
        """),
        md(r"""
        `comparison.png`, the evaluation on held-out prompts at bias 0.5, one bar per method (with several seeds
        the error bars would show the standard deviation over seeds; with one seed there are none).
        """),
        code("""show("comparison.png")"""),
        md(r"""
        `sweep.png`, the paper's kind of headline figure: gold win rate and length against the annotator's bias,
        one line per method. With two biases and one seed it has two points per line and no error bars.
        """),
        code("""show("sweep.png")"""),
        md(r"""
        The numbers, with the reference's own samples as the first row (its win rate against itself is 0.5 by
        definition). `dlogp_w` and `dlogp_l` are the mean changes of the training pairs' log-probabilities from
        the reference; `margin` is the mean implicit margin $\beta h$ on the training pairs.
        """),
        code("""
        def table(results):
            cols = [("gold_reward", "gold"), ("win_rate", "win rate"), ("length", "length"), ("kl", "KL"),
                    ("logps_chosen_change", "dlogp_w"), ("logps_rejected_change", "dlogp_l"), ("margin_mean", "margin")]
            s0 = results["summary"][0]
            lines = ["| bias | method | " + " | ".join(name for _, name in cols) + " |", "|---" * (len(cols) + 2) + "|",
                     f"| | pi_ref | {s0['gold_ref_mean']:.3f} | 0.500 | {s0['length_ref_mean']:.1f} | 0 | 0 | 0 | 0 |"]
            for s in results["summary"]:
                lines.append(f"| {s['bias']} | {s['method']} | " + " | ".join(
                    f"{s[k + '_mean']:.1f}" if k == "length" else f"{s[k + '_mean']:.3f}" for k, _ in cols) + " |")
            return "\\n".join(lines)

        display(Markdown(f"seed {seed}; {cfg.steps} steps of {cfg.batch_size} pairs out of {len(prompts)}; "
                         f"{cfg.n_eval} held-out prompts\\n\\n" + table(results)))
        """),

        md(r"""
        ## 7. What this run shows

        The next cell reads the observations off the numbers above, so they stay true of the run saved in this
        notebook.
        """),
        code("""
        ref_len = results["summary"][0]["length_ref_mean"]
        dpo, pdpo = runs[0.5, "dpo"], runs[0.5, "p-dpo"]
        print(f"bias 0.5: DPO changed the training pairs' log-probs by {dpo['logps_chosen_change']:+.2f} (chosen) and "
              f"{dpo['logps_rejected_change']:+.2f} (rejected).")
        print(f"pi_ref's samples are {ref_len:.1f} words long; each policy's, and how far it moved from pi_ref:")
        for b in (0.5, 0.0):
            for m in rddpo.METHODS:
                r = runs[b, m]
                print(f"  bias {b:<3} {m:<6} length {r['length']:5.1f} ({r['length'] - ref_len:+5.1f} words)   "
                      f"KL {r['kl']:+.3f}   gold {r['gold_reward']:+.3f}   win rate {r['win_rate']:.2f}")
        print(f"DPO's responses: {runs[0.0, 'dpo']['length']:.1f} words with the unbiased annotator, "
              f"{dpo['length']:.1f} with the biased one; p-DPO's: {runs[0.0, 'p-dpo']['length']:.1f} and {pdpo['length']:.1f}.")
        """),
        md(r"""
        **Reading the figures.**

        - *DPO lowers the chosen responses too.* DPO and IPO open the margin between chosen and rejected mostly
          by pushing the **rejected** responses down, and on average the **chosen** ones end lower than they
          started as well: the loss sees only the difference $h$, and lowering everything the data contains is an
          easy way to change it. This is the small-scale version of the paper's warning that DPO can drive even
          the preferred responses' probability down.
        - *The KL term holds the policy near the reference.* p-DPO is DPO plus $\gamma\,\widehat{\mathrm{KL}}$: it
          lowers the rejected responses too, but the KL term lifts every training response (they were sampled
          from $\pi_{\text{ref}}$), so its chosen responses end *higher* than they started, and its KL estimate on
          held-out prompts is far smaller than DPO's. e-DPO's KL estimate is small too.
        - *The length bias is learnt.* With the biased annotator, DPO's, IPO's and d-DPO's responses become much
          longer than $\pi_{\text{ref}}$'s, while e-DPO's and p-DPO's stay much closer to the reference length.
          The bias-0 run is the control: it shows how much of the lengthening comes from the annotator and how
          much from moving far from $\pi_{\text{ref}}$ at all.
        **What a budget this small cannot show.** One seed, two biases, 128 pairs, 30 steps and 64 held-out
        prompts: a difference of gold reward or win rate of a few hundredths is within the noise (a win rate over
        64 prompts has a standard error of about 0.06). The KL estimate from 64 samples is noisy too (it can even
        come out slightly negative). So this run does **not** show the paper's headline result, that the
        distilled and pessimistic methods keep a higher gold win rate than DPO as the bias grows; the gold
        columns above may or may not point that way, and their order should not be read as a result. To look
        for it, sweep more biases with several seeds and the default budget (512 pairs, 150 steps):
        `python rddpo.py --sweep --seeds 0 1 2` draws `sweep.png` with the spread over seeds; on a 2-core CPU it
        took 12 minutes. The README shows its numbers: there e-DPO and p-DPO keep close to the reference's
        length where DPO's responses grow by half, yet e-DPO's gold win rate is not higher than DPO's; the
        paper's headline result does not show at this scale.

        **Things to try** (one field of the config each): `sweep_biases="0.9,0"`; `gamma=0` (p-DPO becomes DPO,
        and e-DPO loses what pulls it toward the reference); `ensemble=1`; more `steps`, to watch DPO's margins
        keep growing where d-DPO's settle at the reward model's.
        """),

        md(r"""
        ## 8. On real GPT-2, on a GPU

        The same experiment on the real 124M-parameter GPT-2 (downloaded from the Hugging Face hub the first time,
        or a local copy given as `--model /path/to/gpt2`), every bias of the default sweep, three seeds:

        ```bash
        python rddpo.py --model gpt2 --device cuda --sweep --seeds 0 1 2
        ```

        The cell below runs exactly that command when `RUN_ON_GPU` is set to `True`. It is off here: it needs a
        GPU and the network, and takes far longer than this notebook's budget.
        """),
        code("""
        RUN_ON_GPU = False  # set to True on a machine with a CUDA GPU (and the hub, or a local copy of gpt2)
        COMMAND = "python rddpo.py --model gpt2 --device cuda --sweep --seeds 0 1 2"
        if RUN_ON_GPU:
            status = rddpo.main(COMMAND.split()[2:])  # the same flags, parsed by rddpo's own argparse
            assert status == 0
        else:
            print("skipped:", COMMAND)
        """),

        md(r"""
        ## What this notebook showed, asserted

        Only claims that held in every seed we tried at this budget: the annotator's labels favour the longer
        response; every method trained and was evaluated with finite numbers; at bias 0.5 DPO lowered the
        log-probabilities of the rejected and of the chosen training responses and opened a positive margin,
        while p-DPO raised the chosen ones; p-DPO and e-DPO ended closer to the reference than DPO; DPO's responses grew longer than the reference's,
        and longer than with the unbiased annotator, while p-DPO's stayed shorter than DPO's.
        """),
        code("""
        assert abs(corr_generated) < 0.1  # length and sentiment are independent in the generated reviews
        assert longer_won > 0.6  # the biased annotator (bias 0.5): about 75% expected
        data_05 = next(d for d in results["data"] if d["bias"] == 0.5)
        assert data_05["pairs"] == len(prompts) and data_05["longer_won"] == np.mean(len_w > len_l)  # the same pairs
        assert sorted(runs) == sorted((b, m) for b in (0.0, 0.5) for m in rddpo.METHODS)  # every method, both biases
        for key, r in runs.items():
            for k in ("gold_reward", "win_rate", "length", "kl", "logps_chosen_change", "logps_rejected_change", "margin_mean"):
                assert math.isfinite(r[k]), (key, k)
            assert 0 <= r["win_rate"] <= 1
        assert dpo["logps_rejected_change"] < 0 and dpo["logps_chosen_change"] < 0  # dpo lowered both ...
        assert dpo["margin_mean"] > 0  # ... and still opened a positive implicit margin on the training pairs
        assert pdpo["logps_chosen_change"] > 0  # the kl term lifts the training responses, sampled from pi_ref
        assert pdpo["kl"] < dpo["kl"] and runs[0.5, "e-dpo"]["kl"] < dpo["kl"]  # the kl term keeps them near pi_ref
        assert dpo["length"] > ref_len + 3 and dpo["length"] > runs[0.0, "dpo"]["length"]  # dpo learnt the length bias
        assert pdpo["length"] < dpo["length"]
        for name in ("curves.png", "comparison.png", "sweep.png", "results.json", "metrics.jsonl"):
            assert os.path.getsize(os.path.join(run_dir, name)) > 0
        print("all claims hold")
        """),
    ]


# -----------------------------------------------------------------------------
# building


NOTEBOOKS = {  # file name (without .ipynb) -> the function that returns its cells
    "1_bandit": bandit,
    "2_losses_by_hand": losses_by_hand,
    "3_length_bias_experiment": length_bias_experiment,
}


def make(name):
    """the notebook's cells, without outputs."""
    nb = nbformat.v4.new_notebook(cells=NOTEBOOKS[name]())
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids (nbformat draws random ones), so a rebuild diffs only what changed
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.language_info = {"name": "python"}
    return nb


def execute(nb, timeout=TIMEOUT):
    """run every cell top to bottom in a fresh python3 kernel, with notebooks/ as the working folder."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": HERE}},
                   coalesce_streams=True).execute()  # consecutive printed lines in one output
    return nb


def main(names):
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        sys.exit(f"error: unknown notebook {', '.join(unknown)}; choose from {', '.join(NOTEBOOKS)}")
    for name in names or NOTEBOOKS:
        t0 = time.time()
        nb = execute(make(name))
        for cell in nb.cells:  # stable files: no per-run execution timestamps
            cell.metadata.pop("execution", None)
        nbformat.write(nb, os.path.join(HERE, name + ".ipynb"))
        print(f"{name}.ipynb: ran in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
