-- `netdevq -w` on real traffic: known UDP/TCP/ICMP over IPv4 and IPv6 between two namespaces,
-- plus a tun device (no link-layer header), written as pcapng by the CLI and read back with tshark
-- and with a small block reader here. Every packet, interface, length, address, port, comment and
-- timestamp is checked exactly.
local ffi = require("ffi")
local netns = require("support.netns")
local clirun = require("support.clirun")
local live = require("support.live")

local ETH, IP4, IP6, UDP, ICMP_ECHO4, ICMP_ECHO6 = 14, 20, 40, 8, 84, 104
local DEFAULT_SNAPLEN = 128 -- what -w keeps per packet without -s
local TUN = "ndqtun0"
local TUN_IP4_A, TUN_IP4_B = "198.18.1.1", "198.18.1.2"
local TUN_IP6_A, TUN_IP6_B = "2001:db8:1::1", "2001:db8:1::2"
local LINKTYPE_ETHERNET, LINKTYPE_RAW = 1, 101
local ENCAP_ETHERNET, ENCAP_RAW_IP = "1", "7" -- tshark frame.encap_type (wiretap numbers)

pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } ndq_live_timespec;
int ndq_live_clock_gettime(int clk, ndq_live_timespec *tp) __asm__("clock_gettime");
]])
local u64 = ffi.typeof("uint64_t")

-- CLOCK_REALTIME in ns, exact (uint64 cdata).
local function wall_ns()
    local ts = ffi.new("ndq_live_timespec")
    assert(ffi.C.ndq_live_clock_gettime(0, ts) == 0)
    return u64(ts.tv_sec) * 1000000000ULL + ts.tv_nsec
end

-- "1795610195.844027969" (tshark frame.time_epoch) -> uint64 ns
local function epoch_ns(text)
    local s, f = text:match("^(%d+)%.(%d+)$")
    assert(s, "bad epoch time '" .. tostring(text) .. "'")
    f = (f .. "000000000"):sub(1, 9)
    return u64(tonumber(s)) * 1000000000ULL + tonumber(f)
end

local function u64_text(v)
    return (tostring(v):gsub("ULL$", ""))
end

local read_all = clirun.read_file

