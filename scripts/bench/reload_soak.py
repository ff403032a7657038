#!/usr/bin/env python3
"""Reload soak: mixed traffic and open SSE streams while the configuration is reloaded.

Run it through the wrapper, which builds the release binaries first:

    scripts/bench/reload-soak [--minutes 10] [--baseline-minutes 3] [--rate 2000]
                              [--streams 200] [--every 5]

Servers: `bench-upstream` (the calls) and the rmcp `demo-server` (legacy sessions whose GET
streams stay open), both behind one `mcp-gateway` with `[limits]` and an admin listener.
Load: `bench-load` open loop, half legacy (sessions) and half 2026-07-28 (sessionless), at
--rate calls/s in all, on route `bench`; --streams legacy GET streams held open on route
`streams`, each session pinged once a minute as a live client's would be (rmcp servers end a
session after 5 minutes without a message). Two phases of the same load: a baseline without reloads, then --minutes with a
reload (`POST /reload`) every --every seconds, each one adding or removing route `extra` and
changing the limits (a rule's rate each time, the request rate every other time). Routes
`bench` and `streams` never change, so none of their calls may fail and none of their
streams may end. Reports failed calls, streams cut, reloads applied, and p50/p99 latency
of each phase; writes the result into docs/benchmarks.md (its "Reload soak" block).
"""
import argparse
import datetime
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import REL, ROOT, free_port, machine, wait_port  # noqa: E402

BEGIN = "<!-- reload-soak:begin -->"
END = "<!-- reload-soak:end -->"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def config(port, admin, bench, demo, extra, rule_tpm, rpm):
    text = f"""[server]
listen = "127.0.0.1:{port}"
drain_timeout = "2s"
[admin]
listen = "127.0.0.1:{admin}"
[limits]
key = "agent"
requests_per_minute = {rpm}
[[limits.rules]]
tools = ["never_called"]
tokens_per_minute = {rule_tpm}
[upstreams.bench]
url = "http://127.0.0.1:{bench}/mcp"
[upstreams.streams]
url = "http://127.0.0.1:{demo}/mcp"
# The demo server sends nothing on its GET streams (pings go on POSTs): without this they
# would end after the default 5 minutes of upstream silence, not what is measured here.
sse_idle_timeout = "0s"
"""
    if extra:
        text += f'[upstreams.extra]\nurl = "http://127.0.0.1:{bench}/mcp"\n'
    return text


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Stream(threading.Thread):
    """One legacy session on route `streams` holding its GET stream open."""

    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.opened = threading.Event()
        self.error = None
        self.ended_early = False
        self.ended_at = None
        self.pings = 0

    def run(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "soak", "version": "0"}}})
            hdr = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
            c.request("POST", "/mcp/streams", init, hdr)
            r = c.getresponse()
            sid = r.getheader("mcp-session-id")
            r.read()
            hdr.update({"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"})
            c.request("POST", "/mcp/streams", json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}), hdr)
            c.getresponse().read()
            c.close()
            s = socket.create_connection(("127.0.0.1", self.port))
            s.sendall((f"GET /mcp/streams HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n"
                       f"mcp-session-id: {sid}\r\nmcp-protocol-version: 2025-11-25\r\n\r\n").encode())
            s.settimeout(1.0)
            head = s.recv(4096)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"GET stream refused: {head[:80]!r}")
            self.opened.set()
            # A live client: a ping on its session every minute (the demo server, as rmcp's
            # servers do, ends a session after 5 minutes without a message, and its stream
            # with it — which is not what is measured here).
            ping = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"})
            last_ping = time.time()
            while not self.stop.is_set():
                if time.time() - last_ping >= 60:
                    # A new connection each time: an idle keep-alive one is closed meanwhile.
                    pc = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    pc.request("POST", "/mcp/streams", ping, hdr)
                    r = pc.getresponse()
                    r.read()
                    pc.close()
                    if r.status != 200:
                        raise RuntimeError(f"ping on the session answered {r.status}")
                    self.pings += 1
                    last_ping = time.time()
                try:
                    data = s.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    self.ended_early = True
                    self.ended_at = time.time()
                    break
            s.close()
        except Exception as e:  # noqa: BLE001 (reported, not raised, from a thread)
            self.error = str(e)
            self.opened.set()


