"""The console's page: a Gradio Blocks app built from injected parts (`WebJobs`, the config, the size choices).

What a visitor sees, top to bottom:
1. the form: prompt, seed (-1 = random), steps, size preset, guidance, a LoRA and an image to start from, and
   Generate;
2. the job as it goes: "queued #2, about 40 s", then a progress bar of its steps;
3. the result: the PNG (its `parameters` chunk shown beside it, the seed used, the job number), a Download PNG button
   (the file as saved, metadata included), Reroll, Vary and Cancel;
4. the history of this login's jobs (a gallery, newest first): pick one and Reproduce makes it again, same pixels.

Every request goes through `WebJobs` (the bot's jobs service): a refusal (bad input, a limit, a banned word) is a
Gradio error with the same message a Discord user reads, and nothing is queued. The API of each button is named
(`/generate`, `/reroll`, `/vary`, `/reproduce`, `/cancel`, `/history`) so `gradio_client` can drive it.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

import gradio as gr
from gradio.processing_utils import save_file_to_cache

from bot.admission_errors import AdmissionError
from bot.validation import InvalidRequest, SizeChoice
from bot.web.form import spec_from_form
from bot.web.inputs import RequestInputs
from bot.web.jobs import BUTTON_SPECS, JobUpdate, NotThisConsoles, WebJobs, WebUser
from engine import limits
from engine.image_input import DEFAULT_DENOISE
from engine.job_status import JobStatus
from engine.png import PARAMETERS_KEY
from engine.spec import JobSpec

if TYPE_CHECKING:
    from bot.config import Config
    from db.records import JobRecord

log = logging.getLogger(__name__)

TITLE = "fluxbot"
GRADIO_CACHE_CLEANUP = (3600, 86400)  # every hour, delete Gradio's copies of images older than a day
# Their message is for the user as is (a LimitError: a LoRA, an image, a strength).
REFUSALS = (AdmissionError, InvalidRequest, NotThisConsoles, limits.LimitError)


@dataclass(frozen=True)
class Shown:
    """Everything the result area shows, in the order of the handlers' outputs."""
    status: str = ""
    image: str | None = None
    job_id: int | None = None
    seed: int | None = None
    parameters: str = ""
    download: str | None = None
    gallery: list | None = None
    gallery_ids: list | None = None

    def values(self) -> tuple:
        download = gr.DownloadButton(value=self.download, visible=self.download is not None)
        gallery = gr.skip() if self.gallery is None else self.gallery
        ids = gr.skip() if self.gallery_ids is None else self.gallery_ids
        return (self.status, self.image, self.job_id, self.seed, self.parameters, download, gallery, ids)


