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
# # 3. The length-bias experiment
#
# The paper's claim: DPO overfits its preference data, so when the annotations carry a spurious bias it
# learns the bias; distilling a reward model (d-DPO), pessimism over a family of reward models (e-DPO),
# or a forward-KL penalty (p-DPO) make it more robust. The paper simulates a *length bias* in
# summarisation preferences. `rddpo.py` runs the same kind of experiment, small enough for a laptop:
#
# 1. a gold reward anyone can read (how a careful reader rates a short movie review), and length as the
#    spurious feature;
# 2. a reference policy $\pi_{\text{ref}}$: a small GPT-2, trained in code on generated reviews;
# 3. pairs of responses sampled from $\pi_{\text{ref}}$, labelled by a *biased annotator*;
# 4. a plain reward model and a family of reward models;
# 5. DPO, IPO, d-DPO, e-DPO and p-DPO trained from the same $\pi_{\text{ref}}$ on the same pairs;
# 6. evaluation on held-out prompts, with the gold reward.
#
# This notebook runs the whole pipeline with `experiment.run` on a **small budget** (one to two minutes on two
# CPU cores), at two settings of the annotator's bias, shows the figures and tables it produces, and
# discusses what they show and what a budget this small cannot show. The last cell asserts only what such
# a run shows reliably.
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

import contextlib
import io
import math
import os

import numpy as np
import PIL.Image
import torch
from IPython.display import Image, Markdown, display

import rddpo
from harness import cli, experiment, models, report, task

# the model is tiny: one cpu thread runs it well, and, unlike several, does not slow to a crawl
# when another program is using the cores too
torch.set_num_threads(1)

# %% [markdown]
# ## 1. The gold reward, and length
#
# The gold reward is what a **careful reader** thinks of a review (`task.gold_reward`, defined in
# `harness/task.py`). It reads the sentiment of the review's *distinct, well-formed* sentences ("the acting was
# brilliant ."), off two fixed word lists (`task.POSITIVE`, `task.NEGATIVE`; the `task.NEUTRAL`
# adjectives count in the denominator only), and it is put off by padding:
#
# $$r^\star(y) = \underbrace{\frac{\#\text{pos} - \#\text{neg}}{\#\text{pos} + \#\text{neg} + \#\text{neutral}}}_{\text{distinct well-formed sentences}}
#   \;-\; \frac{\#\text{repeated or garbled sentences}}{\#\text{sentences}} \;-\; 0.25 \max(0, \#\text{sentences} - 3)$$
#
# Saying the same thing twice, writing word salad, or going on past three sentences all cost. So when the
# annotator prefers longer responses, learning that preference *hurts* under this gold: the spurious
# feature is harmful, as verbosity is for a real reader. The control, `gold_reward(text, "neutral")`
# (`--gold neutral`), is the first term alone over every adjective in the text: blind to length and
# repetition, under it the same bias is only label noise.

# %%
for text in [" the plot was great .", " the plot was great . the plot was great . the plot was great .",
             " the plot was great . the cast was superb . the ending was moving . the music was clever . the script "
             "was charming .", " great great boring", " the acting was very tedious ."]:
    print(f"careful {task.gold_reward(text):+.3f}   neutral {task.gold_reward(text, 'neutral'):+.3f}   "
          f"{len(task.words(text)):>2} words  {text}")

rng = np.random.default_rng(0)
reviews = [task.make_review(rng) for _ in range(2000)]
lengths = np.array([len(task.words(r)) for r in reviews])
corr_generated = {g: np.corrcoef(lengths, [task.gold_reward(r, g) for r in reviews])[0, 1] for g in task.GOLDS}
print(f"\n2000 generated reviews: {lengths.min()} to {lengths.max()} words; correlation of length and gold reward: "
      + ", ".join(f"{g} {c:+.3f}" for g, c in corr_generated.items()))

