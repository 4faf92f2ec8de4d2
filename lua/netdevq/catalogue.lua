-- netdevq.catalogue: the field catalogue — one row per field, and everything else derives from it.
--
-- A row says what a field is; the filter, the text and JSON writers, the aggregations (Lua and
-- kernel), pcapng and the CLI read it from here and nowhere else:
--   name          the name in filters, --fields, JSON keys, Lua events
--   type          integer | string | time | mac | address | protocol | ethertype | flags: how the
--                 value is compared in filters, printed, and packed in an in-kernel key
--   need          the NDQ_NEED_* bit (by name) the kernel must set to fill it; nil: always there
--   member        the struct netdevq_config part that checks it in the kernel filter (if any)
--   raw(p)        its value from a `const struct netdevq_event *`, before any formatting
--                 (number, or nil when the event does not carry it); address fields name their
--                 event member in `addr` and get raw(p) -> family (4, 6; 0 absent), 16 bytes
--   untrusted     text from outside netdevq (task and device names): escaped on output
--   either        pseudo-fields (port, host): true when either of these two fields matches
--   example, description
--   at, when      the struct netdevq_event member that holds it and when the event carries it
--                 (IP, L4, TCP, MAC, ICMP, VLAN, IPFRAG, IP6, ARP, NONZERO): from these come raw(p)
--                 and `loc`, where the kernel's aggregation finds it (struct netdevq_field_loc,
--                 offsetof on the ABI)
--   family        address fields of one family whatever the event's l3 (4: ARP's IPv4 addresses)
--   text(p)       optional: the text output's form where it differs from the value (ICMP type
--                 and code names; JSON, filters and aggregations keep the number)
-- Adding a kernel-read field is the ABI member, the kernel read, and one row here.
local ffi = require("ffi")
local bit = require("bit")
local abi = require("netdevq.abi")
local names = require("netdevq.names")
local clock = require("netdevq.clock")

local ffi_string = ffi.string
local band, bor, tohex, tobit = bit.band, bit.bor, bit.tohex, bit.tobit
local format, byte, sub, find = string.format, string.byte, string.sub, string.find
local concat, sort = table.concat, table.sort
local min = math.min
local type, tonumber, tostring, error, ipairs, pcall, assert = type, tonumber, tostring, error,
    ipairs, pcall, assert
local load = loadstring or load

local NEED = abi.NEED
local LOC = abi.LOC
local EV_MAC, EV_L4, EV_TCP = abi.EV.MAC, abi.EV.L4, abi.EV.TCP
local format_mac = names.format_mac


local _M = {}


-- NUL-terminated, but never read past the array even if the kernel filled it to the brim.
-- strnlen, not a loop: an inner loop would split every compiled per-event loop that reads a name.
pcall(ffi.cdef, "size_t ndq_strnlen(const char *s, size_t maxlen) __asm__(\"strnlen\");")
local C = ffi.C
local function cstring(buf, size)
    return ffi_string(buf, tonumber(C.ndq_strnlen(buf, size)))
end
_M.cstring = cstring

-- cstring of a 16-byte name (comm, dev): a direct-mapped cache keyed by its 16 bytes as two
-- 64-bit words, so that a name seen before costs two loads and compares, not a new string
-- lookup per event (ffi.string hashes and interns).
local NAME_SLOTS = 256
local name_words = ffi.new("uint64_t[?]", NAME_SLOTS * 2)
local name_text = {}
local u64_ptr_t = ffi.typeof("const uint64_t *")
local bxor, rshift = bit.bxor, bit.rshift
local function name16(buf)
    local w = ffi.cast(u64_ptr_t, buf)
    local a, b = w[0], w[1]
    local slot = tonumber(band(bxor(a, rshift(a, 29), b, rshift(b, 37)), NAME_SLOTS - 1))
    local text = name_text[slot]
    if text and name_words[2 * slot] == a and name_words[2 * slot + 1] == b then
        return text
    end
    text = cstring(buf, 16)
    name_words[2 * slot], name_words[2 * slot + 1] = a, b
    name_text[slot] = text
    return text
end

local format_address = names.address_text -- (l3, bytes) -> text, memoized


-- text(p) of icmp_type / icmp_code: the name from the ICMP or ICMPv6 table (by proto)
local function icmp_text_of(which)
    local EV_ICMP = abi.EV.ICMP
    local type_text, code_text = names.icmp_type_text, names.icmp_code_text
    return function(p)
        if band(p.flags, EV_ICMP) == 0 then return nil end
        local family = p.proto == 58 and 6 or 4
        if which == "type" then return type_text(family, p.icmp_type) end
        return code_text(family, p.icmp_type, p.icmp_code)
    end
