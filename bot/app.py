"""The bot process's discord.py client and the services it owns.

:class:`FaradayBot` holds the config, store, scheduler and publisher. Its ``setup_hook`` loads
every cog module that defines ``async def setup(bot)`` (found with pkgutil, so bot/ never imports
a cog by name) and syncs the slash commands. :meth:`FaradayBot.start_services` runs recovery,
loads the models once and starts the worker; :meth:`FaradayBot.stop_services` shuts them down.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.admission import BLOCKED_USER, Gatekeeper
from bot.config import Config, DiscordConfig
from bot.owner_store import OwnerStore
from bot.pipeline_source import PipelineSource
from bot.publisher import Publisher
from bot.runtime_settings import SettingsService
from bot.scheduler import Scheduler, make_executor
from bot.store import RecoveryReport, Store

log = logging.getLogger(__name__)

COGS_PACKAGE = "cogs"


def point_discord_at(config: DiscordConfig) -> None:
    """Send discord.py's REST and gateway traffic where the config says (a stand-in in tests).

    ``api_base_url`` is the full REST base including the version, e.g.
    ``http://127.0.0.1:8080/api/v10``. Empty values leave Discord's own in place.
    """
    if config.api_base_url:
        discord.http.Route.BASE = config.api_base_url.rstrip("/")
    if config.gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(config.gateway_url)


def cog_modules(package: str = COGS_PACKAGE) -> list[str]:
    """Every module in the cogs package, in name order."""
    try:
        root = importlib.import_module(package)
    except ModuleNotFoundError:
        return []
    return sorted(
        f"{package}.{info.name}"
        for info in pkgutil.iter_modules(root.__path__)
        if not info.name.startswith("_")
    )


class FaradayTree(app_commands.CommandTree):
    """Refuses every slash command of a user an admin blocked (/block), before the command runs."""

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        client = interaction.client
        settings = getattr(client, "settings", None)
        if settings is None or not settings.is_blocked(interaction.user.id):
            return True
        log.info("refused /%s from blocked user %d",
                 interaction.command.name if interaction.command else "?", interaction.user.id)
        await interaction.response.send_message(BLOCKED_USER, ephemeral=True)
        return False


class FaradayBot(commands.Bot):
    def __init__(
        self,
        config: Config,
        store: Store,
        scheduler: Scheduler,
        publisher: Publisher,
        *,
        cogs_package: str = COGS_PACKAGE,
    ) -> None:
        point_discord_at(config.discord)
        intents = discord.Intents.default()  # includes reactions; no message content needed
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            # Users' prompts are echoed in messages; they must never ping anyone.
            allowed_mentions=discord.AllowedMentions.none(),
            tree_cls=FaradayTree,
        )
        self.config = config
        self.store = store
        self.scheduler = scheduler
        self.publisher = publisher
        self.owner_store = OwnerStore(store)
        # Loaded from the store by create(); until then config.toml's values apply.
        self.settings = SettingsService(config, self.owner_store)
        self.gatekeeper = Gatekeeper(self.settings, self.owner_store)
        self.cogs_package = cogs_package
        self.loaded_cog_modules: list[str] = []

    @classmethod
    async def create(cls, config: Config, *, source: PipelineSource | None = None) -> FaradayBot:
        """Open the store and build the scheduler and publisher (nothing runs yet)."""
        store = await Store.open(config.storage.database_path, config.storage.data_dir,
                                 sync_commits=config.storage.sync_commits)
        scheduler = Scheduler(store, source, config.scheduler,
                              executor=None if source is not None else make_executor(store, config),
                              timelapse=config.timelapse)
        publisher = Publisher(
            store,
            config.scheduler.progress_interval_seconds,
            config.scheduler.retry,
            upscale=config.upscale,
        )
        scheduler.add_listener(publisher)
        bot = cls(config, store, scheduler, publisher)
        await bot.settings.load()
        return bot

    async def start_services(self) -> RecoveryReport:
        """Prune old results, load the models once (off the loop), recover and start the worker."""
        pruned = await self.store.prune(self.config.storage.result_retention_days)
        if pruned:
            log.info("removed %d job(s) older than %d days", pruned,
                     self.config.storage.result_retention_days)
        log.info("loading the models of preset %r", self.config.models.preset)
        # On the worker threads that will run them (daemon threads, unlike asyncio's executor
        # threads, so a signal during a long first download does not have to wait for them).
        await self.scheduler.preload()
        report = await self.scheduler.start()
        await self.publisher.announce_unposted()
        log.info("scheduler started: %d job(s) waiting, %d re-queued, %d failed as interrupted "
                 "twice", len(report.queued), len(report.requeued), len(report.failed))
        return report

    async def stop_services(self) -> None:
        """Stop taking jobs, let the running one stop and be re-queued, flush messages, close."""
        await self.scheduler.shutdown()
        await self.publisher.close()

    async def setup_hook(self) -> None:
        for name in cog_modules(self.cogs_package):
            module = importlib.import_module(name)
            if callable(getattr(module, "setup", None)):
                await self.load_extension(name)
                self.loaded_cog_modules.append(name)
        log.info("cogs loaded: %s", ", ".join(self.loaded_cog_modules) or "none")
        await self.sync_commands()

    async def sync_commands(self) -> None:
        """Guild sync is instant; global sync can take up to an hour to reach every client."""
        try:
            if self.config.discord.guild_ids:
                for guild_id in self.config.discord.guild_ids:
                    guild = discord.Object(id=guild_id)
                    self.tree.copy_global_to(guild=guild)
                    synced = await self.tree.sync(guild=guild)
                    log.info("synced %d command(s) to guild %d", len(synced), guild_id)
            else:
                synced = await self.tree.sync()
                log.info("synced %d command(s) globally", len(synced))
        except discord.HTTPException:
            log.exception("syncing slash commands failed; the bot runs on with the old set")
