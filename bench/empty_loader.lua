-- bench/empty_loader.lua OBJECT MAX_SECONDS
--
-- Loads the BPF object built from bench/empty.bpf.c, attaches its program (raw_tp/net_dev_queue)
-- and keeps it attached until killed or MAX_SECONDS pass. Prints
--   bench: attached prog_id=N
-- on stderr once attached (bench/run waits for it). The link dies with the process: libbpf
-- links are file descriptors, so nothing outlives a SIGTERM or SIGKILL.
--
-- LuaJIT FFI straight to libbpf: netdevq.core loads only netdevq's own object, and bpftool 7.1
-- cannot attach a raw_tp program by itself.
local ffi = require("ffi")

ffi.cdef[[
struct bpf_object;
struct bpf_program;
struct bpf_link;
struct bpf_object *bpf_object__open_file(const char *path, const void *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj,
                                             struct bpf_program *prog);
struct bpf_link *bpf_program__attach(const struct bpf_program *prog);
int bpf_program__fd(const struct bpf_program *prog);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, uint32_t *info_len);
int poll(void *fds, unsigned long nfds, int timeout);
char *strerror(int errnum);
]]

local object, max_seconds = arg[1], tonumber(arg[2] or "")
if not object or not max_seconds then
    io.stderr:write("usage: luajit bench/empty_loader.lua OBJECT MAX_SECONDS\n")
    os.exit(2)
end

local ok, libbpf = pcall(ffi.load, "bpf")
if not ok then
    ok, libbpf = pcall(ffi.load, "libbpf.so.1")
end
if not ok then
    io.stderr:write("bench: cannot load libbpf (", tostring(libbpf), "); install libbpf1\n")
    os.exit(1)
end

local function die(what)
    io.stderr:write("bench: ", what, ": ", ffi.string(ffi.C.strerror(ffi.errno())), "\n")
    os.exit(1)
end

local obj = libbpf.bpf_object__open_file(object, nil)
if obj == nil then
    die("opening " .. object)
end
if libbpf.bpf_object__load(obj) ~= 0 then
    die("loading " .. object)
end
local prog = libbpf.bpf_object__next_program(obj, nil)
if prog == nil then
    die("no program in " .. object)
end
local link = libbpf.bpf_program__attach(prog)
if link == nil then
    die("attaching the program of " .. object)
end

-- struct bpf_prog_info begins { __u32 type; __u32 id; ... }: the kernel copies as much as asked.
local info = ffi.new("uint32_t[2]")
local len = ffi.new("uint32_t[1]", 8)
if libbpf.bpf_obj_get_info_by_fd(libbpf.bpf_program__fd(prog), info, len) ~= 0 then
    die("reading the program id")
end
io.stderr:write(string.format("bench: attached prog_id=%d\n", info[1]))
io.stderr:flush()

local deadline = os.time() + max_seconds
while os.time() < deadline do
    ffi.C.poll(nil, 0, 200)
end
-- link and object go with the process
