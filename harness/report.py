"""report.py: the numbers a run reports.

Means over seeds, per-seed paired differences between methods with 95 % t-intervals, the tables (printed and
markdown), reward-model statistics, the printed summary of a finished run, and two runs compared seed by seed:

    python -m harness.report compare RUN_A RUN_B

Imports no torch.
"""
import json
import os
import re

import numpy as np

from harness.cli import ArgumentParser, UsageError, cli


# -----------------------------------------------------------------------------
# 1. tables


KEYS = ["gold_reward", "win_rate", "length", "kl", "kl_per_token", "tokens", "gold_ref", "length_ref",
        "logps_chosen_change", "logps_rejected_change", "margin_mean", "margin_max", "heldout_accuracy",
        "train_seconds"]


COLUMNS = [("gold_reward", "gold"), ("win_rate", "win"), ("length", "len"), ("kl", "KL"),
           ("logps_chosen_change", "dlogp_w"), ("logps_rejected_change", "dlogp_l"), ("margin_max", "margin_max"),
           ("heldout_accuracy", "acc")]


def bias_text(bias, prefix="", width=0):
    """the annotator's bias as printed (built-in task), or nothing at all on your own data (bias None)."""
    return "" if bias is None else f"{prefix}{bias:>{width}.2f} "


def summarize(records):
    """mean and sample standard deviation over seeds, per (bias, method): KEY_mean, KEY_std, seeds."""
    groups = {}
    for r in records:
        groups.setdefault((r["bias"], r["method"]), []).append(r)
    def std(v):  # sample standard deviation; 0 for a single seed
        return np.std(v, ddof=1) if len(v) > 1 else 0.0
    return [dict(bias=b, method=m, seeds=len(rs), **{f"{k}_{s}": float(f([r[k] for r in rs]))
            for k in KEYS if k in rs[0] for s, f in (("mean", np.mean), ("std", std))})
            for (b, m), rs in groups.items()]


def table_rows(summary, digits=3):
    """(header, rows of cells): a pi_ref row before each bias's methods where the gold reward is known."""
    cols = [(k, name) for k, name in COLUMNS if f"{k}_mean" in summary[0]]
    rows = []
    for s in summary:
        if "gold_ref_mean" in s and s["method"] == summary[0]["method"]:
            rows.append([bias_text(s["bias"]).strip(), "pi_ref", f"{s['gold_ref_mean']:.{digits}f}", f"{0.5:.{digits}f}",
                         f"{s['length_ref_mean']:.{digits}f}"] + [""] * (len(cols) - 3))
        rows.append([bias_text(s["bias"]).strip(), s["method"]] + [f"{s[k + '_mean']:.{digits}f}" + (
            f" ±{s[k + '_std']:.{digits}f}" if s["seeds"] > 1 else "") for k, _ in cols])
    if all(s["bias"] is None for s in summary):  # your own data: no annotator, no bias column
        return ["method"] + [name for _, name in cols], [row[1:] for row in rows]
    return ["bias", "method"] + [name for _, name in cols], rows


def print_table(summary):
    header, rows = table_rows(summary)
    for row in [header] + rows:
        print(f"{row[0]:>5} {row[1]:<6} " + " ".join(f"{c:>15}" for c in row[2:]).rstrip())


def markdown_table(summary, digits=3):
    header, rows = table_rows(summary, digits)
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header)] + rows)


# -----------------------------------------------------------------------------
# 2. paired differences


# two-sided 95 % quantiles of student's t for 1..30 degrees of freedom
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


PAIRED_KEYS = ["win_rate", "gold_reward", "heldout_accuracy", "length", "kl"]


def t95(df):
    # choice: beyond the table, the normal quantile with its first correction for df (2.02 at 40, as t is)
    return T95[df - 1] if df <= len(T95) else 1.96 + (1.96 ** 3 + 1.96) / (4 * df)


def mean_interval(values):
    """{mean, low, high}: the mean and its 95 % t-interval, mean ± t(n-1) sd / sqrt(n); both ends None when n = 1."""
    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return dict(mean=mean, low=None, high=None)
    half = t95(n - 1) * float(np.std(values, ddof=1)) / np.sqrt(n)
    return dict(mean=mean, low=mean - half, high=mean + half)


def paired(records, key, base):
    """seeds share their data and reward models, so methods are compared within each seed: per (bias, method != base),
    the differences record[key] - base's record[key] at each seed where both hold the key, their mean and 95 %
    t-interval (mean_interval). -> [dict(bias, method, base, key, seeds, diffs, mean, low, high)], biases ascending,
    seeds ascending; a seed without the base is left out, a method with no seed left is left out."""
    value = {(r["bias"], r["seed"], r["method"]): r[key] for r in records if r.get(key) is not None}
    out = []
    for bias in sorted({b for b, _, _ in value}):
        for method in dict.fromkeys(m for b, _, m in value if b == bias and m != base):
            seeds = sorted(s for b, s, m in value if (b, m) == (bias, method) and (bias, s, base) in value)
            diffs = [float(value[bias, s, method] - value[bias, s, base]) for s in seeds]
            if seeds:
                out.append(dict(bias=bias, method=method, base=base, key=key, seeds=seeds, diffs=diffs,
                                **mean_interval(diffs)))
    return out


