"""An MCP client on the official Python SDK (`mcp`), for the interop matrix.

Usage: py_client.py URL ERA CASE_JSON [HEADER ...]
  ERA is `legacy` (initialize handshake) or `2026-07-28` (server/discover, sessionless).
  CASE_JSON: {"call": STEP, "progress": STEP}; a STEP is [tool, args] or a list of them (a
  virtual server: one per upstream), called in order.
  HEADER: "Name: value", sent on every request.
Prints one JSON object: {"ok", "protocol", "server", "tools", "tool_names", "call", "calls",
"progress", "error"}.
"""

import json
import sys

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def text_of(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def steps(step: list) -> list:
    return step if step and isinstance(step[0], list) else [step]


async def run(url: str, era: str, case: dict, headers: dict) -> dict:
    out: dict = {"ok": False}
    http = httpx2.AsyncClient(headers=headers, timeout=30)
    mode = "legacy" if era == "legacy" else "auto"
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as client:
        out["protocol"] = client.protocol_version
        info = client.server_info
        out["server"] = f"{info.name} {info.version}" if info else None
        if era != "legacy" and client.protocol_version != era:
            out["error"] = f"negotiated {client.protocol_version}, not {era}"
            return out
        names: list[str] = []
        cursor = None
        while True:
            page = await client.list_tools(cursor=cursor)
            names += [t.name for t in page.tools]
            cursor = page.next_cursor
            if not cursor:
                break
        out["tools"] = len(names)
        out["tool_names"] = names
        texts: list[str] = []
        for name, args in steps(case["call"]):
            result = await client.call_tool(name, args)
            texts.append(text_of(result))
            out["call"], out["calls"] = " | ".join(texts), len(texts)
            if result.is_error:
                out["error"] = f"{name} failed: {texts[-1]}"
                return out
        out["progress"] = 0
        for name, args in steps(case["progress"]):
            seen: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(progress)

            result = await client.call_tool(name, args, progress_callback=on_progress)
            out["progress"] += len(seen)
            if result.is_error or not seen:
                out["error"] = f"{name}: {len(seen)} progress notifications, isError={result.is_error}"
                return out
    out["ok"] = True
    return out


def main() -> None:
    url, era, case = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    headers = dict(h.split(": ", 1) for h in sys.argv[4:])
    try:
        out = anyio.run(run, url, era, case, headers)
    except BaseException as e:  # report any failure as a result line
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
