-- netdevq.filter: the --filter language (contract.md, "Filter grammar").
--
--   filter.parse(expr)            -> tree | nil, message, column (one line: "filter: ...")
--   filter.caret(expr, column)    -> "expr\n     ^"
--   filter.compile(tree)          -> match(ev) -> boolean (ev.field: decoded values), source
--   filter.pushdown(tree, cfg)    -> remainder tree | nil, NEED bits, names of members filled
--   filter.kernel_model(cfg, ev)  -> boolean: what the kernel filter decides for ev
--   filter.kernel_summary(cfg)    -> one line: what the kernel part checks (for -v)
--   filter.format(tree)           -> filter text for a tree (a remainder too)
--   filter.needs(tree)            -> NDQ_NEED_* bits its fields need
--
-- Grammar (lowest precedence first; keywords are lower case):
--
--   expr       := conj { ("or" | "||") conj }
--   conj       := unary { ("and" | "&&") unary }
--   unary      := ("not" | "!") unary | "(" expr ")" | comparison
--   comparison := FIELD ("==" | "~=" | "!=" | "<" | "<=" | ">" | ">=") VALUE
--   VALUE      := integer (decimal or 0x hex) | 'string' | "string"  (\\ \" \' \n \t \xHH)
--
-- `not` binds tighter than `and`, and its operand is a whole comparison: `not dport == 53` is
-- `not (dport == 53)`. `!=` is another spelling of `~=`; `&&`, `||` and `!` of and, or, not.
--
-- Absent fields (dport of an ICMP packet, saddr of ARP, ...): every comparison with an absent
-- field is false, `a ~= v` is exactly `not (a == v)` and so is true, and `not` of a comparison
-- with an absent field is true -- like tcpdump, where `not port 53` matches ICMP. The kernel
-- filter and the Lua matcher both follow this rule (the equivalence spec proves it).
--
-- Types: integer fields take integers and every operator. String fields (comm dev skb smac
-- dmac) take strings and only == and ~=; `time` (fixed-width HH:MM:SS.micro) also takes < <= >
-- >= and compares as text, which is chronological. proto takes a name ("udp") or a number
-- (17), ethertype a name ("ipv4"), "0x0800" or 0x0800, tcp_flags tcpdump letters ("S.", any
-- order, "none") or the header byte (0x12); these three compare with == and ~= only. Address
-- fields (saddr daddr host) take an address ("198.18.0.1", exact) or a prefix
-- ("198.18.0.0/15", "2001:db8::/32"); bits past the prefix length are ignored. Addresses
-- compare as family + bytes: an IPv4 prefix never matches an IPv6 address (not even
-- ::ffff:198.18.0.1). `port` is sport or dport, `host` saddr or daddr: `port == 53` is
-- `sport == 53 or dport == 53`, and `port ~= 53` is its negation (neither port is 53).
local ffi = require("ffi")
local bit = require("bit")

local band, bor, lshift = bit.band, bit.bor, bit.lshift
local byte, char, sub, find, match, format, rep, lower, gsub =
    string.byte, string.char, string.sub, string.find, string.match, string.format, string.rep,
    string.lower, string.gsub
local concat, sort = table.concat, table.sort
local floor, min, max, huge = math.floor, math.min, math.max, math.huge
local tonumber, tostring, type, pairs, ipairs, error, pcall, load, setmetatable, unpack =
    tonumber, tostring, type, pairs, ipairs, error, pcall, loadstring or load, setmetatable, unpack
local ffi_copy, ffi_fill, ffi_string = ffi.copy, ffi.fill, ffi.string


local _M = { _VERSION = "0.1.0" }


-- Limits of struct netdevq_config (bpf/netdevq.h: NDQ_SET_MAX, NDQ_PREFIX_MAX, name length).
local SET_MAX, PREFIX_MAX, NAME_LEN = 8, 4, 16
_M.SET_MAX, _M.PREFIX_MAX, _M.NAME_LEN = SET_MAX, PREFIX_MAX, NAME_LEN

-- NDQ_NEED_* bits (the per-field bits come from netdevq.fields below: one source).
local NEED_HEADERS, NEED_NETNS, NEED_GSO, NEED_CGROUP = 1, 2, 4, 8

local U8, U16, U32 = 255, 65535, 4294967295
local MAX_NESTING = 64


---------------------------------------------------------------------------------------------
-- Field catalogue (contract.md), as the filter needs it
---------------------------------------------------------------------------------------------

-- type: integer | string | time | mac | address | protocol | ethertype | flags
-- member: the struct netdevq_config part that can check it in the kernel
-- example: shown in type-mismatch messages
local FIELDS = {
    ts = { type = "integer", example = "0" },
    time = { type = "time", example = '"12:00:00"' },
    cpu = { type = "integer", example = "0" },
    pid = { type = "integer", member = "pid", example = "1234" },
    tid = { type = "integer", member = "tid", example = "1234" },
    comm = { type = "string", member = "comm", example = '"curl"' },
    owner_pid = { type = "integer", need = 128, example = "1234" },
    owner_tid = { type = "integer", need = 128, example = "1234" },
    owner_comm = { type = "string", need = 128, example = '"curl"' },
    owner_cgroup = { type = "integer", need = 128, example = "1" },
    owner_uid = { type = "integer", need = 128, example = "0" },
    cgroup = { type = "integer", member = "cgroup", need = NEED_CGROUP, example = "1" },
    skb = { type = "string", example = '"0xffff888003a1c000"' },
    dev = { type = "string", member = "dev", example = '"eth0"' },
    ifindex = { type = "integer", member = "ifindex", example = "2" },
    netns = { type = "integer", member = "netns", need = NEED_NETNS, example = "4026531840" },
    len = { type = "integer", member = "len", example = "1500" },
    data_len = { type = "integer", example = "0" },
    mac_len = { type = "integer", example = "14" },
    hdr_len = { type = "integer", example = "0" },
    queue = { type = "integer", member = "queue", example = "0" },
    priority = { type = "integer", member = "priority", example = "0" },
    mark = { type = "integer", member = "mark", example = "1" },
    hash = { type = "integer", example = "0" },
    gso_size = { type = "integer", need = NEED_GSO, example = "1448" },
    gso_segs = { type = "integer", need = NEED_GSO, example = "2" },
    ethertype = { type = "ethertype", member = "ethertype", need = NEED_HEADERS,
                  example = '"ipv4"' },
    smac = { type = "mac", need = NEED_HEADERS, example = '"02:00:00:00:00:01"' },
    dmac = { type = "mac", need = NEED_HEADERS, example = '"02:00:00:00:00:01"' },
    saddr = { type = "address", member = "saddr", need = NEED_HEADERS,
              example = '"198.18.0.0/15"' },
    daddr = { type = "address", member = "daddr", need = NEED_HEADERS,
              example = '"198.18.0.0/15"' },
    proto = { type = "protocol", member = "proto", need = NEED_HEADERS, example = '"udp"' },
    sport = { type = "integer", member = "sport", need = NEED_HEADERS, example = "53" },
    dport = { type = "integer", member = "dport", need = NEED_HEADERS, example = "53" },
    tcp_flags = { type = "flags", need = NEED_HEADERS, example = '"S."' },
    ttl = { type = "integer", need = NEED_HEADERS, example = "64" },
    tos = { type = "integer", need = NEED_HEADERS, example = "0" },
    -- pseudo-fields: either side
    port = { type = "integer", member = "port", need = NEED_HEADERS, example = "53",
             either = { "sport", "dport" } },
    host = { type = "address", member = "host", need = NEED_HEADERS,
             example = '"198.18.0.0/15"', either = { "saddr", "daddr" } },
}

-- What reading each field costs the kernel (NDQ_NEED_* bits): from the catalogue, one source.
do
    local catalogue = require("netdevq.fields").by_name
    for name, f in pairs(FIELDS) do
        if catalogue[name] then
            f.need = catalogue[name].need
        end
    end
end

-- contract.md order, for suggestions and lists
local FIELD_ORDER = {
    "ts", "time", "cpu", "pid", "tid", "comm", "cgroup", "skb", "dev", "ifindex", "netns",
    "len", "data_len", "mac_len", "hdr_len", "queue", "priority", "mark", "hash", "gso_size",
    "gso_segs", "ethertype", "smac", "dmac", "saddr", "daddr", "proto", "sport", "dport",
    "owner_pid", "owner_tid", "owner_comm", "owner_cgroup", "owner_uid",
    "tcp_flags", "ttl", "tos", "port", "host",
}

-- name -> type, for callers (the CLI's --list-fields, specs)
_M.FIELDS = {}
for name, def in pairs(FIELDS) do
    _M.FIELDS[name] = def.type
end
_M.FIELD_ORDER = FIELD_ORDER

local ORDERED_TYPES = { integer = true, time = true }


-- What each struct netdevq_config member can hold and when its value is there at all.
--   kind: set (u32 set, or cgroup's u64 list), range (len_min..len_max), names, prefixes
--   lo, hi: the values the field can take while present
--   always: the kernel always has a value (a negated comparison can become a set)
--   either: a pseudo-field (port, host): two constraints on it cannot be intersected
local MEMBERS = {
    pid = { kind = "set", lo = 0, hi = U32, always = true },
    tid = { kind = "set", lo = 0, hi = U32, always = true },
    comm = { kind = "names", always = true },
    -- ids are u64: only == comparisons, and only ids a Lua number holds exactly
    cgroup = { kind = "set", lo = 0, hi = 2 ^ 53 - 1, always = true, only_eq = true },
    dev = { kind = "names", always = true },
    ifindex = { kind = "set", lo = 0, hi = U32, always = true },
    netns = { kind = "set", lo = 0, hi = U32, always = true },
    len = { kind = "range", lo = 0, hi = U32, always = true },
    queue = { kind = "set", lo = 0, hi = U16, always = true },
    priority = { kind = "set", lo = 0, hi = U32, always = true },
    mark = { kind = "set", lo = 0, hi = U32, always = true },
    -- 0 is "absent" for ethertype (the decoder leaves it out): never in a kernel set
    ethertype = { kind = "set", lo = 1, hi = U16 },
    proto = { kind = "set", lo = 0, hi = U8 },
    sport = { kind = "set", lo = 0, hi = U16 },
    dport = { kind = "set", lo = 0, hi = U16 },
    port = { kind = "set", lo = 0, hi = U16, either = true },
    saddr = { kind = "prefixes" },
    daddr = { kind = "prefixes" },
    host = { kind = "prefixes", either = true },
}

-- The order pushdown fills members in (deterministic results) and the kernel checks them.
local MEMBER_ORDER = {
    "pid", "tid", "comm", "len", "mark", "queue", "priority", "ifindex", "dev", "netns",
    "ethertype", "proto", "saddr", "daddr", "host", "sport", "dport", "port", "cgroup",
}


---------------------------------------------------------------------------------------------
-- Names of protocols, ethertypes and TCP flags (the same words fields.lua prints)
---------------------------------------------------------------------------------------------

local PROTO_NAMES = {
    hopopt = 0, icmp = 1, igmp = 2, ipip = 4, tcp = 6, egp = 8, udp = 17, dccp = 33, ipv6 = 41,
    ["ipv6-route"] = 43, ["ipv6-frag"] = 44, rsvp = 46, gre = 47, esp = 50, ah = 51,
    icmpv6 = 58, ["ipv6-nonxt"] = 59, ["ipv6-opts"] = 60, eigrp = 88, ospf = 89, pim = 103,
    ipcomp = 108, vrrp = 112, l2tp = 115, sctp = 132, udplite = 136, ["mpls-in-ip"] = 137,
    ethernet = 143,
}
-- other words accepted in filters (never printed, never suggested)
local PROTO_ALIASES = { icmp6 = 58, ["ipv6-icmp"] = 58 }
local ETHERTYPE_NAMES = {
    ipv4 = 0x0800, arp = 0x0806, rarp = 0x8035, ipv6 = 0x86dd, vlan = 0x8100, qinq = 0x88a8,
    mpls = 0x8847, ["mpls-mc"] = 0x8848, ["pppoe-disc"] = 0x8863, pppoe = 0x8864,
    eapol = 0x888e, lldp = 0x88cc, macsec = 0x88e5, ptp = 0x88f7, fcoe = 0x8906, ipx = 0x8137,
    tipc = 0x88ca, batman = 0x4305,
}
local ETHERTYPE_ALIASES = { ip = 0x0800, ip6 = 0x86dd, ["802.1q"] = 0x8100, ["802.1ad"] = 0x88a8 }
_M.PROTOCOLS, _M.ETHERTYPES = PROTO_NAMES, ETHERTYPE_NAMES

-- tcpdump's letters (print-tcp.c tcp_flag_values)
local FLAG_BITS = {
    F = 0x01, S = 0x02, R = 0x04, P = 0x08, ["."] = 0x10, U = 0x20, E = 0x40, W = 0x80,
}

local function flags_number(s)
    if s == "none" or s == "" then
        return 0
    end
    local n = 0
    for i = 1, #s do
        local b = FLAG_BITS[sub(s, i, i)]
        if not b then
            return nil
        end
        n = bor(n, b)
    end
    return n
end

-- Decoded text (or a number) -> number, for the matcher and the kernel model. Names first,
-- then "17" / "0x88cc"; anything else is nil and compares false.
local PROTO_NUM = setmetatable({}, { __index = function(_, k)
    if type(k) == "number" then
        return k
    end
    return k ~= nil and tonumber(k, 10) or nil
end })
for _, names in ipairs({ PROTO_NAMES, PROTO_ALIASES }) do
    for name, n in pairs(names) do
        PROTO_NUM[name] = n
    end
end
for n = 0, 255 do
    PROTO_NUM[tostring(n)] = n
end

local ETHER_NUM = setmetatable({}, { __index = function(t, k)
    if type(k) == "number" then
        return k
    end
    if type(k) ~= "string" or not match(k, "^0[xX]%x%x?%x?%x?$") then
        return nil
    end
    local n = tonumber(sub(k, 3), 16)
    t[k] = n
    return n
end })
for _, names in ipairs({ ETHERTYPE_NAMES, ETHERTYPE_ALIASES }) do
    for name, n in pairs(names) do
        ETHER_NUM[name] = n
    end
end

local FLAGS_NUM = setmetatable({}, { __index = function(t, k)
    if type(k) == "number" then
        return k
    end
    if type(k) ~= "string" then
        return nil
    end
    local n = flags_number(k)
    if n then
        t[k] = n
    end
    return n
end })


---------------------------------------------------------------------------------------------
-- Addresses: text -> family + 16 bytes
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

-- RFC 4291 text: "::" compression, an embedded IPv4 tail; no zone index.
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
-- neither. Events repeat few addresses: remember them (bounded).
local addr_cache, addr_cache_n = {}, 0

local function addr_key(text)
    local k = addr_cache[text]
    if k ~= nil then
        return k or nil
    end
    if type(text) ~= "string" then
        return nil
    end
    local v4 = parse_ipv4(text)
    if v4 then
        k = "\4" .. v4 .. ZERO12
    else
        local v6 = parse_ipv6(text)
        k = v6 and "\6" .. v6 or false
    end
    if addr_cache_n >= 4096 then
        addr_cache, addr_cache_n = {}, 0
    end
    addr_cache[text] = k
    addr_cache_n = addr_cache_n + 1
    return k or nil
end
_M.addr_key = addr_key

-- key with every bit from `bits` on cleared (key = family byte + 16 bytes)
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

-- "198.18.0.0/15" -> prefix { family = 4, bits = 15, key = masked key } | nil, why
local function parse_prefix(s)
    local addr, bits = match(s, "^([^/]*)/(%d+)$")
    if not addr then
        if find(s, "/", 1, true) then
            return nil, "expected a prefix length after '/'"
        end
        addr = s
    end
    local key = addr_key(addr)
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
local function prefix_contains(p, q)
    return p.family == q.family and p.bits <= q.bits and mask_key(q.key, p.bits) == p.key
end

local function prefix_text(p)
    local key = p.key
    if p.family == 4 then
        local a, b, c, d = byte(key, 2, 5)
        return format("%d.%d.%d.%d/%d", a, b, c, d, p.bits)
    end
    local g = {}
    for i = 1, 8 do
        g[i] = format("%x", byte(key, 2 * i) * 256 + byte(key, 2 * i + 1))
    end
    -- RFC 5952: the longest run (>= 2) of zero groups becomes "::"
    local best, best_len, run, run_len = 0, 1, 0, 0
    for i = 1, 8 do
        if g[i] == "0" then
            if run_len == 0 then
                run = i
            end
            run_len = run_len + 1
            if run_len > best_len then
                best, best_len = run, run_len
            end
        else
            run_len = 0
        end
    end
    local text
    if best > 0 then
        text = concat(g, ":", 1, best - 1) .. "::" .. concat(g, ":", best + best_len, 8)
    else
        text = concat(g, ":")
    end
    return text .. "/" .. p.bits
end
_M.prefix_text = prefix_text


---------------------------------------------------------------------------------------------
-- Lexer
---------------------------------------------------------------------------------------------

-- errors travel as tables through error() inside parse and become nil, msg, col there
local function fail(col, msg)
    error({ col = col, msg = msg }, 0)
end

local function syntax(col, msg)
    fail(col, format("filter: syntax error at column %d: %s", col, msg))
end

local ESCAPES = { n = "\n", t = "\t", r = "\r", ["\\"] = "\\", ['"'] = '"', ["'"] = "'",
                  ["0"] = "\0" }

local OPS2 = { ["=="] = "==", ["~="] = "~=", ["!="] = "~=", ["<="] = "<=", [">="] = ">=",
               ["&&"] = "and", ["||"] = "or" }
local OPS1 = { ["<"] = "<", [">"] = ">", ["("] = "(", [")"] = ")", ["!"] = "not" }
local CMP = { ["=="] = true, ["~="] = true, ["<"] = true, ["<="] = true, [">"] = true,
              [">="] = true }

-- tokens: { t = ident|int|str|and|or|not|op|(|)|eof, v = value, col = first, stop = last }
local function lex(expr)
    local toks, i, n = {}, 1, #expr
    while true do
        i = find(expr, "[^ \t\r\n]", i) or n + 1
        if i > n then
            toks[#toks + 1] = { t = "eof", col = n + 1, stop = n + 1 }
            return toks
        end
        local c = sub(expr, i, i)
        local two = sub(expr, i, i + 1)
        if match(c, "[%a_]") then
            local w = match(expr, "^[%w_]+", i)
            local t = (w == "and" or w == "or" or w == "not") and w or "ident"
            toks[#toks + 1] = { t = t, v = w, col = i, stop = i + #w - 1 }
            i = i + #w
        elseif match(c, "%d") then
            local w = match(expr, "^0[xX]%x+", i) or match(expr, "^%d+", i)
            local stop = i + #w - 1
            if match(sub(expr, stop + 1, stop + 1), "[%w_%.]") then
                local bad = match(expr, "^[%w_%.]+", i)
                syntax(i, format("malformed number '%s'", bad))
            end
            toks[#toks + 1] = { t = "int", v = tonumber(w), col = i, stop = stop }
            i = stop + 1
        elseif c == '"' or c == "'" then
            local buf, j = {}, i + 1
            while true do
                local d = sub(expr, j, j)
                if d == "" then
                    syntax(i, format("unterminated string (no closing %s)", c))
                elseif d == c then
                    break
                elseif d == "\\" then
                    local e = sub(expr, j + 1, j + 1)
                    if e == "x" and match(expr, "^%x%x", j + 2) then
                        buf[#buf + 1] = char(tonumber(sub(expr, j + 2, j + 3), 16))
                        j = j + 4
                    elseif ESCAPES[e] then
                        buf[#buf + 1] = ESCAPES[e]
                        j = j + 2
                    else
                        syntax(j, format("unknown escape '\\%s' in a string", e))
                    end
                else
                    buf[#buf + 1] = d
                    j = j + 1
                end
            end
            toks[#toks + 1] = { t = "str", v = concat(buf), col = i, stop = j }
            i = j + 1
        elseif OPS2[two] then
            local v = OPS2[two]
            toks[#toks + 1] = { t = CMP[v] and "op" or v, v = v, col = i, stop = i + 1 }
            i = i + 2
        elseif OPS1[c] then
            local v = OPS1[c]
            toks[#toks + 1] = { t = CMP[v] and "op" or v, v = v, col = i, stop = i }
            i = i + 1
        elseif c == "=" then
            syntax(i, "'=' is not an operator: use '==' to compare")
        else
            syntax(i, format("unexpected character '%s'", c))
        end
    end
end


---------------------------------------------------------------------------------------------
-- Suggestions for unknown names
---------------------------------------------------------------------------------------------

-- optimal string alignment distance (a swap of neighbours costs 1: "dprot" -> "dport")
local distance = require("netdevq.fields").edit_distance

-- up to 3 names near `word`: smallest distance, then closest length, then most letters in the
-- same place, then the order of `names`
local function nearest(word, names)
    local ranked = {}
    local limit = max(1, floor(#word / 2))
    for i, name in ipairs(names) do
        local dist = distance(word, name)
        if dist <= limit then
            local same = 0
            for j = 1, min(#word, #name) do
                if byte(word, j) == byte(name, j) then
                    same = same + 1
                end
            end
            ranked[#ranked + 1] = { name = name, dist = dist, len = math.abs(#name - #word),
                                    same = same, i = i }
        end
    end
    sort(ranked, function(a, b)
        if a.dist ~= b.dist then return a.dist < b.dist end
        if a.len ~= b.len then return a.len < b.len end
        if a.same ~= b.same then return a.same > b.same end
        return a.i < b.i
    end)
    local out = {}
    for i = 1, min(3, #ranked) do
        out[i] = ranked[i].name
    end
    return out
end

local function sorted_keys(t)
    local keys = {}
    for k in pairs(t) do
        keys[#keys + 1] = k
    end
    sort(keys)
    return keys
end


---------------------------------------------------------------------------------------------
-- Parser
---------------------------------------------------------------------------------------------

local function describe(tok, expr)
    if tok.t == "eof" then
        return "the end of the expression"
    end
    return "'" .. sub(expr, tok.col, tok.stop) .. "'"
end

-- the literal each type takes: int, str or any (both)
local ACCEPTS = {
    integer = "int", string = "str", time = "str", mac = "str", address = "str",
    protocol = "any", ethertype = "any", flags = "any",
}
local LITERAL_WORDS = {
    integer = "an integer", string = "a string", time = "a string", mac = "a string",
    address = "an address or prefix in quotes",
}

local TYPE_WORDS = {
    integer = "an integer field", string = "a string field", time = "a string field",
    mac = "a MAC address field", address = "an address field", protocol = "a protocol field",
    ethertype = "an ethertype field", flags = "a TCP flags field",
}

-- The literal of a comparison, checked against the field's type and normalized:
-- integer/protocol/ethertype/flags -> number, string/time/mac -> string, address -> prefix.
local function typed_value(expr, ftok, optok, vtok)
    local name, op = ftok.v, optok.v
    local def = FIELDS[name]
    local ty = def.type
    local written = sub(expr, vtok.col, vtok.stop)
    local col = vtok.col
    local v = vtok.v
    if ACCEPTS[ty] ~= "any" and ACCEPTS[ty] ~= vtok.t then
        fail(col, format("filter: '%s' is %s: compare it with %s (%s), not %s",
                         name, TYPE_WORDS[ty], LITERAL_WORDS[ty], def.example, written))
    end
    if not ORDERED_TYPES[ty] and op ~= "==" and op ~= "~=" then
        fail(optok.col, format("filter: '%s' is %s: compare it with == or ~=, not '%s'",
                               name, TYPE_WORDS[ty], sub(expr, optok.col, optok.stop)))
    end
    if ty == "integer" or ty == "string" or ty == "time" then
        return v
    elseif ty == "mac" then
        local parts = {}
        for g in (v .. ":"):gmatch("([^:%-]*)[:%-]") do
            parts[#parts + 1] = g
        end
        for i = 1, #parts do
            if not match(parts[i], "^%x%x?$") then
                parts = {}
                break
            end
            parts[i] = format("%02x", tonumber(parts[i], 16))
        end
        if #parts ~= 6 then
            fail(col, format("filter: bad MAC address %s at column %d: expected six hex bytes "
                             .. "like \"02:00:00:00:00:01\"", written, col))
        end
        return concat(parts, ":")
    elseif ty == "address" then
        local p, why = parse_prefix(v)
        if not p then
            fail(col, format("filter: bad address %s at column %d: %s", written, col, why))
        end
        return p
    elseif ty == "protocol" then
        if vtok.t == "int" then
            if v > 255 then
                fail(col, format("filter: protocol %s at column %d is out of range: use 0-255",
                                 written, col))
            end
            return v
        end
        local n = PROTO_NAMES[lower(v)] or PROTO_ALIASES[lower(v)]
                  or (match(v, "^%d+$") and tonumber(v))
        if not n or n > 255 then
            local near = nearest(lower(v), sorted_keys(PROTO_NAMES))
            fail(col, format("filter: unknown protocol %s at column %d (%s)", written, col,
                             #near > 0 and "did you mean: " .. concat(near, ", ") .. "?"
                             or "use a name like \"tcp\", \"udp\", \"icmp\", \"icmpv6\", "
                                .. "\"sctp\" or a number 0-255"))
        end
        return n
    elseif ty == "ethertype" then
        if vtok.t == "int" then
            if v > 0xffff then
                fail(col, format("filter: ethertype %s at column %d is out of range: use "
                                 .. "0-0xffff", written, col))
            end
            return v
        end
        local n = ETHER_NUM[lower(v)]
        if not n then
            local near = nearest(lower(v), sorted_keys(ETHERTYPE_NAMES))
            fail(col, format("filter: unknown ethertype %s at column %d (%s)", written, col,
                             #near > 0 and "did you mean: " .. concat(near, ", ") .. "?"
                             or "use a name like \"ipv4\", \"ipv6\", \"arp\" or a number "
                                .. "like 0x0800"))
        end
        return n
    else -- flags
        if vtok.t == "int" then
            if v > 255 then
                fail(col, format("filter: tcp_flags %s at column %d is out of range: use 0-255",
                                 written, col))
            end
            return v
        end
        local n = flags_number(v)
        if not n then
            fail(col, format("filter: bad tcp_flags %s at column %d: use tcpdump letters "
                             .. "F S R P . U E W (like \"S.\") or \"none\"", written, col))
        end
        return n
    end
end

local function parser(expr, toks)
    local pos = 1
    local function peek()
        return toks[pos]
    end
    local function take()
        local t = toks[pos]
        pos = pos + 1
        return t
    end

    local parse_or

    local function parse_comparison()
        local ftok = take()
        local name = ftok.v
        if not FIELDS[name] then
            local near = nearest(name, FIELD_ORDER)
            local hint = #near > 0 and "did you mean: " .. concat(near, ", ") .. "?"
                         or "known fields: " .. concat(FIELD_ORDER, ", ")
            fail(ftok.col, format("filter: unknown field '%s' at column %d (%s)",
                                  name, ftok.col, hint))
        end
        local optok = take()
        if optok.t ~= "op" then
            syntax(optok.col, format("expected a comparison (== ~= != < <= > >=) after '%s', "
                                     .. "found %s", name, describe(optok, expr)))
        end
        local vtok = take()
        if vtok.t ~= "int" and vtok.t ~= "str" then
            local hint = ""
            if vtok.t == "ident" then
                hint = format(" (strings need quotes: \"%s\")", vtok.v)
            end
            syntax(vtok.col, format("expected a value after '%s'%s",
                                    sub(expr, optok.col, optok.stop), hint))
        end
        return {
            type = "cmp", field = name, op = optok.v,
            value = typed_value(expr, ftok, optok, vtok),
            literal = sub(expr, vtok.col, vtok.stop), col = ftok.col,
        }
    end

    -- 'not' and '(' nest; the compiled matcher is Lua source with one level per nesting, and
    -- LuaJIT's parser takes 200 levels: deeper filters are refused here, with the column
    local depth = 0
    local parse_unary_inner

    local function parse_unary()
        local tok = peek()
        local nests = tok.t == "not" or tok.t == "("
        if nests then
            depth = depth + 1
            if depth > MAX_NESTING then
                syntax(tok.col, format("nested deeper than %d levels of 'not' and '('",
                                       MAX_NESTING))
            end
        end
        local node = parse_unary_inner()
        if nests then
            depth = depth - 1
        end
        return node
    end

    parse_unary_inner = function()
        local tok = peek()
        if tok.t == "not" then
            take()
            return { type = "not", parse_unary(), col = tok.col }
        elseif tok.t == "(" then
            take()
            local inner = parse_or()
            local close = take()
            if close.t ~= ")" then
                syntax(close.col, format("expected ')' to close the '(' at column %d, found %s",
                                         tok.col, describe(close, expr)))
            end
            return inner
        elseif tok.t == "ident" then
            return parse_comparison()
        end
        syntax(tok.col, format("expected a field name, 'not' or '(', found %s",
                               describe(tok, expr)))
    end

    local function parse_list(kind, sub_parser)
        local first = sub_parser()
        if peek().t ~= kind then
            return first
        end
        local node = { type = kind, first, col = first.col }
        while peek().t == kind do
            take()
            local nxt = sub_parser()
            if nxt.type == kind then -- a parenthesized list of the same kind joins in
                for i = 1, #nxt do
                    node[#node + 1] = nxt[i]
                end
            else
                node[#node + 1] = nxt
            end
        end
        if first.type == kind then
            local flat = { type = kind, col = first.col }
            for i = 1, #first do
                flat[#flat + 1] = first[i]
            end
            for i = 2, #node do
                flat[#flat + 1] = node[i]
            end
            node = flat
        end
        return node
    end

    local function parse_and()
        return parse_list("and", parse_unary)
    end

    parse_or = function()
        return parse_list("or", parse_and)
    end

    local tree = parse_or()
    local tok = peek()
    if tok.t ~= "eof" then
        if tok.t == ")" then
            syntax(tok.col, "unexpected ')' (no '(' to close)")
        elseif tok.t == "ident" or tok.t == "not" or tok.t == "(" then
            syntax(tok.col, format("expected 'and' or 'or' before %s", describe(tok, expr)))
        end
        syntax(tok.col, format("unexpected %s after a complete comparison",
                               describe(tok, expr)))
    end
    return tree
end

-- tree | nil, message, column
function _M.parse(expr)
    if type(expr) ~= "string" then
        error("filter.parse: expected a string, got " .. type(expr), 2)
    end
    local ok, res = pcall(function()
        local toks = lex(expr)
        if toks[1].t == "eof" then
            syntax(1, "empty expression")
        end
        return parser(expr, toks)
    end)
    if ok then
        return res
    end
    if type(res) == "table" then
        return nil, res.msg, res.col
    end
    error(res, 0)
end

-- the expression, then a caret under column `col` (tabs kept so that the caret lines up)
function _M.caret(expr, col)
    local pad = gsub(sub(expr, 1, col - 1), "[^\t]", " ")
    return expr .. "\n" .. pad .. "^"
end


---------------------------------------------------------------------------------------------
-- Formatting a tree back into filter text
---------------------------------------------------------------------------------------------

local function num_text(v)
    if v == floor(v) and math.abs(v) < 2 ^ 53 then
        return format("%d", v)
    end
    return format("%.17g", v)
end

-- the literal as written; a made-up node (no literal) gets a canonical one
local function value_text(node)
    if node.literal then
        return node.literal
    end
    local v = node.value
    if FIELDS[node.field].type == "address" then
        local full = v.family == 4 and 32 or 128
        local text = prefix_text(v)
        return format("%q", v.bits == full and match(text, "^(.*)/%d+$") or text)
    elseif type(v) == "string" then
        return (gsub(format("%q", v), "\\\n", "\\n"))
    end
    return num_text(v)
end

local function format_node(node, parent)
    local ty = node.type
    if ty == "cmp" then
        return node.field .. " " .. node.op .. " " .. value_text(node)
    elseif ty == "not" then
        local inner = node[1]
        if inner.type == "cmp" and inner.op == "==" then -- `a ~= v` is `not (a == v)`
            return inner.field .. " ~= " .. value_text(inner)
        end
        return "not " .. format_node(inner, "not")
    end
    local parts = {}
    for i = 1, #node do
        parts[i] = format_node(node[i], ty)
    end
    local s = concat(parts, " " .. ty .. " ")
    if parent then
        s = "(" .. s .. ")"
    end
    return s
end

function _M.format(tree)
    if tree == nil then
        return ""
    end
    return format_node(tree, nil)
end


---------------------------------------------------------------------------------------------
-- Compiling a tree into a Lua function
---------------------------------------------------------------------------------------------

-- does `text` fall in prefix p? (the matcher's helper: no allocation once text is cached)
local function in_prefix(text, p)
    if text == nil then
        return false
    end
    local k = addr_key(text)
    if not k or byte(k, 1) ~= p.family then
        return false
    end
    local want = p.key
    for i = 2, p.nfull + 1 do
        if byte(k, i) ~= byte(want, i) then
            return false
        end
    end
    if p.mask ~= 0 then
        return band(byte(k, p.nfull + 2), p.mask) == byte(want, p.nfull + 2)
    end
    return true
end

local function str_lt(a, b) return a ~= nil and a < b end
local function str_le(a, b) return a ~= nil and a <= b end
local function str_gt(a, b) return a ~= nil and a > b end
local function str_ge(a, b) return a ~= nil and a >= b end
local STR_ORDER = { ["<"] = "str_lt", ["<="] = "str_le", [">"] = "str_gt", [">="] = "str_ge" }

local HELPERS = {
    in_prefix = in_prefix, PROTO = PROTO_NUM, ETHER = ETHER_NUM, FLAGS = FLAGS_NUM,
    HI = huge, LO = -huge, str_lt = str_lt, str_le = str_le, str_gt = str_gt, str_ge = str_ge,
}
local HELPER_NAMES = sorted_keys(HELPERS)

local function compiler()
    local consts = {}
    local function const(v)
        consts[#consts + 1] = v
        return "K[" .. #consts .. "]"
    end

    -- `acc op v` on one concrete field; absent (nil) compares false
    local function one(field, ty, op, v)
        local acc = "ev." .. field
        if ty == "integer" then
            if op == "==" then
                return format("(%s == %s)", acc, num_text(v))
            end
            local absent = (op == "<" or op == "<=") and "HI" or "LO"
            return format("((%s or %s) %s %s)", acc, absent, op, num_text(v))
        elseif ty == "string" or ty == "mac" or ty == "time" then
            if op == "==" then
                return format("(%s == %s)", acc, const(v))
            end
            return format("%s(%s, %s)", STR_ORDER[op], acc, const(v))
        elseif ty == "protocol" then
            return format("(PROTO[%s] == %d)", acc, v)
        elseif ty == "ethertype" then
            return format("(ETHER[%s] == %d)", acc, v)
        elseif ty == "flags" then
            return format("(FLAGS[%s] == %d)", acc, v)
        else -- address
            local nfull = floor(v.bits / 8)
            local rem = v.bits % 8
            local p = { family = v.family, key = v.key, nfull = nfull,
                        mask = rem > 0 and band(lshift(0xff, 8 - rem), 0xff) or 0 }
            return format("in_prefix(%s, %s)", acc, const(p))
        end
    end

    local function gen(node)
        local ty = node.type
        if ty == "and" or ty == "or" then
            local parts = {}
            for i = 1, #node do
                parts[i] = gen(node[i])
            end
            return "(" .. concat(parts, " " .. ty .. " ") .. ")"
        elseif ty == "not" then
            return "(not " .. gen(node[1]) .. ")"
        end
        local def = FIELDS[node.field]
        local op = node.op
        local negate = op == "~="
        if negate then
            op = "=="
        end
        local s
        if def.either then
            s = "(" .. one(def.either[1], def.type, op, node.value) .. " or "
                .. one(def.either[2], def.type, op, node.value) .. ")"
        else
            s = one(node.field, def.type, op, node.value)
        end
        return negate and "(not " .. s .. ")" or s
    end

    return gen, consts
end

-- match(ev) -> boolean for a tree from parse() (or a remainder from pushdown; nil matches all)
function _M.compile(tree)
    if tree == nil then
        return function() return true end
    end
    local gen, consts = compiler()
    local body = gen(tree)
    local lines = { "local K, H = ..." }
    for _, name in ipairs(HELPER_NAMES) do
        lines[#lines + 1] = format("local %s = H.%s", name, name)
    end
    lines[#lines + 1] = "return function(ev) return " .. body .. " end"
    local source = concat(lines, "\n")
    local chunk, err = load(source, "=filter")
    if not chunk then -- a bug here, not the user's
        error("filter.compile: generated code does not load: " .. err .. "\n" .. source)
    end
    return chunk(consts, HELPERS), source
end


---------------------------------------------------------------------------------------------
-- Constraints: what a (sub)filter implies about one config member
---------------------------------------------------------------------------------------------
-- set/range members: sorted disjoint list of { lo, hi } intervals
-- names members: sorted list of distinct names
-- prefixes members: list of prefixes, none inside another, sorted

local function iv_norm(list)
    sort(list, function(a, b) return a[1] < b[1] end)
    local out = {}
    for _, iv in ipairs(list) do
        local last = out[#out]
        if iv[1] <= iv[2] then
            if last and iv[1] <= last[2] + 1 then
                last[2] = max(last[2], iv[2])
            else
                out[#out + 1] = { iv[1], iv[2] }
            end
        end
    end
    return out
end

local function iv_intersect(a, b)
    local out = {}
    for _, x in ipairs(a) do
        for _, y in ipairs(b) do
            local lo, hi = max(x[1], y[1]), min(x[2], y[2])
            if lo <= hi then
                out[#out + 1] = { lo, hi }
            end
        end
    end
    return iv_norm(out)
end

local function iv_count(a)
    local n = 0
    for _, iv in ipairs(a) do
        n = n + (iv[2] - iv[1] + 1) -- not n + hi - lo: floats near 2^64 swallow n
    end
    return n
end

local function list_union(a, b)
    local out = {}
    for _, x in ipairs(a) do out[#out + 1] = x end
    for _, x in ipairs(b) do out[#out + 1] = x end
    return out
end

local function names_norm(list)
    local seen, out = {}, {}
    for _, s in ipairs(list) do
        if not seen[s] then
            seen[s] = true
            out[#out + 1] = s
        end
    end
    sort(out)
    return out
end

local function names_intersect(a, b)
    local inb, out = {}, {}
    for _, s in ipairs(b) do inb[s] = true end
    for _, s in ipairs(a) do
        if inb[s] then out[#out + 1] = s end
    end
    return out
end

local function prefixes_norm(list)
    local out = {}
    for i, p in ipairs(list) do
        local covered = false
        for j, q in ipairs(list) do
            -- drop p when another prefix contains it (equal ones: keep the first)
            if i ~= j and prefix_contains(q, p) and (not prefix_contains(p, q) or j < i) then
                covered = true
                break
            end
        end
        if not covered then
            out[#out + 1] = p
        end
    end
    sort(out, function(a, b)
        if a.key ~= b.key then return a.key < b.key end
        return a.bits < b.bits
    end)
    return out
end

local function prefixes_intersect(a, b)
    local out = {}
    for _, p in ipairs(a) do
        for _, q in ipairs(b) do
            if prefix_contains(p, q) then
                out[#out + 1] = q
            elseif prefix_contains(q, p) then
                out[#out + 1] = p
            end
        end
    end
    return prefixes_norm(out)
end

local KIND_OPS = {
    set = { norm = iv_norm, intersect = iv_intersect },
    range = { norm = iv_norm, intersect = iv_intersect },
    names = { norm = names_norm, intersect = names_intersect },
    prefixes = { norm = prefixes_norm, intersect = prefixes_intersect },
}

local function union(m, a, b)
    if a == nil then return b end
    if b == nil then return a end
    return KIND_OPS[MEMBERS[m].kind].norm(list_union(a, b))
end

local function intersect(m, a, b)
    return KIND_OPS[MEMBERS[m].kind].intersect(a, b)
end

local function same(m, a, b)
    if a == nil or b == nil then
        return a == b
    end
    if #a ~= #b then
        return false
    end
    local kind = MEMBERS[m].kind
    for i = 1, #a do
        local x, y = a[i], b[i]
        if kind == "names" then
            if x ~= y then return false end
        elseif kind == "prefixes" then
            if x.key ~= y.key or x.bits ~= y.bits then return false end
        elseif x[1] ~= y[1] or x[2] ~= y[2] then
            return false
        end
    end
    return true
end

-- the constraint a comparison (negated: its `not`) puts on its member; nil when none
local function leaf_constraint(node, negated)
    local m = FIELDS[node.field].member
    if not m then
        return nil
    end
    local md = MEMBERS[m]
    local op, v = node.op, node.value
    if op == "~=" then
        op, negated = "==", not negated
    end
    if md.kind == "names" then
        if negated then
            return nil
        end
        -- longer than the kernel's 15 characters (or with a NUL): matches nothing
        if #v >= NAME_LEN or find(v, "\0", 1, true) then
            return m, {}
        end
        return m, { v }
    elseif md.kind == "prefixes" then
        if negated then
            return nil
        end
        return m, { v }
    end
    if (negated and not md.always) or (md.only_eq and op ~= "==") then
        return nil
    end
    local lo, hi = md.lo, md.hi
    local iv
    if op == "==" then
        iv = { v, v }
    elseif op == "<" then
        iv = { lo, v - 1 }
    elseif op == "<=" then
        iv = { lo, v }
    elseif op == ">" then
        iv = { v + 1, hi }
    else
        iv = { v, hi }
    end
    local cons = iv_intersect({ iv }, { { lo, hi } })
    if negated then
        local comp, from = {}, lo
        for _, x in ipairs(cons) do
            comp[#comp + 1] = { from, x[1] - 1 }
            from = x[2] + 1
        end
        comp[#comp + 1] = { from, hi }
        cons = iv_norm(comp)
    end
    return m, cons
end

-- Negation normal form: `not` only right above comparisons, `~=` as not(==), lists flat.
local function nnf(node, negated)
    local ty = node.type
    if ty == "cmp" then
        local leaf = node
        if node.op == "~=" then
            leaf = { type = "cmp", field = node.field, op = "==", value = node.value,
                     literal = node.literal, col = node.col }
            negated = not negated
        end
        return negated and { type = "not", leaf } or leaf
    elseif ty == "not" then
        return nnf(node[1], not negated)
    end
    local kind = ty
    if negated then
        kind = ty == "and" and "or" or "and"
    end
    local out = { type = kind }
    for i = 1, #node do
        local c = nnf(node[i], negated)
        if c.type == kind then
            for j = 1, #c do
                out[#out + 1] = c[j]
            end
        else
            out[#out + 1] = c
        end
    end
    return out
end

local WIDEN = { { "port", "sport", "dport" }, { "host", "saddr", "daddr" } }

-- { cons = { member = constraint }, exact = member | nil } for a node in NNF.
-- Every cons[m] is implied by the node. When exact = m, the node holds exactly when m's value
-- is present and satisfies cons[m] (and cons has no other member).
local function analyze(node)
    local ty = node.type
    if ty == "cmp" or ty == "not" then
        local m, c = leaf_constraint(ty == "cmp" and node or node[1], ty == "not")
        if not m then
            return { cons = {} }
        end
        return { cons = { [m] = c }, exact = m }
    end
    local kids = {}
    for i = 1, #node do
        kids[i] = analyze(node[i])
    end
    local cons = {}
    local exact = kids[1].exact
    for i = 2, #kids do
        if kids[i].exact ~= exact then
            exact = nil
        end
    end
    if ty == "and" then
        for _, a in ipairs(kids) do
            for m, c in pairs(a.cons) do
                if cons[m] == nil then
                    cons[m] = c
                elseif not MEMBERS[m].either then
                    cons[m] = intersect(m, cons[m], c)
                end
            end
        end
        if exact and MEMBERS[exact].either and #kids > 1 then
            exact = nil
        end
        return { cons = cons, exact = exact }
    end
    -- or: a member every branch constrains, the union
    for m, c in pairs(kids[1].cons) do
        local u = c
        for i = 2, #kids do
            local ci = kids[i].cons[m]
            if ci == nil then
                u = nil
                break
            end
            u = union(m, u, ci)
        end
        cons[m] = u
    end
    -- sport/dport/port branches widen to port, saddr/daddr/host to host
    for _, w in ipairs(WIDEN) do
        local wide, s, d = w[1], w[2], w[3]
        if not (cons[wide] or cons[s] or cons[d]) then
            local u, us, ud, uw, all_exact = nil, nil, nil, nil, true
            for _, a in ipairs(kids) do
                local c = a.cons[wide] or a.cons[s] or a.cons[d]
                if c == nil then
                    u = nil
                    break
                end
                u = union(wide, u, c)
                if a.exact == wide then
                    uw = union(wide, uw, c)
                elseif a.exact == s then
                    us = union(wide, us, c)
                elseif a.exact == d then
                    ud = union(wide, ud, c)
                else
                    all_exact = false
                end
            end
            if u then
                cons[wide] = u
                -- sport in A or dport in B or port in C is `port in A+B+C` when A+C == B+C
                if all_exact and exact == nil
                   and same(wide, union(wide, us, uw), union(wide, ud, uw)) then
                    exact = wide
                end
            end
        end
    end
    return { cons = cons, exact = exact }
end


---------------------------------------------------------------------------------------------
-- Pushdown into struct netdevq_config
---------------------------------------------------------------------------------------------
-- What the kernel must do with each member (kernel_model below is the same, in Lua). Every
-- non-empty member must hold (a conjunction); an empty one (n == 0, len_set == 0) checks nothing.
--   pid tid ifindex netns mark queue priority: the value is one of v[0..n)
--   ethertype: skb->protocol (host order) is one of v[0..n); v never holds 0 (0 = absent)
--   proto: the packet is IP (l3 != 0) and its protocol is one of v[0..n)
--   sport, dport: the packet has an L4 header (NDQ_EV_L4) and the port is one of v[0..n)
--   port: L4 header and (sport or dport is one of v[0..n))
--   len_set: len_min <= len <= len_max (an empty range, min > max, passes nothing)
--   cgroup[0..n_cgroup): the task's cgroup id is one of them
--   comm[0..n_comm), dev[0..n_dev): the name equals one of them as a C string (both sides
--     NUL-padded to 16 bytes; filled here with zeros after the name)
--   saddr, daddr: the packet is IP and for some p[i]: p.family == l3 (4 or 6) and the first
--     p.bits bits of the address equal p.addr (network order, bits past p.bits zero)
--   host: saddr or daddr matches as above
-- A packet whose headers were not read or parsed counts as not IP and without L4: it fails
-- proto, saddr, daddr, host, sport, dport and port.

-- can the kernel check exactly this constraint?
local function representable(m, c)
    local kind = MEMBERS[m].kind
    if kind == "set" then
        local n = iv_count(c)
        return n >= 1 and n <= SET_MAX
    elseif kind == "range" then
        return #c <= 1 -- none: nothing passes (len_min > len_max)
    elseif kind == "names" then
        return #c >= 1 and #c <= SET_MAX
    end
    return #c >= 1 and #c <= PREFIX_MAX
end

-- a constraint the kernel can check that contains c (nil: none worth having)
local function relax(m, c)
    local kind = MEMBERS[m].kind
    if kind == "range" then
        local md = MEMBERS[m]
        local lo, hi = c[1][1], c[#c][2]
        if lo == md.lo and hi == md.hi then
            return nil -- would let everything through
        end
        return { { lo, hi } }
    elseif kind == "prefixes" and #c > 0 then
        -- merge the two prefixes of one family with the longest common part, until they fit
        local list = c
        while #list > PREFIX_MAX do
            local best_i, best_j, best_bits
            for i = 1, #list do
                for j = i + 1, #list do
                    local p, q = list[i], list[j]
                    if p.family == q.family then
                        local bits = min(p.bits, q.bits)
                        while mask_key(p.key, bits) ~= mask_key(q.key, bits) do
                            bits = bits - 1
                        end
                        if not best_bits or bits > best_bits then
                            best_i, best_j, best_bits = i, j, bits
                        end
                    end
                end
            end
            if not best_i then
                return nil
            end
            local p = list[best_i]
            local merged = { family = p.family, bits = best_bits, key = mask_key(p.key, best_bits) }
            local nxt = { merged }
            for k = 1, #list do
                if k ~= best_i and k ~= best_j then
                    nxt[#nxt + 1] = list[k]
                end
            end
            list = prefixes_norm(nxt)
        end
        return list
    end
    return nil
end

-- the part of cfg for member m is still empty (pushdown never overwrites a caller's setting)
local function member_free(cfg, m)
    local kind = MEMBERS[m].kind
    if m == "len" then
        return cfg.len_set == 0
    elseif m == "cgroup" then
        return cfg.n_cgroup == 0
    elseif kind == "names" then
        return (m == "dev" and cfg.n_dev or cfg.n_comm) == 0
    end
    return cfg[m].n == 0
end

local function write_member(cfg, m, c)
    local kind = MEMBERS[m].kind
    if kind == "range" then
        cfg.len_set = 1
        if #c == 0 then
            cfg.len_min, cfg.len_max = 1, 0
        else
            cfg.len_min, cfg.len_max = c[1][1], c[1][2]
        end
    elseif kind == "set" then
        local vals = {}
        for _, iv in ipairs(c) do
            for v = iv[1], iv[2] do
                vals[#vals + 1] = v
            end
        end
        if m == "cgroup" then
            cfg.n_cgroup = #vals
            for i, v in ipairs(vals) do
                cfg.cgroup[i - 1] = v
            end
        else
            local s = cfg[m]
            s.n = #vals
            for i, v in ipairs(vals) do
                s.v[i - 1] = v
            end
        end
    elseif kind == "names" then
        local arr = m == "dev" and cfg.dev or cfg.comm
        for i, name in ipairs(c) do
            ffi_fill(arr[i - 1], NAME_LEN)
            ffi_copy(arr[i - 1], name, #name)
        end
        if m == "dev" then
            cfg.n_dev = #c
        else
            cfg.n_comm = #c
        end
    else
        local s = cfg[m]
        s.n = #c
        for i, p in ipairs(c) do
            local e = s.p[i - 1]
            e.family, e.bits = p.family, p.bits
            e.pad[0], e.pad[1] = 0, 0
            for j = 0, 15 do
                e.addr[j] = byte(p.key, j + 2)
            end
        end
    end
end

-- choose what to push for member m from its entries ({ cons, conj = index | nil }, the exact
-- ones first); returns the constraint and the conjuncts it makes redundant
local function decide(m, entries)
    if MEMBERS[m].either then -- cannot intersect: one exact conjunct, else one implied one
        for _, e in ipairs(entries) do
            if representable(m, e.cons) then
                return e.cons, { e.conj }
            end
        end
        for _, e in ipairs(entries) do
            local r = relax(m, e.cons)
            if r then
                return r, {}
            end
        end
        return nil
    end
    local all = entries[1].cons
    for i = 2, #entries do
        all = intersect(m, all, entries[i].cons)
    end
    if representable(m, all) then
        local drops = {}
        for _, e in ipairs(entries) do
            drops[#drops + 1] = e.conj
        end
        return all, drops
    end
    local r = relax(m, all)
    if r then
        return r, {}
    end
    -- greedily: the conjuncts whose intersection the kernel can still check
    local cur, drops = nil, {}
    for _, e in ipairs(entries) do
        local cand = cur and intersect(m, cur, e.cons) or e.cons
        if representable(m, cand) then
            cur = cand
            drops[#drops + 1] = e.conj
        end
    end
    return cur, drops
end

local function needs(node, acc)
    if node.type == "cmp" then
        return bor(acc, FIELDS[node.field].need or 0)
    end
    for i = 1, #node do
        acc = needs(node[i], acc)
    end
    return acc
end

-- NDQ_NEED_* bits the fields of a tree need
function _M.needs(tree)
    return tree and needs(tree, 0) or 0
end

-- Fill cfg (a struct netdevq_config, its filter members empty or left alone) with what the
-- kernel can check of tree; returns the rest for Lua (nil: nothing left), the NEED bits every
-- field of the tree needs (also ORed into cfg.need), and the names of the members filled.
-- The kernel part is implied by the tree, and kernel part + remainder == tree.
function _M.pushdown(tree, cfg)
    if tree == nil then
        return nil, 0, {}
    end
    local need = needs(tree, 0)
    cfg.need = bor(cfg.need, need)

    local root = nnf(tree, false)
    local conj = root.type == "and" and root or { root }
    local entries = {}
    for i, c in ipairs(conj) do
        local a = analyze(c)
        for m, cons in pairs(a.cons) do
            local list = entries[m] or { exact = {}, implied = {} }
            entries[m] = list
            local kind = a.exact == m and list.exact or list.implied
            kind[#kind + 1] = { cons = cons, conj = a.exact == m and i or nil }
        end
    end

    local dropped, pushed = {}, {}
    for _, m in ipairs(MEMBER_ORDER) do
        local list = entries[m]
        if list and member_free(cfg, m) then
            local all = {}
            for _, e in ipairs(list.exact) do all[#all + 1] = e end
            for _, e in ipairs(list.implied) do all[#all + 1] = e end
            local c, drops = decide(m, all)
            if c then
                write_member(cfg, m, c)
                pushed[#pushed + 1] = m
                for _, i in pairs(drops) do
                    dropped[i] = true
                end
            end
        end
    end

    local rest = { type = "and" }
    for i, c in ipairs(conj) do
        if not dropped[i] then
            rest[#rest + 1] = c
        end
    end
    if #rest == 0 then
        return nil, need, pushed
    end
    return #rest == 1 and rest[1] or rest, need, pushed
end


---------------------------------------------------------------------------------------------
-- The kernel filter, mirrored in Lua
---------------------------------------------------------------------------------------------

local function in_u32_set(s, v)
    local n = s.n
    if n == 0 then
        return true
    end
    if v == nil then
        return false
    end
    for i = 0, n - 1 do
        if s.v[i] == v then
            return true
        end
    end
    return false
end

-- a 16-byte config name against a decoded name, as C strings
local function in_names(arr, n, have)
    if n == 0 then
        return true
    end
    for i = 0, n - 1 do
        local want = ffi_string(arr[i], NAME_LEN)
        local stop = find(want, "\0", 1, true)
        if stop then
            want = sub(want, 1, stop - 1)
        end
        if want == have then
            return true
        end
    end
    return false
end

local function prefix_match(p, key)
    if key == nil or p.family ~= byte(key, 1) then
        return false
    end
    for i = 0, 15 do
        local bits = p.bits - i * 8
        if bits <= 0 then
            break
        end
        local mask = bits >= 8 and 0xff or band(lshift(0xff, 8 - bits), 0xff)
        if band(byte(key, i + 2), mask) ~= p.addr[i] then
            return false
        end
    end
    return true
end

local function in_prefix_set(s, key)
    for i = 0, s.n - 1 do
        if prefix_match(s.p[i], key) then
            return true
        end
    end
    return false
end

-- What bpf/netdevq.bpf.c's filter decides for the decoded event ev (true: it passes).
-- l3 is the family of ev.saddr (0 without), L4 is "sport and dport present", an absent
-- ethertype is 0.
function _M.kernel_model(cfg, ev)
    if not (in_u32_set(cfg.pid, ev.pid) and in_u32_set(cfg.tid, ev.tid)
            and in_names(cfg.comm, cfg.n_comm, ev.comm)) then
        return false
    end
    if cfg.len_set ~= 0 and (ev.len < cfg.len_min or ev.len > cfg.len_max) then
        return false
    end
    if not (in_u32_set(cfg.mark, ev.mark) and in_u32_set(cfg.queue, ev.queue)
            and in_u32_set(cfg.priority, ev.priority) and in_u32_set(cfg.ifindex, ev.ifindex)
            and in_names(cfg.dev, cfg.n_dev, ev.dev) and in_u32_set(cfg.netns, ev.netns)
            and in_u32_set(cfg.ethertype, ETHER_NUM[ev.ethertype] or 0)) then
        return false
    end
    local skey = ev.saddr and addr_key(ev.saddr)
    local dkey = ev.daddr and addr_key(ev.daddr)
    local l3 = skey and byte(skey, 1) or 0
    if cfg.proto.n ~= 0 and (l3 == 0 or not in_u32_set(cfg.proto, PROTO_NUM[ev.proto])) then
        return false
    end
    if cfg.saddr.n ~= 0 and not in_prefix_set(cfg.saddr, skey) then
        return false
    end
    if cfg.daddr.n ~= 0 and not in_prefix_set(cfg.daddr, dkey) then
        return false
    end
    if cfg.host.n ~= 0 and not in_prefix_set(cfg.host, skey)
       and not in_prefix_set(cfg.host, dkey) then
        return false
    end
    local l4 = ev.sport ~= nil and ev.dport ~= nil
    if cfg.sport.n ~= 0 and (not l4 or not in_u32_set(cfg.sport, ev.sport)) then
        return false
    end
    if cfg.dport.n ~= 0 and (not l4 or not in_u32_set(cfg.dport, ev.dport)) then
        return false
    end
    if cfg.port.n ~= 0 and (not l4 or (not in_u32_set(cfg.port, ev.sport)
                                       and not in_u32_set(cfg.port, ev.dport))) then
        return false
    end
    if cfg.n_cgroup ~= 0 then
        local found = false
        for i = 0, cfg.n_cgroup - 1 do
            if cfg.cgroup[i] == ev.cgroup then
                found = true
                break
            end
        end
        if not found then
            return false
        end
    end
    return true
end


---------------------------------------------------------------------------------------------
-- A one-line account of the kernel part (for -v)
---------------------------------------------------------------------------------------------

function _M.kernel_summary(cfg)
    local parts = {}
    local function set(name, s, fmt)
        if s.n ~= 0 then
            local vals = {}
            for i = 0, s.n - 1 do
                vals[#vals + 1] = format(fmt or "%d", s.v[i])
            end
            parts[#parts + 1] = name .. " in {" .. concat(vals, ", ") .. "}"
        end
    end
    local function names(name, arr, n)
        if n ~= 0 then
            local vals = {}
            for i = 0, n - 1 do
                vals[#vals + 1] = format("%q", (match(ffi_string(arr[i], NAME_LEN), "^[^%z]*")))
            end
            parts[#parts + 1] = name .. " in {" .. concat(vals, ", ") .. "}"
        end
    end
    local function prefixes(name, s)
        if s.n ~= 0 then
            local vals = {}
            for i = 0, s.n - 1 do
                local p = s.p[i]
                local key = char(p.family) .. ffi_string(p.addr, 16)
                vals[#vals + 1] = prefix_text({ family = p.family, bits = p.bits, key = key })
            end
            parts[#parts + 1] = name .. " in {" .. concat(vals, ", ") .. "}"
        end
    end
    set("pid", cfg.pid)
    set("tid", cfg.tid)
    names("comm", cfg.comm, cfg.n_comm)
    if cfg.len_set ~= 0 then
        parts[#parts + 1] = format("len %d..%d", cfg.len_min, cfg.len_max)
    end
    set("mark", cfg.mark)
    set("queue", cfg.queue)
    set("priority", cfg.priority)
    set("ifindex", cfg.ifindex)
    names("dev", cfg.dev, cfg.n_dev)
    set("netns", cfg.netns)
    set("ethertype", cfg.ethertype, "0x%04x")
    set("proto", cfg.proto)
    prefixes("saddr", cfg.saddr)
    prefixes("daddr", cfg.daddr)
    prefixes("host", cfg.host)
    set("sport", cfg.sport)
    set("dport", cfg.dport)
    set("port", cfg.port)
    if cfg.n_cgroup ~= 0 then
        local vals = {}
        for i = 0, cfg.n_cgroup - 1 do
            vals[#vals + 1] = tostring(tonumber(cfg.cgroup[i]))
        end
        parts[#parts + 1] = "cgroup in {" .. concat(vals, ", ") .. "}"
    end
    return concat(parts, "; ")
end


return _M
