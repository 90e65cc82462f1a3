"""bench/load.py in a small configuration: the real bot under concurrent users through the fake Discord."""
from __future__ import annotations

import pytest

from bench.load import LoadPlan, run_load


@pytest.mark.slow
async def test_quick_load_delivers_every_job_once_in_order(tmp_path, tiny_model_dir):
    plan = LoadPlan(jobs=6, users=3, clicks=2, rate=20.0, timeout_s=120.0, gc_freeze=False)  # no freeze in pytest
    report = await run_load(plan, tmp_path, models_dir=tiny_model_dir.parent)
    table = report.table()
    assert report.jobs_sent == 8 and report.jobs_in_db == 8 and report.jobs_done_in_db == 8, table
    assert report.results_delivered == 8 and not report.delivered_twice and not report.missing, table
    assert not report.order_violations, table
    assert report.refused == 0 and report.late_responses == 0, table  # every answer within Discord's 3 s
    assert report.first_response_ms["n"] == 6 and report.click_first_response_ms["n"] == 2
    assert report.lag_samples > 0 and report.requests >= 8 * 2  # at least a response and a result per job
    assert report.correct and "delivered exactly once" in table
