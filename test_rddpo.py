"""tests of the method, rddpo.py: the losses by hand, their gradients and invariances, sequence log-probs and
tokenisation, the reward models and train_policy. each test name states the property; the docstring shows the hand
computation. run with `pytest -q test_rddpo.py` (seconds)."""
import copy
import math
import os

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # never wait on the network
import rddpo  # noqa: E402
from harness import experiment, models, task  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LN2 = math.log(2)


def logps(*values, dtype=torch.float64, grad=False):
    return [torch.tensor(v, dtype=dtype, requires_grad=grad) for v in values]


@pytest.fixture(scope="module")
def tokenizer():
    return task.build_tokenizer()


@pytest.fixture(scope="module")
def tiny(tokenizer):
    """a small gpt-2 with random weights (no pretraining needed for these tests)."""
    torch.manual_seed(0)
    return models.build_tiny_gpt2(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=64).eval()


# -----------------------------------------------------------------------------
# hand-computed values


def test_dpo_loss_is_ln2_when_all_logps_are_equal_and_moves_with_beta_otherwise():
    """h = 0, so -log sigmoid(0) = ln 2 for every beta. a second pair with h = 2 makes beta show: at beta 0.5
    its loss is log(1 + e^-1) = 0.313262, so the batch mean is (ln 2 + 0.313262) / 2 = 0.503262."""
    for beta in (0.1, 1.0, 7.0):
        assert rddpo.dpo_loss(*logps([-3.0, -1.0], [-3.0, -1.0], [-3.0, -1.0], [-3.0, -1.0]), beta).item() \
            == pytest.approx(LN2, abs=1e-12)
    loss = rddpo.dpo_loss(*logps([-3.0, 0.0], [-3.0, -2.0], [-3.0, 0.0], [-3.0, 0.0]), 0.5)
    assert loss.item() == pytest.approx((LN2 + math.log1p(math.exp(-1.0))) / 2, abs=1e-12)


def test_logratio_margin_hand_value_with_unequal_reference_log_probs():
    """pc -1, pr -3, rc -2, rr -5: h = (-1 - -2) - (-3 - -5) = 1 - 2 = -1 (the reference's roles swapped would
    give 5 or -3); DPO at beta 1 on it: log(1 + e^1) = 1.313262."""
    lp = logps([-1.0], [-3.0], [-2.0], [-5.0])
    assert rddpo.logratio_margin(*lp).item() == pytest.approx(-1.0)
    assert rddpo.dpo_loss(*lp, 1.0).item() == pytest.approx(math.log1p(math.e), abs=1e-12)
    assert rddpo.ipo_loss(*lp, 0.5).item() == pytest.approx((-1.0 - 1.0) ** 2)  # (h - 1/(2 beta))^2


def test_dpo_loss_hand_value():
    """h = (-1 - -1.5) - (-2 - -1.5) = 1; beta = 0.5: -log sigmoid(0.5) = log(1 + e^-0.5) = 0.474077."""
    loss = rddpo.dpo_loss(*logps([-1.0], [-2.0], [-1.5], [-1.5]), beta=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-12)
    assert loss.item() == pytest.approx(0.474077, abs=1e-6)


def test_ipo_loss_hand_values():
    """h = 1, beta = 0.5: (1 - 1/(2*0.5))^2 = 0. h = 0, beta = 0.25: (0 - 2)^2 = 4. mean of the two rows = 2."""
    loss = rddpo.ipo_loss(*logps([-1.0, -1.0], [-2.0, -1.0], [-1.5, -1.0], [-1.5, -1.0]), beta=0.5)
    assert loss.item() == pytest.approx(((1 - 1) ** 2 + (0 - 1) ** 2) / 2, abs=1e-12)
    assert rddpo.ipo_loss(*logps([-1.0], [-1.0], [-1.0], [-1.0]), beta=0.25).item() == pytest.approx(4.0)


def test_distill_loss_hand_value():
    """dr = 2 - 0.5 = 1.5, beta h = 0.5 * 1 = 0.5: (1.5 - 0.5)^2 = 1. second row dr = -1, h = 0: 1. mean 1."""
    pc, pr, rc, rr = logps([-1.0, -4.0], [-2.0, -4.0], [-1.5, -4.0], [-1.5, -4.0])
    loss = rddpo.distill_loss(pc, pr, rc, rr, torch.tensor([2.0, 0.0], dtype=torch.float64),
                              torch.tensor([0.5, 1.0], dtype=torch.float64), beta=0.5)
    assert loss.item() == pytest.approx(1.0, abs=1e-12)


def test_forward_kl_estimate_hand_value():
    """(ref - policy) over the pool's responses: (0.5 - -0.5) = 1, (0 - 1) = -1, (-1 - -3) = 2, (2 - 2) = 0.
    mean of (1, -1, 2, 0) = 0.5; swapping the two arguments flips the sign."""
    policy, ref = logps([-0.5, 1.0, -3.0, 2.0], [0.5, 0.0, -1.0, 2.0])
    assert rddpo.forward_kl_estimate(policy, ref).item() == pytest.approx(0.5)
    assert rddpo.forward_kl_estimate(ref, policy).item() == pytest.approx(-0.5)


def test_forward_kl_estimate_is_the_exact_kl_on_samples_of_pi_ref():
    """three responses, pi_ref = (0.5, 0.3, 0.2), pi = (0.2, 0.3, 0.5): KL(pi_ref || pi) = sum pi_ref log(pi_ref / pi)
    = 0.5 ln 2.5 + 0.2 ln 0.4 = 0.274879. the estimate on 200000 draws of pi_ref is within 0.01 of it; on draws of
    pi instead (the other direction's sample) it is -KL(pi || pi_ref) = -0.274879, not the forward KL."""
    p_ref, p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    y = torch.multinomial(p_ref, 200_000, replacement=True, generator=g)
    est = rddpo.forward_kl_estimate(p.log()[y], p_ref.log()[y]).item()
    assert est == pytest.approx(0.5 * math.log(2.5) + 0.2 * math.log(0.4), abs=0.01)
    y = torch.multinomial(p, 200_000, replacement=True, generator=g)
    assert rddpo.forward_kl_estimate(p.log()[y], p_ref.log()[y]).item() == pytest.approx(-0.274879, abs=0.01)


def test_pessimistic_distill_loss_takes_the_smallest_member_loss_plus_gamma_fkl():
    """beta h = 0 (the policy is shifted by -1 on all four log-probs, so h stays 0). member 1: dr = (1, 3) ->
    (1 + 9)/2 = 5; member 2: dr = (2, 0) -> (4 + 0)/2 = 2. min = 2. the pool: ref - policy = (1, 3), fkl = 2,
    so loss = 2 + gamma * 2. the pairs' own log-probs do not enter the kl term."""
    pc, pr, rc, rr = logps([-1.0, -1.0], [-1.0, -1.0], [0.0, 0.0], [0.0, 0.0])
    chosen = torch.tensor([[1.0, 3.0], [2.0, 0.0]], dtype=torch.float64)
    rejected = torch.zeros(2, 2, dtype=torch.float64)
    pool = logps([-2.0, -4.0], [-1.0, -1.0])
    loss = rddpo.pessimistic_distill_loss(pc, pr, rc, rr, chosen, rejected, 0.3, 0.25, *pool)
    assert loss.item() == pytest.approx(2.0 + 0.25 * 2.0, abs=1e-12)


