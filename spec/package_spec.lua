-- The Debian package and the systemd unit: CMake's CPack DEB generator (NETDEVQ_DEB=ON) builds a
-- .deb from a copy of the sources; `dpkg-deb -c` must list the command, the Lua and C modules,
-- the BPF object, the exporter script, the unit and the docs; unpacked (`dpkg -x`) into an empty
-- root, the command runs from there (--version, a short real trace) with LUA_PATH/LUA_CPATH
-- pointing into it. Then the unit's ExecStart line runs as written: in a private mount
-- namespace the unpacked /usr and /etc lie over the host's (overlayfs, so the absolute paths of
-- the unit resolve to the package's files), /etc/default/netdevq configures it as an admin
-- would, the variables expand as systemd expands them, and the process gets only the unit's
-- CapabilityBoundingSet and NoNewPrivileges (setpriv). It must export the exact count of known
-- packets. (systemd is not PID 1 on the machines this runs on, so systemd-run is not used;
-- systemd-analyze verify checks the unit file.)
local netns = require("support.netns")
local live = require("support.live")
local clirun = require("support.clirun")

local SOURCES = { "CMakeLists.txt", "bpf", "csrc", "lua", "scripts", "contrib", "docs" }

local read_all, write_file, sh = clirun.try_read, clirun.write_file, clirun.read_cmd

