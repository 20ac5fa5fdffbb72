"""tests of the built-in task (harness/task.py): both gold readers by hand, length under each reader, the
annotator, labelling pairs, and the longest text the task writes. run with `pytest -q tests/test_task.py` (seconds)."""
import numpy as np
import pytest

from harness import task
from test_rddpo import tokenizer  # noqa: F401 (a fixture)


def test_neutral_gold_hand_values():
    """(positive - negative) / (positive + negative + neutral adjectives): 'great' and 'dull' -> 0; 'great' and
    the neutral 'quiet' -> 1/2; 'awful' alone -> -1; no adjective -> 0; word salad 'great great boring' -> 1/3."""
    def gold(text):
        return task.gold_reward(text, "neutral")
    assert gold(" the acting was great . the plot was dull .") == 0.0
    assert gold(" the plot was great . the music was quiet .") == 0.5
    assert gold(" the plot was awful .") == -1.0
    assert gold(" the plot was .") == 0.0
    assert gold(" great great boring") == pytest.approx(1 / 3)
    assert gold(" the plot was great . " * 3) == 1.0  # repetition costs nothing
    assert gold("The plot was GREAT. The music was quiet!") == 0.5  # any tokenizer's case and spacing


def test_careful_gold_hand_values():
    """sentiment of the distinct well-formed sentences - share of repeated or garbled sentences - 0.25 per sentence
    past 3. 'great' and 'dull' -> 0 - 0 - 0 = 0; the same sentence three times -> 1 - 2/3 = 1/3; five distinct
    positive sentences -> 1 - 0 - 0.25 * 2 = 0.5; word salad 'great great boring' (one garbled sentence) -> 0 - 1 = -1;
    a garbled sentence beside a good one -> 1 - 1/2 = 0.5; nothing -> 0."""
    assert task.gold_reward(" the acting was great . the plot was dull .") == 0.0
    assert task.gold_reward(" the plot was great . " * 3) == pytest.approx(1 / 3)
    five = (" the plot was great . the cast was superb . the music was moving . the ending was clever ."
            " the script was fun .")
    assert task.gold_reward(five) == pytest.approx(1 - 1 / 5 - 0.25 * 2)  # 'fun' is no adjective of the task: garbled
    assert task.gold_reward(five.replace("fun", "charming")) == pytest.approx(0.5)
    assert task.gold_reward(" great great boring") == -1.0
    assert task.gold_reward(" the plot was great . harbor : harbor the") == 0.5
    assert task.gold_reward("") == 0.0
    assert task.gold_reward("The acting was GREAT. The plot was very dull!") == 0.0  # any tokenizer's text
    assert task.gold_reward("The acting was great.") == task.gold_reward(" the acting was great .") == 1.0
    with pytest.raises(ValueError, match="careful, neutral"):
        task.gold_reward("x", "kind")


def test_length_hurts_under_the_careful_gold_and_not_under_the_neutral_one():
    """on 3000 reviews of the kind pi_ref learns to write, the careful gold falls with the number of sentences
    (correlation below -0.3) while the neutral one does not depend on it (|correlation| < 0.05): only under the
    careful reader can the annotator's taste for length do harm."""
    rng = np.random.default_rng(0)
    texts = [task.make_review(rng) for _ in range(3000)]
    n = np.array([t.count(".") for t in texts])
    careful, neutral = (np.array([task.gold_reward(t, g) for t in texts]) for g in ("careful", "neutral"))
    assert np.corrcoef(careful, n)[0, 1] < -0.3
    assert abs(np.corrcoef(neutral, n)[0, 1]) < 0.05


def test_the_annotator_follows_gold_at_bias_0_length_at_bias_1_and_a_coin_on_ties():
    """pairs: (gold 1, 3 words) vs (0, 10 words); (0, 10) vs (1, 3); a tie in both. bias 0: gold decides ->
    first wins, second loses; bias 1: length decides -> the opposite. ties go either way, about half each."""
    gold1, gold2 = np.array([1.0, 0.0] + [0.5] * 400), np.array([0.0, 1.0] + [0.5] * 400)
    len1, len2 = np.array([3, 10] + [5] * 400), np.array([10, 3] + [5] * 400)
    for bias, expect in ((0.0, [True, False]), (1.0, [False, True])):
        wins = task.annotate(gold1, gold2, len1, len2, bias, np.random.default_rng(0))
        assert wins[:2].tolist() == expect, bias
        assert 0.4 < wins[2:].mean() < 0.6
    # bias 0.3: the longer (second of pair 1) wins 30 % of the time
    wins = task.annotate(np.tile(gold1[:2], 500), np.tile(gold2[:2], 500), np.tile(len1[:2], 500),
                         np.tile(len2[:2], 500), 0.3, np.random.default_rng(1))
    assert abs((~wins[::2]).mean() - 0.3) < 0.05 and abs(wins[1::2].mean() - 0.3) < 0.05


def test_label_pairs_gives_the_annotators_winner_as_chosen():
    """'great' (5 words, gold 1) against 'awful ... quiet' (10 words, gold -1/2): at bias 0 the first is chosen, at
    bias 1 the longer second one is."""
    first, second = [" the plot was great ."], [" the plot was awful . the music was quiet ."]
    assert task.label_pairs(first, second, 0.0, np.random.default_rng(0)) == (first, second)
    assert task.label_pairs(first, second, 1.0, np.random.default_rng(0)) == (second, first)


def test_longest_task_text_is_45_tokens_of_the_word_level_tokenizer(tokenizer):
    """'a few words about' (4) + a 3-word title + ':' = 8; six sentences 'the NOUN was ADVERB ADJ .' = 36; eos 1.
    the task really generates no longer text: the longest of 20000 generated reviews is within it."""
    assert task.longest_task_tokens(tokenizer) == 45
    rng = np.random.default_rng(0)
    texts = [p + task.make_review(rng) for p in task.make_prompts(rng, 20000, task.TITLES + task.EVAL_TITLES)]
    assert max(len(tokenizer(t).input_ids) + 1 for t in texts) <= 45
