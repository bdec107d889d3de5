"""The reward API: combining weighted sources, None, every error case, user functions, pools, tasks and
a reward model as a source."""

from __future__ import annotations

import hashlib
import math
import textwrap
import threading
import time

import pytest
import torch

from rlft.data import get_task
from rlft.models import init_tiny_model, train_tokenizer
from rlft.models.hf import save_pretrained_atomic
from rlft.models.scalar_head import reward_model_from_causal_lm, save_reward_model, sequence_scores
from rlft.rewards import (
    RewardError,
    build_rewards,
    check_reward_sources,
    load_function,
    parse_spec,
    pin_reward_files,
    reward_sources,
)
from rlft.rewards.pool import start_time

USER_MODULE = """
import math

CALLS = []  # batch sizes boom_on_x was called with

def count_a(prompts, completions, **fields):
    return [float(c.count("a")) for c in completions]

def named_only(prompts, completions, answer, scale=1.0):
    return [scale * float(c == a) for c, a in zip(completions, answer)]

def maybe(prompts, completions, **fields):
    return [None if c == "skip" else 1.0 for c in completions]

def boom_on_x(prompts, completions, **fields):
    CALLS.append(len(completions))
    return [1 / 0 if c == "x" else 0.0 for c in completions]

def sleepy(prompts, completions, **fields):
    import time
    time.sleep(float(completions[0]))
    return [1.0] * len(completions)

def stuck(prompts, completions, **fields):
    import time
    open(completions[0], "w").close()  # tells the test the call has started
    time.sleep(600)

def grad_mode(prompts, completions, **fields):
    import torch
    return [float(torch.is_grad_enabled())] * len(completions)

def type_error(prompts, completions, **fields):
    raise TypeError("wrong type")

def batch_only_boom(prompts, completions, **fields):
    if len(completions) > 1:
        raise RuntimeError("cannot batch")
    return [0.0]

def short(prompts, completions, **fields):
    return [0.0] * (len(completions) - 1)

def nan_on_n(prompts, completions, **fields):
    return [math.nan if c == "n" else math.inf if c == "i" else 1.0 for c in completions]

def text_value(prompts, completions, **fields):
    return ["high" for c in completions]

def scalar(prompts, completions, **fields):
    return 1.0

NOT_CALLABLE = 3
"""


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("user") / "my_rewards.py"
    path.write_text(textwrap.dedent(USER_MODULE))
    return str(path)


def ref(user_file: str, name: str) -> dict:
    return {"function": f"{user_file}:{name}"}


def test_total_is_weighted_sum_over_functions_that_returned_a_value(user_file) -> None:
    rewards = build_rewards(
        [{**ref(user_file, "count_a"), "weight": 0.5}, {**ref(user_file, "maybe"), "weight": 2.0}]
    )
    assert rewards.names == ["count_a", "maybe"]
    result = rewards(["p"] * 3, ["aa", "skip", "b"])
    torch.testing.assert_close(result.total, torch.tensor([3.0, 0.0, 2.0]))  # "skip": 0.5·0 + nothing
    assert math.isnan(float(result.per_function["maybe"][1]))
    assert result.valid.tolist() == [True, True, True] and result.skipped == 0
    assert result.total.dtype == torch.float32 and result.valid.dtype == torch.bool


def test_sample_with_no_reward_at_all_is_nan_and_invalid(user_file) -> None:
    result = build_rewards([ref(user_file, "maybe")])(["p", "p"], ["skip", "ok"])
    assert math.isnan(float(result.total[0])) and float(result.total[1]) == 1.0
    assert result.valid.tolist() == [False, True] and result.skipped == 0
    nothing = build_rewards([ref(user_file, "maybe")])(["p", "p"], ["skip", "skip"])  # None for every sample
    assert not bool(nothing.valid.any()) and nothing.skipped == 0 and bool(nothing.total.isnan().all())


