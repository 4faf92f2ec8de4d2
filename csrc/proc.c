/* proc.c - the -c command: a child that waits at a gate until the tracer is attached, then
 * execs; its status; and its end (TERM, a grace period, KILL, reaped: never left behind). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

/* In the child: wait for the gate, exec, report an exec failure's errno on status_w. */
static void child_exec(char **argv, int gate_r, int status_w, pid_t parent)
{
	char c;
	int e;

	signal(SIGPIPE, SIG_DFL);
	/* the tracer's end (even SIGKILL) ends the command too */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		_exit(127);
	if (read(gate_r, &c, 1) != 1)
		_exit(127);
	execvp(argv[0], argv);
	e = errno;
	if (write(status_w, &e, sizeof(e)) < 0)
		_exit(127);
	_exit(127);
}

/* core.spawn(argv) -> pid, gate_fd, status_fd | nil, err: forks a child that waits until
 * core.release(gate_fd) and then execs argv (no shell). The tracer attaches in between, so
 * nothing is missed. */
static int core_spawn(lua_State *L)
{
	int n, gate[2] = { -1, -1 }, status[2] = { -1, -1 };
	char **argv = NULL;
	const char *err = NULL;
	pid_t pid = -1, parent = getpid();

	luaL_checktype(L, 1, LUA_TTABLE);
	n = (int)lua_objlen(L, 1);
	if (n < 1)
		return luaL_argerror(L, 1, "empty command");
	for (int i = 1; i <= n; i++) { /* check before allocating: a raise leaks nothing */
		lua_rawgeti(L, 1, i);
		if (!lua_isstring(L, -1))
			return luaL_argerror(L, 1, "command words must be strings");
		lua_pop(L, 1);
	}
	argv = calloc((size_t)n + 1, sizeof(char *));
	if (!argv)
		return ndq_push_fail(L, "out of memory");
	for (int i = 0; i < n; i++) {
		lua_rawgeti(L, 1, i + 1);
		argv[i] = (char *)lua_tostring(L, -1);
		lua_pop(L, 1); /* the table keeps it alive */
	}
	if (pipe2(gate, O_CLOEXEC) || pipe2(status, O_CLOEXEC)) {
		err = "pipe";
		goto cleanup;
	}
	ndq_preopen_join();
	pid = fork();
	if (pid < 0) {
		err = "fork";
		goto cleanup;
	}
	if (pid == 0) {
		close(gate[1]);
		close(status[0]);
		child_exec(argv, gate[0], status[1], parent);
	}
cleanup:
	if (err) {
		int e = errno;

		for (int i = 0; i < 2; i++) {
			if (gate[i] >= 0)
				close(gate[i]);
			if (status[i] >= 0)
				close(status[i]);
		}
		free(argv);
		return ndq_push_fail(L, "%s failed (%s)", err, strerror(e));
	}
	free(argv);
	close(gate[0]);
	close(status[1]);
	lua_pushinteger(L, pid);
	lua_pushinteger(L, gate[1]);
	lua_pushinteger(L, status[0]);
	return 3;
}

/* core.release(gate_fd, status_fd[, go]) -> true | nil, err (the exec failed: errno text)
 * go == false: the gate closes unopened, the child exits without running the command. */
static int core_release(lua_State *L)
{
	int gate = (int)luaL_checkinteger(L, 1), st = (int)luaL_checkinteger(L, 2), e = 0;
	bool go = lua_isnoneornil(L, 3) || lua_toboolean(L, 3);
	ssize_t r;

	if (!go) {
		close(gate);
		close(st);
		lua_pushboolean(L, 1);
		return 1;
	}
	if (write(gate, "g", 1) != 1) {
		e = errno;
		close(gate);
		close(st);
		return ndq_push_fail(L, "starting the command failed (%s)", strerror(e));
	}
	close(gate);
	do {
		r = read(st, &e, sizeof(e));
	} while (r < 0 && errno == EINTR);
	close(st);
	if (r == (ssize_t)sizeof(e))
		return ndq_push_fail(L, "%s", strerror(e));
	lua_pushboolean(L, 1);
	return 1;
}

static int push_status(lua_State *L, pid_t r, int st)
{
	lua_pushinteger(L, r);
	if (r == 0)
		return 1;
	if (WIFEXITED(st)) {
		lua_pushstring(L, "exited");
		lua_pushinteger(L, WEXITSTATUS(st));
	} else {
		lua_pushstring(L, "signaled");
		lua_pushinteger(L, WTERMSIG(st));
	}
	return 3;
}

/* core.waitpid(pid, nohang) -> pid, "exited"|"signaled", code | 0 (still running) | nil, err
 * A blocking wait goes on through EINTR. */
static int core_waitpid(lua_State *L)
{
	pid_t pid = (pid_t)luaL_checkinteger(L, 1);
	int st = 0;
	pid_t r;

	do {
		r = waitpid(pid, &st, lua_toboolean(L, 2) ? WNOHANG : 0);
	} while (r < 0 && errno == EINTR);
	if (r < 0)
		return ndq_push_fail(L, "waitpid failed (%s)", strerror(errno));
	return push_status(L, r, st);
}

/* core.terminate(pid, grace_ms) -> pid, "exited"|"signaled", code | nil, err: ends a child
 * that is still running: SIGTERM, up to grace_ms for it to exit, then SIGKILL; always reaped. */
static int core_terminate(lua_State *L)
{
	pid_t pid = (pid_t)luaL_checkinteger(L, 1);
	lua_Integer grace_ms = luaL_optinteger(L, 2, 2000);
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	int st = 0;
	pid_t r = waitpid(pid, &st, WNOHANG);

	if (pid <= 0)
		return luaL_argerror(L, 1, "a child's pid");
	if (r == 0) {
		kill(pid, SIGTERM);
		for (lua_Integer waited = 0; r == 0 && waited < grace_ms; waited += 10) {
			nanosleep(&tick, NULL);
			r = waitpid(pid, &st, WNOHANG);
		}
	}
	if (r == 0) {
		kill(pid, SIGKILL);
		do {
			r = waitpid(pid, &st, 0);
		} while (r < 0 && errno == EINTR);
	}
	if (r < 0)
		return ndq_push_fail(L, "waitpid failed (%s)", strerror(errno));
	return push_status(L, r, st);
}

const luaL_Reg ndq_proc_funcs[] = {
	{ "spawn", core_spawn },
	{ "release", core_release },
	{ "waitpid", core_waitpid },
	{ "terminate", core_terminate },
	{ NULL, NULL },
};
