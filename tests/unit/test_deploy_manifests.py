"""The deployment files: the Dockerfile, ``deploy/compose.yaml`` and ``deploy/kubernetes/``.

Docker and a cluster are not at hand in the suite, so each file is checked
for what can be checked without them: the compose file against the compose
specification's JSON schema (vendored by check-jsonschema, with its Apache-2.0
licence), every Kubernetes object against that version's OpenAPI schema in
strict mode (kubernetes-validate: an unknown or misspelt field fails), and
in all of them that each role runs as the CLI defines it and that every
environment variable they set is one the settings read: a misspelt
``REPORUNNER_*`` would otherwise be ignored in silence (``extra="ignore"``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices

from infrastructure.settings import ROLES, Settings
from reporunner.cli import ServeRole

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# The oldest Kubernetes minor still under upstream support when these were written.
KUBERNETES_VERSION = "1.32"

# Roles where one process is active and the others stand by (election).
SINGLE_ACTIVE = {"projections", "relay", "scheduler"}
API_ROLES = {"write-api", "read-api"}


def _setting_variables() -> set[str]:
    """Every environment variable ``Settings`` reads."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{name}".upper())
    return names


KNOWN_VARIABLES = _setting_variables()


def test_the_known_variables_are_the_settings() -> None:
    # The check below is only as good as this list: it must hold the real names.
    assert {"DATABASE_URL", "REDIS_URL", "REPORUNNER_DB_POOL_SIZE", "REPORUNNER_METRICS_PORT"} <= (
        KNOWN_VARIABLES
    )
    assert "REPORUNNER_DB_POOLSIZE" not in KNOWN_VARIABLES


def _unknown(names: set[str]) -> set[str]:
    return names - KNOWN_VARIABLES


# --- Dockerfile -------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, inside a continuation too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    return instructions


def _stages() -> list[Stage]:
    stages: list[Stage] = []
    for keyword, args in _dockerfile_instructions((ROOT / "Dockerfile").read_text()):
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def _env_names(args: str) -> set[str]:
    """The variables one ENV sets (``ENV A=1 B=2``; the legacy ``ENV A 1`` too)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]}
    return {word.partition("=")[0] for word in words}


def test_the_dockerfile_builds_a_wheel_then_a_slim_non_root_runtime() -> None:
    stages = _stages()
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime"
    build, runtime = stages[0], stages[-1]
    assert runtime.base == "python:3.11-slim"
    assert any("pip wheel" in run for run in build.all("RUN"))
    # The runtime takes the build stage's wheels and nothing else from it.
    assert any(f"from={build.name}" in run for run in runtime.all("RUN")), "wheels from build"
    assert not runtime.all("COPY"), "the runtime copies no sources, it installs the wheel"
    users = runtime.all("USER")
    assert users, "the runtime must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert runtime.all("ENTRYPOINT") == ['["reporunner"]']
    assert json.loads(runtime.all("CMD")[-1])[0] == "serve"
    assert "/healthz" in runtime.all("HEALTHCHECK")[-1]
    # No embedded PostgreSQL in the image: DATABASE_URL is required there.
    assert any("pip uninstall --yes pgserver" in run for run in runtime.all("RUN"))


def test_every_variable_the_dockerfile_sets_is_a_setting() -> None:
    names = {name for stage in _stages() for env in stage.all("ENV") for name in _env_names(env)}
    assert names, "the runtime sets its log format and data directory"
    assert not _unknown(names), f"unknown settings in the Dockerfile: {_unknown(names)}"


def test_the_build_stage_copies_every_package_and_the_context_keeps_them() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        pattern.rstrip("*")
        for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    # COPY SRC... DEST: every word but the last is a source in the build context.
    copied = {
        name.rstrip("/") for args in _stages()[0].all("COPY") for name in shlex.split(args)[:-1]
    }
    assert packages <= copied, f"packages the wheel would miss: {packages - copied}"
    assert project["project"]["readme"] in copied
    # .dockerignore excludes everything, then lets back in exactly what is copied.
    kept = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied <= kept, f"copied but ignored: {copied - kept}"
    for name in copied:
        assert (ROOT / name).exists(), name


def test_without_database_url_and_embedded_postgres_the_cli_says_so_and_exits_2(
    tmp_path: Path,
) -> None:
    """What the image does when DATABASE_URL is missing (it has no pgserver)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REPORUNNER_DATABASE_URL")
    }
    env["REPORUNNER_DATA_DIR"] = str(tmp_path)
    # pgserver is uninstalled in the image; None in sys.modules makes its import fail alike.
    script = (
        "import sys; sys.modules['pgserver'] = None; sys.argv = ['reporunner', 'migrate'];"
        "from reporunner.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "DATABASE_URL is not set" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "pgdata").exists()


# --- deploy/compose.yaml ----------------------------------------------------


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return schema


def _reporunner_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run this project's image."""
    return {
        name: service
        for name, service in compose["services"].items()
        if "reporunner" in str(service.get("image", ""))
    }


def _only_role(command: list[str]) -> str | None:
    return command[command.index("--only") + 1] if "--only" in command else None


def test_compose_passes_the_compose_specification_schema() -> None:
    schema = _compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(_compose()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_misspelt_key() -> None:
    schema = _compose_schema()
    broken = _compose()
    broken["services"]["write-api"]["helthcheck"] = broken["services"]["write-api"]["healthcheck"]
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))


