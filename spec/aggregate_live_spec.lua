-- Aggregations on real traffic: the in-kernel path (netdevq.open{aggregate=} + read_aggregate)
-- and the Lua path (events + aggregate.feeder) give identical entries, text and JSON, with the
-- exact values of the known traffic; and the CLI prints them exactly (text, JSON, intervals).
--
-- Known traffic, from namespace a over the pair's veth (a listener in b, so b sends no ICMP):
--   UDP 198.18.0.1:40000 -> 198.18.0.2:9000 payloads 8, 100, 600, 1000, 1400
--     (lens 50, 142, 642, 1042, 1442: 14 Ethernet + 20 IPv4 + 8 UDP + payload)
--   UDP from port 40001 with --mark 42, payload 200 (len 242)
--   one TCP connection to port 8080 (a listener in b)
-- Filters name this pair's netns inode (veth names repeat in other namespaces) and a protocol:
-- the pair's veth also carries the odd IPv6 MLD report of the kernel.
local netns = require("support.netns")
local clirun = require("support.clirun")
local live = require("support.live")
local cjson = require("cjson")

local READY = live.READY

-- One of each kind, as the CLI names them.
local SPECS = {
  { kind = "count", keys = { "dev", "proto" }, name = "@count" },
  { kind = "sum", keys = { "comm" }, value = "len", name = "@sum_len" },
  { kind = "hist", keys = {}, value = "len", name = "@hist_len" },
  { kind = "min", keys = {}, value = "len", name = "@min_len" },
  { kind = "max", keys = {}, value = "len", name = "@max_len" },
  { kind = "avg", keys = {}, value = "len", name = "@avg_len" },
  { kind = "stats", keys = {}, value = "len", name = "@stats_len" },
  { kind = "count", keys = { "mark", "sport" }, name = "@count_mark" },
  { kind = "hist", keys = { "proto", "daddr" }, value = "len", name = "@hist_len_by" },
}

-- Apart, so that the others still run when the kernel cannot load it.
local LHIST = { kind = "lhist", keys = {}, value = "len", min = 0, max = 1500, step = 100,
  name = "@lhist_len" }

local function hist_row(label, count, bar)
  return string.format("%-16s%8d |%-52s|\n", label, count, string.rep("@", bar))
end

local sleep = clirun.sleep

