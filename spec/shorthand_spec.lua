-- The CLI's shorthands on live traffic, with exact event sets from JSON output: -I/--dev
-- (repeatable), --comm, -p/--pid, and -c/--cmd (runs CMD without a shell, traces its process tree
-- only, and ends by itself when CMD exits, like bpftrace -c).
--
-- Every run also carries `-f 'netns == ...'` for the spec's own namespaces: device names like
-- ndqa1 exist in other specs' namespaces too, and a packet sent from softirq context is charged
-- to whichever task was interrupted. The unrelated traffic each shorthand must leave out is sent
-- inside the same namespaces, so that scope never does the shorthand's work.
local netns = require("support.netns")
local clirun = require("support.clirun")
local live = require("support.live")
local cjson = require("cjson")

local OUT_FIELDS = "dev,proto,saddr,sport,daddr,dport,len,comm,pid"

-- "dev proto saddr:sport > daddr:dport len comm" for an event (pid left out: callers add it)
local function line(ev)
    return ("%s %s %s:%s > %s:%s %d %s"):format(ev.dev, ev.proto, ev.saddr, tostring(ev.sport), ev.daddr,
        tostring(ev.dport), ev.len, ev.comm)
end

-- the CLI's JSON lines -> sorted event lines (with pid when with_pid), the summary object, and
-- the other lines (a --cmd command writes to the same stdout, as under bpftrace -c)
local function parse(out, with_pid)
    local events, summary, other = {}, nil, {}
    for l in out:gmatch("[^\n]+") do
        local obj = l:sub(1, 1) == "{" and cjson.decode(l) or { type = "other" }
        if obj.type == "other" then
            other[#other + 1] = l
        elseif obj.type == "event" then
            events[#events + 1] = line(obj) .. (with_pid and (" pid " .. obj.pid) or "")
        elseif obj.type == "summary" then
            summary = obj
        end
    end
    table.sort(events)
    table.sort(other)
    return events, summary, other
end

-- sorted lines of the UDP datagrams a sender's sizes make (IPv4 or IPv6 over Ethernet)
local function datagrams(dev, src, sport, dst, dport, sizes, comm, pid)
    local out = {}
    local ip = src:find(":") and 40 or 20
    for _, size in ipairs(sizes) do
        out[#out + 1] = line({ dev = dev, proto = "udp", saddr = src, sport = sport, daddr = dst, dport = dport,
            len = 14 + ip + 8 + size, comm = comm }) .. (pid and (" pid " .. pid) or "")
    end
    return out
end

local function sorted(...)
    local out = {}
    for _, list in ipairs({ ... }) do
        for _, v in ipairs(list) do
            out[#out + 1] = v
        end
    end
    table.sort(out)
    return out
end

local exists, receiver, received = clirun.exists, live.receiver, live.received
local start_cli, stop_cli = live.start_cli, live.stop_cli

describe("CLI shorthands on live traffic #root", function()
    local pair, dir
    live.pair_each_test({ name = "ndqsh", tmpdir = true }, function(p, d) pair, dir = p, d end)

    it("-I/--dev traces only the named devices, and repeated means either", function()
        netns.require_root()
        local tool = netns.ndq_send()
        local scope = ("netns == %d or netns == %d"):format(pair.netns_a, pair.netns_b)
        local both = start_cli({ "-F", "json", "-o", OUT_FIELDS, "-f", scope, "-I", pair.veth_a, "--dev",
                                 pair.veth_b })
        local one = start_cli({ "-F", "json", "-o", OUT_FIELDS, "-f", scope, "-I", pair.veth_b })
        local rx_b = receiver(pair, "b", pair.ip4_b, 7000, 2)
        local rx_a = receiver(pair, "a", pair.ip6_a, 7001, 1)
        local rx_lo = receiver(pair, "a", "127.0.0.1", 7002, 1)
        assert(pair:exec("a", { tool, "udp4", pair.ip4_a, pair.ip4_b, "7000", "40000", "100,300" }))
        assert(pair:exec("b", { tool, "udp6", pair.ip6_b, pair.ip6_a, "7001", "40001", "200" }))
        -- the same namespace, another device
        assert(pair:exec("a", { tool, "udp4", "127.0.0.1", "127.0.0.1", "7002", "40002", "50" }))
        assert.are.equal(2, #received(rx_b))
        assert.are.equal(1, #received(rx_a))
        assert.are.equal(1, #received(rx_lo))
        local r_both, r_one = stop_cli(both), stop_cli(one)

        local from_a = datagrams(pair.veth_a, pair.ip4_a, 40000, pair.ip4_b, 7000, { 100, 300 }, "ndq_send")
        local from_b = datagrams(pair.veth_b, pair.ip6_b, 40001, pair.ip6_a, 7001, { 200 }, "ndq_send")
        local events, summary = parse(r_both.out)
        assert.are.same(sorted(from_a, from_b), events)
        assert.are.equal(3, summary.matched)
        events, summary = parse(r_one.out)
        assert.are.same(from_b, events)
        assert.are.equal(1, summary.matched)
    end)

    it("--comm traces only tasks with that comm", function()
        netns.require_root()
        -- the same tool under another name: another comm, the same traffic
        local other = dir .. "/ndq_other"
        assert(netns.run({ "cp", netns.ndq_send(), other }))
        local cli = start_cli({ "-F", "json", "-o", OUT_FIELDS, "-f", ("netns == %d"):format(pair.netns_a),
                                "--comm", "ndq_send" })
        local rx = receiver(pair, "b", pair.ip4_b, 7000, 4)
        assert(pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, "7000", "40000", "100,300" }))
        assert(pair:exec("a", { other, "udp4", pair.ip4_a, pair.ip4_b, "7000", "40100", "100,300" }))
        local got = received(rx)
        assert.are.equal(4, #got)
        local events, summary = parse(stop_cli(cli).out)
        assert.are.same(datagrams(pair.veth_a, pair.ip4_a, 40000, pair.ip4_b, 7000, { 100, 300 }, "ndq_send"),
            events)
        assert.are.equal(2, summary.matched)
    end)

    it("-p/--pid traces only that process", function()
        netns.require_root()
        local tool = netns.ndq_send()
        local go = dir .. "/go"
        local rx = receiver(pair, "b", pair.ip4_b, 7000, 5)
        -- its pid is known before it sends; the tracer starts in between
        local target = pair:spawn("a", { tool, "--wait-file", go, "udp4", pair.ip4_a, pair.ip4_b, "7000", "40000",
                                         "100,300,500" })
        local pid = tonumber((target:line() or ""):match("^pid (%d+)"))
        assert(pid, "ndq_send did not say its pid")
        local cli = start_cli({ "-F", "json", "-o", OUT_FIELDS, "-f", ("netns == %d"):format(pair.netns_a),
                                "-p", tostring(pid) })
        -- an unrelated sender with the same comm, in the same namespace, to the same port
        assert(pair:exec("a", { tool, "udp4", pair.ip4_a, pair.ip4_b, "7000", "40100", "100,300" }))
        local f = assert(io.open(go, "w"))
        f:close()
        assert(target:wait())
        assert.are.equal(5, #received(rx))
        local events, summary = parse(stop_cli(cli).out, true)
        assert.are.same(datagrams(pair.veth_a, pair.ip4_a, 40000, pair.ip4_b, 7000, { 100, 300, 500 }, "ndq_send",
            pid), events)
        assert.are.equal(3, summary.matched)
    end)

    -- runs `netdevq -c CMD` while an unrelated ndq_send (released once the CLI is ready) sends to
    -- the same receiver; returns the CLI's result, its events and summary, and the seconds it ran
    local function run_cmd(cmd, unrelated_sizes, total)
        local tool = netns.ndq_send()
        local go = dir .. "/go"
        local rx = receiver(pair, "b", pair.ip4_b, 7000, total)
        local unrelated = pair:spawn("a", { tool, "--wait-file", go, "udp4", pair.ip4_a, pair.ip4_b, "7000", "40100",
                                            unrelated_sizes })
        assert.is_truthy((unrelated:line() or ""):match("^pid %d+"))
        local t0 = require("netdevq.core").monotonic_ns()
        local cli = start_cli({ "-F", "json", "-o", OUT_FIELDS, "-f", ("netns == %d"):format(pair.netns_a), "-c",
                                cmd })
        local f = assert(io.open(go, "w"))
        f:close()
        assert(unrelated:wait())
        -- no signal: the CLI ends when CMD does
        local r = cli:wait(20)
        local seconds = (require("netdevq.core").monotonic_ns() - t0) / 1e9
        assert.are.equal(total, #received(rx))
        local events, summary, other = parse(r.out)
        return r, events, summary, seconds, other
    end

    it("-c/--cmd traces the command's process, and ends with exit 0 when it exits", function()
        netns.require_root()
        -- ip execs ndq_send: one process; it waits 300 ms so that the unrelated sender goes first
        local cmd = ("ip netns exec %s %s --delay-ms 300 udp4 %s %s 7000 40000 100,200"):format(pair.ns_a,
            netns.ndq_send(), pair.ip4_a, pair.ip4_b)
        local r, events, summary, seconds, other = run_cmd(cmd, "150,250,350", 5)
        assert.are.equal(0, r.code, r.err)
        assert.are.equal("done", other[1])
        assert.is_truthy(other[2]:match("^pid %d+$"))
        assert.are.same(datagrams(pair.veth_a, pair.ip4_a, 40000, pair.ip4_b, 7000, { 100, 200 }, "ndq_send"), events)
        assert.are.equal(2, summary.matched)
        assert.is_true(seconds < 10, "the CLI ran " .. seconds .. " s after its command ended")
    end)

    it("-c/--cmd follows the command's children", function()
        netns.require_root()
        -- the senders are a child and a grandchild of the shell netdevq starts
        local cmd = ("sh -c 'ip netns exec %s %s --delay-ms 300 udp4 %s %s 7000 40000 100 & "
            .. "(ip netns exec %s %s --delay-ms 300 udp4 %s %s 7000 40001 200; true) & wait'"):format(pair.ns_a,
            netns.ndq_send(), pair.ip4_a, pair.ip4_b, pair.ns_a, netns.ndq_send(), pair.ip4_a, pair.ip4_b)
        local r, events, summary, _, other = run_cmd(cmd, "150,250", 4)
        assert.are.equal(0, r.code, r.err)
        assert.are.equal(4, #other) -- each sender's "pid N" and "done"
        assert.are.same(sorted(datagrams(pair.veth_a, pair.ip4_a, 40000, pair.ip4_b, 7000, { 100 }, "ndq_send"),
            datagrams(pair.veth_a, pair.ip4_a, 40001, pair.ip4_b, 7000, { 200 }, "ndq_send")), events)
        assert.are.equal(2, summary.matched)
    end)

    it("-c/--cmd runs its words without a shell: ; and $(...) are plain arguments", function()
        netns.require_root()
        local marker1, marker2 = dir .. "/ran1", dir .. "/ran2"
        local r = clirun.cli({ "-q", "-c", ("$(touch %s) ; touch %s"):format(marker1, marker2) }, { timeout = 20 })
        assert.are.same({ code = 1, out = "",
                          err = "netdevq: --cmd: cannot run '$(touch': No such file or directory\n" },
            { code = r.code, out = r.out, err = r.err })
        assert.is_false(exists(marker1))
        assert.is_false(exists(marker2))
    end)
end)
