-- netdevq.aggregate: bpftrace-like aggregations (count, sum, avg, min, max, stats, hist, lhist)
-- fed from Lua (agg:add) or decoded from the in-kernel per-CPU aggregation map (from_kernel), with
-- the printers the CLI uses: bpftrace 0.17 text and the contract's JSON "map" / "hist" lines.
--
-- Both paths give identical results on the same events because the Lua path puts values into the
-- same histogram slots as bpf/netdevq.bpf.c: see log2_slot and linear_slot, the mirror of the BPF
-- code, and the slot comments of struct netdevq_agg_value in bpf/netdevq.h.

local ffi = require("ffi")
local cjson = require("cjson")
local ndq_fields = require("netdevq.fields")

local ffi_cast = ffi.cast
local ffi_string = ffi.string
local cjson_encode = cjson.encode
local concat = table.concat
local sort = table.sort
local format = string.format
local rep = string.rep
local floor = math.floor
local ceil = math.ceil
local huge = math.huge
local type = type
local tonumber = tonumber
local tostring = tostring
local error = error
local pairs = pairs
local ipairs = ipairs
local setmetatable = setmetatable
local getmetatable = getmetatable
local io_stdout = io.stdout
local format_ipv4 = ndq_fields.format_ipv4
local format_ipv6 = ndq_fields.format_ipv6
local format_proto = ndq_fields.format_proto
local format_ethertype = ndq_fields.format_ethertype
local format_tcp_flags = ndq_fields.format_tcp_flags

local u8_ptr_t = ffi.typeof("const uint8_t *")
local u64_ptr_t = ffi.typeof("const uint64_t *")
local float_box = ffi.new("float[1]")

local _M = { _VERSION = "0.1.0" }

-- Kernel ABI constants (bpf/netdevq.h: NDQ_AGG_*); repeated here so this module needs no cdef.
local AGG_KEYS_MAX = 4
local AGG_KEY_SLOT = 16
local AGG_SLOTS = 68
local LOG2_TOP = 64        -- highest log2 slot a 64-bit value reaches: [2^63, 2^64)
local NEG = -1             -- Lua-only log2 bucket for negative values: "(..., 0)"

_M.AGG_SLOTS = AGG_SLOTS
-- Linear buckets an in-kernel lhist can hold: slots 1..n plus the two outer slots.
_M.KERNEL_LHIST_MAX_BUCKETS = AGG_SLOTS - 2

local BAR_WIDTH = 52       -- bpftrace's max_width

-- A key part for a field the event does not carry (nil in Lua, a slot of 0xff bytes in the
-- kernel key): key arrays hold no nil, callers put this in its place.
local ABSENT = "-"
_M.ABSENT = ABSENT

-- A key that is nil (an aggregation without key) is stored under this sentinel.
local NOKEY = setmetatable({}, { __tostring = function() return "netdevq.aggregate.NOKEY" end })


-- Slot functions: the BPF side implements exactly these.

--- log2 histogram slot of v: 0 holds 0, slot i >= 1 holds [2^(i-1), 2^i), i.e. for an integer
-- v >= 1 the slot is its bit length (64 - clz64(v)); the top slot is 64. Negative values (only
-- possible from Lua, kernel fields are unsigned) go to the Lua-only slot -1, printed "(..., 0)".
-- bpftrace's buckets are the same ([0], [1], [2, 4), ...); its index is this slot + 1.
function _M.log2_slot(v)
  if v < 1 then
    if v < 0 then return NEG end
    return 0
  end
  local s = 1
  if v >= 4294967296 then s = s + 32; v = v * 2.3283064365386963e-10 end -- 2^-32
  if v >= 65536 then s = s + 16; v = v * 1.52587890625e-05 end             -- 2^-16
  if v >= 256 then s = s + 8; v = v * 0.00390625 end
  if v >= 16 then s = s + 4; v = v * 0.0625 end
  if v >= 4 then s = s + 2; v = v * 0.25 end
  if v >= 2 then s = s + 1 end
  if s > LOG2_TOP then s = LOG2_TOP end
  return s
end
local log2_slot = _M.log2_slot

