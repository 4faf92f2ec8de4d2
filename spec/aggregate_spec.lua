-- netdevq.aggregate: exact bpftrace 0.17 text (the expected strings below were printed by
-- `bpftrace` v0.17.0 on this machine kind with print(@map) for the same inputs), exact JSON, the
-- interval reset, and the equivalence of the Lua path and the in-kernel path: the same events fed
-- to agg:add and, packed and folded the way the BPF side does on two CPUs then merged, decoded by
-- aggregate.from_kernel, give identical entries, text and JSON.
local ffi = require("ffi")
local bit = require("bit")
local cjson = require("cjson")

local abi = require("netdevq.abi")
local aggregate = require("netdevq.aggregate")
local kernel = require("netdevq.aggregate.kernel")
local catalogue = require("netdevq.catalogue")
local SLOT = abi.AGG_KEY_SLOT
local KEY_SIZE = ffi.sizeof("struct netdevq_agg_key")

local function feed(agg, rows)
  for _, r in ipairs(rows) do agg:add(r[1], r[2]) end
  return agg
end

local function rep(n, row)
  local t = {}
  for i = 1, n do t[i] = row end
  return t
end

local function concat_lists(...)
  local out = {}
  for _, list in ipairs({ ... }) do
    for _, v in ipairs(list) do out[#out + 1] = v end
  end
  return out
end

local function capture(agg, method)
  local buf = {}
  local fh = { write = function(_, ...) for _, s in ipairs({ ... }) do buf[#buf + 1] = s end end }
  agg[method](agg, fh)
  return table.concat(buf)
end

describe("netdevq.aggregate #unit", function()

  describe("log2_slot", function()
    it("returns the kernel's slot: 0 for 0, the bit length for v >= 1", function()
      local cases = {
        { 0, 0 }, { 1, 1 }, { 2, 2 }, { 3, 2 }, { 4, 3 }, { 7, 3 }, { 8, 4 }, { 1023, 10 },
        { 1024, 11 }, { 1500, 11 }, { 65535, 16 }, { 65536, 17 }, { 2 ^ 32 - 1, 32 },
        { 2 ^ 32, 33 }, { 2 ^ 52 + 1, 53 }, { 2 ^ 63, 64 },
      }
      for _, c in ipairs(cases) do
        assert.are.equal(c[2], aggregate.log2_slot(c[1]), "log2_slot(" .. c[1] .. ")")
      end
    end)

    it("clamps to slot 64 and puts negatives in the Lua-only slot -1", function()
      assert.are.equal(64, aggregate.log2_slot(2 ^ 70))
      assert.are.equal(-1, aggregate.log2_slot(-1))
      assert.are.equal(-1, aggregate.log2_slot(-2 ^ 40))
    end)
  end)

  describe("linear_slot", function()
    it("returns 0 below min, 1..n for the buckets and n + 1 at or above max", function()
      local cases = { { 99, 0 }, { 100, 1 }, { 124, 1 }, { 125, 2 }, { 199, 4 }, { 200, 5 },
        { 10 ^ 9, 5 }, { -5, 0 } }
      for _, c in ipairs(cases) do
        assert.are.equal(c[2], aggregate.linear_slot(c[1], 100, 200, 25), "value " .. c[1])
      end
    end)
  end)

  describe("constructors", function()
    it("return aggregations named '@' .. kind by default", function()
      for _, kind in ipairs({ "count", "sum", "avg", "min", "max", "stats", "hist" }) do
        local agg = aggregate[kind]()
        assert.are.equal(kind, agg.kind)
        assert.are.equal("@" .. kind, agg.name)
        assert.is_true(aggregate.is_aggregation(agg))
      end
      assert.are.equal("@lhist", aggregate.lhist(0, 10, 1).name)
      assert.is_false(aggregate.is_aggregation({}))
    end)

    it("raise at the caller's line on a bad lhist", function()
      local bad = {
        { { 0, 10, 0 }, "lhist STEP must be > 0 (got 0)" },
        { { 0, 10, -2 }, "lhist STEP must be > 0 (got -2)" },
        { { 10, 10, 1 }, "lhist MAX must be > MIN (got MIN 10, MAX 10)" },
        { { 10, 0, 1 }, "lhist MAX must be > MIN (got MIN 10, MAX 0)" },
        { { 0, 10, 3 }, "lhist MAX - MIN (10) must be a multiple of STEP 3" },
        { { 0, 10.5, 1 }, "lhist MIN, MAX and STEP must be integers" },
        { { nil, 10, 1 }, "lhist MIN, MAX and STEP must be integers" },
        { { 0, 100000000, 1 }, "lhist has at most 10000 buckets ((MAX - MIN) / STEP is 100000000)" },
      }
      for _, b in ipairs(bad) do
        local ok, err = pcall(aggregate.lhist, b[1][1], b[1][2], b[1][3])
        assert.is_false(ok)
        assert.matches(b[2], err, 1, true)
        -- the same check, as a message, for the CLI and open()
        local cok, cerr = aggregate.check({ kind = "lhist", value = "len", min = b[1][1],
                                            max = b[1][2], step = b[1][3] })
        assert.is_nil(cok)
        assert.are.equal(b[2], cerr)
      end
      local ok, err = pcall(function() return aggregate.lhist(0, 10, 0) end)
      assert.is_false(ok)
      assert.matches("aggregate_spec.lua:%d+: ", err)
    end)

    it("raise on bad options and on new() without a known kind", function()
      assert.has_error(function() aggregate.count("x") end)
      assert.has_error(function() aggregate.count({ name = 1 }) end)
      assert.has_error(function() aggregate.count({ keys = { 1 } }) end)
      assert.has_error(function() aggregate.new({ kind = "median" }) end)
      assert.has_error(function() aggregate.new({ kind = "lhist", min = 0, max = 10 }) end)
    end)

    it("new(spec) builds the same aggregation as the constructor", function()
      local a = aggregate.new({ kind = "lhist", name = "@l", keys = { "dev" }, min = 0, max = 4096,
        step = 1024 })
      local b = aggregate.lhist(0, 4096, 1024, { name = "@l", keys = { "dev" } })
      feed(a, { { "lo", 1500 }, { "lo", 5000 } })
      feed(b, { { "lo", 1500 }, { "lo", 5000 } })
      assert.are.equal(b:text(), a:text())
    end)
  end)

  describe("add", function()
    it("accepts no key, a scalar key and an array key", function()
      local c = aggregate.count({ name = "@c" })
      c:add()
      c:add(nil)
      assert.are.equal("@c: 2\n", c:text())
      local s = aggregate.count({ name = "@s" })
      s:add("lo")
      s:add({ "lo" })
      s:add(7)
      assert.are.equal("@s[7]: 1\n@s[lo]: 2\n", s:text())
    end)

    it("keeps its own copy of the key parts (callers reuse one key table)", function()
      local c = aggregate.count({ name = "@c" })
      local key = { "lo", "udp" }
      c:add(key)
      key[1], key[2] = "eth0", "tcp"
      c:add(key)
      c:add(key)
      assert.are.equal("@c[lo, udp]: 1\n@c[eth0, tcp]: 2\n", c:text())
    end)

    it("takes 64-bit cdata values and raises on non-numbers", function()
      local s = aggregate.sum({ name = "@s" })
      s:add(nil, 5ULL)
      s:add(nil, ffi.new("uint64_t", 7))
      assert.are.equal("@s: 12\n", s:text())
      local ok, err = pcall(function() s:add(nil, {}) end)
      assert.is_false(ok)
      assert.matches("aggregate_spec.lua:%d+: .*value must be a number", err)
    end)
  end)

  describe("text", function()
    it("prints count maps like bpftrace, sorted by value", function()
      local agg = feed(aggregate.count({ name = "@count" }), concat_lists(
        rep(3, { { "lo", "udp" } }), { { { "eth0", "tcp" } } }, rep(2, { { "veth0", "icmp" } })))
      assert.are.equal(
        "@count[eth0, tcp]: 1\n" ..
        "@count[veth0, icmp]: 2\n" ..
        "@count[lo, udp]: 3\n", agg:text())
      local n = feed(aggregate.count({ name = "@n" }), { {}, {} })
      assert.are.equal("@n: 2\n", n:text())
    end)

    it("prints sum, min and max maps like bpftrace", function()
      local sum = feed(aggregate.sum({ name = "@sum_len" }), { { 443, 1500 }, { 80, 100 }, { 80, 60 } })
      assert.are.equal("@sum_len[80]: 160\n@sum_len[443]: 1500\n", sum:text())
      local rows = { { "lo", 60 }, { "lo", 42 }, { "eth0", 1500 } }
      assert.are.equal("@min_len[lo]: 42\n@min_len[eth0]: 1500\n",
        feed(aggregate.min({ name = "@min_len" }), rows):text())
      assert.are.equal("@max_len[lo]: 60\n@max_len[eth0]: 1500\n",
        feed(aggregate.max({ name = "@max_len" }), rows):text())
    end)

    it("prints avg with C integer division and a blank line after, like bpftrace", function()
      local agg = feed(aggregate.avg({ name = "@avg_len" }),
        { { "x", 10 }, { "x", 5 }, { "z", -7 }, { "z", 0 } })
      assert.are.equal("@avg_len[z]: -3\n@avg_len[x]: 7\n\n", agg:text())
    end)

    it("prints stats like bpftrace, sorted by average", function()
      local agg = feed(aggregate.stats({ name = "@stats_len" }),
        { { { "lo", 17 }, 100 }, { { "lo", 17 }, 51 }, { { "eth0", 6 }, 1500 } })
      assert.are.equal(
        "@stats_len[lo, 17]: count 2, average 75, total 151\n" ..
        "@stats_len[eth0, 6]: count 1, average 1500, total 1500\n\n", agg:text())
    end)

    it("prints a log2 histogram like bpftrace, keys sorted by total count", function()
      local agg = feed(aggregate.hist({ name = "@hist_len" }), {
        { "eth0", 0 }, { "eth0", 1 }, { "eth0", 2 }, { "eth0", 3 }, { "eth0", 1500 },
        { "eth0", 1500 }, { "eth0", 65536 }, { "eth0", 3145728 }, { "lo", 100 }, { "lo", 127 },
      })
      assert.are.equal(
        "@hist_len[lo]: \n" ..
        "[64, 128)              2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" ..
        "\n" ..
        "@hist_len[eth0]: \n" ..
        "[0]                    1 |@@@@@@@@@@@@@@@@@@@@@@@@@@                          |\n" ..
        "[1]                    1 |@@@@@@@@@@@@@@@@@@@@@@@@@@                          |\n" ..
        "[2, 4)                 2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" ..
        "[4, 8)                 0 |                                                    |\n" ..
        "[8, 16)                0 |                                                    |\n" ..
        "[16, 32)               0 |                                                    |\n" ..
        "[32, 64)               0 |                                                    |\n" ..
        "[64, 128)              0 |                                                    |\n" ..
        "[128, 256)             0 |                                                    |\n" ..
        "[256, 512)             0 |                                                    |\n" ..
        "[512, 1K)              0 |                                                    |\n" ..
        "[1K, 2K)               2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" ..
        "[2K, 4K)               0 |                                                    |\n" ..
        "[4K, 8K)               0 |                                                    |\n" ..
        "[8K, 16K)              0 |                                                    |\n" ..
        "[16K, 32K)             0 |                                                    |\n" ..
        "[32K, 64K)             0 |                                                    |\n" ..
        "[64K, 128K)            1 |@@@@@@@@@@@@@@@@@@@@@@@@@@                          |\n" ..
        "[128K, 256K)           0 |                                                    |\n" ..
        "[256K, 512K)           0 |                                                    |\n" ..
        "[512K, 1M)             0 |                                                    |\n" ..
        "[1M, 2M)               0 |                                                    |\n" ..
        "[2M, 4M)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@                          |\n" ..
        "\n", agg:text())
    end)

    it("prints negative values in a '(..., 0)' row as bpftrace does", function()
      local agg = feed(aggregate.hist({ name = "@h" }), concat_lists(rep(6, { nil, -3 }), { { nil, 3 } }))
      assert.are.equal(
        "@h: \n" ..
        "(..., 0)               6 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" ..
        "[0]                    0 |                                                    |\n" ..
        "[1]                    0 |                                                    |\n" ..
        "[2, 4)                 1 |@@@@@@@@                                            |\n" ..
        "\n", agg:text())
    end)

    it("prints linear histograms like bpftrace, with K labels and open-ended rows", function()
      local agg = feed(aggregate.lhist(0, 4096, 1024, { name = "@lhist_len" }), concat_lists(
        { { nil, 1500 }, { nil, 100 } }, rep(4, { nil, 5000 })))
      assert.are.equal(
        "@lhist_len: \n" ..
        "[0, 1K)                1 |@@@@@@@@@@@@@                                       |\n" ..
        "[1K, 2K)               1 |@@@@@@@@@@@@@                                       |\n" ..
        "[2K, 3K)               0 |                                                    |\n" ..
        "[3K, 4K)               0 |                                                    |\n" ..
        "[4K, ...)              4 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" ..
        "\n", agg:text())

      local q = feed(aggregate.lhist(100, 200, 25, { name = "@lhist_q" }),
        { { 1, 50 }, { 1, 120 }, { 1, 199 }, { 1, 200 }, { 2, 150 } })
      assert.are.equal(
        "@lhist_q[2]: \n" ..
        "[150, 175)             1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" ..
        "\n" ..
        "@lhist_q[1]: \n" ..
        "(..., 100)             1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" ..
        "[100, 125)             1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" ..
        "[125, 150)             0 |                                                    |\n" ..
        "[150, 175)             0 |                                                    |\n" ..
        "[175, 200)             1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" ..
        "[200, ...)             1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" ..
        "\n", q:text())
    end)

    it("scales bars in single precision as bpftrace does", function()
      local agg = aggregate.lhist(0, 20, 1, { name = "@bars" })
      for j = 1, 13 do for _ = 1, j do agg:add(nil, j) end end
      for _ = 1, 97 do agg:add(nil, 19) end
      assert.are.equal(
        "@bars: \n" ..
        "[1, 2)                 1 |                                                    |\n" ..
        "[2, 3)                 2 |@                                                   |\n" ..
        "[3, 4)                 3 |@                                                   |\n" ..
        "[4, 5)                 4 |@@                                                  |\n" ..
        "[5, 6)                 5 |@@                                                  |\n" ..
        "[6, 7)                 6 |@@@                                                 |\n" ..
        "[7, 8)                 7 |@@@                                                 |\n" ..
        "[8, 9)                 8 |@@@@                                                |\n" ..
        "[9, 10)                9 |@@@@                                                |\n" ..
        "[10, 11)              10 |@@@@@                                               |\n" ..
        "[11, 12)              11 |@@@@@                                               |\n" ..
        "[12, 13)              12 |@@@@@@                                              |\n" ..
        "[13, 14)              13 |@@@@@@                                              |\n" ..
        "[14, 15)               0 |                                                    |\n" ..
        "[15, 16)               0 |                                                    |\n" ..
        "[16, 17)               0 |                                                    |\n" ..
        "[17, 18)               0 |                                                    |\n" ..
        "[18, 19)               0 |                                                    |\n" ..
        "[19, 20)              97 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" ..
        "\n", agg:text())
    end)

    it("labels the top log2 slots with T suffixes", function()
      local agg = feed(aggregate.hist({ name = "@h" }), { { nil, 2 ^ 40 }, { nil, 2 ^ 41 + 1 } })
      assert.are.equal(
        "@h: \n" ..
        "[1T, 2T)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" ..
        "[2T, 4T)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" ..
        "\n", agg:text())
    end)

    it("sorts keys with equal values by their parts, numbers numerically", function()
      local agg = feed(aggregate.count({ name = "@c" }),
        { { { "lo", 10 } }, { { "lo", 9 } }, { { "eth0", 80 } }, { { "lo", 9 } } })
      assert.are.equal("@c[eth0, 80]: 1\n@c[lo, 10]: 1\n@c[lo, 9]: 2\n", agg:text())
    end)

    it("prints nothing for an empty aggregation", function()
      for _, agg in ipairs({ aggregate.count(), aggregate.avg(), aggregate.stats(), aggregate.hist(),
        aggregate.lhist(0, 10, 1) }) do
        assert.are.equal("", agg:text())
        assert.are.equal("", capture(agg, "print"))
        assert.are.equal("", capture(agg, "write_json"))
      end
    end)

    it("print(fh) writes text()", function()
      local agg = feed(aggregate.count({ name = "@c" }), { { "lo" } })
      assert.are.equal("@c[lo]: 1\n", capture(agg, "print"))
      assert.are.equal("@c[lo]: 1\n", tostring(agg))
    end)
  end)

  describe("json", function()
    it("returns the contract's map object", function()
      local agg = feed(aggregate.count({ name = "@count", keys = { "dev", "proto" } }), concat_lists(
        rep(12, { { "lo", "udp" } }), { { { "eth0", "tcp" } } }))
      assert.are.same({ type = "map", name = "@count", keys = { "dev", "proto" }, data = {
        { key = { "eth0", "tcp" }, value = 1 },
        { key = { "lo", "udp" }, value = 12 },
      } }, agg:json())
      assert.are.equal('{"type":"map","name":"@count","keys":["dev","proto"],"data":['
        .. '{"key":["eth0","tcp"],"value":1},{"key":["lo","udp"],"value":12}]}', agg:json_line())
      assert.are.same(agg:json(), cjson.decode(agg:json_line()))
      assert.are.equal(agg:json_line() .. "\n", capture(agg, "write_json"))
    end)

    it("writes [] for no key and an object value for stats", function()
      local agg = feed(aggregate.stats({ name = "@stats_len" }), { { nil, 100 }, { nil, 51 } })
      assert.are.equal('{"type":"map","name":"@stats_len","keys":[],"data":[{"key":[],'
        .. '"value":{"count":2,"average":75,"total":151}}]}', agg:json_line())
      local avg = feed(aggregate.avg({ name = "@avg_len", keys = { "dev" } }),
        { { "lo", 10 }, { "lo", 5 } })
      assert.are.equal('{"type":"map","name":"@avg_len","keys":["dev"],"data":['
        .. '{"key":["lo"],"value":7}]}', avg:json_line())
    end)

    it("writes hist buckets as [min, max) from the first to the last non-empty one", function()
      local agg = feed(aggregate.hist({ name = "@hist_len", keys = { "dev" } }),
        { { "lo", 0 }, { "lo", 0 }, { "lo", 0 }, { "lo", 5 }, { "lo", 1500 } })
      assert.are.same({ type = "hist", name = "@hist_len", keys = { "dev" }, data = {
        { key = { "lo" }, buckets = {
          { min = 0, max = 1, count = 3 }, { min = 1, max = 2, count = 0 },
          { min = 2, max = 4, count = 0 }, { min = 4, max = 8, count = 1 },
          { min = 8, max = 16, count = 0 }, { min = 16, max = 32, count = 0 },
          { min = 32, max = 64, count = 0 }, { min = 64, max = 128, count = 0 },
          { min = 128, max = 256, count = 0 }, { min = 256, max = 512, count = 0 },
          { min = 512, max = 1024, count = 0 }, { min = 1024, max = 2048, count = 1 },
        } },
      } }, agg:json())
      assert.are.same(agg:json(), cjson.decode(agg:json_line()))
      local h = feed(aggregate.hist({ name = "@h" }), { { nil, 0 }, { nil, 0 }, { nil, 0 } })
      assert.are.equal('{"type":"hist","name":"@h","keys":[],"data":[{"key":[],"buckets":['
        .. '{"min":0,"max":1,"count":3}]}]}', h:json_line())
    end)

    it("leaves out the open end of lhist's outer buckets", function()
      local agg = feed(aggregate.lhist(100, 200, 25, { name = "@l" }),
        { { nil, 50 }, { nil, 120 }, { nil, 200 }, { nil, 300 } })
      assert.are.equal('{"type":"hist","name":"@l","keys":[],"data":[{"key":[],"buckets":['
        .. '{"max":100,"count":1},{"min":100,"max":125,"count":1},{"min":125,"max":150,"count":0},'
        .. '{"min":150,"max":175,"count":0},{"min":175,"max":200,"count":0},'
        .. '{"min":200,"count":2}]}]}', agg:json_line())
      local neg = feed(aggregate.hist({ name = "@n" }), { { nil, -1 } })
      assert.are.equal('{"type":"hist","name":"@n","keys":[],"data":[{"key":[],"buckets":['
        .. '{"max":0,"count":1}]}]}', neg:json_line())
    end)

    it("writes large integers exactly", function()
      local agg = feed(aggregate.sum({ name = "@s" }), { { nil, 2 ^ 50 }, { nil, 2 ^ 50 } })
      assert.are.equal('{"type":"map","name":"@s","keys":[],"data":[{"key":[],'
        .. '"value":2251799813685248}]}', agg:json_line())
      assert.are.equal("@s: 2251799813685248\n", agg:text())
    end)
  end)

  describe("clear (interval reset)", function()
    it("forgets every key so the next interval starts empty", function()
      local agg = aggregate.count({ name = "@count" })
      feed(agg, { { "lo" }, { "lo" }, { "eth0" } })
      assert.are.equal("@count[eth0]: 1\n@count[lo]: 2\n", agg:text())
      assert.are.equal(2, agg:len())
      agg:clear()
      assert.are.equal(0, agg:len())
      assert.are.equal("", agg:text())
      assert.are.same({}, agg:entries())
      feed(agg, { { "veth0" } })
      assert.are.equal("@count[veth0]: 1\n", agg:text())
    end)

    it("resets histogram slots too", function()
      local agg = feed(aggregate.hist({ name = "@h" }), { { nil, 1000 } })
      agg:clear()
      feed(agg, { { nil, 1 } })
      assert.are.equal("@h: \n"
        .. "[1]                    1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n\n", agg:text())
    end)
  end)

  describe("entries", function()
    it("returns keys, values and slots in print order", function()
      local agg = feed(aggregate.stats({ keys = { "dev" } }), { { "lo", 100 }, { "lo", 51 }, { "a", 1 } })
      local e = agg:entries()
      assert.are.equal(2, #e)
      assert.are.same({ "a" }, e[1].key)
      assert.are.same({ "lo" }, e[2].key)
      assert.are.equal(2, e[2].count)
      assert.are.equal(151, e[2].sum)
      assert.are.equal(75, e[2].average)
      assert.are.equal("[lo]", e[2].text)
      local h = feed(aggregate.hist(), { { nil, 3 }, { nil, 2 } })
      assert.are.equal(2, h:entries()[1].slots[2])
      assert.are.equal(2, h:entries()[1].total)
    end)
  end)

  describe("top", function()
    it("prints only the largest entries, like bpftrace's print(@map, N)", function()
      local agg = feed(aggregate.count({ name = "@c", keys = { "dev" } }),
        { { "a" }, { "b" }, { "b" }, { "c" }, { "c" }, { "c" } })
      assert.are.equal("@c[b]: 2\n@c[c]: 3\n", agg:text(2))
      assert.are.equal("@c[a]: 1\n@c[b]: 2\n@c[c]: 3\n", agg:text(10))
      assert.are.equal("", agg:text(0))
      local f = io.tmpfile()
      agg:print(f, 1)
      f:seek("set")
      assert.are.equal("@c[c]: 3\n", f:read("*a"))
      assert.has_error(function() agg:text(-1) end)
    end)

    it("keeps the same entries in JSON", function()
      local agg = feed(aggregate.count({ name = "@c", keys = { "dev" } }),
        { { "a" }, { "b" }, { "b" }, { "c" }, { "c" }, { "c" } })
      assert.are.same({ { key = { "b" }, value = 2 }, { key = { "c" }, value = 3 } },
        agg:json(2).data)
      assert.are.equal('{"type":"map","name":"@c","keys":["dev"],"data":[{"key":["c"],"value":3}]}',
        agg:json_line(nil, 1))
      assert.are.equal(3, #agg:json().data)
      assert.has_error(function() agg:json(1.5) end)
    end)
  end)

  describe("from_kernel", function()
    local key_t = ffi.typeof("struct netdevq_agg_key")
    local value_t = ffi.typeof("struct netdevq_agg_value")

    local function put_u64(key, slot, n)
      ffi.cast("uint64_t *", key.k + (slot - 1) * SLOT)[0] = n
    end

    it("decodes every kind of key slot", function()
      local key = key_t()
      ffi.copy(key.k, "veth0")
      put_u64(key, 2, 17)
      local v4 = { 198, 18, 0, 2 }
      for i = 1, 4 do key.k[2 * SLOT + i - 1] = v4[i] end
      key.k[2 * SLOT + 16] = 4
      local v6 = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 }
      for i = 1, 16 do key.k[3 * SLOT + i - 1] = v6[i] end
      key.k[3 * SLOT + 16] = 6
      -- an IPv4-mapped IPv6 address stays IPv6 (the family byte tells it from IPv4)
      local mapped = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 2 }
      for i = 1, 16 do key.k[4 * SLOT + i - 1] = mapped[i] end
      key.k[4 * SLOT + 16] = 6
      local d = kernel.decode_key_field
      assert.are.equal("veth0", d("dev", key, 1))
      assert.are.equal("udp", d("proto", key, 2))
      assert.are.equal(17, d("dport", key, 2))
      assert.are.equal("198.18.0.2", d("saddr", key, 3))
      assert.are.equal("2001:db8::1", d("daddr", key, 4))
      assert.are.equal("::ffff:198.18.0.2", d("saddr", key, 5))
      local s = ffi.string(key.k, KEY_SIZE)
      assert.are.equal("2001:db8::1", d("daddr", s, 4))
      assert.are.equal("veth0", d("comm", s, 1))

      local k2 = key_t()
      put_u64(k2, 1, 0x86dd)
      put_u64(k2, 2, 0x12)
      put_u64(k2, 3, 0x88cc)
      ffi.fill(k2.k + 3 * SLOT, SLOT, 0xff)
      assert.are.equal("ipv6", d("ethertype", k2, 1))
      assert.are.equal("S.", d("tcp_flags", k2, 2))
      assert.are.equal("lldp", d("ethertype", k2, 3))
      assert.are.equal(aggregate.ABSENT, d("saddr", k2, 4))
      assert.are.equal(aggregate.ABSENT, d("sport", k2, 4))
      -- a driver's negative return code, zero-extended in the key: signed as the Lua path has it
      put_u64(k2, 5, 0xffffff97)
      put_u64(k2, 6, 0x10)
      assert.are.equal(-105, d("xmit_rc", k2, 5))
      assert.are.equal(16, d("xmit_rc", k2, 6))
    end)

    it("accepts an array of records or an iterator, and adds to a given aggregation", function()
      local spec = { kind = "count", name = "@c", keys = { "dev" } }
      local k = key_t()
      ffi.copy(k.k, "lo")
      local v = value_t()
      v.count = 5
      local agg = kernel.from_kernel(spec, { { key = k, value = v } })
      assert.are.equal("@c[lo]: 5\n", agg:text())
      local given = true
      kernel.from_kernel(spec, function()
        if given then given = false; return ffi.string(k.k, KEY_SIZE), v end
      end, agg)
      assert.are.equal("@c[lo]: 10\n", agg:text())
      assert.has_error(function()
        kernel.from_kernel({ kind = "lhist", min = 0, max = 1000, step = 1 }, {})
      end)
    end)

    -- The equivalence. Events are real struct netdevq_event cdata: the Lua path keys them with
    -- netdevq.fields getters (ABSENT for a field the event lacks); the kernel path is simulated
    -- below with the BPF side's rules in 64-bit integer arithmetic, independent of aggregate.lua.
    describe("equals the Lua path on the same events", function()
      local event_t = ffi.typeof("struct netdevq_event")
      local u64 = ffi.typeof("uint64_t")
      local EV_L4, EV_TCP = 2, 4
      local NUMERIC_SIZE = 8
      local LMIN, LMAX, LSTEP = 0, 1600, 100

      -- deterministic pseudo-random events over a few devices, protocols, addresses and sizes
      local function make_events(n)
        local events = {}
        local seed = 12345
        local function rnd(m)
          seed = (seed * 1103515245 + 12345) % 2147483648
          return math.floor(seed / 65536) % m
        end
        local devs = { "lo", "eth0", "veth-ndq0" }
        for i = 1, n do
          local e = event_t()
          ffi.copy(e.dev, devs[rnd(3) + 1])
          ffi.copy(e.comm, rnd(2) == 0 and "ndq_send" or "ping")
          e.cpu = i % 2
          e.pid = 1000 + rnd(3)
          local sizes = { 0, 1, 42, 60, 98, 1500, 1514, 9000, 65535, 2000000 }
          e.len = sizes[rnd(#sizes) + 1] + rnd(3)
          local kind = rnd(4)
          if kind == 0 then              -- IPv4 UDP
            e.l3, e.ethertype, e.proto = 4, 0x0800, 17
            e.saddr[0], e.saddr[1], e.saddr[2], e.saddr[3] = 198, 18, 0, 1 + rnd(2)
            e.daddr[0], e.daddr[1], e.daddr[2], e.daddr[3] = 198, 19, 0, 1
            e.flags = EV_L4
            e.sport, e.dport = 40000 + rnd(2), 53
          elseif kind == 1 then          -- IPv6 TCP
            e.l3, e.ethertype, e.proto = 6, 0x86dd, 6
            local a = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 + rnd(2) }
            for j = 1, 16 do e.saddr[j - 1] = a[j]; e.daddr[j - 1] = a[j] end
            e.daddr[15] = 9
            e.flags = EV_L4 + EV_TCP
            e.sport, e.dport = 443, 50000
            e.tcp_flags = rnd(2) == 0 and 0x02 or 0x18
          elseif kind == 2 then          -- IPv4 ICMP: no ports
            e.l3, e.ethertype, e.proto = 4, 0x0800, 1
            e.saddr[0], e.saddr[1], e.saddr[2], e.saddr[3] = 198, 18, 0, 1
            e.daddr[0], e.daddr[1], e.daddr[2], e.daddr[3] = 198, 18, 0, 2
          else                           -- ARP: not IP
            e.ethertype = 0x0806
          end
          events[i] = e
        end
        return events
      end

      -- BPF side (put_key in bpf/netdevq.bpf.c): a key field is one SLOT-byte slot found
      -- through the field's location; an absent field is all 0xff.
      local function pack_field(key, slot, name, e)
        local off = (slot - 1) * SLOT
        local loc = catalogue.by_name[name].loc
        local base = ffi.cast("const uint8_t *", e)
        local present = bit.band(e.flags, loc.when_flags) == loc.when_flags
          and (loc.when_l3 == 0 or e.l3 ~= 0)
        local function number()
          local p = base + loc.off
          if loc.size == 1 then return p[0] end
          if loc.size == 2 then return ffi.cast("const uint16_t *", p)[0] end
          if loc.size == 4 then return ffi.cast("const uint32_t *", p)[0] end
          return ffi.cast("const uint64_t *", p)[0]
        end
        if present and loc.when_nonzero == 1 then present = number() ~= 0 end
        if not present then
          ffi.fill(key.k + off, SLOT, 0xff)
        elseif loc.kind == abi.LOC.ADDRESS then
          ffi.copy(key.k + off, base + loc.off, e.l3 == 4 and 4 or 16)
          key.k[off + 16] = e.l3
        elseif loc.kind == abi.LOC.BYTES then
          ffi.copy(key.k + off, base + loc.off, loc.size)
        else
          assert(ffi.sizeof(u64) == NUMERIC_SIZE)
          ffi.cast("uint64_t *", key.k + off)[0] = number()
        end
      end

      local function bpf_log2_slot(v)      -- 64 - clz64(v), 0 for 0
        local s = 0
        while v ~= 0ULL do v = bit.rshift(v, 1); s = s + 1 end
        return s
      end

      local function bpf_linear_slot(v)
        if v < LMIN then return 0 end
        if v >= LMAX then return (LMAX - LMIN) / LSTEP + 1 end
        return tonumber((v - LMIN) / LSTEP) + 1   -- u64 division truncates
      end

      -- One per-CPU hash per CPU, folded like the BPF program, then merged like the loader.
      local function kernel_records(events, keys, value_field, hist)
        local percpu = { {}, {} }
        for _, e in ipairs(events) do
          local key = key_t()
          for i, name in ipairs(keys) do pack_field(key, i, name, e) end
          local kbytes = ffi.string(key.k, KEY_SIZE)
          local map = percpu[e.cpu + 1]
          local val = map[kbytes]
          local v = value_field and u64(e[value_field]) or 0ULL
          if not val then
            val = value_t()
            val.min, val.max = v, v
            map[kbytes] = val
          end
          val.count = val.count + 1
          val.sum = val.sum + v
          if v < val.min then val.min = v end
          if v > val.max then val.max = v end
          if hist == "log2" then
            local s = bpf_log2_slot(v)
            val.slot[s] = val.slot[s] + 1
          elseif hist == "linear" then
            local s = bpf_linear_slot(v)
            val.slot[s] = val.slot[s] + 1
          end
        end
        local merged, order = {}, {}
        for cpu = 1, 2 do
          for kbytes, val in pairs(percpu[cpu]) do
            local m = merged[kbytes]
            if not m then
              m = value_t()
              merged[kbytes] = m
              order[#order + 1] = kbytes
            end
            if val.count > 0 then
              if m.count == 0 or val.min < m.min then m.min = val.min end
              if m.count == 0 or val.max > m.max then m.max = val.max end
            end
            m.count = m.count + val.count
            m.sum = m.sum + val.sum
            for s = 0, 67 do m.slot[s] = m.slot[s] + val.slot[s] end
          end
        end
        local records = {}
        for i, kbytes in ipairs(order) do
          local key = key_t()
          ffi.copy(key.k, kbytes, KEY_SIZE)
          records[i] = { key = key, value = merged[kbytes] }
        end
        return records
      end

      local function lua_path(spec, events)
        local agg = aggregate.new(spec)
        local key = {}
        for _, e in ipairs(events) do
          for i, name in ipairs(spec.keys) do
            local part = catalogue.by_name[name].get(e)
            if part == nil then part = aggregate.ABSENT end
            key[i] = part
          end
          local v = spec.value and catalogue.by_name[spec.value].get(e) or nil
          if #spec.keys == 0 then agg:add(nil, v) else agg:add(key, v) end
        end
        return agg
      end

      local events = make_events(600)
      local keysets = {
        {},
        { "dev" },
        { "dev", "proto" },
        { "saddr", "daddr", "proto", "dport" },
        { "comm", "pid", "ethertype", "tcp_flags" },
      }
      local kinds = {
        { kind = "count" },
        { kind = "sum", value = "len" },
        { kind = "avg", value = "len" },
        { kind = "min", value = "len" },
        { kind = "max", value = "len" },
        { kind = "stats", value = "len" },
        { kind = "hist", value = "len", hist = "log2" },
        { kind = "lhist", value = "len", hist = "linear", min = LMIN, max = LMAX, step = LSTEP },
      }

      for _, keys in ipairs(keysets) do
        for _, k in ipairs(kinds) do
          local label = k.kind .. " by {" .. table.concat(keys, ",") .. "}"
          it("for " .. label, function()
            local spec = { kind = k.kind, name = "@" .. k.kind, keys = keys, value = k.value,
              min = k.min, max = k.max, step = k.step }
            local from_lua = lua_path(spec, events)
            local from_kernel = kernel.from_kernel(spec,
              kernel_records(events, keys, k.value, k.hist))
            assert.is_true(from_lua:len() > 0)
            assert.are.same(from_lua:entries(), from_kernel:entries())
            assert.are.equal(from_lua:text(), from_kernel:text())
            assert.are.equal(from_lua:json_line(), from_kernel:json_line())
          end)
        end
      end

      it("keys absent fields as ABSENT on both paths", function()
        local spec = { kind = "count", name = "@c", keys = { "dev", "sport" } }
        local agg = kernel.from_kernel(spec, kernel_records(events, spec.keys))
        local text = agg:text()
        assert.matches("%[lo, %-%]: %d+\n", text)
        assert.are.equal(lua_path(spec, events):text(), text)
      end)
    end)
  end)
end)
