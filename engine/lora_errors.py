"""`LoraError`: a LoRA that cannot be used (unknown name, not a LoRA, made for another model). A leaf, so that the
file checks (engine/lora_files.py), the width check (engine/lora_shapes.py) and the converter share it."""
from __future__ import annotations

from engine import limits


class LoraError(limits.LimitError):
    """A LoRA that cannot be used: unknown name, not a LoRA, made for another model. Shown to the user as is."""
