"""Runs the official MCP conformance suite against each upstream directly and through each
gateway configuration of gateways.conf (those without a token), and compares the results check
by check. Exit status 1 on any unexplained difference. A configuration with --route runs the
suite against /mcp/ROUTE (e.g. a virtual server over that one upstream) for the upstreams it
routes, and is skipped for the others.

Usage: conformance.py SUITE=CONFORMANCE_BIN[:ARGS] ... (ARGS: space-separated suite arguments)
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import harness
from harness import HERE, NODE, GatewayConfig, Harness, gateway_configs, log

UPSTREAMS = ("fixture", "everything")
OUT = harness.TOOLS / "out" / "conformance"
SCENARIO_DIR = re.compile(r"^server-(.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


def run_suite(bin_path: str, args: list[str], url: str, out_dir: Path) -> dict[tuple, Counter]:
    """Runs the suite; returns {(scenario, check id): Counter of statuses} for scored checks
    (a check id can occur several times in a scenario)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    cmd = [str(NODE), bin_path, "server", "--url", url, "-o", str(out_dir), *args]
    with open(out_dir / "suite-output.txt", "w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=900)
    results: dict[tuple, Counter] = {}
    for d in sorted(out_dir.iterdir()):
        m = SCENARIO_DIR.match(d.name)
        if not m or not (d / "checks.json").exists():
            continue
        for check in json.loads((d / "checks.json").read_text()):
            if check.get("status") == "INFO":
                continue  # a log line, not a verdict
            results.setdefault((m.group(1), check["id"]), Counter())[check["status"]] += 1
    if not results:
        raise RuntimeError(f"the suite produced no results: see {out_dir}/suite-output.txt")
    return results


def passed(results: dict) -> tuple[int, int]:
    return sum(c["SUCCESS"] for c in results.values()), sum(sum(c.values()) for c in results.values())


def expected_differences() -> list[list[str]]:
    entries = []
    for line in (HERE / "expected-differences.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(line.split()[:4])
    return entries


def transport_differences() -> list[list[str]]:
    """transport-differences.txt: CONFIG SUITE UPSTREAM SCENARIO CHECK REASON..."""
    entries = []
    for line in (HERE / "transport-differences.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(line.split()[:5])
    return entries


def show(c: Counter) -> str:
    return ", ".join(f"{n}x {s}" for s, n in sorted(c.items())) or "absent"


def compare(suite: str, upstream: str, config: str, direct: dict, via: dict, allowed: list, used: set,
            transport: list, used_t: set) -> list[str]:
    """Every difference is a problem unless it is an improvement listed in
    expected-differences.txt; a check doing worse through the gateway always is — except a
    difference of a stdio configuration listed in transport-differences.txt (the server's own
    HTTP transport against the gateway's, each entry with its reason)."""
    problems = []
    for key in sorted(set(direct) | set(via)):
        a, b = direct.get(key, Counter()), via.get(key, Counter())
        if a == b:
            continue
        scenario, check = key
        lost = a["SUCCESS"] > b["SUCCESS"]
        worse = any(b[s] > a[s] for s in b if s != "SUCCESS")
        what = f"{scenario} / {check}: {show(a)} direct; {show(b)} through the gateway"
        listed = next((i for i, (g, s, u, sc, c) in enumerate(transport)
                       if g == config and s in ("*", suite) and u in ("*", upstream)
                       and sc in ("*", scenario) and c in ("*", check)), None)
        if listed is not None:
            used_t.add(listed)
            log(f"    listed transport difference: {what}")
            continue
        if lost or worse:
            problems.append(f"REGRESSION: {what}")
            continue
        for i, (s, u, sc, c) in enumerate(allowed):
            if s in ("*", suite) and u in ("*", upstream) and (sc, c) == key:
                used.add(i)
                log(f"    expected improvement: {what}")
                break
        else:
            problems.append(f"DIFFERENCE (not in expected-differences.txt): {what}")
    return problems


def main() -> int:
    suites = []
    for spec in sys.argv[1:]:
        name, rest = spec.split("=", 1)
        bin_path, _, args = rest.partition(":")
        suites.append((name, bin_path, shlex.split(args)))
    configs = [c for c in gateway_configs() if c.token is None and not c.interop_only]
    for c in gateway_configs():
        if c.token is not None:
            log(f"conformance: skipping gateway configuration {c.name!r}: it needs a token, the suite sends none")
        elif c.interop_only:
            log(f"conformance: skipping gateway configuration {c.name!r}: marked --interop-only in gateways.conf")
    allowed, used = expected_differences(), set()
    transport, used_t = transport_differences(), set()
    OUT.mkdir(parents=True, exist_ok=True)
    h = Harness(OUT)
    failed, lines = False, []
    try:
        instances = max(c.instances for c in configs)
        ups = h.start_servers(UPSTREAMS, instances)
        gateways = {c.name: h.start_gateway(c, {k: v[: c.instances] for k, v in ups.items()}) for c in configs}
        for suite, bin_path, args in suites:
            for upstream in UPSTREAMS:
                t0 = time.monotonic()
                direct = run_suite(bin_path, args, ups[upstream][0], OUT / suite / upstream / "direct")
                n_pass, n_all = passed(direct)
                for c in configs:
                    route = c.route(upstream)
                    if route is None:
                        continue  # the configuration's --route flags name other upstreams
                    url = f"{gateways[c.name]}/mcp/{route}"
                    via = run_suite(bin_path, args, url, OUT / suite / upstream / c.name)
                    v_pass, v_all = passed(via)
                    problems = compare(suite, upstream, c.name, direct, via, allowed, used, transport, used_t)
                    for p in problems:
                        log(f"    {p}")
                    failed |= bool(problems)
                    line = (
                        f"| {suite} | {upstream} | {c.name} ({c.instances} instance{'s' * (c.instances > 1)}"
                        f"{'' if route == upstream else f', /mcp/{route}'}) "
                        f"| {n_pass}/{n_all} | {v_pass}/{v_all} | {len(problems)} |"
                    )
                    lines.append(line)
                    log(f"conformance [{suite}] {upstream} via {c.name}: {n_pass}/{n_all} checks pass direct, "
                        f"{v_pass}/{v_all} through the gateway, {len(problems)} unexplained difference(s) "
                        f"({time.monotonic() - t0:.0f}s)")
    finally:
        h.close()
    for i, entry in enumerate(allowed):
        suite_names = {s for s, _, _ in suites}
        if i not in used and (entry[0] == "*" or entry[0] in suite_names):
            log(f"STALE expected difference (did not happen): {' '.join(entry)}")
            failed = True
    config_names = {c.name for c in configs}
    for i, entry in enumerate(transport):
        suite_names = {s for s, _, _ in suites}
        if i not in used_t and entry[0] in config_names and (entry[1] == "*" or entry[1] in suite_names):
            log(f"STALE transport difference (did not happen): {' '.join(entry)}")
            failed = True
    table = ["| suite | upstream | gateway configuration | checks passed direct | through the gateway | unexplained differences |",
             "|---|---|---|---|---|---|", *lines]
    (OUT / "summary.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(f"conformance: {'FAILED' if failed else 'ok'} — {len(lines)} comparisons (results under {OUT.relative_to(harness.ROOT)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