# %% [markdown]
# ## 2. The configuration and the reference policy
#
# Every setting lives in one dataclass, `experiment.Config`; `python rddpo.py --help` lists the same fields as
# flags. We start from `experiment.QUICK` (the smoke-test budget of `--quick`) and enlarge it a little. With
# `sweep=True` the run repeats everything for each bias in `sweep_biases`: here the biased annotator
# (0.5) and an unbiased one (0), which is the control that tells a learnt bias from a side effect of
# training. `out="runs"` writes into `notebooks/runs/`, which git ignores; each run gets a new `run-NNN`
# folder.
#
# `models.load_reference` builds the word-level tokenizer and a 2-layer, 64-wide GPT-2, trains it on
# generated reviews (`sft_steps`: the supervised stage that makes $\pi_{\text{ref}}$ write reviews) and caches
# it in `runs/reference-*`; `experiment.run` finds it there, so it is trained only once. We load it here to look at the data before training on it.

# %%
# the budget: --quick, enlarged so that this notebook still runs in one to two minutes on 2 cpu cores
budget = dict(experiment.QUICK, sft_steps=300, n_pairs=128, n_eval=64, rm_steps=30, steps=30, log_every=5)
cfg = experiment.Config(**budget, sweep=True, sweep_biases="0.5,0", seeds=[0], out="runs")
device = cli.pick_device(cfg.device)
print({k: getattr(cfg, k) for k in ["sweep_biases", "seeds", "beta", "gamma", "ensemble", "n_pairs", "n_eval",
                                   "steps", "batch_size", "rm_steps", "sft_steps", "gold"]}, "device:", device)
reference, tok = models.load_reference(cfg, device)
print(f"reference: {sum(p.numel() for p in reference.parameters()):,} parameters, vocabulary {len(tok)}")

# %% [markdown]
# ## 3. The biased annotator
#
# For each training prompt, two responses $y_1, y_2$ are sampled from $\pi_{\text{ref}}$. The annotator
# then decides:
#
# - with probability `bias`: the **longer** response wins (ties at random);
# - otherwise: the response with the higher **gold** reward wins (ties at random; `rddpo` takes the
#   argmax, so the length bias is the only label noise).
#
# With `bias = 0.5`, half the labels ignore quality. The gold-decided half prefers the *shorter* response
# more often than not (the careful reader marks rambling down), so the longer response wins somewhat less than
# the $0.5 + 0.5 \times 0.5 = 75\%$ it would win under a length-blind reader: still a spurious feature that a
# method can learn in place of quality, and here one that costs gold. `experiment.builtin_task` makes the pairs; it is what `experiment.run` calls, with the same seed, so
# these are exactly the pairs trained on below.

# %%
bias, seed = 0.5, cfg.seeds[0]
prompts, chosen, rejected, held_out = experiment.builtin_task(reference, tok, cfg, bias, seed, device)
len_w, len_l = np.array([len(task.words(y)) for y in chosen]), np.array([len(task.words(y)) for y in rejected])
gold_w, gold_l = np.array([task.gold_reward(y) for y in chosen]), np.array([task.gold_reward(y) for y in rejected])
for i in range(3):
    print(f"prompt: {prompts[i]!r}\n  chosen   ({len_w[i]:>2} words, gold {gold_w[i]:+.2f}):{chosen[i]}"
          f"\n  rejected ({len_l[i]:>2} words, gold {gold_l[i]:+.2f}):{rejected[i]}")
differ, better = len_w != len_l, gold_w != gold_l
longer_won = np.mean(len_w[differ] > len_l[differ])
better_won = np.mean(gold_w[better] > gold_l[better])
print(f"\nbias {bias}, {len(prompts)} pairs: the longer response won {longer_won:.0%} of the pairs whose lengths "
      f"differ; the gold-better response won {better_won:.0%} of the pairs whose gold rewards differ")

# %% [markdown]
# ## 4. The reward models, and the family
#
# d-DPO distils one Bradley-Terry reward model trained on all the pairs as they are:
#
# $$L_{\text{RM}} = -\log\sigma\big(r(x, y_w) - r(x, y_l)\big) + 0.01\,\big(r(x, y_w) + r(x, y_l)\big)^2$$
#
# (the second term pins the free offset of Bradley-Terry rewards, a choice of `rddpo`). A reward model
# is the reference's transformer plus a scalar head, started at zero and read at the last real token.
#
# e-DPO distils a *family* of $K$ reward models that, as a whole, likely contains a good proxy. The bias
# planted here is length, so the members differ along that axis: member $k$ is trained on a resample
# of the pairs in which a share $k/(K-1)$ of the pairs are ones the longer response won
# (`rddpo.family_shares`, `rddpo.resample_by_length_share`), with its own seed. Member 0 sees no pair
# that the longer response won; member $K-1$ sees only such pairs.

