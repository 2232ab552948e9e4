// The benchmark's TypeScript peer: qe_memory_retrieve served by the official TypeScript SDK
// (@modelcontextprotocol/sdk 1.x, protocol 2025-11-25) over node:http with its Streamable HTTP transport
// (stateless, JSON responses), or over stdio with --stdio.
//
// It reads the same <stateDir>/memory.db as every other peer (node:sqlite) and answers with the result our
// server shapes. Stateless HTTP follows the SDK's own example: a fresh McpServer and transport per request,
// because one shared stateless transport would mix up the equal JSON-RPC ids of different clients.
// Run through bench/node_peer.py, which finds Node 22 and the SDK and sets NODE_PATH:
//   node bench/ts_peer.cjs --port 8802 --state-dir /tmp/x     |     node bench/ts_peer.cjs --stdio --state-dir /tmp/x
"use strict";

const http = require("node:http");
const { parseArgs } = require("node:util");
const { DatabaseSync } = require("node:sqlite");
const { McpServer } = require("@modelcontextprotocol/sdk/server/mcp.js");
const { StreamableHTTPServerTransport } = require("@modelcontextprotocol/sdk/server/streamableHttp.js");
const { StdioServerTransport } = require("@modelcontextprotocol/sdk/server/stdio.js");
const z = require("zod");

const { values: args } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string" },
    "state-dir": { type: "string" },
    stdio: { type: "boolean", default: false },
  },
});
if (!args["state-dir"]) {
  console.error("ts_peer: give --state-dir (the directory holding memory.db)");
  process.exit(2);
}
if (!args.stdio && !args.port) {
  console.error("ts_peer: give --port for HTTP, or --stdio");
  process.exit(2);
}
if (!["127.0.0.1", "localhost", "::1"].includes(args.host)) {
  console.error("ts_peer: the peer listens on loopback only: use --host 127.0.0.1");
  process.exit(2);
}

const db = new DatabaseSync(`${args["state-dir"]}/memory.db`);
const get = db.prepare(
  "SELECT namespace, key, value, version, created_at, updated_at, expires_at FROM memory_entries " +
    "WHERE namespace = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)",
);
const iso = (epoch) => new Date(epoch * 1000).toISOString();

function retrieve(key, namespace) {
  const row = get.get(namespace, key, Date.now() / 1000);
  if (row === undefined) return { found: false, key, namespace };
  return {
    found: true,
    key: row.key,
    namespace: row.namespace,
    value: JSON.parse(row.value),
    version: row.version,
    createdAt: iso(row.created_at),
    updatedAt: iso(row.updated_at),
    expiresAt: row.expires_at === null ? null : iso(row.expires_at),
  };
}

function buildServer() {
  const server = new McpServer({ name: "ts-sdk-peer", version: "1.0.0" });
  server.registerTool(
    "qe_memory_retrieve",
    {
      description: "Read one memory entry by namespace and key.",
      inputSchema: { key: z.string(), namespace: z.string().default("default") },
    },
    async ({ key, namespace }) => {
      const result = retrieve(key, namespace);
      return { content: [{ type: "text", text: JSON.stringify(result) }], structuredContent: result };
    },
  );
  return server;
}

async function serveHttp() {
  const httpServer = http.createServer(async (req, res) => {
    if (req.method === "GET" && req.url === "/readyz") {
      res.writeHead(200, { "Content-Type": "application/json" }).end('{"status":"ready"}');
      return;
    }
    if (req.url !== "/mcp") {
      res.writeHead(404).end();
      return;
    }
    const server = buildServer();
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
    res.on("close", () => {
      transport.close();
      server.close();
    });
    try {
      await server.connect(transport);
      await transport.handleRequest(req, res);
    } catch (error) {
      console.error("ts_peer:", error);
      if (!res.headersSent) res.writeHead(500).end();
    }
  });
  httpServer.keepAliveTimeout = 60_000;
  httpServer.listen(Number(args.port), args.host);
}

async function serveStdio() {
  await buildServer().connect(new StdioServerTransport());
}

(args.stdio ? serveStdio() : serveHttp()).catch((error) => {
  console.error("ts_peer:", error);
  process.exit(1);
});
