"""tests of the classroom's checker, notebooks/exercises/check.py: it passes the solutions, reports every stub as
not yet written, names each mistake it promises a hint for when that mistake is planted in a copy of the solutions,
and turns a student's crash, wrong shape or nan into a line of its report, never a traceback. main() runs in-process;
one test runs the command as a student would, for its exit status and its stderr. The file takes about 4 s.

    python -m pytest tests/test_exercises.py"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project's root
HERE = os.path.join(ROOT, "notebooks", "exercises")
CHECK, SOLUTIONS = os.path.join(HERE, "check.py"), os.path.join(HERE, "solutions.py")
spec = importlib.util.spec_from_file_location("exercise_check", CHECK)
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)
NAMES = [ex.name for ex in check.EXERCISES]


def run(capsys, path):
    """main() on a file -> (exit status, {exercise: its status line}, {exercise: its hint})."""
    status = check.main([str(path)])
    lines = capsys.readouterr().out.splitlines()
    report, hints, last = {}, {}, None
    for line in lines[1:-1]:
        if line.strip().startswith("hint: "):
            hints[last] = line.strip()[len("hint: "):]
        else:
            _, last, result = line.split(maxsplit=2)
            report[last] = result
    return status, report, hints


def planted(tmp_path, code):
    """a copy of the solutions with one function replaced by `code`: a student's file with one mistake."""
    path = tmp_path / "planted.py"
    helper = "def _h(pc, pr, rc, rr):\n    return (pc - rc) - (pr - rr)\n"
    path.write_text(open(SOLUTIONS).read() + "\n\n" + helper + "\n\n" + code + "\n")
    return path


def test_the_solutions_pass(capsys):
    """solutions.py passes every exercise, and the command exits 0."""
    status, report, hints = run(capsys, SOLUTIONS)
    assert status == 0 and report == {name: "passed" for name in NAMES} and hints == {}


def test_every_untouched_stub_is_not_yet_written(capsys):
    """with no FILE the stubs are checked: ten lines, exactly one 'not yet written' line per exercise in the
    exercises' order, no hint, and exit status 1."""
    status = check.main([])
    lines = capsys.readouterr().out.splitlines()
    assert status == 1 and lines[0].startswith("checking ") and lines[0].endswith("exercises.py")
    assert lines[1:-1] == [f"{i:>2}. {name:<26}not yet written" for i, name in enumerate(NAMES, 1)]
    assert len(NAMES) == 10 and lines[-1] == "0 of 10 passed"


def test_the_hand_worked_values_are_what_rddpo_and_toy_bandit_compute():
    """every expected value, the hand-worked ones included (DPO 0.64367, IPO 2.5, d-DPO 0.5, FKL 0.75, e-DPO 0.2,
    p-DPO 0.71867; log-probs -7 ln 2 and -4 ln 2; pi* = 1/3 each; gradients -0.5 and -0.125 on the winner), is
    rddpo.py's or toy_bandit.py's output on the same input."""
    import rddpo
    import toy_bandit
    reference = {"sequence_logps": rddpo.sequence_logps, "optimal_policy": toy_bandit.optimal_policy,
                 "dpo_gradient": check.bandit_dpo_gradient}
    for ex in check.EXERCISES:
        fn = reference.get(ex.name) or getattr(rddpo, ex.name)
        for case, args, expected in ex.cases:
            assert np.allclose(check.as_array(fn(*args)), expected, **ex.tol), (ex.name, case)


def defs(name, args, *lines):
    """(exercise, its broken version): `def name(args):` over the lines (each may hold several, split at '; ')."""
    body = [part for line in lines for part in line.split("; ")]
    return name, f"def {name}({args}):\n" + "\n".join("    " + line for line in body)


