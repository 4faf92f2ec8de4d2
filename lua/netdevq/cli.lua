-- netdevq.cli: the command line (scripts/netdevq.lua and the installed `netdevq` command).
-- Parsing options and wiring the library together; the decisions (what the kernel reads, where
-- aggregations run, validation of values) are the library's (netdevq.plan), so Lua scripts get
-- the same powers through require("netdevq").
local argparse = require("argparse")
local catalogue = require("netdevq.catalogue")
local clock = require("netdevq.clock")
local output = require("netdevq.output")
local plan = require("netdevq.plan")
local words = require("netdevq.words")
local ffi = require("ffi")

-- the library and its C module load once the options are parsed: --help and -l need neither
local netdevq, core
local function load_library()
    netdevq = require("netdevq")
    core = netdevq.core
end
local format = string.format
local concat = table.concat
local io_stderr = io.stderr
local io_stdout = io.stdout

local _M = {}

local EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
local CHILD_GRACE_MS = 2000 -- -c: from SIGTERM to SIGKILL when the run ends before the command

local EXAMPLES = [[
Examples:
  netdevq                                   every packet queued for transmit
  netdevq -I eth0 tcp port 443              tcpdump expression, one device
  netdevq -f 'proto == "udp" and len > 1000' -o comm,pid,dev,len
  netdevq -o +mark,queue                    the default line and two more fields
  netdevq -o comm,pid,dev,mac_len,hdr_len   what the Aya raw tracepoint example logs
  netdevq --count comm,dev -d 10            packets per process and device (like @[comm] = count())
  netdevq --hist len --by dev -i 1          size histogram per device, every second
  netdevq -F json -n 100                    100 events as JSON lines
  netdevq -w out.pcapng -s 128 udp          packets (headers) to a pcapng file for Wireshark
  netdevq -c "curl -s http://198.18.0.2/"   only what curl (and its children) transmit
  netdevq myscript.lua                      run a Lua script that uses require("netdevq")
]]

-- options that take a number: "-d -1" is the value -1 for them, not an option "-1"
local NUMBER_OPTIONS = {
    ["-d"] = true, ["--duration"] = true, ["-i"] = true, ["--interval"] = true,
    ["-n"] = true, ["--max-events"] = true, ["-p"] = true, ["--pid"] = true,
    ["-s"] = true, ["--snaplen"] = true, ["--ringbuf-size"] = true, ["--max-keys"] = true,
}

