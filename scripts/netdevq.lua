#!/usr/bin/env luajit
-- netdevq command line, run from a source tree: luajit scripts/netdevq.lua [options] [expression]
-- (an installed rock provides the same as `netdevq`). Finds lua/ and build/ beside this script.
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local top = here .. "/.."
package.path = top .. "/lua/?.lua;" .. top .. "/lua/?/init.lua;" .. package.path
package.cpath = top .. "/build/?.so;" .. package.cpath
os.exit(require("netdevq.cli").main({ ... }))
