#!/usr/bin/env python3
"""docs/metrics.md lists exactly the series of `dmoe metrics list`, each once, with the
catalog's type, labels, role (the section it is in) and histogram buckets."""

import os
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import deploy_lib as lib  # noqa: E402

SECTION_ROLE = {"dmoe-scheduler": "scheduler", "dmoe-attention": "attention",
                "dmoe-expert": "expert", "dmoe-router": "router", "every process": "all"}
ROW = re.compile(r"^\|\s*`(dmoe_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|(.*)\|\s*$")


def main():
    f = lib.Failures("metrics_doc_test")
    catalog = lib.catalog()
    with open(os.path.join(lib.SOURCE_DIR, "docs", "metrics.md")) as fh:
        lines = fh.read().splitlines()
    role, seen = None, {}
    for line in lines:
        if line.startswith("## "):
            role = next((r for key, r in SECTION_ROLE.items() if line[3:].startswith(key)), None)
            continue
        m = ROW.match(line)
        if not m:
            continue
        name, mtype, labels, meaning = m.groups()
        f.check(name not in seen, f"{name} is listed twice")
        seen[name] = True
        spec = catalog.get(name)
        if not f.check(spec is not None, f"docs/metrics.md lists {name}, which the catalog lacks"):
            continue
        f.check(mtype == spec["type"], f"{name}: type {mtype} in the doc, {spec['type']} in the catalog")
        doc_labels = re.findall(r"`([a-z_]+)`", labels)
        f.check(doc_labels == spec["labels"],
                f"{name}: labels {doc_labels} in the doc, {spec['labels']} in the catalog")
        f.check(role == spec["role"], f"{name}: listed under role {role}, catalog says {spec['role']}")
        f.check(len(meaning.strip()) > 10, f"{name}: no meaning given")
        if spec["type"] == "histogram":
            b = re.search(r"Buckets: ([0-9.e+\-, ]+)\.", meaning)
            doc_buckets = [float(x) for x in b.group(1).split(",")] if b else None
            f.check(doc_buckets == [float(x) for x in spec["buckets"]],
                    f"{name}: buckets {doc_buckets} in the doc, {spec['buckets']} in the catalog")
    for name in catalog:
        f.check(name in seen, f"docs/metrics.md does not list {name}")
    f.finish()


if __name__ == "__main__":
    main()
