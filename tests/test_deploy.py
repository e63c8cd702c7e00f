"""deploy/kubernetes/triton.yaml: the structure Kubernetes and Triton need (nothing can be pulled here)."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "triton.yaml"


@pytest.fixture(scope="module")
def docs() -> dict:
    out = {}
    for doc in yaml.safe_load_all(MANIFEST.read_text()):
        out[doc["kind"]] = doc
    return out


def _args(container) -> dict:
    return dict(a.lstrip("-").split("=", 1) for a in container["args"])


def test_deployment_runs_triton_on_the_repository_volume(docs):
    assert {"Deployment", "Service"} <= set(docs)
    dep = docs["Deployment"]
    assert dep["apiVersion"] == "apps/v1"
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (c,) = pod["spec"]["containers"]
    assert c["image"].startswith("nvcr.io/nvidia/tritonserver:") and c["image"].endswith("-py3")
    assert c["command"] == ["tritonserver"]
    args = _args(c)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    repo = [m for m in mounts.values() if m["mountPath"] == args["model-repository"]]
    assert len(repo) == 1 and repo[0]["readOnly"] is True
    assert "persistentVolumeClaim" in volumes[repo[0]["name"]]
    assert mounts["dshm"]["mountPath"] == "/dev/shm" and volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    # the pod outlives Triton's drain of requests in flight
    assert pod["spec"]["terminationGracePeriodSeconds"] > int(args["exit-timeout-secs"])


def test_ports_probes_and_service_agree(docs):
    (c,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = _args(c)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": int(args["http-port"]), "grpc": int(args["grpc-port"]),
                     "metrics": int(args["metrics-port"])}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    svc = docs["Service"]
    assert svc["spec"]["selector"].items() <= docs["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        name: (port, name) for name, port in ports.items()}
    ann = docs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert int(ann["prometheus.io/port"]) == ports["metrics"] and ann["prometheus.io/path"] == "/metrics"
