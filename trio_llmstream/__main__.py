"""The command line: ``python -m trio_llmstream`` (or the ``trio-llmstream`` console script).

- ``demo``: starts the loopback mock server in-process and streams a scripted conversation
  (live text, a retry after an injected fault, a tool loop, a two-segment turn, a metrics
  table). Needs the ``server`` extra.
- ``chat``: streams one answer from an OpenAI-compatible server. The answer alone goes to
  stdout; retries (as they happen), errors and the metrics table go to stderr.
- ``relay``: serves LLM runs as resumable server-sent events (see ``trio_llmstream.journal``).
  Needs the ``server`` extra, and the ``redis`` extra with ``--redis``.

All argument parsing lives here; the library modules take objects (an ``LLM``, a journal), not
command-line options.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import ssl
import sys
from collections.abc import Sequence

import trio

from . import __version__
from ._demo import format_metrics_table
from ._exceptions import LLMStreamError
from ._llm import LLM
from ._models import ChatContext
from ._options import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, Timeouts
from ._stream import open_llm_stream
from ._telemetry import install_console_exporters

__all__ = ["build_parser", "chat", "main"]

_DESCRIPTION = """\
A trio-native runtime for streaming LLM chat completions: try it with 'demo' (no network, no
key), stream from a real server with 'chat', serve resumable runs with 'relay'. Run
'%(prog)s COMMAND --help' for a command's options.
"""

_CHAT_DESCRIPTION = """\
Stream one answer to PROMPT from an OpenAI-compatible server.

The answer alone is written to stdout (so '> answer.txt' keeps just the text); retries, as
they happen, errors and the metrics table go to stderr.

API key: read from the environment variable OPENAI_API_KEY, or from the one named by
--api-key-env. If the variable is unset, no key is sent. The key is sent, as a bearer token,
to whatever --base-url is given: use it only with servers you trust with that key.
"""

_RELAY_DESCRIPTION = """\
Serve LLM runs as resumable server-sent events: POST /v1/runs starts a run, GET
/v1/runs/ID/events streams it (resumable with Last-Event-ID). Runs go to the OpenAI-compatible
server --upstream, and spend its API key: whoever may start runs spends it.

Secure set-up: put one or more random tokens, comma-separated, in an environment variable and
name it with --auth-token-env; then POST /v1/runs needs 'Authorization: Bearer <token>'.
Without it the relay listens on loopback only (--insecure-no-auth to listen elsewhere anyway).
A run's events URL (returned by the POST) carries a read token: give it to the browser.

SIGTERM drains: new runs get 503, running runs go on to their end for up to --drain-timeout
seconds (then are cancelled), followers are served; a second signal stops at once.

