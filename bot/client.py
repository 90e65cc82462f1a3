"""The Discord client: `FluxBot(commands.Bot)` and `python -m bot run`.

`setup_hook` (after login, before the gateway connects):
1. opens the store (migrated to head), builds the queue, the jobs service and the tracker;
2. loads the cogs and registers the persistent buttons (`add_dynamic_items`);
3. re-queues unfinished jobs, tells their owners in their channel, delivers results that never went out;
4. syncs the slash commands (to `[discord] guild_ids`, else globally);
5. starts loading one engine per device in the background (minutes for FLUX); jobs wait in the queue
   meanwhile and the workers start taking them when their engine is ready.

`engine_state` says whether the engine is loading, ready, or failed on every device (with the engine's
user-safe reason): while it has failed, new jobs are refused with that reason instead of waiting forever.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot import actions
from bot.cogs.history import HistoryPageButton
from bot.config import Config, ConfigError, load_config
from bot.delivery import Deliverer
from bot.errors import CannotStart
from bot.engine_state import EngineState, EngineStatus, failure_reason
from bot.logging_setup import setup_logging
from bot.replies import guarded, report_error
from bot.service import JobService
from bot.token_expiry import forget_expired_tokens, forget_periodically
from bot.tracker import JobTracker
from bot.validation import SizeChoice, parse_sizes
from bot.views import JobButton, JobRef, edit_form
from db import instance
from db.session import open_store
from engine.devices import resolve_devices
from engine.image_files import IdMark
from engine.models import quiet_loading_bars
from engine.pool import WorkerPool
from engine.queue import JobQueue
from engine.retention import prune_periodically

if TYPE_CHECKING:
    from engine.pool import PoolState

log = logging.getLogger(__name__)

COGS = ("bot.cogs.imagine", "bot.cogs.history", "bot.cogs.queue")
DYNAMIC_ITEMS = (JobButton, HistoryPageButton)  # every persistent button: its custom_id is parsed when clicked
STORE_WATCH_S = 30.0  # how often an idle bot checks that its database file is still the one it opened


def intents() -> discord.Intents:
    """Slash commands and buttons arrive as interactions whatever the intents; `guilds` keeps the channel and
    role cache that permission checks and channel messages use. No privileged intent (no message content,
    no member list)."""
    wanted = discord.Intents.none()
    wanted.guilds = True
    return wanted


def without_voice() -> None:
    """The bot has no voice: discord.py's warnings that PyNaCl / davey (voice support) are missing would only
    alarm an owner, so they are switched off (discord.py reads these flags once, in Client.__init__)."""
    discord.VoiceClient.warn_nacl = False
    discord.VoiceClient.warn_dave = False


class FluxBot(commands.Bot):
    """The bot. `engine_loader(settings, device)` replaces `Engine.load` (e.g. one engine shared by tests);
    `close_engines=False` leaves such a shared engine open when the bot closes."""

    def __init__(self, config: Config, *, engine_loader: Callable[[Any, str], Any] | None = None,
                 close_engines: bool = True, sync_commands: bool = True, freeze_gc: bool = False):
        without_voice()
        super().__init__(command_prefix=commands.when_mentioned, intents=intents(), help_command=None,
                         allowed_mentions=discord.AllowedMentions.none())
        self.config = config
        self.sizes: list[SizeChoice] = parse_sizes(config.discord.sizes)
        self.deliverer = Deliverer(self)
        self.store = None
        self.queue = None
        self.service = None
        self.tracker = None
        self.workers: list = []
        self.recovered: list = []
        self._engine_loader = engine_loader
        self._close_engines = close_engines
        self._sync_commands = sync_commands
        self._freeze_gc = freeze_gc  # `run` sets it; tests, which start many bots in one process, do not
        self._loading: asyncio.Task | None = None
        self._pruning: asyncio.Task | None = None
        self._forgetting: asyncio.Task | None = None  # clears expired interaction tokens (bot.token_expiry)
        self._watching: asyncio.Task | None = None  # notices the database file deleted or replaced (db.instance)
        self.identity: str | None = None  # this database's identity, in new custom_ids and file names (db.instance)
        self.engine_state = EngineState(EngineStatus.LOADING)
        self.tree.on_error = self.on_app_command_error  # type: ignore[method-assign]

    # --- start -------------------------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        cfg = self.config
        # 1. Store, queue, service, tracker.
        self.store = await open_store(cfg.database.url, echo=cfg.database.echo,
                                      busy_timeout_s=cfg.database.busy_timeout_s)
        self.identity = await self._database_identity()
        devices = await asyncio.to_thread(resolve_devices, cfg.engine.devices)
        self.queue = JobQueue(workers=len(devices))
        self.service = JobService(self.store, self.queue, [], cfg.limits, cfg.discord.banned_words,
                                  cfg.engine.images_dir, identity=self.identity)
        self.tracker = JobTracker(self, self.service, self.store, self.deliverer,
                                  interval_s=cfg.discord.status_edit_interval_s,
                                  engine_state=lambda: self.engine_state, identity=self.identity)
        # 2. Cogs and persistent buttons.
        for name in COGS:
            await self.load_extension(name)
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        # 3. Jobs the last run left behind (their interaction tokens cleared once past Discord's 15 minutes).
        await forget_expired_tokens(self.store)
        self._forgetting = asyncio.create_task(forget_periodically(self.store), name="fluxbot-forget-tokens")
        self.recovered = await self.service.recover()
        await self.tracker.announce_recovered(self.recovered)
        await self.tracker.deliver_undelivered()
        # 4. Slash commands.
        if self._sync_commands:
            await self.sync_commands()
        # 5. Engines, in the background.
        self._loading = asyncio.create_task(self._start_workers(devices), name="fluxbot-load-engines")
        # 6. Image retention ([storage]): prunes old PNGs; records stay and /show regenerates them.
        self._pruning = asyncio.create_task(prune_periodically(
            cfg.engine.images_dir, cfg.storage.max_image_age_days, int(cfg.storage.max_images_gib * 2**30),
            cfg.storage.prune_interval_min * 60), name="fluxbot-prune-images")

    async def _database_identity(self) -> str:
        """This database's identity; job ids it issued before a restore from an older backup stay unused; a watch
        notices the database file deleted or replaced later."""
        identity = await instance.identity(self.store)
        highest = await asyncio.to_thread(IdMark(self.config.engine.images_dir).highest, identity)
        before = await instance.skip_job_ids_through(self.store, highest)
        if before is not None:
            log.warning("the database would issue job id %d again, but the images folder holds images of its jobs up "
                        "to %d: it was restored from an older backup. New jobs start at %d, so that the buttons and "
                        "files of those jobs keep their meaning", before, highest, highest + 1)
        self._watching = asyncio.create_task(instance.watch(self.store, identity, STORE_WATCH_S),
                                             name="fluxbot-watch-database")
        log.info("database identity %s", identity)
        return identity

    async def sync_commands(self) -> None:
        guild_ids = self.config.discord.guild_ids
        if guild_ids:
            for gid in guild_ids:
                guild = discord.Object(gid)
                self.tree.copy_global_to(guild=guild)
                synced = await self.tree.sync(guild=guild)
                log.info("synced %d slash commands to guild %d", len(synced), gid)
        else:
            synced = await self.tree.sync()
            log.info("synced %d slash commands globally (Discord may take up to an hour to show them)",
                     len(synced))

    async def _start_workers(self, devices: list[str]) -> None:
        """Start the engine's worker pool (engine/pool.py: one engine per device, one after the other; a device
        that fails does not stop the others). The first that loads makes the engine READY (the others keep
        loading); if none loads, it is FAILED with the first device's reason."""
        # 1.-2. Load and start each device's worker; `_engine_pool_changed` hears each device's outcome.
        pool = WorkerPool(self.config.engine, self.queue, self.service, loader=self._engine_loader,
                          devices=devices, on_change=self._engine_pool_changed)
        state = await pool.start()
        # 3. The loaded libraries hold millions of long-lived objects that every full garbage collection would
        #    walk again (0.3–1 s stalls of the event loop, measured in docs/reliability.md): take them out.
        if self._freeze_gc:
            gc.collect()
            gc.freeze()
        # 4. No device at all: say so to users, not only in the log.
        if not state.workers:
            reason = failure_reason(state.failed[0].error) if state.failed else "no device to run it on"
            log.error("no engine loaded on any device: new requests are refused with: %s", reason)
            self._set_engine_state(EngineState(EngineStatus.FAILED, reason=reason))

    def _engine_pool_changed(self, state: "PoolState") -> None:
        """After each device: workers that now run take jobs and cancels, and the engine is READY on them."""
        started = state.workers[len(self.workers):]
        for worker in started:
            self.workers.append(worker)
            self.service.workers.append(worker)
            self.service.model_id = getattr(worker.engine, "model_id", None)
        if started:
            self._set_engine_state(EngineState(EngineStatus.READY, devices=state.names))

    def _set_engine_state(self, state: EngineState) -> None:
        """Replace the engine state and refresh the status lines of waiting jobs."""
        self.engine_state = state
        log.info("engine %s%s", state.status.value, f": {state.reason}" if state.reason else "")
        if self.tracker is not None:
            self.tracker.engine_changed()

    async def wait_until_engines_loaded(self) -> int:
        """Wait for the background engine loading; returns how many workers run."""
        if self._loading is not None:
            await self._loading
        return len(self.workers)

    async def on_ready(self) -> None:
        log.info("logged in as %s (id %s) in %d guild(s)", self.user, self.user.id if self.user else "?",
                 len(self.guilds))

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Edit forms are answered here, statelessly (they survive a restart). A click that no button of this
        version handles (a button left by an older version of the bot, or an altered custom_id) gets an answer
        instead of Discord's bare "This interaction failed"."""
        if interaction.type is discord.InteractionType.modal_submit:
            form = edit_form(interaction)
            if form is not None:
                await guarded(interaction, lambda: actions.submit_edit(interaction, form.ref, form.prompt, form.seed,
                                                                       form.steps))
            return
        if interaction.type is not discord.InteractionType.component:
            return
        custom_id = str((interaction.data or {}).get("custom_id", ""))
        if any(item.__discord_ui_compiled_template__.fullmatch(custom_id) for item in DYNAMIC_ITEMS):
            return  # its DynamicItem answers
        log.info("unrecognised button %r from user %s", custom_id[:100], interaction.user.id)
        if not interaction.response.is_done():
            await interaction.response.send_message("This button is not recognised (it may come from an older "
                                                    "version of the bot); use /imagine or /history instead.",
                                                    ephemeral=True)

    async def job_button(self, interaction: discord.Interaction, action: str, ref: JobRef) -> None:
        """A job button (`bot.views.JobButton`) was pressed: its action (`bot.actions.JOB_ACTIONS`)."""
        await actions.job_button(interaction, action, ref)

    # --- errors ----------------------------------------------------------------------------------------------

    async def on_app_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError):
        """The one handler of every slash command error: short ephemeral answer, trace in the log."""
        await report_error(interaction, error)

    # --- stop --------------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the workers (running jobs stay `running` and run again after a restart), then disconnect."""
        for task in (self._loading, self._pruning, self._watching, self._forgetting):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for worker in self.workers:
            try:
                await worker.stop(close_engine=self._close_engines)
            except Exception:
                log.exception("stopping worker %s failed", worker.name)
        if self.queue is not None:
            self.queue.close()
        if self.tracker is not None:
            await self.tracker.close()
        await super().close()
        if self.store is not None:
            await self.store.close()
            self.store = None


