"""What a training loop does around its steps, written once for the epoch loop and the online RL loop.

    book = Bookkeeping(...)           metrics (trimmed to a resumed checkpoint), an evaluation at step 0,
                                      the progress bar, the signal and non-finite policy (RunControl)
    with book:                        SIGTERM / SIGINT now only set a flag
        while step < total_steps:
            … the trainer's step …   (book.control.step_optimizer skips a non-finite update)
            if book.end_of_step(step, row, shown, seconds):   log; evaluate, checkpoint when due;
                break                                           stop on a signal, out of time or stop_after

The trainer keeps only what it learns from; when to log, evaluate, checkpoint and stop is decided here,
the same way for every trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Self

from rlft.run import MetricsWriter, Progress
from rlft.run.distributed import broadcast_object, is_main
from rlft.train.common.launch import TrainerCall
from rlft.train.common.run_control import RunControl

__all__ = ["Bookkeeping"]


class Bookkeeping:
    """What a training loop keeps besides the model: where metrics go, the signal and non-finite policy
    (:attr:`control`), the progress bar, the latest evaluation, the steps this call ran and the training
    time spent (evaluation and checkpoints excluded).

    Opening it for a loop that starts at ``step`` (a resumed checkpoint's, or 0) and ends at
    ``total_steps`` appends to the run's metrics (TensorBoard events after a resumed checkpoint are
    dropped), evaluates and logs step 0 unless resumed, and starts the progress bar. ``cfg`` supplies
    log_every, save_every and max_consecutive_skips; ``eval_every`` (0: only at the end) is passed, as a
    config may hold it in an ``eval`` section; ``max_minutes`` (0 or None: no limit) is a budget of
    training time; ``shown_eval`` names evaluation metrics for the progress bar, of which
    the first present is shown."""

    def __init__(
        self,
        call: TrainerCall,
        cfg: Any,
        total_steps: int,
        step: int,
        resumed: bool,
        evaluate: Callable[[], dict[str, float]],
        save: Callable[[int], None],
        desc: str,
        max_minutes: float | None = None,
        shown_eval: tuple[str, ...] = (),
        *,
        eval_every: int,
    ) -> None:
        self.cfg, self.total_steps, self.evaluate, self.save = cfg, total_steps, evaluate, save
        self.say, self.stop_after = call.say, call.stop_after
        self.max_minutes, self.shown_eval, self.eval_every = max_minutes, shown_eval, eval_every
        main = is_main()  # only rank 0 writes metrics and shows progress
        self.metrics = MetricsWriter(call.run.root, resume_step=step if resumed else -1, enabled=main)
        self.control = RunControl(call.run, call.command, cfg.max_consecutive_skips, call.say)
        self.initial_eval = evaluate() if step == 0 else {}  # empty when resumed or without eval data
        if self.initial_eval:
            self.metrics.log(0, self.initial_eval)
        self.progress = Progress(
            total_steps,
            desc=desc,
            unit="step",
            enabled=call.show_progress and main,
            time_budget_s=60 * max_minutes if max_minutes else None,
            initial=step,
        )
        self.last_eval: dict[str, float] = dict(self.initial_eval)  # the latest evaluation
        self.last_row: dict[str, Any] = {}  # the row of the latest step that learned
        self.history: list[dict[str, Any]] = []  # every row logged after step 0, with its step
        self.steps_run, self.train_seconds, self.out_of_time = 0, 0.0, False

    def __enter__(self) -> Self:
        self.control.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.progress.close()
            self.metrics.close()
        finally:
            self.control.__exit__(*exc)

    def end_of_step(self, step: int, row: dict[str, Any], shown: dict[str, Any], seconds: float) -> bool:
        """What follows optimiser step ``step``, which took ``seconds`` of training time: log ``row`` every
        ``log_every`` steps and at the last; evaluate every ``eval_every`` steps, at the last and when out
        of time; show ``shown`` on the progress bar; checkpoint every ``save_every`` steps, at the last and
        when out of time, TensorBoard flushed first; on a pending SIGTERM/SIGINT checkpoint and raise
        :class:`~rlft.run.RunInterrupted`. Returns whether to stop now: out of time, or ``stop_after``
        steps run before the last."""
        cfg, last = self.cfg, step == self.total_steps
        self.last_row = row
        self.steps_run += 1
        self.train_seconds += seconds
        budget_s = 60 * self.max_minutes if self.max_minutes else None
        # rank 0's clock decides for every rank, so all stop after the same step
        self.out_of_time = budget_s is not None and broadcast_object(self.train_seconds >= budget_s)
        if step % cfg.log_every == 0 or last:
            self._log(step, row)
        if (self.eval_every and step % self.eval_every == 0) or last or self.out_of_time:
            self.last_eval = self.evaluate()
            if self.last_eval:
                self._log(step, self.last_eval)
        self.progress.update(1, budget_used_s=self.train_seconds, **{**shown, **self._eval_postfix()})
        saved = bool(cfg.save_every) and (step % cfg.save_every == 0 or last or self.out_of_time)
        if saved:
            self.metrics.flush()  # first: a complete checkpoint always has its TensorBoard events on disk
            self.save(step)
        self.control.stop_if_signalled(step, self.save, self.metrics, saved)
        if self.out_of_time:
            self.say(f"stopping at step {step}: max_minutes={self.max_minutes:g} of training time used")
            return True
        return self.stop_after is not None and self.steps_run >= self.stop_after and not last

    def skipped_step(self, step: int, row: Mapping[str, Any]) -> None:
        """A step with nothing to learn from (no finite reward): ``row`` is logged and the step counted,
        and a pending signal still checkpoints and stops; it is not evaluated or checkpointed otherwise."""
        self.steps_run += 1
        self.metrics.log(step, row)
        self.progress.update(1)
        self.control.stop_if_signalled(step, self.save, self.metrics)

    def _log(self, step: int, values: Mapping[str, Any]) -> None:
        self.metrics.log(step, values)
        self.history.append({"step": step, **values})

    def _eval_postfix(self) -> dict[str, float]:
        for key in self.shown_eval:
            if key in self.last_eval:
                return {key: self.last_eval[key]}
        return {}