API key for the upstream: as for 'chat' (the provider's usual variable, or --api-key-env),
sent to --upstream.
"""

_KEY_HELP = (
    "name of the environment variable holding the API key (default: the provider's own: "
    "OPENAI_API_KEY for openai and responses, ANTHROPIC_API_KEY for anthropic, "
    "GEMINI_API_KEY then GOOGLE_API_KEY for gemini; when unset no key is sent)"
)

# --provider: the wire protocol, its class (imported when used) and its default base URL.
_PROVIDERS = {
    "openai": ("trio_llmstream.providers.openai", "OpenAILLM", "https://api.openai.com/v1"),
    "responses": (
        "trio_llmstream.providers.responses", "OpenAIResponsesLLM", "https://api.openai.com/v1"
    ),
    "anthropic": (
        "trio_llmstream.providers.anthropic", "AnthropicLLM", "https://api.anthropic.com"
    ),
    "gemini": (
        "trio_llmstream.providers.gemini",
        "GeminiLLM",
        "https://generativelanguage.googleapis.com/v1beta",
    ),
}


def _make_llm(provider: str, model: str, base_url: str | None, api_key: str | None) -> LLM:
    """The ``LLM`` for ``--provider``; ``api_key`` None lets it read its usual variable."""
    import importlib

    module, name, default_url = _PROVIDERS[provider]
    cls = getattr(importlib.import_module(module), name)
    llm: LLM = cls(model, base_url=base_url or default_url, api_key=api_key)
    return llm


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written; every option's help ends with its default, if it has
    one (required options and options without a default say nothing more)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if (
            "%(default)" not in help_text
            and action.option_strings
            and not action.required
            and action.default is not None
            and action.default is not argparse.SUPPRESS
            and not isinstance(action, argparse._HelpAction | argparse._VersionAction)
        ):
            help_text += " (default: %(default)s)"
        return help_text


def _prog() -> str:
    # "python -m trio_llmstream" runs this file as __main__.py; the console script's argv[0]
    # is its own name (trio-llmstream).
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name in ("", "__main__.py", "-c"):
        return "python -m trio_llmstream"
    return name


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the command line (``prog`` defaults to how it was invoked)."""
    parser = argparse.ArgumentParser(
        prog=prog or _prog(), description=_DESCRIPTION, formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of:")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=description,
                              formatter_class=_HelpFormatter)

    def server_options(p: argparse.ArgumentParser, url_flag: str, what: str) -> None:
        # The server to talk to: which protocol, where, which model, which key.
        p.add_argument("--provider", choices=sorted(_PROVIDERS), default="openai",
                       help="the wire protocol: openai (chat completions, and every "
                       "OpenAI-compatible server), responses (OpenAI Responses), anthropic "
                       "(Messages), gemini (streamGenerateContent)")
        p.add_argument(url_flag, default=None, metavar="URL",
                       help=f"the {what}'s base URL, e.g. http://localhost:11434/v1 (default: "
                       "the provider's public API)")
        p.add_argument("--model", required=True, metavar="NAME", help="the model to use")
        p.add_argument("--api-key-env", default=None, metavar="VAR", help=_KEY_HELP)

    command(
        "demo",
        "a scripted conversation against an in-process mock server (no network, no key)",
        "Stream a scripted conversation from an in-process loopback mock server: live text, "
        "a retried dropped connection, a tool loop, a two-segment turn and a metrics table. "
        "Needs the server extra: pip install 'trio_llmstream[server]'.",
    )

    chat_p = command("chat", "stream one answer from an OpenAI-compatible server",
                     _CHAT_DESCRIPTION)
    server_options(chat_p, "--base-url", "server")
    chat_p.add_argument("--max-retry", type=int, default=DEFAULT_API_CONNECT_OPTIONS.max_retry,
                        metavar="N",
                        help="retries after the first attempt, only before any text arrived")
    chat_p.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True,
                        help="print the metrics table to stderr at the end")
    chat_p.add_argument("--otel", action="store_true",
                        help="print OpenTelemetry spans and metrics (GenAI conventions) to "
                        "stderr; needs the otel extra and opentelemetry-sdk")
    chat_p.add_argument("prompt", metavar="PROMPT", help="the user message")

    relay_p = command("relay", "serve LLM runs as resumable server-sent events",
                      _RELAY_DESCRIPTION)
    server_options(relay_p, "--upstream", "upstream server")
    journal_g = relay_p.add_mutually_exclusive_group()
    journal_g.add_argument("--redis", default=None, metavar="URL",
                           help="keep the journal in Redis, e.g. redis://127.0.0.1:6379/0, so "
                           "several relays share runs (needs the redis extra; default: in "
                           "memory)")
    journal_g.add_argument("--redis-cluster", default=None, metavar="URL",
                           help="keep the journal in a Redis Cluster (URL of any node)")
    relay_p.add_argument("--auth-token-env", default=None, metavar="NAME",
                         help="environment variable holding the bearer tokens (comma-"
                         "separated) that POST /v1/runs needs")
    relay_p.add_argument("--insecure-no-auth", action="store_true",
                         help="listen on a non-loopback --host without --auth-token-env: "
                         "anyone who reaches it spends the upstream key")
    relay_p.add_argument("--host", default="127.0.0.1",
                         help="the address to listen on (not loopback: needs --auth-token-env)")
    relay_p.add_argument("--port", type=int, default=8080, help="the port to listen on")
    relay_p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                         help="let pages from ORIGIN (e.g. https://app.example.com) call the "
                         "relay (CORS); repeatable; default: no other origin")
    relay_p.add_argument("--max-runs", type=_positive_int, default=64, metavar="N",
                         help="runs in progress in this process at most (then 503)")
    relay_p.add_argument("--max-runs-per-client", type=_positive_int, default=None,
                         metavar="N",
                         help="runs in progress per client (token) at most (then 429)")
    relay_p.add_argument("--max-entries", type=_positive_int, default=None, metavar="N",
                         help="entries per run at most (a longer run ends with an error; "
                         "default: the journal's)")
    relay_p.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                         help="on SIGTERM, let running runs end for this long before "
                         "cancelling them")
    relay_p.add_argument("--slow-client-timeout", type=float, default=10.0, metavar="SECONDS",
                         help="end an events response whose client has not read for this "
                         "long (it resumes by Last-Event-ID)")
    relay_p.add_argument("--abandon-after", type=float, default=10.0, metavar="SECONDS",
                         help="end the followers of a run whose writer is silent this long")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


