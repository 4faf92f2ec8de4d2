--- spec/support/frames.lua: Ethernet frames as hex text, for `ndq_frames frames IFNAME HEX...`
-- (AF_PACKET): VLAN tags, IPv6 extension headers and the like, which sockets do not build.
--
--     local frames = require("support.frames")
--     local hex = frames.eth(pair, "8100" .. "0064" .. "0800" .. frames.ipv4(pair, 17,
--         frames.udp(40000, 9000, 12)))
--
-- Frames go from pair.mac_a to pair.mac_b, packets from the pair's a addresses to its b ones
-- (support.netns pair fields). Checksums: IPv4's header checksum is right; UDP and TCP carry 0
-- (the receiver drops them; the specs only look at what was sent).
local bit = require("bit")

local _M = {}

local function hex(bytes)
    local out = {}
    for i, b in ipairs(bytes) do out[i] = ("%02x"):format(b) end
    return table.concat(out)
end

local function u16(n) return ("%04x"):format(n) end

local function mac_hex(mac) return (mac:gsub(":", "")) end

local function add_groups(part, list)
    for g in part:gmatch("[^:]+") do list[#list + 1] = ("%04x"):format(tonumber(g, 16)) end
end

-- "2001:db8::2" -> 32 hex digits
local function v6_hex(addr)
    local head, tail = addr:match("^(.-)::(.*)$")
    local groups = {}
    if head then
        local h, t = {}, {}
        add_groups(head, h)
        add_groups(tail, t)
        for _, g in ipairs(h) do groups[#groups + 1] = g end
        for _ = 1, 8 - #h - #t do groups[#groups + 1] = "0000" end
        for _, g in ipairs(t) do groups[#groups + 1] = g end
    else
        add_groups(addr, groups)
    end
    return table.concat(groups)
end
_M.v6_hex = v6_hex

local function v4_hex(addr)
    local a, b, c, d = addr:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    return hex({ tonumber(a), tonumber(b), tonumber(c), tonumber(d) })
end

-- etype_and_tags: hex from the ethertype on, tags included ("8100" .. TCI .. "0800" ...)
function _M.eth(pair, etype_and_tags)
    return mac_hex(pair.mac_b) .. mac_hex(pair.mac_a) .. etype_and_tags
end

function _M.ipv6(pair, nh, payload_hex)
    return "60000000" .. u16(#payload_hex / 2) .. ("%02x"):format(nh) .. "40"
        .. v6_hex(pair.ip6_a) .. v6_hex(pair.ip6_b) .. payload_hex
end

function _M.ipv4(pair, proto, payload_hex)
    local h = "4500" .. u16(20 + #payload_hex / 2) .. "1234" .. "0000" .. "40"
        .. ("%02x"):format(proto) .. "0000" .. v4_hex(pair.ip4_a) .. v4_hex(pair.ip4_b)
    local sum = 0
    for i = 1, #h, 4 do sum = sum + tonumber(h:sub(i, i + 3), 16) end
    while sum > 0xffff do sum = bit.band(sum, 0xffff) + bit.rshift(sum, 16) end
    return h:sub(1, 20) .. u16(bit.bxor(sum, 0xffff)) .. h:sub(25) .. payload_hex
end

function _M.udp(sport, dport, payload_len)
    return u16(sport) .. u16(dport) .. u16(8 + payload_len) .. "0000" .. ("78"):rep(payload_len)
end

function _M.tcp_syn(sport, dport)
    return u16(sport) .. u16(dport) .. "00000001" .. "00000000" .. "5002" .. "ffff" .. "00000000"
end

return _M
