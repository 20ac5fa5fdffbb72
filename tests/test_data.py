"""tests of harness/data.py: your own pairs in TRL's preference formats (standard or conversational, the prompt explicit
or implicit), from a JSON-lines, .json, .parquet or .csv file or a hub dataset; conversational pairs rendered into the
very tokens TRL's DPOTrainer trains on; one error line for every bad input; and both tools run on such data.
run with `OMP_NUM_THREADS=1 python -m pytest tests/test_data.py -q`."""
import copy
import csv
import json
import os
import pickle

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # never wait on the network
import rddpo  # noqa: E402
import rddpo_trl  # noqa: E402
from harness import data, experiment, models, report, task  # noqa: E402

# a ChatML-like template; `brief` (a chat_template_kwargs key) adds a system turn
CHATML = ("{% if brief %}<|im_start|>system\nbe brief<|im_end|>\n{% endif %}"
          "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TURNS = ["<|im_start|>", "<|im_end|>"]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """datasets.load_dataset caches what it reads: here, in the test's own folder."""
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


def word_chat_tokenizer():
    """the task's word-level tokenizer plus the words and the two special tokens of CHATML. its eos (<|endoftext|>)
    is not the turn's end (<|im_end|>), so an eos added after a turn shows in the tokens."""
    words = [w for w in task.build_tokenizer().get_vocab() if w not in ("<|endoftext|>", "<unk>")]
    tok = task.word_tokenizer(words + ["user", "assistant", "system", "be", "brief"])
    tok.add_special_tokens({"additional_special_tokens": TURNS})
    tok.chat_template = CHATML
    return tok


def bpe_chat_tokenizer():
    """a byte-level BPE with gpt-2's pre-tokenizer (a newline is a token of its own), eos '</s>', and CHATML, whose
    turns end '<|im_end|>\\n': in TRL the newline after the turn is the response's last token."""
    from tokenizers import Tokenizer, decoders, models as bpe, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(bpe.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = np.random.default_rng(0)
    texts = task.make_prompts(rng, 40, task.TITLES) + [task.make_review(rng) for _ in range(40)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>", *TURNS],
                                                       show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>")
    fast.chat_template = CHATML
    return fast


def chat_rows(n, seed=0, implicit=False):
    """n conversational pairs of the task's prompts and reviews, every third a two-turn conversation; implicit: no
    prompt column, chosen and rejected each the whole conversation."""
    rng, rows = np.random.default_rng(seed), []
    for i, p in enumerate(task.make_prompts(rng, n, task.TITLES)):
        prompt = [{"role": "user", "content": p}]
        if i % 3 == 2:
            prompt += [{"role": "assistant", "content": task.make_review(rng).strip()},
                       {"role": "user", "content": "the ending ."}]
        chosen, rejected = ([{"role": "assistant", "content": task.make_review(rng).strip()}] for _ in range(2))
        rows.append(dict(chosen=prompt + chosen, rejected=prompt + rejected) if implicit else
                    dict(prompt=prompt, chosen=chosen, rejected=rejected))
    return rows


def model_folder(path, tokenizer, seed=0):
    """a 1-layer gpt-2 (width 16) with random weights and the tokenizer, saved as a --model folder."""
    torch.manual_seed(seed)
    models.build_tiny_gpt2(tokenizer, n_layer=1, n_embd=16, n_head=2, n_positions=128).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path, rows):
    from datasets import Dataset
    Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


def one_error_line(capsys, says):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and says in err[0], err


# -----------------------------------------------------------------------------
# the forms: the implicit prompt, and conversational pairs as TRL tokenises them


@pytest.mark.parametrize("chosen, rejected", [
    ("Q: the plot ? A: great", "Q: the plot ? A: dull"),                     # the space before the answer moves
    ("Q: the plot ?A: great", "Q: the plot ?A: dull"),                       # no space: nothing moves
    ("the plot was great", "the plot was great and long"),                   # one opens the other: each keeps a char
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
      {"role": "assistant", "content": "d"}],
     [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
      {"role": "assistant", "content": "e"}]),                               # the first three messages
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
     [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
      {"role": "assistant", "content": "d"}]),                               # one opens the other: each keeps one
])
def test_the_implicit_prompt_is_the_one_trls_extract_prompt_takes(chosen, rejected):
    """'Q: the plot ? A: great' against '... A: dull': the prompt 'Q: the plot ? A:', the responses ' great' and
    ' dull' (the space goes with them); conversational, the leading messages both share; where one response opens
    the other, each keeps its last character or message. all as trl.data_utils.extract_prompt, and read_row
    gives the same."""
    from trl.data_utils import extract_prompt
    trl = extract_prompt(dict(chosen=chosen, rejected=rejected))
    assert data.implicit_prompt(chosen, rejected) == (trl["prompt"], trl["chosen"], trl["rejected"])
    assert data.read_row(dict(chosen=chosen, rejected=rejected, id=7), "row 0") == (*trl.values(), {"id": 7})
    if isinstance(chosen, str) and " A: " in chosen:
        assert trl["prompt"] == "Q: the plot ? A:" and trl["chosen"] == " great"


