-- wrk script: a paced load (RATE requests/s in all, shared evenly by wrk's threads) on keep-alive
-- connections, counting every response by status and by the "version" of the body, per 100 ms of
-- wall time, and keeping each failed response's moment, status and instance.
--   wrk -t2 -c64 -d300s -s paced.lua URL -- RATE OUT_PREFIX THREADS [PROGRESS_PREFIX]
-- Pacing: each thread hands out send slots 1/rate apart; a connection that finished its previous
-- response asks `delay()` for the next slot and waits until it (ms granularity, rounded up). Slots
-- missed during a stall are sent at once afterwards, up to 1 s of them (as wrk2's constant
-- throughput, bounded), so the offered rate holds on a machine with hiccups; a server slower than
-- the rate for longer makes the load closed-loop. RATE 0: no pacing (as plain wrk).
-- Progress (responses so far) is written to PROGRESS_PREFIX.progress.N (default OUT_PREFIX; give
-- one on tmpfs: no disk write in the event loop) every 1,000 responses, so the driver can tell
-- when enough ran. done() writes OUT_PREFIX.json: totals, per-status and
-- per-version counts, the timeline (100 ms buckets, epoch seconds), up to 2,000 failures per thread
-- and the first and last failure's time; socket errors come from wrk's summary.
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } timespec_t;
  int clock_gettime(int clk, timespec_t *ts);
]]
local ts = ffi.new("timespec_t")
local function now()   -- CLOCK_REALTIME, seconds: the driver's `date +%s.%N` is on the same clock
  ffi.C.clock_gettime(0, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}
local nthreads = 0
function setup(thread)
  nthreads = nthreads + 1
  thread:set("id", nthreads)
  table.insert(threads, thread)
end

function init(args)
  rate = tonumber(args[1] or "0") or 0
  prefix = args[2] or "/tmp/paced"
  progress_prefix = args[4] or prefix
  local nt = tonumber(args[3] or "1") or 1   -- wrk's -t: each thread paces rate / threads
  interval = rate > 0 and nt / rate or 0
  next_slot = 0
  -- Flat tables only: wrk's thread:get() copies a flat table between Lua states, not a nested one.
  statuses = {}      -- status -> count
  versions = {}      -- version -> count
  totals = {}        -- 100 ms bucket -> responses
  failed = {}        -- 100 ms bucket -> non-2xx responses
  by_version = {}    -- "bucket|version" -> responses
  failures = {}      -- i -> "time status instance version"
  responses = 0
  nfailed = 0
  first_fail, last_fail = 0, 0   -- times of this thread's first and last non-2xx response
  req = wrk.format(nil, "/")
end

function delay()
  if interval == 0 then return 0 end
  local t = now()
  if next_slot == 0 then next_slot = t end           -- the first request: no backlog yet
  if next_slot < t - 1 then next_slot = t - 1 end   -- at most 1 s of backlog
  local wait = next_slot - t
  next_slot = next_slot + interval
  return math.ceil(wait * 1000)
end

function request()
  return req
end

function response(status, headers, body)
  responses = responses + 1
  statuses[status] = (statuses[status] or 0) + 1
  local version = string.match(body or "", '"version":"([^"]*)"') or "?"
  versions[version] = (versions[version] or 0) + 1
  local t = now()
  local k = math.floor(t * 10)
  totals[k] = (totals[k] or 0) + 1
  local kv = k .. "|" .. version
  by_version[kv] = (by_version[kv] or 0) + 1
  if status < 200 or status > 299 then
    nfailed = nfailed + 1
    if first_fail == 0 then first_fail = t end
    last_fail = t
    failed[k] = (failed[k] or 0) + 1
    if #failures < 2000 then
      failures[#failures + 1] = string.format("%.4f %d %s %s", t, status, headers["x-demo-instance"] or "-", version)
    end
  end
  if responses % 1000 == 0 then
    local f = io.open(progress_prefix .. ".progress." .. id, "w")
    if f then f:write(responses, "\n"); f:close() end
  end
end

local function json_counts(t)
  local parts = {}
  for k, v in pairs(t) do table.insert(parts, string.format('"%s":%d', tostring(k), v)) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function add(into, from)
  for k, v in pairs(from) do into[k] = (into[k] or 0) + v end
end

function done(summary, latency, requests)
  local statuses, versions, totals, failed, by_version, failures = {}, {}, {}, {}, {}, {}
  local responses, nfailed, first_fail, last_fail = 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    local f, l = thread:get("first_fail"), thread:get("last_fail")
    if f > 0 and (first_fail == 0 or f < first_fail) then first_fail = f end
    if l > last_fail then last_fail = l end
    add(statuses, thread:get("statuses"))
    add(versions, thread:get("versions"))
    add(totals, thread:get("totals"))
    add(failed, thread:get("failed"))
    add(by_version, thread:get("by_version"))
    for _, f in pairs(thread:get("failures")) do table.insert(failures, f) end
    responses = responses + thread:get("responses")
    nfailed = nfailed + thread:get("nfailed")
  end
  local prefix = threads[1]:get("prefix")
  local out = io.open(prefix .. ".json", "w")
  local e = summary.errors
  out:write(string.format(
    '{"duration_us":%d,"requests":%d,"responses":%d,"non_2xx":%d,"first_fail":%.4f,"last_fail":%.4f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p99":%d,"max":%d},"statuses":%s,"versions":%s,"timeline":[',
    summary.duration, summary.requests, responses, nfailed, first_fail, last_fail, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, json_counts(statuses), json_counts(versions)))
  local per_bucket = {}   -- bucket -> version -> responses (nested is fine within one Lua state)
  for kv, n in pairs(by_version) do
    local bk, version = string.match(kv, "^(%d+)|(.*)$")
    bk = tonumber(bk)
    per_bucket[bk] = per_bucket[bk] or {}
    per_bucket[bk][version] = n
  end
  local keys = {}
  for k in pairs(totals) do table.insert(keys, k) end
  table.sort(keys)
  for i, k in ipairs(keys) do
    out:write(string.format('%s{"t":%.1f,"n":%d,"failed":%d,"versions":%s}', i > 1 and "," or "",
      k / 10, totals[k], failed[k] or 0, json_counts(per_bucket[k] or {})))
  end
  out:write('],"failures":[')
  table.sort(failures)
  for i, f in ipairs(failures) do
    local t, status, instance, version = string.match(f, "^(%S+) (%d+) (%S+) (.*)$")
    out:write(string.format('%s{"t":%s,"status":%s,"instance":"%s","version":"%s"}', i > 1 and "," or "",
      t, status, instance, version))
  end
  out:write("]}\n")
  out:close()
end
