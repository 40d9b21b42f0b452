#!/usr/bin/env python3
"""`kubectl kustomize` renders the base, every overlay and the prometheus-adapter config, and
the rendered objects have the shape each overlay promises: roles present, selectors that
select, ConfigMaps that exist, PDBs and anti-affinity on expert shards, shards that tile the
experts, GPU resources only in the GPU overlays, one HPA per expert shard of the right shard
and model version, the canary's second pool."""

import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import deploy_lib as lib  # noqa: E402

MINI_EXPERTS = 256  # LLaDA2.0-mini routed experts
TINY_EXPERTS = 16   # dmoe-make-checkpoint --preset tiny


def check_overlay(f, name, objects, expect_gpu, expect_hpa, versions, num_experts):
    deployments = lib.by_kind(objects, "Deployment")
    comp = lambda d: d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
    version = lambda d: d["spec"]["template"]["metadata"]["labels"].get("dmoe.ai/model-version")
    for o in objects:
        if o["kind"] != "Namespace" and name != "base":
            f.check(o["metadata"].get("namespace"), f"{name}: {o['kind']}/{o['metadata']['name']} has no namespace")
    f.check(len([d for d in deployments if comp(d) == "router"]) == 1, f"{name}: expected one router Deployment")
    for v in versions:
        for role in ("scheduler", "attention"):
            f.check(len([d for d in deployments if comp(d) == role and version(d) == v]) == 1,
                    f"{name}: expected one {role} Deployment of model version {v}")
        f.check([d for d in deployments if comp(d) == "expert" and version(d) == v],
                f"{name}: no expert shard of model version {v}")
    f.check({version(d) for d in deployments if comp(d) != "router"} == set(versions),
            f"{name}: model versions {sorted({str(version(d)) for d in deployments})}, expected {versions}")

    pdbs = lib.by_kind(objects, "PodDisruptionBudget")
    hpas = lib.by_kind(objects, "HorizontalPodAutoscaler")
    shards = {}
    for d in deployments:
        n = d["metadata"]["name"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        f.check(lib.selects(d["spec"]["selector"]["matchLabels"], labels), f"{name}: {n} selector misses its pods")
        for other in deployments:
            if other is not d:
                f.check(not lib.selects(d["spec"]["selector"]["matchLabels"],
                                        other["spec"]["template"]["metadata"]["labels"]),
                        f"{name}: {n}'s selector also selects {other['metadata']['name']}'s pods")
        spec = lib.pod_spec(d)
        for c in spec.get("initContainers", []) + spec["containers"]:
            try:
                env = lib.container_env(c, objects)
            except KeyError as e:
                f.check(False, f"{name}: {n}/{c['name']}: {e}")
                continue
            gpu = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            if expect_gpu and comp(d) in ("attention", "expert") and c in spec["containers"]:
                f.check(gpu is not None, f"{name}: {n} has no nvidia.com/gpu limit")
            if not expect_gpu or comp(d) in ("router", "scheduler"):
                f.check(gpu is None, f"{name}: {n} asks for a GPU")
            if comp(d) == "expert" and c in spec["containers"]:
                experts = env.get("DMOE_EXPERTS", "")
                f.check(labels.get("dmoe.ai/shard") == experts.replace(":", "-"),
                        f"{name}: {n} serves experts {experts} but is labelled shard {labels.get('dmoe.ai/shard')}")
                shards.setdefault(version(d), []).append(experts)
            if comp(d) != "router" and c in spec["containers"]:
                f.check(env.get("DMOE_MODEL_VERSION") == version(d),
                        f"{name}: {n} runs DMOE_MODEL_VERSION={env.get('DMOE_MODEL_VERSION')} with label {version(d)}")
        for vol in spec.get("volumes", []):
            claim = vol.get("persistentVolumeClaim", {}).get("claimName")
            if claim:
                f.check(any(p["metadata"]["name"] == claim for p in lib.by_kind(objects, "PersistentVolumeClaim")),
                        f"{name}: {n} mounts PVC {claim}, which is not rendered")
        if comp(d) == "expert":
            f.check(any(lib.selects(p["spec"]["selector"]["matchLabels"], labels) and
                        not any(lib.selects(p["spec"]["selector"]["matchLabels"], o["spec"]["template"]["metadata"]["labels"])
                                for o in deployments if o is not d)
                        for p in pdbs), f"{name}: expert shard {n} has no PodDisruptionBudget of its own")
            terms = (spec.get("affinity", {}).get("podAntiAffinity", {})
                     .get("preferredDuringSchedulingIgnoredDuringExecution", []))
            terms = [t["podAffinityTerm"] for t in terms] + (spec.get("affinity", {}).get("podAntiAffinity", {})
                                                              .get("requiredDuringSchedulingIgnoredDuringExecution", []))
            f.check(any(lib.selects(t["labelSelector"]["matchLabels"], labels)
                        and t["labelSelector"]["matchLabels"].get("dmoe.ai/shard") == labels.get("dmoe.ai/shard")
                        and t["labelSelector"]["matchLabels"].get("dmoe.ai/model-version") == version(d)
                        for t in terms),
                    f"{name}: expert shard {n} has no anti-affinity between its own replicas")
            mine = [h for h in hpas if h["spec"]["scaleTargetRef"]["name"] == n]
            if expect_hpa:
                if f.check(len(mine) == 1, f"{name}: expert shard {n} has {len(mine)} HPAs"):
                    sel = mine[0]["spec"]["metrics"][0]["external"]["metric"]["selector"]["matchLabels"]
                    f.check(sel.get("shard") == labels.get("dmoe.ai/shard") and sel.get("model_version") == version(d),
                            f"{name}: HPA of {n} selects {sel}, the shard is {labels.get('dmoe.ai/shard')} {version(d)}")
                    f.check("replicas" not in d["spec"], f"{name}: {n} sets replicas although an HPA scales it")
            else:
                f.check(not mine, f"{name}: {n} has an HPA")
    for h in hpas:
        f.check(any(d["metadata"]["name"] == h["spec"]["scaleTargetRef"]["name"] for d in deployments),
                f"{name}: HPA {h['metadata']['name']} scales a Deployment that is not rendered")

    # The shards of each version tile [0, num_experts) without gaps or overlaps.
    for v, ranges in shards.items():
        if ranges == ["all"]:
            continue
        spans = sorted(tuple(int(x) for x in r.split(":")) for r in ranges)
        tiled = all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        f.check(spans and spans[0][0] == 0 and spans[-1][1] == num_experts and tiled,
                f"{name}: the shards of {v} ({spans}) do not tile [0, {num_experts})")

    for s in lib.by_kind(objects, "Service"):
        matched = [d for d in deployments if lib.selects(s["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        f.check(len(matched) == 1, f"{name}: Service {s['metadata']['name']} selects {len(matched)} Deployments")


def main():
    f = lib.Failures("kustomize_render_test")
    expectations = {
        # overlay: (GPU, HPAs, model versions, experts per version)
        "dev-cpu": (False, False, ["v1"], TINY_EXPERTS),
        "gpu-prod": (True, True, ["v1"], MINI_EXPERTS),
        "canary": (True, True, ["v1", "v2"], MINI_EXPERTS),
    }
    f.check(sorted(expectations) == sorted(lib.OVERLAYS), "deploy_lib.OVERLAYS and the expectations differ")
    f.check(sorted(os.listdir(os.path.join(lib.K8S_DIR, "overlays"))) == sorted(lib.OVERLAYS),
            "an overlay directory is not tested")
    for target in ["base", "prometheus-adapter"] + [f"overlays/{o}" for o in lib.OVERLAYS]:
        try:
            objects = lib.kustomize(os.path.join(lib.K8S_DIR, target))
        except RuntimeError as e:
            f.check(False, f"kubectl kustomize {target}: {e}")
            continue
        f.check(objects, f"{target} renders nothing")
        name = os.path.basename(target)
        if name in expectations:
            check_overlay(f, name, objects, *expectations[name])
        elif name == "base":
            check_overlay(f, name, objects, False, False, ["v1"], 0)
    f.finish()


if __name__ == "__main__":
    main()
