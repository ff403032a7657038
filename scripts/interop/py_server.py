"""An MCP server on the official Python SDK (`mcp`), for the interop matrix.

Usage: py_server.py PORT — serves Streamable HTTP at http://127.0.0.1:PORT/mcp; py_server.py
--stdio — serves stdio (newline-delimited JSON-RPC on stdin/stdout). Two tools:
`echo` (returns `text`) and `slow_count` (sends `n` progress notifications, then returns).
"""

import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("mcp-gateway-interop-python")


@server.tool()
def echo(text: str) -> str:
    """Echo `text` back."""
    return text


@server.tool()
async def slow_count(n: int, ctx: Context, delay_ms: int = 100) -> str:
    """Send `n` progress notifications, `delay_ms` apart, then return."""
    for i in range(1, n + 1):
        await anyio.sleep(delay_ms / 1000)
        await ctx.report_progress(i, n, f"step {i}/{n}")
    return f"counted to {n}"


if __name__ == "__main__":
    if sys.argv[1] == "--stdio":
        anyio.run(server.run_stdio_async)
    else:
        anyio.run(lambda: server.run_streamable_http_async(host="127.0.0.1", port=int(sys.argv[1])))