PAIRS = "pc, pr, rc, rr"
MISTAKES = {  # the fragment of the hint each mistake must get -> (exercise, the mistaken function)
    "implicit_reward: a flipped sign": defs("implicit_reward", "p, r, beta", "return beta * (r - p)"),
    "implicit_reward: beta is missing": defs("implicit_reward", "p, r, beta", "return p - r"),
    "implicit_reward: beta is applied twice": defs("implicit_reward", "p, r, beta", "return beta ** 2 * (p - r)"),
    "dpo_loss: the margin's sign is flipped": defs(
        "dpo_loss", PAIRS + ", beta", "h = (pr - rr) - (pc - rc); return -F.logsigmoid(beta * h).mean()"),
    "dpo_loss: the loss's sign is flipped": defs(
        "dpo_loss", PAIRS + ", beta", "return F.logsigmoid(beta * _h(pc, pr, rc, rr)).mean()"),
    "dpo_loss: beta is missing": defs("dpo_loss", PAIRS + ", beta", "return -F.logsigmoid(_h(pc, pr, rc, rr)).mean()"),
    "dpo_loss: beta is applied twice": defs(
        "dpo_loss", PAIRS + ", beta", "h = beta * _h(pc, pr, rc, rr); return -F.logsigmoid(beta * h).mean()"),
    "dpo_loss: the reference is missing": defs(
        "dpo_loss", PAIRS + ", beta", "return -F.logsigmoid(beta * (pc - pr)).mean()"),
    "dpo_loss: a sum over the batch": defs(
        "dpo_loss", PAIRS + ", beta", "return -F.logsigmoid(beta * _h(pc, pr, rc, rr)).sum()"),
    "ipo_loss: a flipped sign": defs(
        "ipo_loss", PAIRS + ", beta", "h = (pr - rr) - (pc - rc); return ((h - 1 / (2 * beta)) ** 2).mean()"),
    "ipo_loss: beta is missing": defs("ipo_loss", PAIRS + ", beta", "return ((_h(pc, pr, rc, rr) - 1 / 2) ** 2).mean()"),
    "ipo_loss: 1 / 2 * beta is beta / 2": defs(
        "ipo_loss", PAIRS + ", beta", "return ((_h(pc, pr, rc, rr) - 1 / 2 * beta) ** 2).mean()"),
    "ipo_loss: beta is applied twice": defs(
        "ipo_loss", PAIRS + ", beta", "return ((beta * _h(pc, pr, rc, rr) - 1 / (2 * beta)) ** 2).mean()"),
    "ipo_loss: a sum over the batch": defs(
        "ipo_loss", PAIRS + ", beta", "return ((_h(pc, pr, rc, rr) - 1 / (2 * beta)) ** 2).sum()"),
    "distill_loss: a flipped sign": defs(
        "distill_loss", PAIRS + ", rw, rl, beta", "return ((rl - rw - beta * _h(pc, pr, rc, rr)) ** 2).mean()"),
    "distill_loss: beta is missing": defs(
        "distill_loss", PAIRS + ", rw, rl, beta", "return ((rw - rl - _h(pc, pr, rc, rr)) ** 2).mean()"),
    "distill_loss: beta is applied twice": defs(
        "distill_loss", PAIRS + ", rw, rl, beta", "return ((rw - rl - beta ** 2 * _h(pc, pr, rc, rr)) ** 2).mean()"),
    "distill_loss: a sum over the batch": defs(
        "distill_loss", PAIRS + ", rw, rl, beta", "return ((rw - rl - beta * _h(pc, pr, rc, rr)) ** 2).sum()"),
    "forward_kl_estimate: the reverse sign": defs("forward_kl_estimate", "p, r", "return (p - r).mean()"),
    "forward_kl_estimate: that is the reverse KL": defs(
        "forward_kl_estimate", "p, r", "return (torch.exp(p - r) * (p - r)).mean()"),
    "pessimistic_distill_loss: the minimum is taken per pair": defs(
        "pessimistic_distill_loss", PAIRS + ", rw, rl, beta, gamma, pp, rp",
        "sq = (rw - rl - beta * _h(pc, pr, rc, rr)) ** 2  # (K, B)",
        "return sq.min(0).values.mean() + gamma * (rp - pp).mean()"),
    "pessimistic_distill_loss: the max over the members": defs(
        "pessimistic_distill_loss", PAIRS + ", rw, rl, beta, gamma, pp, rp",
        "sq = (rw - rl - beta * _h(pc, pr, rc, rr)) ** 2", "return sq.mean(-1).max() + gamma * (rp - pp).mean()"),
    "pessimistic_distill_loss: the mean over the members": defs(
        "pessimistic_distill_loss", PAIRS + ", rw, rl, beta, gamma, pp, rp",
        "sq = (rw - rl - beta * _h(pc, pr, rc, rr)) ** 2", "return sq.mean() + gamma * (rp - pp).mean()"),
    "pessimistic_distill_loss: the forward-KL term is missing": defs(
        "pessimistic_distill_loss", PAIRS + ", rw, rl, beta, gamma, pp, rp",
        "return ((rw - rl - beta * _h(pc, pr, rc, rr)) ** 2).mean(-1).min()"),
    "pessimistic_distill_loss: the forward-KL term's sign is flipped": defs(
        "pessimistic_distill_loss", PAIRS + ", rw, rl, beta, gamma, pp, rp",
        "sq = (rw - rl - beta * _h(pc, pr, rc, rr)) ** 2", "return sq.mean(-1).min() + gamma * (pp - rp).mean()"),
    "pessimistic_dpo_loss: the forward-KL term is missing": defs(
        "pessimistic_dpo_loss", PAIRS + ", beta, gamma, pp, rp", "return dpo_loss(pc, pr, rc, rr, beta)"),
    "pessimistic_dpo_loss: the forward-KL term's sign is flipped": defs(
        "pessimistic_dpo_loss", PAIRS + ", beta, gamma, pp, rp",
        "return dpo_loss(pc, pr, rc, rr, beta) + gamma * (pp - rp).mean()"),
    "pessimistic_dpo_loss: gamma multiplies the wrong term": defs(
        "pessimistic_dpo_loss", PAIRS + ", beta, gamma, pp, rp",
        "return gamma * dpo_loss(pc, pr, rc, rr, beta) + (rp - pp).mean()"),
    "sequence_logps: a mean over the response's tokens": defs(
        "sequence_logps", "logits, ids, mask",
        "tok = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)",
        "on = mask[:, 1:].bool()", "return torch.where(on, tok, 0.0).sum(-1) / on.sum(-1)"),
    "sequence_logps: the response mask is not applied": defs(
        "sequence_logps", "logits, ids, mask",
        "return logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)"),
    "sequence_logps: padding counted through a product": defs(
        "sequence_logps", "logits, ids, mask",
        "tok = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)",
        "return (tok * mask[:, 1:]).sum(-1)"),
    "sequence_logps: the mask is off by one": defs(
        "sequence_logps", "logits, ids, mask",
        "tok = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)",
        "return torch.where(mask[:, :-1].bool(), tok, 0.0).sum(-1)"),
    "sequence_logps: no shift": defs(
        "sequence_logps", "logits, ids, mask", "tok = logits.log_softmax(-1).gather(-1, ids[:, :, None]).squeeze(-1)",
        "return torch.where(mask.bool(), tok, 0.0).sum(-1)"),
    "sequence_logps: the log softmax is missing": defs(
        "sequence_logps", "logits, ids, mask", "tok = logits[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)",
        "return torch.where(mask[:, 1:].bool(), tok, 0.0).sum(-1)"),
    "optimal_policy: a flipped sign": defs(
        "optimal_policy", "pi_ref, reward, beta", "p = pi_ref * np.exp(-reward / beta); return p / p.sum()"),
    "optimal_policy: beta is missing": defs(
        "optimal_policy", "pi_ref, reward, beta", "p = pi_ref * np.exp(reward); return p / p.sum()"),
    "optimal_policy: beta multiplies the reward": defs(
        "optimal_policy", "pi_ref, reward, beta", "p = pi_ref * np.exp(beta * reward); return p / p.sum()"),
    "optimal_policy: beta is applied twice": defs(
        "optimal_policy", "pi_ref, reward, beta", "p = pi_ref * np.exp(reward / beta / beta); return p / p.sum()"),
    "optimal_policy: not normalised": defs(
        "optimal_policy", "pi_ref, reward, beta", "return pi_ref * np.exp(reward / beta)"),
    "optimal_policy: pi_ref is missing": defs(
        "optimal_policy", "pi_ref, reward, beta", "p = np.exp(reward / beta); return p / p.sum()"),
}
GRADIENT = ("log_pi = logits - np.log(np.exp(logits).sum()); "
            "h = log_pi[w] - np.log(pi_ref[w]) - log_pi[l] + np.log(pi_ref[l]); "
            "sig = lambda z: 1 / (1 + np.exp(-z)); g = np.zeros_like(logits); "
            "g[w], g[l] = {0}, -({0}); return g")
