-- netdevq.clock: event timestamps (CLOCK_MONOTONIC ns, bpf_ktime_get_ns) to wall-clock time.
--
-- The offset CLOCK_REALTIME - CLOCK_MONOTONIC is measured once at load; calibrate() measures it
-- again (after a clock step, say) or sets it (to replay recorded events). ts values are __u64:
-- unix_time() splits them exactly, so no precision is lost on the way to text or pcapng.
local ffi = require("ffi")

local ffi_new = ffi.new
local ffi_string = ffi.string
local format = string.format
local os_date = os.date
local floor = math.floor
local type = type
local tonumber = tonumber
local error = error
local assert = assert
local pcall = pcall
local C = ffi.C

-- Own names (asm redirects): no clash with another module's declaration of the libc ones.
if not pcall(ffi.typeof, "ndq_clock_timespec") then
    ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } ndq_clock_timespec;
int ndq_clock_gettime(int clk_id, ndq_clock_timespec *tp) __asm__("clock_gettime");
char *ndq_clock_strerror(int errnum) __asm__("strerror");
]]
end

local CLOCK_REALTIME = 0
local CLOCK_MONOTONIC = 1
local NS_PER_SEC = 1000000000
local NS_PER_SEC_U64 = 1000000000ULL
local u64_t = ffi.typeof("uint64_t")


local _M = {}


local off_sec, off_nsec = 0, 0          -- CLOCK_REALTIME - CLOCK_MONOTONIC, 0 <= off_nsec < 1e9
local ts_a = ffi_new("ndq_clock_timespec")
local ts_b = ffi_new("ndq_clock_timespec")
local ts_m = ffi_new("ndq_clock_timespec")

local function set_offset(offset_ns)
    local t = type(offset_ns)
    if t == "number" then
        off_sec = floor(offset_ns / NS_PER_SEC)
        off_nsec = offset_ns - off_sec * NS_PER_SEC
    elseif t == "cdata" then
        local v = ffi_new("int64_t", offset_ns)
        local s = v / NS_PER_SEC
        local r = v - s * NS_PER_SEC
        if r < 0 then
            s, r = s - 1, r + NS_PER_SEC
        end
        off_sec, off_nsec = tonumber(s), tonumber(r)
    else
        error("calibrate: offset_ns must be a number or an integer cdata", 3)
    end
    return off_sec, off_nsec
end

-- calibrate(): measure realtime - monotonic (the best of a few samples, each the monotonic
-- reading bracketed by two realtime readings). calibrate(offset_ns): set it. Returns the offset
-- as seconds, nanoseconds.
function _M.calibrate(offset_ns)
    if offset_ns ~= nil then
        return set_offset(offset_ns)
    end
    local best_gap
    for _ = 1, 5 do
        if C.ndq_clock_gettime(CLOCK_REALTIME, ts_a) ~= 0
                or C.ndq_clock_gettime(CLOCK_MONOTONIC, ts_m) ~= 0
                or C.ndq_clock_gettime(CLOCK_REALTIME, ts_b) ~= 0 then
            return nil, "clock_gettime failed: " .. ffi_string(C.ndq_clock_strerror(ffi.errno()))
        end
        local a_sec, a_nsec = tonumber(ts_a.tv_sec), tonumber(ts_a.tv_nsec)
        local gap = (tonumber(ts_b.tv_sec) - a_sec) * NS_PER_SEC + tonumber(ts_b.tv_nsec) - a_nsec
        if not best_gap or gap < best_gap then
            best_gap = gap
            local s = a_sec - tonumber(ts_m.tv_sec)
            local ns = a_nsec + floor(gap / 2) - tonumber(ts_m.tv_nsec)
            s = s + floor(ns / NS_PER_SEC)
            off_sec, off_nsec = s, ns % NS_PER_SEC
        end
    end
    return off_sec, off_nsec
end

assert(_M.calibrate())


