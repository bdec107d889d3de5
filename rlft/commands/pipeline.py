"""``rlft pipeline --config FILE``: the three stages of RLHF (InstructGPT, arXiv 2203.02155), each stage's
output feeding the next:

    sft  →  OUT/sft/model        supervised fine-tuning of the base model            (rlft sft, SFTConfig)
    rm   →  OUT/rm/model         a reward model from the SFT model                    (rlft rm, RMConfig)
    ppo  →  OUT/ppo/model        PPO of the SFT model against that reward model       (rlft rl, RLConfig)
                                 (critic initialised from the reward model, reference = the SFT model)

The config file has one section per stage, holding that stage's own config keys, and ``output_dir``:

    output_dir: runs/rlhf
    sft: {model: runs/tiny-1m, data: "task:preference?n=4000", max_steps: 150, save_every: 50}
    rm:  {data: "task:preference?n=16000&label_noise=0.1", max_steps: 500, save_every: 100}
    ppo: {data: "task:preference", max_steps: 200, save_every: 50, ptx: {data: "task:preference", coef: 0.1}}

Wiring: ``rm.model`` and ``ppo.model`` default to the SFT output, ``ppo.reward_model`` to the RM output
(unless ``ppo.rewards`` is given) and ``ppo.algorithm`` to ``ppo``. A stage whose ``model/`` exists is
skipped; a stage with a checkpoint resumes from it (set ``save_every`` to make stages resumable); a stage
left out of the file, or of ``--stages``, must have its output already there or be bypassed by setting
the next stage's keys (e.g. ``rm.model``) by hand.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlft.run import ConfigError

if TYPE_CHECKING:
    from rlft.train.common.epoch_loop import EpochsResult
    from rlft.train.common.launch import TrainerConfig
    from rlft.train.online.loop import RLResult

__all__ = ["STAGES", "StageResult", "add_pipeline_commands", "run_pipeline"]

STAGES = ("sft", "rm", "ppo")


@dataclass
class StageResult:
    name: str
    status: str  # trained | resumed | skipped | stopped (stop_after: no final model yet)
    model_dir: Path
    run_dir: Path
    result: EpochsResult | RLResult | None = None  # the trainer's result (None when skipped)


def _stage_kit(name: str) -> tuple[type[TrainerConfig], Callable[..., EpochsResult | RLResult]]:
    from rlft.train import RLConfig, RMConfig, SFTConfig, train_rl, train_rm, train_sft

    kits: dict[str, tuple[type[TrainerConfig], Callable[..., EpochsResult | RLResult]]] = {
        "sft": (SFTConfig, train_sft),
        "rm": (RMConfig, train_rm),
        "ppo": (RLConfig, train_rl),
    }
    return kits[name]


def _done(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file()


def load_pipeline(path: str | Path) -> dict[str, Any]:
    from rlft.run.config_yaml import load_yaml_file

    spec = load_yaml_file(path)
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping with sft/rm/ppo sections and output_dir")
    unknown = sorted(set(spec) - {*STAGES, "output_dir"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (expected output_dir, {', '.join(STAGES)})")
    for name in STAGES:
        if name in spec and not isinstance(spec[name], dict):
            raise ConfigError(f"{path}: section '{name}': expected a mapping of {name} config keys")
    return spec


def run_pipeline(
    spec: dict[str, Any],
    out: str | Path | None = None,
    stages: tuple[str, ...] = STAGES,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    stop_after: dict[str, int] | None = None,
    where: str = "pipeline config",
) -> list[StageResult]:
    """Run the stages of ``spec`` in order (see the module docstring); ``stop_after`` {stage: steps} ends a
    stage early without its final model, as a crash would (for tests)."""
    from rlft.run import RunDir, load_config, save_config
    from rlft.train import latest_checkpoint

    say = log or (lambda msg: print(msg, file=sys.stderr))
    root = Path(out or spec.get("output_dir") or Path("runs") / time.strftime("pipeline-%Y%m%d-%H%M%S"))
    outputs = {name: root / name / "model" for name in STAGES}
    results: list[StageResult] = []
    for name in STAGES:
        if name not in spec:
            continue
        run_dir, model_dir = root / name, outputs[name]
        section = dict(spec[name])
        if name in ("rm", "ppo"):
            section.setdefault("model", str(outputs["sft"]))
        if name == "ppo":
            section.setdefault("algorithm", "ppo")
            if not section.get("rewards"):
                section.setdefault("reward_model", str(outputs["rm"]))
        section.pop("output_dir", None)
        if _done(model_dir):
            say(f"pipeline: stage {name}: {model_dir} exists, skipped")
            results.append(StageResult(name, "skipped", model_dir, run_dir))
            continue
        if name not in stages:
            raise ConfigError(f"pipeline: stage {name} has no output at {model_dir} and is not in --stages")
        cls, train = _stage_kit(name)
        try:
            cfg = load_config(cls, None, base=section)
            cfg.validate()
        except ConfigError as err:
            raise ConfigError(f"{where}: section '{name}': {err}") from None
        for key in ("model", "reward_model"):
            source = getattr(cfg, key, None)
            if source and str(source).startswith(str(root)) and not _done(Path(source)):
                raise ConfigError(f"pipeline: stage {name} needs {key} {source}, which does not exist yet")
        run = RunDir.create(run_dir)
        checkpoint = latest_checkpoint(run)
        if checkpoint is None and run.metrics_path.exists():
            run.metrics_path.unlink()  # a start that crashed before its first checkpoint: begin again
        save_config(cfg.resolved() if hasattr(cfg, "resolved") else cfg, run.config_path)
        status = "resumed" if checkpoint is not None else "trained"
        say(
            f"pipeline: stage {name}: {'resuming from ' + str(checkpoint) if checkpoint else 'training'} → {run_dir}"
        )
        kwargs: dict[str, Any] = {"resume": checkpoint is not None, "show_progress": show_progress}
        if stop_after and name in stop_after:
            kwargs["stop_after"] = stop_after[name]
        result = train(cfg, run, **kwargs)
        if not _done(model_dir):
            results.append(StageResult(name, "stopped", model_dir, run_dir, result))
            say(f"pipeline: stage {name} stopped before its final model; run again to resume")
            break
        results.append(StageResult(name, status, model_dir, run_dir, result))
    return results


def _pipeline(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise ConfigError(f"unexpected arguments: {' '.join(extra)} (stage keys go in the config file)")
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ConfigError(
            f"--stages: expected a comma-separated subset of {','.join(STAGES)}, got {args.stages!r}"
        )
    spec = load_pipeline(args.config)
    results = run_pipeline(spec, args.out, stages, show_progress=not args.no_progress, where=str(args.config))
    print(f"{'stage':8}{'status':10}model")
    for r in results:
        print(f"{r.name:8}{r.status:10}{r.model_dir}")
        res = r.result
        before = getattr(res, "initial_eval", None) or {}
        after = getattr(res, "final_eval", None) or {}
        shown = [
            k
            for k in ("eval_gold_score", "eval_reward", "eval_accuracy", "eval_gold_accuracy", "eval_loss")
            if k in after
        ]
        for key in shown[:2]:
            print(f"{'':18}{key}: {before.get(key, float('nan')):.4f} → {after[key]:.4f}")
    return 0


def add_pipeline_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pipeline`` to the ``rlft`` subparsers."""
    p = sub.add_parser(
        "pipeline", help="RLHF in three stages: SFT → reward model → PPO (resumable)", allow_abbrev=False
    )
    p.add_argument(
        "--config", type=Path, required=True, help="YAML file with output_dir and sft/rm/ppo sections"
    )
    p.add_argument(
        "--out", help="output root (default: output_dir of the file, else runs/pipeline-TIMESTAMP)"
    )
    p.add_argument("--stages", default=",".join(STAGES), help="stages allowed to train (comma-separated)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_pipeline)
