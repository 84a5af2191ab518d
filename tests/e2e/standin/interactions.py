"""Slash-command invocations as a Discord client would send them, and handles to watch replies."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .model import StandinUser, StoredMessage

if TYPE_CHECKING:
    from .server import DiscordStandin

# Application command option types (Discord API).
SUB_COMMAND = 1
SUB_COMMAND_GROUP = 2
STRING = 3
INTEGER = 4
BOOLEAN = 5
USER = 6
NUMBER = 10
ATTACHMENT = 11

# Interaction types (Discord API).
INTERACTION_COMMAND = 2
INTERACTION_COMPONENT = 3
INTERACTION_MODAL_SUBMIT = 5

# Interaction callback types.
CALLBACK_MESSAGE = 4
CALLBACK_DEFERRED = 5
CALLBACK_DEFERRED_UPDATE = 6
CALLBACK_UPDATE_MESSAGE = 7
CALLBACK_MODAL = 9
# What Discord accepts as the answer to each interaction type: a modal cannot answer a modal
# submit, and only a component's own message can be updated.
ALLOWED_CALLBACKS: dict[int, frozenset[int]] = {
    INTERACTION_COMMAND: frozenset({CALLBACK_MESSAGE, CALLBACK_DEFERRED, CALLBACK_MODAL}),
    INTERACTION_COMPONENT: frozenset({CALLBACK_MESSAGE, CALLBACK_DEFERRED,
                                      CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE,
                                      CALLBACK_MODAL}),
    INTERACTION_MODAL_SUBMIT: frozenset({CALLBACK_MESSAGE, CALLBACK_DEFERRED,
                                         CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE}),
}


class InvalidInvocation(ValueError):
    """The options given would not pass Discord's own client-side checks for this command."""


@dataclass
class BuiltOptions:
    options: list[dict[str, Any]]
    resolved: dict[str, Any]


def build_options(
    command: Mapping[str, Any] | None,
    given: Mapping[str, Any],
    *,
    validate: bool,
) -> BuiltOptions:
    """Turn {"prompt": "a cat", "image": <attachment dict>} into interaction options.

    With the synced command's schema at hand, option types come from it and values are
    checked the way Discord's client checks them (required, choices, ranges, types), so a
    scenario cannot send what a real user never could. Without a schema (or validate=False)
    types are inferred from the Python values.
    """
    schema = {option["name"]: option for option in (command or {}).get("options", [])}
    options: list[dict[str, Any]] = []
    resolved: dict[str, Any] = {}
    command_name = (command or {}).get("name", "?")

    if validate and command is not None:
        unknown = sorted(set(given) - set(schema))
        if unknown:
            raise InvalidInvocation(
                f"/{command_name} has no option(s) {unknown}; it has {sorted(schema)}"
            )
        missing = [
            name for name, option in schema.items() if option.get("required") and name not in given
        ]
        if missing:
            raise InvalidInvocation(f"/{command_name} needs option(s) {missing}")

    for name, value in given.items():
        option_type = schema[name]["type"] if name in schema else _infer_type(value)
        if validate and name in schema:
            _check_value(command_name, schema[name], value)
        if option_type == ATTACHMENT:
            attachment = dict(value)
            resolved.setdefault("attachments", {})[attachment["id"]] = attachment
            options.append({"name": name, "type": ATTACHMENT, "value": attachment["id"]})
        elif option_type == USER:
            user: StandinUser = value
            resolved.setdefault("users", {})[str(user.id)] = user.payload()
            member = user.member_payload()
            del member["user"]
            resolved.setdefault("members", {})[str(user.id)] = member
            options.append({"name": name, "type": USER, "value": str(user.id)})
        else:
            options.append({"name": name, "type": option_type, "value": value})
    return BuiltOptions(options=options, resolved=resolved)


def _infer_type(value: Any) -> int:
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, StandinUser):
        return USER
    if isinstance(value, Mapping) and "url" in value:
        return ATTACHMENT
    return STRING


