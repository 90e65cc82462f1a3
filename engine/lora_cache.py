"""The converted LoRA files the engine keeps in host RAM: the active set's, and recently used ones within a budget.

A switch to a LoRA set costs reading and converting its files (engine/lora_convert.py) and then building the pairs
on the device (engine/lora_apply.py). The active set's converted files are always kept (the planner counts them in
`[engine] lora_reserve_rank`'s host RAM); with `[engine] lora_cache_mib` > 0 the files of recently used sets stay
too, least recently used dropped first past that many MiB, so switching back to a recent set skips the read and the
conversion. The planner counts the budget in the plan's host RAM (`planner.lora_cache`), so it is only spent where
the plan has room for it; 0 (the default) keeps the active set's files only.

Files are keyed by (SHA-256, path or name): a file changed on disk has another SHA-256 (the engine hashes it per
size and mtime before a job), so a stale entry is never used.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable

from engine.lora_convert import LoraWeights
from engine.spec import LoraUse

log = logging.getLogger(__name__)

MiB = 2 ** 20


def file_ident(use: LoraUse) -> tuple[str, str]:
    """What a converted file is kept under: the job's SHA-256 of it and its path (a CLI path) or name."""
    return (use.sha256, use.path or use.name)


class LoraCache:
    """Converted LoRA files by ident, most recently used last."""

    def __init__(self, budget: int = 0):
        self.budget = max(0, budget)     # bytes of converted files kept beyond the active set's
        self._files: OrderedDict[tuple, LoraWeights] = OrderedDict()

    def __contains__(self, ident: tuple) -> bool:
        return ident in self._files

    def __len__(self) -> int:
        return len(self._files)

    def get(self, ident: tuple, load: Callable[[], LoraWeights]) -> LoraWeights:
        """The converted file `ident`, loaded with `load()` when it is not kept; now the most recently used."""
        if ident not in self._files:
            self._files[ident] = load()
        self._files.move_to_end(ident)
        return self._files[ident]

    def keep(self, active: Iterable[tuple]) -> None:
        """Drop files, least recently used first, until the ones outside `active` fit the budget."""
        active = set(active)
        spare = [i for i in self._files if i not in active]     # least recently used first
        held = sum(self._files[i].nbytes for i in spare)
        for ident in spare:
            if held <= self.budget:
                break
            held -= self._files.pop(ident).nbytes
            log.info("LoRA %s's converted file dropped from host RAM (lora_cache_mib = %d)", ident[1],
                     self.budget // MiB)

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self._files.values())

    def clear(self) -> None:
        self._files.clear()