def paired_comparisons(records):
    """results.json's "paired": every method against dpo, and e-dpo against d-dpo, on each of PAIRED_KEYS the
    records hold."""
    rows = []
    for key in PAIRED_KEYS:
        rows += paired(records, key, "dpo") + [p for p in paired(records, key, "d-dpo") if p["method"] == "e-dpo"]
    return rows


def print_paired(rows, n_seeds):
    """one line per (bias, method, base): mean [low, high] of the per-seed differences; * where 0 is outside."""
    if n_seeds < 2:
        print("paired differences between methods need 2+ seeds (e.g. --seeds 0 1 2); this run has one")
        return
    held = {p["key"] for p in rows}
    keys = [k for k in ("win_rate", "heldout_accuracy") if k in held][:1] + [k for k in ("length", "kl") if k in held]
    if not keys:
        print("no paired differences: they compare each method with dpo, and e-dpo with d-dpo")
        return
    cells = {}
    for p in sorted(rows, key=lambda p: p["bias"] or 0):  # stable: each bias's rows in the order they came
        cells.setdefault((p["bias"], p["method"], p["base"]), {})[p["key"]] = p
    print(f"paired differences, method - base within each seed: mean [95 % t-interval] over {n_seeds} seeds; "
          "* the interval excludes 0")
    print(" bias " * any(p["bias"] is not None for p in rows) + f"{'method - base':<15}" + "".join(f"{PAIRED_NAMES[k][0]:>30}" for k in keys))
    for (bias, method, base), by_key in cells.items():
        print(f"{bias_text(bias, width=5)}{method + ' - ' + base:<15}" +
              "".join(f"{interval_text(by_key.get(k), PAIRED_NAMES[k][1]):>30}" for k in keys))


PAIRED_NAMES = {"win_rate": ("win rate", 3), "heldout_accuracy": ("held-out acc", 3), "length": ("length (words)", 2),
                "kl": ("KL (nats)", 2)}  # printed columns: name, decimals; win rate, or held-out accuracy without it


def interval_text(p, digits=3):
    if p is None:
        return "-"
    if p["low"] is None:
        return f"{p['mean']:+.{digits}f} [one seed] "
    star = "*" if p["low"] > 0 or p["high"] < 0 else " "
    return f"{p['mean']:+.{digits}f} [{p['low']:+.{digits}f}, {p['high']:+.{digits}f}]{star}"


# -----------------------------------------------------------------------------
# 3. reward models


def n_words(text):
    """words as runs of letters: punctuation, digits and spacing do not count, whatever the tokenizer wrote."""
    return len(re.findall(r"[^\W\d_]+", text))


def reward_model_stats(held_rewards, train_rewards, chosen, rejected, gold_reward=None, beta=None):
    """a reward model's accuracy on held-out pairs against their labels and (given a gold reward function) against
    gold, the correlation of its reward with length in words, its mean |r(y_w) - r(y_l)| on the training pairs and
    (given beta) the log-ratio margin |h| = that / beta, in nats, that distilling it asks for. rewards: (2M,) and
    (2N,) tensors, the chosen rows first; chosen, rejected: the held-out texts."""
    (r_w, r_l), (t_w, t_l) = held_rewards.numpy().reshape(2, -1), train_rewards.numpy().reshape(2, -1)  # (M,) each
    r, lengths = np.concatenate([r_w, r_l]), np.array([n_words(y) for y in list(chosen) + list(rejected)])  # (2M,)
    diff = float(np.abs(t_w - t_l).mean())
    out = dict(accuracy_labels=float(np.mean(r_w > r_l)), accuracy_gold=None, heldout_pairs=len(r_w),
               length_corr=float(np.corrcoef(r, lengths)[0, 1]) if r.std() > 0 and lengths.std() > 0 else None,
               reward_diff=diff, target_logratio=diff / beta if beta else None)
    if gold_reward is None:  # your own data: no gold to be accurate against
        del out["accuracy_gold"]
    else:
        g_w, g_l = np.array([gold_reward(y) for y in chosen]), np.array([gold_reward(y) for y in rejected])  # (M,)
        if (g_w != g_l).any():  # pairs of equal gold say nothing about gold accuracy
            out["accuracy_gold"] = float(np.mean(((r_w > r_l) == (g_w > g_l))[g_w != g_l]))
    return out


