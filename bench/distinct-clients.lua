-- wrk script: every request comes from a different client (its own User-Agent), so a policy
-- decision is never found in the decision cache; the other headers are those given with -H.
local counter = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end

function request()
  counter = counter + 1
  wrk.headers["User-Agent"] = "bench-client-" .. id .. "-" .. counter
  return wrk.format()
end
