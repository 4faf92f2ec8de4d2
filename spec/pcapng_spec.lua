-- Writes pcapng files from packets built byte by byte here and reads them back with tshark,
-- capinfos and a small block parser of our own.
local ffi = require("ffi")
local bit = require("bit")
local clirun = require("support.clirun")

local band, rshift, bxor = bit.band, bit.rshift, bit.bxor

-- Helpers ------------------------------------------------------------------------------------

local shell_quote, run, read_file = clirun.quote, clirun.read_cmd, clirun.read_file

local function be16(n) return string.char(rshift(n, 8) % 256, n % 256) end
local function be32(n) return be16(math.floor(n / 65536)) .. be16(n % 65536) end

local function csum(s)
  local sum = 0
  if #s % 2 == 1 then s = s .. "\0" end
  for i = 1, #s, 2 do sum = sum + s:byte(i) * 256 + s:byte(i + 1) end
  while sum > 0xffff do sum = band(sum, 0xffff) + rshift(sum, 16) end
  return bxor(sum, 0xffff)
end

local function ip4(a, b, c, d) return string.char(a, b, c, d) end

local function ipv6_addr(last) -- 2001:db8::last
  return "\32\1\13\184" .. string.rep("\0", 11) .. string.char(last)
end

local function ipv4_packet(src, dst, proto, l4, total_len)
  total_len = total_len or 20 + #l4
  local h = "\69\0" .. be16(total_len) .. be16(0x1234) .. "\64\0" .. "\64" .. string.char(proto)
    .. "\0\0" .. src .. dst
  h = h:sub(1, 10) .. be16(csum(h)) .. h:sub(13)
  return h .. l4
end

local function udp4(src, dst, sport, dport, payload)
  local len = 8 + #payload
  local pseudo = src .. dst .. "\0\17" .. be16(len)
  local u = be16(sport) .. be16(dport) .. be16(len) .. "\0\0" .. payload
  return u:sub(1, 6) .. be16(csum(pseudo .. u)) .. u:sub(9)
end

