"""The API key never leaks, even when the upstream echoes it back.

Loopback upstreams echo the request's Authorization header (raw, URL-encoded, JSON-escaped,
upper-cased) in a JSON error, a plain-text error, an SSE ``event: error``, an in-stream
``{"error": ...}`` chunk and response headers. Every surface is checked: the exception (str,
repr, args, attributes, notes, the cause chain), ``RetriesExhaustedError.errors``,
``StreamInterrupted``, metrics, log records at DEBUG, the journal's terminal entry, the relay's
``event: end`` and log (in-process and as a process) and ``chat``'s stderr. A property checks
the redactor against random keys echoed at random places in random spellings.
"""

from __future__ import annotations

import html
import json
import logging
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from functools import partial

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from journal.redis_server import free_port
from journal.sse_client import check_stream, read_events
from providers.hostile_server import Request, Send, respond, serve

from trio_llmstream import (
    APIConnectOptions,
    APIError,
    APIStatusError,
    ChatContext,
    LLMMetrics,
    LLMStreamError,
    OpenAILLM,
    ProviderError,
    RetriesExhaustedError,
    StreamInterrupted,
    StreamProtocolError,
    open_llm_stream,
)
from trio_llmstream.journal import MemoryJournal, RelayApp, encode_entry, record, serve_relay
from trio_llmstream.providers._redact import REDACTED, Redactor

KEY = "sk-proj-Abc/def+GHI_jkl0123456789xyz"
FAST = APIConnectOptions(max_retry=1, retry_interval=0.001, max_retry_interval=0.001)


def spellings(key: str) -> list[str]:
    """What would count as the key having leaked (compared case-insensitively)."""
    forms = {
        key,
        urllib.parse.quote(key, safe=""),
        urllib.parse.quote_plus(key),
        json.dumps(key)[1:-1].replace("/", "\\/"),
        html.escape(key),
        "".join(f"\\u{ord(c):04x}" for c in key),
    }
    return sorted(f.lower() for f in forms if len(f) >= 8)


def assert_clean(text: str, key: str = KEY) -> None:
    lowered = text.lower()
    for form in spellings(key):
        assert form not in lowered, f"the key leaked ({form!r}) in: {text[:400]}"


def exception_texts(exc: BaseException) -> Iterator[str]:
    """Every text an exception shows: str, repr, args, attributes, notes, its whole chain."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield str(e)
        yield repr(e)
        yield repr(e.args)
        yield repr(getattr(e, "__notes__", None))
        yield repr({k: v for k, v in vars(e).items() if k != "partial"})
        if isinstance(e, RetriesExhaustedError):
            todo.extend(e.errors)
        if isinstance(e, StreamInterrupted):
            todo.append(e.cause)
            yield repr(e.partial)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)


def metrics_texts(metrics: LLMMetrics | None) -> Iterator[str]:
    assert metrics is not None
    yield repr(metrics)
    if metrics.error is not None:
        yield from exception_texts(metrics.error)
    for attempt in metrics.attempts:
        yield repr(attempt)
        if attempt.error is not None:
            yield from exception_texts(attempt.error)


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every record at INFO or above, and every record of the library's own loggers.

    httpcore's DEBUG trace (``receive_response_headers.complete return_value=...``) prints
    response headers verbatim: an application that turns on httpcore's debug logging sees
    whatever the upstream sends, which is outside what a provider can scrub.
    """
    return "\n".join(
        r.getMessage()
        + (repr(r.exc_info[1]) if r.exc_info and r.exc_info[1] is not None else "")
        for r in caplog.records
        if r.levelno >= logging.INFO or r.name.startswith("trio_llmstream")
    )


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content="hi")
    return c


# -- the echoing upstream ----------------------------------------------------------------------


def _sse(*blocks: bytes) -> bytes:
    return b"".join(blocks)


