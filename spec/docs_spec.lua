-- The documentation stays true: every ```lua block of README.md and docs/reference.md runs (as a
-- script of the CLI: luajit scripts/netdevq.lua FILE.lua) and exits 0, and where a ```text block
-- follows it (only blank lines between), its standard output is exactly that text. The field
-- table of docs/reference.md lists the catalogue's fields in the catalogue's order, and every
-- long option of --help appears in docs/reference.md. Command lines shown in indented blocks
-- (`    # luajit scripts/netdevq.lua ARGS`, then what it printed) run too, except those that
-- write files (-w): each line shown must be among the lines the command wrote to stdout or
-- stderr, and the README's first command must print what the README shows. A command that
-- names port 7713 gets one TCP connection to it instead (the README's TCP lines). The README's
-- field list and the documented JSON lines (their keys, types and order, against a live run)
-- are checked too.
--
-- Traffic: an example that opens a tracer (it contains `netdevq.open`) gets, once its ready line
-- is on stderr, the traffic the reference describes above its examples, all on lo:
--   UDP 127.0.0.1:40000 -> 127.0.0.1:7711, payloads 8, 100, 600 (len 50, 142, 642)
--   UDP 127.0.0.1:40001 -> 127.0.0.1:7712, payload 8           (len 50)
-- Nobody listens on those ports: each datagram also gets an ICMP port-unreachable reply.
-- Examples bound themselves (run{ duration = 1 or 2 }). Other specs run at the same time, so an
-- example that shows output filters on these ports. Shape check: times, dates and the sender's
-- pid (which differ on every run) are compared by their form, everything else exactly.
local netns = require("support.netns")
local clirun = require("support.clirun")

local DOCS = { "README.md", "docs/reference.md" }
local READY = "netdevq: tracing net_dev_queue (raw) ... Ctrl-C to stop"

local function read(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end

-- { { file=, line=, code=, output= (nil when no text block follows) }, ... }
local function examples(path)
    local list = {}
    local lines = {}
    for l in (read(path) .. "\n"):gmatch("(.-)\n") do
        lines[#lines + 1] = l
    end
    local i = 1
    local function block_at(j) -- the fenced block starting at line j: lang, body, next line
        local lang = lines[j]:match("^```(%w*)%s*$")
        local body = {}
        local k = j + 1
        while k <= #lines and not lines[k]:match("^```%s*$") do
            body[#body + 1] = lines[k]
            k = k + 1
        end
        return lang, table.concat(body, "\n") .. "\n", k + 1
    end
    while i <= #lines do
        if lines[i]:match("^```") then
            local lang, body, nxt = block_at(i)
            if lang == "lua" then
                local ex = { file = path, line = i, code = body }
                local k = nxt
                while k <= #lines and lines[k]:match("^%s*$") do
                    k = k + 1
                end
                if k <= #lines and lines[k]:match("^```text%s*$") then
                    local _, out
                    _, out, nxt = block_at(k)
                    ex.output = out
                end
                list[#list + 1] = ex
            end
            i = nxt
        else
            i = i + 1
        end
    end
    return list
end

-- what differs from run to run, replaced by its form
local function shape(text)
    text = text:gsub("%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%d%d%d%dZ", "<date>")
    text = text:gsub("%d%d:%d%d:%d%d%.%d%d%d%d%d%d", "<time>")
    text = text:gsub("ndq_send(%s+)%d+", "ndq_send%1<pid>")
    text = text:gsub('"pid":%d+', '"pid":<pid>'):gsub('"tid":%d+', '"tid":<pid>')
    text = text:gsub('"duration_s":[%d.]+', '"duration_s":<s>')
    return text
end

-- one TCP connection on loopback, 127.0.0.1:40002 -> 127.0.0.1:7713 (the README's TCP lines)
-- A command whose output lines (stdout and stderr) this process reads as they come, with its exit
-- status last. (Not netns.spawn: its start spins when the command prints before its pid marker.)
local function start(argv, tail)
    local words = {}
    for i, a in ipairs(argv) do
        words[i] = clirun.quote(a)
    end
    local fh = assert(io.popen(table.concat(words, " ") .. " </dev/null " .. (tail or "2>&1")
        .. '; echo "@@rc $?"'))
    local proc = {}
    function proc.line()
        local l = fh:read("*l")
        if l == nil or l:match("^@@rc %d+$") then
            proc.code = proc.code or (l and tonumber(l:match("%d+")))
            return nil
        end
        return l
    end
    function proc.wait()
        local rest = {}
        for l in proc.line do
            rest[#rest + 1] = l
        end
        fh:close()
        return proc.code, rest
    end
    return proc
end

-- one TCP connection on loopback, 127.0.0.1:40002 -> 127.0.0.1:7713 (the README's TCP lines)
local function send_tcp()
    local send = netns.ndq_send()
    local listener = start({ "timeout", "-s", "KILL", "10", send, "tcplisten", "127.0.0.1", "7713", "3000" })
    local l = listener.line()
    while l and l ~= "listening" do -- (its pid comes first)
        l = listener.line()
    end
    assert.are.equal("listening", l)
    assert(netns.run({ "timeout", "-s", "KILL", "10", send, "tcp4", "127.0.0.1", "127.0.0.1", "7713", "40002" }))
    listener.wait()
end

local function send_traffic()
    local send = netns.ndq_send()
    assert(netns.run({ "timeout", "-s", "KILL", "10", send, "udp4", "127.0.0.1", "127.0.0.1", "7711", "40000",
                       "8,100,600" }))
    assert(netns.run({ "timeout", "-s", "KILL", "10", send, "udp4", "127.0.0.1", "127.0.0.1", "7712", "40001", "8" }))
end

-- runs the CLI with args (stdout to a file, stderr read here); with traffic = true, sends the
-- traffic above once the ready line is there. Returns exit code, stdout, stderr lines.
local function run_cli(args, dir, traffic, send)
    local out = dir .. "/stdout"
    local argv = { "timeout", "-s", "KILL", "60", "luajit", "scripts/netdevq.lua" }
    for _, a in ipairs(args) do
        argv[#argv + 1] = a
    end
    -- stderr to the pipe read here, stdout to the file
    local proc = start(argv, "2>&1 >" .. clirun.quote(out))
    local err = {}
    if traffic then
        local l = proc.line()
        while l and l ~= READY do
            err[#err + 1] = l
            l = proc.line()
        end
        if l then
            err[#err + 1] = l
            local make_traffic = send or send_traffic
            make_traffic()
        end
    end
    local code, rest = proc.wait()
    for _, l in ipairs(rest) do
        err[#err + 1] = l
    end
    return code, read(out), err
end

-- runs one example as the CLI runs a script; traffic when it opens a tracer
local function run_example(ex, dir)
    local script = dir .. "/example.lua"
    local f = assert(io.open(script, "w"))
    f:write(ex.code)
    f:close()
    return run_cli({ script }, dir, ex.code:find("netdevq.open", 1, true) ~= nil)
end

-- { { file=, line=, args = {words}, shown = {lines} }, ... }: the indented command blocks
local function command_blocks(path)
    local split = require("netdevq.words").split
    local list, cur = {}, nil
    local n = 0
    for l in (read(path) .. "\n"):gmatch("(.-)\n") do
        n = n + 1
        local cmd = l:match("^    # luajit scripts/netdevq%.lua (.*)$")
        if cmd then
            cur = { file = path, line = n, text = cmd, args = assert(split(cmd)), shown = {} }
            list[#list + 1] = cur
        elseif cur and l:match("^    ") then
            cur.shown[#cur.shown + 1] = l:sub(5)
        else
            cur = nil
        end
    end
    return list
end

-- what differs from run to run in a command's output, replaced by its form
local function cli_shape(line)
    line = shape(line)
    line = line:gsub("^(netdevq: )%d+( events,)", "%1<n>%2")
    line = line:gsub("^(<time> bash )%d+", "%1<pid>")
    line = line:gsub("^(<time> bash <pid> lo %d+ udp 127%.0%.0%.1:)%d+", "%1<port>")
    return line
end

local function lines_of(text)
    local t = {}
    for l in text:gmatch("[^\n]+") do
        t[#t + 1] = cli_shape(l)
    end
    return t
end

describe("documented command lines #root", function()
    for _, path in ipairs(DOCS) do
        for _, block in ipairs(command_blocks(path)) do
            if not block.text:find(" -w ", 1, true) then
                it(("%s:%d %s"):format(block.file, block.line, block.text), function()
                    netns.require_root()
                    local dir = clirun.tmpdir()
                    finally(function() clirun.rmtree(dir) end)
                    local traffic = block.text:find("7711", 1, true) or block.text:find("7713", 1, true)
                    local send = block.text:find("7713", 1, true) and send_tcp or nil
                    local _, out, err = run_cli(block.args, dir, traffic, send)
                    local got = lines_of(out)
                    for _, l in ipairs(err) do
                        got[#got + 1] = cli_shape(l)
                    end
                    local left = {}
                    for _, l in ipairs(got) do
                        left[l] = (left[l] or 0) + 1
                    end
                    for _, want in ipairs(block.shown) do
                        want = cli_shape(want)
                        assert.is_true((left[want] or 0) > 0,
                            ("not printed: %q\nprinted:\n%s"):format(want, table.concat(got, "\n")))
                        left[want] = left[want] - 1
                    end
                end)
            end
        end
    end
end)

describe("documented Lua examples #root", function()
    for _, path in ipairs(DOCS) do
        for _, ex in ipairs(examples(path)) do
            it(("%s:%d runs%s"):format(ex.file, ex.line, ex.output and " and prints what it shows" or ""),
               function()
                netns.require_root()
                local dir = clirun.tmpdir()
                finally(function() clirun.rmtree(dir) end)
                local code, out, err = run_example(ex, dir)
                assert.are.equal(0, code, table.concat(err, "\n"))
                if ex.output then
                    assert.are.equal(shape(ex.output), shape(out))
                end
            end)
        end
    end
end)

describe("docs/reference.md", function()
    local reference = read("docs/reference.md")

    it("has examples, and the README too", function()
        assert.is_true(#examples("docs/reference.md") >= 8)
        assert.is_true(#examples("README.md") >= 1)
    end)

    it("lists every field of the catalogue, in the catalogue's order", function()
        local section = assert(reference:match("\n## Fields\n(.-)\n## "), "no '## Fields' section")
        local listed = {}
        for name in section:gmatch("\n| `([%w_%.]+)` |") do
            listed[#listed + 1] = name
        end
        assert.are.same(require("netdevq.catalogue").names, listed)
    end)

    it("and the README's field list is the catalogue's, in order", function()
        local block = assert(read("README.md"):match("\n## Fields\n.-\n\n(    ts .-)\n\n"),
                             "no field list in README.md")
        local listed = {}
        for name in block:gmatch("[%w_]+") do
            listed[#listed + 1] = name
        end
        assert.are.same(require("netdevq.catalogue").names, listed)
    end)

    it("names every long option of --help", function()
        local r = clirun.run(clirun.cli_argv({ "--help" }), { env = { NETDEVQ_BUILD = clirun.build_dir() } })
        assert.are.equal(0, r.code)
        local seen = {}
        for opt in r.out:gmatch("%-%-[%w][%w%-]*") do
            if not seen[opt] then
                seen[opt] = true
                assert.truthy(reference:find(opt:gsub("%-", "%%-") .. "[^%w%-]"), opt .. " is not in docs/reference.md")
            end
        end
        assert.truthy(seen["--prometheus"])
    end)

    it("refers to nothing outside the repository", function()
        for _, path in ipairs(DOCS) do
            local text = read(path)
            -- (spelled in two parts: this file refers to no such file either)
            assert.falsy(text:find(".." .. "/shared", 1, true), path)
            assert.falsy(text:find("contract" .. ".md", 1, true), path)
        end
    end)
end)

-- The documented JSON lines: the ```text blocks of the "## JSON lines" section, by type.
local function documented_json()
    local section = assert(read("docs/reference.md"):match("\n## JSON lines\n(.-)\n## "), "no JSON lines section")
    local by_type = {}
    for block in section:gmatch("```text\n(.-)\n```") do
        for line in block:gmatch("[^\n]+") do
            local t = assert(line:match('^{"type":"(%w+)"'), "not a JSON line: " .. line)
            by_type[t] = by_type[t] or {}
            table.insert(by_type[t], line)
        end
    end
    return by_type
end

-- top-level keys of a JSON line, in order (what precedes "data" for map and hist)
local function top_keys(line)
    local keys = {}
    for k in (line:match('^(.-),"data":') or line):gmatch('"([%w_]+)":') do
        keys[#keys + 1] = k
    end
    return keys
end

local RFC3339 = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%d%d%d%dZ$"

describe("JSON lines of docs/reference.md", function()
    local cjson = require("cjson")
    local catalogue = require("netdevq.catalogue")
    local docs = documented_json()

    it("show every type, and each line has the keys and types the schema table says", function()
        assert.are.same({ "event", "hist", "interval", "lost", "map", "summary" },
            (function()
                local t = {}
                for k in pairs(docs) do t[#t + 1] = k end
                table.sort(t)
                return t
            end)())
        for _, line in ipairs(docs.event) do
            local keys, ev = top_keys(line), cjson.decode(line)
            local last = 0
            for i = 2, #keys do
                local f = assert(catalogue.by_name[keys[i]], keys[i])
                assert.is_true(f.index > last, keys[i] .. " out of catalogue order")
                last = f.index
                assert.are.equal(f.value_type == "integer" and "number" or "string", type(ev[keys[i]]), keys[i])
            end
            assert.truthy(ev.time:match(RFC3339))
        end
        for _, t in ipairs({ "map", "hist" }) do
            for _, line in ipairs(docs[t]) do
                local o = cjson.decode(line)
                assert.are.equal("string", type(o.name))
                assert.truthy(o.time == nil or o.time:match(RFC3339))
                for _, d in ipairs(o.data) do
                    assert.are.equal(#o.keys, #d.key)
                    if t == "hist" then
                        for _, b in ipairs(d.buckets) do
                            assert.are.equal("number", type(b.count))
                            assert.is_true(b.min ~= nil or b.max ~= nil)
                        end
                    elseif type(d.value) == "table" then
                        assert.are.same({ "average", "count", "total" }, (function()
                            local k = {}
                            for n in pairs(d.value) do k[#k + 1] = n end
                            table.sort(k)
                            return k
                        end)())
                    else
                        assert.are.equal("number", type(d.value))
                    end
                end
            end
        end
        local interval = cjson.decode(docs.interval[1])
        assert.truthy(interval.time:match(RFC3339))
        assert.are.equal("number", type(interval.interval_s))
        assert.are.equal("number", type(cjson.decode(docs.lost[1]).count))
        local summary = cjson.decode(docs.summary[1])
        assert.are.same({ "type", "time", "events", "matched", "lost", "kfiltered", "agg_overflow", "duration_s" },
            top_keys(docs.summary[1]))
        assert.truthy(summary.time:match(RFC3339))
    end)

    it("have the keys, in the order, that the CLI writes #root", function()
        netns.require_root()
        local dir = clirun.tmpdir()
        finally(function() clirun.rmtree(dir) end)
        local live = {}
        local function collect(args)
            local code, out, err = run_cli(args, dir, true)
            assert.are.equal(0, code, table.concat(err, "\n"))
            for line in out:gmatch("[^\n]+") do
                local t = assert(line:match('^{"type":"(%w+)"'), line)
                live[t] = live[t] or line
            end
        end
        collect({ "-F", "json", "-f", "dport == 7711", "-n", "1", "-d", "5" })
        collect({ "-F", "json", "-f", "port == 7711 or port == 7712", "--count", "dev,proto", "--hist", "len",
                  "-i", "1", "-d", "2.5" })
        for _, t in ipairs({ "event", "map", "hist", "interval", "summary" }) do
            assert.truthy(live[t], "the CLI wrote no " .. t .. " line")
            assert.are.same(top_keys(docs[t][1]), top_keys(live[t]), t)
        end
    end)
end)
