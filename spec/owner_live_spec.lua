-- Socket-owner attribution on live traffic (owner_pid, owner_tid, owner_comm, owner_uid,
-- owner_cgroup): the process whose socket a packet belongs to, also when the kernel sends it
-- later from softirq, while pid/comm stay the task on the CPU.
--
-- Every tracer run is scoped to the spec's own namespaces (`netns == ...`): device names repeat
-- in other specs' namespaces. Senders get their own comm (ndq_send --name), uid (setpriv) and
-- cgroup (a cgroup v2 directory made for the run), so every owner field has one exact value.
local netns = require("support.netns")
local clirun = require("support.clirun")
local live = require("support.live")
local bpfobjs = require("support.bpfobjs")
local cjson = require("cjson")

local OWNER = "owner_pid,owner_tid,owner_comm,owner_uid,owner_cgroup"
-- the three ways the sk_buff and the socket are read: raw mode's direct loads (--read auto on
-- this kernel), its probe reads, and tp_btf
local MODES = { { "raw", { "--mode", "raw" } }, { "raw --read probe", { "--mode", "raw", "--read", "probe" } },
                { "btf", { "--mode", "btf" } } }
local function with_mode(mode, args)
    local out = { unpack(mode[2]) }
    for _, a in ipairs(args) do
        out[#out + 1] = a
    end
    return out
end

local function touch(path)
    assert(io.open(path, "w")):close()
end

-- tracers still running when a test ends (a failed assertion): stopped in after_each
local clis = live.tracked_clis()
local start_cli, stop_cli, parse = clis.start, clis.stop, live.json_objects
local cgroup2_root, inode = live.cgroup2_root, live.inode

-- a asks b for its address every 200 ms, 150 times: datagrams queued for the neighbour wait up
-- to 30 s for b to answer (by default a drops them after 3 probes a second apart, which a loaded
-- machine can spend before a test releases them)
local function patient_neigh(pair)
    local va = pair.veth_a
    assert(pair:exec("a", { "sysctl", "-qw", "net.ipv4.neigh." .. va .. ".retrans_time_ms=200",
        "net.ipv4.neigh." .. va .. ".mcast_solicit=150", "net.ipv6.neigh." .. va .. ".retrans_time_ms=200",
        "net.ipv6.neigh." .. va .. ".mcast_solicit=150" }))
end

-- lines of a spawned ndq_send until one equals want; the pid from its "pid N" line
local function until_line(proc, want)
    local pid
    repeat
        local l = proc:line()
        assert(l, "ndq_send ended before printing " .. want)
        pid = pid or tonumber(l:match("^pid (%d+)$"))
    until l == want
    return pid
end

describe("socket owner attribution #root", function()
    local pair, dir, cg
    live.no_leftovers()

    before_each(function()
        if netns.is_root() then
            dir = clirun.tmpdir()
        end
    end)

    after_each(function()
        clis.stop_all()
        if pair then
            pair:destroy()
            pair = nil
        end
        if cg then
            os.execute("rmdir " .. clirun.quote(cg) .. " 2>/dev/null")
            cg = nil
        end
        if dir then
            clirun.rmtree(dir)
            dir = nil
        end
    end)

    for _, mode in ipairs(MODES) do
    it("charges datagrams that waited for ARP/ND to their sender, not to the task that sent them later ("
        .. mode[1] .. ")", function()
            netns.require_root()
            pair = assert(netns.pair{ name = "ndqow", static_neigh = false })
            -- b answers neither ARP nor ND until its addresses come back; a asks every 200 ms
            assert(pair:exec("b", { "ip", "addr", "flush", "dev", pair.veth_b }))
            patient_neigh(pair)
            local root = cgroup2_root()
            local cg_id
            if root then
                cg = root .. "/ndq-owner-" .. tostring(pair.netns_a)
                assert(os.execute("mkdir " .. clirun.quote(cg)) == 0)
                cg_id = inode(cg)
            end
            local cli = start_cli(with_mode(mode, { "-F", "json", "-f", "netns == " .. pair.netns_a, "-o",
                "comm,pid,cgroup,ethertype,proto,dport,len," .. OWNER }))
            -- each sender: into the cgroup (from the host: `ip netns exec` hides /sys/fs/cgroup),
            -- then into namespace a as uid 65534; 3 datagrams, then it exits
            local senders = {}
            local sends = { { "ndq_own4", "udp4", pair.ip4_a, pair.ip4_b },
                            { "ndq_own6", "udp6", pair.ip6_a, pair.ip6_b } }
            for _, v in ipairs(sends) do
                local argv = { "ip", "netns", "exec", pair.ns_a, "setpriv", "--reuid", "65534", "--regid", "65534",
                    "--clear-groups", netns.ndq_send(), "--name", v[1], v[2], v[3], v[4], "9000", "40000", "100", "3" }
                local out = live.run_in_cgroup(argv, cg)
                senders[v[1]] = tonumber(out:match("pid (%d+)"))
            end
            -- the datagrams wait in the neighbour queue; now b's addresses come back
            assert(pair:exec("b", { "ip", "addr", "add", pair.ip4_b .. "/24", "dev", pair.veth_b }))
            assert(pair:exec("b", { "ip", "addr", "add", pair.ip6_b .. "/64", "dev", pair.veth_b, "nodad" }))
            -- b asks for a's address (ARP request, neighbour solicitation): a learns b from them
            -- and releases the queue at once, whenever its own next probe would go out (the ASan
            -- pass twice saw none of one family's datagrams nor a's ping: a's probe came late)
            local ok4 = pair:exec("b", { netns.ndq_send(), "icmp4", pair.ip4_b, pair.ip4_a, "1" })
                and pair:exec("a", { netns.ndq_send(), "icmp4", pair.ip4_a, pair.ip4_b, "1" })
            local ok6 = pair:exec("b", { netns.ndq_send(), "icmp6", pair.ip6_b, pair.ip6_a, "1" })
                and pair:exec("a", { netns.ndq_send(), "icmp6", pair.ip6_a, pair.ip6_b, "1" })
            assert(ok4 and ok6, "b did not come back")
            local events = parse(stop_cli(cli).out)

            local datagrams, requests = {}, {}
            for _, ev in ipairs(events) do
                if ev.proto == "udp" and ev.dport == 9000 then
                    datagrams[#datagrams + 1] = ev
                elseif ev.owner_comm == nil and senders[ev.comm] and
                    (ev.ethertype == "arp" or ev.proto == "icmpv6") then
                    requests[#requests + 1] = ev
                end
            end
            -- on a miss, say which were seen (length 162: IPv4, 182: IPv6) and what else came
            local seen = {}
            for _, ev in ipairs(events) do
                seen[#seen + 1] = ("%s/%s/%s/%s"):format(tostring(ev.ethertype), tostring(ev.proto),
                    tostring(ev.len), tostring(ev.owner_comm or ev.comm))
            end
            assert.are.equal(6, #datagrams, "events: " .. table.concat(seen, " "))
            for _, ev in ipairs(datagrams) do
                local name = ev.len == 14 + 20 + 8 + 100 and "ndq_own4" or "ndq_own6"
                assert.are.equal(14 + (name == "ndq_own4" and 20 or 40) + 8 + 100, ev.len)
                assert.are.same({ senders[name], senders[name], name, 65534 },
                    { ev.owner_pid, ev.owner_tid, ev.owner_comm, ev.owner_uid })
                if cg_id then
                    assert.are.equal(cg_id, ev.owner_cgroup)
                else
                    assert.is_true(ev.owner_cgroup >= 1)
                end
                -- sent from softirq once the neighbour answered: the sender had exited by then
                assert.are_not.equal(senders[name], ev.pid)
                assert.are_not.equal(name, ev.comm)
            end
            -- the solicitations the senders' own sends made: the task is the sender, no socket
            assert.is_true(#requests >= 2, "no ARP request / neighbour solicitation from the senders")
            for _, ev in ipairs(requests) do
                assert.are.equal(senders[ev.comm], ev.pid)
                assert.is_nil(ev.owner_pid)
                if cg_id then
                    assert.are.equal(cg_id, ev.cgroup)
                end
            end
        end)
    end
    it("keeps the sender as owner when another process's netlink request releases its datagrams", function()
        netns.require_root()
        pair = assert(netns.pair{ name = "ndqon", static_neigh = false })
        assert(pair:exec("b", { "ip", "addr", "flush", "dev", pair.veth_b })) -- b never answers
        patient_neigh(pair)
        local cli = start_cli({ "-F", "json", "-f", "netns == " .. pair.netns_a .. " and dport == 9000", "-o",
            "comm,pid,len," .. OWNER })
        local want = {}
        for _, v in ipairs({ { "ndq_nl4", "udp4", pair.ip4_a, pair.ip4_b, 142 },
                             { "ndq_nl6", "udp6", pair.ip6_a, pair.ip6_b, 162 } }) do
            local ok, out = pair:exec("a", { netns.ndq_send(), "--name", v[1], v[2], v[3], v[4], "9000", "40000",
                "100", "3" })
            assert(ok, out)
            -- the neighbour entry made permanent by `ip neigh replace`: the queued datagrams leave
            -- in that ip process's context (not in softirq)
            local script = "echo $$; exec ip -n " .. pair.ns_a .. " neigh replace " .. v[4] .. " lladdr "
                .. pair.mac_b .. " dev " .. pair.veth_a .. " nud permanent"
            local rok, rout = netns.run({ "sh", "-c", script })
            assert(rok, rout)
            want[v[5]] = { tonumber(rout:match("^(%d+)")), "ip", tonumber(out:match("pid (%d+)")), v[1] }
        end
        local events = parse(stop_cli(cli).out)
        local n = { [142] = 0, [162] = 0 }
        for _, ev in ipairs(events) do
            local w = want[ev.len]
            assert.are.same(w, { ev.pid, ev.comm, ev.owner_pid, ev.owner_comm })
            n[ev.len] = n[ev.len] + 1
        end
        assert.are.same({ [142] = 3, [162] = 3 }, n)
    end)

    for _, mode in ipairs(MODES) do
    it("names no owner for datagrams whose socket closed before netdevq started, released by another process's"
        .. " netlink request; -c running that request takes none of them (" .. mode[1] .. ")", function()
        netns.require_root()
        pair = assert(netns.pair{ name = "ndqoz", static_neigh = false })
        assert(pair:exec("b", { "ip", "addr", "flush", "dev", pair.veth_b })) -- b never answers
        patient_neigh(pair)
        -- sent, queued for the neighbour, and the sender gone (its socket closed) before any tracer
        for _, v in ipairs({ { "udp4", pair.ip4_a, pair.ip4_b }, { "udp6", pair.ip6_a, pair.ip6_b } }) do
            assert(pair:exec("a", { netns.ndq_send(), "--name", "ndq_gone", v[1], v[2], v[3], "9000", "40000",
                "100", "3" }))
        end
        local scope = "netns == " .. pair.netns_a .. " and dport == 9000"
        local all = start_cli(with_mode(mode, { "-F", "json", "-f", scope, "-o", "comm,len," .. OWNER }))
        -- the neighbour entries made permanent: the queued datagrams leave in ip's context (not in
        -- softirq), which must neither become their owner nor make -c take them
        local replace = {}
        for _, ip in ipairs({ pair.ip4_b, pair.ip6_b }) do
            replace[#replace + 1] = table.concat({ "ip -n", pair.ns_a, "neigh replace", ip, "lladdr", pair.mac_b,
                "dev", pair.veth_a, "nud permanent" }, " ")
        end
        local r = clirun.cli(with_mode(mode, { "-F", "json", "-o", "len,owner_pid", "-f", scope, "-c",
            "sh -c '" .. table.concat(replace, "; ") .. "'" }), { timeout = 30 })
        assert.are.equal(0, r.code, r.err)
        assert.are.same({}, parse(r.out))
        local got = {}
        for _, ev in ipairs(parse(stop_cli(all).out)) do
            got[#got + 1] = { ev.comm, ev.len, ev.owner_pid, ev.owner_comm }
        end
        local v4, v6 = { "ip", 142 }, { "ip", 162 }
        assert.are.same({ v4, v4, v4, v6, v6, v6 }, got)
    end)
    end

    it("shows the owner in the default text line and pcapng comments; -p and --comm select by it", function()
        netns.require_root()
        pair = assert(netns.pair{ name = "ndqos", static_neigh = false })
        assert(pair:exec("b", { "ip", "addr", "flush", "dev", pair.veth_b })) -- b answers later
        patient_neigh(pair)
        local scope = "netns == " .. pair.netns_a
        local go = dir .. "/go"
        -- the sender waits for the go file, so that -p can name it before it sends
        local who = pair:spawn("a", { netns.ndq_send(), "--name", "ndq_who", "--wait-file", go, "udp4",
            pair.ip4_a, pair.ip4_b, "9000", "40000", "100", "3" })
        local pid = tonumber(who:line():match("^pid (%d+)$"))
        local file = dir .. "/who.pcapng"
        local text = start_cli({ "-f", scope .. " and dport == 9000" })
        local pcap = start_cli({ "-q", "-w", file, "-f", scope .. " and dport == 9000" })
        local jfields = { "-F", "json", "-o", "comm,pid,ethertype,dport,owner_pid,owner_comm", "-f",
            scope }
        local by_pid = start_cli({ "-p", tostring(pid), unpack(jfields) })
        local by_comm = start_cli({ "--comm", "ndq_who", unpack(jfields) })
        touch(go)
        assert.are.equal("done", who:line())
        -- another process's datagrams wait for the same neighbour: no -p/--comm run takes them
        assert(pair:exec("a", { netns.ndq_send(), "--name", "ndq_other", "udp4", pair.ip4_a, pair.ip4_b,
            "9001", "40001", "100", "2" }))
        assert(pair:exec("b", { "ip", "addr", "add", pair.ip4_b .. "/24", "dev", pair.veth_b }))
        -- b's ARP request releases a's queue at once (see the ARP/ND test above)
        assert(pair:exec("b", { netns.ndq_send(), "icmp4", pair.ip4_b, pair.ip4_a, "1" }))
        assert(pair:exec("a", { netns.ndq_send(), "icmp4", pair.ip4_a, pair.ip4_b, "1" }))

        -- the text line: time comm pid dev len proto saddr:sport > daddr:dport, owner's comm/pid
        local lines = {}
        for _, l in ipairs(clirun.lines(stop_cli(text).out)) do
            local comm, p, rest = l:match("^%d%d:%d%d:%d%d%.%d+ (%S+) (%d+) (.*)$")
            lines[#lines + 1] = { comm, tonumber(p), rest }
        end
        local line = { "ndq_who", pid,
            pair.veth_a .. " 142 udp " .. pair.ip4_a .. ":40000 > " .. pair.ip4_b .. ":9000" }
        assert.are.same({ line, line, line }, lines)
        -- pcapng comments, as tshark reads them
        stop_cli(pcap)
        local ok, out = netns.run({ "tshark", "-r", file, "-T", "fields", "-e", "frame.comment" })
        assert(ok, out)
        local c = ("comm: ndq_who, pid: %d, tid: %d, queue: 0, mark: 0"):format(pid, pid)
        local comments = {}
        for _, l in ipairs(clirun.lines(out)) do
            if not l:match("^Running as user") then -- tshark's note on stderr
                comments[#comments + 1] = l
            end
        end
        assert.are.same({ c, c, c }, comments)
        -- -p and --comm: the three datagrams (sent from softirq: the task is someone else) and
        -- the ARP requests ndq_who's own sends made (no socket: the task decides)
        for _, cli in ipairs({ by_pid, by_comm }) do
            local events = parse(stop_cli(cli).out)
            local datagrams, arp = 0, 0
            for _, ev in ipairs(events) do
                if ev.owner_pid then
                    assert.are.same({ pid, "ndq_who", 9000 }, { ev.owner_pid, ev.owner_comm, ev.dport })
                    assert.are_not.equal(pid, ev.pid)
                    datagrams = datagrams + 1
                else
                    assert.are.same({ pid, "ndq_who", "arp" }, { ev.pid, ev.comm, ev.ethertype })
                    arp = arp + 1
                end
            end
            assert.are.equal(3, datagrams)
            assert.is_true(arp >= 1)
        end
    end)

    it("-c follows the command's sockets: datagrams released from softirq after it sent them", function()
        netns.require_root()
        pair = assert(netns.pair{ name = "ndqoc", static_neigh = false })
        assert(pair:exec("b", { "ip", "addr", "flush", "dev", pair.veth_b })) -- b answers later
        patient_neigh(pair)
        -- another process's datagrams wait in the same neighbour queue: not the command's
        assert(pair:exec("a", { netns.ndq_send(), "--name", "ndq_other", "udp4", pair.ip4_a, pair.ip4_b,
            "9001", "40001", "100", "2" }))
        -- the command: sends 3 datagrams (queued), gives b its address, waits until a has
        -- resolved b (the queue is released then; 10 s at most), and a moment more
        local script = table.concat({ "ip netns exec", pair.ns_a, netns.ndq_send(), "--name ndq_cmd udp4",
            pair.ip4_a, pair.ip4_b, "9000 40000 100 3; ip -n", pair.ns_b, "addr add", pair.ip4_b .. "/24 dev",
            pair.veth_b, "; i=0; while [ $i -lt 100 ] && ! ip -n", pair.ns_a, "neigh show", pair.ip4_b,
            "dev", pair.veth_a, "| grep -q REACHABLE; do sleep 0.1; i=$((i+1)); done; sleep 0.5" }, " ")
        local r = clirun.cli({ "-F", "json", "-o", "comm,pid,dport,owner_pid,owner_comm", "-f",
            "netns == " .. pair.netns_a .. ' and proto == "udp"', "-c", "sh -c '" .. script .. "'" },
            { timeout = 30 })
        assert.are.equal(0, r.code, r.err)
        local pid = tonumber(r.out:match("pid (%d+)"))
        local n = 0
        for _, l in ipairs(clirun.lines(r.out)) do
            if l:sub(1, 1) == "{" then
                local ev = cjson.decode(l)
                if ev.type == "event" then
                    assert.are.same({ pid, "ndq_cmd", 9000 }, { ev.owner_pid, ev.owner_comm, ev.dport })
                    assert.are_not.equal(pid, ev.pid) -- released after ndq_cmd exited
                    n = n + 1
                end
            end
        end
        assert.are.equal(3, n)
    end)

    for _, mode in ipairs(MODES) do
    it("-p, --comm and -c take no packet the kernel queues from softirq without an owner, whoever it interrupted ("
        .. mode[1] .. ")", function()
            netns.require_root()
            pair = assert(netns.pair{ name = "ndqok" })
            local scope = "netns == " .. pair.netns_a
            -- a sends to its own address on a port nobody listens on: each datagram crosses a's
            -- lo, and the kernel's port-unreachable reply is queued in the softirq that runs as
            -- the datagram leaves, mostly on the sender's own stack (taking the task on the CPU
            -- for the sender would select the replies: mutation checked)
            local function send(name, sport, extra)
                local argv = { netns.ndq_send(), "--name", name }
                for _, a in ipairs(extra or {}) do
                    argv[#argv + 1] = a
                end
                for _, a in ipairs({ "udp4", pair.ip4_a, pair.ip4_a, "9", sport, "100", "3" }) do
                    argv[#argv + 1] = a
                end
                return argv
            end
            local fields = with_mode(mode, { "-F", "json", "-o", "comm,pid,proto,dport,owner_pid,owner_comm",
                "-f", scope })
            local function events(out)
                local got = {}
                for _, ev in ipairs(parse(out)) do
                    got[#got + 1] = { ev.proto, ev.dport, ev.owner_pid, ev.owner_comm }
                end
                return got
            end
            local go = dir .. "/go"
            local who = pair:spawn("a", send("ndq_self", "40000", { "--wait-file", go }))
            local pid = tonumber(who:line():match("^pid (%d+)$"))
            local all = start_cli(fields)
            local by_pid = start_cli({ "-p", tostring(pid), unpack(fields) })
            local by_comm = start_cli({ "--comm", "ndq_self", unpack(fields) })
            touch(go)
            assert.are.equal("done", who:line())
            local sent = { "udp", 9, pid, "ndq_self" }
            local reply = { "icmp" } -- the kernel's socket: no owner
            assert.are.same({ sent, sent, sent }, events(stop_cli(by_pid).out))
            assert.are.same({ sent, sent, sent }, events(stop_cli(by_comm).out))
            local got = events(stop_cli(all).out)
            table.sort(got, function(x, y) return x[1] > y[1] end)
            assert.are.same({ sent, sent, sent, reply, reply, reply }, got)

            -- -c: the command's own process tree is on the CPU when its replies are queued
            local cmd = table.concat({ "ip netns exec", pair.ns_a, table.concat(send("ndq_cmd", "40001"), " ") },
                " ")
            local r = clirun.cli({ "-c", cmd, unpack(fields) }, { timeout = 30 })
            assert.are.equal(0, r.code, r.err)
            local cmd_pid = tonumber(r.out:match("pid (%d+)"))
            sent = { "udp", 9, cmd_pid, "ndq_cmd" }
            assert.are.same({ sent, sent, sent }, events(r.out))
        end)
    end

    it("charges a bulk TCP transfer's data to the writer and the ACKs to the reader; --sum len --by owner_comm adds up",
        function()
            netns.require_root()
            pair = assert(netns.pair{ name = "ndqot" })
            local BYTES = 300000
            local scope = ("(netns == %d or netns == %d) and port == 7002"):format(pair.netns_a, pair.netns_b)
            local cli = start_cli({ "-F", "json", "-f", scope, "-o", "dev,netns,sport,dport,tcp_flags,len," .. OWNER,
                "--count", "owner_comm", "--sum", "len", "--by", "owner_comm" })
            local sink = pair:spawn("b", { netns.ndq_send(), "--name", "ndq_sink", "tcpsink", pair.ip4_b, "7002",
                "30000" })
            local sink_pid = until_line(sink, "listening")
            local ok, out = pair:exec("a", { netns.ndq_send(), "--name", "ndq_bulk", "tcpbulk", pair.ip4_a, pair.ip4_b,
                "7002", "41002", tostring(BYTES) })
            assert(ok, out)
            local bulk_pid = tonumber(out:match("pid (%d+)"))
            local sok, _, lines = sink:wait()
            assert(sok, table.concat(lines, " | "))
            assert.are.same({ "received " .. BYTES, "done" }, lines)
            local events, others = parse(stop_cli(cli).out)

            -- every packet of the connection has its side's process as owner
            local want = { [pair.netns_a] = { bulk_pid, "ndq_bulk", 7002 },
                           [pair.netns_b] = { sink_pid, "ndq_sink", 41002 } }
            local count, bytes, syn = {}, {}, {}
            for _, ev in ipairs(events) do
                local w = want[ev.netns]
                assert.are.same({ w[1], w[1], w[2], 0, w[3] },
                    { ev.owner_pid, ev.owner_tid, ev.owner_comm, ev.owner_uid, ev.dport })
                local name = ev.owner_comm
                count[name] = (count[name] or 0) + 1
                bytes[name] = (bytes[name] or 0) + ev.len
                -- Ethernet 14 + IPv4 20 + TCP 32 (timestamps); a SYN's options take 8 more
                local hdr = 66 + (ev.tcp_flags:find("S", 1, true) and 8 or 0)
                if ev.tcp_flags:find("S", 1, true) then
                    syn[name] = (syn[name] or 0) + 1
                end
                assert.is_true(ev.len >= hdr)
            end
            -- the payload each side wrote: BYTES from the writer, the 1-byte go from the reader
            assert.are.equal(1, syn.ndq_bulk)
            assert.are.equal(1, syn.ndq_sink)
            assert.are.equal(BYTES + 66 * count.ndq_bulk + 8, bytes.ndq_bulk)
            assert.are.equal(1 + 66 * count.ndq_sink + 8, bytes.ndq_sink)
            -- the reader's side is mostly ACKs, most of them sent from softirq
            assert.is_true(count.ndq_sink >= 3)

            -- the aggregations agree with the events, key by key
            local maps = {}
            for _, m in ipairs(others.map or {}) do
                local t = {}
                for _, d in ipairs(m.data) do
                    t[d.key[1]] = d.value
                end
                maps[m.name] = t
            end
            assert.are.same({ ndq_bulk = count.ndq_bulk, ndq_sink = count.ndq_sink }, maps["@count"])
            assert.are.same({ ndq_bulk = BYTES + 66 * count.ndq_bulk + 8, ndq_sink = 1 + 66 * count.ndq_sink + 8 },
                maps["@sum_len"])
        end)

    it("attributes a socket opened before netdevq started (found in /proc at start)", function()
        netns.require_root()
        pair = assert(netns.pair{ name = "ndqop" })
        local go_push, go_hold = dir .. "/push", dir .. "/hold"
        local push = pair:spawn("b", { netns.ndq_send(), "--name", "ndq_push", "--wait-file", go_push, "tcppush",
            pair.ip4_b, "7001", "30000", "20000" })
        until_line(push, "listening")
        local hold = pair:spawn("a", { netns.ndq_send(), "--name", "ndq_hold", "--wait-file", go_hold, "tcphold",
            pair.ip4_a, pair.ip4_b, "7001", "41001" })
        local hold_pid = until_line(hold, "connected")
        assert.are.equal("accepted", push:line())
        -- connected before the tracer: no send, receive or connect of ndq_hold is seen after it
        local cli = start_cli({ "-F", "json", "-f", ("netns == %d and port == 7001"):format(pair.netns_a), "-o",
            "comm,pid,tcp_flags,len," .. OWNER })
        touch(go_push)
        assert.are.equal("pushed", push:line())
        clirun.sleep(0.5) -- the kernel acknowledges the 20000 bytes; ndq_hold sleeps
        touch(go_hold)
        assert.is_true((hold:wait()))
        assert.is_true((push:wait()))
        local events = parse(stop_cli(cli).out)
        local acks = 0
        for _, ev in ipairs(events) do
            assert.are.same({ hold_pid, hold_pid, "ndq_hold", 0 },
                { ev.owner_pid, ev.owner_tid, ev.owner_comm, ev.owner_uid })
            if ev.tcp_flags == "." and ev.len == 66 then
                acks = acks + 1
            end
        end
        assert.is_true(acks >= 1, "no ACK of the pushed data from ndq_hold's socket")
    end)

    it("leaves forwarded packets without owner (a namespace routes between two others)", function()
        netns.require_root()
        pair = assert(netns.pair{ name = "ndqof" })
        -- c behind b: a (198.18.0.1) -> b (198.18.0.2 | 198.19.7.1) -> c (198.19.7.2)
        local c = "ndqofc-" .. tostring(pair.netns_a)
        local steps = {
            { "ip", "netns", "add", c },
            { "ip", "-n", pair.ns_b, "link", "add", "ndqfb", "type", "veth", "peer", "name", "ndqfc", "netns", c },
            { "ip", "-n", pair.ns_b, "addr", "add", "198.19.7.1/24", "dev", "ndqfb" },
            { "ip", "-n", c, "addr", "add", "198.19.7.2/24", "dev", "ndqfc" },
            { "ip", "-n", pair.ns_b, "link", "set", "ndqfb", "up" },
            { "ip", "-n", c, "link", "set", "ndqfc", "up" },
            { "ip", "-n", c, "link", "set", "lo", "up" },
            { "ip", "-n", c, "route", "add", "198.18.0.0/24", "via", "198.19.7.1" },
            { "ip", "-n", pair.ns_a, "route", "add", "198.19.7.0/24", "via", pair.ip4_b },
            { "ip", "netns", "exec", pair.ns_b, "sysctl", "-qw", "net.ipv4.ip_forward=1" },
        }
        finally(function() netns.run({ "ip", "netns", "del", c }) end)
        for _, argv in ipairs(steps) do
            local ok, out = netns.run(argv)
            assert(ok, table.concat(argv, " ") .. ": " .. out)
        end
        local rx = netns.spawn({ "ip", "netns", "exec", c, netns.ndq_send(), "udprecv", "198.19.7.2", "9000", "3",
            "5000" })
        until_line(rx, "ready")
        local cli = start_cli({ "-F", "json", "-f", ("(netns == %d or netns == %d) and dport == 9000"):format(
            pair.netns_a, pair.netns_b), "-o", "dev,netns,comm,pid,len," .. OWNER })
        local ok, out = pair:exec("a", { netns.ndq_send(), "--name", "ndq_fwd", "udp4", pair.ip4_a, "198.19.7.2",
            "9000", "40000", "100", "3" })
        assert(ok, out)
        local sender = tonumber(out:match("pid (%d+)"))
        assert.is_true((rx:wait()))
        local events = parse(stop_cli(cli).out)
        local sent, forwarded = 0, 0
        for _, ev in ipairs(events) do
            assert.are.equal(142, ev.len)
            if ev.netns == pair.netns_a then -- queued by the sender on a's veth
                sent = sent + 1
                assert.are.same({ sender, "ndq_fwd" }, { ev.owner_pid, ev.owner_comm })
            else -- forwarded by b onto ndqfb: no socket
                forwarded = forwarded + 1
                assert.are.equal("ndqfb", ev.dev)
                for _, f in ipairs({ "owner_pid", "owner_tid", "owner_comm", "owner_uid", "owner_cgroup" }) do
                    assert.is_nil(ev[f], f)
                end
            end
        end
        assert.are.same({ 3, 3 }, { sent, forwarded })
    end)

    it("loads and attaches the owner programs only when an owner field or -p/--comm asks for them", function()
        netns.require_root()
        -- names of the programs each tracer holds, as bpftool lists them
        local function progs(args)
            local cli = start_cli(args)
            local snap, names = bpfobjs.snapshot(), {}
            for id in pairs(bpfobjs.held(cli.pid).prog) do
                local e = snap.prog[id]
                names[#names + 1] = e and e.name or "?"
            end
            stop_cli(cli)
            table.sort(names)
            return names
        end
        local owner = { "ndq_owner_destroy", "ndq_owner_recv", "ndq_owner_send", "ndq_owner_softirq_entry",
            "ndq_owner_softirq_exit", "ndq_owner_state" }
        -- main, the owner programs and extra (an unfiltered stream's batches: netdevq_flush)
        local function with(main, extra)
            local t = { main, extra }
            for _, n in ipairs(owner) do
                t[#t + 1] = n
            end
            table.sort(t)
            return t
        end
        -- raw mode on this kernel (6.2+): --read auto loads the direct-load program
        assert.are.same({ "netdevq_direct" }, progs({ "-q", "-o", "comm,pid,dev,len", "-d", "10" }))
        assert.are.same({ "netdevq_direct" }, progs({ "-q", "--count", "comm,dev", "-d", "10" }))
        assert.are.same({ "netdevq_raw" }, progs({ "--read", "probe", "-q", "--count", "comm,dev", "-d", "10" }))
        assert.are.same(with("netdevq_direct", "netdevq_flush"), progs({ "-o", "len,owner_comm", "-d",
            "10" }))
        assert.are.same(with("netdevq_raw", "netdevq_flush"), progs({ "--read", "probe", "-o",
            "len,owner_comm", "-d", "10" }))
        assert.are.same(with("netdevq_btf"), progs({ "--mode", "btf", "-q", "--count", "owner_comm", "-d", "10" }))
        assert.are.same(with("netdevq_direct"), progs({ "-q", "-o", "len", "-p", "1", "-d", "10" }))
    end)
end)
