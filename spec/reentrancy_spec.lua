-- Callback reentrancy, adversarially: what an on_event callback may do to its own tracer (close
-- it, poll it, raise, yield in a coroutine while the tracer is closed), in both batch modes: one
-- event per poll (open{batch=1}) and whole batches (the default). Every case checks exact
-- deliveries (each of 50 packets, told apart by size, exactly once or not at all) and that the
-- figures add up: received == matched + lua_filtered + pending.
-- Methods after close() raise "tracer is closed"; bad follow_pid and pcap values are clean errors.
local netns = require("support.netns")

local N = 50
local PAYLOADS = {} -- 50 distinct UDP payload sizes: an event's len tells which packet it was
for i = 1, N do
    PAYLOADS[i] = tostring(99 + i)
end
local L2L3L4 = 14 + 20 + 8 -- veth: Ethernet + IPv4 + UDP headers

local MODES = {
    { name = "one event per poll (batch=1)", batch = 1 },
    { name = "batched (batch=64)", batch = 64 },
}

describe("reentrant callbacks #root", function()
    local netdevq, pair

    setup(function()
        if netns.is_root() then
            netdevq = require("netdevq")
            pair = assert(netns.pair{ name = "ndqre" })
        end
    end)

    teardown(function()
        if pair then
            pair:destroy()
        end
    end)

    -- A tracer on the pair's namespace a, with the 50 packets already in its ring buffer.
    local function loaded_tracer(batch)
        netns.require_root()
        local t = assert(netdevq.open{
            filter = ('netns == %d and proto == "udp" and dport == 7100'):format(pair.netns_a),
            batch = batch,
        })
        assert(pair:exec("a", { netns.ndq_send(), "udp4", pair.ip4_a, pair.ip4_b, "7100", "41000",
                                table.concat(PAYLOADS, ",") }))
        return t
    end

    local function index_of(ev)
        return ev.len - L2L3L4 - 99
    end

    -- polls (deliveries go to the callbacks) until the 50 packets are all handled or 5 s passed
    local function drain(t)
        for _ = 1, 100 do
            local st = t:stats()
            if st.received == N and st.pending == 0 then
                return
            end
            t:poll(50)
        end
    end

    local function assert_adds_up(st)
        assert.equal(st.received, st.matched + st.lua_filtered + st.pending)
    end

    for _, mode in ipairs(MODES) do
        describe(mode.name, function()
            it("close() inside on_event: no crash, nothing delivered after it, run() returns",
                function()
                    local t = loaded_tracer(mode.batch)
                    local seen = {}
                    t:on_event(function(ev)
                        seen[#seen + 1] = index_of(ev)
                        if #seen == 3 then
                            t:close()
                        end
                    end)
                    local st = assert(t:run{ duration = 5 })
                    assert.same({ 1, 2, 3 }, seen)
                    assert.equal(3, st.matched)
                    -- the figures at close: the rest of the batch was never delivered
                    assert.equal(mode.batch == 1 and 3 or N, st.received)
                    assert.equal(st.received - 3, st.pending)
                    assert_adds_up(st)
                    assert.matches("closed", tostring(t))
                    t:close() -- idempotent
                end)

            it("close() inside on_event, then poll(): 'tracer is closed', not an index error",
                function()
                    local t = loaded_tracer(mode.batch)
                    local calls = 0
                    t:on_event(function()
                        calls = calls + 1
                        t:close()
                    end)
                    assert.equal(1, (t:poll(1000)))
                    assert.equal(1, calls)
                    assert.has_error(function() t:poll(0) end, "netdevq: tracer is closed")
                    assert.equal(1, calls)
                end)

            it("poll() inside on_event is a clear error; every event still arrives exactly once",
                function()
                    local t = loaded_tracer(mode.batch)
                    finally(function() t:close() end)
                    local count, nested_errors = {}, {}
                    t:on_event(function(ev)
                        local i = index_of(ev)
                        count[i] = (count[i] or 0) + 1
                        if i % 10 == 0 then
                            local ok, err = pcall(t.poll, t, 0)
                            assert(not ok)
                            nested_errors[#nested_errors + 1] = err
                        end
                    end)
                    drain(t)
                    for i = 1, N do
                        assert.equal(1, count[i], "packet " .. i)
                    end
                    assert.equal(5, #nested_errors)
                    assert.matches("^netdevq: poll%(%) called while a batch is being delivered",
                        nested_errors[1])
                    local st = t:stats()
                    assert.equal(N, st.matched)
                    assert_adds_up(st)
                end)

            it("an error raised in on_event reaches the caller; the rest of the batch is kept",
                function()
                    local t = loaded_tracer(mode.batch)
                    finally(function() t:close() end)
                    local got = {}
                    t:on_event(function(ev)
                        local i = index_of(ev)
                        got[#got + 1] = i
                        if i == 7 or i == 8 then
                            error("callback failed on " .. i)
                        end
                    end)
                    local errors = {}
                    for _ = 1, 200 do
                        local ok, err = pcall(t.poll, t, 50)
                        if not ok then
                            errors[#errors + 1] = err
                            local st = t:stats()
                            assert_adds_up(st)
                            -- the failing event was delivered; the batch's rest waits
                            assert.equal(#got, st.matched)
                            if mode.batch > 1 then
                                assert.equal(st.received - #got, st.pending)
                                assert.is_true(st.pending > 0)
                            end
                        end
                        local st = t:stats()
                        if st.received == N and st.pending == 0 then
                            break
                        end
                    end
                    assert.equal(2, #errors)
                    assert.matches("callback failed on 7$", errors[1])
                    assert.matches("callback failed on 8$", errors[2])
                    local expect = {}
                    for i = 1, N do
                        expect[i] = i
                    end
                    assert.same(expect, got)
                    local st = t:stats()
                    assert.equal(N, st.matched)
                    assert.equal(0, st.pending)
                    assert_adds_up(st)
                end)

            it("a coroutine yields in on_event, the tracer is closed, the coroutine resumes",
                function()
                    local t = loaded_tracer(mode.batch)
                    local got, lens = {}, {}
                    t:on_event(function(ev)
                        got[#got + 1] = index_of(ev)
                        coroutine.yield()
                        lens[#lens + 1] = ev.len -- the view still reads valid memory
                    end)
                    local co = coroutine.create(function() return t:poll(1000) end)
                    assert(coroutine.resume(co))
                    assert.equal("suspended", coroutine.status(co))
                    assert.same({ 1 }, got)
                    -- polling meanwhile would deliver the suspended batch twice: refused
                    local ok, err = pcall(t.poll, t, 0)
                    assert.is_false(ok)
                    assert.matches("coroutine suspended in one", err)
                    t:close()
                    collectgarbage()
                    collectgarbage() -- the closed core tracer is gone; its batch must not be
                    local rok, delivered = coroutine.resume(co)
                    assert.is_true(rok)
                    assert.equal("dead", coroutine.status(co))
                    assert.equal(1, delivered)
                    assert.same({ 1 }, got)
                    assert.same({ L2L3L4 + 100 }, lens)
                    assert.has_error(function() t:poll(0) end, "netdevq: tracer is closed")
                end)

            it("a callback error inside run() leaves the stats exact, and run() goes on after",
                function()
                    local t = loaded_tracer(mode.batch)
                    finally(function() t:close() end)
                    local n = 0
                    t:on_event(function()
                        n = n + 1
                        if n == 20 then
                            error("stop here")
                        end
                    end)
                    local ok, err = pcall(t.run, t, { duration = 5, max_events = N })
                    assert.is_false(ok)
                    assert.matches("stop here$", err)
                    local st = assert(t:run{ duration = 5, max_events = N })
                    assert.equal(N, n)
                    assert.equal(N, st.matched)
                    assert.equal(0, st.pending)
                    assert_adds_up(st)
                end)
        end)
    end

    it("max_events keeps the rest of a batch pending instead of dropping it", function()
        local t = loaded_tracer(64)
        finally(function() t:close() end)
        local got = {}
        t:on_event(function(ev) got[#got + 1] = index_of(ev) end)
        local st = assert(t:run{ duration = 5, max_events = 10 })
        assert.equal(10, #got)
        assert.equal(10, st.matched)
        assert.equal(N, st.received)
        assert.equal(N - 10, st.pending)
        t.limit = nil
        drain(t)
        assert.equal(N, #got)
        assert.equal(N, got[N])
    end)

    it("every method of a closed tracer raises 'tracer is closed'", function()
        netns.require_root()
        local t = assert(netdevq.open{ attach = false })
        t:close()
        for _, call in ipairs({
            function() t:attach() end,
            function() t:detach() end,
            function() t:poll(0) end,
            function() t:stats() end,
            function() t:run{ duration = 0.1 } end,
            function() t:on_event(print) end,
        }) do
            assert.has_error(call, "netdevq: tracer is closed")
        end
        local agg = assert(netdevq.open{ aggregate = { kind = "count", keys = { "dev" } } })
        agg:close()
        assert.has_error(function() agg:read_aggregate() end, "netdevq: tracer is closed")
    end)

    it("follow_pid outside the pid range and a NUL inside pcap are clean errors", function()
        netns.require_root()
        for _, bad in ipairs({ 2 ^ 40, -1, 0, 1.5, 2 ^ 32 + 1 }) do
            local t, err = netdevq.open{ follow_pid = bad, attach = false }
            assert.is_nil(t)
            assert.equal("netdevq: follow_pid must be a process id from 1 to 4194304, not "
                .. string.format("%.14g", bad), err)
        end
        local t, err = netdevq.open{ pcap = "udp\0 and tcp", attach = false }
        assert.is_nil(t)
        assert.equal("netdevq: pcap expression must be text without NUL bytes", err)
        -- the C module underneath says so too, whoever calls it
        local ct, cerr = netdevq.core.open{ pcap = "udp\0 and tcp" }
        assert.is_nil(ct)
        assert.equal("pcap filter: the expression contains a NUL byte (byte 4): remove it", cerr)
    end)
end)
