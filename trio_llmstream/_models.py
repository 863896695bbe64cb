"""The public data model: frozen, slotted attrs classes.

The streamed chunk is shaped like livekit-agents' ``ChatChunk`` (``request_id``, ``choices``,
``usage``) so that its users feel at home. Chunks are built once per wire chunk by the core and
never mutated afterwards; list-typed fields are lists for familiarity, but treat them as
read-only.

An empty ``ChoiceDelta.tool_calls`` or ``ChatChunk.choices`` (the default, and what the parsers
put in every text chunk) is one shared, read-only empty list, ``NO_CALLS`` / ``NO_CHOICES``: a
``list`` equal to ``[]`` in every way a reader sees (comparison, repr, iteration, JSON), except
that adding to it raises ``TypeError``; ``list(x)``, ``x.copy()``, ``copy.copy`` and pickling
give an ordinary list. Why: a stream builds one chunk per token, and a fresh ``[]`` per chunk
was one of its five garbage-collector-tracked objects (issue 16; benchmarks/PROFILE.md, cost 1).
A shared mutable list would let one chunk's mutation show in every other chunk, so it refuses.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal, NoReturn, Protocol, SupportsIndex, TypeAlias, cast

import attrs

__all__ = [
    "AttemptMetrics",
    "ChatChunk",
    "ChatContext",
    "ChatMessage",
    "ChatRequest",
    "ChatRole",
    "Choice",
    "ChoiceDelta",
    "CollectedChoice",
    "CollectedResponse",
    "CompletionUsage",
    "FunctionCall",
    "LLMCapabilities",
    "LLMMetrics",
    "NamedToolChoice",
    "ProviderItem",
    "StreamStatus",
    "ToolChoice",
    "ToolSpec",
    "UsageSource",
]

ChatRole: TypeAlias = Literal["system", "user", "assistant", "tool"]
_ROLES = frozenset({"system", "user", "assistant", "tool"})


@attrs.frozen
class FunctionCall:
    """A complete tool call requested by the model.

    ``arguments`` is the exact raw JSON text the server streamed, fragments joined; it is not
    parsed or re-serialized here. Calls are only ever delivered once complete.
    """

    call_id: str
    name: str
    arguments: str


def _calls_tuple(calls: Iterable[FunctionCall]) -> tuple[FunctionCall, ...]:
    return tuple(calls)


@attrs.frozen
class ProviderItem:
    """A piece of an assistant turn that its provider needs back, unchanged, on the next
    request: an Anthropic thinking block with its ``signature``, a Gemini ``thoughtSignature``,
    an OpenAI Responses reasoning item, DeepSeek's ``reasoning_content``.

    ``provider`` names the wire protocol that made it (``"anthropic"``, ``"gemini"``,
    ``"openai.responses"``, ``"openai.chat"``); ``kind`` says what it is within that
    protocol; ``data`` is the exact text the provider sent (usually JSON), kept byte-equal.
    Only the provider of the same protocol reads it; others ignore it. Never visible output:
    it does not commit an attempt.
    """

    provider: str
    kind: str
    data: str


def _items_tuple(items: Iterable[ProviderItem]) -> tuple[ProviderItem, ...]:
    return tuple(items)


def _check_role(_inst: object, _attr: attrs.Attribute[str], value: str) -> None:
    if value not in _ROLES:
        raise ValueError(f"role must be one of {sorted(_ROLES)}, not {value!r}")


@attrs.frozen
class ChatMessage:
    """One message of a conversation.

    ``tool_calls`` are the calls an assistant message made; ``tool_call_id`` (and optionally
    ``name``) tie a ``tool`` message to the call whose result it carries. On an assistant
    message, ``reasoning`` is the model's reasoning text and ``provider_items`` what its
    provider needs back verbatim on the next turn (see ``ProviderItem``);
    ``CollectedResponse.message()`` fills both.
    """

    role: ChatRole = attrs.field(validator=_check_role)
    content: str | None = None
    tool_calls: tuple[FunctionCall, ...] = attrs.field(default=(), converter=_calls_tuple)
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str | None = None
    provider_items: tuple[ProviderItem, ...] = attrs.field(default=(), converter=_items_tuple)

    def __attrs_post_init__(self) -> None:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")


class _ToolResultLike(Protocol):
    @property
    def call(self) -> FunctionCall: ...

    @property
    def output(self) -> str: ...


@attrs.define
class ChatContext:
    """A conversation: an ordered list of messages, grown with the helpers below.

    The one mutable container of the data model (a conversation grows turn by turn); the
    messages in it are frozen. ``copy()`` gives an independent context.
    """

    messages: list[ChatMessage] = attrs.field(factory=list)

    @classmethod
    def from_messages(cls, messages: Iterable[ChatMessage]) -> ChatContext:
        return cls(list(messages))

    def add_message(
        self,
        *,
        role: ChatRole,
        content: str | None = None,
        tool_calls: Sequence[FunctionCall] = (),
        name: str | None = None,
    ) -> ChatMessage:
        """Append a message and return it."""
        message = ChatMessage(role=role, content=content, tool_calls=tuple(tool_calls), name=name)
        self.messages.append(message)
        return message

    def append(self, message: ChatMessage) -> ChatMessage:
        self.messages.append(message)
        return message

    def add_tool_result(
        self, call: FunctionCall | str, output: str, *, name: str | None = None
    ) -> ChatMessage:
        """Append the ``tool`` message answering ``call`` (a call or its id)."""
        if isinstance(call, FunctionCall):
            call_id, name = call.call_id, name or call.name
        else:
            call_id = call
        message = ChatMessage(role="tool", content=output, tool_call_id=call_id, name=name)
        self.messages.append(message)
        return message

    def add_tool_outcomes(self, outcomes: Iterable[_ToolResultLike]) -> list[ChatMessage]:
        """Append one ``tool`` message per outcome (anything with ``call`` and ``output``, such
        as ``ToolOutcome``), in the order given; return them."""
        return [self.add_tool_result(o.call, o.output) for o in outcomes]

    def copy(self) -> ChatContext:
        return ChatContext(list(self.messages))


UsageSource: TypeAlias = Literal["provider", "provider_partial", "estimated"]


@attrs.frozen
class CompletionUsage:
    """Token counts. Cached and reasoning counts only when known.

    ``prompt_tokens`` counts every input token, cached ones included; ``completion_tokens``
    every output token, reasoning included. ``source`` says where the counts came from:
    ``"provider"`` (the server's final report), ``"provider_partial"`` (the server's last
    report before the stream failed or was cut: a lower bound) or ``"estimated"``. A stream
    whose server reported nothing has no usage (None), never zeros.
    """

    completion_tokens: int = 0
    prompt_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    source: UsageSource = "provider"


class _EmptyList(list[Any]):
    """The type of the shared empty list (``NO_CALLS`` / ``NO_CHOICES``): empty for good.

    Every method that could add an item raises ``TypeError`` (removing ones find nothing to
    remove); copies and pickles are ordinary lists, which may then be edited. ``list.append(x,
    ...)`` called on it directly still works, as ``object.__setattr__`` does on a frozen class:
    don't.
    """

    __slots__ = ()

    def __init__(self, items: Iterable[Any] = (), /) -> None:
        # list.__init__ is not called: the list starts empty and stays so. An empty iterable
        # is accepted, so that attrs' asdict(retain_collection_types=True) can rebuild one.
        for _ in items:
            _refuse()

    def append(self, item: Any, /) -> NoReturn:
        _refuse()

    def extend(self, items: Iterable[Any], /) -> NoReturn:
        _refuse()

    def insert(self, index: SupportsIndex, item: Any, /) -> NoReturn:
        _refuse()

    def __setitem__(self, key: Any, value: Any, /) -> NoReturn:
        _refuse()

    # mypy wants __iadd__ to return what __add__ does; this one never returns.
    def __iadd__(self, items: Iterable[Any], /) -> NoReturn:  # type: ignore[misc]
        _refuse()

    def __copy__(self) -> list[Any]:
        return []

    def __deepcopy__(self, memo: object) -> list[Any]:
        return []

    def __reduce__(self) -> tuple[type[list[Any]], tuple[()]]:
        # An ordinary empty list once unpickled: no private name in the pickle.
        return (list, ())


def _refuse() -> NoReturn:
    raise TypeError(
        "this empty list is shared by every chunk and read-only; copy it (list(x)) to edit"
    )


_EMPTY: Final = _EmptyList()
#: The shared read-only empty ``tool_calls`` of a ``ChoiceDelta`` (see the module docstring).
NO_CALLS: Final = cast("list[FunctionCall]", _EMPTY)
#: The shared read-only empty ``choices`` of a ``ChatChunk`` (see the module docstring).
NO_CHOICES: Final = cast("list[Choice]", _EMPTY)


@attrs.frozen
class ChoiceDelta:
    """What one chunk adds to one choice.

    ``content`` is answer text, ``reasoning`` the model's reasoning text (``reasoning_content``
    or ``reasoning`` on the wire), kept apart. ``tool_calls`` holds only *complete* calls;
    when there are none it is a shared read-only empty list (equal to ``[]``; adding to it
    raises ``TypeError``; see the module docstring). ``provider_items`` are complete pieces
    the provider needs back on the next turn (see ``ProviderItem``); they are not visible
    output.
    """

    role: ChatRole | None = None
    content: str | None = None
    tool_calls: list[FunctionCall] = attrs.field(default=NO_CALLS)
    reasoning: str | None = None
    provider_items: tuple[ProviderItem, ...] = ()


@attrs.frozen
class Choice:
    """One choice's delta. ``finish_reason`` is set on the chunk that ends the choice, in one
    vocabulary for every protocol (``stop``, ``length``, ``tool_calls``, ``content_filter``,
    or a chat-completions server's own word); ``native_finish_reason`` is the provider's own
    word where its vocabulary differs (``end_turn``, ``MAX_TOKENS``...), None for chat
    completions, whose ``finish_reason`` already is the server's own."""

    delta: ChoiceDelta
    index: int = 0
    finish_reason: str | None = None
    native_finish_reason: str | None = None


@attrs.frozen
class ChatChunk:
    """One streamed chunk: deltas for one or more choices, and usage when the server sent it.

    A usage-only chunk's ``choices`` is a shared read-only empty list (equal to ``[]``; adding
    to it raises ``TypeError``; see the module docstring).
    """

    request_id: str
    choices: list[Choice] = attrs.field(default=NO_CHOICES)
    usage: CompletionUsage | None = None

    @property
    def delta(self) -> ChoiceDelta | None:
        """The first choice's delta, or None for a usage-only chunk."""
        return self.choices[0].delta if self.choices else None

    @property
    def text(self) -> str:
        """The first choice's content text in this chunk ("" when there is none)."""
        if self.choices:
            return self.choices[0].delta.content or ""
        return ""

    @property
    def is_visible(self) -> bool:
        """True if the chunk carries output a user sees: text, reasoning or a complete call.

        Role-only, usage-only and finish-only chunks are not visible; they do not commit an
        attempt (see the retry rule in DESIGN.md).
        """
        for choice in self.choices:
            delta = choice.delta
            if delta.content or delta.reasoning or delta.tool_calls:
                return True
        return False


@attrs.frozen
class NamedToolChoice:
    """Force the model to call the tool named ``name``."""

    name: str


ToolChoice: TypeAlias = Literal["auto", "required", "none"] | NamedToolChoice


@attrs.frozen
class LLMCapabilities:
    """What a provider's endpoint supports."""

    supports_tool_choice: bool = True
    supports_parallel_tool_calls: bool = True
    supports_reasoning: bool = False
    supports_usage_in_stream: bool = True


@attrs.frozen
class ToolSpec:
    """A tool as the model sees it: name, description and JSON schema of its parameters."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = attrs.field(
        factory=lambda: {"type": "object", "properties": {}}
    )


@attrs.frozen
class ChatRequest:
    """Everything one attempt sends; providers turn it into their wire format."""

    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None
    temperature: float | None = None
    n: int | None = None
    parallel_tool_calls: bool | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    #: The most output tokens to generate (each provider's own parameter), None: its default.
    max_tokens: int | None = None


@attrs.frozen
class CollectedChoice:
    """One choice of a response, assembled from its deltas."""

    index: int = 0
    text: str = ""
    reasoning: str = ""
    function_calls: tuple[FunctionCall, ...] = ()
    finish_reason: str | None = None
    provider_items: tuple[ProviderItem, ...] = ()


@attrs.frozen
class CollectedResponse:
    """A whole response (or, in ``StreamInterrupted.partial``, what was delivered of it).

    The top-level fields are the first choice's; ``choices`` has every choice when ``n > 1``.
    """

    text: str = ""
    reasoning: str = ""
    function_calls: tuple[FunctionCall, ...] = ()
    usage: CompletionUsage | None = None
    finish_reason: str | None = None
    request_id: str | None = None
    choices: tuple[CollectedChoice, ...] = ()
    provider_items: tuple[ProviderItem, ...] = ()

    def message(self) -> ChatMessage:
        """The assistant message to append to the conversation for the next turn: text,
        tool calls, reasoning and the provider's items, so the next request replays it
        exactly (Anthropic thinking signatures, Gemini thought signatures, Responses reasoning
        items, DeepSeek ``reasoning_content``)."""
        return ChatMessage(
            role="assistant",
            content=self.text or None,
            tool_calls=self.function_calls,
            reasoning=self.reasoning or None,
            provider_items=self.provider_items,
        )


class StreamStatus(enum.Enum):
    """How a stream ended. Exactly one per stream."""

    #: Still running (not a terminal status).
    RUNNING = "running"
    #: The source finished with ``[DONE]`` or a finish reason.
    COMPLETED = "completed"
    #: A typed error ended the stream.
    FAILED = "failed"
    #: The consumer left, called ``aclose()``, or the caller's scope was cancelled.
    CANCELLED = "cancelled"
    #: The last attempt's response ended without its terminal event (``[DONE]`` or a finish
    #: reason), whether or not output was delivered and whether or not retries ran out; the
    #: error says which (``StreamTruncatedError``, ``RetriesExhaustedError`` or
    #: ``StreamInterrupted``). Never reported as completed.
    TRUNCATED = "truncated"
    #: A held stream (``hold=True``) thrown away by ``discard()`` before it was adopted.
    DISCARDED = "discarded"


@attrs.frozen
class AttemptMetrics:
    """One attempt of a stream.

    ``backoff`` is the delay slept after this attempt before the next one (0 for the last).
    ``usage`` is what the server reported during this attempt, if anything, also when the
    attempt failed.
    """

    attempt: int
    request_id: str | None
    duration: float
    error: BaseException | None = None
    usage: CompletionUsage | None = None
    backoff: float = 0.0
    committed: bool = False
    #: The label of the provider that served the attempt (a ``FallbackLLM``'s member).
    label: str | None = None


@attrs.frozen
class LLMMetrics:
    """Metrics of one stream, delivered exactly once whatever the ending.

    ``ttft`` is the time from the stream's start to the first visible output the consumer
    received, across retries (None if none arrived). ``tokens_per_second`` is completion tokens
    over the generation window (first visible output to last chunk), None when unknown.
    """

    label: str
    request_ids: tuple[str, ...]
    status: StreamStatus
    attempts: tuple[AttemptMetrics, ...]
    ttft: float | None
    duration: float
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    tokens_per_second: float | None
    cancelled: bool
    error: BaseException | None = None
    timestamp: float = 0.0

    @property
    def request_id(self) -> str | None:
        """The request id of the last attempt."""
        return self.request_ids[-1] if self.request_ids else None
