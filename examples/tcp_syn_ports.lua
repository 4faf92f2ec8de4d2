-- TCP connection attempts (SYN without ACK) per destination port.
--
--   bpftrace -e 'tracepoint:net:net_dev_queue {
--     $skb = (struct sk_buff *)args->skbaddr;
--     $ip = (struct iphdr *)($skb->head + $skb->network_header);
--     $th = (struct tcphdr *)($skb->head + $skb->transport_header);
--     if ($ip->protocol == 6 && $th->syn && !$th->ack) { @syn[bswap($th->dest)] = count(); } }'
--
-- Usage: luajit scripts/netdevq.lua examples/tcp_syn_ports.lua [SECONDS] [FILTER]
--   SECONDS  stop after this long (default: at Ctrl-C)
--   FILTER   a netdevq filter, and-ed with the SYN test: 'daddr == "10.0.0.0/8"'
--
-- The kernel checks proto (only TCP crosses to user space); tcp_flags is checked here, so the
-- counting is done in Lua as well: an aggregation object fed by agg:add.
local netdevq = require("netdevq")

local seconds = tonumber(arg[1])
local filter = 'proto == "tcp" and tcp_flags == "S"'
if arg[2] then filter = filter .. " and (" .. arg[2] .. ")" end

local syn = netdevq.count{ name = "@syn", keys = { "dport" } }
local t = assert(netdevq.open{ filter = filter, fields = { "dport" } })
t:on_event(function(ev) syn:add(ev.dport) end)

local st = assert(t:run{ duration = seconds })
t:close()
if st.lost > 0 then io.stderr:write("netdevq: ", st.lost, " events lost\n") end
syn:print()
