#!/usr/bin/env python3
"""Soak and fault runs of mcp-gateway with every governing layer on; writes docs/soak.md.

Run it through the wrapper, which builds the release binaries first:

    scripts/soak [--minutes 10] [--rate 500] [--phases soak,sink,redis,sigterm]

The gateway runs scripts/bench/soak.toml: [auth] (a JWT issued by bench-upstream), [limits]
and [sessions] with `store = "redis"` (a redis-server this script starts on a free port),
[telemetry] exporting every span, and [audit] with `fsync = "always"`. Four phases, each
printing one line of figures and a section of the report:

  soak     steady open-loop calls (legacy and modern, side by side, from `bench-load`) for
           --minutes; the gateway's RSS sampled every few seconds; then the audit records
           counted against the calls answered, and `mcp-gateway audit verify`.
  sink     (root only: it mounts a tmpfs) the audit log on a 2 MiB tmpfs with
           `write_timeout = "1s"`: the tmpfs filled until ENOSPC, then freed; then the log's
           folder replaced by a file, then put back. Measures how fast calls are refused
           (status, JSON-RPC code), /readyz on the admin listener, the time to recover, and
           that every accepted call has its record and the chain verifies.
  redis    Redis killed (SIGKILL) under load, calls kept going ~10 s, Redis restarted on the
           same port: the gateway's answers before, during and after, from its audit log.
  sigterm  SIGTERM to the gateway under load: in-flight calls that failed, time to exit,
           records of every accepted call, `audit verify`.

Every process it starts is stopped and the tmpfs unmounted at the end, on failure too.
"""
import argparse
import collections
import datetime
import errno
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import REL, ROOT, free_port, machine, version_of, wait_port  # noqa: E402

