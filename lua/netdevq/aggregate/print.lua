-- netdevq.aggregate.print: aggregations as bpftrace 0.17 prints them (text) and as the JSON
-- "map" / "hist" lines. Methods of every aggregation object (netdevq.aggregate installs them):
-- agg:text(), agg:print([fh]), agg:json(), agg:json_line(), agg:write_json([fh]).
local ffi = require("ffi")
local cjson = require("cjson")
local abi = require("netdevq.abi")

local cjson_encode = cjson.encode
local concat = table.concat
local format = string.format
local rep = string.rep
local floor = math.floor
local huge = math.huge
local type = type
local tostring = tostring
local io_stdout = io.stdout

local float_box = ffi.new("float[1]")

local _M = {}

local AGG_SLOTS = abi.AGG_SLOTS
local NEG = -1             -- Lua-only log2 bucket for negative values: "(..., 0)"
local BAR_WIDTH = 52       -- bpftrace's max_width
local is_hist = { hist = true, lhist = true }
_M.NEG = NEG

-- Integers as integers (exactly, whatever their size), anything else with 14 digits.
local function fmt_num(v)
  if v == floor(v) and v ~= huge and v ~= -huge then
    if v == 0 then return "0" end
    return format("%.0f", v)
  end
  return format("%.14g", v)
end
_M.fmt_num = fmt_num


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
-- top (optional): only the top entries, the largest values, like bpftrace's print(@map, top).
-- The first index of entries() that `top` keeps (the largest values are last).
local function top_from(list, top, level)
  if top == nil then return 1 end
  if type(top) ~= "number" or top < 0 or top % 1 ~= 0 then
    error("netdevq.aggregate: top must be a whole number", level + 1)
  end
  local from = #list - top + 1
  return from < 1 and 1 or from
end

function _M.text(self, top)
  if self.size == 0 then return "" end
  local kind, name = self.kind, self.name
  local buf, n = {}, 0
  local list = self:entries()
  for i = top_from(list, top, 2), #list do
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

--- Write text(top) to fh (default io.stdout): agg:print(), agg:print(io.stderr, 10).
function _M.print(self, fh, top)
  return (fh or io_stdout):write(_M.text(self, top))
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
-- top (optional): only the entries with the largest values, as text(top).
function _M.json(self, top)
  local kind = self.kind
  local data = {}
  local list = self:entries()
  local from = top_from(list, top, 2)
  for i = from, #list do
    local e = list[i]
    local row = { key = e.key }
    if is_hist[kind] then
      row.buckets = json_buckets(self, e.slots)
    elseif kind == "stats" then
      row.value = { count = e.count, average = e.average, total = e.sum }
    else
      row.value = e.value
    end
    data[i - from + 1] = row
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
-- time (optional): RFC 3339 text added as "time" (interval outputs carry when they were taken);
-- top (optional): as json(top)
function _M.json_line(self, time, top)
  local obj = self:json(top)
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
  local when = time and ',"time":' .. json_scalar(time) or ""
  return format('{"type":%s,"name":%s%s,"keys":%s,"data":[%s]}', json_scalar(obj.type),
    json_scalar(obj.name), when, json_array(obj.keys), concat(rows, ","))
end

--- Write json_line() and a newline to fh (default io.stdout); nothing for an empty aggregation
-- (as bpftrace skips empty maps). top: as json(top).
function _M.write_json(self, fh, time, top)
  if self.size == 0 then return true end
  return (fh or io_stdout):write(self:json_line(time, top), "\n")
end


return _M
