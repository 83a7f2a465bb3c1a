"""deploy/k8s renders (``kubectl kustomize``) and validates against Kubernetes 1.32's schemas, offline.

kubernetes-validate ships the JSON schemas (no network). Beyond the schemas: the container args
are flags `streamscore serve --help` has, the probes and the Service target the gRPC port the
args open, every Secret mounted is the one deploy/README.md tells how to create, and the grace
period covers the preStop sleep plus the server's own drain (`--grace`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
KUBERNETES_VERSION = "1.32.0"  # the cluster version the manifests target (kubectl 1.32 renders them)
OVERLAYS = ("dev", "prod", "prod-tls")
DOCUMENTED_SECRETS = {"predictor-auth", "predictor-tls", "registry-verify-keys"}

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")


def render(overlay: str) -> list[dict]:
    done = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def serve_flags() -> set[str]:
    done = subprocess.run([sys.executable, "-m", "streaming.cli", "serve", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", done.stdout))


def one(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_validates_against_the_pinned_kubernetes_schemas(rendered, overlay):
    kinds = sorted(d["kind"] for d in rendered[overlay])
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget", "Service",
                     "ServiceAccount"]
    for doc in rendered[overlay]:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises on any schema error


def test_the_validator_does_reject_a_bad_manifest(rendered):
    deployment = yaml.safe_load(yaml.safe_dump(one(rendered["prod"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_args_probes_ports_and_secrets_agree(rendered, serve_flags, overlay):
    docs = rendered[overlay]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "serve"
    flags = {a.split("=", 1)[0] for a in args[1:]}
    assert all(a.startswith("--") and "=" in a for a in args[1:]) and flags <= serve_flags, flags - serve_flags
    values = dict(a.split("=", 1) for a in args[1:])
    grpc_port, metrics_port = int(values["--port"]), int(values["--metrics-port"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = container[probe].get("grpc") or container[probe]["tcpSocket"]
        assert check["port"] == grpc_port
        assert ("grpc" in container[probe]) == (overlay != "prod-tls")  # kubelet's gRPC probes cannot do TLS
    assert values["--registry"].startswith("gs://")
    # Every file flag points into a mounted Secret that deploy/README.md tells how to create.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert set(secrets.values()) <= DOCUMENTED_SECRETS
    for flag in ("--auth-token-file", "--tls-cert", "--tls-key", "--signing-key-file"):
        if flag in values:
            mount = next(path for path in mounts if values[flag].startswith(path + "/"))
            assert mounts[mount] in secrets
    assert ("--tls-cert" in values) == (overlay == "prod-tls") == ("predictor-tls" in secrets.values())
    readme = (ROOT / "deploy/README.md").read_text()
    assert all(re.search(rf"kubectl .*create secret \w+ {name} ", readme) for name in secrets.values())
    # SIGTERM drain fits in the grace period: preStop sleep + the server's --grace.
    assert pod["terminationGracePeriodSeconds"] > container["lifecycle"]["preStop"]["sleep"]["seconds"] + float(
        values["--grace"])
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    service = one(docs, "Service")
    assert service["spec"]["clusterIP"] == "None"  # headless: DNS gives every pod, clients balance per call
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"grpc": "grpc", "metrics": "metrics"}
    template_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        doc = one(docs, kind)
        selector = doc["spec"].get("selector") or doc["spec"]["podSelector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= template_labels.items(), kind
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    policy = one(docs, "NetworkPolicy")["spec"]
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [grpc_port, metrics_port]
