"""The bot process's discord.py client and the services it owns.

:class:`FaradayBot` holds the config, store, scheduler and publisher. Its ``setup_hook`` loads
every cog module that defines ``async def setup(bot)`` (found with pkgutil, so bot/ never imports
a cog by name) and syncs the slash commands. :meth:`FaradayBot.start_services` runs recovery,
starts the worker and loads the models on it, one at a time, while the bot connects (its presence
says how far loading has got); :meth:`FaradayBot.stop_services` shuts them down.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import pkgutil

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.admission import BLOCKED_USER, Gatekeeper
from bot.config import Config, DiscordConfig
from bot.jobs import PRELOADED_KINDS
from bot.model_loading import LOAD_TIMES_FILE, LoadingState, LoadTimes, ModelLoader, Runner
from bot.owner_store import OwnerStore
from bot.pipeline_source import PipelineSource
from bot.publisher import Publisher
from bot.runtime_settings import SettingsService
from bot.safety import ImageSafety
from bot.scheduler import Scheduler, make_executor
from bot.store import RecoveryReport, Store
from pipelines.model_plan import ModelStep

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
        channel = interaction.channel
        if settings is not None and isinstance(channel, discord.Thread):
            # A thread the cache lacks still takes its channel's settings.
            settings.note_thread(channel.id, channel.parent_id)
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
        self.settings.thread_parent = self.thread_parent_id
        self.gatekeeper = Gatekeeper(self.settings, self.owner_store)
        self.cogs_package = cogs_package
        self.loaded_cog_modules: list[str] = []
        self.model_loader: ModelLoader | None = None
        self.image_safety: ImageSafety | None = None
        self.models_loading: asyncio.Task[None] | None = None
        self._presence: tuple[discord.BaseActivity | None, discord.Status] = (
            None, discord.Status.online)
        self._background: set[asyncio.Task[None]] = set()

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
        if config.scheduler.pipeline == "real" and config.safety.image_check:
            bot.image_safety = ImageSafety(config.safety, config.models, bot.age_restricted)
            scheduler.image_safety = bot.image_safety
        await bot.settings.load()
        return bot

    def thread_parent_id(self, channel_id: int) -> int | None:
        """The parent channel of a cached thread (None for anything else)."""
        channel = self.get_channel(channel_id)
        return channel.parent_id if isinstance(channel, discord.Thread) else None

    def age_restricted(self, channel_id: int) -> bool | None:
        """Whether Discord marks the channel age-restricted; ``None`` when it is not cached.

        A thread has no flag of its own: it is age-restricted when its parent channel is (known
        from the cache, or from an interaction in a thread the cache lacks).
        """
        channel = self.get_channel(self.settings.channel_scope(channel_id) or channel_id)
        return None if channel is None else bool(getattr(channel, "nsfw", False))

    async def start_services(self, *, wait_for_models: bool = True) -> RecoveryReport:
        """Prune old results, recover, start the worker and load the models on it.

        With ``wait_for_models`` false it returns as soon as loading has begun, so the bot can
        connect meanwhile (``python -m bot`` does this); jobs wait in the queue until
        :meth:`wait_models_loaded` would return.
        """
        pruned = await self.store.prune(self.config.storage.result_retention_days)
        if pruned:
            log.info("removed %d job(s) older than %d days", pruned,
                     self.config.storage.result_retention_days)
        self.model_loader = ModelLoader(
            self._model_steps(),
            LoadTimes(self.config.storage.data_dir / LOAD_TIMES_FILE),
            self._loading_changed,
        )
        self.scheduler.hold_for_models(self.model_loader.remaining_seconds)
        report = await self.scheduler.start()
        await self.publisher.announce_unposted()
        log.info("scheduler started: %d job(s) waiting, %d re-queued, %d failed as interrupted "
                 "twice", len(report.queued), len(report.requeued), len(report.failed))
        log.info("loading the models of preset %r", self.config.models.preset)
        self.models_loading = asyncio.create_task(self._load_models(), name="model-loading")
        if wait_for_models:
            await self.wait_models_loaded()
        return report

    def _model_steps(self) -> list[tuple[ModelStep, Runner]]:
        """Each model this process loads, with the thread that loads it.

        A local executor's models load on each slot's own worker thread (its device). They are
        daemon threads, unlike asyncio's executor threads, so a signal during a long first
        download does not have to wait for them. GPU workers elsewhere load their own models, so
        a remote executor contributes no steps. Listing imports nothing heavy and loads nothing.
        """
        steps: list[tuple[ModelStep, Runner]] = []
        for slot in getattr(self.scheduler.executor, "slots", ()):
            slot.worker.start()
            steps.extend((step, slot.worker.run) for step in slot.source.model_steps(
                PRELOADED_KINDS))
        if self.image_safety is not None:
            steps.append((self.image_safety.model_step(), self.image_safety.run))
        return steps

    async def _load_models(self) -> None:
        assert self.model_loader is not None
        await self.model_loader.run()
        # Builds the pipelines from the models just loaded (the per-process caches), and lets
        # the executor do whatever else it does before the first job.
        await self.scheduler.preload()
        log.info("models ready")
        self.scheduler.models_ready()

    async def wait_models_loaded(self) -> None:
        """Until every model is loaded; raises what loading raised (ModelFileError, say)."""
        if self.models_loading is None:
            raise RuntimeError("start_services() has not been called")
        await asyncio.shield(self.models_loading)

    def _loading_changed(self, state: LoadingState) -> None:
        self.scheduler.refresh_positions()
        activity = None if state.done else discord.CustomActivity(name=state.text)
        status = discord.Status.online if state.done else discord.Status.idle
        self._presence = (activity, status)
        if self.ws is not None and self.is_ready():
            task = asyncio.create_task(self._show_presence(), name="presence")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            # Not connected yet: IDENTIFY carries it, so the bot never shows up without it.
            self.activity, self.status = activity, status

    async def _show_presence(self) -> None:
        activity, status = self._presence
        try:
            await self.change_presence(activity=activity, status=status)
        except (discord.DiscordException, ConnectionError) as exc:  # only cosmetic
            log.debug("could not update the presence: %s", exc)

    async def on_ready(self) -> None:
        # After a reconnect the gateway forgets the presence; say again how loading stands.
        if self._presence[0] is not None:
            await self._show_presence()

    async def stop_services(self) -> None:
        """Stop taking jobs, let the running one stop and be re-queued, flush messages, close."""
        loading = self.models_loading
        if loading is not None and not loading.done():
            # The worker thread finishes the model it is on by itself; nobody waits for it.
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loading
        await self.scheduler.shutdown()
        if self.image_safety is not None:
            self.image_safety.stop()
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
