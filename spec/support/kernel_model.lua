--- spec/support/kernel_model.lua: the kernel filter of bpf/netdevq.bpf.c, mirrored in Lua, over
-- decoded events (tables of field values, as spec/fixtures/traffic.lua and ev:totable() give),
-- and a one-line account of a config's kernel part for failure messages.
--
--   kernel_model(cfg, ev, sets) -> boolean: what the kernel filter decides for ev (sets: the
--                             { off, v } list pushdown filled for the sets kept in the map)
--   kernel_summary(cfg)   -> "pid in {1}; dport in {53}"
local ffi = require("ffi")
local bit = require("bit")
local abi = require("netdevq.abi")
local ndq_names = require("netdevq.names")

local band, lshift = bit.band, bit.lshift
local byte, char, sub, find, match, format = string.byte, string.char, string.sub, string.find,
    string.match, string.format
local concat = table.concat
local ffi_string = ffi.string
local addr_key, prefix_text = ndq_names.addr_key, ndq_names.prefix_text
local NAME_LEN = abi.IFNAME_LEN

local _M = {}

---------------------------------------------------------------------------------------------
-- The kernel filter, mirrored in Lua
---------------------------------------------------------------------------------------------

-- the map "sets" of the config being modelled: ["off v"] = true
local map_sets, model_cfg = {}, nil

local function in_u32_set(s, v)
    local n = s.n
    if n == 0 then
        return true
    end
    if v == nil then
        return false
    end
    if n == abi.SET_IN_MAP then -- looked up by the set's offset in the config, as the kernel does
        local off = tonumber(ffi.cast("char *", s) - ffi.cast("char *", model_cfg))
        return map_sets[off .. " " .. v] == true
    end
    for i = 0, n - 1 do
        if s.v[i] == v then
            return true
        end
    end
    return false
end

-- a 16-byte config name against a decoded name, as C strings
local function in_names(arr, n, have)
    if n == 0 then
        return true
    end
    for i = 0, n - 1 do
        local want = ffi_string(arr[i], NAME_LEN)
        local stop = find(want, "\0", 1, true)
        if stop then
            want = sub(want, 1, stop - 1)
        end
        if want == have then
            return true
        end
    end
    return false
end

local function prefix_match(p, key)
    if key == nil or p.family ~= byte(key, 1) then
        return false
    end
    for i = 0, 15 do
        local bits = p.bits - i * 8
        if bits <= 0 then
            break
        end
        local mask = bits >= 8 and 0xff or band(lshift(0xff, 8 - bits), 0xff)
        if band(byte(key, i + 2), mask) ~= p.addr[i] then
            return false
        end
    end
    return true
end

local function in_prefix_set(s, key)
    for i = 0, s.n - 1 do
        if prefix_match(s.p[i], key) then
            return true
        end
    end
    return false
end

-- What bpf/netdevq.bpf.c's filter decides for the decoded event ev (true: it passes).
-- l3 is the family of ev.saddr (0 without), L4 is "sport and dport present", an absent
-- ethertype is 0.
function _M.kernel_model(cfg, ev, sets)
    model_cfg, map_sets = cfg, {}
    for _, kv in ipairs(sets or {}) do
        map_sets[kv[1] .. " " .. kv[2]] = true
    end
    if not (in_u32_set(cfg.pid, ev.pid) and in_u32_set(cfg.tid, ev.tid)
            and in_names(cfg.comm, cfg.n_comm, ev.comm)) then
        return false
    end
    if cfg.len_set ~= 0 and (ev.len < cfg.len_min or ev.len > cfg.len_max) then
        return false
    end
    -- sojourn: checked when the packet's fate is known; absent (a drop) fails
    if cfg.sojourn_set ~= 0 and (ev.sojourn_ns == nil or ev.sojourn_ns < cfg.sojourn_min
                                 or ev.sojourn_ns > cfg.sojourn_max) then
        return false
    end
    if not (in_u32_set(cfg.mark, ev.mark) and in_u32_set(cfg.queue, ev.queue)
            and in_u32_set(cfg.priority, ev.priority) and in_u32_set(cfg.ifindex, ev.ifindex)
            and in_names(cfg.dev, cfg.n_dev, ev.dev) and in_u32_set(cfg.netns, ev.netns)
            and in_u32_set(cfg.ethertype, ndq_names.ethertype_number(ev.ethertype) or 0)) then
        return false
    end
    local skey = ev.saddr and addr_key(ev.saddr)
    local dkey = ev.daddr and addr_key(ev.daddr)
    local l3 = skey and byte(skey, 1) or 0
    if cfg.proto.n ~= 0 and (l3 == 0 or not in_u32_set(cfg.proto, ndq_names.proto_number(ev.proto))) then
        return false
    end
    if cfg.saddr.n ~= 0 and not in_prefix_set(cfg.saddr, skey) then
        return false
    end
    if cfg.daddr.n ~= 0 and not in_prefix_set(cfg.daddr, dkey) then
        return false
    end
    if cfg.host.n ~= 0 and not in_prefix_set(cfg.host, skey)
       and not in_prefix_set(cfg.host, dkey) then
        return false
    end
    local l4 = ev.sport ~= nil and ev.dport ~= nil
    if cfg.sport.n ~= 0 and (not l4 or not in_u32_set(cfg.sport, ev.sport)) then
        return false
    end
    if cfg.dport.n ~= 0 and (not l4 or not in_u32_set(cfg.dport, ev.dport)) then
        return false
    end
    if cfg.port.n ~= 0 and (not l4 or (not in_u32_set(cfg.port, ev.sport)
                                       and not in_u32_set(cfg.port, ev.dport))) then
        return false
    end
    if cfg.n_cgroup ~= 0 then
        local found = false
        for i = 0, cfg.n_cgroup - 1 do
            if cfg.cgroup[i] == ev.cgroup then
                found = true
                break
            end
        end
        if not found then
            return false
        end
    end
    return true
