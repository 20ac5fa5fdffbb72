"""experiment.py: the experiment that rddpo.py's command line runs.

For each bias and seed: the pairs (the built-in task's, sampled from pi_ref and labelled by the biased annotator,
or your own --data), the reward models and the forward-KL pool that rddpo.py's losses need, every method trained
from the same reference on the same pairs, and each evaluated on held-out prompts along training. The run's folder
gets results.json, metrics.jsonl, samples.jsonl and the figures. A run stopped (ctrl-c, SIGTERM, an error, a kill)
goes on in its folder with --resume, and ends as it would have without the stop.

    python rddpo.py --quick    # this file is the harness.experiment module, run from rddpo.py
    python rddpo.py --resume runs/run-001
"""
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace

import numpy as np
import torch

import rddpo
from harness import cli, data, grid, models, records, report, scorers
from harness.models import learning_rate, load_reference, sample
from rddpo import (METHODS, Knobs, Pairs, Tokens, TrainingDiverged, all_logps, batch_tensors, duration, fits, forward,
                   logratio_margin, pool_rows_per_step, reward_scores, score, seed_everything, token_rows,
                   tokenize_pairs, train_policy)
from harness.task import EVAL_TITLES, GOLDS, TITLES, gold_reward, label_pairs, make_prompts, words


# -----------------------------------------------------------------------------
# 1. configuration


QUICK = dict(n_pairs=64, n_eval=32, rm_steps=15, steps=15, log_every=5, eval_points=3)  # --quick (and models.sft_steps)
N_SHOW = 8  # held-out prompts whose responses go to samples.jsonl


@dataclass
class Config(Knobs):
    """the experiment's configuration: the method's knobs (rddpo.Knobs, whose comments are their --help) and, here,
    the task, the model and the run. every field is a flag: Config(steps=5) is --steps 5."""
    # the policy's rate depends on the model here, so its default moves from the method's to learning_rate's
    lr: float = field(default=None, metadata={"type": float, "help": "policy learning rate (AdamW); default: 1e-4 for "
                      "the tiny model, 1e-4 x 64 / its width for a --model, x 10 with --lora (models.learning_rate)"})
    # and these, whose defaults depend on the model too (models.model_defaults)
    lora: int = field(default=None, metadata={"type": int, "help": "rank of the policy's LoRA adapters; 0 trains every "
                      "weight; default: 0 for the tiny model, 16 for a --model"})
    reward_models: str = field(default="auto", metadata={"help": "the reward models: trained here, each a copy of "
                               "pi_ref (copies), a head on its frozen features (heads) or rank-16 LoRA adapters on it "
                               "with a head (adapters), auto: copies for the tiny model, heads for a --model; or yours: "
                               "NAME,NAME,... sequence classifiers (folders or hub names), each scoring every pair "
                               "through its own tokenizer and chat template, the first d-DPO's target; or data: the "
                               "data's score_chosen and score_rejected columns (harness/scorers.py)"})
    # choice: the reward models you bring are distilled in their own units (scale 1): Bradley-Terry rewards, as
    # most reward models are trained, are log-odds of preference, the units the distillation target assumes
    reward_scale: str = field(default="1", metadata={"help": "the units of the reward models you bring: a number "
                              "multiplies their scores; std divides each one's by the standard deviation of its gaps "
                              "r_w - r_l on the training pairs (docs/METHOD.md#reward-scale)"})
    micro_batch: int = field(default=None, metadata={"type": int, "help": "most sequences in one forward pass (the "
                             "step's gradient is the same; a reward model's pass holds one pair's two at least); "
                             "default: all at once for the tiny model, 8 for a --model"})
    model: str = field(default="tiny", metadata={"help": "'tiny' builds and pretrains a small GPT-2 offline; "
                                                 "or a causal LM name or local path for from_pretrained, e.g. gpt2"})
    methods: str = field(default=",".join(METHODS), metadata={"help": "comma list of methods to train (any case)"})
    bias: float = field(default=0.5, metadata={"help": "probability that the annotator prefers the longer response"})
    gold: str = field(default="careful", metadata={"help": "the gold reader (task.py): careful, whom verbosity and "
                                                   "repetition put off, or the length-blind neutral control",
                                                   "choices": GOLDS})
    seeds: list = field(default_factory=lambda: [0], metadata={"help": "one or more seeds (data, reward models, policies)"})
    n_pairs: int = field(default=512, metadata={"help": "training pairs sampled from the reference (built-in task)"})
    n_eval: int = field(default=128, metadata={"help": "held-out prompts for evaluation"})
    max_length: int = field(default=64, metadata={"help": "tokens per prompt+response; longer responses are truncated"})
    max_new_tokens: int = field(default=40, metadata={"help": "longest sampled response"})
    dtype: str = field(default="float32", metadata={"help": "bfloat16 runs the forward passes under autocast (weights "
                                                    "and optimizer stay float32): faster on a gpu", "choices": cli.DTYPES})
    device: str = field(default="auto", metadata={"help": "auto takes cuda, then mps, then cpu", "choices": cli.DEVICES})
    out: str = field(default="runs", metadata={"help": "output folder: each run writes a new run-NNN folder inside"})
    data: str = field(default="", metadata={"help": "your own pairs in TRL's preference formats: prompt, chosen and "
                      "rejected as text or as lists of messages (no prompt: the opening chosen and rejected share); a "
                      "JSON-lines, .json, .parquet or .csv file, or a hub dataset's name (docs/your-data.md)"})
    data_split: str = field(default="train", metadata={"help": "--data: the split of a hub dataset, e.g. test or "
                            "train[:1000]"})
    sweep: bool = field(default=False, metadata={"help": "run every bias in --sweep-biases and draw the headline figure"})
    sweep_biases: str = field(default="0,0.25,0.5,0.75,1", metadata={"help": "bias values for --sweep"})
    grid: list = field(default_factory=list, metadata={"help": "knob=a,b,...: the comparison at each value (grid.py)"})
    quick: bool = field(default=False, metadata={"help": "on the command line, a tiny budget; flags given beside it win: "
                                                 + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items())})
    n_layer: int = field(default=2, metadata={"help": "tiny model: layers"})
    n_embd: int = field(default=64, metadata={"help": "tiny model: width"})
    n_head: int = field(default=4, metadata={"help": "tiny model: attention heads"})
    sft_steps: int = field(default=None, metadata={"type": int, "help": "steps of supervised fine-tuning of pi_ref, "
                           f"cached in --out: on the task's reviews (default {models.TASK_SFT_STEPS}, {models.QUICK_SFT_STEPS} "
                           "under --quick), or with --data on a --model on each seed's training chosen responses (default 0)"})
    # choice: unlabelled pairs feed distillation only (d-DPO, e-DPO): DPO, IPO and p-DPO need the labels
    unlabeled: int = field(default=0, metadata={"help": "pairs sampled from pi_ref, unlabelled, that d-DPO and e-DPO "
                                                "distil on besides the labelled ones (the paper's rho)"})
    chat_template: bool = field(default=False, metadata={"help": "--data: wrap each plain-text prompt as the user's "
                                                         "turn in the model's chat template (for instruct models; "
                                                         "conversational rows are always rendered in it)"})
    save_policy: bool = field(default=False, metadata={"help": "write each trained policy as a model folder in its run"})

    def method_list(self):
        return [m.strip().lower() for m in self.methods.split(",") if m.strip()]


