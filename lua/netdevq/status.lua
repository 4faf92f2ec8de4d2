-- netdevq.status: shows that a long run is alive — a status line on stderr, unless events
-- stream to a terminal (they show it themselves). On a terminal stderr one line is rewritten in
-- place every tick (second, or --interval) and erased before anything else is printed;
-- otherwise a plain line every --interval, or every PERIOD seconds:
--   netdevq: 12345 events/s now; 100 matched, 0 lost in all
-- The rate is over the last period; matched and lost are totals since the start.
local ffi = require("ffi")
local core = require("netdevq.core")

local format = string.format
local floor, max = math.floor, math.max
local io_stderr = io.stderr
local setmetatable = setmetatable

local PERIOD = 5 -- seconds between status lines on a stderr that is not a terminal

if not pcall(function() return ffi.C.ndq_status_isatty end) then
    ffi.cdef [[ int ndq_status_isatty(int fd) __asm__("isatty"); ]]
end
local function isatty(fd)
    return ffi.C.ndq_status_isatty(fd) == 1
end

local _M = {}
_M.isatty = isatty

local Status = {}
Status.__index = Status

-- args: the CLI's options (interval); print_events: events are written to stdout.
-- Returns nil when there is no status to show, else an object with :tick(tracer), :clear().
function _M.new(args, print_events)
    if print_events and isatty(1) then
        return nil
    end
    local rewrite = isatty(2)
    return setmetatable({
        rewrite = rewrite,
        every = (rewrite or args.interval) and 1 or PERIOD, -- in ticks
        ticks = 0,
        shown = false,
        last_events = 0,
        last_ns = core.monotonic_ns(),
    }, Status)
end

function Status:tick(t)
    self.ticks = self.ticks + 1
    if self.ticks % self.every ~= 0 then
        return
    end
    local st = t:stats()
    if not st then
        return
    end
    local now = core.monotonic_ns()
    local rate = (st.events - self.last_events) * 1e9 / max(now - self.last_ns, 1)
    self.last_events, self.last_ns = st.events, now
    local line = format("netdevq: %d events/s now; %d matched, %d lost in all", floor(rate + 0.5),
        st.matched, st.lost)
    if self.rewrite then
        io_stderr:write("\r\27[K", line)
        self.shown = true
    else
        io_stderr:write(line, "\n")
    end
    io_stderr:flush()
end

function Status:clear()
    if self.shown then
        io_stderr:write("\r\27[K")
        io_stderr:flush()
        self.shown = false
    end
end

return _M
