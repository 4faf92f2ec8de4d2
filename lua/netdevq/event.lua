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


-- The view holds a base pointer (_b) and an index (_i), never the event pointer itself: the
-- tracer sets _b once per batch and only the number _i per event, so switching events allocates
-- nothing (a pointer stored in a table would be a new cdata object per event), and a getter's
-- `_b + _i` stays inside the compiled trace.
local function view_set(self, p)
    self._b = p or false      -- never nil: a missing raw _b would go through __index
    self._i = 0
    return self
end

-- the event pointer of the view (what writers and pcapng read), or an error outside a callback
local function view_pointer(self)
    local b = self._b
    if not b then
        error("event view has no event (used outside its callback?)", 3)
    end
    return b + self._i
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
            local b = self._b
            if b then
                return field.get(b + self._i)
            end
            error("event view has no event (used outside its callback?)", 2)
        end
        error(unknown_message(name), 2)
    end,
    __newindex = function(_, name)
        error("event fields are read-only (assigning '" .. tostring(name) .. "')", 2)
    end,
    __tostring = function(self)
        if not self._b then
            return "netdevq.event (none)"
        end
        local p = self._b + self._i
        return format("netdevq.event (%s %s len=%d)", by_name.comm.get(p), by_name.dev.get(p),
                      p.len)
    end,
}

-- The methods, the base and the index are plain fields of the object, so ev.len costs one
-- __index call and view:_set(p) none; field names never collide with them.
function _M.view(p)
    return setmetatable({ _b = p or false, _i = 0, _set = view_set, totable = view_totable,
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
