/*
 * hooks.c - C hooks whose behaviour a test chooses: an auditor (accept,
 * reject, fail, or write through cl_tx_exec) and an actor resolver (pass,
 * replace, reject, fail).  Both record their last call so tests can check
 * what the engine handed them.
 */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *dup_or_null(const char *s) {
  if (s == NULL) return NULL;
  char *d = strdup(s);
  assert_non_null(d);
  return d;
}

static void set_err(cl_error *err, cl_status code, const char *reason) {
  if (err == NULL) return;
  err->code = code;
  snprintf(err->message, sizeof err->message, "%s", reason != NULL ? reason : "");
}

/* Keeps a deep copy of the metadata the auditor was given. */
static void record_metadata(ct_map *dst, const cl_metadata *md) {
  for (size_t i = 0; i < dst->count; i++) {
    free(dst->items[i].key);
    free(dst->items[i].s);
  }
  free(dst->items);
  dst->items = NULL;
  dst->count = 0;
  if (md == NULL || md->count == 0) return;
  dst->count = md->count;
  dst->items = dst->count ? calloc(dst->count, sizeof *dst->items) : NULL;
  if (dst->count && !dst->items) {
    /* Out of memory in a test helper: record nothing rather than crash. */
    dst->count = 0;
    return;
  }
  for (size_t i = 0; i < dst->count; i++) {
    dst->items[i].key = dup_or_null(md->items[i].key);
    dst->items[i].type = md->items[i].type;
    dst->items[i].i = md->items[i].type == CL_VALUE_INT ? md->items[i].i : 0;
    dst->items[i].s = md->items[i].type == CL_VALUE_STRING ? dup_or_null(md->items[i].s) : NULL;
  }
}

static cl_status audit_cb(void *ud, cl_tx *tx, const char *action, const char *actor,
                          const cl_metadata *metadata, char **audit_json, cl_error *err) {
  ct_auditor *a = ud;
  a->calls++;
  free(a->action);
  free(a->actor);
  a->action = dup_or_null(action);
  a->actor = dup_or_null(actor);
  record_metadata(&a->metadata, metadata);
  a->tx = tx;

  switch (a->mode) {
  case CT_AUDIT_REJECT:
    set_err(err, CL_AUDIT_REJECTED, a->reason);
    return CL_AUDIT_REJECTED;
  case CT_AUDIT_HOOK_ERROR:
    set_err(err, CL_HOOK_ERROR, a->reason);
    return CL_HOOK_ERROR;
  case CT_AUDIT_EXEC: {
    const char *params[] = {action};
    a->exec_status = cl_tx_exec(tx, a->sql, 1, params, NULL, &a->exec_err);
    if (a->exec_status != CL_OK) {
      if (err != NULL) *err = a->exec_err;
      return a->exec_status;
    }
    break;
  }
  case CT_AUDIT_EXEC_IGNORE: {
    const char *params[] = {action};
    a->exec_status = cl_tx_exec(tx, a->sql, 1, params, NULL, &a->exec_err);
    break;
  }
  case CT_AUDIT_EXEC_REJECT: {
    const char *params[] = {action};
    a->exec_status = cl_tx_exec(tx, a->sql, 1, params, NULL, &a->exec_err);
    set_err(err, CL_AUDIT_REJECTED, a->reason);
    return CL_AUDIT_REJECTED;
  }
  case CT_AUDIT_REENTER: {
    cl_trigger_opts opts = {.template_id = "reentered"};
    cl_trigger_result res = {0};
    a->exec_status = cl_trigger(a->eng, 1, &opts, &res, &a->exec_err);
    cl_trigger_result_clear(&res);
    break;
  }
  case CT_AUDIT_ACCEPT:
    break;
  }
  if (a->reply != NULL && audit_json != NULL) *audit_json = dup_or_null(a->reply);
  return CL_OK;
}

static void audit_release(void *ud) {
  ct_auditor *a = ud;
  a->released++;
}

void ct_install_auditor(cl_engine *eng, ct_auditor *a) {
  cl_auditor hook = {0};
  hook.audit = audit_cb;
  hook.release = audit_release;
  hook.ud = a;
  cl_error err;
  cl_status st = cl_set_auditor(eng, &hook, &err);
  ct_assert_ok(st, &err);
}

void ct_auditor_free(ct_auditor *a) {
  free(a->action);
  free(a->actor);
  a->action = a->actor = NULL;
  record_metadata(&a->metadata, NULL);
}

static cl_status resolve_cb(void *ud, const char *actor, const char *action, char **resolved,
                            cl_error *err) {
  ct_resolver *r = ud;
  r->calls++;
  free(r->actor);
  free(r->action);
  r->actor = dup_or_null(actor);
  r->action = dup_or_null(action);
  switch (r->mode) {
  case CT_RESOLVE_SAME:
    *resolved = dup_or_null(actor);
    return CL_OK;
  case CT_RESOLVE_REPLACE:
    *resolved = dup_or_null(r->replacement);
    return CL_OK;
  case CT_RESOLVE_REJECT:
    set_err(err, CL_ACTOR_REJECTED, r->reason);
    return CL_ACTOR_REJECTED;
  case CT_RESOLVE_HOOK_ERROR:
    set_err(err, CL_HOOK_ERROR, r->reason);
    return CL_HOOK_ERROR;
  }
  return CL_HOOK_ERROR;
}

static void resolver_release(void *ud) {
  ct_resolver *r = ud;
  r->released++;
}

void ct_install_resolver(cl_engine *eng, ct_resolver *r) {
  cl_actor_resolver hook = {0};
  hook.resolve = resolve_cb;
  hook.release = resolver_release;
  hook.ud = r;
  cl_error err;
  cl_status st = cl_set_actor_resolver(eng, &hook, &err);
  ct_assert_ok(st, &err);
}

void ct_resolver_free(ct_resolver *r) {
  free(r->actor);
  free(r->action);
  r->actor = r->action = NULL;
}
