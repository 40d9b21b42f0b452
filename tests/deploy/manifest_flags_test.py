#!/usr/bin/env python3
"""The rendered manifests against the real binaries: every container argument is a flag the
binary's --help lists; every $(VAR) resolves; probes hit the --listen port (named `grpc`);
Prometheus scrapes the --metrics-listen port (annotation and port `metrics`); the addresses of
--scheduler, --backend and --version-backend are Services with that port which select the
scheduler of the right model version; --model-version matches the pod's label; the grace
period outlasts preStop plus the drain flag."""

import os
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import deploy_lib as lib  # noqa: E402

DRAIN_FLAGS = ("--drain-seconds", "--drain-timeout-s")


def scheduler_service(f, where, address, objects, version):
    host, port = address.rsplit(":", 1)
    services = [s for s in lib.by_kind(objects, "Service") if s["metadata"]["name"] == host.split(".")[0]]
    if not f.check(services, f"{where}: {address}: no Service {host}"):
        return
    s = services[0]
    f.check(any(p["port"] == int(port) for p in s["spec"]["ports"]), f"{where}: Service {host} has no port {port}")
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in lib.by_kind(objects, "Deployment")
            if lib.selects(s["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
    f.check(len(pods) == 1 and pods[0].get("app.kubernetes.io/component") == "scheduler"
            and (version is None or pods[0].get("dmoe.ai/model-version") == version),
            f"{where}: {address} does not reach the scheduler of model version {version}")


def image_paths():
    """Where deploy/Dockerfile puts things: container path -> source path, and its USER."""
    with open(os.path.join(lib.DEPLOY_DIR, "Dockerfile")) as fh:
        text = fh.read()
    copies = dict((dst.rstrip("/"), src) for src, dst in
                  re.findall(r"^COPY --from=build /src/(\S+) (\S+)$", text, re.M))
    user = re.search(r"^USER (\d+)", text, re.M)
    return copies, int(user.group(1)) if user else None


def main():
    f = lib.Failures("manifest_flags_test")
    help_cache = {}
    copies, image_user = image_paths()
    f.check("/opt/dmoe/bin" in copies, "deploy/Dockerfile does not copy build/bin to /opt/dmoe/bin")
    for overlay in ["base"] + lib.OVERLAYS:
        path = os.path.join(lib.K8S_DIR, "base" if overlay == "base" else f"overlays/{overlay}")
        try:
            objects = lib.kustomize(path)
        except RuntimeError as e:
            f.check(False, f"kubectl kustomize {overlay}: {e}")
            continue
        for d in lib.by_kind(objects, "Deployment") + lib.by_kind(objects, "StatefulSet"):
            spec = lib.pod_spec(d)
            labels = d["spec"]["template"]["metadata"]["labels"]
            annotations = d["spec"]["template"]["metadata"].get("annotations", {})
            for c in spec.get("initContainers", []) + spec["containers"]:
                where = f"{overlay} {d['metadata']['name']}/{c['name']}"
                if not f.check(c.get("command"), f"{where}: no command"):
                    continue
                binary = os.path.basename(c["command"][0])
                f.check(os.path.dirname(c["command"][0]) in copies,
                        f"{where}: the image has no {os.path.dirname(c['command'][0])} (deploy/Dockerfile)")
                user = spec.get("securityContext", {}).get("runAsUser")
                f.check(user is None or user == image_user, f"{where}: runAsUser {user}, the image's USER is {image_user}")
                if binary not in help_cache:
                    help_cache[binary] = lib.binary_flags(binary)
                known = help_cache[binary]
                try:
                    env = lib.container_env(c, lib.by_kind(objects, "ConfigMap"))
                except KeyError as e:
                    f.check(False, f"{where}: {e}")
                    continue
                flags = {}
                for name, value in lib.parse_args(c.get("args", [])):
                    if not f.check(name is not None, f"{where}: positional argument {value!r}"):
                        continue
                    f.check(name in known, f"{where}: {binary} has no flag {name} (its --help: {' '.join(sorted(known))})")
                    if value is not None:
                        value, missing = lib.expand(value, env)
                        f.check(not missing, f"{where}: {name} uses undefined $({', '.join(missing)})")
                    flags.setdefault(name, []).append(value)
                for value in flags.get("--tokenizer-dir", []):
                    src = copies.get(value.rstrip("/"))
                    f.check(src and os.path.isdir(os.path.join(lib.SOURCE_DIR, src)),
                            f"{where}: --tokenizer-dir {value} is not copied into the image")
                if c not in spec["containers"]:
                    continue
                ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}

                # gRPC: --listen, the port named grpc and every probe agree.
                listen = (flags.get("--listen") or [None])[0]
                if f.check(listen and re.search(r":\d+$", listen), f"{where}: no --listen host:port"):
                    port = lib.port_of(listen)
                    f.check(port != 0, f"{where}: --listen port 0 cannot be probed")
                    f.check(ports.get("grpc") == port, f"{where}: port grpc {ports.get('grpc')} != --listen {port}")
                    # With TLS on the port, kubelet's plaintext gRPC probes would fail: the
                    # probes must be GET /health on the metrics port instead.
                    tls = "--tls-cert" in flags
                    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                        if probe not in c:
                            continue
                        if tls:
                            get = c[probe].get("httpGet", {})
                            f.check(get.get("path") == "/health" and get.get("port") == "metrics",
                                    f"{where}: {probe} is not GET /health on the metrics port (TLS)")
                        else:
                            f.check(c[probe].get("grpc", {}).get("port") == port,
                                    f"{where}: {probe} is not a gRPC probe on {port}")
                    for probe in ("readinessProbe", "livenessProbe"):
                        f.check(probe in c, f"{where}: no {probe}")
                    if labels.get("app.kubernetes.io/component") in ("attention", "expert"):
                        # They register this address with the scheduler: it must be the pod's.
                        f.check(listen.startswith("<POD_IP>:"), f"{where}: --listen {listen} is not the pod IP")

                # Metrics: --metrics-listen, the port named metrics and the scrape annotations.
                metrics = (flags.get("--metrics-listen") or [None])[0]
                if f.check(metrics, f"{where}: no --metrics-listen"):
                    port = lib.port_of(metrics)
                    f.check(ports.get("metrics") == port, f"{where}: port metrics {ports.get('metrics')} != --metrics-listen {port}")
                    f.check(annotations.get("prometheus.io/port") == str(port),
                            f"{where}: prometheus.io/port {annotations.get('prometheus.io/port')} != --metrics-listen {port}")
                    f.check(annotations.get("prometheus.io/scrape") == "true", f"{where}: not scraped")
                    f.check(labels.get("app.kubernetes.io/part-of") == "dmoe" and labels.get("app.kubernetes.io/component"),
                            f"{where}: the scrape job keeps only pods labelled part-of=dmoe with a component")

                version = labels.get("dmoe.ai/model-version")
                if version:
                    f.check(flags.get("--model-version") == [version],
                            f"{where}: --model-version {flags.get('--model-version')} but the pod is labelled {version}")
                for address in flags.get("--scheduler", []) + flags.get("--backend", []):
                    scheduler_service(f, where, address, objects, version)
                for vb in flags.get("--version-backend", []):
                    v, _, address = vb.partition("=")
                    scheduler_service(f, where, address, objects, v)
                if "--split" in flags:
                    versions = {x.split("=")[0] for x in flags["--split"][0].split(",")}
                    backends = {x.split("=")[0] for x in flags.get("--version-backend", [])}
                    f.check(versions == backends, f"{where}: --split versions {versions} != --version-backend {backends}")
                    f.check(sum(int(x.split("=")[1]) for x in flags["--split"][0].split(",")) == 100,
                            f"{where}: --split weights do not add up to 100")

                # TLS: every file the flags name lies on a mounted Secret volume; internal calls
                # check peers as one name (pods register by IP); all four or none.
                tls_flags = ("--tls-cert", "--tls-key", "--tls-ca", "--tls-server-name")
                if any(t in flags for t in tls_flags):
                    f.check(all(t in flags for t in tls_flags),
                            f"{where}: TLS needs {', '.join(tls_flags)} together")
                    volumes = {v["name"]: v for v in spec.get("volumes", [])}
                    for name in tls_flags[:3] + ("--api-keys",):
                        for value in flags.get(name, []):
                            mount = [m for m in c.get("volumeMounts", [])
                                     if value.startswith(m["mountPath"].rstrip("/") + "/")]
                            f.check(mount and "secret" in volumes.get(mount[0]["name"], {}),
                                    f"{where}: {name} {value} is not on a mounted Secret")

                # The scheduler's journal: on a PersistentVolumeClaim of this overlay mounted at
                # its directory, one writer (Recreate), never an emptyDir.
                if labels.get("app.kubernetes.io/component") == "scheduler":
                    journal = (flags.get("--journal") or [None])[0]
                    if f.check(journal, f"{where}: no --journal (requests would not survive a restart)"):
                        mounts = [m for m in c.get("volumeMounts", [])
                                  if journal.startswith(m["mountPath"].rstrip("/") + "/")]
                        volumes = {v["name"]: v for v in spec.get("volumes", [])}
                        claim = (volumes.get(mounts[0]["name"], {}).get("persistentVolumeClaim", {})
                                 if mounts else {})
                        f.check(mounts and not mounts[0].get("readOnly"),
                                f"{where}: --journal {journal} is not on a writable volume mount")
                        f.check(any(p["metadata"]["name"] == claim.get("claimName")
                                    for p in lib.by_kind(objects, "PersistentVolumeClaim")),
                                f"{where}: the journal's volume is not a PersistentVolumeClaim of {overlay}")
                        f.check(d["spec"].get("strategy", {}).get("type") == "Recreate",
                                f"{where}: two schedulers would write one journal during a rolling update")

                # Graceful termination: preStop, then the drain, inside the grace period.
                drain = [float(v) for n in DRAIN_FLAGS for v in flags.get(n, [])]
                if f.check(drain, f"{where}: no drain flag ({' or '.join(DRAIN_FLAGS)})"):
                    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
                    pre_stop = float(pre[-1]) if pre and pre[0].endswith("sleep") else 0
                    grace = spec.get("terminationGracePeriodSeconds", 30)
                    f.check(grace > pre_stop + drain[0],
                            f"{where}: terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {drain[0]}")
    f.finish()


if __name__ == "__main__":
    main()
