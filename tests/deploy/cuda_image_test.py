#!/usr/bin/env python3
"""deploy/Dockerfile.cuda against scripts/build and the gpu-prod overlay (issue 16).

No image is built here (no Docker, no registry), so this checks what can be checked without one:
- the Dockerfile: two stages, an nvidia/cuda *devel* base for the build and the *runtime* base of
  the same CUDA version for the final stage; the build stage calls scripts/setup and
  scripts/build (the script CI builds the tree with), with CUDA and NCCL on; the final stage
  copies only the binaries and libraries, installs no -dev package and runs as the non-root
  USER the manifests' runAsUser expects;
- scripts/build itself, run exactly as the Dockerfile runs it (same BUILD_DIR / CMAKE_ARGS
  mechanism) into a scratch directory: it configures the CUDA + NCCL tree and lists the role
  binaries' targets (configure only; the full build is CI's own scripts/build run);
- the gpu-prod overlay (and the canary overlay built on it) uses the tag the Dockerfile's
  documented build command writes, runs attention and expert pods with --device=cuda, one
  nvidia.com/gpu each, and the dev-cpu overlay does not use the CUDA image.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import deploy_lib as lib  # noqa: E402

DOCKERFILE = os.path.join(lib.DEPLOY_DIR, "Dockerfile.cuda")


def logical_lines(text):
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def parse_dockerfile(text):
    """(global ARG defaults, stages): each stage {'from', 'name', 'instructions': [(op, rest)]}."""
    args, stages = {}, []
    for line in logical_lines(text):
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            stages.append({"from": m.group(1), "name": m.group(2), "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((op, rest))
        elif op == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
    return args, stages


def resolve(value, args):
    for _ in range(5):
        value = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), value)
    return value


def stage_arg(stage, name):
    for op, rest in stage["instructions"]:
        if op == "ARG" and rest.startswith(name + "="):
            return rest.split("=", 1)[1].strip('"')
    return None


def check_dockerfile(f):
    with open(DOCKERFILE) as fh:
        text = fh.read()
    args, stages = parse_dockerfile(text)
    if not f.check(len(stages) == 2, f"Dockerfile.cuda: expected 2 stages (build, runtime), got {len(stages)}"):
        return None
    build, final = stages
    devel, runtime = resolve(build["from"], args), resolve(final["from"], args)
    f.check(build["name"] == "build", f"Dockerfile.cuda: first stage is {build['name']!r}, not 'build'")
    f.check(re.fullmatch(r"nvidia/cuda:[\d.]+-devel-\S+", devel) is not None,
            f"Dockerfile.cuda: build stage base {devel} is not an nvidia/cuda devel image")
    f.check(re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-\S+", runtime) is not None,
            f"Dockerfile.cuda: final stage base {runtime} is not an nvidia/cuda runtime image")
    f.check(devel.split(":")[1].replace("-devel-", "-") == runtime.split(":")[1].replace("-runtime-", "-"),
            f"Dockerfile.cuda: devel {devel} and runtime {runtime} differ in CUDA version or OS")

    build_runs = " && ".join(rest for op, rest in build["instructions"] if op == "RUN")
    f.check(re.search(r"\bscripts/setup\b", build_runs) is not None,
            "Dockerfile.cuda: the build stage does not run scripts/setup")
    f.check(re.search(r"\bscripts/build\b", build_runs) is not None,
            "Dockerfile.cuda: the build stage does not run scripts/build (the script CI builds with)")
    f.check(re.search(r"cmake\s+--build", build_runs) is None,
            "Dockerfile.cuda: the build stage calls cmake --build itself instead of scripts/build")
    cmake_args = stage_arg(build, "CMAKE_ARGS") or ""
    for flag in ("-DDMOE_ENABLE_CUDA=ON", "-DDMOE_ENABLE_NCCL=ON"):
        f.check(flag in cmake_args.split(), f"Dockerfile.cuda: CMAKE_ARGS lacks {flag}")
    f.check("CMAKE_ARGS=\"${CMAKE_ARGS}\"" in build_runs,
            "Dockerfile.cuda: scripts/build is not given the stage's CMAKE_ARGS")

    f.check(not any(op == "RUN" and re.search(r"apt-get\s+install", rest) for op, rest in final["instructions"]),
            "Dockerfile.cuda: the final stage installs packages (it must only copy runtime files)")
    copies = [rest for op, rest in final["instructions"] if op == "COPY"]
    f.check(all(c.startswith("--from=build ") for c in copies),
            f"Dockerfile.cuda: the final stage copies from outside the build stage: {copies}")
    f.check(not any(re.search(r"/src/(build/)?\s|/src/\s|/src/build/(?!bin/)", c + " ") for c in copies),
            f"Dockerfile.cuda: the final stage copies the source or build tree, not just bin/: {copies}")
    f.check(any(re.match(r"--from=build /src/build/bin/ /opt/dmoe/bin/?$", c) for c in copies),
            "Dockerfile.cuda: build/bin is not copied to /opt/dmoe/bin (the manifests' command path)")
    users = [rest for op, rest in final["instructions"] if op == "USER"]
    uid = None
    if f.check(len(users) == 1, f"Dockerfile.cuda: expected one USER in the final stage, got {users}"):
        m = re.match(r"(\d+)(?::(\d+))?$", users[0])
        if f.check(m is not None, f"Dockerfile.cuda: USER {users[0]} is not numeric (runAsNonRoot needs a uid)"):
            uid = int(m.group(1))
            f.check(uid != 0, "Dockerfile.cuda: USER is root")
    # The tag the documented build command writes: what the overlay must pull.
    tags = re.findall(r"docker build -f deploy/Dockerfile\.cuda -t (\S+) \.", text)
    f.check(len(tags) == 1, f"Dockerfile.cuda: expected one documented 'docker build ... -t IMAGE .', got {tags}")
    with open(os.path.join(lib.SOURCE_DIR, "docs", "cuda.md")) as fh:
        doc = fh.read()
    f.check("deploy/Dockerfile.cuda" in doc and all(t in doc for t in tags),
            "docs/cuda.md does not document building and pushing deploy/Dockerfile.cuda with its tag")
    f.check(os.path.exists(DOCKERFILE + ".dockerignore"),
            "deploy/Dockerfile.cuda.dockerignore is missing (build directories would enter the context)")
    return {"cmake_args": cmake_args, "uid": uid, "image": tags[0] if tags else None}


def check_build_script(f, cmake_args):
    """Runs scripts/build the way the Dockerfile does, configure only (--target help)."""
    script = os.path.join(lib.SOURCE_DIR, "scripts", "build")
    with open(script) as fh:
        body = fh.read()
    f.check("CMAKE_ARGS" in body and "BUILD_DIR" in body,
            "scripts/build does not take BUILD_DIR / CMAKE_ARGS (Dockerfile.cuda relies on both)")
    if shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"):
        print("cuda_image_test: no nvcc on this machine; scripts/build's CUDA configure not run")
        return
    scratch = tempfile.mkdtemp(prefix="dmoe-cuda-image-")
    try:
        env = dict(os.environ, BUILD_DIR=scratch, CMAKE_ARGS=cmake_args, JOBS="1")
        if shutil.which("nvcc") is None:
            env["PATH"] = "/usr/local/cuda/bin:" + env["PATH"]
        out = subprocess.run([script, "--target", "help"], capture_output=True, text=True, env=env,
                             timeout=600)
        if not f.check(out.returncode == 0,
                       f"scripts/build with the Dockerfile's CMAKE_ARGS failed ({out.returncode}):\n"
                       f"{out.stdout[-3000:]}{out.stderr[-3000:]}"):
            return
        with open(os.path.join(scratch, "CMakeCache.txt")) as fh:
            cache = fh.read()
        f.check(re.search(r"^DMOE_ENABLE_CUDA:BOOL=ON$", cache, re.M) is not None,
                "scripts/build + CMAKE_ARGS: DMOE_ENABLE_CUDA is not ON in the cache")
        f.check("dmoe: NCCL" in out.stdout, "scripts/build + CMAKE_ARGS: NCCL was not found (the "
                "image would have no NCCL expert transport)")
        targets = out.stdout
        for t in ("dmoe", "dmoe_attention", "dmoe_expert", "dmoe_scheduler_bin", "dmoe_router_bin",
                  "dmoe_transport_nccl"):
            f.check(re.search(rf"^{t}:", targets, re.M) is not None,
                    f"scripts/build + CMAKE_ARGS: no target {t}")
        f.check(re.search(r"^device_flag_test:", targets, re.M) is None,
                "scripts/build + CMAKE_ARGS: tests are configured (-DDMOE_BUILD_TESTS=OFF ignored)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def container_image(c):
    return c.get("image", "")


def check_overlays(f, image, uid):
    expected = image
    for overlay in ("gpu-prod", "canary"):
        try:
            objects = lib.kustomize(os.path.join(lib.K8S_DIR, "overlays", overlay))
        except RuntimeError as e:
            f.check(False, f"kubectl kustomize {overlay}: {e}")
            continue
        roles = set()
        for d in lib.by_kind(objects, "Deployment") + lib.by_kind(objects, "StatefulSet"):
            spec = lib.pod_spec(d)
            component = d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
            user = spec.get("securityContext", {}).get("runAsUser")
            for c in spec.get("initContainers", []) + spec["containers"]:
                where = f"{overlay} {d['metadata']['name']}/{c['name']}"
                f.check(container_image(c) == expected,
                        f"{where}: image {container_image(c)}, expected the CUDA image {expected}")
                f.check(user is None or user == uid, f"{where}: runAsUser {user}, Dockerfile.cuda's USER is {uid}")
                if component not in ("attention", "expert"):
                    continue
                roles.add(component)
                env = lib.container_env(c, objects)
                args = {name: lib.expand(value or "", env)[0] for name, value in lib.parse_args(c.get("args", []))}
                f.check(args.get("--device") == "cuda", f"{where}: --device is {args.get('--device')!r}, not cuda")
                f.check(args.get("--expert-transport") in ("grpc", "nccl"),
                        f"{where}: --expert-transport is {args.get('--expert-transport')!r}, not grpc or nccl")
                gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
                f.check(str(gpus) == "1", f"{where}: limits nvidia.com/gpu is {gpus!r}, expected 1")
                f.check("--gpu" not in args or args["--gpu"] == "0",
                        f"{where}: --gpu {args.get('--gpu')}: the device plugin exposes the pod's GPU as 0")
        f.check(roles == {"attention", "expert"}, f"{overlay}: attention and expert pods not both found ({roles})")
    objects = lib.kustomize(os.path.join(lib.K8S_DIR, "overlays", "dev-cpu"))
    for d in lib.by_kind(objects, "Deployment"):
        for c in lib.pod_spec(d)["containers"]:
            f.check(not container_image(c).endswith("-cuda"),
                    f"dev-cpu {d['metadata']['name']}: uses the CUDA image {container_image(c)}")


def main():
    f = lib.Failures("cuda_image_test")
    found = check_dockerfile(f)
    if found:
        check_build_script(f, found["cmake_args"])
        if found["image"]:
            check_overlays(f, found["image"], found["uid"])
    f.finish()


if __name__ == "__main__":
    main()
