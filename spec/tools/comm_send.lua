-- spec/tools/comm_send.lua NAME PORT COUNT: set this process's comm to NAME (any bytes, through
-- prctl(PR_SET_NAME), as a hostile local user can), then send COUNT one-byte UDP datagrams to
-- 127.0.0.1:PORT. Prints "sent COUNT". For the specs that check names are printed safely.
local ffi = require("ffi")

ffi.cdef [[
int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
int socket(int domain, int type, int protocol);
struct ndq_sockaddr_in { uint16_t sin_family; uint16_t sin_port; uint32_t sin_addr; uint8_t zero[8]; };
long sendto(int fd, const void *buf, size_t len, int flags, const struct ndq_sockaddr_in *to, int tolen);
int close(int fd);
]]

local name, port, count = arg[1], tonumber(arg[2]), tonumber(arg[3])
assert(name and port and count, "usage: comm_send.lua NAME PORT COUNT")
local PR_SET_NAME, AF_INET, SOCK_DGRAM = 15, 2, 2

local buf = ffi.new("char[16]")
ffi.copy(buf, name, math.min(#name, 15))
assert(ffi.C.prctl(PR_SET_NAME, ffi.cast("unsigned long", buf), 0, 0, 0) == 0, "prctl failed")

local fd = ffi.C.socket(AF_INET, SOCK_DGRAM, 0)
assert(fd >= 0, "socket failed")
local to = ffi.new("struct ndq_sockaddr_in")
to.sin_family = AF_INET
to.sin_port = require("bit").bswap(port * 65536) -- htons
to.sin_addr = require("bit").bswap(0x7f000001) -- 127.0.0.1, network order
for _ = 1, count do
    assert(ffi.C.sendto(fd, "x", 1, 0, to, ffi.sizeof(to)) == 1, "sendto failed")
end
ffi.C.close(fd)
io.stdout:write("sent ", count, "\n")
