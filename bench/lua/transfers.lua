-- POST /transfers from a random sender to a random other user, 0.01..5.00 each.
-- env: TOKENS_FILE (required; lines "<user id> <access token>"), MODE = random | hot,
--      HOT_USERS (10), HOT_SHARE (0.9): in hot mode that share of the transfers has both sender
--      and recipient among the first HOT_USERS users of the file; the rest is uniform over all.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")
common.install()

local ids, headers = {}, {}
for i, line in ipairs(common.read_lines(common.env_required("TOKENS_FILE"))) do
  local id, token = line:match("^(%d+)%s+(%S+)$")
  assert(id, "bad line in TOKENS_FILE: " .. line)
  ids[i] = tonumber(id)
  headers[i] = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token }
end
assert(#ids >= 2, "TOKENS_FILE needs at least 2 users")

local mode = os.getenv("MODE") or "random"
assert(mode == "random" or mode == "hot", "MODE must be random or hot")
local hot_users = math.min(common.env_number("HOT_USERS", 10), #ids)
local hot_share = common.env_number("HOT_SHARE", 0.9)

-- two distinct indexes in [1, n]
local function pair(n)
  local from = math.random(1, n)
  local to = math.random(1, n - 1)
  if to >= from then
    to = to + 1
  end
  return from, to
end

request = function()
  local n = #ids
  if mode == "hot" and math.random() < hot_share then
    n = hot_users
  end
  local from, to = pair(n)
  local cents = math.random(1, 500)
  local body = string.format(
    '{"to_user_id":%d,"amount":"%d.%02d"}', ids[to], math.floor(cents / 100), cents % 100
  )
  return wrk.format("POST", "/transfers", headers[from], body)
end
