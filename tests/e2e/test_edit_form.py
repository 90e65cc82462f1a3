"""The ✏️ Edit form of a job whose prompt is longer than a Discord text input holds (4,000 characters; prompts
may be up to 6,000 when `[limits] max_prompt_chars` allows it): the form still opens, prefilled with the prompt
cut to 4,000 characters and a label that says so, and submitting it starts the edited job.
"""
from __future__ import annotations

import logging

from db import jobs as store_jobs
from tests.e2e.reliability_kit import *  # noqa: F401,F403 (fixtures and helpers)
from tests.e2e.reliability_kit import has_result, imagine

log = logging.getLogger(__name__)


def _text_inputs(components: list) -> dict[str, dict]:
    """custom_id -> text input of a modal payload (action rows or labels)."""
    found = {}
    for comp in components:
        if comp.get("type") == 4:
            found[comp["custom_id"]] = comp
        found.update(_text_inputs(comp.get("components") or []))
        if isinstance(comp.get("component"), dict):
            found.update(_text_inputs([comp["component"]]))
            found.get(comp["component"].get("custom_id"), {}).setdefault("label", comp.get("label"))
    return found


async def test_the_edit_form_of_a_4500_character_prompt_opens_cut_to_4000_and_submits(fake_discord, start_bot,
                                                                                     make_rel_bot):
    fake = fake_discord
    bot = await start_bot(await make_rel_bot(limits={"max_prompt_chars": 6000}))
    await bot.engines.wait_loaded()
    alice = fake.add_user("alice")
    prompt = ("a lighthouse on a cliff, waves, " * 150)[:4500]
    result = await (await imagine(fake, alice, prompt=prompt, seed=5)).wait_message(has_result, 60)
    # 1. The form opens (a modal, not an error), its prompt cut to what a text input holds.
    opened = await fake.click(alice, result, "Edit")
    response = await opened.wait_response()
    assert response.type == 9, f"the Edit form did not open: {response.data}"
    field = _text_inputs(response.data["components"])["prompt"]
    assert field["value"] == prompt[:4000] and field["max_length"] == 4000
    assert "cut to 4000 characters" in field["label"]
    # 2. Submitting it as prefilled starts the edited job with that prompt.
    submitted = await fake.submit_modal(alice, response.modal_custom_id,
                                        {"prompt": field["value"], "seed": "6", "steps": "1"}, message=result)
    await submitted.wait_message(has_result, 60)
    edited = await store_jobs.get_job(bot.store, 2)
    assert edited.kind == "edit" and edited.parent_id == 1 and edited.prompt == prompt[:4000].rstrip()


async def test_a_short_prompt_is_prefilled_whole_with_the_plain_label(fake_discord, start_bot, make_rel_bot):
    fake = fake_discord
    bot = await start_bot(await make_rel_bot())
    await bot.engines.wait_loaded()
    alice = fake.add_user("alice")
    result = await (await imagine(fake, alice, prompt="a red kite", seed=5)).wait_message(has_result, 30)
    response = await (await fake.click(alice, result, "Edit")).wait_response()
    field = _text_inputs(response.data["components"])["prompt"]
    assert (field["value"], field.get("label")) == ("a red kite", "Prompt")
