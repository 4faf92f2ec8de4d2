-- netdevq.kstack: the `kstack` field — the kernel stack that queued the packet, captured in the
-- kernel (bpf_get_stackid into the stack map "kstacks", only when kstack is asked for) and
-- symbolized here from /proc/kallsyms as "function+offset" frames, innermost first.
--
-- The text is bpftrace's: a newline, then one frame per line indented by four spaces, so that
-- `--count kstack` prints `@[` .. kstack .. `]: N` exactly like bpftrace's @[kstack] = count().
-- Stacks are read from the tracer that was opened last with kstack (one stack map per process).
local ffi = require("ffi")

local ffi_cast = ffi.cast
local format = string.format
local concat = table.concat
local sort = table.sort
local tonumber = tonumber
local io_open = io.open
local ipairs = ipairs

-- kernel addresses lie above BASE; their distance from it fits a double exactly (< 2^53)
local BASE = 0xffff000000000000ULL
local u64_ptr_t = ffi.typeof("const uint64_t *")
local INDENT = "    "


local _M = {}


---------------------------------------------------------------------------------------------
-- /proc/kallsyms
---------------------------------------------------------------------------------------------

local syms -- { addr = { sorted distances from BASE }, name = { ... } }, loaded once

-- Loads the text symbols of /proc/kallsyms (needs root to see addresses: they read 0 otherwise).
local function load_syms(path)
    local f, err = io_open(path or "/proc/kallsyms", "r")
    if not f then
        return nil, "cannot read kernel symbols: " .. err
    end
    local list = {}
    for line in f:lines() do
        local hex, kind, name = line:match("^(%x+) (%a) (%S+)")
        if hex and (kind == "t" or kind == "T" or kind == "w" or kind == "W") then
            local hi, lo = tonumber(hex:sub(1, -9), 16) or 0, tonumber(hex:sub(-8), 16)
            if hi >= 0xffff0000 then
                list[#list + 1] = { (hi - 0xffff0000) * 2 ^ 32 + lo, name }
            end
        end
    end
    f:close()
    if #list == 0 then
        return nil, "no kernel symbol addresses in /proc/kallsyms (run as root)"
    end
    sort(list, function(a, b) return a[1] < b[1] end)
    local addr, name = {}, {}
    for i, e in ipairs(list) do
        addr[i], name[i] = e[1], e[2]
    end
    return { addr = addr, name = name }
end

-- "function+offset" for a distance from BASE (the hex address when no symbol covers it)
local function symbolize(d)
    local addr = syms.addr
    local lo, hi = 1, #addr
    if d < addr[1] then
        return format("0x%x", d)
    end
    while lo < hi do
        local mid = math.floor((lo + hi + 1) / 2)
        if addr[mid] <= d then
            lo = mid
        else
            hi = mid - 1
        end
    end
    return format("%s+%d", syms.name[lo], d - addr[lo])
end

-- The text of a stack given as a string of native __u64 addresses.
function _M.format(ips)
    if not syms then
        local s, err = load_syms()
        if not s then
            return nil, err
        end
        syms = s
    end
    local n = #ips / 8
    local p = ffi_cast(u64_ptr_t, ips)
    local lines = { "" }
    for i = 0, n - 1 do
        local frame = symbolize(tonumber(p[i] - BASE))
        -- the program itself and the tracepoint's BPF runner are not the packet's path: start
        -- at the tracepoint, where bpftrace's stacks start
        if #lines > 1 or not (frame:find("^bpf_prog_") or frame:find("^bpf_trace_run")) then
            lines[#lines + 1] = INDENT .. frame
        end
    end
    lines[#lines + 1] = ""
    return concat(lines, "\n")
end

-- For specs: symbolize from another kallsyms file.
function _M.load(path)
    local s, err = load_syms(path)
    if not s then
        return nil, err
    end
    syms = s
    return true
end


---------------------------------------------------------------------------------------------
-- Stack ids -> text, from the tracer that captures them
---------------------------------------------------------------------------------------------

local source       -- the core tracer whose stack map ids refer to
local cache = {}   -- id -> text

-- Ids from now on refer to this core tracer's stack map.
function _M.use(core_tracer)
    source = core_tracer
    cache = {}
end

-- Text of stack id (nil: no stack; a failed capture, -EFAULT/-EEXIST, or a lost map entry).
function _M.text(id)
    if id == nil or id < 0 or not source then
        return nil
    end
    local text = cache[id]
    if text == nil then
        local ips = source:kstack(id)
        text = ips and _M.format(ips) or false
        cache[id] = text
    end
    return text or nil
end

-- The catalogue row of the kstack field. The event and an in-kernel key hold 1 + the stack id
-- (0: no stack).
local u32_ptr_t = ffi.typeof("const uint32_t *")
function _M.row()
    return {
        name = "kstack", type = "string", example = '"..."',
        description = "kernel stack that queued the packet, function+offset per frame (like "
            .. "bpftrace's kstack); captured only when asked for",
        raw = function(p) return _M.text(p.kstack - 1) end,
        loc = { off = ffi.offsetof("struct netdevq_event", "kstack"), size = 4,
                kind = ffi.C.NDQ_LOC_NUMBER, when_flags = 0, when_l3 = 0, when_nonzero = 1 },
        decode_key = function(b, off) return _M.text(ffi_cast(u32_ptr_t, b + off)[0] - 1) end,
    }
end


return _M