end


-- netns inode -> name, netdevq.netns loaded on first use (a require per event would not compile)
local netns_module
local function netns_name(ino)
    netns_module = netns_module or require("netdevq.netns")
    return netns_module.name(ino)
end


-- drop_reason: enum skb_drop_reason value -> name ("QDISC_DROP"), from the kernel's BTF on first
-- use; a value the kernel's enum does not name (a subsystem's reason) stays a number's text
local drop_reasons
local function drop_reason_name(v)
    if not drop_reasons then
        local ok, names_or_nil = pcall(function() return require("netdevq.core").drop_reasons() end)
        drop_reasons = ok and names_or_nil or {}
    end
    return drop_reasons[v] or tostring(v)
end


---------------------------------------------------------------------------------------------
-- The rows, in the order fields are listed and printed
---------------------------------------------------------------------------------------------

local ROWS = {
    { name = "ts", type = "integer", at = "ts", need = "TS", example = "0",
      description = "bpf_ktime_get_ns() at the tracepoint (CLOCK_MONOTONIC ns)" },
    { name = "time", type = "time", need = "TS", example = '"12:00:00"',
      description = "wall-clock (local) time of the event, HH:MM:SS.micro",
      raw = function(p) return clock.format_time(p.ts) end },
    { name = "cpu", type = "integer", at = "cpu", example = "0",
      description = "CPU the event fired on" },
    { name = "pid", type = "integer", at = "pid", need = "TASK", member = "pid",
      example = "1234", description = "current task's tgid (in softirq: whoever was interrupted)" },
    { name = "tid", type = "integer", at = "tid", need = "TASK", member = "tid",
      example = "1234", description = "current task's tid (in softirq: whoever was interrupted)" },
    { name = "comm", type = "string", at = "comm", need = "TASK", member = "comm",
      example = '"curl"', untrusted = true, description = "current task's comm" },
    { name = "cgroup", type = "integer", at = "cgroup", need = "CGROUP", member = "cgroup",
      example = "1", description = "current task's cgroup v2 id" },
    { name = "skb", type = "string", example = '"0xffff888003a1c000"',
      description = "skb address, hex", raw = function(p) return "0x" .. tohex(p.skb, 16) end },
    { name = "dev", type = "string", at = "dev", need = "DEV", member = "dev", example = '"eth0"',
      untrusted = true, description = "device the skb is queued on" },
    { name = "ifindex", type = "integer", at = "ifindex", need = "DEV", member = "ifindex",
      example = "2", description = "ifindex of that device" },
    { name = "netns", type = "integer", at = "netns", need = "NETNS", member = "netns",
      example = '4026531840 or "blue"', resolve = function(name)
          return require("netdevq.netns").inode(name)
      end, description = "inode number of the device's network namespace (filters take names)" },
    { name = "netns_name", type = "string", need = "NETNS", example = '"blue"',
      untrusted = true, description = "name of that namespace in /run/netns (ip netns), if any",
      raw = function(p) return netns_name(p.netns) end },
    { name = "len", type = "integer", at = "len", member = "len", example = "1500",
      description = "skb->len" },
    { name = "data_len", type = "integer", at = "data_len", example = "0",
      description = "skb->data_len (bytes in fragments)" },
    { name = "mac_len", type = "integer", at = "mac_len", example = "14",
      description = "skb->mac_len" },
    { name = "hdr_len", type = "integer", at = "hdr_len", example = "0",
      description = "skb->hdr_len" },
    { name = "queue", type = "integer", at = "queue", member = "queue", example = "0",
      description = "skb->queue_mapping" },
    { name = "priority", type = "integer", at = "priority", member = "priority", example = "0",
      description = "skb->priority" },
    { name = "mark", type = "integer", at = "mark", member = "mark", example = "1",
      description = "skb->mark" },
    { name = "hash", type = "integer", at = "hash", example = "0", description = "skb->hash" },
    { name = "gso_size", type = "integer", at = "gso_size", need = "GSO", example = "1448",
      description = "skb_shinfo(skb)->gso_size" },
    { name = "gso_segs", type = "integer", at = "gso_segs", need = "GSO", example = "2",
      description = "skb_shinfo(skb)->gso_segs" },
    -- 0 is what the kernel side leaves when it did not read the header: absent, not "0x0000"
    { name = "ethertype", type = "ethertype", at = "ethertype", when = "NONZERO",
      need = "HEADERS", member = "ethertype", example = '"ipv4"',
      description = "ipv4, ipv6, arp, ... or 0xNNNN (from skb->protocol)" },
    { name = "smac", type = "mac", at = "smac", when = "MAC", need = "HEADERS",
      example = '"02:00:00:00:00:01"',
      description = "source Ethernet address (devices with an Ethernet header)" },
    { name = "dmac", type = "mac", at = "dmac", when = "MAC", need = "HEADERS",
      example = '"02:00:00:00:00:01"',
      description = "destination Ethernet address (devices with an Ethernet header)" },
    { name = "saddr", type = "address", at = "saddr", when = "IP", need = "HEADERS",
      member = "saddr", example = '"198.18.0.0/15"',
      description = "source IPv4 or IPv6 address (RFC 5952); absent when not IP" },
    { name = "daddr", type = "address", at = "daddr", when = "IP", need = "HEADERS",
      member = "daddr", example = '"198.18.0.0/15"',
      description = "destination IPv4 or IPv6 address (RFC 5952); absent when not IP" },
    { name = "proto", type = "protocol", at = "proto", when = "IP", need = "L4",
      member = "proto", example = '"udp"',
      description = "L4 protocol: tcp, udp, icmp, icmpv6, sctp, ... or the number" },
    { name = "sport", type = "integer", at = "sport", when = "L4", need = "L4",
      member = "sport", example = "53",
      description = "TCP/UDP/SCTP source port; absent otherwise" },
    { name = "dport", type = "integer", at = "dport", when = "L4", need = "L4",
      member = "dport", example = "53",
      description = "TCP/UDP/SCTP destination port; absent otherwise" },
    { name = "tcp_flags", type = "flags", at = "tcp_flags", when = "TCP", need = "HEADERS",
      example = '"S."', description = "TCP flags, tcpdump style: S, S., ., P., F., R, ..." },
    { name = "ttl", type = "integer", at = "ttl", when = "IP", need = "HEADERS", example = "64",
      description = "IPv4 TTL / IPv6 hop limit" },
    { name = "tos", type = "integer", at = "tos", when = "IP", need = "HEADERS", example = "0",
      description = "IPv4 TOS / IPv6 traffic class" },
    -- decoding: ICMP, VLAN, fragments, IPv6 extension headers
    { name = "icmp_type", type = "integer", at = "icmp_type", when = "ICMP", need = "HEADERS",
      example = "8", text = icmp_text_of("type"),
      description = "ICMP / ICMPv6 type (names in text: echo request, ...)" },
    { name = "icmp_code", type = "integer", at = "icmp_code", when = "ICMP", need = "HEADERS",
      example = "3", text = icmp_text_of("code"),
      description = "ICMP / ICMPv6 code (names in text: port unreachable, ...)" },
    { name = "vlan_id", type = "integer", at = "vlan_id", when = "VLAN", need = "HEADERS",
      example = "100",
      description = "VLAN id of the outermost 802.1Q/802.1ad tag (offloaded or in the frame)" },
    { name = "vlan_pcp", type = "integer", at = "vlan_pcp", when = "VLAN", need = "HEADERS",
      example = "3", description = "priority code point (0..7) of that tag" },
    { name = "vlan_proto", type = "integer", at = "vlan_proto", when = "VLAN", need = "HEADERS",
      example = "0x8100",
      description = "TPID of that tag: 33024 (0x8100, 802.1Q) or 34984 (0x88a8, 802.1ad)" },
    { name = "frag_off", type = "integer", at = "frag_off", when = "IPFRAG", need = "HEADERS",
      example = "0",
      description = "IP fragment offset in bytes (0: the first); absent when not a fragment" },
    { name = "ip6_ext", type = "integer", at = "ip6_ext", when = "IP6", need = "HEADERS",
      example = "1",
      description = "IPv6 extension headers before the upper layer; absent when not IPv6" },
    -- ARP for IPv4 over Ethernet (RFC 826): absent for anything else
    { name = "arp_op", type = "integer", at = "arp_op", when = "ARP", need = "HEADERS",
      example = "1", text = function(p)
          if band(p.flags, abi.EV.ARP) ~= 0 then return names.arp_op_text(p.arp_op) end
      end, description = "ARP operation: 1 request (who-has), 2 reply (is-at); names in text" },
    { name = "arp_sha", type = "mac", at = "arp_sha", when = "ARP", need = "HEADERS",
      example = '"02:00:00:00:00:01"', description = "ARP sender hardware address" },
    { name = "arp_spa", type = "address", family = 4, at = "arp_spa", when = "ARP",
      need = "HEADERS", example = '"198.18.0.1"', description = "ARP sender IPv4 address" },
    { name = "arp_tha", type = "mac", at = "arp_tha", when = "ARP", need = "HEADERS",
      example = '"00:00:00:00:00:00"', description = "ARP target hardware address" },
    { name = "arp_tpa", type = "address", family = 4, at = "arp_tpa", when = "ARP",
      need = "HEADERS", example = '"198.18.0.2"', description = "ARP target IPv4 address" },
    -- the socket's owner (bpf/owner.bpf.h): present when the kernel knows it
    { name = "owner_pid", type = "integer", at = "owner_pid", when = "OWNER", need = "OWNER",
      example = "1234", description = "tgid of the process owning the packet's socket (in softirq "
      .. "too); absent: no socket, a kernel socket, or owner unknown" },
    { name = "owner_tid", type = "integer", at = "owner_tid", when = "OWNER", need = "OWNER",
      example = "1234", description = "tid of the thread that last used the socket" },
    { name = "owner_comm", type = "string", at = "owner_comm", when = "OWNER", need = "OWNER",
      example = '"curl"', untrusted = true, description = "comm of the socket's owner" },
    { name = "owner_cgroup", type = "integer", at = "owner_cgroup", when = "OWNER",
      need = "OWNER", example = "1", description = "the socket's cgroup v2 id (sk_cgrp_data)" },
    { name = "owner_uid", type = "integer", at = "owner_uid", when = "OWNER", need = "OWNER",
      example = "0", description = "the socket's uid (sk_uid)" },
    -- queue latency and drops (bpf/latency.bpf.h): such events leave when the packet's fate is
    -- known, at net_dev_xmit or at its drop
    { name = "sojourn_ns", type = "integer", at = "sojourn_ns", when = "XMIT", need = "LATENCY",
      member = "sojourn", example = "5000000", description = "ns from net_dev_queue to "
      .. "net_dev_start_xmit (qdisc wait, stopped queue); absent: dropped before the driver" },
    { name = "xmit_ns", type = "integer", at = "xmit_ns", when = "XMIT_DONE", need = "LATENCY",
      example = "1500", description = "ns the driver call took (net_dev_start_xmit to "
      .. "net_dev_xmit)" },
    { name = "xmit_rc", type = "integer", at = "xmit_rc", when = "XMIT_DONE", need = "LATENCY",
      example = "0", raw = function(p)
          if band(p.flags, abi.EV.XMIT_DONE) ~= 0 then return tobit(p.xmit_rc) end
      end, decode_key = function(b, off) -- the kernel's key holds it zero-extended: signed here
          return tobit(ffi.cast("const uint32_t *", b + off)[0])
      end, description = "the driver's return code (net_dev_xmit rc: 0 NETDEV_TX_OK)" },
    { name = "drop_reason", type = "string", need = "LATENCY", example = '"QDISC_DROP"',
      raw = function(p)
          if band(p.flags, abi.EV.DROP) ~= 0 then return drop_reason_name(p.drop_reason) end
      end, description = "why the packet was freed before the driver returned "
      .. "(enum skb_drop_reason, named from kernel BTF)" },
}

