-- The Lua API's three filters together on live traffic: `filter` (its kernel part and its Lua
-- remainder), `pcap` (libpcap in the ring-buffer consumer) and `where` (a Lua function), with
-- exact counts that tell apart what each stage dropped: kfiltered (kernel), pcap_dropped,
-- lua_filtered (remainder and where), matched.
--
-- Four tracers watch the same traffic at once, each with a different combination, so the same
-- packets move between the counters. seen and kfiltered also count the rest of the machine's
-- traffic (every net_dev_queue hit): for them the spec checks what holds whatever else runs.
local netns = require("support.netns")
local live = require("support.live")

describe("netdevq.open with filter, pcap and where on live traffic #root", function()
    local pair
    live.pair_each_test({ name = "ndqapi" }, function(p) pair = p end)

    it("counts each stage's drops apart and delivers exactly what passes all three", function()
        netns.require_root()
        local netdevq = require("netdevq")
        local scope = ("netns == %d"):format(pair.netns_a)
        -- kernel: netns, proto, len; Lua remainder: ttl
        local full_filter = scope .. ' and proto == "udp" and len > 100 and ttl > 10'
        local kernel_filter = scope .. ' and proto == "udp" and len > 100'
        local pcap = "udp dst port 7000"
        local where_calls = 0
        local function marked(ev)
            where_calls = where_calls + 1
            return ev.mark == 7
        end

        -- the pcap expression in user space (pcap_kernel = false), where pcap_dropped counts its
        -- drops (decided in the kernel, they count in kfiltered: spec/pcap_kernel_live_spec.lua)
        local setups = {
            all = { filter = full_filter, pcap = pcap, pcap_kernel = false, where = marked },
            filter_only = { filter = full_filter, mode = "btf" },
            kernel_and_where = { filter = kernel_filter, where = function(ev) return ev.mark == 7 end },
            pcap_only = { filter = scope, pcap = pcap, pcap_kernel = false, mode = "btf" },
        }
        local tracers, delivered = {}, {}
        finally(function()
            for _, t in pairs(tracers) do
                t:close()
            end
        end)
        for name, opts in pairs(setups) do
            local t, err = netdevq.open(opts)
            assert(t, err)
            tracers[name] = t
            delivered[name] = {}
            t:on_event(function(ev)
                delivered[name][#delivered[name] + 1] = ("%s %s:%d > %s:%d len %d mark %d ttl %d"):format(ev.proto,
                    ev.saddr, ev.sport, ev.daddr, ev.dport, ev.len, ev.mark, ev.ttl)
            end)
        end

        -- receivers, so that namespace b sends nothing back to the UDP
        local rx = {
            live.receiver(pair, "b", pair.ip4_b, 7000, 5),
            live.receiver(pair, "b", pair.ip4_b, 7001, 1),
            live.receiver(pair, "b", pair.ip6_b, 7000, 1),
        }
        local steps = {
            -- 92 bytes: the kernel drops it (len); 242: no mark, where drops it
            { "udp4", pair.ip4_a, pair.ip4_b, "7000", "40000", "50,200" },
            -- through everything
            { "--mark", "7", "udp4", pair.ip4_a, pair.ip4_b, "7000", "40001", "200,800" },
            -- the remainder drops it (ttl)
            { "--mark", "7", "--ttl", "5", "udp4", pair.ip4_a, pair.ip4_b, "7000", "40002", "300" },
            -- pcap drops it (port 7001)
            { "--mark", "7", "udp4", pair.ip4_a, pair.ip4_b, "7001", "40003", "300" },
            -- through everything, IPv6
            { "--mark", "7", "udp6", pair.ip6_a, pair.ip6_b, "7000", "40004", "200" },
            -- the request: the kernel drops it (proto); the reply: another namespace
            { "icmp4", pair.ip4_a, pair.ip4_b, "1" },
        }
        for _, s in ipairs(steps) do
            live.send(pair, "a", s)
        end
        for _, r in ipairs(rx) do
            assert(r:wait())
        end
        live.poll_all(tracers, 400)
        local stats = {}
        for name, t in pairs(tracers) do
            t:detach()
            repeat
                local n = assert(t:poll(0))
            until n == 0
            stats[name] = assert(t:stats())
        end

        local A, B6 = pair.ip4_a .. ":", pair.ip6_a .. ":"
        local through = {
            "udp " .. A .. "40001 > " .. pair.ip4_b .. ":7000 len 242 mark 7 ttl 64",
            "udp " .. A .. "40001 > " .. pair.ip4_b .. ":7000 len 842 mark 7 ttl 64",
            "udp " .. B6 .. "40004 > " .. pair.ip6_b .. ":7000 len 262 mark 7 ttl 64",
        }
        local unmarked = "udp " .. A .. "40000 > " .. pair.ip4_b .. ":7000 len 242 mark 0 ttl 64"
        local low_ttl = "udp " .. A .. "40002 > " .. pair.ip4_b .. ":7000 len 342 mark 7 ttl 5"
        local short = "udp " .. A .. "40000 > " .. pair.ip4_b .. ":7000 len 92 mark 0 ttl 64"
        local other_port = "udp " .. A .. "40003 > " .. pair.ip4_b .. ":7001 len 342 mark 7 ttl 64"
        local want = {
            -- 8 packets leave namespace a: 2 fail the kernel part, 6 reach user space
            all = { emitted = 6, pcap_dropped = 1, lua_filtered = 2, matched = 3, events = through },
            filter_only = { emitted = 6, pcap_dropped = 0, lua_filtered = 1, matched = 5,
                            events = { through[1], through[2], through[3], unmarked, other_port } },
            kernel_and_where = { emitted = 6, pcap_dropped = 0, lua_filtered = 1, matched = 5,
                                 events = { through[1], through[2], through[3], low_ttl, other_port } },
            -- all 8 reach user space; libpcap drops the ICMP request and the datagram to 7001
            pcap_only = { emitted = 8, pcap_dropped = 2, lua_filtered = 0, matched = 6,
                          events = { through[1], through[2], through[3], unmarked, low_ttl, short } },
        }
        local kernel_rejects = { all = 2, filter_only = 2, kernel_and_where = 2, pcap_only = 0 }
        for name, w in pairs(want) do
            local st = stats[name]
            table.sort(w.events)
            table.sort(delivered[name])
            assert.are.same(w.events, delivered[name], name)
            assert.are.same({ emitted = w.emitted, received = w.emitted - w.pcap_dropped, pcap_dropped = w.pcap_dropped,
                              lua_filtered = w.lua_filtered, matched = w.matched, lost = 0 },
                { emitted = st.emitted, received = st.received, pcap_dropped = st.pcap_dropped,
                  lua_filtered = st.lua_filtered, matched = st.matched, lost = st.lost }, name)
            -- every hit is rejected by the kernel, emitted or lost; the rest of the machine is rejected too
            assert.are.equal(st.seen, st.kfiltered + st.emitted + st.lost + st.read_failed, name)
            assert.is_true(st.kfiltered >= kernel_rejects[name], name)
            assert.are.equal(st.seen, st.events)
        end
        -- where runs last: only on what the kernel, libpcap and the remainder let through
        assert.are.equal(4, where_calls)
    end)
end)
