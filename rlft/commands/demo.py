"""The stages of ``rlft demo`` and ``rlft lm-demo``: tiny models built offline, each stage feeding the next.

- arithmetic: :func:`arithmetic_sft_stage` (SFT), then :func:`rl_demo_stage` (GRPO);
- preference: :func:`preference_sft`, then :func:`rm_demo_stage` (reward model), :func:`dpo_demo_stage`
  (DPO) and :func:`ppo_demo_stage` (RLHF-PPO against the reward model);
- :func:`lm_demo` runs a chosen subset of them in order.

The benchmarks call the stages and their configs directly. Also here: the metric keys the ``rl`` and
``dpo`` commands plot (the demo stages plot the same curves) and the tokenizer corpus of ``init-model``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlft.run import ConfigError

if TYPE_CHECKING:
    from rlft.data import PreferenceTask
    from rlft.run import RunDir
    from rlft.train import RLConfig
    from rlft.train.common.epoch_loop import EpochsResult
    from rlft.train.online.loop import RLResult

__all__ = [
    "DEMO_DPO",
    "DEMO_LABEL_NOISE",
    "DEMO_PREFERENCE_SFT_STEPS",
    "DEMO_RM_LR",
    "DPO_PLOT_KEYS",
    "LM_DEMO_STAGES",
    "PPO_DEMO",
    "PPO_PLOT_KEYS",
    "RL_PLOT_KEYS",
    "arithmetic_sft_stage",
    "dpo_demo_stage",
    "grpo_demo_config",
    "lm_demo",
    "parse_stages",
    "ppo_demo_config",
    "ppo_demo_stage",
    "preference_sft",
    "rl_demo_stage",
    "rm_demo_stage",
    "tokenizer_corpus",
]

LM_DEMO_STAGES = ("sft", "grpo", "rm", "dpo", "ppo")

# --- the settings of the stages ----------------------------------------------------------------------------

# Arithmetic: SFT, then GRPO on the same task (operands 0..20 with + and -). 500 SFT steps: ~40-55% greedy
# accuracy (seed-dependent). GRPO: 1200 steps of 16 prompts × 8 samples (estimated 1.5–2 minutes on 2 idle
# cores); max_minutes caps the training time on a slower or busy machine, where the run then ends early
# with fewer steps.
DEMO_OPERAND = 20
DEMO_ARITHMETIC_SFT_STEPS = 500
DEMO_GRPO_STEPS = 1200
DEMO_GRPO_MAX_MINUTES = 3.0

# Preference: a brief SFT, a reward model on noisy labels, then DPO and PPO from the SFT model.
DEMO_LABEL_NOISE = 0.1  # share of the demo's preference labels flipped: the accuracy ceiling is 0.9
DEMO_PREFERENCE_SFT_STEPS = 150
DEMO_VOCAB = 768  # BPE stops at 663 tokens on this corpus: every word of the task is a single token
DEMO_RM_STEPS = 300  # 0.91-0.93 gold accuracy; benchmarks/rm_preference.py runs 600 (0.93-0.94)
DEMO_RM_LR = 2e-3


# The DPO stage: DPO on the built-in preference task (labels agree with the hidden gold score on 90% of
# pairs) from an SFT model of that task: 100 steps of 32 fresh pairs. β = 0.5 rather than the paper's 0.1:
# at β = 0.1 the noisy labels pull the policy away from the reference within 100 steps (it learns to put
# off EOS, completions grow from ~8 to 11 words and the gold win rate falls below 0.5), while β = 0.5 with
# lr 1e-3 reached win rates 0.85-0.92 over three data seeds in 100 steps (benchmarks/dpo_preference.py).
DEMO_DPO: dict[str, Any] = {
    "loss": "sigmoid",
    "beta": 0.5,
    "batch_size": 32,
    "lr": 1e-3,
    "warmup_steps": 10,
    "max_steps": 100,
    "eval_every": 50,
    "eval_samples": 256,
    "win_rate_samples": 16,
    "n": 3200,
    "label_noise": 0.1,  # the task's default: labels disagree with the gold order on 10% of pairs
}


# The PPO stage: RLHF-PPO on `preference` from the demo's preference SFT model against its reward model
# (dotted RLConfig keys, as on the command line).
PPO_DEMO = {
    "sampling.prompts_per_step": 8,
    "sampling.num_generations": 4,
    "sampling.max_new_tokens": 16,
    "optim.lr": 3e-4,
    "max_steps": 60,
    "max_minutes": 0.75,
    "torch_threads": 1,  # the 1m model's matmuls are too small to split; a 2nd thread only spins on a busy CPU
}


# --- the curves of the rl and dpo commands and of their stages --------------------------------------------

RL_PLOT_KEYS = [
    "reward",
    "eval_accuracy",
    "eval_reward",
    "kl_ref",
    "entropy",
    "response_len_mean",
    "clipfrac_high",
    "tokens_per_s",
]
PPO_PLOT_KEYS = [
    "reward_reward_model",
    "reward_gold",
    "eval_gold_score",
    "kl_ref_seq",
    "kl_coef",
    "value_loss",
    "explained_variance",
    "entropy",
    "response_len_mean",
]
DPO_PLOT_KEYS = [
    "loss",
    "eval_loss",
    "rewards/margins",
    "rewards/accuracies",
    "eval_rewards/accuracies",
    "eval_win_rate",
    "eval_gold_score",
    "logps/chosen",
    "logps/rejected",
]


# --- the stages --------------------------------------------------------------------------------------------


def _new_run(out_dir: Path, saved_config: object) -> RunDir:
    """A run directory at ``out_dir`` (whose name is also the run's prefix) holding ``saved_config``."""
    from rlft.run import RunDir, save_config

    run = RunDir.create(out_dir, prefix=out_dir.name)
    save_config(saved_config, run.config_path)
    return run


def _finish_stage(
    result: Any, run: Any, start: float, plot: Path, summary: str, model_label: str, **figures: Any
) -> dict[str, Any]:
    """Print a training stage's closing lines (``summary``, its time, run directory, model and plot) and
    return its ``figures`` with the time, steps, model, run directory and plot."""
    seconds = time.monotonic() - start
    print(
        f"{summary}   time: {seconds:.0f}s\n  run dir:    {run.root}\n  {model_label + ':':<11} {result.model_dir}\n"
        f"  plot:       {plot}"
    )
    return {
        **figures,
        "seconds": seconds,
        "steps": result.steps,
        "model_dir": result.model_dir,
        "run_dir": run.root,
        "plot": plot,
    }


def _print_before_after(
    title: str, width: int, rows: tuple[tuple[str, str], ...], result: EpochsResult | RLResult
) -> None:
    """A stage's table of eval metrics before and after training: one line per (metric key, label) of
    ``rows``, NaN for a metric the evaluation did not report."""
    before, after = result.initial_eval, result.final_eval
    print(f"{title:{width}}{'before':>10}{'after':>10}")
    for key, name in rows:
        print(f"{name:{width}}{before.get(key, math.nan):>10.4f}{after.get(key, math.nan):>10.4f}")


def tokenizer_corpus(tasks: list[str], seed: int) -> list[str]:
    """The text a tiny model's tokenizer is trained on: the default corpus plus 2000 texts of each task."""
    from rlft.data import get_task
    from rlft.models import default_corpus

    corpus = default_corpus(seed=seed)
    for name in tasks:
        corpus += get_task(name).corpus(2000, seed=seed)
    return corpus


def arithmetic_sft_stage(
    out_root: Path, seed: int = 0, show_progress: bool = True, steps: int = DEMO_ARITHMETIC_SFT_STEPS
) -> Path:
    """Build the 1m tiny model, SFT it on arithmetic (operands 0..20), print a before/after table;
    returns the SFT model directory.

    The budget is chosen to leave room for RL: greedy accuracy lands around 30–60%, not near 100%.
    """
    from rlft.models import build_tiny_model
    from rlft.run import plot_run
    from rlft.train import SFTConfig, train_sft

    out_root = Path(out_root)
    start = time.monotonic()
    model_dir = build_tiny_model(
        out_root / "tiny-1m", size="1m", corpus=tokenizer_corpus(["arithmetic"], seed), seed=seed
    )
    cfg = SFTConfig(
        model=str(model_dir),
        data=f"task:arithmetic?max_operand={DEMO_OPERAND}&n=5000&seed={seed}",
        batch_size=64,
        lr=3e-3,
        warmup_steps=20,
        max_steps=steps,
        eval_every=max(steps // 5, 1),
        eval_samples=300,
        eval_max_new_tokens=6,
        save_every=steps,
        seed=seed,
    )
    run = _new_run(out_root / "sft", cfg)
    result = train_sft(cfg, run, show_progress=show_progress)
    plot = plot_run(run, keys=["loss", "eval_loss", "eval_accuracy", "lr", "grad_norm", "tokens_per_s"])
    print(f"\nSFT of the 1m tiny model on {cfg.data} ({result.steps} steps)")
    rows = (("eval_loss", "eval loss"), ("eval_ppl", "perplexity"), ("eval_accuracy", "greedy acc"))
    _print_before_after("", 24, rows, result)
    print(
        f"held-out prompts: {cfg.eval_samples} (eval split)   time: {time.monotonic() - start:.0f}s\n"
        f"  base model: {model_dir}\n  run dir:    {run.root}\n  SFT model:  {result.model_dir}\n"
        f"  plot:       {plot}"
    )
    return Path(result.model_dir)


def grpo_demo_config(sft_model_dir: str | Path, seed: int = 0, steps: int = DEMO_GRPO_STEPS) -> RLConfig:
    """The demo's GRPO config: the grpo preset (β = 0.04, ε = 0.2, seq-mean-token-mean) with settings
    tuned for the 1m tiny model after SFT. Sampling at τ = 0.7 sharpens toward the greedy answer, which
    is what held-out greedy accuracy measures: in runs of 600–2500 steps, τ = 1.0 gained about +8
    points and stalled, τ = 0.5 and 0.7 kept climbing (+25–29 points by 2000–2500 steps), 0.7 the
    steadier of the two. The learning rate decays to 0 (cosine): at a constant 1e-4 the greedy answers
    of a 16 × 8 batch policy still flip late in the run (one seed: 67% at step 900, 48% at 1200); with
    the decay the same run ends at 70%."""
    from rlft.train import RLConfig
    from rlft.train.online.config import EvalConfig, OptimConfig, SamplingConfig

    return RLConfig(
        model=str(sft_model_dir),
        data=f"task:arithmetic?max_operand={DEMO_OPERAND}&n=5000&seed={seed}",
        algorithm="grpo",
        sampling=SamplingConfig(prompts_per_step=16, num_generations=8, max_new_tokens=8, temperature=0.7),
        optim=OptimConfig(lr=1e-4, min_lr_ratio=0.0),
        eval=EvalConfig(every=max(steps // 4, 1), samples=300, max_new_tokens=8),
        max_steps=steps,
        max_minutes=DEMO_GRPO_MAX_MINUTES,
        seed=seed,
    )


def rl_demo_stage(
    out_root: str | Path,
    sft_model_dir: str | Path,
    seed: int = 0,
    show_progress: bool = True,
    steps: int = DEMO_GRPO_STEPS,
) -> dict[str, Any]:
    """GRPO on ``arithmetic`` from the SFT model of the demo; prints greedy held-out accuracy before and
    after, and returns {"before", "after", "seconds", "steps", "model_dir", "run_dir", "plot"}."""
    from rlft.run import plot_run
    from rlft.train import train_rl

    start = time.monotonic()
    cfg = grpo_demo_config(sft_model_dir, seed, steps)
    run = _new_run(Path(out_root) / "rl", cfg.resolved())
    result = train_rl(cfg, run, show_progress=show_progress)
    plot = plot_run(run, keys=RL_PLOT_KEYS)
    before, after = result.initial_eval, result.final_eval
    print(
        f"\nGRPO on {cfg.data} from the SFT model ({result.steps} steps, {cfg.sampling.prompts_per_step} "
        f"prompts × {cfg.sampling.num_generations} samples per step)"
    )
    rows = (("eval_accuracy", "greedy acc"), ("eval_response_len", "response len"))
    _print_before_after("", 24, rows, result)
    return _finish_stage(
        result,
        run,
        start,
        plot,
        f"held-out prompts: {cfg.eval.samples} (eval split)",
        "GRPO model",
        before=before.get("eval_accuracy", float("nan")),
        after=after.get("eval_accuracy", float("nan")),
    )


def preference_sft(
    out_root: Path, seed: int = 0, show_progress: bool = True, steps: int = DEMO_PREFERENCE_SFT_STEPS
) -> Path:
    """Build the 1m tiny model (tokenizer trained on the preference task's text) and SFT it briefly on the
    mediocre policy's demonstrations of ``task:preference``; returns the SFT model directory."""
    from rlft.models import build_tiny_model
    from rlft.train import SFTConfig, train_sft

    out_root = Path(out_root)
    # A vocabulary big enough that every word of the task is one token (at 512, BPE runs out of merges and
    # splits "robot" into r-o-b-o-t): shorter sequences, and topics the models need not spell out.
    corpus = tokenizer_corpus(["preference"], seed)
    base = build_tiny_model(out_root / "tiny-1m", size="1m", corpus=corpus, vocab_size=DEMO_VOCAB, seed=seed)
    cfg = SFTConfig(
        model=str(base),
        data=f"task:preference?n=4000&seed={seed}",
        batch_size=64,
        lr=3e-3,
        warmup_steps=10,
        max_steps=steps,
        eval_samples=200,
        eval_generate=False,
        seed=seed,
    )
    run = _new_run(out_root / "sft", cfg)
    result = train_sft(cfg, run, show_progress=show_progress)
    print(
        f"SFT on {cfg.data}: {result.steps} steps, eval loss "
        f"{result.initial_eval.get('eval_loss', math.nan):.3f} → {result.final_eval.get('eval_loss', math.nan):.3f}"
    )
    return result.model_dir


def rm_demo_stage(
    out_root: Path, sft_model_dir: Path, seed: int = 0, show_progress: bool = True, steps: int = DEMO_RM_STEPS
) -> dict[str, Any]:
    """Train a reward model from ``sft_model_dir`` on noisy preference labels of ``task:preference``; print
    held-out accuracy against the labels, against the hidden gold scorer, and the noise ceiling."""
    from rlft.run import plot_run
    from rlft.train import RMConfig, train_rm

    start = time.monotonic()
    cfg = RMConfig(
        model=str(sft_model_dir),
        data=f"task:preference?n=16000&seed={seed}&label_noise={DEMO_LABEL_NOISE}",
        batch_size=32,
        lr=DEMO_RM_LR,
        warmup_steps=20,
        max_steps=steps,
        epochs=None,
        eval_every=max(steps // 4, 1),
        eval_samples=1000,
        seed=seed,
    )
    run = _new_run(Path(out_root) / "rm", cfg)
    result = train_rm(cfg, run, show_progress=show_progress)
    plot = plot_run(run, keys=["loss", "accuracy", "eval_accuracy", "eval_gold_accuracy", "eval_reward_gap"])
    ceiling = _preference_task().noise_ceiling(DEMO_LABEL_NOISE)
    after = result.final_eval
    seconds = time.monotonic() - start
    print(f"\nReward model from the SFT model on {cfg.data} ({result.steps} steps, pairwise loss)")
    rows = (
        ("eval_accuracy", "accuracy vs labels"),
        ("eval_gold_accuracy", "accuracy vs gold"),
        ("eval_reward_gap", "mean reward gap"),
        ("eval_loss", "eval loss"),
    )
    _print_before_after("held-out pairs", 28, rows, result)
    print(
        f"noise ceiling vs labels (label_noise {DEMO_LABEL_NOISE}): {ceiling:.3f}   "
        f"held-out records: {cfg.eval_samples}   time: {seconds:.0f}s\n"
        f"  reward model: {result.model_dir} (mean {result.norm.get('mean', math.nan):.3f}, "
        f"std {result.norm.get('std', math.nan):.3f})\n  plot:         {plot}"
    )
    return {
        "reward_model": result.model_dir,
        "run_dir": run.root,
        "accuracy": after.get("eval_accuracy", math.nan),
        "gold_accuracy": after.get("eval_gold_accuracy", math.nan),
        "noise_ceiling": ceiling,
        "reward_gap": after.get("eval_reward_gap", math.nan),
        "norm": result.norm,
        "steps": result.steps,
        "seconds": seconds,
    }


def dpo_demo_stage(
    out_root: str | Path,
    sft_model_dir: str | Path,
    seed: int = 0,
    show_progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """DPO on the built-in ``preference`` task from an SFT model of it; prints the gold win rate against
    the SFT model (the reference) and the mean gold score before and after.

    Returns ``{"win_rate_before", "win_rate_after", "gold_before", "gold_after", "seconds", "model_dir",
    "run_dir", "steps"}``. ``overrides`` replace entries of :data:`DEMO_DPO` (tests use fewer steps).
    """
    from rlft.run import plot_run
    from rlft.train import DPOConfig, train_dpo

    settings = {**DEMO_DPO, **overrides}
    n, label_noise = settings.pop("n"), settings.pop("label_noise")
    out_root = Path(out_root)
    start = time.monotonic()
    settings.setdefault("ref_cache_dir", str(out_root / "ref-cache"))
    cfg = DPOConfig(
        model=str(sft_model_dir),
        data=f"task:preference?n={n}&seed={seed}&label_noise={label_noise}",
        seed=seed,
        **settings,
    )
    cfg.validate()
    run = _new_run(out_root / "dpo", cfg)
    result = train_dpo(cfg, run, show_progress=show_progress)
    plot = plot_run(run, keys=DPO_PLOT_KEYS)
    before, after = result.initial_eval, result.final_eval
    print(f"\nDPO ({cfg.loss}, β={cfg.beta_value}) of the SFT model on {cfg.data} ({result.steps} steps)")
    rows = (
        ("eval_win_rate", "gold win rate vs SFT model"),
        ("eval_gold_score", "mean gold score"),
        ("eval_rewards/accuracies", "preference accuracy (held out)"),
        ("eval_loss", "DPO loss (held out)"),
    )
    _print_before_after("", 34, rows, result)
    return _finish_stage(
        result,
        run,
        start,
        plot,
        f"held-out prompts: {len(_eval_prompts())} × {cfg.win_rate_samples} samples",
        "DPO model",
        win_rate_before=before.get("eval_win_rate"),
        win_rate_after=after.get("eval_win_rate"),
        gold_before=before.get("eval_gold_score"),
        gold_after=after.get("eval_gold_score"),
    )


def _eval_prompts() -> tuple[str, ...]:
    return _preference_task().prompts("eval")


def _preference_task() -> PreferenceTask:
    """The registered ``preference`` task, as its own class: the demo reads its gold model and splits."""
    from rlft.data import PreferenceTask, get_task

    task = get_task("preference")
    if not isinstance(task, PreferenceTask):
        raise TypeError(f"task 'preference' is a {type(task).__name__}, not a PreferenceTask")
    return task


def ppo_demo_config(
    sft_model_dir: str | Path, reward_model_dir: str | Path, seed: int = 0, **overrides: Any
) -> RLConfig:
    """The demo's PPO config: the ``ppo`` preset (k1 in the reward, GAE, whitened advantages, clipped value
    loss) with the critic initialised from the reward model, whose score is normalised with its saved
    statistics and clipped to ±5; ``overrides`` (dotted keys such as ``"optim.lr"``, as on the command
    line) replace entries of :data:`PPO_DEMO` or add others."""
    from rlft.run import load_config
    from rlft.train import RLConfig

    settings = {**PPO_DEMO, **overrides}
    settings.setdefault("eval.every", max(settings["max_steps"] // 3, 1))
    settings.setdefault("eval.max_new_tokens", settings["sampling.max_new_tokens"])
    fixed = {
        "model": str(sft_model_dir),
        "data": f"task:preference?seed={seed}",
        "algorithm": "ppo",
        "reward_model": str(reward_model_dir),
        "normalize_score": True,
        "score_clip": 5.0,
        "eval.samples": 32,
        "seed": seed,
    }
    return load_config(RLConfig, overrides={**fixed, **settings})


def ppo_demo_stage(
    out_root: str | Path,
    sft_model_dir: str | Path,
    reward_model_dir: str | Path,
    seed: int = 0,
    show_progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """RLHF-PPO on ``preference`` from the SFT model against the reward model; prints the hidden gold score,
    the reward model's score and the KL to the SFT model before and after. Returns {"gold_before",
    "gold_after", "kl", "seconds", "steps", "model_dir", "run_dir", "plot"}."""
    from rlft.run import plot_run
    from rlft.train import train_rl

    start = time.monotonic()
    cfg = ppo_demo_config(sft_model_dir, reward_model_dir, seed, **overrides)
    run = _new_run(Path(out_root) / "ppo", cfg.resolved())
    result = train_rl(cfg, run, show_progress=show_progress, log=lambda _: None)
    plot = plot_run(run, keys=PPO_PLOT_KEYS)
    before, after = result.initial_eval, result.final_eval
    kl = result.last_metrics.get("kl_ref_seq", float("nan"))
    print(
        f"\nPPO (RLHF) on {cfg.data} from the SFT model against the reward model ({result.steps} steps, "
        f"{cfg.sampling.prompts_per_step} prompts × {cfg.sampling.num_generations} samples per step)"
    )
    rows = (
        ("eval_gold_score", "gold score (hidden)"),
        ("eval_reward", "reward-model score"),
        ("eval_mean_words", "words per completion"),
        ("eval_distinct_ratio", "distinct-word share"),
    )
    _print_before_after("held-out prompts, greedy", 28, rows, result)
    sampled = [r["reward_gold"] for r in result.history if "reward_gold" in r]
    if sampled:  # the training samples (τ = 1): first step vs last step
        print(f"{'gold score, sampled (train)':28}{sampled[0]:>10.4f}{sampled[-1]:>10.4f}")
    return _finish_stage(
        result,
        run,
        start,
        plot,
        f"KL(policy ‖ SFT) per completion at the last step: {kl:.3f}",
        "PPO model",
        gold_before=before.get("eval_gold_score", float("nan")),
        gold_after=after.get("eval_gold_score", float("nan")),
        sampled_gold_first=sampled[0] if sampled else float("nan"),
        sampled_gold_last=sampled[-1] if sampled else float("nan"),
        kl=kl,
    )


def lm_demo(
    out_root: Path,
    seed: int = 0,
    show_progress: bool = True,
    steps: int = DEMO_ARITHMETIC_SFT_STEPS,
    stages: tuple[str, ...] = LM_DEMO_STAGES,
) -> int:
    """The language-model half of ``rlft demo``, each stage feeding the next:

    - ``sft``: tiny Llama built offline, SFT on ``arithmetic``;
    - ``grpo``: GRPO on ``arithmetic`` from that SFT model (held-out greedy accuracy before/after);
    - ``rm``: a second tiny model SFT-ed on ``preference``, then a reward model trained from it
      (held-out pairwise accuracy against the hidden gold scorer);
    - ``dpo``: DPO from the same preference SFT model (gold win rate against it);
    - ``ppo``: RLHF-PPO from the same SFT model against the reward model (gold score before/after).
    """
    unknown = set(stages) - set(LM_DEMO_STAGES)
    if unknown:
        raise ValueError(f"unknown demo stages {sorted(unknown)} (expected some of {LM_DEMO_STAGES})")
    out_root = Path(out_root)
    start = time.monotonic()
    summary: list[str] = []
    if "sft" in stages or "grpo" in stages:
        sft_model = arithmetic_sft_stage(out_root, seed, show_progress, steps)
        if "grpo" in stages:
            rl = rl_demo_stage(out_root, sft_model, seed=seed, show_progress=show_progress)
            summary.append(f"GRPO arithmetic greedy accuracy {rl['before']:.1%} → {rl['after']:.1%}")
    if "rm" in stages or "dpo" in stages or "ppo" in stages:
        pref_sft = preference_sft(out_root / "preference", seed=seed, show_progress=show_progress)
        if "rm" in stages:
            rm = rm_demo_stage(out_root / "preference", pref_sft, seed=seed, show_progress=show_progress)
            summary.append(
                f"reward model held-out accuracy vs gold {rm['gold_accuracy']:.1%} "
                f"(vs noisy labels {rm['accuracy']:.1%}, ceiling {rm['noise_ceiling']:.1%})"
            )
        if "dpo" in stages:
            dpo = dpo_demo_stage(out_root / "preference", pref_sft, seed=seed, show_progress=show_progress)
            summary.append(
                f"DPO gold win rate vs the SFT model {dpo['win_rate_before']:.1%} → {dpo['win_rate_after']:.1%}"
            )
        if "ppo" in stages:
            if "rm" not in stages:  # PPO needs the reward model
                rm = rm_demo_stage(out_root / "preference", pref_sft, seed=seed, show_progress=show_progress)
            ppo = ppo_demo_stage(
                out_root / "preference", pref_sft, rm["reward_model"], seed=seed, show_progress=show_progress
            )
            summary.append(
                f"PPO gold score {ppo['gold_before']:.3f} → {ppo['gold_after']:.3f} (KL {ppo['kl']:.2f})"
            )
    if summary:
        print(f"\nlanguage-model demo ({time.monotonic() - start:.0f}s):\n  " + "\n  ".join(summary))
    return 0


def parse_stages(text: str) -> tuple[str, ...]:
    """``--stages sft,grpo`` → ("sft", "grpo"); a clear error for unknown names."""
    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in stages if s not in LM_DEMO_STAGES]
    if unknown or not stages:
        raise ConfigError(
            f"--stages: expected a comma-separated subset of {','.join(LM_DEMO_STAGES)}, got {text!r}"
        )
    return stages
