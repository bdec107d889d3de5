"""Data-parallel training under torchrun: 2 CPU ranks (gloo) compute what 1 rank computes on the same
global batch, with ddp and with fsdp2; rank 0 alone writes; a 2-rank resume is exact; a failing rank
ends the run quickly.

Every run is a real ``torchrun --standalone --nproc_per_node 2 -m rlft ...`` (a free port per launch, so
parallel test workers never collide)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")

COMMON = """\
model: {model}
max_steps: 4
save_every: 2
torch_threads: 1
"""
EPOCHS = "lr: 0.001\neval_samples: 8\n"
RL_LINES = """\
data: task:arithmetic?max_operand=9&n=64
rewards:
  - function: {root}/rewards.py:digits
sampling:
  prompts_per_step: 4
  num_generations: 4
  max_new_tokens: 6
  rollout_shards: 2
optim:
  lr: 0.001
  micro_batch_size: 4
num_minibatches: 2
eval:
  samples: 8
  every: 2
"""
# (command, model task, config lines): every trainer's config with 4 examples per micro-batch (2 per rank)
CASES = {
    "sft": ("sft", "arithmetic", EPOCHS + "data: task:arithmetic?max_operand=9&n=40\nbatch_size: 4\ngrad_accum: 2\n"
            "eval_every: 2\neval_max_new_tokens: 4\n"),
    "rm": ("rm", "preference", EPOCHS + "data: task:preference?n=48&label_noise=0\nbatch_size: 4\ngrad_accum: 2\n"
           "norm_samples: 16\n"),
    "dpo": ("dpo", "preference", EPOCHS + "data: task:preference?n=32&seed=3\nbatch_size: 4\ngrad_accum: 2\n"
            "win_rate: false\nref_cache_dir: {root}/ref-cache\n"),
    "kto": ("dpo", "preference", EPOCHS + "loss: kto\ndata: task:preference?n=32&seed=3\nbatch_size: 4\n"
            "grad_accum: 2\nwin_rate: false\nprecompute_ref: false\n"),
    # RL: rollout_shards 2, so that one process samples what two ranks sample; lr 1e-3 keeps the
    # probability ratios of the second mini-batch clear of the clip range, where rounding could flip them
    "grpo": ("rl", "arithmetic", RL_LINES + "algorithm: grpo\ndynamic_sampling: true\n"),
    "ppo": ("rl", "arithmetic", RL_LINES + "algorithm: ppo\n"),
}  # fmt: skip
REWARDS = """\
def digits(prompts, completions, **fields):
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]
"""


def is_timing(key: str) -> bool:
    return key.startswith("time") or key.endswith("_per_s") or key == "step_seconds"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLFT_DIST_TIMEOUT_S": "60", **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(Path.cwd())) if p)
    return env


def rlft(*args: str, ranks: int = 1, env: dict[str, str] | None = None, timeout: float = 240):
    """Run ``rlft ARGS`` on ``ranks`` processes (torchrun for more than one)."""
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
        if ranks > 1
        else [sys.executable]
    )
    return subprocess.run(
        [*launcher, "-m", "rlft", *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(env),
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_rows(got: list[dict], want: list[dict], rtol: float) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w)
        for key in [k for k in w if not is_timing(k)]:
            assert g[key] == pytest.approx(w[key], rel=rtol, abs=10 * rtol), (w["step"], key, g[key], w[key])


def model_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def assert_same_update(got: dict, want: dict, start: dict, atol: float) -> None:
    assert sorted(got) == sorted(want)
    moved = max(float((want[k] - start[k]).abs().max()) for k in want if k in start)
    assert moved > 100 * atol  # training moved the weights far more than the tolerance
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=atol, msg=k)


@pytest.fixture(scope="module")
def models(micro_llamas) -> dict[str, str]:
    return micro_llamas


class Case:
    """One trainer's config, its one-rank run and its two-rank runs (each made once, on first use)."""

    def __init__(self, name: str, models: dict[str, str], root: Path) -> None:
        self.command, task, lines = CASES[name]
        self.root, self.start = root, load_file(Path(models[task]) / "model.safetensors")
        self.config = root / f"{name}.yaml"
        self.config.write_text(COMMON.format(model=models[task]) + lines.format(root=root))
        (root / "rewards.py").write_text(REWARDS)
        self.runs: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}

    def run(self, mode: str) -> tuple[Path, subprocess.CompletedProcess]:
        """``one`` (one process) or a two-rank run with ``parallel: mode``."""
        if mode not in self.runs:
            out = self.root / mode
            if mode == "one":
                proc = ok(rlft(self.command, "--config", str(self.config), "--out", str(out)))
            else:
                args = (self.command, "--config", str(self.config), "--out", str(out), f"--parallel={mode}")
                proc = ok(rlft(*args, ranks=2))
            self.runs[mode] = (out, proc)
        return self.runs[mode]