def test_a_pair_without_a_shared_opening_is_refused_rather_than_given_an_empty_prompt():
    """'great .' against 'dull .' share nothing: TRL's rule would give the empty prompt (or, for a response ending in
    a space, a prompt of all but its last character); read_row says so instead."""
    with pytest.raises(data.UsageError, match="row 3: chosen and rejected share no opening"):
        data.read_row(dict(chosen="great .", rejected="dull ."), "row 3")


@pytest.mark.parametrize("build", [word_chat_tokenizer, bpe_chat_tokenizer])
def test_conversational_pairs_become_the_tokens_trls_dpo_trainer_trains_on(build, tmp_path):
    """implicit-prompt conversational rows, one and two turns, half with chat_template_kwargs {"brief": true} (a system
    turn): read_pairs renders each into text whose rddpo.tokenize_pairs tokens are, row by row, the prompt_ids,
    chosen_ids and rejected_ids of a trl.DPOTrainer given the same rows; the text is trl.data_utils'
    apply_chat_template's. each response ends with the template's closing ('<|im_end|>', then the newline where the
    tokenizer keeps one), and no eos is added: rddpo.encode's usual eos would be one token too many."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import apply_chat_template, extract_prompt
    folder = model_folder(tmp_path / "model", build())
    tok = AutoTokenizer.from_pretrained(folder)  # as the tools load it
    rows = [dict(r, chat_template_kwargs={"brief": i % 2 == 0}) for i, r in enumerate(chat_rows(6, implicit=True))]
    pairs = data.read_pairs(write_jsonl(tmp_path / "chat.jsonl", rows), model=folder)
    for pair, row in zip(pairs, rows):
        texts = apply_chat_template(dict(extract_prompt(row), chat_template_kwargs=row["chat_template_kwargs"]), tok)
        assert tuple(pair) == (texts["prompt"], texts["chosen"], texts["rejected"])
        assert pair.messages == extract_prompt(row)
        assert pair.extra == {"chat_template_kwargs": row["chat_template_kwargs"]}
    ours = rddpo.tokenize_pairs(tok, *(list(x) for x in zip(*pairs)), 512).tokens  # nothing cut
    model = AutoModelForCausalLM.from_pretrained(folder)
    trainer = DPOTrainer(model, ref_model=copy.deepcopy(model), processing_class=tok,
                         train_dataset=Dataset.from_list(rows), args=DPOConfig(
                             output_dir=str(tmp_path / "trl"), max_length=512, report_to="none", use_cpu=True))
    n = len(rows)
    for i, theirs in enumerate(trainer.train_dataset):
        for row, key in ((i, "chosen_ids"), (n + i, "rejected_ids")):
            ids, real, resp = (x[row] for x in (ours.input_ids, ours.attention_mask.bool(), ours.response_mask.bool()))
            assert ids[real & ~resp].tolist() == theirs["prompt_ids"]
            assert ids[resp].tolist() == theirs[key]
            assert tok.eos_token_id not in theirs[key] and tok.decode(theirs[key]).rstrip("\n").endswith("<|im_end|>")


def test_a_prompt_that_ends_with_a_reply_begun_is_left_open_as_trl_renders_it(tmp_path, capsys):
    """a conversational prompt whose last message is the assistant's (a reply begun for it): the prompt text ends
    inside that turn (continue_final_message), the responses are the rest, all as trl.data_utils'
    apply_chat_template; a prompt that ends with a system message is one error line naming the row."""
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template
    folder = model_folder(tmp_path / "model", word_chat_tokenizer())
    tok, _ = AutoTokenizer.from_pretrained(folder), capsys.readouterr()  # save_pretrained's progress bars
    begun = [{"role": "user", "content": "thoughts on dark water"}, {"role": "assistant", "content": "the plot"}]
    row = dict(prompt=begun, chosen=[{"role": "assistant", "content": "was great ."}],
               rejected=[{"role": "assistant", "content": "was dull ."}])
    pair = data.read_pairs(write_jsonl(tmp_path / "begun.jsonl", [row, row]), model=folder)[0]  # 2: the least
    texts = apply_chat_template(row, tok)
    assert tuple(pair) == (texts["prompt"], texts["chosen"], texts["rejected"])
    assert pair[0].endswith("<|im_start|>assistant\nthe plot")  # the begun reply open, no new turn after it
    last = dict(row, prompt=begun + [{"role": "system", "content": "be brief"}])
    assert experiment.main(["--data", write_jsonl(tmp_path / "last.jsonl", [last, last]), "--model", folder,
                            "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "last.jsonl, line 1: the prompt's last message is from 'system'")


# -----------------------------------------------------------------------------
# where the rows come from


def plain_rows(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return [dict(prompt=p, chosen=task.make_review(rng), rejected=task.make_review(rng), score_chosen=float(i),
                 score_rejected=-float(i)) for i, p in enumerate(task.make_prompts(rng, n, task.TITLES))]


def test_json_lines_json_parquet_and_csv_files_give_the_same_pairs_with_their_other_columns(tmp_path):
    """the same rows written as JSON lines, a .json array, parquet and csv: the same (prompt, chosen, rejected)
    tuples, each Pair carrying score_chosen and score_rejected in .extra, through a copy and a pickle too; a 3-tuple
    unpacking still works."""
    rows = plain_rows()
    (tmp_path / "pairs.json").write_text(json.dumps(rows))
    with open(tmp_path / "pairs.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths = [write_jsonl(tmp_path / "pairs.jsonl", rows), str(tmp_path / "pairs.json"),
             write_parquet(tmp_path / "pairs.parquet", rows), str(tmp_path / "pairs.csv")]
    expected = [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    for path in paths:
        pairs = data.read_pairs(path)
        assert pairs == expected, path
        assert [p.extra["score_chosen"] for p in pairs] == [float(i) for i in range(len(rows))], path
        assert pairs[3].extra == {"score_chosen": 3.0, "score_rejected": -3.0}, path
    folder = tmp_path / "a folder"  # a folder of data files, by its absolute path too
    folder.mkdir()
    write_parquet(folder / "train.parquet", rows)
    assert data.read_pairs(str(folder)) == expected == data.read_pairs(str(folder) + "/")
    again = pickle.loads(pickle.dumps(pairs[3]))
    assert again == pairs[3] and again.extra == pairs[3].extra == copy.deepcopy(pairs[3]).extra
    prompt, chosen, rejected = pairs[3]
    assert (prompt, chosen, rejected) == expected[3] and pairs[3].messages is None


def test_a_hub_dataset_is_loaded_by_name_and_split_and_its_sft_cache_keyed_by_them(tmp_path, monkeypatch):
    """--data NAME --data-split S: datasets.load_dataset(NAME, split=S) (replaced here by a function that records its
    call, as the hub is unreachable), its rows read as a file's, named 'NAME, row i'; the fine-tuned reference's
    cache is keyed by the name and the split."""
    import datasets
    calls = []
    def load_dataset(name, split):
        calls.append((name, split))
        bad = [dict(plain_rows(1)[0], rejected=None)] if split == "test" else []
        return datasets.Dataset.from_list(plain_rows(4) + bad)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    pairs = data.read_pairs("someone/pairs", split="test[:5]")
    assert calls == [("someone/pairs", "test[:5]")]
    assert pairs[:4] == [(r["prompt"], r["chosen"], r["rejected"]) for r in plain_rows(4)]
    with pytest.raises(data.UsageError, match="someone/pairs, row 4: prompt, chosen and rejected .* rejected is null"):
        data.read_pairs("someone/pairs", split="test")
    test, train = (experiment.Config(model="m", data="someone/pairs", data_split=s) for s in ("test", "train"))
    assert models.sft_cache(test, 0, 1e-5) != models.sft_cache(train, 0, 1e-5)


# -----------------------------------------------------------------------------
# every bad input: one error line, exit status 2, in both tools


GOOD = dict(prompt="thoughts on dark water :", chosen=" the plot was great .", rejected=" the plot was dull .")
TALK = dict(prompt=[{"role": "user", "content": "thoughts on dark water"}],
            chosen=[{"role": "assistant", "content": "the plot was great ."}],
            rejected=[{"role": "assistant", "content": "the plot was dull ."}])


def bad_inputs(tmp_path):
    """(the flags, what the error line says) of each bad input."""
    chat = model_folder(tmp_path / "chat", word_chat_tokenizer())
    plain = task.build_tokenizer()
    plain_folder = model_folder(tmp_path / "plain", plain)
    strict = word_chat_tokenizer()  # a template that checks the roles, as many do
    strict.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system "
                            "turns') }}{% endif %}{{ m['content'] }}{% endfor %}")
    strict_folder = model_folder(tmp_path / "strict", strict)
    lines = lambda name, *rows: write_jsonl(tmp_path / name, rows)  # noqa: E731
    sys_turn = dict(TALK, prompt=[{"role": "system", "content": "be brief"}] + TALK["prompt"])
    return [
        (["--data", lines("a.jsonl", TALK, dict(TALK, chosen=[{"role": "assistant"}]))],
         "a.jsonl, line 2: chosen, message 1: needs a string role and a string content"),
        (["--data", lines("b.jsonl", GOOD, TALK)], "b.jsonl, line 2: conversational, but"),
        (["--data", lines("c.jsonl", dict(TALK, prompt="thoughts on dark water"), TALK)],
         "c.jsonl, line 1: prompt, chosen and rejected must be strings (standard) or lists of messages"),
        (["--data", lines("d.jsonl", GOOD, dict(chosen="great .", rejected="dull ."))],
         "d.jsonl, line 2: chosen and rejected share no opening"),
        (["--data", write_parquet(tmp_path / "e.parquet", [dict(prompt="a", chosen="b")] * 3)],
         "e.parquet, row 0: needs the keys prompt, chosen and rejected (or chosen and rejected alone"),
        (["--data", write_parquet(tmp_path / "f.parquet", [GOOD, dict(GOOD, prompt=None)])],
         "f.parquet, row 1: prompt, chosen and rejected must be strings (standard) or lists of messages "
         "(conversational), all of one form; prompt is null"),
        (["--data", lines("g.jsonl", TALK, TALK)], "conversational --data needs a --model with a chat template; the "
                                                  "built-in tiny model has none"),
        (["--data", lines("h.jsonl", TALK, TALK), "--model", plain_folder], "has no chat template"),
        (["--data", lines("i.jsonl", TALK, sys_turn), "--model", strict_folder],
         "i.jsonl, line 2: the chat template refuses the row: no system turns"),
        (["--data", lines("j.jsonl", TALK, TALK), "--model", chat, "--chat-template"],
         "--chat-template wraps plain-text"),
        (["--data", "someone/pairs"], "cannot load --data 'someone/pairs' (split train): Couldn't reach"),
        (["--data", lines("k.jsonl", GOOD, GOOD), "--data-split", "test"],
         "--data-split test applies to a hub dataset"),
        (["--data", str(tmp_path / "gone.parquet")], "not found"),
    ]


def test_each_bad_input_is_one_error_line_naming_the_row_and_the_field_and_exit_2(tmp_path, capsys):
    """rddpo.py (experiment.main): a message without content, rows of two forms, a text prompt before messages, no
    shared opening, a missing column, a null prompt, conversational data on a model without a chat template (the tiny
    one, a folder), a template that raises, --chat-template on conversational rows, an unreachable hub dataset,
    --data-split on a file, a missing file: each is one `error:` line before any work, exit status 2."""
    cases = bad_inputs(tmp_path)
    capsys.readouterr()  # what building the model folders printed (save_pretrained's progress bars)
    for args, says in cases:
        assert experiment.main([*args, "--out", str(tmp_path / "out")]) == 2, says
        one_error_line(capsys, says)
    assert experiment.main(["--data-split", "test", "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "--data-split applies to a hub dataset given to --data")
    assert not (tmp_path / "out").exists()


def test_rddpo_trl_says_the_same_error_lines_with_exit_2(tmp_path, capsys):
    """tools/rddpo_trl.py --data: the same lines (data.read_pairs is shared), exit status 2, no traceback."""
    cases = bad_inputs(tmp_path)[::3]
    capsys.readouterr()  # what building the model folders printed (save_pretrained's progress bars)
    long = dict(GOOD, prompt=GOOD["prompt"] * 14)  # 70 tokens: no room in 64
    cases += [(["--data", write_jsonl(tmp_path / "long.jsonl", [long] * 12), "--max-length", "64"],
               "larger than the 0 training pairs whose prompt fits in --max-length 64"),
              (["--data", write_jsonl(tmp_path / "held.jsonl", [long] + [GOOD] * 11), "--max-length", "64",
                "--batch-size", "2", "--seed", "0"], "no held-out prompt fits in --max-length 64")]
    for args, says in cases:
        assert rddpo_trl.main([*args, "--out", str(tmp_path / "out")]) == 2, says
        one_error_line(capsys, says)


# -----------------------------------------------------------------------------
# both tools on conversational data


def test_the_pool_and_the_held_out_prompts_are_the_rendered_prompts(tmp_path):
    """experiment.prepare on conversational pairs (p-DPO): every forward-KL pool row's prompt ids, and every
    held-out prompt, are the tokens of a rendered prompt of the pairs, the ids TRL's trainer gives the prompt
    (test_conversational_pairs_become_the_tokens_trls_dpo_trainer_trains_on); the training pairs' tokens end with
    the template's closing, no eos."""
    folder = model_folder(tmp_path / "model", word_chat_tokenizer())
    path = write_jsonl(tmp_path / "chat.jsonl", chat_rows(12))
    cfg = models.model_defaults(experiment.Config(model=folder, data=path, methods="p-dpo", steps=2, batch_size=2,
                                                  max_new_tokens=4, max_length=128))
    pairs = data.user_pairs(cfg)
    reference, tokenizer = models.load_reference(cfg, "cpu")
    prepared, ev, _, _ = experiment.prepare(reference, tokenizer, cfg, None, 0, "cpu", pairs)
    rendered = {tuple(tokenizer(p, add_special_tokens=False).input_ids) for p, _, _ in pairs}
    pool = prepared.pool
    for ids, real, resp in zip(pool.input_ids, pool.attention_mask.bool(), pool.response_mask.bool()):
        assert tuple(ids[real & ~resp].tolist()) in rendered
    assert set(ev.prompts) <= {p for p, _, _ in pairs} and ev.prompts[0].startswith("<|im_start|>user")
    end, tokens = tokenizer.convert_tokens_to_ids("<|im_end|>"), prepared.tokens
    last = [ids[resp][-1].item() for ids, resp in zip(tokens.input_ids, tokens.response_mask.bool())]
    assert last == [end] * len(last) and not tokens.truncated.any()


