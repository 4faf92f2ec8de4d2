-- netdevq.filter.pushdown: the part of a filter the kernel checks, written into struct
-- netdevq_config (.rodata, before load), and the remainder Lua must still check.
--
--   pushdown(tree, cfg, sets) -> remainder tree | nil, NEED bits, names of the members filled
--       sets (optional): a list that receives { off, v } for the u32 sets of more than SET_MAX
--       values, which the kernel then looks up in its map "sets" (netdevq.h); without it such
--       sets stay in Lua
--   needs(tree)         -> NDQ_NEED_* bits the fields of a tree need
--
-- The kernel part is implied by the tree, and kernel part + remainder == tree: spec/filter_spec
-- proves it on recorded events with a Lua model of the kernel filter (spec/support), and
-- spec/filter_live_spec on live traffic.
local ffi = require("ffi")
local bit = require("bit")
local abi = require("netdevq.abi")
local catalogue = require("netdevq.catalogue")
local names = require("netdevq.names")
local constraints = require("netdevq.filter.constraints")

local bor = bit.bor
local byte, find = string.byte, string.find
local min = math.min
local ipairs, pairs = ipairs, pairs
local ffi_copy, ffi_fill = ffi.copy, ffi.fill

local by_name = catalogue.by_name
local mask_key = names.mask_key
local iv_norm, iv_intersect, iv_count = constraints.iv_norm, constraints.iv_intersect,
    constraints.iv_count
local prefixes_norm = constraints.prefixes_norm

local SET_MAX, PREFIX_MAX, NAME_LEN = abi.SET_MAX, abi.PREFIX_MAX, abi.IFNAME_LEN
local SET_IN_MAP, SET_MAP_MAX = abi.SET_IN_MAP, abi.SET_MAP_MAX
local U8, U16, U32 = 255, 65535, 4294967295


local _M = {}


