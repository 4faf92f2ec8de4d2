-- bench/progstat.lua ID...
--
-- Sums the kernel's own accounting of BPF programs (kernel.bpf_stats_enabled must be 1) as
-- `bpftool prog show id ID -j` reports it. stdout, one line:
--   RUN_TIME_NS RUN_CNT NAME[,NAME...]
-- Exit status 1 (with a message) when a program is gone or bpftool fails.
local cjson = require("cjson")

if #arg == 0 then
    io.stderr:write("usage: luajit bench/progstat.lua ID...\n")
    os.exit(2)
end

local time_ns, cnt, names = 0, 0, {}
for _, id in ipairs(arg) do
    if not id:match("^%d+$") then
        io.stderr:write("bench/progstat.lua: not a program id: ", id, "\n")
        os.exit(2)
    end
    local p = assert(io.popen("bpftool prog show id " .. id .. " -j 2>&1"))
    local text = p:read("*a")
    p:close()
    local ok, info = pcall(cjson.decode, text)
    if not ok or type(info) ~= "table" or not info.id then
        io.stderr:write("bench/progstat.lua: bpftool prog show id ", id, ": ", text, "\n")
        os.exit(1)
    end
    -- absent until the program has run with stats enabled
    time_ns = time_ns + (info.run_time_ns or 0)
    cnt = cnt + (info.run_cnt or 0)
    names[#names + 1] = info.name or ("id" .. id)
end
io.stdout:write(string.format("%.0f %.0f %s\n", time_ns, cnt, table.concat(names, ",")))
