"""data.py: your own preference pairs (--data).

Where the pairs come from (a JSON-lines file, every bad line named with its number; a .json, .parquet or .csv file;
or a dataset on the Hugging Face hub, --data-split), the rows in TRL's preference forms (standard or conversational,
the prompt explicit or implicit), conversational rows rendered through the model's chat template as TRL's DPOTrainer
renders them, plain prompts wrapped in the chat template (--chat-template), and the per-seed split into training and
held-out pairs, checked before any work.

The rest of the project passes each pair around as a (prompt, chosen, rejected) tuple of strings; here it is a Pair,
a tuple that also carries the row's other columns (pair.extra) and, for a conversational row, its messages.
"""
import json
import os
import re

import numpy as np

from harness.cli import UsageError, hub_reachable, quiet_transformers
from rddpo import ChatTurn, fits

FIELDS = ("prompt", "chosen", "rejected")
DATASET_FILES = {".json": "json", ".parquet": "parquet", ".csv": "csv"}  # read by datasets.load_dataset
NEEDS_TEMPLATE = "conversational --data"  # what a missing chat template stops, in its error line


class Pair(tuple):
    """one pair: (prompt, chosen, rejected) strings, unpacked as any 3-tuple. extra: the row's other columns (a dict,
    e.g. score_chosen and score_rejected); messages: for a conversational row its prompt, chosen and rejected as
    lists of {"role", "content"} messages, the implicit prompt made explicit (None for a plain-text row)."""

    def __new__(cls, prompt, chosen, rejected, extra=None, messages=None):
        pair = super().__new__(cls, (prompt, chosen, rejected))
        pair.extra, pair.messages = dict(extra or {}), messages
        return pair

    def __getnewargs__(self):  # a copy or a pickle keeps the extra columns and the messages
        return (*self, self.extra, self.messages)


# -----------------------------------------------------------------------------
# 1. where the rows come from


def read_pairs(source, split="train", model=None):
    """your pairs -> [Pair]. source: a JSON-lines file (one object a line), a .json, .parquet or .csv file (read
    whole), or a hub dataset's name (its `split`). each row in one of TRL's forms (read_row), all of one form;
    conversational rows rendered through `model`'s chat template (render_conversation)."""
    rows = source_rows(source, split)
    read = [(where, read_row(row, where)) for where, row in rows]
    if len(read) < 2:
        raise UsageError(f"--data {source!r} holds {len(read)} pairs; at least 2 are needed")
    talk = [isinstance(fields[1], list) for _, fields in read]  # conversational rows
    for (where, _), conversational in zip(read, talk):
        if conversational != talk[0]:
            forms = ("plain text", "conversational")
            raise UsageError(f"{where}: {forms[conversational]}, but {read[0][0]} is {forms[talk[0]]}; "
                             "give every row in one form")
    if not talk[0]:
        return [Pair(*fields) for _, fields in read]
    tokenizer = chat_tokenizer(model, NEEDS_TEMPLATE, "give a --model whose tokenizer has one, or plain-text pairs")
    return [rendered_pair(tokenizer, fields, where) for where, fields in read]


def source_rows(source, split):
    """[(where, row)]: where names the row in error lines ("FILE, line 3" or "NAME, row 2", rows counted from 0 as
    dataset[i] counts them)."""
    ext = os.path.splitext(source)[1].lower()
    if os.path.isdir(source):  # a folder of data files, by any path: load_dataset reads it as it reads a hub dataset
        return dataset_rows(source, split)
    if os.path.isfile(source) or not is_hub_name(source):
        if not os.path.isfile(source):
            raise UsageError(f"--data file {source!r} not found")
        if split != "train":
            raise UsageError(f"--data-split {split} applies to a hub dataset; a local file is read whole")
        return dataset_rows(source, split, DATASET_FILES[ext]) if ext in DATASET_FILES else json_lines(source)
    if os.environ.get("HF_HUB_OFFLINE") != "1" and not os.path.isdir(source) and not hub_reachable():
        raise UsageError(f"--data {source!r} is no local file, and the Hugging Face hub cannot be reached to load it "
                         "as a dataset; give a local file, or set HF_HUB_OFFLINE=1 to read it from the datasets cache")
    return dataset_rows(source, split)


