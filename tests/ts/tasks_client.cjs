// Drives one MCP task with the official TypeScript SDK (its experimental tasks client, protocol 2025-11-25):
// a task-augmented qe_test_generate call streamed to its result, then tasks/get, tasks/result and tasks/list.
// Usage: node tasks_client.cjs URL ARGUMENTS_JSON. Prints one JSON object with what it saw; exits 1 on failure.
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");
const { CallToolResultSchema } = require("@modelcontextprotocol/sdk/types.js");

async function main() {
  const [url, argumentsJson] = process.argv.slice(2);
  const client = new Client({ name: "aqe-ts-tasks", version: "1.0.0" });
  await client.connect(new StreamableHTTPClientTransport(new URL(url)));
  const seen = { capabilities: client.getServerCapabilities().tasks ?? null, messages: [] };
  const tools = await client.listTools();
  seen.taskSupport = tools.tools.find((tool) => tool.name === "qe_test_generate")?.execution?.taskSupport;
  const stream = client.experimental.tasks.callToolStream(
    { name: "qe_test_generate", arguments: JSON.parse(argumentsJson) },
    undefined,
    { task: { ttl: 600000 } },
  );
  let taskId = null;
  for await (const message of stream) {
    seen.messages.push(message.type);
    if (message.type === "taskCreated") taskId = message.task.taskId;
    if (message.type === "result") seen.result = message.result;
    if (message.type === "error") throw message.error;
  }
  seen.taskId = taskId;
  seen.task = await client.experimental.tasks.getTask(taskId);
  seen.taskResult = await client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema);
  seen.listed = (await client.experimental.tasks.listTasks()).tasks.map((task) => task.taskId);
  await client.close();
  process.stdout.write(JSON.stringify(seen));
}

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`${error?.stack ?? error}\n`);
    process.exit(1);
  },
);
