-- netdevq.netns: network namespaces by name. `ip netns add NAME` bind-mounts the namespace at
-- /run/netns/NAME; its inode number is what the netns field holds. Names resolve to inodes for
-- filters (`netns == "blue"`, --netns blue), and inodes back to names for the netns_name field.
local ffi = require("ffi")

local NETNS_DIR = "/run/netns"

-- time(2) through the FFI: name() runs per event (the netns_name field), where os.time would
-- stop the JIT's trace
pcall(ffi.cdef, "long ndq_netns_time(void *t) __asm__(\"time\");")
local C = ffi.C

local _M = {}

-- inode of a path, following links (coreutils' stat: no struct stat layout to get wrong)
local function inode(path)
    local quoted = "'" .. path:gsub("'", "'\\''") .. "'"
    local p = io.popen("stat -L -c %i " .. quoted .. " 2>/dev/null")
    if not p then
        return nil
    end
    local out = p:read("*l")
    p:close()
    return tonumber(out)
end

-- "blue" -> its inode number, or nil, why. A number (or digits) is taken as an inode already.
function _M.inode(name)
    if type(name) == "number" then
        return name
    end
    if type(name) ~= "string" or name == "" or name:find("[/%z]") or name:match("^%.%.?$") then
        return nil, "not a network namespace name"
    end
    if name:match("^%d+$") then
        return tonumber(name)
    end
    local ino = inode(NETNS_DIR .. "/" .. name)
    if not ino then
        return nil, "no network namespace '" .. name .. "' (ip netns list shows the names)"
    end
    return ino
end

local names, names_at = nil, -1 -- inode -> name, refreshed at most once a second

-- inode -> the name `ip netns` knows it by, or nil
function _M.name(ino)
    local now = tonumber(C.ndq_netns_time(nil))
    if names == nil or now ~= names_at then
        names, names_at = {}, now
        local p = io.popen("stat -L -c '%i %n' " .. NETNS_DIR .. "/* 2>/dev/null")
        if p then
            for line in p:lines() do
                local i, path = line:match("^(%d+) (.+)$")
                if i then
                    names[tonumber(i)] = path:match("([^/]+)$")
                end
            end
            p:close()
        end
    end
    return names[ino]
end

return _M
