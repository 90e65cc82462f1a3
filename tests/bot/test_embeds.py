"""What users read: status lines, the result embed, history and queue pages."""
from datetime import datetime, timezone

from bot.embeds import (QueueLine, StatusLine, fmt_seconds, history_embed, jump_url, queue_embed, result_embed,
                        status_text)
from db.records import ImageFile, JobRecord
from engine.job_status import JobStatus


def record(**changes) -> JobRecord:
    base = dict(id=12, kind="imagine", parent_id=None, user_id=5, guild_id=100, channel_id=200, interaction_id=None,
                interaction_token=None, interaction_created_at=None, status_message_id=None, result_channel_id=200,
                result_message_id=300, prompt="a red fox", seed=42, count=2, steps=20, width=896, height=1152,
                guidance=3.5, variation_seed=None, variation_strength=0.0, model_id="majicflus_v134@0123456789ab",
                status="done", error=None, created_at=datetime(2026, 1, 1, tzinfo=timezone.utc), started_at=None,
                finished_at=None, timings={"total": 8.46}, precision=None, profile=None, seeds=(42, 43),
                images=(ImageFile("a.png", "x"), ImageFile("b.png", "y")), delivered_at=None, deleted_at=None)
    base.update(changes)
    return JobRecord(**base)


def test_status_lines():
    assert status_text(3, "a fox", StatusLine(JobStatus.QUEUED, position=2, eta_s=42)).endswith(
        "⏳ Queued, position 2 · ready in about 42 s")
    assert status_text(3, "a fox", StatusLine(JobStatus.RUNNING, step=7, total=20, elapsed_s=6.24)).endswith(
        "🎨 Generating, step 7/20 · 6.2 s")
    assert status_text(3, "a fox", StatusLine(JobStatus.DONE, elapsed_s=125)).endswith("✅ Done in 2 min 05 s.")
    assert status_text(3, "a fox", StatusLine(JobStatus.FAILED, error="out of memory")).endswith("⚠️ Failed: out of memory")
    assert "**" + "x" * 159 + "…**" in status_text(3, "x" * 500, StatusLine(JobStatus.CANCELLED))
    assert status_text(3, "**a** <@1>", StatusLine(JobStatus.CANCELLED)).startswith("**\\*\\*a\\*\\* \\<@\u200b1\\>** · job 3")
    assert fmt_seconds(3 * 3600 + 120) == "3 h 02 min"


def test_result_embed_shows_the_recipe():
    emb = result_embed(record(parent_id=7, variation_seed=99, variation_strength=0.15)).to_dict()
    fields = {f["name"]: f["value"] for f in emb["fields"]}
    assert emb["description"] == "a red fox"
    assert fields == {"Seeds": "42, 43", "Steps": "20", "Size": "896×1152", "Guidance": "3.5",
                      "Variation": "seed 99 at 0.15", "Model": "majicflus_v134@0123456789ab", "Time": "8.5 s",
                      "Job": "#12 (from #7)"}
    assert emb["image"]["url"] == "attachment://fluxbot_12_0.png"
    assert len(result_embed(record(prompt="y" * 6000)).description) == 4096


def test_history_links_to_results_and_hides_deleted_ones():
    assert jump_url(record()) == "https://discord.com/channels/100/200/300"
    assert jump_url(record(guild_id=None)) == "https://discord.com/channels/@me/200/300"
    text = history_embed([record(), record(id=13, deleted_at=datetime.now(timezone.utc))], user_id=5, page=1,
                         pages=3).to_dict()["description"]
    assert "[jump to it](https://discord.com/channels/100/200/300)\na red fox" in text  # the prompt is no link text
    assert text.count("](https://") == 1 and "`#13`" in text and "seed 42" in text


def test_queue_marks_the_callers_jobs_even_beyond_the_shown_lines():
    lines = [QueueLine(None, 1, 9, "p", 3.0)] + [QueueLine(i, i + 1, 8, "p", 10.0 * i) for i in range(1, 20)]
    lines.append(QueueLine(20, 21, 5, "mine", 200.0))
    text = queue_embed(lines, caller_id=5, shown=15).to_dict()["description"]
    assert text.startswith("20 waiting. Yours: #20")
    assert "`running` job 1" in text and "job 21 · yours" in text
