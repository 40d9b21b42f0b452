#!/usr/bin/env python3
"""deploy/grafana: the dashboards are valid, provisionable, and show what issue 5 asks for:
panels use the ${datasource} variable of a provisioned Prometheus type; the experts dashboard
has a `layer` variable and a heatmap repeated per layer; every canary panel is split by
model_version."""

import glob
import json
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import deploy_lib as lib  # noqa: E402

GRAFANA_DIR = os.path.join(lib.DEPLOY_DIR, "grafana")


def panels(items):
    for p in items or []:
        yield p
        yield from panels(p.get("panels"))


def main():
    f = lib.Failures("grafana_dashboards_test")
    boards = {}
    for path in sorted(glob.glob(os.path.join(GRAFANA_DIR, "dashboards", "*.json"))):
        try:
            with open(path) as fh:
                boards[os.path.basename(path)] = json.load(fh)
        except ValueError as e:
            f.check(False, f"{path}: {e}")
    for name in ("dmoe-overview.json", "dmoe-experts.json", "dmoe-canary.json"):
        f.check(name in boards, f"dashboard {name} is missing")

    # Provisioning: one Prometheus datasource, a file provider.
    ds = lib.load_yaml(os.path.join(GRAFANA_DIR, "provisioning", "datasources", "dmoe-prometheus.yaml"))
    f.check(any(d.get("type") == "prometheus" for d in ds.get("datasources", [])),
            "provisioning declares no prometheus datasource")
    prov = lib.load_yaml(os.path.join(GRAFANA_DIR, "provisioning", "dashboards", "dmoe.yaml"))
    f.check(any(p.get("type") == "file" and p.get("options", {}).get("path")
                for p in prov.get("providers", [])), "no file dashboard provider")

    uids = set()
    for name, board in boards.items():
        f.check(board.get("uid") and board["uid"] not in uids, f"{name}: missing or duplicate uid")
        uids.add(board.get("uid"))
        variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
        f.check(variables.get("datasource", {}).get("type") == "datasource"
                and variables["datasource"].get("query") == "prometheus",
                f"{name}: no prometheus `datasource` variable")
        ids, used_vars = set(), set()
        for p in panels(board.get("panels")):
            f.check(p.get("id") not in ids, f"{name}: duplicate panel id {p.get('id')}")
            ids.add(p.get("id"))
            gp = p.get("gridPos", {})
            f.check(gp.get("x", -1) >= 0 and gp.get("x", 0) + gp.get("w", 0) <= 24 and gp.get("h", 0) > 0,
                    f"{name}: panel {p.get('title')!r} has a bad gridPos {gp}")
            if p.get("type") == "row":
                continue
            f.check(p.get("datasource", {}).get("uid") == "${datasource}",
                    f"{name}: panel {p.get('title')!r} does not use ${{datasource}}")
            f.check(p.get("targets"), f"{name}: panel {p.get('title')!r} has no query")
            refs = [t.get("refId") for t in p.get("targets", [])]
            f.check(len(refs) == len(set(refs)), f"{name}: panel {p.get('title')!r} repeats a refId")
            for t in p.get("targets", []):
                expr = t.get("expr", "")
                for v in variables:
                    if f"${v}" in expr or f"${{{v}}}" in expr:
                        used_vars.add(v)
                for token in [x[1] for x in lib.tokenize(expr) if x[0] == "var"]:
                    var = token.strip("${}")
                    f.check(var in variables or var.startswith("__"),
                            f"{name}: panel {p.get('title')!r} uses undefined variable {token}")
                if name == "dmoe-canary.json":
                    # Split by model_version: aggregations keep it, the legend shows it.
                    kinds = [x for x in lib.tokenize(expr) if x[0] == "ident"]
                    aggregates = any(k[1] in ("sum", "max", "min", "avg", "count", "histogram_quantile")
                                     for k in kinds)
                    _, grouping = lib.parse_promql(expr)
                    f.check(not aggregates or "model_version" in grouping,
                            f"canary panel {p.get('title')!r} aggregates model_version away: {expr}")
                    f.check("{{model_version}}" in t.get("legendFormat", ""),
                            f"canary panel {p.get('title')!r}: legend does not name model_version")
        for v in variables:
            if v != "datasource":
                f.check(v in used_vars, f"{name}: variable ${v} is not used by any panel")

    experts = boards.get("dmoe-experts.json", {})
    variables = {v["name"]: v for v in experts.get("templating", {}).get("list", [])}
    f.check("layer" in variables, "experts dashboard has no `layer` variable")
    heatmaps = [p for p in panels(experts.get("panels")) if p.get("type") == "heatmap"]
    f.check(any(p.get("repeat") == "layer" and "dmoe_expert_tokens_total" in p["targets"][0]["expr"]
                and "$layer" in p["targets"][0]["expr"] for p in heatmaps),
            "experts dashboard has no per-layer heatmap of dmoe_expert_tokens_total")
    titles = " ".join(p.get("title", "") for p in panels(experts.get("panels"))).lower()
    for word in ("imbalance", "dispatch", "desired"):
        f.check(word in titles, f"experts dashboard has no {word} panel")
    f.finish()


if __name__ == "__main__":
    main()
