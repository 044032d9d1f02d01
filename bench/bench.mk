# `make bench`: the engine -- through its C API, the Lua 5.4 module, the
# `cairnloop` command and with the ready-made policy -- against hand-written
# libpq on a durable throwaway PostgreSQL (bench/pg.sh), plus the delivery
# lane (`cairnloop work`).  Never part of `make check`.
#
#   make bench                      full run (about 4-5 minutes), tables on stdout,
#                                   markdown in $(BUILD)/bench/results.md, plans
#                                   in $(BUILD)/bench/explain.txt
#   make bench BENCH_ARGS=--quick   a short smoke run of the same code paths

BENCH_BIN := $(BUILD)/bench/cl_bench
BENCH_SRCS := $(wildcard bench/*.c)
BENCH_ARGS ?=

# The bench's own Lua 5.4 state links the system Lua (-llua5.4), against
# which the module resolves its lua_* symbols when it is required.
$(BENCH_BIN): $(BENCH_SRCS) bench/bench.h $(wildcard src/*.h) include/cairnloop.h $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Ibench -o $@ $(BENCH_SRCS) $(STATIC_LIB) \
	    $(LDFLAGS_ALL) $(PKG_LIBS) $(LUA_LIBS) -lm

bench: $(BENCH_BIN) $(CLI_BIN) $(LUA_MOD)
	bench/pg.sh run $(BENCH_BIN) --out $(BUILD)/bench/results.md \
	    --explain $(BUILD)/bench/explain.txt --cli $(CLI_BIN) \
	    --lua-cpath '$(BUILD)/lua5.4/?.so' --lua-dir lua/cairnloop --bench-dir bench \
	    $(BENCH_ARGS)