def test_pessimistic_distill_min_is_over_batch_losses_not_per_pair():
    """member 1: dr = (0, 4) -> squared errors (0, 16), batch mean 8; member 2: dr = (4, 0) -> (16, 0), mean 8.
    batch-level min = 8; a per-pair min would give (0 + 0)/2 = 0."""
    pc, pr, rc, rr = logps([0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    chosen = torch.tensor([[0.0, 4.0], [4.0, 0.0]], dtype=torch.float64)
    loss = rddpo.pessimistic_distill_loss(pc, pr, rc, rr, chosen, torch.zeros_like(chosen), 1.0, 0.0, *POOL)
    assert loss.item() == pytest.approx(8.0)


def test_pessimistic_dpo_loss_is_dpo_plus_gamma_fkl():
    """h = (0 - 0) - (-1 - 0) = 1 at beta 1: dpo = log(1 + e^-1) = 0.313262; the pool's ref - policy = (0, 1, 0.5),
    fkl = 0.5."""
    pc, pr, rc, rr = logps([0.0], [-1.0], [0.0], [0.0])
    loss = rddpo.pessimistic_dpo_loss(pc, pr, rc, rr, 1.0, 2.0, *logps([-1.0, -2.0, -1.5], [-1.0, -1.0, -1.0]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1)) + 2.0 * 0.5, abs=1e-12)


def test_bradley_terry_loss_hand_values():
    """equal rewards: -log sigmoid(0) = ln 2; margin 1: log(1 + e^-1) = 0.313262; swapped: log(1 + e) = 1.313262."""
    z = torch.zeros(3)
    assert rddpo.bradley_terry_loss(z, z).item() == pytest.approx(LN2, abs=1e-6)
    assert rddpo.bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(0.313262,
                                                                                                       abs=1e-6)
    assert rddpo.bradley_terry_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(1.313262,
                                                                                                       abs=1e-6)


def test_implicit_reward_is_beta_times_log_ratio():
    """beta = 0.2, log pi = -1, log pi_ref = -3: 0.2 * 2 = 0.4."""
    assert rddpo.implicit_reward(torch.tensor(-1.0), torch.tensor(-3.0), 0.2).item() == pytest.approx(0.4)


# -----------------------------------------------------------------------------
# gradients


POOL = (torch.tensor([-1.0, -2.5, 0.5, -0.25], dtype=torch.float64),  # policy, reference log-probs of a pool
        torch.tensor([-0.5, -1.0, 0.0, -0.5], dtype=torch.float64))  # of four pi_ref samples: fkl = 1.25 / 4


def all_losses(beta=0.5, gamma=0.3, pool=POOL):
    rm_c, rm_r = torch.tensor([1.0, -0.5, 0.2]).double(), torch.tensor([0.0, 0.3, 0.9]).double()
    fam_c, fam_r = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)).double(), torch.zeros(4, 3).double()
    return {
        "dpo": lambda *lp: rddpo.dpo_loss(*lp, beta),
        "ipo": lambda *lp: rddpo.ipo_loss(*lp, beta),
        "d-dpo": lambda *lp: rddpo.distill_loss(*lp, rm_c, rm_r, beta),
        "e-dpo": lambda *lp: rddpo.pessimistic_distill_loss(*lp, fam_c, fam_r, beta, gamma, *pool),
        "p-dpo": lambda *lp: rddpo.pessimistic_dpo_loss(*lp, beta, gamma, *pool),
    }


def hand_gradients(method, pc, pr, rc, rr, beta=0.5, gamma=0.3):
    """d loss / d log pi(y_w), written out by hand for B pairs (the margin term moves log pi(y_l) the other way):
    dpo: -beta sigmoid(-beta h) / B; ipo: 2 (h - 1/(2 beta)) / B; d-dpo: -2 beta (dr - beta h) / B; e-dpo: the
    d-dpo gradient of the member with the smallest batch loss; p-dpo: dpo's. the kl term adds nothing: it reads the
    pool's responses, not the pairs' (test_the_kl_term_pulls_up_the_pool_responses_only)."""
    h, B = (pc - rc) - (pr - rr), len(pc)
    rm_c, rm_r = torch.tensor([1.0, -0.5, 0.2]).double(), torch.tensor([0.0, 0.3, 0.9]).double()
    fam_c = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)).double()  # as all_losses() builds them
    if method == "e-dpo":
        k = ((fam_c - beta * h) ** 2).mean(-1).argmin()
        margin = -2 * beta * (fam_c[k] - beta * h) / B
    else:
        margin = {"dpo": -beta * torch.sigmoid(-beta * h), "p-dpo": -beta * torch.sigmoid(-beta * h),
                  "ipo": 2 * (h - 1 / (2 * beta)), "d-dpo": -2 * beta * (rm_c - rm_r - beta * h)}[method] / B
    return margin, -margin


@pytest.mark.parametrize("method", rddpo.METHODS)
def test_every_loss_has_the_gradient_derived_by_hand(method):
    """autograd's gradient of each loss in log pi(y_w) and log pi(y_l), at random log-probs, equals the
    hand-derived expression (hand_gradients); the reference log-probs get none (they are constants)."""
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(4))
    all_losses()[method](pc, pr, rc, rr).backward()
    want_c, want_r = hand_gradients(method, pc.detach(), pr.detach(), rc.detach(), rr.detach())
    torch.testing.assert_close(pc.grad, want_c, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pr.grad, want_r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["dpo", "p-dpo"])
def test_dpo_gradient_raises_chosen_and_lowers_rejected(method):
    """d/d pc of -log sigmoid(beta h) = -beta sigmoid(-beta h) < 0: descent raises log pi(chosen);
    d/d pr = +beta sigmoid(-beta h) > 0: descent lowers log pi(rejected). at h = 0, beta = 0.5: -0.25 and +0.25
    (p-dpo's kl term reads the pool, so it adds nothing here)."""
    pc, pr, rc, rr = logps([-1.0], [-1.0], [-1.0], [-1.0], grad=True)
    all_losses(beta=0.5, gamma=0.3)[method](pc, pr, rc, rr).backward()
    assert pc.grad.item() == pytest.approx(-0.25)
    assert pr.grad.item() == pytest.approx(0.25)