def is_hub_name(source):
    """a hub dataset's name, "name" or "owner/name" (or a local folder of data files, which load_dataset reads
    alike), rather than the path of a data file that is missing."""
    return not source.startswith((".", "/", "~")) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source) is not None \
        and os.path.splitext(source)[1].lower() not in (".jsonl", ".txt", *DATASET_FILES)


def dataset_rows(source, split, builder=None):
    """the rows of a hub dataset's split, or of a local file that datasets' `builder` (json, parquet, csv) reads
    whole, through datasets.load_dataset; or one error line."""
    import datasets
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        data = datasets.load_dataset(source, split=split) if builder is None else \
            datasets.load_dataset(builder, data_files=source, split="train")
    except Exception as e:  # what it raises varies (ConnectionError, FileNotFoundError, ValueError, its own)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"cannot load --data {source!r}{'' if builder else f' (split {split})'}: {first}") from None
    return [(f"{source}, row {i}", row) for i, row in enumerate(data)]


def json_lines(path):
    """[(where, row)] of a JSON-lines file: one JSON object a line, blank lines skipped."""
    try:
        with open(path, encoding="utf-8-sig") as fh:  # -sig: a byte-order mark is not part of the first line
            lines = fh.read().split("\n")  # not splitlines(): json strings may hold u+2028 and other separators
    except UnicodeDecodeError as e:
        raise UsageError(f"--data {path!r} is not UTF-8 text (byte {e.start}); save it as UTF-8 JSON lines") from None
    first = next((line for line in lines if line.strip()), "")
    if "," in first and not is_json(first):
        raise UsageError(f"--data {path!r} looks like CSV; name it .csv, or give JSON lines, one object "
                         '{"prompt": ..., "chosen": ..., "rejected": ...} per line')
    rows = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append((f"{path}, line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}, line {n}: not valid JSON ({e.msg}); each line must be one JSON object") \
                    from None
    return rows


def is_json(text):
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


# -----------------------------------------------------------------------------
# 2. a row, in TRL's preference forms


def read_row(row, where):
    """one row -> (prompt, chosen, rejected, extra), or one error line naming the row and the field. the forms:
    standard (strings) or conversational (lists of {"role", "content"} messages); the prompt given, or implicit
    (no prompt column: the shared opening of chosen and rejected, implicit_prompt). extra: the other columns."""
    if not isinstance(row, dict) or any(k not in row for k in FIELDS[1:]):
        missing = " and ".join(k for k in FIELDS[1:] if k not in row) if isinstance(row, dict) else "object"
        raise UsageError(f"{where}: needs the keys prompt, chosen and rejected (or chosen and rejected alone, whose "
                         f"shared opening is then the prompt); no {missing}")
    given = [k for k in FIELDS if k in row]
    talk = isinstance(row["chosen"], list)
    for k in given:
        if not isinstance(row[k], list if talk else str):
            raise UsageError(f"{where}: prompt, chosen and rejected must be strings (standard) or lists of messages "
                             f"(conversational), all of one form; {k} is {json.dumps(row[k], default=str)[:40]}")
        if talk:
            check_messages(row[k], k, where)
    prompt, chosen, rejected = (row.get(k) for k in FIELDS)
    if chosen == rejected:
        raise UsageError(f"{where}: chosen and rejected are identical, so the pair carries no preference")
    if prompt is None:
        prompt, chosen, rejected = implicit_prompt(chosen, rejected)
        if not prompt:
            raise UsageError(f"{where}: chosen and rejected share no opening, so the implicit prompt is empty; "
                             "give a prompt")
    if not talk and not (chosen.strip() and rejected.strip()):
        raise UsageError(f"{where}: chosen and rejected must not be empty")
    return prompt, chosen, rejected, {k: v for k, v in row.items() if k not in FIELDS}


def check_messages(messages, field, where):
    if not messages:
        raise UsageError(f"{where}: {field} holds no messages")
    for j, m in enumerate(messages, 1):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise UsageError(f"{where}: {field}, message {j}: needs a string role and a string content")


def implicit_prompt(chosen, rejected):
    """the prompt that TRL's extract_prompt takes from a pair without one -> (prompt, chosen, rejected): the leading
    characters (plain text) or messages (conversational) that chosen and rejected share; a space just before the
    first difference stays with the responses; where one response is the start of the other, each keeps its last
    item. where they differ from the first item on, the prompt is empty (read_row refuses the row)."""
    n = min(len(chosen), len(rejected))
    first = next((i for i in range(n) if chosen[i] != rejected[i]), None)
    cut = n - 1 if first is None else first - (first > 0 and chosen[first - 1] == " ")
    return chosen[:cut], chosen[cut:], rejected[cut:]


# -----------------------------------------------------------------------------
# 3. chat templates: conversational rows, and --chat-template


def chat_tokenizer(model, needs="--chat-template", fix="leave the flag out"):
    """the tokenizer of `model` with its chat template, or one error line saying what `needs` it and how to `fix` it."""
    from transformers import AutoTokenizer
    if model in (None, "tiny"):
        which = "the built-in tiny model has none" if model else "no --model was given"
        raise UsageError(f"{needs} needs a --model with a chat template; {which}: {fix}")
    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(model))  # a folder, the cache, or the hub
    except (OSError, ValueError) as e:
        raise UsageError(f"{needs}: cannot load the tokenizer of --model {model!r}: {str(e).splitlines()[0]}") \
            from None
    if not tokenizer.chat_template:
        raise UsageError(f"{needs}: --model {model!r} has no chat template; {fix}")
    return tokenizer


