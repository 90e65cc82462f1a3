"""Reliability load bench: the real FluxBot (tiny-random engine, SQLite) driven through the fake Discord.

20 users send 100 /imagine at an average 10 commands/s in all and press 🎲 Reroll on 20 results while other
jobs still run. The bot runs on this process's main event loop with its engine in the worker's thread, as in
production (`freeze_gc=True`, as `python -m bot run` starts it); the fake Discord and the simulated users run
in their own thread and loop, so that the bot's loop does only the bot's work. The bench checks and prints:

- every job delivered exactly once (one result message per job id, none missing, none twice);
- per-user order kept (a user's results arrive in the order their requests reached the bot; two requests
  of one user less than 50 ms apart are counted on their own row, not as a violation);
- time from the interaction to the bot's first response (p50/p99/max), slash commands and button presses;
- event-loop lag (p50/p99/max) sampled every 5 ms while jobs run, and full garbage-collection pauses;
- REST requests the bot made (status edits among them) and the busiest second;
- DB rows = jobs, all `done`.

    python -m bench.load                 # 100 /imagine, 20 users, 20 rerolls, 10 commands/s
    python -m bench.load --rate 0        # the same 100 commands all at once
    python -m bench.load --no-gc-freeze  # FluxBot as tests start it, without gc.freeze()
    python -m bench.load --quick         # 10 jobs from 4 users + 2 rerolls (seconds)
    python -m bench.load --rate 0 --jobs 60 --clicks 0 --steps 50 --edit-interval 0.05
                                         # queue movements slower than the edit interval, as with FLUX jobs
    python -m bench.load --json out.json --strict   # exit 1 when a latency target is missed too

Exit status 1 when a correctness check fails (or, with --strict, a latency target is missed).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/load.py` puts bench/ first, not the repo root
    sys.path.insert(0, str(ROOT))

log = logging.getLogger(__name__)

FIRST_RESPONSE_P99_TARGET_MS = 300.0
LOOP_LAG_P99_TARGET_MS = 50.0
LAG_INTERVAL_S = 0.005
JOB_ID = re.compile(r"^fluxbot:reroll:(?:[0-9a-f]{8}:)?(\d+)$")  # with the database's identity (bot/views.py)
NEAR_SIMULTANEOUS_S = 0.05  # two requests of one user closer than this have no order a person could mean


@dataclass(frozen=True)
class LoadPlan:
    jobs: int = 100            # /imagine commands
    users: int = 20
    clicks: int = 20           # 🎲 Reroll presses on results while other jobs run
    size: str = "256x256"
    steps: int = 2
    rate: float = 10.0         # /imagine per second, all users together (random gaps around users/rate)
    seed: int = 1234           # the driver's random choices (gaps, prompts, who clicks)
    gc_freeze: bool = True     # build_bot(freeze_gc=True), as `python -m bot run` starts it
    edit_interval_s: float | None = None  # [discord] status_edit_interval_s; None: the config's default (2 s)
    timeout_s: float = 600.0

    @classmethod
    def quick(cls) -> "LoadPlan":
        return cls(jobs=10, users=4, clicks=2, timeout_s=120.0)

    def describe(self) -> str:
        return (f"{self.jobs} /imagine from {self.users} users at {self.rate:g}/s"
                f"{' (all at once)' if self.rate <= 0 else ''}, {self.clicks} rerolls, {self.size}, {self.steps} steps, "
                f"gc.freeze {'on' if self.gc_freeze else 'off'}"
                f"{'' if self.edit_interval_s is None else f', status edits every {self.edit_interval_s:g} s'}")


@dataclass
class Sent:
    """One interaction the driver sent and what became of it."""
    user: str
    kind: str                        # "imagine" or "reroll"
    order: int                       # the user's n-th request
    ix: object = field(repr=False)   # FakeInteraction
    job_id: int | None = None
    result_message_id: int | None = None


@dataclass
class LoadReport:
    plan: LoadPlan
    jobs_sent: int
    jobs_in_db: int
    jobs_done_in_db: int
    results_delivered: int
    delivered_twice: list[int]
    missing: list[int]
    order_violations: list[str]        # a user's requests ≥ NEAR_SIMULTANEOUS_S apart, delivered out of order
    first_response_ms: dict[str, float]
    click_first_response_ms: dict[str, float]
    loop_lag_ms: dict[str, float]
    lag_samples: int
    wall_s: float
    jobs_per_s: float
    refused: int
    late_responses: int
    near_simultaneous_reordered: list[str] = field(default_factory=list)  # < NEAR_SIMULTANEOUS_S apart
    requests: int = 0                  # REST requests the bot made during the run
    status_edits: int = 0              # PATCH of interaction originals (status messages)
    peak_requests_per_s: int = 0       # busiest second (Discord's global limit: 50 req/s per bot)
    gc_gen2: dict[str, float] = field(default_factory=dict)  # full collections during the run: n, max_ms, total_ms

    @property
    def correct(self) -> bool:
        return (not self.delivered_twice and not self.missing and not self.order_violations
                and self.jobs_in_db == self.jobs_sent == self.jobs_done_in_db == self.results_delivered
                and self.refused == 0 and self.late_responses == 0)

    @property
    def targets_met(self) -> bool:
        worst = max(self.first_response_ms["p99"], self.click_first_response_ms.get("p99", 0.0))
        return worst <= FIRST_RESPONSE_P99_TARGET_MS and self.loop_lag_ms["p99"] <= LOOP_LAG_P99_TARGET_MS

    def table(self) -> str:
        def ok(flag: bool) -> str:
            return "ok" if flag else "FAIL"

        fr, cr, lag = self.first_response_ms, self.click_first_response_ms, self.loop_lag_ms
        rows = [
            ("jobs sent (/imagine + rerolls)", f"{self.jobs_sent} ({self.plan.jobs} + {self.jobs_sent - self.plan.jobs})", ""),
            ("DB rows = jobs, all done", f"{self.jobs_in_db} rows, {self.jobs_done_in_db} done",
             ok(self.jobs_in_db == self.jobs_sent == self.jobs_done_in_db)),
            ("delivered exactly once", f"{self.results_delivered} results, {len(self.delivered_twice)} twice, "
                                       f"{len(self.missing)} missing",
             ok(not self.delivered_twice and not self.missing and self.results_delivered == self.jobs_sent)),
            ("per-user order kept", f"{len(self.order_violations)} violations (requests ≥ "
                                    f"{NEAR_SIMULTANEOUS_S * 1000:.0f} ms apart)", ok(not self.order_violations)),
            ("same-user pairs < 50 ms apart reordered", f"{len(self.near_simultaneous_reordered)}", ""),
            ("refused / answered after 3 s", f"{self.refused} / {self.late_responses}",
             ok(self.refused == 0 and self.late_responses == 0)),
            ("first response, /imagine", f"p50 {fr['p50']:.0f} ms · p99 {fr['p99']:.0f} ms · max {fr['max']:.0f} ms",
             ok(fr["p99"] <= FIRST_RESPONSE_P99_TARGET_MS) + f" (p99 ≤ {FIRST_RESPONSE_P99_TARGET_MS:.0f})"),
            ("first response, 🎲 button", f"p50 {cr.get('p50', 0):.0f} ms · p99 {cr.get('p99', 0):.0f} ms · "
                                          f"max {cr.get('max', 0):.0f} ms",
             ok(cr.get("p99", 0) <= FIRST_RESPONSE_P99_TARGET_MS) + f" (p99 ≤ {FIRST_RESPONSE_P99_TARGET_MS:.0f})"),
            ("event-loop lag while jobs run", f"p50 {lag['p50']:.1f} ms · p99 {lag['p99']:.1f} ms · "
                                              f"max {lag['max']:.1f} ms ({self.lag_samples} samples)",
             ok(lag["p99"] <= LOOP_LAG_P99_TARGET_MS) + f" (p99 ≤ {LOOP_LAG_P99_TARGET_MS:.0f})"),
            ("REST requests (status edits)", f"{self.requests} ({self.status_edits}), {self.requests / max(1, self.jobs_sent):.0f}"
                                             f"/job, busiest second {self.peak_requests_per_s} req/s", ""),
            ("full GC pauses (gen 2)", f"{self.gc_gen2.get('n', 0):.0f}, max {self.gc_gen2.get('max_ms', 0):.0f} ms, "
                                       f"total {self.gc_gen2.get('total_ms', 0):.0f} ms"
                                       f"{' (gc.freeze() after load)' if self.plan.gc_freeze else ' (no gc.freeze)'}", ""),
            ("all results in", f"{self.wall_s:.1f} s ({self.jobs_per_s:.2f} jobs/s; arrivals at "
                               f"{self.plan.rate:g}/s{' = all at once' if self.plan.rate <= 0 else ''})", ""),
        ]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines = [f"| {'check':<{w0}} | {'measured':<{w1}} | result |", f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|--------|"]
        lines += [f"| {a:<{w0}} | {b:<{w1}} | {c} |" for a, b, c in rows]
        return "\n".join(lines)


# --- measuring -------------------------------------------------------------------------------------------------

def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p99/max by nearest rank (empty → zeros)."""
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    s = sorted(values)

    def rank(p: float) -> float:
        return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]

    return {"p50": rank(50), "p99": rank(99), "max": s[-1], "n": len(s)}


