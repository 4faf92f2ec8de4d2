-- The CLI buffers its event lines (one write per poll batch, lua/netdevq/output.lua): that must
-- never lose, duplicate or reorder a line, and a stop must still write every matched event
-- before the summary. Real packets in a namespace pair, CLI output on a pipe (a FIFO a reader
-- copies to a file), every line checked against the packet that made it.
local cjson = require("cjson")
local clirun = require("support.clirun")
local live = require("support.live")
local netns = require("support.netns")

local PORT = "7300"
local SIZES = {} -- UDP payload sizes 1..50: each datagram of a sender run has its own len
for i = 1, 50 do
    SIZES[i] = tostring(i)
end
local SIZE_LIST = table.concat(SIZES, ",")

-- a and b hold the same values (arrays of numbers and strings)
local function same_values(a, b)
    for i = 1, #b do
        if a[i] ~= b[i] then
            return false
        end
    end
    return #a == #b
end

-- "netdevq: N events, M matched, L lost" -> M, L
local function summary(err_text)
    local matched, lost = err_text:match("netdevq: %d+ events, (%d+) matched, (%d+) lost")
    return tonumber(matched), tonumber(lost)
end

-- The text lines, the time column made "TIME" (its digits are checked here).
local function event_lines(text)
    local lines = {}
    for line in text:gmatch("[^\n]+") do
        local rest = line:match("^%d%d:%d%d:%d%d%.%d%d%d%d%d%d (.*)$")
        assert(rest, "not an event line: " .. line)
        lines[#lines + 1] = rest
    end
    return lines
end

describe("buffered CLI output on a pipe #root", function()
    local pair, dir
    local the_pair = live.pair_once{ name = "ndqbo" }
    before_each(function()
        if netns.is_root() then pair = the_pair() end
    end)
    live.tmpdir_each_test(function(d) dir = d end)

    -- The CLI with stdout on a FIFO (named name), and the reader that copies the FIFO to its own
    -- stdout; both are added to procs as they start (the caller's finally ends them).
    local function start(args, name, procs)
        local fifo = dir .. "/" .. name
        assert(os.execute("mkfifo " .. clirun.quote(fifo)) == 0)
        local reader = clirun.spawn({ "sh", "-c", 'exec cat <"$1"', "sh", fifo })
        procs[#procs + 1] = reader
        local argv = { "sh", "-c", 'f=$1; shift; exec "$@" >"$f"', "sh", fifo }
        for _, a in ipairs(clirun.cli_argv(args)) do
            argv[#argv + 1] = a
        end
        local run = clirun.spawn(argv)
        procs[#procs + 1] = run
        assert.is_true(run:wait_err("Ctrl%-C to stop\n", 30), run:err_text())
        return run, reader
    end

    -- The line each datagram of `runs` sender runs makes: sender run k sends from source port
    -- 41000 + k, one datagram of each of SIZES (len = payload + 42: Ethernet, IPv4, UDP).
    local function expected_line(k, pid, size)
        return string.format("ndq_send %d %s %d udp 198.18.0.1:%d > 198.18.0.2:%s", pid,
                             pair.veth_a, size + 42, 41000 + k, PORT)
    end

    -- `runs` sender runs in namespace a, one after another (one shell); their pids in order.
    local function sender_script(runs)
        return string.format('i=0; while [ $i -lt %d ]; do "$0" udp4 %s %s %s $((41000 + i)) %s'
                             .. ' || exit 1; i=$((i + 1)); done', runs, pair.ip4_a, pair.ip4_b,
                             PORT, SIZE_LIST)
    end

    local function pids_of(output)
        local pids = {}
        for pid in output:gmatch("pid (%d+)") do
            pids[#pids + 1] = tonumber(pid)
        end
        return pids
    end

    it("writes 5,000 events as 5,000 lines, in order, each with its packet's values (text and "
       .. "JSON lines)", function()
        netns.require_root()
        local filter = ("netns == %d and dport == %s"):format(pair.netns_a, PORT)
        local procs = {}
        finally(function()
            for _, p in ipairs(procs) do
                p:kill("KILL")
                p:wait(5)
            end
        end)
        local run, reader = start({ "-f", filter }, "text", procs)
        local jrun, jreader = start({ "-f", filter, "-F", "json" }, "json", procs)
        local ok, out = pair:exec("a", { "sh", "-c", sender_script(100), netns.ndq_send() })
        assert.is_true(ok, out)
        local pids = pids_of(out)
        assert.are.equal(100, #pids)
        clirun.sleep(0.5) -- the last batch is taken at the next poll (100 ms)
        run:kill("INT")
        jrun:kill("INT")
        local r, jr = run:wait(30), jrun:wait(30)
        assert.are.equal(0, r.code, r.err)
        assert.are.equal(0, jr.code, jr.err)

        local objs = {}
        for line in jreader:wait(10).out:gmatch("[^\n]+") do
            objs[#objs + 1] = cjson.decode(line)
        end
        assert.are.equal(5001, #objs)
        local n = 0
        for k = 0, 99 do
            for _, size in ipairs(SIZES) do
                n = n + 1
                local o = objs[n]
                local got = { o.type, o.comm, o.pid, o.dev, o.len, o.saddr, o.sport, o.daddr,
                              o.dport }
                local want = { "event", "ndq_send", pids[k + 1], pair.veth_a, tonumber(size) + 42,
                               pair.ip4_a, 41000 + k, pair.ip4_b, tonumber(PORT) }
                if not same_values(got, want) then
                    assert.are.same(want, got, "JSON line " .. n)
                end
            end
        end
        assert.are.same({ "summary", 5000, 0 }, { objs[5001].type, objs[5001].matched,
                                                  objs[5001].lost })

        local lines = event_lines(reader:wait(10).out)
        assert.are.equal(5000, #lines)
        n = 0
        for k = 0, 99 do
            for _, size in ipairs(SIZES) do
                n = n + 1
                if lines[n] ~= expected_line(k, pids[k + 1], tonumber(size)) then
                    assert.are.equal(expected_line(k, pids[k + 1], tonumber(size)), lines[n],
                                     "line " .. n)
                end
            end
        end
        assert.are.same({ 5000, 0 }, { summary(r.err) })
    end)

    it("stopped by SIGINT while events flow, writes every matched event before the summary",
       function()
        netns.require_root()
        local procs, sender = {}, nil
        finally(function()
            if sender then
                sender:kill("KILL")
                sender:wait()
            end
            for _, p in ipairs(procs) do
                p:kill("KILL")
                p:wait(5)
            end
        end)
        local run, reader = start({ "-f", ("netns == %d and dport == %s"):format(pair.netns_a,
                                                                                  PORT) },
                                  "text", procs)
        -- a sender that goes on for longer than the test waits: 2,000 runs, 100,000 datagrams
        sender = pair:spawn("a", { "sh", "-c", sender_script(2000), netns.ndq_send() })
        -- the pids of the sender runs, in order, as they start; stop the tracer once a few
        -- thousand lines went through the pipe (several poll batches), with events still flowing
        local pids = {}
        local seen = 0
        for _ = 1, 600 do
            local l = sender:line()
            assert(l, "the sender ended early")
            local pid = l:match("^pid (%d+)")
            if pid then
                pids[#pids + 1] = tonumber(pid)
            end
            if #pids % 10 == 0 then
                local _, count = reader:out_text():gsub("\n", "")
                seen = count
                if seen >= 3000 then
                    break
                end
            end
        end
        assert.is_true(seen >= 3000, "only " .. seen .. " lines came through")
        run:kill("INT")
        local r = run:wait(30)
        assert.are.equal(0, r.code, r.err)
        sender:kill("KILL")
        -- every sender run whose datagrams the tracer may have seen printed its pid by now
        for l in (function() return sender:line() end) do
            local pid = l:match("^pid (%d+)")
            if pid then
                pids[#pids + 1] = tonumber(pid)
            end
        end
        local lines = event_lines(reader:wait(10).out)
        local matched, lost = summary(r.err)
        assert.are.equal(0, lost)
        assert.are.equal(matched, #lines)
        assert.is_true(#lines >= seen)
        -- the lines are the datagrams from the first on, none missing, none twice, in order
        for n, line in ipairs(lines) do
            local k, i = math.floor((n - 1) / 50), (n - 1) % 50 + 1
            local want = expected_line(k, pids[k + 1] or -1, i)
            if line ~= want then
                assert.are.equal(want, line, "line " .. n)
            end
        end
    end)
end)
