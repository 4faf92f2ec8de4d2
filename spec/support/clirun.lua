--- spec/support/clirun.lua: run the netdevq CLI (or any command) with stdout and stderr kept
-- apart, for specs that assert exact messages and exit statuses.
--
--     local clirun = require("support.clirun")
--     local r = clirun.cli({ "-f", "len >" })          -- { code =, out =, err = }
--     local r = clirun.run({ "sh", "-c", "..." }, { env = { K = "v" }, timeout = 20 })
--
-- Commands are argument lists; every argument is quoted for /bin/sh, so no text is interpreted
-- by a shell. The CLI is `luajit scripts/netdevq.lua` of this tree (the specs run from the
-- source directory); NETDEVQ_BUILD (set by ctest, and by spec/sanitize.sh to build-asan) picks
-- the C module it loads. Every run is bounded by `timeout` (default 60 s, then SIGKILL).

local _M = {}

local function quote(s)
    s = tostring(s)
    if s:match("^[%w%./:_,@=+%-]+$") then
        return s
    end
    return "'" .. s:gsub("'", "'\\''") .. "'"
end
_M.quote = quote

--- argv as one /bin/sh command line, every argument quoted (for a caller's own pipelines).
function _M.shell_line(argv)
    local out = {}
    for i, a in ipairs(argv) do
        out[i] = quote(a)
    end
    return table.concat(out, " ")
end

local function read_all(path)
    local f = io.open(path, "rb")
    if not f then
        return ""
    end
    local s = f:read("*a")
    f:close()
    return s
end

local function cwd()
    local p = assert(io.popen("pwd"))
    local d = p:read("*l")
    p:close()
    return d
end

--- The source tree (the current directory when specs run) and the build tree.
function _M.top()
    return cwd()
end

function _M.build_dir()
    local b = os.getenv("NETDEVQ_BUILD")
    if b and b ~= "" then
        return b
    end
    return cwd() .. "/build"
end

--- A fresh temporary directory (mode 0700 unless mode is given); remove with _M.rmtree.
function _M.tmpdir(mode)
    local p = assert(io.popen("mktemp -d /tmp/ndqspec.XXXXXX"))
    local d = p:read("*l")
    p:close()
    assert(d and d:match("^/tmp/ndqspec%.%w+$"), "mktemp failed")
    if mode then
        os.execute("chmod " .. mode .. " " .. quote(d))
    end
    return d
end

function _M.rmtree(dir)
    assert(type(dir) == "string" and dir:match("^/tmp/ndqspec%.%w+$"), "refusing to remove " .. tostring(dir))
    os.execute("rm -rf " .. quote(dir))
end

-- Appends NAME=value words for env (sorted by name) to an env(1) command line.
local function add_env(parts, env)
    local names = {}
    for k in pairs(env or {}) do
        names[#names + 1] = k
    end
    table.sort(names)
    for _, k in ipairs(names) do
        parts[#parts + 1] = quote(k .. "=" .. tostring(env[k]))
    end
end

--- Runs argv; opts.env (table, added to the environment), opts.unset (list of names removed),
-- opts.stdin (a path, default /dev/null), opts.timeout (seconds, default 60),
-- opts.shell_tail (raw shell text appended after the command, e.g. "| head -1": the caller's
-- own constant text, never user input). Returns { code =, out =, err = }; code 137 after a
-- timeout kill.
function _M.run(argv, opts)
    opts = opts or {}
    local dir = _M.tmpdir()
    local parts = { "env" }
    for _, name in ipairs(opts.unset or {}) do
        parts[#parts + 1] = "-u"
        parts[#parts + 1] = quote(name)
    end
    add_env(parts, opts.env)
    parts[#parts + 1] = "timeout"
    parts[#parts + 1] = "-s"
    parts[#parts + 1] = "KILL"
    parts[#parts + 1] = tostring(opts.timeout or 60)
    for _, a in ipairs(argv) do
        parts[#parts + 1] = quote(a)
    end
    local cmd = table.concat(parts, " ")
    local out, err = dir .. "/out", dir .. "/err"
    local script
    if opts.shell_tail then
        -- the exit status of the first command of the pipeline
        script = "bash -c " .. quote("set -o pipefail; " .. cmd .. " 2>" .. quote(err) .. " <"
            .. quote(opts.stdin or "/dev/null") .. " " .. opts.shell_tail .. " >" .. quote(out)
            .. "; echo ${PIPESTATUS[0]}")
    else
        script = cmd .. " >" .. quote(out) .. " 2>" .. quote(err) .. " <"
            .. quote(opts.stdin or "/dev/null") .. "; echo $?"
    end
    local p = assert(io.popen(script))
    local status = p:read("*a")
    p:close()
    local r = { code = tonumber(status:match("(%d+)%s*$")), out = read_all(out), err = read_all(err) }
    _M.rmtree(dir)
    return r
end

--- The CLI argv prefix: { "luajit", "<top>/scripts/netdevq.lua" } (with fdcheck:
-- spec/support/fdcheck_cli.lua, the same CLI with an fd check around main()).
function _M.cli_argv(args, top, fdcheck)
    local argv = { "luajit", (top or cwd())
        .. (fdcheck and "/spec/support/fdcheck_cli.lua" or "/scripts/netdevq.lua") }
    for _, a in ipairs(args or {}) do
        argv[#argv + 1] = a
    end
    return argv
end

local function fdcheck_setup(opts)
    opts.env = opts.env or {}
    if opts.env.NETDEVQ_BUILD == nil then
        opts.env.NETDEVQ_BUILD = _M.build_dir()
    end
    if opts.fdcheck then
        local dir = _M.tmpdir("1777") -- writable for runs as another user (setpriv)
        opts.env.NDQ_FDCHECK = dir .. "/fdcheck"
        return dir
    end
end

-- r.leaks (fds that main() left open, or closed: "added anon_inode:bpf-map"), r.held,
-- r.status (what main() returned) from the fdcheck report; r.leaks = { "no report" } without it
local function fdcheck_read(r, dir)
    local text = read_all(dir .. "/fdcheck")
    r.leaks = {}
    for l in text:gmatch("[^\n]+") do
        local k, v = l:match("^(%S+) (.*)$")
        if k == "held" then
            r.held = tonumber(v)
        elseif k == "status" then
            r.status = tonumber(v)
        else
            r.leaks[#r.leaks + 1] = l
        end
    end
    if text == "" then
        r.leaks[1] = "no report (the process ended before main() returned)"
    end
    _M.rmtree(dir)
    return r
end

--- Runs the CLI with args (list) and run() opts; opts.fdcheck: through fdcheck_cli.lua, adding
-- r.leaks (a list, empty when every fd came back) and r.held (BPF fds left open).
-- runner(argv, opts) (run or spawn) on the CLI's argv; also returns the fdcheck directory
local function via_cli(runner, args, opts)
    opts = opts or {}
    local dir = fdcheck_setup(opts)
    return runner(_M.cli_argv(args, opts.top, opts.fdcheck), opts), dir
end

function _M.cli(args, opts)
    local r, dir = via_cli(_M.run, args, opts)
    return dir and fdcheck_read(r, dir) or r
end

-- Background runs ------------------------------------------------------------------------------

local Bg = {}
Bg.__index = Bg

local started = {} -- background runs not waited for yet, for leftovers()

local function sleep(s)
    os.execute("sleep " .. s)
end
_M.sleep = sleep

--- True when path can be opened (a file or directory that exists).
local function exists(path)
    local f = io.open(path)
    if f then
        f:close()
        return true
    end
    return false
end
_M.exists = exists

--- Starts argv in the background (SIGINT/SIGQUIT at their defaults, unlike a plain `cmd &`),
-- stdout and stderr to files. opts.env as for run(). Returns a handle: .pid, :err_text(),
-- :out_text(), :wait_err(pattern, timeout_s), :kill(sig), :wait(timeout_s) -> { code, out, err }.
function _M.spawn(argv, opts)
    opts = opts or {}
    local dir = _M.tmpdir()
    local parts = { "env", "--default-signal=INT,QUIT" }
    add_env(parts, opts.env)
    for _, a in ipairs(argv) do
        parts[#parts + 1] = quote(a)
    end
    local q = function(name) return quote(dir .. "/" .. name) end
    local script = "(" .. table.concat(parts, " ") .. " >" .. q("out") .. " 2>" .. q("err")
        .. " </dev/null & echo $! >" .. q("pid.tmp") .. "; mv " .. q("pid.tmp") .. " " .. q("pid")
        .. "; wait $!; echo $? >" .. q("rc.tmp") .. "; mv " .. q("rc.tmp") .. " " .. q("rc")
        .. ") >/dev/null 2>&1 &"
    os.execute(script)
    local self = setmetatable({ dir = dir }, Bg)
    for _ = 1, 100 do
        local f = io.open(dir .. "/pid")
        if f then
            self.pid = tonumber(f:read("*l"))
            f:close()
            break
        end
        sleep(0.05)
    end
    assert(self.pid, "could not start " .. table.concat(argv, " "))
    self.argv_text = table.concat(argv, " ")
    started[self] = true
    return self
end

--- Starts the CLI in the background like spawn(); opts.fdcheck as for cli() (r.leaks and r.held
-- in what :wait() returns).
function _M.spawn_cli(args, opts)
    local bg, dir = via_cli(_M.spawn, args, opts)
    bg.fdcheck_dir = dir
    return bg
end

function Bg:err_text()
    return read_all(self.dir .. "/err")
end

function Bg:out_text()
    return read_all(self.dir .. "/out")
end

function Bg:done()
    return self.result ~= nil or exists(self.dir .. "/rc")
end

--- Waits until stderr matches pattern (a Lua pattern); true, or false after timeout_s.
function Bg:wait_err(pattern, timeout_s)
    local deadline = os.time() + (timeout_s or 20)
    while os.time() <= deadline do
        if self:err_text():match(pattern) then
            return true
        end
        if self:done() then
            return self:err_text():match(pattern) ~= nil
        end
        sleep(0.05)
    end
    return false
end

--- Sends sig (default TERM) while the process is still running (never to a finished one, whose
-- pid may have been reused). Returns true when sent.
function Bg:kill(sig)
    if self:done() then
        return false
    end
    return os.execute("kill -" .. (sig or "TERM") .. " " .. self.pid .. " 2>/dev/null") == 0
end

--- Waits for the end (KILL after timeout_s, default 30); returns { code =, out =, err = } and
-- removes the files.
function Bg:wait(timeout_s)
    if self.result then
        return self.result
    end
    local deadline = os.time() + (timeout_s or 30)
    while not self:done() do
        if os.time() > deadline then
            self:kill("KILL")
            deadline = math.huge
        end
        sleep(0.05)
    end
    local f = io.open(self.dir .. "/rc")
    local rc = tonumber(f:read("*l"))
    f:close()
    local r = { code = rc, out = self:out_text(), err = self:err_text() }
    started[self] = nil
    if not self.removed then
        _M.rmtree(self.dir)
        self.removed = true
        if self.fdcheck_dir then
            fdcheck_read(r, self.fdcheck_dir)
        end
    end
    self.result = r
    return r
end

--- Background runs still going that nobody waited for (their argv as text, sorted).
function _M.leftovers()
    local list = {}
    for bg in pairs(started) do
        if not bg:done() then
            list[#list + 1] = bg.argv_text
        end
    end
    table.sort(list)
    return list
end

--- Ends (KILL) every background run not waited for, and removes its files.
function _M.clean_up()
    for bg in pairs(started) do
        bg:kill("KILL")
        bg:wait(10)
    end
end

--- The whole content of a file (raises when it cannot be read).
function _M.read_file(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end

--- The whole content of a file, or nil when it cannot be opened.
function _M.try_read(path)
    local f = io.open(path, "rb")
    if not f then
        return nil
    end
    local s = f:read("*a")
    f:close()
    return s
end

--- The standard output of a shell command line (the caller's own text: quote what it inserts).
function _M.read_cmd(cmd)
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    return out
end

--- Writes data to path (replacing it); mode (e.g. "755") is set with chmod when given.
function _M.write_file(path, data, mode)
    local f = assert(io.open(path, "wb"))
    f:write(data)
    f:close()
    if mode then
        os.execute("chmod " .. mode .. " " .. quote(path))
    end
end

--- Lines of a text (without the newlines).
function _M.lines(text)
    local list = {}
    for l in text:gmatch("([^\n]*)\n") do
        list[#list + 1] = l
    end
    local rest = text:match("([^\n]+)$")
    if rest then
        list[#list + 1] = rest
    end
    return list
end

return _M
