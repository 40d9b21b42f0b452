#!/usr/bin/python3
"""Checks that the tree shows the architecture (ARCHITECTURE.md "Layout"; issue 10).

1. Include rules: a role folder (router/, scheduler/, attention_service/, expert_service/)
   includes no other role folder; what pods share (cluster/, transport/) and the libraries under
   them (model/, engine/, metrics/, common/) include no role; the router includes no model,
   engine or scheduler code; model/ knows no network.
2. Link rules, from the build's dmoe_link_closure.txt (cmake/link_closure.cmake): each role
   binary links only its own role's libraries and the shared ones.

Usage: check_layout.py SOURCE_DIR [LINK_CLOSURE_FILE]. Prints every violation; exit 1 if any.
"""
import pathlib
import re
import sys

ROLES = ("router", "scheduler", "attention_service", "expert_service")
COMPUTE = ("model", "engine")

# Folder of the including file -> top-level folders it must not include.
FORBIDDEN_INCLUDES = {
    "router": {"scheduler", "attention_service", "expert_service", "serve", "model", "engine",
               "transport"},
    "scheduler": {"router", "attention_service", "expert_service", "serve", "transport"},
    "attention_service": {"router", "scheduler", "expert_service", "serve"},
    "expert_service": {"router", "scheduler", "attention_service", "serve"},
    "serve": {"router", "expert_service"},
    "cluster": set(ROLES) | {"serve", "transport"} | set(COMPUTE),
    "transport": set(ROLES) | {"serve", "cluster"},
    "engine": set(ROLES) | {"serve", "cluster", "transport", "proto"},
    "model": set(ROLES) | {"serve", "cluster", "transport", "engine", "proto", "grpcpp"},
    "metrics": set(ROLES) | {"serve", "cluster", "transport"} | set(COMPUTE),
    "common": set(ROLES) | {"serve", "cluster", "transport", "metrics"} | set(COMPUTE),
    "clients/cpp": set(ROLES) | {"serve", "cluster", "transport"} | set(COMPUTE),
    # The OpenAI HTTP front end speaks only the public API (like a client).
    "http": set(ROLES) | {"serve", "cluster", "transport", "metrics"} | set(COMPUTE),
}

# Binary -> dmoe libraries (prefixes) it must not link.
FORBIDDEN_LINKS = {
    "dmoe-router": ("dmoe_scheduler", "dmoe_attention", "dmoe_expert", "dmoe_serve",
                    "dmoe_engine", "dmoe_denoising", "dmoe_model", "dmoe_checkpoint",
                    "dmoe_tokenizer", "dmoe_cpu_kernels", "dmoe_cuda", "dmoe_transport"),
    "dmoe-scheduler": ("dmoe_attention", "dmoe_expert", "dmoe_serve", "dmoe_engine",
                       "dmoe_model", "dmoe_cpu_kernels", "dmoe_cuda", "dmoe_transport",
                       "dmoe_router", "dmoe_generation_proxy", "dmoe_canary"),
    "dmoe-attention": ("dmoe_scheduler", "dmoe_expert", "dmoe_serve", "dmoe_router",
                       "dmoe_generation_proxy", "dmoe_canary", "dmoe_tokenizer"),
    "dmoe-expert": ("dmoe_scheduler", "dmoe_attention", "dmoe_serve", "dmoe_engine",
                    "dmoe_denoising", "dmoe_router", "dmoe_generation_proxy", "dmoe_canary",
                    "dmoe_tokenizer"),
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def owner(path: pathlib.PurePosixPath) -> str:
    parts = path.parts
    if len(parts) >= 2 and f"{parts[0]}/{parts[1]}" in FORBIDDEN_INCLUDES:
        return f"{parts[0]}/{parts[1]}"
    return parts[0]


def check_includes(root: pathlib.Path) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".h", ".cc", ".cu", ".cuh") or "node_modules" in path.parts:
            continue
        relative = pathlib.PurePosixPath(path.relative_to(root).as_posix())
        if relative.parts[0].startswith("build"):
            continue
        forbidden = FORBIDDEN_INCLUDES.get(owner(relative))
        if not forbidden:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            match = INCLUDE.match(line)
            if match and match.group(1).split("/")[0] in forbidden:
                problems.append(f"{relative}:{number}: {owner(relative)}/ must not include "
                                f"\"{match.group(1)}\"")
    return problems


def check_links(closure_file: pathlib.Path) -> list[str]:
    problems = []
    closures = {}
    for line in closure_file.read_text().splitlines():
        binary, _, libs = line.partition(":")
        closures[binary.strip()] = libs.split()
    for binary, prefixes in FORBIDDEN_LINKS.items():
        if binary not in closures:
            problems.append(f"{closure_file}: no line for {binary}")
            continue
        for lib in closures[binary]:
            if lib.startswith(prefixes):
                problems.append(f"{binary} links {lib}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    problems = check_includes(pathlib.Path(argv[1]))
    if len(argv) == 3:
        problems += check_links(pathlib.Path(argv[2]))
    for problem in problems:
        print(problem)
    print(f"check_layout: {len(problems)} violation(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
