"""
rddpo_trl: reward-distilled DPO (d-DPO, e-DPO, p-DPO) as a TRL DPOTrainer, pinned to trl==1.16.0.

The method lives in rddpo.py; this file only plugs its losses into TRL, in three steps:

  1. add_reward_scores(dataset, reward_models, tokenizer)  scores every pair once with K reward models, as the
     columns rm_chosen / rm_rejected (K floats each), so that no reward model is in memory while training.
  2. sample_pool(reference, tokenizer, prompts, n)         the forward-KL pool: n responses drawn from pi_ref once.
  3. DistilledDPOTrainer(model, args=DistilledDPOConfig(method="e-dpo", gamma=0.1, ...), train_dataset=scored,
                         pool_dataset=pool, processing_class=tokenizer).train()

    python tools/rddpo_trl.py                    # offline: e-DPO through TRL on the cached tiny reference, 12 s on 2 cores
    python tools/rddpo_trl.py --method p-dpo --steps 30
    python tools/rddpo_trl.py --data pairs.jsonl --model PATH --sft-steps 20   # your pairs, on pi_ref fine-tuned on them
    python tools/rddpo_trl.py --model PATH      # a --model trains LoRA adapters (TRL's peft_config), as rddpo.py does
    python -m pytest tests/test_trl.py -q        # the trainer's loss and gradients equal rddpo.py's step, to 1e-5

Several GPUs (needs the Hugging Face hub or a local copy of the model; every process trains on its own B pairs and
its own B pool responses; the data is prepared once, by the main process, and read from --out by the others):

    accelerate launch --num_processes 8 tools/rddpo_trl.py --model gpt2 --steps 150 --batch-size 16

LoRA: DistilledDPOTrainer(model, ..., peft_config=rddpo.lora_config(16)) trains adapters, and pi_ref is the model
with them off, for the pairs (TRL's reference log-probs) and the forward-KL pool (adapters_off) alike.

TRL internals used (trl 1.16.0; they may move in other versions):
  DPOTrainer._prepare_dataset          tokenises the pairs, appending eos to plain text and rendering conversational
                                       pairs in the chat template (not overridden; harness.data renders them alike)
  DataCollatorForPreference            subclassed to carry the score columns (ScoredPreferenceCollator)
  DPOTrainer._precompute_ref_logps     precompute_ref_log_probs=True: ref_chosen_logps / ref_rejected_logps columns
  DPOTrainer.compute_ref_log_probs     overridden to drop the score columns from the model inputs
  DPOTrainer._set_signature_columns_if_needed  overridden to keep the score columns
  DPOTrainer.compute_loss              overridden: the whole loss (DPOTrainer._compute_loss is not called)
  DPOTrainer._metrics, ._total_train_tokens, ._tokenizer, .ref_model, .beta   read or appended to
  trl.trainer.utils.add_fused_lm_head  DPOTrainer.__init__ patches the model so that `model(..., labels=labels,
                                       fused_lm_head=True)` returns per-token log_probs (0 where the label is -100),
                                       entropy, mean_logits and is_top1 without building the logits
"""
import argparse
import copy
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers.trainer_callback import TrainerCallback
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

import rddpo
from harness import cli, experiment, models, scorers, task
from harness.data import (FIELDS, check_data, implicit_prompt, render_conversation, split_pairs, template_kwargs,
                          user_pairs, users_question)

METHODS = ("d-dpo", "e-dpo", "p-dpo")
SCORES = ("rm_chosen", "rm_rejected")  # the score columns: K floats per pair each
TEMPLATE = ("tools", "chat_template_kwargs")  # columns that TRL passes to the chat template (data.template_kwargs)

# -----------------------------------------------------------------------------
# 1. scoring once, as dataset columns


def as_dataset(pairs):
    """a datasets.Dataset or a list of dicts in one of TRL's preference forms (prompt, chosen and rejected as text,
    or as lists of {"role", "content"} messages; without a prompt column, the shared opening of chosen and rejected
    is the prompt) -> Dataset with the prompt explicit (harness.data.implicit_prompt: TRL's own rule), or a one-line
    error."""
    data = pairs if isinstance(pairs, Dataset) else Dataset.from_list(list(pairs))
    missing = [c for c in FIELDS[1:] if c not in data.column_names]
    if data.num_rows == 0:
        raise ValueError("the preference data is empty")
    if missing:
        raise ValueError(f"the preference data has no {', '.join(missing)} column; TRL's format is prompt (or none: "
                         f"implicit), chosen, rejected, as text or as lists of messages")
    return data if "prompt" in data.column_names else data.map(explicit_prompt, with_indices=True)


def explicit_prompt(row, i):
    """a row without a prompt, with chosen and rejected's shared opening as its prompt (implicit_prompt)."""
    prompt, chosen, rejected = implicit_prompt(row["chosen"], row["rejected"])
    if not prompt:
        raise ValueError(f"row {i}: chosen and rejected share no opening, so the implicit prompt is empty")
    return dict(prompt=prompt, chosen=chosen, rejected=rejected)


def as_text(data, tokenizer):
    """the pairs of a Dataset (as_dataset's) as text -> (prompts, chosen, rejected) lists: conversational rows
    rendered through the tokenizer's chat template as TRL's DPOTrainer renders them (their responses ChatTurns,
    which rddpo.encode ends with the template's closing, not eos), plain text as it is."""
    if not isinstance(data[0]["chosen"], list):
        return tuple(list(data[c]) for c in FIELDS)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the preference data is conversational, but the tokenizer has no chat template to render it")
    texts = [render_conversation(tokenizer, *(row[c] for c in FIELDS), **template_kwargs(row)) for row in data]
    return tuple(list(x) for x in zip(*texts))


@torch.no_grad()
def score_texts(rm, tokenizer, prompts, responses, max_length, device, batch_size):
    """one reward model's score of each (prompt, response) -> (N,) on the cpu. an rddpo.RewardModel reads the
    same tokens as rddpo.py (prompt, response, eos: rddpo.tokenize and rddpo.score); any other model is a
    transformers sequence classifier, given the text as its tokenizer encodes it, its first logit the score."""
    for i, p in enumerate(prompts):
        if len(tokenizer(p, add_special_tokens=False).input_ids) >= max_length:
            raise ValueError(f"pair {i % (len(prompts) // 2)}: the prompt alone fills max_length={max_length}; "
                             f"drop the pair or raise max_length")
    if isinstance(rm, rddpo.RewardModel):
        return rddpo.score(rm.to(device).eval(), rddpo.tokenize(tokenizer, prompts, responses, max_length), device,
                           batch_size)
    out, texts = [], [p + r for p, r in zip(prompts, responses)]
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        out.append(rm.to(device).eval()(**enc).logits[:, 0].float().cpu())  # (b,)
    return torch.cat(out)


