"""The deploy contract: Dockerfile, compose stack and Kubernetes manifests agree with each other and the code.

Docker and a cluster are not available where the tests run, so these files are checked by reading
them: ports, probe paths, the config path, non-root settings, that every ``${VAR}`` an embedded
rlsproxy config needs is provided, and that each embedded config passes rlsproxy's own validation.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from rlsproxy.config import Config, parse_config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
COMPOSE_CONFIG = DEPLOY / "compose" / "rlsproxy.yaml"
INITDB = DEPLOY / "compose" / "initdb.sh"
PROMETHEUS = DEPLOY / "compose" / "prometheus.yml"
K8S = DEPLOY / "kubernetes"

CONFIG_PATH = "/etc/rlsproxy/rlsproxy.yaml"
CLIENT_PORT = 6432
HTTP_PORT = 9432
UID = 10001
# The order rlsproxy.devcluster.install_demo loads them in: roles before the grants that name them,
# auth.* functions before the policies that call them, tables before the seed rows.
DEMO_SQL_ORDER = ("examples/roles.sql", "rlsproxy/sql/auth.sql", "examples/schema.sql", "examples/seed.sql")

# ${VAR} in an rlsproxy config; `$${` is a literal and not a reference.
_CONFIG_VAR = re.compile(r"(?<!\$)\$\{([^}]*)\}")
# ${VAR}, ${VAR:-default} or ${VAR-default} in a compose file.
_COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


# ---------------------------------------------------------------------------------------------
# Dockerfile


@dataclass(frozen=True)
class Instruction:
    stage: int  # 0-based index of the FROM it belongs to
    keyword: str  # upper case
    args: str  # continuation lines joined


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, comments dropped, backslash continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    out: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, args.strip()))
    return out


def stages() -> list[list[Instruction]]:
    found = dockerfile()
    count = max(i.stage for i in found) + 1
    return [[i for i in found if i.stage == n] for n in range(count)]


def final_stage() -> list[Instruction]:
    return stages()[-1]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    matching = [i for i in instructions if i.keyword == keyword]
    assert len(matching) == 1, f"expected exactly one {keyword}, found {len(matching)}"
    return matching[0]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in final_stage():
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.args):
                key, sep, value = pair.partition("=")
                assert sep, f"use ENV KEY=VALUE, got {pair!r}"
                env[key] = value
    return env


def dockerfile_user() -> str:
    users = [i.args for i in final_stage() if i.keyword == "USER"]
    assert users, "the final stage sets no USER: the container would run as root"
    return users[-1]


def test_dockerfile_builds_wheels_in_a_builder_stage_and_installs_only_those() -> None:
    builder, final = stages()[0], final_stage()
    assert len(stages()) >= 2
    assert re.fullmatch(r"python:\S+-slim AS builder", builder[0].args, re.IGNORECASE), builder[0].args
    assert re.fullmatch(r"python:\S+-slim", final[0].args), final[0].args
    assert any(i.keyword == "RUN" and "pip wheel" in i.args and "/wheels" in i.args for i in builder)
    installs = [i.args for i in final if i.keyword == "RUN" and "pip install" in i.args]
    assert len(installs) == 1, installs
    install = installs[0]
    assert "--no-index" in install and "--find-links=/wheels" in install, install
    assert "from=builder" in install and "source=/wheels" in install, install
    # Nothing of the source tree reaches the final stage.
    assert not [i for i in final if i.keyword in ("COPY", "ADD")]


def test_dockerfile_builder_copies_everything_the_wheel_is_built_from() -> None:
    copied: set[str] = set()
    for instruction in stages()[0]:
        if instruction.keyword == "COPY":
            parts = [p for p in instruction.args.split() if not p.startswith("--")]
            copied.update(p.rstrip("/") for p in parts[:-1])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = {"pyproject.toml", "setup.py", pyproject["project"]["readme"], "rlsproxy"}
    assert needed <= copied, f"the builder does not copy {sorted(needed - copied)}"
    for name in copied:
        assert (ROOT / name).exists(), name


def test_dockerignore_keeps_local_state_out_but_not_the_build_inputs() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (".venv", ".git", "*.egg-info", ".demo", "bench/results", ".pytest_cache"):
        assert needed in patterns, needed
    assert not [p for p in patterns if p.startswith("!")], "re-inclusions make the list hard to read"
    for kept in (
        "pyproject.toml",
        "setup.py",
        "README.md",
        "rlsproxy",
        "rlsproxy/sql/auth.sql",
        "rlsproxy/cli.py",
    ):
        hits = [p for p in patterns if fnmatch.fnmatch(kept, p) or kept.startswith(p.rstrip("/") + "/")]
        assert not hits, f"{kept} is excluded from the build context by {hits}"


def test_dockerfile_exposes_the_client_and_http_ports() -> None:
    exposed = {int(p.split("/")[0]) for i in final_stage() if i.keyword == "EXPOSE" for p in i.args.split()}
    assert exposed == {CLIENT_PORT, HTTP_PORT}


def test_dockerfile_runs_as_a_fixed_non_root_uid() -> None:
    user = dockerfile_user()
    uid, _, gid = user.partition(":")
    assert uid not in ("root", "0") and gid not in ("root", "0"), user
    assert uid == str(UID) and gid == str(UID), f"USER {user}: Kubernetes runAsNonRoot needs a numeric uid"
    runs = " ".join(i.args for i in final_stage() if i.keyword == "RUN")
    assert f"--uid {UID}" in runs and f"--gid {UID}" in runs


def test_dockerfile_points_rlsproxy_at_the_mounted_config() -> None:
    assert dockerfile_env()["RLSPROXY_CONFIG"] == CONFIG_PATH


def test_dockerfile_runs_rlsproxy_serve_under_tini() -> None:
    final = final_stage()
    assert exec_form(only(final, "ENTRYPOINT").args) == ["tini", "--", "rlsproxy"]
    assert exec_form(only(final, "CMD").args) == ["serve"]
    assert any(i.keyword == "RUN" and "apt-get install" in i.args and "tini" in i.args for i in final)


def healthcheck_command() -> list[str]:
    args = only(final_stage(), "HEALTHCHECK").args
    options, sep, command = args.partition(" CMD ")
    assert sep, f"HEALTHCHECK without CMD: {args}"
    assert "--timeout=" in options
    return exec_form(command)


def test_healthcheck_requests_healthz_on_the_http_port_with_python() -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert f"'http://127.0.0.1:{HTTP_PORT}/healthz'" in command[2]
    assert "urllib.request.urlopen" in command[2]


class _Stub(BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub_server() -> Iterator[ThreadingHTTPServer]:
    _Stub.paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_passes_only_on_success(
    stub_server: ThreadingHTTPServer, status: int, healthy: bool
) -> None:
    """Run the HEALTHCHECK's own code, pointed at a stub server, and read its exit code."""
    command = healthcheck_command()
    port = stub_server.server_address[1]
    code = command[2].replace(f"127.0.0.1:{HTTP_PORT}", f"127.0.0.1:{port}")
    _Stub.status = status
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30, check=False)
    assert (done.returncode == 0) is healthy, done.stderr
    assert _Stub.paths == ["/healthz"]