def parse_args(argv=None, extra=None):
    """(Config, names of the flags given on the command line); with extra (RESUME), their values too."""
    return cli.parse_config(Config, argv, rddpo.__doc__.split("\n")[1], QUICK, extra)  # rddpo.py's own description


RESUME = {"resume": dict(metavar="FOLDER", default=None, help="go on with an unfinished run (interrupted, failed or "
                         "killed) in its folder, such as runs/run-001: its finished method runs are kept, the rest run "
                         "as they would have; the run's own settings are used, and a flag given beside it must say "
                         "the same%(default).0s")}


def resumed(folder, given_cfg, given):
    """--resume FOLDER: the run's own Config, read from its results.json, with --out the folder that holds it (where
    its reference is cached). a flag given beside --resume must say what the run's config says (the value parsed
    against the value recorded), and the run goes on on the device it ran on: another computes other numbers."""
    results = records.read_run(folder)
    path = os.path.join(folder, "results.json")
    own = dict(results["config"], out=os.path.dirname(os.path.abspath(folder)))
    unknown = sorted(set(own) - {f.name for f in fields(Config)})
    if unknown:
        raise cli.UsageError(f"{path} has settings that this code does not know ({', '.join(unknown)}); "
                             "resume the run with the code that started it")
    for name in sorted(given):
        if name not in own or comparable(name, getattr(given_cfg, name)) != comparable(name, own[name]):
            ran = flag_text(name, own[name]) if name in own else f"no {flag_text(name, True)}"
            raise cli.UsageError(f"{flag_text(name, getattr(given_cfg, name))} differs from the run's own setting "
                                 f"({ran}, in {path}); leave it out: --resume goes on with the run's own settings")
    cfg = Config(**own)
    device = cli.pick_device(cfg.device)
    if str(device) != results["device"]:
        raise cli.UsageError(f"--resume {folder}: the run ran on {results['device']}, and its --device {cfg.device} "
                             f"is {device} here; resume it on {results['device']}, as another device computes "
                             "other numbers")
    return cfg


def comparable(name, value):
    """a setting as --resume compares it: --methods as the list it names, --sweep-biases as numbers, paths resolved."""
    if name == "methods":
        return Config(methods=value).method_list()
    if name == "sweep_biases":
        try:
            return [float(b) for b in value.split(",")]
        except ValueError:
            return value
    return os.path.realpath(value) if name in ("out", "data") and value else value


