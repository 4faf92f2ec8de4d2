-- netdevq: trace net_dev_queue (every packet a device is asked to transmit) from LuaJIT.
--
--   local netdevq = require("netdevq")
--   local t = assert(netdevq.open{ filter = 'proto == "udp"', mode = "raw" })
--   t:on_event(function(ev) print(ev.comm, ev.pid, ev.dev, ev.len) end)
--   t:run{ duration = 5 }
--   print(t:stats().matched)
--   t:close()
--
-- open() loads and attaches the BPF object; the kernel part of the filter is written into the
-- object's .rodata before load, the rest runs here on each delivered event. Events reach
-- callbacks as one reused view (fields.view): read what you need inside the callback, or keep
-- ev:totable().
local ffi = require("ffi")
local bit = require("bit")
local core = require("netdevq.core")
local abi = require("netdevq.abi")
local fields = require("netdevq.fields")
-- filter and aggregate load on first use: a plain run starts faster without them
local lazy = setmetatable({}, { __index = function(t, name)
    local m = require("netdevq." .. name)
    rawset(t, name, m)
    return m
end })

local ffi_new = ffi.new
local ffi_cast = ffi.cast
local ffi_string = ffi.string
local bor = bit.bor
local type = type
local error = error
local setmetatable = setmetatable
local tostring = tostring
local math_max = math.max
local math_min = math.min
local monotonic_ns = core.monotonic_ns

local event_ptr_t = abi.event_ptr_t
local agg_key_ptr_t = ffi.typeof("const struct netdevq_agg_key *")
local agg_value_ptr_t = ffi.typeof("const struct netdevq_agg_value *")
local NEED = abi.NEED
local F = abi.F

local DEFAULT_WAKEUP_BYTES = 256 * 1024
local PCAP_SNAPLEN = 256
local PID_MAX = 4194304 -- PID_MAX_LIMIT on 64-bit Linux

local _M = {
    _VERSION = core._VERSION,
    core = core,
    fields = fields,
}

-- netdevq.filter and netdevq.aggregate, and the aggregation objects a script feeds itself,
-- printed like bpftrace (netdevq.count() ... netdevq.lhist(min, max, step)): loaded on first use.
local AGGREGATIONS = { count = true, sum = true, avg = true, min = true, max = true, stats = true,
                       hist = true, lhist = true }
setmetatable(_M, { __index = function(_, name)
    if name == "filter" or name == "aggregate" then
        return lazy[name]
    elseif AGGREGATIONS[name] then
        return lazy.aggregate[name]
    end
end })

local Tracer = {}
Tracer.__index = Tracer

-- Which aggregations the kernel computes: every key and the value must be kernel fields.
local KERNEL_AGG_KINDS = {
    count = true, sum = true, avg = true, min = true, max = true, stats = true, hist = true,
    lhist = true,
}

function _M.kernel_aggregatable(spec)
    if not KERNEL_AGG_KINDS[spec.kind] then
        return false
    end
    local keys = spec.keys or {}
    if #keys > abi.AGG_KEYS_MAX then
        return false
    end
    for _, k in ipairs(keys) do
        if not F[k] then
            return false
        end
    end
    if spec.kind ~= "count" then
        local f = F[spec.value]
        if not f or fields.by_name[spec.value].type ~= "integer" then
            return false
        end
    end
    if spec.kind == "lhist" and (spec.max - spec.min) / spec.step > abi.AGG_SLOTS - 2 then
        return false
    end
    return true
end

local function set_agg_config(cfg, spec)
    cfg.agg_on = 1
    local keys = spec.keys or {}
    cfg.agg_nkeys = #keys
    for i, k in ipairs(keys) do
        cfg.agg_key[i - 1] = F[k]
    end
    cfg.agg_value = spec.kind == "count" and 0 or F[spec.value]
    if spec.kind == "hist" then
        cfg.agg_hist = abi.HIST.LOG2
    elseif spec.kind == "lhist" then
        cfg.agg_hist = abi.HIST.LINEAR
        cfg.lhist_min, cfg.lhist_max, cfg.lhist_step = spec.min, spec.max, spec.step
    end
