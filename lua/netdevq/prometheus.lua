-- netdevq.prometheus: serve aggregations and a tracer's counters as Prometheus text exposition
-- (format 0.0.4) on /metrics, so that any netdevq script is an exporter.
--
--   local netdevq = require("netdevq")
--   local t = assert(netdevq.open{ filter = 'proto == "udp"' })
--   local bytes = netdevq.sum{ name = "@bytes", keys = { "dev" }, value = "len" }
--   t:on_event(require("netdevq.aggregate").feeder(bytes, { "dev" }, "len"))
--   local exp = assert(netdevq.prometheus{ listen = "127.0.0.1:9464", tracer = t,
--                                          aggregations = { bytes } })
--   t:run{}          -- refreshes /metrics every exp.period seconds (default 1)
--
-- The HTTP side is netdevq.http (libmicrohttpd in its own thread, csrc/metrics_http.c): refresh()
-- renders the text here and publishes it; scrapes are answered from the last published text, so
-- a scrape never waits for the event loop and the loop never waits for a scrape.
--
-- Names (docs/prometheus.md has the whole rule): "netdevq_" .. the aggregation's name without
-- its "@" (characters outside [A-Za-z0-9_] become "_"), then "_bytes" when the aggregated field
-- counts bytes, then "_total" for count and sum (counters). hist/lhist are histograms (_bucket
-- with le = the bucket's highest integer, _sum, _count), stats a summary (_sum, _count), avg,
-- min and max gauges. Keys are labels named after the key fields.
--
-- Cumulative values: an aggregation that is reset (interval printing) is folded into the
-- exporter's own totals first: call exp:fold(agg) instead of agg:clear(). Counters, histogram
-- buckets and summaries never go down; min/max are over the whole run; avg is the whole run's.
local http = require("netdevq.http")

local concat = table.concat
local sort = table.sort
local format = string.format
local floor = math.floor
local huge = math.huge
local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local error = error
local setmetatable = setmetatable

local _M = { _VERSION = "0.1.0" }

local PREFIX = "netdevq_"
local DEFAULT_PORT = 9464 -- Prometheus's registry of default exporter ports has no netdevq: "any"
local DEFAULT_HOST = "127.0.0.1"
local DEFAULT_PERIOD = 1
-- Fields whose values are byte counts: their metrics get the unit suffix "_bytes".
local BYTE_FIELDS = { len = true, data_len = true, mac_len = true, hdr_len = true,
                      gso_size = true }
local NEG = -1 -- the Lua-only log2 slot of negative values (netdevq.aggregate)
local AGG_SLOTS = require("netdevq.abi").AGG_SLOTS -- slots of a histogram entry

-- The tracer's counters (Tracer:stats() names) as metrics: name, stats field, help.
local TRACER_COUNTERS = {
    { "netdevq_events_total", "events", "net_dev_queue hits seen by the probe" },
    { "netdevq_kernel_filtered_total", "kfiltered", "events dropped by the in-kernel filter" },
    { "netdevq_emitted_total", "emitted", "events written to the ring buffer" },
    { "netdevq_lost_total", "lost", "events lost because the ring buffer was full" },
    { "netdevq_pcap_dropped_total", "pcap_dropped", "events the pcap filter rejected" },
    { "netdevq_lua_filtered_total", "lua_filtered", "events the Lua filter part rejected" },
    { "netdevq_matched_total", "matched", "events that matched every filter" },
    { "netdevq_aggregated_total", "aggregated", "events the kernel aggregated" },
    { "netdevq_aggregation_overflow_total", "agg_overflow",
      "events not aggregated because the kernel map was full" },
}
local RESERVED = { netdevq_build_info = true, netdevq_bpf_run_seconds_total = true,
                   netdevq_bpf_run_count_total = true }
for _, c in ipairs(TRACER_COUNTERS) do RESERVED[c[1]] = true end
_M.TRACER_COUNTERS = TRACER_COUNTERS


-- Text of the exposition format.

--- A number as the exposition format writes it: integers exactly, others with 15 digits (17
-- when 15 do not give the same double back),
-- +Inf/-Inf/NaN by name.
local function num(v)
    if v ~= v then return "NaN" end
    if v == huge then return "+Inf" end
    if v == -huge then return "-Inf" end
    if v == floor(v) and v > -2 ^ 63 and v < 2 ^ 63 then return format("%.0f", v) end
    local s = format("%.15g", v)
    if tonumber(s) == v then return s end
    return format("%.17g", v)
end
_M.number = num

local LABEL_ESCAPES = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }
--- A label value escaped: backslash, double quote and line feed.
function _M.escape_label(s)
    return (s:gsub('[\\"\n]', LABEL_ESCAPES))
