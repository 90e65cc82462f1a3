"""The LoRAs of a request: `/imagine`'s `lora` and `lora_strength` options and A1111's `<lora:name:0.8>` tags in the
prompt, checked against `[engine] loras_dir` and `[limits] max_loras` before anything is queued.

Every LoRA becomes an `engine.spec.LoraUse` with the SHA-256 of its file now, so the job (and Reroll, Vary, Edit,
`/show` after it) uses exactly that file; a file changed or removed later is refused, never silently swapped.
Hashing reads the file (seconds for 1 GB, once per file and mtime): it runs off the event loop.
A file that does not fit the model (another model's layers, other widths: engine/lora_shapes.py, the check the job's
run makes, on the header's shapes), or a set that needs more GPU memory than the plans keep for LoRAs (`[engine]
lora_reserve_rank`), is refused here too, for a new job and for one made again; `lora_library` is the library every
entry point (Discord, the web console, `generate`) checks with.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from functools import partial

from engine import limits
from engine.lora_files import LoraError, LoraFile, LoraLibrary, split_prompt_loras
from engine.model_sizes import model_widths
from engine.settings import EngineSettings
from engine.spec import LoraUse

log = logging.getLogger(__name__)

MAX_AUTOCOMPLETE = 25  # Discord's limit on autocomplete choices
CHOICE_CHARS = 100     # Discord's limit on a choice's name
UNUSABLE = " (not usable with this model)"


def lora_library(settings: EngineSettings) -> LoraLibrary:
    """`[engine] loras_dir`, its files checked against the widths of `[engine] model` (read from its configs) and a
    job's set against `[engine] lora_reserve_rank`."""
    return LoraLibrary(settings.loras_dir, widths=partial(model_widths, settings),
                       reserve_rank=settings.lora_reserve_rank)


@dataclass(frozen=True)
class ChosenLoras:
    prompt: str                   # the prompt without its <lora:…> tags
    loras: tuple[LoraUse, ...]


async def choose_loras(library: LoraLibrary, *, prompt: str, lora: str | None, lora_strength: float | None,
                       max_loras: int) -> ChosenLoras:
    """The prompt's tags, then the `lora` option; LoraError (a LimitError: its message is for the user) when a name,
    a strength, the count or a file is not right."""
    # 1. What was asked: tags in the prompt, then the option (strength 1 when not given).
    text, asked = split_prompt_loras(prompt)
    if lora_strength is not None and not lora:
        raise LoraError("lora_strength needs a lora: pick one in the lora option (or write <lora:name:0.8> in the "
                        "prompt).")
    if lora:
        asked.append((lora.strip(), limits.check_lora_strength(1.0 if lora_strength is None else lora_strength)))
    if not asked:
        return ChosenLoras(prompt, ())
    try:
        limits.check_lora_count(len(asked), max_loras)
    except limits.LimitError as e:
        raise LoraError(str(e)) from None
    # 2. Each name: an installed file, named once, that fits the model; its hashes.
    files: list[tuple[LoraFile, float]] = []
    for name, strength in asked:
        file = library.find(name)
        if any(f.name == file.name for f, _ in files):
            raise LoraError(f"The LoRA '{file.name}' is named twice: give it once, with one strength.")
        files.append((file, strength))
    uses = []
    for file, strength in files:
        hashes = await asyncio.to_thread(_checked_hashes, library, file)
        uses.append(LoraUse(name=file.name, strength=strength, sha256=hashes.sha256, short_hash=hashes.short))
    # 3. Together, within the GPU memory every plan keeps for LoRAs.
    await asyncio.to_thread(library.check_reserve, [f for f, strength in files if strength != 0])
    return ChosenLoras(text, tuple(uses))


def _checked_hashes(library: LoraLibrary, file: LoraFile):
    library.check(file)
    return library.hashes(file)


async def check_still_there(library: LoraLibrary, uses: tuple[LoraUse, ...]) -> None:
    """LoraError when a job's LoRA file is gone, is not the file the job was made with, or does not fit the model
    (configured since) (`/show`, Reroll…)."""
    applied = []
    for use in uses:
        try:
            file = library.find(use.name)
        except LoraError:
            raise LoraError(f"The LoRA '{use.name}' of this job is no longer installed, so its image cannot be made "
                            f"again.") from None
        hashes = await asyncio.to_thread(library.hashes, file)
        if use.sha256 and hashes.sha256 != use.sha256:
            raise LoraError(f"The LoRA '{use.name}' has changed since this job was made (its file is not the same), "
                            f"so its image cannot be made again.")
        await asyncio.to_thread(library.check, file)
        if use.strength != 0:
            applied.append(file)
    await asyncio.to_thread(library.check_reserve, applied)


def autocomplete_choices(library: LoraLibrary, typed: str) -> list[tuple[str, str]]:
    """(label, name) of the installed LoRAs for the `lora` option's autocomplete: those containing what was typed
    (any case), names starting with it first, at most 25. A file this model cannot use (the admission check's
    verdict, kept per file and mtime: one header read per file) is labelled so, not hidden."""
    typed = (typed or "").strip().lower()
    files = [f for f in library.files() if typed in f.name.lower()]
    files.sort(key=lambda f: (not f.name.lower().startswith(typed), f.name.lower()))
    return [(_label(library, f), f.name) for f in files[:MAX_AUTOCOMPLETE]]


def _label(library: LoraLibrary, file: LoraFile) -> str:
    try:
        library.check(file)
        library.check_reserve([file])
    except LoraError:
        return f"{file.name[:CHOICE_CHARS - len(UNUSABLE)]}{UNUSABLE}"
    return file.name


def loras_of(record_loras) -> tuple[LoraUse, ...]:
    """A stored job's LoRAs (`db` rows: dicts) as LoraUses."""
    return tuple(LoraUse(name=str(u["name"]), strength=float(u["strength"]), sha256=u.get("sha256"))
                 for u in record_loras or ())


def stored(uses: tuple[LoraUse, ...]) -> tuple[dict, ...]:
    """LoraUses as the store keeps them (`jobs.loras`)."""
    return tuple({"name": u.name, "strength": u.strength, "sha256": u.sha256} for u in uses)
