"""
bench.py: what a policy step of each method costs, against DPO and against a bare training step.

The paper keeps DPO's cost: reference log-probs and reward-model scores are computed once, before
training, so a step of d-DPO, e-DPO or p-DPO should cost what a DPO step costs. This checks it. In one
process it times the real training step of rddpo.py (forward, sequence log-probs, `policy_loss`,
backward, AdamW) for every method, alternating between them round by round so that drift in the
machine's load hits all of them alike, reads each one's peak memory, and times the one-off pass that
computes the reference log-probs and the reward-model scores.

    python tools/bench.py                  # cpu: the offline default model and a 4-layer 256-wide gpt-2
    python tools/bench.py --device cuda    # adds gpt-2-small's shape on the gpu, in float32 and bfloat16
    python tools/bench.py --quick          # the smoke test's budget: the default model, a few steps
    python tools/bench.py --pretrained models/smollm2-135m   # whole runs on a pretrained LM: peak memory and time

It prints a table and which targets were met, and writes the numbers to bench.json in a new folder
bench-NNN inside --out (default runs/), so an earlier result is never overwritten.
"""
import argparse
import copy
import dataclasses
import gc
import os
import platform
import time

import numpy as np
import torch

import rddpo
from harness import cli, experiment, models, records, task

# -----------------------------------------------------------------------------
# 1. configuration

DEFAULT = experiment.Config()
# name: device, layers, width, heads, vocab (None: the built-in task's word-level tokenizer)
SIZES = {"tiny": ("cpu", DEFAULT.n_layer, DEFAULT.n_embd, DEFAULT.n_head, None),  # the offline default
         "L4-E256": ("cpu", 4, 256, 4, None),
         "gpt2-small": ("cuda", 12, 768, 12, 50257)}
DTYPES = {"cpu": ("float32",), "cuda": ("float32", "bfloat16")}
VARIANTS = ("bare", "dpo", "ipo", "d-dpo", "e-dpo K=4", "e-dpo K=16", "p-dpo",  # the pooled ones at M = B
            "e-dpo K=4 M=B/2", "e-dpo K=4 M=B/4", "p-dpo M=B/2", "p-dpo M=B/4")  # --pool-batch B/2, B/4
K_MAX = 16
QUICK = dict(sizes="tiny", steps=5, warmup=1, pairs=16, threads=1)
# --pretrained: whole runs of rddpo.py on a --model, each in a fresh folder (its reference fine-tuned inside it), with
# their limits. "quick" is issue 31's --quick command; "cell" is one (bias, seed) of the pretrained study's protocol
# (docs/METHOD.md#pretrained-protocol; tests/test_docs.py checks that the protocol's command has these flags)
PRETRAINED = {
    "quick": dict(flags="--quick --methods dpo,e-dpo --seeds 0", limit="peak_gb", value=3.0),
    "cell": dict(flags="--bias 0.5 --seeds 1 --methods dpo,e-dpo,p-dpo --n-pairs 256 --n-eval 64 --steps 40 "
                       "--batch-size 8 --eval-points 2 --rm-lr 3e-3", limit="minutes", value=30.0)}


