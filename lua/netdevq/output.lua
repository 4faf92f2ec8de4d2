-- netdevq.output: per-event writers (text lines, JSON lines) and the end-of-run summary.
--
-- A writer is made once with its column list: the getters are looked up then, and a function
-- that appends one line to a string.buffer is generated from them (straight code, no loop over
-- the columns, for LuaJIT to compile into the delivery loop). Writing an event makes no string,
-- no closure and no table: its text goes into the writer's buffer (times, names and addresses
-- come from memos), and the buffer goes to the file in one write:
--   - by default after each event (what a script wants: nothing waits in Lua);
--   - with opts.buffered (the CLI), when flush() is called (the CLI flushes once per poll batch,
--     at a stop and at the end) or when FLUSH_AT bytes are waiting.
-- Write failures (EPIPE when the reader went away, ENOSPC, ...) come back as nil, err and stick:
-- every later call returns the same error, so the run loop can stop at its next check.
-- SIGPIPE must be ignored by the process for EPIPE to arrive here instead of killing it.
local bit = require("bit")
local ffi = require("ffi")
local buffer = require("string.buffer")
local abi = require("netdevq.abi")
local catalogue = require("netdevq.catalogue")
local clock = require("netdevq.clock")
local event = require("netdevq.event")
local names = require("netdevq.names")

local band = bit.band
local format = string.format
local concat = table.concat
local buffer_new = buffer.new
local io_type = io.type
local load = loadstring or load
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
local put_time = clock.put_time
local by_name = catalogue.by_name
local unknown_message = catalogue.unknown_message
local event_pointer = event.pointer

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

-- A buffered writer writes out once this much waits, whether or not flush() comes.
local FLUSH_AT = 65536


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

local escape_name = names.printable
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

-- a number as an integer: %.14g (what buf:put and table.concat write) is exact below EXACT_BELOW
-- Below 65536 (ports, lengths, most pids) the text comes from a memo filled as values show up:
-- a table lookup, where buf:put(number) formats the double each time.
local SMALL_TEXT = {}
local function put_integer(buf, v)
    if v < 65536 and v >= 0 then
        local text = SMALL_TEXT[v]
        if not text then
            text = tostring(v)
            SMALL_TEXT[v] = text
        end
        buf:put(text)
    elseif v >= EXACT_BELOW or v <= -EXACT_BELOW then
        buf:put(format("%d", v))
    else
        buf:put(v)
    end
end

-- a text column: "-" for absent or empty
local function put_value(buf, v)
    if v == nil or v == "" then
        buf:put("-")
    elseif type(v) == "number" then
        put_integer(buf, v)
    else
        buf:put(v)
    end
end


-- Line functions ------------------------------------------------------------------------------

