-- Packet size histogram (power-of-2 buckets), per device.
--
--   bpftrace -e 'tracepoint:net:net_dev_queue { @bytes[str(args->name)] = hist(args->len); }'
--
-- Usage: luajit scripts/netdevq.lua examples/size_hist.lua [SECONDS] [FILTER]
--   SECONDS  stop after this long (default: at Ctrl-C)
--   FILTER   a netdevq filter, the one-liner's /predicate/: 'dev == "eth0"'
--
-- Bucketed in the kernel, printed like bpftrace. For linear buckets use kind = "lhist" with
-- min, max and step (bpftrace's lhist(args->len, 0, 1500, 100)).
local netdevq = require("netdevq")

local seconds, filter = tonumber(arg[1]), arg[2]
local t = assert(netdevq.open{
  filter = filter,
  aggregate = { kind = "hist", keys = { "dev" }, value = "len", name = "@bytes" },
})
t:run{ duration = seconds }
assert(t:read_aggregate()):print()
t:close()
