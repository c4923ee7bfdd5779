"""The deployment files (Dockerfile, compose, Kubernetes, Strimzi, scrape configs) agree with
the code: ports, CX_ variables, topic names, health routes, commands, paths, users, labels.

No Docker engine or kubectl runs here: the files are parsed and checked against
service/config.py, service/cli.py, service/adapters/http.py and each other.
"""

from __future__ import annotations

import base64
import fnmatch
import http.server
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from service.adapters.kafka_admin import _topic_configs
from service.cli import build_parser
from service.config import PLACEHOLDER_TOKENS, VARIABLES, ConfigError, load_settings, policy_of
from service.domain.durations import parse_duration
from tests.unit import kustomize_lite
from tests.unit.test_rules_metrics import exported_names

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy/docker"
K8S = ROOT / "deploy/k8s"
COMPOSE_FILE = DOCKER / "compose.yaml"
DEFAULTS = {v.name: v.default for v in VARIABLES}
CX_IMAGE_SERVICES = ("topics", "worker", "simulator")


# --- helpers -------------------------------------------------------------------------------

def http_routes() -> set[str]:
    """Paths the worker's HTTP server registers (service/adapters/http.py)."""
    source = (ROOT / "service/adapters/http.py").read_text()
    routes = set(re.findall(r'@app\.page\("([^"]+)"\)', source))
    assert {"/healthz", "/readyz", "/metrics"} <= routes
    return routes


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def default_port(variable: str) -> int:
    value = DEFAULTS[variable]
    if "://" in value:
        port = urlsplit(value).port
        assert port is not None
        return port
    return host_port(value.split(",")[0])[1]


def check_cx_environment(env: dict[str, Any], where: str) -> None:
    """Every CX_ name is a documented variable and the whole set is a valid configuration."""
    names = {k for k in env if k.startswith("CX_")}
    unknown = names - DEFAULTS.keys()
    assert not unknown, f"{where}: unknown CX_ variables {sorted(unknown)}"
    load_settings({k: str(v) for k, v in env.items()})  # raises ConfigError on a bad value


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- Dockerfile ----------------------------------------------------------------------------

class Stage:
    def __init__(self, image: str, name: str | None) -> None:
        self.image = image
        self.name = name
        self.instructions: list[tuple[str, str]] = []

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.image}"
        return found[-1]


