"""records.py: a run's folder and what it writes there.

A new run-NNN folder per run (never an earlier run's), results.json written at the start and whole again however
the run ends, metrics.jsonl (one line per logged step), samples.jsonl, and what the run was: versions, platform,
git commit, command, times. An unfinished run's folder reopened to go on with (--resume).
"""
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import time
from importlib import metadata

import numpy as np
from tqdm import tqdm

from harness.cli import Interrupted, Terminated, UsageError
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
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:  # an error, ctrl-c or SIGTERM while writing: no temporary file is left
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
    its one-line text) or interrupted (ctrl-c or SIGTERM: run.interrupted_by says which):
      run      status, error, versions, platform, git commit, command, started, ended, wall_seconds (run_info;
               wall time from `started`, which the caller takes before loading the reference); resumed: one entry
               per --resume (reopen)
      config   the run's settings        device   where it ran        seconds  wall time after loading
      runs     one record per (bias, seed, method): the keys of experiment.evaluate, checkpoints, train_seconds
      data     one entry per (bias, seed): pairs, skipped, truncated, longer_won, heldout_pairs (experiment.prepare)
      reward_models  one entry per (bias, seed, reward model), filled by the caller
      summary  mean and sd over seeds per (bias, method) (summarize)
      paired   per-seed differences between methods with 95 % t-intervals (paired_comparisons)
      curves   {bias: {method: logged rows}} for every bias at curve_key's seed, as in metrics.jsonl
    curve_key: (bias, seed) of the first run; curves are kept for its seed at every bias. prepared/ holds the
    caller's per-(bias, seed) preparations (prepared_path) until the run finishes."""

    def __init__(self, out, config, device, curve_key, info, started):
        results = dict(run=dict(status="running", error=None, **info, ended=None, wall_seconds=None),
                       config=config, device=str(device), runs=[], data=[], reward_models=[])
        self.open(new_run_dir(out), results, curve_key, started)
        print(f"writing to {self.dir} (device {device})")

    @classmethod
    def reopen(cls, folder, curve_key, info, started):
        """an unfinished run's folder (read_run), to go on with (--resume): what its finished method runs left is
        kept as it is (their records, samples, metrics rows and curves, and the data, reward models and pi_ref
        samples of their (bias, seed)s); what it left of the rest is dropped, to be made again as an uninterrupted
        run makes it. metrics.jsonl is rewritten whole with the kept rows, then appended to. the run's start,
        command and config stay; run.resumed gets this session's info, and how the run had ended; wall_seconds and
        seconds add up the sessions (a killed one's up to its last save)."""
        self, results = cls.__new__(cls), read_run(folder)
        done = {(r["bias"], r["seed"], r["method"]) for r in results["runs"]}
        begun = {key[:2] for key in done}
        for part in ("data", "reward_models"):
            results[part] = [d for d in results[part] if (d["bias"], d["seed"]) in begun]
        path = os.path.join(folder, "samples.jsonl")
        samples = [r for r in (read_samples(path) if os.path.exists(path) else []) if (r["bias"], r["seed"]) in begun
                   and (r["policy"] == "pi_ref" or (r["bias"], r["seed"], r["policy"]) in done)]
        rows = [r for r in read_rows(os.path.join(folder, "metrics.jsonl"))
                if (r.get("bias"), r.get("seed"), r.get("method")) in done]
        run, seconds = results["run"], results.get("seconds") or 0
        note_other_code(run, info)
        ended = dict(after=run["status"], interrupted_by=run.pop("interrupted_by", None))  # how the last session ended
        run.setdefault("resumed", []).append(dict(info, **ended))
        self.open(folder, results, curve_key, started - (run["wall_seconds"] or seconds), rows, samples,
                  time.time() - seconds)
        print(f"resuming {folder}: {len(done)} finished method runs kept (device {results['device']})")
        return self

    def open(self, folder, results, curve_key, started, rows=(), samples=(), t0=None):
        """the folder's metrics.jsonl (the rows given, then appended to) and results.json, status running."""
        self.dir, self.curve_key, self.started, self.t0 = folder, curve_key, started, time.time() if t0 is None else t0
        self.path, self.results = os.path.join(folder, "results.json"), results
        self.curves, self.samples = {}, list(samples)
        for row in rows:
            self.keep_curve(row)
        metrics = os.path.join(folder, "metrics.jsonl")
        write_whole(metrics, "".join(json.dumps(row) + "\n" for row in rows))
        self.fh = open(metrics, "a")
        self.save()

    def log(self, row):
        self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()
        tqdm.write(f"{bias_text(row['bias'], 'bias ')}seed {row['seed']} {row['method']:<5} step {row['step']:>4}  "
                   f"loss {row['loss']:8.4f}  margin {row['rewards/margins']:7.3f}  "
                   f"acc {row['rewards/accuracies']:.2f}  dlogp chosen {row['logps/chosen_change']:7.2f}  "
                   f"rejected {row['logps/rejected_change']:7.2f}")
        self.keep_curve(row)

    def keep_curve(self, row):
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
        """a finished method run's record and its samples, written at once: finished runs survive even a hard kill.
        the samples first, so that a record in results.json always has its samples in samples.jsonl."""
        rows = self.samples + list(samples)
        write_samples(os.path.join(self.dir, "samples.jsonl"), rows)
        self.samples = rows
        self.results["runs"].append(record)
        self.save()

    def done(self, bias, seed, method=None):
        """the record holds this method run (without a method: one of this bias and seed's)."""
        return any((r["bias"], r["seed"]) == (bias, seed) and method in (None, r["method"])
                   for r in self.results["runs"])

    def has_data(self, bias, seed):
        """this bias and seed is wholly done: its data entry is added after its last method run."""
        return any((d["bias"], d["seed"]) == (bias, seed) for d in self.results["data"])

    def prepared_path(self, bias, seed):
        """where a (bias, seed)'s preparation is kept for --resume until the run finishes."""
        return os.path.join(self.dir, "prepared", f"{'' if bias is None else f'bias{bias}-'}seed{seed}.pt")

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        self.fh.close()
        if kind is None:
            self.save("finished")
            shutil.rmtree(os.path.join(self.dir, "prepared"), ignore_errors=True)  # of use to --resume only
        elif issubclass(kind, KeyboardInterrupt):
            self.results["run"]["interrupted_by"] = by = "SIGTERM" if issubclass(kind, Terminated) else "ctrl-c"
            self.save("interrupted")
            n, again = len(self.results["runs"]), shlex.join(["python", "rddpo.py", "--resume", self.dir])
            raise Interrupted(f"interrupted by {by}: {n} finished method runs kept in {self.path}; "
                              f"to go on: {again}", by) from None
        else:  # the error goes on up, as it came
            self.save("failed", one_line(error))

    def finish(self, methods, question=str):
        """figures and the printed summary of a finished run, with a few of its samples (report.print_summary)."""
        plot(self.results, self.dir, self.curves, methods)
        print_summary(self.results, self.samples, question)
        print(f"done in {time.time() - self.started:.0f} s of wall time, loading (or pretraining) the reference "
              f"included; results, metrics, samples and figures in {self.dir}")