--- linear histogram slot of v: 0 = below min, 1..n = [min + (i-1)*step, min + i*step),
-- n + 1 = at or above max, where n = (max - min) / step. Same as bpftrace's lhist.
function _M.linear_slot(v, min, max, step)
  if v < min then return 0 end
  if v >= max then return (max - min) / step + 1 end
  return floor((v - min) / step) + 1
end
local linear_slot = _M.linear_slot


-- Number and key text.

-- Integers as integers (exactly, whatever their size), anything else with 14 digits.
local function fmt_num(v)
  if v == floor(v) and v ~= huge and v ~= -huge then
    if v == 0 then return "0" end
    return format("%.0f", v)
  end
  return format("%.14g", v)
end

-- C integer division (truncates toward zero), as bpftrace computes averages.
local function idiv(a, b)
  local q = a / b
  if q >= 0 then return floor(q) end
  return ceil(q)
end

local function part_text(p)
  if type(p) == "number" then return fmt_num(p) end
  return tostring(p)
end

local function key_text(parts)
  local n = #parts
  if n == 0 then return "" end
  local t = {}
  for i = 1, n do t[i] = part_text(parts[i]) end
  return "[" .. concat(t, ", ") .. "]"
end

-- Keys with equal values sort by their parts: numbers numerically, strings by bytes.
local function parts_less(a, b)
  local n = #a
  if #b > n then n = #b end
  for i = 1, n do
    local x, y = a[i], b[i]
    if x ~= y then
      if x == nil then return true end
      if y == nil then return false end
      local tx, ty = type(x), type(y)
      if tx == ty and (tx == "number" or tx == "string") then return x < y end
      local sx, sy = tostring(x), tostring(y)
      if sx ~= sy then return sx < sy end
      return tx < ty
    end
  end
  return false
end

local function entry_less(a, b)
  local va, vb = a.sort_value, b.sort_value
  if va ~= vb then return va < vb end
  return parts_less(a.key, b.key)
end


-- Kinds. Each kind has its own method table (shared methods copied in) with its own add.

local KINDS = { "count", "sum", "avg", "min", "max", "stats", "hist", "lhist" }
local is_hist = { hist = true, lhist = true }

local common = {}
local methods = {}
local metatables = {}
for _, kind in ipairs(KINDS) do
  methods[kind] = {}
  metatables[kind] = { __index = methods[kind] }
end

local function new_entry(self, id, key)
  local parts
  if key == nil then
    parts = {}
  elseif type(key) == "table" then
    parts = {}
    for i = 1, #key do parts[i] = key[i] end
  else
    parts = { key }
  end
  local e = { key = parts, text = key_text(parts), count = 0, sum = 0 }
  local kind = self.kind
  if kind == "hist" then
    local slots = { [NEG] = 0 }
    for i = 0, AGG_SLOTS - 1 do slots[i] = 0 end
    e.slots = slots
  elseif kind == "lhist" then
    local slots = {}
    for i = 0, self.nbuckets + 1 do slots[i] = 0 end
    e.slots = slots
  end
  self.map[id] = e
  self.size = self.size + 1
  return e
end

-- The entry for key, created on first use. An existing key allocates nothing: a table key of
-- several parts is looked up by its parts joined with "\0" (an interned string).
local function lookup(self, key)
  local id
  if key == nil then
    id = NOKEY
  elseif type(key) == "table" then
    if #key == 1 then id = key[1] else id = concat(key, "\0") end
  else
    id = key
  end
  local e = self.map[id]
  if e == nil then e = new_entry(self, id, key) end
  return e
end

local function check_value(v)
  if type(v) ~= "number" then
    local n = tonumber(v)
    if n == nil then
      error("netdevq.aggregate: value must be a number, got " .. type(v), 3)
    end
    return n
  end
  return v
end

--- count: add(key) counts one event; a value, if given, is ignored.
function methods.count.add(self, key)
  local e = lookup(self, key)
  e.count = e.count + 1
end

local function add_count_sum(self, key, v)
  v = check_value(v)
  local e = lookup(self, key)
  e.count = e.count + 1
  e.sum = e.sum + v
end
methods.sum.add = add_count_sum
methods.avg.add = add_count_sum
methods.stats.add = add_count_sum

