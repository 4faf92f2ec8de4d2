-- bench/textrate.lua [SECONDS] [ROUNDS]
--
-- The CLI's text output next to tcpdump on the same loopback flood (issue 12): how much of the
-- flood's untraced rate each keeps while it runs, and what it costs in CPU per event.
--   netdevq:  luajit scripts/netdevq.lua >/dev/null    (the default text line for every event)
--   tcpdump:  tcpdump -i lo -w /dev/null
-- Workload: build/ndq_send flood 127.0.0.1 PORT SECONDS 64 (PORT: a UDP port nobody listens
-- on; every datagram is answered by an ICMP port unreachable: two packets, two events).
-- Each round runs tcpdump, then netdevq; each run: start, wait for its ready line, two floods,
-- stop (SIGINT), then an untraced flood. kept = the better traced flood / the better of the
-- untraced floods just before and after (interference from other work only lowers a rate). The
-- best round of each tool counts. cpu_us: the tracer's user + system CPU time over the two
-- floods, per event it handled (netdevq: matched; tcpdump: packets captured).
--
-- Needs root. Starts nothing it does not stop (by pid), leaves nothing behind. stdout:
--   textrate TOOL round=N kept=F pps=N base_pps=N events=N lost=N cpu_us=F
--   target PASS|FAIL TEXT
local here = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."
local SECONDS = tonumber(arg[1] or "") or 3
local ROUNDS = tonumber(arg[2] or "") or 2
local SIZE = 64

local format = string.format

-- raises: the run below stops every process it started, then exits 1
local function die(msg)
    error(msg, 0)
end

local function say(msg)
    io.stderr:write("textrate: ", msg, "\n")
end

local function read_file(path)
    local f = io.open(path, "rb")
    if not f then
        return nil
    end
    local s = f:read("*a")
    f:close()
    return s
end

local function sh_quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function sleep(s)
    os.execute("sleep " .. s)
end

local tmp = io.popen("mktemp -d /tmp/netdevq-textrate.XXXXXX"):read("*l")
local started = {} -- pid -> true while running

local function cleanup()
    for pid in pairs(started) do
        os.execute("kill -KILL " .. pid .. " 2>/dev/null")
    end
    if tmp and tmp:match("^/tmp/netdevq%-textrate%.") then
        os.execute("rm -rf " .. sh_quote(tmp))
    end
end

-- a UDP port nobody listens on (/proc/net/udp lists local ports in hex)
local function free_port()
    local tables = (read_file("/proc/net/udp") or "") .. (read_file("/proc/net/udp6") or "")
    for _, p in ipairs({ 9, 7, 19, 4, 6, 8 }) do
        if not tables:find(format(":%04X ", p), 1, true) then
            return p
        end
    end
    die("no free UDP port among 9 7 19 4 6 8")
end

-- Starts cmd (a shell command line, ours) in the background with SIGINT at its default,
-- stdout to out, stderr to err; returns its pid.
local function spawn(cmd, out, err)
    local pidfile = tmp .. "/pid"
    os.execute(format("env --default-signal=INT %s >%s 2>%s </dev/null & echo $! >%s", cmd,
                      sh_quote(out), sh_quote(err), sh_quote(pidfile)))
    local pid = tonumber(read_file(pidfile) or "")
    if not pid then
        die("could not start: " .. cmd)
    end
    started[pid] = true
    return pid
end

local function alive(pid)
    local stat = read_file("/proc/" .. pid .. "/stat")
    return stat ~= nil and not stat:match("^%d+ %b() Z")
end

-- SIGINT, then up to 10 s for it to end (SIGKILL after that); reaps nothing (not our child)
local function stop(pid)
    os.execute("kill -INT " .. pid .. " 2>/dev/null")
    for _ = 1, 200 do
        if not alive(pid) then
            break
        end
        sleep(0.05)
    end
    os.execute("kill -KILL " .. pid .. " 2>/dev/null")
    started[pid] = nil
end

