-- Stopping, adversarially: SIGINT and SIGTERM must end a run whatever it is blocked on.
--   * standard output is a FIFO whose reader never reads (text, JSON lines, pcapng with -w -,
--     -w /dev/stdout): the run stops, says on stderr what it could not write, exits 0;
--   * -c CMD: the run ends at -d or at a signal even when CMD would run on; CMD is sent SIGTERM
--     (SIGKILL after a grace period when it ignores that) and reaped, never left running, not
--     even when the tracer is killed; a run that fails to start never runs CMD;
--   * libpcap compiling a huge expression: a signal ends it at once, and a compile budget ends
--     it with one clear line when nobody signals.
-- Each run is bounded: a run that does not end by itself is killed, and the spec fails on its
-- exit status (137).
local bpfobjs = require("support.bpfobjs")
local clirun = require("support.clirun")
local live = require("support.live")
local netns = require("support.netns")

local SIGINT, SIGTERM = 2, 15
local read_file = bpfobjs.read_file

local function alive(pid)
    local stat = read_file("/proc/" .. pid .. "/stat")
    -- a zombie is not running but not reaped either: count it as alive (left behind)
    return stat ~= nil
end

-- Waits until pid sleeps in a pipe write (its output is full); true, or false after 20 s.
local function blocked_on_pipe(pid)
    for _ = 1, 400 do
        local wchan = read_file("/proc/" .. pid .. "/wchan") or ""
        if wchan:match("pipe_write") then
            return true
        end
        clirun.sleep(0.05)
    end
    return false
end

