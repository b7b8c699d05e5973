-- wrk script for POST /score (and the benchmark's echo): bodies rotating over a
-- prepared list, each with a request id of its own, and every answer counted.
--
--   wrk -t1 -c16 -d10s --timeout 5s -s loadtests/wrk_score.lua http://127.0.0.1:8000/score \
--       -- requests.tsv bench-run-w1- answers.txt
--
-- requests.tsv (written by benchmark.py) holds tab-separated lines:
--   header <TAB> name <TAB> value
--   body   <TAB> JSON up to the request id's value <TAB> the JSON after it
-- Each request's id is the prefix, the thread's number and its own sequence number,
-- so no two requests of a run share one (a repeat would be answered as a retry).
--
-- answers.txt (written when wrk is done) holds "key value" lines: "status CODE COUNT",
-- "decision ID" for each 200 answer's decision id, "from_sources N" (answers with a
-- feature fetched from its source), "degraded N", "requests", "duration_us", the
-- socket errors ("error KIND N") and latency percentiles in microseconds ("p50_us").

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

-- Each thread's own state (set up by init in every thread's environment).
statuses = {}
decisions = {}
from_sources = 0
degraded = 0
answers_path = nil

local heads, tails = {}, {}
local headers = {}
local prefix = ""
local sent = 0
local path = "/"

function init(args)
  local data = assert(io.open(args[1], "r"))
  for line in data:lines() do
    local kind, first, second = line:match("^([^\t]+)\t([^\t]*)\t(.*)$")
    if kind == "header" then
      headers[first] = second
    elseif kind == "body" then
      heads[#heads + 1] = first
      tails[#tails + 1] = second
    end
  end
  data:close()
  assert(#heads > 0, "no bodies in " .. args[1])
  prefix = args[2] .. thread_number .. "-"
  answers_path = args[3]
  path = wrk.path
  -- Threads start at different places in the list.
  sent = (thread_number - 1) * 7919
end

function request()
  sent = sent + 1
  local i = sent % #heads + 1
  return wrk.format("POST", path, headers, heads[i] .. prefix .. sent .. tails[i])
end

function response(status, _, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 then
    local decision = body:match('"decision_id":"([^"]+)"')
    if decision then
      decisions[#decisions + 1] = decision
    end
    if body:find('"source":"source:', 1, true) then
      from_sources = from_sources + 1
    end
    if body:find('"degraded":true', 1, true) then
      degraded = degraded + 1
    end
  end
end

function done(summary, latency, _)
  local out = assert(io.open(threads[1]:get("answers_path"), "w"))
  local fetched, degraded_total = 0, 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      out:write("status ", status, " ", count, "\n")
    end
    for _, decision in ipairs(thread:get("decisions")) do
      out:write("decision ", decision, "\n")
    end
    fetched = fetched + thread:get("from_sources")
    degraded_total = degraded_total + thread:get("degraded")
  end
  out:write("from_sources ", fetched, "\n")
  out:write("degraded ", degraded_total, "\n")
  out:write("requests ", summary.requests, "\n")
  out:write("duration_us ", summary.duration, "\n")
  for _, kind in ipairs({ "connect", "read", "write", "timeout" }) do
    out:write("error ", kind, " ", summary.errors[kind], "\n")
  end
  for _, p in ipairs({ 50, 95, 99 }) do
    out:write("p", p, "_us ", latency:percentile(p), "\n")
  end
  out:write("max_us ", latency.max, "\n")
  out:close()
end
