-- netdevq.aggregate.kernel: aggregations computed in the kernel (a per-CPU hash in
-- bpf/netdevq.bpf.c; a count's first keys in a per-CPU table in front of it, whose records the
-- core hands over with the hash's: a key may come more than once, and its records add up):
-- which ones can be, how the loader configures them, and how the map's records become the
-- same aggregation object the Lua path fills.
--
-- A key field takes one NDQ_AGG_KEY_SLOT-byte slot: numbers as a host-order __u64 in its first
-- 8 bytes; strings (dev, comm) NUL-padded; addresses as 16 bytes and the family (4 or 6) in the
-- byte after them, so that an IPv4 address and its IPv4-mapped IPv6 form stay apart; a slot of
-- 0xff bytes is a field the event does not carry (ABSENT).
local ffi = require("ffi")
local abi = require("netdevq.abi")
local catalogue = require("netdevq.catalogue")
local names = require("netdevq.names")
local aggregate = require("netdevq.aggregate")

local ffi_cast = ffi.cast
local ffi_string = ffi.string
local format = string.format
local type = type
local tonumber = tonumber
local error = error
local ipairs = ipairs

local u8_ptr_t = ffi.typeof("const uint8_t *")
local u64_ptr_t = ffi.typeof("const uint64_t *")
local agg_key_ptr_t = ffi.typeof("const struct netdevq_agg_key *")
local agg_value_ptr_t = ffi.typeof("const struct netdevq_agg_value *")

local AGG_KEYS_MAX = abi.AGG_KEYS_MAX
local AGG_KEY_SLOT = abi.AGG_KEY_SLOT
local AGG_SLOTS = abi.AGG_SLOTS
local ABSENT = aggregate.ABSENT
local by_name = catalogue.by_name

local _M = {}

-- Linear buckets an in-kernel lhist can hold: slots 1..n plus the two outer slots.
_M.LHIST_MAX_BUCKETS = AGG_SLOTS - 2


---------------------------------------------------------------------------------------------
-- What the kernel can aggregate
---------------------------------------------------------------------------------------------

-- true, or false and why not: every key and the value must be fields the kernel reads (a
-- location in the event), the value an integer, at most AGG_KEYS_MAX keys, an lhist within the
-- slots.
function _M.supports(spec)
    local keys = spec.keys or {}
    if #keys > AGG_KEYS_MAX then
        return false, format("a kernel key has at most %d fields", AGG_KEYS_MAX)
    end
    for _, k in ipairs(keys) do
        local f = by_name[k]
        if not (f and f.loc) then
            return false, format("'%s' is not read by the kernel", k)
        end
    end
    if spec.kind ~= "count" then
        local f = by_name[spec.value]
        if not (f and f.loc and f.type == "integer") then
            return false, format("'%s' is not an integer field the kernel reads",
                                 tostring(spec.value))
        end
    end
    if spec.kind == "lhist" and (spec.max - spec.min) / spec.step > _M.LHIST_MAX_BUCKETS then
        return false, format("a kernel lhist has at most %d buckets", _M.LHIST_MAX_BUCKETS)
    end
    return true
end

local function set_loc(c, loc)
    c.off, c.size, c.kind = loc.off, loc.size, loc.kind
    c.when_flags, c.when_l3, c.when_nonzero = loc.when_flags, loc.when_l3, loc.when_nonzero
    c.when_path = loc.when_path or 0
end

-- Writes spec into cfg (struct netdevq_config) for the loader; returns the field names the
-- kernel must read for it.
function _M.configure(cfg, spec)
    cfg.agg_on = 1
    local keys = spec.keys or {}
    cfg.agg_nkeys = #keys
    local used = {}
    for i, k in ipairs(keys) do
        set_loc(cfg.agg_key[i - 1], by_name[k].loc)
        used[i] = k
    end
    if spec.kind ~= "count" then
        cfg.agg_has_value = 1
        set_loc(cfg.agg_value, by_name[spec.value].loc)
        used[#used + 1] = spec.value
    end
    if spec.kind == "hist" then
        cfg.agg_hist = abi.HIST.LOG2
    elseif spec.kind == "lhist" then
        cfg.agg_hist = abi.HIST.LINEAR
        cfg.lhist_min, cfg.lhist_max, cfg.lhist_step = spec.min, spec.max, spec.step
    end
    return used
end


---------------------------------------------------------------------------------------------
-- Decoding the map
---------------------------------------------------------------------------------------------

local function decode_u64(p, off)
    return tonumber(ffi_cast(u64_ptr_t, p + off)[0])
end

local function decode_cstring(p, off)
    local n = 0
    while n < AGG_KEY_SLOT and p[off + n] ~= 0 do n = n + 1 end
    return ffi_string(p + off, n)
end

local function decode_addr(p, off)
    if p[off + 16] == 4 then
        return names.format_ipv4(p + off)
    end
    return names.format_ipv6(p + off)
end

-- by catalogue type; the rest are numbers
local TYPE_DECODERS = {
    string = function(p, off) return names.printable(decode_cstring(p, off)) end,
    address = decode_addr,
    protocol = function(p, off) return names.format_proto(decode_u64(p, off)) end,
    ethertype = function(p, off) return names.format_ethertype(decode_u64(p, off)) end,
    flags = function(p, off) return names.format_tcp_flags(decode_u64(p, off)) end,
}

--- The Lua value of one key field as the kernel packed it (see the top of this file), printed
-- as the Lua path prints it. slot: 1-based field position; key: struct netdevq_agg_key cdata
-- (or pointer) or its bytes as a Lua string.
function _M.decode_key_field(field, key, slot)
    local p
    if type(key) == "string" then p = ffi_cast(u8_ptr_t, key) else p = ffi_cast(u8_ptr_t, key.k) end
    local off = (slot - 1) * AGG_KEY_SLOT
    local absent = true
    for i = off, off + AGG_KEY_SLOT - 1 do
        if p[i] ~= 0xff then absent = false; break end
    end
    if absent then return ABSENT end
    local f = by_name[field]
    local decode = f and (f.decode_key or TYPE_DECODERS[f.type]) or decode_u64
    return decode(p, off)
end
local decode_key_field = _M.decode_key_field

local function merge_record(self, fields, nfields, parts, key, v)
    if type(key) == "string" and #key < nfields * AGG_KEY_SLOT then
        error("netdevq.aggregate: kernel key is shorter than its fields", 3)
    end
    for i = 1, nfields do parts[i] = decode_key_field(fields[i], key, i) end
    local kind = self.kind
    local count = tonumber(v.count)
    -- a min or max is only meaningful once a value was seen
    if count == 0 and (kind == "min" or kind == "max") then return end
    local e = aggregate.entry(self, nfields > 0 and parts or nil)
    e.count = e.count + count
    if kind == "count" then
        return
    elseif kind == "sum" or kind == "avg" or kind == "stats" then
        e.sum = e.sum + tonumber(v.sum)
    elseif kind == "min" then
        local m = tonumber(v.min)
        if e.value == nil or m < e.value then e.value = m end
    elseif kind == "max" then
        local m = tonumber(v.max)
        if e.value == nil or m > e.value then e.value = m end
    else
        e.sum = e.sum + tonumber(v.sum) -- the kernel sums histogram values too
        local slots = e.slots
        local top = AGG_SLOTS - 1
        if kind == "lhist" then top = self.nbuckets + 1 end
        local vs = v.slot
        for i = 0, top do slots[i] = slots[i] + tonumber(vs[i]) end
    end
end

--- Fill an aggregation from the kernel's merged records, as the Lua path would from the same
-- events. spec: as for aggregate.new() (kind, name, keys = the key field names in slot order,
-- value, min/max/step); agg: an aggregation to add to (default: a new one from spec).
-- records: an array of { key = <struct netdevq_agg_key cdata or string>, value = <struct
-- netdevq_agg_value cdata> }, or an iterator function returning key, value (or one such
-- record) per call and nil at the end. Per-CPU values must be merged first. Returns agg.
function _M.from_kernel(spec, records, agg)
    if type(spec) ~= "table" then
        error("netdevq.aggregate: from_kernel(spec, records) needs a spec", 2)
    end
    agg = agg or aggregate.new(spec)
    local fields = spec.keys or {}
    local nfields = #fields
    if nfields > AGG_KEYS_MAX then
        error("netdevq.aggregate: a kernel key has at most " .. AGG_KEYS_MAX .. " fields", 2)
    end
    if agg.kind == "lhist" and agg.nbuckets > _M.LHIST_MAX_BUCKETS then
        error("netdevq.aggregate: a kernel lhist has at most " .. _M.LHIST_MAX_BUCKETS
            .. " buckets", 2)
    end
    local parts = {}
    if type(records) == "function" then
        while true do
            local key, value = records()
            if key == nil then break end
            if value == nil and type(key) == "table" then key, value = key.key, key.value end
            merge_record(agg, fields, nfields, parts, key, value)
        end
    elseif type(records) == "table" then
        for i = 1, #records do
            local r = records[i]
            merge_record(agg, fields, nfields, parts, r.key, r.value)
        end
    elseif records ~= nil then
        error("netdevq.aggregate: records must be an array or an iterator", 2)
    end
    return agg
end

-- n records as the core hands them over (arrays of keys and values) -> from_kernel
function _M.read(spec, n, keys, vals, agg)
    keys = ffi_cast(agg_key_ptr_t, keys)
    vals = ffi_cast(agg_value_ptr_t, vals)
    local i = -1
    return _M.from_kernel(spec, function()
        i = i + 1
        if i < n then
            return keys + i, vals + i
        end
    end, agg)
end


return _M
