"""models.py: the language models around the method.

The tiny GPT-2 built in code, a model from the Hugging Face hub or a folder, the reference pi_ref (fine-tuned on
the task's reviews, or on your data's chosen responses, and cached), and sampling with a key-value cache.
"""
import copy
import dataclasses
import gc
import hashlib
import json
import os
import re
import shutil

import numpy as np
import torch

from harness.cli import UsageError, hub_reachable, quiet_transformers
from harness.data import split_pairs
from rddpo import all_logps, batch_tensors, fits, lora_config, pad, progress, seed_everything, tokenize
from harness.task import build_tokenizer, longest_task_tokens, reviews


# -----------------------------------------------------------------------------
# 1. models: built in code, or from the hub or a folder, and cached


def build_tiny_gpt2(tokenizer, n_layer, n_embd, n_head, n_positions):
    from transformers import GPT2Config, GPT2LMHeadModel
    eos = tokenizer.eos_token_id
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd,
                                      n_layer=n_layer, n_head=n_head, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos))


def load_pretrained(name, max_length):
    """(model, tokenizer) from_pretrained, with one clear line instead of a minute of retries when the hub is
    unreachable; checks that max_length fits the model's context, and pads with eos where there is no pad token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    quiet_transformers()
    if name.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(name)):
        raise UsageError(f"--model {name!r}: no such folder; give a model folder, a hub name such as gpt2, or tiny")
    name, local = os.path.expanduser(name), dict(local_files_only=True)
    if not os.path.isdir(name):
        try:  # already downloaded, whole? then load it without asking the hub
            AutoModelForCausalLM.from_pretrained(name, **local), AutoTokenizer.from_pretrained(name, **local)
        except OSError:
            local = {}
        if not local and (os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable()):
            raise UsageError(f"cannot load --model {name!r}: it is not a local folder, not in the Hugging Face cache, and the "
                             "hub cannot be reached; run offline with the default (no --model) or pass a local path")
    try:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(name, **local), AutoTokenizer.from_pretrained(name, **local)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load --model {name!r}: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:  # gpt-2 has no pad token: pad with eos, masked out everywhere
        tokenizer.pad_token = tokenizer.eos_token
    context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if context and max_length > context:
        raise UsageError(f"--max-length {max_length} exceeds the model's context of {context} tokens; lower it")
    return named(model, os.path.abspath(name) if os.path.isdir(name) else name), tokenizer


def named(model, origin):
    """the model, its name_or_path set to `origin`: the hub name or absolute folder that from_pretrained reads it
    from again. LoRA adapters put on it (rddpo.new_policy, TRL's peft_config) save that name as their
    adapter_config.json's base_model_name_or_path, so that peft.AutoPeftModelForCausalLM.from_pretrained(their
    folder) rebuilds the policy on this very model, from any working directory."""
    model.name_or_path = model.config.name_or_path = origin
    return model


def slug(name):
    """a model name or path as one folder name: gpt2 -> gpt2, ./models/my-lm -> models-my-lm."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def cached_model(path, build):
    """(model, tokenizer) from the folder `path`, or from build() saved there. the folder is written whole
    under a temporary name, then renamed, so a half-written cache is never read; when two runs build it
    at once, the second keeps the first one's copy. either way the model is named by the folder (named)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    quiet_transformers()
    if not os.path.isfile(os.path.join(path, "config.json")):
        model, tokenizer = build()
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, path)
            return named(model, os.path.abspath(path)), tokenizer
        except OSError:  # another run renamed its copy into place first
            pass
        finally:  # renamed, or left behind by an error or ctrl-c: no temporary folder stays
            shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(path)
    return named(model, os.path.abspath(path)), AutoTokenizer.from_pretrained(path)


# -----------------------------------------------------------------------------
# 2. the reference pi_ref: a supervised model


TASK_SFT_STEPS, QUICK_SFT_STEPS = 600, 150  # --sft-steps on the built-in task, and under --quick (tiny model)
# choice: a pretrained --model learns the task's reviews in tens of steps of 16 reviews (docs/METHOD.md#pretrained)
MODEL_SFT_STEPS = 60
MODEL_SFT_BATCH = 16
SFT_BATCH = 64  # the tiny model's reviews a step, which it learns from scratch


def sft_steps(cfg):
    """--sft-steps, or its default: on the task's reviews 600 for the tiny model (150 under --quick, also for a
    Config built in code with quick=True) and 60 for a --model; none on --data with a --model."""
    if cfg.sft_steps is not None:
        return cfg.sft_steps
    if cfg.model != "tiny":
        return 0 if cfg.data else MODEL_SFT_STEPS
    return QUICK_SFT_STEPS if cfg.quick else TASK_SFT_STEPS


def load_reference(cfg, device, check=lambda tokenizer: None):
    """the frozen reference pi_ref and its tokenizer. on the built-in task the tiny gpt-2 built in code, or a hub model
    or folder, is first fine-tuned for --sft-steps on the task's reviews (pi_ref is a supervised model), cached in --out
    by model and settings; --max-length and check(tokenizer) run first. choice: learning rate 3e-3 for the tiny model
    (from scratch); for a --model 1e-4, or 1e-3 for LoRA adapters (--lora), merged into the weights after."""
    tiny, steps = cfg.model == "tiny", sft_steps(cfg)
    model, tokenizer = (None, build_tokenizer()) if tiny else load_pretrained(cfg.model, cfg.max_length)
    if (tiny or not cfg.data) and cfg.max_length < (need := longest_task_tokens(tokenizer)):  # fine-tuning reads it too
        raise UsageError(f"--max-length {cfg.max_length} cannot hold the task's longest prompt and review "
                         f"({need} tokens); raise it")
    check(tokenizer)
    if not tiny and (cfg.data or steps == 0):  # your data (fine-tuned per seed, data_reference), or the model as it is
        return model.to(device).eval(), tokenizer
    batch, lr = (SFT_BATCH, 3e-3) if tiny else (MODEL_SFT_BATCH, 1e-3 if cfg.lora else 1e-4)
    def build():
        seed_everything(1234)
        base = build_tiny_gpt2(tokenizer, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.max_length) if tiny else model
        return pretrain(base.to(device), tokenizer, lambda rng: reviews(rng, batch), steps, device, lr=lr,
                        micro_batch=cfg.micro_batch, lora=cfg.lora), tokenizer
    name = f"L{cfg.n_layer}-E{cfg.n_embd}-H{cfg.n_head}" if tiny else \
        f"{slug(cfg.model)}-B{batch}" + (f"-lora{cfg.lora}" if cfg.lora else "")
    if not tiny:  # the base's loss on reviews the fine-tuning never sees, before it is fine-tuned
        held = text_batch(tokenizer, reviews(np.random.default_rng(4321), batch), device)
        before = held_out_loss(model.to(device), held, cfg.micro_batch)
    path = os.path.join(cfg.out, f"reference-{name}-T{cfg.max_length}-S{steps}")
    if not tiny and os.path.isfile(os.path.join(path, "config.json")):  # cached: the base is done with
        model = None  # freed before the cached copy loads, not held beside it (on SmolLM2, 0.54 GB)
        gc.collect()  # and any part of it held in a reference cycle, now rather than at the collector's next pass
    model, tokenizer = cached_model(path, build)
    if not tiny:  # as --data's fine-tuning says, cached or not
        print(f"pi_ref fine-tuned on the task's reviews ({path}, {steps} steps of {batch} at rate {lr:.2g}): held-out "
              f"loss {before:.3f} -> {held_out_loss(model.to(device), held, cfg.micro_batch):.3f} nats per token")
    return model.to(device).eval(), tokenizer


def next_token_steps(model, batch, steps, lr, desc, micro_batch=None):
    """steps of AdamW on the next-token loss of batch(step) = (input_ids, attention_mask, labels), labels -100 where
    a token is not learnt; the model comes back in eval mode. pretrain and fine_tune are this loop. with micro_batch,
    at most that many rows go through the model at once and their gradients add up to the whole batch's: each
    micro-batch's mean token loss weighted by its share of the batch's learnt tokens."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in progress(range(steps), desc):
        opt.zero_grad()
        for loss in token_losses(model, batch(step), micro_batch):
            loss.backward()
        opt.step()
    return model.eval()


