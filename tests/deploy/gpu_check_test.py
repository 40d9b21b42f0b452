#!/usr/bin/env python3
"""scripts/gpu-check without a GPU (issue 16): the script parses (bash -n); its dry run writes
the plan to OUTDIR and exits 0 without building; its target list holds every GPU test of
tests/cuda/CMakeLists.txt (so a new kernels test is not forgotten on the GPU run) and the
benchmark; docs/bench/gpu.md exists and does not claim figures before a run."""

import os
import re
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import deploy_lib as lib  # noqa: E402

SCRIPT = os.path.join(lib.SOURCE_DIR, "scripts", "gpu-check")


def main():
    f = lib.Failures("gpu_check_test")
    out = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True)
    f.check(out.returncode == 0, f"bash -n scripts/gpu-check: {out.stderr}")
    with open(SCRIPT) as fh:
        script = fh.read()
    m = re.search(r"gpu_targets=\(([^)]*)\)", script)
    targets = set(m.group(1).split()) if m else set()
    f.check(bool(targets), "scripts/gpu-check: no gpu_targets=(...) list")
    with open(os.path.join(lib.SOURCE_DIR, "tests", "cuda", "CMakeLists.txt")) as fh:
        cmake = fh.read()
    for name, labels in re.findall(r"NAME (\w+)\s+SRCS[^)]*?LABELS (\w+)", cmake, re.S):
        if labels == "kernels":
            f.check(name in targets, f"scripts/gpu-check does not build the GPU test {name}")
    f.check("dmoe_gpu_bench" in targets, "scripts/gpu-check does not build dmoe_gpu_bench")
    f.check("DMOE_REQUIRE_GPU=1" in script and "DMOE_REQUIRE_TWO_GPUS=1" in script,
            "scripts/gpu-check does not require the GPU(s) it runs on")

    with tempfile.TemporaryDirectory(prefix="dmoe-gpu-check-") as tmp:
        env = dict(os.environ, BUILD_DIR=os.path.join(tmp, "never-built"))
        run = subprocess.run([SCRIPT, "--dry-run", os.path.join(tmp, "out")], capture_output=True,
                             text=True, env=env, timeout=60)
        f.check(run.returncode == 0, f"gpu-check --dry-run exited {run.returncode}: {run.stderr}")
        results = os.path.join(tmp, "out", "results.md")
        if f.check(os.path.exists(results), "gpu-check --dry-run wrote no results.md"):
            with open(results) as fh:
                text = fh.read()
            f.check("dry run" in text, "results.md of a dry run does not say so")
            f.check("nccl_two_rank_test" in text and "two-rank NCCL" in text,
                    "results.md does not report the two-rank NCCL run")
        f.check(not os.path.exists(env["BUILD_DIR"]), "gpu-check --dry-run configured a build")
        usage = subprocess.run([SCRIPT], capture_output=True, text=True, timeout=30)
        f.check(usage.returncode == 2 and "usage" in usage.stderr, "gpu-check without OUTDIR is not a usage error")

    doc_path = os.path.join(lib.SOURCE_DIR, "docs", "bench", "gpu.md")
    if f.check(os.path.exists(doc_path), "docs/bench/gpu.md is missing"):
        with open(doc_path) as fh:
            doc = fh.read()
        f.check("scripts/gpu-check" in doc, "docs/bench/gpu.md does not say how it is filled")
        if "No GPU run has happened yet" in doc:
            # Before the first run: no measured figure may appear in the result tables.
            f.check(re.search(r"\|\s*[\d.]+\s*(ms|GB/s|tokens/s)\s*\|", doc) is None,
                    "docs/bench/gpu.md says no run happened but shows figures")
    f.finish()


if __name__ == "__main__":
    main()