-- Filter-only names: true when either of two fields matches (`port == 53`: sport or dport).
local PSEUDO = {
    { name = "port", type = "integer", need = "HEADERS", member = "port", example = "53",
      either = { "sport", "dport" }, description = "sport or dport (filters only)" },
    { name = "host", type = "address", need = "HEADERS", member = "host",
      example = '"198.18.0.0/15"', either = { "saddr", "daddr" },
      description = "saddr or daddr (filters only)" },
}


---------------------------------------------------------------------------------------------
-- What a row's `at`, `when` and `type` mean: its raw getter, its text, its kernel location
---------------------------------------------------------------------------------------------

-- `when`: the event carries the field only if ... (as Lua source on p, and for the kernel)
local function flag(bitv)
    return { lua = format("band(p.flags, %d) ~= 0", bitv), flags = bitv }
end
local WHEN = {
    IP = { lua = "p.l3 ~= 0", l3 = 1 },
    L4 = flag(EV_L4),
    TCP = flag(EV_TCP),
    MAC = flag(EV_MAC),
    ICMP = flag(abi.EV.ICMP),
    VLAN = flag(abi.EV.VLAN),
    IPFRAG = flag(abi.EV.IPFRAG),
    IP6 = flag(abi.EV.IP6),
    ARP = flag(abi.EV.ARP),
    OWNER = flag(abi.EV.OWNER),
    XMIT = flag(abi.EV.XMIT),
    XMIT_DONE = flag(abi.EV.XMIT_DONE),
    NONZERO = { lua = "v ~= 0", nonzero = 1 },
}

