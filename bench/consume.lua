-- bench/consume.lua [SECONDS]
--
-- Lua-side consumption rate, no kernel in the loop: a synthetic batch of struct netdevq_event
-- (filled through the FFI, like the C module's batch) is handed again and again to the real
-- Tracer:poll of lua/netdevq/init.lua through a fake core object, so the measured path is the
-- one the tracer runs: batch pointer -> FFI cast -> fields view -> every on_event callback.
-- (open{attach = false} loads the BPF object once, to get a genuine Tracer; its core is closed
-- and replaced by the fake before anything is measured.)
--
-- stdout, one line per callback kind:  consume KIND events=N seconds=S eps=N
--   count        callback increments a counter
--   format       callback builds the default text line (output.text():format)
--   format+write the same line written to /dev/null (what the CLI does per event)
local here = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."
package.path = here .. "/lua/?.lua;" .. here .. "/lua/?/init.lua;" .. package.path
package.cpath = here .. "/build/?.so;" .. package.cpath

local ffi = require("ffi")
local netdevq = require("netdevq")
local abi = require("netdevq.abi")
local output = require("netdevq.output")

local monotonic_ns = netdevq.core.monotonic_ns
local seconds = tonumber(arg[1] or "") or 1.5
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

local function measure(kind, cb)
    tr.callbacks, tr.ncallbacks = { cb }, 1
    tr.matched = 0
    -- warm up (JIT traces), then measure whole batches for about `seconds`
    for _ = 1, 50 do
        tr:poll(0)
    end
    local delivered = 0
    local t0 = monotonic_ns()
    local deadline = t0 + seconds * 1e9
    local now
    repeat
        for _ = 1, 16 do
            delivered = delivered + tr:poll(0)
        end
        now = monotonic_ns()
    until now >= deadline
    local s = (now - t0) / 1e9
    io.stdout:write(string.format("consume %s events=%d seconds=%.3f eps=%.0f\n", kind, delivered,
                                  s, delivered / s))
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
local null_writer = output.text{ file = null }
measure("format+write", function(ev)
    null_writer:event(ev)
end)
null:close()
assert(counted > 0 and #last > 0)