for hint, coefficient in [("a flipped sign", "beta * sig(-beta * h)"),
                          ("the chain rule's beta is missing", "-sig(-beta * h)"),
                          ("beta is missing throughout", "-sig(-h)"),
                          ("beta is applied twice", "-beta ** 2 * sig(-beta * h)"),
                          ("sigma(beta h) where sigma(-beta h) belongs", "-beta * sig(beta * h)")]:
    MISTAKES["dpo_gradient: " + hint] = defs("dpo_gradient", "logits, pi_ref, w, l, beta",
                                             GRADIENT.format(coefficient))


def test_every_hint_the_checker_promises_has_one_planted_mistake_below():
    """each usual mistake the checker can name matches exactly one key of MISTAKES (its exercise, then the start of
    its hint), and each key exactly one of them: no hint goes untested."""
    promised = [(ex.name, hint) for ex in check.EXERCISES for hint, _ in ex.mistakes]

    def names(key, name, hint):
        exercise, start = key.split(": ", 1)
        return exercise == name and hint.startswith(start)
    assert [sum(names(key, *p) for key in MISTAKES) for p in promised] == [1] * len(promised)
    assert [sum(names(key, *p) for p in promised) for key in MISTAKES] == [1] * len(MISTAKES)
    assert len(promised) == 45


