"""A console request's LoRAs and input image, checked as /imagine checks them (bot/lora_choice.py,
bot/input_images.py): a LoRA of `[engine] loras_dir` (the LoRA field, or `<lora:name:0.8>` tags in the prompt) up to
`[limits] max_loras`, with its file's hash; an uploaded image of at most `[limits] max_input_mb`, sanitized and stored
like a Discord attachment, the job taking its aspect. A refusal is a `LimitError` whose message is for the user."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from bot.input_images import check_attachment, take_file
from bot.lora_choice import check_still_there, choose_loras, lora_library
from engine import limits
from engine.image_input import fit_size
from engine.spec import JobSpec

if TYPE_CHECKING:
    from bot.config import Config

log = logging.getLogger(__name__)


class RequestInputs:
    """LoRAs and input images for the console, from the config's folders and limits."""

    def __init__(self, config: "Config"):
        self.config = config
        self.loras = lora_library(config.engine)

    def lora_names(self) -> list[str]:
        return self.loras.names()

    async def with_loras(self, spec: JobSpec, lora: str | None, strength: float | None) -> JobSpec:
        """The spec with its prompt's tags and the chosen LoRA resolved (the tags leave the prompt)."""
        chosen = await choose_loras(self.loras, prompt=spec.prompt, lora=lora or None,
                                    lora_strength=strength if lora else None,
                                    max_loras=self.config.limits.max_loras)
        return replace(spec, prompt=chosen.prompt, loras=chosen.loras)

    async def with_image(self, spec: JobSpec, path: str | None, strength: float | None) -> JobSpec:
        """The spec starting from the uploaded image (None: unchanged), at its aspect."""
        if not path:
            return spec
        denoise = limits.check_denoise(float(strength) if strength is not None else 1.0)
        upload = Path(path)
        check_attachment(upload.name, upload.stat().st_size, None, self.config.limits.max_input_mb)
        stored = await take_file(upload, images_dir=self.config.engine.images_dir)
        width, height = fit_size(stored.width, stored.height)
        return replace(spec, width=width, height=height, image=str(stored.path), image_sha256=stored.sha256,
                       denoise=denoise)

    async def check_parent(self, spec: JobSpec) -> None:
        """A job made again (Reroll, Vary, Reproduce) needs the very LoRA files it was made with."""
        await check_still_there(self.loras, spec.loras)
