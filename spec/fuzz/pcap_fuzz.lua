-- spec/fuzz/pcap_fuzz.lua SEED COUNT: fuzz the pcap-filter expression path of the C module.
--
-- netdevq.core.open{ pcap = EXPR, object_bytes = "..." } compiles EXPR with libpcap (for
-- Ethernet and raw-IP link types) before it opens the BPF object; the object given here is not
-- one, so every call ends right after the compile, loading nothing:
--   * nil, "pcap filter: <libpcap's message>"          the expression is wrong (a clean error)
--   * nil, "BPF object (object_bytes) is not a valid netdevq object (...)"   it compiled
-- Anything else, a raised error, or a crash (the spec sees the signal) is a failure.
--
-- libpcap resolves names (host NAME, net NAME, gateway NAME, ...): spec/fuzz_spec.lua runs this
-- harness in a network namespace of its own with no interface up, so that a lookup fails at
-- once and no query leaves the machine. The generator itself only writes numeric addresses.
local here = (arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local common = require("common")
common.setup_paths(arg[0])

local core = require("netdevq.core")

local random, pick, chance = math.random, common.pick, common.chance
local format = string.format

local run = common.runner("pcap", 200000, arg)

local PORTS = { "0", "9", "53", "443", "65535", "65536", "-1", "http", "domain" }
local HOSTS = { "198.18.0.1", "198.18.0.2", "2001:db8::1", "::1", "127.0.0.1", "0.0.0.0",
    "255.255.255.255", "198.18.0.256", "2001:db8::g" }
local NETS = { "198.18.0.0/15", "198.18/16", "2001:db8::/32", "10.0.0.0/8", "198.18.0.0/33",
    "::/0", "198.18.0.0 mask 255.254.0.0" }
local MACS = { "02:6e:64:71:00:01", "ff:ff:ff:ff:ff:ff", "02:6e:64:71:00", "0:1:2:3:4:5" }
local NUMS = { "0", "1", "14", "60", "100", "1500", "65535", "0x10", "0xffffffff", "4294967296" }

local function primitive()
    local r = random(1, 22)
    if r == 1 then
        return pick({ "tcp", "udp", "icmp", "icmp6", "ip", "ip6", "arp", "rarp", "sctp", "igmp",
            "vlan", "mpls", "pppoed", "ether broadcast", "ip multicast", "ip6 multicast" })
    elseif r == 2 then
        return pick({ "", "src ", "dst ", "src or dst ", "src and dst " }) .. "port " .. pick(PORTS)
    elseif r == 3 then
        return pick({ "tcp ", "udp ", "" }) .. "portrange " .. pick(PORTS) .. "-" .. pick(PORTS)
    elseif r == 4 then
        return pick({ "", "src ", "dst ", "ip ", "ip6 " }) .. "host " .. pick(HOSTS)
    elseif r == 5 then
        return pick({ "", "src ", "dst " }) .. "net " .. pick(NETS)
    elseif r == 6 then
        return pick({ "ether host ", "ether src ", "ether dst " }) .. pick(MACS)
    elseif r == 7 then
        return pick({ "ether proto \\ip", "ether proto \\ip6", "ether proto \\arp", "ip proto \\udp",
            "ip proto \\tcp", "ip6 proto 17", "ip6 protochain 6", "ip proto 300" })
    elseif r == 8 then
        return pick({ "less ", "greater ", "len > ", "len <= ", "len = " }) .. pick(NUMS)
    elseif r == 9 then
        return pick({ "tcp[tcpflags] & (tcp-syn|tcp-ack) != 0", "tcp[13] = 2",
            "tcp[tcpflags] & tcp-fin != 0", "icmp[icmptype] = icmp-echo", "icmp6[0] = 128" })
    elseif r == 10 then
        local proto = pick({ "ip", "ip6", "tcp", "udp", "ether", "icmp", "arp" })
        local size = pick({ "", ":1", ":2", ":4", ":3", ":0" })
        return format("%s[%s%s] %s %s", proto, pick(NUMS), size,
            pick({ "=", "!=", ">", "<", ">=", "<=", "&" }), pick(NUMS))
    elseif r == 11 then
        return format("%s %s %s %s %s", pick({ "ip[0]", "len", "udp[4:2]", "tcp[12]" }),
            pick({ "&", "|", "+", "-", "*", "/", "%", "<<", ">>", "^" }), pick(NUMS),
            pick({ "=", "!=", ">" }), pick(NUMS))
    elseif r == 12 then
        return "vlan " .. pick(NUMS) .. " and " .. pick({ "udp", "tcp", "ip" })
    elseif r == 13 then
        return "mpls " .. pick(NUMS)
    elseif r == 14 then
        return pick({ "ip broadcast", "ether multicast", "inbound", "outbound", "ifname lo",
            "llc", "ip6 and tcp[tcpflags] = 0" })
    else
        return pick({ "udp", "tcp", "icmp", "ip6", "udp port 9", "host 198.18.0.2", "len > 100" })
    end
end

local function expression(depth)
    local r = random()
    if depth <= 0 or r < 0.4 then
        return primitive()
    elseif r < 0.55 then
        return pick({ "not ", "!", "not " }) .. expression(depth - 1)
    elseif r < 0.7 then
        return "(" .. expression(depth - 1) .. ")"
    end
    return expression(depth - 1) .. pick({ " and ", " or ", " && ", " || " }) .. expression(depth - 1)
end

local function generate(previous)
    local r = random()
    if r < 0.45 then
        return expression(random(0, 4))
    elseif r < 0.93 and previous then
        return common.mutate(previous, 4, expression(1))
    elseif r < 0.96 then
        local n = random(1, 400)
        return ("("):rep(n) .. "udp" .. (")"):rep(n - random(0, 1))
    end
    return common.random_bytes(40)
end

local NOT_AN_OBJECT = "not an ELF object"

local function check(expr)
    local t, err = core.open{ pcap = expr, object_bytes = NOT_AN_OBJECT,
        pcap_snaplen = chance(0.1) and random(1, 65535) or nil }
    if t then
        t:close()
        return nil, "open succeeded with a garbage object"
    end
    if type(err) ~= "string" then
        return nil, "no message"
    end
    if err:match("^pcap filter: .") then
        return "clean"
    end
    if err:match("^BPF object %(object_bytes%) is not a valid netdevq object %(") then
        return "ok"
    end
    return nil, "unexpected message: " .. err
end

local previous
while run:more() do
    local input = generate(previous)
    -- libpcap takes a C string: input with a NUL byte ends there, like any argv would
    run:check(input, check)
    if #input < 300 then
        previous = input
    end
end
run:finish()