@pytest.mark.parametrize("method", ["e-dpo", "p-dpo"])
def test_the_kl_term_pulls_up_the_pool_responses_only(method):
    """d/d log pi(y) of gamma * mean_P(log pi_ref(y) - log pi(y)) = -gamma / P for each of the P pool responses:
    descent raises them all alike (toward pi_ref's own samples), and the reference's log-probs get none."""
    pool = (POOL[0].clone().requires_grad_(), POOL[1].clone().requires_grad_())
    all_losses(gamma=0.3, pool=pool)[method](*logps([-1.0], [-2.0], [-1.5], [-1.5])).backward()
    torch.testing.assert_close(pool[0].grad, torch.full((4,), -0.3 / 4, dtype=torch.float64))


def test_distill_gradient_moves_margin_toward_reward_difference():
    """(dr - beta h)^2 with dr = 2, beta h = 0: d/d pc = -2 beta (dr - beta h) = -2 < 0 at beta = 0.5.
    with dr = -2 the sign flips: the target is a finite margin, not +infinity."""
    for dr, sign in ((2.0, -1), (-2.0, 1)):
        pc, pr, rc, rr = logps([0.0], [0.0], [0.0], [0.0], grad=True)
        rddpo.distill_loss(pc, pr, rc, rr, torch.tensor([dr]).double(), torch.zeros(1).double(), 0.5).backward()
        assert pc.grad.item() == pytest.approx(sign * 2.0)
        assert pr.grad.item() == pytest.approx(-sign * 2.0)


def test_ipo_gradient_vanishes_at_its_target_margin():
    """ipo's minimum is at h = 1/(2 beta) = 2 for beta 0.25: gradient zero there, pushes h up below it."""
    pc, pr, rc, rr = logps([2.0], [0.0], [0.0], [0.0], grad=True)
    rddpo.ipo_loss(pc, pr, rc, rr, 0.25).backward()
    assert pc.grad.item() == pytest.approx(0.0)
    pc, pr, rc, rr = logps([1.0], [0.0], [0.0], [0.0], grad=True)
    rddpo.ipo_loss(pc, pr, rc, rr, 0.25).backward()
    assert pc.grad.item() == pytest.approx(2 * (1 - 2))


def test_losses_are_finite_at_huge_margins():
    """at beta h = +-1e4 (float32): dpo is ~0 and ~1e4, never inf or nan, and so are the gradients."""
    for sign in (1.0, -1.0):
        pc, pr, rc, rr = logps([sign * 1e5], [0.0], [0.0], [0.0], dtype=torch.float32, grad=True)
        for method, f in all_losses(beta=0.1).items():
            if method in ("d-dpo", "e-dpo"):
                continue  # their reward tensors are float64 fixtures of length 3
            loss = f(pc, pr, rc, rr)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(pc.grad).all(), method
            pc.grad = None
        dpo = rddpo.dpo_loss(pc, pr, rc, rr, 0.1).item()
        assert dpo == pytest.approx(0.0 if sign > 0 else 1e4, rel=1e-6, abs=1e-6)


# -----------------------------------------------------------------------------
# invariances and reductions


def test_adding_a_constant_to_both_logps_of_a_pair_leaves_dpo_ipo_ddpo_unchanged():
    """h = (pc + c - rc) - (pr + c - rr): c cancels, per pair (c may differ between pairs)."""
    torch.manual_seed(1)
    pc, pr, rc, rr = (torch.randn(5, dtype=torch.float64) for _ in range(4))
    c = torch.randn(5, dtype=torch.float64) * 10
    for method in ("dpo", "ipo", "d-dpo"):
        f = all_losses()[method] if method != "d-dpo" else \
            (lambda *lp: rddpo.distill_loss(*lp, torch.ones(5).double(), torch.zeros(5).double(), 0.5))
        assert f(pc + c, pr + c, rc, rr).item() == pytest.approx(f(pc, pr, rc, rr).item(), abs=1e-10), method
    h = (pc - rc) - (pr - rr)  # and the value is the formula's, so the shift test cannot pass by a loss ignoring h
    dpo_by_hand = torch.log1p(torch.exp(-0.5 * h)).mean().item()  # -log sigmoid(beta h) at beta 0.5
    assert all_losses()["dpo"](pc + c, pr + c, rc, rr).item() == pytest.approx(dpo_by_hand, abs=1e-10)
    assert all_losses()["ipo"](pc + c, pr + c, rc, rr).item() == pytest.approx(((h - 1.0) ** 2).mean().item(),
                                                                               abs=1e-10)


def test_shifting_every_reward_model_by_a_per_prompt_constant_leaves_distillation_unchanged():
    """dr = (r_w + c) - (r_l + c): bradley-terry rewards are identified only up to c(x), and so is the loss."""
    torch.manual_seed(2)
    lp = [torch.randn(6, dtype=torch.float64) for _ in range(4)]
    rc, rr = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    c = torch.randn(3, 6, dtype=torch.float64) * 5  # a different constant per member and prompt
    e = rddpo.pessimistic_distill_loss
    assert e(*lp, rc + c, rr + c, 0.5, 0.1, *POOL).item() == pytest.approx(e(*lp, rc, rr, 0.5, 0.1, *POOL).item(),
                                                                           abs=1e-10)
    assert e(*lp, rc + c, rr + c, 0.5, 0.1, *POOL).item() == pytest.approx(edpo_by_hand(lp, rc, rr, 0.5, 0.1),
                                                                           abs=1e-10)
    d = rddpo.distill_loss
    assert d(*lp, rc[0] + c[0], rr[0] + c[0], 0.5).item() == pytest.approx(d(*lp, rc[0], rr[0], 0.5).item(), abs=1e-10)


def edpo_by_hand(lp, rm_c, rm_r, beta, gamma):
    """min over members of the mean squared distillation error, plus gamma times the mean of log pi_ref - log pi
    over the pool POOL."""
    pc, pr, rc, rr = (x.tolist() for x in lp)
    h = [(a - c) - (b - d) for a, b, c, d in zip(pc, pr, rc, rr)]
    member = [sum((w - l - beta * hb) ** 2 for w, l, hb in zip(mc.tolist(), mr.tolist(), h)) / len(h)
              for mc, mr in zip(rm_c, rm_r)]
    fkl = sum(r - p for p, r in zip(*(x.tolist() for x in POOL))) / len(POOL[0])
    return min(member) + gamma * fkl


def test_permuting_the_ensemble_leaves_edpo_unchanged_and_it_is_the_smallest_members_loss():
    """five unequal members (their min, max and mean all differ): any order gives the same loss, and it is the
    smallest member's loss plus gamma * fkl, computed by hand."""
    torch.manual_seed(3)
    lp = [torch.randn(6, dtype=torch.float64) for _ in range(4)]
    rc, rr = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    members = rddpo.distill_member_losses(*lp, rc, rr, 0.5)
    assert members.min() < members.mean() < members.max()
    perm = torch.tensor([3, 0, 4, 1, 2])
    e = rddpo.pessimistic_distill_loss
    assert e(*lp, rc[perm], rr[perm], 0.5, 0.1, *POOL).item() == e(*lp, rc, rr, 0.5, 0.1, *POOL).item()
    assert e(*lp, rc, rr, 0.5, 0.1, *POOL).item() == pytest.approx(edpo_by_hand(lp, rc, rr, 0.5, 0.1), abs=1e-12)


