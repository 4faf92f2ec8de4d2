-- netdevq.skbpath: sk_buff member paths as fields (skb.len, skb.dev.mtu, skb.sk.sk_rcvbuf,
-- skb.dev.name, skb.sk.__sk_common.skc_family, skb.cb[0], ...).
--
-- A path is resolved against the kernel's BTF by netdevq.core (csrc/btf_path.c) into pointer
-- hops and the value's offset, size and kind; it then takes one of the NDQ_PATHS_MAX slots of
-- struct netdevq_config / netdevq_event, which the BPF object's generic reader (bpf/skbpath.h)
-- fills in every event. Slots are given out in the order paths are first used and kept for the
-- life of the process, so every tracer reads a path from the same slot.
--
-- Values: integers (signed or unsigned as BTF says, bitfields extracted) as numbers (exact up to
-- 2^53); enums by their BTF name (the number when no name matches); char arrays as text (the
-- first NDQ_PATH_STR bytes, up to the first NUL); pointers as "0x" and 16 hex digits. A NULL
-- pointer on the way makes the field absent (nil), never a wrong value.
local ffi = require("ffi")
local bit = require("bit")
require("netdevq.abi") -- declares the NDQ_* constants to the FFI

local ffi_cast = ffi.cast
local ffi_string = ffi.string
local band = bit.band
local lshift = bit.lshift
local tohex = bit.tohex
local format = string.format
local concat = table.concat
local sort = table.sort
local tonumber = tonumber
local tostring = tostring
local type = type
local ipairs = ipairs
local pairs = pairs
local pcall = pcall
local math_min = math.min
local C = ffi.C

local PATHS_MAX = C.NDQ_PATHS_MAX
local PATH_HOPS = C.NDQ_PATH_HOPS
local PATH_STR = C.NDQ_PATH_STR
local PK = { UINT = C.NDQ_PK_UINT, SINT = C.NDQ_PK_SINT, STR = C.NDQ_PK_STR }
local PC_RANGE, PC_NE = C.NDQ_PC_RANGE, C.NDQ_PC_NE
local LOC_NUMBER, LOC_BYTES = C.NDQ_LOC_NUMBER, C.NDQ_LOC_BYTES
local PATH_OFF = ffi.offsetof("struct netdevq_event", "path")
local u64_ptr_t = ffi.typeof("const uint64_t *")
local s64_ptr_t = ffi.typeof("const int64_t *")
local u8_ptr_t = ffi.typeof("const uint8_t *")


local _M = {
    PATHS_MAX = PATHS_MAX,
    PATH_HOPS = PATH_HOPS,
    PATH_STR = PATH_STR,
}


-- true when name is written as a member path (whether or not it resolves)
local function is_path(name)
    return type(name) == "string" and name:sub(1, 4) == "skb."
end
_M.is_path = is_path


---------------------------------------------------------------------------------------------
-- BTF: one handle for the process, opened on first use
---------------------------------------------------------------------------------------------

local btf, btf_err
local btf_file -- nil: the running kernel's

-- Reads member paths from this BTF file instead of the running kernel's (before first use).
function _M.use_btf(file)
    if btf then
        btf:close()
    end
    btf, btf_err, btf_file = nil, nil, file
end

local function handle()
    if not btf and not btf_err then
        local ok, core = pcall(require, "netdevq.core")
        if not ok then
            return nil, "member paths need the C module netdevq.core: build it (scripts/setup)"
        end
        btf, btf_err = core.btf_open(btf_file)
    end
    return btf, btf_err
end


---------------------------------------------------------------------------------------------
-- Suggestions: members near an unknown one
---------------------------------------------------------------------------------------------

-- Distance of what was typed to a member name: the edit distance to the whole name, or one
-- more than to one of its '_'-separated words ("mtux" is 2 from "min_mtu": 1 from "mtu").
local function member_distance(edit_distance, word, name)
    local d = edit_distance(word, name)
    for part in name:gmatch("[^_]+") do
        if part ~= name then
            d = math_min(d, edit_distance(word, part) + 1)
        end
    end
    return d
end

-- length of the longest run of letters a and b share
local function common_run(a, b)
    local best = 0
    for i = 1, #a do
        for j = i + best, #a do
            if not b:find(a:sub(i, j), 1, true) then
                break
            end
            best = j - i + 1
        end
    end
    return best
end

