"""
report.py: everything around the method that does not teach it.

The command line (flags from a config dataclass, presets, checks made before any work), reading a data
file, loading a model from the Hugging Face hub or a cache, run folders, results.json, tables and
figures. rddpo.py, bench.py, toy_bandit.py and the notebooks share it; it imports none of them, and it
imports torch and transformers only inside the functions that need them (toy_bandit.py uses no torch).

  1. the command line     2. checks of the flags       3. a data file of pairs
  4. models from the hub  5. run folders and records   6. tables      7. figures
"""
import argparse
import dataclasses
import json
import os
import shutil
import socket
import sys
import time

import numpy as np
from tqdm import tqdm


class UsageError(Exception):
    """bad input from the user: reported as one `error:` line and exit status 2."""


class Interrupted(Exception):
    """ctrl-c: reported as one line that says what was kept and where, exit status 130."""


def cli(command, failures=()):
    """run command() as a program's main: exit status 0; a bad input (2), one of `failures` (1) or ctrl-c (130)
    is one line on stderr, never a traceback."""
    try:
        command()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except failures as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(e, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted; files written before this point are kept", file=sys.stderr)
        return 130
    return 0


def seed_everything(seed):
    """python's, numpy's and torch's global generators, for code that draws from them."""
    import random
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def progress(iterable, desc):
    """a progress bar on a terminal, silence in logs and tests."""
    return tqdm(iterable, desc=desc, mininterval=1, disable=None, leave=False)


# -----------------------------------------------------------------------------
# 1. the command line


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block, exit status 2
        self.exit(2, f"error: {message} (see --help)\n")


def parse_given(parser, argv=None):
    """parse argv -> (namespace with defaults filled in, names of the flags written on the command line)."""
    unset = object()
    dests = vars(parser.parse_args([]))
    ns = parser.parse_args(argv, namespace=argparse.Namespace(**{k: unset for k in dests}))
    given = {k for k, v in vars(ns).items() if v is not unset}
    return argparse.Namespace(**{k: v if k in given else dests[k] for k, v in vars(ns).items()}), given


def with_preset(args, given, preset):
    """a preset (--quick) sets defaults only: a flag written on the command line always wins."""
    if args.quick:
        vars(args).update({k: v for k, v in preset.items() if k not in given})
    return args


def parse_config(cls, argv, description, preset):
    """flags from the fields of a config dataclass (their metadata["help"] is the --help text), so that
    `Config(steps=5)` and `--steps 5` mean the same. returns (config, names of the flags given)."""
    p = ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flag, kw = "--" + f.name.replace("_", "-"), dict(default=default, help=f.metadata["help"])
        kw.update({"choices": f.metadata["choices"]} if "choices" in f.metadata else {})
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", **kw)
        elif isinstance(default, list):
            p.add_argument(flag, type=type(default[0]), nargs="+", **kw)
        else:
            p.add_argument(flag, type=type(default), **kw)
    args, given = parse_given(p, argv)
    return cls(**vars(with_preset(args, given, preset))), given


DEVICES = ["auto", "cuda", "mps", "cpu"]  # --device in rddpo.py and bench.py; auto takes cuda, then mps, then cpu


def pick_device(name):
    import torch
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name not in available:
        raise UsageError(f"unknown --device {name!r}; choose auto, cuda, mps or cpu")
    if not available[name]:
        raise UsageError(f"--device {name} is not available on this machine; use --device auto or cpu")
    return torch.device(name)


def check_seeds(seeds):
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds has a duplicate ({' '.join(map(str, seeds))}); give each seed once")
    if min(seeds) < 0:
        raise UsageError(f"--seeds must be >= 0 (got {min(seeds)})")


# -----------------------------------------------------------------------------
# 2. checks of rddpo's flags, made before any work


def check_config(cfg, methods, given=None):
    """each problem is one line that says how to fix it. `given`: the flags written on the command line
    (None: a Config built in code, whose fields are not checked for applying)."""
    checks = [
        (cfg.beta > 0, f"--beta must be > 0 (got {cfg.beta})"),
        (cfg.gamma >= 0, f"--gamma must be >= 0 (got {cfg.gamma})"),
        (0 <= cfg.bias <= 1, f"--bias must be in [0, 1] (got {cfg.bias})"),
        (cfg.ensemble >= 1, f"--ensemble must be >= 1 (got {cfg.ensemble})"),
        (cfg.steps >= 1 and cfg.rm_steps >= 1, "--steps and --rm-steps must be >= 1"),
        (cfg.batch_size >= 1, f"--batch-size must be >= 1 (got {cfg.batch_size})"),
        (cfg.lr > 0 and cfg.rm_lr > 0, "--lr and --rm-lr must be > 0"),
        (cfg.n_pairs >= 1 and cfg.n_eval >= 1, "--n-pairs and --n-eval must be >= 1"),
        (cfg.max_new_tokens >= 1 and cfg.max_length >= 8, "--max-new-tokens must be >= 1 and --max-length >= 8"),
        (cfg.log_every >= 1, "--log-every must be >= 1"),
        (cfg.data or cfg.batch_size <= cfg.n_pairs,
         f"--batch-size {cfg.batch_size} is larger than the {cfg.n_pairs} training pairs (--n-pairs); lower it"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    check_seeds(cfg.seeds)
    unknown = [m for m in cfg.method_list() if m not in methods]
    if unknown or not cfg.method_list():
        raise UsageError(f"unknown method {','.join(unknown) or '(none)'} in --methods; choose from {','.join(methods)}")
    for b in sweep_bias_list(cfg):
        if not 0 <= b <= 1:
            raise UsageError(f"--sweep-biases values must be in [0, 1] (got {b})")
    if given is not None:
        check_applies(cfg, given)


def check_applies(cfg, given):
    """a flag that would be ignored is an error, not a silent no-op."""
    methods = cfg.method_list()
    rules = [
        (cfg.data, ["bias", "n_pairs", "n_eval", "sweep", "sweep_biases"], "the built-in task only, not --data"),
        (not cfg.sweep, ["sweep_biases"], "--sweep only"),
        (cfg.sweep, ["bias"], "no run under --sweep, which takes --sweep-biases"),
        (cfg.model != "tiny", ["n_layer", "n_embd", "n_head", "pretrain_steps"], "the built-in tiny model only"),
        ("e-dpo" not in methods and "p-dpo" not in methods, ["gamma"], "e-dpo and p-dpo only"),
        ("e-dpo" not in methods, ["ensemble"], "e-dpo only"),
    ]
    for when, names, applies_to in rules:
        if when and [n for n in names if n in given]:
            flags = " ".join("--" + n.replace("_", "-") for n in names if n in given)
            raise UsageError(f"{flags} applies to {applies_to}; leave it out or change the other flags")
    for flag, values in (("--methods", methods), ("--sweep-biases", sweep_bias_list(cfg))):
        if len(set(values)) != len(values):
            raise UsageError(f"{flag} names a value twice; give each once")


def check_splits(splits, fits, batch_size, max_length):
    """each seed's (train, held-out) pairs: a batch of training pairs and one held-out pair whose prompt fits
    (fits(prompt) -> bool; None: every prompt fits)."""
    fits = fits or (lambda prompt: True)
    for train, held in splits:
        n_train = sum(fits(row[0]) for row in train)
        if n_train < batch_size:
            raise UsageError(f"--batch-size {batch_size} is larger than the {n_train} training pairs whose prompt fits "
                             f"in --max-length {max_length}; lower --batch-size or bring more pairs")
        if not any(fits(row[0]) for row in held):
            raise UsageError(f"no held-out prompt fits in --max-length {max_length}; raise it or shorten the prompts")


def sweep_bias_list(cfg):
    try:
        return [float(b) for b in cfg.sweep_biases.split(",")] if cfg.sweep else [cfg.bias]
    except ValueError:
        raise UsageError(f"--sweep-biases must be a comma list of numbers (got {cfg.sweep_biases!r})") from None


# -----------------------------------------------------------------------------
# 3. a data file of pairs


def read_pairs(path):
    """your own data: JSON lines with string fields prompt, chosen, rejected (TRL's format) -> [(p, c, r)]."""
    if not os.path.isfile(path):
        raise UsageError(f"--data file {path!r} not found")
    try:
        with open(path, encoding="utf-8-sig") as fh:  # -sig: a byte-order mark is not part of the first line
            lines = fh.read().split("\n")  # not splitlines(): json strings may hold u+2028 and other separators
    except UnicodeDecodeError as e:
        raise UsageError(f"--data {path!r} is not UTF-8 text (byte {e.start}); save it as UTF-8 JSON lines") from None
    first = next((line for line in lines if line.strip()), "")
    if "," in first and not is_json(first):
        raise UsageError(f"--data {path!r} looks like CSV; give JSON lines, one object "
                         '{"prompt": ..., "chosen": ..., "rejected": ...} per line')
    pairs = [read_pair(line, path, n) for n, line in enumerate(lines, 1) if line.strip()]
    if len(pairs) < 2:
        raise UsageError(f"--data {path!r} holds {len(pairs)} pairs; at least 2 are needed")
    return pairs


def is_json(text):
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


def read_pair(line, path, n):
    keys = ("prompt", "chosen", "rejected")
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}, line {n}: not valid JSON ({e.msg}); each line must be one JSON object") from None
    if not isinstance(row, dict) or any(k not in row for k in keys):
        raise UsageError(f"{path}, line {n}: needs the keys prompt, chosen and rejected")
    if not all(isinstance(row[k], str) for k in keys):
        raise UsageError(f"{path}, line {n}: prompt, chosen and rejected must be strings")
    if not row["chosen"].strip() or not row["rejected"].strip():
        raise UsageError(f"{path}, line {n}: chosen and rejected must not be empty")
    if row["chosen"] == row["rejected"]:
        raise UsageError(f"{path}, line {n}: chosen and rejected are identical, so the pair carries no preference")
    return tuple(row[k] for k in keys)


# -----------------------------------------------------------------------------
# 4. models from the hub, and the cached reference


def quiet_transformers():
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_pretrained(name, max_length):
    """(model, tokenizer) from_pretrained, with one clear line instead of a minute of retries when the hub is
    unreachable; checks that max_length fits the model's context, and pads with eos where there is no pad token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    quiet_transformers()
    if name.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(name)):
        raise UsageError(f"--model {name!r}: no such folder; give a model folder, a hub name such as gpt2, or tiny")
    name, local = os.path.expanduser(name), dict(local_files_only=True)
    if not os.path.isdir(name):
        try:  # already downloaded, whole? then load it without asking the hub
            AutoModelForCausalLM.from_pretrained(name, **local), AutoTokenizer.from_pretrained(name, **local)
        except OSError:
            local = {}
        if not local and (os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable()):
            raise UsageError(f"cannot load --model {name!r}: it is not a local folder, not in the Hugging Face cache, and the "
                             "hub cannot be reached; run offline with the default (no --model) or pass a local path")
    try:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(name, **local), AutoTokenizer.from_pretrained(name, **local)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load --model {name!r}: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:  # gpt-2 has no pad token: pad with eos, masked out everywhere
        tokenizer.pad_token = tokenizer.eos_token
    context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if context and max_length > context:
        raise UsageError(f"--max-length {max_length} exceeds the model's context of {context} tokens; lower it")
    return model, tokenizer


def hub_reachable(timeout=3.0):
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def cached_model(path, build):
    """(model, tokenizer) from the folder `path`, or from build() saved there. the folder is written whole
    under a temporary name, then renamed, so a half-written cache is never read; when two runs build it
    at once, the second keeps the first one's copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    quiet_transformers()
    if not os.path.isfile(os.path.join(path, "config.json")):
        model, tokenizer = build()
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, path)
            return model, tokenizer
        except OSError:  # another run renamed its copy into place first
            pass
        finally:  # renamed, or left behind by an error or ctrl-c: no temporary folder stays
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


# -----------------------------------------------------------------------------
# 5. run folders and records


def check_writable(out):
    """--out, or the folder that would hold it, can be written to; nothing is created yet."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out!r} is a file, not a folder; pass a folder (each run makes a new folder inside it)")
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"cannot create --out {out!r} ({parent} is a file); choose a folder you can write to")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to --out {out!r} (permission denied); choose a folder you can write to")


def new_run_dir(out, prefix="run"):
    """a fresh PREFIX-NNN folder inside --out: earlier results are never overwritten, and two runs started
    at once into the same --out get two folders."""
    check_writable(out)
    try:
        os.makedirs(out, exist_ok=True)
        taken = [int(d[len(prefix) + 1:]) for d in os.listdir(out)
                 if d.startswith(prefix + "-") and d[len(prefix) + 1:].isdigit()]
        for number in range(max(taken, default=0) + 1, max(taken, default=0) + 1000):
            path = os.path.join(out, f"{prefix}-{number:03d}")
            try:
                os.makedirs(path)
                return path
            except FileExistsError:  # taken by a run started at the same moment: try the next number
                continue
    except OSError as e:
        raise UsageError(f"cannot write to --out {out!r} ({e.strerror}); choose a folder you can write to") from None
    raise UsageError(f"no free {prefix}-NNN name in --out {out!r}; choose another folder")


def write_json(path, obj):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)  # whole or not at all


class RunRecord:
    """one run's folder: metrics.jsonl (a json line per logged step, echoed as one printed line) and
    results.json, written when the run ends, whole, however it ends (finished, a diverged loss, ctrl-c):
      config   the run's settings        device   where it ran        seconds  wall time after loading
      runs     one record per (bias, seed, method): the keys of rddpo.evaluate, train_seconds
      data     one entry per (bias, seed): pairs, skipped, truncated, longer_won (rddpo.prepare)
      summary  mean and sd over seeds per (bias, method) (summarize)
      curves   the first bias's and seed's logged rows per method, as in metrics.jsonl"""

    def __init__(self, out, config, device, curve_key):
        self.dir, self.curve_key, self.t0 = new_run_dir(out), curve_key, time.time()
        self.results = dict(config=config, device=str(device), runs=[], data=[])
        self.curves, self.fh = {}, open(os.path.join(self.dir, "metrics.jsonl"), "w")
        print(f"writing to {self.dir} (device {device})")

    def log(self, row):
        self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()
        tqdm.write(f"bias {row['bias']:.2f} seed {row['seed']} {row['method']:<5} step {row['step']:>4}  "
                   f"loss {row['loss']:8.4f}  margin {row['rewards/margins']:7.3f}  "
                   f"acc {row['rewards/accuracies']:.2f}  dlogp chosen {row['logps/chosen_change']:7.2f}  "
                   f"rejected {row['logps/rejected_change']:7.2f}")
        if (row["bias"], row["seed"]) == self.curve_key:
            self.curves.setdefault(row["method"], []).append(row)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        self.fh.close()
        runs = self.results["runs"]
        self.results.update(summary=summarize(runs) if runs else [], seconds=time.time() - self.t0, curves=self.curves)
        path = os.path.join(self.dir, "results.json")
        write_json(path, self.results)
        if kind is KeyboardInterrupt:
            raise Interrupted(f"interrupted: {len(runs)} finished method runs kept in {path}") from None

    def finish(self, methods):
        """figures and the printed table of a finished run."""
        plot(self.results, self.dir, self.curves, methods)
        print_table(self.results["summary"])
        print(f"done in {time.time() - self.t0:.0f} s; results, metrics and figures in {self.dir}")


# -----------------------------------------------------------------------------
# 6. tables

KEYS = ["gold_reward", "win_rate", "length", "kl", "gold_ref", "length_ref", "logps_chosen_change", "logps_rejected_change",
        "margin_mean", "margin_max", "heldout_accuracy", "train_seconds"]
COLUMNS = [("gold_reward", "gold"), ("win_rate", "win"), ("length", "len"), ("kl", "KL"),
           ("logps_chosen_change", "dlogp_w"), ("logps_rejected_change", "dlogp_l"), ("margin_max", "margin_max"),
           ("heldout_accuracy", "acc")]


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
            rows.append([f"{s['bias']:.2f}", "pi_ref", f"{s['gold_ref_mean']:.{digits}f}", f"{0.5:.{digits}f}",
                         f"{s['length_ref_mean']:.{digits}f}"] + [""] * (len(cols) - 3))
        rows.append([f"{s['bias']:.2f}", s["method"]] + [f"{s[k + '_mean']:.{digits}f}" + (
            f" ±{s[k + '_std']:.{digits}f}" if s["seeds"] > 1 else "") for k, _ in cols])
    return ["bias", "method"] + [name for _, name in cols], rows


def print_table(summary):
    header, rows = table_rows(summary)
    for row in [header] + rows:
        print(f"{row[0]:>5} {row[1]:<6} " + " ".join(f"{c:>15}" for c in row[2:]).rstrip())


def markdown_table(summary, digits=3):
    header, rows = table_rows(summary, digits)
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header)] + rows)


# -----------------------------------------------------------------------------
# 7. figures


def plot(results, run_dir, curves, methods):
    """curves.png (the first run's training curves), comparison.png (the first bias's results) and, over
    several biases, sweep.png. `methods` fixes each method's colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plot_curves(curves, os.path.join(run_dir, "curves.png"), plt)
    plot_comparison(results["summary"], os.path.join(run_dir, "comparison.png"), plt, methods)
    if len({s["bias"] for s in results["summary"]}) > 1:
        plot_sweep(results["summary"], os.path.join(run_dir, "sweep.png"), plt, methods)
    plt.close("all")


def plot_curves(curves, path, plt):
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for method, rows in curves.items():
        steps = [r["step"] for r in rows]
        for ax, key in zip(axes, ["logps/chosen_change", "logps/rejected_change", "rewards/margins"]):
            ax.plot(steps, [r[key] for r in rows], label=method)
    for ax, title in zip(axes, ["log pi(chosen) - log pi_ref(chosen)", "log pi(rejected) - log pi_ref(rejected)",
                                "implicit reward margin (batch mean)"]):
        ax.set(title=title, xlabel="step")
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_comparison(summary, path, plt, methods):
    summary = [s for s in summary if s["bias"] == summary[0]["bias"]]
    keys = [k for k in ("gold_reward", "win_rate", "length", "kl", "heldout_accuracy") if f"{k}_mean" in summary[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.4))
    for ax, k in zip(np.atleast_1d(axes), keys):
        ax.bar([s["method"] for s in summary], [s[f"{k}_mean"] for s in summary],
               yerr=[s[f"{k}_std"] for s in summary], color=[f"C{methods.index(s['method'])}" for s in summary])
        ax.set_title(k.replace("_", " "))
    seeds = summary[0]["seeds"]
    fig.suptitle(f"bias {summary[0]['bias']}, " + (f"mean and sd over {seeds} seeds" if seeds > 1 else "one seed"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_sweep(summary, path, plt, methods):
    """the headline figure: gold win rate and length against the annotator's length bias."""
    keys = [k for k in ("win_rate", "length") if f"{k}_mean" in summary[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4))
    for method in dict.fromkeys(s["method"] for s in summary):
        rows = [s for s in summary if s["method"] == method]
        for ax, k in zip(np.atleast_1d(axes), keys):
            ax.errorbar([s["bias"] for s in rows], [s[f"{k}_mean"] for s in rows], yerr=[s[f"{k}_std"] for s in rows],
                        label=method, marker="o", capsize=3, color=f"C{methods.index(method)}")
    ref = [s for s in summary if s["method"] == summary[0]["method"]]
    labels = {"win_rate": "gold win rate against pi_ref's samples", "length": "mean response length (words)"}
    for ax, k in zip(np.atleast_1d(axes), keys):
        if k == "win_rate":
            ax.axhline(0.5, color="grey", ls="--", lw=1, label="pi_ref")
        elif "length_ref_mean" in ref[0]:
            ax.plot([s["bias"] for s in ref], [s["length_ref_mean"] for s in ref], "--", color="grey", label="pi_ref")
        ax.set(xlabel="share of labels from the length-biased annotator", ylabel=labels[k])
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(f"mean and sd over {summary[0]['seeds']} seeds" if summary[0]["seeds"] > 1 else "one seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
