#!/usr/bin/env python3
"""Validate deploy/ offline: Kustomize renders, schemas, and what the issue requires.

    python3 tests/ops/check_manifests.py [--node-modules DIR] [--k8s-version 1.29 ...]

- renders deploy/kustomize/base and every overlays/* with `kustomize build` or
  `kubectl kustomize` (falls back to the base's raw files when neither exists);
- core kinds: `kubernetes-validate --strict` (PyPI) for each Kubernetes version;
- Prometheus operator kinds: npm `@kubernetes-models/prometheus-operator` schemas via
  tests/ops/validate_models.mjs (when --node-modules is given), else required fields;
- the sidecar's contract: probes, resources, security context, config, secrets,
  state volume, IRSA, PodMonitor selecting the pod, PrometheusRule == rules file;
- gapwatch is a native sidecar (init container, restartPolicy Always) or a classic one;
- the state's shape: SQLite means one replica, Recreate and a PersistentVolumeClaim
  (never two writers on one file); a state.url from ${VAR} must come from a Secret;
- a NetworkPolicy lets only this namespace (and Prometheus' pods) reach port 9464;
- the ConfigMap's gapwatch.toml parses and has the keys DESIGN.md requires;
- deploy/iam/*.json grant exactly the actions of their watch mode;
- deploy/Dockerfile has the required stages, entrypoint and port.
Needs PyYAML. Exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = [DEPLOY / "kustomize/base"] + sorted(
    p for p in (DEPLOY / "kustomize/overlays").iterdir() if (p / "kustomization.yaml").is_file())
GAPWATCH_PORT = 9464
RULES = DEPLOY / "prometheus/gapwatch-rules.yml"
OPERATOR_GROUP = "monitoring.coreos.com"

# Exactly what each policy may grant (DESIGN.md "Signals", deploy/iam/README.md).
IAM_ACTIONS = {
    "relay.json": {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:SendMessage"},
    "report.json": {"sqs:GetQueueAttributes", "cloudwatch:GetMetricData"},
    "passive.json": {"sqs:GetQueueAttributes", "cloudwatch:GetMetricData"},
    "backfill-sqs-sink.json": {"sqs:SendMessage"},
    "kms-sse.json": {"kms:Decrypt", "kms:GenerateDataKey"},
}
# Only these may use Resource "*" (no resource-level permissions exist for them).
UNSCOPED_ACTIONS = {"cloudwatch:GetMetricData"}

FAILURES: list[str] = []
CHECKS = 0


def check(ok: bool, message: str) -> bool:
    global CHECKS
    CHECKS += 1
    if not ok:
        FAILURES.append(message)
        print(f"FAIL {message}")
    return ok


def rel(p: pathlib.Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


# === rendering ===

def render(path: pathlib.Path) -> tuple[list[dict], str]:
    if shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(path)]
    elif shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(path)]
    else:
        cmd = None
    if cmd:
        run = subprocess.run(cmd, capture_output=True, text=True)
        if not check(run.returncode == 0, f"{' '.join(cmd[:-1])} {rel(path)}: {run.stderr.strip()}"):
            return [], "failed"
        docs = [d for d in yaml.safe_load_all(run.stdout) if d]
        return docs, " ".join(cmd[:2])
    # no kustomize: the base's resources as written (no generators, no overlay)
    if path.name != "base":
        return [], "skipped (no kustomize or kubectl binary)"
    kust = yaml.safe_load((path / "kustomization.yaml").read_text())
    docs = [d for r in kust["resources"] for d in yaml.safe_load_all((path / r).read_text()) if d]
    return docs, "raw files (no kustomize or kubectl binary: generators not applied)"


# === schema validation ===

def validate_core(docs: list[dict], source: str, versions: list[str]):
    core = [d for d in docs if OPERATOR_GROUP not in d.get("apiVersion", "")]
    if not core:
        return
    exe = shutil.which("kubernetes-validate")
    if not check(exe is not None, "kubernetes-validate not found (pip install kubernetes-validate)"):
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(core, f)
    try:
        for version in versions:
            args = [exe, "--strict", "--quiet"] + (["-k", version] if version else []) + [f.name]
            run = subprocess.run(args, capture_output=True, text=True)
            out = (run.stdout + run.stderr).strip().replace(f.name, source)
            if check(run.returncode == 0 and "ERROR" not in out,
                     f"kubernetes-validate --strict {version or 'default'} {source}:\n{out}"):
                print(f"ok   kubernetes-validate --strict -k {version or 'default'}: {source}: "
                      f"{len(core)} objects ({', '.join(sorted({d['kind'] for d in core}))})")
    finally:
        pathlib.Path(f.name).unlink()


def validate_models(docs: list[dict], source: str, node_modules: pathlib.Path | None):
    crs = [d for d in docs if OPERATOR_GROUP in d.get("apiVersion", "")]
    if not crs:
        return
    for d in crs:  # required fields, whatever else is available
        spec = d.get("spec") or {}
        if d["kind"] == "PrometheusRule":
            rules = [r for g in spec.get("groups", []) for r in g.get("rules", [])]
            check(bool(rules) and all("expr" in r and ("alert" in r) != ("record" in r) for r in rules),
                  f"{source}: PrometheusRule/{d['metadata']['name']}: every rule needs expr and alert xor record")
        if d["kind"] == "PodMonitor":
            eps = spec.get("podMetricsEndpoints", [])
            check(bool(eps) and "selector" in spec and all("port" in e or "targetPort" in e for e in eps),
                  f"{source}: PodMonitor/{d['metadata']['name']}: needs selector and podMetricsEndpoints[].port")
    if node_modules is None:
        print(f"info {source}: {len(crs)} operator objects checked for required fields only (no --node-modules)")
        return
    node = shutil.which("node")
    if not check(node is not None, "node not found: cannot validate operator kinds"):
        return
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([{"source": source, "object": d} for d in docs], f)
    try:
        run = subprocess.run([node, str(ROOT / "tests/ops/validate_models.mjs"), str(node_modules), f.name],
                             capture_output=True, text=True)
    finally:
        pathlib.Path(f.name).unlink()
    out = (run.stdout + run.stderr).strip()
    if check(run.returncode == 0, f"kubernetes-models validation of {source}:\n{out}"):
        print(f"ok   npm kubernetes-models schemas: {source}: {out.splitlines()[-1].split(': ', 1)[-1]}")


# === the sidecar contract ===

def find(docs, kind, name=None):
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def check_contract(docs: list[dict], source: str):
    deployments = find(docs, "Deployment")
    if not check(len(deployments) == 1, f"{source}: expected one Deployment, found {len(deployments)}"):
        return
    dep = deployments[0]
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    containers = {c["name"]: c for c in pod["containers"]}
    inits = {c["name"]: c for c in pod.get("initContainers") or []}
    c = containers.get("gapwatch") or inits.get("gapwatch")
    if not check(c is not None and len(set(containers) - {"gapwatch"}) >= 1,
                 f"{source}: needs an app container and a `gapwatch` sidecar"):
        return
    where = f"{source}: gapwatch container"
    if "gapwatch" in inits:
        # A plain init container would have to exit before the application starts.
        check(c.get("restartPolicy") == "Always",
              f"{where}: as an init container it needs restartPolicy: Always (a native sidecar)")
        form = "native sidecar"
    else:
        check("restartPolicy" not in c, f"{where}: restartPolicy is for init containers (native sidecars) only")
        form = "classic sidecar"
    check(pod.get("enableServiceLinks") is False, f"{source}: enableServiceLinks must be false")
    check(pod.get("terminationGracePeriodSeconds") == 40, f"{source}: terminationGracePeriodSeconds must be 40")
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot")
    check(csc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
    check(csc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation false")
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    check(9464 in ports.values(), f"{where}: containerPort 9464")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        port = ports.get(get.get("port"), get.get("port"))
        check(get.get("path") == path and port == 9464, f"{where}: {probe} must GET {path} on 9464, has {get}")
    res = c.get("resources", {})
    for part in ("requests", "limits"):
        check({"cpu", "memory"} <= set(res.get(part, {})), f"{where}: resources.{part} needs cpu and memory")
    env = {e["name"]: e for e in c.get("env", [])}
    for name in ("GAPWATCH_ADMIN_TOKEN", "VENDOR_TOKEN"):
        check("secretKeyRef" in env.get(name, {}).get("valueFrom", {}), f"{where}: {name} from a Secret")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    cfg = volumes.get(mounts.get("/etc/gapwatch"), {})
    check("configMap" in cfg, f"{where}: /etc/gapwatch from a ConfigMap")
    # ConfigMap: gapwatch.toml, parseable, consistent with the pod
    shape = "?"
    if "configMap" in cfg:
        cms = find(docs, "ConfigMap", cfg["configMap"]["name"])
        if check(len(cms) == 1, f"{source}: ConfigMap {cfg['configMap']['name']} is not rendered"):
            toml = cms[0]["data"].get("gapwatch.toml", "")
            check_config(toml, f"{source}: ConfigMap {cms[0]['metadata']['name']}", ports)
            shape = check_state_shape(docs, dep, c, volumes, mounts, toml, source)
    check_network_policy(docs, labels, source)
    # ServiceAccount with IRSA
    sa_name = pod.get("serviceAccountName")
    sas = find(docs, "ServiceAccount", sa_name)
    check(len(sas) == 1 and re.match(r"arn:aws:iam::\d{12}:role/.+",
                                     sas[0]["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn", "")),
          f"{source}: ServiceAccount {sa_name} with an eks.amazonaws.com/role-arn annotation")
    # PodMonitor selects this pod and a port of gapwatch
    pms = find(docs, "PodMonitor")
    if check(len(pms) == 1, f"{source}: expected one PodMonitor"):
        sel = pms[0]["spec"]["selector"].get("matchLabels", {})
        check(sel and all(labels.get(k) == v for k, v in sel.items()),
              f"{source}: PodMonitor selector {sel} does not match the pod labels {labels}")
        for ep in pms[0]["spec"]["podMetricsEndpoints"]:
            check(ep.get("port") in ports and ep.get("path", "/metrics") == "/metrics",
                  f"{source}: PodMonitor endpoint {ep} must scrape /metrics on a gapwatch port")
        check("gapwatch" in pms[0]["metadata"]["name"],
              f"{source}: keep 'gapwatch' in the PodMonitor name: GapwatchDown matches job=~\".*gapwatch.*\"")
    prs = find(docs, "PrometheusRule")
    if check(len(prs) == 1, f"{source}: expected one PrometheusRule"):
        check(prs[0]["spec"] == yaml.safe_load(RULES.read_text()),
              f"{source}: PrometheusRule spec differs from {rel(RULES)}")
    if not [f for f in FAILURES if f.startswith(source)]:
        print(f"ok   sidecar contract: {source}: {form}, {shape}, admin port kept in the namespace")


def check_state_shape(docs, dep, c, volumes, mounts, toml, source) -> str:
    """SQLite: one writer per file, on a volume that outlives the pod. From ${VAR}: a Secret."""
    try:
        url = tomllib.loads(toml).get("state", {}).get("url", "sqlite:///var/lib/gapwatch/state.db")
    except tomllib.TOMLDecodeError:
        return "?"
    replicas = dep["spec"].get("replicas", 1)
    strategy = dep["spec"].get("strategy", {}).get("type", "RollingUpdate")
    where = f"{source}: state.url {url!r}"
    if url.startswith("sqlite:"):
        check(replicas == 1, f"{where}: SQLite is one writer: replicas must be 1, has {replicas}")
        check(strategy == "Recreate",
              f"{where}: SQLite needs strategy Recreate (a rolling update runs two writers on one file), has {strategy}")
        state = volumes.get(mounts.get("/var/lib/gapwatch"), {})
        claim = state.get("persistentVolumeClaim", {}).get("claimName")
        if check(claim is not None,
                 f"{where}: /var/lib/gapwatch must be a PersistentVolumeClaim (an emptyDir forgets gaps and ledger), "
                 f"has {state or 'no volume'}"):
            pvcs = find(docs, "PersistentVolumeClaim", claim)
            check(len(pvcs) == 1 and pvcs[0]["spec"].get("accessModes") in (["ReadWriteOnce"], ["ReadWriteOncePod"]),
                  f"{where}: PersistentVolumeClaim {claim} rendered, ReadWriteOnce(Pod)")
        return f"SQLite on PVC, {replicas} replica, {strategy}"
    env = {e["name"]: e for e in c.get("env", [])}
    names = re.findall(r"\$\{([^}]+)\}", url)
    for name in names:
        check("secretKeyRef" in env.get(name, {}).get("valueFrom", {}),
              f"{where}: {name} must come from a Secret (secretKeyRef) on the gapwatch container")
    check(bool(names) or url.startswith("postgres"), f"{where}: neither SQLite nor Postgres")
    check("/var/lib/gapwatch" not in mounts or replicas == 1,
          f"{where}: a state volume with {replicas} replicas: the state lives in the database")
    secret = ",".join(env[n]["valueFrom"]["secretKeyRef"]["name"] for n in names if n in env)
    return f"store from Secret {secret or '-'}, {replicas} replicas, {strategy}"


def port_covered(port_spec: dict, port: int) -> bool:
    if port_spec.get("protocol", "TCP") != "TCP":
        return False
    p = port_spec.get("port")
    if p is None:
        return True  # every port
    if not isinstance(p, int):
        return p == "metrics"
    return p <= port <= port_spec.get("endPort", p)


def check_network_policy(docs, labels, source):
    """Port 9464 (/api/v1 admin POSTs share it with /metrics) only from this namespace and Prometheus."""
    selecting = [n for n in find(docs, "NetworkPolicy")
                 if all(labels.get(k) == v for k, v in n["spec"]["podSelector"].get("matchLabels", {}).items())
                 and not n["spec"]["podSelector"].get("matchExpressions")]
    if not check(len(selecting) == 1, f"{source}: expected one NetworkPolicy selecting the pod, found {len(selecting)}"):
        return
    spec = selecting[0]["spec"]
    where = f"{source}: NetworkPolicy/{selecting[0]['metadata']['name']}"
    check("Ingress" in spec.get("policyTypes", ["Ingress"]), f"{where}: policyTypes must include Ingress")
    reaching = [r for r in spec.get("ingress", [])
                if not r.get("ports") or any(port_covered(p, GAPWATCH_PORT) for p in r["ports"])]
    check(bool(reaching), f"{where}: no rule admits port {GAPWATCH_PORT}: Prometheus could not scrape")
    for rule in reaching:
        peers = rule.get("from")
        if not check(bool(peers), f"{where}: a rule admits port {GAPWATCH_PORT} from anywhere: {rule}"):
            continue
        for peer in peers:
            if "namespaceSelector" not in peer:
                check("podSelector" in peer and "ipBlock" not in peer,
                      f"{where}: peer {peer} admits port {GAPWATCH_PORT} from outside the namespace")
                continue
            # another namespace: one namespace by name, and only its selected pods
            ns = peer["namespaceSelector"].get("matchLabels", {})
            check(list(ns) == ["kubernetes.io/metadata.name"] and bool(peer.get("podSelector", {}).get("matchLabels")),
                  f"{where}: peer {peer} admits port {GAPWATCH_PORT} from other namespaces: "
                  "name one namespace (kubernetes.io/metadata.name) and select its Prometheus pods")


def check_config(text: str, where: str, ports: dict | None = None):
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        check(False, f"{where}: gapwatch.toml does not parse: {e}")
        return
    listen = cfg.get("server", {}).get("listen", "")
    check(bool(re.fullmatch(r".+:\d+", listen)), f"{where}: server.listen host:port, has {listen!r}")
    if ports is not None and listen:
        check(int(listen.rsplit(":", 1)[1]) in ports.values(), f"{where}: server.listen port is not a container port")
    check(cfg.get("server", {}).get("admin_token", "").startswith("${"),
          f"{where}: server.admin_token must come from the environment, not the ConfigMap")
    url = cfg.get("state", {}).get("url", "")
    check(url.startswith("sqlite:///var/lib/gapwatch/") or url.startswith("postgres")
          or re.fullmatch(r"\$\{[A-Z0-9_]+\}", url) is not None,
          f"{where}: state.url must live on the /var/lib/gapwatch volume, or be postgres (from a Secret), "
          f"has {url!r}")
    feeds = cfg.get("feeds", [])
    check(bool(feeds), f"{where}: no [[feeds]]")
    for i, feed in enumerate(feeds):
        f = f"{where}: feeds[{i}]"
        check(bool(feed.get("name")) and bool(feed.get("queue_url")), f"{f}: name and queue_url")
        mode = feed.get("watch", {}).get("mode")
        check(mode in ("relay", "report", "passive"), f"{f}.watch.mode: {mode!r}")
        if mode == "relay":
            check(bool(feed["watch"].get("forward_to")), f"{f}.watch.forward_to is required in relay mode")
        for key, value in feed.get("backfill", {}).get("source", {}).get("headers", {}).items():
            check("${" in value or key.lower() not in ("authorization", "x-api-key"),
                  f"{f}.backfill.source.headers.{key}: a secret must come from the environment")


# === IAM and Dockerfile ===

def check_iam():
    files = sorted((DEPLOY / "iam").glob("*.json"))
    check({p.name for p in files} >= set(IAM_ACTIONS), f"deploy/iam: missing {set(IAM_ACTIONS) - {p.name for p in files}}")
    for p in files:
        doc = json.loads(p.read_text())
        where = rel(p)
        check(doc.get("Version") == "2012-10-17", f"{where}: Version 2012-10-17")
        granted = set()
        for st in doc.get("Statement", []):
            actions = st.get("Action", [])
            actions = [actions] if isinstance(actions, str) else actions
            resources = st.get("Resource", [])
            resources = [resources] if isinstance(resources, str) else resources
            check(st.get("Effect") == "Allow" and actions and resources, f"{where}: {st.get('Sid')}: Effect/Action/Resource")
            check(not any("*" in a for a in actions), f"{where}: {st.get('Sid')}: wildcard action")
            if "*" in resources:
                check(set(actions) <= UNSCOPED_ACTIONS, f"{where}: {st.get('Sid')}: Resource * for {actions}")
            for r in resources:
                check(r == "*" or r.startswith("arn:aws:"), f"{where}: {st.get('Sid')}: resource {r!r}")
            granted |= set(actions)
        want = IAM_ACTIONS.get(p.name)
        check(want is not None, f"{where}: unknown policy file (add it to IAM_ACTIONS)")
        if want is not None:
            check(granted == want, f"{where}: grants {sorted(granted)}, expected exactly {sorted(want)}")
    print(f"ok   IAM policies: {', '.join(p.name for p in files)}" if not [f for f in FAILURES if "deploy/iam" in f]
          else "FAIL IAM policies")


def check_dockerfile():
    p = DEPLOY / "Dockerfile"
    text = p.read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    check(len(froms) >= 2 and froms[0][0] == "rust:1-bookworm", f"{rel(p)}: builder stage FROM rust:1-bookworm")
    check(froms and froms[-1][0] == "gcr.io/distroless/cc-debian12:nonroot",
          f"{rel(p)}: final stage FROM gcr.io/distroless/cc-debian12:nonroot")
    check("cargo build --release --locked --bin gapwatch" in text, f"{rel(p)}: cargo build --release --locked --bin gapwatch")
    check(re.search(r"^EXPOSE\s+9464\s*$", text, re.M) is not None, f"{rel(p)}: EXPOSE 9464")
    ep = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    check(ep is not None and json.loads(ep.group(1)) == ["/gapwatch", "run", "--config", "/etc/gapwatch/gapwatch.toml"],
          f"{rel(p)}: ENTRYPOINT [\"/gapwatch\",\"run\",\"--config\",\"/etc/gapwatch/gapwatch.toml\"]")
    final = text[text.rfind("FROM "):]
    check(not re.search(r"^RUN\s", final, re.M), f"{rel(p)}: the distroless stage has no shell: no RUN there")
    cargo = (ROOT / "Cargo.toml").read_text()
    check(re.search(r'\[\[bin\]\]\s*\nname\s*=\s*"gapwatch"', cargo) is not None or 'name = "gapwatch"' in cargo,
          "Cargo.toml: no gapwatch binary for the Dockerfile to build")
    if not [f for f in FAILURES if "Dockerfile" in f]:
        print(f"ok   {rel(p)}: {froms[0][0]} -> {froms[-1][0]}, EXPOSE 9464, ENTRYPOINT /gapwatch run")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--node-modules", type=pathlib.Path,
                    help="node_modules holding kubernetes-models and @kubernetes-models/prometheus-operator")
    ap.add_argument("--k8s-version", action="append",
                    help="Kubernetes version(s) for kubernetes-validate (default: 1.29 and its newest)")
    ap.add_argument("--kustomization", type=pathlib.Path, action="append",
                    help=argparse.SUPPRESS)  # check-ops' self-tests: these instead of deploy/kustomize's
    args = ap.parse_args()
    versions = args.k8s_version or ["1.29", ""]

    for path in args.kustomization or KUSTOMIZATIONS:
        docs, how = render(path)
        source = rel(path)
        if not docs:
            print(f"info {source}: {how}")
            continue
        print(f"ok   rendered {source} with {how}: {', '.join(d['kind'] + '/' + d['metadata']['name'] for d in docs)}")
        validate_core(docs, source, versions)
        validate_models(docs, source, args.node_modules)
        check_contract(docs, source)
    for toml_path in sorted(DEPLOY.glob("kustomize/**/gapwatch.toml")):
        before = len(FAILURES)
        check_config(toml_path.read_text(), rel(toml_path))
        if len(FAILURES) == before:
            print(f"ok   {rel(toml_path)} parses and has the required keys")
    check_iam()
    check_dockerfile()

    if FAILURES:
        print(f"check_manifests: {len(FAILURES)} of {CHECKS} checks failed")
        return 1
    print(f"check_manifests: all {CHECKS} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