def pretrain(model, tokenizer, texts, steps, device, lr=3e-3, micro_batch=None, lora=0):
    """next-token training on texts(rng), a batch of texts per step (rng: a fixed generator), each ending in eos.
    with lora (a rank), LoRA adapters train and are then merged into the weights: a plain model, fine-tuned without
    AdamW's two copies of every weight."""
    rng = np.random.default_rng(1234)
    batch = lambda step: text_batch(tokenizer, texts(rng), device)  # noqa: E731
    if lora:
        from peft import get_peft_model
        model = get_peft_model(model, lora_config(lora))
    model = next_token_steps(model, batch, steps, lr, "fine-tune pi_ref on the task's reviews", micro_batch)
    return model.merge_and_unload().requires_grad_(True) if lora else model  # plain again, every weight trainable


def text_batch(tokenizer, texts, device):
    """texts, each ending in eos -> (input_ids, attention_mask, labels), the labels -100 on the padding."""
    rows = [tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in texts]
    ids, mask = (x.to(device) for x in pad(rows, tokenizer.eos_token_id))  # (B, T) each
    return ids, mask, ids.masked_fill(mask == 0, -100)


def token_losses(model, batch, micro_batch=None):
    """the next-token loss of a batch (input_ids, attention_mask, labels) as one loss per micro-batch of at most
    micro_batch rows (None: one, the whole batch): its mean token loss times its share of the batch's learnt
    tokens, so that they add up to the whole batch's mean, and so do their gradients."""
    ids, mask, labels = batch
    learnt = (labels[:, 1:] != -100).sum()  # the tokens the loss averages over (labels shift by one)
    for part in torch.arange(len(ids)).split(micro_batch or len(ids)):
        share = (labels[part, 1:] != -100).sum() / learnt
        yield model(input_ids=ids[part], attention_mask=mask[part], labels=labels[part]).loss * share