local function build_parser()
    local p = argparse("netdevq", "Trace net_dev_queue: every packet a network device is asked "
        .. "to transmit.")
        :usage("Usage: netdevq [options] [pcap-filter expression]\n"
            .. "       netdevq SCRIPT.lua [script args]")
        :epilog(EXAMPLES)
        :add_help("-h --help")

        :help_max_width(100)
        :help_description_margin(31)
    p:argument("expression",
        "tcpdump/pcap-filter expression, e.g. tcp port 443 and host 198.18.0.2"):args("*")
    p:option("-f --filter", "field filter, e.g. 'dev == \"eth0\" and dport == 443'")
        :argname("EXPR")
    p:option("-I --dev", "only this device (repeatable)"):count("*"):argname("IFNAME")
    p:option("-p --pid", "only this process (the socket owner when known)"):argname("PID")
    p:option("--comm", "only this process name (the socket owner's when known)"):argname("NAME")
    p:option("--netns", "only devices in this network namespace (ip netns name or inode)")
        :argname("NAME")
    p:option("-c --cmd", "run CMD, trace only it and its children, stop when it exits")
        :argname("CMD")
    p:option("-o --fields", "comma list of fields to print; +LIST adds to the default line")
        :argname("LIST")
    p:option("-l --list-fields", "list the fields and exit; -l skb.dev: the members of what an "
        .. "sk_buff path names, with their types"):args("?"):argname("PATH")
    p:option("-F --format", "output format: text or json", "text"):choices({ "text", "json" })
        :argname("FMT")
    p:option("-w --write", "write packets to a pcapng FILE (- = stdout)"):argname("FILE")
    p:option("-s --snaplen", "header bytes kept per packet in -w (0-256)"):argname("N")
    p:option("--count", "count events per key (comma list of fields)"):args("?"):argname("KEYS")
    p:option("--sum", "sum FIELD per --by key"):argname("FIELD")
    p:option("--avg", "average FIELD per --by key"):argname("FIELD")
    p:option("--min", "minimum FIELD per --by key"):argname("FIELD")
    p:option("--max", "maximum FIELD per --by key"):argname("FIELD")
    p:option("--stats", "count, average and total of FIELD per --by key"):argname("FIELD")
    p:option("--hist", "power-of-2 histogram of FIELD per --by key"):argname("FIELD")
    p:option("--lhist", "linear histogram per --by key"):argname("FIELD:MIN:MAX:STEP")
    p:option("--by", "key fields for the aggregations (comma list)"):argname("KEYS")
    p:option("--max-keys", "keys per aggregation (default 65536; more are counted, not kept)")
        :argname("N")
    p:option("-i --interval", "print and reset aggregations every SEC"):argname("SEC")
    p:option("-d --duration", "stop after SEC seconds"):argname("SEC")
    p:option("-n --max-events", "stop after N matching events"):argname("N")
    p:option("--mode", "raw (raw_tp) or btf (tp_btf)", "raw"):choices({ "raw", "btf" })
        :argname("MODE")
    p:option("--ringbuf-size", "ring buffer size in bytes (power of two)"):argname("BYTES")
    p:option("--object", "load this BPF object instead of the embedded one"):argname("FILE")
    p:option("--prometheus", "serve aggregations and counters on http://[ADDR:]PORT/metrics "
        .. "(ADDR default 127.0.0.1)"):argname("[ADDR:]PORT")
    p:flag("-q --quiet", "no per-event output")
    p:flag("-v --verbose", "libbpf and loader diagnostics on stderr")
    p:flag("--version", "print the version and exit")
    -- one line per option ("-f, --filter EXPR") instead of argparse's stacked aliases
    for _, o in ipairs(p._options or {}) do
        local args = o._argname and (type(o._argname) == "table" and concat(o._argname, " ")
            or o._argname)
        if args and #o._aliases > 1 then
            if o._maxargs == 1 and o._minargs == 0 then
                args = "[" .. args .. "]"
            end
            local label = concat(o._aliases, ", ") .. " " .. args
            o._get_label_lines = function() return { label } end
        end
    end
    return p
end

local function usage_error(msg)
    io_stderr:write("netdevq: ", msg, "\n")
    return EXIT_USAGE
end

