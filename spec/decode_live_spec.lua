-- Decoding on real traffic, tshark and tcpdump as the oracles: IPv6 extension headers (MLD's
-- hop-by-hop, destination options, routing headers, AH, fragments), ICMP/ICMPv6 type and code
-- (echo, unreachable, neighbour discovery), and VLAN tags, offloaded (a tc program calls
-- bpf_skb_vlan_push, as a VLAN device with tx offload would) and in the frame (802.1Q, QinQ),
-- in both tracing modes. Every packet the tracer saw on the test's veths is compared with what
-- tcpdump captured there (-Q out): fields, pcapng frames and `vlan and udp port N` selection.
local cjson = require("cjson.safe")
local netns = require("support.netns")
local oracle = require("support.decode_oracle")
local clirun = require("support.clirun")
local live = require("support.live")
local frames = require("support.frames")

local eth, ipv4, ipv6, udp = frames.eth, frames.ipv4, frames.ipv6, frames.udp
local tcp_syn, v6_hex = frames.tcp_syn, frames.v6_hex

local MODES = { "raw", "btf" }
local COMPARED = { "frame_len", "smac", "dmac", "saddr", "daddr", "proto", "sport", "dport",
    "icmp_type", "icmp_code", "vlan_id", "vlan_pcp", "vlan_proto", "frag_off", "ip6_ext" }

local function tool(name)
    return clirun.build_dir() .. "/" .. name
end

-- Processes --------------------------------------------------------------------------------------

