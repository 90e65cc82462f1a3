"""Which denoising shapes the DiT's compiled blocks have run (engine/compile.py), so that an engine can say "warming
up" while a new one compiles instead of an ETA that assumes steady steps. No torch here: the parent side of an
engine process (engine/engine_process.py) keeps one too."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.recipe import differences_from, recipe_variant, runs_eager, variant_recipe

log = logging.getLogger(__name__)


@dataclass
class CompileState:
    """Which denoising shapes the compiled blocks have run: a new one compiles first ("warming up").

    A shape is (batch, width, height, variant); the variant is the job's LoRA set (`JobSpec.lora_key()`): its
    forward hooks on the blocks' Linears are part of the graph (dynamo guards on them), so a new set may compile
    again (a set whose pairs have the same shapes as one seen before reuses its graph: then the flag was up for
    nothing, which only costs a less precise ETA); and, for a job made with a stored recipe the engine switches to
    (engine/recipe_switch.py: other Linear classes), that recipe (`engine.recipe.recipe_variant`)."""
    enabled: bool
    warm: set[tuple] = field(default_factory=set)
    warming_up: bool = False

    def needs_warm_up(self, batch: int, width: int, height: int, variant: tuple = ()) -> bool:
        return self.enabled and not runs_eager(variant) and (batch, width, height, variant) not in self.warm

    def begin(self, batch: int, width: int, height: int, variant: tuple = ()) -> bool:
        """A denoise of this shape starts; True (and `warming_up` set) when it compiles first."""
        self.warming_up = self.needs_warm_up(batch, width, height, variant)
        if self.warming_up:
            log.info("warming up: compiling the DiT blocks for batch %d at %dx%d%s", batch, width, height,
                     " with a new LoRA set" if variant else "")
        return self.warming_up

    def forget_after(self, variant: tuple, own_compute: str) -> None:
        """After a job of this variant: one made with another compute under compiled blocks drops the compiled code
        around it (engine/recipe_switch.py's `forget_compiled_code`), so every shape compiles again, the engine's own
        included."""
        switched = variant_recipe(variant)
        if switched is not None and switched.compile and switched.compute != own_compute:
            self.warm.clear()

    def end(self, batch: int, width: int, height: int, variant: tuple = (), *, completed: bool) -> None:
        """The denoise ended; a completed first step leaves the shape compiled."""
        if self.enabled and completed:
            self.warm.add((batch, width, height, variant))
        self.warming_up = False


def first_group_shape(specs: list, variant: Callable[[Any], tuple] | None = None) -> tuple:
    """(images, width, height, variant) of the first denoising batch of `specs` (Engine.generate_batch groups
    specs by batch_key, first seen first): the shape a CompileState is asked about by an engine's parent side
    (engine/engine_process.py, engine/ray_engine.py); `variant(spec)`: default its LoRA set."""
    first = specs[0]
    images = sum(s.count for s in specs if s.batch_key() == first.batch_key())
    return images, first.width, first.height, variant(first) if variant else first.lora_key()


def tracking_warm_up(state: CompileState, specs: list, progress: Callable[[int, int], None] | None,
                     send: Callable[[Callable[[int, int], None]], Any],
                     variant: Callable[[Any], tuple] | None = None) -> Any:
    """Run `send(relay)` (a remote engine's generate_batch request) with `state` saying "warming up" from the
    request until the first progress message of the first group: the remote side compiles a new shape during its
    first step. `relay` forwards progress to `progress`. The one copy of this rule for the parent side of an
    engine process (engine/engine_process.py) and a Ray actor's driver side (engine/ray_engine.py)."""
    shape = first_group_shape(specs, variant)
    state.begin(*shape)

    def relay(step: int, total: int) -> None:
        if state.warming_up:
            state.end(*shape, completed=True)
        if progress is not None:
            progress(step, total)

    try:
        return send(relay)
    finally:
        state.end(*shape, completed=False)


class RemoteEngineFront:
    """The Engine API methods an engine whose work runs elsewhere (a child process: engine/engine_process.py; a Ray
    actor: engine/ray_engine.py) shares: generate, warming up tracked on this side, recipe differences. A subclass
    sets `compile_state`, `recipe` and `recipe_computes` (what the other side reported when it loaded) and supplies
    `_send_batch(specs, progress, should_cancel)`."""
    compile_state: CompileState
    recipe: Any
    recipe_computes: tuple[str, ...] = ()   # Engine.recipe_computes of the other side's engine

    def _send_batch(self, specs: list, progress: Callable[[int, int], None] | None,
                    should_cancel: Callable[[], bool] | None) -> list:
        raise NotImplementedError

    def generate(self, spec, *, progress=None, should_cancel=None):
        return self.generate_batch([spec], progress=progress, should_cancel=should_cancel)[0]

    def generate_batch(self, specs, *, progress=None, should_cancel=None) -> list:
        specs = list(specs)
        if not specs:
            return self._send_batch(specs, progress, should_cancel)
        # The other side compiles a new shape during its first step: the shapes compiled are tracked here too.
        variants = {self._variant(s) for s in specs}
        try:
            return tracking_warm_up(self.compile_state, specs, progress,
                                    lambda relay: self._send_batch(specs, relay, should_cancel), self._variant)
        finally:
            for variant in variants:
                self.compile_state.forget_after(variant, self.recipe.compute if self.recipe else "")

    @property
    def warming_up(self) -> bool:
        """True while the other side compiles the DiT's blocks for a new shape (see Engine.warming_up)."""
        return self.compile_state.warming_up

    def needs_warm_up(self, spec, batch: int | None = None) -> bool:
        return self.compile_state.needs_warm_up(batch or spec.count, spec.width, spec.height, self._variant(spec))

    def adopt_recipe(self, recipe: Any, computes: tuple[str, ...]) -> None:
        """The other side's engine recipe and computes as it reports them with each reply: a re-plan or an
        out-of-memory error there may keep or drop the bf16 working copy (engine/bf16_copy.py), which changes its
        compute; the Linears then change class and every shape compiles again, so the shapes known compiled are
        forgotten (as `Engine` does on its side)."""
        if recipe is None:
            return
        if self.recipe is not None and recipe.compute != self.recipe.compute:
            self.compile_state = CompileState(enabled=bool(recipe.compile))
        self.recipe, self.recipe_computes = recipe, tuple(computes)

    def recipe_differences(self, stored: dict | None) -> list[str]:
        """See Engine.recipe_differences: from the recipe and the computes the other side reported with its last
        reply (the same rule, engine/recipe.py's `reached`, as the other side's engine applies)."""
        return differences_from(self.recipe, stored, self.recipe_computes)

    def _variant(self, spec) -> tuple:
        """See Engine._variant."""
        return spec.lora_key() + recipe_variant(self.recipe, getattr(spec, "recipe", None), self.recipe_computes)