-- user + system CPU seconds of pid so far
local function cpu_seconds(pid)
    local stat = read_file("/proc/" .. pid .. "/stat") or ""
    local after = stat:match("^%d+ %b() (.*)$")
    if not after then
        return nil
    end
    local f = {}
    for w in after:gmatch("%S+") do
        f[#f + 1] = w
    end
    -- after "pid (comm)": state is field 3, utime 14, stime 15 (man 5 proc)
    return (tonumber(f[12]) + tonumber(f[13])) / 100
end

local function wait_for(path, pattern, pid, seconds)
    for _ = 1, seconds * 20 do
        if (read_file(path) or ""):find(pattern) then
            return true
        end
        if not alive(pid) then
            return false
        end
        sleep(0.05)
    end
    return false
end

local PORT
local function flood()
    local p = io.popen(format("%s flood 127.0.0.1 %d %s %d 2>&1",
                              sh_quote(here .. "/build/ndq_send"), PORT, SECONDS, SIZE))
    local out = p:read("*a")
    p:close()
    local pps = tonumber(out:match("\npps (%d+)") or out:match("^pps (%d+)"))
    if not pps then
        die("ndq_send flood failed: " .. out)
    end
    return pps
end

local TOOLS = {
    tcpdump = {
        cmd = "tcpdump -i lo -w /dev/null",
        ready = "listening on lo",
        events = function(err)
            return tonumber(err:match("(%d+) packets? captured")),
                tonumber(err:match("(%d+) packets? dropped by kernel"))
        end,
    },
    netdevq = {
        cmd = "luajit " .. sh_quote(here .. "/scripts/netdevq.lua") .. " -d 600",
        ready = "netdevq: tracing net_dev_queue",
        events = function(err)
            local m, l = err:match("netdevq: %d+ events, (%d+) matched, (%d+) lost")
            return tonumber(m), tonumber(l)
        end,
    },
}

local base_pps -- the untraced flood that ended the previous run
local function run(name, round)
    local tool = TOOLS[name]
    if not base_pps then
        base_pps = flood()
    end
    local out, err = tmp .. "/" .. name .. ".out", tmp .. "/" .. name .. ".err"
    local pid = spawn(tool.cmd, "/dev/null", err)
    if not wait_for(err, tool.ready, pid, 30) then
        stop(pid)
        die(name .. ": no ready line: " .. (read_file(err) or ""))
    end
    sleep(0.5)
    local c0 = cpu_seconds(pid)
    local pps = math.max(flood(), flood())
    local c1 = cpu_seconds(pid)
    stop(pid)
    local events, lost = tool.events(read_file(err) or "")
    if not events then
        die(name .. ": no summary: " .. (read_file(err) or ""))
    end
    local after = flood()
    local base = math.max(base_pps, after)
    base_pps = after
    local r = { kept = pps / base, pps = pps, base = base, events = events, lost = lost or 0,
                cpu_us = events > 0 and (c1 - c0) * 1e6 / events or 0 / 0 }
    io.stdout:write(format("textrate %s round=%d kept=%.3f pps=%d base_pps=%d events=%d lost=%d "
                           .. "cpu_us=%.2f\n", name, round, r.kept, pps, base, events, r.lost,
                           r.cpu_us))
    io.stdout:flush()
    os.remove(out)
    return r
end

local ok, err = pcall(function()
    if io.popen("id -u"):read("*l") ~= "0" then
        die("needs root (loads BPF programs, captures on lo): sudo luajit bench/textrate.lua")
    end
    if not io.open(here .. "/build/ndq_send") then
        die("build/ndq_send is missing (run ./scripts/setup)")
    end
    if os.execute("command -v tcpdump >/dev/null 2>&1") ~= 0 then
        die("tcpdump is missing (package tcpdump)")
    end
    PORT = free_port()
    say(format("flood: ndq_send flood 127.0.0.1:%d %ss, %d-byte UDP payloads, %d rounds", PORT,
               SECONDS, SIZE, ROUNDS))
    local best = {}
    for round = 1, ROUNDS do
        for _, name in ipairs({ "tcpdump", "netdevq" }) do
            say(format("round %d: %s", round, name))
            local r = run(name, round)
            if not best[name] or r.kept > best[name].kept then
                best[name] = r
            end
        end
    end
    local n, t = best.netdevq, best.tcpdump
    io.stdout:write(format("target %s CLI text to /dev/null keeps %.0f%% of the flood (%.2f us "
                           .. "CPU/event, %d lost); tcpdump -i lo -w /dev/null keeps %.0f%% "
                           .. "(%.2f us CPU/packet) (at least tcpdump's)\n",
                           n.kept >= t.kept and "PASS" or "FAIL", 100 * n.kept, n.cpu_us, n.lost,
                           100 * t.kept, t.cpu_us))
end)
cleanup()
if not ok then
    io.stderr:write("textrate: ", tostring(err), "\n")
    os.exit(1)
end