@torch.no_grad()
def held_out_loss(model, batch, micro_batch=None):
    """the mean next-token loss of a batch (input_ids, attention_mask, labels), in eval mode."""
    return sum(token_losses(model.eval(), batch, micro_batch)).item()


def data_reference(base, tokenizer, cfg, pairs, seed, device):
    """--data with --sft-steps on a --model: pi_ref is `base` fine-tuned on this seed's training split's chosen
    responses (the held-out pairs never), cached in --out under a key of the model, the data file's content, the seed
    and the settings (sft_cache). -> (pi_ref, what the fine-tuning did: the token loss
    on the training chosen responses and the held-out chosen log-prob, before and after). choice: the learning rate is
    the policy's default for the model (learning_rate), whatever --lr says. anything else: (base, {})."""
    if not (pairs and cfg.model != "tiny" and cfg.sft_steps):
        return base, {}
    lr = learning_rate(dataclasses.replace(cfg, lr=None, lora=0), base)  # every weight fine-tunes
    fit = [[(p, c) for p, c, _ in part if fits(tokenizer, p, cfg.max_length)] for part in split_pairs(pairs, seed)]
    rows = [tokenize(tokenizer, *zip(*part), cfg.max_length) for part in fit]  # training, held-out chosen: (N, T) each
    def build():  # seeded: dropout's draws must not depend on what ran before in this process
        seed_everything(1234 + seed)
        return fine_tune(copy.deepcopy(base), rows[0], cfg.sft_steps, lr, cfg.batch_size, seed, device,
                         cfg.micro_batch), tokenizer
    reference = cached_model(sft_cache(cfg, seed, lr), build)[0].to(device).eval()
    def measure(model):
        train, held = (all_logps(model, part, np.arange(len(part.input_ids)), device) for part in rows)
        return dict(loss=-train.sum().item() / rows[0].response_mask.sum().item(), heldout_logp=held.mean().item())
    before, after = measure(base), measure(reference)
    print(f"seed {seed}: pi_ref fine-tuned for {cfg.sft_steps} steps at rate {lr:.2g} on the chosen responses of "
          f"{len(fit[0])} training pairs: their loss {before['loss']:.3f} -> {after['loss']:.3f} nats per token; "
          f"held-out chosen log-prob {before['heldout_logp']:.1f} -> {after['heldout_logp']:.1f} nats ({len(fit[1])} pairs)")
    return reference, dict(steps=cfg.sft_steps, lr=lr, pairs=len(fit[0]), heldout_pairs=len(fit[1]),
                           **{f"{k}_{when}": v for when, m in (("before", before), ("after", after)) for k, v in m.items()})


