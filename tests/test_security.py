"""Password hashing off the event loop: a bulk import takes at most half of the hashing threads,
so a login or a registration arriving meanwhile is not queued behind the whole batch.

The Argon2 work is wrapped to record how many hashes of the batch run at once (real Argon2, the
tests' cheap parameters, plus a short sleep so that the batch lasts long enough to overlap).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from asyncblog.security import PasswordHasher
from tests.fixtures.databases import settings_for

THREADS = 4


class Recorder:
    """Counts the batch's hashes running at once, and the most there ever were."""

    def __init__(self, work: Callable[[str], str]) -> None:
        self.work = work
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = threading.Event()

    def __call__(self, password: str) -> str:
        batch = password.startswith("batch")
        if batch:
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            self.started.set()
        try:
            time.sleep(0.02)
            return self.work(password)
        finally:
            if batch:
                with self.lock:
                    self.running -= 1


async def test_a_batch_uses_half_of_the_threads_and_a_login_gets_one_meanwhile() -> None:
    hasher = PasswordHasher(
        settings_for("sqlite+aiosqlite:///:memory:", password_hash_threads=THREADS)
    )
    inner: Any = hasher._hash
    recorder = Recorder(inner.hash)
    inner.hash = recorder
    batch = asyncio.create_task(hasher.hash_many([f"batch-{n}" for n in range(40)]))
    assert await asyncio.to_thread(recorder.started.wait, 10), "the batch never started"
    single = await hasher.hash("a-registration-meanwhile")
    assert not batch.done(), "the single hash waited for the whole batch"
    hashes = await batch
    assert len(hashes) == 40
    assert recorder.most == THREADS // 2
    assert await hasher.verify("a-registration-meanwhile", single)
