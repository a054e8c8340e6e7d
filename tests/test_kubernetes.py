"""deploy/kubernetes and deploy/compose.yaml: valid, consistent, and matching the code.

- Every Kubernetes manifest validates against the current Kubernetes API schemas
  (``kubernetes-validate``, strict: unknown fields are errors); the ServiceMonitor, a
  Prometheus Operator CRD without a bundled schema, is checked by hand.
- The pieces agree with each other (selectors, ports, volumes, probes) and with the
  proxy (the ConfigMap's config.yaml and rule file load with the real loaders).
- The compose file parses and every file it mounts exists.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy import cli
from proxy.config import load_config
from proxy.rules import load_rules

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "compose.yaml"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
NOT_RESOURCES = {"kustomization.yaml"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def resources() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name in NOT_RESOURCES:
            continue
        for doc in _docs(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in out, f"duplicate {key}"
            out[key] = doc
    return out


def test_manifests_validate_against_current_kubernetes(resources: dict) -> None:
    version = kubernetes_validate.latest_version()
    assert tuple(int(x) for x in version.split(".")[:2]) >= (1, 30), version
    checked = 0
    for doc in resources.values():
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any problem
        checked += 1
    assert checked >= 12


def test_validation_catches_mistakes(resources: dict) -> None:
    """A control: the validator really rejects a misspelt field and a wrong type."""
    version = kubernetes_validate.latest_version()
    bad = yaml.safe_load(yaml.safe_dump(resources[("Deployment", "cipa-proxy")]))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)
    bad = yaml.safe_load(yaml.safe_dump(resources[("Service", "cipa-proxy")]))
    bad["spec"]["ports"][0]["port"] = "three-one-two-eight"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - NOT_RESOURCES
    assert listed == present
    assert kust["namespace"] == "cipa-proxy"


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _container(dep: dict, name: str) -> dict:
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def test_deployment_hardening_and_probes(resources: dict) -> None:
    dep = resources[("Deployment", "cipa-proxy")]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"] + pod["initContainers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"])
    proxy = _container(dep, "cipa-proxy")
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports == {"proxy": 3128, "metrics": 9464}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    # every mount has a volume, and the writable paths are volumes (read-only root)
    volumes = {v["name"] for v in pod["volumes"]}
    for c in pod["containers"] + pod["initContainers"]:
        assert {m["name"] for m in c["volumeMounts"]} <= volumes
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 25


def test_config_in_configmap_loads_and_matches_the_deployment(
    resources: dict, tmp_path: Path
) -> None:
    text = resources[("ConfigMap", "cipa-proxy-config")]["data"]["config.yaml"]
    (tmp_path / "config.yaml").write_text(text)
    cfg = load_config(tmp_path / "config.yaml", [f"rules_dir={ROOT / 'rules'}"])
    assert cfg.workers == "auto"
    assert cfg.log.format == "json"
    assert cfg.listen.port == 3128 and cfg.metrics.host_port == ("0.0.0.0", 9464)

    dep = resources[("Deployment", "cipa-proxy")]
    proxy = _container(dep, "cipa-proxy")
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    config_arg = proxy["args"][proxy["args"].index("--config") + 1]
    assert str(Path(config_arg).parent) in mounts
    raw = yaml.safe_load(text)
    for path in (raw["rules_dir"], raw["tls"]["confdir"], raw["audit"]["path"]):
        assert path in mounts, f"{path} is not a volume in the Deployment"
    assert not mounts[raw["tls"]["confdir"]].get("readOnly")
    assert not mounts[raw["audit"]["path"]].get("readOnly")
    assert "subPathExpr" in mounts[raw["audit"]["path"]]  # one audit directory per pod
    assert "/tmp" in mounts  # prometheus-client multiprocess files of the workers


def test_district_rules_in_configmap_compile(resources: dict, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    for name, text in resources[("ConfigMap", "cipa-proxy-rules")]["data"].items():
        assert name.endswith(".yaml") and (ROOT / "rules" / name).exists(), name
        (rules / name).write_text(text)
    loaded = load_rules(rules)
    assert "district" in loaded.categories


def test_services_select_the_proxy_pods(resources: dict) -> None:
    dep = resources[("Deployment", "cipa-proxy")]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert _labels_match(dep["spec"]["selector"]["matchLabels"], pod_labels)
    svc = resources[("Service", "cipa-proxy")]
    assert svc["spec"]["externalTrafficPolicy"] == "Local"  # client addresses survive
    assert svc["spec"]["type"] == "LoadBalancer"
    assert _labels_match(svc["spec"]["selector"], pod_labels)
    assert svc["spec"]["ports"][0]["targetPort"] == "proxy"
    metrics = resources[("Service", "cipa-proxy-metrics")]
    assert _labels_match(metrics["spec"]["selector"], pod_labels)
    pac_pods = resources[("Deployment", "cipa-proxy-pac")]["spec"]["template"]["metadata"]
    assert not _labels_match(svc["spec"]["selector"], pac_pods["labels"])

    pdb = resources[("PodDisruptionBudget", "cipa-proxy")]
    assert _labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert not _labels_match(pdb["spec"]["selector"]["matchLabels"], pac_pods["labels"])
    hpa = resources[("HorizontalPodAutoscaler", "cipa-proxy")]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "cipa-proxy")
    assert hpa["spec"]["minReplicas"] >= 2


def test_servicemonitor_scrapes_the_metrics_service(resources: dict) -> None:
    sm = resources[("ServiceMonitor", "cipa-proxy")]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    metrics = resources[("Service", "cipa-proxy-metrics")]
    assert _labels_match(sm["spec"]["selector"]["matchLabels"], metrics["metadata"]["labels"])
    assert not _labels_match(
        sm["spec"]["selector"]["matchLabels"],
        resources[("Service", "cipa-proxy")]["metadata"]["labels"],
    )
    port_names = {p["name"] for p in metrics["spec"]["ports"]}
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"] and "metrics" in port_names
    # The alert rules and dashboard select job="cipa-proxy": jobLabel names a label whose
    # value is that.
    assert metrics["metadata"]["labels"][sm["spec"]["jobLabel"]] == "cipa-proxy"


def test_cronjob_and_pac(resources: dict) -> None:
    cron = resources[("CronJob", "cipa-proxy-lists-update")]
    job = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = job["containers"][0]["command"][-1]
    line = next(x for x in script.splitlines() if "cipa-proxy lists update" in x)
    argv = line.split("exec cipa-proxy ", 1)[1].split()
    parser = cli.build_parser()
    if "lists" in parser._subparsers._group_actions[0].choices:  # the command exists in this build
        parser.parse_args(argv)  # every flag the job passes is one the command takes
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    dep = resources[("Deployment", "cipa-proxy")]["spec"]["template"]["spec"]
    config_mount = next(m for m in dep["containers"][0]["volumeMounts"] if m["name"] == "config")
    assert argv[argv.index("--config") + 1].startswith(config_mount["mountPath"] + "/")
    volumes = {v["name"]: v for v in job["volumes"]}
    assert volumes["lists"]["persistentVolumeClaim"]["claimName"] == "cipa-proxy-lists"
    pac = resources[("ConfigMap", "cipa-proxy-pac")]["data"]["proxy.pac"]
    assert "function FindProxyForURL(url, host)" in pac
    assert pac.rstrip().endswith("}") and 'return "PROXY ' in pac
    assert "; DIRECT" not in pac  # no unfiltered fallback


def test_image_paths_match_the_dockerfile(resources: dict) -> None:
    dockerfile = ROOT / "Dockerfile"
    if not dockerfile.exists():
        pytest.skip("no Dockerfile")
    text = dockerfile.read_text()
    assert "COPY rules /etc/cipa-proxy/rules" in text  # what the init container copies
    assert "USER 10001" in text
    pod = resources[("Deployment", "cipa-proxy")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001


# ---------------------------------------------------------------------- compose


def test_compose_parses_and_mounts_only_existing_files() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert set(services) == {"cipa-proxy", "prometheus", "grafana"}
    base = COMPOSE.parent
    named = set(doc.get("volumes") or {})
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            assert (base / svc["build"]["context"] / "Dockerfile").exists() or not (
                ROOT / "Dockerfile"
            ).exists()
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (base / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
        for dep in svc.get("depends_on", []):
            assert dep in services
    prom = yaml.safe_load((base / "compose" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "cipa-proxy")
    assert job["static_configs"][0]["targets"] == ["cipa-proxy:9464"]
    mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert set(prom["rule_files"]) <= mounted
    dash = yaml.safe_load((base / "compose" / "grafana" / "dashboards.yml").read_text())
    path = dash["providers"][0]["options"]["path"]
    assert any(v.split(":")[1].startswith(path + "/") for v in services["grafana"]["volumes"])