-- text of a raw value, per type (integer, string, time, mac: the raw value itself)
local TEXT = {
    protocol = names.format_proto,
    ethertype = names.format_ethertype,
    flags = names.format_tcp_flags,
}
-- the value Lua programs and JSON see: a number for these types, a string for the others
local NUMERIC = { integer = true, protocol = false }

-- offset and size of a member of struct netdevq_event (size 8 for 64-bit integers)
local probe = ffi.new("struct netdevq_event")
ffi.fill(probe, ffi.sizeof(probe), 0xff)
local MAX_OF_SIZE = { [255] = 1, [65535] = 2, [4294967295] = 4 }
local function member_layout(at)
    local ok, off = pcall(ffi.offsetof, "struct netdevq_event", at)
    if not ok or not off then
        return nil
    end
    local v = probe[at]
    if type(v) == "number" then
        return off, MAX_OF_SIZE[v]
    elseif ffi.istype("uint64_t", v) then
        return off, 8
    end
    return off, ffi.sizeof(v)
end

-- the raw getter of a row with `at`: generated, so that it is a plain member load for LuaJIT
local function raw_getter(row, size)
    local at, when = row.at, row.when and WHEN[row.when]
    local value
    if row.type == "address" and row.family then -- absent: family 0
        value = format("(%s) and %d or 0, p.%s", when.lua, row.family, at)
    elseif row.type == "address" then
        value = "p.l3, p." .. at
    elseif row.type == "string" and size == 16 then
        value = format("name16(p.%s)", at)
    elseif row.type == "string" then
        value = format("cstring(p.%s, %d)", at, size)
    elseif row.type == "mac" then
        value = "format_mac(p." .. at .. ")"
    elseif size == 8 then
        value = "tonumber(p." .. at .. ")"
    else
        value = "p." .. at
    end
    local body
    if row.type == "address" then -- absent: family 0, which no prefix matches
        body = "return " .. value
    elseif when and when.nonzero then
        body = "local v = " .. value .. " if v ~= 0 then return v end"
    elseif when then
        body = "if " .. when.lua .. " then return " .. value .. " end"
    else
        body = "return " .. value
    end
    local chunk = assert(load("local band, tonumber, cstring, format_mac, name16 = ...\n"
        .. "return function(p) " .. body .. " end", "=catalogue." .. row.name))
    return chunk(band, tonumber, cstring, format_mac, name16)
