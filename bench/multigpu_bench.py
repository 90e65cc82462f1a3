"""Multi-GPU throughput: the bot's own FIFO (engine/queue.py) and workers (engine/worker.py), one worker per
GPU, each with its own Engine on the FLUX.1-dev architecture with random weights.

    python bench/multigpu_bench.py --jobs 16 --res 1024 --steps 20 --out multigpu.json   # every CUDA GPU
    python bench/multigpu_bench.py --tiny --devices cpu,cpu --jobs 6 --res 256 --steps 2  # CPU, seconds
    python bench/multigpu_bench.py --threads …   # engines in this process, one thread each (the old way)
    python bench/multigpu_bench.py --backend ray --jobs 16 --res 1024 --steps 20   # Ray actors vs child processes
    python bench/multigpu_bench.py --backend ray --tiny --devices cpu,cpu --jobs 6 --res 256 --steps 2  # CPU

Each worker's engine runs in its own child process (engine/engine_process.py, as the bot does with
`[engine] engine_process` "auto" and two GPUs or more); `--threads` keeps every engine in this process, one
thread per worker (the old way, for comparison).

`--backend ray` (`pip install -e '.[ray]'`) starts a local Ray instance (with `--devices cpu,…` it advertises one
logical GPU per device and the engines run on the CPU) and one engine actor per GPU (engine/ray_engine.py, as
`[engine] backend = "ray"` does). Its rows, in one run: the child processes with one worker per device (the local
mode to compare with), then Ray with one actor, then one actor per device; then each backend's per-job overhead:
the wall time of `generate` seen by the worker minus the engine's own `timings["total"]` (crossing to the engine and
back, progress messages, the result's images), the round trip of an empty request, and that of a request whose
reply is one 1024x1024 image (what a FLUX image costs to cross back).

The engines run the engine's defaults (`Engine.from_pipeline`: compute auto — fp8 with the row-fast-tq kernel on
an sm_89+ GPU —, compiled blocks, CUDA graphs on the resident plan). Each engine first makes one warm-up job of
WARM_UP_STEPS steps at the timed size (the blocks compile on its first step, the CUDA graph is recorded on its
third), so the timed rows pay for neither; each row names the recipes its jobs ran with (`recipes`) and what warmed
up while it was timed (`warmed_while_timed`: compiled shapes, graphs recorded; replays), which should be none.

Runs the same job list twice, first with one worker (the first device), then with one worker per device,
and prints one table: images per minute, speed-up, each worker's job count and peak VRAM, and whether every
job started and finished exactly once. Saving PNGs is the jobs service's work, not the workers', and is
left out here (it costs the same with one or two workers and runs off the GPU).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import json
import logging
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.engine_bench import FLUX_DEV, TINY, build_pipeline  # noqa: E402
from engine.engine_process import ProcessEngine  # noqa: E402
from engine.job_status import JobStatus  # noqa: E402
from engine.pipeline import Engine  # noqa: E402
from engine.queue import JobQueue  # noqa: E402
from engine.recipe import EngineRecipe  # noqa: E402
from engine.settings import EngineSettings  # noqa: E402
from engine.spec import JobSpec  # noqa: E402
from engine.worker import Worker  # noqa: E402

log = logging.getLogger(__name__)
GiB = 1024 ** 3
# Steps of each engine's warm-up job: its first step compiles the DiT's blocks (engine/compile.py) and its third
# records the CUDA graph (engine/cuda_graphs.py records a shape on its third call), so the timed rows pay for neither.
WARM_UP_STEPS = 3


class Recorder:
    """WorkerHooks that count every start and outcome per job and note which worker ran it."""

    def __init__(self, total: int):
        self.started: collections.Counter = collections.Counter()
        self.finished: collections.Counter = collections.Counter()
        self.failed: dict[int, str] = {}
        self.recipes: set[str] = set()     # the engine recipes the jobs ran with (Result.recipe), in words
        self.total = total
        self.all_done = asyncio.Event()

    async def on_started(self, job_id: int) -> None:
        self.started[job_id] += 1

    def on_progress(self, job_id: int, step: int, total: int) -> None:
        pass

    async def on_finished(self, job_id: int, result) -> None:
        self.finished[job_id] += 1
        recipe = EngineRecipe.from_dict(result.recipe)
        self.recipes.add(recipe.text() if recipe is not None else "none recorded")
        self._check()

    async def on_failed(self, job_id: int, message: str) -> None:
        self.failed[job_id] = message
        self._check()

    async def on_cancelled(self, job_id: int) -> None:
        self._check()

    def _check(self) -> None:
        if sum(self.finished.values()) + len(self.failed) >= self.total:
            self.all_done.set()


def load_engine(device: str, tiny: bool) -> Engine:
    """An Engine around a random-weights pipeline, placed resident with fp8 all-linear and the engine's default
    compute and compile (`Engine.from_pipeline`, what `Engine.load` does after loading: fp8 matmuls and compiled
    blocks on an sm_89+ GPU; bf16 eager on the CPU), as the bot runs it. Compiled kernels go to
    TORCHINDUCTOR_CACHE_DIR (`main` sets one for the run, shared by every engine, as the bot's models_dir cache is)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None:   # a Ray actor's GPU is plain "cuda" (CUDA_VISIBLE_DEVICES)
        torch.cuda.set_device(dev)
    pipe = build_pipeline(TINY if tiny else FLUX_DEV, dev)
    pipe.set_progress_bar_config(disable=True)
    settings = EngineSettings(model="random-weights", profile="resident", devices=[device], vae_tiling="never")
    return Engine.from_pipeline(settings, device, pipe, "flux-dev-arch@random")


def load_engine_for(settings: EngineSettings, device: str) -> Engine:
    """`load_engine` as a loader(settings, device) for a child process; settings.model names the size."""
    return load_engine(device, tiny=settings.model == "random-weights:tiny")


def reset_peak(engine) -> None:
    """Wait for the device and forget its peak memory (run in the engine's own process)."""
    if hasattr(engine, "call"):  # a child process or a Ray actor
        return engine.call("bench.multigpu_bench:reset_peak")
    if engine.device.startswith("cuda"):
        torch.cuda.synchronize(engine.device)
        torch.cuda.reset_peak_memory_stats(engine.device)


def peak_gib(engine) -> float | None:
    """Peak allocated GiB on the engine's device since the last reset (run in the engine's own process)."""
    if hasattr(engine, "call"):
        return engine.call("bench.multigpu_bench:peak_gib")
    if not engine.device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated(engine.device) / GiB, 2)


