"""What users are told about the engine: the engine's own message, never another exception's text."""
from __future__ import annotations

import pytest

from bot.embeds import QueueLine, StatusLine, queue_embed, status_text
from engine.job_status import JobStatus
from bot.engine_state import EngineState, EngineStatus, EngineUnavailable, check_can_generate, failure_reason
from engine.errors import EngineOutOfMemory, ModelNotFoundError


def test_the_reason_is_the_engine_errors_own_message():
    err = ModelNotFoundError("[engine] model = 'x.safetensors': no such file or folder")
    assert failure_reason(err) == "[engine] model = 'x.safetensors': no such file or folder"
    oom = EngineOutOfMemory("CUDA ran out of memory; try profile = streamed", profile="resident",
                            suggested_profile="streamed")
    assert "try profile = streamed" in failure_reason(oom)


def test_any_other_exception_is_named_by_its_type_only():
    # e.g. an HTTP error whose text carries a signed URL or a token
    err = RuntimeError("GET https://hf.co/x?token=hf_SECRET123 failed\nTraceback (most recent call last)")
    reason = failure_reason(err)
    assert "RuntimeError" in reason and "log" in reason
    assert "SECRET" not in reason and "Traceback" not in reason and "https" not in reason


def test_only_a_failed_engine_refuses_new_jobs():
    check_can_generate(EngineState(EngineStatus.LOADING))
    check_can_generate(EngineState(EngineStatus.READY, devices=("cuda:0#0",)))
    with pytest.raises(EngineUnavailable, match=r"^The image engine failed to start: no GPU\. The bot owner "
                                                r"can run `python -m bot doctor`\. Nothing was queued\.$"):
        check_can_generate(EngineState(EngineStatus.FAILED, reason="no GPU."))


def test_a_waiting_line_with_a_note_shows_the_note_instead_of_the_eta():
    st = StatusLine(JobStatus.QUEUED, position=2, eta_s=40.0)
    assert status_text(7, "a cat", st).endswith("Queued, position 2 · ready in about 40 s")
    noted = StatusLine(JobStatus.QUEUED, position=2, eta_s=40.0, note="waiting for the model to load")
    assert status_text(7, "a cat", noted).endswith("Queued, position 2 · waiting for the model to load")


@pytest.mark.parametrize("state, head, starts_at_once", [
    (EngineState(EngineStatus.READY, devices=("cuda:0#0",)), "🟢 Engine ready on cuda:0#0.", True),
    (EngineState(EngineStatus.LOADING), "⏳ The model is loading", False),
    (EngineState(EngineStatus.FAILED, reason="no GPU"), "⚠️ The image engine failed to start: no GPU.", False),
])
def test_queue_embed_starts_with_the_engine_state(state, head, starts_at_once):
    empty = queue_embed([], caller_id=1, engine=state).to_dict()["description"]
    assert empty.startswith(head)
    assert ("starts at once" in empty) is starts_at_once
    line = QueueLine(position=1, job_id=3, user_id=1, prompt="p", eta_s=None)
    full = queue_embed([line], caller_id=1, engine=state).to_dict()["description"]
    assert full.startswith(head) and "1 waiting" in full and "~" not in full
