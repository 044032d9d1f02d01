-- The Lua 5.4 module `cairnloop` and its pure-Lua modules (ready-made
-- policies, the campaign runner) for a LuaRocks tree:
--   luarocks --lua-version 5.4 make            (from a checkout)
-- The module embeds its own Lua 5.4 for policy scripts and links libpq,
-- libuuid and jansson from the system (Debian: libpq-dev uuid-dev
-- libjansson-dev liblua5.4-dev).  For OpenResty/LuaJIT, use `make luajit`.
rockspec_format = "3.0"
package = "cairnloop"
version = "0.1.0-1"
source = {
  url = "git+file://.",
}
description = {
  summary = "Outbound support messaging on PostgreSQL, with Lua 5.4 policy hooks",
  detailed = [[
    An embeddable engine that sends outbound messages to support
    conversations, one at a time or to a whole cohort under one durable
    audit envelope, with a hard cohort cap, every write in one PostgreSQL
    transaction, enum-only telemetry and a durable delivery queue.  Host
    policy (auditing, actor resolution, telemetry handlers, delivery) is
    Lua 5.4 run in a sandboxed state of the engine's own.
  ]],
  license = "MIT",
  labels = { "postgresql", "messaging", "queue", "audit" },
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
external_dependencies = {
  PQ = { header = "postgresql/libpq-fe.h", library = "pq" },
  UUID = { header = "uuid/uuid.h", library = "uuid" },
  JANSSON = { header = "jansson.h", library = "jansson" },
  -- libcurl too (the Makefile finds it with pkg-config): Debian keeps its
  -- header under a multiarch directory luarocks does not search.
  CRYPTO = { header = "openssl/hmac.h", library = "crypto" },
}
build = {
  type = "make",
  build_target = "rock",
  install_target = "rock-install",
  install_variables = {
    ROCK_LIBDIR = "$(LIBDIR)",
    ROCK_LUADIR = "$(LUADIR)",
  },
}