-- The pcapng blocks themselves (little-endian host): interfaces and packet headers.
local function read_blocks(path)
    local s = read_all(path)
    local function u16(o) local a, b = s:byte(o + 1, o + 2) return a + b * 256 end
    local function u32(o) return u16(o) + u16(o + 2) * 65536 end
    local function options(from, to)
        local opts = {}
        while from + 4 <= to do
            local code, len = u16(from), u16(from + 2)
            if code == 0 then break end
            opts[code] = s:sub(from + 5, from + 4 + len)
            from = from + 4 + math.ceil(len / 4) * 4
        end
        return opts
    end
    local out = { interfaces = {}, packets = {} }
    local off = 0
    assert(u32(0) == 0x0A0D0D0A, "no section header block at the start")
    assert(u32(8) == 0x1A2B3C4D, "not little-endian")
    while off < #s do
        local btype, blen = u32(off), u32(off + 4)
        assert(blen >= 12 and blen % 4 == 0 and off + blen <= #s, "bad block length at " .. off)
        assert(u32(off + blen - 4) == blen, "trailing length differs at " .. off)
        if btype == 0x0A0D0D0A then
            out.application = options(off + 24, off + blen - 4)[4]
        elseif btype == 1 then
            local o = options(off + 16, off + blen - 4)
            out.interfaces[#out.interfaces + 1] = {
                linktype = u16(off + 8), snaplen = u32(off + 12), name = o[2], tsresol = o[9],
            }
        elseif btype == 6 then
            out.packets[#out.packets + 1] = {
                ifid = u32(off + 8), ts = u64(u32(off + 12)) * 4294967296ULL + u32(off + 16),
                caplen = u32(off + 20), origlen = u32(off + 24),
            }
        end
        off = off + blen
    end
    assert(off == #s, "trailing bytes after the last block")
    return out
end

local TSHARK_FIELDS = {
    "frame.interface_name", "frame.encap_type", "frame.protocols", "frame.len", "frame.cap_len",
    "frame.time_epoch", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "udp.srcport", "udp.dstport",
    "tcp.srcport", "tcp.dstport", "tcp.flags", "icmp.type", "icmpv6.type", "frame.comment",
}

local function tshark_argv(input)
    local argv = { "tshark", "-r", input, "-T", "fields", "-E", "separator=/t", "-E", "quote=n",
        "-E", "occurrence=f" }
    for _, f in ipairs(TSHARK_FIELDS) do
        argv[#argv + 1] = "-e"
        argv[#argv + 1] = f
    end
    return argv
end

-- tshark's lines -> rows keyed by field name ("" where tshark has no value).
local function parse_tshark(text)
    local rows = {}
    for line in text:gmatch("[^\n]+") do
        local row, i = {}, 1
        for value in (line .. "\t"):gmatch("([^\t]*)\t") do
            row[TSHARK_FIELDS[i]] = value
            i = i + 1
        end
        assert(i - 1 == #TSHARK_FIELDS, "tshark line with " .. (i - 1) .. " fields: " .. line)
        rows[#rows + 1] = row
    end
    return rows
end

local function tshark_file(path)
    return parse_tshark(clirun.read_cmd(clirun.shell_line(tshark_argv(path)) .. " 2>/dev/null"))
end

local function comment(comm, pid, mark, tid)
    return ("comm: %s, pid: %d, tid: %d, queue: 0, mark: %d"):format(comm, pid, tid or pid,
        mark or 0)
end

local function sender_pid(output)
    local pid = tonumber(output:match("pid (%d+)"))
    assert(pid, "no pid line in: " .. output)
    return pid
end

-- The row tshark must show for a packet (the fields this packet has; the rest are "").
local function expect(p)
    local row = {}
    for _, f in ipairs(TSHARK_FIELDS) do row[f] = "" end
    local v6 = p.src:find(":", 1, true) ~= nil
    row["frame.interface_name"] = p.dev
    row["frame.encap_type"] = p.raw and ENCAP_RAW_IP or ENCAP_ETHERNET
    row["frame.len"] = tostring(p.len)
    row["frame.cap_len"] = tostring(math.min(p.snaplen, p.len))
    row[v6 and "ipv6.src" or "ip.src"] = p.src
    row[v6 and "ipv6.dst" or "ip.dst"] = p.dst
    local l3 = v6 and "ipv6" or "ip"
    local proto = p.proto
    if proto == "udp" then
        row["udp.srcport"], row["udp.dstport"] = tostring(p.sport), tostring(p.dport)
    elseif proto == "tcp" then
        row["tcp.srcport"], row["tcp.dstport"] = tostring(p.sport), tostring(p.dport)
        row["tcp.flags"] = p.flags
    elseif proto == "icmp" then
        row["icmp.type"] = "8"
    elseif proto == "icmpv6" then
        row["icmpv6.type"] = "128"
    end
    row["frame.protocols"] = (p.raw and "raw:" or "eth:ethertype:") .. l3 .. ":" .. proto
    row["frame.comment"] = p.comment
    return row
end

-- Puts the `tshark` rows and the expected packets side by side; the comment of a packet sent
-- from softirq context (p.comment == nil) is whatever task the tracer's own text line names.
local function check_rows(rows, want, text_events)
    assert.equal(#want, #rows, "packets in the file")
    for i, p in ipairs(want) do
        local row = rows[i]
        local exp = expect(p)
        if p.comment == nil then
            local ev = assert(text_events and text_events[i], "no text line for packet " .. i)
            exp["frame.comment"] = comment(ev.comm, ev.pid, ev.mark, ev.tid)
        end
        -- the link, network and transport layers tshark found; what it makes of the payload
        -- depends on its heuristic dissectors (test payloads can look like WireGuard)
        row["frame.protocols"] = row["frame.protocols"]:match("^(.-:" .. p.proto .. ")")
            or row["frame.protocols"]
        local ts = row["frame.time_epoch"]
        exp["frame.time_epoch"] = ts
        assert.same(exp, row, "packet " .. i)
        local t = epoch_ns(ts)
        assert.is_true(t >= p.after and t <= p.before, ("packet %d at %s, outside the window %s..%s")
            :format(i, ts, u64_text(p.after), u64_text(p.before)))
    end
end

-- Every tracer here ends on SIGINT; -d bounds it should a failing spec never send one.
local function cli_argv(args)
    local argv = { "-d", "60" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    return clirun.cli_argv(argv)
end

local wait_ready = live.wait_ready

-- Text lines from `-o TEXT_FIELDS` (comm last: it may hold spaces). The pcapng comment names the
-- socket owner when the kernel knows it (owner_*, "-" when absent), so the events do too.
local TEXT_FIELDS = "time,pid,tid,queue,mark,len,dev,owner_pid,owner_tid,owner_comm,comm"
local function parse_text(lines)
    local events, other = {}, {}
    for _, l in ipairs(lines) do
        local time, pid, tid, queue, mark, len, dev, opid, otid, ocomm, comm =
            l:match("^(%d%d:%d%d:%d%d%.%d%d%d%d%d%d) (%d+) (%d+) (%d+) (%d+) (%d+) (%S+) (%S+) "
                .. "(%S+) (%S+) (.+)$")
        if time then
            local owner = opid ~= "-"
            events[#events + 1] = { time = time, comm = owner and ocomm or comm,
                pid = tonumber(owner and opid or pid), tid = tonumber(owner and otid or tid),
                queue = tonumber(queue), mark = tonumber(mark), len = tonumber(len), dev = dev }
        else
            other[#other + 1] = l
        end
    end
    return events, other
end

-- "HH:MM:SS.uuuuuu" in local time for a pcapng timestamp, as the text output prints it.
local function local_time(ns)
    local sec = tonumber(ns / 1000000000ULL)
    local usec = tonumber((ns % 1000000000ULL) / 1000ULL)
    return os.date("%H:%M:%S", sec) .. (".%06d"):format(usec)
end

describe("netdevq -w: pcapng from real traffic #root", function()
    local pair, dir
    -- a tun device in namespace a: no link-layer header (ARPHRD_NONE), no reader attached, so it
    -- has no carrier and drops what it is given, after net_dev_queue saw it; it goes with the
    -- namespace
    local function add_tun(p)
        for _, argv in ipairs({
            { "ip", "tuntap", "add", "mode", "tun", "name", TUN },
            { "ip", "addr", "add", TUN_IP4_A .. "/24", "dev", TUN },
            { "ip", "addr", "add", TUN_IP6_A .. "/64", "dev", TUN, "nodad" },
            { "ip", "link", "set", TUN, "up" },
        }) do
            local ok, out = p:exec("a", argv)
            assert(ok, table.concat(argv, " ") .. ": " .. out)
        end
    end
    live.pair_each_test({ name = "ndqw", tmpdir = true, setup = add_tun }, function(p, d) pair, dir = p, d end)

    -- Runs a traffic step in namespace a; returns its output and the wall-clock window around it.
    local function send(argv)
        local after = wall_ns()
        local ok, out = pair:exec("a", argv)
        local before = wall_ns()
        assert(ok, table.concat(argv, " ") .. ": " .. out)
        return out, after, before
    end

    it("writes every packet of veth and tun traffic with interfaces, lengths, comments and "
        .. "timestamps, while printing text", function()
        netns.require_root()
        local file = dir .. "/out.pcapng"
        local tool = netns.ndq_send()
        local tracer = netns.spawn(cli_argv({ "-w", file, "-I", pair.veth_a, "-I", TUN,
            "-f", "netns == " .. pair.netns_a, "-o", TEXT_FIELDS }))
        finally(function() tracer:stop() end)
        wait_ready(tracer)

        local want = {}
        local function add(p, out, after, before)
            p.after, p.before = after, before
            p.snaplen = p.snaplen or DEFAULT_SNAPLEN
            if p.comment == true then p.comment = comment("ndq_send", sender_pid(out), p.mark) end
            want[#want + 1] = p
        end
        local a4, b4, a6, b6, veth = pair.ip4_a, pair.ip4_b, pair.ip6_a, pair.ip6_b, pair.veth_a

        -- UDP over IPv4 with SO_MARK, four sizes (the last two longer than the snap length)
        local out, t0, t1 = send({ tool, "--mark", "7", "udp4", a4, b4, "9000", "40000",
            "1,100,1000,1472" })
        for _, size in ipairs({ 1, 100, 1000, 1472 }) do
            add({ dev = veth, len = ETH + IP4 + UDP + size, src = a4, dst = b4, proto = "udp",
                sport = 40000, dport = 9000, mark = 7, comment = true }, out, t0, t1)
        end
        -- UDP over IPv6
        out, t0, t1 = send({ tool, "udp6", a6, b6, "9001", "40001", "100,1200" })
        for _, size in ipairs({ 100, 1200 }) do
            add({ dev = veth, len = ETH + IP6 + UDP + size, src = a6, dst = b6, proto = "udp",
                sport = 40001, dport = 9001, comment = true }, out, t0, t1)
        end
        -- ICMP echo requests (the replies leave on b's veth end, which is not traced)
        out, t0, t1 = send({ tool, "icmp4", a4, b4, "2" })
        assert.matches("replies 2", out)
        for _ = 1, 2 do
            add({ dev = veth, len = ETH + ICMP_ECHO4, src = a4, dst = b4, proto = "icmp",
                comment = true }, out, t0, t1)
        end
        out, t0, t1 = send({ tool, "icmp6", a6, b6, "1" })
        assert.matches("replies 1", out)
        add({ dev = veth, len = ETH + ICMP_ECHO6, src = a6, dst = b6, proto = "icmpv6",
            comment = true }, out, t0, t1)
        -- TCP: a connects and closes; SYN and FIN leave from the client's own context, the two
        -- ACKs from softirq (whichever task ran it: the text line says which)
        local listener = pair:spawn("b", { tool, "tcplisten", b4, "8080", "5000" })
        live.wait_line(listener, "^listening$")
        out, t0, t1 = send({ tool, "tcp4", a4, b4, "8080", "41000" })
        local lok, lcode, llines = listener:wait()
        assert(lok, "listener exit " .. tostring(lcode) .. ": " .. table.concat(llines, "\n"))
        local t2 = wall_ns()
        local tcp = { dev = veth, src = a4, dst = b4, proto = "tcp", sport = 41000, dport = 8080 }
        local function seg(flags, len, cmt, before)
            local p = { flags = flags, len = len, comment = cmt }
            for k, v in pairs(tcp) do p[k] = v end
            add(p, out, t0, before)
        end
        -- SYN: MSS, SACK-permitted, timestamps, window scale (20 option bytes); the rest carry
        -- timestamps (12)
        seg("0x0002", ETH + IP4 + 40, true, t1)
        seg("0x0010", ETH + IP4 + 32, nil, t1)
        seg("0x0011", ETH + IP4 + 32, true, t1)
        seg("0x0010", ETH + IP4 + 32, nil, t2)

        -- the tun device: raw IP, no Ethernet header
        out, t0, t1 = send({ tool, "udp4", TUN_IP4_A, TUN_IP4_B, "9002", "40002", "10,300" })
        for _, size in ipairs({ 10, 300 }) do
            add({ dev = TUN, raw = true, len = IP4 + UDP + size, src = TUN_IP4_A, dst = TUN_IP4_B,
                proto = "udp", sport = 40002, dport = 9002, comment = true }, out, t0, t1)
        end
        out, t0, t1 = send({ tool, "udp6", TUN_IP6_A, TUN_IP6_B, "9003", "40003", "20" })
        add({ dev = TUN, raw = true, len = IP6 + UDP + 20, src = TUN_IP6_A, dst = TUN_IP6_B,
            proto = "udp", sport = 40003, dport = 9003, comment = true }, out, t0, t1)

        -- Ctrl-C: the CLI drains what is pending, closes the file, prints the summary, exits 0
        assert.is_true(tracer:kill("INT"))
        local ok, code, lines = tracer:wait()
        assert.is_true(ok, "tracer exit " .. tostring(code) .. ":\n" .. table.concat(lines, "\n"))
        local events, other = parse_text(lines)
        local summary = other[#other]
        local n = #want
        assert.matches("^netdevq: %d+ events, " .. n .. " matched, 0 lost$", summary)

        -- the text printed at the same time: one line per packet, in file order
        assert.equal(n, #events, "text lines:\n" .. table.concat(lines, "\n"))
        for i, p in ipairs(want) do
            assert.same({ p.dev, p.len, 0 }, { events[i].dev, events[i].len, events[i].queue })
        end

        -- the blocks: two interfaces with the right link types, nanosecond resolution
        local blocks = read_blocks(file)
        assert.equal("netdevq", blocks.application)
        assert.same({
            { name = veth, linktype = LINKTYPE_ETHERNET, snaplen = DEFAULT_SNAPLEN, tsresol = "\9" },
            { name = TUN, linktype = LINKTYPE_RAW, snaplen = DEFAULT_SNAPLEN, tsresol = "\9" },
        }, blocks.interfaces)
        assert.equal(n, #blocks.packets)
        for i, p in ipairs(want) do
            local b = blocks.packets[i]
            assert.same({ ifid = p.raw and 1 or 0, caplen = math.min(p.len, DEFAULT_SNAPLEN),
                origlen = p.len }, { ifid = b.ifid, caplen = b.caplen, origlen = b.origlen })
            -- the text line's time is the same clock, cut to microseconds
            assert.equal(local_time(b.ts), events[i].time, "packet " .. i)
        end

        -- what tshark decodes
        check_rows(tshark_file(file), want, events)
    end)

    it("streams pcapng to standard output with -w - and cuts packets at -s", function()
        netns.require_root()
        local out_file, err_file = dir .. "/tshark.out", dir .. "/tshark.err"
        local tool = netns.ndq_send()
        local argv = cli_argv({ "-w", "-", "-s", "64", "-I", pair.veth_a,
            "-f", "netns == " .. pair.netns_a })
        -- sh: tracer | tshark -r - > out_file; the tracer's stderr stays on the spawn pipe
        local script = clirun.shell_line(argv) .. " | " .. clirun.shell_line(tshark_argv("-"))
            .. " >" .. out_file .. " 2>" .. err_file
        local pipeline = netns.spawn({ "sh", "-c", script })
        local tracer_pid
        finally(function()
            if tracer_pid then netns.run({ "kill", "-INT", tracer_pid }) end
            pipeline:stop()
        end)
        wait_ready(pipeline)
        -- the tracer is the luajit below the sh (tshark the other branch); wrappers (env, the
        -- sanitizer suite's) may put a level in between: search the whole subtree
        local function find_luajit(pid, depth)
            local cf = io.open("/proc/" .. pid .. "/task/" .. pid .. "/children")
            local children = cf and cf:read("*a") or ""
            if cf then cf:close() end
            for cpid in children:gmatch("%d+") do
                local f = io.open("/proc/" .. cpid .. "/comm")
                local comm = f and f:read("*l")
                if f then f:close() end
                if comm == "luajit" then return cpid end
                if depth < 4 then
                    local found = find_luajit(cpid, depth + 1)
                    if found then return found end
                end
            end
        end
        tracer_pid = find_luajit(pipeline.pid, 1)
        assert(tracer_pid, "no luajit below the pipeline's sh")

        local want = {}
        local a4, b4, a6, b6, veth = pair.ip4_a, pair.ip4_b, pair.ip6_a, pair.ip6_b, pair.veth_a
        local out, t0, t1 = send({ tool, "udp4", a4, b4, "9000", "40000", "1,30,1000" })
        local pid = sender_pid(out)
        for _, size in ipairs({ 1, 30, 1000 }) do
            want[#want + 1] = { dev = veth, len = ETH + IP4 + UDP + size, src = a4, dst = b4,
                proto = "udp", sport = 40000, dport = 9000, snaplen = 64, after = t0, before = t1,
                comment = comment("ndq_send", pid) }
        end
        out, t0, t1 = send({ tool, "udp6", a6, b6, "9001", "40001", "100" })
        want[#want + 1] = { dev = veth, len = ETH + IP6 + UDP + 100, src = a6, dst = b6,
            proto = "udp", sport = 40001, dport = 9001, snaplen = 64, after = t0, before = t1,
            comment = comment("ndq_send", sender_pid(out)) }

        -- Ctrl-C to the tracer; tshark then sees the end of the stream
        assert(netns.run({ "kill", "-INT", tracer_pid }))
        local ok, code, lines = pipeline:wait()
        tracer_pid = nil
        assert.is_true(ok, "pipeline exit " .. tostring(code) .. ":\n" .. table.concat(lines, "\n")
            .. "\ntshark: " .. read_all(err_file))
        -- standard output carried only pcapng: the tracer's own lines are all on stderr
        for _, l in ipairs(lines) do
            assert.matches("^netdevq: ", l)
        end
        assert.matches("^netdevq: %d+ events, 4 matched, 0 lost$", lines[#lines])
        check_rows(parse_tshark(read_all(out_file)), want)
    end)
end)
