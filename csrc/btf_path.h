/* btf_path.h - sk_buff member paths resolved through kernel BTF (csrc/btf_path.c). */
#ifndef NETDEVQ_BTF_PATH_H
#define NETDEVQ_BTF_PATH_H

#include <lua.h>

/* Adds btf_open to the module table at the top of the stack. */
void ndq_btf_path_register(lua_State *L);

#endif /* NETDEVQ_BTF_PATH_H */