def parse_args(argv=None):
    """flags shared with rddpo.py and toy_bandit.py mean the same: --seeds, --out (a folder), --device, --quick."""
    p = cli.ArgumentParser(description=__doc__.strip().split("\n")[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", choices=cli.DEVICES, help="cpu times the cpu sizes; cuda adds the "
                   "gpu size and bfloat16; auto takes cuda where there is one (mps is not timed: no synchronising clock)")
    p.add_argument("--sizes", default="", help=f"comma list from {','.join(SIZES)}; default: all on --device's machine")
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    p.add_argument("--batch-size", type=int, default=8, help="B, preference pairs per step")
    p.add_argument("--tokens", type=int, default=64, help="T, tokens per prompt+response")
    p.add_argument("--pairs", type=int, default=512, help="N, pairs in the one-off pass")
    p.add_argument("--threads", type=int, default=0, help="cpu threads for torch; 0 keeps torch's default. on a "
                   "machine busy with other work, 1 avoids threads that wait on each other's time slices")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one or more seeds (model and data); each "
                   "case runs once per seed")
    p.add_argument("--out", default="runs", help="output folder: each run writes a new bench-NNN folder inside")
    p.add_argument("--trl", action="store_true", help="also time, on the default model's shape, TRL's own DPO step, "
                   "the e-DPO step of rddpo_trl.py's trainer and rddpo.py's e-DPO step, in this process")
    p.add_argument("--pool-noise", action="store_true", help="instead of timing: the forward-KL estimate's noise at "
                   "M = B, B/2, B/4 pool rows per step, on the built-in task at rddpo.py's defaults (docs/METHOD.md"
                   "#pool-batch-protocol); --quick: at rddpo.py's --quick budget")
    p.add_argument("--pretrained", default="", metavar="MODEL", help="instead of timing steps: whole rddpo.py runs "
                   "on MODEL (a folder or hub name), each in its own process and fresh folder, its wall time and peak "
                   "resident memory against a target: " + "; ".join(f"{k}: {v['flags']} (within {v['value']:g} "
                   f"{v['limit'].split('_')[-1]})" for k, v in PRETRAINED.items()))
    p.add_argument("--parts", default=",".join(PRETRAINED), help="--pretrained: which runs, a comma list")
    p.add_argument("--quick", action="store_true", help="the smoke test's budget; flags given beside it win: "
                   + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    args, given = cli.parse_given(p, argv)
    return cli.with_preset(args, given, QUICK)


def cases(args):
    """(size, device, dtype, seed) to run: the cpu sizes on the cpu, and with a cuda --device the gpu size."""
    device = cli.pick_device(args.device).type
    if device == "mps":
        raise cli.UsageError("bench.py times cpu and cuda only (mps has no clock it can wait on here); use --device cpu")
    names = [s for s in args.sizes.split(",") if s] or [s for s in SIZES if SIZES[s][0] in ("cpu", device)]
    for s in names:
        if s not in SIZES:
            raise cli.UsageError(f"unknown size {s!r} in --sizes; choose from {','.join(SIZES)}")
        if SIZES[s][0] == "cuda" and device != "cuda":
            raise cli.UsageError(f"size {s} runs on a gpu: pass --device cuda on a machine with one")
    if (args.steps < 4 or args.warmup < 0 or args.batch_size < 1 or args.pairs < args.batch_size or args.tokens < 8
            or args.threads < 0):
        raise cli.UsageError("need --steps >= 4, --warmup >= 0, --batch-size >= 1, --pairs >= --batch-size, "
                             "--tokens >= 8 and --threads >= 0")
    cli.check_seeds(args.seeds)
    return [(s, SIZES[s][0], d, seed) for seed in args.seeds for s in names for d in DTYPES[SIZES[s][0]]]


# -----------------------------------------------------------------------------
# 2. model, data and the one-off cost


def build_model(size, tokenizer, args):
    """a gpt-2 of the size's shape, untrained: a step's time does not depend on the weights' values."""
    from transformers import GPT2Config, GPT2LMHeadModel
    _, n_layer, n_embd, n_head, vocab = SIZES[size]
    if vocab is None:  # rddpo's own builder, as the offline default uses it
        return models.build_tiny_gpt2(tokenizer, n_layer, n_embd, n_head, n_positions=args.tokens)
    eos = tokenizer.eos_token_id  # task ids are valid ids of the larger vocabulary too
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                                      bos_token_id=eos, eos_token_id=eos, pad_token_id=eos))


