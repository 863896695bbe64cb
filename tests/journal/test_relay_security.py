"""The relay facing the internet: who may start runs, who may read them, what browsers may
do, which run ids are taken, and how much one client may hold. Over real HTTP against
``python -m trio_llmstream relay`` processes; a few in-process tests add what a process
cannot show (a custom ``authorize`` hook, the log records, grants shared through Redis)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from functools import partial

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream import OpenAILLM
from trio_llmstream.journal import (
    JournalUnavailable,
    MemoryJournal,
    RelayApp,
    RunNotFound,
    open_redis_journal,
    serve_relay,
)
from trio_llmstream.journal._relay import (
    RUN_ID,
    Scope,
    bearer_authorizer,
    check_origin,
    check_relay_run_id,
    is_loopback,
)
from trio_llmstream.testing import Stall, open_mock_server, text_stream

from .conftest import unique_prefix
from .redis_server import RedisServer, free_port
from .sse_client import check_stream, read_events
from .test_cli import open_relay_process
from .test_relay import MESSAGES, TEXT, text_of

ALPHA = "alpha-3c5d0e9f1b2a4c6d"
BETA = "beta-7e8f9a0b1c2d3e4f"
TOKENS = {"RELAY_TOKENS": f"{ALPHA}, {BETA}"}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def read_token(events_url: str) -> str:
    match = re.search(r"[?&]token=([A-Za-z0-9_-]+)", events_url)
    assert match, events_url
    return match.group(1)


# -- authentication and ownership -----------------------------------------------------------------


async def test_posting_needs_a_bearer_token_and_reading_needs_the_run_token_or_the_owner(
) -> None:
    script = text_stream(TEXT, chunk_size=8, delay=0.002)
    async with (
        open_mock_server(*[script] * 3) as upstream,
        open_relay_process("--upstream", upstream.base_url, "--model", "m",
                           "--auth-token-env", "RELAY_TOKENS", env=TOKENS) as relay,
        httpx.AsyncClient(base_url=relay.url, timeout=10) as client,
    ):
        # No credentials, a wrong token, another scheme: 401, and nothing reaches upstream.
        for headers in ({}, bearer("nope"), bearer(ALPHA + "x"), {"authorization": ALPHA},
                        {"authorization": f"Basic {ALPHA}"}, {"authorization": "Bearer"}):
            response = await client.post("/v1/runs", json=MESSAGES, headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert upstream.chat_requests == []

        response = await client.post("/v1/runs", json=MESSAGES, headers=bearer(ALPHA))
        assert response.status_code == 201
        created = response.json()
        events_url, info_url = created["events"], created["info"]
        token = read_token(events_url)
        assert created["token"] == token == read_token(info_url)
        assert len(token) >= 43  # 256 bits, urlsafe base64
        run_path = response.headers["location"]
        assert run_path == f"/v1/runs/{created['id']}"
        assert "token" not in run_path

        # Neither the token nor the owner's credentials: the same 404 as an unknown run.
        unknown = await client.get("/v1/runs/no-such-run/events")
        assert unknown.status_code == 404
        for url, headers in [
            (f"{run_path}/events", {}),
            (f"{run_path}/events?token=", {}),
            (f"{run_path}/events?token={token[:-1]}{'B' if token[-1] == 'A' else 'A'}", {}),
            (f"{run_path}/events?token={token}x", {}),
            (f"{run_path}/events", bearer(BETA)),  # another principal
            (f"{run_path}/events", bearer("nope")),
            (run_path, {}),
            (run_path, bearer(BETA)),
        ]:
            response = await client.get(url, headers=headers)
            assert response.status_code == 404, (url, headers)
            assert response.json() == unknown.json()

        # The token (what a browser's EventSource has) reads the run...
        status, events = await read_events(client, events_url)
        assert status == 200
        assert check_stream(events)["status"] == "completed"
        assert text_of(events) == TEXT
        assert (await client.get(info_url)).json()["end_seq"] == len(events)
        # ... and so do the owner's credentials, without it.
        async with httpx.AsyncClient(base_url=relay.url, headers=bearer(ALPHA),
                                     timeout=10) as owner:
            status, again = await read_events(owner, f"{run_path}/events")
        assert status == 200
        assert again == events
        assert (await client.get(run_path, headers=bearer(ALPHA))).status_code == 200

        # One run's token does not open another run.
        other = (await client.post("/v1/runs", json=MESSAGES, headers=bearer(BETA))).json()
        response = await client.get(f"/v1/runs/{other['id']}/events?token={token}")
        assert response.status_code == 404
        assert (await client.get(other["info"])).status_code == 200
        stop_output = relay

    # Secrets never reach the output (logging at INFO, the server's errors included).
    text = stop_output.text
    assert "relay listening on" in text
    for secret in (ALPHA, BETA, token, other["token"]):
        assert secret not in text


def test_without_auth_the_relay_listens_on_loopback_only() -> None:
    base = [sys.executable, "-m", "trio_llmstream", "relay", "--upstream",
            "http://127.0.0.1:9/v1", "--model", "m", "--port", str(free_port())]
    for host in ("0.0.0.0", "::", "192.0.2.7", "relay.example"):
        proc = subprocess.run([*base, "--host", host], capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert f"refusing to listen on {host} without authentication" in lines[0]
        assert "--auth-token-env" in lines[0]
        assert "--insecure-no-auth" in lines[0]
    # A variable without a token is a usage error too, whatever the host.
    proc = subprocess.run([*base, "--auth-token-env", "RELAY_EMPTY_TOKENS"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"RELAY_EMPTY_TOKENS": " , ", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "RELAY_EMPTY_TOKENS (--auth-token-env) holds no token" in proc.stderr
    proc = subprocess.run([*base, "--allow-origin", "https://app.example/"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "an origin is scheme://host[:port], nothing more" in proc.stderr


async def test_a_public_host_with_auth_or_with_the_explicit_override() -> None:
    async with open_mock_server(*[text_stream("hi")] * 2) as upstream:
        for args, env in [
            (("--auth-token-env", "RELAY_TOKENS"), TOKENS),
            (("--insecure-no-auth",), None),
        ]:
            async with (
                open_relay_process("--upstream", upstream.base_url, "--model", "m",
                                   "--host", "0.0.0.0", *args, env=env) as relay,
                httpx.AsyncClient(base_url=relay.url, timeout=10, headers=bearer(ALPHA))
                as client,
            ):
                response = await client.post("/v1/runs", json=MESSAGES)
                assert response.status_code == 201
                _status, events = await read_events(client, response.json()["events"])
                assert check_stream(events)["status"] == "completed"


# -- content type, run ids, per-client limit ------------------------------------------------------


async def test_content_type_run_ids_and_the_per_client_limit() -> None:
    async with (
        open_mock_server(*[(Stall(),)] * 16) as upstream,
        open_relay_process("--upstream", upstream.base_url, "--model", "m",
                           "--auth-token-env", "RELAY_TOKENS", "--max-runs-per-client", "2",
                           "--drain-timeout", "0.2", env=TOKENS) as relay,
        httpx.AsyncClient(base_url=relay.url, timeout=10, headers=bearer(ALPHA)) as alpha,
        httpx.AsyncClient(base_url=relay.url, timeout=10, headers=bearer(BETA)) as beta,
    ):
        body = b'{"messages": [{"role": "user", "content": "hi"}], "run_id": "ct"}'
        # What a cross-site page can send without a preflight ("simple" requests), and more.
        for content_type in ("text/plain", "text/plain;charset=UTF-8",
                             "application/x-www-form-urlencoded", "multipart/form-data",
                             "application/jsonx", "", "application/json-seq"):
            headers = {"content-type": content_type} if content_type else {}
            response = await alpha.post("/v1/runs", content=body, headers=headers)
            assert response.status_code == 415, content_type
            assert "application/json" in response.json()["error"]["message"]
        assert upstream.chat_requests == []
        # Run ids that do not stay themselves in a URL path.
        for bad in ["a/b", "../../etc/passwd", "x?y", "x%41y", "a b", "x#y", ".", "..",
                    "caf\u00e9", "a" * 129, "", "a\nb", "a{b}"]:
            response = await alpha.post("/v1/runs", json={**MESSAGES, "run_id": bad})
            assert response.status_code == 400, bad
            assert "run id" in response.json()["error"]["message"]
        assert upstream.chat_requests == []
        # Good ids, with a parameterised content type: their events URL answers.
        good = ["A-z._~9", "b" * 128]
        for run_id in good:
            response = await beta.post(
                "/v1/runs", content=msgspec_json({**MESSAGES, "run_id": run_id}),
                headers={"content-type": "Application/JSON; charset=utf-8"})
            assert response.status_code == 201, response.text
            assert response.json()["id"] == run_id
            events = response.json()["events"]
            async with beta.stream("GET", events) as stream:
                assert stream.status_code == 200
        # beta holds two runs now: its third waits (429); alpha is not locked out.
        response = await beta.post("/v1/runs", json=MESSAGES)
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        for _ in range(2):
            assert (await alpha.post("/v1/runs", json=MESSAGES)).status_code == 201
        assert (await alpha.post("/v1/runs", json=MESSAGES)).status_code == 429


def msgspec_json(value: object) -> bytes:
    import msgspec

    return msgspec.json.encode(value)


# -- CORS -----------------------------------------------------------------------------------------

APP = "https://app.example"
DEV = "http://localhost:3000"
EVIL = "https://evil.example"


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


async def test_cors_preflight_and_simple_requests() -> None:
    async with (
        open_mock_server(*[text_stream("hello", delay=0.001)] * 4) as upstream,
        open_relay_process("--upstream", upstream.base_url, "--model", "m",
                           "--auth-token-env", "RELAY_TOKENS", "--allow-origin", APP,
                           "--allow-origin", DEV, env=TOKENS) as relay,
        httpx.AsyncClient(base_url=relay.url, timeout=10) as client,
    ):
        preflight = {"access-control-request-method": "POST",
                     "access-control-request-headers": "authorization,content-type"}
        for origin in (APP, DEV):
            response = await client.options("/v1/runs", headers={"origin": origin, **preflight})
            assert response.status_code == 204
            assert response.headers["access-control-allow-origin"] == origin
            methods = {m.strip() for m in
                       response.headers["access-control-allow-methods"].split(",")}
            assert {"GET", "POST"} <= methods
            allowed = {h.strip().lower() for h in
                       response.headers["access-control-allow-headers"].split(",")}
            assert {"authorization", "content-type", "last-event-id"} <= allowed
            assert int(response.headers["access-control-max-age"]) > 0
            assert "Origin" in response.headers["vary"]
            assert "access-control-allow-credentials" not in response.headers
        # Any other origin (or a near miss): refused, with no CORS header at all.
        for origin in (EVIL, APP + ":443", "https://app.example.evil", "null", APP.upper()):
            response = await client.options("/v1/runs", headers={"origin": origin, **preflight})
            assert response.status_code == 403, origin
            assert cors_headers(response) == {}

        # Simple and actual requests from the allowed origin carry the header; others not.
        response = await client.post("/v1/runs", json=MESSAGES,
                                     headers={"origin": APP, **bearer(ALPHA)})
        assert response.status_code == 201
        assert response.headers["access-control-allow-origin"] == APP
        assert "Location" in response.headers["access-control-expose-headers"]
        events_url = response.json()["events"]
        async with client.stream("GET", events_url, headers={"origin": APP}) as stream:
            assert stream.status_code == 200
            assert stream.headers["access-control-allow-origin"] == APP
            await stream.aread()
        for headers in ({"origin": EVIL}, {}):
            async with client.stream("GET", events_url, headers=headers) as stream:
                assert stream.status_code == 200  # the browser, not the relay, hides it
                assert cors_headers(stream) == {}
                await stream.aread()
        refused = await client.post("/v1/runs", json=MESSAGES, headers={"origin": APP})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == APP  # so the page sees 401


async def test_no_cors_header_without_allowed_origins() -> None:
    async with (
        open_mock_server(text_stream("hello")) as upstream,
        open_relay_process("--upstream", upstream.base_url, "--model", "m") as relay,
        httpx.AsyncClient(base_url=relay.url, timeout=10) as client,
    ):
        response = await client.options("/v1/runs", headers={
            "origin": APP, "access-control-request-method": "POST"})
        assert response.status_code == 403
        assert cors_headers(response) == {}
        response = await client.post("/v1/runs", json=MESSAGES, headers={"origin": APP})
        assert response.status_code == 201
        assert cors_headers(response) == {}
        # Not a preflight: the methods the resource allows.
        response = await client.options("/v1/runs")
        assert response.status_code == 204
        assert "POST" in response.headers["allow"]


# -- in process: hooks, logs, grants --------------------------------------------------------------


async def x_user(scope: Scope) -> str | None:
    # A hook for another scheme: an identity a trusted proxy put in a header.
    for name, value in scope["headers"]:
        if name == b"x-user" and value:
            return "user:" + value.decode()
    return None


async def test_authorize_hook_principals_and_no_secret_in_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    async def failing(scope: Scope) -> str | None:
        raise RuntimeError(f"backend said no to {ALPHA}")

    async with (
        open_mock_server(*[text_stream(TEXT, chunk_size=20)] * 3) as upstream,
        OpenAILLM("mock", base_url=upstream.base_url, api_key="k") as llm,
        trio.open_nursery() as nursery,
    ):
        app = RelayApp(MemoryJournal(), llm, authorize=x_user, max_runs_per_client=1)
        url = await nursery.start(partial(serve_relay, app, port=0))
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.post("/v1/runs", json=MESSAGES)).status_code == 401
            created = (await client.post("/v1/runs", json=MESSAGES,
                                         headers={"x-user": "ann"})).json()
            run_path = f"/v1/runs/{created['id']}"
            assert (await client.get(run_path, headers={"x-user": "ann"})).status_code == 200
            assert (await client.get(run_path, headers={"x-user": "bob"})).status_code == 404
            # An owner match needs credentials the hook maps to the owner: a header alone
            # with the owner's name in another form is someone else.
            assert (await client.get(run_path, headers={"x-user": "Ann"})).status_code == 404
            _status, events = await read_events(client, created["events"])
            assert check_stream(events)["status"] == "completed"
            with trio.fail_after(5):
                while app.running:
                    await trio.sleep(0.01)
            # The slot was given back when the run ended.
            response = await client.post("/v1/runs", json=MESSAGES, headers={"x-user": "ann"})
            assert response.status_code == 201
            app.authorize = failing
            response = await client.post("/v1/runs", json=MESSAGES, headers=bearer(ALPHA))
            assert response.status_code == 401
        nursery.cancel_scope.cancel()
    # The relay's records (the server's own included: hypercorn logs to the relay's logger);
    # the test's HTTP client logs its URLs itself, tokens and all, which is its business.
    ours = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records
        if r.name.startswith("trio_llmstream")
    )
    assert "authorize hook failed" in ours
    assert "run " in ours  # the runs' own records are there
    for secret in (ALPHA, created["token"]):
        assert secret not in ours


async def test_grants_are_shared_by_relays_on_one_redis(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    async with (
        open_mock_server(text_stream(TEXT, chunk_size=10)) as upstream,
        OpenAILLM("mock", base_url=upstream.base_url, api_key="k") as llm,
        open_redis_journal(redis_server.url, prefix=prefix) as journal_a,
        open_redis_journal(redis_server.url, prefix=prefix) as journal_b,
        trio.open_nursery() as nursery,
    ):
        auth = bearer_authorizer([ALPHA, BETA])
        app_a = RelayApp(journal_a, llm, authorize=auth)
        app_b = RelayApp(journal_b, llm, authorize=auth)
        url_a = await nursery.start(partial(serve_relay, app_a, port=0))
        url_b = await nursery.start(partial(serve_relay, app_b, port=0))
        async with (
            httpx.AsyncClient(base_url=url_a, timeout=10, headers=bearer(ALPHA)) as a,
            httpx.AsyncClient(base_url=url_b, timeout=10) as b,
        ):
            created = (await a.post("/v1/runs", json=MESSAGES)).json()
            status, events = await read_events(b, created["events"])
            assert status == 200
            assert text_of(events) == TEXT
            run_path = f"/v1/runs/{created['id']}"
            assert (await b.get(run_path, headers=bearer(ALPHA))).status_code == 200
            assert (await b.get(run_path, headers=bearer(BETA))).status_code == 404
            assert (await b.get(f"{run_path}?token=x")).status_code == 404
        # The grant: beside the run's keys (one hash slot), hashes only, with the run's TTL.
        key = f"{prefix}:{{{created['id']}}}:a"
        stored = await journal_a.client.get(key)
        assert stored is not None
        assert created["token"].encode() not in stored
        assert ALPHA.encode() not in stored
        ttl = await journal_a.client.pttl(key)
        assert 0 < ttl <= journal_a.ttl * 1000
        nursery.cancel_scope.cancel()


# -- the rules as properties ----------------------------------------------------------------------


@given(st.text(max_size=140))
def test_run_ids_are_exactly_the_url_safe_ones(run_id: str) -> None:
    fits = RUN_ID.fullmatch(run_id) is not None and run_id not in (".", "..")
    try:
        check_relay_run_id(run_id)
    except ValueError:
        assert not fits
    else:
        assert fits
        # It stays itself through a client's URL handling: the events URL reaches it.
        path = httpx.URL(f"http://relay/v1/runs/{run_id}/events").path
        assert path == f"/v1/runs/{run_id}/events"


@given(st.from_regex(RUN_ID, fullmatch=True))
def test_every_matching_id_but_dots_is_accepted(run_id: str) -> None:
    if run_id in (".", ".."):
        with pytest.raises(ValueError):
            check_relay_run_id(run_id)
    else:
        assert check_relay_run_id(run_id) == run_id


@given(st.lists(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                        min_size=1, max_size=40), min_size=1, max_size=4),
       st.text(max_size=50))
async def test_bearer_authorizer_accepts_exactly_its_tokens(
    tokens: list[str], presented: str
) -> None:
    authorize = bearer_authorizer(tokens)

    def scope(value: str) -> Scope:
        return {"headers": [(b"authorization", value.encode())]}

    principals = set()
    for token in tokens:
        principal = await authorize(scope(f"Bearer {token}"))
        assert principal is not None
        assert re.fullmatch(r"bearer:[0-9a-f]{16}", principal)  # the token is not in it
        assert principal == await authorize(scope(f"bearer  {token} "))
        principals.add(principal)
    assert len(principals) == len(set(tokens))
    expected = presented.strip() in tokens if presented.strip() else False
    got = await authorize(scope(f"Bearer {presented}"))
    assert (got is not None) == expected
    assert await authorize({"headers": []}) is None
    assert await authorize(scope(f"Basic {tokens[0]}")) is None


def test_loopback_and_origin_rules() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"):
        assert is_loopback(host)
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.example.com"):
        assert not is_loopback(host)
    assert check_origin("https://app.example:8443") == "https://app.example:8443"
    for bad in ("https://app.example/", "app.example", "ftp://x", "https://a/b", "*", "null"):
        with pytest.raises(ValueError):
            check_origin(bad)


class DownGrants:
    """A grant store that cannot be reached."""

    async def put(self, run_id: str, grant: bytes) -> None:
        await trio.lowlevel.checkpoint()
        raise JournalUnavailable("injected: grants down", run_id=run_id)

    async def get(self, run_id: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        raise JournalUnavailable("injected: grants down", run_id=run_id)

    async def touch(self, run_id: str) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_run_whose_grant_cannot_be_stored_is_not_started() -> None:
    journal = MemoryJournal()
    async with (
        open_mock_server(text_stream("hi")) as upstream,
        OpenAILLM("mock", base_url=upstream.base_url, api_key="k") as llm,
        trio.open_nursery() as nursery,
    ):
        app = RelayApp(journal, llm, grants=DownGrants())
        url = await nursery.start(partial(serve_relay, app, port=0))
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            response = await client.post("/v1/runs", json={**MESSAGES, "run_id": "g"})
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            # Not started, and not left in the journal unreadable.
            assert upstream.chat_requests == []
            with pytest.raises(RunNotFound):
                await journal.info("g")
            assert app.running == 0
            # Reading while the store is down: 503 (try again), not 404 (no such run).
            response = await client.get("/v1/runs/g/events?token=x")
            assert response.status_code == 503
        nursery.cancel_scope.cancel()
