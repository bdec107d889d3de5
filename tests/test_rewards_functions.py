"""Built-in reward functions: answer checking, format, length, DAPO overlong (worked example), repetition."""

from __future__ import annotations

import pytest

from rlft.rewards import (
    REWARD_FUNCTIONS,
    RewardError,
    build_rewards,
    dapo_overlong_penalty,
    parse_number,
    repetition_penalty,
)


def fn(name: str, **options):
    return REWARD_FUNCTIONS.get(name)(**options)


def test_dapo_overlong_worked_example() -> None:
    # docs/algorithms.md §DAPO sampling and overlong shaping: L_max 20480, L_cache 4096.
    values = [dapo_overlong_penalty(n, 20480, 4096) for n in (16384, 18432, 20480, 20481)]
    assert values == [0.0, -0.5, -1.0, -1.0]
    assert dapo_overlong_penalty(100, 20480, 4096) == 0.0
    assert dapo_overlong_penalty(18432, 20480, 4096, penalty_factor=2.0) == -1.0


def test_overlong_reads_completion_lengths_or_counts_words() -> None:
    f = fn("overlong", max_len=32, cache=8)
    assert f(["p"] * 4, ["a"] * 4, completion_lengths=[10, 24, 28, 40]) == [0.0, 0.0, -0.5, -1.0]
    words = fn("overlong", max_len=4, cache=2, unit="words")
    assert words(["p"] * 2, ["a b", "a b c"]) == [0.0, -0.5]
    with pytest.raises(RewardError, match="completion_lengths"):
        f(["p"], ["a"])


def test_exact_match_normalises_extracts_and_passes_none() -> None:
    f = fn("exact_match")
    assert f(["q"] * 4, [" 42 ", "42\n", "4 2", "41"], answer=["42", "42", "42", "42"]) == [
        1.0,
        1.0,
        0.0,
        0.0,
    ]
    assert f(["q"], ["anything"], answer=[None]) == [None]
    boxed = fn("exact_match", extract=r"\\boxed\{(.*?)\}", ignore_case=True, incorrect=-1.0)
    got = boxed(["q"] * 3, ["so \\boxed{Paris}.", "\\boxed{London}", "Paris"], answer=["paris"] * 3)
    assert got == [1.0, -1.0, -1.0]
    with pytest.raises(RewardError, match="needs the row field 'answer'"):
        f(["q"], ["1"], label=["1"])


def test_numeric_match_first_or_last_number_with_tolerance() -> None:
    first = fn("numeric_match")
    comps = ["81", " 81 is the sum", "the sum is 1,234.0", "x", "-3"]
    answers = ["81", 81, "1234", "5", "-3.0"]
    assert first(["q"] * 5, comps, answer=answers) == [1.0, 1.0, 1.0, 0.0, 1.0]
    last = fn("numeric_match", position="last")
    assert last(["q"] * 2, ["3 + 4 = 7", "7 then 8"], answer=["7", "7"]) == [1.0, 0.0]
    loose = fn("numeric_match", rel_tol=0.01)
    assert loose(["q"], ["100.5"], answer=["100"]) == [1.0]
    assert parse_number("no digits") is None
    with pytest.raises(ValueError, match="not a number"):
        first(["q"], ["1"], answer=["one"])


def test_regex_format_modes() -> None:
    f = fn("regex_format", pattern=r"<think>.*?</think>\s*<answer>.*?</answer>")
    good = "<think>a\nb</think>\n<answer>4</answer>"
    assert f(["q"] * 3, [good, good + " extra", "<answer>4</answer>"]) == [1.0, 0.0, 0.0]
    search = fn("regex_format", pattern=r"\d", mode="search", match=0.5, no_match=-0.5)
    assert search(["q"] * 2, ["ab1", "ab"]) == [0.5, -0.5]


def test_length_penalty() -> None:
    f = fn("length", target=10, coef=0.1, unit="words", max_penalty=0.5)
    comps = [" ".join(["w"] * n) for n in (10, 12, 30)]
    assert f(["q"] * 3, comps) == pytest.approx([0.0, -0.2, -0.5])
    chars = fn("length", coef=1.0, unit="chars")
    assert chars(["q"], ["abc"]) == [-3.0]


def test_repetition_penalty() -> None:
    assert repetition_penalty("a b a b", 1, -1.0) == pytest.approx(-0.5)
    assert repetition_penalty("a b c d", 1, -1.0) == 0.0
    assert repetition_penalty("a b", 3, -1.0) == 0.0  # fewer words than n
    # trigrams of "a b c a b c": abc, bca, cab, abc → 3 distinct of 4
    assert repetition_penalty("A b c a B c", 3, -2.0) == pytest.approx(-0.5)
    f = fn("repetition", ngram_size=1, max_penalty=-1.0)
    assert f(["q"] * 2, ["green green green green", "green calm"]) == [-0.75, 0.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "overlong", "max_len": 8, "cache": 10}, "0 < cache <= max_len"),
        ({"name": "overlong", "max_len": 8, "cache": 2, "unit": "bytes"}, "unit='bytes'"),
        ({"name": "regex_format"}, "needs the option 'pattern'"),
        ({"name": "regex_format", "pattern": "("}, "not a valid regular expression"),
        ({"name": "regex_format", "pattern": "a", "mode": "all"}, "mode='all'"),
        ({"name": "numeric_match", "position": "middle"}, "position='middle'"),
        ({"name": "repetition", "max_penalty": 1.0}, "max_penalty=1.0"),
        ({"name": "length", "coef": -1}, "coef=-1"),
        ({"name": "exact_match", "feild": "answer"}, r"rewards\[0\]: exact_match: unknown option 'feild'"),
    ],
)
def test_bad_builtin_options_fail_at_build_time(spec, message) -> None:
    with pytest.raises(RewardError, match=message):
        build_rewards([spec])
