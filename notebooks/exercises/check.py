"""
Check the exercises: load FILE (the stubs of notebooks/exercises/exercises.py, once you have written
some of them, or a copy of that file anywhere), run every exercise on hand-worked numbers and on
seeded random inputs, and compare with rddpo.py and toy_bandit.py.

    python notebooks/exercises/check.py [FILE]   # FILE: notebooks/exercises/exercises.py by default

One line per exercise: passed, not yet written, or wrong (the input, what was expected, what came
back). Where the answer equals the output of a usual mistake (a flipped sign, beta missing or
applied twice, a mean where the formula sums, padding counted, the minimum taken per pair, the
reverse KL) a hint names it. Exit status 0 only when every exercise passes; 2 when FILE is missing
or does not import.
Tolerances: float64 inputs, rtol 1e-7 and atol 1e-9, except sequence_logps (rtol 1e-5, atol 1e-4),
which rddpo.py computes in float32.
"""
import argparse
import importlib.util
import math
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import rddpo
import toy_bandit as tb

HERE = os.path.dirname(os.path.abspath(__file__))
STUBS = os.path.join(HERE, "exercises.py")
TOL = dict(rtol=1e-7, atol=1e-9)  # float64 against float64
TOL_FLOAT32 = dict(rtol=1e-5, atol=1e-4)  # rddpo.sequence_logps works in float32


@dataclass
class Exercise:
    name: str        # the function's name in FILE, rddpo.py or toy_bandit.py
    cases: list      # (what the input is, its arguments, the expected output): hand-worked first
    mistakes: list   # (hint, the wrong formula: a function of the same arguments)
    tol: dict


# -----------------------------------------------------------------------------
# 1. the inputs: notebook 2's hand-worked pairs, and seeded random ones


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def hand_pairs():
    """notebook 2's section 4: B = 2 pairs, K = 2 reward models, M = 2 pool responses."""
    return dict(name="the hand-worked pairs of notebook 2, section 4 (beta 0.5)",
                logps=(t(-11, -13), t(-15, -12), t(-11, -12), t(-13, -12)), beta=0.5, gamma=0.1,
                rm=(t(1.0, 0.5), t(0.0, 0.0)),
                family=(torch.stack([t(1.0, 0.5), t(0.5, 0.0)]),
                        torch.stack([t(0.0, 0.0), t(0.0, 0.5)])),  # (K, B) each
                pool=(t(-10.0, -12.0), t(-9.5, -11.0)))


# seed, B, K, M, beta, gamma
RANDOM = [(1, 6, 3, 4, 0.37, 0.3), (2, 1, 2, 1, 1.7, 2.0), (3, 13, 5, 7, 0.1, 0.05)]


def random_pairs(seed, B, K, M, beta, gamma):
    g = torch.Generator().manual_seed(seed)

    def draw(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)
    ref = -5 - 25 * torch.rand(2, B, generator=g, dtype=torch.float64)  # (2, B): chosen, rejected
    pol = ref + draw(2, B, scale=2.0)  # (2, B): the policy a few nats from the reference
    pool_ref = -5 - 25 * torch.rand(M, generator=g, dtype=torch.float64)  # (M,)
    rm, family = draw(2, B), draw(2, K, B)
    return dict(name=f"random pairs (seed {seed}, B {B}, K {K}, M {M}, beta {beta}, gamma {gamma})",
                logps=(pol[0], pol[1], ref[0], ref[1]), beta=beta, gamma=gamma, rm=(rm[0], rm[1]),
                family=(family[0], family[1]), pool=(pool_ref + draw(M, scale=1.5), pool_ref))


def hand_tokens(nan_padding):
    """two rows, T = 6, V = 4, prompts of 2 tokens; row 1 holds 2 response tokens, then 2 of
    padding. the logits are 0 (log-prob -ln 4) but at row 0, position 1: (ln 3, 0, 0, 0), so token
    0 there has log-prob -ln 2."""
    logits = torch.zeros(2, 6, 4, dtype=torch.float64)  # (B, T, V)
    logits[0, 1, 0] = math.log(3)
    if nan_padding:
        logits[1, 4:] = math.nan
    ids = torch.tensor([[3, 1, 0, 2, 1, 3], [2, 2, 1, 3, 0, 0]])  # (B, T)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]])  # (B, T)
    name = "the hand-worked padded rows" + (", their padded logits nan" if nan_padding else "")
    return name, (logits, ids, mask)