def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined."""
    text = (DOCKER / "Dockerfile").read_text()
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        elif not stages and keyword == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def exec_form(args: str) -> list[str]:
    value = yaml.safe_load(args)  # a JSON array is valid YAML
    assert isinstance(value, list), f"not the exec form: {args}"
    return [str(v) for v in value]


def env_instruction(args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(args))


def image_user() -> int:
    _, stages = dockerfile()
    user = stages[-1].last("USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: numeric, so Kubernetes can check runAsNonRoot"
    return int(uid)


def test_dockerfile_base_is_a_pinned_slim_python_the_package_supports() -> None:
    args, stages = dockerfile()
    base = args["PYTHON_IMAGE"]
    pinned = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base)
    assert pinned, f"base {base!r} is not pinned to a patch version of a slim image"
    required = re.fullmatch(r">=(\d+)\.(\d+)", pyproject()["project"]["requires-python"])
    assert required
    assert (int(pinned[1]), int(pinned[2])) >= (int(required[1]), int(required[2]))
    stage_names = {s.name for s in stages if s.name}
    for stage in stages:
        assert stage.image == base or stage.image in stage_names, stage.image


def test_dockerfile_final_stage_holds_the_built_wheel_only() -> None:
    _, stages = dockerfile()
    assert len(stages) >= 2
    build, final = stages[0], stages[-1]
    assert build.name
    built = " ".join(build.all("RUN"))
    assert "pip wheel" in built
    assert ".whl" in built
    copies = final.all("COPY") + final.all("ADD")
    assert copies, "the final stage copies nothing"
    for copy_args in copies:
        assert copy_args.startswith(f"--from={build.name} "), copy_args
    everything = " ".join(args for stage in stages for _, args in stage.instructions)
    assert "[dev]" not in everything
    assert "pip install -e" not in everything
    assert "uninstall" in " ".join(final.all("RUN"))


def test_dockerfile_runs_as_a_non_root_user_it_creates() -> None:
    _, stages = dockerfile()
    uid = image_user()
    assert uid != 0
    created = re.search(r"useradd [^&]*--uid (\d+)", " ".join(stages[-1].all("RUN")))
    assert created
    assert int(created[1]) == uid


def test_dockerfile_serves_http_on_the_default_port_with_a_urllib_healthcheck() -> None:
    _, stages = dockerfile()
    final = stages[-1]
    env: dict[str, str] = {}
    for args in final.all("ENV"):
        env.update(env_instruction(args))
    check_cx_environment(env, "Dockerfile ENV")
    assert env["CX_HTTP_HOST"] == "0.0.0.0", "a container must listen beyond its loopback"
    port = int(env.get("CX_HTTP_PORT", DEFAULTS["CX_HTTP_PORT"]))
    assert port == int(DEFAULTS["CX_HTTP_PORT"])
    assert [int(p.split("/")[0]) for p in final.last("EXPOSE").split()] == [port]
    check = final.last("HEALTHCHECK")
    command = exec_form(check.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2]
    assert "curl" not in check
    url = re.search(r"'(http://127\.0\.0\.1:[^']*)'", command[2])
    assert url, command[2]
    path = urlsplit(url[1].replace("%s", str(port))).path
    assert path == "/healthz"
    assert path in http_routes()
    assert f"'CX_HTTP_PORT', '{port}'" in command[2]
    assert env["CX_DATA_DIR"] in " ".join(final.all("RUN")), "the data folder is created"


def test_dockerfile_runs_the_worker_by_default() -> None:
    _, stages = dockerfile()
    final = stages[-1]
    entrypoint = exec_form(final.last("ENTRYPOINT"))
    assert entrypoint == list(pyproject()["project"]["scripts"])
    assert build_parser().parse_args(exec_form(final.last("CMD"))).command == "worker"


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = PurePosixPath(path).parts
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if glob.startswith("**/"):
            names = [PurePosixPath(c).name for c in candidates]
            matched = any(fnmatch.fnmatchcase(n, glob[3:]) for n in names)
        else:
            matched = any(fnmatch.fnmatchcase(c, glob) for c in candidates)
        if matched:
            excluded = not negated
    return excluded


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    _, stages = dockerfile()
    sources = [shlex.split(a)[:-1] for a in stages[0].all("COPY") if not a.startswith("--")]
    copied = [s for group in sources for s in group]
    assert set(copied) == {"pyproject.toml", "README.md", "LICENSE", "NOTICE", "service"}
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not dockerignore_excludes(source), f"{source} is copied but ignored"
    assert not dockerignore_excludes("service/adapters/lua/commit_partition.lua")
    for ignored in (".venv/bin/python", ".git/HEAD", "tests/unit/test_config.py",
                    ".cx-local/redis/appendonly.aof", ".cx-cache/x.jar", "deploy/k8s",
                    "service/__pycache__/config.cpython-311.pyc", "service/domain/__pycache__",
                    "docs/operations.md"):
        assert dockerignore_excludes(ignored), f"{ignored} would be sent to the build"


# --- Docker Compose ------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port."""
    out = []
    for spec in service.get("ports", []):
        host, hport, cport = str(spec).split(":")
        out.append((host, int(hport), int(cport.split("/")[0])))
    return out


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    return [(v.split(":")[0], v.split(":")[1]) for v in service.get("volumes", [])]


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The file on the host that a bind mount shows at container_path."""
    for source, target in mounts(service):
        if source.startswith(".") and (container_path == target
                                       or container_path.startswith(target + "/")):
            return (DOCKER / source / container_path[len(target):].lstrip("/")).resolve()
    raise AssertionError(f"nothing is mounted at {container_path}")


def cli_args(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list)
    return [str(c) for c in command]


def test_compose_runs_the_whole_stack() -> None:
    assert set(services()) == {"kafka", "redis", "topics", "worker", "simulator", "prometheus",
                               "alertmanager", "grafana"}


def test_compose_kafka_is_the_version_of_the_local_stack_in_kraft_mode() -> None:
    pom = (ROOT / "deploy/local/kafka/pom.xml").read_text()
    version = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert version
    kafka = services()["kafka"]
    assert kafka["image"] == f"apache/kafka:{version[1]}"
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    cluster_id = env["CLUSTER_ID"]
    raw = base64.urlsafe_b64decode(cluster_id + "==")
    assert len(raw) == 16
    assert base64.urlsafe_b64encode(raw).decode().rstrip("=") == cluster_id
    node = env["KAFKA_NODE_ID"]
    voter, _, address = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert int(voter) == int(node)
    assert host_port(address) == (kafka["hostname"], listener_ports(kafka)["CONTROLLER"])


def listener_ports(kafka: dict[str, Any]) -> dict[str, int]:
    listeners = kafka["environment"]["KAFKA_LISTENERS"].split(",")
    return {name: int(port) for name, port in
            (re.fullmatch(r"(\w+)://[^:]*:(\d+)", item).groups()  # type: ignore[union-attr]
             for item in listeners)}


def test_compose_images_are_pinned_and_the_cx_image_carries_the_package_version() -> None:
    version = pyproject()["project"]["version"]
    for name, service in services().items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo, f"{name}: {image}"
        assert re.search(r"\d", tag), f"{name}: {image} is not pinned to a version"
        assert tag != "latest", f"{name}: {image}"
        if name in CX_IMAGE_SERVICES:
            assert image == f"cx-stream:{version}", name
            assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]
                    ).resolve() == DOCKER / "Dockerfile"


def test_compose_cx_services_have_a_valid_configuration() -> None:
    for name in CX_IMAGE_SERVICES:
        check_cx_environment(services()[name]["environment"], f"compose {name}")


def test_compose_addresses_name_services_and_the_ports_they_listen_on() -> None:
    svc = services()
    kafka = svc["kafka"]
    advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    internal = {re.sub(r"^\w+://", "", a) for a in advertised}
    for name in CX_IMAGE_SERVICES:
        env = svc[name]["environment"]
        for server in env["CX_KAFKA_BOOTSTRAP"].split(","):
            assert server in internal, f"{name}: {server} is not advertised by kafka"
            assert host_port(server)[0] == kafka["hostname"] == "kafka"
        redis = urlsplit(env["CX_REDIS_URL"])
        assert redis.hostname == "redis"
        assert redis.hostname in svc
        assert redis.port == 6379 == published(svc["redis"])[0][2]


def test_compose_publishes_loopback_ports_that_match_the_code_defaults() -> None:
    svc = services()
    for name, service in svc.items():
        for host, _, _ in published(service):
            assert host == "127.0.0.1", f"{name} publishes beyond loopback"
    worker_env = svc["worker"]["environment"]
    http = int(DEFAULTS["CX_HTTP_PORT"])
    assert int(worker_env["CX_HTTP_PORT"]) == http
    assert ("127.0.0.1", http, http) in published(svc["worker"])
    # A cx-stream command run on the host with no settings reaches this Kafka and Redis.
    kafka_port = default_port("CX_KAFKA_BOOTSTRAP")
    assert DEFAULTS["CX_KAFKA_BOOTSTRAP"] == f"127.0.0.1:{kafka_port}"
    kafka = svc["kafka"]
    host_listener = [name for name, port in listener_ports(kafka).items() if port == kafka_port]
    assert host_listener, f"kafka has no listener on {kafka_port}"
    assert f"{host_listener[0]}://127.0.0.1:{kafka_port}" in \
        kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert ("127.0.0.1", kafka_port, kafka_port) in published(kafka)
    assert ("127.0.0.1", default_port("CX_REDIS_URL"), 6379) in published(svc["redis"])
    assert ("127.0.0.1", 9090, 9090) in published(svc["prometheus"])
    assert ("127.0.0.1", 9093, 9093) in published(svc["alertmanager"])
    assert ("127.0.0.1", 3000, 3000) in published(svc["grafana"])


def test_compose_commands_are_cx_stream_commands() -> None:
    svc = services()
    parser = build_parser()
    assert parser.parse_args(cli_args(svc["topics"])).command == "topics"
    assert parser.parse_args(cli_args(svc["worker"])).command == "worker"
    simulate = parser.parse_args(cli_args(svc["simulator"]))
    assert simulate.command == "simulate"
    assert simulate.out is None
    assert simulate.duration is None, "the laptop stack runs live traffic until stopped"


def has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    return bool(check) and not check.get("disable", False)


def test_compose_dependencies_wait_for_health_or_completion() -> None:
    svc = services()
    for name, service in svc.items():
        for target, rule in service.get("depends_on", {}).items():
            assert target in svc, f"{name} depends on unknown {target}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert has_healthcheck(svc[target]), f"{name} waits on {target}'s health"
            else:
                assert condition == "service_completed_successfully", (name, condition)
                assert svc[target].get("restart") == "no", f"{target} must run once"
    for name in ("kafka", "redis", "worker", "prometheus", "alertmanager", "grafana"):
        assert has_healthcheck(svc[name]), name
    assert svc["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    worker_deps = svc["worker"]["depends_on"]
    assert worker_deps["topics"]["condition"] == "service_completed_successfully"
    assert worker_deps["redis"]["condition"] == "service_healthy"
    assert svc["simulator"]["depends_on"]["topics"]["condition"] == \
        "service_completed_successfully"


def test_compose_worker_health_and_stop_grace_follow_the_code() -> None:
    worker = services()["worker"]
    test = worker["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert "urllib.request" in test[-1]
    url = urlsplit(re.search(r"'(http://[^']+)'", test[-1])[1])  # type: ignore[index]
    assert url.path == "/healthz"
    assert url.path in http_routes()
    assert url.port == int(worker["environment"]["CX_HTTP_PORT"])
    shutdown = parse_duration(worker["environment"].get("CX_SHUTDOWN_TIMEOUT",
                                                        DEFAULTS["CX_SHUTDOWN_TIMEOUT"]))
    assert parse_duration(worker["stop_grace_period"]) >= shutdown + 10


def test_compose_redis_keeps_an_append_only_file_on_a_volume() -> None:
    redis = services()["redis"]
    command = cli_args(redis)
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] in {"everysec", "always"}
    volume = dict((t, s) for s, t in mounts(redis))["/data"]
    assert volume in compose()["volumes"]


def test_compose_mounted_files_and_named_volumes_exist() -> None:
    declared = set(compose()["volumes"])
    for name, service in services().items():
        for source, _ in mounts(service):
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def test_compose_prometheus_loads_the_rules_and_scrapes_every_worker() -> None:
    svc = services()
    prometheus = svc["prometheus"]
    flag = next(a for a in cli_args(prometheus) if a.startswith("--config.file="))
    config = yaml.safe_load(host_path(prometheus, flag.split("=", 1)[1]).read_text())
    rule_files = [p for pattern in config["rule_files"]
                  for p in host_path(prometheus, str(PurePosixPath(pattern).parent))
                  .glob(PurePosixPath(pattern).name)]
    assert ROOT / "deploy/prometheus/rules/cx-stream.rules.yml" in rule_files
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "cx-stream"
    assert 'job="cx-stream"' in (ROOT / "deploy/prometheus/rules/cx-stream.rules.yml").read_text()
    assert job["metrics_path"] in http_routes()
    (dns,) = job["dns_sd_configs"]
    assert dns["names"] == ["worker"]
    assert dns["port"] == int(svc["worker"]["environment"]["CX_HTTP_PORT"])
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    (target,) = alertmanagers["static_configs"][0]["targets"]
    host, port = host_port(target)
    assert host in svc
    assert port in {c for _, _, c in published(svc[host])}
    assert host_path(svc[host], "/etc/alertmanager/alertmanager.yml") == \
        ROOT / "deploy/prometheus/alertmanager.yml"


def test_compose_grafana_provisions_the_datasource_and_the_dashboard() -> None:
    svc = services()
    grafana = svc["grafana"]
    provisioning = "/etc/grafana/provisioning"
    (datasource,) = yaml.safe_load(
        host_path(grafana, f"{provisioning}/datasources/cx-stream.yml").read_text()
    )["datasources"]
    url = urlsplit(datasource["url"])
    assert url.hostname in svc
    assert url.port in {c for _, _, c in published(svc[url.hostname])}
    (provider,) = yaml.safe_load(
        host_path(grafana, f"{provisioning}/dashboards/cx-stream.yml").read_text()
    )["providers"]
    dashboards = host_path(grafana, provider["options"]["path"])
    assert (dashboards / "cx-stream.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home) == ROOT / "deploy/grafana/dashboards/cx-stream.json"


# --- Kubernetes ----------------------------------------------------------------------------

def rendered(name: str) -> list[dict[str, Any]]:
    return kustomize_lite.build(K8S / name)


def one(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [r for r in resources
             if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(workload)["containers"]
    c: dict[str, Any] = only
    return c


# What an operator puts in place of the example Secret's placeholder token, as its comment asks.
REAL_TOKEN = "a-random-token-from-the-secret-manager"


def environment(resources: list[dict[str, Any]], workload: dict[str, Any],
                as_shipped: bool = False) -> dict[str, str]:
    """What envFrom and env give the container, from the rendered ConfigMaps and Secrets; the
    placeholder token replaced by a real one unless `as_shipped`."""
    env: dict[str, str] = {}
    for source in container(workload).get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(resources, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            secret = one(resources, "Secret", source["secretRef"]["name"])
            env.update(secret.get("stringData", {}))
            env.update({k: base64.b64decode(v).decode()
                        for k, v in secret.get("data", {}).items()})
    for item in container(workload).get("env", []):
        env[item["name"]] = item["value"]
    if not as_shipped and env.get("CX_API_TOKENS") in PLACEHOLDER_TOKENS:
        env["CX_API_TOKENS"] = REAL_TOKEN
    return env


def quantity(value: str | int) -> float:
    """A Kubernetes CPU (cores) or memory (bytes) quantity."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def test_every_k8s_file_parses_and_holds_kubernetes_objects() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 13
    for path in files:
        if path.name == "kustomization.yaml":
            assert yaml.safe_load(path.read_text())["kind"] == "Kustomization"
        elif path.parent.name == "prometheus":
            assert "scrape_configs" in yaml.safe_load(path.read_text())
        else:
            for doc in kustomize_lite.load_documents(path):
                assert doc["apiVersion"], path
                assert doc["metadata"]["name"], path


