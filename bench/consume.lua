-- bench/consume.lua [SECONDS]
--
-- Lua-side consumption rate, no kernel in the loop: a synthetic batch of struct netdevq_event
-- (filled through the FFI, like the C module's batch) is handed again and again to the real
-- Tracer:poll of lua/netdevq/init.lua through a fake core object, so the measured path is the
-- one the tracer runs: batch pointer -> FFI cast -> fields view -> every on_event callback.
-- (open{attach = false} loads the BPF object once, to get a genuine Tracer; its core is closed
-- and replaced by the fake before anything is measured.)
--
-- stdout, one line per callback kind:
--   consume KIND events=N seconds=S eps=N cpu_eps=N bytes_per_event=N
--   count        callback increments a counter
--   format       callback builds the default text line as a string (output.text():format)
--   format+write the default text line written to /dev/null the way the CLI writes it: a
--                buffered writer (output.text{ buffered = true }) flushed after every poll
--   json         the same with the JSON writer and every field (the CLI's -F json)
--   aggregate    a Lua aggregation, count by comm (netdevq.aggregate.feeder)
-- eps: events over the whole wall-clock time. cpu_eps: the best of several rounds, events over
-- the process's CPU time in that round (other work on the machine slows the wall clock, not
-- this). bytes_per_event: what the Lua heap grew by per event over a round with the collector
-- stopped (0: the path allocates nothing per event).
-- Then one line per target of issue 12:  target PASS|FAIL|report TEXT
local here = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."
package.path = here .. "/lua/?.lua;" .. here .. "/lua/?/init.lua;" .. package.path
package.cpath = here .. "/build/?.so;" .. package.cpath

local ffi = require("ffi")
local netdevq = require("netdevq")
local abi = require("netdevq.abi")
local output = require("netdevq.output")

local monotonic_ns = netdevq.core.monotonic_ns
local seconds = tonumber(arg[1] or "") or 1.5
local ROUNDS = 5
local BATCH = 4096 -- the C module's default batch

-- A batch that looks like the flood: UDP over lo from ndq_send, and its ICMP replies.
local batch = ffi.new("struct netdevq_event[?]", BATCH)
local base_ts = monotonic_ns()
for i = 0, BATCH - 1 do
    local e = batch[i]
    e.ts = base_ts + i * 2000
    e.skb = 0xffff888012340000ULL + i * 256
    e.pid, e.tid, e.cpu, e.ifindex = 4242, 4242, i % 2, 1
    e.netns = 4026531840
    e.ethertype, e.dev_type, e.l3 = 0x0800, 772, 4
    e.mac_len, e.ttl, e.flags = 14, 64, abi.EV.MAC
    ffi.copy(e.comm, "ndq_send")
    ffi.copy(e.dev, "lo")
    e.saddr[0], e.saddr[1], e.saddr[2], e.saddr[3] = 127, 0, 0, 1
    e.daddr[0], e.daddr[1], e.daddr[2], e.daddr[3] = 127, 0, 0, 1
    if i % 2 == 0 then
        e.proto, e.len = 17, 106
        e.sport, e.dport = 40000 + i % 1000, 9
        e.flags = abi.EV.MAC + abi.EV.L4
    else
        e.proto, e.len = 1, 134 -- ICMP port unreachable
    end
end

local fake_core = {}
function fake_core.poll()
    return BATCH, batch
end
function fake_core.close() end

local tr = assert(netdevq.open{ attach = false })
tr.t:close()
tr.t = fake_core

-- one round: whole batches for `round_s`; returns events, wall seconds, CPU seconds
local function round(round_s, after_poll)
    local delivered = 0
    local c0 = os.clock()
    local t0 = monotonic_ns()
    local deadline = t0 + round_s * 1e9
    local now
    repeat
        for _ = 1, 16 do
            delivered = delivered + tr:poll(0)
            if after_poll then
                after_poll()
            end
        end
        now = monotonic_ns()
    until now >= deadline
    return delivered, (now - t0) / 1e9, os.clock() - c0
end

-- heap growth per event over 16 polls with the collector stopped
local function bytes_per_event(after_poll)
    collectgarbage()
    collectgarbage("stop")
    local before = collectgarbage("count")
    local n = 0
    for _ = 1, 16 do
        n = n + tr:poll(0)
        if after_poll then
            after_poll()
        end
    end
    local grown = (collectgarbage("count") - before) * 1024
    collectgarbage("restart")
    return grown / n
end

local results = {}
local function measure(kind, cb, after_poll)
    tr.callbacks, tr.ncallbacks = { cb }, 1
    tr.matched = 0
    -- warm up (JIT traces), then ROUNDS rounds over about `seconds`
    for _ = 1, 50 do
        tr:poll(0)
        if after_poll then
            after_poll()
        end
    end
    local events, wall, best = 0, 0, 0
    for _ = 1, ROUNDS do
        local n, w, c = round(seconds / ROUNDS, after_poll)
        events, wall = events + n, wall + w
        if c > 0 and n / c > best then
            best = n / c
        end
    end
    local bytes = bytes_per_event(after_poll)
    results[kind] = { eps = events / wall, cpu_eps = best, bytes = bytes }
    io.stdout:write(string.format("consume %s events=%d seconds=%.3f eps=%.0f cpu_eps=%.0f "
                                  .. "bytes_per_event=%.1f\n", kind, events, wall, events / wall,
                                  best, bytes))
    io.stdout:flush()
end

local counted = 0
measure("count", function()
    counted = counted + 1
end)

local writer = output.text{}
local last
measure("format", function(ev)
    last = writer:format(ev)
end)

local null = assert(io.open("/dev/null", "w"))
local null_writer = output.text{ file = null, buffered = true }
measure("format+write", function(ev)
    null_writer:event(ev)
end, function()
    assert(null_writer:flush())
end)

local json_writer = output.json{ file = null, buffered = true }
measure("json", function(ev)
    json_writer:event(ev)
end, function()
    assert(json_writer:flush())
end)
null:close()
assert(counted > 0 and #last > 0)

local by_comm = require("netdevq.aggregate").count{ keys = { "comm" } }
measure("aggregate", require("netdevq.aggregate").feeder(by_comm, { "comm" }))

-- Targets (issue 12): rates per CPU second, the best round
local function target(verdict, text)
    io.stdout:write("target ", verdict, " ", text, "\n")
end
local function thousands(n)
    return (string.format("%.0f", n):reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", ""))
end
local fw, ff = results["format+write"], results.format
target(fw.cpu_eps >= 3e6 and "PASS" or "FAIL",
       string.format("Lua text lines, the CLI's way (buffered, to /dev/null): %s lines/s "
                     .. "(>= 3,000,000); as strings (format): %s lines/s", thousands(fw.cpu_eps),
                     thousands(ff.cpu_eps)))
target("report", string.format("Lua counting callback: %s events/s (84,600,000 measured "
                               .. "before issue 12's features)", thousands(results.count.cpu_eps)))
target("report", string.format("Lua JSON lines, every field (buffered, to /dev/null): %s lines/s",
                               thousands(results.json.cpu_eps)))
target("report", string.format("Lua aggregation (count by comm, fed from the view): %s events/s",
                               thousands(results.aggregate.cpu_eps)))
target("report", string.format("Lua heap bytes per event: count %.1f, format %.1f, "
                               .. "format+write %.1f, json %.1f", results.count.bytes, ff.bytes,
                               fw.bytes, results.json.bytes))
