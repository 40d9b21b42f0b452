#!/usr/bin/env python3
"""Every metric a rule, dashboard, prometheus-adapter rule or HPA uses is one the code exports
(`dmoe metrics list`) or a recording rule deploy/prometheus/rules defines, with labels the
series carry; histograms are used through _bucket/_sum/_count only."""

import glob
import json
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import deploy_lib as lib  # noqa: E402

ALLOWED_FOREIGN = {"up"}  # Prometheus' own per-target series.


class Checker:
    def __init__(self, failures, catalog, records):
        self.f = failures
        self.catalog = catalog
        self.records = records
        self.used = set()

    def series_labels(self, name):
        """Labels a series may carry, or None if the name is unknown (a failure is recorded)."""
        if name.startswith("dmoe:"):
            return self.records.get(name)
        if name in self.catalog:
            return set(self.catalog[name]["labels"]) | lib.TARGET_LABELS
        for suffix in lib.HISTOGRAM_SUFFIXES:
            base = name[: -len(suffix)]
            if name.endswith(suffix) and base in self.catalog:
                labels = set(self.catalog[base]["labels"]) | lib.TARGET_LABELS
                return labels | {"le"} if suffix == "_bucket" else labels
        return None

    def expr(self, where, expr, extra_labels=()):
        try:
            selectors, grouping = lib.parse_promql(expr)
        except ValueError as e:
            self.f.check(False, f"{where}: {e}")
            return
        self.f.check(selectors, f"{where}: no metric in {expr!r}")
        union = set(extra_labels) | lib.TARGET_LABELS | {"le", "quantile"}
        for sel in selectors:
            name = sel.metric or sel.matchers.get("__name__", ("", ""))[1]
            if name in ALLOWED_FOREIGN:
                union |= {"job", "instance"}
                continue
            self.used.add(name)
            if not self.f.check(name.startswith(("dmoe_", "dmoe:")),
                                f"{where}: {name!r} is not a dmoe series"):
                continue
            if self.f.check(not (name in self.catalog and self.catalog[name]["type"] == "histogram"),
                            f"{where}: histogram {name} has no such series; use _bucket/_sum/_count"):
                pass
            labels = self.series_labels(name)
            if not self.f.check(labels is not None,
                                f"{where}: {name} is neither in `dmoe metrics list` nor a recording rule"):
                continue
            union |= labels
            for label in sel.matchers:
                if label != "__name__":
                    self.f.check(label in labels, f"{where}: {name} has no label {label!r}")
        for label in grouping:
            self.f.check(label in union, f"{where}: grouping by {label!r}, which no series in the expression has")


def record_labels(records_exprs):
    """Labels of each recording rule's output: its by() labels, else those of the records it
    reads, plus its static labels. Resolved in file order (rules read earlier records)."""
    out = {}
    for name, expr, static in records_exprs:
        selectors, grouping = lib.parse_promql(expr)
        labels = set(grouping) - {"le"} if grouping else set()
        if not grouping:
            for sel in selectors:
                labels |= out.get(sel.metric, set())
        out.setdefault(name, set()).update(labels | set(static))
    return out


def dashboard_exprs(dashboard):
    def panels(items):
        for p in items or []:
            yield p
            yield from panels(p.get("panels"))
    for p in panels(dashboard.get("panels")):
        for t in p.get("targets", []) or []:
            if t.get("expr"):
                yield f"panel {p.get('title')!r}", t["expr"], False
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if q:
                yield f"variable {v.get('name')!r}", q, True


