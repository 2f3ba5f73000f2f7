"""Structure of the Grafana dashboards (no Grafana server runs here; test_prometheus.py runs their PromQL).

Checks: the JSON is what `deploy/grafana/dashboards.py` generates; panel ids are unique; every panel has
a grid position inside Grafana's 24 columns, without overlaps; every panel and target uses the
provisioned datasource uid; every non-row panel has PromQL targets with unique refIds; the panels the
issue asks for exist by title; the comparison dashboard splits by instance and policy.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
PATHS = sorted((GRAFANA / "dashboards").glob("*.json"))

REQUIRED_MAIN = {
    "Prefetch hit rate",
    "Prefetch hit rate per layer",
    "Misses per generated token",
    "Stall seconds per generated token",
    "Expert-load stall p50 / p99",
    "Prediction latency p50 / p99",
    "Host-to-device bytes per second by reason",
    "Wasted-prefetch ratio",
    "Online predictor recall",
    "Cache occupancy",
    "Active policy",
    "Tokens per second",
    "Time to first token p50 / p99",
    "Time per output token p50 / p99",
    "Running and waiting requests",
}


def load(name: str) -> dict:
    return json.loads((GRAFANA / "dashboards" / name).read_text())


def datasource_uid() -> str:
    prov = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (ds,) = prov["datasources"]
    return ds["uid"]


def test_json_is_generated_by_the_script() -> None:
    spec = importlib.util.spec_from_file_location("grafana_dashboards", GRAFANA / "dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = module.render()
    assert sorted(rendered) == [p.name for p in PATHS]
    for name, text in rendered.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, (
            f"{name} differs from deploy/grafana/dashboards.py: run `python deploy/grafana/dashboards.py`"
        )


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    dash = json.loads(path.read_text())
    uid = datasource_uid()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == uid, p["title"]
        assert p["targets"], f"{p['title']} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == uid and t["expr"].strip(), p["title"]
    for v in dash["templating"]["list"]:
        assert v["datasource"]["uid"] == uid
        assert v.get("allValue") == ".*", "an All selection must match every instance"


def test_dashboard_uids_are_distinct_and_linked() -> None:
    dashes = [json.loads(p.read_text()) for p in PATHS]
    uids = [d["uid"] for d in dashes]
    assert len(set(uids)) == len(uids)
    for d in dashes:
        for link in d["links"]:
            assert link["url"].removeprefix("/d/") in uids


def test_main_dashboard_has_the_required_panels() -> None:
    dash = load("moe-prefetch.json")
    titles = {p["title"] for p in dash["panels"]}
    assert REQUIRED_MAIN <= titles, f"missing: {REQUIRED_MAIN - titles}"
    by_title = {p["title"]: p for p in dash["panels"]}
    assert by_title["Prefetch hit rate per layer"]["type"] == "heatmap"
    assert "by (layer)" in by_title["Prefetch hit rate per layer"]["targets"][0]["expr"]
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for quantile in ("histogram_quantile(0.5,", "histogram_quantile(0.99,"):
        for metric in (
            "moe_expert_load_stall_seconds_bucket",
            "moe_prediction_latency_seconds_bucket",
            "moe_request_time_to_first_token_seconds_bucket",
            "moe_request_time_per_output_token_seconds_bucket",
        ):
            assert any(
                quantile in e and metric in e
                for p in dash["panels"]
                for e in [t["expr"] for t in p.get("targets", [])]
            ), (quantile, metric)
    assert "reason" in by_title["Host-to-device bytes per second by reason"]["targets"][0]["expr"]
    assert "moe_policy_info" in exprs


def test_comparison_dashboard_splits_by_instance_and_policy() -> None:
    dash = load("policy-comparison.json")
    names = {v["name"] for v in dash["templating"]["list"]}
    assert names == {"instance", "policy"}
    timeseries = [p for p in dash["panels"] if p["type"] == "timeseries" and "repeat" not in p]
    assert len(timeseries) >= 6
    for p in timeseries:
        (t,) = p["targets"]
        assert "group_left (policy)" in t["expr"] and 'policy=~"$policy"' in t["expr"], p["title"]
        assert "{{policy}}" in t["legendFormat"] and "{{instance}}" in t["legendFormat"]
    repeated = [p for p in dash["panels"] if p.get("repeat") == "instance"]
    assert repeated and all(p["repeatDirection"] == "h" for p in repeated)
    (table,) = [p for p in dash["panels"] if p["type"] == "table"]
    assert len(table["targets"]) >= 6 and all(
        t["instant"] and t["format"] == "table" for t in table["targets"]
    )
