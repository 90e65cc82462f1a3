"""The engine's boundary types: what a job asks for (`JobSpec`) and what it gets back (`Result`)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Callable

from engine.image_input import img2img_steps
from engine.limits import MAX_SEED

if TYPE_CHECKING:  # PIL is imported where images are made
    from PIL.Image import Image

# Called from the engine's thread after each denoising step: (step done, total steps).
ProgressFn = Callable[[int, int], None]
# Polled at step boundaries; True stops the job with a cancelled Result.
CancelFn = Callable[[], bool]


def random_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED)


@dataclass(frozen=True)
class LoraUse:
    """One LoRA of a job. `name` is a file of `[engine] loras_dir` without `.safetensors` (or, from the CLI, a
    path: then `path` is set); `sha256` is the file's hash when the job was made: None means "whatever the file
    is now", a different hash is refused (engine/lora_files.py). Strength −2…2; 0 leaves the model as it is."""
    name: str
    strength: float = 1.0
    sha256: str | None = None
    path: str | None = None
    short_hash: str | None = None  # A1111's, for the PNG's `Lora hashes` (the engine fills it in)


@dataclass(frozen=True)
class JobSpec:
    """One request. `seed` None or -1 means "pick one"; `resolve()` makes it concrete.

    An image input (img2img) is `image`, the path of a decoded image file (PNG) with its `image_sha256`, and
    `denoise` (A1111's "Denoising strength": 0 returns the image through the VAE, 1 ignores it); it is resized
    to width x height. An upscale is the same with width x height twice the image's and `upscale_parent` naming
    the image it refines (recorded in the PNG)."""
    prompt: str
    seed: int | None = None
    steps: int = 20
    width: int = 1024
    height: int = 1024
    guidance: float = 3.5
    variation_seed: int | None = None
    variation_strength: float = 0.0
    count: int = 1  # images in the job; image i uses seed + i
    loras: tuple[LoraUse, ...] = ()
    image: str | None = None
    image_sha256: str | None = None
    denoise: float = 1.0
    upscale_parent: str | None = None
    recipe: dict | None = None  # the engine recipe to make it with (a stored job's, for /show); None: the engine's

    def __hash__(self) -> int:   # `recipe` is a dict: hash it as `recipe_key()` does
        return hash(tuple(getattr(self, f.name) if f.name != "recipe" else self.recipe_key() for f in fields(self)))

    def resolve(self) -> "JobSpec":
        """The same spec with a concrete seed (random when None or -1)."""
        if self.seed is None or self.seed < 0:
            return replace(self, seed=random_seed())
        return self

    @property
    def seeds(self) -> list[int]:
        if self.seed is None or self.seed < 0:
            raise ValueError("resolve() the spec before asking for its seeds")
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.count)]

    @property
    def steps_run(self) -> int:
        """The denoising steps the job runs: `steps`, or the image input's part of them (its strength)."""
        if self.image is None:
            return self.steps
        return img2img_steps(self.steps, self.denoise)[1]

    def lora_key(self) -> tuple:
        """The LoRA set that changes the model: (name, sha256, path, strength) of each LoRA of nonzero strength."""
        return tuple((u.name, u.sha256, u.path, float(u.strength)) for u in self.loras if u.strength != 0)

    def batch_key(self) -> tuple:
        """Specs with equal keys may run together as one batch: same size, steps, guidance, LoRA set, engine recipe
        and, for an image input, the same strength (their images may differ)."""
        image = ("image", float(self.denoise)) if self.image is not None else None
        return (self.width, self.height, self.steps, self.guidance, self.lora_key(), image, self.recipe_key())

    def recipe_key(self) -> tuple | None:
        """The engine recipe it asks for (engine/recipe.py's fields), hashable; None: the engine's own. Jobs asking
        for different recipes never share a denoising batch (engine/recipe_switch.py switches per batch)."""
        return None if self.recipe is None else tuple(sorted((str(k), str(v)) for k, v in self.recipe.items()))


@dataclass
class Result:
    """What `generate` returns. A cancelled job has `cancelled=True` and no images."""
    spec: JobSpec
    images: list["Image"]
    seeds: list[int]
    timings: dict[str, float] = field(default_factory=dict)  # seconds: encode, denoise, decode, total, …
    precision: str = ""  # e.g. "dit=float8_e4m3fn(all-linear)/bf16 compute, text=bf16, vae=bf16"
    profile: str = ""
    model_id: str = ""
    cancelled: bool = False
    steps_done: int = 0
    recipe: dict = field(default_factory=dict)  # engine.recipe.EngineRecipe.to_dict(): what else decides the pixels