function methods.min.add(self, key, v)
  v = check_value(v)
  local e = lookup(self, key)
  e.count = e.count + 1
  local m = e.value
  if m == nil or v < m then e.value = v end
end

function methods.max.add(self, key, v)
  v = check_value(v)
  local e = lookup(self, key)
  e.count = e.count + 1
  local m = e.value
  if m == nil or v > m then e.value = v end
end

function methods.hist.add(self, key, v)
  v = check_value(v)
  local e = lookup(self, key)
  e.count = e.count + 1
  local slots = e.slots
  local s = log2_slot(v)
  slots[s] = slots[s] + 1
end

function methods.lhist.add(self, key, v)
  v = check_value(v)
  local e = lookup(self, key)
  e.count = e.count + 1
  local slots = e.slots
  local s = linear_slot(v, self.lmin, self.lmax, self.step)
  slots[s] = slots[s] + 1
end

--- Forget every key (what an interval does after printing).
function common.clear(self)
  self.map = {}
  self.size = 0
end

--- Number of keys.
function common.len(self)
  return self.size
end

-- Fill an entry's derived fields (value, average, total) and its sort value.
local function finish_entry(kind, e)
  if kind == "count" then
    e.value = e.count
  elseif kind == "sum" then
    e.value = e.sum
  elseif kind == "avg" or kind == "stats" then
    local avg = 0
    if e.count ~= 0 then avg = idiv(e.sum, e.count) end
    e.average = avg
    e.value = avg
  elseif kind == "hist" or kind == "lhist" then
    local total = 0
    for _, c in pairs(e.slots) do total = total + c end
    e.total = total
    e.value = total
  end
  e.sort_value = e.value
end

--- Entries sorted like bpftrace prints them: by value ascending (count, sum, min, max: the value;
-- avg, stats: the average; hist, lhist: the total count), equal values by key parts.
-- Each entry: { key = {parts...}, text = "[lo, udp]" (as printed after the name), value = the
-- printed value (hist, lhist: total), count = events, sum (sum, avg, stats), average (avg, stats),
-- total and slots = {[i] = count} (hist: -1..67, lhist: 0..n+1) }.
-- Entries belong to the aggregation: read them, don't change them.
function common.entries(self)
  local list, n = {}, 0
  local kind = self.kind
  for _, e in pairs(self.map) do
    finish_entry(kind, e)
    n = n + 1
    list[n] = e
  end
  sort(list, entry_less)
  return list
end


-- Histogram rows: the range from the first to the last non-empty slot, like print_log2_hist.

local function hist_label(power)
  local suffix = ""
  if power >= 40 then suffix = "T"; power = power - 40
  elseif power >= 30 then suffix = "G"; power = power - 30
  elseif power >= 20 then suffix = "M"; power = power - 20
  elseif power >= 10 then suffix = "K"; power = power - 10
  end
  return format("%d%s", 2 ^ power, suffix)
end

local function lhist_label(n)
  if n == 0 then return "0" end
  if n % 1048576 == 0 then return format("%dM", n / 1048576) end
  if n % 1024 == 0 then return format("%dK", n / 1024) end
  return fmt_num(n)
end

-- First and last slot index of an agg's histogram entries.
local function slot_range(self)
  if self.kind == "hist" then return NEG, AGG_SLOTS - 1 end
  return 0, self.nbuckets + 1
end

local function used_range(self, slots)
  local first, last, top = nil, nil, 0
  local lo, hi = slot_range(self)
  for i = lo, hi do
    local c = slots[i]
    if c > 0 then
      if first == nil then first = i end
      last = i
      if c > top then top = c end
    end
  end
  return first, last, top
end

local function row_header(self, i)
  if self.kind == "hist" then
    if i == NEG then return "(..., 0)" end
    if i == 0 then return "[0]" end
    if i == 1 then return "[1]" end
    return "[" .. hist_label(i - 1) .. ", " .. hist_label(i) .. ")"
  end
  local lmin, step = self.lmin, self.step
  if i == 0 then return "(..., " .. lhist_label(lmin) .. ")" end
  if i == self.nbuckets + 1 then return "[" .. lhist_label(self.lmax) .. ", ...)" end
  return "[" .. lhist_label((i - 1) * step + lmin) .. ", " .. lhist_label(i * step + lmin) .. ")"
