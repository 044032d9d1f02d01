# Cairnloop engine.
#
#   make            libcairnloop (static + shared + pkg-config), the `cairnloop`
#                   command and the Lua modules build/lua5.4/cairnloop.so and
#                   build/luajit/cairnloop.so (for OpenResty; `make luajit`)
#   make check      installs missing packages, builds, runs every suite
#                   (C, C under ASan+UBSan, Lua specs, CLI) and prints
#                   "N passed, M failed"
#   make demo       installs missing packages, builds, runs the demo on the
#                   embedded default database under ./.cairnloop/
#   make install    honours PREFIX and DESTDIR

PREFIX ?= /usr/local
DESTDIR ?=
BUILD ?= build
CC ?= cc
OPT ?= -O2 -g
SANITIZE ?=

VERSION := 0.1.0
SOVERSION := 0

# libcurl and libcrypto: the notifiers' HTTP client (src/http.c) and the
# signing primitives (src/crypto.c).
PKGS := libpq uuid jansson libcurl libcrypto
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) lua5.4 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LUA_LIBS := $(shell pkg-config --libs lua5.4 2>/dev/null)
LUA54_A := $(shell pkg-config --variable=libdir lua5.4 2>/dev/null)/liblua5.4.a
LUAJIT_CFLAGS := $(shell pkg-config --cflags luajit 2>/dev/null)
# The command's --metrics endpoint (cli/metrics.c) is served by libmicrohttpd.
CLI_LIBS := $(shell pkg-config --libs libmicrohttpd 2>/dev/null) -pthread

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2
# SANITIZE=1: AddressSanitizer + UBSan; SANITIZE=thread: ThreadSanitizer
# (tests/integration/async_tsan.sh builds build/tsan with it).
ifeq ($(SANITIZE),thread)
  OPT := -O1 -g -fno-omit-frame-pointer -fsanitize=thread
  SAN_LDFLAGS := -fsanitize=thread
else ifneq ($(SANITIZE),)
  OPT := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
  SAN_LDFLAGS := -fsanitize=address,undefined
endif
# -MMD: each object records the headers it included (build/**/*.d, read
# below), so an edited header rebuilds exactly what uses it.
# -pthread: the asynchronous engine (src/async.c) runs a thread of its own.
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -pthread $(OPT) $(WARN) -fPIC -fvisibility=hidden -MMD -MP
CFLAGS_ALL := $(CFLAGS_BASE) -Iinclude -Isrc -I$(BUILD)/gen $(PKG_CFLAGS) $(CFLAGS)
# The command is a host like any other: it sees only the public header.
CLI_CFLAGS := $(CFLAGS_BASE) -Iinclude $(shell pkg-config --cflags lua5.4 jansson 2>/dev/null) $(CFLAGS)
LDFLAGS_ALL := $(SAN_LDFLAGS) -pthread $(LDFLAGS)

