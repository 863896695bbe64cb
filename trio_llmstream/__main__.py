"""The command line: ``python -m trio_llmstream {demo,chat,relay}``.

- ``demo`` needs nothing but the package (and its ``server`` extra): it starts the loopback
  mock server in-process and streams a scripted conversation through ``open_llm_stream``
  (live text, a retry after an injected fault, a tool loop, a two-segment turn, a metrics
  table).
- ``chat --base-url URL --model NAME [--api-key-env VAR] PROMPT`` streams one answer from a
  real OpenAI-compatible server, printing text live and the metrics at the end.
- ``relay --upstream URL --model NAME [--redis URL] [--port N]`` serves LLM runs as resumable
  server-sent events (see ``trio_llmstream.journal``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import trio

from ._exceptions import LLMStreamError
from ._models import ChatContext, LLMMetrics
from ._options import APIConnectOptions, Timeouts
from ._stream import open_llm_stream
from .providers.openai import OpenAILLM


def format_metrics_table(rows: Sequence[tuple[str, LLMMetrics]]) -> str:
    """A plain-text table of stream metrics, one row per stream."""
    header = ("stream", "status", "attempts", "ttft", "duration", "prompt", "completion",
              "tok/s", "error")
    lines = [header]
    for name, m in rows:
        lines.append((
            name,
            m.status.value,
            str(len(m.attempts)),
            "-" if m.ttft is None else f"{m.ttft * 1000:.0f} ms",
            f"{m.duration * 1000:.0f} ms",
            str(m.prompt_tokens),
            str(m.completion_tokens),
            "-" if m.tokens_per_second is None else f"{m.tokens_per_second:.0f}",
            "" if m.error is None else type(m.error).__name__,
        ))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for n, row in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


async def chat(base_url: str, model: str, api_key_env: str | None, prompt: str) -> int:
    """Stream one answer to ``prompt``; return the exit code."""
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            print(f"error: environment variable {api_key_env} is not set", file=sys.stderr)
            return 2
    ctx = ChatContext()
    ctx.add_message(role="user", content=prompt)
    options = APIConnectOptions(timeouts=Timeouts(connect=10, first_token=60, idle=30))
    async with OpenAILLM(model, base_url=base_url, api_key=api_key) as llm:
        printed = False
        try:
            async with open_llm_stream(llm, chat_ctx=ctx, conn_options=options) as stream:
                async for chunk in stream:
                    if chunk.text:
                        printed = True
                        print(chunk.text, end="", flush=True)
        except LLMStreamError as exc:
            if printed:
                print()
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print()
    if stream.metrics is not None:
        print(format_metrics_table([("chat", stream.metrics)]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trio_llmstream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="stream a scripted conversation from an in-process mock server")
    p_chat = sub.add_parser("chat", help="stream one answer from an OpenAI-compatible server")
    p_chat.add_argument("--base-url", required=True, help="e.g. http://localhost:11434/v1")
    p_chat.add_argument("--model", required=True)
    p_chat.add_argument("--api-key-env", default=None,
                        help="name of the environment variable holding the API key")
    p_chat.add_argument("prompt")
    from .journal._relay import add_relay_arguments, run_relay_command

    add_relay_arguments(sub.add_parser("relay", help="serve LLM runs as resumable SSE"))
    args = parser.parse_args(argv)
    if args.command == "relay":
        return run_relay_command(args)
    try:
        if args.command == "demo":
            try:
                import hypercorn  # noqa: F401 - the demo's loopback server needs it
            except ImportError:
                print("error: the demo needs the server extra: "
                      "pip install 'trio_llmstream[server]'", file=sys.stderr)
                return 2
            from ._demo import run_demo

            code: int = trio.run(run_demo)
            return code
        code = trio.run(chat, args.base_url, args.model, args.api_key_env, args.prompt)
        return code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