def warm_state(engine) -> dict:
    """What the engine has warmed up so far (run in the engine's own process): the shapes its compiled blocks ran,
    the CUDA graphs recorded, and the graph replays."""
    if hasattr(engine, "call"):
        return engine.call("bench.multigpu_bench:warm_state")
    stats = engine.graphs.stats if engine.graphs is not None else None
    return dict(compiled_shapes=len(engine.compile_state.warm), graphs_recorded=stats.recorded if stats else 0,
                graph_replays=stats.replays if stats else 0)


def warm_up(engine, res: int) -> None:
    """One short job per engine at the timed jobs' shape (compile, CUDA graph, kernel selection, allocator growth)
    so that no timed row pays for them."""
    engine.generate(JobSpec(prompt="warm up", seed=0, steps=WARM_UP_STEPS, width=res, height=res))
    reset_peak(engine)


async def run_queue(engines: list, specs: list[JobSpec]) -> dict:
    """Submit every spec to one FIFO served by one worker per engine; wait until all are done."""
    queue = JobQueue(workers=len(engines))
    hooks = Recorder(len(specs))
    workers = [Worker(f"{e.device}#{i}", e, queue, hooks) for i, e in enumerate(engines)]
    ran_by: collections.Counter = collections.Counter()
    for w in workers:  # count which worker took which job through the queue's own events
        w.start()

    def on_event(event) -> None:
        if event.status == JobStatus.RUNNING:
            ran_by[event.worker] += 1

    queue.subscribe(on_event)
    before = [warm_state(e) for e in engines]
    t0 = time.perf_counter()
    for job_id, spec in enumerate(specs, start=1):
        queue.submit(job_id, spec)
    await hooks.all_done.wait()
    wall = time.perf_counter() - t0
    for w in workers:
        await w.stop(close_engine=False)
    queue.close()
    once = all(hooks.started[j] == 1 and hooks.finished[j] == 1 for j in range(1, len(specs) + 1))
    peaks = {f"{e.device}#{i}": peak_gib(e) for i, e in enumerate(engines)}
    # What warmed up while timed (a compile or a graph recording here would be in images_per_min: none should).
    after = [warm_state(e) for e in engines]
    during = {name: {k: now[k] - was[k] for k in now} for name, was, now in zip(peaks, before, after)}
    mode = engine_kind(engines[0])
    return dict(workers=len(engines), engine=mode, jobs=len(specs), wall_s=round(wall, 2),
                images_per_min=round(60 * len(specs) / wall, 2), every_job_once=once, failed=len(hooks.failed),
                jobs_per_worker=dict(ran_by), peak_alloc_gib=peaks, recipes=sorted(hooks.recipes),
                warmed_while_timed=during)


