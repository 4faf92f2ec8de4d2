-- The first hour of a tcpdump/bpftrace user: what netdevq prints and refuses where their habits
-- lead them. Namespaces by name (filters, --netns, the netns_name field), the default line with
-- TCP flags, -o +FIELD, interval headers, --help in one column, and mistakes that used to pass
-- silently (-I nosuchdev, --by alone, unknown open() keys, -p abc, -d -1).
local cjson = require("cjson")
local netns = require("support.netns")
local live = require("support.live")
local clirun = require("support.clirun")

local READY = "tracing net_dev_queue"

local function traced(args, traffic)
    local bg = clirun.spawn_cli(args)
    assert(bg:wait_err(READY, 30), bg:err_text())
    traffic()
    return bg:wait(60)
end

describe("the first hour", function()
    describe("mistakes are told, with exit status 2", function()
        local cases = {
            { { "--by", "dev" },
              "netdevq: --by applies to an aggregation: add --count, --sum, --hist, ...\n" },
            { { "--top", "5" },
              "netdevq: --top applies to an aggregation: add --count, --sum, --hist, ...\n" },
            { { "--count", "dev", "--top", "0" }, "netdevq: --top must be a positive number, not 0\n" },
            { { "--count", "dev", "--top", "2.5" }, "netdevq: --top must be a whole number, not 2.5\n" },
            { { "-p", "abc" }, "netdevq: --pid must be a positive number, not abc\n" },
            { { "-d", "-1" }, "netdevq: --duration must be a positive number, not -1\n" },
            { { "--duration", "-1" }, "netdevq: --duration must be a positive number, not -1\n" },
            { { "-s", "300" },
              "netdevq: --snaplen must be a whole number from 0 to 256 (header bytes), not 300\n" },
            { { "--max-keys", "0" }, "netdevq: --max-keys must be a positive number, not 0\n" },
            { { "-w", "" }, "netdevq: --write needs a file name (or - for standard output)\n" },
            { { "--count", "dev", "--lhist", "len:0:100:7" },
              "netdevq: lhist MAX - MIN (100) must be a multiple of STEP 7\n" },
            { { "--sum", "dev" },
              "netdevq: 'dev' is a string field; aggregate an integer field (len, gso_segs, ...)\n" },
        }
        for _, c in ipairs(cases) do
            it("for " .. table.concat(c[1], " "), function()
                local r = clirun.cli(c[1])
                assert.equal(2, r.code)
                assert.equal(c[2], r.err)
                assert.equal("", r.out)
            end)
        end

        it("for an unknown key of netdevq.open{}, as nil and a message", function()
            local netdevq = require("netdevq")
            local t, err, info = netdevq.open{ fitler = "len > 1" }
            assert.is_nil(t)
            assert.equal("netdevq: open: unknown option 'fitler'", err)
            assert.equal("usage", info.kind)
        end)

        it("for a 7-key in-kernel aggregation, as nil and the limit", function()
            local netdevq = require("netdevq")
            local t, err = netdevq.open{ aggregate = { kind = "count",
                keys = { "dev", "proto", "saddr", "daddr", "sport", "dport", "len" } } }
            assert.is_nil(t)
            assert.equal("netdevq: this aggregation cannot run in the kernel (a kernel key has at "
                .. "most 6 fields); aggregate in Lua instead", err)
        end)
    end)

    it("warns about -I naming no device here, and still runs", function()
        netns.require_root()
        local r = clirun.cli({ "-I", "nosuchdev0", "-d", "0.2", "-q" })
        assert.equal(0, r.code)
        assert.matches("^netdevq: warning: no device 'nosuchdev0' in this network namespace", r.err)
    end)

    it("prints --help one option per line, descriptions in one column", function()
        local r = clirun.cli({ "--help" })
        assert.equal(0, r.code)
        local column
        for line in r.out:gmatch("[^\n]+") do
            local label, desc_at = line:match("^   (%-%S.-)%s%s+()%S")
            if label then
                column = column or desc_at
                assert.equal(column, desc_at, line)
            end
        end
        assert.truthy(r.out:find("\n   -w, --write FILE", 1, true))
        assert.truthy(r.out:find("\n   -f, --filter EXPR", 1, true))
    end)

    describe("on live traffic #root", function()
        local pair
        live.pair_each_test({ name = "ndqh" }, function(p) pair = p end)

        local function udp(size, count)
            assert(pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, 7100, 40100,
                size, count or 1 }))
        end

        it("resolves namespace names in filters and --netns, and prints netns_name", function()
            netns.require_root()
            local r = traced({ "--netns", pair.ns_a, "-F", "json", "-o", "netns,netns_name,len",
                "-f", 'dport == 7100', "-d", 2 }, function() udp(100, 2) end)
            assert.equal(0, r.code, r.err)
            local lines = clirun.lines(r.out)
            assert.equal(3, #lines)
            for i = 1, 2 do
                assert.same({ type = "event", netns = pair.netns_a, netns_name = pair.ns_a,
                    len = 14 + 20 + 8 + 100 }, cjson.decode(lines[i]))
            end
            local r2 = traced({ "-f", ('netns == "%s" and dport == 7100'):format(pair.ns_b), "-d",
                1.5, "-q" }, function() udp(100, 2) end)
            assert.matches("netdevq: %d+ events, 0 matched, 0 lost", r2.err)
        end)

        it("prints TCP flags on the default line and -o +FIELD after it", function()
            netns.require_root()
            local rx = live.listener(pair, "b", pair.ip4_b, 7200)
            local r = traced({ "-f", ('netns == %d and (dport == 7200 or sport == 7200)')
                :format(pair.netns_a), "-o", "+mark,queue", "-d", 2 }, function()
                assert(pair:exec("a", { netns.ndq_send(), "tcp4", pair.ip4_a, pair.ip4_b, 7200,
                    40200 }))
            end)
            rx:wait()
            assert.equal(0, r.code, r.err)
            local first = clirun.lines(r.out)[1]
            assert.matches("^%d%d:%d%d:%d%d%.%d+ ndq_send %d+ " .. pair.veth_a .. " 74 tcp "
                .. pair.ip4_a:gsub("%.", "%%.") .. ":40200 > " .. pair.ip4_b:gsub("%.", "%%.")
                .. ":7200 %[S%] 0 0$", first)
        end)

        it("starts every interval with its time, in text and JSON", function()
            netns.require_root()
            local filter = ('netns == %d and dport == 7100'):format(pair.netns_a)
            local r = traced({ "--count", "dev", "-f", filter, "-i", 1, "-d", 2.5 },
                function() udp(10, 3) end)
            assert.equal(0, r.code, r.err)
            local lines = clirun.lines(r.out)
            assert.matches("^%d%d:%d%d:%d%d$", lines[1])
            assert.equal("@count[" .. pair.veth_a .. "]: 3", lines[2])
            local rj = traced({ "--count", "dev", "-f", filter, "-i", 1, "-d", 1.5, "-F", "json" },
                function() udp(10, 3) end)
            local first = cjson.decode(clirun.lines(rj.out)[1])
            assert.equal("interval", first.type)
            assert.equal(1, first.interval_s)
            assert.matches("^%d%d%d%d%-%d%d%-%d%dT", first.time)
            local map = cjson.decode(clirun.lines(rj.out)[2])
            assert.equal("map", map.type)
            assert.equal(first.time, map.time)
            assert.same({ { key = { pair.veth_a }, value = 3 } }, map.data)
        end)
        it("--top N prints the N largest entries, in text and JSON (bpftrace print(@, N))",
            function()
            netns.require_root()
            local filter = ('netns == %d and dport == 7100'):format(pair.netns_a)
            -- lengths 50, 60, 70, 80 sent 1, 2, 3, 4 times: the top 2 are 70 (3) and 80 (4)
            local function traffic()
                for i, size in ipairs({ 8, 18, 28, 38 }) do udp(size, i) end
            end
            local r = traced({ "--count", "len", "--top", "2", "-f", filter, "-d", 2 }, traffic)
            assert.equal(0, r.code, r.err)
            assert.same({ "@count[70]: 3", "@count[80]: 4" }, clirun.lines(r.out))
            local rj = traced({ "--sum", "len", "--by", "len", "--top", "3", "-f", filter, "-d", 2,
                "-F", "json" }, traffic)
            assert.equal(0, rj.code, rj.err)
            local map = cjson.decode(clirun.lines(rj.out)[1])
            assert.same({ { key = { 60 }, value = 120 }, { key = { 70 }, value = 210 },
                { key = { 80 }, value = 320 } }, map.data)
        end)
        it("names the -o columns in a first line when stdout is a terminal, never in a pipe",
            function()
            netns.require_root()
            local filter = ('netns == %d and dport == 7100'):format(pair.netns_a)
            local cli = clirun.shell_line(clirun.cli_argv({ "-o", "comm,len,daddr,saddr,dport,sport",
                "-f", filter, "-n", 2, "-d", 20 }))
            -- script(1) gives the CLI a terminal; what it writes there comes back in out
            local bg = clirun.spawn({ "script", "-qec", cli, "/dev/null" },
                { env = { NETDEVQ_BUILD = clirun.build_dir() } })
            local ready = false
            for _ = 1, 300 do
                if bg:out_text():find(READY, 1, true) then ready = true break end
                clirun.sleep(0.1)
            end
            assert(ready, bg:out_text())
            udp(10, 2)
            local r = bg:wait(30)
            assert.equal(0, r.code, r.out)
            local lines = {}
            for l in r.out:gsub("\r", ""):gmatch("[^\n]+") do
                if not l:match("^netdevq:") then lines[#lines + 1] = l end
            end
            local a, b = pair.ip4_a, pair.ip4_b
            assert.same({ "comm len saddr:sport > daddr:dport",
                "ndq_send 52 " .. a .. ":40100 > " .. b .. ":7100",
                "ndq_send 52 " .. a .. ":40100 > " .. b .. ":7100" }, lines)
        end)
    end)
end)
