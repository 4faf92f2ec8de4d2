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
-- callbacks as one reused view (netdevq.event): read what you need inside the callback, or keep
-- ev:totable(). What the kernel reads and where aggregations run is decided by netdevq.plan.
local ffi = require("ffi")
local core = require("netdevq.core")
local abi = require("netdevq.abi")
local catalogue = require("netdevq.catalogue")
local event = require("netdevq.event")
local plan = require("netdevq.plan")
-- filter and aggregate load on first use: a plain run starts faster without them
local lazy = setmetatable({}, { __index = function(t, name)
    local m = require("netdevq." .. name)
    rawset(t, name, m)
    return m
end })

local ffi_cast = ffi.cast
local type = type
local error = error
local setmetatable = setmetatable
local tostring = tostring
local pairs = pairs
local ipairs = ipairs
local math_max = math.max
local math_min = math.min
-- the run loop's clock and stop flag, read through the FFI (compiled; C functions are not)
local monotonic_ns = require("netdevq.clock").monotonic_ns
local interrupted_flag = ffi_cast("volatile int *", core.interrupted_flag)
local band = require("bit").band
local NEED_LATENCY = abi.NEED.LATENCY

local event_ptr_t = abi.event_ptr_t

local _M = {
    _VERSION = core._VERSION,
    core = core,
    fields = catalogue,
}

-- netdevq.filter and netdevq.aggregate, and the aggregation objects a script feeds itself,
-- printed like bpftrace (netdevq.count() ... netdevq.lhist(min, max, step)): loaded on first use.
local AGGREGATIONS = {}
for _, kind in ipairs({ "count", "sum", "avg", "min", "max", "stats", "hist", "lhist" }) do
    AGGREGATIONS[kind] = true
end
setmetatable(_M, { __index = function(_, name)
    if name == "filter" or name == "aggregate" or name == "prometheus" then
        return lazy[name]
    elseif AGGREGATIONS[name] then
        return lazy.aggregate[name]
    end
end })

local Tracer = {}
Tracer.__index = Tracer

local function fail(msg)
    return nil, "netdevq: " .. msg
end

-- The keys open() takes (anything else is a mistake worth telling).
local OPEN_KEYS = {
    mode = true, filter = true, pcap = true, where = true, fields = true, snaplen = true,
    aggregate = true, aggregations = true, emit = true, events = true, follow_pid = true,
    pid = true, comm = true, pcap_kernel = true,
    ringbuf_size = true, batch = true, wakeup_bytes = true, max_keys = true, agg_max_keys = true,
    read = true, verbose = true, object = true, object_bytes = true, btf_path = true, attach = true,
}

-- true when the kernel can compute this aggregation spec (keys and value read by the kernel)
function _M.kernel_aggregatable(spec)
    return (require("netdevq.aggregate.kernel").supports(spec))
end

-- true when the kernel checks all of expr (nil or empty: nothing to check)
function _M.kernel_filter_complete(expr)
    return lazy.filter.kernel_complete(expr, ffi.new(abi.config_t))
end

local function new_lua_aggregations(self, specs, max_keys)
    if #specs == 0 then
        return -- (a run without aggregations does not load their modules)
    end
    local aggregate = lazy.aggregate
    for i, spec in ipairs(specs) do
        local opts = { name = spec.name, keys = spec.keys, value = spec.value,
                       max_keys = max_keys }
        local agg = spec.kind == "lhist" and aggregate.lhist(spec.min, spec.max, spec.step, opts)
                    or aggregate[spec.kind](opts)
        self.aggs[i] = agg
        self:on_event(aggregate.feeder(agg, spec.keys or {}, spec.value))
    end
end

-- opts: see netdevq.plan (mode, filter, pcap, where, fields, aggregations, aggregate, events,
-- snaplen, max_keys, follow_pid, pid, comm, ringbuf_size, batch, wakeup_bytes), and verbose,
-- object, object_bytes, btf_path, attach (default true). Returns a tracer, or nil, a one-line
-- message and { kind = "usage" | "runtime", caret = text under a filter error }.
function _M.open(opts)
    opts = opts or {}
    if type(opts) ~= "table" then
        error("netdevq.open: expected an options table", 2)
    end
    for k in pairs(opts) do
        if not OPEN_KEYS[k] then
            return plan.usage("open: unknown option '" .. tostring(k) .. "'")
        end
    end
    local mode = opts.mode or "raw"
    if mode ~= "raw" and mode ~= "btf" then
        return plan.usage("mode must be 'raw' or 'btf', not '" .. tostring(mode) .. "'")
    end
    if opts.where ~= nil and type(opts.where) ~= "function" then
        return plan.usage("open: 'where' must be a function")
    end
    local popts = {}
    for k, v in pairs(opts) do
        popts[k] = v
    end
    popts.max_keys = opts.max_keys or opts.agg_max_keys
    popts.agg_max_keys = nil
    if popts.events == nil and opts.emit ~= nil then
        popts.events = opts.emit
    end
    popts.emit = nil
    local p, err, info = plan.make(popts)
    if not p then
        return nil, err, info
    end

    local t, cerr, ckind = core.open(p.core)
    if not t and ckind == "pcap_kernel" then
        -- the kernel refused the translated pcap program: say so once, decide it in user space
        io.stderr:write("netdevq: ", cerr, ": the expression runs in user space\n")
        popts.pcap_kernel = false
        p, err, info = plan.make(popts)
        if not p then
            return nil, err, info
        end
        t, cerr, ckind = core.open(p.core)
    end
    if not t then
        return nil, "netdevq: " .. cerr, { kind = ckind or "runtime" }
    end
    if p.cfg.kstack ~= 0 then
        require("netdevq.kstack").use(t) -- kstack ids now refer to this tracer's stack map
    end
    local self = setmetatable({
        t = t,
        mode = mode,
        read = t:read_path(), -- "probe" | "direct" | "btf": the read path in use
        plan = p,
        view = event.view(),
        match = p.match,
        where = opts.where,
        callbacks = {},
        ncallbacks = 0,
        agg_spec = p.kernel_agg,
        aggs = {},
        matched = 0,
        lua_filtered = 0,
        started_ns = monotonic_ns(),
        attached = false,
        pend = false, -- the batch being delivered (see Tracer:poll), its size, the next index
        pend_evs = false, -- its events (a pointer made once: the C module reuses one batch)
        pend_n = 0,
        pend_i = 0,
        delivering = false,
        d_start = 0, -- pend_i and lua_filtered when deliver() started (see matched_now)
        d_filtered = 0,
    }, Tracer)
    if p.kernel_agg and opts.aggregations then
        self.aggs[1] = lazy.aggregate.new(p.kernel_agg)
    end
    new_lua_aggregations(self, p.lua_aggs, p.max_keys)
    if opts.attach ~= false then
        local ok, aerr = self:attach()
        if not ok then
            self:close()
            return nil, aerr, { kind = "runtime" }
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

