"""A finished job's messages: its result (images, embed, buttons), a failure notice, and what start-up finds undone.

`ResultPoster` builds the result message from the job's record and its PNGs on disk and posts it through the
`Deliverer` (bot/delivery.py: the interaction's followup while its token lives, else a channel message); it records
where it went, counts Discord's refusals (`db.deliveries`) and, at start-up, posts what a stopped bot never did.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import discord

from bot.delivery import MAX_DELIVERY_REFUSALS, Deliverer, Payload, Target, Undelivered, is_refusal
from bot.embeds import STATUS_PROMPT_CHARS, image_name, result_embed
from bot.literal import echo_mentions, literal
from bot.views import JobRef, result_view
from db import deliveries
from db import jobs as store_jobs
from engine.image_input import UPSCALE_MAX_PIXELS, can_upscale
from engine.job_status import JobStatus

if TYPE_CHECKING:
    from db.records import JobRecord
    from db.session import Store

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's per-file limit for bots when nothing better is known


class ResultPoster:
    """Posts results and failure notices of jobs of this database (`identity`, in the buttons' custom_ids)."""

    def __init__(self, client: discord.Client, store: "Store", deliverer: Deliverer, *, identity: str | None):
        self.client = client
        self.store = store
        self.deliverer = deliverer
        self.identity = identity

    # --- one job ------------------------------------------------------------------------------------------------

    async def deliver(self, job: "JobRecord", *, upload_limit: int | None = None) -> bool:
        """Post a done job's images (followup, else channel message) and record where they went."""
        payload = await self.result_payload(job, upload_limit=upload_limit)
        delivered = await self.deliverer.deliver(self._target(job), lambda: payload, job_id=job.id)
        if isinstance(delivered, Undelivered):
            if delivered.refused:
                await self._refused(job, delivered.reason)
            return False
        await store_jobs.set_message(self.store, job.id, delivered.channel_id, delivered.message_id)
        await store_jobs.mark_delivered(self.store, job.id)
        log.info("job %d delivered by %s", job.id, delivered.via)
        return True

    async def result_payload(self, job: "JobRecord", *, upload_limit: int | None = None) -> Payload:
        """The result message of a done job: its PNGs read from disk, the embed and the four buttons. A PNG
        larger than Discord's upload limit (per file) is left out, and the message says so."""
        limit = upload_limit or self._guild_upload_limit(job.guild_id)
        paths = [Path(i.path) for i in job.images]
        blobs = await asyncio.to_thread(lambda: [p.read_bytes() for p in paths])
        files = [(image_name(job.id, i), data) for i, data in enumerate(blobs) if len(data) <= limit]
        content = f"<@{job.user_id}>"
        if len(files) < len(blobs):
            content += (f" ⚠️ {len(blobs) - len(files)} of {len(blobs)} image(s) are larger than Discord's upload "
                        f"limit here ({limit / 2**20:.0f} MiB) and could not be attached; a smaller size fits.")
            log.warning("job %d: %d image(s) over the %d-byte upload limit left out", job.id,
                        len(blobs) - len(files), limit)
        return Payload(content=content, embed=result_embed(job), files=files,
                       view=result_view(JobRef(job.id, self.identity), upscale=offers_upscale(job)),
                       mention_user_id=job.user_id)

    async def notify_failure(self, job: "JobRecord", message: str) -> None:
        """Tell the requester in the job's channel that it failed, and why."""
        if job.channel_id is None:
            return
        shown = literal(job.prompt, STATUS_PROMPT_CHARS)
        text = f"<@{job.user_id}> ⚠️ Job #{job.id} (**{shown}**) failed: {message}"
        try:
            channel = self.client.get_partial_messageable(job.channel_id)
            await channel.send(text, allowed_mentions=echo_mentions(job.user_id))
            await store_jobs.mark_delivered(self.store, job.id)
        except discord.HTTPException as e:
            log.error("job %d: could not tell user %d that it failed (HTTP %s)", job.id, job.user_id, e.status)
            if is_refusal(e):
                await self._refused(job, f"HTTP {e.status} {e.text[:200]}")

    # --- start-up -----------------------------------------------------------------------------------------------

    async def deliver_undelivered(self) -> int:
        """Results that were made but never reached Discord (the bot stopped in between), and failure notices.
        Never stops the start-up: each job's trouble is logged and the next job goes on."""
        sent = 0
        for job in await store_jobs.undelivered_jobs(self.store):
            try:
                sent += await self._deliver_left_over(job)
            except Exception:
                log.exception("job %d: delivering it at start-up failed; going on with the next job", job.id)
        return sent

    async def _deliver_left_over(self, job: "JobRecord") -> bool:
        # 1. A failure notice.
        if job.status is JobStatus.FAILED:
            await self.notify_failure(job, job.error or "unknown error")
            return False
        # 2. A result whose PNG is gone (pruned, or removed by hand while the bot was down): say how to get it
        #    back (/show makes the same pixels again from the record) instead of posting it.
        missing = [i.path for i in job.images if not Path(i.path).is_file()]
        if missing or not job.images:
            return await self._notify_missing_image(job, missing)
        # 3. The result.
        return await self.deliver(job)

    async def _notify_missing_image(self, job: "JobRecord", missing: list[str]) -> bool:
        log.warning("job %d: its result was never delivered and its image file is gone (%s); telling user %d that "
                    "/show job:%d makes it again", job.id, ", ".join(missing) or "no image recorded", job.user_id,
                    job.id)
        text = (f"<@{job.user_id}> Job #{job.id} (**{literal(job.prompt, STATUS_PROMPT_CHARS)}**) was made while the "
                f"bot could not post it, and its image file is gone since. `/show job:{job.id}` makes it again (same "
                f"seed, same image).")
        payload = Payload(content=text, embed=None, files=[], view=None, mention_user_id=job.user_id)
        outcome = await self.deliverer.deliver(self._target(job), lambda: payload, job_id=job.id)
        if isinstance(outcome, Undelivered):
            if outcome.refused:
                await self._refused(job, outcome.reason)
            return False
        await deliveries.mark_undeliverable(self.store, job.id, "its image file was gone when the bot could post "
                                                                "it; the user was told that /show makes it again")
        await store_jobs.mark_delivered(self.store, job.id)
        return False

    # --- helpers ------------------------------------------------------------------------------------------------

    def _target(self, job: "JobRecord") -> Target:
        return Target(application_id=self.client.application_id, token=job.interaction_token,
                      token_created_at=job.interaction_created_at, channel_id=job.channel_id, user_id=job.user_id)

    def _guild_upload_limit(self, guild_id: int | None) -> int:
        guild = self.client.get_guild(guild_id) if guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def _refused(self, job: "JobRecord", reason: str) -> None:
        """Discord refused this job's delivery for good (403/404): count it; at the bound, stop trying."""
        count = await deliveries.record_refusal(self.store, job.id, reason, limit=MAX_DELIVERY_REFUSALS)
        if count >= MAX_DELIVERY_REFUSALS:
            log.warning("job %d: Discord refused its delivery %d times (last: %s); the bot stops trying. The result "
                        "stays in the database: /show job:%d posts it elsewhere", job.id, count, reason, job.id)
        else:
            log.info("job %d: delivery refused (%s), %d of %d; tried again at the next start-up", job.id, reason,
                     count, MAX_DELIVERY_REFUSALS)


def offers_upscale(job: "JobRecord") -> bool:
    """🔍 Upscale ×2 is offered under results of at most 1024² (what the issue targets: 2048² at most) that can grow."""
    return job.width * job.height <= UPSCALE_MAX_PIXELS and can_upscale(job.width, job.height)
