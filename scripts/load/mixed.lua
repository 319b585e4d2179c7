-- A mixed interview workload for wrk: half chats, half session reads, over the sessions in SESSIONS.
local ids = {}
for id in string.gmatch(os.getenv("SESSIONS") or "", "[^,]+") do ids[#ids + 1] = id end
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
