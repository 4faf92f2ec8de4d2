-- netdevq as a rock: the C modules netdevq.core (with the BPF object embedded) and netdevq.http
-- (the Prometheus exporter's libmicrohttpd server), the Lua modules,
-- the BPF object and its ABI header (share/netdevq in the rock's directory) and the `netdevq`
-- command. From a source tree, as root or into your own tree:
--
--   ./scripts/setup --print-deps   # the Debian packages (libbpf-dev, clang, luajit, ...)
--   luarocks make --deps-mode=none --tree /opt/netdevq rockspec/netdevq-scm-1.rockspec
--   /opt/netdevq/bin/netdevq --version
--
-- --deps-mode=none when argparse and lua-cjson come from Debian (lua-argparse, lua-cjson), which
-- luarocks does not know about; without it luarocks fetches them from its own servers.
-- The command must run under LuaJIT: it is installed as is (not wrapped for the lua5.1 that
-- Debian's luarocks is configured with) and finds the modules relative to itself.
rockspec_format = "3.0"
package = "netdevq"
version = "scm-1"

source = {
   url = "git+https://example.invalid/netdevq.git", -- `luarocks make` builds the checkout at hand
}

description = {
   summary = "bpftrace-comparable tracer for the Linux net_dev_queue tracepoint, scripted from LuaJIT",
   detailed = [[
A precompiled libbpf CO-RE object attaches to net_dev_queue (raw_tp or tp_btf) and filters and
aggregates in the kernel; a small C module loads and polls it; Lua decides which sk_buff fields
to print, how to filter (field expressions or tcpdump expressions) and how to aggregate
(bpftrace-style maps and histograms). Writes text, JSON lines or pcapng.
]],
   labels = { "ebpf", "tracing", "networking", "luajit", "pcapng" },
   license = "GPL-2.0 OR BSD-2-Clause", -- as bpf/netdevq.bpf.c says
}

supported_platforms = { "linux" }

dependencies = {
   "lua >= 5.1, < 5.2", -- LuaJIT (the modules use ffi and bit)
   "argparse >= 0.6",
   "lua-cjson >= 2.1",
}

-- luarocks checks these before the build (the BPF object and the C module need them)
external_dependencies = {
   LIBBPF = { header = "bpf/libbpf.h", library = "bpf" },
   LIBELF = { header = "libelf.h", library = "elf" },
   LIBPCAP = { header = "pcap/pcap.h", library = "pcap" },
   LIBMICROHTTPD = { header = "microhttpd.h", library = "microhttpd" }, -- netdevq.http
   LUAJIT = { header = "luajit-2.1/luajit.h", library = "luajit-5.1" },
   CLANG = { program = "clang" },
   CMAKE = { program = "cmake" },
}

build = {
   type = "cmake",
   variables = {
      CMAKE_BUILD_TYPE = "RelWithDebInfo",
      CMAKE_INSTALL_PREFIX = "$(PREFIX)",
      NETDEVQ_LUADIR = "$(LUADIR)",
      NETDEVQ_LIBDIR = "$(LIBDIR)",
   },
   install = {
      bin = { netdevq = "scripts/netdevq.lua" },
   },
}

deploy = {
   wrap_bin_scripts = false,
}