def flag_text(name, value):
    """a setting as a flag says it: --steps 15, --seeds 0 1, --quick, no --quick."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or value in ("", None, []):
        return flag if value else f"no {flag}"
    return f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"


# -----------------------------------------------------------------------------
# 2. the pairs and the held-out set


@dataclass
class HeldOut:
    """what every policy and every reward model is evaluated on: held-out prompts (P) and pairs on them (M)."""
    prompts: list                     # held-out prompts to sample responses for
    chosen: list                      # the held-out pairs' texts, labelled as the training pairs are
    rejected: list
    pairs: Pairs                      # the same pairs, tokenised, with their ref_logps
    ref_samples: Tokens = None        # (P, T) pi_ref's own response to each prompt
    ref_samples_logps: torch.Tensor = None  # (P,) their log pi_ref
    gold: str = None                  # the gold reader (built-in task); None on your own data
    ref_gold: np.ndarray = None       # (P,) gold reward of pi_ref's response per prompt (built-in task)
    ref_length: float = None          # pi_ref's mean response length in words (built-in task)
    ref_shown: list = None            # pi_ref's responses to the first N_SHOW prompts, as samples.jsonl rows


def builtin_task(reference, tokenizer, cfg, bias, seed, device):
    """pairs sampled from pi_ref and labelled by the biased annotator; held-out prompts with pi_ref's sample for
    each (the baseline), and pairs of it with a second sample labelled alike. -> (prompts, chosen, rejected, HeldOut)"""
    rng, gen = np.random.default_rng([seed, 1]), dict(max_new_tokens=cfg.max_new_tokens, max_length=cfg.max_length)
    prompts = make_prompts(rng, cfg.n_pairs, TITLES)
    seed_everything(seed)
    responses = sample(reference, tokenizer, prompts + prompts, device=device, desc="sample pairs from pi_ref", **gen).texts
    chosen, rejected = label_pairs(responses[:cfg.n_pairs], responses[cfg.n_pairs:], bias, rng, cfg.gold)
    eval_prompts = make_prompts(rng, cfg.n_eval, EVAL_TITLES)
    seed_everything(seed + 7)
    ref = sample(reference, tokenizer, eval_prompts, device=device, desc="pi_ref, held-out", **gen)
    other = sample(reference, tokenizer, eval_prompts, device=device, desc="pi_ref, held-out pairs", **gen).texts
    gold = lambda y: gold_reward(y, cfg.gold)  # noqa: E731
    ev = held_out(eval_prompts, *label_pairs(ref.texts, other, bias, np.random.default_rng([seed, 2]), cfg.gold),
                  reference, tokenizer, cfg.max_length, device, ref, gold=cfg.gold,
                  ref_gold=np.array([gold(y) for y in ref.texts]), ref_length=float(np.mean([len(words(y)) for y in ref.texts])),
                  ref_shown=sample_rows(eval_prompts[:N_SHOW], ref, tokenizer.eos_token_id, gold))
    return prompts, chosen, rejected, ev


def held_out(prompts, chosen, rejected, reference, tokenizer, max_length, device, ref, **baseline):
    """HeldOut of held-out pairs (prompts, chosen, rejected) and pi_ref's responses `ref` (Sampled) to the prompts,
    all scored by pi_ref once; the pairs' prompts are the ones the policies answer."""
    pairs = tokenize_pairs(tokenizer, prompts, chosen, rejected, max_length)
    pairs.ref_logps = all_logps(reference, pairs.tokens, np.arange(2 * len(pairs.keep)), device)  # (2M,)
    samples = token_rows([ref.prompt_ids[i] for i in pairs.keep], [ref.response_ids[i] for i in pairs.keep],
                         tokenizer.eos_token_id)  # (P, T), exactly the ids drawn
    return HeldOut(*([x[i] for i in pairs.keep] for x in (prompts, chosen, rejected)), pairs=pairs, ref_samples=samples,
                   ref_samples_logps=all_logps(reference, samples, np.arange(len(pairs.keep)), device), **baseline)


def user_task(pairs, reference, tokenizer, cfg, seed, device):
    """your pairs -> (prompts, chosen, rejected) of the training split, and a HeldOut of the held-out split. the texts
    are as data.read_pairs wrote them: a conversational pair's in the model's chat template, its responses ChatTurns
    (the template's closing, no eos)."""
    train, held = data.split_pairs(pairs, seed)
    held = [row for row in held if fits(tokenizer, row[0], cfg.max_length)]
    seed_everything(seed + 7)
    drawn = sample(reference, tokenizer, [row[0] for row in held], cfg.max_new_tokens, cfg.max_length, device, "pi_ref")
    ev = held_out(*([row[i] for row in held] for i in range(3)), reference, tokenizer, cfg.max_length, device, drawn)
    # tokenised now, so plain str: what prepared() saves, torch.load(weights_only=True) reads back
    ev.chosen, ev.rejected = [str(t) for t in ev.chosen], [str(t) for t in ev.rejected]
    ev.ref_shown = sample_rows(ev.prompts[:N_SHOW], drawn, tokenizer.eos_token_id)
    return (*([row[i] for row in train] for i in range(3)), ev)


