"""Runs docker-compose.yml's configuration without Docker (used by compose-config.sh).

Every service of the compose file gets a stand-in on this machine, configured from
the file itself:

- postgres: a private PostgreSQL cluster (initdb) with the service's POSTGRES_USER,
  POSTGRES_PASSWORD and POSTGRES_DB, password authentication over TCP as in the image;
- redis: redis-server with the service's `command`;
- kafka: a Tansu broker (no Apache Kafka here) at the address the service advertises;
- api, relay, consumers: the binaries of the service's `command` with exactly the
  service's `environment` (interpolated as `docker compose` does with no variable set,
  so every `${NAME:-default}` takes its default) and nothing else but PATH;
- prometheus: Debian's prometheus with the service's `command` and volumes, and
  ops/prometheus.yml's scrape jobs.

Each container has its own network namespace; here all share 127.0.0.1, so every
address is mapped: `<service>:<port>` to the local port standing for that service's
port, and `0.0.0.0`, `127.0.0.1` and `localhost` to the local port standing for the
service's own port. A port no service listens on maps to a closed port, so a wrong
host or port in the file fails here as it would in Docker.

The checks: the infrastructure's and the three services' healthchecks (the compose
commands, mapped) turn healthy within start_period + retries x interval; each /readyz
answers ready; one rsvp written through the api's published port reaches both
consumer groups; Prometheus scrapes every target of every job; bind addresses other
containers or the host reach listen on every interface; and each service, run as
PID 1 of its own PID namespace as in a container, stops within the 10 s that
`docker compose stop` grants before SIGKILL.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
LOCAL_HOSTS = {"0.0.0.0", "127.0.0.1", "localhost", "[::]", "::"}
DEFAULT_PORTS = {"postgres": 5432, "postgresql": 5432, "redis": 6379, "http": 80, "https": 443}
STOP_GRACE_SECONDS = 10  # docker compose stop's default before SIGKILL


class Failed(Exception):
    """A check failed; the message says which and why."""


def log(message):
    print(f"compose-config: {message}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the compose file ---------------------------------------------------------------

INTERPOLATION = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, variables):
    """Compose's interpolation: $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME-default},
    ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, ${NAME+alt}."""

    def substitute(match):
        if match.group("escaped"):
            return "$"
        if match.group("named"):
            return variables.get(match.group("named"), "")
        body = match.group("braced")
        parts = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$", body, re.DOTALL)
        if not parts:
            raise Failed(f"invalid interpolation ${{{body}}}")
        name, op, arg = parts.groups()
        value = variables.get(name)
        empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return interpolate(arg, variables) if empty else value
        if op in (":?", "?"):
            if empty:
                raise Failed(f"required variable {name} is not set: {arg}")
            return value
        if op in (":+", "+"):
            return "" if empty else interpolate(arg, variables)
        return value or ""

    if not isinstance(value, str):
        return value
    return INTERPOLATION.sub(substitute, value)


def environment(spec):
    env = spec.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    out = {}
    for name, value in env.items():
        if value is None:
            continue  # `- NAME` passes the host's variable: none set here
        value = interpolate(value, {})
        out[name] = "true" if value is True else "false" if value is False else str(value)
    return out


def command(spec):
    cmd = spec.get("command")
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    return [interpolate(str(c), {}) for c in cmd or []]


def healthcheck(spec):
    """(kind, argv or shell string, interval, timeout, start_period, retries) or None."""
    check = spec.get("healthcheck")
    if not check or check.get("disable"):
        return None
    test = check["test"]
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    kind, *rest = test
    if kind == "NONE":
        return None
    payload = rest if kind == "CMD" else " ".join(rest)
    return {
        "kind": kind,
        "test": payload,
        "interval": duration(check.get("interval", "30s")),
        "timeout": duration(check.get("timeout", "30s")),
        "start_period": duration(check.get("start_period", "0s")),
        "retries": int(check.get("retries", 3)),
    }


def duration(text):
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text)):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}[unit]
    return total


def published(spec):
    """[(host ip, host port, container port)] of `ports:`."""
    out = []
    for entry in spec.get("ports") or []:
        if isinstance(entry, dict):
            out.append((entry.get("host_ip", "0.0.0.0"), str(entry.get("published")), int(entry["target"])))
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) == 3:
            out.append((parts[0], parts[1], int(parts[2])))
        elif len(parts) == 2:
            out.append(("0.0.0.0", parts[0], int(parts[1])))
        else:
            out.append(("0.0.0.0", None, int(parts[0])))
    return out


# --- addresses ----------------------------------------------------------------------


class Network:
    """The local port standing for each (service, container port)."""

    def __init__(self, services):
        self.services = set(services)
        self.ports = {}  # (service, port) -> local port
        self.closed = {}  # (service, port) -> a port nothing listens on

    def listen(self, service, port, local=None):
        self.ports[(service, int(port))] = local or free_port()
        return self.ports[(service, int(port))]

    def local(self, service, port):
        key = (service, int(port))
        if key in self.ports:
            return self.ports[key]
        if key not in self.closed:
            self.closed[key] = free_port()  # never listened on: connection refused
        return self.closed[key]

    def target(self, here, host):
        """The service an address's host names, seen from service `here`."""
        if host in LOCAL_HOSTS:
            return here
        if host in self.services:
            return host
        return None

    def map(self, here, text):
        """`text` (a URL, a host:port list, a command line) as seen from `here`, with
        every address of a compose service replaced by its local stand-in."""

        def url_without_port(m):
            service = self.target(here, m.group("host"))
            if service is None or m.group("scheme") not in DEFAULT_PORTS:
                return m.group(0)
            return f"{m.group('prefix')}{m.group('host')}:{DEFAULT_PORTS[m.group('scheme')]}"

        text = re.sub(r"(?P<prefix>(?P<scheme>[a-z][a-z0-9+.-]*)://(?:[^@/\s]*@)?)(?P<host>[A-Za-z0-9_.-]+)(?=[/\s?#]|$)",
                      url_without_port, text)

        def host_port(m):
            service = self.target(here, m.group("host"))
            if service is None:
                return m.group(0)
            return f"127.0.0.1:{self.local(service, m.group('port'))}"

        return re.sub(r"(?<![\w.-])(?P<host>\[[0-9a-fA-F:]*\]|[A-Za-z0-9_.-]+):(?P<port>\d+)(?!\d)", host_port, text)


