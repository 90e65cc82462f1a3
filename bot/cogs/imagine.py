"""/imagine: a prompt and its options in, a queued job and a status reply out.

The command is built when the cog loads so that the size choices and the prompt length come from the config
(`[discord] sizes`, `[limits] max_prompt_chars`). Discord's option ranges help the user; the bot checks
every value again (`bot.validation`) before anything is queued.
"""
# No `from __future__ import annotations` here: discord.py reads the option types from the live annotations
# of a function built at run time.
import logging
from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from bot import actions
from engine.limits import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, MIN_GUIDANCE, MIN_STEPS

log = logging.getLogger(__name__)


def build_imagine_command(bot) -> app_commands.Command:
    """The /imagine command with this bot's size choices and limits."""
    cfg = bot.config
    max_chars = min(MAX_PROMPT_CHARS, cfg.limits.max_prompt_chars)
    choices = [app_commands.Choice(name=s.title, value=s.value) for s in bot.sizes]

    @app_commands.command(name="imagine", description="Generate an image from a text prompt")
    @app_commands.describe(
        prompt="What to draw",
        seed="Same seed + same options = same image; -1 or empty = random",
        steps=f"Denoising steps, {MIN_STEPS}-{MAX_STEPS} (default {cfg.engine.default_steps})",
        size=f"Width × height (default {bot.sizes[0].title})",
        guidance=f"How closely to follow the prompt, {MIN_GUIDANCE:g}-{MAX_GUIDANCE:g} "
                 f"(default {cfg.engine.default_guidance:g})",
        count=f"Images, 1-{cfg.limits.max_count}, with seeds seed, seed+1, …",
    )
    @app_commands.choices(size=choices)
    async def imagine(interaction: discord.Interaction,
                      prompt: app_commands.Range[str, 1, max_chars],
                      seed: Optional[app_commands.Range[int, -1, MAX_SEED]] = None,
                      steps: Optional[app_commands.Range[int, MIN_STEPS, MAX_STEPS]] = None,
                      size: Optional[str] = None,
                      guidance: Optional[app_commands.Range[float, MIN_GUIDANCE, MAX_GUIDANCE]] = None,
                      count: Optional[app_commands.Range[int, 1, cfg.limits.max_count]] = None) -> None:
        await actions.imagine(interaction, prompt=prompt, seed=seed, steps=steps, size=size, guidance=guidance,
                              count=count)

    return imagine


class ImagineCog(commands.Cog):
    def __init__(self, bot: commands.Bot):
        self.bot = bot
        self.command = build_imagine_command(bot)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.command)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.command.name)

    @app_commands.command(name="show", description="Post a finished job's image again, with its buttons")
    @app_commands.describe(job="The job number (shown under every image and in /history)")
    async def show(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        await actions.show(interaction, job)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(ImagineCog(bot))
