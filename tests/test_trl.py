"""tests for rddpo_trl.py: the TRL trainer computes rddpo.py's step. each test name states the property.
run with `OMP_NUM_THREADS=1 python -m pytest test_trl.py -q` (the slow ones launch processes: -m "not slow" skips them)."""
import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # never wait on the network
import rddpo  # noqa: E402
from harness import data, experiment, models  # noqa: E402
import rddpo_trl  # noqa: E402
from harness.task import TITLES, build_tokenizer, make_prompts, make_review  # noqa: E402
from test_data import chat_rows, model_folder, word_chat_tokenizer, write_jsonl  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project's root
B, N, K, MAX_LENGTH = 4, 6, 3, 64  # pairs per step, pairs in the data, reward models, tokens


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def reference(tokenizer):
    """a small gpt-2 with random weights: pi_ref."""
    torch.manual_seed(0)
    return models.build_tiny_gpt2(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=MAX_LENGTH).eval()


@pytest.fixture(scope="module")
def texts():
    """N pairs of the task's prompts and reviews, of different lengths (so padding matters)."""
    rng = np.random.default_rng(0)
    prompts = make_prompts(rng, N, TITLES)
    return prompts, [make_review(rng) for _ in prompts], [make_review(rng) for _ in prompts]


@pytest.fixture(scope="module")
def chat():
    """conversational pairs: a tokenizer with a ChatML-like chat template (test_data.word_chat_tokenizer, whose turns
    end in <|im_end|>, not eos), a small gpt-2 with random weights on it, N pairs of the task's prompts and reviews as
    messages (one and two turns), and their text as data.read_pairs renders them -> (tokenizer, pi_ref, rows, texts)"""
    tok = word_chat_tokenizer()
    torch.manual_seed(0)
    reference = models.build_tiny_gpt2(tok, n_layer=2, n_embd=32, n_head=2, n_positions=MAX_LENGTH).eval()
    rows = chat_rows(N, seed=2)
    pairs = [data.rendered_pair(tok, data.read_row(r, f"row {i}"), f"row {i}") for i, r in enumerate(rows)]
    return tok, reference, rows, tuple(list(x) for x in zip(*pairs))


@pytest.fixture(scope="module")
def scores():
    """(K, 2N) reward scores: the chosen rows, then the rejected rows, as rddpo.Pairs.rm_family keeps them."""
    return torch.randn(K, 2 * N, generator=torch.Generator().manual_seed(1))


def text_rows(texts):
    return [dict(prompt=p, chosen=c, rejected=r) for p, c, r in zip(*texts)]


def scored_dataset(rows, scores):
    """rows (dicts of prompt, chosen, rejected) with the scores (K, 2N) as the columns rm_chosen, rm_rejected."""
    return [dict(row, rm_chosen=scores[:, i].tolist(), rm_rejected=scores[:, N + i].tolist())
            for i, row in enumerate(rows)]


def trl_args(tmp_path, method, **kw):
    return rddpo_trl.DistilledDPOConfig(output_dir=str(tmp_path), method=method, gamma=0.3, beta=0.2, max_length=MAX_LENGTH,
                                        per_device_train_batch_size=B, report_to="none", use_cpu=True, seed=0, **kw)


def moved(model, scale=0.05, seed=3):
    """a policy away from the reference, so that h, the forward-KL term and their gradients are all nonzero."""
    torch.manual_seed(seed)
    policy = copy.deepcopy(model)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(scale * torch.randn_like(p))
    return policy


# -----------------------------------------------------------------------------
# the same step as rddpo.py


