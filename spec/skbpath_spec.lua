-- sk_buff member paths: resolution through the kernel's BTF (csrc/btf_path.c), the messages of
-- bad paths, slots, getters and the kernel filter a comparison becomes (lua/netdevq/skbpath.lua).
-- Offsets and sizes are checked against an independent oracle: the C compiler's offsetof/sizeof
-- on bpftool's C dump of the same BTF.
local ffi = require("ffi")

local BUILD = os.getenv("NETDEVQ_BUILD") or "build"

local function fresh()
    package.loaded["netdevq.skbpath"] = nil
    return require("netdevq.skbpath")
end

local function sh(cmd)
    local p = assert(io.popen(cmd .. " 2>&1"))
    local out = p:read("*a")
    local ok = p:close()
    return ok, out
end

-- expr -> { offset, size } from clang on `bpftool btf dump ... format c`
local ORACLE_EXPRS = {
    { "struct sk_buff", "len" }, { "struct sk_buff", "dev" }, { "struct sk_buff", "sk" },
    { "struct sk_buff", "mark" }, { "struct sk_buff", "priority" }, { "struct sk_buff", "tstamp" },
    { "struct sk_buff", "cb" }, { "struct sk_buff", "__pkt_type_offset" },
    { "struct sk_buff", "head" }, { "struct net_device", "mtu" },
    { "struct net_device", "name" }, { "struct sock", "sk_rcvbuf" },
    { "struct sock", "__sk_common.skc_family" }, { "struct sock", "sk_socket" },
    { "struct socket", "state" },
}

