"""What one finished job costs the bot's own host, whatever runs the engine (docs/scale-out.md, "8 hosts × 8 GPUs").

Two measurements of the bot's per-job work that do not depend on where the engine runs, on this machine's CPU:
1. PNG: `engine.png.save_png` (what `bot.result_files.write_pngs` does for each image) of a 1024×1024 image, one
   image at a time, then `--threads` of them at once (the jobs service runs it with `asyncio.to_thread`: Pillow's zlib
   work releases the interpreter lock, so images of several jobs are encoded on several cores). Two images: a smooth
   "photo" (gradients and mild noise, as FLUX makes) and pure noise (the worst case for zlib). And whether Pillow
   compresses without the interpreter lock (then the thread pool spreads PNGs over the host's cores, beside the event
   loop): a pure-Python thread counts while another makes one `encode()` call holding the whole image; a call that
   held the lock would let it count nothing.
2. Database: the write transactions of one delivered /imagine job through `db.jobs` (create_job, set_status_message,
   mark_running, finish_job, set_message, mark_delivered) on SQLite in WAL mode as the bot opens it
   (`db.session.open_store`) on one event loop, one job after the other and 8 jobs interleaved: jobs/s,
   transactions/s and the process's CPU time per job.

    python -m bench.driver_costs [--jobs 300] [--images 12] [--threads 2] [--json out.json]

Prints one JSON line per measurement. No Discord, no engine, no GPU.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from db import jobs as store_jobs
from db.records import ImageFile, JobOutput, NewJob
from db.session import open_store
from engine.png import save_png

SIDE = 1024
PARAMS = {"prompt": "a lighthouse on a cliff at dusk, volumetric light, 35mm photo", "seed": 1234, "steps": 20,
          "width": SIDE, "height": SIDE, "guidance": 3.5, "model": "flux1-dev@0123456789ab", "job_id": 1}


def photo(seed: int) -> Image.Image:
    """Smooth gradients with mild noise: compresses as a generated picture does (not as noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
    base = np.stack([np.sin(3 * x + seed) * 0.5 + 0.5, y, np.cos(2 * (x + y)) * 0.5 + 0.5], axis=-1) * 200
    return Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))


def noise(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))


def png_costs(kind: str, make, images: int, threads: int, folder: Path) -> dict:
    """Seconds per image, one at a time, and images/s with `threads` at once."""
    pictures = [make(i) for i in range(images)]
    save_png(pictures[0], folder / "warm.png", PARAMS)  # imports and first-call costs out of the timing
    # 1. One at a time.
    start = time.perf_counter()
    for i, picture in enumerate(pictures):
        save_png(picture, folder / f"{kind}-{i}.png", PARAMS)
    serial_s = (time.perf_counter() - start) / images
    sizes = [os.path.getsize(folder / f"{kind}-{i}.png") for i in range(images)]
    # 2. `threads` at once (as several jobs finishing together are, through asyncio.to_thread).
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda ip: save_png(ip[1], folder / f"{kind}-t{ip[0]}.png", PARAMS), enumerate(pictures)))
    parallel = images / (time.perf_counter() - start)
    return {"measure": "png", "image": kind, "side": SIDE, "images": images, "s_per_image": round(serial_s, 3),
            "png_mb": round(sum(sizes) / len(sizes) / 1e6, 2), "threads": threads,
            "images_per_s_threads": round(parallel, 2), "images_per_s_one": round(1 / serial_s, 2)}


def png_lock() -> dict:
    """Ticks of a pure-Python thread during one C call that compresses a whole 1024² image (PNG's zip encoder)."""
    import threading

    picture = photo(0)
    picture.load()
    encoder = Image._getencoder("RGB", "zip", ("RGB", 0, 6, -1, b""))  # what PngImagePlugin asks for, level 6
    encoder.setimage(picture.im, (0, 0) + picture.size)
    ticks: list[float] = []
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())

    spinner = threading.Thread(target=spin)
    spinner.start()
    time.sleep(0.1)
    start = time.perf_counter()
    finished = encoder.encode(16 * 1024 * 1024)[1]  # one call: the whole image into one buffer
    end = time.perf_counter()
    stop.set()
    spinner.join()
    encoder.cleanup()
    inside = [t for t in ticks if start < t < end]
    return {"measure": "png_lock", "one_call_ms": round((end - start) * 1000), "finished": finished == 1,
            "other_thread_ticks_during_call": len(inside), "lock_released": len(inside) > 0}


WRITES_PER_JOB = 6  # the db.jobs calls of one_job below


async def one_job(store, i: int) -> None:
    """The write transactions of one delivered /imagine job, in the order the bot makes them."""
    job = await store_jobs.create_job(store, NewJob(user_id=1000 + i % 20, prompt=PARAMS["prompt"], seed=i, steps=20,
                                                    width=SIDE, height=SIDE, guidance=3.5, guild_id=1, channel_id=2))
    await store_jobs.set_status_message(store, job.id, 10_000 + i)
    await store_jobs.mark_running(store, job.id)
    await store_jobs.finish_job(store, job.id, JobOutput(
        seeds=[i], images=[ImageFile(path=f"/srv/images/x-{job.id}.png", sha256="0" * 64)],
        timings={"total_s": 2.35}, precision="fp8", profile="resident"))
    await store_jobs.set_message(store, job.id, 2, 20_000 + i)
    await store_jobs.mark_delivered(store, job.id)


async def db_costs(jobs: int, concurrent_jobs: int, folder: Path) -> dict:
    """`jobs` delivered jobs' writes, `concurrent_jobs` of them interleaved on the loop (as jobs finishing on many
    workers are): wall time, and the process's CPU time (the loop's ORM work and aiosqlite's threads)."""
    store = await open_store(f"sqlite+aiosqlite:///{folder / f'fluxbot-{concurrent_jobs}.db'}")
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for first in range(0, jobs, concurrent_jobs):
            await asyncio.gather(*(one_job(store, i) for i in range(first, min(jobs, first + concurrent_jobs))))
        took, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        await store.close()
    return {"measure": "database", "url": "sqlite+aiosqlite (WAL, synchronous=NORMAL)", "jobs": jobs,
            "concurrent_jobs": concurrent_jobs, "writes_per_job": WRITES_PER_JOB,
            "ms_per_job": round(took / jobs * 1000, 2), "cpu_ms_per_job": round(cpu / jobs * 1000, 2),
            "jobs_per_s": round(jobs / took, 1), "transactions_per_s": round(jobs * WRITES_PER_JOB / took, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs written to the database (default 300)")
    parser.add_argument("--images", type=int, default=12, help="1024² PNGs per kind (default 12)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="PNGs encoded at once")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fluxbot-driver-costs-") as tmp:
        folder = Path(tmp)
        for kind, make in (("photo", photo), ("noise", noise)):
            rows.append(png_costs(kind, make, args.images, args.threads, folder))
            print(json.dumps(rows[-1]), flush=True)
        rows.append(png_lock())
        print(json.dumps(rows[-1]), flush=True)
        for concurrent_jobs in (1, 8):
            rows.append(asyncio.run(db_costs(args.jobs, concurrent_jobs, folder)))
            print(json.dumps(rows[-1]), flush=True)
    rows.append({"measure": "machine", "cpus": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()],
                 "python": sys.version.split()[0]})
    print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
