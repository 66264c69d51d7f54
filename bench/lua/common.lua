-- common.lua: helpers shared by the bench scripts; each script loads it with dofile().
--
-- Every wrk thread runs the script in its own Lua state, and setup()/done() run in yet another
-- (the main one). So responses are counted per thread in the global table `statuses`, and done()
-- collects them from every thread with thread:get() and prints one line for bench/common.py:
--   STATUS_COUNTS 200=12345 404=3
local M = {}

statuses = {} -- per-thread global: HTTP status -> count
thread_id = 0 -- set by setup() before the thread starts

local threads = {}

-- The number in environment variable `name`, or `default` when unset or not a number.
function M.env_number(name, default)
  local value = tonumber(os.getenv(name) or "")
  if value == nil then
    return default
  end
  return value
end

-- The environment variable `name`; stops wrk with a message when it is missing.
function M.env_required(name)
  local value = os.getenv(name)
  if value == nil or value == "" then
    error("environment variable " .. name .. " is required")
  end
  return value
end

-- The non-empty lines of a file, as a list.
function M.read_lines(path)
  local lines = {}
  local file = assert(io.open(path, "r"))
  for line in file:lines() do
    if line ~= "" then
      lines[#lines + 1] = line
    end
  end
  file:close()
  return lines
end

function M.setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread_id", #threads)
end

function M.init(args)
  -- distinct random sequences per thread and per run
  math.randomseed(os.time() * 1000 + thread_id * 7919 + math.floor(os.clock() * 1000000))
  for _ = 1, 10 do
    math.random()
  end
end

function M.response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function M.done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses") or {}) do
      total[status] = (total[status] or 0) + count
    end
  end
  local codes = {}
  for status in pairs(total) do
    codes[#codes + 1] = status
  end
  table.sort(codes)
  local parts = {}
  for _, status in ipairs(codes) do
    parts[#parts + 1] = string.format("%d=%d", status, total[status])
  end
  io.write("STATUS_COUNTS " .. table.concat(parts, " ") .. "\n")
end

-- Make setup/init/response/done wrk's hooks; the calling script defines request().
function M.install()
  setup = M.setup
  init = M.init
  response = M.response
  done = M.done
end

return M
