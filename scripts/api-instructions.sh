#!/usr/bin/env bash
# Counts the instructions the api runs per rsvp create, under valgrind's callgrind:
# the same binary and load give the same count whatever else the machine does, so two
# builds compare where a throughput benchmark on a noisy 2-core machine cannot.
#
#   scripts/api-instructions.sh [BIN_DIR] [plain|keyed] [CREATES]
#
# BIN_DIR holds rsvp-api (default target/release). The api starts on a fresh
# database; 8 clients send 200 creates to warm it up, then the counters are zeroed
# and they send CREATES more (default 3000), with a new Idempotency-Key each when
# `keyed`. Prints instructions per create, and the part SHA-256 takes: valgrind
# does not run the SHA extensions, so the sha2 crate falls back to its software
# rounds here, which cost many times what they do natively.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bin_dir=${1:-$ROOT/target/release}
mode=${2:-plain}
creates=${3:-3000}
command -v valgrind >/dev/null || apt_install valgrind

database=rsvp_api_instructions
work=$(mktemp -d)
trap 'kill "$api" 2>/dev/null || true; rm -rf "$work"' EXIT
psql -qX -h 127.0.0.1 -U root -d postgres -c "drop database if exists $database" -c "create database $database" >/dev/null

port=$(free_port)
admin_token=api-instructions-admin-token
DATABASE_URL=postgres://root@127.0.0.1:5432/$database API_ADDR=127.0.0.1:$port ADMIN_ADDR=127.0.0.1:0 \
    ADMIN_TOKEN=$admin_token RUST_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "$bin_dir/rsvp-api" \
    >"$work/api.log" 2>&1 &
api=$!
wait_port 127.0.0.1 "$port" 120 "rsvp-api under valgrind"

# The load: 50 events, then creates spread over them from 8 keep-alive clients.
cat >"$work/load.py" <<'PY'
import http.client, json, sys, threading, uuid
port, admin_token, keyed, creates = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "keyed", int(sys.argv[4])
connection = http.client.HTTPConnection("127.0.0.1", port)
events = []
for i in range(50):
    connection.request("POST", "/events", json.dumps({"title": f"Event {i}", "starts_at": "2099-01-01T00:00:00Z"}),
                       {"content-type": "application/json", "authorization": f"Bearer {admin_token}"})
    answer = connection.getresponse()
    events.append(json.loads(answer.read())["id"])
next_create, lock, failed = iter(range(creates)), threading.Lock(), []
def client():
    connection = http.client.HTTPConnection("127.0.0.1", port)
    while True:
        with lock:
            i = next(next_create, None)
        if i is None:
            return
        headers = {"content-type": "application/json"}
        if keyed:
            headers["idempotency-key"] = str(uuid.uuid4())
        body = {"name": "Bench", "email": f"p{i}-{uuid.uuid4().hex}@bench.example", "status": "going"}
        connection.request("POST", f"/events/{events[i % 50]}/rsvps", json.dumps(body), headers)
        answer = connection.getresponse()
        answer.read()
        if answer.status != 201:
            failed.append(answer.status)
clients = [threading.Thread(target=client) for _ in range(8)]
for c in clients: c.start()
for c in clients: c.join()
if failed:
    sys.exit(f"{len(failed)} creates failed: {sorted(set(failed))}")
PY
python3 "$work/load.py" "$port" "$admin_token" "$mode" 200
callgrind_control -z "$api" >/dev/null 2>&1
python3 "$work/load.py" "$port" "$admin_token" "$mode" "$creates"
callgrind_control -d "$api" >/dev/null 2>&1
kill -INT "$api"
wait "$api" || true

dump=$(ls "$work"/callgrind.out.* | head -1)
total=$(grep '^summary:' "$dump" | awk '{print $2}')
# SHA-256's own instructions: the cost lines of its functions, not of their calls.
sha=$(python3 - "$dump" <<'PY'
import re, sys
names, function, total, call = {}, "", 0, False
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("fn="):
        number, _, name = line[3:].strip().partition(" ")
        function = names.setdefault(number, name) if name else names.get(number, "")
    elif line.startswith("calls="):
        call = True
    elif line[:1].isdigit() or line[:1] in "+-*":
        if not call and "compress256" in function:
            total += int(line.split()[1])
        call = False
    elif line.startswith("cfn="):
        number, _, name = line[4:].strip().partition(" ")
        if name:
            names.setdefault(number, name)
print(total)
PY
)
echo "rsvp-api, $mode, $creates creates: $((total / creates)) instructions per create, $((sha / creates)) of them SHA-256 in software"
psql -qX -h 127.0.0.1 -U root -d postgres -c "drop database $database" >/dev/null
