local ffi = require("ffi")
local cjson = require("cjson")
local abi = require("netdevq.abi")

-- An event with every member set; o overrides (addresses as byte lists).
local function make_event(o)
    o = o or {}
    local ev = ffi.new("struct netdevq_event")
    ev.ts = o.ts or 5000123456ULL
    ev.skb = 0xffff888012345678ULL
    ev.cgroup = 4242
    ev.pid, ev.tid, ev.cpu = o.pid or 1234, 1235, 1
    ev.ifindex, ev.netns = 7, 4026531840
    ev.len, ev.data_len = o.len or 1514, 1000
    ev.mac_len, ev.hdr_len = 14, 66
    ev.queue, ev.gso_size, ev.gso_segs = 3, 1448, 2
    ev.ethertype = o.ethertype or 0x0800
    ev.priority, ev.mark, ev.hash = 6, 0xdeadbeef, 0x12345678
    ev.l3 = o.l3 or 4
    local saddr = o.saddr or { 198, 18, 0, 1 }
    local daddr = o.daddr or { 198, 18, 0, 2 }
    for i = 1, #saddr do ev.saddr[i - 1] = saddr[i] end
    for i = 1, #daddr do ev.daddr[i - 1] = daddr[i] end
    ev.sport, ev.dport = o.sport or 40000, o.dport or 443
    ev.proto = o.proto or 6
    ev.tcp_flags = 0x12
    ev.ttl, ev.tos = 64, 0
    for i = 0, 5 do
        ev.smac[i] = 0x02 + i
        ev.dmac[i] = 0xa0 + i
    end
    ev.flags = o.flags or 7
    ffi.copy(ev.comm, o.comm or "curl")
    ffi.copy(ev.dev, o.dev or "veth0")
    return ev, ffi.cast("const struct netdevq_event *", ev)
end

local IP6_SRC = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 }
local IP6_DST = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2 }

