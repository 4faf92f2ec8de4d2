--- spec/support/fdlist.lua: the open fds of a process, read in-process (opendir/readlink through
-- the FFI), so that listing them opens nothing but the directory stream itself, which is in
-- every list alike. (A popen'd `find` races with popen closing its pipe ends.)
--
--     local fdlist = require("support.fdlist")
--     local before = fdlist.list()        -- sorted targets, inode numbers dropped: "pipe", ...
--     ... ; local d = fdlist.diff(before, fdlist.list())   -- { "added pipe", "removed ..." }
local ffi = require("ffi")

pcall(ffi.cdef, [[
typedef struct ndq_fdlist_DIR ndq_fdlist_DIR;
struct ndq_fdlist_dirent { uint64_t d_ino; int64_t d_off; unsigned short d_reclen;
                           unsigned char d_type; char d_name[256]; };
ndq_fdlist_DIR *ndq_fdlist_opendir(const char *name) __asm__("opendir");
struct ndq_fdlist_dirent *ndq_fdlist_readdir(ndq_fdlist_DIR *d) __asm__("readdir");
int ndq_fdlist_closedir(ndq_fdlist_DIR *d) __asm__("closedir");
long ndq_fdlist_readlink(const char *path, char *buf, size_t size) __asm__("readlink");
]])
local C = ffi.C

local _M = {}

local buf = ffi.new("char[4096]")

--- Sorted link targets of pid's fds (default: this process), "pipe:[123]" -> "pipe".
function _M.list(pid)
    local dir = "/proc/" .. (pid or "self") .. "/fd"
    local d = C.ndq_fdlist_opendir(dir)
    if d == nil then
        return {}
    end
    local names = {}
    while true do
        local e = C.ndq_fdlist_readdir(d)
        if e == nil then
            break
        end
        local name = ffi.string(e.d_name)
        if name:match("^%d+$") then
            names[#names + 1] = name
        end
    end
    local targets = {}
    for _, name in ipairs(names) do
        local n = C.ndq_fdlist_readlink(dir .. "/" .. name, buf, 4096)
        if n > 0 then
            targets[#targets + 1] = (ffi.string(buf, n):gsub(":%[%d+%]$", ""))
        end
    end
    C.ndq_fdlist_closedir(d)
    table.sort(targets)
    return targets
end

--- Multiset difference: the elements of a (as key(e), key defaulting to tostring), in a's
-- order, that b does not hold as often.
function _M.minus(a, b, key)
    key = key or tostring
    local count, out = {}, {}
    for _, e in ipairs(b) do
        local k = key(e)
        count[k] = (count[k] or 0) + 1
    end
    for _, e in ipairs(a) do
        local k = key(e)
        if (count[k] or 0) > 0 then
            count[k] = count[k] - 1
        else
            out[#out + 1] = k
        end
    end
    return out
end

--- The difference of two fd lists: a sorted list of "added TARGET" / "removed TARGET".
function _M.diff(before, after)
    local lines = {}
    for _, t in ipairs(_M.minus(after, before)) do
        lines[#lines + 1] = "added " .. t
    end
    for _, t in ipairs(_M.minus(before, after)) do
        lines[#lines + 1] = "removed " .. t
    end
    table.sort(lines)
    return lines
end

return _M
