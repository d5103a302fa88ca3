-- wrk script for scripts/bench-http.sh: every request is POST <url> (the /embed route) with the body
-- {"inputs": "<text>"} and Content-Type: application/json.
--
--   AKIDB_BENCH_TEXT   the text to embed (default "The quick brown fox jumps over the lazy dog.")
--   AKIDB_API_KEY      sent as Authorization: Bearer <key> when set
--
-- Besides wrk's own report it counts responses whose status is not 2xx (wrk's "Non-2xx or 3xx"
-- line lumps 3xx in and only appears when there are some) and ends with one machine-readable line:
--   AKIDB_WRK {"requests":…,"seconds":…,"requests_per_s":…,"p50_ms":…,"p90_ms":…,"p99_ms":…,
--              "max_ms":…,"mean_ms":…,"non_2xx":…,"errors":{…}}

local text = os.getenv("AKIDB_BENCH_TEXT") or "The quick brown fox jumps over the lazy dog."

local function json_string(s)
  local escaped = s:gsub('[%c"\\]', function(c)
    local named = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
    return named[c] or string.format("\\u%04x", c:byte())
  end)
  return '"' .. escaped .. '"'
end

wrk.method = "POST"
wrk.body = '{"inputs":' .. json_string(text) .. "}"
wrk.headers["Content-Type"] = "application/json"
local api_key = os.getenv("AKIDB_API_KEY")
if api_key and api_key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. api_key
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non_2xx = 0
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non_2xx") or 0)
  end
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("non-2xx responses: %d of %d\n", bad, summary.requests))
  io.write(string.format(
    'AKIDB_WRK {"requests":%d,"seconds":%.3f,"requests_per_s":%.2f,"p50_ms":%.3f,"p90_ms":%.3f,'
      .. '"p99_ms":%.3f,"max_ms":%.3f,"mean_ms":%.3f,"non_2xx":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, latency.mean / 1e3, bad,
    e.connect, e.read, e.write, e.status, e.timeout))
end