def engine_kind(engine) -> str:
    if isinstance(engine, ProcessEngine):
        return "process"
    return "ray" if hasattr(engine, "actor") else "thread"


def noop(engine) -> None:
    """An empty request (run in the engine's own process): the round trip of a call."""


def image_1024(engine):
    """A 1024x1024 RGB image made in the engine's process: what one FLUX image costs to cross back."""
    from PIL import Image

    return Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3))


def overhead(engine, res: int, steps: int, jobs: int = 5) -> dict:
    """Per job: the wall time of `generate` here minus the engine's own total (the crossing to the engine and back:
    request, one progress message per step, the result's images) and the engine's own phases (`engine_ms`:
    encode, denoise, decode, total; medians); the round trip of an empty request and of a 1024x1024 image."""
    extra, inside = [], collections.defaultdict(list)
    for i in range(jobs):
        t0 = time.perf_counter()
        result = engine.generate(JobSpec(prompt=f"overhead {i}", seed=i, steps=steps, width=res, height=res))
        extra.append(time.perf_counter() - t0 - result.timings["total"])
        for phase in ("encode", "denoise", "decode", "total"):
            if phase in result.timings:
                inside[phase].append(result.timings[phase])
    trips, images = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        engine.call("bench.multigpu_bench:noop")
        trips.append(time.perf_counter() - t0)
    for _ in range(5):
        t0 = time.perf_counter()
        engine.call("bench.multigpu_bench:image_1024")
        images.append(time.perf_counter() - t0)
    return dict(engine=engine_kind(engine), res=res, steps=steps, per_job_overhead_ms=median_ms(extra),
                round_trip_ms=median_ms(trips, 2), image_1024_back_ms=median_ms(images),
                engine_ms={phase: median_ms(v) for phase, v in inside.items()})


def median_ms(seconds: list[float], digits: int = 1) -> float:
    return round(1000 * sorted(seconds)[len(seconds) // 2], digits)


def start_ray_engines(devices: list[str], settings: EngineSettings) -> list:
    """A local Ray instance (one logical GPU per device when they are CPUs) and one engine actor per device."""
    import ray  # lazy: only --backend ray needs it

    from engine.ray_engine import RayEngine
    from engine.ray_pool import read_nodes

    cpu = not any(d.startswith("cuda") for d in devices)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ray.init(address="local", num_gpus=len(devices) if cpu else None, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}})
    node = next(n for n in read_nodes() if n.alive)
    t0 = time.perf_counter()

    def start(i: int):
        engine = RayEngine.start(settings, node.node_id, {"GPU": 1}, name=f"ray#{i}",
                                 loader="bench.multigpu_bench:load_engine_for")
        print(f"Ray actor {i} (pid {engine.pid}, {engine.device}) ready in {time.perf_counter() - t0:.1f} s",
              flush=True)
        return engine

    return on_each(start, range(len(devices)))


