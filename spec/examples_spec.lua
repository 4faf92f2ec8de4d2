-- examples/: every script run the way its header says (luajit scripts/netdevq.lua examples/X.lua
-- ARGS) on known traffic between two namespaces, with its exact output.
--
-- The traffic crosses a second veth pair made here, ndqm1 (namespace a) -> ndqm2 (b), that
-- nothing else uses: two transmit queues, IPv6 off (no MLD reports), static neighbours (no ARP).
-- XPS maps CPU 0 to queue 0 and CPU 1 to queue 1 and every sender is pinned with taskset, so
-- each packet's queue is known too. Known traffic (udprecv listens in b, so b sends nothing):
--   CPU 0: UDP 198.19.0.1:40000 -> 198.19.0.2:9000 payloads 8, 100, 600   (lens 50, 142, 642)
--   CPU 1: the same flow, payloads 1000, 1400                             (lens 1042, 1442)
--   CPU 0: UDP from port 40001 with --mark 42, payload 200                 (len 242)
--   CPU 0: one TCP connection to port 8080 (a listener in b)
-- The examples get filters with this pair's netns inode (device names repeat across namespaces)
-- and, except the SYN counter, proto == "udp": the TCP packets' count and comm depend on timing.
local netns = require("support.netns")
local clirun = require("support.clirun")
local live = require("support.live")

local CLI = "scripts/netdevq.lua"
local READY = live.READY
local MQ = {
  dev_a = "ndqm1", dev_b = "ndqm2", ip_a = "198.19.0.1", ip_b = "198.19.0.2",
  mac_a = "02:6e:64:71:01:01", mac_b = "02:6e:64:71:01:02",
}

-- The quiet two-queue veth pair described above, inside pair's namespaces (deleted with them).
local function add_multiqueue_link(pair)
  local a, b = pair.ns_a, pair.ns_b
  local xps = "echo 1 > /sys/class/net/%s/queues/tx-0/xps_cpus && "
    .. "echo 2 > /sys/class/net/%s/queues/tx-1/xps_cpus"
  local steps = {
    { "ip", "-n", a, "link", "add", MQ.dev_a, "address", MQ.mac_a, "numtxqueues", "2",
      "type", "veth", "peer", "name", MQ.dev_b, "address", MQ.mac_b, "numtxqueues", "2",
      "netns", b },
    { "ip", "netns", "exec", a, "sysctl", "-qw", "net.ipv6.conf." .. MQ.dev_a .. ".disable_ipv6=1" },
    { "ip", "netns", "exec", b, "sysctl", "-qw", "net.ipv6.conf." .. MQ.dev_b .. ".disable_ipv6=1" },
    { "ip", "-n", a, "addr", "add", MQ.ip_a .. "/24", "dev", MQ.dev_a },
    { "ip", "-n", b, "addr", "add", MQ.ip_b .. "/24", "dev", MQ.dev_b },
    { "ip", "netns", "exec", a, "sh", "-c", xps:format(MQ.dev_a, MQ.dev_a) },
    { "ip", "-n", a, "link", "set", MQ.dev_a, "up" },
    { "ip", "-n", b, "link", "set", MQ.dev_b, "up" },
    -- after link up: bringing a device up drops its neighbour entries
    { "ip", "-n", a, "neigh", "replace", MQ.ip_b, "lladdr", MQ.mac_b, "dev", MQ.dev_a,
      "nud", "permanent" },
    { "ip", "-n", b, "neigh", "replace", MQ.ip_a, "lladdr", MQ.mac_a, "dev", MQ.dev_b,
      "nud", "permanent" },
  }
  for _, argv in ipairs(steps) do
    local ok, out = netns.run(argv)
    if not ok then return nil, table.concat(argv, " ") .. ": " .. out end
  end
  return true
end

local sleep = clirun.sleep

local function hist_row(label, count, bar)
  return string.format("%-16s%8d |%-52s|", label, count, string.rep("@", bar))
end