end

-- Bucket bounds for JSON: min inclusive, max exclusive (the text's "[lo, hi)"); an open end is nil.
local function row_bounds(self, i)
  if self.kind == "hist" then
    if i == NEG then return nil, 0 end
    if i == 0 then return 0, 1 end
    return 2 ^ (i - 1), 2 ^ i
  end
  local lmin, step = self.lmin, self.step
  if i == 0 then return nil, lmin end
  if i == self.nbuckets + 1 then return self.lmax, nil end
  return lmin + (i - 1) * step, lmin + i * step
end

local function f32(x)
  float_box[0] = x
  return float_box[0]
end

-- bpftrace: int bar_width = values.at(i)/(float)max_value*max_width; (single precision)
local function bar_width(c, top)
  return floor(f32(f32(f32(c) / f32(top)) * BAR_WIDTH))
end

local function hist_text(self, slots, buf, n)
  local first, last, top = used_range(self, slots)
  if first == nil then return n end
  for i = first, last do
    local c = slots[i]
    n = n + 1
    buf[n] = format("%-16s%8s |%-52s|\n", row_header(self, i), fmt_num(c),
      rep("@", bar_width(c, top)))
  end
  return n
end


-- Printers.

--- The map as bpftrace 0.17 prints it (print(@map) / at exit), or "" when it has no key:
-- count, sum, min, max: "@name[k1, k2]: v" lines; avg: "@name[k]: avg" lines and a blank line;
-- stats: "@name[k]: count N, average A, total T" lines and a blank line;
-- hist, lhist: per key "@name[k]: " then the rows, each key followed by a blank line.
function common.text(self)
  if self.size == 0 then return "" end
  local kind, name = self.kind, self.name
  local buf, n = {}, 0
  local list = self:entries()
  for i = 1, #list do
    local e = list[i]
    n = n + 1
    if is_hist[kind] then
      buf[n] = name .. e.text .. ": \n"
      n = hist_text(self, e.slots, buf, n) + 1
      buf[n] = "\n"
    elseif kind == "stats" then
      buf[n] = format("%s%s: count %s, average %s, total %s\n", name, e.text,
        fmt_num(e.count), fmt_num(e.average), fmt_num(e.sum))
    else
      buf[n] = name .. e.text .. ": " .. fmt_num(e.value) .. "\n"
    end
  end
  if kind == "avg" or kind == "stats" then
    n = n + 1
    buf[n] = "\n"
  end
  return concat(buf, "", 1, n)
end

--- Write text() to fh (default io.stdout).
function common.print(self, fh)
  (fh or io_stdout):write(self:text())
end

local function json_buckets(self, slots)
  local buckets = {}
  local first, last = used_range(self, slots)
  if first == nil then return buckets end
  for i = first, last do
    local lo, hi = row_bounds(self, i)
    buckets[#buckets + 1] = { min = lo, max = hi, count = slots[i] }
  end
  return buckets
end

--- The contract's JSON object as a Lua table:
-- { type = "map", name =, keys = {labels}, data = { { key = {parts}, value = v }, ... } } with
-- value = { count =, average =, total = } for stats, or
-- { type = "hist", name =, keys =, data = { { key =, buckets = { { min =, max =, count = } } } } }.
-- Data in entries() order; buckets from the first to the last non-empty one; an open-ended
-- bucket has no min (below the lowest bound) or no max (at or above the highest).
-- Note: lua-cjson 2.1.0 encodes an empty table as {}; json_line() writes the exact line.
function common.json(self)
  local kind = self.kind
  local data = {}
  local list = self:entries()
  for i = 1, #list do
    local e = list[i]
    local row = { key = e.key }
    if is_hist[kind] then
      row.buckets = json_buckets(self, e.slots)
    elseif kind == "stats" then
      row.value = { count = e.count, average = e.average, total = e.sum }
    else
      row.value = e.value
    end
    data[i] = row
  end
  local keys = {}
  for i = 1, #self.keys do keys[i] = self.keys[i] end
  return { type = is_hist[kind] and "hist" or "map", name = self.name, keys = keys, data = data }
end

local function json_scalar(v)
  if type(v) == "number" then
    if v ~= v or v == huge or v == -huge then return "null" end
    return fmt_num(v)
  end
  return cjson_encode(tostring(v))
end

local function json_array(t)
  local parts = {}
  for i = 1, #t do parts[i] = json_scalar(t[i]) end
  return "[" .. concat(parts, ",") .. "]"
end

--- The JSON object as one line (no newline): keys in the contract's order, integers written
-- as integers, [] for an empty key list.
function common.json_line(self)
  local obj = self:json()
  local rows = {}
  for i = 1, #obj.data do
    local d = obj.data[i]
    local body
    if d.buckets then
      local bs = {}
      for j = 1, #d.buckets do
        local b = d.buckets[j]
        local f = {}
        if b.min ~= nil then f[#f + 1] = '"min":' .. json_scalar(b.min) end
        if b.max ~= nil then f[#f + 1] = '"max":' .. json_scalar(b.max) end
        f[#f + 1] = '"count":' .. json_scalar(b.count)
        bs[j] = "{" .. concat(f, ",") .. "}"
      end
      body = '"buckets":[' .. concat(bs, ",") .. "]"
    elseif type(d.value) == "table" then
      local v = d.value
      body = format('"value":{"count":%s,"average":%s,"total":%s}',
        json_scalar(v.count), json_scalar(v.average), json_scalar(v.total))
    else
      body = '"value":' .. json_scalar(d.value)
    end
    rows[i] = '{"key":' .. json_array(d.key) .. "," .. body .. "}"
  end
  return format('{"type":%s,"name":%s,"keys":%s,"data":[%s]}', json_scalar(obj.type),
    json_scalar(obj.name), json_array(obj.keys), concat(rows, ","))
end

--- Write json_line() and a newline to fh (default io.stdout); nothing for an empty aggregation
-- (as bpftrace skips empty maps).
function common.write_json(self, fh)
  if self.size == 0 then return end
  (fh or io_stdout):write(self:json_line(), "\n")
end

for _, kind in ipairs(KINDS) do
  local m = methods[kind]
  for k, f in pairs(common) do m[k] = f end
  metatables[kind].__tostring = common.text
end


-- Constructors.

local function check_opts(opts, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error("netdevq.aggregate: options must be a table", level + 1)
  end
  if opts.name ~= nil and type(opts.name) ~= "string" then
    error("netdevq.aggregate: name must be a string", level + 1)
  end
  if opts.keys ~= nil then
    if type(opts.keys) ~= "table" then
      error("netdevq.aggregate: keys must be a list of field names", level + 1)
    end
    for i = 1, #opts.keys do
      if type(opts.keys[i]) ~= "string" then
        error("netdevq.aggregate: keys must be a list of field names", level + 1)
      end
    end
  end
  return opts
end

local function construct(kind, opts, level)
  opts = check_opts(opts, level + 1)
  local keys = {}
  if opts.keys then for i = 1, #opts.keys do keys[i] = opts.keys[i] end end
  return setmetatable({
    kind = kind,
    name = opts.name or ("@" .. kind),
    keys = keys,           -- key field labels (JSON "keys"; from_kernel decodes by these names)
    field = opts.value,    -- the aggregated field's name, informational
    map = {},
    size = 0,
  }, metatables[kind])
end

local function is_int(v)
  return type(v) == "number" and v == floor(v) and v > -2 ^ 63 and v < 2 ^ 63
end

local function construct_lhist(min, max, step, opts, level)
  if not (is_int(min) and is_int(max) and is_int(step)) then
    error("netdevq.aggregate: lhist(min, max, step) needs integers", level + 1)
  end
  if step <= 0 then
    error("netdevq.aggregate: lhist step must be > 0 (got " .. fmt_num(step) .. ")", level + 1)
  end
  if max <= min then
    error(format("netdevq.aggregate: lhist max must be > min (got min %s, max %s)",
      fmt_num(min), fmt_num(max)), level + 1)
  end
  if (max - min) % step ~= 0 then
    error(format("netdevq.aggregate: lhist max - min (%s) must be a multiple of step %s",
      fmt_num(max - min), fmt_num(step)), level + 1)
  end
  local self = construct("lhist", opts, level + 1)
  self.lmin, self.lmax, self.step = min, max, step
  self.nbuckets = (max - min) / step
  return self
end

--- aggregate.count([opts]), .sum, .avg, .min, .max, .stats, .hist: opts = { name = "@count",
-- keys = {"dev", "proto"}, value = "len" } (all optional; name defaults to "@" .. kind).
for _, kind in ipairs(KINDS) do
  if kind ~= "lhist" then
    _M[kind] = function(opts) return construct(kind, opts, 2) end
  end
end

--- aggregate.lhist(min, max, step[, opts]): integers, step > 0, max > min, (max - min) % step == 0.
function _M.lhist(min, max, step, opts)
  return construct_lhist(min, max, step, opts, 2)
end

--- aggregate.new(spec): spec = { kind = "count"|"sum"|"avg"|"min"|"max"|"stats"|"hist"|"lhist",
-- name =, keys =, value =, min =, max =, step = (lhist) }: the constructor the CLI and
-- from_kernel use.
function _M.new(spec)
  if type(spec) ~= "table" or metatables[spec.kind or false] == nil then
    error("netdevq.aggregate: new(spec) needs spec.kind, one of " .. concat(KINDS, ", "), 2)
  end
  if spec.kind == "lhist" then
    return construct_lhist(spec.min, spec.max, spec.step, spec, 2)
  end
  return construct(spec.kind, spec, 2)
end

--- Is v an aggregation object?
function _M.is_aggregation(v)
  local mt = getmetatable(v)
  return mt ~= nil and metatables[v.kind or false] == mt
end


-- Kernel path: decode struct netdevq_agg_key slots and merge struct netdevq_agg_value.

local function decode_u64(p, off)
  return tonumber(ffi_cast(u64_ptr_t, p + off)[0])
end

local function decode_cstring(p, off)
  local n = 0
  while n < AGG_KEY_SLOT and p[off + n] ~= 0 do n = n + 1 end
  return ffi_string(p + off, n)
end

-- The kernel packs IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d): shown as the dotted quad.
local function decode_addr(p, off)
  for i = 0, 9 do
    if p[off + i] ~= 0 then return format_ipv6(p + off) end
  end
  if p[off + 10] == 0xff and p[off + 11] == 0xff then return format_ipv4(p + off + 12) end
  return format_ipv6(p + off)
end

local function decode_proto(p, off)
  return format_proto(decode_u64(p, off))
end

local function decode_ethertype(p, off)
  return format_ethertype(decode_u64(p, off))
end

local function decode_tcp_flags(p, off)
  return format_tcp_flags(decode_u64(p, off))
end

local KEY_DECODERS = {
  dev = decode_cstring,
  comm = decode_cstring,
  owner_comm = decode_cstring,
  saddr = decode_addr,
  daddr = decode_addr,
  proto = decode_proto,
  ethertype = decode_ethertype,
  tcp_flags = decode_tcp_flags,
}

--- The Lua value of one key field as the kernel packed it: numbers are a host-order __u64 in the
-- slot's first 8 bytes; dev and comm NUL-padded text; saddr/daddr 16 bytes (IPv4-mapped for
-- IPv4); proto, ethertype, tcp_flags numbers shown as netdevq.fields names; a slot of sixteen
-- 0xff bytes is a field the event does not carry: ABSENT. slot: 1-based field position;
-- key: struct netdevq_agg_key cdata (or pointer) or its 64 bytes as a Lua string.
function _M.decode_key_field(field, key, slot)
  local p
  if type(key) == "string" then p = ffi_cast(u8_ptr_t, key) else p = ffi_cast(u8_ptr_t, key.k) end
  local off = (slot - 1) * AGG_KEY_SLOT
  local absent = true
  for i = off, off + AGG_KEY_SLOT - 1 do
    if p[i] ~= 0xff then absent = false; break end
  end
  if absent then return ABSENT end
  local decode = KEY_DECODERS[field] or decode_u64
  return decode(p, off)
end
local decode_key_field = _M.decode_key_field

local function merge_record(self, fields, nfields, parts, key, v)
  if type(key) == "string" and #key < nfields * AGG_KEY_SLOT then
    error("netdevq.aggregate: kernel key is shorter than its fields", 3)
  end
  for i = 1, nfields do parts[i] = decode_key_field(fields[i], key, i) end
  local kind = self.kind
  local count = tonumber(v.count)
  -- a min or max is only meaningful once a value was seen
  if count == 0 and (kind == "min" or kind == "max") then return end
  local e
  if nfields == 0 then e = lookup(self, nil) else e = lookup(self, parts) end
  e.count = e.count + count
  if kind == "count" then
    return
  elseif kind == "sum" or kind == "avg" or kind == "stats" then
    e.sum = e.sum + tonumber(v.sum)
  elseif kind == "min" then
    local m = tonumber(v.min)
    if e.value == nil or m < e.value then e.value = m end
  elseif kind == "max" then
    local m = tonumber(v.max)
    if e.value == nil or m > e.value then e.value = m end
  else
    local slots = e.slots
    local top = AGG_SLOTS - 1
    if kind == "lhist" then top = self.nbuckets + 1 end
    local vs = v.slot
    for i = 0, top do slots[i] = slots[i] + tonumber(vs[i]) end
  end
end

--- Fill an aggregation from the kernel's merged records, as the Lua path would from the same
-- events. spec: as for new() (kind, name, keys = the key field names in slot order, value,
-- min/max/step); agg: an aggregation to add to (default: a new one from spec).
-- records: an array of { key = <struct netdevq_agg_key cdata or 64-byte string>,
-- value = <struct netdevq_agg_value cdata> }, or an iterator function returning key, value
-- (or one such record) per call and nil at the end. Per-CPU values must be merged first:
-- count, sum and slots added, min/max taken over the CPUs whose count > 0. Returns agg.
function _M.from_kernel(spec, records, agg)
  if type(spec) ~= "table" then
    error("netdevq.aggregate: from_kernel(spec, records) needs a spec", 2)
  end
  if agg == nil then
    if metatables[spec.kind or false] == nil then
      error("netdevq.aggregate: spec.kind must be one of " .. concat(KINDS, ", "), 2)
    end
    if spec.kind == "lhist" then
      agg = construct_lhist(spec.min, spec.max, spec.step, spec, 2)
    else
      agg = construct(spec.kind, spec, 2)
    end
  end
  local fields = spec.keys or {}
  local nfields = #fields
  if nfields > AGG_KEYS_MAX then
    error("netdevq.aggregate: a kernel key has at most " .. AGG_KEYS_MAX .. " fields", 2)
  end
  if agg.kind == "lhist" and agg.nbuckets + 2 > AGG_SLOTS then
    error("netdevq.aggregate: a kernel lhist has at most " .. _M.KERNEL_LHIST_MAX_BUCKETS
      .. " buckets", 2)
  end
  local parts = {}
  if type(records) == "function" then
    while true do
      local key, value = records()
      if key == nil then break end
      if value == nil and type(key) == "table" then key, value = key.key, key.value end
      merge_record(agg, fields, nfields, parts, key, value)
    end
  elseif type(records) == "table" then
    for i = 1, #records do
      local r = records[i]
      merge_record(agg, fields, nfields, parts, r.key, r.value)
    end
  elseif records ~= nil then
    error("netdevq.aggregate: records must be an array or an iterator", 2)
  end
  return agg
end

-- An on_event callback that feeds agg from event views, keyed by the fields in keys (array,
-- possibly empty) with the value of field `value` (nil for count). Mirrors the kernel path: an
-- absent key field is ABSENT, an event without the value field is skipped. Allocates nothing
-- per event once a key exists.
function _M.feeder(agg, keys, value)
  local nkeys = #keys
  if nkeys == 0 then
    if value == nil then
      return function() agg:add(nil, 1) end
    end
    return function(ev)
      local v = ev[value]
      if v ~= nil then agg:add(nil, v) end
    end
  end
  local key = {}
  return function(ev)
    local v = 1
    if value ~= nil then
      v = ev[value]
      if v == nil then return end
    end
    for j = 1, nkeys do
      local kv = ev[keys[j]]
      if kv == nil then kv = ABSENT end
      key[j] = kv
    end
    agg:add(nkeys == 1 and key[1] or key, v)
  end
end

return _M
