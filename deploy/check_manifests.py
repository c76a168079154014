#!/usr/bin/env python3
"""Structural checks deploy/validate.sh runs on top of schema validation.

Usage:
  check_manifests.py monitors RENDERED.yaml     PodMonitors select a pod template and name a port
                                                it declares; the credbroker sidecar is hardened
  check_manifests.py rules ALERTS.yaml RULES.yml the PrometheusRule carries exactly rules.yml
  check_manifests.py names EXPOSITION FILE...   every credbroker_*/process_* name used in FILEs
                                                is a family (or histogram series) in EXPOSITION
Exit status 1 with one line per problem.
"""
import json
import re
import sys

import yaml


def monitors(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    problems = []
    pods = []
    for d in docs:
        if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            tpl = d["spec"]["template"]
            pods.append((d["metadata"]["name"], tpl["metadata"].get("labels", {}), tpl["spec"]))
    sidecars = 0
    for name, _, spec in pods:
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            if c["name"] != "credbroker":
                continue
            sidecars += 1
            sc = c.get("securityContext", {})
            want = {
                "runAsNonRoot": True,
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
            }
            for k, v in want.items():
                if sc.get(k) != v:
                    problems.append(f"{name}/credbroker: securityContext.{k} must be {v}")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{name}/credbroker: capabilities must drop ALL")
            seccomp = sc.get("seccompProfile") or spec.get("securityContext", {}).get("seccompProfile")
            if (seccomp or {}).get("type") != "RuntimeDefault":
                problems.append(f"{name}/credbroker: seccompProfile must be RuntimeDefault")
            for probe, path_ in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
                got = c.get(probe, {}).get("httpGet", {}).get("path")
                if got != path_:
                    problems.append(f"{name}/credbroker: {probe} must GET {path_}, not {got}")
            if "limits" not in c.get("resources", {}):
                problems.append(f"{name}/credbroker: resources.limits missing")
    if sidecars == 0:
        problems.append(f"{path}: no credbroker container found")
    for d in docs:
        if d.get("kind") != "PodMonitor":
            continue
        sel = d["spec"]["selector"].get("matchLabels", {})
        matched = [
            (n, spec) for n, labels, spec in pods
            if all(labels.get(k) == v for k, v in sel.items())
        ]
        if not matched:
            problems.append(f"PodMonitor {d['metadata']['name']}: selector {sel} matches no pod template")
        for ep in d["spec"].get("podMetricsEndpoints", []):
            for n, spec in matched:
                ports = {
                    p.get("name")
                    for c in spec.get("initContainers", []) + spec.get("containers", [])
                    for p in c.get("ports", [])
                }
                if ep.get("port") not in ports:
                    problems.append(f"PodMonitor {d['metadata']['name']}: {n} has no port {ep.get('port')!r}")
    return problems


def rules(alerts_path, rules_path):
    alerts = yaml.safe_load(open(alerts_path))
    plain = yaml.safe_load(open(rules_path))
    problems = []
    if alerts.get("apiVersion") != "monitoring.coreos.com/v1" or alerts.get("kind") != "PrometheusRule":
        problems.append(f"{alerts_path}: not a monitoring.coreos.com/v1 PrometheusRule")
    if alerts.get("spec") != plain:
        problems.append(f"{alerts_path}: spec differs from {rules_path} (regenerate one from the other)")
    return problems


def names(exposition_path, files):
    families = set()
    for line in open(exposition_path):
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m.groups()
            families.add(name)
            if kind in ("histogram", "summary"):
                families.update({name + "_bucket", name + "_sum", name + "_count"})
    problems = []
    for f in files:
        text = open(f).read()
        if f.endswith(".json"):
            json.loads(text)  # the dashboard is valid JSON
        used = set(re.findall(r"\b((?:credbroker|process)_[a-z0-9_]+)\b", text))
        # Words that look like names but are not metrics (config keys in prose).
        used = {u for u in used if not u.endswith("_")}
        if not used:
            problems.append(f"{f}: uses no credbroker metric at all")
        for u in sorted(used - families):
            problems.append(f"{f}: {u} is not in the exposition")
    return problems


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "monitors":
        problems = monitors(*args)
    elif cmd == "rules":
        problems = rules(*args)
    elif cmd == "names":
        problems = names(args[0], args[1:])
    else:
        sys.exit(f"unknown command {cmd}")
    for p in problems:
        print(f"  FAIL {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