# --- processes ----------------------------------------------------------------------


class Processes:
    def __init__(self, logs):
        self.logs = logs
        self.running = {}  # name -> (Popen, log path)
        self.stop_signals = {}

    def start(self, name, argv, env=None, pid_namespace=False, cwd=None, stop_signal=signal.SIGTERM):
        path = self.logs / f"compose-config-{name}.log"
        out = open(path, "wb")
        if pid_namespace:
            # PID 1 of its own PID namespace, as in a container: a signal from outside
            # reaches it only if it installed a handler for it
            argv = ["unshare", "--pid", "--fork", "--kill-child", *argv]
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        self.running[name] = (proc, path)
        self.stop_signals[name] = stop_signal
        return proc

    def alive(self, name):
        proc, path = self.running[name]
        if proc.poll() is not None:
            tail = path.read_text(errors="replace").splitlines()[-15:]
            raise Failed(f"{name} exited with status {proc.returncode}; last lines of {path}:\n  " + "\n  ".join(tail))

    def namespace_init(self, name):
        """The pid of the process unshare forked (PID 1 inside its namespace)."""
        proc, _ = self.running[name]
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        return int(children[0]) if children else None

    def stop_all(self):
        for name, (proc, _) in reversed(list(self.running.items())):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, self.stop_signals[name])
                except ProcessLookupError:
                    pass
        deadline = time.time() + 10
        for name, (proc, _) in self.running.items():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_until(seconds, what, probe, alive=lambda: None, every=1.0):
    deadline = time.time() + seconds
    last = None
    while True:
        alive()
        try:
            result = probe()
            if result:
                return result
        except Exception as error:  # noqa: BLE001 - the probe's failure is the detail
            last = error
        if time.time() > deadline:
            raise Failed(f"{what}: not within {seconds:.0f} s" + (f" (last error: {last})" if last else ""))
        time.sleep(every)


def http(url, method="GET", body=None, headers=None, timeout=5):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


# --- the stand-ins ------------------------------------------------------------------


def image_kind(spec):
    image = spec.get("image", "")
    name = image.split("/")[-1].split(":")[0]
    if "build" in spec:
        return "built"
    return name