class Console:
    """The page's handlers, bound to the services it was given. `blocks()` builds the page."""

    def __init__(self, jobs: WebJobs, config: "Config", sizes: list[SizeChoice]):
        self.jobs = jobs
        self.config = config
        self.sizes = sizes
        self.inputs = RequestInputs(config)

    # --- the page ---------------------------------------------------------------------------------------------

    def blocks(self) -> gr.Blocks:
        engine = self.config.engine
        with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=GRADIO_CACHE_CLEANUP) as page:
            gr.Markdown(f"# {TITLE}\nFLUX image generation on this machine's queue, shared with the Discord bot.")
            with gr.Row():
                # 1. the form
                with gr.Column(scale=1):
                    prompt = gr.Textbox(label="Prompt", lines=3, max_length=self.config.limits.max_prompt_chars,
                                        elem_id="prompt")
                    with gr.Row():
                        # no precision: 1.5 is refused (bot/web/form.py), not rounded
                        seed = gr.Number(label="Seed (-1 = random)", value=-1, elem_id="seed")
                        steps = gr.Slider(limits.MIN_STEPS, limits.MAX_STEPS, value=engine.default_steps, step=1,
                                          label="Steps", elem_id="steps")
                    size = gr.Dropdown([(s.title, s.value) for s in self.sizes], value=self.sizes[0].value,
                                       label="Size", elem_id="size")
                    guidance = gr.Slider(limits.MIN_GUIDANCE, limits.MAX_GUIDANCE, value=engine.default_guidance,
                                         step=0.1, label="Guidance", elem_id="guidance")
                    with gr.Accordion("LoRA and image input", open=False):
                        lora = gr.Dropdown(["", *self.inputs.lora_names()], value="", elem_id="lora",
                                           label="LoRA (or <lora:name:0.8> in the prompt)")
                        lora_strength = gr.Slider(limits.MIN_LORA_STRENGTH, limits.MAX_LORA_STRENGTH, value=1.0,
                                                  step=0.05, label="LoRA strength", elem_id="lora-strength")
                        start_image = gr.Image(label="Image to start from (the job takes its aspect)",
                                               type="filepath", sources=["upload"], elem_id="start-image")
                        denoise = gr.Slider(0.0, 1.0, value=DEFAULT_DENOISE, step=0.05, elem_id="denoise",
                                            label="Image strength: 0 keeps the image, 1 ignores it")
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                # 2.-3. the job and its result
                with gr.Column(scale=1):
                    status = gr.Markdown(elem_id="status")
                    image = gr.Image(label="Result", type="filepath", format="png", interactive=False,
                                     buttons=["download", "fullscreen"], elem_id="result")
                    with gr.Row():
                        job = gr.Number(label="Job", precision=0, interactive=False, elem_id="job")
                        used_seed = gr.Number(label="Seed used", precision=0, interactive=False, elem_id="used-seed")
                    parameters = gr.Textbox(label="Parameters (as saved in the PNG)", lines=4, interactive=False,
                                            elem_id="parameters")
                    with gr.Row():
                        reroll = gr.Button("Reroll (new seed)", elem_id="reroll")
                        vary = gr.Button("Vary (subtle)", elem_id="vary")
                        cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
                        download = gr.DownloadButton("Download PNG", visible=False, elem_id="download")
            # 4. the history
            gr.Markdown("## History")
            gallery = gr.Gallery(label="This console's jobs, newest first", columns=6, fit_columns=False,
                                 height=300, object_fit="contain", allow_preview=False, interactive=False,
                                 elem_id="history")
            gallery_ids = gr.State([])
            with gr.Row():
                picked = gr.Number(label="Picked job", precision=0, interactive=False, elem_id="picked")
                reproduce = gr.Button("Reproduce (same pixels)", elem_id="reproduce")
                refresh = gr.Button("Refresh history", elem_id="refresh")

            shown = [status, image, job, used_seed, parameters, download, gallery, gallery_ids]
            live = dict(outputs=shown, concurrency_limit=None)  # the fluxbot queue orders jobs, not Gradio's
            form = [prompt, seed, steps, size, guidance, lora, lora_strength, start_image, denoise]
            generate.click(self.generate, form, api_name="generate", **live)
            prompt.submit(self.generate, form, api_name=False, **live)
            reroll.click(self.reroll, [job], api_name="reroll", **live)
            vary.click(self.vary, [job], api_name="vary", **live)
            reproduce.click(self.reproduce, [picked], api_name="reproduce", **live)
            cancel.click(self.cancel, [job], [status], api_name="cancel", concurrency_limit=None)
            gallery.select(self.pick, [gallery_ids], [picked], api_name=False)
            refresh.click(self.history, None, [gallery, gallery_ids], api_name="history")
            page.load(self.history, None, [gallery, gallery_ids], api_name=False)
        return page

    # --- the handlers -------------------------------------------------------------------------------------------

    async def generate(self, prompt: str, seed: float | None, steps: float | None, size: str | None,
                       guidance: float | None, lora: str | None, lora_strength: float | None,
                       start_image: str | None, denoise: float | None, request: gr.Request,
                       progress: gr.Progress = gr.Progress()) -> AsyncIterator[tuple]:
        try:
            spec = spec_from_form(self.config, self.sizes, prompt=prompt, seed=seed, steps=steps, size=size,
                                  guidance=guidance)
            spec = await self.inputs.with_loras(spec, lora, lora_strength)
            spec = await self.inputs.with_image(spec, start_image, denoise)
        except REFUSALS as e:
            raise gr.Error(str(e)) from None
        async for values in self._follow(_user(request), spec, "imagine", None, progress):
            yield values

    async def reroll(self, job_id: float | None, request: gr.Request,
                     progress: gr.Progress = gr.Progress()) -> AsyncIterator[tuple]:
        async for values in self._from_parent(job_id, request, progress, "reroll"):
            yield values

    async def vary(self, job_id: float | None, request: gr.Request,
                   progress: gr.Progress = gr.Progress()) -> AsyncIterator[tuple]:
        async for values in self._from_parent(job_id, request, progress, "vary"):
            yield values

    async def reproduce(self, job_id: float | None, request: gr.Request,
                        progress: gr.Progress = gr.Progress()) -> AsyncIterator[tuple]:
        async for values in self._from_parent(job_id, request, progress, "show"):
            yield values

    async def cancel(self, job_id: float | None, request: gr.Request) -> str:
        try:
            outcome = await self.jobs.cancel(_user(request), job_id)
        except REFUSALS as e:
            raise gr.Error(str(e)) from None
        return f"Job #{int(job_id)}: {outcome}."

    async def history(self, request: gr.Request) -> tuple[list, list]:
        return await self.history_of(_user(request))

    def pick(self, ids: list[int], event: gr.SelectData) -> int | None:
        index = event.index if isinstance(event.index, int) else None
        return ids[index] if index is not None and 0 <= index < len(ids) else None

    # --- one job, from the request to its result ----------------------------------------------------------------

    async def _from_parent(self, job_id: float | None, request: gr.Request, progress: gr.Progress,
                           kind: str) -> AsyncIterator[tuple]:
        """A new job made from one of this login's jobs, as the button `kind` makes it (reroll, vary, show)."""
        user = _user(request)
        try:
            parent = await self.jobs.own_job(user, job_id)
            spec = BUTTON_SPECS[kind](parent)
            await self.inputs.check_parent(spec)
        except REFUSALS as e:
            raise gr.Error(str(e)) from None
        async for values in self._follow(user, spec, kind, parent.id, progress):
            yield values

    async def _follow(self, user: WebUser, spec: JobSpec, kind: str, parent_id: int | None,
                      progress: gr.Progress) -> AsyncIterator[tuple]:
        """Submit, then show each event of the job until it ends."""
        events = self.jobs.run(user, spec, kind=kind, parent_id=parent_id)
        try:
            async for event in events:
                shown = await self._show(user, event, progress)
                if shown is not None:
                    yield shown.values()
        except REFUSALS as e:
            raise gr.Error(str(e)) from None
        finally:
            await events.aclose()

    async def _show(self, user: WebUser, event: JobUpdate, progress: gr.Progress) -> Shown | None:
        job = event.job_id
        if event.state == "queued":
            seed = event.record.seed if event.record is not None else None
            progress(0.0, desc=f"queued #{event.position}")
            return Shown(status=f"Job #{job} queued: #{event.position} in line, about {_seconds(event.eta_s)}.",
                         job_id=job, seed=seed)
        if event.state == "started":
            progress(0.0, desc="starting")
            return None
        if event.state == "progress":
            progress((event.step, event.total), desc=f"step {event.step}/{event.total}", unit="steps")
            return None
        if event.state == "done":
            return await self._finished(user, event.record)
        if event.state == "failed":
            return Shown(status=f"Job #{job} failed: {event.message}", job_id=job)
        if event.state == "cancelled":
            return Shown(status=f"Job #{job} was cancelled.", job_id=job)
        return None

    async def _finished(self, user: WebUser, record: "JobRecord | None") -> Shown:
        gallery, ids = await self.history_of(user)
        if record is None or _image_path(record) is None:
            return Shown(status="Done, but the image file is gone.", gallery=gallery, gallery_ids=ids)
        path = _image_path(record)
        cached, parameters = await asyncio.to_thread(_cached_with_parameters, path)  # file work off the loop
        seconds = record.timings.get("total")
        took = f" in {seconds:.1f} s" if seconds is not None else ""
        return Shown(status=f"Job #{record.id} done{took}.", image=cached, job_id=record.id, seed=record.seeds[0]
                     if record.seeds else record.seed, parameters=parameters, download=cached,
                     gallery=gallery, gallery_ids=ids)

    async def history_of(self, user: WebUser) -> tuple[list, list]:
        """The gallery (cached PNG, caption) of this login's jobs whose image is on disk, and their job ids."""
        jobs = await self.jobs.history(user)
        items = await asyncio.to_thread(lambda: [(job, _cached_image(job)) for job in jobs])  # hashes and copies
        return [(path, _caption(job)) for job, path in items if path], [job.id for job, path in items if path]


