-- spec/fuzz/cli_fuzz.lua SEED COUNT: fuzz the command line (netdevq.cli.main with generated and
-- mutated argv).
--
-- A valid argv would start tracing, so the C module is replaced by a stand-in before anything
-- loads it (package.loaded["netdevq.core"]): its open() first hands the options to the real
-- netdevq.core.open with an object that is not one (so every check of the real C module runs,
-- the pcap-filter compile included, and nothing is loaded), then returns a fake tracer whose
-- poll() delivers a few random (but kernel-shaped) events and whose run ends after one batch,
-- as after an immediate Ctrl-C. spawn/release/waitpid are fakes too: --cmd never runs anything.
-- -w never creates the named file (the real pcapng writer writes to /dev/null instead), and a
-- SCRIPT.lua first argument is replaced by one of two fixture scripts. stdout and stderr are
-- captured in memory.
--
-- Every argv must end in main() returning 0, or 1/2 with a "netdevq: ..." line on stderr (argparse
-- --help ending with os.exit(0) counts as 0); a raised error (a traceback), another status, or
-- a run that takes too long is a failure. spec/fuzz_spec.lua runs this in a network namespace of
-- its own (pcap expressions may name hosts).
-- luacheck: ignore 122 212
-- (this harness replaces io.stdout, io.stderr and os.exit on purpose; fake methods ignore self)
local here = (arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local common = require("common")
common.setup_paths(arg[0])

local ffi = require("ffi")
local random, pick, chance = math.random, common.pick, common.chance

local run = common.runner("cli", 100000, arg)

-- captured standard streams (before any module caches io.stdout / io.stderr) --------------------
local Capture = {}
Capture.__index = Capture
function Capture:write(...)
    for i = 1, select("#", ...) do
        local s = tostring((select(i, ...)))
        if self.size < 65536 then
            self.parts[#self.parts + 1] = s
        end
        self.size = self.size + #s
    end
    return self
end
function Capture:flush() return self end
function Capture:setvbuf() return true end
function Capture:close() return true end
function Capture:text() return table.concat(self.parts) end
function Capture:reset() self.parts, self.size = {}, 0 end
local function capture()
    return setmetatable({ parts = {}, size = 0 }, Capture)
end
local real_stdout, real_stderr = io.stdout, io.stderr
local cap_out, cap_err = capture(), capture()
io.stdout, io.stderr = cap_out, cap_err

-- the stand-in C module -------------------------------------------------------------------------
local real_core = require("netdevq.core")
local fake = {}
for k, v in pairs(real_core) do
    fake[k] = v
end
package.loaded["netdevq.core"] = fake
local abi = require("netdevq.abi")

local BATCH = 16
local events = ffi.new("struct netdevq_event[?]", BATCH)
local agg_keys = ffi.new("struct netdevq_agg_key[4]")
local agg_vals = ffi.new("struct netdevq_agg_value[4]")
local state = { polls = 0 }
-- the C module's stop flag (what a signal handler sets): the run loop and the CLI read it
local stop_flag = ffi.cast("volatile int *", real_core.interrupted_flag)

local function rnd_name(buf, len)
    local n = random(0, len - 1)
    for i = 0, len - 1 do
        buf[i] = i < n and (chance(0.9) and random(33, 126) or random(1, 255)) or 0
    end
end

local function random_event(ev)
    ffi.fill(ev, ffi.sizeof(ev))
    ev.ts = 1e12 + random(0, 1e9)
    ev.skb = 0xffff888000000000ULL + random(0, 2 ^ 30)
    ev.cgroup = random(0, 10000)
    ev.pid, ev.tid, ev.cpu = random(0, 4194304), random(0, 4194304), random(0, 1)
    ev.ifindex, ev.netns = random(0, 100), 4026531840 + random(0, 1000)
    ev.len = random(0, 65535)
    ev.data_len = random(0, ev.len)
    ev.mac_len, ev.hdr_len, ev.queue = random(0, 14), random(0, 100), random(0, 8)
    ev.gso_size, ev.gso_segs = random(0, 1500), random(0, 64)
    ev.ethertype = pick({ 0x0800, 0x86dd, 0x0806, 0, random(0, 65535) })
    ev.priority, ev.mark, ev.hash = random(0, 7), random(0, 2 ^ 32 - 1), random(0, 2 ^ 32 - 1)
    ev.dev_type = pick({ 1, 772, 65534, 65535 })
    ev.l3 = pick({ 0, 4, 6 })
    for i = 0, 15 do
        ev.saddr[i], ev.daddr[i] = random(0, 255), random(0, 255)
    end
    ev.sport, ev.dport = random(0, 65535), random(0, 65535)
    ev.proto = pick({ 6, 17, 1, 58, 132, random(0, 255) })
    ev.tcp_flags, ev.ttl, ev.tos = random(0, 255), random(0, 255), random(0, 255)
    for i = 0, 5 do
        ev.smac[i], ev.dmac[i] = random(0, 255), random(0, 255)
    end
    ev.flags = random(0, 15)
    ev.snap_len = random(0, abi.SNAP_MAX)
    ev.l2_len = random(0, math.min(ev.snap_len, 32))
    rnd_name(ev.comm, 16)
    rnd_name(ev.dev, 16)
    for i = 0, ev.snap_len - 1 do
        ev.snap[i] = random(0, 255)
    end
end

local Tracer = {}
Tracer.__index = Tracer
function Tracer:attach()
    if self.closed then error("netdevq: tracer is closed") end
    if chance(0.02) then
        return nil, "attaching raw_tp/net_dev_queue failed (No such file or directory): this kernel "
            .. "has no net_dev_queue tracepoint"
    end
    return true
end
function Tracer:detach()
    if self.closed then error("netdevq: tracer is closed") end
end
function Tracer:read_path() -- as the C module says it: "probe" | "direct" | "btf"
    return pick({ "probe", "direct", "btf" })
end
function Tracer:poll(timeout)
    if self.closed then error("netdevq: tracer is closed") end
    assert(timeout == nil or type(timeout) == "number", "poll: timeout must be a number")
    state.polls = state.polls + 1
    stop_flag[0] = 2 -- "SIGINT" after this poll: Tracer:run reads the C flag itself
    if state.polls > 2 then
        return 0, events
    end
    local n = random(0, BATCH)
    for i = 0, n - 1 do
        random_event(events[i])
    end
    self.received = self.received + n
    return n, events
end
function Tracer:counters()
    if self.closed then error("netdevq: tracer is closed") end
    local lost = chance(0.3) and random(0, 1000) or 0
    return { seen = self.received + lost + 7, kfiltered = 7, emitted = self.received, lost = lost,
        aggregated = self.received, agg_overflow = 0, pcap_dropped = 0, received = self.received }
end
function Tracer:agg_read()
    if self.closed then error("netdevq: tracer is closed") end
    local n = random(0, 4)
    for i = 0, n - 1 do
        for b = 0, 63 do
            agg_keys[i].k[b] = chance(0.5) and 0 or random(0, 255)
        end
        ffi.fill(agg_vals[i], ffi.sizeof(agg_vals[i]))
        local v = agg_vals[i]
        v.count = random(1, 1000)
        v.sum = v.count * random(0, 1500)
        v.min, v.max = random(0, 60), random(60, 1500)
        for s = 0, 67 do
            v.slot[s] = chance(0.2) and random(0, 100) or 0
        end
    end
    return n, agg_keys, agg_vals
end
function Tracer:prog_stats() return { id = 1, run_time_ns = 0, run_cnt = 0 } end
function Tracer:close() self.closed = true end

fake.open = function(opts)
    -- every check of the real open, then a garbage object: it ends before loading anything
    local o = {}
    for k, v in pairs(opts) do
        o[k] = v
    end
    o.object, o.btf_path = nil, nil
    o.object_bytes = "not an ELF object"
    local t, err = real_core.open(o)
    if t then
        t:close()
        error("the real open accepted a garbage object")
    end
    if not err:match("^BPF object %(object_bytes%) is not a valid netdevq object") then
        return nil, err -- e.g. pcap filter errors, exactly as the real open reports them
    end
    if chance(0.02) then
        return nil, "kernel BTF not found at /sys/kernel/btf/vmlinux (No such file or directory): "
            .. "netdevq needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    end
    state.polls = 0
    stop_flag[0] = 0
    return setmetatable({ received = 0 }, Tracer)
end
fake.catch_signals = function() end
fake.ignore_sigpipe = function() end
fake.interrupted = function() return stop_flag[0] ~= 0 and stop_flag[0] or false end
fake.spawn = function(argv)
    assert(type(argv) == "table" and #argv >= 1, "spawn: empty command")
    for i = 1, #argv do
        assert(type(argv[i]) == "string", "spawn: argument " .. i .. " is not a string")
    end
    return 424242, 1000, 1001
end
fake.release = function() return true end
fake.waitpid = function(pid) return pid, "exited", 0 end

-- pcapng: the real writer, but into /dev/null whatever path was named
local pcapng = require("netdevq.pcapng")
local real_pcapng_open = pcapng.open
local devnull = assert(io.open("/dev/null", "wb"))
package.loaded["netdevq.pcapng"] = setmetatable({
    open = function(target, opts)
        assert(type(target) == "string", "pcapng.open: target must be a string")
        return real_pcapng_open(devnull, opts)
    end,
}, { __index = pcapng })

local cli = require("netdevq.cli")

-- fixture scripts for SCRIPT.lua runs
local tmp = os.tmpname()
os.remove(tmp)
assert(os.execute("mkdir -m 700 " .. tmp) == 0)
local ok_script = tmp .. "/ok.lua"
local f = assert(io.open(ok_script, "w"))
f:write("local netdevq = require('netdevq')\nreturn select('#', ...) > 3 and 3 or 0\n")
f:close()
local missing_script = tmp .. "/missing.lua"

local real_exit = os.exit
-- argparse ends --help and --version of its own with os.exit(0), from inside its own xpcall
-- (which turns any error into a string): the marker survives that
local EXIT_MARK = "netdevq-fuzz: os.exit "
os.exit = function(code)
    if code == nil or code == true then
        code = 0
    end
    error(EXIT_MARK .. tostring(code) .. ";", 0)
end

-- argv generation -------------------------------------------------------------------------------
local FIELD_LISTS = { "comm,pid,dev,len", "len", "dev,proto", "saddr,daddr,sport,dport", "nope",
    "len,,dev", "", "time", "mac_len,hdr_len", "tcp_flags,ttl,tos,ethertype,smac,dmac",
    "ts,cpu,tid,cgroup,skb,ifindex,netns,data_len,queue,priority,mark,hash,gso_size,gso_segs" }
local FILTERS = { 'proto == "udp"', 'dev == "lo" and len > 100', "len >", "lenn > 1",
    'saddr == "198.18.0.0/15"', "port == 53 or host == \"2001:db8::1\"", "not (len < 60)",
    'comm == "curl" and tcp_flags == "S"', "hash > 3 and mark == 1", "(", "" }
local NUMBERS = { "0", "1", "5", "-1", "0.5", "1e9", "65536", "4096", "1048576", "abc", "nan",
    "inf", "1e400", "0x10", "4294967296", "" }
local OPTIONS = {
    { "-f", FILTERS }, { "--filter", FILTERS }, { "-I", { "lo", "eth0", "ndqa1", "", "a b" } },
    { "--dev", { "lo", "veth0" } }, { "-p", NUMBERS }, { "--pid", NUMBERS },
    { "--comm", { "curl", "ndq_send", "" } },
    { "-c", { "true", "ls -l", "sh -c 'echo $(id); rm -rf /'", "'unterminated", "a\\ b \"c d\"",
        "", "   " } },
    { "--cmd", { "sleep 1", "x;y", "$(reboot)" } },
    { "-o", FIELD_LISTS }, { "--fields", FIELD_LISTS }, { "-l" }, { "--list-fields" },
    { "-F", { "text", "json", "xml" } }, { "--format", { "json" } },
    { "-w", { "out.pcapng", "-", "/etc/passwd", "" } }, { "--write", { "x.pcapng" } },
    { "-s", NUMBERS }, { "--snaplen", { "0", "64", "256", "257" } },
    { "--count", FIELD_LISTS }, { "--count" }, { "--sum", { "len", "comm", "nope" } },
    { "--avg", { "len", "gso_segs" } }, { "--min", { "len" } }, { "--max", { "ttl" } },
    { "--stats", { "len", "dev" } }, { "--hist", { "len", "sport" } },
    { "--lhist", { "len:0:1500:100", "len:0:100:1", "len:a", "len:10:0:1", "len:0:10:0",
        "nope:0:1:1", "len:-5:5:1" } },
    { "--by", FIELD_LISTS }, { "-i", NUMBERS }, { "--interval", NUMBERS }, { "-d", NUMBERS },
    { "--duration", NUMBERS }, { "-n", NUMBERS }, { "--max-events", NUMBERS },
    { "--mode", { "raw", "btf", "kprobe" } }, { "--ringbuf-size", NUMBERS },
    { "--object", { "/nonexistent.o", "build/netdevq.bpf.o" } }, { "-q" }, { "--quiet" },
    { "-v" }, { "--verbose" }, { "--version" }, { "-h" }, { "--help" }, { "--" },
}
local WORDS = { "udp", "tcp", "port", "53", "host", "198.18.0.2", "and", "or", "not", "(", ")",
    "icmp6", "portt", "len", ">", "100", "ether", "proto", "\\ip", "tcp[13]", "=", "2" }

local function generate_argv()
    local argv = {}
    for _ = 1, random(0, 6) do
        local o = pick(OPTIONS)
        local name, values = o[1], o[2]
        if values then
            local v = pick(values)
            local form = random(1, 4)
            if form == 1 and name:sub(1, 2) == "--" then
                argv[#argv + 1] = name .. "=" .. v
            elseif form == 2 and #name == 2 then
                argv[#argv + 1] = name .. v
            else
                argv[#argv + 1] = name
                if chance(0.95) then
                    argv[#argv + 1] = v
                end
            end
        else
            argv[#argv + 1] = name
        end
    end
    if chance(0.1) then
        argv[#argv + 1] = "-" .. pick({ "q", "v", "l" }) .. pick({ "q", "v", "", "n5", "d1" })
    end
    for _ = 1, (chance(0.4) and random(1, 5) or 0) do
        argv[#argv + 1] = pick(WORDS)
    end
    return argv
end

local function mutate_argv(argv, other)
    argv = { unpack(argv) }
    for _ = 1, random(1, 3) do
        local r = random(1, 5)
        local i = random(1, #argv + 1)
        if r == 1 and #argv > 0 then
            table.remove(argv, math.min(i, #argv))
        elseif r == 2 then
            table.insert(argv, i, other[random(1, math.max(1, #other))] or "-q")
        elseif r == 3 and #argv > 0 then
            local k = math.min(i, #argv)
            argv[k] = common.mutate(argv[k], 3, other[1])
        elseif r == 4 and #argv > 1 then
            local a, b = random(1, #argv), random(1, #argv)
            argv[a], argv[b] = argv[b], argv[a]
        else
            table.insert(argv, i, common.random_bytes(8))
        end
    end
    return argv
end

-- what may be run: no NUL in an argument (impossible in a real argv); a first argument that
-- names a script becomes one of ours
local function sanitize(argv)
    for i = 1, #argv do
        argv[i] = argv[i]:gsub("%z", "")
    end
    if argv[1] and argv[1]:match("%.lua$") then
        argv[1] = chance(0.5) and ok_script or missing_script
    end
    return argv
end

local function show(argv)
    local q = {}
    for i, a in ipairs(argv) do
        q[i] = string.format("%q", a)
    end
    return "{" .. table.concat(q, ", ") .. "}"
end

local stats = { stdout = 0, traced = 0 }

local function check(argv)
    cap_out:reset()
    cap_err:reset()
    state.polls = 0
    local ok, res = pcall(cli.main, argv)
    if not ok then
        local at = type(res) == "string" and res:find(EXIT_MARK, 1, true)
        local code = at and res:match("^(%S+);", at + #EXIT_MARK)
        if code then
            if code ~= "0" then
                return nil, "os.exit(" .. code .. ") from inside main"
            end
            return "ok"
        end
        if type(res) == "table" then
            local kv = {}
            for k, v in pairs(res) do
                kv[#kv + 1] = tostring(k) .. "=" .. tostring(v)
            end
            res = "a table {" .. table.concat(kv, ", ") .. "}"
        end
        return nil, "raised: " .. tostring(res)
    end
    if cap_out.size > 0 then
        stats.stdout = stats.stdout + 1
    end
    if state.polls > 0 then
        stats.traced = stats.traced + 1
    end
    local err = cap_err:text()
    if err:find("stack traceback", 1, true) then
        return nil, "a traceback on stderr: " .. err
    end
    if res == 0 then
        return "ok"
    elseif res == 1 or res == 2 then
        if not err:match("netdevq: [^\n]") then
            return nil, "exit " .. res .. " without a 'netdevq: ...' message: " .. err
        end
        return "clean"
    end
    return nil, "main returned " .. tostring(res)
end

local previous = {}
local shown = setmetatable({}, { __tostring = function(self) return show(self.argv) end })
while run:more() do
    local argv
    if chance(0.5) or #previous == 0 then
        argv = generate_argv()
    else
        argv = mutate_argv(pick(previous), generate_argv())
    end
    argv = sanitize(argv)
    shown.argv = argv
    run:check(shown, function() return check(argv) end)
    if #previous < 64 then
        previous[#previous + 1] = argv
    else
        previous[random(1, 64)] = argv
    end
end

os.execute("rm -rf " .. tmp)
io.stdout, io.stderr = real_stdout, real_stderr
os.exit = real_exit
io.stdout:write(string.format("cli: %d runs traced (fake events polled), %d wrote to stdout\n",
    stats.traced, stats.stdout))
run:finish()