def test_the_base_and_the_example_overlay_render() -> None:
    base = rendered("base")
    assert sorted(r["kind"] for r in base) == ["ConfigMap", "Deployment", "Job",
                                               "PodDisruptionBudget", "Service",
                                               "ServiceAccount"]
    overlay = rendered("overlays/example")
    assert {r["kind"] for r in overlay} == {r["kind"] for r in base} | {"Namespace", "Secret"}


def test_an_overlay_naming_a_missing_resource_does_not_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(FileNotFoundError):
        kustomize_lite.build(tmp_path)


@pytest.mark.parametrize("name", ["base", "overlays/example"])
def test_worker_probes_use_the_real_routes_and_port(name: str) -> None:
    resources = rendered(name)
    worker = one(resources, "Deployment")
    c = container(worker)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    configured = environment(resources, worker) if name != "base" else \
        one(resources, "ConfigMap")["data"]
    http = int(configured.get("CX_HTTP_PORT", DEFAULTS["CX_HTTP_PORT"]))
    assert configured.get("CX_HTTP_HOST") == "0.0.0.0"
    assert ports == {"http": http}
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz",
                "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert path in http_routes()
        assert ports.get(get["port"], get["port"]) == http
    assert c["readinessProbe"]["timeoutSeconds"] > 3, "/readyz may take 3 s to answer"
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == http
    assert annotations["prometheus.io/path"] in http_routes()
    assert build_parser().parse_args(c["args"]).command == "worker"


