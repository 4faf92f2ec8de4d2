-- -c follows one process tree, by pid. Pids are recycled: once a process of the tree has exited,
-- an unrelated process may get its pid, and must not be traced as part of the tree. The spec
-- forces the reuse: after the tree's senders exit, unrelated senders are started with exactly
-- their pids (writing /proc/sys/kernel/ns_last_pid just before each fork, retried until the pid
-- is hit, since other processes on the machine allocate pids too).
-- It also checks the other side (pruning must not cut the tree short): a process whose parent
-- exited stays in the tree, and what the kernel sends for a tree process while it exits (the
-- FIN of a socket it left open, sent after sched_process_exit) is still traced. These two pass
-- on a tracer that never prunes; they fail on one that prunes too eagerly.
local cjson = require("cjson")
local clirun = require("support.clirun")
local live = require("support.live")
local netns = require("support.netns")

local TREE = [[
ns=$1 a=$2 b=$3 send=$4 dir=$5
for i in 1 2 3 4 5; do
  ip netns exec "$ns" "$send" udp4 "$a" "$b" 7300 $((41000 + i)) 10 1 >/dev/null &
  echo $! >>"$dir/tree_pids"
  wait $!
done
touch "$dir/ready"
while [ ! -e "$dir/done" ]; do sleep 0.05; done
# a grandchild whose parent exits at once: still part of the tree when it sends
( ( sleep 0.3; exec ip netns exec "$ns" "$send" udp4 "$a" "$b" 7300 41100 10 1 >/dev/null ) & )
sleep 1.5
]]

-- For each pid: unrelated senders (sport 42000 + n) until one of them gets exactly that pid.
local REUSE = [[
ns=$1 a=$2 b=$3 send=$4; shift 4
n=0
for p in "$@"; do
  try=0
  while [ $try -lt 50 ]; do
    try=$((try + 1))
    n=$((n + 1))
    echo $((p - 1)) >/proc/sys/kernel/ns_last_pid
    ip netns exec "$ns" "$send" udp4 "$a" "$b" 7300 $((42000 + n)) 10 1 >/dev/null &
    c=$!
    wait $c
    if [ "$c" = "$p" ]; then echo "reused $p"; break; fi
  done
done
echo "senders $n"
]]

local function write_file(path, text)
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
end

local function exists(path)
    local f = io.open(path)
    if f then
        f:close()
    end
    return f ~= nil
end

describe("-c with recycled pids #root", function()
    local pair, dir
    live.pair_each_test({ name = "ndqpr", tmpdir = true }, function(p, d) pair, dir = p, d end)

    it("traces the tree's processes, never an unrelated process that got one of their pids",
        function()
            netns.require_root()
            write_file(dir .. "/tree.sh", TREE)
            write_file(dir .. "/reuse.sh", REUSE)
            local send = netns.ndq_send()
            local cmd = table.concat({ "sh", dir .. "/tree.sh", pair.ns_a, pair.ip4_a, pair.ip4_b,
                                       send, dir }, " ")
            local run = clirun.spawn_cli({ "-F", "json", "-o", "pid,sport", "-f",
                                           ("netns == %d and dport == 7300"):format(pair.netns_a),
                                           "-c", cmd, "-d", "120" })
            finally(function()
                write_file(dir .. "/done", "")
                run:wait(30)
            end)
            for _ = 1, 600 do
                if exists(dir .. "/ready") or run:done() then
                    break
                end
                clirun.sleep(0.05)
            end
            assert.is_true(exists(dir .. "/ready"), run:err_text())
            local tree_pids = {}
            for l in io.lines(dir .. "/tree_pids") do
                tree_pids[#tree_pids + 1] = l
            end
            assert.equal(5, #tree_pids)

            local argv = { "sh", dir .. "/reuse.sh", pair.ns_a, pair.ip4_a, pair.ip4_b, send }
            for _, p in ipairs(tree_pids) do
                argv[#argv + 1] = p
            end
            local reuse = clirun.run(argv, { timeout = 120 })
            assert.equal(0, reuse.code, reuse.err)
            local reused = {}
            for p in reuse.out:gmatch("reused (%d+)") do
                reused[#reused + 1] = p
            end
            -- the tree's pids went to unrelated senders (a pid another process on the machine
            -- grabbed first cannot be: most must be, or this run proves nothing)
            assert.is_true(#reused >= 3, "pids reused: " .. table.concat(reused, " ") .. " of "
                .. table.concat(tree_pids, " "))
            local senders = tonumber(reuse.out:match("senders (%d+)"))

            write_file(dir .. "/done", "")
            local r = run:wait(30)
            assert.equal(0, r.code, r.err)
            local got = {}
            for l in r.out:gmatch("[^\n]+") do
                local ev = cjson.decode(l)
                if ev.type == "event" then
                    got[#got + 1] = ev.sport
                    if ev.sport < 41100 then
                        assert.equal(tree_pids[ev.sport - 41000], tostring(ev.pid))
                    end
                end
            end
            table.sort(got)
            -- the five tree senders and the orphaned grandchild; none of the unrelated ones
            assert.same({ 41001, 41002, 41003, 41004, 41005, 41100 }, got)
            assert.is_true(senders >= 5)
        end)

    it("still traces what a process of the tree sends while it exits (the FIN of a socket left open)",
        function()
            netns.require_root()
            local listen = pair:spawn("b", { netns.ndq_send(), "tcplisten", pair.ip4_b, "8080",
                                             "10000" })
            assert.matches("^pid %d+$", listen:line())
            -- bash exits with the connection open: the kernel closes it (FIN) in the exit path
            local cmd = ("ip netns exec %s bash -c 'exec 3<>/dev/tcp/%s/8080; printf x >&3'")
                :format(pair.ns_a, pair.ip4_b)
            local r = clirun.cli({ "-F", "json", "-o", "tcp_flags,len", "-f",
                                   ("netns == %d and dport == 8080"):format(pair.netns_a),
                                   "-c", cmd, "-d", "20" }, { timeout = 40 })
            assert.equal(0, r.code, r.err)
            local ok = listen:wait()
            assert.is_true(ok)
            local flags = {}
            for l in r.out:gmatch("[^\n]+") do
                local ev = cjson.decode(l)
                if ev.type == "event" then
                    flags[#flags + 1] = ev.tcp_flags
                end
            end
            assert.equal("S", flags[1], r.out)
            local fin = false
            for _, f in ipairs(flags) do
                fin = fin or f:find("F", 1, true) ~= nil
            end
            assert.is_true(fin, r.out)
        end)
end)
