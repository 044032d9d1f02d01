// The graphile-worker contender of the HTTP delivery bench
// (bench/http_delivery.sh): one worker process running graphile-worker's
// `run()` with one task, `deliver`, that POSTs the job's message as a signed
// webhook (the Standard Webhooks headers, as the engine's webhook notifier
// sends them) through Node's `http` module with a keep-alive agent.  A 2xx
// answer completes the job; anything else fails it (graphile retries).
//
// Environment:
//   DATABASE_URL        the database, graphile_worker schema migrated
//   GW_CONCURRENCY      jobs in flight in this process (graphile's `concurrency`)
//   GW_URL              where to POST
//   GW_SECRET           whsec_<base64 key>
//   GW_BATCHED=1        graphile's batching on: localQueue of concurrency + 1
//                       jobs and completeJobBatchDelay 0 (its performance guide)
// Runs until SIGTERM, which graphile handles with a graceful shutdown.
import { Logger, run } from "graphile-worker";
import http from "node:http";
import crypto from "node:crypto";

const concurrency = Number(process.env.GW_CONCURRENCY || "1");
const url = new URL(process.env.GW_URL);
const key = Buffer.from(process.env.GW_SECRET.replace(/^whsec_/, ""), "base64");
const batched = process.env.GW_BATCHED === "1";
// One socket per job in flight, kept open between jobs.
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });

function post(headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method: "POST", agent, headers, timeout: 5000 },
      (res) => {
        res.resume(); // the body is not needed, but must be read to reuse the socket
        res.on("end", () => {
          if (res.statusCode >= 200 && res.statusCode < 300) resolve();
          else reject(new Error(`HTTP ${res.statusCode}`));
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    req.end(body);
  });
}

const taskList = {
  async deliver(payload, helpers) {
    const id = `gw-msg-${payload.message_id}`;
    const now = new Date();
    const ts = Math.floor(now.getTime() / 1000).toString();
    // The event of lua/cairnloop/webhook.lua, field for field.
    const body = JSON.stringify({
      type: "message.outbound",
      timestamp: now.toISOString().replace(/\.\d{3}Z$/, "Z"),
      data: {
        message_id: payload.message_id,
        conversation_id: payload.conversation_id,
        customer_ref: payload.customer_ref,
        template_id: payload.template_id,
        bulk_envelope_id: payload.bulk_envelope_id,
        role: "system_outbound",
        content: payload.content,
        attempt: helpers.job.attempts,
        idempotency_key: id,
      },
    });
    const mac = crypto.createHmac("sha256", key).update(`${id}.${ts}.${body}`).digest("base64");
    await post(
      {
        "content-type": "application/json",
        "user-agent": "graphile-worker-bench",
        "content-length": Buffer.byteLength(body),
        "webhook-id": id,
        "webhook-timestamp": ts,
        "webhook-signature": `v1,${mac}`,
      },
      body,
    );
  },
};

// Warnings and errors only: by default graphile logs a line per job, which
// a busy deployment would turn off too (the engine logs none per delivery).
const logger = new Logger((scope) => (level, message) => {
  if (level === "error" || level === "warning") console.error(`[${scope.label || "worker"}] ${level}: ${message}`);
});

const runner = await run({
  connectionString: process.env.DATABASE_URL,
  concurrency,
  // graphile's own advice: "10 or concurrentJobs + 2, whichever is larger".
  maxPoolSize: Math.max(10, concurrency + 2),
  taskList,
  logger,
  preset: batched
    ? { worker: { localQueue: { size: concurrency + 1 }, completeJobBatchDelay: 0 } }
    : undefined,
});
await runner.promise;
