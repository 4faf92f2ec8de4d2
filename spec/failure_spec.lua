-- Failure modes of the CLI, each with its exact message and exit status (docs/reference.md: errors are
-- one line on stderr that says what is wrong and what to do, exit 1; usage errors exit 2), and
-- the ways a run ends that are not errors: a closed pipe, SIGINT, SIGTERM. Runs the real CLI
-- (`luajit scripts/netdevq.lua`) as a child process; no BPF object may outlive any of them.
local clirun = require("support.clirun")
local bpfobjs = require("support.bpfobjs")
local netns = require("support.netns")
local live = require("support.live")

local TRACING = live.READY .. "\n"
local read_file, write_file = clirun.read_file, clirun.write_file

local function bpf_object_path()
    return clirun.build_dir() .. "/netdevq.bpf.o"
end

local elf_section, flip = bpfobjs.elf_section, bpfobjs.flip

-- Runs the CLI through spec/support/fdcheck_cli.lua: whatever the outcome, main() must have
-- given back every fd and BPF object before the process exits. Returns { code, out, err }.
local function cli(args, opts)
    opts = opts or {}
    opts.fdcheck = true
    local r = clirun.cli(args, opts)
    local what = table.concat(args, " ")
    assert.same({}, r.leaks, what)
    assert.equal(0, r.held, what)
    return { code = r.code, out = r.out, err = r.err }
end

