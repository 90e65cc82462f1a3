"""Status edits: at most one per interval, and the newest state always wins."""
import asyncio
import time

from bot.throttle import ThrottledEditor


async def test_a_burst_costs_two_edits_and_ends_on_the_newest_state():
    seen, stamps = [], []

    async def edit(state):
        seen.append(state)
        stamps.append(time.monotonic())

    ed = ThrottledEditor(edit, interval_s=0.2)
    for i in range(50):
        ed.push(i)
        await asyncio.sleep(0.001)
    await ed.close()
    assert seen[0] == 0 and seen[-1] == 49
    assert len(seen) <= 3
    assert all(b - a >= 0.19 for a, b in zip(stamps, stamps[1:]))


async def test_close_writes_the_final_state_after_the_interval():
    seen = []

    async def edit(state):
        seen.append(state)

    ed = ThrottledEditor(edit, interval_s=0.1)
    ed.push("queued")
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    await ed.close("done")
    assert seen == ["queued", "done"]
    assert time.monotonic() - t0 >= 0.08
    ed.push("late")  # ignored after close
    await asyncio.sleep(0.15)
    assert seen == ["queued", "done"]


async def test_a_failed_edit_does_not_stop_later_ones():
    seen = []

    async def edit(state):
        if state == "bad":
            raise RuntimeError("discord said no")
        seen.append(state)

    ed = ThrottledEditor(edit, interval_s=0.05)
    ed.push("bad")
    await asyncio.sleep(0.01)
    await ed.close("good")
    assert seen == ["good"]
