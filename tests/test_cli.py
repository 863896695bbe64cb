"""The command line, as a newcomer meets it: help and version, the demo, ``chat`` against the
loopback mock server in a real subprocess (stdout is the answer alone, retries and metrics on
stderr, a closed pipe, a TLS/plain-HTTP mismatch), and missing extras."""

from __future__ import annotations

import argparse
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import trio_llmstream
from trio_llmstream.__main__ import build_parser, chat
from trio_llmstream._demo import CHUNK_DELAY, run_demo
from trio_llmstream.testing import (
    DropConnection,
    ResponseOutcome,
    error_response,
    inject_fault,
    open_mock_server,
    text_stream,
)

ANSWER = "Hi there, friend. This is the whole answer."


def run_cli(
    *args: str, prelude: str = "", argv0: str = "__main__.py"
) -> subprocess.CompletedProcess[str]:
    """Run the command line in a fresh interpreter, after ``prelude`` (Python code, e.g. one
    that makes an import fail) with ``sys.argv[0]`` set to ``argv0``."""
    code = (
        f"{prelude}\nimport sys\nsys.argv[0] = {argv0!r}\n"
        "from trio_llmstream.__main__ import main\nsys.exit(main())"
    )
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


async def run_cli_async(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``python -m trio_llmstream ARGS`` without blocking the trio loop (the mock server runs
    in this process)."""
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-W", "error", "-m", "trio_llmstream", *args],
            capture_stdout=True, capture_stderr=True, check=False,
        )


def metrics_rows(table: str) -> dict[str, dict[str, str]]:
    """The rows of a metrics table, by stream name, as {column: cell}."""
    lines = [line for line in table.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.startswith("stream "))
    header = lines[start].split()
    rows = {}
    for line in lines[start + 2:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) < len(header) - 1:
            break
        rows[cells[0]] = dict(zip(header, cells, strict=False))
    return rows


# -- help, version, console script ---------------------------------------------------------------


def test_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trio_llmstream", "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"python -m trio_llmstream {trio_llmstream.__version__}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


@pytest.mark.parametrize("command", [[], ["demo"], ["chat"], ["relay"]])
def test_help_is_plain_text_and_describes_every_option(command: list[str]) -> None:
    proc = run_cli(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert proc.stdout.startswith("usage: python -m trio_llmstream")
    # No reStructuredText markup leaks into the help.
    for markup in ("``", ":func:", ":class:", ":meth:", ".. "):
        assert markup not in text, markup
    parser = build_parser("prog")
    if command:
        parser = _subparsers(parser)[command[0]]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{action.dest} has no help"
        if (action.option_strings and not action.required and action.default is not None
                and not isinstance(action, argparse._VersionAction)):
            assert f"(default: {action.default})" in " ".join(text.split()), action.dest


def test_top_level_help_lists_every_command() -> None:
    text = run_cli("--help").stdout
    for name, sub in _subparsers(build_parser("prog")).items():
        assert re.search(rf"^\s+{name}\s+\S", text, re.M), name
        assert sub.description


def test_chat_help_says_where_the_key_comes_from_and_goes() -> None:
    text = " ".join(run_cli("chat", "--help").stdout.split())
    assert "OPENAI_API_KEY" in text
    assert "sent, as a bearer token, to whatever --base-url is given" in text


def test_console_script_usage_names_itself() -> None:
    proc = run_cli("chat", argv0="/opt/venv/bin/trio-llmstream")
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: trio-llmstream chat ")
    assert run_cli("--version", argv0="/opt/venv/bin/trio-llmstream").stdout.strip() == (
        f"trio-llmstream {trio_llmstream.__version__}"
    )


# -- missing extras --------------------------------------------------------------------------


def block(*modules: str) -> str:
    """Prelude code making ``import MODULE`` fail, as if the extra were not installed."""
    return "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)


@pytest.mark.parametrize(
    ("args", "blocked", "extra"),
    [
        (["demo"], "hypercorn", "server"),
        (["relay", "--upstream", "http://127.0.0.1:9/v1", "--model", "m"], "hypercorn", "server"),
        (["relay", "--upstream", "http://127.0.0.1:9/v1", "--model", "m",
          "--redis", "redis://127.0.0.1:9/0"], "coredis", "redis"),
    ],
)
def test_a_missing_extra_is_one_line_and_exit_2(args: list[str], blocked: str, extra: str) -> None:
    proc = run_cli(*args, prelude=block(blocked))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"pip install 'trio_llmstream[{extra}]'" in proc.stderr
    assert proc.stdout == ""


# -- the demo ---------------------------------------------------------------------------------


async def test_demo_runs_and_shows_everything() -> None:
    out: list[str] = []
    assert await run_demo(out.append) == 0
    text = "".join(out)
    assert "Hello! I stream token by token" in text
    assert "retrying in" in text  # the retry, shown as it happened
    assert text.count("Retries happen only before any text reaches you") == 1  # no repeat
    assert "[tool] get_weather" in text
    assert "-> result" in text
    assert "handler: answer delivered" in text  # the two-segment turn
    assert "handler: follow-up playback finished" in text
    rows = metrics_rows(text.split("metrics, one record per stream:", 1)[1])
    assert set(rows) == {"hello", "retry", "fallback", "tool step 1", "tool step 2"}
    assert "moving on to backup" in text  # the fallback, shown as it happened
    assert "attempts served by: primary -> backup" in text
    assert all(row["status"] == "completed" for row in rows.values())


async def test_demo_tokens_per_second_are_real_rates() -> None:
    # Every demo stream is paced at CHUNK_DELAY per chunk, and the mock counts one token per
    # chunk: n tokens arrive over at least (n - 1) delays, so no real rate can exceed
    # 2 / CHUNK_DELAY. The tool-call step showed 23,766 tok/s: its only visible output is the
    # complete call, at the very end, so the runtime's window was a fraction of a millisecond.
    # It has no real figure to show.
    out: list[str] = []
    await run_demo(out.append)
    rows = metrics_rows("".join(out).split("metrics, one record per stream:", 1)[1])
    assert rows["tool step 1"]["tok/s"] == "-"
    for name in ("hello", "retry", "tool step 2"):
        assert 0 < float(rows[name]["tok/s"]) <= 2 / CHUNK_DELAY, (name, rows[name])


def test_module_entry_point_runs_the_demo() -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "trio_llmstream", "demo"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "metrics, one record per stream" in proc.stdout


# -- chat -------------------------------------------------------------------------------------


async def test_chat_stdout_is_the_answer_alone() -> None:
    async with open_mock_server(text_stream(ANSWER, delay=0.001)) as server:
        proc = await run_cli_async("chat", "--base-url", server.base_url, "--model", "m", "hi")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == ANSWER + "\n"  # `chat ... > answer.txt` keeps the text
    rows = metrics_rows(proc.stderr.decode())
    assert rows["chat"]["status"] == "completed"
    assert server.chat_requests[0].json["messages"] == [{"role": "user", "content": "hi"}]


async def test_chat_shows_retries_on_stderr_as_they_happen() -> None:
    async with open_mock_server(
        inject_fault(text_stream(ANSWER), DropConnection(), after=1),
        text_stream(ANSWER),
    ) as server:
        proc = await run_cli_async("chat", "--base-url", server.base_url, "--model", "m", "hi",
                                   "--no-metrics")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == ANSWER + "\n"
    err = proc.stderr.decode().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("trio_llmstream: ")
    assert "attempt 1 failed (APIConnectionError" in err[0]
    assert "retrying in" in err[0]
    assert len(server.chat_requests) == 2


async def test_chat_errors_are_one_line_on_stderr() -> None:
    async with open_mock_server(error_response(401, "bad key")) as server:
        proc = await run_cli_async("chat", "--base-url", server.base_url, "--model", "m", "hi")
    assert proc.returncode == 1
    assert proc.stdout == b""
    err = proc.stderr.decode().splitlines()
    assert err[0] == "error: APIStatusError: HTTP 401: bad key"
    assert len(err) <= 5  # and the metrics table of the failed stream: no traceback
    assert "Traceback" not in proc.stderr.decode()


async def test_chat_exits_quietly_when_stdout_is_closed() -> None:
    # `chat ... | head -c 10`: the reader leaves after ten bytes, mid-answer.
    long_answer = "word " * 400
    async with open_mock_server(text_stream(long_answer, delay=0.005)) as server:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-W", "error", "-m", "trio_llmstream", "chat",
             "--base-url", server.base_url, "--model", "m", "hi"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        try:
            with trio.fail_after(60):
                head = b""
                while len(head) < 10:
                    head += await process.stdout.receive_some(10 - len(head))
                await process.stdout.aclose()
                err = b""
                while data := await process.stderr.receive_some():
                    err += data
                await process.wait()
                outcome = await server.chat_requests[0].wait_finished()
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
            await process.stderr.aclose()
    assert head == long_answer.encode()[:10]
    assert process.returncode == 0, err.decode()
    assert err == b""
    # The stream was cancelled at once, not played to the end into a closed pipe.
    assert outcome is ResponseOutcome.DISCONNECTED


async def test_chat_names_https_to_a_plain_http_server() -> None:
    async with open_mock_server() as server:
        url = server.base_url.replace("http://", "https://")
        proc = await run_cli_async("chat", "--base-url", url, "--model", "m", "hi",
                                   "--max-retry", "0")
    assert proc.returncode == 1
    err = proc.stderr.decode().splitlines()
    assert err[0].startswith("error: APIConnectionError: ")
    assert f"TLS handshake with {url} failed" in err[0]
    assert "use an http:// URL" in err[0]
    assert "Traceback" not in proc.stderr.decode()


@asynccontextmanager
async def tls_server(tmp_path: Path) -> AsyncIterator[int]:
    """A TLS listener on loopback (self-signed certificate) that completes no HTTP: enough
    for a client speaking plain HTTP to it."""
    openssl = shutil.which("openssl")
    if openssl is None:  # pragma: no cover - .ci/run installs it
        pytest.fail("this test needs the openssl command (apt-get install openssl) to make a "
                    "certificate", pytrace=False)
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError:
            pass  # the client spoke plain HTTP: the handshake fails, as expected
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_ssl_over_tcp, handle, 0, context)
        yield listeners[0].transport_listener.socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def test_chat_names_http_to_a_tls_server(tmp_path: Path) -> None:
    async with tls_server(tmp_path) as port:
        url = f"http://127.0.0.1:{port}/v1"
        proc = await run_cli_async("chat", "--base-url", url, "--model", "m", "hi",
                                   "--max-retry", "0")
    assert proc.returncode == 1
    err = proc.stderr.decode().splitlines()
    assert err[0].startswith("error: APIConnectionError: ")
    assert (f"the connection to {url} failed before any answer; if the server speaks TLS, "
            "use an https:// URL") in err[0]


async def test_chat_missing_key_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    assert await chat("http://127.0.0.1:9/v1", "m", "NO_SUCH_KEY_VAR", "x") == 2
    assert "NO_SUCH_KEY_VAR" in capsys.readouterr().err


def test_demo_does_not_import_the_command_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, trio_llmstream._demo; "
         "sys.exit('trio_llmstream.__main__' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr


async def test_chat_otel_prints_the_stream_span_and_metrics_on_stderr() -> None:
    async with open_mock_server(text_stream(ANSWER, delay=0.001)) as server:
        proc = await run_cli_async("chat", "--base-url", server.base_url, "--model", "m", "hi",
                                   "--no-metrics", "--otel")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == ANSWER + "\n"  # telemetry never mixes into the answer
    err = proc.stderr.decode()
    assert '"name": "chat m"' in err
    assert '"gen_ai.operation.name": "chat"' in err
    assert "gen_ai.client.operation.duration" in err
    assert "gen_ai.client.token.usage" in err


@pytest.mark.parametrize(
    ("provider", "script", "path"),
    [
        ("anthropic", "anthropic_text_stream", "/v1/messages"),
        ("responses", "responses_text_stream", "/v1/responses"),
        ("gemini", "gemini_text_stream", "/v1/models/m:streamGenerateContent"),
        ("openai", "text_stream", "/v1/chat/completions"),
    ],
)
async def test_chat_speaks_every_protocol(provider: str, script: str, path: str) -> None:
    import trio_llmstream.testing as testing

    async with open_mock_server(getattr(testing, script)(ANSWER)) as server:
        base = server.origin if provider == "anthropic" else server.base_url
        proc = await run_cli_async("chat", "--provider", provider, "--base-url", base,
                                   "--model", "m", "hi", "--no-metrics")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == ANSWER + "\n"
    [request] = server.chat_requests
    assert request.path == path
