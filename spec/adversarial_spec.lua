-- Numbers that can't be silently wrong, output nobody can forge: netdevq tried as a hostile and
-- careless user would (issue "Trust the numbers"). Each case failed before its fix:
--   aggregation key explosion, kernel and Lua alike: bounded keys, overflow reported in text,
--   JSON and stats, -n exact with aggregations; hostile names (comm with control bytes and
--   invalid UTF-8) escaped in text, JSON valid; output failures (a full disk) reported with exit
--   status 1; -w - carries pcapng only; pcap expressions with -q and small -s; huge filters.
-- Traffic goes to 127.0.0.1 on ports of this spec, and the filters name those ports.
local cjson = require("cjson")
local netns = require("support.netns")
local clirun = require("support.clirun")

local READY = "tracing net_dev_queue"

local function send_udp(port, sizes, count)
    local r = clirun.run({ netns.ndq_send(), "udp4", "127.0.0.1", "127.0.0.1", port, port + 1,
        sizes, count or 1 })
    assert(r.code == 0, r.err)
end

-- run the CLI with args while `traffic()` runs once it is attached; returns { code, out, err }
local function traced(args, traffic, opts)
    local bg = clirun.spawn_cli(args, opts)
    assert(bg:wait_err(READY, 30), bg:err_text())
    traffic()
    return bg:wait(60)
end