@pytest.mark.parametrize("name", ["base", "overlays/example"])
def test_grace_period_exceeds_the_worker_shutdown_timeout(name: str) -> None:
    resources = rendered(name)
    worker = one(resources, "Deployment")
    data = one(resources, "ConfigMap")["data"]
    shutdown = parse_duration(data.get("CX_SHUTDOWN_TIMEOUT", DEFAULTS["CX_SHUTDOWN_TIMEOUT"]))
    # the batch in hand, then the offset commit and leaving the group
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= shutdown + 10


def test_worker_resources_fit_one_core_and_the_memory_target() -> None:
    resources = container(one(rendered("base"), "Deployment"))["resources"]
    requests, limits = resources["requests"], resources["limits"]
    assert quantity(limits["cpu"]) <= 1.0, "one Python process uses one core at most"
    assert 0 < quantity(requests["cpu"]) <= quantity(limits["cpu"])
    assert quantity(limits["memory"]) >= 300 * 2**20, "headroom over the 300 MB RSS target"
    assert 0 < quantity(requests["memory"]) <= quantity(limits["memory"])


def test_overlay_configuration_and_credentials_are_valid_settings() -> None:
    resources = rendered("overlays/example")
    for workload in (one(resources, "Deployment"), one(resources, "Job")):
        check_cx_environment(environment(resources, workload), workload["metadata"]["name"])
    for kind in ("ConfigMap", "Secret"):
        obj = one(resources, kind)
        keys = set(obj.get("data", {})) | set(obj.get("stringData", {}))
        assert keys <= DEFAULTS.keys(), f"{kind}: {sorted(keys - DEFAULTS.keys())}"
    assert set(one(resources, "Secret")["stringData"]) == {"CX_REDIS_URL", "CX_API_TOKENS"}
    assert "CX_REDIS_URL" not in one(resources, "ConfigMap")["data"], \
        "a Redis URL may hold a password: it belongs in the Secret"
    assert "CX_API_TOKENS" not in one(resources, "ConfigMap")["data"], \
        "API tokens are credentials: they belong in the Secret"
    assert one(resources, "ConfigMap")["data"].get("CX_API_AUTH", "auto") != "none", \
        "workers listen on 0.0.0.0: the customer API must ask for a token"
    check_cx_environment(one(rendered("base"), "ConfigMap")["data"], "base ConfigMap")


