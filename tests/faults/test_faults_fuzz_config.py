"""Hostile configs: seeded random mutations of valid YAML files and ``--key value`` overrides for every config
class, through ``load_config`` (which runs ``validate()``). Only a one-line ConfigError naming the source and
the key may come out; and the specific faults (alias bombs, repeated keys, NaN and infinity, 2**70 seeds,
absurd learning rates and generation budgets, contradictory settings) are refused."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest

from rlft.control.config import ControlConfig
from rlft.run import ConfigError, load_config
from rlft.run.config_types import dotted_value
from rlft.run.config_yaml import dump_yaml
from rlft.train import DPOConfig, RLConfig, RMConfig, SFTConfig

VALID: dict[type, dict[str, Any]] = {
    SFTConfig: {"model": "m", "data": "d.jsonl", "lr": 1e-3, "batch_size": 4, "max_len": 64, "seed": 0},
    RMConfig: {"model": "m", "data": "d.jsonl", "lr": 1e-4, "max_len": 64, "epochs": 1, "seed": 3},
    DPOConfig: {"model": "m", "data": "d.jsonl", "loss": "sigmoid", "beta": 0.1, "lr": 5e-5, "seed": 1},
    RLConfig: {
        "model": "m",
        "data": "task:arithmetic",
        "algorithm": "grpo",
        "kl": {"placement": "loss", "coef": 0.04},
        "sampling": {"max_new_tokens": 16},
        "optim": {"lr": 1e-6},
        "seed": 2,
        "critic": {"lr": 1e-5},
    },
    ControlConfig: {"algo": "ppo", "env": "CartPole-v1", "lr": 3e-4, "seed": 1, "ppo": {"epochs": 4}},
}
# YAML literals a hostile user (or a typo) puts where a value belongs.
HOSTILE = [
    ".nan",
    ".NaN",
    ".inf",
    "-.inf",
    "1e400",
    "-1e400",
    "1180591620717411303424",
    "9" * 5000,
    "-1",
    "0",
    "-0.0",
    "1e3",
    "1.0",
    "1e-300",
    "''",
    "'   '",
    "'true'",
    "'8'",
    "yes",
    "~",
    "[]",
    "[1, 2]",
    "{}",
    "{a: 1}",
    "x" * 10_000,
    "true",
    "2.5",
    "4294967296",
    "4294967295",
    "65537",
    "1e6",
    "!!binary aGk=",
    "!!python/object/apply:os.system ['true']",
    '"\\ud800"',
    "[" * 5000 + "]" * 5000,
    "&a 1",
    "*a",
]


def leaf_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        if isinstance(value, dict):
            keys += leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def all_keys(cls: type) -> list[str]:
    """Every dotted key of ``cls`` that holds a value (sections expanded)."""
    import dataclasses

    from rlft.run.config_types import dataclass_of

    out = []
    hints = __import__("typing").get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        sub = dataclass_of(hints[f.name])
        out += [f"{f.name}.{k}" for k in all_keys(sub)] if sub else [f.name]
    return out


def check_error(err: ConfigError, source: str, key: str | None) -> None:
    """One line that starts with the source (with a line number for YAML errors) and names ``key``."""
    message = str(err)
    assert "\n" not in message, message
    assert message.startswith(f"{source}:") or message.startswith("config key"), message
    if key is not None:
        leaf = key.rpartition(".")[2]
        assert leaf in message or "invalid YAML" in message, (key, message)


def set_dotted(data: dict[str, Any], key: str, text: str) -> str:
    """YAML of ``data`` with ``key`` set to the literal ``text`` (written as YAML source, not a string)."""
    marker = "__HOSTILE__"
    data = copy.deepcopy(data)
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = marker
    return dump_yaml(data).replace(f"'{marker}'", text).replace(marker, text)


CLASSES = list(VALID)
CASES = [(cls, seed) for cls in CLASSES for seed in range(60)]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_valid_configs_load(cls, tmp_path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_yaml(VALID[cls]))
    load_config(cls, path)


def test_random_hostile_values_in_yaml_files_give_a_located_config_error(tmp_path) -> None:
    outcomes = {"accepted": 0, "error": 0}
    for cls, seed in CASES:
        rng = random.Random(f"yaml-{cls.__name__}-{seed}")
        key = rng.choice(all_keys(cls))
        text = set_dotted(VALID[cls], key, rng.choice(HOSTILE))
        if rng.random() < 0.3:  # and a text-level fault on top
            i = rng.randrange(len(text))
            text = text[:i] + rng.choice(["\t", ":", "- ", "\n  ", "{", "'", "\x00", "&b ", "*b"]) + text[i:]
        path = tmp_path / f"{cls.__name__}-{seed}.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            cfg = load_config(cls, path)
        except ConfigError as err:
            check_error(err, str(path), None)
            outcomes["error"] += 1
        else:
            check_accepted(cfg)
            outcomes["accepted"] += 1
    assert outcomes["error"] > 150 and outcomes["accepted"] > 10, outcomes


def test_random_hostile_command_line_overrides_give_a_config_error_naming_the_key(tmp_path) -> None:
    for cls in CLASSES:
        path = tmp_path / f"{cls.__name__}.yaml"
        path.write_text(dump_yaml(VALID[cls]))
        for seed in range(40):
            rng = random.Random(f"cli-{cls.__name__}-{seed}")
            key = rng.choice(all_keys(cls))
            value = rng.choice(HOSTILE)
            argv = [f"--{key}={value}"] if rng.random() < 0.5 else [f"--{key}", value]
            try:
                cfg = load_config(cls, path, overrides=argv)
            except ConfigError as err:
                check_error(err, "command line", key if not key.startswith(("rewards", "chat_")) else None)
            else:
                check_accepted(cfg)


def check_accepted(cfg: Any) -> None:
    """An accepted config holds no NaN or infinite float, a seed NumPy takes and a learning rate below 1."""
    import dataclasses
    import math

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_accepted(value)
        elif isinstance(value, float):
            assert math.isfinite(value), (f.name, value)
    if hasattr(cfg, "seed"):
        assert 0 <= cfg.seed <= 2**32 - 1
    if hasattr(cfg, "lr"):
        assert cfg.lr is None or 0 < cfg.lr < 1


# --- the specific faults -----------------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(cls: type, path: Path | None = None, overrides: list[str] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(cls, path, overrides=overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def base_yaml(cls: type) -> str:
    return dump_yaml(VALID[cls])


def test_an_alias_bomb_is_refused_at_its_first_anchor(tmp_path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    message = config_error(SFTConfig, path)
    assert message.startswith(f"{path}:1:") and "anchors and aliases are not supported" in message


def test_repeated_keys_name_file_line_and_key(tmp_path) -> None:
    path = write(tmp_path, base_yaml(SFTConfig) + "lr: 0.5\n")
    message = config_error(SFTConfig, path)
    line = len(base_yaml(SFTConfig).splitlines()) + 1
    assert message.startswith(f"{path}:{line}:") and "duplicate key 'lr'" in message
    nested = write(tmp_path, base_yaml(RLConfig) + "max_steps: 1\ncritic: {lr: 1.0e-5, lr: 2.0e-5}\n")
    assert "duplicate key" in config_error(RLConfig, nested)


@pytest.mark.parametrize(
    ("cls", "key", "literal"),
    [
        (SFTConfig, "lr", ".inf"),
        (SFTConfig, "max_grad_norm", ".nan"),
        (RLConfig, "kl.coef", ".nan"),
        (RLConfig, "optim.lr", ".nan"),
        (DPOConfig, "beta", "-.inf"),
        (RMConfig, "center_coef", ".nan"),
        (ControlConfig, "gamma", ".nan"),
        (ControlConfig, "lr", "1e400"),
    ],
)
def test_nan_and_infinity_are_refused_in_files_and_on_the_command_line(cls, key, literal, tmp_path) -> None:
    path = write(tmp_path, set_dotted(VALID[cls], key, literal))
    message = config_error(cls, path)
    assert message.startswith(f"{path}: config key '{key}': expected a finite number"), message
    message = config_error(cls, write(tmp_path, base_yaml(cls)), [f"--{key}", literal])
    assert message.startswith(f"command line: config key '{key}': expected a finite number"), message


def test_nan_inside_free_form_settings_is_refused() -> None:
    message = config_error(RLConfig, None, ["--model", "m", "--data", "d", "--loss_kwargs", "{delta: .nan}"])
    assert "loss_kwargs.delta" in message


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_seeds_must_fit_numpy(cls, tmp_path) -> None:
    path = write(tmp_path, base_yaml(cls))
    assert "'seed'" in config_error(cls, path, ["--seed", str(2**70)])
    assert "[0, 4294967295]" in config_error(cls, path, ["--seed", str(2**32)])
    assert "'seed'" in config_error(cls, path, ["--seed", "-1"])
    assert load_config(cls, path, overrides=["--seed", str(2**32 - 1)]).seed == 2**32 - 1


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_learning_rates_of_one_or_more_are_refused(cls, tmp_path) -> None:
    path = write(tmp_path, base_yaml(cls))
    key = "optim.lr" if cls is RLConfig else "lr"
    for lr in ("1e3", "1", "1.0"):
        message = config_error(cls, path, [f"--{key}", lr])
        expected = f"command line: config key '{key}': expected a learning rate below 1"
        assert message.startswith(expected), message
    assert dotted_value(load_config(cls, path, overrides=[f"--{key}", "0.5"]), key) == 0.5


def test_other_learning_rates_are_bounded_too(tmp_path) -> None:
    assert "'critic.lr'" in config_error(RLConfig, write(tmp_path, base_yaml(RLConfig)), ["--critic.lr", "2"])
    path = write(tmp_path, base_yaml(ControlConfig))
    assert "'critic_lr'" in config_error(ControlConfig, path, ["--critic_lr", "5"])


def test_generation_budgets_beyond_any_context_are_refused(tmp_path) -> None:
    path = write(tmp_path, base_yaml(RLConfig))
    assert "'sampling.max_new_tokens'" in config_error(RLConfig, path, ["--sampling.max_new_tokens", "1e6"])
    assert "'eval.max_new_tokens'" in config_error(RLConfig, path, ["--eval.max_new_tokens", "70000"])
    cfg = load_config(RLConfig, path, overrides=["--sampling.max_new_tokens", "65536"])
    assert cfg.sampling.max_new_tokens == 65536
    dpo = write(tmp_path, base_yaml(DPOConfig))
    assert "'win_rate_max_new_tokens'" in config_error(DPOConfig, dpo, ["--win_rate_max_new_tokens", "1e6"])


def test_kl_coefficient_with_placement_none_is_a_contradiction(tmp_path) -> None:
    path = write(tmp_path, base_yaml(RLConfig))
    message = config_error(RLConfig, path, ["--kl.placement", "none", "--kl.coef", "0.1"])
    assert "'kl.coef'" in message and "kl.placement" in message
    # A preset without a KL term and a coefficient set alone: the same contradiction.
    no_kl = write(tmp_path, dump_yaml({k: v for k, v in VALID[RLConfig].items() if k != "kl"}), "no-kl.yaml")
    assert "kl.placement" in config_error(RLConfig, no_kl, ["--algorithm", "dapo", "--kl.coef", "0.1"])
    adaptive = config_error(
        RLConfig, path, ["--kl.placement", "none", "--kl.coef", "0", "--kl.controller", "adaptive"]
    )
    assert "kl.controller" in adaptive and "kl.placement" in adaptive
    assert load_config(RLConfig, path, overrides=["--kl.placement", "none", "--kl.coef", "0"]).kl.coef == 0


@pytest.mark.parametrize("loss", ["simpo", "orpo", "rrhf"])
def test_a_reference_model_for_a_loss_that_uses_none_is_a_contradiction(loss, tmp_path) -> None:
    path = write(tmp_path, base_yaml(DPOConfig))
    message = config_error(DPOConfig, path, ["--loss", loss, "--beta", "null", "--ref_model", "ref"])
    assert "'ref_model'" in message and loss in message
    assert (
        load_config(DPOConfig, path, overrides=["--loss", "sigmoid", "--ref_model", "ref"]).ref_model == "ref"
    )


def test_ptx_data_without_a_ptx_coefficient_is_a_contradiction(tmp_path) -> None:
    path = write(tmp_path, base_yaml(RLConfig))
    assert "'ptx.coef'" in config_error(RLConfig, path, ["--ptx.data", "task:preference"])


@pytest.mark.parametrize("cls", [SFTConfig, RMConfig, DPOConfig, RLConfig], ids=lambda c: c.__name__)
def test_counts_strings_and_paths_are_checked(cls, tmp_path) -> None:
    path = write(tmp_path, base_yaml(cls))
    assert "'max_consecutive_skips'" in config_error(cls, path, ["--max_consecutive_skips", "0"])
    assert "'output_dir'" in config_error(cls, path, ["--output_dir", ""])
    eval_data = "eval.data" if cls is RLConfig else "eval_data"  # RLConfig: the eval section
    blank = "eval: {data: '  '}\n" if cls is RLConfig else "eval_data: '  '\n"
    assert f"'{eval_data}'" in config_error(cls, write(tmp_path, base_yaml(cls) + blank, "a.yaml"))
    assert "'log_every'" in config_error(cls, write(tmp_path, base_yaml(cls) + "log_every: '8'\n", "b.yaml"))
    assert "'seed'" in config_error(cls, path, ["--seed", "'3'"])
    assert "'model'" in config_error(cls, path, ["--model", '"\\ud800"'])


def test_yaml_that_breaks_the_parser_is_a_config_error(tmp_path) -> None:
    deep = write(tmp_path, "chat_template_kwargs: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert config_error(SFTConfig, deep).startswith(f"{deep}: invalid YAML")
    huge = write(tmp_path, "seed: " + "9" * 5000 + "\n")
    assert config_error(SFTConfig, huge).startswith(f"{huge}: invalid YAML")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"model: m\ndata: \xff\n")
    assert config_error(SFTConfig, binary).startswith(f"{binary}:2: cannot read config file: not UTF-8")
