-- bench/latency.lua: what asking for the latency fields costs per packet, beside bpftrace's
-- two-probe join doing the same (the wait from net_dev_queue to net_dev_start_xmit per device).
--
--   sudo luajit bench/latency.lua [SECONDS]        (from the source tree, after a build)
--
-- Three tracers, one after the other, each during its own loopback flood (build/ndq_send flood
-- 127.0.0.1 9 SECONDS 64: a datagram and its ICMP port unreachable, two net_dev_queue hits):
--   plain    netdevq -q --count dev               (in-kernel count: today's cost)
--   latency  netdevq -q --hist sojourn_ns --by dev (the same plus the four fate programs)
--   bpftrace @q[skb] = nsecs at net_dev_queue; hist(nsecs - @q[skb]) by device at
--            net_dev_start_xmit, then delete (no drops: it does not look at kfree_skb)
-- The kernel's own accounting (kernel.bpf_stats_enabled, set for the run and put back) gives the
-- run time of every program each tracer holds; divided by the net_dev_queue hits, that is the
-- ns per queued packet, all its programs included. Prints one line per tracer and the difference.
local cjson = require("cjson")

local SECONDS = tonumber(arg[1]) or 3
local ROOT = arg[0]:match("^(.*)/bench/[^/]*$") or "."
local CLI = ROOT .. "/scripts/netdevq.lua"
local SEND = ROOT .. "/build/ndq_send"

local function sh(cmd)
    local p = assert(io.popen(cmd .. " 2>&1"))
    local out = p:read("*a")
    p:close()
    return out
end

local function sleep(s)
    os.execute("sleep " .. s)
end

-- program ids a process holds (its prog fds and the programs of its link fds)
local function progs_of(pid)
    local ids = {}
    local out = sh("find /proc/" .. pid .. "/fd -mindepth 1 -maxdepth 1 "
        .. "-lname 'anon_inode:bpf*' -printf '%f\\n'")
    for fd in out:gmatch("%d+") do
        local f = io.open("/proc/" .. pid .. "/fdinfo/" .. fd)
        if f then
            local info = f:read("*a")
            f:close()
            local id = info:match("prog_id:%s*(%d+)")
            if id then ids[tonumber(id)] = true end
        end
    end
    return ids
end

-- { [id] = { name, run_time_ns, run_cnt } }
local function stats(ids)
    local t = {}
    for id in pairs(ids) do
        local ok, info = pcall(cjson.decode, sh("bpftool prog show id " .. id .. " -j"))
        if ok and type(info) == "table" then
            t[id] = { name = info.name or "?", ns = info.run_time_ns or 0, cnt = info.run_cnt or 0 }
        end
    end
    return t
end

-- starts cmd in the background; returns its pid
local function start(cmd, log)
    local out = sh("sh -c '" .. cmd .. " >" .. log .. " 2>&1 & echo $!'")
    return tonumber(out:match("(%d+)"))
end

local function measure(label, cmd, settle, queue_prog)
    local log = os.tmpname()
    local pid = start(cmd, log)
    sleep(settle)
    local ids = progs_of(pid)
    local before = stats(ids)
    sh(SEND .. " flood 127.0.0.1 9 " .. SECONDS .. " 64")
    local after = stats(ids)
    os.execute("kill -INT " .. pid .. " 2>/dev/null; sleep 1; kill -KILL " .. pid .. " 2>/dev/null")
    os.remove(log)
    local ns, hits, names = 0, 0, {}
    for id, a in pairs(after) do
        local b = before[id] or { ns = 0, cnt = 0 }
        ns = ns + a.ns - b.ns
        if a.name:find(queue_prog, 1, true) then hits = hits + a.cnt - b.cnt end
        -- BENCH_DETAIL=1: each program's run time and runs
        names[#names + 1] = os.getenv("BENCH_DETAIL")
            and string.format("%s=%.0f/%d", a.name, a.ns - b.ns, a.cnt - b.cnt) or a.name
    end
    table.sort(names)
    if hits == 0 then
        io.stderr:write(label, ": no net_dev_queue hits (programs: ", table.concat(names, ","),
            ")\n")
        return nil
    end
    io.write(string.format("%-9s %8.1f ns/packet  %9d packets  %s\n", label, ns / hits, hits,
        table.concat(names, ",")))
    return ns / hits
end

local old = sh("sysctl -n kernel.bpf_stats_enabled"):match("%d+") or "0"
os.execute("sysctl -qw kernel.bpf_stats_enabled=1")
local ok, err = pcall(function()
    local plain = measure("plain", "luajit " .. CLI .. " -q --count dev", 4, "netdevq_raw")
    local lat = measure("latency", "luajit " .. CLI .. " -q --hist sojourn_ns --by dev", 4,
        "netdevq_raw")
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write("tracepoint:net:net_dev_queue { @q[args->skbaddr] = nsecs; }\n"
        .. "tracepoint:net:net_dev_start_xmit /@q[args->skbaddr]/ {\n"
        .. "  @ns[str(args->name)] = hist(nsecs - @q[args->skbaddr]);\n"
        .. "  delete(@q[args->skbaddr]); }\n")
    f:close()
    local bt = measure("bpftrace", "bpftrace " .. script, 8, "net_dev_queue")
    os.remove(script)
    if plain and lat then
        io.write(string.format("added by the latency fields: %.1f ns/packet", lat - plain))
        if bt then io.write(string.format("; bpftrace join: %.1f ns/packet", bt)) end
        io.write("\n")
    end
end)
os.execute("sysctl -qw kernel.bpf_stats_enabled=" .. old)
if not ok then
    io.stderr:write("bench/latency.lua: ", tostring(err), "\n")
    os.exit(1)
end