def random_tokens(seed, side):
    """B = 4 rows of T = 9 tokens, V = 7: prompts of 1-3 tokens, responses of 1 or more, padding."""
    g = torch.Generator().manual_seed(seed)
    B, T, V = 4, 9, 7
    logits = 2 * torch.randn(B, T, V, generator=g, dtype=torch.float64)  # (B, T, V)
    ids = torch.randint(V, (B, T), generator=g)  # (B, T)
    mask = torch.zeros(B, T, dtype=torch.int64)  # (B, T)
    for b in range(B):
        p = int(torch.randint(1, 4, (), generator=g))
        r = int(torch.randint(1, T - p + 1, (), generator=g))
        pad = T - p - r
        start = p if side == "right" else pad + p
        mask[b, start:start + r] = 1
    return f"random rows (seed {seed}, {side}-padded)", (logits, ids, mask)


def random_bandit(seed, n, beta):
    rng = np.random.default_rng(seed)
    pi_ref = np.exp(tb.log_softmax(rng.normal(size=n)))  # (n,)
    winner, loser = (int(a) for a in rng.choice(n, 2, replace=False))
    return dict(name=f"a random bandit (seed {seed}, {n} arms, beta {beta})", pi_ref=pi_ref,
                reward=rng.normal(size=n), logits=rng.normal(scale=1.5, size=n), winner=winner,
                loser=loser, beta=beta)


# -----------------------------------------------------------------------------
# 2. the exercises: what each is checked against, and the usual mistakes


def margin(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)  # (B,)


def pair_exercise(name, args, hand, mistakes):
    """an exercise on pairs: the hand-worked pairs (expected: `hand`), then rddpo's function on
    RANDOM."""
    reference = getattr(rddpo, name)
    h = hand_pairs()
    cases = [(h["name"], args(h), np.asarray(hand, float))]
    for d in (random_pairs(*r) for r in RANDOM):
        cases.append((d["name"], args(d), as_array(reference(*args(d)))))
    return Exercise(name, cases, mistakes, TOL)


def implicit_reward():
    return pair_exercise(
        "implicit_reward", lambda d: (d["logps"][0], d["logps"][2], d["beta"]), [0.0, -0.5], [
            ("a flipped sign: it is beta * (log pi_theta - log pi_ref), the policy's minus the "
             "reference's", lambda p, r, b: b * (r - p)),
            ("beta is missing: the implicit reward is beta times the log-ratio",
             lambda p, r, b: p - r),
            ("beta is applied twice", lambda p, r, b: b * b * (p - r))])


def dpo_loss():
    def dpo(z=lambda b, h: b * h, sign=-1, reduce=torch.mean):
        return lambda pc, pr, rc, rr, b: sign * reduce(F.logsigmoid(z(b, margin(pc, pr, rc, rr))))
    hand = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(0.5))) / 2
    return pair_exercise("dpo_loss", lambda d: (*d["logps"], d["beta"]), hand, [
        ("the margin's sign is flipped: h is the chosen response's log-ratio minus the rejected "
         "one's", dpo(z=lambda b, h: -b * h)),
        ("the loss's sign is flipped: -log sigma(beta h) is positive", dpo(sign=1)),
        ("beta is missing: the sigmoid's argument is beta * h", dpo(z=lambda b, h: h)),
        ("beta is applied twice: the sigmoid's argument is beta * h, h the plain log-ratio margin",
         dpo(z=lambda b, h: b * b * h)),
        ("the reference is missing from h: each response enters as log pi_theta(y) - log pi_ref(y)",
         lambda pc, pr, rc, rr, b: -F.logsigmoid(b * (pc - pr)).mean()),
        ("a sum over the batch: the loss is the batch mean", dpo(reduce=torch.sum))])


