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
# # 4. Exercises: write the formulas yourself
#
# Notebooks 1 and 2 compute every formula of the method with `rddpo.py` and `toy_bandit.py`. Here you write
# them. `notebooks/exercises/exercises.py` holds ten stubs, in the paper's order: each has the function's
# name and arguments as `rddpo.py` or `toy_bandit.py` spell them, a docstring that states the formula and the
# shapes, and a body that raises `NotImplementedError`. One command checks them:
#
# ```bash
# python notebooks/exercises/check.py                        # the stubs themselves
# python notebooks/exercises/check.py ~/my_exercises.py      # or your copy, anywhere
# ```
#
# **How to work through them.**
#
# 1. Copy the stubs somewhere of your own (`cp notebooks/exercises/exercises.py ~/my_exercises.py`), or edit them
#    in place. You never touch the project's own code.
# 2. Take the exercises in order. Read the docstring, work the formula out on paper if it is new to you (the
#    table below says which notebook section teaches it), then replace `raise NotImplementedError` with your code.
# 3. Run the check after each one. It prints one line per exercise: `passed`, `not yet written`, or `wrong:` with
#    the input, the value expected and the value received. When your answer equals what a usual mistake gives (a
#    flipped sign, $\beta$ missing or applied twice, a mean where the formula sums, padding counted, the minimum
#    taken per pair, the reverse KL) a `hint:` line names it; a hint only appears when the checker can tell.
# 4. When an exercise passes, read the function of the same name in `rddpo.py` or `toy_bandit.py`: the same
#    formula, written by someone else.
# 5. Stuck for good? `notebooks/exercises/solutions.py` has every solution written out, line by line.
#
# **What "passed" means.** Each exercise runs on numbers worked out by hand (the pairs of notebook 2, section 4,
# and small bandits), then on three seeded random inputs (float64) against `rddpo.py` or `toy_bandit.py`. Values
# must agree to a relative $10^{-7}$ (absolute $10^{-9}$); `sequence_logps` to $10^{-5}$ (absolute $10^{-4}$),
# because `rddpo.sequence_logps` works in float32. A wrong shape, a nan, or an exception is a `wrong:` line, never
# a traceback. The exit status is 0 only when all ten pass.
#
# | # | exercise | the formula | taught in | compare with |
# |---|---|---|---|---|
# | 1 | `implicit_reward` | $\beta(\log\pi_\theta - \log\pi_\mathrm{ref})$ | [notebooks/2_losses_by_hand §3 The implicit reward](2_losses_by_hand.ipynb) | `rddpo.implicit_reward` |
# | 2 | `dpo_loss` | $\operatorname{mean} -\log\sigma(\beta h)$ | [notebooks/2_losses_by_hand §4 DPO](2_losses_by_hand.ipynb); [notebooks/1_bandit §2](1_bandit.ipynb) | `rddpo.dpo_loss` |
# | 3 | `ipo_loss` | $\operatorname{mean} (h - \frac{1}{2\beta})^2$ | [notebooks/2_losses_by_hand §4 IPO](2_losses_by_hand.ipynb) | `rddpo.ipo_loss` |
# | 4 | `distill_loss` | $\operatorname{mean} (\Delta r - \beta h)^2$ | [notebooks/2_losses_by_hand §4 d-DPO](2_losses_by_hand.ipynb); [notebooks/1_bandit §6](1_bandit.ipynb) | `rddpo.distill_loss` |
# | 5 | `forward_kl_estimate` | $\operatorname{mean}_{y\sim\pi_\mathrm{ref}} (\log\pi_\mathrm{ref} - \log\pi_\theta)$ | [notebooks/2_losses_by_hand §4 The forward-KL estimate](2_losses_by_hand.ipynb); [docs/METHOD.md](../docs/METHOD.md#fkl) | `rddpo.forward_kl_estimate` |
# | 6 | `pessimistic_distill_loss` | $\min_k \operatorname{mean}_b (\Delta r_{k,b} - \beta h_b)^2 + \gamma\,\widehat{\mathrm{FKL}}$ | [notebooks/2_losses_by_hand §4 e-DPO](2_losses_by_hand.ipynb); [notebooks/1_bandit §7](1_bandit.ipynb) | `rddpo.pessimistic_distill_loss` |
# | 7 | `pessimistic_dpo_loss` | $\operatorname{mean} -\log\sigma(\beta h) + \gamma\,\widehat{\mathrm{FKL}}$ | [notebooks/2_losses_by_hand §4 p-DPO](2_losses_by_hand.ipynb); [notebooks/1_bandit §3](1_bandit.ipynb) | `rddpo.pessimistic_dpo_loss` |
# | 8 | `sequence_logps` | $\sum_t m_t \log\operatorname{softmax}(\ell_{t-1})[s_t]$ | [notebooks/2_losses_by_hand §1 A real pair, tokenised, §2 The sequence log-probability](2_losses_by_hand.ipynb) | `rddpo.sequence_logps` |
# | 9 | `optimal_policy` | $\pi_\mathrm{ref}\,e^{r/\beta} / Z_r$ | [notebooks/1_bandit §6 Distillation's fixed point](1_bandit.ipynb) | `toy_bandit.optimal_policy` |
# | 10 | `dpo_gradient` | $\nabla_\text{logits} -\log\sigma(\beta h)$, one pair | [notebooks/1_bandit §2, §3](1_bandit.ipynb); [notebooks/2_losses_by_hand §5](2_losses_by_hand.ipynb) | `toy_bandit.dpo_loss`, `toy_bandit.logratio_margin_grad` |
#
# This page runs the check three times: on the untouched stubs, on a student's copy half way through, and on the
# solutions. Its last cell asserts what each run must say, so running the notebook is a test of the checker too
# (`pytest tests/test_notebooks.py`; the checker's own tests are `tests/test_exercises.py`).
#
# **Running it.** Open it in Jupyter or VS Code from a clone of the repository, with the project installed by the
# README's set-up command (`pip install -r requirements.txt -e .`). It finds the checker through the installed
# `rddpo`, so a copy of this notebook opened elsewhere works too. It runs in seconds.

