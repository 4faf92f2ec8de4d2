-- Fuzzing: generated and mutated inputs for the filter language, the pcap-filter path of the C
-- module, the command line, and (root) the load-from-bytes path with mutated BPF objects. Each
-- harness (spec/fuzz/*.lua, see spec/fuzz/common.lua) runs as a child process with a fixed seed,
-- so that a crash or a hang shows as such; every input must either work or fail cleanly.
--
-- NDQ_FUZZ_SEED picks another seed (the default is fixed, so CI runs are repeatable); a failure
-- names the input number, and `luajit spec/fuzz/NAME.lua SEED COUNT` reproduces the run
-- (elf_fuzz.lua also takes START, and NDQ_FUZZ_DUMP=N:PATH writes input N to a file).
local clirun = require("support.clirun")
local netns = require("support.netns")

local SEED = tonumber(os.getenv("NDQ_FUZZ_SEED")) or 20261125
-- Under spec/sanitize.sh (the ASan pass) every input costs several times more (the ELF harness
-- forks per input). The full counts run in the plain pass; the ASan pass runs the first fifth of
-- each sequence (same seed, so the same inputs), enough to put every path of the C module under
-- the sanitizers without making that pass the longest stage of CI.
local ASAN = os.getenv("ASAN_OPTIONS") ~= nil
local function inputs(n)
    return ASAN and math.floor(n / 5) or n
end

-- Each harness runs COUNT inputs or for its time budget, whichever ends first (the same inputs
-- in the same order: a slower machine runs a shorter prefix). At least a tenth of COUNT must have
-- run, or the run says too little to pass. A harness still running a minute past its budget
-- hangs (one input never returned) and is killed. Budgets here (2 CPUs): filter ~700
-- inputs/s, pcap ~2000/s, cli ~500/s, elf ~3/s (each loads the whole object into the kernel).
local BUDGET_S = { filter_fuzz = 60, pcap_fuzz = 50, cli_fuzz = 90, elf_fuzz = 150 }
local HANG_S = 60

-- Runs a harness; returns the parsed summary and the whole output. isolated: in a network
-- namespace of its own with nothing up (libpcap may try to resolve host names).
local function harness(name, count, opts)
    opts = opts or {}
    local dir = clirun.tmpdir()
    local progress = dir .. "/progress"
    local argv = {}
    if opts.isolated then
        argv = netns.is_root() and { "unshare", "--net" } or { "unshare", "--map-root-user", "--net" }
    end
    for _, a in ipairs({ "luajit", clirun.top() .. "/spec/fuzz/" .. name .. ".lua", tostring(SEED),
        tostring(count) }) do
        argv[#argv + 1] = a
    end
    local r = clirun.run(argv, { timeout = BUDGET_S[name] + HANG_S, env = { NDQ_FUZZ_PROGRESS = progress,
        NETDEVQ_BUILD = clirun.build_dir(), NDQ_FUZZ_BUDGET_S = tostring(BUDGET_S[name]) } })
    local f = io.open(progress)
    local last = f and f:read("*l") or "(none)"
    if f then
        f:close()
    end
    clirun.rmtree(dir)
    local summary = {}
    local s = r.out:match("\n?(fuzz " .. name:gsub("_fuzz$", "") .. ": seed [^\n]+)\n")
    if s then
        local n, ok, clean, failures = s:match(": seed %d+, (%d+) inputs, (%d+) ok, (%d+) clean "
            .. "errors, (%d+) failures$")
        summary = { inputs = tonumber(n), ok = tonumber(ok), clean = tonumber(clean),
            failures = tonumber(failures), out_of_time = r.out:find("time budget of %d+ s reached") }
    end
    local what = string.format("fuzz %s (seed %d) ended with status %s; last input: %s\n%s",
        name, SEED, tostring(r.code), last:gsub("%s+$", ""), r.out:sub(-4000))
    if r.code == 137 then
        what = "HANG or too slow (killed after the timeout): " .. what
    elseif r.code and r.code > 128 then
        what = "CRASH (signal " .. (r.code - 128) .. "): " .. what
    end
    return summary, r, what
end

local function assert_clean(name, count, opts)
    local summary, r, what = harness(name, count, opts)
    assert.equal(0, r.code, what)
    assert.equal(0, summary.failures, what)
    local n = summary.inputs
    -- all of them, or the budget ran out after at least a tenth
    if n ~= count then
        assert.is_truthy(summary.out_of_time, what)
        assert.is_true(n >= count / 10, ("%s ran %d of %d inputs in its %d s budget: too few to "
            .. "mean anything\n%s"):format(name, n, count, BUDGET_S[name], what))
    end
    assert.equal(n, summary.ok + summary.clean)
    -- both ways through the code were taken, many times
    assert.is_true(summary.ok >= n / 20, what)
    assert.is_true(summary.clean >= n / 20, what)
    print(string.format("\n%s: %d of %d inputs, %d ok, %d clean errors", name, n, count, summary.ok,
        summary.clean))
    return summary, r
end

describe("fuzzing #unit", function()
    it("the filter language: " .. inputs(100000) .. " inputs parse, or fail with 'filter: ...' and a column", function()
        assert_clean("filter_fuzz", inputs(100000))
    end)

    it("pcap-filter expressions through netdevq.core.open: " .. inputs(200000) .. " inputs, clean errors",
        function()
        assert_clean("pcap_fuzz", inputs(200000), { isolated = true })
    end)

    it("the command line: " .. inputs(100000) .. " argv end in status 0, or 1/2 with a message", function()
        local summary, r = assert_clean("cli_fuzz", inputs(100000), { isolated = true })
        local traced = tonumber(r.out:match("cli: (%d+) runs traced"))
        assert.is_true(traced >= summary.inputs / 20, r.out:sub(-2000)) -- valid argv reached the tracing loop
    end)
end)

describe("fuzzing the BPF object loader #root", function()
    it(inputs(2000) .. " mutated objects in netdevq.core.open: a tracer or a clean error, never a crash", function()
        netns.require_root()
        -- each input loads the whole object (every program the verifier checks): ~0.3 s apiece
        assert_clean("elf_fuzz", inputs(2000))
    end)
end)
