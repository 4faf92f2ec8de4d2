--- spec/support/decoded.lua: filter.compile getters for decoded events (tables of field values,
-- as spec/fixtures/traffic.lua and ev:totable() give), so that the raw-value matcher the tracer
-- runs on event records can be checked against recorded and live events.
--
--   filter.compile(tree, decoded.getters)
local ffi = require("ffi")
local catalogue = require("netdevq.catalogue")
local names = require("netdevq.names")

local _M = {}

local TO_RAW = {
    protocol = names.proto_number,
    ethertype = names.ethertype_number,
    flags = names.tcp_flags_number,
}

local key_bytes = {}

-- "198.18.0.1" -> 4, bytes; absent -> 0
local function address(text)
    local key = text and names.addr_key(text)
    if not key then
        return 0, nil
    end
    local b = key_bytes[key]
    if not b then
        b = ffi.new("uint8_t[16]")
        ffi.copy(b, key:sub(2), 16)
        key_bytes[key] = b
    end
    return key:byte(1), b
end

_M.getters = setmetatable({}, { __index = function(t, name)
    local field = catalogue.by_name[name]
    if not field then
        return nil
    end
    local fn
    if field.type == "address" then
        fn = function(ev) return address(ev[name]) end
    elseif TO_RAW[field.type] then
        local conv = TO_RAW[field.type]
        fn = function(ev)
            local v = ev[name]
            if v ~= nil then return conv(v) end
        end
    else
        fn = function(ev) return ev[name] end
    end
    rawset(t, name, fn)
    return fn
end })

return _M
