"""
Solutions to notebooks/exercises/exercises.py, written out line by line. Try the exercises first.

    python notebooks/exercises/check.py notebooks/exercises/solutions.py   # every line says passed

Each solution is the formula of its exercise's docstring and nothing more; rddpo.py and
toy_bandit.py compute the same things (the checker compares them), factored differently.
Shapes: B pairs, T tokens, V vocab, K reward models, M pool responses, n arms of the bandit.
"""
import numpy as np
import torch
import torch.nn.functional as F


# -----------------------------------------------------------------------------
# 1. the implicit reward


def implicit_reward(policy_logps, reference_logps, beta):
    """1. r_theta(x, y) = beta * (log pi_theta(y|x) - log pi_ref(y|x))"""
    return beta * (policy_logps - reference_logps)  # (B,)


# -----------------------------------------------------------------------------
# 2. the losses


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps, beta):
    """2. mean( -log sigma(beta h) )"""
    h = ((policy_chosen_logps - reference_chosen_logps)
         - (policy_rejected_logps - reference_rejected_logps))  # (B,)
    # logsigmoid, not log(sigmoid(.)): sigmoid rounds to 0 for a margin below about -700
    return -F.logsigmoid(beta * h).mean()


def ipo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps, beta):
    """3. mean( (h - 1 / (2 beta))^2 )"""
    h = ((policy_chosen_logps - reference_chosen_logps)
         - (policy_rejected_logps - reference_rejected_logps))  # (B,)
    return ((h - 1 / (2 * beta)) ** 2).mean()


def distill_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                 reference_rejected_logps, rm_chosen_rewards, rm_rejected_rewards, beta):
    """4. mean( (Delta r - beta h)^2 )"""
    h = ((policy_chosen_logps - reference_chosen_logps)
         - (policy_rejected_logps - reference_rejected_logps))  # (B,)
    delta_r = rm_chosen_rewards - rm_rejected_rewards  # (B,)
    return ((delta_r - beta * h) ** 2).mean()


def forward_kl_estimate(policy_pool_logps, reference_pool_logps):
    """5. KL(pi_ref || pi) ~ mean over y ~ pi_ref of log pi_ref(y) - log pi(y)"""
    # the samples come from pi_ref, so a plain mean of the log-ratio estimates the forward KL
    return (reference_pool_logps - policy_pool_logps).mean()


def pessimistic_distill_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                             reference_rejected_logps, rm_chosen_rewards, rm_rejected_rewards, beta,
                             gamma, policy_pool_logps, reference_pool_logps):
    """6. min_k mean_b( (Delta r_kb - beta h_b)^2 ) + gamma * FKL"""
    h = ((policy_chosen_logps - reference_chosen_logps)
         - (policy_rejected_logps - reference_rejected_logps))  # (B,)
    delta_r = rm_chosen_rewards - rm_rejected_rewards  # (K, B)
    per_member = ((delta_r - beta * h) ** 2).mean(-1)  # (K,): h broadcasts over the members
    fkl = (reference_pool_logps - policy_pool_logps).mean()
    # the min over whole-batch losses: one member answers for the batch
    return per_member.min() + gamma * fkl


def pessimistic_dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps, beta, gamma, policy_pool_logps,
                         reference_pool_logps):
    """7. mean( -log sigma(beta h) ) + gamma * FKL"""
    h = ((policy_chosen_logps - reference_chosen_logps)
         - (policy_rejected_logps - reference_rejected_logps))  # (B,)
    fkl = (reference_pool_logps - policy_pool_logps).mean()
    return -F.logsigmoid(beta * h).mean() + gamma * fkl


# -----------------------------------------------------------------------------
# 3. the sequence log-probability


def sequence_logps(logits, input_ids, response_mask):
    """8. sum over t of m_t * log softmax(logits[:, t-1])[input_ids[:, t]]"""
    logps = logits[:, :-1].log_softmax(-1)  # (B, T-1, V): position t-1 predicts token t
    targets = input_ids[:, 1:]  # (B, T-1): the tokens predicted
    token_logps = logps.gather(-1, targets[:, :, None]).squeeze(-1)  # (B, T-1)
    on_response = response_mask[:, 1:].bool()  # (B, T-1): the mask of the predicted tokens
    # where, not a product: a nan at a padded position would survive nan * 0
    return torch.where(on_response, token_logps, 0.0).sum(-1)  # (B,)


# -----------------------------------------------------------------------------
# 4. the bandit, in numpy


def optimal_policy(pi_ref, reward, beta):
    """9. pi*_r = pi_ref exp(r / beta) / Z_r"""
    z = np.log(pi_ref) + reward / beta  # (n,): log of the unnormalised pi*
    z = z - z.max()  # the same shift in every arm cancels in the ratio; exp cannot overflow
    unnormalised = np.exp(z)  # (n,)
    return unnormalised / unnormalised.sum()


def dpo_gradient(logits, pi_ref, winner, loser, beta):
    """10. d/d logits of -log sigma(beta h) = -beta sigma(-beta h) (e_w - e_l)"""
    shifted = logits - logits.max()  # (n,): the shift cancels in the softmax; exp cannot overflow
    log_pi = shifted - np.log(np.exp(shifted).sum())  # (n,): log softmax
    h = (log_pi[winner] - np.log(pi_ref[winner])) - (log_pi[loser] - np.log(pi_ref[loser]))
    # chain rule: d(-log sigma(z))/dz = -sigma(-z), dz/dh = beta, and dh/d logits = e_w - e_l
    # (log pi(y) = logits[y] - log Z, and log Z cancels in h)
    dl_dh = -beta * np.exp(-np.logaddexp(0.0, beta * h))  # -beta sigma(-beta h), for any h
    grad = np.zeros_like(logits)  # (n,)
    grad[winner] += dl_dh
    grad[loser] -= dl_dh
    return grad
