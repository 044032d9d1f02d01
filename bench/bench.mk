# `make bench`: the engine against hand-written libpq on a durable
# throwaway PostgreSQL (bench/pg.sh).  Never part of `make check`.
#
#   make bench                      full run (about 3 minutes), table on stdout,
#                                   markdown in $(BUILD)/bench/results.md, plans
#                                   in $(BUILD)/bench/explain.txt
#   make bench BENCH_ARGS=--quick   a short smoke run of the same code paths

BENCH_BIN := $(BUILD)/bench/cl_bench
BENCH_SRCS := $(wildcard bench/*.c)
BENCH_ARGS ?=

$(BENCH_BIN): $(BENCH_SRCS) bench/bench.h $(wildcard src/*.h) include/cairnloop.h $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Ibench -o $@ $(BENCH_SRCS) $(STATIC_LIB) \
	    $(LDFLAGS_ALL) $(PKG_LIBS) $(LUA_LIBS) -lm

bench: $(BENCH_BIN)
	bench/pg.sh run $(BENCH_BIN) --out $(BUILD)/bench/results.md \
	    --explain $(BUILD)/bench/explain.txt $(BENCH_ARGS)
