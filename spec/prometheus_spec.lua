-- netdevq.prometheus without root: the exact exposition text (names, label escaping, cumulative
-- histogram buckets, counters that survive interval resets), the listen address syntax, misuse,
-- and netdevq.http serving the published text on loopback (checked with curl, and the whole
-- text with promtool, Prometheus's own format checker).
local netdevq = require("netdevq")
local prometheus = require("netdevq.prometheus")
local clirun = require("support.clirun")

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

-- the sample lines (no # lines) of a text
local function samples(text)
  local out = {}
  for l in text:gmatch("[^\n]+") do
    if not l:match("^#") then out[#out + 1] = l end
  end
  return out
end

-- the exporter's text without the build_info family, which every render ends with
local function body(exp)
  return (exp:render():gsub("# HELP netdevq_build_info.*$", ""))
end

local exporters = {}
local function exporter(opts)
  opts = opts or {}
  opts.listen = opts.listen or "127.0.0.1:0"
  local e = assert(prometheus.new(opts))
  exporters[#exporters + 1] = e
  return e
end
after_each(function()
  for _, e in ipairs(exporters) do e:close() end
  exporters = {}
end)

describe("netdevq.prometheus names", function()
  it("derives metric names from the aggregation: prefix, unit, _total", function()
    local cases = {
      { netdevq.count{ keys = { "dev" } }, nil, "netdevq_count_total" },
      { netdevq.count{ name = "@count" }, nil, "netdevq_count_total" },
      { netdevq.sum{ name = "@sum_len", value = "len" }, nil, "netdevq_sum_len_bytes_total" },
      { netdevq.sum{ name = "@sum_mark", value = "mark" }, nil, "netdevq_sum_mark_total" },
      { netdevq.hist{ name = "@hist_len" }, { value = "len" }, "netdevq_hist_len_bytes" },
      { netdevq.lhist(0, 100, 10, { name = "@lhist_gso_size", value = "gso_size" }), nil,
        "netdevq_lhist_gso_size_bytes" },
      { netdevq.avg{ name = "@avg_len", value = "len" }, nil, "netdevq_avg_len_bytes" },
      { netdevq.max{ name = "@max_ttl", value = "ttl" }, nil, "netdevq_max_ttl" },
      { netdevq.stats{ name = "@stats_len", value = "len" }, nil, "netdevq_stats_len_bytes" },
      { netdevq.count{ name = "@tx by-dev.v2" }, nil, "netdevq_tx_by_dev_v2_total" },
      { netdevq.count{ name = "@9lives" }, nil, "netdevq__9lives_total" },
      { netdevq.count{ name = "@netdevq_packets_total" }, nil, "netdevq_packets_total" },
      { netdevq.sum{ name = "@x" }, { name = "tx_bytes_total", unit = "bytes" },
        "netdevq_tx_bytes_total" },
      { netdevq.sum{ name = "@x" }, { name = "tx", unit = "seconds" }, "netdevq_tx_seconds_total" },
    }
    for _, c in ipairs(cases) do
      assert.equal(c[3], prometheus.metric_name(c[1], c[2]))
    end
  end)

  it("escapes label values: backslash, double quote, line feed (nothing else)", function()
    assert.equal([[a\\b\"c\nd	e]], prometheus.escape_label('a\\b"c\nd\te'))
    assert.equal("plain-value:1.2.3.4", prometheus.escape_label("plain-value:1.2.3.4"))
  end)

  it("writes numbers as integers when they are, else with 17 digits", function()
    assert.equal("0", prometheus.number(0))
    assert.equal("1500", prometheus.number(1500))
    assert.equal("4611686018427387904", prometheus.number(2 ^ 62))
    assert.equal("1.8446744073709552e+19", prometheus.number(2 ^ 64))
    assert.equal("1.5", prometheus.number(1.5))
    assert.equal("+Inf", prometheus.number(math.huge))
    assert.equal("NaN", prometheus.number(0 / 0))
  end)

  it("parses [ADDR:]PORT", function()
    local ok = {
      { "9464", "127.0.0.1", 9464 }, { ":9464", "127.0.0.1", 9464 }, { 9464, "127.0.0.1", 9464 },
      { "0.0.0.0:9100", "0.0.0.0", 9100 }, { "[::1]:9464", "::1", 9464 }, { "[::]:0", "::", 0 },
    }
    for _, c in ipairs(ok) do
      local host, port = prometheus.parse_listen(c[1])
      assert.same({ c[2], c[3] }, { host, port })
    end
    for _, bad in ipairs({ "", "host:9464", "::1:9464", "9464x", "1.2.3.4:", "[::1]" }) do
      local host, err = prometheus.parse_listen(bad)
      assert.is_nil(host, bad)
      assert.equal("'" .. bad .. "' is not [ADDR:]PORT (e.g. 9464, 127.0.0.1:9464, [::1]:9464)", err)
    end
    assert.same({ nil, "port 70000 is out of range (0-65535)" }, { prometheus.parse_listen("70000") })
  end)
end)

describe("netdevq.prometheus exposition", function()
  it("renders counters with escaped labels, sorted by labels", function()
    local c = netdevq.count{ name = "@count", keys = { "dev", "proto" } }
    c:add({ "lo", "udp" }, 1)
    c:add({ "lo", "udp" }, 1)
    c:add({ 'we"ird\\dev\n', "tcp" }, 1)
    c:add({ "eth0", 17 }, 1)
    local e = exporter{ aggregations = { c } }
    assert.equal(table.concat({
      "# HELP netdevq_count_total netdevq @count: count per dev, proto",
      "# TYPE netdevq_count_total counter",
      'netdevq_count_total{dev="eth0",proto="17"} 1',
      'netdevq_count_total{dev="lo",proto="udp"} 2',
      'netdevq_count_total{dev="we\\"ird\\\\dev\\n",proto="tcp"} 1',
      "" }, "\n"), body(e))
  end)

  it("renders hist as a cumulative histogram with le = each bucket's highest integer", function()
    local h = netdevq.hist{ name = "@hist_len", keys = { "dev" }, value = "len" }
    for _, v in ipairs({ 0, 1, 2, 3, 100, 100, 127, 128 }) do h:add("lo", v) end
    h:add("eth0", 1500)
    local e = exporter{ aggregations = { h } }
    local b = 'netdevq_hist_len_bytes_bucket{dev="lo",le="%s"} %d'
    local expect = {
      'netdevq_hist_len_bytes_bucket{dev="eth0",le="0"} 0',
    }
    for _, le in ipairs({ "1", "3", "7", "15", "31", "63", "127", "255", "511", "1023" }) do
      expect[#expect + 1] = ('netdevq_hist_len_bytes_bucket{dev="eth0",le="%s"} 0'):format(le)
    end
    for _, row in ipairs({
      'netdevq_hist_len_bytes_bucket{dev="eth0",le="2047"} 1',
      'netdevq_hist_len_bytes_bucket{dev="eth0",le="+Inf"} 1',
      'netdevq_hist_len_bytes_sum{dev="eth0"} 1500',
      'netdevq_hist_len_bytes_count{dev="eth0"} 1',
      b:format("0", 1), b:format("1", 2), b:format("3", 4), b:format("7", 4), b:format("15", 4),
      b:format("31", 4), b:format("63", 4), b:format("127", 7), b:format("255", 8),
      b:format("+Inf", 8),
      'netdevq_hist_len_bytes_sum{dev="lo"} 461',
      'netdevq_hist_len_bytes_count{dev="lo"} 8',
    }) do expect[#expect + 1] = row end
    local text = body(e)
    assert.same(expect, samples(text))
    assert.matches("# TYPE netdevq_hist_len_bytes histogram\n", text, 1, true)
  end)

  it("renders every bucket of many keys once the loops are JIT-compiled", function()
    local h = netdevq.hist{ name = "@h", keys = { "dev" } }
    for i = 1, 500 do
      for _, v in ipairs({ 60, 120, 180 }) do h:add("d" .. i, v) end
    end
    local e = exporter{ aggregations = { h } }
    for _ = 1, 3 do
      local text = body(e)
      for i = 1, 500 do
        for _, b in ipairs({ { "31", 0 }, { "63", 1 }, { "127", 2 }, { "255", 3 }, { "+Inf", 3 } }) do
          local line = ('netdevq_h_bucket{dev="d%d",le="%s"} %d\n'):format(i, b[1], b[2])
          assert(text:find(line, 1, true), line)
        end
      end
      assert.equal(500 * 10, select(2, text:gsub("_bucket{", "")))
    end
  end)

  it("renders lhist buckets from below-min to the last used one, then +Inf", function()
    local l = netdevq.lhist(100, 1600, 500, { name = "@lhist_len", value = "len" })
    for _, v in ipairs({ 0, 99, 100, 599, 600, 1599, 1600, 9000 }) do l:add(nil, v) end
    local e = exporter{ aggregations = { l } }
    assert.same({
      'netdevq_lhist_len_bytes_bucket{le="99"} 2',
      'netdevq_lhist_len_bytes_bucket{le="599"} 4',
      'netdevq_lhist_len_bytes_bucket{le="1099"} 5',
      'netdevq_lhist_len_bytes_bucket{le="1599"} 6',
      'netdevq_lhist_len_bytes_bucket{le="+Inf"} 8',
      'netdevq_lhist_len_bytes_sum 13597',
      'netdevq_lhist_len_bytes_count 8',
    }, samples(body(e)))
  end)

  it("renders stats as a summary and avg, min, max as gauges", function()
    local s = netdevq.stats{ name = "@stats_len", value = "len" }
    local a = netdevq.avg{ name = "@avg_len", keys = { "dev" }, value = "len" }
    local mn = netdevq.min{ name = "@min_ttl", keys = { "dev" }, value = "ttl" }
    local mx = netdevq.max{ name = "@max_ttl", keys = { "dev" }, value = "ttl" }
    for _, v in ipairs({ 64, 65, 1 }) do
      s:add(nil, v); a:add("lo", v); mn:add("lo", v); mx:add("lo", v)
    end
    local e = exporter{ aggregations = { s, a, mn, mx } }
    local text = body(e)
    assert.same({
      "netdevq_stats_len_bytes_sum 130", "netdevq_stats_len_bytes_count 3",
      'netdevq_avg_len_bytes{dev="lo"} 43.333333333333336',
      'netdevq_min_ttl{dev="lo"} 1', 'netdevq_max_ttl{dev="lo"} 65',
    }, samples(text))
    for _, t in ipairs({ "netdevq_stats_len_bytes summary", "netdevq_avg_len_bytes gauge",
                         "netdevq_min_ttl gauge", "netdevq_max_ttl gauge" }) do
      assert.matches("# TYPE " .. t .. "\n", text, 1, true)
    end
  end)

  it("keeps cumulative totals across fold (the interval reset)", function()
    local c = netdevq.count{ name = "@count", keys = { "dev" } }
    local h = netdevq.hist{ name = "@h", value = "len" }
    local mn = netdevq.min{ name = "@min", value = "len" }
    local e = exporter{ aggregations = { c, h, mn } }
    c:add("lo"); c:add("lo"); h:add(nil, 100); mn:add(nil, 7)
    e:fold(c); e:fold(h); e:fold(mn)
    assert.equal(0, c:len()) -- fold clears what it folded
    assert.equal(0, h:len())
    c:add("lo"); c:add("eth0"); h:add(nil, 1); h:add(nil, 100); mn:add(nil, 9)
    assert.same({
      'netdevq_count_total{dev="eth0"} 1', 'netdevq_count_total{dev="lo"} 3',
      'netdevq_h_bytes_bucket{le="0"} 0', 'netdevq_h_bytes_bucket{le="1"} 1', 'netdevq_h_bytes_bucket{le="3"} 1',
      'netdevq_h_bytes_bucket{le="7"} 1', 'netdevq_h_bytes_bucket{le="15"} 1', 'netdevq_h_bytes_bucket{le="31"} 1',
      'netdevq_h_bytes_bucket{le="63"} 1', 'netdevq_h_bytes_bucket{le="127"} 3',
      'netdevq_h_bytes_bucket{le="+Inf"} 3', "netdevq_h_bytes_sum 201", "netdevq_h_bytes_count 3",
      "netdevq_min_bytes 7",
    }, samples(body(e)))
    -- the aggregation itself only holds what came after the fold
    assert.equal("@count[eth0]: 1\n@count[lo]: 1\n", c:text())
  end)

  it("exports the tracer's counters, and the program's run time when bpf_stats is on", function()
    local dir = clirun.tmpdir()
    local saved = prometheus.BPF_STATS_ENABLED
    finally(function()
      prometheus.BPF_STATS_ENABLED = saved
      clirun.rmtree(dir)
    end)
    local st = { events = 10, kfiltered = 2, emitted = 8, lost = 1, pcap_dropped = 0,
                 lua_filtered = 3, matched = 4, aggregated = 0, agg_overflow = 0 }
    local fake = { t = { prog_stats = function() return { run_time_ns = 1500000000, run_cnt = 7 } end } }
    function fake.stats() return st end
    local e = exporter{ tracer = fake }
    assert.equal(e, fake.exporter) -- what t:run() refreshes
    prometheus.BPF_STATS_ENABLED = dir .. "/enabled"
    local f = assert(io.open(dir .. "/enabled", "w"))
    f:write("0\n")
    f:close()
    assert.same({ "netdevq_events_total 10", "netdevq_kernel_filtered_total 2",
      "netdevq_emitted_total 8", "netdevq_lost_total 1", "netdevq_pcap_dropped_total 0",
      "netdevq_lua_filtered_total 3", "netdevq_matched_total 4", "netdevq_aggregated_total 0",
      "netdevq_aggregation_overflow_total 0" }, samples(body(e)))
    f = assert(io.open(dir .. "/enabled", "w"))
    f:write("1\n")
    f:close()
    local s = samples(body(e))
    assert.same({ "netdevq_bpf_run_seconds_total 1.5", "netdevq_bpf_run_count_total 7" },
      { s[10], s[11] })
    -- a closed tracer: the last figures stay
    fake.t = false
    st = nil
    assert.equal(11, #samples(body(e)))
  end)

  it("labels keys past the key names key<N>, renames a histogram's le key", function()
    local c = netdevq.count{ name = "@c", keys = { "dev" } }
    c:add({ "lo", 7 })
    local h = netdevq.hist{ name = "@h", keys = { "le" } }
    h:add("x", 0)
    local e = exporter{ aggregations = { c, h } }
    local s = samples(body(e))
    assert.equal('netdevq_c_total{dev="lo",key2="7"} 1', s[1])
    assert.equal('netdevq_h_bucket{key_le="x",le="0"} 1', s[2])
  end)

  it("rejects what it cannot export, with one-line errors", function()
    local c = netdevq.count{ name = "@count" }
    local e = exporter{ aggregations = { c } }
    assert.has_error(function() e:add(netdevq.count{}) end,
      "netdevq.prometheus: metric name netdevq_count_total is already used; give the "
      .. "aggregation another name")
    assert.has_error(function() e:add(netdevq.count{ name = "@events" }) end,
      "netdevq.prometheus: metric name netdevq_events_total is already used; give the "
      .. "aggregation another name")
    assert.has_error(function() e:add({}) end,
      "netdevq.prometheus: add() expects an aggregation (netdevq.count{...}, ...)")
    assert.has_error(function() prometheus.new{ listen = "nowhere" } end,
      "netdevq.prometheus: 'nowhere' is not [ADDR:]PORT (e.g. 9464, 127.0.0.1:9464, [::1]:9464)")
    assert.has_error(function() prometheus.new{ listen = "0", period = 0 } end,
      "netdevq.prometheus: period must be a positive number of seconds")
  end)
end)

describe("netdevq.prometheus over HTTP", function()
  local function curl(url, extra)
    return sh("curl -s -S --max-time 10 " .. (extra or "") .. " " .. clirun.quote(url))
  end

  it("serves the published text on /metrics, 404 elsewhere, 405 for POST", function()
    local c = netdevq.count{ name = "@count", keys = { "dev" } }
    c:add("lo")
    local e = exporter{ aggregations = { c } }
    assert.matches("^http://127%.0%.0%.1:%d+/metrics$", e:url())
    assert.is_true(e.port > 0)
    local first = curl(e:url())
    assert.equal(e:render(), first)
    -- what a scrape gets changes only when Lua publishes
    c:add("lo")
    assert.equal(first, curl(e:url()))
    e:refresh()
    assert.matches('netdevq_count_total{dev="lo"} 2\n', curl(e:url()), 1, true)
    assert.equal(3, e:scrapes())
    local head = curl(e:url(), "-D - -o /dev/null")
    assert.matches("Content%-Type: text/plain; version=0%.0%.4; charset=utf%-8\r\n", head)
    local base = e:url():gsub("/metrics$", "")
    assert.equal("404", curl(base .. "/", "-o /dev/null -w '%{http_code}'"))
    assert.equal("405", curl(e:url(), "-X POST -o /dev/null -w '%{http_code}'"))
    assert.equal(4, e:scrapes()) -- the header GET counts; the 404 and the 405 do not
  end)

  it("listens on IPv6 loopback too, and reports an address in use", function()
    local e = exporter{ listen = "[::1]:0" }
    assert.matches("^http://%[::1%]:%d+/metrics$", e:url())
    assert.matches("netdevq_build_info{version=\"" .. netdevq._VERSION .. "\"} 1\n", curl(e:url()),
      1, true)
    local other, err = prometheus.new{ listen = "[::1]:" .. e.port }
    assert.is_nil(other)
    assert.equal("netdevq: prometheus: cannot listen on ::1 port " .. e.port
      .. ": Address already in use", err)
    local bad, berr = prometheus.new{ listen = "198.51.100.7:0" }
    assert.is_nil(bad)
    assert.equal("netdevq: prometheus: cannot listen on 198.51.100.7 port 0: Cannot assign "
      .. "requested address", berr)
  end)

  it("produces text promtool accepts for every kind", function()
    local aggs = {
      netdevq.count{ name = "@count", keys = { "dev", "proto" } },
      netdevq.sum{ name = "@sum_len", keys = { "dev" }, value = "len" },
      netdevq.avg{ name = "@avg_len", value = "len" },
      netdevq.min{ name = "@min_len", value = "len" },
      netdevq.max{ name = "@max_len", value = "len" },
      netdevq.stats{ name = "@stats_len", value = "len" },
      netdevq.hist{ name = "@hist_len", keys = { "dev" }, value = "len" },
      netdevq.lhist(0, 1500, 100, { name = "@lhist_len", value = "len" }),
    }
    for _, a in ipairs(aggs) do
      for _, v in ipairs({ 60, 1500, 9000 }) do
        a:add(a.keys[2] and { 'a"\\\n', "udp" } or (a.keys[1] and "lo" or nil), v)
      end
    end
    local e = exporter{ aggregations = aggs }
    local dir = clirun.tmpdir()
    finally(function() clirun.rmtree(dir) end)
    local r = clirun.run({ "sh", "-c", "curl -s " .. clirun.quote(e:url()) .. " > " .. dir
      .. "/m && promtool check metrics < " .. dir .. "/m" })
    assert.equal("", r.out .. r.err)
    assert.equal(0, r.code)
  end)
end)

describe("--prometheus on the command line", function()
  it("refuses a malformed address as a usage error (exit 2), before tracing", function()
    local r = clirun.cli({ "--prometheus", "nowhere", "-d", "1" })
    assert.equal(2, r.code)
    assert.equal("netdevq: --prometheus: 'nowhere' is not [ADDR:]PORT (e.g. 9464, 127.0.0.1:9464, "
      .. "[::1]:9464)\n", r.err)
    r = clirun.cli({ "--prometheus", "99999" })
    assert.equal(2, r.code)
    assert.equal("netdevq: --prometheus: port 99999 is out of range (0-65535)\n", r.err)
  end)

  it("fails with one line (exit 1) when the address is taken", function()
    local e = exporter()
    local r = clirun.cli({ "--prometheus", "127.0.0.1:" .. e.port, "-d", "1" })
    assert.equal(1, r.code)
    assert.equal("netdevq: prometheus: cannot listen on 127.0.0.1 port " .. e.port
      .. ": Address already in use\n", r.err)
    assert.equal("", r.out)
  end)

  it("is in --help", function()
    local r = clirun.cli({ "--help" })
    assert.equal(0, r.code)
    assert.matches("\n   --prometheus [ADDR:]PORT    serve aggregations and counters on", r.out, 1, true)
  end)
end)
