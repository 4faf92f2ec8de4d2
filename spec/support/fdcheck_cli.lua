-- spec/support/fdcheck_cli.lua: the netdevq CLI (scripts/netdevq.lua) with a check around it:
-- the process's open fds are listed before and after netdevq.cli.main() runs, and the
-- difference is written to the file named by $NDQ_FDCHECK, as lines "added TARGET" /
-- "removed TARGET" (inode numbers dropped), then "held N" (BPF objects still held) and
-- "status N". Used by specs (support.clirun, opts.fdcheck) to prove that every way a run ends
-- (errors, a closed pipe, SIGINT, SIGTERM, a failing script) gives back every fd and BPF object
-- before exit, not only because the process exits.
--
--   NDQ_FDCHECK=/tmp/report luajit spec/support/fdcheck_cli.lua [netdevq options]
--
-- Finds lua/ two directories up (the source tree or a copy of it); the C module comes from
-- $NETDEVQ_BUILD or <top>/build.
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local top = here .. "/../.."
package.path = top .. "/lua/?.lua;" .. top .. "/lua/?/init.lua;" .. top .. "/spec/?.lua;"
    .. package.path
package.cpath = (os.getenv("NETDEVQ_BUILD") or top .. "/build") .. "/?.so;" .. package.cpath

local fdlist = require("support.fdlist")

local report_path = assert(os.getenv("NDQ_FDCHECK"), "NDQ_FDCHECK must name the report file")
local cli = require("netdevq.cli")
-- the CLI's pre-open thread (netdevq.core's startup.c) holds /sys/kernel/btf/vmlinux open for a
-- moment: the list is taken once it is done (main() still takes its object, or closes it). The
-- object it leaves comes with a memfd (its cut-down CO-RE types, csrc/corebtf.c), which main()
-- closes once it has loaded, or not taken, that object: that one fd may go, none may come.
require("netdevq.core").preopen_wait()
local before = fdlist.list()
local status = cli.main({ ... })
local lines = {}
for _, l in ipairs(fdlist.diff(before, fdlist.list())) do
    if l ~= "removed /memfd:netdevq-core-btf (deleted)" then
        lines[#lines + 1] = l
    end
end
local held = 0
for _, l in ipairs(lines) do
    if l:match("^added anon_inode:bpf") then
        held = held + 1
    end
end
lines[#lines + 1] = "held " .. held
lines[#lines + 1] = "status " .. tostring(status)
local f = assert(io.open(report_path, "w"))
f:write(table.concat(lines, "\n"), "\n")
f:close()
os.exit(status)
