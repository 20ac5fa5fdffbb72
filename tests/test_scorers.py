"""tests of harness/scorers.py: reward models you bring (--reward-models NAME,... or data) are the family, each pair
read through each model's own tokenizer and chat template; the data's score columns as they are; --reward-scale;
one error line for every bad input; and both tools run with them.
run with `OMP_NUM_THREADS=1 python -m pytest tests/test_scorers.py -q`."""
import json
import os

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # never wait on the network
import rddpo_trl  # noqa: E402
from harness import data, experiment, scorers, task  # noqa: E402
from test_data import chat_rows, model_folder, one_error_line, word_chat_tokenizer, write_jsonl  # noqa: E402

# the second reward model's own template, unlike the policy's ChatML: a reward model reads pairs its own way
RM_TEMPLATE = "{% for m in messages %}{{ m['role'] }} says {{ m['content'] }} . {% endfor %}"


def classifier_folder(path, template=None, seed=0):
    """a 1-layer gpt-2 sequence classifier (one label: the reward) with the task's word-level tokenizer, and
    optionally a chat template of its own, saved as a folder that from_pretrained reads."""
    from transformers import GPT2Config, GPT2ForSequenceClassification
    words = [w for w in task.build_tokenizer().get_vocab() if w not in ("<|endoftext|>", "<unk>")]
    tok = task.word_tokenizer(words + ["user", "assistant", "says"])
    tok.chat_template = template
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=16, n_layer=1, n_head=2, num_labels=1,
                        pad_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    model = GPT2ForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_()  # a reward that varies from text to text
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def own_scores(folder, texts):
    """a classifier's first logit on each text, one text at a time (no padding), computed here from scratch."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model, tok = AutoModelForSequenceClassification.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return np.array([model(**tok(t, return_tensors="pt")).logits[0, 0].item() for t in texts])


@pytest.fixture(scope="module")
def brought(tmp_path_factory):
    """the policy's model folder (ChatML), two reward models (A without a template, B with RM_TEMPLATE) and a
    conversational data file whose rows also carry two scores each."""
    tmp = tmp_path_factory.mktemp("brought")
    rows = chat_rows(12)
    for i, row in enumerate(rows):
        row.update(score_chosen=[float(i), 2.0 * i], score_rejected=[0.5, -float(i)])
    return dict(policy=model_folder(tmp / "policy", word_chat_tokenizer()), a=classifier_folder(tmp / "a", seed=1),
                b=classifier_folder(tmp / "b", RM_TEMPLATE, seed=2), data=write_jsonl(tmp / "chat.jsonl", rows),
                rows=rows, tmp=tmp)


BUDGET = ["--steps", "2", "--batch-size", "2", "--max-length", "64", "--max-new-tokens", "4", "--eval-points", "1",
          "--device", "cpu", "--seeds", "0"]


def prepared(b, *flags):
    """experiment.prepare's pairs for seed 0 of a run on the brought data with these flags, and its diagnostics."""
    cfg = experiment.Config(**{k: v for k, v in flags}, model=b["policy"], data=b["data"], methods="d-dpo,e-dpo",
                            max_length=64, max_new_tokens=4, batch_size=2, out=str(b["tmp"] / "runs"))
    from harness import data, models
    cfg = models.model_defaults(cfg)
    pairs_in = data.user_pairs(cfg)
    reference, tokenizer = models.load_reference(cfg, "cpu")
    pairs, ev, info, diagnostics = experiment.prepare(reference, tokenizer, cfg, None, 0, "cpu", pairs_in)
    return pairs, ev, diagnostics, pairs_in


def kept_pairs(pairs, pairs_in):
    """the training pairs (seed 0's split) that prepare kept, in the order of pairs' rows."""
    from harness import data
    train = data.split_pairs(pairs_in, 0)[0]
    return [train[i] for i in pairs.keep]


def test_the_family_is_each_brought_models_own_scores_through_its_own_chat_template(brought):
    """--reward-models A,B on conversational data: member k's score of every kept pair (chosen rows, then rejected)
    is that classifier's own first logit on the text it reads: A (no template) the policy's rendered prompt and
    response, B the conversation's messages in B's own template, not the policy's; d-DPO distils A."""
    from transformers import AutoTokenizer
    b = brought
    pairs, ev, diagnostics, pairs_in = prepared(b, ("reward_models", f"{b['a']},{b['b']}"))
    kept = kept_pairs(pairs, pairs_in)
    rows = [(p, p[1], "chosen") for p in kept] + [(p, p[2], "rejected") for p in kept]  # as rm_family's columns
    plain = [str(p[0]) + str(y) for p, y, _ in rows]
    rm_tok = AutoTokenizer.from_pretrained(b["b"])
    templated = [rm_tok.apply_chat_template(p.messages["prompt"] + p.messages[which], tokenize=False)
                 for p, _, which in rows]
    assert templated[0].startswith("user says") and "<|im_start|>" not in templated[0]
    np.testing.assert_allclose(pairs.rm_family[0].numpy(), own_scores(b["a"], plain), atol=1e-5)
    np.testing.assert_allclose(pairs.rm_family[1].numpy(), own_scores(b["b"], templated), atol=1e-5)
    assert torch.equal(pairs.rm_plain, pairs.rm_family[0])
    assert [d["model"] for d in diagnostics] == ["plain", "member 1", "member 2"]
    assert [d["source"] for d in diagnostics] == [b["a"], b["a"], b["b"]]
    n = len(kept)
    gaps = (pairs.rm_family[:, :n] - pairs.rm_family[:, n:]).abs().mean(1)  # (K,)
    for k, d in enumerate(diagnostics[1:]):
        assert d["reward_diff"] == pytest.approx(gaps[k].item(), rel=1e-5)
        assert d["target_logratio"] == pytest.approx(gaps[k].item() / 0.1, rel=1e-5)


