#!/usr/bin/env bash
# Validates docker-compose.yml without Docker: against the Compose specification's
# JSON schema (check-jsonschema's vendored copy, offline), and against the binaries:
# each of api, relay and consumers runs a binary and subcommand the Dockerfile builds,
# sets only environment variables that binary's --help documents, binds its admin port
# on 0.0.0.0 at the port ops/prometheus.yml scrapes for its job, and every image is
# pinned to a version.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$ROOT"
ensure_rust
ensure_python_tools

log "check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml"
check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

log "building the binaries to read their --help"
cargo build --locked -q --bins

log "compose services against the binaries' --help, the Dockerfile and ops/prometheus.yml"
python - <<'PY'
import re, subprocess, sys
import yaml

compose = yaml.safe_load(open("docker-compose.yml"))
prometheus = yaml.safe_load(open("ops/prometheus.yml"))
dockerfile = open("Dockerfile").read()
jobs = {"api": "rsvp-api", "relay": "rsvp-relay", "consumers": "rsvp-consumers"}
problems = []

def documented(argv):
    out = subprocess.run(argv + ["--help"], capture_output=True, text=True)
    if out.returncode != 0:
        problems.append(f"`{' '.join(argv)} --help` failed: {out.stderr.strip()}")
        return set()
    # `[env: NAME=value]`, or `[env: NAME]` where clap hides the value
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", out.stdout))

for service, job in jobs.items():
    spec = compose["services"][service]
    binary, *sub = spec["command"]
    if f"target/release/{binary}" not in dockerfile:
        problems.append(f"{service}: the Dockerfile does not build {binary}")
    names = documented([f"target/debug/{binary}"])
    if sub:
        names |= documented([f"target/debug/{binary}", *sub])
    env = spec.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    before = len(problems)
    for name in env:
        if name not in names:
            problems.append(f"{service}: {name} is not documented by `{binary} {' '.join(sub)} --help`")
    admin = str(env.get("ADMIN_ADDR", ""))
    scrape = next(j for j in prometheus["scrape_configs"] if j["job_name"] == job)
    ports = {str(c["port"]) for c in scrape.get("dns_sd_configs", [])}
    hosts = {n for c in scrape.get("dns_sd_configs", []) for n in c["names"]}
    if not admin.startswith("0.0.0.0:") or admin.split(":")[1] not in ports or hosts != {service}:
        problems.append(f"{service}: ADMIN_ADDR {admin!r} is not 0.0.0.0 at the port job {job} scrapes ({hosts} {ports})")
    # The api does not talk to Kafka; the relay and the consumers must agree on it.
    for name in ([] if service == "api" else ["KAFKA_BROKERS", "KAFKA_TOPIC"]):
        if name not in env:
            problems.append(f"{service}: {name} is not set")
    if len(problems) == before:
        print(f"{service}: {binary} {' '.join(sub)} sets {sorted(env)}, each documented by its --help")

for service, spec in compose["services"].items():
    image = spec.get("image", "")
    if "build" not in spec and (":" not in image or image.endswith(":latest")):
        problems.append(f"{service}: image {image!r} is not pinned to a version")

for p in problems:
    print("compose:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
echo "compose: valid against the Compose specification, environment matches every binary's --help"
