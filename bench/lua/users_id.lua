-- GET /users/{id} with id uniform in [1, USERS].
-- env: USERS (required)
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")
common.install()

local users = tonumber(common.env_required("USERS"))

request = function()
  return wrk.format("GET", "/users/" .. math.random(1, users))
end
