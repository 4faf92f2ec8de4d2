--- spec/support/bpfobjs.lua: which BPF programs, maps and links a process holds, and whether
-- any netdevq object outlived its process. For the leak and failure specs.
--
--     local bpfobjs = require("support.bpfobjs")
--     local before = bpfobjs.fds()                 -- this process's open fds (targets, sorted)
--     local held = bpfobjs.held(pid)               -- { prog = {id=true}, map = {...}, link = {...} }
--     assert.same({}, bpfobjs.still_loaded(held))  -- ids that bpftool still lists
--     assert.same({}, bpfobjs.orphans())           -- netdevq objects no process holds
--
-- Other engineers (benchmarks, specs) may run netdevq on this machine at the same time, so
-- nothing here looks at "all netdevq objects": held() reads the ids from /proc/PID/fdinfo (the
-- bpftool of Debian 12 is built without the "pids" field), still_loaded() asks bpftool about
-- exactly those ids (ids are not reused), and orphans() only reports objects that no live
-- process holds (by fd, or through a held program or link) and that stay so for a while.

local cjson = require("cjson")

local _M = {}

-- netdevq's object names as bpftool shows them (names are cut at 15 characters)
_M.PROG_NAMES = { netdevq_raw = true, netdevq_direct = true, netdevq_btf = true, netdevq_fork = true,
                  netdevq_exit = true }
_M.MAP_NAMES = {
    events = true, counters = true, scratch = true, aggs = true, aggtab = true, tracked = true,
    exited = true, sets = true,
    ["netdevq.rodata"] = true,
}
-- the socket-owner programs and maps (bpf/owner.bpf.h), loaded only when owners are asked for
_M.OWNER_PROG_NAMES = {
    ndq_owner_send = true, ndq_owner_recv = true, ndq_owner_state = true,
    ndq_owner_destroy = true, ndq_owner_softirq_entry = true, ndq_owner_softirq_exit = true,
    ndq_owner_softi = true, -- both, where bpftool shows the kernel's 15-character name
}
for name in pairs(_M.OWNER_PROG_NAMES) do
    _M.PROG_NAMES[name] = true
end
for _, name in ipairs({ "owners", "owner_inodes", "owner_listeners", "owner_softirq" }) do
    _M.MAP_NAMES[name] = true
end

local clirun = require("support.clirun")
local sh_quote, read_cmd, read_file = clirun.quote, clirun.read_cmd, clirun.try_read

--- Adds the ids of held (as from held()) to the id sets of into ({ prog =, map =, link = }).
function _M.merge(into, held)
    for _, kind in ipairs({ "prog", "map", "link" }) do
        for id in pairs(held[kind]) do
            into[kind][id] = true
        end
    end
end

--- A file's whole text, or nil when it cannot be read.
_M.read_file = read_file

function _M.getpid()
    local s = assert(read_file("/proc/self/stat"))
    return tonumber(s:match("^(%d+)"))
end

--- The targets of pid's open fds (default: this process), sorted, inode numbers dropped, and
-- the difference of two such lists: see support.fdlist.
local fdlist = require("support.fdlist")
_M.fds = fdlist.list
_M.diff = fdlist.diff

local KIND_BY_TARGET = {
    ["anon_inode:bpf-prog"] = "prog", ["anon_inode:bpf-map"] = "map", ["anon_inode:bpf_link"] = "link",
}

--- BPF objects pid holds through its fds: { prog = {[id]=true}, map = {...}, link = {...} }.
-- A link also counts its program. Returns an empty set for a process that is gone.
function _M.held(pid)
    pid = pid or _M.getpid()
    local held = { prog = {}, map = {}, link = {} }
    local out = read_cmd("find /proc/" .. pid .. "/fd -mindepth 1 -maxdepth 1 -lname "
        .. "'anon_inode:bpf*' -printf '%f %l\\n' 2>/dev/null")
    for fd, target in out:gmatch("(%d+) ([^\n]*)") do
        local kind = KIND_BY_TARGET[target]
        local info = kind and read_file("/proc/" .. pid .. "/fdinfo/" .. fd)
        if info then
            local id = tonumber(info:match("\n" .. kind .. "_id:%s*(%d+)")
                or info:match("^" .. kind .. "_id:%s*(%d+)"))
            if id then
                held[kind][id] = true
            end
            if kind == "link" then
                local prog = tonumber(info:match("prog_id:%s*(%d+)"))
                if prog then
                    held.prog[prog] = true
                end
            end
        end
    end
    return held
