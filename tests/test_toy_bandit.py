"""Tests for toy_bandit.py: closed forms against gradient descent, docs/METHOD.md's numbers, hand-written
gradients against finite differences, and DPO's divergence. Each docstring shows the hand computation."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import toy_bandit as tb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project's root

U3 = np.ones(3) / 3


def final_policy(bandit, m, steps=20000):
    return tb.probs(bandit, tb.train_policy(bandit, m, steps)[0])


def small_bandits():
    """A tabular bandit (4 arms, skewed pi_ref, repeated and reversed pairs) and a log-linear one."""
    rng = np.random.default_rng(0)
    pairs = [(0, 1), (0, 1), (1, 0), (1, 2), (3, 2), (0, 3)]
    tab = tb.tabular(np.array([0.1, 0.2, 0.3, 0.4]), pairs, gold=[1.0, 0.0, 0.5, -1.0])
    lin = tb.Bandit(rng.normal(size=(4, 2)), rng.normal(size=2), tab.winners, tab.losers, tab.gold)
    return {"tabular": tab, "log-linear": lin}


# -----------------------------------------------------------------------------
# numerics and losses


def test_dpo_loss_is_ln2_and_gradient_is_minus_beta_half_when_policy_equals_reference():
    """h = 0 at pi = pi_ref: -log sigmoid(0) = ln 2, and d/dh_i = -beta sigmoid(0) / B = -beta / (2B)."""
    loss, g = tb.dpo_loss(np.zeros(4), beta=0.3)
    assert loss == pytest.approx(math.log(2))
    np.testing.assert_allclose(g, -0.3 / 8)


def test_log_sigmoid_and_log_softmax_are_finite_far_out():
    """log sigmoid(-800) = -800 (naive log(1 / (1 + e^800)) overflows); log_softmax([1000, 0]) = (0, -1000)."""
    assert tb.log_sigmoid(np.array(-800.0)) == pytest.approx(-800.0)
    assert tb.log_sigmoid(np.array(800.0)) == 0.0
    np.testing.assert_allclose(tb.log_softmax(np.array([1000.0, 0.0])), [0.0, -1000.0])


def test_dpo_loss_tends_to_zero_on_a_policy_whose_preferred_arm_vanishes():
    """docs/METHOD.md: one pair y1 > y2, uniform pi_ref, pi = (eps, eps^2, 1 - eps - eps^2): h = log(1/eps),
    so the loss is -log sigmoid(log(1/eps)) = log(1 + eps) -> 0 while pi(y1) = eps -> 0."""
    bandit = tb.tabular(U3, [(0, 1)], gold=[1, 0, 0])
    for eps in (1e-2, 1e-4, 1e-6):
        logp = np.log([eps, eps ** 2, 1 - eps - eps ** 2])
        assert tb.dpo_loss(tb.logratio_margin(bandit, logp), 1.0)[0] == pytest.approx(math.log1p(eps), rel=1e-6)


@pytest.mark.parametrize("name", ["dpo", "ipo", "d-dpo", "e-dpo", "p-dpo"])
def test_losses_ignore_a_constant_added_to_every_logit(name):
    """softmax(z + c) = softmax(z), so h and FKL, hence every loss, are unchanged (tabular theta = logits)."""
    bandit = small_bandits()["tabular"]
    m = tb.Method(name, 0.7, 0.5 if name in ("e-dpo", "p-dpo") else 0.0, np.random.default_rng(6).normal(size=(2, 4)))
    theta = np.random.default_rng(7).normal(size=4)
    assert tb.policy_loss(bandit, m, theta + 5.0)[0] == pytest.approx(tb.policy_loss(bandit, m, theta)[0])


@pytest.mark.parametrize("policy", ["tabular", "log-linear"])
@pytest.mark.parametrize("name", ["dpo", "ipo", "d-dpo", "e-dpo", "p-dpo"])
def test_hand_written_gradient_matches_central_differences(policy, name):
    """(L(theta + eps e_j) - L(theta - eps e_j)) / (2 eps) agrees with policy_loss's gradient to O(eps^2)."""
    bandit = small_bandits()[policy]
    rewards = np.random.default_rng(1).normal(size=(3, 4))  # (K, n); no ties between members' losses
    m = tb.Method(name, beta=0.7, gamma=0.5 if name in ("e-dpo", "p-dpo") else 0.0,
                  rewards=rewards[:1] if name == "d-dpo" else rewards)
    theta = bandit.theta_ref + np.random.default_rng(2).normal(size=bandit.theta_ref.shape)
    eps, grad = 1e-6, tb.policy_loss(bandit, m, theta)[1]
    fd = [(tb.policy_loss(bandit, m, theta + eps * e)[0] - tb.policy_loss(bandit, m, theta - eps * e)[0]) / (2 * eps)
          for e in np.eye(len(theta))]
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_bradley_terry_and_forward_kl_gradients_match_central_differences():
    """Same check for the weighted, L2-penalised BT loss in r and for KL(pi_ref || pi) in the logits."""
    bandit, rng, eps = small_bandits()["tabular"], np.random.default_rng(3), 1e-6
    r, w, z = rng.normal(size=4), rng.uniform(0.5, 2, size=6), rng.normal(size=4)
    f_bt = lambda x: tb.reward_model_loss(bandit, x, lam=0.3, weights=w)[0]
    f_kl = lambda x: tb.forward_kl(tb.log_softmax(x), bandit.ref_logp)[0]
    g_bt, g_kl = tb.reward_model_loss(bandit, r, 0.3, w)[1], tb.forward_kl(tb.log_softmax(z), bandit.ref_logp)[1]
    for f, x, g in ((f_bt, r, g_bt), (f_kl, z, g_kl)):
        fd = [(f(x + eps * e) - f(x - eps * e)) / (2 * eps) for e in np.eye(4)]
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_edpo_with_identical_members_is_ddpo_plus_gamma_fkl_and_ignores_shifts_and_order():
    """K copies of r: min_k is any copy, so e-DPO = d-DPO + gamma FKL. Shifting r_k by c leaves every dr
    unchanged, and permuting the members leaves the min unchanged."""
    bandit, rng = small_bandits()["tabular"], np.random.default_rng(4)
    r, theta = rng.normal(size=(2, 4)), np.log(rng.dirichlet(np.ones(4)))
    edpo = tb.policy_loss(bandit, tb.Method("e-dpo", 0.5, 0.2, np.stack([r[0]] * 3)), theta)[0]
    ddpo = tb.policy_loss(bandit, tb.Method("d-dpo", 0.5, 0.0, r[:1]), theta)[0]
    fkl = tb.forward_kl(tb.log_softmax(theta), bandit.ref_logp)[0]
    assert edpo == pytest.approx(ddpo + 0.2 * fkl)
    base = tb.policy_loss(bandit, tb.Method("e-dpo", 0.5, 0.2, r), theta)[0]
    moved = tb.policy_loss(bandit, tb.Method("e-dpo", 0.5, 0.2, r[::-1] + np.array([[3.0], [-1.0]])), theta)[0]
    assert moved == pytest.approx(base)


