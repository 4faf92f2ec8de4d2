/* metrics_http.c - the C Lua module `netdevq.http`: a libmicrohttpd server that answers
 * GET /metrics with the latest text snapshot Lua published.
 *
 *   local http = require("netdevq.http")
 *   local srv = assert(http.serve{ host = "127.0.0.1", port = 9464 })  -- port 0: any free port
 *   srv:publish(text)     -- the body every later scrape gets (copied; swapped under a mutex)
 *   srv:port()            -- the bound port
 *   srv:scrapes()         -- GET /metrics answered so far
 *   srv:close()           -- stops the server (idempotent; __gc does it too)
 *
 * libmicrohttpd runs its own polling thread: a scrape never waits for the Lua event loop, and
 * Lua never waits for a scrape. The only shared state is the snapshot: publish() builds the new
 * buffer outside the lock and swaps a pointer under it; a request copies the current buffer
 * under it. No Lua state is touched from the server thread. The thread starts with every signal
 * blocked, so SIGINT/SIGTERM keep reaching the thread that runs Lua.
 *
 * Expected failures return nil, "what failed: why". Misuse raises.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include <lauxlib.h>
#include <lua.h>

#define SERVER_MT "netdevq.http.Server"
#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define CONNECTION_LIMIT 64
#define CONNECTION_TIMEOUT_S 10

struct server {
	struct MHD_Daemon *daemon;
	pthread_mutex_t lock;
	char *body; /* the published snapshot (owned), under lock */
	size_t body_len;
	uint64_t scrapes; /* under lock */
	char path[64];
	int port;
};

struct server_ud {
	struct server *s;
};

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned int status, const char *body,
			     size_t len, enum MHD_ResponseMemoryMode mode)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)body, mode);
	enum MHD_Result ret;

	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE);
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url,
			      const char *method, const char *version, const char *upload_data,
			      size_t *upload_data_size, void **req_cls)
{
	static const char not_found[] = "not found: the metrics are at /metrics\n";
	static const char bad_method[] = "method not allowed: use GET\n";
	struct server *s = cls;
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, bad_method, sizeof(bad_method) - 1,
			     MHD_RESPMEM_PERSISTENT);
	if (strcmp(url, s->path) != 0)
		return reply(conn, MHD_HTTP_NOT_FOUND, not_found, sizeof(not_found) - 1,
			     MHD_RESPMEM_PERSISTENT);
	pthread_mutex_lock(&s->lock);
	s->scrapes++;
	resp = MHD_create_response_from_buffer(s->body_len, s->body ? s->body : (char *)"",
					       MHD_RESPMEM_MUST_COPY);
	pthread_mutex_unlock(&s->lock);
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE);
	ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

static void server_free(struct server *s)
{
	if (!s)
		return;
	if (s->daemon)
		MHD_stop_daemon(s->daemon);
	pthread_mutex_destroy(&s->lock);
	free(s->body);
	free(s);
}

static struct server *check_server(lua_State *L)
{
	struct server_ud *ud = luaL_checkudata(L, 1, SERVER_MT);
	if (!ud->s)
		luaL_error(L, "netdevq.http: server is closed");
	return ud->s;
}

static int push_fail(lua_State *L, const char *fmt, const char *a, const char *b)
{
	lua_pushnil(L);
	lua_pushfstring(L, fmt, a, b);
	return 2;
}

/* The listening address: host is a numeric IPv4 or IPv6 address. */
static int make_addr(const char *host, int port, struct sockaddr_storage *ss, unsigned int *flags)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
		return 0;
	}
	if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		*flags |= MHD_USE_IPv6;
		return 0;
	}
	return -1;
}

/* Binds and listens here (precise errors: address in use, not permitted, not available), then
 * hands the socket to libmicrohttpd, which closes it when it stops. Returns 0 or an errno. */
static int start(struct server *s, const char *host, int port)
{
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	unsigned int flags = MHD_USE_AUTO_INTERNAL_THREAD;
	sigset_t all, old;
	int fd, one = 1, err;

	if (make_addr(host, port, &ss, &flags))
		return EINVAL;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss,
		 ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) :
					    sizeof(struct sockaddr_in)) ||
	    listen(fd, 64) || getsockname(fd, (struct sockaddr *)&ss, &sslen)) {
		err = errno;
		close(fd);
		return err;
	}
	s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port :
						   ((struct sockaddr_in *)&ss)->sin_port);
	/* the server thread inherits this mask: signals stay with the Lua thread */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	s->daemon = MHD_start_daemon(flags, 0, NULL, NULL, answer, s, MHD_OPTION_LISTEN_SOCKET, fd,
				     MHD_OPTION_CONNECTION_LIMIT, (unsigned int)CONNECTION_LIMIT,
				     MHD_OPTION_CONNECTION_TIMEOUT,
				     (unsigned int)CONNECTION_TIMEOUT_S, MHD_OPTION_END);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!s->daemon) {
		close(fd);
		return EIO;
	}
	return 0;
}

