-- Queue latency and drops on live traffic (sojourn_ns, xmit_ns, xmit_rc, drop_reason: the fate
-- programs of bpf/latency.bpf.h). Each test has its own namespace pair; every tracer run is
-- scoped to namespace a (`netns == ...`): device names repeat in other specs' namespaces.
--
-- The shaper: tbf at 1 Mbit/s with a 1600-byte bucket on a's veth. A datagram of 1000 bytes is a
-- 1042-byte frame (Ethernet 14 + IPv4 20 + UDP 8): tbf lets it go once the bucket holds 1042
-- bytes of tokens, i.e. 1042 * 8 / 1e6 s = 8.336 ms after the previous one when a burst waits.
local netns = require("support.netns")
local clirun = require("support.clirun")
local live = require("support.live")
local bpfobjs = require("support.bpfobjs")
local cjson = require("cjson")
local ffi = require("ffi")
require("netdevq.abi")

local RATE = 1e6            -- bit/s
local FRAME = 1042          -- bytes on the wire per datagram (skb->len, what tbf charges)
local TICK = FRAME * 8 / RATE * 1e9 -- ns between departures of a waiting burst: 8336000
local N = 8                 -- datagrams per burst
-- A departure is never earlier than its tokens allow (tbf computes them in ns from the time it
-- dequeues) and later only by how late tbf's watchdog hrtimer fired: microseconds on an idle
-- machine, up to milliseconds on a loaded 2-CPU VM. A late departure does not delay the next
-- ones (the tokens keep accruing), so each is checked against the schedule, not its neighbour.
local EARLY_NS, LATE_NS = 100e3, 4e6
-- Two programs at the same two tracepoints (ours and bpftrace's) run one after the other: their
-- times differ by one program's run time (a few us) plus any interrupt in between, and its
-- softirq work: 0.45 ms once while CI ran the ASan pass. Still well under a frame's 8.3 ms, so
-- each packet's wait stays told apart from its neighbours'.
local ORACLE_NS = 1e6

local clis = live.tracked_clis() -- what a failed assertion leaves running: after_each stops it
local start_cli, stop_cli, parse = clis.start, clis.stop, live.json_objects

local function tc(pair, args)
    local argv = { "tc" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local ok, out = pair:exec("a", argv)
    assert(ok, table.concat(argv, " ") .. ": " .. out)
    return out
end

local function shape(pair, limit)
    tc(pair, { "qdisc", "replace", "dev", pair.veth_a, "root", "tbf", "rate", "1mbit", "burst", "1600",
        "limit", tostring(limit) })
end

-- Waits until no qdisc of the device holds a packet, at most `limit` s; returns whether they
-- drained, and tc's stats. Under load a datagram can wait in tbf well past its tokens (its
-- watchdog timer fires late; these pairs have GRO off, so veth never answers NETDEV_TX_BUSY and
-- tc counts no requeue). Seen once in 155 token-schedule runs beside two netlink loops:
-- bpftrace's join, like netdevq, had 7 datagrams of 8 half a second after the burst, and
-- netdevq's summary counted the 8th as held.
local function drained(pair, limit)
    local deadline = require("netdevq.core").monotonic_ns() + limit * 1e9
    while true do
        local stats = tc(pair, { "-s", "qdisc", "show", "dev", pair.veth_a })
        if not stats:match("backlog %d+b [1-9]%d*p") then return true, stats end
        if require("netdevq.core").monotonic_ns() > deadline then return false, stats end
        clirun.sleep(0.05)
    end
end

local function burst(pair, count)
    live.send(pair, "a", { "udp4", pair.ip4_a, pair.ip4_b, "9000", "40000", "1000", tostring(count) })
end

-- the datagrams' events (others on the device: counted apart, for the token schedule)
local function split(events)
    local dgrams = {}
    for _, ev in ipairs(events) do
        if ev.len == FRAME then dgrams[#dgrams + 1] = ev end
    end
    return dgrams
end

describe("queue latency and drops #root", function()
    local pair, dir
    live.pair_each_test({ name = "ndqlat", tmpdir = true }, function(p, d) pair, dir = p, d end)

    after_each(function()
        clis.stop_all()
    end)

    local FIELDS = "ts,skb,dev,queue,len,sojourn_ns,xmit_ns,xmit_rc,drop_reason"

    -- what a CLI's lat_held map (its id) holds: len, flags, ethertype, how long ago it was queued
    local function held_packets(id)
        local ok, out = netns.run({ "bpftool", "-j", "map", "dump", "id", tostring(id) })
        local now = require("netdevq.core").monotonic_ns()
        assert(ok, out)
        local left = {}
        for _, e in ipairs(cjson.decode(out)) do
            local v = {}
            for i, x in ipairs(e.value) do v[i - 1] = tonumber(x) end
            local function num(member, size)
                local off, n = ffi.offsetof("struct netdevq_event", member), 0
                for i = size - 1, 0, -1 do n = n * 256 + v[off + i] end
                return n
            end
            -- the key: the sk_buff and net_device addresses, in hex (past a double's 53 bits)
            local key = { "", "" }
            for i = 16, 1, -1 do
                local half = i > 8 and 2 or 1
                key[half] = key[half] .. ("%02x"):format(tonumber(e.key[i]))
            end
            left[#left + 1] = ("skb 0x%s dev 0x%s len %d flags 0x%x ethertype 0x%x queued %.3f s ago"):format(
                key[1], key[2], num("len", 4), num("flags", 2), num("ethertype", 2),
                (tonumber(now) - num("sojourn_ns", 8)) / 1e9)
        end
        return left
    end

    local function lat_held_id(pid)
        for id in pairs(bpfobjs.held(pid).map) do
            local ok, out = netns.run({ "bpftool", "-j", "map", "show", "id", tostring(id) })
            if ok and cjson.decode(out).name == "lat_held" then return id end
        end
    end

    -- the runs a program of pid's missed because it was running already on that CPU (nested)
    local function recursion_misses(pid)
        local missed = {}
        for id in pairs(bpfobjs.held(pid).prog) do
            local ok, out = netns.run({ "bpftool", "-j", "prog", "show", "id", tostring(id) })
            local p = ok and cjson.decode(out)
            if p and (p.recursion_misses or 0) > 0 then
                missed[#missed + 1] = ("%s missed %d"):format(p.name, p.recursion_misses)
            end
        end
        return missed
    end

    -- The oracle: bpftrace joins the same tracepoints on the skb, for the datagrams of namespace
    -- a. The wait ends at the start_xmit whose driver call took the packet: one the driver
    -- answered NETDEV_TX_BUSY (16; veth does when its peer's NAPI ring is full, which takes GRO
    -- or XDP on the peer: not in these pairs, but the join counts it as netdevq does) is
    -- requeued and the wait goes on, as netdevq's sojourn_ns counts it. The join writes nothing
    -- while packets flow, only into a map that bpftrace prints as it exits: a printf at
    -- net_dev_xmit wakes bpftrace's reader with an IPI (on this VM an MSR write, a VM exit), and
    -- that held the CPU ~1.2 ms before the next program at the tracepoint, netdevq's, read its
    -- clock (xmit_ns 1.17-1.27 ms against the join's 8-10 us, three runs in about twenty).
    -- start() runs a join, stop() ends it and returns what it joined, in the order the driver
    -- took them: { skb = hex address, ns = the wait, xmit = the driver call }. Call it once per
    -- test (it keeps the test's finally).
    local function join_oracle()
        local script = dir .. "/join.bt"
        local f = assert(io.open(script, "w"))
        f:write(live.bpftrace_attached(([[
tracepoint:net:net_dev_queue /args->len == %d && ((struct sk_buff *)args->skbaddr)->dev->nd_net.net->ns.inum == %d/
{ @q[args->skbaddr] = nsecs; }
tracepoint:net:net_dev_start_xmit /@q[args->skbaddr]/
{ @s[args->skbaddr] = nsecs; }
tracepoint:net:net_dev_xmit /@s[args->skbaddr] && args->rc != 16/
{ $t = nsecs;
  @j[args->skbaddr, $t] = (@s[args->skbaddr] - @q[args->skbaddr], $t - @s[args->skbaddr]);
  delete(@q[args->skbaddr]); delete(@s[args->skbaddr]); }
tracepoint:net:net_dev_xmit /@s[args->skbaddr] && args->rc == 16/
{ delete(@s[args->skbaddr]); }
END { clear(@q); clear(@s); }
]]):format(FRAME, pair.netns_a)))
        f:close()
        local unmount = live.tracefs()
        local bt
        finally(function() -- busted keeps a test's last finally only
            if bt then bt:stop() end
            unmount()
        end)
        local oracle = {}
        function oracle.start() bt = live.spawn_bpftrace({ script }) end
        function oracle.stop()
            bt:kill("INT")
            local _, _, lines = bt:wait()
            bt = nil
            local joined = {}
            for _, l in ipairs(lines) do
                local skb, at, ns, xmit = l:match("^@j%[0x(%x+), (%d+)%]: %((%d+), (%d+)%)$")
                if skb then
                    joined[#joined + 1] = { skb = "0x" .. skb, at = tonumber(at), ns = tonumber(ns),
                        xmit = tonumber(xmit) }
                end
            end
            table.sort(joined, function(x, y) return x.at < y.at end)
            return joined
        end
        return oracle
    end

    for _, mode in ipairs({ "raw", "btf" }) do
        it("follows tbf's token schedule for each datagram of a burst, as bpftrace's join measures it ("
            .. mode .. ")", function()
            netns.require_root()
            shape(pair, 100000)
            local oracle = join_oracle()
            -- One burst, traced by netdevq and by bpftrace's join. What netdevq reports must
            -- match the join exactly; nil, or what the kernel did off its schedule (a datagram
            -- late, or one it did not hand to the driver: the join misses it too). A loaded
            -- machine (the suite runs specs side by side) delays tbf's timer by a few ms now and
            -- then: the burst is tried again then, 3 times at most.
            local function attempt()
                oracle.start()
                local cli = start_cli({ "--mode", mode, "-F", "json", "-o", FIELDS, "-f",
                    "netns == " .. pair.netns_a })
                burst(pair, N)
                clirun.sleep(N * TICK / 1e9 + 0.5)
                local empty, qstats = drained(pair, 10)
                assert(empty, "the qdisc still holds packets 10 s after the burst:\n" .. qstats)
                local missed = recursion_misses(cli.pid)
                local stopped = stop_cli(cli)
                local events = parse(stopped.out)
                local joined = oracle.stop()

                local d = split(events)
                -- which packets each side saw, netdevq's summary (a packet still held is counted
                -- there) and any recursion miss
                local function skbs(list)
                    local t = {}
                    for _, e in ipairs(list) do t[#t + 1] = e.skb end
                    return table.concat(t, " ")
                end
                local summary = (stopped.err or ""):match("netdevq: %d+ events[^\n]*") or "no summary"
                local seen = ("netdevq %d: %s; bpftrace's join %d: %s; %s; %s"):format(#d, skbs(d),
                    #joined, skbs(joined), summary,
                    #missed > 0 and table.concat(missed, ", ") or "no recursion miss")
                assert.are.equal(#joined, #d, seen)
                assert.are.equal(skbs(joined), skbs(d), seen)
                if #d < N then -- the join lacks them too: netdevq must count them as held
                    assert.is_truthy(summary:find(", " .. (N - #d) .. " held ", 1, true), seen)
                    return ("%d of %d datagrams reached the driver: %s"):format(#d, N, seen)
                end
                -- every event left at its driver handoff: sojourn, driver call, veth's NETDEV_TX_OK
                for k, ev in ipairs(d) do
                    assert.are.same({ pair.veth_a, 0, 0 }, { ev.dev, ev.queue, ev.xmit_rc },
                        ("packet %d (%s): %s"):format(k, ev.skb, seen))
                    assert.is_nil(ev.drop_reason)
                    -- the same wait and the same driver call as bpftrace's within ORACLE_NS (a
                    -- driver call is microseconds on an idle machine; an interrupt inside it, and
                    -- its softirq work, made one last 1.18 ms while CI ran the ASan pass: both
                    -- tools measure that)
                    assert.is_true(ev.xmit_ns > 0, "xmit_ns " .. ev.xmit_ns)
                    assert.is_true(math.abs(ev.sojourn_ns - joined[k].ns) < ORACLE_NS,
                        ("packet %d: sojourn %d, bpftrace %d"):format(k, ev.sojourn_ns, joined[k].ns))
                    assert.is_true(math.abs(ev.xmit_ns - joined[k].xmit) < ORACLE_NS,
                        ("packet %d: xmit_ns %d, bpftrace %d"):format(k, ev.xmit_ns, joined[k].xmit))
                end
                -- the model: from the second datagram on the bucket is empty; each departure
                -- (queued at ts, left at ts + sojourn) comes when the tokens for every frame that
                -- left since the second datagram have accrued (other frames on the device count
                -- too)
                local all = {}
                for _, ev in ipairs(events) do
                    if ev.sojourn_ns then all[#all + 1] = { dep = ev.ts + ev.sojourn_ns, len = ev.len } end
                end
                table.sort(all, function(x, y) return x.dep < y.dep end)
                -- the schedule starts at the second datagram's departure, or earlier when that
                -- one left late itself (the tokens accrued meanwhile let the next ones catch
                -- up): at the earliest start any departure implies
                local start = d[2].ts + d[2].sojourn_ns
                local bytes, after = 0, {}
                for _, e in ipairs(all) do
                    if e.dep > start then
                        bytes = bytes + e.len
                        after[#after + 1] = { dep = e.dep, bytes = bytes }
                    end
                end
                local origin = start
                for _, e in ipairs(after) do
                    origin = math.min(origin, e.dep - e.bytes * 8 / RATE * 1e9 + EARLY_NS)
                end
                if start - origin >= LATE_NS then
                    return ("the second datagram left %d ns late"):format(start - origin)
                end
                for _, e in ipairs(after) do
                    local due = origin + e.bytes * 8 / RATE * 1e9
                    -- (>=: the departure that sets the origin lies exactly EARLY_NS early)
                    if e.dep < due - EARLY_NS or e.dep >= due + LATE_NS then
                        return ("left %d ns after the schedule"):format(e.dep - due)
                    end
                end
                -- and so the wait grows by ~TICK per datagram, less the time between their
                -- queueing
                for k = 3, N do
                    local grow = d[k].sojourn_ns - d[k - 1].sojourn_ns + (d[k].ts - d[k - 1].ts)
                    if math.abs(grow - TICK) >= LATE_NS + EARLY_NS then
                        return "datagram " .. k .. ": " .. grow
                    end
                end
                if d[N].sojourn_ns <= (N - 2) * TICK - LATE_NS then
                    return "the last datagram waited " .. d[N].sojourn_ns .. " ns"
                end
            end

            local off = {}
            for _ = 1, 3 do
                local why = attempt()
                if not why then break end
                off[#off + 1] = why
            end
            assert.is_true(#off < 3, "off the schedule in 3 bursts of 3: " .. table.concat(off, "; "))
        end)
    end


    for _, mode in ipairs({ "raw", "btf" }) do
    it("reports each tail drop with its reason, as many as tc counts, and only the slow packets with a kernel filter ("
        .. mode .. ")", function()
            netns.require_root()
            shape(pair, 3000) -- the backlog holds two datagrams (2084 bytes), a third is dropped
            local scope = "netns == " .. pair.netns_a
            local file = dir .. "/slow.pcapng"
            local cli = start_cli({ "--mode", mode, "-F", "json", "-o", FIELDS, "-f", scope })
            local slow = start_cli({ "--mode", mode, "-q", "-w", file, "-f", scope .. " and sojourn_ns > 5000000" })
            -- tc's counters since the tracers attached: the qdisc may have sent a packet of the
            -- namespace's own (an IPv6 router solicitation) before they were there
            local function tc_counts()
                local stats = tc(pair, { "-s", "qdisc", "show", "dev", pair.veth_a })
                return tonumber(stats:match("dropped (%d+)")),
                    tonumber(stats:match("Sent %d+ bytes (%d+) pkt")), stats
            end
            local dropped0, sent0 = tc_counts()
            burst(pair, 12)
            clirun.sleep(0.5)
            local empty, qstats = drained(pair, 10)
            assert(empty, "the qdisc still holds packets 10 s after the burst:\n" .. qstats)
            -- (what is still held, for the message below: CI once saw one packet held here)
            local left = held_packets(assert(lat_held_id(cli.pid), "no lat_held map"))
            local missed = recursion_misses(cli.pid)
            local events, others = parse(stop_cli(cli).out)
            local slow_end = stop_cli(slow).err:match("netdevq: [^\n]*events[^\n]*") or "?"
            local tc_dropped, tc_sent, stats = tc_counts()
            tc_dropped, tc_sent = tc_dropped - dropped0, tc_sent - sent0
            local dropped, sent, slow_want, came = 0, 0, {}, {}
            for _, ev in ipairs(events) do
                came[#came + 1] = ("%s %s"):format(ev.skb, ev.drop_reason or ev.sojourn_ns)
                if ev.drop_reason then
                    dropped = dropped + 1
                    assert.are.equal("QDISC_DROP", ev.drop_reason)
                    assert.are.equal(FRAME, ev.len)
                    assert.is_nil(ev.sojourn_ns)
                    assert.is_nil(ev.xmit_ns)
                else
                    sent = sent + 1
                    assert.is_number(ev.sojourn_ns)
                    if ev.sojourn_ns > 5000000 then slow_want[#slow_want + 1] = ev.sojourn_ns end
                end
            end
            local why = "held 0.5 s after the burst: " .. table.concat(left, "; ") .. "\n" .. stats .. "\n"
                .. "the slow run: " .. slow_end .. "\n"
                .. table.concat(missed, "; ") .. "\ncame out: " .. table.concat(came, ", ")
            -- Every matched packet came out at its fate, or the summary counts it as held: exactly
            -- what the map still holds. Every drop tc counts came out as one. A sent packet may stay
            -- held: on this kernel (6.18, btf mode, about one burst in ten on a loaded machine)
            -- one datagram tc counts as sent kept an entry no fate program had touched (no
            -- start_xmit seen for its key, no recursion miss), before the test waited for the
            -- qdisc to drain (see drained()). At most one, and only unstarted ones: anything
            -- else fails here, with what was held and what came out.
            assert.are.same({ held = #left, matched = #events },
                { held = others.summary[1].held, matched = others.summary[1].matched }, why)
            assert.is_true(#left <= 1, why)
            for _, l in ipairs(left) do
                assert.is_truthy(l:match(" len 1042 flags 0x0 "), why)
            end
            -- 12 back to back leave room for 3 (4 when a loaded machine slowed the sender): drops
            assert.is_true(tc_dropped >= 6, stats)
            assert.are.same({ tc_dropped, tc_sent }, { dropped, sent + #left }, why)
            -- the pcapng run: the kernel let only the slow packets through, comments carry them
            assert.is_true(#slow_want + #left >= 1, why)
            local ok, out = netns.run({ "tshark", "-r", file, "-T", "fields", "-e", "frame.len", "-e",
                "frame.comment" })
            assert(ok, out)
            local got = {}
            for _, l in ipairs(clirun.lines(out)) do
                local len, soj = l:match("^(%d+)\t.*, sojourn_ns: (%d+), xmit_ns: %d+, xmit_rc: 0$")
                if len then
                    assert.are.equal(FRAME, tonumber(len))
                    got[#got + 1] = tonumber(soj)
                end
            end
            -- each slow packet of the other run, in order, at the same sojourn; beside them only
            -- a packet that run left held (this run's own programs may have seen it)
            local j, extra = 1, 0
            for i = 1, #got do
                assert.is_true(got[i] > 5000000)
                if slow_want[j] and math.abs(got[i] - slow_want[j]) < ORACLE_NS then
                    j = j + 1
                else
                    extra = extra + 1
                end
            end
            assert.are.same({ #slow_want + 1, true }, { j, extra <= #left }, out .. "\n" .. why)
        end)

    end

    it("gives devices without a queue a small sojourn (noqueue veth), as bpftrace's join measures it", function()
        netns.require_root()
        local oracle = join_oracle()
        oracle.start()
        local cli = start_cli({ "--mode", "btf", "-F", "json", "-o", FIELDS, "-f", "netns == " .. pair.netns_a })
        burst(pair, 5)
        local d = split(parse(stop_cli(cli).out))
        local joined = oracle.stop()
        assert.are.equal(5, #d)
        assert.are.equal(5, #joined)
        local waits = {}
        for k, ev in ipairs(d) do
            assert.are.same({ joined[k].skb, 0 }, { ev.skb, ev.xmit_rc })
            assert.is_true(ev.sojourn_ns > 0 and ev.xmit_ns > 0)
            assert.is_true(math.abs(ev.sojourn_ns - joined[k].ns) < ORACLE_NS,
                ("packet %d: sojourn %d, bpftrace %d"):format(k, ev.sojourn_ns, joined[k].ns))
            assert.is_true(math.abs(ev.xmit_ns - joined[k].xmit) < ORACLE_NS,
                ("packet %d: xmit_ns %d, bpftrace %d"):format(k, ev.xmit_ns, joined[k].xmit))
            waits[k] = ev.sojourn_ns
        end
        -- net_dev_queue to start_xmit runs with bottom halves off: a few us. Only hard interrupts
        -- stretch it (and the hypervisor's pauses of this VM's CPU, which both tools measure): the
        -- median of the five stays small
        table.sort(waits)
        assert.is_true(waits[3] < 100e3, "sojourns " .. table.concat(waits, " "))
    end)

    it("reports a GSO packet that tbf segments without sojourn or drop, and holds nothing after", function()
        netns.require_root()
        -- 10 Mbit/s, a 1600-byte bucket: tbf splits every TCP GSO packet into its segments
        tc(pair, { "qdisc", "replace", "dev", pair.veth_a, "root", "tbf", "rate", "10mbit", "burst", "1600",
            "limit", "1000000" })
        local cli = start_cli({ "-F", "json", "-o", FIELDS .. ",gso_segs", "-f",
            "netns == " .. pair.netns_a .. " and port == 7002" })
        local sink = pair:spawn("b", { netns.ndq_send(), "tcpsink", pair.ip4_b, "7002", "20000" })
        assert.is_truthy(live.wait_line(sink, "^listening"))
        live.send(pair, "a", { "tcpbulk", pair.ip4_a, pair.ip4_b, "7002", "41002", "200000" })
        assert.is_true((sink:wait()))
        clirun.sleep(0.3)
        local left = held_packets(assert(lat_held_id(cli.pid), "no lat_held map"))
        local events = parse(stop_cli(cli).out)
        local gso, plain = 0, 0
        for _, ev in ipairs(events) do
            assert.is_nil(ev.drop_reason)
            if ev.len > 1514 then -- segmented by tbf at enqueue: its segments are not followed
                gso = gso + 1
                assert.is_true(ev.gso_segs > 1)
                assert.is_nil(ev.sojourn_ns)
                assert.is_nil(ev.xmit_ns)
            else
                plain = plain + 1
                assert.is_number(ev.sojourn_ns)
                assert.are.equal(0, ev.xmit_rc)
            end
        end
        assert.is_true(gso >= 1 and plain >= 1, gso .. " GSO packets, " .. plain .. " others")
        assert.are.same({}, left)
    end)

    it("keeps the held-packet map bounded: packets leave it at their fate, drops included", function()
        netns.require_root()
        shape(pair, 3000) -- most of a flood is dropped at the qdisc
        local scope = "netns == " .. pair.netns_a
        local cli = start_cli({ "-q", "--hist", "sojourn_ns", "-F", "json", "-f", scope })
        local maps
        for id in pairs(bpfobjs.held(cli.pid).map) do
            local ok, out = netns.run({ "bpftool", "-j", "map", "show", "id", tostring(id) })
            local m = ok and cjson.decode(out)
            if m and m.name == "lat_held" then maps = m end
        end
        assert.is_table(maps, "no lat_held map")
        assert.are.same({ "lru_hash", 16384 }, { maps.type, maps.max_entries })
        live.send(pair, "a", { "flood", pair.ip4_b, "9000", "2", "1000" })
        clirun.sleep(0.3) -- the backlog drains (two frames)
        local left = held_packets(maps.id)
        local _, others = parse(stop_cli(cli).out)
        local n = others.summary[1].events
        assert.is_true(n > 1000, "only " .. n .. " packets") -- far more than fit in the qdisc
        -- what stayed is not silent: the summary counts it as held (matched leaves it out), and
        -- a stray whose address came back for a later packet as lost
        assert.are.equal(#left, others.summary[1].held, table.concat(left, "; "))
        assert.is_true(others.summary[1].lost <= math.max(2, n / 50000))
        -- Every packet's fate removes its entry. Rarely (a few in a million flooded packets on
        -- this kernel) one stays: neither these programs nor bpftrace see a fate tracepoint for it
        -- on this device (cause unknown); the LRU bounds such strays, which is what this checks.
        assert.is_true(#left <= math.max(2, n / 50000), table.concat(left, "; "))
        -- without latency fields the map is one entry and no fate program is loaded
        local plain = start_cli({ "-q", "--count", "dev", "-f", scope })
        local names = {}
        local snap = bpfobjs.snapshot()
        for id in pairs(bpfobjs.held(plain.pid).map) do
            local e = snap.map[id]
            if e and e.name == "lat_held" then names[#names + 1] = e.max_entries end
        end
        local progs = {}
        for id in pairs(bpfobjs.held(plain.pid).prog) do
            progs[#progs + 1] = snap.prog[id] and snap.prog[id].name or "?"
        end
        stop_cli(plain)
        assert.are.same({ 1 }, names)
        assert.are.same({ "netdevq_direct" }, progs) -- raw mode, --read auto: direct on this kernel
    end)

    it("builds the same sojourn_ns histogram by dev,queue in the kernel as in Lua from its events", function()
        netns.require_root()
        shape(pair, 100000)
        local netdevq = require("netdevq")
        local spec = { kind = "hist", name = "@sojourn", keys = { "dev", "queue" }, value = "sojourn_ns" }
        -- the CLI's --hist alone runs in the kernel
        local plan = assert(require("netdevq.plan").make{ filter = "netns == " .. pair.netns_a,
            aggregations = { spec } })
        assert.is_table(plan.kernel_agg)
        -- one tracer: the kernel aggregates, and the same events reach Lua, which aggregates them too
        local t = assert(netdevq.open{ filter = "netns == " .. pair.netns_a, aggregate = spec, events = true,
            fields = { "dev", "queue", "len", "sojourn_ns" } })
        finally(function() t:close() end)
        local lua = netdevq.hist{ name = "@sojourn", keys = { "dev", "queue" }, value = "sojourn_ns" }
        local feed = netdevq.aggregate.feeder(lua, { "dev", "queue" }, "sojourn_ns")
        local sojourns, dgrams = {}, 0
        t:on_event(function(ev)
            feed(ev)
            sojourns[#sojourns + 1] = ev.sojourn_ns
            if ev.len == FRAME then dgrams = dgrams + 1 end
        end)
        local rx = live.receiver(pair, "b", pair.ip4_b, 9000, N)
        local sender = pair:spawn("a", { netns.ndq_send(), "--delay-ms", "500", "udp4", pair.ip4_a, pair.ip4_b,
            "9000", "40000", "1000", tostring(N) })
        -- polled until the N datagrams are in (a loaded machine may start the sender late), then
        -- drained: every event the kernel aggregated has reached Lua too
        local deadline = live.monotonic_ms() + 30000
        while dgrams < N and live.monotonic_ms() < deadline do
            assert(t:poll(100))
        end
        local sok, scode, slines = sender:wait()
        assert(sok, tostring(scode) .. ": " .. table.concat(slines, " | "))
        live.received(rx)
        t:detach()
        while assert(t:poll(0)) > 0 do end
        local kernel = assert(t:read_aggregate(nil))
        -- every datagram came out, or its event is counted as held: a datagram the receiver got
        -- without any net_dev_start_xmit for its sk_buff (bpftrace's join misses it too; once in
        -- about 16 runs of this file on a loaded machine; see the tail-drop test), at most one
        local held = assert(t:stats()).held
        assert.is_true(dgrams == N or (dgrams == N - 1 and held == 1),
            ("%d datagrams of %d came out, %d held"):format(dgrams, N, held))
        assert.are.same(lua:json(), kernel:json())
        assert.are.equal(lua:json_line(), kernel:json_line())
        -- and both hold every sojourn in its log2 slot [2^(i-1), 2^i), keyed by our device, queue 0
        local want, got = {}, {}
        for _, v in ipairs(sojourns) do
            local lo = 1
            while lo * 2 <= v do lo = lo * 2 end
            want[lo] = (want[lo] or 0) + 1
        end
        local j = kernel:json()
        assert.are.equal(1, #j.data)
        assert.are.same({ pair.veth_a, 0 }, j.data[1].key)
        for _, b in ipairs(j.data[1].buckets) do
            if b.count > 0 then got[b.min] = b.count end
        end
        assert.are.same(want, got)
    end)

    it("examples/netqtop.lua shows the burst's rates, sojourn percentiles and drops by reason", function()
        netns.require_root()
        shape(pair, 3000)
        local scope = "netns == " .. pair.netns_a
        local cli = start_cli({ "-F", "json", "-o", FIELDS, "-f", scope })
        local top = netns.spawn({ "luajit", "scripts/netdevq.lua", "examples/netqtop.lua", "all", "3", "1",
            tostring(pair.netns_a) })
        finally(function() top:stop() end)
        assert.are.equal(live.READY, top:line())
        burst(pair, 12)
        local ok, code, lines = top:wait()
        assert(ok, code .. ": " .. table.concat(lines, "\n"))
        local events = parse(stop_cli(cli).out)
        -- what netqtop must show, from the other tracer's events of the same packets
        local pkts, bytes, soj, drops = 0, 0, {}, 0
        for _, ev in ipairs(events) do
            assert.are.same({ pair.veth_a, 0 }, { ev.dev, ev.queue })
            if ev.sojourn_ns then
                pkts, bytes = pkts + 1, bytes + ev.len
                soj[#soj + 1] = ev.sojourn_ns
            else
                assert.are.equal("QDISC_DROP", ev.drop_reason)
                drops = drops + 1
            end
        end
        table.sort(soj)
        local stats = tc(pair, { "-s", "qdisc", "show", "dev", pair.veth_a })
        assert.are.equal(tonumber(stats:match("dropped (%d+)")), drops)
        local function human(n)
            if n >= 1024 then return ("%.2fK"):format(n / 1024) end
            if n == math.floor(n) then return ("%d"):format(n) end
            return ("%.2f"):format(n)
        end
        assert.are.equal(5, #lines, table.concat(lines, "\n"))
        local dev, q, pps, bps, p50, p99, max, nd = lines[3]:match(
            "^(%S+) +(%d+) +(%S+) +(%S+) +(%S+) +(%S+) +(%S+) +(%d+)$")
        assert.are.same({ pair.veth_a, "0", human(pkts / 3), human(bytes / 3), tostring(drops) },
            { dev, q, pps, bps, nd })
        local n = #soj
        for _, c in ipairs({ { p50, soj[math.ceil(n / 2)] }, { p99, soj[math.ceil(0.99 * n)] }, { max, soj[n] } }) do
            assert.is_true(math.abs(tonumber(c[1]) * 1000 - c[2]) < ORACLE_NS, c[1] .. " us vs " .. c[2] .. " ns")
        end
        assert.are.equal(("drops %s queue 0: QDISC_DROP %d"):format(pair.veth_a, drops), lines[4])
        assert.are.equal("", lines[5])
    end)
end)
