-- netdevq.fields: the field catalogue of contract.md — names, types, descriptions, kernel ids,
-- the NDQ_NEED_* bits each field depends on, and a getter per field that decodes one
-- `const struct netdevq_event *` into a Lua value (nil when the event does not carry it).
--
-- Values: integers are Lua numbers. ts and cgroup are __u64 and come back as doubles: exact up to
-- 2^53 (ts: 104 days of uptime in ns; beyond that it is off by a few ns). The `time` field and
-- unix_time()/unix_ns() split the u64 exactly, so they never lose precision.
-- `time` is local wall-clock time (like tcpdump), from ts plus (CLOCK_REALTIME - CLOCK_MONOTONIC)
-- measured once at load; calibrate() measures it again (after a clock step, say).
local ffi = require("ffi")
local bit = require("bit")
local abi = require("netdevq.abi")

local ffi_string = ffi.string
local ffi_new = ffi.new
local ffi_typeof = ffi.typeof
local band = bit.band
local bor = bit.bor
local tohex = bit.tohex
local format = string.format
local byte = string.byte
local sub = string.sub
local str_find = string.find
local concat = table.concat
local sort = table.sort
local os_date = os.date
local floor = math.floor
local min = math.min
local type = type
local tonumber = tonumber
local tostring = tostring
local error = error
local setmetatable = setmetatable
local getmetatable = getmetatable
local pairs = pairs
local ipairs = ipairs
local assert = assert
local pcall = pcall
local C = ffi.C

local F = abi.F
local NEED = abi.NEED
local EV_MAC = abi.EV.MAC
local EV_L4 = abi.EV.L4
local EV_TCP = abi.EV.TCP
local COMM_LEN = abi.COMM_LEN
local IFNAME_LEN = abi.IFNAME_LEN

-- Own names (asm redirects): no clash with another module's declaration of the libc ones.
if not pcall(ffi_typeof, "ndq_fields_timespec") then
    ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } ndq_fields_timespec;
int ndq_fields_clock_gettime(int clk_id, ndq_fields_timespec *tp) __asm__("clock_gettime");
char *ndq_fields_strerror(int errnum) __asm__("strerror");
]]
end

local CLOCK_REALTIME = 0
local CLOCK_MONOTONIC = 1
local NS_PER_SEC = 1000000000
local NS_PER_SEC_U64 = 1000000000ULL
local u64_t = ffi_typeof("uint64_t")


local _M = { _VERSION = "0.1.0" }


---------------------------------------------------------------------------------------------
-- Formatters (public: the filter, pcapng writer and aggregations print the same way)
---------------------------------------------------------------------------------------------

-- a: pointer to (at least) 4 bytes in network order.
local function format_ipv4(a)
    return format("%d.%d.%d.%d", a[0], a[1], a[2], a[3])
end
_M.format_ipv4 = format_ipv4


local ipv6_parts = {}   -- reused: the 8 groups as hex text

-- a: pointer to 16 bytes in network order. RFC 5952: lowercase, no leading zeros, the longest
-- run of two or more zero groups (the first on ties) becomes "::", IPv4-mapped as ::ffff:a.b.c.d.
local function format_ipv6(a)
    if a[0] == 0 and a[1] == 0 and a[2] == 0 and a[3] == 0 and a[4] == 0 and a[5] == 0
            and a[6] == 0 and a[7] == 0 and a[8] == 0 and a[9] == 0
            and a[10] == 0xff and a[11] == 0xff then
        return format("::ffff:%d.%d.%d.%d", a[12], a[13], a[14], a[15])
    end

    local best_at, best_len, run_at, run_len = 0, 0, 0, 0
    for i = 1, 8 do
        local g = a[2 * i - 2] * 256 + a[2 * i - 1]
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
_M.format_ipv6 = format_ipv6