# ---------------------------------------------------------------------------------------------
# Embedded rlsproxy configs


def config_vars(text: str) -> set[str]:
    """The variables the config's values refer to (comments are not values: not counted)."""

    def walk(node: object) -> Iterator[str]:
        if isinstance(node, str):
            yield from _CONFIG_VAR.findall(node)
        elif isinstance(node, dict):
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    return set(walk(yaml.safe_load(text)))


def parse(text: str, env: dict[str, str]) -> Config:
    return parse_config(yaml.safe_load(text), env)


def demo_roles() -> dict[str, bool]:
    """Role name -> LOGIN, for the roles examples/roles.sql creates."""
    sql = (ROOT / "examples" / "roles.sql").read_text(encoding="utf-8")
    created = re.findall(r"CREATE ROLE (\w+) (NO)?LOGIN", sql)
    assert created, "no CREATE ROLE found in examples/roles.sql"
    return {name: not no for name, no in created}


def check_roles_exist(config: Config) -> None:
    """Every role the config logs in as or switches to is created by the demo SQL."""
    roles = demo_roles()
    assert roles.get(config.upstream.user) is True, f"{config.upstream.user} is not a LOGIN role"
    if config.upstream.service_user is not None:
        assert roles.get(config.upstream.service_user) is True, config.upstream.service_user
    used = set(config.roles.allowed) | {r for s in config.services for r in s.roles}
    assert used <= set(roles), f"not created by examples/roles.sql: {sorted(used - set(roles))}"


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"no service {name!r} in {COMPOSE_FILE.name}"
    return services[name]


