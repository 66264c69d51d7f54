-- POST /posts as a rotating set of users: one access token per line in TOKENS_FILE.
-- env: TOKENS_FILE (required)
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")
common.install()

local headers = {}
for i, token in ipairs(common.read_lines(common.env_required("TOKENS_FILE"))) do
  headers[i] = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token }
end
assert(#headers > 0, "TOKENS_FILE has no tokens")

local content = string.rep("Benchmark post body. ", 10)
local sent = 0

request = function()
  sent = sent + 1
  local body = string.format(
    '{"title":"bench post %d-%d","content":"%s"}', thread_id, sent, content
  )
  return wrk.format("POST", "/posts", headers[(sent % #headers) + 1], body)
end
