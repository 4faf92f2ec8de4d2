-- rockspec/netdevq-scm-1.rockspec: `luarocks make` into a fresh tree builds and installs the C
-- module, the Lua modules, the BPF object and the `netdevq` command, which then run from another
-- directory with only that tree (and the system's Lua libraries) on the module paths.
local netns = require("support.netns")

local ROCKSPEC = "rockspec/netdevq-scm-1.rockspec"
local SOURCES = { "CMakeLists.txt", "bpf", "csrc", "lua", "scripts", "rockspec", "contrib" }
local EM_BPF = 247

local read_all = require("support.clirun").try_read

describe("rockspec: luarocks make into a fresh tree #root", function()
    local tmp, src, tree, cwd, source_top
    local tree_path, tree_cpath

    -- argv run from cwd (not the source tree) with the tree's module paths first; ";;" keeps
    -- the interpreter's defaults, where Debian's argparse and cjson live
    local function installed(argv)
        local full = { "env", "-u", "NETDEVQ_BUILD", "-C", cwd, "LUA_PATH=" .. tree_path .. ";;",
            "LUA_CPATH=" .. tree_cpath .. ";;" }
        for _, a in ipairs(argv) do full[#full + 1] = a end
        return netns.run(full)
    end

    lazy_setup(function()
        local ok, out = netns.run({ "mktemp", "-d", "/tmp/netdevq-rock.XXXXXX" })
        assert(ok, out)
        tmp = out:match("^(%S+)")
        src, tree, cwd = tmp .. "/src", tmp .. "/tree", tmp .. "/elsewhere"
        tree_path = tree .. "/share/lua/5.1/?.lua;" .. tree .. "/share/lua/5.1/?/init.lua"
        tree_cpath = tree .. "/lib/lua/5.1/?.so"
        local _, here = netns.run({ "pwd" })
        source_top = here:match("^(%S+)")
        assert(netns.run({ "mkdir", "-p", src, cwd }))
        -- a copy of the sources: luarocks builds in the checkout (build.luarocks/), and the
        -- working tree stays untouched by this spec
        local cp = { "cp", "-r" }
        for _, s in ipairs(SOURCES) do cp[#cp + 1] = source_top .. "/" .. s end
        cp[#cp + 1] = src
        ok, out = netns.run(cp)
        assert(ok, out)
    end)

    lazy_teardown(function()
        if tmp then netns.run({ "rm", "-rf", "--", tmp }) end
    end)

    it("checks the declared external dependencies before building", function()
        local ok, out = netns.run({ "env", "-C", src, "luarocks", "make", "--deps-mode=none",
            "--tree", tree, ROCKSPEC, "LIBBPF_DIR=" .. tmp .. "/nowhere" })
        assert.is_false(ok)
        assert.matches("Could not find header file for LIBBPF", out, 1, true)
        assert.is_nil(read_all(tree .. "/bin/netdevq"))
    end)

    it("builds and installs modules, BPF object and command", function()
        local ok, out = netns.run({ "env", "-C", src, "luarocks", "make", "--deps-mode=none",
            "--tree", tree, ROCKSPEC })
        assert(ok, "luarocks make failed:\n" .. out)
        for _, m in ipairs({ "init", "cli", "abi", "fields", "filter", "aggregate", "output",
                "pcapng", "words", "prometheus" }) do
            assert.equal(read_all(source_top .. "/lua/netdevq/" .. m .. ".lua"),
                read_all(tree .. "/share/lua/5.1/netdevq/" .. m .. ".lua"), m .. ".lua")
        end
        assert.truthy(read_all(tree .. "/lib/lua/5.1/netdevq/core.so"))
        assert.truthy(read_all(tree .. "/lib/lua/5.1/netdevq/http.so"))
        local share = tree .. "/lib/luarocks/rocks-5.1/netdevq/scm-1/share/netdevq/"
        local obj = assert(read_all(share .. "netdevq.bpf.o"), "no installed BPF object")
        assert.equal("\127ELF", obj:sub(1, 4))
        assert.equal(EM_BPF, obj:byte(19) + obj:byte(20) * 256) -- e_machine
        assert.equal(read_all(source_top .. "/bpf/netdevq.h"), read_all(share .. "netdevq.h"))
        -- the command is the launcher as is: LuaJIT, not a lua5.1 wrapper
        assert.equal(read_all(source_top .. "/scripts/netdevq.lua"), read_all(tree .. "/bin/netdevq"))
        ok, out = netns.run({ "luarocks", "list", "--tree", tree, "--porcelain" })
        assert(ok, out)
        assert.matches("^netdevq\tscm%-1\tinstalled\t", out)
    end)

    it("runs `netdevq` from another directory with the tree's modules", function()
        local ok, out = installed({ tree .. "/bin/netdevq", "--version" })
        assert(ok, out)
        local _, want = netns.run({ "luajit", source_top .. "/scripts/netdevq.lua", "--version" })
        assert.matches("^netdevq %d+%.%d+%.%d+\n$", out)
        assert.equal(want, out)
        ok, out = installed({ tree .. "/bin/netdevq", "--list-fields" })
        assert(ok, out)
        local _, fields = netns.run({ "luajit", source_top .. "/scripts/netdevq.lua", "--list-fields" })
        assert.equal(fields, out)
        assert.matches("\nmac_len ", out, 1, true)
    end)

    it("loads require(\"netdevq\") and its C module from the tree", function()
        local ok, out = installed({ "luajit", "-e", [[
            local netdevq = require("netdevq")
            io.write(netdevq._VERSION, "\n", package.searchpath("netdevq", package.path), "\n",
                package.searchpath("netdevq.core", package.cpath), "\n",
                tostring(package.loaded["netdevq.core"] == netdevq.core), "\n")
        ]] })
        assert(ok, out)
        local version = out:match("^(%S+)\n")
        assert.same({ version, tree .. "/share/lua/5.1/netdevq/init.lua",
            tree .. "/lib/lua/5.1/netdevq/core.so", "true" }, {
            out:match("^(%S+)\n(%S+)\n(%S+)\n(%S+)\n$") })
    end)

    it("traces for a bounded run with the installed command, embedded and installed object",
        function()
        netns.require_root()
        local share = tree .. "/lib/luarocks/rocks-5.1/netdevq/scm-1/share/netdevq/"
        for _, extra in ipairs({ {}, { "--object", share .. "netdevq.bpf.o" } }) do
            local argv = { tree .. "/bin/netdevq", "-d", "1", "-q" }
            for _, a in ipairs(extra) do argv[#argv + 1] = a end
            local ok, out = installed(argv)
            assert(ok, out)
            assert.matches("^netdevq: tracing net_dev_queue %(raw%) %.%.%. Ctrl%-C to stop\n"
                .. "netdevq: %d+ events, %d+ matched, %d+ lost\n$", out)
        end
    end)
end)
