"""
The built-in task: an analogue, small enough for a laptop, of the paper's length-bias experiment.

Prompts ask for a short movie review; pi_ref writes one to six sentences such as "the acting was brilliant .".
Two gold readers say what a response is really worth, and a biased annotator labels pairs: with probability
`bias` it prefers the longer response, otherwise the one its gold reader prefers.

- careful (the default): a reader who wants the review's sentiment said once and briefly. It counts each
  distinct well-formed sentence once, loses interest past ENOUGH sentences, and marks down repeated or
  garbled sentences. Here the annotator's taste for length can do harm.
- neutral (the control): the share of positive adjectives, blind to length, repetition and word salad. Here
  the length bias is only label noise.

experiment.py and models.py import from it (rddpo.py, the method, imports none of it); docs/METHOD.md#task
states each choice and its reason.
"""
import re

import numpy as np

POSITIVE = "great wonderful brilliant moving superb delightful charming clever beautiful excellent".split()
NEGATIVE = "awful boring dull terrible weak clumsy tedious bland messy forgettable".split()
NEUTRAL = "typical familiar quiet loud slow simple modern serious".split()
NOUNS = "acting plot story music ending script cast pacing dialogue camera".split()
ADVERBS = "very quite really rather".split()
TITLES = ("the long night|blue harbor|a quiet storm|the last train|paper moon|silver lake|the red door|"
          "winter road|the glass house|dark water|the old mill|a summer game|the iron bridge|lost signal|"
          "the green hill|city of ash|the night shift|a cold wind|the narrow gate|empty rooms").split("|")
EVAL_TITLES = "the hidden valley|broken clocks|the salt road|a distant bell|the white tower|north star".split("|")
OPENERS = ["my review of", "i watched", "thoughts on", "a few words about"]
MAX_SENTENCES = 6
GOLDS = ("careful", "neutral")
ENOUGH = 3  # choice: three sentences say all a short review needs; each one past them costs the careful reader
RAMBLE = 0.25  # 0.25, so a six-sentence review loses 0.75 of the [-1, 1] sentiment scale


def words(text):
    """the lower-case words of any tokenizer's text: case, punctuation and spacing do not matter."""
    return re.findall(r"[a-z]+", text.lower())


def sentences(text):
    """the text's sentences, each a tuple of its words; a trailing fragment without a full stop counts too."""
    return [tuple(words(s)) for s in re.split(r"[.!?]+", text) if words(s)]


def well_formed(sentence):
    """'the <noun> was [<adverb>] <adjective>', the only sentence a review here needs."""
    return (len(sentence) in (4, 5) and sentence[:1] == ("the",) and sentence[1] in NOUNS and sentence[2] == "was"
            and (len(sentence) == 4 or sentence[3] in ADVERBS) and sentence[-1] in POSITIVE + NEGATIVE + NEUTRAL)


def sentiment(adjectives):
    """(positive - negative) / all adjectives, in [-1, 1]; 0 with none."""
    pos, neg = sum(a in POSITIVE for a in adjectives), sum(a in NEGATIVE for a in adjectives)
    return (pos - neg) / max(1, pos + neg + sum(a in NEUTRAL for a in adjectives))


def gold_reward(text, reader="careful"):
    """what a response is worth to the gold reader.
    neutral: the sentiment of every adjective the text uses. choice: a share, not a count, so length costs nothing.
    careful: the sentiment of its distinct well-formed sentences, minus the share of its sentences that are
    repeats or garbled, minus RAMBLE for each sentence past ENOUGH. choice: repetition and word salad cannot
    raise the score, and verbosity lowers it, as it would for a person reading reviews."""
    if reader == "neutral":
        return sentiment([w for w in words(text) if w in POSITIVE + NEGATIVE + NEUTRAL])
    if reader != "careful":
        raise ValueError(f"unknown gold reader {reader!r}; choose from {', '.join(GOLDS)}")
    said = sentences(text)
    distinct = list(dict.fromkeys(s for s in said if well_formed(s)))  # in order, each once
    noise = (len(said) - len(distinct)) / max(1, len(said))
    return sentiment([s[-1] for s in distinct]) - noise - RAMBLE * max(0, len(said) - ENOUGH)