# -----------------------------------------------------------------------------
# closed forms: docs/METHOD.md's numbers


@pytest.mark.parametrize("reward, expected, fkl", [((1.0, 0.0, 0.5), (0.5065, 0.1863, 0.3072), 0.0817),
                                                   ((0.2, 0.0, 2.0), (0.1271, 0.1041, 0.7689), 0.4309)])
def test_optimal_policy_and_its_forward_kl_match_method_md(reward, expected, fkl):
    """Uniform pi_ref, beta = 1: pi* = e^r / sum e^r, e.g. e^1 / (e^1 + 1 + e^0.5) = 2.718 / 5.367 = 0.5065;
    KL(pi_ref || pi*) = log mean(e^r) - mean(r) = log(5.367 / 3) - 0.5 = 0.0817."""
    pi = tb.optimal_policy(U3, np.array(reward), 1.0)
    np.testing.assert_allclose(pi, expected, atol=5e-5)
    assert tb.kl(U3, pi) == pytest.approx(fkl, abs=5e-5)
    assert tb.kl(U3, pi) == pytest.approx(np.log(np.mean(np.exp(reward))) - np.mean(reward))


def test_pessimism_over_method_md_pair_picks_the_first_reward():
    """FKL 0.0817 < 0.4309, so the member nearest pi_ref is r = (1, 0, 0.5)."""
    k, pi = tb.pessimistic_choice(U3, np.array([[1.0, 0.0, 0.5], [0.2, 0.0, 2.0]]), 1.0)
    assert k == 0
    np.testing.assert_allclose(pi, [0.5065, 0.1863, 0.3072], atol=5e-5)


