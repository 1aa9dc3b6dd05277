#!/usr/bin/env node
// pg-boss as a peer of Enclii's `loadtest drain` (issue 21): bulk-enqueue N no-op jobs in chunks
// of 5,000, then one worker process drains them; one JSON line on stdout.
//
//   node drain.js --url postgres://postgres@127.0.0.1:5435/DB --jobs 20000 \
//     [--mode work|fetch] [--workers 32] [--batch 1] [--poll 0.5] [--pool 10] [--deadline-s 300]
//
// --mode work  (default) pg-boss's own worker: `--workers` calls of boss.work(queue,
//              { batchSize: --batch, pollingIntervalSeconds: --poll }, noop). pg-boss 10 has no
//              teamSize/localConcurrency: each work() call is one polling loop, and its docs say to
//              call work() again for more concurrency. The loop waits out the rest of the polling
//              interval after every fetch, even when it found jobs.
// --mode fetch --workers slots, each looping boss.fetch(queue, { batchSize }) → run → await
//              boss.complete(queue, ids); a slot sleeps --poll seconds only when the queue is empty.
//
// Timing is read from pg-boss's own table: drain = first started_on → last completed_on (the
// database clock), so fire-and-forget completions are counted when they land. enqueue = the sum of
// the insert() calls. The run stops --deadline-s after the drain starts; `unfinished_after` is
// N minus the jobs in state 'completed' (job and archive tables) then (counted 1 s after the
// workers stop, so that completions already sent land).
'use strict'
const PgBoss = require('pg-boss')
const { version } = require('pg-boss/package.json')

function args () {
  const a = { mode: 'work', jobs: 20000, workers: 32, batch: 1, poll: 0.5, pool: 10, deadlineS: 300, chunk: 5000 }
  const argv = process.argv.slice(2)
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase())
    if (!(k in a) && k !== 'url') throw new Error(`unknown option ${argv[i]}`)
    a[k] = k === 'url' || k === 'mode' ? argv[i + 1] : Number(argv[i + 1])
  }
  if (!a.url) throw new Error('--url is required')
  return a
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

async function main () {
  const a = args()
  const queue = 'loadtest'
  const boss = new PgBoss({ connectionString: a.url, max: a.pool })
  boss.on('error', err => console.error('pg-boss error:', err.message))
  await boss.start()
  await boss.createQueue(queue)
  const sql = async (text, params) => (await boss.getDb().executeSql(text, params)).rows

  // Enqueue: chunks of 5,000 no-op jobs, one insert() each.
  let enqueueMs = 0
  for (let start = 0; start < a.jobs; start += a.chunk) {
    const jobs = []
    for (let i = start; i < Math.min(a.jobs, start + a.chunk); i++) jobs.push({ name: queue, data: { i } })
    const t = performance.now()
    await boss.insert(jobs)
    enqueueMs += performance.now() - t
  }
  console.error(`enqueued ${a.jobs} in ${(enqueueMs / 1000).toFixed(2)} s`)

  const completedCount = async () => {
    const [r] = await sql(`SELECT (SELECT count(*) FROM pgboss.job WHERE name = $1 AND state = 'completed')
      + (SELECT count(*) FROM pgboss.archive WHERE name = $1 AND state = 'completed') AS n`, [queue])
    return Number(r.n)
  }

  const noop = async () => {}
  const started = Date.now()
  const deadline = started + a.deadlineS * 1000
  let stopping = false
  const slots = []
  if (a.mode === 'work') {
    for (let w = 0; w < a.workers; w++) {
      await boss.work(queue, { batchSize: a.batch, pollingIntervalSeconds: a.poll }, noop)
    }
  } else if (a.mode === 'fetch') {
    for (let w = 0; w < a.workers; w++) {
      slots.push((async () => {
        while (!stopping) {
          const jobs = await boss.fetch(queue, { batchSize: a.batch })
          if (!jobs.length) { await sleep(a.poll * 1000); continue }
          for (const job of jobs) await noop(job)
          await boss.complete(queue, jobs.map(j => j.id))
        }
      })())
    }
  } else {
    throw new Error(`unknown --mode ${a.mode}`)
  }

  let done = 0
  let lastLog = started
  while (Date.now() < deadline) {
    done = await completedCount()
    if (done >= a.jobs) break
    if (Date.now() - lastLog >= 10000) {
      console.error(`${((Date.now() - started) / 1000).toFixed(0)} s: ${done} completed`)
      lastLog = Date.now()
    }
    await sleep(200)
  }
  stopping = true
  if (a.mode === 'work') await boss.offWork(queue)
  await Promise.all(slots)
  await sleep(1000) // completions already sent by the worker land (pg-boss does not await them)

  const [t] = await sql(`SELECT extract(epoch FROM max(completed_on) - min(started_on))::float8 AS drain_s,
      count(*) FILTER (WHERE state = 'completed') AS completed,
      count(*) FILTER (WHERE state = 'active') AS active,
      count(*) FILTER (WHERE state = 'created') AS created,
      count(*) FILTER (WHERE state NOT IN ('completed', 'active', 'created')) AS other,
      count(*) FILTER (WHERE retry_count > 0) AS retried
    FROM (SELECT state, started_on, completed_on, retry_count FROM pgboss.job WHERE name = $1
          UNION ALL SELECT state, started_on, completed_on, retry_count FROM pgboss.archive WHERE name = $1) j`, [queue])
  const [av] = await sql('SELECT current_setting(\'autovacuum\') AS autovacuum')
  const drainS = Number(t.drain_s)
  done = Number(t.completed)
  const round = (x, d) => Math.round(x * 10 ** d) / 10 ** d
  await boss.stop({ graceful: false, wait: true })

  console.log(JSON.stringify({
    system: 'pg-boss',
    version,
    node: process.version,
    workload: 'drain',
    n: a.jobs,
    mode: a.mode,
    workers: a.workers,
    batch_size: a.batch,
    polling_interval_s: a.poll,
    pool_max: a.pool,
    autovacuum: av.autovacuum,
    drain_jobs_per_s: round(done / drainS, 0),
    enqueue_jobs_per_s: round(a.jobs / (enqueueMs / 1000), 0),
    enqueue_s: round(enqueueMs / 1000, 3),
    drain_s: round(drainS, 3),
    completed: done,
    unfinished_after: a.jobs - done,
    states: { completed: Number(t.completed), active: Number(t.active), created: Number(t.created), other: Number(t.other) },
    retried: Number(t.retried),
    chunk: a.chunk
  }))
}

main().catch(err => { console.error(err); process.exit(1) })
