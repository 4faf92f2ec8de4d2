-- netdevq.cli.options: the command line's options — the parser (--help), and the checks that
-- turn them into the run's settings: numbers through netdevq.plan's validators, field lists
-- through the catalogue, the filter shorthands into one expression, the aggregation specs.
-- Every mistake is one message for a usage error (exit 2); nothing here loads the C module.
local argparse = require("argparse")
local catalogue = require("netdevq.catalogue")
local plan = require("netdevq.plan")
local words = require("netdevq.words")

local format = string.format
local concat = table.concat
local io_stderr = io.stderr
local io_stdout = io.stdout

local _M = {}

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
    ["--top"] = true,
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
    p:option("--top", "print only the N keys with the largest values (bpftrace print(@, N))")
        :argname("N")
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
    { "max_keys", false, true }, { "top", false, true },
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
    for _, opt in ipairs({ "by", "top" }) do
        if args[opt] and #specs == 0 then
            return nil, format("--%s applies to an aggregation: add --count, --sum, --hist, ...",
                opt)
        end
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


-- argv (a Lua array) -> the parsed options, or nil and the text for stderr
function _M.parse(argv)
    local parser = build_parser()
    local ok, args = parser:pparse(join_negative_numbers(argv))
    if not ok then
        return nil, parser:get_usage() .. "\n\nnetdevq: " .. args
    end
    return args
end

_M.settings = settings

return _M