@pytest.fixture(scope="module")
def cases(models, tmp_path_factory) -> dict[str, Case]:
    return {name: Case(name, models, tmp_path_factory.mktemp(name)) for name in CASES}


def by_case(pairs: list[tuple[str, str]]) -> list:
    """(case, mode) parameters, each case's tests on one test worker (``--dist loadgroup``), which then
    makes that case's runs once."""
    return [pytest.param(name, mode, marks=pytest.mark.xdist_group(name)) for name, mode in pairs]


@pytest.mark.parametrize(
    ("name", "mode"),
    by_case(
        [(name, mode) for name in CASES for mode in ("ddp", "fsdp2") if (name, mode) != ("kto", "fsdp2")]
    ),
)
def test_two_ranks_equal_one_rank(cases, name, mode) -> None:
    case = cases[name]
    one, _ = case.run("one")
    two, proc = case.run(mode)
    # AdamW turns summation-order differences of the gradients (~1e-8) into ~1e-6 in 4 steps
    assert_same_update(model_weights(two), model_weights(one), case.start, atol=1e-5)
    assert_same_rows(rows(two), rows(one), rtol=1e-4)  # metrics written once, by rank 0
    assert proc.stdout.count("done: 4 steps") == 1  # one rank reports
    config = json.loads((two / "model" / "config.json").read_text())
    assert config["architectures"] == json.loads((one / "model" / "config.json").read_text())["architectures"]
    assert (two / "checkpoints" / "step-4" / "dcp" / ".metadata").is_file() == (mode == "fsdp2")