/* http.serve{ host = "127.0.0.1", port = 9464, path = "/metrics" } -> server | nil, err */
static int http_serve(lua_State *L)
{
	struct server_ud *ud;
	struct server *s;
	const char *host, *path;
	lua_Integer port;
	int err;

	luaL_checktype(L, 1, LUA_TTABLE);
	lua_getfield(L, 1, "host");
	host = luaL_optstring(L, -1, "127.0.0.1");
	lua_getfield(L, 1, "port");
	port = luaL_optinteger(L, -1, 9464);
	lua_getfield(L, 1, "path");
	path = luaL_optstring(L, -1, "/metrics");
	if (port < 0 || port > 65535)
		return luaL_error(L, "netdevq.http: port must be 0..65535");
	if (path[0] != '/' || strlen(path) >= sizeof(s->path))
		return luaL_error(L, "netdevq.http: path must start with / (at most 63 bytes)");

	s = calloc(1, sizeof(*s));
	if (!s)
		return push_fail(L, "netdevq.http: %s%s", "out of memory", "");
	pthread_mutex_init(&s->lock, NULL);
	strcpy(s->path, path);
	err = start(s, host, (int)port);
	if (err == EINVAL) {
		server_free(s);
		return push_fail(L, "cannot listen on '%s': %s", host, "not a numeric IP address");
	}
	if (err) {
		server_free(s);
		lua_pushnil(L);
		lua_pushfstring(L, "cannot listen on %s port %d: %s", host, (int)port,
				err == EIO ? "libmicrohttpd could not start its thread" :
					     strerror(err));
		return 2;
	}
	ud = lua_newuserdata(L, sizeof(*ud));
	ud->s = s;
	luaL_getmetatable(L, SERVER_MT);
	lua_setmetatable(L, -2);
	return 1;
}

/* srv:publish(text): later scrapes get text */
static int server_publish(lua_State *L)
{
	struct server *s = check_server(L);
	size_t len;
	const char *text = luaL_checklstring(L, 2, &len);
	char *copy = malloc(len ? len : 1), *old;

	if (!copy)
		return luaL_error(L, "netdevq.http: out of memory");
	memcpy(copy, text, len);
	pthread_mutex_lock(&s->lock);
	old = s->body;
	s->body = copy;
	s->body_len = len;
	pthread_mutex_unlock(&s->lock);
	free(old);
	return 0;
}

static int server_port(lua_State *L)
{
	lua_pushinteger(L, check_server(L)->port);
	return 1;
}

static int server_scrapes(lua_State *L)
{
	struct server *s = check_server(L);
	uint64_t n;

	pthread_mutex_lock(&s->lock);
	n = s->scrapes;
	pthread_mutex_unlock(&s->lock);
	lua_pushnumber(L, (lua_Number)n);
	return 1;
}

static int server_close(lua_State *L)
{
	struct server_ud *ud = luaL_checkudata(L, 1, SERVER_MT);
	server_free(ud->s);
	ud->s = NULL;
	return 0;
}

int luaopen_netdevq_http(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{ "publish", server_publish },
		{ "port", server_port },
		{ "scrapes", server_scrapes },
		{ "close", server_close },
		{ NULL, NULL },
	};
	const luaL_Reg *r;

	if (luaL_newmetatable(L, SERVER_MT)) {
		lua_newtable(L);
		for (r = methods; r->name; r++) {
			lua_pushcfunction(L, r->func);
			lua_setfield(L, -2, r->name);
		}
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, server_close);
		lua_setfield(L, -2, "__gc");
	}
	lua_pop(L, 1);
	lua_newtable(L);
	lua_pushcfunction(L, http_serve);
	lua_setfield(L, -2, "serve");
	lua_pushstring(L, MHD_get_version());
	lua_setfield(L, -2, "libmicrohttpd");
	return 1;
}
