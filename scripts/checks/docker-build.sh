#!/usr/bin/env bash
# Builds the Docker image's binaries without Docker: assembles the build context as
# Docker would (the files .dockerignore lets through, by Docker's matching rules),
# replays the Dockerfile's build stage instruction by instruction (WORKDIR, COPY,
# RUN cargo build ...) in a scratch folder standing for `/`, then checks that every
# binary docker-compose.yml runs lands on the runtime image's PATH and answers
# --help. Any instruction of the build stage it does not interpret fails the check.
# Details: scripts/checks/docker_build.py.
#
# Cost: the RUN's `--mount=type=cache,target=/src/target` is kept between runs in
# $RSVP_TOOLS_DIR/docker-build/caches (as Docker keeps a cache mount between builds),
# and the scratch folder has a fixed path, so a second run compiles only what changed.
# That does not weaken the check: the context is assembled afresh from .dockerignore
# on every run, and the commands are exactly the Dockerfile's; a cache mount, here as
# in Docker, can only hold build outputs, never a source the context lacks.
#
#   DOCKER_BUILD_ROOT=DIR   check the Dockerfile of another checkout (default: this one)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$ROOT"
ensure_rust
ensure_python_tools

"$VENV/bin/python" scripts/checks/docker_build.py selftest

work="$TOOLS_DIR/docker-build"
mkdir -p "$work"
# One replay at a time per machine: the scratch folder and the caches are shared.
exec 9>"$work/lock"
if ! flock -n 9; then
    log "waiting for another docker-build check on this machine"
    flock 9
fi

root=${DOCKER_BUILD_ROOT:-$ROOT}
log "replaying $root/Dockerfile's build stage from the context $root/.dockerignore lets through"
"$VENV/bin/python" scripts/checks/docker_build.py replay --root "$root" --compose "$root/docker-compose.yml" \
    --scratch "$work/scratch" --caches "$work/caches"
echo "docker-build: the build stage compiles from Docker's context and the image has every binary compose runs"
