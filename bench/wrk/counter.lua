-- wrk script for bench/http_compare.py: one connection per wrk thread (-t N -c N),
-- each with the cookie of its own session, read from the file given after `--`.
--   wrk ... -s counter.lua URL -- write|read COOKIES_FILE
-- COOKIES_FILE has one line per thread: "<Cookie header value> <count> <slack>"; a read
-- phase's first answer may be up to <slack> more than <count>: the write that was in
-- flight when the previous wrk run stopped may have committed after the bench read back.
-- A write (POST) must answer the count this connection last saw plus one, a read
-- (GET) the count it last saw: nobody else uses the session. At the end every
-- thread's figures are printed for the bench to check against the server.
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1]
  local n = 0
  for line in io.lines(args[2]) do
    n = n + 1
    if n == id then
      cookie, count, slack = line:match("^(.-)%s+(%d+)%s+(%d+)$")
      count, slack = tonumber(count), tonumber(slack)
    end
  end
  acked, mismatches, bad_status = 0, 0, 0
  if mode == "write" then
    req = wrk.format("POST", "/count", { ["Cookie"] = cookie }, "")
  else
    req = wrk.format("GET", "/count", { ["Cookie"] = cookie })
  end
end

function request()
  return req
end

function response(status, headers, body)
  if status ~= 200 then
    bad_status = bad_status + 1
    return
  end
  local seen = tonumber(body)
  local expected = count
  if mode == "write" then
    expected = count + 1
  end
  if seen ~= expected and not (seen and seen > expected and seen <= expected + slack) then
    mismatches = mismatches + 1
  end
  slack = 0
  if seen then
    count = seen
  end
  acked = acked + 1
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("zodbsession-bench %d %d %d %d %d\n", t:get("id"), t:get("count"),
      t:get("acked"), t:get("mismatches"), t:get("bad_status")))
  end
end
