-- The types CO-RE relocates against (csrc/corebtf.c): the loader hands libbpf the kernel's types
-- that the object names and what they embed (about 700 of 126,000 on 6.18), not the whole BTF,
-- because libbpf searches the whole of it once per type a relocation names. The relocated
-- programs must be exactly those libbpf makes from the whole BTF: with btf_path naming the
-- kernel's own BTF file, libbpf searches it whole, and every program each configuration loads
-- (the net_dev_queue program of each read path, with member paths, a pcap expression spliced
-- in or an aggregation; the socket-owner and fate programs) must have the same tag, the
-- kernel's hash of its instructions with map references left out.
local netns = require("support.netns")
local bpfobjs = require("support.bpfobjs")
local cjson = require("cjson")

local CONFIGS = {
    { "every field, raw, direct loads", { read = "direct" } },
    { "every field, raw, probe reads", { read = "probe" } },
    { "every field, btf", { mode = "btf" } },
    { "sk_buff member paths, raw", { filter = "skb.len > 100", fields = { "len", "skb.mark", "skb.dev.mtu" } } },
    { "sk_buff member paths, btf", { mode = "btf", fields = { "len", "skb.priority", "skb.dev.mtu" } } },
    { "socket owners and queue latency, btf", { mode = "btf", fields = { "owner_pid", "sojourn_ns", "drop_reason" } } },
    { "a pcap expression in the kernel, raw", { pcap = "udp port 7001 or tcp" } },
    { "a pcap expression in the kernel, btf", { pcap = "udp port 7001 or tcp", mode = "btf" } },
    { "an in-kernel histogram with a kernel filter", { filter = 'proto == "udp" and dport == 7000',
        aggregate = { kind = "hist", keys = { "dev" }, value = "len", name = "@h" } } },
}

-- { [program name] = tag } of the programs this process came to hold since before
local function tags(before)
    local out, n = {}, 0
    for id in pairs(bpfobjs.held(bpfobjs.getpid()).prog) do
        if not before[id] then
            local ok, text = netns.run({ "bpftool", "-j", "prog", "show", "id", tostring(id) })
            assert(ok, text)
            local info = cjson.decode(text)
            out[info.name] = info.tag
            n = n + 1
        end
    end
    return out, n
end

describe("CO-RE against the kernel's types, cut down #root", function()
    for _, c in ipairs(CONFIGS) do
        it("relocates every program as libbpf does against the whole BTF: " .. c[1], function()
            netns.require_root()
            local netdevq = require("netdevq")
            local opened = {}
            finally(function()
                for _, t in ipairs(opened) do
                    t:close()
                end
            end)
            local got = {}
            for _, btf_path in ipairs({ false, "/sys/kernel/btf/vmlinux" }) do
                local opts = { btf_path = btf_path or nil }
                for k, v in pairs(c[2]) do
                    opts[k] = v
                end
                local before = bpfobjs.held(bpfobjs.getpid()).prog
                opened[#opened + 1] = assert(netdevq.open(opts))
                local t, n = tags(before)
                assert.is_true(n >= 1, c[1])
                got[#got + 1] = t
            end
            local main = got[1].netdevq_direct or got[1].netdevq_raw or got[1].netdevq_btf
            assert.is_string(main, c[1])
            assert.same(got[2], got[1], c[1])
        end)
    end
end)
