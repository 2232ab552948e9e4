// The official TypeScript MCP SDK as a client of aqe-mcp (tests/test_surface_ts.py runs it with Node 22 from
// bench/node_peer.py): stores a memory entry, lists and reads resources, lists and gets a prompt, completes an
// argument, and prints what it saw as one JSON object on stdout. Usage: node ts_client.cjs URL REPORT_ID
"use strict";

const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");

async function main() {
  const [url, reportId] = process.argv.slice(2);
  const client = new Client({ name: "aqe-ts-test", version: "1.0.0" });
  await client.connect(new StreamableHTTPClientTransport(new URL(url)));
  const out = { protocolVersion: client.getServerVersion() ? "connected" : "none" };
  out.capabilities = client.getServerCapabilities();

  const stored = await client.callTool({
    name: "qe_memory_store",
    arguments: { namespace: "ts", key: "runs/7", value: { ok: true } },
  });
  out.stored = stored.isError === false;

  const resources = [];
  let cursor;
  do {
    const page = await client.listResources(cursor ? { cursor } : {});
    resources.push(...page.resources);
    cursor = page.nextCursor;
  } while (cursor);
  out.resources = resources.map((r) => ({ uri: r.uri, name: r.name, mimeType: r.mimeType }));
  out.templates = (await client.listResourceTemplates()).resourceTemplates.map((t) => t.uriTemplate);

  out.reads = {};
  for (const uri of [`aqe://coverage/${reportId}`, "aqe://memory/ts/runs%2F7", "aqe://quality/policies"]) {
    const read = await client.readResource({ uri });
    out.reads[uri] = read.contents.map((c) => ({ uri: c.uri, mimeType: c.mimeType, text: c.text }));
  }
  try {
    await client.readResource({ uri: "aqe://tasks/task-missing" });
    out.missing = null;
  } catch (err) {
    out.missing = { code: err.code, message: String(err.message) };
  }

  out.prompts = (await client.listPrompts()).prompts.map((p) => p.name);
  const prompt = await client.getPrompt({ name: "review-coverage", arguments: { report: reportId } });
  out.prompt = prompt.messages.map((m) => m.content.type === "resource"
    ? { type: "resource", uri: m.content.resource.uri }
    : { type: m.content.type, text: m.content.text });
  const done = await client.complete({
    ref: { type: "ref/prompt", name: "release-gate" },
    argument: { name: "policy", value: "st" },
  });
  out.completion = done.completion.values;

  await client.close();
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