@pytest.mark.xdist_group("sft")
def test_the_export_of_a_sharded_model_loads_in_transformers(cases) -> None:
    """fsdp2's final model, gathered to rank 0, is a tied Llama that ``from_pretrained`` loads; its
    sharded checkpoint, reassembled in one process, is the Hugging Face export beside it."""
    from torch.distributed.checkpoint.state_dict_loader import load
    from transformers import AutoModelForCausalLM

    from rlft.train.common.safe_dcp import SafeReader

    two, _ = cases["sft"].run("fsdp2")
    loaded = AutoModelForCausalLM.from_pretrained(two / "model")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # still tied
    for k, v in model_weights(two).items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0, msg=k)
    step = two / "checkpoints" / "step-4"
    exported = load_file(step / "model.safetensors")
    state = {"model": {k: torch.zeros_like(v) for k, v in exported.items()}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        load(state, storage_reader=SafeReader(str(step / "dcp")), no_dist=True)
    for k, v in exported.items():
        torch.testing.assert_close(state["model"][k], v, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize(
    ("name", "mode"),
    by_case([("sft", "fsdp2"), ("dpo", "fsdp2"), ("grpo", "fsdp2"), ("ppo", "ddp")]),
)
def test_resume_on_two_ranks_is_exact(cases, name, mode) -> None:
    case = cases[name]
    uninterrupted, _ = case.run(mode)
    run = case.root / f"resumed-{mode}"
    if name == "sft":  # a run that stops after 2 steps, as a crash would
        args = ("--config", str(case.config), "--out", str(run), f"--parallel={mode}")
        ok(rlft(case.command, *args, "--stop-after", "2", ranks=2))
        assert (
            not (run / "model").exists() and (run / "checkpoints" / "step-2" / "trainer_state.pt").is_file()
        )
    else:  # the uninterrupted run as it stood after its step-2 checkpoint
        interrupted_copy(uninterrupted, run, step=2)
    proc = ok(rlft(case.command, "--resume", str(run), ranks=2))
    assert "resuming from" in proc.stderr
    want, got = model_weights(uninterrupted), model_weights(run)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert_same_rows(rows(run), rows(uninterrupted), rtol=0)


def interrupted_copy(src: Path, dst: Path, step: int) -> None:
    """``src`` as a run killed right after its step-``step`` checkpoint left it: no final model, no later
    checkpoint (its metric rows after the checkpoint are dropped on resume)."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "model")
    for later in (dst / "checkpoints").glob("step-*"):
        if int(later.name.removeprefix("step-")) > step:
            shutil.rmtree(later)


@pytest.mark.xdist_group("sft")
def test_resume_on_another_number_of_ranks(cases) -> None:
    """A sharded checkpoint of 2 ranks continues on one process (DCP reshards it); a ddp checkpoint
    cannot be taken by fsdp2, and says so in one line."""
    case = cases["sft"]
    uninterrupted, _ = case.run("fsdp2")
    run = case.root / "fsdp2-then-one"
    interrupted_copy(uninterrupted, run, step=2)
    ok(rlft(case.command, "--resume", str(run), "--parallel=ddp"))
    assert_same_update(model_weights(run), model_weights(uninterrupted), case.start, atol=1e-5)
    ddp_run = case.root / "ddp-then-fsdp2"
    interrupted_copy(case.run("ddp")[0], ddp_run, step=2)
    proc = rlft(case.command, "--resume", str(ddp_run), "--parallel=fsdp2", ranks=2)
    assert proc.returncode != 0
    assert proc.stderr.count("written by one process or under parallel: ddp") == 1, proc.stderr[-2000:]


@pytest.mark.xdist_group("sft")
def test_accelerate_launch_runs_the_same_ranks(cases) -> None:
    """``accelerate launch --multi_gpu --num_processes 2`` starts the ranks torchrun starts (its
    environment is torchrun's), on CPUs as well: the run equals one process."""
    pytest.importorskip("accelerate")
    case = cases["sft"]
    one, _ = case.run("one")
    out = case.root / "accelerate"
    with socket.socket() as sock:  # a free port: parallel test workers never collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port)]  # fmt: skip
    args = ["-m", "rlft", "sft", "--config", str(case.config), "--out", str(out), "--no-progress"]
    proc = ok(subprocess.run([*launch, *args], capture_output=True, text=True, timeout=240, env=_env()))
    assert proc.stdout.count("done: 4 steps") == 1
    assert_same_update(model_weights(out), model_weights(one), case.start, atol=1e-5)


class _Call:
    """Unpickles as ``func(*args)``: how a crafted index would run code."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_a_sharded_checkpoint_index_cannot_run_code(tmp_path) -> None:
    import pickle

    from rlft.run import CheckpointError
    from rlft.train.common.safe_dcp import load_metadata

    marker = tmp_path / "ran"
    crafted = [
        _Call(os.system, f"touch {marker}"),  # a global outside the index's types
        _Call(print, "x"),
    ]
    for payload in crafted:
        with pytest.raises(CheckpointError, match="not part of a checkpoint index"):
            load_metadata(pickle.dumps(payload), "dcp/.metadata")

    # a dotted name reaching through an allowed module's own imports
    def text(t: str) -> bytes:  # SHORT_BINUNICODE
        return b"\x8c" + bytes([len(t)]) + t.encode()

    dotted = b"\x80\x04" + text("torch.distributed.checkpoint.metadata") + text("os.system") + b"\x93."
    with pytest.raises(CheckpointError, match="not part of a checkpoint index"):
        load_metadata(dotted, "dcp/.metadata")
    assert not marker.exists()


FAIL_ON_RANK_1 = """\
import os
import shutil
if os.environ.get("RANK") == "1":
    import rlft.train.sft.trainer as trainer

    calls = []
    real = trainer.token_loss_sum

    def failing(*args):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("injected failure on rank 1")
        return real(*args)

    trainer.token_loss_sum = failing
"""


@pytest.mark.xdist_group("sft")
def test_a_failing_rank_stops_every_rank_quickly(cases, tmp_path) -> None:
    config = cases["sft"].config
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(FAIL_ON_RANK_1))
    started = time.monotonic()
    proc = rlft(
        "sft",
        "--config",
        str(config),
        "--out",
        str(tmp_path / "run"),
        ranks=2,
        env={"PYTHONPATH": str(hook)},
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stderr
    assert elapsed < 60, elapsed
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.xdist_group("sft")
def test_errors_of_rank_0_reach_every_rank_and_print_once(cases, tmp_path) -> None:
    config = cases["sft"].config
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = rlft("sft", "--config", str(config), "--out", str(blocker), ranks=2, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("cannot create run directory") == 1, proc.stderr[-2000:]
    proc = rlft("sft", "--config", str(config), "--out", str(tmp_path / "r"), "--batch_size=3", ranks=2)
    assert proc.returncode != 0
    assert proc.stderr.count("'batch_size': 3 examples per micro-batch do not divide over 2 ranks") == 1
