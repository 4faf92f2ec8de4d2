-- netdevq.cli: the command line (scripts/netdevq.lua and the installed `netdevq` command).
-- Argument parsing and wiring only: tracing, filtering, aggregation and output live in the
-- other netdevq modules, so Lua scripts get the same powers through require("netdevq").
local argparse = require("argparse")
local netdevq = require("netdevq")
local fields = require("netdevq.fields")
local output = require("netdevq.output")
local words = require("netdevq.words")
local bit = require("bit")
local ffi = require("ffi")

local core = netdevq.core
local format = string.format
local concat = table.concat
local io_stderr = io.stderr
local io_stdout = io.stdout

local _M = { _VERSION = netdevq._VERSION }

local EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
local PCAP_SNAPLEN = 128 -- -w without -s: enough for Ethernet + IPv6 + TCP with options
local RINGBUF_MIN, RINGBUF_MAX = 4096, 2 ^ 30 -- what netdevq.core accepts
local STATUS_PERIOD = 5 -- seconds between status lines on a stderr that is not a terminal
local CHILD_GRACE_MS = 2000 -- -c: from SIGTERM to SIGKILL when the run ends before the command

ffi.cdef [[ int ndq_cli_isatty(int fd) __asm__("isatty"); ]]
local function isatty(fd)
    return ffi.C.ndq_cli_isatty(fd) == 1
end

local EXAMPLES = [[
Examples:
  netdevq                                   every packet queued for transmit
  netdevq -I eth0 tcp port 443              tcpdump expression, one device
  netdevq -f 'proto == "udp" and len > 1000' -o comm,pid,dev,len
  netdevq -o comm,pid,dev,mac_len,hdr_len   what the Aya raw tracepoint example logs
  netdevq --count comm,dev -d 10            packets per process and device (like @[comm] = count())
  netdevq --hist len --by dev -i 1          size histogram per device, every second
  netdevq -F json -n 100                    100 events as JSON lines
  netdevq -w out.pcapng -s 128 udp          packets (headers) to a pcapng file for Wireshark
  netdevq -c "curl -s http://198.18.0.2/"   only what curl (and its children) transmit
  netdevq myscript.lua                      run a Lua script that uses require("netdevq")
]]

local function build_parser()
    local p = argparse("netdevq", "Trace net_dev_queue: every packet a network device is asked "
        .. "to transmit.")
        :usage("Usage: netdevq [options] [pcap-filter expression]\n"
            .. "       netdevq SCRIPT.lua [script args]")
        :epilog(EXAMPLES)
        :add_help("-h --help")
        :help_max_width(100)
    p:argument("expression",
        "tcpdump/pcap-filter expression, e.g. tcp port 443 and host 198.18.0.2"):args("*")
    p:option("-f --filter", "field filter, e.g. 'dev == \"eth0\" and dport == 443 and len > 1000'")
    p:option("-I --dev", "only this device (repeatable)"):count("*")
    p:option("-p --pid", "only this process id"):convert(tonumber)
    p:option("--comm", "only tasks with this comm")
    p:option("-c --cmd", "run CMD, trace only it and its children, stop when it exits")
    p:option("-o --fields", "comma list of fields to print (see --list-fields)")
    p:flag("-l --list-fields", "list the fields and exit")
    p:option("-F --format", "output format: text or json", "text"):choices({ "text", "json" })
    p:option("-w --write", "write packets to a pcapng FILE (- = stdout)")
    p:option("-s --snaplen", "header bytes kept per packet (0-256)"):convert(tonumber)
    p:option("--count", "count events per key (comma list of fields)"):args("?")
    p:option("--sum", "sum FIELD per --by key")
    p:option("--avg", "average FIELD per --by key")
    p:option("--min", "minimum FIELD per --by key")
    p:option("--max", "maximum FIELD per --by key")
    p:option("--stats", "count, average and total of FIELD per --by key")
    p:option("--hist", "power-of-2 histogram of FIELD per --by key")
    p:option("--lhist", "linear histogram FIELD:MIN:MAX:STEP per --by key")
    p:option("--by", "key fields for the aggregations (comma list)")
    p:option("-i --interval", "print and reset aggregations every SEC"):convert(tonumber)
    p:option("-d --duration", "stop after SEC seconds"):convert(tonumber)
    p:option("-n --max-events", "stop after N matching events"):convert(tonumber)
    p:option("--mode", "raw (raw_tp, bpf_probe_read_kernel) or btf (tp_btf)", "raw")
        :choices({ "raw", "btf" })
    p:option("--ringbuf-size", "ring buffer size in bytes (power of two)"):convert(tonumber)
    p:option("--object", "load this BPF object instead of the embedded one")
    p:flag("-q --quiet", "no per-event output")
    p:flag("-v --verbose", "libbpf and loader diagnostics on stderr")
    p:flag("--version", "print the version and exit")
    return p
