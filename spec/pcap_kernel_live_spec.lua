-- pcap-filter expressions decided in the kernel (issue 16): libpcap's program, translated into
-- eBPF (csrc/cbpf_ebpf.c) and spliced into the net_dev_queue program, selects exactly the packets
-- tcpdump captures with the same expression on the same veth, in raw and btf mode, and the
-- packets it rejects never reach the ring buffer.
--
-- The traffic: hand-built frames (support.frames, sent with ndq_frames through AF_PACKET) with
-- 802.1Q and 802.1ad tags, ARP, IPv4 fragments, IPv6 extension headers, TCP flags, bytes past
-- 128 and past 256, and a real TCP transfer whose payload lies in the sk_buff's paged fragments.
-- Packets are compared by wire length and their first 40 bytes. The pair is quiet (no ND, no
-- DAD); multicast frames (MLD at link-up) are left out of the comparison.
local netns = require("support.netns")
local clirun = require("support.clirun")
local live = require("support.live")
local frames = require("support.frames")
local ffi = require("ffi")

-- probe: raw mode with --read probe, where the expression reads a copy of the frame; raw
-- (--read direct) and btf read the packet itself on Linux 6.16+, a copy before
local MODES = { "raw", "btf", "probe" }
local KEY_BYTES = 40

-- open options for a mode; the events carry the header bytes the comparison reads (-s 64)
local function in_mode(mode, opts)
    opts.mode = mode == "probe" and "raw" or mode
    opts.read = mode == "probe" and "probe" or nil
    opts.snaplen = opts.snaplen or 64
    return opts
end

local function tool(name)
    return clirun.build_dir() .. "/" .. name
end

local function u16(n) return ("%04x"):format(n) end

