-- Pruning (csrc/prune.c): before the verifier sees the net_dev_queue program, the loader leaves
-- out what the configuration cannot reach. The pruned program must behave exactly as the whole
-- one: for each configuration below, two tracers run side by side on the same traffic, one loaded
-- pruned and one whole (core.prune(false): the verifier then prunes by itself), and they must
-- report the same events, field for field, the same counts and the same aggregations. Each
-- configuration takes different branches of the program (read paths, kernel filters and sets,
-- pcap in the kernel, member paths, owners, queue latency, aggregations, batches). The pruned
-- program must also be the smaller one in the kernel (bpftool's xlated length).
local netns = require("support.netns")
local live = require("support.live")
local bpfobjs = require("support.bpfobjs")
local cjson = require("cjson")

local SET64 = {}
for p = 20001, 20063 do
    SET64[#SET64 + 1] = "dport == " .. p
end
SET64[#SET64 + 1] = "dport == 7000"
SET64 = "(" .. table.concat(SET64, " or ") .. ")"

-- name, open options (the scope filter on the pair's namespaces is added to each)
local CONFIGS = {
    { "every field, raw, direct loads", {} },
    { "every field, raw, probe reads", { read = "probe" } },
    { "every field, btf", { mode = "btf" } },
    { "the CLI's default fields", { fields = { "comm", "pid", "dev", "len" } } },
    { "a kernel filter on proto and port", { filter = 'proto == "udp" and dport == 7000' } },
    { "a 64-port set", { filter = SET64 } },
    { "a pcap expression in the kernel, raw", { pcap = "udp port 7001 or tcp" } },
    { "a pcap expression in the kernel, btf", { pcap = "udp port 7001 or tcp", mode = "btf" } },
    { "sk_buff member paths, raw", { filter = "skb.len > 100", fields = { "len", "skb.mark", "skb.dev.mtu" } } },
    { "sk_buff member paths, btf", { mode = "btf", fields = { "len", "skb.priority", "skb.dev.mtu" } } },
    { "socket owners", { fields = { "len", "proto", "owner_pid", "owner_comm" } } },
    { "queue latency", { fields = { "dev", "len", "sojourn_ns", "xmit_rc" } } },
    { "an in-kernel count", { aggregate = { kind = "count", keys = { "dev", "proto" }, name = "@c" } } },
    { "an in-kernel histogram", { aggregate = { kind = "hist", keys = { "dev" }, value = "len", name = "@h" } } },
}

-- every field but the clocks, which each tracer reads for itself
local CLOCKS = { ts = true, time = true, sojourn_ns = true, xmit_ns = true }

local function signatures(events)
    local out = {}
    for i, ev in ipairs(events) do
        local keys, parts = {}, {}
        for k, v in pairs(ev) do
            keys[#keys + 1] = k
            parts[k] = CLOCKS[k] and (v and "set" or "absent") or tostring(v)
        end
        table.sort(keys)
        for j, k in ipairs(keys) do
            keys[j] = k .. "=" .. parts[k]
        end
        out[i] = table.concat(keys, " ")
    end
    table.sort(out)
    return out
end


-- the xlated length of the net_dev_queue program a tracer opened after `before` holds
local function xlated_len(before)
    local held = bpfobjs.held(bpfobjs.getpid())
    for id in pairs(held.prog) do
        if not before[id] then
            local ok, out = netns.run({ "bpftool", "-j", "prog", "show", "id", tostring(id) })
            local info = ok and cjson.decode(out)
            if info and (info.name == "netdevq_direct" or info.name == "netdevq_raw" or info.name == "netdevq_btf") then
                return info.bytes_xlated / 8
            end
        end
    end
end

describe("pruning at load #root", function()
    local pair
    live.pair_each_test({ name = "ndqpr", icmp_unlimited = true }, function(p) pair = p end)

    it("gives the events, counts and aggregations of the whole program in every configuration", function()
        netns.require_root()
        local netdevq = require("netdevq")
        local core = require("netdevq.core")
        local scope = ("(netns == %d or netns == %d)"):format(pair.netns_a, pair.netns_b)
        local runs = {}
        finally(function()
            core.prune(true)
            for _, r in ipairs(runs) do
                for _, t in pairs(r.t) do
                    t:close()
                end
            end
        end)
        for i, c in ipairs(CONFIGS) do
            local r = { name = c[1], t = {}, events = {}, size = {} }
            runs[i] = r
            for _, how in ipairs({ "pruned", "whole" }) do
                local opts = {}
                for k, v in pairs(c[2]) do
                    opts[k] = v
                end
                opts.filter = opts.filter and (scope .. " and " .. opts.filter) or scope
                opts.ringbuf_size = 1048576
                assert.is_true(core.prune(how == "pruned")) -- on before: the setting it replaces
                local before = bpfobjs.held(bpfobjs.getpid()).prog
                r.t[how] = assert(netdevq.open(opts))
                r.size[how] = xlated_len(before)
                local evs = {}
                r.events[how] = evs
                if not opts.aggregate then
                    r.t[how]:on_event(function(ev) evs[#evs + 1] = ev:totable() end)
                end
            end
            core.prune(true)
        end

        -- UDP over IPv4 and IPv6 (nobody listens: ICMP errors come back), a TCP bulk transfer
        live.send(pair, "a", { "--mark", "7", "udp4", pair.ip4_a, pair.ip4_b, "7000", "40000", "100,300" })
        live.send(pair, "a", { "udp6", pair.ip6_a, pair.ip6_b, "7001", "40001", "20,200" })
        local sink = pair:spawn("b", { netns.ndq_send(), "tcpsink", pair.ip4_b, "7002", "30000" })
        live.wait_line(sink, "listening")
        live.send(pair, "a", { "tcpbulk", pair.ip4_a, pair.ip4_b, "7002", "41002", "100000" })
        live.wait_all({ sink }, "tcpsink")

        for _, r in ipairs(runs) do
            local deadline = live.monotonic_ms() + 5000
            for _, t in pairs(r.t) do
                repeat
                    assert(t:poll(50))
                    local st = t:stats()
                until st.received >= st.emitted or live.monotonic_ms() > deadline
            end
        end
        for _, r in ipairs(runs) do
            local p, w = r.t.pruned:stats(), r.t.whole:stats()
            assert.equal(0, p.lost, r.name)
            assert.equal(0, w.lost, r.name)
            assert.is_true(p.matched >= 2, r.name .. ": too few packets matched: " .. p.matched)
            -- (seen and kfiltered count the machine's other packets too, since each one's attach)
            assert.same({ w.matched, w.emitted, w.held }, { p.matched, p.emitted, p.held },
                r.name .. ": matched, emitted, held")
            if r.t.pruned.agg_spec then
                local pa, wa = assert(r.t.pruned:read_aggregate()), assert(r.t.whole:read_aggregate())
                assert.same(wa:entries(), pa:entries(), r.name .. ": aggregation")
                assert.is_true(#pa:entries() >= 2, r.name .. ": aggregation entries")
            end
            assert.same(signatures(r.events.whole), signatures(r.events.pruned), r.name .. ": events")
            assert.is_true(r.size.pruned <= r.size.whole,
                ("%s: xlated %s pruned vs %s whole"):format(r.name, tostring(r.size.pruned), tostring(r.size.whole)))
        end
    end)
end)