PHASES = ("soak", "sink", "redis", "sigterm")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CALL_ARGS = {"size": 200, "format": "json"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def ms(seconds):
    return "–" if seconds is None else f"{seconds * 1000:.0f} ms"


# --- processes ----------------------------------------------------------------------------------

class Gateway:
    def __init__(self, name, proc, port, admin, token, audit, logfile):
        self.name, self.proc, self.port, self.admin = name, proc, port, admin
        self.token, self.audit, self.logfile = token, audit, logfile

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/mcp/bench"

    def rss_kib(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def stop(self, timeout=30):
        """SIGTERM, then the seconds it took to exit (None when it had to be killed)."""
        if self.proc.poll() is not None:
            return 0.0
        t0 = time.time()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
            return time.time() - t0
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def warnings(self):
        """The gateway's log lines at WARN or ERROR, as "LEVEL target: message" with their counts;
        the start-up warning about the random session key (expected here) left out."""
        seen = collections.Counter()
        try:
            with open(self.logfile, errors="replace") as f:
                for line in f:
                    line = ANSI.sub("", line).strip()
                    parts = line.split(None, 2)
                    if len(parts) == 3 and parts[1] in ("WARN", "ERROR") and "no [sessions] key_file" not in line:
                        # The message without its variable fields (key=value after the message).
                        msg = re.split(r" \w+=", parts[2], maxsplit=1)[0]
                        seen[f"{parts[1]} {msg}"] += 1
        except OSError:
            pass
        return seen


class Stack:
    """The processes of a run: redis-server, bench-upstream, gateways. stop_all() ends them all."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []
        self.mounts = []
        self.redis = None
        self.redis_port = free_port()
        self.upstream_port = None

    def spawn(self, argv, logname):
        f = open(os.path.join(self.tmp, logname), "a")
        p = subprocess.Popen(argv, stdout=f, stderr=f, stdin=subprocess.DEVNULL)
        f.close()
        self.procs.append(p)
        return p

    def start_redis(self):
        self.redis = self.spawn(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", self.tmp], "redis.log")
        wait_port(self.redis_port, self.redis)

    def kill_redis(self):
        self.redis.kill()
        self.redis.wait()

    def redis_dbsize(self):
        with socket.create_connection(("127.0.0.1", self.redis_port), timeout=2) as s:
            s.sendall(b"DBSIZE\r\n")
            return int(s.recv(64).decode().strip().lstrip(":"))

    def start_upstream(self):
        self.upstream_port = free_port()
        p = self.spawn([os.path.join(REL, "bench-upstream"), "--listen", f"127.0.0.1:{self.upstream_port}"],
                       "upstream.log")
        wait_port(self.upstream_port, p)

    def start_gateway(self, name, audit, write_timeout="5s"):
        port, admin = free_port(), free_port()
        upstream = f"http://127.0.0.1:{self.upstream_port}/mcp"
        with open(os.path.join(HERE, "soak.toml")) as f:
            text = f.read()
        text = (text.replace("{listen}", f"127.0.0.1:{port}").replace("{admin}", f"127.0.0.1:{admin}")
                .replace("{upstream}", upstream).replace("{redis}", f"redis://127.0.0.1:{self.redis_port}/0")
                .replace("{audit}", audit).replace("{write_timeout}", write_timeout))
        conf = os.path.join(self.tmp, f"gateway-{name}.toml")
        with open(conf, "w") as f:
            f.write(text)
        logfile = os.path.join(self.tmp, f"gateway-{name}.log")
        p = self.spawn([os.path.join(REL, "mcp-gateway"), "serve", "--config", conf], os.path.basename(logfile))
        wait_port(port, p)
        wait_port(admin, p)
        # The `# bench-token: jwt` mechanism of scripts/bench: a JWT for this route, from bench-upstream.
        aud = f"http://127.0.0.1:{port}/mcp/bench"
        token = urllib.request.urlopen(f"http://127.0.0.1:{self.upstream_port}/token?aud={aud}").read().decode()
        return Gateway(name, p, port, admin, token, audit, logfile)

    def mount_tmpfs(self, path, size):
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)
        self.mounts.append(path)

    def unmount(self, path):
        if path not in self.mounts:
            return
        r = subprocess.run(["umount", path], capture_output=True, text=True)
        if r.returncode != 0:
            log(f"umount {path}: {r.stderr.strip()}; unmounting lazily")
            subprocess.run(["umount", "-l", path])
        self.mounts.remove(path)

    def stop_all(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for m in list(self.mounts):
            self.unmount(m)


def bench_load(gw, era, rate, seconds, connections=16):
    """Starts bench-load (open loop, no warm-up: every call counts); .communicate() gives its JSON."""
    argv = [os.path.join(REL, "bench-load"), "--url", gw.url, "--era", era, "--format", "json",
            "--size", str(CALL_ARGS["size"]), "--rate", f"{rate:g}", "--connections", str(connections),
            "--duration", f"{seconds:g}s", "--warmup", "0s", "--threads", "1", "--token", gw.token,
            "--label", f"soak {era}"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def bench_load_result(p, timeout):
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"bench-load failed: {err.strip()}")
    return json.loads(out)


# --- probes: calls whose every answer is kept, with its time ------------------------------------

class Call:
    __slots__ = ("id", "era", "start", "end", "status", "code", "exc")

    def __init__(self, id, era, start, end, status, code, exc):
        self.id, self.era, self.start, self.end = id, era, start, end
        self.status, self.code, self.exc = status, code, exc

    @property
    def ok(self):
        return self.status == 200 and self.code is None and self.exc is None

    def kind(self):
        if self.exc:
            return self.exc
        return f"{self.status}" + (f" / {self.code}" if self.code is not None else "")


def jsonrpc_code(body):
    text = body.decode(errors="replace")
    for chunk in [text] + [l[5:].strip() for l in text.splitlines() if l.startswith("data:")]:
        try:
            obj = json.loads(chunk)
        except ValueError:
            continue
        if isinstance(obj, dict):
            err = obj.get("error")
            return err.get("code") if isinstance(err, dict) else None
    return None


class Prober:
    """Threads, one per era given, each sending a `tools/call` every `interval` seconds on one
    keep-alive connection, with ids unique to the run (so each can be found in the audit log)."""

    def __init__(self, gw, eras, interval, tag):
        self.gw, self.eras, self.interval, self.tag = gw, eras, interval, tag
        self.calls = []
        self.stopping = threading.Event()
        self.threads = []

    def headers(self, era, session=None):
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
             "Authorization": f"Bearer {self.gw.token}"}
        if era == "modern":
            h.update({"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "payload"})
        else:
            h["MCP-Protocol-Version"] = "2025-11-25"
            if session:
                h["Mcp-Session-Id"] = session
        return h

    def connect(self, era):
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=15)
        session = None
        if era == "legacy":
            init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                    "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                               "clientInfo": {"name": "soak-probe", "version": "0"}}}
            conn.request("POST", "/mcp/bench", json.dumps(init), self.headers("legacy"))
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise ConnectionError(f"initialize answered {r.status}")
            session = r.getheader("Mcp-Session-Id")
            conn.request("POST", "/mcp/bench", json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                         self.headers("legacy", session))
            r = conn.getresponse()
            r.read()
        return conn, session

    def body(self, era, cid):
        params = {"name": "payload", "arguments": CALL_ARGS}
        if era == "modern":
            params["_meta"] = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                               "io.modelcontextprotocol/clientInfo": {"name": "soak-probe", "version": "0"},
                               "io.modelcontextprotocol/clientCapabilities": {}}
        return json.dumps({"jsonrpc": "2.0", "id": cid, "method": "tools/call", "params": params})

    def run(self, idx, era):
        conn, session, n = None, None, 0
        due = time.monotonic()
        while not self.stopping.is_set():
            wait = due - time.monotonic()
            if wait > 0 and self.stopping.wait(wait):
                break
            due = max(due + self.interval, time.monotonic() - self.interval)
            if conn is None:
                t0 = time.time()
                try:
                    conn, session = self.connect(era)
                except Exception as e:  # noqa: BLE001 - every failure is a figure
                    self.calls.append(Call(None, era, t0, time.time(), None, None, f"connect: {type(e).__name__}"))
                    conn = None
                    self.stopping.wait(0.05)
                    continue
            n += 1
            cid = f"{self.tag}-{idx}-{n}"
            t0 = time.time()
            try:
                conn.request("POST", "/mcp/bench", self.body(era, cid), self.headers(era, session))
                r = conn.getresponse()
                data = r.read()
                self.calls.append(Call(cid, era, t0, time.time(), r.status, jsonrpc_code(data), None))
                if r.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001
                self.calls.append(Call(cid, era, t0, time.time(), None, None, type(e).__name__))
                conn.close()
                conn = None
                self.stopping.wait(0.05)
        if conn:
            conn.close()

    def start(self):
        for i, era in enumerate(self.eras):
            t = threading.Thread(target=self.run, args=(i, era), daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=20)


class ReadyPoller:
    """GET /readyz on the admin listener every 50 ms: (time, status or None)."""

    def __init__(self, gw):
        self.url = f"http://127.0.0.1:{gw.admin}/readyz"
        self.samples = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stopping.wait(0.05):
            t = time.time()
            try:
                status = urllib.request.urlopen(self.url, timeout=2).status
            except urllib.error.HTTPError as e:
                status = e.code
            except OSError:
                status = None
            self.samples.append((t, status))

    def first(self, after, status):
        return next((t - after for t, s in self.samples if t >= after and s == status), None)

    def start(self):
        self.thread.start()

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=5)


class RssSampler:
    def __init__(self, gw, interval, progress_every=60.0, total=None):
        self.gw, self.interval, self.progress_every, self.total = gw, interval, progress_every, total
        self.samples = []  # (seconds since start, KiB)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        t0 = time.time()
        next_progress = self.progress_every
        while not self.stopping.wait(self.interval):
            kib = self.gw.rss_kib()
            if kib is None:
                break
            el = time.time() - t0
            self.samples.append((el, kib))
            if el >= next_progress:
                next_progress += self.progress_every
                log(f"  soak: {el / 60:.1f}/{self.total / 60:g} min, gateway RSS {mib(kib)}")

    def start(self):
        self.thread.start()

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=10)


# --- the audit log ------------------------------------------------------------------------------

def audit_files(path):
    d, base = os.path.dirname(path), os.path.basename(path)
    names = [n for n in os.listdir(d) if n == base or (n.startswith(base + ".") and n[len(base) + 1:].isdigit())]
    return [os.path.join(d, n) for n in sorted(names)]


def audit_records(files):
    for p in files:
        with open(p) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def audit_time(rec):
    return datetime.datetime.strptime(rec["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def verify(files, tmp):
    r = subprocess.run([os.path.join(REL, "mcp-gateway"), "audit", "verify"] + files,
                       capture_output=True, text=True, timeout=600)
    msg = " ".join((r.stdout + " " + r.stderr).split()).replace(tmp + os.sep, "")
    if msg.startswith("ok: "):
        msg = msg[4:]
    return r.returncode == 0, msg


def verdict(ok, msg):
    return f"ok ({msg})" if ok else f"**failed**: {msg}"


def check_records(calls, files):
    """Every probe call answered 200 has exactly one record of status 200; and what the others got."""
    by_id = collections.defaultdict(list)
    cut = collections.defaultdict(list)  # `answer_cut` records: the answer never reached the client whole
    for rec in audit_records(files):
        if rec.get("event") == "request" and isinstance(rec.get("id"), str):
            by_id[rec["id"]].append(rec)
        elif rec.get("event") == "answer_cut" and isinstance(rec.get("id"), str):
            cut[rec["id"]].append(rec)
    accepted = [c for c in calls if c.id and c.ok]
    missing = [c.id for c in accepted if not any(r.get("status") == 200 for r in by_id.get(c.id, []))]
    dup = [c.id for c in accepted if len(by_id.get(c.id, [])) > 1]
    others = collections.Counter()
    for c in calls:
        if c.id and not c.ok:
            recs = by_id.get(c.id, []) + cut.get(c.id, [])
            others[f"{c.kind()} → " + (", ".join(f"record {r.get('event')} {r.get('status')} {r.get('outcome')}"
                                                 for r in recs) or "no record")] += 1
    return {"accepted": len(accepted), "missing": len(missing), "missing_ids": missing[:5],
            "duplicated": len(dup), "others": others}


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


# --- phases -------------------------------------------------------------------------------------

def phase_soak(st, args):
    gw = st.start_gateway("soak", os.path.join(st.tmp, "soak-audit", "audit.jsonl"))
    seconds = args.minutes * 60
    time.sleep(1)
    idle = gw.rss_kib()
    sampler = RssSampler(gw, args.rss_interval, total=seconds)
    loads = {era: bench_load(gw, era, args.rate / 2, seconds, args.connections) for era in ("legacy", "modern")}
    sampler.start()
    res = {era: bench_load_result(p, seconds + 300) for era, p in loads.items()}
    sampler.stop()
    end_kib = gw.rss_kib()
    exit_s = gw.stop()
    files = audit_files(gw.audit)
    kinds = collections.Counter()
    for rec in audit_records(files):
        kinds[(rec.get("event"), rec.get("method"), rec.get("outcome"), rec.get("status"))] += 1
    ok, msg = verify(files, st.tmp)
    answered = sum(r["all_requests"] for r in res.values())
    errors = sum(r["errors"] for r in res.values())
    call_records = sum(n for (ev, m, _, _), n in kinds.items() if ev == "request" and m == "tools/call")
    call_not_ok = sum(n for (ev, m, o, _), n in kinds.items() if ev == "request" and m == "tools/call" and o != "ok")
    samples = sampler.samples or [(0, idle)]
    rss = [k for _, k in samples]
    mid = min(samples, key=lambda s: abs(s[0] - seconds / 2))[1]
    r = {"seconds": seconds, "rate": args.rate, "connections": args.connections, "loads": res,
         "answered": answered, "errors": errors, "records": sum(kinds.values()), "call_records": call_records,
         "call_records_not_ok": call_not_ok, "diff": call_records - answered, "kinds": kinds,
         "expected_other": args.connections * 3, "files": len(files), "verify_ok": ok, "verify": msg,
         "rss_idle": idle, "rss_start": rss[0], "rss_mid": mid, "rss_end": rss[-1], "rss_max": max(rss),
         "rss_after": end_kib, "rss_samples": samples, "exit_s": exit_s, "warnings": gw.warnings()}
    log(f"soak: {answered} calls answered 200 in {seconds / 60:g} min (legacy {res['legacy']['all_requests']}, "
        f"modern {res['modern']['all_requests']}), {errors} errors, {call_not_ok} not ok in the audit log; "
        f"RSS start {mib(r['rss_start'])} mid {mib(mid)} end {mib(r['rss_end'])} max {mib(r['rss_max'])}; "
        f"tools/call records {call_records} (diff {r['diff']:+d}); audit verify {'ok' if ok else 'FAILED'}: {msg}")
    return r


def fill(path):
    """Writes zeros to path until the file system is full; the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    chunk, n = b"\0" * 65536, 0
    try:
        while True:
            try:
                n += os.write(fd, chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return n


def fault_figures(calls, ready, t_fault, t_back, t_end):
    """What the probes and /readyz saw from t_fault (the fault made) to t_back (undone) and after."""
    during = [c for c in calls if c.id and t_fault <= c.start < t_back]
    first_bad = min((c for c in calls if c.id and c.end >= t_fault and not c.ok), key=lambda c: c.end, default=None)
    refused = [c for c in during if c.status == 503]
    recovered = min((c for c in calls if c.id and c.ok and c.end >= t_back), key=lambda c: c.end, default=None)
    last_bad = max((c for c in calls if c.id and not c.ok and c.start < t_end), key=lambda c: c.end, default=None)
    after = [c for c in calls if c.id and t_back <= c.start < t_end]
    first_503 = min((c for c in calls if c.id and c.end >= t_fault and c.status == 503), key=lambda c: c.end,
                    default=None)
    fail_from = t_fault + (ready.first(t_fault, 503) or 0)
    samples = [s for t, s in ready.samples if fail_from <= t < t_back]
    return {
        "during": collections.Counter(c.kind() for c in during),
        "first_503_s": first_503.end - t_fault if first_503 else None,
        "ready_samples": f"{sum(s == 503 for s in samples)} of {len(samples)}",
        "first_refusal_s": first_bad.end - t_fault if first_bad else None,
        "first_refusal": first_bad.kind() if first_bad else None,
        "refusal_latency_s": statistics.median(c.end - c.start for c in refused) if refused else None,
        "ready_503_s": ready.first(t_fault, 503),
        "recovered_s": recovered.end - t_back if recovered else None,
        "last_bad_s": (last_bad.end - t_back) if last_bad and last_bad.end >= t_back else None,
        "ready_200_s": ready.first(t_back, 200),
        "after": collections.Counter(c.kind() for c in after),
    }


def phase_sink(st, args):
    if os.geteuid() != 0:
        log("sink: skipped: mounting a tmpfs needs root")
        return {"skipped": "not run as root (it mounts a tmpfs)"}
    mnt = os.path.join(st.tmp, "sink")
    st.mount_tmpfs(mnt, "2m")
    try:
        logs = os.path.join(mnt, "logs")
        gw = st.start_gateway("sink", os.path.join(logs, "audit.jsonl"), write_timeout="1s")
        probe = Prober(gw, ["modern"] * 4, 0.1, "sink")
        ready = ReadyPoller(gw)
        probe.start()
        ready.start()
        time.sleep(3)
        # Fault 1: the file system is full.
        t1 = time.time()
        filled = fill(os.path.join(mnt, "filler"))
        time.sleep(args.fault_seconds)
        t1b = time.time()
        os.remove(os.path.join(mnt, "filler"))
        time.sleep(4)
        # Fault 2: the log's folder replaced by a file (the open log file moves with the folder).
        t2 = time.time()
        os.rename(logs, logs + ".moved")
        open(logs, "w").close()
        time.sleep(args.fault_seconds)
        t2b = time.time()
        os.remove(logs)
        os.rename(logs + ".moved", logs)
        time.sleep(4)
        t_end = time.time()
        probe.stop()
        ready.stop()
        exit_s = gw.stop()
        files = audit_files(gw.audit)
        ok, msg = verify(files, st.tmp)
        rec = check_records(probe.calls, files)
        r = {"filled": filled, "full": fault_figures(probe.calls, ready, t1, t1b, t2),
             "folder": fault_figures(probe.calls, ready, t2, t2b, t_end), "calls": len(probe.calls),
             "records": rec, "verify_ok": ok, "verify": msg, "exit_s": exit_s, "fault_seconds": args.fault_seconds,
             "warnings": gw.warnings()}
        for name in ("full", "folder"):
            f = r[name]
            log(f"sink ({'disk full' if name == 'full' else 'folder replaced by a file'}): first failed call "
                f"after {ms(f['first_refusal_s'])} ({f['first_refusal']}), first 503 after {ms(f['first_503_s'])}, refusals take {ms(f['refusal_latency_s'])}, "
                f"/readyz 503 after {ms(f['ready_503_s'])}; fixed: 200 again after {ms(f['recovered_s'])}, "
                f"/readyz 200 after {ms(f['ready_200_s'])}; during: {dict(f['during'])}")
        log(f"sink: {rec['accepted']} calls accepted, {rec['missing']} without their record, "
            f"{rec['duplicated']} with several; audit verify {'ok' if ok else 'FAILED'}: {msg}")
        return r
    finally:
        for p in st.procs:
            if p.poll() is None and "gateway-sink" in " ".join(map(str, p.args)):
                p.terminate()
                p.wait(timeout=15)
        st.unmount(mnt)


def phase_redis(st, args):
    gw = st.start_gateway("redis", os.path.join(st.tmp, "redis-audit", "audit.jsonl"))
    before, down, after = 10.0, args.redis_down, 15.0
    total = before + down + after
    loads = {era: bench_load(gw, era, args.rate / 2, total, args.connections) for era in ("legacy", "modern")}
    t0 = time.time() + 0.2
    time.sleep(before + 0.2)
    t_kill = time.time()
    st.kill_redis()
    time.sleep(down)
    t_back = time.time()
    st.start_redis()
    res = {era: bench_load_result(p, total + 120) for era, p in loads.items()}
    dbsize = st.redis_dbsize()
    exit_s = gw.stop()
    files = audit_files(gw.audit)
    ok, msg = verify(files, st.tmp)
    windows = {"before": (t0, t_kill), "Redis down": (t_kill, t_back), "after restart": (t_back, float("inf"))}
    w = {k: {"calls": 0, "not_ok": collections.Counter(), "lat": []} for k in windows}
    for rec in audit_records(files):
        if rec.get("event") != "request" or rec.get("method") != "tools/call":
            continue
        t = audit_time(rec)
        for k, (a, b) in windows.items():
            if a <= t < b or (k == "before" and t < a):
                w[k]["calls"] += 1
                if rec.get("outcome") != "ok":
                    w[k]["not_ok"][f"{rec.get('status')} {rec.get('outcome')}"] += 1
                w[k]["lat"].append(rec.get("latency_us", 0))
                break
    for k in w:
        lat = w[k].pop("lat")
        w[k].update(p50=pct(lat, 50), p99=pct(lat, 99), max=max(lat) if lat else None)
    r = {"down_s": down, "windows": w, "loads": res, "errors": sum(x["errors"] for x in res.values()),
         "first_error": next((x["first_error"] for x in res.values() if x["first_error"]), None),
         "answered": sum(x["all_requests"] for x in res.values()), "dbsize_after": dbsize, "verify_ok": ok,
         "verify": msg, "exit_s": exit_s, "warnings": gw.warnings()}
    log("redis: " + "; ".join(f"{k}: {v['calls']} calls, {sum(v['not_ok'].values())} not ok, p99 {v['p99']} µs, "
                              f"max {v['max']} µs" for k, v in w.items())
        + f"; bench-load errors {r['errors']}; Redis keys after the restart {dbsize}; "
          f"log: {counter_text(r['warnings'])}; audit verify {'ok' if ok else 'FAILED'}")
    return r


def phase_sigterm(st, args):
    gw = st.start_gateway("sigterm", os.path.join(st.tmp, "sigterm-audit", "audit.jsonl"))
    # Closed loop (each probe sends its next call when the last is answered), so that calls are
    # in flight when the signal comes.
    probe = Prober(gw, ["legacy", "modern"] * 8, 0.0, "term")
    probe.start()
    time.sleep(5)
    t_term = time.time()
    gw.proc.send_signal(signal.SIGTERM)
    try:
        gw.proc.wait(timeout=60)
        exit_s = time.time() - t_term
    except subprocess.TimeoutExpired:
        exit_s = None
        gw.proc.kill()
        gw.proc.wait()
    time.sleep(1)
    probe.stop()
    calls = probe.calls
    before = [c for c in calls if c.id and c.end <= t_term]
    inflight = [c for c in calls if c.id and c.start < t_term < c.end]
    later = [c for c in calls if c.start >= t_term]
    files = audit_files(gw.audit)
    ok, msg = verify(files, st.tmp)
    rec = check_records(calls, files)
    outcomes = collections.Counter()
    for a in audit_records(files):
        if a.get("event") == "request" and a.get("method") == "tools/call" and audit_time(a) >= t_term:
            outcomes[f"{a.get('status')} {a.get('outcome')}"] += 1
    r = {"calls": len([c for c in calls if c.id]), "before_failed": sum(not c.ok for c in before),
         "inflight": len(inflight), "inflight_failed": sum(not c.ok for c in inflight),
         "inflight_kinds": collections.Counter(c.kind() for c in inflight),
         "later": collections.Counter(c.kind() for c in later), "exit_s": exit_s, "rc": gw.proc.returncode,
         "records": rec, "verify_ok": ok, "verify": msg, "audit_after_term": outcomes, "warnings": gw.warnings(),
         "probe_rate": len([c for c in calls if c.id and c.end <= t_term]) / 5.0}
    log(f"sigterm: exit {ms(exit_s)} after SIGTERM (status {r['rc']}); {r['inflight']} calls in flight, "
        f"{r['inflight_failed']} failed; {r['before_failed']} failed before; after SIGTERM: {dict(r['later'])}; "
        f"{rec['accepted']} accepted, {rec['missing']} without their record; audit verify {'ok' if ok else 'FAILED'}")
    return r


# --- the report ---------------------------------------------------------------------------------

def git_commit():
    try:
        c = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", ":!docs/soak.md"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return c + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def counter_text(c):
    return ", ".join(f"{k}: {v}".replace("|", "\\|") for k, v in sorted(c.items(), key=lambda kv: -kv[1])) or "none"


def write_report(args, results, started):
    lines = []
    w = lines.append
    w("# Soak and fault runs")
    w("")
    w("Generated by `scripts/soak` (`scripts/bench/soak.py`); do not edit by hand. Not run in CI.")
    w("")
    w(f"- **Command:** `{args.command}`" + (" (a short run: not for quoting)" if args.minutes < 10 else ""))
    w(f"- **Date:** {started.strftime('%Y-%m-%d %H:%M UTC')}")
    w(f"- **Machine:** {machine()}; nothing pinned, other work may share it")
    w(f"- **Commit:** {git_commit()}")
    w(f"- **Versions:** {version_of([os.path.join(REL, 'mcp-gateway'), '--version'])}; "
      f"{version_of(['redis-server', '--version'])}")
    w("- **Gateway:** [`scripts/bench/soak.toml`](../scripts/bench/soak.toml): all five governing layers "
      "(`[auth]` with a JWT, `[limits]` and `[sessions]` with `store = \"redis\"`, `[telemetry]` exporting every "
      "span, `[audit]` with `fsync = \"always\"`), default worker threads, in front of `bench-upstream` "
      "(200-byte JSON results). Load: `bench-load` open loop, legacy (sessions) and modern (sessionless) "
      "calls side by side, and probes of the script's own (one keep-alive connection each, every call's "
      "answer and time kept, ids found again in the audit log).")
    w("")
    s = results.get("soak")
    if s:
        w("## Soak")
        w("")
        if "error" in s:
            w(f"Failed: `{s['error']}`")
        else:
            w(f"{s['seconds'] / 60:g} minutes at {s['rate']:g} calls/s (half legacy, half modern, "
              f"{s['connections']} connections each).")
            w("")
            w("| era | calls answered 200 | errors | achieved calls/s | p50 | p99 | p99.9 | max |")
            w("|---|---:|---:|---:|---:|---:|---:|---:|")
            for era, r in s["loads"].items():
                lat = r["latency_us"]
                w(f"| {era} | {r['all_requests']} | {r['errors']} | {r['throughput']:.0f} | {fmt_us(lat['p50'])} | "
                  f"{fmt_us(lat['p99'])} | {fmt_us(lat['p999'])} | {fmt_us(lat['max'])} |")
            w(f"| **all** | **{s['answered']}** | **{s['errors']}** | | | | | |")
            w("")
            w("| audit | |")
            w("|---|---|")
            w(f"| `tools/call` records | {s['call_records']} (calls answered 200: {s['answered']}; "
              f"difference {s['diff']:+d}) |")
            w(f"| `tools/call` records not `ok` (refusals, JSON-RPC errors) | {s['call_records_not_ok']} |")
            other = s["records"] - s["call_records"]
            w(f"| other records (legacy `initialize`, `session_start`, `notifications/initialized`) | {other} "
              f"(3 per legacy connection: {s['expected_other']}) |")
            w(f"| files (with rotation at 100 MiB) | {s['files']} |")
            w(f"| `mcp-gateway audit verify` | {verdict(s['verify_ok'], s['verify'])} |")
            w(f"| gateway exit after SIGTERM | {ms(s['exit_s'])} |")
            w(f"| gateway log at WARN or ERROR | {counter_text(s['warnings'])} |")
            w("")
            w(f"Gateway RSS (VmRSS): idle {mib(s['rss_idle'])} before the load; under load start "
              f"{mib(s['rss_start'])}, middle {mib(s['rss_mid'])}, end {mib(s['rss_end'])}, "
              f"max {mib(s['rss_max'])}.")
            w("")
            step = max(s["seconds"] / 10, args.rss_interval)
            row, mark = [], step
            for t, k in s["rss_samples"]:
                if t + args.rss_interval / 2 >= mark:
                    row.append((t, k))
                    mark += step
            w("| " + " | ".join(f"{t / 60:.1f} min" if s["seconds"] >= 300 else f"{t:.0f} s" for t, _ in row) + " |")
            w("|" + "---:|" * len(row))
            w("| " + " | ".join(mib(k) for _, k in row) + " |")
            w("")
    s = results.get("sink")
    if s:
        w("## Audit sink faults")
        w("")
        if "skipped" in s:
            w(f"Skipped: {s['skipped']}.")
        elif "error" in s:
            w(f"Failed: `{s['error']}`")
        else:
            w("The audit log on a 2 MiB tmpfs, `fsync = \"always\"`, `write_timeout = \"1s\"`; 4 probes of modern "
              "calls at 10 calls/s each, and `/readyz` of the admin listener polled every 50 ms. "
              f"**Disk full:** a file written until ENOSPC ({s['filled']} bytes), removed {s['fault_seconds']:g} s "
              f"later. **Folder replaced by a file:** the log's folder renamed away (the open log file moves "
              f"with it) and a file put at its path, undone {s['fault_seconds']:g} s later.")
            w("")
            w("| | disk full | folder replaced by a file |")
            w("|---|---|---|")
            f, g = s["full"], s["folder"]
            rows = [("first failed call, after the fault", lambda x: f"{ms(x['first_refusal_s'])} ({x['first_refusal']})"),
                    ("first 503, after the fault", lambda x: ms(x["first_503_s"])),
                    ("a refused call's latency (median)", lambda x: ms(x["refusal_latency_s"])),
                    ("calls started during the fault", lambda x: counter_text(x["during"])),
                    ("`/readyz` 503 after the fault", lambda x: ms(x["ready_503_s"])),
                    ("`/readyz` samples 503 from then to the fix", lambda x: x["ready_samples"]),
                    ("first call answered 200 after the fix", lambda x: ms(x["recovered_s"])),
                    ("last failed call after the fix", lambda x: ms(x["last_bad_s"])),
                    ("`/readyz` 200 after the fix", lambda x: ms(x["ready_200_s"])),
                    ("calls started after the fix", lambda x: counter_text(x["after"]))]
            for name, fn in rows:
                w(f"| {name} | {fn(f)} | {fn(g)} |")
            w("")
            rec = s["records"]
            w(f"Records: {rec['accepted']} calls answered 200, **{rec['missing']} without their record**, "
              f"{rec['duplicated']} with more than one. Calls not answered 200, with the records found for them: "
              f"{counter_text(rec['others'])}. `audit verify`: {verdict(s['verify_ok'], s['verify'])}. Gateway exit "
              f"after SIGTERM: {ms(s['exit_s'])}. Gateway log at WARN or ERROR: {counter_text(s['warnings'])}.")
            w("")
    s = results.get("redis")
    if s:
        w("## Redis killed and restarted")
        w("")
        if "error" in s:
            w(f"Failed: `{s['error']}`")
        else:
            w(f"`bench-load` at {args.rate:g} calls/s (half legacy, half modern) for {10 + s['down_s'] + 15:g} s; "
              f"redis-server killed (SIGKILL) after 10 s and restarted on the same port (empty) "
              f"{s['down_s']:g} s later. Figures by window, from the gateway's audit log (`tools/call` records "
              "by their start time):")
            w("")
            w("| window | calls | not `ok` | p50 | p99 | max |")
            w("|---|---:|---|---:|---:|---:|")
            for k, v in s["windows"].items():
                w(f"| {k} | {v['calls']} | {counter_text(v['not_ok'])} | {fmt_us(v['p50'])} | {fmt_us(v['p99'])} | "
                  f"{fmt_us(v['max'])} |")
            w("")
            w(f"Client side: {s['answered']} calls answered 200, {s['errors']} errors"
              + (f" (first: `{s['first_error']}`)" if s["first_error"] else "")
              + f". Keys in Redis after the run: {s['dbsize_after']} (the gateway used the restarted Redis again). "
              f"`audit verify`: {verdict(s['verify_ok'], s['verify'])}. Gateway log at WARN or ERROR: "
              f"{counter_text(s['warnings'])}.")
            w("")
    s = results.get("sigterm")
    if s:
        w("## SIGTERM under load")
        w("")
        if "error" in s:
            w(f"Failed: `{s['error']}`")
        else:
            w(f"16 probes (8 legacy, 8 modern) in closed loop ({s['probe_rate']:.0f} calls/s in all); SIGTERM "
              "after 5 s; a call is in flight when it was sent before the signal and answered (or failed) after it.")
            w("")
            rec = s["records"]
            w("| | |")
            w("|---|---|")
            w(f"| exit after SIGTERM | {ms(s['exit_s'])} (exit status {s['rc']}) |")
            w(f"| calls in flight at SIGTERM | {s['inflight']}: {counter_text(s['inflight_kinds'])} |")
            w(f"| in-flight calls that failed | {s['inflight_failed']} |")
            w(f"| calls failed before SIGTERM | {s['before_failed']} |")
            w(f"| calls started after SIGTERM | {counter_text(s['later'])} |")
            w(f"| audit records of exchanges the gateway started after SIGTERM (the in-flight calls among them) | {counter_text(s['audit_after_term'])} |")
            w(f"| calls answered 200 / without their record | {rec['accepted']} / {rec['missing']} |")
            w(f"| calls not answered 200, with the records found for them | {counter_text(rec['others'])} |")
            w(f"| `audit verify` | {verdict(s['verify_ok'], s['verify'])} |")
            w(f"| gateway log at WARN or ERROR | {counter_text(s['warnings'])} |")
            w("")
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    log(f"wrote {os.path.relpath(args.out, ROOT)}")


def fmt_us(us):
    if us is None:
        return "–"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the soak (fractions allowed)")
    ap.add_argument("--rate", type=float, default=500.0, help="calls/s, open loop, half legacy and half modern")
    ap.add_argument("--connections", type=int, default=16, help="bench-load connections per era")
    ap.add_argument("--rss-interval", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--fault-seconds", type=float, default=5.0, help="how long each audit sink fault lasts")
    ap.add_argument("--redis-down", type=float, default=10.0, help="seconds Redis stays down")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "soak.md"))
    ap.add_argument("--command", default="scripts/soak", help="the command shown in the report")
    args = ap.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        ap.error(f"unknown phase(s): {', '.join(unknown)}")
    if not shutil.which("redis-server"):
        ap.error("redis-server is not installed (scripts/soak installs it)")

    started = datetime.datetime.now(datetime.timezone.utc)
    tmp = tempfile.mkdtemp(prefix="mcp-soak-")
    st = Stack(tmp)
    results = {}
    try:
        st.start_redis()
        st.start_upstream()
        for name in phases:
            log(f"==> {name}")
            try:
                results[name] = {"soak": phase_soak, "sink": phase_sink, "redis": phase_redis,
                                 "sigterm": phase_sigterm}[name](st, args)
            except Exception as e:  # noqa: BLE001 - a failed phase is reported, the next ones still run
                results[name] = {"error": f"{type(e).__name__}: {e}".replace(tmp + os.sep, "")}
                log(f"{name}: failed: {e}")
            if name == "redis" and (st.redis is None or st.redis.poll() is not None):
                st.start_redis()
    finally:
        st.stop_all()
    write_report(args, results, started)
    if os.environ.get("SOAK_KEEP_TMP"):
        log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
