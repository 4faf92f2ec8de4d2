-- Nothing leaks: after many open/attach/poll/close cycles in one process, after every way
-- netdevq.open can fail, and after a SIGKILLed run, no fd stays open and no BPF program, link or
-- map stays loaded. (The CLI's own failure paths are checked fd by fd in failure_spec.lua, through
-- spec/support/fdcheck_cli.lua.)
--
-- Other engineers may run netdevq on this machine at the same time: the checks look at the ids
-- this process (or the child it started) held, read from /proc/PID/fdinfo, and at objects that
-- no live process holds at all (support.bpfobjs), never at "every netdevq object".
local bpfobjs = require("support.bpfobjs")
local clirun = require("support.clirun")
local netns = require("support.netns")
local live = require("support.live")

local CYCLES = 200
-- the maps of one tracer, whatever it was opened with (bpf/netdevq.bpf.c: sized to 1 entry when
-- unused)
local MAPS = 18

local merge = bpfobjs.merge

local function count(set)
    local n = 0
    for _ in pairs(set) do
        n = n + 1
    end
    return n
end

local read_file = clirun.read_file

describe("netdevq gives everything back #root", function()
    local netdevq
    live.no_leftovers()

    before_each(function()
        netns.require_root()
        netdevq = require("netdevq")
    end)

    it("after " .. CYCLES .. " open/attach/poll/close cycles in one process", function()
        collectgarbage()
        collectgarbage()
        local before = bpfobjs.fds()
        local pid = bpfobjs.getpid()
        local variants = {
            { mode = "raw" },
            { mode = "btf", filter = 'len > 100 and proto == "udp"' },
            { mode = "raw", aggregate = { kind = "hist", keys = { "dev" }, value = "len" } },
            { mode = "btf", pcap = "udp or tcp", follow_pid = pid }, -- + sched fork and exit
            { mode = "raw", fields = { "len", "sojourn_ns" } }, -- + the four fate programs
        }
        local ids = { prog = {}, map = {}, link = {} }
        local per_variant = {}
        for i = 1, CYCLES do
            local v = (i - 1) % #variants + 1
            local t = assert(netdevq.open(variants[v]))
            assert.is_number(t:poll(0)) -- whatever arrived
            local held = bpfobjs.held(pid)
            merge(ids, held)
            per_variant[v] = per_variant[v] or { count(held.prog), count(held.link), count(held.map) }
            t:close()
            t:close() -- idempotent
        end
        -- what one tracer holds: its program(s), link(s) and the eighteen maps (kstacks, sets,
        -- set_bits, pcap_frame, lat_held, aggtab and batches among them); every field (no `fields`) and
        -- follow_pid include the socket owner: six more programs and links; an unfiltered stream
        -- the batches' flush program (run, never attached: no link); follow_pid adds
        -- sched_process_fork and sched_process_exit; sojourn_ns the four fate programs
        assert.same({ { 8, 7, MAPS }, { 7, 7, MAPS }, { 1, 1, MAPS }, { 9, 9, MAPS }, { 5, 5, MAPS } }, per_variant)
        assert.same({}, bpfobjs.diff(before, bpfobjs.fds()))
        assert.same({ prog = {}, map = {}, link = {} }, bpfobjs.held(pid))
        assert.same({}, bpfobjs.still_loaded(ids))
        -- ids are never reused: every cycle loaded its own objects
        assert.equal((8 + 7 + 1 + 9 + 5) * CYCLES / 5, count(ids.prog))
        assert.equal(CYCLES * MAPS, count(ids.map))
    end)

    it("when a tracer is only dropped: the garbage collector closes it", function()
        collectgarbage()
        collectgarbage()
        local before = bpfobjs.fds()
        local ids = { prog = {}, map = {}, link = {} }
        for _ = 1, 5 do
            local t = assert(netdevq.open{})
            t:poll(0)
            merge(ids, bpfobjs.held())
            t = nil -- luacheck: ignore
        end
        assert.equal(5 * 7, count(ids.link)) -- net_dev_queue and the six owner programs
        collectgarbage()
        collectgarbage()
        assert.same({}, bpfobjs.diff(before, bpfobjs.fds()))
        assert.same({}, bpfobjs.still_loaded(ids))
    end)

    it("after every way netdevq.open fails, and after a callback raises", function()
        local object = read_file(clirun.build_dir() .. "/netdevq.bpf.o")
        -- the first instruction of netdevq_raw made invalid: the verifier rejects the program
        -- after libbpf created the maps
        local bad_insn = bpfobjs.flip(object, bpfobjs.elf_section(object, "raw_tp/net_dev_queue"), 8)
        local failures = {
            { "no kernel BTF", { btf_path = "/nonexistent" }, "kernel BTF not found" },
            { "missing object", { object = "/nonexistent/netdevq.bpf.o" }, "cannot read BPF object" },
            { "truncated object", { object_bytes = object:sub(1, 5000) }, "not a valid netdevq object" },
            { "garbage object", { object_bytes = ("\0"):rep(4096) }, "not a valid netdevq object" },
            { "object the verifier rejects", { object_bytes = bad_insn, read = "probe" },
              "loading the BPF program failed" },
            { "filter syntax error", { filter = "len >" }, "syntax error at column" },
            { "unknown field", { filter = "lenn > 1" }, "unknown field 'lenn'" },
            { "pcap syntax error", { pcap = "udp portt 9" }, "pcap filter" },
            { "ring buffer not a power of two", { ringbuf_size = 12288 }, "must be a power of two" },
            { "pcap error after a kernel filter", { filter = "len > 1", pcap = "(" }, "pcap filter" },
        }
        collectgarbage()
        collectgarbage()
        local pid = bpfobjs.getpid()
        local before = bpfobjs.fds()
        for _, f in ipairs(failures) do
            local t, err = netdevq.open(f[2])
            assert.is_nil(t, f[1])
            assert.truthy(err:find(f[3], 1, true), f[1] .. ": " .. tostring(err))
            assert.same({}, bpfobjs.diff(before, bpfobjs.fds()), f[1])
        end
        -- bad option values are usage errors (nil, message, { kind = "usage" }): nothing left
        for _, bad in ipairs({ { ringbuf_size = 1 }, { mode = "kprobe" }, { follow_pid = 2 ^ 40 },
                               { max_keys = 0 }, { snaplen = 257 } }) do
            local t, err, info = netdevq.open(bad)
            assert.is_nil(t)
            assert.matches("^netdevq: ", err)
            assert.equal("usage", info.kind)
        end
        assert.same({}, bpfobjs.diff(before, bpfobjs.fds()), "bad option values")

        -- a callback that raises inside run(): the error reaches the caller, close() still works
        local port = 20000 + pid % 20000
        local t = assert(netdevq.open{ filter = 'dev == "lo" and dport == ' .. port })
        t:on_event(function() error("callback raised") end)
        assert.is_true(os.execute(netns.ndq_send() .. " udp4 127.0.0.1 127.0.0.1 " .. port
            .. " 40000 10 >/dev/null") == 0)
        local ids = bpfobjs.held(pid)
        local ok, err = pcall(t.run, t, { duration = 5 })
        assert.is_false(ok)
        assert.matches("callback raised", err)
        t:close()
        assert.same({}, bpfobjs.diff(before, bpfobjs.fds()), "after a raising callback")
        assert.same({}, bpfobjs.still_loaded(ids))
        -- methods after close raise (misuse), and close stays idempotent
        assert.has_error(function() t.t:poll(0) end)
        t:close()
    end)

    it("after the CLI is killed with SIGKILL: the kernel releases its objects", function()
        local pair, run = assert(netns.pair{ name = "ndql" }), nil
        -- busted keeps only the last finally of a test: one for everything this test made
        finally(function()
            if run then run:wait(10) end
            pair:destroy()
        end)
        local flood = pair:spawn("a", { netns.ndq_send(), "flood", pair.ip4_b, "9", "5", "18" })
        run = clirun.spawn_cli({ "-q", "--count", "dev", "--sum", "len",
            "-f", "netns == " .. pair.netns_a })
        assert.is_true(run:wait_err("Ctrl%-C to stop\n", 20), run:err_text())
        clirun.sleep(1)
        local held = bpfobjs.held(run.pid)
        assert.same({ 1, 1, MAPS }, { count(held.prog), count(held.link), count(held.map) })
        assert.equal(#bpfobjs.still_loaded(held, 0), MAPS + 2) -- bpftool sees them all while it runs
        assert.is_true(run:kill("KILL"))
        local r = run:wait(10)
        assert.equal(137, r.code) -- 128 + SIGKILL
        flood:stop()
        assert.same({}, bpfobjs.still_loaded(held, 5))
    end)

    it("leaves no netdevq program, link or map that no process holds", function()
        assert.same({}, bpfobjs.orphans())
    end)
end)