class _UsageError(Exception):
    """A mistake in the command line's input: one line on stderr, exit code 2."""


def _api_key(variable: str | None) -> str | None:
    """The key in the environment variable named by ``--api-key-env``; None without the
    option (the provider then reads OPENAI_API_KEY itself)."""
    if not variable:
        return None
    key = os.environ.get(variable)
    if not key:
        raise _UsageError(f"environment variable {variable} is not set")
    return key


# -- chat ------------------------------------------------------------------------------------


def _explain(exc: BaseException, base_url: str) -> str | None:
    """One line naming a cause the exception's own message hides, or None.

    A TLS handshake against a plain-HTTP server fails with an opaque SSL error ("wrong version
    number", "record layer failure"); plain HTTP against a TLS server gets a connection closed
    without a response, or garbage.
    """
    import httpx

    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    https = base_url.startswith("https://")
    for cause in chain:
        if https and isinstance(cause, ssl.SSLError):
            return (f"TLS handshake with {base_url} failed ({cause.reason or cause}); if the "
                    "server speaks plain HTTP, use an http:// URL")
        if not https and isinstance(
            cause, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError
        ):
            # Connected, then cut before any answer: what a TLS server does with plain HTTP
            # (it resets or closes the connection, or answers with a TLS alert).
            return (f"the connection to {base_url} failed before any answer; if the server "
                    "speaks TLS, use an https:// URL")
    return None


class _Answer:
    """Writes the answer to stdout; stops writing, quietly, once stdout's reader has gone."""

    def __init__(self) -> None:
        self.written = False
        self.pipe_closed = False

    def write(self, text: str) -> None:
        if self.pipe_closed:
            return
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            self.pipe_closed = True
            _silence_stdout()
            raise
        self.written = True


def _silence_stdout() -> None:
    # The reader of our stdout is gone (`| head -c 10`): point the descriptor at /dev/null,
    # so that the interpreter's final flush at exit does not fail again and print a traceback.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


async def chat(
    base_url: str | None,
    model: str,
    api_key_env: str | None,
    prompt: str,
    *,
    max_retry: int = DEFAULT_API_CONNECT_OPTIONS.max_retry,
    metrics: bool = True,
    provider: str = "openai",
) -> int:
    """Stream one answer to ``prompt``; return the exit code (0, 1 on an error of the stream,
    2 on a usage error).

    The answer goes to stdout; errors and the metrics table to stderr. If stdout's reader goes
    away (a closed pipe), the stream is cancelled and 0 is returned.
    """
    try:
        api_key = _api_key(api_key_env)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ctx = ChatContext()
    ctx.add_message(role="user", content=prompt)
    options = APIConnectOptions(
        max_retry=max_retry, timeouts=Timeouts(connect=10, first_token=60, idle=30)
    )
    answer = _Answer()
    async with _make_llm(provider, model, base_url, api_key) as llm:
        try:
            async with open_llm_stream(llm, chat_ctx=ctx, conn_options=options) as stream:
                async for chunk in stream:
                    if chunk.text:
                        answer.write(chunk.text)
        except BrokenPipeError:
            return 0  # leaving the block cancelled the stream: nobody reads the answer
        except LLMStreamError as exc:
            if answer.written:
                with contextlib.suppress(BrokenPipeError):
                    answer.write("\n")
            # A cause worth naming only if nothing at all came back (else it spoke HTTP).
            reason = None if answer.written else _explain(exc, base_url or "")
            suffix = f" ({reason})" if reason else ""
            print(f"error: {type(exc).__name__}: {exc}{suffix}", file=sys.stderr)
            return 1
        try:
            answer.write("\n")
        except BrokenPipeError:
            return 0
    if metrics and stream.metrics is not None:
        print(format_metrics_table([("chat", stream.metrics)]), file=sys.stderr)
    return 0


