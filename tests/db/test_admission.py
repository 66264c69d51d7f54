"""The admission gate (`SlotGate`, `Admission`): plain asyncio, no database."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asyncblog.db.admission import Admission, SlotGate, _lease, slot_released

# ---------------------------------------------------------------------------- SlotGate


async def test_slots_go_to_waiters_in_arrival_order() -> None:
    gate = SlotGate(1, timeout=5)
    await gate.acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        await gate.acquire()
        order.append(n)
        gate.release()

    tasks = []
    for n in range(5):
        tasks.append(asyncio.create_task(waiter(n)))
        await asyncio.sleep(0)  # queued in this order
    gate.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_a_newcomer_cannot_take_a_slot_handed_to_a_waiter() -> None:
    """The released slot belongs to the waiter even before it wakes up."""
    gate = SlotGate(1, timeout=5)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # handed to `waiter`, which has not run yet
    newcomer = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    await waiter
    assert not newcomer.done()  # it queues behind
    gate.release()
    await asyncio.wait_for(newcomer, 1)


async def test_a_waiter_gives_up_after_the_timeout_and_leaves_the_queue() -> None:
    gate = SlotGate(1, timeout=0.05)
    await gate.acquire()
    with pytest.raises(TimeoutError):
        await gate.acquire()
    gate.release()
    await asyncio.wait_for(gate.acquire(), 1)  # the slot was not handed to the gone waiter


async def test_each_waiter_times_out_at_its_own_deadline() -> None:
    gate = SlotGate(1, timeout=0.1)
    await gate.acquire()
    early = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0.05)
    late = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0.07)  # past early's deadline, not late's
    assert early.done() and isinstance(early.exception(), TimeoutError)
    assert not late.done()
    gate.release()  # goes to `late`, the early one having left
    await asyncio.wait_for(late, 1)


async def test_many_waiters_time_out_and_the_gate_still_works() -> None:
    gate = SlotGate(2, timeout=0.05)
    await gate.acquire()
    await gate.acquire()
    results = await asyncio.gather(*(gate.acquire() for _ in range(200)), return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    gate.release()
    gate.release()
    await asyncio.wait_for(gate.acquire(), 1)
    await asyncio.wait_for(gate.acquire(), 1)


async def test_a_waiter_cancelled_after_being_handed_a_slot_passes_it_on() -> None:
    gate = SlotGate(1, timeout=5)
    await gate.acquire()
    first = asyncio.create_task(gate.acquire())
    second = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # handed to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)  # the slot went on to `second`, not lost


async def test_free_slots_are_taken_without_waiting() -> None:
    gate = SlotGate(3, timeout=0.01)
    for _ in range(3):
        await gate.acquire()
    with pytest.raises(TimeoutError):
        await gate.acquire()
    for _ in range(3):
        gate.release()
    for _ in range(3):
        await gate.acquire()


async def test_a_child_task_cannot_use_the_slot_after_its_request_let_it_go() -> None:
    """Tasks started inside a slot (Argon2 hashing in `gather`) copy the lease; once the
    request has left its slot, the lease says so, and they cannot give back a slot they do
    not own."""
    admission = Admission(1, 1.0)
    async with admission.slot():
        lease = _lease.get()
        assert lease is not None and lease.held
    assert not lease.held
    async with slot_released():  # outside any slot: nothing to give back
        pass
    await asyncio.wait_for(admission.take(), 1)  # the one slot is free again


async def test_one_timer_serves_the_whole_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 100 waiters queued the gate has scheduled one timer (for the oldest deadline), not
    one per waiter, and that timer (re-armed for the next deadline as it fires) times them all
    out."""
    gate = SlotGate(1, timeout=0.05)
    await gate.acquire()
    loop = asyncio.get_running_loop()
    scheduled: list[float] = []
    call_at = loop.call_at

    def counting_call_at(when: float, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        scheduled.append(when)
        return call_at(when, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    waiters = [asyncio.create_task(gate.acquire()) for _ in range(100)]
    await asyncio.sleep(0)  # every waiter queued
    assert gate.waiting == 100
    assert len(scheduled) == 1
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    assert gate.waiting == 0