-- A file handle that records what is written, or fails like a closed pipe.
local function sink(fail)
    local f = { data = {}, writes = 0 }
    function f:write(...)   -- luacheck: ignore 212
        self.writes = self.writes + 1
        if fail then
            return nil, "Broken pipe", 32
        end
        for i = 1, select("#", ...) do
            self.data[#self.data + 1] = select(i, ...)
        end
        return self
    end
    function f:flush()
        if fail then
            return nil, "Broken pipe", 32
        end
        return self
    end
    function f:text()
        return table.concat(self.data)
    end
    return f
end

describe("netdevq.output #unit", function()
    local catalogue, clock, event, output, TIME

    setup(function()
        catalogue = require("netdevq.catalogue")
        clock = require("netdevq.clock")
        event = require("netdevq.event")
        output = require("netdevq.output")
        TIME = os.date("%H:%M:%S", 1700000005) .. ".000123"
    end)

    before_each(function()
        clock.calibrate(1700000000000000000LL)   -- ts 5000123456 -> 1700000005.000123456
    end)

    describe("text", function()
        it("writes the default line for TCP over IPv4", function()
            local _, p = make_event()
            assert.are.equal(TIME .. " curl 1234 veth0 1514 tcp 198.18.0.1:40000 > 198.18.0.2:443 [S.]",
                             output.text():format(p))
        end)

        it("writes the default line for UDP over IPv6 with [addr]:port", function()
            local _, p = make_event{ l3 = 6, ethertype = 0x86dd, proto = 17, flags = 3,
                                     saddr = IP6_SRC, daddr = IP6_DST, sport = 5353,
                                     dport = 53, len = 80 }
            assert.are.equal(TIME .. " curl 1234 veth0 80 udp [2001:db8::1]:5353 > [2001:db8::2]:53",
                             output.text():format(p))
        end)

        it("leaves the ports out when the event has none", function()
            local _, p = make_event{ proto = 1, flags = 1, len = 98, comm = "ping" }
            assert.are.equal(TIME .. " ping 1234 veth0 98 icmp 198.18.0.1 > 198.18.0.2",
                             output.text():format(p))
            local _, q = make_event{ l3 = 6, ethertype = 0x86dd, proto = 58, flags = 0,
                                     saddr = IP6_SRC, daddr = IP6_DST, len = 104 }
            assert.are.equal(TIME .. " curl 1234 veth0 104 icmpv6 2001:db8::1 > 2001:db8::2",
                             output.text():format(q))
        end)

        it("writes the ethertype and no addresses for a packet that is not IP", function()
            local _, p = make_event{ l3 = 0, ethertype = 0x0806, flags = 1, len = 42 }
            assert.are.equal(TIME .. " curl 1234 veth0 42 arp", output.text():format(p))
            local _, q = make_event{ l3 = 0, ethertype = 0x88b5, flags = 1, len = 60 }
            assert.are.equal(TIME .. " curl 1234 veth0 60 0x88b5", output.text():format(q))
            local _, r = make_event{ l3 = 0, ethertype = 0, flags = 0, len = 60, dev = "" }
            assert.are.equal(TIME .. " curl 1234 - 60 -", output.text():format(r))
        end)

        it("writes ARP as tcpdump's one-line form: who-has ... tell ..., ... is-at ...", function()
            local ARP = abi.EV.ARP
            local function arp(op, sha, spa, tha, tpa)
                local ev, p = make_event{ l3 = 0, ethertype = 0x0806, flags = 1 + ARP, len = 42 }
                ev.arp_op = op
                for i = 1, 6 do ev.arp_sha[i - 1], ev.arp_tha[i - 1] = sha[i], tha[i] end
                for i = 1, 4 do ev.arp_spa[i - 1], ev.arp_tpa[i - 1] = spa[i], tpa[i] end
                return p
            end
            local A, B, Z = { 2, 0, 0, 0, 0, 1 }, { 2, 0, 0, 0, 0, 0xb }, { 0, 0, 0, 0, 0, 0 }
            local a, b = { 198, 18, 0, 1 }, { 198, 18, 0, 2 }
            assert.are.equal(TIME .. " curl 1234 veth0 42 arp who-has 198.18.0.2 tell 198.18.0.1",
                             output.text():format(arp(1, A, a, Z, b)))
            assert.are.equal(TIME .. " curl 1234 veth0 42 arp 198.18.0.2 is-at 02:00:00:00:00:0b",
                             output.text():format(arp(2, B, b, A, a)))
            assert.are.equal(TIME .. " curl 1234 veth0 42 arp rarp request 198.18.0.1 > 198.18.0.2",
                             output.text():format(arp(3, A, a, Z, b)))
            -- the fields: names in text, numbers and addresses elsewhere; absent when not ARP
            local w = output.text{ fields = { "arp_op", "arp_sha", "arp_spa", "arp_tha", "arp_tpa",
                                               "saddr" } }
            assert.are.equal("reply 02:00:00:00:00:0b 198.18.0.2 02:00:00:00:00:01 198.18.0.1 -",
                             w:format(arp(2, B, b, A, a)))
            assert.are.equal('{"type":"event","arp_op":2,"arp_spa":"198.18.0.2"}',
                             output.json{ fields = { "arp_op", "arp_spa", "saddr" } }
                                 :format(arp(2, B, b, A, a)))
            local _, tcp = make_event()
            assert.are.equal("- - - - - 198.18.0.1", w:format(tcp))
        end)

        it("writes the chosen fields in order, '-' for absent ones", function()
            local _, p = make_event{ proto = 1, flags = 0 }
            local w = output.text{ fields = { "pid", "dport", "dev", "smac", "proto", "ts", "skb" } }
            assert.are.equal("1234 - veth0 - icmp 5000123456 0xffff888012345678", w:format(p))
        end)

        it("writes integers of 15 and more digits exactly", function()
            local _, p = make_event{ ts = 1234567890123456ULL }
            assert.are.equal("1234567890123456 4026531840",
                             output.text{ fields = { "ts", "netns" } }:format(p))
        end)

        it("takes an event view as well as a pointer", function()
            local _, p = make_event()
            local ev = event.view(p)
            local w = output.text{ fields = { "comm", "len" } }
            assert.are.equal("curl 1514", w:format(ev))
        end)

        it("writes one line per event to its file", function()
            local _, p = make_event()
            local f = sink()
            local w = output.text{ fields = { "pid", "dport" }, file = f }
            assert.is_true(w:event(p))
            assert.is_true(w:event(p))
            assert.is_true(w:flush())
            assert.are.equal("1234 443\n1234 443\n", f:text())
        end)

        it("reports lost events and the summary on err_file", function()
            local out, err = sink(), sink()
            local w = output.text{ file = out, err_file = err }
            assert.is_true(w:lost(17))
            assert.is_true(w:summary{ events = 100, matched = 40, lost = 17, duration_s = 2.5 })
            assert.are.equal("", out:text())
            assert.are.equal("netdevq: 17 events lost (ring buffer full; a larger --ringbuf-size "
                             .. "or a kernel-side filter helps)\n"
                             .. "netdevq: 100 events, 40 matched, 17 lost\n", err:text())
        end)
    end)

    describe("json", function()
        it("writes every present field of an event when no fields are chosen", function()
            local _, p = make_event()
            local line = output.json():format(p)
            assert.are.equal('{"type":"event","ts":5000123456,"time":"', line:sub(1, 40))
            assert.are.same({
                type = "event",
                ts = 5000123456, time = "2023-11-14T22:13:25.000123456Z", cpu = 1, pid = 1234,
                tid = 1235, comm = "curl",
                cgroup = 4242, skb = "0xffff888012345678", dev = "veth0", ifindex = 7,
                netns = 4026531840, len = 1514, data_len = 1000, mac_len = 14, hdr_len = 66,
                queue = 3, priority = 6, mark = 0xdeadbeef, hash = 0x12345678, gso_size = 1448,
                gso_segs = 2, ethertype = "ipv4", smac = "02:03:04:05:06:07",
                dmac = "a0:a1:a2:a3:a4:a5", saddr = "198.18.0.1", daddr = "198.18.0.2",
                proto = "tcp", sport = 40000, dport = 443, tcp_flags = "S.", ttl = 64, tos = 0,
            }, cjson.decode(line))
        end)

        it("omits absent fields", function()
            local _, p = make_event{ l3 = 0, ethertype = 0x0806, flags = 0 }
            local t = cjson.decode(output.json():format(p))
            for _, name in ipairs{ "smac", "dmac", "saddr", "daddr", "proto", "sport", "dport",
                                   "tcp_flags", "ttl", "tos" } do
                assert.is_nil(t[name], name)
            end
            assert.are.equal("arp", t.ethertype)
            local n = 0
            for _ in pairs(t) do n = n + 1 end
            assert.are.equal(1 + 22, n)
        end)

        it("writes only the chosen fields, in their order, absent ones omitted", function()
            local _, p = make_event{ proto = 17, flags = 3 }
            local w = output.json{ fields = { "dport", "comm", "tcp_flags", "saddr", "len" } }
            local line = w:format(p)
            assert.are.equal('{"type":"event","dport":443,"comm":"curl","saddr":"198.18.0.1",'
                             .. '"len":1514}', line)
            assert.are.same({ type = "event", dport = 443, comm = "curl", saddr = "198.18.0.1",
                              len = 1514 }, cjson.decode(line))
        end)

        it("escapes comm and dev: control bytes, backslash and invalid UTF-8 as \\xNN text", function()
            local _, p = make_event{ comm = 'a"b\\c\n\255', dev = "e\tf\27[2J" }
            local line = output.json{ fields = { "comm", "dev" } }:format(p)
            assert.are.equal([[{"type":"event","comm":"a\"b\\\\c\\x0a\\xff","dev":"e\\x09f\\x1b[2J"}]],
                             line)
            assert.are.same({ type = "event", comm = 'a"b\\\\c\\x0a\\xff', dev = "e\\x09f\\x1b[2J" },
                            cjson.decode(line))
        end)

        it("keeps addr:port > addr:port when -o names the addresses, whatever the order", function()
            local _, p = make_event()
            assert.are.equal("1514 198.18.0.1:40000 > 198.18.0.2:443 tcp",
                output.text{ fields = { "len", "dport", "saddr", "daddr", "sport", "proto" } }:format(p))
            assert.are.equal("198.18.0.1 > 198.18.0.2 1514",
                output.text{ fields = { "daddr", "len", "saddr" } }:format(p))
            assert.are.equal("198.18.0.1 1514 443",
                output.text{ fields = { "saddr", "len", "dport" } }:format(p))
            local _, q = make_event{ l3 = 6, saddr = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 1 }, daddr = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2 } }
            assert.are.equal("[2001:db8::1]:40000 > [2001:db8::2]:443",
                output.text{ fields = { "saddr", "sport", "daddr", "dport" } }:format(q))
            local _, r = make_event{ l3 = 0, ethertype = 0x0806, flags = 0 }
            assert.are.equal("- 1514", output.text{ fields = { "saddr", "daddr", "len" } }:format(r))
        end)

        it("escapes comm and dev in text the same way, so no line can be forged", function()
            local _, p = make_event{ comm = "x\nfake line", dev = "\27]0;t\7" }
            local line = output.text{ fields = { "comm", "dev", "len" } }:format(p)
            assert.are.equal("x\\x0afake line \\x1b]0;t\\x07 1514", line)
            assert.is_nil(line:find("[%z\1-\31\127-\255]"))
        end)

        it("writes integers of 15 and more digits exactly", function()
            local _, p = make_event{ ts = 1234567890123456ULL }
            local line = output.json{ fields = { "ts" } }:format(p)
            assert.are.equal('{"type":"event","ts":1234567890123456}', line)
            assert.are.equal(1234567890123456, cjson.decode(line).ts)
        end)

        it("writes lost and summary lines, and the summary text on err_file", function()
            local out, err = sink(), sink()
            local w = output.json{ file = out, err_file = err }
            assert.is_true(w:lost(5))
            assert.is_true(w:summary{ events = 100, matched = 40, lost = 5, duration_s = 2.5,
                                      kfiltered = 55, agg_overflow = 0 })
            local text = out:text():gsub('"time":"[^"]*",', "")
            assert.are.equal('{"type":"lost","count":5}\n'
                             .. '{"type":"summary","events":100,"matched":40,"lost":5,'
                             .. '"kfiltered":55,"agg_overflow":0,"duration_s":2.500}\n', text)
            assert.matches('"time":"%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d+Z"', out:text())
            assert.are.equal("netdevq: 100 events, 40 matched, 5 lost\n", err:text())
            local lines = {}
            for line in out:text():gmatch("[^\n]+") do
                lines[#lines + 1] = cjson.decode(line)
            end
            assert.are.same({ type = "lost", count = 5 }, lines[1])
            lines[2].time = nil
            assert.are.same({ type = "summary", events = 100, matched = 40, lost = 5,
                              kfiltered = 55, agg_overflow = 0, duration_s = 2.5 }, lines[2])
        end)

        it("writes one object per line", function()
            local _, p = make_event()
            local f = sink()
            local w = output.json{ fields = { "pid" }, file = f }
            assert.is_true(w:event(p))
            assert.is_true(w:event(p))
            assert.are.equal('{"type":"event","pid":1234}\n{"type":"event","pid":1234}\n',
                             f:text())
        end)
    end)

    describe("write errors", function()
        it("are returned, not raised, and stick", function()
            local _, p = make_event()
            for _, make in ipairs{ output.text, output.json } do
                local f = sink(true)
                local w = make{ file = f, err_file = f }
                local ok, err = w:event(p)
                assert.is_nil(ok)
                assert.are.equal("Broken pipe", err)
                assert.are.same({ nil, "Broken pipe" }, { w:event(p) })
                assert.are.same({ nil, "Broken pipe" }, { w:lost(1) })
                assert.are.same({ nil, "Broken pipe" }, { w:summary{ events = 1 } })
                assert.are.same({ nil, "Broken pipe" }, { w:flush() })
                assert.are.equal(1, f.writes)
            end
        end)

        it("come back from a real file that is full", function()
            local _, p = make_event()
            local f = assert(io.open("/dev/full", "w"))
            f:setvbuf("no")
            local ok, err = output.text{ file = f }:event(p)
            f:close()
            assert.is_nil(ok)
            assert.are.equal("No space left on device", err)

            local g = assert(io.open("/dev/full", "w"))   -- buffered: the error shows at flush
            local w = output.json{ file = g }
            assert.is_true(w:event(p))
            local ok2, err2 = w:flush()
            g:close()
            assert.is_nil(ok2)
            assert.are.equal("No space left on device", err2)
        end)
    end)

    describe("new", function()
        it("makes a writer by format name", function()
            local _, p = make_event()
            assert.are.equal("1234", output.new("text", { fields = { "pid" } }):format(p))
            assert.are.equal('{"type":"event","pid":1234}',
                             output.new("json", { fields = { "pid" } }):format(p))
        end)

        it("raises for an unknown format, field or options", function()
            assert.has_error(function() output.new("xml") end,
                             "output.new: unknown format 'xml' (text, json)")
            local ok, err = pcall(output.text, { fields = { "pid", "dpot" } })
            assert.is_false(ok)
            assert.truthy(err:find("output.text: unknown field 'dpot' (known: dport, ", 1, true))
            assert.has_error(function() output.json{ fields = {} } end)
            assert.has_error(function() output.json("pid") end)
        end)
    end)

    describe("summary_text", function()
        it("says events, matched and lost", function()
            assert.are.equal("netdevq: 3 events, 2 matched, 1 lost",
                             output.summary_text{ events = 3, matched = 2, lost = 1 })
        end)
    end)

    describe("DEFAULT_FIELDS", function()
        it("names what the default line reads, all of them catalogue fields", function()
            assert.are.same({ "time", "comm", "pid", "dev", "len", "proto", "saddr", "sport",
                              "daddr", "dport", "ethertype", "tcp_flags", "icmp_type",
                              "icmp_code", "arp_op", "arp_spa", "arp_tpa", "arp_sha", "owner_comm",
                              "owner_pid" }, output.DEFAULT_FIELDS)
            -- headers (and proto, ports: L4), the task (comm, pid), the device name, the
            -- timestamp and the socket owner (comm and pid are its when known)
            assert.are.equal(1 + 16 + 32 + 64 + 128 + 512, catalogue.needs(output.DEFAULT_FIELDS))
        end)
    end)
end)
