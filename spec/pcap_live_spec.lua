-- pcap-filter expressions mean what they mean in tcpdump: for each expression, tshark captures on
-- the veth in namespace a with `-f EXPR` (libpcap, compiled for the live interface and run by the
-- kernel's socket filter) while netdevq runs with the same expression (`pcap =` through the Lua
-- API, or the CLI's positional words), and both see the same traffic once. The packets namespace a
-- transmits (tshark also sees what arrives: those are left out by source MAC) must form the same
-- set: protocol, addresses, ports and length (tshark's frame.len is skb->len on Ethernet).
local netns = require("support.netns")
local clirun = require("support.clirun")
local live = require("support.live")
local cjson = require("cjson")

local PROTO_NUM = { icmp = 1, tcp = 6, udp = 17, icmpv6 = 58 }

-- via = "cli": through `netdevq -F json -f 'netns == A' -I ndqaN EXPR`; otherwise netdevq.open{ pcap = }
local EXPRESSIONS = {
    { expr = "udp" },
    { expr = "tcp port 8080" },
    { expr = "icmp" },
    { expr = "host 198.18.0.2 and udp" },
    { expr = "ip6" },
    { expr = "udp and greater 500" },
    { expr = "tcp[tcpflags] & tcp-syn != 0" },
    { expr = "not udp" },
    { expr = "net 198.18.0.0/24 and dst port 7000" },
    { expr = "ether src 02:6e:64:71:00:01" },
    { expr = "icmp6 or (tcp and src port 8081)" },
    { expr = "less 100 and not icmp6" },
    { expr = "icmp[icmptype] == icmp-echoreply or (ip6 and ip6[7] == 64 and udp)" },
    { expr = "ip[1] & 0xfc == 16 or ip6[0:2] & 0x0ff0 == 0x0200" },
    { expr = "tcp[tcpflags] & (tcp-syn|tcp-ack) == (tcp-syn|tcp-ack)", via = "cli" },
    { expr = "udp dst portrange 7000-7001 and ip", via = "cli" },
}

local TSHARK_FIELDS = { "frame.len", "eth.src", "ip.proto", "ipv6.nxt", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst",
                        "udp.srcport", "udp.dstport", "tcp.srcport", "tcp.dstport" }

-- one packet as a comparable line: protocol number, source, destination, length
local function key(proto, saddr, sport, daddr, dport, len)
    if proto ~= 6 and proto ~= 17 then
        sport, dport = nil, nil -- tshark reads the ports of the datagram an ICMP error quotes
    end
    return ("%s %s:%s > %s:%s len %s"):format(tostring(proto), tostring(saddr), tostring(sport or "-"),
        tostring(daddr), tostring(dport or "-"), tostring(len))
end

local function event_key(ev)
    return key(PROTO_NUM[ev.proto] or tonumber(ev.proto), ev.saddr, ev.sport, ev.daddr, ev.dport, ev.len)
end

-- tshark's field lines -> keys of the packets sent from mac
local function tshark_keys(text, mac)
    local keys = {}
    for line in text:gmatch("[^\n]+") do
        local row, i = {}, 1
        for value in (line .. "\t"):gmatch("([^\t]*)\t") do
            row[TSHARK_FIELDS[i]] = value ~= "" and value or nil
            i = i + 1
        end
        assert(i - 1 == #TSHARK_FIELDS, "tshark line with " .. (i - 1) .. " fields: " .. line)
        if row["eth.src"] == mac then
            local v6 = row["ipv6.src"] ~= nil
            local proto = tonumber(v6 and row["ipv6.nxt"] or row["ip.proto"])
            local sport = tonumber(row["tcp.srcport"] or row["udp.srcport"])
            local dport = tonumber(row["tcp.dstport"] or row["udp.dstport"])
            keys[#keys + 1] = key(proto, v6 and row["ipv6.src"] or row["ip.src"], sport,
                v6 and row["ipv6.dst"] or row["ip.dst"], dport, tonumber(row["frame.len"]))
        end
    end
    table.sort(keys)
    return keys
end

local minus, monotonic_ms = live.missing, live.monotonic_ms

-- The traffic: what namespace a transmits covers UDP v4/v6 (several ports and sizes, one with
-- TOS 16), TCP v4 as client and as server, TCP v6 with traffic class 32, ICMP echo requests and
-- replies, ICMP v4/v6 port unreachable errors (which quote a UDP header).
local function send_traffic(pair)
    local listeners = {
        live.listener(pair, "b", pair.ip4_b, 8080),
        live.listener(pair, "a", pair.ip4_a, 8081),
        live.listener(pair, "b", pair.ip6_b, 8443),
    }
    live.send_steps(pair, {
        { "a", "udp4", pair.ip4_a, pair.ip4_b, "7000", "40000", "10,500,1200" },
        { "a", "--tos", "16", "udp4", pair.ip4_a, pair.ip4_b, "7001", "40001", "100" },
        { "a", "udp6", pair.ip6_a, pair.ip6_b, "7000", "40003", "20,600" },
        { "b", "udp4", pair.ip4_b, pair.ip4_a, "9000", "9001", "200" },
        { "b", "udp6", pair.ip6_b, pair.ip6_a, "9000", "9001", "100" },
        { "a", "tcp4", pair.ip4_a, pair.ip4_b, "8080", "41000" },
        { "b", "tcp4", pair.ip4_b, pair.ip4_a, "8081", "41001" },
        { "a", "--tos", "32", "tcp6", pair.ip6_a, pair.ip6_b, "8443", "42000" },
        { "a", "icmp4", pair.ip4_a, pair.ip4_b, "2" },
        { "a", "icmp6", pair.ip6_a, pair.ip6_b, "1" },
        { "b", "icmp4", pair.ip4_b, pair.ip4_a, "1" },
    })
    live.wait_all(listeners, "tcplisten")
end

describe("pcap-filter expressions against tshark on live traffic #root", function()
    local pair
    live.pair_each_test({ name = "ndqpc", icmp_unlimited = true }, function(p) pair = p end)

    it("selects the packets tshark captures with the same expression", function()
        netns.require_root()
        assert(netns.run({ "sh", "-c", "command -v tshark" }),
            "tshark not found: install tshark (./scripts/setup does)")
        local netdevq = require("netdevq")
        local scope = ('dev == "%s" and netns == %d'):format(pair.veth_a, pair.netns_a)
        local started = monotonic_ms()

        -- every process and tracer, stopped also when an assertion fails
        local captures, clis, tracers = {}, {}, {}
        finally(function()
            for _, list in ipairs({ captures, clis }) do
                for _, bg in pairs(list) do
                    bg:kill("KILL")
                    bg:wait(5)
                end
            end
            for _, t in pairs(tracers) do
                t:close()
            end
        end)

        for i, e in ipairs(EXPRESSIONS) do
            local argv = { "ip", "netns", "exec", pair.ns_a, "tshark", "-i", pair.veth_a, "-f", e.expr, "-l", "-n",
                           "-T", "fields", "-E", "separator=/t", "-E", "quote=n", "-E", "occurrence=f" }
            for _, f in ipairs(TSHARK_FIELDS) do
                argv[#argv + 1] = "-e"
                argv[#argv + 1] = f
            end
            captures[i] = clirun.spawn(argv)
            if e.via == "cli" then
                local args = { "-F", "json", "-o", "proto,saddr,sport,daddr,dport,len", "-f",
                               ("netns == %d"):format(pair.netns_a), "-I", pair.veth_a }
                for w in e.expr:gmatch("%S+") do
                    args[#args + 1] = w
                end
                clis[i] = clirun.spawn_cli(args)
            else
                local t, err = netdevq.open{ pcap = e.expr, filter = scope }
                e.events, e.open_error = {}, err
                if t then
                    tracers[i] = t
                    t:on_event(function(ev) e.events[#e.events + 1] = ev:totable() end)
                end
            end
        end
        -- tshark says "Capturing on" once its capture process has the interface open
        for i, bg in pairs(captures) do
            assert(bg:wait_err("Capturing on", 30), "tshark -f '" .. EXPRESSIONS[i].expr .. "' did not start: "
                .. bg:err_text())
        end
        for i, bg in pairs(clis) do
            assert(bg:wait_err("netdevq: tracing net_dev_queue", 30), "netdevq " .. EXPRESSIONS[i].expr
                .. " did not start: " .. bg:err_text())
        end
        clirun.sleep(0.5)

        send_traffic(pair)

        -- everything is sent: let the tracers drain and the captures print
        live.poll_all(tracers, 500)
        clirun.sleep(0.3)
        local results = {}
        for i, bg in pairs(captures) do
            bg:kill("INT")
            results[i] = { tshark = bg:wait(20) }
        end
        captures = {}
        for i, bg in pairs(clis) do
            bg:kill("INT")
            results[i].cli = bg:wait(20)
        end
        clis = {}

        local failures, compared = {}, 0
        for i, e in ipairs(EXPRESSIONS) do
            local r = results[i]
            assert.are.equal(0, r.tshark.code, "tshark -f '" .. e.expr .. "': " .. r.tshark.err)
            local want = tshark_keys(r.tshark.out, pair.mac_a)
            local got = {}
            if e.via == "cli" then
                assert.are.equal(0, r.cli.code, "netdevq " .. e.expr .. ": " .. r.cli.err)
                for line in r.cli.out:gmatch("[^\n]+") do
                    local obj = cjson.decode(line)
                    if obj.type == "event" then
                        got[#got + 1] = event_key(obj)
                    end
                end
            elseif e.open_error then
                failures[#failures + 1] = e.expr .. " (api): " .. e.open_error
            else
                local st = assert(tracers[i]:stats())
                assert.are.equal(0, st.lost)
                -- what the kernel's filter let through (the pair's device) and libpcap refused
                assert.are.equal(st.emitted, st.pcap_dropped + st.matched, e.expr)
                assert.are.equal(#e.events, st.matched)
                assert.are.equal(0, st.lua_filtered)
                for _, ev in ipairs(e.events) do
                    got[#got + 1] = event_key(ev)
                end
            end
            table.sort(got)
            local extra, lacking = minus(got, want), minus(want, got)
            if not e.open_error and (#extra > 0 or #lacking > 0 or #want == 0) then
                failures[#failures + 1] = ("%s (%s): netdevq %d packets, tshark %d\n  only netdevq:\n%s\n  only "
                    .. "tshark:\n%s"):format(e.expr, e.via or "api", #got, #want, table.concat(extra, "\n"),
                    table.concat(lacking, "\n"))
            end
            compared = compared + #want
        end
        print(("\npcap live: %d expressions, %d packets compared with tshark in %.1f s"):format(#EXPRESSIONS,
            compared, (monotonic_ms() - started) / 1000))
        assert(#failures == 0, table.concat(failures, "\n"))
    end)
end)

-- libpcap is opened on first use (csrc/pcap_filter.c): a tracer without an expression maps
-- neither libpcap nor the libraries it pulls in; one with an expression maps it and compiles.
describe("libpcap loaded on first use #root", function()
    it("maps libpcap only once an expression is compiled", function()
        netns.require_root()
        local script = [[
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "]] .. clirun.build_dir() .. [[/?.so;" .. package.cpath
local netdevq = require("netdevq")
local function mapped()
    local f = assert(io.open("/proc/self/maps"))
    local maps = f:read("*a")
    f:close()
    return (maps:find("libpcap", 1, true) and "pcap" or "none")
        .. (maps:find("libdbus", 1, true) and "+dbus" or "")
end
local t = assert(netdevq.open{})
io.write("plain ", mapped(), "\n")
t:close()
local bad, err = netdevq.open{ pcap = "udp portx 9" }
io.write("bad ", tostring(bad), " ", err, "\n")
t = assert(netdevq.open{ pcap = "udp port 9" })
io.write("expression ", mapped(), " ", t.plan.pcap_path, "\n")
t:close()
t = assert(netdevq.open{ pcap = "udp port 9", pcap_kernel = false })
io.write("user space ", t.plan.pcap_path, "\n")
t:close()
]]
        local r = clirun.run({ "luajit", "-e", script })
        assert.are.equal("", r.err)
        assert.are.equal(0, r.code)
        assert.are.equal("plain none\n"
            .. "bad nil netdevq: pcap filter: can't parse filter expression: syntax error\n"
            .. "expression pcap+dbus kernel\n"
            .. "user space user\n", r.out)
    end)
end)
