-- wrk script: a stateless (2026-07-28) MCP `tools/call` of qe_memory_retrieve, as the official SDK sends it;
-- or, given an older protocol version, the same call as a handshake-era client sends it to a stateless server
-- (no `_meta` envelope; the routing headers stay, older servers ignore them).
--
-- Usage: wrk -t2 -c16 -d10s --latency -s bench/wrk_tools_call.lua http://127.0.0.1:PORT/mcp \
--            -- [namespace] [key_prefix] [key_count] [bearer_token or -] [protocol_version]
-- Keys cycle through key_prefix..0 .. key_prefix..(key_count-1) so the server reads varied rows, not one.
-- Every response body is checked for a found result; the ones that are not count as "bad", because a
-- server answering 200 with a JSON-RPC error or `isError: true` would otherwise look like a fast success.
-- With a bearer_token every request carries `Authorization: Bearer <token>` (servers with server.auth on);
-- `-` stands for none when a protocol version follows.
-- done() prints one line `WRK_SUMMARY {json}` that bench/http_bench.py parses.

local MODERN = "2026-07-28"

local namespace = "bench"
local key_prefix = "key-"
local key_count = 1
local counter = 0
bad = 0 -- global: done() reads it from each thread with thread:get("bad")
local threads = {}

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Mcp-Method"] = "tools/call"
wrk.headers["Mcp-Name"] = "qe_memory_retrieve"

-- Keys and namespaces are ASCII words chosen by the bench, so they need no JSON escaping.
local CALL = '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{'
  .. '"name":"qe_memory_retrieve","arguments":{"key":"%s","namespace":"%s"}'
local BODY = nil -- set by init() for the protocol version

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  namespace = args[1] or namespace
  key_prefix = args[2] or key_prefix
  key_count = tonumber(args[3] or key_count)
  -- The tool marks `namespace` with x-mcp-header, so a conforming client mirrors it as this header.
  wrk.headers["Mcp-Param-Namespace"] = namespace
  if args[4] and args[4] ~= "-" then
    wrk.headers["Authorization"] = "Bearer " .. args[4]
  end
  local protocol = args[5] or MODERN
  wrk.headers["MCP-Protocol-Version"] = protocol
  if protocol == MODERN then
    BODY = CALL .. ',"_meta":{"io.modelcontextprotocol/protocolVersion":"' .. MODERN .. '",'
      .. '"io.modelcontextprotocol/clientCapabilities":{},'
      .. '"io.modelcontextprotocol/clientInfo":{"name":"wrk-bench","version":"1.0"}}}}'
  else
    BODY = CALL .. '}}'
  end
end

function request()
  counter = counter + 1
  local key = key_prefix .. (counter % key_count)
  return wrk.format(nil, nil, nil, string.format(BODY, counter, key, namespace))
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"found"%s*:%s*true')
      or string.find(body, '"isError"%s*:%s*true') then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local total_bad = 0
  for _, thread in ipairs(threads) do
    total_bad = total_bad + (thread:get("bad") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_SUMMARY {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,'
      .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,"bad_bodies":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    total_bad, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
