-- bench/stream.lua MODE MAX_SECONDS [FIELDS [FILTER [READ]]]
--
-- netdevq streaming every event to a Lua callback that only counts, through the public API
-- (netdevq.open + on_event + run), as a user script would. MODE is raw or btf; FIELDS is a comma
-- list handed to open{fields=} ("all" or "" = the default: every field, so the kernel parses all
-- of it; "all-A,B": every field the default reads but A and B); FILTER is an open{filter=}
-- expression (the kernel part is pushed down); READ is open{read=}: auto (default), direct or
-- probe.
--
-- stderr, once attached:  bench: attached prog_id=N
-- stdout, at the end:     seen=N kfiltered=N emitted=N lost=N received=N delivered=N
-- Runs until SIGTERM/SIGINT or MAX_SECONDS, then drains what the kernel already handed over.
local here = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."
package.path = here .. "/lua/?.lua;" .. here .. "/lua/?/init.lua;" .. package.path
package.cpath = here .. "/build/?.so;" .. package.cpath

local netdevq = require("netdevq")

local mode, max_seconds = arg[1], tonumber(arg[2] or "")
local field_list, filter, read = arg[3], arg[4], arg[5]
if not mode or not max_seconds then
    io.stderr:write("usage: luajit bench/stream.lua raw|btf MAX_SECONDS [FIELDS [FILTER [READ]]]\n")
    os.exit(2)
end
local fields
if field_list and field_list:match("^all%-") then
    -- "all-ts,time": every field the default reads (all but the fate fields), but these
    local catalogue, abi = require("netdevq.catalogue"), require("netdevq.abi")
    local bit = require("bit")
    local drop = {}
    for name in field_list:sub(5):gmatch("[^,]+") do
        drop[name] = true
    end
    fields = {}
    for _, name in ipairs(catalogue.names) do
        if not drop[name] and bit.band(catalogue.needs({ name }), abi.NEED.LATENCY) == 0 then
            fields[#fields + 1] = name
        end
    end
elseif field_list and field_list ~= "" and field_list ~= "all" then
    fields = {}
    for name in field_list:gmatch("[^,]+") do
        fields[#fields + 1] = name
    end
end
if filter == "" then
    filter = nil
end
if read == "" then
    read = nil
end

netdevq.catch_signals()
local t, err = netdevq.open{ mode = mode, fields = fields, filter = filter, read = read }
if not t then
    io.stderr:write("bench: ", tostring(err), "\n")
    os.exit(1)
end

local delivered = 0
t:on_event(function()
    delivered = delivered + 1
end)

local ps = assert(t.t:prog_stats())
io.stderr:write(string.format("bench: attached prog_id=%d\n", ps.id))
io.stderr:flush()

local _, rerr = t:run{ duration = max_seconds, poll_ms = 100 }
if rerr then
    io.stderr:write("bench: ", tostring(rerr), "\n")
end
-- what the kernel handed over before the stop still counts
repeat
    local n = t:poll(0)
until not n or n == 0

local s = assert(t:stats())
io.stdout:write(string.format("seen=%d kfiltered=%d emitted=%d lost=%d received=%d delivered=%d\n",
    s.seen, s.kfiltered, s.emitted, s.lost, s.received, delivered))
t:close()