def test_raising_function_is_called_once_and_named_with_the_line_that_raised(user_file) -> None:
    rewards = build_rewards([ref(user_file, "boom_on_x")])
    calls = load_function(f"{user_file}:boom_on_x").__globals__["CALLS"]
    calls.clear()
    line = USER_MODULE.splitlines().index('    return [1 / 0 if c == "x" else 0.0 for c in completions]') + 1
    with pytest.raises(RewardError) as caught:
        rewards(["q"] * 8, ["a"] * 7 + ["x"])
    assert calls == [8]  # not called again sample by sample: a reward function may have side effects
    assert str(caught.value) == (
        f"reward function 'boom_on_x' raised ZeroDivisionError: division by zero at {user_file}:{line} "
        "on a batch of 8 samples; it is not called again"
    )
    with pytest.raises(
        RewardError, match=r"'batch_only_boom' raised RuntimeError: cannot batch at .*:\d+ on"
    ):
        build_rewards([ref(user_file, "batch_only_boom")])(["p", "p"], ["a", "b"])
    # TypeError re-raised with a hint by the wrapper: the user's line is found through the cause
    with pytest.raises(
        RewardError, match=r"raised TypeError: wrong type .*my_rewards.py:\d+ on a batch of 1"
    ):
        build_rewards([{**ref(user_file, "type_error"), "timeout": 0}])([[{"role": "user"}]], ["a"])


def test_timeout_stops_a_function_that_does_not_return(user_file) -> None:
    rewards = build_rewards([{**ref(user_file, "sleepy"), "timeout": 0.2}])
    with pytest.raises(
        RewardError,
        match=r"'sleepy' did not return within 0.2 s on a batch of 2 samples \(spec option timeout\)",
    ):
        rewards(["p", "p"], ["30", "30"])
    assert rewards(["p"], ["0"]).total.tolist() == [1.0]  # the fast path returns as before
    assert build_rewards([{**ref(user_file, "sleepy"), "timeout": None}])(["p"], ["0"]).total.tolist() == [
        1.0
    ]
    assert parse_spec(ref(user_file, "sleepy")).timeout == 300.0
    with torch.no_grad():  # the worker thread keeps the caller's grad mode
        assert build_rewards([ref(user_file, "grad_mode")])(["p"], ["a"]).total.tolist() == [0.0]
    assert parse_spec({**ref(user_file, "sleepy"), "timeout": 0}).timeout is None


def test_wrong_count_nan_inf_and_non_numbers_are_errors(user_file) -> None:
    with pytest.raises(RewardError, match="'short' returned 1 values for 2 completions"):
        build_rewards([ref(user_file, "short")])(["p", "p"], ["a", "b"])
    nan = build_rewards([ref(user_file, "nan_on_n")])
    with pytest.raises(RewardError, match=r"returned nan for sample 1 .*finite number or None"):
        nan(["p", "p"], ["ok", "n"])
    with pytest.raises(RewardError, match="returned inf for sample 0"):
        nan(["p"], ["i"])
    with pytest.raises(RewardError, match="returned str 'high' for sample 0"):
        build_rewards([ref(user_file, "text_value")])(["p"], ["a"])
    with pytest.raises(RewardError, match="returned a float; expected a list"):
        build_rewards([ref(user_file, "scalar")])(["p"], ["a"])


def test_skip_mode_marks_and_counts_invalid_samples(user_file) -> None:
    rewards = build_rewards([ref(user_file, "nan_on_n"), ref(user_file, "count_a")], on_invalid="skip")
    result = rewards(["p"] * 4, ["a", "n", "i", "aa"])
    assert result.skipped == 2
    assert result.valid.tolist() == [True, False, False, True]
    assert result.total[0] == 2.0 and result.total[3] == 3.0 and result.total[1:3].isnan().all()
    assert float(result.per_function["count_a"][1]) == 0.0  # other functions still reported
    short = build_rewards([ref(user_file, "short"), ref(user_file, "count_a")], on_invalid="skip")
    result = short(["p"] * 3, ["a", "b", "c"])
    assert result.skipped == 3 and not result.valid.any()


