"""scorers.py: reward models you bring (--reward-models A,B,... or data) as the family that d-DPO and e-DPO distil.

Instead of training reward models from pi_ref, each of your sequence classifiers (a folder or a hub name) scores
every pair once, reading it through its own tokenizer and chat template; or the data's own score columns are used
as they are (--reward-models data: score_chosen and score_rejected, a number each or one per family member). The
first member is d-DPO's target; e-DPO takes the worst case over all of them.

The distillation target is the raw reward gap r_w - r_l, so a reward model's units decide how far the policy moves:
distilling asks for a log-ratio margin |h| = |r_w - r_l| / beta. Every member's gap and that margin are printed and
kept in results.json, and --reward-scale sets the units (docs/METHOD.md#reward-scale).
"""
import difflib
import json
import os

import numpy as np

from harness.cli import UsageError, hub_reachable, quiet_transformers
from harness.report import reward_model_stats

MODES = ("auto", "copies", "heads", "adapters")  # reward models the run trains itself (rddpo.reward_scores)
COLUMNS = ("score_chosen", "score_rejected")  # --reward-models data


# -----------------------------------------------------------------------------
# 1. what was brought, checked before any work


def brought(spec):
    """whether --reward-models names reward models you bring (or data) rather than a way to train them."""
    return spec not in MODES


def check(spec, scale, data, unlabeled=0):
    """--reward-models and --reward-scale, before any work: one error line for what cannot be used."""
    names = [s.strip() for s in spec.split(",")]
    if not brought(spec):
        if scale != "1":
            raise UsageError("--reward-scale sets the units of reward models you bring (--reward-models NAME,... or "
                             "data); the ones trained here are in Bradley-Terry units already: leave it out")
    elif not all(names):
        raise UsageError(f"--reward-models {spec!r} has an empty name; give NAME,NAME,... or data")
    elif "data" in names and len(names) > 1:
        raise UsageError("--reward-models data uses the data's score columns alone; give data, or model names")
    elif "data" in names and not data:
        raise UsageError("--reward-models data reads score_chosen and score_rejected from --data; give --data")
    elif "data" in names and unlabeled:
        raise UsageError("--unlabeled pairs are drawn from pi_ref and carry no score columns; with --reward-models "
                         "data leave --unlabeled out, or name reward models that can score them")
    for name in names if brought(spec) and names != ["data"] else ():  # now, not after the reference's fine-tuning
        folder = os.path.expanduser(name)
        config = os.path.join(folder, "config.json")
        if os.path.isfile(config):
            try:
                with open(config, encoding="utf-8") as f:
                    kinds = json.load(f).get("architectures") or []
            except (OSError, ValueError, AttributeError):
                kinds = None  # from_pretrained will say what is wrong with it
            if kinds is not None and not classifier(kinds):
                raise UsageError(not_a_classifier(name, kinds))
        if not os.path.isdir(folder):
            mode = difflib.get_close_matches(name, MODES, n=1)
            if mode:
                raise UsageError(f"--reward-models {name!r} is no folder; did you mean {mode[0]}? (the ways to "
                                 f"train them here: {', '.join(MODES)}; or NAME,... of sequence classifiers)")
            if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
                raise UsageError(unreachable(name))
    scale_of(scale)


def classifier(architectures):
    return any(k.endswith("ForSequenceClassification") for k in architectures)


def not_a_classifier(name, architectures):
    return (f"--reward-models {name!r} is not a sequence classifier (its architectures: "
            f"{', '.join(architectures) or 'none'}); a reward model scores a text with its first logit")


def unreachable(name):
    return (f"--reward-models {name!r} is no local folder, and the Hugging Face hub cannot be reached; give a folder "
            "that from_pretrained reads")


def scale_of(scale):
    """--reward-scale -> a number, or "std"; one error line otherwise."""
    if scale == "std":
        return scale
    try:
        value = float(scale)
    except ValueError:
        value = 0.0
    if not value > 0 or not np.isfinite(value):
        raise UsageError(f"--reward-scale {scale!r}: give a positive number (1 keeps the scores as they are) or std")
    return value


# -----------------------------------------------------------------------------
# 2. reading the pairs as each reward model reads them