def test_pessimistic_member_loses_to_pi_ref_on_the_other_member():
    """The member argmin is not the maximin over both: J(pi*_a, r_b) = 0.5065*0.2 + 0.3072*2 - 2.2/3
    - KL(pi*_a || pi_ref) = 0.7157 - 0.7333 - 0.0782 = -0.096 < 0 = J(pi_ref, r_b)."""
    pa = tb.optimal_policy(U3, np.array([1.0, 0.0, 0.5]), 1.0)
    assert tb.rlhf_value(pa, U3, np.array([0.2, 0.0, 2.0]), 1.0) == pytest.approx(-0.096, abs=1e-3)


@pytest.mark.parametrize("beta", [0.3, 1.0, 2.5])
def test_best_value_is_beta_fkl_and_beats_other_policies(beta):
    """J(pi*_r, r) = beta KL(pi_ref || pi*_r) = beta log E_ref e^{r/beta} - E_ref r, and no policy does better."""
    rng = np.random.default_rng(5)
    pi_ref, r = rng.dirichlet(np.ones(5)), rng.normal(size=5)
    v = tb.best_value(pi_ref, r, beta)
    assert tb.rlhf_value(tb.optimal_policy(pi_ref, r, beta), pi_ref, r, beta) == pytest.approx(v)
    assert v == pytest.approx(beta * np.log(pi_ref @ np.exp(r / beta)) - pi_ref @ r)
    assert tb.rlhf_value(tb.optimal_policy(pi_ref, r, beta), pi_ref, r + 7.0, beta) == pytest.approx(v)
    assert all(tb.rlhf_value(p, pi_ref, r, beta) < v for p in rng.dirichlet(np.ones(5), size=50))


def test_pdpo_one_pair_is_8_15_2_15_1_3_and_gradient_descent_reaches_it():
    """gamma = beta = 1, uniform: y3 keeps 1/3; d = sigmoid(-h) with h = log((1/3 + d) / (1/3 - d)) gives
    d = (1/3 - d) * 3/2, so d = 1/5: (1/3 + 1/5, 1/3 - 1/5, 1/3) = (8/15, 2/15, 1/3), margin log 4."""
    closed = tb.pdpo_one_pair(U3, 0, 1, 1.0, 1.0)
    np.testing.assert_allclose(closed, [8 / 15, 2 / 15, 1 / 3], atol=1e-12)
    bandit = tb.tabular(U3, [(0, 1)], gold=[1.0, 0.0, 0.5])
    pi = final_policy(bandit, tb.Method("p-dpo", 1.0, 1.0))
    np.testing.assert_allclose(pi, closed, atol=1e-6)
    assert tb.logratio_margin(bandit, np.log(pi))[0] == pytest.approx(math.log(4), abs=1e-5)