def render_conversation(tokenizer, prompt, chosen, rejected, **template):
    """a conversational pair as the text TRL's DPOTrainer tokenises -> (prompt, chosen, rejected) strings. the prompt:
    its messages rendered ready for the reply (add_generation_prompt), or, where it ends with the assistant's own
    turn (a reply begun for it), that turn left open (continue_final_message), as TRL renders them; each response:
    the rest of the whole conversation's text after it, the template's own closing included (a ChatTurn: no eos is
    added, as TRL adds none). where the template writes the prompt alone otherwise than before a reply, the prompt
    is the text the three share, as TRL keeps the tokens they share. template: tools and chat_template_kwargs, as
    TRL passes them."""
    last = prompt[-1]["role"] if prompt else None
    if last not in ("user", "tool", "assistant"):
        raise UsageError(f"the prompt's last message is from {last!r}; it must be the user's, a tool's or the "
                         "assistant's (a reply begun), as TRL reads it")
    ready = dict(continue_final_message=True) if last == "assistant" else dict(add_generation_prompt=True)
    alone = tokenizer.apply_chat_template(prompt, tokenize=False, **ready, **template)
    whole = [tokenizer.apply_chat_template(prompt + response, tokenize=False, **template)
             for response in (chosen, rejected)]
    shared = os.path.commonprefix([alone, *whole])
    return shared, *(ChatTurn(text[len(shared):]) for text in whole)


def template_kwargs(row):
    """what a row's tools and chat_template_kwargs columns pass to the chat template, as TRL's DPOTrainer reads them
    (tools may be a JSON string)."""
    tools = json.loads(row["tools"]) if isinstance(row.get("tools"), str) else row.get("tools")
    return dict(tools=tools, **(row.get("chat_template_kwargs") or {}))


def rendered_pair(tokenizer, fields, where):
    """read_row's conversational fields -> a Pair of their text (render_conversation), with the messages kept."""
    prompt, chosen, rejected, extra = fields
    try:
        text = render_conversation(tokenizer, prompt, chosen, rejected, **template_kwargs(extra))
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    except Exception as e:  # the template's own checks (alternating roles...) raise what it likes
        raise UsageError(f"{where}: the chat template refuses the row: {(str(e).splitlines() or [''])[0]}") from None
    return Pair(*text, extra, messages=dict(prompt=prompt, chosen=chosen, rejected=rejected))


def user_pairs(cfg):
    """--data's pairs (read_pairs), plain prompts wrapped in the model's chat template under --chat-template; None
    without --data."""
    if not cfg.data:
        if cfg.data_split != "train":
            raise UsageError("--data-split applies to a hub dataset given to --data; leave it out")
        return None
    pairs = read_pairs(cfg.data, cfg.data_split, cfg.model)
    if cfg.chat_template and pairs[0].messages is not None:
        raise UsageError("--chat-template wraps plain-text prompts; conversational rows go through the model's chat "
                         "template anyway: leave the flag out")
    return with_chat_template(pairs, cfg.model) if cfg.chat_template else pairs


