-- bench/pcap.lua - what a pcap expression costs, decided in the kernel (issue 16) and in user
-- space, next to the empty program.
--
--     sudo luajit bench/pcap.lua [SECONDS]          (default 3 s per flood; about 30 s in all)
--
-- The workload is bench/run's: build/ndq_send floods 127.0.0.1 on a UDP port nobody listens on
-- (one datagram and its ICMP port unreachable: two net_dev_queue events). The expression
-- `udp port 1` matches nothing in it. Rows, each its own flood:
--   empty raw_tp program     bench/empty.bpf.c (bench/empty_loader.lua): entering any program
-- (the netdevq rows read the field len only, as a `-o len` run would)
--   field filter dport == 1  netdevq's kernel filter matching nothing (nothing crosses)
--   pcap in the kernel       the translated expression decides in the kernel (nothing crosses),
--                            raw mode and btf mode
--   pcap in user space       open{ pcap_kernel = false }: every event crosses, libpcap decides
-- Columns: ns/event of the net_dev_queue program (the kernel's bpf_stats: run_time_ns / run_cnt),
-- its ratio to the empty program, events crossing to user space, and this process's CPU time
-- per event (user + system: the user-space path's cost). Numbers are under whatever else runs on
-- the machine; the ratios are what to read. Sets kernel.bpf_stats_enabled=1 and puts it back;
-- stops every process it started, by pid.
local here = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."
package.path = here .. "/lua/?.lua;" .. here .. "/lua/?/init.lua;" .. package.path
package.cpath = here .. "/build/?.so;" .. package.cpath

local netdevq = require("netdevq")
local core = require("netdevq.core")

local SECONDS = tonumber(arg[1] or "3")
local EXPR = "udp port 1"
local FIELDS = { "len" } -- what the callbacks read: the kernel reads no more than the rows need
local build = here .. "/build"

-- true when cmd exits 0 (LuaJIT's popen close does not say), and its output
local function sh(cmd)
    local p = assert(io.popen(cmd .. " 2>&1; echo \"@rc=$?\""))
    local out = p:read("*a")
    p:close()
    local rc = out:match("@rc=(%d+)%s*$")
    return rc == "0", (out:gsub("@rc=%d+%s*$", ""))
end

local function die(msg)
    io.stderr:write("bench/pcap: ", msg, "\n")
    os.exit(1)
end

if not sh("test $(id -u) -eq 0") then die("needs root: sudo luajit bench/pcap.lua") end
local _, stats_before = sh("sysctl -n kernel.bpf_stats_enabled")
stats_before = stats_before:match("%d") or "0"
local started = {} -- pids of what this script started

local function cleanup()
    for _, pid in ipairs(started) do sh("kill " .. pid) end
    sh("sysctl -qw kernel.bpf_stats_enabled=" .. stats_before)
end

local function cpu_s()
    local f = assert(io.open("/proc/self/stat"))
    local stat = f:read("*l")
    f:close()
    local fields = {}
    for x in stat:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = x end
    return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- utime, stime (clock ticks)
end

local function free_port()
    for port = 9, 60000 do
        local ok = sh(("grep -qi ':%04X ' /proc/net/udp"):format(port))
        if not ok then return port end
    end
    die("no free UDP port")
end

-- a flood in the background; returns a function that waits for it and gives its pps
local function flood(port)
    local out = os.tmpname()
    local _, pid = sh(("%s/ndq_send flood 127.0.0.1 %d %d 64 >%s 2>&1 </dev/null & echo $!")
        :format(build, port, SECONDS, out))
    pid = pid:match("%d+")
    started[#started + 1] = pid
    return function(poll)
        local deadline = core.monotonic_ns() / 1e9 + SECONDS + 5
        while sh("kill -0 " .. pid) and core.monotonic_ns() / 1e9 < deadline do
            poll()
        end
        local f = io.open(out)
        local text = f and f:read("*a") or ""
        if f then f:close() end
        os.remove(out)
        return tonumber(text:match("pps (%d+)")) or 0
    end
end

local function measure(name, port, prog_stats, poll, events)
    local s0, c0 = prog_stats(), cpu_s()
    local e0 = events()
    local pps = flood(port)(poll)
    local s1, c1 = prog_stats(), cpu_s()
    local runs = s1.run_cnt - s0.run_cnt
    return { name = name, ns = runs > 0 and (s1.run_time_ns - s0.run_time_ns) / runs or 0,
             runs = runs, pps = pps, crossed = events() - e0,
             cpu_ns = runs > 0 and (c1 - c0) * 1e9 / runs or 0 }
end

local function tracer_row(name, port, opts)
    opts.attach = true
    local t, err = netdevq.open(opts)
    if not t then die(name .. ": " .. tostring(err)) end
    local n = 0
    t:on_event(function() n = n + 1 end)
    local row = measure(name, port, function() return assert(t.t:prog_stats()) end,
        function() assert(t:poll(50)) end,
        function() local st = assert(t:stats()); return st.emitted end)
    row.path = t.plan.pcap_path
    t:close()
    return row
end

local function empty_row(port)
    local obj = build .. "/bench/empty.bpf.o"
    local ok, out = sh(("mkdir -p %s/bench && clang -g -O2 -target bpf "
        .. "-I/usr/include/$(gcc -print-multiarch) -c %s/bench/empty.bpf.c -o %s")
        :format(build, here, obj))
    if not ok then die("building bench/empty.bpf.c: " .. out) end
    local err = os.tmpname()
    local _, pid = sh(("luajit %s/bench/empty_loader.lua %s %d >/dev/null 2>%s & echo $!")
        :format(here, obj, SECONDS + 30, err))
    pid = pid:match("%d+")
    started[#started + 1] = pid
    local id
    for _ = 1, 100 do
        local f = io.open(err)
        id = f and f:read("*a"):match("prog_id=(%d+)")
        if f then f:close() end
        if id then break end
        sh("sleep 0.1")
    end
    if not id then die("the empty program did not attach") end
    local function stats()
        local _, line = sh("luajit " .. here .. "/bench/progstat.lua " .. id)
        local t_ns, cnt = line:match("^(%d+) (%d+)")
        return { run_time_ns = tonumber(t_ns), run_cnt = tonumber(cnt) }
    end
    local row = measure("empty raw_tp program", port, stats, function() sh("sleep 0.1") end,
        function() return 0 end)
    sh("kill " .. pid)
    os.remove(err)
    return row
end

local ok, err = pcall(function()
    sh("sysctl -qw kernel.bpf_stats_enabled=1")
    local port = free_port()
    local rows = {
        empty_row(port),
        tracer_row("field filter dport == 1", port, { filter = "dport == 1", fields = FIELDS }),
        tracer_row("pcap in the kernel: " .. EXPR, port, { pcap = EXPR, fields = FIELDS }),
        tracer_row("pcap in the kernel, btf mode", port,
            { pcap = EXPR, fields = FIELDS, mode = "btf" }),
        tracer_row("pcap in user space: " .. EXPR, port, { pcap = EXPR, pcap_kernel = false,
                                                          fields = FIELDS }),
    }
    local base = rows[1].ns
    print(("%-36s %10s %8s %12s %10s %12s"):format("row (" .. SECONDS .. " s flood, under load)",
        "ns/event", "x empty", "events", "crossed", "cpu ns/ev"))
    for _, r in ipairs(rows) do
        print(("%-36s %10.1f %8.2f %12d %10d %12.1f"):format(r.name, r.ns,
            base > 0 and r.ns / base or 0, r.runs, r.crossed, r.cpu_ns))
    end
    local k, u = rows[3], rows[5]
    print(("pcap in the kernel: %.2fx the empty program (target <= 1.8x); the user-space path: "
        .. "%.2fx in the kernel plus %.0f ns/event of CPU in this process"):format(
        base > 0 and k.ns / base or 0, base > 0 and u.ns / base or 0, u.cpu_ns))
end)
cleanup()
if not ok then die(tostring(err)) end