-- snap: the header bytes each event carries (-s). With none (0), a kernel that allows it
-- (Linux 6.16+) decodes the headers in place instead of in a copy; a port or protocol filter
-- then first looks at the bytes it checks. Both ways must give the same fields.
-- mode: raw, btf, or probe (raw mode reading through copies: --read probe).
local function cli_argv(mode, pcapng, filter, expr, snap, fields)
    local args = { "-d", "60", "--mode", mode == "probe" and "raw" or mode, "-F", "json", "-s",
        tostring(snap or 256), "-f", filter }
    if mode == "probe" then
        args[#args + 1] = "--read"
        args[#args + 1] = "probe"
    end
    if fields then
        args[#args + 1] = "-o"
        args[#args + 1] = fields
    end
    if pcapng then
        args[#args + 1] = "-w"
        args[#args + 1] = pcapng
    end
    if expr then args[#args + 1] = expr end
    return clirun.cli_argv(args)
end

local function start_tracer(mode, pcapng, filter, expr, snap, fields)
    local p = netns.spawn(cli_argv(mode, pcapng, filter, expr, snap, fields))
    live.wait_ready(p, mode == "probe" and "raw" or mode)
    return p
end

local function stop_tracer(p)
    clirun.sleep(0.3)   -- the ring's last events reach the consumer
    p:kill("INT")
    local _, _, lines = p:wait()
    local events = {}
    for _, l in ipairs(lines) do
        if l:sub(1, 1) == "{" then
            local ev = assert(cjson.decode(l))
            if ev.type == "event" then events[#events + 1] = ev end
        end
    end
    return events
end

local function start_capture(pair, side, path)
    local p = pair:spawn(side, { "tcpdump", "-i", side == "a" and pair.veth_a or pair.veth_b,
        "-Q", "out", "--immediate-mode", "-nn", "-s", "0", "-Z", "root", "-w", path })
    local l = p:line()
    assert(l and l:match("^tcpdump: listening on"), "tcpdump did not start: " .. tostring(l))
    return p
end

local function stop_capture(p)
    p:kill("INT")
    p:wait()
end

-- Comparison -------------------------------------------------------------------------------------

local function project(ev)
    local out = { frame_len = ev.len }
    for _, f in ipairs(COMPARED) do
        if f ~= "frame_len" then out[f] = ev[f] end
    end
    return out
end

local function on_side(events, pair, side)
    local dev = side == "a" and pair.veth_a or pair.veth_b
    local ns = side == "a" and pair.netns_a or pair.netns_b
    local out = {}
    for _, ev in ipairs(events) do
        if ev.dev == dev and ev.netns == ns then out[#out + 1] = ev end
    end
    return out
end

-- A copy of a list of flat tables in one canonical order. Packets two CPUs queue at once (the
-- kernel's MLD timer beside a test's own send) can reach the tracepoint in one order and
-- tcpdump's tap in the other: where such packets meet, lists are compared in this order.
local function in_any_order(list)
    local keyed = {}
    for i, t in ipairs(list) do
        local names = {}
        for k in pairs(t) do names[#names + 1] = k end
        table.sort(names)
        for j, k in ipairs(names) do names[j] = k .. "=" .. tostring(t[k]) end
        keyed[i] = { key = table.concat(names, " "), t = t }
    end
    table.sort(keyed, function(x, y) return x.key < y.key end)
    for i, k in ipairs(keyed) do keyed[i] = k.t end
    return keyed
end

-- Every event equals tshark's decoding of the frame tcpdump captured at the same place, packet
-- by packet, or with any_order as the same set of packets. With no_len, frame lengths are left to
-- the frame comparison (an offloaded tag adds 4 bytes there).
local function assert_same_packets(ours, capture, what, no_len, any_order)
    local theirs = oracle.tshark_events(capture)
    assert.equal(#theirs, #ours, what .. ": packets")
    local mine = {}
    for i = 1, #theirs do
        mine[i] = project(ours[i])
        if no_len then
            mine[i].frame_len, theirs[i].frame_len = nil, nil
        end
    end
    if any_order then
        assert.same(in_any_order(theirs), in_any_order(mine), what .. ": packets")
    else
        for i = 1, #theirs do
            assert.same(theirs[i], mine[i], what .. ": packet " .. i)
        end
    end
    return theirs
end

local function pluck(list, field, n)
    local out = {}
    for i = 1, n or #list do out[i] = list[i][field] or false end
    return out
end

local function count(list, pred)
    local n = 0
    for _, x in ipairs(list) do
        if pred(x) then n = n + 1 end
    end
    return n
end

describe("decoding real traffic #root", function()
    local pair, dir
    live.pair_each_test({ name = "ndqd", tmpdir = true }, function(p, d) pair, dir = p, d end)

    for _, mode in ipairs(MODES) do
        it("IPv6 extension headers, fragments, MLD, ND and ICMP equal tshark's decoding (" .. mode
            .. ")", function()
            netns.require_root()
            local pcapng = dir .. "/ours.pcapng"
            local cap = { a = dir .. "/a.pcap", b = dir .. "/b.pcap" }
            local filter = ("netns == %d or netns == %d"):format(pair.netns_a, pair.netns_b)
            local tracer = start_tracer(mode, pcapng, filter)
            local in_place = start_tracer(mode, nil, filter, nil, 0)
            -- ports and protocols decided in the kernel over extension headers and fragments
            local port_filter = "(" .. filter .. ") and (dport == 9000 or dport == 9002 or "
                .. "dport == 9003 or sport == 40004 or dport == 9005 or port == 9006)"
            local proto_filter = "(" .. filter .. ") and proto == \"udp\""
            local ports = start_tracer(mode, nil, port_filter, nil, 0)
            local protos = start_tracer(mode, nil, proto_filter, nil, 0)
            -- proto and the ports alone: the kernel reads just them where it can
            local l4_only = start_tracer(mode, nil, filter, nil, 0, "dev,netns,len,proto,sport,dport")
            local ca, cb = start_capture(pair, "a", cap.a), start_capture(pair, "b", cap.b)
            local ok, out
            -- MLD: a new address joins its solicited-node group (hop-by-hop + ICMPv6 143)
            ok, out = pair:exec("a", { "ip", "-6", "addr", "add", "2001:db8::11/64", "dev",
                pair.veth_a, "nodad" })
            assert(ok, out)
            -- neighbour discovery before the echo: a's entry for b goes
            ok, out = pair:exec("a", { "ip", "-6", "neigh", "del", pair.ip6_b, "dev", pair.veth_a })
            assert(ok, out)
            ok, out = pair:exec("a", { netns.ndq_send(), "icmp6", pair.ip6_a, pair.ip6_b, "1" })
            assert(ok and out:match("replies 1"), out)
            -- fragmented ICMPv6 echo and its fragmented reply
            ok, out = pair:exec("a", { tool("ndq_frames"), "echo6", pair.ip6_a, pair.ip6_b, "3000" })
            assert(ok and out:match("replies 1"), out)
            -- destination options and hop-by-hop from socket options, fragmented too; b answers
            -- port unreachable
            ok, out = pair:exec("a", { tool("ndq_frames"), "udp6", pair.ip6_a, pair.ip6_b, "9000",
                "40001", "30,3000", "dst" })
            assert(ok, out)
            ok, out = pair:exec("a", { tool("ndq_frames"), "udp6", pair.ip6_a, pair.ip6_b, "9002",
                "40002", "20", "hop,dst" })
            assert(ok, out)
            -- routing headers (type 0 and segment routing, segments left 0) and AH, as frames
            local rt0 = "11" .. "02" .. "00" .. "00" .. "00000000" .. v6_hex(pair.ip6_b)
            local srh = "06" .. "02" .. "04" .. "00" .. "00" .. "00" .. "0000" .. v6_hex(pair.ip6_b)
            local ah = "11" .. "04" .. "0000" .. "00001000" .. "00000001" .. ("ab"):rep(12)
            ok, out = pair:exec("a", { tool("ndq_frames"), "frames", pair.veth_a,
                eth(pair, "86dd" .. ipv6(pair, 43, rt0 .. udp(40003, 9003, 12))),
                eth(pair, "86dd" .. ipv6(pair, 43, srh .. tcp_syn(40004, 9004))),
                eth(pair, "86dd" .. ipv6(pair, 51, ah .. udp(40005, 9005, 4))) })
            assert(ok, out)
            -- IPv4: echo, fragments, port unreachable
            ok, out = pair:exec("a", { netns.ndq_send(), "icmp4", pair.ip4_a, pair.ip4_b, "1" })
            assert(ok and out:match("replies 1"), out)
            ok, out = pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, "9006",
                "40006", "3000" })
            assert(ok, out)
            netns.run({ "sleep", "0.2" })
            stop_capture(ca)
            stop_capture(cb)
            local events = stop_tracer(tracer)
            local events_in_place = stop_tracer(in_place)
            local port_events, proto_events = stop_tracer(ports), stop_tracer(protos)
            local l4_events = stop_tracer(l4_only)

            local seen = {}
            for _, side in ipairs({ "a", "b" }) do
                local theirs = assert_same_packets(on_side(events, pair, side), cap[side],
                    mode .. " " .. side, false, true)
                assert_same_packets(on_side(events_in_place, pair, side), cap[side],
                    mode .. " in place " .. side, false, true)
                -- the kernel filters keep exactly tshark's packets that pass them
                local want_ports, want_protos = {}, {}
                for _, t in ipairs(theirs) do
                    seen[#seen + 1] = t
                    local d = t.dport
                    if d == 9000 or d == 9002 or d == 9003 or t.sport == 40004 or d == 9005
                        or d == 9006 or t.sport == 9006 then
                        want_ports[#want_ports + 1] = t
                    end
                    if t.proto == "udp" then want_protos[#want_protos + 1] = t end
                end
                local function projected(list)
                    local projections = {}
                    for i, ev in ipairs(list) do projections[i] = project(ev) end
                    return projections
                end
                assert.same(in_any_order(want_ports),
                    in_any_order(projected(on_side(port_events, pair, side))),
                    mode .. " port filter " .. side)
                local l4_mine, l4_want = on_side(l4_events, pair, side), {}
                assert.equal(#theirs, #l4_mine, mode .. " proto and ports alone: packets " .. side)
                for i, t in ipairs(theirs) do
                    l4_want[i] = { len = t.frame_len, proto = t.proto, sport = t.sport, dport = t.dport }
                    local e = l4_mine[i] or {}
                    l4_mine[i] = { len = e.len, proto = e.proto, sport = e.sport, dport = e.dport }
                end
                assert.same(in_any_order(l4_want), in_any_order(l4_mine),
                    mode .. " proto and ports alone " .. side)
                assert.same(in_any_order(want_protos),
                    in_any_order(projected(on_side(proto_events, pair, side))),
                    mode .. " protocol filter " .. side)
                if side == "a" then -- b only answers, with ICMP errors: no ports there
                    -- 9000 (first fragment), 9002, 9003, 40004, 9005, 9006 (and its fragments)
                    assert.is_true(#want_ports >= 6, "too few port matches: " .. #want_ports)
                end
            end
            -- the traffic held every kind this spec is about (a vacuous match proves nothing)
            local function has(pred, what)
                assert.is_true(count(seen, pred) > 0, "no " .. what .. " packet")
            end
            has(function(e) return e.icmp_type == 143 and e.ip6_ext == 1 end, "MLDv2 report")
            has(function(e) return e.icmp_type == 135 end, "neighbor solicitation")
            has(function(e) return e.icmp_type == 136 end, "neighbor advertisement")
            has(function(e) return e.icmp_type == 128 and e.frag_off == nil end, "echo request")
            has(function(e) return e.icmp_type == 129 and e.frag_off == 0 end, "fragmented reply")
            has(function(e) return e.proto == "icmpv6" and (e.frag_off or 0) > 0 end,
                "non-first ICMPv6 fragment")
            has(function(e) return e.proto == "udp" and e.ip6_ext == 2 and e.frag_off == 0
                and e.dport == 9000 end, "first UDP fragment after destination options")
            has(function(e) return e.proto == "udp" and (e.frag_off or 0) > 0
                and e.sport == nil and e.ip6_ext == 2 end, "non-first UDPv6 fragment")
            has(function(e) return e.icmp_type == 1 and e.icmp_code == 4 end, "port unreachable v6")
            has(function(e) return e.dport == 9002 and e.ip6_ext == 2 end, "hop-by-hop + dst opts")
            has(function(e) return e.dport == 9003 and e.ip6_ext == 1 end, "routing type 0")
            has(function(e) return e.dport == 9004 and e.proto == "tcp" end, "segment routing")
            has(function(e) return e.dport == 9005 and e.ip6_ext == 1 end, "AH")
            has(function(e) return e.icmp_type == 8 and e.proto == "icmp" end, "ICMP echo request")
            has(function(e) return e.icmp_type == 0 and e.proto == "icmp" end, "ICMP echo reply")
            has(function(e) return e.icmp_type == 3 and e.icmp_code == 3 end, "port unreachable")
            has(function(e) return e.proto == "udp" and e.frag_off == 1480 end, "IPv4 fragment")
        end)
    end

    for _, mode in ipairs(MODES) do
        it("VLAN tags, offloaded and in the frame (QinQ too): fields, pcapng frames and `vlan and "
            .. "udp port 9000` equal tcpdump's (" .. mode .. ")", function()
            netns.require_root()
            local pcapng, cap = dir .. "/ours.pcapng", dir .. "/a.pcap"
            local filter = ("netns == %d"):format(pair.netns_a)
            local all = start_tracer(mode, pcapng, filter)
            local selected = start_tracer(mode, nil, filter, "vlan and udp port 9000")
            -- the expression on a copy of the frame (raw mode's --read probe), offloaded tags
            -- written back into it as into the packet read in place
            local copied = mode == "raw" and start_tracer("probe", nil, filter,
                "vlan and udp port 9000")
            -- a port filter in the kernel: tags in the frame are walked, offloaded ones skipped
            local by_port = start_tracer(mode, nil, filter .. " and dport == 9000", nil, 0)
            local capture = start_capture(pair, "a", cap)
            local ok, out
            local function tc(...)
                ok, out = pair:exec("a", { "tc", ... })
                assert(ok, out)
            end
            -- offloaded tags: a tc egress program pushes them into skb metadata
            tc("qdisc", "add", "dev", pair.veth_a, "clsact")
            tc("filter", "add", "dev", pair.veth_a, "egress", "bpf", "da", "obj",
                tool("vlan_push.bpf.o"), "sec", "tc/dot1q")
            live.send(pair, "a", { "udp4", pair.ip4_a, pair.ip4_b, "9000", "40000", "20,30" })
            live.send(pair, "a", { "udp6", pair.ip6_a, pair.ip6_b, "9001", "40001", "10" })
            tc("filter", "del", "dev", pair.veth_a, "egress")
            tc("filter", "add", "dev", pair.veth_a, "egress", "bpf", "da", "obj",
                tool("vlan_push.bpf.o"), "sec", "tc/qinq")
            live.send(pair, "a", { "udp4", pair.ip4_a, pair.ip4_b, "9000", "40002", "40" })
            tc("qdisc", "del", "dev", pair.veth_a, "clsact")
            -- tags in the frame, written through AF_PACKET
            ok, out = pair:exec("a", { tool("ndq_frames"), "frames", pair.veth_a,
                eth(pair, "8100" .. "200a" .. "0800" .. ipv4(pair, 17, udp(40010, 9000, 12))),
                eth(pair, "88a8" .. "4014" .. "8100" .. "801e" .. "86dd"
                    .. ipv6(pair, 6, tcp_syn(40011, 9011))),
                eth(pair, "8100" .. "0028" .. "0800" .. ipv4(pair, 1, "0800f7ff00000000")),
                eth(pair, "0800" .. ipv4(pair, 17, udp(40012, 9000, 12))),
                eth(pair, "8100" .. "0032" .. "0800" .. ipv4(pair, 17, udp(40013, 9999, 12))) })
            assert(ok, out)
            netns.run({ "sleep", "0.2" })
            stop_capture(capture)
            local events = on_side(stop_tracer(all), pair, "a")
            local chosen = on_side(stop_tracer(selected), pair, "a")
            local chosen_copy = copied and on_side(stop_tracer(copied), pair, "a")
            local ported = on_side(stop_tracer(by_port), pair, "a")
            assert.same({ 40000, 40000, 40002, 40010, 40012 }, pluck(ported, "sport"))
            assert.same({ 100, 100, 200, 10, false }, pluck(ported, "vlan_id"))

            -- every field as tshark decodes tcpdump's capture (lengths: with the frames below)
            assert_same_packets(events, cap, mode, true)
            assert.same({ 100, 100, 100, 200, 10, 20, 40, false, 50 }, pluck(events, "vlan_id"))
            assert.same({ 3, 3, 3, 5, 1, 2, 0, false, 0 }, pluck(events, "vlan_pcp"))
            assert.same({ 0x8100, 0x8100, 0x8100, 0x88a8, 0x8100, 0x88a8, 0x8100, false, 0x8100 },
                pluck(events, "vlan_proto"))
            -- ethertype is skb->protocol: the inner one under an offloaded tag
            assert.same({ "ipv4", "ipv4", "ipv6", "vlan", "vlan", "qinq", "vlan", "ipv4", "vlan" },
                pluck(events, "ethertype"))
            assert.same({ 40000, 40000, 40001, 40002, 40010, 40011, false, 40012, 40013 },
                pluck(events, "sport"))
            -- the pcapng frames are tcpdump's, byte for byte, offloaded tags written back
            local ours = oracle.tcpdump_frames(pcapng)
            local theirs = oracle.tcpdump_frames(cap)
            assert.equal(9, #theirs)
            assert.same(theirs, ours)
            assert.truthy(ours[1].head:find("vlan 100, p 3, ethertype IPv4", 1, true))
            assert.truthy(ours[4].head:find("vlan 200, p 5, ethertype 802.1Q", 1, true))
            -- the pcap expression selects what tcpdump selects from its own capture
            local sel = dir .. "/sel.pcap"
            ok, out = netns.run({ "tcpdump", "-r", cap, "-w", sel, "vlan and udp port 9000" })
            assert(ok, out)
            local want = oracle.tshark_events(sel)
            assert.same(pluck(want, "sport"), pluck(chosen, "sport"))
            -- 802.1Q-tagged UDP to 9000: two offloaded, one in the frame; QinQ needs `vlan and
            -- vlan`, untagged and other ports fail
            assert.same({ 40000, 40000, 40010 }, pluck(chosen, "sport"))
            if chosen_copy then
                assert.same({ 40000, 40000, 40010 }, pluck(chosen_copy, "sport"))
            end
        end)
    end

    it("names ICMP and ICMPv6 types and codes in text output, numbers in JSON and filters", function()
        netns.require_root()
        local filter = ("(netns == %d or netns == %d) and icmp_type >= 0"):format(pair.netns_a,
            pair.netns_b)
        local text = live.spawn_cli({ "-d", "60", "-f", filter, "-o", "dev,proto,icmp_type,icmp_code" })
        live.wait_ready(text)
        local json = start_tracer("raw", nil, filter .. " and icmp_code == 0")
        -- an aggregation keyed by the decoded fields, behind a filter the kernel checks: the
        -- kernel folds it (open's `aggregate` refuses to run one in Lua), reading the keys at
        -- their catalogue locations
        local scope = ("netns == %d or netns == %d"):format(pair.netns_a, pair.netns_b)
        local agg = assert(require("netdevq").open{ filter = scope, aggregate = { kind = "count",
            keys = { "proto", "icmp_type", "icmp_code" } } })
        finally(function() agg:close() end)
        local ok, out = pair:exec("a", { "ip", "-6", "neigh", "del", pair.ip6_b, "dev",
            pair.veth_a })
        assert(ok, out)
        ok, out = pair:exec("a", { netns.ndq_send(), "icmp6", pair.ip6_a, pair.ip6_b, "1" })
        assert(ok and out:match("replies 1"), out)
        ok, out = pair:exec("a", { netns.ndq_send(), "icmp4", pair.ip4_a, pair.ip4_b, "1" })
        assert(ok and out:match("replies 1"), out)
        ok, out = pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, "9100", "40100",
            "8" })
        assert(ok, out)
        ok, out = pair:exec("a", { netns.ndq_send(), "udp6", pair.ip6_a, pair.ip6_b, "9101", "40101",
            "8" })
        assert(ok, out)
        netns.run({ "sleep", "0.3" })
        text:kill("INT")
        local _, _, lines = text:wait()
        local got = {}
        for _, l in ipairs(lines) do
            if not l:match("^netdevq:") then got[#got + 1] = l end
        end
        local a, b = pair.veth_a, pair.veth_b
        assert.same({
            a .. " icmpv6 neighbor solicitation 0", b .. " icmpv6 neighbor advertisement 0",
            a .. " icmpv6 echo request 0", b .. " icmpv6 echo reply 0",
            a .. " icmp echo request 0", b .. " icmp echo reply 0",
            b .. " icmp unreachable port unreachable",
            b .. " icmpv6 destination unreachable port unreachable",
        }, got)
        local events = stop_tracer(json)
        assert.same({ 135, 136, 128, 129, 8, 0 }, pluck(events, "icmp_type"))
        assert.same({ 0, 0, 0, 0, 0, 0 }, pluck(events, "icmp_code"))
        local counts = {}
        for _, e in ipairs(assert(agg:read_aggregate()):entries()) do
            counts[e.text] = e.count
        end
        for key, n in pairs({ ["[icmpv6, 135, 0]"] = 1, ["[icmpv6, 136, 0]"] = 1,
            ["[icmpv6, 128, 0]"] = 1, ["[icmpv6, 129, 0]"] = 1, ["[icmp, 8, 0]"] = 1,
            ["[icmp, 0, 0]"] = 1, ["[icmp, 3, 3]"] = 1,
            ["[icmpv6, 1, 4]"] = 1 }) do
            assert.equal(n, counts[key], key .. " in " .. require("cjson").encode(counts))
        end
    end)
    -- ARP: the request leaves a, the reply leaves b; fields equal tshark's reading of what tcpdump
    -- captured on each side, the default text line reads as tcpdump's one-line form, and the
    -- kernel aggregation keys on ARP's IPv4 addresses (NDQ_LOC_IPV4)
    for _, mode in ipairs(MODES) do
        it("ARP who-has and is-at: fields as tshark reads them, tcpdump's words, kernel keys ("
            .. mode .. ")", function()
            netns.require_root()
            local scope = ("(netns == %d or netns == %d)"):format(pair.netns_a, pair.netns_b)
            local filter = scope .. ' and ethertype == "arp"'
            local text = live.spawn_cli({ "-d", "60", "--mode", mode, "-f", filter })
            live.wait_ready(text, mode)
            local json = start_tracer(mode, nil, filter)
            local agg = assert(require("netdevq").open{ mode = mode, filter = scope,
                aggregate = { kind = "count", keys = { "arp_op", "arp_spa", "arp_tpa" } } })
            finally(function() agg:close() end)
            local caps = { a = dir .. "/arp_a.pcap", b = dir .. "/arp_b.pcap" }
            local cap_a, cap_b = start_capture(pair, "a", caps.a), start_capture(pair, "b", caps.b)
            -- the pair's neighbour entries are static: a resolves b again
            local ok, out = pair:exec("a", { "ip", "neigh", "del", pair.ip4_b, "dev", pair.veth_a })
            assert(ok, out)
            ok, out = pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, "9102",
                "40102", "8" })
            assert(ok, out)
            netns.run({ "sleep", "0.3" })
            stop_capture(cap_a)
            stop_capture(cap_b)
            text:kill("INT")
            local _, _, lines = text:wait()
            local events = stop_tracer(json)
            local mac = {}
            for side, dev in pairs({ a = pair.veth_a, b = pair.veth_b }) do
                ok, out = pair:exec(side, { "cat", "/sys/class/net/" .. dev .. "/address" })
                assert(ok, out)
                mac[side] = out:match("%x%x:[%x:]+")
            end
            -- what tshark reads in the two captures (ARP frames only)
            local theirs = {}
            for _, side in ipairs({ "a", "b" }) do
                local ok2, rows = netns.run({ "tshark", "-r", caps[side], "-Y", "arp", "-T", "fields",
                    "-e", "arp.opcode", "-e", "arp.src.hw_mac", "-e", "arp.src.proto_ipv4",
                    "-e", "arp.dst.hw_mac", "-e", "arp.dst.proto_ipv4" })
                assert(ok2, rows)
                for row in rows:gmatch("[^\n]+") do
                    local op, sha, spa, tha, tpa = row:match("^(%d+)\t(%S+)\t(%S+)\t(%S+)\t(%S+)$")
                    -- (netns.run returns stderr too: tshark's notices are not rows)
                    theirs[#theirs + 1] = op and { dev = side == "a" and pair.veth_a or pair.veth_b,
                        arp_op = tonumber(op), arp_sha = sha, arp_spa = spa, arp_tha = tha,
                        arp_tpa = tpa } or nil
                end
            end
            local ours = {}
            for _, ev in ipairs(events) do
                assert.is_nil(ev.saddr) -- not IP: ARP's addresses are its own fields
                ours[#ours + 1] = { dev = ev.dev, arp_op = ev.arp_op, arp_sha = ev.arp_sha,
                    arp_spa = ev.arp_spa, arp_tha = ev.arp_tha, arp_tpa = ev.arp_tpa }
            end
            assert.same({
                { dev = pair.veth_a, arp_op = 1, arp_sha = mac.a, arp_spa = pair.ip4_a,
                  arp_tha = "00:00:00:00:00:00", arp_tpa = pair.ip4_b },
                { dev = pair.veth_b, arp_op = 2, arp_sha = mac.b, arp_spa = pair.ip4_b,
                  arp_tha = mac.a, arp_tpa = pair.ip4_a },
            }, ours)
            assert.same(theirs, ours)
            local got = {}
            for _, l in ipairs(lines) do
                if not l:match("^netdevq:") then got[#got + 1] = l:match("^%S+ %S+ %S+ (.*)$") end
            end
            assert.same({
                pair.veth_a .. " 42 arp who-has " .. pair.ip4_b .. " tell " .. pair.ip4_a,
                pair.veth_b .. " 42 arp " .. pair.ip4_b .. " is-at " .. mac.b,
            }, got)
            local counts = {}
            for _, e in ipairs(assert(agg:read_aggregate()):entries()) do
                counts[e.text] = e.count
            end
            assert.equal(1, counts[("[1, %s, %s]"):format(pair.ip4_a, pair.ip4_b)])
            assert.equal(1, counts[("[2, %s, %s]"):format(pair.ip4_b, pair.ip4_a)])
        end)
    end
end)
