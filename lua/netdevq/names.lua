-- netdevq.names: the words and texts netdevq prints and reads, both ways, in one place —
-- IP protocol names, ethertype names, TCP flag letters, ICMP/ICMPv6 type and code names, and
-- IPv4 / IPv6 / MAC address text.
-- The catalogue's formatters, the filter's literals, the aggregation key decoders and the pcapng
-- comments all use these tables; nothing else spells a protocol name.
local bit = require("bit")
local ffi = require("ffi")

local band, bor, lshift = bit.band, bit.bor, bit.lshift
local byte, char, sub, find, match, format, rep, lower =
    string.byte, string.char, string.sub, string.find, string.match, string.format, string.rep,
    string.lower
local concat, sort = table.concat, table.sort
local floor = math.floor
local ffi_string = ffi.string
local tonumber, tostring, type, pairs, unpack = tonumber, tostring, type, pairs, unpack


local _M = {}


---------------------------------------------------------------------------------------------
-- IP protocols (IANA numbers, named as /etc/protocols and tcpdump do)
---------------------------------------------------------------------------------------------

local PROTO_NAMES = {
    [0] = "hopopt", [1] = "icmp", [2] = "igmp", [4] = "ipip", [6] = "tcp", [8] = "egp",
    [17] = "udp", [33] = "dccp", [41] = "ipv6", [43] = "ipv6-route", [44] = "ipv6-frag",
    [46] = "rsvp", [47] = "gre", [50] = "esp", [51] = "ah", [58] = "icmpv6",
    [59] = "ipv6-nonxt", [60] = "ipv6-opts", [88] = "eigrp", [89] = "ospf", [103] = "pim",
    [108] = "ipcomp", [112] = "vrrp", [115] = "l2tp", [132] = "sctp", [136] = "udplite",
    [137] = "mpls-in-ip", [143] = "ethernet",
}
-- other words a filter accepts for a protocol (never printed, never suggested)
local PROTO_ALIASES = { icmp6 = 58, ["ipv6-icmp"] = 58 }

local PROTO_TEXT, PROTO_NUMBER = {}, {}
for n = 0, 255 do
    PROTO_TEXT[n] = PROTO_NAMES[n] or tostring(n)
    PROTO_NUMBER[PROTO_TEXT[n]] = n
    PROTO_NUMBER[tostring(n)] = n
end
for name, n in pairs(PROTO_ALIASES) do
    PROTO_NUMBER[name] = n
end

-- 6 -> "tcp", 250 -> "250"
function _M.format_proto(n)
    return PROTO_TEXT[band(n, 0xff)]
end

-- "tcp", "TCP", "icmp6", "17" -> number; nil for anything else
function _M.proto_number(name)
    if type(name) == "number" then
        return name >= 0 and name <= 255 and name % 1 == 0 and name or nil
    end
    return type(name) == "string" and PROTO_NUMBER[lower(name)] or nil
end


---------------------------------------------------------------------------------------------
-- Ethertypes
---------------------------------------------------------------------------------------------

local ETHERTYPE_NAMES = {
    [0x0800] = "ipv4", [0x0806] = "arp", [0x8035] = "rarp", [0x86dd] = "ipv6",
    [0x8100] = "vlan", [0x88a8] = "qinq", [0x8847] = "mpls", [0x8848] = "mpls-mc",
    [0x8863] = "pppoe-disc", [0x8864] = "pppoe", [0x888e] = "eapol", [0x88cc] = "lldp",
    [0x88e5] = "macsec", [0x88f7] = "ptp", [0x8906] = "fcoe", [0x8137] = "ipx",
    [0x88ca] = "tipc", [0x4305] = "batman",
}
local ETHERTYPE_ALIASES = { ip = 0x0800, ip6 = 0x86dd, ["802.1q"] = 0x8100, ["802.1ad"] = 0x88a8 }

local ETHERTYPE_NUMBER = {}
for n, name in pairs(ETHERTYPE_NAMES) do
    ETHERTYPE_NUMBER[name] = n
end
for name, n in pairs(ETHERTYPE_ALIASES) do
    ETHERTYPE_NUMBER[name] = n
