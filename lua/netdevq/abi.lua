-- netdevq.abi: the ABI of bpf/netdevq.h, declared to the LuaJIT FFI exactly once.
--
-- The header text comes from the C module (netdevq.core.HEADER, the very text it was compiled
-- with) when it loads, else from bpf/netdevq.h next to this source tree, so that unit specs run
-- before anything is built. Its '#' lines are dropped (LuaJIT's C parser has no preprocessor)
-- and the kernel's fixed-width typedefs are put in front.
local ffi = require("ffi")
local bit = require("bit")

local ffi_typeof = ffi.typeof
local ffi_cdef = ffi.cdef
local ffi_C = ffi.C
local io_open = io.open
local pcall = pcall
local require = require
local error = error
local type = type
local bor = bit.bor
local concat = table.concat


local _M = {}


local TYPEDEFS = [[
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
typedef int8_t __s8;
typedef int16_t __s16;
typedef int32_t __s32;
typedef int64_t __s64;
typedef uint16_t __be16;
typedef uint32_t __be32;
]]


local function header_path()
    local source = debug.getinfo(1, "S").source
    if source:sub(1, 1) ~= "@" then
        return nil
    end
    local dir = source:sub(2):match("^(.*)[/\\]") or "."
    return dir .. "/../../bpf/netdevq.h"
end


local function header_text()
    local ok, core = pcall(require, "netdevq.core")
    if ok and type(core) == "table" and type(core.HEADER) == "string" then
        return core.HEADER, "netdevq.core.HEADER"
    end

    local path = header_path()
    if not path then
        return nil, "netdevq.abi: netdevq.core is not available and this file's path is unknown"
    end
    local f, err = io_open(path, "r")
    if not f then
        return nil, "netdevq.abi: netdevq.core is not built and " .. err
                    .. "; build the C module or run from the source tree"
    end
    local text = f:read("*a")
    f:close()
    return text, path
end


local function strip_preprocessor(text)
    local out, n = {}, 0
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
        if not line:match("^%s*#") then
            n = n + 1
            out[n] = line
        end
    end
    return concat(out, "\n")
end


-- Declared already (a second copy of this module after package.loaded was cleared, as busted's
-- insulation does): the FFI keeps its declarations for the life of the process, and declaring the
-- enums again would raise "attempt to redefine".
if not pcall(ffi_typeof, "struct netdevq_event") then
    local text, where = header_text()
    if not text then
        error(where)
    end
    local ok, err = pcall(ffi_cdef, TYPEDEFS .. strip_preprocessor(text))
    if not ok then
        error("netdevq.abi: cannot declare the ABI from " .. where .. ": " .. err)
    end
end


_M.event_t = ffi_typeof("struct netdevq_event")
_M.event_ptr_t = ffi_typeof("const struct netdevq_event *")
_M.config_t = ffi_typeof("struct netdevq_config")
_M.agg_key_t = ffi_typeof("struct netdevq_agg_key")
_M.agg_value_t = ffi_typeof("struct netdevq_agg_value")

_M.EVENT_SIZE = ffi.sizeof(_M.event_t)

-- Limits.
_M.COMM_LEN = ffi_C.NDQ_COMM_LEN
_M.IFNAME_LEN = ffi_C.NDQ_IFNAME_LEN
_M.SNAP_MAX = ffi_C.NDQ_SNAP_MAX
_M.SET_MAX = ffi_C.NDQ_SET_MAX
_M.SET_IN_MAP = ffi_C.NDQ_SET_IN_MAP   -- netdevq_u32_set.n of a set kept in the map "sets"
_M.SET_MAP_MAX = ffi_C.NDQ_SET_MAP_MAX
_M.PREFIX_MAX = ffi_C.NDQ_PREFIX_MAX
_M.AGG_KEYS_MAX = ffi_C.NDQ_AGG_KEYS_MAX
_M.AGG_KEY_SLOT = ffi_C.NDQ_AGG_KEY_SLOT
_M.AGG_SLOTS = ffi_C.NDQ_AGG_SLOTS

-- struct netdevq_field_loc kinds.
_M.LOC = {
    NUMBER = ffi_C.NDQ_LOC_NUMBER,
    BYTES = ffi_C.NDQ_LOC_BYTES,
    ADDRESS = ffi_C.NDQ_LOC_ADDRESS,
    IPV4 = ffi_C.NDQ_LOC_IPV4,
}

-- netdevq_config.need bits.
_M.NEED = {
    HEADERS = ffi_C.NDQ_NEED_HEADERS,
    NETNS = ffi_C.NDQ_NEED_NETNS,
    GSO = ffi_C.NDQ_NEED_GSO,
    CGROUP = ffi_C.NDQ_NEED_CGROUP,
    TASK = ffi_C.NDQ_NEED_TASK,
    DEV = ffi_C.NDQ_NEED_DEV,
    TS = ffi_C.NDQ_NEED_TS,
    OWNER = ffi_C.NDQ_NEED_OWNER,
    ALL = ffi_C.NDQ_NEED_ALL,
    LATENCY = ffi_C.NDQ_NEED_LATENCY, -- not in ALL: only asked for
    L4 = ffi_C.NDQ_NEED_L4, -- not in ALL: HEADERS covers it
}

-- netdevq_event.flags bits.
_M.EV = {
    MAC = ffi_C.NDQ_EV_MAC,
    L4 = ffi_C.NDQ_EV_L4,
    TCP = ffi_C.NDQ_EV_TCP,
    FRAG = ffi_C.NDQ_EV_FRAG,
    ICMP = ffi_C.NDQ_EV_ICMP,
    VLAN = ffi_C.NDQ_EV_VLAN,
    VLAN_HW = ffi_C.NDQ_EV_VLAN_HW,
    IPFRAG = ffi_C.NDQ_EV_IPFRAG,
    IP6 = ffi_C.NDQ_EV_IP6,
    ARP = ffi_C.NDQ_EV_ARP,
    OWNER = ffi_C.NDQ_EV_OWNER,
    XMIT = ffi_C.NDQ_EV_XMIT,
    XMIT_DONE = ffi_C.NDQ_EV_XMIT_DONE,
    DROP = ffi_C.NDQ_EV_DROP,
}

-- Per-CPU counter indexes (array map "counters").
_M.CNT = {
    SEEN = ffi_C.NDQ_CNT_SEEN,
    KFILTERED = ffi_C.NDQ_CNT_KFILTERED,
    EMITTED = ffi_C.NDQ_CNT_EMITTED,
    LOST = ffi_C.NDQ_CNT_LOST,
    AGGREGATED = ffi_C.NDQ_CNT_AGGREGATED,
    AGG_OVERFLOW = ffi_C.NDQ_CNT_AGG_OVERFLOW,
    READ_FAILED = ffi_C.NDQ_CNT_READ_FAILED,
    HELD = ffi_C.NDQ_CNT_HELD,
    MAX = ffi_C.NDQ_CNT_MAX,
}

-- netdevq_config.agg_hist.
_M.HIST = {
    NONE = ffi_C.NDQ_HIST_NONE,
    LOG2 = ffi_C.NDQ_HIST_LOG2,
    LINEAR = ffi_C.NDQ_HIST_LINEAR,
}

-- Sanity: the NEED bits really do cover NEED_ALL (a header edit that adds a bit must add it here).
if bor(_M.NEED.HEADERS, _M.NEED.NETNS, _M.NEED.GSO, _M.NEED.CGROUP, _M.NEED.TASK, _M.NEED.DEV,
       _M.NEED.TS, _M.NEED.OWNER) ~= _M.NEED.ALL then
    error("netdevq.abi: NDQ_NEED_ALL has bits this module does not know; update abi.lua")
end


return _M
