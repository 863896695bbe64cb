"""Must fail ``mypy --strict`` on exactly the lines marked ``# E: <error code>`` (checked by
tests/test_tool_typing.py, never imported or run)."""

from trio_llmstream import (
    LLM,
    ChatContext,
    FunctionTool,
    ToolRegistry,
    function_tool,
    open_tool_loop,
)


@function_tool
def add(a: int, b: int) -> int:
    return a + b


@function_tool(name="multiply")
async def mul(a: int, b: int = 2) -> int:
    return a * b


registry = ToolRegistry()


@registry.add
def sub(a: int, b: int) -> int:
    return a - b


add.fn("1", "2")  # E: arg-type
add("1", "2")  # E: arg-type
add(1)  # E: call-arg
add(1, 2, c=3)  # E: call-arg
sub("5", 3)  # E: arg-type
text: str = add(1, 2)  # E: assignment
tool: FunctionTool[[str], str] = add  # E: assignment


async def use(llm: LLM, ctx: ChatContext) -> None:
    await mul("3")  # E: arg-type
    async with open_tool_loop(llm, ctx, [add], temprature=0.2) as loop:  # E: call-arg
        del loop
    async with open_tool_loop(llm, ctx, [add], max_steps="2") as loop:  # E: arg-type
        del loop
