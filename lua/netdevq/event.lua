-- netdevq.event: the event object callbacks receive — one reusable view per consumer, pointed
-- at each `const struct netdevq_event *` in turn. ev.len, ev.dev, ev["skb.dev.mtu"] read one
-- field through the catalogue's getter; nothing is decoded that is not read.
local catalogue = require("netdevq.catalogue")

local by_name = catalogue.by_name
local unknown_message = catalogue.unknown_message
local format = string.format
local type = type
local tostring = tostring
local error = error
local setmetatable = setmetatable
local getmetatable = getmetatable


local _M = {}


local function view_set(self, p)
    self._p = p or false      -- never nil: a missing raw _p would go through __index
    return self
end

-- the event pointer of the view (what writers and pcapng read), or an error outside a callback
local function view_pointer(self)
    local p = self._p
    if not p then
        error("event view has no event (used outside its callback?)", 3)
    end
    return p
end

-- A plain table of the present fields (all, or those in list): it outlives the callback, the
-- view does not (its event is overwritten by the next batch).
local function view_totable(self, list)
    local p = view_pointer(self)
    local t = {}
    local all = catalogue.fields
    local n = list and #list or #all
    for i = 1, n do
        local field
        if list then
            field = by_name[list[i]]
        else
            field = all[i]
        end
        if not field or not field.get then
            error(unknown_message(list[i]), 2)
        end
        t[field.name] = field.get(p)
    end
    return t
end

local view_mt = {
    __index = function(self, name)
        local field = by_name[name]
        if field and field.get then
            local p = self._p
            if p then
                return field.get(p)
            end
            error("event view has no event (used outside its callback?)", 2)
        end
        error(unknown_message(name), 2)
    end,
    __newindex = function(_, name)
        error("event fields are read-only (assigning '" .. tostring(name) .. "')", 2)
    end,
    __tostring = function(self)
        local p = self._p
        if not p then
            return "netdevq.event (none)"
        end
        return format("netdevq.event (%s %s len=%d)", by_name.comm.get(p), by_name.dev.get(p),
                      p.len)
    end,
}

-- The methods and the pointer are plain fields of the object, so ev.len costs one __index call
-- and view:_set(p) none; field names never collide with them.
function _M.view(p)
    return setmetatable({ _p = p or false, _set = view_set, totable = view_totable,
                          pointer = view_pointer }, view_mt)
end

-- true when x is an object made by view()
function _M.is_view(x)
    return type(x) == "table" and getmetatable(x) == view_mt
end

-- the event pointer behind ev (a view or a pointer)
function _M.pointer(ev)
    if type(ev) == "table" then
        return view_pointer(ev)
    end
    return ev
end


return _M
