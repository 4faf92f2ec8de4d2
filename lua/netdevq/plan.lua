-- netdevq.plan: from what the caller asks for to what the kernel does — the one place that decides
-- which parts the kernel reads (NDQ_NEED_*), how many header bytes each event carries, whether an
-- aggregation runs in the kernel or in Lua, what the filter leaves to Lua, and the sizes of the
-- ring buffer and the aggregation map. netdevq.open() and the CLI both go through here.
--
--   plan.make(opts) -> plan | nil, message, info    (info = { kind = "usage"|"runtime", caret })
--
-- opts (all optional):
--   mode          "raw" | "btf"
--   read          "auto" | "direct" | "probe": how raw mode reads the sk_buff (btf mode loads
--                 directly: there only "auto" is accepted)
--   filter        field expression; its kernel part goes into the config
--   pcap          tcpdump/pcap-filter expression (libpcap's program, translated into eBPF and
--                 decided in the kernel: csrc/pcap_kernel.c)
--   pcap_kernel   false: decide pcap in user space instead, on the event's header bytes (what
--                 netdevq.open falls back to when the kernel refuses the translation)
--   where         function(ev) -> boolean, after filter
--   fields        names the consumers read (nil: every field)
--   aggregations  specs { kind=, keys=, value=, min=, max=, step=, name= } run by the tracer
--   aggregate     one spec that must run in the kernel (the older API; an error otherwise)
--   events        deliver events to Lua (default: true unless only aggregations are asked for)
--   snaplen       header bytes each event carries for the consumers (pcapng)
--   max_keys      keys per aggregation (kernel map and Lua alike; overflow is counted)
--   follow_pid, ringbuf_size, batch, wakeup_bytes
--   pid, comm     only this process / process name (the CLI's -p, --comm): the socket owner's
--                 when the kernel knows it, else the task that queued the packet itself, never
--                 one a softirq interrupted (follow_pid too; bpf/owner.bpf.h owner_who_filter)
local ffi = require("ffi")
local bit = require("bit")
local abi = require("netdevq.abi")
local catalogue = require("netdevq.catalogue")

local bor = bit.bor
local format = string.format
local type, tostring, ipairs, pairs, unpack = type, tostring, ipairs, pairs, unpack


local _M = {}

-- Limits and defaults: one place each.
_M.SNAP_MAX = abi.SNAP_MAX
_M.DEFAULT_SNAPLEN = 128            -- pcapng without -s: Ethernet + IPv6 + TCP with options
_M.RINGBUF_MIN, _M.RINGBUF_MAX = 4096, 2 ^ 30
_M.DEFAULT_MAX_KEYS = 65536
_M.MAX_KEYS_LIMIT = 2 ^ 20
_M.DEFAULT_WAKEUP_BYTES = 256 * 1024
_M.PID_MAX = 4194304                -- PID_MAX_LIMIT of the kernel

local function usage(msg, caret)
    return nil, "netdevq: " .. msg, { kind = "usage", caret = caret }
end
_M.usage = usage


---------------------------------------------------------------------------------------------
-- Option values: one validator each (the CLI's options and open()'s keys share them)
---------------------------------------------------------------------------------------------

local function whole(v)
    return type(v) == "number" and v == v and v % 1 == 0 and v < 2 ^ 53
end

-- name: how the caller spells the option (--snaplen, snaplen); returns v or nil, message
local CHECKS = {
    snaplen = function(v)
        if whole(v) and v >= 0 and v <= abi.SNAP_MAX then return v end
        return nil, format("must be a whole number from 0 to %d (header bytes)", abi.SNAP_MAX)
    end,
    ringbuf_size = function(v)
        if whole(v) and v >= _M.RINGBUF_MIN and v <= _M.RINGBUF_MAX and bit.band(v, v - 1) == 0 then
            return v
        end
        return nil, format("must be a power of two from %d to %d", _M.RINGBUF_MIN, _M.RINGBUF_MAX)
    end,
    max_keys = function(v)
        if whole(v) and v >= 1 and v <= _M.MAX_KEYS_LIMIT then return v end
        return nil, format("must be a whole number from 1 to %d", _M.MAX_KEYS_LIMIT)
    end,
    follow_pid = function(v)
        if whole(v) and v >= 1 and v <= _M.PID_MAX then return v end
        return nil, format("must be a process id from 1 to %d", _M.PID_MAX)
    end,
    pid = function(v)
        if whole(v) and v >= 0 and v <= _M.PID_MAX then return v end
        return nil, format("must be a process id from 0 to %d", _M.PID_MAX)
    end,
    comm = function(v)
        if type(v) == "string" and #v >= 1 and #v < abi.COMM_LEN and not v:find("\0", 1, true) then
            return v
        end
        return nil, format("must be a process name of 1 to %d bytes", abi.COMM_LEN - 1)
    end,
    batch = function(v)
        if whole(v) and v >= 1 and v <= 2 ^ 20 then return v end
        return nil, "must be a whole number from 1 to 1048576"
    end,
    read = function(v)
        if v == "auto" or v == "direct" or v == "probe" then return v end
        return nil, "must be auto, direct or probe"
    end,
    wakeup_bytes = function(v)
        if whole(v) and v >= 0 and v < 2 ^ 32 then return v end
        return nil, "must be a whole number of bytes (0: wake up on every event)"
    end,
}

-- check(name, v, spelled) -> v | nil, "SPELLED must be ..., not V"
function _M.check(name, v, spelled)
    if v == nil then
        return nil
    end
    local ok, why = CHECKS[name](v)
    if ok == nil then
        return nil, format("%s %s, not %s", spelled or name, why, tostring(v))
    end
    return ok
end


---------------------------------------------------------------------------------------------
-- Aggregations: kernel or Lua
---------------------------------------------------------------------------------------------

-- checks one spec's fields against the catalogue; nil, message when wrong
local function check_spec(spec)
    local aggregate = require("netdevq.aggregate")
    local ok, err = aggregate.check(spec)
    if not ok then
        return nil, err
    end
    for _, k in ipairs(spec.keys or {}) do
        local _, kerr = catalogue.field(k)
        if kerr then
            return nil, kerr
        end
    end
    if spec.kind ~= "count" then
        local f, ferr = catalogue.field(spec.value)
        if not f then
            return nil, ferr
        end
        if f.value_type ~= "integer" then
            return nil, format("'%s' is a %s field; aggregate an integer field (len, "
                               .. "gso_segs, ...)", spec.value, f.value_type)
        end
    end
    return true
end

-- every field name the specs read
local function agg_fields(specs, out)
    for _, spec in ipairs(specs) do
        for _, k in ipairs(spec.keys or {}) do
            out[#out + 1] = k
        end
        if spec.value then
            out[#out + 1] = spec.value
        end
    end
    return out
end


---------------------------------------------------------------------------------------------
-- The plan
---------------------------------------------------------------------------------------------

local function check_options(opts)
    for _, name in ipairs({ "snaplen", "ringbuf_size", "max_keys", "follow_pid", "batch",
                            "wakeup_bytes", "pid", "comm", "read" }) do
        local v, err = _M.check(name, opts[name])
        if err then
            return usage(err)
        end
        opts[name] = v
    end
    if opts.mode == "btf" and opts.read and opts.read ~= "auto" then
        return usage("read " .. opts.read .. " applies to raw mode only: btf mode always loads "
                     .. "sk_buff members directly")
    end
    if opts.pcap ~= nil and (type(opts.pcap) ~= "string" or opts.pcap:find("\0", 1, true)) then
        return usage("pcap expression must be text without NUL bytes")
    end
    if opts.pcap_kernel ~= nil and type(opts.pcap_kernel) ~= "boolean" then
        return usage("pcap_kernel must be true or false")
    end
    if opts.fields ~= nil then
        if type(opts.fields) ~= "table" then
            return usage("fields must be an array of field names")
        end
        for _, name in ipairs(opts.fields) do
            local _, err = catalogue.field(name)
            if err then
                return usage(err)
            end
        end
    end
    return true
end

-- which aggregations run in the kernel: one, whose keys and value the kernel reads, behind a
-- filter the kernel checks completely, with nothing else wanting events
local function split_aggregations(opts, specs, filter_plan, pcap_user)
    if not opts.aggregate and #specs == 0 then
        return nil, specs -- (a run without aggregations does not load their modules)
    end
    local kernel = require("netdevq.aggregate.kernel")
    if opts.aggregate then
        local ok, why = kernel.supports(opts.aggregate)
        if not ok then
            return false, "this aggregation cannot run in the kernel (" .. why
                          .. "); aggregate in Lua instead"
        end
        if filter_plan.match or opts.where or pcap_user then
            return false, "in-kernel aggregation needs a filter the kernel checks completely"
        end
        return opts.aggregate, {}
    end
    if #specs == 1 and not opts.events and not filter_plan.match and not opts.where
       and not pcap_user and kernel.supports(specs[1]) then
        return specs[1], {}
    end
    return nil, specs
end

-- One function on purpose: each step reads what the previous ones decided (filter remainder ->
-- kernel or Lua aggregation -> NEED bits -> snap length -> emit), top to bottom like the plan
-- it writes; split, the order would hide in the call graph.
function _M.make(opts)
    opts = opts or {}
    local ok, err, info = check_options(opts)
    if not ok then
        return nil, err, info
    end
    local specs = opts.aggregations or {}
    for _, spec in ipairs(opts.aggregate and { opts.aggregate } or specs) do
        local sok, serr = check_spec(spec)
        if not sok then
            return usage(serr)
        end
    end

    local cfg = ffi.new(abi.config_t)
    local filter_plan = { need = 0 }
    if opts.filter and opts.filter ~= "" then
        local ferr, caret
        filter_plan, ferr, caret = require("netdevq.filter").prepare(opts.filter, cfg)
        if not filter_plan then
            return usage(ferr, caret)
        end
    end

    -- the pcap expression: decided in the kernel unless the caller says otherwise
    local pcap_user = opts.pcap ~= nil and opts.pcap_kernel == false
    local kernel_agg, lua_aggs = split_aggregations(opts, specs, filter_plan, pcap_user)
    if kernel_agg == false then
        return usage(lua_aggs)
    end

    -- what the kernel reads: what consumers read, what Lua filters and aggregates
    local need
    -- every field for events nobody narrowed down; a kernel aggregation alone reads its own
    if opts.fields == nil and opts.events ~= false and not (kernel_agg and opts.events == nil) then
        need = abi.NEED.ALL
    else
        need = catalogue.needs(agg_fields(lua_aggs, { unpack(opts.fields or {}) }))
    end
    if filter_plan.match or opts.where then
        need = abi.NEED.ALL -- the Lua side reads fields the caller did not name
    end
    need = bor(need, filter_plan.kernel_need or 0)
    if kernel_agg then
        local used = require("netdevq.aggregate.kernel").configure(cfg, kernel_agg)
        need = bor(need, catalogue.needs(used))
    end

    -- header bytes: what the consumers keep. A pcap expression decided in user space reads all
    -- of them (it may look anywhere: -s only says what is kept), and its link type (Ethernet or
    -- raw IP) from the parsed headers and the device; in the kernel it reads the packet itself.
    local keep = opts.snaplen or 0
    local snaplen = keep
    if opts.pcap then
        cfg.pcap = pcap_user and 0 or 1
        if pcap_user then
            snaplen = abi.SNAP_MAX
            need = bor(need, abi.NEED.HEADERS, abi.NEED.DEV)
        end
    end

    local events = opts.events
    if events == nil then
        events = kernel_agg == nil
    end
    if opts.pid or opts.comm or opts.follow_pid then
        need = bor(need, abi.NEED.OWNER) -- they check the socket owner (csrc/owner.c does too)
    end
    cfg.snaplen = snaplen
    cfg.need = need
    -- events cross to Lua when someone reads them, or when Lua must still decide them (a filter
    -- remainder, where, a pcap expression): matched then counts what passed. Otherwise the kernel
    -- counts alone (Tracer:stats: matched = seen - kfiltered - read_failed).
    local lua_decides = filter_plan.match ~= nil or opts.where ~= nil or pcap_user
    cfg.emit = (events or #lua_aggs > 0 or (lua_decides and not kernel_agg)) and 1 or 0
    cfg.wakeup_bytes = opts.wakeup_bytes or _M.DEFAULT_WAKEUP_BYTES
    cfg.follow_pid = opts.follow_pid or 0
    -- -p, --comm: the kernel checks the socket owner (or the task) itself; the loader then adds
    -- NDQ_NEED_OWNER and the owner programs (csrc/owner.c)
    if opts.pid then
        cfg.who_pid.n, cfg.who_pid.v[0] = 1, opts.pid
    end
    if opts.comm then
        cfg.n_who_comm = 1
        ffi.copy(cfg.who_comm[0], opts.comm)
    end
    require("netdevq.skbpath").configure(cfg) -- the member paths and kstack fields in use

    -- the values of the filter sets too large for the config: keys of the kernel map "sets"
    local set_values
    local sets = filter_plan.sets
    if sets and #sets > 0 then
        local keys = ffi.new("struct netdevq_set_key[?]", #sets)
        for i, kv in ipairs(sets) do
            keys[i - 1].set, keys[i - 1].v = kv[1], kv[2]
        end
        set_values = ffi.string(keys, ffi.sizeof(keys))
    end

    return {
        cfg = cfg,
        mode = opts.mode or "raw",
        need = need,
        snaplen = snaplen,
        keep_snaplen = keep,
        match = filter_plan.match,
        remainder = filter_plan.remainder,
        kernel_agg = kernel_agg,
        lua_aggs = lua_aggs,
        pcap_path = opts.pcap and (pcap_user and "user" or "kernel") or nil,
        max_keys = opts.max_keys or _M.DEFAULT_MAX_KEYS,
        core = {
            mode = opts.mode or "raw",
            read = opts.read,
            config = ffi.string(cfg, ffi.sizeof(cfg)),
            object = opts.object,
            object_bytes = opts.object_bytes,
            btf_path = opts.btf_path,
            pcap = opts.pcap,
            set_values = set_values,
            pcap_snaplen = opts.pcap and abi.SNAP_MAX or nil,
            ringbuf_size = opts.ringbuf_size,
            batch = opts.batch,
            agg_max_keys = opts.max_keys or _M.DEFAULT_MAX_KEYS,
            verbose = opts.verbose,
        },
    }
end

-- for specs and -v: the NEED bits a plan asks for, by name
function _M.need_names(need)
    local out = {}
    for name, b in pairs(abi.NEED) do
        if name ~= "ALL" and bit.band(need, b) ~= 0 then
            out[#out + 1] = name
        end
    end
    table.sort(out)
    return out
end


return _M