end

local function usage_error(msg)
    io_stderr:write("netdevq: ", msg, "\n")
    return EXIT_USAGE
end

local function check_fields(text, what)
    local list, err = fields.parse_list(text)
    if not list then
        return nil, what .. ": " .. err
    end
    return list
end

local function quote(s)
    return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

-- --filter, -I, -p, --comm: one expression, every part and-ed.
local function combined_filter(args)
    local parts = {}
    if args.filter then
        parts[#parts + 1] = "(" .. args.filter .. ")"
    end
    if #args.dev > 0 then
        local ors = {}
        for i, d in ipairs(args.dev) do
            ors[i] = "dev == " .. quote(d)
        end
        parts[#parts + 1] = "(" .. concat(ors, " or ") .. ")"
    end
    if args.pid then
        parts[#parts + 1] = "pid == " .. format("%d", args.pid)
    end
    if args.comm then
        parts[#parts + 1] = "comm == " .. quote(args.comm)
    end
    if #parts == 0 then
        return nil
    end
    -- a user's own --filter alone keeps its columns in error messages
    if #parts == 1 and args.filter then
        return args.filter
    end
    return concat(parts, " and ")
end

local AGG_OPTIONS = { "count", "sum", "avg", "min", "max", "stats", "hist", "lhist" }

-- Aggregation specs from the options, in option order.
local function aggregation_specs(args)
    local by = {}
    if args.by then
        local err
        by, err = check_fields(args.by, "--by")
        if not by then
            return nil, err
        end
    end
    local specs = {}
    for _, kind in ipairs(AGG_OPTIONS) do
        local v = args[kind]
        if v ~= nil then
            local spec = { kind = kind, keys = by }
            if kind == "count" then
                local keys = type(v) == "table" and v[1] or nil
                if keys then
                    local list, err = check_fields(keys, "--count")
                    if not list then
                        return nil, err
                    end
                    spec.keys = list
                end
                spec.name = "@count"
            elseif kind == "lhist" then
                local f, lo, hi, step = v:match("^([%w_]+):(%-?%d+):(%-?%d+):(%d+)$")
                if not f then
                    return nil, "--lhist wants FIELD:MIN:MAX:STEP, e.g. len:0:1500:100 (got '"
                        .. v .. "')"
                end
                spec.value, spec.min = f, tonumber(lo)
                spec.max, spec.step = tonumber(hi), tonumber(step)
                if spec.step <= 0 or spec.max <= spec.min then
                    return nil, "--lhist: MAX must exceed MIN and STEP must be positive"
                end
                spec.name = "@lhist_" .. f
            else
                spec.value = v
                spec.name = "@" .. kind .. "_" .. v
            end
            if spec.value then
                local field = fields.by_name[spec.value]
                if not field then
                    return nil, "--" .. kind .. ": " .. fields.unknown_message(spec.value)
                end
                if field.type ~= "integer" then
                    return nil, "--" .. kind .. ": '" .. spec.value .. "' is a " .. field.type
                        .. " field; aggregate an integer field (len, gso_segs, ...)"
                end
            end
            specs[#specs + 1] = spec
        end
    end
    return specs
end

local function new_aggregator(spec)
    local aggregate = require("netdevq.aggregate")
    local opts = { name = spec.name, keys = spec.keys }
    if spec.kind == "lhist" then
        return aggregate.lhist(spec.min, spec.max, spec.step, opts)
    end
    return aggregate[spec.kind](opts)
end

local function run_script(path, rest)
    local chunk, err = loadfile(path)
    if not chunk then
        io_stderr:write("netdevq: cannot load script: ", err, "\n")
        return EXIT_FAIL
    end
    _G.arg = { [0] = path }
    for i, a in ipairs(rest) do
        _G.arg[i] = a
    end
    netdevq.catch_signals()
    local ok, res = xpcall(function() return chunk(unpack(rest)) end, debug.traceback)
    if not ok then
        -- the script's tracers are unreachable now: collecting them detaches them first
        collectgarbage()
        collectgarbage()
        io_stderr:write("netdevq: script failed: ", tostring(res), "\n")
        return EXIT_FAIL
    end
    return type(res) == "number" and res or EXIT_OK
end

local function positive(_, name, v, allow_zero)
    if v == nil then
        return true
    end
    if v ~= v or (allow_zero and v < 0) or (not allow_zero and v <= 0) then
        return nil, format("--%s must be a %s number, not %s", name,
            allow_zero and "non-negative" or "positive", tostring(v))
    end
    return true
end

-- Shows that a long run is alive: a status on stderr, unless events stream to a terminal (they
-- show it themselves). On a terminal stderr one line is rewritten in place every tick (second,
-- or --interval) and erased before anything else is printed; otherwise a plain line every
-- --interval, or every STATUS_PERIOD seconds:
--   netdevq: 12345 events/s, 100 matched, 0 lost
-- Returns nil when there is no status to show, else an object with :tick(tracer) and :clear().
local Status = {}
Status.__index = Status

local function status_reporter(args, print_events)
    if print_events and isatty(1) then
        return nil
    end
    local rewrite = isatty(2)
    return setmetatable({
        rewrite = rewrite,
        every = (rewrite or args.interval) and 1 or STATUS_PERIOD, -- in ticks
        ticks = 0,
        shown = false,
        last_events = 0,
        last_ns = core.monotonic_ns(),
    }, Status)
end

function Status:tick(t)
    self.ticks = self.ticks + 1
    if self.ticks % self.every ~= 0 then
        return
    end
    local st = t:stats()
    if not st then
        return
    end
    local now = core.monotonic_ns()
    local rate = (st.events - self.last_events) * 1e9 / math.max(now - self.last_ns, 1)
    self.last_events, self.last_ns = st.events, now
    local line = format("netdevq: %d events/s, %d matched, %d lost", math.floor(rate + 0.5),
        st.matched, st.lost)
    if self.rewrite then
        io_stderr:write("\r\27[K", line)
        self.shown = true
    else
        io_stderr:write(line, "\n")
    end
    io_stderr:flush()
end

function Status:clear()
    if self.shown then
        io_stderr:write("\r\27[K")
        io_stderr:flush()
        self.shown = false
    end
end

-- Runs the CLI with argv (a Lua array); returns the exit status.
function _M.main(argv)
    -- a script as first positional: everything after it is the script's
    if argv[1] and argv[1]:match("%.lua$") then
        return run_script(argv[1], { select(2, unpack(argv)) })
    end
    local parser = build_parser()
    local ok, args = parser:pparse(argv)
    if not ok then
        io_stderr:write(parser:get_usage(), "\n\nnetdevq: ", args, "\n")
        return EXIT_USAGE
    end
    if args.version then
        io_stdout:write("netdevq ", netdevq._VERSION, "\n")
        return EXIT_OK
    end
    if args.list_fields then
        for _, line in ipairs(fields.list()) do
            io_stdout:write(line, "\n")
        end
        return EXIT_OK
    end
    for _, check in ipairs({ { "duration", false }, { "interval", false }, { "max_events", false },
                             { "pid", false }, { "snaplen", true }, { "ringbuf_size", false } }) do
        local okv, err = positive(args, check[1]:gsub("_", "-"), args[check[1]], check[2])
        if not okv then
            return usage_error(err)
        end
    end
    for _, name in ipairs({ "max_events", "pid", "snaplen", "ringbuf_size" }) do
        local v = args[name]
        if v and (v ~= math.floor(v) or v >= 2 ^ 53) then
            return usage_error(format("--%s must be a whole number, not %s", (name:gsub("_", "-")),
                tostring(v)))
        end
    end
    local rb = args.ringbuf_size
    if rb and (rb < RINGBUF_MIN or rb > RINGBUF_MAX or rb % 1 ~= 0
        or bit.band(rb, rb - 1) ~= 0) then
        return usage_error(format("--ringbuf-size must be a power of two from %d to %d, not %s",
            RINGBUF_MIN, RINGBUF_MAX, tostring(rb)))
    end
    if args.write == "" then
        return usage_error("--write needs a file name, or - for standard output")
    end
    if args.write and require("netdevq.pcapng").is_stdout(args.write) then
        args.write = "-" -- stdout carries pcapng only, whatever it is called
    end
    if args.snaplen and args.snaplen > 256 then
        return usage_error("--snaplen must be at most 256 (header bytes)")
    end

    local out_fields
    if args.fields then
        local err
        out_fields, err = check_fields(args.fields, "--fields")
        if not out_fields then
            return usage_error(err)
        end
    end
    local specs, aerr = aggregation_specs(args)
    if not specs then
        return usage_error(aerr)
    end
    local pcap_expr = #args.expression > 0 and concat(args.expression, " ") or nil
    if pcap_expr and args.snaplen == 0 then
        return usage_error("--snaplen 0 leaves the pcap-filter expression no header bytes to "
            .. "match: give at least 64, or leave --snaplen out")
    end
    local filter_expr = combined_filter(args)

    -- per-event lines: by default, unless -q, or aggregations without -o (like bpftrace)
    local print_events = not args.quiet and (#specs == 0 or out_fields ~= nil)
    if args.write == "-" then
        print_events = false
    end

    -- one aggregation whose keys and value are kernel fields, a filter the kernel checks whole,
    -- and nothing else that needs events: the kernel aggregates and no event crosses over
    local kernel_spec
    if #specs == 1 and not print_events and not args.write and not pcap_expr
        and netdevq.kernel_aggregatable(specs[1])
        and netdevq.kernel_filter_complete(filter_expr) then
        kernel_spec = specs[1]
    end

    local cmd_argv
    if args.cmd then
        local err
        cmd_argv, err = words.split(args.cmd)
        if not cmd_argv then
            return usage_error("--cmd: " .. err)
        end
    end

    -- outputs
    local writer
    if print_events then
        writer = output.new(args.format, { fields = out_fields })
    elseif args.format == "json" then
        writer = output.json({ fields = out_fields })
    else
        writer = output.text({ fields = out_fields })
    end
    local pcap_writer
    if args.write then
        local pcapng = require("netdevq.pcapng")
        -- the interface blocks carry the snap length, like tcpdump's file header
        local w, err = pcapng.open(args.write, { snaplen = args.snaplen or PCAP_SNAPLEN,
                                                 interrupted = core.interrupted })
        if not w then
            io_stderr:write("netdevq: ", err, "\n")
            return EXIT_FAIL
        end
        pcap_writer = w
    end

    core.ignore_sigpipe()
    netdevq.catch_signals()

    local child_pid, gate_fd, status_fd
    if cmd_argv then
        child_pid, gate_fd, status_fd = core.spawn(cmd_argv)
        if not child_pid then
            io_stderr:write("netdevq: --cmd: ", gate_fd, "\n")
            return EXIT_FAIL
        end
    end

    -- the fields the kernel must read: what is printed and what Lua aggregations key on
    local read_fields = {}
    if print_events then
        if out_fields then
            read_fields = out_fields
        elseif args.format == "text" then
            read_fields = output.DEFAULT_FIELDS
        else
            read_fields = nil -- JSON without --fields: every field
        end
    end
    if read_fields and not kernel_spec then
        read_fields = { unpack(read_fields) }
        for _, spec in ipairs(specs) do
            for _, k in ipairs(spec.keys) do
                read_fields[#read_fields + 1] = k
            end
            read_fields[#read_fields + 1] = spec.value
        end
    end
    if pcap_writer and read_fields then
        -- link type (from the parsed headers), interface (dev, netns), timestamp, comment
        for _, f in ipairs({ "smac", "dev", "netns", "ts", "comm", "pid" }) do
            read_fields[#read_fields + 1] = f
        end
    end
    local snaplen = args.snaplen
    if pcap_writer and snaplen == nil then
        snaplen = PCAP_SNAPLEN
    end
    local t, err, caret = netdevq.open{
        mode = args.mode,
        filter = filter_expr,
        pcap = pcap_expr,
        fields = read_fields,
        snaplen = snaplen,
        aggregate = kernel_spec,
        follow_pid = child_pid,
        ringbuf_size = args.ringbuf_size,
        object = args.object,
        btf_path = os.getenv("NETDEVQ_BTF_PATH"),
        verbose = args.verbose,
    }
    if not t then
        io_stderr:write(err, "\n")
        if caret then
            io_stderr:write(caret, "\n")
        end
        if child_pid then
            core.release(gate_fd, status_fd, false) -- the gate closes: the child exits unexecuted
            core.waitpid(child_pid, false)
        end
        if core.interrupted() then -- a signal stopped the start (a long pcap compile)
            return EXIT_OK
        end
        -- bad filters are usage errors; everything else is a runtime failure
        return (err:match("^netdevq: filter") or err:match("^netdevq: pcap filter")) and EXIT_USAGE
            or EXIT_FAIL
    end

    local aggs = {}
    for i, spec in ipairs(specs) do
        aggs[i] = new_aggregator(spec)
    end

    -- per-event work: the Lua aggregations, the pcapng writer, the text/JSON line
    local write_error
    -- events handed to a writer and not known to be out (buffered since its last good flush),
    -- and events a failed writer refused: what a stop with a blocked output did not write
    local unflushed, unwritten = 0, 0
    local function written(okw, werr)
        if okw then
            unflushed = unflushed + 1
            return
        end
        if not write_error then
            unwritten = unwritten + unflushed
        end
        write_error = write_error or werr
        unwritten = unwritten + 1
    end
    if not kernel_spec then
        for i, spec in ipairs(specs) do
            t:on_event(require("netdevq.aggregate").feeder(aggs[i], spec.keys, spec.value))
        end
    end
    if pcap_writer then
        local unix_ns = fields.unix_ns
        t:on_event(function(ev)
            local p = ev._p
            written(pcap_writer:write_event(p, unix_ns(p.ts)))
        end)
    end
    if print_events then
        local interrupted = ffi.cast("volatile int *", core.interrupted_flag)
        t:on_event(function(ev)
            local okw, werr = writer:event(ev)
            if okw and interrupted[0] ~= 0 then
                -- stopping: a reader that does not read must not hold the stop up
                okw, werr = writer:flush()
                unflushed = okw and -1 or unflushed
            end
            written(okw, werr)
        end)
    end

    local function print_aggregations(reset)
        if kernel_spec then
            local agg = aggs[1]
            agg:clear()
            t:read_aggregate(agg, reset)
        end
        for _, agg in ipairs(aggs) do
            if args.format == "json" then
                agg:write_json(io_stdout)
            else
                agg:print(io_stdout)
            end
            if reset and not kernel_spec then
                agg:clear()
            end
        end
        io_stdout:flush()
    end

    local reported_lost = 0
    local function report_lost()
        local st = t:stats()
        if st and st.lost > reported_lost then
            writer:lost(st.lost - reported_lost)
            reported_lost = st.lost
        end
    end

    -- the probe is attached; a --cmd that cannot run is one error line, not a start and an error
    if child_pid then
        local okr, rerr = core.release(gate_fd, status_fd)
        if not okr then
            t:close()
            core.waitpid(child_pid, false)
            io_stderr:write("netdevq: --cmd: cannot run '", cmd_argv[1], "': ", rerr, "\n")
            return EXIT_FAIL
        end
    end
    io_stderr:write(format("netdevq: tracing net_dev_queue (%s) ... Ctrl-C to stop\n", args.mode))
    io_stderr:flush()

    local child_done = false
    local status_line = status_reporter(args, print_events)
    local stats, rerr = t:run{
        duration = args.duration,
        max_events = args.max_events,
        interval = args.interval or 1,
        on_tick = function()
            if status_line then
                status_line:clear()
            end
            if args.interval and #aggs > 0 then
                print_aggregations(true)
            end
            report_lost()
            if pcap_writer then
                pcap_writer:flush()
            end
            if status_line then
                status_line:tick(t)
            end
        end,
        stop = function()
            -- a flush per batch: a closed pipe (| head -1) shows at once, not buffers later
            if print_events and not write_error then
                local okf, ferr = writer:flush()
                if not okf then
                    unwritten = unflushed
                    write_error = ferr
                end
                unflushed = 0
            end
            if write_error then
                return true
            end
            if child_pid and not child_done then
                local r = core.waitpid(child_pid, true)
                if r and r ~= 0 then
                    child_done = true
                    return true
                end
            end
            return false
        end,
    }
    -- stop tracing first: the aggregations and the summary printed below then agree exactly
    t:detach()
    if status_line then
        status_line:clear()
    end
    local status = EXIT_OK
    if not stats then
        io_stderr:write(rerr, "\n")
        status = EXIT_FAIL
    end
    if child_pid and not child_done then
        -- the run ended first (-d, -n, a signal): the command ends with it, and is reaped
        core.terminate(child_pid, CHILD_GRACE_MS)
    end
    local stopped_by = core.interrupted()
    if write_error and stopped_by and write_error:match("[Ii]nterrupted") then
        -- a signal stopped a run whose output was blocked (a reader that does not read)
        io_stderr:write(format("netdevq: output blocked (the reader does not read), stopped by "
            .. "signal %d: up to %d events not written (%s)\n", stopped_by, unwritten, write_error))
        write_error = "interrupted"
    end
    if write_error and write_error ~= "interrupted" and not write_error:match("[Bb]roken pipe") then
        io_stderr:write("netdevq: writing output failed: ", write_error, "\n")
        status = EXIT_FAIL
    end
    if not write_error then
        report_lost()
        if #aggs > 0 then
            print_aggregations(false)
        end
        writer:flush()
    end
    if pcap_writer then
        pcap_writer:close()
    end
    local final = t:stats() or stats or { events = 0, matched = 0, lost = 0 }
    if write_error == "interrupted" then
        io_stderr:write(output.summary_text(final), "\n")
    elseif not write_error then -- a closed pipe ends quietly, whichever writer noticed it
        writer:summary(final)
    end
    t:close()
    return status
end

return _M
