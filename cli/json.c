/*
 * json.c - the `--json` shapes of the `cairnloop` command, built with
 * jansson.  They mirror the Lua result tables of API.md key for key; ids are
 * JSON integers (jansson's json_int_t is 64-bit, so they stay exact) and the
 * auditor's audit_json is embedded as parsed JSON.
 */
#include "cli.h"

#include <stdlib.h>

/* A JSON string, or null for NULL (jansson refuses invalid UTF-8: null too). */
static json_t *str_or_null(const char *s) {
  json_t *v = s ? json_string(s) : NULL;
  return v ? v : json_null();
}

/* The auditor's return value: JSON text by contract; kept as a string if not. */
static json_t *audit_value(const char *audit_json) {
  if (!audit_json) return json_null();
  json_t *v = json_loads(audit_json, JSON_DECODE_ANY, NULL);
  return v ? v : str_or_null(audit_json);
}

static json_t *message_json(const cl_message *m) {
  return json_pack("{s:I, s:I, s:o, s:o, s:{s:o, s:o, s:o}}", "id", (json_int_t)m->id,
                   "conversation_id", (json_int_t)m->conversation_id, "role", str_or_null(m->role),
                   "content", str_or_null(m->content), "metadata", "template_id",
                   str_or_null(m->template_id), "status", str_or_null(m->status),
                   "bulk_envelope_id", str_or_null(m->bulk_envelope_id));
}

static json_t *job_json(const cl_delivery_job *j) {
  return json_pack("{s:I, s:o, s:o, s:o, s:{s:I, s:I, s:o, s:o}}", "id", (json_int_t)j->id,
                   "worker", str_or_null(j->worker), "state", str_or_null(j->state), "scheduled_at",
                   str_or_null(j->scheduled_at), "args", "message_id", (json_int_t)j->message_id,
                   "conversation_id", (json_int_t)j->conversation_id, "template_id",
                   str_or_null(j->template_id), "bulk_envelope_id",
                   str_or_null(j->bulk_envelope_id));
}

json_t *cli_json_envelope(const cl_envelope *env) {
  json_t *ids = json_array();
  for (size_t i = 0; i < env->count && env->recipient_conversation_ids; i++)
    json_array_append_new(ids, json_integer((json_int_t)env->recipient_conversation_ids[i]));
  return json_pack("{s:s, s:o, s:o, s:o, s:I, s:i, s:o, s:o, s:o, s:o}", "id", env->id,
                   "template_id", str_or_null(env->template_id), "rendered_body",
                   str_or_null(env->rendered_body), "recipient_conversation_ids", ids, "count",
                   (json_int_t)env->count, "effective_cap", env->effective_cap, "requested_by",
                   str_or_null(env->requested_by), "requested_at", str_or_null(env->requested_at),
                   "status", str_or_null(env->status), "refused_reason",
                   str_or_null(env->refused_reason));
}

json_t *cli_json_trigger(const cl_trigger_result *res) {
  return json_pack("{s:o, s:o, s:b, s:o}", "message", message_json(&res->message), "delivery_job",
                   job_json(&res->delivery_job), "duplicate", res->duplicate, "audit",
                   audit_value(res->audit_json));
}

json_t *cli_json_bulk(const cl_bulk_result *res) {
  json_t *messages = json_array();
  json_t *jobs = json_array();
  for (size_t i = 0; i < res->count; i++) {
    json_array_append_new(messages, message_json(&res->messages[i]));
    json_array_append_new(jobs, job_json(&res->delivery_jobs[i]));
  }
  return json_pack("{s:o, s:o, s:o, s:b, s:o}", "envelope", cli_json_envelope(&res->envelope),
                   "messages", messages, "delivery_jobs", jobs, "replayed", res->replayed, "audit",
                   audit_value(res->audit_json));
}

int cli_json_print(json_t *value) {
  char *text = value ? json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
  json_decref(value);
  if (!text) return cli_fail(CL_DB_ERROR, "out of memory while encoding JSON");
  puts(text);
  free(text);
  return 0;
}
