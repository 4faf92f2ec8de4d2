local ffi = require("ffi")
local bit = require("bit")

-- The field catalogue (docs/reference.md), in its order, with its types.
local CONTRACT = {
    { "ts", "integer" }, { "time", "string" }, { "cpu", "integer" }, { "pid", "integer" },
    { "tid", "integer" }, { "comm", "string" }, { "cgroup", "integer" }, { "skb", "string" },
    { "dev", "string" }, { "ifindex", "integer" }, { "netns", "integer" },
    { "netns_name", "string" }, { "len", "integer" },
    { "data_len", "integer" }, { "mac_len", "integer" }, { "hdr_len", "integer" },
    { "queue", "integer" }, { "priority", "integer" }, { "mark", "integer" },
    { "hash", "integer" }, { "gso_size", "integer" }, { "gso_segs", "integer" },
    { "ethertype", "string" }, { "smac", "string" }, { "dmac", "string" },
    { "saddr", "string" }, { "daddr", "string" }, { "proto", "string" },
    { "sport", "integer" }, { "dport", "integer" }, { "tcp_flags", "string" },
    { "ttl", "integer" }, { "tos", "integer" },
    { "icmp_type", "integer" }, { "icmp_code", "integer" }, { "vlan_id", "integer" },
    { "vlan_pcp", "integer" }, { "vlan_proto", "integer" }, { "frag_off", "integer" },
    { "ip6_ext", "integer" },
    { "arp_op", "integer" }, { "arp_sha", "string" }, { "arp_spa", "string" },
    { "arp_tha", "string" }, { "arp_tpa", "string" },
    { "owner_pid", "integer" }, { "owner_tid", "integer" }, { "owner_comm", "string" },
    { "owner_cgroup", "integer" }, { "owner_uid", "integer" },
    { "sojourn_ns", "integer" }, { "xmit_ns", "integer" }, { "xmit_rc", "integer" },
    { "drop_reason", "string" },
}

