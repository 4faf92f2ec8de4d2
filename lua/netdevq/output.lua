-- netdevq.output: per-event writers (text lines, JSON lines) and the end-of-run summary.
--
-- A writer is made once with its column list; the getters are looked up then, so writing an
-- event is a loop over an array into a reused buffer and one file write — no closure, no table.
-- Write failures (EPIPE when the reader went away, ENOSPC, ...) come back as nil, err and stick:
-- every later call returns the same error, so the run loop can stop at its next check.
-- SIGPIPE must be ignored by the process for EPIPE to arrive here instead of killing it.
local bit = require("bit")
local cjson = require("cjson")
local abi = require("netdevq.abi")
local catalogue = require("netdevq.catalogue")
local clock = require("netdevq.clock")
local event = require("netdevq.event")
local names = require("netdevq.names")

local band = bit.band
local format = string.format
local concat = table.concat
local encode_string = cjson.encode
local type = type
local tostring = tostring
local error = error
local setmetatable = setmetatable
local ipairs = ipairs
local io_stdout = io.stdout
local io_stderr = io.stderr

local EV_L4 = abi.EV.L4
local EV_TCP = abi.EV.TCP
local EV_ICMP = abi.EV.ICMP
local EV_ARP = abi.EV.ARP
local icmp_text = names.icmp_text
local format_date = clock.format_date
local by_name = catalogue.by_name
local unknown_message = catalogue.unknown_message
local event_pointer = event.pointer

local get_time = by_name.time.get
local get_pid = by_name.pid.get
local get_len = by_name.len.get
local get_proto = by_name.proto.get
local get_saddr = by_name.saddr.get
local get_daddr = by_name.daddr.get
local get_sport = by_name.sport.get
local get_dport = by_name.dport.get
local get_ethertype = by_name.ethertype.get
local get_tcp_flags = by_name.tcp_flags.get
local get_arp_spa, get_arp_tpa = by_name.arp_spa.get, by_name.arp_tpa.get
local get_arp_sha = by_name.arp_sha.get
local arp_op_text = names.arp_op_text

-- Doubles print exactly with %.14g (what tostring and table.concat use) below this; ts in ns
-- passes it after ~28 hours of uptime.
local EXACT_BELOW = 1e14


local _M = {}