def conversations(prompts, responses, by_text, question=str):
    """each (prompt, response) as a list of messages: the pair's own where it came as a conversation (its Pair in
    by_text, keyed by its texts); a response drawn from pi_ref (--unlabeled) after the turns of its conversation's
    prompt; else the prompt as the user's turn (question unwraps a --chat-template prompt) and the response as the
    assistant's."""
    out = []
    for p, y in zip(prompts, responses):
        seen = by_text.get(p, {})
        pair = seen[y][0][0] if y in seen else None
        asked = next((pr.messages["prompt"] for found in seen.values() for pr, _ in found
                      if getattr(pr, "messages", None)), None)
        if pair is not None and getattr(pair, "messages", None):
            m = pair.messages
            out.append(m["prompt"] + (m["chosen"] if y == pair[1] else m["rejected"]))
        elif asked is not None:  # a response drawn from pi_ref (--unlabeled) to a conversation's prompt
            out.append(asked + [{"role": "assistant", "content": str(y)}])
        else:
            out.append([{"role": "user", "content": question(p)}, {"role": "assistant", "content": str(y)}])
    return out


def index_pairs(pairs):
    """{prompt: {response: [(Pair, its row number), ...]}} of --data's pairs, to find a pair's messages and columns
    from its texts (a response may come in several pairs of one prompt)."""
    out = {}
    for i, pair in enumerate(pairs or ()):
        for y in pair[1:]:
            out.setdefault(pair[0], {}).setdefault(y, []).append((pair, i))
    return out


