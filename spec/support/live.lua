--- spec/support/live.lua: what the specs that trace real traffic share: a namespace pair per test
-- (or one per describe block) with a check that the spec file leaves nothing behind, the CLI as
-- a tracer (start, ready line), and traffic helpers.
--
--     local live = require("support.live")
--     describe("... #root", function()
--       local pair, dir
--       live.pair_each_test({ name = "ndqc", tmpdir = true }, function(p, d) pair, dir = p, d end)
--       it("...", function()
--         local proc = live.spawn_cli({ "-I", pair.veth_a, "-f", "netns == " .. pair.netns_a })
--         finally(function() proc:kill("INT") end)
--         live.wait_ready(proc)
--         local rx = live.receiver(pair, "b", pair.ip4_b, 9000, 2)
--         live.send(pair, "a", { "udp4", pair.ip4_a, pair.ip4_b, "9000", "40000", "1,100" })
--         local lines = live.received(rx)
--       end)
--     end)
--
-- pair_each_test and pair_once register their hooks in the describe block that calls them, and
-- with them a teardown that fails when a namespace or process made through support.netns or
-- support.clirun in this spec file is still there (and then removes it, so that a failing run
-- still leaves the machine clean). Specs that make pairs themselves call live.no_leftovers().

local luassert = require("luassert")
local netns = require("support.netns")
local clirun = require("support.clirun")
local fdlist = require("support.fdlist")

local _M = {}

--- The CLI's ready line on stderr in mode ("raw", the default, or "btf"), and the raw one.
function _M.ready_line(mode)
    return "netdevq: tracing net_dev_queue (" .. (mode or "raw") .. ") ... Ctrl-C to stop"
end
_M.READY = _M.ready_line("raw")

-- The busted environment of the describe block that called the public function (level 3: the
-- block, above that function and this one), where its before_each, teardown, ... are.
local function block_env()
    local env = getfenv(3) -- not a tail call: that would drop this function's level
    return env
end

local function check_clean()
    local left = netns.leftovers()
    left.background = clirun.leftovers()
    netns.clean_up()
    clirun.clean_up()
    luassert.same({ namespaces = {}, processes = {}, background = {} }, left,
        "the spec file left namespaces or processes behind")
end

local function register_check(env)
    env.teardown(check_clean)
end

--- Registers, in the calling describe block, the teardown check that nothing this file made
-- through support.netns / support.clirun is left (namespaces, spawned processes, background runs).
function _M.no_leftovers()
    register_check(block_env())
end

-- Makes a pair as opts says; hands it and the temporary directory to keep(pair, dir) as soon as
-- each exists, so that the caller can remove them even when a later step fails.
local function make(opts, keep)
    local pair = assert(netns.pair{ name = opts.name, static_neigh = opts.static_neigh })
    keep(pair, nil)
    local dir = opts.tmpdir and clirun.tmpdir() or nil
    keep(pair, dir)
    if opts.icmp_unlimited then
        -- ICMP errors every time, not at the rate limit's whim
        for _, ns in ipairs({ "a", "b" }) do
            assert(pair:exec(ns, { "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0" }))
        end
    end
    if opts.setup then opts.setup(pair, dir) end
    return pair, dir
end

local function unmake(pair, dir)
    local ok, err = true, nil
    if pair then ok, err = pair:destroy() end
    if dir then clirun.rmtree(dir) end
    assert(ok, err)
end

