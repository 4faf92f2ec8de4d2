-- Packets queued for transmit, per process name.
--
--   bpftrace -e 'tracepoint:net:net_dev_queue { @[comm] = count(); }'
--
-- Usage: luajit scripts/netdevq.lua examples/packets_by_comm.lua [SECONDS] [FILTER]
--   SECONDS  stop after this long (default: at Ctrl-C)
--   FILTER   a netdevq filter, the one-liner's /predicate/: 'dev == "eth0"'
--
-- Counted in the kernel (aggregate = ...): no event crosses to user space. comm is whoever
-- runs when the packet is queued: in softirq context, the interrupted task.
local netdevq = require("netdevq")

local seconds, filter = tonumber(arg[1]), arg[2]
local t = assert(netdevq.open{
  filter = filter,
  aggregate = { kind = "count", keys = { "comm" }, name = "@" },
})
t:run{ duration = seconds }
assert(t:read_aggregate()):print()
t:close()