def test_data_columns_are_the_family_as_they_are_and_reward_scale_sets_their_units(brought):
    """--reward-models data: member k is column k of score_chosen (chosen rows) and score_rejected (rejected rows)
    of each kept pair, untouched at --reward-scale 1, times 3 at 3, and with std each member's training gaps have
    standard deviation 1 (the factor recorded)."""
    b = brought
    pairs, _, diagnostics, pairs_in = prepared(b, ("reward_models", "data"))
    kept = kept_pairs(pairs, pairs_in)
    n = len(kept)
    want = np.array([[p.extra["score_chosen"][k] for p in kept] + [p.extra["score_rejected"][k] for p in kept]
                     for k in range(2)])  # (K, 2N)
    np.testing.assert_array_equal(pairs.rm_family.numpy(), want.astype(np.float32))
    assert [d["source"] for d in diagnostics[1:]] == ["data column 0", "data column 1"]
    tripled = prepared(b, ("reward_models", "data"), ("reward_scale", "3"))[0]
    np.testing.assert_allclose(tripled.rm_family.numpy(), 3 * want, rtol=1e-6)
    std, _, diag, _ = prepared(b, ("reward_models", "data"), ("reward_scale", "std"))
    gaps = (std.rm_family[:, :n] - std.rm_family[:, n:]).numpy()  # (K, N)
    np.testing.assert_allclose(gaps.std(axis=1), 1.0, rtol=1e-5)
    assert [d["scale"] for d in diag[1:]] == pytest.approx(list(1 / (want[:, :n] - want[:, n:]).std(axis=1)), rel=1e-5)