-- a: pointer to 6 bytes.
local function format_mac(a)
    return format("%02x:%02x:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3], a[4], a[5])
end
_M.format_mac = format_mac


-- tcpdump's print-tcp.c: letters in the order of its tcp_flag_values table, "none" for no flag.
local TCP_FLAG_LETTERS = {
    { 0x01, "F" }, { 0x02, "S" }, { 0x04, "R" }, { 0x08, "P" },
    { 0x10, "." }, { 0x20, "U" }, { 0x40, "E" }, { 0x80, "W" },
}
local TCP_FLAGS_TEXT = {}
for b = 0, 255 do
    local s = ""
    for i = 1, #TCP_FLAG_LETTERS do
        local flag = TCP_FLAG_LETTERS[i]
        if band(b, flag[1]) ~= 0 then
            s = s .. flag[2]
        end
    end
    TCP_FLAGS_TEXT[b] = s ~= "" and s or "none"
end

-- flags: TCP header byte 13 (CWR ECE URG ACK PSH RST SYN FIN).
local function format_tcp_flags(flags)
    return TCP_FLAGS_TEXT[band(flags, 0xff)]
end
_M.format_tcp_flags = format_tcp_flags


-- IANA protocol numbers, named as /etc/protocols and tcpdump do (icmpv6 for 58 only).
local PROTO_NAMES = {
    [0] = "hopopt", [1] = "icmp", [2] = "igmp", [4] = "ipip", [6] = "tcp", [8] = "egp",
    [17] = "udp", [33] = "dccp", [41] = "ipv6", [43] = "ipv6-route", [44] = "ipv6-frag",
    [46] = "rsvp", [47] = "gre", [50] = "esp", [51] = "ah", [58] = "icmpv6",
    [59] = "ipv6-nonxt", [60] = "ipv6-opts", [88] = "eigrp", [89] = "ospf", [103] = "pim",
    [108] = "ipcomp", [112] = "vrrp", [115] = "l2tp", [132] = "sctp", [136] = "udplite",
    [137] = "mpls-in-ip", [143] = "ethernet",
}
local PROTO_TEXT, PROTO_NUMBERS = {}, {}
for n = 0, 255 do
    PROTO_TEXT[n] = PROTO_NAMES[n] or tostring(n)
    PROTO_NUMBERS[PROTO_TEXT[n]] = n
end

local function format_proto(n)
    return PROTO_TEXT[band(n, 0xff)]
end
_M.format_proto = format_proto

-- "tcp" -> 6, "17" -> 17; nil for an unknown name.
function _M.proto_number(name)
    return PROTO_NUMBERS[name]
end


local ETHERTYPE_NAMES = {
    [0x0800] = "ipv4", [0x0806] = "arp", [0x8035] = "rarp", [0x86dd] = "ipv6",
    [0x8100] = "vlan", [0x88a8] = "qinq", [0x8847] = "mpls", [0x8848] = "mpls-mc",
    [0x8863] = "pppoe-disc", [0x8864] = "pppoe", [0x888e] = "eapol", [0x88cc] = "lldp",
    [0x88e5] = "macsec", [0x88f7] = "ptp", [0x8906] = "fcoe", [0x8137] = "ipx",
    [0x88ca] = "tipc", [0x4305] = "batman",
}
local ETHERTYPE_NUMBERS = {}
for n, name in pairs(ETHERTYPE_NAMES) do
    ETHERTYPE_NUMBERS[name] = n
end
local ethertype_text = {}   -- memo: number -> text, fills with what the traffic uses

local function format_ethertype(n)
    local s = ethertype_text[n]
    if not s then
        s = ETHERTYPE_NAMES[n] or format("0x%04x", n)
        ethertype_text[n] = s
    end
    return s
end
_M.format_ethertype = format_ethertype

-- "ipv6" -> 0x86dd, "0x88cc" -> 0x88cc; nil for an unknown name.
function _M.ethertype_number(name)
    local n = ETHERTYPE_NUMBERS[name]
    if n then
        return n
    end
    local hex = type(name) == "string" and name:match("^0[xX](%x%x?%x?%x?)$")
    return hex and tonumber(hex, 16) or nil
end


---------------------------------------------------------------------------------------------
-- Clock: monotonic event timestamps -> wall clock
---------------------------------------------------------------------------------------------

local off_sec, off_nsec = 0, 0          -- CLOCK_REALTIME - CLOCK_MONOTONIC, 0 <= off_nsec < 1e9
local ts_a = ffi_new("ndq_fields_timespec")
local ts_b = ffi_new("ndq_fields_timespec")
local ts_m = ffi_new("ndq_fields_timespec")

-- calibrate(): measure realtime - monotonic (the best of a few samples, each the monotonic reading
-- bracketed by two realtime readings). calibrate(offset_ns): set it (a number or an int64 cdata),
-- e.g. to replay recorded events. Returns the offset as seconds, nanoseconds.
function _M.calibrate(offset_ns)
    if offset_ns ~= nil then
        local t = type(offset_ns)
        if t == "number" then
            off_sec = floor(offset_ns / NS_PER_SEC)
            off_nsec = offset_ns - off_sec * NS_PER_SEC
        elseif t == "cdata" then
            local v = ffi_new("int64_t", offset_ns)
            local s = v / NS_PER_SEC
            local r = v - s * NS_PER_SEC
            if r < 0 then
                s, r = s - 1, r + NS_PER_SEC
            end
            off_sec, off_nsec = tonumber(s), tonumber(r)
        else
            error("calibrate: offset_ns must be a number or an integer cdata", 2)
        end
        return off_sec, off_nsec
    end

    local best_gap
    for _ = 1, 5 do
        if C.ndq_fields_clock_gettime(CLOCK_REALTIME, ts_a) ~= 0
                or C.ndq_fields_clock_gettime(CLOCK_MONOTONIC, ts_m) ~= 0
                or C.ndq_fields_clock_gettime(CLOCK_REALTIME, ts_b) ~= 0 then
            return nil, "clock_gettime failed: " .. ffi_string(C.ndq_fields_strerror(ffi.errno()))
        end
        local a_sec, a_nsec = tonumber(ts_a.tv_sec), tonumber(ts_a.tv_nsec)
        local gap = (tonumber(ts_b.tv_sec) - a_sec) * NS_PER_SEC + tonumber(ts_b.tv_nsec) - a_nsec
        if not best_gap or gap < best_gap then
            best_gap = gap
            local s = a_sec - tonumber(ts_m.tv_sec)
            local ns = a_nsec + floor(gap / 2) - tonumber(ts_m.tv_nsec)
            s = s + floor(ns / NS_PER_SEC)
            off_sec, off_nsec = s, ns % NS_PER_SEC
        end
    end
    return off_sec, off_nsec
end

assert(_M.calibrate())


-- ts (u64 cdata or number, CLOCK_MONOTONIC ns) -> unix seconds, nanoseconds (both numbers).
local function unix_time(ts)
    local sec, nsec
    if type(ts) == "number" then
        sec = floor(ts / NS_PER_SEC)
        nsec = ts - sec * NS_PER_SEC
    else
        sec = tonumber(ts / NS_PER_SEC_U64)
        nsec = tonumber(ts % NS_PER_SEC_U64)
    end
    sec, nsec = sec + off_sec, nsec + off_nsec
    if nsec >= NS_PER_SEC then
        sec, nsec = sec + 1, nsec - NS_PER_SEC
    end
    return sec, nsec
end
_M.unix_time = unix_time

-- ts -> unix time in ns as a uint64_t cdata (exact; what pcapng wants).
function _M.unix_ns(ts)
    local sec, nsec = unix_time(ts)
    return u64_t(sec) * NS_PER_SEC_U64 + nsec
end

local hms_sec, hms_text = nil, nil   -- one os.date per second of events, not per event

-- ts -> "HH:MM:SS.uuuuuu", local time.
local function format_time(ts)
    local sec, nsec = unix_time(ts)
    if sec ~= hms_sec then
        hms_sec, hms_text = sec, os_date("%H:%M:%S", sec)
    end
    return format("%s.%06d", hms_text, floor(nsec / 1000))
end
_M.format_time = format_time


---------------------------------------------------------------------------------------------
-- Getters: p is a `const struct netdevq_event *`
---------------------------------------------------------------------------------------------

-- NUL-terminated, but never read past the array even if the kernel filled it to the brim.
local function cstring(buf, size)
    local n = 0
    while n < size and buf[n] ~= 0 do
        n = n + 1
    end
    return ffi_string(buf, n)
end

local function get_ts(p) return tonumber(p.ts) end
local function get_time(p) return format_time(p.ts) end
local function get_cpu(p) return p.cpu end
local function get_pid(p) return p.pid end
local function get_tid(p) return p.tid end
local function get_comm(p) return cstring(p.comm, COMM_LEN) end
local function get_cgroup(p) return tonumber(p.cgroup) end
local function get_skb(p) return "0x" .. tohex(p.skb, 16) end
local function get_dev(p) return cstring(p.dev, IFNAME_LEN) end
local function get_ifindex(p) return p.ifindex end
local function get_netns(p) return p.netns end
local function get_len(p) return p.len end
local function get_data_len(p) return p.data_len end
local function get_mac_len(p) return p.mac_len end
local function get_hdr_len(p) return p.hdr_len end
local function get_queue(p) return p.queue end
local function get_priority(p) return p.priority end
local function get_mark(p) return p.mark end
local function get_hash(p) return p.hash end
-- socket owner (present when ev.flags has EV.OWNER)
local EV_OWNER = require("netdevq.abi").EV.OWNER
local function owner(p) return bit.band(p.flags, EV_OWNER) ~= 0 end
local function get_owner_pid(p) if owner(p) then return p.owner_pid end end
local function get_owner_tid(p) if owner(p) then return p.owner_tid end end
local function get_owner_comm(p) if owner(p) then return cstring(p.owner_comm, COMM_LEN) end end
local function get_owner_cgroup(p) if owner(p) then return tonumber(p.owner_cgroup) end end
local function get_owner_uid(p) if owner(p) then return p.owner_uid end end
local function get_gso_size(p) return p.gso_size end
local function get_gso_segs(p) return p.gso_segs end

-- 0 is what the kernel side leaves when it did not read the header: absent, not "0x0000".
local function get_ethertype(p)
    local e = p.ethertype
    if e == 0 then return nil end
    return format_ethertype(e)
end

local function get_smac(p)
    if band(p.flags, EV_MAC) == 0 then return nil end
    return format_mac(p.smac)
end

local function get_dmac(p)
    if band(p.flags, EV_MAC) == 0 then return nil end
    return format_mac(p.dmac)
end

local function get_saddr(p)
    local l3 = p.l3
    if l3 == 4 then return format_ipv4(p.saddr) end
    if l3 == 6 then return format_ipv6(p.saddr) end
    return nil
end

local function get_daddr(p)
    local l3 = p.l3
    if l3 == 4 then return format_ipv4(p.daddr) end
    if l3 == 6 then return format_ipv6(p.daddr) end
    return nil
end

local function get_proto(p)
    if p.l3 == 0 then return nil end
    return PROTO_TEXT[p.proto]
end

local function get_sport(p)
    if band(p.flags, EV_L4) == 0 then return nil end
    return p.sport
end

local function get_dport(p)
    if band(p.flags, EV_L4) == 0 then return nil end
    return p.dport
end

local function get_tcp_flags(p)
    if band(p.flags, EV_TCP) == 0 then return nil end
    return TCP_FLAGS_TEXT[p.tcp_flags]
end

local function get_ttl(p)
    if p.l3 == 0 then return nil end
    return p.ttl
end

local function get_tos(p)
    if p.l3 == 0 then return nil end
    return p.tos
end


---------------------------------------------------------------------------------------------
-- The catalogue, in contract.md order
---------------------------------------------------------------------------------------------

local H = NEED.HEADERS

local catalogue = {
    { "ts", "integer", "bpf_ktime_get_ns() at the tracepoint (CLOCK_MONOTONIC ns)", NEED.TS,
        get_ts },
    { "time", "string", "wall-clock (local) time of the event, HH:MM:SS.micro", NEED.TS, get_time },
    { "cpu", "integer", "CPU the event fired on", 0, get_cpu },
    { "pid", "integer", "current task's tgid (in softirq: whoever was interrupted)", NEED.TASK,
        get_pid },
    { "tid", "integer", "current task's tid (in softirq: whoever was interrupted)", NEED.TASK,
        get_tid },
    { "comm", "string", "current task's comm", NEED.TASK, get_comm },
    { "cgroup", "integer", "current task's cgroup v2 id", NEED.CGROUP, get_cgroup },
    { "skb", "string", "skb address, hex", 0, get_skb },
    { "dev", "string", "device the skb is queued on", NEED.DEV, get_dev },
    { "ifindex", "integer", "ifindex of that device", NEED.DEV, get_ifindex },
    { "netns", "integer", "inode number of the device's network namespace", NEED.NETNS,
      get_netns },
    { "len", "integer", "skb->len", 0, get_len },
    { "data_len", "integer", "skb->data_len (bytes in fragments)", 0, get_data_len },
    { "mac_len", "integer", "skb->mac_len", 0, get_mac_len },
    { "hdr_len", "integer", "skb->hdr_len", 0, get_hdr_len },
    { "queue", "integer", "skb->queue_mapping", 0, get_queue },
    { "priority", "integer", "skb->priority", 0, get_priority },
    { "mark", "integer", "skb->mark", 0, get_mark },
    { "hash", "integer", "skb->hash", 0, get_hash },
    { "gso_size", "integer", "skb_shinfo(skb)->gso_size", NEED.GSO, get_gso_size },
    { "gso_segs", "integer", "skb_shinfo(skb)->gso_segs", NEED.GSO, get_gso_segs },
    { "ethertype", "string", "ipv4, ipv6, arp, ... or 0xNNNN (from skb->protocol)", H,
      get_ethertype },
    { "smac", "string", "source Ethernet address (devices with an Ethernet header)", H,
      get_smac },
    { "dmac", "string", "destination Ethernet address (devices with an Ethernet header)", H,
      get_dmac },
    { "saddr", "string", "source IPv4 or IPv6 address (RFC 5952); absent when not IP", H,
      get_saddr },
    { "daddr", "string", "destination IPv4 or IPv6 address (RFC 5952); absent when not IP", H,
      get_daddr },
    { "proto", "string", "L4 protocol: tcp, udp, icmp, icmpv6, sctp, ... or the number", H,
      get_proto },
    { "sport", "integer", "TCP/UDP/SCTP source port; absent otherwise", H, get_sport },
    { "dport", "integer", "TCP/UDP/SCTP destination port; absent otherwise", H, get_dport },
    { "tcp_flags", "string", "TCP flags, tcpdump style: S, S., ., P., F., R, ...", H,
      get_tcp_flags },
    { "ttl", "integer", "IPv4 TTL / IPv6 hop limit", H, get_ttl },
    { "tos", "integer", "IPv4 TOS / IPv6 traffic class", H, get_tos },
    { "owner_pid", "integer", "tgid of the socket's owner (absent: no socket, or owner unknown)",
      NEED.OWNER, get_owner_pid },
    { "owner_tid", "integer", "tid of the socket's owner", NEED.OWNER, get_owner_tid },
    { "owner_comm", "string", "comm of the socket's owner", NEED.OWNER, get_owner_comm },
    { "owner_cgroup", "integer", "cgroup v2 id of the socket (sk_cgrp_data)", NEED.OWNER,
      get_owner_cgroup },
    { "owner_uid", "integer", "uid of the socket (sk_uid)", NEED.OWNER, get_owner_uid },
}

local by_name = {}
local names = {}
for i, row in ipairs(catalogue) do
    local field = {
        name = row[1],
        type = row[2],
        description = row[3],
        need = row[4],
        id = F[row[1]],          -- nil for ts, time, skb
        get = row[5],
        index = i,
    }
    catalogue[i] = field
    by_name[field.name] = field
    names[i] = field.name
end

-- Every NDQ_F_* id belongs to exactly one catalogue field.
for name in pairs(F) do
    assert(by_name[name], "netdevq.fields: abi.F names a field the catalogue lacks: " .. name)
end

local GETTERS = {}
for _, field in ipairs(catalogue) do
    GETTERS[field.name] = field.get
end

_M.catalogue = catalogue     -- array of { name, type, description, need, id, get, index }
_M.by_name = by_name
_M.names = names             -- array of names, catalogue order


---------------------------------------------------------------------------------------------
-- Names: lookups, suggestions, lists
---------------------------------------------------------------------------------------------

-- Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
-- neighbours ("dprot" is one step from "dport") each cost 1.
local function edit_distance(a, b)
    local la, lb = #a, #b
    local d = {}
    for i = 0, la do
        d[i] = { [0] = i }
    end
    for j = 1, lb do
        d[0][j] = j
    end
    for i = 1, la do
        local ca = byte(a, i)
        local row, prev = d[i], d[i - 1]
        for j = 1, lb do
            local cb = byte(b, j)
            local v = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca == cb and 0 or 1))
            if i > 1 and j > 1 and ca == byte(b, j - 1) and byte(a, i - 1) == cb then
                v = min(v, d[i - 2][j - 2] + 1)
            end
            row[j] = v
        end
    end
    return d[la][lb]
