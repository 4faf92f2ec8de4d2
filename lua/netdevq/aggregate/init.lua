-- netdevq.aggregate: bpftrace-like aggregations (count, sum, avg, min, max, stats, hist, lhist)
-- fed from Lua (agg:add) or from the in-kernel per-CPU aggregation map (aggregate/kernel.lua),
-- printed by aggregate/print.lua (bpftrace 0.17 text, the JSON "map" / "hist" lines).
--
-- Both paths give identical results on the same events because the Lua path puts values into the
-- same histogram slots as bpf/netdevq.bpf.c: see log2_slot and linear_slot, the mirror of the BPF
-- code, and the slot comments of struct netdevq_agg_value in bpf/netdevq.h.

local abi = require("netdevq.abi")
local printers = require("netdevq.aggregate.print")

local concat = table.concat
local sort = table.sort
local format = string.format
local floor = math.floor
local ceil = math.ceil
local type = type
local tonumber = tonumber
local tostring = tostring
local error = error
local pairs = pairs
local ipairs = ipairs
local setmetatable = setmetatable
local getmetatable = getmetatable

local fmt_num = printers.fmt_num

local _M = {}

local AGG_SLOTS = abi.AGG_SLOTS
local LOG2_TOP = 64        -- highest log2 slot a 64-bit value reaches: [2^63, 2^64)
local NEG = printers.NEG   -- Lua-only log2 bucket for negative values: "(..., 0)"

-- Bounds that keep a Lua aggregation's memory finite, like the kernel map's: keys per
-- aggregation (the default of max_keys; events for more keys are counted in overflow and
-- reported), and buckets per lhist.
_M.DEFAULT_MAX_KEYS = 65536
_M.LHIST_MAX_BUCKETS = 10000

_M.KINDS = { "count", "sum", "avg", "min", "max", "stats", "hist", "lhist" }

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

local KINDS = _M.KINDS

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
  if e == nil then
    if self.size >= self.max_keys then -- bounded like the kernel map: counted, reported
      self.overflow = self.overflow + 1
      return nil
    end
    e = new_entry(self, id, key)
  end
  return e
end
_M.entry = lookup -- for aggregate/kernel.lua, which merges kernel records into entries

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
  if e == nil then return end
  e.count = e.count + 1
end

-- the entry for key with one more event of value v counted and summed (nil: no room)
local function counted(self, key, v)
  local e = lookup(self, key)
  if e == nil then return nil end
  e.count = e.count + 1
  e.sum = e.sum + v -- hist, lhist: exported as the Prometheus histogram _sum
  return e
end

local function add_count_sum(self, key, v)
  counted(self, key, check_value(v))
end
methods.sum.add = add_count_sum
methods.avg.add = add_count_sum
methods.stats.add = add_count_sum

function methods.min.add(self, key, v)
  v = check_value(v)
  local e = lookup(self, key)
  if e == nil then return end
  e.count = e.count + 1
  local m = e.value
  if m == nil or v < m then e.value = v end
end

function methods.max.add(self, key, v)
  v = check_value(v)
  local e = lookup(self, key)
  if e == nil then return end
  e.count = e.count + 1
  local m = e.value
  if m == nil or v > m then e.value = v end
end

function methods.hist.add(self, key, v)
  v = check_value(v)
  local e = counted(self, key, v)
  if e == nil then return end
  local slots = e.slots
  local s = log2_slot(v)
  slots[s] = slots[s] + 1
end

function methods.lhist.add(self, key, v)
  v = check_value(v)
  local e = counted(self, key, v)
  if e == nil then return end
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
    -- numeric loops only: LuaJIT 2.1.0-beta3 (Debian 12) was seen to miscompile a pairs()
    -- loop over these slots and drop buckets
    local total = 0
    local slots = e.slots
    local first = slots[NEG] ~= nil and NEG or 0
    local last = kind == "hist" and AGG_SLOTS - 1 or #slots
    for i = first, last do total = total + slots[i] end
    e.total = total
    e.value = total
  end
  e.sort_value = e.value
