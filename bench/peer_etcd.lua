-- wrk script for bench/peers.py: etcd v3's HTTP/JSON gateway under the load
-- bench/peer_status.lua puts on process-status (same keys, same order, same mix). The
-- URL's path names the load:
--   /read               POST /v3/kv/range {"key"}  (etcd's default: a linearizable read)
--   /read-serializable  the same with "serializable": true (answered by the member alone)
--   /write              POST /v3/kv/put {"key", "value": <ts>}  (ts increasing)
--   /mixed              nine (linearizable) reads, then one write, over and over
-- Keys and values are base64 in the gateway's JSON: the keys are encoded once per
-- thread, each value from a table of 3-digit groups, so wrk spends about as much per
-- request here as on process-status.

local keys = tonumber(os.getenv("PEER_KEYS") or "1000")
local seeded = 100000000000  -- 12 digits: four 3-digit groups, 4 base64 characters each
local mode = wrk.path:sub(2)
local headers = { ["Content-Type"] = "application/json" }
local next_id = 0
local counter = 0
local written = 0  -- its own count, so a mixed load's writes also cover every key
local reads = {}
local serializable = {}
local encoded_keys = {}
local groups = {}

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(text)
   local out = {}
   for i = 1, #text, 3 do
      local a, b, c = text:byte(i, i + 2)
      local n = a * 65536 + (b or 0) * 256 + (c or 0)
      local chars = 2 + (b and 1 or 0) + (c and 1 or 0)
      for j = 1, 4 do
         if j <= chars then
            local index = math.floor(n / 2 ^ (6 * (4 - j))) % 64
            out[#out + 1] = alphabet:sub(index + 1, index + 1)
         else
            out[#out + 1] = "="
         end
      end
   end
   return table.concat(out)
end

if mode ~= "read" and mode ~= "read-serializable" and mode ~= "write" and mode ~= "mixed" then
   error("peer_etcd.lua: unknown load " .. wrk.path
         .. " (want /read, /read-serializable, /write or /mixed)")
end

for k = 0, keys - 1 do
   encoded_keys[k] = base64("peer-" .. k)
   reads[k] = '{"key":"' .. encoded_keys[k] .. '"}'
   serializable[k] = '{"key":"' .. encoded_keys[k] .. '","serializable":true}'
end
for g = 0, 999 do
   groups[g] = base64(string.format("%03d", g))
end

local function encode_ts(ts)
   local parts = {}
   for j = 4, 1, -1 do
      parts[j] = groups[ts % 1000]
      ts = math.floor(ts / 1000)
   end
   return table.concat(parts)
end

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
end

local function write()
   written = written + 1
   local ts = seeded + written * 64 + (tonumber(id) or 0)
   local body = '{"key":"' .. encoded_keys[written % keys] .. '","value":"' .. encode_ts(ts) .. '"}'
   return wrk.format("POST", "/v3/kv/put", headers, body)
end

function request()
   counter = counter + 1
   if mode == "write" or (mode == "mixed" and counter % 10 == 0) then
      return write()
   end
   local bodies = mode == "read-serializable" and serializable or reads
   return wrk.format("POST", "/v3/kv/range", headers, bodies[counter % keys])
end
