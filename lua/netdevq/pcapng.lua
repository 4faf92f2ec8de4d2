--- netdevq.pcapng: a buffered pcapng writer in pure LuaJIT.
--
--     local pcapng = require("netdevq.pcapng")
--     local w = assert(pcapng.open("out.pcapng", { snaplen = 256 }))   -- or "-" (stdout), or an
--                                                                        -- io file
--     w:write_event(ev)                       -- ev: const struct netdevq_event *
--     w:write_packet{ dev = "lo", linktype = pcapng.LINKTYPE_ETHERNET, ts_ns = ns,
--                     data = bytes, caplen = n, origlen = len, comment = "..." }
--     w:flush(); w:close()
--
-- File layout: one Section Header Block (shb_userappl "netdevq"), then an Interface Description
-- Block the first time a (device, link type[, netns]) appears, each with if_name, if_tsresol = 9
-- (nanosecond timestamps) and, for events, if_description "ifindex N, netns N"; then one Enhanced
-- Packet Block per packet. Blocks are written in host byte order (the SHB magic says which).
--
-- Link types: LINKTYPE_ETHERNET (1) when the event has an Ethernet header (flags & NDQ_EV_MAC),
-- LINKTYPE_RAW (101: the packet starts with the IPv4/IPv6 header) otherwise. For a device without
-- an Ethernet header any other link-layer bytes (ev.l2_len) are skipped, so raw packets start at
-- the network header; the original length shrinks by the same amount. An offloaded VLAN tag (skb
-- metadata, flags & NDQ_EV_VLAN_HW) is written back into an Ethernet frame after the MACs, as
-- libpcap does on a live capture: frames and lengths equal tcpdump's.
--
-- Per-packet comment written by write_event (opt_comment, like ptcpdump does), exactly:
--
--     comm: <comm>, pid: <pid>, tid: <tid>, queue: <queue>, mark: <mark>
--
-- e.g. "comm: curl, pid: 5130, tid: 5130, queue: 0, mark: 0" (numbers in decimal; bytes of comm
-- outside printable ASCII are written \xNN and a backslash \\, as in text and JSON output).
-- comm, pid and tid are the socket owner's when the kernel knows it (ev.flags has NDQ_EV_OWNER:
-- a TCP ACK sent from softirq names its process), the task's on the CPU otherwise. Pass
-- `comments = false` to open() to leave them out. An event that carries queue
-- latency (sojourn_ns, xmit_ns, xmit_rc, drop_reason: asked for, bpf/latency.bpf.h) has them
-- appended, each only when present: ", sojourn_ns: N, xmit_ns: N, xmit_rc: N, drop_reason: NAME".
--
-- Timestamps: write_packet takes ts_ns as unix-epoch nanoseconds, a Lua number (exact only to
-- 2^53, i.e. about a quarter of a microsecond today) or a uint64_t cdata (exact). write_event takes
-- unix_ns the same way; without it, ev.ts (CLOCK_MONOTONIC, bpf_ktime_get_ns) becomes wall time
-- through netdevq.clock.
--
-- Buffering: blocks are collected in memory and written with one write(2) per 16 KiB or so; call
-- flush() to push out what is pending (e.g. after each poll batch when a reader waits on a pipe).
-- close() flushes; a writer dropped without close() only has its descriptor closed by the GC.
-- Paths: created with mode 0600 (before umask), truncated if they exist, never through a symlink
-- (O_NOFOLLOW: a symlink in the final component is refused). "-" is standard output (fd 1).
-- Errors: runtime failures return nil, msg and stick (later writes return the same error);
-- misuse (wrong argument types, write after close) raises.

local ffi = require("ffi")
local bit = require("bit")
local abi = require("netdevq.abi")
local clock = require("netdevq.clock")
local printable = require("netdevq.names").printable

local ffi_cast, ffi_copy, ffi_string, ffi_gc = ffi.cast, ffi.copy, ffi.string, ffi.gc
local ffi_errno = ffi.errno
local band, bor, rshift = bit.band, bit.bor, bit.rshift
local floor = math.floor
local type, tonumber, error, setmetatable = type, tonumber, error, setmetatable
local io_type = io.type

