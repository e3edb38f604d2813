-- wrk script for bench/peers.py: process-status under the load bench/peer_etcd.lua puts
-- on etcd. The URL's path names the load, so one script serves the three scenarios:
--   /read   GET /status/peer-<k>/processed?ts=<seeded>   (every answer "processed")
--   /write  PUT /status/peer-<k> {"timestamp": <ts>}     (ts increasing: each write advances)
--   /mixed  nine reads, then one write, over and over
-- k runs over PEER_KEYS keys (default 1,000, the keys bench/peers.py seeds). With several
-- wrk threads, thread i writes timestamps n * 64 + i (its n-th write): distinct, increasing per thread.

local keys = tonumber(os.getenv("PEER_KEYS") or "1000")
local seeded = 100000000000  -- as bench/peer_etcd.lua
local mode = wrk.path:sub(2)
local headers = { ["Content-Type"] = "application/json" }
local next_id = 0
local counter = 0
local written = 0  -- its own count, so a mixed load's writes also cover every key
local reads = {}
local writes = {}

if mode ~= "read" and mode ~= "write" and mode ~= "mixed" then
   error("peer_status.lua: unknown load " .. wrk.path .. " (want /read, /write or /mixed)")
end

-- Built once per thread, so a read costs wrk the same table lookup on both systems.
for k = 0, keys - 1 do
   reads[k] = "/status/peer-" .. k .. "/processed?ts=" .. string.format("%.0f", seeded)
   writes[k] = "/status/peer-" .. k
end

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
end

local function write()
   written = written + 1
   local ts = seeded + written * 64 + (tonumber(id) or 0)
   return wrk.format("PUT", writes[written % keys], headers, '{"timestamp":' .. string.format("%.0f", ts) .. '}')
end

local function read()
   return wrk.format("GET", reads[counter % keys])
end

function request()
   counter = counter + 1
   if mode == "write" or (mode == "mixed" and counter % 10 == 0) then
      return write()
   end
   return read()
end
