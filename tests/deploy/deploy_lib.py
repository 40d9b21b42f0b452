"""Shared helpers of the deploy/ consistency tests (tests/deploy/*_test.py).

Every test runs the real tools: `dmoe metrics list` for the catalog, the role binaries' --help
for their flags, `kubectl kustomize` for the manifests and promtool for the rules. ctest sets
DMOE_BIN_DIR and DMOE_SOURCE_DIR; run by hand, they default to build/bin and the checkout.
"""

import json
import os
import re
import subprocess
import sys

import yaml

SOURCE_DIR = os.path.abspath(os.environ.get(
    "DMOE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", "..")))
BIN_DIR = os.path.abspath(os.environ.get("DMOE_BIN_DIR", os.path.join(SOURCE_DIR, "build", "bin")))
DEPLOY_DIR = os.path.join(SOURCE_DIR, "deploy")
K8S_DIR = os.path.join(DEPLOY_DIR, "k8s")
OVERLAYS = ["dev-cpu", "gpu-prod", "canary"]

# Labels Prometheus attaches to every scraped series (deploy/prometheus/prometheus.yml).
TARGET_LABELS = {"job", "instance", "component", "namespace", "pod", "shard_deployment"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class Failures:
    """Collects failures so one run reports all of them; exits 1 if there is any."""

    def __init__(self, name):
        self.name = name
        self.items = []
        self.checks = 0

    def check(self, ok, message):
        self.checks += 1
        if not ok:
            self.items.append(message)
        return ok

    def finish(self):
        for item in self.items:
            print(f"FAIL: {item}")
        if self.items:
            print(f"{self.name}: {len(self.items)} of {self.checks} checks failed")
            sys.exit(1)
        if self.checks == 0:
            print(f"{self.name}: no checks ran")
            sys.exit(1)
        print(f"{self.name}: {self.checks} checks passed")


def run(args, **kwargs):
    return subprocess.run(args, check=False, capture_output=True, text=True, **kwargs)


def catalog():
    """name -> spec (type, role, labels, help, buckets) from `dmoe metrics list --format json`."""
    out = run([os.path.join(BIN_DIR, "dmoe"), "metrics", "list", "--format", "json"])
    if out.returncode != 0:
        raise SystemExit(f"dmoe metrics list failed: {out.stderr}")
    return {m["name"]: m for m in json.loads(out.stdout)}


def binary_flags(binary):
    """The long flags a binary's --help lists (CLI11 prints `  --name TYPE ...`)."""
    out = run([os.path.join(BIN_DIR, binary), "--help"])
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise SystemExit(f"{binary} --help failed ({out.returncode}): {text}")
    flags = set()
    for line in text.splitlines():
        for m in re.finditer(r"(?:^|[\s,])(--[a-z0-9][a-z0-9-]*)", line):
            flags.add(m.group(1))
    return flags


def kustomize(path):
    """Renders a kustomization; returns the list of objects (raises on failure)."""
    out = run(["kubectl", "kustomize", path])
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def files_under(root, suffixes):
    found = []
    for dirpath, _, names in os.walk(root):
        for n in sorted(names):
            if n.endswith(suffixes):
                found.append(os.path.join(dirpath, n))
    return sorted(found)


# --- PromQL -------------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset", "atan2", "inf", "nan", "start", "end",
             # Aggregation operators: `sum by (x) (...)` puts the label list before the "(".
             "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
             "bottomk", "topk", "quantile"}
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<tmpl><<\.[A-Za-z]+>>)
  | (?P<num>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?(?:\d+(?:ms|[smhdwy]))*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],:@])
""", re.VERBOSE)


def tokenize(expr):
    pos, tokens = 0, []
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot tokenize {expr[pos:pos + 20]!r} in {expr!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            tokens.append((m.lastgroup, m.group()))
    return tokens


class Selector:
    def __init__(self, metric):
        self.metric = metric
        self.matchers = {}  # label -> (op, value)


def parse_promql(expr):
    """Returns (selectors, grouping_labels): the metric selectors with their label matchers,
    and every label named in by/without/on/ignoring/group_* lists. Enough PromQL for
    consistency checks, not a full parser."""
    tokens = tokenize(expr)
    selectors, grouping = [], set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else None
        if kind == "ident" and text in _LABEL_LIST_KEYWORDS and nxt == "(":
            j = i + 2
            while j < len(tokens) and tokens[j][1] != ")":
                if tokens[j][0] == "ident":
                    grouping.add(tokens[j][1])
                j += 1
            i = j + 1
            continue
        if kind == "ident" and (nxt == "(" or text in _KEYWORDS):
            i += 1
            continue
        if kind in ("ident", "tmpl") or (kind == "op" and text == "{"):
            sel = Selector(text if kind != "op" else None)
            j = i + 1 if kind != "op" else i
            if j < len(tokens) and tokens[j][1] == "{":
                j += 1
                while j < len(tokens) and tokens[j][1] != "}":
                    if tokens[j][0] == "ident" and j + 2 < len(tokens) and tokens[j + 1][0] == "op":
                        value = tokens[j + 2][1]
                        sel.matchers[tokens[j][1]] = (tokens[j + 1][1], value.strip("\"'`"))
                        j += 3
                    else:
                        j += 1
                j += 1
            selectors.append(sel)
            i = j
            continue
        if kind == "op" and text == "[":
            while i < len(tokens) and tokens[i][1] != "]":
                i += 1
        i += 1
    return selectors, grouping


def recording_rules():
    """record name -> set of label names it may carry (from every rules file)."""
    records = {}
    for path in files_under(os.path.join(DEPLOY_DIR, "prometheus", "rules"), (".yml", ".yaml")):
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    records.setdefault(rule["record"], set()).update(rule.get("labels", {}) or {})
    return records


# --- Rendered manifests ---------------------------------------------------------------------

def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def pod_spec(o):
    return o["spec"]["template"]["spec"]


def container_env(container, objects):
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then env
    (fieldRef values become a placeholder). Raises KeyError for a missing ConfigMap."""
    config_maps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind(objects, "ConfigMap")}
    env = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        if name not in config_maps:
            raise KeyError(f"ConfigMap {name} (envFrom) is not in the rendered manifests")
        env.update(config_maps[name])
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", f"<{e['name']}>")
    return env


def expand(value, env):
    """$(VAR) expansion; returns (expanded, unresolved names)."""
    missing = []

    def sub(m):
        if m.group(1) in env:
            return env[m.group(1)]
        missing.append(m.group(1))
        return m.group(0)
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value), missing


def parse_args(args):
    """['--a=1', '--b', '2', '--c'] -> [('--a', '1'), ('--b', '2'), ('--c', None)]."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and "=" in a:
            name, value = a.split("=", 1)
            out.append((name, value))
        elif a.startswith("--"):
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
            out.append((a, value))
            i += 0 if value is None else 1
        else:
            out.append((None, a))
        i += 1
    return out


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())