-- Own names (asm redirects), so that no other module's declaration of open/write can clash.
ffi.cdef [[
int ndq_pcapng_open(const char *path, int flags, int mode) __asm__("open");
long ndq_pcapng_write(int fd, const void *buf, size_t count) __asm__("write");
int ndq_pcapng_close(int fd) __asm__("close");
char *ndq_pcapng_strerror(int errnum) __asm__("strerror");
typedef struct {
  uint32_t stx_mask, stx_blksize; uint64_t stx_attributes;
  uint32_t stx_nlink, stx_uid, stx_gid; uint16_t stx_mode, pad; uint64_t rest[30];
} ndq_pcapng_statx;
int ndq_pcapng_statx_at(int dirfd, const char *path, int flags, unsigned mask,
                     ndq_pcapng_statx *buf) __asm__("statx");
int ndq_pcapng_fchmod(int fd, unsigned mode) __asm__("fchmod");
]]
local C = ffi.C

local _M = {
  LINKTYPE_ETHERNET = 1,
  LINKTYPE_RAW = 101,
  -- what write_event reads of an event (the tracer's plan asks the kernel for them)
  FIELDS = { "smac", "vlan_proto", "dev", "ifindex", "netns", "ts", "comm", "pid", "tid", "queue",
             "mark", "owner_comm", "owner_pid", "owner_tid" },
}

local NDQ_EV_MAC, NDQ_EV_VLAN_HW, NDQ_SNAP_MAX = abi.EV.MAC, abi.EV.VLAN_HW, abi.SNAP_MAX
local EV_OWNER = abi.EV.OWNER
local BT_SHB, BT_IDB, BT_EPB = 0x0A0D0D0A, 1, 6
local OPT_ENDOFOPT, OPT_COMMENT = 0, 1
local SHB_USERAPPL = 4
local IF_NAME, IF_DESCRIPTION, IF_TSRESOL = 2, 3, 9
local FLUSH_AT = 16384          -- write(2) once this much is pending
local BUF_INITIAL = 65536
local EINTR, ELOOP = 4, 40

-- open(2) flags differ between architectures (asm-generic vs the arm/powerpc/mips overrides).
local O_WRONLY, O_CREAT, O_TRUNC, O_NOFOLLOW, O_CLOEXEC = 1, 64, 512, 131072, 524288
if ffi.arch == "arm" or ffi.arch == "arm64" or ffi.arch == "ppc" or ffi.arch == "ppc64"
   or ffi.arch == "ppc64le" then
  O_NOFOLLOW = 32768
elseif ffi.arch:match("^mips") then
  O_CREAT, O_TRUNC, O_NOFOLLOW = 256, 512, 131072
end
local MODE_0600 = 384
local AT_EMPTY_PATH, STATX_TYPE, S_IFMT, S_IFREG = 0x1000, 1, 0xf000, 0x8000 -- the same everywhere
-- names of this process's standard output: written like "-" (a path would refuse the symlink)
local STDOUT_NAMES = { ["-"] = true, ["/dev/stdout"] = true, ["/dev/fd/1"] = true,
                       ["/proc/self/fd/1"] = true }

local u32p_t = ffi.typeof("uint32_t *")
local u16p_t = ffi.typeof("uint16_t *")
local u8buf_t = ffi.typeof("uint8_t[?]")
local fdbox_t = ffi.typeof("int[1]")
local statx_t = ffi.typeof("ndq_pcapng_statx")

local function strerror(e)
  return ffi_string(C.ndq_pcapng_strerror(e))
end

local function pad4(n)
  return band(n + 3, -4)
end

local function close_fdbox(box)
  if box[0] >= 0 then
    C.ndq_pcapng_close(box[0])
    box[0] = -1
  end
end

local Writer = {}
Writer.__index = Writer

-- Output -------------------------------------------------------------------------------------

local function drain(self)
  local pos = self.pos
  if pos == 0 then return true end
  if self.fh then
    local ok, err = self.fh:write(ffi_string(self.buf, pos))
    if not ok then
      self.err = "pcapng: write to " .. self.name .. " failed: " .. tostring(err)
      return nil, self.err
    end
  else
    local off = 0
    while off < pos do
      local n = tonumber(C.ndq_pcapng_write(self.fdbox[0], self.buf + off, pos - off))
      if n < 0 then
        local e = ffi_errno()
        if e == EINTR and self.interrupted and self.interrupted() then
          -- a stop signal while the reader does not read: give up, the caller reports it
          self.err = "pcapng: write to " .. self.name .. " interrupted: "
            .. (pos - off) .. " bytes not written (the reader does not read)"
          return nil, self.err
        elseif e ~= EINTR then
          self.err = "pcapng: write to " .. self.name .. " failed: " .. strerror(e)
            .. " (disk full or reader gone?)"
          return nil, self.err
        end
      else
        off = off + n
      end
    end
  end
  self.pos = 0
  return true
end

-- Room for n more bytes at self.pos: drains first, grows for blocks bigger than the buffer.
local function reserve(self, n)
  if self.pos + n > self.cap then
    local ok, err = drain(self)
    if not ok then return nil, err end
    if n > self.cap then
      local cap = self.cap
      while cap < n do cap = cap * 2 end
      self.buf, self.cap = u8buf_t(cap), cap
    end
  end
  return true
end

local function put_u32(self, v)
  ffi_cast(u32p_t, self.buf + self.pos)[0] = v
  self.pos = self.pos + 4
end

local function put_u16(self, v)
  ffi_cast(u16p_t, self.buf + self.pos)[0] = v
  self.pos = self.pos + 2
end

-- Zero bytes up to the next multiple of 4 (blocks start 4-aligned in the buffer).
local function put_pad(self)
  local pos = self.pos
  local to = pad4(pos)
  while pos < to do
    self.buf[pos] = 0
    pos = pos + 1
  end
  self.pos = to
end

-- An option: code, length, value (string or pointer + length), padding.
local function put_opt(self, code, value, len)
  len = len or #value
  put_u16(self, code)
  put_u16(self, len)
  ffi_copy(self.buf + self.pos, value, len)
  self.pos = self.pos + len
  put_pad(self)
end

local function opt_size(len)
  return 4 + pad4(len)
end

local function put_dec(self, v)
  local buf, pos = self.buf, self.pos
  if v < 10 then
    buf[pos] = 48 + v
    self.pos = pos + 1
    return
  end
  local start = pos
  while v > 0 do
    local q = floor(v / 10)
    buf[pos] = 48 + (v - q * 10)
    pos = pos + 1
    v = q
  end
  local i, j = start, pos - 1
  while i < j do
    buf[i], buf[j] = buf[j], buf[i]
    i, j = i + 1, j - 1
  end
  self.pos = pos
end

local function put_lit(self, s)
  local n = #s
  ffi_copy(self.buf + self.pos, s, n)
  self.pos = self.pos + n
end

-- the queue latency part of a comment (see the header)
local EV_XMIT, EV_XMIT_DONE, EV_DROP = abi.EV.XMIT, abi.EV.XMIT_DONE, abi.EV.DROP
local EV_FATE = EV_XMIT + EV_XMIT_DONE + EV_DROP
local function put_fate(self, ev)
  local by_name = require("netdevq.catalogue").by_name
  if band(ev.flags, EV_XMIT) ~= 0 then
    put_lit(self, ", sojourn_ns: ")
    put_dec(self, tonumber(ev.sojourn_ns))
  end
  if band(ev.flags, EV_XMIT_DONE) ~= 0 then
    put_lit(self, ", xmit_ns: ")
    put_dec(self, tonumber(ev.xmit_ns))
    local rc = by_name.xmit_rc.raw(ev)
    put_lit(self, ", xmit_rc: " .. (rc < 0 and "-" or ""))
    put_dec(self, rc < 0 and -rc or rc)
  end
  if band(ev.flags, EV_DROP) ~= 0 then
    put_lit(self, ", drop_reason: " .. by_name.drop_reason.raw(ev):sub(1, 48):gsub("[^%w_]", "?"))
  end
end

-- Blocks -------------------------------------------------------------------------------------

local function write_shb(self, application)
  local len = 28 + opt_size(#application) + 4
  local ok, err = reserve(self, len)
  if not ok then return nil, err end
  put_u32(self, BT_SHB)
  put_u32(self, len)
  put_u32(self, 0x1A2B3C4D)     -- byte-order magic
  put_u16(self, 1)              -- version 1.0
  put_u16(self, 0)
  put_u32(self, 0xFFFFFFFF)     -- section length: not specified (-1)
  put_u32(self, 0xFFFFFFFF)
  put_opt(self, SHB_USERAPPL, application)
  put_u32(self, OPT_ENDOFOPT)
  put_u32(self, len)
  return true
end

-- Writes an IDB and returns the new interface id.
local function write_idb(self, name, linktype, description)
  local len = 16 + opt_size(#name) + opt_size(1) + 4 + 4
  if description then len = len + opt_size(#description) end
  local ok, err = reserve(self, len)
  if not ok then return nil, err end
  put_u32(self, BT_IDB)
  put_u32(self, len)
  put_u16(self, linktype)
  put_u16(self, 0)
  put_u32(self, self.snaplen)
  put_opt(self, IF_NAME, name)
  if description then put_opt(self, IF_DESCRIPTION, description) end
  put_opt(self, IF_TSRESOL, "\9")   -- 10^-9 s
  put_u32(self, OPT_ENDOFOPT)
  put_u32(self, len)
  local id = self.nif
  self.nif = id + 1
  return id
end

-- EPB header up to the packet data; the caller fills data, options and the trailer.
local function put_epb_head(self, ifid, ts, caplen, origlen)
  put_u32(self, BT_EPB)
  put_u32(self, 0)              -- total length, patched by finish_block
  put_u32(self, ifid)
  if type(ts) == "number" then
    local hi = floor(ts / 4294967296)
    put_u32(self, hi)
    put_u32(self, ts - hi * 4294967296)
  else
    ts = ffi.new("uint64_t", ts)
    put_u32(self, rshift(ts, 32))
    put_u32(self, ts)   -- truncates to the low 32 bits
  end
  put_u32(self, caplen)
  put_u32(self, origlen)
end

local function finish_block(self, start)
  local len = self.pos + 4 - start
  ffi_cast(u32p_t, self.buf + start + 4)[0] = len
  put_u32(self, len)
end

local function maybe_drain(self)
  if self.pos >= FLUSH_AT then return drain(self) end
  return true
end

-- Public API ---------------------------------------------------------------------------------

--- True when target names this process's standard output ("-", /dev/stdout, /dev/fd/1).
function _M.is_stdout(target)
  return STDOUT_NAMES[target] == true
end

-- An existing regular file keeps its mode through O_TRUNC: make it 0600 like a new one (only
-- regular files: never /dev/null or a FIFO). nil, err when that fails.
local function private_mode(fd, target)
  local st = statx_t()
  if C.ndq_pcapng_statx_at(fd, "", AT_EMPTY_PATH, STATX_TYPE, st) ~= 0 then
    return nil, "pcapng: cannot inspect " .. target .. ": " .. strerror(ffi_errno())
  end
  if band(st.stx_mode, S_IFMT) == S_IFREG and C.ndq_pcapng_fchmod(fd, MODE_0600) ~= 0 then
    return nil, "pcapng: cannot make " .. target .. " private (mode 0600): "
      .. strerror(ffi_errno())
  end
  return true
end

--- Opens a writer on a path, "-" (stdout) or an io file handle.
-- opts.snaplen (0..2^31-1; 0 = no limit, the default): written into every IDB, longer captures
-- are cut to it. opts.comments (default true): per-event comments from write_event.
-- opts.application: shb_userappl (default "netdevq"). opts.interrupted: a function, true once
-- the process is stopping (netdevq.interrupted): a write interrupted by a signal then fails
-- instead of blocking again on a reader that does not read.
-- "/dev/stdout" (and /dev/fd/1) is "-"; an existing regular file ends up mode 0600 too.
-- Returns the writer, or nil, err.
function _M.open(target, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("pcapng.open: opts must be a table", 2) end
  local snaplen = opts.snaplen or 0
  if type(snaplen) ~= "number" or snaplen < 0 or snaplen > 0x7fffffff or snaplen % 1 ~= 0 then
    error("pcapng.open: snaplen must be an integer in 0..2147483647", 2)
  end
  local application = opts.application or "netdevq"
  if type(application) ~= "string" then error("pcapng.open: application must be a string", 2) end

  local self = setmetatable({
    buf = u8buf_t(BUF_INITIAL), cap = BUF_INITIAL, pos = 0,
    snaplen = snaplen, comments = opts.comments ~= false,
    nif = 0, by_name = {}, by_netns = {},
    interrupted = opts.interrupted,
  }, Writer)

  if target == "" then
    return nil, "pcapng: the file name is empty: give a path, or - for standard output"
  elseif STDOUT_NAMES[target] then
    self.name, self.fdbox = "standard output", fdbox_t(1)
  elseif io_type(target) == "file" then
    self.name, self.fh = "file handle", target
  elseif type(target) == "string" then
    local flags = bor(O_WRONLY, O_CREAT, O_TRUNC, O_NOFOLLOW, O_CLOEXEC)
    local fd = C.ndq_pcapng_open(target, flags, MODE_0600)
    if fd < 0 then
      local e = ffi_errno()
      if e == ELOOP then
        return nil, "pcapng: refusing to write " .. target
          .. ": it is a symbolic link (remove it or choose another path)"
      end
      return nil, "pcapng: cannot create " .. target .. ": " .. strerror(e)
    end
    self.name = target
    self.fdbox = ffi_gc(fdbox_t(fd), close_fdbox)
    self.owns_fd = true
    local ok, err = private_mode(fd, target)
    if not ok then
      self:close()
      return nil, err
    end
  else
    error("pcapng.open: expects a path, \"-\" or an io file handle", 2)
  end

  local ok, err = write_shb(self, application)
  if ok then ok, err = drain(self) end
  if not ok then
    self:close()
    return nil, err
  end
  return self
end

--- Writes one packet. p.dev (string), p.linktype (default LINKTYPE_ETHERNET), p.ts_ns (unix ns,
-- number or uint64 cdata), p.data (string or pointer), p.caplen (default #data for a string),
-- p.origlen (default caplen), p.comment (string, optional), p.netns (optional: devices of the
-- same name in different namespaces get separate interfaces).
function Writer:write_packet(p)
  if self.closed then error("pcapng: write after close", 2) end
  if self.err then return nil, self.err end
  local dev, data = p.dev, p.data
  local linktype = p.linktype or 1
  local caplen = p.caplen
  if type(dev) ~= "string" then error("pcapng: write_packet needs dev (string)", 2) end
  if type(linktype) ~= "number" then error("pcapng: linktype must be a number", 2) end
  if type(data) == "string" then
    caplen = caplen or #data
    if caplen > #data then error("pcapng: caplen is larger than data", 2) end
  elseif type(data) ~= "cdata" or type(caplen) ~= "number" then
    error("pcapng: write_packet needs data (string, or pointer with caplen)", 2)
  end
  local ts = p.ts_ns
  if type(ts) ~= "number" and type(ts) ~= "cdata" then
    error("pcapng: write_packet needs ts_ns (unix ns, number or uint64 cdata)", 2)
  end
  local origlen = p.origlen or caplen
  if self.snaplen > 0 and caplen > self.snaplen then caplen = self.snaplen end
  if origlen < caplen then origlen = caplen end
  local comment = p.comment
  if comment ~= nil and type(comment) ~= "string" then
    error("pcapng: comment must be a string", 2)
  end

  local key = dev .. "\0" .. linktype .. "\0" .. (p.netns or "")
  local ifid = self.by_name[key]
  if not ifid then
    local err
    ifid, err = write_idb(self, dev, linktype, p.netns and ("netns " .. p.netns) or nil)
    if not ifid then return nil, err end
    self.by_name[key] = ifid
  end

  local need = 28 + pad4(caplen) + 4 + 4
  if comment then need = need + opt_size(#comment) end
  local ok, err = reserve(self, need)
  if not ok then return nil, err end
  local start = self.pos
  put_epb_head(self, ifid, ts, caplen, origlen)
  ffi_copy(self.buf + self.pos, data, caplen)
  self.pos = self.pos + caplen
  put_pad(self)
  if comment then
    put_opt(self, OPT_COMMENT, comment)
    put_u32(self, OPT_ENDOFOPT)
  end
  finish_block(self, start)
  return maybe_drain(self)
end

-- Interface id for an event's device: keyed by netns and ifindex (no string per event); the
-- name is read once, when the interface first appears.
local function event_ifid(self, ev, linktype)
  local ifindex = ev.ifindex
  if ifindex == 0 then  -- no ifindex: fall back to the name
    local dev = ffi_string(ev.dev)
    local key = dev .. "\0" .. linktype .. "\0" .. ev.netns
    local id = self.by_name[key]
    if id then return id end
    local err
    id, err = write_idb(self, dev, linktype, "netns " .. ev.netns)
    if not id then return nil, err end
    self.by_name[key] = id
    return id
  end
  local ns = self.by_netns[ev.netns]
  if not ns then
    ns = {}
    self.by_netns[ev.netns] = ns
  end
  local slot = ifindex * 2 + (linktype == 1 and 1 or 0)
  local id = ns[slot]
  if id then return id end
  local err
  id, err = write_idb(self, ffi_string(ev.dev), linktype,
    "ifindex " .. ifindex .. ", netns " .. ev.netns)
  if not id then return nil, err end
  ns[slot] = id
  return id
end

-- caplen bytes of the frame with the offloaded tag (TPID, TCI) after the MACs, at dst.
local function put_vlan_frame(dst, ev, caplen)
  if caplen <= 12 then
    ffi_copy(dst, ev.snap, caplen)
    return
  end
  ffi_copy(dst, ev.snap, 12)
  local proto, tci = ev.vlan_proto, ev.vlan_tci
  dst[12], dst[13] = rshift(proto, 8), band(proto, 0xff)   -- bytes past caplen: overwritten by
  dst[14], dst[15] = rshift(tci, 8), band(tci, 0xff)       -- the padding or the next block
  if caplen > 16 then ffi_copy(dst + 16, ev.snap + 12, caplen - 16) end
end

local COMMENT_MAX = 4 + 6 + 16 * 4 + 7 + 10 + 7 + 10 + 9 + 5 + 8 + 10 + 3 -- comm: 16 \xNN
  + 14 + 20 + 11 + 20 + 11 + 11 + 15 + 48 -- the latency fields

--- Writes one event: linktype from flags & NDQ_EV_MAC, data = snap, caplen = snap_len,
-- origlen = len, comment as documented above. unix_ns: see the header.
function Writer:write_event(ev, unix_ns)
  if self.closed then error("pcapng: write after close", 2) end
  if self.err then return nil, self.err end
  local mac = band(ev.flags, NDQ_EV_MAC) ~= 0
  local linktype = mac and 1 or 101
  local skip = 0
  local caplen, origlen = ev.snap_len, ev.len
  if caplen > NDQ_SNAP_MAX then caplen = NDQ_SNAP_MAX end   -- never read past snap[]
  if not mac then
    skip = ev.l2_len
    if skip > caplen then skip = caplen end
    caplen = caplen - skip
    origlen = origlen >= skip and origlen - skip or 0
  end
  local tag = mac and caplen >= 12 and band(ev.flags, NDQ_EV_VLAN_HW) ~= 0
  if tag then
    caplen, origlen = caplen + 4, origlen + 4
  end
  if self.snaplen > 0 and caplen > self.snaplen then caplen = self.snaplen end
  if origlen < caplen then origlen = caplen end

  local ifid, err = event_ifid(self, ev, linktype)
  if not ifid then return nil, err end
  local ok
  ok, err = reserve(self, 28 + pad4(caplen) + COMMENT_MAX + 4 + 4)
  if not ok then return nil, err end

  local start = self.pos
  put_epb_head(self, ifid, unix_ns or clock.unix_ns(ev.ts), caplen, origlen)
  if tag then
    put_vlan_frame(self.buf + self.pos, ev, caplen)
  else
    ffi_copy(self.buf + self.pos, ev.snap + skip, caplen)
  end
  self.pos = self.pos + caplen
  put_pad(self)
  if self.comments then
    local opt = self.pos
    self.pos = opt + 4
    put_lit(self, "comm: ")
    local owner = band(ev.flags, EV_OWNER) ~= 0
    local comm, buf = owner and ev.owner_comm or ev.comm, self.buf
    local n, plain = 0, true
    while n < 16 and comm[n] ~= 0 do
      local c = comm[n]
      if c < 32 or c > 126 or c == 92 then plain = false end
      n = n + 1
    end
    if plain then -- the common case, copied as it is
      ffi_copy(buf + self.pos, comm, n)
      self.pos = self.pos + n
    else          -- escaped as text and JSON escape it (names.printable)
      put_lit(self, printable(ffi_string(comm, n)))
    end
    put_lit(self, ", pid: ")
    put_dec(self, owner and ev.owner_pid or ev.pid)
    put_lit(self, ", tid: ")
    put_dec(self, owner and ev.owner_tid or ev.tid)
    put_lit(self, ", queue: ")
    put_dec(self, ev.queue)
    put_lit(self, ", mark: ")
    put_dec(self, ev.mark)
    if band(ev.flags, EV_FATE) ~= 0 then put_fate(self, ev) end
    local p = ffi_cast(u16p_t, buf + opt)
    p[0], p[1] = OPT_COMMENT, self.pos - opt - 4
    put_pad(self)
    put_u32(self, OPT_ENDOFOPT)
  end
  finish_block(self, start)
  return maybe_drain(self)
end

--- Writes out everything buffered (and flushes an io file handle). Returns true or nil, err.
function Writer:flush()
  if self.closed then error("pcapng: flush after close", 2) end
  if self.err then return nil, self.err end
  local ok, err = drain(self)
  if not ok then return nil, err end
  if self.fh then
    local fok, ferr = self.fh:flush()
    if not fok then
      self.err = "pcapng: flush of " .. self.name .. " failed: " .. tostring(ferr)
      return nil, self.err
    end
  end
  return true
end

--- Flushes and closes (an io file handle passed to open() is flushed, not closed: the caller
-- owns it). Idempotent; returns true or nil, err (the first error seen, if any).
function Writer:close()
  if self.closed then return true end
  local ok, err = true, self.err
  if not err then
    ok, err = drain(self)
    if ok and self.fh then
      local fok, ferr = self.fh:flush()
      if not fok then
        ok, err = nil, "pcapng: flush of " .. self.name .. " failed: " .. tostring(ferr)
      end
    end
  end
  if self.owns_fd then
    local fd = self.fdbox[0]
    self.fdbox[0] = -1
    ffi_gc(self.fdbox, nil)
    if C.ndq_pcapng_close(fd) ~= 0 and not err then
      err = "pcapng: close of " .. self.name .. " failed: " .. strerror(ffi_errno())
    end
  end
  self.closed = true
  self.buf, self.cap, self.pos = nil, 0, 0
  if err then return nil, err end
  return ok
end

--- Number of interfaces (IDBs) written so far.
function Writer:interfaces()
  return self.nif
end

return _M