@pytest.mark.parametrize("beta, gamma", [(0.1, 0.3), (2.0, 0.5), (0.5, 5.0)])
def test_pdpo_one_pair_closed_form_matches_gradient_descent_for_any_pi_ref(beta, gamma):
    """Stationarity -beta sigmoid(-beta h)(e_w - e_l) + gamma (pi - pi_ref) = 0: unseen y3 keeps pi_ref(y3)."""
    pi_ref = np.array([0.2, 0.5, 0.3])
    pi = final_policy(tb.tabular(pi_ref, [(0, 1)], gold=[1.0, 0.0, 0.0]), tb.Method("p-dpo", beta, gamma))
    np.testing.assert_allclose(pi, tb.pdpo_one_pair(pi_ref, 0, 1, beta, gamma), atol=1e-6)
    assert pi[2] == pytest.approx(0.3, abs=1e-6)


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0, 2.0])
def test_ipo_two_arms_is_sigmoid_of_one_over_two_beta(beta):
    """IPO's optimum is h = log(pi1 / pi2) = 1/(2 beta) from uniform, so pi1 = sigmoid(1/(2 beta))."""
    bandit = tb.tabular(np.ones(2) / 2, [(0, 1)], gold=[1.0, 0.0])
    pi = final_policy(bandit, tb.Method("ipo", beta))
    assert pi[0] == pytest.approx(1 / (1 + math.exp(-1 / (2 * beta))), abs=1e-6)
    np.testing.assert_allclose(tb.ipo_policy(bandit, beta), pi, atol=1e-6)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_ipo_total_order_is_the_least_squares_solution(beta):
    """Minimise (x - t)^2 + (y - t)^2 + (x + y - t)^2, t = 1/(2 beta): x = y = 2t/3, so
    log pi - log pi_ref = (4t/3, 2t/3, 0) + c."""
    bandit, t = tb.tabular(U3, [(0, 1), (1, 2), (0, 2)], gold=[1, 0.5, 0]), 1 / (2 * beta)
    hand = np.exp([4 * t / 3, 2 * t / 3, 0.0]) / np.exp([4 * t / 3, 2 * t / 3, 0.0]).sum()
    np.testing.assert_allclose(tb.ipo_policy(bandit, beta), hand, atol=1e-12)
    np.testing.assert_allclose(final_policy(bandit, tb.Method("ipo", beta)), hand, atol=1e-6)


def test_ddpo_reaches_optimal_policy_when_pairs_connect_every_arm():
    """Zero d-DPO loss forces beta log(pi / pi_ref) = r + c on every compared pair; connected pairs make c
    one constant, so pi = pi*_r exactly (length-biased data: 5 arms, every pair compared)."""
    bandit, _ = tb.length_bias_bandit()
    r, pi_ref = tb.train_reward_model(bandit), np.exp(bandit.ref_logp)
    pi = final_policy(bandit, tb.Method("d-dpo", 0.5, rewards=r[None]))
    np.testing.assert_allclose(pi, tb.optimal_policy(pi_ref, r, 0.5), atol=1e-6)
    np.testing.assert_allclose(tb.distill_policy(bandit, r, 0.5), pi, atol=1e-6)


def test_ddpo_pins_only_the_compared_ratio_and_leaves_an_unseen_arm_alone():
    """One pair y1 > y2, r = (1, 0, 5): beta h -> dr = 1, and y3's logit never gets a gradient."""
    bandit = tb.tabular(U3, [(0, 1)], gold=[1, 0, 0])
    theta = tb.train_policy(bandit, tb.Method("d-dpo", 2.0, rewards=np.array([[1.0, 0.0, 5.0]])))[0]
    assert 2.0 * tb.logratio_margin(bandit, tb.log_softmax(theta))[0] == pytest.approx(1.0, abs=1e-8)
    assert theta[2] == pytest.approx(np.log(1 / 3))