# %%
shares = rddpo.family_shares(cfg.ensemble)
longer_won_pairs = len_w > len_l  # (N,), the flag experiment.run resamples by
print("family shares:", [round(s, 3) for s in shares])
for k, share in enumerate(shares):
    idx = rddpo.resample_by_length_share(longer_won_pairs, share, np.random.default_rng([seed, k]))
    print(f"member {k}: {len(idx)} pairs drawn, {longer_won_pairs[idx].mean():.0%} of them won by the longer response "
          f"(asked {share:.0%}); {len(set(idx.tolist()))} distinct pairs")

# %% [markdown]
# ## 5. The run
#
# `experiment.run(cfg)` does, for each bias and seed:
#
# 1. sample and label the pairs (section 3), and sample $\pi_{\text{ref}}$ once on the held-out prompts;
# 2. tokenise the pairs and compute the reference's log-probabilities **once**;
# 3. train the plain reward model and the family, score every response **once**, and free them;
# 4. for e-DPO and p-DPO, sample a pool of responses from $\pi_{\text{ref}}$ (`steps` $\times$ `batch_size` of
#    them) for the forward-KL term, and score it with $\pi_{\text{ref}}$ **once**;
# 5. train each method from a copy of $\pi_{\text{ref}}$ with the same number of steps, batch size and
#    learning rate. Because the reference log-probs and reward scores were computed beforehand, a step of
#    DPO, IPO or d-DPO is one forward and one backward pass of the policy on the batch's pairs; e-DPO and
#    p-DPO add the same pass on $B$ fresh pool responses, whose mean $\log\pi_{\text{ref}} - \log\pi$
#    estimates $\mathrm{KL}(\pi_{\text{ref}}\Vert\pi)$ (notebook 2 says why not on the pairs' own responses);
# 6. evaluate each policy.
#
# | method | loss (batch mean), $h$ the log-ratio margin |
# |---|---|
# | DPO | $-\log\sigma(\beta h)$ |
# | IPO | $(h - 1/(2\beta))^2$ |
# | d-DPO | $(\Delta r - \beta h)^2$, the plain reward model |
# | e-DPO | $\min_k \text{mean}(\Delta r_k - \beta h)^2 + \gamma\,\widehat{\mathrm{KL}}$ |
# | p-DPO | $-\log\sigma(\beta h) + \gamma\,\widehat{\mathrm{KL}}$ |
#
# (Notebook 2 works each of them out by hand.) The evaluation samples one response per held-out prompt
# from each policy and reports: the mean gold reward; the **win rate** against $\pi_{\text{ref}}$'s sample
# for the same prompt (by gold reward, ties count half); the mean length in words; a
# $\mathrm{KL}(\pi \,\|\, \pi_{\text{ref}})$ estimate from those samples (the exact token ids drawn, so it is
# never negative); and, on the training pairs, the change of $\log\pi(y_w)$ and $\log\pi(y_l)$ from the
# reference and the implicit margins $\beta h$. It does so `eval_points` times along training, the last at
# the end. Training prints one line every `log_every` steps; at the end come the reward models' diagnostics,
# e-DPO's choice of member, and a few sampled responses.

# %%
# experiment.run prints as it trains. Two of its lines change every time this notebook runs, the new run folder's
# number and the seconds it took: they are left out, so that rerunning the notebook leaves its output as it was.
# (the lines are collected and shown when the run ends, or stops with an error)
printed = io.StringIO()
try:
    with contextlib.redirect_stdout(printed):
        results, run_dir = experiment.run(cfg)
finally:
    print("".join(line for line in printed.getvalue().splitlines(keepends=True)
                  if not line.startswith(("writing to ", "done in "))), end="")
runs = {(r["bias"], r["method"]): r for r in results["runs"]}  # one seed: one record per bias and method


# %% [markdown]
# ## 6. The figures
#
# `experiment.run` wrote its figures into the run folder. The bar chart is drawn for the first bias of
# `sweep_biases` (this is why 0.5 comes first); the training curves have a row per bias.
#
# `curves.png`, the training curves of the logged batches. Left and middle: how far each method has moved
# $\log\pi(y_w)$ and $\log\pi(y_l)$ of the batch from the reference; right: the implicit margin $\beta h$.

