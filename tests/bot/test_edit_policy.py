"""Which queue movements are worth an edit of a waiting job's status line, and how a skipped one still shows."""
import asyncio

from bot.embeds import StatusLine
from bot.throttle import ThrottledEditor
from bot.edit_policy import worth_an_edit
from engine.job_status import JobStatus


def queued(position: int | None, eta_s: float | None = 60.0) -> StatusLine:
    return StatusLine(JobStatus.QUEUED, position=position, eta_s=eta_s)


def test_far_back_a_small_move_is_not_worth_an_edit_a_quarter_is():
    assert not worth_an_edit(queued(40), queued(39))
    assert not worth_an_edit(queued(40), queued(31))
    assert worth_an_edit(queued(40), queued(30))
    assert worth_an_edit(queued(8), queued(6))
    assert not worth_an_edit(queued(8), queued(7))


def test_near_the_front_every_move_is_shown():
    assert worth_an_edit(queued(4), queued(3))
    assert worth_an_edit(queued(2), queued(1))


def test_the_eta_counts_only_when_it_moves_a_lot():
    assert not worth_an_edit(queued(40, 100.0), queued(40, 80.0))   # 20 s of 100: under a quarter
    assert worth_an_edit(queued(40, 100.0), queued(40, 70.0))       # 30 s: a quarter and more than 10 s
    assert not worth_an_edit(queued(40, 20.0), queued(40, 12.0))    # 8 s: a lot in share, little in seconds
    assert worth_an_edit(queued(40, None), queued(40, 60.0))        # an ETA appears (the model loaded)


def test_anything_but_a_waiting_to_waiting_change_is_always_shown():
    assert worth_an_edit(None, queued(40))
    assert worth_an_edit(queued(40), StatusLine(JobStatus.RUNNING, step=1, total=2))
    assert worth_an_edit(queued(40), StatusLine(JobStatus.DONE))


async def test_a_skipped_minor_move_replaces_an_edit_already_due_and_asks_for_none():
    seen = []

    async def edit(state):
        seen.append(state)

    ed = ThrottledEditor(edit, interval_s=0.1)
    ed.push("position 40")                    # shown at once
    await asyncio.sleep(0.01)
    assert not ed.refresh("position 39")      # nothing due: no edit for a minor move
    ed.push("position 30")                    # due after the interval ...
    assert ed.refresh("position 29")          # ... and shows the newest position when it comes
    await asyncio.sleep(0.2)
    assert seen == ["position 40", "position 29"]
    await ed.close()