describe("stopping a run #root", function()
    local pair, dir
    local the_pair = live.pair_once{ name = "ndqus" }
    before_each(function()
        if netns.is_root() then pair = the_pair() end
    end)
    live.tmpdir_each_test(function(d) dir = d end)

    -- The CLI with stdout on a FIFO that a process holds open and never reads.
    local function run_blocked(args)
        local fifo = dir .. "/out"
        assert(os.execute("mkfifo " .. clirun.quote(fifo)) == 0)
        local reader = clirun.spawn({ "sh", "-c", 'exec sleep 120 <"$1"', "sh", fifo })
        local argv = { "sh", "-c", 'f=$1; shift; exec "$@" >"$f"', "sh", fifo }
        for _, a in ipairs(clirun.cli_argv(args)) do
            argv[#argv + 1] = a
        end
        return clirun.spawn(argv), reader
    end

    local CASES = {
        { name = "text", args = {} },
        { name = "JSON lines", args = { "-F", "json" } },
        { name = "pcapng on -w -", args = { "-w", "-" } },
        { name = "pcapng on -w /dev/stdout", args = { "-w", "/dev/stdout" } },
    }
    for _, case in ipairs(CASES) do
        for _, sig in ipairs({ { "INT", SIGINT }, { "TERM", SIGTERM } }) do
            it(("SIG%s ends a run whose %s output nobody reads"):format(sig[1], case.name), function()
                netns.require_root()
                local args = { "-f", ("netns == %d and dport == 7200"):format(pair.netns_a) }
                for _, a in ipairs(case.args) do
                    args[#args + 1] = a
                end
                local run, reader = run_blocked(args)
                finally(function()
                    run:wait(1)
                    reader:kill("KILL")
                    reader:wait(5)
                end)
                assert.is_true(run:wait_err("Ctrl%-C to stop\n", 30), run:err_text())
                assert(pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, "7200",
                                        "41000", "200,300,400", "1000" }))
                assert.is_true(blocked_on_pipe(run.pid), "the run never blocked on its output")
                assert.is_true(run:kill(sig[1]))
                local r = run:wait(20) -- killed (137) when it ignores the signal
                assert.equal(0, r.code, r.err)
                local lines = clirun.lines(r.err)
                assert.equal(3, #lines, r.err)
                assert.matches(("^netdevq: output blocked %%(the reader does not read%%), "
                    .. "stopped by signal %d: up to %%d+ events not written %%(.*[Ii]nterrupted.*%%)$")
                    :format(sig[2]), lines[2])
                local not_written = tonumber(lines[2]:match("up to (%d+) events"))
                assert.is_true(not_written > 0 and not_written <= 3000, lines[2])
                -- every packet was taken from the kernel and counted, none lost
                assert.matches("^netdevq: %d+ events, 3000 matched, 0 lost$", lines[3])
            end)
        end
    end

    -- -c: a command that writes its pid and then runs for minutes
    local function long_command(extra)
        local pidfile = dir .. "/pid"
        return ('sh -c "%secho \\$\\$ >%s; exec sleep 300"'):format(extra or "", pidfile), pidfile
    end

    -- The command's pid, once it wrote it; the spec ends the command should the tracer not
    -- (only while that pid still runs our `sleep 300`).
    local function child_pid(pidfile)
        for _ = 1, 200 do
            local s = read_file(pidfile)
            if s and s:match("^%d+\n$") then
                local pid = tonumber(s)
                finally(function()
                    if read_file("/proc/" .. pid .. "/cmdline") == "sleep\0300\0" then
                        os.execute("kill -KILL " .. pid)
                    end
                end)
                return pid
            end
            clirun.sleep(0.05)
        end
        error("the command never wrote its pid")
    end

    it("-c CMD -d 1 ends after 1 s although CMD runs on; CMD is ended and reaped", function()
        netns.require_root()
        local cmd, pidfile = long_command()
        local run = clirun.spawn_cli({ "-q", "-c", cmd, "-d", "1" })
        local pid = child_pid(pidfile)
        local r = run:wait(20)
        assert.equal(0, r.code, r.err)
        assert.is_false(alive(pid))
        assert.matches("netdevq: %d+ events, 0 matched, 0 lost\n$", r.err)
    end)

    for _, sig in ipairs({ "INT", "TERM" }) do
        it("-c CMD ends at SIG" .. sig .. "; CMD is ended and reaped", function()
            netns.require_root()
            local cmd, pidfile = long_command()
            local run = clirun.spawn_cli({ "-q", "-c", cmd })
            local pid = child_pid(pidfile)
            assert.is_true(run:wait_err("Ctrl%-C to stop\n", 30), run:err_text())
            assert.is_true(run:kill(sig))
            local r = run:wait(20)
            assert.equal(0, r.code, r.err)
            assert.is_false(alive(pid))
        end)
    end

    it("-c CMD that ignores SIGTERM gets SIGKILL after the grace period", function()
        netns.require_root()
        local cmd, pidfile = long_command("trap '' TERM; ")
        local run = clirun.spawn_cli({ "-q", "-c", cmd, "-d", "1" })
        local pid = child_pid(pidfile)
        local r = run:wait(30)
        assert.equal(0, r.code, r.err)
        assert.is_false(alive(pid))
    end)

    it("-c CMD with a bad filter: a usage error at once, CMD never runs", function()
        netns.require_root()
        local cmd, pidfile = long_command()
        local r = clirun.cli({ "-q", "-c", cmd, "-f", "len >" }, { timeout = 20 })
        assert.equal(2, r.code, r.err)
        assert.matches("^netdevq: filter", r.err)
        clirun.sleep(0.5)
        assert.is_nil(read_file(pidfile))
    end)

    it("-c CMD outlives no SIGKILL of the tracer: CMD gets SIGTERM", function()
        netns.require_root()
        local cmd, pidfile = long_command()
        local run = clirun.spawn_cli({ "-q", "-c", cmd })
        local pid = child_pid(pidfile)
        assert.is_true(run:wait_err("Ctrl%-C to stop\n", 30), run:err_text())
        assert.is_true(run:kill("KILL"))
        assert.equal(137, run:wait(20).code)
        for _ = 1, 100 do
            if not alive(pid) then
                break
            end
            clirun.sleep(0.05)
        end
        assert.is_false(alive(pid))
    end)

    -- 3,000 host terms: libpcap's optimizer needs minutes for them
    local function huge_expression()
        local terms = {}
        for i = 0, 2999 do
            terms[#terms + 1] = ("host 198.18.%d.%d"):format(math.floor(i / 250), i % 250 + 1)
        end
        return terms
    end

    for _, sig in ipairs({ { "INT", SIGINT }, { "TERM", SIGTERM } }) do
        it("SIG" .. sig[1] .. " ends a long pcap compile at once", function()
            netns.require_root()
            local args = { "-q" }
            for w in table.concat(huge_expression(), " or "):gmatch("%S+") do
                args[#args + 1] = w
            end
            local run = clirun.spawn_cli(args)
            clirun.sleep(1.5) -- compiling by now (its budget is 10 s)
            assert.is_true(run:kill(sig[1]))
            local r = run:wait(5)
            assert.equal(0, r.code, r.err)
            assert.equal(("netdevq: compiling the pcap filter was interrupted (signal %d)\n")
                :format(sig[2]), r.err)
        end)
    end

    it("a pcap compile over its budget is one clear usage error", function()
        netns.require_root()
        local args = { "-q" }
        for w in table.concat(huge_expression(), " or "):gmatch("%S+") do
            args[#args + 1] = w
        end
        local r = clirun.cli(args, { timeout = 40 })
        assert.equal(2, r.code, r.err)
        assert.equal("netdevq: pcap filter: libpcap did not finish compiling the expression "
            .. "within 10 s: shorten it (fewer terms), or use a field filter (-f)\n", r.err)
    end)
end)
