from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cbtbackup.pipeline.workers import BoundedSubmitter, PipelineConfig, SerialExecutor


def test_budget_bounds_bytes_in_flight() -> None:
    peak, now = [0], [0]
    lock = threading.Lock()

    def task(n: int) -> None:
        with lock:
            now[0] += n
            peak[0] = max(peak[0], now[0])
        time.sleep(0.002)
        with lock:
            now[0] -= n

    with ThreadPoolExecutor(8) as pool:
        sub = BoundedSubmitter(pool, max_bytes=300)
        for _ in range(100):
            sub.submit(100, task, 100)
        sub.drain()
    assert 100 <= peak[0] <= 300


def test_a_task_larger_than_the_budget_still_runs() -> None:
    done: list[int] = []
    with ThreadPoolExecutor(2) as pool:
        sub = BoundedSubmitter(pool, max_bytes=10)
        sub.submit(1000, done.append, 1)
        sub.drain()
    assert done == [1]


def test_first_error_stops_submission_and_is_raised() -> None:
    def boom(i: int) -> None:
        if i == 3:
            raise ValueError("task 3 failed")

    sub = BoundedSubmitter(SerialExecutor(), max_bytes=1)
    with pytest.raises(ValueError, match="task 3"):
        for i in range(10):
            sub.submit(1, boom, i)
        sub.drain()


def test_worker_count() -> None:
    assert PipelineConfig(workers=3).worker_count(50) == 3
    assert PipelineConfig().worker_count(1) == 2
    assert PipelineConfig().worker_count(1000) >= 2
