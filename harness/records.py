"""records.py: a run's folder and what it writes there.

A new run-NNN folder per run (never an earlier run's), results.json written at the start and whole again however
the run ends, metrics.jsonl (one line per logged step), samples.jsonl, and what the run was: versions, platform,
git commit, command, times.
"""
import datetime
import json
import os
import platform
import shlex
import subprocess
import time
from importlib import metadata

import numpy as np
from tqdm import tqdm

from harness.cli import Interrupted, UsageError
from harness.figures import plot
from harness.report import bias_text, paired_comparisons, print_summary, summarize


# -----------------------------------------------------------------------------
# 1. run folders


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


def write_whole(path, text):
    """text to path under a temporary name, then renamed: a reader sees the file whole or not at all."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json(path, obj):
    write_whole(path, json.dumps(obj, indent=1))


# -----------------------------------------------------------------------------
# 2. what the run was


def iso_time(t):
    """a time.time() value as ISO 8601 local time with its offset: 2026-11-30T14:05:09+01:00."""
    return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def package_version(name):
    try:
        return metadata.version(name)  # read from the installed metadata: torch is not imported for it
    except metadata.PackageNotFoundError:
        return None


def git_state(folder):
    """{git_commit, git_dirty} of the checkout that holds `folder`, both None where it is not a git checkout or
    git is missing or stuck: a run never fails because of git. dirty: any change git sees, untracked files too."""
    def git(*args):
        return subprocess.run(["git", "--no-optional-locks", "-C", folder, *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout
    try:
        return dict(git_commit=git("rev-parse", "HEAD").strip(), git_dirty=bool(git("status", "--porcelain").strip()))
    except (OSError, subprocess.SubprocessError):
        return dict(git_commit=None, git_dirty=None)


def run_info(argv, started, program="rddpo.py"):
    """the fixed part of results.json's "run": versions, platform, git commit, the command and `started` (a
    time.time() value taken before the reference is loaded or pretrained). argv: the arguments after the program,
    as main(argv) gets them; None: not run from a command line (a notebook, a test), and command is None."""
    command = None if argv is None else shlex.join(["python", program] + [str(a) for a in argv])
    return dict(python=platform.python_version(), torch=package_version("torch"),
                transformers=package_version("transformers"), numpy=np.__version__, platform=platform.platform(),
                **git_state(os.path.dirname(os.path.abspath(__file__))), command=command, started=iso_time(started))


def one_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


# -----------------------------------------------------------------------------
# 3. the record of a run


class RunRecord:
    """one run's folder: metrics.jsonl (a json line per logged step, echoed as one printed line) and results.json,
    written at the start with status "running" (a run that dies leaves a record that says so; save() rewrites it
    at any time) and whole again when the run ends, however it ends: finished, failed (a diverged loss, any error:
    its one-line text) or interrupted (ctrl-c):
      run      status, error, versions, platform, git commit, command, started, ended, wall_seconds (run_info;
               wall time from `started`, which the caller takes before loading the reference)
      config   the run's settings        device   where it ran        seconds  wall time after loading
      runs     one record per (bias, seed, method): the keys of experiment.evaluate, checkpoints, train_seconds
      data     one entry per (bias, seed): pairs, skipped, truncated, longer_won, heldout_pairs (experiment.prepare)
      reward_models  one entry per (bias, seed, reward model), filled by the caller
      summary  mean and sd over seeds per (bias, method) (summarize)
      paired   per-seed differences between methods with 95 % t-intervals (paired_comparisons)
      curves   {bias: {method: logged rows}} for every bias at curve_key's seed, as in metrics.jsonl
    curve_key: (bias, seed) of the first run; curves are kept for its seed at every bias."""

    def __init__(self, out, config, device, curve_key, info, started):
        self.dir, self.curve_key, self.started, self.t0 = new_run_dir(out), curve_key, started, time.time()
        self.path = os.path.join(self.dir, "results.json")
        self.results = dict(run=dict(status="running", error=None, **info, ended=None, wall_seconds=None),
                            config=config, device=str(device), runs=[], data=[], reward_models=[])
        self.curves, self.samples = {}, []
        self.fh = open(os.path.join(self.dir, "metrics.jsonl"), "w")
        self.save()
        print(f"writing to {self.dir} (device {device})")

    def log(self, row):
        self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()
        tqdm.write(f"{bias_text(row['bias'], 'bias ')}seed {row['seed']} {row['method']:<5} step {row['step']:>4}  "
                   f"loss {row['loss']:8.4f}  margin {row['rewards/margins']:7.3f}  "
                   f"acc {row['rewards/accuracies']:.2f}  dlogp chosen {row['logps/chosen_change']:7.2f}  "
                   f"rejected {row['logps/rejected_change']:7.2f}")
        if row["seed"] == self.curve_key[1]:  # keyed by str(bias), as results.json keys it anyway
            self.curves.setdefault(str(row["bias"]), {}).setdefault(row["method"], []).append(row)

    def save(self, status="running", error=None):
        """results.json, whole, as it stands; ended and wall_seconds once the run has ended."""
        now, runs = time.time(), self.results["runs"]
        ended = status != "running"
        self.results["run"].update(status=status, error=error, ended=iso_time(now) if ended else None,
                                   wall_seconds=now - self.started if ended else None)
        self.results.update(summary=summarize(runs) if runs else [], paired=paired_comparisons(runs),
                            seconds=now - self.t0, curves=self.curves)
        write_json(self.path, self.results)

    def add(self, record, samples=()):
        """a finished method run's record and its samples, written at once: finished runs survive even a hard kill."""
        self.results["runs"].append(record)
        self.samples += list(samples)
        write_samples(os.path.join(self.dir, "samples.jsonl"), self.samples)
        self.save()

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        self.fh.close()
        if kind is None:
            self.save("finished")
        elif issubclass(kind, KeyboardInterrupt):
            self.save("interrupted")
            n = len(self.results["runs"])
            raise Interrupted(f"interrupted: {n} finished method runs kept in {self.path}") from None
        else:  # the error goes on up, as it came
            self.save("failed", one_line(error))

    def finish(self, methods, question=str):
        """figures and the printed summary of a finished run, with a few of its samples (report.print_summary)."""
        plot(self.results, self.dir, self.curves, methods)
        print_summary(self.results, self.samples, question)
        print(f"done in {time.time() - self.started:.0f} s of wall time, loading (or pretraining) the reference "
              f"included; results, metrics, samples and figures in {self.dir}")


def write_samples(path, rows):
    """samples.jsonl: one json object per line, {bias, seed, prompt, policy (pi_ref or a method), response, tokens,
    cut_off (hit --max-new-tokens), length (words), gold (None on your own data), logratio (log pi(y|x) -
    log pi_ref(y|x), nats; 0 for pi_ref)}."""
    write_whole(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_samples(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