-- The fields the default text line reads (what the tracer's plan asks the kernel for). Its comm
-- and pid columns are the socket owner's when the kernel knows it, the task's otherwise.
_M.DEFAULT_FIELDS = {
    "time", "comm", "pid", "dev", "len", "proto", "saddr", "sport", "daddr", "dport", "ethertype",
    "tcp_flags", "icmp_type", "icmp_code", "arp_op", "arp_spa", "arp_tpa", "arp_sha",
    "owner_comm", "owner_pid",
}

-- The fields a writer made with these options reads (nil: every field).
function _M.fields_read(format_name, opts)
    opts = opts or {}
    if opts.fields then
        return opts.fields
    elseif format_name == "json" then
        return nil
    end
    local list = { unpack(_M.DEFAULT_FIELDS) }
    for _, name in ipairs(opts.extra or {}) do
        list[#list + 1] = name
    end
    return list
end


local function check_opts(opts, who)
    if opts == nil then
        return {}
    end
    if type(opts) ~= "table" then
        error(who .. ": expected an options table, got " .. type(opts), 3)
    end
    local list = opts.fields
    if list ~= nil then
        if type(list) ~= "table" or #list == 0 then
            error(who .. ": fields must be a non-empty array of field names", 3)
        end
        for i = 1, #list do
            if not by_name[list[i]] then
                error(who .. ": " .. unknown_message(list[i]), 3)
            end
        end
    end
    return opts
end

local escape_name = require("netdevq.names").printable
_M.escape_name = escape_name

-- the getter a writer uses for a field: names from outside come escaped; text output takes a
-- row's text form where it has one (ICMP type and code names), JSON the value
local function printable_getter(field, text)
    local get = text and field.text or field.get
    if not field.untrusted then
        return get
    end
    return function(p)
        local v = get(p)
        if v ~= nil then return escape_name(v) end
    end
end
local get_comm = printable_getter(by_name.comm)
local get_dev = printable_getter(by_name.dev)
local get_owner_comm = printable_getter(by_name.owner_comm)
local get_owner_pid = by_name.owner_pid.get

local function integer_text(v)
    if v >= EXACT_BELOW or v <= -EXACT_BELOW then
        return format("%d", v)
    end
    return v
end


-- Shared by both writers ----------------------------------------------------------------------

-- a write's result: an error sticks to the writer, so that the run loop stops at its next check
local function outcome(self, ok, err)
    if not ok then
        self.err = tostring(err)
        return nil, self.err
    end
    return true
end

local function write_line(self, fh, a, b)
    if self.err then
        return nil, self.err
    end
    return outcome(self, fh:write(a, b))
end

local function flush(self)
    if self.err then
        return nil, self.err
    end
    return outcome(self, self.file:flush())
end

-- "netdevq: N events, M matched, L lost", and the events no aggregation had room for when there
-- were any (never silent: a larger --max-keys helps)
local function summary_text(stats)
    local text = format("netdevq: %d events, %d matched, %d lost",
                        stats.events or 0, stats.matched or 0, stats.lost or 0)
    local overflow = stats.agg_overflow or 0
    if overflow > 0 then
        text = text .. format(", %d not aggregated (aggregation full: raise --max-keys)",
                              overflow)
    end
    return text
end
_M.summary_text = summary_text

local function text_lost(self, count)
    return write_line(self, self.err_file,
                      format("netdevq: %d events lost (ring buffer full; a larger --ringbuf-size "
                             .. "or a kernel-side filter helps)", count), "\n")
end

local function text_summary(self, stats)
    return write_line(self, self.err_file, summary_text(stats), "\n")
end


-- Text ------------------------------------------------------------------------------------------

local Text = {}
Text.__index = Text

local function text_value(v)
    if v == nil or v == "" then
        return "-"
    end
    if type(v) == "number" then
        return integer_text(v)
    end
    return v
end

-- time comm pid dev len proto saddr:sport > daddr:dport. IPv6 with a port is written [addr]:port
-- (RFC 5952 section 6) so that the port cannot be read as the last group. Not IP: the ethertype
-- in place of proto and no addresses.
-- "198.18.0.1:53", "[2001:db8::1]:53" (RFC 5952 section 6: the port cannot be read as the last
-- group), or the address alone without a port
local function endpoint(l3, addr, port)
    if not port then
        return addr
    end
    if l3 == 6 then
        return "[" .. addr .. "]:" .. port
    end
    return addr .. ":" .. port
end

-- ARP as tcpdump's one-line form: "who-has 198.18.0.2 tell 198.18.0.1", "198.18.0.2 is-at
-- 02:00:00:00:00:02"; other operations: their name, then sender > target. Fills parts 7 on.
local function arp_words(p, parts)
    local op = p.arp_op
    if op == 1 then
        parts[7], parts[8], parts[9], parts[10] = "who-has", get_arp_tpa(p), "tell", get_arp_spa(p)
    elseif op == 2 then
        parts[7], parts[8], parts[9] = get_arp_spa(p), "is-at", get_arp_sha(p)
        return 9
    else
        parts[7], parts[8] = arp_op_text(op), get_arp_spa(p)
        parts[9], parts[10] = ">", get_arp_tpa(p)
    end
    return 10
end

local function default_line(p, parts)
    parts[1] = get_time(p)
    local owner = get_owner_pid(p) -- the socket owner when known (owner.bpf.h), else the task
    if owner then
        parts[2] = text_value(get_owner_comm(p))
        parts[3] = owner
    else
        parts[2] = text_value(get_comm(p))
        parts[3] = get_pid(p)
    end
    parts[4] = text_value(get_dev(p))
    parts[5] = get_len(p)
    local l3 = p.l3
    if l3 == 0 then
        parts[6] = text_value(get_ethertype(p))
        if band(p.flags, EV_ARP) ~= 0 then
            return arp_words(p, parts)
        end
        return 6
    end
    parts[6] = get_proto(p)
    local l4 = band(p.flags, EV_L4) ~= 0
    parts[7] = endpoint(l3, get_saddr(p), l4 and get_sport(p))
    parts[8] = ">"
    parts[9] = endpoint(l3, get_daddr(p), l4 and get_dport(p))
    if band(p.flags, EV_TCP) ~= 0 then -- tcpdump's "Flags [S.]"
        parts[10] = "[" .. get_tcp_flags(p) .. "]"
        return 10
    elseif band(p.flags, EV_ICMP) ~= 0 then -- as tcpdump: "echo request", "port unreachable"
        parts[10] = icmp_text(p.proto == 58 and 6 or 4, p.icmp_type, p.icmp_code)
        return 10
    end
    return 9
end

-- The line for one event, without the newline. ev: an event view or event pointer.
function Text:format(ev)
    local p = event_pointer(ev)
    local parts = self.parts
    local getters = self.getters
    if not getters then
        local n = default_line(p, parts)
        local extra = self.extra
        for i = 1, #extra do
            parts[n + i] = text_value(extra[i](p))
        end
        return concat(parts, " ", 1, n + #extra)
    end
    local n = #getters
    for i = 1, n do
        parts[i] = text_value(getters[i](p))
    end
    return concat(parts, " ", 1, n)
end

function Text:event(ev)
    if self.err then
        return nil, self.err
    end
    return write_line(self, self.file, self:format(ev), "\n")
end

Text.flush = flush
Text.lost = text_lost
Text.summary = text_summary

-- -o with saddr and daddr keeps tcpdump's "addr:port > addr:port", whatever their order: the
-- four become one column where the first of them stood (ports only when they were asked for).
local function endpoint_columns(fields)
    local at, has = nil, {}
    for i, name in ipairs(fields) do
        if name == "saddr" or name == "daddr" or name == "sport" or name == "dport" then
            at = at or i
            has[name] = true
        end
    end
    if not (has.saddr and has.daddr) then
        return fields
    end
    local with_ports = has.sport and has.dport
    local pair = function(p)
        local l3 = p.l3
        if l3 == 0 then
            return nil
        end
        local l4 = with_ports and band(p.flags, EV_L4) ~= 0
        return endpoint(l3, get_saddr(p), l4 and get_sport(p)) .. " > "
            .. endpoint(l3, get_daddr(p), l4 and get_dport(p))
    end
    local list = {}
    for i, name in ipairs(fields) do
        if i == at then
            list[#list + 1] = pair
        elseif not has[name] or (not with_ports and (name == "sport" or name == "dport")) then
            list[#list + 1] = name
        end
    end
    return list
end

-- The column names of `-o LIST` text output, one line ("comm pid len saddr:sport > daddr:dport"):
-- what the CLI prints first when stdout is a terminal. fields: array of names.
function _M.header(fields)
    local cols = {}
    for i, name in ipairs(endpoint_columns(fields)) do
        if type(name) == "function" then -- the address pair, with ports when it has them
            local has = {}
            for _, f in ipairs(fields) do has[f] = true end
            local ports = has.sport and has.dport
            name = ports and "saddr:sport > daddr:dport" or "saddr > daddr"
        end
        cols[i] = name
    end
    return concat(cols, " ")
end

-- opts: fields (array of names; default: the default layout), extra (names printed after the
-- default layout), file (io.stdout), err_file (io.stderr: lost-event notices and the summary).
function _M.text(opts)
    opts = check_opts(opts, "output.text")
    local extra = {}
    for i, name in ipairs(opts.extra or {}) do
        extra[i] = printable_getter(by_name[name], true)
    end
    local getters
    if opts.fields then
        getters = {}
        local list = endpoint_columns(opts.fields)
        for i, name in ipairs(list) do
            getters[i] = type(name) == "function" and name or printable_getter(by_name[name], true)
        end
    end
    return setmetatable({
        file = opts.file or io_stdout,
        err_file = opts.err_file or io_stderr,
        getters = getters,
        extra = extra,
        parts = {},
        err = nil,
    }, Text)
end


-- JSON lines ---------------------------------------------------------------------------------
--
-- The line is put together here rather than by cjson.encode: cjson prints numbers with at most
-- 14 significant digits (ts in ns has 15-16), and a hand-built line keeps its keys in column
-- order. cjson still escapes the strings that can hold arbitrary bytes (comm, dev); the other
-- string fields are made by fields.lua from hex digits, dots, colons and names.
-- Absent fields are omitted, with and without --fields (never null): a consumer tests for the key.

local Json = {}
Json.__index = Json

local KIND_INTEGER, KIND_SAFE_STRING, KIND_ESCAPED_STRING = 1, 2, 3

function Json:format(ev)
    local p = event_pointer(ev)
    local parts = self.parts
    local getters, kinds, keys = self.getters, self.kinds, self.keys
    local n = 1                                    -- parts[1] is '{"type":"event"'
    for i = 1, #getters do
        local v = getters[i](p)
        if v ~= nil then
            local kind = kinds[i]
            if kind == KIND_INTEGER then
                parts[n + 1] = keys[i]
                parts[n + 2] = integer_text(v)
                n = n + 2
            elseif kind == KIND_SAFE_STRING then
                parts[n + 1] = keys[i]
                parts[n + 2] = '"'
                parts[n + 3] = v
                parts[n + 4] = '"'
                n = n + 4
            else
                parts[n + 1] = keys[i]
                parts[n + 2] = encode_string(v)
                n = n + 2
            end
        end
    end
    parts[n + 1] = "}"
    return concat(parts, "", 1, n + 1)
end

function Json:event(ev)
    if self.err then
        return nil, self.err
    end
    return write_line(self, self.file, self:format(ev), "\n")
end

function Json:lost(count)
    return write_line(self, self.file, format('{"type":"lost","count":%d}', count), "\n")
end

-- stats: { events=, matched=, lost=, duration_s= }. Writes the JSON summary line to file and the
-- summary text to err_file (the contract wants both).
function Json:summary(stats)
    local ok, err = write_line(self, self.file,
        format('{"type":"summary","time":"%s","events":%d,"matched":%d,"lost":%d,'
               .. '"kfiltered":%d,"agg_overflow":%d,"duration_s":%.3f}', clock.now_rfc3339(),
               stats.events or 0, stats.matched or 0, stats.lost or 0, stats.kfiltered or 0,
               stats.agg_overflow or 0, stats.duration_s or 0),
        "\n")
    if not ok then
        return nil, err
    end
    return write_line(self, self.err_file, summary_text(stats), "\n")
end

Json.flush = flush

-- opts: fields (array of names; default: every catalogue field), file, err_file.
function _M.json(opts)
    opts = check_opts(opts, "output.json")
    local list = opts.fields or catalogue.names
    local getters, kinds, keys = {}, {}, {}
    for i, name in ipairs(list) do
        local field = by_name[name]
        getters[i] = printable_getter(field)
        keys[i] = ',"' .. name .. '":'
        if field.value_type == "integer" then
            kinds[i] = KIND_INTEGER
        elseif field.untrusted or field.dynamic then
            kinds[i] = KIND_ESCAPED_STRING
        else
            kinds[i] = KIND_SAFE_STRING
        end
    end
    -- JSON lines carry the date: `time` is RFC 3339 in UTC there
    for i, name in ipairs(list) do
        if name == "time" then
            getters[i] = function(p) return format_date(p.ts) end
        end
    end
    return setmetatable({
        file = opts.file or io_stdout,
        err_file = opts.err_file or io_stderr,
        getters = getters,
        kinds = kinds,
        keys = keys,
        parts = { '{"type":"event"' },
        err = nil,
    }, Json)
end


-- format: "text" | "json"
function _M.new(format_name, opts)
    if format_name == "text" then
        return _M.text(opts)
    elseif format_name == "json" then
        return _M.json(opts)
    end
    error("output.new: unknown format '" .. tostring(format_name) .. "' (text, json)", 2)
end


return _M