describe("examples #root", function()
  local pair
  local procs = {}

  teardown(function()
    for p in pairs(procs) do p:stop() end
  end)

  -- The namespaces and the quiet link, made by the first test that runs.
  local the_pair = live.pair_once{ name = "ndqex", setup = function(p) assert(add_multiqueue_link(p)) end }
  local function setup()
    pair = the_pair()
    return pair
  end

  -- ndq_send pinned to cpu in namespace ns ("a" or "b"); returns its pid.
  local function send(ns, cpu, argv)
    local full = { "taskset", "-c", tostring(cpu), netns.ndq_send() }
    for _, a in ipairs(argv) do full[#full + 1] = a end
    local ok, out = pair:exec(ns, full)
    assert(ok, out)
    return tonumber(out:match("pid (%d+)"))
  end

  local function udp(cpu, sizes, opts)
    local argv = {}
    if opts and opts.mark then argv = { "--mark", tostring(opts.mark) } end
    for _, a in ipairs({ "udp4", MQ.ip_a, MQ.ip_b, "9000", opts and opts.sport or "40000", sizes }) do
      argv[#argv + 1] = a
    end
    return send("a", cpu, argv)
  end

  -- The known traffic of the header; returns the pids of the three UDP senders.
  local function known_traffic(with_tcp)
    local rx = live.receiver(pair, "b", MQ.ip_b, 9000, 6)
    local pids = {
      small = udp(0, "8,100,600"),
      large = udp(1, "1000,1400"),
      mark = udp(0, "200", { mark = 42, sport = "40001" }),
    }
    live.wait_all({ rx }, "udprecv")
    if with_tcp then
      local listener = live.listener(pair, "b", MQ.ip_b, 8080)
      send("a", 0, { "tcp4", MQ.ip_a, MQ.ip_b, "8080", "41000" })
      assert(listener:wait())
    end
    return pids
  end

  local function start(script, args)
    local argv = { "luajit", CLI, "examples/" .. script .. ".lua" }
    for _, a in ipairs(args) do argv[#argv + 1] = tostring(a) end
    local p = netns.spawn(argv)
    procs[p] = true
    return p
  end

  local function wait_ready(p)
    local l = p:line()
    assert.equal(READY, l)
  end

  -- The rest of p's output once it exits (status 0).
  local function finish(p)
    local ok, code, lines = p:wait()
    procs[p] = nil
    assert.equal(0, code, table.concat(lines, "\n"))
    assert.is_true(ok)
    return lines
  end

  describe("on one run of the known traffic", function()
    -- All of them trace at once; each stops at Ctrl-C (SIGINT), as a user would stop it.
    local results, pids

    local function run_all()
      if results then return results, pids end
      local a, b = pair.netns_a, pair.netns_b
      local udp_a = ("netns == %d and proto == \"udp\""):format(a)
      local runs = {
        packets_by_comm = { 60, udp_a },
        bytes_by_dev = { 60, udp_a },
        size_hist = { 60, udp_a },
        packets_by_netns = { 60, ("proto == \"udp\" and (netns == %d or netns == %d)"):format(a, b) },
        queue_counts = { 60, udp_a },
        packets_by_mark = { 60, udp_a },
        top_talkers = { 60, udp_a },
        tcp_syn_ports = { 60, ("netns == %d or netns == %d"):format(a, b) },
        large_packets = { 60, udp_a },
      }
      local started = {}
      for name, args in pairs(runs) do started[name] = start(name, args) end
      for _, p in pairs(started) do wait_ready(p) end
      pids = known_traffic(true)
      sleep(0.5) -- the Lua-path examples pick up events on their 100 ms poll timeout
      for _, p in pairs(started) do assert.is_true(p:kill("INT")) end
      results = {}
      for name, p in pairs(started) do results[name] = finish(p) end
      return results, pids
    end

    local function output_of(name)
      setup()
      local r, p = run_all()
      return r[name], p
    end

    it("packets_by_comm.lua counts packets per comm in the kernel", function()
      assert.same({ "@[ndq_send]: 6" }, output_of("packets_by_comm"))
    end)

    it("bytes_by_dev.lua sums len per device", function()
      assert.same({ "@bytes[ndqm1]: 3560" }, output_of("bytes_by_dev"))
    end)

    it("size_hist.lua prints a power-of-2 histogram per device like bpftrace", function()
      assert.same({
        "@bytes[ndqm1]: ",
        hist_row("[32, 64)", 1, 26),
        hist_row("[64, 128)", 0, 0),
        hist_row("[128, 256)", 2, 52),
        hist_row("[256, 512)", 0, 0),
        hist_row("[512, 1K)", 1, 26),
        hist_row("[1K, 2K)", 2, 52),
        "",
      }, output_of("size_hist"))
    end)

    it("packets_by_netns.lua counts per namespace inode", function()
      local lines = output_of("packets_by_netns")
      assert.same({ "@[" .. pair.netns_a .. "]: 6" }, lines)
    end)

    it("queue_counts.lua counts per device and transmit queue", function()
      assert.same({ "@[ndqm1, 1]: 2", "@[ndqm1, 0]: 4" }, output_of("queue_counts"))
    end)

    it("packets_by_mark.lua counts per skb mark", function()
      assert.same({ "@[42]: 1", "@[0]: 5" }, output_of("packets_by_mark"))
    end)

    it("top_talkers.lua sums bytes per 5-tuple in Lua, largest last", function()
      assert.same({
        "@bytes[198.19.0.1, 40001, 198.19.0.2, 9000, udp]: 242",
        "@bytes[198.19.0.1, 40000, 198.19.0.2, 9000, udp]: 3318",
      }, output_of("top_talkers"))
    end)

    it("tcp_syn_ports.lua counts SYNs (not SYN-ACKs) per destination port", function()
      assert.same({ "@syn[8080]: 1" }, output_of("tcp_syn_ports"))
    end)

    it("large_packets.lua counts and sums packets over 1000 bytes per comm and pid", function()
      local lines, p = output_of("large_packets")
      assert.same({
        "@bytes[ndq_send, " .. p.large .. "]: 2484",
        "@pkts[ndq_send, " .. p.large .. "]: 2",
      }, lines)
    end)
  end)

  it("top_talkers.lua prints only the N largest and stops after SECONDS", function()
    setup()
    local p = start("top_talkers", { 2, ("netns == %d and proto == \"udp\""):format(pair.netns_a), 1 })
    wait_ready(p)
    known_traffic(false)
    assert.same({ "@bytes[198.19.0.1, 40000, 198.19.0.2, 9000, udp]: 3318" }, finish(p))
  end)

  it("top_talkers.lua still counts what was sent just before Ctrl-C", function()
    setup()
    local p = start("top_talkers", { 60, ("netns == %d and proto == \"udp\""):format(pair.netns_a) })
    wait_ready(p)
    udp(0, "8,100,600")
    -- no pause: the events may still wait in the ring buffer for the next poll timeout
    assert.is_true(p:kill("INT"))
    local ok, code, lines = p:wait()
    procs[p] = nil
    assert.is_true(ok, "exit " .. tostring(code))
    assert.same({ "@bytes[198.19.0.1, 40000, 198.19.0.2, 9000, udp]: 834" }, lines)
  end)

  it("large_packets.lua takes MIN_LEN", function()
    setup()
    local p = start("large_packets", { 2, ("netns == %d"):format(pair.netns_a), 600 })
    wait_ready(p)
    local pids = known_traffic(false)
    assert.same({
      "@bytes[ndq_send, " .. pids.small .. "]: 642",
      "@bytes[ndq_send, " .. pids.large .. "]: 2484",
      "@pkts[ndq_send, " .. pids.small .. "]: 1",
      "@pkts[ndq_send, " .. pids.large .. "]: 2",
    }, finish(p))
  end)

  it("queue_counts.lua prints and clears the kernel map every INTERVAL", function()
    setup()
    local core = require("netdevq.core")
    local p = start("queue_counts", { 2.5, ("netns == %d and proto == \"udp\""):format(pair.netns_a), 1 })
    wait_ready(p)
    local t0 = core.monotonic_ns()
    known_traffic(false) -- first interval
    local wait = 1.3 - (core.monotonic_ns() - t0) / 1e9
    assert.is_true(wait > 0.1, "the first interval's traffic took too long")
    sleep(wait)
    udp(1, "100") -- second interval: one datagram on queue 1
    assert.same({ "@[ndqm1, 1]: 2", "@[ndqm1, 0]: 4", "@[ndqm1, 1]: 1" }, finish(p))
  end)

  it("netqtop.lua prints a per-device, per-queue table every INTERVAL, COUNT times", function()
    setup()
    local p = start("netqtop", { MQ.dev_a, 1, 2, pair.netns_a })
    wait_ready(p)
    known_traffic(false)
    local lines = finish(p)
    local header = "DEV              QUEUE        PPS        BPS     P50_US     P99_US     MAX_US   DROPS"
    assert.equal(8, #lines, table.concat(lines, "\n"))
    -- each table starts with the time (like bcc's asctime line): checked by shape, then dropped
    for _, i in ipairs({ 6, 1 }) do
      assert.truthy(lines[i]:match("^%a%a%a %a%a%a %d%d %d%d:%d%d:%d%d %d%d%d%d$"), lines[i])
      table.remove(lines, i)
    end
    -- the sojourns on a veth without a queue: present and small (checked apart, then blanked)
    for _, i in ipairs({ 2, 3 }) do
      local p50, p99, max = lines[i]:match(" (%d+%.%d) +(%d+%.%d) +(%d+%.%d) +%d+$")
      assert.truthy(max, lines[i])
      assert.is_true(tonumber(p50) <= tonumber(p99) and tonumber(p99) <= tonumber(max)
        and tonumber(max) < 1000, lines[i])
      lines[i] = lines[i]:gsub(" +%d+%.%d +%d+%.%d +%d+%.%d( +%d+)$", " P50 P99 MAX%1")
    end
    assert.same({
      header,
      -- queue 0: 50, 142, 642, 242 bytes; queue 1: 1042, 1442 (one second: BPS = bytes)
      "ndqm1                0          4      1.05K P50 P99 MAX       0",
      "ndqm1                1          2      2.43K P50 P99 MAX       0",
      "",
      header,
      "",
    }, lines)
  end)

  it("netqtop.lua without DEV prints its usage and exits 2", function()
    netns.require_root()
    local ok, out, code = netns.run({ "luajit", CLI, "examples/netqtop.lua" })
    assert.is_false(ok)
    assert.equal(2, code)
    assert.equal("usage: netqtop.lua DEV [INTERVAL] [COUNT] [NETNS]\n", out)
  end)
end)