def ipo_loss():
    def ipo(target, scale=lambda b: 1.0, reduce=torch.mean):
        return lambda *a: reduce((scale(a[4]) * margin(*a[:4]) - target(a[4])) ** 2)
    return pair_exercise("ipo_loss", lambda d: (*d["logps"], d["beta"]), 2.5, [
        ("a flipped sign: h is chosen minus rejected, and the target 1 / (2 beta) is subtracted",
         ipo(lambda b: -1 / (2 * b))),
        ("beta is missing from the target: it is 1 / (2 beta), not 1 / 2", ipo(lambda b: 0.5)),
        ("1 / 2 * beta is beta / 2 in python: write the target as 1 / (2 * beta)",
         ipo(lambda b: b / 2)),
        ("beta is applied twice: IPO compares h itself, not beta * h, with 1 / (2 beta)",
         ipo(lambda b: 1 / (2 * b), scale=lambda b: b)),
        ("a sum over the batch: the loss is the batch mean",
         ipo(lambda b: 1 / (2 * b), reduce=torch.sum))])


def distill_loss():
    def distill(sign=-1, power=1, reduce=torch.mean):
        return lambda *a: reduce((a[4] - a[5] + sign * a[6] ** power * margin(*a[:4])) ** 2)
    return pair_exercise("distill_loss", lambda d: (*d["logps"], *d["rm"], d["beta"]), 0.5, [
        ("a flipped sign: it is (Delta r - beta h)^2, Delta r and h both chosen minus rejected",
         distill(sign=1)),
        ("beta is missing: the reward difference is matched by beta * h", distill(power=0)),
        ("beta is applied twice", distill(power=2)),
        ("a sum over the batch: the loss is the batch mean", distill(reduce=torch.sum))])


def forward_kl_estimate():
    return pair_exercise("forward_kl_estimate", lambda d: d["pool"], 0.75, [
        ("the reverse sign: log pi_theta - log pi_ref is the reverse KL's log-ratio; the forward "
         "KL averages log pi_ref - log pi_theta over pi_ref's samples",
         lambda p, r: (p - r).mean()),
        ("that is the reverse KL, KL(pi_theta || pi_ref), reweighted onto pi_ref's samples by "
         "pi_theta / pi_ref; the samples are pi_ref's own, so the forward KL needs no weights",
         lambda p, r: ((p - r).exp() * (p - r)).mean())])


def pessimistic_distill_loss():
    def edpo(reduce, kl_sign=1):
        def loss(pc, pr, rc, rr, rw, rl, b, g, pp, rp):
            sq = (rw - rl - b * margin(pc, pr, rc, rr)) ** 2  # (K, B)
            return reduce(sq) + kl_sign * g * (rp - pp).mean()
        return loss
    best = lambda sq: sq.mean(-1).min()  # noqa: E731
    args = lambda d: (*d["logps"], *d["family"], d["beta"], d["gamma"], *d["pool"])  # noqa: E731
    return pair_exercise("pessimistic_distill_loss", args, 0.2, [
        ("the minimum is taken per pair: take each member's mean over the batch first, then "
         "the min over the K members", edpo(lambda sq: sq.min(0).values.mean())),
        ("the max over the members: e-DPO takes the min of the K batch losses",
         edpo(lambda sq: sq.mean(-1).max())),
        ("the mean over the members: e-DPO takes the min of the K batch losses", edpo(torch.mean)),
        ("the forward-KL term is missing: add gamma * FKL", edpo(best, kl_sign=0)),
        ("the forward-KL term's sign is flipped (the reverse log-ratio): FKL averages "
         "log pi_ref - log pi_theta over the pool", edpo(best, kl_sign=-1))])


def pessimistic_dpo_loss():
    def pdpo(dpo_weight, kl_weight):
        def loss(pc, pr, rc, rr, b, g, pp, rp):
            dpo, fkl = -F.logsigmoid(b * margin(pc, pr, rc, rr)).mean(), (rp - pp).mean()
            return dpo_weight(g) * dpo + kl_weight(g) * fkl
        return loss
    hand = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(0.5))) / 2 + 0.1 * 0.75
    args = lambda d: (*d["logps"], d["beta"], d["gamma"], *d["pool"])  # noqa: E731
    return pair_exercise("pessimistic_dpo_loss", args, hand, [
        ("the forward-KL term is missing: p-DPO is DPO plus gamma * FKL",
         pdpo(lambda g: 1, lambda g: 0)),
        ("the forward-KL term's sign is flipped (the reverse log-ratio): FKL averages "
         "log pi_ref - log pi_theta over the pool", pdpo(lambda g: 1, lambda g: -g)),
        ("gamma multiplies the wrong term: it weights the forward KL, not DPO's loss",
         pdpo(lambda g: g, lambda g: 1))])


