"""Must pass ``mypy --strict``: tools keep their function's signature (checked by
tests/test_tool_typing.py, never imported or run)."""

from typing import Any, assert_type

from trio_llmstream import (
    LLM,
    ChatChunk,
    ChatContext,
    FunctionTool,
    StepEnd,
    ToolOptions,
    ToolOutcome,
    ToolRegistry,
    function_tool,
    open_tool_loop,
)


@function_tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@function_tool(name="multiply", timeout=3)
async def mul(a: int, b: int = 2) -> int:
    """Multiply two numbers."""
    return a * b


registry = ToolRegistry()


@registry.add
def sub(a: int, b: int) -> int:
    """Subtract b from a."""
    return a - b


def shout(text: str) -> str:
    return text.upper()


assert_type(add(1, 2), int)
assert_type(add.fn(1, b=2), int)
assert_type(sub(5, 3), int)
assert_type(FunctionTool(shout, "shout")("hi"), str)
assert_type(registry.add(shout)("hi"), str)
any_tools: list[FunctionTool[..., Any]] = [add, mul, sub, *registry]


async def use(llm: LLM, ctx: ChatContext) -> None:
    assert_type(await mul(3), int)
    assert_type(await mul.fn(3, b=4), int)
    async with open_tool_loop(
        llm, ctx, [add, mul, shout], max_steps=2, temperature=0.2,
        tool_options=ToolOptions(eager=False, on_start=print), buffer_size=0,
    ) as loop:
        async for event in loop:
            assert_type(event, ChatChunk | ToolOutcome | StepEnd)