# The engine library: everything in src/ but the host Lua module.
LIB_SRCS := $(filter-out src/lua_module.c,$(wildcard src/*.c))
LIB_OBJS := $(LIB_SRCS:src/%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/migrations_gen.o \
    $(BUILD)/obj/sql_gen.o
CLI_SRCS := $(wildcard cli/*.c)
CLI_OBJS := $(CLI_SRCS:cli/%.c=$(BUILD)/obj/cli/%.o)
MIGRATIONS := $(sort $(wildcard migrations/*.sql))
STATEMENTS := $(sort $(wildcard src/sql/*.sql))
TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
TEST_SUPPORT := $(wildcard tests/support/*.c)

STATIC_LIB := $(BUILD)/libcairnloop.a
SHARED_LIB := $(BUILD)/libcairnloop.so.$(VERSION)
CLI_BIN := $(BUILD)/cairnloop
LUA_MOD := $(BUILD)/lua5.4/cairnloop.so
LUAJIT_MOD := $(BUILD)/luajit/cairnloop.so
PC_FILE := $(BUILD)/cairnloop.pc
# The engine with its own Lua 5.4 linked in, see below.
ENGINE_OBJ := $(BUILD)/obj/engine_lua54.o

.PHONY: all deps check test-c demo install uninstall ldconfig clean bench luajit rock rock-install fuzz FORCE
all: $(STATIC_LIB) $(SHARED_LIB) $(CLI_BIN) $(LUA_MOD) $(LUAJIT_MOD) $(PC_FILE)

# Installs the Debian packages the build and the tests need (as root).
deps:
	@tools/deps.sh

$(BUILD)/obj/%.o: src/%.c $(BUILD)/flags.stamp | $(BUILD)/gen/migrations_gen.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/obj/cli/%.o: cli/%.c $(BUILD)/flags.stamp
	@mkdir -p $(dir $@)
	$(CC) $(CLI_CFLAGS) -c $< -o $@

# Migrations are compiled into the library, so an installed engine needs no
# data files to migrate a database.
$(BUILD)/gen/migrations_gen.c: $(MIGRATIONS) tools/embed-sql.sh
	@mkdir -p $(dir $@)
	tools/embed-sql.sh migrations $(MIGRATIONS) > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/migrations_gen.o: $(BUILD)/gen/migrations_gen.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

# So are the engine's statements (src/sql/, one file per row of the
# statement table in src/stmt.h): SQL stays readable as SQL, and the
# library carries its texts.
$(BUILD)/gen/sql_gen.c: $(STATEMENTS) tools/embed-sql.sh
	@mkdir -p $(dir $@)
	tools/embed-sql.sh statements $(STATEMENTS) > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/sql_gen.o: $(BUILD)/gen/sql_gen.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

# The policy state finds the pure-Lua tree through $CAIRNLOOP_LUA_PATH,
# then beside the installed engine, then where `make install` puts it; no
# path of the checkout is compiled in (the command, run from a build in a
# checkout, points $CAIRNLOOP_LUA_PATH at its lua/ itself).
# Rewritten only when PREFIX changes, so what is built for one prefix is
# rebuilt for another (the compiled-in Lua path, the pkg-config file).
$(BUILD)/prefix.stamp: FORCE
	@mkdir -p $(BUILD)
	@echo '$(PREFIX) $(LUA_INSTALL_DIR)' | cmp -s - $@ || echo '$(PREFIX) $(LUA_INSTALL_DIR)' > $@
FORCE:

# The compiler flags of the last build: objects built with other flags (a
# warning added, SANITIZE) are rebuilt, as -MMD rebuilds for headers.
$(BUILD)/flags.stamp: FORCE
	@mkdir -p $(BUILD)
	@echo '$(CC) $(CFLAGS_ALL) $(CLI_CFLAGS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS_ALL) $(CLI_CFLAGS)' > $@

# Where an installed engine's policy state finds the pure-Lua modules.
LUA_INSTALL_DIR ?= $(PREFIX)/share/lua/5.4
LUA_DIRS := -DCL_LUA_INSTALL_DIR='"$(LUA_INSTALL_DIR)"'
$(BUILD)/obj/policy.o $(BUILD)/obj/cli/run.o: Makefile $(BUILD)/prefix.stamp
$(BUILD)/obj/policy.o: CFLAGS_ALL += $(LUA_DIRS)
$(BUILD)/obj/cli/run.o: CLI_CFLAGS += $(LUA_DIRS)

# The engine and a private Lua 5.4 in one relocatable object whose lua_*
# symbols are local: policy scripts always run on Lua 5.4, and the
# policy state can never bind to a host's Lua (LuaJIT inside nginx), nor
# the host's module code to ours.
# Debian's liblua5.4.a is position-dependent only in its use of the stdio
# streams; those references are renamed to our own (src/lua_stdio.c).
$(BUILD)/obj/lua54.o: $(LUA54_A)
	@mkdir -p $(dir $@)
	$(LD) -r -o $@.tmp --whole-archive $(LUA54_A)
	objcopy --redefine-sym stdin=cl__lua_stdin --redefine-sym stdout=cl__lua_stdout \
	    --redefine-sym stderr=cl__lua_stderr $@.tmp $@
	@rm -f $@.tmp

# Only cl_* (the API, and the cl__* internals the Lua module binds to)
# stay global: every symbol of the private Lua 5.4 (lua_*, luaL_*, and the
# interpreter's own luaE_*, luaV_*, ...) is local, so a host that links its
# own static Lua into the same program never meets a duplicate.
$(ENGINE_OBJ): $(LIB_OBJS) $(BUILD)/obj/lua54.o
	$(LD) -r -o $@.tmp $^
	objcopy -w --keep-global-symbol='cl_*' $@.tmp $@
	@rm -f $@.tmp

$(STATIC_LIB): $(ENGINE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(SHARED_LIB): $(ENGINE_OBJ)
	$(CC) -shared -Wl,-soname,libcairnloop.so.$(SOVERSION) -o $@ $^ $(LDFLAGS_ALL) $(PKG_LIBS) -lm -ldl
	ln -sf libcairnloop.so.$(VERSION) $(BUILD)/libcairnloop.so.$(SOVERSION)
	ln -sf libcairnloop.so.$(VERSION) $(BUILD)/libcairnloop.so

# The command embeds the Lua 5.4 binding too, for `cairnloop run SCRIPT`
# (a host Lua state of its own, on the system's Lua 5.4).
$(CLI_BIN): $(CLI_OBJS) $(BUILD)/obj/lua_module.o $(STATIC_LIB)
	$(CC) -o $@ $(CLI_OBJS) $(BUILD)/obj/lua_module.o $(STATIC_LIB) $(LDFLAGS_ALL) $(PKG_LIBS) \
	    $(LUA_LIBS) $(CLI_LIBS) -lm -ldl

# The Lua modules: the host interpreter provides the lua_* symbols the
# binding uses; only luaopen_cairnloop is exported.
$(LUA_MOD): $(BUILD)/obj/lua_module.o $(ENGINE_OBJ) src/lua_module.map
	@mkdir -p $(dir $@)
	$(CC) -shared -o $@ $(BUILD)/obj/lua_module.o $(ENGINE_OBJ) \
	    -Wl,--version-script=src/lua_module.map $(LDFLAGS_ALL) $(PKG_LIBS) -lm -ldl

$(BUILD)/obj/lua_module_jit.o: src/lua_module.c
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -I/usr/include/lua5.4,$(CFLAGS_ALL)) $(LUAJIT_CFLAGS) -c $< -o $@

$(LUAJIT_MOD): $(BUILD)/obj/lua_module_jit.o $(ENGINE_OBJ) src/lua_module.map
	@mkdir -p $(dir $@)
	$(CC) -shared -o $@ $(BUILD)/obj/lua_module_jit.o $(ENGINE_OBJ) \
	    -Wl,--version-script=src/lua_module.map $(LDFLAGS_ALL) $(PKG_LIBS) -lm -ldl

luajit: $(LUAJIT_MOD)

# Fuzz targets (libFuzzer, clang): tests/fuzz/fuzz_<name>.c over the
# parsers of outside input, with ASan and UBSan; tests/integration/fuzz.sh
# runs each for a bounded time on its seed corpus tests/fuzz/corpus/<name>.
FUZZ_CC ?= clang
FUZZ_FLAGS := -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
              -fno-sanitize-recover=all
FUZZ_BINS := $(patsubst tests/fuzz/fuzz_%.c,build/fuzz/fuzz_%,$(wildcard tests/fuzz/fuzz_*.c))
fuzz: $(FUZZ_BINS)
# The argument handling: the whole command, built without its main().
build/fuzz/fuzz_args: tests/fuzz/fuzz_args.c $(CLI_SRCS) cli/cli.h $(BUILD)/obj/lua_module.o $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -std=c11 -D_GNU_SOURCE -DCLI_NO_MAIN -Iinclude -Icli \
	    $(shell pkg-config --cflags lua5.4 jansson 2>/dev/null) -o $@ tests/fuzz/fuzz_args.c \
	    $(CLI_SRCS) $(BUILD)/obj/lua_module.o $(STATIC_LIB) $(PKG_LIBS) $(LUA_LIBS) $(CLI_LIBS) -lm -ldl
# The OpenResty example's JSON bodies, in LuaJIT as nginx runs them (run
# from the checkout: it loads examples/openresty/cairnloop_http.lua).
build/fuzz/fuzz_json_body: tests/fuzz/fuzz_json_body.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -std=c11 $(LUAJIT_CFLAGS) -o $@ $< $(shell pkg-config --libs luajit 2>/dev/null)
# The allow list and base64, with the one unit they use (util.c: cl__fail).
build/fuzz/fuzz_http_allow: tests/fuzz/fuzz_http_allow.c src/http.c src/crypto.c src/util.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -std=c11 -D_GNU_SOURCE -Iinclude -Isrc $(PKG_CFLAGS) -o $@ $< \
	    src/http.c src/crypto.c src/util.c $(PKG_LIBS) -lm -ldl
build/fuzz/fuzz_ids: tests/fuzz/fuzz_ids.c cli/parse.c cli/parse.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -std=c11 -D_GNU_SOURCE -Icli -o $@ tests/fuzz/fuzz_ids.c cli/parse.c

# `luarocks make` (cairnloop-*.rockspec): the Lua 5.4 module, built in a
# tree of its own so that it never disturbs build/.  Installed, the
# module's policy state finds the pure-Lua modules beside it, in the rock
# tree's share/lua/5.4 (see policy.c).
ROCK_LIBDIR ?=
ROCK_LUADIR ?=
rock:
	@$(MAKE) --no-print-directory BUILD=build/rock build/rock/lua5.4/cairnloop.so
rock-install:
	@test -n "$(ROCK_LIBDIR)" && test -n "$(ROCK_LUADIR)" || { echo "rock-install: ROCK_LIBDIR and ROCK_LUADIR are required" >&2; exit 2; }
	install -d '$(ROCK_LIBDIR)' '$(ROCK_LUADIR)/cairnloop'
	install -m 755 build/rock/lua5.4/cairnloop.so '$(ROCK_LIBDIR)/'
	cp -R lua/cairnloop/. '$(ROCK_LUADIR)/cairnloop/'

# Requires.private is PKGS, so a static link through pkg-config gets every
# library the engine calls (libcurl and libcrypto too).
$(PC_FILE): cairnloop.pc.in Makefile $(BUILD)/prefix.stamp
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|^Requires.private:.*|Requires.private: $(PKGS)|' $< > $@

$(BUILD)/tests/%: tests/%.c $(TEST_SUPPORT) $(wildcard tests/support/*.h) $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Itests/support -o $@ $< $(TEST_SUPPORT) $(STATIC_LIB) \
	    $(LDFLAGS_ALL) $(PKG_LIBS) -lcmocka -lm -ldl -pthread

# The HTTP client's test serves TLS itself (a self-signed peer), with libssl.
$(BUILD)/tests/test_http: PKG_LIBS += $(shell pkg-config --libs libssl 2>/dev/null)

tests: $(TEST_BINS)

# The whole suite: C tests, the same under ASan+UBSan, Lua specs, CLI tests.
check: deps
	@$(MAKE) --no-print-directory all tests
	@$(MAKE) --no-print-directory BUILD=build/asan SANITIZE=1 tests
	@tools/check.sh

demo: deps
	@$(MAKE) --no-print-directory all
	@tools/demo.sh

install: all
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig \
	    $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/lua/5.4 \
	    $(DESTDIR)$(PREFIX)/share/lua/5.4/cairnloop
	install -m 644 include/cairnloop.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(STATIC_LIB) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(SHARED_LIB) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libcairnloop.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libcairnloop.so.$(SOVERSION)
	ln -sf libcairnloop.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libcairnloop.so
	install -m 644 $(PC_FILE) $(DESTDIR)$(PREFIX)/lib/pkgconfig/
	install -m 755 $(CLI_BIN) $(DESTDIR)$(PREFIX)/bin/
	install -m 755 $(LUA_MOD) $(DESTDIR)$(PREFIX)/lib/lua/5.4/
	install -d $(DESTDIR)$(PREFIX)/lib/lua/5.1 $(DESTDIR)$(PREFIX)/share/lua/5.1/cairnloop \
	    $(DESTDIR)$(PREFIX)/share/cairnloop/examples
	install -m 755 $(LUAJIT_MOD) $(DESTDIR)$(PREFIX)/lib/lua/5.1/
	cp -R lua/cairnloop/. $(DESTDIR)$(PREFIX)/share/lua/5.4/cairnloop/
	cp -R lua/cairnloop/. $(DESTDIR)$(PREFIX)/share/lua/5.1/cairnloop/
	cp lua/examples/*.lua $(DESTDIR)$(PREFIX)/share/cairnloop/examples/
	install -d $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 644 doc/cairnloop.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	@$(MAKE) --no-print-directory ldconfig

# Installing into the running system (no DESTDIR) refreshes the dynamic
# linker's cache, so a program linked with -lcairnloop runs at once.
ldconfig:
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" -eq 0 ] && command -v ldconfig >/dev/null; then \
	  ldconfig; echo "ldconfig: linker cache refreshed for $(PREFIX)/lib"; \
	elif [ -z "$(DESTDIR)" ]; then \
	  echo "note: run ldconfig as root (or set LD_LIBRARY_PATH=$(PREFIX)/lib) before linking against libcairnloop.so"; \
	fi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/include/cairnloop.h $(DESTDIR)$(PREFIX)/lib/libcairnloop.* \
	    $(DESTDIR)$(PREFIX)/lib/pkgconfig/cairnloop.pc $(DESTDIR)$(PREFIX)/bin/cairnloop \
	    $(DESTDIR)$(PREFIX)/lib/lua/5.4/cairnloop.so $(DESTDIR)$(PREFIX)/lib/lua/5.1/cairnloop.so \
	    $(DESTDIR)$(PREFIX)/share/man/man1/cairnloop.1
	rm -rf $(DESTDIR)$(PREFIX)/share/lua/5.4/cairnloop $(DESTDIR)$(PREFIX)/share/lua/5.1/cairnloop \
	    $(DESTDIR)$(PREFIX)/share/cairnloop
	@# The directories install created, where nothing else lives in them now.
	-@for d in lib/pkgconfig lib/lua/5.4 lib/lua/5.1 lib/lua share/lua/5.4 share/lua/5.1 \
	    share/lua share/man/man1 share/man include lib bin share; do \
	  rmdir $(DESTDIR)$(PREFIX)/$$d 2>/dev/null || true; done
	@$(MAKE) --no-print-directory ldconfig

clean:
	rm -rf build

# Static checks (clang-format, cppcheck, clang-tidy) over the C sources;
# builds nothing and exits non-zero on any finding.  See tools/lint.sh.
.PHONY: lint
lint:
	@tools/lint.sh

-include $(wildcard bench/bench.mk)
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
