-- netdevq.jsonlines: the JSON lines writer (output.json), made of netdevq.output's writer parts.
--
-- The line is put together here rather than by cjson.encode: cjson prints numbers with at most
-- 14 significant digits (ts in ns has 15-16), and a hand-built line keeps its keys in column
-- order. cjson still escapes the strings that can hold arbitrary bytes (comm, dev; memoized);
-- the other string fields are made by fields.lua from hex digits, dots, colons and names.
-- Absent fields are omitted, with and without --fields (never null): a consumer tests for the key.
local cjson = require("cjson")
local catalogue = require("netdevq.catalogue")
local clock = require("netdevq.clock")
local event = require("netdevq.event")

local format = string.format
local encode_string = cjson.encode
local ipairs = ipairs
local by_name = catalogue.by_name
local event_pointer = event.pointer
local put_date = clock.put_date


local _M = {}

local Json = {}
Json.__index = Json

local JSON_MEMO_MAX = 4096
local json_text, json_n = {}, 0

local function json_string(v)
    local e = json_text[v]
    if e then
        return e
    end
    e = encode_string(v)
    if json_n >= JSON_MEMO_MAX then
        json_text, json_n = {}, 0
    end
    json_text[v], json_n = e, json_n + 1
    return e
end

-- the code of a column by kind (see output's compile_line): ,"key":value, or nothing for an
-- absent value
local function json_code(kind, key)
    local put
    if kind == "integer" then
        put = "put_integer(buf, v)"
    elseif kind == "safe" then -- a string made by netdevq: nothing to escape
        put = "buf:put('\"', v, '\"')"
    else -- a string from outside
        put = "buf:put(json_string(v))"
    end
    return "local v = %s if v ~= nil then buf:put(" .. format("%q", key) .. ") " .. put .. " end"
end

local function json_open(buf)
    buf:put('{"type":"event"')
end

-- netdevq.output's writer parts (check_opts, printable_getter, compile_line, new_writer, queued,
-- write_line, write_err_line, flush, summary_text): set by new()
local w

function Json:event(ev)
    if self.err then
        return nil, self.err
    end
    local buf = self.buf
    self.line(buf, event_pointer(ev))
    buf:put("}\n")
    return w.queued(self)
end

function Json:flush()
    return w.flush(self)
end

function Json:lost(count)
    return w.write_line(self, format('{"type":"lost","count":%d}', count))
end

-- stats: { events=, matched=, lost=, duration_s= }. Writes the JSON summary line to file and the
-- summary text to err_file (the contract wants both).
function Json:summary(stats)
    local ok, err = w.write_line(self,
        format('{"type":"summary","time":"%s","events":%d,"matched":%d,"lost":%d,'
               .. '"kfiltered":%d,"agg_overflow":%d,%s"duration_s":%.3f}', clock.now_rfc3339(),
               stats.events or 0, stats.matched or 0, stats.lost or 0, stats.kfiltered or 0,
               stats.agg_overflow or 0, stats.held and format('"held":%d,', stats.held) or "",
               stats.duration_s or 0))
    if not ok then
        return nil, err
    end
    return w.write_err_line(self, w.summary_text(stats))
end

-- opts: fields (array of names; default: every catalogue field), file, err_file, buffered.
-- parts: the writer parts of netdevq.output.
function _M.new(opts, parts)
    w = parts
    opts = w.check_opts(opts, "output.json")
    local list = opts.fields or catalogue.names
    local cols = {}
    for i, name in ipairs(list) do
        local field = by_name[name]
        local key = ',"' .. name .. '":'
        if name == "time" then -- JSON lines carry the date: `time` is RFC 3339 in UTC there
            cols[i] = { put = function(buf, p)
                buf:put(key, '"')
                put_date(buf, p.ts)
                buf:put('"')
            end }
        else
            local kind = "safe"
            if field.value_type == "integer" then
                kind = "integer"
            elseif field.untrusted or field.dynamic then
                kind = "escaped"
            end
            cols[i] = { get = w.printable_getter(field), code = json_code(kind, key) }
        end
    end
    return w.new_writer(Json, opts, w.compile_line(json_open, cols, "", json_string))
end

-- the line of one event, as a string without the newline
function Json:format(ev)
    local buf = self.scratch
    buf:reset()
    self.line(buf, event_pointer(ev))
    buf:put("}")
    return buf:tostring()
end


return _M
