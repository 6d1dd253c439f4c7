#!/usr/bin/env python3
"""Parse every manifest in deploy/ and check what the deployment promises: the API as a
Deployment with a Service; supervisors as a Deployment with a PodDisruptionBudget and a grace
period that matches --grace-seconds; the sweeper as a CronJob that forbids overlap; migrate as a
Job; network policies that let supervisors reach only DNS, PostgreSQL and S3 and give ingress to
the API alone; every pod non-root, read-only, without capabilities or privilege escalation, under
the Localhost seccomp profile, with resource requests; probes on /healthz and /readyz. Every
container's arguments are handed to the real binary (`airlock ARGS --help`) so a flag that does
not exist fails here.

    python3 .ci/check-deploy.py BINARY
"""
import pathlib
import subprocess
import sys

import yaml

binary = sys.argv[1]
root = pathlib.Path(__file__).resolve().parent.parent / "deploy"
failures = []


def check(ok, what):
    print(("ok      " if ok else "FAILED  ") + what)
    if not ok:
        failures.append(what)


docs = []
for path in sorted(root.glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            docs.append((path.name, doc))
check(len(docs) >= 10, f"{len(docs)} manifests parsed from deploy/")

kustomization = next(d for n, d in docs if d["kind"] == "Kustomization")
listed = set(kustomization["resources"])
on_disk = {p.name for p in root.glob("*.yaml")} - {"kustomization.yaml"}
check(listed == on_disk, f"kustomization.yaml lists every manifest ({sorted(listed)})")


def one(kind, component):
    found = [d for _, d in docs if d["kind"] == kind
             and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]
    check(len(found) == 1, f"one {kind} for {component}")
    return found[0] if found else None


def pod_spec(d):
    if d["kind"] == "CronJob":
        return d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return d["spec"]["template"]["spec"]


def pod_labels(d):
    if d["kind"] == "CronJob":
        return d["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return d["spec"]["template"]["metadata"]["labels"]


api = one("Deployment", "api")
supervisor = one("Deployment", "supervisor")
sweeper = one("CronJob", "sweeper")
migrate = one("Job", "migrate")
service = one("Service", "api")
pdb = one("PodDisruptionBudget", "supervisor")

workloads = [w for w in (api, supervisor, sweeper, migrate) if w]
for w in workloads:
    name = w["metadata"]["name"]
    spec = pod_spec(w)
    ctx = spec.get("securityContext", {})
    check(ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) != 0,
          f"{name}: runAsNonRoot, uid {ctx.get('runAsUser')}")
    check(ctx.get("seccompProfile") == {"type": "Localhost", "localhostProfile": "profiles/airlock.json"},
          f"{name}: seccompProfile Localhost profiles/airlock.json")
    check(spec.get("automountServiceAccountToken") is False, f"{name}: no service-account token")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        check(sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}: readOnlyRootFilesystem")
        check(sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}: allowPrivilegeEscalation false")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{c['name']}: capabilities drop ALL")
        req = c.get("resources", {}).get("requests", {})
        check("cpu" in req and "memory" in req, f"{name}/{c['name']}: cpu and memory requests")
        check("memory" in c.get("resources", {}).get("limits", {}), f"{name}/{c['name']}: a memory limit")
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        check("/tmp" in mounts, f"{name}/{c['name']}: a writable /tmp (the root is read-only)")
        args = c["args"]
        run = subprocess.run([binary, *args, "--help"], capture_output=True, text=True)
        check(run.returncode == 0, f"{name}/{c['name']}: `airlock {' '.join(args)}` is accepted by the binary"
              + ("" if run.returncode == 0 else f": {run.stderr.strip()[:300]}"))
        flag = lambda f: args[args.index(f) + 1] if f in args else None
        wd = flag("--work-dir")
        if wd:
            check(wd in mounts, f"{name}/{c['name']}: --work-dir {wd} is a mounted volume")

for w in (api, supervisor):
    if not w:
        continue
    c = pod_spec(w)["containers"][0]
    check(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz",
          f"{w['metadata']['name']}: liveness probe on /healthz")
    check(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz",
          f"{w['metadata']['name']}: readiness probe on /readyz")

if service and api:
    sel = service["spec"]["selector"]
    check(all(pod_labels(api).get(k) == v for k, v in sel.items()), "the Service selects the API pods")
    check(not all(pod_labels(supervisor).get(k) == v for k, v in sel.items()), "the Service does not select supervisors")
if pdb and supervisor:
    sel = pdb["spec"]["selector"]["matchLabels"]
    check(all(pod_labels(supervisor).get(k) == v for k, v in sel.items()), "the PodDisruptionBudget selects the supervisors")
if supervisor:
    spec = pod_spec(supervisor)
    args = spec["containers"][0]["args"]
    grace = int(args[args.index("--grace-seconds") + 1])
    check(spec.get("terminationGracePeriodSeconds") == grace + 10,
          f"supervisor: terminationGracePeriodSeconds {spec.get('terminationGracePeriodSeconds')} = --grace-seconds {grace} + 10 s to give jobs back")
    env = {e["name"] for e in spec["containers"][0].get("env", [])}
    check("AIRLOCK_WEBHOOK_KEK_FILE" not in env, "supervisor: no webhook key, so it delivers no webhooks (its egress is the database and S3)")
if sweeper:
    check(sweeper["spec"].get("concurrencyPolicy") == "Forbid", "sweeper: concurrencyPolicy Forbid")
    check(pod_spec(sweeper)["containers"][0]["args"][0] == "sweep", "sweeper: runs `airlock sweep`")
if migrate:
    check(pod_spec(migrate)["containers"][0]["args"] == ["migrate"], "migrate: runs `airlock migrate`")

# Network policies: what applies to a pod is the union of the policies that select it.
policies = [d for _, d in docs if d["kind"] == "NetworkPolicy"]


def selects(policy, labels):
    want = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in want.items())


def rules(labels, direction):
    applying = [p for p in policies if selects(p, labels) and direction.capitalize() in p["spec"]["policyTypes"]]
    return applying, [r for p in applying for r in p["spec"].get(direction, [])]


if supervisor:
    labels = pod_labels(supervisor)
    applying, ingress = rules(labels, "ingress")
    check(applying and ingress == [], "supervisor: ingress denied (a policy selects it, none admits)")
    applying, egress = rules(labels, "egress")
    ports = sorted({(p["protocol"], p["port"]) for r in egress for p in r.get("ports", [])})
    check(applying and ports == [("TCP", 53), ("TCP", 443), ("TCP", 5432), ("UDP", 53)],
          f"supervisor: egress only to DNS, PostgreSQL and S3 {ports}")
    check(all(r.get("ports") and r.get("to") for r in egress), "supervisor: every egress rule names its peers and ports")
    open_ended = [r for r in egress for t in r["to"] if t.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"]
    check(not open_ended, "supervisor: no egress to 0.0.0.0/0")
if api:
    applying, ingress = rules(pod_labels(api), "ingress")
    check(any(p.get("port") == 8787 for r in ingress for p in r.get("ports", [])), "api: ingress on 8787")

print(f"\n{len(failures)} failed")
sys.exit(1 if failures else 0)
