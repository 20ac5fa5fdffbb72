"""
mutation check: the share of realistic one-line bugs that the fast test suite catches.

    python tests/mutation_check.py                    # every mutant, one at a time (tens of minutes on 2 cores)
    python tests/mutation_check.py --list             # the mutants, without running anything
    python tests/mutation_check.py --only annotate --only gold_reward --jobs 2
    python tests/mutation_check.py --pins --only train_policy   # do the pins, at their tolerance, catch them?

Each mutant below is one exact snippet of a module (rddpo.py, experiment.py, task.py, models.py, data.py, report.py
or toy_bandit.py), its replacement and what the bug is. The clean suite runs first (a broken suite would "catch"
everything). Then, for each mutant, the working tree's files (those git tracks, and new ones it does not ignore)
are copied into a fresh temporary folder, the mutant is applied there, and
`python -m pytest -q -x -m "not slow" -p no:cacheprovider` runs in that folder on every test file, the mutated module's own first (so -x stops early on a
catch); the real files are never touched, so an interrupted check leaves no mutant behind. A mutant is caught when
pytest fails, or runs past --timeout. It prints a line per mutant, the share caught and the survivors, and exits 0
when at least 90 % are caught (1 otherwise, 2 when a snippet no longer occurs exactly once or the clean suite
fails). Not part of CI: each surviving mutant costs a whole fast-suite run.

--pins asks another question of the same mutants: test_experiment.py's end-to-end test compares a --quick run's gold
reward, win rate, KL and largest margin with pinned numbers, at a tolerance measured to hold on any CPU (issue 21).
For each mutant it runs that --quick run on the mutated copy and prints the largest relative change from the clean
copy's numbers; a mutant is caught by tight pins when that is above 1e-5 (the tolerance before, which held only on
the machine that wrote the pins) and by the test when test_experiment.pins_missed says so (a failed run is caught by
both). It exits 0 when the test's pins catch every mutant the tight ones do. Standard library only.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor, as_completed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project's root
PYTEST = [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider"]
TARGET = 0.90

Mutant = namedtuple("Mutant", "file old new description")
R, E, T, B = "rddpo.py", "harness/experiment.py", "harness/task.py", "toy_bandit.py"  # where most mutants live

MUTANTS = [
    # --- the five losses, the member losses and the forward-KL estimate
    Mutant(R, "return -F.logsigmoid(beta * h).mean()", "return -F.logsigmoid(-beta * h).mean()",
           "dpo_loss: margin sign flipped"),
    Mutant(R, "return -F.logsigmoid(beta * h).mean()", "return -F.logsigmoid(h).mean()",
           "dpo_loss: beta missing"),
    Mutant(R, "return ((h - 1 / (2 * beta)) ** 2).mean()", "return ((h - 1 / beta) ** 2).mean()",
           "ipo_loss: target 1/beta instead of 1/(2 beta)"),
    Mutant(R, "return ((rm_chosen_rewards - rm_rejected_rewards - beta * h) ** 2).mean()",
           "return ((rm_chosen_rewards - rm_rejected_rewards - h) ** 2).mean()",
           "distill_loss: beta missing"),
    Mutant(R, "return ((rm_chosen_rewards - rm_rejected_rewards - beta * h) ** 2).mean()",
           "return ((rm_rejected_rewards - rm_chosen_rewards - beta * h) ** 2).mean()",
           "distill_loss: reward difference reversed"),
    Mutant(R, "return ((rm_chosen_rewards - rm_rejected_rewards - beta * h) ** 2).mean(-1)  # (K,)",
           "return ((rm_chosen_rewards - rm_rejected_rewards - h) ** 2).mean(-1)  # (K,)",
           "distill_member_losses: beta missing"),
    Mutant(R, "return per_member.min() + gamma * forward_kl_estimate(policy_pool_logps, reference_pool_logps)",
           "return per_member.max() + gamma * forward_kl_estimate(policy_pool_logps, reference_pool_logps)",
           "pessimistic_distill_loss: min -> max"),
    Mutant(R, "return per_member.min() + gamma * forward_kl_estimate(policy_pool_logps, reference_pool_logps)",
           "return per_member.mean() + gamma * forward_kl_estimate(policy_pool_logps, reference_pool_logps)",
           "pessimistic_distill_loss: min -> mean"),
    Mutant(R, "per_member = distill_member_losses(*logps, rm_chosen_rewards, rm_rejected_rewards, beta)  # (K,)",
           "per_member = ((rm_chosen_rewards - rm_rejected_rewards - beta * logratio_margin(*logps)) ** 2)"
           ".min(0).values.mean().reshape(1)  # (K,)",
           "pessimistic_distill_loss: per-pair min instead of the min of batch losses"),
    Mutant(R, "return per_member.min() + gamma * forward_kl_estimate(policy_pool_logps, reference_pool_logps)",
           "return gamma * (per_member.min() + forward_kl_estimate(policy_pool_logps, reference_pool_logps))",
           "pessimistic_distill_loss: gamma multiplies the distillation loss too"),
    Mutant(R, "return per_member.min() + gamma * forward_kl_estimate(policy_pool_logps, reference_pool_logps)",
           "return per_member.min() - gamma * forward_kl_estimate(policy_pool_logps, reference_pool_logps)",
           "pessimistic_distill_loss: forward-KL penalty subtracted"),
    Mutant(R, "return dpo_loss(*logps, beta) + gamma * fkl", "return dpo_loss(*logps, beta) - gamma * fkl",
           "pessimistic_dpo_loss: forward-KL penalty subtracted"),
    Mutant(R, "return dpo_loss(*logps, beta) + gamma * fkl", "return dpo_loss(*logps, beta) + fkl",
           "pessimistic_dpo_loss: gamma missing"),
    Mutant(R, "return (reference_pool_logps - policy_pool_logps).mean()",
           "return (policy_pool_logps - reference_pool_logps).mean()", "forward_kl_estimate: sign flipped"),
    Mutant(R, "np.arange((step - 1) * self.m, step * self.m)", "np.arange(0, self.m)",
           "train_policy: every step reuses the pool's first batch (memorising pays again)"),
    Mutant(R, "pool_rows_per_step(knobs.batch_size, knobs.pool_batch)", "pool_rows_per_step(knobs.batch_size)",
           "train_policy: --pool-batch ignored (B pool rows a step)"),
    Mutant(E, "n = cfg.steps * pool_rows_per_step(cfg.batch_size, cfg.pool_batch)", "n = cfg.steps * cfg.batch_size",
           "kl_pool: the pool ignores --pool-batch (steps x B responses)"),
    Mutant(R, "self.drawn_from = len(pairs.keep) if method in (\"d-dpo\", \"e-dpo\") else pairs.labelled",
           "self.drawn_from = len(pairs.keep)", "train_policy: DPO trains on the unlabelled pairs' arbitrary orientation"),
    Mutant(R, "idx = [np.arange(pairs.labelled)] + [", "idx = [np.arange(len(pairs.keep))] + [",
           "reward_scores: the plain reward model learns the unlabelled pairs as labelled"),
    Mutant(R, "return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()",
           "return -F.logsigmoid(rejected_rewards - chosen_rewards).mean()",
           "bradley_terry_loss: chosen and rejected swapped"),
    # --- implicit reward and the log-ratio margin
    Mutant(R, "((policy_chosen_logps - reference_chosen_logps)\n            - (policy_rejected_logps - reference_rejected_logps))",
           "((policy_chosen_logps - reference_rejected_logps)\n            - (policy_rejected_logps - reference_chosen_logps))",
           "logratio_margin: reference log-probs swapped"),
    Mutant(R, "((policy_chosen_logps - reference_chosen_logps)\n            - (policy_rejected_logps - reference_rejected_logps))",
           "((policy_rejected_logps - reference_rejected_logps)\n            - (policy_chosen_logps - reference_chosen_logps))",
           "logratio_margin: sign flipped (rejected minus chosen)"),
    Mutant(R, "return beta * (policy_logps - reference_logps)", "return beta * (reference_logps - policy_logps)",
           "implicit_reward: sign flipped"),
    Mutant(R, "return beta * (policy_logps - reference_logps)", "return policy_logps - reference_logps",
           "implicit_reward: beta missing"),
    # --- tokenisation and sequence log-probs
    Mutant(R, "return torch.where(response_mask[:, 1:].bool(), token_logps, 0.0).sum(-1)",
           "return torch.where(response_mask[:, :-1].bool(), token_logps, 0.0).sum(-1)",
           "sequence_logps: response mask off by one"),
    Mutant(R, "return torch.where(response_mask[:, 1:].bool(), token_logps, 0.0).sum(-1)",
           "return torch.where(response_mask[:, 1:].bool(), token_logps, 0.0).mean(-1)",
           "sequence_logps: mean over positions instead of the sum"),
    Mutant(R, "logps = logits[:, :-1].float().log_softmax(-1)", "logps = logits[:, :-1].log_softmax(-1)",
           "sequence_logps: float missing (bfloat16 log-probs)"),
    Mutant(R, "logps = logits[:, :-1].float().log_softmax(-1)", "logps = logits[:, 1:].float().log_softmax(-1)",
           "sequence_logps: logits not shifted (position t predicts token t)"),
    Mutant(R, "[[0] * len(p) + [1] * len(r) for p, r", "[[0] * (len(p) - 1) + [1] * (len(r) + 1) for p, r",
           "token_rows: response mask shifted onto the prompt's last token"),
    Mutant(R, "r = r + [tokenizer.eos_token_id]", "r = r",
           "encode: eos dropped from the response"),
    Mutant(R, "if apart else full[len(p):]", "if apart else full[len(p) - 1:]",
           "encode: response starts one token early"),
    # --- reward models and the family
    Mutant(R, "return (attention_mask * positions).argmax(-1)", "return attention_mask.sum(-1) - 1",
           "last_token_index: mask length - 1 (wrong under left padding)"),
    Mutant(R, "hidden[torch.arange(len(last)), last]", "hidden[:, -1]",
           "RewardModel: reads the last position, padding or not"),
    Mutant(R, "nn.init.zeros_(self.head.weight)", "nn.init.normal_(self.head.weight)",
           "RewardModel: head weight not zeroed"),
    Mutant(R, "self.backbone = lm.base_model if frozen else copy.deepcopy(lm.base_model)",
           "self.backbone = lm.base_model",
           "RewardModel: shares (and trains) the reference's backbone"),
    Mutant(R, "return bradley_terry_loss(chosen_rewards, rejected_rewards) + center * centering",
           "return bradley_terry_loss(chosen_rewards, rejected_rewards) - center * centering",
           "reward_model_loss: centering coefficient sign flipped"),
    Mutant(R, "rows = np.concatenate([part, part + n])  # (2b,)", "rows = np.concatenate([part, part])  # (2b,)",
           "train_reward_model: rejected rows index the chosen ones"),
    Mutant(R, " * (len(part) / batch_size)).backward()", ").backward()",
           "train_reward_model: a micro-batch's loss not weighted by its share of the batch's pairs"),
    Mutant(R, "shared=shared, micro_batch=cfg.micro_batch)", "shared=shared)",
           "reward_scores: the reward models ignore --micro-batch (all rows of a step at once)"),
    Mutant(R, "[i / (k - 1) for i in range(k)]", "[i / k for i in range(k)]",
           "family_shares: i/K instead of i/(K-1) (never reaches 1)"),
    Mutant(R, "n_long = int(round(share * n))", "n_long = int(round((1 - share) * n))",
           "resample_by_length_share: share inverted"),
    # --- the task: annotator and gold reward
    Mutant(T, "np.where(len1 == len2, coin, len1 > len2)", "np.where(len1 == len2, coin, len1 < len2)",
           "annotate: the biased annotator prefers the shorter response"),
    Mutant(T, "biased = rng.random(len(gold1)) < bias", "biased = rng.random(len(gold1)) > bias",
           "annotate: bias probability inverted"),
    Mutant(T, "np.where(gold1 == gold2, coin, gold1 > gold2)", "np.where(gold1 == gold2, coin, gold1 < gold2)",
           "annotate: the unbiased annotator prefers the lower gold reward"),
    Mutant(T, "np.where(gold1 == gold2, coin, gold1 > gold2)", "gold1 >= gold2",
           "annotate: gold ties always go to the first response"),
    Mutant(T, "pairs = [(a, b) if w else (b, a)", "pairs = [(b, a) if w else (a, b)",
           "label_pairs: winner and loser swapped"),
    Mutant(T, "return (pos - neg) / max(1, pos + neg + sum(a in NEUTRAL for a in adjectives))",
           "return (pos - neg) / max(1, pos + neg)", "sentiment: neutral adjectives left out of the share"),
    Mutant(T, "return (pos - neg) / max(1, pos + neg + sum(a in NEUTRAL for a in adjectives))",
           "return (neg - pos) / max(1, pos + neg + sum(a in NEUTRAL for a in adjectives))", "sentiment: sign flipped"),
    Mutant(T, "distinct = list(dict.fromkeys(s for s in said if well_formed(s)))",
           "distinct = [s for s in said if well_formed(s)]", "gold_reward: repeated sentences count again"),
    Mutant(T, "return sentiment([s[-1] for s in distinct]) - noise - RAMBLE * max(0, len(said) - ENOUGH)",
           "return sentiment([s[-1] for s in distinct]) - noise", "gold_reward: the careful reader does not mind length"),
    Mutant(T, "return sentiment([s[-1] for s in distinct]) - noise - RAMBLE * max(0, len(said) - ENOUGH)",
           "return sentiment([s[-1] for s in distinct]) - RAMBLE * max(0, len(said) - ENOUGH)",
           "gold_reward: repetition and word salad cost nothing"),
    Mutant(T, "return re.findall(r\"[a-z]+\", text.lower())", "return text.split()",
           "words: case and punctuation are read as part of the words"),
    # --- training the policy
    Mutant(R, "        opt.zero_grad()\n        loss.backward()\n        opt.step()\n        book.after_step",
           "        loss.backward()\n        opt.step()\n        book.after_step",
           "train_policy: no zero_grad (gradients accumulate)"),
    Mutant(R, "rows = np.concatenate([idx, idx + len(self.pairs.keep)])  # (2B,)",
           "rows = np.concatenate([idx, idx])  # (2B,)",
           "train_policy: rejected rows index the chosen ones"),
    Mutant(R, "return without_dropout(copy.deepcopy(reference).to(device).train())",
           "return without_dropout(reference.to(device).train())",
           "new_policy: trains the reference itself"),
    Mutant(R, "return without_dropout(copy.deepcopy(reference).to(device).train())",
           "return without_dropout(type(reference)(reference.config).to(device).train())",
           "new_policy: starts from a freshly initialised model"),
    Mutant(R, "for i in range(1, n + 1)}", "for i in range(1, n)}",
           "train_policy: no checkpoint at the last step"),
    # --- evaluation
    Mutant(E, "np.mean((g > ev.ref_gold) + 0.5 * (g == ev.ref_gold))", "np.mean(g >= ev.ref_gold)",
           "evaluate: ties counted as wins"),
    Mutant(E, "np.mean((g > ev.ref_gold) + 0.5 * (g == ev.ref_gold))",
           "np.mean((g > g) + 0.5 * (g == g))",
           "evaluate: win rate of the policy against itself"),
    Mutant(E, "res = dict(kl=kl.mean().item(),", "res = dict(kl=-kl.mean().item(),",
           "evaluate: KL sign flipped"),
    Mutant(E, "sequence_kl(policy, reference, tokens, device)", "sequence_kl(reference, policy, tokens, device)",
           "evaluate: KL(pi_ref || pi) instead of KL(pi || pi_ref)"),
    Mutant(E, "p * (lp - lq)", "p * (lq - lp)", "sequence_kl: log-ratio sign flipped"),
    Mutant(E, "kl.append(torch.where(on, torch.where(p > 0, p * (lp - lq), 0.0).sum(-1), 0.0).sum(-1).cpu())",
           "kl.append(torch.where(p > 0, p * (lp - lq), 0.0).sum(-1).sum(-1).cpu())",
           "sequence_kl: response mask missing (prompt and padding counted)"),
    Mutant(E, "tokens = token_rows(drawn.prompt_ids, drawn.response_ids, tokenizer.eos_token_id)",
           "tokens = tokenize(tokenizer, ev.prompts, drawn.texts, max_length)",
           "evaluate: scores the re-tokenised text with an eos added (the old estimator)"),
    Mutant(E, "((h > 0).float() + 0.5 * (h == 0).float())", "((h > 0).float() + (h == 0).float())",
           "evaluate: held-out accuracy counts ties as right"),
    Mutant(R, "self.picked[losses.argmin()] += 1", "self.picked[losses.argmax()] += 1",
           "train_policy: e-DPO's member count records the largest loss"),
    # --- report.py, data.py and models.py
    Mutant("harness/report.py", "float(value[bias, s, method] - value[bias, s, base])",
           "float(value[bias, s, base] - value[bias, s, method])",
           "report.paired: difference sign flipped (base minus method)"),
    Mutant("harness/data.py", "return [pairs[i] for i in order[n_held:]]", "return [pairs[i] for i in order[n_held - 1:]]",
           "data.split_pairs: one held-out pair also in training"),
    Mutant("harness/models.py", "return ids, mask, ids.masked_fill(resp == 0, -100)", "return ids, mask, ids.masked_fill(mask == 0, -100)",
           "models.fine_tune: the prompt's tokens are learnt too"),
    Mutant("harness/models.py", "for part in split_pairs(pairs, seed)]", "for part in split_pairs(pairs, seed)[::-1]]",
           "models.data_reference: pi_ref is fine-tuned on the held-out pairs"),
    Mutant("harness/models.py", "chat_template=cfg.chat_template, seed=seed,", "chat_template=cfg.chat_template, seed=0,",
           "models.sft_cache: every seed shares one fine-tuned pi_ref"),
    Mutant("harness/models.py", "        seed_everything(1234 + seed)\n", "",
           "models.data_reference: fine-tuning unseeded (depends on what ran before)"),
    Mutant("harness/models.py", "position_ids=positions, cache=cache", "cache=cache",
           "models.sample_batch: no position ids (left padding shifts every position)"),
    Mutant("harness/models.py", "mask = torch.cat([mask, (~done).long()[:, None]], 1)",
           "mask = torch.cat([mask, done.long()[:, None]], 1)", "models.sample_batch: the new token's mask inverted"),
    Mutant("harness/report.py", "accuracy_labels=float(np.mean(r_w > r_l))", "accuracy_labels=float(np.mean(r_w >= r_l))",
           "report.reward_model_stats: a tie counts as right"),
    Mutant("harness/report.py", "((r_w > r_l) == (g_w > g_l))", "((r_w > r_l) == (g_w < g_l))",
           "report.reward_model_stats: accuracy against gold inverted"),
    # --- toy_bandit.py: the hand-written gradients
    Mutant(B, "-beta * sigmoid(-beta * h) / len(h)", "-beta * sigmoid(beta * h) / len(h)",
           "toy_bandit dpo_loss: gradient uses sigmoid(beta h)"),
    Mutant(B, "-2 * beta * d / len(h)", "-2 * d / len(h)",
           "toy_bandit distill_loss: gradient beta missing"),
    Mutant(B, "np.exp(logp) - ref", "ref - np.exp(logp)",
           "toy_bandit forward_kl: gradient sign flipped"),
    Mutant(B, "np.bincount(bandit.winners, dl_dh, n) - np.bincount(bandit.losers, dl_dh, n)",
           "np.bincount(bandit.losers, dl_dh, n) - np.bincount(bandit.winners, dl_dh, n)",
           "toy_bandit logratio_margin_grad: winners and losers swapped"),
    Mutant(B, "k = int(np.argmin([loss for", "k = int(np.argmax([loss for",
           "toy_bandit pessimistic_distill_loss: argmin -> argmax"),
    Mutant(B, "grad + m.gamma * g", "grad - m.gamma * g",
           "toy_bandit policy_loss: forward-KL gradient subtracted"),
]


def stale(mutants):
    """the mutants whose snippet does not occur exactly once in its file, as printable lines."""
    out = []
    for m in mutants:
        with open(os.path.join(ROOT, m.file)) as fh:
            n = fh.read().count(m.old)
        if n != 1 or m.old == m.new:
            out.append(f"{m.file}: {m.description}: snippet found {n} times (need exactly 1): {m.old!r}")
    return out


def working_tree_files():
    """the paths git tracks (as they are now on disk) and the untracked ones it does not ignore."""
    names = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, text=True, check=True).stdout.split("\0")
    return sorted({n for n in names if n and os.path.isfile(os.path.join(ROOT, n))})


def ordered_tests(files, mutant):
    """every test file, the mutated module's own first: the same tests, but -x stops sooner on a catch."""
    tests = [f for f in files if os.path.basename(f).startswith("test_") and f.endswith(".py")]
    own = "test_" + os.path.basename(mutant.file) if mutant else None
    return sorted(tests, key=lambda f: (os.path.basename(f) != own, f))