local oracle_cache
local function oracle()
    if oracle_cache then
        return oracle_cache
    end
    local dir = os.tmpname()
    os.remove(dir)
    assert(sh("mkdir -p " .. dir))
    local ok, out = sh("bpftool btf dump file /sys/kernel/btf/vmlinux format c > " .. dir
        .. "/vmlinux.h")
    assert(ok, out)
    local src = { '#include "vmlinux.h"', "int printf(const char *, ...);", "int main(void) {" }
    for _, e in ipairs(ORACLE_EXPRS) do
        src[#src + 1] = string.format(
            'printf("%%s.%%s %%d %%d\\n", "%s", "%s", (int)__builtin_offsetof(%s, %s), '
                .. "(int)sizeof(((%s *)0)->%s));", e[1], e[2], e[1], e[2], e[1], e[2])
    end
    src[#src + 1] = "return 0; }"
    local f = assert(io.open(dir .. "/oracle.c", "w"))
    f:write(table.concat(src, "\n"))
    f:close()
    ok, out = sh("clang -DBPF_NO_PRESERVE_ACCESS_INDEX -w -o " .. dir .. "/oracle " .. dir
        .. "/oracle.c && " .. dir .. "/oracle")
    sh("rm -rf " .. dir)
    assert(ok, out)
    oracle_cache = {}
    for name, off, size in out:gmatch("([%w_ %.]+) (%d+) (%d+)\n") do
        oracle_cache[name] = { tonumber(off), tonumber(size) }
    end
    return oracle_cache
end

local function off(expr)
    local o = oracle()[expr]
    assert(o, "no oracle value for " .. expr)
    return o[1]
end

local function size(expr)
    return oracle()[expr][2]
end

describe("netdevq.skbpath #unit", function()
    local skbpath

    setup(function()
        package.cpath = BUILD .. "/?.so;" .. package.cpath
        skbpath = fresh()
    end)

    describe("resolve", function()
        it("reads a member of the sk_buff itself, hops 0", function()
            local r = assert(skbpath.resolve("skb.len"))
            assert.same({ 0, { off("struct sk_buff.len") }, 4, "unsigned", "unsigned int" },
                        { r.hops, r.off, r.size, r.kind, r.ctype })
        end)

        it("follows a pointer: skb.dev.mtu is one hop at dev's offset, then mtu's", function()
            local r = assert(skbpath.resolve("skb.dev.mtu"))
            assert.same({ 1, { off("struct sk_buff.dev"), off("struct net_device.mtu") }, 4,
                          "unsigned" }, { r.hops, r.off, r.size, r.kind })
        end)

        it("reads signed ints as signed: skb.sk.sk_rcvbuf", function()
            local r = assert(skbpath.resolve("skb.sk.sk_rcvbuf"))
            assert.same({ 1, { off("struct sk_buff.sk"), off("struct sock.sk_rcvbuf") }, 4,
                          "signed", "int" }, { r.hops, r.off, r.size, r.kind, r.ctype })
        end)

        it("looks through embedded structs: skb.sk.__sk_common.skc_family", function()
            local r = assert(skbpath.resolve("skb.sk.__sk_common.skc_family"))
            local o = off("struct sock.__sk_common.skc_family")
            assert.same({ 1, { off("struct sk_buff.sk"), o },
                          size("struct sock.__sk_common.skc_family"), "unsigned" },
                        { r.hops, r.off, r.size, r.kind })
        end)

        it("looks through anonymous unions: skb.mark, skb.priority, skb.tstamp (ktime_t)", function()
            local mark = assert(skbpath.resolve("skb.mark"))
            local prio = assert(skbpath.resolve("skb.priority"))
            local ts = assert(skbpath.resolve("skb.tstamp"))
            assert.same({ { off("struct sk_buff.mark") }, 4, "unsigned" },
                        { mark.off, mark.size, mark.kind })
            assert.same({ { off("struct sk_buff.priority") }, 4 }, { prio.off, prio.size })
            assert.same({ { off("struct sk_buff.tstamp") }, 8, "signed", "ktime_t" },
                        { ts.off, ts.size, ts.kind, ts.ctype })
        end)

        it("reads char arrays as strings of at most 16 bytes", function()
            local name = assert(skbpath.resolve("skb.dev.name"))
            local cb = assert(skbpath.resolve("skb.cb"))
            assert.same({ 1, { off("struct sk_buff.dev"), off("struct net_device.name") }, 16,
                          "string", "char[16]" },
                        { name.hops, name.off, name.size, name.kind, name.ctype })
            assert.same({ 16, "string", "char[48]" }, { cb.size, cb.kind, cb.ctype })
            assert.equal(16, skbpath.PATH_STR)
        end)

        it("indexes arrays with a constant: skb.cb[3] and skb.dev.name[2]", function()
            local cb3 = assert(skbpath.resolve("skb.cb[3]"))
            local n2 = assert(skbpath.resolve("skb.dev.name[2]"))
            assert.same({ 0, { off("struct sk_buff.cb") + 3 }, 1 }, { cb3.hops, cb3.off, cb3.size })
            assert.same({ off("struct sk_buff.dev"), off("struct net_device.name") + 2 }, n2.off)
        end)

        it("indexes through a pointer: skb.head[0] is a hop, then byte 0", function()
            local r = assert(skbpath.resolve("skb.head[0]"))
            assert.same({ 1, { off("struct sk_buff.head"), 0 }, 1, "unsigned" },
                        { r.hops, r.off, r.size, r.kind })
        end)

        it("reads bitfields with their bit offset and width: skb.pkt_type", function()
            local r = assert(skbpath.resolve("skb.pkt_type"))
            assert.same({ { off("struct sk_buff.__pkt_type_offset") }, 1, 0, 3, "unsigned" },
                        { r.off, r.size, r.bit_off, r.bit_size, r.kind })
        end)

        it("names enum values: skb.sk.sk_socket.state", function()
            local r = assert(skbpath.resolve("skb.sk.sk_socket.state"))
            assert.same({ 2, { off("struct sk_buff.sk"), off("struct sock.sk_socket"),
                               off("struct socket.state") }, size("struct socket.state"), "enum" },
                        { r.hops, r.off, r.size, r.kind })
            assert.equal("SS_CONNECTED", r.enum[3])
            assert.equal("SS_FREE", r.enum[0])
        end)

        it("takes the kernel's sock shorthands: skb.sk.sk_family is __sk_common.skc_family", function()
            local r = assert(skbpath.resolve("skb.sk.sk_family"))
            assert.same({ 1, { off("struct sk_buff.sk"), off("struct sock.__sk_common.skc_family") },
                          "skb.sk.sk_family" }, { r.hops, r.off, r.path })
            assert.truthy(skbpath.resolve("skb.sk.sk_state"))
            assert.equal("struct sock has no member 'sk_nonesuch'", select(2,
                         skbpath.resolve("skb.sk.sk_nonesuch")))
        end)

        it("reads a final pointer as its value: skb.dev", function()
            local r = assert(skbpath.resolve("skb.dev"))
            assert.same({ 0, { off("struct sk_buff.dev") }, 8, "pointer", "struct net_device *" },
                        { r.hops, r.off, r.size, r.kind, r.ctype })
        end)
    end)

    describe("errors", function()
        local function err(path)
            local r, msg = skbpath.resolve(path)
            assert.is_nil(r)
            return msg
        end

        it("names the struct and the nearest members of an unknown one", function()
            assert.equal("struct net_device has no member 'mtux'; did you mean 'mtu', "
                .. "'min_mtu', 'max_mtu'?", err("skb.dev.mtux"))
            assert.equal("struct sk_buff has no member 'lenn'; did you mean 'len', 'data_len', "
                .. "'mac_len'?",
                         err("skb.lenn"))
            assert.equal("struct sock has no member 'zzzzzzzz'", err("skb.sk.zzzzzzzz"))
        end)

        it("refuses a path through a scalar", function()
            assert.equal("skb.len is unsigned int, not a struct or a pointer to one: it has no "
                .. "member 'x'", err("skb.len.x"))
            assert.equal("skb.pkt_type is a bitfield of __u8, not a struct or a pointer to one: "
                .. "it has no member 'x'", err("skb.pkt_type.x"))
        end)

        it("refuses more than 4 pointer hops, naming the limit", function()
            assert.equal("skb.sk.sk_socket.file.f_inode.i_sb.s_type follows too many pointers: a path "
                .. "may follow at most 4 (NDQ_PATH_HOPS)",
                err("skb.sk.sk_socket.file.f_inode.i_sb.s_type"))
            assert.truthy(skbpath.resolve("skb.sk.sk_socket.file.f_inode.i_ino"))
        end)

        it("refuses out-of-bounds indexes, whole structs and other arrays", function()
            assert.equal("skb.cb[48] is out of bounds: skb.cb has 48 elements", err("skb.cb[48]"))
            assert.equal("skb.sk.__sk_common is struct sock_common: name one of its members "
                .. "(netdevq -l skb.sk.__sk_common lists them)", err("skb.sk.__sk_common"))
            assert.equal("skb.len is unsigned int, not an array or a pointer: it cannot take [1]",
                         err("skb.len[1]"))
        end)

        it("refuses malformed paths with the column", function()
            assert.equal("bad member path 'skb..x' at column 5: expected a member name",
                         err("skb..x"))
            assert.equal("bad member path 'skb.cb[x]' at column 7: expected [NUMBER]",
                         err("skb.cb[x]"))
            assert.equal("a member path starts with 'skb.' (e.g. skb.dev.mtu), not 'sk.x'",
                         err("sk.x"))
        end)
    end)

    describe("list", function()
        it("lists the members of the struct a path points to, with their types", function()
            local lines = assert(skbpath.list("skb.dev"))
            assert.matches("^skb%.dev %(struct net_device%): %d+ members$", lines[1])
            local mtu
            for _, l in ipairs(lines) do
                if l:match("^  mtu ") then
                    mtu = l
                end
            end
            assert.matches("^  mtu +unsigned int  %(offset " .. off("struct net_device.mtu")
                .. "%)$", mtu)
        end)

        it("fails on a scalar", function()
            local lines, err = skbpath.list("skb.len")
            assert.is_nil(lines)
            assert.equal("skb.len is unsigned int, not a struct or a pointer to one: it has no "
                .. "members", err)
        end)
    end)

    describe("row", function()
        it("takes slots in order and reads values from the event's slot", function()
            local sp = fresh()
            local mtu = assert(sp.row("skb.dev.mtu"))
            local rcv = assert(sp.row("skb.sk.sk_rcvbuf"))
            local name = assert(sp.row("skb.dev.name"))
            local dev = assert(sp.row("skb.dev"))
            local state = assert(sp.row("skb.sk.sk_socket.state"))
            assert.same({ 0, 1, 2, 3, 4 }, { mtu.slot, rcv.slot, name.slot, dev.slot, state.slot })
            assert.same({ "integer", "integer", "string", "string", "string" },
                        { mtu.type, rcv.type, name.type, dev.type, state.type })
            -- where the kernel's aggregation finds slot 1, and when it is there
            assert.same({ ffi.offsetof("struct netdevq_event", "path") + 16, 8, 2, 0 },
                        { rcv.loc.off, rcv.loc.size, rcv.loc.when_path, rcv.loc.when_flags })

            local ev = ffi.new("struct netdevq_event")
            assert.is_nil(mtu.raw(ev)) -- not present
            ev.path_present = 0x1f
            ev.path[0][0] = 1400
            ffi.cast("int64_t *", ev.path[1])[0] = -5
            ffi.copy(ev.path[2], "veth0", 5)
            ev.path[3][0] = 0xffff888012345678ULL
            ev.path[4][0] = 3
            assert.same({ 1400, -5, "veth0", "0xffff888012345678", "SS_CONNECTED" },
                        { mtu.raw(ev), rcv.raw(ev), name.raw(ev), dev.raw(ev), state.raw(ev) })
            ev.path_present = 0x1e
            assert.is_nil(mtu.raw(ev))
        end)

        it("refuses a ninth path, naming the limit", function()
            local sp = fresh()
            for i = 0, 7 do
                assert(sp.row("skb.cb[" .. i .. "]"))
            end
            local r, err = sp.row("skb.len")
            assert.is_nil(r)
            assert.equal("too many skb paths: 'skb.len' would be the 9th, and at most 8 "
                .. "(NDQ_PATHS_MAX) are read per run", err)
        end)
    end)

    describe("configure and pushdown", function()
        it("writes hops, offsets, size and kind of every slot", function()
            local sp = fresh()
            assert(sp.row("skb.len"))
            assert(sp.row("skb.sk.sk_rcvbuf"))
            assert(sp.row("skb.pkt_type"))
            local cfg = ffi.new("struct netdevq_config")
            sp.configure(cfg)
            assert.equal(3, cfg.n_paths)
            local p1, p2 = cfg.path[1], cfg.path[2]
            assert.same({ 1, off("struct sk_buff.sk"), off("struct sock.sk_rcvbuf"), 4,
                          ffi.C.NDQ_PK_SINT },
                        { p1.hops, p1.off[0], p1.off[1], p1.size, p1.kind })
            assert.same({ 0, 3, ffi.C.NDQ_PK_UINT }, { p2.hops, p2.bit_size, p2.kind })
        end)

        it("turns comparisons into ranges that intersect, signed or not", function()
            local sp = fresh()
            local mtu = assert(sp.row("skb.dev.mtu")).path
            local rcv = assert(sp.row("skb.sk.sk_rcvbuf")).path
            local state = assert(sp.row("skb.sk.sk_socket.state")).path
            local cfg = ffi.new("struct netdevq_config")
            assert.is_true(sp.pushdown(cfg, mtu, "<", 1500))
            assert.is_true(sp.pushdown(cfg, mtu, ">=", 1000))
            assert.is_true(sp.pushdown(cfg, mtu, "~=", 1280))
            assert.is_false(sp.pushdown(cfg, mtu, "~=", 1300)) -- one "not equal" per path
            local c = cfg.path[0]
            assert.same({ 3, 1000, 1499, 1280 },
                        { c.cmp, tonumber(c.lo), tonumber(c.hi), tonumber(c.ne) })
            assert.is_true(sp.pushdown(cfg, rcv, ">", -10))
            c = cfg.path[1]
            assert.same({ 1, -9, "9223372036854775807LL" },
                        { c.cmp, tonumber(ffi.cast("int64_t", c.lo)),
                          tostring(ffi.cast("int64_t", c.hi)) })
            assert.is_true(sp.pushdown(cfg, state, "==", "SS_CONNECTED"))
            assert.same({ 3, 3 }, { tonumber(cfg.path[2].lo), tonumber(cfg.path[2].hi) })
            assert.is_false(sp.pushdown(cfg, state, "<", "SS_CONNECTED"))
        end)

        it("makes a comparison no unsigned value meets pass nothing", function()
            local sp = fresh()
            local len = assert(sp.row("skb.len")).path
            local cfg = ffi.new("struct netdevq_config")
            assert.is_true(sp.pushdown(cfg, len, "<", 0))
            local c = cfg.path[0]
            assert.is_true(tonumber(c.lo) > tonumber(c.hi))
        end)

        it("leaves strings, pointers and fractions to Lua", function()
            local sp = fresh()
            local name = assert(sp.row("skb.dev.name")).path
            local len = assert(sp.row("skb.len")).path
            local cfg = ffi.new("struct netdevq_config")
            assert.is_false(sp.pushdown(cfg, name, "==", "lo"))
            assert.is_false(sp.pushdown(cfg, len, "<", 1.5))
            assert.equal(0, cfg.path[0].cmp)
        end)
    end)

    describe("the command line", function()
        local clirun = require("support.clirun")

        local function cli(argv)
            return clirun.cli(argv)
        end

        it("refuses an unknown member with the nearest ones, exit 2", function()
            local r = cli({ "-o", "dev,skb.dev.mtux" })
            assert.same({ 2, "", "netdevq: --fields: struct net_device has no member 'mtux'; did "
                             .. "you mean 'mtu', 'min_mtu', 'max_mtu'?\n" },
                        { r.code, r.out, r.err })
        end)

        it("refuses paths through scalars and too deep ones in filters, with the column", function()
            local r = cli({ "-f", "len > 1 and skb.len.x > 1" })
            assert.same({ 2, "netdevq: filter: skb.len is unsigned int, not a struct or a pointer "
                             .. "to one: it has no member 'x' (column 13)\nlen > 1 and "
                             .. "skb.len.x > 1\n            ^\n" }, { r.code, r.err })
            r = cli({ "--count", "skb.sk.sk_socket.file.f_inode.i_sb.s_type" })
            assert.same({ 2, "netdevq: --count: skb.sk.sk_socket.file.f_inode.i_sb.s_type "
                             .. "follows too many pointers: a path may follow at most 4 "
                             .. "(NDQ_PATH_HOPS)\n" }, { r.code, r.err })
        end)

        it("refuses a ninth path, naming the limit", function()
            local list = {}
            for i = 0, 8 do
                list[#list + 1] = "skb.cb[" .. i .. "]"
            end
            local r = cli({ "-o", table.concat(list, ",") })
            assert.same({ 2, "netdevq: --fields: too many skb paths: 'skb.cb[8]' would be the "
                             .. "9th, and at most 8 (NDQ_PATHS_MAX) are read per run\n" },
                        { r.code, r.err })
        end)

        it("lists a struct's members with -l PATH, and refuses a scalar", function()
            local r = cli({ "-l", "skb.dev" })
            assert.equal(0, r.code)
            assert.matches("^skb%.dev %(struct net_device%): %d+ members\n", r.out)
            assert.matches("\n  mtu +unsigned int  %(offset " .. off("struct net_device.mtu")
                           .. "%)\n", r.out)
            assert.matches("\n  name +char%[16%]  %(offset " .. off("struct net_device.name")
                           .. "%)\n", r.out)
            r = cli({ "-l", "skb.len" })
            assert.same({ 2, "", "netdevq: skb.len is unsigned int, not a struct or a pointer to "
                             .. "one: it has no members\n" }, { r.code, r.out, r.err })
            r = cli({ "-l" })
            assert.equal(0, r.code)
            assert.matches("\nskb%.PATH +per BTF +any sk_buff member", r.out)
            assert.matches("\nkstack +string +kernel stack", r.out)
        end)

        it("decides integer path comparisons in the kernel, strings in Lua", function()
            fresh() -- slots from the first one on
            local plan = require("netdevq.plan")
            local p = assert(plan.make{ filter = 'netns == 1 and skb.dev.mtu < 1500 and '
                                        .. 'skb.sk.sk_protocol ~= 6' })
            assert.is_nil(p.remainder)
            assert.same({ 2, ffi.C.NDQ_PC_RANGE, 0, 1499 },
                        { p.cfg.n_paths, p.cfg.path[0].cmp, tonumber(p.cfg.path[0].lo),
                          tonumber(p.cfg.path[0].hi) })
            assert.same({ ffi.C.NDQ_PC_NE, 6 }, { p.cfg.path[1].cmp, tonumber(p.cfg.path[1].ne) })
            p = assert(plan.make{ filter = 'skb.dev.name == "lo"' })
            assert.equal('skb.dev.name == "lo"', require("netdevq.filter").format(p.remainder))
        end)
    end)

    describe("kstack", function()
        it("symbolizes addresses as function+offset from kallsyms, like bpftrace", function()
            local kstack = require("netdevq.kstack")
            local path = os.tmpname()
            finally(function() os.remove(path) end)
            local f = assert(io.open(path, "w"))
            f:write("ffffffff81000000 T _stext\n",
                    "ffffffffa0000000 t bpf_prog_4ea76919e84b95ff_netdevq_raw\t[bpf]\n",
                    "ffffffff81200000 T bpf_trace_run1\n",
                    "ffffffff81300000 T __traceiter_net_dev_queue\n",
                    "ffffffff81400000 T __dev_queue_xmit\n",
                    "ffffffff81400800 D some_data\n",
                    "ffffffffc0001000 t veth_xmit\t[veth]\n")
            f:close()
            assert(kstack.load(path))
            local ips = ffi.new("uint64_t[5]", { 0xffffffffa0000010ULL, 0xffffffff812000feULL,
                                                 0xffffffff81300029ULL, 0xffffffff8140050eULL,
                                                 0xffffffffc0001004ULL })
            assert.equal("\n    __traceiter_net_dev_queue+41\n    __dev_queue_xmit+1294\n"
                         .. "    veth_xmit+4\n", kstack.format(ffi.string(ips, 40)))
        end)
    end)
end)
