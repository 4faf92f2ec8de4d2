-- The namespace helpers and the ndq_send tool, for real: namespaces, veth, traffic between them.
local netns = require("support.netns")

local function lines_of(s)
  local out = {}
  for l in s:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

describe("spec.support.netns #root", function()
  local tool

  -- first line of every test: pending outside root (a failure in CI); busted allows pending only in `it`
  local function require_root()
    netns.require_root()
    tool = netns.ndq_send()
  end

  describe("pair", function()
    it("joins two namespaces by a veth pair, carries UDP datagrams of exact sizes and leaves nothing", function()
      require_root()
      local pair = assert(netns.pair{ name = "ndqns" })
      finally(function() pair:destroy() end)

      assert.truthy(pair.ns_a:match("^ndqns%-a%-%d+$"))
      assert.truthy(pair.ns_b:match("^ndqns%-b%-%d+$"))
      assert.truthy(pair.veth_a:match("^ndqa%d+$") and #pair.veth_a <= 15)
      assert.truthy(pair.veth_b:match("^ndqb%d+$") and #pair.veth_b <= 15)
      assert.same({ "198.18.0.1", "198.18.0.2", "2001:db8::1", "2001:db8::2" },
        { pair.ip4_a, pair.ip4_b, pair.ip6_a, pair.ip6_b })
      assert.same({ "02:6e:64:71:00:01", "02:6e:64:71:00:02" }, { pair.mac_a, pair.mac_b })
      assert.is_number(pair.ifindex_a)
      assert.is_number(pair.ifindex_b)
      -- netns inodes: distinct, and what the kernel reports for processes inside
      assert.are_not.equal(pair.netns_a, pair.netns_b)
      local ok, out = pair:exec("a", { "stat", "-L", "-c", "%i", "/proc/self/ns/net" })
      assert.is_true(ok)
      assert.equal(tostring(pair.netns_a), out:match("%d+"))
      ok, out = pair:exec("b", { "cat", "/sys/class/net/" .. pair.veth_b .. "/ifindex" })
      assert.is_true(ok)
      assert.equal(tostring(pair.ifindex_b), out:match("%d+"))
      local _, host_ino = netns.run({ "stat", "-L", "-c", "%i", "/proc/self/ns/net" })
      assert.are_not.equal(tostring(pair.netns_a), host_ino:match("%d+"))

      -- IPv4: three datagrams a -> b
      local rx = pair:spawn("b", { tool, "udprecv", pair.ip4_b, "9000", "3", "5000" })
      assert.truthy(rx:line():match("^pid %d+$"))
      assert.equal("ready", rx:line())
      ok, out = pair:exec("a", { tool, "udp4", pair.ip4_a, pair.ip4_b, "9000", "40000", "100,200,1400" })
      assert.is_true(ok, out)
      assert.equal("done", lines_of(out)[2])
      local rx_ok, code, lines = rx:wait()
      assert.same({ true, 0 }, { rx_ok, code })
      assert.same({ "recv 100 198.18.0.1 40000", "recv 200 198.18.0.1 40000", "recv 1400 198.18.0.1 40000",
        "done" }, lines)

      -- IPv6: b -> a, each size twice
      rx = pair:spawn("a", { tool, "udprecv", pair.ip6_a, "9001", "4", "5000" })
      assert.truthy(rx:line():match("^pid %d+$"))
      assert.equal("ready", rx:line())
      ok, out = pair:exec("b", { tool, "udp6", pair.ip6_b, pair.ip6_a, "9001", "40001", "1,1232", "2" })
      assert.is_true(ok, out)
      rx_ok, code, lines = rx:wait()
      assert.same({ true, 0 }, { rx_ok, code })
      assert.same({ "recv 1 2001:db8::2 40001", "recv 1 2001:db8::2 40001", "recv 1232 2001:db8::2 40001",
        "recv 1232 2001:db8::2 40001", "done" }, lines)

      local names = { pair.ns_a, pair.ns_b }
      local listed = netns.list("ndqns-")
      table.sort(listed)
      assert.same(names, listed)

      assert.is_true(pair:destroy())
      assert.is_true(pair:destroy())    -- idempotent
      assert.same({}, netns.list("ndqns-"))
      assert.is_nil(io.open("/run/netns/" .. names[1]))
      assert.is_false((netns.run({ "ip", "link", "show", "dev", pair.veth_a })))
    end)

    it("installs permanent neighbour entries by default, so no ARP/ND happens in measured windows", function()
      require_root()
      require_root()
      local pair = assert(netns.pair{ name = "ndqns" })
      finally(function() pair:destroy() end)
      local ok, out = netns.run({ "ip", "-n", pair.ns_a, "neigh", "show", "dev", pair.veth_a })
      assert.is_true(ok)
      assert.matches("198.18.0.2 lladdr 02:6e:64:71:00:02 PERMANENT", out, 1, true)
      assert.matches("2001:db8::2 lladdr 02:6e:64:71:00:02 PERMANENT", out, 1, true)
      -- no link-local address: no DAD, no router solicitation on the link
      ok, out = netns.run({ "ip", "-n", pair.ns_b, "-6", "addr", "show", "dev", pair.veth_b })
      assert.is_true(ok)
      assert.is_nil(out:find("fe80", 1, true))
    end)

    it("resolves neighbours with one echo each way in neigh_warmup", function()
      require_root()
      require_root()
      local pair = assert(netns.pair{ name = "ndqns", static_neigh = false })
      finally(function() pair:destroy() end)
      local ok, out = netns.run({ "ip", "-n", pair.ns_a, "neigh", "show", "dev", pair.veth_a })
      assert.is_true(ok)
      assert.equal("", out)
      assert.is_true(pair:neigh_warmup())
      ok, out = netns.run({ "ip", "-n", pair.ns_a, "neigh", "show", "dev", pair.veth_a })
      assert.is_true(ok)
      assert.matches("198.18.0.2 lladdr 02:6e:64:71:00:02 REACHABLE", out, 1, true)
      assert.matches("2001:db8::2 lladdr 02:6e:64:71:00:02 REACHABLE", out, 1, true)
      ok, out = netns.run({ "ip", "-n", pair.ns_b, "neigh", "show", "dev", pair.veth_b })
      assert.is_true(ok)
      assert.matches("198.18.0.1 lladdr 02:6e:64:71:00:01", out, 1, true)
      assert.matches("2001:db8::1 lladdr 02:6e:64:71:00:01", out, 1, true)
    end)

    it("gives a second live pair of the same name its own namespaces and veth names", function()
      require_root()
      require_root()
      local p1 = assert(netns.pair{ name = "ndqns" })
      finally(function() p1:destroy() end)
      local p2 = assert(netns.pair{ name = "ndqns" })
      finally(function() p1:destroy(); p2:destroy() end)
      assert.are_not.equal(p1.ns_a, p2.ns_a)
      assert.are_not.equal(p1.veth_a, p2.veth_a)
      assert.equal(4, #netns.list("ndqns-"))
      assert.is_true(p1:destroy())
      assert.is_true(p2:destroy())
      assert.same({}, netns.list("ndqns-"))
    end)

    it("ends spawned processes that are still running on destroy", function()
      require_root()
      require_root()
      local pair = assert(netns.pair{ name = "ndqns" })
      finally(function() pair:destroy() end)
      local rx = pair:spawn("b", { tool, "udprecv", pair.ip4_b, "9002", "1", "60000" })
      local pid = tonumber(rx:line():match("^pid (%d+)$"))
      assert.equal(rx.pid, pid)
      assert.equal("ready", rx:line())
      local t0 = os.time()
      assert.is_true(pair:destroy())
      assert.is_true(os.time() - t0 < 10)
      assert.is_nil(io.open("/proc/" .. pid .. "/stat"))
      assert.equal(128 + 15, rx.code)   -- ended by SIGTERM
      assert.same({}, netns.list("ndqns-"))
    end)

    it("kills a spawned process that ignores SIGTERM after two seconds", function()
      require_root()
      local pair = assert(netns.pair{ name = "ndqns" })
      finally(function() pair:destroy() end)
      -- bounded: gives up by itself after 60 s should the kill fail
      local p = pair:spawn("a", { "sh", "-c",
        "trap '' TERM; echo started; i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done" })
      assert.equal("started", p:line())
      local ok, code = p:stop()
      assert.is_false(ok)
      assert.equal(128 + 9, code)
      assert.is_nil(io.open("/proc/" .. p.pid .. "/stat"))
      assert.is_true(pair:destroy())
    end)

    it("raises for a namespace that is not the pair's and for a command that is not a list", function()
      require_root()
      require_root()
      local pair = assert(netns.pair{ name = "ndqns" })
      finally(function() pair:destroy() end)
      assert.has_error(function() pair:exec("c", { "true" }) end)
      assert.has_error(function() pair:exec("a", "echo not-a-list") end,
        "command must be a non-empty list of arguments")
      assert.has_error(function() netns.pair{ name = "bad name" } end)
    end)
  end)

  describe("ndq_send", function()
    local pair

    before_each(function()
      if netns.is_root() then pair = assert(netns.pair{ name = "ndqns" }) end
    end)

    after_each(function()
      if pair then assert(pair:destroy()) end
      pair = nil
    end)

    it("connects over TCP to its own listener (IPv4 and IPv6)", function()
      require_root()
      require_root()
      for _, v in ipairs({ { "tcp4", pair.ip4_a, pair.ip4_b }, { "tcp6", pair.ip6_a, pair.ip6_b } }) do
        local srv = pair:spawn("b", { tool, "tcplisten", v[3], "9443", "5000" })
        assert.truthy(srv:line():match("^pid %d+$"))
        assert.equal("listening", srv:line())
        local ok, out = pair:exec("a", { tool, v[1], v[2], v[3], "9443", "40443" })
        assert.is_true(ok, out)
        local srv_ok, code, lines = srv:wait()
        assert.same({ true, 0, { "done" } }, { srv_ok, code, lines })
      end
    end)

    it("gets one echo reply per ICMP request (IPv4 and IPv6)", function()
      require_root()
      require_root()
      local ok, out = pair:exec("a", { tool, "icmp4", pair.ip4_a, pair.ip4_b, "3" })
      assert.is_true(ok, out)
      assert.same({ "replies 3", "done" }, { lines_of(out)[2], lines_of(out)[3] })
      ok, out = pair:exec("b", { tool, "icmp6", pair.ip6_b, pair.ip6_a, "2" })
      assert.is_true(ok, out)
      assert.same({ "replies 2", "done" }, { lines_of(out)[2], lines_of(out)[3] })
    end)

    it("floods for a bounded time and reports what it sent", function()
      require_root()
      require_root()
      local ok, out = pair:exec("a", { tool, "flood", "127.0.0.1", "9999", "1", "32" })
      assert.is_true(ok, out)
      local l = lines_of(out)
      local sent, secs = tonumber(l[2]:match("^sent (%d+)$")), tonumber(l[4]:match("^seconds ([%d.]+)$"))
      assert.is_true(sent > 1000)
      assert.equal("errors 0", l[3])
      assert.is_true(secs >= 1 and secs < 3)
      assert.truthy(l[5]:match("^pps %d+$"))
      assert.equal("done", l[6])
    end)

    it("holds its traffic until the --wait-file appears", function()
      require_root()
      local gate = os.tmpname()
      os.remove(gate)
      finally(function() os.remove(gate) end)
      local rx = pair:spawn("b", { tool, "udprecv", pair.ip4_b, "9003", "1", "10000" })
      assert.truthy(rx:line():match("^pid %d+$"))
      assert.equal("ready", rx:line())
      local tx = pair:spawn("a", { tool, "--wait-file", gate, "udp4", pair.ip4_a, pair.ip4_b, "9003", "40003", "77" })
      assert.equal("pid " .. tx.pid, tx:line())
      netns.run({ "sleep", "0.3" })
      assert.truthy(io.open("/proc/" .. tx.pid .. "/stat"), "still waiting")
      assert(io.open(gate, "w")):close()
      assert.same({ true, 0, { "done" } }, { tx:wait() })
      assert.same({ true, 0, { "recv 77 198.18.0.1 40003", "done" } }, { rx:wait() })
    end)

    it("sets mark, priority and TOS when asked, and rejects bad arguments with status 2", function()
      require_root()
      require_root()
      local ok, out = pair:exec("a", { tool, "--mark", "7", "--priority", "3", "--tos", "16",
        "udp4", pair.ip4_a, pair.ip4_b, "9", "0", "10" })
      assert.is_true(ok, out)
      local code
      ok, out, code = pair:exec("a", { tool, "udp4", "example.com", pair.ip4_b, "9", "0", "10" })
      assert.is_false(ok)
      assert.equal(2, code)
      assert.matches("ndq_send: 'example.com' is not an IPv4 address literal", out, 1, true)
      ok, out, code = pair:exec("a", { tool, "flood", pair.ip4_b, "9", "601" })
      assert.is_false(ok)
      assert.equal(2, code)
      assert.matches("SECONDS must be an integer in 1..600", out, 1, true)
    end)
  end)

  describe("require_root", function()
    it("fails outside root when CI=true, and returns false with the reason otherwise", function()
      require_root()
      assert.is_true((netns.run({ "sh", "-c", "command -v setpriv" })), "setpriv (util-linux) drops root here")
      local src = debug.getinfo(1, "S").source:gsub("^@", "")
      local root = src:match("^(.*)/spec/[^/]*$") or "."
      local script = "package.path = " .. string.format("%q", root .. "/spec/?.lua;") .. " .. package.path "
        .. "local netns = require('support.netns') "
        .. "print(netns.is_root(), netns.require_root())"
      local function as_nobody(ci)
        return netns.run({ "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
          "env", "CI=" .. ci, "luajit", "-e", script })
      end
      local ok, out = as_nobody("false")
      assert.is_true(ok, out)
      assert.equal("false\tfalse\tneeds root (creates network namespaces and loads BPF): run the suite as root\n", out)
      local code
      ok, out, code = as_nobody("true")
      assert.is_false(ok)
      assert.equal(1, code)
      assert.matches("privileged spec not run in CI", out, 1, true)
    end)
  end)
end)