def add_reward_scores(pairs, reward_models, tokenizer=None, max_length=1024, device="cpu", batch_size=64):
    """the pairs with each reward model's score of the chosen and the rejected response as the columns rm_chosen
    and rm_rejected, K floats each (K = len(reward_models): 1 for d-DPO, the family for e-DPO). a reward model is a
    model (read with `tokenizer`) or a (model, its tokenizer) pair. every row is scored in batches, once."""
    data = as_dataset(pairs)
    if not reward_models:
        raise ValueError("no reward models given; pass a list of one (d-DPO) or several (e-DPO)")
    scores = []
    for rm in reward_models:
        rm, tok = rm if isinstance(rm, tuple) else (rm, tokenizer)
        if tok is None:
            raise ValueError("a reward model needs a tokenizer: pass tokenizer= or (model, tokenizer) pairs")
        prompts, chosen, rejected = as_text(data, tok)  # conversational rows in this tokenizer's chat template
        # the chosen rows, then the rejected rows, as rddpo.tokenize_pairs
        scores.append(score_texts(rm, tok, prompts * 2, chosen + rejected, max_length, device, batch_size))  # (2N,)
    chosen, rejected = torch.stack(scores).chunk(2, dim=1)  # (K, N) each
    data = data.remove_columns([c for c in SCORES if c in data.column_names])
    return data.add_column(SCORES[0], chosen.T.tolist()).add_column(SCORES[1], rejected.T.tolist())


# -----------------------------------------------------------------------------
# 2. the forward-KL pool: responses drawn from pi_ref once, before training


def sample_pool(reference, tokenizer, prompts, n, max_new_tokens, max_length, seed, device):
    """n responses drawn from pi_ref on the prompts in turn, as experiment.kl_pool draws them (same seed, same sampler:
    models.sample), kept as the exact token ids drawn -> Dataset of prompt_ids, completion_ids (eos included unless
    cut off at max_new_tokens). experiment.kl_pool takes n = steps * M (rddpo.pool_rows_per_step)."""
    rddpo.seed_everything(seed + 11)  # experiment.kl_pool's seed
    drawn = models.sample(reference, tokenizer, [prompts[i % len(prompts)] for i in range(n)], max_new_tokens,
                          max_length, device, "forward-KL pool from pi_ref")
    return Dataset.from_dict(dict(prompt_ids=drawn.prompt_ids, completion_ids=drawn.response_ids))


def pool_tokens(pool, tokenizer, max_length):
    """the pool as rddpo.Tokens (P, T), right-padded; a pool of texts (prompt, completion) is tokenised like the
    pairs (rddpo.encode: the prompt, then the completion and eos), a pool of ids is cut at max_length."""
    if "completion_ids" in pool.column_names:
        rows = [(p, c[:max(0, max_length - len(p))]) for p, c in zip(pool["prompt_ids"], pool["completion_ids"])]
    elif "completion" in pool.column_names:
        rows = [rddpo.encode(tokenizer, p, c, max_length) for p, c in zip(pool["prompt"], pool["completion"])]
    else:
        raise ValueError("pool_dataset needs prompt_ids and completion_ids (sample_pool) or prompt and completion")
    if any(r is None or not r[1] for r in rows):
        raise ValueError(f"a pool row's prompt fills max_length={max_length}; sample the pool on shorter prompts")
    return rddpo.token_rows([r[0] for r in rows], [r[1] for r in rows], tokenizer.pad_token_id)


# -----------------------------------------------------------------------------
# 3. the trainer


@dataclass
class DistilledDPOConfig(DPOConfig):
    """DPOConfig plus the method and the weight of the forward-KL term. rddpo.py's log-prob convention (a SUM over
    the response's tokens, prompt excluded, its closing eos or end of turn counted) is TRL 1.16's own with these
    options at their defaults, so the trainer refuses others: ld_alpha=None (no length-desensitised sum),
    use_weighting=False, padding_free=False and truncation_mode="keep_start" (rddpo cuts the response's end at
    max_length). plain-text data: TRL's _prepare_dataset appends eos to chosen and rejected, as rddpo.encode does;
    conversational data: TRL renders it through the chat template and appends nothing, and
    harness.data.render_conversation writes the same text, its responses ChatTurns, to which rddpo.encode adds no eos
    either. compute_loss sums TRL's per-token log-probs itself (response_logps). loss_type is not read. where TRL's
    tokens can still differ from rddpo.encode's: plain text on a tokenizer that adds bos (TRL tokenises it with
    special tokens, rddpo without; a chat template writes its bos itself) and a bpe merge across the prompt-response
    boundary (TRL moves the boundary back, rddpo tokenises the response apart); neither happens with gpt-2's
    tokenizer, the task's word-level one, or a chat template whose reply opens after a special token or a newline."""
    method: str = field(default="e-dpo", metadata={"help": "d-dpo, e-dpo or p-dpo"})
    gamma: float = field(default=0.1, metadata={"help": "weight of the forward-KL term in e-DPO and p-DPO"})
    pool_batch: int = field(default=None, metadata={"help": "M, pool rows per step and process (rddpo.py's "
                                                    "--pool-batch); None: rddpo.pool_rows_per_step's default"})
    precompute_ref_log_probs: bool = field(default=True, metadata={"help": "required: no reference in memory"})
    # choice: float32, rddpo.py's default (--dtype float32); TRL's configs turn bf16 autocast on by default
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast (faster on a gpu)"})


@dataclass
class ScoredPreferenceCollator(DataCollatorForPreference):
    """TRL's collator, plus the score columns as rm_chosen, rm_rejected tensors (B, K)."""

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        for name in SCORES:
            if name in examples[0]:
                batch[name] = torch.tensor([ex[name] for ex in examples], dtype=torch.float32)  # (B, K)
        return batch


def padded_to(x, length, value):
    """(N, T) -> (N, length), padded on the right."""
    return F.pad(x, (0, length - x.shape[1]), value=value)


def joined(batch, pool, pad_id):
    """the batch's 2B rows and the pool's P rows in one right-padded batch -> input_ids, attention_mask,
    completion_mask (2B + P, T)."""
    parts = [(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])] + ([pool] if pool else [])
    T = max(p[0].shape[1] for p in parts)
    return tuple(torch.cat([padded_to(p[i].to(batch["input_ids"].device), T, v) for p in parts])
                 for i, v in enumerate((pad_id, 0, 0)))