def read_run(folder):
    """the results.json of an unfinished run, for --resume; a folder without one, a finished run or a --grid run is
    a UsageError."""
    try:
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as fh:
            results = json.load(fh)
    except (OSError, ValueError):
        results = None
    config = results.get("config") if isinstance(results, dict) else None
    if isinstance(config, dict) and (config.get("grid") or "rows" in results):
        raise UsageError(f"--resume {folder}: a --grid run, which --resume does not continue; resume its unfinished "
                         "run-NNN folders one by one, or start the grid again")
    status = results["run"].get("status") if isinstance(config, dict) and isinstance(results.get("run"), dict) else None
    if status == "finished":
        raise UsageError(f"--resume {folder}: this run has finished, so there is nothing to resume; "
                         "start a new run without --resume")
    if status not in ("running", "interrupted", "failed") or not isinstance(results.get("device"), str) or \
            not all(isinstance(results.get(k), list) for k in ("runs", "data", "reward_models")):
        raise UsageError(f"--resume {folder}: not a run's folder (no readable results.json of a run); "
                         "pass one such as runs/run-001")
    return results


def read_rows(path):
    """metrics.jsonl's rows; a missing file, or a line cut short by a killed process, gives none."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def note_other_code(run, info):
    """one line where another commit or torch resumes a run than started it: its numbers may differ."""
    other = [f"{k} {run.get(k)} (now {info.get(k)})" for k in ("git_commit", "torch") if run.get(k) != info.get(k)]
    if other:
        print(f"note: the run started with {', '.join(other)}; what this session computes may differ from what "
              "an uninterrupted run would have")


def write_samples(path, rows):
    """samples.jsonl: one json object per line, {bias, seed, prompt, policy (pi_ref or a method), response, tokens,
    cut_off (hit --max-new-tokens), length (words), gold (None on your own data), logratio (log pi(y|x) -
    log pi_ref(y|x), nats; 0 for pi_ref)}."""
    write_whole(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_samples(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
