"""The Helm chart rendered (by tests/ui/helm_render.py: `helm` itself is not installable on
these machines) and its manifests checked: they parse as YAML, selectors match pod labels,
probes and Service ports name real container ports, the Secret and ConfigMap are the ones
the pods use, and the ConfigMap's pgshard.toml is a config pgshard accepts once the Secret's
values fill its placeholders."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest
import yaml

from pgshard.config import config_from_dict
from tests.ui.helm_render import Renderer, RenderError, merge

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "docker" / "helm" / "pgshard"
SECRETS = {"secrets": {"adminPassword": "admin-pw", "jwtSecret": "jwt", "shardPassword": "s-pw",
                       "appPassword": "app-pw"}}


def manifests(overrides: dict | None = None) -> list[dict]:
    values = merge(yaml.safe_load((CHART / "values.yaml").read_text()), SECRETS)
    values = merge(values, overrides or {})
    docs = []
    for text in Renderer(CHART, values).render_all().values():
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                docs.append(doc)
    return docs


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_default_render_has_every_object_and_consistent_wiring():
    docs = manifests()
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {"rel-pgshard-router", "rel-pgshard-manager"}
    secret = by_kind(docs, "Secret")["rel-pgshard-secrets"]
    configmap = by_kind(docs, "ConfigMap")["rel-pgshard-config"]
    for name, dep in deployments.items():
        spec = dep["spec"]
        pod_labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= pod_labels.items(), name
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (c,) = pod["containers"]
        ports = {p["name"] for p in c["ports"]}
        assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
        assert c["livenessProbe"]["httpGet"]["path"] == "/health"
        assert c["readinessProbe"]["httpGet"]["port"] in ports
        refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in c["env"] if "valueFrom" in e}
        assert refs == set(secret["stringData"])
        assert {e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"]
                if "valueFrom" in e} == {"rel-pgshard-secrets"}
        (cfg_vol,) = [v for v in pod["volumes"] if "configMap" in v]
        assert cfg_vol["configMap"]["name"] == configmap["metadata"]["name"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])  # rendered config
    assert deployments["rel-pgshard-router"]["spec"]["template"]["spec"]["containers"][0][
        "args"] == ["serve", "--role", "router"]
    assert deployments["rel-pgshard-manager"]["spec"]["template"]["spec"]["containers"][0][
        "args"] == ["serve"]
    # Routers: replicas come from the HPA, which targets their Deployment.
    assert "replicas" not in deployments["rel-pgshard-router"]["spec"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["rel-pgshard-router"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rel-pgshard-router"
    assert hpa["spec"]["minReplicas"] == 2
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert any(sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()
                   for d in deployments.values())
    for svc in by_kind(docs, "Service").values():
        matched = [d for d in deployments.values() if svc["spec"]["selector"].items()
                   <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert matched, svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            assert all(port["targetPort"] in {p["name"] for p in
                                              d["spec"]["template"]["spec"]["containers"][0]
                                              ["ports"]} for d in matched)
    assert by_kind(docs, "ServiceMonitor") == {}


def _render_config_module():
    spec = importlib.util.spec_from_file_location("render_config",
                                                  ROOT / "docker" / "render-config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_configmap_is_a_config_pgshard_accepts():
    docs = manifests({"config": {"tables": [{"name": "accounts", "shardKey": "id"}]}})
    toml_text = by_kind(docs, "ConfigMap")["rel-pgshard-config"]["data"]["pgshard.toml"]
    secret = by_kind(docs, "Secret")["rel-pgshard-secrets"]["stringData"]
    env = {"PGSHARD_JWT_SECRET": secret["jwt-secret"], "APP_PASSWORD": secret["app-password"],
           "SHARD_PASSWORD": secret["shard-password"]}
    cfg = config_from_dict(tomllib.loads(_render_config_module().render(toml_text, env)))
    assert cfg.store == "etcd://etcd:2379" and cfg.proxy.port == 6432
    assert cfg.sidecar.jwt_secret == "jwt" and cfg.lease_ttl == 5
    assert [s.name for s in cfg.catalog.shards] == ["shard0", "shard1"]
    assert cfg.catalog.shards[0].primary == "postgresql://pgshard:s-pw@pg-shard0-primary:5432/app"
    assert cfg.catalog.shards[1].replicas == (
        "postgresql://pgshard:s-pw@pg-shard1-replica:5432/app",)
    assert cfg.catalog.key_column("accounts") == "id"


def test_options_change_what_is_rendered():
    docs = manifests({"router": {"autoscaling": {"enabled": False}, "replicas": 3},
                      "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                      "secrets": {"existingSecret": "mine"}})
    assert by_kind(docs, "HorizontalPodAutoscaler") == {}
    assert by_kind(docs, "Deployment")["rel-pgshard-router"]["spec"]["replicas"] == 3
    assert by_kind(docs, "Secret") == {}
    env = by_kind(docs, "Deployment")["rel-pgshard-router"]["spec"]["template"]["spec"][
        "containers"][0]["env"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e} == {"mine"}
    (sm,) = by_kind(docs, "ServiceMonitor").values()
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]


def test_secrets_are_required_unless_an_existing_secret_is_named():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    with pytest.raises(RenderError, match="secrets.adminPassword"):
        Renderer(CHART, values).render("secret.yaml")