def sequence_logps():
    def token_logps(logits, ids):
        return logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)

    def on(mask):
        return mask[:, 1:].bool()  # (B, T-1)
    cases = [hand_tokens(False), hand_tokens(True)]
    cases = [(n, a, np.array([-7 * math.log(2), -4 * math.log(2)])) for n, a in cases]
    for seed, side in [(1, "right"), (2, "right"), (3, "left")]:
        name, args = random_tokens(seed, side)
        cases.append((name, args, as_array(rddpo.sequence_logps(*args))))
    unshifted = lambda lg, ids, m: torch.where(  # noqa: E731
        m.bool(), lg.log_softmax(-1).gather(-1, ids[:, :, None]).squeeze(-1), 0.0).sum(-1)
    raw = lambda lg, ids, m: torch.where(  # noqa: E731
        on(m), lg[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1), 0.0).sum(-1)
    return Exercise("sequence_logps", cases, [
        ("a mean over the response's tokens: log pi(y|x) is their sum",
         lambda lg, ids, m: torch.where(on(m), token_logps(lg, ids), 0.0).sum(-1) / on(m).sum(-1)),
        ("the response mask is not applied: the prompt's and the padding's tokens are counted",
         lambda lg, ids, m: token_logps(lg, ids).sum(-1)),
        ("padding counted through a product with the mask: the logits at padded positions are nan "
         "here, and nan * 0 is nan; select with torch.where",
         lambda lg, ids, m: (token_logps(lg, ids) * on(m)).sum(-1)),
        ("the mask is off by one: the token at t, predicted at t-1, is counted when "
         "response_mask[:, t] is 1 (response_mask[:, 1:])",
         lambda lg, ids, m: torch.where(m[:, :-1].bool(), token_logps(lg, ids), 0.0).sum(-1)),
        ("no shift: the logits at position t-1 predict the token at t", unshifted),
        ("the log softmax is missing: logits are not log-probabilities", raw)], TOL_FLOAT32)


def optimal_policy():
    def policy(exponent, reference=True, normalise=True):
        def pi(pi_ref, reward, beta):
            p = (pi_ref if reference else 1.0) * np.exp(exponent(reward, beta))  # (n,)
            return p / p.sum() if normalise else p
        return pi
    hand = ("a hand-worked bandit: pi_ref (1/2, 1/4, 1/4), r (0, ln 2, ln 2) / 2, beta 0.5",
            (np.array([0.5, 0.25, 0.25]), np.array([0.0, 0.5, 0.5]) * math.log(2), 0.5))
    cases = [(*hand, np.ones(3) / 3)]
    for seed, beta in [(1, 0.3), (2, 1.7), (3, 0.08)]:
        d = random_bandit(seed, 5, beta)
        args = (d["pi_ref"], d["reward"], beta)
        cases.append((d["name"], args, tb.optimal_policy(*args)))
    return Exercise("optimal_policy", cases, [
        ("a flipped sign: pi* moves mass to the arms of high reward, exp(+r / beta)",
         policy(lambda r, b: -r / b)),
        ("beta is missing: the exponent is r / beta", policy(lambda r, b: r)),
        ("beta multiplies the reward: the exponent is r / beta, not beta * r",
         policy(lambda r, b: b * r)),
        ("beta is applied twice: the exponent is r / beta", policy(lambda r, b: r / b ** 2)),
        ("not normalised: divide by Z_r = sum_y pi_ref(y) exp(r(y) / beta), so that pi* sums to 1",
         policy(lambda r, b: r / b, normalise=False)),
        ("pi_ref is missing: pi* is the reference reweighted, pi_ref(y) exp(r(y) / beta) / Z_r",
         policy(lambda r, b: r / b, reference=False))], TOL)


