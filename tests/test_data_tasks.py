"""rlft.data built-in tasks: determinism, disjoint splits, rewards, gold scorer and label noise."""

from __future__ import annotations

import re

import pytest

from rlft.data import (
    TASKS,
    DataError,
    PreferenceRecord,
    PromptCompletionRecord,
    PromptRecord,
    RankedRecord,
    TextRecord,
    UnpairedRecord,
    accuracy,
    exact_match_reward,
    get_task,
    load_records,
    save_records,
)
from rlft.data.tasks.preference import _WEIGHTS, PROMPTS, VOCAB, policy_gold_stats


def test_registry_and_lookup_errors():
    assert TASKS.names() == ["arithmetic", "preference"]
    with pytest.raises(DataError) as err:
        get_task("algebra")
    assert str(err.value) == "unknown task 'algebra'; expected one of: arithmetic, preference"
    with pytest.raises(
        DataError, match="task 'arithmetic': unknown option 'max_num'; expected one of: min_operand"
    ):
        get_task("arithmetic", max_num=5)
    with pytest.raises(DataError, match="option operands=4: expected 2 or 3"):
        get_task("arithmetic", operands=4)


# --- arithmetic ------------------------------------------------------------------------------------------


def solve(prompt: str) -> int:
    tokens = re.findall(r"[+-]|\d+", prompt.rstrip("="))
    value = int(tokens[0])
    for op, x in zip(tokens[1::2], tokens[2::2], strict=True):
        value = value + int(x) if op == "+" else value - int(x)
    return value


def test_arithmetic_records_are_correct_and_deterministic():
    task = get_task("arithmetic", max_operand=20, operands=3)
    records = task.sft_records(200, seed=1)
    assert records == task.sft_records(200, seed=1)
    assert records != task.sft_records(200, seed=2)
    for r in records:
        assert isinstance(r, PromptCompletionRecord)
        assert re.fullmatch(r"\d+[+-]\d+[+-]\d+=", r.prompt)
        assert r.completion == r.extra["answer"] == str(solve(r.prompt))
        assert all(0 <= int(x) <= 20 for x in re.findall(r"\d+", r.prompt))
    prompts = task.prompt_records(5, seed=1)
    assert [p.prompt for p in prompts] == [r.prompt for r in records[:5]]
    assert prompts[0] == PromptRecord(records[0].prompt, extra={"answer": records[0].completion})
    nonneg = get_task("arithmetic", ops="-", allow_negative=False).sft_records(100)
    assert all(int(r.completion) >= 0 for r in nonneg)


def test_arithmetic_splits_are_disjoint():
    task = get_task("arithmetic")
    train = {r.prompt for r in task.prompt_records(3000, seed=0)}
    held_out = {r.prompt for r in task.prompt_records(500, seed=0, split="eval")}
    assert train and held_out and not train & held_out
    # 'test' is an alias of 'eval'; membership depends only on the prompt's hash, never on the seed.
    assert task.prompt_records(50, seed=7, split="test") == task.prompt_records(50, seed=7, split="eval")
    assert not {r.prompt for r in task.prompt_records(500, seed=7, split="eval")} & train


def test_exact_match_reward_and_accuracy_on_hand_examples():
    completions = ["81", " 81\n", "81 is the sum", "812", "8", "x81", "", "-35", "+7"]
    answers = ["81"] * 7 + ["-35", "7"]
    assert exact_match_reward(None, completions, answer=answers) == [1, 1, 1, 0, 0, 0, 0, 1, 1]
    assert accuracy(["3", "4", "5 ", "six"], ["3", "5", "5", "6"]) == 0.5
    task = get_task("arithmetic")
    assert task.reward(["1+2="], ["3"], answer=["3"]) == [1.0]
    assert task.evaluate(["1+2=", "2+2="], ["3", "5"], answer=["3", "4"]) == {"accuracy": 0.5}
    # TRL conversational completions: the last message's content is scored.
    assert exact_match_reward(None, [[{"role": "assistant", "content": "12"}]], answer=[12]) == [1.0]
    with pytest.raises(DataError, match="expected lists of equal length"):
        exact_match_reward(None, ["1", "2"], answer=["1"])