-- A function(buf, p) that appends the columns to buf, separated by sep: first(buf, p) (may be
-- nil), then each column: cols[i].put(buf, p), or the code cols[i].code (a format whose %s is
-- the column's value, cols[i].get(p)). The columns are written out as straight code, so that a
-- line has no loop for LuaJIT to trace around whatever the number of columns, and no lookup of
-- how to write a column (the getters are in an array: a function has at most 60 upvalues).
-- json_string: for JSON code (netdevq.jsonlines).
--
-- A JSON line of every field is longer than one LuaJIT trace may be (it would then run in the
-- interpreter, 2-3x slower): every TRACE_COLUMNS columns it calls a C function (the JIT ends a
-- trace before a C function and starts the next after it), so that it runs as several traces.
local TRACE_COLUMNS = 12
local trace_break -- any cheap C function will do (loaded on first use: --help runs without it)
local function compile_line(first, cols, sep, json_string)
    if json_string then
        trace_break = trace_break or require("netdevq.core").interrupted
    end
    local src = { "local first, G, P, sep, put_value, put_integer, json_string, trace_break = ...\n"
                  .. "return function(buf, p)\n" }
    local sep_next = false
    if first then
        src[#src + 1] = "first(buf, p)\n"
        sep_next = true
    end
    local G, P = {}, {}
    for i, col in ipairs(cols) do
        if sep_next and sep ~= "" then
            src[#src + 1] = "buf:put(sep)\n"
        end
        sep_next = true
        if col.put then
            P[i] = col.put
            src[#src + 1] = format("P[%d](buf, p)\n", i)
        else
            G[i] = col.get
            src[#src + 1] = "do " .. format(col.code, format("G[%d](p)", i)) .. " end\n"
        end
        if json_string and i % TRACE_COLUMNS == 0 then
            src[#src + 1] = "trace_break()\n"
        end
    end
    src[#src + 1] = "end\n"
    local chunk = assert(load(concat(src), "=netdevq.output line"))
    return chunk(first, G, P, sep, put_value, put_integer, json_string, trace_break)
end

-- An io file is written with fwrite on its FILE * (the FFI converts an io file to it): the
-- buffer's bytes go to the file's stdio buffer as they are, no string is made, and the JIT
-- compiles the call into the delivery loop (file:write takes no buffer in compiled code). Any
-- other file object gets file:write(string).
local voidp_t = ffi.typeof("void *")
pcall(ffi.cdef, [[
size_t ndq_out_fwrite(const void *p, size_t size, size_t n, void *fp) __asm__("fwrite");
char *ndq_out_strerror(int errnum) __asm__("strerror");
]])
local C = ffi.C


-- a write's result: an error sticks to the writer, so that the run loop stops at its next check
local function outcome(self, ok, err)
    if not ok then
        self.err = tostring(err)
        return nil, self.err
    end
    return true
end

-- What waits in the buffer goes to the file.
local function write_out(self)
    local buf = self.buf
    local len = #buf
    if len == 0 then
        return true
    end
    -- read at each write: a file closed meanwhile gives NULL (and file:write's own error)
    local fp = self.stdio and ffi.cast(voidp_t, self.file)
    local ok, err
    if fp ~= nil and fp then
        local p = buf:ref()
        ok = tonumber(C.ndq_out_fwrite(p, 1, len, fp)) == len
        err = not ok and ffi.string(C.ndq_out_strerror(ffi.errno())) or nil
    else
        ok, err = self.file:write(buf:tostring())
    end
    buf:reset()
    return outcome(self, ok, err)
end

-- the line goes to the file now (write-through), or once FLUSH_AT waits (buffered)
local function queued(self)
    if self.buffered and #self.buf < FLUSH_AT then
        return true
    end
    return write_out(self)
end


-- Shared by both writers ----------------------------------------------------------------------


-- a line to err_file (written at once: notices and the summary text)
local function write_err_line(self, text)
    if self.err then
        return nil, self.err
    end
    return outcome(self, self.err_file:write(text, "\n"))
end

-- a line to file, in order with the event lines before it
local function write_line(self, text)
    if self.err then
        return nil, self.err
    end
    self.buf:put(text, "\n")
    return queued(self)
end

-- an event's line, made by self.line
local function write_event(self, ev)
    if self.err then
        return nil, self.err
    end
    local buf = self.buf
    self.line(buf, event_pointer(ev))
    buf:put("\n")
    return queued(self)
end

-- the line of one event, as a string without the newline
local function format_event(self, ev)
    local buf = self.scratch
    buf:reset()
    self.line(buf, event_pointer(ev))
    return buf:tostring()
end

-- what waits in the buffer is written, then the file is flushed
local function flush(self)
    if self.err then
        return nil, self.err
    end
    local ok, err = write_out(self)
    if not ok then
        return nil, err
    end
    return outcome(self, self.file:flush())
end

local function new_writer(mt, opts, line)
    local file = opts.file or io_stdout
    return setmetatable({
        file = file,
        err_file = opts.err_file or io_stderr,
        stdio = io_type(file) == "file",
        buffered = opts.buffered == true,
        line = line,
        buf = buffer_new(),
        scratch = buffer_new(),
        err = nil,
    }, mt)
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
    local held = stats.held or 0
    if held > 0 then -- latency fields: matched, but no fate seen by the end
        text = text .. format(", %d held (no fate seen: still queued, or not followed)", held)
    end
    return text
end
_M.summary_text = summary_text


-- Text ------------------------------------------------------------------------------------------

local Text = {}
Text.__index = Text

-- "198.18.0.1:53", "[2001:db8::1]:53" (RFC 5952 section 6: the port cannot be read as the last
-- group), or the address alone without a port
local function put_endpoint(buf, l3, addr, port)
    if not port then
        buf:put(addr)
        return
    elseif l3 == 6 then
        buf:put("[", addr, "]:")
    else
        buf:put(addr, ":")
    end
    put_integer(buf, port)
end

-- ARP as tcpdump's one-line form: "who-has 198.18.0.2 tell 198.18.0.1", "198.18.0.2 is-at
-- 02:00:00:00:00:02"; other operations: their name, then sender > target.
local function put_arp(buf, p)
    local op = p.arp_op
    if op == 1 then
        buf:put(" who-has ", get_arp_tpa(p), " tell ", get_arp_spa(p))
    elseif op == 2 then
        buf:put(" ", get_arp_spa(p), " is-at ", get_arp_sha(p))
    else
        buf:put(" ", arp_op_text(op), " ", get_arp_spa(p), " > ", get_arp_tpa(p))
    end
end

-- time comm pid dev len proto saddr:sport > daddr:dport. IPv6 with a port is written [addr]:port
-- so that the port cannot be read as the last group. Not IP: the ethertype in place of proto and
-- no addresses (ARP: tcpdump's words, see put_arp). The comm and pid columns are the socket
-- owner's when the kernel knows it.
local function put_default(buf, p)
    put_time(buf, p.ts)
    buf:put(" ")
    local owner = get_owner_pid(p) -- the socket owner when known (owner.bpf.h), else the task
    if owner then
        put_value(buf, get_owner_comm(p))
        buf:put(" ")
        put_integer(buf, owner)
        buf:put(" ")
    else
        put_value(buf, get_comm(p))
        buf:put(" ")
        put_integer(buf, get_pid(p))
        buf:put(" ")
    end
    put_value(buf, get_dev(p))
    buf:put(" ")
    put_integer(buf, get_len(p))
    buf:put(" ")
    local l3 = p.l3
    if l3 == 0 then
        put_value(buf, get_ethertype(p))
        if band(p.flags, EV_ARP) ~= 0 then
            put_arp(buf, p)
        end
        return
    end
    buf:put(get_proto(p), " ")
    local l4 = band(p.flags, EV_L4) ~= 0
    put_endpoint(buf, l3, get_saddr(p), l4 and get_sport(p))
    buf:put(" > ")
    put_endpoint(buf, l3, get_daddr(p), l4 and get_dport(p))
    if band(p.flags, EV_TCP) ~= 0 then -- tcpdump's "Flags [S.]"
        buf:put(" [", get_tcp_flags(p), "]")
    elseif band(p.flags, EV_ICMP) ~= 0 then -- as tcpdump: "echo request", "port unreachable"
        buf:put(" ", icmp_text(p.proto == 58 and 6 or 4, p.icmp_type, p.icmp_code))
    end
end

local TEXT_CODE = "put_value(buf, %s)"

-- a text column for a field name (time is put straight into the buffer), or a column already
-- made (the endpoint pair)
local function text_column(name)
    if type(name) == "table" then
        return name
    elseif name == "time" then
        return { put = function(buf, p) put_time(buf, p.ts) end }
    end
    return { get = printable_getter(by_name[name], true), code = TEXT_CODE }
end

Text.format = format_event
Text.event = write_event
Text.flush = flush

function Text:lost(count)
    return write_err_line(self, format("netdevq: %d events lost (ring buffer full; a larger "
                                       .. "--ringbuf-size or a kernel-side filter helps)", count))
end

function Text:summary(stats)
    return write_err_line(self, summary_text(stats))
end

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
    local pair = { put = function(buf, p)
        local l3 = p.l3
        if l3 == 0 then
            buf:put("-")
            return
        end
        local l4 = with_ports and band(p.flags, EV_L4) ~= 0
        put_endpoint(buf, l3, get_saddr(p), l4 and get_sport(p))
        buf:put(" > ")
        put_endpoint(buf, l3, get_daddr(p), l4 and get_dport(p))
    end }
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
        if type(name) ~= "string" then -- the address pair, with ports when it has them
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
-- default layout), file (io.stdout), err_file (io.stderr: lost-event notices and the summary),
-- buffered (lines wait in the writer until flush(); see the top of this file).
function _M.text(opts)
    opts = check_opts(opts, "output.text")
    local cols, first = {}, put_default
    if opts.fields then
        first = nil
        for i, name in ipairs(endpoint_columns(opts.fields)) do
            cols[i] = text_column(name)
        end
    else
        for i, name in ipairs(opts.extra or {}) do
            cols[i] = text_column(name)
        end
    end
    return new_writer(Text, opts, compile_line(first, cols, " "))
end


-- JSON lines: netdevq.jsonlines, from these parts ------------------------------------------

local writer_parts = {
    check_opts = check_opts, printable_getter = printable_getter, compile_line = compile_line,
    new_writer = new_writer, queued = queued, write_line = write_line,
    write_err_line = write_err_line, flush = flush, summary_text = summary_text,
}

-- opts: fields (array of names; default: every catalogue field), file, err_file, buffered.
function _M.json(opts)
    return require("netdevq.jsonlines").new(opts, writer_parts)
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
