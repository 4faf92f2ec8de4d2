-- Bytes queued for transmit, per device.
--
--   bpftrace -e 'tracepoint:net:net_dev_queue { @bytes[str(args->name)] = sum(args->len); }'
--
-- Usage: luajit scripts/netdevq.lua examples/bytes_by_dev.lua [SECONDS] [FILTER]
--   SECONDS  stop after this long (default: at Ctrl-C)
--   FILTER   a netdevq filter, the one-liner's /predicate/: 'proto == "tcp"'
--
-- Summed in the kernel. len is skb->len: the whole frame, link header included.
local netdevq = require("netdevq")

local seconds, filter = tonumber(arg[1]), arg[2]
local t = assert(netdevq.open{
  filter = filter,
  aggregate = { kind = "sum", keys = { "dev" }, value = "len", name = "@bytes" },
})
t:run{ duration = seconds }
assert(t:read_aggregate()):print()
t:close()