def with_defaults(value: str) -> str:
    """A compose value with every ${VAR:-default} replaced by its default (each must have one)."""

    def default(match: re.Match[str]) -> str:
        assert match.group(2), f"${{{match.group(1)}}} has no default: the stack would not start as is"
        return match.group(3)

    return _COMPOSE_VAR.sub(default, value)


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def bind_mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path for each bind mount (host paths relative to deploy/)."""
    mounts: dict[str, Path] = {}
    for volume in svc.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def published(svc: dict[str, Any]) -> dict[int, str]:
    """Container port -> host binding, e.g. {6432: '127.0.0.1:6432'}."""
    out: dict[int, str] = {}
    for port in svc.get("ports", []):
        host, _, container = str(port).rpartition(":")
        out[int(container.split("/")[0])] = host
    return out


def compose_proxy_config() -> Config:
    env = {k: with_defaults(v) for k, v in environment(service("rlsproxy")).items()}
    return parse(COMPOSE_CONFIG.read_text(encoding="utf-8"), env)


def test_compose_config_is_valid_with_the_default_environment_and_binds_all_interfaces() -> None:
    config = compose_proxy_config()
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", CLIENT_PORT)
    assert config.http.enabled
    assert (config.http.host, config.http.port) == ("0.0.0.0", HTTP_PORT)
    check_roles_exist(config)


def test_compose_config_reaches_the_postgres_service() -> None:
    config = compose_proxy_config()
    postgres = service("postgres")
    assert config.upstream.host == "postgres"
    assert config.upstream.port == 5432
    assert config.upstream.database == environment(postgres)["POSTGRES_DB"]


def test_every_variable_in_the_compose_config_is_set_for_the_proxy() -> None:
    needed = config_vars(COMPOSE_CONFIG.read_text(encoding="utf-8"))
    assert needed >= {"RLSPROXY_JWT_SECRET", "RLSPROXY_UPSTREAM_PASSWORD", "RLSPROXY_SERVICE_PASSWORD"}
    missing = needed - set(environment(service("rlsproxy")))
    assert not missing, f"the rlsproxy service does not set {sorted(missing)}"


def test_compose_gives_postgres_and_the_proxy_the_same_login_passwords() -> None:
    proxy, postgres = environment(service("rlsproxy")), environment(service("postgres"))
    for name in ("RLSPROXY_UPSTREAM_PASSWORD", "RLSPROXY_SERVICE_PASSWORD"):
        assert proxy[name] == postgres[name], name
        assert with_defaults(proxy[name]).startswith("dev-"), "defaults must be obviously for dev only"
    assert with_defaults(proxy["RLSPROXY_JWT_SECRET"]).startswith("dev-")


def test_compose_mounts_the_config_where_the_image_looks_for_it() -> None:
    proxy = service("rlsproxy")
    assert bind_mounts(proxy)[CONFIG_PATH] == COMPOSE_CONFIG.resolve()
    assert environment(proxy)["RLSPROXY_CONFIG"] == dockerfile_env()["RLSPROXY_CONFIG"] == CONFIG_PATH
    assert proxy["build"]["context"] == ".."
    assert (
        DEPLOY / proxy["build"]["context"] / proxy["build"].get("dockerfile", "Dockerfile")
    ).resolve() == (DOCKERFILE.resolve())


def test_compose_publishes_both_ports_on_loopback_and_not_postgres() -> None:
    assert published(service("rlsproxy")) == {
        CLIENT_PORT: f"127.0.0.1:{CLIENT_PORT}",
        HTTP_PORT: f"127.0.0.1:{HTTP_PORT}",
    }
    assert not published(service("postgres")), "clients must go through the proxy"


def test_compose_proxy_is_hardened_like_the_kubernetes_sidecar() -> None:
    proxy = service("rlsproxy")
    assert proxy["read_only"] is True
    assert proxy["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in proxy["security_opt"]
    assert str(proxy.get("user", UID)).split(":")[0] not in ("0", "root")


def test_compose_proxy_waits_for_a_healthy_postgres() -> None:
    assert service("rlsproxy")["depends_on"]["postgres"]["condition"] == "service_healthy"
    test = service("postgres")["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "pg_isready"
    # Over TCP: the socket-only server of the init phase must not count as ready.
    assert test[test.index("-h") + 1] == "127.0.0.1"


def test_compose_every_bind_mount_source_exists() -> None:
    for name in ("postgres", "rlsproxy", "prometheus"):
        for target, source in bind_mounts(service(name)).items():
            assert source.is_file(), f"{name}: {source} (mounted at {target}) does not exist"


def test_compose_postgres_volume_is_where_the_image_keeps_its_data() -> None:
    postgres = service("postgres")
    major = int(postgres["image"].split(":")[1].split("-")[0])
    assert major >= 17
    # 18+ images keep PGDATA in /var/lib/postgresql/<major>/docker and refuse a mount at .../data.
    target = "/var/lib/postgresql" if major >= 18 else "/var/lib/postgresql/data"
    named = [v.split(":")[1] for v in postgres["volumes"] if not v.startswith((".", "/"))]
    assert named == [target]


def test_compose_init_script_loads_the_demo_sql_in_order_with_the_passwords() -> None:
    mounts = bind_mounts(service("postgres"))
    initdb = [target for target, source in mounts.items() if source == INITDB.resolve()]
    assert len(initdb) == 1 and initdb[0].startswith("/docker-entrypoint-initdb.d/"), initdb
    # The SQL files must not sit in the init directory too: the entrypoint would run them
    # itself, in name order and without the password variables.
    sql_mounts = {t: s for t, s in mounts.items() if s.suffix == ".sql"}
    assert not [t for t in sql_mounts if t.startswith("/docker-entrypoint-initdb.d/")]

    script = INITDB.read_text(encoding="utf-8")
    loaded = re.findall(r"(/rlsproxy-sql/\S+\.sql)", script)
    assert [sql_mounts[t].relative_to(ROOT).as_posix() for t in loaded] == list(DEMO_SQL_ORDER)
    assert "ON_ERROR_STOP=1" in script

    roles_sql = (ROOT / "examples" / "roles.sql").read_text(encoding="utf-8")
    postgres_env = environment(service("postgres"))
    for variable, env_name in (
        ("authenticator_password", "RLSPROXY_UPSTREAM_PASSWORD"),
        ("service_password", "RLSPROXY_SERVICE_PASSWORD"),
    ):
        assert f":{{?{variable}}}" in roles_sql, f"roles.sql no longer reads :{variable}"
        assert f'-v {variable}="${{{env_name}}}"' in script, variable
        assert env_name in postgres_env, env_name


def test_compose_prometheus_scrapes_the_proxy() -> None:
    prometheus = service("prometheus")
    assert bind_mounts(prometheus)["/etc/prometheus/prometheus.yml"] == PROMETHEUS.resolve()
    scrape = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))["scrape_configs"]
    jobs = [job for job in scrape if job.get("metrics_path", "/metrics") == "/metrics"]
    targets = [t for job in jobs for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"rlsproxy:{HTTP_PORT}"]


# ---------------------------------------------------------------------------------------------
# Kubernetes


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    files = sorted(K8S.glob("*.yaml"))
    assert {f.name for f in files} >= {"configmap.yaml", "secret.yaml", "deployment.yaml", "podmonitor.yaml"}
    for path in files:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is None:
                continue
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path.name}: incomplete object"
            assert doc["metadata"].get("name"), f"{path.name}: unnamed {doc['kind']}"
            docs.append(doc)
    return docs


def one(kind: str) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    deployment = one("Deployment")
    assert deployment["apiVersion"] == "apps/v1"
    return deployment["spec"]["template"]["spec"]


def all_containers() -> list[dict[str, Any]]:
    spec = pod_spec()
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def proxy_container() -> dict[str, Any]:
    found = [c for c in all_containers() if c.get("args") == ["serve"]]
    assert len(found) == 1, "expected one container running `rlsproxy serve`"
    container = found[0]
    if container in pod_spec().get("initContainers", []):
        assert container.get("restartPolicy") == "Always", "an init container that is not a sidecar"
    return container


def app_containers() -> list[dict[str, Any]]:
    proxy = proxy_container()
    apps = [c for c in pod_spec()["containers"] if c["name"] != proxy["name"]]
    assert apps, "no application container next to the proxy"
    return apps


def named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def probe_target(container: dict[str, Any], probe: str) -> tuple[str, int]:
    http = container[probe]["httpGet"]
    port = http["port"]
    return http["path"], named_ports(container)[port] if isinstance(port, str) else port


def secret_data() -> dict[str, str]:
    secret = one("Secret")
    assert "data" not in secret, "keep the placeholders readable: stringData only"
    return dict(secret["stringData"])


def k8s_proxy_env() -> dict[str, str]:
    """The proxy container's environment, Secret references resolved against secret.yaml."""
    secret_name = one("Secret")["metadata"]["name"]
    data = secret_data()
    env: dict[str, str] = {}
    for item in proxy_container().get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret_name, f"{item['name']} refers to Secret {ref['name']!r}"
        assert ref["key"] in data, f"{item['name']}: Secret has no key {ref['key']!r}"
        env[item["name"]] = data[ref["key"]]
    return env


