"""Concurrent streams, the bounded waiting queue, disconnects freeing the engine, a free event loop."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.fakes import FakeEngine
from tests.server_harness import live_server, wait_until

CHAT = "/v1/chat/completions"


def msgs(i: int) -> list[dict]:
    return [{"role": "user", "content": f"prompt number {i}"}]


def test_eight_concurrent_streams_all_finish_with_their_own_text():
    engine = FakeEngine(token_delay=0.002, max_running=4, max_waiting=8, eos_after=60)
    with live_server(engine) as srv:
        expected = [
            srv.client.chat.completions.create(model="fake-moe", messages=msgs(i), temperature=0)
            .choices[0]
            .message.content
            for i in range(8)
        ]

        def stream(i: int) -> tuple[str, str | None]:
            text, finish = [], None
            for c in srv.client.chat.completions.create(
                model="fake-moe", messages=msgs(i), temperature=0, stream=True
            ):
                if c.choices:
                    text.append(c.choices[0].delta.content or "")
                    finish = c.choices[0].finish_reason or finish
            return "".join(text), finish

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(stream, i) for i in range(8)]
            # While they run, the loop answers other requests promptly.
            t0 = time.monotonic()
            assert srv.http.get("/health").status_code == 200
            assert time.monotonic() - t0 < 1.0
            results = [f.result(timeout=30) for f in futures]
        assert [r[0] for r in results] == expected
        assert all(r[1] == "stop" for r in results)
        assert wait_until(lambda: engine.running == 0 and engine.waiting == 0)
        assert not engine.aborted


def test_stream_disconnect_aborts_and_frees_the_engine():
    engine = FakeEngine(token_delay=0.02, eos_after=10_000, context_length=20_000)
    with live_server(engine) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        with http.stream("POST", CHAT, json={"messages": msgs(0), "stream": True}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: {") for line in got)
            assert engine.running == 1
        # Leaving the block closes the connection mid-stream.
        assert wait_until(lambda: engine.running == 0)
        assert len(engine.aborted) == 1
        (rid,) = engine.aborted
        assert rid.startswith("chatcmpl-") and engine.finished[rid] == "abort"
        # And the engine serves the next request.
        assert srv.http.post(CHAT, json={"messages": msgs(1), "max_tokens": 3}).status_code == 200


def test_non_streamed_disconnect_aborts_too():
    engine = FakeEngine(token_delay=0.02, eos_after=10_000, context_length=20_000)
    with live_server(engine) as srv, httpx.Client(base_url=srv.url, timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post(CHAT, json={"messages": msgs(0), "n": 2})
        assert wait_until(lambda: engine.running == 0)
        assert len(engine.aborted) == 2


def test_full_waiting_queue_answers_429_and_recovers():
    engine = FakeEngine(
        token_delay=0.01, max_running=1, max_waiting=1, eos_after=10_000, context_length=20_000
    )
    with live_server(engine) as srv:
        stop = threading.Event()

        def hold(i: int) -> int:
            with (
                httpx.Client(base_url=srv.url, timeout=10) as http,
                http.stream("POST", CHAT, json={"messages": msgs(i), "stream": True, "max_tokens": 300}) as r,
            ):
                for _ in r.iter_lines():
                    if stop.is_set():
                        break
                return r.status_code

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(hold, 0)
            assert wait_until(lambda: engine.running == 1)
            second = pool.submit(hold, 1)
            assert wait_until(lambda: engine.waiting == 1)
            r = srv.http.post(CHAT, json={"messages": msgs(2), "max_tokens": 2})
            assert r.status_code == 429
            assert r.json()["error"] == {
                "message": r.json()["error"]["message"],
                "type": "rate_limit_error",
                "param": None,
                "code": "queue_full",
            }
            stop.set()
            assert first.result(timeout=10) == 200 and second.result(timeout=10) == 200
        assert wait_until(lambda: engine.running == 0 and engine.waiting == 0)
        assert srv.http.post(CHAT, json={"messages": msgs(3), "max_tokens": 2}).status_code == 200


def test_waiting_requests_are_served_in_arrival_order():
    engine = FakeEngine(token_delay=0.005, max_running=1, max_waiting=8, eos_after=5)
    with live_server(engine) as srv:

        def send(i: int) -> None:
            with httpx.Client(base_url=srv.url, timeout=10) as http:
                assert http.post(CHAT, json={"messages": msgs(i), "user": str(i)}).status_code == 200

        with ThreadPoolExecutor(4) as pool:
            futures = []
            for i in range(4):
                futures.append(pool.submit(send, i))
                assert wait_until(lambda n=i: engine.running + engine.waiting + len(engine.finished) > n)
            for f in futures:
                f.result(timeout=10)
        order = [q.messages[0]["content"] for q in engine.requests]
        assert order == [f"prompt number {i}" for i in range(4)]


def test_disconnect_while_waiting_for_a_slot_leaves_the_queue():
    engine = FakeEngine(
        token_delay=0.01, max_running=1, max_waiting=4, eos_after=10_000, context_length=20_000
    )
    with live_server(engine) as srv:
        with (
            httpx.Client(base_url=srv.url, timeout=10) as http,
            http.stream("POST", CHAT, json={"messages": msgs(0), "stream": True}) as holder,
        ):
            assert holder.status_code == 200
            assert wait_until(lambda: engine.running == 1)
            with httpx.Client(base_url=srv.url, timeout=0.3) as impatient, pytest.raises(httpx.ReadTimeout):
                impatient.post(CHAT, json={"messages": msgs(1), "stream": True})
            assert wait_until(lambda: engine.waiting == 0)
            assert len(engine.aborted) == 1 and engine.running == 1
        assert wait_until(lambda: engine.running == 0)
        assert len(engine.aborted) == 2
        assert [q.messages[0]["content"] for q in engine.requests] == ["prompt number 0"]