end

-- where the kernel's aggregation finds the field (struct netdevq_field_loc as a table)
local function kernel_location(row, off, size)
    local when = row.when and WHEN[row.when] or {}
    local kind = LOC.NUMBER
    if row.type == "address" then
        kind = row.family == 4 and LOC.IPV4 or LOC.ADDRESS
    elseif row.type == "string" or row.type == "mac" then
        kind = LOC.BYTES
    end
    if kind == LOC.NUMBER and not MAX_OF_SIZE[2 ^ (8 * size) - 1] and size ~= 8 then
        return nil
    end
    return { off = off, size = size, kind = kind, when_flags = when.flags or 0,
             when_l3 = when.l3 or 0, when_nonzero = when.nonzero or 0 }
end

local function make_getter(row)
    local raw, text = row.raw, TEXT[row.type]
    if row.type == "address" then
        return function(p) return format_address(raw(p)) end
    elseif not text then
        return raw
    end
    return function(p)
        local v = raw(p)
        if v ~= nil then return text(v) end
    end
end


---------------------------------------------------------------------------------------------
-- The catalogue: rows completed with what derives from them
---------------------------------------------------------------------------------------------

local fields = {}      -- array, catalogue order (pseudo-fields not included)
local by_name = {}     -- name -> field, pseudo-fields included
local field_names = {} -- array of names, catalogue order