@pytest.mark.parametrize("key", list(MISTAKES))
def test_a_planted_mistake_gets_its_named_hint(capsys, tmp_path, key):
    """the solutions with one function broken as a student might (the key names the exercise and the hint): that
    exercise alone is wrong, and its hint is the one the key names; every other exercise still passes."""
    name, code = MISTAKES[key]
    status, report, hints = run(capsys, planted(tmp_path, code))
    assert status == 1 and report[name].startswith("wrong: on ") and "expected" in report[name]
    assert hints[name].startswith(key.split(": ", 1)[1]), hints[name]
    assert [n for n, line in report.items() if line != "passed"] == [name] and list(hints) == [name]


def test_a_wrong_answer_that_matches_no_usual_mistake_gets_the_expected_and_received_values_and_no_hint(
        capsys, tmp_path):
    """dpo_loss returning 1.0 matches none of its mistakes: 'wrong' names the hand-worked pairs, expects 0.643669
    (the mean of log(1 + e^-1) and log(1 + e^0.5)) and got 1, with no hint."""
    code = "def dpo_loss(pc, pr, rc, rr, beta):\n    return torch.tensor(1.0, dtype=torch.float64)"
    status, report, hints = run(capsys, planted(tmp_path, code))
    assert status == 1 and hints == {}
    assert report["dpo_loss"] == ("wrong: on the hand-worked pairs of notebook 2, section 4 "
                                  "(beta 0.5): expected 0.643669, got 1")


