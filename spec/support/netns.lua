--- spec/support/netns.lua: network namespaces and test traffic for privileged specs.
--
--     local netns = require("support.netns")
--     it("...", function()
--       netns.require_root()                      -- pending outside root, a failure in CI
--       local pair = assert(netns.pair{ name = "ndqt" })
--       finally(function() pair:destroy() end)
--       local rx = pair:spawn("b", { netns.ndq_send(), "udprecv", pair.ip4_b, "9000", "3", "3000" })
--       assert.equal("ready", rx:line())
--       pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, "9000", "40000", "100" })
--       local ok, code, lines = rx:wait()
--     end)
--
-- pair{ name = "ndqt" } creates namespaces "<name>-a-<pid>" and "<name>-b-<pid>" (a "-<n>" suffix
-- when this process already holds a pair of that name), joined by a veth pair "ndqa<n>" (in a) /
-- "ndqb<n>" (in b), n counting pairs per process. The veth ends are created directly inside the
-- namespaces, so their names never meet the host's or another process's. Addresses:
-- 198.18.0.1/24 <-> 198.18.0.2/24, 2001:db8::1/64 <-> 2001:db8::2/64 (nodad); fixed MACs
-- 02:6e:64:71:00:01 / 02:6e:64:71:00:02; veth and lo up in both. To keep measured windows quiet:
-- no IPv6 link-local addresses (addr_gen_mode none: no DAD), no router solicitations, MLD reports
-- squeezed into the first milliseconds after link up (report interval 1 ms), and permanent
-- neighbour entries for the peer (no ARP/ND on the wire; pass static_neigh = false to get the
-- kernel's resolution, then :neigh_warmup() before measuring).
--
-- Fields: ns_a, ns_b, veth_a, veth_b, ifindex_a, ifindex_b, netns_a, netns_b (inode numbers, as
-- the tracer's netns field), ip4_a, ip4_b, ip6_a, ip6_b, mac_a, mac_b, prefix4 (24), prefix6 (64).
--
-- Methods: :exec(ns, argv) -> ok, output, exit code (ns is "a" or "b"); :spawn(ns, argv) -> a
-- process handle; :neigh_warmup() -> true | nil, err; :destroy() -> true | nil, err.
-- Module: is_root(), require_root(), ndq_send() (tool path), pair(opts), run(argv) (like :exec
-- on the host), spawn(argv), list(prefix) (namespace names from `ip netns list`), leftovers()
-- (what this module made that is still there), clean_up() (removes it), owner_pid(nsname).
--
-- Process handles from :spawn(): :line() (next output line, stdout and stderr merged), :wait()
-- (ok, exit code, remaining lines), :kill([sig]), :stop() (TERM, then KILL after 2 s), .pid.
--
-- Commands are argument lists, each argument quoted for /bin/sh: no caller text is ever
-- interpreted by a shell. Everything a pair creates is removed by :destroy() (idempotent),
-- which also ends the processes :spawn() started and that are still running.

local _M = {}

local IP4_A, IP4_B, IP6_A, IP6_B = "198.18.0.1", "198.18.0.2", "2001:db8::1", "2001:db8::2"
local MAC_A, MAC_B = "02:6e:64:71:00:01", "02:6e:64:71:00:02"

-- Shell and processes --------------------------------------------------------------------------

local function quote(s)
  s = tostring(s)
  if s:match("^[%w%./:_,@%-]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function command_line(argv)
  if type(argv) ~= "table" or #argv == 0 then error("command must be a non-empty list of arguments", 3) end
  local out = {}
  for i, a in ipairs(argv) do
    if type(a) ~= "string" and type(a) ~= "number" then
      error("command argument " .. i .. " must be a string or number", 3)
    end
    out[i] = quote(a)
  end
  return table.concat(out, " ")
end

-- Runs argv, returns ok (exit 0), output (stdout and stderr), exit code. Works the same under
-- LuaJIT and Lua 5.2 (whose popen close results differ): the status travels as the last line.
local function run(argv)
  local p = assert(io.popen(command_line(argv) .. " </dev/null 2>&1; echo \"@@rc $?\""))
  local out = p:read("*a")
  p:close()
  local body, code = out:match("^(.-)@@rc (%d+)\n?$")
  code = tonumber(code) or -1
  return code == 0, body or out, code
end
_M.run = run

local function self_stat_field(pattern)
  local f = io.open("/proc/self/status")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s:match(pattern)
end

local function getpid()
  local f = assert(io.open("/proc/self/stat"))
  local s = f:read("*l")
  f:close()
  return tonumber(s:match("^(%d+)"))
end

--- True when the effective uid is 0.
function _M.is_root()
  local euid = self_stat_field("\nUid:%s+%d+%s+(%d+)")
  return tonumber(euid) == 0
end

local function find_pending()
  for level = 3, 10 do
    local ok, env = pcall(getfenv, level)
    if not ok then break end
    if type(env) == "table" then
      local p = env.pending
      if type(p) == "function" then return p end
    end
  end
  return rawget(_G, "pending")
end

--- true when root. Otherwise: in CI (CI=true) an error (a skipped privileged spec is a failure
-- there); elsewhere the running busted test becomes pending with the reason (this call does not
-- return then), or, outside busted, false and the reason.
function _M.require_root()
  if _M.is_root() then return true end
  local reason = "needs root (creates network namespaces and loads BPF): run the suite as root"
  if os.getenv("CI") == "true" then
    error("privileged spec not run in CI: " .. reason, 2)
  end
  local pending = find_pending()
  if pending then pending(reason) end
  return false, reason
end

--- Path of the ndq_send test tool: $NDQ_SEND or build/ndq_send (made absolute, so that it works
-- from any directory); raises with what to do when it is missing.
function _M.ndq_send()
  local path = os.getenv("NDQ_SEND") or "build/ndq_send"
  if path:sub(1, 1) ~= "/" then
    local p = io.popen("pwd")
    local cwd = p:read("*l")
    p:close()
    path = cwd .. "/" .. path
  end
  local f = io.open(path)
  if not f then
    error("ndq_send not found at " .. path .. ": build it (cmake --build build) or set NDQ_SEND", 2)
  end
  f:close()
  return path
end

-- Spawned processes ----------------------------------------------------------------------------

local Proc = {}
Proc.__index = Proc

-- host processes from _M.spawn not waited for yet (a pair's own end with the pair), for
-- leftovers()
local host_procs = {}

-- Reads one raw line, handling the "@@spawn" markers; returns a command output line or nil (EOF).
local function next_line(self)
  if #self.queue > 0 then return table.remove(self.queue, 1) end
  while self.fh do
    local l = self.fh:read("*l")
    if not l then
      self.fh:close()
      self.fh = nil
      return nil
    end
    local shpid, pid = l:match("^@@spawn pid (%d+) (%d+)$")
    local rc = l:match("^@@spawn rc (%d+)$")
    if pid then
      self.shpid, self.pid = tonumber(shpid), tonumber(pid)
      if self.starting then return nil end -- spawn() waits for the pid, not for output
    elseif rc then
      self.code = tonumber(rc)
    else
      return l
    end
  end
  return nil
end

--- Next output line (stdout and stderr merged), or nil at end of output.
function Proc:line()
  return next_line(self)
end

--- Reads the rest of the output; returns ok (exit code 0), exit code, list of remaining lines.
-- Blocks until the process ends: the test tools bound their own run time.
function Proc:wait()
  local lines = {}
  for l in next_line, self do lines[#lines + 1] = l end
  if self.pair then self.pair.procs[self] = nil end
  host_procs[self] = nil
  return self.code == 0, self.code, lines
end

-- True while the process runs and is still ours: our sh is its parent (the sh reaps it, so a
-- recycled pid never passes this).
local function alive(self)
  if self.code or not self.pid then return false end
  local f = io.open("/proc/" .. self.pid .. "/stat")
  if not f then return false end
  local stat = f:read("*l") or ""
  f:close()
  local state, ppid = stat:match("^%d+ %b() (%S+) (%d+)")
  return tonumber(ppid) == self.shpid and state ~= "Z"
end

--- Sends a signal (default TERM) if the process is still ours and running.
function Proc:kill(sig)
  if not alive(self) then return false end
  return (run({ "kill", "-" .. (sig or "TERM"), tostring(self.pid) }))
end

--- TERM, up to 2 s to go, then KILL; returns like :wait().
function Proc:stop()
  if self:kill("TERM") then
    for _ = 1, 20 do
      if not alive(self) then break end
      run({ "sleep", "0.1" })
    end
    self:kill("KILL")
  end
  return self:wait()
end

local function spawn(argv)
  -- sh runs the command in the background so that it can report its pid and, later, its status;
  -- background jobs of a non-interactive sh start with SIGINT/SIGQUIT ignored: env restores them
  -- (specs send SIGINT to tracers to test Ctrl-C)
  local line = "env --default-signal=INT,QUIT " .. command_line(argv)
  local cmd = "sh -c 'exec </dev/null 2>&1; " .. line:gsub("'", "'\\''")
    .. " & p=$!; echo \"@@spawn pid $$ $p\"; wait $p; echo \"@@spawn rc $?\"'"
  local fh = assert(io.popen(cmd))
  local self = setmetatable({ fh = fh, queue = {}, argv_text = table.concat(argv, " ") }, Proc)
  -- the pid marker comes first in practice; keep any earlier output for :line()
  self.starting = true
  while not self.pid do
    local l = next_line(self)
    if not l then break end
    self.queue[#self.queue + 1] = l
  end
  self.starting = nil
  return self
end

_M.spawn = function(argv)
  local proc = spawn(argv)
  host_procs[proc] = true
  return proc
end

-- Namespace pairs ------------------------------------------------------------------------------

local Pair = {}
Pair.__index = Pair

local function in_netns(ns, argv)
  if type(argv) ~= "table" or #argv == 0 then error("command must be a non-empty list of arguments", 3) end
  local full = { "ip", "netns", "exec", ns }
  for i = 1, #argv do full[#full + 1] = argv[i] end
  return full
end

local pairs_made = 0
local live_names = {}
local made_names = {} -- every namespace name this module created, for leftovers()
local live_pairs = {} -- pairs not destroyed yet

local function ns_inode(name)
  local ok, out = run({ "stat", "-L", "-c", "%i", "/run/netns/" .. name })
  return ok and tonumber(out:match("%d+")) or nil
end

local function link_info(ns, dev)
  local ok, out = run({ "ip", "-n", ns, "-o", "link", "show", "dev", dev })
  if not ok then return nil, out end
  return tonumber(out:match("^(%d+):")), out:match("link/ether (%x%x:%x%x:%x%x:%x%x:%x%x:%x%x)")
end

--- Resolves "a" / "b" (or the full names) to this pair's namespace; raises for anything else.
function Pair:ns(which)
  if which == "a" or which == self.ns_a then return self.ns_a end
  if which == "b" or which == self.ns_b then return self.ns_b end
  error("namespace must be \"a\", \"b\" or one of this pair's names, got " .. tostring(which), 3)
end

--- Runs argv inside namespace "a" or "b"; returns ok, output, exit code.
function Pair:exec(which, argv)
  return run(in_netns(self:ns(which), argv))
end

--- Starts argv inside namespace "a" or "b"; returns a process handle (:line(), :wait(),
-- :kill(), .pid). destroy() ends whatever is still running.
function Pair:spawn(which, argv)
  local proc = spawn(in_netns(self:ns(which), argv))
  proc.pair = self
  self.procs[proc] = true
  return proc
end

--- One ICMP echo each way over IPv4 and IPv6, so that neighbours are resolved (and the link is
-- proven to work) before measured traffic. Returns true or nil, err.
function Pair:neigh_warmup()
  local tool = _M.ndq_send()
  local checks = {
    { "a", "icmp4", self.ip4_a, self.ip4_b }, { "b", "icmp4", self.ip4_b, self.ip4_a },
    { "a", "icmp6", self.ip6_a, self.ip6_b }, { "b", "icmp6", self.ip6_b, self.ip6_a },
  }
  for _, c in ipairs(checks) do
    local ok, out = self:exec(c[1], { tool, c[2], c[3], c[4], "1" })
    if not ok or not out:find("replies 1\n", 1, true) then
      return nil, "netns: no " .. c[2] .. " echo reply from " .. c[4] .. " in " .. self:ns(c[1]) .. ": " .. out
    end
  end
  return true
end

--- Deletes both namespaces (and with them the veth pair) after ending spawned processes.
-- Idempotent; returns true or nil, err.
function Pair:destroy()
  if self.destroyed then return true end
  self.destroyed = true
  live_pairs[self] = nil
  for proc in pairs(self.procs) do proc:stop() end
  local errs = {}
  for _, ns in ipairs({ self.ns_a, self.ns_b }) do
    if self.created[ns] then
      local ok, out = run({ "ip", "netns", "del", ns })
      if not ok then errs[#errs + 1] = "ip netns del " .. ns .. ": " .. out end
      self.created[ns] = nil
    end
    live_names[ns] = nil
  end
  if #errs > 0 then return nil, "netns: " .. table.concat(errs, "; ") end
  return true
end

local function setup(self, static_neigh)
  local a, b, va, vb = self.ns_a, self.ns_b, self.veth_a, self.veth_b
  local steps = {}
  local function step(argv) steps[#steps + 1] = argv end
  step({ "ip", "netns", "add", a })
  step({ "ip", "netns", "add", b })
  for _, ns in ipairs({ a, b }) do
    -- before the veth exists, so that its ends inherit the defaults
    step({ "ip", "netns", "exec", ns, "sysctl", "-qw",
      "net.ipv6.conf.default.addr_gen_mode=1", "net.ipv6.conf.default.accept_ra=0",
      "net.ipv6.conf.default.router_solicitations=0",
      "net.ipv6.conf.default.mldv1_unsolicited_report_interval=1",
      "net.ipv6.conf.default.mldv2_unsolicited_report_interval=1" })
  end
  step({ "ip", "-n", a, "link", "add", va, "address", MAC_A, "type", "veth",
    "peer", "name", vb, "address", MAC_B, "netns", b })
  for _, s in ipairs({ { a, va, IP4_A, IP6_A, IP4_B, IP6_B, MAC_B }, { b, vb, IP4_B, IP6_B, IP4_A, IP6_A, MAC_A } }) do
    local ns, dev, ip4, ip6, peer4, peer6, peer_mac = s[1], s[2], s[3], s[4], s[5], s[6], s[7]
    step({ "ip", "-n", ns, "addr", "add", ip4 .. "/24", "dev", dev })
    step({ "ip", "-n", ns, "addr", "add", ip6 .. "/64", "dev", dev, "nodad" })
    step({ "ip", "-n", ns, "link", "set", "lo", "up" })
    step({ "ip", "-n", ns, "link", "set", dev, "up" })
    if static_neigh then
      step({ "ip", "-n", ns, "neigh", "replace", peer4, "lladdr", peer_mac, "dev", dev, "nud", "permanent" })
      step({ "ip", "-n", ns, "neigh", "replace", peer6, "lladdr", peer_mac, "dev", dev, "nud", "permanent" })
    end
  end
  for _, argv in ipairs(steps) do
    local ok, out = run(argv)
    if not ok then return nil, "netns: " .. table.concat(argv, " ") .. " failed: " .. out:gsub("\n$", "") end
    if argv[2] == "netns" and argv[3] == "add" then
      self.created[argv[4]] = true
      made_names[argv[4]] = true
    end
  end
  local err
  self.ifindex_a, self.mac_a = link_info(a, va)
  self.ifindex_b, self.mac_b = link_info(b, vb)
  self.netns_a, self.netns_b = ns_inode(a), ns_inode(b)
  if not (self.ifindex_a and self.ifindex_b and self.netns_a and self.netns_b) then
    err = "netns: could not read back ifindex / netns inode of " .. a .. ", " .. b
  end
  if err then return nil, err end
  return true
end

--- Creates a pair (see the header). opts.name (default "ndqt": letters, digits, '_', at most 8),
-- opts.static_neigh (default true). Returns the pair or nil, err (with nothing left behind).
function _M.pair(opts)
  opts = opts or {}
  local name = opts.name or "ndqt"
  if type(name) ~= "string" or not name:match("^[%w_]+$") or #name > 8 then
    error("netns.pair: name must be 1..8 letters, digits or '_'", 2)
  end
  pairs_made = pairs_made + 1
  local n, pid = pairs_made, getpid()
  local ns_a, ns_b = name .. "-a-" .. pid, name .. "-b-" .. pid
  if live_names[ns_a] or live_names[ns_b] then
    ns_a, ns_b = ns_a .. "-" .. n, ns_b .. "-" .. n
  end
  local self = setmetatable({
    ns_a = ns_a, ns_b = ns_b, veth_a = "ndqa" .. n, veth_b = "ndqb" .. n,
    ip4_a = IP4_A, ip4_b = IP4_B, ip6_a = IP6_A, ip6_b = IP6_B, prefix4 = 24, prefix6 = 64,
    created = {}, procs = {},
  }, Pair)
  live_names[ns_a], live_names[ns_b] = true, true
  live_pairs[self] = true
  local ok, err = setup(self, opts.static_neigh ~= false)
  if not ok then
    self:destroy()
    return nil, err
  end
  return self
end

--- The pid of the process that made namespace nsname, when the name has pair()'s form
-- ("<name>-a-<pid>" or "<name>-b-<pid>-<n>"), else nil.
function _M.owner_pid(nsname)
  local pid = nsname:match("^[%w_]+%-[ab]%-(%d+)$") or nsname:match("^[%w_]+%-[ab]%-(%d+)%-%d+$")
  return tonumber(pid)
end

--- Names from `ip netns list` that start with prefix (for checks that nothing was left behind).
function _M.list(prefix)
  local ok, out = run({ "ip", "netns", "list" })
  local names = {}
  if not ok then return names end
  for l in out:gmatch("[^\n]+") do
    local nsname = l:match("^(%S+)")
    if nsname and nsname:sub(1, #prefix) == prefix then names[#names + 1] = nsname end
  end
  return names
end

--- What this module made and is still there: { namespaces = sorted names still in `ip netns
-- list`, processes = argv text of spawned processes still running }. Both empty when every spec
-- of the file cleaned up after itself.
function _M.leftovers()
  local listed = {}
  for _, n in ipairs(_M.list("")) do listed[n] = true end
  local left = { namespaces = {}, processes = {} }
  for n in pairs(made_names) do
    if listed[n] then left.namespaces[#left.namespaces + 1] = n end
  end
  table.sort(left.namespaces)
  for proc in pairs(host_procs) do
    if alive(proc) then left.processes[#left.processes + 1] = proc.argv_text end
  end
  for p in pairs(live_pairs) do
    for proc in pairs(p.procs) do
      if alive(proc) then left.processes[#left.processes + 1] = proc.argv_text end
    end
  end
  table.sort(left.processes)
  return left
end

--- Ends the processes and removes the pairs that leftovers() reports. Returns true or nil, err.
function _M.clean_up()
  for proc in pairs(host_procs) do
    if alive(proc) then proc:stop() end
  end
  local errs = {}
  for p in pairs(live_pairs) do
    local ok, err = p:destroy()
    if not ok then errs[#errs + 1] = err end
  end
  if #errs > 0 then return nil, table.concat(errs, "; ") end
  return true
end

return _M