end

-- true when the kernel checks all of expr (nil or empty: nothing to check)
function _M.kernel_filter_complete(expr)
    if expr == nil or expr == "" then
        return true
    end
    local filter = lazy.filter
    local tree = filter.parse(expr)
    if not tree then
        return false
    end
    return filter.pushdown(tree, ffi_new(abi.config_t)) == nil
end

local function fail(msg)
    return nil, "netdevq: " .. msg
end

-- opts:
--   mode        "raw" (default) | "btf"
--   filter      field expression (contract grammar); its kernel part is pushed into the object
--   pcap        tcpdump/pcap-filter expression, run on captured header bytes before Lua
--   where       function(ev) -> boolean, run after filter
--   fields      names the caller will read (decides what the kernel parses); default all
--   snaplen     header bytes each event carries (0..256; pcapng output and pcap filters need them)
--   aggregate   { kind=, keys=, value=, min=, max=, step= } computed in the kernel (see
--               kernel_aggregatable); events are then not streamed unless emit = true
--   emit        stream events to Lua (default: true unless aggregate is set)
--   follow_pid  trace only this process and its descendants
--   ringbuf_size, batch, wakeup_bytes, agg_max_keys, verbose, object, btf_path, attach (true)
-- Returns a tracer, or nil and a one-line message (multi-line for filter errors with a caret).
function _M.open(opts)
    opts = opts or {}
    if type(opts) ~= "table" then
        error("netdevq.open: expected an options table", 2)
    end
    local mode = opts.mode or "raw"
    if mode ~= "raw" and mode ~= "btf" then
        error("netdevq.open: mode must be 'raw' or 'btf', not '" .. tostring(mode) .. "'", 2)
    end
    if opts.where ~= nil and type(opts.where) ~= "function" then
        error("netdevq.open: 'where' must be a function", 2)
    end

    local cfg = ffi_new(abi.config_t)
    local need = 0
    local remainder_match
    if opts.filter and opts.filter ~= "" then
        local filter = lazy.filter
        local tree, err, col = filter.parse(opts.filter)
        if not tree then
            return nil, "netdevq: " .. err, col and filter.caret(opts.filter, col)
        end
        local remainder, kneed = filter.pushdown(tree, cfg)
        need = bor(need, kneed or 0)
        if remainder then
            remainder_match = filter.compile(remainder)
            need = bor(need, filter.needs and filter.needs(remainder) or NEED.ALL)
        end
    end
    if opts.fields then
        need = bor(need, fields.needs(opts.fields))
    else
        need = NEED.ALL
    end

    local snaplen = opts.snaplen or 0
    if opts.pcap then
        snaplen = math_max(snaplen, opts.snaplen or PCAP_SNAPLEN)
    end
    if opts.pcap and snaplen == 0 then
        return fail("snaplen 0 leaves the pcap filter no header bytes to match: give at least 64")
    end
    if snaplen < 0 or snaplen > abi.SNAP_MAX then
        return fail("snaplen " .. tostring(snaplen) .. " is out of range (0.." .. abi.SNAP_MAX
            .. ")")
    end
    if remainder_match or opts.where then
        -- the Lua side reads fields the caller did not name
        need = NEED.ALL
    end
    cfg.snaplen = snaplen
    cfg.need = need
    local emit = opts.emit
    if emit == nil then
        emit = opts.aggregate == nil
    end
    cfg.emit = emit and 1 or 0
    cfg.wakeup_bytes = opts.wakeup_bytes or DEFAULT_WAKEUP_BYTES
    local follow = opts.follow_pid
    if follow ~= nil and (type(follow) ~= "number" or follow % 1 ~= 0 or follow < 1
        or follow > PID_MAX) then
        error("netdevq.open: follow_pid must be a process id (1.." .. PID_MAX .. "), not "
            .. tostring(follow), 2)
    end
    cfg.follow_pid = follow or 0
    if opts.aggregate then
        if not _M.kernel_aggregatable(opts.aggregate) then
            error("netdevq.open: this aggregation cannot run in the kernel (keys and value must be "
                .. "kernel integer fields); aggregate in Lua instead", 2)
        end
        if remainder_match or opts.where or opts.pcap then
            error("netdevq.open: in-kernel aggregation needs a filter the kernel checks "
                .. "completely", 2)
        end
        set_agg_config(cfg, opts.aggregate)
        local used = { unpack(opts.aggregate.keys or {}) }
        used[#used + 1] = opts.aggregate.value
        need = bor(need, fields.needs(used))
        cfg.need = need
    end

    local t, err = core.open{
        mode = mode,
        config = ffi_string(cfg, ffi.sizeof(cfg)),
        object = opts.object,
        object_bytes = opts.object_bytes,
        btf_path = opts.btf_path,
        pcap = opts.pcap,
        pcap_snaplen = opts.pcap and snaplen or nil,
        ringbuf_size = opts.ringbuf_size,
        batch = opts.batch,
        agg_max_keys = opts.agg_max_keys,
        verbose = opts.verbose,
    }
    if not t then
        return fail(err)
    end
    local self = setmetatable({
        t = t,
        mode = mode,
        view = fields.view(),
        match = remainder_match,
        where = opts.where,
        callbacks = {},
        ncallbacks = 0,
        agg_spec = opts.aggregate,
        matched = 0,
        lua_filtered = 0,
        started_ns = monotonic_ns(),
        attached = false,
        pend = false, -- the batch being delivered (see Tracer:poll), its size, the next index
        pend_n = 0,
        pend_i = 0,
        delivering = false,
        d_start = 0, -- pend_i and lua_filtered when deliver() started (see matched_now)
        d_filtered = 0,
    }, Tracer)
    if opts.attach ~= false then
        local ok, aerr = self:attach()
        if not ok then
            self:close()
            return nil, aerr
        end
    end
    return self
end

-- The core tracer, or the "tracer is closed" error (for the caller of the method).
local function live(self)
    local t = self.t
    if not t then
        error("netdevq: tracer is closed", 3)
    end
    return t
end

function Tracer:attach()
    local ok, err = live(self):attach()
    if not ok then
        return fail(err)
    end
    self.attached = true
    self.started_ns = monotonic_ns()
    return true
end

-- Stops tracing; counters, aggregations and events already in the ring buffer stay readable
-- (poll drains them), so final figures add up. attach() may follow. Idempotent.
function Tracer:detach()
    live(self)
    if self.attached then
        self.t:detach()
        self.attached = false
    end
    return true
end

-- fn(ev) for every matching event; several callbacks run in registration order.
function Tracer:on_event(fn)
    live(self)
    if type(fn) ~= "function" then
        error("on_event: expected a function", 2)
    end
    local n = self.ncallbacks + 1
    self.callbacks[n] = fn
    self.ncallbacks = n
    return self
end

-- While deliver() runs (or a coroutine is suspended in one of its callbacks), where it is: the
-- view points at the event being delivered, so the batch index after it is read from there
-- rather than stored for every event.
local function position(self)
    if not self.delivering then
        return self.pend_i
    end
    return tonumber(ffi_cast(event_ptr_t, rawget(self.view, "_p"))
        - ffi_cast(event_ptr_t, self.pend)) + 1
end

-- matched, with what the batch being delivered has delivered so far (deliver() counts those in a
-- local; poll() adds them up when it returns, whether a callback raised or not)
local function matched_now(self)
    if self.delivering then
        local handled = position(self) - self.d_start
        return self.matched + handled - (self.lua_filtered - self.d_filtered)
    end
    return self.matched
end

-- Delivers events[pend_i .. pend_n-1] of the batch being delivered and moves pend_i on. Whatever
-- a callback does (raise, close the tracer, yield) leaves the rest of the batch in place and the
-- figures exact (see position and matched_now).
local function deliver(self)
    local evs = ffi_cast(event_ptr_t, self.pend)
    local n, limit = self.pend_n, self.limit
    local room = limit and limit - self.matched or n
    local view, match, where = self.view, self.match, self.where
    local callbacks, ncb = self.callbacks, self.ncallbacks
    local delivered = 0
    for i = self.pend_i, n - 1 do
        if delivered >= room then
            self.pend_i = i
            return -- max_events reached: the rest stays pending
        end
        view:_set(evs + i)
        if (match == nil or match(view)) and (where == nil or where(view)) then
            delivered = delivered + 1
            for c = 1, ncb do
                callbacks[c](view)
            end
            if not self.t then
                self.pend_i = i + 1
                return -- closed by a callback: nothing more is delivered
            end
        else
            self.lua_filtered = self.lua_filtered + 1
        end
    end
    self.pend_i = n
end

-- Deliver what is pending (waiting up to timeout_ms when nothing is). Returns the number of
-- events delivered to callbacks and the number of events handled (taken from the kernel, or
-- left from a batch a callback's error interrupted), or nil, err.
-- Callbacks may close the tracer (no event is delivered after that) or raise (the error goes
-- on to the caller; the rest of the batch is delivered by the next poll: stats().pending counts
-- it meanwhile). Calling poll from a callback raises: the batch is being delivered.
function Tracer:poll(timeout_ms)
    local t = live(self)
    if self.delivering then
        error("netdevq: poll() called while a batch is being delivered (from an on_event "
            .. "callback, or a coroutine suspended in one): return from the callback first", 2)
    end
    local start = self.pend_i
    if start >= self.pend_n then
        local n, batch = t:poll(timeout_ms or 100)
        if not n then
            return nil, "netdevq: " .. tostring(batch)
        end
        if n == 0 then
            return 0, 0
        end
        -- the batch memory stays valid while the view or the tracer holds it, closed or not
        if rawget(self.view, "_batch") ~= batch then
            rawset(self.view, "_batch", batch)
        end
        self.pend, self.pend_n, self.pend_i, start = batch, n, 0, 0
    end
    local matched = self.matched
    self.d_start, self.d_filtered = start, self.lua_filtered
    self.delivering = true
    local ok, err = pcall(deliver, self)
    if not ok then
        self.pend_i = position(self) -- the event whose callback raised counts as delivered
    end
    self.matched = matched + (self.pend_i - start) - (self.lua_filtered - self.d_filtered)
    self.delivering = false
    local handled = self.pend_i - start
    if not self.t then
        self.pend, self.pend_n, self.pend_i = false, 0, 0 -- closed meanwhile
    end
    if not ok then
        error(err, 0)
    end
    return self.matched - matched, handled
end

-- Kernel counters and what happened here:
--   seen (net_dev_queue hits), kfiltered (dropped by the kernel filter), emitted (to the ring
--   buffer), lost (ring buffer full), pcap_dropped, lua_filtered, matched (delivered to
--   callbacks), aggregated, agg_overflow, read_failed (raw mode: the sk_buff could not be read),
--   pending (taken from the kernel, not yet delivered: see poll); events = seen.
-- With events streamed: seen == kfiltered + emitted + lost + read_failed, and
-- received == matched + lua_filtered + pending.
function Tracer:stats()
    local c, err = live(self):counters()
    if not c then
        return nil, "netdevq: " .. err
    end
    c.events = c.seen
    if self.agg_spec and self.ncallbacks == 0 then
        c.matched = c.aggregated
    else
        c.matched = matched_now(self)
    end
    c.lua_filtered = self.lua_filtered
    c.pending = self.pend_n - position(self)
    c.duration_s = (monotonic_ns() - self.started_ns) / 1e9
    return c
end

-- Reads the in-kernel aggregation (opened with `aggregate`) into agg (a netdevq.aggregate
-- object, created when nil); reset clears the kernel map as it is read.
function Tracer:read_aggregate(agg, reset)
    local spec = self.agg_spec
    if not spec then
        error("read_aggregate: this tracer was opened without 'aggregate'", 2)
    end
    local n, keys, vals = live(self):agg_read(reset)
    if not n then
        return nil, "netdevq: " .. tostring(keys)
    end
    keys = ffi_cast(agg_key_ptr_t, keys)
    vals = ffi_cast(agg_value_ptr_t, vals)
    local records = {}
    for i = 0, n - 1 do
        records[i + 1] = { key = keys + i, value = vals + i }
    end
    return lazy.aggregate.from_kernel(spec, records, agg)
end

-- Runs until duration (s), max_events, stop() returning true, an error, or SIGINT/SIGTERM
-- (when catch_signals was called). on_tick(now_s) runs every `interval` seconds.
-- Returns the stats table, or nil, err.
function Tracer:run(opts)
    live(self)
    opts = opts or {}
    local deadline = opts.duration and (monotonic_ns() + opts.duration * 1e9)
    local max_events = opts.max_events
    if max_events then
        self.limit = max_events
    end
    local interval_ns = opts.interval and opts.interval * 1e9
    local next_tick = interval_ns and monotonic_ns() + interval_ns
    local poll_ms = opts.poll_ms or 100
    local stop = opts.stop
    while true do
        if core.interrupted() then
            break
        end
        local now = monotonic_ns()
        if deadline and now >= deadline then
            break
        end
        local wait = poll_ms
        if deadline then
            wait = math_min(wait, math_max(1, (deadline - now) / 1e6))
        end
        if next_tick then
            wait = math_min(wait, math_max(1, (next_tick - now) / 1e6))
        end
        local n, err = self:poll(wait)
        if not n then
            return nil, err
        end
        if max_events and self.matched >= max_events then
            break
        end
        if not self.t or (stop and stop()) then
            break
        end
        if next_tick and monotonic_ns() >= next_tick then
            next_tick = next_tick + interval_ns
            if opts.on_tick then
                opts.on_tick(self)
            end
        end
        if not self.t then
            break
        end
    end
    -- what the kernel handed over before the stop still counts (a Ctrl-C cuts a poll short)
    while self.t and not self:limit_reached() do
        local delivered, taken = self:poll(0)
        if not delivered then
            return nil, taken
        end
        if taken == 0 then
            break
        end
    end
    if not self.t then
        return self.final_stats -- closed by a callback: the figures at close
    end
    return self:stats()
end

-- true once run{max_events} (or t.limit) has been delivered
function Tracer:limit_reached()
    return self.limit ~= nil and self.matched >= self.limit
end

-- Detaches and frees the kernel objects at once, also from inside a callback (the batch being
-- delivered stays valid memory; no event is delivered after this). Idempotent; every other
-- method raises "tracer is closed" afterwards. run() then returns the figures of this moment.
function Tracer:close()
    local t = self.t
    if t then
        self.final_stats = self:stats()
        self.t = false
        self.attached = false
        if not self.delivering then -- else poll() drops the batch when deliver() returns
            self.pend, self.pend_n, self.pend_i = false, 0, 0
        end
        t:close()
    end
end
-- (no __gc here: LuaJIT tables have none; the core userdata closes itself when collected)

function Tracer:__tostring()
    return "netdevq tracer (" .. self.mode .. (self.t and "" or ", closed") .. ")"
end

-- Let SIGINT/SIGTERM end run() instead of killing the process.
_M.catch_signals = core.catch_signals
_M.interrupted = core.interrupted

return _M