end

--- Entries sorted like bpftrace prints them: by value ascending (count, sum, min, max: the value;
-- avg, stats: the average; hist, lhist: the total count), equal values by key parts.
-- Each entry: { key = {parts...}, text = "[lo, udp]" (as printed after the name), value = the
-- printed value (hist, lhist: total), count = events, sum (sum, avg, stats; hist, lhist: the
-- sum of the values), average (avg, stats), total and slots = {[i] = count} (hist: -1..67,
-- lhist: 0..n+1) }.
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

for _, name in ipairs({ "text", "print", "json", "json_line", "write_json" }) do
  common[name] = printers[name]
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
  if opts.max_keys ~= nil and not (type(opts.max_keys) == "number" and opts.max_keys >= 1
      and opts.max_keys % 1 == 0) then
    error("netdevq.aggregate: max_keys must be a positive integer", level + 1)
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
    max_keys = opts.max_keys or _M.DEFAULT_MAX_KEYS,
    overflow = 0,          -- events whose key found no room (never reset: reported at the end)
  }, metatables[kind])
end

local function is_int(v)
  return type(v) == "number" and v == floor(v) and v > -2 ^ 63 and v < 2 ^ 63
end

-- The one check of lhist bounds (the CLI, open() and the constructor all use it):
-- nil when fine, else what is wrong.
local function lhist_problem(min, max, step)
  if not (is_int(min) and is_int(max) and is_int(step)) then
    return "lhist MIN, MAX and STEP must be integers"
  end
  if step <= 0 then
    return "lhist STEP must be > 0 (got " .. fmt_num(step) .. ")"
  end
  if max <= min then
    return format("lhist MAX must be > MIN (got MIN %s, MAX %s)", fmt_num(min), fmt_num(max))
  end
  if (max - min) % step ~= 0 then
    return format("lhist MAX - MIN (%s) must be a multiple of STEP %s", fmt_num(max - min),
      fmt_num(step))
  end
  if (max - min) / step > _M.LHIST_MAX_BUCKETS then
    return format("lhist has at most %d buckets ((MAX - MIN) / STEP is %s)",
      _M.LHIST_MAX_BUCKETS, fmt_num((max - min) / step))
  end
  return nil
end

local function construct_lhist(min, max, step, opts, level)
  local problem = lhist_problem(min, max, step)
  if problem then
    error("netdevq.aggregate: " .. problem, level + 1)
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

--- aggregate.check(spec) -> true | nil, message: what new(spec) would refuse, as a message
-- (kind, keys, value and lhist bounds); field names are checked by the caller's catalogue.
function _M.check(spec)
  if type(spec) ~= "table" or metatables[spec.kind or false] == nil then
    return nil, "aggregation kind must be one of " .. concat(KINDS, ", ")
  end
  if spec.kind ~= "count" and type(spec.value) ~= "string" then
    return nil, spec.kind .. " needs a value field"
  end
  if spec.kind == "lhist" then
    local problem = lhist_problem(spec.min, spec.max, spec.step)
    if problem then
      return nil, problem
    end
  end
  return true
end

--- Is v an aggregation object?
function _M.is_aggregation(v)
  local mt = getmetatable(v)
  return mt ~= nil and metatables[v.kind or false] == mt
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
  -- names from outside (comm, dev) are keyed by their printable text, as the kernel path does
  local by_name = require("netdevq.catalogue").by_name
  local printable = require("netdevq.names").printable
  local escape = {}
  for j = 1, nkeys do
    local f = by_name[keys[j]]
    escape[j] = f ~= nil and f.untrusted == true
  end
  return function(ev)
    local v = 1
    if value ~= nil then
      v = ev[value]
      if v == nil then return end
    end
    for j = 1, nkeys do
      local kv = ev[keys[j]]
      if kv == nil then
        kv = ABSENT
      elseif escape[j] then
        kv = printable(kv)
      end
      key[j] = kv
    end
    agg:add(nkeys == 1 and key[1] or key, v)
  end
end

return _M