def mutated_copy(files, mutant, tmp):
    """copy the files into the folder tmp and apply the mutant there (None: leave them clean)."""
    for name in files:
        os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), os.path.join(tmp, name))
    if mutant:
        path = os.path.join(tmp, mutant.file)
        with open(path) as fh:
            text = fh.read()
        with open(path, "w") as fh:
            fh.write(text.replace(mutant.old, mutant.new, 1))


def run_in(cmd, cwd, timeout):
    """run cmd in cwd, in a process group of its own so that a timeout ends its children too.
    -> (exit status, or None past the timeout; its output)"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=cwd)  # the copy's modules, not an installed checkout's
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        return None, ""
    return proc.returncode, out


def run_suite(files, mutant, timeout):
    """the fast suite on a mutated copy (None: the clean suite). -> (pytest failed or timed out, seconds, what failed
    first)"""
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="rddpo-mutant-") as tmp:
        mutated_copy(files, mutant, tmp)
        rc, out = run_in(PYTEST + ordered_tests(files, mutant), tmp, timeout)
    if rc is None:
        return True, time.time() - t0, f"timeout after {timeout} s"
    first = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    last = [line for line in out.splitlines() if line.strip()][-1:] or ["no output"]
    return rc != 0, time.time() - t0, (first or last)[0].split(" - ")[0][:100]


# --pins: the pinned --quick run of tests/test_experiment.py on a mutated copy; it prints the numbers and the pins
# they miss at the test's tolerance (test_experiment.PIN_TOLERANCE, against test_experiment.PINNED)
PINS_CHILD = """
import json, os, sys, tempfile
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "tests")]  # the copy's root and its tests/
import test_experiment as pinned
results, _ = pinned.experiment.run(pinned.quick(tempfile.mkdtemp(dir="."), methods=pinned.PINNED_METHODS))
numbers = pinned.pinned_numbers(results)
print("PINS " + json.dumps(dict(numbers=numbers, missed=pinned.pins_missed(numbers))))
"""
TIGHT = 1e-5  # the tolerance the pins had before issue 21, which held only on the machine that wrote them


def run_pins(files, mutant, timeout):
    """the pinned run on a mutated copy. -> (its numbers or None when the run failed, the pins it misses, seconds)"""
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="rddpo-mutant-") as tmp:
        mutated_copy(files, mutant, tmp)
        rc, out = run_in([sys.executable, "-c", PINS_CHILD], tmp, timeout)
    lines = [line for line in out.splitlines() if line.startswith("PINS ")]
    if rc != 0 or not lines:
        return None, ["the run failed" if rc is not None else f"timeout after {timeout} s"], time.time() - t0
    got = json.loads(lines[-1][len("PINS "):])
    return got["numbers"], got["missed"], time.time() - t0


def moved(numbers, clean, keys=("gold_reward", "win_rate", "kl", "margin_max")):
    """the largest relative change of the pinned numbers from the clean run's, over the methods (nan: infinite)."""
    changes = [abs(numbers[m][k] - clean[m][k]) / max(abs(clean[m][k]), 1e-12) for m in clean for k in keys]
    return max(c if c == c else float("inf") for c in changes)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    ap.add_argument("--only", action="append", metavar="SUBSTRING",
                    help="run the mutants whose description contains SUBSTRING (repeatable: any of them)")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--pins", action="store_true", help="instead of the fast suite, run test_experiment.py's pinned "
                    "--quick run per mutant: do the pins at their tolerance catch what pins at rel. 1e-5 would?")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1: pytest uses every core)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per mutant; a timeout counts as caught")
    ap.add_argument("--skip-clean", action="store_true", help="do not run the clean suite first")
    return ap.parse_args(argv)