end
local ethertype_text = {}   -- memo: number -> text, fills with what the traffic uses

-- 0x86dd -> "ipv6", 0x1234 -> "0x1234"
function _M.format_ethertype(n)
    local s = ethertype_text[n]
    if not s then
        s = ETHERTYPE_NAMES[n] or format("0x%04x", n)
        ethertype_text[n] = s
    end
    return s
end

-- "ipv6", "IP6", "0x88cc" -> number; nil for anything else
function _M.ethertype_number(name)
    if type(name) == "number" then
        return name >= 0 and name <= 0xffff and name % 1 == 0 and name or nil
    end
    if type(name) ~= "string" then
        return nil
    end
    local n = ETHERTYPE_NUMBER[lower(name)]
    if n then
        return n
    end
    local hex = match(name, "^0[xX](%x%x?%x?%x?)$")
    return hex and tonumber(hex, 16) or nil
end


---------------------------------------------------------------------------------------------
-- TCP flags (tcpdump's print-tcp.c letters, in its tcp_flag_values order; "none" for none)
---------------------------------------------------------------------------------------------

local FLAG_LETTERS = {
    { 0x01, "F" }, { 0x02, "S" }, { 0x04, "R" }, { 0x08, "P" },
    { 0x10, "." }, { 0x20, "U" }, { 0x40, "E" }, { 0x80, "W" },
}
local FLAG_BIT = {}
for _, f in ipairs(FLAG_LETTERS) do
    FLAG_BIT[f[2]] = f[1]
end
local FLAGS_TEXT = {}
for b = 0, 255 do
    local s = ""
    for i = 1, #FLAG_LETTERS do
        if band(b, FLAG_LETTERS[i][1]) ~= 0 then
            s = s .. FLAG_LETTERS[i][2]
        end
    end
    FLAGS_TEXT[b] = s ~= "" and s or "none"
end

-- TCP header byte 13 (CWR ECE URG ACK PSH RST SYN FIN) -> "S."
function _M.format_tcp_flags(flags)
    return FLAGS_TEXT[band(flags, 0xff)]
end

-- "S.", ".S", "none", 0x12 -> the header byte; nil for anything else
function _M.tcp_flags_number(s)
    if type(s) == "number" then
        return s >= 0 and s <= 255 and s % 1 == 0 and s or nil
    end
    if type(s) ~= "string" then
        return nil
    end
    if s == "none" or s == "" then
        return 0
    end
    local n = 0
    for i = 1, #s do
        local b = FLAG_BIT[sub(s, i, i)]
        if not b then
            return nil
        end
        n = bor(n, b)
    end
    return n
end


---------------------------------------------------------------------------------------------
-- Addresses: bytes -> text
---------------------------------------------------------------------------------------------

-- a: pointer to (at least) 4 bytes in network order
local function format_ipv4(a)
    return format("%d.%d.%d.%d", a[0], a[1], a[2], a[3])
end
_M.format_ipv4 = format_ipv4

local function is_v4_mapped(a)
    for i = 0, 9 do
        if a[i] ~= 0 then
            return false
        end
    end
    return a[10] == 0xff and a[11] == 0xff
end
_M.is_v4_mapped = is_v4_mapped

local ipv6_parts = {}   -- reused: the 8 groups as hex text

-- groups: a function i (1..8) -> 16-bit group. RFC 5952: lowercase, no leading zeros, the
-- longest run of two or more zero groups (the first on ties) becomes "::".
local function compress_groups(group)
    local best_at, best_len, run_at, run_len = 0, 0, 0, 0
    for i = 1, 8 do
        local g = group(i)
        ipv6_parts[i] = format("%x", g)
        if g == 0 then
            if run_len == 0 then
                run_at = i
            end
            run_len = run_len + 1
            if run_len > best_len then
                best_at, best_len = run_at, run_len
            end
        else
            run_len = 0
        end
    end
    if best_len < 2 then
        return concat(ipv6_parts, ":", 1, 8)
    end
    return concat(ipv6_parts, ":", 1, best_at - 1) .. "::"
           .. concat(ipv6_parts, ":", best_at + best_len, 8)
end

-- a: pointer to 16 bytes in network order; IPv4-mapped as ::ffff:a.b.c.d (RFC 5952 section 5)
local cur6
local function group6(i)
    return cur6[2 * i - 2] * 256 + cur6[2 * i - 1]
end
local function format_ipv6(a)
    if is_v4_mapped(a) then
        return format("::ffff:%d.%d.%d.%d", a[12], a[13], a[14], a[15])
    end
    cur6 = a
    return compress_groups(group6)
end
_M.format_ipv6 = format_ipv6

-- family 4 or 6 and a pointer to the address bytes -> text (nil for another family). Memoized:
-- the same addresses come again and again, and a table lookup makes no string per event.
local ADDRESS_MEMO_MAX = 4096
local v4_text, v6_text, address_n = {}, {}, 0
function _M.address_text(family, a)
    local key, memo, text
    if family == 4 then
        key, memo = ((a[0] * 256 + a[1]) * 256 + a[2]) * 256 + a[3], v4_text
        text = memo[key]
        if text then
            return text
        end
        text = format_ipv4(a)
    elseif family == 6 then
        key, memo = ffi_string(a, 16), v6_text
        text = memo[key]
        if text then
            return text
        end
        text = format_ipv6(a)
    else
        return nil
    end
    if address_n >= ADDRESS_MEMO_MAX then
        v4_text, v6_text, address_n = {}, {}, 0
        memo = family == 4 and v4_text or v6_text
    end
    memo[key], address_n = text, address_n + 1
    return text
end

-- a: pointer to 6 bytes
function _M.format_mac(a)
    return format("%02x:%02x:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3], a[4], a[5])
end


---------------------------------------------------------------------------------------------
-- Addresses: text -> key (family byte 4 or 6, then 16 bytes; IPv4 in the first 4)
---------------------------------------------------------------------------------------------

local function parse_ipv4(s)
    local a, b, c, d = match(s, "^(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)$")
    if not a then
        return nil
    end
    a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
    if a > 255 or b > 255 or c > 255 or d > 255 then
        return nil
    end
    return char(a, b, c, d)
end

-- groups of "1:2:3" (the IPv4 tail allowed when v4ok) -> list of 16-bit numbers
local function ipv6_groups(part, v4ok, out)
    if part == "" then
        return out
    end
    local pos, n = 1, #part
    while true do
        local stop = find(part, ":", pos, true)
        local g = sub(part, pos, (stop or n + 1) - 1)
        if not stop and v4ok and find(g, ".", 1, true) then
            local v4 = parse_ipv4(g)
            if not v4 then
                return nil
            end
            local b1, b2, b3, b4 = byte(v4, 1, 4)
            out[#out + 1] = b1 * 256 + b2
            out[#out + 1] = b3 * 256 + b4
            return out
        end
        if not match(g, "^%x%x?%x?%x?$") then
            return nil
        end
        out[#out + 1] = tonumber(g, 16)
        if not stop then
            return out
        end
        pos = stop + 1
    end
end

-- RFC 4291 text: "::" compression, an embedded IPv4 tail; no zone index. -> 16 bytes | nil
local function parse_ipv6(s)
    if find(s, "[^%x:%.]") then
        return nil
    end
    local groups
    local dc = find(s, "::", 1, true)
    if dc then
        if find(s, "::", dc + 1, true) then
            return nil
        end
        local head = ipv6_groups(sub(s, 1, dc - 1), false, {})
        local tail = head and ipv6_groups(sub(s, dc + 2), true, {})
        if not tail or #head + #tail > 7 then
            return nil
        end
        groups = head
        for _ = 1, 8 - #head - #tail do
            groups[#groups + 1] = 0
        end
        for i = 1, #tail do
            groups[#groups + 1] = tail[i]
        end
    else
        groups = ipv6_groups(s, true, {})
        if not groups or #groups ~= 8 then
            return nil
        end
    end
    local b = {}
    for i = 1, 8 do
        b[2 * i - 1] = floor(groups[i] / 256)
        b[2 * i] = groups[i] % 256
    end
    return char(unpack(b))
end

local ZERO12 = rep("\0", 12)

-- "198.18.0.1" -> "\4" .. 4 bytes .. 12 zero bytes; "2001:db8::1" -> "\6" .. 16 bytes; nil if
-- neither.
function _M.addr_key(text)
    if type(text) ~= "string" then
        return nil
    end
    local v4 = parse_ipv4(text)
    if v4 then
        return "\4" .. v4 .. ZERO12
    end
    local v6 = parse_ipv6(text)
    return v6 and "\6" .. v6 or nil
end

-- key with every bit from `bits` on cleared
local function mask_key(key, bits)
    local nfull = floor(bits / 8)
    local out = sub(key, 1, 1 + nfull)
    local rem = bits % 8
    if rem > 0 then
        out = out .. char(band(byte(key, 2 + nfull), band(lshift(0xff, 8 - rem), 0xff)))
        nfull = nfull + 1
    end
    return out .. rep("\0", 16 - nfull)
end
_M.mask_key = mask_key

-- "198.18.0.0/15" -> { family = 4, bits = 15, key = masked key } | nil, why
function _M.parse_prefix(s)
    local addr, bits = match(s, "^([^/]*)/(%d+)$")
    if not addr then
        if find(s, "/", 1, true) then
            return nil, "expected a prefix length after '/'"
        end
        addr = s
    end
    local key = _M.addr_key(addr)
    if not key then
        return nil, "not an IPv4 or IPv6 address (like 198.18.0.1, 2001:db8::1, "
                    .. "198.18.0.0/15 or 2001:db8::/32)"
    end
    local family = byte(key, 1)
    local width = family == 4 and 32 or 128
    bits = bits and tonumber(bits) or width
    if bits > width then
        return nil, format("the prefix length of an IPv%d address is at most %d", family, width)
    end
    return { family = family, bits = bits, key = mask_key(key, bits) }
end

-- p contains q (every address of q is in p)
function _M.prefix_contains(p, q)
    return p.family == q.family and p.bits <= q.bits and mask_key(q.key, p.bits) == p.key
end

-- prefix -> "198.18.0.0/15", "2001:db8::/32"; whole = true leaves out a full-length "/32"
local function key_byte_group(i)
    return byte(cur6, 2 * i) * 256 + byte(cur6, 2 * i + 1)
end
function _M.prefix_text(p, whole)
    local key = p.key
    local text
    if p.family == 4 then
        local a, b, c, d = byte(key, 2, 5)
        text = format("%d.%d.%d.%d", a, b, c, d)
    else
        cur6 = key
        text = compress_groups(key_byte_group)
    end
    if whole and p.bits == (p.family == 4 and 32 or 128) then
        return text
    end
    return text .. "/" .. p.bits
end


---------------------------------------------------------------------------------------------
-- ICMP (RFC 792 and successors) and ICMPv6 (RFC 4443, 4861, 3810) types and codes, worded as
-- tcpdump prints them. Text output only: JSON and filters use the numbers.
---------------------------------------------------------------------------------------------

local ICMP_TYPES = {
    [4] = {
        [0] = "echo reply", [3] = "unreachable", [4] = "source quench", [5] = "redirect",
        [8] = "echo request", [9] = "router advertisement", [10] = "router solicitation",
        [11] = "time exceeded", [12] = "parameter problem", [13] = "timestamp request",
        [14] = "timestamp reply", [17] = "address mask request", [18] = "address mask reply",
    },
    [6] = {
        [1] = "destination unreachable", [2] = "packet too big", [3] = "time exceeded",
        [4] = "parameter problem", [128] = "echo request", [129] = "echo reply",
        [130] = "multicast listener query", [131] = "multicast listener report",
        [132] = "multicast listener done", [133] = "router solicitation",
        [134] = "router advertisement", [135] = "neighbor solicitation",
        [136] = "neighbor advertisement", [137] = "redirect",
        [143] = "multicast listener report v2",
    },
}
local ICMP_CODES = {
    [4] = {
        [3] = {
            [0] = "net unreachable", [1] = "host unreachable", [2] = "protocol unreachable",
            [3] = "port unreachable", [4] = "fragmentation needed", [5] = "source route failed",
            [6] = "net unknown", [7] = "host unknown", [9] = "net prohibited",
            [10] = "host prohibited", [11] = "net unreachable for tos",
            [12] = "host unreachable for tos", [13] = "communication prohibited",
        },
        [5] = { [0] = "net redirect", [1] = "host redirect", [2] = "tos net redirect",
                [3] = "tos host redirect" },
        [11] = { [0] = "ttl exceeded in transit", [1] = "fragment reassembly time exceeded" },
    },
    [6] = {
        [1] = {
            [0] = "no route", [1] = "administratively prohibited", [2] = "beyond scope",
            [3] = "address unreachable", [4] = "port unreachable",
            [5] = "source address failed policy", [6] = "reject route",
        },
        [3] = { [0] = "hop limit exceeded", [1] = "fragment reassembly time exceeded" },
        [4] = { [0] = "erroneous header field", [1] = "unrecognized next header",
                [2] = "unrecognized option" },
    },
}

-- family: 4 (ICMP) or 6 (ICMPv6). (6, 135) -> "neighbor solicitation"; unnamed: the number
local function icmp_type_text(family, icmp_type)
    local names = ICMP_TYPES[family]
    return names and names[icmp_type] or tostring(icmp_type)
end
_M.icmp_type_text = icmp_type_text

-- (4, 3, 3) -> "port unreachable"; a type without named codes: the number
function _M.icmp_code_text(family, icmp_type, code)
    local codes = ICMP_CODES[family]
    local names = codes and codes[icmp_type]
    return names and names[code] or tostring(code)
end

-- One phrase for the message, as tcpdump's one-line form: the code's name when the type has
-- named codes ("port unreachable"), else the type's ("echo request").
function _M.icmp_text(family, icmp_type, code)
    local codes = ICMP_CODES[family]
    local names = codes and codes[icmp_type]
    if names and names[code] then
        return names[code]
    end
    return icmp_type_text(family, icmp_type)
end


-- ARP operations (RFC 826, RFC 903 for RARP, RFC 2390 for InARP): 1 -> "request"
local ARP_OPS = { [1] = "request", [2] = "reply", [3] = "rarp request", [4] = "rarp reply",
    [8] = "inarp request", [9] = "inarp reply" }
function _M.arp_op_text(op)
    return ARP_OPS[op] or tostring(op)
end


---------------------------------------------------------------------------------------------
-- Names from outside: printable text
---------------------------------------------------------------------------------------------

-- Task comms and device names can hold any byte: a newline would forge a line, an escape
-- sequence retitle a terminal, invalid UTF-8 break JSON. printable() writes every byte outside
-- printable ASCII as \xNN and a backslash as \\ (as tcpdump and bpftrace do); text, JSON and
-- aggregation keys all show this text.
local UNSAFE = "[%z\1-\31\\\127-\255]"
local function escape_byte(c)
    if c == "\\" then
        return "\\\\"
    end
    return format("\\x%02x", byte(c))
end

-- memo: names repeat, and a table lookup is what LuaJIT compiles (a pattern find is not)
local escaped, escaped_n = {}, 0
function _M.printable(v)
    local e = escaped[v]
    if e then
        return e
    end
    e = find(v, UNSAFE) and v:gsub(UNSAFE, escape_byte) or v
    if escaped_n >= 4096 then
        escaped, escaped_n = {}, 0
    end
    escaped[v], escaped_n = e, escaped_n + 1
    return e
end


---------------------------------------------------------------------------------------------
-- Lists of names (for suggestions): sorted
---------------------------------------------------------------------------------------------

local function sorted_values(t)
    local out = {}
    for _, v in pairs(t) do
        out[#out + 1] = v
    end
    sort(out)
    return out
end
_M.PROTOCOL_NAMES = sorted_values(PROTO_NAMES)
_M.ETHERTYPE_NAMES = sorted_values(ETHERTYPE_NAMES)


return _M
