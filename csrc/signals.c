/* signals.c - SIGINT/SIGTERM as a flag (LuaJIT has no signal handlers of its own).
 *
 * The handlers are installed without SA_RESTART: a signal ends a blocking poll or write with
 * EINTR. A write that blocks on a reader that never reads could still block again (stdio retries
 * a write that made some progress), so the first signal also starts a timer that interrupts
 * whatever blocks afterwards every GIVE_UP_MS: the writers see EINTR with the flag set and give
 * up, so that the run stops and reports what it could not write. */
#include <string.h>
#include <sys/time.h>

#include "core.h"

#define GIVE_UP_MS 200

volatile sig_atomic_t ndq_interrupted;

static void on_signal(int sig)
{
	struct itimerval every = { 0 };

	if (!ndq_interrupted) {
		every.it_interval.tv_usec = GIVE_UP_MS * 1000;
		every.it_value.tv_usec = GIVE_UP_MS * 1000;
		setitimer(ITIMER_REAL, &every, NULL); /* a system call: async-signal-safe */
	}
	ndq_interrupted = sig;
}

static void on_alarm(int sig)
{
	(void)sig; /* only there to interrupt a blocked system call */
}

static void install(int sig, void (*handler)(int))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART: a blocked write or poll returns EINTR */
	sigaction(sig, &sa, NULL);
}

/* core.catch_signals(): SIGINT/SIGTERM set a flag and interrupt polls and blocked writes. */
static int core_catch_signals(lua_State *L)
{
	install(SIGALRM, on_alarm);
	install(SIGINT, on_signal);
	install(SIGTERM, on_signal);
	(void)L;
	return 0;
}

/* core.interrupted() -> signal number or false */
static int core_interrupted(lua_State *L)
{
	if (ndq_interrupted)
		lua_pushinteger(L, ndq_interrupted);
	else
		lua_pushboolean(L, 0);
	return 1;
}

static int core_ignore_sigpipe(lua_State *L)
{
	signal(SIGPIPE, SIG_IGN);
	(void)L;
	return 0;
}

/* The functions into the module table (on the stack), and interrupted_flag: the flag's address
 * (light userdata), which per-event Lua code reads through the FFI as a `volatile int *`. */
void ndq_signals_register(lua_State *L)
{
	static const luaL_Reg funcs[] = {
		{ "catch_signals", core_catch_signals },
		{ "interrupted", core_interrupted },
		{ "ignore_sigpipe", core_ignore_sigpipe },
		{ NULL, NULL },
	};

	_Static_assert(sizeof(ndq_interrupted) == sizeof(int), "sig_atomic_t is an int");
	ndq_set_funcs(L, funcs);
	lua_pushlightuserdata(L, (void *)&ndq_interrupted);
	lua_setfield(L, -2, "interrupted_flag");
}