def test_user_functions_from_module_and_file_get_the_fields_they_take(
    user_file, tmp_path, monkeypatch
) -> None:
    package = tmp_path / "rwpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scoring.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    rewards = build_rewards(
        ["rwpkg.scoring:count_a", {**ref(user_file, "named_only"), "scale": 3.0, "alias": "exact"}]
    )
    assert rewards.names == ["count_a", "exact"]
    # named_only takes no **kwargs: it must not receive `other` or completion_lengths.
    result = rewards(
        ["p", "p"], ["a", "b"], rows={"answer": ["a", "c"], "other": [1, 2]}, completion_lengths=[1, 1]
    )
    assert result.per_function["exact"].tolist() == [3.0, 0.0]
    assert result.total.tolist() == [4.0, 0.0]
    assert load_function("rwpkg.scoring:count_a")(["p"], ["aaa"]) == [3.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_reward", "unknown reward function 'no_such_reward'"),
        ({"name": "exact_match", "function": "m:f"}, "exactly one of the keys"),
        (42, "expected a reward name or a mapping"),
        ({"name": "exact_match", "weight": "heavy"}, "key 'weight'"),
        ({"name": "exact_match", "processes": -1}, "key 'processes'"),
        ({"reward_model": "some/dir", "processes": 2}, "runs in-process"),
        ({"name": "exact_match", "timeout": -1}, r"rewards\[0\]: key 'timeout': expected a finite number"),
        ({"name": "exact_match", "timeout": float("inf")}, "key 'timeout'"),
        ({"name": "exact_match", "timeout": "10"}, "key 'timeout'"),
        ({"name": "exact_match", "timeout": True}, "key 'timeout'"),
        ({"function": "no_such_module_xyz:f"}, "cannot import module 'no_such_module_xyz'"),
        ({"function": "/nonexistent/dir/r.py:f"}, "no file"),
        ({"function": "math:no_such_fn"}, "has no attribute 'no_such_fn'"),
        ({"function": "math:pi"}, "not a function"),
        ({"task": "no_such_task"}, "unknown task"),
        ({"reward_model": "/nonexistent/rm"}, "no model at"),
    ],
)
def test_bad_specs(spec, message) -> None:
    with pytest.raises(RewardError, match=message):
        build_rewards([spec])


def test_bad_calls_and_set_level_errors(user_file) -> None:
    with pytest.raises(RewardError, match="second reward named 'exact_match'; give one an alias"):
        build_rewards(["exact_match", "exact_match"])
    with pytest.raises(RewardError, match="takes no argument 'scale2'"):
        build_rewards([{**ref(user_file, "named_only"), "scale2": 1.0}])
    with pytest.raises(RewardError, match="on_invalid='ignore'"):
        build_rewards(["exact_match"], on_invalid="ignore")
    with pytest.raises(RewardError, match="no reward functions"):
        build_rewards([])
    rewards = build_rewards(["exact_match"])
    with pytest.raises(RewardError, match="2 prompts for 1 completions"):
        rewards(["p", "p"], ["a"])
    with pytest.raises(RewardError, match="row field 'answer': expected a list of 2 values"):
        rewards(["p", "p"], ["a", "b"], rows={"answer": ["a"]})
    with pytest.raises(RewardError, match="completion_lengths: expected 2"):
        rewards(["p", "p"], ["a", "b"], rows={"answer": ["a", "b"]}, completion_lengths=[1])
    with pytest.raises(RewardError, match="needs the row field 'answer'"):
        rewards(["p"], ["a"])