def response_logps(model, input_ids, attention_mask, completion_mask):
    """log pi(y|x) summed over the response tokens (rddpo.sequence_logps's convention), through TRL's fused lm
    head: labels -100 off the response, so only response tokens count. (N, T) each -> (N,), and the outputs."""
    labels = input_ids.masked_fill(completion_mask == 0, -100)  # (N, T)
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False, fused_lm_head=True)
    return out.log_probs.sum(-1), out  # (N,): log_probs (N, T-1) is 0 off the response


def method_loss(method, logps, scores, beta, gamma, pool=()):
    """the loss of rddpo.py's `method` (rddpo.policy_loss's dispatch) from (B,) log-probs pc, pr, rc, rr, the
    scores (K, B) each and, for e-DPO and p-DPO, the pool's policy and reference log-probs (P,) each."""
    if method == "d-dpo":
        return rddpo.distill_loss(*logps, scores[0][0], scores[1][0], beta)
    if method == "e-dpo":
        return rddpo.pessimistic_distill_loss(*logps, *scores, beta, gamma, *pool)
    return rddpo.pessimistic_dpo_loss(*logps, beta, gamma, *pool)


def check_config(args, data, pool_dataset, eval_data=None):
    """one-line errors for a method, options or data this trainer cannot train (or evaluate) as rddpo.py does."""
    if args.method not in METHODS:
        raise ValueError(f"unknown method {args.method!r}; choose {', '.join(METHODS)} (DPO and IPO: TRL's loss_type)")
    bad = [name for name, on in (("ld_alpha", args.ld_alpha is not None), ("use_weighting", args.use_weighting),
                                 ("padding_free", args.padding_free), ("truncation_mode='keep_end'",
                                 args.truncation_mode != "keep_start"), ("precompute_ref_log_probs=False",
                                 not args.precompute_ref_log_probs)) if on]
    if bad:
        raise ValueError(f"{', '.join(bad)}: not supported; the losses need log-probs summed over the response "
                         f"and the reference's precomputed")
    if args.method in ("d-dpo", "e-dpo"):
        if any(c not in data.column_names for c in SCORES):
            raise ValueError(f"{args.method} distils reward scores, but train_dataset has no rm_chosen/rm_rejected "
                             f"columns; add them first with rddpo_trl.add_reward_scores(dataset, reward_models, tokenizer)")
        first = data[0][SCORES[0]]
        if not isinstance(first, list) or not first:
            raise ValueError("rm_chosen and rm_rejected must be lists of K floats per pair (add_reward_scores makes them)")
        if args.method == "d-dpo" and len(first) != 1:
            raise ValueError(f"d-dpo distils one reward model, but each pair has {len(first)} scores; score it with "
                             f"one model, or train e-dpo on the family")
        if isinstance(eval_data, Dataset) and any(c not in eval_data.column_names for c in SCORES):
            raise ValueError(f"{args.method}'s loss on eval_dataset needs its reward scores too: add the columns "
                             f"rm_chosen/rm_rejected from the same reward models (add_reward_scores)")
    if args.method in ("e-dpo", "p-dpo") and pool_dataset is None:
        raise ValueError(f"{args.method} needs pool_dataset, responses drawn from the reference for the forward-KL "
                         f"term: make one with rddpo_trl.sample_pool(reference, tokenizer, prompts, n=steps*M)")


def adapters_off(model):
    """pi_ref inside a LoRA policy (peft_config, or a PeftModel with ref_model=None), as TRL's compute_ref_log_probs
    takes it: its "ref" adapter where TRL made one (a PeftModel that came with trained adapters), else the
    adapters disabled; for a plain model, or None, nothing changes."""
    import contextlib
    from accelerate.utils import is_peft_model
    from trl.trainer.utils import use_adapter
    if model is None or not is_peft_model(model):
        return contextlib.nullcontext()
    return use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None)


class DistilledDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer with rddpo.py's d-DPO, e-DPO or p-DPO loss. Tokenisation, the reference's precomputed
    log-probs, batching, the optimizer and distributed training are TRL's and transformers'; the loss and the
    forward-KL pool are rddpo.py's. The pool (`pool_dataset`: sample_pool's ids, or prompt/completion texts) is
    scored by the reference once, here; each step then takes its next M rows (args.pool_batch, by default
    rddpo.pool_rows_per_step's), each row used once (rddpo.Bookkeeping.rows).
    choice: with several processes each computes the loss of its own B pairs and M pool rows, and DDP averages the
    gradients: for d-DPO and p-DPO that is the loss of the whole batch, for e-DPO the min over the K members is taken
    per process (the whole batch's min would need the members' losses all-reduced before the min)."""

    def __init__(self, model, ref_model=None, args=None, train_dataset=None, processing_class=None,
                 pool_dataset=None, **kwargs):
        args = args or DistilledDPOConfig(output_dir="trl-distilled-dpo")
        data = as_dataset(train_dataset if train_dataset is not None else [])
        check_config(args, data, pool_dataset, kwargs.get("eval_dataset"))
        if args.world_size > 1 and not data.cache_files:  # TRL's _precompute_ref_logps writes beside them
            raise ValueError("with several processes give train_dataset from disk (save_to_disk, then load_from_disk): "
                             "TRL caches the reference log-probs beside its files, where every process reads them")
        if processing_class is None:
            raise ValueError("pass processing_class=tokenizer (the one the pairs and the pool were made with)")
        self.pad_id = processing_class.pad_token_id if processing_class.pad_token else processing_class.eos_token_id
        kwargs.setdefault("data_collator", ScoredPreferenceCollator(pad_token_id=self.pad_id, max_length=args.max_length,
                                                                    pad_to_multiple_of=args.pad_to_multiple_of))
        super().__init__(model, ref_model, args, train_dataset=data, processing_class=processing_class, **kwargs)
        self.pooled, self.pool_calls = args.method in ("e-dpo", "p-dpo"), 0
        if self.pooled:
            pool = pool_dataset if isinstance(pool_dataset, Dataset) else Dataset.from_list(list(pool_dataset))
            self.pool = pool_tokens(pool, self._tokenizer, args.max_length)  # (P, T)
            self.pool_ref_logps = self.pool_reference_logps()  # (P,), once
            self.pool_order = np.random.default_rng([args.seed, 99]).permutation(len(self.pool_ref_logps))  # (P,)

    @torch.no_grad()
    def pool_reference_logps(self):
        """log pi_ref of every pool row, before training: the ref_model, or else the model, which is still pi_ref
        here (as in TRL's _precompute_ref_logps), with its LoRA adapters off where it has them (adapters_off).
        choice: every process scores the whole pool, one forward pass over P rows, so no gather is needed.
        -> (P,) on the cpu"""
        model, rows = self.ref_model or self.model, np.arange(len(self.pool.input_ids))
        bs = self.args.precompute_ref_batch_size or self.args.per_device_train_batch_size
        lora_policy = None if self.ref_model else self.accelerator.unwrap_model(self.model)
        with self.accelerator.autocast(), adapters_off(lora_policy):
            return torch.cat([response_logps(model, *rddpo.batch_tensors(self.pool, rows[i:i + bs],
                                                                           self.accelerator.device))[0].float().cpu()
                              for i in range(0, len(rows), bs)])

    def pool_rows(self, n, advance):
        """this process's next n pool rows: call c on process r of W takes positions (cW + r)n to (cW + r + 1)n of the
        pool's order, so with W = 1 they are rddpo.Bookkeeping.rows' at step c + 1, and no row is used twice until the
        pool wraps. evaluation takes the rows without advancing. -> (n,)"""
        c, W, r = self.pool_calls, self.accelerator.num_processes, self.accelerator.process_index
        self.pool_calls += int(advance)
        return np.take(self.pool_order, np.arange((c * W + r) * n, (c * W + r + 1) * n), mode="wrap")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """the pairs' 2B rows and M pool rows in one forward pass; log-probs summed over each response; the loss
        of args.method (rddpo.py's functions). replaces TRL's DPOTrainer._compute_loss, whose loss is fixed."""
        mode, B = "train" if self.model.training else "eval", len(inputs["ref_chosen_logps"])
        M = rddpo.pool_rows_per_step(B, self.args.pool_batch)
        rows = self.pool_rows(M, advance=mode == "train") if self.pooled else None  # (M,)
        pool = rddpo.batch_tensors(self.pool, rows, inputs["input_ids"].device) if self.pooled else None  # (M, Tp)
        logps, outputs = response_logps(model, *joined(inputs, pool, self.pad_id))  # (2B + M,) or (2B,)
        pc, pr, rc, rr = logps[:B], logps[B:2 * B], inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]  # (B,)
        scores = (inputs[SCORES[0]].T, inputs[SCORES[1]].T) if SCORES[0] in inputs else None  # (K, B) each
        pool = (logps[2 * B:], self.pool_ref_logps[rows].to(pc.device)) if self.pooled else ()  # (M,), (M,)
        loss = method_loss(self.args.method, (pc, pr, rc, rr), scores, self.beta, self.args.gamma, pool)
        self.log_dpo_metrics(mode, inputs, outputs, (pc, pr, rc, rr))
        self.log_method_metrics(mode, (pc, pr, rc, rr), scores, pool)
        return (loss, outputs) if return_outputs else loss

    def log_dpo_metrics(self, mode, inputs, outputs, logps):
        """TRL's usual metrics, on the pairs' rows only (the pool's are left out), gathered over processes as
        DPOTrainer._compute_loss gathers them; DPOTrainer.log averages them over the logging interval."""
        m, gather, mask = self._metrics[mode], self.accelerator.gather_for_metrics, inputs["completion_mask"][:, 1:].bool()
        n, T = mask.shape  # 2B, T-1
        ent, avg, top1 = (x[:n, :T].detach() for x in (outputs.entropy, outputs.mean_logits, outputs.is_top1))  # (2B, T-1)
        ratio = lambda num, den: (gather(num).sum() / gather(den).sum().clamp(min=1)).item()  # noqa: E731
        m["entropy"].append(ratio((ent * mask).sum(), mask.sum()))
        self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item() if mode == "train" else 0
        m["num_tokens"] = [self._total_train_tokens]
        for name, half in (("chosen", slice(0, n // 2)), ("rejected", slice(n // 2, n))):
            m[f"logits/{name}"].append(ratio(avg[half][mask[half]].sum(), mask[half].sum()))
        m["mean_token_accuracy"].append(ratio((top1[:n // 2] & mask[:n // 2]).sum(), mask[:n // 2].sum()))
        pc, pr, rc, rr = (x.detach() for x in logps)
        chosen, rejected = self.accelerator.gather(self.beta * (pc - rc)), self.accelerator.gather(self.beta * (pr - rr))
        m["rewards/chosen"].append(chosen.mean().item())
        m["rewards/rejected"].append(rejected.mean().item())
        m["rewards/accuracies"].append((chosen > rejected).float().mean().item())
        m["rewards/margins"].append((chosen - rejected).mean().item())
        m["logps/chosen"].append(self.accelerator.gather(pc).mean().item())
        m["logps/rejected"].append(self.accelerator.gather(pr).mean().item())

    def log_method_metrics(self, mode, logps, scores, pool):
        """this method's own: distill/residual, the root mean square of dr - beta h against the member the loss
        uses (d-DPO: the one; e-DPO: the min); distill/member, the member e-DPO's min picked, and distill/member_k,
        1 at the steps it was k (averaged over a logging interval: its share of steps, on this process); kl/forward,
        the forward-KL estimate on this step's pool rows. means over processes."""
        m, gather = self._metrics[mode], self.accelerator.gather
        if scores is not None and self.args.method != "p-dpo":
            per_member = rddpo.distill_member_losses(*(x.detach() for x in logps), *scores, self.beta)  # (K,)
            k = per_member.argmin()
            m["distill/residual"].append(gather(per_member[k].sqrt()[None]).mean().item())
            if self.args.method == "e-dpo":
                m["distill/member"].append(gather(k.float()[None]).mean().item())
                for j in range(len(per_member)):
                    m[f"distill/member_{j}"].append(float(j == int(k)))
        if pool:
            m["kl/forward"].append(gather(rddpo.forward_kl_estimate(pool[0].detach(), pool[1])[None]).mean().item())

    def compute_ref_log_probs(self, model, inputs):
        """TRL's precompute (DPOTrainer._precompute_ref_logps) calls this with our collator's batches: the score
        columns are not model inputs."""
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k not in SCORES})

    def _set_signature_columns_if_needed(self):
        """keep the score columns, which transformers' Trainer would drop as unused (remove_unused_columns)."""
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys(self._signature_columns + list(SCORES)))


# -----------------------------------------------------------------------------
# 4. timing: TRL's DPO step, this trainer's e-DPO step and rddpo.py's loop step


def step_batch(trainer, B):
    """the first B rows of the trainer's prepared dataset, collated as its dataloader would (with reference
    log-probs and scores)."""
    trainer.model.train()
    return trainer.data_collator([trainer.train_dataset[i] for i in range(B)])


def rddpo_step(model, tokenizer, pairs, pool, B, max_length, beta, gamma, lr, seed=0):
    """rddpo.train_policy's step for e-dpo on the first B pairs, as a function of the step number: rddpo.forward,
    sequence_logps, logps_of (the pool's forward), policy_loss, backward and AdamW."""
    first = pairs.select(range(B))
    p = rddpo.tokenize_pairs(tokenizer, *(list(first[c]) for c in ("prompt", "chosen", "rejected")), max_length)
    p.ref_logps = rddpo.all_logps(model, p.tokens, np.arange(2 * B), "cpu")  # (2B,)
    p.rm_family = torch.cat([torch.tensor(list(first[c])).T for c in SCORES], dim=1).float()  # (K, 2B)
    p.pool = pool_tokens(pool, tokenizer, max_length)  # (P, T)
    p.pool_ref_logps = rddpo.all_logps(model, p.pool, np.arange(len(p.pool.input_ids)), "cpu")  # (P,)
    policy = rddpo.without_dropout(copy.deepcopy(model)).train()
    opt, rows = torch.optim.AdamW(policy.parameters(), lr=lr), np.arange(2 * B)
    order = np.random.default_rng([seed, 99]).permutation(len(p.pool_ref_logps))  # (P,)
    def step(i):
        ids, mask, resp = rddpo.batch_tensors(p.tokens, rows, "cpu")  # (2B, T) each
        policy_logps = rddpo.sequence_logps(rddpo.forward(policy, ids, mask), ids, resp)  # (2B,)
        m = rddpo.pool_rows_per_step(B)
        pool_rows = np.take(order, np.arange((i - 1) * m, i * m), mode="wrap")  # (M,): train_policy's at step i
        pool_logps = rddpo.logps_of(policy, p.pool, pool_rows, "cpu")  # (M,)
        loss = rddpo.policy_loss("e-dpo", policy_logps, rows, p, beta, gamma, pool_logps, pool_rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def trainer_step(trainer, B, lr):
    """one step of a DPOTrainer on its first B pairs: compute_loss, backward and AdamW (no dataloader)."""
    batch, opt = step_batch(trainer, B), torch.optim.AdamW(trainer.model.parameters(), lr=lr)
    def step(i):
        loss = trainer.compute_loss(trainer.model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def timing_inputs(model, tokenizer, batch_size=16, steps=10, k=4, max_new_tokens=40, max_length=64, seed=0):
    """what time_steps needs, on the built-in task: batch_size pairs of the task's prompts and reviews with random
    scores from k reward models (the timing does not depend on their values), and a pool drawn from `model`, one
    batch per step. -> (pairs Dataset, pool Dataset)"""
    rng = np.random.default_rng(seed)
    prompts = task.make_prompts(rng, batch_size, task.TITLES)
    pairs = Dataset.from_dict(dict(prompt=prompts, chosen=[task.make_review(rng) for _ in prompts],
                                   rejected=[task.make_review(rng) for _ in prompts],
                                   rm_chosen=rng.normal(size=(batch_size, k)).tolist(),
                                   rm_rejected=rng.normal(size=(batch_size, k)).tolist()))
    return pairs, sample_pool(model, tokenizer, prompts, steps * batch_size, max_new_tokens, max_length, seed, "cpu")


def time_steps(model, tokenizer, pairs, pool, steps=10, batch_size=8, max_length=64, beta=0.1, gamma=0.1, lr=1e-4,
               warmup=2):
    """median milliseconds per training step, in this process, of (a) TRL's own DPOTrainer (loss_type sigmoid),
    (b) this trainer's e-DPO and (c) rddpo.py's e-DPO loop step, each on its own copy of `model`, on the same
    batch (the first batch_size rows of `pairs`, scored by add_reward_scores) and, for (b) and (c), the same pool
    rows. the three are timed in turn, step by step, so that a busy machine slows them alike. -> dict: trl_dpo_ms,
    trl_edpo_ms, rddpo_edpo_ms and the ratios trl_edpo/trl_dpo, trl_edpo/rddpo_edpo."""
    import tempfile
    import time
    pairs, out = as_dataset(pairs), tempfile.mkdtemp(prefix="rddpo-trl-time-")
    opts = dict(output_dir=out, per_device_train_batch_size=batch_size, max_length=max_length, beta=beta,
                precompute_ref_log_probs=True, report_to="none", use_cpu=True, bf16=False)
    dpo = DPOTrainer(copy.deepcopy(model), args=DPOConfig(**opts), train_dataset=pairs.select(range(batch_size)),
                     processing_class=tokenizer)
    edpo = DistilledDPOTrainer(copy.deepcopy(model), args=DistilledDPOConfig(method="e-dpo", gamma=gamma, **opts),
                               train_dataset=pairs.select(range(batch_size)), pool_dataset=pool,
                               processing_class=tokenizer)
    steps_of = dict(trl_dpo=trainer_step(dpo, batch_size, lr), trl_edpo=trainer_step(edpo, batch_size, lr),
                    rddpo_edpo=rddpo_step(model, tokenizer, pairs, pool, batch_size, max_length, beta, gamma, lr))
    times = {name: [] for name in steps_of}
    for i in range(1, warmup + steps + 1):
        for name, step in steps_of.items():
            t0 = time.perf_counter()
            step(i)
            times[name].append(1000 * (time.perf_counter() - t0)) if i > warmup else None
    res = {f"{name}_ms": float(np.median(t)) for name, t in times.items()}
    return dict(res, edpo_over_dpo=res["trl_edpo_ms"] / res["trl_dpo_ms"],
                trl_over_rddpo=res["trl_edpo_ms"] / res["rddpo_edpo_ms"])


# -----------------------------------------------------------------------------
# 5. main: e-DPO through TRL on the built-in task


@dataclass
class Args:
    model: str = field(default="tiny", metadata={"help": "'tiny' (the cached runs/reference-L2-E64-H4-T64-S600, or "
                                                 "built offline by models.load_reference), or a causal LM name or folder"})
    method: str = field(default="e-dpo", metadata={"help": "d-dpo, e-dpo or p-dpo"})
    steps: int = field(default=15, metadata={"help": "training steps"})
    batch_size: int = field(default=16, metadata={"help": "pairs per step and process (and pool rows)"})
    n_pairs: int = field(default=64, metadata={"help": "pairs sampled from pi_ref and labelled (experiment.builtin_task)"})
    n_eval: int = field(default=32, metadata={"help": "held-out prompts of the built-in task, each with a pair of "
                                              "pi_ref's responses labelled as the training pairs are: TRL's "
                                              "eval_dataset (experiment.builtin_task's held-out pairs)"})
    ensemble: int = field(default=4, metadata={"help": "K, reward models in the e-DPO family"})
    reward_models: str = field(default="auto", metadata={"help": "as rddpo.py's --reward-models: the reward models "
                               "trained here (auto, copies, heads, adapters), or yours: NAME,NAME,... sequence "
                               "classifiers (the family; the first d-DPO's), or data (the score columns)"})
    reward_scale: str = field(default="1", metadata={"help": "as rddpo.py's --reward-scale: a number multiplies the "
                              "scores of the reward models you bring; std standardises each one's gaps"})
    rm_steps: int = field(default=15, metadata={"help": "training steps per reward model"})
    bias: float = field(default=0.5, metadata={"help": "probability that the annotator prefers the longer response"})
    beta: float = field(default=0.1, metadata={"help": "KL strength"})
    gamma: float = field(default=0.1, metadata={"help": "weight of the forward-KL term (e-DPO, p-DPO)"})
    pool_batch: int = field(default=0, metadata={"help": "M, pool rows per step and process (rddpo.py's --pool-batch); "
                                                 "0: its default (rddpo.pool_rows_per_step)"})
    lr: float = field(default=0.0, metadata={"help": "learning rate (AdamW); 0: models.learning_rate's default for the "
                                             "model (1e-4 for the tiny model, 1e-4 x 64 / width for a --model)"})
    lora: int = field(default=-1, metadata={"help": "rank of the policy's LoRA adapters (TRL's peft_config; pi_ref is the "
                                            "policy with them off); 0 trains every weight; -1: rddpo.py's default, "
                                            "16 for a --model, 0 for the tiny model"})
    seed: int = field(default=0, metadata={"help": "seed of the data, the reward models and TRL"})
    log_every: int = field(default=5, metadata={"help": "steps between logged lines"})
    eval_every: int = field(default=0, metadata={"help": "steps between evaluations on the held-out pairs (the "
                                                 "built-in task's, or --data's held-out tenth), printed with TRL's "
                                                 "eval_ metrics; 0: once, at the end"})
    data: str = field(default="", metadata={"help": "your own pairs, as rddpo.py --data takes them (a JSON-lines, "
                                            ".json, .parquet or .csv file or a hub dataset, in TRL's preference "
                                            "formats, conversational rows in --model's chat template): the reward "
                                            "models and the policy train on this seed's training split "
                                            "(data.split_pairs)"})
    data_split: str = field(default="train", metadata={"help": "--data: the split of a hub dataset"})
    sft_steps: int = field(default=0, metadata={"help": "pi_ref's fine-tuning steps, as rddpo.py --sft-steps (the same "
                                                "cache): on the task's reviews, or with --data on a --model the training "
                                                "split's chosen responses; 0: rddpo.py's default"})
    chat_template: bool = field(default=False, metadata={"help": "--data: each plain-text prompt as the user's turn in "
                                                         "the model's chat template"})
    max_length: int = field(default=64, metadata={"help": "tokens per prompt+response"})
    max_new_tokens: int = field(default=40, metadata={"help": "longest sampled pool response"})
    out: str = field(default="runs", metadata={"help": "folder of the cached reference; TRL writes in OUT/trl-METHOD"})
    save: bool = field(default=False, metadata={"help": "after training, save the policy (with LoRA, its adapters) "
                                                "and its tokenizer in OUT/trl-METHOD/policy, a folder "
                                                "from_pretrained loads"})
    report_to: str = field(default="none", metadata={"help": "TRL's report_to: where the logged metrics also go, "
                                                     "such as tensorboard or wandb (a comma list; their package "
                                                     "installed), or none"})
    dtype: str = field(default="float32", metadata={"choices": cli.DTYPES, "help": "as rddpo.py's --dtype: bfloat16 "
                                                    "runs the forward passes under autocast (TRL's bf16; weights and "
                                                    "optimizer stay float32)"})


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in Args.__dataclass_fields__.values():
        kind = dict(action="store_true") if isinstance(f.default, bool) else dict(type=type(f.default))
        kind.update({"choices": f.metadata["choices"]} if "choices" in f.metadata else {})
        p.add_argument("--" + f.name.replace("_", "-"), default=f.default, help=f.metadata["help"], **kind)
    return Args(**vars(p.parse_args(argv)))


def rddpo_config(a):
    """experiment.Config for the same budget, with rddpo.py's defaults for the model (models.model_defaults: LoRA,
    reward heads and micro-batches for a --model); the tiny model's defaults key the cached reference."""
    return models.model_defaults(experiment.Config(
        model=a.model, methods=a.method, steps=a.steps, batch_size=a.batch_size, n_pairs=a.n_pairs, n_eval=a.n_eval,
        ensemble=a.ensemble, rm_steps=a.rm_steps, beta=a.beta, gamma=a.gamma, pool_batch=a.pool_batch or None,
        out=a.out, data=a.data, data_split=a.data_split, sft_steps=a.sft_steps or None, chat_template=a.chat_template,
        max_length=a.max_length, max_new_tokens=a.max_new_tokens, lora=None if a.lora < 0 else a.lora,
        reward_models=a.reward_models, reward_scale=a.reward_scale, dtype=a.dtype))


def trl_dataset(texts, rows, keep):
    """the pairs `keep` (indices) as the trainer takes them: conversational rows (data.Pair with messages) as their
    messages, TRL's own form, which TRL renders as data.read_pairs did, with the columns its chat template reads;
    otherwise texts = (prompts, chosen, rejected) as columns."""
    if rows and rows[0].messages:
        return Dataset.from_list([dict(rows[i].messages, **{k: v for k, v in rows[i].extra.items() if k in TEMPLATE})
                                  for i in keep])
    return Dataset.from_dict({name: [column[i] for i in keep] for name, column in zip(FIELDS, texts)})


def with_scores(data, scores):
    """the pairs with K reward models' scores (K, 2N: the chosen rows, then the rejected rows, as rddpo.Pairs keeps
    them) as the columns rm_chosen and rm_rejected, K floats each."""
    scores_w, scores_l = scores.chunk(2, dim=1)  # (K, N) each
    return data.add_column(SCORES[0], scores_w.T.tolist()).add_column(SCORES[1], scores_l.T.tolist())


def prepare(a, reference, tokenizer, world, device, user=None):
    """the built-in task's pairs (or --data's training split: of `user`, data.user_pairs' if None), scored once by
    the reward models rddpo.reward_scores would train (the plain one for d-DPO, the family for e-DPO), and the
    forward-KL pool for this run's steps; the held-out pairs (the built-in task's, experiment.builtin_task, or --data's
    held-out split whose prompts fit), scored by the same reward models, are TRL's eval_dataset -> (pairs, pool or
    None, held-out pairs or None) Datasets."""
    cfg, rows = rddpo_config(a), None
    if a.data:  # the held-out tenth stays out, as in rddpo.py; prompts that fill the context are left out
        user = user or user_pairs(cfg)
        train, held = ([r for r in part if rddpo.fits(tokenizer, r[0], cfg.max_length)]
                       for part in split_pairs(user, a.seed))
        rows, held_rows, held = train, held, [list(x) for x in zip(*held)]  # held: prompts, chosen, rejected
        prompts, chosen, rejected = (list(x) for x in zip(*rows))
    else:
        prompts, chosen, rejected, ev = experiment.builtin_task(reference, tokenizer, cfg, a.bias, a.seed, device)
        held, held_rows = (ev.prompts, ev.chosen, ev.rejected), None
    pairs = rddpo.tokenize_pairs(tokenizer, prompts, chosen, rejected, cfg.max_length)
    data = trl_dataset((prompts, chosen, rejected), rows, pairs.keep)
    held_pairs = rddpo.tokenize_pairs(tokenizer, *held, cfg.max_length) if any(held) else None  # TRL's eval_dataset
    evaluation = trl_dataset(held, held_rows, held_pairs.keep) if held_pairs is not None else None
    if a.method != "p-dpo":  # the scores each row carries, and each held-out row by the same reward models
        on_train, on_held = reward_columns(a, cfg, reference, (prompts, chosen, rejected), pairs, held, held_pairs,
                                           user, device)
        data = with_scores(data, on_train)  # (K, 2N)
        evaluation = with_scores(evaluation, on_held) if on_held is not None else None  # (K, 2M)
    n = a.steps * rddpo.pool_rows_per_step(a.batch_size, cfg.pool_batch) * world
    pool = sample_pool(reference, tokenizer, prompts, n, cfg.max_new_tokens,
                       cfg.max_length, a.seed, device) if a.method != "d-dpo" else None
    return data, pool, evaluation


def reward_columns(a, cfg, reference, texts, pairs, held, held_pairs, user, device):
    """the scores TRL's rows carry for d-DPO (one model: the first you bring, or the plain one trained here) or
    e-DPO (the family): your reward models (--reward-models NAME,... or data), read as rddpo.py reads them, or those
    rddpo.reward_scores trains -> ((K, 2N) on the kept training pairs, (K, 2M) on the kept held-out pairs, or None
    where there are none); the chosen rows first in each."""
    held_first = held_family = None
    if scorers.brought(cfg.reward_models):
        kept = [[x[i] for i in pairs.keep] for x in texts]
        question = users_question(cfg.model) if cfg.chat_template else str
        family, on_held, diagnostics = scorers.family(cfg, user if a.data else None, kept, held, device,
                                                      question=question)  # (K, 2N), (K, 2M')
        scorers.say(diagnostics, cfg.beta, len(pairs.keep))
        first = family[:1]  # (1, 2N)
        if held_pairs is not None:  # the held-out pairs TRL evaluates on: those tokenize_pairs kept
            m, keep = len(held[0]), np.array(held_pairs.keep)
            held_family = on_held[:, np.concatenate([keep, keep + m])]
            held_first = held_family[:1]  # (1, 2M)
    else:  # rddpo.py's own: the plain one for d-DPO, the family for e-DPO
        chosen, rejected = texts[1:]
        longer = np.array([len(task.words(chosen[i])) > len(task.words(rejected[i])) for i in pairs.keep])
        def on_held(rm, train_scores):  # each model, while in memory, also scores the held-out pairs (not printed)
            return {} if held_pairs is None else dict(held=rddpo.score(rm, held_pairs.tokens, device))  # (2M,)
        plain, family, seen = rddpo.reward_scores(reference, pairs, on_held, cfg, a.seed, device, longer)  # (2N,), (K,2N)
        first = plain[None]
        if held_pairs is not None:  # the plain model's, then the family's: (1, 2M), (K, 2M)
            held_first, held_family = seen[0]["held"][None], torch.stack([d["held"] for d in seen[1:]])
    return (first, held_first) if a.method == "d-dpo" else (family, held_family)


def prepared(a, state):
    """the reference and the data (prepare's), made by the main process; the others read them from --out when it is
    done. as in rddpo.py, pi_ref's fine-tuning on the task's reviews runs in float32, the rest under --dtype."""
    import shutil
    from datasets import load_from_disk
    path, cfg, names = os.path.join(a.out, f"trl-data-{a.method}"), rddpo_config(a), ("pairs", "pool", "held")
    with state.main_process_first():
        user = user_pairs(cfg)  # --data's pairs, read and checked before any work; None without
        splits = [split_pairs(user, a.seed)] if user else []  # a batch and a held-out pair that fit, known words
        reference, tokenizer = models.load_reference(cfg, state.device, check=lambda tok: check_data(user, splits, tok,
                                                                                                     cfg))
        with cli.precision(state.device, a.dtype):
            if a.data:  # pi_ref fine-tuned on this seed's training chosen responses (--sft-steps), as rddpo.py does
                reference, _ = models.data_reference(reference, tokenizer, cfg, user, a.seed, state.device)
            if state.num_processes == 1:
                return (reference, tokenizer, *prepare(a, reference, tokenizer, 1, state.device, user))
            if state.is_main_process:
                shutil.rmtree(path, ignore_errors=True)
                for name, d in zip(names, prepare(a, reference, tokenizer, state.num_processes, state.device, user)):
                    d is not None and d.save_to_disk(os.path.join(path, name))
        data, pool, held = (load_from_disk(os.path.join(path, n)) if os.path.isdir(os.path.join(path, n)) else None
                            for n in names)
    return reference, tokenizer, data, pool, held


class PrintLine(TrainerCallback):
    """a line per logging step with TRL's metrics (this method's among them), and a line per evaluation on the
    held-out pairs with the same metrics, eval_ before each name as TRL logs them."""
    KEYS = ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "distill/residual", "distill/member",
            "kl/forward")

    def __init__(self, n_held=0):
        self.n_held = n_held

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        for prefix, head in (("", "step"), ("eval_", f"held-out ({self.n_held} pairs), step")):
            if state.is_world_process_zero and prefix + "loss" in logs:
                print(f"{head} {state.global_step:4d}  " + "  ".join(f"{prefix}{k} {logs[prefix + k]:.4f}"
                                                                    for k in self.KEYS if prefix + k in logs))


def train(a, reference, tokenizer, data, pool, use_cpu, held=None):
    """the policy trained with a.method through TRL: a copy of the reference, or with LoRA (rddpo_config(a).lora) the
    reference itself with adapters (TRL's peft_config, rddpo.lora_config), pi_ref being it with them off. choice: as
    rddpo.train_policy, AdamW at a constant rate with weight decay 0.01 and no gradient clipping (transformers'
    Trainer leaves biases and norms undecayed). with held-out pairs (prepare's, TRL's eval_dataset), it is evaluated
    on them every --eval-every steps and at the end, once."""
    cfg = rddpo_config(a)
    from transformers.trainer_callback import PrinterCallback
    lr = a.lr or models.learning_rate(cfg, reference)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"policy: {f'LoRA adapters of rank {cfg.lora} on pi_ref' if cfg.lora else 'a copy of pi_ref, every weight'}"
              f" trained at rate {lr:.3g}")
    args = DistilledDPOConfig(output_dir=os.path.join(a.out, f"trl-{a.method}"), method=a.method, gamma=a.gamma,
                              pool_batch=a.pool_batch or None, beta=a.beta, learning_rate=lr,
                              max_steps=a.steps, per_device_train_batch_size=a.batch_size,
                              max_length=a.max_length, lr_scheduler_type="constant", weight_decay=0.01,
                              max_grad_norm=0.0, logging_steps=a.log_every, save_strategy="no",
                              report_to=reporters(a), bf16=a.dtype == "bfloat16",
                              eval_strategy="steps" if held is not None and a.eval_every else "no",
                              eval_steps=a.eval_every or None, per_device_eval_batch_size=a.batch_size,
                              prediction_loss_only=True, seed=a.seed, use_cpu=use_cpu, disable_tqdm=True)
    policy = reference if cfg.lora else copy.deepcopy(reference)  # TRL's disable_dropout takes out its dropout
    trainer = DistilledDPOTrainer(policy, args=args, train_dataset=data, eval_dataset=held, pool_dataset=pool,
                                  processing_class=tokenizer, callbacks=[PrintLine(len(held) if held else 0)],
                                  peft_config=rddpo.lora_config(cfg.lora) if cfg.lora else None)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    if held is not None and (not a.eval_every or a.steps % a.eval_every):  # unless the last step was evaluated
        trainer.evaluate()
    return trainer


def main(argv=None):
    from accelerate import PartialState
    a = parse_args(argv)
    if a.method not in METHODS:
        raise SystemExit(f"unknown --method {a.method!r}; choose {', '.join(METHODS)}")
    use_cpu = not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu)  # before TRL's: on cpu, several processes then train over gloo
    try:
        scorers.check(a.reward_models, a.reward_scale, a.data)
        check_args(a)
        reference, tokenizer, data, pool, held = prepared(a, state)
    except cli.UsageError as e:  # bad --data: one line and exit status 2, as rddpo.py says it
        print(f"error: {e}", file=sys.stderr)
        return 2
    if held is None and state.is_main_process:
        print("note: no held-out evaluation (no held-out prompt fits --max-length)")
    trainer = train(a, reference, tokenizer, data, pool, use_cpu, held)
    folder = save(trainer, a) if a.save else None
    if state.is_main_process:
        logged = trainer.state.log_history  # no "loss" row when --steps is below --log-every: then the run's mean
        last = ([row for row in logged if "loss" in row] or [row for row in logged if "train_loss" in row])[-1]
        print(f"{a.method} through TRL, {state.num_processes} process(es): " + ", ".join(
            f"{k} {v:.4f}" for k, v in last.items() if isinstance(v, float)))
        if folder:
            print(f"policy saved with its tokenizer in {folder}; load it with "
                  f"{experiment.how_to_load(folder, rddpo_config(a).lora)}")
    return 0