def _chunk(content: str) -> bytes:
    payload = {"id": "c1", "choices": [{"index": 0, "delta": {"content": content}}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def echo_response(mode: str, auth: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """How the upstream answers in ``mode``, quoting ``auth`` (the Authorization header)."""
    key = auth.removeprefix("Bearer ")
    quoted = urllib.parse.quote(auth, safe="")
    sse = [("content-type", "text/event-stream")]
    if mode == "json-401":
        body = {
            "error": {
                "message": f"Incorrect API key provided: {auth}",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
                "request": {"headers": {"authorization": auth, auth: [key.upper()]}},
            }
        }
        return 401, [("content-type", "application/json"), ("x-request-id", auth)], (
            json.dumps(body).replace("/", "\\/").encode()
        )
    if mode == "text-503":
        return 503, [("content-type", "text/plain")], (
            f"gateway: upstream refused {auth} (retry {quoted})".encode()
        )
    if mode == "sse-error-event":
        data = json.dumps({"error": {"message": f"auth {auth} overloaded", "type": "overloaded"}})
        return 200, sse, _sse(f"event: error\ndata: {data}\n\n".encode())
    if mode == "sse-error-chunk":
        data = json.dumps({"error": {"message": f"bad header {auth}", "type": "invalid_request"}})
        return 200, sse, _sse(f"data: {data}\n\n".encode())
    if mode == "after-commit":
        data = json.dumps({"error": {"message": f"cut {auth}", "type": "server_error"}})
        return 200, sse, _sse(_chunk("Hello"), f"data: {data}\n\n".encode())
    if mode == "header-echo":
        headers = [("content-type", f"text/html; echo={quoted}"), ("x-request-id", auth)]
        page = f"<html>Your request: Authorization: {html.escape(auth)}</html>"
        return 200, headers, page.encode()
    if mode == "json-200":
        body = {"error": {"message": f"key {key} is revoked", "type": key, "code": key}}
        return 200, [("content-type", "application/json")], json.dumps(body).encode()
    raise AssertionError(mode)


MODES = {
    # mode: (what the consumer gets, what the message still shows)
    "json-401": (APIStatusError, f"Incorrect API key provided: Bearer {REDACTED}"),
    "text-503": (RetriesExhaustedError, f"upstream refused Bearer {REDACTED}"),
    "sse-error-event": (RetriesExhaustedError, f"auth Bearer {REDACTED} overloaded"),
    "sse-error-chunk": (ProviderError, f"bad header Bearer {REDACTED}"),
    "after-commit": (StreamInterrupted, f"cut Bearer {REDACTED}"),
    "header-echo": (StreamProtocolError, REDACTED),
    "json-200": (ProviderError, f"key {REDACTED} is revoked"),
}


async def echo_handler(mode: str, request: Request, send: Send) -> None:
    status, headers, data = echo_response(mode, request.headers.get("authorization", ""))
    await respond(send, status, headers, data)


async def mode_handler(request: Request, send: Send) -> None:
    # The relay process and chat command cannot be told a mode: it rides in the model name.
    model = json.loads(request.body)["model"]
    await echo_handler(model, request, send)


def serve_echo() -> AbstractAsyncContextManager[str]:
    return serve(mode_handler)


# -- the exception, retries, metrics and logs --------------------------------------------------


@pytest.mark.parametrize("mode", list(MODES))
async def test_the_key_echoed_upstream_reaches_no_error_metrics_or_log(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    expected, shown = MODES[mode]
    seen: list[LLMMetrics] = []
    async with serve_echo() as url, OpenAILLM(mode, base_url=url, api_key=KEY) as llm:
        with caplog.at_level(logging.DEBUG), pytest.raises(LLMStreamError) as info:
            async with open_llm_stream(
                llm, chat_ctx=ctx(), conn_options=FAST, on_metrics=seen.append
            ) as stream:
                await stream.collect()
    error = info.value
    assert type(error) is expected, error
    logs = log_text(caplog)
    texts = [*exception_texts(error), *metrics_texts(stream.metrics), logs]
    texts += [repr(m) for m in seen]
    for text in texts:
        assert_clean(text)
    # The echo did happen, and the message around it survives redaction.
    assert any(shown in text for text in texts), texts[:3]
    if isinstance(error, APIStatusError):
        assert_clean(json.dumps(error.body))
        assert error.request_id == f"Bearer {REDACTED}"
    if isinstance(error, RetriesExhaustedError):
        assert len(error.errors) == 2
        assert "retry" in logs.lower()  # the runtime's INFO line was logged, and is clean


async def test_a_key_in_a_response_header_is_redacted_from_the_request_id() -> None:
    async with serve_echo() as url, OpenAILLM("header-echo", base_url=url, api_key=KEY) as llm:
        with pytest.raises(StreamProtocolError) as info:
            async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=FAST) as stream:
                await stream.collect()
    assert info.value.request_id == f"Bearer {REDACTED}"
    assert "text/html; echo=Bearer%20" + REDACTED in str(info.value)
    assert not info.value.retryable


# -- the journal and the relay -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["json-401", "text-503", "sse-error-event", "after-commit"])
async def test_the_journal_terminal_entry_is_clean(mode: str) -> None:
    journal = MemoryJournal()
    async with (
        serve_echo() as url,
        OpenAILLM(mode, base_url=url, api_key=KEY) as llm,
        open_llm_stream(llm, chat_ctx=ctx(), conn_options=FAST) as stream,
    ):
        result = await record(journal, "run-1", stream)
    page = await journal.read("run-1", after=0)
    assert page.entries[-1].end is not None
    assert page.entries[-1].end.error is not None
    for entry in page.entries:
        assert_clean(encode_entry(entry).decode())
        assert_clean(repr(entry))
    assert_clean(repr(result))
    assert REDACTED in encode_entry(page.entries[-1]).decode()


@pytest.mark.parametrize("mode", ["json-401", "sse-error-event", "after-commit"])
async def test_the_relay_end_event_and_log_are_clean(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve_echo() as url, OpenAILLM(mode, base_url=url, api_key=KEY) as llm:
        app = RelayApp(MemoryJournal(), llm)
        with caplog.at_level(logging.DEBUG):
            async with trio.open_nursery() as nursery:
                relay_url = await nursery.start(partial(serve_relay, app, port=0))
                async with httpx.AsyncClient(base_url=relay_url, timeout=10) as client:
                    response = await client.post(
                        "/v1/runs", json={"messages": [{"role": "user", "content": "hi"}]}
                    )
                    assert response.status_code == 201, response.text
                    _, events = await read_events(client, response.json()["events"])
                nursery.cancel_scope.cancel()
    end = check_stream(events)
    assert end["status"] == "failed"
    for event in events:
        assert_clean(event.data.decode())
    assert REDACTED in events[-1].data.decode()
    assert_clean(log_text(caplog))


async def _run_process(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout):
        return await trio.run_process(
            [sys.executable, "-m", "trio_llmstream", *args],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["ECHO_TEST_KEY"] = KEY
    env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("mode", ["json-401", "sse-error-chunk", "after-commit"])
async def test_chat_stderr_is_clean(mode: str) -> None:
    async with serve_echo() as url:
        proc = await _run_process(
            ["chat", "--base-url", url, "--model", mode, "--api-key-env", "ECHO_TEST_KEY", "hi"],
            _env(),
        )
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr
    assert REDACTED in stderr
    assert_clean(stderr)
    assert_clean(proc.stdout.decode())


async def test_the_relay_process_end_event_and_output_are_clean() -> None:
    port = free_port()
    async with serve_echo() as url:
        cmd = [sys.executable, "-m", "trio_llmstream", "relay", "--upstream", url,
               "--model", "sse-error-chunk", "--api-key-env", "ECHO_TEST_KEY",
               "--port", str(port)]
        process = await trio.lowlevel.open_process(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env()
        )
        assert process.stdout is not None
        output = bytearray()
        try:
            async with trio.open_nursery() as nursery:
                listening = trio.Event()

                async def drain() -> None:
                    assert process.stdout is not None
                    while data := await process.stdout.receive_some():
                        output.extend(data)
                        if b"relay listening on" in output:
                            listening.set()

                nursery.start_soon(drain)
                with trio.fail_after(30):
                    await listening.wait()
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", timeout=10
                ) as client:
                    response = await client.post(
                        "/v1/runs", json={"messages": [{"role": "user", "content": "hi"}]}
                    )
                    assert response.status_code == 201, response.text
                    _, events = await read_events(client, response.json()["events"])
                process.terminate()
                with trio.fail_after(15):
                    await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
            await process.stdout.aclose()
    assert check_stream(events)["status"] == "failed"
    for event in events:
        assert_clean(event.data.decode())
    assert REDACTED in events[-1].data.decode()
    assert_clean(output.decode())


# -- the redactor itself -----------------------------------------------------------------------


_KEY_ALPHABET = st.characters(
    codec="ascii", categories=("L", "N", "P", "S"), exclude_characters="\\"
)


def _spell(key: str, how: str) -> str:
    return {
        "raw": key,
        "bearer": f"Bearer {key}",
        "url": urllib.parse.quote(f"Bearer {key}", safe=""),
        "url-plus": urllib.parse.quote_plus(key),
        "json": json.dumps(key)[1:-1],
        "json-slash": json.dumps(key)[1:-1].replace("/", "\\/"),
        "json-unicode": "".join(f"\\u{ord(c):04x}" for c in key),
        "upper": key.upper(),
        "lower": key.lower(),
        "html": html.escape(key),
    }[how]


_HOW = st.sampled_from(
    ["raw", "bearer", "url", "url-plus", "json", "json-slash", "json-unicode", "upper", "lower",
     "html"]
)


@given(
    # "~" marks the key as upstream text: no repr or class name of ours contains one.
    key=st.text(_KEY_ALPHABET, min_size=6, max_size=64).map(lambda k: "~" + k + "~"),
    echoes=st.lists(
        st.tuples(_HOW, st.sampled_from(["message", "key", "nested", "list", "text"])),
        min_size=1,
        max_size=5,
    ),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
)
def test_redacted_errors_never_hold_the_key(
    key: str, echoes: list[tuple[str, str]], before: str, after: str
) -> None:
    redactor = Redactor(key)
    body: dict[str, object] = {"error": {"message": "x"}}
    texts: list[str] = []
    for how, where in echoes:
        echo = before + _spell(key, how) + after
        if where == "message":
            body["error"] = {"message": echo}
        elif where == "key":
            body[echo] = 1
        elif where == "nested":
            body["detail"] = {"headers": [{"authorization": echo}]}
        elif where == "list":
            body["list"] = [echo, (echo,)]
        else:
            texts.append(echo)
    error = APIStatusError(" ".join(texts) or "x", status_code=401, body=body, request_id=key)
    error.add_note(f"note {key}")
    cause = ValueError(f"cause {_spell(key, 'bearer')}")
    error.__cause__ = cause
    redactor.scrub_exception(error)
    for text in exception_texts(error):
        assert_clean(text, key)
        assert key not in text
    assert_clean(json.dumps(error.body), key)
    assert_clean(redactor.data(json.dumps(body).encode()).decode(), key)


@given(
    key=st.text(_KEY_ALPHABET, min_size=1, max_size=7).filter(lambda k: "bearer" not in k.lower()),
    text=st.text(max_size=40).filter(lambda t: "bearer" not in t.lower()),
    spacing=st.sampled_from([" ", "  ", "%20", "+", "\t"]),
)
def test_a_short_key_is_redacted_only_after_bearer(key: str, text: str, spacing: str) -> None:
    # Keys under 8 characters ("EMPTY", "ollama") are placeholders, not secrets: replacing every
    # occurrence would make messages unreadable. Only the quoted header is redacted.
    redactor = Redactor(key)
    assert redactor.text(f"{text}Bearer{spacing}{key}") == f"{text}Bearer{spacing}{REDACTED}"
    assert redactor.text(f"{text}{key}{text}") == f"{text}{key}{text}"


def test_no_key_changes_nothing() -> None:
    error = APIError("Bearer sk-anything at all")
    assert Redactor(None).scrub_exception(error) is error
    assert str(error) == "Bearer sk-anything at all"
    assert repr(Redactor(KEY)) == "Redactor(active=True)"
    assert KEY not in repr(Redactor(KEY))
