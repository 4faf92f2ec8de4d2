-- netdevq.filter.constraints: the algebra of what a (sub)filter allows one config member to
-- hold, per kind of member:
--   set, range: sorted disjoint list of { lo, hi } intervals
--   names:      sorted list of distinct names
--   prefixes:   list of prefixes, none inside another, sorted
-- union/intersect/same take the kind; pushdown decides which member a comparison constrains.
local names = require("netdevq.names")

local sort = table.sort
local min, max = math.min, math.max
local ipairs = ipairs

local prefix_contains = names.prefix_contains


local _M = {}


local function iv_norm(list)
    sort(list, function(a, b) return a[1] < b[1] end)
    local out = {}
    for _, iv in ipairs(list) do
        local last = out[#out]
        if iv[1] <= iv[2] then
            if last and iv[1] <= last[2] + 1 then
                last[2] = max(last[2], iv[2])
            else
                out[#out + 1] = { iv[1], iv[2] }
            end
        end
    end
    return out
end

local function iv_intersect(a, b)
    local out = {}
    for _, x in ipairs(a) do
        for _, y in ipairs(b) do
            local lo, hi = max(x[1], y[1]), min(x[2], y[2])
            if lo <= hi then
                out[#out + 1] = { lo, hi }
            end
        end
    end
    return iv_norm(out)
end

local function iv_count(a)
    local n = 0
    for _, iv in ipairs(a) do
        n = n + (iv[2] - iv[1] + 1) -- not n + hi - lo: floats near 2^64 swallow n
    end
    return n
end

local function list_union(a, b)
    local out = {}
    for _, x in ipairs(a) do out[#out + 1] = x end
    for _, x in ipairs(b) do out[#out + 1] = x end
    return out
end

local function names_norm(list)
    local seen, out = {}, {}
    for _, s in ipairs(list) do
        if not seen[s] then
            seen[s] = true
            out[#out + 1] = s
        end
    end
    sort(out)
    return out
end

local function names_intersect(a, b)
    local inb, out = {}, {}
    for _, s in ipairs(b) do inb[s] = true end
    for _, s in ipairs(a) do
        if inb[s] then out[#out + 1] = s end
    end
    return out
end

local function prefixes_norm(list)
    local out = {}
    for i, p in ipairs(list) do
        local covered = false
        for j, q in ipairs(list) do
            -- drop p when another prefix contains it (equal ones: keep the first)
            if i ~= j and prefix_contains(q, p) and (not prefix_contains(p, q) or j < i) then
                covered = true
                break
            end
        end
        if not covered then
            out[#out + 1] = p
        end
    end
    sort(out, function(a, b)
        if a.key ~= b.key then return a.key < b.key end
        return a.bits < b.bits
    end)
    return out
end

local function prefixes_intersect(a, b)
    local out = {}
    for _, p in ipairs(a) do
        for _, q in ipairs(b) do
            if prefix_contains(p, q) then
                out[#out + 1] = q
            elseif prefix_contains(q, p) then
                out[#out + 1] = p
            end
        end
    end
    return prefixes_norm(out)
end

local KIND_OPS = {
    set = { norm = iv_norm, intersect = iv_intersect },
    range = { norm = iv_norm, intersect = iv_intersect },
    names = { norm = names_norm, intersect = names_intersect },
    prefixes = { norm = prefixes_norm, intersect = prefixes_intersect },
}

function _M.union(kind, a, b)
    if a == nil then return b end
    if b == nil then return a end
    return KIND_OPS[kind].norm(list_union(a, b))
end

function _M.intersect(kind, a, b)
    return KIND_OPS[kind].intersect(a, b)
end

function _M.same(kind, a, b)
    if a == nil or b == nil then
        return a == b
    end
    if #a ~= #b then
        return false
    end
    for i = 1, #a do
        local x, y = a[i], b[i]
        if kind == "names" then
            if x ~= y then return false end
        elseif kind == "prefixes" then
            if x.key ~= y.key or x.bits ~= y.bits then return false end
        elseif x[1] ~= y[1] or x[2] ~= y[2] then
            return false
        end
    end
    return true
end

_M.iv_norm, _M.iv_intersect, _M.iv_count = iv_norm, iv_intersect, iv_count
_M.prefixes_norm = prefixes_norm


return _M