def test_small_operand_range_runs_out_of_eval_problems():
    with pytest.raises(DataError, match="the 'eval' split has too few distinct problems"):
        get_task("arithmetic", max_operand=1, ops="+", eval_fraction=0.01).prompt_records(50, split="eval")


# --- preference ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pref():
    return get_task("preference")


def test_preference_prompts_split_and_determinism(pref):
    train, held_out = set(pref.prompts("train")), set(pref.prompts("eval"))
    assert not train & held_out and train | held_out == set(PROMPTS) and len(PROMPTS) == 160
    assert 20 <= len(held_out) <= 45
    records = pref.preference_pairs(50, seed=3)
    assert records == pref.preference_pairs(50, seed=3) and records != pref.preference_pairs(50, seed=4)
    assert {r.prompt for r in pref.sft_records(300, split="eval")} <= held_out
    assert {r.prompt for r in pref.prompt_records(300)} <= train


def test_gold_score_definition(pref):
    prompt = "Describe the forest briefly:"  # nature group, best length 5
    best = " green wild busy tasty calm"
    scores = pref.gold_score(
        [prompt] * 6,
        [
            best,
            " Green, wild. busy tasty calm!",
            " green green green green green",
            " silent smart",
            " very fast",
            "",
        ],
    )
    # w = clip(quality + bonus): green 1 + 0.25 → 1, wild 0.75 + 0.25, busy and tasty 1 (no bonus), calm 0.5 + 0.25
    assert scores[0] == pytest.approx(0.6 * (1.0 + 1.0 + 1.0 + 1.0 + 0.75) / 5 + 0.3)
    assert scores[1] == scores[0]  # case and punctuation do not matter
    assert scores[2] == pytest.approx(0.6 + 0.3 - 0.8)  # repeats are penalised
    too_short = 0.3 * (1 - (3 / 4) ** 2)
    # opposite group (machines): silent -0.5 - 0.25, smart -0.75 - 0.25
    assert scores[3] == pytest.approx(0.6 * (-0.75 - 1.0) / 2 + too_short)
    assert scores[4] == pytest.approx(0.6 * (-1.0 + 0.75) / 2 + too_short)  # filler -1, fast 1 - 0.25
    assert scores[5] == -1.0
    # The group bonus: the same words answer a machines prompt (nature is its opposite group) worse.
    robot = pref.gold_score(["Describe the robot briefly:"], [best])[0]
    assert robot == pytest.approx(0.6 * (0.75 + 0.5 + 1.0 + 1.0 + 0.25) / 5 + 0.3) and robot < scores[0]
    with pytest.raises(DataError, match="is not one of its prompts"):
        pref.gold_score(["Tell me a joke:"], [best])


def test_best_completions_leave_headroom_over_the_mediocre_policy(pref):
    # Greedy optimum per prompt: the best-weighted distinct words at the style's length.
    best = []
    for prompt, (group, length) in PROMPTS.items():
        words = sorted(VOCAB, key=lambda w: -_WEIGHTS[group][w])[:length]
        best.append(pref.gold_score([prompt], [" " + " ".join(words)])[0])
    assert min(best) > 0.75 and max(best) < 0.9 and sum(best) / len(best) > 0.8


def test_mediocre_policy_leaves_room_to_improve(pref):
    stats = policy_gold_stats()
    assert -0.2 < stats["mean"] < 0.2 and -0.2 < stats["median"] < 0.2
    records = pref.sft_records(500)
    gold = pref.gold_score([r.prompt for r in records], [r.completion for r in records])
    assert all(-1.0 <= g <= 1.0 for g in gold) and sum(gold) / len(gold) < 0.3
    words = [w for r in records for w in r.completion.split()]
    assert set(words) <= set(VOCAB)
    assert all(len(set(r.completion.split())) == len(r.completion.split()) for r in records)
    assert all(4 <= len(r.completion.split()) <= 12 for r in records)


