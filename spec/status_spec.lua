-- The status line of long runs: on stderr, never in the output. A plain line every 5 s (or every
-- --interval) when stderr is not a terminal; one line rewritten in place when it is; none while
-- events stream to a terminal.
local netns = require("support.netns")
local clirun = require("support.clirun")
local live = require("support.live")

local ETH, IP4, UDP = 14, 20, 8
local STATUS = "^netdevq: %d+ events/s now; (%d+) matched, (%d+) lost in all$"

local read_all = clirun.read_file

local shell_quote = clirun.shell_line

describe("netdevq status line #root", function()
    local pair, dir
    live.pair_each_test({ name = "ndqs", tmpdir = true }, function(p, d) pair, dir = p, d end)

    -- The CLI on veth a, its events (`-o len,dport`) into out_file; extra options after.
    local function cli(out_file, extra)
        local argv = { "luajit", "scripts/netdevq.lua", "-I", pair.veth_a,
            "-f", "netns == " .. pair.netns_a, "-o", "len,dport" }
        for _, a in ipairs(extra) do argv[#argv + 1] = a end
        return shell_quote(argv) .. " >" .. out_file
    end

    local function send(sizes)
        live.send(pair, "a", { "udp4", pair.ip4_a, pair.ip4_b, "9100", "40100", sizes })
    end

    it("prints a plain status line every 5 s on a stderr that is not a terminal, outside the "
        .. "output", function()
        netns.require_root()
        local out_file = dir .. "/events.txt"
        local proc = netns.spawn({ "sh", "-c", cli(out_file, { "-d", "7" }) })
        finally(function() proc:stop() end)
        live.wait_ready(proc)
        send("1,2,3")
        local ok, code, lines = proc:wait()
        assert(ok, "exit " .. tostring(code) .. ":\n" .. table.concat(lines, "\n"))
        -- stderr: one status after 5 s (the events had been sent by then), then the summary
        assert.equal(2, #lines, table.concat(lines, "\n"))
        assert.same({ "3", "0" }, { lines[1]:match(STATUS) })
        assert.matches("^netdevq: %d+ events, 3 matched, 0 lost$", lines[2])
        -- stdout: the events and nothing else
        local l = ETH + IP4 + UDP
        assert.equal(("%d 9100\n%d 9100\n%d 9100\n"):format(l + 1, l + 2, l + 3), read_all(out_file))
    end)

    it("prints a status line every --interval, after the interval's aggregation", function()
        netns.require_root()
        local out_file = dir .. "/counts.txt"
        local proc = netns.spawn({ "sh", "-c", cli(out_file, { "-q", "--count", "dport", "-i", "1",
            "-d", "2.5" }) })
        finally(function() proc:stop() end)
        live.wait_ready(proc)
        send("1")
        local ok, code, lines = proc:wait()
        assert(ok, "exit " .. tostring(code) .. ":\n" .. table.concat(lines, "\n"))
        assert.equal(3, #lines, table.concat(lines, "\n")) -- at 1 s and 2 s, then the summary
        assert.same({ "1", "0" }, { lines[1]:match(STATUS) })
        assert.same({ "1", "0" }, { lines[2]:match(STATUS) })
        assert.matches("^netdevq: %d+ events, 1 matched, 0 lost$", lines[3])
        local out = read_all(out_file)
        assert.is_nil(out:find("netdevq:", 1, true), out)
        assert.matches("@count%[9100%]: 1\n", out)
    end)

    -- Runs the command in a pseudo-terminal (script(1)); returns the raw terminal output.
    local function on_terminal(command)
        local proc = netns.spawn({ "script", "-qec", command, "/dev/null" })
        finally(function() proc:stop() end)
        local text = {}
        while true do
            local l = proc:line()
            if not l then break end
            text[#text + 1] = l
        end
        local ok, code = proc:wait()
        assert(ok, "exit " .. tostring(code) .. ":\n" .. table.concat(text, "\n"))
        return table.concat(text, "\n")
    end

    it("rewrites one line on a terminal stderr and erases it before the summary", function()
        netns.require_root()
        local out_file = dir .. "/events.txt"
        local tty = on_terminal(cli(out_file, { "-d", "2.5" }))
        -- the ready line, the status drawn in place (no newline after it) every second, then
        -- erased, and the summary
        local status = {}
        for s in tty:gmatch("\r\27%[K(netdevq: [^\r\n]-events/s[^\r\n]-)\r") do
            status[#status + 1] = s
        end
        assert.is_true(#status >= 2, ("%q"):format(tty))
        for _, s in ipairs(status) do assert.matches(STATUS, s) end
        assert.matches("\r\27%[Knetdevq: %d+ events, 0 matched, 0 lost\r$", tty)
        assert.is_nil(tty:find("events/s[^\r]*\n"), "a status line ended with a newline")
        assert.equal("", read_all(out_file))
    end)

    it("shows no status while events print on the terminal", function()
        netns.require_root()
        local tty = on_terminal(shell_quote({ "luajit", "scripts/netdevq.lua", "-I", pair.veth_a,
            "-f", "netns == " .. pair.netns_a, "-d", "1.5" }))
        assert.is_nil(tty:find("events/s", 1, true), tty)
        assert.matches("netdevq: %d+ events, 0 matched, 0 lost\r$", tty)
    end)
end)