-- payload_len bytes of 'x' with text hex written at offset at
local function payload(len, at, text_hex)
    local p = ("78"):rep(len)
    if at then p = p:sub(1, at * 2) .. text_hex .. p:sub(at * 2 + #text_hex + 1) end
    return p
end

-- IPv4 with the flags/fragment offset field set (the header checksum is then stale: tcpdump
-- and the filter do not check it)
local function ipv4_frag(pair, proto, frag, payload_hex)
    local h = frames.ipv4(pair, proto, payload_hex)
    return h:sub(1, 12) .. u16(frag) .. h:sub(17)
end

local function udp(sport, dport, body_hex)
    return u16(sport) .. u16(dport) .. u16(8 + #body_hex / 2) .. "0000" .. body_hex
end

local function tcp(sport, dport, flags, body_hex)
    return u16(sport) .. u16(dport) .. "00000001" .. "00000001" .. "50" .. flags .. "ffff"
        .. "00000000" .. (body_hex or "")
end

local function mac_hex(mac) return (mac:gsub(":", "")) end

local function arp(pair, op, dst_mac)
    local v4 = function(a) return ("%02x%02x%02x%02x"):format(a:match("(%d+)%.(%d+)%.(%d+)%.(%d+)")) end
    return dst_mac .. mac_hex(pair.mac_a) .. "0806" .. "000108000604" .. "000" .. op .. mac_hex(pair.mac_a)
        .. v4(pair.ip4_a) .. (op == "2" and mac_hex(pair.mac_b) or "000000000000") .. v4(pair.ip4_b)
        .. ("00"):rep(18)
end

local function crafted(pair)
    local eth, ipv4, ipv6 = frames.eth, frames.ipv4, frames.ipv6
    local get = "474554202f20485454502f312e300d0a" -- "GET / HTTP/1.0\r\n"
    local hbh_to_frag = "2c00" .. "0000" .. "00000000"    -- hop-by-hop, next: fragment
    local frag_to_tcp = "0600" .. "0000" .. "00000001"    -- fragment (offset 0, last), next: TCP
    local rt0_to_udp = "11" .. "02" .. "00" .. "00" .. "00000000" .. frames.v6_hex(pair.ip6_b)
    return {
        -- "AB" at udp[300] (frame offset 342: past 256) and "AC" there; 0x41 at ether[200]
        eth(pair, "0800" .. ipv4(pair, 17, udp(40000, 7000, payload(400, 292, "4142")))),
        eth(pair, "0800" .. ipv4(pair, 17, udp(40001, 7000, payload(410, 292, "4143")))),
        eth(pair, "0800" .. ipv4(pair, 17, udp(40002, 7002, payload(220, 158, "41")))),
        -- 802.1Q (VID 100 and 200) and 802.1ad over 802.1Q
        eth(pair, "8100" .. "0064" .. "0800" .. ipv4(pair, 17, udp(40003, 7003, payload(40)))),
        eth(pair, "8100" .. "00c8" .. "0800" .. ipv4(pair, 6, tcp(40004, 443, "02"))),
        eth(pair, "88a8" .. "012c" .. "8100" .. "0064" .. "0800" .. ipv4(pair, 17, udp(40005, 7005, payload(30)))),
        -- ARP request (broadcast) and reply
        arp(pair, "1", "ffffffffffff"),
        arp(pair, "2", mac_hex(pair.mac_b)),
        -- IPv4 fragments: the first (more fragments) and a later one
        eth(pair, "0800" .. ipv4_frag(pair, 17, 0x2000, udp(40006, 7006, payload(200)))),
        eth(pair, "0800" .. ipv4_frag(pair, 17, 0x00b9, payload(100))),
        -- IPv6: hop-by-hop and fragment headers before TCP; a routing header before UDP with
        -- "AB" at ip6[300]; plain UDP
        eth(pair, "86dd" .. ipv6(pair, 0, hbh_to_frag .. frag_to_tcp .. tcp(40007, 8080, "02"))),
        eth(pair, "86dd" .. ipv6(pair, 43, rt0_to_udp .. udp(40008, 7008, payload(500, 300 - 40 - 24 - 8, "4142")))),
        eth(pair, "86dd" .. ipv6(pair, 17, udp(40009, 7009, payload(20)))),
        -- TCP: a SYN to 443, a PSH|ACK carrying "GET / ..."; ICMP echo
        eth(pair, "0800" .. ipv4(pair, 6, tcp(40010, 443, "02"))),
        eth(pair, "0800" .. ipv4(pair, 6, tcp(40011, 80, "18", get))),
        eth(pair, "0800" .. ipv4(pair, 1, "0800" .. "0000" .. "0001" .. "0001" .. payload(56))),
    }
end

-- The corpus (pcap_live_spec has the common expressions); each selects at least one frame
local function corpus(pair)
    return {
        "vlan", "vlan 100 and udp", "vlan and vlan 100 and udp", "ether proto 0x88a8",
        "arp", "arp[7] = 2", "ether broadcast", "ether dst " .. pair.mac_b, "ether src " .. pair.mac_a,
        "ip6 protochain 6", "ip6 protochain 17", "ip[6:2] & 0x1fff != 0", "ip[6] & 0x20 != 0",
        "udp and ip[6:2] & 0x3fff = 0", "tcp[tcpflags] & tcp-syn != 0",
        "tcp[tcpflags] & (tcp-push|tcp-ack) == (tcp-push|tcp-ack)", "udp[300:2] = 0x4142",
        "ip6[300:2] = 0x4142", "ether[200] = 0x41", "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420",
        "tcp port 443", "icmp[icmptype] = icmp-echo", "greater 400", "less 80", "ip6 and udp",
        "not vlan and not arp and not ip6",
    }
end

-- Packets ------------------------------------------------------------------------------------------

local function key(len, bytes, n)
    local hex = {}
    for i = 0, math.min(n, KEY_BYTES) - 1 do hex[#hex + 1] = ("%02x"):format(bytes[i]) end
    return len .. " " .. table.concat(hex)
end

-- frames from a to b, not multicast
local function ours(bytes, n, pair)
    if n < 12 then return false end
    local dst = ("%02x:%02x:%02x:%02x:%02x:%02x"):format(bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5])
    local src = ("%02x:%02x:%02x:%02x:%02x:%02x"):format(bytes[6], bytes[7], bytes[8], bytes[9], bytes[10], bytes[11])
    return src == pair.mac_a and (dst == pair.mac_b or dst == "ff:ff:ff:ff:ff:ff")
end

-- the packets of a classic pcap file (tcpdump -w) as keys
local function pcap_keys(path, pair)
    local data = assert(clirun.read_file(path))
    local p = ffi.cast("const uint8_t *", data)
    local u32 = function(off) return ffi.cast("const uint32_t *", p + off)[0] end
    assert(u32(0) == 0xa1b2c3d4 or u32(0) == 0xa1b23c4d, "not a pcap file: " .. path)
    local keys, off = {}, 24
    while off + 16 <= #data do
        local caplen, len = u32(off + 8), u32(off + 12)
        local bytes = p + off + 16
        if ours(bytes, caplen, pair) then keys[#keys + 1] = key(len, bytes, caplen) end
        off = off + 16 + caplen
    end
    table.sort(keys)
    return keys
end

local event = require("netdevq.event")

-- a tracer whose events become keys in list (and data_len by key in lens)
local function tracer(netdevq, opts, list, pair, lens)
    local t = assert(netdevq.open(opts))
    t:on_event(function(ev)
        local e = event.pointer(ev)
        if ours(e.snap, e.snap_len, pair) then
            local k = key(e.len, e.snap, e.snap_len)
            list[#list + 1] = k
            if lens then lens[k] = e.data_len end
        end
    end)
    return t
end

local function start_tcpdump(pair, expr, path)
    local argv = { "tcpdump", "-i", pair.veth_a, "-Q", "out", "--immediate-mode", "-nn", "-s", "0",
                   "-Z", "root", "-w", path }
    for w in expr:gmatch("%S+") do argv[#argv + 1] = w end
    local p = pair:spawn("a", argv)
    -- (libpcap says when the kernel's socket filter refuses the program: protochain loops)
    local l = live.wait_line(p, "^tcpdump: listening on")
    assert(l, "tcpdump " .. expr .. " did not start")
    return p
end

local minus = live.missing

pcall(ffi.cdef, [[
int open(const char *path, int flags);
int close(int fd);
int ioctl(int fd, unsigned long request, void *arg);
]]) -- (already declared when another file did)

-- a tun device (no packet information header) held by the returned fd
local function tun_open(name)
    local fd = ffi.C.open("/dev/net/tun", 2) -- O_RDWR
    assert(fd >= 0, "cannot open /dev/net/tun")
    local ifr = ffi.new("uint8_t[40]")
    ffi.copy(ifr, name)
    ffi.cast("uint16_t *", ifr + 16)[0] = 0x0001 + 0x1000 -- IFF_TUN | IFF_NO_PI
    if ffi.C.ioctl(fd, 0x400454ca, ifr) ~= 0 then -- TUNSETIFF
        ffi.C.close(fd)
        error("TUNSETIFF " .. name .. " failed")
    end
    return fd
end

local function stop_tcpdump(p)
    p:kill("INT")
    p:wait()
end

describe("pcap expressions decided in the kernel against tcpdump #root", function()
    local pair, dir
    live.pair_each_test({ name = "ndqk", tmpdir = true, static_neigh = true },
        function(p, d) pair, dir = p, d end)

    it("select tcpdump's packets in raw and btf mode; rejected packets never cross", function()
        netns.require_root()
        local netdevq = require("netdevq")
        local scope = ('dev == "%s" and netns == %d'):format(pair.veth_a, pair.netns_a)
        local exprs = corpus(pair)
        local dumps, tracers, got, base = {}, {}, {}, {}
        finally(function()
            for _, d in pairs(dumps) do d:stop() end
            for _, t in pairs(tracers) do t:close() end
        end)
        for i, expr in ipairs(exprs) do
            dumps[i] = start_tcpdump(pair, expr, ("%s/%d.pcap"):format(dir, i))
            for _, mode in ipairs(MODES) do
                local k = mode .. " " .. i
                got[k] = {}
                tracers[k] = tracer(netdevq, in_mode(mode, { pcap = expr, filter = scope,
                    ringbuf_size = 65536 }), got[k], pair)
            end
        end
        for _, mode in ipairs(MODES) do -- every frame on the device, no expression
            base[mode] = {}
            tracers[mode] = tracer(netdevq, in_mode(mode, { filter = scope }), base[mode], pair)
        end

        local list = crafted(pair)
        local argv = { tool("ndq_frames"), "frames", pair.veth_a }
        for _, f in ipairs(list) do argv[#argv + 1] = f end
        local ok, out = pair:exec("a", argv)
        assert(ok, out)
        live.poll_all(tracers, 500)
        for _, d in pairs(dumps) do stop_tcpdump(d) end
        dumps = {}

        local failures = {}
        for _, mode in ipairs(MODES) do
            assert.equal(#list, #base[mode], mode .. ": frames on the device")
        end
        for i, expr in ipairs(exprs) do
            local want = pcap_keys(("%s/%d.pcap"):format(dir, i), pair)
            for _, mode in ipairs(MODES) do
                local k = mode .. " " .. i
                local mine = got[k]
                table.sort(mine)
                local extra, lacking = minus(mine, want), minus(want, mine)
                if #extra > 0 or #lacking > 0 or #want == 0 then
                    failures[#failures + 1] = ("%s (%s): netdevq %d, tcpdump %d\n  only netdevq:\n%s"
                        .. "\n  only tcpdump:\n%s"):format(expr, mode, #mine, #want, table.concat(extra, "\n"),
                        table.concat(lacking, "\n"))
                end
                -- the kernel decided: what crossed is exactly what matched, user space dropped nothing
                local st = assert(tracers[k]:stats())
                assert.equal("kernel", tracers[k].plan.pcap_path, expr)
                assert.equal(0, st.pcap_dropped, expr)
                assert.equal(0, st.lost, expr)
                assert.equal(#mine, st.emitted, expr .. " (" .. mode .. "): emitted")
                assert.is_true(st.kfiltered >= #base[mode] - #mine, expr)
            end
        end
        print(("\npcap kernel live: %d expressions x %d modes against tcpdump on %d frames")
            :format(#exprs, #MODES, #list))
        assert(#failures == 0, table.concat(failures, "\n"))
    end)

    it("reads no paged fragments: a payload there does not match (tcpdump's does)", function()
        netns.require_root()
        local netdevq = require("netdevq")
        local scope = ('dev == "%s" and netns == %d'):format(pair.veth_a, pair.netns_a)
        local expr = "tcp[((tcp[12:1] & 0xf0) >> 2):1] = 0x78" -- the first payload byte is 'x'
        local tracers, got, base, lens = {}, {}, {}, {}
        local dump
        finally(function()
            if dump then dump:stop() end
            for _, t in pairs(tracers) do t:close() end
        end)
        dump = start_tcpdump(pair, expr, dir .. "/paged.pcap")
        for _, mode in ipairs(MODES) do
            got[mode] = {}
            tracers[mode] = tracer(netdevq, in_mode(mode, { pcap = expr, filter = scope }), got[mode],
                pair)
        end
        tracers.base = tracer(netdevq, { filter = scope, snaplen = 64 }, base, pair, lens)
        local sink = pair:spawn("b", { netns.ndq_send(), "tcpsink", pair.ip4_b, "8090", "5000" })
        live.wait_line(sink, "^listening$")
        live.send(pair, "a", { "tcpbulk", pair.ip4_a, pair.ip4_b, "8090", "41090", "300000" })
        live.wait_all({ sink }, "tcpsink")
        live.poll_all(tracers, 500)
        stop_tcpdump(dump)
        dump = nil

        local want, linear, paged = pcap_keys(dir .. "/paged.pcap", pair), {}, 0
        for _, k in ipairs(want) do
            assert(lens[k], "tcpdump's packet not among the device's: " .. k)
            if lens[k] == 0 then linear[#linear + 1] = k else paged = paged + 1 end
        end
        assert.is_true(paged > 0, "no packet with a paged payload: the case was not exercised")
        for _, mode in ipairs(MODES) do
            table.sort(got[mode])
            assert.same(linear, got[mode], mode)
        end
    end)

    it("aggregates in the kernel behind the expression: no event crosses (--count dev)", function()
        netns.require_root()
        local netdevq = require("netdevq")
        local scope = ('dev == "%s" and netns == %d'):format(pair.veth_a, pair.netns_a)
        local tracers = {}
        finally(function()
            for _, t in pairs(tracers) do t:close() end
        end)
        for _, mode in ipairs(MODES) do
            tracers[mode] = assert(netdevq.open(in_mode(mode, { filter = scope, pcap = "tcp port 443",
                aggregations = { { kind = "count", keys = { "dev" } } } })))
            assert.is_table(tracers[mode].plan.kernel_agg)
            assert.equal(0, tracers[mode].plan.cfg.emit)
        end
        local list = crafted(pair)
        local argv = { tool("ndq_frames"), "frames", pair.veth_a }
        for _, f in ipairs(list) do argv[#argv + 1] = f end
        local ok, out = pair:exec("a", argv)
        assert(ok, out)
        clirun.sleep(0.2)
        for _, mode in ipairs(MODES) do
            local st = assert(tracers[mode]:stats())
            assert.equal(0, st.emitted, mode)
            assert.equal(0, st.received, mode)
            assert.equal(1, st.aggregated, mode) -- the SYN to 443 (the tagged one: only `vlan and ...`)
            local entries = assert(tracers[mode]:aggregations())[1]:entries()
            assert.equal(1, #entries, mode)
            assert.same({ pair.veth_a }, entries[1].key, mode)
            assert.equal(1, entries[1].count, mode)
        end
        -- -v says where the expression runs
        local r = clirun.cli({ "-v", "-d", "1", "--count", "dev", "tcp", "port", "443" })
        assert.equal(0, r.code, r.err)
        assert.matches("\nnetdevq: pcap filter decided in the kernel %(%d+ eBPF instructions for Ethernet, "
            .. "%d+ for raw IP%)\n", "\n" .. r.err)
    end)

    it("decides the raw IP program on a device without a link header (tun), as tcpdump", function()
        netns.require_root()
        local netdevq = require("netdevq")
        -- a tun device this process holds open (so its carrier is up) and never reads: what is
        -- routed to it is queued (net_dev_queue), seen by tcpdump, and dropped
        local tun = tun_open("ndqtun0")
        local dumps, tracers, got = {}, {}, {}
        finally(function()
            for _, d in pairs(dumps) do d:stop() end
            for _, t in pairs(tracers) do t:close() end
            ffi.C.close(tun)
        end)
        assert(netns.run({ "ip", "link", "set", "ndqtun0", "netns", pair.ns_a }))
        for _, argv in ipairs({ { "ip", "addr", "add", "198.18.1.1/24", "dev", "ndqtun0" },
                                { "ip", "link", "set", "ndqtun0", "up" } }) do
            local ok, out = pair:exec("a", argv)
            assert(ok, out)
        end
        local scope = ('dev == "ndqtun0" and netns == %d'):format(pair.netns_a)
        local exprs = { "udp dst port 7000", "greater 300 and udp", "ip[6:2] & 0x1fff != 0",
                        "udp[300:2] = 0x7878 or icmp" }
        for i, expr in ipairs(exprs) do
            local argv = { "tcpdump", "-i", "ndqtun0", "-Q", "out", "--immediate-mode", "-nn", "-s", "0",
                           "-Z", "root", "-w", ("%s/tun%d.pcap"):format(dir, i) }
            for w in expr:gmatch("%S+") do argv[#argv + 1] = w end
            dumps[i] = pair:spawn("a", argv)
            assert(live.wait_line(dumps[i], "^tcpdump: listening on"), "tcpdump " .. expr)
            for _, mode in ipairs(MODES) do
                local k = mode .. " " .. i
                got[k] = {}
                local t = assert(netdevq.open(in_mode(mode, { pcap = expr, filter = scope,
                    ringbuf_size = 65536 })))
                t:on_event(function(ev)
                    local e = event.pointer(ev)
                    got[k][#got[k] + 1] = key(e.len, e.snap, e.snap_len)
                end)
                tracers[k] = t
            end
        end
        live.send_steps(pair, {
            { "a", "udp4", "198.18.1.1", "198.18.1.2", "7000", "40000", "20,400,2000" },
            { "a", "udp4", "198.18.1.1", "198.18.1.2", "7001", "40001", "500" },
            { "a", "icmp4", "198.18.1.1", "198.18.1.2", "1" },
        })
        live.poll_all(tracers, 500)
        for i, d in pairs(dumps) do
            stop_tcpdump(d)
            dumps[i] = nil
        end
        for i, expr in ipairs(exprs) do
            local data = assert(clirun.read_file(("%s/tun%d.pcap"):format(dir, i)))
            local p = ffi.cast("const uint8_t *", data)
            local u32 = function(off) return ffi.cast("const uint32_t *", p + off)[0] end
            local want, off = {}, 24
            while off + 16 <= #data do
                want[#want + 1] = key(u32(off + 12), p + off + 16, u32(off + 8))
                off = off + 16 + u32(off + 8)
            end
            table.sort(want)
            assert.is_true(#want > 0, expr)
            for _, mode in ipairs(MODES) do
                local mine = got[mode .. " " .. i]
                table.sort(mine)
                assert.same(want, mine, expr .. " (" .. mode .. ")")
            end
        end
    end)

    it("falls back to user space in one line when the kernel refuses the program", function()
        netns.require_root()
        -- four protochain loops: more paths than the verifier explores (E2BIG)
        local expr = "ip6 protochain 6 or ip6 protochain 17 or ip6 protochain 58 or ip protochain 1"
        local r = clirun.cli({ "-v", "-d", "1", "-q", expr })
        assert.equal(0, r.code, r.err)
        local refused = {}
        for l in r.err:gmatch("[^\n]+") do
            if l:match("^netdevq: pcap filter") then refused[#refused + 1] = l end
        end
        assert.equal(2, #refused, r.err)
        assert.matches("^netdevq: pcap filter: the kernel refused it in raw mode %(.*%): "
            .. "the expression runs in user space$", refused[1])
        assert.equal("netdevq: pcap filter decided in user space (libpcap)", refused[2])
    end)
end)