def test_edpo_with_small_gamma_reaches_the_pessimistic_members_optimal_policy():
    """gamma -> 0: e-DPO -> pi*_r of the member with the least FKL; at gamma = 1e-7 the pull of the FKL
    moves the policy by O(gamma), well under 1e-6."""
    bandit, length = tb.length_bias_bandit()
    family = tb.reward_family(bandit, length, tb.SHARES)
    k, closed = tb.pessimistic_choice(np.exp(bandit.ref_logp), family, 0.5)
    theta = tb.train_policy(bandit, tb.Method("e-dpo", 0.5, 1e-7, family))[0]
    np.testing.assert_allclose(tb.probs(bandit, theta), closed, atol=1e-6)
    drs = family[:, bandit.winners] - family[:, bandit.losers]
    assert tb.pessimistic_distill_loss(tb.logratio_margin(bandit, tb.log_softmax(theta)), drs, 0.5)[2] == k


def test_bradley_terry_margin_is_log_of_win_count_ratio_and_l2_centres_rewards():
    """A pair won 3 times and lost once: sigmoid(dr) = 3/4, dr = log 3. With L2 the rewards sum to 0
    (the BT gradient sums to 0 over arms, so lam * sum(r) = 0)."""
    bandit = tb.tabular(U3, [(0, 1)] * 3 + [(1, 0)], gold=[1, 0, 0])
    r = tb.train_reward_model(bandit, lam=0.0)
    assert r[0] - r[1] == pytest.approx(math.log(3), abs=1e-8)
    assert tb.train_reward_model(bandit, lam=0.5).sum() == pytest.approx(0, abs=1e-10)


def test_dpo_on_a_pair_seen_both_ways_stops_at_log_count_ratio():
    """n_wl = 3, n_lw = 1: 3 sigmoid(-beta h) = sigmoid(beta h) at the optimum, so beta h = log 3."""
    bandit = tb.tabular(U3, [(0, 1)] * 3 + [(1, 0)], gold=[1, 0, 0])
    pi = final_policy(bandit, tb.Method("dpo", 0.5))
    assert 0.5 * tb.logratio_margin(bandit, np.log(pi))[0] == pytest.approx(math.log(3), abs=1e-6)


# -----------------------------------------------------------------------------
# the scenarios: DPO diverges, likelihood displacement


def test_dpo_margin_grows_like_log_t_without_bound():
    """One pair, step 1/L = 2/beta^2: m = beta h moves by 4 sigmoid(-m) ~ 4 e^-m per step, so e^m ~ 4t + 1
    and doubling the steps adds log 2 to the margin, forever: m(3000) ~ log 12001 = 9.39."""
    bandit = tb.tabular(U3, [(0, 1)], gold=[1, 0, 0])
    path = tb.probs(bandit, tb.train_policy(bandit, tb.Method("dpo", 1.0), 4000)[1])
    m = tb.logratio_margin(bandit, np.log(path))[:, 0]
    assert m[4000] - m[2000] == pytest.approx(math.log(2), abs=0.01)
    assert m[3000] == pytest.approx(math.log(12001), abs=0.05)
    assert np.all(np.diff(m) > 0)


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0, 2.0])
def test_dpo_on_total_order_keeps_rising_and_sends_c_to_zero_for_every_beta(beta):
    """a > b, b > c, a > c: DPO's loss stays above 0 while h is finite, so the margin keeps rising, c (never
    a winner) loses mass every step and a gains it; IPO stops at pi(a) = e^{4t/3} / (1 + e^{2t/3} + e^{4t/3})."""
    bandit = tb.tabular(U3, [(0, 1), (1, 2), (0, 2)], gold=[1, 0.5, 0])
    path = tb.probs(bandit, tb.train_policy(bandit, tb.Method("dpo", beta), 2000)[1])
    h = tb.logratio_margin(bandit, np.log(path)).max(-1)
    assert h[2000] > h[1000] + 0.1 / beta and h[1000] > h[100]
    assert np.all(np.diff(path[:, 2]) < 0) and np.all(np.diff(path[:, 0]) >= 0)  # pi(a) reaches 1.0 in float64
    assert path[-1, 2] < path[-1, 1] and path[-1, 0] > max(0.98, tb.ipo_policy(bandit, beta)[0])


