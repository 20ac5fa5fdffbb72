"""
report.py: everything around the method that does not teach it.

The command line (flags from a config dataclass, presets, checks made before any work), reading a data
file, loading a model from the Hugging Face hub or a cache, run folders and records, results.json, paired
statistics, tables, figures, and the token-level plumbing (padding, a word-level tokenizer, a pretraining
loop, sampling with a key-value cache). rddpo.py, bench.py, toy_bandit.py and the notebooks share it; it
imports none of them, and it imports torch and transformers only inside the functions that need them
(toy_bandit.py uses no torch).

  1. the command line     2. checks of the flags       3. a data file of pairs
  4. models from the hub  5. run folders and records   6. tables      7. figures
  8. evaluation records   9. token ids: padding, tokenizer, pretraining, sampling
 10. two runs compared, seed by seed:  python report.py compare RUN_A RUN_B
"""
import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata

import numpy as np
from tqdm import tqdm


class UsageError(Exception):
    """bad input from the user: reported as one `error:` line and exit status 2."""


class TrainingDiverged(Exception):
    """a nan or inf loss: training stops, and what was written so far is kept (exit status 1)."""


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
        if default is None:  # the help says what None stands for; '%(default).0s' keeps "(default: None)" off it
            kw["help"] += "%(default).0s"
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", **kw)
        elif isinstance(default, list):
            p.add_argument(flag, type=type(default[0]) if default else str, nargs="+", **kw)
        else:
            p.add_argument(flag, type=f.metadata.get("type", type(default)), **kw)
    args, given = parse_given(p, argv)
    return cls(**vars(with_preset(args, given, preset))), given


DEVICES = ["auto", "cuda", "mps", "cpu"]  # --device in rddpo.py and bench.py; auto takes cuda, then mps, then cpu
DTYPES = ("float32", "bfloat16")  # rddpo.py's --dtype


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


def precision(device, dtype):
    """--dtype: bfloat16 runs the models' forward passes under autocast (weights, optimizer state and the sequence
    log-probs stay float32); float32 changes nothing. -> a context manager"""
    import torch
    if dtype == "bfloat16" and device.type == "mps":
        raise UsageError("--dtype bfloat16 runs on cuda or cpu; use --dtype float32 on mps")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


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
        ((cfg.lr is None or cfg.lr > 0) and cfg.rm_lr > 0, "--lr and --rm-lr must be > 0"),
        (cfg.n_pairs >= 1 and cfg.n_eval >= 1, "--n-pairs and --n-eval must be >= 1"),
        (cfg.max_new_tokens >= 1 and cfg.max_length >= 8, "--max-new-tokens must be >= 1 and --max-length >= 8"),
        (cfg.log_every >= 1, "--log-every must be >= 1"),
        (cfg.eval_points >= 1, f"--eval-points must be >= 1 (got {cfg.eval_points})"),
        (cfg.unlabeled >= 0 and (cfg.sft_steps or 0) >= 0, "--unlabeled and --sft-steps must be >= 0"),
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


TASK_ONLY = ["bias", "gold", "n_pairs", "n_eval", "sweep", "sweep_biases"]  # the built-in task's flags