def bandit_dpo_gradient(logits, pi_ref, winner, loser, beta):
    """toy_bandit's hand-written gradient of DPO on one pair, in the logits (phi = I: theta are the
    logits)."""
    bandit = tb.tabular(pi_ref, [(winner, loser)], np.zeros(len(pi_ref)))
    return tb.policy_loss(bandit, tb.Method("dpo", beta), logits)[1]  # (n,)


def dpo_gradient():
    def grad(coefficient):
        def g(logits, pi_ref, w, l, b):
            log_pi = tb.log_softmax(logits)  # (n,)
            h = (log_pi[w] - math.log(pi_ref[w])) - (log_pi[l] - math.log(pi_ref[l]))
            out = np.zeros(len(logits))  # (n,)
            out[w], out[l] = coefficient(b, h), -coefficient(b, h)
            return out
        return g
    u3 = np.ones(3) / 3
    cases = [("a hand-worked bandit: pi = pi_ref uniform, arms 0 > 1, beta 1",
              (np.zeros(3), u3, 0, 1, 1.0), np.array([-0.5, 0.5, 0.0])),
             ("a hand-worked bandit: logits (ln 3, -ln 3, 0), pi_ref uniform, arms 0 > 1, beta 0.5",
              (np.array([math.log(3), -math.log(3), 0.0]), u3, 0, 1, 0.5),
              np.array([-0.125, 0.125, 0.0]))]
    for seed, beta in [(4, 0.3), (5, 1.7), (6, 0.08)]:
        d = random_bandit(seed, 5, beta)
        args = (d["logits"], d["pi_ref"], d["winner"], d["loser"], beta)
        cases.append((d["name"] + f", arms {d['winner']} > {d['loser']}", args,
                      bandit_dpo_gradient(*args)))
    return Exercise("dpo_gradient", cases, [
        ("a flipped sign: descent on DPO raises the winner's logit, so d loss / d logit_w < 0",
         grad(lambda b, h: b * tb.sigmoid(-b * h))),
        ("the chain rule's beta is missing: d(beta h)/dh = beta multiplies sigma(-beta h)",
         grad(lambda b, h: -tb.sigmoid(-b * h))),
        ("beta is missing throughout: the loss is -log sigma(beta h), not -log sigma(h)",
         grad(lambda b, h: -tb.sigmoid(-h))),
        ("beta is applied twice", grad(lambda b, h: -b * b * tb.sigmoid(-b * h))),
        ("sigma(beta h) where sigma(-beta h) belongs: d/dz of -log sigma(z) is -sigma(-z) "
         "= -(1 - sigma(z))", grad(lambda b, h: -b * tb.sigmoid(b * h)))], TOL)


# -----------------------------------------------------------------------------
# 3. checking one exercise