def test_edpo_with_identical_members_is_ddpo_plus_gamma_fkl():
    """min over K copies of the same loss is that loss; the kl term is added once."""
    torch.manual_seed(4)
    lp = [torch.randn(6, dtype=torch.float64) for _ in range(4)]
    rc, rr = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    e = rddpo.pessimistic_distill_loss(*lp, rc.expand(4, 6), rr.expand(4, 6), 0.5, 0.7, *POOL)
    d = rddpo.distill_loss(*lp, rc, rr, 0.5) + 0.7 * 0.3125  # the pool's fkl, by hand
    assert e.item() == pytest.approx(d.item(), abs=1e-12)


def test_pdpo_with_gamma_zero_is_dpo():
    torch.manual_seed(5)
    lp = [torch.randn(6, dtype=torch.float64) for _ in range(4)]
    assert rddpo.pessimistic_dpo_loss(*lp, 0.5, 0.0, *POOL).item() == rddpo.dpo_loss(*lp, 0.5).item()


# -----------------------------------------------------------------------------
# tokenisation and sequence log-probs on a small gpt-2


PROMPTS = ["my review of blue harbor :", "i watched the long night :", "thoughts on dark water :"]
RESPONSES = [" the plot was great .", " the acting was very dull . the music was quiet .", " the cast was clever ."]


def brute_force_logps(model, tokenizer, prompts, responses):
    """each sequence alone (no padding), summing log p(token | prefix) over its response tokens one by one."""
    out = []
    for p, r in zip(prompts, responses):
        p_ids = tokenizer(p, add_special_tokens=False).input_ids
        ids = p_ids + tokenizer(r, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        with torch.no_grad():
            mask = torch.ones(1, len(ids), dtype=torch.long)
            logits = model(torch.tensor([ids]), attention_mask=mask).logits[0].double()  # (T, V)
        out.append(sum(logits[t - 1].log_softmax(-1)[ids[t]].item() for t in range(len(p_ids), len(ids))))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("side", ["right", "left"])
def test_sequence_logps_matches_a_per_token_loop_with_padding(tiny, tokenizer, side):
    """the batched, padded, masked sum equals a loop over each unpadded sequence's response tokens."""
    data = rddpo.tokenize(tokenizer, PROMPTS, RESPONSES, max_length=64, side=side)
    assert (data.attention_mask == 0).any()  # padding is really exercised
    with torch.no_grad():
        logits = rddpo.forward(tiny, data.input_ids, data.attention_mask)
    got = rddpo.sequence_logps(logits, data.input_ids, data.response_mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), brute_force_logps(tiny, tokenizer, PROMPTS, RESPONSES), atol=1e-4, rtol=0)


def test_sequence_logps_is_float32_for_bfloat16_logits():
    logits = torch.randn(2, 5, 7).bfloat16()
    out = rddpo.sequence_logps(logits, torch.randint(7, (2, 5)), torch.ones(2, 5, dtype=torch.long))
    assert out.dtype == torch.float32


def test_sequence_logps_ignores_nan_logits_at_masked_positions():
    """padding positions can hold anything; the where-mask keeps nan out of the sum."""
    logits = torch.zeros(1, 4, 3)
    logits[0, 2:] = float("nan")  # positions 2, 3 predict tokens 3 and (none): masked below
    out = rddpo.sequence_logps(logits, torch.tensor([[0, 1, 2, 0]]), torch.tensor([[0, 1, 1, 0]]))
    assert out.item() == pytest.approx(2 * -math.log(3))


def test_response_mask_marks_response_and_eos_only(tokenizer):
    """'my review of blue harbor :' is 6 tokens; ' the plot was great .' is 5 plus eos = 6 masked tokens."""
    data = rddpo.tokenize(tokenizer, PROMPTS[:1], RESPONSES[:1], max_length=64)
    assert data.response_mask[0].tolist() == [0] * 6 + [1] * 6
    assert data.input_ids[0, -1].item() == tokenizer.eos_token_id


def test_prompt_that_is_not_a_token_prefix_is_handled(tokenizer):
    """'... blue' + 'harbor :' joins into the unknown word 'blueharbor', so the prompt's tokens are not a prefix
    of the joint tokens; the response is then tokenised on its own: [harbor, :, eos], not [<unk>, :, eos]."""
    data = rddpo.tokenize(tokenizer, ["i watched blue"], ["harbor :"], max_length=64)
    resp = data.input_ids[0][data.response_mask[0].bool()].tolist()
    assert resp == tokenizer("harbor :").input_ids + [tokenizer.eos_token_id]
    assert tokenizer.unk_token_id not in data.input_ids[0].tolist()


def test_long_responses_are_truncated_and_too_long_prompts_skipped(tokenizer):
    """max_length 10: a prompt of 6 tokens keeps 4 response tokens (one truncated pair); a prompt of >= 10 tokens
    is skipped."""
    long_prompt = " ".join(["the"] * 12)
    data = rddpo.tokenize_pairs(tokenizer, [PROMPTS[1], long_prompt], [RESPONSES[1]] * 2, [RESPONSES[0]] * 2, 10)
    assert data.keep == [0] and data.skipped == 1 and data.n_truncated == 1
    assert data.tokens.input_ids.shape == (2, 10)
    assert data.tokens.response_mask[0].sum().item() == 4


def test_token_rows_hold_exactly_the_ids_drawn_and_add_no_eos_to_a_cut_off_response(tokenizer):
    """a cut-off response [5, 6] keeps its two tokens; an ended one [7, eos] keeps its eos; prompts masked out."""
    eos = tokenizer.eos_token_id
    drawn = models.Sampled(["", ""], [[1, 2, 3], [4]], [[5, 6], [7, eos]])
    tokens = rddpo.token_rows(drawn.prompt_ids, drawn.response_ids, eos)
    assert tokens.input_ids.tolist() == [[1, 2, 3, 5, 6], [4, 7, eos, eos, eos]]
    assert tokens.response_mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]]
    assert tokens.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


def sharpened(model, factor=8.0):
    """a copy of the model whose final layer norm is scaled up: sharper next-token distributions, a policy that
    differs from its reference everywhere (a random model's are nearly uniform)."""
    policy = copy.deepcopy(model)
    with torch.no_grad():
        policy.transformer.ln_f.weight.mul_(factor)
    return policy


