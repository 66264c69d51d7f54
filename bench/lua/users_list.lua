-- GET /users?limit=100 with, half of the time each, a random `skip` (OFFSET) or a random
-- `after_id` (keyset), both uniform in [0, USERS - 100].
-- env: USERS (required)
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")
common.install()

local last = math.max(tonumber(common.env_required("USERS")) - 100, 0)

request = function()
  local start = math.random(0, last)
  if math.random() < 0.5 then
    return wrk.format("GET", "/users?limit=100&skip=" .. start)
  end
  return wrk.format("GET", "/users?limit=100&after_id=" .. start)
end
