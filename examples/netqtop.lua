-- Per device and transmit queue, every interval: packets/s, bytes/s, how long packets waited in
-- the queue (sojourn p50, p99, max) and what was dropped before the driver, by drop reason. bcc's
-- netqtop shows the rates; the wait and the drops come from following each packet from
-- net_dev_queue to the driver (sojourn_ns, drop_reason: see the README).
--
--   bpftrace needs a join of two probes for the wait alone:
--   bpftrace -e 'tracepoint:net:net_dev_queue { @q[args->skbaddr] = nsecs; }
--     tracepoint:net:net_dev_start_xmit /@q[args->skbaddr]/ {
--       @us[str(args->name), args->queue_mapping] = hist((nsecs - @q[args->skbaddr]) / 1000);
--       delete(@q[args->skbaddr]); }'
--
-- Usage: luajit scripts/netdevq.lua examples/netqtop.lua DEV [INTERVAL] [COUNT] [NETNS]
--   DEV       device name, or "all" for every device
--   INTERVAL  seconds between tables (default 1)
--   COUNT     stop after COUNT tables (default: at Ctrl-C)
--   NETNS     only devices in this network namespace (inode number; default: any)
--
-- One row per device and queue that saw packets in the interval: PPS and BPS (bytes/s) count the
-- packets that reached the driver; P50, P99 and MAX are their sojourns in microseconds (nearest
-- rank); DROPS counts the packets freed before the driver, and a line under the table names their
-- reasons (QDISC_DROP: a full qdisc). A packet counts in the interval its fate was known in.
local netdevq = require("netdevq")

local dev, interval = arg[1], tonumber(arg[2]) or 1
local count, netns = tonumber(arg[3]), tonumber(arg[4])
if not dev or interval <= 0 then
  io.stderr:write("usage: netqtop.lua DEV [INTERVAL] [COUNT] [NETNS]\n")
  return 2
end

-- "dev\0queue" -> { dev, queue, pkts, bytes, sojourns = {}, drops = { reason = n }, ndrops }
local rows = {}
local function row_of(ev)
  local key = ev.dev .. "\0" .. ev.queue
  local r = rows[key]
  if not r then
    r = { dev = ev.dev, queue = ev.queue, pkts = 0, bytes = 0, sojourns = {}, drops = {},
          ndrops = 0 }
    rows[key] = r
  end
  return r
end

local conds = {}
if dev ~= "all" then conds[#conds + 1] = string.format("dev == %q", dev) end
if netns then conds[#conds + 1] = "netns == " .. netns end
local t = assert(netdevq.open{ filter = table.concat(conds, " and "),
  fields = { "dev", "queue", "len", "sojourn_ns", "drop_reason" } })
t:on_event(function(ev)
  local r = row_of(ev)
  local sojourn = ev.sojourn_ns
  if sojourn then
    r.pkts = r.pkts + 1
    r.bytes = r.bytes + ev.len
    r.sojourns[#r.sojourns + 1] = sojourn
  elseif ev.drop_reason then -- (neither: a GSO packet segmented in software, not followed)
    local why = ev.drop_reason
    r.drops[why] = (r.drops[why] or 0) + 1
    r.ndrops = r.ndrops + 1
  end
end)

-- K and M for large numbers, two decimals for fractions (bcc's to_str)
local function human(n)
  if n >= 1048576 then return string.format("%.2fM", n / 1048576) end
  if n >= 1024 then return string.format("%.2fK", n / 1024) end
  if n == math.floor(n) then return string.format("%d", n) end
  return string.format("%.2f", n)
end

-- nearest rank of sorted list, in microseconds ("-" without values)
local function pct(sorted, p)
  if #sorted == 0 then return "-" end
  return string.format("%.1f", sorted[math.max(1, math.ceil(p / 100 * #sorted))] / 1000)
end

local FMT = "%-16s %5s %10s %10s %10s %10s %10s %7s\n"
local tables = 0
local function print_table()
  io.write(os.date("%a %b %d %H:%M:%S %Y"), "\n")
  io.write(string.format(FMT, "DEV", "QUEUE", "PPS", "BPS", "P50_US", "P99_US", "MAX_US", "DROPS"))
  local list = {}
  for _, r in pairs(rows) do list[#list + 1] = r end
  table.sort(list, function(a, b)
    if a.dev ~= b.dev then return a.dev < b.dev end
    return a.queue < b.queue
  end)
  local notes = {}
  for _, r in ipairs(list) do
    table.sort(r.sojourns)
    io.write(string.format(FMT, r.dev, r.queue, human(r.pkts / interval), human(r.bytes / interval),
      pct(r.sojourns, 50), pct(r.sojourns, 99), pct(r.sojourns, 100), r.ndrops))
    local why = {}
    for reason, n in pairs(r.drops) do why[#why + 1] = reason .. " " .. n end
    if #why > 0 then
      table.sort(why)
      notes[#notes + 1] = string.format("drops %s queue %d: %s\n", r.dev, r.queue,
        table.concat(why, ", "))
    end
  end
  io.write(table.concat(notes), "\n")
  io.stdout:flush()
  rows = {}
  tables = tables + 1
end

local st = assert(t:run{
  interval = interval,
  on_tick = print_table,
  stop = function() return count ~= nil and tables >= count end,
})
t:close()
if st.lost > 0 then io.stderr:write("netdevq: ", st.lost, " events lost\n") end