def make_data(tokenizer, args, rng):
    """N pairs of random task words, cut by rddpo.tokenize_pairs to exactly T tokens: rddpo.Pairs, (2N, T)."""
    words = [w for w in tokenizer.get_vocab() if w not in tokenizer.all_special_tokens]
    def text(n):
        return " ".join(rng.choice(words, n))
    prompts = [text(args.tokens // 4) for _ in range(args.pairs)]
    chosen, rejected = ([" " + text(args.tokens) for _ in range(args.pairs)] for _ in range(2))
    data = rddpo.tokenize_pairs(tokenizer, prompts, chosen, rejected, args.tokens)
    data.pool = rddpo.tokenize(tokenizer, prompts, [" " + text(args.tokens) for _ in prompts], args.tokens)  # (N, T)
    return data


def timed(fn, device):
    """(milliseconds, fn()); on a gpu, queued work is waited for on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3, out


def one_off_cost(reference, data, device, amp, rng):
    """time the pass that experiment.prepare makes once, before any policy step: the reference's log-probs and
    one reward model's scores of all 2N sequences. the K + 1 reward models (the plain one and the family)
    share one architecture, so each costs one such pass."""
    n = len(data.keep)
    with amp():
        ref_ms, data.ref_logps = timed(lambda: rddpo.all_logps(reference, data.tokens, np.arange(2 * n), device), device)
        data.pool_ref_logps = rddpo.all_logps(reference, data.pool, np.arange(n), device)  # (N,)
        rm = rddpo.RewardModel(reference).to(device).eval()
        rm_ms, _ = timed(lambda: rddpo.score(rm, data.tokens, device), device)
    # an untrained head scores 0 everywhere; random values stand in (the step's cost does not depend on them)
    data.rm_plain = torch.as_tensor(rng.standard_normal(2 * n), dtype=torch.float32)  # (2N,)
    data.rm_family = torch.as_tensor(rng.standard_normal((K_MAX, 2 * n)), dtype=torch.float32)  # (K, 2N)
    out = dict(pairs=n, reference_ms=ref_ms, reward_model_ms=rm_ms, reference_ms_per_pair=ref_ms / n,
               reward_model_ms_per_pair=rm_ms / n)
    out.update({f"total_ms_K{k}": ref_ms + (k + 1) * rm_ms for k in (4, K_MAX)})
    return out


# -----------------------------------------------------------------------------
# 3. the step of each variant: rddpo.train_policy's step, with only the loss changed


def pool_rows(name, batch_size):
    """M, the pool rows a variant's step takes: B unless its name says M=B/2 or M=B/4; none unless it is pooled."""
    if not name.startswith(("e-dpo", "p-dpo")):
        return 0
    return max(1, batch_size // int(name.split("M=B/")[1])) if "M=B/" in name else batch_size


def make_losses(data, cfg):
    """name -> loss(policy_logps, rows, pool_logps, pool_rows), the part of the step that differs between the
    variants (pool_logps: e-DPO's and p-DPO's forward-KL responses, else None). choice: the bare floor sums the
    sequence log-probs, not the logits: every preference loss needs those log-probs, so their log-softmax belongs
    to the policy's forward pass, not to the loss arithmetic."""
    k4 = dataclasses.replace(data, rm_family=data.rm_family[:4])  # (4, 2N): the first four members
    def method(name, d):
        return lambda *args: rddpo.policy_loss(name, *args[:2], d, cfg.beta, cfg.gamma, *args[2:])
    return {"bare": lambda policy_logps, *_: policy_logps.sum(), "dpo": method("dpo", data),
            "ipo": method("ipo", data), "d-dpo": method("d-dpo", data), "e-dpo K=4": method("e-dpo", k4),
            "e-dpo K=16": method("e-dpo", data), "p-dpo": method("p-dpo", data),
            **{f"e-dpo K=4 M=B/{d}": method("e-dpo", k4) for d in (2, 4)},
            **{f"p-dpo M=B/{d}": method("p-dpo", data) for d in (2, 4)}}


def make_steps(policy, opt, data, losses, device, amp):
    """name -> step(rows) -> loss. every variant steps the same policy with the same optimizer; e-DPO and p-DPO
    also take the forward-KL term's M pool responses (the first M of the batch's own rows of the pool, M =
    pool_rows(name, B)), as rddpo.train_policy does."""
    def make(name):
        pooled = name.startswith(("e-dpo", "p-dpo"))
        def step(rows):
            M = pool_rows(name, len(rows) // 2)
            ids, mask, resp = rddpo.batch_tensors(data.tokens, rows, device)  # (2B, T) each
            with amp():
                policy_logps = rddpo.sequence_logps(rddpo.forward(policy, ids, mask), ids, resp)  # (2B,)
                taken = rows[:M]  # (M,): with the pool in this order, train_policy's step 1 takes these rows
                pool = (rddpo.logps_of(policy, data.pool, taken, device), taken) if pooled else ()
                loss = losses[name](policy_logps, rows, *pool)
            if name != "bare" and not torch.isfinite(loss):  # as train_policy checks
                raise rddpo.TrainingDiverged(f"{name}: the loss became {loss.item()}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.detach()
        return step
    return {name: make(name) for name in losses}


def loss_alone(losses, rows, device, reps=200):
    """microseconds of each loss and its backward on (2B,) leaf log-probs, without the model: the cost that a
    method adds to the step, measured without the model's much larger and noisier cost around it."""
    times = {name: [] for name in losses}
    for _ in range(reps):
        for name, loss in losses.items():
            policy_logps = torch.randn(len(rows), device=device, requires_grad=True)  # (2B,)
            M = pool_rows(name, len(rows) // 2)
            pool = (torch.randn(M, device=device, requires_grad=True), rows[:M]) if M else ()  # (M,) leaf log-probs
            times[name].append(timed(lambda: loss(policy_logps, rows, *pool).backward(), device)[0] * 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


# -----------------------------------------------------------------------------
# 4. time and memory


def measure(steps, n_pairs, args, device, rng):
    """round-robin: each round draws one batch and runs one step of every variant on it, starting at a
    different variant each round. returns the timed milliseconds and, on a gpu, the peak bytes."""
    names, times, peaks = list(steps), {n: [] for n in steps}, {n: 0 for n in steps}
    for r in range(args.warmup + args.steps):
        idx = rng.choice(n_pairs, args.batch_size, replace=False)  # (B,)
        rows = np.concatenate([idx, idx + n_pairs])  # (2B,): chosen rows, then rejected rows
        for name in names[r % len(names):] + names[:r % len(names)]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            ms, _ = timed(lambda: steps[name](rows), device)
            if r >= args.warmup:
                times[name].append(ms)
                if device.type == "cuda":
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
    return times, peaks, rows


def state_bytes(policy, opt):
    """what lives between steps: parameters, their gradients and AdamW's two moments."""
    tensors = [t for p in policy.parameters() for t in [p, p.grad, *opt.state[p].values()]]
    return sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor))


def cpu_peaks(steps, rows, policy, opt):
    """the cpu has no allocator peak: trace each variant's allocations and frees with the profiler over two
    steps and read the second (its frees of the first step's gradients are seen), then add the state."""
    from torch.profiler import ProfilerActivity, profile, record_function
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for name, step in steps.items():
            step(rows)
            with record_function(f"bench/{name}"):
                step(rows)
    events = prof.profiler.kineto_results.events()  # the raw, timed allocation events
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    peaks = {}
    for name in steps:
        window = next(e for e in events if e.name() == f"bench/{name}")
        live = peak = 0
        for t, nbytes in memory:
            if window.start_ns() <= t <= window.end_ns():
                live += nbytes
                peak = max(peak, live)
        peaks[name] = state_bytes(policy, opt) + peak
    return peaks


def live_parameters():
    """the size of every nn.Parameter alive in the process. what a case adds while its steps run equals the
    policy's count exactly when no reference or reward model is held beside it."""
    gc.collect()
    return sum(o.numel() for o in gc.get_objects() if type(o) is torch.nn.Parameter)


# -----------------------------------------------------------------------------
# 5. one case, its summary and the targets


def prepare(size, device, dtype, args, rng):
    """the model, the data with its one-off pass done, and one step function per variant."""
    cfg = experiment.Config()
    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    tokenizer = task.build_tokenizer()
    policy = build_model(size, tokenizer, args).to(device).eval()
    data = make_data(tokenizer, args, rng)
    one_off = one_off_cost(policy, data, device, amp, rng)  # the reference here, before it trains
    gc.collect()  # the reward model is gone; the reference's log-probs are in data, so it becomes the policy
    rddpo.without_dropout(policy).train()  # as rddpo.train_policy trains it
    opt, losses = torch.optim.AdamW(policy.parameters(), lr=models.learning_rate(cfg, policy)), make_losses(data, cfg)
    return policy, opt, data, losses, make_steps(policy, opt, data, losses, device, amp), one_off


def run_case(size, device_name, dtype, seed, args):
    device, rng = torch.device(device_name), np.random.default_rng(seed)
    torch.manual_seed(seed)
    before = live_parameters()  # a caller's own models (a test session's) are not this case's
    policy, opt, data, losses, steps, one_off = prepare(size, device, dtype, args, rng)
    times, peaks, rows = measure(steps, args.pairs, args, device, rng)
    loss_us = loss_alone(losses, rows, device)
    memory = dict(live_parameters=live_parameters() - before,
                  policy_parameters=sum(p.numel() for p in policy.parameters()),
                  state_mib=state_bytes(policy, opt) / 2**20,
                  peak_kind="max_memory_allocated" if device.type == "cuda" else "state + profiler-traced step")
    if device.type == "cpu":
        peaks = cpu_peaks(steps, rows, policy, opt)
    res = dict(size=size, device=device_name, dtype=dtype, seed=seed, one_off=one_off, memory=memory,
               model=dict(zip(("n_layer", "n_embd", "n_head", "vocab"), SIZES[size][1:4] + (policy.config.vocab_size,))),
               variants=summarize(times, peaks, loss_us))
    one_off["total_in_dpo_steps_K16"] = one_off["total_ms_K16"] / res["variants"]["dpo"]["median_ms"]
    res["targets"] = targets(res)
    return res


def summarize(times, peaks, loss_us):
    """the median and interquartile range of each variant's steps; its ratios to DPO and to the bare step are
    medians over rounds of the ratio of the two steps taken in the same round (so drift in load cancels)."""
    t = {n: np.array(v) for n, v in times.items()}
    def ratio(n, base):
        return [float(q) for q in np.percentile(t[n] / t[base], [50, 25, 75])]  # median, then the quartiles
    return {n: dict(median_ms=float(np.median(t[n])), iqr_ms=float(np.subtract(*np.percentile(t[n], [75, 25]))),
                    ratio_to_dpo=ratio(n, "dpo")[0], ratio_to_bare=ratio(n, "bare")[0],
                    ratio_to_dpo_quartiles=ratio(n, "dpo")[1:], ratio_to_bare_quartiles=ratio(n, "bare")[1:],
                    loss_us=loss_us[n], peak_mib=peaks[n] / 2**20, times_ms=times[n]) for n in times}


def targets(res):
    """each target: met?, the measured value, its limit, and the value that the loss alone predicts (the
    base variant's median step plus the difference of the two losses' own times): noise-free, for a miss.
    choice: p-DPO within 1.6x DPO: the forward-KL pool adds B sequences to the step's 2B, about 1.5x the work."""
    v, m = res["variants"], res["memory"]
    def from_loss(n, base):
        return 1 + (v[n]["loss_us"] - v[base]["loss_us"]) / (1e3 * v[base]["median_ms"])
    unpooled, pooled = ["ipo", "d-dpo"], ["e-dpo K=4", "e-dpo K=16"]
    e = v["e-dpo K=16"]["ratio_to_dpo"] / v["e-dpo K=4"]["ratio_to_dpo"]
    e_loss = from_loss("e-dpo K=16", "e-dpo K=4")
    p = {n: v[n]["ratio_to_dpo"] / v["p-dpo"]["ratio_to_dpo"] for n in pooled}
    rows = [("IPO's and d-DPO's steps within 1.05x DPO's", max(v[n]["ratio_to_dpo"] for n in unpooled), 1.05,
             max(from_loss(n, "dpo") for n in unpooled)),
            ("the forward-KL pool: p-DPO's step within 1.6x DPO's", v["p-dpo"]["ratio_to_dpo"], 1.6,
             from_loss("p-dpo", "dpo")),
            ("e-DPO's step within 1.05x p-DPO's (the same pool)", max(p.values()), 1.05,
             max(from_loss(n, "p-dpo") for n in pooled)),
            ("DPO's step within 1.10x the bare step", v["dpo"]["ratio_to_bare"], 1.10, from_loss("dpo", "bare")),
            ("e-DPO's step the same at K=4 and K=16 (within 5%)", max(e, 1 / e), 1.05, max(e_loss, 1 / e_loss))]
    for d in (2, 4):  # --pool-batch: e-DPO's (K = 4) and p-DPO's steps with M = B/d pool rows
        names = [f"e-dpo K=4 M=B/{d}", f"p-dpo M=B/{d}"]
        rows.append((f"the pool at M=B/{d}: e-DPO's and p-DPO's steps within 1.25x DPO's",
                     max(v[n]["ratio_to_dpo"] for n in names), 1.25, max(from_loss(n, "dpo") for n in names)))
    out = {name: dict(met=bool(value <= limit), value=value, limit=limit, from_loss_alone=fl)
           for name, value, limit, fl in rows}
    out["only the policy model in memory (live parameters = policy's)"] = dict(
        met=m["live_parameters"] == m["policy_parameters"], value=m["live_parameters"], limit=m["policy_parameters"])
    return out


# -----------------------------------------------------------------------------
# 6. --pretrained: whole runs on a pretrained LM, their wall time and peak memory


def pretrained_parts(args):
    """the --parts to run, checked before any work -> list of names."""
    parts = list(dict.fromkeys(p.strip() for p in args.parts.split(",") if p.strip()))  # a name twice runs once
    bad = [p for p in parts if p not in PRETRAINED]
    if bad or not parts:
        raise cli.UsageError(f"unknown --parts {','.join(bad) or '(none)'}; choose from {','.join(PRETRAINED)}")
    if not hasattr(os, "wait4"):
        raise cli.UsageError("--pretrained reads a run's peak memory with os.wait4, which this system lacks (Windows)")
    return parts


def whole_run(model, part, folder, threads=0):
    """python rddpo.py --model MODEL with the part's flags, in its own process, --out a fresh folder inside `folder`
    (so the reference is fine-tuned there too), its output in part.log -> dict: seconds, peak resident memory (GB, of
    that process, read from the kernel when it ends) and exit status."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [sys.executable, os.path.join(root, "rddpo.py"), "--model", model, *PRETRAINED[part]["flags"].split(),
            "--out", os.path.join(folder, part)]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))  # --threads, for the run too
    t0 = time.time()
    with open(os.path.join(folder, f"{part}.log"), "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except KeyboardInterrupt:
            proc.terminate()  # rddpo.py keeps what it finished, as on ctrl-c
            proc.wait()
            raise
    kib = usage.ru_maxrss / (1024 if platform.system() == "Darwin" else 1)  # macOS counts bytes, Linux KiB
    # choice: GB is 1e9 bytes, the strictest reading of a target in GB (GiB, 2^30 bytes, is 7 % larger): both kept
    return dict(command=" ".join(argv[1:]), seconds=time.time() - t0, peak_gb=kib * 1024 / 1e9, peak_gib=kib / 2**20,
                exit_status=os.waitstatus_to_exitcode(status))


def pretrained_runs(args, folder):
    """--pretrained: each part's whole run and its target, printed as it finishes -> dict part -> result."""
    out = {}
    for part in pretrained_parts(args):
        print(f"{part}: python rddpo.py --model {args.pretrained} {PRETRAINED[part]['flags']} (log: {folder}/{part}.log)")
        res = whole_run(args.pretrained, part, folder, args.threads)
        limit, value = PRETRAINED[part]["limit"], PRETRAINED[part]["value"]
        measured = res["peak_gb"] if limit == "peak_gb" else res["seconds"] / 60
        res["target"] = dict(limit=limit, value=value, met=bool(res["exit_status"] == 0 and measured <= value))
        out[part] = res
        ok = "failed: see the log" if res["exit_status"] else ("met" if res["target"]["met"] else "missed")
        if res["exit_status"]:
            with open(os.path.join(folder, f"{part}.log")) as f:
                print(f"{part}: rddpo.py said: {([''] + f.read().strip().splitlines())[-1]}")
        what = f"peak memory within {value:g} GB" if limit == "peak_gb" else f"wall time within {value:g} minutes"
        print(f"{part}: {rddpo.duration(res['seconds'])}, peak {res['peak_gb']:.2f} GB ({res['peak_gib']:.2f} GiB), "
              f"exit {res['exit_status']}; "
              f"target, {what}: {ok}")
    return out


# -----------------------------------------------------------------------------
# 7. --pool-noise: how much noise fewer pool rows per step add (docs/METHOD.md#pool-batch-protocol)


def gradient_noise(losses, params):
    """the trace of the covariance of the losses' gradients over the draws (each loss a function of no arguments):
    the mean squared distance of a draw's gradient from the draws' mean gradient, with R - 1 in the denominator."""
    grads = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(f(), params)]) for f in losses])  # (R, P)
    return float(((grads - grads.mean(0)) ** 2).sum() / (len(grads) - 1))


def preference_term(policy, pairs, method, cfg, idx, device):
    """the part of p-DPO's (DPO's loss) or e-DPO's (the member-minimum distillation loss) loss that is not the
    forward-KL term, on the pairs idx (B,)."""
    n = len(pairs.keep)
    rows = np.concatenate([idx, idx + n])  # (2B,)
    ids, mask, resp = rddpo.batch_tensors(pairs.tokens, rows, device)
    pc, pr = rddpo.sequence_logps(rddpo.forward(policy, ids, mask), ids, resp).chunk(2)  # (B,) each
    rc, rr = pairs.ref_logps[rows].to(device).chunk(2)
    if method == "p-dpo":
        return rddpo.dpo_loss(pc, pr, rc, rr, cfg.beta)
    family = pairs.rm_family[:, rows].to(device).chunk(2, dim=1)  # (K, B) each
    return rddpo.distill_member_losses(pc, pr, rc, rr, *family, cfg.beta).min()


def noise_at(policy, pairs, method, cfg, device, rng):
    """at one policy, over R disjoint draws of M pool rows (M = B, B/2, B/4): the forward-KL estimate's sd, the
    gradient noise of gamma x the estimate, that of the preference term over R batches of B pairs, and rho(M),
    their ratio."""
    params, B = [p for p in policy.parameters() if p.requires_grad], cfg.batch_size
    R, order = min(32, len(pairs.pool_ref_logps) // B), rng.permutation(len(pairs.pool_ref_logps))
    def fkl(rows):
        logps = rddpo.logps_of(policy, pairs.pool, rows, device)  # (M,)
        return cfg.gamma * rddpo.forward_kl_estimate(logps, pairs.pool_ref_logps[rows].to(device))
    batches = [rng.choice(pairs.labelled, B, replace=False) for _ in range(R)]  # (B,) each
    pref = gradient_noise([lambda i=i: preference_term(policy, pairs, method, cfg, i, device) for i in batches], params)
    out = dict(draws=R, preference_grad_noise=pref, fkl_sd={}, fkl_grad_noise={}, rho={})
    for M in (B, max(1, B // 2), max(1, B // 4)):
        draws = [order[r * M:(r + 1) * M] for r in range(R)]
        with torch.no_grad():
            out["fkl_sd"][M] = float(np.std([fkl(rows).item() / cfg.gamma for rows in draws], ddof=1))
        out["fkl_grad_noise"][M] = gradient_noise([lambda rows=rows: fkl(rows) for rows in draws], params)
        out["rho"][M] = out["fkl_grad_noise"][M] / pref
    return out


def pool_noise(args):
    """--pool-noise: the task's pairs, reward models and pool at rddpo.py's defaults (at M = B), then noise_at
    pi_ref and at the p-DPO and e-DPO policies trained at M = B. -> {policy: noise_at's dict}"""
    cfg = dataclasses.replace(experiment.Config(**(experiment.QUICK if args.quick else {}), quick=args.quick,
                                                out=args.out, seeds=args.seeds[:1], methods="e-dpo,p-dpo"),
                              pool_batch=experiment.Config.batch_size)
    device, seed = cli.pick_device(args.device), args.seeds[0]
    reference, tokenizer = models.load_reference(cfg, device)
    cfg = dataclasses.replace(cfg, lr=models.learning_rate(cfg, reference), sft_steps=models.sft_steps(cfg))
    pairs, _, _, _ = experiment.prepare(reference, tokenizer, cfg, cfg.bias, seed, device, None)
    out = {}
    for method in ("p-dpo", "e-dpo"):
        start = rddpo.without_dropout(copy.deepcopy(reference)).train()
        out[f"pi_ref ({method}'s terms)"] = noise_at(start, pairs, method, cfg, device, np.random.default_rng(seed))
        policy, _ = rddpo.train_policy(reference, pairs, method, cfg, seed, device, log=lambda *a: None)
        out[method] = noise_at(policy.train(), pairs, method, cfg, device, np.random.default_rng(seed))
    return out


def print_noise(noise, gamma):
    print(f"the forward-KL term's noise at M pool rows per step (gamma {gamma}), against the preference term's at B pairs")
    print(f"{'policy':<22}{'M':>4}{'sd of FKL':>11}{'grad noise, gamma FKL':>23}{'grad noise, preference':>24}{'rho':>8}")
    for name, n in noise.items():
        for M in n["rho"]:
            print(f"{name:<22}{M:>4}{n['fkl_sd'][M]:>11.4f}{n['fkl_grad_noise'][M]:>23.4g}"
                  f"{n['preference_grad_noise']:>24.4g}{n['rho'][M]:>8.3f}")
    print("rho <= 1 at every policy for M = " + ", ".join(
        f"{M}: {'yes' if all(n['rho'][M] <= 1 for n in noise.values()) else 'no'}" for M in next(iter(noise.values()))["rho"]))


# -----------------------------------------------------------------------------
# 8. report and main


def print_case(res):
    head = (f"{'size':<11}{'device':<7}{'dtype':<9}{'variant':<16}{'median ms':>10}{'IQR ms':>9}{'x DPO':>7}{'x bare':>7}"
            f"{'loss us':>9}{'peak MiB':>10}")
    print(head + "\n" + "-" * len(head))
    for name, v in res["variants"].items():
        print(f"{res['size']:<11}{res['device']:<7}{res['dtype']:<9}{name:<16}{v['median_ms']:>10.2f}{v['iqr_ms']:>9.2f}"
              f"{v['ratio_to_dpo']:>7.3f}{v['ratio_to_bare']:>7.3f}{v['loss_us']:>9.0f}{v['peak_mib']:>10.1f}")
    o, m = res["one_off"], res["memory"]
    print("x DPO, x bare: median over rounds of the step's time over DPO's (the bare step's) in the same round; "
          "loss us: the loss and its backward alone, on (2B,) log-probs")
    print(f"peak MiB: {m['peak_kind']}; policy state (params, grads, AdamW moments) {m['state_mib']:.1f} MiB")
    print(f"one-off over N={o['pairs']} pairs: reference log-probs {o['reference_ms']:.0f} ms "
          f"({o['reference_ms_per_pair']:.2f} ms/pair), one reward model's scores {o['reward_model_ms']:.0f} ms "
          f"({o['reward_model_ms_per_pair']:.2f} ms/pair); with the plain model and K members: "
          f"K=4 {o['total_ms_K4']:.0f} ms, K=16 {o['total_ms_K16']:.0f} ms (= {o['total_in_dpo_steps_K16']:.0f} DPO steps)")
    for name, t in res["targets"].items():
        detail = f"{t['value']:.3f} (limit {t['limit']}; the loss alone predicts {t['from_loss_alone']:.3f})" \
            if "from_loss_alone" in t else f"{t['value']:,} (policy {t['limit']:,})"
        print(f"  {'MET   ' if t['met'] else 'MISSED'} {name}: {detail}")
    print()


def trl_steps(args):
    """--trl: rddpo_trl.time_steps on the default model's shape (untrained), B pairs of --tokens; printed and
    returned. the same batch and pool rows for the e-DPO steps; TRL's DPO step on the same batch."""
    import rddpo_trl
    torch.manual_seed(args.seeds[0])
    tokenizer = task.build_tokenizer()
    model = build_model("tiny", tokenizer, args).eval()
    pairs, pool = rddpo_trl.timing_inputs(model, tokenizer, args.batch_size, args.warmup + args.steps,
                                          max_length=args.tokens, seed=args.seeds[0])
    res = rddpo_trl.time_steps(model, tokenizer, pairs, pool, args.steps, args.batch_size, args.tokens,
                               warmup=args.warmup)
    print(f"TRL (tiny, B={args.batch_size}): DPOTrainer's own dpo step {res['trl_dpo_ms']:.1f} ms, rddpo_trl's e-dpo "
          f"step {res['trl_edpo_ms']:.1f} ms ({res['edpo_over_dpo']:.2f}x), rddpo.py's e-dpo step "
          f"{res['rddpo_edpo_ms']:.1f} ms (rddpo_trl's is {res['trl_over_rddpo']:.2f}x it); median over {args.steps} steps")
    return res


def machine():
    return dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), load_average=os.getloadavg(),
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def run(args):
    """every case, printed as it finishes; returns the JSON object, also written to bench.json in a new
    bench-NNN folder inside args.out. every check runs before any work."""
    todo, t0, threads = cases(args), time.time(), torch.get_num_threads()
    if args.pretrained:
        pretrained_parts(args)
    path = os.path.join(records.new_run_dir(args.out, "bench"), "bench.json")
    torch.set_num_threads(args.threads or threads)
    out = dict(machine=machine(), settings=vars(args), cases=[])
    load = out["machine"]["load_average"][0]
    if load >= 1:  # read before the benchmark starts: this is other work
        hint = "; --threads 1 keeps torch from waiting on descheduled threads" if torch.get_num_threads() > 1 else ""
        print(f"note: load average {load:.1f} on {os.cpu_count()} cpus: other work is running, so times are noisy{hint}")
    try:
        if args.pretrained:
            out["pretrained"] = pretrained_runs(args, os.path.dirname(path))
            todo = []
        if args.pool_noise:
            out["pool_noise"] = pool_noise(args)
            print_noise(out["pool_noise"], experiment.Config.gamma)
            todo = []
        for size, device, dtype, seed in todo:
            out["cases"].append(run_case(size, device, dtype, seed, args))
            print_case(out["cases"][-1])
            if device == "cuda":
                torch.cuda.empty_cache()
        if args.trl:
            out["trl"] = trl_steps(args)
    except KeyboardInterrupt:
        raise cli.Interrupted(f"interrupted: the {len(out['cases'])} finished cases are kept in {path}") from None
    finally:  # finished, failed or interrupted: the cases done so far are written
        torch.set_num_threads(threads)  # a caller's process (a test) gets its setting back
        out.update(seconds=time.time() - t0, load_average_end=os.getloadavg())
        records.write_json(path, out)
    print(f"done in {out['seconds']:.0f} s (load average {out['machine']['load_average'][0]:.1f} at the start, "
          f"{out['load_average_end'][0]:.1f} at the end, on {out['machine']['cpu_count']} cpus); wrote {path}")
    return out


def main(argv=None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
    return cli.cli(lambda: run(parse_args(argv)), failures=(rddpo.TrainingDiverged,))


if __name__ == "__main__":
    raise SystemExit(main())
