-- netdevq.filter.compile: a filter tree -> a Lua function that decides one event.
--
-- The matcher reads raw record values — numbers, and address bytes with their family — through
-- the catalogue's raw getters, so no event is formatted to be filtered (only `time`, `smac`,
-- `dmac` and `skb` compare as text, which is what they are). Absent fields (a getter returning
-- nil) compare false, as the grammar says; `a ~= v` is `not (a == v)`.
--
-- compile(tree [, getters]) -> match(ev) -> boolean, source. getters maps a field name to
-- function(ev) -> raw value (addresses: family 4/6 or 0, then 16 bytes indexable from 0); the
-- default is the catalogue's, for `const struct netdevq_event *` events. tree nil matches all.
local bit = require("bit")
local catalogue = require("netdevq.catalogue")
local num_text = require("netdevq.filter.parse").num_text

local band, lshift = bit.band, bit.lshift
local format = string.format
local concat = table.concat
local floor, huge = math.floor, math.huge
local ipairs, pairs, error, setmetatable, load = ipairs, pairs, error, setmetatable,
    loadstring or load

local by_name = catalogue.by_name


local _M = {}


-- pk: a compiled prefix; family, a: the event's address (last: a getter returns both)
local function in_prefix(pk, family, a)
    if family ~= pk.family then
        return false
    end
    local want = pk.bytes
    for i = 0, pk.nfull - 1 do
        if a[i] ~= want[i] then
            return false
        end
    end
    local mask = pk.mask
    return mask == 0 or band(a[pk.nfull], mask) == want[pk.nfull]
end

local function str_lt(a, b) return a ~= nil and a < b end
local function str_le(a, b) return a ~= nil and a <= b end
local function str_gt(a, b) return a ~= nil and a > b end
local function str_ge(a, b) return a ~= nil and a >= b end
local STR_ORDER = { ["<"] = "str_lt", ["<="] = "str_le", [">"] = "str_gt", [">="] = "str_ge" }

local HELPERS = {
    in_prefix = in_prefix, HI = huge, LO = -huge,
    str_lt = str_lt, str_le = str_le, str_gt = str_gt, str_ge = str_ge,
}
local HELPER_NAMES = { "HI", "LO", "in_prefix", "str_ge", "str_gt", "str_le", "str_lt" }

local LIST_CHUNK = 64

local function compiled_prefix(p)
    local bytes = {}
    for i = 0, 15 do
        bytes[i] = p.key:byte(i + 2)
    end
    local rem = p.bits % 8
    return { family = p.family, bytes = bytes, nfull = floor(p.bits / 8),
             mask = rem > 0 and band(lshift(0xff, 8 - rem), 0xff) or 0 }
end

-- (its closures share the constant table, the getter locals and the chunked lists)
local function generator(getters)
    local consts, used, used_n = {}, {}, 0
    local function const(v)
        consts[#consts + 1] = v
        return "K[" .. #consts .. "]"
    end
    -- each field's getter becomes a local g<n> of the generated chunk
    local function getter(field)
        local name = used[field]
        if not name then
            if not getters[field] then
                error("filter.compile: no getter for field '" .. field .. "'", 4)
            end
            used_n = used_n + 1
            name = "g" .. used_n
            used[field] = name
        end
        return name .. "(ev)"
    end

    -- `field op v` on one concrete field; absent (nil) compares false
    local function one(field, ty, op, v)
        local acc = getter(field)
        if ty == "address" then
            return format("in_prefix(%s, %s)", const(compiled_prefix(v)), acc)
        elseif ty == "string" or ty == "mac" or ty == "time" then
            if op == "==" then
                return format("(%s == %s)", acc, const(v))
            end
            return format("%s(%s, %s)", STR_ORDER[op], acc, const(v))
        elseif op == "==" then -- integer, and the numbers of protocol, ethertype, flags
            return format("(%s == %s)", acc, num_text(v))
        end
        local absent = (op == "<" or op == "<=") and "HI" or "LO"
        return format("((%s or %s) %s %s)", acc, absent, op, num_text(v))
    end

    -- LuaJIT refuses one expression with thousands of terms ("control structure too long"):
    -- long and/or lists are cut into functions of LIST_CHUNK terms each
    local aux = {}
    local function list_expr(parts, ty)
        if #parts <= LIST_CHUNK then
            return "(" .. concat(parts, " " .. ty .. " ") .. ")"
        end
        local calls = {}
        for i = 1, #parts, LIST_CHUNK do
            aux[#aux + 1] = "function(ev) return " .. concat(parts, " " .. ty .. " ", i,
                math.min(i + LIST_CHUNK - 1, #parts)) .. " end"
            calls[#calls + 1] = "A[" .. #aux .. "](ev)"
        end
        return list_expr(calls, ty)
    end

    local function gen(node)
        local ty = node.type
        if ty == "and" or ty == "or" then
            local parts = {}
            for i = 1, #node do
                parts[i] = gen(node[i])
            end
            return list_expr(parts, ty)
        elseif ty == "not" then
            return "(not " .. gen(node[1]) .. ")"
        end
        local def = by_name[node.field]
        local op = node.op
        local negate = op == "~="
        if negate then
            op = "=="
        end
        local s
        if def.either then
            s = "(" .. one(def.either[1], def.type, op, node.value) .. " or "
                .. one(def.either[2], def.type, op, node.value) .. ")"
        else
            s = one(node.field, def.type, op, node.value)
        end
        return negate and "(not " .. s .. ")" or s
    end

    return gen, consts, used, aux
end

-- the catalogue's raw getters, by name (fields registered later are looked up on use)
local RAW = setmetatable({}, { __index = function(_, name)
    local f = by_name[name]
    return f and f.raw
end })

function _M.compile(tree, getters)
    if tree == nil then
        return function() return true end
    end
    getters = getters or RAW
    local gen, consts, used, aux = generator(getters)
    local body = gen(tree)
    local lines = { "local K, H, G = ...", "local A = {}" }
    for _, name in ipairs(HELPER_NAMES) do
        lines[#lines + 1] = format("local %s = H.%s", name, name)
    end
    for field, local_name in pairs(used) do
        lines[#lines + 1] = format("local %s = G[%q]", local_name, field)
    end
    for i, f in ipairs(aux) do
        lines[#lines + 1] = format("A[%d] = %s", i, f)
    end
    lines[#lines + 1] = "return function(ev) return " .. body .. " end"
    local source = concat(lines, "\n")
    local chunk, err = load(source, "=filter")
    if not chunk then -- a bug here, not the user's
        error("filter.compile: generated code does not load: " .. err .. "\n" .. source)
    end
    return chunk(consts, HELPERS, getters), source
end


return _M