local function tcp6_syn(src, dst, sport, dport)
  -- 24-byte header: data offset 6, SYN, window 64240, MSS 1460
  local t = be16(sport) .. be16(dport) .. be32(1000) .. be32(0) .. "\96\2" .. be16(64240)
    .. "\0\0\0\0" .. "\2\4" .. be16(1460)
  local pseudo = src .. dst .. be32(#t) .. "\0\0\0\6"
  return t:sub(1, 16) .. be16(csum(pseudo .. t)) .. t:sub(19)
end

local function ipv6_packet(src, dst, next_header, l4)
  return "\96\0\0\0" .. be16(#l4) .. string.char(next_header) .. "\64" .. src .. dst .. l4
end

local function icmp_echo(id, seq, payload_len)
  local payload = {}
  for i = 0, payload_len - 1 do payload[#payload + 1] = string.char(i % 256) end
  local m = "\8\0\0\0" .. be16(id) .. be16(seq) .. table.concat(payload)
  return m:sub(1, 2) .. be16(csum(m)) .. m:sub(5)
end

local function ether(dst, src, ethertype, payload)
  return dst .. src .. be16(ethertype) .. payload
end

local MAC_A, MAC_B = "\2\0\0\0\0\1", "\2\0\0\0\0\2"
local V4_A, V4_B, V4_C = ip4(198, 18, 0, 1), ip4(198, 18, 0, 2), ip4(198, 19, 0, 1)

-- Ethernet + IPv4 + UDP 40000 -> 7777 with 1000 payload bytes: 1042 bytes on the wire.
local function udp_frame()
  local payload = string.rep("x", 1000)
  return ether(MAC_B, MAC_A, 0x0800, ipv4_packet(V4_A, V4_B, 17, udp4(V4_A, V4_B, 40000, 7777, payload)))
end

-- Ethernet + IPv6 + TCP SYN 40001 -> 443: 78 bytes.
local function syn6_frame()
  local a, b = ipv6_addr(1), ipv6_addr(2)
  return ether(MAC_B, MAC_A, 0x86dd, ipv6_packet(a, b, 6, tcp6_syn(a, b, 40001, 443)))
end

-- Raw IPv4 + ICMP echo request with 56 payload bytes: 84 bytes, no link header.
local function icmp_raw()
  return ipv4_packet(V4_C, V4_B, 1, icmp_echo(0x4242, 1, 56))
end

local TSHARK_FIELDS = { "frame.len", "frame.cap_len", "ip.src", "ipv6.src", "udp.dstport",
  "tcp.flags", "frame.comment", "frame.interface_name", "frame.time_epoch" }

local function tshark(path, fields, options)
  local cmd = { "tshark -r", shell_quote(path), "-T fields", options }
  for _, f in ipairs(fields or TSHARK_FIELDS) do cmd[#cmd + 1] = "-e " .. f end
  cmd[#cmd + 1] = "2>/dev/null"
  local rows = {}
  for line in run(table.concat(cmd, " ")):gmatch("([^\n]*)\n") do
    local row = {}
    for v in (line .. "\t"):gmatch("([^\t]*)\t") do row[#row + 1] = v end
    rows[#rows + 1] = row
  end
  return rows
end

-- Our own reading of the block structure: every block's lengths agree and are 4-aligned.
local function blocks(path)
  local s = read_file(path)
  local p = ffi.cast("const uint8_t *", s)
  local function u32(o) return ffi.cast("const uint32_t *", p + o)[0] end
  local function u16(o) return ffi.cast("const uint16_t *", p + o)[0] end
  local out, off = {}, 0
  while off < #s do
    local btype, len = u32(off), u32(off + 4)
    assert(len % 4 == 0 and len >= 12 and off + len <= #s, "bad block length at " .. off)
    assert(u32(off + len - 4) == len, "trailing length differs at " .. off)
    local b = { type = btype, len = len }
    if btype == 1 then
      b.linktype, b.snaplen = u16(off + 8), u32(off + 12)
      b.options = {}
      local o = off + 16
      while o < off + len - 4 do
        local code, olen = u16(o), u16(o + 2)
        if code == 0 then break end
        b.options[code] = ffi.string(p + o + 4, olen)
        o = o + 4 + band(olen + 3, -4)
      end
    end
    out[#out + 1] = b
    off = off + len
  end
  return out
end

local function idbs(path)
  local list = {}
  for _, b in ipairs(blocks(path)) do
    if b.type == 1 then list[#list + 1] = b end
  end
  return list
end

local function file_mode(path)
  return run("stat -c %a " .. shell_quote(path)):match("%d+")
end

-- A private copy of struct netdevq_event (renamed, so that it never clashes with abi.lua's).
local function event_type()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local root = src:match("^(.*)/spec/[^/]*$") or "."
  local header = read_file(root .. "/bpf/netdevq.h")
  local body = assert(header:match("struct netdevq_event%s*(%b{})"), "struct netdevq_event in netdevq.h")
  body = body:gsub("/%*.-%*/", ""):gsub("__u64", "uint64_t"):gsub("__u32", "uint32_t")
    :gsub("__u16", "uint16_t"):gsub("__u8", "uint8_t")
  pcall(ffi.cdef, "struct ndq_pcapng_spec_event " .. body .. ";")
  return ffi.typeof("struct ndq_pcapng_spec_event")
end

pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } ndq_pcapng_spec_timespec;
int ndq_pcapng_spec_clock_gettime(int, ndq_pcapng_spec_timespec *) __asm__("clock_gettime");
]])

local function monotonic_ns()
  local t = ffi.new("ndq_pcapng_spec_timespec")
  ffi.C.ndq_pcapng_spec_clock_gettime(1, t)
  return ffi.cast("uint64_t", t.tv_sec) * 1000000000ULL + t.tv_nsec
end

-- Specs --------------------------------------------------------------------------------------

describe("netdevq.pcapng #unit", function()
  local pcapng, tmpdir, n = nil, nil, 0

  local function tmp(name)
    n = n + 1
    return tmpdir .. "/" .. n .. "-" .. (name or "out.pcapng")
  end

  setup(function()
    pcapng = require("netdevq.pcapng")
    tmpdir = run("mktemp -d /tmp/ndq-pcapng.XXXXXXXX"):match("^(/tmp/ndq%-pcapng%.%w+)\n$")
    assert(tmpdir, "mktemp -d failed")
  end)

  teardown(function()
    if tmpdir then os.execute("rm -rf -- " .. shell_quote(tmpdir)) end
  end)

  describe("write_packet", function()
    local path

    setup(function()
      path = tmp("three.pcapng")
      local w = assert(pcapng.open(path))
      local udp = udp_frame()
      assert(w:write_packet{ dev = "veth0", linktype = pcapng.LINKTYPE_ETHERNET,
        ts_ns = 1700000000123456789ULL, data = udp, caplen = 64, origlen = #udp,
        comment = "comm: ndq_send, pid: 5130, tid: 5130, queue: 0, mark: 0" })
      local syn = syn6_frame()
      assert(w:write_packet{ dev = "veth0", ts_ns = 1700000001000000000, data = syn,
        comment = "comm: curl, pid: 7, tid: 8, queue: 1, mark: 42" })
      local icmp = icmp_raw()
      local buf = ffi.new("uint8_t[?]", #icmp)
      ffi.copy(buf, icmp, #icmp)
      assert(w:write_packet{ dev = "tun0", linktype = pcapng.LINKTYPE_RAW,
        ts_ns = 1700000002000000001ULL, data = buf, caplen = #icmp, origlen = #icmp })
      assert.equal(2, w:interfaces())
      assert(w:close())
    end)

    it("writes packets tshark reads back: exact lengths, addresses, ports, flags, comments, ns times", function()
      assert.same({
        { "1042", "64", "198.18.0.1", "", "7777", "", "comm: ndq_send, pid: 5130, tid: 5130, queue: 0, mark: 0",
          "veth0", "1700000000.123456789" },
        { "78", "78", "", "2001:db8::1", "", "0x0002", "comm: curl, pid: 7, tid: 8, queue: 1, mark: 42",
          "veth0", "1700000001.000000000" },
        { "84", "84", "198.19.0.1", "", "", "", "", "tun0", "1700000002.000000001" },
      }, tshark(path))
    end)

    it("decodes the protocols it was given, checksums good (1)", function()
      assert.same({
        { "eth:ethertype:ip:udp:data", "1", "", "" },
        { "eth:ethertype:ipv6:tcp", "", "1", "" },
        { "raw:ip:icmp:data", "1", "", "1" },
      }, tshark(path, { "frame.protocols", "ip.checksum.status", "tcp.checksum.status", "icmp.checksum.status" },
        "-o ip.check_checksum:TRUE -o tcp.check_checksum:TRUE"))
    end)

    it("writes one IDB per device and link type: Ethernet (1) and raw IP (101), ns resolution", function()
      local list = idbs(path)
      assert.equal(2, #list)
      local function idb(b) return { b.linktype, b.snaplen, b.options[2], b.options[9] } end
      assert.same({ 1, 0, "veth0", "\9" }, idb(list[1]))
      assert.same({ 101, 0, "tun0", "\9" }, idb(list[2]))
      local info = run("capinfos -I " .. shell_quote(path) .. " 2>&1")
      assert.matches("Number of interfaces in file: 2", info, 1, true)
      assert.matches("Name = veth0%s+Encapsulation = Ethernet %(1 %- ether%)", info)
      assert.matches("Name = tun0%s+Encapsulation = Raw IP", info)
      local _, resolutions = info:gsub("Time precision = nanoseconds %(9%)", "")
      assert.equal(2, resolutions)
    end)

    it("starts with a section header naming netdevq and uses block types SHB, IDB, EPB", function()
      local types = {}
      for _, b in ipairs(blocks(path)) do types[#types + 1] = b.type end
      assert.same({ 0x0A0D0D0A, 1, 6, 6, 1, 6 }, types)
      local s = read_file(path)
      assert.equal("\77\60\43\26", s:sub(9, 12))  -- 0x1A2B3C4D, little endian on this machine
      assert.truthy(s:find("netdevq", 1, true))
    end)

    it("gives the same device name with another link type its own interface", function()
      local p = tmp()
      local w = assert(pcapng.open(p))
      assert(w:write_packet{ dev = "veth0", ts_ns = 1, data = syn6_frame() })
      assert(w:write_packet{ dev = "veth0", linktype = 101, ts_ns = 2, data = icmp_raw() })
      assert(w:write_packet{ dev = "veth0", ts_ns = 3, data = syn6_frame() })
      assert(w:close())
      assert.same({ { "0", "veth0" }, { "1", "veth0" }, { "0", "veth0" } },
        tshark(p, { "frame.interface_id", "frame.interface_name" }))
      local list = idbs(p)
      assert.same({ 1, 101 }, { list[1].linktype, list[2].linktype })
    end)

    it("cuts captures to snaplen, keeps the original length and records snaplen in the IDB", function()
      local p = tmp()
      local w = assert(pcapng.open(p, { snaplen = 60 }))
      local udp = udp_frame()
      assert(w:write_packet{ dev = "eth9", ts_ns = 5, data = udp })
      assert(w:close())
      assert.same({ { "1042", "60", "198.18.0.1" } }, tshark(p, { "frame.len", "frame.cap_len", "ip.src" }))
      assert.equal(60, idbs(p)[1].snaplen)
    end)

    it("buffers: packets reach the file on flush, not one write per packet", function()
      local p = tmp()
      local w = assert(pcapng.open(p))
      local shb_only = #read_file(p)
      assert.equal(44, shb_only)   -- the SHB is written at open
      for i = 1, 3 do assert(w:write_packet{ dev = "lo", ts_ns = i, data = syn6_frame() }) end
      assert.equal(shb_only, #read_file(p))
      assert(w:flush())
      assert.equal(3, #tshark(p, { "frame.len" }))
      assert(w:close())
    end)

    it("writes thousands of packets and packets bigger than its buffer", function()
      local p = tmp()
      local w = assert(pcapng.open(p))
      local syn = syn6_frame()
      for i = 1, 3000 do
        assert(w:write_packet{ dev = "lo", ts_ns = 1700000000000000000ULL + i, data = syn })
      end
      local big = string.rep("\0", 12) .. "\8\0" .. string.rep("z", 150000)
      assert(w:write_packet{ dev = "lo", ts_ns = 1, data = big })
      assert(w:close())
      local rows = tshark(p, { "frame.cap_len", "frame.time_epoch" })
      assert.equal(3001, #rows)
      assert.same({ "78", "1700000000.000003000" }, rows[3000])
      assert.same({ "150014", "0.000000001" }, rows[3001])
    end)
  end)

  describe("write_event", function()
    local event_t

    setup(function()
      event_t = event_type()
    end)

    local function event(t)
      local ev = event_t()
      for k, v in pairs(t) do
        if k == "snap" then
          ffi.copy(ev.snap, v, math.min(#v, 256))
          ev.snap_len = math.min(#v, 256)
        elseif k == "comm" or k == "dev" then
          ffi.copy(ev[k], v)
        else
          ev[k] = v
        end
      end
      return ev
    end

    it("takes link type, bytes, lengths, device and the comment from the event", function()
      local p = tmp()
      local w = assert(pcapng.open(p, { snaplen = 256 }))
      local udp = udp_frame()
      local ev = event{ flags = 1, snap = udp:sub(1, 96), len = #udp, dev = "ndqa1", ifindex = 7,
        netns = 4026531840, comm = "curl", pid = 5130, tid = 5131, queue = 2, mark = 0xdeadbeef,
        dev_type = 1, ts = 12345 }
      assert(w:write_event(ffi.cast("const struct ndq_pcapng_spec_event *", ev), 1700000003000000007ULL))
      local icmp = icmp_raw()
      local raw = event{ flags = 0, snap = icmp, len = #icmp, dev = "wg0", ifindex = 9, netns = 4026532000,
        comm = "a\tb\200c", pid = 1, tid = 2, queue = 65535, mark = 0, dev_type = 65534 }
      assert(w:write_event(raw, 1700000004000000000))
      assert(w:write_event(ev, 1700000005000000000ULL))   -- same device: no new interface
      assert.equal(2, w:interfaces())
      assert(w:close())
      assert.same({
        { "1042", "96", "198.18.0.1", "", "7777", "", "comm: curl, pid: 5130, tid: 5131, queue: 2, mark: 3735928559",
          "ndqa1", "1700000003.000000007" },
        { "84", "84", "198.19.0.1", "", "", "", "comm: a\\x09b\\xc8c, pid: 1, tid: 2, queue: 65535, mark: 0",
          "wg0", "1700000004.000000000" },
        { "1042", "96", "198.18.0.1", "", "7777", "", "comm: curl, pid: 5130, tid: 5131, queue: 2, mark: 3735928559",
          "ndqa1", "1700000005.000000000" },
      }, tshark(p))
      local list = idbs(p)
      assert.same({ 1, 256, "ndqa1", "ifindex 7, netns 4026531840" },
        { list[1].linktype, list[1].snaplen, list[1].options[2], list[1].options[3] })
      assert.same({ 101, 256, "wg0", "ifindex 9, netns 4026532000" },
        { list[2].linktype, list[2].snaplen, list[2].options[2], list[2].options[3] })
    end)

    it("skips the link bytes of a device without an Ethernet header", function()
      local p = tmp()
      local w = assert(pcapng.open(p))
      local icmp = icmp_raw()
      assert(w:write_event(event{ flags = 0, snap = "\0\0\8\0" .. icmp, l2_len = 4, len = 4 + #icmp,
        dev = "gre9", ifindex = 3, comm = "x" }, 1))
      assert(w:close())
      assert.same({ { "84", "84", "198.19.0.1", "raw:ip:icmp:data" } },
        tshark(p, { "frame.len", "frame.cap_len", "ip.src", "frame.protocols" }))
    end)

    it("leaves comments out with comments = false", function()
      local p = tmp()
      local w = assert(pcapng.open(p, { comments = false }))
      assert(w:write_event(event{ flags = 1, snap = syn6_frame(), len = 78, dev = "lo", ifindex = 1 }, 1))
      assert(w:close())
      assert.same({ { "78", "" } }, tshark(p, { "frame.len", "frame.comment" }))
    end)

    it("turns the monotonic ev.ts into wall-clock time when no unix time is given", function()
      local p = tmp()
      local w = assert(pcapng.open(p))
      assert(w:write_event(event{ flags = 1, snap = syn6_frame(), len = 78, dev = "lo", ifindex = 1,
        ts = monotonic_ns() }))
      assert(w:close())
      local t = tonumber(tshark(p, { "frame.time_epoch" })[1][1])
      assert.is_true(math.abs(t - os.time()) < 5, "time_epoch " .. t .. " vs now " .. os.time())
    end)
  end)

  describe("open", function()
    it("creates files with mode 0600", function()
      local p = tmp()
      local w = assert(pcapng.open(p))
      assert(w:close())
      assert.equal("600", file_mode(p))
    end)

    it("refuses to write through a symlink, dangling or not, and leaves the target alone", function()
      local target, link, dangling = tmp("target"), tmp("link"), tmp("dangling")
      local f = assert(io.open(target, "w"))
      f:write("keep me")
      f:close()
      assert(os.execute("ln -s " .. shell_quote(target) .. " " .. shell_quote(link)))
      assert(os.execute("ln -s " .. shell_quote(tmpdir .. "/nowhere") .. " " .. shell_quote(dangling)))
      local w, err = pcapng.open(link)
      assert.is_nil(w)
      assert.equal("pcapng: refusing to write " .. link
        .. ": it is a symbolic link (remove it or choose another path)", err)
      w, err = pcapng.open(dangling)
      assert.is_nil(w)
      assert.matches("it is a symbolic link", err, 1, true)
      assert.equal("keep me", read_file(target))
      assert.is_nil(io.open(tmpdir .. "/nowhere"))
    end)

    it("truncates an existing regular file", function()
      local p = tmp()
      local f = assert(io.open(p, "w"))
      f:write(string.rep("old", 1000))
      f:close()
      local w = assert(pcapng.open(p))
      assert(w:write_packet{ dev = "lo", ts_ns = 1, data = syn6_frame() })
      assert(w:close())
      assert.equal(1, #tshark(p, { "frame.len" }))
    end)

    it("returns nil and a message for a directory that does not exist", function()
      local w, err = pcapng.open(tmpdir .. "/missing/out.pcapng")
      assert.is_nil(w)
      assert.equal("pcapng: cannot create " .. tmpdir .. "/missing/out.pcapng: No such file or directory", err)
    end)

    it("writes to standard output for '-'", function()
      local p = tmp()
      local src = debug.getinfo(1, "S").source:gsub("^@", "")
      local root = src:match("^(.*)/spec/[^/]*$") or "."
      local script = [[
        local pcapng = require("netdevq.pcapng")
        local w = assert(pcapng.open("-"))
        assert(w:write_packet{ dev = "lo", ts_ns = 1700000000000000001ULL, data = string.rep("\0", 12) .. "\8\0" })
        assert(w:close())
      ]]
      assert(os.execute("cd " .. shell_quote(root) .. " && LUA_PATH='lua/?.lua;;' luajit -e "
        .. shell_quote(script) .. " > " .. shell_quote(p)))
      assert.same({ { "14", "lo", "1700000000.000000001" } },
        tshark(p, { "frame.len", "frame.interface_name", "frame.time_epoch" }))
    end)

    it("writes to an io file handle and leaves it open", function()
      local p = tmp()
      local fh = assert(io.open(p, "wb"))
      local w = assert(pcapng.open(fh))
      assert(w:write_packet{ dev = "lo", ts_ns = 1, data = syn6_frame() })
      assert(w:close())
      assert.equal("file", io.type(fh))
      fh:close()
      assert.same({ { "78" } }, tshark(p, { "frame.len" }))
    end)

    it("raises on misuse", function()
      assert.has_error(function() pcapng.open(42) end, "pcapng.open: expects a path, \"-\" or an io file handle")
      assert.has_error(function() pcapng.open(tmp(), { snaplen = -1 }) end)
      local w = assert(pcapng.open(tmp()))
      assert.has_error(function() w:write_packet{ ts_ns = 1, data = "x" } end,
        "pcapng: write_packet needs dev (string)")
      assert.has_error(function() w:write_packet{ dev = "lo", data = "x" } end)
      assert.has_error(function() w:write_packet{ dev = "lo", ts_ns = 1, data = ffi.new("char[4]") } end)
      assert(w:close())
    end)
  end)

  describe("close", function()
    it("is idempotent, and writing after close raises", function()
      local w = assert(pcapng.open(tmp()))
      assert.is_true(w:close())
      assert.is_true(w:close())
      assert.has_error(function() w:write_packet{ dev = "lo", ts_ns = 1, data = "x" } end, "pcapng: write after close")
    end)
  end)
end)
