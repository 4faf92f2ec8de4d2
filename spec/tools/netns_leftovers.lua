--- spec/tools/netns_leftovers.lua: the suite-level check that no spec left a namespace behind.
--
--     luajit spec/tools/netns_leftovers.lua snapshot FILE   -- before the specs (ctest fixture setup)
--     luajit spec/tools/netns_leftovers.lua check FILE      -- after them (fixture cleanup)
--
-- check lists the namespaces named the way spec/support/netns.lua names its pairs
-- ("<name>-a-<pid>", ...) that were not there at the snapshot and whose making process has
-- ended: a spec process that left them. Namespaces of spec runs still going (other engineers may
-- run specs on this machine at the same time) and those from before the snapshot do not count.
-- Exit 0 when there is none, 1 with the names (and how to remove them) otherwise, 2 on misuse.
-- The check removes nothing: that is the job of the spec that made them.
local here = arg[0]:match("^(.*)/tools/[^/]*$") or "spec"
package.path = here .. "/?.lua;" .. package.path
local netns = require("support.netns")

local mode, file = arg[1], arg[2]
if not (mode == "snapshot" or mode == "check") or not file then
  io.stderr:write("usage: netns_leftovers.lua snapshot|check FILE\n")
  os.exit(2)
end

if mode == "snapshot" then
  local f = assert(io.open(file, "w"))
  for _, n in ipairs(netns.list("")) do f:write(n, "\n") end
  f:close()
  os.exit(0)
end

local before = {}
local f = io.open(file)
if not f then
  io.stderr:write("netns_leftovers: no snapshot at ", file, " (run the netns_snapshot test first)\n")
  os.exit(2)
end
for l in f:lines() do before[l] = true end
f:close()

local function running(pid)
  local fh = io.open("/proc/" .. pid .. "/stat")
  if fh then fh:close() end
  return fh ~= nil
end

local left = {}
for _, n in ipairs(netns.list("")) do
  local pid = netns.owner_pid(n)
  if pid and not before[n] and not running(pid) then left[#left + 1] = n end
end
table.sort(left)
if #left > 0 then
  io.stderr:write("namespaces left behind by spec processes that have ended: ", table.concat(left, " "),
    "\n(remove them with ip netns del NAME, and fix the spec that made them)\n")
  os.exit(1)
end
print("no namespace left behind")