def test_displacement_pi_yw_falls_while_margin_grows_and_unseen_arm_takes_the_mass():
    """Logits (t, -t, 3t) along (1, -1): d log pi_w / dt = 1 - E_pi[(1, -1, 3)] = 1 - 1 = 0 at t = 0 and
    < 0 after, since E_pi moves toward 3 (second derivative -Var_uniform(1, -1, 3) = -(11/3 - 1) = -8/3);
    so pi(y_w) falls every step while h = 2t rises."""
    bandit, t = tb.displacement_bandit(), 1e-4
    d_log_pi_w = np.log(tb.probs(bandit, np.array([t, -t]))[0]) - np.log(1 / 3)
    assert d_log_pi_w / t ** 2 == pytest.approx(-8 / 3 / 2, rel=1e-3)
    path = tb.probs(bandit, tb.train_policy(bandit, tb.Method("dpo", 1.0), 3000)[1])
    assert np.all(np.diff(path[:, 0]) < 0)
    assert np.all(np.diff(tb.logratio_margin(bandit, np.log(path))[:, 0]) > 0)
    assert path[-1, 2] > 0.99
    res = tb.scenario_displacement(steps=300)
    assert res["dpo_pi_w_falls_every_step"] and res["dpo_pi_w"]["300"] < res["dpo_pi_w"]["1"] < 1 / 3


def test_displacement_fixes_stop_at_finite_margin_with_more_mass_on_y_w():
    """d-DPO pins beta h = dr: theta = dr / (2 beta) (1, -1); e-DPO and p-DPO also stop finite."""
    rows = {r["method"]: r for r in tb.scenario_displacement(steps=3000)["rows"]}
    dr = np.ptp(tb.train_reward_model(tb.displacement_bandit())[:2])
    assert rows["d-DPO"]["margin"] == pytest.approx(dr, abs=1e-6) and rows["d-DPO"]["gap"] < 1e-6
    for name in ("d-DPO", "e-DPO", "p-DPO"):
        assert rows[name]["policy"][0] > rows["DPO"]["policy"][0] + 0.05
        assert rows[name]["margin"] < rows["DPO"]["margin"] / 3


# -----------------------------------------------------------------------------
# names shared with rddpo.py, and the command line

FIGURES = ["a_divergence.png", "b_displacement.png", "c_family.png", "d_beta_sweep.png"]