class Stack:
    def __init__(self, args):
        self.args = args
        self.compose_path = Path(args.compose).resolve()
        self.compose = yaml.safe_load(self.compose_path.read_text())
        self.services = self.compose["services"]
        self.kinds = {name: image_kind(spec) for name, spec in self.services.items()}
        self.network = Network(self.services)
        self.scratch = Path(tempfile.mkdtemp(prefix="compose-config-"))
        self.scratch.chmod(0o755)
        self.logs = ROOT / ".run"
        self.logs.mkdir(exist_ok=True)
        self.procs = Processes(self.logs)
        self.pg_data = None
        self.healthy = set()

    def one(self, kind):
        names = [n for n, k in self.kinds.items() if k == kind]
        if len(names) != 1:
            raise Failed(f"expected one {kind} service, found {names}")
        return names[0]

    def built(self):
        return [n for n, k in self.kinds.items() if k == "built"]

    # -- ports

    def allocate(self):
        postgres, redis, kafka = self.one("postgres"), self.one("redis"), self.one("kafka")
        self.network.listen(postgres, 5432)
        self.network.listen(redis, self.redis_port())
        self.network.listen(kafka, self.kafka_port(), self.args.broker_port)
        self.network.listen(self.one("prometheus"), 9090)
        for name in self.built():
            for key, value in environment(self.services[name]).items():
                m = re.fullmatch(r"(\[[0-9a-fA-F:]*\]|[\w.-]+):(\d+)", value)
                if key.endswith("_ADDR") and m and m.group(1) in LOCAL_HOSTS:
                    self.network.listen(name, m.group(2))
        for (service, port), local in sorted(self.network.ports.items()):
            log(f"{service}:{port} -> 127.0.0.1:{local}")

    def redis_port(self):
        argv = command(self.services[self.one("redis")])
        return int(argv[argv.index("--port") + 1]) if "--port" in argv else 6379

    def kafka_port(self):
        """The port of the listener kafka advertises to clients, as the broker binds it."""
        env = environment(self.services[self.one("kafka")])
        advertised = dict(re.findall(r"(\w+)://([^,]*)", env.get("KAFKA_ADVERTISED_LISTENERS", "")))
        listeners = dict(re.findall(r"(\w+)://([^,]*)", env.get("KAFKA_LISTENERS", "")))
        if len(advertised) != 1:
            raise Failed(f"kafka: expected one advertised listener, got {advertised}")
        (listener, address), = advertised.items()
        host, _, port = address.rpartition(":")
        bound = listeners.get(listener, "")
        if host != self.one("kafka") or not bound.endswith(f":{port}"):
            raise Failed(f"kafka: advertises {listener}://{address}, which is not this service's listener {bound!r}")
        return int(port)

    # -- infrastructure

    def start_postgres(self):
        name = self.one("postgres")
        env = environment(self.services[name])
        user = env.get("POSTGRES_USER", "postgres")
        password = env["POSTGRES_PASSWORD"]
        database = env.get("POSTGRES_DB", user)
        bindir = Path(self.args.pg_bindir)
        self.pg_data = self.scratch / "postgres"
        self.pg_data.mkdir()
        pwfile = self.scratch / "pgpass"
        pwfile.write_text(password + "\n")
        shutil.chown(self.pg_data, "postgres")
        shutil.chown(pwfile, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
        # the image's entrypoint: POSTGRES_USER is the superuser, local trust, TCP by password
        subprocess.run(as_postgres + [str(bindir / "initdb"), "-D", str(self.pg_data / "data"), "-U", user,
                                      f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                                      "-E", "UTF8"], check=True, stdout=subprocess.DEVNULL)
        port = self.network.local(name, 5432)
        self.procs.start(name, as_postgres + [str(bindir / "postgres"), "-D", str(self.pg_data / "data"),
                                              "-p", str(port), "-k", str(self.pg_data),
                                              "-c", "listen_addresses=127.0.0.1"], stop_signal=signal.SIGINT)
        wait_until(30, "postgres accepting connections", lambda: subprocess.run(
            ["pg_isready", "-q", "-h", str(self.pg_data), "-p", str(port)]).returncode == 0, lambda: self.procs.alive(name))
        if database != "postgres":
            subprocess.run(["psql", "-h", str(self.pg_data), "-p", str(port), "-U", user, "-d", "postgres", "-qc",
                            f'create database "{database}"'], check=True)
        log(f"{name}: PostgreSQL {user}@127.0.0.1:{port}/{database}, password authentication")

    def start_redis(self):
        name = self.one("redis")
        argv = command(self.services[name]) or ["redis-server"]
        port = self.network.local(name, self.redis_port())
        self.procs.start(name, argv + ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.scratch)])
        log(f"{name}: {shlex.join(argv)} on 127.0.0.1:{port}")

    # -- healthchecks

    def run_healthcheck(self, name, check):
        """One run of the service's healthcheck, mapped to its stand-in; True if it passed."""
        env = {"PATH": os.environ["PATH"]}
        kind = self.kinds[name]
        if check["kind"] == "CMD":
            argv = [self.network.map(name, arg) for arg in check["test"]]
            if kind == "redis" and argv[0] == "redis-cli" and not {"-h", "-p", "-u"} & set(argv):
                argv[1:1] = ["-p", str(self.network.local(name, self.redis_port()))]
        else:
            argv = ["sh", "-c", self.network.map(name, check["test"])]
        if kind == "postgres":
            # libpq's default in the container: the local socket of port 5432
            env.update(PGHOST=str(self.pg_data), PGPORT=str(self.network.local(name, 5432)))
        try:
            return subprocess.run(argv, env=env, timeout=check["timeout"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_healthy(self, name):
        check = healthcheck(self.services[name])
        if check is None:
            raise Failed(f"{name}: no healthcheck, so `depends_on: condition: service_healthy` would never hold")
        if self.kinds[name] == "kafka":
            # the test runs Kafka's own tools (kafka-broker-api-versions.sh), which only the
            # Kafka image has: here the broker stands in; its port must answer
            port = self.network.local(name, self.kafka_port())
            wait_until(60, f"{name} (Tansu) listening", lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True)
            log(f"{name}: healthcheck NOT run (needs Apache Kafka's tools): {check['test']}")
            self.healthy.add(name)
            return
        budget = check["start_period"] + check["retries"] * check["interval"]
        started = time.time()
        alive = (lambda: self.procs.alive(name)) if name in self.procs.running else (lambda: None)
        wait_until(budget, f"{name}: healthcheck {check['test']} passing (compose gives up after start_period "
                           f"{check['start_period']:.0f} s + {check['retries']} x {check['interval']:.0f} s)",
                   lambda: self.run_healthcheck(name, check), alive)
        log(f"{name}: healthy after {time.time() - started:.1f} s: {check['kind']} {check['test']}")
        self.healthy.add(name)

    def wait_dependencies(self, name):
        depends = self.services[name].get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for dep, how in depends.items():
            if dep not in self.procs.running and self.kinds[dep] not in ("kafka",):
                raise Failed(f"{name} depends on {dep}, which is not started before it")
            if how.get("condition") == "service_healthy" and dep not in self.healthy:
                self.wait_healthy(dep)

    # -- the three services

    def start_built(self):
        bin_dir = Path(self.args.bin_dir).resolve()
        for name in self.built():
            self.wait_dependencies(name)
        for name in self.built():
            argv = command(self.services[name])
            binary = bin_dir / argv[0]
            if not binary.is_file():
                raise Failed(f"{name}: command {argv[0]} is not a binary of this workspace ({binary})")
            env = {"PATH": os.environ["PATH"]}
            for key, value in environment(self.services[name]).items():
                env[key] = self.network.map(name, value)
            shown = {k: v for k, v in env.items() if k != "PATH"}
            log(f"{name}: {shlex.join(argv)} with {shown}")
            self.procs.start(name, [str(binary), *argv[1:]], env=env, pid_namespace=True)

    def check_binds(self):
        """A port reached from outside the container must be bound on every interface."""
        problems = []
        reached = {}
        for name, spec in self.services.items():
            for _, host_port, container_port in published(spec):
                reached.setdefault((name, container_port), f"published as {host_port}")
        for job in yaml.safe_load(Path(self.args.prometheus_config).read_text())["scrape_configs"]:
            for sd in job.get("dns_sd_configs", []):
                for n in sd["names"]:
                    reached.setdefault((n, int(sd["port"])), f"scraped by job {job['job_name']}")
        for name in self.built():
            for key, value in environment(self.services[name]).items():
                m = re.fullmatch(r"(\[[0-9a-fA-F:]*\]|[\w.-]+):(\d+)", value)
                if key.endswith("_ADDR") and m and (name, int(m.group(2))) in reached:
                    if m.group(1) not in ("0.0.0.0", "[::]", "::"):
                        problems.append(f"{name}: {key}={value} is {reached[(name, int(m.group(2)))]} but binds "
                                        f"{m.group(1)}, unreachable from outside its container")
        for (name, port), why in sorted(reached.items()):
            if self.kinds.get(name) not in ("built", "postgres", "redis", "kafka", "prometheus"):
                continue  # no stand-in here (grafana)
            if (name, port) not in self.network.ports:
                problems.append(f"{name}:{port} is {why} but {name} listens on no such port")
        if problems:
            raise Failed("\n  ".join(problems))
        checked = sorted(f"{n}:{p}" for n, p in reached if (n, p) in self.network.ports)
        log(f"every published or scraped port is a port its service binds on all interfaces: {checked}")

    def published_url(self, name):
        """http://127.0.0.1:<local> for the service's published port."""
        ports = published(self.services[name])
        if not ports:
            raise Failed(f"{name} publishes no port")
        _, _, container_port = ports[0]
        return f"http://127.0.0.1:{self.network.local(name, container_port)}"

    def check_readyz(self):
        for name in self.built():
            addr = environment(self.services[name]).get("ADMIN_ADDR")
            if not addr:
                raise Failed(f"{name}: no ADMIN_ADDR")
            url = f"http://{self.network.map(name, addr)}/readyz"
            status, body = http(url)
            if status != 200 or json.loads(body).get("status") != "ready":
                raise Failed(f"{name}: {url} answered {status} {body}")
            log(f"{name}: /readyz {status} {body}")

    def check_write(self):
        api = self.one_built_with("API_ADDR")
        token = environment(self.services[api])["ADMIN_TOKEN"]
        base = self.published_url(api)
        status, body = http(f"{base}/events", "POST", {"title": "compose-config", "starts_at": "2030-01-31T18:00:00Z",
                                                       "capacity": 10}, {"Authorization": f"Bearer {token}"})
        if status != 201:
            raise Failed(f"POST {base}/events with the compose ADMIN_TOKEN answered {status} {body}")
        event = json.loads(body)["id"]
        # a read now caches the event with no rsvp; only the cache group's invalidation
        # can make the next reads show the rsvp (cached values live 300 s)
        status, before = http(f"{base}/events/{event}")
        status, body = http(f"{base}/events/{event}/rsvps", "POST",
                            {"name": "Compose", "email": "compose@example.com", "status": "going", "guests": 1})
        if status != 201:
            raise Failed(f"POST /events/{event}/rsvps answered {status} {body}")
        log(f"api: wrote event {event} and one rsvp through {base} (the published port)")

        def analytics():
            s, b = http(f"{base}/events/{event}/stats")
            return s == 200 and json.loads(b)["totals"]["created"] == 1

        def cache():
            s, b = http(f"{base}/events/{event}")
            return s == 200 and json.loads(b)["counts"]["going"] == 1

        alive = lambda: [self.procs.alive(n) for n in self.built()]  # noqa: E731
        wait_until(60, "the analytics group to count the rsvp (GET /events/{id}/stats)", analytics, alive)
        log("consumers: the analytics group applied the rsvp")
        wait_until(60, "the cache group to invalidate the cached event (GET /events/{id} showing the rsvp)", cache, alive)
        log("consumers: the cache-invalidation group invalidated the event's cached read")

    def one_built_with(self, key):
        names = [n for n in self.built() if key in environment(self.services[n])]
        if len(names) != 1:
            raise Failed(f"expected one service with {key}, found {names}")
        return names[0]

    # -- prometheus

    def start_prometheus(self):
        name = self.one("prometheus")
        spec = self.services[name]
        root = self.scratch / "prometheus-root"
        ops_config = Path(self.args.prometheus_config).resolve()
        for volume in spec.get("volumes") or []:
            source, target = str(volume).split(":")[:2]
            inside = root / target.lstrip("/")
            if source.startswith((".", "/")):
                host = (self.compose_path.parent / source).resolve()
                inside.parent.mkdir(parents=True, exist_ok=True)
                if host == ops_config:
                    inside.write_text(yaml.safe_dump(self.prometheus_config(name, host), sort_keys=False))
                elif host.is_dir():
                    shutil.copytree(host, inside)
                else:
                    shutil.copy2(host, inside)
            else:
                inside.mkdir(parents=True, exist_ok=True)  # a named volume
        argv = ["prometheus"]
        for arg in command(spec):
            flag, eq, value = arg.partition("=")
            argv.append(f"{flag}={root / value.lstrip('/')}" if eq and value.startswith("/") else arg)
        port = self.network.local(name, 9090)
        argv.append(f"--web.listen-address=127.0.0.1:{port}")
        self.procs.start(name, argv, cwd=root)
        url = f"http://127.0.0.1:{port}"
        wait_until(60, "prometheus ready", lambda: http(f"{url}/-/ready")[0] == 200, lambda: self.procs.alive(name))
        log(f"{name}: {shlex.join(argv)}")
        return url

    def prometheus_config(self, here, path):
        """ops/prometheus.yml with each DNS discovery replaced by the addresses it would
        find (one replica per service) and static targets mapped from `here`."""
        config = yaml.safe_load(path.read_text())
        for job in config["scrape_configs"]:
            targets = []
            for sd in job.pop("dns_sd_configs", []):
                if sd.get("type", "SRV") != "A":
                    raise Failed(f"job {job['job_name']}: only A-record discovery is mapped")
                targets += [f"127.0.0.1:{self.network.local(n, sd['port'])}" for n in sd["names"]]
            for static in job.get("static_configs", []):
                targets += [self.network.map(here, t) for t in static["targets"]]
            job["static_configs"] = [{"targets": targets}]
        return config

    def check_prometheus(self, url):
        config = yaml.safe_load(Path(self.args.prometheus_config).read_text())
        jobs = {job["job_name"] for job in config["scrape_configs"]}
        interval = duration(config.get("global", {}).get("scrape_interval", "1m"))

        def all_up():
            targets = json.loads(http(f"{url}/api/v1/targets")[1])["data"]["activeTargets"]
            seen = {t["labels"]["job"] for t in targets}
            down = [(t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"]) for t in targets if t["health"] != "up"]
            if jobs - seen:
                raise Failed(f"prometheus has no target for jobs {sorted(jobs - seen)}")
            if down:
                raise RuntimeError(f"targets not up: {down}")
            return targets

        alive = lambda: [self.procs.alive(n) for n in self.built()]  # noqa: E731
        targets = wait_until(3 * interval + 15, f"every target of {sorted(jobs)} up", all_up, alive, every=2)
        for t in targets:
            log(f"prometheus: job {t['labels']['job']} scraped {t['scrapeUrl']}: {t['health']}")
        rules = json.loads(http(f"{url}/api/v1/rules")[1])["data"]["groups"]
        bad = [r["name"] for g in rules for r in g["rules"] if r.get("health") not in ("ok", "unknown")]
        count = sum(len(g["rules"]) for g in rules)
        if not count or bad:
            raise Failed(f"prometheus rules: {count} loaded, failing: {bad}")
        log(f"prometheus: {count} alert rules loaded from the mounted alerts.yml")

    # -- stop

    def check_stop(self):
        """`docker compose stop`: SIGTERM to PID 1, SIGKILL after the grace period."""
        for name in self.built():
            pid = self.procs.namespace_init(name)
            proc, _ = self.procs.running[name]
            os.kill(pid, signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                raise Failed(f"{name}: still running {STOP_GRACE_SECONDS} s after SIGTERM to it as PID 1: "
                             f"docker compose stop would SIGKILL it") from None
            log(f"{name}: stopped on SIGTERM as PID 1 (status {proc.returncode})")

    def close(self):
        self.procs.stop_all()
        shutil.rmtree(self.scratch, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compose", default=str(ROOT / "docker-compose.yml"))
    parser.add_argument("--prometheus-config", default=str(ROOT / "ops" / "prometheus.yml"))
    parser.add_argument("--bin-dir", default=str(ROOT / "target" / "debug"))
    parser.add_argument("--broker-port", type=int, required=True, help="a running Tansu broker on 127.0.0.1")
    parser.add_argument("--pg-bindir", required=True)
    args = parser.parse_args()
    stack = Stack(args)
    # stop everything started here on SIGTERM too (test.sh's caller may time out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        stack.allocate()
        stack.check_binds()
        stack.start_postgres()
        stack.start_redis()
        stack.start_built()
        for name in stack.built():
            stack.wait_healthy(name)
        stack.check_readyz()
        stack.check_write()
        prometheus = stack.start_prometheus()
        stack.check_prometheus(prometheus)
        for name in (stack.one("postgres"), stack.one("redis"), *stack.built()):
            check = healthcheck(stack.services[name])
            if not stack.run_healthcheck(name, check):
                raise Failed(f"{name}: healthcheck failed at the end: {check['test']}")
        log("every healthcheck still passes after the load")
        stack.check_stop()
    except Failed as failure:
        print(f"compose-config: FAILED: {failure}", file=sys.stderr)
        print(f"compose-config: logs in {stack.logs}/compose-config-*.log", file=sys.stderr)
        sys.exit(1)
    finally:
        stack.close()


if __name__ == "__main__":
    main()
