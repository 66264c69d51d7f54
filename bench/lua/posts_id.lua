-- GET /posts/{id} with id uniform in [1, POSTS].
-- env: POSTS (required: the number of posts, ids 1..POSTS)
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")
common.install()

local posts = tonumber(common.env_required("POSTS"))

request = function()
  return wrk.format("GET", "/posts/" .. math.random(1, posts))
end