-- What each struct netdevq_config member can hold and when its value is there at all.
--   kind: set (u32 set, or cgroup's u64 list), range (len_min..len_max), names, prefixes
--   lo, hi: the values the field can take while present
--   always: the kernel always has a value (a negated comparison can become a set)
--   either: a pseudo-field (port, host): two constraints on it cannot be intersected
local MEMBERS = {
    pid = { kind = "set", lo = 0, hi = U32, always = true },
    tid = { kind = "set", lo = 0, hi = U32, always = true },
    comm = { kind = "names", always = true },
    -- ids are u64: only == comparisons, and only ids a Lua number holds exactly
    cgroup = { kind = "set", lo = 0, hi = 2 ^ 53 - 1, always = true, only_eq = true },
    dev = { kind = "names", always = true },
    ifindex = { kind = "set", lo = 0, hi = U32, always = true },
    netns = { kind = "set", lo = 0, hi = U32, always = true },
    len = { kind = "range", lo = 0, hi = U32, always = true },
    -- decided when the packet's fate is known (bpf/latency.bpf.h); absent for drops
    sojourn = { kind = "range", lo = 0, hi = 2 ^ 53 - 1 },
    queue = { kind = "set", lo = 0, hi = U16, always = true },
    priority = { kind = "set", lo = 0, hi = U32, always = true },
    mark = { kind = "set", lo = 0, hi = U32, always = true },
    -- 0 is "absent" for ethertype (the decoder leaves it out): never in a kernel set
    ethertype = { kind = "set", lo = 1, hi = U16 },
    proto = { kind = "set", lo = 0, hi = U8 },
    sport = { kind = "set", lo = 0, hi = U16 },
    dport = { kind = "set", lo = 0, hi = U16 },
    port = { kind = "set", lo = 0, hi = U16, either = true },
    saddr = { kind = "prefixes" },
    daddr = { kind = "prefixes" },
    host = { kind = "prefixes", either = true },
}

-- The order pushdown fills members in (deterministic results) and the kernel checks them.
local MEMBER_ORDER = {
    "pid", "tid", "comm", "len", "mark", "queue", "priority", "ifindex", "dev", "netns",
    "ethertype", "proto", "saddr", "daddr", "host", "sport", "dport", "port", "cgroup",
    "sojourn",
}


---------------------------------------------------------------------------------------------
-- Constraints (filter/constraints.lua), by member
---------------------------------------------------------------------------------------------

local function union(m, a, b)
    return constraints.union(MEMBERS[m].kind, a, b)
end

local function intersect(m, a, b)
    return constraints.intersect(MEMBERS[m].kind, a, b)
end

local function same(m, a, b)
    return constraints.same(MEMBERS[m].kind, a, b)
end


-- the constraint a comparison (negated: its `not`) puts on its member; nil when none
local function leaf_constraint(node, negated)
    local m = by_name[node.field].member
    if not m then
        return nil
    end
    local md = MEMBERS[m]
    local op, v = node.op, node.value
    if op == "~=" then
        op, negated = "==", not negated
    end
    if md.kind == "names" then
        if negated then
            return nil
        end
        -- longer than the kernel's 15 characters (or with a NUL): matches nothing
        if #v >= NAME_LEN or find(v, "\0", 1, true) then
            return m, {}
        end
        return m, { v }
    elseif md.kind == "prefixes" then
        if negated then
            return nil
        end
        return m, { v }
    end
    if (negated and not md.always) or (md.only_eq and op ~= "==") then
        return nil
    end
    local lo, hi = md.lo, md.hi
    local iv
    if op == "==" then
        iv = { v, v }
    elseif op == "<" then
        iv = { lo, v - 1 }
    elseif op == "<=" then
        iv = { lo, v }
    elseif op == ">" then
        iv = { v + 1, hi }
    else
        iv = { v, hi }
    end
    local cons = iv_intersect({ iv }, { { lo, hi } })
    if negated then
        local comp, from = {}, lo
        for _, x in ipairs(cons) do
            comp[#comp + 1] = { from, x[1] - 1 }
            from = x[2] + 1
        end
        comp[#comp + 1] = { from, hi }
        cons = iv_norm(comp)
    end
    return m, cons
end

-- Negation normal form: `not` only right above comparisons, `~=` as not(==), lists flat.
local function nnf(node, negated)
    local ty = node.type
    if ty == "cmp" then
        local leaf = node
        if node.op == "~=" then
            leaf = { type = "cmp", field = node.field, op = "==", value = node.value,
                     literal = node.literal, col = node.col }
            negated = not negated
        end
        return negated and { type = "not", leaf } or leaf
    elseif ty == "not" then
        return nnf(node[1], not negated)
    end
    local kind = ty
    if negated then
        kind = ty == "and" and "or" or "and"
    end
    local out = { type = kind }
    for i = 1, #node do
        local c = nnf(node[i], negated)
        if c.type == kind then
            for j = 1, #c do
                out[#out + 1] = c[j]
            end
        else
            out[#out + 1] = c
        end
    end
    return out
end

local WIDEN = { { "port", "sport", "dport" }, { "host", "saddr", "daddr" } }

-- { cons = { member = constraint }, exact = member | nil } for a node in NNF.
-- Every cons[m] is implied by the node. When exact = m, the node holds exactly when m's value
-- is present and satisfies cons[m] (and cons has no other member).
-- (the and-, or- and widening rules read best side by side)
local function analyze(node)
    local ty = node.type
    if ty == "cmp" or ty == "not" then
        local m, c = leaf_constraint(ty == "cmp" and node or node[1], ty == "not")
        if not m then
            return { cons = {} }
        end
        return { cons = { [m] = c }, exact = m }
    end
    local kids = {}
    for i = 1, #node do
        kids[i] = analyze(node[i])
    end
    local cons = {}
    local exact = kids[1].exact
    for i = 2, #kids do
        if kids[i].exact ~= exact then
            exact = nil
        end
    end
    if ty == "and" then
        for _, a in ipairs(kids) do
            for m, c in pairs(a.cons) do
                if cons[m] == nil then
                    cons[m] = c
                elseif not MEMBERS[m].either then
                    cons[m] = intersect(m, cons[m], c)
                end
            end
        end
        if exact and MEMBERS[exact].either and #kids > 1 then
            exact = nil
        end
        return { cons = cons, exact = exact }
    end
    -- or: a member every branch constrains, the union
    for m, c in pairs(kids[1].cons) do
        local u = c
        for i = 2, #kids do
            local ci = kids[i].cons[m]
            if ci == nil then
                u = nil
                break
            end
            u = union(m, u, ci)
        end
        cons[m] = u
    end
    -- sport/dport/port branches widen to port, saddr/daddr/host to host
    for _, w in ipairs(WIDEN) do
        local wide, s, d = w[1], w[2], w[3]
        if not (cons[wide] or cons[s] or cons[d]) then
            local u, us, ud, uw, all_exact = nil, nil, nil, nil, true
            for _, a in ipairs(kids) do
                local c = a.cons[wide] or a.cons[s] or a.cons[d]
                if c == nil then
                    u = nil
                    break
                end
                u = union(wide, u, c)
                if a.exact == wide then
                    uw = union(wide, uw, c)
                elseif a.exact == s then
                    us = union(wide, us, c)
                elseif a.exact == d then
                    ud = union(wide, ud, c)
                else
                    all_exact = false
                end
            end
            if u then
                cons[wide] = u
                -- sport in A or dport in B or port in C is `port in A+B+C` when A+C == B+C
                if all_exact and exact == nil
                   and same(wide, union(wide, us, uw), union(wide, ud, uw)) then
                    exact = wide
                end
            end
        end
    end
    return { cons = cons, exact = exact }
end


---------------------------------------------------------------------------------------------
-- Pushdown into struct netdevq_config
---------------------------------------------------------------------------------------------
-- What the kernel must do with each member (kernel_model below is the same, in Lua). Every
-- non-empty member must hold (a conjunction); an empty one (n == 0, len_set == 0) checks nothing.
--   pid tid ifindex netns mark queue priority: the value is one of v[0..n)
--   ethertype: skb->protocol (host order) is one of v[0..n); v never holds 0 (0 = absent)
--   proto: the packet is IP (l3 != 0) and its protocol is one of v[0..n)
--   sport, dport: the packet has an L4 header (NDQ_EV_L4) and the port is one of v[0..n)
--   port: L4 header and (sport or dport is one of v[0..n))
--   len_set: len_min <= len <= len_max (an empty range, min > max, passes nothing)
--   sojourn_set: the same for sojourn_ns, which a packet dropped before the driver lacks (it fails)
--   cgroup[0..n_cgroup): the task's cgroup id is one of them
--   comm[0..n_comm), dev[0..n_dev): the name equals one of them as a C string (both sides
--     NUL-padded to 16 bytes; filled here with zeros after the name)
--   saddr, daddr: the packet is IP and for some p[i]: p.family == l3 (4 or 6) and the first
--     p.bits bits of the address equal p.addr (network order, bits past p.bits zero)
--   host: saddr or daddr matches as above
-- A packet whose headers were not read or parsed counts as not IP and without L4: it fails
-- proto, saddr, daddr, host, sport, dport and port.

-- the sets list of the pushdown under way (nil: no map sets)
local map_sets

-- can the kernel check exactly this constraint?
local function representable(m, c)
    local kind = MEMBERS[m].kind
    if kind == "set" then
        local n = iv_count(c)
        local max = (map_sets and m ~= "cgroup") and SET_MAP_MAX or SET_MAX
        return n >= 1 and n <= max
    elseif kind == "range" then
        return #c <= 1 -- none: nothing passes (len_min > len_max)
    elseif kind == "names" then
        return #c >= 1 and #c <= SET_MAX
    end
    return #c >= 1 and #c <= PREFIX_MAX
end

-- a constraint the kernel can check that contains c (nil: none worth having)
local function relax(m, c)
    local kind = MEMBERS[m].kind
    if kind == "range" then
        local md = MEMBERS[m]
        local lo, hi = c[1][1], c[#c][2]
        if lo == md.lo and hi == md.hi then
            return nil -- would let everything through
        end
        return { { lo, hi } }
    elseif kind == "prefixes" and #c > 0 then
        -- merge the two prefixes of one family with the longest common part, until they fit
        local list = c
        while #list > PREFIX_MAX do
            local best_i, best_j, best_bits
            for i = 1, #list do
                for j = i + 1, #list do
                    local p, q = list[i], list[j]
                    if p.family == q.family then
                        local bits = min(p.bits, q.bits)
                        while mask_key(p.key, bits) ~= mask_key(q.key, bits) do
                            bits = bits - 1
                        end
                        if not best_bits or bits > best_bits then
                            best_i, best_j, best_bits = i, j, bits
                        end
                    end
                end
            end
            if not best_i then
                return nil
            end
            local p = list[best_i]
            local merged = { family = p.family, bits = best_bits, key = mask_key(p.key, best_bits) }
            local nxt = { merged }
            for k = 1, #list do
                if k ~= best_i and k ~= best_j then
                    nxt[#nxt + 1] = list[k]
                end
            end
            list = prefixes_norm(nxt)
        end
        return list
    end
    return nil
end

-- the part of cfg for member m is still empty (pushdown never overwrites a caller's setting)
local function member_free(cfg, m)
    local kind = MEMBERS[m].kind
    if MEMBERS[m].kind == "range" then -- len, sojourn: <m>_set, <m>_min, <m>_max
        return cfg[m .. "_set"] == 0
    elseif m == "cgroup" then
        return cfg.n_cgroup == 0
    elseif kind == "names" then
        return (m == "dev" and cfg.n_dev or cfg.n_comm) == 0
    end
    return cfg[m].n == 0
end

local function write_member(cfg, m, c)
    local kind = MEMBERS[m].kind
    if kind == "range" then
        cfg[m .. "_set"] = 1
        if #c == 0 then
            cfg[m .. "_min"], cfg[m .. "_max"] = 1, 0
        else
            cfg[m .. "_min"], cfg[m .. "_max"] = c[1][1], c[1][2]
        end
    elseif kind == "set" then
        local vals = {}
        for _, iv in ipairs(c) do
            for v = iv[1], iv[2] do
                vals[#vals + 1] = v
            end
        end
        if m == "cgroup" then
            cfg.n_cgroup = #vals
            for i, v in ipairs(vals) do
                cfg.cgroup[i - 1] = v
            end
        elseif #vals > SET_MAX then -- (representable: map_sets is there)
            cfg[m].n = SET_IN_MAP
            local off = ffi.offsetof(abi.config_t, m)
            for _, v in ipairs(vals) do
                map_sets[#map_sets + 1] = { off, v }
            end
        else
            local s = cfg[m]
            s.n = #vals
            for i, v in ipairs(vals) do
                s.v[i - 1] = v
            end
        end
    elseif kind == "names" then
        local arr = m == "dev" and cfg.dev or cfg.comm
        for i, name in ipairs(c) do
            ffi_fill(arr[i - 1], NAME_LEN)
            ffi_copy(arr[i - 1], name, #name)
        end
        if m == "dev" then
            cfg.n_dev = #c
        else
            cfg.n_comm = #c
        end
    else
        local s = cfg[m]
        s.n = #c
        for i, p in ipairs(c) do
            local e = s.p[i - 1]
            e.family, e.bits = p.family, p.bits
            e.pad[0], e.pad[1] = 0, 0
            for j = 0, 15 do
                e.addr[j] = byte(p.key, j + 2)
            end
        end
    end
end

-- choose what to push for member m from its entries ({ cons, conj = index | nil }, the exact
-- ones first); returns the constraint and the conjuncts it makes redundant
local function decide(m, entries)
    if MEMBERS[m].either then -- cannot intersect: one exact conjunct, else one implied one
        for _, e in ipairs(entries) do
            if representable(m, e.cons) then
                return e.cons, { e.conj }
            end
        end
        for _, e in ipairs(entries) do
            local r = relax(m, e.cons)
            if r then
                return r, {}
            end
        end
        return nil
    end
    local all = entries[1].cons
    for i = 2, #entries do
        all = intersect(m, all, entries[i].cons)
    end
    if representable(m, all) then
        local drops = {}
        for _, e in ipairs(entries) do
            drops[#drops + 1] = e.conj
        end
        return all, drops
    end
    local r = relax(m, all)
    if r then
        return r, {}
    end
    -- greedily: the conjuncts whose intersection the kernel can still check
    local cur, drops = nil, {}
    for _, e in ipairs(entries) do
        local cand = cur and intersect(m, cur, e.cons) or e.cons
        if representable(m, cand) then
            cur = cand
            drops[#drops + 1] = e.conj
        end
    end
    return cur, drops
end

local function needs(node, acc)
    if node.type == "cmp" then
        return bor(acc, by_name[node.field].need_bits)
    end
    for i = 1, #node do
        acc = needs(node[i], acc)
    end
    return acc
end

-- NDQ_NEED_* bits the fields of a tree need
function _M.needs(tree)
    return tree and needs(tree, 0) or 0
end

-- Fill cfg (a struct netdevq_config, its filter members empty or left alone) with what the
-- kernel can check of tree; returns the rest for Lua (nil: nothing left), the NEED bits every
-- field of the tree needs (also ORed into cfg.need), and the names of the members filled.
-- The kernel part is implied by the tree, and kernel part + remainder == tree.
function _M.pushdown(tree, cfg, sets)
    if tree == nil then
        return nil, 0, {}
    end
    map_sets = sets -- each pushdown sets it: representable() and write_member() read it

    local need = needs(tree, 0)
    cfg.need = bor(cfg.need, need)

    local root = nnf(tree, false)
    local conj = root.type == "and" and root or { root }
    local entries = {}
    for i, c in ipairs(conj) do
        local a = analyze(c)
        for m, cons in pairs(a.cons) do
            local list = entries[m] or { exact = {}, implied = {} }
            entries[m] = list
            local kind = a.exact == m and list.exact or list.implied
            kind[#kind + 1] = { cons = cons, conj = a.exact == m and i or nil }
        end
    end

    local dropped, pushed = {}, {}
    for _, m in ipairs(MEMBER_ORDER) do
        local list = entries[m]
        if list and member_free(cfg, m) then
            local all = {}
            for _, e in ipairs(list.exact) do all[#all + 1] = e end
            for _, e in ipairs(list.implied) do all[#all + 1] = e end
            local c, drops = decide(m, all)
            if c then
                write_member(cfg, m, c)
                pushed[#pushed + 1] = m
                for _, i in pairs(drops) do
                    dropped[i] = true
                end
            end
        end
    end

    -- comparisons on sk_buff member paths: each path has its own kernel check (netdevq.skbpath)
    for i, c in ipairs(conj) do
        local leaf, op = c, c.op
        if c.type == "not" then
            leaf, op = c[1], c[1].op == "==" and "~=" or nil
        end
        local row = leaf.type == "cmp" and by_name[leaf.field]
        if op and row and row.path and not dropped[i]
           and require("netdevq.skbpath").pushdown(cfg, row.path, op, leaf.value) then
            dropped[i] = true
        end
    end

    local rest = { type = "and" }
    for i, c in ipairs(conj) do
        if not dropped[i] then
            rest[#rest + 1] = c
        end
    end
    if #rest == 0 then
        return nil, need, pushed
    end
    return #rest == 1 and rest[1] or rest, need, pushed
end



return _M
