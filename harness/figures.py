"""figures.py: the figures of a run, each with units, pi_ref's baseline where it has one, and the run's settings in
its title.
"""
import os

import numpy as np

from harness.report import paired_comparisons, reward_model_summary


# -----------------------------------------------------------------------------
# figures


def plot(results, run_dir, curves=None, methods=()):
    """the figures of a run, in run_dir:
      curves.png         training curves, one row per bias (at the first seed), logged batch means
      comparison.png     the first bias: each method's evaluation against pi_ref's
      gold_vs_kl.png     gold win rate (your own data: held-out accuracy) against KL(pi || pi_ref), through the
                         checkpoints, one panel per bias
      reward_models.png  where reward models were trained: accuracy and length correlation, one row per bias
      sweep.png          over several biases: win rate and length against the bias, and with 2+ seeds each
                         method's paired win-rate difference from dpo
    curves: results["curves"] (None: taken from results); `methods` fixes each method's colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    config, runs, summary = results.get("config", {}), results["runs"], results["summary"]
    title = settings(config)
    plot_curves(results.get("curves", {}) if curves is None else curves, os.path.join(run_dir, "curves.png"), plt,
                methods, title, config)
    plot_comparison(summary, os.path.join(run_dir, "comparison.png"), plt, methods, title, config)
    if any(k in r for r in runs for k in ("win_rate", "heldout_accuracy")):
        plot_gold_vs_kl(runs, os.path.join(run_dir, "gold_vs_kl.png"), plt, methods, title, config)
    if results.get("reward_models"):
        plot_reward_models(results["reward_models"], os.path.join(run_dir, "reward_models.png"), plt, title, config)
    if len({s["bias"] for s in summary}) > 1:
        plot_sweep(summary, os.path.join(run_dir, "sweep.png"), plt, methods,
                   results["paired"] if "paired" in results else paired_comparisons(runs), title)
    plt.close("all")


def settings(config):
    """the run's settings for a figure's title: model, data or the gold reader, seeds, steps, beta."""
    c = config or {}
    parts = [("model", c.get("model")), ("data", os.path.basename(c["data"]) if c.get("data") else None),
             ("gold", None if c.get("data") else c.get("gold")),
             ("seeds", " ".join(map(str, c["seeds"])) if c.get("seeds") else None),
             ("steps", c.get("steps")), ("beta", c.get("beta"))]
    return ", ".join(f"{name} {v}" for name, v in parts if v is not None)


def where(bias, config):
    """a panel's title: the annotator's bias on the built-in task; your own data has none."""
    return "your data" if (config or {}).get("data") else f"bias {float(bias):.2f}"


def colour(method, methods):
    return f"C{list(methods).index(method) % 10}" if method in methods else "black"


CURVES = [("logps/chosen_change", "log pi(chosen) - log pi_ref(chosen)", "nats (batch mean)"),
          ("logps/rejected_change", "log pi(rejected) - log pi_ref(rejected)", "nats (batch mean)"),
          ("rewards/margins", "implicit reward margin beta h", "beta x nats (batch mean)")]


def plot_curves(curves, path, plt, methods=(), title="", config=None):
    """curves.png, a grid: one row per bias, panels as in CURVES. curves: {bias: {method: rows}}, or one run's
    {method: rows} as results.json kept it before every bias had its curves."""
    import matplotlib.ticker
    if curves and all(isinstance(v, list) for v in curves.values()):
        curves = {str(next(iter(curves.values()))[0]["bias"]): curves}
    fig, axes = plt.subplots(max(1, len(curves)), 3, figsize=(13, 0.6 + 3.2 * max(1, len(curves))), squeeze=False)
    for row, (bias, by_method) in zip(axes, curves.items()):
        for method, rows in by_method.items():
            for ax, (key, _, _) in zip(row, CURVES):
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=method, color=colour(method, methods))
        seed = next(iter(by_method.values()))[0]["seed"]
        for ax, (_, name, unit) in zip(row, CURVES):
            ax.set_title(f"{where(bias, config)}, seed {seed}: {name}", fontsize=9)
            ax.set(xlabel="training step", ylabel=unit)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.axhline(0, color="grey", lw=0.5)
        row[0].legend(fontsize=8)
    fig.suptitle(f"training curves, logged batches; {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# per key of the comparison: axis label, and pi_ref's level (a key of the summary, a number, or None)
COMPARE = {"gold_reward": ("gold reward per response", "gold_ref_mean"),
           "win_rate": ("gold win rate against pi_ref's samples", 0.5),
           "length": ("response length (words)", "length_ref_mean"),
           "kl": ("KL(pi || pi_ref) (nats per response)", 0.0),
           "heldout_accuracy": ("held-out preference accuracy", None)}


def plot_comparison(summary, path, plt, methods, title="", config=None):
    """comparison.png: the first bias's mean (and sd over seeds) per method, pi_ref's level dashed."""
    summary = [s for s in summary if s["bias"] == summary[0]["bias"]]
    keys = [k for k in COMPARE if f"{k}_mean" in summary[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3.6), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.bar([s["method"] for s in summary], [s[f"{k}_mean"] for s in summary],
               yerr=[s[f"{k}_std"] for s in summary], color=[colour(s["method"], methods) for s in summary])
        label, ref = COMPARE[k]
        level = summary[0].get(ref) if isinstance(ref, str) else ref
        if k == "heldout_accuracy":
            ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
        elif level is not None:
            ax.axhline(level, color="black", ls="--", lw=1, label="pi_ref")
        ax.set_ylabel(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=30)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7)
    seeds = summary[0]["seeds"]
    fig.suptitle(f"{where(summary[0]['bias'], config)}: " + (f"mean and sd over {seeds} seeds" if seeds > 1 else
                 "one seed") + f"; {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def checkpoint_means(records, key):
    """(mean kl, mean key) over the records (seeds) at each checkpoint step, in step order; a record without
    checkpoints gives its final point."""
    points = {}
    for r in records:
        for c in r.get("checkpoints") or [dict(step=np.inf, kl=r.get("kl"), **{key: r.get(key)})]:
            if c.get("kl") is not None and c.get(key) is not None:
                points.setdefault(c["step"], []).append((c["kl"], c[key]))
    means = [np.mean(points[step], axis=0) for step in sorted(points)]
    return [m[0] for m in means], [m[1] for m in means]


def plot_gold_vs_kl(runs, path, plt, methods, title="", config=None):
    """gold_vs_kl.png: the trade-off each method makes, one panel per bias. x: KL(pi || pi_ref), nats per response
    (symlog where it spans orders of magnitude); y: gold win rate against pi_ref's samples (your own data: held-out
    preference accuracy); a line through the checkpoints (mean over seeds), the final point large."""
    key = "win_rate" if any("win_rate" in r for r in runs) else "heldout_accuracy"
    biases = list(dict.fromkeys(r["bias"] for r in runs))
    ncols = min(3, len(biases))
    nrows = -(-len(biases) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6.4, 4.8 * ncols), 0.8 + 3.8 * nrows), squeeze=False)
    for ax, bias in zip(axes.flat, biases):
        kls = [0.0]
        for method in dict.fromkeys(r["method"] for r in runs if r["bias"] == bias):
            kl, y = checkpoint_means([r for r in runs if (r["bias"], r["method"]) == (bias, method)], key)
            if kl:
                ax.plot(kl, y, "-o", ms=3, lw=1.2, color=colour(method, methods), label=method)
                ax.plot(kl[-1], y[-1], "o", ms=10, mec="black", color=colour(method, methods))
                kls += kl
        ax.plot(0, 0.5, "k*", ms=12, zorder=5)
        ax.annotate("pi_ref" if key == "win_rate" else "pi_ref (chance)", (0, 0.5), xytext=(6, 6),
                    textcoords="offset points", fontsize=8)
        ax.axhline(0.5, color="grey", ls="--", lw=1)
        positive = [k for k in kls if k > 0]
        symlog = positive and max(positive) / min(positive) >= 100  # choice: linear unless it spans 2+ decades
        if symlog:
            linthresh = 10.0 ** np.floor(np.log10(min(positive)))
            ax.set_xscale("symlog", linthresh=linthresh)
            ax.set_xlim(-0.5 * linthresh if min(kls) >= 0 else None, 2 * max(positive))  # no empty negative half
        ax.set(title=where(bias, config), ylabel=COMPARE[key][0],
               xlabel="KL(pi || pi_ref), nats per response" + (" (symlog)" if symlog else ""))
    for ax in axes.flat[len(biases):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=8, title="large dot: final", title_fontsize=7)
    fig.suptitle(f"{'gold win rate' if key == 'win_rate' else 'held-out accuracy'} against KL from pi_ref, through "
                 f"the checkpoints (mean over seeds)\n{title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_reward_models(reward_models, path, plt, title="", config=None):
    """reward_models.png, one row per bias: each reward model's accuracy on held-out pairs against gold and against
    the labels (chance 0.5), and the correlation of its reward with the response's length; sd over seeds."""
    rows = reward_model_summary(reward_models)
    biases = list(dict.fromkeys(r["bias"] for r in rows))
    fig, axes = plt.subplots(len(biases), 2, figsize=(12, 0.6 + 3.4 * len(biases)), squeeze=False)
    for (ax_acc, ax_corr), bias in zip(axes, biases):
        models = [r for r in rows if r["bias"] == bias]
        x = np.arange(len(models))
        series = [(k, name) for k, name in (("accuracy_gold", "against gold"), ("accuracy_labels", "against labels"))
                  if any(m[k] is not None for m in models)]  # your own data has no gold
        width = 0.8 / max(1, len(series))
        for j, (k, name) in enumerate(series):
            ax_acc.bar(x + (j - (len(series) - 1) / 2) * width, [np.nan if m[k] is None else m[k] for m in models],
                       width, yerr=[m[f"{k}_std"] for m in models], label=name)
        ax_acc.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
        ax_corr.bar(x, [np.nan if m["length_corr"] is None else m["length_corr"] for m in models],
                    yerr=[m["length_corr_std"] for m in models], color="C4")
        ax_corr.axhline(0, color="grey", lw=0.5)
        labels = [m["model"] + ("" if m["share"] is None else f"\nlonger won {m['share']:.2f}") for m in models]
        ax_acc.set(ylim=(0, 1), ylabel="accuracy on held-out pairs",
                   title=f"{where(bias, config)}: reward model accuracy")
        ax_corr.set(ylim=(-1, 1), ylabel="Pearson corr(reward, length in words)",
                    title=f"{where(bias, config)}: reward against response length")
        for ax in (ax_acc, ax_corr):
            ax.set_xticks(x, labels, fontsize=8)
        ax_acc.legend(fontsize=7)
    seeds = rows[0]["seeds"]
    fig.suptitle(f"reward models, {'mean and sd over ' + str(seeds) + ' seeds' if seeds > 1 else 'one seed'}; {title}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_sweep(summary, path, plt, methods, paired_rows=(), title=""):
    """the headline figure: gold win rate and length against the annotator's length bias and, with 2+ seeds,
    each method's win rate minus dpo's within each seed (mean and 95 % t-interval)."""
    keys = [k for k in ("win_rate", "length") if f"{k}_mean" in summary[0]]
    diffs = [p for p in paired_rows or () if p["key"] == "win_rate" and p["base"] == "dpo" and p["low"] is not None]
    fig, axes = plt.subplots(1, len(keys) + bool(diffs), figsize=(5.5 * (len(keys) + bool(diffs)), 4.2), squeeze=False)
    axes = axes[0]
    for method in dict.fromkeys(s["method"] for s in summary):
        rows = [s for s in summary if s["method"] == method]
        for ax, k in zip(axes, keys):
            ax.errorbar([s["bias"] for s in rows], [s[f"{k}_mean"] for s in rows], yerr=[s[f"{k}_std"] for s in rows],
                        label=method, marker="o", capsize=3, color=colour(method, methods))
    ref = [s for s in summary if s["method"] == summary[0]["method"]]
    labels = {"win_rate": "gold win rate against pi_ref's samples", "length": "mean response length (words)"}
    for ax, k in zip(axes, keys):
        if k == "win_rate":
            ax.axhline(0.5, color="grey", ls="--", lw=1, label="pi_ref")
        elif "length_ref_mean" in ref[0]:
            ax.plot([s["bias"] for s in ref], [s["length_ref_mean"] for s in ref], "--", color="grey", label="pi_ref")
        ax.set(xlabel="share of labels from the length-biased annotator", ylabel=labels[k])
    if diffs:
        plot_paired_differences(axes[-1], diffs, methods)
    axes[0].legend(fontsize=8)
    seeds = summary[0]["seeds"]
    fig.suptitle(("mean and sd over " + f"{seeds} seeds" if seeds > 1 else "one seed") + f"; {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_paired_differences(ax, diffs, methods):
    """win rate minus dpo's within each seed against the bias: mean and 95 % t-interval, methods side by side."""
    names = list(dict.fromkeys(p["method"] for p in diffs))
    for i, method in enumerate(names):
        rows = [p for p in diffs if p["method"] == method]
        shift = 0.012 * (i - (len(names) - 1) / 2)  # side by side, so the intervals do not hide each other
        ax.errorbar([p["bias"] + shift for p in rows], [p["mean"] for p in rows], capsize=3, marker="o", ls="none",
                    yerr=[[p["mean"] - p["low"] for p in rows], [p["high"] - p["mean"] for p in rows]],
                    color=colour(method, methods), label=method)
    ax.axhline(0, color="black", lw=1)
    ax.set(xlabel="share of labels from the length-biased annotator", ylabel="win rate minus dpo's (same seed)",
           title="paired difference from dpo, 95 % t-interval")
    ax.legend(fontsize=8)
