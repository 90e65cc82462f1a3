"""`python -m bot doctor`: can this machine run the bot, and if not, why not.

It reports the config file, the Discord token's presence (never its value), the GPU(s) with VRAM, compute
capability and fp8 support, host RAM, free disk, the model files and their SHA-256 manifests, the memory
placement plan the engine would start with and why, and whether the database answers (URL shown without its password).
The exit status is 1 when the bot could not start: bad config, no token, model missing or corrupt,
database unreachable, a configured GPU absent.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from bot.config import Config, ConfigError, load_config
from bot.doctor_checks import FAIL, INFO, OK, WARN, Check
from bot.doctor_ray import ray_checks
from bot.logging_setup import DISCORD_TOKEN
from engine import download as dl
from engine.errors import EngineError, ModelNotFoundError
from engine.model_sizes import sizes_from_files
from engine.models import resolve_source
from engine.settings import TINY, EngineSettings
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import create_async_engine

log = logging.getLogger(__name__)

GiB = 1024 ** 3
LOW_DISK = 5 * GiB


# ---------------------------------------------------------------------------------------------- entry point

def doctor_command(args) -> int:
    """Print every check; 1 if any failed, else 0."""
    checks = run_checks(getattr(args, "config", None), full=not getattr(args, "quick", False),
                        ray=getattr(args, "ray", False))
    print("fluxbot doctor")
    for c in checks:
        print(f"  [{c.status:^4}] {c.topic:<9} {c.text}")
    failed = [c for c in checks if c.status == FAIL]
    if failed:
        print(f"\n{len(failed)} problem(s) stop the bot from starting: fix the FAIL lines above.")
        return 1
    print("\nEverything the bot needs is in place: start it with `python -m bot run`.")
    return 0


def run_checks(config_path: str | None = None, *, env: Mapping[str, str] | None = None,
               full: bool = True, ray: bool = False) -> list[Check]:
    """All checks in order. `full` re-hashes model files against their manifests (slow for 30 GB); `ray` adds the
    Ray cluster's (bot/doctor_ray.py: its nodes, and the same model on each)."""
    env = os.environ if env is None else env
    checks: list[Check] = []
    # 1. The config: without a valid one, only the machine itself can be checked.
    cfg = _check_config(config_path, env, checks)
    if cfg is not None:
        _guarded("token", checks, _check_token, cfg, env, checks)
    # 2. The machine.
    devices = _guarded("gpu", checks, _check_gpus, cfg.engine if cfg else EngineSettings(), checks) or ["cpu"]
    _guarded("host", checks, _check_host, cfg, checks)
    if cfg is None:
        return checks
    # 3. The model, the memory profile it would run with, the database.
    if _guarded("model", checks, _check_model, cfg.engine, full, checks):
        _guarded("profile", checks, _check_profile, cfg.engine, devices, checks)
    _guarded("database", checks, _check_database, cfg.database.url, checks)
    # 4. The Ray cluster, when asked (it joins the cluster and hashes the weights on every node).
    if ray:
        checks.extend(_guarded("ray", checks, ray_checks, cfg) or [])
    return checks


def _guarded(topic: str, checks: list[Check], check, *args):
    """Run one check; a check that crashes (a broken install, say) becomes a FAIL line, not a traceback."""
    try:
        return check(*args)
    except Exception as e:  # noqa: BLE001  (the doctor must report every other check too)
        log.debug("doctor check %s crashed", topic, exc_info=True)
        checks.append(Check(topic, FAIL, f"the check itself failed: {type(e).__name__}: {e}"))
        return None


# ---------------------------------------------------------------------------------------------- config, token

def _check_config(config_path: str | None, env: Mapping[str, str], checks: list[Check]) -> Config | None:
    try:
        cfg = load_config(config_path, env=env)
    except ConfigError as e:
        checks.append(Check("config", FAIL, str(e)))
        return None
    if cfg.path:
        checks.append(Check("config", OK, f"{Path(cfg.path).resolve()} is valid"))
    else:
        checks.append(Check("config", WARN, "no config file found (--config, $FLUXBOT_CONFIG, ./config.toml): "
                            "using the defaults; copy config.example.toml to config.toml and edit it"))
    return cfg