def check_applies(cfg, given):
    """a flag that would be ignored is an error, not a silent no-op."""
    methods = cfg.method_list()
    rules = [
        (cfg.data, TASK_ONLY, "the built-in task only, not --data"),
        (not cfg.data or cfg.model == "tiny", ["chat_template"], "--data on a --model with a chat template"),
        (not cfg.sweep, ["sweep_biases"], "--sweep only"),
        (cfg.sweep, ["bias"], "no run under --sweep, which takes --sweep-biases"),
        (cfg.model != "tiny", ["n_layer", "n_embd", "n_head"], "the built-in tiny model only"),
        ("e-dpo" not in methods and "p-dpo" not in methods, ["gamma"], "e-dpo and p-dpo only"),
        ("e-dpo" not in methods, ["ensemble"], "e-dpo only"),
        ("d-dpo" not in methods and "e-dpo" not in methods, ["unlabeled"], "d-dpo and e-dpo only"),
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


def check_data(pairs, splits, tokenizer, cfg):
    """your pairs against the model's tokenizer, before any training: every seed's split has a batch of pairs whose
    prompt fits in --max-length, and no word is unknown to the tokenizer (the built-in tiny model knows only the
    task's words: anything else would silently become <unk>)."""
    if not pairs:
        return
    unk = tokenizer.unk_token_id
    if unk is not None:
        ids = [i for row in pairs for text in row for i in tokenizer(text, add_special_tokens=False).input_ids]
        if unk in ids:
            who = "the built-in tiny model, which knows only the task's words" if cfg.model == "tiny" \
                else f"the tokenizer of --model {cfg.model}"
            raise UsageError(f"{ids.count(unk) / len(ids):.1%} of the tokens of --data {cfg.data} are unknown to {who}; "
                             "pass --model with a real causal LM (a folder, e.g. from convert_gguf.py, or gpt2)")
    check_splits(splits, lambda p: fits(tokenizer, p, cfg.max_length), cfg.batch_size, cfg.max_length)


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


def user_pairs(cfg):
    """--data's pairs, wrapped in the model's chat template under --chat-template; None without --data."""
    pairs = read_pairs(cfg.data) if cfg.data else None
    return with_chat_template(pairs, cfg.model) if pairs and cfg.chat_template else pairs


def fits(tokenizer, prompt, max_length):
    """True when the prompt leaves room for at least one response token within max_length."""
    return len(tokenizer(prompt, add_special_tokens=False).input_ids) < max_length


def fitting(tokenizer, prompts, max_length):
    """the prompts that fit (fits)."""
    return [p for p in prompts if fits(tokenizer, p, max_length)]


def chat_tokenizer(model):
    """the tokenizer of `model` for --chat-template, or a UsageError when it cannot be loaded or has no template."""
    from transformers import AutoTokenizer
    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(model))  # a folder, the cache, or the hub
    except (OSError, ValueError) as e:
        raise UsageError(f"--chat-template: cannot load the tokenizer of --model {model!r}: {str(e).splitlines()[0]}") \
            from None
    if not tokenizer.chat_template:
        raise UsageError(f"--chat-template: --model {model!r} has no chat template; leave the flag out")
    return tokenizer


def as_users_turn(tokenizer, prompt):
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def with_chat_template(pairs, model):
    """--chat-template: each prompt as the user's turn of `model`'s chat template, ready for the assistant's reply
    (an instruct model answers a bare prompt with little or nothing)."""
    tokenizer = chat_tokenizer(model)
    return [(as_users_turn(tokenizer, p), c, r) for p, c, r in pairs]


def users_question(model):
    """for printing a --chat-template run: a function from a wrapped prompt back to the user's question, the text
    between what the template writes before and after the user's turn (found by wrapping a marker); a text the
    template did not write, or a model whose tokenizer cannot be loaded, comes back as it is."""
    try:
        before, _, after = as_users_turn(chat_tokenizer(model), "\x00").partition("\x00")
    except UsageError:
        return lambda text: text
    def question(text):
        inside = text.startswith(before) and text.endswith(after) and len(text) >= len(before) + len(after)
        return text[len(before):len(text) - len(after)] if inside else text
    return question


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


def slug(name):
    """a model name or path as one folder name: gpt2 -> gpt2, ./models/my-lm -> models-my-lm."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


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


def write_whole(path, text):
    """text to path under a temporary name, then renamed: a reader sees the file whole or not at all."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json(path, obj):
    write_whole(path, json.dumps(obj, indent=1))


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


class RunRecord:
    """one run's folder: metrics.jsonl (a json line per logged step, echoed as one printed line) and results.json,
    written at the start with status "running" (a run that dies leaves a record that says so; save() rewrites it
    at any time) and whole again when the run ends, however it ends: finished, failed (a diverged loss, any error:
    its one-line text) or interrupted (ctrl-c):
      run      status, error, versions, platform, git commit, command, started, ended, wall_seconds (run_info;
               wall time from `started`, which the caller takes before loading the reference)
      config   the run's settings        device   where it ran        seconds  wall time after loading
      runs     one record per (bias, seed, method): the keys of rddpo.evaluate, checkpoints, train_seconds
      data     one entry per (bias, seed): pairs, skipped, truncated, longer_won, heldout_pairs (rddpo.prepare)
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

    def finish(self, methods):
        """figures and the printed summary of a finished run, with a few of its samples."""
        plot(self.results, self.dir, self.curves, methods)
        print_summary(self.results, self.samples)
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


# -----------------------------------------------------------------------------
# 6. tables

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


def print_summary(results, samples=()):
    """what a finished run prints: the table of means, then (where the run has them) paired differences, reward
    model diagnostics, e-dpo's member minimum shares and a few samples. results.json of an older run prints too."""
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
    config = results.get("config", {})  # a chat template's run shows the user's question, not the template's lines
    print_samples(list(samples), question=users_question(config["model"]) if config.get("chat_template") else str)