def test_the_example_secrets_placeholder_token_is_refused_at_start() -> None:
    resources = rendered("overlays/example")
    shipped = environment(resources, one(resources, "Deployment"), as_shipped=True)
    assert shipped["CX_API_TOKENS"] in PLACEHOLDER_TOKENS  # the list names what is shipped
    with pytest.raises(ConfigError, match=r"^CX_API_TOKENS: .*placeholder"):
        load_settings(shipped)
    for name in ("CX_METRICS_TOKEN", "CX_HEALTH_TOKEN"):
        with pytest.raises(ConfigError, match=rf"^{name}: .*placeholder"):
            load_settings({**shipped, "CX_API_TOKENS": REAL_TOKEN,
                           name: shipped["CX_API_TOKENS"]})


def test_labels_and_selectors_agree() -> None:
    resources = rendered("overlays/example")
    worker = one(resources, "Deployment")
    job = one(resources, "Job")
    pod_labels = worker["spec"]["template"]["metadata"]["labels"]
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    selector = worker["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    service = one(resources, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not service["spec"]["selector"].items() <= job_labels.items()
    assert not selector.items() <= job_labels.items()
    pdb = one(resources, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] < worker["spec"]["replicas"]
    # an outage making every worker unready must not block node drains
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container(worker)["ports"]}
    assert port["port"] == int(environment(resources, worker)["CX_HTTP_PORT"])
    spread = pod_spec(worker)["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]
    assert spread == selector


def test_pods_run_as_the_image_user_with_writable_folders_mounted() -> None:
    resources = rendered("overlays/example")
    uid = image_user()
    for workload in (one(resources, "Deployment"), one(resources, "Job")):
        security = pod_spec(workload)["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == uid
        c = container(workload)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        mounted = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounted
        volumes = {v["name"] for v in pod_spec(workload).get("volumes", [])}
        assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes
    worker = one(resources, "Deployment")
    data_dir = environment(resources, worker)["CX_DATA_DIR"]
    assert data_dir in {m["mountPath"] for m in container(worker)["volumeMounts"]}


def test_topics_job_runs_cx_stream_topics_with_the_workers_image_and_config() -> None:
    resources = rendered("overlays/example")
    worker, job = one(resources, "Deployment"), one(resources, "Job")
    assert build_parser().parse_args(container(job)["args"]).command == "topics"
    assert container(job)["image"] == container(worker)["image"]
    assert container(job)["envFrom"] == container(worker)["envFrom"]
    assert pod_spec(job)["restartPolicy"] in {"OnFailure", "Never"}


def test_overlay_sets_namespace_image_and_replicas_within_the_partitions() -> None:
    resources = rendered("overlays/example")
    namespace = one(resources, "Namespace")["metadata"]["name"]
    for resource in resources:
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == namespace, resource["kind"]
    worker = one(resources, "Deployment")
    image = container(worker)["image"]
    base_image = container(one(rendered("base"), "Deployment"))["image"]
    assert image != base_image
    assert not image.endswith(":latest")
    settings = load_settings(environment(resources, worker))
    assert 2 <= worker["spec"]["replicas"] <= settings.topic_partitions
    assert settings.kafka_bootstrap != DEFAULTS["CX_KAFKA_BOOTSTRAP"]


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus relabelling (keep and replace), enough for the scrape config here."""
    labels = dict(labels)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(s, "")
                                                for s in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if action == "keep":
            if not match:
                return None
        elif action == "replace":
            if match:
                labels[rule["target_label"]] = re.sub(
                    r"\$(\d+)", lambda m: match.group(int(m[1])) or "",  # noqa: B023
                    rule.get("replacement", "$1"))
        else:
            raise AssertionError(f"action {action} not simulated")
    return labels


def discovered(workload: dict[str, Any], namespace: str) -> dict[str, str]:
    """The labels Kubernetes pod discovery gives a pod of this workload, before relabelling."""
    meta = workload["spec"]["template"]["metadata"]
    labels = {"__address__": "10.1.2.3", "__meta_kubernetes_namespace": namespace,
              "__meta_kubernetes_pod_name": "cx-stream-worker-abc12"}
    ports = container(workload).get("ports", [])
    if ports:
        labels["__address__"] += f":{ports[0]['containerPort']}"
    for key, value in meta.get("labels", {}).items():
        labels["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
    for key, value in meta.get("annotations", {}).items():
        labels["__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
    return labels


def test_scrape_config_finds_the_worker_pods_and_only_them() -> None:
    resources = rendered("overlays/example")
    namespace = one(resources, "Namespace")["metadata"]["name"]
    (job,) = yaml.safe_load((K8S / "prometheus/scrape-config.yaml").read_text())[
        "scrape_configs"]
    assert job["job_name"] == "cx-stream"
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod"
    assert namespace in sd["namespaces"]["names"]
    worker = one(resources, "Deployment")
    target = relabel(discovered(worker, namespace), job["relabel_configs"])
    assert target is not None, "the worker pods are not scraped"
    http = container(worker)["ports"][0]["containerPort"]
    assert target["__address__"] == f"10.1.2.3:{http}"
    assert target["__metrics_path__"] in http_routes()
    assert target["pod"]
    assert target["namespace"] == namespace
    assert relabel(discovered(one(resources, "Job"), namespace), job["relabel_configs"]) is None


def test_strimzi_topics_match_the_settings_and_the_rebuild_horizon() -> None:
    topics = kustomize_lite.load_documents(K8S / "strimzi/kafka-topics.yaml")
    resources = rendered("overlays/example")
    settings = load_settings(environment(resources, one(resources, "Deployment")))
    by_name = {t["spec"]["topicName"]: t["spec"] for t in topics}
    assert set(by_name) == set(settings.input_topics + settings.output_topics)
    for spec in by_name.values():
        assert spec["partitions"] == settings.topic_partitions
        assert spec["replicas"] == settings.topic_replication
    for topic, config in _topic_configs(settings).items():
        for key, value in config.items():
            assert str(by_name[topic]["config"][key]) == value, (topic, key)
    horizon_ms = policy_of(settings).join_horizon * 1000
    for topic in settings.input_topics:
        retention = by_name[topic]["config"].get("retention.ms", 7 * 86_400_000)
        assert retention == -1 or retention >= horizon_ms, topic
    clusters = {t["metadata"]["labels"]["strimzi.io/cluster"] for t in topics}
    assert len(clusters) == 1


def test_lag_autoscaler_targets_the_workers_within_the_partitions() -> None:
    (scaled,) = kustomize_lite.load_documents(K8S / "autoscaling/keda-scaledobject.yaml")
    resources = rendered("overlays/example")
    worker = one(resources, "Deployment")
    settings = load_settings(environment(resources, worker))
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    pdb = one(resources, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] < spec["minReplicaCount"]
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"] <= settings.topic_partitions
    (trigger,) = spec["triggers"]
    query = trigger["metadata"]["query"]
    assert set(re.findall(r"\bcx_[a-z_]+", query)) == {"cx_consumer_lag_messages"}
    assert "cx_consumer_lag_messages" in exported_names()
    assert 'job="cx-stream"' in query
    assert float(trigger["metadata"]["threshold"]) > 0


# --- docs/operations.md --------------------------------------------------------------------

OPERATIONS = ROOT / "docs/operations.md"


def test_operations_guide_names_real_files_metrics_and_variables() -> None:
    text = OPERATIONS.read_text()
    files = set(re.findall(r"`([\w./-]+\.ya?ml|[\w./-]*Dockerfile)`", text))
    assert len(files) >= 10
    for name in files:
        assert (ROOT / name).exists() or (K8S / name).exists(), f"{name} does not exist"
    metrics = set(re.findall(r"\bcx_[a-z_]+[a-z]\b", text))
    assert metrics, "the guide names no metric"
    assert metrics <= exported_names(), metrics - exported_names()
    variables = set(re.findall(r"\bCX_[A-Z_]*[A-Z](?![A-Z_]*\*)", text))
    assert variables <= DEFAULTS.keys(), variables - DEFAULTS.keys()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    for link in re.findall(r"\]\(#([^)]+)\)", text):
        assert link in anchors, f"no section for #{link}"


def test_operations_guide_quotes_the_grace_periods_of_the_files() -> None:
    text = OPERATIONS.read_text()
    grace = pod_spec(one(rendered("base"), "Deployment"))["terminationGracePeriodSeconds"]
    assert f"`terminationGracePeriodSeconds: {grace}`" in text
    assert f"{grace} s in the Kubernetes files" in text
    compose_grace = int(parse_duration(services()["worker"]["stop_grace_period"]))
    assert f"{compose_grace} s in Compose" in text
    assert "(docs/operations.md)" in (ROOT / "README.md").read_text()


def test_the_example_prometheus_config_points_at_the_kubernetes_scrape_job() -> None:
    text = (ROOT / "deploy/prometheus/prometheus.yml").read_text()
    named = re.findall(r"deploy/k8s/[\w/.-]+\.yaml", text)
    assert named, "deploy/prometheus/prometheus.yml does not say where the Kubernetes job is"
    for path in named:
        assert (ROOT / path).is_file(), path


def test_dockerfile_healthcheck_passes_on_200_and_fails_otherwise() -> None:
    _, stages = dockerfile()
    command = exec_form(stages[-1].last("HEALTHCHECK").split(" CMD ", 1)[1])
    status = {"/healthz": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {"PATH": os.environ["PATH"], "CX_HTTP_PORT": str(server.server_address[1])}
        python = [sys.executable, *command[1:]]
        assert subprocess.run(python, env=env, timeout=30).returncode == 0
        status["/healthz"] = 503
        assert subprocess.run(python, env=env, timeout=30,
                              stderr=subprocess.DEVNULL).returncode != 0
    finally:
        server.shutdown()
        server.server_close()


OLDEST_KUBERNETES = "1.30.0"


@pytest.mark.parametrize("name", ["base", "overlays/example"])
def test_manifests_match_the_kubernetes_api_schemas(name: str) -> None:
    """Strict: a misspelt or misplaced field fails, from the oldest supported version on."""
    resources = rendered(name)
    for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
        for resource in resources:
            kubernetes_validate.validate(resource, version, strict=True)


def test_schema_validation_rejects_a_misspelt_field() -> None:
    worker = one(rendered("base"), "Deployment")
    pod_spec(worker)["terminationGracePeriodSecond"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, OLDEST_KUBERNETES, strict=True)


def test_operations_guide_states_the_oldest_kubernetes_checked() -> None:
    major_minor = ".".join(OLDEST_KUBERNETES.split(".")[:2])
    assert f"Kubernetes {major_minor} and newer" in OPERATIONS.read_text()