def check_args(a):
    """one error line, before any work, for what TRL would refuse later: a --report-to that transformers does not
    know or cannot use here (its package missing), --dtype bfloat16 on a device without it, --eval-every < 0, and
    --save where an earlier run's policy would be overwritten."""
    from accelerate.utils import is_bf16_available
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations
    for name in reporters(a) if reporters(a) != "all" else ():
        if name not in INTEGRATION_TO_CALLBACK:
            raise cli.UsageError(f"--report-to {name!r}: give none, all, or a comma list of transformers' "
                                 f"integrations ({', '.join(INTEGRATION_TO_CALLBACK)})")
        if name not in get_available_reporting_integrations():
            raise cli.UsageError(f"--report-to {name}: transformers finds no {name} installed here; install its "
                                 "package, or leave --report-to out")
    if a.dtype == "bfloat16" and not is_bf16_available():
        raise cli.UsageError("--dtype bfloat16: this device has no bfloat16 support (accelerate's is_bf16_available); "
                             "use --dtype float32")
    if a.eval_every < 0 or a.n_eval < 1:
        raise cli.UsageError("--eval-every must be >= 0 and --n-eval >= 1")
    kept = os.path.join(a.out, f"trl-{a.method}", "policy")
    if a.save and os.path.exists(kept):
        raise cli.UsageError(f"--save: {kept} holds the policy of an earlier run; give another --out, or move it aside")


def reporters(a):
    """--report-to as TRL's report_to: the integrations named (none names none), or "all" (every one installed)."""
    names = [name.strip() for name in a.report_to.split(",") if name.strip() not in ("", "none")]
    return "all" if names == ["all"] else names


def save(trainer, a):
    """the trained policy and its tokenizer in OUT/trl-METHOD/policy (trainer.save_model) -> the folder. with LoRA,
    peft's adapter folder, whose adapter_config.json names pi_ref as its base_model_name_or_path (models.named:
    the cached reference's absolute folder, or the hub name), so that from_pretrained rebuilds the policy."""
    folder = os.path.join(a.out, f"trl-{a.method}", "policy")
    trainer.save_model(folder)
    return folder


if __name__ == "__main__":
    raise SystemExit(main())
