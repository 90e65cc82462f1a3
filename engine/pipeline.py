"""`Engine`: one loaded FLUX pipeline on one device, turning `JobSpec`s into images.

Loading: resolve `[engine] model` (engine/models.py) → FluxPipeline in bf16 → DiT weights to fp8 storage
(engine/precision.py) → memory profile (engine/memory.py). Generating: prompt embeddings from the LRU
cache (engine/prompt_cache.py) or the text encoders, CPU-seeded noise (engine/noise.py), diffusers'
denoising loop with a step callback (progress, cancellation), then a VAE decode one image at a time.

An Engine is used from one thread at a time (the worker's); a lock makes concurrent calls wait.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
import traceback
from dataclasses import replace
from typing import Sequence

import torch

from engine import limits
from engine.bf16_copy import add_copy, copy_bytes, copy_room, copyable_linears, remove_copy
from engine.compile import compile_blocks, use_disk_cache
from engine.compute_choice import compute_and_compile
from engine.cuda_graphs import GraphedForward
from engine.errors import EngineError, EngineOutOfMemory
from engine.fp8_compute import DEFAULT_KERNEL, kernel_for
from engine.img2img import Schedule, encode_image, noised, schedule
from engine.lora_apply import ActiveLoras
from engine.lora_cache import LoraCache, file_ident
from engine.lora_convert import LoraWeights, load_lora, pipe_widths
from engine.lora_files import LoraLibrary
from engine.lora_shapes import check_reserve
from engine.memory import (apply_plan, detect_budgets, execution_device, free_device_cache, leaner, make_plan,
                           pipe_sizes, use_expandable_segments)
from engine.models import check_downloaded_files, load_pipeline, model_id, resolve_source
from engine.noise import initial_latents
from engine.planner import GPU, allocator_slack, decode_working
from engine.precision import apply_precision
from engine.prompt_cache import PromptCache, PromptEmbeds
from engine.recipe import BF16_COPY, EngineRecipe, current_recipe, differences_from, recipe_variant
from engine.recipe_switch import forget_compiled_code, made_with, reachable_computes
from engine.settings import EngineSettings
from engine.spec import CancelFn, JobSpec, ProgressFn, Result
from engine.streamer_flux import dit_blocks
from engine.warm_up import CompileState
from engine.tiny import ensure_demo_lora

log = logging.getLogger(__name__)



GRAPH_SLACK = 512 * 2**20   # device memory left free besides a new CUDA graph and the decode after it


class _Cancelled(Exception):
    """Raised from the step callback to leave diffusers' loop at a step boundary."""

    def __init__(self, steps_done: int):
        super().__init__(steps_done)
        self.steps_done = steps_done


def check_spec(spec: JobSpec) -> None:
    """EngineError with a clear message if the spec asks for something the engine cannot make (the limits and
    their wording are engine/limits.py's, shared with the bot and the CLI)."""
    try:
        limits.check_size(spec.width, spec.height)
        limits.check_steps(spec.steps)
        limits.check_guidance(spec.guidance)
        limits.check_count(spec.count)
        limits.check_seed(spec.seed if spec.seed is None or spec.seed >= 0 else None)
        limits.check_variation(spec.variation_strength, spec.variation_seed)
        limits.check_prompt(spec.prompt)
        limits.check_lora_count(len(spec.loras))
        for lora in spec.loras:
            limits.check_lora_strength(lora.strength)
        limits.check_denoise(spec.denoise)
    except limits.LimitError as e:
        raise EngineError(str(e)) from None