-- usage errors end with the argparse usage text or just the message; either way the last line
-- of stderr is the message
local function last_line(text)
    local lines = clirun.lines(text)
    return lines[#lines]
end

describe("netdevq CLI failure modes #unit", function()
    local tmp
    live.tmpdir_each_test(function(d) tmp = d end)

    it("reports a missing kernel BTF with what to do, exit 1", function()
        local r = cli({ "-d", "1" }, { env = { NETDEVQ_BTF_PATH = "/nonexistent" } })
        assert.same({ code = 1, out = "", err = "netdevq: kernel BTF not found at /nonexistent (No "
            .. "such file or directory): netdevq needs a kernel built with CONFIG_DEBUG_INFO_BTF=y\n" }, r)
    end)

    it("reports a missing BPF object (--object), exit 1", function()
        local path = tmp .. "/missing.bpf.o"
        local r = cli({ "--object", path, "-d", "1" })
        assert.same({ code = 1, out = "", err = "netdevq: cannot read BPF object " .. path
            .. " (No such file or directory): give the path of a netdevq.bpf.o, or none for the "
            .. "embedded one\n" }, r)
    end)

    it("reports a truncated, an emptied and a garbage BPF object, exit 1", function()
        local good = read_file(bpf_object_path())
        local cases = {
            truncated = good:sub(1, math.floor(#good / 2)),
            empty = "",
            garbage = ("netdevq"):rep(1000),
            header_flipped = flip(good, 0, 16), -- ELF magic and identification
        }
        for name, data in pairs(cases) do
            local path = tmp .. "/" .. name .. ".bpf.o"
            write_file(path, data)
            local r = cli({ "--object", path, "-d", "1" })
            assert.same({ code = 1, out = "", err = "netdevq: BPF object " .. path .. " is not a "
                .. "valid netdevq object (BPF object format invalid): rebuild with scripts/setup\n" },
                r, name)
        end
    end)

    it("reports an ELF object that is not a netdevq object, exit 1", function()
        -- a real BPF ELF object with none of netdevq's maps and programs: ndq_send is an ELF file
        -- too, but not BPF; libbpf refuses it by machine type
        local path = clirun.build_dir() .. "/ndq_send"
        local r = cli({ "--object", path, "-d", "1" })
        assert.equal(1, r.code)
        assert.equal("", r.out)
        assert.equal("netdevq: BPF object " .. path .. " is not a valid netdevq object (BPF object "
            .. "format invalid): rebuild with scripts/setup\n", r.err)
    end)

    it("rejects bad option values as usage errors, exit 2, with the reason", function()
        local cases = {
            { { "--ringbuf-size", "1000" },
                "netdevq: --ringbuf-size must be a power of two from 4096 to 1073741824, not 1000" },
            { { "--ringbuf-size", "2147483648" },
                "netdevq: --ringbuf-size must be a power of two from 4096 to 1073741824, not 2147483648" },
            { { "--ringbuf-size", "4096.5" }, "netdevq: --ringbuf-size must be a whole number, not 4096.5" },
            { { "-d", "0" }, "netdevq: --duration must be a positive number, not 0" },
            { { "-i", "0" }, "netdevq: --interval must be a positive number, not 0" },
            { { "-n", "1.5" }, "netdevq: --max-events must be a whole number, not 1.5" },
            { { "--snaplen", "300" },
                "netdevq: --snaplen must be a whole number from 0 to 256 (header bytes), not 300" },
            { { "-d", "abc" }, "netdevq: --duration must be a positive number, not abc" },
            { { "-F", "xml" }, "netdevq: argument for option '-F' must be one of 'text', 'json'" },
            { { "--mode", "kprobe" }, "netdevq: argument for option '--mode' must be one of 'raw', 'btf'" },
            { { "--lhist", "len:a" },
                "netdevq: --lhist wants FIELD:MIN:MAX:STEP, e.g. len:0:1500:100 (got 'len:a')" },
            { { "--sum", "comm" },
                "netdevq: 'comm' is a string field; aggregate an integer field (len, gso_segs, ...)" },
            { { "--cmd", "sh -c 'unterminated" }, "netdevq: --cmd: unterminated ' quote at column 7" },
            { { "--no-such-option" }, "netdevq: unknown option '--no-such-option'" },
        }
        for _, c in ipairs(cases) do
            local r = cli(c[1])
            local what = table.concat(c[1], " ")
            assert.equal(2, r.code, what)
            assert.equal("", r.out, what)
            assert.equal(c[2], last_line(r.err):gsub("\nDid you mean.*", ""), what)
            assert.is_nil(r.err:find("traceback", 1, true), what)
        end
    end)

    it("names an unknown field with its column and a suggestion, exit 2", function()
        local r = cli({ "-f", 'proto == "udp" and lenn > 3' })
        assert.same({ code = 2, out = "", err = "netdevq: filter: unknown field 'lenn' at column 20 "
            .. "(did you mean: len?)\n" .. 'proto == "udp" and lenn > 3\n' .. (" "):rep(19) .. "^\n" }, r)
        r = cli({ "-o", "comm,nope" })
        assert.equal(2, r.code)
        assert.equal("", r.out)
        assert.matches("^netdevq: %-%-fields: unknown field 'nope' %(known: [%w_, ]+%)\n$", r.err)
    end)

    it("reports a filter syntax error with the column, exit 2", function()
        local r = cli({ "-f", "len > " })
        assert.same({ code = 2, out = "", err = "netdevq: filter: syntax error at column 7: expected "
            .. "a value after '>'\nlen > \n      ^\n" }, r)
        r = cli({ "-f", "(len > 3" })
        assert.equal(2, r.code)
        assert.matches("^netdevq: filter: syntax error at column %d+: ", r.err)
    end)

    it("reports a pcap-filter syntax error, exit 2", function()
        local r = cli({ "tcp", "portt", "80" })
        assert.same({ code = 2, out = "", err = "netdevq: pcap filter: can't parse filter "
            .. "expression: syntax error\n" }, r)
    end)
end)

describe("netdevq CLI failure modes #root", function()
    local tmp, pair
    live.no_leftovers()

    before_each(function()
        netns.require_root()
        tmp = clirun.tmpdir("755")
    end)

    after_each(function()
        if pair then
            pair:destroy()
            pair = nil
        end
        if tmp then
            clirun.rmtree(tmp)
            tmp = nil
        end
        -- whatever ran, no netdevq program, link or map may be left without an owner
        assert.same({}, bpfobjs.orphans())
    end)

    it("tells an unprivileged user to run as root, exit 1", function()
        -- a copy of the tree every user can read: the checkout itself may sit in /root
        local top = clirun.top()
        local build = clirun.build_dir()
        assert.is_true(os.execute(table.concat({
            "mkdir -p", tmp .. "/scripts", tmp .. "/lua", tmp .. "/build/netdevq",
            tmp .. "/spec/support", "&&",
            "cp", clirun.quote(top .. "/scripts/netdevq.lua"), tmp .. "/scripts/", "&&",
            "cp", clirun.quote(top .. "/spec/support/fdcheck_cli.lua"),
            clirun.quote(top .. "/spec/support/fdlist.lua"), tmp .. "/spec/support/", "&&",
            "cp -r", clirun.quote(top .. "/lua/netdevq"), tmp .. "/lua/", "&&",
            "cp", clirun.quote(build .. "/netdevq/core.so"), tmp .. "/build/netdevq/", "&&",
            "chmod -R a+rX", tmp }, " ")) == 0)
        local argv = { "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "luajit",
            tmp .. "/scripts/netdevq.lua", "-d", "1" }
        local r = clirun.run(argv, { env = { NETDEVQ_BUILD = tmp .. "/build" } })
        assert.same({ code = 1, out = "", err = "netdevq: permission denied loading the BPF program "
            .. "(Operation not permitted): run as root, or with CAP_BPF and CAP_PERFMON\n" }, r)
        -- and main() gave everything back before exit
        argv[6] = tmp .. "/spec/support/fdcheck_cli.lua"
        os.execute("chmod 1777 " .. tmp)
        r = clirun.run(argv, { env = { NETDEVQ_BUILD = tmp .. "/build", NDQ_FDCHECK = tmp .. "/fdcheck" } })
        assert.equal(1, r.code, r.err)
        assert.equal("held 0\nstatus 1\n", read_file(tmp .. "/fdcheck"))
    end)

    it("reports an object the verifier rejects (instruction bytes flipped), exit 1", function()
        local good = read_file(bpf_object_path())
        local off = elf_section(good, "raw_tp/net_dev_queue")
        local path = tmp .. "/badinsn.bpf.o"
        write_file(path, flip(good, off, 8)) -- the first instruction: opcode 0xff and friends
        -- of netdevq_raw, the first program of the section: the probe-read one
        local r = cli({ "--object", path, "--read", "probe", "-d", "1" })
        assert.same({ code = 1, out = "", err = "netdevq: loading the BPF program failed (Invalid "
            .. "argument): run with -v for libbpf's log\n" }, r)
    end)

    it("refuses an object libbpf would crash on (broken BTF), exit 1, without crashing", function()
        -- libbpf 1.1 dereferences a struct member's type id without checking it while it
        -- relocates: core.open tries a named object in a child process first
        local good = read_file(bpf_object_path())
        local path = tmp .. "/badbtf.bpf.o"
        write_file(path, bpfobjs.btf_break_struct(good, "sk_buff"))
        for _, mode in ipairs({ "raw", "btf" }) do
            local r = cli({ "--object", path, "--mode", mode, "-d", "1" })
            assert.same({ code = 1, out = "", err = "netdevq: BPF object " .. path .. " is malformed: "
                .. "libbpf crashed on it (signal 11 in a trial load): rebuild with scripts/setup\n" },
                r, mode)
        end
    end)

    it("prints the traceback of a Lua callback that raises, detaches and exits 1", function()
        local port = 20000 + bpfobjs.getpid() % 20000
        local script = tmp .. "/raises.lua"
        write_file(script, table.concat({
            'local netdevq = require("netdevq")',
            'local ndq_send, port = arg[1], arg[2]',
            'local t = assert(netdevq.open{ filter = \'dev == "lo" and dport == \' .. port })',
            't:on_event(function(ev) error("callback failed on a " .. ev.len .. "-byte packet") end)',
            'io.stderr:write("attached\\n")',
            'os.execute(ndq_send .. " udp4 127.0.0.1 127.0.0.1 " .. port .. " 40000 10 >/dev/null")',
            't:run{ duration = 5 }',
            'io.stderr:write("not reached\\n")',
            "",
        }, "\n"))
        local r = cli({ script, netns.ndq_send(), tostring(port) })
        assert.equal(1, r.code)
        assert.equal("", r.out)
        local lines = clirun.lines(r.err)
        -- a script run by the CLI gets the ready line when its tracer attaches
        assert.equal("netdevq: tracing net_dev_queue (raw) ... Ctrl-C to stop", table.remove(lines, 1))
        assert.equal("attached", lines[1])
        -- 10 payload bytes + UDP 8 + IPv4 20 + Ethernet 14 (lo has an all-zero Ethernet header)
        assert.equal("netdevq: script failed: " .. script .. ":4: callback failed on a 52-byte "
            .. "packet", lines[2])
        assert.equal("stack traceback:", lines[3])
        assert.truthy(r.err:find("in function 'poll'", 1, true), r.err)
        assert.truthy(r.err:find(script .. ":7: in main chunk", 1, true), r.err)
        assert.is_nil(r.err:find("not reached", 1, true))
    end)

    local function flood_pair(seconds)
        pair = assert(netns.pair{ name = "ndqf" })
        return pair:spawn("a", { netns.ndq_send(), "flood", pair.ip4_b, "9", tostring(seconds), "18" })
    end

    it("ends quietly with exit 0 when its output pipe closes (| head -1)", function()
        local flood = flood_pair(8)
        local filter = "netns == " .. pair.netns_a
        for _, format in ipairs({ "text", "json" }) do
            local r = cli({ "-F", format, "-f", filter }, { shell_tail = "| head -1", timeout = 20 })
            assert.equal(0, r.code, format .. ": " .. r.err)
            assert.equal(TRACING, r.err, format)
            local lines = clirun.lines(r.out)
            assert.equal(1, #lines, format)
            if format == "text" then
                assert.matches("^%d%d:%d%d:%d%d%.%d+ ndq_send %d+ " .. pair.veth_a
                    .. " 60 udp 198%.18%.0%.1:%d+ > 198%.18%.0%.2:9$", lines[1])
            else
                assert.matches('^{"type":"event",.*"len":60,.*"dport":9', lines[1])
            end
        end
        -- pcapng on stdout: the section header, then the pipe closes after 100 bytes
        local r = cli({ "-w", "-", "-f", filter }, { shell_tail = "| head -c 100", timeout = 20 })
        assert.equal(0, r.code, r.err)
        assert.equal(TRACING, r.err)
        assert.equal(100, #r.out)
        assert.equal("\10\13\13\10", r.out:sub(1, 4))
        flood:stop()
    end)

    -- stderr lines of the summary: "netdevq: E events, M matched, L lost"
    local function summary(err)
        local e, m, l = err:match("\nnetdevq: (%d+) events, (%d+) matched, (%d+) lost\n$")
        return tonumber(e), tonumber(m), tonumber(l)
    end

    for _, case in ipairs({
        { sig = "INT", args = { "--count", "proto" }, what = "in-kernel count" },
        { sig = "TERM", args = { "--count", "proto", "--sum", "len" }, what = "Lua count and sum" },
    }) do
        it("prints aggregations and the summary and exits 0 on SIG" .. case.sig .. " during a flood ("
            .. case.what .. ")", function()
            local flood = flood_pair(10)
            local args = { "-f", "netns == " .. pair.netns_a .. " and proto == \"udp\"" }
            for _, a in ipairs(case.args) do
                args[#args + 1] = a
            end
            local run = clirun.spawn_cli(args, { fdcheck = true })
            assert.is_true(run:wait_err("Ctrl%-C to stop\n", 20), run:err_text())
            clirun.sleep(1.5)
            assert.is_true(run:kill(case.sig))
            local r = run:wait(20)
            flood:stop()
            assert.equal(0, r.code, r.err)
            assert.same({}, r.leaks)
            assert.equal(0, r.held)
            local events, matched, lost = summary(r.err)
            assert.is_number(matched, r.err)
            assert.is_true(matched > 1000, r.err) -- the flood ran for 1.5 s
            assert.is_true(events >= matched + lost)
            local out = clirun.lines(r.out)
            -- bpftrace style: "@count[udp]: N", and "@sum_len[]: S" / "@sum_len: S"
            local count = tonumber(r.out:match("@count%[udp%]: (%d+)"))
            assert.equal(matched, count, r.out)
            if case.args[3] == "--sum" then
                local sum = tonumber(r.out:match("@sum_len[^:]*: (%d+)"))
                -- every datagram is 18 bytes of payload: 60-byte frames
                assert.equal(matched * 60, sum, r.out)
            end
            assert.is_true(#out >= 1)
            assert.equal(TRACING, r.err:match("^[^\n]*\n"))
        end)
    end
end)
