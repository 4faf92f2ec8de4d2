-- End to end through the real kernel: known traffic between two namespaces joined by a veth
-- pair, traced with the Lua API in both attach modes; exact event sets and field values.
local netns = require("support.netns")
local live = require("support.live")

local ETH, IP4, IP6, UDP = 14, 20, 40, 8

local function tracer(mode, extra)
    local netdevq = require("netdevq")
    local opts = { mode = mode }
    for k, v in pairs(extra or {}) do
        opts[k] = v
    end
    local t, err = netdevq.open(opts)
    assert(t, err)
    return t
end

-- Polls until `want` events passed pred, then a little longer so extras would show up.
local function collect(t, pred, want, timeout_ms)
    local core = require("netdevq.core")
    local got = {}
    t:on_event(function(ev)
        if pred(ev) then
            got[#got + 1] = ev:totable()
        end
    end)
    local deadline = core.monotonic_ns() + (timeout_ms or 3000) * 1e6
    while #got < want and core.monotonic_ns() < deadline do
        t:poll(50)
    end
    local settle = core.monotonic_ns() + 300e6
    while core.monotonic_ns() < settle do
        t:poll(50)
    end
    table.sort(got, function(a, b) return a.ts < b.ts end)
    return got
end

local function sender_pid(output)
    return tonumber(output:match("pid (%d+)"))
end

describe("netdevq tracing real traffic #root", function()
    local pair
    live.pair_each_test({ name = "ndqt" }, function(p) pair = p end)

    local function on_veth_a(ev)
        return ev.netns == pair.netns_a and ev.dev == pair.veth_a
    end

    for _, mode in ipairs({ "raw", "btf" }) do
        it("reports every UDP/IPv4 datagram with exact fields (" .. mode .. " mode)", function()
            netns.require_root()
            local t = tracer(mode)
            finally(function() t:close() end)
            local sizes = { 1, 100, 1000, 1472 }
            local ok, out = pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b,
                "9000", "40000", "1,100,1000,1472" })
            assert.is_true(ok, out)
            local pid = sender_pid(out)
            -- the datagrams; the kernel may add a stray IPv6 multicast report on a new link
            local got = collect(t, function(ev)
                return on_veth_a(ev) and ev.proto == "udp"
            end, #sizes)
            assert.equal(#sizes, #got)
            for i, size in ipairs(sizes) do
                local ev = got[i]
                assert.same({
                    len = ETH + IP4 + UDP + size, saddr = pair.ip4_a, daddr = pair.ip4_b,
                    sport = 40000, dport = 9000, proto = "udp", ttl = 64, tos = 0,
                    pid = pid, tid = pid, comm = "ndq_send", ethertype = "ipv4",
                    smac = pair.mac_a, dmac = pair.mac_b, ifindex = pair.ifindex_a,
                    netns = pair.netns_a, data_len = 0,
                }, {
                    len = ev.len, saddr = ev.saddr, daddr = ev.daddr, sport = ev.sport,
                    dport = ev.dport, proto = ev.proto, ttl = ev.ttl, tos = ev.tos, pid = ev.pid,
                    tid = ev.tid, comm = ev.comm, ethertype = ev.ethertype, smac = ev.smac,
                    dmac = ev.dmac, ifindex = ev.ifindex, netns = ev.netns,
                    data_len = ev.data_len,
                })
            end
            local st = t:stats()
            assert.equal(0, st.lost)
            assert.is_true(st.events >= #sizes)
        end)
    end

    it("shows the TCP handshake as S, S. and . on the right devices", function()
        netns.require_root()
        local t = tracer("raw")
        finally(function() t:close() end)
        local listener = live.listener(pair, "b", pair.ip4_b, 8080)
        local ok, out = pair:exec("a", { netns.ndq_send(), "tcp4", pair.ip4_a, pair.ip4_b,
            "8080", "41000" })
        assert.is_true(ok, out)
        listener:wait()
        local got = collect(t, function(ev)
            return ev.proto == "tcp" and (ev.netns == pair.netns_a or ev.netns == pair.netns_b)
        end, 3)
        assert.is_true(#got >= 3, "saw " .. #got .. " TCP events")
        local first3 = {}
        for i = 1, 3 do
            local ev = got[i]
            first3[i] = { ev.dev, ev.tcp_flags, ev.saddr, ev.sport, ev.daddr, ev.dport, ev.len }
        end
        assert.same({
            { pair.veth_a, "S", pair.ip4_a, 41000, pair.ip4_b, 8080, got[1].len },
            { pair.veth_b, "S.", pair.ip4_b, 8080, pair.ip4_a, 41000, got[2].len },
            { pair.veth_a, ".", pair.ip4_a, 41000, pair.ip4_b, 8080, ETH + IP4 + 32 },
        }, first3)
        -- SYN and SYN-ACK carry 20 option bytes (MSS 4, SACK-permitted 2, timestamps 10,
        -- NOP + window scale 4); the ACK carries timestamps (12 with padding)
        assert.equal(ETH + IP4 + 20 + 20, got[1].len)
        assert.equal(ETH + IP4 + 20 + 20, got[2].len)
        assert.equal(sender_pid(out), got[1].pid)
    end)

    it("decodes UDP over IPv6 and ICMP echo with exact addresses and lengths", function()
        netns.require_root()
        local t = tracer("btf")
        finally(function() t:close() end)
        local ok, out = pair:exec("a", { netns.ndq_send(), "udp6", pair.ip6_a, pair.ip6_b,
            "5353", "40001", "100" })
        assert.is_true(ok, out)
        ok, out = pair:exec("a", { netns.ndq_send(), "icmp4", pair.ip4_a, pair.ip4_b, "2" })
        assert.is_true(ok, out)
        -- (b also sends MLD reports now and then: hop-by-hop, not part of this traffic)
        local wanted = { udp = true, icmp = true, icmpv6 = true }
        local got = collect(t, function(ev)
            return (ev.netns == pair.netns_a or ev.netns == pair.netns_b) and wanted[ev.proto]
        end, 6)
        local rows = {}
        for i, ev in ipairs(got) do
            rows[i] = { ev.dev, ev.proto, ev.saddr, ev.daddr, ev.len, ev.sport, ev.dport, ev.ttl,
                ev.ethertype }
        end
        assert.same({
            { pair.veth_a, "udp", "2001:db8::1", "2001:db8::2", ETH + IP6 + UDP + 100, 40001, 5353,
                64, "ipv6" },
            -- nobody listens on 5353 in b: port unreachable, quoting the whole datagram
            { pair.veth_b, "icmpv6", "2001:db8::2", "2001:db8::1",
                ETH + IP6 + 8 + IP6 + UDP + 100, nil, nil, 64, "ipv6" },
            { pair.veth_a, "icmp", pair.ip4_a, pair.ip4_b, ETH + 84, nil, nil, 64, "ipv4" },
            { pair.veth_b, "icmp", pair.ip4_b, pair.ip4_a, ETH + 84, nil, nil, 64, "ipv4" },
            { pair.veth_a, "icmp", pair.ip4_a, pair.ip4_b, ETH + 84, nil, nil, 64, "ipv4" },
            { pair.veth_b, "icmp", pair.ip4_b, pair.ip4_a, ETH + 84, nil, nil, 64, "ipv4" },
        }, rows)
    end)

    it("filters in the kernel: only matching events cross the ring buffer", function()
        netns.require_root()
        local t = tracer("raw", { filter = 'dev == "' .. pair.veth_a .. '" and dport == 9001' })
        finally(function() t:close() end)
        local ok, out = pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b,
            "9001", "40000", "10,20,30" })
        assert.is_true(ok, out)
        ok, out = pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b,
            "9002", "40000", "10,20" })
        assert.is_true(ok, out)
        local got = collect(t, function() return true end, 3)
        local lens = {}
        for i, ev in ipairs(got) do
            lens[i] = ev.len
        end
        assert.same({ 52, 62, 72 }, lens)
        local st = t:stats()
        assert.equal(3, st.emitted)
        assert.equal(st.seen - 3, st.kfiltered)
        assert.equal(0, st.lua_filtered)
    end)
end)
