-- netdevq.words: split a command line into words like a POSIX shell does for quoting only
-- ('single', "double" with \" and \\, backslash escapes), without expanding anything: --cmd
-- runs the words directly (execvp), never through a shell.
local _M = {}

-- Returns an array of words, or nil and a message (unterminated quote, empty command).
function _M.split(line)
    local out, cur, have = {}, {}, false
    local i, n = 1, #line
    while i <= n do
        local c = line:sub(i, i)
        if c == "'" then
            local j = line:find("'", i + 1, true)
            if not j then
                return nil, "unterminated ' quote at column " .. i
            end
            cur[#cur + 1] = line:sub(i + 1, j - 1)
            have = true
            i = j + 1
        elseif c == '"' then
            local j = i + 1
            while true do
                local d = line:sub(j, j)
                if d == "" then
                    return nil, 'unterminated " quote at column ' .. i
                elseif d == "\\" and line:sub(j + 1, j + 1):match('["\\$`]') then
                    cur[#cur + 1] = line:sub(j + 1, j + 1)
                    j = j + 2
                elseif d == '"' then
                    break
                else
                    cur[#cur + 1] = d
                    j = j + 1
                end
            end
            have = true
            i = j + 1
        elseif c == "\\" and i < n then
            cur[#cur + 1] = line:sub(i + 1, i + 1)
            have = true
            i = i + 2
        elseif c:match("%s") then
            if have then
                out[#out + 1] = table.concat(cur)
                cur, have = {}, false
            end
            i = i + 1
        else
            cur[#cur + 1] = c
            have = true
            i = i + 1
        end
    end
    if have then
        out[#out + 1] = table.concat(cur)
    end
    if #out == 0 then
        return nil, "empty command"
    end
    return out
end

return _M
