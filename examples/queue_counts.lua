-- Packets per device and transmit queue (skb->queue_mapping), every interval.
--
--   bpftrace -e 'tracepoint:net:net_dev_queue {
--     @[str(args->name), ((struct sk_buff *)args->skbaddr)->queue_mapping] = count(); }
--     interval:s:1 { print(@); clear(@); }'
--
-- Usage: luajit scripts/netdevq.lua examples/queue_counts.lua [SECONDS] [FILTER] [INTERVAL]
--   SECONDS   stop after this long (default: at Ctrl-C)
--   FILTER    a netdevq filter, the one-liner's /predicate/: 'dev == "eth0"'
--   INTERVAL  print and clear every INTERVAL seconds (default: only at the end)
--
-- Counted in the kernel; read_aggregate(agg, true) reads and clears the kernel map at once,
-- so no packet is counted twice or lost between intervals. See netqtop.lua for sizes per queue.
local netdevq = require("netdevq")

local seconds, filter, interval = tonumber(arg[1]), arg[2], tonumber(arg[3])
local spec = { kind = "count", keys = { "dev", "queue" }, name = "@" }
local t = assert(netdevq.open{ filter = filter, aggregate = spec })
local counts = netdevq.aggregate.new(spec)

local function print_and_clear()
  counts:clear()
  assert(t:read_aggregate(counts, true)):print()
  io.stdout:flush()
end

t:run{ duration = seconds, interval = interval, on_tick = print_and_clear }
print_and_clear()
t:close()