def configmap_text() -> str:
    data = one("ConfigMap")["data"]
    assert CONFIG_PATH.rpartition("/")[2] in data
    return str(data[CONFIG_PATH.rpartition("/")[2]])


def k8s_proxy_config() -> Config:
    return parse(configmap_text(), k8s_proxy_env())


def test_configmap_config_is_valid_with_the_secret_values() -> None:
    config = k8s_proxy_config()
    assert config.http.enabled
    # Probes and Prometheus connect to the pod IP.
    assert (config.http.host, config.http.port) == ("0.0.0.0", HTTP_PORT)
    # The client port stays on loopback: only the app container in the same pod may connect, so
    # tokens (the password, cleartext on loopback without listen.tls) never cross the pod network.
    assert ipaddress.ip_address(config.listen.host).is_loopback
    assert config.listen.port == CLIENT_PORT
    check_roles_exist(config)


def test_every_variable_in_the_configmap_comes_from_the_secret() -> None:
    needed = config_vars(configmap_text())
    assert needed >= {"RLSPROXY_JWT_SECRET", "RLSPROXY_UPSTREAM_PASSWORD", "RLSPROXY_SERVICE_PASSWORD"}
    secret_name = one("Secret")["metadata"]["name"]
    from_secret = {
        e["name"]
        for e in proxy_container()["env"]
        if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret_name
    }
    assert needed <= from_secret, f"not set from the Secret: {sorted(needed - from_secret)}"
    k8s_proxy_env()  # and every reference resolves