def as_array(value):
    """a tensor, an array or a number -> a float64 array; None when it is none of these."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def show(value):
    """a short print of an array: '0.64367' or '[0, -0.5]'; at most 6 numbers."""
    flat = [f"{v:.6g}" for v in np.ravel(value)]
    text = ", ".join(flat[:6]) + (", ..." if len(flat) > 6 else "")
    return text if np.ndim(value) == 0 else f"[{text}]"


def shape_of(shape):
    return "a scalar, shape ()" if shape == () else f"shape {shape}"


def copied(args):
    """fresh copies of the inputs: an answer that edits its inputs changes no later case."""
    return tuple(a.clone() if isinstance(a, torch.Tensor)
                 else np.copy(a) if isinstance(a, np.ndarray) else a for a in args)


def unwritten(error, name, module):
    """'' when the NotImplementedError comes from the exercise itself; the function it comes from
    when that is another function of FILE; None when it comes from outside FILE."""
    tb_ = error.__traceback__
    while tb_.tb_next:
        tb_ = tb_.tb_next
    code = tb_.tb_frame.f_code
    if os.path.abspath(code.co_filename) != os.path.abspath(module.__file__):
        return None
    return "" if code.co_name == name else code.co_name


def answers(fn, ex, module):
    """(the answer on every case, None), or (None, the status line) when a case gives no answer."""
    out = []
    for case, args, expected in ex.cases:
        try:
            value = fn(*copied(args))
        except NotImplementedError as e:
            caller = unwritten(e, ex.name, module)
            if caller == "":
                return None, "not yet written"
            if caller:
                return None, f"wrong: it calls {caller}, which is not yet written"
            return None, f"wrong: raised NotImplementedError: {e} (on {case})"
        except Exception as e:  # a student's bug is a line of the report, not a traceback
            return None, f"wrong: raised {type(e).__name__}: {e} (on {case})".replace("\n", " ")
        got = as_array(value)
        if got is None:
            return None, f"wrong: returned {type(value).__name__}, not numbers (on {case})"
        if got.shape != expected.shape:
            return None, (f"wrong: returned {shape_of(got.shape)}, expected "
                          f"{shape_of(expected.shape)} (on {case})")
        out.append(got)
    return out, None


def hint_for(got, ex):
    """the first usual mistake whose outputs equal the answer on every case, or None."""
    for hint, wrong in ex.mistakes:
        with np.errstate(all="ignore"):
            outs = [as_array(wrong(*copied(args))) for _, args, _ in ex.cases]
        if all(np.allclose(g, o, equal_nan=True, **ex.tol) for g, o in zip(got, outs)):
            return hint
    return None


def check(module, ex):
    """(status line, hint or None) for one exercise of the loaded FILE."""
    fn = getattr(module, ex.name, None)
    if not callable(fn):
        return f"not yet written (FILE defines no function {ex.name})", None
    got, status = answers(fn, ex, module)
    if status:
        return status, None
    for g, (case, _, expected) in zip(got, ex.cases):
        if not np.allclose(g, expected, **ex.tol):
            line = f"wrong: on {case}: expected {show(expected)}, got {show(g)}"
            return line, hint_for(got, ex)
    return "passed", None


EXERCISES = [implicit_reward(), dpo_loss(), ipo_loss(), distill_loss(), forward_kl_estimate(),
             pessimistic_distill_loss(), pessimistic_dpo_loss(), sequence_logps(), optimal_policy(),
             dpo_gradient()]  # in the paper's order, as exercises.py numbers them


# -----------------------------------------------------------------------------
# 4. the command line


def load(path):
    """(the module FILE defines, None) or (None, why it cannot be loaded)."""
    if not os.path.isfile(path):
        return None, f"no such file: {path}"
    spec = importlib.util.spec_from_file_location("exercises_under_check", path)
    if spec is None:
        return None, f"{path} is not a python file"
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except BaseException as e:  # a syntax error, a failed import, an exit at import time
        return None, f"{path} does not import: {type(e).__name__}: {e}".replace("\n", " ")
    return module, None


def report(i, ex, module):
    """print exercise i's line (and its hint); True when it passed."""
    status, hint = check(module, ex)
    print(f"{i:>2}. {ex.name:<26}{status}")
    if hint:
        print(f"{'':<30}hint: {hint}")
    return status == "passed"


def main(argv=None):
    p = argparse.ArgumentParser(
        description="check your answers to the exercises in notebooks/exercises/exercises.py",
        epilog="exit status: 0 when every exercise passes, 1 otherwise, 2 when FILE cannot be "
               "loaded. tolerances: rtol 1e-7, atol 1e-9 (float64); sequence_logps rtol 1e-5, "
               "atol 1e-4 (rddpo.py computes it in float32).")
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="your exercises: notebooks/exercises/exercises.py (the default) or a copy")
    path = p.parse_args(argv).file or os.path.relpath(STUBS)
    module, error = load(path)
    if error:
        p.exit(2, f"error: {error}\n")
    print(f"checking {path}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster than waking a pool for each
    try:
        passed = sum(report(i, ex, module) for i, ex in enumerate(EXERCISES, 1))
    finally:
        torch.set_num_threads(threads)  # main() may run inside a longer python session
    print(f"{passed} of {len(EXERCISES)} passed")
    return 0 if passed == len(EXERCISES) else 1


if __name__ == "__main__":
    sys.exit(main())