def drawn_pairs(reference, tokenizer, prompts, cfg, seed, device):
    """--unlabeled: two responses from pi_ref to each of cfg.unlabeled prompts (the built-in task's, or the training
    prompts in turn). -> (prompts, first, second). no one labels them: distillation needs only the reward models."""
    extra = make_prompts(np.random.default_rng([seed, 3]), cfg.unlabeled, TITLES) if cfg.data == "" \
        else [prompts[i % len(prompts)] for i in range(cfg.unlabeled)]
    seed_everything(seed + 13)
    drawn = sample(reference, tokenizer, extra + extra, cfg.max_new_tokens, cfg.max_length, device, "unlabelled pairs").texts
    return extra, drawn[:cfg.unlabeled], drawn[cfg.unlabeled:]


def kl_pool(reference, tokenizer, prompts, cfg, seed, device):
    """the forward-KL term's sample: steps * M responses (M: pool_rows_per_step) drawn from pi_ref on the training
    prompts in turn, once before training, so that each is used once. -> Tokens (P, T), their log pi_ref (P,)"""
    seed_everything(seed + 11)
    n = cfg.steps * pool_rows_per_step(cfg.batch_size, cfg.pool_batch)
    drawn = sample(reference, tokenizer, [prompts[i % len(prompts)] for i in range(n)],
                   cfg.max_new_tokens, cfg.max_length, device, "forward-KL pool from pi_ref")
    pool = token_rows(drawn.prompt_ids, drawn.response_ids, tokenizer.eos_token_id)  # (P, T): exactly the ids drawn
    return pool, all_logps(reference, pool, np.arange(len(drawn.texts)), device)


def note_cut(truncated, skipped, max_length):
    if truncated or skipped:
        print(f"note: {truncated} pairs truncated to --max-length {max_length}, {skipped} skipped (prompt alone too long)")


def gold_of(ev):
    """the gold reward of a response on the built-in task (its gold reader), or None on your own data."""
    return (lambda y: gold_reward(y, ev.gold)) if ev.gold else None


def diagnose(ev, beta, device):
    """what results.json keeps of each reward model: report.reward_model_stats on the held-out pairs of `ev`."""
    gold = gold_of(ev)
    return lambda rm, train_scores: report.reward_model_stats(score(rm, ev.pairs.tokens, device), train_scores,
                                                              ev.chosen, ev.rejected, gold, beta)


def prepare(reference, tokenizer, cfg, bias, seed, device, user_pairs):
    """one (bias, seed)'s training pairs with reference log-probs, reward scores and the forward-KL pool, its HeldOut,
    what results.json keeps of the data (pairs, unlabeled, skipped, truncated, longer_won, heldout_pairs) and the
    reward models' diagnostics."""
    prompts, chosen, rejected, ev = builtin_task(reference, tokenizer, cfg, bias, seed, device) if user_pairs is None \
        else user_task(user_pairs, reference, tokenizer, cfg, seed, device)
    distil, fit = {"d-dpo", "e-dpo"} & set(cfg.method_list()), data.fitting(tokenizer, prompts, cfg.max_length)
    extra = drawn_pairs(reference, tokenizer, fit, cfg, seed, device) if cfg.unlabeled and distil else ([], [], [])
    pairs = tokenize_pairs(tokenizer, prompts + extra[0], chosen + extra[1], rejected + extra[2], cfg.max_length)
    pairs.labelled = sum(i < len(prompts) for i in pairs.keep)  # kept pairs are in order: the labelled ones first
    note_cut(pairs.n_truncated, pairs.skipped, cfg.max_length)
    pairs.ref_logps = all_logps(reference, pairs.tokens, np.arange(2 * len(pairs.keep)), device)  # (2N,), computed once
    longer_won = np.array([len(words(chosen[i])) > len(words(rejected[i])) for i in pairs.keep[:pairs.labelled]])  # (N,)
    diagnostics = []
    if distil and scorers.brought(cfg.reward_models):  # the family you brought scores every kept pair
        texts = [[x[i] for i in pairs.keep] for x in (prompts + extra[0], chosen + extra[1], rejected + extra[2])]
        question = data.users_question(cfg.model) if cfg.chat_template else str
        pairs.rm_family, _, diagnostics = scorers.family(cfg, user_pairs, texts, (ev.prompts, ev.chosen, ev.rejected),
                                                         device, gold_of(ev), question)  # (K, 2N)
        pairs.rm_plain = pairs.rm_family[0]  # (2N,): d-DPO distils the first
        scorers.say(diagnostics, cfg.beta, len(pairs.keep))
    elif distil:  # reward models only for the methods that distil them, trained on the labelled pairs only
        pairs.rm_plain, pairs.rm_family, diagnostics = reward_scores(reference, pairs, diagnose(ev, cfg.beta, device), cfg,
                                                                      seed, device, longer_won)
    if {"e-dpo", "p-dpo"} & set(cfg.method_list()):  # sampled on the prompts that leave room for a response
        pairs.pool, pairs.pool_ref_logps = kl_pool(reference, tokenizer, fit, cfg, seed, device)
    info = dict(pairs=pairs.labelled, unlabeled=len(pairs.keep) - pairs.labelled, skipped=pairs.skipped,
                truncated=pairs.n_truncated, longer_won=float(longer_won.mean()), heldout_pairs=len(ev.pairs.keep))
    return pairs, ev, info, [dict(bias=bias, seed=seed, **d) for d in diagnostics]


