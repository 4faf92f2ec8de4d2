-- Top talkers: bytes queued for transmit per 5-tuple, the largest N at the end.
--
--   bpftrace -e 'tracepoint:net:net_dev_queue {
--     $skb = (struct sk_buff *)args->skbaddr;
--     $ip = (struct iphdr *)($skb->head + $skb->network_header);
--     $uh = (struct udphdr *)($skb->head + $skb->transport_header);
--     @bytes[ntop($ip->saddr), bswap($uh->source), ntop($ip->daddr), bswap($uh->dest),
--            $ip->protocol] = sum(args->len); }
--     END { print(@bytes, 10); clear(@bytes); }'
--
-- Usage: luajit scripts/netdevq.lua examples/top_talkers.lua [SECONDS] [FILTER] [N]
--   SECONDS  stop after this long (default: at Ctrl-C)
--   FILTER   a netdevq filter, the one-liner's /predicate/: 'dev == "eth0"'
--   N        how many to print (default 10)
--
-- The one-liner assumes IPv4 and a TCP/UDP header; netdevq parses IPv4, IPv6 and the L4 header
-- for you, a field a packet does not have (ports of ICMP) is "-". Five key fields are more than
-- an in-kernel key holds (four), so events come to Lua and aggregate.feeder sums them here.
local netdevq = require("netdevq")

local seconds, filter, top = tonumber(arg[1]), arg[2], tonumber(arg[3]) or 10
local keys = { "saddr", "sport", "daddr", "dport", "proto" }
local bytes = netdevq.sum{ name = "@bytes", keys = keys, value = "len" }
local t = assert(netdevq.open{ filter = filter, fields = { "len", unpack(keys) } })
t:on_event(netdevq.aggregate.feeder(bytes, keys, "len"))

local st = assert(t:run{ duration = seconds })
t:close()
if st.lost > 0 then io.stderr:write("netdevq: ", st.lost, " events lost\n") end

-- print(@bytes, N): the N largest, still in ascending order
local list = bytes:entries()
for i = math.max(1, #list - top + 1), #list do
  io.write(string.format("%s%s: %d\n", bytes.name, list[i].text, list[i].value))
end
