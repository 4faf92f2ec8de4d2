-- bench/startup.lua RUNS NAME PATTERNS COMMAND [NAME PATTERNS COMMAND ...]
--
-- Time from starting COMMAND to the first line of its output (stdout and stderr) that matches
-- each Lua pattern of PATTERNS (several separated by "||": e.g. bpftrace's "Attaching" line and a
-- BEGIN printf that runs once every probe is attached), and its peak RSS. RUNS runs per command,
-- interleaved (a, b, a, b, ...) after one unmeasured warm-up run each, so that drift and the page
-- cache hit them alike.
--
-- Peak RSS comes from /usr/bin/time -f %M when it exists (package `time`); without it, from
-- VmHWM in /proc/PID/status, sampled from the last mark until the process exits (a high-water
-- mark: the peak before that is included).
--
-- COMMAND runs under /bin/sh with stderr on the pipe (its own redirections apply after that:
-- `>/dev/null` drops stdout only) and must end by itself shortly after it is ready (bench/run
-- passes a 0.1 s duration to both tracers). The clock starts just before the shell is started:
-- the shell's start (a millisecond or two) is in every figure alike.
--
-- stdout, one line per command and pattern (K = the pattern's position in PATTERNS):
--   startup NAME mark=K runs=N median_ms=X min_ms=X max_ms=X rss_kb=N rss_source=time|vmhwm
local here = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."
package.cpath = here .. "/build/?.so;" .. package.cpath
local monotonic_ns = require("netdevq.core").monotonic_ns

local runs = tonumber(arg[1] or "")
local cases = {}
for i = 2, #arg, 3 do
    if not arg[i + 2] then
        break
    end
    local patterns = {}
    for pat in (arg[i + 1] .. "||"):gmatch("(.-)||") do
        patterns[#patterns + 1] = pat
    end
    cases[#cases + 1] = { name = arg[i], patterns = patterns, command = arg[i + 2],
                          ms = {}, rss = {} }
    for k = 1, #patterns do
        cases[#cases].ms[k] = {}
    end
end
if not runs or runs < 1 or #cases == 0 then
    io.stderr:write("usage: luajit bench/startup.lua RUNS NAME PATTERN COMMAND ...\n")
    os.exit(2)
end

local have_time = io.open("/usr/bin/time", "r")
if have_time then
    have_time:close()
end
local rss_file = os.tmpname()

local function shell_quote(s)
    return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function vmhwm(pid)
    local f = io.open("/proc/" .. pid .. "/status", "r")
    if not f then
        return nil, true
    end
    local text = f:read("*a")
    f:close()
    if text:match("\nState:%s+Z") then
        return nil, true
    end
    return tonumber(text:match("\nVmHWM:%s+(%d+)")), false
end

local function run_once(c)
    local cmd
    if have_time then
        cmd = "exec 2>&1; exec /usr/bin/time -f 'bench-maxrss %M' -o " .. shell_quote(rss_file)
              .. " " .. c.command
    else
        cmd = "exec 2>&1; echo bench-pid $$; exec " .. c.command
    end
    local t0 = monotonic_ns()
    local p = assert(io.popen(cmd, "r"))
    local marks, nmarks, pid, peak = {}, 0, nil, nil
    local tail = {}
    for line in p:lines() do
        local now = monotonic_ns()
        for k, pat in ipairs(c.patterns) do
            if not marks[k] and line:match(pat) then
                marks[k] = (now - t0) / 1e6
                nmarks = nmarks + 1
            end
        end
        if nmarks == #c.patterns and not peak then
            if pid then
                -- sample the high-water mark until the process is gone
                repeat
                    local v, gone = vmhwm(pid)
                    if v then
                        peak = v
                    end
                    os.execute("sleep 0.01")
                until gone
                peak = peak or 0
            end
        end
        if not pid and not have_time then
            pid = line:match("^bench%-pid (%d+)")
        end
        if not line:match("^bench%-pid") then
            tail[#tail + 1] = line
            if #tail > 5 then
                table.remove(tail, 1)
            end
        end
    end
    p:close()
    if nmarks < #c.patterns then
        io.stderr:write("bench/startup.lua: ", c.name, " never printed all of '",
                        table.concat(c.patterns, "', '"), "'; last output:\n  ",
                        table.concat(tail, "\n  "), "\n")
        os.exit(1)
    end
    if have_time then
        local f = io.open(rss_file, "r")
        local text = f and f:read("*a") or ""
        if f then
            f:close()
        end
        peak = tonumber(text:match("bench%-maxrss (%d+)"))
    end
    return marks, peak
end

local function median(t)
    local s = {}
    for i, v in ipairs(t) do
        s[i] = v
    end
    table.sort(s)
    local n = #s
    if n == 0 then
        return 0
    end
    if n % 2 == 1 then
        return s[(n + 1) / 2]
    end
    return (s[n / 2] + s[n / 2 + 1]) / 2
end

for _, c in ipairs(cases) do
    run_once(c) -- warm-up: page cache, BTF parsed once by the kernel side
end
for _ = 1, runs do
    for _, c in ipairs(cases) do
        local marks, rss = run_once(c)
        for k = 1, #c.patterns do
            c.ms[k][#c.ms[k] + 1] = marks[k]
        end
        if rss and rss > 0 then
            c.rss[#c.rss + 1] = rss
        end
    end
end
os.remove(rss_file)

for _, c in ipairs(cases) do
    for k = 1, #c.patterns do
        local ms = c.ms[k]
        table.sort(ms)
        io.stdout:write(string.format(
            "startup %s mark=%d runs=%d median_ms=%.1f min_ms=%.1f max_ms=%.1f rss_kb=%s "
            .. "rss_source=%s\n",
            c.name, k, #ms, median(ms), ms[1], ms[#ms],
            #c.rss > 0 and string.format("%.0f", median(c.rss)) or "nan",
            have_time and "time" or "vmhwm"))
    end
end