def make_prompts(rng, n, titles):
    return [f"{OPENERS[rng.integers(len(OPENERS))]} {titles[rng.integers(len(titles))]} :" for _ in range(n)]


def make_review(rng):
    """one continuation: 1 to 6 sentences whose adjectives lean to a sentiment drawn per review."""
    p_pos = rng.random()  # sentiment and length are drawn independently
    out = []
    for _ in range(rng.integers(1, MAX_SENTENCES + 1)):
        u = rng.random()
        adjs = POSITIVE if u < 0.8 * p_pos else NEGATIVE if u < 0.8 else NEUTRAL
        adverb = f"{ADVERBS[rng.integers(len(ADVERBS))]} " if rng.random() < 0.3 else ""
        out.append(f"the {NOUNS[rng.integers(len(NOUNS))]} was {adverb}{adjs[rng.integers(len(adjs))]} .")
    return " " + " ".join(out)


def reviews(rng, n=64):
    """n prompts with a review each: the corpus the reference is fine-tuned on so that it speaks the task."""
    return [p + make_review(rng) for p in make_prompts(rng, n, TITLES + EVAL_TITLES)]


def word_tokenizer(words):
    """a word-level tokenizer over a closed vocabulary, built in code (nothing downloaded); eos pads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<unk>"] + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>")


def build_tokenizer():
    """a word-level tokenizer built in code over the task's closed vocabulary (nothing downloaded)."""
    return word_tokenizer(POSITIVE + NEGATIVE + NEUTRAL + NOUNS + ADVERBS + ["the", "was", ".", ":"]
                          + " ".join(TITLES + EVAL_TITLES + OPENERS).split())


def longest_text_tokens(tokenizer, slots):
    """tokens in the longest text made by taking, for each slot (a list of words), its word with the most tokens."""
    def n(text):
        return len(tokenizer(text, add_special_tokens=False).input_ids)
    return n("".join(" " + max(words, key=lambda w: n(" " + w)) for words in slots).lstrip())


def longest_task_tokens(tokenizer):
    """tokens in the longest prompt + review the task can generate, with eos: what --max-length must hold."""
    sentence = [["the"], NOUNS, ["was"], ADVERBS, POSITIVE + NEGATIVE + NEUTRAL, ["."]]
    return longest_text_tokens(tokenizer, [OPENERS, TITLES + EVAL_TITLES, [":"]] + sentence * MAX_SENTENCES) + 1


def annotate(gold1, gold2, len1, len2, bias, rng):
    """the biased annotator: True where the first response of a pair wins. with probability `bias` the longer
    response (in words) wins, otherwise the one with the higher gold reward; ties at random. all arguments (N,).
    choice: the gold decision is the argmax, so the length bias is the only label noise."""
    coin = rng.random(len(gold1)) < 0.5  # (N,) breaks ties
    biased = rng.random(len(gold1)) < bias  # (N,)
    return np.where(biased, np.where(len1 == len2, coin, len1 > len2), np.where(gold1 == gold2, coin, gold1 > gold2))


def label_pairs(first, second, bias, rng, gold="careful"):
    """the (chosen, rejected) texts of the pairs (first[i], second[i]), as the biased annotator labels them."""
    wins = annotate(np.array([gold_reward(y, gold) for y in first]), np.array([gold_reward(y, gold) for y in second]),
                    np.array([len(words(y)) for y in first]), np.array([len(words(y)) for y in second]), bias, rng)
    pairs = [(a, b) if w else (b, a) for a, b, w in zip(first, second, wins)]
    return [c for c, _ in pairs], [r for _, r in pairs]