# -----------------------------------------------------------------------------
# 7. figures: each with units, pi_ref's baseline where it has one, and the run's settings in its title


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


# -----------------------------------------------------------------------------
# 8. evaluation records: data splits, reward-model diagnostics, sample rows


def batch_metrics(loss, policy_logps, reference_logps, beta, forward_kl=None):
    """a training step's log line under trl's names for the usual dpo diagnostics, plus the change of the log-probs
    from the reference and, for e-DPO and p-DPO, the forward-KL term on the step's pool responses (forward_kl).
    policy_logps, reference_logps (2B,): the batch's chosen rows, then its rejected rows."""
    pc, pr = policy_logps.detach().cpu().chunk(2)
    rc, rr = reference_logps.chunk(2)
    r_w, r_l = beta * (pc - rc), beta * (pr - rr)  # (B,), (B,): the implicit rewards
    return {"loss": loss.item(), "rewards/chosen": r_w.mean().item(), "rewards/rejected": r_l.mean().item(),
            "rewards/margins": (r_w - r_l).mean().item(), "rewards/accuracies": (r_w > r_l).float().mean().item(),
            "logps/chosen": pc.mean().item(), "logps/rejected": pr.mean().item(),
            "logps/chosen_change": (pc - rc).mean().item(), "logps/rejected_change": (pr - rr).mean().item(),
            **({"kl/forward": forward_kl} if forward_kl is not None else {})}


