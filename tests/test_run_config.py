"""Tests for rlft.run.config: override parsing, precedence, type checks, error messages, YAML round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from rlft.run import ConfigError, config_to_dict, load_config, parse_overrides, save_config
from rlft.run.config_types import dotted_value


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.999)


@dataclass
class PPO:
    lr: float = 1e-3
    clip: float = 0.2
    epochs: int = 4


@dataclass
class Cfg:
    seed: int = 0
    name: str = "run"
    mode: Literal["a", "b"] = "a"
    debug: bool = False
    ppo: PPO = field(default_factory=PPO)
    optim: Optim = field(default_factory=Optim)
    layers: list[int] = field(default_factory=lambda: [64, 64])
    weights: dict[str, float] = field(default_factory=dict)
    teacher: PPO | None = None
    max_len: int | None = None


@dataclass
class Checked:
    low: float = 0.0
    high: float = 1.0

    def validate(self) -> None:
        if self.low > self.high:
            raise ConfigError(f"low ({self.low}) must be <= high ({self.high})")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- parse_overrides ---------------------------------------------------------------------------------


def test_parse_overrides_forms():
    parsed = parse_overrides(["--optim.lr", "3e-4", "--a.b=2", "--flag", "--name", "x", "--neg", "-2.5e-3"])
    assert parsed == {"optim.lr": 0.0003, "a.b": 2, "flag": True, "name": "x", "neg": -0.0025}
    assert isinstance(parsed["optim.lr"], float)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e5", 1e5),
        ("1E5", 1e5),
        ("1.5e5", 1.5e5),
        ("3", 3),
        ("0.5", 0.5),
        ("true", True),
        ("false", False),
        ("null", None),
        ("[1, 2]", [1, 2]),
        ("{a: 1}", {"a": 1}),
        ("yes", "yes"),
        ("e5", "e5"),
        ("[oops", "[oops"),
    ],
)
def test_parse_override_values(text, value):
    parsed = parse_overrides(["--k", text])["k"]
    assert parsed == value and type(parsed) is type(value)


def test_parse_overrides_flag_before_flag_and_empty_value():
    assert parse_overrides(["--a", "--b=", "--c"]) == {"a": True, "b": "", "c": True}


@pytest.mark.parametrize("bad", ["x", "-x", "--", "--=3"])
def test_parse_overrides_rejects_positional(bad):
    with pytest.raises(ConfigError) as info:
        parse_overrides([bad])
    assert str(info.value) == f"unexpected argument '{bad}'; overrides look like --key value"


# --- precedence and conversion ----------------------------------------------------------------------


def test_defaults():
    assert load_config(Cfg) == Cfg()


def test_precedence_defaults_base_file_overrides(tmp_path):
    path = write(tmp_path, "seed: 2\nppo:\n  clip: 0.3\n  epochs: 6\n")
    base = {"seed": 1, "name": "preset", "ppo": {"lr": 0.5, "clip": 0.1}}
    cfg = load_config(Cfg, path, overrides=["--ppo.epochs", "8"], base=base)
    assert cfg.name == "preset"  # base only
    assert cfg.seed == 2  # file beats base
    assert cfg.ppo == PPO(lr=0.5, clip=0.3, epochs=8)  # sections merge key by key
    assert cfg.optim == Optim()  # untouched default


def test_overrides_as_mapping_and_later_wins():
    cfg = load_config(Cfg, overrides={"ppo.lr": 0.1, "ppo": {"lr": 0.2}})
    assert cfg.ppo.lr == 0.2
    cfg = load_config(Cfg, overrides=["--seed", "1", "--seed", "2"])
    assert cfg.seed == 2


def test_type_conversions(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 3e-4\n  betas: [0, 0.95]\nseed: 1e5\nweights: {a: 1}\n")
    cfg = load_config(Cfg, path, overrides=["--debug", "--mode", "b", "--max_len", "128"])
    assert cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.0, 0.95)
    assert cfg.seed == 100000 and type(cfg.seed) is int
    assert cfg.weights == {"a": 1.0} and type(cfg.weights["a"]) is float
    assert cfg.debug is True and cfg.mode == "b" and cfg.max_len == 128


def test_optional_section_and_null():
    assert load_config(Cfg, overrides=["--teacher.lr", "2"]).teacher == PPO(lr=2.0)
    assert load_config(Cfg, overrides=["--max_len", "null"]).max_len is None
    assert load_config(Cfg, overrides={"teacher": {"clip": 0.1}, "teacher.lr": 0.5}).teacher == PPO(0.5, 0.1)


def test_validate_is_called():
    assert load_config(Checked, overrides=["--low", "0.5"]).low == 0.5
    assert error(Checked, overrides=["--low", "2"]) == "low (2.0) must be <= high (1.0)"


# --- error messages ---------------------------------------------------------------------------------


def test_unknown_key_suggests_close_match(tmp_path):
    assert error(Cfg, overrides=["--ppo.lrr", "1"]) == (
        "command line: unknown config key 'ppo.lrr' (did you mean 'ppo.lr'?)"
    )
    path = write(tmp_path, "ppo:\n  epoch: 3\n")
    assert error(Cfg, path) == f"{path}: unknown config key 'ppo.epoch' (did you mean 'ppo.epochs'?)"
    assert error(Cfg, base={"sed": 1}) == "preset: unknown config key 'sed' (did you mean 'seed'?)"


def test_unknown_key_without_match_lists_level():
    assert error(Cfg, overrides=["--ppo.zzzzzz", "1"]) == (
        "command line: unknown config key 'ppo.zzzzzz' (valid keys under 'ppo': lr, clip, epochs)"
    )
    assert "valid keys at the top level: seed, name, mode" in error(Cfg, overrides=["--qqqqqq", "1"])


@dataclass
class RenamedSection:
    RENAMED: ClassVar[dict[str, str]] = {"epoch": "epochs"}
    epochs: int = 4


@dataclass
class Renamed:
    RENAMED: ClassVar[dict[str, str]] = {
        "bf16_autocast": "bf16",
        "sec": "section",
        "n_epochs": "section.epochs",
    }
    bf16: bool = False
    section: RenamedSection = field(default_factory=RenamedSection)


def test_renamed_key_names_the_new_key(tmp_path):
    path = write(tmp_path, "bf16_autocast: true\n")
    assert error(Renamed, path) == f"{path}: config key 'bf16_autocast' was renamed to 'bf16'"
    assert error(Renamed, overrides=["--bf16_autocast"]) == (
        "command line: config key 'bf16_autocast' was renamed to 'bf16'"
    )
    assert error(Renamed, base={"bf16_autocast": True}) == (
        "preset: config key 'bf16_autocast' was renamed to 'bf16'"
    )
    # inside a section, by a dotted override or nested mapping, and a renamed section itself
    assert error(Renamed, overrides=["--section.epoch", "2"]) == (
        "command line: config key 'section.epoch' was renamed to 'section.epochs'"
    )
    path = write(tmp_path, "section:\n  epoch: 2\n")
    assert error(Renamed, path) == f"{path}: config key 'section.epoch' was renamed to 'section.epochs'"
    assert error(Renamed, overrides=["--sec.epochs", "2"]) == (
        "command line: config key 'sec' was renamed to 'section'"
    )
    # a key moved into a section names its dotted place, from every source
    path = write(tmp_path, "n_epochs: 2\n")
    assert error(Renamed, path) == f"{path}: config key 'n_epochs' was renamed to 'section.epochs'"
    assert error(Renamed, overrides=["--n_epochs", "2"]) == (
        "command line: config key 'n_epochs' was renamed to 'section.epochs'"
    )
    assert (
        error(Renamed, base={"n_epochs": 2})
        == "preset: config key 'n_epochs' was renamed to 'section.epochs'"
    )
    # the new names load, and RENAMED is no config key of its own
    cfg = load_config(Renamed, overrides=["--bf16", "--section.epochs", "2"])
    assert (cfg.bf16, cfg.section.epochs) == (True, 2)
    assert "RENAMED" not in config_to_dict(cfg)


@pytest.mark.parametrize(
    ("module", "name", "old", "new", "value"),
    [
        ("rlft.train.online.config", "RLConfig", "bf16_autocast", "precision", "bf16"),
        ("rlft.train.online.config", "RLConfig", "performance.bf16", "precision", "bf16"),  # left its section
        ("rlft.train.preference.config", "DPOConfig", "bf16", "precision", "bf16"),
        ("rlft.train.online.config", "RLConfig", "share_prompts", "performance.share_prompts", False),
        ("rlft.train.preference.config", "DPOConfig", "share_prompt", "share_prompts", False),
    ],
)
def test_trainer_configs_refuse_their_old_key_names(tmp_path, module, name, old, new, value):
    """A saved run config (config.yaml) of an older version, as ``--resume`` reads it, names the new key."""
    import importlib

    cls = getattr(importlib.import_module(module), name)
    path = write(tmp_path, f"model: m\ndata: task:arithmetic\n{old}: false\n")
    assert error(cls, path) == f"{path}: config key '{old}' was renamed to '{new}'"
    assert dotted_value(load_config(cls, overrides={"model": "m", "data": "d", new: value}), new) == value


def test_rl_config_names_the_section_of_every_flat_key_that_moved(tmp_path):
    from rlft.train import RLConfig

    required = {"model": "m", "data": "d"}
    for old, new in RLConfig.RENAMED.items():
        path = write(tmp_path, f"model: m\ndata: d\n{old}: 1\n")
        assert error(RLConfig, path) == f"{path}: config key '{old}' was renamed to '{new}'"
        assert error(RLConfig, overrides=[f"--{old}", "1"]) == (
            f"command line: config key '{old}' was renamed to '{new}'"
        )
        assert error(RLConfig, base={old: 1}) == f"preset: config key '{old}' was renamed to '{new}'"
        # the new place is a key of RLConfig (set to its default, the config loads)
        default = dotted_value(RLConfig(), new)
        assert dotted_value(load_config(RLConfig, overrides={**required, new: default}), new) == default
    assert {"lr": "optim.lr", "eval_every": "eval.every", "ptx_coef": "ptx.coef"}.items() <= (
        RLConfig.RENAMED.items()
    )


def test_rl_config_sections_on_the_command_line_and_their_checks():
    from rlft.train import RLConfig

    required = ["--model", "m", "--data", "d"]
    sections = ["--optim.lr", "3e-5", "--eval.every", "5", "--performance.forward", "hf"]
    cfg = load_config(RLConfig, overrides=[*required, *sections])
    assert (cfg.optim.lr, cfg.eval.every, cfg.performance.forward) == (3e-5, 5, "hf")
    assert error(RLConfig, overrides=[*required, "--optim.lr", "0"]) == (
        "command line: config key 'optim.lr': expected a number > 0, got 0.0"
    )
    assert error(RLConfig, overrides=[*required, "--optim.lr", "2"]) == (
        "command line: config key 'optim.lr': expected a learning rate below 1, got 2.0"
    )
    assert error(RLConfig, overrides=[*required, "--optim.warmup_steps", "-1"]) == (
        "command line: config key 'optim.warmup_steps': expected an integer >= 0, got -1"
    )
    assert error(RLConfig, overrides=[*required, "--sampling.top_p", "2"]) == (
        "command line: config key 'sampling.top_p': expected a number in (0, 1], got 2.0"
    )
    assert error(RLConfig, overrides=[*required, "--performance.forward", "fused"]) == (
        "command line: config key 'performance.forward': expected one of auto, fast, hf, got 'fused'"
    )


def test_rl_run_config_is_saved_with_sections_and_reads_back(tmp_path):
    from rlft.run.config_yaml import load_yaml_file
    from rlft.train import RLConfig

    overrides = {"model": "m", "data": "d", "optim.lr": 3e-5, "ptx": {"data": "task:preference", "coef": 0.5}}
    cfg = load_config(RLConfig, overrides=overrides).resolved()
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    saved = load_yaml_file(path)
    assert saved["optim"]["lr"] == 3e-5
    assert (saved["ptx"]["data"], saved["ptx"]["coef"]) == ("task:preference", 0.5)
    assert {"sampling", "optim", "eval", "ptx", "performance", "kl", "critic"} <= set(saved)
    assert not set(saved) & set(RLConfig.RENAMED)
    assert load_config(RLConfig, path) == cfg


def test_wrong_type_messages(tmp_path):
    assert error(Cfg, overrides=["--ppo.lr", "abc"]) == (
        "command line: config key 'ppo.lr': expected a float, got 'abc' (str)"
    )
    path = write(tmp_path, "seed: 1.5\n")
    assert error(Cfg, path) == f"{path}: config key 'seed': expected an int, got 1.5 (float)"
    assert (
        error(Cfg, overrides={"seed": True})
        == "command line: config key 'seed': expected an int, got True (bool)"
    )
    assert error(Cfg, overrides=["--debug", "1"]) == (
        "command line: config key 'debug': expected a bool (true/false), got 1 (int)"
    )
    assert error(Cfg, overrides=["--debug", "yes"]).endswith("got 'yes' (str)")
    assert (
        error(Cfg, overrides=["--name", "3"])
        == "command line: config key 'name': expected a string, got 3 (int)"
    )
    assert (
        error(Cfg, overrides=["--mode", "c"])
        == "command line: config key 'mode': expected one of 'a', 'b', got 'c'"
    )
    assert error(Cfg, overrides=["--layers", "[1, x]"]) == (
        "command line: config key 'layers[1]': expected an int, got 'x' (str)"
    )
    assert error(Cfg, overrides=["--ppo", "3"]) == (
        "command line: config key 'ppo': expected a mapping (a config section), got 3 (int)"
    )
    assert error(Cfg, overrides=["--layers", "5"]).endswith("'layers': expected a list, got 5 (int)")


def test_invalid_yaml_names_file_line_column(tmp_path):
    path = write(tmp_path, "seed: 1\nppo: {lr: 1\n  clip: : 2\n")
    message = error(Cfg, path)
    assert message.startswith(f"{path}:3:")
    assert ": invalid YAML: " in message


def test_yaml_top_level_must_be_mapping(tmp_path):
    path = write(tmp_path, "- 1\n- 2\n")
    assert error(Cfg, path) == f"{path}: expected a mapping of config keys at the top level, got list"


def test_missing_file_and_empty_file(tmp_path):
    assert error(Cfg, tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: config file not found"
    assert load_config(Cfg, write(tmp_path, "")) == Cfg()


# --- serialisation ----------------------------------------------------------------------------------


def test_config_to_dict_is_plain():
    d = config_to_dict(Cfg())
    assert d["optim"] == {"lr": 1e-3, "betas": [0.9, 0.999]}
    assert list(d) == [
        "seed",
        "name",
        "mode",
        "debug",
        "ppo",
        "optim",
        "layers",
        "weights",
        "teacher",
        "max_len",
    ]


def test_save_load_round_trip(tmp_path):
    cfg = load_config(
        Cfg,
        overrides=["--name", "'3e-4'", "--optim.lr", "1e-5", "--teacher.clip", "0.5", "--weights", "{x: 2}"],
    )
    path = tmp_path / "out" / "config.yaml"
    save_config(cfg, path)
    assert path.read_text().startswith("seed: 0\nname: '3e-4'\n")  # key order kept, tricky string quoted
    assert load_config(Cfg, path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]