RM_KEYS = ["share", "accuracy_gold", "accuracy_labels", "length_corr", "reward_diff", "target_logratio", "heldout_pairs"]


def reward_model_summary(reward_models):
    """results["reward_models"] averaged over seeds per (bias, model): KEY and KEY_std (None where no seed has
    the key, e.g. accuracy_gold on your own data), seeds."""
    groups = {}
    for r in reward_models:
        groups.setdefault((r["bias"], r["model"]), []).append(r)
    out = []
    for (bias, model), rs in groups.items():
        row = dict(bias=bias, model=model, seeds=len(rs))
        for k in RM_KEYS:
            v = [r[k] for r in rs if r.get(k) is not None]
            row[k], row[f"{k}_std"] = float(np.mean(v)) if v else None, float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        out.append(row)
    return out


def print_reward_models(reward_models):
    rows = reward_model_summary(reward_models)
    def cell(v, spec):
        return "-" if v is None else format(v, spec)
    print(f"reward models, mean over {rows[0]['seeds']} seed(s): longer won = share of its training pairs won by the "
          "longer response;\n  accuracy on held-out pairs; corr(reward, length in words); mean |r_w - r_l| on "
          "training pairs,\n  and the log-ratio margin |h| = |r_w - r_l| / beta (nats) it asks d-DPO and e-DPO for")
    gold = any(r["accuracy_gold"] is not None for r in rows)  # the built-in task's gold; none on your own data
    print((" bias " if rows[0]["bias"] is not None else "") + f"{'model':<9} {'longer won':>10} "
          + (f"{'acc gold':>9} " if gold else "") + f"{'acc labels':>10} {'len corr':>9} {'|r_w-r_l|':>9} {'asks |h|':>9}")
    for r in rows:
        print(f"{bias_text(r['bias'], width=5)}{r['model']:<9} {cell(r['share'], '.2f'):>10} "
              + (f"{cell(r['accuracy_gold'], '.3f'):>9} " if gold else "")
              + f"{cell(r['accuracy_labels'], '.3f'):>10} {cell(r['length_corr'], '+.2f'):>9} "
              f"{cell(r['reward_diff'], '.3f'):>9} {cell(r['target_logratio'], '.1f'):>9}")


def member_min_shares(records):
    """{bias: mean over seeds of e-dpo's member_min_share}, for the records that hold it."""
    shares = {}
    for r in records:
        if r["method"] == "e-dpo" and r.get("member_min_share"):
            shares.setdefault(r["bias"], []).append(r["member_min_share"])
    return {b: np.mean(s, axis=0) for b, s in shares.items()}


# -----------------------------------------------------------------------------
# 4. the printed summary


def shorten(text, width=100):
    text = " ".join(text.split())  # newlines and runs of spaces become one space
    return text if len(text) <= width else text[:width - 3] + "..."


def print_samples(rows, n_prompts=2, question=lambda prompt: prompt):
    """for the first bias and seed of samples.jsonl's rows, the first n prompts (as question(prompt) shows them):
    pi_ref's and each method's response with its gold reward, length in words and log pi(y|x) - log pi_ref(y|x) in
    nats, cut to about 100 characters. each policy's rows come in the same order of prompts (a prompt may come
    twice), so the k-th rows go together."""
    if not rows:
        return
    first = [r for r in rows if (r["bias"], r["seed"]) == (rows[0]["bias"], rows[0]["seed"])]
    by_policy = {}
    for r in sorted(first, key=lambda r: r["policy"] != "pi_ref"):  # stable: pi_ref, then the methods as they came
        by_policy.setdefault(r["policy"], []).append(r)
    gold = any(r.get("gold") is not None for r in first)
    print(f"samples, {bias_text(rows[0]['bias'], 'bias ')}seed {rows[0]['seed']}: " + "gold reward, " * gold
          + "length (words), log pi/pi_ref (nats), response ([cut off]: it hit --max-new-tokens)")
    for k in range(min(n_prompts, max(len(v) for v in by_policy.values()))):
        shown = [v[k] for v in by_policy.values() if k < len(v)]
        print(f"  {shorten(question(shown[0]['prompt']))}")
        for r in shown:
            score = f"gold {r['gold']:+.2f} " if gold else ""
            print(f"    {r['policy']:<6} {score}len {r['length']:>3.0f} logratio {r['logratio']:+7.2f}  "
                  f"{shorten(r['response']) or '(empty)'}" + (" [cut off]" if r.get("cut_off") else ""))


