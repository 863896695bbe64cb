"""Public helpers for testing code built on trio_llmstream.

- A scripted in-memory provider (``ScriptedLLM``) playing per-attempt chunks and faults;
- hypothesis strategies for chunk sequences and fault plans (``trio_llmstream.testing.strategies``,
  imported separately since it needs hypothesis);
- a loopback mock OpenAI-compatible server (``open_mock_server``) that plays scripted
  responses and faults over real HTTP, with builders for realistic chunk streams.
"""

from ._anthropic import AnthropicErrorEvent as AnthropicErrorEvent
from ._anthropic import AnthropicEvent as AnthropicEvent
from ._anthropic import anthropic_stream as anthropic_stream
from ._anthropic import anthropic_text_stream as anthropic_text_stream
from ._anthropic import anthropic_tool_call_stream as anthropic_tool_call_stream
from ._gemini import DEFAULT_GEMINI_MODEL as DEFAULT_GEMINI_MODEL
from ._gemini import DEFAULT_GEMINI_RESPONSE_ID as DEFAULT_GEMINI_RESPONSE_ID
from ._gemini import gemini_blocked_stream as gemini_blocked_stream
from ._gemini import gemini_error_event as gemini_error_event
from ._gemini import gemini_frame as gemini_frame
from ._gemini import gemini_text_stream as gemini_text_stream
from ._gemini import gemini_tool_call_stream as gemini_tool_call_stream
from ._gemini import gemini_usage as gemini_usage
from ._responses import DEFAULT_RESPONSE_ID as DEFAULT_RESPONSE_ID
from ._responses import ResponsesEvent as ResponsesEvent
from ._responses import responses_error_event as responses_error_event
from ._responses import responses_failed_event as responses_failed_event
from ._responses import responses_stream as responses_stream
from ._responses import responses_text_stream as responses_text_stream
from ._responses import responses_tool_call_stream as responses_tool_call_stream
from ._script import DEFAULT_COMPLETION_ID as DEFAULT_COMPLETION_ID
from ._script import DEFAULT_CREATED as DEFAULT_CREATED
from ._script import DEFAULT_MODEL as DEFAULT_MODEL
from ._script import ChunkEvent as ChunkEvent
from ._script import Delay as Delay
from ._script import DoneEvent as DoneEvent
from ._script import DropConnection as DropConnection
from ._script import EndStream as EndStream
from ._script import ErrorEvent as ErrorEvent
from ._script import KeepAlive as KeepAlive
from ._script import MalformedEvent as MalformedEvent
from ._script import MockResponse as MockResponse
from ._script import RawBytes as RawBytes
from ._script import ResponseLike as ResponseLike
from ._script import ServerFault as ServerFault
from ._script import Stall as Stall
from ._script import StreamStep as StreamStep
from ._script import chat_chunk as chat_chunk
from ._script import error_response as error_response
from ._script import inject_fault as inject_fault
from ._script import json_response as json_response
from ._script import sse_response as sse_response
from ._script import text_stream as text_stream
from ._script import tool_call_stream as tool_call_stream
from ._script import usage_chunk as usage_chunk
from ._scripted import Fault as Fault
from ._scripted import FaultKind as FaultKind
from ._scripted import ScriptedAttempt as ScriptedAttempt
from ._scripted import ScriptedLLM as ScriptedLLM
from ._scripted import text_chunks as text_chunks
from ._server import Handler as Handler
from ._server import MockLLMServer as MockLLMServer
from ._server import RecordedRequest as RecordedRequest
from ._server import ResponseOutcome as ResponseOutcome
from ._server import open_mock_server as open_mock_server

__all__ = [
    "AnthropicErrorEvent",
    "AnthropicEvent",
    "ChunkEvent",
    "DEFAULT_COMPLETION_ID",
    "DEFAULT_CREATED",
    "DEFAULT_GEMINI_MODEL",
    "DEFAULT_GEMINI_RESPONSE_ID",
    "DEFAULT_MODEL",
    "DEFAULT_RESPONSE_ID",
    "Delay",
    "DoneEvent",
    "DropConnection",
    "EndStream",
    "ErrorEvent",
    "Fault",
    "FaultKind",
    "Handler",
    "KeepAlive",
    "MalformedEvent",
    "MockLLMServer",
    "MockResponse",
    "RawBytes",
    "RecordedRequest",
    "ResponseLike",
    "ResponseOutcome",
    "ResponsesEvent",
    "ScriptedAttempt",
    "ScriptedLLM",
    "ServerFault",
    "Stall",
    "StreamStep",
    "anthropic_stream",
    "anthropic_text_stream",
    "anthropic_tool_call_stream",
    "chat_chunk",
    "error_response",
    "gemini_blocked_stream",
    "gemini_error_event",
    "gemini_frame",
    "gemini_text_stream",
    "gemini_tool_call_stream",
    "gemini_usage",
    "inject_fault",
    "json_response",
    "open_mock_server",
    "responses_error_event",
    "responses_failed_event",
    "responses_stream",
    "responses_text_stream",
    "responses_tool_call_stream",
    "sse_response",
    "text_chunks",
    "text_stream",
    "tool_call_stream",
    "usage_chunk",
]
