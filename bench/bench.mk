# `make bench`: the engine -- through its C API, the Lua 5.4 module, the
# `cairnloop` command and with the ready-made policy -- against hand-written
# libpq on a durable throwaway PostgreSQL (bench/pg.sh), plus the delivery
# lane (`cairnloop work`), then HTTP delivery: `cairnloop work` with the
# webhook notifier against graphile-worker (bench/http_delivery.sh, on a
# cluster of its own).  Never part of `make check`.
#
#   make bench                      full run (about 7.5 minutes), tables on stdout,
#                                   markdown in $(BUILD)/bench/results.md, plans
#                                   in $(BUILD)/bench/explain.txt
#   make bench BENCH_ARGS=--quick   a short smoke run of the same code paths
#   BENCH_ARGS=--http-only          only the HTTP delivery lane (about 4 minutes)
#   BENCH_ARGS=--no-http            everything but it (--no-delivery skips it too)
#
# The HTTP lane installs graphile-worker with npm into $(BUILD)/bench/graphile
# (bench/graphile/package-lock.json) the first time; without npm or the
# registry that contender is skipped with a note.

BENCH_BIN := $(BUILD)/bench/cl_bench
BENCH_SRCS := $(wildcard bench/*.c)
BENCH_ARGS ?=
# cl_bench's own arguments, and the one the HTTP lane shares with it.
BENCH_CL_ARGS := $(filter-out --http-only --no-http,$(BENCH_ARGS))
BENCH_HTTP_ARGS := $(filter --quick,$(BENCH_ARGS))

# The bench's own Lua 5.4 state links the system Lua (-llua5.4), against
# which the module resolves its lua_* symbols when it is required.
$(BENCH_BIN): $(BENCH_SRCS) bench/bench.h $(wildcard src/*.h) include/cairnloop.h $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Ibench -o $@ $(BENCH_SRCS) $(STATIC_LIB) \
	    $(LDFLAGS_ALL) $(PKG_LIBS) $(LUA_LIBS) -lm

# The results file holds this run only: cl_bench writes it, the HTTP lane
# appends to it.
bench: $(BENCH_BIN) $(CLI_BIN) $(LUA_MOD)
	@rm -f $(BUILD)/bench/results.md
ifeq ($(filter --http-only,$(BENCH_ARGS)),)
	bench/pg.sh run $(BENCH_BIN) --out $(BUILD)/bench/results.md \
	    --explain $(BUILD)/bench/explain.txt --cli $(CLI_BIN) \
	    --lua-cpath '$(BUILD)/lua5.4/?.so' --lua-dir lua/cairnloop --bench-dir bench \
	    $(BENCH_CL_ARGS)
endif
ifeq ($(filter --no-http --no-delivery,$(BENCH_ARGS)),)
	bench/pg.sh run bench/http_delivery.sh --cli $(CLI_BIN) --work $(BUILD)/bench \
	    --out $(BUILD)/bench/results.md $(BENCH_HTTP_ARGS)
endif
