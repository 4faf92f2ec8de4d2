-- netdevq.cli: the command line (scripts/netdevq.lua and the installed `netdevq` command).
-- Wiring the library together: the options and their checks are in cli/options.lua, and the
-- decisions (what the kernel reads, where aggregations run, validation of values) are the
-- library's (netdevq.plan), so Lua scripts get the same powers through require("netdevq").

-- First: a second thread opens the BPF object and reads the kernel's BTF while the modules load
-- and the options are parsed (netdevq.core's startup.c); the tracer's open takes that object,
-- and main() closes it when nothing did (--help, a usage error, --object).
local core = require("netdevq.core")
core.preopen()
-- and no JIT while the CLI starts: its code runs once, and each trace LuaJIT compiles flips its
-- machine code pages writable and back (two mprotect calls, each a TLB shootdown on the other
-- CPU while the pre-open thread runs: 50 calls, 2-4 ms of a start). On again once attached, for
-- the event loop.
local jit = require("jit")
jit.off()
local catalogue = require("netdevq.catalogue")
local clock = require("netdevq.clock")
local output = require("netdevq.output")
local plan = require("netdevq.plan")
local options = require("netdevq.cli.options")
local ffi = require("ffi")

-- the library loads once the options are parsed: --help and -l do not need it
local netdevq
local function load_library()
    netdevq = require("netdevq")
end
local format = string.format
local io_stderr = io.stderr
local io_stdout = io.stdout

local _M = {}

local EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
local CHILD_GRACE_MS = 2000 -- -c: from SIGTERM to SIGKILL when the run ends before the command

local function usage_error(msg)
    io_stderr:write("netdevq: ", msg, "\n")
    return EXIT_USAGE
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
    jit.on()
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
        read = args.read,
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
            local p = ev:pointer()
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
            ok, werr = agg:write_json(out, interval and now or nil, s.args.top)
        else
            ok, werr = agg:print(out, s.args.top)
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

local main

-- Runs the CLI with argv (a Lua array); returns the exit status.
function _M.main(argv)
    local status = main(argv)
    core.preopen_close()
    return status
end

function main(argv)
    -- a script as first positional: everything after it is the script's
    if argv[1] and argv[1]:match("%.lua$") then
        load_library()
        return run_script(argv[1], { select(2, unpack(argv)) })
    end
    local args, usage = options.parse(argv)
    if not args then
        io_stderr:write(usage, "\n")
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
    local s, serr = options.settings(args)
    if not s then
        return usage_error(serr)
    end
    return _M.run(s)
end

-- The run itself, once the options are known to be good.
-- Long on purpose: the run in the order it happens (outputs, signals, child, tracer, ready line,
-- loop, finish), each step a few lines whose failure path undoes the steps before it.
function _M.run(s)
    local args = s.args
    warn_unknown_devices(args.dev)
    -- buffered: the lines of a poll batch go out in one write, at the flush in stop() below
    local writer = output.new(args.format, { fields = s.fields, extra = s.extra, file = s.out,
                                             buffered = true })
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
    jit.on()
    io_stderr:write(format("netdevq: tracing net_dev_queue (%s) ... Ctrl-C to stop\n", args.mode))
    io_stderr:flush()
    local status = require("netdevq.status")
    if s.print_events and s.fields and args.format == "text" and s.out == io.stdout
        and status.isatty(1) then -- column names for a reader, never for a pipe
        s.out:write(output.header(s.fields), "\n")
    end

    local reported_lost = 0
    local function report_lost()
        local st = t:stats()
        if st and st.lost > reported_lost then
            writer:lost(st.lost - reported_lost)
            writer:flush() -- a JSON lost line goes out now, before anything printed after it
            reported_lost = st.lost
        end
    end

    local status_line = status.new(args, s.print_events)
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
        -- the event lines still in the writer's buffer go before the aggregations
        local ok, err = r.writer:flush()
        if not ok then failed.err = err end
        if not failed.err and #s.specs > 0 then
            ok, err = print_aggregations(t, s, false, false)
            if not ok then failed.err = err end
        end
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

