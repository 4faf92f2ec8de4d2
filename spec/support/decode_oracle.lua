--- spec/support/decode_oracle.lua: what tshark and tcpdump make of the packets a spec captured,
-- in netdevq's field terms, for the decoding specs (IPv6 extension headers, ICMP, VLAN).
--
--     local oracle = require("support.decode_oracle")
--     local rows = oracle.tshark_events(pcap_path)   -- one table per packet, netdevq field names
--     local dump = oracle.tcpdump_frames(path, "ether src 02:...") -- header line + hex per packet
--
-- tshark runs with IPv4/IPv6 reassembly off, so each frame is decoded on its own: a first
-- fragment shows its ports, a later one none, like netdevq. Fields tshark repeats for headers
-- inside an ICMP error (the quoted packet) are taken at their first occurrence: the outer one.
local netns = require("support.netns")

local _M = {}

local FIELDS = {
    "frame.len", "eth.src", "eth.dst", "eth.type", "vlan.id", "vlan.priority",
    "ieee8021ad.id", "ieee8021ad.priority", "ip.src", "ip.dst", "ip.proto", "ip.frag_offset",
    "ip.flags.mf", "ipv6.src", "ipv6.dst", "ipv6.nxt", "ipv6.hopopts.nxt", "ipv6.routing.nxt",
    "ipv6.fraghdr.nxt", "ipv6.fraghdr.offset", "ipv6.dstopts.nxt", "ah.next_header",
    "udp.srcport", "udp.dstport", "tcp.srcport", "tcp.dstport", "icmp.type", "icmp.code",
    "icmpv6.type", "icmpv6.code",
}

-- IPv6 extension header -> the tshark field holding its next header
local EXT_NEXT = {
    [0] = "ipv6.hopopts.nxt", [43] = "ipv6.routing.nxt", [44] = "ipv6.fraghdr.nxt",
    [51] = "ah.next_header", [60] = "ipv6.dstopts.nxt",
}

local PROTO = { [1] = "icmp", [6] = "tcp", [17] = "udp", [58] = "icmpv6", [132] = "sctp" }

local function split(v)
    local out = {}
    for x in (v or ""):gmatch("[^,]+") do out[#out + 1] = x end
    return out
end

local function num(v)
    if v == nil or v == "" then return nil end
    if v:match("^0x") then return tonumber(v:sub(3), 16) end
    return tonumber(v)
end

-- The IPv6 chain as tshark shows it: upper-layer protocol number and extension header count.
local function ipv6_chain(row)
    local used = {}
    local nh = num(split(row["ipv6.nxt"])[1])
    local n = 0
    while nh ~= nil and EXT_NEXT[nh] and n < 16 do
        local f = EXT_NEXT[nh]
        used[f] = (used[f] or 0) + 1
        local v = split(row[f])[used[f]]
        n = n + 1
        nh = num(v)
    end
    return nh, n
end

-- One tshark row -> the fields netdevq must show for that frame (nil where absent). The frame's
-- ethertype is left to the caller (skb->protocol: with an offloaded tag it is the inner one).
local function event_of(row)
    local first = function(f) return split(row[f])[1] end
    local ev = { frame_len = num(row["frame.len"]), smac = first("eth.src"),
                 dmac = first("eth.dst") }
    local etype = num(first("eth.type"))
    if etype == 0x88a8 then
        ev.vlan_proto, ev.vlan_id = etype, num(first("ieee8021ad.id"))
        ev.vlan_pcp = num(first("ieee8021ad.priority"))
    elseif etype == 0x8100 then
        ev.vlan_proto, ev.vlan_id = etype, num(first("vlan.id"))
        ev.vlan_pcp = num(first("vlan.priority"))
    end
    local proto
    if first("ip.src") then
        ev.saddr, ev.daddr = first("ip.src"), first("ip.dst")
        proto = num(first("ip.proto"))
        local off, mf = num(first("ip.frag_offset")), num(first("ip.flags.mf"))
        if (off and off > 0) or mf == 1 then ev.frag_off = off * 8 end -- tshark: 8-byte units
    elseif first("ipv6.src") then
        ev.saddr, ev.daddr = first("ipv6.src"), first("ipv6.dst")
        proto, ev.ip6_ext = ipv6_chain(row)
        local off = num(first("ipv6.fraghdr.offset"))
        if off then ev.frag_off = off * 8 end
    end
    if proto then
        ev.proto = PROTO[proto] or tostring(proto)
    end
    local nonfirst = ev.frag_off and ev.frag_off > 0
    if not nonfirst and (proto == 17 or proto == 6) then
        local l4 = proto == 17 and "udp" or "tcp"
        ev.sport, ev.dport = num(first(l4 .. ".srcport")), num(first(l4 .. ".dstport"))
    elseif not nonfirst and (proto == 1 or proto == 58) then
        local l4 = proto == 1 and "icmp" or "icmpv6"
        ev.icmp_type, ev.icmp_code = num(first(l4 .. ".type")), num(first(l4 .. ".code"))
    end
    return ev
end

--- tshark's decoding of every frame in a capture file, as netdevq fields (see event_of).
-- display: an optional display filter (e.g. `frame.interface_name == "x"`).
function _M.tshark_events(path, display)
    local argv = { "tshark", "-r", path, "-o", "ip.defragment:FALSE", "-o",
        "ipv6.defragment:FALSE", "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a",
        "-E", "aggregator=,", "-E", "quote=n" }
    if display then
        argv[#argv + 1] = "-Y"
        argv[#argv + 1] = display
    end
    for _, f in ipairs(FIELDS) do
        argv[#argv + 1] = "-e"
        argv[#argv + 1] = f
    end
    local ok, out = netns.run(argv)
    assert(ok, "tshark failed: " .. out)
    local rows = {}
    for line in out:gmatch("[^\n]+") do
        if not line:match("^Running as user") then
            local row, i = {}, 1
            for value in (line .. "\t"):gmatch("([^\t]*)\t") do
                row[FIELDS[i]] = value
                i = i + 1
            end
            assert(i - 1 == #FIELDS, "tshark line with " .. (i - 1) .. " fields: " .. line)
            rows[#rows + 1] = event_of(row)
        end
    end
    return rows
end

--- tcpdump's view of the frames: per packet its header line (-e, decoded) and its bytes as hex,
-- the first `max` bytes (default 256). expr: a pcap expression selecting the packets.
function _M.tcpdump_frames(path, expr, max)
    max = max or 256
    local argv = { "tcpdump", "-r", path, "-nn", "-e", "-t", "-xx" }
    if expr then argv[#argv + 1] = expr end
    local ok, out = netns.run(argv)
    assert(ok, "tcpdump failed: " .. out)
    local frames, cur = {}, nil
    for line in out:gmatch("[^\n]+") do
        local off, hex = line:match("^%s+0x(%x+):%s+(.-)%s*$")
        if off then
            if tonumber(off, 16) < max then
                cur.hex = cur.hex .. hex:gsub("%s", "")
            end
        elseif not line:match("^reading from file") then
            cur = { head = line, hex = "" }
            frames[#frames + 1] = cur
        end
    end
    for _, f in ipairs(frames) do f.hex = f.hex:sub(1, 2 * max) end
    return frames
end

return _M