local function sizes(from, n)
    local t = {}
    for i = 0, n - 1 do
        t[#t + 1] = from + i
    end
    return table.concat(t, ",")
end

describe("hostile input #root", function()
    describe("aggregation key explosion", function()
        -- 40 datagrams of 40 distinct sizes: 40 keys of `len`, room for 10
        local PORT = 47110
        local FILTER = ('dev == "lo" and dport == %d'):format(PORT)

        local function explode(extra)
            netns.require_root()
            local args = { "--count", "len", "--max-keys", 10, "-f", FILTER, "-d", 2 }
            for _, a in ipairs(extra or {}) do args[#args + 1] = a end
            return traced(args, function() send_udp(PORT, sizes(1, 40)) end)
        end

        local function keys_printed(out)
            local n = 0
            for _ in out:gmatch("@count%[%d+%]: 1\n") do n = n + 1 end
            return n
        end

        it("keeps 10 keys in the kernel map and reports the other 30 events", function()
            local r = explode()
            assert.equal(0, r.code, r.err)
            assert.equal(10, keys_printed(r.out))
            assert.matches("netdevq: %d+ events, 10 matched, 0 lost, 30 not aggregated "
                .. "%(aggregation full: raise %-%-max%-keys%)\n", r.err)
        end)

        it("keeps 10 keys in a Lua aggregation too (-n makes it run in Lua) and reports 30", function()
            local r = explode({ "-n", 1000 })
            assert.equal(0, r.code, r.err)
            assert.equal(10, keys_printed(r.out))
            assert.matches("netdevq: %d+ events, 40 matched, 0 lost, 30 not aggregated", r.err)
        end)

        it("says so in the JSON summary", function()
            local r = explode({ "-F", "json" })
            assert.equal(0, r.code, r.err)
            local lines = clirun.lines(r.out)
            local summary = cjson.decode(lines[#lines])
            assert.equal("summary", summary.type)
            assert.equal(30, summary.agg_overflow)
            assert.equal(10, #cjson.decode(lines[1]).data)
        end)

        it("refuses an lhist that would need a bucket per value", function()
            local r = clirun.cli({ "--lhist", "len:0:100000000:1" })
            assert.equal(2, r.code)
            assert.equal("netdevq: lhist has at most 10000 buckets ((MAX - MIN) / STEP is "
                .. "100000000)\n", r.err)
        end)

        it("stops -n exactly after N events with an aggregation", function()
            netns.require_root()
            local r = traced({ "--count", "dev", "-f", FILTER, "-n", 7, "-d", 5 },
                function() send_udp(PORT, "1", 20) end)
            assert.equal(0, r.code, r.err)
            assert.equal("@count[lo]: 7\n", r.out)
        end)
    end)

    describe("names from other processes", function()
        local PORT = 47120
        local HOSTILE = "a\nb\27[2J\255z"

        local function hostile(args)
            netns.require_root()
            local all = { "-f", ('dev == "lo" and dport == %d'):format(PORT), "-d", 2 }
            for _, a in ipairs(args) do all[#all + 1] = a end
            return traced(all, function()
                local r = clirun.run({ "luajit", "spec/tools/comm_send.lua", HOSTILE, PORT, 2 })
                assert(r.code == 0, r.err)
            end)
        end

        it("prints a comm with a newline, an escape sequence and a bad byte escaped", function()
            local r = hostile({ "-o", "comm,dport" })
            assert.equal(0, r.code, r.err)
            assert.equal("a\\x0ab\\x1b[2J\\xffz " .. PORT .. "\n", r.out:match("^[^\n]*\n"))
            assert.equal(2, #clirun.lines(r.out))
            assert.is_nil(r.out:find("[%z\1-\9\11-\31\127-\255]"))
        end)

        it("writes valid JSON for it, the same escaped text", function()
            local r = hostile({ "-F", "json", "-o", "comm" })
            assert.equal(0, r.code, r.err)
            local lines = clirun.lines(r.out)
            assert.equal(3, #lines)
            for i = 1, 2 do
                assert.same({ type = "event", comm = "a\\x0ab\\x1b[2J\\xffz" },
                    cjson.decode(lines[i]))
            end
        end)

        it("escapes it in aggregation keys too", function()
            local r = hostile({ "--count", "comm" })
            assert.equal(0, r.code, r.err)
            assert.equal("@count[a\\x0ab\\x1b[2J\\xffz]: 2\n", r.out)
        end)
    end)

    describe("output that cannot be written", function()
        -- the CLI with stdout on /dev/full (every write fails with ENOSPC)
        local function to_full(args)
            netns.require_root()
            local dir = clirun.tmpdir()
            local parts = {}
            for i, a in ipairs(clirun.cli_argv(args)) do parts[i] = clirun.quote(a) end
            local p = assert(io.popen(table.concat(parts, " ") .. " </dev/null >/dev/full 2>"
                .. clirun.quote(dir .. "/err") .. "; echo $?"))
            local code = tonumber(p:read("*a"):match("(%d+)"))
            p:close()
            local f = assert(io.open(dir .. "/err"))
            local err = f:read("*a")
            f:close()
            clirun.rmtree(dir)
            return { code = code, err = err }
        end

        it("reports a failed aggregation print with exit status 1", function()
            local cmd = table.concat({ netns.ndq_send(), "udp4", "127.0.0.1", "127.0.0.1", 47150,
                47151, 10, 3 }, " ")
            local r = to_full({ "--count", "dev", "-c", cmd })
            assert.equal(1, r.code)
            assert.matches("netdevq: writing output failed: .*No space left on device\n", r.err)
        end)

        it("reports a failed JSON summary with exit status 1", function()
            local r = to_full({ "-F", "json", "-q", "-d", 0.3 })
            assert.equal(1, r.code)
            assert.matches("netdevq: writing output failed: .*No space left on device\n", r.err)
        end)
    end)

    describe("-w - keeps stdout for pcapng", function()
        local PORT = 47130
        it("puts JSON, aggregations and the summary on stderr, and only pcapng on stdout", function()
            netns.require_root()
            local r = traced({ "-w", "-", "-F", "json", "--count", "dev", "-f",
                ('dev == "lo" and dport == %d'):format(PORT), "-d", 2 },
                function() send_udp(PORT, "10,20,30") end)
            assert.equal(0, r.code, r.err)
            -- a section header block first, and nothing but blocks after it
            assert.equal("\10\13\13\10", r.out:sub(1, 4))
            local pos, blocks = 1, 0
            while pos <= #r.out do
                local b1, b2, b3, b4 = r.out:byte(pos + 4, pos + 7) -- block length, little endian
                local len = b1 + b2 * 256 + b3 * 65536 + b4 * 16777216
                assert.is_true(len >= 12 and len % 4 == 0)
                pos = pos + len
                blocks = blocks + 1
            end
            assert.equal(#r.out + 1, pos)
            assert.equal(1 + 1 + 3, blocks) -- SHB, one IDB (lo), three packets
            assert.matches('{"type":"map","name":"@count","keys":%["dev"%],"data":%[{"key":%["lo"%],'
                .. '"value":3}%]}\n', r.err)
            assert.matches('{"type":"summary",', r.err)
        end)
    end)

    describe("pcap expressions", function()
        local PORT = 47140
        it("match with -q and a small -s (the whole header bytes are matched, -s is kept)", function()
            netns.require_root()
            local r = traced({ "-q", "-s", 10, "--count", "dev", "-d", 2,
                "udp", "dst", "port", PORT, "and", "ether", "dst", "00:00:00:00:00:00" },
                function() send_udp(PORT, "5", 4) end)
            assert.equal(0, r.code, r.err)
            assert.equal("@count[lo]: 4\n", r.out)
        end)
    end)

    describe("filters at the edge", function()
        it("runs a filter of 5,000 or-ed comparisons", function()
            local parts = {}
            for i = 1, 5000 do parts[i] = "len == " .. i end
            local filter = require("netdevq.filter")
            local tree = assert(filter.parse(table.concat(parts, " or ")))
            local match = filter.compile(tree, require("support.decoded").getters)
            assert.is_true(match({ len = 4999 }))
            assert.is_false(match({ len = 5001 }))
        end)

        it("refuses an integer too wide for any field with the column", function()
            local r = clirun.cli({ "-f", "len == " .. ("9"):rep(400) })
            assert.equal(2, r.code)
            assert.matches("^netdevq: filter: syntax error at column 8: integer '9+' is too large "
                .. "%(the widest field is 64 bits%)\n", r.err)
        end)
    end)
end)