end
local escape_label = _M.escape_label

local function escape_help(s)
    return (s:gsub("[\\\n]", LABEL_ESCAPES))
end

--- s as a metric or label name: [A-Za-z0-9_] kept, anything else "_", no leading digit.
function _M.sanitize(s)
    s = s:gsub("[^%w_]", "_")
    if s:match("^%d") or s == "" then s = "_" .. s end
    return s
end
local sanitize = _M.sanitize

local function part_text(p)
    if type(p) == "number" then return num(p) end
    return tostring(p)
end

--- The metric family name of an aggregation (see the header): opts.name overrides the part
-- after "netdevq_"; opts.value (default agg.field) is the aggregated field, opts.unit its unit.
function _M.metric_name(agg, opts)
    opts = opts or {}
    local base = sanitize(opts.name or (agg.name:gsub("^@", "")))
    if base:sub(1, #PREFIX) ~= PREFIX then base = PREFIX .. base end
    local counter = agg.kind == "count" or agg.kind == "sum"
    if counter and base:sub(-6) == "_total" then base = base:sub(1, -7) end
    local unit = opts.unit
    if unit == nil and BYTE_FIELDS[opts.value or agg.field or false] then unit = "bytes" end
    if unit and unit ~= "" and base:sub(-#unit - 1) ~= "_" .. unit then
        base = base .. "_" .. unit
    end
    if counter then base = base .. "_total" end
    return base
end

-- Label names: the key fields (sanitized), "key<i>" past them; a histogram's key called "le"
-- becomes "key_le"; duplicates get their position appended.
local function label_names(agg)
    local names, seen = {}, {}
    for i = 1, #agg.keys do
        local n = sanitize(agg.keys[i]):gsub("^__+", "")
        if n == "" then n = "key" .. i end
        if n == "le" and (agg.kind == "hist" or agg.kind == "lhist") then n = "key_le" end
        if seen[n] then n = n .. "_" .. i end
        seen[n] = true
        names[i] = n
    end
    return names
end

-- 'dev="lo",proto="udp"' (no braces) for a key's parts
local function label_pairs(names, parts)
    local t = {}
    for i = 1, #parts do
        t[i] = (names[i] or ("key" .. i)) .. '="' .. escape_label(part_text(parts[i])) .. '"'
    end
    return concat(t, ",")
end


-- Cumulative records: { key = {parts}, count, sum, value (min/max), slots = {[i] = n} }.

local function record_id(parts)
    local t = {}
    for i = 1, #parts do t[i] = part_text(parts[i]) end
    return concat(t, "\0")
end

-- A histogram's slot indices: hist -1 (negative values) .. 67, lhist 0 .. n + 1. Loops over
-- slots are numeric: LuaJIT 2.1.0-beta3 (Debian 12) miscompiled a pairs() loop over them here.
local function slot_range(agg)
    if agg.kind == "hist" then return NEG, AGG_SLOTS - 1 end
    return 0, agg.nbuckets + 1
end

local function merge_entry(recs, agg, e)
    local kind = agg.kind
    local id = record_id(e.key)
    local r = recs[id]
    if r == nil then
        local key = {}
        for i = 1, #e.key do key[i] = e.key[i] end
        r = { key = key, id = id, count = 0, sum = 0 }
        if e.slots then
            local lo, hi = slot_range(agg)
            local slots = {}
            for i = lo, hi do slots[i] = 0 end
            r.slots = slots
        end
        recs[id] = r
    end
    r.count = r.count + e.count
    r.sum = r.sum + (e.sum or 0)
    if kind == "min" then
        if e.value ~= nil and (r.value == nil or e.value < r.value) then r.value = e.value end
    elseif kind == "max" then
        if e.value ~= nil and (r.value == nil or e.value > r.value) then r.value = e.value end
    end
    if e.slots then
        local slots, from = r.slots, e.slots
        local lo, hi = slot_range(agg)
        for i = lo, hi do slots[i] = slots[i] + (from[i] or 0) end
    end
end

-- The metric's records now: its folded totals plus what the aggregation holds, sorted by key.
local function current_records(m)
    local recs = {}
    local agg = m.agg
    for _, r in pairs(m.base) do merge_entry(recs, agg, r) end
    local list = m.agg:entries()
    for i = 1, #list do merge_entry(recs, agg, list[i]) end
    local out = {}
    for _, r in pairs(recs) do out[#out + 1] = r end
    sort(out, function(a, b) return a.id < b.id end)
    return out
end


-- Histogram buckets. netdevq's buckets are half-open, [lo, hi); over the integers netdevq
-- aggregates, "<= hi - 1" is the same bucket, so le is hi - 1 (exact for integer values).

local function bucket_le(agg, slot)
    if agg.kind == "hist" then
        if slot == NEG then return -1 end
        return 2 ^ slot - 1 -- slot 0 holds [0, 1), slot i >= 1 [2^(i-1), 2^i)
    end
    -- lhist: slot 0 below min, 1..n [min + (i-1)*step, min + i*step), n + 1 at or above max
    if slot > agg.nbuckets then return huge end
    return agg.lmin + slot * agg.step - 1
end
_M.bucket_le = bucket_le

-- Bucket lines from the lowest slot (le = 0, or -1 / min - 1) up to the highest non-empty one,
-- cumulative, then +Inf. lp: the record's label pairs.
local function histogram_lines(buf, n, name, agg, lp, r)
    local slots = r.slots
    local lo, hi = slot_range(agg)
    local first = 0
    if slots[NEG] and slots[NEG] > 0 then first = NEG end
    local last = first
    for i = hi, lo, -1 do
        if slots[i] > 0 then
            last = i
            break
        end
    end
    if last < first then last = first end
    local prefix = name .. "_bucket{" .. (lp ~= "" and lp .. "," or "") .. 'le="'
    local cum = 0
    for i = first, last do
        local le = bucket_le(agg, i)
        if le == huge then break end
        cum = cum + (slots[i] or 0)
        n = n + 1
        buf[n] = prefix .. num(le) .. '"} ' .. num(cum) .. "\n"
    end
    n = n + 1
    buf[n] = prefix .. '+Inf"} ' .. num(r.count) .. "\n"
    local lt = lp ~= "" and "{" .. lp .. "}" or ""
    buf[n + 1] = name .. "_sum" .. lt .. " " .. num(r.sum) .. "\n"
    buf[n + 2] = name .. "_count" .. lt .. " " .. num(r.count) .. "\n"
    return n + 2
end

local PROM_TYPE = { count = "counter", sum = "counter", avg = "gauge", min = "gauge",
                    max = "gauge", stats = "summary", hist = "histogram", lhist = "histogram" }

local function sample_value(kind, r)
    if kind == "count" then return r.count end
    if kind == "sum" then return r.sum end
    if kind == "avg" then
        if r.count == 0 then return 0 end
        return r.sum / r.count
    end
    return r.value -- min, max
end

--- Appends the family of metric m ({ agg, name, help, names, base }) to buf; returns the new n.
local function family_lines(buf, n, m)
    local agg, name, names = m.agg, m.name, m.names
    local kind = agg.kind
    buf[n + 1] = "# HELP " .. name .. " " .. escape_help(m.help) .. "\n"
    buf[n + 2] = "# TYPE " .. name .. " " .. PROM_TYPE[kind] .. "\n"
    n = n + 2
    local labels = m.labels -- label pairs by record id: keys keep their text
    for _, r in ipairs(current_records(m)) do
        local lp = labels[r.id]
        if lp == nil then
            lp = label_pairs(names, r.key)
            labels[r.id] = lp
        end
        local lt = lp ~= "" and "{" .. lp .. "}" or ""
        if kind == "hist" or kind == "lhist" then
            n = histogram_lines(buf, n, name, agg, lp, r)
        elseif kind == "stats" then
            buf[n + 1] = name .. "_sum" .. lt .. " " .. num(r.sum) .. "\n"
            buf[n + 2] = name .. "_count" .. lt .. " " .. num(r.count) .. "\n"
            n = n + 2
        else
            local v = sample_value(kind, r)
            if v ~= nil then
                n = n + 1
                buf[n] = name .. lt .. " " .. num(v) .. "\n"
            end
        end
    end
    return n
end


-- The exporter.

local Exporter = {}
Exporter.__index = Exporter

local function default_help(agg, opts)
    local what = agg.kind
    local value = opts.value or agg.field
    if value then what = what .. " of " .. value end
    local keys = ""
    if #agg.keys > 0 then keys = " per " .. concat(agg.keys, ", ") end
    return "netdevq " .. agg.name .. ": " .. what .. keys
end

--- exp:add(agg[, opts]): export an aggregation. opts: name (metric name after "netdevq_"),
-- help, value (the aggregated field, default agg.field), unit ("bytes", ...; default from the
-- field), kernel = tracer (agg is that tracer's in-kernel aggregation: refresh() re-reads it).
function Exporter:add(agg, opts)
    local aggregate = require("netdevq.aggregate")
    if not aggregate.is_aggregation(agg) then
        error("netdevq.prometheus: add() expects an aggregation (netdevq.count{...}, ...)", 2)
    end
    opts = opts or {}
    if type(opts) ~= "table" then error("netdevq.prometheus: add() options must be a table", 2) end
    local name = _M.metric_name(agg, opts)
    if self.by_name[name] or RESERVED[name] then
        error("netdevq.prometheus: metric name " .. name .. " is already used; give the "
            .. "aggregation another name", 2)
    end
    local m = { agg = agg, name = name, names = label_names(agg), base = {}, labels = {},
                help = opts.help or default_help(agg, opts), kernel = opts.kernel }
    self.metrics[#self.metrics + 1] = m
    self.by_name[name] = m
    self.by_agg[agg] = m
    return self
end

--- exp:add_tracer(t): export t's counters (netdevq_events_total, ...); its run() refreshes
-- this exporter every period seconds. One tracer per exporter.
function Exporter:add_tracer(t)
    if type(t) ~= "table" or type(t.stats) ~= "function" then
        error("netdevq.prometheus: add_tracer() expects a tracer (netdevq.open)", 2)
    end
    if self.tracer and self.tracer ~= t then
        error("netdevq.prometheus: an exporter exports one tracer's counters", 2)
    end
    self.tracer = t
    t.exporter = self
    return self
end

--- exp:fold(agg): add agg's current values to the exported totals, then agg:clear(). Use it
-- instead of agg:clear() so the exported counters keep counting across resets.
function Exporter:fold(agg)
    local m = self.by_agg[agg]
    if m then
        for _, e in ipairs(agg:entries()) do merge_entry(m.base, agg, e) end
    end
    agg:clear()
end

_M.BPF_STATS_ENABLED = "/proc/sys/kernel/bpf_stats_enabled"
local function bpf_stats_enabled()
    local f = io.open(_M.BPF_STATS_ENABLED)
    if not f then return false end
    local v = f:read("*l")
    f:close()
    return v == "1"
end

local function counter_family(buf, n, name, help, value, kind)
    buf[n + 1] = "# HELP " .. name .. " " .. help .. "\n"
    buf[n + 2] = "# TYPE " .. name .. " " .. (kind or "counter") .. "\n"
    buf[n + 3] = name .. " " .. num(value) .. "\n"
    return n + 3
end

-- The tracer's counters (the last ones read while it was open), and its program's run time
-- when kernel.bpf_stats_enabled is 1.
function Exporter:tracer_lines(buf, n)
    local t = self.tracer
    if t and t.t then
        self.last_stats = t:stats() or self.last_stats
        self.last_prog = nil
        if bpf_stats_enabled() and t.t.prog_stats then
            self.last_prog = t.t:prog_stats()
        end
    end
    local st = self.last_stats
    if not st then return n end
    for _, c in ipairs(TRACER_COUNTERS) do
        n = counter_family(buf, n, c[1], c[3], tonumber(st[c[2]]) or 0)
    end
    local p = self.last_prog
    if p then
        n = counter_family(buf, n, "netdevq_bpf_run_seconds_total",
            "time the net_dev_queue program ran (kernel.bpf_stats_enabled=1)", p.run_time_ns / 1e9)
        n = counter_family(buf, n, "netdevq_bpf_run_count_total",
            "runs of the net_dev_queue program (kernel.bpf_stats_enabled=1)", p.run_cnt)
    end
    return n
end

--- exp:render() -> the exposition text: every added aggregation (in add order), the tracer's
-- counters, netdevq_build_info.
function Exporter:render()
    local buf, n = {}, 0
    for _, m in ipairs(self.metrics) do
        if m.kernel and m.kernel.t then
            m.agg:clear()
            m.kernel:read_aggregate(m.agg, false)
        end
        n = family_lines(buf, n, m)
    end
    n = self:tracer_lines(buf, n)
    buf[n + 1] = "# HELP netdevq_build_info netdevq's version\n"
    buf[n + 2] = "# TYPE netdevq_build_info gauge\n"
    buf[n + 3] = 'netdevq_build_info{version="' .. escape_label(self.version) .. '"} 1\n'
    return concat(buf, "", 1, n + 3)
end

--- exp:refresh(): render and publish; scrapes from now on get this text.
function Exporter:refresh()
    if self.server then self.server:publish(self:render()) end
    return self
end

--- The metrics URL, e.g. http://127.0.0.1:9464/metrics.
function Exporter:url()
    local host = self.host
    if host:find(":", 1, true) then host = "[" .. host .. "]" end
    return format("http://%s:%d%s", host, self.port, self.path)
end

--- Number of GET /metrics answered so far.
function Exporter:scrapes()
    return self.server and self.server:scrapes() or 0
end

function Exporter:close()
    if self.server then
        self.server:close()
        self.server = false
    end
    if self.tracer and self.tracer.exporter == self then self.tracer.exporter = nil end
end

--- _M.parse_listen("[ADDR:]PORT") -> host, port | nil, err. ADDR: an IPv4 address, or an IPv6
-- one in brackets ("[::1]:9464"); default 127.0.0.1. PORT 0 picks a free port.
function _M.parse_listen(s)
    if type(s) == "number" then s = tostring(s) end
    if type(s) ~= "string" then return nil, "listen must be '[ADDR:]PORT'" end
    local host, port = s:match("^%[([%x:.]+)%]:(%d+)$")
    if not host then host, port = s:match("^([%d.]*):(%d+)$") end
    if not host then host, port = "", s:match("^(%d+)$") end
    if not port then host = nil end
    if not host then
        return nil, "'" .. s .. "' is not [ADDR:]PORT (e.g. 9464, 127.0.0.1:9464, [::1]:9464)"
    end
    port = tonumber(port)
    if port > 65535 then return nil, "port " .. port .. " is out of range (0-65535)" end
    if host == "" then host = DEFAULT_HOST end
    return host, port
end

--- prometheus.new{ listen = "[ADDR:]PORT" (default 127.0.0.1:9464), tracer =, aggregations =
-- { agg, ... }, period = seconds between refreshes from the tracer's run() (default 1),
-- path = "/metrics" } -> exporter | nil, err (the address cannot be bound).
-- exp.host, exp.port: where it listens (the port actually bound, for listen port 0).
function _M.new(opts)
    opts = opts or {}
    if type(opts) ~= "table" then error("netdevq.prometheus: expected an options table", 2) end
    local host, port = DEFAULT_HOST, DEFAULT_PORT
    if opts.listen ~= nil then
        host, port = _M.parse_listen(opts.listen)
        if not host then error("netdevq.prometheus: " .. port, 2) end
    end
    local period = opts.period or DEFAULT_PERIOD
    if type(period) ~= "number" or period ~= period or period <= 0 then
        error("netdevq.prometheus: period must be a positive number of seconds", 2)
    end
    local server, err = http.serve{ host = host, port = port, path = opts.path }
    if not server then return nil, "netdevq: prometheus: " .. err end
    local self = setmetatable({
        server = server, host = host, port = server:port(), path = opts.path or "/metrics",
        period = period,
        metrics = {}, by_name = {}, by_agg = setmetatable({}, { __mode = "k" }),
        version = require("netdevq")._VERSION,
    }, Exporter)
    for _, agg in ipairs(opts.aggregations or {}) do self:add(agg) end
    if opts.tracer then self:add_tracer(opts.tracer) end
    self:refresh()
    return self
end

_M.Exporter = Exporter
-- netdevq.prometheus{...} is new{...}
return setmetatable(_M, { __call = function(_, opts) return _M.new(opts) end })
