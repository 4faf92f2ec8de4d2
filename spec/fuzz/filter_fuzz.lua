-- spec/fuzz/filter_fuzz.lua SEED COUNT: fuzz the --filter language (netdevq.filter.parse and
-- everything a parsed filter goes through: format, pushdown into the kernel config, compile).
--
-- Inputs: half generated from the grammar (fields of every type, every operator, literals near
-- the edges, nesting), half mutations of earlier inputs. For every input, parse() either
--   * returns nil, "filter: ...", column (a clean error; the caret line can be built), or
--   * returns a tree, and then: format() gives text that parses to the same meaning, pushdown()
--     fills a kernel config, and on every event of spec/fixtures/traffic.lua the whole filter
--     decides exactly what kernel part + Lua remainder decide (docs/reference.md: "the result is the
--     same either way").
-- Anything else (a raised error, a malformed message, a disagreement) is a failure.
local here = (arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local common = require("common")
common.setup_paths(arg[0])

local ffi = require("ffi")
require("netdevq.abi") -- struct netdevq_config
local filter = require("netdevq.filter")
local catalogue = require("netdevq.catalogue")
local model = require("support.kernel_model")
local decoded = require("support.decoded")
local traffic = require("fixtures.traffic")

-- field name -> filter type: the catalogue's fields and the pseudo-fields port, host
local FIELD_TYPES = {}
for name, f in pairs(catalogue.by_name) do
    FIELD_TYPES[name] = f.type
end

local random, pick, chance = math.random, common.pick, common.chance
local format = string.format

local run = common.runner("filter", 100000, arg)

-- Literal vocabulary per field type: what the fixture events hold (so that comparisons hit),
-- edges, and near misses.
local VALUES = { integer = { "0", "1", "-1", "65535", "65536", "4294967295", "4294967296",
    "9007199254740993", "0x10", "0xffffffff", "18446744073709551616", "1e3", "00", "053" } }
local STRINGS = { string = {}, time = { '"12:00:00"', '"12:00:00.000257"', '"25:61:61"' },
    mac = { '"02:00:00:00:00:01"', '"02:00:00:00:00:0"', '"ff:ff:ff:ff:ff:ff"', '"02-00-00-00-00-01"' },
    address = { '"198.18.0.0/15"', '"198.18.0.1"', '"2001:db8::/32"', '"2001:db8::1"', '"::"',
        '"::/0"', '"0.0.0.0/0"', '"::ffff:198.18.0.1"', '"1.2.3.4/33"', '"1.2.3"', '"fe80::1%eth0"',
        '"2001:db8::1/129"', '"198.18.0.1/-1"', '"::1::2"' },
    protocol = { '"udp"', '"tcp"', '"icmp"', '"icmpv6"', '"sctp"', '"17"', '"256"', '"nope"', '"gre"' },
    ethertype = { '"ipv4"', '"ipv6"', '"arp"', '"0x0800"', '"0x86dd"', '"0x1"', '"vlan"', '"0xZZ"' },
    flags = { '"S"', '"S."', '"."', '"P."', '"F."', '"R"', '"R."', '"FSRPAUEC"', '"X"', '""' },
}
local seen = {}
for _, ev in ipairs(traffic) do
    for k, v in pairs(ev) do
        local def = FIELD_TYPES[k]
        local key = k .. "=" .. tostring(v)
        if def and not seen[key] then
            seen[key] = true
            if type(v) == "number" then
                VALUES.integer[#VALUES.integer + 1] = format("%d", v)
            elseif def == "string" then
                STRINGS.string[#STRINGS.string + 1] = format("%q", v)
            end
        end
    end
end
STRINGS.string[#STRINGS.string + 1] = "'it''s'"
STRINGS.string[#STRINGS.string + 1] = '"tab\\there"'
STRINGS.string[#STRINGS.string + 1] = '"\\x41\\0"'
STRINGS.string[#STRINGS.string + 1] = '"' .. ("x"):rep(40) .. '"'

local FIELD_NAMES = {}
for name in pairs(FIELD_TYPES) do
    FIELD_NAMES[#FIELD_NAMES + 1] = name
end
table.sort(FIELD_NAMES)
local OPS = { "==", "~=", "!=", "<", "<=", ">", ">=" }
local BAD_FIELDS = { "lenn", "Len", "_", "and", "x1", "portt" }

local function literal(ftype)
    if chance(0.08) then -- the wrong kind of literal
        return pick(chance(0.5) and VALUES.integer or STRINGS.string)
    end
    if ftype == "integer" then
        return pick(VALUES.integer)
    end
    return pick(STRINGS[ftype] or STRINGS.string)
end

local function comparison()
    local name = chance(0.03) and pick(BAD_FIELDS) or pick(FIELD_NAMES)
    local ftype = FIELD_TYPES[name] or "integer"
    local op = pick(OPS)
    return name .. " " .. op .. " " .. literal(ftype)
end

local function expr(depth)
    local r = random()
    if depth <= 0 or r < 0.35 then
        return comparison()
    elseif r < 0.5 then
        return (chance(0.5) and "not " or "!") .. expr(depth - 1)
    elseif r < 0.65 then
        return "(" .. expr(depth - 1) .. ")"
    else
        local op = pick({ "and", "or", "&&", "||" })
        return expr(depth - 1) .. " " .. op .. " " .. expr(depth - 1)
    end
end

local function generate(previous)
    local r = random()
    if r < 0.45 then
        return expr(random(0, 5))
    elseif r < 0.9 and previous then
        return common.mutate(previous, 4, expr(2))
    elseif r < 0.95 then
        -- deep nesting and long chains: the parser must not blow the C stack or take long
        local n = random(1, 3000)
        local kind = random(3)
        if kind == 1 then
            return ("("):rep(n) .. "len > 1" .. (")"):rep(n - random(0, 1))
        elseif kind == 2 then
            return ("not "):rep(n) .. "len > 1"
        end
        return ("len > 1 and "):rep(n) .. "len > 2"
    end
    return common.random_bytes(60)
end

local function check(text)
    local tree, msg, col = filter.parse(text)
    if not tree then
        -- (a message may span lines when it quotes input that holds a newline)
        if type(msg) ~= "string" or not msg:match("^filter: ") then
            return nil, "error message not in the form 'filter: ...': " .. tostring(msg)
        end
        if col ~= nil then
            if type(col) ~= "number" or col < 1 or col > #text + 1 or col % 1 ~= 0 then
                return nil, "bad column " .. tostring(col) .. " for a " .. #text .. "-byte input"
            end
            filter.caret(text, col)
        end
        return "clean"
    end
    local text2 = filter.format(tree)
    local tree2, msg2 = filter.parse(text2)
    if not tree2 then
        return nil, "format() gave text that does not parse: " .. text2 .. " (" .. tostring(msg2) .. ")"
    end
    local cfg = ffi.new("struct netdevq_config")
    local rest = filter.pushdown(tree, cfg)
    local g = decoded.getters
    local whole, again, remainder = filter.compile(tree, g), filter.compile(tree2, g),
        filter.compile(rest, g)
    model.kernel_summary(cfg)
    for i, ev in ipairs(traffic) do
        local w = whole(ev)
        if w ~= again(ev) then
            return nil, "format() changed the meaning on event " .. i .. ": " .. text2
        end
        if w ~= (model.kernel_model(cfg, ev) and remainder(ev)) then
            return nil, "kernel part + remainder disagree with the whole filter on event " .. i
                .. " (kernel: " .. model.kernel_summary(cfg) .. "; remainder: "
                .. (rest and filter.format(rest) or "none") .. ")"
        end
    end
    return "ok"
end

local previous
while run:more() do
    local input = generate(previous)
    run:check(input, check)
    if #input < 400 then
        previous = input
    end
end
run:finish()
