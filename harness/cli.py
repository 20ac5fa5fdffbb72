"""cli.py: the command line of rddpo.py (experiment.py), grid.py, bench.py, report.py, toy_bandit.py, convert_gguf.py.

Flags made from the fields of a config dataclass (so `Config(steps=5)` and `--steps 5` mean the same), presets
that a flag given beside them overrides, the checks made before any work, and a program's main that turns a bad
input into one `error:` line and exit status 2, never a traceback. Imports no torch at the top (toy_bandit.py
runs without it).
"""
import argparse
import contextlib
import dataclasses
import inspect
import os
import re
import signal
import socket
import sys
import warnings


# -----------------------------------------------------------------------------
# 1. errors, and a program's exit status


class UsageError(Exception):
    """bad input from the user: reported as one `error:` line and exit status 2."""


class Interrupted(Exception):
    """ctrl-c or SIGTERM: reported as one line that says what was kept and where, exit status 130. `by` says
    which ("ctrl-c" or "SIGTERM"), for a caller that records it (a grid's results.json)."""

    def __init__(self, message, by="ctrl-c"):
        super().__init__(message)
        self.by = by


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping a job, a machine pre-empted), raised where the program is, as ctrl-c is."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """inside it, a SIGTERM raises Terminated wherever the program is, as ctrl-c raises KeyboardInterrupt; later
    ones are ignored while the program saves what it has. outside the main thread it changes nothing."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated("SIGTERM")
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread, where python cannot handle signals
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def cli(command, failures=()):
    """run command() as a program's main: exit status 0; a bad input (2), one of `failures` (1) or ctrl-c or
    SIGTERM (130, under sigterm_as_interrupt) is one line on stderr, never a traceback."""
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
    except KeyboardInterrupt as e:
        by = " by SIGTERM" if isinstance(e, Terminated) else ""
        print(f"interrupted{by}; files written before this point are kept", file=sys.stderr)
        return 130
    return 0


def hub_reachable(timeout=3.0):
    """whether the Hugging Face hub answers one connection: a missing model or dataset is then one line at once,
    instead of a minute of retries."""
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def quiet_transformers():
    """transformers' own progress bars and warnings off: a command prints its own lines, one per event."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # peft asks every model for a property transformers 5 renamed; the warning is theirs, nothing a user can change
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


# -----------------------------------------------------------------------------
# 2. flags from a config dataclass


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


def field_comments(cls):
    """{field: its trailing comment} of a dataclass and its bases, for fields documented the way rddpo.Knobs
    documents them: `beta: float = 0.1  # KL strength ...`."""
    comments = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            for line in inspect.getsource(klass).splitlines():
                m = re.match(r"\s+(\w+): [\w.]+ = [^#]+#\s*(.+)$", line)
                if m:
                    comments[m.group(1)] = m.group(2)
    return comments


def parse_config(cls, argv, description, preset, extra=None):
    """flags from the fields of a config dataclass (their metadata["help"], or else their comment, is the --help
    text), so that `Config(steps=5)` and `--steps 5` mean the same. returns (config, names of the flags given);
    extra: {name: add_argument keywords} of flags that are no field (rddpo.py's --resume), whose values come
    back as a third item, {name: value}."""
    p = ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name, kw in (extra or {}).items():
        p.add_argument("--" + name.replace("_", "-"), **kw)
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flag, kw = "--" + f.name.replace("_", "-"), dict(default=default, help=f.metadata.get("help", comments.get(f.name)))
        kw.update({"choices": f.metadata["choices"]} if "choices" in f.metadata else {})
        if default is None:  # the help says what None stands for; '%(default).0s' keeps "(default: None)" off it
            kw["help"] += "%(default).0s"
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", **kw)
        elif isinstance(default, list):
            p.add_argument(flag, type=type(default[0]) if default else str, nargs="+", **kw)
        else:
            p.add_argument(flag, type=f.metadata.get("type", f.type if default is None else type(default)), **kw)
    args, given = parse_given(p, argv)
    extras = {name: vars(args).pop(name) for name in extra or {}}
    config = cls(**vars(with_preset(args, given - set(extras), preset)))
    return (config, given - set(extras)) if extra is None else (config, given - set(extras), extras)


# -----------------------------------------------------------------------------
# 3. checks of the flags, made before any work


DEVICES = ["auto", "cuda", "mps", "cpu"]  # --device in rddpo.py and bench.py; auto takes cuda, then mps, then cpu


DTYPES = ("float32", "bfloat16")  # experiment.Config's --dtype


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
        (cfg.pool_batch is None or cfg.pool_batch >= 1, f"--pool-batch must be >= 1 (got {cfg.pool_batch})"),
        (cfg.micro_batch is None or cfg.micro_batch >= 1, f"--micro-batch must be >= 1 (got {cfg.micro_batch})"),
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
        ("e-dpo" not in methods and "p-dpo" not in methods, ["gamma", "pool_batch"], "e-dpo and p-dpo only"),
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


def sweep_bias_list(cfg):
    try:
        return [float(b) for b in cfg.sweep_biases.split(",")] if cfg.sweep else [cfg.bias]
    except ValueError:
        raise UsageError(f"--sweep-biases must be a comma list of numbers (got {cfg.sweep_biases!r})") from None
