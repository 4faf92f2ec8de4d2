-- The start (netdevq.core's csrc/startup.c; docs/reference.md "Start"): the CLI opens the BPF
-- object and reads the kernel's BTF on a second thread while its Lua modules load, and the
-- tracer's open takes that object. strace -f tells which thread opened /sys/kernel/btf/vmlinux
-- and how often: twice per run in every mode, both on the pre-open thread (once to cut the types
-- CO-RE searches down, csrc/corebtf.c; once by libbpf, for the kfunc and tp_btf targets); as
-- often on the main thread for a Lua script that does not pre-open; and a pcap expression
-- decided in the kernel in btf mode does not read it a third time (its load handler used to look
-- the attach id up itself).
local clirun = require("support.clirun")
local netns = require("support.netns")
local live = require("support.live")

local VMLINUX = '"/sys/kernel/btf/vmlinux"'

-- argv under `strace -f -e trace=TRACE`; returns the run ({ code, out, err }) and the log's
-- lines. exits: keep strace's "+++ exited" lines (-q instead of -qq).
local function straced(argv, trace, exits)
    local dir = clirun.tmpdir()
    local log = dir .. "/strace"
    local cmd = { "strace", "-f", exits and "-q" or "-qq", "-o", log, "-e", "trace=" .. trace,
                  "-e", "signal=none" }
    for _, a in ipairs(argv) do
        cmd[#cmd + 1] = a
    end
    local r = clirun.run(cmd, { env = { NETDEVQ_BUILD = clirun.build_dir() } })
    local lines = {}
    for line in io.lines(log) do
        lines[#lines + 1] = line
    end
    clirun.rmtree(dir)
    return r, lines
end

-- argv under strace; returns the run and who opened the kernel's BTF, in order: "main" (the
-- process's first thread) or "thread" (any other thread of it). Only threads: nothing here
-- forks before the open (no --object trial load, no -c).
local function btf_readers(argv)
    local r, lines = straced(argv, "openat")
    local main, readers = nil, {}
    for _, line in ipairs(lines) do
        local pid = line:match("^(%d+) ")
        main = main or pid
        -- "... = 3", or "... <unfinished ...>" when another thread's call came in between
        -- (its "<... openat resumed>" line carries the result)
        if line:find(VMLINUX, 1, true) and not line:find("= %-1") then
            readers[#readers + 1] = pid == main and "main" or "thread"
        end
    end
    return r, readers
end

-- argv under `strace -f` with process creation traced: whether every fork (a clone without
-- CLONE_THREAD) came after the pre-open thread had exited, and how many forks there were. A
-- child forked while that thread holds an allocator lock waits forever (seen: the --object
-- trial load under ASan). The thread's end is its exit() call: pthread_join returns once the
-- kernel clears the thread's id, which comes after that call but can come before strace
-- reports the thread "+++ exited", so a fork after the join may be logged before that line.
local function forks_after_thread(argv)
    local r, lines = straced(argv, "openat,clone,clone3,fork,vfork,exit", true)
    local main = lines[1]:match("^(%d+) ")
    local worker, worker_exit, forks, early = nil, nil, 0, 0
    for i, line in ipairs(lines) do
        local pid = line:match("^(%d+) ")
        if not worker and pid ~= main and line:find(VMLINUX, 1, true) then
            worker = pid
        end
        if worker and not worker_exit and (line:match("^" .. worker .. "%s+exit%(")
                                           or line:match("^" .. worker .. "%s+%+%+%+ exited")) then
            worker_exit = i
        end
        local creates = line:match("^%d+%s+v?fork%(") or line:match("^%d+%s+clone3?%(")
        if pid == main and creates and not line:find("CLONE_THREAD", 1, true) then
            forks = forks + 1
            if not worker_exit then
                early = early + 1
            end
        end
    end
    return r, worker ~= nil, forks, early
end

-- the CLI's command line: luajit, the script, then each list's words
local function cli_argv(...)
    local argv = { "luajit", clirun.top() .. "/scripts/netdevq.lua" }
    for _, list in ipairs({ ... }) do
        for _, a in ipairs(list) do
            argv[#argv + 1] = a
        end
    end
    return argv
end

local function cli(args)
    return btf_readers(cli_argv(args))
end

-- a Lua script run by luajit directly (not through the CLI), the tree's modules first
local function script(dir, text)
    local path = dir .. "/script.lua"
    clirun.write_file(path, "package.path = " .. string.format("%q", clirun.top()
        .. "/lua/?.lua;" .. clirun.top() .. "/lua/?/init.lua;") .. " .. package.path\n"
        .. "package.cpath = " .. string.format("%q", clirun.build_dir() .. "/?.so;")
        .. " .. package.cpath\n" .. text)
    return btf_readers({ "luajit", path })
end

-- argv under strace: the run, and each map creation in order as { name, type,
-- max_entries, flags, ok }. The loader sizes several maps; one the kernel refuses (sizes that
-- differ from the map's BTF types) libbpf creates a second time without BTF, and a big
-- preallocated hash costs its allocation each time (--count: 160 ms of a 210 ms start).
local function map_creations(argv)
    local r, lines = straced(argv, "bpf")
    local maps = {}
    for _, line in ipairs(lines) do
        if line:find("BPF_MAP_CREATE", 1, true) then
            maps[#maps + 1] = { line:match('map_name="([^"]*)"'), line:match("map_type=BPF_MAP_TYPE_([%w_]+)"),
                tonumber(line:match("max_entries=(%d+)")), line:match("map_flags=([^,]+)"),
                line:match("= (%-?%d+)[^=]*$") ~= "-1" }
        end
    end
    return r, maps
end

describe("the start: the BPF object pre-opened while the CLI loads #root", function()
    local dir
    live.tmpdir_each_test(function(d) dir = d end)
    before_each(function()
        netns.require_root()
    end)

    for _, case in ipairs({
        { "raw, --read auto", {} },
        { "raw, --read probe", { "--read", "probe" } },
        { "raw, --read direct", { "--read", "direct" } },
        { "btf", { "--mode", "btf" } },
        { "raw, a pcap expression in the kernel", { "udp port 1" } },
        { "btf, a pcap expression in the kernel", { "--mode", "btf", "udp port 1" } },
        { "btf, an aggregation", { "--mode", "btf", "--count", "dev" } },
    }) do
        it("reads the kernel's BTF on the pre-open thread only, CO-RE searches it cut down: "
            .. case[1], function()
            local args = { "-v", "-d", "0.01", "-q" }
            for _, a in ipairs(case[2]) do
                args[#args + 1] = a
            end
            local r, readers = cli(args)
            assert.equal(0, r.code, r.err)
            assert.same({ "thread", "thread" }, readers, r.err)
            -- the types of the object's names and what they embed: 704 of 126,411 on 6.18
            local kept, total = r.err:match("netdevq: CO%-RE relocations search (%d+) of the (%d+) "
                .. "types of /sys/kernel/btf/vmlinux: those the object names and what they embed\n")
            assert.is_truthy(kept, r.err)
            assert.is_true(tonumber(kept) >= 100 and tonumber(kept) * 20 < tonumber(total), r.err)
            local mode = case[2][1] == "--mode" and "btf" or "raw"
            assert.truthy(r.err:find(live.ready_line(mode), 1, true), r.err)
            assert.truthy(r.err:find("netdevq: the BPF object was opened while the CLI started",
                1, true), r.err)
            if case[1]:find("pcap") then
                assert.truthy(r.err:find("netdevq: pcap filter decided in the kernel", 1, true),
                    r.err)
            end
        end)
    end

    -- (the default --max-keys, 65,536: a count's table takes 256 per possible CPU off the hash)
    local ncpus = require("netdevq.core").ncpus
    for _, case in ipairs({
        { "a count (raw)", { "--count", "dev" }, "aggs", 65536 - ncpus * 256 },
        { "a histogram (btf)", { "--mode", "btf", "--hist", "len" }, "aggs", 65536 },
        { "latency fields", { "-o", "dev,sojourn_ns" }, "lat_held", 16384 },
    }) do
        it("creates each map once, the big ones at their size: " .. case[1], function()
            local r, maps = map_creations(cli_argv({ "-d", "0.01" }, case[2]))
            assert.equal(0, r.code, r.err)
            local seen, big = {}, nil
            for _, m in ipairs(maps) do
                assert.is_true(m[5], "refused: " .. m[1])
                assert.is_nil(seen[m[1]], "created twice: " .. m[1])
                seen[m[1]] = true
                if m[1] == case[3] then big = m end
            end
            assert.is_table(big, case[3] .. " not created")
            -- an aggregation's hash allocates its elements as keys come (BPF_F_NO_PREALLOC,
            -- Linux 6.1+)
            if case[3] == "aggs" then
                assert.same({ "PERCPU_HASH", case[4], "BPF_F_NO_PREALLOC" }, { big[2], big[3], big[4] })
            else
                assert.same({ "LRU_HASH", case[4] }, { big[2], big[3] })
            end
        end)
    end

    it("loads the modules of aggregations only for a run that aggregates", function()
        local function aggregation_modules(args)
            local r, lines = straced(cli_argv({ "-d", "0.01", "-q" }, args), "openat")
            assert.equal(0, r.code, r.err)
            local out, seen = {}, {}
            for _, line in ipairs(lines) do
                local m = line:match('"[^"]*/(netdevq/aggregate/?[%w_]*)%.lua"')
                          or line:match('"[^"]*/(cjson)[^"]*"')
                if m and not seen[m] and not line:find("ENOENT", 1, true) then
                    seen[m] = true
                    out[#out + 1] = m
                end
            end
            table.sort(out)
            return out
        end
        assert.same({}, aggregation_modules({ "-o", "comm,pid,dev,len" }))
        assert.same({ "cjson", "netdevq/aggregate/init", "netdevq/aggregate/kernel",
                      "netdevq/aggregate/print" }, aggregation_modules({ "--count", "dev" }))
    end)

    it("--help and a usage error: the thread is joined and its object closed, exit 0 / 2",
        function()
            local r, readers = cli({ "--help" })
            assert.equal(0, r.code, r.err)
            assert.truthy(r.out:find("^Usage: netdevq"), r.out)
            assert.same({ "thread", "thread" }, readers)
            r, readers = cli({ "-d", "x" })
            assert.equal(2, r.code, r.err)
            assert.same({ "thread", "thread" }, readers)
        end)

    it("forks only once the pre-open thread is done: --object's trial load, a long pcap "
        .. "expression compiled in a child, the -c command", function()
        local long = "udp port 1" .. string.rep(" or udp port 2", 30) -- over 256 bytes
        for _, case in ipairs({
            { "--object", clirun.build_dir() .. "/netdevq.bpf.o", "-d", "0.01", "-q" },
            { "-d", "0.01", "-q", long },
            { "-q", "-c", "true" },
        }) do
            local r, threaded, forks, early = forks_after_thread(cli_argv(case))
            local what = table.concat(case, " ", 1, math.min(#case, 2))
            assert.equal(0, r.code, what .. ": " .. r.err)
            assert.is_true(threaded, what)
            assert.equal(1, forks, what)
            assert.equal(0, early, what)
        end
    end)

    it("a Lua script: the reads on the main thread, or on the thread after core.preopen()",
        function()
            local body = [[
local netdevq = require("netdevq")
%s
local t = assert(netdevq.open({ mode = "%s", pcap = "udp port 1" }))
t:close()
print("ok")
]]
            for _, mode in ipairs({ "raw", "btf" }) do
                local r, readers = script(dir, body:format("", mode))
                assert.equal(0, r.code, r.err)
                assert.equal("ok\n", r.out)
                assert.same({ "main", "main" }, readers, mode)
                -- a second call while the thread runs starts nothing (and forgets nothing)
                r, readers = script(dir, body:format('local core = require("netdevq.core")\n'
                    .. 'assert(core.preopen() == true)\nassert(core.preopen() == false)', mode))
                assert.equal(0, r.code, r.err)
                assert.equal("ok\n", r.out)
                assert.same({ "thread", "thread" }, readers, mode)
            end
        end)

    it("a Lua script with btf_path: the pre-opened object is closed, the open reads its own",
        function()
            local r, readers = script(dir, [[
local core = require("netdevq.core")
assert(core.preopen() == true)
core.preopen_wait()
local t = assert(require("netdevq").open({ btf_path = "/sys/kernel/btf/vmlinux" }))
t:close()
print("ok")
]])
            assert.equal(0, r.code, r.err)
            assert.equal("ok\n", r.out)
            -- the thread's; then the open's: btf_path for the type ids it hands the program,
            -- btf_path again by libbpf (CO-RE searches the user's types whole), the kernel's (the
            -- kfunc)
            assert.same({ "thread", "thread", "main", "main", "main" }, readers, r.err)
        end)
end)
