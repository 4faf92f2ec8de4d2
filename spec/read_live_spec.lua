-- Raw mode's two read paths (issue 12): --read probe (a bpf_probe_read_kernel copy of the
-- sk_buff), --read direct (bpf_rdonly_cast and plain loads), --read auto, and --mode btf see the
-- very same skbs when attached at once, and must report them identically, every field. The
-- traffic is known, so the values are checked too: length, ports, addresses, device, ifindex,
-- netns, mark, priority, queue, TTL, TOS, MACs, the sending task (pid, tid, comm, and its cgroup
-- v2 id against the inode of a cgroup made for the run) and the socket owner; a TCP bulk transfer
-- adds GSO packets (gso_size, gso_segs) and TCP flags.
-- A fifth tracer with a kernel filter builds its events in per-CPU scratch (the others reserve
-- their ring records and fill them in place): it must agree too.
local netns = require("support.netns")
local live = require("support.live")
local clirun = require("support.clirun")

local cgroup2_root, inode = live.cgroup2_root, live.inode

-- every field but the clock, as one line (the same skb gives the same line in every tracer)
local function signature(ev)
    local keys, parts = {}, {}
    for k in pairs(ev) do
        if k ~= "ts" and k ~= "time" then
            keys[#keys + 1] = k
        end
    end
    table.sort(keys)
    for i, k in ipairs(keys) do
        parts[i] = k .. "=" .. tostring(ev[k])
    end
    return table.concat(parts, " ")
end

local function signatures(events)
    local out = {}
    for i, ev in ipairs(events) do
        out[i] = signature(ev)
    end
    table.sort(out)
    return out
end

-- ndq_send argv run in namespace ns of pair from inside cgroup dir cg (`ip netns exec` hides
-- /sys/fs/cgroup, so the shell joins the cgroup first); returns the sender's pid
local function send_in_cgroup(pair, cg, ns, args)
    local argv = { "ip", "netns", "exec", ns == "a" and pair.ns_a or pair.ns_b, netns.ndq_send() }
    for _, a in ipairs(args) do
        argv[#argv + 1] = a
    end
    local out = live.run_in_cgroup(argv, cg)
    return assert(tonumber(out:match("pid (%d+)")), out)
end

-- polls the tracers until each has taken every record its kernel side emitted (5 s at most):
-- other traffic on the machine (someone's flood) must not leave one behind the others
local function drain(tracers)
    live.poll_all(tracers, 300)
    local deadline = live.monotonic_ms() + 5000
    for _, t in pairs(tracers) do
        repeat
            assert(t:poll(10))
            local st = t:stats()
        until st.received >= st.emitted or live.monotonic_ms() > deadline
    end
end

describe("raw-mode read paths on live traffic #root", function()
    local pair
    live.pair_each_test({ name = "ndqrd", icmp_unlimited = true }, function(p) pair = p end)

    it("--read probe, direct, auto and --mode btf give identical events with exact values", function()
        netns.require_root()
        local netdevq = require("netdevq")
        local root = cgroup2_root()
        local cg, cg_id
        if root then
            cg = root .. "/ndq-read-" .. tostring(pair.netns_a)
            assert(os.execute("mkdir " .. clirun.quote(cg)) == 0)
            cg_id = inode(cg)
        end
        local tracers, events = {}, {}
        finally(function()
            for _, t in pairs(tracers) do
                t:close()
            end
            if cg then
                os.execute("rmdir " .. clirun.quote(cg))
            end
        end)
        local scope = ("netns == %d or netns == %d"):format(pair.netns_a, pair.netns_b)
        local opens = {
            probe = { read = "probe" }, direct = { read = "direct" }, auto = {}, btf = { mode = "btf" },
            scratch = { read = "direct", filter = scope },
        }
        for name, opts in pairs(opens) do
            tracers[name] = assert(netdevq.open(opts))
            events[name] = {}
            tracers[name]:on_event(function(ev)
                if ev.netns == pair.netns_a or ev.netns == pair.netns_b then
                    events[name][#events[name] + 1] = ev:totable()
                end
            end)
        end
        assert.are.same({ "probe", "direct", "direct", "btf", "direct" },
            { tracers.probe.read, tracers.direct.read, tracers.auto.read, tracers.btf.read, tracers.scratch.read })

        -- nobody listens on b: every datagram comes back as an ICMP error
        local pid4 = send_in_cgroup(pair, cg, "a", { "--mark", "7", "--priority", "3", "udp4", pair.ip4_a,
            pair.ip4_b, "7000", "40000", "100,300" })
        local pid6 = send_in_cgroup(pair, cg, "a", { "--ttl", "5", "--tos", "32", "udp6", pair.ip6_a, pair.ip6_b,
            "7001", "40001", "20" })
        -- a TCP bulk transfer: GSO packets (gso_size, gso_segs from skb_shared_info), flags
        local sink = pair:spawn("b", { netns.ndq_send(), "tcpsink", pair.ip4_b, "7002", "30000" })
        live.wait_line(sink, "listening")
        live.send(pair, "a", { "tcpbulk", pair.ip4_a, pair.ip4_b, "7002", "41002", "200000" })
        live.wait_all({ sink }, "tcpsink")
        drain(tracers)

        local want = signatures(events.probe)
        assert.is_true(#want >= 6, "too few events: " .. #want)
        for _, name in ipairs({ "direct", "auto", "btf", "scratch" }) do
            assert.are.same(want, signatures(events[name]), name .. " differs from probe")
        end

        local udp4, udp6, icmp = {}, {}, 0
        for _, ev in ipairs(events.probe) do
            if ev.proto == "udp" and ev.dport == 7000 then
                udp4[#udp4 + 1] = ev
            elseif ev.proto == "udp" and ev.dport == 7001 then
                udp6[#udp6 + 1] = ev
            elseif (ev.proto == "icmp" or ev.proto == "icmpv6") and ev.dev == pair.veth_b then
                icmp = icmp + 1
            end
        end
        table.sort(udp4, function(x, y) return x.len < y.len end)
        assert.are.same({ 14 + 20 + 8 + 100, 14 + 20 + 8 + 300 }, { udp4[1].len, udp4[2].len })
        for _, ev in ipairs(udp4) do
            assert.are.same({
                dev = pair.veth_a, ifindex = pair.ifindex_a, netns = pair.netns_a, ethertype = "ipv4",
                saddr = pair.ip4_a, daddr = pair.ip4_b, sport = 40000, dport = 7000, ttl = 64, tos = 0,
                mark = 7, priority = 3, queue = 0, smac = pair.mac_a, dmac = pair.mac_b, data_len = 0,
                pid = pid4, tid = pid4, comm = "ndq_send", owner_pid = pid4, owner_comm = "ndq_send",
            }, {
                dev = ev.dev, ifindex = ev.ifindex, netns = ev.netns, ethertype = ev.ethertype,
                saddr = ev.saddr, daddr = ev.daddr, sport = ev.sport, dport = ev.dport, ttl = ev.ttl, tos = ev.tos,
                mark = ev.mark, priority = ev.priority, queue = ev.queue, smac = ev.smac, dmac = ev.dmac,
                data_len = ev.data_len, pid = ev.pid, tid = ev.tid, comm = ev.comm, owner_pid = ev.owner_pid,
                owner_comm = ev.owner_comm,
            })
            -- the task's cgroup v2 id (read from the task_struct) is the id of the cgroup it ran in
            if cg_id then
                assert.are.same({ cg_id, cg_id }, { ev.cgroup, ev.owner_cgroup })
            end
        end
        assert.are.equal(1, #udp6)
        assert.are.same({ 14 + 40 + 8 + 20, pair.ip6_a, pair.ip6_b, 40001, 5, 32, 0, 0, pid6, pair.veth_a },
            { udp6[1].len, udp6[1].saddr, udp6[1].daddr, udp6[1].sport, udp6[1].ttl, udp6[1].tos,
              udp6[1].mark, udp6[1].priority, udp6[1].pid, udp6[1].dev })
        if cg_id then
            assert.are.equal(cg_id, udp6[1].cgroup)
        end
        assert.are.equal(3, icmp) -- b's port unreachables, one per datagram
        local gso, syn = 0, 0
        for _, ev in ipairs(events.probe) do
            if ev.proto == "tcp" and ev.dport == 7002 then
                if ev.gso_segs > 1 then
                    gso = gso + 1
                    assert.is_true(ev.len > ev.gso_size * (ev.gso_segs - 1))
                end
                if ev.tcp_flags == "S" then
                    syn = syn + 1
                end
            end
        end
        assert.are.equal(1, syn)
        assert.is_true(gso >= 1, "no GSO packet in 200000 bytes of TCP")
    end)

    -- a large or-set (more than 8 values: in a map) over the pair, in both read paths: exactly
    -- the two datagrams sent by send_matching pass, `key` of each is shown; every other hit (the
    -- other datagrams, b's ICMP errors, the machine's own traffic) is dropped by the kernel
    local function check_large_set(terms, key, send_matching, send_others, want)
        local netdevq = require("netdevq")
        local expr = ("(netns == %d or netns == %d) and (%s)"):format(pair.netns_a, pair.netns_b,
            table.concat(terms, " or "))
        for _, read in ipairs({ "probe", "direct" }) do
            local t = assert(netdevq.open{ filter = expr, read = read })
            finally(function() t:close() end)
            assert.is_nil(t.plan.match) -- nothing left to Lua
            local got = {}
            t:on_event(function(ev) got[#got + 1] = ev.len .. " " .. ev[key] end)
            live.send(pair, "a", send_matching)
            for _, argv in ipairs(send_others) do
                live.send(pair, "a", argv)
            end
            drain({ t })
            table.sort(got)
            assert.are.same(want, got, read)
            local st = t:stats()
            assert.are.same({ 2, 2, 0, st.seen - 2, 0 },
                { st.emitted, st.received, st.lua_filtered, st.kfiltered, st.lost }, read)
            t:close()
        end
    end

    it("checks a 12-mark set of large values in the kernel (a hash, not a bitmap): exact packets", function()
        netns.require_root()
        local marks = { "mark == 7" }
        for i = 1, 11 do
            marks[#marks + 1] = "mark == " .. (100000 + i)
        end
        local function udp(mark, sizes)
            return { "--mark", mark, "udp4", pair.ip4_a, pair.ip4_b, "7000", "40000", sizes }
        end
        check_large_set(marks, "mark", udp("7", "100,300"), { udp("9", "100"), udp("100012", "100") },
            { "142 7", "342 7" })
    end)

    it("checks a 64-port set in the kernel (a bitmap): the exact packets pass, nothing else crosses", function()
        netns.require_root()
        local ports = {}
        for i = 1, 63 do
            ports[i] = "dport == " .. (20000 + i)
        end
        ports[64] = "dport == 7000"
        check_large_set(ports, "dport", { "udp4", pair.ip4_a, pair.ip4_b, "7000", "40000", "100,300" },
            { { "udp4", pair.ip4_a, pair.ip4_b, "7001", "40000", "100" },
              { "udp6", pair.ip6_a, pair.ip6_b, "20064", "40000", "100" } },
            { "142 7000", "342 7000" })
    end)

    -- A ring record stops after the last part of the event its run asks for (csrc/derive.c).
    -- Every field asked alone must equal that field of an all-fields run on the same packets,
    -- in every read path: in place (no filter: the verifier bounds every write by the record
    -- size) and built in scratch then copied (a filter: a record cut short would lose it).
    it("gives every field asked alone the value of an all-fields run, in place and copied, in every read path",
        function()
        netns.require_root()
        local netdevq = require("netdevq")
        local catalogue = require("netdevq.catalogue")
        local scope = ("netns == %d or netns == %d"):format(pair.netns_a, pair.netns_b)
        local names = {}
        for _, f in ipairs(catalogue.fields) do
            -- the clock and the fate members differ from one program to the next
            if f.need ~= "TS" and f.need ~= "LATENCY" then names[#names + 1] = f.name end
        end
        local tracers = {}
        finally(function()
            for _, t in pairs(tracers) do t:close() end
        end)
        local compared = 0
        for _, path in ipairs({ { read = "direct" }, { read = "probe" }, { mode = "btf" } }) do
            for _, filtered in ipairs({ false, true }) do
                local got = {}
                -- the reference (every field) always writes its records in place, whole: the
                -- verifier bounds those writes, so a copied record cut short cannot hide behind
                -- a reference cut the same way
                local function open(key, fields)
                    -- attached all at once below: one attached while the others load would
                    -- fill its ring with the machine's other traffic
                    local t = assert(netdevq.open{ mode = path.mode, read = path.read,
                        fields = fields, filter = (filtered and key ~= "all") and scope or nil,
                        ringbuf_size = 1048576, attach = false })
                    got[key] = {}
                    t:on_event(function(ev)
                        if ev.netns == pair.netns_a or ev.netns == pair.netns_b then
                            local v = ev:totable(key == "all" and names or { key })
                            for _, n in ipairs(key == "all" and names or { key }) do
                                local list = got[n .. (key == "all" and "/all" or "")] or {}
                                got[n .. (key == "all" and "/all" or "")] = list
                                list[#list + 1] = ev.skb .. " " .. tostring(v[n])
                            end
                        end
                    end)
                    tracers[#tracers + 1] = t
                    return t
                end
                local mine = {}
                for _, n in ipairs(names) do
                    -- netns and skb identify the packet: they lie before pid (no part of their own)
                    mine[n] = open(n, { n, "netns", "skb" })
                end
                local all = open("all", nil)
                for _, t in ipairs(tracers) do assert(t:attach()) end
                local ok, out = pair:exec("a", { "ip", "neigh", "del", pair.ip4_b, "dev", pair.veth_a })
                assert(ok, out) -- ARP first: the arp_* members lie at the end of the headers
                live.send(pair, "a", { "--mark", "7", "udp4", pair.ip4_a, pair.ip4_b, "7000", "40000",
                    "100" })
                live.send(pair, "a", { "icmp4", pair.ip4_a, pair.ip4_b, "1" })
                live.send(pair, "a", { "udp6", pair.ip6_a, pair.ip6_b, "7001", "40001", "20" })
                drain(tracers)
                local what = (path.read or path.mode) .. (filtered and ", copied" or ", in place")
                for _, n in ipairs(names) do
                    local want, have = got[n .. "/all"] or {}, got[n] or {}
                    table.sort(want)
                    table.sort(have)
                    assert.is_true(#want >= 6, what .. ": " .. n .. ": too few packets")
                    assert.are.same(want, have, what .. ": " .. n .. " "
                        .. require("cjson").encode({ mine = mine[n]:stats(), all = all:stats() }))
                    compared = compared + #want
                end
                for _, t in pairs(tracers) do t:close() end
                tracers = {}
            end
        end
        assert.is_true(compared > 0)
    end)

    it("names a renamed device by its new name only, in every read path (filters, keys, events)",
        function()
        netns.require_root()
        local netdevq = require("netdevq")
        -- the kernel's rename copies the new name and its NUL over the old one (strscpy): the
        -- old name's tail stays behind in dev->name
        local function rename(from, to)
            for _, argv in ipairs({ { "ip", "link", "set", "dev", from, "down" },
                { "ip", "link", "set", "dev", from, "name", to },
                { "ip", "link", "set", "dev", to, "up" } }) do
                local ok, out = pair:exec("a", argv)
                assert(ok, out)
            end
        end
        rename(pair.veth_a, "ndqrenamed12345")
        rename("ndqrenamed12345", "r0")
        finally(function() rename("r0", pair.veth_a) end)
        local ok, out = pair:exec("a", { "ip", "neigh", "replace", pair.ip4_b, "lladdr", pair.mac_b,
            "dev", "r0", "nud", "permanent" })
        assert(ok, out)
        -- UDP only: the link just came up, IPv6 may send its MLD reports any time now
        local scope = ('netns == %d and proto == "udp"'):format(pair.netns_a)
        local tracers = {}
        finally(function()
            for _, t in pairs(tracers) do t:close() end
        end)
        local opens = { probe = { read = "probe" }, direct = { read = "direct" }, btf = { mode = "btf" } }
        local names = {}
        for name, opts in pairs(opens) do
            -- the name compared whole in the kernel, and an in-kernel key on it
            opts.filter = scope .. ' and dev == "r0"'
            tracers[name] = assert(netdevq.open(opts))
            names[name] = {}
            tracers[name]:on_event(function(ev) names[name][#names[name] + 1] = ev.dev end)
            tracers[name .. " count"] = assert(netdevq.open{ mode = opts.mode, read = opts.read,
                filter = scope, aggregate = { kind = "count", keys = { "dev" } } })
        end
        live.send(pair, "a", { "udp4", pair.ip4_a, pair.ip4_b, "7000", "40000", "100,300,50" })
        drain(tracers)
        for name in pairs(opens) do
            assert.are.same({ "r0", "r0", "r0" }, names[name], name)
            local counts = {}
            for _, e in ipairs(assert(tracers[name .. " count"]:read_aggregate()):entries()) do
                counts[e.text] = e.count
            end
            assert.are.same({ ["[r0]"] = 3 }, counts, name .. " count")
        end
    end)
end)

describe("--read on the command line", function()
    local function cli(args)
        return clirun.cli(args, { env = { NETDEVQ_BUILD = clirun.build_dir() } })
    end

    it("rejects a read path btf mode does not have, and an unknown one (exit 2, one line)", function()
        local r = cli({ "--mode", "btf", "--read", "probe", "-d", "0.1" })
        assert.are.equal(2, r.code)
        assert.are.equal("netdevq: read probe applies to raw mode only: btf mode always loads sk_buff members "
            .. "directly\n", r.err)
        r = cli({ "--read", "fast", "-d", "0.1" })
        assert.are.equal(2, r.code)
        assert.are.equal("netdevq: --read must be auto, direct or probe, not fast\n", r.err)
    end)

    it("open{ read = } takes the same values", function()
        local netdevq = require("netdevq")
        local t, err, info = netdevq.open{ read = "fast" }
        assert.is_nil(t)
        assert.are.same({ "netdevq: read must be auto, direct or probe, not fast", "usage" }, { err, info.kind })
        t, err, info = netdevq.open{ mode = "btf", read = "direct" }
        assert.is_nil(t)
        assert.are.same("usage", info.kind, err)
    end)
end)