class Engine:
    """A loaded pipeline. Build it with `Engine.load(settings, device)`, or `Engine.from_pipeline` around a pipeline
    built elsewhere (the benches' random weights)."""

    def __init__(self, *, settings: EngineSettings, device: str, pipe, model_id: str, precision: str,
                 budgets=None, recipe: EngineRecipe | None = None, **_sizes_of_old):
        # `budgets` (memory.Budgets) are measured on first placement when not given; the old keyword arguments
        # dit_bytes/other_bytes are accepted and ignored (the plan measures every block itself).
        self.settings = settings
        self.device = device
        self.pipe = pipe
        self.model_id = model_id
        self.precision = precision
        self.profile = ""
        self.plan = None
        self.prompt_cache = PromptCache(settings.prompt_cache_size)
        self._budgets = budgets        # memory.Budgets measured before loading (what the plans may use)
        self._sizes = None             # planner.ModelSizes of the loaded pipeline
        self._out_of_memory_at = ""    # the profile that last ran out of memory: the next set_profile goes leanest
        self._lock = threading.Lock()
        self.lora_library = LoraLibrary(settings.loras_dir)
        self.active_loras = ActiveLoras(pipe)
        self._lora_files = LoraCache(settings.lora_cache_mib * 2**20)   # converted LoRA files: the set's, recent ones
        self._widths = pipe_widths(pipe)   # the Linears' in/out features (LoRA checks): fixed for the pipeline's life
        # What besides the job decides the pixels (engine/recipe.py); by default the eager bf16 compute engine.
        self.recipe = recipe or current_recipe(settings.fp8, "bf16", False, device)
        self.recipe_computes: tuple[str, ...] = ()   # what a job's stored recipe may switch to (engine/recipe_switch.py)
        self.compile_state = CompileState(enabled=self.recipe.compile)
        self.graphs: GraphedForward | None = None   # the DiT's forward as CUDA graphs (resident, compiled: _place)
        self.bf16_copy_bytes = 0          # the DiT Linears' bf16 working copy on the GPU (engine/bf16_copy.py: _place)
        self._bf16_copy_refused = ""      # why no copy is kept again (an out-of-memory error with one)

    # ------------------------------------------------------------------------------------- lifecycle

    @classmethod
    def load(cls, settings: EngineSettings, device: str = "cpu") -> "Engine":
        """Load the configured model onto `device` (blocking: seconds for tiny-random, minutes for FLUX)."""
        t0 = time.perf_counter()
        if device.startswith("cuda"):
            use_expandable_segments()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(f"device {device} was asked for, but this torch ({torch.__version__}) sees no CUDA GPU: "
                              f"set [engine] devices = [\"cpu\"], or install a CUDA build of torch and its driver")
        # 1. Find the files (ModelNotFoundError says what is missing) and name the model; measure the budgets
        #    before loading and check compute and compile (bad settings fail here, naming the key, not after
        #    minutes of loading).
        source = resolve_source(settings)
        check_downloaded_files(source)
        mid = model_id(source)
        budgets = detect_budgets(settings, device)
        compute_and_compile(settings, device)
        # 2. Load on the CPU (memory-mapped where the loader can).
        pipe = load_pipeline(source, settings.fp8)
        if source.kind == "tiny":   # its demo LoRA, so an owner can try LoRAs without downloads
            ensure_demo_lora(settings.loras_dir, pipe.transformer)
        # 3. Precision, recipe, placement and compiled blocks: what every engine around a built pipeline does.
        engine = cls.from_pipeline(settings, device, pipe, mid, budgets=budgets)
        log.info("engine ready: %s on %s, profile %s (%s), %s, %s, loaded in %.1f s", mid, device, engine.profile,
                 engine.plan.reason, engine.precision, "compiled blocks" if engine.recipe.compile else "eager",
                 time.perf_counter() - t0)
        return engine

    @classmethod
    def from_pipeline(cls, settings: EngineSettings, device: str, pipe, model_id: str, *,
                      budgets=None) -> "Engine":
        """An Engine around an already-built pipeline (bf16 weights, as the loader or a bench built them): the DiT
        stored in fp8 with the Linears' forward for `[engine] compute`, the recipe, the placement plan of `[engine]
        profile`, then compiled blocks where `[engine] compile` says. `budgets` (memory.Budgets): measured before
        the pipeline was built, as `Engine.load` does; default: measured now."""
        # 1. Store the DiT in fp8 (before placing), with the fp8 Linears' forward for the compute (hook-free when
        #    the blocks are compiled); the recipe says which.
        compute, compiled = compute_and_compile(settings, device)
        kernel = kernel_for(device) if compute == "fp8" else DEFAULT_KERNEL
        precision = apply_precision(pipe, settings.fp8, compute, hooks=not compiled, kernel=kernel)
        recipe = current_recipe(settings.fp8, compute, compiled, device, kernel=kernel)
        budgets = budgets or detect_budgets(settings, device)
        engine = cls(settings=settings, device=device, pipe=pipe, model_id=model_id, precision=precision,
                     budgets=budgets, recipe=recipe)
        engine._sizes = pipe_sizes(pipe)
        engine.recipe_computes = reachable_computes(pipe, device, {DEFAULT_KERNEL: kernel} if compute == "fp8" else None)
        # 2. Plan where every weight lives (the planner for "auto") and place them.
        plan = make_plan(settings, device, engine._sizes, budgets)
        log.info("placement plan on %s:\n  %s", device, plan.describe().replace("\n", "\n  "))
        if not plan.fits and settings.profile == "auto":
            engine.close()
            raise EngineError(f"fluxbot cannot run on {device} within its budgets: {plan.problem}")
        if not plan.fits:
            log.warning("[engine] profile = %r does not fit the budgets on %s (it runs anyway): %s", settings.profile,
                        device, plan.problem)
        engine._place(plan)
        # 3. Compile the repeated blocks (the first image of each shape compiles them: "warming up").
        if compiled:
            use_disk_cache(settings.models_dir)
            compile_blocks(dit_blocks(pipe))
        return engine

    @property
    def warming_up(self) -> bool:
        """True while a denoise compiles the DiT's blocks for a new shape (its first step takes tens of seconds,
        so step-based ETAs are wrong until it ends)."""
        return self.compile_state.warming_up

    def needs_warm_up(self, spec: JobSpec, batch: int | None = None) -> bool:
        """Whether a denoise of this spec's shape (and LoRA set, and stored recipe) would compile first; `batch`: the
        images denoised together (default: the spec's count)."""
        return self.compile_state.needs_warm_up(batch or spec.count, spec.width, spec.height, self._variant(spec))

    def recipe_differences(self, stored: dict | None) -> list[str]:
        """What a job asking for `stored` (a job's `recipe`, a PNG's) would still be made with differently: [] means
        the same pixels come out (the engine switches what it can for the job: engine/recipe_switch.py); else each
        item says what and how ("torch.compile: on now, off then")."""
        return differences_from(self.recipe, stored, self.recipe_computes)

    def _variant(self, spec: JobSpec) -> tuple:
        """What besides its shape a denoise of `spec` compiles and records CUDA graphs for: its LoRA set, and the
        recipe it runs when that is not the engine's own."""
        return spec.lora_key() + recipe_variant(self.recipe, spec.recipe, self.recipe_computes)

    def set_profile(self, profile: str) -> None:
        """Move the weights to another plan: a forced profile, or "auto". After an out-of-memory (the worker's
        one retry) the plan is the leanest of `profile`: no DiT block resident even within [engine]
        vram_budget_gib, and every device tensor of the failed plan is freed first."""
        with self._lock:
            if self.pipe is None:
                raise EngineError("the engine is closed")
            leanest, self._out_of_memory_at = bool(self._out_of_memory_at), ""
            self._place(profile, leanest=leanest)

    def close(self) -> None:
        """Free the pipeline and the device memory it held."""
        with self._lock:
            self._drop_graphs()
            self._drop_bf16_copy()
            self.active_loras.clear()
            self._lora_files.clear()
            if self.plan is not None:
                self.plan.release()
            self.pipe = None
            self.prompt_cache.clear()
            gc.collect()
            if self.device.startswith("cuda") and torch.cuda.is_available():
                torch.cuda.empty_cache()
        log.info("engine closed (%s on %s)", self.model_id, self.device)

    def _place(self, plan, *, leanest: bool = False) -> None:
        """Apply a planner `Plan`, or plan a profile name ("auto", "resident", …) first and apply that.
        The current plan is released first: every device tensor it held goes back to host RAM or its memory
        map and the allocator's cache is emptied, so the new plan starts from an empty device."""
        if self.pipe is None:
            raise EngineError("the engine is closed")
        self._drop_graphs()
        self._drop_bf16_copy()
        self.active_loras.clear()   # its pairs live on the device: the next job puts them back
        if self.plan is not None:
            self.plan.release()
            self.plan = None
            free_device_cache()
        if isinstance(plan, str):
            self._budgets = self._budgets or detect_budgets(self.settings, self.device)
            self._sizes = self._sizes or pipe_sizes(self.pipe)
            plan = make_plan(self.settings, self.device, self._sizes, self._budgets, plan, leanest=leanest)
        self.plan = apply_plan(self.pipe, plan, self.device, self.settings)
        self.profile = self.plan.profile
        if not self.plan.vae_tiling:
            self.pipe.vae.disable_tiling()
        self._use_bf16_copy()
        self._use_graphs()

    def _use_bf16_copy(self) -> None:
        """Keep a bf16 working copy of the DiT's fp8 Linears on the GPU (engine/bf16_copy.py) where `[engine] bf16_copy`
        is on, the Linears compute in bf16 without hooks (compiled blocks), every DiT block is resident and the room
        rule holds; the log says which."""
        blocked = self._bf16_copy_blocked()
        if blocked:
            log.debug("bf16 working copy: none (%s)", blocked)
            return
        linears = copyable_linears(self.pipe.transformer)
        if not linears:
            log.debug("bf16 working copy: none (no hook-free bf16 Linears: eager blocks run diffusers' casting hooks)")
            return
        figures = self._vram_room()
        if figures is None:
            log.debug("bf16 working copy: none (%s is not a GPU)", self.device)
            return
        room = copy_room(copy_bytes(linears), **figures)
        if not room.fits:
            log.info("bf16 working copy of the DiT: not kept (%s); each step upcasts the fp8 weights", room.why)
            return
        try:
            self.bf16_copy_bytes = add_copy(linears)
        except torch.OutOfMemoryError:    # the room rule was wrong: no copy (add_copy dropped what it made)
            free_device_cache()
            log.warning("bf16 working copy of the DiT: out of GPU memory while making it (%s); each step upcasts the "
                        "fp8 weights", room.why)
            return
        # Compiled blocks fuse the copy's matmuls otherwise than the per-step upcast's: its own recipe compute.
        self._set_compute(BF16_COPY)
        log.info("bf16 working copy of the DiT: %d Linears, %s on %s (no per-step upcast; recipe compute bf16.copy)",
                 len(linears), room.why, self.device)

    def _bf16_copy_blocked(self) -> str:
        """Why this engine keeps no bf16 working copy now ("" when it may)."""
        placement = self.plan.plan.placement if self.plan is not None and self.plan.plan is not None else None
        if not self.settings.bf16_copy:
            return "[engine] bf16_copy = false"
        if self._bf16_copy_refused:
            return self._bf16_copy_refused
        if self.recipe.compute != "bf16" or self.settings.fp8 == "off":
            return f"compute {self.recipe.compute}, fp8 storage {self.settings.fp8}"
        if placement is None or not all(t == GPU for t in placement.dit) or self.plan.profile == "model-offload":
            return "the DiT is not resident"
        return ""

    def _vram_room(self) -> dict[str, int] | None:
        """What `copy_room` weighs: the VRAM budget less its slack and the plan's predicted peak, and the device's
        free memory less the part of that peak not allocated yet (activations, decode); None off a CUDA device.
        (The CPU tests stand in for the GPU's memory here.)"""
        if not self.device.startswith("cuda"):
            return None
        device = torch.device(self.device)
        self._budgets = self._budgets or detect_budgets(self.settings, self.device)
        budget, peak = self._budgets.vram, self.plan.plan.peak_vram
        allocated = torch.cuda.memory_allocated(device)
        free, _total = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - allocated
        return dict(budget_room=budget - allocator_slack(budget) - peak, device_free=free - max(0, peak - allocated))

    def _drop_bf16_copy(self) -> None:
        freed = remove_copy(self.pipe.transformer) if self.pipe is not None else 0
        if freed:
            log.info("bf16 working copy of the DiT dropped (%.2f GiB)", freed / 2**30)
        if self.recipe.compute == BF16_COPY:
            self._set_compute("bf16")
        self.bf16_copy_bytes = 0

    def _set_compute(self, compute: str) -> None:
        """The recipe's compute after the Linears changed class for good (the bf16 working copy kept or dropped):
        the computes a job may switch to follow, and every shape compiles again (dynamo does not see a class swap by
        itself: forget_compiled_code)."""
        self.recipe = replace(self.recipe, compute=compute)
        others = tuple(c for c in self.recipe_computes if c != BF16_COPY)
        self.recipe_computes = ((BF16_COPY,) if compute == BF16_COPY else ()) + others
        self.compile_state = CompileState(enabled=self.recipe.compile)
        if self.recipe.compile:
            forget_compiled_code()

    def _use_graphs(self) -> None:
        """Replay the DiT's forward as CUDA graphs (engine/cuda_graphs.py) where `[engine] cuda_graphs` is on, the
        blocks are compiled on a GPU and the plan keeps every DiT block on it (no streamer hooks to replay)."""
        placement = self.plan.plan.placement if self.plan.plan is not None else None
        dit_on_gpu = placement is not None and all(t == GPU for t in placement.dit)
        if not (self.settings.cuda_graphs and self.recipe.compile and self.device.startswith("cuda") and dit_on_gpu
                and self.plan.profile != "model-offload"):
            return
        self.graphs = GraphedForward(self.pipe.transformer, room_for=self._room_for_graph).install()
        log.info("CUDA graphs: on (each new shape is recorded on its third denoising step)")

    def _drop_graphs(self) -> None:
        if self.graphs is not None:
            self.graphs.remove()
            self.graphs = None

    def _room_for_graph(self, working: int, kwargs: dict) -> bool:
        """Whether the device keeps room for a graph holding `working` bytes and, besides, for the VAE decode of
        one image of the call's size (what runs after the denoise) and the allocator's slack."""
        device = torch.device(self.device)
        free, _total = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        hidden = kwargs.get("hidden_states")
        pixels = int(hidden.shape[1]) * 16 * 16 if isinstance(hidden, torch.Tensor) else 1024 * 1024
        need = working + decode_working(pixels, bool(self.plan.vae_tiling)) + GRAPH_SLACK
        if free < need:
            log.info("CUDA graphs: %.2f GiB free, %.2f GiB needed (graph %.2f + decode + slack)", free / 2**30,
                     need / 2**30, working / 2**30)
        return free >= need

    # ------------------------------------------------------------------------------------ generating

    def generate(self, spec: JobSpec, *, progress: ProgressFn | None = None,
                 should_cancel: CancelFn | None = None) -> Result:
        """One job (count images). Seed None/-1 is replaced by a random one, returned in the Result."""
        return self.generate_batch([spec], progress=progress, should_cancel=should_cancel)[0]

    def generate_batch(self, specs: Sequence[JobSpec], *, progress: ProgressFn | None = None,
                       should_cancel: CancelFn | None = None) -> list[Result]:
        """Several jobs; those with equal `batch_key()` denoise together as one batch. Results keep the
        order of `specs`. A cancel stops the group that is running and every group after it."""
        specs = [s.resolve() for s in specs]
        for s in specs:
            check_spec(s)
        specs = [self._with_lora_files(s) for s in specs]
        # 1. Group by batch key, keeping first-seen order.
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(specs):
            groups.setdefault(s.batch_key(), []).append(i)
        # 2. Run each group; once cancelled, the rest are cancelled too.
        results: list[Result | None] = [None] * len(specs)
        cancelled = False
        with self._lock:
            if self.pipe is None:
                raise EngineError("the engine is closed")
            for indices in groups.values():
                group = [specs[i] for i in indices]
                if cancelled:
                    outs = [self._cancelled_result(s, 0) for s in group]
                else:
                    outs = self._run_group(group, progress, should_cancel)
                    cancelled = outs[0].cancelled
                for i, r in zip(indices, outs):
                    results[i] = r
        return results  # type: ignore[return-value]

    def _run_group(self, specs: list[JobSpec], progress: ProgressFn | None,
                   should_cancel: CancelFn | None) -> list[Result]:
        """Specs with one batch key → one denoising batch; errors become EngineError/EngineOutOfMemory."""
        try:
            return self._denoise_and_decode(specs, progress, should_cancel)
        except _Cancelled as c:
            log.info("cancelled after %d steps (%d job(s))", c.steps_done, len(specs))
            return [self._cancelled_result(s, c.steps_done) for s in specs]
        except torch.OutOfMemoryError as e:
            raise self._out_of_memory(specs, e) from None
        except EngineError:
            raise
        except Exception as e:  # an engine bug or a broken model: log it for the owner, short text for users
            log.exception("generation failed (%s, %d job(s))", self.model_id, len(specs))
            raise EngineError(f"image generation failed: {type(e).__name__}: {str(e)[:200]}") from e

    def _denoise_and_decode(self, specs: list[JobSpec], progress: ProgressFn | None,
                            should_cancel: CancelFn | None) -> list[Result]:
        pipe, first = self.pipe, specs[0]
        device = execution_device(pipe, self.plan)
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        # 1. The group's LoRA set (one per batch: batch_key), then the prompt embeddings (cached per prompt and
        #    text-encoder LoRA set), one row per image.
        timings["lora_switch"] = self._use_loras(first, device)
        embeds = [self._embeds(s.prompt) for s in specs]
        counts = [s.count for s in specs]
        prompt_embeds = torch.cat([e.prompt_embeds.expand(n, -1, -1) for e, n in zip(embeds, counts)])
        pooled = torch.cat([e.pooled_prompt_embeds.expand(n, -1) for e, n in zip(embeds, counts)])
        timings["encode"] = time.perf_counter() - t_start
        # 2. Initial noise, image by image from its own seed, float32 on the CPU; an image input is encoded and
        #    noised to where its part of the schedule starts (engine/img2img.py).
        sched = schedule(pipe, first.steps, first.denoise, first.width, first.height) if first.image else None
        latents = torch.cat([self._start_latents(s, sched, device) for s in specs])
        # 3. Denoise in diffusers' loop; the callback reports progress and polls cancellation.
        dtype = torch.bfloat16
        total = first.steps if sched is None else sched.steps
        sigmas = {} if sched is None or sched.sigmas is None else {"sigmas": sched.sigmas}
        if should_cancel is not None and should_cancel():
            raise _Cancelled(0)

        batch, variant = latents.shape[0], self._variant(first)
        if self.graphs is not None:   # the LoRA set's hooks and the recipe's forwards are part of a recorded graph
            self.graphs.set_variant(variant)
        self.compile_state.begin(batch, first.width, first.height, variant)

        def on_step_end(_pipe, step: int, _t, kwargs):
            if step == 0:   # the first step ran: this shape is compiled now
                self.compile_state.end(batch, first.width, first.height, variant, completed=True)
            if progress is not None:
                progress(step + 1, total)
            if should_cancel is not None and should_cancel():
                raise _Cancelled(step + 1)
            return kwargs

        t0 = time.perf_counter()
        try:   # with the group's stored recipe, as far as the engine can match it (engine/recipe_switch.py)
            with made_with(pipe, self.recipe, first.recipe, self.recipe_computes) as used:
                if total == 0:   # image strength 0: the input image, through the VAE
                    out_latents = latents.to(device, dtype)
                else:
                    out_latents = pipe(
                        prompt_embeds=prompt_embeds.to(device, dtype), pooled_prompt_embeds=pooled.to(device, dtype),
                        latents=latents.to(device, dtype), width=first.width, height=first.height,
                        num_inference_steps=total, guidance_scale=first.guidance, output_type="latent",
                        callback_on_step_end=on_step_end, max_sequence_length=self.settings.max_sequence_length,
                        **sigmas).images
        finally:
            self.compile_state.end(batch, first.width, first.height, variant, completed=False)
            self.compile_state.forget_after(variant, self.recipe.compute)
        self._sync(device)
        timings["denoise"] = time.perf_counter() - t0
        timings["s_per_step"] = timings["denoise"] / max(total, 1)
        # 4. Decode one image at a time (the decode is the memory peak of the lean profiles).
        t0 = time.perf_counter()
        images = [self._decode(out_latents[i:i + 1], first.width, first.height) for i in range(out_latents.shape[0])]
        self._sync(device)
        timings["decode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        timings["batch_images"] = float(len(images))
        # 5. Split the images back into one Result per spec.
        results, at = [], 0
        for s in specs:
            results.append(Result(spec=s, images=images[at:at + s.count], seeds=s.seeds, timings=dict(timings),
                                  precision=self.precision, profile=self.profile, model_id=self.model_id,
                                  steps_done=total, recipe=used.to_dict()))
            at += s.count
        log.info("generated %d image(s) %dx%d, %d steps: encode %.2fs, denoise %.2fs (%.3f s/step), decode %.2fs",
                 len(images), first.width, first.height, total, timings["encode"], timings["denoise"],
                 timings["s_per_step"], timings["decode"])
        return results

    def _embeds(self, prompt: str) -> PromptEmbeds:
        # A LoRA that changes CLIP changes the embeddings: they are cached per such set.
        variant = self.active_loras.key if "text_encoder" in self.active_loras.components() else ()

        def encode(text: str) -> PromptEmbeds:
            device = execution_device(self.pipe, self.plan)
            with torch.inference_mode():
                pe, pooled, _ = self.pipe.encode_prompt(prompt=text, prompt_2=None, device=device,
                                                        max_sequence_length=self.settings.max_sequence_length)
            return PromptEmbeds(prompt_embeds=pe.to("cpu", torch.bfloat16),
                                pooled_prompt_embeds=pooled.to("cpu", torch.bfloat16))

        return self.prompt_cache.get_or_encode(prompt, self.settings.max_sequence_length, encode, variant=variant)

    # ------------------------------------------------------------------------------------ LoRAs and image input

    def _with_lora_files(self, spec: JobSpec) -> JobSpec:
        """The spec with each LoRA's file hashes filled in; EngineError when a file is missing, or is not the
        one the job was made with (its SHA-256 differs)."""
        if not spec.loras:
            return spec
        uses = []
        for use in spec.loras:
            try:
                file = self.lora_library.at(use.path) if use.path else self.lora_library.find(use.name)
                hashes = self.lora_library.hashes(file)
            except limits.LimitError as e:
                raise EngineError(str(e)) from None
            if use.sha256 and use.sha256 != hashes.sha256:
                raise EngineError(f"The LoRA '{use.name}' has changed since this job was made (its file is not the "
                                  f"same any more): the same image cannot be made again.")
            uses.append(replace(use, sha256=hashes.sha256, short_hash=hashes.short, path=str(file.path)
                                if use.path else None))
        return replace(spec, loras=tuple(uses))

    def _use_loras(self, spec: JobSpec, device: torch.device) -> float:
        """Make the spec's LoRA set the active one (seconds the switch took; 0 when it already was)."""
        key = spec.lora_key()
        if key == self.active_loras.key:
            return 0.0
        t0 = time.perf_counter()
        loaded = []
        for use in spec.loras:
            if use.strength == 0:
                continue
            try:
                loaded.append((self._lora_files.get(file_ident(use), lambda: self._load_lora(use)), use.strength))
            except limits.LimitError as e:
                raise EngineError(str(e)) from None
        # Keep this set's converted files, and recent sets' within [engine] lora_cache_mib (engine/lora_cache.py).
        self._lora_files.keep(file_ident(u) for u in spec.loras)
        # Within the room every placement plan keeps for LoRAs (admission checked the same on the headers).
        try:
            check_reserve([(w.name, w.nbytes) for w, _ in loaded], self._widths,
                          self.settings.lora_reserve_rank)
        except limits.LimitError as e:
            raise EngineError(str(e)) from None
        self.active_loras.apply(key, loaded, device)   # the CUDA graphs' variant follows (_denoise_and_decode)
        return time.perf_counter() - t0

    def _load_lora(self, use) -> LoraWeights:
        file = self.lora_library.at(use.path) if use.path else self.lora_library.find(use.name)
        return load_lora(file.path, self.pipe, name=use.name, widths=self._widths)

    def _start_latents(self, spec: JobSpec, sched: Schedule | None, device: torch.device) -> torch.Tensor:
        """The starting latents of a spec's images: their seeds' noise, or that noise mixed with the image."""
        noise = self._latents(spec)
        if sched is None or sched.start_sigma >= 1.0:
            return noise
        try:
            image = encode_image(self.pipe, spec.image, spec.image_sha256, spec.width, spec.height, device)
        except limits.LimitError as e:
            raise EngineError(str(e)) from None
        return noised(image.expand(noise.shape[0], -1, -1), noise, sched.start_sigma)

    @staticmethod
    def _latents(spec: JobSpec) -> torch.Tensor:
        rows = []
        for i, seed in enumerate(spec.seeds):
            var_seed = None if spec.variation_seed is None else spec.variation_seed + i
            rows.append(initial_latents(seed, spec.width, spec.height, variation_seed=var_seed,
                                        variation_strength=spec.variation_strength))
        return torch.cat(rows)

    def _decode(self, packed: torch.Tensor, width: int, height: int):
        pipe = self.pipe
        with torch.inference_mode():
            latents = pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor)
            latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
            vae_device = next(pipe.vae.parameters()).device
            if vae_device.type == "meta" or vae_device.type != packed.device.type:
                vae_device = packed.device  # offloaded VAE: its hooks move weights to where the input is
            pixels = pipe.vae.decode(latents.to(vae_device, pipe.vae.dtype), return_dict=False)[0]
            return pipe.image_processor.postprocess(pixels, output_type="pil")[0]

    @staticmethod
    def _sync(device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def _cancelled_result(self, spec: JobSpec, steps_done: int) -> Result:
        return Result(spec=spec, images=[], seeds=spec.seeds, precision=self.precision, profile=self.profile,
                      model_id=self.model_id, cancelled=True, steps_done=steps_done, recipe=self.recipe.to_dict())

    def _out_of_memory(self, specs: list[JobSpec], err: BaseException) -> EngineOutOfMemory:
        # 1. Give the memory back before anyone retries: the failed call's frames hold its activations (the
        #    error raised from here keeps this one as its context), then the allocator's cache.
        traceback.clear_frames(err.__traceback__)
        free_device_cache()
        # 2. With a bf16 working copy, the copy goes: the retry (the worker's set_profile) re-places the same profile
        #    without it, and this engine keeps none again.
        first = specs[0]
        what = f"{len(specs)} job(s) of {first.width}x{first.height}"
        if self.bf16_copy_bytes:
            self._bf16_copy_refused = f"out of GPU memory with it ({what})"
            self._out_of_memory_at = ""
            self._drop_graphs()          # they replay the copy's tensors
            self._drop_bf16_copy()
            free_device_cache()
            msg = (f"out of GPU memory on {self.device} with the DiT's bf16 working copy ({what}); it is dropped and "
                   f"the job retried on profile {self.profile} without it ([engine] bf16_copy)")
            log.warning("%s (%s)", msg, str(err).splitlines()[0] if str(err) else "OOM")
            return EngineOutOfMemory(msg, profile=self.profile, suggested_profile=self.profile)
        # 3. Say what to try; the retry's set_profile (the worker's) then plans the leanest of it.
        try:
            suggested = leaner(self.profile, self.plan.plan.placement if self.plan and self.plan.plan else None)
        except ValueError:
            suggested = None
        self._out_of_memory_at = self.profile if suggested else ""
        if suggested:
            msg = (f"out of GPU memory on {self.device} with profile {self.profile} ({what}); try [engine] profile "
                   f"= \"{suggested}\" or a smaller size")
        else:
            msg = (f"out of GPU memory on {self.device} even with profile {self.profile} ({what}); try a smaller "
                   f"size, [engine] stream_prefetch = 1 (a smaller ring), [engine] vae_tiling = \"always\", or "
                   f"close other programs using the GPU")
        log.warning("%s (%s)", msg, str(err).splitlines()[0] if str(err) else "OOM")
        return EngineOutOfMemory(msg, profile=self.profile, suggested_profile=suggested)