def test_compose_runs_every_role_as_its_own_service_after_one_migration() -> None:
    compose = _compose()
    services = _reporunner_services(compose)
    roles = {_only_role(service["command"]): name for name, service in services.items()}
    assert set(roles) - {None} == set(ROLES) == {role.value for role in ServeRole}
    migrations = [name for name, service in services.items() if service["command"] == ["migrate"]]
    assert len(migrations) == 1, "one one-shot migration service"
    (migrate,) = migrations
    assert services[migrate]["restart"] == "no"
    for role, name in roles.items():
        if role is None:
            continue
        service = services[name]
        assert service["command"][0] == "serve"
        assert "--no-migrate" in service["command"], f"{name} must not migrate on its own"
        assert "0.0.0.0" in service["command"], f"{name} must listen beyond its container"
        assert service["depends_on"][migrate]["condition"] == "service_completed_successfully"
        assert "/readyz" in " ".join(service["healthcheck"]["test"]), name
        if role in SINGLE_ACTIVE:
            assert service["deploy"]["replicas"] == 2, f"{name}: an active one and a standby"
        if role not in API_ROLES:
            assert service["environment"]["REPORUNNER_METRICS_PORT"] == "9100", name
            assert "ports" not in service, f"{name} has no API to publish"


def test_compose_has_a_primary_a_streaming_replica_and_redis_with_health_checks() -> None:
    services = _compose()["services"]
    for name in ("postgres", "postgres-replica", "redis"):
        assert services[name]["healthcheck"]["test"], name
    replica_start = (DEPLOY / "postgres" / "replica-start.sh").read_text()
    assert "pg_basebackup" in replica_start and "--write-recovery-conf" in replica_start
    read_api = next(
        service
        for service in _reporunner_services(_compose()).values()
        if _only_role(service["command"]) == "read-api"
    )
    assert "@postgres-replica:" in read_api["environment"]["REPORUNNER_READ_DATABASE_URL"]
    assert "@postgres:" in read_api["environment"]["DATABASE_URL"]
    # A hot standby refuses to start with fewer max_connections than its primary.
    primary = re.search(r"max_connections=(\d+)", " ".join(services["postgres"]["command"]))
    standby = re.search(r"max_connections=(\d+)", replica_start)
    assert primary and standby and int(standby[1]) >= int(primary[1])


def test_the_postgres_scripts_parse_as_posix_shell() -> None:
    for script in sorted((DEPLOY / "postgres").glob("*.sh")):
        done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{script.name}: {done.stderr}"
        assert script.read_text().startswith("#!/bin/sh\n"), script.name


def test_compose_monitoring_profile_mounts_files_that_exist() -> None:
    services = _compose()["services"]
    monitoring = {
        name for name, service in services.items() if "monitoring" in service.get("profiles", [])
    }
    assert monitoring == {"prometheus", "grafana"}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts a missing {source}"
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    scraped = {
        name
        for job in prometheus["scrape_configs"]
        for sd in job["dns_sd_configs"]
        for name in sd["names"]
    }
    assert scraped == set(_reporunner_services(_compose())) - {"migrate"}


def test_every_variable_compose_sets_on_a_role_is_a_setting() -> None:
    names = {
        variable
        for service in _reporunner_services(_compose()).values()
        for variable in service.get("environment", {})
    }
    assert {"DATABASE_URL", "REDIS_URL"} <= names
    assert not _unknown(names), f"unknown settings in compose.yaml: {_unknown(names)}"


# --- deploy/kubernetes ------------------------------------------------------


def _kustomization() -> dict[str, Any]:
    loaded = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _objects() -> list[dict[str, Any]]:
    objects = []
    for resource in _kustomization()["resources"]:
        for document in yaml.safe_load_all((KUBERNETES / resource).read_text()):
            if document:
                objects.append(document)
    return objects


