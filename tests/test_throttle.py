"""The in-process counter of `asyncblog.throttle`: all-or-nothing reservations, and a hard cap on
the keys it keeps (a flood of distinct usernames or addresses cannot grow it without bound)."""

from __future__ import annotations

from asyncblog.throttle import Limit, MemoryCounter


async def test_a_reservation_counts_under_every_limit_or_under_none() -> None:
    counter = MemoryCounter()
    tight, loose = Limit("tight", 1, 60), Limit("loose", 10, 60)
    assert await counter.reserve([tight, loose]) == 0.0
    wait = await counter.reserve([tight, loose])
    assert 1.0 <= wait <= 60.0
    # the refused attempt counted nowhere: "loose" holds one, so nine more fit
    for _ in range(9):
        assert await counter.reserve([loose]) == 0.0
    assert await counter.reserve([loose]) > 0


async def test_release_gives_back_and_clear_forgets() -> None:
    counter = MemoryCounter()
    pair, address = Limit("pair", 2, 60), Limit("addr", 2, 60)
    for _ in range(2):
        assert await counter.reserve([pair, address]) == 0.0
    await counter.release(["pair", "addr"], clear=1)  # pair emptied, address one back
    assert await counter.reserve([pair]) == 0.0
    assert await counter.reserve([pair]) == 0.0
    assert await counter.reserve([address]) == 0.0
    assert await counter.reserve([address]) > 0


async def test_the_oldest_keys_go_past_the_cap() -> None:
    counter = MemoryCounter(max_keys=3)
    for n in range(5):
        assert await counter.reserve([Limit(f"k{n}", 1, 60)]) == 0.0
    assert list(counter._counts) == ["k2", "k3", "k4"]
    # k0 was forgotten: it may try again; k4 is still counted
    assert await counter.reserve([Limit("k0", 1, 60)]) == 0.0
    assert await counter.reserve([Limit("k4", 1, 60)]) > 0