# %%
def show(name):  # a figure of the run, kept in the notebook with 256 colours: the same picture, a third of the bytes
    png = io.BytesIO()
    PIL.Image.open(os.path.join(run_dir, name)).convert("RGB").quantize(256).save(png, "png")
    display(Image(png.getvalue(), width=900))

show("curves.png")

# %% [markdown]
# `comparison.png`, the evaluation on held-out prompts at bias 0.5, one bar per method (with several seeds
# the error bars would show the standard deviation over seeds; with one seed there are none).

# %%
show("comparison.png")

# %% [markdown]
# `sweep.png`, the paper's kind of headline figure: gold win rate and length against the annotator's bias,
# one line per method. With two biases and one seed it has two points per line and no error bars.

# %%
show("sweep.png")

# %% [markdown]
# `gold_vs_kl.png`: each method's gold win rate against its KL from $\pi_{\text{ref}}$ at each evaluation along
# training, one panel per bias. A method that over-optimises its training signal climbs, then falls, as its
# KL grows.

# %%
show("gold_vs_kl.png")


# %% [markdown]
# The numbers, with the reference's own samples as the first row (its win rate against itself is 0.5 by
# definition). `dlogp_w` and `dlogp_l` are the mean changes of the training pairs' log-probabilities from
# the reference; `margin_max` is the largest implicit margin $\beta h$ on the training pairs. The table is
# `report.markdown_table`, the same code that prints the table at the end of `python rddpo.py`.

# %%
display(Markdown(f"seed {seed}; {cfg.steps} steps of {cfg.batch_size} pairs out of {len(prompts)}; "
                 f"{cfg.n_eval} held-out prompts\n\n" + report.markdown_table(results["summary"])))

# %% [markdown]
# ## 7. What this run shows
#
# The next cell reads the observations off the numbers above, so they stay true of the run saved in this
# notebook.

# %%
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

# %% [markdown]
# **Reading the figures.**
#
# - *DPO lowers the chosen responses too.* DPO and IPO open the margin between chosen and rejected mostly
#   by pushing the **rejected** responses down, and on average the **chosen** ones end lower than they
#   started as well: the loss sees only the difference $h$, and lowering everything the data contains is an
#   easy way to change it. This is the small-scale version of the paper's warning that DPO can drive even
#   the preferred responses' probability down.
# - *The KL term holds the policy near the reference.* p-DPO is DPO plus $\gamma\,\widehat{\mathrm{KL}}$: it
#   lowers the rejected responses too, but the KL term raises what $\pi_{\text{ref}}$ writes (its pool of
#   samples; on the built-in task the training responses are such samples too), so p-DPO's chosen responses
#   end *higher* than they started, and its KL estimate on held-out prompts is far smaller than DPO's.
#   e-DPO's KL estimate is small too.
# - *The length bias is learnt, and it costs.* With the biased annotator, DPO's, IPO's and d-DPO's responses
#   become longer than $\pi_{\text{ref}}$'s, while e-DPO's and p-DPO's stay near or below the reference
#   length. Under the careful reader, longer means worse: at bias 0.5 DPO, IPO and d-DPO fall below
#   $\pi_{\text{ref}}$ in gold. The bias-0 run is the control: without the biased annotator the careful
#   reader's labels teach brevity, and DPO's responses become *shorter* than the reference's.
# **What a budget this small cannot show.** One seed, two biases, 128 pairs, 30 steps and 64 held-out
# prompts: a difference of gold reward or win rate of a few hundredths is within the noise (a win rate over
# 64 prompts has a standard error of about 0.06). The KL estimate from 64 samples is noisy too. So this run does **not** show the paper's headline result, that the
# distilled and pessimistic methods keep a higher gold win rate than DPO as the bias grows; the gold
# columns above may or may not point that way, and their order should not be read as a result. To look
# for it, sweep with several seeds and the default budget (512 pairs, 150 steps):
# `python rddpo.py --sweep --sweep-biases 0,0.5,1 --seeds 0 1 2 3 4` (18 minutes on a 2-core CPU) draws
# `sweep.png` with the spread over seeds. The README shows its numbers, with paired intervals: under the
# careful reader e-DPO beats DPO at bias 0.5 (+0.157, interval +0.055 to +0.259) and p-DPO at biases 0.5 and
# 1, while without bias both pessimistic methods cost a little; under the length-blind control
# (`--gold neutral`) e-DPO does not beat DPO.
#
# **Things to try** (one field of the config each): `sweep_biases="0.9,0"`; `gamma=0` (p-DPO becomes DPO,
# and e-DPO loses what pulls it toward the reference); `ensemble=1`; more `steps`, to watch DPO's margins
# keep growing where d-DPO's settle at the reward model's.