# --- helpers ----------------------------------------------------------------------------------------------------

def _user(request: gr.Request | None) -> WebUser:
    return WebUser.of(getattr(request, "username", None))


def _seconds(eta: float | None) -> str:
    if eta is None:
        return "a moment"
    return f"{eta:.0f} s" if eta < 120 else f"{eta / 60:.0f} min"


def _image_path(job: "JobRecord") -> str | None:
    """The job's first PNG, when it is still on disk (retention may have pruned it)."""
    if job.status != JobStatus.DONE or not job.images:
        return None
    path = job.images[0].path
    return path if Path(path).is_file() else None


def _cache_dir() -> str:
    return gr.utils.get_upload_folder()


def _cached_image(job: "JobRecord") -> str | None:
    """A copy of the job's PNG in Gradio's cache (the images folder itself is never served: it holds every
    Discord user's images too)."""
    path = _image_path(job)
    return save_file_to_cache(path, _cache_dir()) if path is not None else None


def _caption(job: "JobRecord") -> str:
    """A history caption (Gradio shows it as plain text: no markdown, so no `bot.literal` here)."""
    text = job.prompt if len(job.prompt) <= 60 else job.prompt[:59] + "…"
    return f"#{job.id} · seed {job.seeds[0] if job.seeds else job.seed} · {text}"


def _cached_with_parameters(path: str) -> tuple[str, str]:
    """The PNG's copy in Gradio's cache, and the A1111 `parameters` text saved in it (what other tools read)."""
    from PIL import Image  # lazy: only when a result is shown

    with Image.open(path) as im:
        parameters = str(dict(getattr(im, "text", {}) or {}).get(PARAMETERS_KEY, ""))
    return save_file_to_cache(path, _cache_dir()), parameters


def build_console(jobs: WebJobs, config: "Config", sizes: list[SizeChoice]) -> gr.Blocks:
    """The console's Gradio Blocks for these services."""
    return Console(jobs, config, sizes).blocks()

