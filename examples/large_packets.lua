-- Large packets: count and bytes per process, for packets longer than MIN_LEN.
--
--   bpftrace -e 'tracepoint:net:net_dev_queue /args->len > 1000/ {
--     @pkts[comm, pid] = count(); @bytes[comm, pid] = sum(args->len); }'
--
-- Usage: luajit scripts/netdevq.lua examples/large_packets.lua [SECONDS] [FILTER] [MIN_LEN]
--   SECONDS  stop after this long (default: at Ctrl-C)
--   FILTER   a netdevq filter, and-ed with the length test: 'dev == "eth0"'
--   MIN_LEN  bytes (default 1000)
--
-- Two maps from one probe: the kernel filters on len, Lua feeds both aggregations from each
-- event (one key table reused: add() copies a key only when it is new).
local netdevq = require("netdevq")

local seconds, min_len = tonumber(arg[1]), tonumber(arg[3]) or 1000
local filter = "len > " .. min_len
if arg[2] then filter = filter .. " and (" .. arg[2] .. ")" end

local keys = { "comm", "pid" }
local pkts = netdevq.count{ name = "@pkts", keys = keys }
local bytes = netdevq.sum{ name = "@bytes", keys = keys, value = "len" }
local t = assert(netdevq.open{ filter = filter, fields = { "comm", "pid", "len" } })
local key = {}
t:on_event(function(ev)
  key[1], key[2] = ev.comm, ev.pid
  pkts:add(key)
  bytes:add(key, ev.len)
end)

local st = assert(t:run{ duration = seconds })
t:close()
if st.lost > 0 then io.stderr:write("netdevq: ", st.lost, " events lost\n") end
bytes:print()   -- bpftrace prints its maps in name order
pkts:print()