# %% [markdown]
# ## 8. On real GPT-2, on a GPU
#
# The same experiment on the real 124M-parameter GPT-2 (downloaded from the Hugging Face hub the first time,
# or a local copy given as `--model /path/to/gpt2`), the headline sweep (biases 0, 0.5 and 1, five seeds):
#
# ```bash
# python rddpo.py --model gpt2 --device cuda --sweep --sweep-biases 0,0.5,1 --seeds 0 1 2 3 4
# ```
#
# GPT-2 has never seen these reviews, so `rddpo` first fine-tunes it on them for `--sft-steps` (600) steps and
# caches the result: the paper's $\pi_{\text{ref}}$ is a supervised model too.
#
# The cell below runs exactly that command when `RUN_ON_GPU` is set to `True`. It is off here: it needs a
# GPU and the network, and takes far longer than this notebook's budget.

# %%
RUN_ON_GPU = False  # set to True on a machine with a CUDA GPU (and the hub, or a local copy of gpt2)
COMMAND = "python rddpo.py --model gpt2 --device cuda --sweep --sweep-biases 0,0.5,1 --seeds 0 1 2 3 4"
if RUN_ON_GPU:
    status = experiment.main(COMMAND.split()[2:])  # the same flags, parsed by harness/experiment.py's argparse
    assert status == 0
else:
    print("skipped:", COMMAND)

# %% [markdown]
# ## What this notebook showed, asserted
#
# Only claims that hold in the run saved here (seed 0, at this budget): the annotator's labels favour the longer
# response; every method trained and was evaluated with finite numbers; at bias 0.5 DPO lowered the
# log-probabilities of the rejected and of the chosen training responses and opened a positive margin,
# while p-DPO raised the chosen ones; p-DPO and e-DPO ended closer to the reference than DPO; DPO's responses grew longer than the reference's,
# and longer than with the unbiased annotator, while p-DPO's stayed shorter than DPO's; and under the careful
# reader, length hurts: the gold reward falls with it.

# %%
assert corr_generated["careful"] < -0.3 < 0.05 > abs(corr_generated["neutral"])  # length hurts the careful reader only
assert longer_won > 0.6  # the biased annotator (bias 0.5): under 75%, as the careful half prefers brevity
data_05 = next(d for d in results["data"] if d["bias"] == 0.5)
assert data_05["pairs"] == len(prompts) and data_05["longer_won"] == np.mean(len_w > len_l)  # the same pairs
assert sorted(runs) == sorted((b, m) for b in (0.0, 0.5) for m in rddpo.METHODS)  # every method, both biases
for key, r in runs.items():
    for k in ("gold_reward", "win_rate", "length", "kl", "logps_chosen_change", "logps_rejected_change", "margin_mean"):
        assert math.isfinite(r[k]), (key, k)
    assert 0 <= r["win_rate"] <= 1
assert dpo["logps_rejected_change"] < 0 and dpo["logps_chosen_change"] < 0  # dpo lowered both ...
assert dpo["margin_mean"] > 0  # ... and still opened a positive implicit margin on the training pairs
assert pdpo["logps_chosen_change"] > 0  # the kl term raises what pi_ref writes, and these are its samples
assert pdpo["kl"] < dpo["kl"] and runs[0.5, "e-dpo"]["kl"] < dpo["kl"]  # the kl term keeps them near pi_ref
assert dpo["length"] > ref_len + 3 and dpo["length"] > runs[0.0, "dpo"]["length"]  # dpo learnt the length bias
assert pdpo["length"] < dpo["length"]
for name in ("curves.png", "comparison.png", "sweep.png", "gold_vs_kl.png", "results.json", "metrics.jsonl",
             "samples.jsonl"):
    assert os.path.getsize(os.path.join(run_dir, name)) > 0
print("all claims hold")
