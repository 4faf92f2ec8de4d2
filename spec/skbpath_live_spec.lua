-- sk_buff member paths and kstack on live traffic: what the kernel's generic reader returns for
-- skb.dev.mtu, skb.sk.sk_rcvbuf, skb.mark, skb.priority, checked against the devices' and the
-- sockets' settings and against bpftrace reading the same members of the same packets; the
-- kernel filter on a path; `--count kstack` against bpftrace's @[kstack] = count().
local cjson = require("cjson")
local netns = require("support.netns")
local live = require("support.live")

local ETH, IP4, UDP = 14, 20, 8

-- Clean-ups run after each test in reverse order, also when it fails (busted keeps only the last
-- `finally` of a test, so a pair registered before a process would never be destroyed).
local cleanups = {}
local function defer(fn)
    cleanups[#cleanups + 1] = fn
end
local function run_cleanups()
    for i = #cleanups, 1, -1 do
        pcall(cleanups[i])
        cleanups[i] = nil
    end
end

local function cli(argv)
    local full = { "luajit", "scripts/netdevq.lua" }
    for _, a in ipairs(argv) do
        full[#full + 1] = a
    end
    return netns.spawn(full)
end

-- Reads lines until the ready line.
local function wait_ready(proc)
    local before = {}
    while true do
        local l = proc:line()
        assert(l, "the CLI ended before its ready line: " .. table.concat(before, "\n"))
        if l:match("^netdevq: tracing net_dev_queue %((%a+)%) %.%.%. Ctrl%-C to stop$") then
            return
        end
        before[#before + 1] = l
    end
end

local function events_of(lines)
    local out = {}
    for _, l in ipairs(lines) do
        if l:sub(1, 1) == "{" then
            local obj = cjson.decode(l)
            if obj.type == "event" then
                out[#out + 1] = obj
            end
        end
    end
    return out
end

-- bpftrace's tracepoint probes need tracefs
local function ensure_tracefs()
    defer(live.tracefs())
end

local function spawn_bpftrace(program)
    local bt = live.spawn_bpftrace({ "-e", live.bpftrace_attached(program) })
    defer(function() bt:kill("INT") end)
    return bt
end

describe("sk_buff member paths on live traffic #root", function()
    after_each(run_cleanups)
    live.no_leftovers()
    for _, mode in ipairs({ "raw", "btf" }) do
        it("reads skb.dev.mtu per device and filters on it in the kernel (" .. mode .. ")", function()
            netns.require_root()
            local pair = assert(netns.pair{ name = "ndqp" })
            defer(function() pair:destroy() end)
            assert.is_true((pair:exec("a", { "ip", "link", "set", "dev", pair.veth_a, "mtu",
                                             "1400" })))
            local scope = "netns == " .. pair.netns_a
            local all = cli({ "--mode", mode, "-F", "json", "-o", "dev,len,skb.dev.mtu", "-f",
                              scope, "-d", "60" })
            defer(function() all:kill("INT") end)
            local picked = cli({ "--mode", mode, "-F", "json", "-o", "dev,len,skb.dev.mtu", "-f",
                                 scope .. " and skb.dev.mtu < 1500", "-d", "60" })
            defer(function() picked:kill("INT") end)
            wait_ready(all)
            wait_ready(picked)
            -- lo of namespace a: a listener, so no ICMP errors join the datagrams
            local rx = pair:spawn("a", { netns.ndq_send(), "udprecv", "127.0.0.1", "7101", "2",
                                         "3000" })
            repeat
                local l = rx:line()
            until l == nil or l == "ready"
            assert.is_true((pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b,
                                             "7100", "40100", "100,200,300" })))
            assert.is_true((pair:exec("a", { netns.ndq_send(), "udp4", "127.0.0.1", "127.0.0.1",
                                             "7101", "40101", "50,60" })))
            rx:wait()
            local _, code, lines = live.stop_spawned(all)
            assert.equal(0, code)
            local _, pcode, plines = live.stop_spawned(picked)
            assert.equal(0, pcode)

            local seen = {}
            for _, ev in ipairs(events_of(lines)) do
                seen[#seen + 1] = { ev.dev, ev.len, ev["skb.dev.mtu"] }
            end
            local veth = {
                { pair.veth_a, ETH + IP4 + UDP + 100, 1400 },
                { pair.veth_a, ETH + IP4 + UDP + 200, 1400 },
                { pair.veth_a, ETH + IP4 + UDP + 300, 1400 },
            }
            local expected = { veth[1], veth[2], veth[3],
                               { "lo", ETH + IP4 + UDP + 50, 65536 },
                               { "lo", ETH + IP4 + UDP + 60, 65536 } }
            assert.same(expected, seen)
            local chosen = {}
            for _, ev in ipairs(events_of(plines)) do
                chosen[#chosen + 1] = { ev.dev, ev.len, ev["skb.dev.mtu"] }
            end
            assert.same(veth, chosen)
        end)

        it("reads skb.sk.sk_rcvbuf, skb.mark, skb.priority as bpftrace does (" .. mode .. ")",
           function()
            netns.require_root()
            ensure_tracefs()
            local pair = assert(netns.pair{ name = "ndqs" })
            defer(function() pair:destroy() end)
            local bt = spawn_bpftrace(string.format(
                'tracepoint:net:net_dev_queue /str(args->name) == "%s" && ((struct sk_buff *)'
                .. 'args->skbaddr)->dev->nd_net.net->ns.inum == %d/ { $s = (struct sk_buff *)'
                .. 'args->skbaddr; printf("bt %%d %%d %%d %%d %%d %%d\\n", $s->len, '
                .. '$s->sk->sk_rcvbuf, $s->mark, $s->priority, $s->ip_summed, $s->dev->mtu); }',
                pair.veth_a, pair.netns_a))
            local proc = cli({ "--mode", mode, "-F", "json", "-o",
                               "skb.len,skb.sk.sk_rcvbuf,skb.mark,skb.priority,skb.ip_summed,"
                               .. "skb.dev.mtu", "-I", pair.veth_a,
                               "-f", "netns == " .. pair.netns_a, "-d", "60" })
            defer(function() proc:kill("INT") end)
            wait_ready(proc)
            assert.is_true((pair:exec("a", { netns.ndq_send(), "--mark", "7", "--priority", "5",
                                             "--rcvbuf", "65536", "udp4", pair.ip4_a, pair.ip4_b,
                                             "7102", "40102", "100,200" })))
            local _, code, lines = live.stop_spawned(proc)
            assert.equal(0, code)
            os.execute("sleep 0.3")
            bt:kill("INT")
            local _, _, bt_lines = bt:wait()
            local ours, theirs = {}, {}
            for _, ev in ipairs(events_of(lines)) do
                ours[#ours + 1] = string.format("%d %d %d %d %d %d", ev["skb.len"],
                                                ev["skb.sk.sk_rcvbuf"], ev["skb.mark"],
                                                ev["skb.priority"], ev["skb.ip_summed"],
                                                ev["skb.dev.mtu"])
            end
            for _, l in ipairs(bt_lines) do
                theirs[#theirs + 1] = l:match("^bt (.*)$")
            end
            -- SO_RCVBUF 65536: the kernel keeps twice that; ip_summed (a 2-bit bitfield) 3 is
            -- CHECKSUM_PARTIAL (veth offloads the UDP checksum)
            assert.same({ "142 131072 7 5 3 1500", "242 131072 7 5 3 1500" }, ours)
            assert.same(theirs, ours)
        end)
    end
end)

describe("aggregations on member paths #root", function()
    after_each(run_cleanups)
    live.no_leftovers()
    it("computes --hist skb.sk.sk_wmem_queued --by dev in the kernel as Lua does", function()
        netns.require_root()
        local pair = assert(netns.pair{ name = "ndqh" })
        defer(function() pair:destroy() end)
        local scope = { "-I", pair.veth_a, "-f", "netns == " .. pair.netns_a, "-d", "60" }
        local function run(extra)
            local argv = { "--hist", "skb.sk.sk_wmem_queued", "--by", "dev,skb.dev.mtu" }
            for _, a in ipairs(extra) do argv[#argv + 1] = a end
            for _, a in ipairs(scope) do argv[#argv + 1] = a end
            local proc = cli(argv)
            defer(function() proc:kill("INT") end)
            return proc
        end
        local kernel = run({})             -- one aggregation the kernel reads: in the kernel
        local lua = run({ "--count" })     -- two: both in Lua, from the events
        wait_ready(kernel)
        wait_ready(lua)
        local listener = pair:spawn("b", { netns.ndq_send(), "tcplisten", pair.ip4_b, "8082",
                                           "3000" })
        repeat
            local l = listener:line()
        until l == nil or l == "listening"
        assert.is_true((pair:exec("a", { netns.ndq_send(), "tcp4", pair.ip4_a, pair.ip4_b,
                                         "8082", "41002" })))
        assert.is_true((pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b,
                                         "7104", "40104", "10,20" })))
        listener:wait()
        local function hist(proc)
            local _, code, lines = live.stop_spawned(proc)
            assert.equal(0, code)
            local out, on = {}, false
            for _, l in ipairs(lines) do
                if l:match("^@hist_") then
                    on = true
                elseif l:match("^@") or l:match("^netdevq:") then
                    on = false
                end
                if on then
                    out[#out + 1] = l
                end
            end
            return table.concat(out, "\n")
        end
        local k, l = hist(kernel), hist(lua)
        assert.matches("^@hist_skb%.sk%.sk_wmem_queued%[" .. pair.veth_a .. ", 1500%]: ", k)
        assert.equal(l, k)
    end)
end)

describe("kstack on live traffic #root", function()
    after_each(run_cleanups)
    live.no_leftovers()
    it("counts stacks like bpftrace's @[kstack] = count(), frame by frame", function()
        netns.require_root()
        ensure_tracefs()
        local pair = assert(netns.pair{ name = "ndqk" })
        defer(function() pair:destroy() end)
        local bt = spawn_bpftrace(string.format(
            'tracepoint:net:net_dev_queue /str(args->name) == "%s" && ((struct sk_buff *)'
            .. 'args->skbaddr)->dev->nd_net.net->ns.inum == %d/ { @[kstack] = count(); }',
            pair.veth_a, pair.netns_a))
        local proc = cli({ "--count", "kstack", "-I", pair.veth_a, "-f",
                           "netns == " .. pair.netns_a, "-d", "60" })
        defer(function() proc:kill("INT") end)
        wait_ready(proc)
        assert.is_true((pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b,
                                         "7103", "40103", "10,20,30" })))
        local _, code, lines = live.stop_spawned(proc)
        assert.equal(0, code)
        os.execute("sleep 0.3")
        bt:kill("INT")
        local _, bt_code, bt_lines = bt:wait()
        -- both print @[\n    frame\n ...]: N; netdevq names its map @count
        local function stacks(list, prefix)
            local out, cur = {}, nil
            for _, l in ipairs(list) do
                if l == prefix .. "[" then
                    cur = {}
                elseif cur and l:match("^%]: %d+$") then
                    out[#out + 1] = table.concat(cur, "\n") .. " = " .. l:match("%d+")
                    cur = nil
                elseif cur then
                    cur[#cur + 1] = l
                end
            end
            table.sort(out)
            return out
        end
        local ours, theirs = stacks(lines, "@count"), stacks(bt_lines, "@")
        -- the three datagrams: one stack, or two when the first one takes another branch of
        -- ip_finish_output2 (neighbour output) than the next ones (the cached header)
        local total = 0
        for _, st in ipairs(ours) do
            assert.matches("^    __traceiter_net_dev_queue%+%d+\n    __dev_queue_xmit%+%d+\n"
                           .. "    ip_finish_output2%+%d+\n.*    udp_send_skb%+%d+\n", st)
            total = total + tonumber(st:match(" = (%d+)$"))
        end
        assert.equal(3, total, table.concat(lines, "\n"))
        assert.same(theirs, ours, "bpftrace (exit " .. tostring(bt_code) .. "): "
                    .. table.concat(bt_lines, "\n"))
    end)
end)