-- CLOCK_MONOTONIC now, in ns (a number), through the FFI: a compiled call (core.monotonic_ns,
-- a C function, ends a JIT trace wherever it is called)
local ts_now = ffi_new("ndq_clock_timespec")
function _M.monotonic_ns()
    C.ndq_clock_gettime(CLOCK_MONOTONIC, ts_now)
    return tonumber(ts_now.tv_sec) * NS_PER_SEC + tonumber(ts_now.tv_nsec)
end

-- ts (u64 cdata or number, CLOCK_MONOTONIC ns) -> unix seconds, nanoseconds (both numbers)
local function unix_time(ts)
    local sec, nsec
    if type(ts) == "number" then
        sec = floor(ts / NS_PER_SEC)
        nsec = ts - sec * NS_PER_SEC
    else
        sec = tonumber(ts / NS_PER_SEC_U64)
        nsec = tonumber(ts % NS_PER_SEC_U64)
    end
    sec, nsec = sec + off_sec, nsec + off_nsec
    if nsec >= NS_PER_SEC then
        sec, nsec = sec + 1, nsec - NS_PER_SEC
    end
    return sec, nsec
end
_M.unix_time = unix_time

-- ts -> unix time in ns as a uint64_t cdata (exact; what pcapng and JSON's time_ns want)
function _M.unix_ns(ts)
    local sec, nsec = unix_time(ts)
    return u64_t(sec) * NS_PER_SEC_U64 + nsec
end

local hms_sec, hms_text = nil, nil   -- one os.date per second of events, not per event

-- ts -> "HH:MM:SS.uuuuuu", local time (like tcpdump)
function _M.format_time(ts)
    local sec, nsec = unix_time(ts)
    if sec ~= hms_sec then
        hms_sec, hms_text = sec, os_date("%H:%M:%S", sec)
    end
    return format("%s.%06d", hms_text, floor(nsec / 1000))
end

-- "000" .. "999": digits put three at a time, so that the text writers' per-event time makes
-- no string (format_time's "%06d" and rfc3339's "%09d", written into a string.buffer)
local D3 = {}
for i = 0, 999 do
    D3[i] = format("%03d", i)
end

-- format_time(ts), appended to buf (a string.buffer)
function _M.put_time(buf, ts)
    local sec, nsec = unix_time(ts)
    if sec ~= hms_sec then
        hms_sec, hms_text = sec, os_date("%H:%M:%S", sec)
    end
    local us = floor(nsec / 1000)
    local ms = floor(us / 1000)
    buf:put(hms_text, ".", D3[ms], D3[us - ms * 1000])
end

local date_sec, date_text = nil, nil

-- unix seconds, nanoseconds -> RFC 3339 in UTC with nanoseconds: "2026-11-30T19:41:30.123456789Z"
local function rfc3339(sec, nsec)
    if sec ~= date_sec then
        date_sec, date_text = sec, os_date("!%Y-%m-%dT%H:%M:%S", sec)
    end
    return format("%s.%09dZ", date_text, nsec)
end
_M.rfc3339 = rfc3339

-- ts -> RFC 3339 UTC text of the event (what JSON lines carry as "date")
function _M.format_date(ts)
    return rfc3339(unix_time(ts))
end

-- format_date(ts), appended to buf (a string.buffer)
function _M.put_date(buf, ts)
    local sec, nsec = unix_time(ts)
    if sec ~= date_sec then
        date_sec, date_text = sec, os_date("!%Y-%m-%dT%H:%M:%S", sec)
    end
    local us = floor(nsec / 1000)
    local ms = floor(us / 1000)
    buf:put(date_text, ".", D3[ms], D3[us - ms * 1000], D3[nsec - us * 1000], "Z")
end

-- now, as RFC 3339 UTC text (interval and summary lines)
function _M.now_rfc3339()
    C.ndq_clock_gettime(CLOCK_REALTIME, ts_a)
    return rfc3339(tonumber(ts_a.tv_sec), tonumber(ts_a.tv_nsec))
end


return _M