--- A fresh pair for every test of the calling describe block: before_each makes it as root
-- (each test starts with netns.require_root(): pending outside root, a failure in CI),
-- after_each removes it; set(pair, dir) receives it, set(nil, nil) after. opts: name
-- (netns.pair's), static_neigh, icmp_unlimited (no ICMP rate limit in either namespace), tmpdir
-- (a clirun.tmpdir() as dir, removed after), setup(pair, dir) (more set-up; what it makes inside
-- the namespaces goes with them).
function _M.pair_each_test(opts, set)
    local env = block_env()
    local cur_pair, cur_dir
    local function keep(p, d) cur_pair, cur_dir = p, d end
    env.before_each(function()
        -- busted has pending() only inside `it`: outside root the tests' own require_root() makes
        -- them pending (in CI it raises here already)
        if os.getenv("CI") == "true" then netns.require_root() end
        if netns.is_root() then set(make(opts, keep)) end
    end)
    env.after_each(function()
        local p, d = cur_pair, cur_dir
        cur_pair, cur_dir = nil, nil
        set(nil, nil)
        unmake(p, d)
    end)
    register_check(env)
end

--- A fresh clirun.tmpdir(mode) for every test of the calling describe block, handed to set(dir)
-- (set(nil) after the test, when it is removed).
function _M.tmpdir_each_test(set, mode)
    local env = block_env()
    local dir
    env.before_each(function()
        dir = clirun.tmpdir(mode)
        set(dir)
    end)
    env.after_each(function()
        local d = dir
        dir = nil
        set(nil)
        if d then clirun.rmtree(d) end
    end)
end

--- One pair for the calling describe block, made by the first test that calls the returned
-- function (which returns it; pending outside root), removed at the block's teardown. opts as
-- for pair_each_test.
function _M.pair_once(opts)
    local env = block_env()
    local cur_pair, cur_dir
    local function keep(p, d) cur_pair, cur_dir = p, d end
    env.teardown(function() unmake(cur_pair, cur_dir) end)
    register_check(env)
    return function()
        netns.require_root()
        if not cur_pair then make(opts, keep) end
        return cur_pair, cur_dir
    end
end

-- The tracer -----------------------------------------------------------------------------------

--- Starts the CLI (this tree's scripts/netdevq.lua) with args as a netns.spawn process (stdout
-- and stderr merged, read with :line()).
function _M.spawn_cli(args)
    return netns.spawn(clirun.cli_argv(args))
end

--- Reads the lines of a netns.spawn process up to the CLI's ready line (mode as for
-- ready_line); returns the lines before it. Raises when the process ends first.
function _M.wait_ready(proc, mode)
    local ready, before = _M.ready_line(mode), {}
    while true do
        local l = proc:line()
        assert(l, "the CLI ended before its ready line:\n" .. table.concat(before, "\n"))
        if l == ready then return before end
        before[#before + 1] = l
    end
end

--- Starts the CLI in the background (clirun.spawn_cli) and waits for its ready line on stderr.
function _M.start_cli(args, opts)
    local bg = clirun.spawn_cli(args, opts)
    assert(bg:wait_err("netdevq: tracing net_dev_queue", 30), "netdevq did not start: " .. bg:err_text())
    return bg
end

--- Ctrl-C to a start_cli run once its events are surely in (the tracer drains on its poll
-- timeout); asserts exit 0 and returns { code, out, err }.
function _M.stop_cli(bg)
    clirun.sleep(0.3)
    bg:kill("INT")
    local r = bg:wait(20)
    luassert.are.equal(0, r.code, r.err)
    return r
end

--- Ctrl-C to a spawn_cli/netns.spawn run once the traffic is sent and its events are surely in;
-- returns what proc:wait() returns. Live specs end their tracers this way, not by --duration:
-- a duration counts from the start, and a loaded machine can spend it before the traffic ends.
function _M.stop_spawned(proc)
    clirun.sleep(0.3)
    proc:kill("INT")
    return proc:wait()
end

--- CLI runs a spec stops itself, and stops in after_each when a failed assertion left them
-- running: local clis = live.tracked_clis(); clis.start(args), clis.stop(bg), clis.stop_all().
function _M.tracked_clis()
    local running = {}
    local t = {}
    function t.start(args, opts)
        local bg = _M.start_cli(args, opts)
        running[bg] = true
        return bg
    end
    function t.stop(bg)
        running[bg] = nil
        return _M.stop_cli(bg)
    end
    function t.stop_all()
        for bg in pairs(running) do
            bg:kill("INT")
            bg:wait(20)
            running[bg] = nil
        end
    end
    return t
end

--- JSON lines (other lines skipped) -> the events in order, and the other objects by type.
function _M.json_objects(out)
    local cjson = require("cjson")
    local events, others = {}, {}
    for l in out:gmatch("[^\n]+") do
        if l:sub(1, 1) == "{" then
            local obj = cjson.decode(l)
            if obj.type == "event" then
                events[#events + 1] = obj
            else
                others[obj.type] = others[obj.type] or {}
                table.insert(others[obj.type], obj)
            end
        end
    end
    return events, others
end

--- The first cgroup v2 mount point, or nil.
function _M.cgroup2_root()
    for l in io.lines("/proc/mounts") do
        local dir, fstype = l:match("^%S+ (%S+) (%S+)")
        if fstype == "cgroup2" then
            return dir
        end
    end
end

--- Runs argv through sh, in cgroup directory cg first when given (nil: where it is); asserts
-- success and returns its output.
function _M.run_in_cgroup(argv, cg)
    local words = {}
    for i, a in ipairs(argv) do
        words[i] = clirun.quote(a)
    end
    local script = (cg and ("echo $$ > " .. clirun.quote(cg .. "/cgroup.procs") .. " && ") or "")
        .. "exec " .. table.concat(words, " ")
    local ok, out = netns.run({ "sh", "-c", script })
    assert(ok, out)
    return out
end

--- The inode number of path (a cgroup's is its id).
-- bpftrace's tracepoint probes (tracepoint:net:...) need tracefs, which a machine without
-- systemd may not have mounted: mounts it when it is not there. Returns the undo (a no-op when
-- it was mounted already), for the test's finally.
function _M.tracefs()
    local f = io.open("/sys/kernel/tracing/events/net/net_dev_queue/format")
    if f then
        f:close()
        return function() end
    end
    assert(netns.run({ "mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing" }),
        "cannot mount tracefs on /sys/kernel/tracing")
    return function() netns.run({ "umount", "/sys/kernel/tracing" }) end
end

-- bpftrace prints "Attaching N probes..." before it attaches them; its BEGIN probe fires once all
-- are attached. attached(program): the program, printing READY from BEGIN first; wait for
-- READY_PATTERN, not for "Attaching" (an early packet would be missed under load).
_M.BPFTRACE_READY_PATTERN = "^bpftrace%-attached"
function _M.bpftrace_attached(program)
    return 'BEGIN { printf("bpftrace-attached\\n"); }\n' .. program
end

--- Starts bpftrace (the oracle) with args, its program made with bpftrace_attached(), and waits
-- for its BEGIN line; returns the netns.spawn process. It runs under `timeout`: a Ctrl-C
-- (proc:kill("INT")) reaches bpftrace through it, and a bpftrace still there 10 s later is killed
-- (v0.17 once stayed in its poll loop for minutes after the signal, its output all printed,
-- and the spec waited for it until ctest's timeout); 300 s at most in all.
function _M.spawn_bpftrace(args)
    local argv = { "timeout", "-k", "10", "-s", "INT", "300", "bpftrace" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local bt = netns.spawn(argv)
    if not _M.wait_line(bt, _M.BPFTRACE_READY_PATTERN) then
        local _, code, lines = bt:wait()
        error("bpftrace did not attach (exit " .. tostring(code) .. "): " .. table.concat(lines, " | "), 2)
    end
    return bt
end

function _M.inode(path)
    local ok, out = netns.run({ "stat", "-c", "%i", path })
    assert(ok, out)
    return tonumber(out:match("%d+"))
end

-- Traffic --------------------------------------------------------------------------------------

--- Reads a process's lines until one matches pattern (or the output ends); returns that line or
-- nil.
function _M.wait_line(proc, pattern)
    local l
    repeat
        l = proc:line()
    until l == nil or l:match(pattern)
    return l
end

--- ndq_send with argv in namespace ns of pair; raises with its output when it fails. Returns the
-- sender's pid (from its "pid N" line) and the output.
function _M.send(pair, ns, argv)
    local full = { netns.ndq_send() }
    for _, a in ipairs(argv) do full[#full + 1] = a end
    local ok, out = pair:exec(ns, full)
    assert(ok, table.concat(full, " ") .. ": " .. out)
    return tonumber(out:match("pid (%d+)")), out
end

--- Runs ndq_send steps in order, each { ns, arg... } (ns "a" or "b"); raises at the first that
-- fails.
function _M.send_steps(pair, steps)
    for _, s in ipairs(steps) do
        _M.send(pair, s[1], { unpack(s, 2) })
    end
end

--- Waits for spawned ndq_send processes (listeners, receivers); raises unless each exited 0.
function _M.wait_all(procs, what)
    for _, p in ipairs(procs) do
        local ok, code, lines = p:wait()
        assert(ok, what .. ": exit " .. tostring(code) .. " " .. table.concat(lines, " | "))
    end
end

--- An ndq_send udprecv in namespace ns for count datagrams (5 s at most), once it is ready.
function _M.receiver(pair, ns, addr, port, count)
    local rx = pair:spawn(ns, { netns.ndq_send(), "udprecv", addr, tostring(port), tostring(count), "5000" })
    _M.wait_line(rx, "^ready$")
    return rx
end

--- Waits for a receiver's datagrams; returns its "recv SIZE SRC SPORT" lines.
function _M.received(rx)
    local ok, code, lines = rx:wait()
    assert(ok, "udprecv: exit " .. tostring(code) .. ": " .. table.concat(lines, " | "))
    local got = {}
    for _, l in ipairs(lines) do
        if l:match("^recv ") then got[#got + 1] = l end
    end
    return got
end

--- An ndq_send tcplisten in namespace ns on addr:port (3 s at most), once it listens.
function _M.listener(pair, ns, addr, port)
    local srv = pair:spawn(ns, { netns.ndq_send(), "tcplisten", addr, tostring(port), "3000" })
    _M.wait_line(srv, "^listening$")
    return srv
end

--- The monotonic clock in milliseconds (netdevq.core's).
function _M.monotonic_ms()
    return require("netdevq.core").monotonic_ns() / 1e6
end

--- Polls every tracer of the table (10 ms each round) for ms milliseconds: what is under way
-- arrives; raises when a poll fails.
function _M.poll_all(tracers, ms)
    local deadline = _M.monotonic_ms() + ms
    while _M.monotonic_ms() < deadline do
        for _, t in pairs(tracers) do
            assert(t:poll(10))
        end
    end
end

--- Multiset difference of two lists: the elements of a (as key(e) text, indented for a
-- message) that b does not hold as often; key defaults to tostring.
function _M.missing(a, b, key)
    local out = fdlist.minus(a, b, key)
    for i, k in ipairs(out) do
        out[i] = "    " .. k
    end
    return out
end

return _M
