// An MCP client on the official TypeScript SDK (@modelcontextprotocol/sdk), for the interop matrix.
//
// Usage: node ts_client.mjs URL ERA CASE_JSON [HEADER ...]   (same contract as py_client.py)
// Prints one JSON object: {"ok", "protocol", "server", "tools", "tool_names", "call", "calls",
// "progress", "error"}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SUPPORTED_PROTOCOL_VERSIONS } from "@modelcontextprotocol/sdk/types.js";

const [url, era, caseJson, ...headerArgs] = process.argv.slice(2);
const testCase = JSON.parse(caseJson);
const headers = Object.fromEntries(headerArgs.map((h) => h.split(/: (.*)/s).slice(0, 2)));
const textOf = (r) => (r.content ?? []).map((c) => c.text ?? "").join(" ");
// A step is [tool, args], or a list of them (a virtual server: one per upstream).
const steps = (s) => (Array.isArray(s[0]) ? s : [s]);

async function run() {
  const out = { ok: false };
  if (era !== "legacy" && !SUPPORTED_PROTOCOL_VERSIONS.includes(era)) {
    out.unsupported = `client supports ${SUPPORTED_PROTOCOL_VERSIONS.join(", ")}`;
    out.error = `this SDK version does not speak ${era}`;
    return out;
  }
  const client = new Client({ name: "mcp-gateway-interop-ts", version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
  await client.connect(transport);
  try {
    out.protocol = transport.protocolVersion ?? null;
    const info = client.getServerVersion();
    out.server = info ? `${info.name} ${info.version}` : null;
    const names = [];
    let cursor;
    do {
      const page = await client.listTools(cursor === undefined ? undefined : { cursor });
      names.push(...page.tools.map((t) => t.name));
      cursor = page.nextCursor;
    } while (cursor);
    out.tools = names.length;
    out.tool_names = names;
    const texts = [];
    for (const [name, args] of steps(testCase.call)) {
      const result = await client.callTool({ name, arguments: args });
      texts.push(textOf(result));
      out.call = texts.join(" | ");
      out.calls = texts.length;
      if (result.isError) {
        out.error = `${name} failed: ${textOf(result)}`;
        return out;
      }
    }
    out.progress = 0;
    for (const [name, args] of steps(testCase.progress)) {
      const seen = [];
      const result = await client.callTool({ name, arguments: args }, undefined, {
        onprogress: (p) => seen.push(p.progress),
      });
      out.progress += seen.length;
      if (result.isError || seen.length === 0) {
        out.error = `${name}: ${seen.length} progress notifications, isError=${!!result.isError}`;
        return out;
      }
    }
    out.ok = true;
    return out;
  } finally {
    await transport.terminateSession().catch(() => {});
    await client.close();
  }
}

run()
  .catch((e) => ({ ok: false, error: `${e?.name ?? "Error"}: ${e?.message ?? e}` }))
  .then((out) => {
    console.log(JSON.stringify(out));
    process.exit(0);
  });