end
_M.edit_distance = edit_distance

local function common_prefix(a, b)
    local n = 0
    while n < #a and byte(a, n + 1) == byte(b, n + 1) do
        n = n + 1
    end
    return n
end

-- "unknown field 'x' (known: <every name, the nearest first>)": one wording for every caller.
-- Nearest: smallest edit distance (a name containing what was typed, or the reverse, counts as
-- distance 1), then the longer common prefix, then catalogue order.
local function unknown_message(name)
    name = tostring(name)
    local ranked, dist, prefix = {}, {}, {}
    for i, n in ipairs(names) do
        ranked[i] = n
        local d = edit_distance(name, n)
        if name ~= "" and (str_find(n, name, 1, true) or str_find(name, n, 1, true)) then
            d = min(d, 1)
        end
        dist[n] = d
        prefix[n] = common_prefix(name, n)
    end
    sort(ranked, function(x, y)
        if dist[x] ~= dist[y] then
            return dist[x] < dist[y]
        end
        if prefix[x] ~= prefix[y] then
            return prefix[x] > prefix[y]
        end
        return by_name[x].index < by_name[y].index
    end)
    return format("unknown field '%s' (known: %s)", name, concat(ranked, ", "))
end
_M.unknown_message = unknown_message

-- name -> field descriptor, or nil, "unknown field ..."
function _M.field(name)
    local field = by_name[name]
    if field then
        return field
    end
    return nil, unknown_message(name)