-- The aggregations of open{aggregations=}, up to date, in the order given; reset = true starts
-- them over (the kernel map is cleared as it is read). Kernel and Lua ones print alike.
function Tracer:aggregations(reset)
    local aggs = self.aggs
    if self.agg_spec and aggs[1] then
        aggs[1]:clear()
        local ok, err = self:read_aggregate(aggs[1], reset)
        if not ok then
            return nil, err
        end
    end
    return aggs
end

-- Events that found no room in an aggregation (kernel map full, or a Lua one at max_keys).
function Tracer:agg_overflow()
    local n = 0
    for _, agg in ipairs(self.aggs) do
        n = n + (agg.overflow or 0)
    end
    return n
end

function Tracer:attach()
    local ok, err = live(self):attach()
    if not ok then
        return fail(err)
    end
    self.attached = true
    self.started_ns = monotonic_ns()
    if _M.announce then -- scripts run by the CLI get its ready line too
        io.stderr:write("netdevq: tracing net_dev_queue (", self.mode, ") ... Ctrl-C to stop\n")
        io.stderr:flush()
    end
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
-- view's index is the event being delivered, so the batch index after it is read from there
-- rather than stored in the tracer for every event.
local function position(self)
    if not self.delivering then
        return self.pend_i
    end
    return rawget(self.view, "_i") + 1
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
    local evs = self.pend_evs
    local n, limit = self.pend_n, self.limit
    local room = limit and limit - self.matched or n
    local view, match, where = self.view, self.match, self.where
    local callbacks, ncb = self.callbacks, self.ncallbacks
    local delivered = 0
    view._b = evs -- the view is (base, index): per event only the index changes (event.lua)
    for i = self.pend_i, n - 1 do
        if delivered >= room then
            self.pend_i = i
            return -- max_events reached: the rest stays pending
        end
        view._i = i
        local p = evs + i
        if (match == nil or match(p)) and (where == nil or where(view)) then
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
        -- the batch memory stays valid while the view or the tracer holds it, closed or not;
        -- the C module hands the same batch every time: its pointer is made once
        if rawget(self.view, "_batch") ~= batch then
            rawset(self.view, "_batch", batch)
            self.pend_evs = ffi_cast(event_ptr_t, batch)
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
--   pending (taken from the kernel, not yet delivered: see poll), held (latency fields only:
--   matched events still waiting for their fate in the kernel, or that never came out); events =
--   seen.
-- With events streamed: seen == kfiltered + emitted + lost + read_failed + held, and
-- received == matched + lua_filtered + pending.
function Tracer:stats()
    local c, err = live(self):counters()
    if not c then
        return nil, "netdevq: " .. err
    end
    c.events = c.seen
    if band(self.plan.cfg.need, NEED_LATENCY) == 0 then
        c.held = nil -- no fate programs: nothing is ever held
    end
    if self.agg_spec and self.ncallbacks == 0 then
        c.matched = c.aggregated
    elseif self.plan.cfg.emit == 0 then -- nothing crosses: the kernel's figures say it all
        c.matched = c.seen - c.kfiltered - (c.read_failed or 0) - (c.held or 0)
    else
        c.matched = matched_now(self)
    end
    c.lua_filtered = self.lua_filtered
    c.pending = self.pend_n - position(self)
    c.agg_overflow = (c.agg_overflow or 0) + self:agg_overflow()
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
    return require("netdevq.aggregate.kernel").read(spec, n, keys, vals, agg)
end

-- Runs until duration (s), max_events, stop() returning true, an error, or SIGINT/SIGTERM
-- (when catch_signals was called). on_tick(t) runs every `interval` seconds; an exporter
-- attached to the tracer (netdevq.prometheus{ tracer = t }) is refreshed every exporter.period
-- seconds and at the end. Returns the stats table, or nil, err.
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
    local exporter = self.exporter
    local export_ns = exporter and exporter.period * 1e9
    local next_export = export_ns and monotonic_ns() + export_ns
    while true do
        if interrupted_flag[0] ~= 0 then
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
        if next_export then
            wait = math_min(wait, math_max(1, (next_export - now) / 1e6))
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
        if next_export and monotonic_ns() >= next_export then
            next_export = monotonic_ns() + export_ns
            exporter:refresh()
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
    if exporter then
        exporter:refresh()
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