def run_cli(*args, cwd):
    """toy_bandit.py as a user runs it: a fresh interpreter, so exit status and stderr are the real ones."""
    script = os.path.join(ROOT, "toy_bandit.py")
    return subprocess.run([sys.executable, script, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_method_names_are_rddpos_and_the_old_names_are_rejected():
    """The same five names as rddpo.METHODS; "ddpo", "edpo" and "pdpo" were renamed without aliases, so a
    leftover old name fails at once with the list of valid names instead of training the wrong loss."""
    assert tb.METHODS == ("dpo", "ipo", "d-dpo", "e-dpo", "p-dpo")
    for old in ("ddpo", "edpo", "pdpo"):
        with pytest.raises(ValueError, match="d-dpo"):
            tb.Method(old, 1.0)


def test_toy_bandit_imports_no_torch():
    """The bandit stays numpy + matplotlib: importing it must not pull in torch."""
    code = "import sys, toy_bandit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_out_naming_a_file_gives_one_error_line_exit_2_and_leaves_the_file_unchanged(tmp_path):
    """--out is a folder; an existing file there is refused before any work: one `error:` line, no traceback,
    exit status 2, the file's bytes as before and nothing else written next to it."""
    f = tmp_path / "results.txt"
    f.write_bytes(b"earlier results\n")
    out = run_cli("--out", str(f), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is a file" in lines[0], out.stderr
    assert f.read_bytes() == b"earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_unknown_flag_gives_one_error_line_exit_2_and_writes_nothing(tmp_path):
    """argparse's own errors are one line that names the flag and points to --help, not a usage block."""
    out = run_cli("--outt", "x", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--outt" in lines[0], out.stderr
    assert lines[0].endswith("(see --help)")
    assert list(tmp_path.iterdir()) == []


def test_new_run_dir_skips_a_number_another_process_took_after_listing(tmp_path, monkeypatch):
    """Two runs that list --out at the same moment both see bandit-001 free; the one that loses the race to
    create it must move on to bandit-002 (makedirs with exist_ok=False), not write into the other's folder."""
    (tmp_path / "bandit-001").mkdir()
    (tmp_path / "bandit-001" / "a_divergence.png").write_bytes(b"the other run's figure")
    monkeypatch.setattr(tb.os, "listdir", lambda path: [])  # the listing from before the other run's makedirs
    assert tb.new_run_dir(str(tmp_path)) == str(tmp_path / "bandit-002")
    monkeypatch.undo()
    assert (tmp_path / "bandit-001" / "a_divergence.png").read_bytes() == b"the other run's figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bandit-001", "bandit-002"]


@pytest.mark.slow
def test_two_runs_into_one_out_write_two_folders_and_leave_the_first_untouched(tmp_path, capsys):
    """Run twice with the same --out: the figures go to bandit-001, then bandit-002, each run prints its
    folder, and the first run's four figures keep their bytes and their (back-dated) modification times."""
    assert tb.main(["--out", str(tmp_path)]) == 0
    first = tmp_path / "bandit-001"
    assert str(first) in capsys.readouterr().out
    assert sorted(p.name for p in first.iterdir()) == FIGURES
    for p in first.iterdir():
        os.utime(p, ns=(10 ** 18, 10 ** 18))  # back-date: any rewrite would set the time to now
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    assert tb.main(["--out", str(tmp_path)]) == 0
    second = tmp_path / "bandit-002"
    assert str(second) in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bandit-001", "bandit-002"]
    assert sorted(p.name for p in second.iterdir()) == FIGURES
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert all(p.stat().st_mtime_ns == 10 ** 18 for p in first.iterdir())


@pytest.mark.slow
def test_main_prints_json_and_writes_four_figures_into_a_new_folder(tmp_path, capsys):
    """End to end: --json prints only parseable numbers for scenarios a-d on stdout (the folder is in the JSON
    and on stderr), and the four PNGs are in --out/bandit-001."""
    assert tb.main(["--out", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)
    assert set(res) >= {"a", "b", "c", "d"} and all(r["gap"] is None or r["gap"] < 1e-2 for r in res["c"]["rows"])
    assert set(res["d"]) >= {"DPO", "IPO", "d-DPO", "e-DPO", "p-DPO"}
    assert res["figures"] == str(tmp_path / "bandit-001") and res["figures"] in captured.err
    assert sorted(p.name for p in (tmp_path / "bandit-001").glob("*.png")) == FIGURES


def test_ctrl_c_is_one_line_and_no_traceback(tmp_path, monkeypatch, capsys):
    """an interrupt in the third scenario: exit 130, one line on stderr; the figures already drawn stay."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(tb, "scenario_family", interrupted)
    assert tb.main(["--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interrupted"), err
    assert sorted(p.name for p in (tmp_path / "bandit-001").iterdir()) == ["a_divergence.png", "b_displacement.png"]


def test_toy_bandit_py_keeps_to_the_style_guides_line_limit():
    """no line of toy_bandit.py is over 100 characters (the style guide's limit, as for rddpo.py)."""
    source = open(os.path.join(ROOT, "toy_bandit.py")).read()
    assert [n for n, line in enumerate(source.splitlines(), 1) if len(line) > 100] == []