def split_pairs(pairs, seed):
    """(train, held-out) lists of (prompt, chosen, rejected). choice: a random tenth, at least one pair, is held out."""
    order = np.random.default_rng([seed, 1]).permutation(len(pairs))
    n_held = max(1, len(pairs) // 10)
    return [pairs[i] for i in order[n_held:]], [pairs[i] for i in order[:n_held]]


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


def sample_rows(prompts, drawn, eos, gold_reward=None, logratio=None):
    """samples.jsonl rows of the responses drawn (a Sampled) for the prompts given; zip stops at the shorter."""
    return [dict(prompt=p, response=t, tokens=len(ids), cut_off=eos not in ids, length=n_words(t),
                 **({"gold": gold_reward(t)} if gold_reward else {}), logratio=0.0 if logratio is None else logratio[i])
            for i, (p, t, ids) in enumerate(zip(prompts, drawn.texts, drawn.response_ids))]


# -----------------------------------------------------------------------------
# 9. token ids: padding, a word-level tokenizer, sampling with a key-value cache


def pad(rows, pad_id, side="right", masks=None):
    """lists of ids -> input_ids (N, T) and attention_mask (N, T) [, and each extra mask (N, T)]."""
    import torch
    T = max(map(len, rows))
    def fill(row, value):
        return [value] * (T - len(row)) + row if side == "left" else row + [value] * (T - len(row))
    out = [torch.tensor([fill(r, pad_id) for r in rows]), torch.tensor([fill([1] * len(r), 0) for r in rows])]
    return tuple(out + [torch.tensor([fill(m, 0) for m in ms]) for ms in (masks or [])])


def next_token_steps(model, batch, steps, lr, desc):
    """steps of AdamW on the next-token loss of batch(step) = (input_ids, attention_mask, labels), labels -100 where
    a token is not learnt; the model comes back in eval mode. pretrain and fine_tune are this loop."""
    import torch
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in progress(range(steps), desc):
        ids, mask, labels = batch(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def pretrain(model, tokenizer, texts, steps, device, lr=3e-3):
    """next-token training on texts(rng), a batch of texts per step (rng: a fixed generator), each ending in eos."""
    rng = np.random.default_rng(1234)
    def batch(step):
        rows = [tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in texts(rng)]
        ids, mask = (x.to(device) for x in pad(rows, tokenizer.eos_token_id))  # (B, T) each
        return ids, mask, ids.masked_fill(mask == 0, -100)
    return next_token_steps(model, batch, steps, lr, "pretrain")


TASK_SFT_STEPS, QUICK_SFT_STEPS = 600, 150  # --sft-steps on the built-in task, and under --quick


def learning_rate(cfg, model):
    """--lr, or its default. choice: 1e-4 for the tiny model at any size (the rate its results were made at); for a
    --model, 1e-4 x 64 / its width (hidden size), the rate that suits the 64-wide tiny model scaled down as the
    width grows: Adam moves every weight by about the rate, and each unit sums `width` such moves."""
    if cfg.lr is not None:
        return cfg.lr
    if cfg.model == "tiny":
        return 1e-4
    width = getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd")
    return 1e-4 * 64 / width


def sft_steps(cfg):
    """--sft-steps, or its default: 600 on the task's reviews (150 under --quick, also for a Config built in code
    with quick=True), none on --data with a --model."""
    if cfg.sft_steps is not None:
        return cfg.sft_steps
    return 0 if cfg.data and cfg.model != "tiny" else QUICK_SFT_STEPS if cfg.quick else TASK_SFT_STEPS


def data_reference(base, tokenizer, cfg, pairs, seed, device, tokenize, logps):
    """--data with --sft-steps on a --model: pi_ref is `base` fine-tuned on this seed's training split's chosen
    responses (the held-out pairs never), cached in --out under a key of the model, the data file's content, the seed
    and the settings (sft_cache). tokenize and logps: rddpo.py's. -> (pi_ref, what the fine-tuning did: the token loss
    on the training chosen responses and the held-out chosen log-prob, before and after). choice: the learning rate is
    the policy's default for the model (learning_rate), whatever --lr says. anything else: (base, {})."""
    import copy
    if not (pairs and cfg.model != "tiny" and cfg.sft_steps):
        return base, {}
    lr = learning_rate(dataclasses.replace(cfg, lr=None), base)
    fit = [[(p, c) for p, c, _ in part if fits(tokenizer, p, cfg.max_length)] for part in split_pairs(pairs, seed)]
    rows = [tokenize(tokenizer, *zip(*part), cfg.max_length) for part in fit]  # training, held-out chosen: (N, T) each
    def build():  # seeded: dropout's draws must not depend on what ran before in this process
        seed_everything(1234 + seed)
        return fine_tune(copy.deepcopy(base), rows[0], cfg.sft_steps, lr, cfg.batch_size, seed, device), tokenizer
    reference = cached_model(sft_cache(cfg, seed, lr), build)[0].to(device).eval()
    def measure(model):
        train, held = (logps(model, part, np.arange(len(part.input_ids)), device) for part in rows)
        return dict(loss=-train.sum().item() / rows[0].response_mask.sum().item(), heldout_logp=held.mean().item())
    before, after = measure(base), measure(reference)
    print(f"seed {seed}: pi_ref fine-tuned for {cfg.sft_steps} steps at rate {lr:.2g} on the chosen responses of "
          f"{len(fit[0])} training pairs: their loss {before['loss']:.3f} -> {after['loss']:.3f} nats per token; "
          f"held-out chosen log-prob {before['heldout_logp']:.1f} -> {after['heldout_logp']:.1f} nats ({len(fit[1])} pairs)")
    return reference, dict(steps=cfg.sft_steps, lr=lr, pairs=len(fit[0]), heldout_pairs=len(fit[1]),
                           **{f"{k}_{when}": v for when, m in (("before", before), ("after", after)) for k, v in m.items()})


def fine_tune(model, tokens, steps, lr, batch_size, seed, device):
    """supervised fine-tuning on the responses of `tokens` (rddpo.Tokens, right-padded): each step the mean
    next-token loss over the response tokens of batch_size rows, drawn in a fresh random order each pass."""
    import torch
    rng, n = np.random.default_rng([seed, 5]), len(tokens.input_ids)
    order = np.concatenate([rng.permutation(n) for _ in range(steps * batch_size // n + 1)])  # passes over the rows
    def batch(step):
        rows = torch.as_tensor(order[step * batch_size:(step + 1) * batch_size])
        T = int(tokens.attention_mask[rows].sum(1).max())
        ids, mask, resp = (t[rows, :T].to(device) for t in (tokens.input_ids, tokens.attention_mask, tokens.response_mask))
        return ids, mask, ids.masked_fill(resp == 0, -100)
    return next_token_steps(model, batch, steps, lr, "fine-tune pi_ref on your chosen responses")


def sft_cache(cfg, seed, lr):
    """the folder of --data's fine-tuned pi_ref for one seed: named by the model and a key of everything it depends
    on (the model, the data file's bytes, --chat-template, the seed whose training split it saw and the settings).
    a model folder converted again in place keeps its name: delete the cache then, as for the task's reference."""
    with open(cfg.data, "rb") as f:
        data = hashlib.sha256(f.read()).hexdigest()
    key = dict(model=cfg.model, data=data, chat_template=cfg.chat_template, seed=seed, steps=cfg.sft_steps, lr=lr,
               batch_size=cfg.batch_size, max_length=cfg.max_length, dtype=cfg.dtype)  # bfloat16 autocast trains it too
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(cfg.out, f"reference-{slug(cfg.model)}-sft-{digest}")


def note_cut(truncated, skipped, max_length):
    if truncated or skipped:
        print(f"note: {truncated} pairs truncated to --max-length {max_length}, {skipped} skipped (prompt alone too long)")


def longest_text_tokens(tokenizer, slots):
    """tokens in the longest text made by taking, for each slot (a list of words), its word with the most tokens."""
    def n(text):
        return len(tokenizer(text, add_special_tokens=False).input_ids)
    return n("".join(" " + max(words, key=lambda w: n(" " + w)) for words in slots).lstrip())


def word_tokenizer(words):
    """a word-level tokenizer over a closed vocabulary, built in code (nothing downloaded); eos pads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<unk>"] + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>")


@dataclasses.dataclass
class Sampled:
    """responses drawn from a model, as text and as the exact token ids drawn."""
    texts: list         # the responses decoded, without eos
    prompt_ids: list    # each prompt's token ids
    response_ids: list  # each response's token ids, ending in eos unless cut off at max_new_tokens


def sample(model, tokenizer, prompts, max_new_tokens, max_length, device, desc="sample", batch_size=64):
    """one response per prompt, with a key-value cache. choice: temperature 1, no top-k or top-p, so these are
    samples of pi itself. -> Sampled"""
    out, eos = Sampled([], [], []), tokenizer.eos_token_id
    for i in progress(range(0, len(prompts), batch_size), desc):
        prompt_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts[i:i + batch_size]]
        n_new = min(max_new_tokens, max_length - max(map(len, prompt_ids)))
        for p, row in zip(prompt_ids, sample_batch(model, prompt_ids, eos, n_new, device)):
            # the text is what follows the prompt's own decoding, so that prompt + text re-tokenises
            out.texts.append(tokenizer.decode(p + [t for t in row if t != eos])[len(tokenizer.decode(p)):])
            out.prompt_ids.append(p)
            out.response_ids.append(row)
    return out


def sample_batch(model, prompt_ids, eos, n_new, device):
    """up to n_new tokens for each prompt of a batch (lists of ids): the response ids, each ending in eos unless cut off."""
    import torch
    with torch.no_grad():
        ids, mask = (x.to(device) for x in pad(prompt_ids, eos, side="left"))  # (B, Tp)
        done, new, cache = torch.zeros(len(ids), dtype=torch.bool, device=device), [], None  # (B,)
        for _ in range(n_new):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]  # (B, t): real tokens only
            step = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
            nxt = torch.multinomial(step.logits[:, -1].float().softmax(-1), 1).squeeze(-1).masked_fill(done, eos)  # (B,)
            ids, cache, new = nxt[:, None], step.cache, new + [nxt]  # the cache holds what came before
            mask = torch.cat([mask, (~done).long()[:, None]], 1)  # (B, t+1)
            done |= nxt == eos
            if done.all():
                break
    return [row[:row.index(eos) + 1] if eos in row else row for row in torch.stack(new, 1).tolist()]


# -----------------------------------------------------------------------------
# 10. two runs compared: python report.py compare RUN_A RUN_B


def read_results(path):
    """results.json of a run folder (or the file itself), or a UsageError that says what is wrong."""
    path = os.path.join(path, "results.json") if os.path.isdir(path) else path
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}; give a run folder or its results.json") from None


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
    p = ArgumentParser(description="compare two runs of rddpo.py that share seeds (the same pairs and reward "
                                   "models per seed): python report.py compare RUN_A RUN_B")
    p.add_argument("command", choices=["compare"])
    p.add_argument("runs", nargs=2, help="two run folders (or their results.json): A, then B")
    args = p.parse_args(argv)
    def compare():
        rows = compare_runs(*(read_results(path) for path in args.runs))
        if not rows:
            raise UsageError("the two runs share no (bias, method, seed); compare runs made with the same seeds")
        print_comparison(rows, args.runs)
    return cli(compare)


if __name__ == "__main__":
    raise SystemExit(main())