def test_an_exercise_that_calls_an_unwritten_one_says_which(capsys, tmp_path):
    """p-DPO written with the student's forward_kl_estimate while that is still a stub: p-DPO's line says it calls
    forward_kl_estimate, not yet written; forward_kl_estimate's own line says not yet written."""
    code = ("def forward_kl_estimate(p, r):\n    raise NotImplementedError\n\n\n"
            "def pessimistic_dpo_loss(pc, pr, rc, rr, beta, gamma, pp, rp):\n"
            "    return dpo_loss(pc, pr, rc, rr, beta) + gamma * forward_kl_estimate(pp, rp)")
    status, report, _ = run(capsys, planted(tmp_path, code))
    assert status == 1 and report["forward_kl_estimate"] == "not yet written"
    assert report["pessimistic_dpo_loss"] == "wrong: it calls forward_kl_estimate, which is not yet written"


BROKEN = """
def dpo_loss(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))  # (B,): the mean is missing


def implicit_reward(policy_logps, reference_logps, beta):
    return torch.full_like(policy_logps, float("nan"))


def optimal_policy(pi_ref, reward, beta):
    raise ValueError("operands could not be broadcast")
"""


def test_a_wrong_shape_a_nan_or_an_error_is_a_wrong_line_and_never_a_traceback(tmp_path):
    """run as a student runs it: a (B,) loss where a scalar belongs, a nan reward and a ValueError each give one
    'wrong' line that says so; the rest pass; exit status 1; no traceback on stdout or stderr."""
    path = tmp_path / "broken.py"
    path.write_text(open(SOLUTIONS).read() + BROKEN)
    out = subprocess.run([sys.executable, CHECK, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr and out.stderr == ""
    lines = {line.split()[1]: line.split(maxsplit=2)[2] for line in out.stdout.splitlines()[1:-1]}
    assert lines["dpo_loss"].startswith("wrong: returned shape (2,), expected a scalar, shape ()")
    assert lines["implicit_reward"].startswith("wrong: on ") and lines["implicit_reward"].endswith("got [nan, nan]")
    assert lines["optimal_policy"].startswith("wrong: raised ValueError: operands could not be broadcast (on ")
    assert sum(v == "passed" for v in lines.values()) == 7


def test_a_missing_file_is_one_error_line_and_exit_status_2(capsys, tmp_path):
    """a path that does not exist: main exits 2 with exactly one line on stderr, 'error: no such file: ...',
    and nothing on stdout."""
    missing = str(tmp_path / "nowhere.py")
    with pytest.raises(SystemExit) as stop:
        check.main([missing])
    out = capsys.readouterr()
    assert stop.value.code == 2 and out.out == ""
    assert out.err.splitlines() == [f"error: no such file: {missing}"]


@pytest.mark.parametrize("text, why", [("def dpo_loss(:\n", "SyntaxError"),
                                       ("import a_module_that_is_not_there\n", "ModuleNotFoundError")])
def test_a_file_that_does_not_import_is_one_error_line_and_exit_status_2(capsys, tmp_path, text, why):
    """a syntax error or a failed import in FILE: main exits 2 with one line, 'error: FILE does not import: ...'
    naming the exception, and prints no report."""
    path = tmp_path / "student.py"
    path.write_text(text)
    with pytest.raises(SystemExit) as stop:
        check.main([str(path)])
    out = capsys.readouterr()
    assert stop.value.code == 2 and out.out == ""
    [line] = out.err.splitlines()
    assert line.startswith(f"error: {path} does not import: {why}")


def test_it_answers_help(capsys):
    """--help prints the usage, names FILE and its default, and exits 0."""
    with pytest.raises(SystemExit) as stop:
        check.main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "usage:" in out and "FILE" in out and "notebooks/exercises/exercises.py" in out
