"""trio_llmstream: a trio-native, structured-concurrency runtime for streaming LLM chat completions.

::

    async with open_llm_stream(llm, chat_ctx=ctx) as stream:
        async for chunk in stream:
            print(chunk.text, end="")

Everything public is re-exported here from private modules.
"""

from ._exceptions import APIConnectionError as APIConnectionError
from ._exceptions import APIError as APIError
from ._exceptions import APIStatusError as APIStatusError
from ._exceptions import APITimeoutError as APITimeoutError
from ._exceptions import LLMStreamError as LLMStreamError
from ._exceptions import ProviderError as ProviderError
from ._exceptions import RetriesExhaustedError as RetriesExhaustedError
from ._exceptions import SegmentError as SegmentError
from ._exceptions import StreamInterrupted as StreamInterrupted
from ._exceptions import StreamProtocolError as StreamProtocolError
from ._exceptions import StreamTruncatedError as StreamTruncatedError
from ._fallback import FallbackEntry as FallbackEntry
from ._fallback import FallbackLLM as FallbackLLM
from ._fallback import ProviderHealth as ProviderHealth
from ._llm import LLM as LLM
from ._llm import AttemptInfo as AttemptInfo
from ._llm import ChunkEmitter as ChunkEmitter
from ._models import AttemptMetrics as AttemptMetrics
from ._models import ChatChunk as ChatChunk
from ._models import ChatContext as ChatContext
from ._models import ChatMessage as ChatMessage
from ._models import ChatRequest as ChatRequest
from ._models import ChatRole as ChatRole
from ._models import Choice as Choice
from ._models import ChoiceDelta as ChoiceDelta
from ._models import CollectedChoice as CollectedChoice
from ._models import CollectedResponse as CollectedResponse
from ._models import CompletionUsage as CompletionUsage
from ._models import FunctionCall as FunctionCall
from ._models import LLMCapabilities as LLMCapabilities
from ._models import LLMMetrics as LLMMetrics
from ._models import NamedToolChoice as NamedToolChoice
from ._models import ProviderItem as ProviderItem
from ._models import StreamStatus as StreamStatus
from ._models import ToolChoice as ToolChoice
from ._models import ToolSpec as ToolSpec
from ._models import UsageSource as UsageSource
from ._options import DEFAULT_API_CONNECT_OPTIONS as DEFAULT_API_CONNECT_OPTIONS
from ._options import APIConnectOptions as APIConnectOptions
from ._options import Hedge as Hedge
from ._options import Timeouts as Timeouts
from ._segments import Segment as Segment
from ._segments import SegmentEnd as SegmentEnd
from ._segments import SegmentEvent as SegmentEvent
from ._segments import SegmentHandler as SegmentHandler
from ._segments import SegmentItem as SegmentItem
from ._segments import SegmentNotice as SegmentNotice
from ._segments import SegmentRef as SegmentRef
from ._segments import SegmentReport as SegmentReport
from ._segments import SegmentSource as SegmentSource
from ._segments import SegmentStart as SegmentStart
from ._segments import Turn as Turn
from ._segments import TurnItem as TurnItem
from ._segments import TurnReport as TurnReport
from ._segments import open_turn as open_turn
from ._segments_stages import MappedTurn as MappedTurn
from ._segments_stages import SegmentInput as SegmentInput
from ._segments_stages import TurnStage as TurnStage
from ._segments_stages import map_turn as map_turn
from ._segments_stages import open_turn_stage as open_turn_stage
from ._stream import LLMStream as LLMStream
from ._stream import open_llm_stream as open_llm_stream
from ._tools._execute import ToolCallHandle as ToolCallHandle
from ._tools._execute import ToolOptions as ToolOptions
from ._tools._execute import ToolOutcome as ToolOutcome
from ._tools._execute import ToolOutcomeKind as ToolOutcomeKind
from ._tools._function import FunctionTool as FunctionTool
from ._tools._function import ToolRegistry as ToolRegistry
from ._tools._function import check_tool_name as check_tool_name
from ._tools._function import function_tool as function_tool
from ._tools._loop import StepEnd as StepEnd
from ._tools._loop import ToolLoop as ToolLoop
from ._tools._loop import ToolLoopEvent as ToolLoopEvent
from ._tools._loop import open_tool_loop as open_tool_loop
from ._tools._schema import Param as Param
from ._tools._validate import ToolArgumentError as ToolArgumentError
from ._tools._validate import validate_arguments as validate_arguments
from .providers.anthropic import AnthropicLLM as AnthropicLLM
from .providers.gemini import GeminiLLM as GeminiLLM
from .providers.openai import OpenAILLM as OpenAILLM
from .providers.responses import OpenAIResponsesLLM as OpenAIResponsesLLM

__version__ = "0.1.0"

__all__ = [
    "APIConnectOptions",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AnthropicLLM",
    "AttemptInfo",
    "AttemptMetrics",
    "ChatChunk",
    "ChatContext",
    "ChatMessage",
    "ChatRequest",
    "ChatRole",
    "Choice",
    "ChoiceDelta",
    "ChunkEmitter",
    "CollectedChoice",
    "CollectedResponse",
    "CompletionUsage",
    "DEFAULT_API_CONNECT_OPTIONS",
    "FallbackEntry",
    "FallbackLLM",
    "FunctionCall",
    "FunctionTool",
    "GeminiLLM",
    "Hedge",
    "LLM",
    "LLMCapabilities",
    "LLMMetrics",
    "LLMStream",
    "LLMStreamError",
    "MappedTurn",
    "NamedToolChoice",
    "OpenAILLM",
    "OpenAIResponsesLLM",
    "Param",
    "ProviderError",
    "ProviderHealth",
    "ProviderItem",
    "RetriesExhaustedError",
    "Segment",
    "SegmentEnd",
    "SegmentError",
    "SegmentEvent",
    "SegmentHandler",
    "SegmentInput",
    "SegmentItem",
    "SegmentNotice",
    "SegmentRef",
    "SegmentReport",
    "SegmentSource",
    "SegmentStart",
    "StepEnd",
    "StreamInterrupted",
    "StreamProtocolError",
    "StreamStatus",
    "StreamTruncatedError",
    "Timeouts",
    "ToolArgumentError",
    "ToolCallHandle",
    "ToolChoice",
    "ToolLoop",
    "ToolLoopEvent",
    "ToolOptions",
    "ToolOutcome",
    "ToolOutcomeKind",
    "ToolRegistry",
    "ToolSpec",
    "Turn",
    "TurnItem",
    "TurnReport",
    "TurnStage",
    "UsageSource",
    "check_tool_name",
    "function_tool",
    "map_turn",
    "open_llm_stream",
    "open_tool_loop",
    "open_turn",
    "open_turn_stage",
    "validate_arguments",
]