def _stop_like_ctrl_c(signum, _frame) -> None:
    """SIGTERM (systemd stop, docker stop) closes the bot as Ctrl+C does: discord.py's `run` turns a
    KeyboardInterrupt into `close()` (workers stopped, gateway closed, store closed) and returns."""
    raise KeyboardInterrupt


def run_command(args) -> int:
    """`python -m bot run`: load the config (the token is required), set up logging, run until stopped.
    Discord out of reach is one line (here and in the log file) and exit status 1, not a traceback."""
    config = load_config(getattr(args, "config", None), require_token=True)
    token = config.discord.token.reveal()
    handles = setup_logging(config.logging, secrets=[token])
    quiet_loading_bars()  # per-file loading bars would fill the log
    bot = FluxBot(config, freeze_gc=True)
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    print("connecting to Discord…", file=sys.stderr, flush=True)
    try:
        bot.run(token, log_handler=None)
    except discord.LoginFailure:
        raise ConfigError("Discord refused the bot token ([discord] token or env DISCORD_TOKEN): copy it again "
                          "from the Developer Portal → your application → Bot → Reset Token") from None
    except discord.PrivilegedIntentsRequired as e:  # not expected: fluxbot asks for none
        raise ConfigError(f"Discord refused the gateway intents: {e}") from None
    except UNREACHABLE as e:
        message = f"cannot reach Discord ({unreachable_reason(e)}): check network, firewall or proxy"
        handles.fatal(message)  # the log file keeps the reason; the console gets it once, from bot.cli
        raise CannotStart(message) from None
    return 0


# Errors that mean Discord could not be reached at all: DNS, refused or reset connections, proxies, TLS, time-outs.
UNREACHABLE = (aiohttp.ClientConnectionError, asyncio.TimeoutError, discord.GatewayNotFound)


def unreachable_reason(err: BaseException) -> str:
    """A short reason: 'discord.com:443: Name or service not known', not aiohttp's whole repr."""
    if isinstance(err, aiohttp.ClientConnectorError):
        cause = err.os_error
        why = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        return f"{err.host}:{err.port}: {why}"
    if isinstance(err, asyncio.TimeoutError):
        return "timed out"
    return str(err) or type(err).__name__