def test_implicit_reward_is_zero_for_the_reference_and_beta_times_the_log_ratio_for_another_policy(tiny, tokenizer):
    """a copy of the reference: exactly 0 on every response. a sharpened policy: 0.1 times its log-prob minus the
    reference's, both from the per-token loop (brute_force_logps), so sign and beta are checked on real sequences."""
    data = rddpo.tokenize(tokenizer, PROMPTS, RESPONSES, 64)
    ref = rddpo.all_logps(tiny, data, np.arange(3), "cpu")
    assert (rddpo.implicit_reward(rddpo.all_logps(copy.deepcopy(tiny), data, np.arange(3), "cpu"), ref, 0.1) == 0).all()
    policy = sharpened(tiny)
    got = rddpo.implicit_reward(rddpo.all_logps(policy, data, np.arange(3), "cpu"), ref, 0.1).double()
    want = 0.1 * (brute_force_logps(policy, tokenizer, PROMPTS, RESPONSES)
                  - brute_force_logps(tiny, tokenizer, PROMPTS, RESPONSES))
    assert want.abs().min() > 0.01
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# -----------------------------------------------------------------------------
# reward models


def test_last_token_index_uses_the_mask_for_left_and_right_padding():
    """right padded [1 1 1 0 0] -> 2; left padded [0 0 1 1 1] -> 4; unpadded [1 1 1 1 1] -> 4."""
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert rddpo.last_token_index(mask).tolist() == [2, 4, 4]


def test_reward_model_reads_the_same_token_under_left_and_right_padding(tiny, tokenizer):
    torch.manual_seed(0)
    rm = rddpo.RewardModel(tiny).eval()
    torch.nn.init.normal_(rm.head.weight)
    r = {}
    for side in ("left", "right"):
        d = rddpo.tokenize(tokenizer, PROMPTS, RESPONSES, 64, side=side)
        with torch.no_grad():
            r[side] = rm(d.input_ids, d.attention_mask)
    torch.testing.assert_close(r["left"], r["right"], atol=1e-5, rtol=0)
    assert r["left"].std() > 0  # the rows really differ


def test_reward_model_reads_the_last_real_token_whatever_the_padding_holds(tiny, tokenizer):
    """right padding filled with eos (as gpt-2 pads) or with another token id: the same rewards, since the
    padding is masked out and the head reads the last real token, not the last position."""
    torch.manual_seed(0)
    rm = rddpo.RewardModel(tiny).eval()
    torch.nn.init.normal_(rm.head.weight)
    p, r, _ = zip(*[rddpo.encode(tokenizer, a, b, 64) for a, b in zip(PROMPTS, RESPONSES)])
    r_eos, r_unk = (rddpo.token_rows(p, r, pad) for pad in (tokenizer.eos_token_id, tokenizer.unk_token_id))
    assert (r_eos.attention_mask == 0).any()
    with torch.no_grad():
        torch.testing.assert_close(rm(r_unk.input_ids, r_unk.attention_mask), rm(r_eos.input_ids, r_eos.attention_mask),
                                   atol=1e-5, rtol=0)


def test_reward_model_starts_at_zero_and_does_not_change_the_reference(tiny):
    before = [p.clone() for p in tiny.parameters()]
    rm = rddpo.RewardModel(tiny)
    assert rm(torch.tensor([[3, 4, 5]]), torch.ones(1, 3, dtype=torch.long)).item() == 0.0
    rm.backbone.h[0].mlp.c_fc.weight.data += 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.parameters()))


def test_reward_model_learns_to_rank_a_tiny_synthetic_set(tiny, tokenizer):
    """chosen responses carry positive words, rejected ones negative words; after training, the bt loss has
    dropped well below ln 2 and every pair is ranked correctly."""
    rng = np.random.default_rng(0)
    pos, neg = task.POSITIVE[:5], task.NEGATIVE[:5]
    chosen = [f" the plot was {pos[rng.integers(5)]} ." for _ in range(24)]
    rejected = [f" the plot was {neg[rng.integers(5)]} ." for _ in range(24)]
    data = rddpo.tokenize_pairs(tokenizer, PROMPTS * 8, chosen, rejected, 64)
    rm = rddpo.train_reward_model(tiny, data, np.arange(24), steps=60, lr=3e-3, batch_size=8, seed=0, device="cpu",
                                  desc="rm")
    r = rddpo.score(rm, data.tokens, "cpu")
    r_w, r_l = r.chunk(2)
    assert rddpo.bradley_terry_loss(r_w, r_l).item() < 0.2
    assert (r_w > r_l).all()


def test_family_shares_spread_over_zero_to_one():
    assert rddpo.family_shares(4) == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert rddpo.family_shares(1) == [0.5]


@pytest.mark.parametrize("share", [0.0, 0.25, 1.0])
def test_resample_has_the_requested_share_of_longer_wins(share):
    longer_won = np.array([True] * 30 + [False] * 70)
    idx = rddpo.resample_by_length_share(longer_won, share, np.random.default_rng(0))
    assert len(idx) == 100
    assert longer_won[idx].mean() == pytest.approx(share)


def test_reward_model_loss_is_bradley_terry_plus_the_centering_term():
    """r_w = 1, r_l = 0: log(1 + e^-1) + 0.01 * (1 + 0)^2 = 0.323262; r_w = r_l = 2: ln 2 + 0.01 * 16 = 0.853147."""
    assert rddpo.reward_model_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(0.323262, abs=1e-6)
    assert rddpo.reward_model_loss(torch.tensor([2.0]), torch.tensor([2.0])).item() == pytest.approx(LN2 + 0.16,
                                                                                                      abs=1e-6)


# -----------------------------------------------------------------------------
# training a policy: train_policy and its bookkeeping


def test_without_dropout_makes_training_mode_forward_equal_to_eval_mode(tiny, tokenizer):
    """gpt-2's dropout is 0.1 by default; a policy copied from the reference and switched off dropout gives
    the reference's logits in training mode, so its implicit reward starts at exactly 0."""
    ids = torch.tensor([tokenizer("the film was great .").input_ids])
    with torch.no_grad():
        ref = tiny(input_ids=ids).logits
        noisy = copy.deepcopy(tiny).train()(input_ids=ids).logits
        clean = rddpo.without_dropout(copy.deepcopy(tiny).train())(input_ids=ids).logits
    assert not torch.allclose(noisy, ref, atol=1e-4)
    assert torch.allclose(clean, ref, atol=1e-6)


def easy_pairs(tokenizer, n=8):
    """n pairs whose chosen response differs from the rejected one by its adjective."""
    prompts = (PROMPTS * n)[:n]
    chosen, rejected = [" the plot was great ."] * n, [" the plot was awful ."] * n
    pairs = rddpo.tokenize_pairs(tokenizer, prompts, chosen, rejected, 64)
    return pairs


