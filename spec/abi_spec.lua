local ffi = require("ffi")

local function read_file(path)
    local f = assert(io.open(path, "r"))
    local text = f:read("*a")
    f:close()
    return text
end

-- The C module, or a failed assertion that says how to get it (never a silent pass).
local function core()
    local ok, mod = pcall(require, "netdevq.core")
    assert(ok, "netdevq.core is not built (looked for build/netdevq/core.so via the cpath in "
               .. ".busted); build it first (cmake -S . -B build && cmake --build build): "
               .. tostring(mod))
    return mod
end

describe("netdevq.abi #unit", function()
    local abi

    setup(function()
        abi = require("netdevq.abi")
    end)

    describe("declarations", function()
        it("expose the ABI ctypes", function()
            assert.are.equal(ffi.typeof("struct netdevq_event"), abi.event_t)
            assert.are.equal(ffi.typeof("const struct netdevq_event *"), abi.event_ptr_t)
            assert.are.equal(ffi.typeof("struct netdevq_config"), abi.config_t)
            assert.are.equal(ffi.typeof("struct netdevq_agg_key"), abi.agg_key_t)
            assert.are.equal(ffi.typeof("struct netdevq_agg_value"), abi.agg_value_t)
            assert.are.equal(ffi.sizeof(abi.event_t), abi.EVENT_SIZE)
        end)

        it("put the snap bytes last but for the member-path block, and size them NDQ_SNAP_MAX",
           function()
            assert.are.equal(256, abi.SNAP_MAX)
            assert.are.equal(abi.SNAP_MAX, ffi.sizeof(ffi.new(abi.event_t).snap))
            -- after snap: only what runs with sk_buff member paths or kstack send (skbpath.h)
            local snap_end = ffi.offsetof(abi.event_t, "snap") + abi.SNAP_MAX
            assert.are.equal(snap_end, ffi.offsetof(abi.event_t, "path_present"))
            local tail = abi.EVENT_SIZE - ffi.offsetof(abi.event_t, "path") - 16 * 8
            assert.is_true(tail >= 0 and tail < 8)
            assert.are.equal(0, ffi.offsetof(abi.event_t, "ts"))
            assert.are.equal(0, abi.EVENT_SIZE % 8)
        end)

        it("size the aggregation types from the limits", function()
            assert.are.equal(abi.AGG_KEYS_MAX * abi.AGG_KEY_SLOT, ffi.sizeof(abi.agg_key_t))
            assert.are.equal(4 * 8 + abi.AGG_SLOTS * 8, ffi.sizeof(abi.agg_value_t))
        end)

        it("give the field location kinds, NEED and event flag bits of netdevq.h", function()
            assert.are.same({ NUMBER = 0, BYTES = 1, ADDRESS = 2, IPV4 = 3 }, abi.LOC)
            assert.are.equal(10, ffi.sizeof("struct netdevq_field_loc")) -- with when_path
            assert.are.equal(6, abi.AGG_KEYS_MAX)
            assert.are.equal(24, abi.AGG_KEY_SLOT)
            assert.are.same({ HEADERS = 1, NETNS = 2, GSO = 4, CGROUP = 8, TASK = 16, DEV = 32,
                              TS = 64, OWNER = 128, ALL = 255, LATENCY = 256, L4 = 512 }, abi.NEED)
            assert.are.same({ MAC = 1, L4 = 2, TCP = 4, FRAG = 8, ICMP = 16, VLAN = 32,
                              VLAN_HW = 64, IPFRAG = 128, IP6 = 256, ARP = 512, OWNER = 0x8000,
                              XMIT = 0x1000, XMIT_DONE = 0x2000, DROP = 0x4000 }, abi.EV)
            assert.are.equal(3, abi.CNT.LOST)
            assert.are.same({ NONE = 0, LOG2 = 1, LINEAR = 2 }, abi.HIST)
        end)

        it("survive being loaded again (the FFI keeps declarations for the process)", function()
            package.loaded["netdevq.abi"] = nil
            local again = require("netdevq.abi")
            assert.are.equal(abi.event_t, again.event_t)
        end)
    end)

    describe("agreement with netdevq.core", function()
        it("has the sizes the C module was compiled with", function()
            local layout = core().layout
            assert.are.equal("table", type(layout), "netdevq.core.layout is missing")
            assert.are.equal(layout.event_size, ffi.sizeof(abi.event_t))
            assert.are.equal(layout.config_size, ffi.sizeof(abi.config_t))
            assert.are.equal(layout.agg_key_size, ffi.sizeof(abi.agg_key_t))
            assert.are.equal(layout.agg_value_size, ffi.sizeof(abi.agg_value_t))
        end)

        it("has the event member offsets the C module was compiled with", function()
            local offsets = core().layout.offsets
            assert.are.equal("table", type(offsets), "netdevq.core.layout.offsets is missing")
            for _, member in ipairs{ "ts", "pid", "len", "saddr", "snap" } do
                assert.is_number(offsets[member], "layout.offsets." .. member .. " is missing")
            end
            for member, offset in pairs(offsets) do
                assert.are.equal(offset, ffi.offsetof(abi.event_t, member),
                                 "offset of netdevq_event." .. member)
            end
        end)

        it("has the config member offsets the C module was compiled with", function()
            local offsets = core().layout.config_offsets
            assert.are.equal("table", type(offsets), "netdevq.core.layout.config_offsets is missing")
            assert.is_true(next(offsets) ~= nil, "netdevq.core.layout.config_offsets is empty")
            for member, offset in pairs(offsets) do
                assert.are.equal(offset, ffi.offsetof(abi.config_t, member),
                                 "offset of netdevq_config." .. member)
            end
        end)

        it("was built from this tree's bpf/netdevq.h", function()
            local header = core().HEADER
            assert.are.equal("string", type(header), "netdevq.core.HEADER is missing")
            assert.are.equal(read_file("bpf/netdevq.h"), header,
                             "build/netdevq/core.so is stale: rebuild it")
        end)
    end)
end)