def test_both_tools_run_with_brought_reward_models_and_say_the_margin_each_asks(brought, capsys):
    """rddpo.py --reward-models A,B and rddpo_trl.py --reward-models A,B on conversational data: both end; rddpo.py
    prints each member's gap and asked margin and keeps them in results.json; TRL's pairs carry the same family."""
    b = brought
    out = str(b["tmp"] / "both")
    assert experiment.main(["--model", b["policy"], "--data", b["data"], "--methods", "e-dpo", "--ensemble", "2",
                            "--reward-models", f"{b['a']},{b['b']}", "--out", out, *BUDGET]) == 0
    printed = capsys.readouterr().out
    assert printed.count("asking the policy for a log-ratio margin |h| of") == 2
    results = json.load(open(os.path.join(out, "run-001", "results.json")))
    assert results["run"]["status"] == "finished"
    assert [r["source"] for r in results["reward_models"]] == [b["a"], b["a"], b["b"]]
    assert rddpo_trl.main(["--model", b["policy"], "--data", b["data"], "--method", "e-dpo", "--steps", "2",
                           "--batch-size", "2", "--max-length", "64", "--max-new-tokens", "4", "--log-every", "1",
                           "--reward-models", f"{b['a']},{b['b']}", "--out", out]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("e-dpo through TRL") and "distill/member_1" in last and "nan" not in last
    a = rddpo_trl.parse_args(["--model", b["policy"], "--data", b["data"], "--method", "e-dpo", "--steps", "2",
                              "--batch-size", "2", "--max-length", "64", "--max-new-tokens", "4",
                              "--reward-models", f"{b['a']},{b['b']}", "--out", out])
    from harness import models
    reference, tokenizer = models.load_reference(rddpo_trl.rddpo_config(a), "cpu")
    trl_pairs, _, held = rddpo_trl.prepare(a, reference, tokenizer, 1, "cpu")
    family = prepared(b, ("reward_models", f"{b['a']},{b['b']}"))[0].rm_family  # (K, 2N), checked above
    trl_family = np.concatenate([np.array(trl_pairs["rm_chosen"]).T, np.array(trl_pairs["rm_rejected"]).T], axis=1)
    np.testing.assert_allclose(trl_family, family.numpy(), atol=1e-6)
    held_family = np.concatenate([np.array(held["rm_chosen"]).T, np.array(held["rm_rejected"]).T], axis=1)
    assert held_family.shape == (2, 2 * held.num_rows) and np.isfinite(held_family).all()  # TRL's eval rows, scored


def test_a_reward_model_reads_what_it_should_the_response_whole_one_bos_and_its_own_pad(brought, tmp_path, capsys):
    """model_scores: a text longer than the classifier reads loses its start, not its response (and a note says
    so); a text whose template began with bos gets no second one; load_scorer keeps a pad id the config has. a
    response drawn from pi_ref (--unlabeled) to a conversation's prompt is read after that conversation's turns."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    b = brought
    model, tok = scorers.load_scorer(b["a"])
    tok.model_max_length = 6
    long_text = "the plot was dull . the acting was great ."  # 10 words, so 10 tokens
    score = scorers.model_scores(model, tok, [long_text, "the plot was great ."], "cpu")
    assert "1 of 2 texts are longer than the 6 tokens" in capsys.readouterr().out
    np.testing.assert_allclose(score, own_scores(b["a"], [". the acting was great .", "the plot was great ."]),
                               atol=1e-5)  # the last 6 tokens: "." then the response
    tok = AutoTokenizer.from_pretrained(b["a"])  # a tokenizer that puts bos first
    tok.bos_token = "says"
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="says $A", special_tokens=[
        ("says", tok.convert_tokens_to_ids("says"))])
    assert tok("the plot").input_ids[0] == tok.bos_token_id
    np.testing.assert_allclose(scorers.model_scores(model, tok, ["says the plot was great ."], "cpu"),
                               own_scores(b["a"], ["says the plot was great ."]), atol=1e-5)  # one bos, not two
    plain = AutoModelForSequenceClassification.from_pretrained(b["a"])
    plain.config.pad_token_id = 5
    plain.save_pretrained(tmp_path / "padded")
    tok = AutoTokenizer.from_pretrained(b["a"])
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "padded")
    model, tok = scorers.load_scorer(str(tmp_path / "padded"))
    assert tok.pad_token_id == model.config.pad_token_id == 5
    pair = data.Pair("<p>", " a", " b", messages=dict(prompt=[{"role": "user", "content": "q"}],
                                                      chosen=[{"role": "assistant", "content": "a"}],
                                                      rejected=[{"role": "assistant", "content": "b"}]))
    drawn = scorers.conversations(["<p>", "<p>", "other"], [" b", " c", " d"], scorers.index_pairs([pair]))
    assert drawn == [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
                     [{"role": "user", "content": "q"}, {"role": "assistant", "content": " c"}],
                     [{"role": "user", "content": "other"}, {"role": "assistant", "content": " d"}]]


def test_bad_reward_models_or_scales_are_one_error_line_and_exit_2(brought, capsys):
    """a causal LM is not a reward model; a folder that is not there (the hub unreachable); data without --data,
    data beside a name, data with --unlabeled, a score that is not a number; a scale that is not positive or std,
    or a scale for the reward models trained here."""
    b = brought
    bad_rows = chat_rows(12)
    for row in bad_rows:
        row.update(score_chosen=1.0, score_rejected="high")
    bad = write_jsonl(b["tmp"] / "bad.jsonl", bad_rows)
    twice = chat_rows(12)  # two pairs with one prompt and one chosen response, scored two ways
    for i, row in enumerate(twice):
        row.update(score_chosen=float(i), score_rejected=0.0)
    twice[1] = dict(twice[0], rejected=twice[1]["rejected"], score_chosen=5.0)
    twice = write_jsonl(b["tmp"] / "twice.jsonl", twice)
    common = ["--model", b["policy"], "--methods", "d-dpo", "--out", str(b["tmp"] / "bad"), *BUDGET]
    for flags, says in (
            (["--data", b["data"], "--reward-models", b["policy"]], "is not a sequence classifier"),
            (["--data", b["data"], "--reward-models", str(b["tmp"] / "absent")], "hub cannot be reached"),
            (["--reward-models", "data"], "give --data"),
            (["--data", b["data"], "--reward-models", f"data,{b['a']}"], "uses the data's score columns alone"),
            (["--data", b["data"], "--reward-models", "data", "--unlabeled", "4"], "carry no score columns"),
            (["--data", bad, "--reward-models", "data"], "pair "),
            (["--data", twice, "--reward-models", "data"], "give one response one score"),
            (["--data", b["data"], "--reward-models", "head"], "did you mean heads?"),
            (["--data", b["data"], "--reward-models", "data", "--reward-scale", "-1"], "give a positive number"),
            (["--data", b["data"], "--reward-scale", "2"], "leave it out")):
        runs = sorted((b["tmp"] / "bad").glob("run-*"))
        assert experiment.main(common + flags) == 2, flags
        one_error_line(capsys, says)
        if says in ("is not a sequence classifier", "did you mean heads?"):  # refused before any work: no run folder
            assert sorted((b["tmp"] / "bad").glob("run-*")) == runs, says
