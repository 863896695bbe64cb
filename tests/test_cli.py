"""The command line: the demo runs end to end; chat streams and reports errors clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trio_llmstream.__main__ import chat
from trio_llmstream._demo import run_demo
from trio_llmstream.testing import error_response, open_mock_server, text_stream


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
    assert "metrics, one record per stream" in text
    assert text.count("completed") >= 4


async def test_chat_streams_and_prints_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    async with open_mock_server(text_stream("Hi there, friend.")) as server:
        code = await chat(server.base_url, "m", None, "hello")
    out = capsys.readouterr().out
    assert code == 0
    assert "Hi there, friend." in out
    assert "completed" in out


async def test_chat_reports_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    async with open_mock_server(error_response(401, "bad key")) as server:
        code = await chat(server.base_url, "m", None, "hello")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1
    assert err[0].startswith("error: APIStatusError: HTTP 401: bad key")


async def test_chat_missing_key_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    assert await chat("http://127.0.0.1:9/v1", "m", "NO_SUCH_KEY_VAR", "x") == 2
    assert "NO_SUCH_KEY_VAR" in capsys.readouterr().err


def test_module_entry_point_runs_the_demo() -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "trio_llmstream", "demo"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "metrics, one record per stream" in proc.stdout