def _of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in _objects() if obj["kind"] == kind}


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = obj["spec"]["template"]["spec"]["containers"]
    return containers


def _role_deployments() -> dict[str, dict[str, Any]]:
    deployments = {}
    for deployment in _of_kind("Deployment").values():
        (container,) = _containers(deployment)
        role = _only_role(container["args"])
        assert role is not None, deployment["metadata"]["name"]
        deployments[role] = deployment
    return deployments


def _selects(selector: dict[str, str], obj: dict[str, Any]) -> bool:
    labels = obj["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(_kustomization()["resources"])
    on_disk = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_every_kubernetes_object_passes_its_schema_strictly() -> None:
    objects = _objects()
    assert {obj["kind"] for obj in objects} >= {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Job",
        "ConfigMap",
        "Secret",
    }
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{where}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message}")


def test_the_strict_schema_catches_a_misspelt_field() -> None:
    deployment = _role_deployments()["worker"]
    _containers(deployment)[0]["readinesProbe"] = {"httpGet": {"path": "/readyz", "port": 9100}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_a_deployment_per_role_with_probes_and_requests() -> None:
    deployments = _role_deployments()
    assert set(deployments) == set(ROLES)
    for role, deployment in deployments.items():
        (container,) = _containers(deployment)
        assert container["args"][0] == "serve" and "--no-migrate" in container["args"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        probes = {
            probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"])
            for probe in ("livenessProbe", "readinessProbe")
        }
        port_name = "http" if role in API_ROLES else "metrics"
        assert probes == {
            "livenessProbe": ("/healthz", port_name),
            "readinessProbe": ("/readyz", port_name),
        }, role
        if role not in API_ROLES:
            args = container["args"]
            assert str(ports["metrics"]) == args[args.index("--metrics-port") + 1], role
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), role
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        strategy = deployment["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0, f"{role}: a rollout never drops below its replicas"
        if role in SINGLE_ACTIVE:
            assert deployment["spec"]["replicas"] == 2, f"{role}: an active one and a standby"


def test_disruption_budgets_services_and_autoscalers_match_the_deployments() -> None:
    deployments = _role_deployments()
    budgets = list(_of_kind("PodDisruptionBudget").values())
    for role, deployment in deployments.items():
        covering = [
            b for b in budgets if _selects(b["spec"]["selector"]["matchLabels"], deployment)
        ]
        assert len(covering) == 1, f"{role}: one PodDisruptionBudget"
    services = _of_kind("Service").values()
    served = {
        role
        for role, d in deployments.items()
        for s in services
        if _selects(s["spec"]["selector"], d)
    }
    assert served == API_ROLES
    targets = {
        hpa["spec"]["scaleTargetRef"]["name"]
        for hpa in _of_kind("HorizontalPodAutoscaler").values()
    }
    assert targets == {deployments[role]["metadata"]["name"] for role in API_ROLES}
    for role in API_ROLES:
        # The autoscaler owns the count: a replicas field would reset it on every apply.
        assert "replicas" not in deployments[role]["spec"], role


def test_the_migration_job_migrates_with_the_roles_settings() -> None:
    (job,) = _of_kind("Job").values()
    (container,) = _containers(job)
    assert container["args"] == ["migrate"]
    role_sources = {
        json.dumps(source, sort_keys=True)
        for source in _containers(_role_deployments()["write-api"])[0]["envFrom"]
    }
    assert {json.dumps(s, sort_keys=True) for s in container["envFrom"]} == role_sources


def test_every_variable_the_manifests_set_is_a_setting() -> None:
    config_maps, secrets = _of_kind("ConfigMap"), _of_kind("Secret")
    names: set[str] = set()
    containers = [c for d in _role_deployments().values() for c in _containers(d)]
    containers += [c for job in _of_kind("Job").values() for c in _containers(job)]
    for container in containers:
        names.update(variable["name"] for variable in container.get("env", []))
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                names.update(config_maps[source["configMapRef"]["name"]]["data"])
            else:
                secret = secrets[source["secretRef"]["name"]]
                names.update(secret.get("stringData", {}) | secret.get("data", {}))
    assert {"DATABASE_URL", "REDIS_URL", "REPORUNNER_READ_DATABASE_URL"} <= names
    assert not _unknown(names), f"unknown settings in deploy/kubernetes: {_unknown(names)}"


def test_only_the_read_api_reads_from_the_replica() -> None:
    for role, deployment in _role_deployments().items():
        sources = {
            source["secretRef"]["name"]
            for source in _containers(deployment)[0]["envFrom"]
            if "secretRef" in source
        }
        assert ("reporunner-read-database" in sources) == (role == "read-api"), role