def print_summary(results, samples=(), question=str):
    """what a finished run prints: the table of means, then (where the run has them) paired differences, reward
    model diagnostics, e-dpo's member minimum shares and a few samples, each prompt as question(prompt) shows it (a
    --chat-template run: the user's question, not the template's lines). results.json of an older run prints too."""
    runs = results["runs"]
    held = [d["heldout_pairs"] for d in results.get("data", []) if d.get("bias") is None and "heldout_pairs" in d]
    if held:  # your own data: the held-out accuracy (acc) rests on these pairs alone
        print(f"acc: the share of held-out pairs whose implicit margin is positive, on {min(held)}"
              + (f" to {max(held)}" if max(held) > min(held) else "") + " held-out pairs per seed (a tenth of your pairs)")
    print_table(results["summary"])
    print_paired(results["paired"] if "paired" in results else paired_comparisons(runs), len({r["seed"] for r in runs}))
    if results.get("reward_models"):
        print_reward_models(results["reward_models"])
    shares = member_min_shares(runs)
    if shares:
        print("e-dpo: share of training steps at which each family member gave the minimum (mean over seeds)")
        for bias, s in shares.items():
            print(bias_text(bias, width=5) + "  ".join(f"member {i + 1} {v:.2f}" for i, v in enumerate(s)))
    print_samples(list(samples), question=question)


# -----------------------------------------------------------------------------
# 5. a run shown again, two runs compared: python -m harness.report show RUN | compare RUN_A RUN_B


def read_results(path):
    """results.json of a run folder (or the file itself), or a UsageError that says what is wrong."""
    path = os.path.join(path, "results.json") if os.path.isdir(path) else path
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}; give a run folder or its results.json") from None


def show_run(path):
    """a run's printed summary again, from its folder: the tables the run printed when it ended, and its samples
    with each prompt as samples.jsonl keeps it (a chat run's in its template's text: this module reads no
    tokenizer). a run that has not finished (running, interrupted, failed) shows the method runs it finished, under
    a line that says so: its means and intervals rest on fewer seeds than it asked for."""
    results = read_results(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    status, done = results.get("run", {}).get("status", "unknown"), results.get("runs", [])
    if not done:
        raise UsageError(f"{path} has no finished method run yet; go on with python rddpo.py --resume {folder}")
    if status != "finished":
        cells = sorted({(r["bias"], r["seed"]) for r in done}, key=str)
        print(f"partial: the run is {status}; {len(done)} method runs over {len(cells)} (bias, seed) cells so far, "
              f"so every mean and interval below rests on fewer seeds than the run asked for")
    samples, shown = os.path.join(folder, "samples.jsonl"), []
    if os.path.exists(samples):
        for n, line in enumerate(open(samples, encoding="utf-8"), 1):
            try:
                shown.append(json.loads(line))
            except ValueError:
                raise UsageError(f"{samples} line {n} is not JSON; move the file aside to show the rest") from None
    print_summary(results, shown)


def compare_runs(a, b, keys=("win_rate", "gold_reward", "length", "kl", "logps_chosen_change")):
    """per (bias, method) that both runs trained: run b minus run a on each key, seed by seed (the seeds both ran),
    with its mean and 95 % interval. -> [dict(bias, method, key, seeds, diffs, mean, low, high)]"""
    out = []
    for method in dict.fromkeys(r["method"] for r in b["runs"]):
        records = [dict(r, method=side) for side, res in (("a", a), ("b", b)) for r in res["runs"] if r["method"] == method]
        out += [dict(p, method=method) for key in keys for p in paired(records, key, "a")]
    return out


def print_comparison(rows, names):
    print(f"{names[1]} minus {names[0]}, seed by seed: mean [95 % t-interval]; * the interval excludes 0")
    for p in sorted(rows, key=lambda p: (p["bias"], p["method"])):
        print(f"{bias_text(p['bias'], 'bias ')}{p['method']:<6} {p['key']:<20} {interval_text(p, 3)}  "
              f"(seeds {' '.join(map(str, p['seeds']))})")


def main(argv=None):
    p = ArgumentParser(description="show a run's summary again (python -m harness.report show RUN), or compare two "
                                   "runs of rddpo.py that share seeds, the same pairs and reward models per seed "
                                   "(python -m harness.report compare RUN_A RUN_B)")
    p.add_argument("command", choices=["show", "compare"])
    p.add_argument("runs", nargs="+", help="run folders (or their results.json): one to show; A, then B to compare")
    args = p.parse_args(argv)
    def command():
        wanted = 1 if args.command == "show" else 2
        if len(args.runs) != wanted:
            raise UsageError(f"{args.command} takes {wanted} run folder{'s' * (wanted > 1)}, not {len(args.runs)}")
        if args.command == "show":
            return show_run(args.runs[0])
        rows = compare_runs(*(read_results(path) for path in args.runs))
        if not rows:
            raise UsageError("the two runs share no (bias, method, seed); compare runs made with the same seeds")
        print_comparison(rows, args.runs)
    return cli(command)


if __name__ == "__main__":
    raise SystemExit(main())