def main():
    f = lib.Failures("metric_names_test")
    catalog = lib.catalog()

    rule_exprs, records_exprs = [], []
    for path in lib.files_under(os.path.join(lib.DEPLOY_DIR, "prometheus", "rules"), (".yml", ".yaml")):
        for group in lib.load_yaml(path)["groups"]:
            for rule in group["rules"]:
                where = f"{os.path.basename(path)} {rule.get('record') or rule.get('alert')}"
                rule_exprs.append((where, rule["expr"]))
                if "record" in rule:
                    records_exprs.append((rule["record"], rule["expr"], rule.get("labels") or {}))
    c = Checker(f, catalog, record_labels(records_exprs))
    for where, expr in rule_exprs:
        c.expr(where, expr)

    dashboards = sorted(glob.glob(os.path.join(lib.DEPLOY_DIR, "grafana", "dashboards", "*.json")))
    f.check(dashboards, "no dashboards in deploy/grafana/dashboards")
    for path in dashboards:
        with open(path) as fh:
            dashboard = json.load(fh)
        for where, expr, is_variable in dashboard_exprs(dashboard):
            where = f"{os.path.basename(path)} {where}"
            if is_variable and expr.startswith("label_values("):
                inner = expr[len("label_values("):].rstrip().rstrip(")")
                metric_expr, _, label = inner.rpartition(",")
                if not metric_expr:
                    f.check(False, f"{where}: label_values without a metric: {expr}")
                    continue
                c.expr(where, metric_expr, extra_labels=())
                sel = lib.parse_promql(metric_expr)[0]
                labels = c.series_labels(sel[0].metric) if sel else None
                f.check(labels is not None and label.strip() in labels,
                        f"{where}: {sel[0].metric if sel else '?'} has no label {label.strip()!r}")
            else:
                c.expr(where, expr)

    # prometheus-adapter: the metrics it exposes and the queries behind them.
    adapter_path = os.path.join(lib.K8S_DIR, "prometheus-adapter", "config.yaml")
    exposed = {}
    if f.check(os.path.exists(adapter_path), "deploy/k8s/prometheus-adapter/config.yaml is missing"):
        adapter = lib.load_yaml(adapter_path)
        f.check(adapter.get("externalRules"), "prometheus-adapter config has no externalRules")
        for rule in adapter.get("externalRules", []):
            sels = lib.parse_promql(rule["seriesQuery"])[0]
            if not f.check(len(sels) == 1 and sels[0].metric, f"adapter seriesQuery {rule['seriesQuery']!r} must name one metric"):
                continue
            series = sels[0].metric
            c.expr("adapter seriesQuery", rule["seriesQuery"])
            c.expr(f"adapter metricsQuery of {series}",
                   rule["metricsQuery"].replace("<<.Series>>", series)
                   .replace("{<<.LabelMatchers>>}", "").replace("<<.LabelMatchers>>", "")
                   .replace("<<.GroupBy>>", "namespace"))
            name = rule.get("name", {}).get("as") or series
            exposed[name] = c.series_labels(series) or set()
        values = lib.load_yaml(os.path.join(lib.K8S_DIR, "prometheus-adapter", "values.yaml"))
        f.check(values.get("rules", {}).get("external") == adapter.get("externalRules"),
                "prometheus-adapter values.yaml rules.external differs from config.yaml externalRules")

    # HPAs of every overlay: External metrics the adapter exposes, selected by existing labels.
    hpas = 0
    for overlay in lib.OVERLAYS:
        try:
            objects = lib.kustomize(os.path.join(lib.K8S_DIR, "overlays", overlay))
        except RuntimeError as e:
            f.check(False, f"kubectl kustomize overlays/{overlay}: {e}")
            continue
        for o in objects:
            if o["kind"] != "HorizontalPodAutoscaler":
                continue
            hpas += 1
            where = f"{overlay} HPA {o['metadata']['name']}"
            for m in o["spec"].get("metrics", []):
                if not f.check(m["type"] == "External", f"{where}: metric type {m['type']} (expected External)"):
                    continue
                name = m["external"]["metric"]["name"]
                c.used.add(name)
                if not f.check(name in exposed, f"{where}: no prometheus-adapter rule exposes {name}"):
                    continue
                selector = m["external"]["metric"].get("selector", {}).get("matchLabels", {})
                for label in selector:
                    f.check(label in exposed[name], f"{where}: {name} has no label {label!r}")
                f.check("shard" in selector, f"{where}: the selector must pick one shard")
    f.check(hpas > 0, "no HorizontalPodAutoscaler in any overlay")
    f.check("dmoe_expert_shard_desired_replicas" in c.used,
            "nothing autoscales on dmoe_expert_shard_desired_replicas")
    f.finish()


if __name__ == "__main__":
    main()
