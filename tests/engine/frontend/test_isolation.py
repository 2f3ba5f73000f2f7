"""One request's failure fails that request alone: the real AsyncEngine with the built-in model on CPU.

Failures are injected where they happen in production (the sampler, the runner's prefill and decode) or
caused for real (an out-of-vocabulary id reaching the embedding once the admission check is taken away);
the other requests of the batch must finish with their full output, the engine must stay healthy, and a
later request must work. A fatal device error, in contrast, answers everyone and marks the engine fatal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import torch

import engine.frontend.admission
import engine.frontend.async_engine
import engine.frontend.choice
from engine.api.config import EngineConfig
from engine.api.errors import EngineDead, InvalidRequest, RequestFailed
from engine.api.protocol import GenerationRequest, SamplingParams, TokenDelta
from engine.frontend.async_engine import AsyncEngine

N = 12  # tokens every surviving request must produce (ignore_eos, so exactly N)
GREEDY = SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True)


def new_engine(**kw) -> AsyncEngine:
    eng = AsyncEngine.from_config(EngineConfig(device="cpu", max_running=4, max_waiting=8, seed=0, **kw))
    eng.load()
    asyncio.run(eng.start())
    return eng


@pytest.fixture(scope="module")
def eng() -> Iterator[AsyncEngine]:
    e = new_engine()
    yield e
    asyncio.run(e.shutdown())


def req(rid: str, prompt: str = "", params: SamplingParams = GREEDY, ids=None) -> GenerationRequest:
    return GenerationRequest(rid, params, prompt=prompt or f"Tell me about {rid}.", prompt_token_ids=ids)


async def collect(e: AsyncEngine, r: GenerationRequest, started: asyncio.Event | None = None):
    """(deltas, the exception that ended the stream or None)."""
    deltas: list[TokenDelta] = []
    try:
        async for d in e.generate(r):
            deltas.append(d)
            if started is not None:
                started.set()
    except Exception as err:
        return deltas, err
    return deltas, None


def finished_in_full(result) -> bool:
    deltas, err = result
    return err is None and deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == N


def assert_serving(e: AsyncEngine) -> None:
    h = e.health()
    assert h.ok and not h.fatal and h.running == 0, h
    assert e._rows == []
    assert finished_in_full(asyncio.run(collect(e, req("afterwards"))))


def test_a_sampling_failure_fails_only_its_request(eng, monkeypatch):
    real, calls = engine.frontend.choice.draw, []

    def draw(logits, params, generator, *state):
        if params.seed == 666:
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("injected sampler failure")
        return real(logits, params, generator, *state)

    monkeypatch.setattr(engine.frontend.choice, "draw", draw)
    bad = SamplingParams(temperature=1.0, seed=666, max_tokens=N, ignore_eos=True)

    async def scenario():
        # the failing request is admitted first (KV row 0): freeing it moves another row into the hole
        return await asyncio.gather(
            collect(eng, req("bad", params=bad)), *(collect(eng, req(f"ok{i}")) for i in range(3))
        )

    (deltas, err), *others = asyncio.run(scenario())
    assert isinstance(err, RequestFailed) and err.status == 500 and err.code == "request_failed"
    assert "sampling failed" in err.message and "injected sampler failure" in err.message
    assert len(deltas) == 2 and all(d.finish_reason is None for d in deltas)
    assert all(finished_in_full(r) for r in others), others
    assert_serving(eng)


def test_a_prefill_failure_fails_only_its_request(eng, monkeypatch):
    """Out-of-vocabulary ids and ids past int64 get past a disabled admission check and fail for real."""
    monkeypatch.setattr(engine.frontend.admission, "check_token_ids", lambda ids, vocab, param: None)
    vocab = eng.model_card.vocab_size

    async def scenario():
        started = [asyncio.Event() for _ in range(3)]
        good = [asyncio.create_task(collect(eng, req(f"ok{i}"), started[i])) for i in range(3)]
        for ev in started:
            await ev.wait()  # the bad prefills land while the others are mid-stream
        bad = await asyncio.gather(
            collect(eng, req("oov", ids=(5, 6, vocab + 5))), collect(eng, req("huge", ids=(5, 2**63)))
        )
        return bad, await asyncio.gather(*good)

    bad, good = asyncio.run(scenario())
    for deltas, err in bad:
        assert deltas == [] and isinstance(err, RequestFailed), err
        assert "prefill failed" in err.message
    assert "IndexError" in bad[0][1].message
    assert all(finished_in_full(r) for r in good), good
    assert_serving(eng)


def test_a_failed_decode_step_fails_its_batch_and_the_engine_serves_on(eng, monkeypatch):
    real, steps = eng.runner.decode, []

    def decode(tokens, positions):
        steps.append(len(tokens))
        if len(steps) == 4:
            raise ValueError("injected decode failure")
        return real(tokens, positions)

    monkeypatch.setattr(eng.runner, "decode", decode)

    async def scenario():
        return await asyncio.gather(*(collect(eng, req(f"r{i}")) for i in range(2)))

    results = asyncio.run(scenario())
    for deltas, err in results:
        assert isinstance(err, RequestFailed) and "decode step failed" in err.message, err
        assert "injected decode failure" in err.message
        assert 0 < len(deltas) < N
    assert_serving(eng)


def test_bad_inputs_are_refused_before_queuing(eng):
    vocab = eng.model_card.vocab_size
    cases = [
        (req("oov", ids=(1, vocab)), "prompt"),
        (req("neg", ids=(-1, 3)), "prompt"),
        (req("i64", ids=(2**63,)), "prompt"),
        (req("surrogate", prompt="a\ud800b"), "prompt"),
        (GenerationRequest("chat", GREEDY, messages=({"role": "user", "content": "x\udfff"},)), "messages"),
        (req("nan", params=SamplingParams(temperature=float("nan"))), "temperature"),
        (req("top_p", params=SamplingParams(top_p=0.0)), "top_p"),
    ]
    for r, param in cases:
        deltas, err = asyncio.run(collect(eng, r))
        assert deltas == [] and isinstance(err, InvalidRequest) and err.status == 400, (r, err)
        assert err.param == param
    assert eng.health().ok and eng.health().waiting == 0


def test_a_fatal_device_error_answers_everyone_and_marks_the_engine_fatal(monkeypatch, caplog):
    e = new_engine()
    try:
        real, steps = e.runner.decode, []

        def decode(tokens, positions):
            steps.append(1)
            if len(steps) == 3:
                raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
            return real(tokens, positions)

        monkeypatch.setattr(e.runner, "decode", decode)
        params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)

        async def scenario():  # 6 requests, 4 rows: two are still waiting when the device fails
            return await asyncio.gather(*(collect(e, req(f"r{i}", params=params)) for i in range(6)))

        with caplog.at_level(logging.CRITICAL, logger="engine.frontend.async_engine"):
            results = asyncio.run(scenario())
        for _, err in results:
            assert isinstance(err, EngineDead) and "illegal memory access" in err.message, err
        h = e.health()
        assert not h.ok and h.fatal and "illegal memory access" in h.detail
        assert len([r for r in caplog.records if "fatal engine error" in r.message]) == 1
        _, err = asyncio.run(collect(e, req("late")))
        assert isinstance(err, EngineDead)
    finally:
        asyncio.run(e.shutdown())


def test_a_decode_step_reads_every_rows_token_with_one_sync(eng, monkeypatch):
    """`choice.resolve` (the one host read of the drawn tokens) runs once per decode step for all its rows,
    and a row with nothing finite to choose fails alone (its `RequestFailed` comes back, the rest go on)."""
    real, sizes = engine.frontend.choice.resolve, []

    def resolve(draws):
        sizes.append(len(draws))
        return real(draws)

    monkeypatch.setattr(engine.frontend.choice, "resolve", resolve)

    async def scenario():
        return await asyncio.gather(*(collect(eng, req(f"together{i}")) for i in range(3)))

    results = asyncio.run(scenario())
    assert all(finished_in_full(r) for r in results), results
    assert max(sizes) == 3 and sizes.count(3) >= N - 2  # the steps with all three rows: one read each
    assert sum(sizes) == 3 * N  # one draw per generated token, nothing read twice
    assert_serving(eng)
