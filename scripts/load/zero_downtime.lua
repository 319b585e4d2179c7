-- The zero-downtime load run's workload for wrk (scripts/zero_downtime.sh): half chats, half
-- session reads over the sessions in SESSIONS, wrk's threads spread over the server processes in
-- TARGETS (comma-separated HOST:PORT; thread i connects to target i mod n), as mixed.lua does.
--
-- Every chat carries a token unique to the run, window, thread and chat ("RUN-tTHREAD-cCOUNTER",
-- RUN being e.g. "zdt-4242-w1") at the start of its text. The token of each 2xx chat answer is
-- read back from the answer's body (the stored message echoed) and appended to
-- OUT/acks-RUN-tTHREAD.txt: these are the writes the clients were told succeeded. Each non-2xx
-- answer's status and the start of its body go to OUT/errors-RUN-tTHREAD.txt. At the end,
-- OUT/sent-RUN.txt gets one line per thread, "RUN-tTHREAD COUNT" (its tokens 1..COUNT were
-- generated; a token beyond that was never sent), and OUT/wrk-RUN.txt the window's figures as
-- "key value" lines (latencies in microseconds), so the script need not parse wrk's text.
local ids = {}
for id in string.gmatch(os.getenv("SESSIONS") or "", "[^,]+") do ids[#ids + 1] = id end
local targets = {}
for t in string.gmatch(os.getenv("TARGETS") or "", "[^,]+") do targets[#targets + 1] = t end
local run = os.getenv("RUN") or "zdt-0-w0"
local out = os.getenv("OUT") or "."

-- Main state: the threads, so that done() can read their counters.
local threads = {}
setup = function(thread)
  local no = #threads
  if #targets > 0 then
    local host, port = string.match(targets[no % #targets + 1], "^(.+):(%d+)$")
    thread.addr = wrk.lookup(host, port)[1]
  end
  thread:set("tag", run .. "-t" .. no)
  threads[#threads + 1] = thread
end

-- Thread state (each thread runs its own copy of this script; tag was set by setup). sent is a
-- global because done() reads it with thread:get.
sent = 0
local n, acks, errors = 0, nil, nil
init = function(args)
  acks = assert(io.open(out .. "/acks-" .. tag .. ".txt", "w"))
  errors = assert(io.open(out .. "/errors-" .. tag .. ".txt", "w"))
  -- Line-buffered: whatever ends wrk, every acknowledged token already counted is on disk.
  acks:setvbuf("line")
  errors:setvbuf("line")
end

request = function()
  n = n + 1
  local id = ids[math.random(#ids)]
  if n % 2 == 0 then
    return wrk.format("GET", "/interview/session/" .. id)
  end
  sent = sent + 1
  local body = '{"session_id":"' .. id .. '","text":"' .. tag .. "-c" .. sent ..
    ' I led the migration of our billing service, with \\"care\\" and tests."}'
  return wrk.format("POST", "/interview/chat", { ["Content-Type"] = "application/json" }, body)
end

-- A chat answer holds the stored user message as "message":{... "text":"TOKEN ..."}; a session
-- read has "messages":[ instead, and a quote inside a text is escaped, so the plain '"message":{'
-- only ever starts a chat answer's own message.
response = function(status, headers, body)
  if status >= 200 and status < 300 then
    local at = string.find(body, '"message":{', 1, true)
    if at then
      local token = string.match(body, '"text":"(zdt%-[%w%-]+) ', at)
      acks:write((token or "untokened"), "\n")
    end
  else
    errors:write(status, " ", string.sub(string.gsub(body, "\n", " "), 1, 300), "\n")
  end
end

done = function(summary, latency, requests)
  local f = assert(io.open(out .. "/sent-" .. run .. ".txt", "w"))
  for _, t in ipairs(threads) do
    f:write(t:get("tag"), " ", t:get("sent"), "\n")
  end
  f:close()
  local e = summary.errors
  local w = assert(io.open(out .. "/wrk-" .. run .. ".txt", "w"))
  for _, kv in ipairs({
    { "requests", summary.requests },
    { "duration_us", summary.duration },
    { "non2xx", e.status },
    { "socket_errors", e.connect + e.read + e.write + e.timeout },
    { "connect", e.connect }, { "read", e.read }, { "write", e.write }, { "timeout", e.timeout },
    { "latency_max_us", latency.max },
    { "latency_mean_us", math.floor(latency.mean) },
    { "latency_p99_us", latency:percentile(99) },
  }) do
    w:write(kv[1], " ", tostring(kv[2]), "\n")
  end
  w:close()
end
