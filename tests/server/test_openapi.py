"""The served /openapi.json says what the server answers (schemathesis checks it against the real
server in test_schemathesis.py; these pin the declarations themselves)."""

from __future__ import annotations

from server.config import ServerConfig
from tests.fakes import FakeEngine
from tests.server_harness import live_server

GENERATION = ("/v1/chat/completions", "/v1/completions")
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def integer(schema: dict) -> dict:
    (node,) = [s for s in schema["anyOf"] if s.get("type") == "integer"]
    return node


def test_statuses_and_media_types(live):
    doc = live.http.get("/openapi.json").json()
    assert "422" not in str(doc) and "HTTPValidationError" not in str(doc)
    paths = doc["paths"]
    for path in GENERATION:
        responses = paths[path]["post"]["responses"]
        assert set(responses) == {"200", "400", "404", "413", "429", "500", "503"}
        assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
        for status in ("400", "404", "413", "429", "500", "503"):
            assert responses[status]["content"] == {"application/json": {"schema": ERROR_REF}}
        assert "security" not in paths[path]["post"]  # no key configured: no 401
    assert set(paths["/v1/models"]["get"]["responses"]) == {"200", "500"}
    assert set(paths["/v1/models/{model_id}"]["get"]["responses"]) == {"200", "404", "500"}
    assert set(paths["/health"]["get"]["responses"]) == {"200", "503", "500"}
    metrics = paths["/metrics"]["get"]["responses"]
    assert set(metrics["200"]["content"]) == {"text/plain"}
    assert metrics["500"]["content"] == {"application/json": {"schema": ERROR_REF}}
    assert live.http.get("/metrics").headers["content-type"].startswith("text/plain")


def test_sse_events_are_described(live):
    doc = live.http.get("/openapi.json").json()
    event = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    data = event["schema"]["properties"]["data"]
    assert {"const": "[DONE]"} in data["oneOf"]
    (json_data,) = [d for d in data["oneOf"] if "contentSchema" in d]
    refs = [r["$ref"].rsplit("/", 1)[-1] for r in json_data["contentSchema"]["anyOf"]]
    assert refs == ["ChatCompletionChunk", "ErrorResponse"]
    assert "ChatCompletionChunk" in doc["components"]["schemas"]


def test_bounds_are_in_the_schema(live):
    schemas = live.http.get("/openapi.json").json()["components"]["schemas"]
    comp, chat = schemas["CompletionRequest"]["properties"], schemas["ChatCompletionRequest"]["properties"]
    ids = [s for s in comp["prompt"]["anyOf"] if s.get("items", {}).get("type") == "integer"]
    assert ids[0]["items"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 256,
    }  # the fake's vocabulary is 257
    batch = [s for s in comp["prompt"]["anyOf"] if s.get("items", {}).get("type") == "array"]
    assert batch[0]["items"]["items"]["maximum"] == 256 and batch[0]["items"]["minItems"] == 1
    for props in (comp, chat):
        assert integer(props["max_tokens"]) == {"type": "integer", "minimum": 1, "maximum": 511}
        assert integer(props["n"]) == {"type": "integer", "minimum": 1, "maximum": 16}
        assert integer(props["seed"]) == {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1}
        temperature = [s for s in props["temperature"]["anyOf"] if s.get("type") == "number"][0]
        assert (temperature["minimum"], temperature["maximum"]) == (0, 2)
        top_p = [s for s in props["top_p"]["anyOf"] if s.get("type") == "number"][0]
        assert (top_p["exclusiveMinimum"], top_p["maximum"]) == (0, 1)
        stop_list = [s for s in props["stop"]["anyOf"] if s.get("type") == "array"][0]
        assert stop_list["maxItems"] == 16 and stop_list["items"]["minLength"] == 1
    assert integer(chat["max_completion_tokens"])["maximum"] == 511


def test_api_key_adds_401_and_bearer():
    with live_server(FakeEngine(), ServerConfig(api_key="s3cret"), api_key="s3cret") as srv:
        doc = srv.http.get("/openapi.json").json()
        assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, item in doc["paths"].items():
            for operation in item.values():
                if path.startswith("/v1/"):
                    assert operation["security"] == [{"bearer": []}]
                    assert operation["responses"]["401"]["content"]["application/json"]["schema"] == ERROR_REF
                else:  # /health and /metrics stay open
                    assert "401" not in operation["responses"] and "security" not in operation