end

--- The number of ids in a held() set.
function _M.count(held)
    local n = 0
    for _, kind in ipairs({ "prog", "map", "link" }) do
        for _ in pairs(held[kind]) do
            n = n + 1
        end
    end
    return n
end

local function bpftool(kind)
    local out = read_cmd("bpftool -j " .. kind .. " show 2>/dev/null")
    local ok, list = pcall(cjson.decode, out)
    if not ok or type(list) ~= "table" then
        return {}
    end
    return list
end

--- What bpftool lists now: { prog = {[id]=entry}, map = {...}, link = {...} }.
function _M.snapshot()
    local snap = {}
    for _, kind in ipairs({ "prog", "map", "link" }) do
        snap[kind] = {}
        for _, e in ipairs(bpftool(kind)) do
            snap[kind][e.id] = e
        end
    end
    return snap
end

--- The ids of held that bpftool still lists, as strings "prog 12 (netdevq_raw)" (sorted);
-- waits up to wait_s (default 5) for the kernel to free them (freeing is asynchronous).
function _M.still_loaded(held, wait_s)
    local deadline = os.time() + (wait_s or 5)
    while true do
        local snap = _M.snapshot()
        local left = {}
        for _, kind in ipairs({ "prog", "map", "link" }) do
            for id in pairs(held[kind]) do
                local e = snap[kind][id]
                if e then
                    left[#left + 1] = kind .. " " .. id .. " (" .. tostring(e.name or e.tp_name or
                        e.type) .. ")"
                end
            end
        end
        table.sort(left)
        if #left == 0 or os.time() >= deadline then
            return left
        end
        os.execute("sleep 0.2")
    end
end

-- Every BPF object some live process holds, directly or through a held program or link.
local function held_anywhere(snap)
    local all = { prog = {}, map = {}, link = {} }
    local out = read_cmd("find /proc/[0-9]*/fd -mindepth 1 -maxdepth 1 -lname 'anon_inode:bpf*' "
        .. "-printf '%h %f\\n' 2>/dev/null")
    local seen_pid = {}
    for dir in out:gmatch("/proc/(%d+)/fd %d+") do
        seen_pid[dir] = true
    end
    for pid in pairs(seen_pid) do
        _M.merge(all, _M.held(pid))
    end
    for id in pairs(all.link) do
        local e = snap.link[id]
        if e and e.prog_id then
            all.prog[e.prog_id] = true
        end
    end
    for id in pairs(all.prog) do
        local e = snap.prog[id]
        for _, m in ipairs(e and e.map_ids or {}) do
            all.map[m] = true
        end
    end
    return all
end

local function orphan_set(snap)
    local held = held_anywhere(snap)
    local netdevq_progs, found = {}, {}
    for id, e in pairs(snap.prog) do
        if _M.PROG_NAMES[e.name] then
            netdevq_progs[id] = true
            if not held.prog[id] then
                found["prog " .. id .. " (" .. e.name .. ")"] = true
            end
        end
    end
    for id, e in pairs(snap.link) do
        if e.prog_id and netdevq_progs[e.prog_id] and not held.link[id] then
            found["link " .. id .. " (prog " .. e.prog_id .. ")"] = true
        end
    end
    -- maps: a netdevq-named map that nothing holds and no live program uses
    local used = {}
    for _, e in pairs(snap.prog) do
        for _, m in ipairs(e.map_ids or {}) do
            used[m] = true
        end
    end
    for id, e in pairs(snap.map) do
        if _M.MAP_NAMES[e.name] and not held.map[id] and not used[id] then
            found["map " .. id .. " (" .. e.name .. ")"] = true
        end
    end
    return found
