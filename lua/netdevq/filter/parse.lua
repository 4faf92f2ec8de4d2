-- netdevq.filter.parse: the --filter language — lexer, parser, and the way back to text.
--
--   filter.parse(expr)            -> tree | nil, message, column (one line: "filter: ...")
--   filter.caret(expr, column)    -> "expr\n     ^"
--   filter.compile(tree)          -> match(ev) -> boolean (ev.field: decoded values), source
--   filter.pushdown(tree, cfg)    -> remainder tree | nil, NEED bits, names of members filled
--   filter.kernel_model(cfg, ev)  -> boolean: what the kernel filter decides for ev
--   filter.kernel_summary(cfg)    -> one line: what the kernel part checks (for -v)
--   filter.format(tree)           -> filter text for a tree (a remainder too)
--   filter.needs(tree)            -> NDQ_NEED_* bits its fields need
--
-- Grammar (lowest precedence first; keywords are lower case):
--
--   expr       := conj { ("or" | "||") conj }
--   conj       := unary { ("and" | "&&") unary }
--   unary      := ("not" | "!") unary | "(" expr ")" | comparison
--   comparison := FIELD ("==" | "~=" | "!=" | "<" | "<=" | ">" | ">=") VALUE
--   VALUE      := integer (decimal or 0x hex) | 'string' | "string"  (\\ \" \' \n \t \xHH)
--
-- `not` binds tighter than `and`, and its operand is a whole comparison: `not dport == 53` is
-- `not (dport == 53)`. `!=` is another spelling of `~=`; `&&`, `||` and `!` of and, or, not.
--
-- Absent fields (dport of an ICMP packet, saddr of ARP, ...): every comparison with an absent
-- field is false, `a ~= v` is exactly `not (a == v)` and so is true, and `not` of a comparison
-- with an absent field is true -- like tcpdump, where `not port 53` matches ICMP. The kernel
-- filter and the Lua matcher both follow this rule (the equivalence spec proves it).
--
-- Types: integer fields take integers and every operator. String fields (comm dev skb smac
-- dmac) take strings and only == and ~=; `time` (fixed-width HH:MM:SS.micro) also takes < <= >
-- >= and compares as text, which is chronological. proto takes a name ("udp") or a number
-- (17), ethertype a name ("ipv4"), "0x0800" or 0x0800, tcp_flags tcpdump letters ("S.", any
-- order, "none") or the header byte (0x12); these three compare with == and ~= only. Address
-- fields (saddr daddr host) take an address ("198.18.0.1", exact) or a prefix
-- ("198.18.0.0/15", "2001:db8::/32"); bits past the prefix length are ignored. Addresses
-- compare as family + bytes: an IPv4 prefix never matches an IPv6 address (not even
-- ::ffff:198.18.0.1). `port` is sport or dport, `host` saddr or daddr: `port == 53` is
-- `sport == 53 or dport == 53`, and `port ~= 53` is its negation (neither port is 53).
local catalogue = require("netdevq.catalogue")
local names = require("netdevq.names")

local char, sub, find, match, format, lower, gsub =
    string.char, string.sub, string.find, string.match, string.format,
    string.lower, string.gsub
local concat = table.concat
local floor = math.floor
local tonumber, type, error, pcall, ipairs = tonumber, type, error, pcall, ipairs

local by_name = catalogue.by_name
local suggest = catalogue.suggest


local _M = {}


local MAX_NESTING = 64
local ORDERED_TYPES = { integer = true, time = true }

-- every name a filter takes, in catalogue order (for suggestions)
local function filter_names()
    local list = {}
    for i, n in ipairs(catalogue.names) do
        list[i] = n
    end
    list[#list + 1] = "port"
    list[#list + 1] = "host"
    return list
end


---------------------------------------------------------------------------------------------
-- Lexer
---------------------------------------------------------------------------------------------

-- errors travel as tables through error() inside parse and become nil, msg, col there
local function fail(col, msg)
    error({ col = col, msg = msg }, 0)
end

local function syntax(col, msg)
    fail(col, format("filter: syntax error at column %d: %s", col, msg))
end

local ESCAPES = { n = "\n", t = "\t", r = "\r", ["\\"] = "\\", ['"'] = '"', ["'"] = "'",
                  ["0"] = "\0" }

local OPS2 = { ["=="] = "==", ["~="] = "~=", ["!="] = "~=", ["<="] = "<=", [">="] = ">=",
               ["&&"] = "and", ["||"] = "or" }
local OPS1 = { ["<"] = "<", [">"] = ">", ["("] = "(", [")"] = ")", ["!"] = "not" }
local CMP = { ["=="] = true, ["~="] = true, ["<"] = true, ["<="] = true, [">"] = true,
              [">="] = true }

-- tokens: { t = ident|int|str|and|or|not|op|(|)|eof, v = value, col = first, stop = last }
local function lex(expr)
    local toks, i, n = {}, 1, #expr
    while true do
        i = find(expr, "[^ \t\r\n]", i) or n + 1
        if i > n then
            toks[#toks + 1] = { t = "eof", col = n + 1, stop = n + 1 }
            return toks
        end
        local c = sub(expr, i, i)
        local two = sub(expr, i, i + 1)
        if match(c, "[%a_]") then
            -- a member path (skb.dev.mtu, skb.cb[0]) is one name
            local w = match(expr, "^skb%.[%w_%.%[%]]+", i) or match(expr, "^[%w_]+", i)
            local t = (w == "and" or w == "or" or w == "not") and w or "ident"
            toks[#toks + 1] = { t = t, v = w, col = i, stop = i + #w - 1 }
            i = i + #w
        elseif match(c, "%d") then
            local w = match(expr, "^0[xX]%x+", i) or match(expr, "^%d+", i)
            local stop = i + #w - 1
            if match(sub(expr, stop + 1, stop + 1), "[%w_%.]") then
                local bad = match(expr, "^[%w_%.]+", i)
                syntax(i, format("malformed number '%s'", bad))
            end
            local v = tonumber(w)
            if not v or v >= 2 ^ 64 then
                syntax(i, format("integer '%s' is too large (the widest field is 64 bits)", w))
            end
            toks[#toks + 1] = { t = "int", v = v, col = i, stop = stop }
            i = stop + 1
        elseif c == '"' or c == "'" then
            local buf, j = {}, i + 1
            while true do
                local d = sub(expr, j, j)
                if d == "" then
                    syntax(i, format("unterminated string (no closing %s)", c))
                elseif d == c then
                    break
                elseif d == "\\" then
                    local e = sub(expr, j + 1, j + 1)
                    if e == "x" and match(expr, "^%x%x", j + 2) then
                        buf[#buf + 1] = char(tonumber(sub(expr, j + 2, j + 3), 16))
                        j = j + 4
                    elseif ESCAPES[e] then
                        buf[#buf + 1] = ESCAPES[e]
                        j = j + 2
                    else
                        syntax(j, format("unknown escape '\\%s' in a string", e))
                    end
                else
                    buf[#buf + 1] = d
                    j = j + 1
                end
            end
            toks[#toks + 1] = { t = "str", v = concat(buf), col = i, stop = j }
            i = j + 1
        elseif OPS2[two] then
            local v = OPS2[two]
            toks[#toks + 1] = { t = CMP[v] and "op" or v, v = v, col = i, stop = i + 1 }
            i = i + 2
        elseif OPS1[c] then
            local v = OPS1[c]
            toks[#toks + 1] = { t = CMP[v] and "op" or v, v = v, col = i, stop = i }
            i = i + 1
        elseif c == "=" then
            syntax(i, "'=' is not an operator: use '==' to compare")
        else
            syntax(i, format("unexpected character '%s'", c))
        end
    end
end




---------------------------------------------------------------------------------------------
-- Parser
---------------------------------------------------------------------------------------------

local function describe(tok, expr)
    if tok.t == "eof" then
        return "the end of the expression"
    end
    return "'" .. sub(expr, tok.col, tok.stop) .. "'"
end

-- the literal each type takes: int, str or any (both)
local ACCEPTS = {
    integer = "int", string = "str", time = "str", mac = "str", address = "str",
    protocol = "any", ethertype = "any", flags = "any",
}
local LITERAL_WORDS = {
    integer = "an integer", string = "a string", time = "a string", mac = "a string",
    address = "an address or prefix in quotes",
}

local TYPE_WORDS = {
    integer = "an integer field", string = "a string field", time = "a string field",
    mac = "a MAC address field", address = "an address field", protocol = "a protocol field",
    ethertype = "an ethertype field", flags = "a TCP flags field",
}

-- The literal of a comparison, checked against the field's type and normalized:
-- integer/protocol/ethertype/flags -> number, string/time/mac -> string, address -> prefix.
-- (one branch per literal type, each with its own message; long but flat)
local function typed_value(expr, ftok, optok, vtok)
    local name, op = ftok.v, optok.v
    local def = by_name[name]
    local ty = def.type
    local written = sub(expr, vtok.col, vtok.stop)
    local col = vtok.col
    local v = vtok.v
    if def.resolve and vtok.t == "str" then -- a name for a number (netns == "blue")
        local n, why = def.resolve(v)
        if not n then
            fail(col, format("filter: %s at column %d: %s", written, col, why))
        end
        return n
    end
    if ACCEPTS[ty] ~= "any" and ACCEPTS[ty] ~= vtok.t then
        fail(col, format("filter: '%s' is %s: compare it with %s (%s), not %s",
                         name, TYPE_WORDS[ty], LITERAL_WORDS[ty], def.example, written))
    end
    if not ORDERED_TYPES[ty] and op ~= "==" and op ~= "~=" then
        fail(optok.col, format("filter: '%s' is %s: compare it with == or ~=, not '%s'",
                               name, TYPE_WORDS[ty], sub(expr, optok.col, optok.stop)))
    end
    if ty == "integer" or ty == "string" or ty == "time" then
        return v
    elseif ty == "mac" then
        local parts = {}
        for g in (v .. ":"):gmatch("([^:%-]*)[:%-]") do
            parts[#parts + 1] = g
        end
        for i = 1, #parts do
            if not match(parts[i], "^%x%x?$") then
                parts = {}
                break
            end
            parts[i] = format("%02x", tonumber(parts[i], 16))
        end
        if #parts ~= 6 then
            fail(col, format("filter: bad MAC address %s at column %d: expected six hex bytes "
                             .. "like \"02:00:00:00:00:01\"", written, col))
        end
        return concat(parts, ":")
    elseif ty == "address" then
        local p, why = names.parse_prefix(v)
        if not p then
            fail(col, format("filter: bad address %s at column %d: %s", written, col, why))
        end
        return p
    elseif ty == "protocol" then
        if vtok.t == "int" then
            if v > 255 then
                fail(col, format("filter: protocol %s at column %d is out of range: use 0-255",
                                 written, col))
            end
            return v
        end
        local n = names.proto_number(v)
        if not n or n > 255 then
            local near = suggest(lower(v), names.PROTOCOL_NAMES)
            fail(col, format("filter: unknown protocol %s at column %d (%s)", written, col,
                             #near > 0 and "did you mean: " .. concat(near, ", ") .. "?"
                             or "use a name like \"tcp\", \"udp\", \"icmp\", \"icmpv6\", "
                                .. "\"sctp\" or a number 0-255"))
        end
        return n
    elseif ty == "ethertype" then
        if vtok.t == "int" then
            if v > 0xffff then
                fail(col, format("filter: ethertype %s at column %d is out of range: use "
                                 .. "0-0xffff", written, col))
            end
            return v
        end
        local n = names.ethertype_number(v)
        if not n then
            local near = suggest(lower(v), names.ETHERTYPE_NAMES)
            fail(col, format("filter: unknown ethertype %s at column %d (%s)", written, col,
                             #near > 0 and "did you mean: " .. concat(near, ", ") .. "?"
                             or "use a name like \"ipv4\", \"ipv6\", \"arp\" or a number "
                                .. "like 0x0800"))
        end
        return n
    else -- flags
        if vtok.t == "int" then
            if v > 255 then
                fail(col, format("filter: tcp_flags %s at column %d is out of range: use 0-255",
                                 written, col))
            end
            return v
        end
        local n = names.tcp_flags_number(v)
        if not n then
            fail(col, format("filter: bad tcp_flags %s at column %d: use tcpdump letters "
                             .. "F S R P . U E W (like \"S.\") or \"none\"", written, col))
        end
        return n
    end
end

-- A recursive-descent parser: its rules are nested closures over one token position, so they
-- live in one function (each rule itself is short).
local function parser(expr, toks)
    local pos = 1
    local function peek()
        return toks[pos]
    end
    local function take()
        local t = toks[pos]
        pos = pos + 1
        return t
    end

    local parse_or

    local function parse_comparison()
        local ftok = take()
        local name = ftok.v
        local _, perr = catalogue.field(name) -- member paths and kstack become fields here
        if perr and not by_name[name] and ftok.t == "ident" and find(name, "^skb%.") then
            fail(ftok.col, format("filter: %s (column %d)", perr, ftok.col))
        end
        if not by_name[name] then
            local known = filter_names()
            local near = suggest(name, known)
            local hint = #near > 0 and "did you mean: " .. concat(near, ", ") .. "?"
                         or "known fields: " .. concat(known, ", ")
            fail(ftok.col, format("filter: unknown field '%s' at column %d (%s)",
                                  name, ftok.col, hint))
        end
        local optok = take()
        if optok.t ~= "op" then
            syntax(optok.col, format("expected a comparison (== ~= != < <= > >=) after '%s', "
                                     .. "found %s", name, describe(optok, expr)))
        end
        local vtok = take()
        if vtok.t ~= "int" and vtok.t ~= "str" then
            local hint = ""
            if vtok.t == "ident" then
                hint = format(" (strings need quotes: \"%s\")", vtok.v)
            end
            syntax(vtok.col, format("expected a value after '%s'%s",
                                    sub(expr, optok.col, optok.stop), hint))
        end
        return {
            type = "cmp", field = name, op = optok.v,
            value = typed_value(expr, ftok, optok, vtok),
            literal = sub(expr, vtok.col, vtok.stop), col = ftok.col,
        }
    end

    -- 'not' and '(' nest; the compiled matcher is Lua source with one level per nesting, and
    -- LuaJIT's parser takes 200 levels: deeper filters are refused here, with the column
    local depth = 0
    local parse_unary_inner

    local function parse_unary()
        local tok = peek()
        local nests = tok.t == "not" or tok.t == "("
        if nests then
            depth = depth + 1
            if depth > MAX_NESTING then
                syntax(tok.col, format("nested deeper than %d levels of 'not' and '('",
                                       MAX_NESTING))
            end
        end
        local node = parse_unary_inner()
        if nests then
            depth = depth - 1
        end
        return node
    end

    parse_unary_inner = function()
        local tok = peek()
        if tok.t == "not" then
            take()
            return { type = "not", parse_unary(), col = tok.col }
        elseif tok.t == "(" then
            take()
            local inner = parse_or()
            local close = take()
            if close.t ~= ")" then
                syntax(close.col, format("expected ')' to close the '(' at column %d, found %s",
                                         tok.col, describe(close, expr)))
            end
            return inner
        elseif tok.t == "ident" then
            return parse_comparison()
        end
        syntax(tok.col, format("expected a field name, 'not' or '(', found %s",
                               describe(tok, expr)))
    end

    local function parse_list(kind, sub_parser)
        local first = sub_parser()
        if peek().t ~= kind then
            return first
        end
        local node = { type = kind, first, col = first.col }
        while peek().t == kind do
            take()
            local nxt = sub_parser()
            if nxt.type == kind then -- a parenthesized list of the same kind joins in
                for i = 1, #nxt do
                    node[#node + 1] = nxt[i]
                end
            else
                node[#node + 1] = nxt
            end
        end
        if first.type == kind then
            local flat = { type = kind, col = first.col }
            for i = 1, #first do
                flat[#flat + 1] = first[i]
            end
            for i = 2, #node do
                flat[#flat + 1] = node[i]
            end
            node = flat
        end
        return node
    end

    local function parse_and()
        return parse_list("and", parse_unary)
    end

    parse_or = function()
        return parse_list("or", parse_and)
    end

    local tree = parse_or()
    local tok = peek()
    if tok.t ~= "eof" then
        if tok.t == ")" then
            syntax(tok.col, "unexpected ')' (no '(' to close)")
        elseif tok.t == "ident" or tok.t == "not" or tok.t == "(" then
            syntax(tok.col, format("expected 'and' or 'or' before %s", describe(tok, expr)))
        end
        syntax(tok.col, format("unexpected %s after a complete comparison",
                               describe(tok, expr)))
    end
    return tree
end

-- tree | nil, message, column
function _M.parse(expr)
    if type(expr) ~= "string" then
        error("filter.parse: expected a string, got " .. type(expr), 2)
    end
    local ok, res = pcall(function()
        local toks = lex(expr)
        if toks[1].t == "eof" then
            syntax(1, "empty expression")
        end
        return parser(expr, toks)
    end)
    if ok then
        return res
    end
    if type(res) == "table" then
        return nil, res.msg, res.col
    end
    error(res, 0)
end

-- the expression, then a caret under column `col` (tabs kept so that the caret lines up)
function _M.caret(expr, col)
    local pad = gsub(sub(expr, 1, col - 1), "[^\t]", " ")
    return expr .. "\n" .. pad .. "^"
end


---------------------------------------------------------------------------------------------
-- Formatting a tree back into filter text
---------------------------------------------------------------------------------------------

local function num_text(v)
    if v == floor(v) and math.abs(v) < 2 ^ 53 then
        return format("%d", v)
    end
    return format("%.17g", v)
end
_M.num_text = num_text

-- the literal as written; a made-up node (no literal) gets a canonical one
local function value_text(node)
    if node.literal then
        return node.literal
    end
    local v = node.value
    if by_name[node.field].type == "address" then
        return format("%q", names.prefix_text(v, true))
    elseif type(v) == "string" then
        return (gsub(format("%q", v), "\\\n", "\\n"))
    end
    return num_text(v)
end

local function format_node(node, parent)
    local ty = node.type
    if ty == "cmp" then
        return node.field .. " " .. node.op .. " " .. value_text(node)
    elseif ty == "not" then
        local inner = node[1]
        if inner.type == "cmp" and inner.op == "==" then -- `a ~= v` is `not (a == v)`
            return inner.field .. " ~= " .. value_text(inner)
        end
        return "not " .. format_node(inner, "not")
    end
    local parts = {}
    for i = 1, #node do
        parts[i] = format_node(node[i], ty)
    end
    local s = concat(parts, " " .. ty .. " ")
    if parent then
        s = "(" .. s .. ")"
    end
    return s
end

function _M.format(tree)
    if tree == nil then
        return ""
    end
    return format_node(tree, nil)
end




return _M
