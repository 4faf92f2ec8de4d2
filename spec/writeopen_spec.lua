-- -w edge cases: an empty name is a usage error (no traceback); /dev/stdout is -w - (pcapng
-- only on stdout, nothing refused); an existing file ends up mode 0600 like a new one, while a
-- device such as /dev/null keeps its mode.
local clirun = require("support.clirun")
local netns = require("support.netns")

local SHB_MAGIC = "\10\13\13\10" -- the Section Header Block type, first bytes of a pcapng file

local function mode_of(path)
    local r = clirun.run({ "stat", "-c", "%a", path })
    assert.equal(0, r.code, r.err)
    return r.out:match("^(%d+)")
end

describe("-w FILE", function()
    it("'' is a usage error: one line, exit 2", function()
        local r = clirun.cli({ "-w", "" })
        assert.equal(2, r.code)
        assert.equal("netdevq: --write needs a file name (or - for standard output)\n", r.err)
        assert.equal("", r.out)
    end)

    it("pcapng.open('') returns nil and a message instead of raising", function()
        local pcapng = require("netdevq.pcapng")
        local w, err = pcapng.open("")
        assert.is_nil(w)
        assert.equal("pcapng: the file name is empty: give a path, or - for standard output", err)
        assert.is_true(pcapng.is_stdout("/dev/stdout"))
        assert.is_true(pcapng.is_stdout("-"))
        assert.is_false(pcapng.is_stdout("/tmp/stdout"))
    end)

    for _, name in ipairs({ "-", "/dev/stdout" }) do
        it(name .. " puts pcapng alone on standard output #root", function()
            netns.require_root()
            local r = clirun.cli({ "-w", name, "-d", "0.5" })
            assert.equal(0, r.code, r.err)
            assert.equal(SHB_MAGIC, r.out:sub(1, 4)) -- no event lines: -w - prints none
            assert.matches("^netdevq: tracing net_dev_queue .*\nnetdevq: %d+ events, %d+ matched, "
                .. "0 lost\n$", r.err)
        end)
    end

    it("an existing 0666 file ends up 0600; /dev/null keeps its mode #root", function()
        netns.require_root()
        local dir = clirun.tmpdir()
        finally(function() clirun.rmtree(dir) end)
        local path = dir .. "/old.pcapng"
        assert.equal(0, clirun.run({ "install", "-m", "0666", "/dev/null", path }).code)
        assert.equal("666", mode_of(path))
        local null_mode = mode_of("/dev/null")
        for _, target in ipairs({ path, "/dev/null" }) do
            local r = clirun.cli({ "-w", target, "-d", "0.3", "-q" })
            assert.equal(0, r.code, r.err)
        end
        assert.equal("600", mode_of(path))
        assert.equal(null_mode, mode_of("/dev/null"))
        local f = assert(io.open(path, "rb"))
        assert.equal(SHB_MAGIC, f:read(4))
        f:close()
    end)
end)
