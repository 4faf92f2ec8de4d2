--- spec/fuzz/common.lua: what every netdevq fuzz harness shares: a seeded generator, byte-level
-- mutators, and a runner that counts outcomes and reports failures with what reproduces them.
--
-- A harness is a standalone LuaJIT script (spec/fuzz/<name>.lua SEED COUNT) run by
-- spec/fuzz_spec.lua as a child process, so that a crash (a signal) or a hang (the spec's
-- timeout) is seen as such and cannot take the spec runner down. Each input is either "ok"
-- (accepted), or a "clean" error (nil, message in the documented form), or a failure: a Lua
-- error raised where a clean one was due, a message not in the expected form, an input that
-- takes too long. The harness prints one summary line:
--
--     fuzz NAME: seed S, N inputs, A ok, E clean errors, F failures
--
-- and each failure as "FAIL #i: what (input: %q)"; exit status 0 only without failures.
-- With $NDQ_FUZZ_BUDGET_S set, a run also stops once that many seconds have passed and says so
-- ("fuzz NAME: time budget of B s reached"): the inputs are the same sequence, cut shorter on a
-- slower machine, and the spec decides how many must have run.
-- Before each input the index goes to the progress file ($NDQ_FUZZ_PROGRESS), so that after a
-- crash the spec can say which input it was (regenerate it with the same seed).

local _M = {}

local random = math.random
local char, byte, sub, concat = string.char, string.byte, string.sub, table.concat