def _check_token(cfg: Config, env: Mapping[str, str], checks: list[Check]) -> None:

    token = cfg.discord.token.reveal()
    where = "env DISCORD_TOKEN" if env.get("DISCORD_TOKEN") else "[discord] token"
    if not token:
        checks.append(Check("token", FAIL, "no Discord bot token: set [discord] token or env DISCORD_TOKEN "
                            "(Developer Portal → your application → Bot → Reset Token)"))
    elif not DISCORD_TOKEN.fullmatch(token):  # a "Bot " prefix is refused by the config loader, naming it
        checks.append(Check("token", WARN, f"set in {where}, but it does not look like a bot token (three parts "
                            "separated by dots); a client secret or application id will be refused with 401"))
    else:
        checks.append(Check("token", OK, f"set in {where} (value hidden)"))


# ---------------------------------------------------------------------------------------------- machine

def _check_gpus(settings: EngineSettings, checks: list[Check]) -> list[str]:
    """GPU lines, and the devices workers would run on."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for i in range(count):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        major, minor = props.major, props.minor
        fp8 = ("fp8 tensor-core matmuls supported (sm_89+)" if (major, minor) >= (8, 9) else
               "no fp8 tensor-core matmuls (needs sm_89+); fp8 weight storage still works (computed in bf16)")
        bf16 = "" if major >= 8 else "; no native bf16 (pre-Ampere): expect slower steps"
        checks.append(Check("gpu", OK, f"cuda:{i} {props.name}: {total / GiB:.1f} GiB VRAM, {free / GiB:.1f} GiB "
                            f"free, compute capability {major}.{minor}; {fp8}{bf16}"))
    if count == 0:
        checks.append(Check("gpu", WARN, f"no CUDA GPU visible (torch {torch.__version__}): the engine runs on the "
                            "CPU, minutes per image — fine for tiny-random, not for FLUX.1-dev"))
    # The configured devices must exist.
    wanted = list(settings.devices)
    if wanted == ["auto"]:
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    for dev in wanted:
        if dev.startswith("cuda") and (count == 0 or _index(dev) >= count):
            checks.append(Check("gpu", FAIL, f"[engine] devices lists {dev}, but {count} CUDA GPU(s) are visible; "
                                "fix [engine] devices or use ['auto']"))
    return wanted


def _index(device: str) -> int:
    _, _, num = device.partition(":")
    return int(num) if num.isdigit() else 0


def _check_host(cfg: Config | None, checks: list[Check]) -> None:
    import psutil

    mem = psutil.virtual_memory()
    checks.append(Check("ram", OK if mem.total >= 16 * GiB else WARN,
                        f"{mem.total / GiB:.1f} GiB host RAM, {mem.available / GiB:.1f} GiB available"
                        + ("" if mem.total >= 16 * GiB else " (FLUX.1-dev wants 16 GiB or more to load)")))
    if cfg is None:
        return
    for label, folder in (("models", cfg.engine.models_dir), ("images", cfg.engine.images_dir)):
        existing = _existing_parent(Path(folder))
        free = shutil.disk_usage(existing).free
        status = OK if free >= LOW_DISK else WARN
        checks.append(Check("disk", status, f"{free / GiB:.1f} GiB free for {label} ({folder})"
                            + ("" if status == OK else ": low; the FLUX.1-dev download needs about 34 GB")))


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# ---------------------------------------------------------------------------------------------- model

def _check_model(settings: EngineSettings, full: bool, checks: list[Check]) -> bool:
    """Presence (engine.models.resolve_source rules), then the SHA-256 manifests. True if loadable."""
    # 1. tiny-random is built offline on first start; nothing to verify.
    if settings.model == TINY:
        checks.append(Check("model", OK, f"tiny-random: a tiny random-weight FLUX built offline under "
                            f"{Path(settings.models_dir) / 'tiny-random'} (for testing the Discord set-up; images "
                            "are noise)"))
        return True
    # 2. The files the engine needs are there.
    try:
        source = resolve_source(settings)
    except ModelNotFoundError as e:
        checks.append(Check("model", FAIL, str(e)))
        return False
    checks.append(Check("model", OK, f"{source.kind} {source.path}" + (f" with base {source.base}" if source.base
                                                                       else "")))
    # 3. They are what was downloaded.
    loadable = True
    for report in dl.check_model_files((source.path, source.base), full=full):
        folder = report.folder
        if report.ok:
            checks.append(Check("files", OK, report.summary()))
        elif not report.manifest_found:
            checks.append(Check("files", WARN, f"{folder}: no {dl.MANIFEST_NAME}, cannot verify (files not fetched "
                                "by `python -m bot download`); they are used as they are"))
        else:
            checks.append(Check("files", FAIL, report.summary()))
            loadable = False
    return loadable


def _check_profile(settings: EngineSettings, devices: list[str], checks: list[Check]) -> None:
    """The placement plan the engine would start with on each device (`python -m bot plan` prints the same),
    from the model files' sizes (FLUX.1-dev's where absent) and the budgets measured now."""
    try:
        from engine.memory import detect_budgets, make_plan  # lazy: imports torch; a broken install is reported
    except ImportError as e:  # a broken install should not hide the other checks
        checks.append(Check("profile", WARN, f"engine.memory cannot be imported ({e})"))
        return
    sizes, _missing = sizes_from_files(settings)
    for device in devices:
        try:
            plan = make_plan(settings, device, sizes, detect_budgets(settings, device))
        except EngineError as e:      # a bad [engine] budget: the engine would refuse to start
            checks.append(Check("profile", FAIL, f"{device}: {e}"))
            continue
        status = INFO if plan.fits else (FAIL if settings.profile == "auto" else WARN)
        checks.append(Check("profile", status, f"{device}: {plan.summary()}"))
        for line in plan.why + ((f"cannot fit: {plan.problem}",) if plan.problem else ()):
            checks.append(Check("plan", status, line))


def estimate_weight_bytes(settings: EngineSettings) -> tuple[int, int]:
    """(DiT bytes after fp8 storage, text encoders + VAE bytes in bf16), read from safetensors headers
    without loading a tensor (engine/model_sizes.py). Zero for files that are not there."""
    sizes, _ = sizes_from_files(settings, fallback=False)
    return sizes.dit, sizes.t5 + sizes.clip + sizes.vae


# ---------------------------------------------------------------------------------------------- database

def _check_database(url: str, checks: list[Check]) -> None:
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        checks.append(Check("database", FAIL, f"[database] url is not a SQLAlchemy URL ({e})"))
        return
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite(shown, parsed.database or "", checks)
    else:
        _check_server_db(url, shown, parsed.password, checks)


def _check_sqlite(shown: str, database: str, checks: list[Check]) -> None:
    if database in ("", ":memory:"):
        checks.append(Check("database", WARN, f"{shown}: an in-memory database forgets every job at exit"))
        return
    path = Path(database)
    if not path.exists():
        parent = _existing_parent(path.parent)
        if os.access(parent, os.W_OK):
            checks.append(Check("database", OK, f"{shown}: not created yet; `python -m bot migrate` (or the first "
                                "start) creates it"))
        else:
            checks.append(Check("database", FAIL, f"{shown}: cannot create {path}: {parent} is not writable"))
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            conn.execute("SELECT 1")
            row = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='alembic_version'").fetchone()
            version = conn.execute("SELECT version_num FROM alembic_version").fetchone() if row else None
    except sqlite3.Error as e:
        checks.append(Check("database", FAIL, f"{shown}: cannot be read ({e}); is it a SQLite database?"))
        return
    schema = f"schema revision {version[0]}" if version else "no schema yet: run `python -m bot migrate`"
    checks.append(Check("database", OK, f"{shown}: reachable; {schema}"))


def _check_server_db(url: str, shown: str, password: str | None, checks: list[Check]) -> None:
    async def ping() -> None:
        engine = create_async_engine(url, pool_pre_ping=False)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        asyncio.run(asyncio.wait_for(ping(), timeout=10))
    except ModuleNotFoundError as e:
        checks.append(Check("database", FAIL, f"{shown}: the driver is not installed ({e.name}); for PostgreSQL: "
                            "pip install 'fluxbot[postgres]'"))
    except Exception as e:  # noqa: BLE001  (any failure to connect is the answer here)
        message = str(e).replace(url, shown)
        if password:
            message = message.replace(str(password), "***")
        checks.append(Check("database", FAIL, f"{shown}: unreachable ({type(e).__name__}: {message[:300]})"))
    else:
        checks.append(Check("database", OK, f"{shown}: reachable"))
