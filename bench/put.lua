-- wrk script: PUT /status/{entity} {"timestamp": <ts>} over a few hundred entities.
--
-- Each request takes the next entity round-robin and a timestamp that keeps
-- increasing, so (nearly) every write advances its entity. With several wrk
-- threads, thread i uses counter * 64 + i: distinct, increasing per thread
-- (up to 64 threads).
--
-- Env: PUT_ENTITIES (default 300), PUT_PREFIX (default "bench-put-").

local entities = tonumber(os.getenv("PUT_ENTITIES") or "300")
local prefix = os.getenv("PUT_PREFIX") or "bench-put-"
local headers = { ["Content-Type"] = "application/json" }
local next_id = 0
local counter = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
end

function request()
   counter = counter + 1
   local ts = 1000000 + counter * 64 + (tonumber(id) or 0)
   local entity = prefix .. (counter % entities)
   return wrk.format("PUT", "/status/" .. entity, headers, '{"timestamp":' .. ts .. '}')
end
