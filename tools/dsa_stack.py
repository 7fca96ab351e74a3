#!/usr/bin/env python3
"""A real DSA server stack on this machine for the job-path tests: Girder 3 on secantusdb, Redis,
girder_worker running slicer_cli_web jobs in our private Docker engine (``tools/docker_env.sh``).

    python tools/dsa_stack.py up       make the server venv if needed, start what is not running,
                                       provision an admin user, an assetstore and the worker
                                       settings; print the state (API URL, ports; no secrets) as JSON
    python tools/dsa_stack.py status   print the state; exit 1 when a service does not answer
    python tools/dsa_stack.py down     stop the services (the venv, the database and logs stay)
    python tools/dsa_stack.py restart-girder
                                       stop Girder alone and start it again on the same database
    python tools/dsa_stack.py kill-girder
                                       kill Girder alone (SIGKILL, a crash); `up` starts it again
    python tools/dsa_stack.py stop-worker
                                       stop girder_worker alone; jobs wait in Redis until `up`
                                       starts it again
    python tools/dsa_stack.py second-girder | stop-second-girder
                                       a second Girder process on the same database (prints its API
                                       URL as JSON); `down` stops it too
    python tools/dsa_stack.py web      build Girder's web client with HistomicsUI and our plugin's
                                       client (node 20 + npm; about 3 min, again only when the venv
                                       or the plugin's client changes) so that a browser can show
                                       slides and annotations at http://127.0.0.1:PORT/histomics;
                                       prints "built" (restart the stack: down, up) or "up to date".

The server side lives in its own venv, as in production the Girder container and the CLI image are
separate environments: it holds our Girder plugin (``plugin/``, editable, so Girder loads it at
start) and lnassist's torch-free contract modules (the package installed editable with ``--no-deps``:
no torch, no models). Everything is under
``$LNASSIST_DSA_DIR`` (default ``/var/tmp/lnassist-dsa``): ``venv/``, ``assetstore/``, ``logs/``,
``database/`` (secantusdb's storage: on disk, as in a deployment, so stopping and starting the stack
or restarting Girder alone loses nothing), ``state.json`` and ``admin.json`` (the admin login, mode
0600; never printed). Girder imports the plugin once, at start: ``up`` restarts a running Girder
whose plugin or lnassist code changed since. Needs root the first time (apt-get for
redis-server, dockerd). Uses only the standard library, so any Python 3.11 runs it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "plugin"
STATE_DIR = Path(os.environ.get("LNASSIST_DSA_DIR", "/var/tmp/lnassist-dsa"))
VENV = STATE_DIR / "venv"
LOGS = STATE_DIR / "logs"
STATE_FILE = STATE_DIR / "state.json"
# The database lives on disk, as in a deployment: stopping the stack or restarting Girder loses nothing.
DATABASE_DIR = STATE_DIR / "database"
ADMIN_FILE = STATE_DIR / "admin.json"
DOCKER_ENV = REPO / "tools" / "docker_env.sh"

# The versions DSA deployments run (../shared/reference/dsa-notes.md): girder-worker 0.10.7 is the
# last release for Girder 3, slicer_cli_web 1.5.x and histomicsui 1.8.x go with large_image 1.35.
SERVER_PINS = (
    "girder==3.2.18",
    "girder-jobs==3.2.18",
    "girder-client==3.2.18",
    "girder-worker[girder]==0.10.7",
    "docker",
    "girder-slicer-cli-web[girder,worker]==1.5.14",
    "girder-large-image==1.35.6",
    "girder-large-image-annotation==1.35.6",
    "large-image-source-tiff==1.35.6",
    "histomicsui==1.8.1",
    "secantusdb==0.7.0b3",
    "redis",
    "croniter==6.0.0",
)
SERVICES = ("database", "redis", "girder", "worker")
START_TIMEOUT_S = 120


def log(message: str) -> None:
    print(f"dsa_stack: {message}", file=sys.stderr, flush=True)


class StackError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------ set-up


def venv_stamp() -> str:
    """What the server venv was provisioned from: the pins, the checkout its editable installs point
    at and the plugin's pyproject.toml (dependencies, entry point), so that a change to any of them
    re-provisions an existing venv."""
    plugin = hashlib.sha256((PLUGIN / "pyproject.toml").read_bytes()).hexdigest()
    return "\n".join([*SERVER_PINS, f"editable from {REPO}", f"plugin/pyproject.toml sha256:{plugin}"])


def ensure_venv() -> bool:
    """Provision the server venv unless its stamp is current; True when it did."""
    stamp = VENV / ".pins"
    wanted = venv_stamp()
    if stamp.exists() and stamp.read_text() == wanted:
        return False
    log(f"installing the Girder server stack into {VENV} (about a minute)")
    python = shutil.which("python3.11") or sys.executable
    if not (VENV / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    # lnassist goes in without its dependencies (torch among them): the server only imports its
    # standard-library-only modules. Both are editable, so the venv follows the working tree.
    steps = (["--upgrade", "pip"], list(SERVER_PINS), ["--no-deps", "-e", str(REPO)], ["-e", str(PLUGIN)])
    with open(LOGS / "pip.log", "w") as out:
        for args in steps:
            if subprocess.run(pip + args, stdout=out, stderr=subprocess.STDOUT).returncode:
                raise StackError(f"pip install of the server stack failed (log: {LOGS / 'pip.log'})")
    stamp.write_text(wanted)
    return True


def apt_install(command: str, *packages: str) -> str:
    """The path of ``command``, installing Debian ``packages`` first when it is missing."""
    found = shutil.which(command)
    if found:
        return found
    names = " ".join(packages)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(f"{command} is not installed (apt-get install {names}, as root)")
    log(f"installing {names} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    with open(LOGS / "apt.log", "w") as out:
        if subprocess.run(install, stdout=out, stderr=subprocess.STDOUT, env=env).returncode:
            subprocess.run(["apt-get", "update", "-q"], stdout=out, stderr=subprocess.STDOUT, env=env)
            if subprocess.run(install, stdout=out, stderr=subprocess.STDOUT, env=env).returncode:
                raise StackError(f"apt-get install {names} failed (log: {LOGS / 'apt.log'})")
    return shutil.which(command) or f"/usr/bin/{command}"


def docker_host() -> str:
    """Our dockerd up (tools/docker_env.sh), and busybox:latest present: girder_worker runs it after
    each job to make the job's volumes writable, and no registry is reachable to pull it."""
    for args in (["up"], ["env"]):
        result = subprocess.run(["bash", str(DOCKER_ENV), *args], capture_output=True, text=True)
        if result.returncode:
            raise StackError(f"tools/docker_env.sh {args[0]} failed:\n{result.stderr[-2000:]}")
    host = result.stdout.strip().removeprefix("export DOCKER_HOST=")
    docker = ["bash", str(DOCKER_ENV), "docker"]
    if subprocess.run([*docker, "image", "inspect", "busybox:latest"], capture_output=True).returncode:
        base = os.environ.get("LNASSIST_BASE_IMAGE", "lnassist-test-base:bookworm")
        subprocess.run([*docker, "tag", base, "busybox:latest"], check=True, capture_output=True)
    return host


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------- processes


