"""config.toml: the shipped file is the defaults; every kind of mistake gets its own line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import (
    Config,
    ConfigError,
    FloatOption,
    IntOption,
    discord_token,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


def test_the_shipped_config_is_valid_and_documents_the_defaults() -> None:
    assert load_config(REPO / "config.toml") == Config()


def test_an_empty_file_means_every_default() -> None:
    assert parse_config("") == Config()


def test_values_are_read_into_typed_objects() -> None:
    config = parse_config(
        """
        [discord]
        guild_ids = [123456789012345678]
        api_base_url = "http://127.0.0.1:8080/api/v10"
        gateway_url = "ws://127.0.0.1:8080/gateway"
        continue_by = "requester"
        [models]
        preset = "tiny"
        cache_dir = "elsewhere"
        candidate_batch = 2
        channels_last = false
        compile = true
        deterministic = true
        [imagine]
        sizes = ["128x128", "256x128"]
        default_size = "256x128"
        [imagine.steps]
        default = 20
        min = 5
        max = 40
        [edit.guidance]
        default = 5
        min = 1
        max = 9.5
        [scheduler]
        pipeline = "stand-in"
        progress_interval_seconds = 0.5
        [scheduler.stand_in]
        work = "sleep"
        [storage]
        data_dir = "/tmp/faraday-data"
        """
    )
    assert config.discord.guild_ids == (123456789012345678,)
    assert config.discord.continue_by == "requester"
    assert config.models.preset == "tiny" and config.models.cache_dir == Path("elsewhere")
    assert config.models.candidate_batch == 2 and config.models.channels_last is False
    assert config.models.compile is True and config.models.deterministic is True
    assert config.imagine.sizes == ((128, 128), (256, 128))
    assert config.imagine.default_size == (256, 128)
    assert config.imagine.steps == IntOption(20, 5, 40)
    assert config.edit.guidance == FloatOption(5.0, 1.0, 9.5)
    assert config.scheduler.pipeline == "stand-in"
    assert config.scheduler.progress_interval_seconds == 0.5
    assert config.scheduler.stand_in.work == "sleep"
    assert config.storage.database_path == Path("/tmp/faraday-data/faraday.sqlite3")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Structure.
        ("[colours]\nred = 1", "[colours]: unknown section (allowed: [discord], [models]"),
        ("discord = 5", "discord = 5: must be a table ([discord])"),
        ("[discord]\nprefix = '!'",
         "discord.prefix = '!': unknown key (allowed in [discord]: admin_role_ids"),
        ("[scheduler.retry]\ntries = 3", "scheduler.retry.tries = 3: unknown key"),
        # Whole numbers.
        ("[scheduler]\nmax_queued_total = 'many'",
         "scheduler.max_queued_total = 'many': must be a whole number from 1 to 100000"),
        ("[scheduler]\nmax_queued_total = true",
         "scheduler.max_queued_total = True: must be a whole number from 1 to 100000"),
        ("[scheduler]\nmax_queued_per_user = 0",
         "scheduler.max_queued_per_user = 0: must be a whole number from 1 to 10000"),
        ("[scheduler]\nworker_niceness = 20",
         "scheduler.worker_niceness = 20: must be a whole number from 0 to 19"),
        ("[scheduler]\nmax_queued_total = 2.5",
         "scheduler.max_queued_total = 2.5: must be a whole number from 1 to 100000"),
        # Numbers.
        ("[scheduler]\nprogress_interval_seconds = 0",
         "scheduler.progress_interval_seconds = 0: must be a number from 0.01 to 3600"),
        ("[scheduler]\nprogress_interval_seconds = nan",
         "scheduler.progress_interval_seconds = nan: must be a number from 0.01 to 3600"),
        ("[discord]\ndownload_timeout_seconds = '20'",
         "discord.download_timeout_seconds = '20': must be a number from 0.1 to 600"),
        # Booleans and choices.
        ("[edit]\nshrink = 'yes'", "edit.shrink = 'yes': must be true or false"),
        ("[discord]\ncontinue_by = 'admins'",
         "discord.continue_by = 'admins': must be one of 'anyone', 'requester'"),
        ("[scheduler]\npipeline = 'fake'",
         "scheduler.pipeline = 'fake': must be one of 'real', 'stand-in'"),
        ("[scheduler.stand_in]\nwork = 'spin'",
         "scheduler.stand_in.work = 'spin': must be one of 'cpu', 'sleep'"),
        ("[logging]\nlevel = 'LOUD'",
         "logging.level = 'LOUD': must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'"),
        ("[edit]\ndefault_background = 'blur'",
         "edit.default_background = 'blur': must be one of 'none', 'paste', 'finetune'"),
        ("[edit]\nbackgrounds = ['none']\ndefault_background = 'paste'",
         "edit.default_background = 'paste': must be one of 'none'"),
        # Strings, URLs, lists.
        ("[discord]\napi_base_url = 'discord.com/api'",
         "discord.api_base_url = 'discord.com/api': must be empty (Discord's own) or a http or "
         "https URL"),
        ("[discord]\ngateway_url = 'http://127.0.0.1/gw'",
         "discord.gateway_url = 'http://127.0.0.1/gw': must be empty (Discord's own) or a ws or "
         "wss URL"),
        ("[discord]\napi_base_url = 5", "discord.api_base_url = 5: must be a string"),
        ("[discord]\nguild_ids = ['123']",
         "discord.guild_ids = ['123']: must be a list of Discord ids (whole numbers)"),
        ("[discord]\nadmin_role_ids = [-4]",
         "discord.admin_role_ids = [-4]: must be a list of Discord ids"),
        ("[discord]\nowner_ids = 42", "discord.owner_ids = 42: must be a list of Discord ids"),
        ("[discord]\ncdn_hosts = []",
         "discord.cdn_hosts = []: must be a non-empty list of strings"),
        ("[edit]\nbackgrounds = ['none', 'glow']",
         "edit.backgrounds = ['none', 'glow']: every entry must be one of 'none', 'paste', "
         "'finetune'"),
        # Option bounds: inside the pipeline's hard limits, min <= default <= max.
        ("[imagine.steps]\nmax = 5000",
         "imagine.steps.max = 5000: must be a whole number from 1 to 2000"),
        ("[imagine.cutn]\nmin = 0", "imagine.cutn.min = 0: must be a whole number from 1 to 128"),
        ("[imagine]\ncandidates = 10",
         "imagine.candidates = 10: must be a whole number from 1 to 9"),
        ("[edit.candidates]\nmax = 9",
         "edit.candidates.max = 9: must be a whole number from 1 to 8"),
        ("[edit.blend_start]\nmax = 1.0",
         "edit.blend_start.max = 1.0: must be a number from 0.0 to 0.99"),
        ("[edit.guidance]\ndefault = 40",
         "edit.guidance.default = 40: must be a number from 1.0 to 30.0"),
        ("[imagine.steps]\nmin = 50\nmax = 10",
         "imagine.steps.min = 50: must not exceed imagine.steps.max = 10"),
        ("[imagine.steps]\ndefault = 900\nmax = 500",
         "imagine.steps.default = 900: must lie between min 1 and max 500"),
        ("[edit.guidance]\ndefault = 2.0\nmin = 3.0",
         "edit.guidance.default = 2.0: must lie between min 3.0 and max 20.0"),
        ("[edit.steps]\nstep = 3", "edit.steps.step = 3: unknown key"),
        ("[imagine.image_prompt_weight]\ndefault = 0",
         "imagine.image_prompt_weight.default = 0"),
        ("[imagine.image_prompt_weight]\nmax = 1e9",
         "imagine.image_prompt_weight.max = 1000000000.0: must be a number from"),
        # Sizes.
        ("[imagine]\nsizes = ['250x250']",
         "imagine.sizes = ['250x250']: must be a non-empty list; each entry \"WIDTHxHEIGHT\" "
         "with each side a multiple of 16 from 64 to 1024 and at most 262,144 pixels"),
        ("[imagine]\nsizes = ['1024x1024']", "imagine.sizes = ['1024x1024']: must be"),
        ("[imagine]\nsizes = 'big'", "imagine.sizes = 'big': must be a non-empty list"),
        ("[imagine]\ndefault_size = 'square'",
         "imagine.default_size = 'square': must be \"WIDTHxHEIGHT\""),
        ("[imagine]\ndefault_size = '128x128'",
         "imagine.default_size = '128x128': must be one of imagine.sizes: 256x256, 384x256"),
        ("[edit]\nmax_side = 500", "edit.max_side = 500: must be a multiple of 8"),
        ("[edit]\nstart = \"pure\"",
         "edit.start = 'pure': must be one of 'noised-source', 'noise'"),
        ("[edit]\nmax_side = 4096", "edit.max_side = 4096: must be a whole number from 64 to 2048"),
        # Cross-field rules.
        ("[scheduler]\nmax_queued_per_user = 60\nmax_queued_total = 50",
         "scheduler.max_queued_per_user = 60: must not exceed scheduler.max_queued_total = 50"),
        ("[scheduler.retry]\nbase_delay_seconds = 10\nmax_delay_seconds = 5",
         "scheduler.retry.base_delay_seconds = 10.0: must not exceed "
         "scheduler.retry.max_delay_seconds = 5.0"),
        # Storage.
        ("[storage]\ndatabase = 'sub/db.sqlite3'",
         "storage.database = 'sub/db.sqlite3': must be a plain file name inside storage.data_dir"),
        ("[storage]\ndata_dir = ' '", "storage.data_dir = ' ': must be a folder path"),
        ("[storage]\nresult_retention_days = -1",
         "storage.result_retention_days = -1: must be a whole number from 0 to 100000"),
        # [models], validated by pipelines.settings.ModelSettings.
        ("[models]\npreset = 'huge'",
         "models.preset = 'huge': must be one of tiny, random-full, default"),
        ("[models]\ndevice = 'tpu'", "models.device = 'tpu': must be auto, cpu, cuda or cuda:N"),
        ("[models]\ndtype = 'int8'",
         "models.dtype = 'int8': must be auto, float32, float16 or bfloat16"),
        ("[models]\nweights = 'x'",
         "models.weights = 'x': unknown key (allowed in [models]: cache_dir, candidate_batch"),
        ("[models]\ndevice = 0", "models.device = 0: must be a string"),
        ("[models]\ntrust_checkpoints = 'yes'",
         "models.trust_checkpoints = 'yes': must be true or false"),
        ("[models]\ncache_dir = 3", "models.cache_dir = 3: must be a folder path"),
        ("[models]\ncandidate_batch = 0",
         "models.candidate_batch = 0: must be \"auto\" or a whole number of at least 1"),
        ("[models]\ncandidate_batch = 'most'",
         "models.candidate_batch = 'most': must be \"auto\" or a whole number"),
        ("[models]\ncandidate_batch = true",
         "models.candidate_batch = True: must be \"auto\" or a whole number"),
        ("[models]\nchannels_last = 'on'",
         "models.channels_last = 'on': must be \"auto\", true or false"),
        ("[models]\ncompile = 'yes'", "models.compile = 'yes': must be true or false"),
        ("[models]\ndeterministic = 1", "models.deterministic = 1: must be true or false"),
        ("models = 'tiny'", "models = 'tiny': must be a table ([models])"),
        ("[models]\nvqgan_checkpoint = []",
         "models.vqgan_checkpoint = []: must be a path or URL, or a non-empty list of them"),
        ("[models]\nvqgan_config = ['a.yaml', 3]",
         "models.vqgan_config = ['a.yaml', 3]: must be a path or URL, or a non-empty list"),
    ],
)
def test_each_mistake_is_one_line_naming_key_value_and_what_is_allowed(
    text: str, expected: str
) -> None:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]


def test_the_vqgan_files_may_each_name_several_sources_tried_in_order() -> None:
    config = parse_config(
        "[models]\nvqgan_config = ['https://a.example/model.yaml', '/srv/model.yaml']\n"
        "vqgan_checkpoint = 'https://a.example/last.ckpt'\n"
    )
    assert config.models.vqgan_config == ("https://a.example/model.yaml", "/srv/model.yaml")
    assert config.models.vqgan_checkpoint == "https://a.example/last.ckpt"
    hash(config.models)  # the per-process model caches key on it


def test_every_problem_is_reported_not_just_the_first() -> None:
    problems = problems_of(
        """
        [discord]
        continue_by = "nobody"
        [scheduler]
        pipeline = "fake"
        progress_interval_seconds = -1
        [models]
        preset = "huge"
        dtype = "int8"
        """
    )
    assert len(problems) == 5
    assert [p.split(" =")[0] for p in problems] == [
        "discord.continue_by",
        "models.preset",
        "models.dtype",
        "scheduler.progress_interval_seconds",
        "scheduler.pipeline",
    ]


def test_toml_syntax_errors_and_missing_files_are_one_line(tmp_path: Path) -> None:
    [syntax] = problems_of("[discord\nguild_ids = []")
    assert syntax.startswith("config.toml is not valid TOML: ")
    with pytest.raises(ConfigError) as missing:
        load_config(tmp_path / "nope.toml")
    assert missing.value.problems == [f"config file {str(tmp_path / 'nope.toml')!r} does not exist"]
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError) as undecodable:
        load_config(binary)
    assert undecodable.value.problems == [f"config file {str(binary)!r} is not UTF-8 text"]
    with pytest.raises(ConfigError) as folder:
        load_config(tmp_path)
    assert folder.value.problems[0].startswith(f"config file {str(tmp_path)!r} cannot be read")


def test_the_token_comes_only_from_the_environment() -> None:
    assert discord_token({"DISCORD_TOKEN": "  abc.def  "}) == "abc.def"
    assert discord_token({"DISCORD_TOKEN": "   "}) is None
    assert discord_token({}) is None
    [problem] = problems_of("[discord]\ntoken = 'abc'")
    assert problem.startswith("discord.token = 'abc': unknown key")
