-- Per-CPU batches (bpf/netdevq.bpf.c, struct batch): an unfiltered stream written in place is
-- gathered on each CPU and handed over as one ring record of several events; a batch that is
-- not full goes out at once when the consumer has caught up, or when a poll flushes every CPU
-- (netdevq_flush, run on each CPU). These specs send known datagrams across a veth pair of our
-- own namespaces, from one sender pinned to each CPU, and check in raw (direct loads), raw
-- --read probe and btf mode:
--
--   - every datagram arrives exactly once, the last partial batches included (flushed);
--   - the events of one CPU arrive in the order they were queued (ts and the sender's sizes);
--   - seen == emitted + lost, and Lua received == emitted, with a ring small enough to lose;
--   - a burst's tail arrives within the polls while the device is quiet, and so does a single
--     packet (at once, or at the next flush: at most 100 ms);
--   - batch = 1 (one event per poll) turns batching off: no flush program is loaded.
--
-- No kernel filter may be set (a filtered event is not written in place): the tracers see the
-- whole machine and these specs count the events of the pair's device alone.
local netns = require("support.netns")
local live = require("support.live")
local bpfobjs = require("support.bpfobjs")
local cjson = require("cjson")

local MODES = { "raw", "probe", "btf" }
local SIZES = {} -- the sender's payload sizes, sent in this order, COUNT of each
for s = 20, 51 do
    SIZES[#SIZES + 1] = s
end
local COUNT = 200 -- per size: 6,400 datagrams per sender

local FIELDS = { "dev", "netns", "proto", "sport", "len", "cpu", "ts" }

-- a tracer of FIELDS in mode ("raw", "probe": raw --read probe, "btf"), closed after the test
local function open_in(netdevq, mode, opts)
    opts.mode = mode == "probe" and "raw" or mode
    opts.read = mode == "probe" and "probe" or nil
    opts.fields = FIELDS
    local t = assert(netdevq.open(opts))
    finally(function() t:close() end)
    return t
end

local function ncpus()
    local n = 0
    local f = assert(io.open("/sys/devices/system/cpu/online"))
    local spec = f:read("*l")
    f:close()
    for a, b in spec:gmatch("(%d+)%-?(%d*)") do
        n = n + (b ~= "" and tonumber(b) - tonumber(a) + 1 or 1)
    end
    return n
end

describe("per-CPU batches #root", function()
    local netdevq, pair
    live.pair_each_test({ name = "ndqb", static_neigh = true }, function(p) pair = p end)

    before_each(function()
        netdevq = require("netdevq")
    end)

    -- the events of the pair's sending device, per UDP source port, in arrival order
    local function collector(t)
        local got = { n = 0, by_sport = {} }
        t:on_event(function(ev)
            if ev.dev == pair.veth_a and ev.netns == pair.netns_a and ev.proto == "udp" then
                got.n = got.n + 1
                local list = got.by_sport[ev.sport]
                if not list then
                    list = {}
                    got.by_sport[ev.sport] = list
                end
                list[#list + 1] = { len = ev.len, ts = ev.ts, cpu = ev.cpu }
            end
        end)
        return got
    end

    -- one sender per CPU (sport 41000 + cpu), each pinned there; returns the senders' count
    local function send_from_every_cpu()
        local procs = {}
        local sizes = {}
        for i, s in ipairs(SIZES) do
            sizes[i] = tostring(s)
        end
        for cpu = 0, ncpus() - 1 do
            procs[#procs + 1] = pair:spawn("a", { "taskset", "-c", tostring(cpu), netns.ndq_send(),
                "udp4", pair.ip4_a, pair.ip4_b, "9", tostring(41000 + cpu), table.concat(sizes, ","),
                tostring(COUNT) })
        end
        live.wait_all(procs, "ndq_send")
        return #procs
    end

    -- polls (100 ms each: the tracers see the whole machine, whose other events may end a
    -- poll early) until done() or 2 s, a flush interval many times over
    local function poll_until(t, done)
        local deadline = live.monotonic_ms() + 2000
        while not done() and live.monotonic_ms() < deadline do
            t:poll(100)
        end
    end

    local function drain(t)
        t:detach()
        while t:poll(0) > 0 do end
    end

    -- each sender's datagrams: all of them, once, from its CPU, in the order sent
    local function check_senders(got, senders, mode)
        for cpu = 0, senders - 1 do
            local list = got.by_sport[41000 + cpu]
            assert.is_table(list, mode .. ": nothing from the sender on CPU " .. cpu)
            assert.equal(#SIZES * COUNT, #list, mode .. ": datagrams from the sender on CPU " .. cpu)
            local i = 0
            for _, size in ipairs(SIZES) do
                for _ = 1, COUNT do
                    i = i + 1
                    local ev = list[i]
                    assert.equal(size + 42, ev.len, ("%s: CPU %d, datagram %d"):format(mode, cpu, i))
                    assert.equal(cpu, ev.cpu, mode)
                    if i > 1 then
                        assert.is_true(ev.ts >= list[i - 1].ts, ("%s: CPU %d, datagram %d came "
                            .. "before an earlier one"):format(mode, cpu, i))
                    end
                end
            end
        end
    end

    for _, mode in ipairs(MODES) do
        it(mode .. ": every datagram once, each CPU's in order, the last partial batches flushed",
            function()
            netns.require_root()
            local t = open_in(netdevq, mode, { ringbuf_size = 2 ^ 25 })
            assert.is_true(t.t:kernel_batch() > 1, mode .. ": no batches")
            local got = collector(t)
            -- no poll while sending: the consumer is behind, so events gather in batches, and
            -- what the last ones hold comes out by the flush of the drain
            local senders = send_from_every_cpu()
            drain(t)
            local c = assert(t:stats())
            assert.equal(0, c.lost, mode)
            assert.equal(c.seen, c.emitted + c.kfiltered + c.read_failed, mode)
            assert.equal(c.emitted, c.received, mode)
            assert.equal(senders * #SIZES * COUNT, got.n, mode)
            check_senders(got, senders, mode)
        end)
    end

    for _, mode in ipairs(MODES) do
        it(mode .. ": a ring too small loses whole batches, and counts every event it lost",
            function()
            netns.require_root()
            local t = open_in(netdevq, mode, { ringbuf_size = 16384 })
            assert.is_true(t.t:kernel_batch() > 1, mode .. ": no batches")
            local got = collector(t)
            local received = 0
            t:on_event(function() received = received + 1 end)
            send_from_every_cpu()
            drain(t)
            local c = assert(t:stats())
            assert.is_true(c.lost > 0, mode .. ": nothing lost: the ring was not too small")
            assert.equal(c.seen, c.emitted + c.lost + c.kfiltered + c.read_failed, mode)
            assert.equal(c.emitted, received, mode)
            assert.equal(c.emitted, c.received, mode)
            assert.is_true(got.n > 0, mode)
        end)
    end

    for _, mode in ipairs(MODES) do
        it(mode .. ": when the device goes quiet, what waits in a batch arrives within the polls",
            function()
            netns.require_root()
            local t = open_in(netdevq, mode, {})
            local got = collector(t)
            -- a burst while the consumer is behind (no poll): its tail waits in a batch, and the
            -- polls that follow flush it (FLUSH_MS) while nothing else comes
            local ok, out = pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, "9",
                "42000", "10", "50" })
            assert(ok, out)
            poll_until(t, function() return got.n >= 50 end)
            assert.equal(50, got.n, mode)
            -- a consumer that has caught up: a single packet goes out at once
            for round = 1, 3 do
                while t:poll(0) > 0 do end
                local before = got.n
                ok, out = pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, "9",
                    "42000", tostring(10 + round) })
                assert(ok, out)
                poll_until(t, function() return got.n > before end)
                assert.equal(before + 1, got.n, mode .. ": round " .. round)
                assert.equal(52 + round, got.by_sport[42000][50 + round].len, mode)
            end
        end)
    end

    -- 2 MiB (libpcap's default buffer, so tcpdump's): a ring the producer laps stays in the
    -- caches, which made a streamed event 25-35 ns cheaper than with 8 MiB on this VM kind
    -- (bench/run), and the flood still loses nothing
    it("a ring buffer of 2 MiB unless ringbuf_size says otherwise", function()
        netns.require_root()
        local function ring_sizes()
            local sizes = {}
            for id in pairs(bpfobjs.held().map) do
                local ok, out = netns.run({ "bpftool", "-j", "map", "show", "id", tostring(id) })
                local m = ok and cjson.decode(out)
                if m and m.type == "ringbuf" then sizes[#sizes + 1] = m.max_entries end
            end
            return sizes
        end
        local t = assert(netdevq.open{ attach = false })
        assert.same({ 2 * 1024 * 1024 }, ring_sizes())
        t:close()
        t = assert(netdevq.open{ attach = false, ringbuf_size = 65536 })
        assert.same({ 65536 }, ring_sizes())
        t:close()
    end)

    it("batch = 1 (an event per poll) hands over one event per record, with no flush program",
        function()
        netns.require_root()
        local t = open_in(netdevq, "raw", { batch = 1, ringbuf_size = 2 ^ 25 })
        assert.equal(1, t.t:kernel_batch())
        local got = collector(t)
        local senders = send_from_every_cpu()
        drain(t)
        assert.equal(senders * #SIZES * COUNT, got.n)
        check_senders(got, senders, "batch = 1")
        local c = assert(t:stats())
        assert.equal(0, c.lost)
        assert.equal(c.emitted, c.received)
    end)
end)