-- "-d -1" -> "-d-1", "--duration -1" -> "--duration=-1" for the options that take numbers
local function join_negative_numbers(argv)
    local out = {}
    local i = 1
    while i <= #argv do
        local a = argv[i]
        if NUMBER_OPTIONS[a] and argv[i + 1] and argv[i + 1]:match("^%-[%d.]") then
            out[#out + 1] = a .. (a:sub(2, 2) == "-" and "=" or "") .. argv[i + 1]
            i = i + 2
        else
            out[#out + 1] = a
            i = i + 1
        end
    end
    return out
end


---------------------------------------------------------------------------------------------
-- Option values
---------------------------------------------------------------------------------------------

-- numbers: { option name, allow zero, whole numbers only }
local NUMBERS = {
    { "duration", false, false }, { "interval", false, false }, { "max_events", false, true },
    { "pid", false, true }, { "snaplen", true, true }, { "ringbuf_size", false, true },
    { "max_keys", false, true },
}

local function spelled(name)
    return "--" .. name:gsub("_", "-")
end

local function check_numbers(args)
    for _, n in ipairs(NUMBERS) do
        local name, allow_zero, whole = n[1], n[2], n[3]
        local text = args[name]
        if text ~= nil then
            local v = tonumber(text)
            if v == nil or v ~= v or v == math.huge or (allow_zero and v < 0)
               or (not allow_zero and v <= 0) then
                return nil, format("%s must be a %s number, not %s", spelled(name),
                    allow_zero and "non-negative" or "positive", text)
            elseif whole and v % 1 ~= 0 then
                return nil, format("%s must be a whole number, not %s", spelled(name), text)
            end
            args[name] = v
        end
    end
    for _, name in ipairs({ "snaplen", "ringbuf_size", "max_keys" }) do
        local _, err = plan.check(name, args[name], spelled(name))
        if err then
            return nil, err
        end
    end
    if args.comm then
        local _, err = plan.check("comm", args.comm, "--comm")
        if err then
            return nil, err
        end
    end
    if args.pid then
        local _, err = plan.check("follow_pid", args.pid, "--pid")
        if err then
            return nil, err
        end
    end
    return true
end

local function field_list(text, what)
    local list, err = catalogue.parse_list(text)
    if not list then
        return nil, what .. ": " .. err
    end
    return list
end

local function quote(s)
    return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

-- --filter, -I, --netns: one expression, every part and-ed (-p and --comm go to the kernel as
-- such: they check the socket owner when known, which no field expression says).
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
    if args.netns then
        parts[#parts + 1] = "netns == " .. quote(args.netns)
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

-- Aggregation specs from the options, in option order; the library checks them.
local function aggregation_specs(args)
    local by = {}
    if args.by then
        local err
        by, err = field_list(args.by, "--by")
        if not by then
            return nil, err
        end
    end
    local specs = {}
    for _, kind in ipairs(AGG_OPTIONS) do
        local v = args[kind]
        if v ~= nil then
            local spec = { kind = kind, keys = by, name = "@" .. kind }
            if kind == "count" then
                local keys = type(v) == "table" and v[1] or nil
                if keys then
                    local err
                    spec.keys, err = field_list(keys, "--count")
                    if not spec.keys then
                        return nil, err
                    end
                end
            elseif kind == "lhist" then
                local f, lo, hi, step = v:match("^([%w_%.]+):(%-?%d+):(%-?%d+):(%-?%d+)$")
                if not f then
                    return nil, "--lhist wants FIELD:MIN:MAX:STEP, e.g. len:0:1500:100 (got '"
                        .. v .. "')"
                end
                spec.value, spec.min = f, tonumber(lo)
                spec.max, spec.step = tonumber(hi), tonumber(step)
                spec.name = "@lhist_" .. f
            else
                spec.value = v
                spec.name = "@" .. kind .. "_" .. v
            end
            specs[#specs + 1] = spec
        end
    end
    if args.by and #specs == 0 then
        return nil, "--by names the keys of an aggregation: add --count, --sum, --hist, ..."
    end
    return specs
end

-- -o LIST or -o +LIST -> fields, extra
local function output_fields(args)
    if not args.fields then
        return nil, nil
    end
    local text = args.fields
    local extra = text:sub(1, 1) == "+"
    local list, err = field_list(extra and text:sub(2) or text, "--fields")
    if not list then
        return false, err
    end
    if extra then
        return nil, list
    end
    return list, nil
end

-- -I IFNAME that names no device here: tell (the tracer still watches every namespace)
local function warn_unknown_devices(devs)
    for _, d in ipairs(devs) do
        local f = io.open("/sys/class/net/" .. d:gsub("/", "_") .. "/ifindex", "r")
        if f then
            f:close()
        else
            io_stderr:write(format("netdevq: warning: no device '%s' in this network namespace "
                .. "(packets of a device of that name in other namespaces still match)\n", d))
        end
    end
end


---------------------------------------------------------------------------------------------
-- Running
---------------------------------------------------------------------------------------------

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
    netdevq.announce = true -- the ready line when the script's tracer attaches
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

-- Everything the options ask for, checked: the run's settings, or nil, message.
local function settings(args)
    local ok, err = check_numbers(args)
    if not ok then
        return nil, err
    end
    local s = { args = args }
    s.fields, s.extra = output_fields(args)
    if s.fields == false then
        return nil, s.extra
    end
    s.specs, err = aggregation_specs(args)
    if not s.specs then
        return nil, err
    end
    if args.prometheus then
        local host, why = require("netdevq.prometheus").parse_listen(args.prometheus)
        if not host then
            return nil, "--prometheus: " .. why
        end
    end
    if args.write == "" then
        return nil, "--write needs a file name (or - for standard output)"
    end
    if args.write == "/dev/stdout" then
        args.write = "-"
    end
    s.pcap_expr = #args.expression > 0 and concat(args.expression, " ") or nil
    s.filter = combined_filter(args)
    if args.cmd then
        s.cmd_argv, err = words.split(args.cmd)
        if not s.cmd_argv then
            return nil, "--cmd: " .. err
        end
    end
    -- per-event lines: by default, unless -q, or aggregations without -o (like bpftrace), or
    -- pcapng on stdout (which then carries nothing else)
    s.print_events = not args.quiet and (#s.specs == 0 or args.fields ~= nil)
        and args.write ~= "-"
    -- with -w -, stdout is pcapng only: everything else goes to stderr
    s.out = args.write == "-" and io_stderr or io_stdout
    return s
end

-- writer_fields: what the text/JSON writer reads (nil: every field)
local function open_tracer(s, writer_fields, child_pid)
    local args = s.args
    local read = {}
    if s.print_events then
        read = writer_fields and { unpack(writer_fields) } or nil
    end
    if args.write and read then
        for _, f in ipairs(require("netdevq.pcapng").FIELDS) do
            read[#read + 1] = f
        end
    end
    return netdevq.open{
        mode = args.mode,
        filter = s.filter,
        pcap = s.pcap_expr,
        fields = read,
        -- -n counts events exactly: aggregations then take them in Lua
        events = s.print_events or args.write ~= nil or args.max_events ~= nil,
        snaplen = args.write and (args.snaplen or plan.DEFAULT_SNAPLEN) or nil,
        aggregations = s.specs,
        max_keys = args.max_keys,
        follow_pid = child_pid,
        pid = args.pid,
        comm = args.comm,
        ringbuf_size = args.ringbuf_size,
        object = args.object,
        btf_path = os.getenv("NETDEVQ_BTF_PATH"),
        verbose = args.verbose,
    }
end

-- per-event work: the pcapng writer and the text/JSON line; write errors stick in `failed`.
-- failed.unflushed: events handed to a writer since its last good flush; failed.unwritten:
-- those plus the events a failed writer refused (what a stop with a blocked output lost).
local function wire_outputs(t, s, writer, pcap_writer, failed)
    failed.unflushed, failed.unwritten = 0, 0
    local function written(ok, err)
        if ok then
            failed.unflushed = failed.unflushed + 1
            return
        end
        if not failed.err then
            failed.unwritten = failed.unflushed
        end
        failed.err = failed.err or err
        failed.unwritten = failed.unwritten + 1
    end
    if pcap_writer then
        local unix_ns = clock.unix_ns
        t:on_event(function(ev)
            local p = ev._p
            written(pcap_writer:write_event(p, unix_ns(p.ts)))
        end)
    end
    if s.print_events then
        local interrupted = ffi.cast("volatile int *", core.interrupted_flag)
        t:on_event(function(ev)
            local ok, err = writer:event(ev)
            if ok and interrupted[0] ~= 0 then
                -- stopping: a reader that does not read must not hold the stop up
                ok, err = writer:flush()
                failed.unflushed = ok and -1 or failed.unflushed
            end
            written(ok, err)
        end)
    end
end

-- A signal stopped a run whose output was blocked (a reader that does not read): one line
-- that says so, and true (the run then ends like any signal stop).
local function report_blocked(failed)
    local sig = core.interrupted()
    if not (sig and failed.err and tostring(failed.err):match("[Ii]nterrupted")) then
        return false
    end
    io_stderr:write(format("netdevq: output blocked (the reader does not read), stopped by "
        .. "signal %d: up to %d events not written (%s)\n", sig, failed.unwritten,
        tostring(failed.err)))
    return true
end

-- The aggregations, printed to s.out (text like bpftrace, or JSON lines); an interval gets a
-- header line with its time first. Returns true or nil, write error.
local function print_aggregations(t, s, reset, interval)
    local aggs, err = t:aggregations(reset)
    if not aggs then
        return nil, err
    end
    local out, json = s.out, s.args.format == "json"
    local now = clock.now_rfc3339()
    local ok, werr = true, nil
    if interval then
        if json then
            ok, werr = out:write(format('{"type":"interval","time":"%s","interval_s":%s}\n', now,
                tostring(s.args.interval)))
        else
            ok, werr = out:write(os.date("%H:%M:%S"), "\n")
        end
    end
    for _, agg in ipairs(aggs) do
        if not ok then
            break
        end
        if json then
            ok, werr = agg:write_json(out, interval and now or nil)
        else
            ok, werr = agg:print(out)
        end
        if reset and s.exporter then
            s.exporter:fold(agg) -- the exported totals stay cumulative
        elseif reset and not t.agg_spec then
            agg:clear()
        end
    end
    if ok then
        ok, werr = out:flush()
    end
    if not ok then
        return nil, tostring(werr)
    end
    return true
end

local function start_child(s)
    if not s.cmd_argv then
        return nil
    end
    local pid, gate_fd, status_fd = core.spawn(s.cmd_argv)
    if not pid then
        return nil, gate_fd
    end
    return { pid = pid, gate = gate_fd, status = status_fd, done = false }
end

-- The run ended first (-d, -n, a signal, a failed start): the command ends with it (SIGTERM,
-- SIGKILL after CHILD_GRACE_MS) and is reaped.
local function stop_child(child)
    if child and not child.done then
        core.terminate(child.pid, CHILD_GRACE_MS)
        child.done = true
    end
end

-- Runs the CLI with argv (a Lua array); returns the exit status.
function _M.main(argv)
    -- a script as first positional: everything after it is the script's
    if argv[1] and argv[1]:match("%.lua$") then
        load_library()
        return run_script(argv[1], { select(2, unpack(argv)) })
    end
    local parser = build_parser()
    local ok, args = parser:pparse(join_negative_numbers(argv))
    if not ok then
        io_stderr:write(parser:get_usage(), "\n\nnetdevq: ", args, "\n")
        return EXIT_USAGE
    end
    if args.list_fields then
        local skbpath = require("netdevq.skbpath")
        local lines, lerr = catalogue.list(), nil
        if args.list_fields[1] then
            lines, lerr = skbpath.list(args.list_fields[1])
        else
            for _, line in ipairs(skbpath.list_more()) do
                lines[#lines + 1] = line
            end
        end
        if not lines then
            return usage_error(lerr)
        end
        for _, line in ipairs(lines) do
            io_stdout:write(line, "\n")
        end
        return EXIT_OK
    end
    load_library()
    if args.version then
        io_stdout:write("netdevq ", netdevq._VERSION, "\n")
        return EXIT_OK
    end
    local s, serr = settings(args)
    if not s then
        return usage_error(serr)
    end
    return _M.run(s)
end

-- The run itself, once the options are known to be good.
function _M.run(s)
    local args = s.args
    warn_unknown_devices(args.dev)
    local writer = output.new(args.format, { fields = s.fields, extra = s.extra, file = s.out })
    local pcap_writer
    if args.write then
        local err
        pcap_writer, err = require("netdevq.pcapng").open(args.write,
            { snaplen = args.snaplen or plan.DEFAULT_SNAPLEN, interrupted = core.interrupted })
        if not pcap_writer then
            io_stderr:write("netdevq: ", err, "\n")
            return EXIT_FAIL
        end
    end
    if args.prometheus then
        local perr
        s.exporter, perr = netdevq.prometheus{ listen = args.prometheus }
        if not s.exporter then
            io_stderr:write(perr, "\n")
            return EXIT_FAIL
        end
        io_stderr:write("netdevq: serving metrics on ", s.exporter:url(), "\n")
    end
    core.ignore_sigpipe()
    netdevq.catch_signals()

    local child, cerr = start_child(s)
    if s.cmd_argv and not child then
        io_stderr:write("netdevq: --cmd: ", cerr, "\n")
        if s.exporter then s.exporter:close() end
        return EXIT_FAIL
    end
    local t, err, info = open_tracer(s, s.print_events and output.fields_read(args.format,
        { fields = s.fields, extra = s.extra }) or nil, child and child.pid)
    if not t then
        io_stderr:write(err, "\n")
        if info and info.caret then
            io_stderr:write(info.caret, "\n")
        end
        if child then
            core.release(child.gate, child.status, false) -- the child exits unexecuted
            stop_child(child)
        end
        if s.exporter then s.exporter:close() end
        if core.interrupted() then -- a signal stopped the start (a long pcap compile)
            return EXIT_OK
        end
        return info and info.kind == "usage" and EXIT_USAGE or EXIT_FAIL
    end
    if s.exporter then
        for i, agg in ipairs(t.aggs) do
            s.exporter:add(agg, { value = s.specs[i].value, kernel = t.agg_spec and t or nil })
        end
        s.exporter:add_tracer(t) -- t:run() refreshes it every second
    end

    local failed = {}
    wire_outputs(t, s, writer, pcap_writer, failed)

    -- the probe is attached; a --cmd that cannot run is one error line, not a start and an error
    if child then
        local okr, rerr = core.release(child.gate, child.status)
        if not okr then
            t:close()
            if s.exporter then s.exporter:close() end
            stop_child(child)
            io_stderr:write("netdevq: --cmd: cannot run '", s.cmd_argv[1], "': ", rerr, "\n")
            return EXIT_FAIL
        end
    end
    io_stderr:write(format("netdevq: tracing net_dev_queue (%s) ... Ctrl-C to stop\n", args.mode))
    io_stderr:flush()

    local reported_lost = 0
    local function report_lost()
        local st = t:stats()
        if st and st.lost > reported_lost then
            writer:lost(st.lost - reported_lost)
            reported_lost = st.lost
        end
    end

    local status_line = require("netdevq.status").new(args, s.print_events)
    local stats, rerr = t:run{
        duration = args.duration,
        max_events = args.max_events,
        interval = args.interval or 1,
        on_tick = function()
            if status_line then status_line:clear() end
            if args.interval and #s.specs > 0 and not failed.err then
                local pok, perr = print_aggregations(t, s, true, true)
                if not pok then failed.err = perr end
            end
            report_lost()
            if pcap_writer then pcap_writer:flush() end
            if status_line then status_line:tick(t) end
        end,
        stop = function()
            -- a flush per batch: a closed pipe (| head -1) shows at once, not buffers later
            if s.print_events and not failed.err then
                local okf, ferr = writer:flush()
                if not okf then
                    failed.err, failed.unwritten = ferr, failed.unflushed
                end
                failed.unflushed = 0
            end
            if failed.err then
                return true
            end
            if child and not child.done then
                local r = core.waitpid(child.pid, true)
                if r and r ~= 0 then
                    child.done = true
                    return true
                end
            end
            return false
        end,
    }
    return _M.finish(t, s, { stats = stats, err = rerr, writer = writer, pcap = pcap_writer,
        failed = failed, child = child, status_line = status_line, report_lost = report_lost })
end

-- After the run: stop tracing first, so that the aggregations and the summary agree exactly;
-- then print what was gathered, and the summary. Returns the exit status.
function _M.finish(t, s, r)
    t:detach()
    if r.status_line then r.status_line:clear() end
    local exit = EXIT_OK
    if not r.stats then
        io_stderr:write(r.err, "\n")
        exit = EXIT_FAIL
    end
    stop_child(r.child)
    local failed = r.failed
    local blocked = report_blocked(failed)
    local closed_pipe = blocked or failed.err and failed.err:match("[Bb]roken pipe")
    if not failed.err then
        r.report_lost()
        if #s.specs > 0 then
            local ok, err = print_aggregations(t, s, false, false)
            if not ok then failed.err = err end
        end
        local ok, err = r.writer:flush()
        if not ok then failed.err = failed.err or err end
    end
    if r.pcap then
        local ok, err = r.pcap:close()
        if not ok then failed.err = failed.err or err end
    end
    local final = t:stats() or r.stats or { events = 0, matched = 0, lost = 0 }
    if blocked then -- the summary (what was lost too) where it can still be read
        io_stderr:write(output.summary_text(final), "\n")
    elseif not failed.err then -- a closed pipe ends quietly, whichever writer noticed it
        local ok, err = r.writer:summary(final)
        if ok then
            ok, err = r.writer:flush()
        end
        if not ok then failed.err = err end
    end
    if failed.err and not closed_pipe then
        io_stderr:write("netdevq: writing output failed: ", tostring(failed.err), "\n")
        exit = EXIT_FAIL
    end
    t:close()
    if s.exporter then s.exporter:close() end
    return exit
end

return _M