local function bytes(t)
    return ffi.new("uint8_t[?]", #t, t)
end

-- IPv6 from its 8 groups.
local function ip6(groups)
    local b = {}
    for i, g in ipairs(groups) do
        b[2 * i - 1] = bit.rshift(g, 8)
        b[2 * i] = bit.band(g, 0xff)
    end
    return bytes(b)
end

-- An event with every member set to a distinct value; o overrides.
local function make_event(o)
    o = o or {}
    local ev = ffi.new("struct netdevq_event")
    ev.ts = o.ts or 5000123456ULL
    ev.skb = o.skb or 0xffff888012345678ULL
    ev.cgroup = o.cgroup or 4242
    ev.pid, ev.tid, ev.cpu = o.pid or 1234, o.tid or 1235, o.cpu or 1
    ev.ifindex, ev.netns = 7, 4026531840
    ev.len, ev.data_len = o.len or 1514, 1000
    ev.mac_len, ev.hdr_len = 14, 66
    ev.queue, ev.gso_size, ev.gso_segs = 3, 1448, 2
    ev.ethertype = o.ethertype or 0x0800
    ev.priority, ev.mark, ev.hash = 6, 0xdeadbeef, 0x12345678
    ev.dev_type = 1
    ev.l3 = o.l3 or 4
    local saddr = o.saddr or { 198, 18, 0, 1 }
    local daddr = o.daddr or { 198, 18, 0, 2 }
    for i = 1, #saddr do ev.saddr[i - 1] = saddr[i] end
    for i = 1, #daddr do ev.daddr[i - 1] = daddr[i] end
    ev.sport, ev.dport = o.sport or 40000, o.dport or 443
    ev.proto = o.proto or 6
    ev.tcp_flags = o.tcp_flags or 0x18
    ev.ttl, ev.tos = o.ttl or 64, o.tos or 0x10
    for i = 0, 5 do
        ev.smac[i] = 0x02 + i
        ev.dmac[i] = 0xa0 + i
    end
    ev.flags = o.flags or 7 + 0x8000 -- MAC, L4, TCP, OWNER
    ev.owner_pid, ev.owner_tid, ev.owner_uid, ev.owner_cgroup = 4321, 4322, 1000, 77
    ffi.copy(ev.owner_comm, "wget")
    ffi.copy(ev.comm, o.comm or "curl")
    ffi.copy(ev.dev, o.dev or "veth0")
    return ev, ffi.cast("const struct netdevq_event *", ev)
end

describe("netdevq.catalogue #unit", function()
    local abi, catalogue, names, clock, event

    setup(function()
        abi = require("netdevq.abi")
        catalogue = require("netdevq.catalogue")
        names = require("netdevq.names")
        clock = require("netdevq.clock")
        event = require("netdevq.event")
    end)

    -- Fixed offset: unix time = ts + 1700000000 s.
    before_each(function()
        clock.calibrate(1700000000000000000LL)
    end)

    describe("catalogue", function()
        it("lists the documented fields in its order with its types", function()
            assert.are.equal(#CONTRACT, #catalogue.fields)
            for i, row in ipairs(CONTRACT) do
                local field = catalogue.fields[i]
                assert.are.equal(row[1], field.name)
                assert.are.equal(row[2], field.value_type)
                assert.are.equal(i, field.index)
                assert.are.equal("string", type(field.description))
                assert.are.equal("function", type(field.get))
                assert.are.equal(field, catalogue.by_name[row[1]])
                assert.are.equal(row[1], catalogue.names[i])
            end
        end)

        it("gives the kernel a location for every field with an event member", function()
            local function loc(name) return catalogue.by_name[name].loc end
            for _, field in ipairs(catalogue.fields) do
                if field.name == "time" or field.name == "skb" or field.name == "netns_name"
                   or field.name == "drop_reason" then -- a name from BTF: aggregated in Lua
                    assert.is_nil(field.loc, field.name)
                else
                    assert.is_table(field.loc, field.name)
                    assert.are.equal(ffi.offsetof("struct netdevq_event", field.at), field.loc.off)
                end
            end
            assert.are.same({ off = ffi.offsetof("struct netdevq_event", "sport"), size = 2,
                              kind = abi.LOC.NUMBER, when_flags = abi.EV.L4, when_l3 = 0,
                              when_nonzero = 0 }, loc("sport"))
            assert.are.same({ off = ffi.offsetof("struct netdevq_event", "saddr"), size = 16,
                              kind = abi.LOC.ADDRESS, when_flags = 0, when_l3 = 1,
                              when_nonzero = 0 }, loc("saddr"))
            assert.are.same({ off = ffi.offsetof("struct netdevq_event", "comm"), size = 16,
                              kind = abi.LOC.BYTES, when_flags = 0, when_l3 = 0,
                              when_nonzero = 0 }, loc("comm"))
            assert.are.equal(8, loc("ts").size)
            assert.are.equal(1, loc("ethertype").when_nonzero)
            assert.are.equal(6, loc("smac").size)
            assert.are.same({ off = ffi.offsetof("struct netdevq_event", "vlan_id"), size = 2,
                              kind = abi.LOC.NUMBER, when_flags = abi.EV.VLAN, when_l3 = 0,
                              when_nonzero = 0 }, loc("vlan_id"))
            assert.are.equal(abi.EV.ICMP, loc("icmp_code").when_flags)
            assert.are.equal(abi.EV.IPFRAG, loc("frag_off").when_flags)
            assert.are.equal(abi.EV.IP6, loc("ip6_ext").when_flags)
            -- ARP's IPv4 addresses: family 4 whatever the event's l3 (which is 0 for ARP)
            assert.are.same({ off = ffi.offsetof("struct netdevq_event", "arp_spa"), size = 4,
                              kind = abi.LOC.IPV4, when_flags = abi.EV.ARP, when_l3 = 0,
                              when_nonzero = 0 }, loc("arp_spa"))
        end)

        it("needs HEADERS for the parsed fields (L4 for proto and the ports alone), TASK, DEV, TS, NETNS, GSO, "
            .. "CGROUP, OWNER for theirs", function()
            local H, L4 = abi.NEED.HEADERS, abi.NEED.L4
            local expect = {
                ethertype = H, smac = H, dmac = H, saddr = H, daddr = H, proto = L4, sport = L4,
                dport = L4, tcp_flags = H, ttl = H, tos = H, icmp_type = H, icmp_code = H,
                vlan_id = H, vlan_pcp = H, vlan_proto = H, frag_off = H, ip6_ext = H,
                arp_op = H, arp_sha = H, arp_spa = H, arp_tha = H, arp_tpa = H,
                netns = abi.NEED.NETNS, netns_name = abi.NEED.NETNS, gso_size = abi.NEED.GSO,
                gso_segs = abi.NEED.GSO,
                cgroup = abi.NEED.CGROUP, pid = abi.NEED.TASK, tid = abi.NEED.TASK,
                comm = abi.NEED.TASK, dev = abi.NEED.DEV, ifindex = abi.NEED.DEV,
                ts = abi.NEED.TS, time = abi.NEED.TS,
                owner_pid = abi.NEED.OWNER, owner_tid = abi.NEED.OWNER,
                owner_comm = abi.NEED.OWNER, owner_cgroup = abi.NEED.OWNER,
                owner_uid = abi.NEED.OWNER,
                sojourn_ns = abi.NEED.LATENCY, xmit_ns = abi.NEED.LATENCY,
                xmit_rc = abi.NEED.LATENCY, drop_reason = abi.NEED.LATENCY,
            }
            assert.are.equal(0, bit.band(abi.NEED.ALL, abi.NEED.LATENCY)) -- asked for only
            assert.are.equal(0, bit.band(abi.NEED.ALL, abi.NEED.L4)) -- HEADERS covers it
            for _, field in ipairs(catalogue.fields) do
                assert.are.equal(expect[field.name] or 0, field.need_bits, field.name)
            end
        end)
    end)

    describe("getters", function()
        it("decode every field of an IPv4 TCP event", function()
            local _, p = make_event()
            local want = {
                ts = 5000123456, time = os.date("%H:%M:%S", 1700000005) .. ".000123",
                cpu = 1, pid = 1234, tid = 1235, comm = "curl", cgroup = 4242,
                skb = "0xffff888012345678", dev = "veth0", ifindex = 7, netns = 4026531840,
                len = 1514, data_len = 1000, mac_len = 14, hdr_len = 66, queue = 3,
                priority = 6, mark = 0xdeadbeef, hash = 0x12345678, gso_size = 1448, gso_segs = 2,
                ethertype = "ipv4", smac = "02:03:04:05:06:07", dmac = "a0:a1:a2:a3:a4:a5",
                saddr = "198.18.0.1", daddr = "198.18.0.2", proto = "tcp", sport = 40000,
                dport = 443, tcp_flags = "P.", ttl = 64, tos = 16,
                owner_pid = 4321, owner_tid = 4322, owner_comm = "wget", owner_cgroup = 77,
                owner_uid = 1000,
            }
            -- ICMP, VLAN, fragment and IPv6 fields are absent from an untagged IPv4 TCP event
            local absent = { icmp_type = true, icmp_code = true, vlan_id = true, vlan_pcp = true,
                             vlan_proto = true, frag_off = true, ip6_ext = true, arp_op = true,
                             arp_sha = true, arp_spa = true, arp_tha = true, arp_tpa = true,
                             sojourn_ns = true, xmit_ns = true, xmit_rc = true,
                             drop_reason = true }
            for _, field in ipairs(catalogue.fields) do
                local v = field.get(p)
                assert.are.equal(want[field.name], v, field.name)
                -- netns_name: 4026531840 has no /run/netns name here
                if not absent[field.name] and field.name ~= "netns_name" then
                    assert.are.equal(field.type == "integer" and "number" or "string", type(v),
                                     field.name)
                end
            end
        end)

        it("decode the latency fields each only with its flag: xmit_rc signed, drop_reason named by BTF",
           function()
            local EV = abi.EV
            local ev, p = make_event{ flags = EV.XMIT }
            ev.sojourn_ns, ev.xmit_ns, ev.xmit_rc, ev.drop_reason = 8336000, 1500, 0xfffffff4, 2
            local function get(name) return catalogue.by_name[name].get(p) end
            assert.are.same({ 8336000 }, { get("sojourn_ns"), get("xmit_ns"), get("xmit_rc"),
                                           get("drop_reason") })
            ev.flags = EV.XMIT + EV.XMIT_DONE
            assert.are.same({ 8336000, 1500, -12 }, { get("sojourn_ns"), get("xmit_ns"),
                                                      get("xmit_rc"), get("drop_reason") })
            -- the kernel's own enum names the value (QDISC_DROP is 64 on 6.18, maybe not elsewhere)
            local reasons = assert(require("netdevq.core").drop_reasons())
            local qdisc_drop
            for v, name in pairs(reasons) do
                if name == "QDISC_DROP" then qdisc_drop = v end
            end
            assert.is_number(qdisc_drop)
            assert.are.equal("NOT_SPECIFIED", reasons[2])
            ev.flags, ev.drop_reason = EV.DROP, qdisc_drop
            assert.are.same({ nil, nil, nil, "QDISC_DROP" }, { get("sojourn_ns"), get("xmit_ns"),
                                                               get("xmit_rc"), get("drop_reason") })
            ev.drop_reason = 0x10001 -- a subsystem's reason: not in the core enum
            assert.are.equal("65537", get("drop_reason"))
        end)

        it("decode ICMP type and code (numbers; names in text), VLAN tags, fragments and the "
           .. "IPv6 extension header count", function()
            local EV = abi.EV
            local _, p = make_event{ proto = 58, l3 = 6, ethertype = 0x86dd,
                                     flags = EV.ICMP + EV.VLAN + EV.IPFRAG + EV.IP6 }
            local ev = ffi.cast("struct netdevq_event *", p)
            ev.icmp_type, ev.icmp_code = 1, 4
            ev.vlan_tci, ev.vlan_proto, ev.vlan_id, ev.vlan_pcp = 0x6064, 0x88a8, 100, 3
            ev.frag_off, ev.ip6_ext = 1432, 3
            local get = function(name) return catalogue.by_name[name].get(p) end
            local text = function(name) return catalogue.by_name[name].text(p) end
            assert.are.same({ 1, 4, 100, 3, 0x88a8, 1432, 3 },
                            { get("icmp_type"), get("icmp_code"), get("vlan_id"),
                              get("vlan_pcp"), get("vlan_proto"), get("frag_off"),
                              get("ip6_ext") })
            assert.are.equal("destination unreachable", text("icmp_type"))
            assert.are.equal("port unreachable", text("icmp_code"))
            ev.icmp_type, ev.icmp_code = 135, 0
            assert.are.equal("neighbor solicitation", text("icmp_type"))
            assert.are.equal("0", text("icmp_code"))
            ev.proto, ev.l3, ev.icmp_type, ev.icmp_code = 1, 4, 3, 3
            assert.are.equal("unreachable", text("icmp_type"))
            assert.are.equal("port unreachable", names.icmp_text(4, 3, 3))
            assert.are.equal("echo request", names.icmp_text(4, 8, 0))
            assert.are.equal("echo reply", names.icmp_text(6, 129, 0))
            assert.are.equal("router solicitation", names.icmp_text(6, 133, 0))
            assert.are.equal("neighbor advertisement", names.icmp_text(6, 136, 0))
            assert.are.equal("200", names.icmp_text(6, 200, 0))
            ev.flags = EV.ICMP
            assert.is_nil(get("ip6_ext"))
            ev.flags = 0
            for _, name in ipairs{ "icmp_type", "icmp_code", "vlan_id", "vlan_pcp", "vlan_proto",
                                   "frag_off" } do
                assert.is_nil(get(name), name)
            end
        end)

        it("leave saddr, daddr, proto, ttl, tos, ports, tcp_flags absent when not IP", function()
            local _, p = make_event{ l3 = 0, ethertype = 0x0806, flags = 1 }
            for _, name in ipairs{ "saddr", "daddr", "proto", "ttl", "tos", "sport", "dport",
                                   "tcp_flags" } do
                assert.is_nil(catalogue.by_name[name].get(p), name)
            end
            assert.are.equal("arp", catalogue.by_name.ethertype.get(p))
            assert.are.equal("02:03:04:05:06:07", catalogue.by_name.smac.get(p))
        end)

        it("leave ports absent without NDQ_EV_L4 and tcp_flags without NDQ_EV_TCP", function()
            local _, p = make_event{ proto = 1, flags = abi.EV.MAC }
            assert.is_nil(catalogue.by_name.sport.get(p))
            assert.is_nil(catalogue.by_name.dport.get(p))
            assert.is_nil(catalogue.by_name.tcp_flags.get(p))
            assert.are.equal("icmp", catalogue.by_name.proto.get(p))
            local _, q = make_event{ proto = 17, flags = abi.EV.L4 }
            assert.are.equal(40000, catalogue.by_name.sport.get(q))
            assert.is_nil(catalogue.by_name.tcp_flags.get(q))
        end)

        it("leave smac and dmac absent without NDQ_EV_MAC", function()
            local _, p = make_event{ flags = abi.EV.L4 + abi.EV.TCP }
            assert.is_nil(catalogue.by_name.smac.get(p))
            assert.is_nil(catalogue.by_name.dmac.get(p))
        end)

        it("leave every owner field absent without NDQ_EV_OWNER, owner_uid 0 present with it", function()
            local _, p = make_event{ flags = 7 }
            for _, name in ipairs{ "owner_pid", "owner_tid", "owner_comm", "owner_cgroup",
                                   "owner_uid" } do
                assert.is_nil(catalogue.by_name[name].get(p), name)
            end
            local ev, q = make_event()
            ev.owner_uid = 0
            assert.are.equal(0, catalogue.by_name.owner_uid.get(q))
        end)

        it("leave ethertype absent when the kernel left it 0", function()
            local _, p = make_event{ ethertype = 0, l3 = 0 }
            assert.is_nil(catalogue.by_name.ethertype.get(p))
        end)

        it("decode IPv6 addresses", function()
            local _, p = make_event{
                l3 = 6, ethertype = 0x86dd, proto = 17,
                saddr = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 },
                daddr = { 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x02, 0x11, 0x22, 0xff, 0xfe, 0x33,
                          0x44, 0x55 },
            }
            assert.are.equal("2001:db8::1", catalogue.by_name.saddr.get(p))
            assert.are.equal("fe80::211:22ff:fe33:4455", catalogue.by_name.daddr.get(p))
            assert.are.equal("udp", catalogue.by_name.proto.get(p))
            assert.are.equal("ipv6", catalogue.by_name.ethertype.get(p))
        end)

        it("never read past a comm or dev that fills its array", function()
            local ev, p = make_event()
            ffi.copy(ev.comm, ("c"):rep(16), 16)
            ffi.copy(ev.dev, ("d"):rep(16), 16)
            assert.are.equal(("c"):rep(16), catalogue.by_name.comm.get(p))
            assert.are.equal(("d"):rep(16), catalogue.by_name.dev.get(p))
        end)

        it("return ts and cgroup as Lua numbers, exactly below 2^53", function()
            local _, p = make_event{ ts = 9007199254740991ULL, cgroup = 123456789012ULL }
            assert.are.equal(9007199254740991, catalogue.by_name.ts.get(p))
            assert.are.equal(123456789012, catalogue.by_name.cgroup.get(p))
        end)
    end)

    describe("format_ipv4", function()
        it("writes a dotted quad", function()
            assert.are.equal("198.18.0.1", names.format_ipv4(bytes{ 198, 18, 0, 1 }))
            assert.are.equal("0.0.0.0", names.format_ipv4(bytes{ 0, 0, 0, 0 }))
            assert.are.equal("255.255.255.255", names.format_ipv4(bytes{ 255, 255, 255, 255 }))
        end)
    end)

    describe("format_ipv6", function()
        local cases = {
            { { 0x2001, 0xdb8, 0, 0, 0, 0, 0, 1 }, "2001:db8::1" },
            { { 0x2001, 0xdb8, 0, 0, 1, 0, 0, 1 }, "2001:db8::1:0:0:1" },
            { { 0, 0, 0, 0, 0, 0, 0, 1 }, "::1" },
            { { 0, 0, 0, 0, 0, 0, 0, 0 }, "::" },
            { { 0x2001, 0xdb8, 0, 1, 1, 1, 1, 1 }, "2001:db8:0:1:1:1:1:1" },
            { { 0xfe80, 0, 0, 0, 0x211, 0x22ff, 0xfe33, 0x4455 }, "fe80::211:22ff:fe33:4455" },
            { { 0x2001, 0xdb8, 0, 0, 1, 0, 0, 0 }, "2001:db8:0:0:1::" },
            { { 0x2001, 0, 0, 1, 0, 0, 0, 1 }, "2001:0:0:1::1" },
            { { 1, 0, 0, 0, 0, 0, 0, 0 }, "1::" },
            { { 0, 0, 0, 0, 0, 0, 0, 0xabcd }, "::abcd" },
            { { 0x2001, 0xDB8, 0xAAAA, 0xBBBB, 0xCCCC, 0xDDDD, 0xEEEE, 0x0001 },
              "2001:db8:aaaa:bbbb:cccc:dddd:eeee:1" },
            { { 0, 0, 0, 0, 0, 0xffff, 0xc612, 0x0001 }, "::ffff:198.18.0.1" },
            { { 0, 0, 0, 0, 0, 0, 0xc612, 0x0001 }, "::c612:1" },
            { { 0x64, 0xff9b, 0, 0, 0, 0, 0xc612, 1 }, "64:ff9b::c612:1" },
        }
        for _, case in ipairs(cases) do
            it("writes " .. case[2] .. " per RFC 5952", function()
                assert.are.equal(case[2], names.format_ipv6(ip6(case[1])))
            end)
        end
    end)

    describe("format_mac", function()
        it("writes six lowercase hex pairs", function()
            assert.are.equal("aa:bb:cc:00:0e:ff",
                             names.format_mac(bytes{ 0xaa, 0xbb, 0xcc, 0, 0x0e, 0xff }))
        end)
    end)

    describe("format_tcp_flags", function()
        local cases = {
            { 0x00, "none" }, { 0x02, "S" }, { 0x12, "S." }, { 0x10, "." }, { 0x18, "P." },
            { 0x11, "F." }, { 0x04, "R" }, { 0x14, "R." }, { 0x19, "FP." }, { 0x01, "F" },
            { 0x30, ".U" }, { 0xc2, "SEW" }, { 0x52, "S.E" }, { 0x29, "FPU" },
            { 0xff, "FSRP.UEW" },
        }
        for _, case in ipairs(cases) do
            it(("writes 0x%02x as %s like tcpdump"):format(case[1], case[2]), function()
                assert.are.equal(case[2], names.format_tcp_flags(case[1]))
            end)
        end
    end)

    describe("format_proto", function()
        it("names the common protocols and prints other numbers", function()
            local cases = { [1] = "icmp", [2] = "igmp", [6] = "tcp", [17] = "udp",
                            [47] = "gre", [50] = "esp", [51] = "ah", [58] = "icmpv6",
                            [132] = "sctp", [136] = "udplite", [253] = "253", [99] = "99" }
            for n, name in pairs(cases) do
                assert.are.equal(name, names.format_proto(n))
            end
        end)

        it("maps names and numbers back with proto_number", function()
            assert.are.equal(6, names.proto_number("tcp"))
            assert.are.equal(58, names.proto_number("icmpv6"))
            assert.are.equal(253, names.proto_number("253"))
            assert.is_nil(names.proto_number("tcpx"))
            assert.is_nil(names.proto_number("256"))
        end)
    end)

    describe("format_ethertype", function()
        it("names the common ethertypes and prints others as 0xNNNN", function()
            local cases = { [0x0800] = "ipv4", [0x86dd] = "ipv6", [0x0806] = "arp",
                            [0x8100] = "vlan", [0x88a8] = "qinq", [0x8847] = "mpls",
                            [0x88cc] = "lldp", [0x1234] = "0x1234", [0x00ab] = "0x00ab",
                            [0xABCD] = "0xabcd" }
            for n, name in pairs(cases) do
                assert.are.equal(name, names.format_ethertype(n))
            end
        end)

        it("maps names and 0xNNNN back with ethertype_number", function()
            assert.are.equal(0x86dd, names.ethertype_number("ipv6"))
            assert.are.equal(0x0806, names.ethertype_number("arp"))
            assert.are.equal(0x88cc, names.ethertype_number("0x88CC"))
            assert.are.equal(0x00ab, names.ethertype_number("0x00ab"))
            assert.is_nil(names.ethertype_number("ip4"))
            assert.is_nil(names.ethertype_number("0x12345"))
        end)
    end)

    describe("time", function()
        it("adds the calibrated offset exactly", function()
            local sec, nsec = clock.unix_time(5000123456ULL)
            assert.are.equal(1700000005, sec)
            assert.are.equal(123456, nsec)
            assert.are.equal(1700000005000123456ULL, clock.unix_ns(5000123456ULL))
            assert.are.equal("cdata", type(clock.unix_ns(1)))
        end)

        it("carries nanoseconds into seconds", function()
            clock.calibrate(1999999999LL)
            local sec, nsec = clock.unix_time(3000000002ULL)
            assert.are.equal(5, sec)
            assert.are.equal(1, nsec)
            assert.are.equal(5000000001ULL, clock.unix_ns(3000000002ULL))
        end)

        it("takes a number ts as well as a u64", function()
            local sec, nsec = clock.unix_time(5000123456)
            assert.are.equal(1700000005, sec)
            assert.are.equal(123456, nsec)
        end)

        it("accepts a negative offset", function()
            local sec, nsec = clock.calibrate(-1)
            assert.are.equal(-1, sec)
            assert.are.equal(999999999, nsec)
            local s2, ns2 = clock.calibrate(-1LL)
            assert.are.equal(-1, s2)
            assert.are.equal(999999999, ns2)
            local s3, ns3 = clock.unix_time(2000000000ULL)
            assert.are.equal(1, s3)
            assert.are.equal(999999999, ns3)
        end)

        it("formats HH:MM:SS.micro in local time, truncating to the microsecond", function()
            assert.are.equal(os.date("%H:%M:%S", 1700000005) .. ".000123",
                             clock.format_time(5000123999ULL))
            assert.are.equal(os.date("%H:%M:%S", 1700000006) .. ".999999",
                             clock.format_time(6999999999ULL))
        end)

        it("measures realtime - monotonic when called without an offset", function()
            ffi.cdef[[
                typedef struct { long tv_sec; long tv_nsec; } ndq_spec_timespec;
                int ndq_spec_clock_gettime(int, ndq_spec_timespec *) __asm__("clock_gettime");
            ]]
            local sec = clock.calibrate()
            assert.is_number(sec)
            local mono = ffi.new("ndq_spec_timespec")
            assert.are.equal(0, ffi.C.ndq_spec_clock_gettime(1, mono))
            local now_mono = ffi.new("uint64_t", mono.tv_sec) * 1000000000ULL + mono.tv_nsec
            local unix_sec = clock.unix_time(now_mono)
            assert.is_true(math.abs(unix_sec - os.time()) <= 1)
        end)

        it("rejects an offset that is not a number", function()
            assert.has_error(function() clock.calibrate("1") end,
                             "calibrate: offset_ns must be a number or an integer cdata")
        end)
    end)

    describe("view", function()
        it("reads any field by name from the event it points at", function()
            local _, p1 = make_event()
            local _, p2 = make_event{ pid = 99, dport = 53, proto = 17, flags = 3, dev = "lo" }
            local ev = event.view()
            ev:_set(p1)
            assert.are.equal(1234, ev.pid)
            assert.are.equal(443, ev.dport)
            assert.are.equal("tcp", ev.proto)
            assert.are.equal("veth0", ev.dev)
            assert.are.equal("198.18.0.1", ev.saddr)
            ev:_set(p2)
            assert.are.equal(99, ev.pid)
            assert.are.equal(53, ev.dport)
            assert.are.equal("udp", ev.proto)
            assert.are.equal("lo", ev.dev)
            assert.is_nil(ev.tcp_flags)
            assert.is_true(event.is_view(ev))
            assert.is_false(event.is_view({}))
        end)

        it("raises for an unknown field name", function()
            local _, p = make_event()
            local ev = event.view(p)
            assert.has_error(function() return ev.xyz end)
            local ok, err = pcall(function() return ev.dprot end)
            assert.is_false(ok)
            assert.truthy(err:find("unknown field 'dprot' (known: dport, ", 1, true))
        end)

        it("raises on assignment", function()
            local ev = event.view(select(2, make_event()))
            local ok, err = pcall(function() ev.pid = 1 end)
            assert.is_false(ok)
            assert.truthy(err:find("event fields are read-only", 1, true))
        end)

        it("raises when read without an event", function()
            local ev = event.view()
            local ok, err = pcall(function() return ev.pid end)
            assert.is_false(ok)
            assert.truthy(err:find("event view has no event", 1, true))
        end)

        it("copies the present fields into a plain table with totable", function()
            local _, p = make_event{ l3 = 0, ethertype = 0x0806, flags = 0 }
            local ev = event.view(p)
            local t = ev:totable()
            assert.are.same({
                ts = 5000123456, time = os.date("%H:%M:%S", 1700000005) .. ".000123",
                cpu = 1, pid = 1234, tid = 1235, comm = "curl", cgroup = 4242,
                skb = "0xffff888012345678", dev = "veth0", ifindex = 7, netns = 4026531840,
                len = 1514, data_len = 1000, mac_len = 14, hdr_len = 66, queue = 3,
                priority = 6, mark = 0xdeadbeef, hash = 0x12345678, gso_size = 1448, gso_segs = 2,
                ethertype = "arp",
            }, t)
            assert.are.same({ pid = 1234, dev = "veth0" }, ev:totable{ "pid", "dport", "dev" })
            assert.has_error(function() ev:totable{ "nope" } end)
        end)

        it("allocates nothing to switch events and read numeric fields", function()
            local _, p1 = make_event()
            local _, p2 = make_event{ pid = 7 }
            local ev = event.view()
            local sum = 0
            local function run(n)
                for i = 1, n do
                    ev:_set(i % 2 == 0 and p1 or p2)
                    sum = sum + ev.pid + ev.len + ev.dport + ev.ifindex + ev.ttl
                end
            end
            run(1000)   -- warm up (traces, interned constants)
            collectgarbage()
            collectgarbage("stop")
            local before = collectgarbage("count")
            run(100000)
            local grown = collectgarbage("count") - before
            collectgarbage("restart")
            assert.is_true(grown < 4, ("grew by %.1f KiB"):format(grown))
            assert.is_true(sum > 0)
        end)
    end)

    describe("parse_list", function()
        it("splits a comma list and trims blanks", function()
            assert.are.same({ "comm", "pid", "dev" }, catalogue.parse_list("comm,pid,dev"))
            assert.are.same({ "ts", "saddr" }, catalogue.parse_list(" ts , saddr "))
        end)

        it("returns nil and the nearest names first for an unknown field", function()
            local list, err = catalogue.parse_list("comm,dve")
            assert.is_nil(list)
            assert.truthy(err:find("^unknown field 'dve' %(known: dev, "), err)
            -- every name is listed once
            for _, name in ipairs(catalogue.names) do
                local _, count = err:gsub("[ (]" .. name .. "[,)]", "")
                assert.are.equal(1, count, name)
            end
            local _, err2 = catalogue.parse_list("sadr")
            assert.truthy(err2:find("^unknown field 'sadr' %(known: saddr, daddr, "), err2)
        end)

        it("returns nil for an empty item", function()
            local list, err = catalogue.parse_list("comm,,pid")
            assert.is_nil(list)
            assert.are.equal("empty field name in list 'comm,,pid'", err)
            assert.is_nil((catalogue.parse_list("")))
        end)

        it("raises for a non-string", function()
            assert.has_error(function() catalogue.parse_list(nil) end,
                             "parse_list: expected a string, got nil")
        end)
    end)

    describe("field", function()
        it("returns the descriptor or nil and the unknown-field message", function()
            assert.are.equal(catalogue.by_name.dport, catalogue.field("dport"))
            local f, err = catalogue.field("dprt")
            assert.is_nil(f)
            assert.truthy(err:find("^unknown field 'dprt' %(known: dport, "))
        end)
    end)

    describe("needs", function()
        it("ORs the NEED bits of the named fields", function()
            assert.are.equal(0, catalogue.needs{ "len", "skb", "cpu", "mark" })
            assert.are.equal(abi.NEED.TASK + abi.NEED.TS, catalogue.needs{ "pid", "comm", "time" })
            assert.are.equal(abi.NEED.HEADERS + abi.NEED.NETNS, catalogue.needs{ "saddr", "netns" })
            assert.are.equal(abi.NEED.ALL + abi.NEED.L4, catalogue.needs{ "cgroup", "gso_segs",
                                                         "tcp_flags", "netns", "dport", "comm", "dev",
                                                         "ts", "owner_uid" })
            assert.are.equal(abi.NEED.L4 + abi.NEED.DEV, catalogue.needs{ "proto", "sport", "dev" })
            assert.are.equal(0, catalogue.needs{})
        end)

        it("raises for an unknown name", function()
            assert.has_error(function() catalogue.needs{ "pid", "bogus" } end)
        end)
    end)

    describe("list", function()
        it("returns one aligned line per field: name, type, description", function()
            local lines = catalogue.list()
            assert.are.equal(#CONTRACT, #lines)
            for i, row in ipairs(CONTRACT) do -- names padded to the longest, owner_cgroup
                local want = ("%-12s %-8s "):format(row[1], row[2])
                assert.are.equal(want, lines[i]:sub(1, #want))
                assert.is_true(#lines[i] > #want)
            end
            assert.are.equal("cgroup       integer  current task's cgroup v2 id", lines[7])
        end)
    end)
end)