def _run_chat(args: argparse.Namespace) -> int:
    # The library's log records at INFO and above (each retry among them, as it is decided)
    # on stderr, one line each.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("trio_llmstream")
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    shutdown_otel = install_console_exporters() if args.otel else None
    try:
        code: int = trio.run(
            lambda: chat(args.base_url, args.model, args.api_key_env, args.prompt,
                         provider=args.provider,
                         max_retry=args.max_retry, metrics=args.metrics)
        )
        return code
    finally:
        if shutdown_otel is not None:
            shutdown_otel()  # flushes the spans and metrics of the stream just run
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# -- relay -----------------------------------------------------------------------------------


def _relay_tokens(variable: str) -> list[str]:
    """The bearer tokens in the variable named by ``--auth-token-env`` (comma-separated)."""
    tokens = [t.strip() for t in os.environ.get(variable, "").split(",") if t.strip()]
    if not tokens:
        raise _UsageError(f"environment variable {variable} (--auth-token-env) holds no token")
    return tokens


def _run_relay(args: argparse.Namespace) -> int:
    from .journal import JournalError, run_relay
    from .journal._relay import bearer_authorizer, check_origin, is_loopback

    if missing := _missing_extra("hypercorn", "server", "relay"):
        return missing
    redis_url = args.redis or args.redis_cluster
    if redis_url and (missing := _missing_extra("coredis", "redis", "relay --redis")):
        return missing
    try:
        api_key = _api_key(args.api_key_env)
        tokens = _relay_tokens(args.auth_token_env) if args.auth_token_env else None
        if tokens is None and not args.insecure_no_auth and not is_loopback(args.host):
            raise _UsageError(
                f"refusing to listen on {args.host} without authentication: anyone reaching "
                "it would spend the upstream's API key; set --auth-token-env NAME (or "
                "--insecure-no-auth)"
            )
        options = {
            "authorize": None if tokens is None else bearer_authorizer(tokens),
            "allow_origins": tuple(check_origin(o) for o in args.allow_origin),
            "max_runs": args.max_runs,
            "max_runs_per_client": args.max_runs_per_client,
            "abandon_after": args.abandon_after,
            "slow_client_timeout": args.slow_client_timeout,
        }
        if args.drain_timeout < 0 or not args.slow_client_timeout > 0:
            raise _UsageError("--drain-timeout must be >= 0 and --slow-client-timeout > 0")
    except (_UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    del tokens
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    async def serve() -> None:
        async with _make_llm(args.provider, args.model, args.upstream, api_key) as llm:
            await run_relay(llm, redis_url=redis_url, redis_cluster=bool(args.redis_cluster),
                            host=args.host, port=args.port, max_entries=args.max_entries,
                            drain_timeout=args.drain_timeout, **options)

    try:
        trio.run(serve)
    except (JournalError, OSError, BaseExceptionGroup) as exc:
        leaf = _first_leaf(exc)
        if not isinstance(leaf, JournalError | OSError):
            raise
        print(f"error: {type(leaf).__name__}: {leaf}", file=sys.stderr)
        return 1
    return 0


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


# -- main ------------------------------------------------------------------------------------


def _missing_extra(module: str, extra: str, command: str) -> int:
    """0 if ``module`` imports; else print one line naming the extra to install, return 2."""
    try:
        __import__(module)
    except ImportError:
        print(f"error: {command} needs the {extra} extra: "
              f"pip install 'trio_llmstream[{extra}]'", file=sys.stderr)
        return 2
    return 0


def _run_demo() -> int:
    if missing := _missing_extra("hypercorn", "server", "demo"):
        return missing
    from ._demo import run_demo

    code: int = trio.run(run_demo)
    return code


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = build_parser(prog).parse_args(argv)
    try:
        if args.command == "demo":
            return _run_demo()
        if args.command == "chat":
            return _run_chat(args)
        return _run_relay(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