class LoopLagMonitor:
    """Sleeps `interval` again and again on the loop and records how late it wakes up."""

    def __init__(self, interval: float = LAG_INTERVAL_S) -> None:
        self.interval = interval
        self.samples_ms: list[float] = []
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.interval)
            self.samples_ms.append(max(0.0, (loop.time() - t0 - self.interval) * 1000))


class GcWatcher:
    """Times the garbage collector's full (generation 2) collections: they stop every thread's Python code."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses_ms.append((time.perf_counter() - self._t0) * 1000)

    def __enter__(self) -> "GcWatcher":
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self)

    def summary(self) -> dict[str, float]:
        return {"n": len(self.pauses_ms), "max_ms": max(self.pauses_ms, default=0.0), "total_ms": sum(self.pauses_ms)}


# --- the run ---------------------------------------------------------------------------------------------------

def make_config(workdir: Path, plan: LoadPlan, models_dir: Path):
    from bot.config import Config, DatabaseSettings, DiscordSettings, LimitsSettings, LoggingSettings, Secret
    from engine.settings import TINY, EngineSettings

    return Config(
        discord=DiscordSettings(token=Secret("unused-fake"), sizes=[f"1:1 {plan.size}"],
                                **({} if plan.edit_interval_s is None else
                                   {"status_edit_interval_s": plan.edit_interval_s})),
        engine=EngineSettings(model=TINY, models_dir=str(models_dir), profile="resident", devices=["cpu"],
                              images_dir=str(workdir / "images"), default_steps=plan.steps, max_sequence_length=64),
        limits=LimitsSettings(max_unfinished_per_user=100, queue_cap=10000),
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{workdir / 'fluxbot.db'}"),
        logging=LoggingSettings(file=""),
    )


class FakeDiscordThread:
    """The fake Discord and the simulated users in their own thread and event loop, so that the bot's loop
    (where the lag is measured) does only the bot's work, as with the real Discord on another machine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fakediscord", daemon=True)
        self.fake = None

    async def __aenter__(self) -> "FakeDiscordThread":
        from tests.fakediscord import FakeDiscord

        self._thread.start()
        self.fake = FakeDiscord()
        await self.run(self.fake.start())
        return self

    async def run(self, coro):
        """Run `coro` on the fake's loop and wait for it from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def __aexit__(self, *exc) -> None:
        await self.run(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


async def run_load(plan: LoadPlan, workdir: Path, models_dir: Path | None = None) -> LoadReport:
    """Run the plan; `models_dir` holding `tiny-random` is reused if given, else it is built under workdir."""
    from bot.app import build_bot
    from engine.tiny import ensure_tiny
    from tests.fakediscord import start_bot, stop_bot

    # 1. The tiny model, the fake Discord (own thread) and the real bot (this loop).
    if models_dir is None:
        models_dir = (await asyncio.to_thread(ensure_tiny, workdir / "models")).parent
    async with FakeDiscordThread() as side:
        fake = side.fake
        fake.patch()
        bot = await build_bot(make_config(workdir, plan, models_dir), freeze_gc=plan.gc_freeze)
        try:
            await start_bot(bot, fake)
            await bot.engines.wait_loaded()  # bot.engines freezes the GC here when freeze_gc is set
            # 2. Users act on the fake's loop while this loop runs the bot and samples its own lag.
            monitor = LoopLagMonitor()
            monitor.start()
            first_request = len(fake.requests)
            t0 = time.perf_counter()
            with GcWatcher() as gcw:
                sent, per_user = await side.run(_drive(plan, fake))
            wall = time.perf_counter() - t0
            await monitor.stop()
            # 3. Check the outcome against the store and the fake's records.
            report = await _report(plan, fake, bot, sent, per_user, monitor, wall)
            return _add_traffic(report, fake.requests[first_request:], gcw)
        finally:
            await stop_bot(bot)


async def _drive(plan: LoadPlan, fake) -> tuple[list[Sent], dict[str, list[Sent]]]:
    """Runs on the fake's loop: users send /imagine and press 🎲; returns once every request has its result."""
    rng = random.Random(plan.seed)
    users = [fake.add_user(f"user{i:02d}") for i in range(plan.users)]
    per_user: dict[str, list[Sent]] = {u.name: [] for u in users}  # in the order each user sent them
    sent: list[Sent] = []
    delivered_results: asyncio.Queue = asyncio.Queue()
    mean_gap = plan.users / plan.rate if plan.rate > 0 else 0.0

    # 1. Every user sends their share of /imagine; gaps average users/rate (aggregate `rate` commands/s).
    async def user_session(user, n: int) -> None:
        for k in range(n):
            await asyncio.sleep(rng.uniform(0, 2 * mean_gap))
            ix = await fake.slash(user, "imagine", {"prompt": f"{user.name} picture {k}", "seed": rng.randrange(10**6),
                                                    "steps": plan.steps, "size": plan.size})
            s = Sent(user.name, "imagine", len(per_user[user.name]), ix)
            per_user[user.name].append(s)
            sent.append(s)
            asyncio.create_task(_watch(s, delivered_results, plan.timeout_s))

    shares = [plan.jobs // plan.users + (1 if i < plan.jobs % plan.users else 0) for i in range(plan.users)]
    sessions = [asyncio.create_task(user_session(u, n)) for u, n in zip(users, shares)]

    # 2. While jobs run, random users press 🎲 on results as they arrive.
    clicks = 0
    while clicks < plan.clicks:
        s = await asyncio.wait_for(delivered_results.get(), plan.timeout_s)
        if s.kind != "imagine":
            continue
        presser = rng.choice(users)
        ix = await fake.click(presser, fake.message(s.result_message_id), "Reroll")
        c = Sent(presser.name, "reroll", len(per_user[presser.name]), ix)
        per_user[presser.name].append(c)
        sent.append(c)
        clicks += 1
        asyncio.create_task(_watch(c, delivered_results, plan.timeout_s))
    await asyncio.gather(*sessions)

    # 3. Every request's result (or the timeout: the report then shows what is missing).
    try:
        await fake.wait_until(lambda: all(s.result_message_id for s in sent) or None, plan.timeout_s,
                              "every job's result")
    except AssertionError as e:
        log.error("%s", e)
    return sent, per_user


async def _watch(s: Sent, out: asyncio.Queue, timeout: float) -> None:
    """Wait for the result of one request; note its job id and message."""
    try:
        msg = await s.ix.wait_message(_is_result, timeout, anywhere=False)
    except AssertionError:
        return
    s.job_id = _job_of(msg)
    s.result_message_id = msg.id
    await out.put(s)


def _add_traffic(report: LoadReport, requests: list, gcw: GcWatcher) -> LoadReport:
    per_second = Counter(int(r.at) for r in requests)
    report.requests = len(requests)
    report.status_edits = sum(1 for r in requests if r.method == "PATCH" and r.path.endswith("/messages/@original"))
    report.peak_requests_per_s = max(per_second.values(), default=0)
    report.gc_gen2 = gcw.summary()
    return report


def _is_result(m) -> bool:
    return bool(m.attachments) and _job_of(m) is not None


def _job_of(m) -> int | None:
    for cid in m.custom_ids:
        if match := JOB_ID.match(cid):
            return int(match.group(1))
    return None


async def _report(plan: LoadPlan, fake, bot, sent: list[Sent], per_user: dict, monitor: LoopLagMonitor,
                  wall: float) -> LoadReport:
    from sqlalchemy import func, select

    from db.models import Job

    # 1. The database.
    async with bot.store.session() as session:
        rows = int(await session.scalar(select(func.count()).select_from(Job)))
        done = int(await session.scalar(select(func.count()).select_from(Job).where(Job.status == "done")))
        ids = set((await session.scalars(select(Job.id))).all())
    # 2. Deliveries: result messages per job id, over every live message the fake saw.
    per_job = Counter(j for m in fake.messages if not m.deleted and m.attachments and (j := _job_of(m)) is not None)
    twice = sorted(j for j, n in per_job.items() if n > 1)
    missing = sorted(ids - set(per_job))
    # 3. Per-user order: a user's results appear in the order the user's interactions reached the bot
    #    (dispatch order = interaction id order); each violation names the pair and how far apart they were sent.
    violations, near = [], []
    for user, items in per_user.items():
        ordered = sorted((s for s in items if s.result_message_id), key=lambda s: s.ix.id)
        for a, b in zip(ordered, ordered[1:]):
            if b.result_message_id < a.result_message_id:
                gap = b.ix.created_at - a.ix.created_at
                (near if gap < NEAR_SIMULTANEOUS_S else violations).append(
                    f"{user}: {b.kind} job {b.job_id} delivered before {a.kind} job {a.job_id}, "
                    f"sent {1000 * gap:.0f} ms after it")
    # 4. Latencies.
    imagine_ms = [s.ix.response.latency_s * 1000 for s in sent if s.kind == "imagine" and s.ix.response]
    click_ms = [s.ix.response.latency_s * 1000 for s in sent if s.kind == "reroll" and s.ix.response]
    refused = sum(1 for s in sent if s.ix.response and s.ix.response.ephemeral)
    late = sum(1 for s in sent if s.ix.response is None)
    return LoadReport(plan=plan, jobs_sent=len(sent), jobs_in_db=rows, jobs_done_in_db=done,
                      results_delivered=sum(per_job.values()), delivered_twice=twice, missing=missing,
                      order_violations=violations, near_simultaneous_reordered=near, first_response_ms=percentiles(imagine_ms),
                      click_first_response_ms=percentiles(click_ms), loop_lag_ms=percentiles(monitor.samples_ms),
                      lag_samples=len(monitor.samples_ms), wall_s=wall, jobs_per_s=len(sent) / wall if wall else 0.0,
                      refused=refused, late_responses=late)


# --- command line ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 jobs from 4 users, 2 rerolls")
    parser.add_argument("--jobs", type=int, help="/imagine commands (default 100)")
    parser.add_argument("--users", type=int, help="users (default 20)")
    parser.add_argument("--clicks", type=int, help="🎲 presses while jobs run (default 20)")
    parser.add_argument("--rate", type=float, help="/imagine per second, all users together (default 10; "
                                                   "0 = everyone at once)")
    parser.add_argument("--steps", type=int, help="denoising steps per job (default 2; more makes jobs wait longer)")
    parser.add_argument("--edit-interval", type=float, help="[discord] status_edit_interval_s (default: the "
                        "config's 2 s); 0.05 with --steps 50 keeps the ratio of a 2 s interval to 10 s FLUX jobs")
    parser.add_argument("--no-gc-freeze", action="store_true",
                        help="start FluxBot without freeze_gc (as tests do) to see the collector's pauses")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a latency target is missed")
    parser.add_argument("--workdir", type=Path, help="keep the DB and images here (default: a temp dir)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = LoadPlan.quick() if args.quick else LoadPlan()
    changes = {k: v for k, v in (("jobs", args.jobs), ("users", args.users), ("clicks", args.clicks),
                                                   ("rate", args.rate), ("steps", args.steps),
                                                   ("edit_interval_s", args.edit_interval), ("gc_freeze", False if args.no_gc_freeze else None)) if v is not None}
    plan = LoadPlan(**{**asdict(plan), **changes})

    with tempfile.TemporaryDirectory(prefix="fluxbot-load-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(run_load(plan, workdir))
    print(plan.describe())
    print(report.table())
    for line in report.order_violations[:5]:
        print("order:", line)
    for line in report.near_simultaneous_reordered[:5]:
        print("reordered (near-simultaneous):", line)
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "correct": report.correct,
                                         "targets_met": report.targets_met}, indent=2))
    if not report.correct:
        print("FAIL: a correctness check failed", file=sys.stderr)
        return 1
    if args.strict and not report.targets_met:
        print("FAIL: a latency target was missed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