def read_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


def write_state(state: dict) -> None:
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(STATE_FILE)


def started_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(state: dict, name: str) -> bool:
    """Whether the service we started is still running: same pid and same start time, so a pid the
    system has since given to another process (after a reboot, say) is never taken for ours."""
    pid = state.get(f"{name}_pid")
    return bool(pid) and started_ticks(pid) == state.get(f"{name}_started")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(name: str, command: list[str], env: dict[str, str], state: dict) -> None:
    """Start a service in its own session (``down`` stops its whole process group); pid and start
    time go into ``state``."""
    out = open(LOGS / f"{name}.log", "ab")
    process = subprocess.Popen(
        command,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=STATE_DIR,
        start_new_session=True,
    )
    state[f"{name}_pid"], state[f"{name}_started"] = process.pid, started_ticks(process.pid)


def wait_for(what: str, check, state: dict, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if not alive(state, what):
            raise StackError(f"{what} exited during start-up (log: {LOGS / (what + '.log')})")
        time.sleep(0.5)
    raise StackError(f"{what} did not come up within {timeout_s:.0f} s (log: {LOGS / (what + '.log')})")


def worker_ready(since: int) -> bool:
    try:
        with open(LOGS / "worker.log", "rb") as f:
            f.seek(since)
            return b"ready." in f.read()
    except OSError:
        return False


def service_env(state: dict) -> dict[str, str]:
    redis = f"redis://127.0.0.1:{state['redis_port']}"
    return {
        **os.environ,
        "DOCKER_HOST": state["docker_host"],
        "GIRDER_WORKER_BROKER": f"{redis}/0",
        "GIRDER_WORKER_BACKEND": f"{redis}/1",
        # CLIs reach back to Girder on 127.0.0.1; our dockerd has no bridge network anyway.
        "GIRDER_WORKER_DOCKER_RUN_OPTIONS": json.dumps({"network_mode": "host"}),
        "C_FORCE_ROOT": "1",
        "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '')}",
    }


def up() -> dict:
    for folder in (STATE_DIR, LOGS, STATE_DIR / "assetstore"):
        folder.mkdir(parents=True, exist_ok=True)
    if ensure_venv():
        down(quiet=True)  # services started from the old venv would not load what changed in it
    redis_server = apt_install("redis-server", "redis-server")
    state = read_state()
    state["docker_host"] = docker_host()
    # A stack whose database went away is restarted whole: Girder and the worker hold state in it.
    if not (alive(state, "database") and port_open(state.get("database_port", 0))):
        down(quiet=True)
        state = {"docker_host": state["docker_host"]}
    for key in ("database_port", "redis_port", "girder_port"):
        state.setdefault(key, free_port())
    env = service_env(state)
    bin_dir = VENV / "bin"

    if not alive(state, "database"):
        command = [
            str(bin_dir / "secantusd-py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(state["database_port"]),
            "--storage-path",
            str(DATABASE_DIR),
        ]
        start("database", command, env, state)
        wait_for("database", lambda: port_open(state["database_port"]), state)
    if not alive(state, "redis"):
        command = [
            redis_server,
            "--port",
            str(state["redis_port"]),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        start("redis", command, env, state)
        wait_for("redis", lambda: port_open(state["redis_port"]), state)
    state["api_url"] = f"http://127.0.0.1:{state['girder_port']}/api/v1"
    if alive(state, "girder") and state.get("girder_code") != code_stamp():
        stop("girder", state)  # Girder imports the plugin once, at start: a running one serves old code
    if not alive(state, "girder"):
        state["girder_code"] = code_stamp()
        start("girder", girder_command(state, state["girder_port"]), env, state)
        wait_for("girder", lambda: api_answers(state["api_url"]), state)
    write_state(state)
    provision(state)
    if not alive(state, "worker"):
        since = (LOGS / "worker.log").stat().st_size if (LOGS / "worker.log").exists() else 0
        command = [str(bin_dir / "girder-worker"), "-l", "info", "--concurrency=1"]
        start("worker", command, env, state)
        wait_for("worker", lambda: worker_ready(since), state)
    write_state(state)
    return public_state(state)


def stop(name: str, state: dict, quiet: bool = False) -> None:
    """Stop one service of ours (TERM, then KILL after 10 s); nothing if it is not running."""
    if not alive(state, name):
        return
    pid = state[f"{name}_pid"]
    if not quiet:
        log(f"stopping {name} (pid {pid})")
    os.killpg(pid, signal.SIGTERM)
    for _ in range(40):
        if not alive(state, name):
            return
        time.sleep(0.25)
    os.killpg(pid, signal.SIGKILL)


def girder_command(state: dict, port: int) -> list[str]:
    database = f"mongodb://127.0.0.1:{state['database_port']}/girder"
    return [
        str(VENV / "bin" / "girder"),
        "serve",
        "--database",
        database,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def second_girder() -> dict:
    """A second Girder process on the same database (as behind a load balancer), for the tests of
    what must happen once however many processes serve: the plugin's batches and schedules."""
    state = read_state()
    if not alive(state, "database"):
        raise StackError("the stack is not up (tools/dsa_stack.py up)")
    state.setdefault("girder2_port", free_port())
    api_url = f"http://127.0.0.1:{state['girder2_port']}/api/v1"
    if not alive(state, "girder2"):
        start("girder2", girder_command(state, state["girder2_port"]), service_env(state), state)
        wait_for("girder2", lambda: api_answers(api_url), state)
    write_state(state)
    return {"api_url": api_url}


def down(quiet: bool = False) -> None:
    state = read_state()
    stop("girder2", state, quiet)
    for name in reversed(SERVICES):
        stop(name, state, quiet)
    STATE_FILE.unlink(missing_ok=True)


def code_stamp() -> str:
    """sha256 of the Python code Girder loads from this checkout (the plugin and lnassist's modules,
    both editable installs), recorded when Girder starts."""
    digest = hashlib.sha256()
    for path in sorted([*(PLUGIN / "girder_lnassist").rglob("*.py"), *(REPO / "lnassist").glob("*.py")]):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def public_state(state: dict) -> dict:
    return {
        "api_url": state.get("api_url"),
        "admin_file": str(ADMIN_FILE),
        "docker_host": state.get("docker_host"),
        "logs": str(LOGS),
        "services": {name: alive(state, name) for name in SERVICES},
    }


# ------------------------------------------------------------------------------- REST set-up


def request(
    api_url: str,
    method: str,
    path: str,
    params: dict | None = None,
    token: str | None = None,
    auth: tuple[str, str] | None = None,
) -> dict | list:
    url = f"{api_url}/{path}"
    data = None
    if params:
        encoded = urllib.parse.urlencode(params)
        if method == "GET":
            url = f"{url}?{encoded}"
        else:
            data = encoded.encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Girder-Token", token)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        body = error.read()[:500].decode(errors="replace")
        raise StackError(f"{method} {path} -> HTTP {error.code}: {body}") from None


def api_answers(api_url: str) -> bool:
    try:
        request(api_url, "GET", "system/version")
    except (OSError, StackError):
        return False
    return True


def provision(state: dict) -> None:
    """Admin user (the first user is admin), a filesystem assetstore and the worker settings."""
    api = state["api_url"]
    if ADMIN_FILE.exists():
        admin = json.loads(ADMIN_FILE.read_text())
    else:
        admin = {"login": "admin", "password": secrets.token_urlsafe(18)}
        ADMIN_FILE.touch(mode=0o600)
        ADMIN_FILE.write_text(json.dumps(admin))
    credentials = (admin["login"], admin["password"])
    try:
        token = request(api, "GET", "user/authentication", auth=credentials)["authToken"]["token"]
    except StackError:  # a new database: no users yet, and the first one is admin
        user = {
            "login": admin["login"],
            "password": admin["password"],
            "email": "admin@lnassist.invalid",
            "firstName": "DSA",
            "lastName": "Admin",
        }
        request(api, "POST", "user", user)
        token = request(api, "GET", "user/authentication", auth=credentials)["authToken"]["token"]
    if not request(api, "GET", "assetstore", token=token):
        request(
            api,
            "POST",
            "assetstore",
            {"name": "local", "type": 0, "root": str(STATE_DIR / "assetstore")},
            token=token,
        )
    redis = f"redis://127.0.0.1:{state['redis_port']}"
    settings = [
        {"key": "slicer_cli_web.task_folder", "value": task_folder(api, token)},
        {"key": "worker.broker", "value": f"{redis}/0"},
        {"key": "worker.backend", "value": f"{redis}/1"},
        {"key": "worker.api_url", "value": state["api_url"]},
    ]
    request(api, "PUT", "system/setting", {"list": json.dumps(settings)}, token=token)


def task_folder(api: str, token: str) -> str:
    """The folder slicer_cli_web keeps registered CLIs in (a "Tasks" collection, as DSA sets it up)."""
    collections = request(api, "GET", "collection", {"limit": 0}, token=token)
    collections = [c for c in collections if c["name"] == "Tasks"]
    if collections:
        collection = collections[0]
    else:
        collection = request(api, "POST", "collection", {"name": "Tasks", "public": "true"}, token=token)
    params = {"parentType": "collection", "parentId": collection["_id"], "name": "Slicer CLI Web Tasks"}
    folders = request(api, "GET", "folder", params, token=token)
    if not folders:
        folders = [request(api, "POST", "folder", {**params, "public": "true"}, token=token)]
    return folders[0]["_id"]


def build_web_client() -> bool:
    """``girder build`` with the two fixes Girder 3.2.18's build files need for large_image's and
    HistomicsUI's clients (../shared/reference/dsa-notes.md): babel must also compile
    ``@girder/core`` (else "Cannot set property restRequest"), and one Backbone for all (else
    HistomicsUI's router never starts). Built again only when the server venv or our plugin's
    client changes (stamp ``.web-built``); also installs Chromium (apt), which the browser tests
    drive with Playwright (tests/test_histomicsui.py)."""
    ensure_venv()
    apt_install("chromium", "chromium", "fonts-liberation")
    # Install scripts stay off: geojs pulls canvas, whose script downloads a binary nobody needs here.
    npm_env = {**os.environ, "npm_config_ignore_scripts": "true"}
    stamp = VENV / ".web-built"
    wanted = web_stamp()
    if stamp.exists() and stamp.read_text() == wanted:
        return False
    web = next((VENV / "lib").glob("python3*/site-packages/girder/web_client"))
    config = web / "grunt_tasks" / "webpack.config.js"
    text = config.read_text()
    if "exclude: /node_modules/\n" in text:
        config.write_text(
            text.replace("exclude: /node_modules/\n", "exclude: /node_modules\\/(?!@girder\\/core\\/)/\n")
        )
    template = web / "package.json.template"
    text = template.read_text()
    if '"overrides"' not in text:
        template.write_text(text.replace("{\n", '{\n    "overrides": {"backbone": "^1.4.0"},\n', 1))
    log(f"girder build (log: {LOGS / 'web-build.log'})")
    with open(LOGS / "web-build.log", "w") as out:
        build = [str(VENV / "bin" / "girder"), "build"]
        env = {**npm_env, "NODE_OPTIONS": "--openssl-legacy-provider"}
        if subprocess.run(build, stdout=out, stderr=subprocess.STDOUT, env=env).returncode:
            raise StackError(f"girder build failed (log: {LOGS / 'web-build.log'})")
    stamp.write_text(wanted)
    return True


def web_stamp() -> str:
    """What the web client is built from: the server venv and our plugin's client sources (editable,
    so an edit there changes the client without changing the venv)."""
    digest = hashlib.sha256()
    client = PLUGIN / "girder_lnassist" / "web_client"
    for path in sorted(client.rglob("*")):
        if path.is_file() and "node_modules" not in path.parts:
            digest.update(str(path.relative_to(client)).encode() + b"\0" + path.read_bytes())
    return f"{venv_stamp()}\nplugin web_client sha256:{digest.hexdigest()}"


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    try:
        if command == "up":
            print(json.dumps(up(), indent=2))
        elif command == "status":
            state = public_state(read_state())
            print(json.dumps(state, indent=2))
            return 0 if all(state["services"].values()) and api_answers(state["api_url"] or "") else 1
        elif command == "down":
            down()
        elif command == "restart-girder":
            # What an admin does to a running deployment (an upgrade, a crash): Girder alone goes down
            # and comes back on the same database; the worker and its running containers go on.
            stop("girder", read_state())
            print(json.dumps(up(), indent=2))
        elif command == "stop-worker":
            stop("worker", read_state())
        elif command == "second-girder":
            print(json.dumps(second_girder(), indent=2))
        elif command == "stop-second-girder":
            stop("girder2", read_state())
        elif command == "kill-girder":
            # A crash: Girder killed without warning (SIGKILL), nothing else; `up` starts it again on
            # the same database.
            state = read_state()
            if alive(state, "girder"):
                os.killpg(state["girder_pid"], signal.SIGKILL)
                while alive(state, "girder"):
                    time.sleep(0.1)
        elif command == "web":
            LOGS.mkdir(parents=True, exist_ok=True)
            # A running Girder serves the new client only after a restart (down, up).
            print("built" if build_web_client() else "up to date")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (StackError, subprocess.CalledProcessError, OSError) as error:
        log(f"ERROR: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
