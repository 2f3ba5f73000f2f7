"""Text completions: string, batch and token-id prompts, streamed and not."""

from __future__ import annotations


def test_streamed_equals_non_streamed(live):
    full = live.client.completions.create(
        model="fake-moe", prompt="Once upon a time", temperature=0, max_tokens=30
    )
    chunks = list(
        live.client.completions.create(
            model="fake-moe",
            prompt="Once upon a time",
            temperature=0,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert full.object == "text_completion"
    assert full.choices[0].text == text  # here the length cut falls inside a character: both end in U+FFFD
    assert full.choices[0].finish_reason == "length"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 30 == full.usage.completion_tokens
    assert full.usage.prompt_tokens == len(b"Once upon a time")
    assert full.usage.total_tokens == full.usage.prompt_tokens + 30


def test_batch_of_prompts_and_n(live):
    r = live.client.completions.create(
        model="fake-moe", prompt=["alpha", "beta gamma"], n=2, temperature=0, max_tokens=4
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    texts = [c.text for c in r.choices]
    assert (
        texts[0] == texts[1] and texts[2] == texts[3] and texts[0] != texts[2]
    )  # greedy: n copies per prompt
    assert r.usage.prompt_tokens == len(b"alpha") + len(b"beta gamma")
    assert r.usage.completion_tokens == 16


def test_token_id_prompts(live):
    ids = list(b"Once upon a time")
    by_ids = live.client.completions.create(model="fake-moe", prompt=ids, temperature=0, max_tokens=10)
    by_text = live.client.completions.create(
        model="fake-moe", prompt="Once upon a time", temperature=0, max_tokens=10
    )
    assert by_ids.choices[0].text == by_text.choices[0].text
    two = live.client.completions.create(model="fake-moe", prompt=[ids, ids[:4]], temperature=0, max_tokens=3)
    assert len(two.choices) == 2 and two.usage.prompt_tokens == len(ids) + 4


def test_stop_in_completions(live):
    base = (
        live.client.completions.create(model="fake-moe", prompt="abc", temperature=0, max_tokens=40)
        .choices[0]
        .text
    )
    stop = base[20:23]
    r = live.client.completions.create(
        model="fake-moe", prompt="abc", temperature=0, max_tokens=40, stop=stop
    )
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == base[: base.find(stop)]


def test_models_and_health(live):
    models = live.client.models.list().data
    assert [m.id for m in models] == ["fake-moe"]
    assert live.client.models.retrieve("fake-moe").id == "fake-moe"
    body = live.http.get("/v1/models").json()
    assert body["object"] == "list" and body["data"][0]["max_model_len"] == 512
    h = live.http.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"