def prepared(record, reference, tokenizer, cfg, bias, seed, device, user_pairs):
    """prepare's output for one (bias, seed), and the seconds prepare took: read from the run's folder
    (RunRecord.prepared_path) where an earlier session of the run computed it, else computed and written there whole
    (under a temporary name, then renamed), so that --resume need not compute it again."""
    path = record.prepared_path(bias, seed)
    if os.path.isfile(path):
        try:
            saved = torch.load(path, weights_only=True)
            return tuple(unplain(saved["prepared"])), saved["seconds"]
        except Exception as e:  # written whole, so rare; prepared again, it comes out the same
            print(f"note: {path} cannot be read ({records.one_line(e)}); preparing it again")
    t0 = time.time()
    out = prepare(reference, tokenizer, cfg, bias, seed, device, user_pairs)
    seconds, tmp = time.time() - t0, f"{path}.tmp{os.getpid()}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        torch.save(dict(bias=bias, seed=seed, seconds=seconds, prepared=plain(out)), tmp)
        os.replace(tmp, path)
    finally:  # renamed, or left by an error, ctrl-c or SIGTERM: no temporary file stays
        if os.path.exists(tmp):
            os.remove(tmp)
    return out, seconds


def plain(x):
    """prepare's output as torch.load(weights_only=True) reads it back (which runs no code from the file): a
    dataclass as a dict that names its class, a numpy array as a tensor, a numpy number as a python one."""
    if is_dataclass(x):
        return {"__class__": type(x).__name__, **{f.name: plain(getattr(x, f.name)) for f in fields(x)}}
    if isinstance(x, np.ndarray):
        return {"__array__": torch.from_numpy(x)}
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x.item() if isinstance(x, np.generic) else x


def unplain(x):
    """plain's inverse; a tuple comes back as a list."""
    if isinstance(x, dict) and "__class__" in x:
        cls = {c.__name__: c for c in (Pairs, Tokens, HeldOut)}[x["__class__"]]
        return cls(**{k: unplain(v) for k, v in x.items() if k != "__class__"})
    if isinstance(x, dict) and "__array__" in x:
        return x["__array__"].numpy()
    if isinstance(x, dict):
        return {k: unplain(v) for k, v in x.items()}
    return [unplain(v) for v in x] if isinstance(x, list) else x


# -----------------------------------------------------------------------------
# 3. evaluation


