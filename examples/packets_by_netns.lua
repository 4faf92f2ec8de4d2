-- Packets queued for transmit, per network namespace (of the device).
--
--   bpftrace -e 'tracepoint:net:net_dev_queue {
--     @[((struct sk_buff *)args->skbaddr)->dev->nd_net.net->ns.inum] = count(); }'
--
-- Usage: luajit scripts/netdevq.lua examples/packets_by_netns.lua [SECONDS] [FILTER]
--   SECONDS  stop after this long (default: at Ctrl-C)
--   FILTER   a netdevq filter, the one-liner's /predicate/: 'proto == "udp"'
--
-- The key is the namespace's inode number, as `stat -L -c %i /proc/PID/ns/net` or
-- `ls -i /run/netns/NAME` show it. Counted in the kernel.
local netdevq = require("netdevq")

local seconds, filter = tonumber(arg[1]), arg[2]
local t = assert(netdevq.open{
  filter = filter,
  aggregate = { kind = "count", keys = { "netns" }, name = "@" },
})
t:run{ duration = seconds }
assert(t:read_aggregate()):print()
t:close()