-- Up to 3 members near `word`: nearest first, then the longest run of shared letters, then
-- struct order; at most 2 edits away (or half the word's length, for long words).
function _M.suggest(word, members)
    local edit_distance = require("netdevq.catalogue").edit_distance
    local limit = math.max(2, math.floor(#word / 2))
    local ranked, dist, run, order = {}, {}, {}, {}
    for i, name in ipairs(members) do
        if not dist[name] then
            local d = member_distance(edit_distance, word, name)
            if d <= limit then
                ranked[#ranked + 1] = name
                dist[name], run[name], order[name] = d, common_run(word, name), i
            end
        end
    end
    sort(ranked, function(a, b)
        if dist[a] ~= dist[b] then
            return dist[a] < dist[b]
        end
        if run[a] ~= run[b] then
            return run[a] > run[b]
        end
        return order[a] < order[b]
    end)
    for i = #ranked, 4, -1 do
        ranked[i] = nil
    end
    return ranked
end


---------------------------------------------------------------------------------------------
-- Resolution
---------------------------------------------------------------------------------------------

local resolved = {} -- path -> info (core's table)

-- name -> { hops, off = {...}, size, kind, ctype, bit_off, bit_size, enum, signed, path } | nil,
-- one-line message. Does not take a slot.
function _M.resolve(name)
    local info = resolved[name]
    if info then
        return info
    end
    local h, err = handle()
    if not h then
        return nil, err
    end
    local members
    info, err, members = h:resolve(name)
    if not info and err:match("^struct sock has no member 'sk_[%w_]+'$") then
        -- the kernel's own shorthands: sk->sk_family is sk->__sk_common.skc_family (sock.h)
        local short = err:match("'sk_([%w_]+)'$")
        local prefix = name:match("^(.-%.)sk_" .. short .. "[%.%[]") or name:match("^(.-%.)sk_"
            .. short .. "$")
        if prefix then
            local long = prefix .. "__sk_common.skc_" .. short .. name:sub(#prefix + 4 + #short)
            local linfo = h:resolve(long)
            if linfo then
                info = linfo
                info.path = name
            end
        end
    end
    if not info then
        if members then
            local near = _M.suggest(err:match("no member '(.-)'$") or "", members)
            if #near > 0 then
                err = err .. "; did you mean '" .. concat(near, "', '") .. "'?"
            end
        end
        return nil, err
    end
    resolved[name] = info
    return info
end

-- Lines for `-l skb.dev`: the members of the struct a path names (or points to), with types.
function _M.list(path)
    local h, err = handle()
    if not h then
        return nil, err
    end
    local struct, members = h:members(path)
    if not struct then
        return nil, members
    end
    local lines = { format("%s (%s): %d members", path, struct, #members) }
    local width = 8
    for _, m in ipairs(members) do
        width = math.max(width, #m.name)
    end
    for _, m in ipairs(members) do
        local bits = m.bits > 0 and format(" :%d", m.bits) or ""
        lines[#lines + 1] = format("  %-" .. width .. "s  %s%s  (offset %d)", m.name, m.type,
                                   bits, m.offset)
    end
    return lines
end


-- The field list's lines for what this module adds (--list-fields, after the catalogue's).
function _M.list_more()
    return {
        format("%-10s %-8s %s", "skb.PATH", "per BTF", "any sk_buff member through kernel BTF, "
            .. "e.g. skb.dev.mtu, skb.sk.sk_rcvbuf, skb.cb[0] (-l skb lists them; at most "
            .. PATHS_MAX .. " per run)"),
        format("%-10s %-8s %s", "kstack", "string", "kernel stack that queued the packet, "
            .. "like bpftrace's kstack (--count kstack)"),
    }
end


---------------------------------------------------------------------------------------------
-- Slots and fields
---------------------------------------------------------------------------------------------

local slots = {} -- array: path infos in slot order (slot i + 1)
local kstack_on = false -- the kstack field was asked for

local function kernel_kind(info)
    if info.kind == "string" then
        return PK.STR
    elseif info.kind == "signed" or (info.kind == "enum" and info.signed) then
        return PK.SINT
    end
    return PK.UINT
end

-- How a path's 16 bytes (a `const uint8_t *`) read as its value; also the in-kernel
-- aggregation key slot, which holds the same bytes.
local function decoder(info)
    local kind = info.kind
    if kind == "string" then
        local size = info.size
        return function(b)
            local n = 0
            while n < size and b[n] ~= 0 do
                n = n + 1
            end
            return ffi_string(b, n)
        end
    elseif kind == "pointer" then
        return function(b)
            return "0x" .. tohex(ffi_cast(u64_ptr_t, b)[0], 16)
        end
    elseif kind == "enum" then
        local names, ptr_t = info.enum, info.signed and s64_ptr_t or u64_ptr_t
        return function(b)
            local v = tonumber(ffi_cast(ptr_t, b)[0])
            return names[v] or tostring(v)
        end
    end
    local ptr_t = kind == "signed" and s64_ptr_t or u64_ptr_t
    return function(b)
        return tonumber(ffi_cast(ptr_t, b)[0])
    end
end

-- name -> a field row for the catalogue, taking the next slot; nil, message when the path does
-- not resolve or every slot is taken. The row says where the value lies in the event (loc, for
-- the kernel's aggregation keys and values) and when it is there (the path's flag).
function _M.row(name)
    local info, err = _M.resolve(name)
    if not info then
        return nil, err
    end
    if #slots >= PATHS_MAX then
        return nil, format("too many skb paths: '%s' would be the %dth, and at most %d "
            .. "(NDQ_PATHS_MAX) are read per run", name, #slots + 1, PATHS_MAX)
    end
    local slot = #slots
    slots[slot + 1] = info
    info.slot = slot
    local numeric = info.kind == "signed" or info.kind == "unsigned"
    local what = info.kind == "string" and format("%s, first %d bytes", info.ctype, info.size)
        or info.bit_size > 0 and format("%s :%d", info.ctype, info.bit_size) or info.ctype
    local bit_of_slot = lshift(1, slot) -- in ev.path_present: the path was read
    local decode = decoder(info)
    return {
        name = name,
        type = numeric and "integer" or "string",
        description = format("%s (%s, through kernel BTF)", name, what),
        example = numeric and "0" or '"x"',
        untrusted = info.kind == "string" or nil,
        raw = function(p)
            if band(p.path_present, bit_of_slot) ~= 0 then
                return decode(ffi_cast(u8_ptr_t, p.path[slot]))
            end
        end,
        loc = { off = PATH_OFF + slot * 16, size = info.kind == "string" and 16 or 8,
                kind = info.kind == "string" and LOC_BYTES or LOC_NUMBER, when_flags = 0,
                when_l3 = 0, when_nonzero = 0, when_path = slot + 1 },
        decode_key = function(b, off) return decode(b + off) end,
        path = info,
        slot = slot,
    }
end

-- The row of a field name this module makes: a member path, or kstack; nil (and no message)
-- for other names.
function _M.field_row(name)
    if is_path(name) then
        return _M.row(name)
    elseif name == "kstack" then
        kstack_on = true
        return require("netdevq.kstack").row()
    end
    return nil
end

-- The number of slots taken.
function _M.count()
    return #slots
end


---------------------------------------------------------------------------------------------
-- Config: what the kernel reads and checks
---------------------------------------------------------------------------------------------

-- Writes every taken slot into cfg (a struct netdevq_config), and asks for kernel stacks once
-- kstack is a field; kernel filters already set on cfg.path[i] stay.
function _M.configure(cfg)
    cfg.kstack = kstack_on and 1 or 0
    cfg.n_paths = #slots
    for i, info in ipairs(slots) do
        local c = cfg.path[i - 1]
        c.hops, c.size, c.kind = info.hops, info.size, kernel_kind(info)
        c.bit_off, c.bit_size = info.bit_off, info.bit_size
        for j, off in ipairs(info.off) do
            c.off[j - 1] = off
        end
    end
end

local U64_MAX = 0xffffffffffffffffULL
local S64_MIN = -0x7fffffffffffffffLL - 1
local S64_MAX = 0x7fffffffffffffffLL

-- Puts `name op value` (a comparison on an integer or enum path, value a number, or an enum
-- name for == and ~=) into the kernel filter of cfg; false when it cannot be (the caller then
-- decides it in Lua). Comparisons on one path in a conjunction intersect.
function _M.pushdown(cfg, info, op, value)
    if info.slot == nil or info.kind == "string" or info.kind == "pointer" then
        return false
    end
    if type(value) == "string" then
        if info.kind ~= "enum" or (op ~= "==" and op ~= "~=") then
            return false
        end
        local found
        for v, n in pairs(info.enum) do
            if n == value then
                found = v
            end
        end
        if not found then
            return false
        end
        value = found
    end
    if type(value) ~= "number" or value ~= math.floor(value) then
        return false
    end
    local c = cfg.path[info.slot]
    local signed = kernel_kind(info) == PK.SINT
    local lo, hi = value, value
    if op == "~=" or op == "!=" then
        if not signed and value < 0 then
            return true -- an unsigned value never equals it: nothing to check
        end
        if band(c.cmp, PC_NE) ~= 0 then
            return false
        end
        c.cmp = bit.bor(c.cmp, PC_NE)
        c.ne = signed and ffi.new("int64_t", value) or value
        return true
    elseif op == "<" then
        lo, hi = nil, value - 1
    elseif op == "<=" then
        lo, hi = nil, value
    elseif op == ">" then
        lo, hi = value + 1, nil
    elseif op == ">=" then
        lo, hi = value, nil
    elseif op ~= "==" then
        return false
    end
    -- current bounds, as numbers in the path's signedness
    local cur_lo, cur_hi
    if band(c.cmp, PC_RANGE) ~= 0 then
        if signed then
            cur_lo = tonumber(ffi.cast("int64_t", c.lo))
            cur_hi = tonumber(ffi.cast("int64_t", c.hi))
        else
            cur_lo, cur_hi = tonumber(c.lo), tonumber(c.hi)
        end
    end
    lo = lo and cur_lo and math.max(lo, cur_lo) or lo or cur_lo
    hi = hi and cur_hi and math_min(hi, cur_hi) or hi or cur_hi
    c.cmp = bit.bor(c.cmp, PC_RANGE)
    if signed then
        c.lo = lo and ffi.new("int64_t", lo) or S64_MIN
        c.hi = hi and ffi.new("int64_t", hi) or S64_MAX
    elseif (hi and hi < 0) or (lo and hi and lo > hi) then
        c.lo, c.hi = 1, 0 -- nothing passes
    else
        c.lo = lo and math.max(lo, 0) or 0
        c.hi = hi or U64_MAX
    end
    return true
end


return _M
