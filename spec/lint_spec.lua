-- Lint and format, as CI runs them: luacheck (.luacheckrc) on every Lua file, clang-format
-- (.clang-format, kernel/libbpf style) and cppcheck on the C sources.
--
-- To reformat the C sources after an edit:  clang-format -i csrc/*.c csrc/*.h bpf/*.c bpf/*.h
local netns = require("support.netns")

local C_GLOBS = { "csrc/*.c", "csrc/*.h", "bpf/*.c", "bpf/*.h" }
local LUA_DIRS = { "lua", "spec", "scripts", "examples", "bench" }

local function tool(name, package)
    local ok = netns.run({ "sh", "-c", "command -v " .. name })
    assert(ok, name .. " not found: install " .. package .. " (./scripts/setup does)")
end

-- The files a shell glob names (sorted), from the top of the source tree.
local function glob(patterns)
    local files = {}
    for _, pattern in ipairs(patterns) do
        local ok, out = netns.run({ "sh", "-c", "for f in " .. pattern
            .. "; do [ -e \"$f\" ] && echo \"$f\"; done; true" })
        assert(ok, out)
        for f in out:gmatch("[^\n]+") do files[#files + 1] = f end
    end
    table.sort(files)
    return files
end

local function run(argv)
    local ok, out, code = netns.run(argv)
    return ok, table.concat(argv, " ") .. "  (exit " .. code .. ")\n" .. out
end

describe("lint #lint", function()
    it("finds no luacheck warnings in lua, spec, scripts, examples and bench", function()
        tool("luacheck", "lua-check")
        local argv = { "luacheck", "--no-color", "--codes", "--formatter", "plain" }
        for _, d in ipairs(LUA_DIRS) do
            if netns.run({ "test", "-d", d }) then argv[#argv + 1] = d end
        end
        local ok, out = run(argv)
        assert(ok, out)
    end)

    it("finds the rockspec consistent (luarocks lint)", function()
        tool("luarocks", "luarocks")
        local ok, out = run({ "luarocks", "lint", "rockspec/netdevq-scm-1.rockspec" })
        assert(ok, out)
    end)

    it("finds the C sources formatted as .clang-format says", function()
        tool("clang-format", "clang-format")
        local files = glob(C_GLOBS)
        assert.is_true(#files >= 4, "C sources: " .. table.concat(files, " "))
        local argv = { "clang-format", "--dry-run", "--Werror" }
        for _, f in ipairs(files) do argv[#argv + 1] = f end
        local ok, out = run(argv)
        assert(ok, out .. "\nreformat with: clang-format -i " .. table.concat(C_GLOBS, " "))
    end)

    it("finds no cppcheck warnings in the C module", function()
        tool("cppcheck", "cppcheck")
        -- libbpf's for_each macros come from a library file instead of the system headers
        local ok, out = run({ "cppcheck", "--error-exitcode=1", "--enable=warning,portability",
            "--inline-suppr", "--library=spec/support/cppcheck-libbpf.cfg", "--quiet", "-I", "bpf",
            "csrc/" })
        assert(ok, out)
    end)
end)
