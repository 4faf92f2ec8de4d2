-- luacheck configuration (lint in CI: spec/lint_spec.lua runs `luacheck lua spec scripts examples bench`).
-- Library, CLI, examples and benchmarks: LuaJIT globals (jit, bit, ffi through require), 100
-- columns like the C side (.clang-format). Specs: busted's globals, and 120 columns for the
-- tables of expected values.
std = "luajit"
max_line_length = 100

files["spec/"] = {
   std = "+busted",
   max_line_length = 120,
}