def moved_adapters(model, seed=5, scale=0.05):
    """a LoRA policy away from pi_ref: every adapter weight set to seeded noise, by name (A and B both nonzero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("method,pool_batch,lora,conversational", [
    ("d-dpo", None, 0, False), ("e-dpo", None, 0, False), ("p-dpo", None, 0, False), ("e-dpo", B // 2, 0, False),
    ("p-dpo", 1, 0, False), ("e-dpo", None, 4, False), ("d-dpo", None, 4, False), ("e-dpo", None, 0, True),
    ("d-dpo", None, 4, True)])
def test_trainer_loss_and_gradients_equal_rddpo_training_step(method, pool_batch, lora, conversational, tokenizer,
                                                              reference, texts, chat, scores, tmp_path):
    """on one tiny gpt-2, one batch (the first B pairs), the same scores and the same M pool rows (--pool-batch M,
    or its default), the trainer's compute_loss and its gradients equal rddpo.train_policy's step (forward,
    sequence_logps, pool_batch, policy_loss) to 1e-5. the policy is moved off the reference, so a swapped reference,
    a flipped sign, a missing beta or gamma, a lost eos or prompt token, or other pool rows all change the numbers.
    with lora, both are LoRA policies (rddpo.new_policy; TRL's peft_config, no ref_model) with the same adapter
    weights, moved off zero: pi_ref is then the policy with its adapters off on both sides, and the gradients are
    the adapters'. conversational: the trainer is given the pairs as messages, which TRL renders through the chat
    template, and rddpo.py the text data.read_pairs renders (the pool drawn on those prompts): an eos after the
    template's closing, or a prompt rendered otherwise, changes the numbers."""
    data_rows = text_rows(texts)
    if conversational:
        tokenizer, reference, data_rows, texts = chat
    k, M = 1 if method == "d-dpo" else K, rddpo.pool_rows_per_step(B, pool_batch)
    policy = moved_adapters(rddpo.new_policy(copy.deepcopy(reference), lora, "cpu")) if lora else moved(reference)
    # rddpo.py's side, as experiment.prepare and rddpo.train_policy build it
    pairs = rddpo.tokenize_pairs(tokenizer, *texts, MAX_LENGTH)
    pairs.ref_logps = rddpo.all_logps(reference, pairs.tokens, np.arange(2 * N), "cpu")  # (2N,)
    pairs.rm_plain, pairs.rm_family = scores[0], scores[:k]  # (2N,), (k, 2N)
    cfg = experiment.Config(steps=2, batch_size=B, max_new_tokens=20, max_length=MAX_LENGTH, pool_batch=pool_batch)
    pairs.pool, pairs.pool_ref_logps = experiment.kl_pool(reference, tokenizer, texts[0], cfg, 0, "cpu")  # (2M, T)
    assert len(pairs.pool_ref_logps) == 2 * M
    ours = rddpo.without_dropout(copy.deepcopy(policy)).train()
    rows = np.concatenate([np.arange(B), np.arange(B) + N])  # (2B,): the first B pairs
    ids, mask, resp = rddpo.batch_tensors(pairs.tokens, rows, "cpu")
    order = np.random.default_rng([0, 99]).permutation(len(pairs.pool_ref_logps))  # train_policy's, seed 0
    pool_rows = order[:M]  # (M,): train_policy's pool rows at step 1
    pool_logps = rddpo.logps_of(ours, pairs.pool, pool_rows, "cpu")  # (M,)
    expected = rddpo.policy_loss(method, rddpo.sequence_logps(rddpo.forward(ours, ids, mask), ids, resp), rows, pairs,
                                 0.2, 0.3, pool_logps, pool_rows)
    expected.backward()
    # the trainer's side: TRL tokenises the texts and precomputes the reference's log-probs
    pool = rddpo_trl.sample_pool(reference, tokenizer, texts[0], 2 * M, 20, MAX_LENGTH, 0, "cpu")
    trainer = rddpo_trl.DistilledDPOTrainer(copy.deepcopy(reference) if lora else policy,
                                            ref_model=None if lora else copy.deepcopy(reference),
                                            peft_config=rddpo.lora_config(lora) if lora else None,
                                            args=trl_args(tmp_path, method, pool_batch=pool_batch),
                                            train_dataset=scored_dataset(data_rows, scores[:k]),
                                            processing_class=tokenizer,
                                            pool_dataset=None if method == "d-dpo" else pool)
    if lora:  # TRL's reference log-probs and the pool's were taken with the fresh adapters; now move them as ours
        torch.testing.assert_close(torch.tensor(trainer.train_dataset["ref_chosen_logps"][:B]),
                                   pairs.ref_logps[:B], atol=1e-5, rtol=0)
        moved_adapters(trainer.model)
    loss = trainer.compute_loss(trainer.model, rddpo_trl.step_batch(trainer, B))
    loss.backward()
    assert abs(loss.item() - expected.item()) < 1e-5 and abs(expected.item()) > 1e-3
    grads = {name: p for name, p in ours.named_parameters() if p.requires_grad}
    trained = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained.keys() == grads.keys() and (not lora or all("lora_" in name for name in trained))
    for name, p in trained.items():
        torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-5, rtol=0, msg=name)
    assert max(p.grad.abs().max().item() for p in trained.values()) > 1e-3


def test_adapters_off_is_pi_ref_inside_a_trained_lora_policy_and_nothing_for_a_plain_model(tokenizer, reference, texts):
    """the pool's reference log-probs under LoRA: with the adapters moved, the policy's log-probs differ from pi_ref's,
    and inside adapters_off they are pi_ref's again (the same weights, adapters disabled); a plain model is as it is."""
    tokens = rddpo.tokenize_pairs(tokenizer, *texts, MAX_LENGTH).tokens
    rows = np.arange(2 * N)
    ref = rddpo.all_logps(reference, tokens, rows, "cpu")  # (2N,)
    policy = moved_adapters(rddpo.new_policy(copy.deepcopy(reference), 4, "cpu")).eval()
    assert (rddpo.all_logps(policy, tokens, rows, "cpu") - ref).abs().max() > 1e-2
    with rddpo_trl.adapters_off(policy):
        torch.testing.assert_close(rddpo.all_logps(policy, tokens, rows, "cpu"), ref, atol=1e-5, rtol=0)
    assert (rddpo.all_logps(policy, tokens, rows, "cpu") - ref).abs().max() > 1e-2  # on again after
    with rddpo_trl.adapters_off(reference), rddpo_trl.adapters_off(None):
        torch.testing.assert_close(rddpo.all_logps(reference, tokens, rows, "cpu"), ref, atol=0, rtol=0)


