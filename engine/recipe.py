"""The engine recipe: what besides the job's own parameters decides its pixels.

Recorded in every `Result` (and from there in each PNG's `fluxbot` chunk, engine/png.py, and in the job's
`recipe` column, db/models.py). `/show` makes a pruned job again asking for its recipe (`JobSpec.recipe`): the
engine switches what it can for that job (`reached`, engine/recipe_switch.py); equal recipes give the same pixels,
and `differences_from` names what it cannot match, in words a user can read.

What is in it and why:
- `fp8`: the DiT's storage (`[engine] fp8`): fp8 weights are rounded weights.
- `compute`: "bf16" or fp8 matmuls (engine/fp8_compute.py): fp8 rounds the activations too, and its kernel (how
  it scales and accumulates) changes the sums: "fp8" is the `row` kernel, which every fp8 job recorded before
  kernels were named ran, and "fp8.<kernel>" any other (`compute_name`, the one place that names it).
  "bf16.copy" is bf16 compute from the bf16 working copy of the weights (engine/bf16_copy.py): the same numbers,
  but compiled blocks fuse the per-step upcast with the matmul around it differently, so on a GPU the pixels differ
  slightly from "bf16" (eager they are the same).
- `compile`: torch.compile fuses and reorders float operations (relative L2 ~0.02 of the DiT output).
- `torch`, `diffusers`: their kernels and the model code decide reduction orders and attention kernels.
- `device`: "cpu" or the GPU's architecture ("cuda sm_90"): other kernels on other chips.
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, NamedTuple

LABELS = {"fp8": "fp8 storage", "compute": "matmul compute", "compile": "torch.compile",
          "torch": "torch version", "diffusers": "diffusers version", "device": "device"}
UNNAMED_FP8_KERNEL = "row"   # the fp8 kernel a recipe's plain "fp8" compute means (all fp8 recipes before kernels)
KERNEL_SEP = "."             # "fp8.row-fast": compute, then the fp8 kernel (`compute_name`)
COPY = "copy"                # "bf16.copy": bf16 compute from the bf16 working copy (engine/bf16_copy.py)
BF16_COPY = f"bf16{KERNEL_SEP}{COPY}"
VARIANT_MARK = "engine-recipe"   # tells a `RecipeVariant` from a LoRA set's entries in a variant


@dataclass(frozen=True)
class EngineRecipe:
    fp8: str
    compute: str
    compile: bool
    torch: str
    diffusers: str
    device: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "EngineRecipe | None":
        """The recipe stored with a job or PNG; None when there is none (made before recipes were recorded) or it
        is not one."""
        if not isinstance(data, dict):
            return None
        names = {f.name for f in fields(cls)}
        if not names <= set(data):
            return None
        return cls(**{k: data[k] for k in names})

    def text(self) -> str:
        compiled = "compiled" if self.compile else "eager"
        return (f"fp8 {self.fp8} storage, {compute_words(self.compute)} compute, {compiled}, torch {self.torch}, "
                f"diffusers {self.diffusers}, {self.device}")

    def differences(self, other: "EngineRecipe | None") -> list[str]:
        """What differs from `other` (the recipe an image was made with), e.g. ["matmul compute: fp8 (row-fast)
        now, bf16 then"]; ["no recipe was recorded"] when there is none."""
        if other is None:
            return ["no engine recipe was recorded with the image"]
        out = []
        for f in fields(self):
            now, then = getattr(self, f.name), getattr(other, f.name)
            if now != then:
                out.append(f"{LABELS[f.name]}: {_word(now, f.name)} now, {_word(then, f.name)} then")
        return out


def differences_from(recipe: EngineRecipe | None, stored: dict[str, Any] | None,
                     computes: tuple[str, ...] = ()) -> list[str]:
    """What differs between the recipe a running engine makes a job stored with `stored` (a dict, or None) with
    (`reached`: `computes` are the computes it can switch to for a job) and `stored`; [] when the engine makes the
    same pixels. An engine whose recipe is unknown (None) cannot tell."""
    if recipe is None:
        return ["the engine's recipe is not known yet"]
    then = EngineRecipe.from_dict(stored)
    return reached(recipe, then, computes).differences(then)


def reached(running: EngineRecipe, stored: EngineRecipe | None, computes: tuple[str, ...] = ()) -> EngineRecipe:
    """The recipe an engine running `running` makes a job with when the job asks for `stored` (`JobSpec.recipe`,
    engine/recipe_switch.py): the stored compute where it is one of `computes` (what the engine's Linears can switch
    to), eager blocks where the engine's are compiled and the job's were not; everything else (fp8 storage, torch,
    diffusers, device, compiling an eager engine) stays the engine's. No torch here: an engine's parent side answers
    with it too (engine/warm_up.py's RemoteEngineFront)."""
    if stored is None:
        return running
    compute = stored.compute if stored.compute in computes else running.compute
    return replace(running, compute=compute, compile=running.compile and stored.compile)


class RecipeVariant(NamedTuple):
    """The last entry of a job's variant (a compiled shape's and a CUDA graph's key: the LoRA set's entries, then
    this) when the job runs another recipe than the engine's own (`recipe_variant`): that recipe's compute and
    compile. A tuple, so a variant stays hashable, comparable and picklable; `mark` keeps it unequal to any LoRA
    entry."""
    compute: str
    compile: bool
    mark: str = VARIANT_MARK


def recipe_variant(running: EngineRecipe | None, stored: dict[str, Any] | None,
                   computes: tuple[str, ...] = ()) -> tuple:
    """What a job's stored recipe changes in what the DiT runs, as part of a compiled shape's or a CUDA graph's key:
    () when it runs the engine's own recipe, else (the `RecipeVariant` of the one it runs,)."""
    if running is None or stored is None:
        return ()
    used = reached(running, EngineRecipe.from_dict(stored), computes)
    return () if used == running else (RecipeVariant(used.compute, used.compile),)


def variant_recipe(variant: tuple) -> RecipeVariant | None:
    """The `RecipeVariant` a variant ends with (`recipe_variant`'s), or None: the job runs the engine's recipe."""
    last = variant[-1] if variant else None
    return last if isinstance(last, RecipeVariant) else None


def runs_eager(variant: tuple) -> bool:
    """Whether a variant (a LoRA set's entries, then maybe `recipe_variant`'s) runs the DiT's blocks eagerly: a
    job made again with a stored eager recipe on a compiled engine, which compiles nothing."""
    recipe = variant_recipe(variant)
    return recipe is not None and not recipe.compile


def compute_name(compute: str, kernel: str | None = None) -> str:
    """A recipe's `compute`: "bf16", or "bf16.copy" with `kernel` COPY; "fp8" for the `row` kernel (the name every
    fp8 recipe recorded before kernels were named has); "fp8.<kernel>" for another fp8 kernel (engine/fp8_compute.py's
    FP8_KERNELS)."""
    if compute == "bf16":
        return BF16_COPY if kernel == COPY else compute
    if compute != "fp8" or kernel in (None, UNNAMED_FP8_KERNEL):
        return compute
    return f"{compute}{KERNEL_SEP}{kernel}"


def compute_words(name: str) -> str:
    """A recipe's `compute` as a user reads it: "bf16", "bf16 (working copy)", "fp8", "fp8 (row-fast)"."""
    compute, sep, kernel = str(name).partition(KERNEL_SEP)
    if name == BF16_COPY:
        return "bf16 (working copy)"
    return f"{compute} ({kernel})" if sep else compute


def _word(value: Any, field: str = "") -> str:
    """A recipe value in a user's words: on/off for switches, "fp8 (row-fast)" for a named fp8 kernel."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if field == "compute":
        return compute_words(value)
    return str(value)


def device_kind(device: str) -> str:
    """"cpu" (with the machine's architecture) or "cuda sm_XY" for the device's chip."""
    import torch  # lazy: recipes are read (unpickled, compared) where torch is not loaded: an engine process's parent

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(dev)
        return f"cuda sm_{major}{minor}"
    return f"{dev.type} {platform.machine()}"


def current_recipe(fp8: str, compute: str, compile: bool, device: str, kernel: str | None = None) -> EngineRecipe:
    """The recipe of an engine with these settings (resolved: compute is "bf16" or "fp8") on `device`; `kernel`: the
    fp8 kernel its Linears run (default: engine/fp8_compute.py's DEFAULT_KERNEL, what `apply_precision` swaps in)."""
    import diffusers  # lazy: only engines (which import diffusers anyway) build recipes
    import torch  # lazy: see device_kind

    from engine.fp8_compute import DEFAULT_KERNEL  # lazy: it imports torch

    return EngineRecipe(fp8=fp8, compute=compute_name(compute, kernel or DEFAULT_KERNEL), compile=bool(compile),
                        torch=torch.__version__.split("+")[0], diffusers=diffusers.__version__,
                        device=device_kind(device))
