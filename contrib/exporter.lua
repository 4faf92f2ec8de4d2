-- netdevq's Prometheus exporter script: what contrib/netdevq.service runs (installed as
-- /usr/share/netdevq/exporter.lua; copy it to /etc/netdevq/ to change it, see
-- docs/prometheus.md). One in-kernel histogram of packet sizes per device and protocol gives
-- three things at once: packets (_count), bytes (_sum) and the size distribution (_bucket):
--
--   netdevq_packet_len_bytes_bucket{dev="eth0",proto="tcp",le="127"} 1234
--   rate(netdevq_packet_len_bytes_count[1m])     packets/s per device and protocol
--   rate(netdevq_packet_len_bytes_sum[1m])       bytes/s
--
-- plus netdevq's own counters (netdevq_events_total, netdevq_lost_total, ...).
--
-- Usage: netdevq exporter.lua [[ADDR:]PORT] [FILTER]
--   [ADDR:]PORT  where /metrics is served (default 127.0.0.1:9464)
--   FILTER       a netdevq filter the kernel checks, e.g. 'dev == "eth0"' (default: every packet)
-- Runs until SIGTERM/SIGINT; exits 1 with one line on stderr when it cannot start.
local netdevq = require("netdevq")

local listen = arg[1]
if listen == nil or listen == "" then listen = "127.0.0.1:9464" end
local filter = arg[2]
if filter == "" then filter = nil end

local mode = os.getenv("NETDEVQ_MODE") -- raw (default) or btf
if mode ~= "btf" then mode = "raw" end

local spec = { kind = "hist", keys = { "dev", "proto" }, value = "len" }
local t, err = netdevq.open{ filter = filter, aggregate = spec, mode = mode }
if not t then
  io.stderr:write(err, "\n")
  return 1
end
local sizes = netdevq.hist{ name = "@packet_len", keys = spec.keys, value = spec.value }
local exporter, perr = netdevq.prometheus{ listen = listen, tracer = t }
if not exporter then
  t:close()
  io.stderr:write(perr, "\n")
  return 1
end
exporter:add(sizes, { kernel = t, help = "sizes of the packets queued for transmit (skb->len)" })
io.stderr:write("netdevq: exporting on ", exporter:url(), "\n")
io.stderr:flush()
local stats, rerr = t:run{}
exporter:close()
t:close()
if not stats then
  io.stderr:write(rerr, "\n")
  return 1
end
io.stderr:write(("netdevq: %d events, %d lost\n"):format(stats.events, stats.lost))
return 0