end

--- netdevq programs, links and maps that no live process holds: leftovers. An object only counts
-- when it is still there and still unheld after settle_s (default 2) seconds, so that objects
-- of a process that is just exiting (another engineer's run) are not reported. Sorted strings.
function _M.orphans(settle_s)
    local first = orphan_set(_M.snapshot())
    if next(first) == nil then
        return {}
    end
    os.execute("sleep " .. (settle_s or 2))
    local second = orphan_set(_M.snapshot())
    local list = {}
    for k in pairs(first) do
        if second[k] then
            list[#list + 1] = k
        end
    end
    table.sort(list)
    return list
end

--- BPF object files: ELF64 little-endian section lookup: offset and size of the section called name.
function _M.elf_section(data, name)
    local function u16(o) return data:byte(o + 1) + data:byte(o + 2) * 256 end
    local function u32(o) return u16(o) + u16(o + 2) * 65536 end
    local function u64(o) return u32(o) + u32(o + 4) * 4294967296 end
    assert(data:sub(1, 4) == "\127ELF" and data:byte(5) == 2 and data:byte(6) == 1, "not ELF64 LE")
    local shoff, shentsize, shnum, shstrndx = u64(0x28), u16(0x3a), u16(0x3c), u16(0x3e)
    local strtab = u64(shoff + shstrndx * shentsize + 0x18)
    for i = 0, shnum - 1 do
        local sh = shoff + i * shentsize
        local noff = strtab + u32(sh)
        local sname = data:match("^[^%z]*", noff + 1)
        if sname == name then
            return u64(sh + 0x18), u64(sh + 0x20)
        end
    end
    error("no section " .. name)
end

--- data with count bytes from offset (0-based) inverted
function _M.flip(data, offset, count)
    local mid = data:sub(offset + 1, offset + count):gsub(".", function(c)
        return string.char(255 - c:byte())
    end)
    return data:sub(1, offset) .. mid .. data:sub(offset + count + 1)
end

local function le_u32(data, o) -- o: 0-based
    local a, b, c, d = data:byte(o + 1, o + 4)
    return a + b * 256 + c * 65536 + d * 16777216
end

--- data with the first member of BTF struct `name` pointing at type id 0x7fffffff (there is no
-- such type): the kind of damage libbpf 1.1 crashes on while it relocates (CO-RE) a program
-- that reads that struct. The kernel never sees it: core.open refuses the object after a trial
-- load in a child process.
function _M.btf_break_struct(data, name)
    local base = _M.elf_section(data, ".BTF")
    local hdr_len, type_off, type_len = le_u32(data, base + 4), le_u32(data, base + 8),
        le_u32(data, base + 12)
    local str_off = le_u32(data, base + 16)
    local t, stop = base + hdr_len + type_off, base + hdr_len + type_off + type_len
    local strings = base + hdr_len + str_off
    local EXTRA = { [1] = 4, [3] = 12, [14] = 4, [17] = 4 }  -- INT, ARRAY, VAR, DECL_TAG
    local PER_VLEN = { [4] = 12, [5] = 12, [6] = 8, [13] = 8, [15] = 12, [19] = 12 }
    while t < stop do
        local name_off, info = le_u32(data, t), le_u32(data, t + 4)
        local kind, vlen = math.floor(info / 16777216) % 32, info % 65536
        local tname = data:match("^[^%z]*", strings + name_off + 1)
        if kind == 4 and vlen >= 1 and tname == name then
            return data:sub(1, t + 16) .. "\255\255\255\127" .. data:sub(t + 21)
        end
        t = t + 12 + (EXTRA[kind] or 0) + (PER_VLEN[kind] or 0) * vlen
    end
    error("no struct " .. name .. " in the object's BTF")
end

_M.sh_quote = sh_quote

return _M