def test_train_policy_takes_the_documented_adamw_steps_from_the_reference_and_leaves_it_alone(tiny, tokenizer):
    """three DPO steps of train_policy equal three steps written out here: the same batches (the same generator),
    the policy's log-probs of the batch's chosen rows and then its rejected rows, dpo_loss against the reference's
    log-probs, zero_grad, backward, AdamW. the reference's weights do not move, the policy's implicit reward is 0
    at step 1 (logged before the first update), and the margin on these easy pairs grows."""
    reference = sharpened(tiny)  # not what a fresh model built at any seed would be
    pairs = easy_pairs(tokenizer)
    pairs.ref_logps = rddpo.all_logps(reference, pairs.tokens, np.arange(16), "cpu")
    before = copy.deepcopy(reference.state_dict())
    cfg = experiment.Config(steps=3, batch_size=4, lr=1e-2, log_every=1, eval_points=1)
    logged = []
    policy, shares = rddpo.train_policy(reference, pairs, "dpo", cfg, seed=0, device="cpu",
                                        log=lambda step, m: logged.append(m))
    mine = rddpo.without_dropout(copy.deepcopy(reference)).train()
    opt, rng = torch.optim.AdamW(mine.parameters(), lr=1e-2), np.random.default_rng([0, 0])
    for _ in range(3):
        idx = rng.choice(8, 4, replace=False)
        rows = np.concatenate([idx, idx + 8])
        ids, mask, resp = rddpo.batch_tensors(pairs.tokens, rows, "cpu")
        lp = rddpo.sequence_logps(rddpo.forward(mine, ids, mask), ids, resp)
        loss = rddpo.dpo_loss(*lp.chunk(2), *pairs.ref_logps[rows].chunk(2), 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (name, a), b in zip(policy.state_dict().items(), mine.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in before.items())
    assert abs(logged[0]["rewards/margins"]) < 1e-6 and logged[-1]["rewards/margins"] > logged[0]["rewards/margins"]
    assert shares is None


def test_edpo_training_counts_which_member_was_the_minimum(tiny, tokenizer):
    """member 0 asks for the margin the policy has (dr = 0 at the start: loss 0), members 1 and 2 for large ones:
    the minimum is member 0 at every step, so its share is 1."""
    pairs = easy_pairs(tokenizer)
    pairs.ref_logps = rddpo.all_logps(tiny, pairs.tokens, np.arange(16), "cpu")
    pairs.rm_family = torch.zeros(3, 16)
    pairs.rm_family[1, :8], pairs.rm_family[2, :8] = 5.0, -5.0  # (K, 2N): chosen rows first
    pairs.pool = rddpo.tokenize(tokenizer, PROMPTS, RESPONSES, 64)
    pairs.pool_ref_logps = rddpo.all_logps(tiny, pairs.pool, np.arange(3), "cpu")
    cfg = experiment.Config(steps=4, batch_size=4, lr=1e-4, log_every=10, eval_points=1)
    _, shares = rddpo.train_policy(tiny, pairs, "e-dpo", cfg, seed=0, device="cpu", log=lambda *a: None)
    assert shares == [1.0, 0.0, 0.0]


def test_train_policy_calls_the_checkpoint_at_evenly_spaced_steps_the_last_at_the_end(tiny, tokenizer):
    """steps 6, eval_points 2: steps 3 and 6; eval_points 3: 2, 4, 6."""
    pairs = easy_pairs(tokenizer)
    pairs.ref_logps = rddpo.all_logps(tiny, pairs.tokens, np.arange(16), "cpu")
    for points, want in ((2, [3, 6]), (3, [2, 4, 6])):
        seen = []
        cfg = rddpo.Knobs(steps=6, batch_size=4, eval_points=points, log_every=10)
        rddpo.train_policy(tiny, pairs, "ipo", cfg, 0, "cpu", log=lambda *a: None,
                           checkpoint=lambda step, policy: seen.append(step))
        assert seen == want


def recorded_rows(monkeypatch, what):
    """the rows that train_policy passes to batch_tensors for the pairs' tokens ("pairs", 16 rows) or for the
    pool's ("pool")."""
    seen, real = [], rddpo.batch_tensors
    def spy(tokens, rows, device):
        if (tokens.input_ids.shape[0] == 16) == (what == "pairs"):
            seen.append(np.asarray(rows))
        return real(tokens, rows, device)
    monkeypatch.setattr(rddpo, "batch_tensors", spy)
    return seen


def pooled_pairs(tiny, tokenizer, labelled):
    """8 easy pairs of which the first `labelled` carry labels, with scores for d-DPO and e-DPO and a pool of 6."""
    pairs = easy_pairs(tokenizer)
    pairs.labelled = labelled
    pairs.ref_logps = rddpo.all_logps(tiny, pairs.tokens, np.arange(16), "cpu")
    pairs.rm_plain, pairs.rm_family = torch.zeros(16), torch.zeros(2, 16)
    pairs.pool = rddpo.tokenize(tokenizer, PROMPTS * 2, RESPONSES * 2, 64)
    pairs.pool_ref_logps = rddpo.all_logps(tiny, pairs.pool, np.arange(6), "cpu")
    return pairs


@pytest.mark.parametrize("method", ["dpo", "d-dpo", "e-dpo", "p-dpo"])
def test_only_distillation_trains_on_the_unlabelled_pairs(tiny, tokenizer, monkeypatch, method):
    """4 of 8 pairs labelled, 6 steps of 3 pairs: DPO and p-DPO draw only pairs 0-3 (rows 0-3 and 8-11); d-DPO
    and e-DPO draw from all 8 and, over 18 draws, reach the unlabelled ones."""
    pairs = pooled_pairs(tiny, tokenizer, 4)
    seen = recorded_rows(monkeypatch, "pairs")
    cfg = rddpo.Knobs(steps=6, batch_size=3, log_every=100, eval_points=1)
    rddpo.train_policy(tiny, pairs, method, cfg, 0, "cpu", log=lambda *a: None)
    pairs_drawn = np.concatenate([rows[:3] for rows in seen])  # the chosen rows: the pairs' indices
    assert len(seen) == 6 and all((rows[3:] == rows[:3] + 8).all() for rows in seen)
    if method in ("d-dpo", "e-dpo"):
        assert pairs_drawn.max() >= 4
    else:
        assert pairs_drawn.max() < 4


@pytest.mark.parametrize("method", ["e-dpo", "p-dpo"])
def test_each_pool_response_is_used_once_in_a_random_order(tiny, tokenizer, monkeypatch, method):
    """a pool of 6, 2 steps of 3: the steps take 6 distinct rows, a permutation of 0-5 that is not 0, 1, ... 5."""
    pairs = pooled_pairs(tiny, tokenizer, 8)
    seen = recorded_rows(monkeypatch, "pool")
    cfg = rddpo.Knobs(steps=2, batch_size=3, log_every=100, eval_points=1)
    rddpo.train_policy(tiny, pairs, method, cfg, 0, "cpu", log=lambda *a: None)
    order = np.concatenate(seen)
    assert sorted(order.tolist()) == list(range(6)) and order.tolist() != list(range(6))


@pytest.mark.parametrize("method", ["e-dpo", "p-dpo"])
def test_pool_batch_takes_m_pool_rows_per_step_from_a_pool_of_steps_times_m(tiny, tokenizer, monkeypatch, method):
    """--pool-batch 2 at batch size 3: the pool holds steps x 2 responses, and each of 3 steps takes 2 rows of it,
    6 distinct rows in all; without the flag, M is the batch size (rddpo.pool_rows_per_step)."""
    cfg = experiment.Config(steps=3, batch_size=3, max_new_tokens=8, pool_batch=2, log_every=100, eval_points=1,
                            lr=1e-4)
    pool, _ = experiment.kl_pool(tiny, tokenizer, PROMPTS[:2], cfg, seed=0, device="cpu")
    assert pool.input_ids.shape[0] == 6
    assert rddpo.pool_rows_per_step(3) == 3 and rddpo.pool_rows_per_step(3, 2) == 2
    pairs = pooled_pairs(tiny, tokenizer, 8)
    seen = recorded_rows(monkeypatch, "pool")
    rddpo.train_policy(tiny, pairs, method, cfg, 0, "cpu", log=lambda *a: None)
    assert [len(rows) for rows in seen] == [2, 2, 2] and sorted(np.concatenate(seen).tolist()) == list(range(6))


# -----------------------------------------------------------------------------
# a model one machine can hold: LoRA, micro-batches, reward heads on frozen features


def test_a_fresh_lora_policy_is_pi_ref_exactly_and_its_adapters_off_stay_pi_ref_after_training(tiny, tokenizer):
    """peft starts LoRA's B at 0, so at step 0 the policy's log-probs equal pi_ref's bit for bit and its implicit
    reward is exactly 0; after steps that move it, AdaptersOff(policy) still gives pi_ref's log-probs exactly, only
    the adapters trained, and free_policy hands back the reference object with every weight as it was."""
    reference = copy.deepcopy(tiny)
    tokens, rows = rddpo.tokenize(tokenizer, PROMPTS, RESPONSES, 64), np.arange(3)
    ref_logps, before = rddpo.all_logps(reference, tokens, rows, "cpu"), copy.deepcopy(reference.state_dict())
    policy = rddpo.new_policy(reference, 4, "cpu")
    start = rddpo.logps_of(policy, tokens, rows, "cpu")
    assert torch.equal(start.detach(), ref_logps)
    assert torch.equal(rddpo.implicit_reward(start.detach(), ref_logps, 0.1), torch.zeros(3))
    trained = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = -rddpo.logps_of(policy, tokens, rows, "cpu").sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (rddpo.all_logps(policy, tokens, rows, "cpu") - ref_logps).abs().min() > 0.1
    assert torch.equal(rddpo.all_logps(rddpo.AdaptersOff(policy), tokens, rows, "cpu"), ref_logps)
    assert rddpo.free_policy(policy) is reference and rddpo.free_policy(copy.deepcopy(tiny)) is None
    assert set(reference.state_dict()) == set(before)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in reference.parameters())