def test_both_tools_train_on_a_conversational_file_and_an_implicit_prompt_parquet(tmp_path, capsys):
    """a conversational JSON-lines file and a parquet file of implicit prompts (plain text), each through rddpo.py
    --data and rddpo_trl.py --data on a small model folder with a chat template, at a tiny budget: every run ends,
    rddpo.py's numbers are finite and its samples show the rendered prompts, TRL's last line is finite."""
    folder = model_folder(tmp_path / "model", word_chat_tokenizer())
    rng = np.random.default_rng(1)
    implicit = [dict(chosen=p + task.make_review(rng), rejected=p + task.make_review(rng))
                for p in task.make_prompts(rng, 12, task.TITLES)]
    files = [write_jsonl(tmp_path / "chat.jsonl", chat_rows(12)),
             write_parquet(tmp_path / "implicit.parquet", implicit)]
    budget = ["--model", folder, "--steps", "2", "--batch-size", "2", "--rm-steps", "2", "--ensemble", "2",
              "--max-length", "64", "--max-new-tokens", "4"]
    for n, path in enumerate(files):
        out = str(tmp_path / f"runs{n}")
        assert experiment.main(["--data", path, "--methods", "e-dpo", "--eval-points", "1", "--device", "cpu",
                                "--out", out, *budget]) == 0
        results = json.load(open(os.path.join(out, "run-001", "results.json")))
        assert results["run"]["status"] == "finished"
        assert all(np.isfinite(v) for v in results["runs"][0].values() if isinstance(v, float))
        shown = [json.loads(line)["prompt"] for line in open(os.path.join(out, "run-001", "samples.jsonl"))]
        assert all(p.startswith("<|im_start|>user") for p in shown) == (n == 0) and shown
        printed = capsys.readouterr().out.split("samples, ")[1].splitlines()[1:]  # each prompt, then its responses
        questions = [line.strip() for line in printed if line.startswith("  ") and not line.startswith("    ")]
        asked = [report.shorten(" | ".join(m["content"] for m in row["prompt"])) for row in chat_rows(12)]
        assert questions and all((q in asked) == (n == 0) and "im_start" not in q for q in questions)
        assert rddpo_trl.main(["--data", path, "--method", "e-dpo", "--log-every", "1", "--out", out, *budget]) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert last.startswith("e-dpo through TRL") and "nan" not in last and "inf" not in last