def agreement(pref, pairs):
    return sum(
        pref.gold_score([r.prompt], [r.chosen])[0] > pref.gold_score([r.prompt], [r.rejected])[0]
        for r in pairs
    ) / len(pairs)


def test_preference_labels_agree_with_gold_at_one_minus_noise(pref):
    assert agreement(pref, pref.preference_pairs(500, label_noise=0.0)) == 1.0
    rate = agreement(pref, pref.preference_pairs(4000, seed=1, label_noise=0.1))
    assert rate == pytest.approx(0.9, abs=0.02)
    assert pref.noise_ceiling(0.1) == pytest.approx(0.9) and pref.noise_ceiling(0.0) == 1.0
    bt_rate = agreement(pref, pref.preference_pairs(4000, seed=2, label_noise="bt"))
    assert 0.6 < pref.noise_ceiling("bt") < 1.0
    assert bt_rate == pytest.approx(pref.noise_ceiling("bt"), abs=0.025)
    with pytest.raises(DataError, match="label_noise must be a number in"):
        pref.preference_pairs(5, label_noise=0.7)


def test_ranked_unpaired_and_win_rate(pref):
    ranked = pref.ranked_records(20, k=3, seed=5)
    assert all(isinstance(r, RankedRecord) and len(r.responses) == len(r.scores) == 3 for r in ranked)
    assert all(
        r.scores == [round(g, 6) for g in pref.gold_score([r.prompt] * 3, r.responses)] for r in ranked
    )
    unpaired = pref.unpaired_records(2000, seed=5)
    median = policy_gold_stats()["median"]
    assert all(u.label == (pref.gold_score([u.prompt], [u.completion])[0] > median) for u in unpaired[:200])
    assert 0.45 < sum(u.label for u in unpaired) / len(unpaired) < 0.55
    prompts = [r.prompt for r in ranked]
    best = [" green wild busy tasty calm"] * len(prompts)
    assert pref.win_rate(prompts, best, best) == 0.5
    assert pref.win_rate(["Describe the forest briefly:"], best[:1], [" fast metal"]) == 1.0
    metrics = pref.evaluate(prompts, [r.responses[0] for r in ranked])
    assert set(metrics) == {"gold_score", "mean_words", "distinct_ratio"} and metrics["distinct_ratio"] == 1.0


def test_corpus_covers_every_prompt_and_word():
    for name in ("arithmetic", "preference"):
        assert get_task(name).corpus(200, seed=1) == get_task(name).corpus(200, seed=1)
    text = " ".join(get_task("preference").corpus(200))
    assert set(VOCAB) <= set(text.split())
    assert all(p in text for p in PROMPTS)


# --- tasks as data sources -------------------------------------------------------------------------------


def test_task_source_strings_in_load_records(tmp_path):
    records = load_records("task:arithmetic?max_operand=9&n=5&seed=2", fmt="prompt_only")
    assert records == get_task("arithmetic", max_operand=9).prompt_records(5, seed=2)
    assert load_records("task:arithmetic?ops=+", limit=7)[0].prompt.count("+") == 1
    assert len(load_records("task:arithmetic", limit=7)) == 7
    pairs = load_records("task:preference?label_noise=0&n=20", fmt="preference", split="eval")
    assert (
        all(isinstance(r, PreferenceRecord) for r in pairs)
        and agreement(get_task("preference"), pairs) == 1.0
    )
    assert isinstance(load_records("task:preference?k=3", fmt="ranked", limit=2)[0], RankedRecord)
    assert isinstance(load_records("task:preference", fmt="unpaired", limit=2)[0], UnpairedRecord)
    assert isinstance(load_records("task:preference", fmt="text", limit=2)[0], TextRecord)
    with pytest.raises(
        DataError, match="task 'arithmetic' has no preference data; it offers: prompt_completion"
    ):
        load_records("task:arithmetic", fmt="preference")
    with pytest.raises(DataError, match="unknown task 'nope'"):
        load_records("task:nope")
    # Task records are ordinary records: they survive a round trip through a file.
    save_records(records, tmp_path / "arith.jsonl")
    assert load_records(tmp_path / "arith.jsonl") == records