def test_train_policy_with_lora_trains_only_adapters_and_leaves_the_reference_as_it_was(tiny, tokenizer):
    """knobs.lora: the dpo margin on easy pairs grows as with full training, the trained policy's adapters-off
    log-probs are the reference's, and after free_policy the reference's weights are those it started with."""
    reference = copy.deepcopy(tiny)
    pairs = easy_pairs(tokenizer)
    pairs.ref_logps = rddpo.all_logps(reference, pairs.tokens, np.arange(16), "cpu")
    before, logged = copy.deepcopy(reference.state_dict()), []
    knobs = rddpo.Knobs(steps=4, batch_size=4, lr=1e-2, log_every=1, eval_points=1, lora=4)
    policy, _ = rddpo.train_policy(reference, pairs, "dpo", knobs, 0, "cpu", log=lambda step, m: logged.append(m))
    assert abs(logged[0]["rewards/margins"]) < 1e-6 < logged[-1]["rewards/margins"]
    assert torch.equal(rddpo.all_logps(rddpo.AdaptersOff(policy), pairs.tokens, np.arange(16), "cpu"), pairs.ref_logps)
    rddpo.free_policy(policy)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("method", ["dpo", "e-dpo", "p-dpo"])
def test_micro_batches_give_one_big_batchs_gradient(tiny, tokenizer, method):
    """one step's loss and gradient with micro_batch 3 (rows recomputed in the backward pass, 3 at a time) equal
    those of the whole batch of 2B = 8 rows and M = 4 pool rows at once, up to float rounding (measured: largest
    gradient difference 2.4e-7 of the largest gradient on a 2-core AMD EPYC at 1 and 2 threads, the loss equal; the
    bound is 400 times that). e-DPO's min over members couples the pairs, so a
    loss summed micro-batch by micro-batch would get it wrong; this does not."""
    pairs = pooled_pairs(tiny, tokenizer, 8)
    pairs.rm_family = torch.tensor([[0.5] * 8 + [0.0] * 8, [2.0] * 8 + [-1.0] * 8])  # (K, 2N): two members
    rows, pool_rows = np.array([0, 3, 5, 6, 8, 11, 13, 14]), np.array([1, 4, 0, 2])
    grads = []
    for mb in (None, 3):
        policy = sharpened(tiny)
        lp = rddpo.logps_of(policy, pairs.tokens, rows, "cpu", mb)  # (2B,)
        pool = rddpo.logps_of(policy, pairs.pool, pool_rows, "cpu", mb)  # (M,)
        loss = rddpo.policy_loss(method, lp, rows, pairs, 0.1, 0.5, pool, pool_rows)
        loss.backward()
        grads.append((loss.item(), torch.cat([p.grad.flatten() for p in policy.parameters()])))
    (whole, g), (micro, h) = grads
    assert micro == pytest.approx(whole, rel=1e-5) and g.abs().max() > 0
    assert (g - h).abs().max() <= 1e-4 * g.abs().max()