@torch.no_grad()
def sequence_kl(policy, reference, tokens, device, batch_size=16):
    """KL(pi || pi_ref) of each response, summed over its positions t of KL(pi(. | y<t) || pi_ref(. | y<t)) over the
    whole vocabulary, and its log-ratio log pi(y) - log pi_ref(y): (N,), (N,). each term is >= 0, and over samples
    of pi the mean is an unbiased estimate of the KL between whole responses (the chain rule)."""
    kl, logratio = [], []
    # about eight (b, T, V) tensors are alive at once (the logits, lp, lq, p, lp - lq, the product, the where)
    batch_size = rddpo.rows_per_pass(policy, tokens, batch_size, floats=2**24 // 8)
    for i in range(0, len(tokens.input_ids), batch_size):
        ids, mask, resp = batch_tensors(tokens, np.arange(i, min(i + batch_size, len(tokens.input_ids))), device)
        lp = forward(policy, ids, mask)[:, :-1].float().log_softmax(-1)  # (b, T-1, V): position t-1 predicts t
        lq = forward(reference, ids, mask)[:, :-1].float().log_softmax(-1)  # (b, T-1, V)
        on, p = resp[:, 1:].bool(), lp.exp()  # (b, T-1), (b, T-1, V)
        kl.append(torch.where(on, torch.where(p > 0, p * (lp - lq), 0.0).sum(-1), 0.0).sum(-1).cpu())  # (b,): 0 log 0 = 0
        drawn = (lp - lq).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (b, T-1)
        logratio.append(torch.where(on, drawn, 0.0).sum(-1).cpu())  # (b,)
    return torch.cat(kl), torch.cat(logratio)


@torch.no_grad()
def evaluate(policy, reference, tokenizer, pairs, ev, beta, max_new_tokens, max_length, device, n_show=0):
    """-> (a dict of floats, the first n_show samples as dicts). on held-out prompts, of the policy's samples: kl
    (KL(pi || pi_ref) per response, nats), kl_per_token, tokens and length (words); of pi_ref's samples: fkl_heldout
    (KL(pi_ref || pi), nats); on the built-in task also gold_reward, gold_ref, length_ref and win_rate (against pi_ref's
    samples, ties half). on the labelled training pairs: logps_chosen_change, logps_rejected_change, fkl_train (the
    mean of log pi_ref - log pi over their responses), margin_mean and margin_max (beta h); heldout_accuracy: the
    share of held-out pairs with h > 0, ties (h = 0, as for pi_ref) half."""
    drawn = sample(policy, tokenizer, ev.prompts, max_new_tokens, max_length, device, "evaluate")
    tokens = token_rows(drawn.prompt_ids, drawn.response_ids, tokenizer.eos_token_id)  # exactly the ids drawn
    (kl, logratio), n_tokens = sequence_kl(policy, reference, tokens, device), tokens.response_mask.sum(-1).float()  # (P,)
    fkl = ev.ref_samples_logps - all_logps(policy, ev.ref_samples, np.arange(len(ev.ref_samples_logps)), device)  # (P,)
    res = dict(kl=kl.mean().item(), kl_per_token=(kl.sum() / n_tokens.sum()).item(), tokens=n_tokens.mean().item(),
               length=float(np.mean([len(words(t)) for t in drawn.texts])), fkl_heldout=fkl.mean().item())
    lab = np.arange(pairs.labelled)  # (N,)
    pc, pr = all_logps(policy, pairs.tokens, np.concatenate([lab, lab + len(pairs.keep)]), device).chunk(2)  # (N,) each
    rc, rr = pairs.ref_logps[lab], pairs.ref_logps[lab + len(pairs.keep)]  # (N,) each
    margins = beta * logratio_margin(pc, pr, rc, rr)  # (N,)
    res.update(logps_chosen_change=(pc - rc).mean().item(), logps_rejected_change=(pr - rr).mean().item(),
               fkl_train=((rc - pc) + (rr - pr)).mean().item() / 2, margin_mean=margins.mean().item(),
               margin_max=margins.max().item())
    gold = (lambda y: gold_reward(y, ev.gold)) if ev.gold else None
    if gold:
        g = np.array([gold(t) for t in drawn.texts])  # (P,)
        res.update(gold_reward=float(g.mean()), gold_ref=float(ev.ref_gold.mean()), length_ref=ev.ref_length,
                   win_rate=float(np.mean((g > ev.ref_gold) + 0.5 * (g == ev.ref_gold))))
    h = logratio_margin(*all_logps(policy, ev.pairs.tokens, np.arange(2 * len(ev.pairs.keep)), device).chunk(2),
                        *ev.pairs.ref_logps.chunk(2))  # (M,)
    res["heldout_accuracy"] = ((h > 0).float() + 0.5 * (h == 0).float()).mean().item()
    return res, sample_rows(ev.prompts[:n_show], drawn, tokenizer.eos_token_id, gold, logratio.tolist())


def sample_rows(prompts, drawn, eos, gold_reward=None, logratio=None):
    """samples.jsonl rows of the responses drawn (a Sampled) for the prompts given; zip stops at the shorter."""
    return [dict(prompt=p, response=t, tokens=len(ids), cut_off=eos not in ids, length=report.n_words(t),
                 **({"gold": gold_reward(t)} if gold_reward else {}), logratio=0.0 if logratio is None else logratio[i])
            for i, (p, t, ids) in enumerate(zip(prompts, drawn.texts, drawn.response_ids))]


# -----------------------------------------------------------------------------
# 4. the run


def train_and_evaluate(reference, tokenizer, pairs, ev, method, cfg, bias, seed, device, log, save_dir=None):
    """one method from the reference on the prepared pairs -> (its record, its samples). the record: bias, seed,
    method, train_seconds, the last evaluation's numbers, checkpoints (each evaluation, with its step) and for
    e-DPO member_min_share. every evaluation draws the same random numbers (common random numbers along training)."""
    checkpoints, shown, t0 = [], [], time.time()
    def checkpoint(step, policy):  # with LoRA, pi_ref is the policy with its adapters off: no second model
        ref = rddpo.AdaptersOff(policy) if cfg.lora else reference.to(device)
        seed_everything(seed * 100 + METHODS.index(method))
        metrics, shown[:] = evaluate(policy, ref, tokenizer, pairs, ev, cfg.beta, cfg.max_new_tokens,
                                     cfg.max_length, device, N_SHOW)
        checkpoints.append(dict(step=step, **metrics))
        if not cfg.lora:
            reference.cpu()  # while a policy trains, only the policy is on the device
    if not cfg.lora:
        reference.cpu()
    tag = dict(bias=bias, seed=seed, method=method)  # on every logged row
    policy, member_min_share = train_policy(reference, pairs, method, cfg, seed, device, checkpoint=checkpoint,
                                            log=lambda step, m: log(dict(tag, step=step, **m)))
    for part in (policy, tokenizer) if save_dir else ():  # a folder that from_pretrained loads (with LoRA, peft's)
        part.save_pretrained(policy_folder(save_dir, method, bias, seed))
    rddpo.free_policy(policy)  # a LoRA policy's adapters out of the reference again
    reference.to(device)
    record = dict(bias=bias, seed=seed, method=method, train_seconds=time.time() - t0, checkpoints=checkpoints,
                  **{k: v for k, v in checkpoints[-1].items() if k != "step"},
                  **({"member_min_share": member_min_share} if member_min_share else {}))
    return record, [dict(bias=bias, seed=seed, policy=method, **row) for row in shown]


def policy_folder(run_dir, method, bias, seed):
    """where --save-policy writes a trained policy and its tokenizer: RUN/policy-METHOD[-biasB]-seedS."""
    return os.path.join(run_dir, f"policy-{method}{'' if bias is None else f'-bias{bias}'}-seed{seed}")


def how_to_load(folder, lora):
    """the one call that loads a saved policy from its folder (both tools print it): for LoRA, peft's, which first
    loads pi_ref from the base_model_name_or_path in the folder's adapter_config.json (models.named: the reference's
    absolute folder, or its hub name), then the adapters; for a whole model, transformers'."""
    if lora:
        return (f"peft.AutoPeftModelForCausalLM.from_pretrained({folder!r}) (LoRA adapters on pi_ref, which peft "
                "loads first from the base_model_name_or_path in their adapter_config.json)")
    return f"transformers.AutoModelForCausalLM.from_pretrained({folder!r})"


def run(cfg, given=None, argv=None, resume=None):
    """the whole experiment; returns (results, run folder). every check runs before any work. resume: an unfinished
    run's folder, whose own config cfg is (resumed): its finished method runs are kept, the rest are run."""
    if cfg.grid:  # each setting is a run of its own
        return grid.run_grid(cfg, given, argv, run, METHODS)
    started = time.time()
    cli.check_config(cfg, METHODS, given)
    scorers.check(cfg.reward_models, cfg.reward_scale, cfg.data, cfg.unlabeled)
    cfg = replace(models.model_defaults(cfg), methods=",".join(cfg.method_list()), sft_steps=models.sft_steps(cfg))
    device = cli.pick_device(cfg.device)
    amp = cli.precision(device, cfg.dtype)
    user_pairs = data.user_pairs(cfg)  # your own pairs (--data), or None
    splits = [data.split_pairs(user_pairs, seed) for seed in cfg.seeds] if user_pairs else []
    data.check_splits(splits, None, cfg.batch_size, cfg.max_length)  # enough pairs for a batch, before any work
    records.check_writable(cfg.out)
    reference, tokenizer = load_reference(cfg, device, check=lambda tok: data.check_data(user_pairs, splits, tok, cfg))
    cfg = replace(cfg, lr=learning_rate(cfg, reference))  # results.json records the rate used
    biases, info = [None] if cfg.data else cli.sweep_bias_list(cfg), records.run_info(argv, started)  # no annotator
    config = {k: v for k, v in asdict(cfg).items() if not (cfg.data and k in cli.TASK_ONLY)}
    record = records.RunRecord.reopen(resume, (biases[0], cfg.seeds[0]), info, started) if resume else \
        records.RunRecord(cfg.out, config, device, (biases[0], cfg.seeds[0]), info, started)
    with record, amp:
        run_all(record, reference, tokenizer, cfg, biases, device, user_pairs)
    record.finish(METHODS, data.shown_question(cfg, user_pairs))
    if cfg.save_policy:
        first = how_to_load(policy_folder(record.dir, cfg.method_list()[0], biases[0], cfg.seeds[0]), cfg.lora)
        print(f"policies saved with their tokenizers in {record.dir}/policy-*; load one with {first}")
    return record.results, record.dir


def run_all(record, reference, tokenizer, cfg, biases, device, user_pairs):
    """every (bias, seed) and method that the record does not hold yet (all of them, but on --resume), in order:
    every method from the same reference, on the same pairs; each record is kept as soon as it is made. once a
    method has run, one line estimates the time the run has to go (clock_line)."""
    told = False
    for bias in biases:
        for seed in cfg.seeds:
            if record.has_data(bias, seed):  # wholly done before --resume: nothing to prepare
                continue
            t0 = time.time()
            ref, sft = models.data_reference(reference, tokenizer, cfg, user_pairs, seed, device)
            took = time.time() - t0  # beside prepare's own seconds, measured now or when first computed
            (pairs, ev, kept, diagnostics), seconds = prepared(record, ref, tokenizer, cfg, bias, seed, device,
                                                               user_pairs)
            if not record.done(bias, seed):  # as an uninterrupted run: pi_ref's samples and reward models once
                record.samples += [dict(bias=bias, seed=seed, policy="pi_ref", **row) for row in ev.ref_shown]
                record.results["reward_models"] += diagnostics
            for method in (m for m in cfg.method_list() if not record.done(bias, seed, m)):
                record.add(*train_and_evaluate(ref, tokenizer, pairs, ev, method, cfg, bias, seed, device,
                                               record.log, record.dir if cfg.save_policy else None))
                told = told or tell_time(record, cfg, biases, device, took + seconds)
            record.results["data"].append(dict(bias=bias, seed=seed, **kept, **({"sft": sft} if sft else {})))


CLOCK_FROM = 60  # seconds: a run with less than this to go prints no clock (nor do a notebook's short runs)


def tell_time(record, cfg, biases, device, prep_seconds):
    """print clock_line for the method runs the record does not hold yet, if they take CLOCK_FROM or more. -> True"""
    keys = [(b, s) for b in biases for s in cfg.seeds]
    methods = [m for b, s in keys for m in cfg.method_list() if not record.done(b, s, m)]
    preps, runs = sum(not record.done(b, s) for b, s in keys), record.results["runs"]
    if methods and seconds_to_go(cfg, runs, prep_seconds, preps, methods) >= CLOCK_FROM:
        print(clock_line(cfg, biases, device, prep_seconds, runs, preps, methods), flush=True)
    return True


def seconds_to_go(cfg, runs, prep_seconds, preps_to_go, methods_to_go):
    """a (bias, seed)'s preparation as long as the last one took, for each still to prepare, plus each method run to
    go at its expected time (expected_seconds)."""
    each = expected_seconds(cfg, runs)
    return prep_seconds * preps_to_go + sum(each[m] for m in methods_to_go)


POOLED = ("e-dpo", "p-dpo")  # the methods with the forward-KL term: their steps also run the pool's responses


def expected_seconds(cfg, runs):
    """{method: the seconds one run of it is expected to take} from the method runs measured so far (their
    train_seconds: training and its evaluations): its own latest run's where it has run (choice: the latest, not
    the mean, as a resumed run may go on on another device or a quieter machine); else the mean of the methods of
    its kind that have (e-DPO and p-DPO, or the others); else the other kind's, e-DPO and p-DPO at (2B + M) / 2B
    times the others (1.5 at the default --pool-batch B): each of their steps runs the policy on the M pool
    responses beside the batch's 2B pair rows, and those passes are the bulk of a method's time."""
    ratio = (2 * cfg.batch_size + pool_rows_per_step(cfg.batch_size, cfg.pool_batch)) / (2 * cfg.batch_size)
    times = {}
    for r in runs:  # in the order they ran: the last one stays
        times[r["method"]] = [r.get("train_seconds") or 0.0]
    mean = lambda values: sum(values) / len(values) if values else 0.0  # noqa: E731
    kind = {pooled: [mean(v) for m, v in times.items() if (m in POOLED) == pooled] for pooled in (False, True)}
    def expect(method):
        pooled = method in POOLED
        if method in times or kind[pooled]:
            return mean(times.get(method) or kind[pooled])
        return mean(kind[not pooled]) * (ratio if pooled else 1 / ratio)
    return {m: expect(m) for m in cfg.method_list()}


def clock_line(cfg, biases, device, prep_seconds, runs, preps_to_go, methods_to_go):
    """one line: the run's remaining time on this device from what it has measured. the estimate: a (bias, seed)'s
    preparation (its pairs, reward models and pool, as long as the last one took) for each (bias, seed) still to
    prepare, plus each method run to go at its expected time (expected_seconds); past an hour, the budgets that fit.
    the reference is loaded (or fine-tuned) once, before, and is not counted."""
    each, left = expected_seconds(cfg, runs), seconds_to_go(cfg, runs, prep_seconds, preps_to_go, methods_to_go)
    counts = [(len(cfg.seeds), "seed", "seeds"), (len(cfg.method_list()), "method", "methods")]
    size = " x ".join(f"{n} {one if n == 1 else many}" for n, one, many in
                      ([] if cfg.data else [(len(biases), "bias", "biases")]) + counts)
    ran = {r["method"] for r in runs}
    measured = ", ".join(f"{duration(each[m])} per {m} run" for m in cfg.method_list() if m in ran)
    line = (f"run: about {duration(left)} to go on {device} ({size}; measured: {duration(prep_seconds)} per "
            f"preparation, {measured})")
    options = faster(cfg, device, prep_seconds, each, len(biases) * len(cfg.seeds)) if left > 3600 else []
    return line + (f"; over an hour: try {' or '.join(options)}" if options else "")


def faster(cfg, device, prep_seconds, each, n_keys):
    """the budgets that fit a run of over an hour: --quick, unless the run is as small already, with its time for
    the whole run scaled by the step counts (a preparation by --rm-steps, its reward models being its bulk; a method
    run by --steps; --quick's fewer pairs and held-out prompts make both shorter still); a GPU, unless on one."""
    prep, method = (min(1.0, QUICK[k] / getattr(cfg, k)) for k in ("rm_steps", "steps"))
    options = []
    if prep < 1 or method < 1:
        options.append(f"--quick (about {duration(n_keys * (prep_seconds * prep + sum(each.values()) * method))})")
    if torch.device(device).type != "cuda":
        options.append("a GPU (--device cuda)")
    return options


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    def command():
        cfg, given, extra = parse_args(argv, RESUME)
        if extra["resume"] is None:
            return run(cfg, given, argv)
        return run(resumed(extra["resume"], cfg, given), argv=argv, resume=extra["resume"])
    with cli.sigterm_as_interrupt():  # a scheduler's SIGTERM stops the run as ctrl-c does
        return cli.cli(command, failures=(TrainingDiverged,))


if __name__ == "__main__":
    raise SystemExit(main())
