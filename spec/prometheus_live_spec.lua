-- --prometheus on live traffic #root: a real Prometheus server (Debian's prometheus package, its
-- own binary started here on a free loopback port with a temporary config and TSDB, scrape
-- interval 1 s) scrapes two netdevq commands (in-kernel count and in-kernel histogram, both
-- with -i 1, so their printed maps are reset every second) while a namespace sends known UDP
-- packets; Prometheus's HTTP API must then answer the exact packet count for the known key, the
-- histogram's _count, and a histogram_quantile inside the right bucket. Then 1,000 scrapes during
-- traffic through the Lua path: every scrape succeeds, no counter ever goes down, and the final
-- figures equal what was sent with nothing lost.
local netns = require("support.netns")
local clirun = require("support.clirun")
local live = require("support.live")
local cjson = require("cjson")

local sh, sleep = clirun.read_cmd, clirun.sleep

-- a free loopback TCP port: bound by netdevq.http, then released
local function free_port()
  local srv = assert(require("netdevq.http").serve{ host = "127.0.0.1", port = 0 })
  local port = srv:port()
  srv:close()
  return port
end

local write_file = clirun.write_file

-- starts netdevq with args and --prometheus on a free port; returns the handle and its URL
local function start_netdevq(args)
  local argv = { "--prometheus", "127.0.0.1:0", "-q" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local bg = clirun.spawn_cli(argv)
  assert(bg:wait_err("tracing net_dev_queue", 30), bg:err_text())
  local url = bg:err_text():match("serving metrics on (http://%S+)")
  assert(url, bg:err_text())
  return bg, url
end

local function metric_value(text, series)
  local v = text:match("\n" .. series:gsub("%p", "%%%0") .. " (%S+)\n")
  return tonumber(v)
end

local function wait_for(what, fn, timeout_s)
  local deadline = os.time() + (timeout_s or 60)
  local last
  while os.time() <= deadline do
    last = fn()
    if last then return last end
    sleep(0.25)
  end
  error("timed out waiting for " .. what)
end

describe("--prometheus scraped by a real Prometheus #root", function()
  local pair, dir
  live.pair_each_test({ name = "ndqprom", tmpdir = true }, function(p, d) pair, dir = p, d end)

  it("answers the exact count, histogram _count and a quantile in the right bucket", function()
    netns.require_root()
    local procs = {}
    finally(function()
      for _, p in ipairs(procs) do
        p:kill("TERM")
        p:wait(10)
      end
    end)
    local scope = ('netns == %d and proto == "udp"'):format(pair.netns_a)
    local counter, curl1 = start_netdevq({ "-f", scope, "--count", "dev,proto", "-i", "1" })
    procs[#procs + 1] = counter
    local hist, curl2 = start_netdevq({ "-f", scope, "--hist", "len", "--by", "dev", "-i", "1" })
    procs[#procs + 1] = hist

    local pport = free_port()
    local targets = {}
    for _, u in ipairs({ curl1, curl2 }) do targets[#targets + 1] = "'" .. u:match("//([^/]+)") .. "'" end
    write_file(dir .. "/prometheus.yml", table.concat({
      "global:", "  scrape_interval: 1s", "  evaluation_interval: 1s",
      "scrape_configs:", "  - job_name: netdevq", "    static_configs:",
      "      - targets: [" .. table.concat(targets, ", ") .. "]", "" }, "\n"))
    local prom = clirun.spawn({ "prometheus", "--config.file=" .. dir .. "/prometheus.yml",
      "--storage.tsdb.path=" .. dir .. "/data", "--web.listen-address=127.0.0.1:" .. pport })
    procs[#procs + 1] = prom
    local api = "http://127.0.0.1:" .. pport .. "/api/v1/query"
    local function query(q)
      local out = sh("curl -s -G --max-time 5 " .. clirun.quote(api) .. " --data-urlencode "
        .. clirun.quote("query=" .. q))
      local ok, res = pcall(cjson.decode, out)
      if not ok or res.status ~= "success" then return nil end
      return res.data.result
    end
    -- both targets up
    wait_for("both targets up", function()
      local r = query('sum(up{job="netdevq"})')
      return r and r[1] and r[1].value[2] == "2"
    end, 90)

    -- 100 UDP datagrams of 200 bytes payload: 242 bytes on the veth (Ethernet + IPv4 + UDP)
    local rx = pair:spawn("b", { netns.ndq_send(), "udprecv", pair.ip4_b, "9000", "100", "10000" })
    live.wait_line(rx, "^ready$")
    local ok = pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, "9000", "40000",
      "200", "100" })
    assert.is_true(ok)
    local rok = rx:wait()
    assert.is_true(rok)

    local series = ('netdevq_count_total{dev="%s",proto="udp"}'):format(pair.veth_a)
    local got = wait_for("the counter in Prometheus", function()
      local r = query(series)
      return r and r[1] and r[1].value[2] == "100" and r
    end)
    assert.equal(1, #got)
    assert.equal("100", got[1].value[2])
    local hcount = ('netdevq_hist_len_bytes_count{dev="%s"}'):format(pair.veth_a)
    wait_for("the histogram count in Prometheus", function()
      local r = query(hcount)
      return r and r[1] and r[1].value[2] == "100"
    end)
    -- 242 is in [128, 256): the bucket le="255", whose lower neighbour is le="127"
    local le255 = query(('netdevq_hist_len_bytes_bucket{dev="%s",le="255"}'):format(pair.veth_a))
    assert.equal("100", le255[1].value[2])
    local le127 = query(('netdevq_hist_len_bytes_bucket{dev="%s",le="127"}'):format(pair.veth_a))
    assert.equal("0", le127[1].value[2])
    local q = query(('histogram_quantile(0.5, netdevq_hist_len_bytes_bucket{dev="%s"})')
      :format(pair.veth_a))
    local median = tonumber(q[1].value[2])
    assert.is_true(median > 127 and median <= 255, tostring(median))
    assert.equal(191, median) -- linear interpolation halfway through (127, 255]
    -- several more scrapes and interval resets later: still exactly 100
    sleep(3)
    assert.equal("100", query(series)[1].value[2])
    assert.equal("100", query(hcount)[1].value[2])
    assert.equal("0", query("sum(netdevq_lost_total)")[1].value[2])
    assert.equal("0", query("sum(netdevq_aggregation_overflow_total)")[1].value[2])
    -- the printed intervals of the counting command add up to the same 100
    counter:kill("INT")
    local r = counter:wait(20)
    local printed = 0
    for n in r.out:gmatch("@count%[" .. pair.veth_a .. ", udp%]: (%d+)") do
      printed = printed + tonumber(n)
    end
    assert.equal(100, printed)
  end)
end)

describe("--prometheus under 1,000 scrapes #root", function()
  local pair, dir
  live.pair_each_test({ name = "ndqscr", tmpdir = true }, function(p, d) pair, dir = p, d end)

  it("changes no count and loses no event while scraped during traffic", function()
    netns.require_root()
    local bg
    finally(function()
      if bg then
        bg:kill("TERM")
        bg:wait(10)
      end
    end)
    -- two aggregations: the Lua path (every event crosses the ring buffer), printed every second
    local scope = ('netns == %d and proto == "udp"'):format(pair.netns_a)
    local url
    bg, url = start_netdevq({ "-f", scope, "--count", "dev,proto", "--hist", "len", "--by", "dev",
      "-i", "1" })
    local rx = pair:spawn("b", { netns.ndq_send(), "udprecv", pair.ip4_b, "9001", "1", "60000" })
    live.wait_line(rx, "^ready$")
    -- 40 bursts of 500 datagrams (20,000), while curl scrapes 1,000 times
    local sender = pair:spawn("a", { "sh", "-c", "for i in $(seq 40); do " .. netns.ndq_send()
      .. " udp4 " .. pair.ip4_a .. " " .. pair.ip4_b .. " 9001 40001 100 500 >/dev/null || exit 1;"
      .. " sleep 0.05; done; echo sent" })
    local series = ('netdevq_count_total{dev="%s",proto="udp"}'):format(pair.veth_a)
    wait_for("traffic to show", function()
      local v = metric_value(sh("curl -s " .. clirun.quote(url)), series)
      return v and v > 0
    end, 30)
    -- at most 400 scrapes a second: the 1,000 span several of the exporter's 1 s refreshes
    -- while the traffic flows, however fast the machine answers them
    local codes = sh("curl -s --rate 400/s --max-time 120 -w '%{http_code}\\n' "
      .. clirun.quote(url .. "?n=[1-1000]")
      .. " -o " .. clirun.quote(dir .. "/scrape_#1"))
    local n200 = select(2, codes:gsub("200\n", ""))
    assert.equal(1000, n200)
    local sent_line
    repeat sent_line = sender:line() until sent_line == nil or sent_line == "sent"
    assert.equal("sent", sent_line)
    assert.is_true((sender:wait()))
    rx:kill()

    -- counters never go down from one scrape to the next, and scraping saw them move
    local prev = { count = 0, events = 0, hist = 0 }
    local first, last
    for i = 1, 1000 do
      local f = assert(io.open(dir .. "/scrape_" .. i))
      local text = f:read("*a")
      f:close()
      local now = {
        count = metric_value(text, series) or 0,
        events = assert(metric_value(text, "netdevq_events_total")),
        hist = metric_value(text, ('netdevq_hist_len_bytes_count{dev="%s"}'):format(pair.veth_a)) or 0,
      }
      for k, v in pairs(now) do
        assert(v >= prev[k], ("scrape %d: %s went from %s to %s"):format(i, k, prev[k], v))
      end
      first = first or now.count
      last = now.count
      prev = now
    end
    assert.is_true(last > first, "the counter moved while scraping")

    -- after the traffic: exactly 20,000, nothing lost, and the tracer's own stats agree
    local final = wait_for("the final count", function()
      local text = sh("curl -s " .. clirun.quote(url))
      return metric_value(text, series) == 20000 and text
    end, 30)
    assert.equal(20000, metric_value(final, ('netdevq_hist_len_bytes_count{dev="%s"}')
      :format(pair.veth_a)))
    assert.equal(20000, metric_value(final, ('netdevq_hist_len_bytes_bucket{dev="%s",le="255"}')
      :format(pair.veth_a)))
    assert.equal(0, metric_value(final, "netdevq_lost_total"))
    assert.equal(20000, metric_value(final, "netdevq_matched_total"))
    -- the program's own run count and time, exported while kernel.bpf_stats_enabled is 1 (the
    -- kernel counts runs only while the sysctl is on, which other tools may toggle: > 0, not = )
    local f = io.open("/proc/sys/kernel/bpf_stats_enabled")
    local enabled = f and f:read("*l") == "1"
    if f then f:close() end
    if enabled then
      assert.is_true(metric_value(final, "netdevq_bpf_run_count_total") > 0)
      assert.is_true(metric_value(final, "netdevq_bpf_run_seconds_total") > 0)
    else
      assert.is_nil(final:find("netdevq_bpf_run", 1, true))
    end
    bg:kill("INT")
    local r = bg:wait(30)
    bg = nil
    assert.equal(0, r.code)
    assert.matches("netdevq: %d+ events, 20000 matched, 0 lost\n$", r.err)
    local printed = 0
    for n in r.out:gmatch("@count%[" .. pair.veth_a .. ", udp%]: (%d+)") do
      printed = printed + tonumber(n)
    end
    assert.equal(20000, printed)
  end)
end)

describe("--prometheus gives everything back #root", function()
  it("closes the server and the tracer: no fd or BPF object left when main() returns", function()
    netns.require_root()
    for _, args in ipairs({
      { "--prometheus", "127.0.0.1:0", "--count", "dev", "-d", "1" },             -- kernel path
      { "--prometheus", "127.0.0.1:0", "--count", "dev", "--hist", "len", "-i", "1", "-d", "2", "-q" },
      { "--prometheus", "127.0.0.1:0", "-f", "len >", "-d", "1" },                -- filter error
    }) do
      local r = clirun.cli(args, { fdcheck = true, timeout = 30 })
      local what = table.concat(args, " ")
      assert.same({}, r.leaks, what)
      assert.equal(0, r.held, what)
      assert.matches("^netdevq: serving metrics on http://127%.0%.0%.1:%d+/metrics\n", r.err, what)
    end
  end)
end)