end

-- "comm, pid,dev" -> { "comm", "pid", "dev" }, or nil, message.
function _M.parse_list(text)
    if type(text) ~= "string" then
        error("parse_list: expected a string, got " .. type(text), 2)
    end
    local list, n = {}, 0
    local pos = 1
    while true do
        local comma = str_find(text, ",", pos, true)
        local item = sub(text, pos, comma and comma - 1 or #text):match("^%s*(.-)%s*$")
        if item == "" then
            return nil, "empty field name in list '" .. text .. "'"
        end
        if not by_name[item] then
            return nil, unknown_message(item)
        end
        n = n + 1
        list[n] = item
        if not comma then
            break
        end
        pos = comma + 1
    end
    return list
end

-- { names } -> OR of their NDQ_NEED_* bits.
function _M.needs(list)
    if type(list) ~= "table" then
        error("needs: expected an array of field names, got " .. type(list), 2)
    end
    local need = 0
    for i = 1, #list do
        local field = by_name[list[i]]
        if not field then
            error(unknown_message(list[i]), 2)
        end
        need = bor(need, field.need)
    end
    return need
end

-- Lines for --list-fields: "name  type  description", aligned.
function _M.list()
    local lines = {}
    for i, field in ipairs(catalogue) do
        lines[i] = format("%-10s %-8s %s", field.name, field.type, field.description)
    end
    return lines
end


---------------------------------------------------------------------------------------------
-- Event view: one reusable object per consumer, pointed at each event in turn
---------------------------------------------------------------------------------------------

local function view_set(self, p)
    self._p = p or false      -- never nil: a missing raw _p would go through __index
    return self
end

-- A plain table of the present fields (all, or those in list): it outlives the callback, the
-- view does not (its event is overwritten by the next batch).
local function view_totable(self, list)
    local p = self._p
    if not p then
        error("event view has no event (used outside its callback?)", 2)
    end
    local t = {}
    if list == nil then
        for i = 1, #catalogue do
            local field = catalogue[i]
            t[field.name] = field.get(p)
        end
    else
        for i = 1, #list do
            local name = list[i]
            local get = GETTERS[name]
            if not get then
                error(unknown_message(name), 2)
            end
            t[name] = get(p)
        end
    end
    return t
end

local view_mt = {
    __index = function(self, name)
        local get = GETTERS[name]
        if get then
            local p = self._p
            if p then
                return get(p)
            end
            error("event view has no event (used outside its callback?)", 2)
        end
        error(unknown_message(name), 2)
    end,
    __newindex = function(_, name)
        error("event fields are read-only (assigning '" .. tostring(name) .. "')", 2)
    end,
    __tostring = function(self)
        local p = self._p
        if not p then
            return "netdevq.event (none)"
        end
        return format("netdevq.event (%s %s len=%d)", get_comm(p), get_dev(p), p.len)
    end,
}

-- The methods and the pointer are plain fields of the object, so ev.len costs one __index call
-- and view:_set(p) none; field names never collide with them.
function _M.view(p)
    return setmetatable({ _p = p or false, _set = view_set, totable = view_totable }, view_mt)
end

-- true when x is an object made by view()
function _M.is_view(x)
    return type(x) == "table" and getmetatable(x) == view_mt
end


return _M
