#!/usr/bin/env luajit
-- netdevq command line. From a source tree: luajit scripts/netdevq.lua [options] [expression],
-- with the modules from lua/ and build/ beside this script. Installed (the rock's `netdevq`
-- command, PREFIX/bin/netdevq): the modules from PREFIX/share/lua/5.1 and PREFIX/lib/lua/5.1,
-- then wherever package.path and package.cpath point.
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
-- No code from the current directory: LuaJIT's default paths begin with ./?.lua and ./?.so, so
-- `cd /tmp && sudo netdevq` would run a /tmp/argparse.lua. Only absolute entries are kept.
local function absolute_only(list)
    local keep = {}
    for entry in list:gmatch("[^;]+") do
        if entry:sub(1, 1) == "/" then
            keep[#keep + 1] = entry
        end
    end
    return table.concat(keep, ";")
end
package.path, package.cpath = absolute_only(package.path), absolute_only(package.cpath)
local top = here .. "/.."
local source_tree = io.open(top .. "/lua/netdevq/init.lua")
if source_tree then
    source_tree:close()
    package.path = top .. "/lua/?.lua;" .. top .. "/lua/?/init.lua;" .. package.path
    -- NETDEVQ_BUILD: another build tree's C module (the sanitizer suite runs the CLI from
    -- build-asan)
    package.cpath = (os.getenv("NETDEVQ_BUILD") or top .. "/build") .. "/?.so;" .. package.cpath
else
    package.path = top .. "/share/lua/5.1/?.lua;" .. top .. "/share/lua/5.1/?/init.lua;"
        .. package.path
    package.cpath = top .. "/lib/lua/5.1/?.so;" .. package.cpath
end
os.exit(require("netdevq.cli").main({ ... }))
