#!/usr/bin/env python3
"""deploy/prometheus: promtool checks the rules and the config, runs the rules' unit tests,
and every alert is exercised by at least one unit test."""

import os
import shutil
import sys
import tempfile

import yaml

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import deploy_lib as lib  # noqa: E402

PROM_DIR = os.path.join(lib.DEPLOY_DIR, "prometheus")


def main():
    f = lib.Failures("prometheus_rules_test")
    rule_files = lib.files_under(os.path.join(PROM_DIR, "rules"), (".yml", ".yaml"))
    test_files = lib.files_under(os.path.join(PROM_DIR, "tests"), (".yml", ".yaml"))
    f.check(rule_files, "no rule files in deploy/prometheus/rules")
    f.check(test_files, "no promtool unit tests in deploy/prometheus/tests")

    out = lib.run(["promtool", "check", "rules", *rule_files])
    f.check(out.returncode == 0, f"promtool check rules:\n{out.stdout}{out.stderr}")

    out = lib.run(["promtool", "test", "rules", *[os.path.basename(t) for t in test_files]],
                  cwd=os.path.join(PROM_DIR, "tests"))
    f.check(out.returncode == 0, f"promtool test rules:\n{out.stdout}{out.stderr}")

    # Every rule file is loaded by prometheus.yml and by some unit test.
    config = lib.load_yaml(os.path.join(PROM_DIR, "prometheus.yml"))
    loaded = {os.path.normpath(os.path.join(PROM_DIR, r)) for r in config.get("rule_files", [])}
    tested_files, tested_alerts = set(), set()
    for t in test_files:
        spec = lib.load_yaml(t)
        tested_files |= {os.path.normpath(os.path.join(os.path.dirname(t), r))
                         for r in spec.get("rule_files", [])}
        for case in spec.get("tests", []):
            for a in case.get("alert_rule_test", []) or []:
                if a.get("exp_alerts"):
                    tested_alerts.add(a["alertname"])
    for r in rule_files:
        f.check(r in loaded, f"prometheus.yml rule_files misses {os.path.relpath(r, PROM_DIR)}")
        f.check(r in tested_files, f"no unit test loads {os.path.relpath(r, PROM_DIR)}")
        for group in lib.load_yaml(r)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    f.check(rule["alert"] in tested_alerts,
                            f"alert {rule['alert']} never fires in a promtool unit test")

    # promtool check config. Debian's Prometheus is built without Kubernetes service discovery
    # (NEWS.Debian: "Kubernetes support has been completely removed"), so the check runs on a
    # copy whose kubernetes_sd_configs are swapped for an empty static_configs; the relabeling,
    # rule files and everything else are checked as written.
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(PROM_DIR, "rules"), os.path.join(tmp, "rules"))
        swapped = 0
        for sc in config.get("scrape_configs", []):
            if sc.pop("kubernetes_sd_configs", None) is not None:
                sc["static_configs"] = [{"targets": []}]
                swapped += 1
        f.check(swapped > 0, "prometheus.yml has no kubernetes_sd_configs scrape job")
        with open(os.path.join(tmp, "prometheus.yml"), "w") as out_file:
            yaml.safe_dump(config, out_file)
        out = lib.run(["promtool", "check", "config", os.path.join(tmp, "prometheus.yml")])
        f.check(out.returncode == 0, f"promtool check config:\n{out.stdout}{out.stderr}")
    f.finish()


if __name__ == "__main__":
    main()