def on_each(fn, items) -> list:
    """fn(item) for every item at once, one thread each (engines load and warm up side by side); the results in
    order. Only the set-up is run this way: the timed rows go through the FIFO."""
    items = list(items)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="", help="comma-separated; default: every CUDA GPU")
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="the tiny architecture (CPU, seconds)")
    ap.add_argument("--threads", action="store_true", help="engines in this process, one thread per worker "
                    "(the old way); default: one child process per engine")
    ap.add_argument("--backend", choices=("local", "ray"), default="local",
                    help="ray: Ray actors, compared in the same run with the local child processes")
    ap.add_argument("--out", default="", help="write the rows as JSON here")
    a = ap.parse_args(argv)
    # One inductor cache for every engine of the run (children and Ray workers inherit it), as the bot's is.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="fluxbot-multigpu-inductor-"))
    if a.backend == "ray":
        return main_ray(a)
    logging.basicConfig(level=logging.WARNING)
    devices = a.devices.split(",") if a.devices else [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if len(devices) < 2:
        raise SystemExit(f"needs two devices or more, found {devices}")
    # 1. One engine per device (built one after another, as the bot does), each warmed up.
    settings = EngineSettings(model="random-weights:tiny" if a.tiny else "random-weights:flux-dev",
                              devices=devices, engine_process="never" if a.threads else "always")
    engines = []
    for d in devices:
        t0 = time.perf_counter()
        if a.threads:
            engines.append(load_engine(d, a.tiny))
        else:
            engines.append(ProcessEngine.start(settings, d, loader="bench.multigpu_bench:load_engine_for"))
        warm_up(engines[-1], a.res)
        print(f"engine on {d} ({'thread' if a.threads else f'process {engines[-1].pid}'}) ready in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    specs = [JobSpec(prompt=f"job {i}: a lighthouse in a storm, photo", seed=1000 + i, steps=a.steps,
                     width=a.res, height=a.res) for i in range(a.jobs)]
    # 2. The same jobs with one worker, then with one worker per device.
    rows = []
    for engines_used in (engines[:1], engines):
        for e in engines_used:
            reset_peak(e)
        row = asyncio.run(run_queue(engines_used, specs))
        print(json.dumps(row), flush=True)
        rows.append(row)
    rows[1]["speedup"] = round(rows[1]["images_per_min"] / rows[0]["images_per_min"], 2)
    # 3. The table.
    for e in engines:
        e.close()
    print(f"\n{'workers':>7} {'engine':>7} {'jobs':>5} {'wall s':>8} {'img/min':>8} {'speed-up':>8} {'once':>5}  per worker / peak GiB")
    for r in rows:
        print(f"{r['workers']:>7} {r['engine']:>7} {r['jobs']:>5} {r['wall_s']:>8} {r['images_per_min']:>8} "
              f"{r.get('speedup', 1.0):>8} {str(r['every_job_once']):>5}  {r['jobs_per_worker']} {r['peak_alloc_gib']}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


def main_ray(a: argparse.Namespace) -> list[dict]:
    """Child processes with one worker per device, then Ray with one actor and with one per device; overheads."""
    devices = a.devices.split(",") if a.devices else [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if len(devices) < 2:
        raise SystemExit(f"needs two devices or more, found {devices}")
    settings = EngineSettings(model="random-weights:tiny" if a.tiny else "random-weights:flux-dev",
                              devices=devices, engine_process="always")
    specs = [JobSpec(prompt=f"job {i}: a lighthouse in a storm, photo", seed=1000 + i, steps=a.steps,
                     width=a.res, height=a.res) for i in range(a.jobs)]
    rows, overheads = [], []
    # 1. The local mode: one child process per device, loaded and warmed up side by side (then closed: the GPUs
    #    are the actors' next).
    local = on_each(lambda d: ProcessEngine.start(settings, d, loader="bench.multigpu_bench:load_engine_for"),
                    devices)
    on_each(lambda e: warm_up(e, a.res), local)
    rows.append(asyncio.run(run_queue(local, specs)))
    print(json.dumps(rows[-1]), flush=True)
    overheads.append(overhead(local[0], a.res, a.steps))
    for e in local:
        e.close()
    # 2. Ray: one actor, then one per device, on the same jobs.
    actors = start_ray_engines(devices, settings)
    on_each(lambda e: warm_up(e, a.res), actors)
    for used in (actors[:1], actors):
        for e in used:
            reset_peak(e)
        rows.append(asyncio.run(run_queue(used, specs)))
        print(json.dumps(rows[-1]), flush=True)
    overheads.append(overhead(actors[0], a.res, a.steps))
    for e in actors:
        e.close()
    # 3. The ratios the issue asks for, the table, the overheads.
    rows[2]["speedup"] = round(rows[2]["images_per_min"] / rows[1]["images_per_min"], 3)
    rows[2]["vs_local_processes"] = round(rows[2]["images_per_min"] / rows[0]["images_per_min"], 3)
    print(f"\n{'workers':>7} {'engine':>7} {'jobs':>5} {'wall s':>8} {'img/min':>8} {'speed-up':>8} {'vs local':>8} "
          f"{'once':>5}  per worker / peak GiB")
    for r in rows:
        print(f"{r['workers']:>7} {r['engine']:>7} {r['jobs']:>5} {r['wall_s']:>8} {r['images_per_min']:>8} "
              f"{r.get('speedup', ''):>8} {r.get('vs_local_processes', ''):>8} {str(r['every_job_once']):>5}  "
              f"{r['jobs_per_worker']} {r['peak_alloc_gib']}")
    for o in overheads:
        print(json.dumps(o), flush=True)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"rows": rows, "overheads": overheads}, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