def fine_tune(model, tokens, steps, lr, batch_size, seed, device, micro_batch=None):
    """supervised fine-tuning on the responses of `tokens` (rddpo.Tokens, right-padded): each step the mean
    next-token loss over the response tokens of batch_size rows, drawn in a fresh random order each pass."""
    rng, n = np.random.default_rng([seed, 5]), len(tokens.input_ids)
    order = np.concatenate([rng.permutation(n) for _ in range(steps * batch_size // n + 1)])  # passes over the rows
    def batch(step):
        ids, mask, resp = batch_tensors(tokens, order[step * batch_size:(step + 1) * batch_size], device)  # (B, T) each
        return ids, mask, ids.masked_fill(resp == 0, -100)
    return next_token_steps(model, batch, steps, lr, "fine-tune pi_ref on your chosen responses", micro_batch)


def sft_cache(cfg, seed, lr):
    """the folder of --data's fine-tuned pi_ref for one seed: named by the model and a key of everything it depends
    on (the model, the data file's bytes or a hub dataset's name and split, --chat-template, the seed whose training
    split it saw and the settings). a model folder converted again in place keeps its name: delete the cache then,
    as for the task's reference."""
    if os.path.isfile(cfg.data):
        with open(cfg.data, "rb") as f:
            data = hashlib.sha256(f.read()).hexdigest()
    else:  # a hub dataset (data.read_pairs): its name and split
        data = f"{cfg.data} {cfg.data_split}"
    key = dict(model=cfg.model, data=data, chat_template=cfg.chat_template, seed=seed, steps=cfg.sft_steps, lr=lr,
               batch_size=cfg.batch_size, max_length=cfg.max_length, dtype=cfg.dtype)  # bfloat16 autocast trains it too
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(cfg.out, f"reference-{slug(cfg.model)}-sft-{digest}")


# -----------------------------------------------------------------------------
# 3. sampling with a key-value cache


@dataclasses.dataclass
class Sampled:
    """responses drawn from a model, as text and as the exact token ids drawn."""
    texts: list         # the responses decoded, without eos
    prompt_ids: list    # each prompt's token ids
    response_ids: list  # each response's token ids, ending in eos unless cut off at max_new_tokens


def sample(model, tokenizer, prompts, max_new_tokens, max_length, device, desc="sample", batch_size=64):
    """one response per prompt, with a key-value cache. choice: temperature 1, no top-k or top-p, so these are
    samples of pi itself. -> Sampled"""
    out, eos = Sampled([], [], []), tokenizer.eos_token_id
    for i in progress(range(0, len(prompts), batch_size), desc):
        prompt_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts[i:i + batch_size]]
        n_new = min(max_new_tokens, max_length - max(map(len, prompt_ids)))
        for p, row in zip(prompt_ids, sample_batch(model, prompt_ids, eos, n_new, device)):
            # the text is what follows the prompt's own decoding, so that prompt + text re-tokenises
            out.texts.append(tokenizer.decode(p + [t for t in row if t != eos])[len(tokenizer.decode(p)):])
            out.prompt_ids.append(p)
            out.response_ids.append(row)
    return out


def sample_batch(model, prompt_ids, eos, n_new, device):
    """up to n_new tokens for each prompt of a batch (lists of ids): the response ids, each ending in eos unless cut off."""
    with torch.no_grad():
        ids, mask = (x.to(device) for x in pad(prompt_ids, eos, side="left"))  # (B, Tp)
        done, new, cache = torch.zeros(len(ids), dtype=torch.bool, device=device), [], None  # (B,)
        keep = {"logits_to_keep": 1}  # (B, 1, V) logits: not the whole prompt's (B, Tp, V)
        for _ in range(n_new):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]  # (B, t): real tokens only
            inputs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
            try:
                step = model(**inputs, **keep)
            except TypeError as error:  # a model whose forward lacks the argument (some remote code): every position's
                if cache is not None or "logits_to_keep" not in str(error):  # only at the first step
                    raise
                keep = {}
                step = model(**inputs)
            nxt = torch.multinomial(step.logits[:, -1].float().softmax(-1), 1).squeeze(-1).masked_fill(done, eos)  # (B,)
            ids, cache, new = nxt[:, None], step.cache, new + [nxt]  # the cache holds what came before
            mask = torch.cat([mask, (~done).long()[:, None]], 1)  # (B, t+1)
            done |= nxt == eos
            if done.all():
                break
    return [row[:row.index(eos) + 1] if eos in row else row for row in torch.stack(new, 1).tolist()]


def learning_rate(cfg, model):
    """--lr, or its default. choice: 1e-4 for the tiny model at any size (the rate its results were made at); for a
    --model, 1e-4 x 64 / its width (hidden size), the rate that suits the 64-wide tiny model scaled down as the
    width grows: Adam moves every weight by about the rate, and each unit sums `width` such moves; x 10 for LoRA."""
    if cfg.lr is not None:
        return cfg.lr
    tiny = cfg.model == "tiny"
    rate = 1e-4 if tiny else 1e-4 * 64 / (getattr(model.config, "hidden_size", None) or model.config.n_embd)
    # choice: LoRA adapters move the model about 10x less per step at one rate (measured: the reference's fine-tuning
    # on SmolLM2 reached the same loss at 1e-3 with adapters as at 1e-4 with every weight), so they take 10x the rate
    return rate * 10 if cfg.lora else rate


def model_defaults(cfg):
    """the settings whose default depends on the model, as the run uses them. choice (docs/METHOD.md#pretrained):
    the tiny model trains every weight of one copy per policy and reward model, all rows at once, as its published
    numbers were made; a --model trains LoRA adapters of rank 16 (--lora), reward-model heads on pi_ref's frozen
    features (--reward-models heads) and 8 sequences at a time (--micro-batch)."""
    tiny = cfg.model == "tiny"
    return dataclasses.replace(
        cfg, lora=(0 if tiny else 16) if cfg.lora is None else cfg.lora,
        reward_models=("copies" if tiny else "heads") if cfg.reward_models == "auto" else cfg.reward_models,
        micro_batch=(None if tiny else 8) if cfg.micro_batch is None else cfg.micro_batch)
