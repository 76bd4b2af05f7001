"""The PromQL of ops/: every dashboard and alert expression, the metric names they
read, the local Prometheus configuration derived from ops/prometheus.yml, and the
live check that each expression returns data from a Prometheus scraping the system.

Used by promtool.sh, prometheus-live.sh and runbook.sh (run with the test venv's
python, which has PyYAML and requests).

Alert expressions follow the convention stated at the top of ops/alerts.yml:
`<metric part> <comparison> <number>`. The metric part (the expression without its
final comparison) is what a healthy system must return data for; the comparison is
what is normally false.
"""

import argparse
import json
import re
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
DASHBOARD = OPS / "grafana" / "dashboards" / "rsvp-pipeline.json"

# Grafana's variables, with values that suit a 1 s scrape interval.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "5s", "$__range": "5m"}

FINAL_COMPARISON = re.compile(
    r"^(?P<metric>.*\S)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?:bool\s+)?(?P<threshold>[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)\s*$",
    re.DOTALL,
)
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "offset", "inf", "nan"}


def metric_part(expr):
    """The alert expression without its final comparison to a number."""
    match = FINAL_COMPARISON.match(expr.strip())
    if not match:
        raise ValueError(f"does not end with `<comparison> <number>`: {expr!r}")
    return match.group("metric")


def dashboard_queries():
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            yield {"source": f"dashboard: {panel['title']} [{target['refId']}]", "query": expr}


def all_panels(panels):
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def alert_rules():
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    for group in rules["groups"]:
        yield from group["rules"]


def alert_queries():
    for rule in alert_rules():
        yield {"source": f"alert {rule['alert']} (without its final comparison)", "query": metric_part(rule["expr"])}


def all_queries():
    return list(dashboard_queries()) + list(alert_queries())


def metric_names(expr):
    """Metric names a PromQL expression selects (good enough for ops/'s expressions)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][\w:]*", text):
        start, end = match.span()
        if start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_.$"):
            continue  # the unit of a duration or number, such as the `m` of `30m`
        if text[end:].lstrip().startswith("("):
            continue  # a function
        if match.group(0).lower() in KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def check_dashboard():
    """Structure the Grafana provisioning relies on."""
    problems = []
    dashboard = json.loads(DASHBOARD.read_text())
    datasources = yaml.safe_load((OPS / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    ids = [p["id"] for p in all_panels(dashboard["panels"])]
    if len(ids) != len(set(ids)):
        problems.append("panel ids are not unique")
    if not dashboard.get("uid"):
        problems.append("the dashboard has no uid")
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        if not panel.get("targets"):
            problems.append(f"panel {panel['title']!r} has no query")
        for thing in [panel] + panel.get("targets", []):
            if thing.get("datasource", {}).get("uid") != uid:
                problems.append(f"panel {panel['title']!r} does not use the provisioned datasource {uid!r}")
        refs = [t["refId"] for t in panel.get("targets", [])]
        if len(refs) != len(set(refs)):
            problems.append(f"panel {panel['title']!r} repeats a refId")
    return problems


def local_config(args):
    """ops/prometheus.yml with each rsvp job's DNS discovery replaced by a static target."""
    config = yaml.safe_load((OPS / "prometheus.yml").read_text())
    targets = dict(t.split("=", 1) for t in args.target)
    config["global"]["scrape_interval"] = args.interval
    config["global"]["evaluation_interval"] = args.interval
    config["rule_files"] = [str(OPS / "alerts.yml")]
    jobs = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name == "prometheus":
            job = {"job_name": name, "static_configs": [{"targets": [args.self_target]}]}
        else:
            if name not in targets:
                sys.exit(f"no --target for job {name}")
            job = {"job_name": name, "static_configs": [{"targets": [targets.pop(name)]}]}
        jobs.append(job)
    if targets:
        sys.exit(f"ops/prometheus.yml has no job {sorted(targets)}")
    config["scrape_configs"] = jobs
    Path(args.out).write_text("# generated from ops/prometheus.yml by scripts/checks/ops_queries.py\n" + yaml.safe_dump(config, sort_keys=False))


def live(args):
    import requests

    base = args.prometheus.rstrip("/")

    def query(q):
        response = requests.get(f"{base}/api/v1/query", params={"query": q}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            return None, body.get("error", response.text)
        return body["data"]["result"], None

    jobs = {"rsvp-api", "rsvp-relay", "rsvp-consumers"}
    deadline = time.time() + args.wait
    while True:
        targets = requests.get(f"{base}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        up = {t["labels"]["job"] for t in targets if t["health"] == "up"}
        if jobs <= up:
            break
        if time.time() > deadline:
            sys.exit(f"targets not up within {args.wait}s: {[(t['labels']['job'], t['health'], t['lastError']) for t in targets]}")
        time.sleep(1)
    print(f"every target is up: {sorted(jobs)}")

    checks = all_queries()
    names = sorted(set().union(*(metric_names(c["query"]) for c in checks)))
    checks += [{"source": f"metric {name} is exported", "query": f"group({name})"} for name in names]
    pending = list(checks)
    results = {}
    while True:
        still = []
        for check in pending:
            result, error = query(check["query"])
            results[check["query"]] = (result, error)
            if error or not result:
                still.append(check)
        pending = still
        if not pending or time.time() > deadline:
            break
        time.sleep(2)
    for check in checks:
        result, error = results[check["query"]]
        status = "ok   " if result else "EMPTY" if not error else "ERROR"
        detail = error or f"{len(result)} series"
        print(f"{status} {check['source']}: {check['query']}  -> {detail}")
    rules = requests.get(f"{base}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"]: r for g in rules for r in g["rules"]}
    bad_rules = []
    for rule in alert_rules():
        got = loaded.get(rule["alert"])
        if got is None or got.get("health") != "ok":
            bad_rules.append((rule["alert"], got and got.get("lastError")))
        else:
            print(f"ok    alert {rule['alert']} is loaded and evaluates (state {got['state']})")
    if bad_rules:
        print(f"rules not loaded or failing: {bad_rules}")
    if pending or bad_rules:
        sys.exit(f"{len(pending)} of {len(checks)} queries returned no data; {len(bad_rules)} rules failing")
    print(f"all {len(checks)} queries returned data ({len(names)} metric names), all {len(loaded)} alerts evaluate")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("queries", help="print every query as JSON lines")
    sub.add_parser("check-dashboard", help="check the dashboard's structure and the alerts' convention")
    config = sub.add_parser("local-config", help="write a Prometheus config for local targets")
    config.add_argument("--out", required=True)
    config.add_argument("--interval", default="1s")
    config.add_argument("--target", action="append", default=[], help="JOB=HOST:PORT")
    config.add_argument("--self-target", default="127.0.0.1:9090")
    check = sub.add_parser("live", help="require data for every query from a running Prometheus")
    check.add_argument("--prometheus", required=True)
    check.add_argument("--wait", type=int, default=60, help="seconds to wait for targets and data")
    args = parser.parse_args()
    if args.command == "queries":
        for q in all_queries():
            print(json.dumps(q))
    elif args.command == "check-dashboard":
        problems = check_dashboard()
        queries = all_queries()  # raises on an alert outside the convention
        for problem in problems:
            print(f"dashboard: {problem}")
        if problems:
            sys.exit(1)
        print(f"dashboard and alerts: {len(queries)} queries, every alert is `<metric part> <comparison> <number>`")
    elif args.command == "local-config":
        local_config(args)
    elif args.command == "live":
        live(args)


if __name__ == "__main__":
    main()
