"""Built-in tasks, usable exactly like user data: ``get_task("arithmetic").sft_records(1000, seed=0)`` or
``load_records("task:arithmetic?max_operand=20")``. See ``base.py`` for what a task provides."""

# Importing the task modules registers them in TASKS.
from .arithmetic import ArithmeticTask, accuracy, exact_match_reward, leading_integer
from .base import Task, split_of
from .preference import PreferenceTask, policy_gold_stats
from .registry import TASKS, get_task, load_task_records, parse_task_source, task_of, task_records

__all__ = [
    "TASKS",
    "ArithmeticTask",
    "PreferenceTask",
    "Task",
    "accuracy",
    "exact_match_reward",
    "get_task",
    "leading_integer",
    "load_task_records",
    "parse_task_source",
    "policy_gold_stats",
    "split_of",
    "task_of",
    "task_records",
]
