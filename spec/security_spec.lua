-- Security properties of the CLI: -w files are created 0600 and never through a symlink; --cmd
-- runs its words directly (execvp), never through a shell; and no code is loaded but netdevq's
-- own: not a BPF object, Lua module or C module lying in the current directory (only --object
-- names another object).
local clirun = require("support.clirun")
local netns = require("support.netns")
local live = require("support.live")

local read_file, write_file = clirun.read_file, clirun.write_file

local function exists(path)
    return os.execute("test -e " .. clirun.quote(path) .. " -o -L " .. clirun.quote(path)) == 0
end

-- the CLI run from directory dir (sh gets dir and the script as arguments, never as code)
local function cli_in(dir, args, opts)
    local argv = { "sh", "-c", 'cd "$1" && shift && exec luajit "$@"', "sh", dir,
        clirun.top() .. "/scripts/netdevq.lua" }
    for _, a in ipairs(args) do
        argv[#argv + 1] = a
    end
    opts = opts or {}
    opts.env = opts.env or {}
    opts.env.NETDEVQ_BUILD = opts.env.NETDEVQ_BUILD or clirun.build_dir()
    return clirun.run(argv, opts)
end

-- plants code where a careless loader would look: the current directory
local function plant(dir)
    local marker = dir .. "/PLANTED-CODE-RAN"
    local lua = "io.open(" .. string.format("%q", marker) .. ", 'w'):close() os.exit(42)\n"
    assert(os.execute("mkdir -p " .. clirun.quote(dir .. "/netdevq/cli") .. " "
        .. clirun.quote(dir .. "/build/netdevq") .. " " .. clirun.quote(dir .. "/share/netdevq")) == 0)
    for _, name in ipairs({ "argparse.lua", "cjson.lua", "netdevq.lua", "netdevq/init.lua",
        "netdevq/cli.lua", "netdevq/cli/init.lua", "netdevq/core.lua", "bit.lua", "ffi.lua" }) do
        write_file(dir .. "/" .. name, lua)
    end
    for _, name in ipairs({ "cjson.so", "netdevq/core.so", "build/netdevq/core.so",
        "netdevq.bpf.o", "build/netdevq.bpf.o", "share/netdevq/netdevq.bpf.o" }) do
        write_file(dir .. "/" .. name, "not an object\n")
    end
    return marker
end

describe("netdevq CLI security #unit", function()
    local tmp
    live.tmpdir_each_test(function(d) tmp = d end)

    it("loads no Lua or C module from the current directory", function()
        local marker = plant(tmp)
        local r = cli_in(tmp, { "--version" })
        assert.same({ code = 0, out = "netdevq " .. require("netdevq")._VERSION .. "\n", err = "" }, r)
        -- through netdevq.open and the C module, up to the first check that needs no root
        r = cli_in(tmp, { "-f", "len > 1", "-d", "1" }, { env = { NETDEVQ_BTF_PATH = "/nonexistent" } })
        assert.same({ code = 1, out = "", err = "netdevq: kernel BTF not found at /nonexistent (No "
            .. "such file or directory): netdevq needs a kernel built with CONFIG_DEBUG_INFO_BTF=y\n" }, r)
        assert.is_false(exists(marker))
    end)

    it("refuses to write -w output through a symlink and leaves its target alone", function()
        local victim = tmp .. "/victim"
        write_file(victim, "precious\n")
        local link = tmp .. "/out.pcapng"
        assert(os.execute("ln -s " .. clirun.quote(victim) .. " " .. clirun.quote(link)) == 0)
        local r = clirun.cli({ "-w", link, "-d", "1" }, { env = { NETDEVQ_BTF_PATH = "/nonexistent" } })
        assert.same({ code = 1, out = "", err = "netdevq: pcapng: refusing to write " .. link
            .. ": it is a symbolic link (remove it or choose another path)\n" }, r)
        assert.equal("precious\n", read_file(victim))
        -- a dangling link: its target is not created either
        local dangling = tmp .. "/dangling.pcapng"
        local target = tmp .. "/would-be-created"
        assert(os.execute("ln -s " .. clirun.quote(target) .. " " .. clirun.quote(dangling)) == 0)
        r = clirun.cli({ "-w", dangling, "-d", "1" }, { env = { NETDEVQ_BTF_PATH = "/nonexistent" } })
        assert.equal(1, r.code)
        assert.equal("netdevq: pcapng: refusing to write " .. dangling .. ": it is a symbolic link "
            .. "(remove it or choose another path)\n", r.err)
        assert.is_false(exists(target))
    end)

    it("hands --cmd to no shell: an unbalanced quote is a usage error, not a shell's", function()
        local r = clirun.cli({ "--cmd", "echo 'a;b" })
        assert.same({ code = 2, out = "", err = "netdevq: --cmd: unterminated ' quote at column 6\n" }, r)
    end)
end)

describe("netdevq CLI security #root", function()
    local tmp

    before_each(function()
        netns.require_root()
    end)
    live.tmpdir_each_test(function(d) tmp = d end)

    it("creates -w files with mode 0600 whatever the umask", function()
        for _, umask in ipairs({ "000", "022", "077" }) do
            local path = tmp .. "/out-" .. umask .. ".pcapng"
            local r = clirun.run({ "sh", "-c", 'umask "$1" && shift && exec "$@"', "sh", umask,
                "luajit", clirun.top() .. "/scripts/netdevq.lua", "-w", path, "-d", "1",
                "-f", 'dev == "nonexistent0"' }, { env = { NETDEVQ_BUILD = clirun.build_dir() } })
            assert.equal(0, r.code, r.err)
            local p = io.popen("stat -c %a " .. clirun.quote(path))
            local mode = p:read("*l")
            p:close()
            assert.equal("600", mode, "umask " .. umask)
            -- a pcapng section header and nothing else: no packet matched
            assert.equal("\10\13\13\10", read_file(path):sub(1, 4))
        end
    end)

    it("passes ;, $(...) and backquotes in --cmd to the command literally", function()
        local pwned = tmp .. "/pwned"
        local cmd = "/bin/echo 'a;b' \"$(touch " .. pwned .. "1)\" ;touch " .. pwned
            .. "2 `touch " .. pwned .. "3` && touch " .. pwned .. "4 | x"
        local r = clirun.cli({ "-q", "--cmd", cmd })
        assert.equal(0, r.code, r.err)
        assert.equal("a;b $(touch " .. pwned .. "1) ;touch " .. pwned .. "2 `touch " .. pwned
            .. "3` && touch " .. pwned .. "4 | x\n", r.out)
        for i = 1, 4 do
            assert.is_false(exists(pwned .. i))
        end
        assert.matches("^netdevq: tracing net_dev_queue %(raw%) %.%.%. Ctrl%-C to stop\n"
            .. "netdevq: %d+ events, %d+ matched, 0 lost\n$", r.err)
    end)

    it("loads the embedded BPF object, not one lying in the current directory", function()
        local marker = plant(tmp)
        local r = cli_in(tmp, { "-q", "-d", "1", "--count", "dev" })
        assert.equal(0, r.code, r.err)
        assert.matches("^netdevq: tracing net_dev_queue %(raw%) %.%.%. Ctrl%-C to stop\n", r.err)
        assert.is_false(exists(marker))
        -- only --object names another one, and then that one is used (and refused here)
        r = cli_in(tmp, { "--object", "netdevq.bpf.o", "-d", "1" })
        assert.same({ code = 1, out = "", err = "netdevq: BPF object netdevq.bpf.o is not a valid "
            .. "netdevq object (BPF object format invalid): rebuild with scripts/setup\n" }, r)
    end)
end)
