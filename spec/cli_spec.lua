-- The CLI on real traffic: JSON lines, --fields, the summary, the ready line, and the Aya parity
-- fields (mac_len, hdr_len) checked against bpftrace reading the same sk_buff members.
local cjson = require("cjson")
local netns = require("support.netns")
local live = require("support.live")

local ETH, IP4, UDP = 14, 20, 8

local cli, wait_ready = live.spawn_cli, live.wait_ready

local function json_lines(lines)
    local out = {}
    for _, l in ipairs(lines) do
        if l:sub(1, 1) == "{" then
            out[#out + 1] = cjson.decode(l)
        end
    end
    return out
end

local function keys_of(t)
    local ks = {}
    for k in pairs(t) do
        ks[#ks + 1] = k
    end
    table.sort(ks)
    return ks
end

-- Every run is scoped to the pair's namespace too: device names like ndqa1 repeat in other
-- specs' namespaces (other runs on the machine).
describe("netdevq CLI #root", function()
    local pair
    live.pair_each_test({ name = "ndqc" }, function(p) pair = p end)

    it("prints JSON lines with every present field, then a summary equal to what was sent", function()
        netns.require_root()
        local proc = cli({ "-F", "json", "-I", pair.veth_a, "-f", "netns == " .. pair.netns_a, "-n", "3",
            "-d", "10" })
        finally(function() proc:kill("INT") end)
        wait_ready(proc)
        local ok, out = pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b,
            "7000", "40100", "10,200,1200" })
        assert.is_true(ok, out)
        local pid = tonumber(out:match("pid (%d+)"))
        local done, code, lines = proc:wait()
        assert.is_true(done, "exit " .. tostring(code) .. ": " .. table.concat(lines, "\n"))
        local objs = json_lines(lines)
        assert.equal(4, #objs)
        local expected_keys = {
            "comm", "cpu", "cgroup", "daddr", "data_len", "dev", "dmac", "dport", "ethertype",
            "gso_segs", "gso_size", "hash", "hdr_len", "ifindex", "len", "mac_len", "mark",
            "netns", "netns_name", "pid", "priority", "proto", "queue", "saddr", "skb", "smac",
            "sport", "tid",
            "time", "tos", "ts", "ttl", "type",
            "owner_pid", "owner_tid", "owner_comm", "owner_cgroup", "owner_uid", -- a direct send
        }
        table.sort(expected_keys)
        for i, size in ipairs({ 10, 200, 1200 }) do
            local ev = objs[i]
            assert.same(expected_keys, keys_of(ev))
            assert.same({ "event", "ndq_send", pid, pid, pair.veth_a, pair.ifindex_a, pair.netns_a,
                ETH + IP4 + UDP + size, "udp", pair.ip4_a, pair.ip4_b, 40100, 7000, 64, 0,
                "ipv4", pair.mac_a, pair.mac_b, 0, 0 },
                { ev.type, ev.comm, ev.pid, ev.tid, ev.dev, ev.ifindex, ev.netns, ev.len, ev.proto,
                    ev.saddr, ev.daddr, ev.sport, ev.dport, ev.ttl, ev.tos, ev.ethertype, ev.smac,
                    ev.dmac, ev.mark, ev.data_len })
            assert.same({ pid, pid, "ndq_send", 0 }, { ev.owner_pid, ev.owner_tid, ev.owner_comm, ev.owner_uid })
            -- JSON lines carry the date: RFC 3339 in UTC, nanoseconds, today
            assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%d%d%d%dZ$", ev.time)
            assert.equal(os.date("!%Y-%m-%d"), ev.time:sub(1, 10))
            assert.matches("^0x%x+$", ev.skb)
        end
        local summary = objs[4]
        assert.equal("summary", summary.type)
        assert.equal(3, summary.matched)
        assert.equal(0, summary.lost)
        assert.is_true(summary.events >= 3)
        -- the text summary goes to stderr (merged here)
        local text_summary
        for _, l in ipairs(lines) do
            text_summary = text_summary or l:match("^netdevq: %d+ events, 3 matched, 0 lost$")
        end
        assert.truthy(text_summary)
    end)

    it("restricts JSON keys to --fields", function()
        netns.require_root()
        local proc = cli({ "-F", "json", "-o", "comm,len,dport", "-I", pair.veth_a, "-f", "netns == " .. pair.netns_a,
            "-n", "2", "-d", "10" })
        finally(function() proc:kill("INT") end)
        wait_ready(proc)
        assert.is_true((pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b,
            "7001", "40101", "1,2" })))
        local _, _, lines = proc:wait()
        local objs = json_lines(lines)
        assert.same({
            { type = "event", comm = "ndq_send", len = 43, dport = 7001 },
            { type = "event", comm = "ndq_send", len = 44, dport = 7001 },
        }, { objs[1], objs[2] })
    end)

    it("prints the text line layout of the contract", function()
        netns.require_root()
        local proc = cli({ "-I", pair.veth_a, "-f", "netns == " .. pair.netns_a, "-n", "1", "-d", "10" })
        finally(function() proc:kill("INT") end)
        wait_ready(proc)
        local ok, out = pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, "7002",
            "40102", "58" })
        assert.is_true(ok, out)
        local pid = out:match("pid (%d+)")
        local _, code, lines = proc:wait()
        assert.equal(0, code)
        local line = lines[1]:gsub("^%d%d:%d%d:%d%d%.%d+ ", "TIME ")
        assert.equal(string.format("TIME ndq_send %s %s 100 udp 198.18.0.1:40102 > 198.18.0.2:7002",
            pid, pair.veth_a), line)
    end)

    it("shows comm, pid, dev, mac_len and hdr_len as bpftrace reads them from the sk_buff", function()
        netns.require_root()
        local bt, proc
        local unmount = live.tracefs()
        -- busted keeps only the last finally of a test: this one undoes all the test started
        finally(function()
            if proc then proc:kill("INT") end
            if bt then
                bt:kill("INT")
                bt:wait()
            end
            unmount()
        end)
        bt = live.spawn_bpftrace({ "-e", live.bpftrace_attached(string.format(
            'tracepoint:net:net_dev_queue /str(args->name) == "%s" && ((struct sk_buff *)'
            .. 'args->skbaddr)->dev->nd_net.net->ns.inum == %d/ { $s = (struct sk_buff *)'
            .. 'args->skbaddr; printf("bt %%d %%d %%d\\n", args->len, $s->mac_len, $s->hdr_len); }',
            pair.veth_a, pair.netns_a)) })
        -- device names repeat across namespaces (other runs may have an ndqa1 too): scope both
        proc = cli({ "-o", "comm,pid,dev,len,mac_len,hdr_len", "-I", pair.veth_a,
            "-f", "netns == " .. pair.netns_a, "-d", "60" })
        wait_ready(proc)
        local listener = live.listener(pair, "b", pair.ip4_b, 8081)
        assert.is_true((pair:exec("a", { netns.ndq_send(), "tcp4", pair.ip4_a, pair.ip4_b, "8081",
            "41001" })))
        assert.is_true((pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, "7003",
            "40103", "1,100" })))
        listener:wait()
        local _, code, lines = live.stop_spawned(proc)
        assert.equal(0, code)
        bt:kill("INT")
        local _, _, bt_lines = bt:wait()
        local ours, theirs = {}, {}
        for _, l in ipairs(lines) do
            local len, mac, hdr = l:match("^%S+ %d+ %S+ (%d+) (%d+) (%d+)$")
            if len then
                ours[#ours + 1] = len .. " " .. mac .. " " .. hdr
            end
        end
        for _, l in ipairs(bt_lines) do
            local rest = l:match("^bt (.*)$")
            if rest then
                theirs[#theirs + 1] = rest
            end
        end
        assert.is_true(#ours >= 5, "expected the handshake, FIN and 2 datagrams, saw " .. #ours)
        assert.same(theirs, ours)
        -- TCP segments are clones of a header-released skb: hdr_len is the headroom, not 0
        local nonzero_hdr = 0
        for _, row in ipairs(ours) do
            if not row:match(" 0$") then
                nonzero_hdr = nonzero_hdr + 1
            end
        end
        assert.is_true(nonzero_hdr > 0, "expected some TCP segments with hdr_len set")
    end)
end)