local function complete(row)
    if type(row.name) ~= "string" or not row.name:match("^[%a_][%w_%.%[%]]*$") then
        error("catalogue: a field needs a name of letters, digits, '_' and '.'", 3)
    end
    if by_name[row.name] then
        error("catalogue: field '" .. row.name .. "' is already defined", 3)
    end
    row.need_bits = row.need and NEED[row.need] or 0
    if row.need and not row.need_bits then
        error("catalogue: field '" .. row.name .. "' needs unknown NEED bit " .. row.need, 3)
    end
    if row.when and not WHEN[row.when] then
        error("catalogue: field '" .. row.name .. "' has unknown condition " .. row.when, 3)
    end
    row.value_type = NUMERIC[row.type] and "integer" or "string"
    if row.at then
        local off, size = member_layout(row.at)
        if not off then
            error("catalogue: field '" .. row.name .. "': struct netdevq_event has no member '"
                  .. row.at .. "'", 3)
        end
        row.raw = row.raw or raw_getter(row, size)
        row.loc = row.loc or kernel_location(row, off, size)
    end
    if not row.either then
        row.get = row.get or make_getter(row)
    end
    return row
end

for i, row in ipairs(ROWS) do
    complete(row)
    row.index = i
    fields[i] = row
    by_name[row.name] = row
    field_names[i] = row.name
end
for _, row in ipairs(PSEUDO) do
    complete(row)
    by_name[row.name] = row
end

_M.fields = fields
_M.by_name = by_name
_M.names = field_names

-- Adds a field at run time (the skb.PATH fields resolved through BTF); returns it.
function _M.register(row)
    if type(row) ~= "table" then
        error("catalogue.register: expected a row table", 2)
    end
    complete(row)
    row.index = #fields + 1
    row.dynamic = true
    fields[row.index] = row
    by_name[row.name] = row
    field_names[row.index] = row.name
    return row
end


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

-- Up to `limit` names of `list` nearest to `word` (all of them, ranked, when limit is nil):
-- smallest edit distance (a name containing what was typed, or the reverse, counts as 1), then
-- the longer common prefix, then list order. max_distance (optional) drops names farther away.
function _M.nearest(word, list, limit, max_distance)
    word = tostring(word)
    local ranked, dist, prefix, order = {}, {}, {}, {}
    for i, n in ipairs(list) do
        local d = edit_distance(word, n)
        if word ~= "" and (find(n, word, 1, true) or find(word, n, 1, true)) then
            d = min(d, 1)
        end
        if not max_distance or d <= max_distance then
            ranked[#ranked + 1] = n
            dist[n], prefix[n], order[n] = d, common_prefix(word, n), i
        end
    end
    sort(ranked, function(x, y)
        if dist[x] ~= dist[y] then
            return dist[x] < dist[y]
        end
        if prefix[x] ~= prefix[y] then
            return prefix[x] > prefix[y]
        end
        return order[x] < order[y]
    end)
    if limit then
        for i = #ranked, limit + 1, -1 do
            ranked[i] = nil
        end
    end
    return ranked
end

-- Up to 3 names of `list` near `word` (for "did you mean"): smallest distance (at most half the
-- word's length), then closest length, then most letters in the same place, then list order.
function _M.suggest(word, list)
    local ranked = {}
    local limit = math.max(1, math.floor(#word / 2))
    for i, name in ipairs(list) do
        local dist = edit_distance(word, name)
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

-- "unknown field 'x' (known: <every name, the nearest first>)": one wording for every caller.
local function unknown_message(name)
    return format("unknown field '%s' (known: %s)", tostring(name),
                  concat(_M.nearest(name, field_names), ", "))
end
_M.unknown_message = unknown_message

-- name -> field, or nil, "unknown field ..."
function _M.field(name)
    local field = by_name[name]
    if field and not field.either then
        return field
    end
    -- sk_buff member paths (skb.dev.mtu) and kstack: rows made on first use (netdevq.skbpath)
    local row, err = require("netdevq.skbpath").field_row(name)
    if row then
        return _M.register(row)
    elseif err then
        return nil, err
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
        local comma = find(text, ",", pos, true)
        local item = sub(text, pos, comma and comma - 1 or #text):match("^%s*(.-)%s*$")
        if item == "" then
            return nil, "empty field name in list '" .. text .. "'"
        end
        local _, err = _M.field(item)
        if err then
            return nil, err
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
        need = bor(need, field.need_bits)
    end
    return need
end

-- Lines for --list-fields: "name  type  description", aligned.
function _M.list()
    local lines, width = {}, 0
    for _, field in ipairs(fields) do
        width = math.max(width, #field.name)
    end
    for i, field in ipairs(fields) do
        lines[i] = format("%-" .. width .. "s %-8s %s", field.name, field.value_type,
                          field.description)
    end
    return lines
end


return _M
