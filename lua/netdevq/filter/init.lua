-- netdevq.filter: the --filter language (the grammar is in filter/parse.lua).
--
--   filter.parse(expr)            -> tree | nil, message, column (one line: "filter: ...")
--   filter.caret(expr, column)    -> "expr\n     ^"
--   filter.format(tree)           -> filter text for a tree (a remainder too)
--   filter.compile(tree[, getters]) -> match(ev) -> boolean, on raw event values
--   filter.pushdown(tree, cfg)    -> remainder tree | nil, NEED bits, names of members filled
--   filter.needs(tree)            -> NDQ_NEED_* bits its fields need
--   filter.prepare(expr, cfg)     -> what a tracer needs: the kernel part written into cfg and
--                                    { match = remainder matcher | nil, need = bits } | nil, err
local parse = require("netdevq.filter.parse")
local compile = require("netdevq.filter.compile")
local pushdown = require("netdevq.filter.pushdown")

local bor = require("bit").bor


local _M = {
    parse = parse.parse,
    caret = parse.caret,
    format = parse.format,
    compile = compile.compile,
    pushdown = pushdown.pushdown,
    needs = pushdown.needs,
}


-- expr (nil or "" = no filter) -> { match = function(p) | nil, need = NEED bits of the fields
-- Lua must still read, kernel_need = NEED bits the kernel part reads }, or nil, message, caret
function _M.prepare(expr, cfg)
    if expr == nil or expr == "" then
        return { need = 0, kernel_need = 0 }
    end
    local tree, err, col = parse.parse(expr)
    if not tree then
        return nil, err, col and parse.caret(expr, col)
    end
    local sets = {}
    local remainder, kernel_need = pushdown.pushdown(tree, cfg, sets)
    local plan = { need = 0, kernel_need = kernel_need, remainder = remainder, sets = sets }
    if remainder then
        plan.match = compile.compile(remainder)
        plan.need = bor(plan.need, pushdown.needs(remainder))
    end
    return plan
end

-- true when the kernel checks all of expr (nil or empty: nothing to check)
function _M.kernel_complete(expr, cfg)
    local plan = _M.prepare(expr, cfg)
    return plan ~= nil and plan.match == nil
end


return _M