-- The "@..." lines of a CLI run (the -c command's own "pid N" / "done" lines are mixed in).
local function at_lines(lines)
  local out = {}
  for _, l in ipairs(lines) do
    if l:sub(1, 1) == "@" then out[#out + 1] = l end
  end
  return out
end

describe("aggregations on real traffic #root", function()
  local pair
  local cleanup = {}

  teardown(function()
    for _, f in ipairs(cleanup) do pcall(f) end
  end)

  local the_pair = live.pair_once{ name = "ndqag" }
  local function setup()
    pair = the_pair()
    return pair
  end

  local function send(argv)
    return live.send(pair, "a", argv)
  end

  local function udp_traffic(with_mark)
    local rx = live.receiver(pair, "b", pair.ip4_b, 9000, with_mark and 6 or 5)
    send({ "udp4", pair.ip4_a, pair.ip4_b, "9000", "40000", "8,100,600,1000,1400" })
    if with_mark then
      send({ "--mark", "42", "udp4", pair.ip4_a, pair.ip4_b, "9000", "40001", "200" })
    end
    live.wait_all({ rx }, "udprecv")
  end

  local function tcp_traffic()
    local listener = live.listener(pair, "b", pair.ip4_b, 8080)
    send({ "tcp4", pair.ip4_a, pair.ip4_b, "8080", "41000" })
    assert(listener:wait())
  end

  describe("kernel path and Lua path", function()
    local netdevq

    -- One Lua tracer feeding every spec's aggregation, one kernel tracer per spec, all on filter;
    -- traffic() runs while all of them are attached. Returns kernel and Lua aggregations.
    local function trace_both(filter, traffic, specs)
      netdevq = require("netdevq")
      local tracers = {}
      local function close_all()
        for _, t in ipairs(tracers) do t:close() end
      end
      cleanup[#cleanup + 1] = close_all
      local lua_t = assert(netdevq.open{ filter = filter })
      tracers[1] = lua_t
      local kernel_t, lua_aggs = {}, {}
      for i, spec in ipairs(specs) do
        assert.is_true(netdevq.kernel_aggregatable(spec), spec.name)
        kernel_t[i] = assert(netdevq.open{ filter = filter, aggregate = spec, ringbuf_size = 65536 })
        tracers[#tracers + 1] = kernel_t[i]
        lua_aggs[i] = netdevq.aggregate.new(spec)
        lua_t:on_event(netdevq.aggregate.feeder(lua_aggs[i], spec.keys, spec.value))
      end
      traffic()
      -- events below the wakeup threshold arrive on the poll timeout
      for _ = 1, 5 do assert(lua_t:poll(100)) end
      local st = lua_t:stats()
      assert.equal(0, st.lost)
      local kernel_aggs = {}
      for i, t in ipairs(kernel_t) do
        kernel_aggs[i] = assert(t:read_aggregate())
        assert.equal(0, t:stats().agg_overflow)
        -- every matched event was folded in, and no event crossed the ring buffer
        assert.equal(st.matched, t:stats().matched, specs[i].name)
        assert.equal(0, t:stats().emitted)
      end
      close_all()
      return kernel_aggs, lua_aggs, st
    end

    local function assert_identical(kernel_aggs, lua_aggs, specs)
      for i, spec in ipairs(specs) do
        local k, l = kernel_aggs[i], lua_aggs[i]
        assert.same(l:entries(), k:entries(), spec.name .. " entries")
        assert.equal(l:text(), k:text(), spec.name .. " text")
        assert.equal(l:json_line(), k:json_line(), spec.name .. " JSON")
      end
    end

    it("give identical entries, text and JSON with the exact values of the UDP traffic", function()
      setup()
      local filter = ('netns == %d and dev == "%s" and proto == "udp"'):format(pair.netns_a, pair.veth_a)
      local kernel_aggs, lua_aggs, st = trace_both(filter, function() udp_traffic(true) end, SPECS)
      assert.equal(6, st.matched)
      assert_identical(kernel_aggs, lua_aggs, SPECS)
      local text = {}
      for i, spec in ipairs(SPECS) do text[spec.name] = kernel_aggs[i]:text() end
      local dev = pair.veth_a
      -- lens 50, 142, 642, 1042, 1442 and 242
      assert.same({
        ["@count"] = "@count[" .. dev .. ", udp]: 6\n",
        ["@sum_len"] = "@sum_len[ndq_send]: 3560\n",
        ["@hist_len"] = "@hist_len: \n"
          .. hist_row("[32, 64)", 1, 26) .. hist_row("[64, 128)", 0, 0)
          .. hist_row("[128, 256)", 2, 52) .. hist_row("[256, 512)", 0, 0)
          .. hist_row("[512, 1K)", 1, 26) .. hist_row("[1K, 2K)", 2, 52) .. "\n",
        ["@min_len"] = "@min_len: 50\n",
        ["@max_len"] = "@max_len: 1442\n",
        ["@avg_len"] = "@avg_len: 593\n\n",
        ["@stats_len"] = "@stats_len: count 6, average 593, total 3560\n\n",
        ["@count_mark"] = "@count_mark[42, 40001]: 1\n@count_mark[0, 40000]: 5\n",
        ["@hist_len_by"] = "@hist_len_by[udp, 198.18.0.2]: \n"
          .. hist_row("[32, 64)", 1, 26) .. hist_row("[64, 128)", 0, 0)
          .. hist_row("[128, 256)", 2, 52) .. hist_row("[256, 512)", 0, 0)
          .. hist_row("[512, 1K)", 1, 26) .. hist_row("[1K, 2K)", 2, 52) .. "\n",
      }, text)
      assert.equal('{"type":"map","name":"@count","keys":["dev","proto"],"data":[{"key":["'
        .. dev .. '","udp"],"value":6}]}', kernel_aggs[1]:json_line())
    end)

    it("give identical results on TCP, whose packets have no mark and other keys", function()
      setup()
      local filter = ('netns == %d and dev == "%s" and (proto == "udp" or proto == "tcp")')
        :format(pair.netns_a, pair.veth_a)
      local kernel_aggs, lua_aggs, st = trace_both(filter, function()
        udp_traffic(true)
        tcp_traffic()
      end, SPECS)
      assert_identical(kernel_aggs, lua_aggs, SPECS)
      -- a sends SYN (74 bytes: 20 bytes of TCP options), the handshake's ACK, FIN and the ACK of
      -- b's FIN (66 bytes each: timestamps)
      local text = {}
      for i, spec in ipairs(SPECS) do text[spec.name] = kernel_aggs[i]:text() end
      assert.equal(10, st.matched)
      assert.equal("@count[" .. pair.veth_a .. ", tcp]: 4\n@count[" .. pair.veth_a .. ", udp]: 6\n",
        text["@count"])
      assert.equal("@stats_len: count 10, average 383, total 3832\n\n", text["@stats_len"])
      assert.equal("@count_mark[42, 40001]: 1\n@count_mark[0, 41000]: 4\n@count_mark[0, 40000]: 5\n",
        text["@count_mark"])
    end)

    it("give identical linear histograms (lhist len:0:1500:100)", function()
      setup()
      local filter = ('netns == %d and dev == "%s" and proto == "udp"'):format(pair.netns_a, pair.veth_a)
      local kernel_aggs, lua_aggs = trace_both(filter, function() udp_traffic(true) end, { LHIST })
      assert_identical(kernel_aggs, lua_aggs, { LHIST })
      -- lens 50, 142, 242, 642, 1042, 1442: one per hundred
      assert.equal("@lhist_len: \n"
          .. hist_row("[0, 100)", 1, 52) .. hist_row("[100, 200)", 1, 52)
          .. hist_row("[200, 300)", 1, 52) .. hist_row("[300, 400)", 0, 0)
          .. hist_row("[400, 500)", 0, 0) .. hist_row("[500, 600)", 0, 0)
          .. hist_row("[600, 700)", 1, 52) .. hist_row("[700, 800)", 0, 0)
          .. hist_row("[800, 900)", 0, 0) .. hist_row("[900, 1000)", 0, 0)
          .. hist_row("[1000, 1100)", 1, 52) .. hist_row("[1100, 1200)", 0, 0)
          .. hist_row("[1200, 1300)", 0, 0) .. hist_row("[1300, 1400)", 0, 0)
          .. hist_row("[1400, 1500)", 1, 52) .. "\n", kernel_aggs[1]:text())
    end)
  end)

  -- A count keeps its first keys in a table of NDQ_AGG_TABLE_SLOTS slots per CPU in front of the
  -- hash (bpf/netdevq.bpf.c count_in_table): a key whose slot another key holds goes to the hash,
  -- a key counted on several CPUs has a slot on each, user space adds them up.
  describe("a count's per-CPU table", function()
    local bpfobjs = require("support.bpfobjs")
    local ffi = require("ffi")
    local abi = require("netdevq.abi")
    local netdevq
    local SLOTS = ffi.C.NDQ_AGG_TABLE_SLOTS

    local function filter()
      return ('netns == %d and dev == "%s" and proto == "udp"'):format(pair.netns_a, pair.veth_a)
    end

    -- the maps named aggtab and aggs that this process holds (one tracer open): their ids
    local function map_ids()
      local ids = {}
      for id in pairs(bpfobjs.held().map) do
        local ok, out = netns.run({ "bpftool", "-j", "map", "show", "id", tostring(id) })
        local m = ok and cjson.decode(out)
        if m and (m.name == "aggtab" or m.name == "aggs") then ids[m.name] = id end
      end
      return ids
    end

    local function dump(id)
      local ok, out = netns.run({ "bpftool", "-j", "map", "dump", "id", tostring(id) })
      assert(ok, out)
      return cjson.decode(out)
    end

    -- the count table's slots in use, as "cpu C: N" (sorted), and how many keys the hash holds;
    -- a slot is the count, then the key's fields (nkeys)
    local function where_counted(nkeys)
      local ids = map_ids()
      assert(ids.aggtab and ids.aggs, "no aggtab or aggs map held")
      local used = {}
      for _, e in ipairs(dump(ids.aggtab)) do
        local idx, count = 0, 0
        for i = 4, 1, -1 do idx = idx * 256 + tonumber(e.key[i]) end
        for i = 8, 1, -1 do count = count * 256 + tonumber(e.value[i]) end
        assert.equal(8 + nkeys * abi.AGG_KEY_SLOT, #e.value)
        if count > 0 then used[#used + 1] = ("cpu %d: %d"):format(math.floor(idx / SLOTS), count) end
      end
      table.sort(used)
      return used, #dump(ids.aggs)
    end

    -- from namespace a, on CPU cpu (taskset), datagrams of these payload sizes, each `times` times
    local function send_on(cpu, sizes, times)
      local ok, out = pair:exec("a", { "taskset", "-c", tostring(cpu), netns.ndq_send(), "udp4",
        pair.ip4_a, pair.ip4_b, "9002", "40002", sizes, tostring(times) })
      assert(ok, out)
    end

    -- a tracer counting by keys in the kernel (max_keys: nil for the default), closed after the test
    local function count_tracer(keys, max_keys)
      setup()
      netdevq = require("netdevq")
      local spec = { kind = "count", keys = keys, name = "@count" }
      local t = assert(netdevq.open{ filter = filter(), aggregate = spec, max_keys = max_keys })
      finally(function() t:close() end)
      return t
    end

    -- bursts of 64 payload sizes from CPU 0, burst b the sizes 64 * b + 1 .. 64 * b + 64, each
    -- sent `times` times: 64 * bursts keys of len (43 on); returns the datagrams sent
    local function send_bursts(bursts, times)
      for b = 0, bursts - 1 do
        local sizes = {}
        for i = 1, 64 do sizes[i] = b * 64 + i end
        send_on(0, table.concat(sizes, ","), times)
      end
      return 64 * bursts * times
    end

    local function ncpu()
      local n = 0
      for l in io.lines("/sys/devices/system/cpu/online") do
        for a, b in l:gmatch("(%d+)%-?(%d*)") do n = n + (b ~= "" and b - a + 1 or 1) end
      end
      return n
    end

    it("adds up a key counted on two CPUs, with nothing in the hash", function()
      local t = count_tracer({ "dev", "proto" })
      local other = ncpu() > 1 and 1 or 0
      send_on(0, "100", 5)
      send_on(other, "200", 7)
      local used, hashed = where_counted(2)
      if other == 1 then
        assert.same({ "cpu 0: 5", "cpu 1: 7" }, used)
      else
        assert.same({ "cpu 0: 12" }, used)
      end
      assert.equal(0, hashed)
      local agg = assert(t:read_aggregate())
      assert.equal("@count[" .. pair.veth_a .. ", udp]: 12\n", agg:text())
      -- read again after a reset: nothing new, nothing printed; then only what came since
      assert(t:read_aggregate(nil, true))
      assert.equal("", assert(t:read_aggregate(nil, true)):text())
      send_on(other, "300", 3)
      assert.equal("@count[" .. pair.veth_a .. ", udp]: 3\n",
        assert(t:read_aggregate(nil, true)):text())
      local st = t:stats()
      assert.same({ 15, 15, 0 }, { st.matched, st.aggregated, st.agg_overflow })
    end)

    it("counts more keys than a CPU's table holds exactly, the rest in the hash", function()
      local t = count_tracer({ "len" })
      -- payloads of 1 to 704 bytes, twice each: 704 keys (lens 43 to 746), more than the 256
      -- slots of CPU 0's table
      assert.equal(1408, send_bursts(11, 2))
      local used, hashed = where_counted(1)
      assert.is_true(#used <= SLOTS and #used > SLOTS / 2, #used .. " slots in use")
      for _, u in ipairs(used) do assert.equal("cpu 0: 2", u) end
      assert.equal(704, #used + hashed)
      local entries = assert(t:read_aggregate()):entries()
      assert.equal(704, #entries)
      table.sort(entries, function(a, b) return a.key[1] < b.key[1] end)
      for i, e in ipairs(entries) do
        assert.same({ { 42 + i }, 2 }, { e.key, e.value })
      end
      local st = t:stats()
      assert.same({ 1408, 1408, 0 }, { st.matched, st.aggregated, st.agg_overflow })
    end)

    it("keeps the key limit: with the table the hash holds what the table cannot take", function()
      -- the smallest limit that has a table: the hash holds the other half
      local max = 2 * SLOTS * ncpu()
      local t = count_tracer({ "len" }, max)
      local sent = send_bursts(math.floor(max / 64) + 1, 1) -- more keys than max
      local used, hashed = where_counted(1)
      assert.equal(max - SLOTS * ncpu(), hashed) -- the hash is full
      local entries = assert(t:read_aggregate()):entries()
      assert.equal(#used + hashed, #entries)
      assert.is_true(#entries <= max)
      local st = t:stats()
      -- every event is counted once, or counted as not aggregated (and then not as matched)
      assert.same({ #entries, #entries, sent - #entries },
        { st.matched, st.aggregated, st.agg_overflow })
    end)
  end)

  describe("the CLI", function()
    local function cli(args)
      local p = live.spawn_cli(args)
      cleanup[#cleanup + 1] = function() p:stop() end
      return p
    end

    -- -c: the sender, run in namespace a, is the only process traced
    local function sender_cmd()
      return table.concat({ "ip", "netns", "exec", pair.ns_a, netns.ndq_send(), "udp4", pair.ip4_a,
        pair.ip4_b, "9000", "40000", "8,100,600,1000,1400" }, " ")
    end

    local function run_cli(args)
      local p = cli(args)
      local ok, code, lines = p:wait()
      assert.is_true(ok, "exit " .. tostring(code) .. ":\n" .. table.concat(lines, "\n"))
      return lines
    end

    local function summary_of(lines)
      for _, l in ipairs(lines) do
        local ev, m, lost = l:match("^netdevq: (%d+) events, (%d+) matched, (%d+) lost$")
        if ev then return tonumber(m), tonumber(lost) end
      end
    end

    it("--count dev,proto with -c prints exactly the sender's packets", function()
      setup()
      local lines = run_cli({ "--count", "dev,proto", "-f", ('dev == "%s"'):format(pair.veth_a),
        "-c", sender_cmd() })
      -- the ready line is printed once the command is released: its own output may come first
      local ready = false
      for _, l in ipairs(lines) do ready = ready or l == READY end
      assert.is_true(ready, table.concat(lines, "\n"))
      assert.same({ "@count[" .. pair.veth_a .. ", udp]: 5" }, at_lines(lines))
      assert.same({ 5, 0 }, { summary_of(lines) })
    end)

    local MAP_LINE = '{"type":"map","name":"@count","keys":["dev","proto"],"data":[{"key":["%s","udp"],"value":5}]}'
    local HIST_LINE = '{"type":"hist","name":"@hist_len","keys":[],"data":[{"key":[],"buckets":['
      .. '{"min":32,"max":64,"count":1},{"min":64,"max":128,"count":0},'
      .. '{"min":128,"max":256,"count":1},{"min":256,"max":512,"count":0},'
      .. '{"min":512,"max":1024,"count":1},{"min":1024,"max":2048,"count":2}]}]}'

    -- The JSON lines of a run, decoded, by type (map and hist lines in order), and their text.
    local function json_of(lines)
      local by_type, raw = {}, {}
      for _, l in ipairs(lines) do
        if l:sub(1, 1) == "{" then
          local obj = cjson.decode(l)
          by_type[obj.type] = by_type[obj.type] or {}
          table.insert(by_type[obj.type], obj)
          if obj.type == "map" or obj.type == "hist" then raw[#raw + 1] = l end
        end
      end
      return by_type, raw
    end

    it("-F json writes the exact map and hist lines, from the kernel and from Lua alike", function()
      setup()
      local dev_filter = ('dev == "%s"'):format(pair.veth_a)
      local map_line = MAP_LINE:format(pair.veth_a)
      -- one aggregation: the kernel computes it
      local objs, raw = json_of(run_cli({ "--count", "dev,proto", "-F", "json", "-f", dev_filter,
        "-c", sender_cmd() }))
      assert.same({ map_line }, raw)
      assert.same({ type = "map", name = "@count", keys = { "dev", "proto" },
        data = { { key = { pair.veth_a, "udp" }, value = 5 } } }, objs.map[1])
      assert.equal(5, objs.summary[1].matched)
      assert.equal(0, objs.summary[1].lost)
      objs, raw = json_of(run_cli({ "--hist", "len", "-F", "json", "-f", dev_filter,
        "-c", sender_cmd() }))
      assert.same({ HIST_LINE }, raw)
      assert.same({ type = "hist", name = "@hist_len", keys = {}, data = { { key = {}, buckets = {
        { min = 32, max = 64, count = 1 }, { min = 64, max = 128, count = 0 },
        { min = 128, max = 256, count = 1 }, { min = 256, max = 512, count = 0 },
        { min = 512, max = 1024, count = 1 }, { min = 1024, max = 2048, count = 2 } } } } },
        objs.hist[1])
      -- two aggregations: events come to Lua, same lines
      objs, raw = json_of(run_cli({ "--count", "dev,proto", "--hist", "len", "-F", "json",
        "-f", dev_filter, "-c", sender_cmd() }))
      assert.same({ map_line, HIST_LINE }, raw)
      assert.equal(5, objs.summary[1].matched)
    end)

    it("-i 1 prints and resets every interval, in the kernel and in Lua", function()
      setup()
      local core = require("netdevq.core")
      local filter = ('netns == %d and dev == "%s" and (proto == "udp" or proto == "icmp")')
        :format(pair.netns_a, pair.veth_a)
      local kernel = cli({ "--count", "dev,proto", "-f", filter, "-i", 1, "-d", 2.5 })
      local lua = cli({ "--count", "dev,proto", "--sum", "len", "-f", filter, "-i", 1, "-d", 2.5 })
      assert.equal(READY, kernel:line())
      local t0 = core.monotonic_ns()
      assert.equal(READY, lua:line())
      udp_traffic(false) -- first interval
      local wait = 1.3 - (core.monotonic_ns() - t0) / 1e9
      assert.is_true(wait > 0.1, "the first interval's traffic took too long")
      sleep(wait)
      local _, out = send({ "icmp4", pair.ip4_a, pair.ip4_b, "1" }) -- second interval
      assert.truthy(out:find("replies 1\n", 1, true), out)
      -- the kernel run's lines as they come: the first interval's before the run ends (2.5 s)
      local got, first_at = {}, nil
      for l in function() return kernel:line() end do
        if l:sub(1, 1) == "@" then
          got[#got + 1] = l
          first_at = first_at or (core.monotonic_ns() - t0) / 1e9
        elseif l:match("^%d%d:%d%d:%d%d$") then -- each interval's header: its time
          got[#got + 1] = "time"
        elseif l:match("^netdevq: %d+ events, ") then
          got[#got + 1] = "summary"
        elseif not l:match("^netdevq: %d+ events/s now; %d+ matched, %d+ lost in all$") then
          got[#got + 1] = l -- (the status line every interval is left out)
        end
      end
      assert.same({ "time", "@count[" .. pair.veth_a .. ", udp]: 5", "time",
        "@count[" .. pair.veth_a .. ", icmp]: 1", "summary" }, got)
      assert.is_true(first_at < 2, "first interval printed at " .. first_at .. " s")
      local ok, _, lines = lua:wait()
      assert.is_true(ok)
      -- the echo request: 14 + 20 + 8 + 56 bytes
      assert.same({ "@count[" .. pair.veth_a .. ", udp]: 5", "@sum_len: 3318",
        "@count[" .. pair.veth_a .. ", icmp]: 1", "@sum_len: 98" }, at_lines(lines))
    end)
  end)
end)
