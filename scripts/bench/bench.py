#!/usr/bin/env python3
"""Side-by-side benchmark of MCP gateways on this machine, in one run.

Targets (all in front of the same fast upstream, `bench-upstream`):
  direct       load generator -> upstream
  nginx        plain proxy_pass reverse proxy
  mcp-proxy    the peer Rust MCP gateway from the Rust package registry, pass-through
  mcp-gateway  one row per config file in GATEWAY_CONFIGS

Every scenario runs against every target REPS times, interleaved, and the report quotes
medians. Writes docs/benchmarks.md and docs/benchmarks-latency.svg.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
REL = os.path.join(ROOT, "target", "release")

# Adding a gateway configuration to the run: add its file name here (one line).
GATEWAY_CONFIGS = [
    "passthrough.toml",
    "auth.toml",
    "limits.toml",
    "audit.toml",
    "sessions.toml",
    "telemetry.toml",
    "full.toml",
    "stdio.toml",
    "reload.toml",
    "integrity.toml",
    "virtual.toml",
    "passthrough-mimalloc.toml",
    "full-mimalloc.toml",
]

# (name, era, format, size, mode)  mode: "closed" or an open-loop rate in requests/s.
SCENARIOS = [
    ("legacy json 200B closed", "legacy", "json", 200, "closed"),
    ("modern json 200B closed", "modern", "json", 200, "closed"),
    ("legacy sse 200B closed", "legacy", "sse", 200, "closed"),
    ("legacy json 64KiB closed", "legacy", "json", 65536, "closed"),
    ("modern sse 64KiB closed", "modern", "sse", 65536, "closed"),
    ("modern json 200B @2000/s", "modern", "json", 200, 2000),
    ("legacy sse 200B @2000/s", "legacy", "sse", 200, 2000),
]

LOAD_CPU = "0"     # the load generator's core
SERVER_CPU = "1"   # targets and upstream share the other core

# Placements: "pinned" gives every server one core (the load generator has the other);
# "shared" lets nginx (one worker per core), mcp-gateway (its default configuration: every core)
# and the load generator all use every core.
PLACEMENTS = ("pinned", "shared")
PLACEMENT = "pinned"  # the placement being measured (set by main)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def pinned(cpu, argv):
    if PLACEMENT == "shared":
        return argv
    return ["taskset", "-c", cpu] + argv if shutil.which("taskset") and os.cpu_count() >= 2 else argv


def shared_workers():
    return str(os.cpu_count() or 1)


def proc_tree(pid):
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except OSError:
        pass
    return pids


def cpu_seconds(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def peak_rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Target:
    def __init__(self, name, kind, port, proc, tool="payload", note="", workdir=None):
        self.name, self.kind, self.port, self.proc = name, kind, port, proc
        self.tool, self.note, self.workdir = tool, note, workdir
        self.unsupported = {}  # era -> reason
        self.token = None  # bearer token the load generator sends, if the target wants one

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}{self.path}"

    path = "/mcp/bench"

    def pids(self):
        return proc_tree(self.proc.pid) if self.proc else []

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_upstream(log):
    port = free_port()
    p = subprocess.Popen(pinned(SERVER_CPU, [os.path.join(REL, "bench-upstream"), "--listen", f"127.0.0.1:{port}"]),
                         stdout=log, stderr=log)
    wait_port(port, p)
    return port, p


def start_gateway(config, upstream_port, log, tmp):
    port = free_port()
    with open(os.path.join(HERE, "configs", config)) as f:
        text = f.read()
    text = (text.replace("{listen}", f"127.0.0.1:{port}")
            .replace("{upstream}", f"http://127.0.0.1:{upstream_port}/mcp")
            .replace("{dir}", os.path.join(HERE, "configs"))
            .replace("{bench_upstream}", os.path.join(REL, "bench-upstream"))
            .replace("{tmp}", tmp))
    if PLACEMENT == "shared":
        # The default configuration: as many workers as cores.
        text = "\n".join(l for l in text.splitlines() if not l.strip().startswith("worker_threads"))
    # A config may name the bearer token the load generator sends: `# bench-token: T`.
    token = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("# bench-token:")), None)
    if token == "jwt":
        # A JWT for this gateway's resource, issued by bench-upstream.
        import urllib.request
        url = f"http://127.0.0.1:{upstream_port}/token?aud=http://127.0.0.1:{port}/mcp/bench"
        token = urllib.request.urlopen(url).read().decode()
    # ... and the gateway build it runs: `# bench-binary: NAME` (a file of target/release that
    # scripts/bench/run builds, e.g. the mimalloc build); the default build otherwise.
    binary = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("# bench-binary:")),
                  "mcp-gateway")
    path = os.path.join(tmp, config)
    with open(path, "w") as f:
        f.write(text)
    p = subprocess.Popen(pinned(SERVER_CPU, [os.path.join(REL, binary), "serve", "--config", path]),
                         stdout=log, stderr=log)
    wait_port(port, p)
    name = "mcp-gateway " + config.rsplit(".", 1)[0]
    # A config may route the load elsewhere than /mcp/bench (`# bench-route: NAME`, a virtual
    # server) and call the tool by another name (`# bench-tool: NAME`).
    directive = lambda key: next((l.split(":", 1)[1].strip() for l in text.splitlines()
                                  if l.startswith(f"# {key}:")), None)
    t = Target(name, "gateway", port, p, tool=directive("bench-tool") or "payload")
    if directive("bench-route"):
        t.path = "/mcp/" + directive("bench-route")
    t.token = token
    return t


def start_nginx(upstream_port, log, tmp):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    d = os.path.join(tmp, "nginx")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(HERE, "nginx.conf")) as f:
        text = f.read()
    workers = shared_workers() if PLACEMENT == "shared" else "1"
    text = (text.replace("{workers}", workers).replace("{dir}", d).replace("{listen}", f"127.0.0.1:{port}")
            .replace("{upstream_hostport}", f"127.0.0.1:{upstream_port}"))
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(text)
    p = subprocess.Popen(pinned(SERVER_CPU, [nginx, "-c", conf, "-p", d]), stdout=log, stderr=log)
    wait_port(port, p)
    return Target("nginx", "nginx", port, p)


def start_mcp_proxy(upstream_port, log, tmp):
    binary = os.path.join(ROOT, ".tools", "mcp-proxy", "bin", "mcp-proxy")
    # mcp-proxy answers at "/" and exposes the upstream's tools as "<backend>/<tool>".
    if not os.path.exists(binary):
        return None
    port = free_port()
    with open(os.path.join(HERE, "mcp-proxy.toml")) as f:
        text = f.read()
    text = text.replace("{port}", str(port)).replace("{upstream}", f"http://127.0.0.1:{upstream_port}/mcp")
    conf = os.path.join(tmp, "mcp-proxy.toml")
    with open(conf, "w") as f:
        f.write(text)
    env = dict(os.environ, RUST_LOG="error")
    p = subprocess.Popen(pinned(SERVER_CPU, [binary, "--config", conf]), stdout=log, stderr=log, env=env)
    wait_port(port, p)
    t = Target("mcp-proxy", "mcp-proxy", port, p, tool="bench/payload",
               note="terminates MCP itself: it answers initialize and tools/list from its own state, and sends every "
                    "client's tools/call over one shared upstream session; tools are named bench/payload")
    t.path = "/"
    return t


def run_load(target, scenario, args):
    name, era, fmt, size, mode = scenario
    argv = [os.path.join(REL, "bench-load"), "--url", target.url, "--era", era, "--format", fmt,
            "--size", str(size), "--tool", target.tool, "--connections", str(args.connections),
            "--duration", f"{args.duration}s", "--warmup", f"{args.warmup}s",
            "--threads", shared_workers() if PLACEMENT == "shared" else "1",
            "--label", target.name]
    if mode != "closed":
        argv += ["--rate", str(mode)]
    if target.token:
        argv += ["--token", target.token]
    pids = target.pids()
    cpu0 = cpu_seconds(pids)
    out = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, text=True, timeout=args.duration * 4 + 60)
    cpu1 = cpu_seconds(pids)
    if out.returncode != 0:
        raise RuntimeError(f"bench-load failed: {out.stderr.strip()}")
    r = json.loads(out.stdout)
    r["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / max(r["all_requests"], 1)
    return r


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM, Linux {platform.release()}"


def version_of(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def fmt_us(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def svg_chart(results, scenario_name, path):
    """An HDR-style latency-by-percentile chart for one open-loop scenario."""
    series = [(t, r) for (t, s), r in results.items() if s == scenario_name and r]
    if not series:
        return False
    pcts = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99]
    import math
    xs = {p: math.log10(100.0 / (100.0 - p)) for p in pcts}
    xmax = max(xs.values())
    # Latency on a log scale: the medians (tens of µs apart) and the tail (milliseconds) both show.
    vals = [v for _, r in series for p, v in r["percentiles"] if p in xs and v > 0]
    lo = 10 ** math.floor(math.log10(max(min(vals), 1)))
    hi = 10 ** math.ceil(math.log10(max(vals)))
    ylo, yhi = math.log10(lo), math.log10(hi)
    W, H, L, B, T, R = 820, 420, 70, 50, 40, 240
    pw, ph = W - L - R, H - T - B
    colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d"]

    def ypos(us):
        return T + ph - ph * (math.log10(max(us, lo)) - ylo) / (yhi - ylo)

    def label(us):
        return f"{us / 1000:g} ms" if us >= 1000 else f"{us:g} µs"

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="22" font-size="14">Latency by percentile — {scenario_name} (median run)</text>']
    decade = lo
    while decade <= hi:
        for m in (1, 2, 5):
            v = decade * m
            if v > hi:
                break
            y = ypos(v)
            out.append(f'<line x1="{L}" y1="{y:.1f}" x2="{L + pw}" y2="{y:.1f}" stroke="{"#ccc" if m == 1 else "#eee"}"/>')
            out.append(f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{label(v)}</text>')
        decade *= 10
    out.append(f'<text x="14" y="{T + ph / 2}" transform="rotate(-90 14 {T + ph / 2})" text-anchor="middle">latency (log scale)</text>')
    for p in pcts:
        x = L + pw * xs[p] / xmax
        out.append(f'<line x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{T + ph}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{T + ph + 18}" text-anchor="middle">p{p:g}</text>')
    for i, (t, r) in enumerate(series):
        c = colors[i % len(colors)]
        d = dict(r["percentiles"])
        pts = " ".join(f"{L + pw * xs[p] / xmax:.1f},{ypos(d.get(p, lo)):.1f}" for p in pcts)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        out.append(f'<rect x="{L + pw + 16}" y="{T + 18 * i}" width="12" height="12" fill="{c}"/>')
        out.append(f'<text x="{L + pw + 34}" y="{T + 18 * i + 10}">{t}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return True


def median_run(runs):
    """The run with the median throughput (its latencies are reported together)."""
    ok = [r for r in runs if r]
    if not ok:
        return None
    ok.sort(key=lambda r: r["throughput"])
    return ok[len(ok) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    ap.add_argument("--reps", type=int, default=3, help="runs per scenario and target (median quoted)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="one short run of two scenarios (a smoke test)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--command", default="scripts/bench/run", help="the command shown in the report")
    ap.add_argument("--placement", choices=("pinned", "shared", "both"), default="both",
                    help="pinned: one core per server, the load generator on the other; shared: every process "
                         "free on every core, nginx and mcp-gateway with one worker per core; both (default): "
                         "one after the other, reported side by side")
    ap.add_argument("--configs", help="comma-separated gateway config files of scripts/bench/configs (default: all)")
    ap.add_argument("--no-mcp-proxy", action="store_true", help="leave mcp-proxy out")
    ap.add_argument("--scenarios", help="comma-separated scenario names to run (default: all)")
    ap.add_argument("--block", help="write the report as block NAME of the existing --out file (a run of a "
                                    "few configurations beside the full report) instead of replacing the file")
    args = ap.parse_args()
    scenarios = SCENARIOS
    if args.quick:
        args.duration, args.warmup, args.reps = 1.0, 0.5, 1
        scenarios = [SCENARIOS[0], SCENARIOS[5]]
    if args.scenarios:
        wanted = [x.strip() for x in args.scenarios.split(",")]
        scenarios = [sc for sc in SCENARIOS if sc[0] in wanted]

    global PLACEMENT
    placements = PLACEMENTS if args.placement == "both" else (args.placement,)
    configs = args.configs.split(",") if args.configs else GATEWAY_CONFIGS
    tmp = tempfile.mkdtemp(prefix="mcp-bench-")
    log = open(os.path.join(tmp, "servers.log"), "w")
    results = {}
    rss = {}
    targets = []
    for placement in placements:
        PLACEMENT = placement
        targets = []
        try:
            up_port, up_proc = start_upstream(log)
            direct = Target("direct", "direct", up_port, None)
            direct.path = "/mcp"
            targets.append(direct)
            targets.append(start_nginx(up_port, log, tmp))
            mp = None if args.no_mcp_proxy else start_mcp_proxy(up_port, log, tmp)
            if mp:
                targets.append(mp)
            elif not args.no_mcp_proxy:
                print("mcp-proxy is not installed (scripts/bench/run installs it): skipped", file=sys.stderr)
            for c in configs:
                targets.append(start_gateway(c, up_port, log, tmp))

            runs = {}
            total = len(scenarios) * len(targets) * args.reps
            n = 0
            for sc in scenarios:
                for rep in range(args.reps):
                    for t in targets:
                        n += 1
                        key = (t.name, sc[0], placement)
                        if sc[1] in t.unsupported:
                            runs.setdefault(key, [])
                            continue
                        try:
                            r = run_load(t, sc, args)
                        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
                            r = None
                            print(f"[{placement} {n}/{total}] {t.name:28} {sc[0]:28} failed: {e}", file=sys.stderr)
                        if r and r["requests"] == 0:
                            t.unsupported.setdefault(sc[1], r.get("first_error") or "no successful call")
                            print(f"[{placement} {n}/{total}] {t.name:28} {sc[0]:28} no successful call: {r.get('first_error')}", file=sys.stderr)
                            r = None
                        elif r:
                            print(f"[{placement} {n}/{total}] {t.name:28} {sc[0]:28} {r['throughput']:9.0f} req/s  p50 {fmt_us(r['latency_us']['p50'])}  p99 {fmt_us(r['latency_us']['p99'])}  errors {r['errors']}", file=sys.stderr)
                        runs.setdefault(key, []).append(r)
            for key, rs in runs.items():
                results[key] = median_run(rs)
                if results[key]:
                    results[key]["reps"] = len([r for r in rs if r])
            for t in targets:
                if t.proc:
                    rss[(t.name, placement)] = peak_rss_kib(t.pids())
            rss[("direct", placement)] = peak_rss_kib([up_proc.pid])
        finally:
            for t in targets:
                t.stop()
            if "up_proc" in locals():
                up_proc.terminate()
    log.close()

    write_report(args, scenarios, targets, results, rss, placements)
    shutil.rmtree(tmp, ignore_errors=True)


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "–"


PLACEMENT_TEXT = {
    "pinned": (f"the load generator runs on CPU {LOAD_CPU}; every target and the upstream share CPU {SERVER_CPU} "
               "(`taskset`), nginx with one worker and mcp-gateway's runtime sized to that one core, so each proxy gets "
               "the same single core"),
    "shared": ("nothing is pinned: the load generator (one thread per core), the upstream and each target are free to "
               "use every core; nginx runs one worker per core and mcp-gateway its default configuration (one worker "
               "per core, `[server] runtime` default)"),
}


def write_report(args, scenarios, targets, results, rss, placements):
    names = [t.name for t in targets]
    gw_names = [n for n in names if n.startswith("mcp-gateway")]
    both = len(placements) > 1
    lines = []
    w = lines.append
    w("# Benchmarks")
    w("")
    w("Generated by the benchmark harness; do not edit by hand.")
    w("")
    w(f"- **Command:** `{args.command}`" + (" (quick smoke run: not for quoting)" if args.quick else ""))
    w(f"- **Date:** {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    w(f"- **Machine:** {machine()}")
    for pl in placements:
        w(f"- **Placement{' ' + pl if both else ''}:** {PLACEMENT_TEXT[pl]}.")
    w(f"- **Runs:** {args.reps} per scenario and target, interleaved target by target; each {args.warmup:g} s warm-up + "
      f"{args.duration:g} s measured, {args.connections} keep-alive HTTP/1.1 connections. Tables quote the run with the median throughput.")
    w(f"- **Versions:** {version_of([shutil.which('nginx') or '/usr/sbin/nginx', '-v'])}; "
      "mcp-proxy 0.6.0 (from the Rust package registry, built with --no-default-features --features protocol-2026-07-28); "
      f"{version_of([os.path.join(REL, 'mcp-gateway'), '--version'])}.")
    w("- **Upstream:** `bench-upstream`, a minimal MCP server (examples crate) answering `tools/call` with a result of the "
      "requested size, as JSON or one SSE event. **Load:** `bench-load` (examples crate): legacy calls carry a live "
      "`Mcp-Session-Id` from `initialize`; modern calls are 2026-07-28 sessionless with `_meta` and the mirrored headers. "
      "Open-loop latency is measured from each call's due time (no coordinated omission).")
    for t in targets:
        if t.note:
            w(f"- **{t.name}:** {t.note}.")
        for era, why in t.unsupported.items():
            w(f"- **{t.name}** could not serve {era}-era calls: `{why}`.")
    w("")
    w("![latency by percentile](benchmarks-latency.svg)")
    w("")
    for sc in scenarios:
        open_loop = sc[4] != "closed"
        w(f"## {sc[0]}")
        w("")
        pcol = "placement | " if both else ""
        palign = "---|" if both else ""
        if open_loop:
            w(f"| target | {pcol}achieved req/s | p50 | p99 | p99.9 | p50 added over direct | p99 added over direct | CPU µs/req | errors |")
            w(f"|---|{palign}---:|---:|---:|---:|---:|---:|---:|---:|")
        else:
            w(f"| target | {pcol}req/s | vs nginx | vs mcp-proxy | p50 | p99 | p99.9 | CPU µs/req | errors |")
            w(f"|---|{palign}---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in names:
            for pl in placements:
                d, ng, mp = (results.get((x, sc[0], pl)) for x in ("direct", "nginx", "mcp-proxy"))
                r = results.get((n, sc[0], pl))
                pc = f"{pl} | " if both else ""
                if not r:
                    w(f"| {n} | {pc}n/a | | | | | | | |")
                    continue
                lat = r["latency_us"]
                if open_loop:
                    add50 = fmt_us(lat["p50"] - d["latency_us"]["p50"]) if d and n != "direct" else "–"
                    add99 = fmt_us(lat["p99"] - d["latency_us"]["p99"]) if d and n != "direct" else "–"
                    w(f"| {n} | {pc}{r['throughput']:.0f} | {fmt_us(lat['p50'])} | {fmt_us(lat['p99'])} | {fmt_us(lat['p999'])} | "
                      f"{add50} | {add99} | {r['cpu_us_per_req']:.0f} | {r['errors']} |")
                else:
                    w(f"| {n} | {pc}{r['throughput']:.0f} | {ratio(r['throughput'], ng['throughput'] if ng else 0)} | "
                      f"{ratio(r['throughput'], mp['throughput'] if mp else 0)} | {fmt_us(lat['p50'])} | {fmt_us(lat['p99'])} | "
                      f"{fmt_us(lat['p999'])} | {r['cpu_us_per_req']:.0f} | {r['errors']} |")
        w("")
    w("## Peak memory (VmHWM over the whole run)")
    w("")
    w(f"| target | {'placement | ' if both else ''}peak RSS | vs nginx |")
    w(f"|---|{'---|' if both else ''}---:|---:|")
    for n in names:
        for pl in placements:
            if (n, pl) in rss:
                w(f"| {n}{' (the upstream alone)' if n == 'direct' else ''} | {pl + ' | ' if both else ''}"
                  f"{rss[(n, pl)] / 1024:.1f} MiB | {ratio(rss[(n, pl)], rss.get(('nginx', pl), 0))} |")
    w("")
    w("## Targets")
    w("")
    w("Issue 15's targets: pass-through at or beyond nginx (throughput, added latency, memory, and a "
      "shared-cores p99 within 1.5× of nginx's); the full stack (all five layers) at ≥ 0.7× nginx and "
      "≥ 4× mcp-proxy. The other configurations are measured for reference, without a target.")
    w("")
    w("| target | measured | verdict |")
    w("|---|---|---|")
    for g in gw_names:
        passthrough = g == "mcp-gateway passthrough"
        full = g == "mcp-gateway full"
        if not (passthrough or full):
            continue
        floor = 1.0 if passthrough else 0.7
        for pl in placements:
            tag = f", {pl}" if both else ""
            for sc in scenarios:
                r, ng, mp, d = (results.get((x, sc[0], pl)) for x in (g, "nginx", "mcp-proxy", "direct"))
                if not (r and ng):
                    continue
                if sc[4] == "closed":
                    if full and sc[3] != 200:
                        continue
                    q = r["throughput"] / ng["throughput"]
                    w(f"| {g}: throughput ≥ {floor:g}× nginx ({sc[0]}{tag}) | {q:.2f}× nginx | {'met' if q >= floor else f'missed by {(floor - q) / floor * 100:.0f}%'} |")
                    if passthrough and pl == "shared":
                        q = r["latency_us"]["p99"] / max(ng["latency_us"]["p99"], 1)
                        w(f"| {g}: p99 ≤ 1.5× nginx's ({sc[0]}{tag}) | {fmt_us(r['latency_us']['p99'])} vs {fmt_us(ng['latency_us']['p99'])} ({q:.2f}×) | {'met' if q <= 1.5 else 'missed'} |")
                    if full and mp:
                        q = r["throughput"] / mp["throughput"]
                        w(f"| {g}: ≥ 4× mcp-proxy ({sc[0]}{tag}) | {q:.2f}× mcp-proxy | {'met' if q >= 4 else 'missed'} |")
                elif d and passthrough:
                    for p in ("p50", "p99"):
                        ours = r["latency_us"][p] - d["latency_us"][p]
                        theirs = ng["latency_us"][p] - d["latency_us"][p]
                        if theirs <= 0:
                            # nginx measured at or below direct at this percentile: the run's
                            # noise is larger than what nginx adds, so there is nothing to
                            # compare against.
                            verdict = "no verdict (nginx's figure is below direct's: noise)"
                        else:
                            verdict = "met" if ours <= theirs else f"missed by {fmt_us(ours - theirs)}"
                        w(f"| {g}: added {p} ≤ nginx's ({sc[0]}{tag}) | {fmt_us(ours)} vs {fmt_us(theirs)} | {verdict} |")
            if passthrough and (g, pl) in rss and ("nginx", pl) in rss:
                q = rss[(g, pl)] / rss[("nginx", pl)]
                w(f"| {g}: peak RSS ≤ 2× nginx{' (' + pl + ')' if both else ''} | {q:.2f}× | {'met' if q <= 2 else 'missed'} |")
    w("")
    w("Where a target is missed, [performance.md](performance.md) has the profile (callgrind, "
      "`scripts/bench/callgrind`): where the instructions of a proxied call go, and what to change next.")
    w("")
    w("## Micro-benchmarks")
    w("")
    w("`cargo bench -p mcp-gateway-core` runs the Criterion benchmarks of the per-request hot paths "
      "(classification, era checks, `_meta` injection, SSE decoding); see `mcp-gateway-core/benches/`. "
      "`cargo bench -p mcp-gateway-layers --features limits-redis --bench limits` times a limits decision "
      "in memory and through Redis and prints the memory per tracked key; see [limits.md](limits.md) "
      "and [performance.md](performance.md). "
      "`cargo bench -p mcp-gateway-layers --features stdio --bench stdio` times one small `tools/call` "
      "through a stdio upstream and back, in process (the bench binary is its own child).")
    w("")
    w("## stdio upstreams")
    w("")
    w("The `mcp-gateway stdio` row runs `bench-upstream --stdio` as the gateway's child process "
      "(`scripts/bench/configs/stdio.toml`, one `shared` child): the same server as every other row, "
      "reached over stdio instead of HTTP. Its difference from `mcp-gateway passthrough` is the cost "
      "of the stdio transport — the request's id rewritten and written to a pipe, the answer read "
      "from one and its id restored — against a pooled HTTP/1.1 connection. The child shares the "
      "gateway's core. See [stdio.md](stdio.md).")
    w("")
    w("## Soak and fault runs")
    w("")
    w("Soak and fault runs: see [soak.md](soak.md) (`scripts/soak`, not run in CI).")
    w("")
    open_scenarios = [sc[0] for sc in scenarios if sc[4] != "closed"]
    chart = os.path.join(os.path.dirname(args.out), "benchmarks-latency.svg")
    if open_scenarios and not args.block:
        # The chart shows the first placement measured (pinned when both are).
        svg_chart({(k[0], k[1]): v for k, v in results.items() if k[2] == placements[0]}, open_scenarios[0], chart)
    # Blocks written by other runs (`<!-- NAME:begin -->` … `<!-- NAME:end -->`: the reload
    # soak's, a run of a few configurations) are kept as they are, after this run's report;
    # --block NAME writes this run's report as such a block of the existing file instead.
    try:
        old = open(args.out).read()
    except OSError:
        old = ""
    blocks = {m.group(1): m.group(0) for m in re.finditer(r"<!-- ([a-z0-9-]+):begin -->.*?<!-- \1:end -->", old, re.S)}
    if args.block:
        # One heading level down: the block is a section of the full report.
        body = ["#" + ln if ln.startswith("#") else ln for ln in lines if not ln.startswith("![")]
        body[0] = f"## Run of {', '.join(args.configs.split(',')) if args.configs else 'every configuration'} side by side ({args.block})"
        body = [ln for ln in body if ln != "Generated by the benchmark harness; do not edit by hand."]
        blocks[args.block] = "\n".join([f"<!-- {args.block}:begin -->"] + body + [f"<!-- {args.block}:end -->"])
        head = re.split(r"<!-- [a-z0-9-]+:begin -->", old, maxsplit=1)[0].rstrip("\n")
        lines = [head]
    for name, text in blocks.items():
        lines += ["", text, ""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    json_out = os.path.splitext(args.out)[0] + (f"-{args.block}.json" if args.block else ".json")
    with open(json_out, "w") as f:
        json.dump({" | ".join(k): v for k, v in results.items()}, f, indent=1)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