end


---------------------------------------------------------------------------------------------
-- A one-line account of the kernel part (for -v)
---------------------------------------------------------------------------------------------

function _M.kernel_summary(cfg)
    local parts = {}
    local function set(name, s, fmt)
        if s.n == abi.SET_IN_MAP then
            parts[#parts + 1] = name .. " in the map"
        elseif s.n ~= 0 then
            local vals = {}
            for i = 0, s.n - 1 do
                vals[#vals + 1] = format(fmt or "%d", s.v[i])
            end
            parts[#parts + 1] = name .. " in {" .. concat(vals, ", ") .. "}"
        end
    end
    local function names(name, arr, n)
        if n ~= 0 then
            local vals = {}
            for i = 0, n - 1 do
                vals[#vals + 1] = format("%q", (match(ffi_string(arr[i], NAME_LEN), "^[^%z]*")))
            end
            parts[#parts + 1] = name .. " in {" .. concat(vals, ", ") .. "}"
        end
    end
    local function prefixes(name, s)
        if s.n ~= 0 then
            local vals = {}
            for i = 0, s.n - 1 do
                local p = s.p[i]
                local key = char(p.family) .. ffi_string(p.addr, 16)
                vals[#vals + 1] = prefix_text({ family = p.family, bits = p.bits, key = key })
            end
            parts[#parts + 1] = name .. " in {" .. concat(vals, ", ") .. "}"
        end
    end
    set("pid", cfg.pid)
    set("tid", cfg.tid)
    names("comm", cfg.comm, cfg.n_comm)
    if cfg.len_set ~= 0 then
        parts[#parts + 1] = format("len %d..%d", cfg.len_min, cfg.len_max)
    end
    if cfg.sojourn_set ~= 0 then
        parts[#parts + 1] = format("sojourn_ns %.0f..%.0f", tonumber(cfg.sojourn_min),
                                   tonumber(cfg.sojourn_max))
    end
    set("mark", cfg.mark)
    set("queue", cfg.queue)
    set("priority", cfg.priority)
    set("ifindex", cfg.ifindex)
    names("dev", cfg.dev, cfg.n_dev)
    set("netns", cfg.netns)
    set("ethertype", cfg.ethertype, "0x%04x")
    set("proto", cfg.proto)
    prefixes("saddr", cfg.saddr)
    prefixes("daddr", cfg.daddr)
    prefixes("host", cfg.host)
    set("sport", cfg.sport)
    set("dport", cfg.dport)
    set("port", cfg.port)
    if cfg.n_cgroup ~= 0 then
        local vals = {}
        for i = 0, cfg.n_cgroup - 1 do
            vals[#vals + 1] = tostring(tonumber(cfg.cgroup[i]))
        end
        parts[#parts + 1] = "cgroup in {" .. concat(vals, ", ") .. "}"
    end
    return concat(parts, "; ")
end


return _M