def load_scorer(name):
    """(sequence classifier, its tokenizer) from a folder or the hub, or one error line."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    quiet_transformers()
    local = os.path.isdir(os.path.expanduser(name))
    if not local and (os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable()):
        raise UsageError(unreachable(name))
    try:
        config = AutoConfig.from_pretrained(os.path.expanduser(name))
        kinds = config.architectures or []
        if not classifier(kinds):
            raise UsageError(not_a_classifier(name, kinds))
        model = AutoModelForSequenceClassification.from_pretrained(os.path.expanduser(name)).eval()
        tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(name))
    except (OSError, ValueError) as e:
        raise UsageError(f"--reward-models: cannot load {name!r}: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:  # one batch holds texts of several lengths
        own = model.config.pad_token_id  # the classifier reads its score at the last token that is not this id
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(own) if own is not None else tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def scorer_texts(tokenizer, prompts, responses, chats):
    """what the reward model reads: each conversation in its own chat template, or without one prompt + response."""
    if tokenizer.chat_template:
        return [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
    return [str(p) + str(y) for p, y in zip(prompts, responses)]


def model_scores(model, tokenizer, texts, device, batch_size=16):
    """the first logit of each text, in batches -> (n,) numpy. a text longer than the model reads is cut from the
    left, so that the response it is scored on stays whole (and a note says how many were cut); a text its chat
    template began with the bos token gets no second one."""
    import torch
    out, model, limit = [], model.to(device), min(tokenizer.model_max_length, 4096)
    bos = tokenizer.bos_token
    special = not (bos and texts and all(t.startswith(bos) for t in texts))
    cut = sum(len(ids) > limit for ids in tokenizer(texts, add_special_tokens=special).input_ids)
    if cut:
        print(f"note: {cut} of {len(texts)} texts are longer than the {limit} tokens "
              f"{getattr(model.config, '_name_or_path', 'the reward model')} reads; their start is cut off")
    tokenizer.truncation_side = "left"
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, return_tensors="pt",
                            max_length=limit, add_special_tokens=special).to(device)
            out.append(model(**enc).logits[:, 0].float().cpu().numpy())  # (b,)
    return np.concatenate(out)


def column_scores(prompts, responses, by_text):
    """--reward-models data: each (prompt, response)'s score from its pair's columns -> (K, n); one error line
    naming the row where a column is missing, not a number, or of another K."""
    out, k = [], None
    for p, y in zip(prompts, responses):
        given = [(pair.extra.get(COLUMNS[0] if y == pair[1] else COLUMNS[1]), row + 1) for pair, row in by_text[p][y]]
        (value, row), *others = given
        for other, where in others:
            if other != value:
                raise UsageError(f"--data pairs {row} and {where} (counting from 1) share a prompt and a response but "
                                 f"score it {value!r} and {other!r}; give one response one score")
        values = value if isinstance(value, list) else [value]
        if value is None or not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in values):
            raise UsageError(f"--data pair {row} (counting from 1): {COLUMNS[0]} and {COLUMNS[1]} must be numbers "
                             f"(or lists of one number per reward model) for --reward-models data; found {value!r}")
        if k is not None and len(values) != k:
            raise UsageError(f"--data pair {row} (counting from 1): {len(values)} scores, but earlier pairs have {k}; "
                             "give every pair the same number of reward models")
        k = len(values)
        out.append(values)
    return np.array(out, dtype=float).T


# -----------------------------------------------------------------------------
# 3. the family, its scale, and what it asks of the policy


def family(cfg, pairs, train, held, device, gold=None, question=str):
    """the family's scores of the training and the held-out rows and what results.json keeps of each member ->
    ((K, 2N) float32 scores, the chosen rows first, as rddpo.Pairs.rm_family; (K, 2M) of the held-out pairs;
    diagnostics).
    train, held: (prompts, chosen, rejected) texts of the training pairs and of the held-out pairs; pairs: --data's
    Pairs (None on the built-in task)."""
    by_text, names = index_pairs(pairs), [s.strip() for s in cfg.reward_models.split(",")]
    texts = [(list(ps) * 2, list(cs) + list(rs)) for ps, cs, rs in (train, held)]  # chosen rows, then rejected
    if names == ["data"]:
        scores = [column_scores(*t, by_text) for t in texts]  # (K, 2N), (K, 2M)
        names = [f"data column {k}" for k in range(len(scores[0]))] if len(scores[0]) > 1 else ["data"]
    else:
        scores = [[], []]
        for name in names:
            model, tokenizer = load_scorer(name)
            for part, (ps, ys) in enumerate(texts):
                chats = conversations(ps, ys, by_text, question)
                scores[part].append(model_scores(model, tokenizer, scorer_texts(tokenizer, ps, ys, chats), device))
            del model
        scores = [np.stack(s) for s in scores]
    factors = scale_factors(scores[0], scale_of(cfg.reward_scale))  # (K,)
    train_scores, held_scores = (_t(s * factors[:, None]) for s in scores)  # float32 tensors, as Pairs keeps them
    diagnostics = [dict(model=f"member {k + 1}", source=name, scale=float(factors[k]),
                        **reward_model_stats(held_scores[k], train_scores[k], held[1], held[2], gold, cfg.beta))
                   for k, name in enumerate(names)]
    plain = dict(diagnostics[0], model="plain")  # d-DPO's target: the first member
    return train_scores, held_scores, [plain] + diagnostics


def _t(x):
    import torch
    return torch.as_tensor(x, dtype=torch.float32)


def scale_factors(train_scores, scale):
    """each member's factor: --reward-scale's number for all, or with std 1 / the standard deviation of that member's
    gaps r_w - r_l over the training pairs (its gaps then have standard deviation 1) -> (K,)."""
    k = len(train_scores)
    if scale != "std":
        return np.full(k, float(scale))
    w, l = np.split(train_scores, 2, axis=1)  # (K, N) each
    sd = (w - l).std(axis=1)  # (K,)
    if (sd == 0).any():
        raise UsageError("--reward-scale std: a reward model gives every training pair the same gap; it cannot be "
                         "standardised")
    return 1.0 / sd


def say(diagnostics, beta, n_train):
    """one line per member: its gaps and the margin it asks of the policy at this beta."""
    for d in diagnostics[1:]:
        acc = f"; agrees with the labels on {d['accuracy_labels']:.0%} of {d['heldout_pairs']} held-out pairs"
        gold = f", with gold on {d['accuracy_gold']:.0%}" if d.get("accuracy_gold") is not None else ""
        print(f"{d['model']} ({d['source']}, x {d['scale']:.3g}): mean |r_w - r_l| {d['reward_diff']:.3f} on "
              f"{n_train} training pairs, asking the policy for a log-ratio margin |h| of "
              f"{d['target_logratio']:.1f} nats at beta {beta:g}{acc}{gold}")