def test_secret_holds_only_placeholders() -> None:
    for key, value in secret_data().items():
        assert "REPLACE-ME" in value, f"{key} looks like a real secret"


def test_proxy_container_names_both_ports() -> None:
    config = k8s_proxy_config()
    assert named_ports(proxy_container()) == {"postgres": config.listen.port, "metrics": config.http.port}
    assert {config.listen.port, config.http.port} == {CLIENT_PORT, HTTP_PORT}


def test_proxy_probes_use_the_http_endpoints() -> None:
    container = proxy_container()
    assert probe_target(container, "readinessProbe") == ("/readyz", HTTP_PORT)
    assert probe_target(container, "livenessProbe") == ("/healthz", HTTP_PORT)
    if "startupProbe" in container:
        assert probe_target(container, "startupProbe") == ("/healthz", HTTP_PORT)


def test_containers_run_as_non_root_with_a_read_only_root_filesystem() -> None:
    assert pod_spec()["securityContext"]["runAsNonRoot"] is True
    for container in all_containers():
        ctx = container["securityContext"]
        name = container["name"]
        assert ctx["runAsNonRoot"] is True, name
        assert isinstance(ctx["runAsUser"], int) and ctx["runAsUser"] > 0, name
        assert ctx["readOnlyRootFilesystem"] is True, name
        assert ctx["allowPrivilegeEscalation"] is False, name
        assert ctx["capabilities"]["drop"] == ["ALL"], name
        assert "add" not in ctx["capabilities"], name
    proxy_ctx = proxy_container()["securityContext"]
    assert proxy_ctx["runAsUser"] == int(dockerfile_user().split(":")[0]) == UID
    assert proxy_ctx.get("runAsGroup", UID) == UID


