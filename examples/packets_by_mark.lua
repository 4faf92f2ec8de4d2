-- Packets queued for transmit, per firewall mark (skb->mark: SO_MARK, iptables/nft MARK).
--
--   bpftrace -e 'tracepoint:net:net_dev_queue {
--     @[((struct sk_buff *)args->skbaddr)->mark] = count(); }'
--
-- Usage: luajit scripts/netdevq.lua examples/packets_by_mark.lua [SECONDS] [FILTER]
--   SECONDS  stop after this long (default: at Ctrl-C)
--   FILTER   a netdevq filter, the one-liner's /predicate/: 'dev == "eth0"'
--
-- Counted in the kernel.
local netdevq = require("netdevq")

local seconds, filter = tonumber(arg[1]), arg[2]
local t = assert(netdevq.open{
  filter = filter,
  aggregate = { kind = "count", keys = { "mark" }, name = "@" },
})
t:run{ duration = seconds }
assert(t:read_aggregate()):print()
t:close()