@pytest.mark.parametrize("shared", [False, True], ids=["copy", "adapters"])
def test_reward_model_micro_batches_give_one_big_batchs_gradient(tiny, tokenizer, shared, monkeypatch):
    """one reward-model step with micro_batch 2 (one pair's two rows through the model at a time, each part's loss
    times its share of the batch) has the gradient of the whole batch of 4 pairs (8 rows) at once, up to float
    rounding, for a trained copy and for adapters on the reference (a part's loss left unweighted would make it 4
    times too large). the head starts random here, so that the transformer's gradients are not all 0 (measured:
    largest difference 1.4e-7 and 1.5e-7 of the largest gradient, on a 2-core AMD EPYC at 1 and 2 threads; the
    bound is about 650 times that)."""
    rng = np.random.default_rng(1)
    pos, neg = task.POSITIVE[:5], task.NEGATIVE[:5]
    chosen = [f" the plot was {pos[rng.integers(5)]} ." for _ in range(8)]
    rejected = [f" the acting was {neg[rng.integers(5)]} and slow ." for _ in range(8)]
    pairs = rddpo.tokenize_pairs(tokenizer, (PROMPTS * 8)[:8], chosen, rejected, 64)
    seen, real = [], rddpo.batch_tensors
    monkeypatch.setattr(rddpo, "batch_tensors", lambda tokens, rows, device: seen.append(len(rows)) or real(
        tokens, rows, device))

    class RandomHead(rddpo.RewardModel):  # a zero head (the default) would leave every other gradient at 0
        def __init__(self, lm, frozen=False):
            super().__init__(lm, frozen)
            with torch.no_grad():
                self.head.weight.normal_(generator=torch.Generator().manual_seed(0))
                self.head.bias.fill_(0.3)
    monkeypatch.setattr(rddpo, "RewardModel", RandomHead)
    grads = []
    for mb in (None, 2):
        seen.clear()
        reference = copy.deepcopy(tiny)
        with rddpo.lora_adapters(reference, 4 if shared else 0, 0):
            rm = rddpo.train_reward_model(reference, pairs, np.arange(8), steps=1, lr=1e-3, batch_size=4, seed=0,
                                          device="cpu", desc="rm", shared=shared, micro_batch=mb)
            body = [q.grad.flatten() for name, q in rm.named_parameters() if q.grad is not None and "head" not in name]
            assert body and torch.cat(body).abs().max() > 0  # the transformer's (or its adapters') gradient too
            grads.append(torch.cat([q.grad.flatten() for q in rm.parameters() if q.grad is not None]))
        assert seen == ([8] if mb is None else [2, 2, 2, 2])  # rows through the model at once
    g, h = grads
    assert (g - h).abs().max() <= 1e-4 * g.abs().max()


def test_reward_scores_train_every_reward_model_at_the_runs_micro_batch(tiny, tokenizer, monkeypatch):
    """reward_scores hands cfg.micro_batch to the plain model and to each of the K members it trains."""
    pairs, seen, real = easy_pairs(tokenizer), [], rddpo.train_reward_model
    pairs.labelled = 8
    monkeypatch.setattr(rddpo, "train_reward_model", lambda *a, **k: seen.append(k["micro_batch"]) or real(*a, **k))
    cfg = experiment.Config(rm_steps=1, batch_size=4, ensemble=2, reward_models="copies", micro_batch=2)
    rddpo.reward_scores(tiny, pairs, lambda rm, scores: {}, cfg, 0, "cpu", np.zeros(8, dtype=bool))
    assert seen == [2, 2, 2]


def test_reward_heads_on_frozen_features_learn_to_rank_and_leave_the_reference_untouched(tiny, tokenizer):
    """reward_models "heads": the features of every row are computed once (the reference's hidden state at the last real
    token, the same as RewardModel(frozen=True).features); only a head trains, so the reference's weights stay as
    they were; the head ranks every easy pair; its rewards from the features are the model's own on the tokens."""
    reference, pairs = copy.deepcopy(tiny), easy_pairs(tokenizer)
    before = copy.deepcopy(reference.state_dict())
    features = rddpo.last_features(reference, pairs.tokens, "cpu")  # (16, H)
    assert features.shape == (16, 32)
    rm = rddpo.train_reward_model(reference, pairs, np.arange(8), steps=150, lr=3e-2, batch_size=4, seed=0,
                                  device="cpu", desc="rm", features=features)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in before.items())
    assert rm.backbone is reference.base_model and [n for n, _ in rm.named_parameters() if "head" in n]
    scores = rddpo.score(rm, pairs.tokens, "cpu")  # (16,)
    assert torch.allclose(scores, rm.reward(features).detach(), atol=1e-5)
    assert (scores[:8] > scores[8:]).all()


def test_reward_adapters_learn_to_rank_inside_lora_adapters_and_leave_the_reference_as_it_was(tiny, tokenizer):
    """reward_models "adapters": inside lora_adapters the reference's own transformer carries LoRA adapters, which
    train with the head (every other weight frozen); the reward model ranks every easy pair; after, the reference
    has no adapter left, every weight as it was and trainable, and the adapters' seed decides their start."""
    reference, pairs = copy.deepcopy(tiny), easy_pairs(tokenizer)
    before = copy.deepcopy(reference.state_dict())
    with rddpo.lora_adapters(reference, 4, seed=0):
        lora = {n: p.detach().clone() for n, p in reference.named_parameters() if "lora_" in n}
        assert lora and all(p.requires_grad == ("lora_" in n) for n, p in reference.named_parameters())
        rm = rddpo.train_reward_model(reference, pairs, np.arange(8), steps=60, lr=3e-2, batch_size=4, seed=0,
                                      device="cpu", desc="rm", shared=True)
        assert rm.backbone is reference.base_model
        assert any(not torch.equal(p, lora[n]) for n, p in reference.named_parameters() if "lora_" in n)
        assert sorted(n for n, p in rm.named_parameters() if p.requires_grad and "lora_" not in n) == [
            "head.bias", "head.weight"]
        scores = rddpo.score(rm, pairs.tokens, "cpu")  # (16,)
        assert (scores[:8] > scores[8:]).all()
    assert sorted(reference.state_dict()) == sorted(before)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in reference.parameters())
    with rddpo.lora_adapters(reference, 4, seed=0):
        assert all(torch.equal(p, lora[n]) for n, p in reference.named_parameters() if "lora_" in n)


def test_a_loop_of_a_minute_or_more_says_how_long_it_will_take_from_its_first_steps(monkeypatch, capsys):
    """progress times steps 2-4 (the first warms up) and, when steps x that time is 60 s or more, prints one line;
    a shorter loop prints nothing. the clock is faked: read after step 1 and after step 4, 3 x 2 s apart, then
    3 x 0.5 s."""
    for per, steps, says in ((2.0, 40, "train dpo: 40 steps, about 80 s on this device (2 s a step)"),
                             (0.5, 40, None)):
        clock = iter([10.0, 10.0 + 3 * per])
        monkeypatch.setattr(rddpo.time, "perf_counter", lambda: next(clock))
        assert list(rddpo.progress(range(steps), "train dpo")) == list(range(steps))
        out = capsys.readouterr()
        printed = [line for line in (out.out + out.err).splitlines() if "steps, about" in line]
        assert printed == ([says] if says else [])
    assert (rddpo.duration(45), rddpo.duration(700), rddpo.duration(11400)) == ("45 s", "12 min", "3 h 10 min")


# -----------------------------------------------------------------------------
# the file itself


def test_rddpo_py_keeps_to_the_style_guides_limits():
    """at most 700 lines, none over 100 characters, and no function longer than 40 lines (the style guide: the
    method in one readable file)."""
    import ast
    source = open(os.path.join(HERE, "rddpo.py")).read()
    assert len(source.splitlines()) <= 700
    assert [n for n, line in enumerate(source.splitlines(), 1) if len(line) > 100] == []
    long = [(f.name, f.end_lineno - f.lineno + 1) for f in ast.walk(ast.parse(source))
            if isinstance(f, ast.FunctionDef) and f.end_lineno - f.lineno + 1 > 40]
    assert not long