def _check_value(command_name: str, option: Mapping[str, Any], value: Any) -> None:
    where = f"/{command_name} {option['name']}"
    option_type = option["type"]
    expected: dict[int, tuple[type, ...]] = {
        STRING: (str,),
        INTEGER: (int,),
        BOOLEAN: (bool,),
        NUMBER: (int, float),
    }
    if option_type == ATTACHMENT:
        if not (isinstance(value, Mapping) and "url" in value and "id" in value):
            raise InvalidInvocation(f"{where} takes an attachment dict from add_cdn_file()")
        return
    if option_type == USER:
        if not isinstance(value, StandinUser):
            raise InvalidInvocation(f"{where} takes a StandinUser")
        return
    if option_type in expected:
        allowed = expected[option_type]
        if not isinstance(value, allowed) or (option_type != BOOLEAN and isinstance(value, bool)):
            raise InvalidInvocation(f"{where} must be {allowed[0].__name__}, got {value!r}")
    choices = option.get("choices")
    if choices and value not in [choice["value"] for choice in choices]:
        raise InvalidInvocation(
            f"{where} must be one of {[choice['value'] for choice in choices]}, got {value!r}"
        )
    if "min_value" in option and value < option["min_value"]:
        raise InvalidInvocation(f"{where} must be >= {option['min_value']}, got {value!r}")
    if "max_value" in option and value > option["max_value"]:
        raise InvalidInvocation(f"{where} must be <= {option['max_value']}, got {value!r}")
    if "min_length" in option and len(value) < option["min_length"]:
        raise InvalidInvocation(f"{where} needs at least {option['min_length']} characters")
    if "max_length" in option and len(value) > option["max_length"]:
        raise InvalidInvocation(f"{where} takes at most {option['max_length']} characters")


@dataclass
class Callback:
    """The interaction callback the bot sent (type 4 reply or type 5 deferral)."""

    type: int
    data: dict[str, Any]
    at: float

    @property
    def ephemeral(self) -> bool:
        return bool(int(self.data.get("flags", 0) or 0) & 64)


class InteractionHandle:
    """What a test holds after invoking a slash command: the bot's answers to it, as they come."""

    def __init__(
        self,
        standin: DiscordStandin,
        *,
        interaction_id: int,
        token: str,
        command_name: str,
        user: StandinUser,
        channel_id: int,
        payload: dict[str, Any],
        interaction_type: int = INTERACTION_COMMAND,
        message_id: int | None = None,
    ) -> None:
        self._standin = standin
        self.interaction_type = interaction_type
        # The message whose component was used (component interactions and their modals).
        self.message_id = message_id
        # The modal the bot answered with (callback type 9): custom_id, title, components.
        self.modal: dict[str, Any] | None = None
        self.id = interaction_id
        self.token = token
        self.command_name = command_name
        self.user = user
        self.channel_id = channel_id
        self.payload = payload
        self.callback: Callback | None = None
        # Stand-in monotonic time the INTERACTION_CREATE went out (set on dispatch).
        self.dispatched_at: float | None = None
        # A callback that came after Discord's deadline, refused with 10062 as Discord does.
        self.late_callback: Callback | None = None
        self.original: StoredMessage | None = None
        self.followups: list[StoredMessage] = []

    @property
    def acknowledged(self) -> bool:
        return self.callback is not None

    @property
    def ack_seconds(self) -> float | None:
        """How long the bot took to acknowledge, measured by the stand-in."""
        if self.callback is None or self.dispatched_at is None:
            return None
        return self.callback.at - self.dispatched_at

    @property
    def deferred(self) -> bool:
        return self.callback is not None and self.callback.type == CALLBACK_DEFERRED

    @property
    def ephemeral(self) -> bool:
        """Whether the first answer (reply or deferral) was ephemeral."""
        return self.callback is not None and self.callback.ephemeral

    @property
    def replies(self) -> list[StoredMessage]:
        """Every message the user sees as an answer, in order, excluding "thinking..." ones."""
        seen: set[int] = set()
        answers: list[StoredMessage] = []
        for message in [self.original, *self.followups]:
            if message is None or message.loading or message.id in seen or message.deleted:
                continue
            seen.add(message.id)
            answers.append(message)
        return answers

    def describe(self) -> str:
        callback = "no callback" if self.callback is None else f"callback type {self.callback.type}"
        if self.modal is not None:
            callback += f" (modal {self.modal.get('custom_id')!r})"
        if self.late_callback is not None:
            callback += f" (a late callback type {self.late_callback.type} was refused)"
        replies = "; ".join(
            f"{'ephemeral' if m.ephemeral else 'public'} {m.content!r} files={list(m.files)}"
            for m in self.replies
        )
        what = f"/{self.command_name}" if self.interaction_type == INTERACTION_COMMAND \
            else self.command_name
        return f"{what} by {self.user.name}: {callback}; replies: [{replies}]"

    async def wait_for_callback(self, timeout: float = 10.0) -> Callback:
        await self._standin.wait_for(
            lambda: self.callback is not None,
            timeout=timeout,
            description=f"an interaction callback for {self.command_name}",
        )
        assert self.callback is not None
        return self.callback

    async def wait_for_reply(
        self,
        predicate: Callable[[StoredMessage], bool] | None = None,
        timeout: float = 10.0,
    ) -> StoredMessage:
        """The first visible answer (original or followup) matching predicate."""

        def find() -> StoredMessage | None:
            for message in self.replies:
                if predicate is None or predicate(message):
                    return message
            return None

        return await self._standin.wait_for(
            find, timeout=timeout, description=lambda: f"a matching reply; {self.describe()}"
        )