def test_sample_pool_draws_exactly_rddpo_kl_pool_rows(tokenizer, reference, texts):
    """same seed, same prompts in turn, same sampler: the pool's token ids are experiment.kl_pool's, row by row,
    prompt and response (with its eos) apart."""
    cfg = experiment.Config(steps=2, batch_size=3, max_new_tokens=20, max_length=MAX_LENGTH)
    tokens, _ = experiment.kl_pool(reference, tokenizer, texts[0], cfg, 5, "cpu")
    pool = rddpo_trl.pool_tokens(rddpo_trl.sample_pool(reference, tokenizer, texts[0], 6, 20, MAX_LENGTH, 5, "cpu"),
                                 tokenizer, MAX_LENGTH)
    for a, b in zip((tokens.input_ids, tokens.attention_mask, tokens.response_mask),
                    (pool.input_ids, pool.attention_mask, pool.response_mask)):
        assert torch.equal(a, b)


def test_pool_rows_follow_rddpo_pool_batch_and_split_between_processes():
    """one process: call c takes positions cB to (c+1)B of the order, the rows rddpo.Bookkeeping.rows takes at step c + 1. two
    processes: at each call they take the next 2B positions, rank 0 the first B, so no row is used twice; evaluation
    does not advance."""
    def trainer(rank, world):
        acc = type("Acc", (), dict(num_processes=world, process_index=rank))
        return type("T", (), dict(pool_calls=0, accelerator=acc, pool_order=np.arange(100)[::-1].copy()))()
    one = trainer(0, 1)
    assert rddpo_trl.DistilledDPOTrainer.pool_rows(one, 4, advance=False).tolist() == [99, 98, 97, 96]
    steps = [rddpo_trl.DistilledDPOTrainer.pool_rows(one, 4, advance=True).tolist() for _ in range(2)]
    assert steps == [np.take(one.pool_order, np.arange((s - 1) * 4, s * 4)).tolist() for s in (1, 2)]
    two = [trainer(r, 2) for r in (0, 1)]
    drawn = [rddpo_trl.DistilledDPOTrainer.pool_rows(t, 3, advance=True).tolist() for _ in range(2) for t in two]
    assert drawn == [[99, 98, 97], [96, 95, 94], [93, 92, 91], [90, 89, 88]]


# -----------------------------------------------------------------------------
# scoring once, as columns


