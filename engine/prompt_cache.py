"""An LRU cache of prompt embeddings: a repeated prompt (rerolls, variations) skips CLIP and T5."""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptEmbeds:
    """One prompt's embeddings, kept on the CPU: T5 sequence (1, seq, dim) and CLIP pooled (1, dim)."""
    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor


class PromptCache:
    """Least-recently-used map from (prompt, max_sequence_length, variant) to PromptEmbeds. Size 0 disables it.
    `variant` names what else changes the embeddings: the LoRA set when it changes CLIP (else empty)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[tuple[str, int, tuple], PromptEmbeds] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get_or_encode(self, prompt: str, max_sequence_length: int,
                      encode: Callable[[str], PromptEmbeds], *, variant: tuple = ()) -> PromptEmbeds:
        """The cached embeddings of `prompt`, else `encode(prompt)` (remembered, evicting the oldest)."""
        key = (prompt, max_sequence_length, variant)
        # 1. A hit moves the entry to the young end.
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        # 2. A miss runs the encoders outside the lock, then stores the result.
        embeds = encode(prompt)
        if self.size > 0:
            with self._lock:
                self._items[key] = embeds
                self._items.move_to_end(key)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return embeds

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
