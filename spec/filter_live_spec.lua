-- The filter's kernel part + Lua remainder on live traffic: for every filter of a representative
-- set (generated with a fixed seed from the values a recorded run shows, plus hand-picked ones for
-- each kind the kernel checks), a tracer opened with the filter delivers exactly the events the
-- Lua-only matcher (filter.compile of the whole filter) selects among the events an unfiltered
-- tracer saw of the same traffic, and its counters tell the kernel's rejections apart from Lua's.
--
-- One namespace pair; a fixed mixed traffic script (UDP v4/v6 on several ports and sizes, TCP
-- handshakes v4/v6, ICMP echo v4/v6, ICMP errors, --mark, --tos, --ttl, --priority variants,
-- UDPv6 behind destination options and fragmented, 802.1Q and QinQ frames) is sent once per
-- filter. The unfiltered tracer (scoped to the pair's two namespaces) stays attached for the whole
-- spec, so it sees the very skbs the filtered tracer sees: signatures can then
-- include pid, cpu and the skb address, and process-dependent filters (pid, comm) stay exact.
-- Every filter is and-ed with that scope, so other traffic on the machine never counts.
local netns = require("support.netns")
local live = require("support.live")
local frames = require("support.frames")

local SEED = 20261126
local GENERATED = 26

-- the fields two tracers attached at once read alike for one skb (not ts, time)
local SIG_FIELDS = {
    "dev", "ifindex", "netns", "proto", "saddr", "daddr", "sport", "dport", "len", "tcp_flags", "mark", "tos",
    "ttl", "priority", "queue", "ethertype", "smac", "dmac", "pid", "tid", "comm", "cpu", "skb", "data_len",
}

local function signature(ev)
    local parts = {}
    for i, f in ipairs(SIG_FIELDS) do
        local v = ev[f]
        parts[i] = v == nil and "-" or tostring(v)
    end
    return table.concat(parts, " ")
end

-- multiset difference: signatures in a (a list of events) missing from b, as text lines
local function missing(a, b)
    return live.missing(a, b, signature)
end

local monotonic_ms = live.monotonic_ms

---------------------------------------------------------------------------------------------
-- the traffic script
---------------------------------------------------------------------------------------------

-- Sends the mixed traffic once. The first sender waits for a file: on_pid(pid) runs while it
-- waits (the tracer under test opens then, and a `pid == {pid}` filter knows its pid). round
-- varies the TCP source ports (no TIME_WAIT clash between rounds).
local function send_traffic(pair, dir, round, on_pid)
    local tool = netns.ndq_send()
    local go = dir .. "/go" .. round
    local gated = pair:spawn("a", { tool, "--wait-file", go, "udp4", pair.ip4_a, pair.ip4_b, "7000", "40000",
        "10,500,1200" })
    local pid = tonumber((gated:line() or ""):match("^pid (%d+)"))
    assert(pid, "the gated sender did not say its pid")
    on_pid(pid)
    local f = assert(io.open(go, "w"))
    f:close()
    local ok, code, lines = gated:wait()
    assert(ok, "gated sender: exit " .. tostring(code) .. " " .. table.concat(lines, " | "))
    os.remove(go)

    local listeners = { live.listener(pair, "b", pair.ip4_b, 8080), live.listener(pair, "b", pair.ip6_b, 8443) }
    local sport4, sport6 = tostring(41000 + round), tostring(42000 + round)
    live.send_steps(pair, {
        { "a", "--mark", "7", "--tos", "16", "udp4", pair.ip4_a, pair.ip4_b, "7001", "40001", "100,300" },
        { "a", "--priority", "3", "udp4", pair.ip4_a, pair.ip4_b, "53", "40002", "60" },
        { "a", "--ttl", "5", "--tos", "32", "udp6", pair.ip6_a, pair.ip6_b, "7000", "40003", "20,600" },
        { "a", "--mark", "9", "udp6", pair.ip6_a, pair.ip6_b, "7002", "40004", "1000" },
        { "b", "udp4", pair.ip4_b, pair.ip4_a, "9000", "9001", "200" },
        { "a", "tcp4", pair.ip4_a, pair.ip4_b, "8080", sport4 },
        { "a", "--tos", "8", "tcp6", pair.ip6_a, pair.ip6_b, "8443", sport6 },
        { "a", "icmp4", pair.ip4_a, pair.ip4_b, "2" },
        { "a", "icmp6", pair.ip6_a, pair.ip6_b, "1" },
        { "b", "--mark", "7", "icmp6", pair.ip6_b, pair.ip6_a, "1" },
    })
    -- decoding: UDPv6 behind destination options (and fragmented), tagged frames (802.1Q
    -- UDPv4, QinQ TCPv6) written with AF_PACKET
    local ftool = tool:gsub("ndq_send$", "ndq_frames")
    local extra = {
        { ftool, "udp6", pair.ip6_a, pair.ip6_b, "7003", "40005", "30,2000", "dst" },
        { ftool, "frames", pair.veth_a,
          frames.eth(pair, "8100" .. "600a" .. "0800" .. frames.ipv4(pair, 17, frames.udp(40006, 7004, 20))),
          frames.eth(pair, "88a8" .. "4014" .. "8100" .. "801e" .. "86dd"
                     .. frames.ipv6(pair, 6, frames.tcp_syn(40007, 7005))) },
    }
    for _, argv in ipairs(extra) do
        local eok, out = pair:exec("a", argv)
        assert(eok, table.concat(argv, " ") .. ": " .. out)
    end
    live.wait_all(listeners, "tcplisten")
    return pid
end

---------------------------------------------------------------------------------------------
-- filters
---------------------------------------------------------------------------------------------

-- Hand-picked: each kind the kernel checks, sets, or-sets, and filters with a Lua remainder.
-- {A} {B}: the pair's netns inodes, {ia} {ib}: ifindexes, {da} {db}: device names, {pid}: the
-- first sender's pid in this round, {cg}: the senders' cgroup id.
local HAND_PICKED = {
    -- device, interface, namespace, process
    'dev == "{da}"', 'dev == "{db}" or dev == "lo"', "ifindex == {ib}", "netns == {A}", "netns ~= {A}",
    "pid == {pid}", "pid ~= {pid} and proto == \"udp\"", "tid == {pid} or tid == 0", 'comm == "ndq_send"',
    'comm ~= "ndq_send"', "cgroup == {cg}", "cgroup == {cg} or cgroup == 1", "cgroup ~= {cg}",
    -- link and network protocol
    'ethertype == "ipv6"', "ethertype == 0x0800", 'proto == "udp"', 'proto == "tcp" or proto == "icmpv6"',
    'proto == "icmp"',
    -- ports: single, sets, either side
    "sport == 40000", "dport == 7000 or dport == 7001 or dport == 53", "port == 8080", "port == 9000 or port == 9001",
    "dport ~= 7000",
    -- addresses, v4 and v6, exact and prefixes
    'saddr == "198.18.0.1"', 'daddr == "198.18.0.0/24"', 'host == "2001:db8::2"', 'saddr == "2001:db8::/64"',
    'host == "198.18.0.2/32" and proto == "tcp"', 'daddr == "198.19.0.0/16" or daddr == "2001:db8:1::/48"',
    -- length ranges, mark, queue, priority
    "len > 500", "len >= 60 and len <= 120", "len < 100", "mark == 7", "mark == 7 or mark == 9", "queue == 0",
    "queue == 1", "priority == 3",
    -- or-sets across fields the kernel cannot check as one set: a covering set plus Lua
    '(proto == "udp" and dport == 7000) or (proto == "udp" and dport == 7002)',
    '(saddr == "198.18.0.1" and dport == 7000) or (saddr == "2001:db8::1" and dport == 7002)',
    -- a Lua remainder
    "tos == 16", "ttl < 10", 'tcp_flags == "S."', 'dev == "{da}" and tcp_flags == "."', "not dport == 7000",
    "len == 52 or len == 542", 'smac == "02:6e:64:71:00:02"', "mark == 7 and tos == 16", "hash ~= 0 and len > 100",
    'saddr == "198.18.0.1" or daddr == "2001:db8::1"', 'not (proto == "udp")', "data_len == 0 and mac_len == 14",
    -- decoding: the upper layer behind IPv6 extension headers and VLAN tags (kernel: proto, ports),
    -- ICMP type/code, fragments, tags (Lua)
    'proto == "udp" and dport == 7003', "sport == 40005", 'proto == "udp" and not port > 0', "dport == 7004",
    'port == 7005 and proto == "tcp"', "vlan_id == 10", "vlan_proto == 0x88a8 or vlan_pcp == 3", "frag_off > 0",
    "frag_off == 0 and dport == 7003", "ip6_ext >= 1", 'icmp_type == 128 or icmp_type == 129',
    'proto == "icmp" and icmp_type == 8', 'ethertype == "vlan" or ethertype == "qinq"',
}

-- A seeded generator like the equivalence corpus's (spec/filter_spec.lua), over the values the
-- recorded run shows. ts and time are left out: two tracers read their own clock.
local function generator(seed, recorded)
    math.randomseed(seed)
    local rnd = math.random
    local function pick(list)
        return list[rnd(#list)]
    end
    local seen = {}
    for _, ev in ipairs(recorded) do
        for k, v in pairs(ev) do
            seen[k] = seen[k] or {}
            local dup = false
            for _, x in ipairs(seen[k]) do
                if x == v then
                    dup = true
                    break
                end
            end
            if not dup then
                seen[k][#seen[k] + 1] = v
            end
        end
    end
    seen.pid = { "{pid}", "{pid}", 0 }
    seen.tid = { "{pid}", 0 }
    seen.port, seen.host = {}, {}
    for _, k in ipairs({ "sport", "dport" }) do
        for _, v in ipairs(seen[k]) do
            seen.port[#seen.port + 1] = v
        end
    end
    for _, k in ipairs({ "saddr", "daddr" }) do
        for _, v in ipairs(seen[k]) do
            seen.host[#seen.host + 1] = v
        end
    end
    local fields = {}
    local order = { unpack(require("netdevq.catalogue").names) }
    order[#order + 1], order[#order + 2] = "port", "host"
    for _, name in ipairs(order) do
        if name ~= "ts" and name ~= "time" and seen[name] then
            fields[#fields + 1] = name
        end
    end
    -- what the kernel can check comes up more often
    local KERNEL = { "dev", "proto", "dport", "sport", "port", "saddr", "daddr", "host", "len", "pid", "comm", "mark",
                     "queue", "ethertype", "ifindex", "priority" }
    for _, name in ipairs(KERNEL) do
        fields[#fields + 1] = name
    end
    local PREFIXES = { "198.18.0.0/15", "198.18.0.0/24", "198.18.0.2/32", "2001:db8::/32", "2001:db8::/64",
                       "2001:db8::1/128", "0.0.0.0/0", "::/0" }
    local function quote(s)
        return '"' .. s .. '"'
    end
    local function value(field)
        local ty = require("netdevq.catalogue").by_name[field].type
        if ty == "integer" then
            local v = pick(seen[field])
            if type(v) == "string" then
                return v
            end
            if rnd(6) == 1 then
                v = math.max(0, v + rnd(3) - 2)
            end
            return rnd(5) == 1 and string.format("0x%x", v) or string.format("%d", v)
        elseif ty == "address" then
            local r = rnd(10)
            if r <= 5 then
                return quote(pick(seen[field]))
            elseif r <= 7 then
                local a = pick(seen[field])
                return quote(a .. "/" .. rnd(0, a:find(":") and 128 or 32))
            end
            return quote(pick(PREFIXES))
        elseif ty == "protocol" then
            return pick({ quote("udp"), quote("tcp"), quote("icmp"), quote("icmpv6"), "17", "6", "58", quote("sctp") })
        elseif ty == "ethertype" then
            return pick({ quote("ipv4"), quote("ipv6"), quote("arp"), "0x0800", quote("0x86dd") })
        end
        return quote(pick(seen[field]))
    end
    local ORDER_OPS = { "==", "~=", "!=", "<", "<=", ">", ">=" }
    local EQ_OPS = { "==", "==", "~=", "!=" }
    local function comparison(field, positive)
        field = field or pick(fields)
        local ty = require("netdevq.catalogue").by_name[field].type
        local op = pick(ty == "integer" and ORDER_OPS or EQ_OPS)
        if positive and rnd(10) <= 8 then
            op = (field == "len" or field == "queue") and pick({ "<", "<=", ">", ">=", "==" }) or "=="
        end
        return field .. " " .. op .. " " .. value(field)
    end
    local SET_FIELDS = { "dport", "sport", "port", "proto", "dev", "comm", "saddr", "daddr", "host", "len", "mark",
                         "pid", "ethertype", "ifindex", "priority" }
    local function or_set()
        local field = pick(SET_FIELDS)
        local parts = {}
        for i = 1, rnd(2, 5) do
            parts[i] = comparison(field, true)
        end
        return "(" .. table.concat(parts, " or ") .. ")"
    end
    local expr
    expr = function(depth)
        local r = rnd(10)
        if depth <= 0 or r <= 3 then
            return comparison()
        elseif r <= 5 then
            return or_set()
        elseif r <= 8 then
            local parts = {}
            for i = 1, rnd(2, 3) do
                parts[i] = expr(depth - 1)
            end
            return "(" .. table.concat(parts, " " .. pick({ "and", "or" }) .. " ") .. ")"
        end
        return "not " .. (rnd(2) == 1 and comparison() or expr(depth - 1))
    end
    return function()
        local parts = {}
        for i = 1, rnd(1, 3) do
            local r = rnd(10)
            if r <= 3 then
                parts[i] = comparison(pick(SET_FIELDS), true)
            elseif r <= 5 then
                parts[i] = or_set()
            else
                parts[i] = expr(2)
            end
        end
        return table.concat(parts, " and ")
    end
end

---------------------------------------------------------------------------------------------
-- the spec
---------------------------------------------------------------------------------------------

describe("filter pushdown on live traffic #root", function()
    local pair, dir
    -- ICMP errors every time, not at the rate limit's whim
    live.pair_each_test({ name = "ndqfl", icmp_unlimited = true, tmpdir = true },
        function(p, d) pair, dir = p, d end)

    it("delivers exactly what the whole filter selects from an unfiltered view of the same skbs", function()
        netns.require_root()
        local netdevq = require("netdevq")
        local filter = require("netdevq.filter")
        local ffi = require("ffi")
        local abi = require("netdevq.abi")
        local started = monotonic_ms()
        local scope = ("(netns == %d or netns == %d)"):format(pair.netns_a, pair.netns_b)

        -- the unfiltered view: every event of the pair, for the whole spec
        local ref = assert(netdevq.open{ filter = scope })
        local ref_events = {}
        ref:on_event(function(ev) ref_events[#ref_events + 1] = ev:totable() end)
        local open_tracers = { ref }
        finally(function()
            for _, t in ipairs(open_tracers) do
                t:close()
            end
        end)

        local function drain(t)
            repeat
                local n = assert(t:poll(0))
            until n == 0
        end

        -- polls until the unfiltered view has been quiet for 150 ms (at most 2 s)
        local function settle(tracers)
            local last_n, quiet_since = #ref_events, monotonic_ms()
            local deadline = quiet_since + 2000
            while monotonic_ms() < deadline do
                for _, t in ipairs(tracers) do
                    assert(t:poll(10))
                end
                if #ref_events ~= last_n then
                    last_n, quiet_since = #ref_events, monotonic_ms()
                elseif monotonic_ms() - quiet_since >= 150 then
                    break
                end
            end
        end

        local sender_cgroup
        local function subst(text, pid)
            local map = { A = pair.netns_a, B = pair.netns_b, ia = pair.ifindex_a, ib = pair.ifindex_b,
                          da = pair.veth_a, db = pair.veth_b, pid = pid, cg = sender_cgroup }
            return (text:gsub("{(%w+)}", function(k) return tostring(assert(map[k], k)) end))
        end

        -- one round: the traffic, seen by the unfiltered view and (when expr) by a tracer opened
        -- with scope and expr; returns the unfiltered events, and the delivered events, stats,
        -- whole filter text of the filtered tracer
        local function round(n, expr, mode)
            local t, delivered, whole = nil, {}, nil
            send_traffic(pair, dir, n, function(pid)
                drain(ref)
                ref_events = {}
                if expr then
                    whole = scope .. " and (" .. subst(expr, pid) .. ")"
                    local err
                    t, err = netdevq.open{ filter = whole, mode = mode }
                    assert(t, err)
                    open_tracers[#open_tracers + 1] = t
                    t:on_event(function(ev) delivered[#delivered + 1] = ev:totable() end)
                end
            end)
            settle({ ref, t })
            if not t then
                drain(ref)
                return ref_events
            end
            drain(ref)
            t:detach()
            drain(t)
            local st = assert(t:stats())
            t:close()
            open_tracers[#open_tracers] = nil
            return ref_events, delivered, st, whole
        end

        -- the recorded run: the mix the filters are drawn from
        local recorded = round(0)
        local kinds = {}
        for _, ev in ipairs(recorded) do
            assert.is_true(ev.netns == pair.netns_a or ev.netns == pair.netns_b)
            if ev.dev == pair.veth_a and ev.proto == "udp" and ev.comm == "ndq_send" then
                sender_cgroup = ev.cgroup
            end
            kinds[ev.dev .. " " .. tostring(ev.proto)] = true
            kinds["flags " .. tostring(ev.tcp_flags)] = true
            kinds["mark " .. ev.mark] = true
            kinds["tos " .. tostring(ev.tos)] = true
            kinds["priority " .. ev.priority] = true
            kinds["ethertype " .. tostring(ev.ethertype)] = true
        end
        for _, k in ipairs({ pair.veth_a .. " udp", pair.veth_a .. " tcp", pair.veth_a .. " icmp",
                             pair.veth_a .. " icmpv6", pair.veth_b .. " tcp", pair.veth_b .. " icmp",
                             pair.veth_b .. " icmpv6", pair.veth_b .. " udp", "flags S", "flags S.", "flags .",
                             "mark 7", "mark 9", "tos 16", "tos 32", "priority 3", "ethertype ipv4",
                             "ethertype ipv6" }) do
            assert.is_true(kinds[k], "the recorded run lacks " .. k)
        end

        local filters = {}
        for _, f in ipairs(HAND_PICKED) do
            filters[#filters + 1] = f
        end
        local gen = generator(SEED, recorded)
        for _ = 1, GENERATED do
            filters[#filters + 1] = gen()
        end

        local failures = {}
        local checked, kernel_rejecting, with_remainder, events_compared, partial = 0, 0, 0, 0, 0
        for i, expr in ipairs(filters) do
            local mode = i % 2 == 0 and "btf" or "raw"
            local seen, delivered, st, whole = round(i, expr, mode)
            local tree = assert(filter.parse(whole))
            local match = filter.compile(tree, require("support.decoded").getters)
            local cfg = ffi.new(abi.config_t)
            local rest = filter.pushdown(tree, cfg)
            local expected, kernel_pass = {}, 0
            for _, ev in ipairs(seen) do
                if match(ev) then
                    expected[#expected + 1] = ev
                end
                if require("support.kernel_model").kernel_model(cfg, ev) then
                    kernel_pass = kernel_pass + 1
                end
            end
            local problems = {}
            local extra, lacking = missing(delivered, expected), missing(expected, delivered)
            if #extra > 0 then
                problems[#problems + 1] = "  delivered but not selected by the whole filter:\n"
                    .. table.concat(extra, "\n")
            end
            if #lacking > 0 then
                problems[#problems + 1] = "  selected by the whole filter but not delivered:\n"
                    .. table.concat(lacking, "\n")
            end
            -- the scope is in the kernel: nothing from elsewhere reached Lua, so the counters are exact
            local scoped = cfg.netns.n > 0
            for j = 0, cfg.netns.n - 1 do
                scoped = scoped and (cfg.netns.v[j] == pair.netns_a or cfg.netns.v[j] == pair.netns_b)
            end
            local want = {
                matched = #delivered, lost = 0, pcap_dropped = 0, received = st.emitted,
                lua_filtered = st.emitted - #delivered,
            }
            if scoped then
                want.emitted = kernel_pass
                want.lua_filtered = kernel_pass - #expected
            else
                problems[#problems + 1] = "  the pair's namespaces were not checked in the kernel"
            end
            for k, v in pairs(want) do
                if st[k] ~= v then
                    problems[#problems + 1] = ("  %s = %s, want %s"):format(k, tostring(st[k]), tostring(v))
                end
            end
            local rejected_here = #seen - kernel_pass
            if st.kfiltered < rejected_here or (rejected_here > 0 and st.kfiltered == 0) then
                problems[#problems + 1] = ("  kfiltered = %d, but the kernel part rejects %d events of the pair")
                    :format(st.kfiltered, rejected_here)
            end
            if st.seen < st.kfiltered + st.emitted + st.lost then
                problems[#problems + 1] = ("  seen %d < kfiltered %d + emitted %d + lost %d")
                    :format(st.seen, st.kfiltered, st.emitted, st.lost)
            end
            if #problems > 0 then
                failures[#failures + 1] = ("filter %d (%s): %s\n  kernel: %s\n  remainder: %s\n  %d events of the "
                    .. "pair, %d pass the kernel part, %d selected, %d delivered\n%s")
                    :format(i, mode, whole, require("support.kernel_model").kernel_summary(cfg),
                        rest and filter.format(rest) or "(none)",
                        #seen, kernel_pass, #expected, #delivered, table.concat(problems, "\n"))
            end
            checked = checked + 1
            events_compared = events_compared + #seen
            if rejected_here > 0 then
                kernel_rejecting = kernel_rejecting + 1
            end
            if rest then
                with_remainder = with_remainder + 1
            end
            if #expected > 0 and #expected < #seen then
                partial = partial + 1
            end
        end
        print(("\nfilter live: %d filters (%d hand-picked, %d generated, seed %d) x ~%d events; the kernel part "
            .. "rejects events of the pair for %d, a Lua remainder runs for %d, %d select some but not all; "
            .. "%d events compared in %.1f s"):format(checked, #HAND_PICKED, GENERATED, SEED, #recorded,
            kernel_rejecting, with_remainder, partial, events_compared, (monotonic_ms() - started) / 1000))
        assert(#failures == 0, #failures .. " of " .. checked .. " filters disagree:\n" .. table.concat(failures, "\n"))
        assert.is_true(checked >= 40)
        assert.is_true(kernel_rejecting >= checked / 2)
        assert.is_true(with_remainder >= 10)
        assert.is_true(partial >= checked / 2)
    end)
end)