def test_proxy_has_resource_requests_and_limits() -> None:
    resources = proxy_container()["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) >= {"memory"}


def test_proxy_config_is_mounted_where_the_image_looks_for_it() -> None:
    container = proxy_container()
    env = k8s_proxy_env()
    assert env.get("RLSPROXY_CONFIG", dockerfile_env()["RLSPROXY_CONFIG"]) == CONFIG_PATH
    mounts = [
        m
        for m in container["volumeMounts"]
        if m["mountPath"] in (CONFIG_PATH, CONFIG_PATH.rpartition("/")[0])
    ]
    assert len(mounts) == 1, container["volumeMounts"]
    mount = mounts[0]
    assert mount.get("readOnly") is True
    file_name = mount.get("subPath") or CONFIG_PATH.rpartition("/")[2]
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == mount["name"])
    configmap = one("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
    key = items.get(file_name, file_name)
    assert key in configmap["data"], f"the ConfigMap has no key {key!r}"


def test_app_connects_to_the_sidecar_on_loopback() -> None:
    config = k8s_proxy_config()
    for app in app_containers():
        env = {e["name"]: e.get("value") for e in app.get("env", [])}
        url = urlsplit(env["DATABASE_URL"])
        assert url.scheme in ("postgres", "postgresql")
        assert url.hostname is not None and ipaddress.ip_address(url.hostname).is_loopback
        assert url.port == config.listen.port == CLIENT_PORT
        assert url.path == f"/{config.upstream.database}"
        assert url.password is None, "the password is each end user's JWT, not a fixed value"


def test_deployment_selector_matches_its_pods() -> None:
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()


def test_podmonitor_scrapes_the_named_metrics_port() -> None:
    monitor = one("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    pod_labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert len(endpoints) == 1
    ports = named_ports(proxy_container())
    assert endpoints[0]["port"] in ports
    assert ports[endpoints[0]["port"]] == HTTP_PORT
    assert endpoints[0].get("path", "/metrics") == "/metrics"
