# `make bench`: the engine -- through its C API, the Lua 5.4 module, the
# `cairnloop` command and with the ready-made policy -- against hand-written
# libpq on a durable throwaway PostgreSQL (bench/pg.sh), plus the delivery
# lane (`cairnloop work`), then HTTP delivery: `cairnloop work` with the
# webhook notifier against graphile-worker (bench/http_delivery.sh, on a
# cluster of its own), then the non-blocking hosts: OpenResty's thread path
# against a yielding baseline, the 60 Hz game loop (examples/c-host) and the
# asynchronous C API's per-call cost (bench/nonblocking.sh, on a cluster of
# its own).  Never part of `make check`.
#
#   make bench                      full run (about 14 minutes), tables on stdout,
#                                   markdown in $(BUILD)/bench/results.md, plans
#                                   in $(BUILD)/bench/explain.txt
#   make bench BENCH_ARGS=--quick   a short smoke run of the same code paths
#   BENCH_ARGS=--http-only          only the HTTP delivery lane (about 4 minutes)
#   BENCH_ARGS=--no-http            everything but it (--no-delivery skips it too)
#   BENCH_ARGS=--hosts-only         only the non-blocking hosts (about 6 minutes)
#   BENCH_ARGS=--no-hosts           everything but them (--http-only and
#                                   --delivery-only skip them too)
#
# The hosts need nginx with the Lua module, build/luajit/cairnloop.so, wrk
# and python3 for their OpenResty part (skipped with a note without them).
# The HTTP lane installs graphile-worker with npm into $(BUILD)/bench/graphile
# (bench/graphile/package-lock.json) the first time; without npm or the
# registry that contender is skipped with a note.

BENCH_BIN := $(BUILD)/bench/cl_bench
BENCH_SRCS := $(wildcard bench/*.c)
BENCH_ARGS ?=
# cl_bench's own arguments, and the one the HTTP lane shares with it.
BENCH_CL_ARGS := $(filter-out --http-only --no-http --hosts-only --no-hosts,$(BENCH_ARGS))
BENCH_HTTP_ARGS := $(filter --quick,$(BENCH_ARGS))
BENCH_HOSTS_ARGS := $(filter --quick,$(BENCH_ARGS))
# The non-blocking hosts' two programs: the asynchronous API's per-call
# cost, and the game-server example built from its one source against this
# tree's library (tests/integration/c_host.sh builds it from an install).
BENCH_OVERHEAD_BIN := $(BUILD)/bench/async_overhead
BENCH_GAME_BIN := $(BUILD)/bench/game-server

# The bench's own Lua 5.4 state links the system Lua (-llua5.4), against
# which the module resolves its lua_* symbols when it is required.
$(BENCH_BIN): $(BENCH_SRCS) bench/bench.h $(wildcard src/*.h) include/cairnloop.h $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Ibench -o $@ $(BENCH_SRCS) $(STATIC_LIB) \
	    $(LDFLAGS_ALL) $(PKG_LIBS) $(LUA_LIBS) -lm

$(BENCH_OVERHEAD_BIN): bench/nonblocking/async_overhead.c include/cairnloop.h $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(STATIC_LIB) $(LDFLAGS_ALL) $(PKG_LIBS) -lm

$(BENCH_GAME_BIN): examples/c-host/main.c include/cairnloop.h $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(STATIC_LIB) $(LDFLAGS_ALL) $(PKG_LIBS) -lm

# The results file holds this run only: cl_bench writes it, the HTTP lane
# and the hosts append to it.
bench: $(BENCH_BIN) $(CLI_BIN) $(LUA_MOD) $(LUAJIT_MOD) $(BENCH_OVERHEAD_BIN) $(BENCH_GAME_BIN)
	@rm -f $(BUILD)/bench/results.md
ifeq ($(filter --http-only --hosts-only,$(BENCH_ARGS)),)
	bench/pg.sh run $(BENCH_BIN) --out $(BUILD)/bench/results.md \
	    --explain $(BUILD)/bench/explain.txt --cli $(CLI_BIN) \
	    --lua-cpath '$(BUILD)/lua5.4/?.so' --lua-dir lua/cairnloop --bench-dir bench \
	    $(BENCH_CL_ARGS)
endif
ifeq ($(filter --no-http --no-delivery --hosts-only,$(BENCH_ARGS)),)
	bench/pg.sh run bench/http_delivery.sh --cli $(CLI_BIN) --work $(BUILD)/bench \
	    --out $(BUILD)/bench/results.md $(BENCH_HTTP_ARGS)
endif
ifeq ($(filter --no-hosts --http-only --delivery-only,$(BENCH_ARGS)),)
	bench/pg.sh run bench/nonblocking.sh --cli $(CLI_BIN) --work $(BUILD)/bench \
	    --overhead $(BENCH_OVERHEAD_BIN) --game $(BENCH_GAME_BIN) \
	    --out $(BUILD)/bench/results.md $(BENCH_HOSTS_ARGS)
endif
