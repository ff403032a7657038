"""An MCP server on the official Python SDK (`mcp`) whose tool list changes on demand, for
the tests of `subscriptions/listen` through a virtual server.

Usage: py_changing_server.py PORT — serves Streamable HTTP at http://127.0.0.1:PORT/mcp.
Tools: `echo` (returns `text`) and `change` (adds `n` tools, `added_1` … `added_n`, one at a
time, publishing a tools list change after each: a flapping server).
"""

import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("mcp-gateway-changing-python")
added = 0


@server.tool()
def echo(text: str) -> str:
    """Echo `text` back."""
    return text


@server.tool()
async def change(n: int, ctx: Context) -> str:
    """Add `n` tools, publishing a tools list change after each."""
    global added
    for _ in range(n):
        added += 1
        k = added

        def tool() -> str:
            return f"added {k}"

        server.add_tool(tool, name=f"added_{k}", description=f"Tool number {k} added at run time.")
        await ctx.notify_tools_changed()
    return f"{added} tools added"


if __name__ == "__main__":
    anyio.run(lambda: server.run_streamable_http_async(host="127.0.0.1", port=int(sys.argv[1])))