def check_suite(files, chosen, args):
    """the fast suite per mutant; prints a line each and the share caught. -> exit status"""
    if not args.skip_clean:
        failed, secs, what = run_suite(files, None, args.timeout)
        print(f"clean suite: {'FAILS: ' + what if failed else 'passes'} ({secs:.0f} s)", flush=True)
        if failed:
            print("fix the suite first: with a failing suite every mutant would count as caught")
            return 2
    caught, survivors = 0, []
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {pool.submit(run_suite, files, m, args.timeout): m for m in chosen}
        for done, future in enumerate(as_completed(futures), 1):
            m, (failed, secs, what) = futures[future], future.result()
            caught += failed
            survivors += [] if failed else [m]
            print(f"[{done:2d}/{len(chosen)}] {'caught  ' if failed else 'SURVIVED'} {secs:5.0f} s  {m.description}"
                  + (f"  ({what})" if failed else ""), flush=True)
    share = caught / len(chosen)
    print(f"\ncaught {caught} of {len(chosen)} mutants: {share:.0%} (target {TARGET:.0%})")
    for m in survivors:
        print(f"  survived: {m.file}: {m.description}")
    return 0 if share >= TARGET else 1


def check_pins(files, chosen, args):
    """the pinned run per mutant: caught by the tight pins (a number moves by more than TIGHT from this machine's
    clean run) and by the test's (test_experiment.pins_missed). -> exit status: 0 when the second catch every mutant the
    first does"""
    clean, missed, secs = run_pins(files, None, args.timeout)
    print(f"clean run: {'FAILS: ' + '; '.join(missed) if missed else 'within the pins'} ({secs:.0f} s)", flush=True)
    if missed:
        return 2
    tight = loose = 0
    lost = []
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {pool.submit(run_pins, files, m, args.timeout): m for m in chosen}
        for done, future in enumerate(as_completed(futures), 1):
            m, (numbers, missed, secs) = futures[future], future.result()
            change = float("inf") if numbers is None else moved(numbers, clean)
            tight, loose = tight + (change > TIGHT), loose + bool(missed)
            lost += [m] if change > TIGHT and not missed else []
            print(f"[{done:2d}/{len(chosen)}] largest change {change:8.2g}  tight pins "
                  f"{'caught' if change > TIGHT else 'missed'}  test {'caught' if missed else 'missed'}  {secs:4.0f} s  "
                  f"{m.description}", flush=True)
    print(f"\npins at rel. {TIGHT:g} catch {tight} of {len(chosen)}; the test's pins catch {loose} of {len(chosen)}")
    for m in lost:
        print(f"  caught by the tight pins only: {m.file}: {m.description}")
    return 0 if not lost else 1


def main(argv=None):
    args = parse_args(argv)
    problems = stale(MUTANTS)  # all of them, not only the selected: a refactor that breaks one is seen
    if problems:
        print("mutants that no longer match the code (update their snippets):", *problems, sep="\n  ")
        return 2
    chosen = [m for m in MUTANTS if not args.only or any(s in m.description for s in args.only)]
    if args.list or not chosen:
        for i, m in enumerate(chosen, 1):
            print(f"{i:3d}  {m.file:13s} {m.description}")
        print(f"{len(chosen)} of {len(MUTANTS)} mutants")
        return 0 if chosen else 2
    return (check_pins if args.pins else check_suite)(working_tree_files(), chosen, args)


if __name__ == "__main__":
    raise SystemExit(main())
