"""The tasks a job can name: the built-in ones (ttft_core.tasks) and the user's network tasks, whose
spec files in the TTFT_TASK_PATH folders are read on the first lookup rather than on import."""

from __future__ import annotations

import os
import threading

from ttft_archive.adapters.task_networks import register_user_tasks
from ttft_archive.ttft_core import tasks as core_tasks
from ttft_archive.ttft_core.tasks import Task

_scanned: set[str] = set()
_lock = threading.Lock()


def load_user_tasks() -> None:
    """Register the spec files of TTFT_TASK_PATH, once per value of the variable."""
    path = os.environ.get("TTFT_TASK_PATH", "")
    with _lock:
        if path not in _scanned:
            register_user_tasks()
            _scanned.add(path)


def get_task(name: str, **params) -> Task:
    load_user_tasks()
    return core_tasks.get_task(name, **params)


def known_tasks() -> list[str]:
    load_user_tasks()
    return core_tasks.known_tasks()


def lambda_scale(name: str) -> float:
    load_user_tasks()
    return core_tasks.lambda_scale(name)


def describe_all() -> list[dict]:
    load_user_tasks()
    return core_tasks.describe_all()