def test_process_pool_matches_in_process_and_names_global_sample(user_file) -> None:
    completions = ["a" * (i % 4) for i in range(10)]
    with build_rewards([{**ref(user_file, "count_a"), "processes": 2}, "exact_match"]) as pooled:
        got = pooled(["p"] * 10, completions, rows={"answer": ["a"] * 10})
    expected = build_rewards([ref(user_file, "count_a"), "exact_match"])(
        ["p"] * 10, completions, rows={"answer": ["a"] * 10}
    )
    torch.testing.assert_close(got.total, expected.total)
    with (
        build_rewards([{**ref(user_file, "boom_on_x"), "processes": 2}]) as pooled,
        pytest.raises(
            RewardError,
            match=r"'boom_on_x' raised ZeroDivisionError: division by zero at .*my_rewards.py:\d+ on a batch "
            r"of 5 samples \(samples 5..9 of the call\)",
        ),
    ):
        pooled(["p"] * 10, ["a"] * 8 + ["x", "a"])


def test_pool_timeout_kills_the_workers_and_next_call_starts_fresh_ones(user_file) -> None:
    with build_rewards([{**ref(user_file, "sleepy"), "processes": 2, "timeout": 60}]) as rewards:
        pool = rewards.pools["sleepy"]
        assert rewards(["p", "p"], ["0", "0"]).total.tolist() == [1.0, 1.0]  # workers started and warm
        workers = pool.worker_pids()
        pool.timeout = 0.5
        with pytest.raises(
            RewardError, match=r"'sleepy' did not return within 0.5 s on a batch of 2 samples"
        ):
            rewards(["p", "p"], ["600", "600"])
        deadline = time.monotonic() + 10.0  # generous: killed workers are gone long before
        while any(start_time(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(start_time(pid) for pid in workers)
        pool.timeout = 60
        assert rewards(["p", "p"], ["0", "0"]).total.tolist() == [1.0, 1.0]


def test_task_rewards_as_sources() -> None:
    rewards = build_rewards(["task:arithmetic", {"task": "preference", "weight": 2.0}], on_invalid="error")
    assert rewards.names == ["arithmetic", "preference"]
    arithmetic = build_rewards(["task:arithmetic?max_operand=9"])
    assert arithmetic(["1+2=", "3+4="], ["3", "8"], rows={"answer": ["3", "7"]}).total.tolist() == [1.0, 0.0]
    task = get_task("preference")
    prompt = task.prompts("train")[0]
    gold = build_rewards([{"task": "preference"}])([prompt], [" green calm"])
    assert float(gold.total[0]) == pytest.approx(task.gold_score([prompt], [" green calm"])[0], abs=1e-6)


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    tokenizer = train_tokenizer(vocab_size=280)
    lm = init_tiny_model("1m", tokenizer, seed=0, max_position_embeddings=64)
    save_pretrained_atomic(lm, tokenizer, root / "lm")
    rm = reward_model_from_causal_lm(lm, seed=3)
    save_reward_model(rm, tokenizer, root / "plain")
    save_reward_model(rm, tokenizer, root / "normed", norm={"mean": 0.25, "std": 2.0})
    return root, rm, tokenizer


def test_reward_model_source_scores_prompt_completion_eos_and_normalises(tiny_rm) -> None:
    root, rm, tokenizer = tiny_rm
    prompts, completions = ["the cat", "a dog is"], [" sees the sun", " big"]
    raw = build_rewards([{"reward_model": str(root / "plain"), "batch_size": 1}])(prompts, completions)
    # by hand: prompt ids + completion ids + EOS, scored one at a time
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids = tokenizer(p)["input_ids"] + tokenizer(c, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([[*ids, tokenizer.eos_token_id]])
        with torch.no_grad():
            expected = float(sequence_scores(rm, ids, torch.ones_like(ids)))
        assert float(raw.total[i]) == pytest.approx(expected, abs=1e-5)
    normed = build_rewards([{"reward_model": str(root / "normed"), "normalize": True}])(prompts, completions)
    torch.testing.assert_close(normed.total, (raw.total - 0.25) / 2.0)
    with pytest.raises(RewardError, match="no saved mean/std"):
        build_rewards([{"reward_model": str(root / "plain"), "normalize": True}])
    with pytest.raises(RewardError, match="not a reward model"):
        build_rewards([{"reward_model": str(root / "lm")}])
    with pytest.raises(RewardError, match="unknown option 'batchsize'"):
        build_rewards([{"reward_model": str(root / "plain"), "batchsize": 4}])


TRL_STYLE = """
def first_content_length(prompts, completions, **fields):
    return [float(len(c[0]["content"])) for c in completions]
"""


def test_trl_convention_for_conversational_completions(tmp_path) -> None:
    path = tmp_path / "trl_rewards.py"
    path.write_text(TRL_STYLE)
    chat = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]]
    spec = {"function": f"{path}:first_content_length", "reward_format": "messages"}
    assert build_rewards([spec])(chat, ["abc", "de"]).total.tolist() == [3.0, 2.0]
    # string prompts stay strings in either format, as in TRL
    with pytest.raises(RewardError, match="string indices"):
        build_rewards([spec])(["a", "b"], ["abc", "de"])
    # the default (text) names the convention when a TRL-style function fails on chat data
    with pytest.raises(RewardError, match="reward_format: messages"):
        build_rewards([{"function": f"{path}:first_content_length"}])(chat, ["abc", "de"])
    with pytest.raises(RewardError, match="reward_format"):
        build_rewards([{**spec, "reward_format": "dicts"}])


def test_reward_files_are_pinned_by_absolute_path_and_hash(tmp_path, monkeypatch) -> None:
    (tmp_path / "rw.py").write_text("def f(prompts, completions):\n    return [1.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    specs = ["rw.py:f", {"function": "rw.py:f", "alias": "g"}, "math:sqrt", "task:arithmetic", "exact_match"]
    pinned = pin_reward_files(specs)
    path = str(tmp_path / "rw.py")
    assert pinned == [f"{path}:f", {"function": f"{path}:f", "alias": "g"}, *specs[2:]]
    sources = reward_sources(pinned)
    digest = hashlib.sha256((tmp_path / "rw.py").read_bytes()).hexdigest()
    assert [(s["where"], s["path"], s["sha256"]) for s in sources] == [
        ("rewards[0]", path, digest),
        ("rewards[1]", path, digest),
    ]
    check_reward_sources(sources)  # unchanged: passes
    (tmp_path / "rw.py").write_text("def f(prompts, completions):\n    return [2.0] * len(completions)\n")
    with pytest.raises(RewardError, match=rf"reward file {path} changed .*sha256 {digest[:12]}, now "):
        check_reward_sources(sources)
    check_reward_sources(sources, paths=["/elsewhere/other.py"])  # a file the run no longer uses
    with pytest.raises(RewardError, match="expected a list of"):
        check_reward_sources({"path": path})


def test_close_kills_a_worker_stuck_in_a_call(user_file, tmp_path) -> None:
    rewards = build_rewards([{**ref(user_file, "stuck"), "processes": 1, "timeout": None}])
    started = tmp_path / "started"
    errors: list[BaseException] = []

    def call() -> None:
        try:
            rewards(["p"], [str(started)])
        except BaseException as err:  # the pool breaks under the call when close() kills its worker
            errors.append(err)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    deadline = time.monotonic() + 60.0  # generous: worker start-up on a busy machine
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert started.exists()
    workers = rewards.pools["stuck"].worker_pids()
    closing = threading.Thread(target=rewards.close, daemon=True)
    closing.start()
    closing.join(60.0)  # generous hang detection: close() itself waits a couple of seconds
    assert not closing.is_alive(), "close() hung on a stuck worker"
    caller.join(60.0)
    assert not caller.is_alive()
    assert [str(e) for e in errors] == [
        "reward function 'stuck': a worker process of its pool died during a batch of 1 samples (killed, "
        "e.g. out of memory, or crashed in native code)"
    ]
    assert not any(start_time(pid) for pid in workers)