# %%
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import rddpo

ROOT = Path(rddpo.__file__).resolve().parent  # the project's folder: rddpo.py sits at its root
CHECK = ROOT / "notebooks" / "exercises" / "check.py"
EXERCISES = ["implicit_reward", "dpo_loss", "ipo_loss", "distill_loss", "forward_kl_estimate",
             "pessimistic_distill_loss", "pessimistic_dpo_loss", "sequence_logps", "optimal_policy",
             "dpo_gradient"]  # the table above, in its order


def check(file, folder=ROOT):
    """run `python notebooks/exercises/check.py FILE` from `folder`, as a student would; print its report.
    -> (exit status, {exercise: its line}, the hint lines)"""
    out = subprocess.run([sys.executable, str(CHECK), file], cwd=folder, capture_output=True, text=True)
    print(out.stdout + out.stderr, end="")
    lines = out.stdout.splitlines()
    verdicts = dict(m.groups() for m in map(re.compile(r" ?\d+\. (\w+) +(.*)").fullmatch, lines) if m)
    return out.returncode, verdicts, [line.strip() for line in lines if line.strip().startswith("hint:")]


# %% [markdown]
# ## 1. The untouched stubs
#
# Before you write anything, every exercise is `not yet written` and the command exits with status 1.

# %%
stub_status, stub_verdicts, stub_hints = check("notebooks/exercises/exercises.py")
print("exit status:", stub_status)

# %% [markdown]
# ## 2. A copy half way through
#
# A student has copied the stubs into a folder of their own and written the first two exercises. The implicit
# reward is right. In the DPO loss they computed the margin as the rejected response's log-ratio minus the chosen
# one's:
#
# ```python
# h = (policy_rejected_logps - reference_rejected_logps) - (policy_chosen_logps - reference_chosen_logps)
# return -F.logsigmoid(beta * h).mean()
# ```
#
# The check gives the hand-worked value it expected (notebook 2's $0.64367$) beside the one it got, and, since
# their answer equals a flipped margin's on every input, it names that mistake. The other eight are still stubs.

# %%
STUDENT = {
    "implicit_reward": "return beta * (policy_logps - reference_logps)",
    "dpo_loss": "h = ((policy_rejected_logps - reference_rejected_logps)\n"
                "         - (policy_chosen_logps - reference_chosen_logps))\n"
                "    return -F.logsigmoid(beta * h).mean()",
}
text = (ROOT / "notebooks" / "exercises" / "exercises.py").read_text()
for body in STUDENT.values():  # the first two stubs, in order
    text = text.replace("    raise NotImplementedError", "    " + body, 1)
with tempfile.TemporaryDirectory() as folder:
    (Path(folder) / "my_exercises.py").write_text(text)
    copy_status, copy_verdicts, copy_hints = check("my_exercises.py", folder)
print("exit status:", copy_status)

# %% [markdown]
# ## 3. The solutions
#
# `notebooks/exercises/solutions.py` passes all ten, and the command exits with status 0. Read a solution only
# after your own attempt has been checked: the hints are there to make that possible.

# %%
solution_status, solution_verdicts, solution_hints = check("notebooks/exercises/solutions.py")
print("exit status:", solution_status)

# %% [markdown]
# ## What this notebook showed, asserted
#
# Running the cell below is the test: it fails if the checker stops saying what this page says it says.

# %%
# 1. the stubs: one "not yet written" per exercise, in the table's order, exit status 1, no hint
assert list(stub_verdicts) == EXERCISES and set(stub_verdicts.values()) == {"not yet written"}
assert stub_status == 1 and stub_hints == []

# 2. the copy: one passed, the flipped margin named, the rest not yet written
assert copy_verdicts["implicit_reward"] == "passed" and copy_status == 1
assert copy_verdicts["dpo_loss"].startswith("wrong: on the hand-worked pairs") and "expected 0.643669" in copy_verdicts["dpo_loss"]
assert copy_hints == ["hint: the margin's sign is flipped: h is the chosen response's log-ratio minus the rejected one's"]
assert [copy_verdicts[name] for name in EXERCISES[2:]] == ["not yet written"] * 8

# 3. the solutions: all ten pass, exit status 0
assert list(solution_verdicts) == EXERCISES and set(solution_verdicts.values()) == {"passed"}
assert solution_status == 0 and solution_hints == []
print("all claims hold")
