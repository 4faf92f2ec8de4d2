-- bench/report.lua RESULTS
--
-- Prints bench/run's table from the key=value lines its helpers wrote (row, check, startup,
-- consume, meta). Plain text, aligned; then each target of the issue with its measured value.
local path = arg[1]
if not path then
    io.stderr:write("usage: luajit bench/report.lua RESULTS\n")
    os.exit(2)
end

local rows, by_key, startup, consume, meta, checks, bases = {}, {}, {}, {}, {}, {}, {}
local labels = {}
for line in io.lines(path) do
    local kind, rest = line:match("^(%S+)%s+(.*)$")
    if kind == "label" then
        local key, text = rest:match("^(%S+)%s+(.*)$")
        labels[key] = text
        kind = nil
    end
    local rec = {}
    if kind == "startup" or kind == "consume" then
        local name
        name, rest = rest:match("^(%S+)%s+(.*)$")
        rec.name = name
    end
    for k, v in (rest or ""):gmatch("(%S+)=(%S+)") do
        rec[k] = tonumber(v) or v
    end
    if kind == "row" then
        rows[#rows + 1] = rec
        by_key[rec.key] = rec
    elseif kind == "startup" then
        startup[rec.name .. "/" .. rec.mark] = rec
    elseif kind == "consume" then
        consume[rec.name] = rec
    elseif kind == "meta" then
        meta = rec
    elseif kind == "base" then
        bases[#bases + 1] = rec.pps
    elseif kind == "check" then
        for k, v in pairs(rec) do
            checks[k] = v
        end
    end
end

local format = string.format

-- 1234567 -> "1,234,567"
local function thousands(n)
    if type(n) ~= "number" then
        return tostring(n or "-")
    end
    local s = format("%.0f", n)
    local sign, digits = s:match("^(-?)(%d+)$")
    digits = digits:reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", "")
    return sign .. digits
end

local function median(t)
    table.sort(t)
    local n = #t
    if n == 0 then
        return 0
    end
    return n % 2 == 1 and t[(n + 1) / 2] or (t[n / 2] + t[n / 2 + 1]) / 2
end

-- ns/event: the lower of the two traced floods' (best_*); both floods together otherwise
local function ns_per_event(r)
    if (r.best_cnt or 0) > 0 then
        return r.best_time_ns / r.best_cnt
    end
    return r.cnt > 0 and r.time_ns / r.cnt or nil
end
local empty = by_key.empty
local empty_ns = empty and ns_per_event(empty) or nil
for _, r in ipairs(rows) do
    r.ns = ns_per_event(r)
    r.x_empty = r.ns and empty_ns and r.ns / empty_ns or nil
    r.ratio = r.base_pps > 0 and r.pps / r.base_pps or nil
    r.per_pkt = r.sent > 0 and r.cnt > 0 and r.cnt / r.sent or nil
    r.label = labels[r.key] or r.key
end
local untraced = median(bases) -- sorts bases

local out = {}
local function emit(s)
    out[#out + 1] = s
end

emit(format("netdevq bench %s, kernel %s, %d CPUs; workload: ndq_send flood, UDP %d-byte payloads "
            .. "to 127.0.0.1:%s, %d s per flood; untraced %s pps (median of %d untraced floods, "
            .. "min %s, max %s)",
            meta.date or "?", meta.kernel or "?", meta.cpus or 0, meta.size or 0,
            tostring(meta.port or "?"), meta.flood_seconds or 0, thousands(untraced), #bases,
            thousands(bases[1]), thousands(bases[#bases])))
emit("")

local cols = {
    { "case", "l", function(r) return r.label end },
    { "ns/event", "r", function(r) return r.ns and format("%.0f", r.ns) or "-" end },
    { "x empty", "r", function(r) return r.x_empty and format("%.2f", r.x_empty) or "-" end },
    { "events", "r", function(r) return thousands(r.cnt) end },
    { "ev/pkt", "r", function(r) return r.per_pkt and format("%.2f", r.per_pkt) or "-" end },
    { "pps traced", "r", function(r) return thousands(r.pps) end },
    { "untraced", "r", function(r) return thousands(r.base_pps) end },
    { "rate", "r", function(r) return r.ratio and format("%.0f%%", 100 * r.ratio) or "-" end },
    { "delivered", "r", function(r) return thousands(r.delivered) end },
    { "lost", "r", function(r) return thousands(r.lost) end },
}
local cells, widths = {}, {}
for c, col in ipairs(cols) do
    widths[c] = #col[1]
end
for i, r in ipairs(rows) do
    cells[i] = {}
    for c, col in ipairs(cols) do
        local v = col[3](r)
        cells[i][c] = v
        widths[c] = math.max(widths[c], #v)
    end
end
local function line_of(values)
    local parts = {}
    for c, col in ipairs(cols) do
        local w = widths[c]
        parts[c] = col[2] == "l" and format("%-" .. w .. "s", values[c])
                   or format("%" .. w .. "s", values[c])
    end
    return (table.concat(parts, "  "):gsub("%s+$", ""))
end
local header = {}
for c, col in ipairs(cols) do
    header[c] = col[1]
end
emit(line_of(header))
for i = 1, #rows do
    emit(line_of(cells[i]))
end
emit("ns/event = delta run_time_ns / delta run_cnt, the lower of the two traced floods; "
     .. "events = delta run_cnt "
     .. "(ev/pkt: per datagram sent, 2 = datagram + ICMP reply); pps traced: the better of the two "
     .. "floods; untraced: the better of the untraced floods just before and after; delivered, "
     .. "lost: over the tracer's life. See bench/README.md.")
emit("")

local nq = startup["netdevq/1"]
local bt = startup["bpftrace/1"]
local bt_begin = startup["bpftrace/2"]
if nq and bt then
    emit(format("start to attached, median of %d: netdevq %.1f ms (ready line); bpftrace %.1f ms "
                .. "(\"Attaching\" line), %.1f ms (BEGIN printf, after attach)",
                nq.runs, nq.median_ms, bt.median_ms, bt_begin and bt_begin.median_ms or 0 / 0))
    emit(format("peak RSS, median (%s): netdevq %s KiB; bpftrace %s KiB",
                nq.rss_source == "time" and "/usr/bin/time %M" or "VmHWM",
                thousands(nq.rss_kb), thousands(bt.rss_kb)))
end
local cc, cf, cw = consume.count, consume.format, consume["format+write"]
if cc then
    emit(format("Lua consumption (Tracer:poll on a synthetic 4096-event batch, fake core): "
                .. "counting callback %s events/s; text line %s events/s; "
                .. "text line to /dev/null %s events/s",
                thousands(cc.eps), cf and thousands(cf.eps) or "-",
                cw and thousands(cw.eps) or "-"))
end
if checks.count_lo_udp or checks.bt_count_lo then
    emit(format("checks: netdevq --count @count[lo, udp] = %s (datagrams sent under it: %s); "
                .. "bpftrace @[lo] = %s",
                thousands(checks.count_lo_udp),
                by_key.count and thousands(by_key.count.sent) or "-",
                thousands(checks.bt_count_lo)))
end
emit("")

-- Targets ------------------------------------------------------------------------------------
local function verdict(ok)
    if ok == nil then
        return "n/a "
    end
    return ok and "PASS" or "FAIL"
end
local targets = {}
local function target(ok, text)
    targets[#targets + 1] = format("  %s  %s", verdict(ok), text)
end
-- issue 12's targets: all fields to a Lua callback (raw, read auto = direct where the kernel
-- has bpf_rdonly_cast), the probe-read path, non-matching filters, in-kernel count, tcpdump
local raw = by_key.raw_all
if raw and raw.x_empty then
    target(raw.x_empty <= 4.5, format("stream raw, all fields: kernel ns/event %.2fx the empty "
                                      .. "program (<= 4.5x)", raw.x_empty))
end
if raw and raw.ratio then
    target(raw.ratio >= 0.85, format("stream raw, all fields: workload keeps %.0f%% of its "
                                     .. "untraced rate (>= 85%%)", 100 * raw.ratio))
end
local probe = by_key.raw_probe
if probe and probe.x_empty then
    target(probe.x_empty <= 7, format("stream raw --read probe, all fields: %.2fx the empty "
                                      .. "program (<= 7x)", probe.x_empty))
end
for _, key in ipairs({ "raw_all", "raw_probe", "raw_4", "raw_len", "raw_owner", "btf_all",
                       "btf_4" }) do
    local r = by_key[key]
    if r and type(r.lost) == "number" then
        target(r.lost == 0, format("%s: %s events lost at the flood rate, default ring buffer (0)",
                                   r.label, thousands(r.lost)))
    end
end
-- issue 12's Lua target is text formatting: the CLI's way, each batch's lines to the file
if cw then
    target(cw.eps >= 3e6, format("Lua text lines, the CLI's way (to /dev/null): %s lines/s "
                                 .. "(>= 3,000,000)", thousands(cw.eps)))
end
if nq and bt then
    local r = nq.median_ms / bt.median_ms
    target(r <= 0.2, format("start to attached: netdevq/bpftrace = %.2f (<= 0.20)", r))
    if type(nq.rss_kb) == "number" and type(bt.rss_kb) == "number" then
        local m = nq.rss_kb / bt.rss_kb
        target(m <= 0.25, format("peak RSS: netdevq/bpftrace = %.2f (<= 0.25)", m))
    end
end
local r4, ro = by_key.raw_4, by_key.raw_owner
if r4 and ro and r4.ns and ro.ns then
    -- owner_read per event; the learning programs (sock tracepoints, softirq entry/exit) run
    -- outside net_dev_queue and are not in this figure
    target(ro.ns <= 1.5 * r4.ns, format("owner fields: %.0f ns/event vs %.0f without them "
                                        .. "(<= 1.5x)", ro.ns, r4.ns))
end
local kc0 = by_key.count
if kc0 and type(kc0.progs) == "string" then
    target(not kc0.progs:find("ndq_owner", 1, true),
           format("no owner field asked: no owner program loaded (count row: %s)", kc0.progs))
end
-- the counting floor: what every netdevq row pays before it looks at the packet
local floor = by_key.counter
if floor and floor.ns and empty_ns then
    emit(format("one counter update per event: %.0f ns/event, %.2fx the empty program (%.0f ns "
                .. "over it): the least a program that accounts for every event costs here",
                floor.ns, floor.x_empty, floor.ns - empty_ns))
end
for _, key in ipairs({ "filter", "filter64" }) do
    local f = by_key[key]
    if f and f.x_empty then
        target(f.x_empty <= 1.6, format("non-matching kernel filter (%s): %.2fx the empty "
                                        .. "program (<= 1.6x)",
                                        key == "filter" and "1 port" or "64-port set",
                                        f.x_empty))
    end
end
-- issue 16's: a pcap expression decided in the kernel, matching nothing
for _, key in ipairs({ "pcap", "pcap_btf" }) do
    local f = by_key[key]
    if f and f.x_empty then
        target(f.x_empty <= 1.8, format("non-matching pcap expression in the kernel (%s): %.2fx "
                                        .. "the empty program (<= 1.8x)",
                                        key == "pcap" and "raw" or "btf", f.x_empty))
    end
end
local ct, td = by_key.cli_text, by_key.tcpdump
if td and td.ratio then
    emit(format("tcpdump -i lo -w /dev/null keeps %.0f%% of the flood (%s packets captured "
                .. "over its life, %s dropped by the kernel)", 100 * td.ratio,
                thousands(td.delivered), thousands(td.lost)))
    if ct and ct.ratio then
        target(ct.ratio >= td.ratio, format("CLI text output keeps %.0f%% of the flood, tcpdump "
                                            .. "%.0f%% (at least as much)", 100 * ct.ratio,
                                            100 * td.ratio))
    end
end
-- what one more sk_buff member path costs the kernel: a filter on 4 paths next to one on 1
for _, m in ipairs({ "raw", "btf" }) do
    local p1, p4 = by_key["paths1_" .. m], by_key["paths4_" .. m]
    if p1 and p4 and p1.ns and p4.ns then
        emit(format("skb paths (%s): %.0f ns/event per added path (4 paths: %.0f, 1 path: %.0f "
                    .. "ns/event)", m, (p4.ns - p1.ns) / 3, p4.ns, p1.ns))
    end
end
-- what the clock costs in the all-fields row: the same fields without ts/time
local nots = by_key.raw_nots
if raw and nots and raw.ns and nots.ns and nots.x_empty then
    emit(format("clock (raw, all fields): %.0f ns/event with ts/time, %.0f (%.2fx the empty "
                .. "program) without: bpf_ktime_get_ns costs %.0f", raw.ns, nots.ns,
                nots.x_empty, raw.ns - nots.ns))
end
local kc, bc = by_key.count, by_key.bt_count
if kc and bc and kc.ns and bc.ns then
    target(kc.ns <= 0.8 * bc.ns, format("in-kernel count: %.0f ns/event vs bpftrace count %.0f "
                                        .. "ns/event = %.2fx (<= 0.8x)", kc.ns, bc.ns,
                                        kc.ns / bc.ns))
end
emit("targets:")
for _, t in ipairs(targets) do
    emit(t)
end

io.stdout:write(table.concat(out, "\n"), "\n")
