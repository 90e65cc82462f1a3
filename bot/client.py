"""The Discord client: `FluxBot(commands.Bot)`, which wires the services it is given into Discord.

Its constructor takes the `Services` (bot/app.py builds them: store, queue, jobs service, engines, chores) and makes
what needs the client itself: the messaging (result delivery, the status tracker, restart notices — they post
through this client's connection) and the features (cogs), each given what it uses in its constructor.

`setup_hook` (after login, before the gateway connects):
1. adds the features and registers the persistent buttons (`add_dynamic_items`);
2. starts the background chores, re-queues unfinished jobs, tells their owners in their channel, delivers
   results that never went out;
3. syncs the slash commands (to `[discord] guild_ids`, else globally);
4. starts loading one engine per device in the background (minutes for FLUX); jobs wait in the queue
   meanwhile and the workers start taking them when their engine is ready.

A job button's click goes from `bot.views.JobButton.callback` to the handler in `job_buttons` (the imagine feature's
`reroll`, `vary`, …); the client adds no step of its own.
"""
from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.bot_services import Services
from bot.cogs.history import HistoryFeature, HistoryPageButton
from bot.cogs.imagine import ImagineFeature
from bot.cogs.queue import QueueFeature
from bot.delivery import Deliverer
from bot.job_lookup import JobLookup
from bot.job_start import JobStarter
from bot.replies import report_error
from bot.restart_notices import RestartNotices
from bot.results import ResultPoster
from bot.tracker import JobTracker
from bot.views import JobButton

log = logging.getLogger(__name__)

DYNAMIC_ITEMS = (JobButton, HistoryPageButton)  # every persistent button: its custom_id is parsed when clicked


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
    """The bot over `services`; `sync_commands=False` leaves Discord's command list alone."""

    def __init__(self, services: Services, *, sync_commands: bool = True):
        without_voice()
        super().__init__(command_prefix=commands.when_mentioned, intents=intents(), help_command=None,
                         allowed_mentions=discord.AllowedMentions.none())
        cfg = services.config
        # 1. The services, as given.
        self.services = services
        self.config, self.store, self.identity = cfg, services.store, services.identity
        self.queue, self.jobs, self.engines = services.queue, services.jobs, services.engines
        # 2. Messaging: it posts through this client.
        self.deliverer = Deliverer(self)
        self.results = ResultPoster(self, self.store, self.deliverer, identity=self.identity)
        self.tracker = JobTracker(self, self.jobs, self.store, self.results,
                                  interval_s=cfg.discord.status_edit_interval_s,
                                  engine_state=lambda: self.engines.state, identity=self.identity)
        self.engines.subscribe(lambda _state: self.tracker.engine_changed())
        self.notices = RestartNotices(self, self.store, self.queue, self.tracker, identity=self.identity)
        # 3. The features, and what a job button does (bot.views.JobButton hands a click to it).
        starter = JobStarter(cfg.discord, cfg.limits, self.jobs, self.tracker, lambda: self.engines.state)
        self.imagine = ImagineFeature(cfg, services.sizes, store=self.store,
                                      lookup=JobLookup(self.store, self.identity), starter=starter, jobs=self.jobs,
                                      results=self.results, engine_state=lambda: self.engines.state,
                                      identity=self.identity)
        self.features: tuple[commands.Cog, ...] = (
            self.imagine, HistoryFeature(cfg.discord, self.store),
            QueueFeature(self.queue, self.store, lambda: self.engines.state))
        self.job_buttons = self.imagine.job_buttons()
        self._sync_commands = sync_commands
        self._stopped = False  # close() has stopped the services (it may be called again)
        self.tree.on_error = self.on_app_command_error  # type: ignore[method-assign]

    # --- start -------------------------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        # 1. Features and persistent buttons.
        for feature in self.features:
            await self.add_cog(feature)
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        # 2. Chores, and the jobs the last run left behind (their interaction tokens cleared once past Discord's
        #    15 minutes).
        await self.services.housekeeping.start()
        recovered = await self.jobs.recover()
        await self.notices.announce(recovered)
        await self.results.deliver_undelivered()
        # 3. Slash commands.
        if self._sync_commands:
            await self.sync_commands()
        # 4. Engines, in the background.
        self.engines.start()

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

    async def on_ready(self) -> None:
        log.info("logged in as %s (id %s) in %d guild(s)", self.user, self.user.id if self.user else "?",
                 len(self.guilds))

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """A click that no button of this version handles (a button left by an older version of the bot, or an
        altered custom_id) gets an answer instead of Discord's bare "This interaction failed"."""
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

    # --- errors ----------------------------------------------------------------------------------------------

    async def on_app_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError):
        """The one handler of every slash command error: short ephemeral answer, trace in the log."""
        await report_error(interaction, error)

    # --- stop --------------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the engines' workers (running jobs stay `running` and run again after a restart), the chores and
        the messaging, disconnect, then close the store."""
        if self._stopped:
            return await super().close()
        self._stopped = True
        await self.engines.stop()
        await self.services.housekeeping.stop()
        self.queue.close()
        await self.tracker.close()
        await super().close()
        await self.store.close()