def test_add_reward_scores_are_rddpo_scores_per_member_chosen_and_rejected(tokenizer, reference, texts):
    """rm_chosen[i][k] and rm_rejected[i][k] are member k's rddpo.score of pair i's chosen and rejected rows
    (rddpo.tokenize_pairs: prompt, response, eos), in the order of the members; a transformers sequence classifier
    given with its tokenizer scores each text as it would alone (padding in the batch changes nothing)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification
    torch.manual_seed(2)
    members = [rddpo.RewardModel(reference) for _ in range(2)]
    for rm in members:
        torch.nn.init.normal_(rm.head.weight)
    hf = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tokenizer), n_positions=MAX_LENGTH, n_embd=16,
                                                  n_layer=1, n_head=2, num_labels=1, pad_token_id=0)).eval()
    data = rddpo_trl.add_reward_scores([dict(prompt=p, chosen=c, rejected=r) for p, c, r in zip(*texts)],
                                       members + [(hf, tokenizer)], tokenizer, MAX_LENGTH, batch_size=4)
    pairs = rddpo.tokenize_pairs(tokenizer, *texts, MAX_LENGTH)
    for k, rm in enumerate(members):
        chosen, rejected = rddpo.score(rm, pairs.tokens, "cpu").chunk(2)  # (N,), (N,)
        assert torch.allclose(torch.tensor([row[k] for row in data["rm_chosen"]]), chosen, atol=1e-6)
        assert torch.allclose(torch.tensor([row[k] for row in data["rm_rejected"]]), rejected, atol=1e-6)
    alone = hf(**tokenizer(texts[0][3] + texts[2][3], return_tensors="pt")).logits[0, 0].item()
    assert abs(data[3]["rm_rejected"][2] - alone) < 1e-5 and len(data[0]["rm_chosen"]) == 3


def test_conversational_and_implicit_rows_are_scored_in_the_chat_template_as_rddpo_scores_them(chat):
    """add_reward_scores on conversational rows without a prompt column: as_dataset makes the prompt explicit (the
    leading messages both share, as TRL's extract_prompt), and each member's score of pair i is its rddpo.score of the
    pair as data.read_pairs renders it (the template's closing, no eos). a tokenizer without a chat template, or rows
    sharing no opening: one-line errors."""
    from trl.data_utils import extract_prompt
    tok, reference, rows, texts = chat
    implicit = [dict(chosen=r["prompt"] + r["chosen"], rejected=r["prompt"] + r["rejected"]) for r in rows]
    explicit = rddpo_trl.as_dataset(implicit)
    assert [dict(zip(("prompt", "chosen", "rejected"), (r[c] for c in ("prompt", "chosen", "rejected"))))
            for r in explicit] == [extract_prompt(r) for r in implicit] == rows
    torch.manual_seed(4)
    rm = rddpo.RewardModel(reference)
    torch.nn.init.normal_(rm.head.weight)
    scored = rddpo_trl.add_reward_scores(implicit, [rm], tok, MAX_LENGTH, batch_size=4)
    tokens = rddpo.tokenize_pairs(tok, *texts, MAX_LENGTH).tokens
    chosen, rejected = rddpo.score(rm, tokens, "cpu").chunk(2)  # (N,) each
    assert torch.allclose(torch.tensor(scored["rm_chosen"])[:, 0], chosen, atol=1e-6)
    assert torch.allclose(torch.tensor(scored["rm_rejected"])[:, 0], rejected, atol=1e-6)
    with pytest.raises(ValueError, match="no chat template"):
        rddpo_trl.add_reward_scores(implicit, [rm], build_tokenizer(), MAX_LENGTH)
    with pytest.raises(ValueError, match="row 1: chosen and rejected share no opening"):
        rddpo_trl.as_dataset([dict(chosen="the plot", rejected="the cast"), dict(chosen="great", rejected="dull")])


def test_bad_input_gets_one_line_errors(tokenizer, reference, texts, scores, tmp_path):
    """a dataset without score columns (d-DPO, e-DPO), d-DPO with K scores, e-DPO or p-DPO without a pool, an
    unknown method, or pairs without a rejected column: each a one-line ValueError that says what to do."""
    plain = [dict(prompt=p, chosen=c, rejected=r) for p, c, r in zip(*texts)]
    cases = [(dict(args=trl_args(tmp_path, "e-dpo"), train_dataset=plain), "add_reward_scores"),
             (dict(args=trl_args(tmp_path, "d-dpo"), train_dataset=scored_dataset(plain, scores)), "one reward model"),
             (dict(args=trl_args(tmp_path, "p-dpo"), train_dataset=plain), "sample_pool"),
             (dict(args=trl_args(tmp_path, "dpo"), train_dataset=plain), "unknown method"),
             (dict(args=trl_args(tmp_path, "p-dpo"), train_dataset=[{"prompt": "a", "chosen": "b"}]), "rejected")]
    for kw, words in cases:
        with pytest.raises(ValueError, match=words) as e:
            rddpo_trl.DistilledDPOTrainer(copy.deepcopy(reference), processing_class=tokenizer, **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="tokenizer"):
        rddpo_trl.add_reward_scores(plain, [rddpo.RewardModel(reference)])


# -----------------------------------------------------------------------------
# end to end


LAUNCHED = """
import json, os, sys, numpy as np, torch
sys.path[:0] = [{root!r}, {root!r} + '/tools']
import rddpo_trl
from harness import models, task
from harness.task import make_prompts, make_review
tok = task.build_tokenizer()
torch.manual_seed(0)
model = models.build_tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, n_positions=64)
rng = np.random.default_rng(0)
prompts = make_prompts(rng, 8, task.TITLES)
data = [dict(prompt=p, chosen=make_review(rng), rejected=make_review(rng), rm_chosen=rng.normal(size=2).tolist(),
             rm_rejected=rng.normal(size=2).tolist()) for p in prompts]
pool = rddpo_trl.sample_pool(model, tok, prompts, 3 * 2 * 2, 12, 64, 0, "cpu")
from accelerate import PartialState
from datasets import Dataset, load_from_disk
state = PartialState(cpu=True)
with state.main_process_first():  # several processes read the pairs from disk (see DistilledDPOTrainer)
    if state.is_main_process:
        Dataset.from_list(data).save_to_disk({out!r} + "-pairs")
data = load_from_disk({out!r} + "-pairs")
args = rddpo_trl.DistilledDPOConfig(output_dir={out!r}, method="e-dpo", max_steps=3, per_device_train_batch_size=2,
                                    logging_steps=1, max_length=64, report_to="none", use_cpu=True, save_strategy="no")
trainer = rddpo_trl.DistilledDPOTrainer(model, args=args, train_dataset=data, pool_dataset=pool, processing_class=tok)
trainer.train()
rows = [r for r in trainer.state.log_history if "loss" in r]
rank = trainer.accelerator.process_index  # a file per process: their prints could interleave on one pipe
with open({out!r} + f"-result-{{rank}}.json", "w") as f:
    json.dump(dict(world=trainer.accelerator.num_processes, rank=rank, calls=trainer.pool_calls,
                   loss=[r["loss"] for r in rows], fkl=[r["kl/forward"] for r in rows]), f)
"""


@pytest.mark.slow
def test_two_cpu_processes_under_accelerate_launch_train_with_finite_losses(tmp_path):
    """accelerate launch --num_processes 2 on the cpu (gloo): both processes train e-DPO for 3 steps, each taking
    its own pool rows at every step, and every logged loss and forward-KL term is finite."""
    script = tmp_path / "launched.py"
    script.write_text(textwrap.dedent(LAUNCHED.format(root=ROOT, out=str(tmp_path / "out"))))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((tmp_path / f"out-result-{rank}.json").read_text()) for rank in (0, 1)]
    assert {r["rank"] for r in results} == {0, 1} and all(r["world"] == 2 and r["calls"] == 3 for r in results)
    assert all(len(r["loss"]) == 3 and np.isfinite(r["loss"] + r["fkl"]).all() for r in results)


@pytest.mark.parametrize("method", ["d-dpo", "e-dpo", "p-dpo"])
def test_the_demo_prepares_scored_pairs_and_a_pool_of_steps_times_m(method, tokenizer, reference):
    """rddpo_trl.prepare on the tiny model: the task's pairs, scored by rddpo.reward_scores's plain model (d-DPO,
    one score per pair) or its family (e-DPO, K scores), and for e-DPO and p-DPO a pool of steps x M responses
    (--pool-batch 2); d-DPO has no pool. the eval rows are experiment.builtin_task's held-out pairs (pi_ref's two
    answers to each of --n-eval held-out prompts, labelled as the training pairs are), scored alike."""
    a = rddpo_trl.Args(method=method, steps=3, n_pairs=8, n_eval=4, batch_size=4, rm_steps=1, ensemble=2, pool_batch=2)
    data, pool, held = rddpo_trl.prepare(a, reference, tokenizer, 1, "cpu")
    ev = experiment.builtin_task(reference, tokenizer, rddpo_trl.rddpo_config(a), a.bias, a.seed, "cpu")[3]
    assert len(data) == 8 and [held[c] for c in rddpo_trl.FIELDS] == [ev.prompts, ev.chosen, ev.rejected]
    assert len(held) == 4 and not set(held["prompt"]) & set(data["prompt"])
    if method == "p-dpo":
        assert rddpo_trl.SCORES[0] not in data.column_names + held.column_names
    else:
        assert [len(d[0][c]) for d in (data, held) for c in rddpo_trl.SCORES] == [1 if method == "d-dpo" else 2] * 4
    assert (pool is None) == (method == "d-dpo") and (pool is None or len(pool) == 3 * 2)


def test_the_demo_on_your_data_scores_and_pools_the_training_split_only(tokenizer, reference, tmp_path):
    """--data: the pairs are this seed's training split (data.split_pairs, as rddpo.py takes it), none of the
    held-out tenth, and the pool is drawn on the training prompts."""
    from harness import data
    rng = np.random.default_rng(0)
    rows = [dict(prompt=p, chosen=make_review(rng), rejected=make_review(rng)) for p in make_prompts(rng, 20, TITLES)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = rddpo_trl.Args(method="e-dpo", data=str(tmp_path / "pairs.jsonl"), steps=2, batch_size=4, rm_steps=1,
                       ensemble=2, out=str(tmp_path))
    pairs, pool, evaluation = rddpo_trl.prepare(a, reference, tokenizer, 1, "cpu")
    train, held = data.split_pairs(data.read_pairs(a.data), 0)
    assert sorted(pairs["chosen"]) == sorted(c for _, c, _ in train) and len(held) == 2
    assert evaluation["chosen"] == [c for _, c, _ in held] and len(evaluation[0]["rm_chosen"]) == 2  # TRL's eval rows
    assert not {c for _, c, _ in held} & set(pairs["chosen"]) and len(pool) == 2 * 4
    assert {tokenizer.decode(ids) for ids in pool["prompt_ids"]} <= {p for p, _, _ in train}


def test_the_demo_on_conversational_data_gives_trl_the_messages_and_pools_on_the_rendered_prompts(chat, tmp_path):
    """--data of conversational pairs on a --model with a chat template: the trainer's pairs are the training split's
    messages (TRL's own form, which it renders as data.read_pairs does), scored on the rendered text, and every pool
    row's prompt ids are the tokens of a rendered training prompt."""
    tok, reference, rows, _ = chat
    folder = model_folder(tmp_path / "model", tok)
    a = rddpo_trl.Args(model=folder, method="e-dpo", data=write_jsonl(tmp_path / "chat.jsonl", chat_rows(20, seed=3)),
                       steps=2, batch_size=4, rm_steps=1, ensemble=2, out=str(tmp_path))
    pairs, pool, evaluation = rddpo_trl.prepare(a, reference, tok, 1, "cpu")
    train, held = data.split_pairs(data.read_pairs(a.data, model=folder), 0)
    assert [{c: r[c] for c in ("prompt", "chosen", "rejected")} for r in pairs] == [p.messages for p in train]
    assert [{c: r[c] for c in ("prompt", "chosen", "rejected")} for r in evaluation] == [p.messages for p in held]
    assert len(pairs[0]["rm_chosen"]) == 2
    rendered = {tuple(tok(p, add_special_tokens=False).input_ids) for p, _, _ in train}
    assert len(pool) == 2 * 4 and all(tuple(ids) in rendered for ids in pool["prompt_ids"])


@pytest.mark.slow
def test_main_runs_edpo_through_trl_on_the_cached_reference(tmp_path, capsys):
    """python tools/rddpo_trl.py on a small budget: the cached tiny reference, pairs, K reward models, the pool, and
    e-DPO through TRL print a line per logging step and a last line of metrics, all finite."""
    cached = os.path.join(ROOT, "runs", "reference-L2-E64-H4-T64-S600")
    if not os.path.isfile(os.path.join(cached, "config.json")):
        pytest.skip("no cached tiny reference: run python rddpo.py --quick first")
    os.symlink(cached, tmp_path / "reference-L2-E64-H4-T64-S600")
    assert rddpo_trl.main(["--steps", "4", "--n-pairs", "16", "--batch-size", "4", "--rm-steps", "2", "--ensemble", "2",
                           "--log-every", "2", "--out", str(tmp_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("e-dpo through TRL, 1 process") and "kl/forward" in last and "distill/member_1" in last
    assert "nan" not in last and "inf" not in last


def test_main_trains_lora_adapters_on_a_model_folder(tokenizer, reference, tmp_path, capsys):
    """python tools/rddpo_trl.py --model FOLDER (a small gpt-2 saved here, as a user's model): rddpo.py's defaults for
    a --model (LoRA of rank 16, reward heads) unless --lora says otherwise, and e-DPO through TRL runs to the end."""
    folder = str(tmp_path / "model")
    reference.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    common = ["--model", folder, "--steps", "2", "--n-pairs", "8", "--batch-size", "4", "--rm-steps", "2",
              "--ensemble", "2", "--log-every", "1", "--sft-steps", "3", "--out", str(tmp_path / "runs")]
    assert rddpo_trl.main(common) == 0
    out = capsys.readouterr().out
    assert "policy: LoRA adapters of rank 16 on pi_ref" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("e-dpo through TRL") and "nan" not in last
    assert rddpo_trl.main(common + ["--lora", "0", "--method", "p-dpo"]) == 0
    assert "policy: a copy of pi_ref, every weight" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# evaluation on the held-out pairs, the saved policy, --report-to and --dtype


def test_the_held_out_pairs_are_scored_by_the_very_reward_models_of_the_training_pairs(tokenizer, reference, tmp_path):
    """--data whose every pair is written three times: a held-out pair whose twin is in the training split gets, from
    each member of the e-DPO family in turn, the score its twin got, to float rounding (the same texts, the same
    models); reward models trained again, or members in another order, would give other scores."""
    rng = np.random.default_rng(1)
    rows = [dict(prompt=p, chosen=make_review(rng), rejected=make_review(rng)) for p in make_prompts(rng, 10, TITLES)]
    a = rddpo_trl.Args(method="e-dpo", data=write_jsonl(tmp_path / "thrice.jsonl", rows * 3), steps=2, batch_size=4,
                       rm_steps=3, ensemble=3, out=str(tmp_path))
    pairs, _, held = rddpo_trl.prepare(a, reference, tokenizer, 1, "cpu")
    twins = [(pairs["chosen"].index(row["chosen"]), row) for row in held if row["chosen"] in pairs["chosen"]]
    assert len(twins) >= 2 and len(held) == 3
    for i, row in twins:
        for name in rddpo_trl.SCORES:
            np.testing.assert_allclose(row[name], pairs[i][name], atol=1e-5, rtol=0)
            assert np.ptp(row[name]) > 1e-3  # the members differ, so their order shows


def test_evaluate_gives_the_methods_loss_on_the_held_out_pairs_and_takes_no_pool_rows(tokenizer, reference, texts,
                                                                                       scores, tmp_path):
    """TRL's evaluate on eval_dataset (all N pairs in one batch of --batch-size N, with their scores): eval_loss is
    rddpo.policy_loss of e-DPO on those pairs, the policy moved off pi_ref, with the M pool rows that training's
    next step would take (train_policy's step-1 rows: evaluation advances no pool row), and TRL's DPO metrics come
    with the eval_ prefix."""
    pairs = rddpo.tokenize_pairs(tokenizer, *texts, MAX_LENGTH)
    pairs.ref_logps = rddpo.all_logps(reference, pairs.tokens, np.arange(2 * N), "cpu")  # (2N,)
    pairs.rm_family = scores  # (K, 2N)
    cfg = experiment.Config(steps=2, batch_size=N, max_new_tokens=20, max_length=MAX_LENGTH)
    pairs.pool, pairs.pool_ref_logps = experiment.kl_pool(reference, tokenizer, texts[0], cfg, 0, "cpu")  # (2N, T)
    policy = moved(reference)
    rows, pool_rows = np.arange(2 * N), np.random.default_rng([0, 99]).permutation(2 * N)[:N]  # (2N,), (M,)
    with torch.no_grad():
        expected = rddpo.policy_loss("e-dpo", rddpo.all_logps(policy, pairs.tokens, rows, "cpu"), rows, pairs, 0.2,
                                     0.3, rddpo.all_logps(policy, pairs.pool, pool_rows, "cpu"), pool_rows)
    scored = scored_dataset(text_rows(texts), scores)
    trainer = rddpo_trl.DistilledDPOTrainer(
        policy, ref_model=copy.deepcopy(reference), train_dataset=scored, eval_dataset=rddpo_trl.as_dataset(scored),
        args=trl_args(tmp_path, "e-dpo", per_device_eval_batch_size=N, prediction_loss_only=True),
        processing_class=tokenizer, pool_dataset=rddpo_trl.sample_pool(reference, tokenizer, texts[0], 2 * N, 20,
                                                                       MAX_LENGTH, 0, "cpu"))
    metrics = trainer.evaluate()
    assert abs(metrics["eval_loss"] - expected.item()) < 1e-5 and abs(expected.item()) > 1e-3
    assert trainer.pool_calls == 0
    assert {"eval_rewards/margins", "eval_kl/forward", "eval_distill/member"} <= set(metrics)
    with pytest.raises(ValueError, match="eval_dataset needs its reward scores"):
        rddpo_trl.DistilledDPOTrainer(policy, ref_model=reference, train_dataset=scored, pool_dataset=[],
                                      eval_dataset=rddpo_trl.as_dataset(text_rows(texts)),
                                      args=trl_args(tmp_path, "e-dpo"), processing_class=tokenizer)


def tiny_model_folder(tmp_path, tokenizer, reference):
    folder = str(tmp_path / "model")
    reference.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("lora", [16, 0])
def test_save_writes_the_policy_that_reloads_to_the_trainers_own_and_it_is_evaluated_every_eval_every_steps(
        lora, tokenizer, reference, texts, tmp_path, capsys, monkeypatch):
    """--save on a --model folder, trained as LoRA adapters (its default, rank 16) or every weight (--lora 0), with a
    relative --out: OUT/trl-p-dpo/policy reloads with from_pretrained, run from another folder (transformers' for a
    whole model; peft's AutoPeftModelForCausalLM for adapters, on the pi_ref their adapter_config.json names, which is
    the cached fine-tuned reference's absolute folder), to the model the trainer ended with: the same log-probs to
    1e-5, away from pi_ref's. --eval-every 1 over 2 steps: a held-out line at steps 1 and 2 and none more; the last
    line says where the policy is and the one call that loads it."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM
    folder, kept, real = tiny_model_folder(tmp_path, tokenizer, reference), [], rddpo_trl.train
    monkeypatch.setattr(rddpo_trl, "train", lambda *args: kept.append(real(*args)) or kept[-1])
    monkeypatch.chdir(tmp_path)
    assert rddpo_trl.main(["--model", folder, "--method", "p-dpo", "--lora", str(lora), "--steps", "2", "--n-pairs",
                           "8", "--n-eval", "4", "--batch-size", "4", "--log-every", "1", "--eval-every", "1", "--lr",
                           "1e-2", "--sft-steps", "3", "--out", "runs", "--save"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("  eval_loss ")[0] for line in lines if line.startswith("held-out")] == \
        [f"held-out (4 pairs), step    {s}" for s in (1, 2)]
    call = "peft.AutoPeftModelForCausalLM" if lora else "transformers.AutoModelForCausalLM"
    assert lines[-1].startswith("policy saved with its tokenizer in runs/trl-p-dpo/policy; load it with " + call)
    base, = [str(p) for p in (tmp_path / "runs").glob("reference-*")]
    tokens, rows = rddpo.tokenize_pairs(tokenizer, *texts, MAX_LENGTH).tokens, np.arange(2 * N)
    trained = rddpo.all_logps(kept[0].model.eval(), tokens, rows, "cpu")  # (2N,)
    monkeypatch.chdir(folder)
    saved = str(tmp_path / "runs" / "trl-p-dpo" / "policy")
    if lora:
        with open(os.path.join(saved, "adapter_config.json")) as fh:
            assert json.load(fh)["base_model_name_or_path"] == base and os.path.isabs(base)
    loaded = (AutoPeftModelForCausalLM if lora else AutoModelForCausalLM).from_pretrained(saved)
    torch.testing.assert_close(rddpo.all_logps(loaded, tokens, rows, "cpu"), trained, atol=1e-5, rtol=0)
    pi_ref = rddpo.all_logps(AutoModelForCausalLM.from_pretrained(base), tokens, rows, "cpu")
    assert (trained - pi_ref).abs().max() > 1e-2
    monkeypatch.chdir(tmp_path)  # the same command again: refused before any work, the kept policy untouched
    before = {f.name: f.read_bytes() for f in (tmp_path / "runs" / "trl-p-dpo" / "policy").iterdir() if f.is_file()}
    assert rddpo_trl.main(["--model", folder, "--method", "p-dpo", "--out", "runs", "--save"]) == 2
    assert "runs/trl-p-dpo/policy holds the policy of an earlier run" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in (tmp_path / "runs" / "trl-p-dpo" / "policy").iterdir()
            if f.is_file()} == before


@pytest.mark.parametrize("args, says", [
    (["--report-to", "tensorbored"], "--report-to 'tensorbored': give none, all, or a comma list of transformers'"),
    (["--report-to", "none,clearml"], "--report-to clearml: transformers finds no clearml installed here"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--eval-every", "-1"], "--eval-every must be >= 0"),
    (["--dtype", "bfloat16"], "--dtype bfloat16: this device has no bfloat16 support")])
def test_a_bad_report_to_dtype_or_eval_every_is_one_error_line_before_any_work(args, says, tmp_path, capsys,
                                                                               monkeypatch):
    """an integration transformers does not know, or one whose package is missing here, --dtype float16, a
    negative --eval-every, or bfloat16 on a device without it (accelerate's is_bf16_available made to say so, as on
    a gpu before Ampere): one error line, exit status 2, nothing written."""
    from accelerate import utils
    from transformers.integrations import get_available_reporting_integrations
    if "clearml" in get_available_reporting_integrations():
        pytest.skip("clearml is installed here")
    monkeypatch.setattr(utils, "is_bf16_available", lambda *a: False)
    try:
        status = rddpo_trl.main(args + ["--out", str(tmp_path / "out")])
    except SystemExit as e:  # argparse's own errors
        status = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error:") and says in err[0], err
    assert not (tmp_path / "out").exists()


def test_dtype_bfloat16_runs_trls_forward_passes_in_bfloat16_and_keeps_the_weights_float32(tokenizer, reference,
                                                                                           tmp_path, monkeypatch):
    """--dtype bfloat16 (TRL's bf16, as rddpo.py's --dtype): the model's linear layers compute in bfloat16 at every
    training and evaluation step, the trained weights stay float32, the loss is finite; --report-to passes to TRL's
    report_to (none: no integration)."""
    seen, real = set(), rddpo_trl.DistilledDPOTrainer.compute_loss
    def compute_loss(self, model, inputs, *args, **kw):  # the first attention projection's output dtype
        layer = self.accelerator.unwrap_model(model).transformer.h[0].attn.c_attn
        hook = layer.register_forward_hook(lambda module, i, out: seen.add(out.dtype))
        try:
            return real(self, model, inputs, *args, **kw)
        finally:
            hook.remove()
    monkeypatch.setattr(rddpo_trl.DistilledDPOTrainer, "compute_loss", compute_loss)
    kept, train = [], rddpo_trl.train
    monkeypatch.setattr(rddpo_trl, "train", lambda *args: kept.append(train(*args)) or kept[-1])
    assert rddpo_trl.main(["--model", tiny_model_folder(tmp_path, tokenizer, reference), "--method", "p-dpo", "--lora",
                           "0", "--steps", "2", "--n-pairs", "8", "--n-eval", "4", "--batch-size", "4", "--sft-steps",
                           "3", "--log-every", "1", "--dtype", "bfloat16", "--out", str(tmp_path / "runs")]) == 0
    trainer = kept[0]
    assert seen == {torch.bfloat16} and trainer.args.bf16 and trainer.args.report_to == []
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert np.isfinite([r["loss"] for r in trainer.state.log_history if "loss" in r]).all()