def bench_load(url, era, rate, seconds, connections):
    argv = [os.path.join(REL, "bench-load"), "--url", url, "--era", era, "--format", "json",
            "--size", "200", "--rate", f"{rate:g}", "--connections", str(connections),
            "--duration", f"{seconds:g}s", "--warmup", "0s", "--threads", "1", "--label", f"reload soak {era}"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def phase(url, rate, seconds, connections):
    procs = [bench_load(url, era, rate / 2, seconds, connections) for era in ("legacy", "modern")]
    out = []
    for p in procs:
        o, e = p.communicate(timeout=seconds + 120)
        if p.returncode != 0:
            raise RuntimeError(f"bench-load failed: {e.strip()}")
        out.append(json.loads(o))
    return out


def reload_loop(admin, path, args, ports, stop, results):
    n = 0
    while not stop.wait(args.every):
        n += 1
        write_atomic(path, config(*ports, extra=(n % 2 == 1), rule_tpm=1000 + n, rpm=100_000_000 + (n // 2) % 2))
        t0 = time.perf_counter()
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{admin}/reload", method="POST")
            with urllib.request.urlopen(req, timeout=30) as r:
                report = json.load(r)
        except Exception as e:  # noqa: BLE001
            report = {"result": "error", "errors": [str(e)]}
        results.append((report.get("result"), time.perf_counter() - t0, report.get("errors", [])))


def summary(runs):
    calls = sum(r["all_requests"] for r in runs)
    errors = sum(r["errors"] for r in runs)
    return calls, errors, {r["label"]: r for r in runs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--baseline-minutes", type=float, default=3)
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--every", type=float, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--command", default="scripts/bench/reload-soak")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="reload-soak-")
    procs = []
    stop_streams = threading.Event()
    try:
        bench, demo, port, admin = free_port(), free_port(), free_port(), free_port()
        logf = open(os.path.join(tmp, "servers.log"), "w")
        up = subprocess.Popen([os.path.join(REL, "bench-upstream"), "--listen", f"127.0.0.1:{bench}"], stdout=logf, stderr=logf)
        procs.append(up)
        dm = subprocess.Popen([os.path.join(REL, "demo-server"), "--listen", f"127.0.0.1:{demo}"], stdout=logf, stderr=logf)
        procs.append(dm)
        wait_port(bench, up)
        wait_port(demo, dm)
        path = os.path.join(tmp, "gw.toml")
        ports = (port, admin, bench, demo)
        write_atomic(path, config(*ports, extra=False, rule_tpm=1000, rpm=100_000_000))
        gwlog = open(os.path.join(tmp, "gateway.log"), "w")
        gw = subprocess.Popen([os.path.join(REL, "mcp-gateway"), "serve", "--config", path],
                              stdout=gwlog, stderr=gwlog, env={**os.environ, "RUST_LOG": "warn"})
        procs.append(gw)
        wait_port(port, gw)
        wait_port(admin, gw)
        url = f"http://127.0.0.1:{port}/mcp/bench"

        streams = [Stream(port, stop_streams) for _ in range(args.streams)]
        for s in streams:
            s.start()
        for s in streams:
            s.opened.wait(30)
        failed_open = [s.error for s in streams if s.error]
        if failed_open:
            raise RuntimeError(f"{len(failed_open)} streams did not open: {failed_open[0]}")
        t_streams = time.time()
        log(f"{args.streams} streams open; baseline {args.baseline_minutes:g} min at {args.rate:g} calls/s")

        base = phase(url, args.rate, args.baseline_minutes * 60, args.connections)
        log(f"reloads every {args.every:g} s for {args.minutes:g} min")
        reloads = []
        stop_reloads = threading.Event()
        t = threading.Thread(target=reload_loop, args=(admin, path, args, ports, stop_reloads, reloads), daemon=True)
        t.start()
        during = phase(url, args.rate, args.minutes * 60, args.connections)
        stop_reloads.set()
        t.join(60)
        cut = sum(1 for s in streams if s.ended_early)
        cut_at = sorted(round(s.ended_at - t_streams) for s in streams if s.ended_at)
        stream_errors = [s.error for s in streams if s.error]
        stop_streams.set()
        for s in streams:
            s.join(5)
        if gw.poll() is not None:
            raise RuntimeError(f"the gateway exited ({gw.returncode}) during the soak")
    finally:
        stop_streams.set()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()

    b_calls, b_err, b = summary(base)
    d_calls, d_err, d = summary(during)
    ok = sum(1 for r in reloads if r[0] == "ok")
    bad = [r for r in reloads if r[0] != "ok"]
    took = sorted(r[1] for r in reloads) or [0]

    def p(runs, key):
        return {era: runs[f"reload soak {era}"]["latency_us"][key] for era in ("legacy", "modern")}

    bp99, dp99 = p(b, "p99"), p(d, "p99")
    bp50, dp50 = p(b, "p50"), p(d, "p50")
    ratio = {era: dp99[era] / max(bp99[era], 1) for era in dp99}
    log(f"baseline: {b_calls} calls, {b_err} failed; p99 {bp99}")
    if cut_at:
        log(f"streams ended at (s after opening): {cut_at[:10]}")
    log(f"reloads:  {d_calls} calls, {d_err} failed; p99 {dp99}; {ok} reloads ok, {len(bad)} refused; {cut} streams cut")

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, "## Reload soak", "",
             f"`{args.command}` ({stamp}; {machine()}). `bench-load` open loop at {args.rate:g} calls/s "
             f"(half legacy with sessions, half 2026-07-28 sessionless; 200-byte JSON results from `bench-upstream`) "
             f"on route `bench`, and {args.streams} legacy GET streams held open on route `streams` (the rmcp demo "
             f"server). Baseline: {args.baseline_minutes:g} min without reloads. Then {args.minutes:g} min with "
             f"`POST /reload` every {args.every:g} s, each adding or removing route `extra` and changing `[limits]`; "
             f"routes `bench` and `streams` unchanged.", "",
             "| phase | calls | failed | legacy p50 | legacy p99 | modern p50 | modern p99 |",
             "|---|---|---|---|---|---|---|",
             f"| no reloads | {b_calls} | {b_err} | {bp50['legacy']} µs | {bp99['legacy']} µs | {bp50['modern']} µs | {bp99['modern']} µs |",
             f"| reload every {args.every:g} s | {d_calls} | {d_err} | {dp50['legacy']} µs | {dp99['legacy']} µs | {dp50['modern']} µs | {dp99['modern']} µs |",
             "",
             f"- Reloads applied: {ok} of {len(reloads)} (median {took[len(took) // 2] * 1000:.1f} ms, "
             f"slowest {took[-1] * 1000:.1f} ms, from `POST /reload` to its answer).",
             f"- Streams cut on the unchanged route: {cut} of {args.streams}"
             + (f" (ended at {cut_at[:5]} s after opening)" if cut_at else "")
             + (f"; stream errors: {stream_errors[:3]}" if stream_errors else "") + ".",
             f"- p99 with reloads / p99 without: legacy {ratio['legacy']:.2f}×, modern {ratio['modern']:.2f}× "
             "(the machine is shared: the two phases run one after the other, not side by side).",
             ]
    if bad:
        lines.append(f"- Refused reloads: {bad[:3]}")
    lines += [END, ""]
    block = "\n".join(lines)
    text = open(args.out).read() if os.path.exists(args.out) else ""
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with open(args.out, "w") as f:
        f.write(text)
    log(f"wrote {args.out}")
    return 0 if (d_err == 0 and cut == 0 and not bad) else 1


if __name__ == "__main__":
    sys.exit(main())
