"""The deployment files checked without Docker or Kubernetes (neither runs here): the Compose
file's services, mounts and wiring; Prometheus' targets; the Helm chart's values references,
includes and blocks; the Dockerfile's stages and user; the config renderer's placeholders."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from pgshard.config import config_from_dict

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.11+ has it
    tomllib = None

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
CHART = DOCKER / "helm" / "pgshard"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def render_module():
    spec = importlib.util.spec_from_file_location("render_config", DOCKER / "render-config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------- compose

def test_compose_has_the_cluster_the_readme_describes():
    services = compose()["services"]
    assert set(services) == {"etcd", "pg-shard0-primary", "pg-shard0-replica",
                             "pg-shard1-primary", "pg-shard1-replica", "pgshard-manager",
                             "pgshard-router-1", "pgshard-router-2", "prometheus", "grafana"}
    for shard in ("shard0", "shard1"):
        primary, replica = services[f"pg-{shard}-primary"], services[f"pg-{shard}-replica"]
        assert primary["image"].startswith("postgres:") and replica["image"] == primary["image"]
        assert "wal_level=replica" in primary["command"]
        assert "max_prepared_transactions=200" in primary["command"]   # two-phase commit
        assert replica["environment"]["PRIMARY_HOST"] == f"pg-{shard}-primary"
        assert replica["depends_on"][f"pg-{shard}-primary"]["condition"] == "service_healthy"
        assert any("docker-entrypoint-initdb.d" in v for v in primary["volumes"])
    assert services["pgshard-manager"]["command"] == ["serve"]
    for r in ("pgshard-router-1", "pgshard-router-2"):
        assert services[r]["command"] == ["serve", "--role", "router"]
        assert services[r]["build"]["dockerfile"] == "docker/Dockerfile"


def test_compose_mounts_exist_and_every_pgshard_process_is_scraped():
    doc = compose()
    for name, svc in doc["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("."):
                assert (DOCKER / src).exists(), f"{name} mounts missing {src}"
    prom = yaml.safe_load((DOCKER / "compose/prometheus/prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    pgshards = {n for n in doc["services"] if n.startswith("pgshard-")}
    assert targets == {f"{n}:8081" for n in pgshards}
    provisioning = yaml.safe_load(
        (DOCKER / "compose/grafana/provisioning/dashboards/pgshard.yml").read_text())
    grafana_mounts = dict(v.split(":")[:2] for v in doc["services"]["grafana"]["volumes"])
    assert grafana_mounts["./grafana/pgshard.json"].startswith(
        provisioning["providers"][0]["options"]["path"])


def test_compose_config_renders_to_a_valid_pgshard_config():
    text = (DOCKER / "compose/pgshard.toml").read_text()
    env = {"PGSHARD_JWT_SECRET": 'jwt "quoted" \\ secret', "APP_PASSWORD": "app-pw",
           "PG_PASSWORD": "pg-pw"}
    data = tomllib.loads(render_module().render(text, env))
    assert data["sidecar"]["jwt_secret"] == env["PGSHARD_JWT_SECRET"]   # escaped, not broken
    cfg = config_from_dict(data)
    assert cfg.store == "etcd://etcd:2379"
    assert [s.name for s in cfg.catalog.shards] == ["shard0", "shard1"]
    assert all(len(s.replicas) == 1 and ":pg-pw@" in s.primary for s in cfg.catalog.shards)
    # The compose file provides every variable the config needs.
    needed = set(re.findall(r"\$\{(\w+)\}", text))
    provided = set(compose()["x-pgshard"]["environment"])
    assert needed <= provided, needed - provided


def test_render_refuses_unset_variables_and_leaves_comments():
    with pytest.raises(SystemExit, match="A_MISSING"):
        render_module().render('x = "${A_MISSING}"', {})
    text = '# ${NOT_A_SETTING} in a comment\ny = "${B}"\n'
    assert render_module().render(text, {"B": "b\nc"}) == \
        '# ${NOT_A_SETTING} in a comment\ny = "b\\nc"\n'


# ---------------------------------------------------------------------- Dockerfile

def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck():
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, re.M)
    assert stages == ["ui", "wheels", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    assert "node" not in runtime.split("\n", 1)[0]
    user = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    assert re.search(r"^HEALTHCHECK [^\n]*\\\n\s+CMD .*PGSHARD_HEALTH_URL", runtime, re.M)
    assert "PGSHARD_HEALTH_URL=http://127.0.0.1:8081/health" in runtime
    for src in re.findall(r"^COPY\s+(?!--from)(\S+)", text, re.M):
        assert (ROOT / src).exists(), f"COPY source {src} does not exist"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "ui/node_modules" in ignored and ".venv" in ignored


# ---------------------------------------------------------------------- Helm chart

def _values_paths(tree, prefix=()):
    out = {prefix}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out |= _values_paths(v, (*prefix, k))
    return out


def test_chart_metadata_and_values_parse():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "pgshard" and chart["version"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["router"]["autoscaling"]["enabled"] is True
    assert values["config"]["store"].startswith("etcd://")


def test_chart_templates_reference_only_existing_values_and_defines():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    known = _values_paths(values)
    templates = {p.name: p.read_text() for p in (CHART / "templates").iterdir()}
    defines = set()
    for text in templates.values():
        defines |= set(re.findall(r'define "([^"]+)"', text))
    refs = 0
    for name, text in templates.items():
        actions = re.findall(r"{{-?(.*?)-?}}", text, re.S)
        assert text.count("{{") == text.count("}}") == len(actions), name
        opened = sum(bool(re.match(r"\s*(if|range|with|define)\b", a)) for a in actions)
        ended = sum(bool(re.match(r"\s*end\b", a)) for a in actions)
        assert opened == ended, f"{name}: {opened} blocks opened, {ended} ended"
        for path in re.findall(r"\.Values((?:\.\w+)+)", text):
            refs += 1
            assert tuple(path.strip(".").split(".")) in known, f"{name}: .Values{path}"
        for part_path in re.findall(r"\$part((?:\.\w+)+)", text):
            for part in ("router", "manager"):
                key = (part, *part_path.strip(".").split("."))
                assert key in known, f"{name}: $part{part_path} missing under {part}"
        for inc in re.findall(r'include "([^"]+)"', text):
            assert inc in defines, f"{name}: include of undefined {inc}"
    assert refs > 30
    kinds = " ".join(templates.values())
    for kind in ("kind: Deployment", "kind: HorizontalPodAutoscaler", "kind: PodDisruptionBudget",
                 "kind: ConfigMap", "kind: Secret", "kind: Service", "kind: ServiceMonitor"):
        assert kind in kinds, kind
    assert "path: /ready" in templates["_helpers.tpl"]


# ---------------------------------------------------------------------- Grafana

def test_grafana_dashboard_is_well_formed():
    dash = json.loads((DOCKER / "grafana/pgshard.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
    joined = " ".join(exprs)
    for needed in ("pgshard_queries_total", "pgshard_query_duration_seconds_bucket",
                   "pgshard_pool_active", "pgshard_errors_total"):
        assert needed in joined