def as_users_turn(tokenizer, prompt):
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def with_chat_template(pairs, model):
    """--chat-template: each prompt as the user's turn of `model`'s chat template, ready for the assistant's reply
    (an instruct model answers a bare prompt with little or nothing)."""
    tokenizer = chat_tokenizer(model)
    return [Pair(as_users_turn(tokenizer, pair[0]), *pair[1:3], getattr(pair, "extra", None)) for pair in pairs]


def users_question(model):
    """for printing a --chat-template run: a function from a wrapped prompt back to the user's question, the text
    between what the template writes before and after the user's turn (found by wrapping a marker); a text the
    template did not write, or a model whose tokenizer cannot be loaded, comes back as it is."""
    try:
        before, _, after = as_users_turn(chat_tokenizer(model), "\x00").partition("\x00")
    except UsageError:
        return lambda text: text
    def question(text):
        inside = text.startswith(before) and text.endswith(after) and len(text) >= len(before) + len(after)
        return text[len(before):len(text) - len(after)] if inside else text
    return question


def shown_question(cfg, pairs=None):
    """for printing a run's samples: a function from a prompt as the model read it to what its user asked: a
    conversational pair's turns after any system turn, joined by " | " (a one-turn prompt: the question alone), a
    --chat-template prompt unwrapped (users_question), any other text as it is."""
    unwrap = users_question(cfg.model) if cfg.chat_template else str
    asked = {p[0]: " | ".join(str(m["content"]) for m in p.messages["prompt"] if m["role"] != "system")
             for p in pairs or () if getattr(p, "messages", None)}
    return lambda text: asked[text] if text in asked else unwrap(text)


# -----------------------------------------------------------------------------
# 4. the split, and the prompts that fit


def split_pairs(pairs, seed):
    """(train, held-out) lists of (prompt, chosen, rejected). choice: a random tenth, at least one pair, is held out."""
    order = np.random.default_rng([seed, 1]).permutation(len(pairs))
    n_held = max(1, len(pairs) // 10)
    return [pairs[i] for i in order[n_held:]], [pairs[i] for i in order[:n_held]]


def fitting(tokenizer, prompts, max_length):
    """the prompts that fit (fits)."""
    return [p for p in prompts if fits(tokenizer, p, max_length)]


def check_splits(splits, fits, batch_size, max_length):
    """each seed's (train, held-out) pairs: a batch of training pairs and one held-out pair whose prompt fits
    (fits(prompt) -> bool; None: every prompt fits)."""
    fits = fits or (lambda prompt: True)
    for train, held in splits:
        n_train = sum(fits(row[0]) for row in train)
        if n_train < batch_size:
            raise UsageError(f"--batch-size {batch_size} is larger than the {n_train} training pairs whose prompt fits "
                             f"in --max-length {max_length}; lower --batch-size or bring more pairs")
        if not any(fits(row[0]) for row in held):
            raise UsageError(f"no held-out prompt fits in --max-length {max_length}; raise it or shorten the prompts")


def check_data(pairs, splits, tokenizer, cfg):
    """your pairs against the model's tokenizer, before any training: every seed's split has a batch of pairs whose
    prompt fits in --max-length, and no word is unknown to the tokenizer (the built-in tiny model knows only the
    task's words: anything else would silently become <unk>)."""
    if not pairs:
        return
    unk = tokenizer.unk_token_id
    if unk is not None:
        ids = [i for row in pairs for text in row for i in tokenizer(text, add_special_tokens=False).input_ids]
        if unk in ids:
            who = "the built-in tiny model, which knows only the task's words" if cfg.model == "tiny" \
                else f"the tokenizer of --model {cfg.model}"
            raise UsageError(f"{ids.count(unk) / len(ids):.1%} of the tokens of --data {cfg.data} are unknown to {who}; "
                             "pass --model with a real causal LM (a folder, e.g. from convert_gguf.py, or gpt2)")
    check_splits(splits, lambda p: fits(tokenizer, p, cfg.max_length), cfg.batch_size, cfg.max_length)
