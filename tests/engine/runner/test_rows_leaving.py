"""Sequences that leave a batch mid-way do not change the others: the real AsyncEngine (built-in model,
CPU, float32) decodes greedy requests of different lengths together, so rows finish in every order and the
last row is moved into each hole, and every request gets exactly the tokens it gets alone.

(A finished row used to be refilled with the moved sequence's length from before the step was counted,
so its newest KV position was left behind; the soak found greedy answers that differed under load.)"""

from __future__ import annotations

import asyncio

from engine.api.config import EngineConfig
from engine.api.protocol import GenerationRequest, SamplingParams
from engine.frontend.async_engine import AsyncEngine

LENGTHS = [3, 11, 5, 14, 2, 9, 7, 12]  # tokens per request: rows leave at many different steps


def request(i: int, n: int) -> GenerationRequest:
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    return GenerationRequest(f"r{i}", params, prompt=f"Chapter {i}. " + "The river ran on " * (i + 1))


async def tokens(eng: AsyncEngine, r: GenerationRequest) -> list[int]:
    out: list[int] = []
    async for delta in eng.generate(r):
        out.extend(delta.token_ids)
    return out


def test_rows_leaving_in_any_order_keep_every_output():
    eng = AsyncEngine.from_config(EngineConfig(device="cpu", dtype="float32", max_running=4, seed=0))
    eng.load()

    async def main():
        await eng.start()
        try:
            alone = [await tokens(eng, request(i, n)) for i, n in enumerate(LENGTHS)]
            together = await asyncio.gather(*(tokens(eng, request(i, n)) for i, n in enumerate(LENGTHS)))
        finally:
            await eng.shutdown()
        return alone, together

    alone, together = asyncio.run(main())
    assert [len(t) for t in alone] == LENGTHS
    assert together == alone