--- Seeds the generator (LuaJIT's math.random is deterministic for a given seed).
function _M.seed(s)
    math.randomseed(s)
end

function _M.pick(list)
    return list[random(#list)]
end

function _M.chance(p)
    return random() < p
end

local INTERESTING_BYTES = {
    "\0", "\255", "\n", "\t", " ", "(", ")", '"', "'", "\\", "=", "!", "~", "<", ">", "&", "|",
    ",", ":", ".", "/", "-", "%", "$", "`", ";", "*", "0", "9", "x", "a", "Z", "_",
}

--- A random byte string of up to n bytes.
function _M.random_bytes(n)
    local t = {}
    for i = 1, random(0, n) do
        t[i] = char(random(0, 255))
    end
    return concat(t)
end

--- One to `max_ops` random edits of s: delete, insert (random or "interesting" bytes), replace,
-- duplicate or swap a chunk, truncate, or splice in a chunk of `other` (when given).
function _M.mutate(s, max_ops, other)
    for _ = 1, random(1, max_ops or 4) do
        local n = #s
        local op = random(1, 8)
        local i = random(1, n + 1)
        if op == 1 and n > 0 then                               -- delete a chunk
            local j = math.min(n, i + random(0, 4))
            s = sub(s, 1, i - 1) .. sub(s, j + 1)
        elseif op == 2 then                                     -- insert an interesting byte
            s = sub(s, 1, i - 1) .. _M.pick(INTERESTING_BYTES) .. sub(s, i)
        elseif op == 3 then                                     -- insert random bytes
            s = sub(s, 1, i - 1) .. _M.random_bytes(3) .. sub(s, i)
        elseif op == 4 and n > 0 then                           -- replace a byte
            local k = math.min(i, n)
            s = sub(s, 1, k - 1) .. char(random(0, 255)) .. sub(s, k + 1)
        elseif op == 5 and n > 0 then                           -- duplicate a chunk
            local j = math.min(n, i + random(0, 12))
            s = sub(s, 1, j) .. sub(s, i, j) .. sub(s, j + 1)
        elseif op == 6 and n > 1 then                           -- swap two bytes
            local a, b = random(1, n), random(1, n)
            if a > b then
                a, b = b, a
            end
            if a < b then
                s = sub(s, 1, a - 1) .. sub(s, b, b) .. sub(s, a + 1, b - 1) .. sub(s, a, a)
                    .. sub(s, b + 1)
            end
        elseif op == 7 and n > 0 then                           -- truncate
            s = sub(s, 1, random(0, n - 1))
        elseif op == 8 and other and #other > 0 then            -- splice from another input
            local a = random(1, #other)
            local b = math.min(#other, a + random(0, 20))
            s = sub(s, 1, i - 1) .. sub(other, a, b) .. sub(s, i)
        end
    end
    return s
end

-- Runner -------------------------------------------------------------------------------------

local Run = {}
Run.__index = Run

--- A runner for harness `name`; reads SEED and COUNT from the script arguments (defaults given).
function _M.runner(name, default_count, argv)
    local seed = tonumber(argv and argv[1]) or 1
    local count = tonumber(argv and argv[2]) or default_count
    -- START (third argument, harnesses that support it): input numbers begin there
    local start = tonumber(argv and argv[3]) or 1
    _M.seed(seed)
    local progress_path = os.getenv("NDQ_FUZZ_PROGRESS")
    return setmetatable({
        name = name, seed = seed, count = count, start = start, n = start - 1, ok = 0, clean = 0,
        failures = {},
        progress = progress_path and assert(io.open(progress_path, "w")) or nil,
        slow_s = tonumber(os.getenv("NDQ_FUZZ_SLOW_S")) or 2,
        budget_s = tonumber(os.getenv("NDQ_FUZZ_BUDGET_S")),
        started = os.time(),
    }, Run)
end

--- True while inputs remain: fewer than COUNT have run, and the time budget (if any) is not spent.
function Run:more()
    if self.n >= self.count then
        return false
    end
    if self.budget_s and os.difftime(os.time(), self.started) >= self.budget_s then
        self.out_of_time = true
        return false
    end
    return true
end

--- Runs fn(input) under pcall for the next input. fn returns "ok", "clean", or nil and a reason
-- (a failure); a raised error is a failure too, with its traceback.
function Run:check(input, fn, ...)
    self.n = self.n + 1
    if self.progress then
        -- a fixed-size record: the file always holds exactly the current input's line
        local line = self.n .. " " .. string.format("%q", tostring(input):sub(1, 200))
        self.progress:seek("set")
        self.progress:write(line, (" "):rep(math.max(0, 1000 - #line)), "\n")
        self.progress:flush()
    end
    local t0 = os.clock()
    local ok, verdict, why = xpcall(fn, debug.traceback, input, ...)
    local dt = os.clock() - t0
    if not ok then
        self:fail(input, "raised: " .. tostring(verdict))
    elseif verdict == "ok" then
        self.ok = self.ok + 1
    elseif verdict == "clean" then
        self.clean = self.clean + 1
    else
        self:fail(input, tostring(why or verdict))
    end
    if dt > self.slow_s then
        self:fail(input, string.format("took %.1f s", dt))
    end
end

function Run:fail(input, why)
    local f = self.failures
    -- at most 3 reports of one kind (the reason without numbers and quoted text)
    local kind = tostring(why):sub(1, 120):gsub("%d+", "N"):gsub("'[^']*'", "'...'")
    self.kinds = self.kinds or {}
    self.kinds[kind] = (self.kinds[kind] or 0) + 1
    if #f < 30 and self.kinds[kind] <= 3 then
        why = tostring(why)
        if #why > 800 then
            why = why:sub(1, 600) .. " ... " .. why:sub(-200)
        end
        f[#f + 1] = string.format("FAIL #%d: %s (input: %s)", self.n, why,
            string.format("%q", tostring(input):sub(1, 200)))
    else
        f.more = (f.more or 0) + 1
    end
    f.total = (f.total or 0) + 1
end

--- Prints the summary and the failures; exits 0 only without failures.
function Run:finish()
    local nfail = self.failures.total or 0
    for _, l in ipairs(self.failures) do
        io.stdout:write(l, "\n")
    end
    if self.failures.more then
        io.stdout:write("(", self.failures.more, " more failures)\n")
    end
    for kind, n in pairs(self.kinds or {}) do
        io.stdout:write(string.format("%7d x %s\n", n, (kind:gsub("\n.*", ""))))
    end
    if self.out_of_time then
        io.stdout:write(string.format("fuzz %s: time budget of %d s reached\n", self.name,
            self.budget_s))
    end
    io.stdout:write(string.format("fuzz %s: seed %d, %d inputs, %d ok, %d clean errors, %d failures\n",
        self.name, self.seed, self.n - self.start + 1, self.ok, self.clean, nfail))
    io.stdout:flush()
    if self.progress then
        self.progress:close()
    end
    os.exit(nfail == 0 and 0 or 1)
end

--- Sets package.path/cpath for a harness run from the source tree (spec/fuzz/X.lua): lua/,
-- spec/, and the C module from $NETDEVQ_BUILD or build/.
function _M.setup_paths(script_path)
    local here = (script_path or ""):match("^(.*)/[^/]*$") or "."
    local top = here .. "/../.."
    package.path = top .. "/lua/?.lua;" .. top .. "/lua/?/init.lua;" .. top .. "/spec/?.lua;"
        .. package.path
    package.cpath = (os.getenv("NETDEVQ_BUILD") or top .. "/build") .. "/?.so;" .. package.cpath
    return top
end

_M.byte = byte

return _M
