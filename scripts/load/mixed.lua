-- A mixed interview workload for wrk: half chats, half session reads, over the sessions in SESSIONS.
-- TARGETS (comma-separated HOST:PORT) spreads wrk's threads over several server processes, as a
-- load balancer would: thread i connects to target i mod n.
local ids = {}
for id in string.gmatch(os.getenv("SESSIONS") or "", "[^,]+") do ids[#ids + 1] = id end

local targets = {}
for t in string.gmatch(os.getenv("TARGETS") or "", "[^,]+") do targets[#targets + 1] = t end
local next_thread = 0
setup = function(thread)
  if #targets > 0 then
    local host, port = string.match(targets[next_thread % #targets + 1], "^(.+):(%d+)$")
    thread.addr = wrk.lookup(host, port)[1]
    next_thread = next_thread + 1
  end
end

local n = 0
request = function()
  n = n + 1
  local id = ids[math.random(#ids)]
  if n % 2 == 0 then
    return wrk.format("GET", "/interview/session/" .. id)
  end
  local body = '{"session_id":"' .. id .. '","text":"I led the migration of our billing service, with \\"care\\" and tests."}'
  return wrk.format("POST", "/interview/chat", { ["Content-Type"] = "application/json" }, body)
end
