-- Exact accounting under overload. A UDP flood crosses a veth pair of our own namespaces; the
-- tracer filters on that device in the kernel, so every event it counts as matching is one of
-- the flood's datagrams and nothing else (static neighbours: no ARP; no IPv6 link-local
-- chatter: see support.netns). With a deliberately small ring buffer and a slow Lua consumer
-- events are lost, and then every event is still accounted for:
--
--     seen == kfiltered + emitted + lost        (kernel counters)
--     received by Lua == emitted
--     emitted + lost == datagrams sent          (ndq_send's own count)
--
-- and the CLI reports exactly the lost count the kernel counted. With a ring big enough
-- nothing is lost and Lua receives every datagram sent.
local netns = require("support.netns")
local clirun = require("support.clirun")
local live = require("support.live")

local SOAK_EVENTS = 2000000   -- at least this many events cross the kernel filter
local FLOOD_ROUND_S = 3
local MAX_ROUNDS = 7          -- ~230k datagrams/s on this machine kind: 3 rounds suffice

local function sent_count(lines)
    for _, l in ipairs(lines) do
        local n = l:match("^sent (%d+)$")
        if n then
            return tonumber(n)
        end
    end
    error("ndq_send printed no 'sent N': " .. table.concat(lines, " | "))
end

describe("netdevq accounting under overload #root", function()
    local netdevq, core, pair
    live.pair_each_test({ name = "ndqk" }, function(p) pair = p end)

    before_each(function()
        netdevq = require("netdevq")
        core = netdevq.core
    end)

    local function veth_filter()
        return 'dev == "' .. pair.veth_a .. '" and netns == ' .. pair.netns_a
    end

    -- floods a -> b until want events (or max_rounds rounds), polling t meanwhile; returns the
    -- datagrams sent
    local function flood_while_polling(t, want, rounds, seconds)
        local sent = 0
        for _ = 1, rounds do
            local flood = pair:spawn("a", { netns.ndq_send(), "flood", pair.ip4_b, "9",
                tostring(seconds), "18" })
            local deadline = core.monotonic_ns() + (seconds + 0.5) * 1e9
            while core.monotonic_ns() < deadline do
                assert(t:poll(50))
            end
            local ok, code, lines = flood:wait()
            assert.is_true(ok, "ndq_send exit " .. tostring(code) .. ": " .. table.concat(lines, " | "))
            sent = sent + sent_count(lines)
            if sent >= want then
                break
            end
        end
        return sent
    end

    it("counts every one of " .. SOAK_EVENTS .. "+ events with a 64 KiB ring and a slow consumer",
        function()
            netns.require_root()
            local t = assert(netdevq.open{ filter = veth_filter(), ringbuf_size = 65536,
                fields = { "len" } })
            finally(function() t:close() end)
            local received, bytes = 0, 0
            t:on_event(function(ev)
                received = received + 1
                bytes = bytes + ev.len
                for _ = 1, 2000 do -- the slow consumer: about a microsecond per event
                    bytes = bytes + 0
                end
            end)
            local sent = flood_while_polling(t, SOAK_EVENTS, MAX_ROUNDS, FLOOD_ROUND_S)
            -- stop tracing, then drain: the counters are final once no program runs any more
            t:detach()
            while t:poll(0) > 0 do end
            local c = t:stats()
            assert.is_true(sent >= SOAK_EVENTS, "only " .. sent .. " datagrams sent")
            assert.equal(c.seen, c.kfiltered + c.emitted + c.lost)
            assert.equal(c.emitted, received)
            assert.equal(c.emitted, c.received)
            assert.equal(sent, c.emitted + c.lost)
            assert.equal(received * 60, bytes) -- 18-byte payloads: 60-byte frames
            assert.is_true(c.lost > 0, "nothing was lost: the consumer was not slow enough")
            assert.equal(0, c.pcap_dropped)
            print(string.format("\nsoak: %d sent, %d seen, %d kfiltered, %d emitted = received, %d lost",
                sent, c.seen, c.kfiltered, c.emitted, c.lost))
        end)

    it("loses nothing with a ring big enough: received == datagrams sent", function()
        netns.require_root()
        local t = assert(netdevq.open{ filter = veth_filter(), ringbuf_size = 2 ^ 27,
            fields = { "len" } })
        finally(function() t:close() end)
        local received = 0
        t:on_event(function() received = received + 1 end)
        local sent = flood_while_polling(t, 1, 1, 2)
        t:detach()
        while t:poll(0) > 0 do end
        local c = t:stats()
        assert.is_true(sent > 100000, "only " .. sent .. " datagrams sent")
        assert.equal(0, c.lost)
        assert.equal(sent, received)
        assert.equal(sent, c.emitted)
        assert.equal(c.seen, c.kfiltered + c.emitted)
    end)

    it("has the CLI report exactly the events the kernel lost", function()
        netns.require_root()
        -- the events cross to Lua (-o len; with -q the kernel would count them alone and none
        -- could be lost), into a small ring
        local run = clirun.spawn_cli({ "--ringbuf-size", "65536", "-o", "len", "-F", "json", "-i",
            "1", "-f", veth_filter() })
        finally(function() run:wait(10) end)
        assert.is_true(run:wait_err("Ctrl%-C to stop\n", 20), run:err_text())
        local ok, out, code = pair:exec("a", { netns.ndq_send(), "flood", pair.ip4_b, "9", "3", "18" })
        assert.is_true(ok, "ndq_send exit " .. tostring(code) .. ": " .. out)
        local sent = tonumber(out:match("\nsent (%d+)\n"))
        clirun.sleep(1.2) -- at least one more interval tick after the flood
        assert.is_true(run:kill("INT"))
        local r = run:wait(20)
        assert.equal(0, r.code, r.err)
        local lost_lines, summary, event_lines = 0, nil, 0
        local reported = 0
        for _, l in ipairs(clirun.lines(r.out)) do
            local n = l:match('^{"type":"lost","count":(%d+)}$')
            if n then
                lost_lines = lost_lines + 1
                reported = reported + tonumber(n)
            elseif l:match('^{"type":"summary"') then
                summary = l
            elseif l:match('^{"type":"event","len":%d+}$') then
                event_lines = event_lines + 1
            else
                error("unexpected line: " .. l)
            end
        end
        assert.is_string(summary, r.out)
        local events, matched, lost = summary:match('"events":(%d+),"matched":(%d+),"lost":(%d+)')
        events, matched, lost = tonumber(events), tonumber(matched), tonumber(lost)
        assert.is_true(lost > 0, summary)
        assert.is_true(lost_lines >= 1)
        -- every lost event was reported, the summary agrees, and with what Lua got adds up to
        -- the datagrams sent (the kernel counted each datagram once: emitted or lost)
        assert.equal(lost, reported)
        assert.equal(sent, matched + lost)
        assert.equal(matched, event_lines)
        assert.is_true(events >= sent)
        assert.equal(string.format("netdevq: %d events, %d matched, %d lost\n", events, matched, lost),
            r.err:match("\n(netdevq: %d+ events, [^\n]*\n)$"))
    end)
end)
