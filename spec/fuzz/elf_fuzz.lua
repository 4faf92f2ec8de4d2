-- spec/fuzz/elf_fuzz.lua SEED COUNT: feed mutated BPF objects to netdevq.core.open
-- (object_bytes = a mutation of build/netdevq.bpf.o). Needs root: whatever libbpf accepts is
-- loaded into the kernel (and closed again at once; nothing is ever attached).
--
-- Mutations: byte flips anywhere, flips inside one section (the ELF header, section headers,
-- .BTF, .BTF.ext, .maps, .rodata, relocations, symbols, strings, program text), header and
-- BTF fields set to edge values, instructions replaced, truncation. Every input must end in a
-- tracer (closed at once) or nil and a message of the documented forms; a raised error, another
-- message, or a crash (spec/fuzz_spec.lua sees the signal) is a failure. At the end every fd
-- must be back: nothing a failed open created may stay open.
--
-- Map sizes come from the object's BTF, so a mutation can ask for large maps: the ring buffer,
-- the aggregation and the pid maps are sized by core.open itself, and the kernel refuses per-CPU
-- arrays beyond its limits (E2BIG), which bounds what one input can take to a few hundred MiB,
-- freed at once. (Checking sizes with libbpf in this process first is no option: libbpf 1.1
-- crashes on some of these objects, which is why core.open tries user objects in a child.)
local here = (arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local common = require("common")
local top = common.setup_paths(arg[0])

local core = require("netdevq.core")
local fdlist = require("support.fdlist")

local random, pick, chance = math.random, common.pick, common.chance
local char, byte, sub = string.char, string.byte, string.sub

local run = common.runner("elf", 2000, arg)

local object_path = os.getenv("NDQ_FUZZ_OBJECT") or ((os.getenv("NETDEVQ_BUILD") or top .. "/build")
    .. "/netdevq.bpf.o")
local f = assert(io.open(object_path, "rb"))
local original = f:read("*a")
f:close()

-- ELF64 section table of the original --------------------------------------------------------
local function u16(s, o) return byte(s, o + 1) + byte(s, o + 2) * 256 end
local function u32(s, o) return u16(s, o) + u16(s, o + 2) * 65536 end
local function u64(s, o) return u32(s, o) + u32(s, o + 4) * 4294967296 end
local SECTIONS = {}
do
    local shoff, shentsize, shnum, shstrndx = u64(original, 0x28), u16(original, 0x3a),
        u16(original, 0x3c), u16(original, 0x3e)
    local strtab = u64(original, shoff + shstrndx * shentsize + 0x18)
    for i = 0, shnum - 1 do
        local sh = shoff + i * shentsize
        local name = original:match("^[^%z]*", strtab + u32(original, sh) + 1)
        local off, size = u64(original, sh + 0x18), u64(original, sh + 0x20)
        if size > 0 and u32(original, sh + 4) ~= 8 then -- not NOBITS
            SECTIONS[#SECTIONS + 1] = { name = name, off = off, size = size }
        end
        -- the section header itself is a target too
        SECTIONS[#SECTIONS + 1] = { name = "shdr " .. name, off = sh, size = shentsize }
    end
    SECTIONS[#SECTIONS + 1] = { name = "ELF header", off = 0, size = 64 }
end
local function section(name_pattern)
    local list = {}
    for _, s in ipairs(SECTIONS) do
        if s.name:match(name_pattern) then
            list[#list + 1] = s
        end
    end
    return #list > 0 and pick(list) or pick(SECTIONS)
end

local EDGE32 = { 0, 1, 2, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffffffe, 64, 4096, 0x10000 }

local function put(s, off, bytes)
    if off < 0 or off + #bytes > #s then
        return s
    end
    return sub(s, 1, off) .. bytes .. sub(s, off + #bytes + 1)
end

local function le32(v)
    return char(v % 256, math.floor(v / 256) % 256, math.floor(v / 65536) % 256,
        math.floor(v / 16777216) % 256)
end

local function flip_bytes(s, off, size, n)
    for _ = 1, n do
        local o = off + random(0, size - 1)
        if o < #s then
            s = put(s, o, char(bit.bxor(byte(s, o + 1), random(1, 255))))
        end
    end
    return s
end

local function mutate(s)
    local r = random(1, 100)
    local what
    if r <= 25 then
        local n = random(1, 8)
        what = n .. " random byte flips"
        s = flip_bytes(s, 0, #s, n)
    elseif r <= 55 then
        local sec = section(pick({ "^ELF", "^shdr", "^%.BTF$", "^%.BTF%.ext", "^%.maps", "^%.rodata",
            "^%.rel", "^%.symtab", "^%.strtab", "^raw_tp", "^tp_btf", "^license", "." }))
        local n = random(1, 6)
        what = n .. " flips in " .. sec.name
        s = flip_bytes(s, sec.off, sec.size, n)
    elseif r <= 70 then
        local sec = section(pick({ "^ELF", "^shdr" }))
        local off = sec.off + 4 * random(0, math.floor(sec.size / 4) - 1)
        local v = chance(0.3) and #s + random(-8, 8) or pick(EDGE32)
        what = string.format("u32 at 0x%x (%s) = 0x%x", off, sec.name, v)
        s = put(s, off, le32(v))
    elseif r <= 82 then
        local sec = section("^%.BTF")
        local off = sec.off + 4 * random(0, math.floor(sec.size / 4) - 1)
        local v = pick(EDGE32)
        what = string.format("u32 at 0x%x (%s) = 0x%x", off, sec.name, v)
        s = put(s, off, le32(v))
    elseif r <= 92 then
        local sec = section("^[rt][ap][wb_]")
        local off = sec.off + 8 * random(0, math.floor(sec.size / 8) - 1)
        what = string.format("instruction at 0x%x (%s) replaced", off, sec.name)
        s = put(s, off, common.random_bytes(8) .. ("\0"):rep(8)):sub(1, #s)
    else
        local cut = chance(0.5) and random(0, #s) or pick(SECTIONS).off + random(-2, 2)
        what = "truncated to " .. cut
        s = sub(s, 1, math.max(0, cut))
    end
    return s, what
end

-- the documented failure messages of core.open for an object
local CLEAN = {
    "^BPF object %(object_bytes%) is not a valid netdevq object %(.+%): rebuild with scripts/setup$",
    "^BPF object %(object_bytes%) is not a netdevq object of this version %(maps, programs or "
        .. "config missing%): rebuild with scripts/setup$",
    "^loading the BPF program failed %(.+%): run with %-v for libbpf's log$",
    "^setting the kernel filter failed %(.+%)$",
    "^ring buffer setup failed %(.+%)$",
    "^out of memory",
    -- libbpf 1.1 crashes on some malformed objects: core.open tries them in a child first
    "^BPF object %(object_bytes%) is malformed: libbpf crashed on it %(signal %d+ in a trial load%): "
        .. "rebuild with scripts/setup$",
    "^BPF object %(object_bytes%) is malformed: libbpf failed on it %(status %-?%d+ in a trial "
        .. "load%): rebuild with scripts/setup$",
}

local function check(input)
    local data = input.data
    local t, err = core.open{ object_bytes = data, mode = input.mode }
    if t then
        t:close()
        return "ok"
    end
    if type(err) ~= "string" then
        return nil, "no message"
    end
    for _, pattern in ipairs(CLEAN) do
        if err:match(pattern) then
            return "clean"
        end
    end
    return nil, "unexpected message: " .. err
end

-- START (third argument): skip the inputs before it (they are still generated, so that input
-- N is the same whatever START): after a crash the spec goes on from the next input
local start = run.start
local dump_at, dump_path = (os.getenv("NDQ_FUZZ_DUMP") or ""):match("^(%d+):(.+)$")
dump_at = tonumber(dump_at)
local before = fdlist.list()
local input = setmetatable({}, { __tostring = function(self) return self.what end })
for i = 1, run.count do
    local data, what = mutate(original)
    if chance(0.2) then -- sometimes two mutations at once
        local what2
        data, what2 = mutate(data)
        what = what .. "; " .. what2
    end
    input.data, input.mode = data, i % 2 == 0 and "btf" or "raw"
    input.what = "mutation " .. i .. " (" .. input.mode .. "): " .. what
    if i < start then
        goto continue
    end
    if not run:more() then
        break
    end
    if dump_at == i then -- NDQ_FUZZ_DUMP=N:PATH writes input N to PATH (to reproduce a crash)
        local out = assert(io.open(dump_path, "wb"))
        out:write(data)
        out:close()
    end
    run:check(input, check)
    ::continue::
end
collectgarbage()
collectgarbage()
local leaked = fdlist.diff(before, fdlist.list())
if #leaked > 0 then
    run:fail("after all inputs", "fds not given back: " .. table.concat(leaked, ", "))
end
run:finish()
