#!/usr/bin/env bash
# Where a keyed create's extra CPU goes, by process and by function. Runs
# `rsvp-bench --only api --keyed-cycles 0`, whose first two runs are the api with
# coalescing on, without and then with an Idempotency-Key on every request (10 s each,
# each on a fresh database), and samples every CPU with `perf record -a` for SECONDS
# (default 5) inside each of the two. Prints per create, by the rate the bench
# reports for the run: the µs of CPU each process took (the api, PostgreSQL, the load
# generator, the rest), user and kernel apart; then the functions whose time per
# create grew most with keys. One sample is 1 ms of one CPU: at 5,000 creates/s over
# 5 s, 0.04 µs per create, so read differences under a few tenths as noise.
#
#   scripts/keyed-cpu-split.sh [BIN_DIR] [SECONDS]
#
# BIN_DIR holds rsvp-bench and rsvp-api (default target/release).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bin_dir=${1:-$ROOT/target/release}
seconds=${2:-5}
command -v perf >/dev/null || apt_install linux-perf

work=$(mktemp -d)
trap 'kill "$bench" 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin_dir/rsvp-bench" --only api --concurrency 256 --duration 10s --keyed-cycles 0 --out "$work/report.md" \
    >"$work/bench.log" 2>&1 &
bench=$!
for mode in plain keyed; do
    case $mode in
        plain) label='^api, coalescing on, 256 clients' ;;
        keyed) label='^api, coalescing on, Idempotency-Key, 256 clients' ;;
    esac
    # The label comes once the run's api is up with its events; the checkpoint
    # before its load takes a second or two.
    until tr '\r' '\n' <"$work/bench.log" | grep -q "$label"; do
        kill -0 "$bench" 2>/dev/null || { cat "$work/bench.log" >&2; exit 1; }
        sleep 0.2
    done
    sleep 3
    perf record -a -e cpu-clock -F 1000 -o "$work/$mode.data" -- sleep "$seconds" 2>/dev/null
    perf report -i "$work/$mode.data" --sort pid,dso,sym --stdio -n 2>/dev/null >"$work/$mode.txt"
done
wait "$bench"
grep '^| api, coalescing on' "$work/report.md"

python3 - "$work" "$seconds" <<'PY'
import collections, re, sys
work, seconds = sys.argv[1], float(sys.argv[2])
report = open(f"{work}/report.md").read()
rates = {
    "plain": float(re.search(r"^\| api, coalescing on \| \d+ \| (\d+)", report, re.M).group(1)),
    "keyed": float(re.search(r"^\| api, coalescing on, Idempotency-Key \| \d+ \| (\d+)", report, re.M).group(1)),
}
line = re.compile(r"\s*[\d.]+%\s+(\d+)\s+(\d+):(\S+)\s+(\S+)\s+\[(.)\]\s+(.*)$")

def per_create(mode):
    """µs per create by (process, user|kernel) and by (process, function)."""
    rows = [m.groups() for m in map(line.match, open(f"{work}/{mode}.txt")) if m]
    api_pids = {pid for _, pid, _, dso, _, _ in rows if dso == "rsvp-api"}
    bench_pids = {pid for _, pid, _, dso, _, _ in rows if dso == "rsvp-bench"}
    scale = 1e3 / (rates[mode] * seconds)  # one sample (1 ms) in µs per create
    groups, functions = collections.Counter(), collections.Counter()
    for n, pid, comm, dso, kind, symbol in rows:
        process = "api" if pid in api_pids else "load generator" if pid in bench_pids else \
            "postgres" if comm == "postgres" else "idle" if comm == "swapper" else "other"
        groups[(process, "kernel" if kind == "k" else "user")] += int(n) * scale
        functions[(process, symbol.strip())] += int(n) * scale
    return groups, functions

(plain_groups, plain_functions), (keyed_groups, keyed_functions) = per_create("plain"), per_create("keyed")
print(f"\nµs of CPU per create ({rates['plain']:.0f}/s without keys, {rates['keyed']:.0f}/s with):\n")
print("| process | part | without a key | with a key | extra |\n|---|---|---:|---:|---:|")
for key in sorted(set(plain_groups) | set(keyed_groups), key=lambda k: -keyed_groups[k]):
    if key[0] != "idle":
        print(f"| {key[0]} | {key[1]} | {plain_groups[key]:.1f} | {keyed_groups[key]:.1f} | {keyed_groups[key] - plain_groups[key]:+.1f} |")
busy = lambda groups: sum(v for (process, _), v in groups.items() if process != "idle")
print(f"| all but idle | | {busy(plain_groups):.1f} | {busy(keyed_groups):.1f} | {busy(keyed_groups) - busy(plain_groups):+.1f} |")
print("\nThe functions whose time per create grew most with keys:\n")
print("| process | function | without a key | with a key | extra |\n|---|---|---:|---:|---:|")
grown = sorted((set(plain_functions) | set(keyed_functions)) - {k for k in keyed_functions if k[0] == "idle"},
               key=lambda k: plain_functions[k] - keyed_functions[k])
for key in grown[:25]:
    print(f"| {key[0]} | `{key[1][:80]}` | {plain_functions[key]:.2f} | {keyed_functions[key]:.2f} | {keyed_functions[key] - plain_functions[key]:+.2f} |")
PY
