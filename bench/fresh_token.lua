-- wrk script: a token never sent before on every read (bench-gate/<n>, n
-- increasing, all below the 10^15 bench/gateway.py records), so no gateway
-- cache can answer and every read asks process-status. With several wrk
-- threads, thread i uses counter * 64 + i (up to 64 threads).

local next_id = 0
local counter = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
end

function request()
   counter = counter + 1
   local n = counter * 64 + (tonumber(id) or 0)
   return wrk.format(nil, nil, { ["X-Event-Streamex-Entity-Timestamp"] = "bench-gate/" .. n })
end
