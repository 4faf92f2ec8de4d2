-- Per transmit queue of one device, every interval: average size, packet-size buckets,
-- bytes/s and packets/s (the TX half of bcc's netqtop, from net_dev_queue).
--
--   bpftrace -e 'tracepoint:net:net_dev_queue /str(args->name) == "eth0"/ {
--     $q = ((struct sk_buff *)args->skbaddr)->queue_mapping;
--     @pkts[$q] = count(); @bytes[$q] = sum(args->len); }
--     interval:s:1 { print(@pkts); print(@bytes); clear(@pkts); clear(@bytes); }'
--
-- Usage: luajit scripts/netdevq.lua examples/netqtop.lua DEV [INTERVAL] [COUNT] [NETNS]
--   DEV       device name
--   INTERVAL  seconds between tables (default 1)
--   COUNT     stop after COUNT tables (default: at Ctrl-C)
--   NETNS     only DEV in this network namespace (inode number; default: any)
--
-- Buckets as in bcc: [0, 64), [64, 512), [512, 2K), [2K, 16K), [16K, 64K) bytes (larger GSO
-- packets count in the totals only). Rates are per INTERVAL seconds. Rows go from queue 0 to
-- the highest queue seen. Several values per event and buckets of unequal width: Lua
-- aggregates, the kernel only filters on dev (and netns).
local netdevq = require("netdevq")

local dev, interval = arg[1], tonumber(arg[2]) or 1
local count, netns = tonumber(arg[3]), tonumber(arg[4])
if not dev or interval <= 0 then
  io.stderr:write("usage: netqtop.lua DEV [INTERVAL] [COUNT] [NETNS]\n")
  return 2
end

local BOUNDS = { 64, 512, 2048, 16384, 65536 }
local HEADERS = { "QueueID", "avg_size", "[0, 64)", "[64, 512)", "[512, 2K)", "[2K, 16K)",
  "[16K, 64K)", "BPS", "PPS" }

local queues, top = {}, -1 -- queue id -> { pkts, bytes, bucket counts 1..5 }
local function zero() return { pkts = 0, bytes = 0, 0, 0, 0, 0, 0 } end

local filter = string.format("dev == %q", dev)
if netns then filter = filter .. " and netns == " .. netns end
local t = assert(netdevq.open{ filter = filter, fields = { "queue", "len" } })
t:on_event(function(ev)
  local id, len = ev.queue, ev.len
  local q = queues[id]
  if not q then
    q = zero()
    queues[id] = q
    if id > top then top = id end
  end
  q.pkts = q.pkts + 1
  q.bytes = q.bytes + len
  for i = 1, #BOUNDS do
    if len < BOUNDS[i] then q[i] = q[i] + 1; break end
  end
end)

-- bcc's to_str: K and M for large numbers, two decimals for fractions
local function human(n)
  if n >= 1048576 then return string.format("%.2fM", n / 1048576) end
  if n >= 1024 then return string.format("%.2fK", n / 1024) end
  if n == math.floor(n) then return string.format("%d", n) end
  return string.format("%.2f", n)
end

local function row(label, q)
  local avg = q.pkts > 0 and math.floor(q.bytes / q.pkts) or 0
  io.write(string.format("%8s %10s %10s %10s %10s %10s %10s %10s %10s\n", label, human(avg),
    human(q[1]), human(q[2]), human(q[3]), human(q[4]), human(q[5]),
    human(q.bytes / interval), human(q.pkts / interval)))
end

local tables = 0
local function print_table()
  io.write(os.date("%a %b %d %H:%M:%S %Y"), "\nTX ", dev, "\n")
  io.write(string.format("%8s %10s %10s %10s %10s %10s %10s %10s %10s\n", unpack(HEADERS)))
  local total = zero()
  for id = 0, top do
    local q = queues[id] or zero()
    row(tostring(id), q)
    total.pkts, total.bytes = total.pkts + q.pkts, total.bytes + q.bytes
    for i = 1, #BOUNDS do total[i] = total[i] + q[i] end
    queues[id] = zero()
  end
  row("Total", total)
  io.write("\n")
  io.stdout:flush()
  tables = tables + 1
end

local st = assert(t:run{
  interval = interval,
  on_tick = print_table,
  stop = function() return count ~= nil and tables >= count end,
})
t:close()
if st.lost > 0 then io.stderr:write("netdevq: ", st.lost, " events lost\n") end
