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
local SLOWDOWN = ASAN and 2.5 or 1
local function inputs(n)
    return ASAN and math.floor(n / 5) or n
end

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
    local r = clirun.run(argv, { timeout = math.floor((opts.timeout or 170) * SLOWDOWN),
        env = { NDQ_FUZZ_PROGRESS = progress, NETDEVQ_BUILD = clirun.build_dir() } })
    local f = io.open(progress)
    local last = f and f:read("*l") or "(none)"
    if f then
        f:close()
    end
    clirun.rmtree(dir)
    local summary = {}
    local s = r.out:match("\n?(fuzz " .. name:gsub("_fuzz$", "") .. ": [^\n]+)\n")
    if s then
        local n, ok, clean, failures = s:match(": seed %d+, (%d+) inputs, (%d+) ok, (%d+) clean "
            .. "errors, (%d+) failures$")
        summary = { inputs = tonumber(n), ok = tonumber(ok), clean = tonumber(clean),
            failures = tonumber(failures) }
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
    assert.same({ inputs = count, failures = 0 }, { inputs = summary.inputs, failures = summary.failures },
        what)
    assert.equal(count, summary.ok + summary.clean)
    -- both ways through the code were taken, many times
    assert.is_true(summary.ok >= count / 20, what)
    assert.is_true(summary.clean >= count / 20, what)
    print(string.format("\n%s: %d inputs, %d ok, %d clean errors", name, count, summary.ok,
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
        local _, r = assert_clean("cli_fuzz", inputs(100000), { isolated = true })
        local traced = tonumber(r.out:match("cli: (%d+) runs traced"))
        assert.is_true(traced >= inputs(5000), r.out:sub(-2000)) -- valid argv reached the tracing loop
    end)
end)

describe("fuzzing the BPF object loader #root", function()
    it(inputs(2000) .. " mutated objects in netdevq.core.open: a tracer or a clean error, never a crash", function()
        netns.require_root()
        -- each input loads the whole object (every program the verifier checks): ~0.1 s apiece
        assert_clean("elf_fuzz", inputs(2000), { timeout = 400 })
    end)
end)