-- systemd's unit-file view of the [Service] section: Environment= defaults, ExecStart, caps
local function parse_unit(text)
  local u = { env = {}, env_order = {} }
  for line in text:gmatch("[^\n]+") do
    local k, v = line:match("^(%w+)=(.*)$")
    if k == "Environment" then
      local name, value = v:match("^([%w_]+)=(.*)$")
      u.env[name] = value
      u.env_order[#u.env_order + 1] = name
    elseif k then
      u[k] = v
    end
  end
  return u
end

-- KEY=value lines of an EnvironmentFile; a value in single quotes loses them (as systemd does)
local function read_env_file(text, env)
  for line in text:gmatch("[^\n]+") do
    local name, value = line:match("^([%w_]+)=(.*)$")
    if name then env[name] = value:match("^'(.*)'$") or value end
  end
end

-- ExecStart words with ${VAR} words replaced by one argument each (systemd's rule)
local function expand(exec, env)
  local argv = {}
  for word in exec:gmatch("%S+") do
    local name = word:match("^%${([%w_]+)}$")
    if name then argv[#argv + 1] = env[name] or "" else argv[#argv + 1] = word end
  end
  return argv
end

describe("the Debian package (CPack DEB) and the systemd unit #root", function()
  live.no_leftovers()
  local tmp, deb, root, multiarch, source_top

  local function in_root_env(argv)
    local full = { "env", "-u", "NETDEVQ_BUILD", "-C", tmp,
      "LUA_PATH=" .. root .. "/usr/share/lua/5.1/?.lua;" .. root .. "/usr/share/lua/5.1/?/init.lua;;",
      "LUA_CPATH=" .. root .. "/usr/lib/" .. multiarch .. "/lua/5.1/?.so;;" }
    for _, a in ipairs(argv) do full[#full + 1] = a end
    return full
  end

  lazy_setup(function()
    netns.require_root()
    tmp = clirun.tmpdir()
    source_top = clirun.top()
    multiarch = sh("gcc -print-multiarch"):match("(%S+)")
    local src, build = tmp .. "/src", tmp .. "/build"
    root = tmp .. "/root"
    local cp = { "mkdir -p", src, root, "&& cp -r" }
    for _, s in ipairs(SOURCES) do cp[#cp + 1] = clirun.quote(source_top .. "/" .. s) end
    cp[#cp + 1] = src
    assert(os.execute(table.concat(cp, " ")) == 0)
    local r = clirun.run({ "sh", "-c", "cmake -S " .. src .. " -B " .. build
      .. " -DNETDEVQ_DEB=ON -DCMAKE_INSTALL_PREFIX=/usr >/dev/null && cmake --build " .. build
      .. " -j2 >/dev/null && cd " .. build .. " && cpack -G DEB" }, { timeout = 600 })
    assert(r.code == 0, r.out .. r.err)
    deb = build .. "/netdevq_0.1.0_" .. sh("dpkg --print-architecture"):match("(%S+)") .. ".deb"
    assert(read_all(deb), "no " .. deb .. ":\n" .. r.out)
  end)

  lazy_teardown(function()
    if tmp then clirun.rmtree(tmp) end
  end)

  it("lists the command, modules, BPF object, exporter, unit and docs", function()
    local listing = sh("dpkg-deb -c " .. deb)
    local files = {}
    for path in listing:gmatch("%s%.(/%S+)\n") do
      if not path:match("/$") then files[#files + 1] = path end
    end
    table.sort(files)
    local lib = "/usr/lib/" .. multiarch .. "/lua/5.1/netdevq/"
    local want = {
      "/usr/bin/netdevq", lib .. "core.so", lib .. "http.so",
      "/usr/lib/systemd/system/netdevq.service", "/usr/share/doc/netdevq/prometheus.md",
      "/usr/share/netdevq/exporter.lua", "/usr/share/netdevq/netdevq.bpf.o",
      "/usr/share/netdevq/netdevq.h",
    }
    for m in sh("ls " .. source_top .. "/lua/netdevq"):gmatch("(%S+)%.lua") do
      want[#want + 1] = "/usr/share/lua/5.1/netdevq/" .. m .. ".lua"
    end
    table.sort(want)
    assert.same(want, files)
    assert.equal("-rwxr-xr-x root/root", listing:match("\n(%S+ %S+)%s+%d+ [^\n]- %./usr/bin/netdevq\n"))
    local control = sh("dpkg-deb -f " .. deb .. " Package Version Depends")
    assert.matches("^Package: netdevq\nVersion: 0%.1%.0\nDepends: luajit, lua%-cjson, lua%-argparse, ",
      control)
    for _, dep in ipairs({ "libbpf1", "libmicrohttpd12", "libpcap0.8" }) do
      assert.matches(dep, control, 1, true)
    end
  end)

  it("runs the unpacked command from a clean root: --version and a short real trace", function()
    assert(os.execute("dpkg -x " .. deb .. " " .. root) == 0)
    local r = clirun.run(in_root_env({ root .. "/usr/bin/netdevq", "--version" }))
    assert.equal(0, r.code)
    assert.equal("netdevq 0.1.0\n", r.out)
    -- the modules come from the root, not from the source tree or a build
    r = clirun.run(in_root_env({ "luajit", "-e", [[io.write(
      package.searchpath("netdevq.prometheus", package.path), "\n",
      package.searchpath("netdevq.http", package.cpath), "\n")]] }))
    assert.equal(root .. "/usr/share/lua/5.1/netdevq/prometheus.lua\n" .. root .. "/usr/lib/"
      .. multiarch .. "/lua/5.1/netdevq/http.so\n", r.out)

    local pair, bg = assert(netns.pair{ name = "ndqdeb" }), nil
    -- busted keeps only the last finally of a test: one for all this test starts
    finally(function()
      if bg then bg:kill("KILL"); bg:wait(5) end
      pair:destroy()
    end)
    bg = clirun.spawn(in_root_env({ root .. "/usr/bin/netdevq", "-n", "5", "-o", "dev,proto,len",
      "-f", ('netns == %d and proto == "udp"'):format(pair.netns_a) }))
    assert(bg:wait_err("tracing net_dev_queue", 30), bg:err_text())
    assert(pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, "9000", "40000", "58", "5" }))
    r = bg:wait(30)
    assert.equal(0, r.code)
    local want = {}
    for i = 1, 5 do want[i] = ("%s udp 100"):format(pair.veth_a) end
    local got = clirun.lines(r.out)
    for i = 1, #got do got[i] = got[i]:gsub("%s+", " ") end
    assert.same(want, got)
  end)

  it("runs the unit's ExecStart as written, with its capabilities, and exports the counts", function()
    if not read_all(root .. "/usr/bin/netdevq") then
      assert(os.execute("dpkg -x " .. deb .. " " .. root) == 0)
    end
    local unit_text = assert(read_all(root .. "/usr/lib/systemd/system/netdevq.service"))
    assert.equal(read_all(source_top .. "/contrib/netdevq.service"), unit_text)
    local unit = parse_unit(unit_text)
    assert.equal("on-failure", unit.Restart)
    assert.equal("journal", unit.StandardError)
    assert.equal("-/etc/default/netdevq", unit.EnvironmentFile)

    local pair, bg = assert(netns.pair{ name = "ndqunit" }), nil
    -- busted keeps only the last finally of a test: one for all this test starts
    finally(function()
      if bg then bg:kill("KILL"); bg:wait(5) end
      pair:destroy()
    end)
    local port = assert(require("netdevq.http").serve{ port = 0 })
    local free = port:port()
    port:close()
    -- configured as an admin would: /etc/default/netdevq
    assert(os.execute("mkdir -p " .. root .. "/etc/default") == 0)
    local default = ("NETDEVQ_LISTEN=127.0.0.1:%d\nNETDEVQ_FILTER='netns == %d and proto == \"udp\"'\n")
      :format(free, pair.netns_a)
    write_file(root .. "/etc/default/netdevq", default)
    local env = {}
    for _, k in ipairs(unit.env_order) do env[k] = unit.env[k] end
    read_env_file(default, env)
    local argv = expand(unit.ExecStart, env)
    assert.same({ "/usr/bin/netdevq", "/usr/share/netdevq/exporter.lua", "127.0.0.1:" .. free,
      ('netns == %d and proto == "udp"'):format(pair.netns_a) }, argv)
    -- CapabilityBoundingSet=CAP_BPF CAP_PERFMON ... -> setpriv --bounding-set -all,+bpf,+perfmon
    local caps = { "-all" }
    for cap in unit.CapabilityBoundingSet:gmatch("CAP_(%S+)") do caps[#caps + 1] = "+" .. cap:lower() end
    assert.equal("yes", unit.NoNewPrivileges)
    local exec = { "setpriv", "--bounding-set", table.concat(caps, ","), "--no-new-privs" }
    for _, a in ipairs(argv) do exec[#exec + 1] = a end
    local quoted = {}
    for i, a in ipairs(exec) do quoted[i] = clirun.quote(a) end
    local script = table.concat({
      "mount -t overlay overlay -o lowerdir=" .. root .. "/usr:/usr /usr",
      "mount -t overlay overlay -o lowerdir=" .. root .. "/etc:/etc /etc",
      "systemd-analyze verify /usr/lib/systemd/system/netdevq.service >&2",
      "exec " .. table.concat(quoted, " ") }, " && ")
    bg = clirun.spawn({ "unshare", "-m", "--propagation", "private", "sh", "-c", script })
    assert(bg:wait_err("netdevq: exporting on http://127%.0%.0%.1:" .. free .. "/metrics\n", 30),
      bg:err_text())
    assert.equal("netdevq: exporting on http://127.0.0.1:" .. free .. "/metrics\n", bg:err_text())
    assert(pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, "9000", "40000", "58", "7" }))
    local series = ('netdevq_packet_len_bytes_count{dev="%s",proto="udp"} '):format(pair.veth_a)
    local text
    for _ = 1, 40 do
      text = sh("curl -s --max-time 5 http://127.0.0.1:" .. free .. "/metrics")
      if text:find(series .. "7\n", 1, true) then break end
      clirun.sleep(0.25)
    end
    assert.matches(series .. "7\n", text, 1, true)
    assert.matches(('netdevq_packet_len_bytes_sum{dev="%s",proto="udp"} 700\n'):format(pair.veth_a),
      text, 1, true)
    assert.matches(('netdevq_packet_len_bytes_bucket{dev="%s",proto="udp",le="127"} 7\n')
      :format(pair.veth_a), text, 1, true)
    bg:kill("TERM")
    local r = bg:wait(20)
    assert.equal(0, r.code)
    assert.matches("\nnetdevq: %d+ events, 0 lost\n$", r.err)
    -- nothing of the overlay is left in the host's mount table
    assert.is_nil(sh("cat /proc/self/mounts"):find(root, 1, true))
  end)
end)
